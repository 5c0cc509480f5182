//! `gentree-fs union` through real FUSE mounts: every operation as root, ownership
//! recording and clean-up as the unprivileged test user, clean unmounts.
// Fixture helpers panic with context on setup failures, like the tests themselves.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{self, gentree, mounted, run, run_ok};

const OVERRIDE: &str = "user.containers.override_stat";

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Unmounts on drop, even when the test failed half-way.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.0)
                .status();
        }
    }
}

/// Layer dirs for one union: `l1` over `l2`, upper `u`, work `w`, mountpoint `mp`.
struct Layers {
    _t: tempfile::TempDir,
    root: PathBuf,
}

impl Layers {
    fn new() -> Layers {
        let t = util::tempdir();
        let root = fs::canonicalize(t.path()).expect("canonical tempdir");
        for d in ["l1", "l2", "u", "w", "mp"] {
            fs::create_dir(root.join(d)).expect("mkdir");
        }
        Layers { _t: t, root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn put(&self, rel: &str, data: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir -p");
        fs::write(&p, data).expect("write fixture");
    }

    fn rw_opts(&self) -> String {
        format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            self.p("l1").display(),
            self.p("l2").display(),
            self.p("u").display(),
            self.p("w").display()
        )
    }

    /// Mounts in the background (the command returns when the mount is ready).
    fn mount(&self, opts: &str) -> Unmount {
        let mp = self.p("mp");
        run_ok(gentree().args(["union", "-o", opts]).arg(&mp));
        assert!(
            mounted(&mp),
            "{} not mounted after `union` returned",
            mp.display()
        );
        Unmount(mp)
    }

    fn mp(&self, rel: &str) -> PathBuf {
        self.p("mp").join(rel)
    }
}

fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("must fail")
        .raw_os_error()
        .expect("an OS error")
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fixture shared by the root tests: two lowers with every whiteout/opaque encoding.
fn fill_lowers(l: &Layers) {
    l.put("l1/top", "top over bottom");
    l.put("l2/top", "bottom");
    l.put("l2/only-low", "low");
    l.put("l2/dir/a", "a");
    l.put("l1/dir/b", "b");
    l.put("l2/gone", "hidden by .wh.");
    l.put("l1/.wh.gone", "");
    l.put("l2/opq/hidden", "x");
    l.put("l1/opq/.wh..wh..opq", "");
    l.put("l1/opq/shown", "y");
    l.put("l2/xopq/hidden", "x");
    fs::create_dir(l.p("l1/xopq")).expect("mkdir");
    xattr::set(l.p("l1/xopq"), "user.overlay.opaque", b"y").expect("xattr");
    l.put("l2/app", "0123456789");
    fs::set_permissions(l.p("l2/app"), fs::Permissions::from_mode(0o640)).expect("chmod");
    xattr::set(l.p("l2/app"), "user.tag", b"lower").expect("xattr");
    l.put("l2/lowdir/f", "f");
}

#[test]
fn union_mount_merges_layers_and_hides_markers() {
    let t = "union_mount_merges_layers_and_hides_markers";
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    if util::is_root() {
        nix::sys::stat::mknod(
            &l.p("l1/chr-gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("mknod 0/0");
        l.put("l2/chr-gone", "hidden by a char device");
    }
    let _m = l.mount(&l.rw_opts());
    assert_eq!(
        names(&l.p("mp")),
        vec!["app", "dir", "lowdir", "only-low", "opq", "top", "xopq"]
    );
    assert_eq!(
        fs::read_to_string(l.mp("top")).expect("read"),
        "top over bottom"
    );
    assert_eq!(names(&l.mp("dir")), vec!["a", "b"]);
    assert_eq!(names(&l.mp("opq")), vec!["shown"]);
    assert!(names(&l.mp("xopq")).is_empty());
    assert_eq!(errno(fs::metadata(l.mp("gone"))), libc::ENOENT);
    assert_eq!(errno(fs::metadata(l.mp(".wh.gone"))), libc::ENOENT);
    // Stable inode numbers: a second look gives the same numbers.
    let ino = fs::metadata(l.mp("dir/a")).expect("stat").ino();
    assert_eq!(fs::metadata(l.mp("dir/a")).expect("stat").ino(), ino);
}

#[test]
fn union_mount_every_operation_as_root() {
    every_operation_as_root("union_mount_every_operation_as_root", "");
}

/// The same without passthrough: the kernel opens files without the daemon (the
/// no-open mode) and the union serves reads and writes by node.
#[test]
fn union_mount_every_operation_as_root_without_opens() {
    every_operation_as_root(
        "union_mount_every_operation_as_root_without_opens",
        ",nopassthrough",
    );
}

fn every_operation_as_root(t: &str, extra: &str) {
    if !util::require_root(t) || !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    let lower_before = run_ok(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . -printf '%p %m %s\\n' | sort && cat l1/top l2/app",
        l.root.display()
    )));
    let m = l.mount(&format!("{}{extra}", l.rw_opts()));

    // Copy-up on append keeps mode, xattrs and the inode number; lower untouched.
    let ino = fs::metadata(l.mp("app")).expect("stat").ino();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(l.mp("app"))
        .expect("open append");
    f.write_all(b"+").expect("append");
    f.sync_all().expect("fsync");
    drop(f);
    assert_eq!(
        fs::read_to_string(l.mp("app")).expect("read"),
        "0123456789+"
    );
    assert_eq!(
        fs::read_to_string(l.p("u/app")).expect("upper"),
        "0123456789+"
    );
    let st = fs::metadata(l.mp("app")).expect("stat");
    assert_eq!((st.ino(), st.mode() & 0o7777), (ino, 0o640));
    assert_eq!(
        xattr::get(l.p("u/app"), "user.tag").expect("xattr"),
        Some(b"lower".to_vec())
    );

    // create, write, truncate, chmod, chown, utimens
    fs::write(l.mp("new"), "hello world").expect("create");
    fs::OpenOptions::new()
        .write(true)
        .open(l.mp("new"))
        .and_then(|f| f.set_len(5))
        .expect("truncate");
    assert_eq!(fs::read_to_string(l.mp("new")).expect("read"), "hello");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(l.mp("new"))
        .expect("open");
    nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 8192).expect("fallocate");
    drop(f);
    assert_eq!(fs::metadata(l.mp("new")).expect("stat").len(), 8192);
    fs::OpenOptions::new()
        .write(true)
        .open(l.mp("new"))
        .and_then(|f| f.set_len(5))
        .expect("truncate back");
    fs::set_permissions(l.mp("only-low"), fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::lchown(l.mp("only-low"), Some(1234), Some(2345)).expect("chown");
    let st = fs::metadata(l.p("u/only-low")).expect("copied up");
    assert_eq!(
        (st.uid(), st.gid(), st.mode() & 0o7777),
        (1234, 2345, 0o600)
    );
    assert_eq!(
        xattr::get(l.p("u/only-low"), OVERRIDE).expect("xattr"),
        None,
        "root chowns for real"
    );
    run_ok(
        Command::new("touch")
            .args(["-m", "-d", "@1000000000"])
            .arg(l.mp("top")),
    );
    assert_eq!(
        fs::metadata(l.mp("top")).expect("stat").mtime(),
        1_000_000_000
    );
    assert_eq!(
        fs::metadata(l.p("u/top")).expect("upper").mtime(),
        1_000_000_000
    );

    // mkdir, mknod (fifo, socket), symlink, hard link
    fs::create_dir(l.mp("newdir")).expect("mkdir");
    fs::File::open(l.mp("newdir"))
        .and_then(|d| d.sync_all())
        .expect("fsync a directory");
    nix::unistd::mkfifo(
        &l.mp("newdir/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    nix::sys::stat::mknod(
        &l.mp("newdir/sock"),
        nix::sys::stat::SFlag::S_IFSOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        0,
    )
    .expect("mknod socket");
    assert!(
        fs::symlink_metadata(l.mp("newdir/fifo"))
            .expect("fifo")
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(l.mp("newdir/sock"))
            .expect("sock")
            .file_type()
            .is_socket()
    );
    std::os::unix::fs::symlink("../top", l.mp("newdir/link")).expect("symlink");
    assert_eq!(
        fs::read_link(l.mp("newdir/link")).expect("readlink"),
        PathBuf::from("../top")
    );
    fs::hard_link(l.mp("top"), l.mp("newdir/hard")).expect("link");
    let (a, b) = (
        fs::metadata(l.mp("top")).expect("stat"),
        fs::metadata(l.mp("newdir/hard")).expect("stat"),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));

    // unlink of a lower file leaves an OCI whiteout; rmdir honours whiteouts
    fs::remove_file(l.mp("top")).expect("unlink");
    assert_eq!(fs::metadata(l.mp("newdir/hard")).expect("stat").nlink(), 1);
    assert_eq!(
        fs::read_to_string(l.mp("newdir/hard")).expect("read"),
        "top over bottom"
    );
    assert!(
        fs::symlink_metadata(l.p("u/.wh.top"))
            .expect("whiteout")
            .is_file()
    );
    assert_eq!(errno(fs::remove_dir(l.mp("dir"))), libc::ENOTEMPTY);
    fs::remove_file(l.mp("dir/a")).expect("unlink a");
    fs::remove_file(l.mp("dir/b")).expect("unlink b");
    fs::remove_dir(l.mp("dir")).expect("rmdir");
    assert!(l.p("u/.wh.dir").is_file());
    fs::create_dir(l.mp("dir")).expect("mkdir again");
    assert!(names(&l.mp("dir")).is_empty(), "recreated dir is opaque");
    assert!(l.p("u/dir/.wh..wh..opq").is_file());

    // rename: files, upper dirs, lower dirs (copied, opaque); NOREPLACE and EXCHANGE
    fs::rename(l.mp("new"), l.mp("renamed")).expect("rename file");
    fs::rename(l.mp("lowdir"), l.mp("lowdir2")).expect("rename lower dir");
    assert_eq!(names(&l.mp("lowdir2")), vec!["f"]);
    assert!(l.p("u/.wh.lowdir").is_file() && l.p("u/lowdir2/.wh..wh..opq").is_file());
    fs::rename(l.mp("newdir"), l.mp("newdir2")).expect("rename upper dir");
    assert_eq!(
        names(&l.mp("newdir2")),
        vec!["fifo", "hard", "link", "sock"]
    );
    let rename2 = |flags| {
        let at = nix::fcntl::AT_FDCWD;
        nix::fcntl::renameat2(at, &l.mp("renamed"), at, &l.mp("app"), flags)
    };
    use nix::fcntl::RenameFlags;
    assert_eq!(
        rename2(RenameFlags::RENAME_NOREPLACE),
        Err(nix::Error::EEXIST)
    );
    assert_eq!(
        rename2(RenameFlags::RENAME_EXCHANGE),
        Err(nix::Error::EINVAL)
    );
    fs::rename(l.mp("only-low"), l.mp("moved-low")).expect("rename lower file");
    assert!(l.p("u/.wh.only-low").is_file());

    // xattrs: user.* and security.capability; private ones hidden
    xattr::set(l.mp("renamed"), "user.x", b"1").expect("setxattr");
    assert_eq!(
        xattr::get(l.mp("renamed"), "user.x").expect("get"),
        Some(b"1".to_vec())
    );
    // VFS_CAP_REVISION_2, effective, permitted = CAP_NET_BIND_SERVICE.
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    xattr::set(l.mp("renamed"), "security.capability", &cap).expect("set capability");
    assert_eq!(
        xattr::get(l.p("u/renamed"), "security.capability").expect("get"),
        Some(cap.clone())
    );
    xattr::set(l.p("u/renamed"), OVERRIDE, b"0:0:0644").expect("plant override");
    let listed: Vec<_> = xattr::list(l.mp("renamed")).expect("list").collect();
    assert!(
        listed.iter().any(|n| n == OsStr::new("user.x")),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|n| n == OsStr::new(OVERRIDE)),
        "{listed:?}"
    );
    xattr::remove(l.mp("renamed"), "user.x").expect("removexattr");
    assert_eq!(xattr::get(l.mp("renamed"), "user.x").expect("get"), None);

    // statfs reports the upper's filesystem
    let (s_mp, s_up) = (
        nix::sys::statvfs::statvfs(&l.p("mp")).expect("statvfs"),
        nix::sys::statvfs::statvfs(&l.p("u")).expect("statvfs"),
    );
    assert_eq!(s_mp.blocks(), s_up.blocks());

    // readdir offsets: a listing larger than one reply comes back whole and once
    fs::create_dir(l.mp("many")).expect("mkdir");
    for i in 0..300 {
        fs::write(l.mp(&format!("many/file-with-a-longish-name-{i:04}")), "").expect("create");
    }
    assert_eq!(names(&l.mp("many")).len(), 300);

    drop(m);
    assert!(!mounted(&l.p("mp")));
    let lower_after = run_ok(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . -printf '%p %m %s\\n' | sort && cat l1/top l2/app",
        l.root.display()
    )));
    let layers_only = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|s| !s.starts_with("./u") && !s.starts_with("./w") && !s.starts_with("./m"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        layers_only(&lower_after),
        layers_only(&lower_before),
        "lower layers must not change"
    );
}

#[test]
fn union_without_upper_is_read_only() {
    let t = "union_without_upper_is_read_only";
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    let _m = l.mount(&format!("lowerdir={}", l.p("l1").display()));
    assert_eq!(
        fs::read_to_string(l.mp("top")).expect("read"),
        "top over bottom"
    );
    assert_eq!(errno(fs::write(l.mp("x"), "x")), libc::EROFS);
    assert_eq!(errno(fs::remove_file(l.mp("top"))), libc::EROFS);
    assert_eq!(
        errno(fs::OpenOptions::new().append(true).open(l.mp("top"))),
        libc::EROFS
    );
}

/// Starts `union -f` as a child and waits for the mount.
/// Starts `union -f` and returns once it serves: after its "union mounted on" line,
/// not merely once the mount shows in /proc/mounts (the kernel lists it before the
/// daemon's INIT handshake is done, and an unmount in that window fails the start).
/// The daemon's later stderr is collected for failure messages.
fn spawn_foreground(l: &Layers) -> (Child, Unmount, Arc<Mutex<String>>) {
    use std::io::BufRead;
    let mut child = gentree()
        .args(["union", "-f", "-o", &l.rw_opts()])
        .arg(l.p("mp"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn union -f");
    let mp = l.p("mp");
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                let ready = line.contains("union mounted on");
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if ready {
                    break;
                }
            }
            _ => panic!(
                "union -f exited before serving: {:?}\n{}",
                child.wait(),
                log.lock().unwrap()
            ),
        }
    }
    assert!(mounted(&mp), "serving but not mounted");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    (child, Unmount(mp), log)
}

#[test]
fn union_unmounts_on_sigterm_and_sigint() {
    let t = "union_unmounts_on_sigterm_and_sigint";
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    for sig in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGINT] {
        let l = Layers::new();
        fill_lowers(&l);
        let (mut child, _guard, _log) = spawn_foreground(&l);
        assert_eq!(names(&l.mp("dir")), vec!["a", "b"]);
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
        let status = child.wait().expect("wait");
        assert!(status.success(), "{sig}: exit {status}");
        assert!(!mounted(&l.p("mp")), "{sig}: still mounted");
    }
}

#[test]
fn union_daemon_exits_after_fusermount_u() {
    let t = "union_daemon_exits_after_fusermount_u";
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    let (mut child, _guard, log) = spawn_foreground(&l);
    run_ok(Command::new("fusermount3").arg("-u").arg(l.p("mp")));
    let mut status = None;
    wait_for("the daemon to exit", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        log.lock().unwrap()
    );
}

/// An unmount racing the daemon's startup ends `union -f` cleanly (exit 0), as for the
/// gentree mount (and the test fails unless one unmount landed before it was ready).
#[test]
fn union_unmounted_during_startup_exits_cleanly() {
    let t = "union_unmounted_during_startup_exits_cleanly";
    if !util::require_root(t) || !util::require_fuse(t) {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    let opts = l.rw_opts();
    util::unmount_during_startup(&l.p("mp"), &l.root, || {
        let mut c = gentree();
        c.args(["union", "-f", "-o", &opts]).arg(l.p("mp"));
        c
    });
}

#[test]
fn union_rejects_bad_layouts_before_mounting() {
    let l = Layers::new();
    let bad = |opts: String, mp: PathBuf, want: &[&str]| {
        let out = run(gentree().args(["union", "-o", &opts]).arg(&mp));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{opts}: must fail");
        for w in want {
            assert!(err.contains(w), "{opts}: {w:?} not in {err}");
        }
        assert!(!mounted(&mp));
    };
    let w = l.p("w").display().to_string();
    let u = l.p("u").display().to_string();
    let l1 = l.p("l1").display().to_string();
    let missing = l.p("missing").display().to_string();
    bad(
        format!("lowerdir={missing},upperdir={u},workdir={w}"),
        l.p("mp"),
        &["lowerdir", &missing],
    );
    fs::create_dir(l.p("l1/up")).expect("mkdir");
    let nested = l.p("l1/up").display().to_string();
    bad(
        format!("lowerdir={l1},upperdir={nested},workdir={w}"),
        l.p("mp"),
        &["inside lowerdir", &nested],
    );
    fs::create_dir(l.p("u/mnt")).expect("mkdir");
    bad(
        format!("lowerdir={l1},upperdir={u},workdir={w}"),
        l.p("u/mnt"),
        &["mountpoint", "upperdir"],
    );
    bad(
        format!("lowerdir={l1},upperdir={u}"),
        l.p("mp"),
        &["workdir"],
    );
}

/// Runs a shell script as `user` and returns its stdout.
fn as_user(user: &str, script: &str) -> String {
    run_ok(Command::new("runuser").args(["-u", user, "--", "sh", "-euc", script]))
}

#[test]
fn union_as_unprivileged_user_records_ownership() {
    let t = "union_as_unprivileged_user_records_ownership";
    let Some((user, uid, gid)) = util::require_test_user(t) else {
        return;
    };
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let opens = Command::new("runuser")
        .args([
            "-u",
            &user,
            "--",
            "test",
            "-r",
            "/dev/fuse",
            "-a",
            "-w",
            "/dev/fuse",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !opens {
        util::missing(
            t,
            "/dev/fuse is not open to the test user (mode 0600?): scripts/ci-user.sh makes it 0666",
        );
        return;
    }
    let l = Layers::new();
    // Lower layers as a root-built seed would be: root-owned, one shared writable file.
    l.put("l2/etc/shared", "seed");
    fs::set_permissions(l.p("l2/etc/shared"), fs::Permissions::from_mode(0o666)).expect("chmod");
    l.put("l2/rootowned", "r");
    l.put("l1/bin/tool", "#!/bin/sh\n");
    xattr::set(l.p("l1/bin/tool"), OVERRIDE, b"0:0:4755").expect("record on lower");
    for d in ["u", "w", "mp"] {
        std::os::unix::fs::chown(l.p(d), Some(uid), Some(gid)).expect("chown to test user");
    }
    let opts = format!("{},allow_other", l.rw_opts());
    let mp = l.p("mp");
    as_user(
        &user,
        &format!(
            "'{}' union -o '{opts}' '{}'",
            util::bin().display(),
            mp.display()
        ),
    );
    let _m = Unmount(mp.clone());
    assert!(mounted(&mp));
    let m = mp.display();
    let out = as_user(
        &user,
        &format!(
            "cd '{m}'
             echo new > mine; chmod 640 mine
             mkdir d; mkdir d/sub; chmod 500 d
             echo more >> etc/shared
             mkfifo fifo; ln -s etc/shared sl; ln mine mine2
             rm rootowned
             stat -c '%n %u %g %a %h' mine mine2 d etc/shared bin/tool
             cat etc/shared"
        ),
    );
    let want = format!(
        "mine {uid} {gid} 640 2\nmine2 {uid} {gid} 640 2\nd {uid} {gid} 500 3\n\
         etc/shared 0 0 666 1\nbin/tool 0 0 4755 1\nseedmore\n"
    );
    assert_eq!(out, want);
    // The recorded ownership, in the upper layer on the host.
    let rec = |p: &str| {
        let v = xattr::get(l.p(p), OVERRIDE)
            .expect("xattr")
            .unwrap_or_default();
        String::from_utf8_lossy(&v).into_owned()
    };
    assert_eq!(rec("u/mine"), format!("{uid}:{gid}:0640"));
    assert_eq!(rec("u/d"), format!("{uid}:{gid}:0500"));
    assert_eq!(
        rec("u/etc/shared"),
        "0:0:0666",
        "copy-up keeps the presented owner"
    );
    assert!(l.p("u/.wh.rootowned").is_file());
    for p in ["u/mine", "u/d", "u/etc/shared", "u/etc"] {
        assert_eq!(
            fs::symlink_metadata(l.p(p)).expect("stat").uid(),
            uid,
            "{p} on disk"
        );
    }
    // The root user reaches the mount too (allow_other) and sees the same owners.
    assert_eq!(fs::metadata(l.mp("etc/shared")).expect("stat").uid(), 0);
    // chown to ids the user does not own is refused by the kernel (default_permissions).
    let denied = run(Command::new("runuser")
        .args(["-u", &user, "--", "chown", "0"])
        .arg(l.mp("mine")));
    assert!(!denied.status.success());
    // Unmounted, the user can delete everything it stored.
    run_ok(Command::new("fusermount3").arg("-u").arg(&mp));
    wait_for("unmount", || !mounted(&mp));
    as_user(
        &user,
        &format!(
            "rm -rf '{}'/* '{}'/.[!.]*",
            l.p("u").display(),
            l.p("u").display()
        ),
    );
    assert!(names(&l.p("u")).is_empty());
}

#[test]
fn union_in_user_namespace_records_owners_and_stays_removable() {
    let t = "union_in_user_namespace_records_owners_and_stays_removable";
    let Some((user, uid, gid)) = util::require_test_user(t) else {
        return;
    };
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    // The build helper's setting: root of a user namespace with the user's subuid range.
    let probe = run(Command::new("runuser").args([
        "-u",
        &user,
        "--",
        "unshare",
        "--user",
        "--map-root-user",
        "--map-auto",
        "--mount",
        "test",
        "-w",
        "/dev/fuse",
    ]));
    if !probe.status.success() {
        util::missing(
            t,
            &format!(
                "user namespace with subuids or /dev/fuse unavailable to the test user: {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            ),
        );
        return;
    }
    let l = Layers::new();
    l.put("l1/etc/seedfile", "seed");
    fs::set_permissions(l.p("l1/etc/seedfile"), fs::Permissions::from_mode(0o666)).expect("chmod");
    for d in ["u", "w", "mp"] {
        std::os::unix::fs::chown(l.p(d), Some(uid), Some(gid)).expect("chown to test user");
    }
    let script = format!(
        "'{bin}' union -o 'lowerdir={l1},upperdir={u},workdir={w},allow_other' '{mp}'
         cd '{mp}'
         echo x > new; chown 1234:2345 new; chmod 4750 new
         mkdir -p usr/portage; chown 250:250 usr/portage
         echo more >> etc/seedfile
         setpriv --reuid=250 --regid=250 --clear-groups sh -c 'echo p > usr/portage/by250'
         stat -c '%n %u %g %a' new usr/portage usr/portage/by250
         cd /; umount '{mp}'",
        bin = util::bin().display(),
        l1 = l.p("l1").display(),
        u = l.p("u").display(),
        w = l.p("w").display(),
        mp = l.p("mp").display(),
    );
    let out = run_ok(Command::new("runuser").args([
        "-u",
        &user,
        "--",
        "unshare",
        "--user",
        "--map-root-user",
        "--map-auto",
        "--mount",
        "sh",
        "-euc",
        &script,
    ]));
    // Another user of the namespace (Portage's) works in the mount too: allow_other.
    assert_eq!(
        out,
        "new 1234 2345 4750\nusr/portage 250 250 755\nusr/portage/by250 250 250 644\n"
    );
    let rec = |p: &str| {
        let v = xattr::get(l.p(p), OVERRIDE)
            .expect("xattr")
            .unwrap_or_default();
        String::from_utf8_lossy(&v).into_owned()
    };
    assert_eq!(rec("u/new"), "1234:2345:4750");
    assert_eq!(rec("u/usr/portage/by250"), "250:250:0644");
    assert_eq!(rec("u/usr/portage"), "250:250:0755");
    for p in ["u/new", "u/usr", "u/usr/portage", "u/etc/seedfile"] {
        let st = fs::symlink_metadata(l.p(p)).expect("stat");
        assert_eq!(st.uid(), uid, "{p} must stay owned by the user on the host");
    }
    as_user(&user, &format!("rm -rf '{}'/*", l.p("u").display()));
    assert!(names(&l.p("u")).is_empty());
}

#[test]
fn union_mounts_in_process_through_the_library() {
    use gentree_fs::fs::union::{UnionMountSpec, mount};
    use gentree_fs::layers::union::UnionOptions;
    let t = "union_mounts_in_process_through_the_library";
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    let spec = UnionMountSpec {
        options: UnionOptions::parse(&[l.rw_opts()]).expect("options"),
        mountpoint: l.p("mp"),
        source: None,
        threads: Some(2),
    };
    let m = mount(&spec).expect("mount");
    let _guard = Unmount(l.p("mp"));
    assert_eq!(m.mountpoint(), l.p("mp"));
    assert!(mounted(&l.p("mp")));
    fs::write(l.mp("dir/in-process"), "x").expect("write through the mount");
    m.unmount().expect("unmount");
    assert!(!mounted(&l.p("mp")));
    assert_eq!(
        fs::read_to_string(l.p("u/dir/in-process")).expect("upper"),
        "x"
    );
}

#[test]
fn union_names_a_layer_the_user_cannot_read() {
    let t = "union_names_a_layer_the_user_cannot_read";
    let Some((user, uid, gid)) = util::require_test_user(t) else {
        return;
    };
    let l = Layers::new();
    util::set_mode(&l.p("l2"), 0o700); // root's, closed to the user
    for d in ["u", "w", "mp"] {
        std::os::unix::fs::chown(l.p(d), Some(uid), Some(gid)).expect("chown to test user");
    }
    let out = run(Command::new("runuser")
        .args(["-u", &user, "--"])
        .arg(util::bin())
        .args(["union", "-o", &l.rw_opts()])
        .arg(l.p("mp")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("lowerdir")
            && err.contains(&*l.p("l2").to_string_lossy())
            && err.contains("Permission denied"),
        "{err}"
    );
    assert!(!mounted(&l.p("mp")));
}

/// Runs a bash script in the mount (TMPDIR there too); fails the test on failure and
/// returns its stdout.
fn bash_in_mount(l: &Layers, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(l.p("mp"))
        .env("TMPDIR", l.p("mp"))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Shells keep here-documents in unlinked temp files and read them through the open
/// descriptor; tools reopen `/proc/self/fd/N` of unlinked files. Portage's `newins -`
/// does both, so a build on the union depends on it.
#[test]
fn union_unlinked_open_files_stay_usable() {
    unlinked_open_files_stay_usable("union_unlinked_open_files_stay_usable", "");
}

#[test]
fn union_unlinked_open_files_stay_usable_without_opens() {
    unlinked_open_files_stay_usable(
        "union_unlinked_open_files_stay_usable_without_opens",
        ",nopassthrough",
    );
}

fn unlinked_open_files_stay_usable(t: &str, extra: &str) {
    if !util::require_fuse(t)
        || !util::require_tool(t, "fusermount3")
        || !util::require_tool(t, "bash")
    {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    let _m = l.mount(&format!("{}{extra}", l.rw_opts()));
    let big = "x".repeat(70_000);
    let script = format!(
        "cat - > heredoc.out <<'EOF'\n{big}\nEOF\n\
         exec 3<>tmpf; rm tmpf; echo data >&3; cat /proc/self/fd/3 > reopen.out; \
         chmod 600 /proc/self/fd/3; stat -L -c %a /proc/self/fd/3 > mode.out"
    );
    bash_in_mount(&l, &script);
    assert_eq!(
        fs::read_to_string(l.mp("heredoc.out")).unwrap(),
        format!("{big}\n")
    );
    assert_eq!(fs::read_to_string(l.mp("reopen.out")).unwrap(), "data\n");
    assert_eq!(fs::read_to_string(l.mp("mode.out")).unwrap(), "600\n");
    assert_eq!(errno(fs::metadata(l.mp("tmpf"))), libc::ENOENT);
}

/// As root the union hands open files to the kernel (FUSE passthrough): writes made by
/// the kernel alone must still show in stat, a lower file read and closed must take a
/// write-open (copy-up) right after, and readers of one file share its disk file.
#[test]
fn union_passthrough_keeps_sizes_times_and_copy_up() {
    let t = "union_passthrough_keeps_sizes_times_and_copy_up";
    if !util::require_root(t) || !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    for i in 0..50 {
        l.put(&format!("l2/f{i}"), "lower\n");
    }
    l.put("l2/kept", "kept\n");
    let _m = l.mount(&l.rw_opts());
    // Read, close, then append at once: the kernel's RELEASE of the read-only (lower)
    // open is asynchronous, and the write-open must not trip over it.
    for i in 0..50 {
        let p = l.mp(&format!("f{i}"));
        assert_eq!(fs::read_to_string(&p).unwrap(), "lower\n");
        let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"appended\n").unwrap();
        drop(f);
        assert_eq!(fs::read_to_string(&p).unwrap(), "lower\nappended\n");
        assert_eq!(fs::metadata(&p).unwrap().len(), 15, "{}", p.display());
        assert_eq!(
            fs::read_to_string(l.p(&format!("u/f{i}"))).unwrap(),
            "lower\nappended\n"
        );
        assert_eq!(
            fs::read_to_string(l.p(&format!("l2/f{i}"))).unwrap(),
            "lower\n"
        );
    }
    // Size and mtime after writes through an open file, seen by stat while it is open.
    let p = l.mp("grow");
    let mut f = fs::File::create(&p).unwrap();
    let before = fs::metadata(&p).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    f.write_all(&[7u8; 100_000]).unwrap();
    let during = fs::metadata(&p).unwrap();
    assert_eq!(during.len(), 100_000);
    assert!(during.modified().unwrap() > before.modified().unwrap());
    drop(f);
    assert_eq!(fs::metadata(l.p("u/grow")).unwrap().len(), 100_000);
    // Two readers of one lower file at once, then both closed and the file rewritten.
    let a = fs::File::open(l.mp("kept")).unwrap();
    let b = fs::read_to_string(l.mp("kept")).unwrap();
    assert_eq!(b, "kept\n");
    drop(a);
    fs::write(l.mp("kept"), "rewritten\n").unwrap();
    assert_eq!(fs::read_to_string(l.mp("kept")).unwrap(), "rewritten\n");
    assert_eq!(fs::read_to_string(l.p("l2/kept")).unwrap(), "kept\n");
}

/// Under passthrough a node keeps one disk file while it is open. A truncate of a lower
/// file that a reader holds open must not leave later opens reading the lower copy: it
/// waits for the reader and fails with ETXTBSY if the reader stays; once the reader is
/// gone, the truncate copies up and every later open sees it.
#[test]
fn union_passthrough_truncate_is_seen_by_later_opens() {
    let t = "union_passthrough_truncate_is_seen_by_later_opens";
    if !util::require_root(t) || !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    l.put("l2/f", "lower data\n");
    let _m = l.mount(&l.rw_opts());
    let p = l.mp("f");
    let reader = fs::File::open(&p).unwrap();
    let r = fs::OpenOptions::new().write(true).open(&p);
    // The write-open also waits for the reader (or the kernel would serve it stale).
    assert_eq!(errno(r), libc::ETXTBSY);
    // So does a truncating open, and it truncates nothing when it fails.
    let r = fs::OpenOptions::new().write(true).truncate(true).open(&p);
    assert_eq!(errno(r), libc::ETXTBSY);
    assert_eq!(fs::read_to_string(&p).unwrap(), "lower data\n");
    assert!(!l.p("u/f").exists(), "nothing copied up");
    assert_eq!(errno(nix_truncate(&p, 3)), libc::ETXTBSY);
    assert_eq!(fs::read_to_string(&p).unwrap(), "lower data\n");
    drop(reader);
    nix_truncate(&p, 3).unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "low");
    assert_eq!(fs::read_to_string(l.p("u/f")).unwrap(), "low");
    assert_eq!(fs::read_to_string(l.p("l2/f")).unwrap(), "lower data\n");
}

/// truncate(2) by path, as `truncate -s` does (no open file handle).
fn nix_truncate(p: &Path, len: i64) -> io::Result<()> {
    nix::unistd::truncate(p, len).map_err(io::Error::from)
}

/// A name missing from every layer is cached by the kernel as a negative entry, but
/// only as long as an upper entry (one second): a file put into the upper dir behind
/// the union's back shows after that; one created through the union shows at once.
#[test]
fn union_negative_entries_expire_like_upper_ones() {
    let t = "union_negative_entries_expire_like_upper_ones";
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    let _m = l.mount(&l.rw_opts());
    assert_eq!(errno(fs::symlink_metadata(l.mp("late"))), libc::ENOENT);
    assert_eq!(errno(fs::symlink_metadata(l.mp("made"))), libc::ENOENT);
    fs::write(l.mp("made"), "through the union").unwrap();
    assert_eq!(
        fs::read_to_string(l.mp("made")).unwrap(),
        "through the union"
    );
    fs::write(l.p("u/late"), "behind its back").unwrap();
    wait_for("the upper's new file to show", || l.mp("late").exists());
    fs::remove_file(l.mp("made")).unwrap();
    assert_eq!(errno(fs::symlink_metadata(l.mp("made"))), libc::ENOENT);
}

/// A merged tree deeper than PATH_MAX on the host (each step reached relatively, as
/// the kernel allows): create, write, rename, link, chmod, xattr and remove down there.
#[test]
fn union_works_below_path_max_on_the_host() {
    let t = "union_works_below_path_max_on_the_host";
    if !util::require_fuse(t)
        || !util::require_tool(t, "fusermount3")
        || !util::require_tool(t, "bash")
        || !util::require_tool(t, "find")
    {
        return;
    }
    let l = Layers::new();
    fill_lowers(&l);
    let _m = l.mount(&l.rw_opts());
    // 30 levels of 200-byte names: 6 KB below the mount, more with the upper's root.
    let name = "d".repeat(200);
    let script = format!(
        "set -e; for i in $(seq 30); do mkdir {name}; cd {name}; done; \
         echo deep > f; mv f g; ln g h; ln -s g s; chmod 640 g; \
         mkfifo p; mkdir sub; rmdir sub; rm p; \
         test \"$(cat h)\" = deep; test \"$(readlink s)\" = g; \
         test \"$(stat -c %a%h g)\" = 6402; ls"
    );
    assert_eq!(bash_in_mount(&l, &script), "g\nh\ns\n");
    // The files are in the upper layer, at full depth.
    let found = Command::new("find")
        .arg(l.p("u"))
        .args(["-name", "g", "-printf", "%d %s\n"])
        .output()
        .expect("find");
    assert_eq!(String::from_utf8_lossy(&found.stdout), "31 5\n");
}

/// `open(O_RDONLY|O_TRUNC)` of a lower file truncates it at once, as on the kernel: the
/// union asks for atomic O_TRUNC, so the truncate comes with the open and is done
/// before the open picks its disk file (under passthrough, the default as root, the
/// open would otherwise hold the lower file its own truncate waits for: ETXTBSY).
#[test]
fn union_truncating_read_only_open_of_a_lower_file() {
    let t = "union_truncating_read_only_open_of_a_lower_file";
    if !util::require_root(t) || !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    l.put("l2/a/foo", "data\n");
    l.put("l2/a/bar", "more\n");
    let _m = l.mount(&l.rw_opts());
    use std::os::unix::fs::OpenOptionsExt;
    let start = Instant::now();
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(l.mp("a/foo"))
        .expect("O_RDONLY|O_TRUNC of a lower file");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the open waited {:?}",
        start.elapsed()
    );
    assert_eq!(f.metadata().unwrap().len(), 0);
    drop(f);
    assert_eq!(fs::read_to_string(l.mp("a/foo")).unwrap(), "");
    assert_eq!(fs::read_to_string(l.p("u/a/foo")).unwrap(), "");
    assert_eq!(fs::read_to_string(l.p("l2/a/foo")).unwrap(), "data\n");
    // Read-write with O_TRUNC, then write: the new data, from the upper copy.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .open(l.mp("a/bar"))
        .unwrap();
    f.write_all(b"new").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(l.mp("a/bar")).unwrap(), "new");
    assert_eq!(fs::read_to_string(l.p("l2/a/bar")).unwrap(), "more\n");
}

/// Mounted by root without `-o allow_other`, the union is open to other users (the
/// kernel checks the presented modes), as fuse-overlayfs does; `noallow_other` keeps it
/// to root. Checked as the unprivileged test user.
#[test]
fn union_mounted_by_root_is_open_to_other_users_unless_noallow_other() {
    let t = "union_mounted_by_root_is_open_to_other_users_unless_noallow_other";
    let Some((user, _, _)) = util::require_test_user(t) else {
        return;
    };
    if !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    l.put("l2/a/foo", "data\n");
    l.put("l2/a/secret", "no\n");
    fs::set_permissions(l.p("l2/a/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let mp = l.p("mp");
    let script = format!(
        "stat -c %F {mp} && cat {mp}/a/foo && if cat {mp}/a/secret 2>/dev/null; then echo read; else echo denied; fi",
        mp = mp.display()
    );
    {
        let _m = l.mount(&l.rw_opts());
        let opts = util::run_ok(
            Command::new("findmnt")
                .args(["-n", "-o", "OPTIONS"])
                .arg(&mp),
        );
        assert!(opts.contains("allow_other"), "{opts}");
        assert_eq!(as_user(&user, &script), "directory\ndata\ndenied\n");
    }
    wait_for("unmount", || !mounted(&mp));
    let _m = l.mount(&format!("{},noallow_other", l.rw_opts()));
    let out = run(Command::new("runuser")
        .args(["-u", &user, "--", "stat"])
        .arg(&mp));
    assert!(!out.status.success(), "stat as {user} must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
}

/// `mount -t fuse.gentree-fs` and an /etc/fstab-style line reach `gentree-fs union`
/// through mount.fuse3, and the mount shows as type `fuse.gentree-fs`. mount(8) runs
/// helpers without the caller's PATH, so the test binds a directory holding a
/// `gentree-fs` link to the binary over /usr/local/bin in a private mount namespace.
#[test]
fn union_mounts_through_mount_fuse3_and_fstab() {
    let t = "union_mounts_through_mount_fuse3_and_fstab";
    if !util::require_root(t)
        || !util::require_fuse(t)
        || !util::require_tool(t, "mount.fuse3")
        || !util::require_tool(t, "unshare")
    {
        return;
    }
    let l = Layers::new();
    l.put("l2/a/foo", "data\n");
    let bin = l.p("bin");
    fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(util::bin(), bin.join("gentree-fs")).unwrap();
    let fstab = l.p("fstab");
    let mp = l.p("mp");
    fs::write(
        &fstab,
        format!(
            "union {} fuse.gentree-fs {},nosuid,nodev,nofail 0 0\n",
            mp.display(),
            l.rw_opts()
        ),
    )
    .unwrap();
    let script = format!(
        "mount --bind {bin} /usr/local/bin
         mount -t fuse.gentree-fs union {mp} -o {opts}
         findmnt -n -o FSTYPE,SOURCE {mp}
         cat {mp}/a/foo
         echo new > {mp}/a/new
         umount {mp}
         mount --fstab {fstab} {mp}
         findmnt -n -o FSTYPE,OPTIONS {mp} | cut -d, -f1-3
         cat {mp}/a/new
         umount {mp}
         mount -a --fstab {fstab}
         mount -a --fstab {fstab}
         grep -c ' {mp} fuse.gentree-fs ' /proc/self/mounts
         umount {mp}",
        bin = bin.display(),
        mp = mp.display(),
        opts = l.rw_opts(),
        fstab = fstab.display(),
    );
    let out = run_ok(Command::new("unshare").args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-euc",
        &script,
    ]));
    assert_eq!(
        out,
        "fuse.gentree-fs union\ndata\nfuse.gentree-fs rw,nosuid,nodev\nnew\n1\n"
    );
    assert_eq!(fs::read_to_string(l.p("u/a/new")).unwrap(), "new\n");
}

/// Without passthrough the kernel opens files itself and the union reads a node
/// through one file of its own, the lower copy until the node is copied up. Every
/// route to a copy-up (a write, a truncate by path or by O_TRUNC, a chmod, a hard
/// link) must make later reads, also through descriptors opened before, see the upper
/// copy; files unlinked or renamed over while open stay readable, also when the
/// union closed their node file meanwhile (more files read than it keeps open).
#[test]
fn union_without_opens_never_reads_a_stale_lower_copy() {
    let t = "union_without_opens_never_reads_a_stale_lower_copy";
    if !util::require_root(t) || !util::require_fuse(t) || !util::require_tool(t, "fusermount3") {
        return;
    }
    let l = Layers::new();
    for name in ["w", "t", "o", "m", "h", "gone", "over"] {
        l.put(&format!("l2/{name}"), &format!("lower {name}\n"));
    }
    for i in 0..5000 {
        l.put(&format!("l2/many/f{i}"), &format!("{i}\n"));
    }
    let _m = l.mount(&format!("{},nopassthrough", l.rw_opts()));
    let read_at = |f: &fs::File| {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 4096];
        let n = f.read_at(&mut buf, 0).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Reads after each change must reach the union, not the kernel's page cache:
    // the file's cached pages are dropped first.
    let uncache = |f: &fs::File| {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        posix_fadvise(f, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED).unwrap();
    };
    let read_at = |f: &fs::File| {
        uncache(f);
        read_at(f)
    };
    let cat = |name: &str| read_at(&fs::File::open(l.mp(name)).unwrap());

    // A write through another descriptor: the reader opened before sees it.
    let reader = fs::File::open(l.mp("w")).unwrap();
    assert_eq!(read_at(&reader), "lower w\n");
    let mut w = fs::OpenOptions::new().append(true).open(l.mp("w")).unwrap();
    w.write_all(b"appended\n").unwrap();
    drop(w);
    assert_eq!(read_at(&reader), "lower w\nappended\n");
    assert_eq!(cat("w"), "lower w\nappended\n");
    // A truncate by path, and one by O_TRUNC (a size change without the open).
    assert_eq!(cat("t"), "lower t\n");
    nix_truncate(&l.mp("t"), 0).unwrap();
    nix_truncate(&l.mp("t"), 3).unwrap();
    assert_eq!(cat("t"), "\0\0\0");
    assert_eq!(cat("o"), "lower o\n");
    fs::write(l.mp("o"), "new o\n").unwrap();
    assert_eq!(cat("o"), "new o\n");
    assert_eq!(fs::read_to_string(l.p("u/o")).unwrap(), "new o\n");
    // A chmod copies up; a write at offset 0 afterwards.
    let reader = fs::File::open(l.mp("m")).unwrap();
    assert_eq!(read_at(&reader), "lower m\n");
    fs::set_permissions(l.mp("m"), fs::Permissions::from_mode(0o600)).unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(l.mp("m")).unwrap();
        f.write_all_at(b"UPPER", 0).unwrap();
    }
    assert_eq!(read_at(&reader), "UPPER m\n");
    // A hard link copies up; a write through the new name shows through the old.
    assert_eq!(cat("h"), "lower h\n");
    fs::hard_link(l.mp("h"), l.mp("h2")).unwrap();
    let mut w = fs::OpenOptions::new()
        .append(true)
        .open(l.mp("h2"))
        .unwrap();
    w.write_all(b"linked\n").unwrap();
    drop(w);
    assert_eq!(cat("h"), "lower h\nlinked\n");
    // Open, read, then more files read than the union keeps open, then unlinked.
    let gone = fs::File::open(l.mp("gone")).unwrap();
    assert_eq!(read_at(&gone), "lower gone\n");
    for i in 0..5000 {
        assert_eq!(cat(&format!("many/f{i}")), format!("{i}\n"));
    }
    fs::remove_file(l.mp("gone")).unwrap();
    assert_eq!(errno(fs::metadata(l.mp("gone"))), libc::ENOENT);
    assert_eq!(read_at(&gone), "lower gone\n");
    assert_eq!(gone.metadata().unwrap().len(), 11);
    // Renamed over while open, never read before: still the old data.
    let over = fs::File::open(l.mp("over")).unwrap();
    fs::write(l.mp("new"), "replacement\n").unwrap();
    fs::rename(l.mp("new"), l.mp("over")).unwrap();
    assert_eq!(read_at(&over), "lower over\n");
    assert_eq!(cat("over"), "replacement\n");
    // The lower layer never changed.
    for name in ["w", "t", "o", "m", "h", "gone", "over"] {
        assert_eq!(
            fs::read_to_string(l.p(&format!("l2/{name}"))).unwrap(),
            format!("lower {name}\n")
        );
    }
}
