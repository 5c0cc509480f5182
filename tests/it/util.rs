//! Shared fixtures for the integration tests.
//!
//! Capability checks (`require_*`) return `false` with a loud message when this machine
//! cannot run a test, so a developer sees why it did nothing. Under CI (`CI` set) a
//! missing capability is a failure instead: CI runs as root with /dev/fuse, so every
//! test must really run there.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `gentree-fs` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gentree-fs"))
}

/// A `Command` for the binary under test, with a clean log level.
pub fn gentree() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("RUST_LOG");
    c
}

/// Runs a command and returns its output, panicking with both streams on spawn failure.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout as a string.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True in CI, where every capability must be present.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Reports a missing capability: a failure in CI, a loud skip elsewhere.
pub fn missing(test: &str, why: &str) -> bool {
    if in_ci() {
        panic!("{test}: required capability missing in CI: {why}");
    }
    eprintln!("\n!!!! SKIPPING {test}: {why} (runs in CI, which has it) !!!!\n");
    false
}

/// Whether we run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Requires root (for kernel overlayfs, chown, mknod).
pub fn require_root(test: &str) -> bool {
    is_root() || missing(test, "needs root")
}

/// Requires a usable /dev/fuse.
pub fn require_fuse(test: &str) -> bool {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_err()
    {
        return missing(test, "/dev/fuse cannot be opened");
    }
    true
}

/// Requires a program on PATH.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    found
        || missing(
            test,
            &format!("`{tool}` is not installed (scripts/install-deps.sh)"),
        )
}

/// The unprivileged test user created by scripts/ci-user.sh, if present.
pub fn test_user() -> Option<(String, u32, u32)> {
    let name = std::env::var("GENTREE_TEST_USER").unwrap_or_else(|_| "gentree-test".into());
    let u = nix::unistd::User::from_name(&name).ok()??;
    Some((name, u.uid.as_raw(), u.gid.as_raw()))
}

/// Requires root and the unprivileged test user (to run commands as that user).
pub fn require_test_user(test: &str) -> Option<(String, u32, u32)> {
    if !is_root() {
        missing(test, "needs root to switch to the unprivileged test user");
        return None;
    }
    match test_user() {
        Some(u) => Some(u),
        None => {
            missing(test, "no test user: run scripts/ci-user.sh");
            None
        }
    }
}

/// A temp dir that is world-traversable (so the test user can reach inside).
pub fn tempdir() -> tempfile::TempDir {
    let t = tempfile::Builder::new()
        .prefix("gentree-it-")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    set_mode(t.path(), 0o755);
    t
}

/// Polls `cond` every 50 ms; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// chmod, panicking on failure.
pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// The unprivileged test user without subordinate ids (scripts/ci-user.sh).
pub fn require_nosub_user(test: &str) -> Option<String> {
    if !is_root() {
        missing(test, "needs root to switch to the unprivileged test user");
        return None;
    }
    let name = std::env::var("GENTREE_TEST_NOSUB_USER").unwrap_or_else(|_| "gentree-nosub".into());
    if nix::unistd::User::from_name(&name).ok().flatten().is_none() {
        missing(test, &format!("no user {name}: run scripts/ci-user.sh"));
        return None;
    }
    Some(name)
}

/// True when `mp` is a mount point in this mount namespace.
pub fn mounted(mp: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mp.to_string_lossy().replace(' ', "\\040");
    mi.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Starts the foreground daemon `daemon()` and, from the moment it starts, stops it
/// (SIGSTOP, waited for), tries to unmount `mp` and lets it go on for a moment, over
/// and over: a daemon stopped between mount(2) and its first served request has
/// mounted but is not serving yet, so the unmount lands in that window, which a plain
/// unmount loop hit in none of 40 starts and this hits in one start of ten to a
/// hundred (one in 230 once, at load 14). Ten starts, and then more (up to 1000) until one
/// daemon said it was unmounted before it was ready; a test that never hit the window
/// would prove nothing, so that fails. Every run must end with exit 0 and nothing
/// mounted.
///
/// The stop-and-go phase of one start lasts at most [`STARTUP_CHASE`]: on a loaded
/// machine a daemon stopped that often can go seconds without running. After it the
/// daemon runs freely and is unmounted until it ends; one still running
/// [`STARTUP_EXIT`] later is hung, and the failure shows its threads' kernel stacks.
/// Returns how many daemons were unmounted before they were ready.
pub fn unmount_during_startup(
    mp: &Path,
    scratch: &Path,
    mut daemon: impl FnMut() -> Command,
) -> usize {
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut early = 0;
    let mut rounds = 0;
    for round in 0..1000 {
        if round >= 10 && early > 0 {
            break;
        }
        rounds += 1;
        let err = scratch.join(format!("startup-err{round}"));
        // Reaped by the waitpid below, which also sees it stop.
        let pid = daemon()
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn daemon")
            .id();
        let start = Instant::now();
        let pid = Pid::from_raw(pid as i32);
        let mut status = None;
        while status.is_none() && start.elapsed() < STARTUP_CHASE {
            let _ = kill(pid, Signal::SIGSTOP);
            match waitpid(pid, Some(WaitPidFlag::WUNTRACED)).expect("waitpid") {
                WaitStatus::Stopped(..) => {}
                WaitStatus::Exited(_, code) => status = Some(code),
                other => panic!("round {round}: daemon ended as {other:?}"),
            }
            let _ = nix::mount::umount(mp);
            let _ = kill(pid, Signal::SIGCONT);
            // Let it run a few microseconds (timer slack makes it ~60): without this a
            // loaded machine may not run it at all between a SIGCONT and the next stop.
            std::thread::sleep(Duration::from_micros(10));
        }
        let status = match status {
            Some(code) => code,
            None => unmount_until_exit(pid, mp, &err, round),
        };
        let log = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(status == 0, "round {round}: exit {status}\n{log}");
        assert!(!mounted(mp), "round {round}: mount left");
        early += usize::from(log.contains("was unmounted before the mount was ready"));
    }
    eprintln!("{early} of {rounds} unmounts landed before the mount was ready");
    assert!(
        early > 0,
        "none of {rounds} unmounts landed before the mount was ready: the window was never hit"
    );
    early
}

/// How long [`unmount_during_startup`] stops and continues one daemon.
const STARTUP_CHASE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a daemon unmounted while running freely may take to exit.
const STARTUP_EXIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Unmounts `mp` every 50 ms while daemon `pid` runs freely, until it exits (its exit
/// code), failing with its threads' states and kernel stacks if it is still running
/// after [`STARTUP_EXIT`].
fn unmount_until_exit(pid: nix::unistd::Pid, mp: &Path, err: &Path, round: usize) -> i32 {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let start = std::time::Instant::now();
    while start.elapsed() < STARTUP_EXIT {
        let _ = nix::mount::umount(mp);
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::Exited(_, code) => return code,
            WaitStatus::StillAlive | WaitStatus::Continued(_) => {}
            other => panic!("round {round}: daemon ended as {other:?}"),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let threads = thread_report(pid.as_raw());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(pid, None);
    let log = std::fs::read_to_string(err).unwrap_or_default();
    panic!(
        "round {round}: daemon {pid} still running {STARTUP_EXIT:?} after it was unmounted \
         (mounted now: {})\nthreads:\n{threads}\nits stderr:\n{log}",
        mounted(mp)
    );
}

/// Each thread of process `pid`: name, state, wait channel and kernel stack (the stack
/// needs root).
fn thread_report(pid: i32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(no /proc entry)".into();
    };
    for task in tasks.flatten() {
        let p = task.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or_default()
            .to_string();
        out += &format!(
            "{} {} {state} wchan={}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        );
    }
    out
}
