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
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
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

/// `getxattrat(2)` (Linux 6.13+): the value of xattr `name` of the entry `path`
/// relative to the directory `dir`, without following a final symlink, and without
/// walking the directory's full path again. `Ok(None)` when the entry has no such
/// xattr (ENODATA); ENOSYS on older kernels, for the caller to fall back.
pub fn getxattr_at(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &std::ffi::OsStr,
    name: &str,
) -> io::Result<Option<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    /// The syscall number, the same on every architecture of the generic table.
    const SYS_GETXATTRAT: libc::c_long = 464;
    /// `struct xattr_args` (include/uapi/linux/xattr.h).
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }
    let path = std::ffi::CString::new(path.as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let name =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 256];
    loop {
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: `path` and `name` are NUL-terminated and outlive the call; `args`
        // points at `buf`, which is `args.size` bytes long and outlives the call; the
        // size passed is that of `XattrArgs`, the layout the kernel expects.
        let r = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dir.as_raw_fd(),
                path.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                name.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            // The value grew past the buffer: try again with room for the largest.
            Some(libc::ERANGE) if buf.len() < 65536 => buf.resize(65536, 0),
            _ => return Err(e),
        }
    }
}

/// `mount_setattr(2)` (Linux 5.12+) with `AT_RECURSIVE`: makes the mount at `path`
/// and every mount below it read-only. A remount (`MS_REMOUNT | MS_BIND |
/// MS_RDONLY`) changes only the top mount, which would leave a recursive bind's
/// submounts (`/sys/fs/cgroup`, ...) writable. ENOSYS on older kernels.
pub fn make_readonly_recursive(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    /// The syscall number, the same on every architecture of the generic table.
    const SYS_MOUNT_SETATTR: libc::c_long = 442;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    /// `struct mount_attr` (include/uapi/linux/mount.h).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is NUL-terminated and outlives the call; `attr` is a valid
    // `struct mount_attr` that outlives the call, and the size passed is its size.
    let r = unsafe {
        libc::syscall(
            SYS_MOUNT_SETATTR,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
