//! The only place `unsafe` is allowed. Each block carries a `// SAFETY:` note.
//!
//! Most system calls go through `nix`'s safe wrappers; what lands here is what nix
//! does not wrap, kept small so it can be read in one sitting.
#![allow(unsafe_code)]

/// `fork(2)`, refused unless this process has exactly one thread.
///
/// Forking a multithreaded process leaves the child with locks (the allocator's,
/// stdio's) held by threads that no longer exist; the namespace helper forks only
/// before it starts any thread, and this checks that instead of trusting it.
pub fn fork_single_threaded() -> std::io::Result<nix::unistd::ForkResult> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if threads != Some(1) {
        return Err(std::io::Error::other(format!(
            "refusing to fork a process with {threads:?} threads"
        )));
    }
    // SAFETY: the process has a single thread (checked above), so the child cannot
    // inherit a lock held by another thread; fork itself has no memory preconditions.
    unsafe { nix::unistd::fork() }.map_err(|e| std::io::Error::from_raw_os_error(e as i32))
}

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of a file descriptor this process was handed by number, e.g.
/// inherited across `exec` (the readiness pipe of `gentree-fs union`).
///
/// Fails with EBADF unless `fd` is open; descriptors 0–2 are refused (EINVAL) so the
/// standard streams are never adopted by mistake.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: F_GETFD only queries the descriptor table; an unused number yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and was handed to this process for this
    // purpose; callers adopt each number once (an environment variable read once), so
    // nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
