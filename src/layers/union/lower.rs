//! Caches of what lower layers hold: directory listings and recorded ownership.
//!
//! Lower layers never change while the union is mounted (kernel overlayfs makes the
//! same assumption), so what was read from them once stays true. A lookup walks a
//! directory's layers top down; without these caches each layer that lacks the name
//! costs two failed `lstat`s (the name and its `.wh.` whiteout), each directory an
//! opacity check (an `lstat` and three `getxattr`s), and each file a `getxattr` for
//! `user.containers.override_stat`. With them, a layer's directory is read once
//! (`getdents`) and the walk asks its name set instead.
//!
//! The upper layer is never cached here: it changes under the union's own operations.
//! Both caches are bounded LRUs; their locks are held only to look up or insert, never
//! while reading the disk (two request threads may read the same directory at once;
//! the second insert wins harmlessly, both results being equal).
//!
//! Listings are also read ahead: a tree walk (`find`, `du`, `tar c`) is serial, so each
//! directory's listing would sit on its critical path while other CPUs idle. The union
//! queues the subdirectories of each directory it opens ([`LowerCache::prefetch`]) to
//! one background thread, which reads them and their own subdirectories' listings into
//! the cache (a walk's `readdirplus` needs those for their opacity). The queue is
//! bounded (requests beyond it are dropped: the listing is then read when asked for),
//! and a request for a listing the thread is reading waits for it rather than reading
//! it again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::{Condvar, Mutex};

use crate::layers::ownership::{self, OVERRIDE_XATTR, OverrideStat};
use crate::layers::whiteout;

use super::hostpath::HostPath;
use super::tree::FastMap;

/// Directories whose listings are kept (a few MB for a full Gentoo seed's 10k dirs).
const DIRS: usize = 16 * 1024;
/// Files whose recorded ownership (or its absence) is kept.
const OVERRIDES: usize = 256 * 1024;

/// One lower layer's directory: its raw names (whiteout markers included) and whether
/// it is opaque.
#[derive(Debug)]
pub struct LowerDir {
    /// Index into `entries` by name.
    names: FastMap<OsString, usize>,
    /// The entries in `getdents` order.
    pub entries: Vec<LowerEntry>,
    /// Opaque in any encoding: the union must not look below it.
    pub opaque: bool,
    /// True when some name has the OCI whiteout prefix.
    whiteouts: bool,
}

impl LowerDir {
    /// True when the layer's directory has an entry of exactly this name.
    pub fn has(&self, name: &OsStr) -> bool {
        self.names.contains_key(name)
    }

    /// True when the layer's directory has the OCI whiteout of `name` (`.wh.NAME`).
    pub fn has_whiteout(&self, name: &OsStr) -> bool {
        self.whiteouts && self.has(&whiteout::whiteout_name(name))
    }

    /// The entry of this name, if the layer's directory has one.
    pub fn entry(&self, name: &OsStr) -> Option<&LowerEntry> {
        self.names.get(name).map(|&i| &self.entries[i])
    }
}

/// One entry of a lower directory, as `readdir` and `lstat` found it.
#[derive(Debug)]
pub struct LowerEntry {
    pub name: OsString,
    pub ft: fs::FileType,
    /// `lstat` of the entry (`None` only where it vanished or could not be read),
    /// presented by lookups: a lower entry never changes while mounted, only its atime
    /// may move on reads, which the kernel's long attribute cache would hide anyway.
    /// Regular files and character devices are also whiteout candidates.
    pub meta: Option<fs::Metadata>,
    /// The ownership recorded on a lower file or directory, read with the listing
    /// (`Some(None)`: none); `None` when not known here (ask [`LowerCache::override_stat`]).
    pub ov: Option<Option<OverrideStat>>,
}

/// Lists a directory: every entry with its type and `lstat`. Entries that vanish
/// while listed are left out.
///
/// Directories and symlinks are stat'ed too, relative to the open directory
/// (`fstatat`): a lookup of one would otherwise `lstat` its full path, a walk of
/// every component from the layer root, for each of the thousands of directories a
/// fresh tree walk meets.
pub fn list_dir(rd: fs::ReadDir) -> io::Result<Vec<LowerEntry>> {
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry?;
        let ft = entry.file_type()?;
        let meta = match entry.metadata() {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.push(LowerEntry {
            name: entry.file_name(),
            ft,
            meta,
            ov: None,
        });
    }
    Ok(out)
}

/// A layer index and a path.
type Key = (usize, PathBuf);

/// Lower listings waiting for the prefetch thread; beyond this, requests are dropped
/// (a directory of a few hundred subdirectories queues one job per subdirectory and
/// layer, and anything not prefetched is simply read when asked for).
const PREFETCH_QUEUE: usize = 1024;

/// The caches of one union's lower layers, keyed by layer index and path (listings:
/// relative to the layer root; ownership: absolute).
#[derive(Debug)]
pub struct LowerCache {
    shared: Arc<Shared>,
    /// Started on the first [`LowerCache::prefetch`]; stopped when the cache is dropped.
    prefetch: std::sync::OnceLock<Option<Arc<PrefetchQueue>>>,
    /// False for unions whose lower layers change underneath them (the mount's view of
    /// a seed and its live upper): every call reads the disk.
    enabled: bool,
}

/// The state the prefetch thread shares with the request threads.
#[derive(Debug)]
struct Shared {
    dirs: Mutex<Dirs>,
    /// Signalled whenever a listing leaves `Dirs::reading`.
    read_done: Condvar,
    overrides: Mutex<LruCache<Key, Option<OverrideStat>>>,
}

#[derive(Debug)]
struct Dirs {
    listed: LruCache<Key, Option<Arc<LowerDir>>>,
    /// Listings the prefetch thread is reading now: a request for one waits for it
    /// instead of reading the same directory a second time.
    reading: HashSet<Key>,
}

impl Default for LowerCache {
    fn default() -> Self {
        LowerCache::new()
    }
}

impl Drop for LowerCache {
    fn drop(&mut self) {
        if let Some(Some(q)) = self.prefetch.get() {
            q.close();
        }
    }
}

impl LowerCache {
    pub fn new() -> LowerCache {
        let cap = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        LowerCache {
            shared: Arc::new(Shared {
                dirs: Mutex::new(Dirs {
                    listed: LruCache::new(cap(DIRS)),
                    reading: HashSet::new(),
                }),
                read_done: Condvar::new(),
                overrides: Mutex::new(LruCache::new(cap(OVERRIDES))),
            }),
            prefetch: std::sync::OnceLock::new(),
            enabled: true,
        }
    }

    /// A cache that caches nothing, for lower layers that may change.
    pub fn disabled() -> LowerCache {
        let mut c = LowerCache::new();
        c.enabled = false;
        c
    }

    /// The listing of directory `rel` of lower layer `layer` (root `root`). `Ok(None)`
    /// when the directory cannot be listed although it may exist (no read permission:
    /// an `lstat` inside may still work, so the caller must fall back to it). A path
    /// that is missing or not a directory lists as empty.
    pub fn dir(&self, layer: usize, root: &Path, rel: &Path) -> io::Result<Option<Arc<LowerDir>>> {
        if !self.enabled {
            return Ok(read_lower_dir(HostPath::new(root, rel).as_path())?.map(Arc::new));
        }
        let key = (layer, rel.to_path_buf());
        {
            let mut dirs = self.shared.dirs.lock();
            loop {
                if let Some(hit) = dirs.listed.get(&key) {
                    return Ok(hit.clone());
                }
                if !dirs.reading.contains(&key) {
                    break;
                }
                // The prefetch thread is reading it: its result comes sooner than ours.
                self.shared.read_done.wait(&mut dirs);
            }
        }
        let listed = read_lower_dir(HostPath::new(root, rel).as_path())?.map(Arc::new);
        self.shared.dirs.lock().listed.put(key, listed.clone());
        Ok(listed)
    }

    /// The `lstat` of entry `rel` of lower layer `layer` and its ownership record
    /// (`None`: not read with the listing) as its directory's cached listing holds
    /// them; `None` when that listing is not cached (nothing is read) or the cache is
    /// disabled. Serves the attribute requests the kernel sends after every read (a
    /// read invalidates a FUSE inode's atime) without a disk call.
    pub fn listed(
        &self,
        layer: usize,
        rel: &Path,
    ) -> Option<(fs::Metadata, Option<Option<OverrideStat>>)> {
        if !self.enabled {
            return None;
        }
        let (parent, name) = (rel.parent()?, rel.file_name()?);
        let dir = self
            .shared
            .dirs
            .lock()
            .listed
            .get(&(layer, parent.to_path_buf()))?
            .clone()?;
        let e = dir.entry(name)?;
        Some((e.meta.clone()?, e.ov))
    }

    /// Asks for the listing of directory `rel` of lower layer `layer` (root `root`) to
    /// be read in the background, so that a later [`LowerCache::dir`] finds it cached,
    /// and then the listings of its subdirectories in that layer too: the union queues
    /// a directory's subdirectories when the directory is opened; a tree walk opens
    /// them next, and its `readdirplus` of each needs their subdirectories' listings
    /// (their opacity), so the walk's disk reads overlap with its own work. Best
    /// effort: nothing happens when the cache is disabled or the queue is full.
    pub fn prefetch(&self, layer: usize, root: &Path, rel: PathBuf) {
        if !self.enabled {
            return;
        }
        // Queued even when cached: its subdirectories may not be.
        let key = (layer, rel);
        let Some(queue) = self.prefetch.get_or_init(|| self.start_prefetch()) else {
            return;
        };
        queue.push(Prefetch {
            key,
            root: Arc::from(root),
            subdirs: true,
        });
    }

    /// Starts the prefetch thread; `None` (no prefetching) when it cannot be started.
    fn start_prefetch(&self) -> Option<Arc<PrefetchQueue>> {
        let queue = Arc::new(PrefetchQueue::new(PREFETCH_QUEUE));
        let (q, shared) = (queue.clone(), self.shared.clone());
        let spawned = std::thread::Builder::new()
            .name("union-prefetch".into())
            .spawn(move || {
                while let Some(job) = q.pop() {
                    let Some(dir) = shared.read_ahead(&job) else {
                        continue;
                    };
                    if !job.subdirs {
                        continue;
                    }
                    for e in dir.entries.iter().filter(|e| e.ft.is_dir()) {
                        let mut rel =
                            PathBuf::with_capacity(job.key.1.as_os_str().len() + 1 + e.name.len());
                        rel.push(&job.key.1);
                        rel.push(&e.name);
                        let key = (job.key.0, rel);
                        if !shared.dirs.lock().listed.contains(&key) {
                            q.push(Prefetch {
                                key,
                                root: job.root.clone(),
                                subdirs: false,
                            });
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => Some(queue),
            Err(e) => {
                tracing::warn!("lower listings are not prefetched: no thread: {e}");
                None
            }
        }
    }

    /// The ownership recorded on file `path` (absolute) of lower layer `layer`.
    pub fn override_stat(&self, layer: usize, path: &Path) -> io::Result<Option<OverrideStat>> {
        let key = (layer, path.to_path_buf());
        if let Some(hit) = self.shared.overrides.lock().get(&key) {
            return Ok(*hit);
        }
        let ov = OverrideStat::read(path)?;
        // A shortened path (through an fd link) names nothing stable: not a key.
        if self.enabled && !path.starts_with("/proc/self/fd") {
            self.shared.overrides.lock().put(key, ov);
        }
        Ok(ov)
    }
}

impl Shared {
    /// Reads one queued listing into the cache, unless it is there already; returns
    /// it (`None`: unreadable). Errors are not kept: the request that needs the
    /// listing meets them itself.
    fn read_ahead(&self, job: &Prefetch) -> Option<Arc<LowerDir>> {
        {
            let mut dirs = self.dirs.lock();
            if let Some(hit) = dirs.listed.peek(&job.key) {
                return hit.clone();
            }
            dirs.reading.insert(job.key.clone());
        }
        let _reading = Reading {
            shared: self,
            key: &job.key,
        };
        let listed = read_lower_dir(HostPath::new(&job.root, &job.key.1).as_path()).ok()?;
        let listed = listed.map(Arc::new);
        self.dirs.lock().listed.put(job.key.clone(), listed.clone());
        listed
    }
}

/// Marks a listing as no longer being read, and wakes its waiters, when dropped: even
/// if reading it failed or panicked, no request waits for it forever.
struct Reading<'a> {
    shared: &'a Shared,
    key: &'a Key,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.shared.dirs.lock().reading.remove(self.key);
        self.shared.read_done.notify_all();
    }
}

/// One listing to read ahead.
#[derive(Debug)]
struct Prefetch {
    key: Key,
    root: Arc<Path>,
    /// Also queue the listings of its subdirectories (one level, without this flag).
    subdirs: bool,
}

/// The bounded queue of listings to read ahead, first in first out: a tree walk opens
/// subdirectories in the order they were listed.
#[derive(Debug)]
struct PrefetchQueue {
    jobs: Mutex<PrefetchJobs>,
    more: Condvar,
    cap: usize,
}

#[derive(Debug, Default)]
struct PrefetchJobs {
    queued: VecDeque<Prefetch>,
    /// The keys in `queued`, with whether to queue the subdirectories too: a listing
    /// asked for twice is queued once, with subdirectories if either asked for them.
    keys: HashMap<Key, bool>,
    closed: bool,
}

impl PrefetchQueue {
    fn new(cap: usize) -> PrefetchQueue {
        PrefetchQueue {
            jobs: Mutex::new(PrefetchJobs::default()),
            more: Condvar::new(),
            cap,
        }
    }

    /// Queues `job` (merged into a queued job of the same listing); false (the job
    /// dropped) when the queue is full or closed.
    fn push(&self, job: Prefetch) -> bool {
        let mut jobs = self.jobs.lock();
        if jobs.closed {
            return false;
        }
        if let Some(subdirs) = jobs.keys.get_mut(&job.key) {
            *subdirs |= job.subdirs;
            return true;
        }
        if jobs.queued.len() >= self.cap {
            return false;
        }
        jobs.keys.insert(job.key.clone(), job.subdirs);
        jobs.queued.push_back(job);
        drop(jobs);
        self.more.notify_one();
        true
    }

    /// The oldest job, waiting for one; `None` once the queue is closed.
    fn pop(&self) -> Option<Prefetch> {
        let mut jobs = self.jobs.lock();
        loop {
            if jobs.closed {
                return None;
            }
            if let Some(mut job) = jobs.queued.pop_front() {
                job.subdirs = jobs.keys.remove(&job.key).unwrap_or(job.subdirs);
                return Some(job);
            }
            self.more.wait(&mut jobs);
        }
    }

    /// Drops the queued jobs and ends the thread's wait.
    fn close(&self) {
        let mut jobs = self.jobs.lock();
        jobs.closed = true;
        jobs.queued.clear();
        jobs.keys.clear();
        drop(jobs);
        self.more.notify_all();
    }
}

fn read_lower_dir(path: &Path) -> io::Result<Option<LowerDir>> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if is_absent(&e) => {
            return Ok(Some(LowerDir {
                names: FastMap::default(),
                entries: Vec::new(),
                opaque: false,
                whiteouts: false,
            }));
        }
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut entries = list_dir(rd)?;
    read_overrides(path, &mut entries);
    let names: FastMap<OsString, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.clone(), i))
        .collect();
    // The listing tells whether the marker file is there; only the xattrs are left.
    let opaque =
        names.contains_key(OsStr::new(whiteout::OPAQUE_MARKER)) || whiteout::has_opaque_xattr(path);
    let whiteouts = entries.iter().any(|e| {
        e.name
            .as_bytes()
            .starts_with(whiteout::WHITEOUT_PREFIX.as_bytes())
    });
    Ok(Some(LowerDir {
        names,
        entries,
        opaque,
        whiteouts,
    }))
}

/// False once the kernel said it has no `getxattrat(2)`.
static GETXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Reads the ownership records of the files and directories of the listed directory
/// `dir`, relative to it (`getxattrat`): a lookup then needs no `getxattr` that walks
/// the whole path again. Entries whose record cannot be read so stay unknown.
fn read_overrides(dir: &Path, entries: &mut [LowerEntry]) {
    use std::os::fd::AsFd;
    use std::sync::atomic::Ordering;
    if !GETXATTRAT.load(Ordering::Relaxed) {
        return;
    }
    let flags =
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC;
    let Ok(fd) = nix::fcntl::open(dir, flags, nix::sys::stat::Mode::empty()) else {
        return;
    };
    for e in entries
        .iter_mut()
        .filter(|e| e.ft.is_file() || e.ft.is_dir())
    {
        e.ov = match crate::sys::getxattr_at(fd.as_fd(), &e.name, OVERRIDE_XATTR) {
            Ok(Some(v)) => OverrideStat::parse(&v).ok().map(Some),
            Ok(None) => Some(None),
            Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => {
                GETXATTRAT.store(false, Ordering::Relaxed);
                return;
            }
            Err(err) if ownership::is_unsupported(&err) => Some(None),
            Err(_) => None,
        };
    }
}

fn is_absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_carry_the_recorded_ownership_of_files_and_dirs() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        fs::create_dir_all(root.join("d/sub")).expect("mkdir");
        fs::write(root.join("d/owned"), b"x").expect("write");
        fs::write(root.join("d/plain"), b"x").expect("write");
        let rec = OverrideStat {
            uid: 5,
            gid: 6,
            mode: 0o4755,
            kind: None,
        };
        for p in ["d/owned", "d/sub"] {
            if let Err(e) = rec.write(&root.join(p)) {
                // A filesystem without user xattrs has nothing to list here.
                assert!(ownership::is_unsupported(&e), "{e}");
                return;
            }
        }
        let d = LowerCache::new()
            .dir(1, root, Path::new("d"))
            .expect("list")
            .expect("readable");
        let ov = |n: &str| d.entry(OsStr::new(n)).expect(n).ov;
        if !GETXATTRAT.load(std::sync::atomic::Ordering::Relaxed) {
            // A kernel before 6.13: lookups read the records themselves.
            assert_eq!(ov("owned"), None);
            return;
        }
        assert_eq!(ov("owned"), Some(Some(rec)));
        assert_eq!(ov("sub"), Some(Some(rec)));
        assert_eq!(ov("plain"), Some(None));
    }

    fn job(n: usize) -> Prefetch {
        Prefetch {
            key: (n, PathBuf::from(format!("d{n}"))),
            root: Arc::from(Path::new("/")),
            subdirs: false,
        }
    }

    /// Attributes come from a cached listing only: nothing before the directory was
    /// listed, the entry's own `lstat` (a directory's too) after, nothing when the
    /// cache is disabled (lower layers that may change).
    #[test]
    fn listed_answers_from_cached_listings_only() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        fs::create_dir_all(root.join("d/sub")).expect("mkdir");
        fs::write(root.join("d/f"), b"four").expect("write");
        let (f, sub) = (Path::new("d/f"), Path::new("d/sub"));

        let c = LowerCache::new();
        assert!(c.listed(0, f).is_none(), "not listed yet");
        c.dir(0, root, Path::new("d")).expect("list");
        let (m, _) = c.listed(0, f).expect("listed file");
        assert_eq!((m.len(), m.is_file()), (4, true));
        assert!(c.listed(0, sub).expect("listed dir").0.is_dir());
        assert!(c.listed(0, Path::new("d/none")).is_none());
        assert!(c.listed(1, f).is_none(), "another layer");

        let off = LowerCache::disabled();
        off.dir(0, root, Path::new("d")).expect("list");
        assert!(off.listed(0, f).is_none());
    }

    #[test]
    fn the_prefetch_queue_is_bounded_first_in_first_out_and_closes() {
        let q = PrefetchQueue::new(3);
        assert!((0..3).all(|n| q.push(job(n))));
        // Full: dropped, not queued.
        assert!(!q.push(job(3)));
        assert_eq!(q.pop().map(|j| j.key.0), Some(0));
        assert!(q.push(job(4)));
        let order: Vec<usize> = (0..3).filter_map(|_| q.pop()).map(|j| j.key.0).collect();
        assert_eq!(order, [1, 2, 4]);

        // A waiting worker wakes up to a job, then to the close.
        std::thread::scope(|s| {
            let worker = s.spawn(|| (q.pop().map(|j| j.key.0), q.pop().is_none()));
            assert!(q.push(job(5)));
            std::thread::sleep(std::time::Duration::from_millis(20));
            q.close();
            assert_eq!(worker.join().expect("worker"), (Some(5), true));
        });
        assert!(!q.push(job(6)), "a closed queue takes nothing");
    }

    #[test]
    fn a_listing_queued_twice_is_read_once_with_subdirectories_if_either_asked() {
        let q = PrefetchQueue::new(2);
        assert!(q.push(job(1)));
        assert!(q.push(Prefetch {
            subdirs: true,
            ..job(1)
        }));
        // Merged, so the queue still has room.
        assert!(q.push(job(2)));
        assert!(!q.push(job(3)));
        let popped: Vec<(usize, bool)> = (0..2)
            .filter_map(|_| q.pop())
            .map(|j| (j.key.0, j.subdirs))
            .collect();
        assert_eq!(popped, [(1, true), (2, false)]);
        // Once popped, the same listing may be queued again.
        assert!(q.push(job(1)));
    }

    /// Lists `a` of layer 1 while the listing is marked as being read ahead, which
    /// ends with `read` put in the cache (`None`: the read failed); returns whether
    /// the listing the request got has the file `f`.
    fn list_while_read_ahead(root: &Path, read: Option<LowerDir>) -> bool {
        let c = LowerCache::new();
        let key = (1, PathBuf::from("a"));
        std::thread::scope(|s| {
            // As the prefetch thread does: mark, read, put, unmark.
            c.shared.dirs.lock().reading.insert(key.clone());
            let reading = Reading {
                shared: &c.shared,
                key: &key,
            };
            let waiter = s.spawn(|| {
                let d = c.dir(1, root, Path::new("a")).expect("list");
                d.expect("readable").has(OsStr::new("f"))
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "the request did not wait");
            if let Some(read) = read {
                c.shared
                    .dirs
                    .lock()
                    .listed
                    .put(key.clone(), Some(Arc::new(read)));
            }
            drop(reading);
            waiter.join().expect("waiter")
        })
    }

    #[test]
    fn a_request_for_a_listing_being_read_ahead_waits_for_that_read() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        fs::create_dir_all(root.join("a")).expect("mkdir");
        fs::write(root.join("a/f"), b"x").expect("write");
        let without_f = LowerDir {
            names: FastMap::default(),
            entries: Vec::new(),
            opaque: false,
            whiteouts: false,
        };
        assert!(
            !list_while_read_ahead(root, Some(without_f)),
            "the request read the listing itself"
        );
        // A read ahead that failed leaves the request to read the listing itself.
        assert!(list_while_read_ahead(root, None));
    }

    /// Waits (up to 10 s) for the prefetch thread to cache `rel` of layer 1.
    fn wait_cached(c: &LowerCache, rel: &str) -> bool {
        let key = (1, PathBuf::from(rel));
        for _ in 0..1000 {
            if c.shared.dirs.lock().listed.contains(&key) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn prefetched_listings_are_read_in_the_background_and_served_from_the_cache() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        fs::create_dir_all(root.join("a/b/c")).expect("mkdir");
        fs::write(root.join("a/f"), b"x").expect("write");
        let c = LowerCache::new();
        c.prefetch(1, root, PathBuf::from("a"));
        // The directory and its subdirectories, not theirs.
        assert!(wait_cached(&c, "a"), "the listing was never read ahead");
        assert!(
            wait_cached(&c, "a/b"),
            "the subdirectory was never read ahead"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
        let key = (1, PathBuf::from("a/b/c"));
        assert!(!c.shared.dirs.lock().listed.contains(&key));
        // Asked for again (cached by now), it still reads its subdirectories ahead.
        c.prefetch(1, root, PathBuf::from("a/b"));
        assert!(
            wait_cached(&c, "a/b/c"),
            "a cached listing's subdirectories were skipped"
        );
        // Read before this file existed: the listing comes from the prefetch.
        fs::write(root.join("a/late"), b"x").expect("write");
        let a = c
            .dir(1, root, Path::new("a"))
            .expect("list")
            .expect("readable");
        assert!(a.has(OsStr::new("f")) && !a.has(OsStr::new("late")));

        // A disabled cache neither prefetches nor starts a thread.
        let off = LowerCache::disabled();
        off.prefetch(1, root, PathBuf::from("a"));
        assert!(off.prefetch.get().is_none());
        let a = off
            .dir(1, root, Path::new("a"))
            .expect("list")
            .expect("readable");
        assert!(a.has(OsStr::new("late")));
    }

    #[test]
    fn listings_say_which_names_a_layer_has_and_whether_it_is_opaque() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path();
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        fs::write(root.join("a/f"), b"x").expect("write");
        fs::write(root.join("a/.wh.gone"), b"").expect("write");
        fs::write(root.join("a/b/.wh..wh..opq"), b"").expect("write");
        fs::write(root.join("file"), b"x").expect("write");
        let c = LowerCache::new();

        let a = c
            .dir(1, root, Path::new("a"))
            .expect("list")
            .expect("readable");
        assert!(a.has(OsStr::new("f")) && a.has(OsStr::new("b")));
        assert!(a.has(OsStr::new(".wh.gone")) && !a.has(OsStr::new("gone")));
        assert!(!a.opaque);
        let mut listed: Vec<_> = a
            .entries
            .iter()
            .map(|e| {
                (
                    e.name.to_string_lossy().into_owned(),
                    e.ft.is_dir(),
                    e.meta.is_some(),
                )
            })
            .collect();
        listed.sort();
        let want = [
            (".wh.gone", false, true),
            ("b", true, true),
            ("f", false, true),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(n, d, m)| (n.to_string(), *d, *m))
            .collect();
        assert_eq!(listed, want);
        let b = c
            .dir(1, root, Path::new("a/b"))
            .expect("list")
            .expect("readable");
        assert!(b.opaque);
        let top = c
            .dir(1, root, Path::new(""))
            .expect("list")
            .expect("readable");
        assert!(top.has(OsStr::new("a")) && top.has(OsStr::new("file")));

        // Missing paths and files list as empty directories.
        for missing in ["nope", "file", "file/x"] {
            let d = c
                .dir(1, root, Path::new(missing))
                .expect("list")
                .expect("known");
            assert!(!d.has(OsStr::new("f")) && !d.opaque, "{missing}");
        }

        // Lower layers never change during a mount: a second call answers from the cache.
        fs::write(root.join("a/late"), b"x").expect("write");
        let again = c
            .dir(1, root, Path::new("a"))
            .expect("list")
            .expect("readable");
        assert!(!again.has(OsStr::new("late")));
        // Another layer index is another key.
        let other = c
            .dir(2, root, Path::new("a"))
            .expect("list")
            .expect("readable");
        assert!(other.has(OsStr::new("late")));
    }
}
