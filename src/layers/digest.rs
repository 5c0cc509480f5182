//! Content digests of directory trees, cheap to repeat.
//!
//! A tree digest is a sha256 over every entry in bytewise name order: its relative
//! path, type, and, as [`TreeOptions`] asks, its in-image owner and permission bits
//! (the `user.containers.override_stat` record applied), its mtime, its other xattrs;
//! a file's content digest, a symlink's target, a device's numbers. Every field is
//! tagged and length-prefixed, so no two different trees share an encoding.
//!
//! Reading every byte of a seed (a stage3 is ~1 GiB) or of a repository on every build
//! would be slow, so file content digests are cached by *file identity*: device, inode,
//! size, mtime and ctime (nanoseconds). Any write, truncate, chmod, chown or xattr change
//! moves ctime, which user space cannot set back, so an unchanged identity means
//! unchanged content. The cache is a plain file; a missing or unreadable cache only
//! costs time. It keeps only the entries used by its last save, so it never grows
//! beyond the trees it serves.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::layers::ownership::{Effective, FileKind, HostOwner, OVERRIDE_XATTR, OverrideStat};

/// A failure to read the tree, naming the path at fault.
#[derive(Debug, thiserror::Error)]
#[error("cannot digest {path}")]
pub struct DigestError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> DigestError + '_ {
    move |source| DigestError {
        path: path.to_path_buf(),
        source,
    }
}

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(m: &Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    const LEN: usize = 8 * 7 + 32;

    fn encode(&self, digest: &[u8; 32], out: &mut Vec<u8>) {
        for v in [self.dev, self.ino, self.size] {
            out.extend(v.to_le_bytes());
        }
        for v in [self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1] {
            out.extend(v.to_le_bytes());
        }
        out.extend(digest);
    }

    fn decode(b: &[u8]) -> Option<(FileId, [u8; 32])> {
        let u = |i: usize| b.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok());
        let id = FileId {
            dev: u64::from_le_bytes(u(0)?),
            ino: u64::from_le_bytes(u(1)?),
            size: u64::from_le_bytes(u(2)?),
            mtime: (i64::from_le_bytes(u(3)?), i64::from_le_bytes(u(4)?)),
            ctime: (i64::from_le_bytes(u(5)?), i64::from_le_bytes(u(6)?)),
        };
        Some((id, b.get(56..88)?.try_into().ok()?))
    }
}

const CACHE_MAGIC: &[u8; 8] = b"gtdgst01";

/// File content digests by file identity (see the module doc).
#[derive(Debug, Default)]
pub struct DigestCache {
    path: Option<PathBuf>,
    known: HashMap<FileId, [u8; 32]>,
    used: HashMap<FileId, [u8; 32]>,
    /// Files whose content was read (cache misses) since load.
    pub misses: u64,
}

impl DigestCache {
    /// A cache that is not persisted.
    pub fn in_memory() -> DigestCache {
        DigestCache::default()
    }

    /// The cache persisted at `path` (empty when missing or malformed).
    pub fn load(path: &Path) -> DigestCache {
        let mut c = DigestCache {
            path: Some(path.to_path_buf()),
            ..DigestCache::default()
        };
        let mut data = Vec::new();
        if File::open(path)
            .and_then(|f| BufReader::new(f).read_to_end(&mut data))
            .is_err()
            || !data.starts_with(CACHE_MAGIC)
        {
            return c;
        }
        for rec in data[CACHE_MAGIC.len()..].chunks_exact(FileId::LEN) {
            if let Some((id, d)) = FileId::decode(rec) {
                c.known.insert(id, d);
            }
        }
        c
    }

    /// Writes the entries used since load (atomically; a no-op when not persisted,
    /// or when every entry was known and used, so the file would not change).
    pub fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if self.misses == 0 && self.used.len() == self.known.len() {
            return Ok(());
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut out = Vec::with_capacity(8 + self.used.len() * FileId::LEN);
        out.extend(CACHE_MAGIC);
        for (id, d) in &self.used {
            id.encode(d, &mut out);
        }
        let mut f = BufWriter::new(File::create(&tmp)?);
        f.write_all(&out)?;
        f.into_inner().map_err(|e| e.into_error())?;
        fs::rename(&tmp, path)
    }

    /// The sha256 of the regular file at `path` whose `lstat` is `meta`.
    pub fn file_digest(&mut self, path: &Path, meta: &Metadata) -> io::Result<[u8; 32]> {
        let id = FileId::of(meta);
        let d = match self.known.get(&id).or_else(|| self.used.get(&id)) {
            Some(d) => *d,
            None => {
                self.misses += 1;
                let mut h = Sha256::new();
                let mut f = File::open(path)?;
                io::copy(&mut f, &mut h)?;
                h.finalize().into()
            }
        };
        self.used.insert(id, d);
        Ok(d)
    }
}

/// What a tree digest covers besides names, types and contents.
#[derive(Clone, Copy)]
pub struct TreeOptions<'a> {
    /// In-image owner and group (recorded ownership applied).
    pub owners: bool,
    /// Permission bits (setuid, setgid, sticky included).
    pub modes: bool,
    /// Modification times of non-directories (a directory's changes with every
    /// create and delete in it, which says nothing its entries do not).
    pub mtimes: bool,
    /// Xattrs other than the ownership record (capabilities, ACLs, user.*).
    pub xattrs: bool,
    /// Entries to leave out, by path relative to the root (with their subtrees).
    pub skip: &'a dyn Fn(&Path, &Metadata) -> bool,
}

impl std::fmt::Debug for TreeOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeOptions")
            .field("owners", &self.owners)
            .field("modes", &self.modes)
            .field("mtimes", &self.mtimes)
            .field("xattrs", &self.xattrs)
            .finish_non_exhaustive()
    }
}

impl TreeOptions<'_> {
    /// Names, types, modes and contents: what a config overlay or an ebuild
    /// directory means, whoever copied it and whenever.
    pub fn content() -> TreeOptions<'static> {
        TreeOptions {
            owners: false,
            modes: true,
            mtimes: false,
            xattrs: false,
            skip: &|_, _| false,
        }
    }

    /// Everything a root filesystem's files carry (a seed).
    pub fn full() -> TreeOptions<'static> {
        TreeOptions {
            owners: true,
            modes: true,
            mtimes: true,
            xattrs: true,
            skip: &|_, _| false,
        }
    }
}

/// The digest of a tree and what was seen on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDigest {
    /// Lowercase hex sha256.
    pub hex: String,
    /// The newest mtime (seconds) of a non-directory, 0 for a tree without one.
    pub newest_mtime: i64,
    /// Entries digested (the root excluded).
    pub entries: u64,
}

fn field(h: &mut Sha256, tag: &str, data: &[u8]) {
    h.update(tag.as_bytes());
    h.update([0]);
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
}

/// Lowercase hex of a digest.
pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex sha256 of `b`.
pub fn sha256_hex(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

/// The digest of the tree at `root` (see the module doc).
pub fn digest_tree(
    root: &Path,
    opts: &TreeOptions<'_>,
    cache: &mut DigestCache,
) -> Result<TreeDigest, DigestError> {
    let host = if opts.owners {
        HostOwner::read(root).map_err(at(root))?
    } else {
        None
    };
    let mut w = Walk {
        h: Sha256::new(),
        opts,
        cache,
        host,
        newest: 0,
        entries: 0,
    };
    w.dir(root, Path::new(""))?;
    Ok(TreeDigest {
        hex: hex(&w.h.finalize()),
        newest_mtime: w.newest,
        entries: w.entries,
    })
}

struct Walk<'a, 'b> {
    h: Sha256,
    opts: &'a TreeOptions<'b>,
    cache: &'a mut DigestCache,
    /// The tree's host owner: unrecorded entries of it are the namespace root's.
    host: Option<HostOwner>,
    newest: i64,
    entries: u64,
}

impl Walk<'_, '_> {
    fn dir(&mut self, root: &Path, rel: &Path) -> Result<(), DigestError> {
        let dir = root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(at(&dir))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let r = rel.join(&name);
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).map_err(at(&p))?;
            if (self.opts.skip)(&r, &m) {
                continue;
            }
            self.entry(&p, &r, &m)?;
            if m.is_dir() {
                self.dir(root, &r)?;
                // Closes the directory, so `a/` + `b` never reads as `a/b`.
                field(&mut self.h, "end", r.as_os_str().as_bytes());
            }
        }
        Ok(())
    }

    fn entry(&mut self, p: &Path, r: &Path, m: &Metadata) -> Result<(), DigestError> {
        self.entries += 1;
        let is_link = m.file_type().is_symlink();
        let ov = if is_link || !(self.opts.owners || self.opts.modes) {
            None
        } else {
            OverrideStat::read(p).map_err(at(p))?
        };
        let eff = Effective::new(m, ov.as_ref()).with_host_owner(ov.is_some(), self.host.as_ref());
        let h = &mut self.h;
        field(h, "entry", r.as_os_str().as_bytes());
        field(h, "kind", eff.kind.to_string().as_bytes());
        if self.opts.modes && !is_link {
            field(h, "mode", &eff.perm.to_le_bytes());
        }
        if self.opts.owners {
            field(h, "owner", format!("{}:{}", eff.uid, eff.gid).as_bytes());
        }
        if !m.is_dir() {
            self.newest = self.newest.max(m.mtime());
            if self.opts.mtimes {
                field(
                    h,
                    "mtime",
                    format!("{}.{}", m.mtime(), m.mtime_nsec()).as_bytes(),
                );
            }
        }
        if self.opts.xattrs && !is_link {
            let mut names: Vec<_> = match xattr::list(p) {
                Ok(l) => l
                    .filter(|n| n.as_bytes() != OVERRIDE_XATTR.as_bytes())
                    .collect(),
                Err(e) if crate::layers::ownership::is_unsupported(&e) => Vec::new(),
                Err(e) => return Err(at(p)(e)),
            };
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for n in names {
                let v = xattr::get(p, &n).map_err(at(p))?.unwrap_or_default();
                field(h, "xattr", n.as_bytes());
                field(h, "value", &v);
            }
        }
        match eff.kind {
            FileKind::File if m.is_file() => {
                let d = self.cache.file_digest(p, m).map_err(at(p))?;
                field(&mut self.h, "data", &d);
            }
            FileKind::Symlink => {
                let t = fs::read_link(p).map_err(at(p))?;
                field(h, "target", t.as_os_str().as_bytes());
            }
            FileKind::Block { .. } | FileKind::Char { .. } => {
                field(h, "rdev", &eff.kind.rdev().to_le_bytes());
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a/b")).unwrap();
        fs::write(t.path().join("a/b/f"), "hello").unwrap();
        fs::write(t.path().join("top"), "x").unwrap();
        std::os::unix::fs::symlink("a/b/f", t.path().join("link")).unwrap();
        t
    }

    fn d(t: &Path, o: &TreeOptions<'_>) -> String {
        digest_tree(t, o, &mut DigestCache::in_memory())
            .unwrap()
            .hex
    }

    #[test]
    fn every_kind_of_change_is_seen() {
        type Change<'a> = (&'a str, &'a dyn Fn(&Path));
        let changes: &[Change<'_>] = &[
            ("content", &|p| fs::write(p.join("a/b/f"), "hellO").unwrap()),
            ("new file", &|p| fs::write(p.join("a/new"), "").unwrap()),
            ("rename", &|p| {
                fs::rename(p.join("top"), p.join("tap")).unwrap()
            }),
            ("mode", &|p| {
                fs::set_permissions(p.join("top"), fs::Permissions::from_mode(0o600)).unwrap()
            }),
            ("target", &|p| {
                fs::remove_file(p.join("link")).unwrap();
                std::os::unix::fs::symlink("top", p.join("link")).unwrap();
            }),
            ("moved between dirs", &|p| {
                fs::rename(p.join("a/b/f"), p.join("a/f")).unwrap()
            }),
            ("empty dir", &|p| fs::create_dir(p.join("a/e")).unwrap()),
        ];
        for (what, change) in changes {
            let t = tree();
            let before = d(t.path(), &TreeOptions::content());
            change(t.path());
            assert_ne!(d(t.path(), &TreeOptions::content()), before, "{what}");
        }
    }

    #[test]
    fn times_count_only_when_asked() {
        let t = tree();
        let content = d(t.path(), &TreeOptions::content());
        let full = d(t.path(), &TreeOptions::full());
        let f = File::options()
            .append(true)
            .open(t.path().join("top"))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(d(t.path(), &TreeOptions::content()), content);
        assert_ne!(d(t.path(), &TreeOptions::full()), full);
    }

    #[test]
    fn skip_leaves_subtrees_out() {
        let t = tree();
        let skip = |r: &Path, _: &Metadata| r == Path::new("a");
        let opts = TreeOptions {
            skip: &skip,
            ..TreeOptions::content()
        };
        let before = d(t.path(), &opts);
        fs::write(t.path().join("a/b/f"), "changed").unwrap();
        assert_eq!(d(t.path(), &opts), before);
        fs::write(t.path().join("top"), "changed").unwrap();
        assert_ne!(d(t.path(), &opts), before);
    }

    #[test]
    fn the_cache_reads_unchanged_files_once_and_sees_rewrites() -> io::Result<()> {
        let t = tree();
        let cdir = tempfile::tempdir()?;
        let cpath = cdir.path().join("cache");
        let mut c = DigestCache::load(&cpath);
        let first = digest_tree(t.path(), &TreeOptions::content(), &mut c).unwrap();
        assert_eq!(c.misses, 2);
        c.save()?;
        let mut c = DigestCache::load(&cpath);
        let again = digest_tree(t.path(), &TreeOptions::content(), &mut c).unwrap();
        assert_eq!(
            (c.misses, &again),
            (0, &first),
            "served from the saved cache"
        );
        // Same size, same mtime, new content: ctime moves, so the file is read again.
        let f = t.path().join("a/b/f");
        let m = fs::metadata(&f)?;
        fs::write(&f, "jello")?;
        File::options()
            .append(true)
            .open(&f)?
            .set_modified(m.modified()?)?;
        let changed = digest_tree(t.path(), &TreeOptions::content(), &mut c).unwrap();
        assert_eq!(c.misses, 1);
        assert_ne!(changed, first);
        Ok(())
    }

    #[test]
    fn newest_mtime_ignores_directories() {
        let t = tree();
        for f in ["a/b/f", "top"] {
            File::options()
                .append(true)
                .open(t.path().join(f))
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000))
                .unwrap();
        }
        let r = digest_tree(
            t.path(),
            &TreeOptions::content(),
            &mut DigestCache::in_memory(),
        )
        .unwrap();
        // The symlink was made now: it counts, directories do not.
        assert!(r.newest_mtime > 1000);
        fs::remove_file(t.path().join("link")).unwrap();
        let r = digest_tree(
            t.path(),
            &TreeOptions::content(),
            &mut DigestCache::in_memory(),
        )
        .unwrap();
        assert_eq!((r.newest_mtime, r.entries), (1000, 4));
    }
}
