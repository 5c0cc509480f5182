//! The layer store: published layers under `CONF_ROOT/layers`, addressed by key.
//!
//! ```text
//! layers/<key>/root/        the layer tree (union upper format: OCI whiteouts,
//!                           ownership in user.containers.override_stat)
//! layers/<key>/meta.json    LayerMeta
//! layers/<key>/oci-<tag>.idx, .sha256   the layer's OCI blob under one set of image
//!                           filters: tar index, digest and size (crate::oci::blob)
//! layers/<key>.lock         flock: held while a layer of that key is being built
//! layers/.tmp-<key>-<pid>-<n>/   a layer being built (never visible as finished)
//! ```
//!
//! Invariants:
//! - a directory `layers/<key>` is complete: it appears by one `rename` of a finished
//!   temp dir, after `meta.json` is written and synced;
//! - a [`Pending`] layer that is dropped without [`Store::publish`] is deleted, so a
//!   failed or interrupted build leaves nothing that looks finished;
//! - everything in the store is removable by the user who owns it, even directories
//!   an image wants read-only ([`remove_tree`] restores write permission as it goes).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// A layer's content key: lowercase hex sha256 of its inputs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BuildKey(String);

impl BuildKey {
    /// Accepts exactly 64 lowercase hex digits (so a key is always a safe file name).
    pub fn parse(s: &str) -> Option<BuildKey> {
        (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| BuildKey(s.to_owned()))
    }

    /// Builds a key from a sha256 digest.
    pub fn from_digest(digest: &[u8; 32]) -> BuildKey {
        BuildKey(crate::layers::digest::hex(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for logs and names shown to users.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl std::fmt::Display for BuildKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the store records beside a published layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub key: BuildKey,
    /// The config name (`nginx`) and buildname (`stage3-openrc-nginx`).
    pub name: String,
    pub buildname: String,
    /// Keys of the layers below this one, lowest first.
    pub base_keys: Vec<BuildKey>,
    /// Seconds since the epoch when it was published.
    pub created: u64,
    /// The layer format version the key was computed with.
    pub format: u32,
    /// The package directories the layer's key covers, with their digests.
    #[serde(default)]
    pub packages: Vec<PackageInput>,
}

/// One package directory of a repository that a layer's content depends on, with the
/// digest it had when the layer was built.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PackageInput {
    pub repo: String,
    /// `category/package`.
    pub package: String,
    /// Hex digest of the package directory; `absent` when the repository or the
    /// directory is not there (a package merged from a binary package of a
    /// repository this machine lacks).
    pub digest: String,
}

/// A published layer.
#[derive(Debug, Clone)]
pub struct Layer {
    pub dir: PathBuf,
    pub meta: LayerMeta,
}

impl Layer {
    /// The layer tree (union upper format).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// Store errors, each naming the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer metadata {path} is malformed")]
    BadMeta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The store under one conf root.
#[derive(Debug, Clone)]
pub struct Store {
    conf_root: PathBuf,
}

/// An exclusive build lock on one key, released on drop.
#[derive(Debug)]
pub struct KeyLock {
    _lock: Flock<File>,
}

/// A layer being built: `root()` is the upper dir, `work()` the union's work dir.
/// Deleted on drop unless published.
#[derive(Debug)]
pub struct Pending {
    key: BuildKey,
    dir: Option<PathBuf>,
}

impl Pending {
    pub fn key(&self) -> &BuildKey {
        &self.key
    }
    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }
    pub fn work(&self) -> PathBuf {
        self.dir().join("work")
    }
    fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!("cannot remove unfinished layer {}: {e}", dir.display());
            }
        }
    }
}

static PENDING_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens (creating) the store under `conf_root`.
    pub fn open(conf_root: &Path) -> Result<Store, StoreError> {
        let s = Store {
            conf_root: conf_root.to_path_buf(),
        };
        let layers = s.layers_dir();
        fs::create_dir_all(&layers).map_err(io_err("cannot create", &layers))?;
        Ok(s)
    }

    pub fn conf_root(&self) -> &Path {
        &self.conf_root
    }

    fn layers_dir(&self) -> PathBuf {
        crate::layers::layout::ConfRoot::new(&self.conf_root).layers()
    }

    /// Where the layer of `key` lives once published.
    pub fn layer_dir(&self, key: &BuildKey) -> PathBuf {
        self.layers_dir().join(key.as_str())
    }

    /// The published layer of `key`, if any.
    pub fn lookup(&self, key: &BuildKey) -> Result<Option<Layer>, StoreError> {
        let dir = self.layer_dir(key);
        let meta_path = dir.join("meta.json");
        let text = match fs::read(&meta_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &meta_path)(e)),
        };
        let meta = serde_json::from_slice(&text).map_err(|source| StoreError::BadMeta {
            path: meta_path.clone(),
            source,
        })?;
        Ok(Some(Layer { dir, meta }))
    }

    /// Every published layer, in key order.
    pub fn list(&self) -> Result<Vec<Layer>, StoreError> {
        let dir = self.layers_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("cannot list", &dir))? {
            let e = e.map_err(io_err("cannot list", &dir))?;
            if let Some(key) = e.file_name().to_str().and_then(BuildKey::parse) {
                if let Some(l) = self.lookup(&key)? {
                    out.push(l);
                }
            }
        }
        out.sort_by(|a, b| a.meta.key.cmp(&b.meta.key));
        Ok(out)
    }

    /// Takes the build lock of `key`, waiting for another builder to finish.
    pub fn lock(&self, key: &BuildKey) -> Result<KeyLock, StoreError> {
        let path = self.lock_path(key);
        let lock = lock_exclusive(&path).map_err(io_err("cannot lock", &path))?;
        Ok(KeyLock { _lock: lock })
    }

    fn lock_path(&self, key: &BuildKey) -> PathBuf {
        self.layers_dir().join(format!("{key}.lock"))
    }

    /// Takes the build lock of `key` only if nobody holds it: `None` means a build
    /// of that key is running (`clean-builds` leaves such layers alone).
    pub fn try_lock(&self, key: &BuildKey) -> Result<Option<KeyLock>, StoreError> {
        let path = self.lock_path(key);
        let lock = try_lock_exclusive(&path).map_err(io_err("cannot lock", &path))?;
        Ok(lock.map(|lock| KeyLock { _lock: lock }))
    }

    /// Temp dirs of unfinished layers (`.tmp-<key>-...`) with their keys.
    pub fn pending_dirs(&self) -> Result<Vec<(BuildKey, PathBuf)>, StoreError> {
        let layers = self.layers_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&layers).map_err(io_err("cannot list", &layers))? {
            let e = e.map_err(io_err("cannot list", &layers))?;
            let name = e.file_name();
            let key = name
                .to_str()
                .and_then(|n| n.strip_prefix(".tmp-"))
                .and_then(|n| n.get(..64))
                .and_then(BuildKey::parse);
            if let Some(k) = key {
                out.push((k, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Starts a layer of `key`: a fresh temp dir with empty `root/` and `work/`.
    /// The caller holds the key's lock, so any older temp dir of this key is a
    /// leftover of a crashed build and is removed first.
    pub fn begin(&self, key: &BuildKey, _lock: &KeyLock) -> Result<Pending, StoreError> {
        let layers = self.layers_dir();
        let prefix = format!(".tmp-{key}-");
        for e in fs::read_dir(&layers).map_err(io_err("cannot list", &layers))? {
            let e = e.map_err(io_err("cannot list", &layers))?;
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                remove_tree(&e.path()).map_err(io_err("cannot remove stale", &e.path()))?;
            }
        }
        let n = PENDING_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = layers.join(format!("{prefix}{}-{n}", std::process::id()));
        for sub in ["root", "work"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err("cannot create", &p))?;
        }
        Ok(Pending {
            key: key.clone(),
            dir: Some(dir),
        })
    }

    /// Publishes a finished layer atomically under `meta.key`. An existing layer of
    /// the same key is kept, and this one discarded: equal keys mean equal inputs.
    pub fn publish(&self, mut pending: Pending, meta: LayerMeta) -> Result<Layer, StoreError> {
        let Some(dir) = pending.dir.clone() else {
            return Err(io_err("layer already published", Path::new(""))(
                io::ErrorKind::InvalidInput.into(),
            ));
        };
        let work = dir.join("work");
        remove_tree(&work).map_err(io_err("cannot remove", &work))?;
        let meta_path = dir.join("meta.json");
        let mut f = File::create(&meta_path).map_err(io_err("cannot create", &meta_path))?;
        let json = serde_json::to_vec_pretty(&meta).map_err(|source| StoreError::BadMeta {
            path: meta_path.clone(),
            source,
        })?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(io_err("cannot write", &meta_path))?;
        let dest = self.layer_dir(&pending.key);
        match fs::rename(&dir, &dest) {
            Ok(()) => {
                pending.dir = None;
                let layers = self.layers_dir();
                File::open(&layers)
                    .and_then(|d| d.sync_all())
                    .map_err(io_err("cannot sync", &layers))?;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {} // `pending` drops and removes our copy
            Err(e) => return Err(io_err("cannot publish layer to", &dest)(e)),
        }
        drop(pending);
        self.lookup(&meta.key)?.ok_or_else(|| {
            io_err("published layer vanished:", &dest)(io::ErrorKind::NotFound.into())
        })
    }

    /// Removes a published layer (renamed away first, so it is never half-visible).
    pub fn remove(&self, key: &BuildKey) -> Result<bool, StoreError> {
        let dir = self.layer_dir(key);
        let trash = self.layers_dir().join(format!(
            ".trash-{key}-{}-{}",
            std::process::id(),
            PENDING_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("cannot remove layer", &dir)(e)),
        }
        remove_tree(&trash).map_err(io_err("cannot remove", &trash))?;
        Ok(true)
    }
}

/// Opens (creating) a lock file without touching its content.
fn open_lock_file(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Takes an exclusive `flock` on `path` (created if missing), waiting for the holder;
/// released when the returned guard drops. Layer keys and seeds are locked this way.
pub fn lock_exclusive(path: &Path) -> io::Result<Flock<File>> {
    Flock::lock(open_lock_file(path)?, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
}

/// [`lock_exclusive`] without waiting: `None` while someone else holds it.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<Flock<File>>> {
    match Flock::lock(open_lock_file(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io::Error::from(e)),
    }
}

/// Seconds since the epoch, for [`LayerMeta::created`].
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `rm -rf` that also removes trees whose directories are not writable (images
/// contain 0555 directories): on EACCES/EPERM it grants the owner rwx and retries.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return fs::remove_file(path),
        Ok(_) => {}
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    make_removable(path)?;
    fs::remove_dir_all(path)
}

fn make_removable(dir: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        return Ok(());
    }
    let mode = m.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700))?;
    }
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            make_removable(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> BuildKey {
        BuildKey::parse(&c.to_string().repeat(64)).expect("key")
    }

    fn meta(k: &BuildKey) -> LayerMeta {
        LayerMeta {
            key: k.clone(),
            name: "n".into(),
            buildname: "seed-n".into(),
            base_keys: vec![],
            created: 1,
            format: 1,
            packages: vec![],
        }
    }

    #[test]
    fn key_parse() {
        assert!(BuildKey::parse(&"a".repeat(64)).is_some());
        for bad in [
            "",
            "abc",
            &"A".repeat(64),
            &"g".repeat(64),
            &"a".repeat(65),
            "../x",
        ] {
            assert!(BuildKey::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(BuildKey::from_digest(&[0xab; 32]).as_str(), "ab".repeat(32));
    }

    #[test]
    fn publish_is_atomic_and_dropped_pending_vanishes() -> Result<(), Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        let s = Store::open(t.path())?;
        let k = key('a');
        assert!(s.lookup(&k)?.is_none());
        let lock = s.lock(&k)?;
        {
            let p = s.begin(&k, &lock)?;
            fs::write(p.root().join("half"), b"x")?;
            // dropped: a failed build
        }
        assert!(s.lookup(&k)?.is_none());
        assert_eq!(
            fs::read_dir(t.path().join("layers"))?.count(),
            1,
            "only the lock file"
        );
        let p = s.begin(&k, &lock)?;
        fs::create_dir(p.root().join("ro"))?;
        fs::write(p.root().join("ro/f"), b"data")?;
        fs::set_permissions(p.root().join("ro"), fs::Permissions::from_mode(0o555))?;
        let layer = s.publish(p, meta(&k))?;
        assert_eq!(fs::read(layer.root().join("ro/f"))?, b"data");
        assert!(!layer.dir.join("work").exists());
        assert_eq!(s.lookup(&k)?.map(|l| l.meta), Some(meta(&k)));
        assert_eq!(s.list()?.len(), 1);
        assert!(s.remove(&k)?);
        assert!(s.lookup(&k)?.is_none());
        assert!(!s.remove(&k)?);
        Ok(())
    }

    #[test]
    fn stale_temp_dirs_are_cleared_by_the_next_builder() -> Result<(), Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        let s = Store::open(t.path())?;
        let k = key('b');
        let lock = s.lock(&k)?;
        let p = s.begin(&k, &lock)?;
        let stale = p.dir().to_path_buf();
        std::mem::forget(p); // a crash: no Drop ran
        assert!(stale.exists());
        let _p2 = s.begin(&k, &lock)?;
        assert!(!stale.exists());
        Ok(())
    }

    #[test]
    fn try_lock_fails_while_a_build_holds_the_key() -> Result<(), Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        let s = Store::open(t.path())?;
        let k = key('c');
        let held = s.lock(&k)?;
        assert!(s.try_lock(&k)?.is_none(), "lock taken twice");
        let p = s.begin(&k, &held)?;
        assert_eq!(s.pending_dirs()?, [(k.clone(), p.dir().to_path_buf())]);
        drop(p);
        drop(held);
        assert!(s.try_lock(&k)?.is_some());
        assert!(s.pending_dirs()?.is_empty());
        Ok(())
    }
}
