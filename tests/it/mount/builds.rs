//! Images built on read with real Portage: sharing, interruption, failures,
//! rootless mounts and builds queued behind the seed's lock.

use super::*;

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
    // Generous: on a loaded 2-core machine the daemon's exit after the unmount has taken
    // over 10 s; a daemon that never exits still fails here.
    wait_until("the daemon to exit", Duration::from_secs(60), || {
        processes_mentioning(&mp_str).is_empty()
    });
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
