//! Ctrl-C and SIGTERM during an import: noticed between entries (and between data
//! chunks) so the temporary directory can be removed before exiting.
//!
//! SIGINT and SIGTERM are blocked in this thread and read from a non-blocking
//! `signalfd`, which needs no `unsafe` handler. The old mask is restored on drop; a
//! signal still pending then is delivered as usual. The import is single-threaded,
//! so no other thread can take the signal instead.

use std::cell::Cell;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Watches for SIGINT/SIGTERM while alive.
#[derive(Debug)]
pub struct Interrupt {
    fd: Option<SignalFd>,
    old: Option<SigSet>,
    seen: Cell<bool>,
}

impl Interrupt {
    /// Starts watching. If the signal fd cannot be set up, signals keep their default
    /// action (a Ctrl-C then leaves the temporary directory behind).
    pub fn install() -> Interrupt {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        let mut old = SigSet::empty();
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)) {
            tracing::warn!(
                "cannot block SIGINT/SIGTERM ({e}): an interrupted import may leave a temporary directory"
            );
            return Interrupt::none();
        }
        match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => Interrupt {
                fd: Some(fd),
                old: Some(old),
                seen: Cell::new(false),
            },
            Err(e) => {
                let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
                tracing::warn!(
                    "cannot create a signalfd ({e}): an interrupted import may leave a temporary directory"
                );
                Interrupt::none()
            }
        }
    }

    /// Watches nothing (for tests and library callers that handle signals themselves).
    pub fn none() -> Interrupt {
        Interrupt {
            fd: None,
            old: None,
            seen: Cell::new(false),
        }
    }

    /// True once SIGINT or SIGTERM has arrived.
    pub fn pending(&self) -> bool {
        if self.seen.get() {
            return true;
        }
        if let Some(fd) = &self.fd {
            if let Ok(Some(_)) = fd.read_signal() {
                self.seen.set(true);
            }
        }
        self.seen.get()
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.fd = None;
        if let Some(old) = self.old.take() {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
    }
}
