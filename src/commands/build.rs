//! `gentree-fs build`: resolve, build or reuse every layer, write the image.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CmdResult;
use crate::builder::build::{self, BuildOptions, HostDirs};
use crate::builder::config::{CliOverrides, DefaultSources, Defaults, resolve_file};
use crate::builder::namespace::{IdMapping, idmap};
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
    let mapping = super::sandbox_mapping(&dirs.conf_root)?;
    std::fs::create_dir_all(&dirs.builds)
        .map_err(|e| format!("cannot create {}: {e}", dirs.builds.display()))?;
    let log = dirs.builds.join(format!("{}.log", cfg.buildname));
    crate::builder::crash::start_log(&log, "")
        .map_err(|e| format!("cannot create the log {}: {e}", log.display()))?;
    let opts = BuildOptions {
        rebuild: args.rebuild,
        no_network: args.no_network,
        mapping,
        cache: crate::cache::configured(args.cache.as_ref(), cfg.cache.as_deref()),
    };
    // Every failure's cause goes to the log too, also one before emerge starts.
    let report = build::build(&cfg, &dirs, &opts, &log).inspect_err(|e| {
        crate::builder::crash::log_failure(&log, e);
    })?;
    let out = match (&args.output, &cfg.output_file) {
        (Some(o), _) => o.clone(),
        (None, Some(f)) => dirs.builds.join(f),
        (None, None) => dirs.builds.join(format!("{}-full.tar", cfg.buildname)),
    };
    // The layers are clamped to the build epoch already; the image's own entries
    // (markers, the root) get it too.
    let sde = Some(report.epoch);
    let to_stdout = out == std::path::Path::new("-");
    let size = if to_stdout {
        image_to_stdout(&cfg, &report, sde)?
    } else {
        build::write_image(&cfg, &report, &out, sde)?
    };
    for (layer, outcome) in &report.layers {
        let what = outcome.word();
        eprintln!("  {what:6} {} ({})", layer.meta.buildname, layer.meta.key);
    }
    if !to_stdout {
        println!("{}", absolute(out).display());
    }
    write_extras(args, &cfg, &dirs, &report)?;
    eprintln!("image: {size} bytes, {} layers", report.layers.len());
    Ok(ExitCode::SUCCESS)
}

/// `--oci DIR` and `--sbom FILE`.
fn write_extras(
    args: &BuildArgs,
    cfg: &crate::builder::config::ResolvedConfig,
    dirs: &HostDirs,
    report: &build::BuildReport,
) -> Result<(), String> {
    if let Some(dir) = &args.oci {
        let layers: Vec<_> = report.layers.iter().map(|(l, _)| l.clone()).collect();
        let seed_dir = dirs.require_seed(&cfg.seed).map_err(|e| e.to_string())?;
        let spec = crate::oci::image::ImageSpec {
            top: cfg,
            layers: &layers,
            seed_dir: &seed_dir,
            epoch: report.epoch,
        };
        let image = crate::oci::image::build_image(&spec).map_err(|e| chain(&e))?;
        image.write_dir(dir).map_err(|e| chain(&e))?;
        eprintln!(
            "OCI image layout: {} ({})",
            absolute(dir.clone()).display(),
            image.manifest_digest()
        );
    }
    if let Some(file) = &args.sbom {
        let doc = crate::oci::sbom::document(&cfg.buildname, &report.image_layers(), report.epoch)
            .map_err(|e| chain(&e))?;
        crate::oci::write_atomic(file, &doc)
            .map_err(|e| format!("cannot write the SBOM {}: {e}", file.display()))?;
        eprintln!("SBOM: {}", absolute(file.clone()).display());
    }
    Ok(())
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error_chain(e)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// `-o -`: the image on standard output (as `pack -o -`).
fn image_to_stdout(
    cfg: &crate::builder::config::ResolvedConfig,
    report: &build::BuildReport,
    sde: Option<i64>,
) -> Result<u64, String> {
    use std::os::fd::AsFd;
    let opts = crate::layers::tar::PackOptions {
        filters: build::image_filters(cfg).map_err(|e| e.to_string())?,
        source_date_epoch: sde,
    };
    let layout = crate::layers::tar::TarLayout::flattened(&report.image_layers(), &opts)
        .map_err(|e| format!("laying out the image: {e}"))?;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("duplicating standard output: {e}"))?;
    layout
        .write_to_file(&mut std::fs::File::from(fd))
        .map_err(|e| format!("writing the image to standard output: {e}"))
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
        let subuid = std::fs::read_to_string("/etc/subuid").ok();
        let subgid = std::fs::read_to_string("/etc/subgid").ok();
        let free = idmap::free_range(subuid.as_deref(), subgid.as_deref());
        tracing::warn!("{}", idmap::single_mapping_warning(&user, free));
    }
}
