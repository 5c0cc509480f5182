//! The gentree mount's tree, without FUSE: [`GentreeFs`] answers lookups, listings,
//! opens and reads with `io::Result`s; the fuser adapter ([`crate::fs::mount`]) only
//! decodes and replies.
//!
//! ```text
//! /                      ROOT
//! ├── seeds/<seed>/      read-only union of the seed (and its persistent upper)
//! ├── configs/           union whose upper is the configs dir: real files there
//! ├── builds/            <config>.tar (built on open) and <config>.log, per *.toml;
//! │                      <config>.oci/ (OCI image layout) and <config>.spdx.json
//! │                      (SBOM), made from the image when first read ([`oci`])
//! ├── layers/            <buildname>.tar: the newest published layer of each
//! │                      buildname as an OCI layer tar (whiteouts kept)
//! └── packages/<dir>/    read-only, live view of each binary package dir: `pkgdir*`
//!                        under the conf root and the configs' `_pkgdir` overrides
//! ```
//!
//! Inode and file handle numbers route requests to a node ([`super::inodes`]).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use parking_lot::{Mutex, RwLock};

mod oci;
pub use oci::ExtraOp;

use super::images::Images;
use super::inodes::{
    BUILDS, CONFIGS_UNION, LAYERS, PACKAGES, ROOT, SEEDS, TAR_GEN_SHIFT, TAR_GENS, TreeNode,
    split_fh, union_fh, union_fh_out, union_ino,
};
use crate::layers::ownership::FileKind;
use crate::layers::read_full_at;
use crate::layers::store::{BuildKey, Store};
use crate::layers::tar::{FilterSet, PackOptions, TarLayout};
use crate::layers::union::{Attr, Caller, DirEntry, Ino, SetAttr, StatFs, Union, UnionOptions};

/// The xattrs of `builds/<config>.tar`.
pub const XATTR_STATE: &str = "user.gentree.state";
pub const XATTR_KEY: &str = "user.gentree.key";

/// What an open file handle of the mount reads from: the data behind one `fh`.
#[derive(Debug)]
pub enum OpenData {
    /// `layers/<buildname>.tar` (immutable).
    Tar(Arc<TarLayout>),
    /// `builds/<name>.tar`.
    Image {
        name: String,
        image: Arc<TarLayout>,
        /// Opened through the page cache (not direct I/O): its reads fill the
        /// inode's pages, so they must stop once another image is served there.
        cached: bool,
    },
    /// A small file held in memory (`index.json`, an SBOM, a config blob).
    Bytes(Arc<[u8]>),
    /// A build log, read by path at each read: a log that does not exist yet when
    /// `tail -f` opens it, or that a new build starts afresh, is still followed.
    Log(PathBuf),
    /// A directory listing snapshot.
    Dir(Arc<Vec<DirEntry>>),
}

/// How an open should be answered.
#[derive(Debug)]
pub enum Opened {
    /// A file of stable content (the page cache may keep it).
    Cached(u64),
    /// A file that may have changed since its last open (the open drops its cached
    /// pages; reads use the page cache).
    Reread(u64),
    /// A file that grows or whose size the kernel may not know (direct I/O).
    Direct(u64),
    /// `builds/<name>.tar`: ask [`Images::open`] and reply when it answers.
    Image(String),
}

/// The mount's open file handles: each `fh` number and the [`OpenData`] it reads.
#[derive(Debug, Default)]
pub struct FhTable {
    map: Mutex<HashMap<u64, Arc<OpenData>>>,
    next: AtomicU64,
}

impl FhTable {
    pub fn insert(&self, h: OpenData) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.lock().insert(fh, Arc::new(h));
        fh
    }
    fn get(&self, fh: u64) -> io::Result<Arc<OpenData>> {
        self.map
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| io::Error::from(Errno::EBADF))
    }
    pub fn remove(&self, fh: u64) {
        self.map.lock().remove(&fh);
    }
}

/// Where the mount's parts live and who owns the synthetic files.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    pub seeds: PathBuf,
    pub configs: PathBuf,
    /// Scratch dir for the configs union (same filesystem as `configs`), or `None`.
    pub configs_work: Option<PathBuf>,
    pub uid: u32,
    pub gid: u32,
}

/// The whole tree.
pub struct GentreeFs {
    spec: TreeSpec,
    images: Arc<Images>,
    /// Unions by index: configs/ first, then seeds by name.
    unions: RwLock<Vec<(String, Arc<Union>)>>,
    /// Config names by builds index (names are never reused for another index).
    builds: RwLock<Vec<String>>,
    /// The generation of each builds index's tar inode, when not 0.
    tar_gens: Mutex<HashMap<usize, u64>>,
    /// Layer keys by layers index.
    layers: RwLock<Vec<BuildKey>>,
    /// OCI layouts of layers, by key (layers are immutable).
    oci: Mutex<HashMap<BuildKey, Arc<TarLayout>>>,
    /// The configs' OCI image layouts and SBOMs, and the blobs' inode numbers.
    extras: oci::Extras,
    pub handles: Arc<FhTable>,
    started: SystemTime,
}

impl std::fmt::Debug for GentreeFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GentreeFs")
            .field("spec", &self.spec)
            .finish()
    }
}

impl GentreeFs {
    pub fn new(spec: TreeSpec, images: Arc<Images>) -> io::Result<GentreeFs> {
        let configs = Union::new(&UnionOptions {
            lowers: Vec::new(),
            upper: Some(spec.configs.clone()),
            work: spec.configs_work.clone(),
            ..UnionOptions::default()
        })?;
        let extras = oci::Extras::new(&images);
        Ok(GentreeFs {
            spec,
            images,
            unions: RwLock::new(vec![("configs".into(), Arc::new(configs))]),
            builds: RwLock::new(Vec::new()),
            tar_gens: Mutex::new(HashMap::new()),
            layers: RwLock::new(Vec::new()),
            oci: Mutex::new(HashMap::new()),
            extras,
            handles: Arc::new(FhTable::default()),
            started: SystemTime::now(),
        })
    }

    pub fn images(&self) -> &Arc<Images> {
        &self.images
    }

    fn union(&self, u: usize) -> io::Result<Arc<Union>> {
        self.unions
            .read()
            .get(u)
            .map(|(_, un)| un.clone())
            .ok_or_else(|| io::Error::from(Errno::ESTALE))
    }

    /// The seed names: directories in the seeds dir other than uppers and work dirs.
    fn seed_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.spec.seeds)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| {
                        !n.starts_with('.') && !n.ends_with(".upper") && !n.ends_with(".work")
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The union of seed `name`, opened on first use.
    fn seed_union(&self, name: &str) -> io::Result<usize> {
        if let Some(i) = self.unions.read().iter().position(|(n, _)| n == name) {
            if i != CONFIGS_UNION {
                return Ok(i);
            }
        }
        if !self.seed_names().iter().any(|n| n == name) {
            return Err(Errno::ENOENT.into());
        }
        let seed = self.spec.seeds.join(name);
        let upper = self.spec.seeds.join(format!("{name}.upper"));
        let mut lowers = Vec::new();
        if upper.is_dir() {
            lowers.push(upper);
        }
        lowers.push(seed);
        self.read_only_union(name, lowers)
    }

    /// A read-only union of `lowers` under `key`, opened once. No upper: every
    /// write fails with EROFS; the lowers are read afresh (builds write them).
    fn read_only_union(&self, key: &str, lowers: Vec<PathBuf>) -> io::Result<usize> {
        let union = Union::new(&UnionOptions {
            lowers,
            volatile_lowers: true,
            ..UnionOptions::default()
        })?;
        let mut unions = self.unions.write();
        if let Some(i) = unions.iter().position(|(n, _)| n == key) {
            return Ok(i);
        }
        unions.push((key.to_owned(), Arc::new(union)));
        Ok(unions.len() - 1)
    }

    /// The binary package dirs by name: `pkgdir` and `pkgdir_*` dirs under the conf
    /// root, then the configs' own (a `_pkgdir` override elsewhere is named by its
    /// last component; a name already taken keeps its first dir).
    fn package_dirs(&self) -> Vec<(String, PathBuf)> {
        let root = &self.images.env().conf_root;
        let mut v: Vec<(String, PathBuf)> = Vec::new();
        let mut add = |name: String, path: PathBuf| {
            if path.is_dir() && !v.iter().any(|(n, p)| *n == name || *p == path) {
                v.push((name, path));
            }
        };
        if let Ok(d) = std::fs::read_dir(root) {
            for e in d.filter_map(Result::ok) {
                if let Ok(n) = e.file_name().into_string() {
                    if n == "pkgdir" || n.starts_with("pkgdir_") {
                        add(n, e.path());
                    }
                }
            }
        }
        for p in self.images.pkgdirs() {
            let name = p.file_name().and_then(|n| n.to_str()).map(str::to_owned);
            if let Some(name) = name.filter(|n| !n.starts_with('.')) {
                add(name, p);
            }
        }
        v.sort();
        v
    }

    /// The union of package dir `name`, opened on first use.
    fn package_union(&self, name: &str) -> io::Result<usize> {
        let key = format!("packages/{name}");
        if let Some(i) = self.unions.read().iter().position(|(n, _)| *n == key) {
            return Ok(i);
        }
        let (_, dir) = self
            .package_dirs()
            .into_iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
        self.read_only_union(&key, vec![dir])
    }

    /// The builds index of config `name`, if the config exists.
    fn build_index(&self, name: &str) -> Option<usize> {
        if !self.images.config_path(name).is_file() {
            return None;
        }
        if let Some(i) = self.builds.read().iter().position(|n| n == name) {
            return Some(i);
        }
        let mut b = self.builds.write();
        if let Some(i) = b.iter().position(|n| n == name) {
            return Some(i);
        }
        b.push(name.to_owned());
        Some(b.len() - 1)
    }

    /// The config a request on `ino` needs resolved when its resolution is not cached
    /// (`builds/<config>.tar`): the adapter then answers the request from a resolver
    /// thread ([`Images::when_resolved`]) instead of reading the config on its own.
    pub fn unresolved(&self, ino: u64) -> Option<String> {
        let Some(TreeNode::Tar(i)) = TreeNode::of(ino) else {
            return None;
        };
        let name = self.build_name(i).ok()?;
        (!self.images.is_resolved(&name)).then_some(name)
    }

    /// [`GentreeFs::unresolved`] for a lookup of `name` in `parent`.
    pub fn unresolved_entry(&self, parent: u64, name: &OsStr) -> Option<String> {
        let stem = name.to_str()?.strip_suffix(".tar")?;
        (parent == BUILDS
            && self.images.config_path(stem).is_file()
            && !self.images.is_resolved(stem))
        .then(|| stem.to_owned())
    }

    /// Whether an unlink of `name` in `parent` would read a config not resolved yet
    /// (`rm builds/<config>.tar` needs that config's layers).
    pub fn unlink_resolves(&self, parent: u64, name: &OsStr) -> bool {
        self.unresolved_entry(parent, name).is_some()
    }

    fn build_name(&self, i: usize) -> io::Result<String> {
        self.builds
            .read()
            .get(i)
            .cloned()
            .ok_or_else(|| io::Error::from(Errno::ESTALE))
    }

    /// The newest published layer of each buildname.
    fn layer_names(&self) -> Vec<(String, BuildKey)> {
        let Ok(store) = Store::open(&self.images.env().conf_root) else {
            return Vec::new();
        };
        let mut newest: HashMap<String, (u64, BuildKey)> = HashMap::new();
        for l in store.list().unwrap_or_default() {
            let e = newest
                .entry(l.meta.buildname.clone())
                .or_insert((l.meta.created, l.meta.key.clone()));
            if l.meta.created > e.0 {
                *e = (l.meta.created, l.meta.key.clone());
            }
        }
        let mut v: Vec<(String, BuildKey)> = newest.into_iter().map(|(n, (_, k))| (n, k)).collect();
        v.sort();
        v
    }

    fn layer_index(&self, key: &BuildKey) -> usize {
        if let Some(i) = self.layers.read().iter().position(|k| k == key) {
            return i;
        }
        let mut l = self.layers.write();
        if let Some(i) = l.iter().position(|k| k == key) {
            return i;
        }
        l.push(key.clone());
        l.len() - 1
    }

    /// The OCI layer tar of layer i: cached, else its persisted index, else a walk of
    /// the layer (then persisted in the layer dir).
    fn oci_layout(&self, i: usize) -> io::Result<Arc<TarLayout>> {
        let key = self
            .layers
            .read()
            .get(i)
            .cloned()
            .ok_or_else(|| io::Error::from(Errno::ESTALE))?;
        if let Some(l) = self.oci.lock().get(&key) {
            return Ok(l.clone());
        }
        let store =
            Store::open(&self.images.env().conf_root).map_err(|_| io::Error::from(Errno::EIO))?;
        let layer = store
            .lookup(&key)
            .map_err(|_| io::Error::from(Errno::EIO))?
            .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
        let idx = layer.dir.join("oci.idx");
        let root = layer.root();
        let loaded = TarLayout::load(&idx).ok().and_then(|mut l| {
            (l.layers() == [root.clone()] || l.relocate(vec![root.clone()]).is_ok()).then_some(l)
        });
        let layout = match loaded {
            Some(l) => l,
            None => {
                let opts = PackOptions {
                    filters: FilterSet::none(),
                    source_date_epoch: None,
                };
                let l = TarLayout::oci_layer(&[root], &opts).map_err(|e| {
                    tracing::warn!("layer {key}: {e}");
                    io::Error::from(Errno::EIO)
                })?;
                if let Err(e) = l.save(&idx) {
                    tracing::warn!("layer {key}: cannot save its index: {e}");
                }
                l
            }
        };
        let layout = Arc::new(layout);
        self.oci.lock().insert(key, layout.clone());
        Ok(layout)
    }

    fn dir_attr(&self, ino: u64, perm: u32) -> Attr {
        self.attr(ino, FileKind::Dir, perm, 0, self.started)
    }

    fn attr(&self, ino: u64, kind: FileKind, perm: u32, size: u64, mtime: SystemTime) -> Attr {
        Attr {
            node: Ino(ino),
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            kind,
            perm,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            uid: self.spec.uid,
            gid: self.spec.gid,
            rdev: 0,
            blksize: 4096,
            uncached_entry: false,
            // Synthetic entries change (images appear, sizes become known): never
            // given the long TTL of immutable lower-layer entries.
            from_lower: false,
        }
    }

    fn mapped(u: usize, mut a: Attr) -> Attr {
        a.node = Ino(union_ino(u, a.node.0));
        a.ino = a.node.0;
        a
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> io::Result<Attr> {
        let n = name.to_str();
        match TreeNode::of(parent).ok_or_else(|| io::Error::from(Errno::ENOENT))? {
            TreeNode::Root => match n {
                Some("seeds") => self.getattr(SEEDS),
                Some("builds") => self.getattr(BUILDS),
                Some("configs") => self.getattr(union_ino(CONFIGS_UNION, 1)),
                Some("layers") => self.getattr(LAYERS),
                Some("packages") => self.getattr(PACKAGES),
                _ => Err(Errno::ENOENT.into()),
            },
            TreeNode::Packages => {
                let u = self.package_union(n.ok_or_else(|| io::Error::from(Errno::ENOENT))?)?;
                self.getattr(union_ino(u, 1))
            }
            TreeNode::Seeds => {
                let u = self.seed_union(n.ok_or_else(|| io::Error::from(Errno::ENOENT))?)?;
                self.getattr(union_ino(u, 1))
            }
            TreeNode::Builds => {
                let n = n.ok_or_else(|| io::Error::from(Errno::ENOENT))?;
                if let Some(a) = self.extra_in_builds(n) {
                    return a;
                }
                let (stem, tar) = match (n.strip_suffix(".tar"), n.strip_suffix(".log")) {
                    (Some(s), _) => (s, true),
                    (_, Some(s)) => (s, false),
                    _ => return Err(Errno::ENOENT.into()),
                };
                let i = self
                    .build_index(stem)
                    .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
                self.getattr(if tar {
                    self.tar_ino_at(i)
                } else {
                    TreeNode::Log(i).ino()
                })
            }
            TreeNode::Layers => {
                let n = n.and_then(|n| n.strip_suffix(".tar"));
                let n = n.ok_or_else(|| io::Error::from(Errno::ENOENT))?;
                let (_, key) = self
                    .layer_names()
                    .into_iter()
                    .find(|(b, _)| b == n)
                    .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
                self.getattr(TreeNode::Layer(self.layer_index(&key)).ino())
            }
            TreeNode::Union(u, ino) => Ok(Self::mapped(u, self.union(u)?.lookup(ino, name)?)),
            TreeNode::Oci(i, part) => self.oci_lookup(i, part, name),
            TreeNode::Tar(_)
            | TreeNode::Log(_)
            | TreeNode::Layer(_)
            | TreeNode::Blob(_)
            | TreeNode::Sbom(_) => Err(Errno::ENOTDIR.into()),
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if let Some(TreeNode::Union(u, i)) = TreeNode::of(ino) {
            if let Ok(un) = self.union(u) {
                un.forget(i, n);
            }
        }
    }

    /// Attributes. Images, layers and logs show mode 0644 though they cannot be
    /// written (opens for writing get EACCES): `cp` gives its copy the source's mode,
    /// and a 0444 copy made `cp builds/x.tar .` fail the second time.
    /// An image reports its exact size once ready and 0 before (it is then
    /// opened with direct I/O, so readers still get every byte: see [`Opened`]).
    pub fn getattr(&self, ino: u64) -> io::Result<Attr> {
        match TreeNode::of(ino).ok_or_else(|| io::Error::from(Errno::ENOENT))? {
            TreeNode::Root => Ok(self.dir_attr(ROOT, 0o755)),
            TreeNode::Seeds => Ok(self.dir_attr(SEEDS, 0o555)),
            TreeNode::Builds => Ok(self.dir_attr(BUILDS, 0o755)),
            TreeNode::Layers => Ok(self.dir_attr(LAYERS, 0o555)),
            TreeNode::Packages => Ok(self.dir_attr(PACKAGES, 0o555)),
            TreeNode::Layer(i) => {
                let size = self.oci_layout(i)?.size();
                Ok(self.attr(ino, FileKind::File, FILE_MODE, size, self.started))
            }
            TreeNode::Tar(i) => {
                let name = self.build_name(i)?;
                let status = self.images.status(&name);
                let size = status.image.as_ref().map_or(0, |l| l.size());
                let mtime = std::fs::metadata(self.images.log_path(&name))
                    .and_then(|m| m.modified())
                    .unwrap_or(self.started);
                Ok(self.attr(ino, FileKind::File, FILE_MODE, size, mtime))
            }
            TreeNode::Log(i) => {
                let name = self.build_name(i)?;
                let (size, mtime) = match std::fs::metadata(self.images.log_path(&name)) {
                    Ok(m) => (m.len(), m.modified().unwrap_or(self.started)),
                    Err(_) => (0, self.started),
                };
                Ok(self.attr(ino, FileKind::File, FILE_MODE, size, mtime))
            }
            TreeNode::Union(u, i) => Ok(Self::mapped(u, self.union(u)?.getattr(i, None)?)),
            node @ (TreeNode::Oci(..) | TreeNode::Blob(_) | TreeNode::Sbom(_)) => {
                self.oci_getattr(node)
            }
        }
    }

    pub fn setattr(&self, ino: u64, set: SetAttr, fh: Option<u64>) -> io::Result<Attr> {
        match TreeNode::of(ino).ok_or_else(|| io::Error::from(Errno::ENOENT))? {
            TreeNode::Union(u, i) => {
                let fh = fh.and_then(|f| union_fh(u, f));
                Ok(Self::mapped(u, self.union(u)?.setattr(i, set, fh)?))
            }
            _ => Err(Errno::EPERM.into()),
        }
    }

    pub fn readlink(&self, ino: u64) -> io::Result<PathBuf> {
        match TreeNode::of(ino) {
            Some(TreeNode::Union(u, i)) => self.union(u)?.readlink(i),
            _ => Err(Errno::EINVAL.into()),
        }
    }

    /// Opens a directory; our own directories are listed here (a snapshot).
    pub fn opendir(&self, ino: u64) -> io::Result<u64> {
        let own = |list: Vec<(u64, FileKind, String)>| {
            let entries = list
                .into_iter()
                .map(|(ino, kind, name)| DirEntry {
                    name: OsString::from(name),
                    ino,
                    kind,
                })
                .collect();
            self.handles.insert(OpenData::Dir(Arc::new(entries)))
        };
        let dot = |ino: u64, parent: u64| {
            vec![
                (ino, FileKind::Dir, ".".to_owned()),
                (parent, FileKind::Dir, "..".to_owned()),
            ]
        };
        match TreeNode::of(ino).ok_or_else(|| io::Error::from(Errno::ENOENT))? {
            TreeNode::Root => {
                let mut v = dot(ROOT, ROOT);
                v.push((SEEDS, FileKind::Dir, "seeds".into()));
                v.push((union_ino(CONFIGS_UNION, 1), FileKind::Dir, "configs".into()));
                v.push((BUILDS, FileKind::Dir, "builds".into()));
                v.push((LAYERS, FileKind::Dir, "layers".into()));
                v.push((PACKAGES, FileKind::Dir, "packages".into()));
                Ok(own(v))
            }
            TreeNode::Packages => {
                let mut v = dot(PACKAGES, ROOT);
                for (name, _) in self.package_dirs() {
                    if let Ok(u) = self.package_union(&name) {
                        v.push((union_ino(u, 1), FileKind::Dir, name));
                    }
                }
                Ok(own(v))
            }
            TreeNode::Seeds => {
                let mut v = dot(SEEDS, ROOT);
                for name in self.seed_names() {
                    if let Ok(u) = self.seed_union(&name) {
                        v.push((union_ino(u, 1), FileKind::Dir, name));
                    }
                }
                Ok(own(v))
            }
            TreeNode::Builds => {
                let mut v = dot(BUILDS, ROOT);
                for name in self.images.names()? {
                    if let Some(i) = self.build_index(&name) {
                        v.push((self.tar_ino_at(i), FileKind::File, format!("{name}.tar")));
                        v.push((
                            TreeNode::Log(i).ino(),
                            FileKind::File,
                            format!("{name}.log"),
                        ));
                        v.extend(self.extras_in_builds(i, &name));
                    }
                }
                Ok(own(v))
            }
            TreeNode::Layers => {
                let mut v = dot(LAYERS, ROOT);
                for (name, key) in self.layer_names() {
                    let i = self.layer_index(&key);
                    v.push((
                        TreeNode::Layer(i).ino(),
                        FileKind::File,
                        format!("{name}.tar"),
                    ));
                }
                Ok(own(v))
            }
            TreeNode::Union(u, i) => Ok(union_fh_out(u, self.union(u)?.opendir(i)?.0)),
            TreeNode::Oci(i, part) => Ok(own(self.oci_listing(i, part)?)),
            TreeNode::Tar(_)
            | TreeNode::Log(_)
            | TreeNode::Layer(_)
            | TreeNode::Blob(_)
            | TreeNode::Sbom(_) => Err(Errno::ENOTDIR.into()),
        }
    }

    /// The listing of an open directory, with our inode numbers.
    pub fn readdir(&self, fh: u64) -> io::Result<Arc<Vec<DirEntry>>> {
        match split_fh(fh) {
            Some((u, f)) => {
                let list = self.union(u)?.readdir(f)?;
                Ok(Arc::new(
                    list.iter()
                        .map(|e| DirEntry {
                            name: e.name.clone(),
                            ino: union_ino(u, e.ino),
                            kind: e.kind,
                        })
                        .collect(),
                ))
            }
            None => match &*self.handles.get(fh)? {
                OpenData::Dir(d) => Ok(d.clone()),
                _ => Err(Errno::ENOTDIR.into()),
            },
        }
    }

    pub fn release(&self, fh: u64) {
        match split_fh(fh) {
            Some((u, f)) => {
                if let Ok(un) = self.union(u) {
                    un.release(f);
                }
            }
            None => self.handles.remove(fh),
        }
    }

    pub fn open(&self, ino: u64, flags: i32) -> io::Result<Opened> {
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        match TreeNode::of(ino).ok_or_else(|| io::Error::from(Errno::ENOENT))? {
            TreeNode::Union(u, i) => {
                let fh = union_fh_out(u, self.union(u)?.open(i, flags)?.0);
                // configs/ changes under us (editors, cp): no stale pages. Builds
                // write the seeds' uppers: their pages are dropped on each open.
                Ok(if u == CONFIGS_UNION {
                    Opened::Direct(fh)
                } else {
                    Opened::Reread(fh)
                })
            }
            TreeNode::Tar(_) | TreeNode::Log(_) | TreeNode::Layer(_) if writing => {
                Err(Errno::EACCES.into())
            }
            node @ (TreeNode::Oci(..) | TreeNode::Blob(_) | TreeNode::Sbom(_)) if !writing => {
                self.oci_open(node)
            }
            TreeNode::Oci(..) | TreeNode::Blob(_) | TreeNode::Sbom(_) => Err(Errno::EACCES.into()),
            TreeNode::Layer(i) => Ok(Opened::Cached(
                self.handles.insert(OpenData::Tar(self.oci_layout(i)?)),
            )),
            // An older generation of the tar (see `new_tar_generation`): the kernel
            // retries the open after a fresh lookup, which gives the current one.
            TreeNode::Tar(i) if ino != self.tar_ino_at(i) => Err(Errno::ESTALE.into()),
            TreeNode::Tar(i) => Ok(Opened::Image(self.build_name(i)?)),
            TreeNode::Log(i) => {
                let name = self.build_name(i)?;
                let path = self.images.log_path(&name);
                Ok(Opened::Direct(self.handles.insert(OpenData::Log(path))))
            }
            TreeNode::Root
            | TreeNode::Seeds
            | TreeNode::Builds
            | TreeNode::Layers
            | TreeNode::Packages => Err(Errno::EISDIR.into()),
        }
    }

    /// Reads `size` bytes at `offset` and hands them to `reply` (ours are read into a
    /// per-thread buffer reused across requests: no allocation or zeroing per READ).
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(io::Result<&[u8]>) -> R,
    ) -> R {
        if let Some((u, f)) = split_fh(fh) {
            return match self.union(u).and_then(|un| un.read(f, offset, size)) {
                Ok(v) => reply(Ok(&v)),
                Err(e) => reply(Err(e)),
            };
        }
        let h = match self.handles.get(fh) {
            Ok(h) => h,
            Err(e) => return reply(Err(e)),
        };
        READ_BUF.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
            let n = match &*h {
                OpenData::Tar(l) => l.read_at(offset, buf),
                // The config now has another image, whose pages the kernel keeps for
                // this inode: this reader's misses would fill them with old bytes.
                OpenData::Image {
                    name,
                    image,
                    cached: true,
                } if !self.images.is_served(name, image) => Err(Errno::ESTALE.into()),
                OpenData::Image { image, .. } => image.read_at(offset, buf),
                OpenData::Log(path) => read_log(path, offset, buf),
                OpenData::Bytes(b) => Ok(read_bytes(b, offset, buf)),
                OpenData::Dir(_) => Err(Errno::EISDIR.into()),
            };
            match n {
                Ok(n) => reply(Ok(&buf[..n])),
                Err(e) => reply(Err(e)),
            }
        })
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> io::Result<usize> {
        match split_fh(fh) {
            Some((u, f)) => self.union(u)?.write(f, offset, data),
            None => Err(Errno::EBADF.into()),
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        match split_fh(fh) {
            Some((u, f)) => self.union(u)?.fsync(f, datasync),
            None => Ok(()),
        }
    }

    /// Only configs/ (and, read-only, seeds/) take new names.
    fn union_dir(&self, parent: u64) -> io::Result<(usize, Ino, Arc<Union>)> {
        match TreeNode::of(parent).ok_or_else(|| io::Error::from(Errno::ENOENT))? {
            TreeNode::Union(u, i) => Ok((u, i, self.union(u)?)),
            TreeNode::Seeds | TreeNode::Packages => Err(Errno::EROFS.into()),
            _ => Err(Errno::EPERM.into()),
        }
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> io::Result<(Attr, u64)> {
        let (u, i, un) = self.union_dir(parent)?;
        let (a, fh) = un.create(i, name, mode, flags, caller)?;
        Ok((Self::mapped(u, a), union_fh_out(u, fh.0)))
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, caller: Caller) -> io::Result<Attr> {
        let (u, i, un) = self.union_dir(parent)?;
        Ok(Self::mapped(u, un.mkdir(i, name, mode, caller)?))
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> io::Result<Attr> {
        let (u, i, un) = self.union_dir(parent)?;
        Ok(Self::mapped(u, un.symlink(i, name, target, caller)?))
    }

    /// `rm builds/<config>.tar` drops the image ([`Images::remove`]).
    pub fn unlink(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        if parent == BUILDS {
            let stem = name
                .to_str()
                .and_then(|n| n.strip_suffix(".tar"))
                .ok_or_else(|| io::Error::from(Errno::EPERM))?;
            return self.images.remove(stem);
        }
        let (_, i, un) = self.union_dir(parent)?;
        un.unlink(i, name)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> io::Result<()> {
        let (_, i, un) = self.union_dir(parent)?;
        un.rmdir(i, name)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        let (u, i, un) = self.union_dir(parent)?;
        match TreeNode::of(newparent) {
            Some(TreeNode::Union(v, j)) if v == u => un.rename(i, name, j, newname, flags),
            _ => Err(Errno::EXDEV.into()),
        }
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> io::Result<Vec<u8>> {
        match TreeNode::of(ino).ok_or_else(|| io::Error::from(Errno::ENOENT))? {
            TreeNode::Union(u, i) => self.union(u)?.getxattr(i, name),
            TreeNode::Tar(b) => {
                let status = self.images.status(&self.build_name(b)?);
                match name.to_str() {
                    Some(XATTR_STATE) => Ok(status.state.as_str().as_bytes().to_vec()),
                    Some(XATTR_KEY) => status
                        .key
                        .map(|k| k.as_str().as_bytes().to_vec())
                        .ok_or_else(|| io::Error::from(Errno::ENODATA)),
                    _ => Err(Errno::ENODATA.into()),
                }
            }
            _ => Err(Errno::ENODATA.into()),
        }
    }

    /// The xattr names, NUL-terminated each.
    pub fn listxattr(&self, ino: u64) -> io::Result<Vec<u8>> {
        match TreeNode::of(ino).ok_or_else(|| io::Error::from(Errno::ENOENT))? {
            TreeNode::Union(u, i) => self.union(u)?.listxattr(i),
            TreeNode::Tar(b) => {
                let status = self.images.status(&self.build_name(b)?);
                let mut v = format!("{XATTR_STATE}\0").into_bytes();
                if status.key.is_some() {
                    v.extend_from_slice(format!("{XATTR_KEY}\0").as_bytes());
                }
                Ok(v)
            }
            _ => Ok(Vec::new()),
        }
    }

    pub fn statfs(&self) -> io::Result<StatFs> {
        self.union(CONFIGS_UNION)?.statfs()
    }

    /// The inode of `builds/<name>.tar`, if it has one yet.
    pub fn tar_ino(&self, name: &str) -> Option<u64> {
        self.builds
            .read()
            .iter()
            .position(|n| n == name)
            .map(|i| self.tar_ino_at(i))
    }

    /// The current inode of the tar of builds index `i`.
    fn tar_ino_at(&self, i: usize) -> u64 {
        let g = self.tar_gens.lock().get(&i).copied().unwrap_or(0);
        TreeNode::Tar(i).ino() + (g << TAR_GEN_SHIFT)
    }

    /// Gives `builds/<name>.tar` a new inode number: lookups from now on return it, and
    /// opens of the inode before fail with ESTALE (the kernel then looks the name up
    /// again and opens the new inode). For FUSE passthrough, which ties one backing
    /// file to an inode while it is open: a new image needs an inode of its own.
    pub fn new_tar_generation(&self, name: &str) {
        let Some(i) = self.build_index(name) else {
            return;
        };
        let mut gens = self.tar_gens.lock();
        let g = gens.entry(i).or_insert(0);
        *g = (*g + 1) % TAR_GENS;
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// How long the kernel may cache the attributes of `ino`: not at all for images
    /// and logs (an edited config or a finished build changes an image's size at
    /// once; a log grows), `ttl` for the rest.
    pub fn attr_ttl(ino: u64, ttl: Duration) -> Duration {
        match TreeNode::of(ino) {
            Some(TreeNode::Tar(_) | TreeNode::Log(_) | TreeNode::Sbom(_)) => Duration::ZERO,
            Some(TreeNode::Oci(_, super::inodes::OciPart::Index)) => Duration::ZERO,
            _ => ttl,
        }
    }
}

/// The mode of the mount's own files (see [`GentreeFs::getattr`]).
const FILE_MODE: u32 = 0o644;

thread_local! {
    /// The READ buffer of each FUSE worker thread (grows to the largest request).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads as much as the file has at `offset` (a log that grows meanwhile may give more).
/// Reads the log at `path` as it is now; no log yet reads as an empty one.
fn read_log(path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    match File::open(path) {
        Ok(f) => read_full_at(&f, offset, buf),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Copies what `b` has at `offset` into `buf`.
fn read_bytes(b: &[u8], offset: u64, buf: &mut [u8]) -> usize {
    let start = offset.min(b.len() as u64) as usize;
    let n = buf.len().min(b.len() - start);
    buf[..n].copy_from_slice(&b[start..start + n]);
    n
}
