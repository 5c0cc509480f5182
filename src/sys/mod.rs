//! The only place `unsafe` is allowed. Each block carries a `// SAFETY:` note.
//!
//! Most system calls go through `nix`'s safe wrappers; what lands here is what nix
//! does not wrap, kept small so it can be read in one sitting.
#![allow(unsafe_code)]

use nix::unistd::ForkResult;

/// `fork(2)`, refused unless this process has exactly one thread.
///
/// Forking a multithreaded process leaves the child with locks (the allocator's,
/// stdio's) held by threads that no longer exist; the namespace helper forks only
/// before it starts any thread, and this checks that instead of trusting it.
pub fn fork_single_threaded() -> std::io::Result<ForkResult> {
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
