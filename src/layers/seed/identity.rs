//! A seed's identity: a digest of its content, part of every layer key built on it.
//!
//! The digest covers every entry of `seeds/<name>/` as the image would see it:
//! names, types, in-image owners and modes (the `user.containers.override_stat`
//! record applied, so a root import and an ordinary user's import of the same stage3
//! agree), mtimes of non-directories, xattrs, contents, link targets and device
//! numbers ([`crate::layers::digest`] with [`TreeOptions::full`]). So the same stage3
//! imported on two machines gives the same identity, and `update-seed` or
//! `exec --persistent` give a new one exactly when they change something.
//!
//! ```text
//! state/seed-ids/<name>          "<sha256 hex> <newest mtime>\n"
//! state/digest-cache/seed-<name> file digests by identity (cheap recomputation)
//! ```
//!
//! The newest mtime of a seed file is the default build epoch (see
//! [`crate::builder::epoch`]): the stage3's own date, a function of its content.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::layers::digest::{self, DigestCache, DigestError, TreeOptions};
use crate::layers::layout::ConfRoot;

/// The identity of an imported seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedIdentity {
    /// Lowercase hex sha256 of the seed's content.
    pub digest: String,
    /// The newest mtime (seconds) of a non-directory in the seed.
    pub newest_mtime: i64,
}

/// Errors naming the seed and the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot compute the identity of seed {seed:?}")]
    Digest {
        seed: String,
        #[source]
        source: DigestError,
    },
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn id_path(conf_root: &Path, seed: &str) -> PathBuf {
    ConfRoot::new(conf_root).seed_id(seed)
}

fn cache_path(conf_root: &Path, seed: &str) -> PathBuf {
    ConfRoot::new(conf_root).digest_cache(&format!("seed-{seed}"))
}

fn parse(text: &str) -> Option<SeedIdentity> {
    let mut it = text.split_whitespace();
    let digest = it.next().filter(|d| d.len() == 64)?.to_owned();
    let newest_mtime = it.next()?.parse().ok()?;
    Some(SeedIdentity {
        digest,
        newest_mtime,
    })
}

/// The recorded identity of `seed`, computed from `seed_dir` when none is recorded
/// (a conf root from before identities were digests, or a seed put in place by hand).
pub fn get(conf_root: &Path, seed: &str, seed_dir: &Path) -> Result<SeedIdentity, IdentityError> {
    let p = id_path(conf_root, seed);
    match fs::read_to_string(&p) {
        Ok(t) => match parse(&t) {
            Some(id) => Ok(id),
            None => refresh(conf_root, seed, seed_dir),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => refresh(conf_root, seed, seed_dir),
        Err(source) => Err(IdentityError::Io {
            what: "read",
            path: p,
            source,
        }),
    }
}

/// Recomputes and records the identity of `seed` after its content changed (import,
/// `update-seed`, `exec --persistent`). Unchanged files are not read again.
pub fn refresh(
    conf_root: &Path,
    seed: &str,
    seed_dir: &Path,
) -> Result<SeedIdentity, IdentityError> {
    let cpath = cache_path(conf_root, seed);
    let mut cache = DigestCache::load(&cpath);
    let d = digest::digest_tree(seed_dir, &TreeOptions::full(), &mut cache).map_err(|source| {
        IdentityError::Digest {
            seed: seed.to_owned(),
            source,
        }
    })?;
    if let Err(e) = cache.save() {
        tracing::warn!("cannot save the digest cache {}: {e}", cpath.display());
    }
    let id = SeedIdentity {
        digest: d.hex,
        newest_mtime: d.newest_mtime,
    };
    let p = id_path(conf_root, seed);
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io { what, path, source }
    };
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let tmp = p.with_file_name(format!(".{seed}.tmp{}", std::process::id()));
    fs::write(&tmp, format!("{} {}\n", id.digest, id.newest_mtime)).map_err(io("write", &tmp))?;
    fs::rename(&tmp, &p).map_err(io("write", &p))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_identity_anywhere_and_changes_are_seen() -> Result<(), IdentityError> {
        let t = tempfile::tempdir().unwrap();
        let (c1, c2) = (t.path().join("conf1"), t.path().join("conf2"));
        let mk = |d: &Path| {
            fs::create_dir_all(d.join("etc")).unwrap();
            fs::write(d.join("etc/os-release"), "ID=gentoo\n").unwrap();
            let f = fs::File::options()
                .append(true)
                .open(d.join("etc/os-release"))
                .unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
                .unwrap();
        };
        let (s1, s2) = (t.path().join("s1"), t.path().join("s2"));
        mk(&s1);
        mk(&s2);
        let a = get(&c1, "stage3", &s1)?;
        let b = get(&c2, "stage3", &s2)?;
        assert_eq!(a, b, "two imports of the same content");
        assert_eq!(a.newest_mtime, 1_700_000_000);
        // Recorded: a change on disk is not seen until refreshed.
        fs::write(s1.join("etc/kept"), "").unwrap();
        assert_eq!(get(&c1, "stage3", &s1)?, a);
        let changed = refresh(&c1, "stage3", &s1)?;
        assert_ne!(changed.digest, a.digest);
        assert_eq!(get(&c1, "stage3", &s1)?, changed);
        // Undoing the change gives the old identity back.
        fs::remove_file(s1.join("etc/kept")).unwrap();
        assert_eq!(refresh(&c1, "stage3", &s1)?, a);
        Ok(())
    }
}
