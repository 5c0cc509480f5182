//! Running a FUSE mount as a daemon, shared by `gentree-fs union` and the main mount.
//!
//! In the foreground (`-f`) a command serves until its mount is unmounted
//! (`fusermount3 -u`, `umount`) or it gets SIGINT/SIGTERM/SIGHUP, which unmount cleanly.
//! Without `-f` the daemon must not fork once threads exist, so the command re-execs
//! itself with `-f` ([`spawn_daemon`]) and returns as soon as the child reports the mount
//! ready over a pipe (or fails with the child's exit status, its errors printed on the
//! way).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{SigSet, Signal};

use super::CmdResult;

/// Environment variable naming the readiness pipe's write end in the re-exec'd child.
const READY_FD_ENV: &str = "GENTREE_UNION_READY_FD";

/// The foreground side of a daemon: the readiness pipe (when started by
/// [`spawn_daemon`]) and the termination signals, blocked in every thread.
#[derive(Debug)]
pub struct Foreground {
    ready: Option<OwnedFd>,
    signals: SigSet,
}

impl Foreground {
    /// Call first, before any thread exists: adopts the readiness pipe, leaves the
    /// parent's session and blocks SIGINT/SIGTERM/SIGHUP (threads inherit the mask; the
    /// thread of [`Foreground::unmount_on_signal`] waits for them).
    pub fn start() -> Result<Foreground, Box<dyn std::error::Error + Send + Sync>> {
        let ready = match std::env::var(READY_FD_ENV) {
            Ok(v) => {
                let fd: i32 = v.parse().map_err(|_| format!("bad {READY_FD_ENV}={v:?}"))?;
                let fd = crate::sys::adopt_fd(fd)?;
                // Helpers we start (fusermount3) must not hold the parent's pipe open.
                nix::fcntl::fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
                // Leave the parent's session so its terminal's signals do not reach us.
                let _ = nix::unistd::setsid();
                Some(fd)
            }
            Err(_) => None,
        };
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGINT);
        signals.add(Signal::SIGTERM);
        signals.add(Signal::SIGHUP);
        signals.thread_block()?;
        Ok(Foreground { ready, signals })
    }

    /// Starts the thread that unmounts `mountpoint` on the first termination signal
    /// (lazily through fusermount3 when busy), which ends the session loop; then tells
    /// the waiting parent, if any, that the mount is ready.
    pub fn unmount_on_signal(
        self,
        mountpoint: PathBuf,
        mut unmounter: crate::fs::Unmounter,
    ) -> std::io::Result<()> {
        let signals = self.signals;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(sig) = signals.wait() {
                    tracing::info!("{sig}: unmounting {}", mountpoint.display());
                    if let Err(e) = unmounter.unmount() {
                        // Busy (as root fuser does not detach): detach lazily instead, so
                        // the daemon still ends once the last user of the mount lets go.
                        tracing::warn!("unmounting {}: {e}; detaching", mountpoint.display());
                        let lazy = Command::new("fusermount3")
                            .args(["-u", "-z", "--"])
                            .arg(&mountpoint)
                            .status();
                        if !lazy.is_ok_and(|s| s.success()) {
                            tracing::error!("cannot unmount {}", mountpoint.display());
                        }
                    }
                }
            })?;
        if let Some(fd) = self.ready {
            signal_ready(fd)?;
        }
        Ok(())
    }
}

/// Tells the waiting parent that the mount is up, then lets go of its stdio so that a
/// caller reading our output to EOF is not held up by the daemon.
fn signal_ready(fd: OwnedFd) -> std::io::Result<()> {
    let mut pipe = std::fs::File::from(fd);
    pipe.write_all(b"R")?;
    drop(pipe);
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// True when `e` says the FUSE connection went away: the mount was unmounted
/// (`fusermount3 -u`, `umount`) before or during the INIT handshake, or before the
/// worker threads started. fuser reports that as NotConnected ("FUSE device
/// disconnected during handshake") or passes on the device's ENODEV, or
/// ECONNABORTED when the unmount aborted the connection before INIT completed.
pub fn unmounted_early(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotConnected
        || matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ECONNABORTED))
}

/// The clean end of a daemon whose mount was unmounted before it served: nothing is
/// left to clean up, so this is not a failure.
pub fn gone_before_ready(mountpoint: &std::path::Path) -> CmdResult {
    eprintln!(
        "gentree-fs: {} was unmounted before the mount was ready; exiting",
        mountpoint.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Re-execs this program with `-f` inserted after `subcommand` (or first, for the
/// top-level mount) and waits until it is serving. `what` names the daemon in errors.
pub fn spawn_daemon(subcommand: Option<&str>, what: &str) -> CmdResult {
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let at = match subcommand {
        Some(sub) => {
            argv.iter()
                .position(|a| a == sub)
                .ok_or_else(|| format!("cannot find the `{sub}` subcommand in the command line"))?
                + 1
        }
        None => 0,
    };
    argv.insert(at, "-f".into());
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // The write end must survive exec in the child.
    nix::fcntl::fcntl(&write_end, FcntlArg::F_SETFD(FdFlag::empty()))?;
    let mut child = Command::new("/proc/self/exe")
        .arg0("gentree-fs")
        .args(&argv)
        .env(READY_FD_ENV, write_end.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .spawn()?;
    drop(write_end);
    let mut byte = [0u8; 1];
    let mut pipe = std::fs::File::from(read_end);
    let n = loop {
        match pipe.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => break other?,
        }
    };
    if n == 1 {
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait()?;
    if status.success() {
        return Err(format!(
            "the {what} daemon ended before the mount was ready (it was unmounted meanwhile)"
        )
        .into());
    }
    Err(format!("the {what} daemon failed before mounting ({status})").into())
}
