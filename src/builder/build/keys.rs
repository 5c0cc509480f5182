//! The key of every layer of a build ([`KeyPlanner`], [`plan_jobs`]).

use std::io;
use std::path::PathBuf;

use super::{BuildError, HostDirs};
use crate::builder::config::ResolvedConfig;
use crate::builder::epoch::{self, Epoch};
use crate::builder::key::{self, KeyInputs};
use crate::builder::repos::{PackageInput, Repos};
use crate::layers::seed::identity::{self, SeedIdentity};
use crate::layers::store::{BuildKey, Store};

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
            "oci",
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
            .map_err(BuildError::io("cannot list the repositories in", &dir))?;
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
                Some(
                    key::digest_tree(&p)
                        .map_err(BuildError::io("cannot read config overlay", &p))?,
                )
            }
            None => None,
        };
        let i = self.repos(cfg)?;
        let dir = self.repos[i].0.clone();
        let repos = &mut self.repos[i].1;
        let used = repos
            .closure(cfg.packages.iter().map(String::as_str))
            .map_err(BuildError::io("cannot read the ebuilds in", &dir))?;
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
pub(super) fn lower_keys(
    cfg: &ResolvedConfig,
    jobs: &[LayerJob<'_>],
) -> Result<Vec<BuildKey>, BuildError> {
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
