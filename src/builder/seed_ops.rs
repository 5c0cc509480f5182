//! Commands that change a seed itself: `update-seed` and
//! `init-crossdev`. Both run directly on the imported seed
//! ([`SeedRoot::Direct`]) under the seed's lock. Afterwards (B26) the seed's
//! persistent upper, made against the old seed, is cleared and the seed gets a new
//! identity, so every layer built on it is rebuilt ([`after_seed_change`]).
//!
//! The plans are pure functions of the resolved config, so the commands they run are
//! unit-tested without a seed.

use std::path::{Path, PathBuf};

use crate::builder::build::{
    BuildError, HostDirs, SeedMounts, SeedRoot, emerge_env, portage_run, profile_step,
};
use crate::builder::config::emerge;
use crate::builder::config::{FlagSet, ResolvedConfig};
use crate::builder::namespace::{self, IdMapping, Plan, Step};
use crate::layers::store;

/// The mounts of a run on the seed itself. Only `init-crossdev`'s first phase writes
/// the repositories (crossdev creates its own repository there).
pub fn direct_mounts<'a>(
    cfg: &'a ResolvedConfig,
    dirs: &'a HostDirs,
    writable_repos: bool,
) -> SeedMounts<'a> {
    SeedMounts {
        dirs,
        seed: &cfg.seed,
        root: SeedRoot::Direct,
        pkgdir: dirs.pkgdir(cfg),
        crossdev_target: cfg.crossdev_target.as_deref(),
        system_repos: cfg.bind_system_repos.then_some(cfg.system_repos.as_path()),
        writable_repos,
    }
}

fn direct_plan(
    cfg: &ResolvedConfig,
    dirs: &HostDirs,
    mapping: &IdMapping,
    steps: Vec<Step>,
    writable_repos: bool,
) -> Plan {
    Plan {
        mapping: mapping.clone(),
        root: dirs.seed(&cfg.seed),
        mounts: direct_mounts(cfg, dirs, writable_repos).mounts(),
        steps,
        cwd: "/".into(),
        no_network: false,
    }
}

/// `update-seed`: emerge with the update arguments (no `--root`), then
/// `emerge --depclean`, with the cross wrapper for a crossdev target.
pub fn update_plan(
    cfg: &ResolvedConfig,
    dirs: &HostDirs,
    update_args: &[String],
    mapping: &IdMapping,
) -> Plan {
    let target = cfg.crossdev_target.as_deref();
    let program = emerge::program(target);
    let env = emerge_env(cfg, mapping);
    let mut steps: Vec<Step> = profile_step(cfg).into_iter().collect();
    let mut update = vec![program.clone()];
    update.extend(update_args.iter().cloned());
    steps.push(portage_run(update, &env, target));
    steps.push(portage_run(
        vec![program, "--depclean".into()],
        &env,
        target,
    ));
    direct_plan(cfg, dirs, mapping, steps, false)
}

/// Phase 1 of `init-crossdev` (B27 fixed): with `usersandbox` disabled
/// whether or not FEATURES listed it, install crossdev and eselect-repository,
/// enable the crossdev repository and create the toolchain for `tuple`. Each
/// command's output (stderr included) goes to the terminal and the log.
pub fn crossdev_phase1(
    cfg: &ResolvedConfig,
    dirs: &HostDirs,
    tuple: &str,
    mapping: &IdMapping,
) -> Plan {
    let mut env = emerge_env(cfg, mapping);
    let features = env
        .iter()
        .find(|(k, _)| k == "FEATURES")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut set = FlagSet::parse(features.split_whitespace());
    set.remove("usersandbox");
    env.retain(|(k, _)| k != "FEATURES");
    env.push(("FEATURES".into(), set.to_string()));
    let argv = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let mut steps: Vec<Step> = profile_step(cfg).into_iter().collect();
    steps.push(portage_run(
        argv("emerge --usepkg=y --noreplace crossdev eselect-repository"),
        &env,
        None,
    ));
    steps.push(portage_run(
        argv("eselect repository enable crossdev"),
        &env,
        None,
    ));
    steps.push(portage_run(
        vec!["crossdev".into(), "--target".into(), tuple.to_owned()],
        &env,
        None,
    ));
    direct_plan(cfg, dirs, mapping, steps, true)
}

/// A layer's cross emerge in phase 2 of `init-crossdev`: its emerge argv without
/// `--root` (built without it rather than sliced, B27) and with `oneshot` forced;
/// `None` without packages.
pub fn crossdev_layer_argv(c: &ResolvedConfig) -> Option<Vec<String>> {
    if c.packages.is_empty() {
        return None;
    }
    let mut bools = c.emerge_bools.0.clone();
    match bools.iter_mut().find(|(k, _)| k == "oneshot") {
        Some((_, on)) => *on = true,
        None => bools.push(("oneshot".into(), true)),
    }
    let mut plain = c.emerge_plain_bools.clone();
    if !plain.iter().any(|p| p == "oneshot") {
        plain.push("oneshot".into());
    }
    let mut v = vec![emerge::program(c.crossdev_target.as_deref())];
    v.extend(emerge::option_args(&c.emerge_args.0, &bools, &plain));
    v.extend(c.packages.iter().cloned());
    Some(v)
}

/// Phase 2 of `init-crossdev`: `cfg` resolved with the crossdev target; the cross
/// root's profile, then every layer of the base tree, bases first, emerged into the
/// cross sysroot `/usr/<tuple>`. A `config_overlay` has no `/builds` root here and
/// is not used.
pub fn crossdev_phase2(cfg: &ResolvedConfig, dirs: &HostDirs, mapping: &IdMapping) -> Plan {
    let mut steps: Vec<Step> = profile_step(cfg).into_iter().collect();
    for c in cfg.build_order() {
        if let Some(argv) = crossdev_layer_argv(c) {
            let env = emerge_env(c, mapping);
            steps.push(portage_run(argv, &env, c.crossdev_target.as_deref()));
        }
    }
    direct_plan(cfg, dirs, mapping, steps, false)
}

/// Runs a plan made by this module on the seed (the caller holds the seed's lock),
/// output to the terminal and `log`. Once it ran, the seed counts as changed
/// ([`after_seed_change`]), even when a command failed halfway.
pub fn run_on_seed(
    plan: &Plan,
    cfg: &ResolvedConfig,
    dirs: &HostDirs,
    what: &'static str,
    log: &Path,
) -> Result<(), BuildError> {
    direct_mounts(cfg, dirs, false).create_dirs()?;
    let status = namespace::run(plan, Some(log)).map_err(|source| BuildError::Namespace {
        layer: format!("{what} of seed {}", cfg.seed),
        source,
    })?;
    after_seed_change(dirs, &cfg.seed)?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::SeedFailed {
            what,
            seed: cfg.seed.clone(),
            status: crate::builder::crash::Exit(status),
            log: log.to_path_buf(),
        })
    }
}

/// Where a program may be installed in a root (merged-usr or not).
const BIN_DIRS: [&str; 4] = ["usr/bin", "usr/sbin", "bin", "sbin"];

/// Whether `seed` can get crossdev: it is installed, or a repository in `repos`
/// has `sys-devel/crossdev` for phase 1 to install.
pub fn crossdev_available(seed: &Path, repos: &Path) -> bool {
    let installed = BIN_DIRS
        .iter()
        .any(|d| std::fs::symlink_metadata(seed.join(d).join("crossdev")).is_ok());
    let in_repo = std::fs::read_dir(repos).is_ok_and(|rd| {
        rd.filter_map(Result::ok)
            .any(|e| e.path().join("sys-devel/crossdev").is_dir())
    });
    installed || in_repo
}

/// After the seed itself changed (B26): the persistent seed upper was made against
/// the old seed and would shadow the update, so it is removed (with a warning); the
/// seed gets a new identity, so layers built on the old one are rebuilt.
pub fn after_seed_change(dirs: &HostDirs, seed: &str) -> Result<(), BuildError> {
    let (upper, work) = dirs.seed_upper(seed);
    if upper.exists() {
        tracing::warn!(
            "the seed changed: removing its persistent upper {} (build-time packages there were installed against the old seed)",
            upper.display()
        );
    }
    for p in [&upper, &work] {
        store::remove_tree(p).map_err(|source| BuildError::Io {
            what: "cannot clean the seed overlay",
            path: PathBuf::from(p),
            source,
        })?;
    }
    crate::layers::seed::identity::refresh(&dirs.conf_root, seed, &dirs.seed(seed))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::builder::config::{CliOverrides, Defaults, resolve_seed};
    use crate::builder::namespace::{NsMount, RunStep};

    const T: &str = "aarch64-unknown-linux-gnu";

    /// Each step of a plan as one line (commands as their argv).
    pub(crate) fn argvs(plan: &Plan) -> Vec<String> {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::Run(RunStep { argv, .. }) => argv.join(" "),
                Step::Symlink { link, target } => {
                    format!("ln {} {}", link.display(), target.display())
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn env_of<'a>(plan: &'a Plan, i: usize, k: &str) -> Option<&'a str> {
        match &plan.steps[i] {
            Step::Run(r) => r.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()),
            _ => None,
        }
    }

    fn defaults(extra: &str) -> Defaults {
        let mut d = Defaults::embedded().unwrap();
        d.merge_text(extra, Path::new("d.toml")).unwrap();
        d
    }

    #[test]
    fn update_runs_the_update_args_then_depclean_on_the_seed_itself() {
        let d = defaults("[default.s3]\nprofile = \"default/linux/amd64/23.0\"\n");
        let cfg = resolve_seed("s3", &[], &CliOverrides::default(), &d).unwrap();
        let dirs = HostDirs::plain(Path::new("/conf"));
        let plan = update_plan(
            &cfg,
            &dirs,
            &cfg.seed_update_args,
            &IdMapping::root_default(),
        );
        assert_eq!(plan.root, Path::new("/conf/seeds/s3"));
        assert!(!plan.mounts.iter().any(|m| matches!(m, NsMount::Union(_))));
        assert_eq!(
            argvs(&plan),
            [
                "ln /etc/portage/make.profile /var/db/repos/gentoo/profiles/default/linux/amd64/23.0",
                "emerge --jobs 4 --update --deep --newuse --changed-use --with-bdeps=y --usepkg=y @world",
                "emerge --depclean",
            ]
        );
        // A crossdev target updates the cross root with the wrapper.
        let cli = CliOverrides {
            crossdev_target: Some(T.into()),
            ..Default::default()
        };
        let cfg = resolve_seed("s3", &[], &cli, &d).unwrap();
        let args = vec!["-u".to_owned(), "@world".to_owned()];
        let plan = update_plan(&cfg, &dirs, &args, &IdMapping::root_default());
        assert_eq!(
            argvs(&plan),
            [
                format!("emerge-{T} -u @world"),
                format!("emerge-{T} --depclean")
            ]
        );
        assert!(plan.mounts.iter().any(|m| matches!(m,
            NsMount::Bind { target, .. } if target == Path::new(&format!("/usr/{T}/var/cache/binpkgs")))));
    }

    #[test]
    fn crossdev_phase1_disables_usersandbox_even_when_listed() {
        for features in ["", "features = \"sandbox usersandbox buildpkg\"\n"] {
            let d = defaults(&format!("[env]\n{features}"));
            let cfg = resolve_seed("s3", &["glibc"], &CliOverrides::default(), &d).unwrap();
            let dirs = HostDirs::plain(Path::new("/conf"));
            let plan = crossdev_phase1(&cfg, &dirs, T, &IdMapping::root_default());
            assert_eq!(
                argvs(&plan),
                [
                    "emerge --usepkg=y --noreplace crossdev eselect-repository".to_owned(),
                    "eselect repository enable crossdev".to_owned(),
                    format!("crossdev --target {T}"),
                ]
            );
            for i in 0..3 {
                let f = env_of(&plan, i, "FEATURES").unwrap();
                let tokens: Vec<&str> = f.split_whitespace().collect();
                assert!(tokens.contains(&"-usersandbox"), "{f}");
                assert!(!tokens.contains(&"usersandbox"), "{f}");
            }
        }
    }

    #[test]
    fn crossdev_phase2_emerges_each_base_into_the_cross_root_without_root_args() {
        let d = defaults(&format!(
            "[crossdev_profile]\n{T} = \"default/linux/arm64/23.0\"\n"
        ));
        let cli = CliOverrides {
            crossdev_target: Some(T.into()),
            ..Default::default()
        };
        let cfg = resolve_seed("s3", &["glibc"], &cli, &d).unwrap();
        let dirs = HostDirs::plain(Path::new("/conf"));
        let plan = crossdev_phase2(&cfg, &dirs, &IdMapping::root_default());
        assert_eq!(
            argvs(&plan),
            [
                format!(
                    "ln /usr/{T}/etc/portage/make.profile /var/db/repos/gentoo/profiles/default/linux/arm64/23.0"
                ),
                format!(
                    "emerge-{T} --jobs=8 --verbose=y --usepkg=y --with-bdeps=n --oneshot baselayout"
                ),
                format!(
                    "emerge-{T} --jobs=8 --verbose=y --nodeps --usepkg=y --with-bdeps=n --oneshot sys-libs/glibc"
                ),
            ]
        );
        assert!(!argvs(&plan).iter().any(|a| a.contains("--root")));
        // The base layer's own env applies to its run (builtin base: USE=build).
        assert_eq!(env_of(&plan, 1, "USE"), Some("build"));
    }

    #[test]
    fn crossdev_layer_argv_forces_oneshot_and_keeps_a_config_overlay_out() {
        let d = Defaults::embedded().unwrap();
        let text = "seed = \"s\"\nconfig_overlay = \"ov\"\npackages = [\"a/b\"]\n[emerge_bools]\noneshot = false\n";
        let cli = CliOverrides {
            crossdev_target: Some(T.into()),
            ..Default::default()
        };
        let c =
            crate::builder::config::resolve_str(text, Path::new("/c/x.toml"), &cli, &d).unwrap();
        assert!(
            c.emerge
                .as_ref()
                .unwrap()
                .contains(&"--config-root".to_owned())
        );
        assert_eq!(
            crossdev_layer_argv(&c).unwrap().join(" "),
            format!("emerge-{T} --jobs=8 --verbose=y --usepkg=y --with-bdeps=n --oneshot a/b")
        );
    }

    #[test]
    fn crossdev_is_available_when_installed_or_in_a_repository() {
        let t = tempfile::tempdir().unwrap();
        let seed = t.path().join("seed");
        let repos = t.path().join("repos");
        std::fs::create_dir_all(seed.join("usr/bin")).unwrap();
        std::fs::create_dir_all(repos.join("gentoo/sys-devel")).unwrap();
        assert!(!crossdev_available(&seed, &repos));
        std::fs::create_dir_all(repos.join("gentoo/sys-devel/crossdev")).unwrap();
        assert!(crossdev_available(&seed, &repos));
        std::fs::remove_dir(repos.join("gentoo/sys-devel/crossdev")).unwrap();
        std::fs::write(seed.join("usr/bin/crossdev"), "#!/bin/sh\n").unwrap();
        assert!(crossdev_available(&seed, &repos));
    }
}
