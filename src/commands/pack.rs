//! `gentree-fs pack`: the flattened image (or the top layer's OCI tar) of layer
//! directories, written to a file or standard output.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use super::CmdResult;
use crate::cli::PackArgs;
use crate::layers::tar::{FilterSet, PackOptions, TarLayout};

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
    let layout = if args.oci_layer {
        TarLayout::oci_layer(&args.layers, &opts)?
    } else {
        TarLayout::flattened(&args.layers, &opts)?
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
