//! Walking layer directories: one directory's listing classified into entries,
//! whiteouts and an opaque flag ([`list_dir`]), and the merge of a layer stack into
//! the flattened tree ([`merge`]).
//!
//! Merge rules, layers lowest first, per directory of layer N:
//! 1. an opaque directory hides the content lower layers have below it;
//! 2. each whiteout hides the named entry (and its subtree) of lower layers;
//! 3. then each entry of layer N is inserted: a directory over a directory merges
//!    (the upper metadata wins); anything else replaces the lower entry and its
//!    subtree, which is the OCI "replace" rule (a directory over a symlink replaces
//!    the symlink). The reference instead kept the first entry of a path, dropping
//!    the metadata of later directory entries (which protected merged-usr
//!    `lib -> usr/lib`); images follow the OCI layer semantics instead, and a layer
//!    built over merged-usr writes through the symlink, so its upper dir has no
//!    `lib/` directory to replace it with.
//!
//! Because 1 and 2 run before the layer's own entries are inserted, a whiteout in
//! layer N affects only layers below N (B36 fix) and an opaque directory keeps the
//! layer's own content (B37 fix). Whiteout names are single path components by
//! construction (B57).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::ops::Bound;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{FilterSet, TarError, Xattr};
use crate::layers::ownership::{Effective, FileKind, HostOwner, OVERRIDE_XATTR, OverrideStat};
use crate::layers::whiteout::{self, Marker, OPAQUE_MARKER, OPAQUE_XATTRS};

/// One file of one layer, as the image presents it.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub layer: u16,
    /// Effective type (override applied where it makes sense, see [`effective_kind`]).
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub target: Option<Box<[u8]>>,
    pub xattrs: Vec<Xattr>,
    /// A directory marked opaque by xattr (the `.wh..wh..opq` marker is seen when
    /// the directory itself is listed).
    pub opaque_xattr: bool,
}

impl LayerFile {
    /// True for a directory on disk (the walk descends into it).
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
}

/// One directory of one layer, classified.
#[derive(Debug, Default)]
pub struct Listing {
    /// The directory hides lower content (marker or xattr).
    pub opaque: bool,
    /// Names whited out in this directory, sorted bytewise, without duplicates.
    pub whiteouts: Vec<Box<[u8]>>,
    /// Ordinary entries sorted bytewise by name.
    pub entries: Vec<(Box<[u8]>, LayerFile)>,
}

/// `root` joined with a relative byte path.
pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// `rel/name` (or `name` at the top).
pub fn child(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(rel.len() + 1 + name.len());
    if !rel.is_empty() {
        p.extend_from_slice(rel);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Lists and classifies the directory `rel` of layer `layer` rooted at `root`.
/// `opaque_xattr` is the directory's own xattr flag (from its parent's listing).
pub fn list_dir(
    root: &Path,
    layer: u16,
    rel: &[u8],
    opaque_xattr: bool,
) -> Result<Listing, TarError> {
    let dir = join(root, rel);
    let walk_err = |path: PathBuf| {
        let layer = root.to_path_buf();
        move |source| TarError::Walk {
            layer,
            path,
            source,
        }
    };
    // `DirEntry::metadata` stats relative to the open directory: no path walk.
    let mut names: Vec<(Box<[u8]>, fs::DirEntry)> = fs::read_dir(&dir)
        .map_err(walk_err(dir.clone()))?
        .map(|d| d.map(|d| (d.file_name().as_bytes().into(), d)))
        .collect::<io::Result<_>>()
        .map_err(walk_err(dir.clone()))?;
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut out = Listing {
        opaque: opaque_xattr,
        ..Listing::default()
    };
    let host = HostOwner::read(root).map_err(walk_err(root.to_path_buf()))?;
    for (name, dirent) in names {
        let path = dir.join(OsStr::from_bytes(&name));
        let meta = dirent.metadata().map_err(walk_err(path.clone()))?;
        match whiteout::classify(&path, OsStr::from_bytes(&name), &meta) {
            Marker::Opaque => out.opaque = true,
            Marker::Whiteout(n) => out.whiteouts.push(n.as_bytes().into()),
            Marker::Entry => {
                if meta.file_type().is_socket() {
                    tracing::debug!("skipping socket {}", path.display());
                    continue;
                }
                let node = read_node(&path, &meta, layer, host.as_ref())
                    .map_err(walk_err(path.clone()))?;
                out.entries.push((name, node));
            }
        }
    }
    out.whiteouts.sort_unstable();
    out.whiteouts.dedup();
    Ok(out)
}

/// Builds the node of one non-marker entry: ownership override, kept xattrs,
/// symlink target.
fn read_node(
    path: &Path,
    meta: &Metadata,
    layer: u16,
    host: Option<&HostOwner>,
) -> io::Result<LayerFile> {
    let disk = FileKind::of(meta);
    let mut xattrs = Vec::new();
    let mut ov = None;
    let mut opaque_xattr = false;
    if disk != FileKind::Symlink {
        let names = match xattr::list(path) {
            Ok(n) => n.collect::<Vec<_>>(),
            Err(e) if crate::layers::ownership::is_unsupported(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        for n in names {
            let nb = n.as_bytes();
            if nb == OVERRIDE_XATTR.as_bytes() {
                ov = OverrideStat::read(path)?;
            } else if OPAQUE_XATTRS.iter().any(|x| x.as_bytes() == nb) {
                opaque_xattr |= matches!(xattr::get(path, &n), Ok(Some(v)) if v == b"y");
            } else if kept_xattr(nb) {
                if let Some(v) = xattr::get(path, &n)? {
                    xattrs.push((nb.into(), v.into()));
                }
            }
        }
        xattrs.sort();
    }
    let eff = Effective::new(meta, ov.as_ref()).with_host_owner(ov.is_some(), host);
    let target = if disk == FileKind::Symlink {
        Some(fs::read_link(path)?.as_os_str().as_bytes().into())
    } else {
        None
    };
    Ok(LayerFile {
        layer,
        kind: effective_kind(disk, eff.kind),
        perm: eff.perm,
        uid: eff.uid,
        gid: eff.gid,
        mtime: meta.mtime(),
        size: if disk == FileKind::File {
            meta.len()
        } else {
            0
        },
        dev: meta.dev(),
        ino: meta.ino(),
        nlink: meta.nlink(),
        target,
        xattrs,
        opaque_xattr,
    })
}

/// The recorded type applies to regular files on disk (how an ordinary user keeps
/// device nodes, FIFOs and sockets); directories and symlinks stay what they are,
/// since the walk and the link target depend on it.
fn effective_kind(disk: FileKind, recorded: FileKind) -> FileKind {
    match disk {
        FileKind::File if recorded != FileKind::Dir && recorded != FileKind::Symlink => recorded,
        _ => disk,
    }
}

/// Xattrs stored in the tar: `security.capability` and `user.*`, except the
/// ownership override and overlay bookkeeping.
pub fn kept_xattr(name: &[u8]) -> bool {
    if name == b"security.capability" {
        return true;
    }
    name.starts_with(b"user.")
        && name != OVERRIDE_XATTR.as_bytes()
        && !name.starts_with(b"user.overlay.")
        && !name.starts_with(b"user.gentree.")
        && !name.starts_with(b"user.fuseoverlayfs.")
}

/// The merged tree: relative path -> node, bytewise ordered.
pub type Merged = BTreeMap<Vec<u8>, LayerFile>;

/// Merges `layers` (lowest first). Subtrees rejected by a path filter are not
/// walked (everything below them is rejected too).
pub fn merge(layers: &[PathBuf], filters: &FilterSet) -> Result<Merged, TarError> {
    if layers.is_empty() {
        return Err(TarError::NoLayers);
    }
    if layers.len() > usize::from(u16::MAX) {
        return Err(TarError::TooManyLayers(layers.len()));
    }
    let mut map = Merged::new();
    for (i, root) in layers.iter().enumerate() {
        let root_opaque = whiteout::is_opaque_dir(root).map_err(|source| TarError::Walk {
            layer: root.clone(),
            path: root.join(OPAQUE_MARKER),
            source,
        })?;
        merge_dir(root, i as u16, b"", root_opaque, &mut map, filters)?;
    }
    Ok(map)
}

fn merge_dir(
    root: &Path,
    layer: u16,
    rel: &[u8],
    opaque_xattr: bool,
    map: &mut Merged,
    filters: &FilterSet,
) -> Result<(), TarError> {
    let listing = list_dir(root, layer, rel, opaque_xattr)?;
    if listing.opaque {
        remove_below(map, rel);
    }
    for w in &listing.whiteouts {
        let p = child(rel, w);
        map.remove(&p);
        remove_below(map, &p);
    }
    for (name, node) in listing.entries {
        let p = child(rel, &name);
        if filters.rejects_path(&p).is_some() {
            continue;
        }
        let merge_into_dir = node.is_dir() && map.get(&p).is_some_and(LayerFile::is_dir);
        if !merge_into_dir {
            remove_below(map, &p);
        }
        let (is_dir, opaque) = (node.is_dir(), node.opaque_xattr);
        map.insert(p.clone(), node);
        if is_dir {
            merge_dir(root, layer, &p, opaque, map, filters)?;
        }
    }
    Ok(())
}

/// [`merge`] of only the subtree at `dir` (a relative path of directories, such as
/// `var/db/pkg`), without walking the rest: each layer's ancestors of `dir` are
/// listed one level each, and an ancestor that a layer whites out, makes opaque or
/// replaces by a non-directory hides what the lower layers had there.
pub fn merge_subtree(layers: &[PathBuf], dir: &[u8]) -> Result<Merged, TarError> {
    if layers.is_empty() {
        return Err(TarError::NoLayers);
    }
    if layers.len() > usize::from(u16::MAX) {
        return Err(TarError::TooManyLayers(layers.len()));
    }
    let parts: Vec<&[u8]> = dir
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let mut map = Merged::new();
    'layers: for (i, root) in layers.iter().enumerate() {
        let mut opaque = whiteout::is_opaque_dir(root).map_err(|source| TarError::Walk {
            layer: root.clone(),
            path: root.join(OPAQUE_MARKER),
            source,
        })?;
        let mut rel: Vec<u8> = Vec::new();
        for part in &parts {
            let listing = list_dir(root, i as u16, &rel, opaque)?;
            let hides = listing.opaque || listing.whiteouts.iter().any(|w| &w[..] == *part);
            let node = listing
                .entries
                .into_iter()
                .find(|(n, _)| &n[..] == *part)
                .map(|(_, n)| n);
            if hides || node.as_ref().is_some_and(|n| !n.is_dir()) {
                map.clear();
            }
            let Some(node) = node.filter(LayerFile::is_dir) else {
                continue 'layers;
            };
            opaque = node.opaque_xattr;
            rel = child(&rel, part);
        }
        merge_dir(root, i as u16, &rel, opaque, &mut map, &FilterSet::none())?;
    }
    Ok(map)
}

/// Removes every key strictly below `dir` (`dir/...`; all keys when `dir` is empty).
fn remove_below(map: &mut Merged, dir: &[u8]) {
    if dir.is_empty() {
        map.clear();
        return;
    }
    let mut lo = dir.to_vec();
    lo.push(b'/');
    let mut hi = dir.to_vec();
    hi.push(b'/' + 1);
    let keys: Vec<Vec<u8>> = map
        .range::<[u8], _>((Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        map.remove(&k);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Writes `spec` lines into `dir`: `d path`, `f path content`, `l path target`,
    /// `w dir/name` (OCI whiteout), `o dir` (opaque marker).
    pub(crate) fn build(dir: &Path, spec: &str) {
        fs::create_dir_all(dir).expect("layer dir");
        for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let mut it = line.splitn(3, ' ');
            let (op, p) = (it.next().expect("op"), it.next().expect("path"));
            let path = dir.join(p);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("parent");
            }
            match op {
                "d" => fs::create_dir_all(&path).expect("dir"),
                "f" => fs::write(&path, it.next().unwrap_or("")).expect("file"),
                "l" => symlink(it.next().expect("target"), &path).expect("symlink"),
                "w" => {
                    let (d, n) = p.rsplit_once('/').unwrap_or(("", p));
                    whiteout::write_whiteout(&dir.join(d), OsStr::new(n)).expect("whiteout")
                }
                "o" => {
                    fs::create_dir_all(&path).expect("dir");
                    whiteout::write_opaque(&path).expect("opaque")
                }
                _ => panic!("bad op {op}"),
            }
        }
    }

    fn summary(m: &Merged) -> Vec<String> {
        m.iter()
            .map(|(k, n)| {
                let t = match n.kind {
                    FileKind::Dir => "d".to_owned(),
                    FileKind::Symlink => format!(
                        "l>{}",
                        String::from_utf8_lossy(n.target.as_deref().unwrap_or_default())
                    ),
                    _ => format!("f{}", n.layer),
                };
                format!("{} {t}", String::from_utf8_lossy(k))
            })
            .collect()
    }

    fn stack(specs: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().expect("tempdir");
        let layers: Vec<PathBuf> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let d = t.path().join(format!("l{i}"));
                build(&d, s);
                d
            })
            .collect();
        (t, layers)
    }

    #[test]
    fn whiteout_is_position_sensitive_across_three_layers() {
        let (_t, layers) = stack(&[
            "f etc/a 1\nf etc/b 1\nd usr/share/x\nf usr/share/x/y 1",
            "w etc/a\nw usr/share/x\nf etc/c 2",
            "f etc/a 3\nd usr/share/x",
        ]);
        let m = merge(&layers, &FilterSet::none()).expect("merge");
        assert_eq!(
            summary(&m),
            [
                "etc d",
                "etc/a f2", // deleted in layer 1, re-added in layer 2: present
                "etc/b f0",
                "etc/c f1",
                "usr d",
                "usr/share d",
                "usr/share/x d", // re-created empty: the old child stays deleted
            ]
        );
    }

    #[test]
    fn unrecorded_entries_of_a_marked_layer_belong_to_its_namespace_root() {
        let (_t, layers) = stack(&["l bin usr/bin\nf usr/bin/x 1", "l sbin usr/bin"]);
        let (mut uid, mut gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        if uid == 0 {
            // As root, give the links a host owner that is not 0, or the check is empty.
            (uid, gid) = (4321, 4322);
            for (l, p) in [(0, "bin"), (1, "sbin")] {
                std::os::unix::fs::lchown(layers[l].join(p), Some(uid), Some(gid)).expect("lchown");
            }
        }
        let me = HostOwner { uid, gid };
        if me.write(&layers[0]).is_err() {
            crate::testing::skip(
                "unrecorded_entries_of_a_marked_layer_belong_to_its_namespace_root",
                "no user xattrs here",
            );
            return;
        }
        let recorded = OverrideStat {
            uid: 1234,
            gid: 2345,
            mode: 0o644,
            kind: None,
        };
        recorded
            .write(&layers[0].join("usr/bin/x"))
            .expect("record");
        let m = merge(&layers, &FilterSet::none()).expect("merge");
        let ids = |p: &str| (m[p.as_bytes()].uid, m[p.as_bytes()].gid);
        assert_eq!(ids("bin"), (0, 0), "the marked layer's symlink");
        assert_eq!(ids("usr/bin/x"), (1234, 2345), "a record wins");
        // The unmarked layer's symlink keeps its on-disk owner.
        assert_eq!(ids("sbin"), (uid, gid));
    }

    #[test]
    fn whiteout_in_same_layer_does_not_hide_own_entry() {
        let (_t, layers) = stack(&["f a 0", "w a\nf a 1"]);
        let m = merge(&layers, &FilterSet::none()).expect("merge");
        assert_eq!(summary(&m), ["a f1"]);
    }

    #[test]
    fn opaque_dir_hides_lower_content_but_keeps_own() {
        let (_t, layers) = stack(&[
            "f d/old 0\nd d/sub\nf d/sub/x 0\nf e/keep 0",
            "o d\nf d/new 1",
            "f d/newer 2",
        ]);
        let m = merge(&layers, &FilterSet::none()).expect("merge");
        assert_eq!(
            summary(&m),
            ["d d", "d/new f1", "d/newer f2", "e d", "e/keep f0"]
        );
    }

    #[test]
    fn opaque_by_xattr() {
        let (_t, layers) = stack(&["f d/old 0", "f d/new 1"]);
        if xattr::set(layers[1].join("d"), "user.overlay.opaque", b"y").is_err() {
            crate::testing::skip("opaque_by_xattr", "no user xattrs on the temp dir");
            return;
        }
        let m = merge(&layers, &FilterSet::none()).expect("merge");
        assert_eq!(summary(&m), ["d d", "d/new f1"]);
    }

    #[test]
    fn oci_replace_dir_over_symlink_and_file_over_dir() {
        let (_t, layers) = stack(&[
            "d usr/lib\nf usr/lib/libc.so 0\nl lib usr/lib\nd opt/x\nf opt/x/y 0",
            "f lib/ld.so 1\nf opt/x 1",
        ]);
        let m = merge(&layers, &FilterSet::none()).expect("merge");
        assert_eq!(
            summary(&m),
            [
                "lib d", // the directory replaced the symlink
                "lib/ld.so f1",
                "opt d",
                "opt/x f1", // the file replaced the directory and its content
                "usr d",
                "usr/lib d",
                "usr/lib/libc.so f0",
            ]
        );
    }

    #[test]
    fn later_dir_metadata_wins() {
        let (_t, layers) = stack(&["d d\nf d/x 0", "d d"]);
        use std::os::unix::fs::PermissionsExt;
        for (l, m) in [(&layers[0], 0o700), (&layers[1], 0o750)] {
            fs::set_permissions(l.join("d"), fs::Permissions::from_mode(m)).expect("chmod");
        }
        let m = merge(&layers, &FilterSet::none()).expect("merge");
        let d = &m[&b"d".to_vec()];
        assert_eq!((d.perm, d.layer), (0o750, 1));
        assert!(m.contains_key(b"d/x".as_slice()));
    }

    #[test]
    fn chardev_whiteout_when_root() {
        if !nix::unistd::geteuid().is_root() {
            crate::testing::skip("chardev_whiteout_when_root", "needs root for mknod");
            return;
        }
        let (_t, layers) = stack(&["f a 0\nf b 0", ""]);
        nix::sys::stat::mknod(
            &layers[1].join("a"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .expect("mknod");
        let m = merge(&layers, &FilterSet::none()).expect("merge");
        assert_eq!(summary(&m), ["b f0"]);
    }

    #[test]
    fn kept_xattrs_table() {
        for (n, want) in [
            ("security.capability", true),
            ("user.foo", true),
            ("user.containers.override_stat", false),
            ("user.overlay.opaque", false),
            ("user.fuseoverlayfs.opaque", false),
            ("user.gentree.host_owner", false),
            ("trusted.overlay.opaque", false),
            ("security.selinux", false),
            ("system.posix_acl_access", false),
        ] {
            assert_eq!(kept_xattr(n.as_bytes()), want, "{n}");
        }
    }

    #[test]
    fn subtree_merge_follows_whiteouts_opaques_and_replaced_ancestors() {
        let t = tempfile::tempdir().expect("tmp");
        let l = |n: &str, spec: &str| {
            let p = t.path().join(n);
            build(&p, spec);
            p
        };
        let l0 = l(
            "l0",
            "f var/db/pkg/a/x-1/SLOT 0\nf var/db/pkg/b/y-1/SLOT 0\nf etc/z 1",
        );
        let l1 = l(
            "l1",
            "w var/db/pkg/b\nf var/db/pkg/c/w-2/SLOT 1\nf usr/big 1",
        );
        let names = |layers: &[PathBuf]| -> Vec<String> {
            merge_subtree(layers, b"var/db/pkg")
                .expect("merge")
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        };
        let both = names(&[l0.clone(), l1.clone()]);
        assert_eq!(
            both,
            [
                "var/db/pkg/a",
                "var/db/pkg/a/x-1",
                "var/db/pkg/a/x-1/SLOT",
                "var/db/pkg/c",
                "var/db/pkg/c/w-2",
                "var/db/pkg/c/w-2/SLOT"
            ]
        );
        let want: Vec<String> = merge(&[l0.clone(), l1.clone()], &FilterSet::none())
            .expect("merge")
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .filter(|k| k.starts_with("var/db/pkg/"))
            .collect();
        assert_eq!(both, want, "the same as the whole merge's subtree");
        let opaque_var = l("l2", "o var\nf var/db/pkg/d/v-1/SLOT 0");
        assert_eq!(
            names(&[l0.clone(), opaque_var]),
            ["var/db/pkg/d", "var/db/pkg/d/v-1", "var/db/pkg/d/v-1/SLOT"]
        );
        let replaced = l("l3", "f var/db 1");
        assert!(names(&[l0.clone(), replaced]).is_empty());
        let gone = l("l4", "w var");
        assert!(names(&[l0, gone]).is_empty());
    }
}
