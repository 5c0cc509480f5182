//! Resolutions of config files, cached while none of the files they read changed.
//!
//! An entry holds the result of resolving one config path (success or error) and the
//! [`FileStamp`]s of every file that resolution read. It is served only while each
//! stamp is still current (a `stat` per file), so an edit, a replacement by rename, a
//! removal or the creation of a missing base is seen by the next lookup. The default
//! files and command-line overrides are fixed per cache (a daemon loads them once).
//!
//! One resolution per path runs at a time ([`ResolveCache::resolve`] callers of the
//! same path wait for the one running instead of each reading the file again). The
//! lock over the entries is never held while resolving or while stat'ing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::file::FileStamp;
use super::{CliOverrides, ConfigError, Defaults, ResolvedConfig, resolve_file_stamped};

/// A resolution's result, shareable between the callers that asked for it.
pub type Resolution = Result<Arc<ResolvedConfig>, Arc<ConfigError>>;

#[derive(Debug)]
struct Entry {
    files: Arc<Vec<FileStamp>>,
    result: Resolution,
}

#[derive(Debug)]
pub struct ResolveCache {
    cli: CliOverrides,
    defaults: Arc<Defaults>,
    entries: Mutex<HashMap<PathBuf, Entry>>,
    /// Paths being resolved now; `done` wakes their waiters.
    running: Mutex<std::collections::HashSet<PathBuf>>,
    done: Condvar,
}

impl ResolveCache {
    pub fn new(cli: CliOverrides, defaults: Arc<Defaults>) -> ResolveCache {
        ResolveCache {
            cli,
            defaults,
            entries: Mutex::new(HashMap::new()),
            running: Mutex::new(Default::default()),
            done: Condvar::new(),
        }
    }

    /// The cached resolution of `path` if every file it read is unchanged; never
    /// reads a config (only stats the files), so it is cheap enough for any caller.
    pub fn cached(&self, path: &Path) -> Option<Resolution> {
        let (files, result) = {
            let entries = self.entries.lock();
            let e = entries.get(path)?;
            (e.files.clone(), e.result.clone())
        };
        files.iter().all(FileStamp::is_current).then_some(result)
    }

    /// The resolution of `path`: the cached one while current, else resolved now
    /// (or by the caller already resolving it, whose result this one waits for).
    pub fn resolve(&self, path: &Path) -> Resolution {
        loop {
            if let Some(r) = self.cached(path) {
                return r;
            }
            let mut running = self.running.lock();
            if running.contains(path) {
                self.done.wait(&mut running);
                continue;
            }
            running.insert(path.to_path_buf());
            break;
        }
        let (result, files) = resolve_file_stamped(path, &self.cli, &self.defaults);
        let result: Resolution = result.map(Arc::new).map_err(Arc::new);
        self.entries.lock().insert(
            path.to_path_buf(),
            Entry {
                files: Arc::new(files),
                result: result.clone(),
            },
        );
        self.running.lock().remove(path);
        self.done.notify_all();
        result
    }

    /// Forgets `path` (its config was removed).
    pub fn forget(&self, path: &Path) {
        self.entries.lock().remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> ResolveCache {
        ResolveCache::new(
            CliOverrides::default(),
            Arc::new(Defaults::embedded().unwrap()),
        )
    }

    #[test]
    fn served_until_the_config_or_a_base_changes() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("app.toml");
        let base = d.path().join("b.toml");
        std::fs::write(&base, "packages = [\"a/one\"]\n").unwrap();
        std::fs::write(&top, "seed = \"s\"\nbases = [\"b.toml\"]\n").unwrap();
        let c = cache();
        assert!(c.cached(&top).is_none());
        let first = c.resolve(&top).unwrap();
        let again = c.cached(&top).expect("cached").unwrap();
        assert!(Arc::ptr_eq(&first, &again), "not resolved again");

        // A base edited (by rename, as editors save): resolved again, the edit seen.
        let tmp = d.path().join("b.new");
        std::fs::write(&tmp, "packages = [\"a/two\"]\n").unwrap();
        std::fs::rename(&tmp, &base).unwrap();
        assert!(c.cached(&top).is_none());
        let edited = c.resolve(&top).unwrap();
        assert_eq!(edited.bases[0].packages, ["a/two"]);

        // Errors are cached too, and so is the absence of a missing base.
        std::fs::write(&top, "seed = \"s\"\nbases = [\"gone.toml\"]\n").unwrap();
        assert!(c.resolve(&top).is_err());
        assert!(c.cached(&top).expect("cached error").is_err());
        std::fs::write(d.path().join("gone.toml"), "packages = [\"a/three\"]\n").unwrap();
        assert!(c.cached(&top).is_none(), "the base appeared");
        assert_eq!(c.resolve(&top).unwrap().bases[0].packages, ["a/three"]);

        c.forget(&top);
        assert!(c.cached(&top).is_none());
    }

    #[test]
    fn concurrent_callers_share_one_resolution() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("app.toml");
        std::fs::write(&top, "seed = \"s\"\n").unwrap();
        let c = cache();
        let results: Vec<Arc<ResolvedConfig>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| c.resolve(&top).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| Arc::ptr_eq(r, &results[0])));
    }
}
