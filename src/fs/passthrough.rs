//! Whether FUSE passthrough is in use ([`PassthroughSwitch`]), shared by both adapters.

use std::io;

/// Whether FUSE passthrough is in use, shared by both adapters; each keeps its own
/// per-inode bookkeeping of which backing file the kernel holds.
///
/// Registering a disk file (`FUSE_DEV_IOC_BACKING_OPEN`) needs `CAP_SYS_ADMIN` in the
/// initial user namespace, so only a [`privileged`](super::privileged) daemon negotiates it at INIT. A
/// refused registration turns it off for good (the daemon serves file data instead),
/// except EBUSY: that file's filesystem stacks too deep, other files may do.
#[derive(Debug, Default)]
pub(crate) struct PassthroughSwitch {
    negotiated: bool,
    enabled: std::sync::atomic::AtomicBool,
}

impl PassthroughSwitch {
    /// Asks the kernel for passthrough at INIT, with stack depth 2 when the disk files
    /// are on a stacking filesystem (`stacked`), else 1. True when granted.
    pub(crate) fn negotiate(&mut self, config: &mut fuser::KernelConfig, stacked: bool) -> bool {
        if config
            .add_capabilities(fuser::InitFlags::FUSE_PASSTHROUGH)
            .is_err()
        {
            return false;
        }
        let _ = config.set_max_stack_depth(if stacked { 2 } else { 1 });
        self.negotiated = true;
        self.enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Granted at INIT: opens must be tracked per inode (even once disabled, the
    /// backing files already handed out stay).
    pub(crate) fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Negotiated and not refused since: new opens may get backing files.
    pub(crate) fn enabled(&self) -> bool {
        self.negotiated && self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Registers `file` through `register` (`ReplyOpen::open_backing`); `None` when
    /// disabled or refused, logging once with `what` (what is served instead).
    pub(crate) fn register<F>(
        &self,
        file: &F,
        register: impl FnOnce(&F) -> io::Result<fuser::BackingId>,
        what: &str,
    ) -> Option<fuser::BackingId> {
        if !self.enabled() {
            return None;
        }
        match register(file) {
            Ok(id) => Some(id),
            Err(e) => {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    self.enabled
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!("FUSE passthrough refused ({e}); serving {what}");
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A switch as INIT leaves it when the kernel granted passthrough.
    fn granted() -> PassthroughSwitch {
        PassthroughSwitch {
            negotiated: true,
            enabled: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn refuse(errno: i32, calls: &Cell<u32>) -> impl FnOnce(&()) -> io::Result<fuser::BackingId> {
        move |_| {
            calls.set(calls.get() + 1);
            Err(io::Error::from_raw_os_error(errno))
        }
    }

    #[test]
    fn a_refused_registration_turns_passthrough_off_for_good() {
        let s = granted();
        let calls = Cell::new(0);
        assert!(s.register(&(), refuse(libc::EPERM, &calls), "x").is_none());
        assert!(!s.enabled() && s.negotiated());
        // Later opens are served by the daemon without asking the kernel again.
        assert!(s.register(&(), refuse(libc::EPERM, &calls), "x").is_none());
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn a_file_stacked_too_deep_is_served_without_turning_passthrough_off() {
        let s = granted();
        let calls = Cell::new(0);
        assert!(s.register(&(), refuse(libc::EBUSY, &calls), "x").is_none());
        assert!(s.enabled());
        assert!(s.register(&(), refuse(libc::EBUSY, &calls), "x").is_none());
        assert_eq!(calls.get(), 2);
        // Never negotiated: never asked.
        let off = PassthroughSwitch::default();
        assert!(
            off.register(&(), refuse(libc::EPERM, &calls), "x")
                .is_none()
        );
        assert_eq!((calls.get(), off.negotiated()), (2, false));
    }
}
