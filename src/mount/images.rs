//! `builds/<config>.tar`: images built on first open and shared by concurrent openers.
//!
//! Each config (`<name>.toml` in the configs dir) has one [`Slot`]: its state, the key of
//! its top layer, the cached [`TarLayout`] of its image and the openers waiting for a
//! build. Invariants:
//! - at most one build job per config runs at a time; openers arriving while it runs
//!   join its waiters, and every waiter is answered exactly once (ready, failed, or
//!   interrupted);
//! - no caller of [`Images::open`] blocks on a build: the job runs on its own thread
//!   (the build itself runs emerge in re-exec'd helper processes, never forking us)
//!   and answers the waiters when done;
//! - a cached layout is served only while the config still resolves to the same key,
//!   so an edited config or a changed seed rebuilds on the next open;
//! - resolutions are cached ([`ResolveCache`]) while every file they read is
//!   unchanged; a request that needs one not cached yet waits for it on a resolver
//!   thread ([`Images::when_resolved`], a bounded few), never on the
//!   caller's (a FUSE worker's) thread;
//! - the flattened index is persisted next to the top layer
//!   (`layers/<key>/image-<filters digest>.idx`) so reopening after a restart needs no
//!   tree walk;
//! - when the mount serves images by FUSE passthrough ([`Images::enable_files`]), each
//!   finished image is also kept as a file, `<conf_root>/images/<top key>-<digest>.tar`,
//!   written in the background (after its build, or after an open that found none) to
//!   a temp name, synced and renamed: [`Images::image_file`] gives only complete files.
//!
//! The lock over the slots is never held across I/O on layers, a build, or a reply.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::image_file::{remove_image_files, write_image_file};
use super::signals::signal_pending;
use super::slots::{self, Slot, State, Status, Waiter};
use crate::builder::build::{self, BuildError, BuildOptions, HostDirs};
use crate::builder::config::cache::ResolveCache;
use crate::builder::config::{CliOverrides, ConfigError, Defaults, ResolvedConfig};
use crate::builder::namespace::IdMapping;
use crate::layers::layout::ConfRoot;
use crate::layers::store::{BuildKey, Store, StoreError};
use crate::layers::tar::{PackOptions, TarError, TarLayout};

/// How often a queued build checks whether the seed is free.
const QUEUE_POLL: Duration = Duration::from_millis(200);

/// How long a listing of the package dirs waits for configs being resolved.
pub const PKGDIRS_WAIT: Duration = Duration::from_millis(200);

/// How often waiting openers are checked for pending signals.
pub const INTERRUPT_POLL: Duration = Duration::from_millis(200);

/// Why an image could not be produced (written to the config's log).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("config {name}")]
    Config {
        name: String,
        #[source]
        source: Arc<ConfigError>,
    },
    #[error("building {name}")]
    Build {
        name: String,
        #[source]
        source: BuildError,
    },
    #[error("layer store of {name}")]
    Store {
        name: String,
        #[source]
        source: StoreError,
    },
    #[error("layer {key} of {name} vanished from the store during the build")]
    Vanished { name: String, key: BuildKey },
    #[error("image layout of {name}")]
    Layout {
        name: String,
        #[source]
        source: TarError,
    },
    #[error("cannot lock the seed {path}")]
    SeedLock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {name}: the mount was stopped while the build was queued")]
    Stopped { name: String },
    #[error("cannot write the log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Everything a build needs that does not change while mounted.
#[derive(Debug)]
pub struct BuildEnv {
    pub conf_root: PathBuf,
    /// The configs dir (`<name>.toml` files).
    pub configs: PathBuf,
    pub defaults: Defaults,
    pub mapping: IdMapping,
    /// `--cache`: the layer cache (else the config's `cache`).
    pub cache: Option<crate::cache::CacheRef>,
    pub source_date_epoch: Option<i64>,
}

/// A config resolved to its layer keys.
#[derive(Debug)]
struct Plan {
    cfg: Arc<ResolvedConfig>,
    dirs: HostDirs,
    /// Every layer's key, build order (the top layer last).
    keys: Vec<BuildKey>,
}

impl Plan {
    fn top(&self) -> Option<&BuildKey> {
        self.keys.last()
    }
}

/// Called (off any lock) when a config's image becomes ready: the mount invalidates
/// the kernel's cached size.
pub type ReadyHook = Box<dyn Fn(&str) + Send + Sync>;

/// The images of every config, and their build jobs.
pub struct Images {
    env: Arc<BuildEnv>,
    slots: Mutex<HashMap<String, Slot>>,
    on_ready: Mutex<Option<Arc<ReadyHook>>>,
    /// Build jobs started (numbers them in the log).
    jobs: std::sync::atomic::AtomicU64,
    /// Set by [`Images::shutdown`]: queued jobs give up.
    stopping: std::sync::atomic::AtomicBool,
    /// Finished images are kept as files ([`Images::enable_files`]).
    files: std::sync::atomic::AtomicBool,
    /// Image files being written.
    writing: Mutex<std::collections::HashSet<PathBuf>>,
    /// Config resolutions, kept while the files they read are unchanged.
    resolutions: ResolveCache,
    /// Requests waiting for a config's resolution on a resolver thread, by config
    /// ([`Images::when_resolved`]).
    resolving: Mutex<Resolving>,
    /// Notified when a config leaves `resolving.waiting`.
    resolved: parking_lot::Condvar,
}

/// A request answered once its config's resolution is cached.
pub type Deferred = Box<dyn FnOnce() + Send>;

/// Most resolver threads at a time; further configs wait their turn.
const RESOLVERS: usize = 8;

/// The configs being resolved or waiting for a resolver thread.
#[derive(Default)]
struct Resolving {
    /// Each config's waiting requests; a config is a key until its resolution ends.
    waiting: HashMap<String, Vec<Deferred>>,
    /// Configs waiting for a resolver thread, oldest first.
    queue: std::collections::VecDeque<String>,
    threads: usize,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").field("env", &self.env).finish()
    }
}

impl Images {
    pub fn new(env: BuildEnv) -> Arc<Images> {
        let resolutions =
            ResolveCache::new(CliOverrides::default(), Arc::new(env.defaults.clone()));
        Arc::new(Images {
            resolutions,
            resolving: Mutex::new(Resolving::default()),
            resolved: parking_lot::Condvar::new(),
            env: Arc::new(env),
            slots: Mutex::new(HashMap::new()),
            on_ready: Mutex::new(None),
            jobs: std::sync::atomic::AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            files: std::sync::atomic::AtomicBool::new(false),
            writing: Mutex::new(std::collections::HashSet::new()),
        })
    }

    pub fn env(&self) -> &BuildEnv {
        &self.env
    }

    pub fn set_ready_hook(&self, hook: ReadyHook) {
        *self.on_ready.lock() = Some(Arc::new(hook));
    }

    /// The config file of `name`.
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.env.configs.join(format!("{name}.toml"))
    }

    /// The live log of `name`'s latest build.
    pub fn log_path(&self, name: &str) -> PathBuf {
        HostDirs::plain(&self.env.conf_root)
            .builds
            .join(format!("{name}.log"))
    }

    /// The config names: every `*.toml` in the configs dir, sorted.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.env.configs)? {
            let e = e?;
            let n = e.file_name();
            let Some(n) = n.to_str() else { continue };
            if let Some(stem) = n.strip_suffix(".toml") {
                if !stem.is_empty() && !stem.starts_with('.') && e.path().is_file() {
                    v.push(stem.to_owned());
                }
            }
        }
        v.sort();
        Ok(v)
    }

    /// The binary package dirs the configs build into (every layer's, with the
    /// `_pkgdir` override applied); configs that do not resolve are skipped. Configs
    /// not resolved yet are resolved on resolver threads, waited for at most
    /// [`PKGDIRS_WAIT`]: one still resolving then (a slow config) is left out until
    /// it is done, so it never holds up a listing for long.
    pub fn pkgdirs(self: &Arc<Self>) -> Vec<PathBuf> {
        let names = self.names().unwrap_or_default();
        for name in &names {
            self.when_resolved(name, Box::new(|| {}));
        }
        let deadline = std::time::Instant::now() + PKGDIRS_WAIT;
        let mut resolving = self.resolving.lock();
        while names.iter().any(|n| resolving.waiting.contains_key(n))
            && !self
                .resolved
                .wait_until(&mut resolving, deadline)
                .timed_out()
        {}
        drop(resolving);
        let mut v = Vec::new();
        for name in names {
            let Some(r) = self.resolutions.cached(&self.config_path(&name)) else {
                continue;
            };
            let Ok(cfg) = r else { continue };
            let dirs = HostDirs::new(&self.env.conf_root, &cfg);
            for c in cfg.build_order() {
                let p = dirs.pkgdir(c);
                if !v.contains(&p) {
                    v.push(p);
                }
            }
        }
        v
    }

    /// Whether `name`'s config resolution is cached and current, so that
    /// [`Images::status`] and [`Images::open`] answer without reading a config.
    pub fn is_resolved(&self, name: &str) -> bool {
        self.resolutions.cached(&self.config_path(name)).is_some()
    }

    /// Runs `then` once `name`'s resolution is cached: now, on the caller's thread,
    /// when it is; else on a resolver thread (one config at a time each, at most
    /// [`RESOLVERS`] of them; requests arriving meanwhile join the config's turn), so
    /// a request thread never reads a config.
    pub fn when_resolved(self: &Arc<Self>, name: &str, then: Deferred) {
        if self.is_resolved(name) {
            return then();
        }
        {
            let mut r = self.resolving.lock();
            if let Some(waiting) = r.waiting.get_mut(name) {
                waiting.push(then);
                return;
            }
            r.waiting.insert(name.to_owned(), vec![then]);
            if r.threads >= RESOLVERS {
                r.queue.push_back(name.to_owned());
                return;
            }
            r.threads += 1;
        }
        let me = Arc::clone(self);
        let owned = name.to_owned();
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || me.resolver(owned));
        if let Err(e) = spawned {
            // Answer here rather than never: the request resolves on this thread.
            tracing::error!("cannot start a thread to resolve {name}: {e}");
            let waiting = {
                let mut r = self.resolving.lock();
                r.threads -= 1;
                r.waiting.remove(name).unwrap_or_default()
            };
            self.resolved.notify_all();
            for then in waiting {
                then();
            }
        }
    }

    /// A resolver thread: resolves `name`, answers its requests, then takes the next
    /// config waiting for a turn until none is left.
    fn resolver(self: Arc<Self>, mut name: String) {
        loop {
            let _ = self.resolutions.resolve(&self.config_path(&name));
            let (waiting, next) = {
                let mut r = self.resolving.lock();
                let waiting = r.waiting.remove(&name).unwrap_or_default();
                let next = r.queue.pop_front();
                if next.is_none() {
                    r.threads -= 1;
                }
                (waiting, next)
            };
            self.resolved.notify_all();
            for then in waiting {
                then();
            }
            match next {
                Some(n) => name = n,
                None => return,
            }
        }
    }

    fn plan(&self, name: &str) -> Result<Plan, ImageError> {
        let cfg = self
            .resolutions
            .resolve(&self.config_path(name))
            .map_err(|source| ImageError::Config {
                name: name.to_owned(),
                source,
            })?;
        let dirs = HostDirs::new(&self.env.conf_root, &cfg);
        let store = self.store(name, &dirs)?;
        let keys = build::plan_jobs(&cfg, &store, &dirs)
            .map_err(|source| ImageError::Build {
                name: name.to_owned(),
                source,
            })?
            .into_iter()
            .map(|j| j.key)
            .collect();
        Ok(Plan { cfg, dirs, keys })
    }

    /// `name`'s resolved config when its resolution is cached and current (`None`
    /// otherwise, or when it does not resolve); never reads a config.
    pub fn resolved(&self, name: &str) -> Option<Arc<ResolvedConfig>> {
        self.resolutions.cached(&self.config_path(name))?.ok()
    }

    /// `name`'s resolved config, its host dirs and its layers' keys (build order, the
    /// top last): what its image is made of.
    pub fn layer_plan(
        &self,
        name: &str,
    ) -> Result<(Arc<ResolvedConfig>, HostDirs, Vec<BuildKey>), ImageError> {
        let p = self.plan(name)?;
        Ok((p.cfg, p.dirs, p.keys))
    }

    fn store(&self, name: &str, dirs: &HostDirs) -> Result<Store, ImageError> {
        Store::open(&dirs.conf_root).map_err(|source| ImageError::Store {
            name: name.to_owned(),
            source,
        })
    }

    /// The state of `name`'s image. A ready image whose config now resolves to another
    /// key is no longer ready; an image all of whose layers exist (built by an earlier
    /// mount or `gentree-fs build`) is ready once its persisted index loads.
    pub fn status(&self, name: &str) -> Status {
        {
            let slots = self.slots.lock();
            if let Some(s) = slots.get(name) {
                if s.state == Some(State::Building) {
                    return Status {
                        state: if s.queued {
                            State::Queued
                        } else {
                            State::Building
                        },
                        key: s.key.clone(),
                        image: None,
                    };
                }
            }
        }
        let plan = match self.plan(name) {
            Ok(p) => p,
            Err(_) => {
                let state = match self.recorded_state(name) {
                    Some(State::Failed) => State::Failed,
                    _ => State::Absent,
                };
                return Status {
                    state,
                    key: None,
                    image: None,
                };
            }
        };
        let key = plan.top().cloned();
        let cached = {
            let slots = self.slots.lock();
            slots.get(name).and_then(|s| match (&s.image, &s.key) {
                (Some(img), Some(k)) if Some(k) == key.as_ref() => Some(img.clone()),
                _ => None,
            })
        };
        if let Some(image) = cached {
            return Status {
                state: State::Ready,
                key,
                image: Some(image),
            };
        }
        // Not in memory: the layers may exist with a persisted index.
        if let Ok(Some(image)) = self.load_existing(name, &plan) {
            let image = Arc::new(image);
            let file = self.file_path(name, &plan).ok();
            let mut slots = self.slots.lock();
            let s = slots.entry(name.to_owned()).or_default();
            if s.state != Some(State::Building) {
                s.state = Some(State::Ready);
                s.key = key.clone();
                s.image = Some(image.clone());
                s.file = file;
                return Status {
                    state: State::Ready,
                    key,
                    image: Some(image),
                };
            }
        }
        let state = match self.recorded_state(name) {
            Some(State::Failed) => State::Failed,
            _ => State::Absent,
        };
        Status {
            state,
            key,
            image: None,
        }
    }

    fn recorded_state(&self, name: &str) -> Option<State> {
        self.slots.lock().get(name).and_then(|s| s.state)
    }

    /// The image of a plan whose layers all exist, from its persisted index only
    /// (`None` when a layer or the index is missing).
    fn load_existing(&self, name: &str, plan: &Plan) -> Result<Option<TarLayout>, ImageError> {
        let Some(top) = plan.top() else {
            return Ok(None);
        };
        let store = self.store(name, &plan.dirs)?;
        let idx = self.index_path(name, &store, top, &plan.cfg)?;
        if !idx.is_file() {
            return Ok(None);
        }
        let Some(roots) = self.layer_roots(name, &store, &plan.keys)? else {
            return Ok(None);
        };
        match TarLayout::load(&idx) {
            Ok(mut l) => {
                // The store may have moved since the index was written.
                if l.layers() != roots.as_slice() && l.relocate(roots).is_err() {
                    return Ok(None);
                }
                Ok(Some(l))
            }
            Err(e) => {
                tracing::warn!("{}: ignoring unreadable index: {e}", idx.display());
                Ok(None)
            }
        }
    }

    /// The roots of the plan's layers, lowest first; `None` if one is not built.
    fn layer_roots(
        &self,
        name: &str,
        store: &Store,
        keys: &[BuildKey],
    ) -> Result<Option<Vec<PathBuf>>, ImageError> {
        let mut roots = Vec::new();
        for k in keys {
            match store.lookup(k).map_err(|source| ImageError::Store {
                name: name.to_owned(),
                source,
            })? {
                Some(l) => roots.push(l.root()),
                None => return Ok(None),
            }
        }
        Ok(Some(roots))
    }

    fn pack_options(&self, name: &str, cfg: &ResolvedConfig) -> Result<PackOptions, ImageError> {
        Ok(PackOptions {
            filters: build::image_filters(cfg).map_err(|source| ImageError::Build {
                name: name.to_owned(),
                source,
            })?,
            source_date_epoch: self.env.source_date_epoch,
        })
    }

    /// Where the index of the image over `top` is kept: the image depends on the layer
    /// stack (the top key covers it) and on the image's filters and epoch (not in it).
    fn index_path(
        &self,
        name: &str,
        store: &Store,
        top: &BuildKey,
        cfg: &ResolvedConfig,
    ) -> Result<PathBuf, ImageError> {
        let digest = self.image_digest(name, cfg)?;
        Ok(store.layer_dir(top).join(format!("image-{digest}.idx")))
    }

    /// What the image over a top layer depends on besides it: its filters and epoch.
    fn image_digest(&self, name: &str, cfg: &ResolvedConfig) -> Result<String, ImageError> {
        let opts = self.pack_options(name, cfg)?;
        let mut h = Sha256::new();
        h.update(format!("{:?}\n{:?}", cfg.tar_filters, opts.source_date_epoch).as_bytes());
        Ok(crate::layers::digest::hex(&h.finalize()[..8]))
    }

    /// Where the image of `plan` is kept as a file: `<conf_root>/images/<top key>-<image
    /// digest>.tar`, content-addressed like the index (`clean-builds` removes the files
    /// whose top layer is gone, see [`crate::builder::clean`]).
    fn file_path(&self, name: &str, plan: &Plan) -> Result<PathBuf, ImageError> {
        let top = plan.top().ok_or_else(|| ImageError::Vanished {
            name: name.to_owned(),
            key: BuildKey::from_digest(&[0; 32]),
        })?;
        let digest = self.image_digest(name, &plan.cfg)?;
        Ok(ConfRoot::new(&self.env.conf_root).image_file(top, &digest))
    }

    /// Keeps finished images as files from now on (the mount negotiated FUSE
    /// passthrough, which serves them by the kernel from such a file).
    pub fn enable_files(&self) {
        self.files.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops keeping image files (FUSE passthrough was refused).
    pub fn disable_files(&self) {
        self.files
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    fn files_enabled(&self) -> bool {
        self.files.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The file of `name`'s image `image`, opened, when it is complete; otherwise
    /// starts writing it in the background (if files are kept) and gives `None`: the
    /// caller serves the image from its layout meanwhile. Never blocks on the write.
    pub fn image_file(self: &Arc<Self>, name: &str, image: &Arc<TarLayout>) -> Option<File> {
        let path = {
            let slots = self.slots.lock();
            let s = slots.get(name)?;
            match &s.image {
                Some(i) if Arc::ptr_eq(i, image) => s.file.clone()?,
                _ => return None,
            }
        };
        if let Ok(f) = File::open(&path) {
            if f.metadata().is_ok_and(|m| m.len() == image.size()) {
                return Some(f);
            }
        }
        self.write_file_later(path, image.clone());
        None
    }

    /// Writes `image` to `path` on a thread of its own, unless files are not kept or
    /// that file is being written already.
    fn write_file_later(self: &Arc<Self>, path: PathBuf, image: Arc<TarLayout>) {
        if !self.files_enabled() || !self.writing.lock().insert(path.clone()) {
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("image-file".into())
            .spawn(move || {
                match write_image_file(&path, &image) {
                    Ok(()) => tracing::info!("image file {} written", path.display()),
                    Err(e) => tracing::warn!("{e}: {}", e.source),
                }
                me.writing.lock().remove(&path);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a thread to write an image file: {e}");
            self.writing.lock().clear();
        }
    }

    /// Opens `name`'s image: answers `waiter` at once when the image is ready, else
    /// makes it wait for the (one) build job of that config, starting it if needed.
    pub fn open(self: &Arc<Self>, name: &str, waiter: Box<dyn Waiter>) {
        let Some(waiter) = self.join_running(name, waiter) else {
            return;
        };
        // Not building: serve what is ready for the current key, else start a job.
        let status = self.status(name);
        if let Some(image) = status.image {
            return waiter.ready(image, false);
        }
        if !self
            .slots
            .lock()
            .entry(name.to_owned())
            .or_default()
            .wait(waiter)
        {
            return;
        }
        let me = Arc::clone(self);
        let owned = name.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("build-{name}"))
            .spawn(move || me.run_job(&owned));
        if let Err(e) = spawned {
            tracing::error!("cannot start a build thread for {name}: {e}");
            self.finish(name, None, Err(libc::EAGAIN));
        }
    }

    /// Adds `waiter` to a running job; gives it back when none runs.
    fn join_running(&self, name: &str, waiter: Box<dyn Waiter>) -> Option<Box<dyn Waiter>> {
        match self.slots.lock().get_mut(name) {
            Some(s) => s.join(waiter),
            None => Some(waiter),
        }
    }

    /// One build job: resolve, build what is missing, lay out the image, answer.
    fn run_job(self: &Arc<Self>, name: &str) {
        let n = self.jobs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tracing::info!("{name}: build job {n} started");
        let log = self.log_path(name);
        let result = self.job(name, &log);
        match result {
            Ok((key, image, file)) => {
                tracing::info!("{name}: image ready ({} bytes)", image.size());
                let image = Arc::new(image);
                self.finish(name, Some((key, file.clone())), Ok(image.clone()));
                // The waiters read through the layout (direct I/O); later opens get
                // the file once it is written.
                self.write_file_later(file, image);
            }
            Err(e) => {
                let text = crate::builder::crash::log_failure(&log, &e);
                tracing::error!("{name}: {}", text.trim_end());
                self.finish(name, None, Err(libc::EIO));
            }
        }
    }

    fn job(&self, name: &str, log: &Path) -> Result<(BuildKey, TarLayout, PathBuf), ImageError> {
        let log_err = |source| ImageError::Log {
            path: log.to_path_buf(),
            source,
        };
        if let Some(d) = log.parent() {
            std::fs::create_dir_all(d).map_err(log_err)?;
        }
        crate::builder::crash::start_log(log, &format!("gentree-fs: image {name}\n"))
            .map_err(log_err)?;
        let plan = self.plan(name)?;
        let Some(top) = plan.top().cloned() else {
            return Err(ImageError::Vanished {
                name: name.to_owned(),
                key: BuildKey::from_digest(&[0; 32]),
            });
        };
        let store = self.store(name, &plan.dirs)?;
        let roots = match self.layer_roots(name, &store, &plan.keys)? {
            Some(r) => {
                append(log, &format!("all layers present (top {})\n", top.short()))
                    .map_err(log_err)?;
                r
            }
            None => {
                self.wait_for_seed(name, &plan, log)?;
                append(log, &format!("building (top layer {})\n", top.short())).map_err(log_err)?;
                let opts = BuildOptions {
                    rebuild: false,
                    no_network: false,
                    mapping: self.env.mapping.clone(),
                    cache: crate::cache::configured(
                        self.env.cache.as_ref(),
                        plan.cfg.cache.as_deref(),
                    ),
                };
                let report = build::build(&plan.cfg, &plan.dirs, &opts, log).map_err(|source| {
                    ImageError::Build {
                        name: name.to_owned(),
                        source,
                    }
                })?;
                for (layer, outcome) in &report.layers {
                    let what = outcome.word();
                    let line = format!(
                        "{what} layer {} ({})\n",
                        layer.meta.buildname,
                        layer.meta.key.short()
                    );
                    append(log, &line).map_err(log_err)?;
                }
                report.image_layers()
            }
        };
        let idx = self.index_path(name, &store, &top, &plan.cfg)?;
        let file = self.file_path(name, &plan)?;
        if let Ok(Some(image)) = self.load_existing(name, &plan) {
            append(log, "image index loaded\n").map_err(log_err)?;
            return Ok((top, image, file));
        }
        let opts = self.pack_options(name, &plan.cfg)?;
        let image = TarLayout::flattened(&roots, &opts).map_err(|source| ImageError::Layout {
            name: name.to_owned(),
            source,
        })?;
        if let Err(e) = image.save(&idx) {
            // Only the next mount's first open is slower.
            tracing::warn!("{name}: cannot save the image index: {e}");
        }
        append(log, &format!("image ready: {} bytes\n", image.size())).map_err(log_err)?;
        Ok((top, image, file))
    }

    /// Waits, shown as [`State::Queued`], while another build holds the seed's lock
    /// (`build` takes it for the whole build; flock is per open file, so it cannot be
    /// handed over: this waits until it is free, and `build` then takes it).
    fn wait_for_seed(&self, name: &str, plan: &Plan, log: &Path) -> Result<(), ImageError> {
        let path = crate::builder::build::seed_lock_path(&plan.dirs, &plan.cfg.seed);
        let mut announced = false;
        loop {
            match crate::layers::store::try_lock_exclusive(&path) {
                Ok(Some(_free)) => break,
                Ok(None) => {}
                Err(source) => return Err(ImageError::SeedLock { path, source }),
            }
            if !announced {
                announced = true;
                self.set_queued(name, true);
                tracing::info!("{name}: queued (seed {} is busy)", plan.cfg.seed);
                let line = format!("queued: another build holds seed {}\n", plan.cfg.seed);
                append(log, &line).map_err(|source| ImageError::Log {
                    path: log.to_path_buf(),
                    source,
                })?;
            }
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ImageError::Stopped {
                    name: name.to_owned(),
                });
            }
            std::thread::sleep(QUEUE_POLL);
        }
        if announced {
            self.set_queued(name, false);
        }
        Ok(())
    }

    fn set_queued(&self, name: &str, queued: bool) {
        if let Some(s) = self.slots.lock().get_mut(name) {
            s.queued = queued;
        }
    }

    /// Ends a job: records the outcome and answers every waiter, off the lock.
    fn finish(&self, name: &str, key: Option<(BuildKey, PathBuf)>, r: Result<Arc<TarLayout>, i32>) {
        let waiters = self
            .slots
            .lock()
            .entry(name.to_owned())
            .or_default()
            .finish(key, &r);
        if let Ok(img) = &r {
            // Before any waiter is answered: the kernel may hold size 0 (or an older
            // image's size and pages) for the inode.
            self.invalidate(name);
            self.mark_served(name, img);
        }
        slots::answer(waiters, &r);
    }

    /// Answers EINTR to every waiter with a signal pending (FUSE_INTERRUPT never
    /// reaches us: fuser 0.18 answers it ENOSYS). The build goes on.
    pub fn check_interrupts(&self) {
        let interrupted: Vec<Box<dyn Waiter>> = self
            .slots
            .lock()
            .values_mut()
            .flat_map(|s| s.take_interrupted(signal_pending))
            .collect();
        for w in interrupted {
            tracing::debug!("open by {} interrupted", w.pid());
            w.fail(libc::EINTR);
        }
    }

    /// True when the kernel's view of `name`'s inode (size, cached pages) is known
    /// to be `image`'s: it was invalidated after `image` became the config's image
    /// ([`Images::mark_served`]). Otherwise the kernel may still hold the size and
    /// pages of the image before (a config edited, then edited back), and an open
    /// must first invalidate them.
    pub fn is_served(&self, name: &str, image: &Arc<TarLayout>) -> bool {
        self.slots
            .lock()
            .get(name)
            .and_then(|s| s.served.as_ref())
            .is_some_and(|p| Arc::ptr_eq(p, image))
    }

    /// Records that the kernel's view of `name` was invalidated for `image`.
    pub fn mark_served(&self, name: &str, image: &Arc<TarLayout>) {
        self.slots.lock().entry(name.to_owned()).or_default().served = Some(image.clone());
    }

    /// Drops the kernel's cached attributes and pages of `name`'s image (the hook of
    /// [`Images::set_ready_hook`]). Never call it from a FUSE handler.
    pub fn invalidate(&self, name: &str) {
        let hook = self.on_ready.lock().clone();
        if let Some(h) = hook {
            h(name);
        }
    }

    /// True while any build job runs.
    pub fn any_building(&self) -> bool {
        self.slots
            .lock()
            .values()
            .any(|s| s.state == Some(State::Building))
    }

    /// After unmounting: stops running builds so that no helper process or half layer
    /// is left. Kills our child processes (the builds' namespace helpers; their own
    /// children die with them by PDEATHSIG), then waits up to `timeout` for the jobs
    /// to clean up their unfinished layers and end.
    pub fn shutdown(&self, timeout: Duration) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if !self.any_building() {
            return;
        }
        tracing::info!("stopping the running builds");
        let start = std::time::Instant::now();
        while self.any_building() && start.elapsed() < timeout {
            for pid in child_pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.any_building() {
            tracing::warn!("builds still running after {timeout:?}; exiting anyway");
        }
    }

    /// `rm builds/<name>.tar`: forgets the image and removes the config's own (top)
    /// layer, so the next open rebuilds it, unless another config in the configs dir
    /// builds on that layer too, or might (a config not resolved yet). Base layers always stay (other configs share them;
    /// `clean-builds` collects what nothing uses). EBUSY while building.
    pub fn remove(self: &Arc<Self>, name: &str) -> io::Result<()> {
        if !self.config_path(name).is_file() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        {
            let mut slots = self.slots.lock();
            let s = slots.entry(name.to_owned()).or_default();
            if s.state == Some(State::Building) {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            s.state = Some(State::Absent);
            s.image = None;
            s.key = None;
        }
        // A config that does not resolve has no layer of its own to drop.
        let Ok(plan) = self.plan(name) else {
            return Ok(());
        };
        let Some(top) = plan.top() else { return Ok(()) };
        let Some(others) = self.keys_of_others(name) else {
            tracing::info!(
                "{name}: image dropped; layer {} kept (other configs are still being resolved)",
                top.short()
            );
            return Ok(());
        };
        if let Some(user) = others.get(top) {
            tracing::info!(
                "{name}: image dropped; layer {} kept (used by {user})",
                top.short()
            );
            return Ok(());
        }
        let store = Store::open(&plan.dirs.conf_root).map_err(store_io)?;
        let _lock = store.lock(top).map_err(store_io)?;
        store.remove(top).map_err(store_io)?;
        // Its image files too: a rebuild under the same key need not give the same bytes.
        remove_image_files(&self.env.conf_root, top);
        tracing::info!("{name}: image dropped (layer {} removed)", top.short());
        Ok(())
    }

    /// The layer keys of every config but `name`, each with one config using it;
    /// `None` when one is not resolved yet (it is then resolved in the background:
    /// a slow config must not hold up an unlink, which the kernel runs with builds/
    /// locked).
    fn keys_of_others(self: &Arc<Self>, name: &str) -> Option<HashMap<BuildKey, String>> {
        let others: Vec<String> = self
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o != name)
            .collect();
        let unresolved: Vec<&String> = others.iter().filter(|o| !self.is_resolved(o)).collect();
        if !unresolved.is_empty() {
            for o in unresolved {
                self.when_resolved(o, Box::new(|| {}));
            }
            return None;
        }
        let mut used = HashMap::new();
        for other in others {
            if let Ok(p) = self.plan(&other) {
                for k in p.keys {
                    used.entry(k).or_insert_with(|| other.clone());
                }
            }
        }
        Some(used)
    }
}

/// Our child processes (every thread's), from `/proc/self/task/*/children`.
fn child_pids() -> Vec<i32> {
    let mut v = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return v;
    };
    for t in tasks.filter_map(Result::ok) {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            v.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    v
}

/// The errno of the I/O error under `e`, or EIO when there is none (logged: the
/// kernel sees only the errno).
fn store_io(e: StoreError) -> io::Error {
    tracing::warn!("{e}");
    let os = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    io::Error::from_raw_os_error(os.unwrap_or(libc::EIO))
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?
        .write_all(text.as_bytes())
}
