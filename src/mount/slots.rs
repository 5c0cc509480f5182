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
