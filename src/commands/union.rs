//! `gentree-fs union`: mount a userspace union and serve it.
//!
//! In the foreground (`-f`) the process serves until the union is unmounted
//! (`fusermount3 -u`, `umount`) or it gets SIGINT/SIGTERM, which unmount cleanly.
//! Without `-f` the daemon must not fork once threads exist, so the command re-execs
//! itself with `-f` and returns as soon as the child reports the mount ready over a
//! pipe (or fails with the child's exit status, its errors printed on the way).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, ExitCode, Stdio};

use nix::fcntl::{FcntlArg, FdFlag, OFlag};
use nix::sys::signal::{SigSet, Signal};

use super::CmdResult;
use crate::cli::UnionArgs;
use crate::fs::union::{MountSpec, Mounted, session};
use crate::layers::union::UnionOptions;

/// Environment variable naming the readiness pipe's write end in the re-exec'd child.
const READY_FD_ENV: &str = "GENTREE_UNION_READY_FD";

pub fn run(args: &UnionArgs) -> CmdResult {
    let spec = MountSpec {
        options: UnionOptions::parse(&args.options)?,
        mountpoint: args.mountpoint.clone(),
        threads: args.threads,
    };
    if args.foreground {
        serve(&spec)
    } else {
        // Report option and layout errors here, before starting a daemon.
        spec.options.validate(&spec.mountpoint)?;
        spawn_daemon()
    }
}

/// Mounts and serves until unmounted.
fn serve(spec: &MountSpec) -> CmdResult {
    let ready = match std::env::var(READY_FD_ENV) {
        Ok(v) => {
            // The variable names a pipe our parent left open for us.
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
    // Block the termination signals in every thread (threads inherit the mask); one
    // thread waits for them and unmounts, which ends the session loop below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGHUP);
    signals.thread_block()?;
    let Mounted {
        session,
        mut unmounter,
    } = session(spec)?;
    let mountpoint = spec.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!("{sig}: unmounting {}", mountpoint.display());
                if let Err(e) = unmounter.unmount() {
                    // Busy (as root fuser does not detach): detach lazily instead, so the
                    // daemon still ends once the last user of the mount lets go.
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
    if let Some(fd) = ready {
        signal_ready(fd)?;
    }
    tracing::info!("union mounted on {}", spec.mountpoint.display());
    session.run()?;
    Ok(ExitCode::SUCCESS)
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

/// Re-execs this program with `-f` after `union` and waits until it is serving.
fn spawn_daemon() -> CmdResult {
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let at = argv
        .iter()
        .position(|a| a == "union")
        .ok_or("cannot find the `union` subcommand in the command line")?;
    argv.insert(at + 1, "-f".into());
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // The write end must survive exec in the child.
    nix::fcntl::fcntl(&write_end, FcntlArg::F_SETFD(FdFlag::empty()))?;
    let mut child = Command::new("/proc/self/exe")
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
    Err(format!("the union daemon failed before mounting ({status})").into())
}
