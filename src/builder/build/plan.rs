//! The namespace plan of one layer's build, computed without running anything
//! ([`layer_plan`]), and the seed mounts and Portage steps it is made of.

use std::fs;
use std::path::{Path, PathBuf};

use super::{BuildError, HostDirs};
use crate::builder::config::ResolvedConfig;
use crate::builder::namespace::{self, IdMapping, NsMount, Plan, RunStep, Step, UnionSpec};
use crate::layers::tar::FilterSet;

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
        // (no other id is mapped to drop to), and userfetch's setgroups() is denied.
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

/// What the seed's namespace mounts, whatever runs in it: the seed root,
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

fn bind(source: PathBuf, target: &str, recursive: bool, readonly: bool) -> NsMount {
    NsMount::Bind {
        source,
        target: target.into(),
        recursive,
        readonly,
    }
}

impl SeedMounts<'_> {
    /// The mounts, in order.
    pub fn mounts(&self) -> Vec<NsMount> {
        let mut mounts = Vec::new();
        let seed_union = |upper: PathBuf, work: PathBuf| {
            NsMount::Union(UnionSpec {
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
                mounts.push(NsMount::HostTmpfs {
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
            NsMount::Dev {
                target: "/dev".into(),
            },
            NsMount::Proc {
                target: "/proc".into(),
            },
            NsMount::Sys {
                target: "/sys".into(),
            },
            NsMount::Tmpfs {
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
            fs::create_dir_all(p).map_err(BuildError::io("cannot create", p))?;
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
        NsMount::Tmpfs {
            target: "/builds".into(),
            options: "mode=0755".into(),
        },
        NsMount::Union(UnionSpec {
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
        mounts.push(NsMount::Union(UnionSpec {
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

/// The `make.profile` link of a config: the cross root's with a crossdev
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

/// A Portage command as every emerge run is made: on failure
/// the growth of emerge.log and `emerge --info` (the cross wrapper's for a cross
/// build) go to the log.
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
