//! The daemon's life: answering while a config is slow, background start and
//! unmount by signal, an unmount racing the start-up.

use super::*;

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
