//! The only place `unsafe` is allowed. Each block carries a `// SAFETY:` note.
//!
//! Most system calls go through `nix`'s safe wrappers; what lands here is what nix
//! does not wrap, kept small so it can be read in one sitting.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Takes ownership of a file descriptor inherited across `exec` (its number passed in
/// the environment by the parent, e.g. the readiness pipe of `gentree-fs union`).
///
/// Fails with EBADF unless `fd` is open; descriptors 0–2 are refused (EINVAL) so the
/// standard streams are never adopted by mistake.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: F_GETFD only queries the descriptor table; an unused number yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above), was inherited for this purpose, and nothing
    // else in this process owns it: the environment variable naming it is read once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
