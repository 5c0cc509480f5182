//! Union logic over temp-dir layers, without a mount: the core API called directly.

use super::*;
use std::os::unix::fs::symlink;

/// A union over temp dirs: `lowers[0]` is the topmost lower.
struct Fixture {
    _t: tempfile::TempDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    u: Union,
}

const ME: Caller = Caller { uid: 0, gid: 0 };

fn caller() -> Caller {
    Caller {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

/// Builds `n` lower layers with `fill` and a union over them with an upper layer.
fn fixture(n: usize, fill: impl FnOnce(&[PathBuf]) -> io::Result<()>) -> io::Result<Fixture> {
    let t = tempfile::tempdir()?;
    let lowers: Vec<PathBuf> = (0..n).map(|i| t.path().join(format!("l{i}"))).collect();
    for l in &lowers {
        fs::create_dir(l)?;
    }
    fill(&lowers)?;
    let upper = t.path().join("u");
    let work = t.path().join("w");
    fs::create_dir(&upper)?;
    fs::create_dir(&work)?;
    let opts = UnionOptions {
        lowers: lowers.clone(),
        upper: Some(upper.clone()),
        work: Some(work),
        ..UnionOptions::default()
    };
    let u = Union::new(&opts)?;
    Ok(Fixture {
        _t: t,
        lowers,
        upper,
        u,
    })
}

fn write(p: &Path, data: &str) -> io::Result<()> {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(p, data)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

impl Fixture {
    /// Resolves a slash path from the root through `lookup`.
    fn walk(&self, path: &str) -> io::Result<Attr> {
        let mut a = self.u.getattr(ROOT, None)?;
        for c in path.split('/').filter(|c| !c.is_empty()) {
            a = self.u.lookup(a.node, os(c))?;
        }
        Ok(a)
    }

    fn cat(&self, path: &str) -> io::Result<String> {
        let a = self.walk(path)?;
        let fh = self.u.open(a.node, libc::O_RDONLY)?;
        let data = self.u.read(fh, 0, 1 << 20)?;
        self.u.release(fh);
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    fn ls(&self, path: &str) -> io::Result<Vec<String>> {
        let a = self.walk(path)?;
        let fh = self.u.opendir(a.node)?;
        let mut names: Vec<String> = self
            .u
            .readdir(fh)?
            .iter()
            .map(|e| e.name.to_string_lossy().into_owned())
            .filter(|n| n != "." && n != "..")
            .collect();
        self.u.release(fh);
        names.sort();
        Ok(names)
    }

    fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
        r.expect_err("must fail").raw_os_error().expect("os error")
    }
}

#[test]
fn topmost_entry_wins_and_dirs_merge() -> io::Result<()> {
    let f = fixture(2, |l| {
        write(&l[0].join("f"), "top")?;
        write(&l[1].join("f"), "bottom")?;
        write(&l[0].join("d/a"), "a")?;
        write(&l[1].join("d/b"), "b")?;
        write(&l[1].join("only"), "low")
    })?;
    assert_eq!(f.cat("f")?, "top");
    assert_eq!(f.cat("d/b")?, "b");
    assert_eq!(f.cat("only")?, "low");
    assert_eq!(f.ls("")?, vec!["d", "f", "only"]);
    assert_eq!(f.ls("d")?, vec!["a", "b"]);
    // Merged directories report one link, as kernel overlayfs does.
    assert_eq!(f.walk("d")?.nlink, 1);
    assert_eq!(Fixture::errno_of(f.walk("missing")), libc::ENOENT);
    Ok(())
}

#[test]
fn every_whiteout_encoding_hides_and_never_shows() -> io::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let f = fixture(2, |l| {
        for n in ["oci", "chr", "keep", "xw"] {
            write(&l[1].join(n), "low")?;
        }
        write(&l[0].join(".wh.oci"), "")?;
        if root {
            nix::sys::stat::mknod(&l[0].join("chr"), SFlag::S_IFCHR, Mode::empty(), 0)?;
        }
        write(&l[0].join("xw"), "")?;
        xattr::set(l[0].join("xw"), "user.overlay.whiteout", b"")
    })?;
    assert_eq!(Fixture::errno_of(f.walk("oci")), libc::ENOENT);
    assert_eq!(Fixture::errno_of(f.walk("xw")), libc::ENOENT);
    assert_eq!(Fixture::errno_of(f.walk(".wh.oci")), libc::ENOENT);
    let mut want = vec!["keep"];
    if root {
        assert_eq!(Fixture::errno_of(f.walk("chr")), libc::ENOENT);
    } else {
        eprintln!("!!!! char-device whiteout part of this test needs root (mknod 0/0) !!!!");
        want.insert(0, "chr");
    }
    assert_eq!(f.ls("")?, want);
    Ok(())
}

#[test]
fn opaque_dirs_in_every_encoding_hide_lower_content() -> io::Result<()> {
    let f = fixture(2, |l| {
        write(&l[1].join("a/lowfile"), "x")?;
        write(&l[1].join("b/lowfile"), "x")?;
        write(&l[1].join("c/lowfile"), "x")?;
        write(&l[0].join("a/.wh..wh..opq"), "")?;
        write(&l[0].join("a/mine"), "m")?;
        fs::create_dir(l[0].join("b"))?;
        xattr::set(l[0].join("b"), "user.overlay.opaque", b"y")?;
        fs::create_dir(l[0].join("c"))?;
        xattr::set(l[0].join("c"), "user.fuseoverlayfs.opaque", b"y")
    })?;
    assert_eq!(f.ls("a")?, vec!["mine"]);
    assert!(f.ls("b")?.is_empty());
    assert!(f.ls("c")?.is_empty());
    assert_eq!(Fixture::errno_of(f.walk("a/lowfile")), libc::ENOENT);
    Ok(())
}

#[test]
fn copy_up_keeps_data_mode_times_xattrs_and_inode() -> io::Result<()> {
    let f = fixture(1, |l| {
        write(&l[0].join("dir/file"), "hello")?;
        fs::set_permissions(l[0].join("dir/file"), fs::Permissions::from_mode(0o640))?;
        fs::set_permissions(l[0].join("dir"), fs::Permissions::from_mode(0o750))?;
        xattr::set(l[0].join("dir/file"), "user.note", b"kept")?;
        xattr::set(l[0].join("dir/file"), "user.overlay.opaque", b"y")?;
        set_times(
            &l[0].join("dir/file"),
            Some(SetTime::At(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            )),
            Some(SetTime::At(
                SystemTime::UNIX_EPOCH + Duration::from_secs(2000),
            )),
        )
    })?;
    let before = f.walk("dir/file")?;
    let fh = f.u.open(before.node, libc::O_RDWR)?;
    let after_open = f.u.getattr(before.node, None)?;
    assert_eq!(after_open.mtime, before.mtime, "copy-up keeps mtime");
    assert_eq!(after_open.ino, before.ino, "copy-up keeps the inode number");
    f.u.write(fh, 5, b" world")?;
    f.u.release(fh);
    let up = f.upper.join("dir/file");
    assert_eq!(fs::read_to_string(&up)?, "hello world");
    assert_eq!(fs::read_to_string(f.lowers[0].join("dir/file"))?, "hello");
    let m = fs::metadata(&up)?;
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        fs::metadata(f.upper.join("dir"))?.permissions().mode() & 0o7777,
        0o750
    );
    assert_eq!(xattr::get(&up, "user.note")?.as_deref(), Some(&b"kept"[..]));
    assert_eq!(
        xattr::get(&up, "user.overlay.opaque")?,
        None,
        "markers stay below"
    );
    let a = f.walk("dir/file")?;
    assert_eq!(a.ino, before.ino);
    assert_eq!(a.size, 11);
    Ok(())
}

#[test]
fn unlink_of_lower_file_writes_oci_whiteout_and_recreate_removes_it() -> io::Result<()> {
    let f = fixture(1, |l| write(&l[0].join("f"), "low"))?;
    f.u.unlink(ROOT, os("f"))?;
    assert!(fs::symlink_metadata(f.upper.join(".wh.f"))?.is_file());
    assert_eq!(Fixture::errno_of(f.walk("f")), libc::ENOENT);
    assert!(f.ls("")?.is_empty());
    let (a, fh) = f.u.create(ROOT, os("f"), 0o644, libc::O_RDWR, caller())?;
    f.u.write(fh, 0, b"new")?;
    f.u.release(fh);
    assert_eq!(a.perm, 0o644);
    assert_eq!(f.cat("f")?, "new");
    assert!(fs::symlink_metadata(f.upper.join(".wh.f")).is_err());
    // Upper-only files leave no whiteout behind.
    f.u.mknod(ROOT, os("g"), libc::S_IFIFO | 0o600, 0, caller())?;
    assert_eq!(f.walk("g")?.kind, FileKind::Pipe);
    f.u.unlink(ROOT, os("g"))?;
    assert!(fs::symlink_metadata(f.upper.join(".wh.g")).is_err());
    Ok(())
}

#[test]
fn creates_replace_upper_whiteouts_of_every_kind_and_refuse_taken_names() -> io::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let f = fixture(1, |l| {
        for n in ["chr", "oci", "dir/x"] {
            write(&l[0].join(n), "low")?;
        }
        write(&l[0].join("both"), "low")
    })?;
    // An upper left by kernel overlayfs (whiteout devices) or by us (OCI files).
    if root {
        // "stale" hides nothing: no lower layer has that name.
        for n in ["chr", "stale"] {
            nix::sys::stat::mknod(&f.upper.join(n), SFlag::S_IFCHR, Mode::empty(), 0)?;
        }
    }
    write(&f.upper.join(".wh.oci"), "")?;
    write(&f.upper.join(".wh.dir"), "")?;
    let f = Fixture {
        u: Union::new(&UnionOptions {
            lowers: f.lowers.clone(),
            upper: Some(f.upper.clone()),
            work: Some(f._t.path().join("w")),
            ..UnionOptions::default()
        })?,
        ..f
    };
    let names: &[&str] = if root {
        &["chr", "stale", "oci"]
    } else {
        &["oci"]
    };
    for &n in names {
        assert_eq!(Fixture::errno_of(f.walk(n)), libc::ENOENT, "{n}");
        let (_, fh) = f.u.create(ROOT, os(n), 0o644, libc::O_RDWR, caller())?;
        f.u.write(fh, 0, b"new")?;
        f.u.release(fh);
        assert_eq!(f.cat(n)?, "new", "{n}");
        assert!(fs::symlink_metadata(f.upper.join(format!(".wh.{n}"))).is_err());
        assert!(fs::symlink_metadata(f.upper.join(n))?.is_file());
    }
    // A directory over a whiteout is opaque: the lower dir's files stay hidden.
    let d = f.u.mkdir(ROOT, os("dir"), 0o755, caller())?;
    assert_eq!(Fixture::errno_of(f.walk("dir/x")), libc::ENOENT);
    assert_eq!(d.kind, FileKind::Dir);
    // Names taken in the upper or shown from below are refused, whatever the call.
    for n in ["both", "chr", "dir"] {
        let e = f.u.mknod(ROOT, os(n), libc::S_IFREG | 0o644, 0, caller());
        assert_eq!(Fixture::errno_of(e), libc::EEXIST, "{n}");
        let e = f.u.symlink(ROOT, os(n), Path::new("t"), caller());
        assert_eq!(Fixture::errno_of(e), libc::EEXIST, "{n}");
    }
    let sub = f.u.mkdir(ROOT, os("new"), 0o755, caller())?;
    f.u.mkdir(sub.node, os("a"), 0o755, caller())?;
    let e = f.u.create(sub.node, os("a"), 0o644, libc::O_RDWR, caller());
    assert_eq!(Fixture::errno_of(e), libc::EEXIST);
    Ok(())
}

/// Each upper file's record is its own: lookups of files already in the upper (left by
/// an earlier mount) cache what they read under the right node, and changes through the
/// union are what later attribute replies show.
#[test]
fn upper_records_are_kept_per_node() -> io::Result<()> {
    let f = fixture(1, |_| Ok(()))?;
    let rec = |s: &[u8]| {
        OverrideStat::parse(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    };
    write(&f.upper.join("a"), "a")?;
    rec(b"0:0:0600")?.write(&f.upper.join("a"))?;
    write(&f.upper.join("d/b"), "b")?;
    rec(b"5:6:0644")?.write(&f.upper.join("d/b"))?;
    let root_perm = fs::metadata(&f.upper)?.permissions().mode() & 0o7777;
    for _ in 0..2 {
        let (a, b) = (f.walk("a")?, f.walk("d/b")?);
        assert_eq!((a.uid, a.gid, a.perm), (0, 0, 0o600));
        assert_eq!((b.uid, b.gid, b.perm), (5, 6, 0o644));
        let (a, b) = (f.u.getattr(a.node, None)?, f.u.getattr(b.node, None)?);
        assert_eq!((a.uid, a.perm, b.uid, b.perm), (0, 0o600, 5, 0o644));
        let (root, d) = (f.u.getattr(ROOT, None)?, f.walk("d")?);
        assert_eq!(
            (root.perm, d.uid),
            (root_perm, nix::unistd::geteuid().as_raw())
        );
    }
    let b = f.walk("d/b")?;
    let set = SetAttr {
        mode: Some(0o640),
        uid: Some(7),
        ..SetAttr::default()
    };
    f.u.setattr(b.node, set, None)?;
    let again = f.u.getattr(b.node, None)?;
    assert_eq!((again.uid, again.gid, again.perm), (7, 6, 0o640));
    assert_eq!(f.walk("d/b")?.perm, 0o640);
    assert_eq!(f.walk("a")?.perm, 0o600);
    Ok(())
}

#[test]
fn rmdir_honours_whiteouts_and_recreated_dir_is_opaque() -> io::Result<()> {
    let f = fixture(1, |l| {
        write(&l[0].join("d/x"), "x")?;
        write(&l[0].join("d/y"), "y")
    })?;
    assert_eq!(Fixture::errno_of(f.u.rmdir(ROOT, os("d"))), libc::ENOTEMPTY);
    let d = f.walk("d")?.node;
    f.u.unlink(d, os("x"))?;
    assert_eq!(Fixture::errno_of(f.u.rmdir(ROOT, os("d"))), libc::ENOTEMPTY);
    f.u.unlink(d, os("y"))?;
    f.u.rmdir(ROOT, os("d"))?;
    assert!(fs::symlink_metadata(f.upper.join(".wh.d"))?.is_file());
    assert!(fs::symlink_metadata(f.upper.join("d")).is_err());
    f.u.mkdir(ROOT, os("d"), 0o755, caller())?;
    assert!(f.upper.join("d/.wh..wh..opq").is_file());
    assert!(!f.upper.join(".wh.d").exists());
    assert!(f.ls("d")?.is_empty());
    assert_eq!(Fixture::errno_of(f.u.unlink(ROOT, os("d"))), libc::EISDIR);
    Ok(())
}

#[test]
fn rename_rules() -> io::Result<()> {
    let f = fixture(1, |l| {
        write(&l[0].join("lowdir/f"), "x")?;
        write(&l[0].join("lowfile"), "data")?;
        write(&l[0].join("other"), "o")
    })?;
    assert_eq!(
        Fixture::errno_of(f.u.rename(ROOT, os("lowfile"), ROOT, os("other"), RENAME_NOREPLACE)),
        libc::EEXIST
    );
    assert_eq!(
        Fixture::errno_of(f.u.rename(ROOT, os("lowfile"), ROOT, os("other"), RENAME_EXCHANGE)),
        libc::EINVAL
    );
    let ino = f.walk("lowfile")?.ino;
    f.u.rename(ROOT, os("lowfile"), ROOT, os("newfile"), 0)?;
    assert_eq!(f.cat("newfile")?, "data");
    assert_eq!(f.walk("newfile")?.ino, ino, "rename keeps the inode number");
    assert!(f.upper.join(".wh.lowfile").is_file());
    assert_eq!(f.ls("")?, vec!["lowdir", "newfile", "other"]);
    // Upper-only directories move, with their content.
    let nd = f.u.mkdir(ROOT, os("up"), 0o755, caller())?;
    f.u.create(ROOT, os("tmp"), 0o644, libc::O_RDWR, caller())
        .map(|(_, fh)| f.u.release(fh))?;
    f.u.rename(ROOT, os("tmp"), nd.node, os("inside"), 0)?;
    f.u.rename(ROOT, os("up"), ROOT, os("up2"), 0)?;
    assert_eq!(f.ls("up2")?, vec!["inside"]);
    assert!(!f.upper.join(".wh.up").exists(), "nothing below to hide");
    // Replacing a file that exists below needs no whiteout: the upper entry shadows it.
    f.u.rename(ROOT, os("newfile"), ROOT, os("other"), 0)?;
    assert_eq!(f.cat("other")?, "data");
    // A directory renamed over an emptied lower directory becomes opaque.
    let ld = f.walk("lowdir")?.node;
    f.u.unlink(ld, os("f"))?;
    f.u.rename(ROOT, os("up2"), ROOT, os("lowdir"), 0)?;
    assert_eq!(f.ls("lowdir")?, vec!["inside"]);
    assert!(f.upper.join("lowdir/.wh..wh..opq").is_file());
    Ok(())
}

#[test]
fn hard_links_share_inode_and_count() -> io::Result<()> {
    let f = fixture(1, |l| write(&l[0].join("a"), "x"))?;
    let a = f.walk("a")?;
    let b = f.u.link(a.node, ROOT, os("b"))?;
    assert_eq!(b.ino, a.ino);
    assert_eq!(b.nlink, 2);
    assert_eq!(f.u.getattr(a.node, None)?.nlink, 2);
    assert_eq!(f.walk("a")?.ino, f.walk("b")?.ino);
    f.u.unlink(ROOT, os("a"))?;
    assert_eq!(f.walk("b")?.nlink, 1);
    Ok(())
}

#[test]
fn lower_hard_links_are_one_inode_and_copy_up_breaks_off_the_name_used() -> io::Result<()> {
    let f = fixture(1, |l| {
        write(&l[0].join("d/a"), "old")?;
        fs::hard_link(l[0].join("d/a"), l[0].join("d/b"))?;
        fs::hard_link(l[0].join("d/a"), l[0].join("d/c"))
    })?;
    let d = f.walk("d")?.node;
    let (a, b, c) = (f.walk("d/a")?, f.walk("d/b")?, f.walk("d/c")?);
    assert!(
        a.ino == b.ino && b.ino == c.ino,
        "one inode: {a:?} {b:?} {c:?}"
    );
    assert_eq!((a.nlink, b.nlink), (3, 3), "st_nlink as on disk");
    assert!(
        b.uncached_entry,
        "group names must not be cached by the kernel"
    );
    // Writing through the node after looking up `b` copies up `b` alone.
    f.walk("d/b")?;
    let fh = f.u.open(b.node, libc::O_WRONLY)?;
    f.u.write(fh, 0, b"NEW")?;
    f.u.release(fh);
    assert_eq!(f.cat("d/b")?, "NEW");
    assert_eq!((f.cat("d/a")?, f.cat("d/c")?), ("old".into(), "old".into()));
    let (a2, b2, c2) = (f.walk("d/a")?, f.walk("d/b")?, f.walk("d/c")?);
    assert_eq!(b2.node, b.node, "open files keep the copied-up name's node");
    assert_eq!((b2.nlink, b2.uncached_entry), (1, false));
    assert_eq!(a2.ino, c2.ino);
    assert_ne!(a2.ino, b2.ino);
    assert_eq!(a2.nlink, 3);
    assert!(f.upper.join("d/b").exists() && !f.upper.join("d/a").exists());
    // A rename moves its own name only, whichever name was looked up last.
    f.walk("d/a")?;
    f.u.rename(d, os("c"), d, os("c2"), 0)?;
    assert_ne!(f.walk("d/c2")?.ino, f.walk("d/a")?.ino);
    assert_eq!(f.cat("d/a")?, "old");
    assert!(!f.upper.join("d/a").exists());
    Ok(())
}

#[test]
fn copy_up_of_a_link_before_its_other_names_are_seen_leaves_them_alone() -> io::Result<()> {
    let f = fixture(1, |l| {
        write(&l[0].join("d1/x"), "old")?;
        write(&l[0].join("d2/keep"), "")?;
        fs::hard_link(l[0].join("d1/x"), l[0].join("d2/y"))
    })?;
    let x = f.walk("d1/x")?;
    let fh = f.u.open(x.node, libc::O_WRONLY | libc::O_TRUNC)?;
    f.u.write(fh, 0, b"new")?;
    f.u.release(fh);
    let y = f.walk("d2/y")?;
    assert_ne!(y.node, x.node);
    assert_eq!(
        (f.cat("d1/x")?, f.cat("d2/y")?),
        ("new".into(), "old".into())
    );
    assert_eq!((f.walk("d1/x")?.nlink, y.nlink), (1, 2));
    Ok(())
}

#[test]
fn copy_up_keeps_parent_times_and_creation_updates_them() -> io::Result<()> {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let f = fixture(1, |l| {
        write(&l[0].join("a/b/f"), "x")?;
        for p in ["a/b", "a"] {
            set_times(
                &l[0].join(p),
                Some(SetTime::At(old)),
                Some(SetTime::At(old)),
            )?;
        }
        Ok(())
    })?;
    let file = f.walk("a/b/f")?;
    f.u.setattr(
        file.node,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
        None,
    )?;
    assert!(f.upper.join("a/b/f").exists());
    assert_eq!(f.walk("a")?.mtime, old);
    assert_eq!(f.walk("a/b")?.mtime, old);
    // A new name is a change the user made: its parent's mtime moves.
    let b = f.walk("a/b")?.node;
    f.u.mknod(b, os("new"), libc::S_IFREG | 0o644, 0, caller())?;
    assert!(f.walk("a/b")?.mtime > old);
    assert_eq!(f.walk("a")?.mtime, old);
    Ok(())
}

#[test]
fn recorded_ownership_is_written_and_presented() -> io::Result<()> {
    let mut f = fixture(1, |l| {
        write(&l[0].join("low"), "x")?;
        OverrideStat::parse(b"77:88:4711")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            .write(&l[0].join("low"))
    })?;
    f.u.set_owner_mode(OwnerMode::Record);
    // Lower files carrying the record are presented with it.
    let low = f.walk("low")?;
    assert_eq!((low.uid, low.gid, low.perm), (77, 88, 0o4711));
    let who = Caller {
        uid: 1234,
        gid: 2345,
    };
    let (a, fh) = f.u.create(ROOT, os("new"), 0o400, libc::O_RDWR, who)?;
    f.u.release(fh);
    assert_eq!((a.uid, a.gid, a.perm), (1234, 2345, 0o400));
    let on_disk = f.upper.join("new");
    assert_eq!(
        OverrideStat::read(&on_disk)?.map(|o| o.encode()),
        Some("1234:2345:0400".to_owned())
    );
    // The daemon's user keeps access to what it stores.
    assert_eq!(fs::metadata(&on_disk)?.permissions().mode() & 0o600, 0o600);
    let set = SetAttr {
        uid: Some(5),
        mode: Some(0o2750),
        ..SetAttr::default()
    };
    let a = f.u.setattr(a.node, set, None)?;
    assert_eq!((a.uid, a.gid, a.perm), (5, 2345, 0o2750));
    // chmod of a copied-up lower file keeps its recorded owner.
    let c = f.u.setattr(
        low.node,
        SetAttr {
            mode: Some(0o644),
            ..SetAttr::default()
        },
        None,
    )?;
    assert_eq!((c.uid, c.gid, c.perm), (77, 88, 0o644));
    // Device nodes that cannot be made become recorded files when unprivileged.
    let d = f.u.mknod(
        ROOT,
        os("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
        who,
    )?;
    assert_eq!(d.kind, FileKind::Char { major: 1, minor: 3 });
    let fh = f.u.opendir(ROOT)?;
    let listed = f.u.readdir(fh)?;
    f.u.release(fh);
    let null = listed.iter().find(|e| e.name == "null").map(|e| e.kind);
    assert_eq!(
        null,
        Some(FileKind::Char { major: 1, minor: 3 }),
        "listing agrees with stat"
    );
    // Private xattrs never show.
    assert!(f.u.listxattr(a.node)?.is_empty());
    assert_eq!(
        Fixture::errno_of(f.u.getxattr(a.node, os(OVERRIDE_XATTR))),
        libc::ENODATA
    );
    assert_eq!(
        Fixture::errno_of(f.u.setxattr(a.node, os(OVERRIDE_XATTR), b"0:0:777", 0)),
        libc::EPERM
    );
    Ok(())
}

#[test]
fn xattrs_copy_up_and_flags() -> io::Result<()> {
    let f = fixture(1, |l| {
        write(&l[0].join("f"), "x")?;
        xattr::set(l[0].join("f"), "user.a", b"1")
    })?;
    let a = f.walk("f")?;
    assert_eq!(f.u.getxattr(a.node, os("user.a"))?, b"1");
    assert_eq!(f.u.listxattr(a.node)?, b"user.a\0");
    assert_eq!(
        Fixture::errno_of(f.u.setxattr(a.node, os("user.a"), b"2", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        Fixture::errno_of(f.u.setxattr(a.node, os("user.b"), b"2", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    f.u.setxattr(a.node, os("user.b"), b"2", 0)?;
    f.u.removexattr(a.node, os("user.a"))?;
    assert_eq!(f.u.listxattr(a.node)?, b"user.b\0");
    assert_eq!(
        xattr::get(f.lowers[0].join("f"), "user.a")?.as_deref(),
        Some(&b"1"[..])
    );
    Ok(())
}

#[test]
fn symlinks_setattr_and_readdir_offsets() -> io::Result<()> {
    let f = fixture(1, |l| {
        symlink("target", l[0].join("ln"))?;
        write(&l[0].join("f"), "0123456789")
    })?;
    assert_eq!(f.u.readlink(f.walk("ln")?.node)?, PathBuf::from("target"));
    let s = f.u.symlink(ROOT, os("ln2"), Path::new("/abs"), caller())?;
    assert_eq!(s.kind, FileKind::Symlink);
    assert_eq!(f.u.readlink(s.node)?, PathBuf::from("/abs"));
    let a = f.walk("f")?;
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(12345);
    let set = SetAttr {
        size: Some(4),
        mtime: Some(SetTime::At(t)),
        ..SetAttr::default()
    };
    let a2 = f.u.setattr(a.node, set, None)?;
    assert_eq!((a2.size, a2.mtime), (4, t));
    assert_eq!(f.cat("f")?, "0123");
    assert_eq!(fs::read_to_string(f.lowers[0].join("f"))?, "0123456789");
    // The snapshot stays put while the directory changes.
    let fh = f.u.opendir(ROOT)?;
    let before = f.u.readdir(fh)?;
    f.u.mkdir(ROOT, os("later"), 0o755, caller())?;
    assert_eq!(f.u.readdir(fh)?, before);
    f.u.release(fh);
    Ok(())
}

#[test]
fn read_only_union_refuses_writes() -> io::Result<()> {
    let t = tempfile::tempdir()?;
    write(&t.path().join("l/f"), "x")?;
    let opts = UnionOptions {
        lowers: vec![t.path().join("l")],
        ..UnionOptions::default()
    };
    let u = Union::new(&opts)?;
    let a = u.lookup(ROOT, os("f"))?;
    assert_eq!(
        Fixture::errno_of(u.open(a.node, libc::O_WRONLY)),
        libc::EROFS
    );
    assert_eq!(Fixture::errno_of(u.unlink(ROOT, os("f"))), libc::EROFS);
    assert_eq!(
        Fixture::errno_of(u.mkdir(ROOT, os("d"), 0o755, ME)),
        libc::EROFS
    );
    let fh = u.open(a.node, libc::O_RDONLY)?;
    assert_eq!(u.read(fh, 0, 10)?, b"x");
    Ok(())
}

#[test]
fn open_unlinked_file_keeps_working_through_its_handle() -> io::Result<()> {
    let f = fixture(1, |l| write(&l[0].join("f"), "lower"))?;
    let a = f.walk("f")?;
    let fh = f.u.open(a.node, libc::O_RDWR)?;
    f.u.unlink(ROOT, os("f"))?;
    // Like any filesystem: an unlinked file that is still open can be stat'ed (the
    // kernel revalidates without a handle), reopened (/proc/PID/fd) and chmod'ed.
    assert_eq!(f.u.getattr(a.node, None)?.size, 5);
    let again = f.u.open(a.node, libc::O_RDONLY)?;
    assert_eq!(f.u.read(again, 0, 100)?, b"lower");
    f.u.release(again);
    f.u.write(fh, 0, b"UPPER")?;
    assert_eq!(f.u.getattr(a.node, Some(fh))?.size, 5);
    assert_eq!(f.u.read(fh, 0, 100)?, b"UPPER");
    let trunc = SetAttr {
        size: Some(2),
        ..SetAttr::default()
    };
    assert_eq!(f.u.setattr(a.node, trunc, Some(fh))?.size, 2);
    // A new file of the old name is another file: the unlinked node never reaches it.
    let (b, fh2) = f.u.create(ROOT, os("f"), 0o644, libc::O_RDWR, caller())?;
    f.u.release(fh2);
    assert_ne!(b.node, a.node);
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(f.u.setattr(a.node, chmod, None)?.perm, 0o600);
    assert_eq!(f.u.getattr(b.node, None)?.perm, 0o644);
    assert_eq!(f.u.getattr(a.node, Some(fh))?.size, 2);
    f.u.release(fh);
    // Closed: the unlinked file is gone for good.
    assert_eq!(Fixture::errno_of(f.u.getattr(a.node, None)), libc::ENOENT);
    assert_eq!(
        Fixture::errno_of(f.u.open(a.node, libc::O_RDONLY)),
        libc::ENOENT
    );
    f.u.forget(a.node, 1);
    assert_eq!(Fixture::errno_of(f.u.getattr(a.node, None)), libc::ESTALE);
    assert_eq!(fs::read_to_string(f.lowers[0].join("f"))?, "lower");
    assert_eq!(f.cat("f")?, "");
    Ok(())
}

#[test]
fn lookup_races_never_move_a_node_below_its_copy_up() -> io::Result<()> {
    let f = fixture(1, |l| write(&l[0].join("dir/f"), "x"))?;
    let a = f.walk("dir/f")?;
    let parent = f.walk("dir")?.node;
    // Many threads: copy-up (open for write) and lookups of the same name at once.
    std::thread::scope(|s| {
        for i in 0..8 {
            let u = &f.u;
            s.spawn(move || {
                if i % 2 == 0 {
                    let fh = u.open(a.node, libc::O_WRONLY).expect("open");
                    u.release(fh);
                } else {
                    u.lookup(parent, os("f")).expect("lookup");
                }
            });
        }
    });
    let fh = f.u.open(a.node, libc::O_WRONLY)?;
    f.u.write(fh, 0, b"y")?;
    f.u.release(fh);
    assert_eq!(f.cat("dir/f")?, "y");
    assert_eq!(fs::read_to_string(f.upper.join("dir/f"))?, "y");
    assert!(
        fs::read_dir(f._t.path().join("w").join(WORK_SUBDIR))?
            .next()
            .is_none(),
        "losing copy-ups leave nothing behind in the work dir"
    );
    Ok(())
}

#[test]
fn readdirplus_counts_references_only_for_entries_sent() -> io::Result<()> {
    let f = fixture(1, |l| {
        for n in ["a", "b", "c"] {
            write(&l[0].join("d").join(n), n)?;
        }
        Ok(())
    })?;
    let d = f.walk("d")?.node;
    let fh = f.u.opendir(d)?;
    let mut sent = Vec::new();
    let mut refused = None;
    f.u.readdirplus(d, fh, 0, |next, e, a| {
        if sent.len() == 4 {
            refused = Some(a.node);
            return true; // full
        }
        sent.push((next, e.name.to_string_lossy().into_owned(), a.kind));
        false
    })?;
    assert_eq!(sent.len(), 4);
    assert_eq!(sent[0], (1, ".".to_owned(), FileKind::Dir));
    assert_eq!(sent[1], (2, "..".to_owned(), FileKind::Dir));
    let refused = refused.expect("a fifth entry was offered");
    // Resuming at the last offset sent yields exactly the refused entry.
    let mut rest = Vec::new();
    f.u.readdirplus(d, fh, 4, |_, e, _| {
        rest.push(e.name.clone());
        false
    })?;
    assert_eq!(rest.len(), 1);
    f.u.release(fh);
    // The refused entry's reference went back; the resumed one holds one reference.
    let name = rest[0].clone();
    f.u.forget(refused, 1);
    f.u.unlink(d, &name)?;
    assert_eq!(Fixture::errno_of(f.u.getattr(refused, None)), libc::ESTALE);
    Ok(())
}

#[test]
fn new_entries_inherit_the_group_of_a_setgid_directory() -> io::Result<()> {
    let mut f = fixture(1, |l| fs::create_dir(l[0].join("shared")))?;
    f.u.set_owner_mode(OwnerMode::Record);
    let d = f.walk("shared")?;
    let set = SetAttr {
        gid: Some(4242),
        mode: Some(0o2775),
        ..SetAttr::default()
    };
    f.u.setattr(d.node, set, None)?;
    let who = Caller { uid: 7, gid: 8 };
    let (file, fh) = f.u.create(d.node, os("file"), 0o644, libc::O_RDWR, who)?;
    f.u.release(fh);
    let sub = f.u.mkdir(d.node, os("sub"), 0o755, who)?;
    assert_eq!((file.uid, file.gid, file.perm), (7, 4242, 0o644));
    assert_eq!((sub.uid, sub.gid, sub.perm), (7, 4242, 0o2755));
    Ok(())
}

/// Portage merges a hard link as `link(first, tmp)` then `rename(tmp, second)`: the
/// rename must move the name it is given, not the name the node is known by.
#[test]
fn rename_moves_the_given_name_of_an_upper_hard_link() -> io::Result<()> {
    let f = fixture(1, |_| Ok(()))?;
    let (a, fh) =
        f.u.create(ROOT, os("first"), 0o644, libc::O_RDWR, caller())?;
    f.u.write(fh, 0, b"x")?;
    f.u.release(fh);
    f.u.link(a.node, ROOT, os(".tmp"))?;
    f.u.rename(ROOT, os(".tmp"), ROOT, os("second"), 0)?;
    let upper = &f.upper;
    assert!(upper.join("first").exists(), "the other name was moved");
    assert!(upper.join("second").exists());
    assert!(!upper.join(".tmp").exists());
    assert_eq!(f.walk("second")?.nlink, 2);
    assert_eq!(f.cat("second")?, "x");
    Ok(())
}

#[test]
fn names_too_long_for_a_whiteout_work_and_the_whiteout_device_is_refused() -> io::Result<()> {
    // A NAME_MAX name cannot carry the `.wh.` prefix: looking for its whiteout must not
    // fail the lookup or the create with ENAMETOOLONG (pjdfstest *::enametoolong_component).
    let long = "n".repeat(255);
    let f = fixture(1, |l| write(&l[0].join("d/low"), "low"))?;
    let d = f.walk("d")?;
    assert_eq!(
        Fixture::errno_of(f.u.lookup(d.node, os(&long))),
        libc::ENOENT
    );
    let (a, fh) = f.u.create(
        d.node,
        os(&long),
        libc::S_IFREG | 0o644,
        libc::O_WRONLY,
        caller(),
    )?;
    f.u.release(fh);
    assert_eq!(f.walk(&format!("d/{long}"))?.node, a.node);
    assert_eq!(f.ls("d")?, ["low", long.as_str()]);
    f.u.unlink(d.node, os(&long))?;
    assert_eq!(f.ls("d")?, ["low"]);
    // Device 0/0 is the whiteout: kernel overlayfs refuses to create it with EPERM.
    let wh =
        f.u.mknod(d.node, os("c"), libc::S_IFCHR | 0o644, 0, caller());
    assert_eq!(Fixture::errno_of(wh), libc::EPERM);
    assert_eq!(f.ls("d")?, ["low"]);
    Ok(())
}

#[test]
fn lookups_answered_from_lower_listings_see_whiteouts_and_opaque_dirs() -> io::Result<()> {
    // l0 over l1: l0 whites out `gone` and makes `o` opaque; names absent from l0 must
    // still be found in l1 through l0's cached listing.
    let f = fixture(2, |l| {
        write(&l[1].join("d/gone"), "low")?;
        write(&l[1].join("d/below"), "low")?;
        write(&l[1].join("d/o/hidden"), "low")?;
        write(&l[0].join("d/.wh.gone"), "")?;
        write(&l[0].join("d/o/.wh..wh..opq"), "")?;
        write(&l[0].join("d/top"), "top")
    })?;
    assert_eq!(f.cat("d/below")?, "low");
    assert_eq!(f.cat("d/top")?, "top");
    assert_eq!(Fixture::errno_of(f.walk("d/gone")), libc::ENOENT);
    assert_eq!(Fixture::errno_of(f.walk("d/o/hidden")), libc::ENOENT);
    assert_eq!(f.ls("d")?, ["below", "o", "top"]);
    assert_eq!(f.ls("d/o")?, Vec::<String>::new());
    // Twice: the second walk is answered from the caches.
    assert_eq!(f.cat("d/below")?, "low");
    assert_eq!(Fixture::errno_of(f.walk("d/gone")), libc::ENOENT);
    Ok(())
}

/// A union told its lowers may change (the mount's view of a seed whose upper builds
/// keep writing) sees new lower files; a normal union may keep its cached listing.
#[test]
fn volatile_lowers_are_never_cached() -> io::Result<()> {
    let t = tempfile::tempdir()?;
    let (live, seed) = (t.path().join("live"), t.path().join("seed"));
    write(&seed.join("etc/a"), "a")?;
    fs::create_dir_all(live.join("etc"))?;
    let u = Union::new(&UnionOptions {
        lowers: vec![live.clone(), seed],
        volatile_lowers: true,
        ..UnionOptions::default()
    })?;
    let etc = u.lookup(ROOT, os("etc"))?;
    assert_eq!(Fixture::errno_of(u.lookup(etc.node, os("b"))), libc::ENOENT);
    write(&live.join("etc/b"), "b")?; // a build writes the seed's upper
    assert_eq!(u.lookup(etc.node, os("b"))?.size, 1);
    Ok(())
}

/// The opts of a fixture's union, to open it again over the same dirs.
fn reopen(f: &Fixture) -> io::Result<Union> {
    Union::new(&UnionOptions {
        lowers: f.lowers.clone(),
        upper: Some(f.upper.clone()),
        work: Some(f.upper.with_file_name("w")),
        ..UnionOptions::default()
    })
}

/// Everything about a layer dir: path, type, size, link count, inode, content.
fn layer_state(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            let m = fs::symlink_metadata(&p)?;
            let data = if m.is_file() {
                fs::read(&p)?
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} {:o} {} {} {:?}",
                p.display(),
                m.mode(),
                m.ino(),
                m.mtime(),
                data
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn renaming_a_lower_directory_copies_the_merged_tree_linking_its_files() -> io::Result<()> {
    let f = fixture(2, |l| {
        write(&l[0].join("d/a"), "a0")?;
        write(&l[0].join("d/sub/x"), "x0")?;
        write(&l[0].join("d/.wh.gone"), "")?;
        write(&l[0].join("d/hl1"), "h")?;
        fs::hard_link(l[0].join("d/hl1"), l[0].join("d/hl2"))?;
        symlink("a", l[0].join("d/sym"))?;
        write(&l[1].join("d/gone"), "hidden")?;
        write(&l[1].join("d/b"), "b1")?;
        write(&l[1].join("d/sub/y"), "y1")?;
        write(&l[1].join("d/deep/er/z"), "z1")?;
        fs::set_permissions(l[1].join("d/deep"), fs::Permissions::from_mode(0o711))?;
        let t = |p: &Path| set_times(p, None, Some(SetTime::At(SystemTime::UNIX_EPOCH)));
        t(&l[1].join("d/deep"))?;
        t(&l[0].join("d"))
    })?;
    let before: Vec<_> = f
        .lowers
        .iter()
        .map(|l| layer_state(l))
        .collect::<Result<_, _>>()?;
    // Upper content inside: a new file, a whiteout, a copied-up file.
    let d = f.walk("d")?.node;
    let (new, wfh) = f.u.create(d, os("new"), 0o644, libc::O_RDWR, caller())?;
    f.u.unlink(d, os("b"))?;
    let x = f.walk("d/sub/x")?;
    let xfh = f.u.open(x.node, libc::O_WRONLY)?;
    f.u.write(xfh, 0, b"X")?;
    f.u.release(xfh);
    let a = f.walk("d/a")?;
    let rfh = f.u.open(a.node, libc::O_RDONLY)?;
    let z = f.walk("d/deep/er/z")?;

    f.u.rename(ROOT, os("d"), ROOT, os("e"), 0)?;

    assert_eq!(f.ls("")?, vec!["e"]);
    assert_eq!(
        f.ls("e")?,
        vec!["a", "deep", "hl1", "hl2", "new", "sub", "sym"]
    );
    assert_eq!(f.ls("e/sub")?, vec!["x", "y"]);
    assert_eq!(
        (f.cat("e/sub/x")?, f.cat("e/a")?),
        ("X0".into(), "a0".into())
    );
    assert_eq!(f.cat("e/deep/er/z")?, "z1");
    // Same nodes, same inode numbers, at the new paths.
    assert_eq!(f.walk("e/a")?.node, a.node);
    assert_eq!(f.walk("e/deep/er/z")?.node, z.node);
    assert_eq!(f.walk("e/deep")?.perm, 0o711);
    let mtime = |p: &str| f.walk(p).map(|a| a.mtime);
    assert_eq!(mtime("e/deep")?, SystemTime::UNIX_EPOCH);
    // Open files keep working: a writer of an upper file, a reader of a lower one.
    f.u.write(wfh, 0, b"written after")?;
    f.u.release(wfh);
    assert_eq!(f.cat("e/new")?, "written after");
    assert_eq!(f.u.read(rfh, 0, 10)?, b"a0");
    f.u.release(rfh);
    assert_eq!(f.u.getattr(new.node, None)?.size, 13);

    // The upper: an opaque copy under the new name, a whiteout for the old one.
    let up = |p: &str| f.upper.join(p);
    assert!(up(".wh.d").is_file() && !up("d").exists());
    assert!(up("e/.wh..wh..opq").is_file());
    assert!(!up("e/.wh.b").exists() && !up("e/b").exists());
    assert!(xattr::list(up("e"))?.all(|n| !n.to_string_lossy().contains("overlay")));
    // Lower files are linked, not copied; presented with the lower's link count.
    let ino = |p: &Path| fs::symlink_metadata(p).map(|m| m.ino());
    assert_eq!(ino(&up("e/a"))?, ino(&f.lowers[0].join("d/a"))?);
    assert_eq!(
        ino(&up("e/deep/er/z"))?,
        ino(&f.lowers[1].join("d/deep/er/z"))?
    );
    assert_eq!(f.walk("e/a")?.nlink, 1);
    // A lower hard-link group is copied once: its names stay one file of the upper.
    assert_ne!(ino(&up("e/hl1"))?, ino(&f.lowers[0].join("d/hl1"))?);
    assert_eq!(ino(&up("e/hl1"))?, ino(&up("e/hl2"))?);
    assert!(fs::symlink_metadata(up("e/sym"))?.file_type().is_symlink());

    // Changing a linked file gives it a copy of its own first: the lower stays as it was.
    let afh = f.u.open(a.node, libc::O_WRONLY | libc::O_TRUNC)?;
    f.u.write(afh, 0, b"A")?;
    f.u.release(afh);
    assert_eq!(f.cat("e/a")?, "A");
    assert_ne!(ino(&up("e/a"))?, ino(&f.lowers[0].join("d/a"))?);
    let y = f.walk("e/sub/y")?;
    f.u.setattr(
        y.node,
        SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
        None,
    )?;
    assert_eq!(f.walk("e/sub/y")?.perm, 0o600);
    let after: Vec<_> = f
        .lowers
        .iter()
        .map(|l| layer_state(l))
        .collect::<Result<_, _>>()?;
    assert_eq!(before, after, "lower layers changed");

    // The record of linked files outlives the union: a new one copies before writing.
    let u2 = reopen(&f)?;
    let zz = {
        let e = u2.lookup(ROOT, os("e"))?;
        let deep = u2.lookup(e.node, os("deep"))?;
        let er = u2.lookup(deep.node, os("er"))?;
        u2.lookup(er.node, os("z"))?
    };
    assert_eq!(zz.nlink, 1);
    let zfh = u2.open(zz.node, libc::O_WRONLY)?;
    u2.write(zfh, 0, b"Z")?;
    u2.release(zfh);
    assert_eq!(fs::read_to_string(f.lowers[1].join("d/deep/er/z"))?, "z1");
    assert_eq!(fs::read_to_string(up("e/deep/er/z"))?, "Z1");
    Ok(())
}

#[test]
fn renaming_a_lower_directory_onto_targets_behaves_as_rename() -> io::Result<()> {
    let f = fixture(1, |l| {
        write(&l[0].join("p/q/r/f"), "f")?;
        write(&l[0].join("s/t/keep"), "k")?;
        write(&l[0].join("emptied/one"), "1")?;
        write(&l[0].join("full/x"), "x")?;
        write(&l[0].join("file"), "file")?;
        fs::create_dir_all(l[0].join("emptydir"))
    })?;
    let errno = Fixture::errno_of;
    let r = |a: &str, b: &str, flags| {
        let (pa, na) = a.rsplit_once('/').unwrap_or(("", a));
        let (pb, nb) = b.rsplit_once('/').unwrap_or(("", b));
        let (pa, pb) = (f.walk(pa)?.node, f.walk(pb)?.node);
        f.u.rename(pa, os(na), pb, os(nb), flags)
    };
    assert_eq!(errno(r("p/q/r", "full", 0)), libc::ENOTEMPTY);
    assert_eq!(errno(r("p/q/r", "file", 0)), libc::ENOTDIR);
    assert_eq!(
        errno(r("p/q/r", "emptydir", RENAME_NOREPLACE)),
        libc::EEXIST
    );
    // Deep, into a parent that exists only below: the parents are copied up.
    r("p/q/r", "s/t/r2", RENAME_NOREPLACE)?;
    assert_eq!(f.ls("s/t")?, vec!["keep", "r2"]);
    assert_eq!(f.ls("p/q")?, Vec::<String>::new());
    assert_eq!(f.cat("s/t/r2/f")?, "f");
    assert!(f.upper.join("p/q/.wh.r").is_file());
    // Over a directory emptied by whiteouts: it is replaced, its markers go.
    let em = f.walk("emptied")?.node;
    f.u.unlink(em, os("one"))?;
    r("s/t/r2", "emptied", 0)?;
    assert_eq!(f.ls("emptied")?, vec!["f"]);
    assert!(!f.upper.join("emptied/.wh.one").exists());
    assert!(f.upper.join("emptied/.wh..wh..opq").is_file());
    // Over a lower empty directory: the opaque copy hides it.
    r("emptied", "emptydir", 0)?;
    assert_eq!(f.ls("emptydir")?, vec!["f"]);
    assert_eq!(f.ls("")?, vec!["emptydir", "file", "full", "p", "s"]);
    // Back over its own whiteout: opaque, the whiteout gone.
    r("full", "p/q/r", 0)?;
    assert_eq!(f.ls("p/q/r")?, vec!["x"]);
    assert!(!f.upper.join("p/q/.wh.r").exists());
    Ok(())
}

/// Lower files on another filesystem than the upper cannot be linked: copied instead;
/// another lower layer's files on the upper's filesystem are still linked.
#[test]
fn a_lower_directory_on_another_filesystem_is_copied() -> io::Result<()> {
    let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("no /dev/shm: nothing to test across filesystems");
        return Ok(());
    };
    let t = tempfile::tempdir()?;
    let (lower, upper, work) = (shm.path().join("l"), t.path().join("u"), t.path().join("w"));
    // A second lower layer on the upper's filesystem: its files are still linked.
    let near = t.path().join("near");
    write(&lower.join("d/f"), "data")?;
    write(&near.join("d/g"), "near")?;
    fs::create_dir(&upper)?;
    fs::create_dir(&work)?;
    let u = Union::new(&UnionOptions {
        lowers: vec![lower.clone(), near.clone()],
        upper: Some(upper.clone()),
        work: Some(work),
        ..UnionOptions::default()
    })?;
    let d = u.lookup(ROOT, os("d"))?;
    u.rename(ROOT, os("d"), ROOT, os("e"), 0)?;
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev());
    let ino = |p: &Path| fs::metadata(p).map(|m| m.ino());
    if dev(&lower)? == dev(&upper)? {
        eprintln!("/dev/shm shares the temp dir's filesystem: the copy path is not reached");
    } else {
        assert_ne!(ino(&upper.join("e/f"))?, ino(&lower.join("d/f"))?);
        assert_eq!(fs::metadata(upper.join("e/f"))?.nlink(), 1);
    }
    assert_eq!(ino(&upper.join("e/g"))?, ino(&near.join("d/g"))?);
    assert_eq!(fs::read_to_string(upper.join("e/f"))?, "data");
    let e = u.lookup(ROOT, os("e"))?;
    assert_eq!(e.node, d.node);
    Ok(())
}

/// Creates and copy-ups below a lower directory while it is renamed are never lost:
/// each lands either before the tree is copied (and is in the copy) or after the swap
/// (in the new tree, through the node, whose path has moved).
#[test]
fn changes_during_a_directory_rename_are_kept() -> io::Result<()> {
    let f = fixture(1, |l| {
        for i in 0..3000 {
            write(&l[0].join(format!("d/s{}/f{i}", i % 3)), "lower")?;
        }
        Ok(())
    })?;
    let subs: Vec<Ino> = (0..3)
        .map(|i| f.walk(&format!("d/s{i}")).map(|a| a.node))
        .collect::<Result<_, _>>()?;
    let files: Vec<Ino> = (0..300)
        .map(|i| f.walk(&format!("d/s{}/f{i}", i % 3)).map(|a| a.node))
        .collect::<Result<_, _>>()?;
    let made = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (t, &sub) in subs.iter().enumerate() {
            let (u, made) = (&f.u, &made);
            s.spawn(move || {
                for n in 0..200 {
                    let name = format!("new{t}-{n}");
                    if let Ok((_, fh)) = u.create(sub, os(&name), 0o644, libc::O_RDWR, caller()) {
                        u.release(fh);
                        made.lock().unwrap().push((t, name));
                    }
                }
            });
        }
        let u = &f.u;
        let files = &files;
        s.spawn(move || {
            for &node in files {
                let set = SetAttr {
                    mode: Some(0o600),
                    ..SetAttr::default()
                };
                u.setattr(node, set, None).expect("chmod");
            }
        });
        std::thread::sleep(Duration::from_millis(2));
        f.u.rename(ROOT, os("d"), ROOT, os("e"), 0).expect("rename");
    });
    let made = made.into_inner().unwrap();
    assert_eq!(
        made.len(),
        600,
        "every create succeeds, before or after the swap"
    );
    for (t, name) in &made {
        f.walk(&format!("e/s{t}/{name}"))?;
    }
    for i in 0..300 {
        assert_eq!(f.walk(&format!("e/s{}/f{i}", i % 3))?.perm, 0o600, "f{i}");
    }
    assert_eq!(f.ls("e/s0")?.len(), 1000 + 200);
    Ok(())
}

/// An `O_TRUNC` open copies a lower file up without its data (it is about to go): the
/// lower file is never read, so its atime (older than its mtime, which relatime would
/// update on a read) stays. The same for a file a directory rename linked.
#[test]
fn truncating_opens_copy_up_without_reading_the_data() -> io::Result<()> {
    let f = fixture(1, |l| {
        write(&l[0].join("big"), &"x".repeat(1 << 20))?;
        write(&l[0].join("d/linked"), "data")?;
        for p in [l[0].join("big"), l[0].join("d/linked")] {
            let at = |s| Some(SetTime::At(SystemTime::UNIX_EPOCH + Duration::from_secs(s)));
            set_times(&p, at(1_000), at(2_000))?;
        }
        Ok(())
    })?;
    f.u.rename(ROOT, os("d"), ROOT, os("e"), 0)?;
    for (path, lower) in [("big", "big"), ("e/linked", "d/linked")] {
        let a = f.walk(path)?;
        let fh = f.u.open(a.node, libc::O_RDONLY | libc::O_TRUNC)?;
        f.u.release(fh);
        assert_eq!(f.cat(path)?, "");
        let m = fs::metadata(f.lowers[0].join(lower))?;
        assert_eq!((m.atime(), m.mtime()), (1_000, 2_000), "{lower} was read");
        assert!(m.len() > 0);
    }
    Ok(())
}
