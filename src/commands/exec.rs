//! `gentree-fs exec`: a command in a seed, in a throwaway layer or persistently.

use std::process::ExitCode;

use super::CmdResult;
use crate::builder::build::{self, HostDirs, SeedMounts, SeedRoot};
use crate::builder::namespace::{self, Plan, RunStep, Step};
use crate::cli::ExecArgs;
use crate::layers::seed;
use crate::layers::store;

pub fn run(args: &ExecArgs) -> CmdResult {
    seed::validate_name(&args.seed)?;
    let conf_root = match &args.conf_root {
        Some(d) => d.clone(),
        None => super::default_conf_root()?,
    };
    let dirs = HostDirs::plain(&conf_root);
    let seed_dir = dirs.seed(&args.seed);
    if !seed_dir.is_dir() {
        return Err(format!(
            "seed {:?} is not imported ({} does not exist): run `gentree-fs import-seed SOURCE {}`",
            args.seed,
            seed_dir.display(),
            args.seed
        )
        .into());
    }
    let mapping = super::sandbox_mapping(&dirs.conf_root)?;
    let scratch = dirs.run.join(format!("exec-{}", std::process::id()));
    let (root, seed_root) = if args.persistent {
        (seed_dir.clone(), SeedRoot::Direct)
    } else {
        (
            scratch.join("root"),
            SeedRoot::Union {
                upper: scratch.join("upper"),
                work: scratch.join("work"),
            },
        )
    };
    // A persistent exec writes the seed: no build may use it meanwhile.
    let _lock = if args.persistent {
        Some(build::lock_seed(&dirs, &args.seed)?)
    } else {
        None
    };
    let mounts = SeedMounts {
        dirs: &dirs,
        seed: &args.seed,
        root: seed_root,
        pkgdir: dirs.conf_root.join("pkgdir"),
        crossdev_target: None,
        system_repos: None,
        writable_repos: args.writable_repos,
    };
    mounts.create_dirs()?;
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let argv = if args.command.is_empty() {
        vec!["/bin/sh".to_owned()]
    } else {
        args.command.clone()
    };
    let plan = Plan {
        mapping,
        root,
        mounts: mounts.mounts(),
        steps: vec![Step::Run(RunStep::new(argv, namespace::base_env()))],
        cwd: "/".into(),
        no_network: args.no_network,
    };
    let status = namespace::run(&plan, None);
    if !args.persistent {
        let _ = store::remove_tree(&scratch);
    } else {
        crate::layers::seed::identity::refresh(
            &dirs.conf_root,
            &args.seed,
            &dirs.seed(&args.seed),
        )?;
    }
    let status = status?;
    Ok(ExitCode::from(match status.code() {
        Some(c) => u8::try_from(c).unwrap_or(1),
        None => 1,
    }))
}
