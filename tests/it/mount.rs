//! The gentree mount (`gentree-fs [OPTIONS] MOUNTPOINT`) through real FUSE mounts:
//! the tree without Portage, then images built on read with real Portage (the
//! [`crate::build::Fixture`] seed and test repository).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::{BASE, Fixture};
use crate::util::{self, mounted, run, run_ok, wait_until};

/// A foreground daemon serving `mp`, its stderr kept in a file; unmounted on drop.
pub struct Daemon {
    child: Child,
    mp: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// With `--no-config` unless `cmd` sets XDG_CONFIG_HOME (then its defaults count).
    pub fn start(
        mut cmd: Command,
        conf: &Path,
        configs: &Path,
        mp: &Path,
        scratch: &Path,
    ) -> Daemon {
        fs::create_dir_all(mp).unwrap();
        if !cmd.get_envs().any(|(k, _)| k == "XDG_CONFIG_HOME") {
            cmd.arg("--no-config");
        }
        let stderr = scratch.join(format!(
            "daemon-{}.err",
            mp.file_name().unwrap().to_string_lossy()
        ));
        let child = cmd
            .args(["-f", "--conf-root"])
            .arg(conf)
            .arg("--configs")
            .arg(configs)
            .arg(mp)
            .stdin(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            mp: mp.to_path_buf(),
            stderr,
        };
        wait_until("the mount", Duration::from_secs(20), || mounted(mp));
        d
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn jobs(&self) -> usize {
        self.log().matches(": build job ").count()
    }

    /// Unmounts with fusermount3 and waits for the daemon to exit.
    pub fn stop(mut self) {
        run_ok(Command::new("fusermount3").arg("-u").arg(&self.mp));
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "daemon exit {st}:\n{}", self.log());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon still running after unmount:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!mounted(&self.mp), "mount left behind");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if mounted(&self.mp) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mp)
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Root and /dev/fuse, which the mount tests below need (loud skip, CI panics).
fn root_and_fuse(test: &str) -> bool {
    util::require_root(test) && util::require_fuse(test)
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn xattr_str(p: &Path, name: &str) -> Option<String> {
    xattr::get(p, name)
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// A conf root with a fake seed (no Portage): enough for the tree itself.
fn plain_conf(dir: &Path) -> (PathBuf, PathBuf) {
    let conf = dir.join("conf");
    fs::create_dir_all(conf.join("seeds/s1/etc")).unwrap();
    fs::write(conf.join("seeds/s1/etc/hostname"), "seed-one\n").unwrap();
    fs::create_dir_all(conf.join("seeds/s1.upper/etc")).unwrap();
    fs::write(conf.join("seeds/s1.upper/etc/added"), "from the upper\n").unwrap();
    let configs = dir.join("cfg");
    fs::create_dir_all(&configs).unwrap();
    (conf, configs)
}

#[test]
fn mount_tree_without_portage() {
    if !root_and_fuse("mount_tree_without_portage") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    fs::write(configs.join("hello.toml"), "seed = \"s1\"\n").unwrap();
    let mp = t.path().join("mp");
    let d = Daemon::start(util::gentree(), &conf, &configs, &mp, t.path());

    let mut top: Vec<String> = fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["builds", "configs", "layers", "packages", "seeds"]);
    assert_eq!(fs::read_dir(mp.join("layers")).unwrap().count(), 0);

    // seeds/: the seed with its upper, read-only.
    let seed = mp.join("seeds/s1");
    assert_eq!(
        fs::read_to_string(seed.join("etc/hostname")).unwrap(),
        "seed-one\n"
    );
    assert_eq!(
        fs::read_to_string(seed.join("etc/added")).unwrap(),
        "from the upper\n"
    );
    let names: Vec<_> = fs::read_dir(mp.join("seeds"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["s1"], "uppers are not seeds");
    let erofs = Some(libc::EROFS);
    assert_eq!(errno_of(fs::write(seed.join("etc/new"), "x")), erofs);
    assert_eq!(
        errno_of(
            fs::OpenOptions::new()
                .append(true)
                .open(seed.join("etc/hostname"))
        ),
        erofs
    );
    assert_eq!(errno_of(fs::remove_file(seed.join("etc/hostname"))), erofs);
    assert_eq!(errno_of(fs::create_dir(seed.join("d"))), erofs);
    assert_eq!(errno_of(fs::create_dir(mp.join("seeds/s2"))), erofs);
    assert_eq!(
        fs::read_to_string(conf.join("seeds/s1/etc/hostname")).unwrap(),
        "seed-one\n"
    );

    // configs/: real files in the configs dir; each *.toml is an image in builds/.
    let builds = |mp: &Path| {
        let mut v: Vec<String> = fs::read_dir(mp.join("builds"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        builds(&mp),
        ["hello.log", "hello.oci", "hello.spdx.json", "hello.tar"]
    );
    let src = t.path().join("nginx.toml");
    fs::write(&src, "seed = \"s1\"\npackages = [\"www-servers/nginx\"]\n").unwrap();
    run_ok(Command::new("cp").arg(&src).arg(mp.join("configs/")));
    assert_eq!(
        fs::read(configs.join("nginx.toml")).unwrap(),
        fs::read(&src).unwrap(),
        "not a real file in the configs dir"
    );
    assert_eq!(
        builds(&mp),
        [
            "hello.log",
            "hello.oci",
            "hello.spdx.json",
            "hello.tar",
            "nginx.log",
            "nginx.oci",
            "nginx.spdx.json",
            "nginx.tar"
        ]
    );
    let tar = mp.join("builds/nginx.tar");
    assert_eq!(fs::metadata(&tar).unwrap().len(), 0, "unbuilt image size");
    assert_eq!(
        xattr_str(&tar, "user.gentree.state").as_deref(),
        Some("absent")
    );
    let key = xattr_str(&tar, "user.gentree.key").expect("key xattr");
    assert_eq!(key.len(), 64, "{key}");
    // Writes to builds/ are refused.
    assert!(fs::write(&tar, "x").is_err());
    assert!(fs::write(mp.join("builds/new.tar"), "x").is_err());

    // A malformed config: EIO on open, the log names file and line; the rest works.
    fs::write(
        mp.join("configs/broken.toml"),
        "seed = \"s1\"\npackages = [\n",
    )
    .unwrap();
    let e = fs::read(mp.join("builds/broken.tar")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let log = fs::read_to_string(mp.join("builds/broken.log")).unwrap();
    assert!(log.contains("broken.toml:2:"), "{log}");
    assert_eq!(
        xattr_str(&mp.join("builds/broken.tar"), "user.gentree.state").as_deref(),
        Some("failed")
    );
    // A config naming a seed that is not imported: EIO too, the cause in its log.
    fs::write(mp.join("configs/noseed.toml"), "seed = \"missing\"\n").unwrap();
    assert_eq!(
        errno_of(fs::read(mp.join("builds/noseed.tar"))),
        Some(libc::EIO)
    );
    let log = fs::read_to_string(mp.join("builds/noseed.log")).unwrap();
    assert!(log.contains("seed \"missing\" is not imported"), "{log}");
    assert_eq!(
        fs::read_to_string(seed.join("etc/hostname")).unwrap(),
        "seed-one\n"
    );
    // Removing a config removes its image.
    fs::remove_file(mp.join("configs/broken.toml")).unwrap();
    assert!(!configs.join("broken.toml").exists());
    assert!(!builds(&mp).contains(&"broken.tar".to_owned()));
    d.stop();
}

/// Scratch dirs of builds whose process died (kill -9 of a daemon) go on the next
/// start; those of live processes stay.
#[test]
fn mount_start_removes_run_dirs_of_dead_processes() {
    if !root_and_fuse("mount_start_removes_run_dirs_of_dead_processes") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let gone = conf.join(format!("run/0123456789ab-{dead}"));
    let live = conf.join(format!("run/0123456789ab-{}", std::process::id()));
    for d in [&gone, &live] {
        fs::create_dir_all(d.join("root/etc")).unwrap();
        fs::write(d.join("root/etc/hostname"), "x\n").unwrap();
    }
    let mp = t.path().join("mp");
    let d = Daemon::start(util::gentree(), &conf, &configs, &mp, t.path());
    assert!(!gone.exists(), "left by a dead process");
    assert!(live.exists(), "a live process's");
    d.stop();
}

/// How many of this process's threads wait for a FUSE reply.
fn threads_waiting_on_fuse() -> usize {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("wchan")).ok())
        .filter(|w| w == "request_wait_answer")
        .count()
}

/// A config whose resolution blocks (its base is on a filesystem that hangs: a union
/// mount whose daemon is stopped, as a hung network filesystem would) holds up only
/// requests on its own image: with more such requests in flight than the mount has
/// worker threads, every other path still answers, and the blocked requests are
/// answered once the base can be read.
#[test]
fn mount_answers_while_a_config_is_slow() {
    const SLOW: usize = 10;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::sync::mpsc;
    if !root_and_fuse("mount_answers_while_a_config_is_slow") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    fs::write(configs.join("hello.toml"), "seed = \"s1\"\n").unwrap();
    let lower = t.path().join("slow-lower");
    fs::create_dir_all(&lower).unwrap();
    fs::write(lower.join("base.toml"), "packages = [\"app-misc/a\"]\n").unwrap();
    let hung = t.path().join("hung");
    fs::create_dir_all(&hung).unwrap();
    /// The union daemon, stopped while the test runs; continued and unmounted on drop.
    struct Stopped(Child, PathBuf);
    impl Drop for Stopped {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGCONT);
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.1).status();
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let union = util::gentree()
        .args(["union", "-f", "-o"])
        .arg(format!("lowerdir={}", lower.display()))
        .arg(&hung)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let union = Stopped(union, hung.clone());
    wait_until("the union", Duration::from_secs(20), || mounted(&hung));
    let slow = format!(
        "seed = \"s1\"\nbases = [\"{}/base.toml\"]\n",
        hung.display()
    );
    for i in 0..SLOW {
        fs::write(configs.join(format!("slow{i}.toml")), &slow).unwrap();
    }
    // Stopped before the mount starts, whose preloading resolves every config.
    let union_pid = Pid::from_raw(union.0.id() as i32);
    kill(union_pid, Signal::SIGSTOP).unwrap();
    let mp = t.path().join("mp");
    let mut cmd = util::gentree();
    cmd.args(["--threads", "2"]);
    let d = Daemon::start(cmd, &conf, &configs, &mp, t.path());

    // Requests on slow images: more than the two worker threads and than the resolver
    // threads, one per config (the kernel sends one lookup of a name at a time).
    let (slow_tx, slow_rx) = mpsc::channel();
    for i in 0..SLOW {
        let tar = mp.join(format!("builds/slow{i}.tar"));
        let tx = slow_tx.clone();
        std::thread::spawn(move || {
            let r = match i % 3 {
                0 => xattr::get(&tar, "user.gentree.state").map(|v| v.map(|v| v.len() as u64)),
                1 => fs::metadata(&tar).map(|m| Some(m.len())),
                _ => xattr::list(&tar).map(|l| Some(l.count() as u64)),
            };
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
    }

    // All are in flight: their threads wait in the kernel for the mount's reply, and
    // the daemon resolves with a bounded number of threads.
    wait_until(
        "the slow requests in flight",
        Duration::from_secs(30),
        || threads_waiting_on_fuse() >= SLOW,
    );
    let resolvers = fs::read_dir(format!("/proc/{}/task", d.child.id()))
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "resolve")
        .count();
    assert!((1..=8).contains(&resolvers), "{resolvers} resolver threads");

    // Every other path answers meanwhile (bounded, so a stall fails the test instead
    // of hanging it).
    let (tx, rx) = mpsc::channel();
    let mp2 = mp.clone();
    std::thread::spawn(move || {
        let builds = fs::read_dir(mp2.join("builds")).unwrap().count();
        let hello = mp2.join("builds/hello.tar");
        let state = xattr_str(&hello, "user.gentree.state");
        let size = fs::metadata(&hello).unwrap().len();
        let host = fs::read_to_string(mp2.join("seeds/s1/etc/hostname")).unwrap();
        let packages = fs::read_dir(mp2.join("packages")).unwrap().count();
        let _ = tx.send((builds, state, size, host, packages));
    });
    let (n, state, size, host, packages) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the mount stalled behind the slow config");
    assert_eq!(
        n,
        4 * (SLOW + 1),
        "hello and the slow ones, .tar, .log, .oci and .spdx.json"
    );
    assert_eq!((state.as_deref(), size), (Some("absent"), 0));
    assert_eq!((host.as_str(), packages), ("seed-one\n", 0));
    assert!(
        slow_rx.try_recv().is_err(),
        "a request on the slow image was answered while its base could not be read"
    );

    // The base's filesystem answers again: every request is answered.
    kill(union_pid, Signal::SIGCONT).unwrap();
    for _ in 0..SLOW {
        let r = slow_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("answered");
        r.unwrap();
    }
    let tar = mp.join("builds/slow0.tar");
    assert_eq!(
        xattr_str(&tar, "user.gentree.state").as_deref(),
        Some("absent")
    );
    let key = xattr_str(&tar, "user.gentree.key").unwrap();
    // An edit is seen at once: another key.
    let edited = format!("{slow}unmerge = [\"app-misc/b\"]\n");
    fs::write(configs.join("slow0.toml"), edited).unwrap();
    assert_ne!(xattr_str(&tar, "user.gentree.key").unwrap(), key);
    d.stop();
    drop(union);
}

#[test]
fn mount_in_background_and_unmount_by_signal() {
    if !root_and_fuse("mount_in_background_and_unmount_by_signal") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    let mp = t.path().join("mp");
    fs::create_dir(&mp).unwrap();
    // Background: returns once the mount is ready.
    let out = run(util::gentree()
        .args(["--no-config", "--conf-root"])
        .arg(&conf)
        .arg("--configs")
        .arg(&configs)
        .arg(&mp));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounted(&mp), "not mounted when the command returned");
    assert!(mp.join("seeds/s1/etc/hostname").exists());
    // A second mount on the same (live) mountpoint is refused with advice.
    let again = run(util::gentree()
        .args(["--no-config", "--conf-root"])
        .arg(&conf)
        .arg(&mp));
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is already mounted"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    run_ok(Command::new("umount").arg(&mp));
    assert!(!mounted(&mp));
    // Mount again only once that daemon is gone: fuser 0.18.0 unmounts the mountpoint
    // *path* when its session ends (`is_mounted` takes the dead connection's POLLERR
    // for "mounted"), which would take down a new mount made there meanwhile.
    let mp_str = mp.to_str().unwrap().to_owned();
    wait_until(
        "the background daemon to exit",
        Duration::from_secs(10),
        || processes_mentioning(&mp_str).is_empty(),
    );

    // Foreground: SIGTERM unmounts and the daemon exits cleanly.
    let d = Daemon::start(util::gentree(), &conf, &configs, &mp, t.path());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut d = d;
    let start = Instant::now();
    let st = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "{st}: {}", d.log());
    assert!(!mounted(&mp), "SIGTERM left the mount");

    // A daemon killed outright leaves a stale mount: detected, with what to do.
    let mut d = Daemon::start(util::gentree(), &conf, &configs, &mp, t.path());
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    assert!(mounted(&mp));
    let stale = run(util::gentree()
        .args(["--no-config", "--conf-root"])
        .arg(&conf)
        .arg(&mp));
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(!stale.status.success());
    assert!(
        err.contains("stale mount") && err.contains("fusermount3 -u"),
        "{err}"
    );
    run_ok(Command::new("fusermount3").arg("-u").arg(&mp));
    drop(d);

    // Subcommands still parse next to the optional mountpoint.
    let cfg = t.path().join("c.toml");
    fs::write(&cfg, "seed = \"s1\"\n").unwrap();
    let out = run_ok(util::gentree().args(["config", "--no-config"]).arg(&cfg));
    assert!(out.contains("s1"), "{out}");
}

/// Builds with real Portage: build on read, sharing, reuse, random access, rm.
#[test]
fn mount_builds_images_on_read() {
    if !root_and_fuse("mount_builds_images_on_read") {
        return;
    }
    let f = Fixture::new(None);
    f.write_cfg("base.toml", BASE);
    f.write_cfg(
        "small.toml",
        "seed = \"testseed\"\nbases = [\"base.toml\"]\npackages = [\"app-misc/gt-special\"]\n",
    );
    let mp = f.dir.path().join("mp");
    let d = Daemon::start(f.cmd(None), &f.conf(), &f.cfg_dir(), &mp, f.dir.path());
    let tar = mp.join("builds/small.tar");
    assert_eq!(fs::metadata(&tar).unwrap().len(), 0);

    // Three concurrent copies of an unbuilt image: one build, identical bytes.
    let out = f.dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let cps: Vec<Child> = (0..3)
        .map(|i| {
            Command::new("cp")
                .arg(&tar)
                .arg(out.join(format!("c{i}.tar")))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in cps {
        assert!(c.wait().unwrap().success(), "cp failed:\n{}", d.log());
    }
    assert_eq!(d.jobs(), 1, "{}", d.log());
    let first = fs::read(out.join("c0.tar")).unwrap();
    let sizes: Vec<u64> = (0..3)
        .map(|i| fs::metadata(out.join(format!("c{i}.tar"))).unwrap().len())
        .collect();
    assert!(first.len() > 10240, "copies {sizes:?}:\n{}", d.log());
    for i in 1..3 {
        assert!(fs::read(out.join(format!("c{i}.tar"))).unwrap() == first);
    }
    let log = fs::read_to_string(mp.join("builds/small.log")).unwrap();
    assert!(log.contains("built layer testseed-small"), "{log}");
    assert!(log.contains(">>> Emerging"), "{log}");
    // GNU tar lists and extracts it.
    let listing = run_ok(Command::new("tar").arg("-tvf").arg(out.join("c0.tar")));
    assert!(
        listing.contains("var/lib/gt-special/owned-file"),
        "{listing}"
    );
    let x = f.dir.path().join("x");
    fs::create_dir(&x).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(out.join("c0.tar"))
            .arg("-C")
            .arg(&x),
    );
    assert!(x.join("var/lib/gt-special/owned-file").exists());

    // Ready now: exact size, state and key; a second copy runs no build.
    assert_eq!(fs::metadata(&tar).unwrap().len(), first.len() as u64);
    assert_eq!(
        xattr_str(&tar, "user.gentree.state").as_deref(),
        Some("ready")
    );
    let key = xattr_str(&tar, "user.gentree.key").unwrap();
    assert!(
        f.conf().join("layers").join(&key).is_dir(),
        "key {key} is not a layer"
    );
    let t0 = Instant::now();
    run_ok(Command::new("cp").arg(&tar).arg(out.join("again.tar")));
    eprintln!("second cp of {} bytes: {:?}", first.len(), t0.elapsed());
    assert!(fs::read(out.join("again.tar")).unwrap() == first);
    assert_eq!(d.jobs(), 1, "{}", d.log());

    // Random preads equal the same ranges of the full copy.
    let file = fs::File::open(&tar).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let off = (seed % (first.len() as u64 + 100)) as usize;
        let len = ((seed >> 32) % 70_000) as usize;
        let mut buf = vec![0u8; len];
        let n = file.read_at(&mut buf, off as u64).unwrap();
        let want = &first[off.min(first.len())..(off + len).min(first.len())];
        assert_eq!(n, want.len(), "length at {off}+{len}");
        assert!(&buf[..n] == want, "bytes at {off}+{len}");
    }
    drop(file);

    // layers/: each layer as an OCI layer tar, with its own files only.
    let mut layers: Vec<String> = fs::read_dir(mp.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    layers.sort();
    assert_eq!(layers, ["testseed-base.tar", "testseed-small.tar"]);
    let top = run_ok(
        Command::new("tar")
            .arg("-tf")
            .arg(mp.join("layers/testseed-small.tar")),
    );
    let base = run_ok(
        Command::new("tar")
            .arg("-tf")
            .arg(mp.join("layers/testseed-base.tar")),
    );
    assert!(top.contains("var/lib/gt-special/owned-file"), "{top}");
    assert!(!base.contains("var/lib/gt-special/owned-file"), "{base}");
    assert!(
        base.lines().any(|l| l.ends_with("etc/os-release")),
        "{base}"
    );
    assert!(!top.lines().any(|l| l.ends_with("etc/os-release")), "{top}");
    assert_eq!(
        fs::metadata(mp.join("layers/testseed-small.tar"))
            .unwrap()
            .len(),
        fs::read(mp.join("layers/testseed-small.tar"))
            .unwrap()
            .len() as u64
    );

    // A new daemon on the same store serves it at once, from the persisted index.
    d.stop();
    let d = Daemon::start(f.cmd(None), &f.conf(), &f.cfg_dir(), &mp, f.dir.path());
    assert_eq!(fs::metadata(&tar).unwrap().len(), first.len() as u64);
    let t0 = Instant::now();
    let mut head = [0u8; 512];
    fs::File::open(&tar).unwrap().read_at(&mut head, 0).unwrap();
    eprintln!("first byte of a finished image: {:?}", t0.elapsed());
    assert!(fs::read(&tar).unwrap() == first);
    assert_eq!(d.jobs(), 0, "{}", d.log());

    // rm drops the image: the next read rebuilds the config's own layer only.
    fs::remove_file(&tar).unwrap();
    assert!(!f.conf().join("layers").join(&key).exists());
    assert!(f.layers().len() == 1, "the base layer stays");
    assert_eq!(
        xattr_str(&tar, "user.gentree.state").as_deref(),
        Some("absent")
    );
    let rebuilt = fs::read(&tar).unwrap();
    assert_eq!(rebuilt.len(), first.len());
    let log = fs::read_to_string(mp.join("builds/small.log")).unwrap();
    assert!(log.contains("reused layer testseed-base"), "{log}");
    assert!(log.contains("built layer testseed-small"), "{log}");
    assert_eq!(d.jobs(), 1);

    // An edited config is another image; editing it back serves the first one again
    // (its layers and index exist), never pages of the image in between.
    let small = fs::read_to_string(f.cfg_dir().join("small.toml")).unwrap();
    f.write_cfg(
        "small.toml",
        &small.replace(
            "\"app-misc/gt-special\"",
            "\"app-misc/gt-special\", \"app-misc/gt-lib\"",
        ),
    );
    let other = fs::read(&tar).unwrap();
    assert!(other != rebuilt, "an edited config gave the same image");
    // Read again: now from the page cache, which then holds this image's pages.
    assert!(fs::read(&tar).unwrap() == other);
    let other_copy = f.dir.path().join("other.tar");
    fs::write(&other_copy, &other).unwrap();
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&other_copy));
    assert!(listing.contains("gt-lib"), "{listing}");
    f.write_cfg("small.toml", &small);
    assert_eq!(fs::metadata(&tar).unwrap().len(), rebuilt.len() as u64);
    assert!(
        fs::read(&tar).unwrap() == rebuilt,
        "stale bytes after editing back"
    );
    assert!(fs::read(&tar).unwrap() == rebuilt);
    assert_eq!(d.jobs(), 2, "editing back rebuilt: {}", d.log());
    d.stop();
}

/// Ctrl-C while waiting for a build; failing builds; a bad config next to good ones.
#[test]
fn mount_interrupts_waiters_and_reports_failures() {
    if !root_and_fuse("mount_interrupts_waiters_and_reports_failures") {
        return;
    }
    let f = Fixture::new(None);
    f.write_cfg("base.toml", BASE);
    f.write_cfg(
        "lib.toml",
        "seed = \"testseed\"\nbases = [\"base.toml\"]\npackages = [\"app-misc/gt-lib\"]\n",
    );
    f.write_cfg(
        "bad.toml",
        "seed = \"testseed\"\nbases = [\"base.toml\"]\npackages = [\"app-misc/gt-fail\"]\n",
    );
    f.write_cfg("malformed.toml", "seed = \"testseed\"\n[env\nuse = 1\n");
    let mp = f.dir.path().join("mp");
    let d = Daemon::start(f.cmd(None), &f.conf(), &f.cfg_dir(), &mp, f.dir.path());
    let tar = mp.join("builds/lib.tar");

    let mut cp = Command::new("cp")
        .arg(&tar)
        .arg(f.dir.path().join("lib.tar"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the build", Duration::from_secs(30), || {
        xattr_str(&tar, "user.gentree.state").as_deref() == Some("building")
    });
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cp.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    wait_until("cp to end after SIGINT", Duration::from_secs(2), || {
        cp.try_wait().unwrap().is_some()
    });
    eprintln!("cp ended {:?} after SIGINT", sent.elapsed());
    assert!(!cp.wait().unwrap().success());
    // The build carries on and finishes for the next reader.
    assert_eq!(
        xattr_str(&tar, "user.gentree.state").as_deref(),
        Some("building")
    );
    wait_until("the build to finish", Duration::from_secs(300), || {
        xattr_str(&tar, "user.gentree.state").as_deref() != Some("building")
    });
    assert_eq!(
        xattr_str(&tar, "user.gentree.state").as_deref(),
        Some("ready"),
        "{}",
        d.log()
    );
    let image = fs::read(&tar).unwrap();
    assert_eq!(image.len() as u64, fs::metadata(&tar).unwrap().len());
    assert_eq!(d.jobs(), 1);

    // A failing build: EIO, the cause in its log, state failed; the next open retries.
    let bad = mp.join("builds/bad.tar");
    let e = fs::read(&bad).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let log = fs::read_to_string(mp.join("builds/bad.log")).unwrap();
    assert!(log.contains("gt-fail"), "{log}");
    assert!(log.contains("layer testseed-bad failed"), "{log}");
    assert_eq!(
        xattr_str(&bad, "user.gentree.state").as_deref(),
        Some("failed")
    );
    assert_eq!(errno_of(fs::read(&bad)), Some(libc::EIO));
    assert_eq!(d.jobs(), 3, "the second open did not retry");

    // A malformed config: EIO with file and line in its log; the others are fine.
    let e = fs::read(mp.join("builds/malformed.tar")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let log = fs::read_to_string(mp.join("builds/malformed.log")).unwrap();
    assert!(log.contains("malformed.toml:2:"), "{log}");
    assert!(fs::read(&tar).unwrap() == image);
    assert_eq!(
        errno_of(fs::read(mp.join("builds/nonexistent.tar"))),
        Some(libc::ENOENT)
    );

    // Unmounting during a build stops it: no helper process, no half layer left;
    // by SIGTERM to the daemon, then by fusermount3 -u.
    stop_during_build(&f, d, "\"app-misc/gt-lib\", \"app-misc/gt-app\"", true);
    let d = Daemon::start(f.cmd(None), &f.conf(), &f.cfg_dir(), &mp, f.dir.path());
    stop_during_build(&f, d, "\"app-misc/gt-lib\", \"app-misc/gt-probe\"", false);
}

/// Starts a build of lib.toml with `packages`, interrupts its reader, then ends the
/// daemon by SIGTERM (`by_signal`) or by `fusermount3 -u`, and checks that nothing of
/// the build is left.
fn stop_during_build(f: &Fixture, d: Daemon, packages: &str, by_signal: bool) {
    let mp = d.mp.clone();
    let tar = mp.join("builds/lib.tar");
    f.write_cfg(
        "lib.toml",
        &format!("seed = \"testseed\"\nbases = [\"base.toml\"]\npackages = [{packages}]\n"),
    );
    let mut cp = Command::new("cp")
        .arg(&tar)
        .arg(f.dir.path().join("lib2.tar"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the build", Duration::from_secs(30), || {
        xattr_str(&tar, "user.gentree.state").as_deref() == Some("building")
    });
    let daemon = d.child.id();
    let mut helpers = Vec::new();
    wait_until("a build helper", Duration::from_secs(30), || {
        helpers = child_pids(daemon);
        !helpers.is_empty()
    });
    // The reader goes first (Ctrl-C: a waiting open keeps the mount busy), then the
    // daemon: SIGTERM (it unmounts) or fusermount3 -u; either way the build stops.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cp.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(!cp.wait().unwrap().success());
    let t0 = Instant::now();
    if !by_signal {
        d.stop();
        eprintln!(
            "fusermount3 -u during a build; daemon gone after {:?}",
            t0.elapsed()
        );
    } else {
        let mut d = d;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        wait_until("the daemon to exit", Duration::from_secs(30), || {
            d.child.try_wait().unwrap().is_some()
        });
        eprintln!(
            "SIGTERM during a build; daemon gone after {:?}",
            t0.elapsed()
        );
    }
    assert!(!mounted(&mp), "mount left behind");
    for pid in helpers {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "build helper {pid} outlived the daemon"
        );
    }
    let leftovers: Vec<_> = fs::read_dir(f.conf().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "half layers: {leftovers:?}");
}

/// The children of every thread of `pid`.
fn child_pids(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(Result::ok)
    {
        if let Ok(text) = fs::read_to_string(t.path().join("children")) {
            v.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    v
}

/// Command lines of live processes that mention `needle` (to check nothing is left).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(c);
            }
        }
    }
    v
}

/// Rootless: an ordinary user mounts (fusermount3), builds on read and unmounts.
#[test]
fn mount_as_unprivileged_user() {
    let Some((user, _, _)) = util::require_test_user("mount_as_unprivileged_user") else {
        return;
    };
    if !util::require_fuse("mount_as_unprivileged_user") {
        return;
    }
    let f = Fixture::new(Some(&user));
    f.write_cfg("base.toml", BASE);
    f.write_cfg(
        "small.toml",
        "seed = \"testseed\"\nbases = [\"base.toml\"]\npackages = [\"app-misc/gt-special\"]\n",
    );
    let mp = f.dir.path().join("mp");
    let out = f.dir.path().join("out");
    for d in [&mp, &out] {
        fs::create_dir(d).unwrap();
    }
    run_ok(
        Command::new("chown")
            .args(["-R", &user])
            .arg(&mp)
            .arg(&out)
            .arg(f.cfg_dir()),
    );
    let as_user = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new("runuser");
        c.args(["-u", &user, "--"]).args(args);
        run(&mut c)
    };
    let started = run(f
        .cmd(Some(&user))
        .args(["--no-config", "--conf-root"])
        .arg(f.conf())
        .arg("--configs")
        .arg(f.cfg_dir())
        .arg(&mp));
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(mounted(&mp));
    let tar = mp.join("builds/small.tar");
    let copy = out.join("small.tar");
    let cp = as_user(&["cp".as_ref(), tar.as_os_str(), copy.as_os_str()]);
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    // The image is ready now: copied again, still from its layout (a rootless daemon
    // cannot use FUSE passthrough, so it keeps no image files).
    let again = out.join("again.tar");
    let cp = as_user(&["cp".as_ref(), tar.as_os_str(), again.as_os_str()]);
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    assert!(fs::read(&again).unwrap() == fs::read(&copy).unwrap());
    let files = f.conf().join("images");
    assert!(!files.exists(), "a rootless mount kept image files");
    let listing = run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&copy),
    );
    let owned = listing
        .lines()
        .find(|l| l.ends_with("var/lib/gt-special/owned-file"))
        .expect("fowners file");
    assert!(owned.contains(" 1234/"), "subuid ownership lost: {owned}");
    let um = as_user(&["fusermount3".as_ref(), "-u".as_ref(), mp.as_os_str()]);
    assert!(
        um.status.success(),
        "{}",
        String::from_utf8_lossy(&um.stderr)
    );
    assert!(!mounted(&mp));
    let mp_str = mp.to_str().unwrap().to_owned();
    wait_until("the daemon to exit", Duration::from_secs(10), || {
        processes_mentioning(&mp_str).is_empty()
    });
}

/// Publishes a layer under `key` by hand (no Portage): `data/<name>` in its root.
fn fake_layer(conf: &Path, key: &str, name: &str, base_keys: &[&str]) {
    let dir = conf.join("layers").join(key);
    fs::create_dir_all(dir.join("root/data")).unwrap();
    fs::write(dir.join("root/data").join(name), format!("{name}\n")).unwrap();
    let meta = serde_json::json!({
        "key": key, "name": name, "buildname": format!("s1-{name}"),
        "base_keys": base_keys, "created": 1, "format": 1,
    });
    fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
}

/// Publishes the image of `tar`'s config under its current key (a single layer with
/// `data/<name>` and 8 MiB of `fill` in `data/big`); returns the key.
fn fill_image(conf: &Path, tar: &Path, name: &str, fill: u8) -> String {
    let key = xattr_str(tar, "user.gentree.key").unwrap();
    fake_layer(conf, &key, name, &[]);
    let big = conf.join("layers").join(&key).join("root/data/big");
    fs::write(big, vec![fill; 8 << 20]).unwrap();
    key
}

/// `rm builds/x.tar` drops x's own layer, but not one another config builds on.
#[test]
fn mount_rm_keeps_layers_other_configs_use() {
    if !root_and_fuse("mount_rm_keeps_layers_other_configs_use") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    // The seed comes from the defaults, so the base is a config of its own too.
    let xdg = t.path().join("xdg");
    fs::create_dir_all(xdg.join("gentree")).unwrap();
    fs::write(xdg.join("gentree/config.toml"), "seed = \"s1\"\n").unwrap();
    fs::write(
        configs.join("base.toml"),
        "packages = [\"app-misc/base\"]\n",
    )
    .unwrap();
    for n in ["a", "b"] {
        fs::write(
            configs.join(format!("{n}.toml")),
            format!("bases = [\"base.toml\"]\npackages = [\"app-misc/{n}\"]\n"),
        )
        .unwrap();
    }
    let mp = t.path().join("mp");
    let mut cmd = util::gentree();
    cmd.env("XDG_CONFIG_HOME", &xdg);
    let d = Daemon::start(cmd, &conf, &configs, &mp, t.path());
    let tar = |n: &str| mp.join(format!("builds/{n}.tar"));
    let key = |n: &str| xattr_str(&tar(n), "user.gentree.key").expect("key");
    let (kbase, ka, kb) = (key("base"), key("a"), key("b"));
    assert!(kbase != ka && ka != kb, "{kbase} {ka} {kb}");
    fake_layer(&conf, &kbase, "base", &[]);
    fake_layer(&conf, &ka, "a", &[&kbase]);
    fake_layer(&conf, &kb, "b", &[&kbase]);
    let layer = |k: &str| conf.join("layers").join(k).join("meta.json").exists();
    let state = |n: &str| xattr_str(&tar(n), "user.gentree.state");
    let listing = |n: &str| {
        let copy = t.path().join(format!("{n}.tar"));
        run_ok(Command::new("cp").arg(tar(n)).arg(&copy));
        run_ok(Command::new("tar").arg("-tf").arg(&copy))
    };
    // a's image is the base's layer and its own (the keys match: nothing is built).
    let l = listing("a");
    assert!(l.contains("data/base") && l.contains("data/a"), "{l}");
    assert_eq!(state("a").as_deref(), Some("ready"));

    // a and b build on the base: rm of the base's image keeps its layer.
    fs::remove_file(tar("base")).unwrap();
    assert!(layer(&kbase), "a shared layer was removed");
    // a's own layer goes; the base and b's stay, and b is still whole.
    fs::remove_file(tar("a")).unwrap();
    assert!(!layer(&ka), "a's layer kept");
    assert!(layer(&kbase) && layer(&kb));
    assert_eq!(state("a").as_deref(), Some("absent"));
    let l = listing("b");
    assert!(l.contains("data/base") && l.contains("data/b"), "{l}");
    assert_eq!(state("b").as_deref(), Some("ready"));
    // A config not resolved yet might use b's layer: rm keeps it (without waiting
    // for that config), and removes it once every config is known.
    fs::write(
        configs.join("c.toml"),
        "bases = [\"base.toml\"]\npackages = [\"app-misc/c\"]\n",
    )
    .unwrap();
    fs::remove_file(tar("b")).unwrap();
    assert!(layer(&kb), "removed while c was not resolved");
    assert_ne!(key("c"), kb);
    fs::remove_file(tar("b")).unwrap();
    assert!(!layer(&kb), "b's layer kept");
    d.stop();
}

/// A build waiting for its seed (another build holds the seed's lock) shows `queued`.
#[test]
fn mount_shows_queued_while_the_seed_is_busy() {
    if !root_and_fuse("mount_shows_queued_while_the_seed_is_busy")
        || !util::require_tool("mount_shows_queued_while_the_seed_is_busy", "flock")
    {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    fs::write(configs.join("hello.toml"), "seed = \"s1\"\n").unwrap();
    let mp = t.path().join("mp");
    let d = Daemon::start(util::gentree(), &conf, &configs, &mp, t.path());
    let tar = mp.join("builds/hello.tar");
    // The lock `build` takes for the seed, held by another process.
    let lock = conf.join("seeds/.s1.lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    wait_until("the lock holder", Duration::from_secs(10), || {
        !Command::new("flock")
            .args(["-n"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    });
    let mut reader = Command::new("cat")
        .arg(&tar)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("queued", Duration::from_secs(10), || {
        xattr_str(&tar, "user.gentree.state").as_deref() == Some("queued")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        xattr_str(&tar, "user.gentree.state").as_deref(),
        Some("queued")
    );
    let log = fs::read_to_string(mp.join("builds/hello.log")).unwrap();
    assert!(log.contains("queued: another build holds seed s1"), "{log}");
    assert!(!log.contains("building"), "{log}");
    assert!(
        reader.try_wait().unwrap().is_none(),
        "the reader did not wait"
    );

    // The seed is free: the build runs (and fails: the fake seed has no Portage).
    holder.kill().unwrap();
    holder.wait().unwrap();
    wait_until("the build to end", Duration::from_secs(60), || {
        reader.try_wait().unwrap().is_some()
    });
    let log = fs::read_to_string(mp.join("builds/hello.log")).unwrap();
    assert!(log.contains("building (top layer"), "{log}");
    assert_ne!(
        xattr_str(&tar, "user.gentree.state").as_deref(),
        Some("queued")
    );
    d.stop();
}

/// `-o` takes mount(8)/FUSE options (shown in mountinfo) and names an unknown one.
#[test]
fn mount_takes_mount_options() {
    if !root_and_fuse("mount_takes_mount_options") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    let mp = t.path().join("mp");
    let mut cmd = util::gentree();
    cmd.args([
        "-o",
        "ro,noexec,noatime",
        "-o",
        "fsname=mytree,subtype=mysub",
    ]);
    let d = Daemon::start(cmd, &conf, &configs, &mp, t.path());
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mi
        .lines()
        .rfind(|l| l.split(' ').nth(4) == mp.to_str())
        .unwrap();
    let opts: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    for o in ["ro", "noexec", "noatime", "nodev", "nosuid"] {
        assert!(opts.contains(&o), "{o} missing: {line}");
    }
    let tail = line.split(" - ").nth(1).unwrap();
    // As root fuser mounts by mount(2), where the type stays "fuse".
    assert!(
        tail.starts_with("fuse.mysub mytree ") || tail.starts_with("fuse mytree "),
        "{line}"
    );
    assert_eq!(
        errno_of(fs::write(mp.join("configs/new.toml"), "x")),
        Some(libc::EROFS)
    );
    assert!(mp.join("seeds/s1/etc/hostname").exists());
    // The unmount watcher finds the mount under its own names: fusermount3 -u ends it.
    d.stop();

    let out = run(util::gentree()
        .args(["-f", "--no-config", "-o", "noatime,bogus", "--conf-root"])
        .arg(&conf)
        .arg(&mp));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown mount option \"bogus\""), "{err}");
    assert!(!mounted(&mp));
}

/// An unmount that races the daemon's startup (before or during FUSE INIT, or before
/// it serves) ends the daemon cleanly, exit 0, nothing left mounted. The window is
/// short: the test unmounts in a tight loop from the moment the daemon starts, over
/// several starts, and fails unless one landed in it.
#[test]
fn mount_unmounted_during_startup_exits_cleanly() {
    if !root_and_fuse("mount_unmounted_during_startup_exits_cleanly") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    let mp = t.path().join("mp");
    fs::create_dir(&mp).unwrap();
    util::unmount_during_startup(&mp, t.path(), || {
        let mut c = util::gentree();
        c.args(["-f", "--no-config", "--conf-root"])
            .arg(&conf)
            .arg("--configs")
            .arg(&configs)
            .arg(&mp);
        c
    });
}

/// packages/: every binary package dir, read-only, following the dir live.
#[test]
fn mount_shows_package_dirs_read_only() {
    if !root_and_fuse("mount_shows_package_dirs_read_only") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    fs::create_dir_all(conf.join("pkgdir/app-misc")).unwrap();
    fs::write(conf.join("pkgdir/Packages"), "PACKAGES: 1\n").unwrap();
    fs::write(conf.join("pkgdir/app-misc/a-1.gpkg.tar"), "a").unwrap();
    fs::create_dir_all(conf.join("pkgdir_generic")).unwrap();
    fs::create_dir_all(conf.join("notpkgdir")).unwrap();
    // A config whose binpkgs go elsewhere (`_pkgdir`) shows that dir too.
    let elsewhere = t.path().join("srv/binpkgs");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("Packages"), "elsewhere\n").unwrap();
    fs::write(
        configs.join("hello.toml"),
        format!("seed = \"s1\"\n_pkgdir = \"{}\"\n", elsewhere.display()),
    )
    .unwrap();
    let mp = t.path().join("mp");
    let d = Daemon::start(util::gentree(), &conf, &configs, &mp, t.path());
    let pk = mp.join("packages");
    let mut names: Vec<String> = fs::read_dir(&pk)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["binpkgs", "pkgdir", "pkgdir_generic"]);
    assert_eq!(
        fs::read_to_string(pk.join("pkgdir/Packages")).unwrap(),
        "PACKAGES: 1\n"
    );
    assert_eq!(
        fs::read_to_string(pk.join("pkgdir/app-misc/a-1.gpkg.tar")).unwrap(),
        "a"
    );
    assert_eq!(
        fs::read_to_string(pk.join("binpkgs/Packages")).unwrap(),
        "elsewhere\n"
    );
    // Read-only: no write, create, remove or rename gets through.
    let erofs = Some(libc::EROFS);
    assert_eq!(errno_of(fs::write(pk.join("pkgdir/Packages"), "x")), erofs);
    assert_eq!(errno_of(fs::write(pk.join("pkgdir/new"), "x")), erofs);
    assert_eq!(
        errno_of(fs::remove_file(pk.join("pkgdir/app-misc/a-1.gpkg.tar"))),
        erofs
    );
    assert_eq!(errno_of(fs::create_dir(pk.join("pkgdir/d"))), erofs);
    assert_eq!(errno_of(fs::create_dir(pk.join("new"))), erofs);
    assert_eq!(
        errno_of(fs::rename(pk.join("pkgdir/Packages"), pk.join("pkgdir/P"))),
        erofs
    );
    assert_eq!(
        fs::read_to_string(conf.join("pkgdir/Packages")).unwrap(),
        "PACKAGES: 1\n"
    );
    // Live: a package a build writes appears, and the index's new contents show.
    fs::create_dir_all(conf.join("pkgdir/dev-libs")).unwrap();
    fs::write(conf.join("pkgdir/dev-libs/b-2.gpkg.tar"), "bb").unwrap();
    fs::write(conf.join("pkgdir/Packages"), "PACKAGES: 2\n").unwrap();
    assert_eq!(
        fs::read_to_string(pk.join("pkgdir/dev-libs/b-2.gpkg.tar")).unwrap(),
        "bb"
    );
    let listed: Vec<_> = fs::read_dir(pk.join("pkgdir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n == "dev-libs"), "{listed:?}");
    wait_until("the new Packages", Duration::from_secs(3), || {
        fs::read_to_string(pk.join("pkgdir/Packages")).unwrap() == "PACKAGES: 2\n"
    });
    d.stop();
}

/// A reader still holding the image a config had before an edit cannot fill the page
/// cache with its old bytes: once the new image is served, its reads fail with ESTALE,
/// and readers of the new image get only new bytes.
#[test]
fn mount_old_image_readers_cannot_pollute_the_new_image() {
    if !root_and_fuse("mount_old_image_readers_cannot_pollute_the_new_image") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    let cfg = configs.join("x.toml");
    fs::write(&cfg, "seed = \"s1\"\n").unwrap();
    let mp = t.path().join("mp");
    // The served path (as root, images would be served by passthrough once written).
    let mut cmd = util::gentree();
    cmd.arg("--no-image-files");
    let d = Daemon::start(cmd, &conf, &configs, &mp, t.path());
    let tar = mp.join("builds/x.tar");
    let image = |name: &str, fill: u8| drop(fill_image(&conf, &tar, name, fill));
    image("a", b'A');
    // The first open builds the index (direct I/O); the next reads through the cache.
    fs::read(&tar).unwrap();
    let old = fs::File::open(&tar).unwrap();
    let mut head = [0u8; 4096];
    old.read_at(&mut head, 0).unwrap();

    // The config changes: another key, another image, which a reader builds.
    fs::write(&cfg, "seed = \"s1\"\npackages = [\"app-misc/b\"]\n").unwrap();
    image("b", b'B');
    let first = fs::read(&tar).unwrap();
    // The old reader's page-cache misses now fail instead of caching old bytes.
    let mut buf = vec![0u8; 64 << 10];
    let e = old.read_at(&mut buf, 6 << 20).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
    let new = fs::File::open(&tar).unwrap();
    let mut bytes = vec![0u8; first.len()];
    new.read_exact_at(&mut bytes, 0).unwrap();
    assert!(bytes == first, "the cached read differs from the first one");
    let a_block = [b'A'; 4096];
    assert!(
        !bytes.windows(4096).step_by(512).any(|w| w == a_block),
        "old bytes in the new image"
    );
    assert!(bytes.windows(4096).any(|w| w == [b'B'; 4096]));
    drop((old, new));
    d.stop();
    assert!(!conf.join("images").exists(), "--no-image-files kept files");
}

/// Bytes the process `pid` has read so far (`rchar` of /proc/PID/io).
fn rchar(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// The image files under `conf`, with their sizes.
fn image_files(conf: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(rd) = fs::read_dir(conf.join("images")) else {
        return Vec::new();
    };
    // Finished files only: one still being written (`.tmp<pid>`) is renamed away
    // under our feet.
    let mut v: Vec<_> = rd
        .filter_map(|e| {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().contains(".tmp") {
                return None;
            }
            Some((e.path(), e.metadata().ok()?.len()))
        })
        .collect();
    v.sort();
    v
}

/// As root, a finished image is kept as a file and served by FUSE passthrough: the
/// kernel reads the file, the daemon reads nothing. A reader of the previous image
/// keeps reading its bytes after a config edit, and the new image's readers get the
/// new bytes, on a new inode while the old one's backing file is in use.
#[test]
fn mount_serves_finished_images_by_passthrough() {
    if !root_and_fuse("mount_serves_finished_images_by_passthrough") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    let cfg = configs.join("x.toml");
    fs::write(&cfg, "seed = \"s1\"\n").unwrap();
    let mp = t.path().join("mp");
    let d = Daemon::start(util::gentree(), &conf, &configs, &mp, t.path());
    let pid = d.child.id();
    let tar = mp.join("builds/x.tar");
    let image = |name: &str, fill: u8| fill_image(&conf, &tar, name, fill);
    // Reads all of `f` from offset 0; the bytes and what the daemon read meanwhile.
    let read_all = |f: &fs::File| {
        let before = rchar(pid);
        let mut v = vec![0u8; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut v, 0).unwrap();
        (v, rchar(pid) - before)
    };
    let file_of = |key: &str, len: usize| {
        let files = image_files(&conf);
        let found = files.iter().find(|(p, n)| {
            *n == len as u64 && p.file_name().unwrap().to_str().unwrap().starts_with(key)
        });
        found.map(|(p, _)| p.clone())
    };

    let ka = image("a", b'A');
    // The first open builds the index and is served from the layout; the image file
    // is written after it.
    let first = fs::read(&tar).unwrap();
    assert!(first.windows(4096).any(|w| w == [b'A'; 4096]));
    wait_until("the image file", Duration::from_secs(20), || {
        file_of(&ka, first.len()).is_some()
    });
    let file_a = file_of(&ka, first.len()).unwrap();
    assert!(fs::read(&file_a).unwrap() == first, "image file differs");
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&file_a));
    assert!(listing.contains("data/big"), "{listing}");
    // Served by the kernel from the file (the layout path would read 8 MiB here).
    let old = fs::File::open(&tar).unwrap();
    let (bytes, daemon) = read_all(&old);
    assert!(bytes == first, "passthrough bytes differ");
    assert!(
        daemon < 1 << 20,
        "the daemon read {daemon} bytes: not passthrough"
    );

    // The config changes while `old` is open: a new image, built by the next reader.
    fs::write(&cfg, "seed = \"s1\"\npackages = [\"app-misc/b\"]\n").unwrap();
    let kb = image("b", b'B');
    assert_ne!(ka, kb);
    let second = fs::read(&tar).unwrap();
    assert!(second.windows(4096).any(|w| w == [b'B'; 4096]));
    assert!(!second.windows(4096).step_by(512).any(|w| w == [b'A'; 4096]));
    wait_until("the new image file", Duration::from_secs(20), || {
        file_of(&kb, second.len()).is_some()
    });
    // The old reader still reads its own image, all of it.
    let (bytes, _) = read_all(&old);
    assert!(bytes == first, "the old reader's bytes changed");
    // A new reader while `old` holds image a's file as the inode's backing file:
    // image b by passthrough too, on a new inode of builds/x.tar.
    let new = fs::File::open(&tar).unwrap();
    let (bytes, daemon) = read_all(&new);
    assert!(bytes == second, "the new reader got other bytes");
    assert!(
        daemon < 1 << 20,
        "the daemon read {daemon} bytes: not passthrough"
    );
    use std::os::unix::fs::MetadataExt;
    let (ino_old, ino_new) = (old.metadata().unwrap().ino(), new.metadata().unwrap().ino());
    assert_ne!(ino_old, ino_new, "image b on image a's inode");
    assert_eq!(fs::metadata(&tar).unwrap().ino(), ino_new);
    drop((old, new));
    // Once the old opens are released (RELEASE comes after close), b by passthrough.
    wait_until(
        "passthrough of the new image",
        Duration::from_secs(10),
        || {
            let f = fs::File::open(&tar).unwrap();
            let (bytes, daemon) = read_all(&f);
            assert!(bytes == second);
            daemon < 1 << 20
        },
    );
    // Image files are content-addressed: a's stays for an edit back, until
    // clean-builds. `rm` drops b's layer and its file (a rebuild may differ).
    assert!(file_of(&ka, first.len()).is_some());
    fs::remove_file(&tar).unwrap();
    assert!(
        file_of(&kb, second.len()).is_none(),
        "rm kept the image file"
    );
    assert!(file_of(&ka, first.len()).is_some());
    d.stop();
}
