//! `clean-builds`: removes finished images and the layers no given config uses.
//!
//! Semantics (documented in `--help` and the README):
//! - every regular file directly in the build dir whose name ends in `.tar` (the
//!   images `build` wrote) is removed, as genTree's clean-builds does (B29); logs and
//!   directories stay;
//! - a published layer is kept when it is a layer (or a base layer) of one of the
//!   configs given, with the keys those configs have now; every other layer is
//!   removed, so with no config given every layer goes;
//! - a layer whose build lock is held (a build of that key is running) is never
//!   removed, nor the unfinished temp dir of such a build; unfinished temp dirs
//!   whose lock is free are leftovers of crashed builds and are removed;
//! - the mount's image files (`<conf_root>/images/<top key>-<digest>.tar`, kept by a
//!   privileged mount for FUSE passthrough) whose top layer is not kept are removed
//!   with it (reported as images), and so are unfinished ones (`*.tmp<pid>`).
//!   A running build that merely *reuses* a layer does not lock it: do not clean
//!   while builds run.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::builder::build::BuildError;
use crate::layers::layout::{ConfRoot, ImageFileName};
use crate::layers::store::{self, BuildKey, Store};

/// What was (or, with `dry_run`, would be) removed.
#[derive(Debug, Default)]
pub struct CleanReport {
    /// Image files and their sizes.
    pub images: Vec<(PathBuf, u64)>,
    /// Layers: key, buildname, bytes.
    pub layers: Vec<(BuildKey, String, u64)>,
    /// Unfinished temp dirs of crashed builds.
    pub stale: Vec<(PathBuf, u64)>,
    /// Layers kept because a build of that key holds its lock.
    pub busy: Vec<BuildKey>,
    /// Layers kept because a given config uses them.
    pub kept: usize,
}

impl CleanReport {
    /// Total bytes freed.
    pub fn bytes(&self) -> u64 {
        let sum = |v: &[(PathBuf, u64)]| v.iter().map(|(_, n)| n).sum::<u64>();
        sum(&self.images) + sum(&self.stale) + self.layers.iter().map(|(_, _, n)| n).sum::<u64>()
    }
}

/// Bytes of the files (and symlinks) in a tree, each hard-linked inode once.
pub fn tree_bytes(path: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
        let Ok(m) = fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_dir() {
            let Ok(rd) = fs::read_dir(p) else { return 0 };
            rd.filter_map(Result::ok)
                .map(|e| walk(&e.path(), seen))
                .sum()
        } else if seen.insert((m.dev(), m.ino())) {
            m.len()
        } else {
            0
        }
    }
    walk(path, &mut HashSet::new())
}

/// Removes the images in `builds` and the layers of `store` not in `keep`.
pub fn clean(
    builds: &Path,
    store: &Store,
    keep: &BTreeSet<BuildKey>,
    dry_run: bool,
) -> Result<CleanReport, BuildError> {
    let mut report = CleanReport::default();
    match fs::read_dir(builds) {
        Ok(rd) => {
            let mut images = Vec::new();
            for e in rd {
                let e = e.map_err(BuildError::io("cannot list", builds))?;
                let is_tar = e.file_name().to_str().is_some_and(|n| n.ends_with(".tar"));
                let m = e
                    .metadata()
                    .map_err(BuildError::io("cannot stat", &e.path()))?;
                if is_tar && m.is_file() {
                    images.push((e.path(), m.len()));
                }
            }
            images.sort();
            for (p, _) in &images {
                if !dry_run {
                    fs::remove_file(p).map_err(BuildError::io("cannot remove", p))?;
                }
            }
            report.images = images;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(BuildError::io("cannot list", builds)(e)),
    }
    report
        .images
        .extend(clean_image_files(store.conf_root(), keep, dry_run)?);
    for layer in store.list()? {
        let key = layer.meta.key.clone();
        if keep.contains(&key) {
            report.kept += 1;
            continue;
        }
        let Some(_lock) = store.try_lock(&key)? else {
            report.busy.push(key);
            continue;
        };
        let bytes = tree_bytes(&layer.dir);
        if !dry_run {
            store.remove(&key)?;
        }
        report
            .layers
            .push((key, layer.meta.buildname.clone(), bytes));
    }
    for (key, dir) in store.pending_dirs()? {
        let Some(_lock) = store.try_lock(&key)? else {
            continue;
        };
        let bytes = tree_bytes(&dir);
        if !dry_run {
            store::remove_tree(&dir).map_err(BuildError::io("cannot remove", &dir))?;
        }
        report.stale.push((dir, bytes));
    }
    Ok(report)
}

/// Removes the mount's image files whose top layer is not in `keep`, and unfinished
/// ones (a mount writing one right now loses it and writes it again on a later open).
fn clean_image_files(
    conf_root: &Path,
    keep: &BTreeSet<BuildKey>,
    dry_run: bool,
) -> Result<Vec<(PathBuf, u64)>, BuildError> {
    let dir = ConfRoot::new(conf_root).images();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BuildError::io("cannot list", &dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(BuildError::io("cannot list", &dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let file = ImageFileName::parse(name);
        if file
            .as_ref()
            .is_some_and(|f| f.finished && keep.contains(&f.top))
        {
            continue;
        }
        let m = e
            .metadata()
            .map_err(BuildError::io("cannot stat", &e.path()))?;
        if m.is_file() && file.is_some() {
            out.push((e.path(), m.len()));
        }
    }
    out.sort();
    if !dry_run {
        for (p, _) in &out {
            fs::remove_file(p).map_err(BuildError::io("cannot remove", p))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::store::LayerMeta;

    fn publish(s: &Store, c: char, bytes: usize) -> BuildKey {
        let k = BuildKey::parse(&c.to_string().repeat(64)).unwrap();
        let lock = s.lock(&k).unwrap();
        let p = s.begin(&k, &lock).unwrap();
        fs::write(p.root().join("f"), vec![0u8; bytes]).unwrap();
        std::os::unix::fs::symlink("f", p.root().join("l")).unwrap();
        fs::hard_link(p.root().join("f"), p.root().join("h")).unwrap();
        let meta = LayerMeta {
            key: k.clone(),
            name: c.to_string(),
            buildname: format!("s-{c}"),
            base_keys: vec![],
            created: 1,
            format: 1,
            packages: vec![],
        };
        s.publish(p, meta).unwrap();
        k
    }

    #[test]
    fn removes_images_and_unused_layers_but_not_locked_or_kept_ones() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let builds = t.path().join("builds");
        fs::create_dir_all(builds.join("sub.tar")).unwrap();
        fs::write(builds.join("a-full.tar"), vec![1u8; 300]).unwrap();
        fs::write(builds.join("a.log"), "log").unwrap();
        let kept = publish(&s, 'a', 1000);
        let unused = publish(&s, 'b', 2000);
        let busy = publish(&s, 'c', 10);
        // A crashed build's temp dir, and a running one's.
        let stale_key = BuildKey::parse(&"d".repeat(64)).unwrap();
        let p = s.begin(&stale_key, &s.lock(&stale_key).unwrap()).unwrap();
        fs::write(p.root().join("x"), vec![0u8; 7]).unwrap();
        let stale = p.root().parent().unwrap().to_path_buf();
        std::mem::forget(p);
        let busy_lock = s.lock(&busy).unwrap();
        let running = s.begin(&busy, &busy_lock).unwrap();

        // The mount's image files: of the kept layer, of the unused one, a half one.
        let files = t.path().join("images");
        fs::create_dir_all(&files).unwrap();
        let file = |k: &BuildKey, ext: &str| files.join(format!("{k}-0123abcd.{ext}"));
        fs::write(file(&kept, "tar"), vec![2u8; 40]).unwrap();
        fs::write(file(&unused, "tar"), vec![2u8; 50]).unwrap();
        fs::write(file(&kept, "tar.tmp77"), vec![2u8; 60]).unwrap();

        let keep: BTreeSet<BuildKey> = [kept.clone()].into();
        let dry = clean(&builds, &s, &keep, true).unwrap();
        let mut want = vec![
            (builds.join("a-full.tar"), 300),
            (file(&unused, "tar"), 50),
            (file(&kept, "tar.tmp77"), 60),
        ];
        want[1..].sort();
        assert_eq!(dry.images, want);
        assert!(file(&unused, "tar").exists(), "dry run removed");
        assert!(builds.join("a-full.tar").exists(), "dry run removed");
        assert!(s.lookup(&unused).unwrap().is_some());

        // 2000 data bytes once (f and its hard link h), the symlink's 1, meta.json.
        let meta = fs::metadata(s.layer_dir(&unused).join("meta.json")).unwrap();
        let unused_bytes = 2000 + 1 + meta.len();
        let r = clean(&builds, &s, &keep, false).unwrap();
        assert_eq!(r.layers, [(unused.clone(), "s-b".to_owned(), unused_bytes)]);
        assert_eq!(r.busy, std::slice::from_ref(&busy));
        assert_eq!(r.kept, 1);
        assert_eq!(r.stale, [(stale.clone(), 7)]);
        assert!(!builds.join("a-full.tar").exists());
        assert!(
            file(&kept, "tar").exists(),
            "a kept layer's image file was removed"
        );
        assert!(!file(&unused, "tar").exists() && !file(&kept, "tar.tmp77").exists());
        assert!(builds.join("a.log").exists() && builds.join("sub.tar").is_dir());
        assert!(s.lookup(&unused).unwrap().is_none());
        assert!(s.lookup(&kept).unwrap().is_some());
        assert!(s.lookup(&busy).unwrap().is_some());
        assert!(!stale.exists());
        assert!(
            running.root().exists(),
            "a running build's temp dir was removed"
        );
        assert_eq!(r.bytes(), 300 + 50 + 60 + 7 + unused_bytes);
    }

    #[test]
    fn tree_bytes_counts_hard_links_once() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), vec![0u8; 100]).unwrap();
        fs::hard_link(t.path().join("a"), t.path().join("b")).unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/c"), vec![0u8; 5]).unwrap();
        assert_eq!(tree_bytes(t.path()), 105);
        assert_eq!(tree_bytes(&t.path().join("missing")), 0);
    }
}
