//! Building a resolved config into layers: keys, reuse, one namespaced run per
//! missing layer, atomic publication.
//!
//! For each distinct layer in build order (bases first):
//! 1. its key hashes its resolved config, the seed's identity, the epoch, the keys of
//!    the layers below it, the config overlay's content, the repositories' shared files
//!    and the package directories it may use ([`crate::builder::key`], [`KeyPlanner`]);
//! 2. a published layer with that key is reused as it is (no emerge runs); else, with
//!    a layer cache configured, the key is looked up there and a hit is pulled and
//!    published as if built here ([`crate::cache`]; a failure is a warning);
//! 3. otherwise, under the key's lock, a fresh upper dir is stacked over the layers
//!    below it in a gentree-fs union at `/builds/<buildname>`, inside a chroot whose
//!    root is a union of the seed's persistent upper over the seed; the profile is
//!    linked, emerge / depclean / unmerge run with `SOURCE_DATE_EPOCH`, the clean
//!    filters delete through the union; the upper is normalised and clamped to the
//!    epoch ([`crate::layers::normalize`]) and published as the layer, then pushed
//!    to the cache if there is one. A failure publishes nothing.
//!
//! The plan for one layer is computed by [`layer_plan`], a pure function, so the
//! mounts and commands a build will run are unit-tested without running them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::builder::config::ResolvedConfig;
use crate::builder::epoch::{self, Epoch};
use crate::builder::key::{self, KeyInputs, LAYER_FORMAT_VERSION};
use crate::builder::namespace::{self, IdMapping, MountSpec, Plan, RunStep, Step, UnionSpec};
use crate::builder::repos::{PackageInput, Repos};
use crate::layers::normalize;
use crate::layers::ownership::HostOwner;
use crate::layers::seed::identity::{self, SeedIdentity};
use crate::layers::store::{self, BuildKey, Layer, LayerMeta, Store, StoreError};
use crate::layers::tar::{FilterSet, PackOptions, TarLayout};

/// Host directories a build uses (spec 2.1), after `_seed_dir`-style overrides.
#[derive(Debug, Clone)]
pub struct HostDirs {
    pub conf_root: PathBuf,
    pub seeds: PathBuf,
    pub builds: PathBuf,
    pub distfiles: PathBuf,
    pub repos: PathBuf,
    pub config: PathBuf,
    /// Replaces the per-config binpkg dir when set.
    pub pkgdir_override: Option<PathBuf>,
    /// Mount points of running builds.
    pub run: PathBuf,
}

impl HostDirs {
    /// The default directories under `conf_root` (no config overrides).
    pub fn plain(conf_root: &Path) -> HostDirs {
        HostDirs::with(conf_root, &crate::builder::config::Dirs::default())
    }

    /// The directories for a top-level config under `conf_root` (the config's
    /// `conf_root` key, when set, wins).
    pub fn new(conf_root: &Path, top: &ResolvedConfig) -> HostDirs {
        HostDirs::with(conf_root, &top.dirs)
    }

    fn with(conf_root: &Path, d: &crate::builder::config::Dirs) -> HostDirs {
        let root = d
            .conf_root
            .clone()
            .unwrap_or_else(|| conf_root.to_path_buf());
        let under = |o: &Option<PathBuf>, name: &str| {
            o.as_ref()
                .map(|p| {
                    if p.is_absolute() {
                        p.clone()
                    } else {
                        root.join(p)
                    }
                })
                .unwrap_or_else(|| root.join(name))
        };
        HostDirs {
            seeds: under(&d.seed_dir, "seeds"),
            builds: under(&d.build_dir, "builds"),
            distfiles: under(&d.distfile_dir, "distfiles"),
            repos: under(&d.repo_dir, "repos"),
            config: under(&d.config_dir, "config"),
            pkgdir_override: d.pkgdir.as_ref().map(|p| {
                if p.is_absolute() {
                    p.clone()
                } else {
                    root.join(p)
                }
            }),
            run: root.join("run"),
            conf_root: root,
        }
    }

    /// The imported seed.
    pub fn seed(&self, seed: &str) -> PathBuf {
        self.seeds.join(seed)
    }
    /// The imported seed, which must exist.
    pub fn require_seed(&self, seed: &str) -> Result<PathBuf, BuildError> {
        let path = self.seed(seed);
        if path.is_dir() {
            Ok(path)
        } else {
            Err(BuildError::NoSeed {
                seed: seed.to_owned(),
                path,
            })
        }
    }
    /// The seed's persistent upper and work dirs.
    pub fn seed_upper(&self, seed: &str) -> (PathBuf, PathBuf) {
        (
            self.seeds.join(format!("{seed}.upper")),
            self.seeds.join(format!("{seed}.work")),
        )
    }
    /// The binary package dir of a layer.
    pub fn pkgdir(&self, cfg: &ResolvedConfig) -> PathBuf {
        self.pkgdir_override
            .clone()
            .unwrap_or_else(|| self.conf_root.join(&cfg.pkgdir))
    }
}

/// Errors of a build, each naming the layer or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "seed {seed:?} is not imported ({path} does not exist): run `gentree-fs import-seed SOURCE {seed}`"
    )]
    NoSeed { seed: String, path: PathBuf },
    #[error("config overlay {name:?} of layer {layer} does not exist ({path})")]
    NoOverlay {
        name: String,
        layer: String,
        path: PathBuf,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SeedIdentity(#[from] crate::layers::seed::identity::IdentityError),
    #[error("running the build of layer {layer}")]
    Namespace {
        layer: String,
        #[source]
        source: namespace::NsError,
    },
    #[error("layer {layer} failed ({status}); its log is {log}")]
    Failed {
        layer: String,
        status: crate::builder::crash::Exit,
        log: PathBuf,
    },
    #[error("{what} of seed {seed} failed ({status}); its log is {log}")]
    SeedFailed {
        what: &'static str,
        seed: String,
        status: crate::builder::crash::Exit,
        log: PathBuf,
    },
    #[error("writing the image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: crate::layers::tar::TarError,
    },
    #[error("the build epoch: {message}")]
    Epoch { message: String },
    #[error("cannot digest {what}")]
    Digest {
        what: &'static str,
        #[source]
        source: crate::layers::digest::DigestError,
    },
    #[error("normalising layer {layer}")]
    Normalize {
        layer: String,
        #[source]
        source: normalize::NormalizeError,
    },
    #[error("filter option of {layer}")]
    Filter {
        layer: String,
        #[source]
        source: crate::layers::tar::FilterError,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BuildError + 'a {
    move |source| BuildError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// One distinct layer of a build and its key.
#[derive(Debug, Clone)]
pub struct LayerJob<'a> {
    pub config: &'a ResolvedConfig,
    pub key: BuildKey,
    /// Keys of the layers below, lowest first.
    pub lower_keys: Vec<BuildKey>,
}

/// The part of a resolved config that determines a layer's content, as hashed into
/// its key: everything except where it came from, its bases (their keys stand in),
/// and what only matters for the final image or for forcing a rebuild.
pub fn key_config(cfg: &ResolvedConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    if let Some(m) = v.as_object_mut() {
        for k in [
            "origin",
            "bases",
            "rebuild",
            "output_file",
            "refilter",
            "reproducible",
            "tar_filters",
            "dirs",
            "seed_update_args",
            "cache",
        ] {
            m.remove(k);
        }
    }
    v
}

/// Computes layer keys: the seed identity and epoch of a run, the repositories'
/// state, each layer's package set and key.
#[derive(Debug)]
pub struct KeyPlanner<'s> {
    dirs: &'s HostDirs,
    seed: SeedIdentity,
    epoch: Epoch,
    /// Per repository directory: its repositories and their shared digests.
    repos: Vec<RepoState>,
}

/// One directory of repositories: where, what is in it, and its shared digests.
type RepoState = (PathBuf, Repos, Vec<(String, String)>);

impl<'s> KeyPlanner<'s> {
    /// The planner of a build of `top`: reads the seed identity and picks the epoch.
    pub fn new(top: &ResolvedConfig, dirs: &'s HostDirs) -> Result<KeyPlanner<'s>, BuildError> {
        let seed_dir = dirs.require_seed(&top.seed)?;
        let seed = identity::get(&dirs.conf_root, &top.seed, &seed_dir)?;
        let epoch = epoch::from_env(top.source_date_epoch, seed.newest_mtime)
            .map_err(|message| BuildError::Epoch { message })?;
        Ok(KeyPlanner {
            dirs,
            seed,
            epoch,
            repos: Vec::new(),
        })
    }

    /// The build epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The directory bound at `/var/db/repos` for `cfg`.
    fn repo_dir(&self, cfg: &ResolvedConfig) -> PathBuf {
        if cfg.bind_system_repos {
            cfg.system_repos.clone()
        } else {
            self.dirs.repos.clone()
        }
    }

    fn repos(&mut self, cfg: &ResolvedConfig) -> Result<usize, BuildError> {
        let dir = self.repo_dir(cfg);
        if let Some(i) = self.repos.iter().position(|(d, _, _)| d == &dir) {
            return Ok(i);
        }
        let mut repos = Repos::scan(&dir, &self.dirs.conf_root)
            .map_err(io_err("cannot list the repositories in", &dir))?;
        let shared = repos
            .shared_digests()
            .map_err(|source| BuildError::Digest {
                what: "the repositories",
                source,
            })?;
        self.repos.push((dir, repos, shared));
        Ok(self.repos.len() - 1)
    }

    /// Persists the repositories' digest caches (once, at the end of a run: each save
    /// keeps only the entries this run used).
    pub fn save_caches(&self) {
        for (_, repos, _) in &self.repos {
            repos.save_cache();
        }
    }

    /// The key of `cfg` over layers with `lower_keys` (lowest first), and the
    /// package directories it covers.
    pub fn key(
        &mut self,
        cfg: &ResolvedConfig,
        lower_keys: &[BuildKey],
    ) -> Result<(BuildKey, Vec<PackageInput>), BuildError> {
        let overlay = match &cfg.config_overlay {
            Some(name) => {
                let p = self.dirs.config.join(name);
                if !p.is_dir() {
                    return Err(BuildError::NoOverlay {
                        name: name.clone(),
                        layer: cfg.buildname.clone(),
                        path: p,
                    });
                }
                Some(key::digest_tree(&p).map_err(io_err("cannot read config overlay", &p))?)
            }
            None => None,
        };
        let i = self.repos(cfg)?;
        let dir = self.repos[i].0.clone();
        let repos = &mut self.repos[i].1;
        let used = repos
            .closure(cfg.packages.iter().map(String::as_str))
            .map_err(io_err("cannot read the ebuilds in", &dir))?;
        let packages = repos.inputs(&used).map_err(|source| BuildError::Digest {
            what: "the repositories",
            source,
        })?;
        let config = key_config(cfg);
        let key = key::layer_key(&KeyInputs {
            config: &config,
            seed_id: &self.seed.digest,
            epoch: self.epoch.secs,
            base_keys: lower_keys,
            overlay_digest: overlay.as_deref(),
            repos: &self.repos[i].2,
            packages: &packages,
        });
        Ok((key, packages))
    }
}

/// Computes the key of every distinct layer, in build order (`_store` is kept for
/// callers: keys depend on the seed and repositories, not on published layers).
pub fn plan_jobs<'a>(
    top: &'a ResolvedConfig,
    _store: &Store,
    dirs: &HostDirs,
) -> Result<Vec<LayerJob<'a>>, BuildError> {
    let mut planner = KeyPlanner::new(top, dirs)?;
    let mut jobs: Vec<LayerJob<'a>> = Vec::new();
    for cfg in top.build_order() {
        let lower_keys = lower_keys(cfg, &jobs)?;
        let (key, _) = planner.key(cfg, &lower_keys)?;
        jobs.push(LayerJob {
            config: cfg,
            key,
            lower_keys,
        });
    }
    planner.save_caches();
    Ok(jobs)
}

/// The keys of the layers below `cfg` (lowest first), from the jobs before it.
fn lower_keys(cfg: &ResolvedConfig, jobs: &[LayerJob<'_>]) -> Result<Vec<BuildKey>, BuildError> {
    lower_configs(cfg)
        .map(|c| {
            jobs.iter()
                .find(|j| j.config == c)
                .map(|j| j.key.clone())
                .ok_or_else(|| BuildError::Io {
                    what: "internal error: base built after its user:",
                    path: PathBuf::from(&c.buildname),
                    source: io::ErrorKind::NotFound.into(),
                })
        })
        .collect()
}

/// The layers below `cfg`, lowest first.
fn lower_configs(cfg: &ResolvedConfig) -> impl Iterator<Item = &ResolvedConfig> {
    cfg.build_order()
        .into_iter()
        .filter(move |c| !std::ptr::eq(*c, cfg))
}

/// Where one layer's build mounts things on the host.
#[derive(Debug, Clone)]
pub struct LayerPaths {
    /// The chroot root (mount point of the seed union).
    pub root: PathBuf,
    /// An empty dir, the lower of a layer with no bases.
    pub empty: PathBuf,
    /// The new layer's upper and work dirs.
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Lower layer trees, topmost first.
    pub lowers: Vec<PathBuf>,
    /// With `ephemeral_seed`: the host dir where a tmpfs holding the seed's upper is
    /// mounted in the namespace (nothing of the seed's changes reaches the disk).
    pub seed_tmp: Option<PathBuf>,
}

/// The environment of every Portage command of a layer: a clean base, the layer's
/// resolved env, and what rootless Portage needs with a single mapped id.
pub fn emerge_env(cfg: &ResolvedConfig, mapping: &IdMapping) -> Vec<(String, String)> {
    let mut env = namespace::base_env();
    for (k, v) in &cfg.env {
        env.retain(|(e, _)| e != k);
        env.push((k.clone(), v.clone()));
    }
    if !mapping.has_subids() {
        // Only root exists in the namespace: Portage cannot drop privileges
        // (portage-on-debian.md), and userfetch's setgroups() is denied.
        env.push(("PORTAGE_USERNAME".into(), "root".into()));
        env.push(("PORTAGE_GRPNAME".into(), "root".into()));
        let features = env
            .iter()
            .find(|(k, _)| k == "FEATURES")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        env.retain(|(k, _)| k != "FEATURES");
        let extra = "-userfetch -userpriv -usersync";
        env.push((
            "FEATURES".into(),
            format!("{features} {extra}").trim().to_owned(),
        ));
    }
    for (k, v) in [("CLEAN_DELAY", "0"), ("EMERGE_WARNING_DELAY", "0")] {
        if !env.iter().any(|(e, _)| e == k) {
            env.push((k.into(), v.into()));
        }
    }
    env
}

/// How the seed appears as the chroot root.
#[derive(Debug, Clone)]
pub enum SeedRoot {
    /// A union of an upper (persistent or throwaway) over the imported seed.
    Union { upper: PathBuf, work: PathBuf },
    /// A union whose upper lives in a tmpfs mounted (in the namespace only) on this
    /// host dir: `ephemeral_seed`.
    Ephemeral { tmpfs: PathBuf },
    /// The imported seed itself, written in place (`exec --persistent`, `update-seed`).
    Direct,
}

/// What the seed's namespace mounts, whatever runs in it (spec 2.4): the seed root,
/// proc, sys, dev, devpts, a private /run, the repositories, resolv.conf, the binary
/// package dir and the distfiles.
#[derive(Debug, Clone)]
pub struct SeedMounts<'a> {
    pub dirs: &'a HostDirs,
    pub seed: &'a str,
    pub root: SeedRoot,
    pub pkgdir: PathBuf,
    pub crossdev_target: Option<&'a str>,
    /// `bind_system_repos`: the host's repos, read-only, instead of the user's.
    pub system_repos: Option<&'a Path>,
    /// The user's repos writable (`exec --writable-repos`, to sync them); every
    /// other run reads them only, so no build can change what later builds read.
    pub writable_repos: bool,
}

fn bind(source: PathBuf, target: &str, recursive: bool, readonly: bool) -> MountSpec {
    MountSpec::Bind {
        source,
        target: target.into(),
        recursive,
        readonly,
    }
}

impl SeedMounts<'_> {
    /// The mounts, in order.
    pub fn mounts(&self) -> Vec<MountSpec> {
        let mut mounts = Vec::new();
        let seed_union = |upper: PathBuf, work: PathBuf| {
            MountSpec::Union(UnionSpec {
                lowers: vec![self.dirs.seed(self.seed)],
                upper: Some(upper),
                work: Some(work),
                target: "/".into(),
            })
        };
        match &self.root {
            SeedRoot::Union { upper, work } => mounts.push(seed_union(upper.clone(), work.clone())),
            SeedRoot::Ephemeral { tmpfs } => {
                let (upper, work) = (tmpfs.join("upper"), tmpfs.join("work"));
                mounts.push(MountSpec::HostTmpfs {
                    path: tmpfs.clone(),
                    options: "mode=0755".into(),
                    mkdirs: vec![upper.clone(), work.clone()],
                });
                mounts.push(seed_union(upper, work));
            }
            SeedRoot::Direct => {}
        }
        // The sandbox (`namespace::sandbox`): a minimal /dev before /proc, whose masks
        // bind /dev/null; the repositories read-only unless the run syncs them.
        mounts.extend([
            MountSpec::Dev {
                target: "/dev".into(),
            },
            MountSpec::Proc {
                target: "/proc".into(),
            },
            MountSpec::Sys {
                target: "/sys".into(),
            },
            MountSpec::Tmpfs {
                target: "/run".into(),
                options: "mode=0755".into(),
            },
            match self.system_repos {
                Some(p) => bind(p.to_path_buf(), "/var/db/repos", true, true),
                None => bind(
                    self.dirs.repos.clone(),
                    "/var/db/repos",
                    true,
                    !self.writable_repos,
                ),
            },
        ]);
        if Path::new("/etc/resolv.conf").exists() {
            mounts.push(bind(
                "/etc/resolv.conf".into(),
                "/etc/resolv.conf",
                false,
                true,
            ));
        }
        let pkgdir_target = match self.crossdev_target {
            Some(t) => format!("/usr/{t}/var/cache/binpkgs"),
            None => "/var/cache/binpkgs".to_owned(),
        };
        mounts.push(bind(self.pkgdir.clone(), &pkgdir_target, false, false));
        mounts.push(bind(
            self.dirs.distfiles.clone(),
            "/var/cache/distfiles",
            false,
            false,
        ));
        mounts
    }

    /// Creates the host directories the mounts need.
    pub fn create_dirs(&self) -> Result<(), BuildError> {
        let mut dirs = vec![&self.dirs.distfiles, &self.pkgdir];
        if self.system_repos.is_none() {
            dirs.push(&self.dirs.repos);
        }
        if let SeedRoot::Union { upper, work } = &self.root {
            dirs.push(upper);
            dirs.push(work);
        }
        for p in dirs {
            fs::create_dir_all(p).map_err(io_err("cannot create", p))?;
        }
        Ok(())
    }
}

/// The seed mounts of a layer build: the seed's persistent upper, or with
/// `seed_tmp` an ephemeral one.
pub fn layer_seed_mounts<'a>(
    cfg: &'a ResolvedConfig,
    dirs: &'a HostDirs,
    seed_tmp: Option<&Path>,
) -> SeedMounts<'a> {
    let (upper, work) = dirs.seed_upper(&cfg.seed);
    SeedMounts {
        dirs,
        seed: &cfg.seed,
        root: match seed_tmp {
            Some(t) => SeedRoot::Ephemeral {
                tmpfs: t.to_path_buf(),
            },
            None => SeedRoot::Union { upper, work },
        },
        pkgdir: dirs.pkgdir(cfg),
        crossdev_target: cfg.crossdev_target.as_deref(),
        system_repos: cfg.bind_system_repos.then_some(cfg.system_repos.as_path()),
        writable_repos: false,
    }
}

/// The namespace plan that builds one layer, with `epoch` exported to every
/// Portage command as `SOURCE_DATE_EPOCH`.
pub fn layer_plan(
    cfg: &ResolvedConfig,
    dirs: &HostDirs,
    paths: &LayerPaths,
    mapping: &IdMapping,
    epoch: i64,
) -> Plan {
    let target = cfg.crossdev_target.as_deref();
    let layer_root = cfg.root();
    let mut mounts = layer_seed_mounts(cfg, dirs, paths.seed_tmp.as_deref()).mounts();
    mounts.extend([
        MountSpec::Tmpfs {
            target: "/builds".into(),
            options: "mode=0755".into(),
        },
        MountSpec::Union(UnionSpec {
            lowers: if paths.lowers.is_empty() {
                vec![paths.empty.clone()]
            } else {
                paths.lowers.clone()
            },
            upper: Some(paths.upper.clone()),
            work: Some(paths.work.clone()),
            target: layer_root.clone().into(),
        }),
    ]);
    if let Some(ov) = &cfg.config_overlay {
        // Portage reads `--config-root /builds/<bn>`: the overlay's files over the
        // seed's /etc/portage, read-only, so nothing of it lands in the layer.
        // An ephemeral seed's upper starts empty: the persistent one is not seen.
        let (seed_upper, _) = dirs.seed_upper(&cfg.seed);
        let seed_upper = paths
            .seed_tmp
            .is_none()
            .then(|| seed_upper.join("etc/portage"));
        mounts.push(bind(dirs.config.clone(), "/config", true, true));
        mounts.push(MountSpec::Union(UnionSpec {
            lowers: [
                Some(dirs.config.join(ov)),
                seed_upper,
                Some(dirs.seed(&cfg.seed).join("etc/portage")),
            ]
            .into_iter()
            .flatten()
            .filter(|p| p.is_dir())
            .collect(),
            upper: None,
            work: None,
            target: format!("{layer_root}/etc/portage").into(),
        }));
    }

    let mut env = emerge_env(cfg, mapping);
    // The build's epoch is the only one: an `[env]` value would not match the clamp.
    env.retain(|(k, _)| k != "SOURCE_DATE_EPOCH");
    env.push(("SOURCE_DATE_EPOCH".into(), epoch.to_string()));
    let mut steps: Vec<Step> = profile_step(cfg).into_iter().collect();
    for argv in [&cfg.emerge, &cfg.depclean_argv, &cfg.unmerge_argv]
        .into_iter()
        .flatten()
    {
        steps.push(portage_run(argv.clone(), &env, target));
    }
    let clean = clean_paths(cfg, &layer_root);
    if !clean.is_empty() {
        steps.push(Step::Remove { paths: clean });
    }
    Plan {
        mapping: mapping.clone(),
        root: paths.root.clone(),
        mounts,
        steps,
        cwd: "/".into(),
        no_network: false,
    }
}

/// The `make.profile` link of a config (spec 4.3): the cross root's with a crossdev
/// target; none without a profile.
pub fn profile_step(cfg: &ResolvedConfig) -> Option<Step> {
    let profile = cfg.effective_profile()?;
    let link = match cfg.crossdev_target.as_deref() {
        Some(t) => format!("/usr/{t}/etc/portage/make.profile"),
        None => "/etc/portage/make.profile".to_owned(),
    };
    Some(Step::Symlink {
        link: link.into(),
        target: format!("/var/db/repos/{}/profiles/{profile}", cfg.profile_repo).into(),
    })
}

/// A Portage command as every emerge run is made (spec 4.2's wrapper): on failure
/// the growth of emerge.log and `emerge --info` (the cross wrapper's for a cross
/// build, B49) go to the log.
pub fn portage_run(argv: Vec<String>, env: &[(String, String)], target: Option<&str>) -> Step {
    Step::Run(RunStep {
        argv,
        env: env.to_vec(),
        on_failure: vec![vec![
            crate::builder::config::emerge::program(target),
            "--info".into(),
        ]],
        log_tail: Some("/var/log/emerge.log".into()),
    })
}

/// The paths (inside the namespace) the clean filters delete from a layer's root.
pub fn clean_paths(cfg: &ResolvedConfig, layer_root: &str) -> Vec<PathBuf> {
    let mut set = FilterSet::none();
    let mut out = Vec::new();
    for (name, on) in &cfg.clean_filters.0 {
        if set.set(name, *on).is_err() {
            tracing::warn!("{}: unknown clean filter {name:?} ignored", cfg.buildname);
        }
    }
    for prefix in set.path_prefixes() {
        out.push(Path::new(layer_root).join(prefix.trim_end_matches('/')));
    }
    out
}

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
            store::remove_tree(p).map_err(io_err("cannot clean the seed overlay", p))?;
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

/// Takes the seed's exclusive lock: one writer of a seed's upper (or of the seed
/// itself) at a time.
pub fn lock_seed(dirs: &HostDirs, seed: &str) -> Result<nix::fcntl::Flock<fs::File>, BuildError> {
    let path = seed_lock_path(dirs, seed);
    store::lock_exclusive(&path).map_err(io_err("cannot lock the seed", &path))
}

/// [`lock_seed`] without waiting: `None` while another build holds the seed.
pub fn try_lock_seed(
    dirs: &HostDirs,
    seed: &str,
) -> Result<Option<nix::fcntl::Flock<fs::File>>, BuildError> {
    let path = seed_lock_path(dirs, seed);
    store::try_lock_exclusive(&path).map_err(io_err("cannot lock the seed", &path))
}

/// The lock file of [`lock_seed`].
pub fn seed_lock_path(dirs: &HostDirs, seed: &str) -> PathBuf {
    dirs.seeds.join(format!(".{seed}.lock"))
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

/// The layer of `meta.key` from the cache, if one is configured and has it. A
/// failure is a warning: the layer is then built here.
fn fetch_cached(opts: &BuildOptions, store: &Store, meta: &LayerMeta) -> Option<Layer> {
    let cache = opts.cache.as_deref()?;
    let started = std::time::Instant::now();
    let (uid, gid) = opts.mapping.host_root();
    let host = crate::layers::ownership::HostOwner { uid, gid };
    match cache.fetch(store, meta, opts.mapping.store_owners(), host) {
        Ok(Some(layer)) => {
            tracing::debug!("pulled {} in {:.1?}", meta.key.short(), started.elapsed());
            Some(layer)
        }
        Ok(None) => {
            tracing::info!(
                "{}: layer {} is not in the cache {}",
                meta.buildname,
                meta.key.short(),
                cache.reference()
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                "cache {}: cannot use the cached layer {} of {} ({}); building it here",
                cache.reference(),
                meta.key.short(),
                meta.buildname,
                crate::cache::error_text(&e)
            );
            None
        }
    }
}

/// Pushes a layer built here to the cache, if one is configured; a failure is a
/// warning.
fn push_cached(opts: &BuildOptions, layer: &Layer) {
    let Some(cache) = opts.cache.as_deref() else {
        return;
    };
    let started = std::time::Instant::now();
    match cache.push(layer) {
        Ok(true) => tracing::info!(
            "{}: pushed layer {} to the cache in {:.1?}",
            layer.meta.buildname,
            layer.meta.key.short(),
            started.elapsed()
        ),
        Ok(false) => tracing::debug!("the cache has {} already", layer.meta.key.short()),
        Err(e) => tracing::warn!(
            "cache {}: cannot push the layer {} of {} ({})",
            cache.reference(),
            layer.meta.key.short(),
            layer.meta.buildname,
            crate::cache::error_text(&e)
        ),
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
        fs::create_dir_all(p).map_err(io_err("cannot create", p))?;
    }
    let (seed_upper, seed_work) = dirs.seed_upper(&cfg.seed);
    let mut needed = vec![dirs.pkgdir(cfg)];
    if !run.ephemeral_seed {
        needed.extend([seed_upper, seed_work]);
    }
    for p in &needed {
        fs::create_dir_all(p).map_err(io_err("cannot create", p))?;
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
        .map_err(io_err("cannot mark the owner of", &root))?;
    let stats =
        normalize::normalize_layer(&root, epoch).map_err(|source| BuildError::Normalize {
            layer: cfg.buildname.clone(),
            source,
        })?;
    tracing::debug!("{}: {stats:?}", cfg.buildname);
    Ok(store.publish(pending, meta)?)
}

/// Where Portage keeps the selected packages, relative to a root.
pub const WORLD: &str = "var/lib/portage/world";

/// World-file entries merged in order: each entry once, where first seen (B41).
pub fn merge_world<'a>(files: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for text in files {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !out.iter().any(|e| e == line) {
                out.push(line.to_owned());
            }
        }
    }
    out
}

/// The world file a stack of layer trees (topmost first) shows through a union: the
/// topmost layer's that has one, unless a whiteout of it or an opaque
/// `var/lib/portage` comes first.
pub fn world_in_stack(stack: &[PathBuf]) -> Option<String> {
    for layer in stack {
        let f = layer.join(WORLD);
        if let Ok(text) = fs::read_to_string(&f) {
            return Some(text);
        }
        let dir = layer.join("var/lib/portage");
        if dir.join(".wh.world").exists() || dir.join(".wh..wh..opq").exists() {
            return None;
        }
    }
    None
}

/// The world file to write into a layer with several bases (B41): each direct base
/// stack's world file, merged in base order, when that differs from what the
/// union of all of them would show (only the topmost base's). `None` otherwise.
fn merged_world(
    job: &LayerJob<'_>,
    jobs: &[LayerJob<'_>],
    done: &[(Layer, Outcome)],
) -> Option<String> {
    if job.config.bases.len() < 2 {
        return None;
    }
    let root_of = |k: &BuildKey| {
        done.iter()
            .find(|(l, _)| &l.meta.key == k)
            .map(|(l, _)| l.root())
    };
    let stack = |top: &BuildKey, below: &[BuildKey]| -> Vec<PathBuf> {
        std::iter::once(top)
            .chain(below.iter().rev())
            .filter_map(root_of)
            .collect()
    };
    let views: Vec<String> = job
        .config
        .bases
        .iter()
        .filter_map(|b| jobs.iter().find(|j| j.config == b))
        .filter_map(|j| world_in_stack(&stack(&j.key, &j.lower_keys)))
        .collect();
    if views.len() < 2 {
        return None;
    }
    let merged = merge_world(views.iter().map(String::as_str));
    let lowers: Vec<PathBuf> = job.lower_keys.iter().rev().filter_map(root_of).collect();
    let shown = world_in_stack(&lowers).unwrap_or_default();
    (merge_world([shown.as_str()]) != merged).then(|| {
        let mut text = merged.join("\n");
        text.push('\n');
        text
    })
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

/// The tar filters of the final image: the top config's `tar_filters`.
pub fn image_filters(top: &ResolvedConfig) -> Result<FilterSet, BuildError> {
    let mut set = FilterSet::none();
    for (name, on) in &top.tar_filters.0 {
        set.set(name, *on).map_err(|source| BuildError::Filter {
            layer: top.buildname.clone(),
            source,
        })?;
    }
    Ok(set)
}

/// Writes the flattened, filtered image of a finished build to `out` atomically.
pub fn write_image(
    top: &ResolvedConfig,
    report: &BuildReport,
    out: &Path,
    source_date_epoch: Option<i64>,
) -> Result<u64, BuildError> {
    let opts = PackOptions {
        filters: image_filters(top)?,
        source_date_epoch,
    };
    let layout = TarLayout::flattened(&report.image_layers(), &opts).map_err(|source| {
        BuildError::Image {
            path: out.to_path_buf(),
            source,
        }
    })?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
    tracing::info!(
        "writing the image {} ({} MiB)",
        out.display(),
        layout.size().div_ceil(1 << 20)
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let n = std::thread::scope(|s| {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            s.spawn(|| show_write_progress(&tmp, layout.size(), &done));
        }
        let n = layout
            .write_to_file(&mut f)
            .and_then(|n| f.sync_all().map(|_| n))
            .map_err(io_err("cannot write", &tmp));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        n
    });
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, out).map_err(io_err("cannot write", out))?;
    Ok(n)
}

/// On a terminal: how much of the image file is written, redrawn five times a second
/// on one line until `done`, then once more.
fn show_write_progress(tmp: &Path, total: u64, done: &std::sync::atomic::AtomicBool) {
    use std::io::Write;
    let draw = |written: u64| {
        let pct = (written * 100).checked_div(total).unwrap_or(100);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rwriting image: {} of {} MiB ({pct}%)   ",
            written >> 20,
            total.div_ceil(1 << 20)
        );
        let _ = err.flush();
    };
    draw(0);
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        draw(fs::metadata(tmp).map_or(0, |m| m.len()));
    }
    draw(fs::metadata(tmp).map_or(0, |m| m.len()));
    let _ = writeln!(std::io::stderr());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::config::{CliOverrides, Defaults, resolve_str};

    fn cfg(text: &str) -> ResolvedConfig {
        let d = Defaults::embedded().unwrap();
        resolve_str(
            text,
            Path::new("/cfg/app.toml"),
            &CliOverrides::default(),
            &d,
        )
        .unwrap()
    }

    fn paths(seed_tmp: Option<&str>) -> LayerPaths {
        LayerPaths {
            root: "/run/r".into(),
            empty: "/run/e".into(),
            upper: "/l/up".into(),
            work: "/l/work".into(),
            lowers: vec![],
            seed_tmp: seed_tmp.map(PathBuf::from),
        }
    }

    #[test]
    fn world_files_merge_in_first_seen_order() {
        assert_eq!(
            merge_world(["a/x\nb/y\n", "\n b/y \nc/z", "a/x\nd/w\n"]),
            ["a/x", "b/y", "c/z", "d/w"]
        );
        assert!(merge_world(["", "\n\n"]).is_empty());
        assert!(merge_world([]).is_empty());
    }

    #[test]
    fn world_in_stack_is_what_the_union_shows() {
        let t = tempfile::tempdir().unwrap();
        let layer = |n: &str, world: Option<&str>, marker: Option<&str>| {
            let d = t.path().join(n).join("var/lib/portage");
            fs::create_dir_all(&d).unwrap();
            if let Some(w) = world {
                fs::write(d.join("world"), w).unwrap();
            }
            if let Some(m) = marker {
                fs::write(d.join(m), "").unwrap();
            }
            t.path().join(n)
        };
        let a = layer("a", Some("a/x\n"), None);
        let b = layer("b", None, None);
        let c = layer("c", Some("c/z\n"), None);
        let wh = layer("wh", None, Some(".wh.world"));
        let opq = layer("opq", None, Some(".wh..wh..opq"));
        assert_eq!(
            world_in_stack(&[b.clone(), a.clone()]).as_deref(),
            Some("a/x\n")
        );
        assert_eq!(
            world_in_stack(&[c.clone(), b.clone(), a.clone()]).as_deref(),
            Some("c/z\n")
        );
        assert_eq!(world_in_stack(&[wh, a.clone()]), None);
        assert_eq!(world_in_stack(&[opq, a]), None);
        assert_eq!(world_in_stack(&[b]), None);
    }

    #[test]
    fn every_portage_command_gets_the_epoch() {
        let c =
            cfg("seed = \"s\"\npackages = [\"app-misc/x\"]\n[env]\nsource_date_epoch = \"9\"\n");
        let dirs = HostDirs::plain(Path::new("/conf"));
        let plan = layer_plan(&c, &dirs, &paths(None), &IdMapping::root_default(), 1234);
        let runs: Vec<_> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Run(r) => Some(r),
                _ => None,
            })
            .collect();
        assert!(!runs.is_empty());
        for r in runs {
            let sde: Vec<_> = r
                .env
                .iter()
                .filter(|(k, _)| k == "SOURCE_DATE_EPOCH")
                .collect();
            assert_eq!(sde, [&("SOURCE_DATE_EPOCH".to_owned(), "1234".to_owned())]);
        }
    }

    #[test]
    fn ephemeral_seed_upper_lives_in_a_tmpfs_mounted_first() {
        let c = cfg("seed = \"s\"\npackages = [\"app-misc/x\"]\n");
        let dirs = HostDirs::plain(Path::new("/conf"));
        let mapping = IdMapping::root_default();
        let plan = layer_plan(&c, &dirs, &paths(Some("/run/seed")), &mapping, 1234);
        match &plan.mounts[..2] {
            [
                MountSpec::HostTmpfs { path, mkdirs, .. },
                MountSpec::Union(u),
            ] => {
                assert_eq!(path, Path::new("/run/seed"));
                assert_eq!(
                    mkdirs,
                    &[PathBuf::from("/run/seed/upper"), "/run/seed/work".into()]
                );
                assert_eq!(u.target, Path::new("/"));
                assert_eq!(u.lowers, [PathBuf::from("/conf/seeds/s")]);
                assert_eq!(u.upper.as_deref(), Some(Path::new("/run/seed/upper")));
                assert_eq!(u.work.as_deref(), Some(Path::new("/run/seed/work")));
            }
            other => panic!("{other:?}"),
        }
        // Without it, the persistent upper under seeds/ and no tmpfs.
        let plan = layer_plan(&c, &dirs, &paths(None), &mapping, 1234);
        assert!(
            !plan
                .mounts
                .iter()
                .any(|m| matches!(m, MountSpec::HostTmpfs { .. }))
        );
        match &plan.mounts[0] {
            MountSpec::Union(u) => {
                assert_eq!(u.upper.as_deref(), Some(Path::new("/conf/seeds/s.upper")))
            }
            other => panic!("{other:?}"),
        }
    }
}
