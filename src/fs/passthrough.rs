//! FUSE passthrough bookkeeping both adapters share: whether passthrough is in use
//! ([`PassthroughSwitch`]) and which backing file the kernel holds for each inode
//! ([`Passthrough`]).
//!
//! The kernel ties one backing file to an inode while any passthrough open of it
//! lasts, and fails (EIO to the user) an open of that inode with another backing file,
//! or a passthrough open while a page-cached one lasts (and the reverse). So every
//! open of an inode follows the inode's current mode: the first open picks it, later
//! ones reuse it until the last one is released. What an open does when it would need
//! another backing file than the inode's is each adapter's rule ([`Join`]).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Instant;

/// Whether FUSE passthrough is in use.
///
/// Registering a disk file (`FUSE_DEV_IOC_BACKING_OPEN`) needs `CAP_SYS_ADMIN` in the
/// initial user namespace, so only a [`privileged`](super::privileged) daemon
/// negotiates it at INIT. A refused registration turns it off for good (the daemon
/// serves file data instead), except EBUSY: that file's filesystem stacks too deep,
/// other files may do.
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
    pub(crate) fn register<F, Id>(
        &self,
        file: &F,
        register: impl FnOnce(&F) -> io::Result<Id>,
        what: &str,
    ) -> Option<Id> {
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

/// The passthrough state of each inode with open files, and the inode of each open
/// file handle. `K` names the disk file behind an inode's passthrough opens (what an
/// adapter's [`Join`] rule compares); `Id` is the kernel's handle of a registered
/// backing file, closed when dropped.
#[derive(Debug)]
pub(crate) struct Passthrough<K, Id = fuser::BackingId> {
    /// Negotiated at INIT (then opens are tracked per inode) and not refused since.
    pub(crate) switch: PassthroughSwitch,
    /// What the daemon serves when a registration is refused, for the log.
    serves: &'static str,
    state: parking_lot::Mutex<State<K, Id>>,
    /// Signalled whenever an inode's last open goes.
    released: parking_lot::Condvar,
}

#[derive(Debug)]
struct State<K, Id> {
    inodes: HashMap<u64, InodeIo<K, Id>>,
    /// The inode of each tracked open file handle.
    handles: HashMap<u64, u64>,
}

/// How the open files of one inode are served.
#[derive(Debug)]
enum InodeIo<K, Id> {
    /// Through the daemon.
    Cached { opens: usize },
    /// By the kernel from the registered disk file `key` names.
    Backed { key: K, id: Arc<Id>, opens: usize },
}

/// How to answer one open.
#[derive(Debug)]
pub(crate) enum OpenIo<Id> {
    /// Through the daemon.
    Cached,
    /// By passthrough with this backing file.
    Backed(Arc<Id>),
    /// The adapter's [`Join`] rule refused the open, or waited in vain for the inode's
    /// passthrough opens to go: nothing was recorded.
    Conflict,
}

/// What an open does on an inode whose passthrough opens last: the adapter's rule,
/// given the name of the disk file those opens use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Join {
    /// Reuse the inode's backing file: it serves the data this open wants.
    Share,
    /// Answer [`OpenIo::Conflict`] now.
    Refuse,
    /// Wait until those opens are released (then pick the mode afresh), or answer
    /// [`OpenIo::Conflict`] at this instant.
    Wait(Instant),
}

impl<K, Id> Passthrough<K, Id> {
    /// A table with passthrough not negotiated; `serves` says what the daemon serves
    /// instead of a refused backing file ("image data").
    pub(crate) fn new(serves: &'static str) -> Self {
        Passthrough {
            switch: PassthroughSwitch::default(),
            serves,
            state: parking_lot::Mutex::new(State {
                inodes: HashMap::new(),
                handles: HashMap::new(),
            }),
            released: parking_lot::Condvar::new(),
        }
    }

    /// Decides how open file `fh` of inode `ino` is served and records it. `file` is
    /// the disk file that could back it and its name (`None`: the daemon serves it);
    /// the first open of an inode registers it through `register`
    /// (`ReplyOpen::open_backing`). On an inode backed by a file, `join` (given that
    /// file's name) says whether the open shares it.
    pub(crate) fn open<F>(
        &self,
        ino: u64,
        fh: u64,
        file: Option<(K, &F)>,
        join: impl Fn(&K) -> Join,
        register: impl FnOnce(&F) -> io::Result<Id>,
    ) -> OpenIo<Id> {
        let mut st = self.state.lock();
        let io = loop {
            let wait = match st.inodes.get_mut(&ino) {
                None => {
                    let backed = file.and_then(|(key, f)| {
                        let id = self.switch.register(f, register, self.serves)?;
                        Some((key, Arc::new(id)))
                    });
                    let (node, io) = match backed {
                        Some((key, id)) => (
                            InodeIo::Backed {
                                key,
                                id: id.clone(),
                                opens: 1,
                            },
                            OpenIo::Backed(id),
                        ),
                        None => (InodeIo::Cached { opens: 1 }, OpenIo::Cached),
                    };
                    st.inodes.insert(ino, node);
                    break io;
                }
                Some(InodeIo::Cached { opens }) => {
                    *opens += 1;
                    break OpenIo::Cached;
                }
                Some(InodeIo::Backed { key, id, opens }) => match join(key) {
                    Join::Share => {
                        *opens += 1;
                        break OpenIo::Backed(id.clone());
                    }
                    Join::Refuse => return OpenIo::Conflict,
                    Join::Wait(deadline) => deadline,
                },
            };
            if self.released.wait_until(&mut st, wait).timed_out() {
                return OpenIo::Conflict;
            }
        };
        st.handles.insert(fh, ino);
        io
    }

    /// True while inode `ino` has passthrough opens (its backing file is fixed, and
    /// the kernel fails every open of it with another one).
    pub(crate) fn backed(&self, ino: u64) -> bool {
        matches!(
            self.state.lock().inodes.get(&ino),
            Some(InodeIo::Backed { .. })
        )
    }

    /// Waits until inode `ino` has no passthrough opens of a file `by` picks; false if
    /// they still last at `deadline`.
    pub(crate) fn wait_unbacked(
        &self,
        ino: u64,
        by: impl Fn(&K) -> bool,
        deadline: Instant,
    ) -> bool {
        let mut st = self.state.lock();
        while matches!(st.inodes.get(&ino), Some(InodeIo::Backed { key, .. }) if by(key)) {
            if self.released.wait_until(&mut st, deadline).timed_out() {
                return false;
            }
        }
        true
    }

    /// Forgets open file `fh`; the inode's backing file goes with its last open.
    pub(crate) fn release(&self, fh: u64) {
        let mut st = self.state.lock();
        let Some(ino) = st.handles.remove(&fh) else {
            return;
        };
        let last = match st.inodes.get_mut(&ino) {
            Some(InodeIo::Cached { opens } | InodeIo::Backed { opens, .. }) => {
                *opens -= 1;
                *opens == 0
            }
            None => false,
        };
        if last {
            // Dropping the last reference closes the backing id (an ioctl, no disk I/O).
            st.inodes.remove(&ino);
            self.released.notify_all();
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

    fn refuse(errno: i32, calls: &Cell<u32>) -> impl FnOnce(&()) -> io::Result<u32> {
        move |_| {
            calls.set(calls.get() + 1);
            Err(io::Error::from_raw_os_error(errno))
        }
    }

    /// A table whose switch is as INIT leaves it when the kernel granted passthrough.
    fn table() -> Passthrough<u8, u32> {
        let mut t = Passthrough::new("x");
        t.switch = granted();
        t
    }

    /// The id of a registration the kernel grants, counting calls.
    fn grant(id: u32, calls: &Cell<u32>) -> impl FnOnce(&()) -> io::Result<u32> {
        move |_| {
            calls.set(calls.get() + 1);
            Ok(id)
        }
    }

    fn backed_by<Id>(io: &OpenIo<Id>) -> Option<&Arc<Id>> {
        match io {
            OpenIo::Backed(id) => Some(id),
            _ => None,
        }
    }

    const SHARE: fn(&u8) -> Join = |_| Join::Share;
    const REFUSE: fn(&u8) -> Join = |_| Join::Refuse;

    #[test]
    fn an_inode_keeps_its_backing_file_until_its_last_open_goes() {
        let t = table();
        let calls = Cell::new(0);
        let first = t.open(1, 10, Some((0, &())), SHARE, grant(7, &calls));
        let second = t.open(1, 11, Some((0, &())), SHARE, grant(8, &calls));
        let (a, b) = (
            backed_by(&first).expect("backed"),
            backed_by(&second).expect("backed"),
        );
        // One registration, shared by the second open.
        assert_eq!((**a, **b, calls.get()), (7, 7, 1));
        assert!(t.backed(1) && !t.backed(2));
        let closed = Arc::downgrade(a);
        drop((first, second));
        t.release(10);
        assert!(t.backed(1) && closed.upgrade().is_some());
        t.release(11);
        // The table dropped the backing id: the kernel's reference is closed.
        assert!(!t.backed(1) && closed.upgrade().is_none());
        // A release of a handle the table does not know changes nothing.
        t.release(10);
        let again = t.open(1, 12, Some((0, &())), SHARE, grant(9, &calls));
        assert_eq!(backed_by(&again).map(|id| **id), Some(9));
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn an_inode_served_by_the_daemon_stays_so_while_its_opens_last() {
        let t = table();
        let calls = Cell::new(0);
        // No disk file: served by the daemon, never registered.
        assert!(matches!(
            t.open(1, 10, None, SHARE, grant(7, &calls)),
            OpenIo::Cached
        ));
        // A later open with a file does not mix passthrough into the cached opens.
        assert!(matches!(
            t.open(1, 11, Some((0, &())), SHARE, grant(7, &calls)),
            OpenIo::Cached
        ));
        assert_eq!(calls.get(), 0);
        assert!(!t.backed(1));
        t.release(10);
        t.release(11);
        assert!(backed_by(&t.open(1, 12, Some((0, &())), SHARE, grant(7, &calls))).is_some());
        // A refusal (not EBUSY) serves this open and all later ones by the daemon.
        let t = table();
        let refused = t.open(2, 20, Some((0, &())), SHARE, refuse(libc::EPERM, &calls));
        assert!(matches!(refused, OpenIo::Cached) && !t.switch.enabled());
        t.release(20);
        assert!(matches!(
            t.open(2, 21, Some((0, &())), SHARE, grant(7, &calls)),
            OpenIo::Cached
        ));
        // Never negotiated: never registered.
        let off: Passthrough<u8, u32> = Passthrough::new("x");
        let before = calls.get();
        assert!(matches!(
            off.open(3, 30, Some((0, &())), SHARE, grant(7, &calls)),
            OpenIo::Cached
        ));
        assert_eq!(calls.get(), before);
    }

    #[test]
    fn the_join_rule_sees_the_inodes_file_and_a_refused_open_is_not_recorded() {
        let t = table();
        let calls = Cell::new(0);
        assert!(backed_by(&t.open(1, 10, Some((4, &())), SHARE, grant(7, &calls))).is_some());
        let seen = Cell::new(None);
        let rule = |k: &u8| {
            seen.set(Some(*k));
            Join::Refuse
        };
        assert!(matches!(
            t.open(1, 11, Some((5, &())), rule, grant(8, &calls)),
            OpenIo::Conflict
        ));
        assert_eq!((seen.get(), calls.get()), (Some(4), 1));
        // Releasing the refused handle leaves the inode's one open in place.
        t.release(11);
        assert!(t.backed(1));
        t.release(10);
        assert!(!t.backed(1));
        // Nothing to join on an inode without opens: the rule is not asked.
        assert!(backed_by(&t.open(1, 12, Some((5, &())), REFUSE, grant(8, &calls))).is_some());
    }

    #[test]
    fn a_waiting_open_proceeds_once_the_inodes_opens_are_released_or_gives_up() {
        let t = table();
        let calls = Cell::new(0);
        assert!(backed_by(&t.open(1, 10, Some((0, &())), SHARE, grant(7, &calls))).is_some());
        let soon = || Instant::now() + std::time::Duration::from_millis(20);
        let wait = |_: &u8| Join::Wait(soon());
        assert!(matches!(
            t.open(1, 11, Some((1, &())), wait, grant(8, &calls)),
            OpenIo::Conflict
        ));
        assert!(!t.wait_unbacked(1, |k| *k == 0, soon()));
        // Not backed by a file `by` picks: no wait.
        assert!(t.wait_unbacked(1, |k| *k == 1, Instant::now()));
        assert!(t.wait_unbacked(2, |_| true, Instant::now()));
        // Released from another thread while waiting: the open picks the mode afresh.
        let long = Instant::now() + std::time::Duration::from_secs(30);
        let io = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let calls = Cell::new(0);
                let io = t.open(
                    1,
                    11,
                    Some((1, &())),
                    |_| Join::Wait(long),
                    grant(8, &calls),
                );
                (backed_by(&io).map(|id| **id), calls.get())
            });
            // Released before the waiter locks or while it waits: either way it
            // must not see the old file.
            t.release(10);
            waiter.join().expect("waiter")
        });
        assert_eq!(io, (Some(8), 1));
        assert!(t.wait_unbacked(1, |k| *k == 0, Instant::now()));
        assert!(!t.wait_unbacked(1, |k| *k == 1, soon()));
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
