//! Builds with real Portage: the test seed (Debian minbase + the PyPI portage wheel,
//! made by scripts/make-test-seed.sh and cached) and the project's ebuild repository
//! (tests/repo/gentree-test), through `gentree-fs build` and `gentree-fs exec`. The
//! [`Fixture`] is shared with the other real-Portage tests (`commands`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::util::{self, gentree, run, run_ok};

/// Where the test seed and its download cache live between test runs.
fn cache_dir() -> PathBuf {
    std::env::var_os("GENTREE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/gentree-test-cache"))
}

fn repo_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/repo/gentree-test")
}

/// The test seed, built once (debootstrap needs root) and reused.
fn test_seed() -> &'static Path {
    static SEED: OnceLock<PathBuf> = OnceLock::new();
    SEED.get_or_init(|| {
        let cache = cache_dir();
        let seed = cache.join("seed");
        fs::create_dir_all(&cache).unwrap();
        let lock = fs::File::create(cache.join(".lock")).unwrap();
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        if !seed.join("usr/bin/emerge").exists() {
            let _ = fs::remove_dir_all(&seed);
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-test-seed.sh");
            run_ok(
                Command::new(script)
                    .arg(&seed)
                    .arg("--cache")
                    .arg(cache.join("downloads")),
            );
        }
        util::set_mode(&cache, 0o755);
        seed
    })
}

/// The test seed as a tarball anyone can read, for imports by the unprivileged user
/// (the seed dir has root-only files, as a stage3 does).
fn test_seed_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let seed = test_seed();
        let tar = cache_dir().join("seed.tar");
        if !tar.exists() {
            let tmp = cache_dir().join(format!("seed.tar.tmp{}", std::process::id()));
            run_ok(
                Command::new("tar")
                    .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf"])
                    .arg(&tmp)
                    .arg("-C")
                    .arg(seed)
                    .arg("."),
            );
            fs::rename(&tmp, &tar).unwrap();
        }
        util::set_mode(&tar, 0o644);
        tar
    })
}

/// A conf root with the test seed imported as `testseed` and the test repository
/// in place, plus a directory for configs.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(user: Option<&str>) -> Fixture {
        let dir = util::tempdir();
        let f = Fixture { dir };
        fs::create_dir_all(f.cfg_dir()).unwrap();
        let repos = f.conf().join("repos");
        fs::create_dir_all(&repos).unwrap();
        run_ok(Command::new("cp").arg("-a").arg(repo_src()).arg(&repos));
        if let Some(u) = user {
            run_ok(Command::new("chown").args(["-R", u]).arg(f.dir.path()));
        }
        let mut import = f.cmd(user);
        let source = match user {
            Some(_) => test_seed_tar(),
            None => test_seed(),
        };
        import
            .arg("import-seed")
            .arg(source)
            .arg("testseed")
            .arg("--conf-root")
            .arg(f.conf());
        run_ok(&mut import);
        f
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    pub fn cfg_dir(&self) -> PathBuf {
        self.dir.path().join("cfg")
    }

    pub fn write_cfg(&self, name: &str, text: &str) -> PathBuf {
        let p = self.cfg_dir().join(name);
        fs::write(&p, text).unwrap();
        util::set_mode(&p, 0o644);
        p
    }

    /// The binary, as root or as `user`, never reading the real default configs.
    pub fn cmd(&self, user: Option<&str>) -> Command {
        let mut c = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(util::bin());
                c
            }
            None => gentree(),
        };
        c.env("HOME", self.dir.path()).env_remove("XDG_CONFIG_HOME");
        c
    }

    pub fn build(&self, user: Option<&str>, cfg: &Path, extra: &[&str]) -> Output {
        let out = run(self
            .cmd(user)
            .arg("build")
            .arg("--no-config")
            .arg("--conf-root")
            .arg(self.conf())
            .args(extra)
            .arg(cfg));
        eprintln!(
            "--- build {} stderr:\n{}",
            cfg.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn layers(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.conf().join("layers"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.join("meta.json").exists());
        v.sort();
        v
    }
}

/// `tar -tv`-style facts of one member: (type+mode string, owner, link target).
pub fn tar_listing(tar: &Path) -> String {
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(tar),
    )
}

/// One member of an image, extracted by GNU tar.
pub fn read_member(tar: &Path, name: &str) -> String {
    let x = util::tempdir();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(x.path())
            .arg(name),
    );
    fs::read_to_string(x.path().join(name)).unwrap()
}

pub fn member<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing
        .lines()
        .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
}

/// Asserts that no entry of a `tar -tv --numeric-owner` listing has the host ids of
/// the user who built it (ownership the union could not record, such as a symlink's,
/// must read as the namespace root's).
pub fn assert_no_host_ids(listing: &str, uid: u32, gid: u32) {
    for line in listing.lines() {
        let owner = line.split_whitespace().nth(1).unwrap_or_default();
        let (u, g) = owner.split_once('/').unwrap_or_default();
        assert!(
            u != uid.to_string() && g != gid.to_string(),
            "host id {uid}/{gid} in the image: {line}"
        );
    }
    let bin = member(listing, "bin").expect("bin -> usr/bin");
    assert!(bin.starts_with('l') && bin.contains(" 0/0 "), "{bin}");
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub const BASE: &str = "packages = [\"sys-apps/gt-baselayout\"]\n[emerge_bools]\noneshot = true\n";
const MID: &str =
    "bases = [\"base.toml\"]\npackages = [\"app-misc/gt-lib\", \"app-misc/gt-removable\"]\n";

fn app(use_flags: &str, unmerge: bool) -> String {
    let unmerge = if unmerge {
        "unmerge = [\"app-misc/gt-removable\"]\n"
    } else {
        ""
    };
    format!(
        "seed = \"testseed\"\nbases = [\"mid.toml\"]\n\
         packages = [\"app-misc/gt-app\", \"app-misc/gt-special\", \"app-misc/gt-probe\"]\n\
         {unmerge}[env]\nuse = \"{use_flags}\"\n"
    )
}

#[test]
fn build_two_levels_of_bases_and_reuse_layers() {
    if !util::require_root("build_two_levels_of_bases_and_reuse_layers") {
        return;
    }
    let f = Fixture::new(None);
    f.write_cfg("base.toml", BASE);
    f.write_cfg("mid.toml", MID);
    let cfg = f.write_cfg("app.toml", &app("extras", true));

    let out = f.build(None, &cfg, &[]);
    assert!(out.status.success(), "first build failed");
    let image = PathBuf::from(stdout(&out).trim());
    assert!(image.is_file(), "no image at {}", image.display());
    assert_eq!(f.layers().len(), 3, "three layers published");

    let l = tar_listing(&image);
    // Files of every layer, with modes and in-image owners.
    assert!(member(&l, "usr/bin/gt-app").is_some(), "{l}");
    assert!(member(&l, "etc/os-release").is_some(), "{l}");
    let suid = member(&l, "usr/bin/gt-suid").expect("setuid file");
    assert!(suid.starts_with("-rwsr-xr-x"), "{suid}");
    let owned = member(&l, "var/lib/gt-special/owned-file").expect("fowners file");
    assert!(
        owned.contains(" 1234/1234 ") || owned.contains(" 1234/2345 "),
        "{owned}"
    );
    // Absolute symlinks are always rewritten relative.
    let abs = member(&l, "usr/share/gt-special/abs-link").expect("absolute link");
    assert!(!abs.contains("-> /"), "absolute target kept: {abs}");
    // Filtered paths are gone (man, docs, include are on by default).
    for gone in ["usr/share/man/", "usr/share/doc/", "usr/include/"] {
        assert!(
            !l.lines().any(|x| x.contains(&format!(" {gone}"))),
            "{gone} in the image"
        );
    }
    // The unmerge in the top layer removed the base's package from the image.
    assert!(
        !l.contains("usr/share/gt-removable"),
        "unmerged files present:\n{l}"
    );
    // The build root was gentree-fs's FUSE union, never kernel overlayfs.
    let mounts = read_member(&image, "usr/share/gt-probe/mounts");
    // "<mount point> <fs type> <source>" of the chroot root and of the layer root.
    assert!(
        mounts.contains("/ fuse.gentree-fs gentree-union\n"),
        "{mounts}"
    );
    assert!(
        mounts.contains("/builds/testseed-app fuse.gentree-fs gentree-union\n"),
        "{mounts}"
    );
    assert!(!mounts.contains("overlay"), "{mounts}");

    // Same inputs: every layer reused, no emerge at all.
    let again = f.build(None, &cfg, &[]);
    assert!(again.status.success());
    assert_eq!(stderr(&again).matches("reusing layer").count(), 3);
    assert!(!stderr(&again).contains(">>> Emerging"), "emerge ran again");
    assert_eq!(fs::read(&image).unwrap(), {
        let again_image = PathBuf::from(stdout(&again).trim());
        fs::read(again_image).unwrap()
    });
    // `-o -`: the same image on standard output, no file named `-`.
    let cwd = f.conf().join("cwd");
    fs::create_dir_all(&cwd).unwrap();
    let piped = run(f
        .cmd(None)
        .current_dir(&cwd)
        .args(["build", "--no-config", "-o", "-", "--conf-root"])
        .arg(f.conf())
        .arg(&cfg));
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert!(
        piped.stdout == fs::read(&image).unwrap(),
        "stdout is not the image"
    );
    assert!(!cwd.join("-").exists(), "a file named `-`");

    // A USE change in the top config rebuilds only the top layer.
    let cfg2 = f.write_cfg("app.toml", &app("-extras", true));
    let third = f.build(None, &cfg2, &[]);
    assert!(third.status.success());
    assert_eq!(stderr(&third).matches("reusing layer").count(), 2);
    assert_eq!(stderr(&third).matches("building layer").count(), 1);
    assert_eq!(f.layers().len(), 4);
}

#[test]
fn failing_emerge_publishes_nothing_and_logs_the_cause() {
    if !util::require_root("failing_emerge_publishes_nothing_and_logs_the_cause") {
        return;
    }
    let f = Fixture::new(None);
    f.write_cfg("base.toml", BASE);
    let cfg = f.write_cfg(
        "bad.toml",
        "seed = \"testseed\"\nbases = [\"base.toml\"]\npackages = [\"app-misc/gt-fail\"]\n",
    );
    let out = f.build(None, &cfg, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("layer testseed-bad failed"), "{err}");
    // Only the base was published; no temp dir is left that could pass for a layer.
    assert_eq!(f.layers().len(), 1);
    let log = fs::read_to_string(f.conf().join("builds/testseed-bad.log")).unwrap();
    assert!(log.contains("gt-fail"), "log lacks the package");
    assert!(
        log.contains("emerge --info") || log.contains("Portage 3"),
        "no diagnostics"
    );
    assert!(!f.conf().join("builds/testseed-bad-full.tar").exists());
    // The cause ends the log; Portage's work dir of the failed package is gone from
    // the seed's upper (it can be hundreds of MB: a full disk after one failure).
    assert!(
        log.contains("gentree-fs: error: layer testseed-bad failed (exit status 1)"),
        "{log}"
    );
    let portage_tmp = f.conf().join("seeds/testseed.upper/var/tmp/portage");
    let left: Vec<_> = fs::read_dir(&portage_tmp)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| n.as_encoded_bytes().starts_with(b".wh.")),
        "Portage work files left in {}: {left:?}",
        portage_tmp.display()
    );
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(f.conf().to_str().unwrap()),
        "mounts left behind"
    );
}

#[test]
fn exec_runs_in_the_seed_and_passes_the_status_through() {
    if !util::require_root("exec_runs_in_the_seed_and_passes_the_status_through") {
        return;
    }
    let f = Fixture::new(None);
    let exec = |extra: &[&str], script: &str| {
        run(f
            .cmd(None)
            .arg("exec")
            .args(extra)
            .arg("--conf-root")
            .arg(f.conf())
            .args(["testseed", "--", "sh", "-c", script]))
    };
    let o = exec(
        &[],
        "test -x /usr/bin/emerge && touch /etc/throwaway; exit 5",
    );
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let o = exec(&[], "test -e /etc/throwaway");
    assert_eq!(o.status.code(), Some(1), "a throwaway change persisted");
    let id_before = fs::read_to_string(f.conf().join("state/seed-ids/testseed")).ok();
    let o = exec(&["--persistent"], "touch /etc/kept");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(f.conf().join("seeds/testseed/etc/kept").exists());
    let id_after = fs::read_to_string(f.conf().join("state/seed-ids/testseed")).ok();
    assert_ne!(
        id_before, id_after,
        "a persistent exec must change the seed identity"
    );
}

/// A conf root of `user` with a two-layer config (`gt-special` over the base).
fn small_fixture(user: &str) -> (Fixture, PathBuf) {
    let f = Fixture::new(Some(user));
    f.write_cfg("base.toml", BASE);
    let cfg = f.write_cfg(
        "small.toml",
        "seed = \"testseed\"\nbases = [\"base.toml\"]\npackages = [\"app-misc/gt-special\"]\n",
    );
    run_ok(Command::new("chown").args(["-R", user]).arg(f.cfg_dir()));
    (f, cfg)
}

#[test]
fn unprivileged_build_with_subids_keeps_the_store_removable() {
    let Some((user, uid, gid)) =
        util::require_test_user("unprivileged_build_with_subids_keeps_the_store_removable")
    else {
        return;
    };
    let (f, cfg) = small_fixture(&user);
    let out = f.build(Some(&user), &cfg, &[]);
    assert!(out.status.success(), "unprivileged build failed");
    let image = PathBuf::from(stdout(&out).trim());
    let l = tar_listing(&image);
    let owned = member(&l, "var/lib/gt-special/owned-file").expect("fowners file");
    assert!(owned.contains(" 1234/"), "subuid ownership lost: {owned}");
    assert_no_host_ids(&l, uid, gid);
    // The same user on a second conf root, later: the same image, byte for byte.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (f2, cfg2) = small_fixture(&user);
    let out2 = f2.build(Some(&user), &cfg2, &[]);
    assert!(out2.status.success(), "second unprivileged build failed");
    assert_eq!(
        fs::read(&image).unwrap(),
        fs::read(stdout(&out2).trim()).unwrap(),
        "two unprivileged builds differ"
    );
    // Everything on the host belongs to the user, who can delete the whole store.
    let foreign = run_ok(Command::new("find").arg(f.conf()).args([
        "-not",
        "-uid",
        &uid.to_string(),
        "-print",
        "-quit",
    ]));
    assert!(
        foreign.trim().is_empty(),
        "not owned by the user: {foreign}"
    );
    let rm = run(Command::new("runuser")
        .args(["-u", &user, "--", "rm", "-rf"])
        .arg(f.conf()));
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(!f.conf().exists());
    let _ = fs::metadata(f.dir.path()).map(|m| m.uid());
}

#[test]
fn build_without_subids_falls_back_to_a_single_mapping() {
    let Some(user) =
        util::require_nosub_user("build_without_subids_falls_back_to_a_single_mapping")
    else {
        return;
    };
    let (f, cfg) = small_fixture(&user);
    let out = f.build(Some(&user), &cfg, &[]);
    assert!(out.status.success(), "single-mapping build failed");
    let err = stderr(&out);
    assert_eq!(
        err.matches("no subordinate id range for user").count(),
        1,
        "the fallback must be explained once: {err}"
    );
    assert!(err.contains("usermod --add-subuids"), "{err}");
    // Only root exists in the namespace: fowners could not give the file away.
    let l = tar_listing(&PathBuf::from(stdout(&out).trim()));
    let u = nix::unistd::User::from_name(&user).unwrap().unwrap();
    assert_no_host_ids(&l, u.uid.as_raw(), u.gid.as_raw());
    let owned = member(&l, "var/lib/gt-special/owned-file").expect("fowners file");
    assert!(owned.contains(" 0/0 "), "{owned}");
    let suid = member(&l, "usr/bin/gt-suid").expect("setuid file");
    assert!(suid.starts_with("-rwsr-xr-x"), "{suid}");
}

/// A build failing before emerge starts (its seed is not imported) still leaves its
/// cause in its log.
#[test]
fn a_build_failing_before_emerge_logs_the_cause() {
    let t = util::tempdir();
    let conf = t.path().join("conf");
    let cfg = t.path().join("x.toml");
    fs::write(&cfg, "seed = \"missing\"\n").unwrap();
    let out = run(util::gentree()
        .args(["build", "--no-config", "--conf-root"])
        .arg(&conf)
        .arg(&cfg));
    assert!(!out.status.success());
    let log = fs::read_to_string(conf.join("builds/missing-x.log")).unwrap();
    assert!(
        log.starts_with("gentree-fs: error: seed \"missing\" is not imported"),
        "{log}"
    );
}

/// On a full disk, the cause of a failure still reaches the log: the space for it
/// was set aside when the log was started.
#[test]
fn a_full_disk_still_takes_the_cause_of_a_failure() {
    if !util::require_root("a_full_disk_still_takes_the_cause_of_a_failure") {
        return;
    }
    let t = util::tempdir();
    let small = t.path().join("small");
    fs::create_dir(&small).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=512k"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _mounted = Unmount(small.clone());
    let log = small.join("x.log");
    // A header filling its first page exactly: the cause needs a page of its own.
    let header = format!("gentree-fs: image x{}\n", "-".repeat(4096 - 20));
    assert_eq!(header.len(), 4096);
    gentree_fs::builder::crash::start_log(&log, &header).unwrap();
    // Fill the filesystem.
    let mut filler = fs::File::create(small.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    let full = loop {
        if let Err(e) = std::io::Write::write_all(&mut filler, &chunk) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
    gentree_fs::builder::crash::log_failure(&log, &e);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.strip_prefix(header.as_str())
            .is_some_and(|t| t.starts_with("gentree-fs: error: No space left on device")),
        "after the header: {:?}",
        text.get(header.len()..)
    );
}

/// A build helper killed by a signal: the build fails saying which signal, in its
/// error and at the end of its log (not `exit status -1`).
#[test]
fn a_killed_helper_is_reported_by_its_signal() {
    if !util::require_root("a_killed_helper_is_reported_by_its_signal") {
        return;
    }
    let f = Fixture::new(None);
    let cfg = f.write_cfg(
        "killed.toml",
        "seed = \"testseed\"\npackages = [\"sys-apps/gt-baselayout\"]\n",
    );
    let mut build = f
        .cmd(None)
        .args(["build", "--no-config", "--conf-root"])
        .arg(f.conf())
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The helper is the build's child; kill it as soon as it exists.
    let children = |pid: u32| -> Vec<u32> {
        fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|l| {
                l.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    };
    let start = std::time::Instant::now();
    let helper = loop {
        if let Some(&h) = children(build.id()).first() {
            break h;
        }
        assert!(
            build.try_wait().unwrap().is_none(),
            "build ended before its helper ran"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no helper"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = build.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed (killed by signal 9, SIGKILL)"),
        "{err}"
    );
    let log = fs::read_to_string(f.conf().join("builds/testseed-killed.log")).unwrap();
    assert!(
        log.contains(
            "gentree-fs: error: layer testseed-killed failed (killed by signal 9, SIGKILL)"
        ),
        "{log}"
    );
}
