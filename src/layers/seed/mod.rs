//! Seed import: a stage3-style tarball or a directory becomes `CONF_ROOT/seeds/NAME`.
//!
//! Invariants:
//! - Atomic: everything is extracted into `seeds/.NAME.import-PID` and renamed into
//!   place (`renameat2(RENAME_NOREPLACE)`, or `RENAME_EXCHANGE` to replace an existing
//!   seed with `--force`, after which the old tree is deleted). On any error, and on
//!   SIGINT/SIGTERM (see [`interrupt`]), the temporary directory is removed and
//!   nothing else has changed.
//! - Nothing is written outside the temporary directory, whatever the archive says:
//!   see [`sink`] for the rules (no absolute names, no `..`, no hard link to anything
//!   but an earlier member, never through a symlink).
//! - Full metadata, unlike the reference tool (B28): owners (real as root, else
//!   the `user.containers.override_stat` xattr), setuid/setgid/sticky, directory
//!   modes, mtimes, fifos, device nodes (recorded as typed plain files when they
//!   cannot be created), `security.capability` and `user.*` xattrs; symlinks stay
//!   symlinks, absolute targets unchanged (the image is unpacked as a root).
//! - GNU sparse members (old GNU `S` and PAX 0.0/0.1/1.0, see [`sparse`]) import as
//!   the whole file under its real name; a map that does not fit is refused by name.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, renameat, renameat2};
use nix::sys::stat::Mode;

pub mod identity;
pub mod interrupt;
pub mod progress;
pub mod sink;
pub mod source;
pub mod sparse;

pub use interrupt::Interrupt;
pub use progress::Progress;
pub use sink::{Owners, Stats};

/// Errors of a seed import. Every variant names the path or archive member at fault.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(
        "invalid seed name {name:?}: {reason}; a seed name uses only letters, digits, \
         `.`, `_`, `+` and `-`, does not start with `.` and is at most {MAX_NAME} bytes"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot derive a seed name from {}: give NAME", path.display())]
    NoName { path: PathBuf },
    #[error("seed {name:?} already exists at {}: pass --force to replace it", path.display())]
    Exists { name: String, path: PathBuf },
    #[error("cannot read {}", path.display())]
    Source {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} contains the seeds directory {}: importing it would copy the import into itself",
        source_dir.display(), seeds.display()
    )]
    SourceContainsSeeds { source_dir: PathBuf, seeds: PathBuf },
    #[error("refusing hostile archive member {entry:?}: {reason}")]
    Hostile { entry: String, reason: String },
    #[error("cannot import archive member {entry:?}: {reason}")]
    Unsupported { entry: String, reason: String },
    #[error("member {entry:?}: cannot {op}")]
    Entry {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot read the archive after member {after:?} (is it a tar file, whole and uncorrupted?)"
    )]
    Archive {
        after: String,
        #[source]
        source: io::Error,
    },
    #[error("interrupted: nothing was imported")]
    Interrupted,
    #[error("cannot install the seed at {}", path.display())]
    Install {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The longest seed name accepted (room for the temporary name's prefix and suffix
/// within `NAME_MAX`).
pub const MAX_NAME: usize = 200;

/// Checks a seed name: non-empty, at most [`MAX_NAME`] bytes, `[A-Za-z0-9._+-]` only,
/// not starting with `.` (hidden names in `seeds/` are the import's temporary
/// directories, and this also rules out `.` and `..`), not ending in `.upper` (the
/// seed's persistent upper, `seeds/<name>.upper/`, lives beside it).
pub fn validate_name(name: &str) -> Result<(), SeedError> {
    let bad = |reason| {
        Err(SeedError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is too long");
    }
    if name.contains('/') {
        return bad("it contains `/`");
    }
    if name.starts_with('.') {
        return bad("it starts with `.`");
    }
    if name.ends_with(".upper") {
        return bad("`NAME.upper` is reserved for a seed's persistent upper layer");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    {
        return bad("it contains a character that is not allowed");
    }
    Ok(())
}

/// The default seed name: the source's file name up to its first dot
/// (`stage3-amd64-openrc-2025.tar.xz` gives `stage3-amd64-openrc-2025`).
pub fn default_name(source: &Path) -> Result<String, SeedError> {
    let no_name = || SeedError::NoName {
        path: source.to_path_buf(),
    };
    let file_name = match source.file_name() {
        Some(n) => n.to_os_string(),
        // `.`, `..`, `/`: name it after what it resolves to.
        None => fs::canonicalize(source)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_os_string()))
            .ok_or_else(no_name)?,
    };
    let s = file_name.to_str().ok_or_else(no_name)?;
    let stem = s.split('.').next().unwrap_or("");
    if stem.is_empty() {
        return Err(no_name());
    }
    validate_name(stem)?;
    Ok(stem.to_string())
}

/// What to import where.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub source: PathBuf,
    pub name: String,
    /// The data directory; the seed goes to `conf_root/seeds/name`.
    pub conf_root: PathBuf,
    pub force: bool,
    pub owners: Owners,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Report {
    pub dest: PathBuf,
    /// `directory` or the tarball's compression.
    pub format: &'static str,
    pub replaced: bool,
    pub stats: Stats,
    pub elapsed: Duration,
}

/// Imports a seed. See the module docs for the guarantees.
pub fn import(
    opts: &ImportOptions,
    intr: &Interrupt,
    progress: &mut Progress,
) -> Result<Report, SeedError> {
    validate_name(&opts.name)?;
    let start = Instant::now();
    let seeds = crate::layers::layout::ConfRoot::new(&opts.conf_root).seeds();
    let dest = seeds.join(&opts.name);
    let install_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: io::Error| SeedError::Install { path, source: e }
    };
    let exists = |p: &Path| fs::symlink_metadata(p).is_ok();
    if exists(&dest) && !opts.force {
        return Err(SeedError::Exists {
            name: opts.name.clone(),
            path: dest,
        });
    }
    let src_meta = fs::metadata(&opts.source).map_err(|e| SeedError::Source {
        path: opts.source.clone(),
        source: e,
    })?;
    fs::create_dir_all(&seeds).map_err(install_err(&seeds))?;
    if src_meta.is_dir() {
        let canon = |p: &Path| fs::canonicalize(p).map_err(install_err(p));
        let (src_c, seeds_c) = (canon(&opts.source)?, canon(&seeds)?);
        if seeds_c.starts_with(&src_c) {
            return Err(SeedError::SourceContainsSeeds {
                source_dir: opts.source.clone(),
                seeds,
            });
        }
    }

    let tmp_name = format!(".{}.import-{}", opts.name, std::process::id());
    let tmp = seeds.join(&tmp_name);
    if exists(&tmp) {
        // Left by a killed import that had our pid.
        fs::remove_dir_all(&tmp).map_err(install_err(&tmp))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(install_err(&tmp))?;

    let result = extract(opts, &src_meta, &tmp, intr, progress).and_then(|(format, stats)| {
        install(opts, &seeds, &tmp_name, &dest).map(|r| (format, stats, r))
    });
    progress.finish();
    match result {
        Ok((format, stats, replaced)) => Ok(Report {
            dest,
            format,
            replaced,
            stats,
            elapsed: start.elapsed(),
        }),
        Err(e) => {
            if let Err(re) = fs::remove_dir_all(&tmp) {
                if re.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove the temporary {}: {re}", tmp.display());
                }
            }
            Err(e)
        }
    }
}

fn extract(
    opts: &ImportOptions,
    src_meta: &fs::Metadata,
    tmp: &Path,
    intr: &Interrupt,
    progress: &mut Progress,
) -> Result<(&'static str, Stats), SeedError> {
    let mut sink = sink::Sink::new(tmp, opts.owners, intr, progress)?;
    let format = if src_meta.is_dir() {
        source::read_dir_tree(&opts.source, &mut sink)?;
        "directory"
    } else {
        let (comp, mut reader) = source::open_decompressed(&opts.source)?;
        source::read_tar(&mut reader, &mut sink)?;
        comp.name()
    };
    if intr.pending() {
        return Err(SeedError::Interrupted);
    }
    sink.finish()?;
    if intr.pending() {
        return Err(SeedError::Interrupted);
    }
    Ok((format, sink.stats.clone()))
}

/// Renames the finished temporary dir into place. Returns whether a seed was replaced.
fn install(
    opts: &ImportOptions,
    seeds: &Path,
    tmp_name: &str,
    dest: &Path,
) -> Result<bool, SeedError> {
    let err = |e: Errno| SeedError::Install {
        path: dest.to_path_buf(),
        source: io::Error::from(e),
    };
    let dir = nix::fcntl::open(
        seeds,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let name = opts.name.as_str();
    match renameat2(&dir, tmp_name, &dir, name, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => return Ok(false),
        Err(Errno::EEXIST) if opts.force => {}
        Err(Errno::EEXIST) => {
            return Err(SeedError::Exists {
                name: opts.name.clone(),
                path: dest.to_path_buf(),
            });
        }
        // Filesystems without renameat2 flags: the plain rename refuses a non-empty
        // existing directory, which every seed is.
        Err(Errno::EINVAL) if !opts.force => {
            renameat(&dir, tmp_name, &dir, name).map_err(err)?;
            return Ok(false);
        }
        Err(Errno::EINVAL) => {}
        Err(e) => return Err(err(e)),
    }
    // Replace: swap atomically, then delete the old tree (now at the temporary name).
    match renameat2(&dir, tmp_name, &dir, name, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {}
        Err(Errno::EINVAL) => {
            let old = format!(".{name}.old-{}", std::process::id());
            renameat(&dir, name, &dir, old.as_str()).map_err(err)?;
            renameat(&dir, tmp_name, &dir, name).map_err(err)?;
            renameat(&dir, old.as_str(), &dir, tmp_name).map_err(err)?;
        }
        Err(e) => return Err(err(e)),
    }
    let old = seeds.join(tmp_name);
    if let Err(e) = fs::remove_dir_all(&old) {
        tracing::warn!(
            "the new seed is in place, but the old one could not be fully removed from {}: {e}; remove it by hand",
            old.display()
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_validation_table() {
        for ok in ["gentoo", "stage3-amd64-openrc-2025", "a.b_c+d-e", "X1"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_NAME + 1);
        for bad in [
            "", ".", "..", ".hidden", "a/b", "../x", "a b", "é", "a\n", &long,
        ] {
            let e = validate_name(bad).expect_err(bad);
            assert!(e.to_string().contains("letters, digits"), "{e}");
        }
    }

    #[test]
    fn default_name_table() {
        let cases = [
            (
                "/x/stage3-amd64-openrc-2025.tar.xz",
                "stage3-amd64-openrc-2025",
            ),
            ("gentoo", "gentoo"),
            ("dir/gentoo/", "gentoo"),
            ("seed.tar", "seed"),
        ];
        for (src, want) in cases {
            assert_eq!(default_name(Path::new(src)).expect(src), want);
        }
        for bad in [".hidden.tar", "/x/a b.tar"] {
            assert!(default_name(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
