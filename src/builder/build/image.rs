//! Writing the flattened, filtered image of a finished build.

use std::fs;
use std::path::Path;

use super::{BuildError, BuildReport};
use crate::builder::config::ResolvedConfig;
use crate::layers::tar::{FilterSet, PackOptions, TarLayout};

/// The tar filters of the final image: the top config's `tar_filters`.
pub fn image_filters(top: &ResolvedConfig) -> Result<FilterSet, BuildError> {
    let mut set = FilterSet::none();
    for (name, on) in &top.tar_filters.0 {
        set.set(name, *on).map_err(|source| BuildError::Filter {
            layer: top.buildname.clone(),
            source,
        })?;
    }
    Ok(set)
}

/// Writes the flattened, filtered image of a finished build to `out` atomically.
pub fn write_image(
    top: &ResolvedConfig,
    report: &BuildReport,
    out: &Path,
    source_date_epoch: Option<i64>,
) -> Result<u64, BuildError> {
    let opts = PackOptions {
        filters: image_filters(top)?,
        source_date_epoch,
    };
    let layout = TarLayout::flattened(&report.image_layers(), &opts).map_err(|source| {
        BuildError::Image {
            path: out.to_path_buf(),
            source,
        }
    })?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("image"),
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp).map_err(BuildError::io("cannot create", &tmp))?;
    tracing::info!(
        "writing the image {} ({} MiB)",
        out.display(),
        layout.size().div_ceil(1 << 20)
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let n = std::thread::scope(|s| {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            s.spawn(|| show_write_progress(&tmp, layout.size(), &done));
        }
        let n = layout
            .write_to_file(&mut f)
            .and_then(|n| f.sync_all().map(|_| n))
            .map_err(BuildError::io("cannot write", &tmp));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        n
    });
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, out).map_err(BuildError::io("cannot write", out))?;
    Ok(n)
}

/// On a terminal: how much of the image file is written, redrawn five times a second
/// on one line until `done`, then once more.
fn show_write_progress(tmp: &Path, total: u64, done: &std::sync::atomic::AtomicBool) {
    use std::io::Write;
    let draw = |written: u64| {
        let pct = (written * 100).checked_div(total).unwrap_or(100);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rwriting image: {} of {} MiB ({pct}%)   ",
            written >> 20,
            total.div_ceil(1 << 20)
        );
        let _ = err.flush();
    };
    draw(0);
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        draw(fs::metadata(tmp).map_or(0, |m| m.len()));
    }
    draw(fs::metadata(tmp).map_or(0, |m| m.len()));
    let _ = writeln!(std::io::stderr());
}
