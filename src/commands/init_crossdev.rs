//! `gentree-fs init-crossdev`: a crossdev toolchain and base packages in a seed.

use std::process::ExitCode;

use super::CmdResult;
use crate::builder::build::{self, HostDirs};
use crate::builder::config::{CliOverrides, resolve_seed};
use crate::builder::seed_ops;
use crate::cli::InitCrossdevArgs;

pub fn run(args: &InitCrossdevArgs) -> CmdResult {
    let defaults = super::load_defaults(args.data.no_config)?;
    let bases = [args.base.as_str()];
    let host = resolve_seed(&args.seed, &bases, &CliOverrides::default(), &defaults)?;
    let cross_cli = CliOverrides {
        crossdev_target: Some(args.tuple.clone()),
        ..CliOverrides::default()
    };
    // Resolved before anything runs, so a bad tuple or base fails early.
    let cross = resolve_seed(&args.seed, &bases, &cross_cli, &defaults)?;
    let dirs = HostDirs::new(&super::conf_root(&args.data.conf_root)?, &host);
    let seed_dir = dirs.require_seed(&host.seed)?;
    let repos = if host.bind_system_repos {
        host.system_repos.clone()
    } else {
        dirs.repos.clone()
    };
    if !seed_ops::crossdev_available(&seed_dir, &repos) {
        return Err(format!(
            "seed {seed:?} has no crossdev ({} has no usr/bin/crossdev) and no repository in {} provides sys-devel/crossdev: \
             sync the Gentoo repository first (`gentree-fs exec --conf-root {} {seed} emerge --sync`)",
            seed_dir.display(),
            repos.display(),
            dirs.conf_root.display(),
            seed = host.seed,
        )
        .into());
    }
    if cross
        .build_order()
        .iter()
        .any(|c| c.config_overlay.is_some())
    {
        tracing::warn!("init-crossdev ignores config_overlay (there is no layer root to overlay)");
    }
    let mapping = super::sandbox_mapping(&dirs.conf_root)?;
    std::fs::create_dir_all(&dirs.builds)
        .map_err(|e| format!("cannot create {}: {e}", dirs.builds.display()))?;
    let log = dirs
        .builds
        .join(format!("init-crossdev-{}-{}.log", host.seed, args.tuple));
    let _ = std::fs::remove_file(&log);
    let _lock = build::lock_seed(&dirs, &host.seed)?;
    let phase1 = seed_ops::crossdev_phase1(&host, &dirs, &args.tuple, &mapping);
    seed_ops::run_on_seed(&phase1, &host, &dirs, "crossdev set-up", &log)?;
    let phase2 = seed_ops::crossdev_phase2(&cross, &dirs, &mapping);
    seed_ops::run_on_seed(&phase2, &cross, &dirs, "cross base install", &log)?;
    eprintln!(
        "seed {} has a {} toolchain; build with -c {}",
        host.seed, args.tuple, args.tuple
    );
    Ok(ExitCode::SUCCESS)
}
