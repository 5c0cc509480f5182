//! `gentree-fs import-seed`: tarballs made by GNU tar (each compression format, by the
//! real CLI compressors) and by Python's tarfile (hostile members), directory
//! sources, as root and as an ordinary user, atomicity and name checks.
// Fixture helpers outside #[test] fns: a panic there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gentree_fs::layers::ownership::{Effective, FileKind, OVERRIDE_XATTR, OverrideStat};

use crate::util::{self, gentree, run, run_ok};

/// A file capability granting cap_net_raw (effective), as `setcap cap_net_raw+ep` writes it.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// What the image says about one path: type, owner, mode, time, content, xattrs and
/// hard-link group, with recorded ownership applied (so a root import and an
/// unprivileged one compare equal to the same source).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: String,
    uid: u32,
    gid: u32,
    perm: u32,
    mtime: i64,
    content: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in walk order) sharing this inode, for non-directories.
    link_group: Option<PathBuf>,
}

/// Walks `root` without following symlinks. `keep_xattr` selects the xattrs compared.
fn snapshot(root: &Path, keep_xattr: &dyn Fn(&str) -> bool) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let (md, eff) =
            Effective::of_path(&abs).unwrap_or_else(|e| panic!("{}: {e}", abs.display()));
        let mut content = Vec::new();
        match eff.kind {
            FileKind::Dir => {
                let mut kids: Vec<_> = fs::read_dir(&abs)
                    .unwrap_or_else(|e| panic!("{}: {e}", abs.display()))
                    .map(|d| rel.join(d.expect("readdir").file_name()))
                    .collect();
                kids.sort();
                stack.extend(kids);
            }
            FileKind::Symlink => {
                content = fs::read_link(&abs)
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes()
            }
            FileKind::File => content = fs::read(&abs).expect("read"),
            _ => {}
        }
        let mut xattrs = BTreeMap::new();
        if !md.file_type().is_symlink() {
            for k in xattr::list(&abs).expect("listxattr") {
                let k = k.to_string_lossy().into_owned();
                if k != OVERRIDE_XATTR && keep_xattr(&k) {
                    xattrs.insert(k.clone(), xattr::get(&abs, &k).expect("getxattr").unwrap());
                }
            }
        }
        let link_group = (!md.is_dir()).then(|| {
            inodes
                .entry((md.dev(), md.ino()))
                .or_insert_with(|| rel.clone())
                .clone()
        });
        out.insert(
            rel,
            Node {
                kind: eff.kind.to_string(),
                uid: eff.uid,
                gid: eff.gid,
                perm: eff.perm,
                mtime: md.mtime(),
                content,
                xattrs,
                link_group,
            },
        );
    }
    out
}

fn assert_same_tree(want: &BTreeMap<PathBuf, Node>, got: &BTreeMap<PathBuf, Node>, what: &str) {
    let wk: Vec<_> = want.keys().collect();
    let gk: Vec<_> = got.keys().collect();
    assert_eq!(wk, gk, "{what}: different paths");
    for (p, w) in want {
        assert_eq!(Some(w), got.get(p), "{what}: {} differs", p.display());
    }
}

fn sh(cmd: &str) {
    run_ok(Command::new("sh").arg("-euc").arg(cmd));
}

/// A source tree with what a stage3 has: setuid and sticky modes, foreign owners, an
/// absolute and a relative symlink, hard links, a fifo, a device node, xattrs
/// (`user.*` and `security.capability`), a read-only directory with contents, long
/// names, old mtimes. Needs root (chown, mknod, security xattrs).
fn make_source_tree(root: &Path) {
    let long = "l".repeat(120);
    sh(&format!(
        "cd {root}
        mkdir -p usr/bin etc/ro var/tmp dev deep/{long}/{long}
        printf 'hello\\n' > usr/bin/su && chmod 4755 usr/bin/su
        printf 'ping\\n' > usr/bin/ping && chmod 0711 usr/bin/ping
        ln usr/bin/su usr/bin/su-hard
        ln -s /usr/bin/su usr/bin/abs-link
        ln -s ../usr/bin etc/rel-link
        printf 'secret\\n' > etc/shadow && chmod 0640 etc/shadow && chown 0:42 etc/shadow
        printf 'x' > etc/ro/inside && chmod 0555 etc/ro
        chmod 1777 var/tmp
        chown 1234:2345 var && chmod 2750 var
        mkfifo var/fifo && chown 7:8 var/fifo && chmod 0620 var/fifo
        mknod dev/null c 1 3 && chmod 0666 dev/null
        mknod dev/sda b 8 0 && chown 0:6 dev/sda && chmod 0660 dev/sda
        printf 'long\\n' > deep/{long}/{long}/{long}
        head -c 300000 /dev/urandom > usr/bin/big
        find . -mindepth 1 -exec touch -h -d @1600000000 {{}} +
        touch -h -d @1000000000 usr/bin/abs-link
        touch -d @1500000000 .",
        root = root.display()
    ));
    xattr::set(
        root.join("usr/bin/ping"),
        "security.capability",
        &CAP_NET_RAW,
    )
    .expect("set security.capability");
    xattr::set(root.join("usr/bin/su"), "user.note", b"kept").expect("set user xattr");
    xattr::set(root.join("etc"), "user.dir", b"d").expect("set user xattr on dir");
}

/// GNU tar of `src` in stage3 style (`./` names, numeric owners, xattrs).
fn gnu_tar(src: &Path, out: &Path) {
    run_ok(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf"])
            .arg(out)
            .arg("-C")
            .arg(src)
            .arg("."),
    );
}

/// Compresses `tar` with a CLI tool into `out`.
fn compress(tool: &str, tar: &Path, out: &Path) {
    let input = fs::File::open(tar).expect("open tar");
    let output = fs::File::create(out).expect("create compressed");
    let st = Command::new(tool)
        .arg("-c")
        .stdin(input)
        .stdout(output)
        .status()
        .expect("run compressor");
    assert!(st.success(), "{tool} failed");
}

fn import(
    source: &Path,
    name: Option<&str>,
    conf_root: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut c = gentree();
    c.arg("import-seed").arg(source);
    if let Some(n) = name {
        c.arg(n);
    }
    c.arg("--conf-root").arg(conf_root).args(extra);
    run(&mut c)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn seeds_listing(conf_root: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(conf_root.join("seeds")) {
        Ok(rd) => rd
            .map(|d| {
                d.expect("readdir")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Every xattr of the archive; gentree-fs's own marker on the seed root
/// (`user.gentree.host_owner`, the store owner of unrecorded entries) is not one.
fn all_xattrs(k: &str) -> bool {
    !k.starts_with("user.gentree.")
}

#[test]
fn each_compression_format_as_root() {
    let t = "each_compression_format_as_root";
    if !util::require_root(t) {
        return;
    }
    for tool in ["gzip", "xz", "bzip2", "zstd"] {
        if !util::require_tool(t, tool) {
            return;
        }
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_source_tree(&src);
    let want = snapshot(&src, &all_xattrs);
    let tar = tmp.path().join("seed-plain.tar");
    gnu_tar(&src, &tar);
    let conf = tmp.path().join("conf");
    let mut sources = vec![(tar.clone(), "seed-plain".to_string(), "uncompressed")];
    for (tool, ext, fmt) in [
        ("gzip", "gz", "gzip"),
        ("xz", "xz", "xz"),
        ("bzip2", "bz2", "bzip2"),
        ("zstd", "zst", "zstd"),
    ] {
        // Misleading suffixes on purpose: the format comes from the content.
        let wrong = if ext == "xz" { "gz" } else { "xz" };
        let out = tmp.path().join(format!("seed-{ext}.tar.{wrong}"));
        compress(tool, &tar, &out);
        sources.push((out, format!("seed-{ext}"), fmt));
    }
    for (source, name, fmt) in &sources {
        let o = import(source, None, &conf, &[]);
        assert!(o.status.success(), "{}: {}", source.display(), stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("imported seed \"{name}\"")) && err.contains(&format!("({fmt})")),
            "summary line: {err}"
        );
        let got = snapshot(&conf.join("seeds").join(name), &all_xattrs);
        assert_same_tree(&want, &got, name);
        // No device node on the host, even as root: a plain file owned by the build
        // id range, with the device recorded (the snapshot above saw it as one).
        let md = fs::symlink_metadata(conf.join("seeds").join(name).join("dev/sda")).unwrap();
        assert!(md.file_type().is_file(), "a device node on the host");
        assert_ne!(md.uid(), 0, "owned by the build id range, not host root");
        let seed_root = conf.join("seeds").join(name);
        let marker = xattr::get(&seed_root, "user.gentree.host_owner").unwrap();
        let owner = format!("{}:{}", md.uid(), md.gid());
        assert_eq!(
            marker.as_deref(),
            Some(owner.as_bytes()),
            "the store owner is marked"
        );
    }
    let mut names: Vec<String> = sources.iter().map(|s| s.1.clone()).collect();
    names.sort();
    assert_eq!(seeds_listing(&conf), names, "no temporary dirs left");
}

#[test]
fn directory_import_as_root_keeps_everything() {
    let t = "directory_import_as_root_keeps_everything";
    if !util::require_root(t) {
        return;
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("gentoo");
    fs::create_dir(&src).unwrap();
    make_source_tree(&src);
    let want = snapshot(&src, &all_xattrs);
    let conf = tmp.path().join("conf");
    let o = import(&src, None, &conf, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = snapshot(&conf.join("seeds/gentoo"), &all_xattrs);
    assert_same_tree(&want, &got, "directory import");
    // The symlink is a symlink, not a copy of its target.
    assert!(
        fs::symlink_metadata(conf.join("seeds/gentoo/usr/bin/abs-link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // An imported seed can be imported again (a directory with the same metadata).
    let o = import(&conf.join("seeds/gentoo"), Some("again"), &conf, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(
        &want,
        &snapshot(&conf.join("seeds/again"), &all_xattrs),
        "re-import",
    );
    // A source that contains the seeds directory is refused.
    let o = import(tmp.path(), Some("self"), &conf, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("copy the import into itself"),
        "{}",
        stderr(&o)
    );
    assert_eq!(seeds_listing(&conf), ["again", "gentoo"]);
}

/// As an ordinary user: owners, setuid bits and device types land in the override
/// xattr; the on-disk files belong to the user and stay readable and removable.
#[test]
fn unprivileged_import_records_ownership() {
    let t = "unprivileged_import_records_ownership";
    let Some((user, uid, gid)) = util::require_test_user(t) else {
        return;
    };
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    make_source_tree(&src);
    // The seed root's user.gentree.host_owner is checked below, not compared.
    let no_security = |k: &str| !k.starts_with("security.") && !k.starts_with("user.gentree.");
    let want = snapshot(&src, &no_security);
    let tar = tmp.path().join("stage3-test.tar.xz");
    let plain = tmp.path().join("plain.tar");
    gnu_tar(&src, &plain);
    compress("xz", &plain, &tar);
    let conf = tmp.path().join("conf");
    fs::create_dir(&conf).unwrap();
    nix::unistd::chown(&conf, Some(uid.into()), Some(gid.into())).unwrap();
    let as_user = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new("runuser");
        c.args(["-u", &user, "--"]).arg(util::bin()).args(args);
        c.env_remove("RUST_LOG");
        run(&mut c)
    };
    let o = as_user(&[
        "import-seed".as_ref(),
        tar.as_os_str(),
        "--conf-root".as_ref(),
        conf.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("3 device nodes or fifos recorded as plain files"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("1 xattrs not restored"),
        "{}",
        stderr(&o)
    );
    let seed = conf.join("seeds/stage3-test");
    // Symlinks cannot carry user xattrs: their owner is the importing user's.
    let symlink_owner = |mut tree: BTreeMap<PathBuf, Node>, owner: (u32, u32)| {
        for n in tree.values_mut().filter(|n| n.kind == "symlink") {
            assert_eq!((n.uid, n.gid), owner);
            (n.uid, n.gid) = (u32::MAX, u32::MAX);
        }
        tree
    };
    let want = symlink_owner(want, (0, 0));
    let got = symlink_owner(snapshot(&seed, &no_security), (uid, gid));
    assert_same_tree(&want, &got, "unprivileged import");
    // Symlinks are the user's on disk: the root says those ids are the seed's root.
    assert_eq!(
        xattr::get(&seed, "user.gentree.host_owner").unwrap(),
        Some(format!("{uid}:{gid}").into_bytes())
    );
    // On disk: the user's files, no setuid, owner access; the xattr says the rest.
    let su = seed.join("usr/bin/su");
    let md = fs::symlink_metadata(&su).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (uid, gid, 0o755));
    assert_eq!(
        OverrideStat::read(&su).unwrap().unwrap().encode(),
        "0:0:4755"
    );
    let null = seed.join("dev/null");
    assert!(fs::symlink_metadata(&null).unwrap().is_file());
    assert_eq!(
        OverrideStat::read(&null).unwrap().unwrap().encode(),
        "0:0:0666:char-1-3"
    );
    let ro = seed.join("etc/ro");
    assert_eq!(fs::symlink_metadata(&ro).unwrap().mode() & 0o777, 0o755);
    assert_eq!(
        OverrideStat::read(&ro).unwrap().unwrap().encode(),
        "0:0:0555"
    );
    // The user can replace its own seed (remove every file of the old one).
    let o = as_user(&[
        "import-seed".as_ref(),
        tar.as_os_str(),
        "--conf-root".as_ref(),
        conf.as_os_str(),
        "--force".as_ref(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(seeds_listing(&conf), ["stage3-test"]);
}

/// Python tarfile program prelude: helpers writing members into `t`.
const PY_PRELUDE: &str = r#"
import io, sys, tarfile
t = tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT)
def f(name, data=b"x", mode=0o644):
    i = tarfile.TarInfo(name); i.size = len(data); i.mode = mode
    t.addfile(i, io.BytesIO(data))
def d(name, mode=0o755):
    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = mode; t.addfile(i)
def sym(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.SYMTYPE; i.linkname = target; t.addfile(i)
def hard(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.LNKTYPE; i.linkname = target; t.addfile(i)
"#;

fn py_tar(out: &Path, body: &str) {
    let prog = format!("{PY_PRELUDE}\n{body}\nt.close()\n");
    run_ok(Command::new("python3").arg("-c").arg(prog).arg(out));
}

#[test]
fn hostile_archives_are_refused() {
    let t = "hostile_archives_are_refused";
    if !util::require_tool(t, "python3") {
        return;
    }
    let tmp = util::tempdir();
    // Everything an escape could reach: a sibling of the conf root.
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"original").unwrap();
    let out = outside.display().to_string();
    // (case, members, the member the error must name, words the reason must contain)
    let cases: &[(&str, String, &str, &str)] = &[
        (
            "dotdot",
            "f('ok'); f('../escape')".into(),
            "../escape",
            "`..`",
        ),
        (
            "dotdot-deep",
            "d('a'); f('a/../../escape')".into(),
            "a/../../escape",
            "`..`",
        ),
        ("absolute", "f('/abs-file')".into(), "/abs-file", "absolute"),
        (
            "through-abs-symlink",
            format!("sym('a', '{out}'); f('a/victim', b'pwned')"),
            "a/victim",
            "symlink",
        ),
        (
            "through-rel-symlink",
            "sym('up', '../../../../../../..'); f('up/escape')".into(),
            "up/escape",
            "symlink",
        ),
        (
            "dir-through-symlink",
            format!("sym('a', '{out}'); d('a/newdir')"),
            "a/newdir/",
            "symlink",
        ),
        (
            "deep-through-symlink",
            format!("d('x'); sym('x/y', '{out}'); f('x/y/victim', b'pwned')"),
            "x/y/victim",
            "x/y is a symlink",
        ),
        (
            "hardlink-escape",
            "f('ok'); hard('h', '../outside/victim')".into(),
            "h",
            "`..`",
        ),
        (
            "hardlink-absolute",
            format!("hard('h', '{out}/victim')"),
            "h",
            "absolute",
        ),
        (
            "hardlink-nonexistent",
            "f('a'); hard('h', 'not-there')".into(),
            "h",
            "not an earlier file",
        ),
        (
            "hardlink-through-symlink",
            format!("sym('s', '{out}'); hard('h', 's/victim')"),
            "h",
            "not an earlier file",
        ),
        (
            "hardlink-to-later-member",
            "hard('h', 'later'); f('later')".into(),
            "h",
            "not an earlier file",
        ),
    ];
    let conf = tmp.path().join("conf");
    for (case, body, member, reason) in cases {
        let tar = tmp.path().join(format!("{case}.tar"));
        py_tar(&tar, body);
        let o = import(&tar, None, &conf, &[]);
        let err = stderr(&o);
        assert!(
            !o.status.success(),
            "{case}: hostile archive accepted:\n{err}"
        );
        assert!(
            err.contains(&format!("hostile archive member \"{member}\"")),
            "{case}: error does not name {member:?}:\n{err}"
        );
        assert!(
            err.contains(reason),
            "{case}: reason lacks {reason:?}:\n{err}"
        );
        assert!(
            seeds_listing(&conf).is_empty(),
            "{case}: left {:?}",
            seeds_listing(&conf)
        );
    }
    // Nothing outside was touched.
    let names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(names, ["victim"]);
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    let mut top: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".tar"))
        .collect();
    top.sort();
    assert_eq!(top, ["conf", "outside"]);
}

/// What hostile-looking archives may legitimately do: absolute symlink targets, a
/// symlink replaced by a later member of the same name, `./` names, hard links to
/// earlier members.
#[test]
fn benign_tricky_archives_are_accepted() {
    let t = "benign_tricky_archives_are_accepted";
    if !util::require_tool(t, "python3") {
        return;
    }
    let tmp = util::tempdir();
    let tar = tmp.path().join("ok.tar");
    py_tar(
        &tar,
        "d('./'); sym('./lib', '/usr/lib'); sym('./x', '/etc'); f('./x', b'file now')
f('./usr/lib/libc.so', b'elf'); hard('./usr/lib/libc.so.6', './usr/lib/libc.so')
f('a/b/c', b'parents left out'); f('dup', b'one'); f('dup', b'two')
d('was-dir', 0o700); f('was-dir', b'now a file')",
    );
    let conf = tmp.path().join("conf");
    let o = import(&tar, None, &conf, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = conf.join("seeds/ok");
    assert_eq!(fs::read_link(s.join("lib")).unwrap(), Path::new("/usr/lib"));
    assert_eq!(fs::read(s.join("x")).unwrap(), b"file now");
    assert!(fs::symlink_metadata(s.join("x")).unwrap().is_file());
    let a = fs::metadata(s.join("usr/lib/libc.so")).unwrap();
    let b = fs::metadata(s.join("usr/lib/libc.so.6")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_eq!(fs::read(s.join("a/b/c")).unwrap(), b"parents left out");
    assert_eq!(fs::read(s.join("dup")).unwrap(), b"two");
    assert_eq!(fs::read(s.join("was-dir")).unwrap(), b"now a file");
}

#[test]
fn not_an_archive_fails_cleanly() {
    let tmp = util::tempdir();
    let junk = tmp.path().join("junk.tar.gz");
    fs::write(&junk, vec![b'j'; 5000]).unwrap();
    let truncated = tmp.path().join("trunc.tar.gz");
    // A valid gzip header followed by garbage.
    let mut bytes = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    bytes.extend(vec![0xAA; 100]);
    fs::write(&truncated, bytes).unwrap();
    let conf = tmp.path().join("conf");
    for src in [&junk, &truncated] {
        let o = import(src, None, &conf, &[]);
        assert!(!o.status.success(), "{} accepted", src.display());
        assert!(
            stderr(&o).contains("cannot read the archive"),
            "{}",
            stderr(&o)
        );
        assert!(seeds_listing(&conf).is_empty());
    }
    let o = import(&tmp.path().join("missing.tar"), None, &conf, &[]);
    assert!(stderr(&o).contains("missing.tar"), "{}", stderr(&o));
}

#[test]
fn existing_seed_needs_force_and_is_replaced_atomically() {
    let tmp = util::tempdir();
    let (a, b) = (tmp.path().join("a.tar"), tmp.path().join("b.tar"));
    py_tar(&a, "f('version', b'A'); f('only-in-a')");
    py_tar(&b, "f('version', b'B')");
    let conf = tmp.path().join("conf");
    let o = import(&a, Some("s"), &conf, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = import(&b, Some("s"), &conf, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already exists") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read(conf.join("seeds/s/version")).unwrap(), b"A");
    // A failing --force import leaves the old seed alone.
    let bad = tmp.path().join("bad.tar");
    py_tar(&bad, "f('version', b'C'); f('../x')");
    let o = import(&bad, Some("s"), &conf, &["--force"]);
    assert!(!o.status.success());
    assert_eq!(fs::read(conf.join("seeds/s/version")).unwrap(), b"A");
    let o = import(&b, Some("s"), &conf, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("replaced seed \"s\""), "{}", stderr(&o));
    assert_eq!(fs::read(conf.join("seeds/s/version")).unwrap(), b"B");
    assert!(!conf.join("seeds/s/only-in-a").exists());
    assert_eq!(seeds_listing(&conf), ["s"]);
}

#[test]
fn seed_names_are_validated() {
    let tmp = util::tempdir();
    let tar = tmp.path().join("stage3-amd64-openrc-2025.01.tar");
    py_tar(&tar, "f('x')");
    let conf = tmp.path().join("conf");
    for bad in ["a/b", "..", ".", ".hidden", "a b", "x;y", ""] {
        let o = import(&tar, Some(bad), &conf, &[]);
        assert!(!o.status.success(), "{bad:?} accepted");
        assert!(
            stderr(&o).contains("letters, digits, `.`, `_`, `+` and `-`"),
            "{bad:?}: {}",
            stderr(&o)
        );
    }
    assert!(seeds_listing(&conf).is_empty());
    // The default: the file name up to its first dot.
    let o = import(&tar, None, &conf, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(seeds_listing(&conf), ["stage3-amd64-openrc-2025"]);
    // A name that cannot be derived.
    let hidden = tmp.path().join(".tar");
    fs::copy(&tar, &hidden).unwrap();
    let o = import(&hidden, None, &conf, &[]);
    assert!(stderr(&o).contains("give NAME"), "{}", stderr(&o));
}

/// SIGTERM mid-import (the source is a pipe the test feeds slowly): the temporary
/// directory is removed and no seed appears.
#[test]
fn interrupted_import_leaves_nothing() {
    let tmp = util::tempdir();
    let full = tmp.path().join("full.tar");
    py_tar(
        &full,
        "for n in range(50): f('file%02d' % n, bytes(100000))",
    );
    let bytes = fs::read(&full).unwrap();
    let fifo = tmp.path().join("slow.tar");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let conf = tmp.path().join("conf");
    let child = gentree()
        .arg("import-seed")
        .arg(&fifo)
        .arg("--conf-root")
        .arg(&conf)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    use std::io::Write;
    // About ten members, then wait until they are on disk.
    w.write_all(&bytes[..1_000_000]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let tmp_dir = loop {
        let found = seeds_listing(&conf)
            .into_iter()
            .find(|n| n.starts_with(".slow.import-"));
        if let Some(n) = found {
            let d = conf.join("seeds").join(n);
            if fs::read_dir(&d).map(|r| r.count()).unwrap_or(0) >= 5 {
                break d;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "import made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // The import notices at its next check, once more data arrives; it may stop
    // reading before the end, so a broken pipe is fine here.
    let _ = w.write_all(&bytes[1_000_000..]);
    drop(w);
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
    assert!(!tmp_dir.exists(), "temporary dir left behind");
    assert!(
        seeds_listing(&conf).is_empty(),
        "{:?}",
        seeds_listing(&conf)
    );
}

/// On a terminal the progress line is drawn (entries, bytes) and cleared before the
/// summary; `script` provides the terminal.
#[test]
fn progress_on_a_terminal() {
    let t = "progress_on_a_terminal";
    if !util::require_tool(t, "script") {
        return;
    }
    let tmp = util::tempdir();
    let tar = tmp.path().join("p.tar");
    py_tar(&tar, "for n in range(20): f('f%02d' % n, bytes(1000))");
    let conf = tmp.path().join("conf");
    let cmd = format!(
        "{} import-seed {} --conf-root {}",
        util::bin().display(),
        tar.display(),
        conf.display()
    );
    let out = run_ok(Command::new("script").args(["-qec", &cmd, "/dev/null"]));
    assert!(out.contains("entries, "), "{out:?}");
    assert!(out.contains("\r\x1b[K"), "no progress line drawn: {out:?}");
    assert!(out.contains("imported seed \"p\""), "{out:?}");
    assert!(out.contains("20 entries, 19.5 KiB"), "{out:?}");
}

/// GNU tar's sparse members, in each format it writes (`--sparse` with the old GNU
/// format, and PAX sparse 0.0, 0.1 and 1.0), import as the whole file under its real
/// name; a sparse map that does not fit its member is refused by name.
#[test]
fn gnu_sparse_members_import_whole() {
    let t = "gnu_sparse_members_import_whole";
    if !util::require_tool(t, "tar") || !util::require_tool(t, "python3") {
        return;
    }
    let tmp = util::tempdir();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("var/lib")).unwrap();
    let sparse = src.join("var/lib/sparse.db");
    sh(&format!(
        "printf head > {f} && truncate -s 3M {f} && printf tail >> {f}
         printf middle | dd of={f} bs=1 seek=1500000 conv=notrunc status=none
         truncate -s 8M {f}
         printf plain > {src}/var/lib/plain
         chmod 0600 {f}",
        f = sparse.display(),
        src = src.display()
    ));
    let want = fs::read(&sparse).unwrap();
    let conf = tmp.path().join("conf");
    let formats: [(&str, &[&str]); 4] = [
        ("gnu", &["--format=gnu"]),
        ("pax00", &["--format=posix", "--sparse-version=0.0"]),
        ("pax01", &["--format=posix", "--sparse-version=0.1"]),
        ("pax10", &["--format=posix", "--sparse-version=1.0"]),
    ];
    for (name, args) in formats {
        let tar = tmp.path().join(format!("{name}.tar"));
        run_ok(
            Command::new("tar")
                .arg("--sparse")
                .args(args)
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&src)
                .arg("."),
        );
        // Sparse indeed: far smaller than the file.
        assert!(fs::metadata(&tar).unwrap().len() < 1 << 20, "{name}");
        let o = import(&tar, Some(name), &conf, &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let seed = conf.join("seeds").join(name);
        let got = fs::read(seed.join("var/lib/sparse.db")).unwrap();
        assert!(got == want, "{name}: content differs ({} bytes)", got.len());
        let (_, eff) = Effective::of_path(&seed.join("var/lib/sparse.db")).unwrap();
        assert_eq!(eff.perm & 0o7777, 0o600, "{name}");
        let mut names: Vec<_> = fs::read_dir(seed.join("var/lib"))
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["plain", "sparse.db"],
            "{name}: no GNUSparseFile dirs"
        );
    }

    // Maps that do not fit: refused, naming the member by its real name.
    let cases = [
        ("past-end", "1\n0\n99\n", "10", "ends past the real size 10"),
        (
            "short",
            "1\n0\n5\n",
            "10",
            "covers 5 bytes but the member has 3",
        ),
    ];
    for (case, map, real, reason) in cases {
        let tar = tmp.path().join(format!("bad-{case}.tar"));
        py_tar(
            &tar,
            &format!(
                "import io
data = {map:?}.encode().ljust(512, b'\\0') + b'abc'
i = tarfile.TarInfo('GNUSparseFile.0/x'); i.size = len(data)
i.pax_headers = {{'GNU.sparse.major': '1', 'GNU.sparse.minor': '0',
    'GNU.sparse.name': 'etc/x', 'GNU.sparse.realsize': '{real}'}}
t.addfile(i, io.BytesIO(data))"
            ),
        );
        let o = import(&tar, Some("bad"), &conf, &[]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{case}: accepted");
        assert!(
            err.contains("cannot import archive member \"etc/x\"") && err.contains(reason),
            "{case}: {err}"
        );
        assert!(!conf.join("seeds/bad").exists(), "{case}");
    }
    let tar = tmp.path().join("bad-version.tar");
    py_tar(
        &tar,
        "import io
i = tarfile.TarInfo('y'); i.size = 1
i.pax_headers = {'GNU.sparse.major': '2', 'GNU.sparse.minor': '0'}
t.addfile(i, io.BytesIO(b'z'))",
    );
    let err = stderr(&import(&tar, Some("bad"), &conf, &[]));
    assert!(
        err.contains("cannot import archive member \"y\": unsupported GNU sparse format 2.0"),
        "{err}"
    );
}
