//! The host directories of a build ([`HostDirs`]) and the seed's lock.

use std::fs;
use std::path::{Path, PathBuf};

use super::BuildError;
use crate::builder::config::ResolvedConfig;
use crate::layers::layout::ConfRoot;
use crate::layers::store;

/// Host directories a build uses: the conf root's defaults ([`ConfRoot`]) after a
/// config's `_seed_dir`-style overrides.
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
        let layout = ConfRoot::new(&root);
        let under = |o: &Option<PathBuf>, default: PathBuf| {
            o.as_ref()
                .map(|p| {
                    if p.is_absolute() {
                        p.clone()
                    } else {
                        root.join(p)
                    }
                })
                .unwrap_or(default)
        };
        HostDirs {
            seeds: under(&d.seed_dir, layout.seeds()),
            builds: under(&d.build_dir, layout.builds()),
            distfiles: under(&d.distfile_dir, layout.distfiles()),
            repos: under(&d.repo_dir, layout.repos()),
            config: under(&d.config_dir, layout.config_overlays()),
            pkgdir_override: d.pkgdir.as_ref().map(|p| {
                if p.is_absolute() {
                    p.clone()
                } else {
                    root.join(p)
                }
            }),
            run: layout.run(),
            conf_root: root,
        }
    }

    /// The layout of the conf root these dirs are under.
    pub fn layout(&self) -> ConfRoot {
        ConfRoot::new(&self.conf_root)
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

/// Takes the seed's exclusive lock: one writer of a seed's upper (or of the seed
/// itself) at a time.
pub fn lock_seed(dirs: &HostDirs, seed: &str) -> Result<nix::fcntl::Flock<fs::File>, BuildError> {
    let path = seed_lock_path(dirs, seed);
    store::lock_exclusive(&path).map_err(BuildError::io("cannot lock the seed", &path))
}

/// [`lock_seed`] without waiting: `None` while another build holds the seed.
pub fn try_lock_seed(
    dirs: &HostDirs,
    seed: &str,
) -> Result<Option<nix::fcntl::Flock<fs::File>>, BuildError> {
    let path = seed_lock_path(dirs, seed);
    store::try_lock_exclusive(&path).map_err(BuildError::io("cannot lock the seed", &path))
}

/// The lock file of [`lock_seed`].
pub fn seed_lock_path(dirs: &HostDirs, seed: &str) -> PathBuf {
    dirs.seeds.join(format!(".{seed}.lock"))
}
