//! The only place `unsafe` is allowed. Each block carries a `// SAFETY:` note.
//!
//! Most system calls go through `nix`'s safe wrappers; what lands here is what nix
//! does not wrap, kept small so it can be read in one sitting.
#![allow(unsafe_code)]

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
