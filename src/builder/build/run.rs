//! Running a build: each layer reused or built in a namespace, then published.

use std::fs;
use std::path::{Path, PathBuf};

use super::cached::{fetch_cached, push_cached};
use super::{
    BuildError, HostDirs, KeyPlanner, LayerJob, LayerPaths, WORLD, layer_plan, lock_seed,
    lower_keys, merged_world,
};
use crate::builder::config::ResolvedConfig;
use crate::builder::key::LAYER_FORMAT_VERSION;
use crate::builder::namespace::{self, IdMapping, Step};
use crate::builder::repos::PackageInput;
use crate::layers::normalize;
use crate::layers::ownership::HostOwner;
use crate::layers::store::{self, Layer, LayerMeta, Store};

/// What happened to one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reused,
    /// Pulled from the layer cache (no emerge ran).
    Pulled,
    Built,
}

impl Outcome {
    /// How build summaries name it.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Reused => "reused",
            Outcome::Pulled => "pulled",
            Outcome::Built => "built",
        }
    }
}

/// The result of a build: every layer (build order) and what happened to it.
#[derive(Debug)]
pub struct BuildReport {
    pub layers: Vec<(Layer, Outcome)>,
    /// The build epoch: layers are clamped to it, and so is the image.
    pub epoch: i64,
}

impl BuildReport {
    /// The image's layer trees, lowest first.
    pub fn image_layers(&self) -> Vec<PathBuf> {
        self.layers.iter().map(|(l, _)| l.root()).collect()
    }
}

/// Options of [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Rebuild the top layer even if a layer with its key exists (`--rebuild`);
    /// per-layer `rebuild = true` does the same for that layer.
    pub rebuild: bool,
    /// Each layer's build in a network namespace of its own (`build --no-network`).
    pub no_network: bool,
    pub mapping: IdMapping,
    /// The layer cache: missing layers are looked up there, built ones pushed.
    pub cache: Option<std::sync::Arc<crate::cache::Cache>>,
}

/// Builds (or reuses) every layer of `top`. `log` receives the output of every
/// namespaced run (and is shown on stderr).
pub fn build(
    top: &ResolvedConfig,
    dirs: &HostDirs,
    opts: &BuildOptions,
    log: &Path,
) -> Result<BuildReport, BuildError> {
    let store = Store::open(&dirs.conf_root)?;
    // Digesting the seed and the repositories can take a while the first time.
    tracing::info!("{}: computing layer keys", top.buildname);
    let keys_started = std::time::Instant::now();
    let mut planner = KeyPlanner::new(top, dirs)?;
    tracing::debug!("keys planned in {:.1?}", keys_started.elapsed());
    let _seed_lock = lock_seed(dirs, &top.seed)?;
    if top.clean_seed {
        let (upper, work) = dirs.seed_upper(&top.seed);
        for p in [&upper, &work] {
            store::remove_tree(p).map_err(BuildError::io("cannot clean the seed overlay", p))?;
        }
    }
    // Portage's work files of a build killed before it could clean up, and after this
    // one whatever its end (a failed build's can fill the disk).
    let (seed_upper, _) = dirs.seed_upper(&top.seed);
    crate::builder::crash::remove_portage_work(&seed_upper);
    let built = build_jobs(top, &mut planner, &store, dirs, opts, log);
    crate::builder::crash::remove_portage_work(&seed_upper);
    let done = built?;
    planner.save_caches();
    Ok(BuildReport {
        layers: done,
        epoch: planner.epoch().secs,
    })
}

/// Keys, then reuses or builds, each layer of `top`, bases first.
fn build_jobs(
    top: &ResolvedConfig,
    planner: &mut KeyPlanner<'_>,
    store: &Store,
    dirs: &HostDirs,
    opts: &BuildOptions,
    log: &Path,
) -> Result<Vec<(Layer, Outcome)>, BuildError> {
    let mut jobs: Vec<LayerJob<'_>> = Vec::new();
    let mut done: Vec<(Layer, Outcome)> = Vec::new();
    let order = top.build_order();
    let n = order.len();
    for (i, cfg) in order.into_iter().enumerate() {
        let lower_keys = lower_keys(cfg, &jobs)?;
        let (key, packages) = planner.key(cfg, &lower_keys)?;
        let job = LayerJob {
            config: cfg,
            key,
            lower_keys,
        };
        let forced = cfg.rebuild || (opts.rebuild && i + 1 == n);
        if !forced {
            if let Some(layer) = store.lookup(&job.key)? {
                tracing::info!(
                    "[{}/{n}] {}: reusing layer {}",
                    i + 1,
                    cfg.buildname,
                    job.key.short()
                );
                jobs.push(job);
                done.push((layer, Outcome::Reused));
                continue;
            }
        }
        let meta = layer_meta(&job, packages);
        if let Some(layer) = (!forced)
            .then(|| fetch_cached(opts, store, &meta))
            .flatten()
        {
            tracing::info!(
                "[{}/{n}] {}: pulled layer {} from the cache",
                i + 1,
                cfg.buildname,
                job.key.short()
            );
            jobs.push(job);
            done.push((layer, Outcome::Pulled));
            continue;
        }
        tracing::info!(
            "[{}/{n}] {}: building layer {}",
            i + 1,
            cfg.buildname,
            job.key.short()
        );
        let world = merged_world(&job, &jobs, &done);
        let run = LayerRun {
            dirs,
            store,
            opts,
            log,
            ephemeral_seed: top.ephemeral_seed,
            world,
            epoch: planner.epoch().secs,
        };
        let started = std::time::Instant::now();
        let layer = build_layer(&job, meta, &done, &run)?;
        tracing::info!(
            "[{}/{n}] {}: published layer {} in {:.0?}",
            i + 1,
            cfg.buildname,
            job.key.short(),
            started.elapsed()
        );
        push_cached(opts, &layer);
        jobs.push(job);
        done.push((layer, Outcome::Built));
    }
    Ok(done)
}

/// What one layer's build needs besides its job.
struct LayerRun<'a> {
    dirs: &'a HostDirs,
    store: &'a Store,
    opts: &'a BuildOptions,
    log: &'a Path,
    /// The top config's `ephemeral_seed` (the seed setting is per run).
    ephemeral_seed: bool,
    /// The merged world file to write first (B41), when the union would hide entries.
    world: Option<String>,
    /// The build epoch.
    epoch: i64,
}

/// The metadata a layer of `job` is published with, built here or pulled.
fn layer_meta(job: &LayerJob<'_>, packages: Vec<PackageInput>) -> LayerMeta {
    LayerMeta {
        key: job.key.clone(),
        name: job.config.name.clone(),
        buildname: job.config.buildname.clone(),
        base_keys: job.lower_keys.clone(),
        created: store::now_secs(),
        format: LAYER_FORMAT_VERSION,
        packages,
    }
}

fn build_layer(
    job: &LayerJob<'_>,
    meta: LayerMeta,
    done: &[(Layer, Outcome)],
    run: &LayerRun<'_>,
) -> Result<Layer, BuildError> {
    let LayerRun {
        dirs,
        store,
        opts,
        log,
        epoch,
        ..
    } = *run;
    let cfg = job.config;
    let lock = store.lock(&job.key)?;
    let pending = store.begin(&job.key, &lock)?;
    let lowers: Vec<PathBuf> = job
        .lower_keys
        .iter()
        .rev()
        .map(|k| {
            done.iter()
                .find(|(l, _)| &l.meta.key == k)
                .map(|(l, _)| l.root())
                .unwrap_or_else(|| store.layer_dir(k).join("root"))
        })
        .collect();
    crate::builder::crash::remove_dead_run_dirs(&dirs.run);
    let run_dir = dirs
        .run
        .join(format!("{}-{}", job.key.short(), std::process::id()));
    let paths = LayerPaths {
        root: run_dir.join("root"),
        empty: run_dir.join("empty"),
        upper: pending.root(),
        work: pending.work(),
        lowers,
        seed_tmp: run.ephemeral_seed.then(|| run_dir.join("seed")),
    };
    for p in [
        &paths.root,
        &paths.empty,
        &dirs.distfiles,
        &dirs.repos,
        &dirs.builds,
    ] {
        fs::create_dir_all(p).map_err(BuildError::io("cannot create", p))?;
    }
    let (seed_upper, seed_work) = dirs.seed_upper(&cfg.seed);
    let mut needed = vec![dirs.pkgdir(cfg)];
    if !run.ephemeral_seed {
        needed.extend([seed_upper, seed_work]);
    }
    for p in &needed {
        fs::create_dir_all(p).map_err(BuildError::io("cannot create", p))?;
    }
    let mut plan = layer_plan(cfg, dirs, &paths, &opts.mapping, epoch);
    plan.no_network = opts.no_network;
    if let Some(world) = &run.world {
        // Before anything runs: emerge must see every base's selected packages.
        plan.steps.insert(
            0,
            Step::WriteFile {
                path: Path::new(&cfg.root()).join(WORLD),
                contents: world.clone(),
            },
        );
    }
    let status = namespace::run(&plan, Some(log)).map_err(|source| BuildError::Namespace {
        layer: cfg.buildname.clone(),
        source,
    });
    let _ = store::remove_tree(&run_dir);
    let status = status?;
    if !status.success() {
        return Err(BuildError::Failed {
            layer: cfg.buildname.clone(),
            status: crate::builder::crash::Exit(status),
            log: log.to_path_buf(),
        });
    }
    let root = pending.root();
    remove_empty_mountpoint(&root.join("etc/portage"));
    // Symlinks, FIFOs and sockets carry no ownership record: on disk they are the
    // namespace root's (our uid, or a root caller's build range), which readers must
    // present as 0, not as that host id.
    let (uid, gid) = opts.mapping.host_root();
    HostOwner { uid, gid }
        .write(&root)
        .map_err(BuildError::io("cannot mark the owner of", &root))?;
    let stats =
        normalize::normalize_layer(&root, epoch).map_err(|source| BuildError::Normalize {
            layer: cfg.buildname.clone(),
            source,
        })?;
    tracing::debug!("{}: {stats:?}", cfg.buildname);
    Ok(store.publish(pending, meta)?)
}

/// The config overlay's mount point leaves an empty `etc/portage` (and maybe `etc`)
/// in the layer (B50): remove them when empty.
fn remove_empty_mountpoint(dir: &Path) {
    if fs::remove_dir(dir).is_ok() {
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}
