//! `gentree-fs clean-builds`: remove images and layers no given config uses.

use std::collections::BTreeSet;
use std::process::ExitCode;

use super::CmdResult;
use crate::builder::build::{HostDirs, plan_jobs};
use crate::builder::clean;
use crate::builder::config::{CliOverrides, resolve_file};
use crate::cli::CleanBuildsArgs;
use crate::layers::store::Store;

pub fn run(args: &CleanBuildsArgs) -> CmdResult {
    let conf_root = super::conf_root(&args.data.conf_root)?;
    let dirs = HostDirs::plain(&conf_root);
    let store = Store::open(&dirs.conf_root)?;
    let mut keep = BTreeSet::new();
    if !args.files.is_empty() {
        let defaults = super::load_defaults(args.data.no_config)?;
        let cli = CliOverrides::from(&args.select);
        for file in &args.files {
            let cfg = resolve_file(file, &cli, &defaults)?;
            let cdirs = HostDirs::new(&conf_root, &cfg);
            keep.extend(plan_jobs(&cfg, &store, &cdirs)?.into_iter().map(|j| j.key));
        }
    }
    let r = clean::clean(&dirs.builds, &store, &keep, args.dry_run)?;
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for (p, n) in &r.images {
        println!("{verb} image {} ({n} bytes)", p.display());
    }
    for (k, name, n) in &r.layers {
        println!("{verb} layer {} {name} ({n} bytes)", k.short());
    }
    for (p, n) in &r.stale {
        println!("{verb} unfinished build {} ({n} bytes)", p.display());
    }
    for k in &r.busy {
        println!("kept layer {}: a build of it is running", k.short());
    }
    println!(
        "{} {} bytes: {} images, {} layers, {} unfinished builds; {} layers kept",
        if args.dry_run { "would free" } else { "freed" },
        r.bytes(),
        r.images.len(),
        r.layers.len(),
        r.stale.len(),
        r.kept + r.busy.len(),
    );
    Ok(ExitCode::SUCCESS)
}
