//! `gentree-fs build`: resolve, build or reuse every layer, write the image.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CmdResult;
use crate::builder::build::{self, BuildOptions, HostDirs, Outcome};
use crate::builder::config::{CliOverrides, DefaultSources, Defaults, resolve_file};
use crate::builder::namespace::{self, IdMapping, idmap};
use crate::cli::BuildArgs;

pub fn run(args: &BuildArgs) -> CmdResult {
    let sources = if args.no_config {
        DefaultSources::none()
    } else {
        DefaultSources::from_env()
    };
    let defaults = Defaults::load(&sources)?;
    let cfg = resolve_file(&args.file, &CliOverrides::from(&args.select), &defaults)?;
    let conf_root = match &args.conf_root {
        Some(d) => d.clone(),
        None => super::default_conf_root()?,
    };
    let dirs = HostDirs::new(&conf_root, &cfg);
    let mapping = namespace::current_mapping();
    warn_single_mapping(&mapping);
    std::fs::create_dir_all(&dirs.builds)
        .map_err(|e| format!("cannot create {}: {e}", dirs.builds.display()))?;
    let log = dirs.builds.join(format!("{}.log", cfg.buildname));
    let _ = std::fs::remove_file(&log);
    let opts = BuildOptions {
        rebuild: args.rebuild,
        mapping,
    };
    let report = build::build(&cfg, &dirs, &opts, &log)?;
    let out = match (&args.output, &cfg.output_file) {
        (Some(o), _) => o.clone(),
        (None, Some(f)) => dirs.builds.join(f),
        (None, None) => dirs.builds.join(format!("{}-full.tar", cfg.buildname)),
    };
    // The layers are clamped to the build epoch already; the image's own entries
    // (markers, the root) get it too.
    let size = build::write_image(&cfg, &report, &out, Some(report.epoch))?;
    for (layer, outcome) in &report.layers {
        let what = match outcome {
            Outcome::Reused => "reused",
            Outcome::Built => "built",
        };
        eprintln!("  {what:6} {} ({})", layer.meta.buildname, layer.meta.key);
    }
    println!("{}", absolute(out).display());
    eprintln!("image: {size} bytes, {} layers", report.layers.len());
    Ok(ExitCode::SUCCESS)
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// Says once, clearly, what a build without subordinate ids cannot do.
pub fn warn_single_mapping(mapping: &IdMapping) {
    if let IdMapping::Single { uid, .. } = mapping {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        tracing::warn!("{}", idmap::single_mapping_warning(&user));
    }
}
