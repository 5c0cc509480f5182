//! `gentree-fs pack`: the flattened image (or the top layer's OCI tar) of layer
//! directories, written to a file or standard output.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::CmdResult;
use crate::cli::PackArgs;
use crate::layers::tar::{FilterSet, PackOptions, TarLayout};

/// The tree to pack for `--layer DIR`: a published layer's store dir
/// (`CONF_ROOT/layers/<key>`, holding `meta.json` and `root/`) means its `root/`, so
/// the metadata never lands in an image; any other dir is packed as it is.
fn layer_tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    if dir.join("meta.json").is_file() && root.is_dir() {
        tracing::info!(
            "{} is a published layer: packing its tree {}",
            dir.display(),
            root.display()
        );
        root
    } else {
        dir.to_path_buf()
    }
}

/// The default unprivileged maximum (`/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: i32 = 1 << 20;

pub fn run(args: &PackArgs) -> CmdResult {
    let mut filters = FilterSet::default();
    filters.apply_args(&args.filters)?;
    let source_date_epoch = match args.source_date_epoch {
        Some(e) => Some(e),
        None => env_epoch()?,
    };
    let opts = PackOptions {
        filters,
        source_date_epoch,
    };
    let layers: Vec<PathBuf> = args.layers.iter().map(|l| layer_tree(l)).collect();
    let layout = if args.oci_layer {
        TarLayout::oci_layer(&layers, &opts)?
    } else {
        TarLayout::flattened(&layers, &opts)?
    };
    tracing::debug!(
        "{} entries, {} bytes",
        layout.entries().len(),
        layout.size()
    );
    let mut out = open_output(&args.output)?;
    let regular = out.metadata().is_ok_and(|m| m.is_file());
    if !regular {
        // A larger pipe buffer means fewer wake-ups of the reader; best effort.
        let _ = nix::fcntl::fcntl(&out, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
    match layout.write_to_file(&mut out) {
        Ok(_) => {}
        // A reader that stops early (`| head`) is not an error of ours.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::from(141)),
        Err(e) => return Err(format!("writing {}: {e}", args.output.display()).into()),
    }
    if regular {
        out.sync_all()
            .map_err(|e| format!("writing {}: {e}", args.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `SOURCE_DATE_EPOCH` from the environment, if set and not empty.
fn env_epoch() -> Result<Option<i64>, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map(Some).map_err(|_| {
            format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds: unset it or fix it")
        }),
        _ => Ok(None),
    }
}

/// The output as a `File`, so data copies can use `sendfile`/`copy_file_range`.
/// `-` is a duplicate of standard output.
fn open_output(path: &Path) -> Result<File, String> {
    if path == Path::new("-") {
        let fd = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("duplicating standard output: {e}"))?;
        return Ok(File::from(fd));
    }
    File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_layer_dir_means_its_tree() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let layer = t.path().join("layers/abc");
        std::fs::create_dir_all(layer.join("root/etc")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(layer_tree(&layer), layer, "no meta.json: packed as it is");
        std::fs::write(layer.join("meta.json"), "{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(layer_tree(&layer), layer.join("root"));
        assert_eq!(layer_tree(&layer.join("root")), layer.join("root"));
    }
}
