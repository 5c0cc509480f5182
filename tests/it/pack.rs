//! `gentree-fs pack`: layer dirs made by code, the output read back by GNU tar,
//! bsdtar and Python's tarfile, and compared with the tree the layers describe.
// Fixture helpers panic on setup failure, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{gentree, is_root, require_root, require_tool, run_ok, set_mode, tempdir};

const EPOCH: &str = "1000";
const LONG_DIR: &str = "a-directory-name-that-is-rather-long-so-that-the-full-path-exceeds-one-hundred-bytes-in-total-length";

/// One archive member as the readers report it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// f file, d dir, l symlink, h hard link, p fifo, c char device.
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    data: Vec<u8>,
    link: String,
    dev: (u32, u32),
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn m(kind: char, mode: u32) -> Member {
    Member {
        kind,
        mode,
        uid: 0,
        gid: 0,
        data: vec![],
        link: String::new(),
        dev: (0, 0),
        xattrs: BTreeMap::new(),
    }
}

fn file(mode: u32, data: &[u8]) -> Member {
    Member {
        data: data.to_vec(),
        ..m('f', mode)
    }
}

fn link(kind: char, target: &str) -> Member {
    Member {
        link: target.into(),
        ..m(kind, 0o777)
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    layers: Vec<PathBuf>,
    /// The flattened image with default filters, keyed by path.
    want: BTreeMap<String, Member>,
    /// Entries only `--filter dev=false` keeps.
    devices: BTreeMap<String, Member>,
    caps: bool,
}

fn write(p: &Path, data: &[u8], mode: u32) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).expect("parent");
    }
    fs::write(p, data).expect("write");
    set_mode(p, mode);
}

fn setx(p: &Path, name: &str, value: &[u8]) {
    xattr::set(p, name, value).unwrap_or_else(|e| panic!("setxattr {name} {}: {e}", p.display()));
}

/// Two layers: a lower one with every entry type, an upper one with an OCI whiteout,
/// an opaque directory and a modified file.
fn fixture() -> Fixture {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let l0 = dir.join("l0");
    let l1 = dir.join("l1");
    let mut want = BTreeMap::new();
    let dirs = |p: &str, w: &mut BTreeMap<String, Member>| {
        let mut acc = String::new();
        for c in p.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            w.entry(acc.clone()).or_insert_with(|| m('d', 0o755));
        }
    };

    for d in [
        "etc",
        "usr/bin",
        "usr/lib",
        "var/empty",
        "run",
        "opt/app",
        "dev",
    ] {
        fs::create_dir_all(l0.join(d)).expect("dir");
        dirs(d, &mut want);
    }
    for d in ["l0/usr/share/man/man1", "l0/usr/share/doc/pkg"] {
        fs::create_dir_all(dir.join(d)).expect("dir");
    }
    dirs("usr/share", &mut want);
    write(&l0.join("usr/share/man/man1/su.1"), b".TH SU 1", 0o644);
    write(&l0.join("usr/share/doc/pkg/README"), b"read me", 0o644);
    set_mode(&l0.join("var/empty"), 0o700);
    want.insert("var/empty".into(), m('d', 0o700));

    write(
        &l0.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
        0o644,
    );
    write(&l0.join("etc/shadow"), b"root:*:1::::::\n", 0o600);
    want.insert("etc/shadow".into(), file(0o600, b"root:*:1::::::\n"));
    write(&l0.join("usr/bin/su"), b"\x7fELF su", 0o4755);
    want.insert("usr/bin/su".into(), file(0o4755, b"\x7fELF su"));
    write(&l0.join("usr/bin/sg"), b"\x7fELF sg", 0o2711);
    want.insert("usr/bin/sg".into(), file(0o2711, b"\x7fELF sg"));
    set_mode(&l0.join("run"), 0o1777);
    want.insert("run".into(), m('d', 0o1777));

    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(&l0.join("usr/lib/big.so"), &big, 0o755);
    want.insert("usr/lib/big.so".into(), file(0o755, &big));

    // Owner recorded in the override xattr (what a rootless build writes).
    write(&l0.join("etc/owned"), b"owned", 0o644);
    setx(
        &l0.join("etc/owned"),
        "user.containers.override_stat",
        b"1234:2345:0640",
    );
    want.insert(
        "etc/owned".into(),
        Member {
            uid: 1234,
            gid: 2345,
            ..file(0o640, b"owned")
        },
    );
    // A huge id, beyond ustar's 7 octal digits: needs pax.
    write(&l0.join("etc/bigid"), b"id", 0o644);
    setx(
        &l0.join("etc/bigid"),
        "user.containers.override_stat",
        b"3000000:4000000:0644",
    );
    want.insert(
        "etc/bigid".into(),
        Member {
            uid: 3_000_000,
            gid: 4_000_000,
            ..file(0o644, b"id")
        },
    );

    // user.* xattrs are kept (binary, with '=' and a newline); security.capability
    // too, when we may set it.
    let ping = l0.join("usr/bin/ping");
    write(&ping, b"\x7fELF ping", 0o755);
    setx(&ping, "user.note", b"a=b\nc\0d");
    let mut ping_want = file(0o755, b"\x7fELF ping");
    ping_want
        .xattrs
        .insert("user.note".into(), b"a=b\nc\0d".to_vec());
    // VFS_CAP_REVISION_2, cap_net_raw (13) permitted+effective.
    let cap: Vec<u8> = [
        0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]
    .to_vec();
    let caps = is_root() && xattr::set(&ping, "security.capability", &cap).is_ok();
    if caps {
        ping_want
            .xattrs
            .insert("security.capability".into(), cap.clone());
    }
    want.insert("usr/bin/ping".into(), ping_want);

    nix::unistd::mkfifo(
        &l0.join("run/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .expect("mkfifo");
    set_mode(&l0.join("run/fifo"), 0o620); // mkfifo honours the umask
    want.insert("run/fifo".into(), m('p', 0o620));

    // Names and targets over 100 bytes, a UTF-8 name.
    let long_split = format!("usr/lib/{LONG_DIR}/file-with-a-name.so");
    write(&l0.join(&long_split), b"split", 0o644);
    dirs(&format!("usr/lib/{LONG_DIR}"), &mut want);
    want.insert(long_split.clone(), file(0o644, b"split"));
    let long_name = format!("usr/lib/{}", "n".repeat(140));
    write(&l0.join(&long_name), b"pax path", 0o644);
    want.insert(long_name, file(0o644, b"pax path"));
    let long_target = format!("../lib/{LONG_DIR}/file-with-a-name.so");
    symlink(&long_target, l0.join("usr/bin/longlink")).expect("symlink");
    want.insert("usr/bin/longlink".into(), link('l', &long_target));
    write(&l0.join("etc/grüße.txt"), "grüße".as_bytes(), 0o644);
    want.insert("etc/grüße.txt".into(), file(0o644, "grüße".as_bytes()));

    // Absolute symlinks are rewritten relative to their directory.
    symlink("/usr/bin", l0.join("bin")).expect("symlink");
    want.insert("bin".into(), link('l', "usr/bin"));
    symlink("/usr/bin/su", l0.join("usr/bin/su-abs")).expect("symlink");
    want.insert("usr/bin/su-abs".into(), link('l', "../../usr/bin/su"));

    // A hard-link group: the first path (bytewise) carries the data.
    write(&l0.join("usr/bin/gawk"), b"awk!", 0o755);
    fs::hard_link(l0.join("usr/bin/gawk"), l0.join("usr/bin/awk")).expect("link");
    fs::hard_link(l0.join("usr/bin/gawk"), l0.join("usr/share/doc/pkg/awk")).expect("link");
    want.insert("usr/bin/awk".into(), file(0o755, b"awk!"));
    want.insert(
        "usr/bin/gawk".into(),
        Member {
            mode: 0o755,
            ..link('h', "usr/bin/awk")
        },
    );

    // Devices: a real one as root, one recorded in the override xattr.
    write(&l0.join("dev/zero"), b"", 0o644);
    setx(
        &l0.join("dev/zero"),
        "user.containers.override_stat",
        b"0:0:0666:char-1-5",
    );
    let mut devices = BTreeMap::new();
    devices.insert(
        "dev/zero".to_string(),
        Member {
            dev: (1, 5),
            ..m('c', 0o666)
        },
    );
    if is_root() {
        nix::sys::stat::mknod(
            &l0.join("dev/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .expect("mknod");
        set_mode(&l0.join("dev/null"), 0o666);
        devices.insert(
            "dev/null".to_string(),
            Member {
                dev: (1, 3),
                ..m('c', 0o666)
            },
        );
    }

    // Deleted and replaced in the upper layer.
    write(&l0.join("etc/old"), b"old", 0o644);
    write(&l0.join("opt/app/stale"), b"stale", 0o644);
    fs::create_dir_all(l1.join("etc")).expect("dir");
    fs::create_dir_all(l1.join("opt/app")).expect("dir");
    fs::write(l1.join("etc/.wh.old"), b"").expect("whiteout");
    fs::write(l1.join("opt/app/.wh..wh..opq"), b"").expect("opaque");
    write(&l1.join("opt/app/new"), b"new", 0o644);
    want.insert("opt/app/new".into(), file(0o644, b"new"));
    write(
        &l1.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/bash\n",
        0o644,
    );
    want.insert(
        "etc/passwd".into(),
        file(0o644, b"root:x:0:0::/root:/bin/bash\n"),
    );

    // Everything is owned by the test process unless overridden.
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    for (p, w) in want.iter_mut().chain(devices.iter_mut()) {
        let overridden = matches!(p.as_str(), "etc/owned" | "etc/bigid" | "dev/zero");
        if !overridden {
            w.uid = uid;
            w.gid = gid;
        }
    }
    Fixture {
        _tmp: tmp,
        dir,
        layers: vec![l0, l1],
        want,
        devices,
        caps,
    }
}

fn pack(fx: &Fixture, extra: &[&str], out: &Path) {
    let mut c = gentree();
    c.arg("pack").env("SOURCE_DATE_EPOCH", EPOCH);
    for l in &fx.layers {
        c.arg("--layer").arg(l);
    }
    c.args(extra).arg("-o").arg(out);
    run_ok(&mut c);
}

const PY_READER: &str = r#"
import json, sys, tarfile
out = []
with tarfile.open(sys.argv[1]) as t:
    assert t.pax_headers.get("hdrcharset") is None
    for m in t.getmembers():
        kind = {tarfile.REGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
                tarfile.LNKTYPE: "h", tarfile.FIFOTYPE: "p", tarfile.CHRTYPE: "c",
                tarfile.BLKTYPE: "b"}[m.type]
        data = t.extractfile(m).read() if m.isreg() else b""
        xattrs = {k[len("SCHILY.xattr."):]: list(v.encode("utf-8", "surrogateescape"))
                  for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        out.append({"name": m.name, "kind": kind, "mode": m.mode, "uid": m.uid,
                    "gid": m.gid, "mtime": m.mtime, "data": list(data),
                    "link": m.linkname, "dev": [m.devmajor, m.devminor],
                    "xattrs": xattrs, "uname": m.uname, "gname": m.gname})
json.dump(out, sys.stdout)
"#;

/// Members as Python's tarfile reads them, in archive order.
fn python_members(tar: &Path) -> Vec<(String, Member, i64)> {
    let out = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(PY_READER)
            .arg(tar)
            .env("PYTHONIOENCODING", "utf-8"),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("python json");
    let arr = v.as_array().expect("array");
    arr.iter()
        .map(|o| {
            let bytes = |v: &serde_json::Value| -> Vec<u8> {
                v.as_array()
                    .expect("byte list")
                    .iter()
                    .map(|b| b.as_u64().expect("byte") as u8)
                    .collect()
            };
            let num = |k: &str| o[k].as_u64().expect(k) as u32;
            assert_eq!(o["uname"], "", "numeric owners only");
            let mut x = BTreeMap::new();
            for (k, v) in o["xattrs"].as_object().expect("xattrs") {
                x.insert(k.clone(), bytes(v));
            }
            let kind = o["kind"].as_str().expect("kind").chars().next().expect("c");
            let member = Member {
                kind,
                mode: num("mode"),
                uid: num("uid"),
                gid: num("gid"),
                data: bytes(&o["data"]),
                link: o["link"].as_str().expect("link").to_owned(),
                dev: if matches!(kind, 'c' | 'b') {
                    (
                        o["dev"][0].as_u64().expect("major") as u32,
                        o["dev"][1].as_u64().expect("minor") as u32,
                    )
                } else {
                    (0, 0)
                },
                xattrs: x,
            };
            let name = o["name"].as_str().expect("name").to_owned();
            (name, member, o["mtime"].as_i64().expect("mtime"))
        })
        .collect()
}

/// Members by name, as Python's tarfile reads them.
fn python_tree(tar: &Path) -> BTreeMap<String, Member> {
    python_members(tar)
        .into_iter()
        .map(|(n, m, _)| (n, m))
        .collect()
}

/// Symlink and hard-link modes are not meaningful across readers; compare 0.
fn normalise(mut w: Member) -> Member {
    if matches!(w.kind, 'l' | 'h') {
        w.mode = 0;
    }
    if w.kind == 'h' {
        w.xattrs.clear();
    }
    w
}

fn assert_same(got: &BTreeMap<String, Member>, want: &BTreeMap<String, Member>, who: &str) {
    let gk: Vec<&String> = got.keys().collect();
    let wk: Vec<&String> = want.keys().collect();
    assert_eq!(gk, wk, "{who}: entry names");
    for (k, w) in want {
        assert_eq!(
            normalise(got[k].clone()),
            normalise(w.clone()),
            "{who}: entry {k}"
        );
    }
}

#[test]
fn pack_read_back_by_python_gnu_tar_and_bsdtar() {
    let t = "pack_read_back_by_python_gnu_tar_and_bsdtar";
    if !require_tool(t, "python3") || !require_tool(t, "tar") || !require_tool(t, "bsdtar") {
        return;
    }
    let fx = fixture();
    let out = fx.dir.join("image.tar");
    pack(&fx, &[], &out);

    // Python: every field, every entry, in bytewise order.
    let members = python_members(&out);
    let names: Vec<&str> = members.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(names, sorted, "entries in bytewise path order");
    assert!(
        members.iter().all(|(_, _, mtime)| *mtime == 1000),
        "mtimes clamped"
    );
    let got: BTreeMap<String, Member> = members.into_iter().map(|(n, m, _)| (n, m)).collect();
    assert_same(&got, &fx.want, "python tarfile");

    // GNU tar and bsdtar list the same names (dirs with a trailing '/').
    let want_names: Vec<String> = fx
        .want
        .iter()
        .map(|(k, w)| {
            if w.kind == 'd' {
                format!("{k}/")
            } else {
                k.clone()
            }
        })
        .collect();
    let gnu = run_ok(Command::new("tar").arg("-tf").arg(&out));
    let gnu: Vec<&str> = gnu.lines().collect();
    assert_eq!(gnu, want_names, "GNU tar -t");
    let verbose = run_ok(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("-tvf")
            .arg(&out),
    );
    assert!(
        verbose
            .lines()
            .any(|l| l.starts_with("-rwsr-xr-x") && l.ends_with("usr/bin/su")),
        "GNU tar -tv shows the setuid bit:\n{verbose}"
    );
    assert!(
        verbose
            .lines()
            .any(|l| l.contains("1234/2345") && l.ends_with("etc/owned")),
        "GNU tar -tv shows the override owner:\n{verbose}"
    );
    let bsd = run_ok(Command::new("bsdtar").arg("-tf").arg(&out));
    let bsd: Vec<&str> = bsd.lines().collect();
    assert_eq!(bsd, want_names, "bsdtar -t");

    // Same layers, same bytes; file and pipe outputs agree.
    let again = fx.dir.join("again.tar");
    pack(&fx, &[], &again);
    assert!(fs::read(&out).expect("tar") == fs::read(&again).expect("tar"));
    let mut c = gentree();
    c.arg("pack").env("SOURCE_DATE_EPOCH", EPOCH);
    for l in &fx.layers {
        c.arg("--layer").arg(l);
    }
    let piped = crate::util::run(c.arg("-o").arg("-"));
    assert!(piped.status.success());
    assert!(
        piped.stdout == fs::read(&out).expect("tar"),
        "-o - equals -o FILE"
    );

    // Extraction as root with GNU tar and bsdtar: the extracted tree equals the want.
    if !require_root(t) {
        return;
    }
    let mut want_fs = fx.want.clone();
    // A hard link extracts as a file sharing the data.
    let carrier = want_fs["usr/bin/awk"].clone();
    want_fs.insert("usr/bin/gawk".into(), carrier);
    let gdest = fx.dir.join("gnu-x");
    fs::create_dir(&gdest).expect("dest");
    run_ok(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
            .arg(&out)
            .arg("-C")
            .arg(&gdest),
    );
    assert_same(&walk(&gdest), &want_fs, "GNU tar -x");
    let bdest = fx.dir.join("bsd-x");
    fs::create_dir(&bdest).expect("dest");
    run_ok(
        Command::new("bsdtar")
            .args(["--xattrs", "--numeric-owner", "-xpf"])
            .arg(&out)
            .arg("-C")
            .arg(&bdest),
    );
    assert_same(&walk(&bdest), &want_fs, "bsdtar -x");
    let st = fs::metadata(gdest.join("usr/bin/awk")).expect("awk");
    assert_eq!(st.nlink(), 2, "hard link restored");
    if !fx.caps {
        panic!("root could not set security.capability on the temp dir");
    }
}

/// The tree below `root` in the same model (xattrs: user.* and security.capability).
fn walk(root: &Path) -> BTreeMap<String, Member> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .into_owned();
            let st = fs::symlink_metadata(&p).expect("lstat");
            let ft = st.file_type();
            let mut w = m('f', st.permissions().mode() & 0o7777);
            w.uid = st.uid();
            w.gid = st.gid();
            if ft.is_dir() {
                w.kind = 'd';
                stack.push(p.clone());
            } else if ft.is_symlink() {
                w.kind = 'l';
                w.link = fs::read_link(&p)
                    .expect("readlink")
                    .to_string_lossy()
                    .into_owned();
            } else if ft.is_file() {
                w.data = fs::read(&p).expect("read");
            } else {
                use std::os::unix::fs::FileTypeExt;
                w.kind = if ft.is_fifo() { 'p' } else { 'c' };
            }
            if !ft.is_symlink() {
                for n in xattr::list(&p).expect("listxattr") {
                    let n = n.to_string_lossy().into_owned();
                    if n.starts_with("user.") || n == "security.capability" {
                        let v = xattr::get(&p, &n).expect("getxattr").unwrap_or_default();
                        w.xattrs.insert(n, v);
                    }
                }
            }
            out.insert(rel, w);
        }
    }
    out
}

#[test]
fn pack_filters_and_devices() {
    let t = "pack_filters_and_devices";
    if !require_tool(t, "python3") {
        return;
    }
    let fx = fixture();
    let out = fx.dir.join("dev.tar");
    pack(
        &fx,
        &["--filter", "dev=false", "--filter", "man=false"],
        &out,
    );
    let got = python_tree(&out);
    for (k, w) in &fx.devices {
        assert_eq!(&got[k], w, "device {k}");
    }
    assert_eq!(got["usr/share/man/man1/su.1"].data, b".TH SU 1");
    assert!(!got.contains_key("usr/share/doc"), "docs still filtered");

    let mut c = gentree();
    c.args(["pack", "--filter", "manpages", "--layer"])
        .arg(&fx.layers[0]);
    let o = crate::util::run(&mut c);
    assert!(!o.status.success(), "unknown filter names are errors");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown filter \"manpages\""));
}

#[test]
fn pack_oci_layer() {
    let t = "pack_oci_layer";
    if !require_tool(t, "python3") {
        return;
    }
    let fx = fixture();
    let out = fx.dir.join("layer.tar");
    pack(&fx, &["--oci-layer"], &out);
    let members = python_members(&out);
    let names: Vec<&str> = members.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "etc",
            "etc/.wh.old",
            "etc/passwd",
            "opt",
            "opt/app",
            "opt/app/.wh..wh..opq",
            "opt/app/new",
        ]
    );
    for (n, mbr, mtime) in &members {
        if n.contains("/.wh.") {
            assert_eq!(
                (mbr.kind, mbr.mode, mbr.uid, mbr.data.len()),
                ('f', 0o644, 0, 0)
            );
            assert_eq!(*mtime, 1000);
        }
    }
}
