//! `gentree-fs update-seed`: update a seed in place, then clear its stale upper.

use std::process::ExitCode;

use super::CmdResult;
use crate::builder::build::{self, HostDirs};
use crate::builder::config::{CliOverrides, emerge, resolve_seed};
use crate::builder::seed_ops;
use crate::cli::UpdateSeedArgs;

pub fn run(args: &UpdateSeedArgs) -> CmdResult {
    let defaults = super::load_defaults(args.data.no_config)?;
    let cfg = resolve_seed(
        &args.seed,
        &[],
        &CliOverrides::from(&args.select),
        &defaults,
    )?;
    let dirs = HostDirs::new(&super::conf_root(&args.data.conf_root)?, &cfg);
    dirs.require_seed(&cfg.seed)?;
    let update_args = match &args.update_args {
        Some(text) => {
            emerge::shell_split(text).map_err(|why| format!("UPDATE_ARGS {text:?}: {why}"))?
        }
        None => cfg.seed_update_args.clone(),
    };
    let mapping = super::sandbox_mapping(&dirs.conf_root)?;
    std::fs::create_dir_all(&dirs.builds)
        .map_err(|e| format!("cannot create {}: {e}", dirs.builds.display()))?;
    let log = dirs.builds.join(format!("update-seed-{}.log", cfg.seed));
    let _ = std::fs::remove_file(&log);
    let _lock = build::lock_seed(&dirs, &cfg.seed)?;
    let plan = seed_ops::update_plan(&cfg, &dirs, &update_args, &mapping);
    seed_ops::run_on_seed(&plan, &cfg, &dirs, "update", &log)?;
    eprintln!(
        "seed {} updated; layers built on it will be rebuilt",
        cfg.seed
    );
    Ok(ExitCode::SUCCESS)
}
