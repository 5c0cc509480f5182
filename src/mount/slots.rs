//! Image slots: each config's image state, the image and the openers waiting for it.

use std::path::PathBuf;
use std::sync::Arc;

use crate::layers::store::BuildKey;
use crate::layers::tar::TarLayout;

/// Someone waiting for an image: a FUSE open in the mount, a channel in tests.
pub trait Waiter: Send + 'static {
    /// The waiting thread (its pending signals are watched).
    fn pid(&self) -> u32;
    /// The image is ready; `built`: by the job this waiter waited for, which has
    /// invalidated the kernel's view of the image (see [`super::images::Images::invalidate`]).
    fn ready(self: Box<Self>, image: Arc<TarLayout>, built: bool);
    /// The open fails with this errno (EIO for a failed build, EINTR when interrupted).
    fn fail(self: Box<Self>, errno: i32);
}

/// What `getfattr` shows as `user.gentree.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Absent,
    /// Requested, waiting for the seed (another build, here or in another process,
    /// holds its lock).
    Queued,
    Building,
    Ready,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Absent => "absent",
            State::Queued => "queued",
            State::Building => "building",
            State::Ready => "ready",
            State::Failed => "failed",
        }
    }
}

/// The state of one config's image, as seen now.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: State,
    pub key: Option<BuildKey>,
    /// The image, when it is ready.
    pub image: Option<Arc<TarLayout>>,
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) state: Option<State>,
    pub(super) key: Option<BuildKey>,
    pub(super) image: Option<Arc<TarLayout>>,
    pub(super) waiters: Vec<Box<dyn Waiter>>,
    /// The image the kernel's view was last invalidated for ([`super::images::Images::is_served`]).
    pub(super) served: Option<Arc<TarLayout>>,
    /// With `state == Building`: the job still waits for the seed's lock.
    pub(super) queued: bool,
    /// Where `image` is (or will be) kept as a file ([`super::images::Images::image_file`]).
    pub(super) file: Option<PathBuf>,
}

impl Slot {
    /// Adds `waiter` to the running job; gives it back when none runs.
    pub(super) fn join(&mut self, waiter: Box<dyn Waiter>) -> Option<Box<dyn Waiter>> {
        if self.state == Some(State::Building) {
            self.waiters.push(waiter);
            return None;
        }
        Some(waiter)
    }

    /// Makes `waiter` wait for a build; true when no job runs yet, so the caller must
    /// start one (the slot is then building).
    pub(super) fn wait(&mut self, waiter: Box<dyn Waiter>) -> bool {
        self.waiters.push(waiter);
        if self.state == Some(State::Building) {
            return false;
        }
        self.state = Some(State::Building);
        self.image = None;
        true
    }

    /// Ends the job: records its outcome (with the top key and the image file for a
    /// ready image) and gives every waiter, to be answered off the lock.
    pub(super) fn finish(
        &mut self,
        key: Option<(BuildKey, PathBuf)>,
        r: &Result<Arc<TarLayout>, i32>,
    ) -> Vec<Box<dyn Waiter>> {
        self.queued = false;
        match r {
            Ok(img) => {
                self.state = Some(State::Ready);
                (self.key, self.file) = key.unzip();
                self.image = Some(img.clone());
            }
            Err(_) => {
                self.state = Some(State::Failed);
                self.image = None;
            }
        }
        std::mem::take(&mut self.waiters)
    }

    /// Takes the waiters whose thread `pending(pid)` says got a signal; the others
    /// keep waiting.
    pub(super) fn take_interrupted(
        &mut self,
        pending: impl Fn(u32) -> bool,
    ) -> Vec<Box<dyn Waiter>> {
        if self.waiters.is_empty() {
            return Vec::new();
        }
        let (gone, stay): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| pending(w.pid()));
        self.waiters = stay;
        gone
    }
}

/// Answers each of `waiters` with the job's outcome: the image (built by the job) or
/// the errno.
pub(super) fn answer(waiters: Vec<Box<dyn Waiter>>, r: &Result<Arc<TarLayout>, i32>) {
    for w in waiters {
        match r {
            Ok(img) => w.ready(img.clone(), true),
            Err(errno) => w.fail(*errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tar::PackOptions;
    use parking_lot::Mutex;

    /// What a fake waiter was answered.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Answer {
        Ready { built: bool },
        Fail(i32),
    }

    type Log = Arc<Mutex<Vec<(u32, Answer)>>>;

    /// A waiter that records each answer it gets, by pid.
    struct Fake {
        pid: u32,
        log: Log,
    }

    impl Waiter for Fake {
        fn pid(&self) -> u32 {
            self.pid
        }
        fn ready(self: Box<Self>, _image: Arc<TarLayout>, built: bool) {
            self.log.lock().push((self.pid, Answer::Ready { built }));
        }
        fn fail(self: Box<Self>, errno: i32) {
            self.log.lock().push((self.pid, Answer::Fail(errno)));
        }
    }

    fn fake(pid: u32, log: &Log) -> Box<dyn Waiter> {
        Box::new(Fake {
            pid,
            log: log.clone(),
        })
    }

    fn image() -> Arc<TarLayout> {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        let layers = [t.path().to_path_buf()];
        Arc::new(TarLayout::flattened(&layers, &PackOptions::default()).unwrap())
    }

    /// Each pid of `pids` answered exactly once, with `want`.
    fn answered_once(log: &Log, pids: &[u32], want: &Answer) {
        let log = log.lock();
        for p in pids {
            let got: Vec<_> = log.iter().filter(|(q, _)| q == p).collect();
            assert_eq!(got.len(), 1, "waiter {p} answered {got:?}");
            assert_eq!(&got[0].1, want, "waiter {p}");
        }
        assert_eq!(log.len(), pids.len(), "{log:?}");
    }

    #[test]
    fn the_first_waiter_starts_the_job_and_later_ones_join_it() {
        let log = Log::default();
        let mut s = Slot::default();
        assert!(s.join(fake(1, &log)).is_some(), "nothing runs to join");
        assert!(s.wait(fake(1, &log)), "the first waiter starts a job");
        assert_eq!(s.state, Some(State::Building));
        assert!(!s.wait(fake(2, &log)), "a second job never starts");
        assert!(s.join(fake(3, &log)).is_none());
        let img = image();
        let top = BuildKey::from_digest(&[1; 32]);
        let r = Ok(img.clone());
        answer(s.finish(Some((top.clone(), "/i".into())), &r), &r);
        answered_once(&log, &[1, 2, 3], &Answer::Ready { built: true });
        assert_eq!(s.state, Some(State::Ready));
        assert_eq!(s.key, Some(top));
        assert!(s.image.as_ref().is_some_and(|i| Arc::ptr_eq(i, &img)));
        // Nobody is left to answer twice.
        assert!(s.finish(None, &Err(libc::EIO)).is_empty());
        assert!(
            s.join(fake(4, &log)).is_some(),
            "a finished job takes no waiters"
        );
    }

    #[test]
    fn a_failed_job_fails_every_waiter_once() {
        let log = Log::default();
        let mut s = Slot::default();
        s.wait(fake(1, &log));
        s.wait(fake(2, &log));
        s.queued = true;
        let r = Err(libc::EIO);
        answer(s.finish(None, &r), &r);
        answered_once(&log, &[1, 2], &Answer::Fail(libc::EIO));
        assert_eq!(s.state, Some(State::Failed));
        assert!(s.image.is_none() && !s.queued);
    }

    #[test]
    fn interrupted_waiters_leave_and_are_not_answered_again() {
        let log = Log::default();
        let mut s = Slot::default();
        for pid in 1..=4 {
            s.wait(fake(pid, &log));
        }
        for w in s.take_interrupted(|pid| pid % 2 == 0) {
            w.fail(libc::EINTR);
        }
        assert!(s.take_interrupted(|pid| pid % 2 == 0).is_empty());
        let r = Ok(image());
        answer(s.finish(None, &r), &r);
        let log = log.lock();
        let mut got: Vec<_> = log.iter().cloned().collect();
        got.sort_by_key(|(p, _)| *p);
        assert_eq!(
            got,
            vec![
                (1, Answer::Ready { built: true }),
                (2, Answer::Fail(libc::EINTR)),
                (3, Answer::Ready { built: true }),
                (4, Answer::Fail(libc::EINTR)),
            ]
        );
    }
}
