//! The build sandbox, probed from inside with real Portage: an ebuild
//! (`app-misc/gt-escape`) and `gentree-fs exec` try each way out that gentree-fs
//! closes (host root, host devices, block devices, the repositories, `/proc` and
//! `/sys` writes) as root, as a user with subordinate ids and as one without; and a
//! hostile seed archive imported as root leaves no device node or reachable setuid
//! file on the host.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::build::{Fixture, read_member, stderr, stdout};
use crate::util::{self, run, run_ok};

/// The probe script the ebuild runs, also fed to `exec` on standard input.
fn probes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/repo/gentree-test/app-misc/gt-escape/files/escape-probes.py")
}

/// How many attempts the probe script makes (one line each).
const ATTEMPTS: usize = 12;

/// Every attempt is recorded, and none escaped.
fn assert_all_blocked(results: &str, context: &str) {
    let lines: Vec<&str> = results.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        ATTEMPTS,
        "{context}: expected {ATTEMPTS} probe results:\n{results}"
    );
    let escaped: Vec<&&str> = lines.iter().filter(|l| !l.contains(" blocked: ")).collect();
    assert!(
        escaped.is_empty(),
        "{context}: the sandbox let these through:\n{}\nall results:\n{results}",
        escaped
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn build_probes(user: Option<&str>) {
    let f = Fixture::new(user);
    let cfg = f.write_cfg(
        "escape.toml",
        "seed = \"testseed\"\npackages = [\"app-misc/gt-escape\"]\n",
    );
    if let Some(u) = user {
        run_ok(Command::new("chown").args(["-R", u]).arg(f.cfg_dir()));
    }
    let out = f.build(user, &cfg, &[]);
    assert!(
        out.status.success(),
        "the probe build failed:\n{}",
        stderr(&out)
    );
    let image = PathBuf::from(stdout(&out).trim());
    let results = read_member(&image, "usr/share/gt-escape/results");
    assert_all_blocked(&results, &format!("build as {}", user.unwrap_or("root")));
    // The repositories are as they were: nothing planted.
    let planted = run_ok(
        Command::new("find")
            .arg(f.conf().join("repos"))
            .args(["-name", ".gentree-escape-probe"]),
    );
    assert!(planted.trim().is_empty(), "planted: {planted}");
    exec_probes(&f, user);
}

fn exec_probes(f: &Fixture, user: Option<&str>) {
    for persistent in [false, true] {
        let mut c = f.cmd(user);
        c.arg("exec").arg("--conf-root").arg(f.conf());
        if persistent {
            c.arg("--persistent");
        }
        c.args(["testseed", "--", "python3", "-", "/tmp"]);
        c.stdin(Stdio::from(fs::File::open(probes()).unwrap()));
        let out = run(&mut c);
        assert!(out.status.success(), "exec probes: {}", stderr(&out));
        assert_all_blocked(
            &stdout(&out),
            &format!(
                "exec{} as {}",
                if persistent { " --persistent" } else { "" },
                user.unwrap_or("root")
            ),
        );
    }
}

#[test]
fn build_and_exec_as_root_cannot_reach_the_host() {
    if !util::require_root("build_and_exec_as_root_cannot_reach_the_host") {
        return;
    }
    build_probes(None);
}

#[test]
fn build_and_exec_as_a_user_with_subids_cannot_reach_the_host() {
    let Some((user, _, _)) =
        util::require_test_user("build_and_exec_as_a_user_with_subids_cannot_reach_the_host")
    else {
        return;
    };
    build_probes(Some(&user));
}

#[test]
fn build_and_exec_as_a_user_without_subids_cannot_reach_the_host() {
    let Some(user) =
        util::require_nosub_user("build_and_exec_as_a_user_without_subids_cannot_reach_the_host")
    else {
        return;
    };
    build_probes(Some(&user));
}

/// A seed archive with a block device (mode 0666), a char device, a fifo and a
/// setuid+setgid world-writable root shell, written by Python's tarfile.
fn hostile_seed(dir: &Path) -> PathBuf {
    let tar = dir.join("hostile.tar");
    let script = format!(
        r#"
import io, tarfile
with tarfile.open({tar:?}, "w", format=tarfile.GNU_FORMAT) as t:
    def add(name, type, mode, data=b"", dev=(0, 0)):
        i = tarfile.TarInfo(name)
        i.type, i.mode, i.uid, i.gid = type, mode, 0, 0
        i.devmajor, i.devminor = dev
        i.size = len(data)
        t.addfile(i, io.BytesIO(data) if data else None)
    add("dev", tarfile.DIRTYPE, 0o755)
    add("dev/rootdisk", tarfile.BLKTYPE, 0o666, dev=(254, 0))
    add("dev/kmsg", tarfile.CHRTYPE, 0o666, dev=(1, 11))
    add("dev/initctl", tarfile.FIFOTYPE, 0o600)
    add("bin", tarfile.DIRTYPE, 0o755)
    add("bin/sh", tarfile.REGTYPE, 0o6777, data=open("/bin/sh", "rb").read())
"#,
        tar = tar.display().to_string()
    );
    run_ok(Command::new("python3").arg("-c").arg(script));
    tar
}

#[test]
fn root_import_of_a_hostile_seed_puts_no_device_or_setuid_file_in_reach() {
    let Some((user, _, _)) = util::require_test_user(
        "root_import_of_a_hostile_seed_puts_no_device_or_setuid_file_in_reach",
    ) else {
        return;
    };
    let dir = util::tempdir();
    let tar = hostile_seed(dir.path());
    let conf = dir.path().join("conf");
    // A permissive umask must not open the store up.
    let out = run(Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(util::bin())
        .arg("import-seed")
        .arg(&tar)
        .arg("hostile")
        .arg("--conf-root")
        .arg(&conf));
    assert!(out.status.success(), "import: {}", stderr(&out));
    let devices = run_ok(
        Command::new("find")
            .arg(dir.path())
            .args(["(", "-type", "b", "-o", "-type", "c", ")", "-print"]),
    );
    assert!(
        devices.trim().is_empty(),
        "device nodes on the host: {devices}"
    );
    let setid = run_ok(
        Command::new("find")
            .arg(&conf)
            .args(["-perm", "/6000", "-print"]),
    );
    assert!(
        setid.trim().is_empty(),
        "setuid/setgid files on the host: {setid}"
    );
    let root_meta = fs::metadata(&conf).unwrap();
    assert_eq!(
        root_meta.permissions().mode() & 0o777,
        0o700,
        "the conf root must be private"
    );
    assert_ne!(
        root_meta.uid(),
        0,
        "root's store belongs to its build id range"
    );
    // Another user reaches none of it.
    let sh = conf.join("seeds/hostile/bin/sh");
    let probe = run(Command::new("runuser")
        .args(["-u", &user, "--", "stat"])
        .arg(&sh));
    assert!(!probe.status.success(), "{user} reached {}", sh.display());
    assert!(
        stderr(&probe).contains("Permission denied"),
        "{}",
        stderr(&probe)
    );
    // The image still has the devices and the setuid shell, as the archive said.
    let image = dir.path().join("image.tar");
    let out = run(util::gentree()
        .arg("pack")
        .arg("--layer")
        .arg(conf.join("seeds/hostile"))
        .args(["--filter", "dev=false", "-o"])
        .arg(&image));
    assert!(out.status.success(), "pack: {}", stderr(&out));
    let l = run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&image),
    );
    let line = |name: &str| {
        l.lines()
            .find(|x| x.ends_with(name))
            .unwrap_or_else(|| panic!("{name} missing from the image:\n{l}"))
            .to_owned()
    };
    assert!(line("dev/rootdisk").starts_with("brw-rw-rw- 0/0"), "{l}");
    assert!(line("dev/kmsg").starts_with("crw-rw-rw- 0/0"), "{l}");
    assert!(line("bin/sh").starts_with("-rwsrwsrwx 0/0"), "{l}");
}

#[test]
fn exec_no_network_cannot_reach_a_host_socket() {
    if !util::require_root("exec_no_network_cannot_reach_a_host_socket") {
        return;
    }
    let f = Fixture::new(None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = format!(
        "import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')"
    );
    let exec = |extra: &[&str]| {
        run(f
            .cmd(None)
            .arg("exec")
            .arg("--conf-root")
            .arg(f.conf())
            .args(extra)
            .args(["testseed", "--", "python3", "-c", &connect]))
    };
    let with = exec(&[]);
    assert!(
        with.status.success() && stdout(&with).contains("connected"),
        "the host's network is the default: {}",
        stderr(&with)
    );
    let without = exec(&["--no-network"]);
    assert!(
        !without.status.success(),
        "--no-network reached the host: {}",
        stdout(&without)
    );
    drop(listener);
}

#[test]
fn helper_processes_are_named_gentree_fs_by_role() {
    if !util::require_root("helper_processes_are_named_gentree_fs_by_role") {
        return;
    }
    let f = Fixture::new(None);
    let marker = format!("gentree-name-probe-{}", std::process::id());
    let mut child = f
        .cmd(None)
        .arg("exec")
        .arg("--conf-root")
        .arg(f.conf())
        .args([
            "testseed",
            "--",
            "sh",
            "-c",
            &format!("sleep 60; : {marker}"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let titles = loop {
        let ps = run_ok(Command::new("ps").args(["-eo", "comm=,args="]));
        let ours: Vec<String> = ps
            .lines()
            .filter(|l| l.contains("gentree-fs: helper in") || l.contains(&marker))
            .map(str::to_owned)
            .collect();
        // The command itself runs (its comm is sh), not only the caller naming it.
        let started = ours
            .iter()
            .any(|l| l.trim_start().starts_with("sh ") && l.contains(&marker));
        if started && ours.iter().any(|l| l.contains("helper in")) {
            break ps;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no named helper appeared:\n{ps}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let helper = titles
        .lines()
        .find(|l| l.contains("gentree-fs: helper in"))
        .unwrap();
    assert!(
        helper.trim_start().starts_with("gentree-fs "),
        "the helper's process name (comm) must be gentree-fs: {helper}"
    );
    let pgrep = run(Command::new("pgrep").args(["-x", "gentree-fs"]));
    assert!(
        stdout(&pgrep).lines().count() >= 2,
        "pgrep -x gentree-fs finds the caller and its helper: {}",
        stdout(&pgrep)
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
