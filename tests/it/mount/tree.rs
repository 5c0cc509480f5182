//! The tree without Portage: its files and directories, run-dir cleanup at start,
//! mount options and the package dirs.

use super::*;

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
