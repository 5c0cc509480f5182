//! The union view: a writable upper layer over read-only lower layers, with kernel
//! overlayfs semantics, computed in userspace.
//!
//! Layers are indexed topmost first: index 0 is the upper layer when there is one, then
//! the lower layers in `lowerdir` order. Lower layers are never modified.
//!
//! - **Lookup** walks a directory's layers top down: the first entry wins; a whiteout in
//!   any encoding ([`crate::layers::whiteout`]) stops the walk; a directory merges with
//!   the directories of the same path below it until an opaque one.
//! - **Copy-up** copies an entry (data, mode, owner, times, xattrs) into the upper layer
//!   before any change: built in the work dir, then renamed into place with
//!   `RENAME_NOREPLACE`, so a concurrent copy-up of the same file loses harmlessly and
//!   a crash never leaves a half-copied file in the upper layer.
//! - **Deletion** of a name that exists below writes an OCI whiteout (`.wh.NAME`); a
//!   directory created where a whiteout was is made opaque (`.wh..wh..opq`).
//! - **Rename** of a directory that exists in a lower layer copies its merged tree to
//!   the new name, opaque, and whites out the old one ([`rename_dir`]): what kernel
//!   overlayfs with `redirect_dir=on` shows, with the upper staying an OCI layer. The
//!   copy links files rather than copying their data ([`shared`]).
//! - **Ownership**: as root of the initial user namespace the union chowns for real;
//!   otherwise (an ordinary user, root of a user namespace, or a chown refused with
//!   EPERM/EINVAL) it records
//!   `uid:gid:mode[:type]` in `user.containers.override_stat` and keeps the file on
//!   disk readable and removable by the daemon's user. Recorded values are presented
//!   everywhere, for lower files too. The private xattrs are hidden from users.
//!
//! - **Without opens** (the kernel's no-open mode, chosen by the adapter when there is
//!   no passthrough): reads and writes by node through one file of each node
//!   ([`node_files`]), listings by offset-named snapshots ([`dir_snapshots`]).
//!
//! Every method takes node ids and returns `io::Result` carrying the OS errno; the
//! FUSE adapter (`crate::fs::union`) only decodes and replies. No lock is held across
//! disk I/O: the node arena ([`tree`]) and the handle table are locked only to look up
//! or insert. The one exception is the `moving` lock: changes to the upper layer hold
//! it shared, and a rename of a lower directory holds it exclusively while it copies
//! the tree, so that nothing changes below the old name between snapshot and swap.

mod dir_snapshots;
pub mod hostpath;
pub mod lower;
mod node_files;
pub mod options;
pub mod records;
pub mod rename_dir;
pub mod shared;
pub mod tree;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use nix::fcntl::{AT_FDCWD, AtFlags, RenameFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use parking_lot::RwLock;

use crate::layers::ownership::{self, Effective, FileKind, OVERRIDE_XATTR, OverrideStat};
use crate::layers::whiteout::{self, Marker};
use hostpath::HostPath;

pub use options::{OptionsError, UnionOptions};
pub use tree::{Ino, LinkKey, Loc, ROOT};

/// Name of the scratch directory the union keeps inside the work dir.
pub const WORK_SUBDIR: &str = "gentree-work";

/// Attributes of one merged entry, as the union presents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Node id (FUSE nodeid); stable for the life of the mount, one per file (all
    /// names of a hard-linked upper file share it).
    pub node: Ino,
    /// `st_ino`: equal to `node`.
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: FileKind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub blksize: u32,
    /// The name looked up belongs to a hard-link group of a lower layer: it may resolve
    /// to another node once a name of the group is copied up, so the kernel must look
    /// it up again on every use (no entry cache).
    pub uncached_entry: bool,
    /// The entry lives only in lower layers (its topmost entry is in a lower layer):
    /// nothing changes it but the union itself, so the kernel may cache it long.
    pub from_lower: bool,
}

/// One entry of a merged directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: FileKind,
}

/// Who asks: owner of new files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// A time to set: now, or a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(SystemTime),
}

/// The changes of one `setattr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// How ownership reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerMode {
    /// chown/chmod for real, falling back to [`OwnerMode::Record`] per file on EPERM/EINVAL.
    Chown,
    /// Record owner, group, mode (and type) in `user.containers.override_stat`.
    Record,
}

/// Internal: "retry [`Union::rename`] holding the `moving` lock alone". Not an errno
/// any syscall returns to the union, so it never leaks.
const RETRY_ALONE: i32 = -1;

/// `renameat2` flags the union understands.
pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
/// Atomic exchange: not supported (EINVAL), as for kernel overlayfs over most uppers.
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;

/// Filesystem statistics of the upper (or topmost) layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// An open file or directory of the union.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

#[derive(Debug)]
enum Handle {
    /// An open file and whether it is the upper layer's copy.
    File(Arc<File>, bool),
    Dir(Arc<Vec<DirEntry>>),
}

/// The disk file behind an open file handle, for the kernel to read and write it
/// directly (FUSE passthrough).
#[derive(Debug, Clone)]
pub struct BackingFile {
    file: Arc<File>,
    /// True when the file is the upper layer's copy (else a lower file, read-only).
    pub upper: bool,
}

impl std::os::fd::AsFd for BackingFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The union of one upper and several lower layers.
#[derive(Debug)]
pub struct Union {
    /// Layer roots, topmost first (the upper first when there is one).
    layers: Vec<PathBuf>,
    has_upper: bool,
    read_only: bool,
    /// Scratch dir for copy-up, on the upper's filesystem.
    work: Option<PathBuf>,
    owner_mode: OwnerMode,
    no_passthrough: bool,
    tree: tree::Tree,
    /// What the lower layers hold (listings, recorded ownership): they never change.
    lower: lower::LowerCache,
    /// The ownership records of upper files, by node (only this union changes them).
    records: records::UpperRecords,
    handles: RwLock<HashMap<Fh, Arc<Handle>>>,
    /// The open file handles of each node: an unlinked file stays usable through
    /// them (stat, reopen via /proc/self/fd, chmod, utimens), as on any filesystem.
    open_files: parking_lot::Mutex<OpenFiles>,
    /// Files of nodes read and written without opens ([`node_files`]).
    node_files: node_files::NodeFiles,
    /// Listings of directories read without opens ([`dir_snapshots`]).
    dir_snapshots: dir_snapshots::DirSnapshots,
    next_fh: AtomicU64,
    next_tmp: AtomicU64,
    /// Upper files hard-linked to lower files by directory renames.
    shared: shared::SharedInodes,
    /// Held shared by every change to the upper layer's names or files, exclusively by
    /// a rename of a lower directory (see the module header).
    moving: RwLock<()>,
    /// Serialises [`Union::unshare`].
    unsharing: parking_lot::Mutex<()>,
}

/// The open file handles of each node, and the node of each handle.
#[derive(Debug, Default)]
struct OpenFiles {
    by_ino: HashMap<Ino, Vec<Fh>>,
    by_fh: HashMap<Fh, Ino>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn nix_err(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// True when the OCI whiteout of `name` exists in the layer dir `dir` (absolute). A
/// name too long to carry the `.wh.` prefix (over 251 bytes) cannot have one.
fn has_whiteout_file(dir: &Path, name: &OsStr) -> io::Result<bool> {
    match fs::symlink_metadata(dir.join(whiteout::whiteout_name(name))) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `dir/name` in one allocation.
fn child_path(dir: &Path, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::with_capacity(dir.as_os_str().len() + 1 + name.len());
    p.push(dir);
    p.push(name);
    p
}

/// What a name resolves to ([`Union::resolve_entry`]).
struct Resolved {
    loc: Loc,
    /// `lstat` of the topmost entry.
    meta: Metadata,
    /// Its recorded ownership, when its layer's listing read it ([`lower::LowerEntry::ov`]).
    ov: Option<Option<OverrideStat>>,
}

fn enoent_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// True for POSIX ACL xattrs: the union does not support ACLs (no `FUSE_POSIX_ACL`), so
/// tools such as `cp -a` fall back to chmod, which the kernel's attribute cache sees.
fn is_acl_xattr(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"system.posix_acl_")
}

/// True for xattrs the union keeps to itself: ownership records and overlay markers.
pub fn is_private_xattr(name: &OsStr) -> bool {
    let n = name.as_bytes();
    n == OVERRIDE_XATTR.as_bytes()
        || n.starts_with(b"trusted.overlay.")
        || n.starts_with(b"user.overlay.")
        || n.starts_with(b"user.fuseoverlayfs.")
}

/// On-disk permission bits for a recorded file: the daemon's user keeps read and write
/// (and search for directories) so the upper stays removable by that user.
fn accessible(perm: u32, kind: FileKind) -> u32 {
    match kind {
        FileKind::Dir => (perm & 0o7777) | 0o700,
        _ => (perm & 0o7777) | 0o600,
    }
}

impl Union {
    /// Opens a union over validated options ([`UnionOptions::validate`]).
    ///
    /// Creates (and empties) the scratch dir `WORKDIR/gentree-work`.
    pub fn new(opts: &UnionOptions) -> io::Result<Union> {
        let mut layers = Vec::new();
        layers.extend(opts.upper.iter().cloned());
        layers.extend(opts.lowers.iter().cloned());
        let has_upper = opts.upper.is_some();
        let work = match &opts.work {
            Some(w) if has_upper => {
                let dir = w.join(WORK_SUBDIR);
                match fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                fs::create_dir(&dir)?;
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
                Some(dir)
            }
            _ => None,
        };
        let shared_file = match (&opts.work, has_upper) {
            (Some(w), true) => Some(w.join(shared::SHARED_FILE)),
            _ => None,
        };
        let owner_mode = if nix::unistd::geteuid().is_root() && in_initial_userns() {
            OwnerMode::Chown
        } else {
            OwnerMode::Record
        };
        let mut u = Union {
            layers,
            has_upper,
            read_only: opts.is_read_only(),
            work,
            owner_mode,
            no_passthrough: opts.no_passthrough,
            tree: tree::Tree::new(Loc::one(0)),
            lower: if opts.volatile_lowers {
                lower::LowerCache::disabled()
            } else {
                lower::LowerCache::new()
            },
            records: records::UpperRecords::new(!opts.volatile_lowers),
            handles: RwLock::new(HashMap::new()),
            open_files: parking_lot::Mutex::new(OpenFiles::default()),
            node_files: node_files::NodeFiles::default(),
            dir_snapshots: dir_snapshots::DirSnapshots::default(),
            next_fh: AtomicU64::new(1),
            next_tmp: AtomicU64::new(0),
            shared: shared::SharedInodes::load(shared_file)?,
            moving: RwLock::new(()),
            unsharing: parking_lot::Mutex::new(()),
        };
        let root_layers = u.root_layers()?;
        u.tree = tree::Tree::new(Loc {
            layers: root_layers,
        });
        Ok(u)
    }

    /// Forces an ownership mode (tests exercise the unprivileged path as root).
    pub fn set_owner_mode(&mut self, mode: OwnerMode) {
        self.owner_mode = mode;
    }

    /// The ownership mode in force.
    pub fn owner_mode(&self) -> OwnerMode {
        self.owner_mode
    }

    /// True when writes fail with EROFS.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// True when asked never to hand files to the kernel (`nopassthrough`).
    pub fn no_passthrough(&self) -> bool {
        self.no_passthrough
    }

    /// True when a layer lives on a stacking filesystem (see [`on_stacking_fs`]).
    pub fn layers_on_stacked_fs(&self) -> bool {
        self.layers.iter().any(|l| on_stacking_fs(l))
    }

    fn root_layers(&self) -> io::Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, root) in self.layers.iter().enumerate() {
            out.push(i);
            if whiteout::is_opaque_dir(root)? {
                break;
            }
        }
        Ok(out)
    }

    /// The host path of `rel` in layer `layer` (shortened when over `PATH_MAX`).
    fn abs(&self, layer: usize, rel: &Path) -> HostPath {
        HostPath::new(&self.layers[layer], rel)
    }

    fn is_upper(&self, layer: usize) -> bool {
        self.has_upper && layer == 0
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The node's info for path-based work: ENOENT once it has no name (its old path may
    /// meanwhile name another file), ESTALE when unknown.
    fn node(&self, ino: Ino) -> io::Result<tree::NodeInfo> {
        match self.tree.get(ino) {
            Some(info) if info.attached => Ok(info),
            Some(_) => Err(errno(libc::ENOENT)),
            None => Err(errno(libc::ESTALE)),
        }
    }

    /// The open file behind `fh`, if it is one.
    fn open_file(&self, fh: Option<Fh>) -> Option<Arc<Handle>> {
        fh.and_then(|fh| self.handle(fh).ok())
            .filter(|h| matches!(**h, Handle::File(..)))
    }

    // ----- resolution -------------------------------------------------------------

    /// Resolves `name` in the directory `dir` (path `dir_path`, layers `dir_layers`).
    /// Returns the child's location and the metadata of its topmost entry.
    fn resolve_in(
        &self,
        dir_path: &Path,
        dir_layers: &[usize],
        name: &OsStr,
    ) -> io::Result<Option<(Loc, Metadata)>> {
        if whiteout::classify_name(name) != Marker::Entry {
            return Ok(None);
        }
        let listings = self.listings(dir_path, dir_layers)?;
        self.resolve_listed(dir_path, dir_layers, &listings, name)
    }

    /// The cached listings of directory `dir_path` in each of `dir_layers` (`None` for
    /// the upper layer and unlistable directories), for [`Union::resolve_listed`].
    fn listings(
        &self,
        dir_path: &Path,
        dir_layers: &[usize],
    ) -> io::Result<Vec<Option<Arc<lower::LowerDir>>>> {
        let mut out = Vec::with_capacity(dir_layers.len());
        for &l in dir_layers {
            out.push(if self.is_upper(l) {
                None
            } else {
                self.lower.dir(l, &self.layers[l], dir_path)?
            });
        }
        Ok(out)
    }

    /// [`Union::resolve_in`] with the directory's listings at hand (`listings[i]` is
    /// the listing in `dir_layers[i]`).
    fn resolve_listed(
        &self,
        dir_path: &Path,
        dir_layers: &[usize],
        listings: &[Option<Arc<lower::LowerDir>>],
        name: &OsStr,
    ) -> io::Result<Option<(Loc, Metadata)>> {
        let found = self.resolve_entry(dir_path, dir_layers, listings, name)?;
        Ok(found.map(|f| (f.loc, f.meta)))
    }

    /// [`Union::resolve_listed`], with the ownership record of the topmost entry when
    /// its layer's listing holds it.
    fn resolve_entry(
        &self,
        dir_path: &Path,
        dir_layers: &[usize],
        listings: &[Option<Arc<lower::LowerDir>>],
        name: &OsStr,
    ) -> io::Result<Option<Resolved>> {
        if whiteout::classify_name(name) != Marker::Entry {
            return Ok(None);
        }
        // Built only when a disk call needs it: listed lower files need none.
        let rel = std::cell::OnceCell::new();
        let rel = || rel.get_or_init(|| child_path(dir_path, name)).as_path();
        let mut found: Option<Resolved> = None;
        let last = dir_layers.last().copied();
        // Opaqueness only matters when a layer below could show through.
        let opaque = |l: usize| -> io::Result<bool> {
            if Some(l) == last {
                return Ok(true);
            }
            if !self.is_upper(l) {
                if let Some(d) = self.lower.dir(l, &self.layers[l], rel())? {
                    return Ok(d.opaque);
                }
            }
            whiteout::is_opaque_dir(self.abs(l, rel()).as_path())
        };
        for (i, &l) in dir_layers.iter().enumerate() {
            // A lower layer's listing answers for names it lacks without an lstat each
            // for the name and its whiteout, and holds the lstat of its files.
            let mut listed = None;
            let mut ov = None;
            if let Some(Some(d)) = listings.get(i) {
                match d.entry(name) {
                    None if d.has_whiteout(name) => break,
                    None => continue,
                    Some(e) => {
                        listed = e.meta.clone();
                        ov = e.ov;
                    }
                }
            }
            let meta = match listed {
                Some(m) => Some(m),
                None => enoent_is_none(fs::symlink_metadata(self.abs(l, rel()).as_path()))?,
            };
            match meta {
                Some(meta) => {
                    if self.is_whiteout_entry(l, rel, name, &meta) {
                        break;
                    }
                    let is_dir = meta.is_dir();
                    match &mut found {
                        None => {
                            found = Some(Resolved {
                                loc: Loc::one(l),
                                meta,
                                ov,
                            });
                            if !is_dir || opaque(l)? {
                                break;
                            }
                        }
                        Some(f) => {
                            if !is_dir {
                                break;
                            }
                            f.loc.layers.push(l);
                            if opaque(l)? {
                                break;
                            }
                        }
                    }
                }
                // A whiteout hides layers below; the last layer has none (spares an
                // lstat per missing name in directories that exist only in the upper).
                None => {
                    if Some(l) != last && has_whiteout_file(self.abs(l, dir_path).as_path(), name)?
                    {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// True when the entry `name` (a plain name: [`whiteout::classify_name`] said
    /// `Entry`) with metadata `meta` in layer `l` is an in-place whiteout, as
    /// [`whiteout::classify`] decides; its path (`rel`, relative to the layer) is only
    /// built for the one case that reads xattrs, an empty regular file.
    fn is_whiteout_entry<P: AsRef<Path>>(
        &self,
        l: usize,
        rel: impl FnOnce() -> P,
        name: &OsStr,
        meta: &Metadata,
    ) -> bool {
        if meta.file_type().is_file() && meta.len() == 0 {
            let host = self.abs(l, rel().as_ref());
            whiteout::classify(host.as_path(), name, meta) != Marker::Entry
        } else {
            whiteout::is_chardev_whiteout(meta)
        }
    }

    fn resolve_child(
        &self,
        parent: &tree::NodeInfo,
        name: &OsStr,
    ) -> io::Result<Option<(Loc, Metadata)>> {
        self.resolve_in(&parent.path, &parent.loc.layers, name)
    }

    /// True when `name` shows through from a lower layer of `parent` (so deleting or
    /// renaming it from the upper layer needs a whiteout).
    fn lower_has(&self, parent: &tree::NodeInfo, name: &OsStr) -> io::Result<bool> {
        let lowers: Vec<usize> = parent
            .loc
            .layers
            .iter()
            .copied()
            .filter(|&l| !self.is_upper(l))
            .collect();
        Ok(self.resolve_in(&parent.path, &lowers, name)?.is_some())
    }

    /// The ownership record of `node`'s upper file at `path`, known or read.
    fn upper_record(&self, node: Ino, path: &Path) -> io::Result<Option<OverrideStat>> {
        if let Some(r) = self.records.get(node) {
            return Ok(r);
        }
        let r = OverrideStat::read(path)?;
        self.records.read(node, r);
        Ok(r)
    }

    fn attr(
        &self,
        node: Ino,
        st_ino: u64,
        loc: &Loc,
        meta: &Metadata,
        path: &Path,
    ) -> io::Result<Attr> {
        let ov = self.record(Some(node), loc, meta, path)?;
        Ok(self.attr_from(node, st_ino, loc, meta, ov.as_ref()))
    }

    /// The ownership record of the entry at `path` (its top layer's file, `loc` and
    /// `meta`), through the caches; an upper file's only when its `node` is known.
    fn record(
        &self,
        node: Option<Ino>,
        loc: &Loc,
        meta: &Metadata,
        path: &Path,
    ) -> io::Result<Option<OverrideStat>> {
        let top = loc.top();
        if meta.file_type().is_symlink() {
            Ok(None)
        } else if !self.is_upper(top) {
            self.lower.override_stat(top, path)
        } else if let Some(node) = node {
            self.upper_record(node, path)
        } else {
            OverrideStat::read(path)
        }
    }

    fn attr_from(
        &self,
        node: Ino,
        st_ino: u64,
        loc: &Loc,
        meta: &Metadata,
        ov: Option<&OverrideStat>,
    ) -> Attr {
        let eff = Effective::new(meta, ov);
        let time = |s: i64, ns: i64| {
            let d = Duration::new(s.unsigned_abs(), ns.clamp(0, 999_999_999) as u32);
            if s >= 0 {
                SystemTime::UNIX_EPOCH + d
            } else {
                SystemTime::UNIX_EPOCH - d
            }
        };
        // Kernel overlayfs reports 1 for merged directories: their real count is unknown.
        let nlink = if meta.is_dir() && loc.layers.len() > 1 {
            1
        } else if self.is_upper(loc.top()) && self.shared.is_shared(meta) {
            // The lower name of a file a directory rename linked is no name here.
            meta.nlink() as u32 - 1
        } else {
            meta.nlink() as u32
        };
        Attr {
            node,
            ino: st_ino,
            size: meta.size(),
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            kind: eff.kind,
            perm: eff.perm,
            nlink,
            uid: eff.uid,
            gid: eff.gid,
            rdev: eff.kind.rdev(),
            blksize: meta.blksize() as u32,
            uncached_entry: false,
            from_lower: !self.is_upper(loc.top()),
        }
    }

    /// The disk identity that makes the names of a hard-linked file one node. Names of
    /// a lower file share the node until one is copied up ([`tree::Tree::split_off`]).
    fn link_key(&self, loc: &Loc, meta: &Metadata) -> Option<LinkKey> {
        if meta.is_dir() || meta.nlink() < 2 {
            return None;
        }
        let l = loc.top();
        if self.is_upper(l) && self.shared.is_shared(meta) {
            return None;
        }
        Some(if self.is_upper(l) {
            LinkKey::Upper(meta.dev(), meta.ino())
        } else {
            LinkKey::Lower(l, meta.dev(), meta.ino())
        })
    }

    /// Looks `name` up in `parent`, adding one kernel reference to the node.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> io::Result<Attr> {
        let pinfo = self.node(parent)?;
        self.lookup_in(parent, &pinfo, name)
    }

    fn lookup_in(&self, parent: Ino, pinfo: &tree::NodeInfo, name: &OsStr) -> io::Result<Attr> {
        let listings = self.listings(&pinfo.path, &pinfo.loc.layers)?;
        self.lookup_listed(parent, pinfo, &listings, name)
    }

    /// [`Union::lookup_in`] with the parent's listings at hand ([`Union::listings`]).
    fn lookup_listed(
        &self,
        parent: Ino,
        pinfo: &tree::NodeInfo,
        listings: &[Option<Arc<lower::LowerDir>>],
        name: &OsStr,
    ) -> io::Result<Attr> {
        let Resolved { loc, meta, ov } = self
            .resolve_entry(&pinfo.path, &pinfo.loc.layers, listings, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let key = self.link_key(&loc, &meta);
        // Attributes first: a failure must not leave a kernel reference behind. The
        // node is not known yet (a known one's cached record serves an upper file).
        let ov = match ov {
            // The record read with the top layer's listing, if that is a lower one.
            Some(ov) if !meta.file_type().is_symlink() => ov,
            _ => {
                let path_host = self.abs(loc.top(), &child_path(&pinfo.path, name));
                let known = self.tree.child(parent, name);
                self.record(known, &loc, &meta, path_host.as_path())?
            }
        };
        let attr = self.attr_from(ROOT, 0, &loc, &meta, ov.as_ref());
        let upper = self.is_upper(loc.top());
        let id = self.tree.insert(parent, name, loc, key, true);
        if upper && !meta.file_type().is_symlink() {
            self.records.read(id, ov);
        }
        Ok(Attr {
            node: id,
            ino: id.0,
            uncached_entry: matches!(key, Some(LinkKey::Lower(..))),
            ..attr
        })
    }

    /// Walks the snapshot of `fh` (directory `dir`) from `offset`, handing `emit` each
    /// entry's next offset, the entry and its attributes as a lookup finds them (one
    /// kernel reference each, except for `.` and `..`), until `emit` reports the reply
    /// full; the entry that did not fit gets its reference back. Entries gone since
    /// `opendir` are skipped.
    pub fn readdirplus(
        &self,
        dir: Ino,
        fh: Fh,
        offset: u64,
        emit: impl FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> io::Result<()> {
        let entries = self.readdir(fh)?;
        self.readdirplus_of(dir, &entries, offset as usize, |i| i as u64 + 1, emit)
    }

    /// [`Union::readdirplus`] of `entries` from index `start`; `cookie(i)` is the
    /// offset of the entry after entry `i`.
    fn readdirplus_of(
        &self,
        dir: Ino,
        entries: &[DirEntry],
        start: usize,
        cookie: impl Fn(usize) -> u64,
        mut emit: impl FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> io::Result<()> {
        let pinfo = self.node(dir)?;
        let dir_attr = self.getattr(dir, None)?;
        // One fetch of the layers' listings serves every entry of this reply.
        let listings = self.listings(&pinfo.path, &pinfo.loc.layers)?;
        for (i, e) in entries.iter().enumerate().skip(start) {
            let dots = e.name == "." || e.name == "..";
            let attr = if dots {
                // The kernel takes neither attributes nor a reference from these.
                Attr {
                    node: Ino(e.ino),
                    ino: e.ino,
                    ..dir_attr
                }
            } else {
                match self.lookup_listed(dir, &pinfo, &listings, &e.name) {
                    Ok(a) => a,
                    Err(_) => continue,
                }
            };
            if emit(cookie(i), e, &attr) {
                if !dots {
                    self.forget(attr.node, 1);
                }
                break;
            }
        }
        Ok(())
    }

    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.tree.forget(ino, n);
        self.node_file_forgotten(ino);
    }

    /// Attributes of `ino`. The path wins over an open handle (a read-only handle may
    /// still point at the lower copy after a copy-up); the handle answers only when the
    /// name is gone (an open, unlinked file).
    pub fn getattr(&self, ino: Ino, fh: Option<Fh>) -> io::Result<Attr> {
        let info = self.tree.get(ino).ok_or_else(|| errno(libc::ESTALE))?;
        if info.attached {
            let p_host = self.abs(info.loc.top(), &info.path);
            let p = p_host.as_path();
            match fs::symlink_metadata(p) {
                Ok(meta) => return self.attr(ino, info.st_ino, &info.loc, &meta, p),
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                Err(_) => {}
            }
        }
        let h = self
            .open_file(fh)
            .or_else(|| self.any_open_file(ino))
            .ok_or_else(|| errno(libc::ENOENT))?;
        let Handle::File(f, _) = &*h else {
            return Err(errno(libc::ENOENT));
        };
        let meta = f.metadata()?;
        let ov = match xattr::FileExt::get_xattr(&**f, OVERRIDE_XATTR) {
            Ok(Some(v)) => OverrideStat::parse(&v).ok(),
            _ => None,
        };
        Ok(self.attr_from(ino, info.st_ino, &info.loc, &meta, ov.as_ref()))
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> io::Result<PathBuf> {
        let info = self.node(ino)?;
        fs::read_link(self.abs(info.loc.top(), &info.path))
    }

    // ----- copy-up ----------------------------------------------------------------

    fn tmp_path(&self) -> io::Result<PathBuf> {
        let work = self.work.as_ref().ok_or_else(|| errno(libc::EROFS))?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        Ok(work.join(format!("tmp-{}-{n}", std::process::id())))
    }

    /// Makes sure `ino` has its own entry in the upper layer (copying it up with its
    /// parents if needed) and returns its node info with the upper location.
    ///
    /// Of a lower hard-link group only the name last looked up is copied up, as a file
    /// of its own; the other names stay linked in the lower layer (kernel overlayfs
    /// without `index`).
    ///
    /// An upper file that is a hard link to a lower file (a renamed lower directory's)
    /// gets a copy of its own, as a lower file would ([`Union::unshare`]).
    pub fn copy_up(&self, ino: Ino) -> io::Result<tree::NodeInfo> {
        self.copy_up_data(ino, true)
    }

    /// [`Union::copy_up`]; a regular file's data is copied only when `data` (not for a
    /// file about to be emptied: an `O_TRUNC` open).
    fn copy_up_data(&self, ino: Ino, data: bool) -> io::Result<tree::NodeInfo> {
        let info = self.copy_up_as(ino, None, data)?;
        if !self.shared.is_empty() {
            self.unshare(ino, &info, data)?;
        }
        self.node_file_copied_up(ino);
        Ok(info)
    }

    /// [`Union::copy_up_data`], copying up the name `parent/name` when `ino` is a lower
    /// hard-link group (default: the name last looked up). That name leaves the group
    /// once its copy is in place.
    fn copy_up_as(
        &self,
        ino: Ino,
        name: Option<(Ino, &OsStr)>,
        data: bool,
    ) -> io::Result<tree::NodeInfo> {
        self.writable()?;
        let mut info = self.node(ino)?;
        if self.is_upper(info.loc.top()) {
            return Ok(info);
        }
        let chosen = match name {
            Some((p, n)) => Some((p, n.to_owned())),
            None => self.tree.last_name(ino),
        };
        if let Some((p, n)) = &chosen {
            info.path = self.node(*p)?.path.join(n);
            info.parent = *p;
        }
        if ino != ROOT {
            self.copy_up(info.parent)?;
        }
        let src_host = self.abs(info.loc.top(), &info.path);
        let src = src_host.as_path();
        let dst_host = self.abs(0, &info.path);
        let dst = dst_host.as_path();
        // Linking the copy in is no change the user made: the upper parent keeps its
        // times, as kernel overlayfs restores them (ovl_set_timestamps) after copy-up.
        let dst_parent = dst.parent().map(Path::to_path_buf);
        let parent_times = match &dst_parent {
            Some(p) if ino != ROOT => Some(fs::symlink_metadata(p)?),
            _ => None,
        };
        let meta = fs::symlink_metadata(src)?;
        let tmp = self.tmp_path()?;
        let built = self.build_copy(src, &meta, &tmp, data);
        if let Err(e) = built {
            let _ = remove_any(&tmp);
            return Err(e);
        }
        match nix::fcntl::renameat2(AT_FDCWD, &tmp, AT_FDCWD, dst, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {
                // Best effort, as in the kernel: the copy is in place, and a parent the
                // daemon may not set times on (not its own) just keeps the new ones.
                if let (Some(p), Some(pm)) = (&dst_parent, &parent_times) {
                    let _ = set_times(
                        p,
                        pm.accessed().ok().map(SetTime::At),
                        pm.modified().ok().map(SetTime::At),
                    );
                }
            }
            // Another thread copied it up first: use theirs.
            Err(nix::Error::EEXIST) | Err(nix::Error::ENOTEMPTY) => remove_any(&tmp)?,
            Err(e) => {
                let _ = remove_any(&tmp);
                return Err(nix_err(e));
            }
        }
        if let Some((p, n)) = &chosen {
            self.tree.split_off(ino, *p, n);
        }
        let mut layers = vec![0];
        if meta.is_dir() {
            layers.extend(info.loc.layers.iter().copied());
        }
        let loc = Loc { layers };
        self.records.forget(ino);
        self.tree.set_loc(ino, loc.clone());
        Ok(tree::NodeInfo { loc, ..info })
    }

    /// Builds a copy of `src` at `tmp`: content (a regular file's only when `data`),
    /// xattrs, owner, mode, times.
    fn build_copy(&self, src: &Path, meta: &Metadata, tmp: &Path, data: bool) -> io::Result<()> {
        let ft = meta.file_type();
        let ov = if ft.is_symlink() {
            None
        } else {
            OverrideStat::read(src)?
        };
        let eff = Effective::new(meta, ov.as_ref());
        let mut kind_on_disk = FileKind::of(meta);
        if ft.is_dir() {
            fs::create_dir(tmp)?;
            fs::set_permissions(tmp, fs::Permissions::from_mode(0o700))?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(src)?, tmp)?;
        } else if ft.is_file() {
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)?;
            if data {
                io::copy(&mut File::open(src)?, &mut to)?;
            }
        } else {
            kind_on_disk = self.make_special(tmp, FileKind::of(meta), 0o600)?;
        }
        if !ft.is_symlink() {
            copy_xattrs(src, tmp)?;
        }
        let force_record = kind_on_disk != eff.kind;
        self.apply_owner(
            tmp,
            &fs::symlink_metadata(tmp)?,
            eff.kind,
            eff.uid,
            eff.gid,
            eff.perm,
            force_record || ov.is_some(),
        )?;
        set_times(
            tmp,
            Some(SetTime::At(meta.accessed()?)),
            Some(SetTime::At(meta.modified()?)),
        )
    }

    /// Creates a fifo, socket or device node at `path`. A device the daemon may not
    /// create becomes an empty regular file whose recorded type is the device.
    /// Returns the kind actually on disk.
    fn make_special(&self, path: &Path, kind: FileKind, perm: u32) -> io::Result<FileKind> {
        let sflag = match kind {
            FileKind::Pipe => SFlag::S_IFIFO,
            FileKind::Socket => SFlag::S_IFSOCK,
            FileKind::Block { .. } => SFlag::S_IFBLK,
            FileKind::Char { .. } => SFlag::S_IFCHR,
            _ => return Err(errno(libc::EINVAL)),
        };
        let mode = Mode::from_bits_truncate(perm & 0o777);
        let device = matches!(kind, FileKind::Block { .. } | FileKind::Char { .. });
        let as_file = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map(|_| FileKind::File)
        };
        // A recorded device must be a regular file: devices cannot carry user xattrs.
        if device && self.owner_mode == OwnerMode::Record {
            return as_file();
        }
        match nix::sys::stat::mknod(path, sflag, mode, kind.rdev()) {
            Ok(()) => Ok(kind),
            Err(nix::Error::EPERM) if device => as_file(),
            Err(e) => Err(nix_err(e)),
        }
    }

    /// Gives `path` (whose `lstat` is `meta`) the owner, group and mode the image should
    /// show: by chown/chmod, or recorded in the override xattr (always when `record`,
    /// when the mode says so, or when a real chown is refused). Returns the record the
    /// file carries afterwards (`record` is set only for files that had one, or must
    /// get one, so `None` means it has none) and whether the file changed on disk (when
    /// it did not, `meta` still describes it and need not be read again).
    #[allow(clippy::too_many_arguments)]
    fn apply_owner(
        &self,
        path: &Path,
        meta: &Metadata,
        kind: FileKind,
        uid: u32,
        gid: u32,
        perm: u32,
        record: bool,
    ) -> io::Result<(Option<OverrideStat>, bool)> {
        let is_symlink = meta.file_type().is_symlink();
        let mut record = record || self.owner_mode == OwnerMode::Record;
        let mut chowned = false;
        if !record && (meta.uid() != uid || meta.gid() != gid) {
            match nix::unistd::fchownat(
                AT_FDCWD,
                path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(()) => chowned = true,
                Err(nix::Error::EPERM) | Err(nix::Error::EINVAL) => record = true,
                Err(e) => return Err(nix_err(e)),
            }
        }
        if is_symlink {
            // Symlinks carry neither modes nor user xattrs on Linux.
            return Ok((None, chowned));
        }
        let ft = meta.file_type();
        let chmod = |mode: u32| fs::set_permissions(path, fs::Permissions::from_mode(mode));
        if record && !ft.is_file() && !ft.is_dir() {
            // Fifos and sockets cannot carry user xattrs: keep the real mode, and the
            // owner the daemon could give them.
            chmod(perm & 0o7777)?;
            return Ok((None, true));
        }
        if record {
            chmod(accessible(perm, kind))?;
            let on_disk = FileKind::of(meta);
            let ov = OverrideStat {
                uid,
                gid,
                mode: perm & 0o7777,
                kind: (on_disk != kind).then_some(kind),
            };
            ov.write(path)?;
            Ok((Some(ov), true))
        } else {
            // A real chown drops setuid/setgid bits: put them back.
            let want = perm & 0o7777;
            let chmodded = meta.mode() & 0o7777 != want || (chowned && want & 0o6000 != 0);
            if chmodded {
                chmod(want)?;
            }
            Ok((None, chowned || chmodded))
        }
    }

    // ----- creation ---------------------------------------------------------------

    /// Readies `parent/name` for a new entry: the parent in the upper layer, no visible
    /// entry of that name, in-place whiteouts removed. Returns the parent's info, the
    /// upper path, and whether a whiteout was there (a new directory must be opaque).
    fn prepare_new(
        &self,
        parent: Ino,
        name: &OsStr,
    ) -> io::Result<(tree::NodeInfo, HostPath, bool)> {
        self.writable()?;
        if whiteout::classify_name(name) != Marker::Entry {
            return Err(errno(libc::EINVAL));
        }
        let pinfo = self.node(parent)?;
        let in_upper = self.is_upper(pinfo.loc.top());
        let has_lowers = pinfo.loc.layers.iter().any(|&l| !self.is_upper(l));
        // An OCI whiteout only matters over a lower directory. A name taken in the upper
        // shows as EEXIST from the creating call itself (O_EXCL and the like), and a
        // whiteout device there is replaced then (see `make_in_place`).
        let mut had_whiteout =
            in_upper && has_lowers && has_whiteout_file(self.abs(0, &pinfo.path).as_path(), name)?;
        let mut kernel_whiteout = false;
        if !had_whiteout && has_lowers && self.lower_has(&pinfo, name)? {
            // Shown from below, unless a whiteout device occupies the name in the upper.
            if in_upper {
                let dst_host = self.abs(0, &child_path(&pinfo.path, name));
                let dst = dst_host.as_path();
                if let Some(meta) = enoent_is_none(fs::symlink_metadata(dst))? {
                    kernel_whiteout = whiteout::classify(dst, name, &meta) != Marker::Entry;
                }
            }
            if !kernel_whiteout {
                return Err(errno(libc::EEXIST));
            }
            had_whiteout = true;
        }
        let pinfo = self.copy_up(parent)?;
        let dst_host = self.abs(0, &child_path(&pinfo.path, name));
        if kernel_whiteout {
            fs::remove_file(dst_host.as_path())?;
        }
        Ok((pinfo, dst_host, had_whiteout))
    }

    /// Runs `make` at `dst` (the upper path of `name`); when the name is taken by a
    /// whiteout device that hides nothing, removes it and runs `make` again. Sets
    /// `had_whiteout` then. Any other taken name stays EEXIST.
    fn make_in_place<T>(
        &self,
        dst: &Path,
        name: &OsStr,
        had_whiteout: &mut bool,
        mut make: impl FnMut(&Path) -> io::Result<T>,
    ) -> io::Result<T> {
        match make(dst) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let meta = fs::symlink_metadata(dst)?;
                if whiteout::classify(dst, name, &meta) == Marker::Entry {
                    return Err(e);
                }
                fs::remove_file(dst)?;
                *had_whiteout = true;
                make(dst)
            }
            r => r,
        }
    }

    /// After a new entry appeared at `dst`: a directory that replaces a whiteout turns
    /// opaque, then the OCI whiteout goes (in this order, so the lower entry never shows).
    fn settle_whiteout(
        &self,
        pinfo: &tree::NodeInfo,
        name: &OsStr,
        dst: &Path,
        had_whiteout: bool,
    ) -> io::Result<()> {
        if !had_whiteout {
            return Ok(());
        }
        if fs::symlink_metadata(dst)?.is_dir() {
            whiteout::write_opaque(dst)?;
        }
        let wh_host = self.abs(0, &pinfo.path.join(whiteout::whiteout_name(name)));
        let wh = wh_host.as_path();
        match fs::remove_file(wh) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Finishes a new entry at `dst`: whiteouts settled, a fresh node. `meta` is the
    /// entry's `lstat` when known to be current.
    #[allow(clippy::too_many_arguments)]
    fn finish_new(
        &self,
        parent: Ino,
        pinfo: &tree::NodeInfo,
        name: &OsStr,
        dst: &Path,
        had_whiteout: bool,
        known_ov: Option<Option<OverrideStat>>,
        meta: Option<Metadata>,
    ) -> io::Result<Attr> {
        self.settle_whiteout(pinfo, name, dst, had_whiteout)?;
        self.tree.detach(parent, name);
        // Turning a directory opaque writes an xattr: its ctime moves.
        let meta = match meta {
            Some(m) if !had_whiteout => m,
            _ => fs::symlink_metadata(dst)?,
        };
        let loc = Loc::one(0);
        let key = self.link_key(&loc, &meta);
        let id = self.tree.insert(parent, name, loc.clone(), key, true);
        match known_ov {
            Some(ov) => {
                self.records.wrote(id, ov);
                Ok(self.attr_from(id, id.0, &loc, &meta, ov.as_ref()))
            }
            None => self.attr(id, id.0, &loc, &meta, dst),
        }
    }

    /// The owner group and permission bits of a new entry, honouring a setgid parent.
    fn new_owner(
        &self,
        parent: Ino,
        pinfo: &tree::NodeInfo,
        caller: Caller,
        perm: u32,
        is_dir: bool,
    ) -> io::Result<(u32, u32)> {
        // The parent is in the upper layer by now (prepare_new copied it up).
        let p_host = self.abs(pinfo.loc.top(), &pinfo.path);
        let p = p_host.as_path();
        let meta = fs::symlink_metadata(p)?;
        let ov = self.record(Some(parent), &pinfo.loc, &meta, p)?;
        let peff = Effective::new(&meta, ov.as_ref());
        if peff.perm & libc::S_ISGID != 0 {
            let perm = if is_dir { perm | libc::S_ISGID } else { perm };
            return Ok((peff.gid, perm));
        }
        Ok((caller.gid, perm))
    }

    /// Makes a new entry with `make` (which returns the kind it put on disk and, for a
    /// regular file, the file it opened) and gives it its owner and mode.
    fn create_entry(
        &self,
        parent: Ino,
        name: &OsStr,
        kind: FileKind,
        perm: u32,
        caller: Caller,
        make: impl FnMut(&Path) -> io::Result<(FileKind, Option<File>)>,
    ) -> io::Result<(Attr, Option<File>)> {
        let _moving = self.moving.read();
        let (pinfo, dst_host, mut had_wh) = self.prepare_new(parent, name)?;
        let dst = dst_host.as_path();
        let (gid, perm) =
            self.new_owner(parent, &pinfo, caller, perm & 0o7777, kind == FileKind::Dir)?;
        let (on_disk, file) = self.make_in_place(dst, name, &mut had_wh, make)?;
        let meta = match &file {
            Some(f) => f.metadata(),
            None => fs::symlink_metadata(dst),
        };
        let owned = meta.and_then(|meta| {
            self.apply_owner(dst, &meta, kind, caller.uid, gid, perm, on_disk != kind)
                .map(|(ov, changed)| (ov, (!changed).then_some(meta)))
        });
        let (ov, meta) = match owned {
            Ok(r) => r,
            Err(e) => {
                let _ = remove_any(dst);
                return Err(e);
            }
        };
        let attr = self.finish_new(parent, &pinfo, name, dst, had_wh, Some(ov), meta)?;
        Ok((attr, file))
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, caller: Caller) -> io::Result<Attr> {
        self.create_entry(parent, name, FileKind::Dir, mode, caller, |p| {
            fs::create_dir(p)?;
            fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
            Ok((FileKind::Dir, None))
        })
        .map(|(a, _)| a)
    }

    /// Creates a fifo, socket, device node or empty regular file (`mode` has the type bits).
    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> io::Result<Attr> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFIFO => FileKind::Pipe,
            libc::S_IFSOCK => FileKind::Socket,
            // Device 0/0 is a whiteout: kernel overlayfs refuses to create one too.
            libc::S_IFCHR if rdev == 0 => return Err(errno(libc::EPERM)),
            libc::S_IFCHR => FileKind::Char {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            },
            libc::S_IFBLK => FileKind::Block {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            },
            _ => return Err(errno(libc::EINVAL)),
        };
        self.create_entry(parent, name, kind, mode, caller, |p| {
            if kind == FileKind::File {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(p)?;
                Ok((FileKind::File, Some(f)))
            } else {
                Ok((self.make_special(p, kind, 0o600)?, None))
            }
        })
        .map(|(a, _)| a)
    }

    /// Creates a symlink.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> io::Result<Attr> {
        self.create_entry(parent, name, FileKind::Symlink, 0o777, caller, |p| {
            std::os::unix::fs::symlink(target, p)?;
            Ok((FileKind::Symlink, None))
        })
        .map(|(a, _)| a)
    }

    /// Creates and opens a regular file; returns its attributes and a file handle.
    pub fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> io::Result<(Attr, Fh)> {
        let (attr, file) = self.create_entry(parent, name, FileKind::File, mode, caller, |p| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)?;
            Ok((FileKind::File, Some(f)))
        })?;
        let f = match file {
            // Without opens the kernel releases no handle: the file, open for
            // reading and writing (the kernel checks the access mode itself), becomes
            // the node's own and the kernel gets handle 0.
            Some(f) if self.no_open() => {
                let fh = self.put_file(attr.node, f, true);
                self.adopt_node_file(attr.node, fh);
                return Ok((attr, Fh(0)));
            }
            Some(f) if flags & libc::O_ACCMODE != libc::O_RDONLY => f,
            // Read-only create: reopen read-only so a later write fails with EBADF.
            _ => {
                let info = self.node(attr.node)?;
                File::open(self.abs(0, &info.path))?
            }
        };
        Ok((attr, self.put_file(attr.node, f, true)))
    }

    /// Makes a hard link `newparent/newname` to `ino`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> io::Result<Attr> {
        let _moving = self.moving.read();
        let info = self.copy_up(ino)?;
        let (pinfo, dst_host, had_wh) = self.prepare_new(newparent, newname)?;
        let dst = dst_host.as_path();
        let src_host = self.abs(0, &info.path);
        let src = src_host.as_path();
        fs::hard_link(src, dst)?;
        self.settle_whiteout(&pinfo, newname, dst, had_wh)?;
        let meta = fs::symlink_metadata(dst)?;
        self.tree.detach(newparent, newname);
        self.tree
            .add_link(ino, newparent, newname, (meta.dev(), meta.ino()));
        self.getattr(ino, None)
    }

    // ----- removal and rename -----------------------------------------------------

    /// Removes a non-directory.
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    /// Removes an empty directory (entries hidden by whiteouts do not count).
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> io::Result<()> {
        let _moving = self.moving.read();
        self.writable()?;
        let pinfo = self.node(parent)?;
        let (loc, meta) = self
            .resolve_child(&pinfo, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        match (dir, meta.is_dir()) {
            (true, false) => return Err(errno(libc::ENOTDIR)),
            (false, true) => return Err(errno(libc::EISDIR)),
            _ => {}
        }
        let path = pinfo.path.join(name);
        if dir && !self.list_merged(&path, &loc.layers)?.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        let needs_whiteout = self.lower_has(&pinfo, name)?;
        let pinfo = if needs_whiteout {
            self.copy_up(parent)?
        } else {
            pinfo
        };
        if !dir {
            self.pin_node_file(parent, name)?;
        }
        if self.is_upper(loc.top()) {
            let p_host = self.abs(0, &path);
            let p = p_host.as_path();
            if dir {
                clear_markers(p)?;
                fs::remove_dir(p)?;
            } else {
                fs::remove_file(p)?;
            }
        }
        if needs_whiteout {
            whiteout::write_whiteout(self.abs(0, &pinfo.path).as_path(), name)?;
        }
        self.tree.detach(parent, name);
        Ok(())
    }

    /// Renames `parent/name` to `newparent/newname`. Supports `RENAME_NOREPLACE`;
    /// `RENAME_EXCHANGE` and `RENAME_WHITEOUT` fail with EINVAL. A directory present
    /// in a lower layer is copied to the new name ([`rename_dir`]).
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(errno(libc::EINVAL));
        }
        self.writable()?;
        if whiteout::classify_name(newname) != Marker::Entry {
            return Err(errno(libc::EINVAL));
        }
        // Most renames move one name and share the lock; a lower directory's takes it
        // alone. Whether the source is one is known only after resolving it, and may
        // change until the lock is held: decided under the lock, retried once with the
        // other kind when it changed.
        let mut alone = false;
        loop {
            let r = if alone {
                let _g = self.moving.write();
                self.rename_locked(parent, name, newparent, newname, flags, true)
            } else {
                let _g = self.moving.read();
                self.rename_locked(parent, name, newparent, newname, flags, false)
            };
            match r {
                Err(e) if e.raw_os_error() == Some(RETRY_ALONE) && !alone => alone = true,
                r => return r,
            }
        }
    }

    /// [`Union::rename`] under the `moving` lock, held exclusively when `alone`; fails
    /// with [`RETRY_ALONE`] for a lower directory when not.
    fn rename_locked(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
        alone: bool,
    ) -> io::Result<()> {
        let pinfo = self.node(parent)?;
        let (sloc, smeta) = self
            .resolve_child(&pinfo, name)?
            .ok_or_else(|| errno(libc::ENOENT))?;
        let src_dir = smeta.is_dir();
        let lower_dir = src_dir && sloc.layers.iter().any(|&l| !self.is_upper(l));
        if lower_dir && !alone {
            return Err(errno(RETRY_ALONE));
        }
        let npinfo = self.node(newparent)?;
        let target = self.resolve_child(&npinfo, newname)?;
        if let Some((tloc, tmeta)) = &target {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(errno(libc::EEXIST));
            }
            if parent == newparent && name == newname {
                return Ok(());
            }
            match (src_dir, tmeta.is_dir()) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                (true, true)
                    if !self
                        .list_merged(&npinfo.path.join(newname), &tloc.layers)?
                        .is_empty() =>
                {
                    return Err(errno(libc::ENOTEMPTY));
                }
                _ => {}
            }
            if !src_dir && tmeta.ino() == smeta.ino() && tmeta.dev() == smeta.dev() {
                // Two names of one file: POSIX says do nothing.
                return Ok(());
            }
            if !tmeta.is_dir() {
                self.pin_node_file(newparent, newname)?;
            }
        }
        if lower_dir {
            let noreplace = flags & RENAME_NOREPLACE != 0;
            return self.rename_lower_dir(parent, name, &sloc, newparent, newname, noreplace);
        }
        let src_node = match self.tree.child(parent, name) {
            Some(id) => id,
            None => {
                let key = self.link_key(&sloc, &smeta);
                self.tree.insert(parent, name, sloc.clone(), key, false)
            }
        };
        // Of a lower hard-link group, this name moves alone.
        self.copy_up_as(src_node, Some((parent, name)), true)?;
        let npinfo = self.copy_up(newparent)?;
        let pinfo = self.node(parent)?;
        // The name given, not the node's path: the node of a hard-link group is known
        // by one of its names, and this rename moves `name` alone.
        let from_host = self.abs(0, &pinfo.path.join(name));
        let from = from_host.as_path();
        let to_host = self.abs(0, &npinfo.path.join(newname));
        let to = to_host.as_path();
        let target_in_lower = self.lower_has(&npinfo, newname)?;
        let wh_path_host = self.abs(0, &npinfo.path.join(whiteout::whiteout_name(newname)));
        let wh_path = wh_path_host.as_path();
        let had_wh = has_whiteout_file(self.abs(0, &npinfo.path).as_path(), newname)?;
        // A kernel-style whiteout or an emptied merged directory may sit at the target.
        if let Some(meta) = enoent_is_none(fs::symlink_metadata(to))? {
            if meta.is_dir() && src_dir {
                clear_markers(to)?;
            } else if whiteout::classify(to, newname, &meta) != Marker::Entry {
                fs::remove_file(to)?;
            }
        }
        let rflags = if flags & RENAME_NOREPLACE != 0 {
            RenameFlags::RENAME_NOREPLACE
        } else {
            RenameFlags::empty()
        };
        nix::fcntl::renameat2(AT_FDCWD, from, AT_FDCWD, to, rflags).map_err(nix_err)?;
        if src_dir && (target_in_lower || had_wh) {
            whiteout::write_opaque(to)?;
        }
        if had_wh {
            fs::remove_file(wh_path)?;
        }
        if self.lower_has(&pinfo, name)? {
            whiteout::write_whiteout(self.abs(0, &pinfo.path).as_path(), name)?;
        }
        self.tree.rename(parent, name, newparent, newname);
        Ok(())
    }

    // ----- attributes -------------------------------------------------------------

    /// Changes size, mode, owner or times, copying the entry up first.
    pub fn setattr(&self, ino: Ino, set: SetAttr, fh: Option<Fh>) -> io::Result<Attr> {
        let _moving = self.moving.read();
        let detached = self.tree.get(ino).is_some_and(|i| !i.attached);
        let open = self
            .open_file(fh)
            .or_else(|| detached.then(|| self.any_open_file(ino)).flatten());
        if detached {
            return self.setattr_unlinked(ino, set, open.as_deref());
        }
        if let (Some(size), Some(Handle::File(f, _))) = (set.size, open.as_deref()) {
            // Through the handle: works for open, unlinked files too.
            self.writable()?;
            f.set_len(size)?;
            let only_size = SetAttr { size: None, ..set } == SetAttr::default();
            if only_size {
                return self.getattr(ino, fh);
            }
        }
        // Emptied anyway (an O_TRUNC open without FUSE_ATOMIC_O_TRUNC arrives so): the
        // lower data need not be copied.
        let info = self.copy_up_data(ino, set.size != Some(0))?;
        let path_host = self.abs(0, &info.path);
        let path = path_host.as_path();
        if let (Some(size), None) = (set.size, &open) {
            OpenOptions::new().write(true).open(path)?.set_len(size)?;
        }
        // The record after the changes, when known (spares re-reading it).
        let mut known_ov = None;
        if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            let meta = fs::symlink_metadata(path)?;
            let ov = self.record(Some(ino), &info.loc, &meta, path)?;
            let eff = Effective::new(&meta, ov.as_ref());
            let uid = set.uid.unwrap_or(eff.uid);
            let gid = set.gid.unwrap_or(eff.gid);
            let perm = set.mode.map_or(eff.perm, |m| m & 0o7777);
            let record = ov.is_some() || FileKind::of(&meta) != eff.kind;
            let (ov, _) = self.apply_owner(path, &meta, eff.kind, uid, gid, perm, record)?;
            self.records.wrote(ino, ov);
            known_ov = Some(ov);
        }
        if set.atime.is_some() || set.mtime.is_some() {
            set_times(path, set.atime, set.mtime)?;
        }
        if let Some(ov) = known_ov {
            if let Ok(meta) = fs::symlink_metadata(path) {
                return Ok(self.attr_from(ino, info.st_ino, &info.loc, &meta, ov.as_ref()));
            }
        }
        // Unknown record, or the name went meanwhile: the general path.
        self.getattr(ino, fh)
    }

    /// setattr of an unlinked file, through an open file of it; only files of the
    /// upper layer may change.
    fn setattr_unlinked(&self, ino: Ino, set: SetAttr, open: Option<&Handle>) -> io::Result<Attr> {
        self.writable()?;
        let info = self.tree.get(ino).ok_or_else(|| errno(libc::ESTALE))?;
        let Some(Handle::File(f, _)) = open else {
            return Err(errno(libc::ENOENT));
        };
        if !self.is_upper(info.loc.top()) {
            return Err(errno(libc::ENOENT));
        }
        if let Some(size) = set.size {
            f.set_len(size)?;
        }
        if let Some(mode) = set.mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            nix::unistd::fchown(
                f,
                set.uid.map(nix::unistd::Uid::from_raw),
                set.gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(nix_err)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = |t: Option<SetTime>| match t {
                None => nix::sys::time::TimeSpec::new(0, libc::UTIME_OMIT),
                Some(SetTime::Now) => nix::sys::time::TimeSpec::new(0, libc::UTIME_NOW),
                Some(SetTime::At(t)) => {
                    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    nix::sys::time::TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
                }
            };
            nix::sys::stat::futimens(f, &ts(set.atime), &ts(set.mtime)).map_err(nix_err)?;
        }
        self.getattr(ino, None)
    }

    /// Filesystem statistics of the upper (or topmost) layer.
    pub fn statfs(&self) -> io::Result<StatFs> {
        let s = nix::sys::statvfs::statvfs(&self.layers[0]).map_err(nix_err)?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: s.block_size() as u32,
            namelen: s.name_max() as u32,
            frsize: s.fragment_size() as u32,
        })
    }

    // ----- xattrs -----------------------------------------------------------------

    fn top_path(&self, ino: Ino) -> io::Result<HostPath> {
        let info = self.node(ino)?;
        Ok(self.abs(info.loc.top(), &info.path))
    }

    /// The value of a user-visible xattr (ENODATA when absent or private).
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> io::Result<Vec<u8>> {
        if is_acl_xattr(name) {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if is_private_xattr(name) {
            return Err(errno(libc::ENODATA));
        }
        xattr::get(self.top_path(ino)?, name)?.ok_or_else(|| errno(libc::ENODATA))
    }

    /// The user-visible xattr names, each NUL-terminated (the `listxattr` format).
    pub fn listxattr(&self, ino: Ino) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let names = match xattr::list(self.top_path(ino)?) {
            Ok(n) => n,
            Err(e) if ownership::is_unsupported(&e) => return Ok(out),
            Err(e) => return Err(e),
        };
        for n in names.filter(|n| !is_private_xattr(n) && !is_acl_xattr(n)) {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// Sets an xattr (copying up first). `flags` are `XATTR_CREATE`/`XATTR_REPLACE`.
    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let _moving = self.moving.read();
        if is_acl_xattr(name) {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if is_private_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let info = self.copy_up(ino)?;
        let path_host = self.abs(0, &info.path);
        let path = path_host.as_path();
        if flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            let exists = xattr::get(path, name)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(errno(libc::EEXIST));
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(errno(libc::ENODATA));
            }
        }
        xattr::set(path, name, value)
    }

    /// Removes an xattr (copying up first).
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> io::Result<()> {
        let _moving = self.moving.read();
        if is_private_xattr(name) {
            return Err(errno(libc::EPERM));
        }
        let info = self.node(ino)?;
        if xattr::get(self.abs(info.loc.top(), &info.path), name)?.is_none() {
            return Err(errno(libc::ENODATA));
        }
        let info = self.copy_up(ino)?;
        xattr::remove(self.abs(0, &info.path), name)
    }

    // ----- files ------------------------------------------------------------------

    fn put_handle(&self, h: Handle) -> Fh {
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
        self.handles.write().insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: Fh) -> io::Result<Arc<Handle>> {
        self.handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    fn file(&self, fh: Fh) -> io::Result<Arc<Handle>> {
        let h = self.handle(fh)?;
        match *h {
            Handle::File(..) => Ok(h),
            Handle::Dir(_) => Err(errno(libc::EISDIR)),
        }
    }

    /// The disk file behind the open file `fh` (for FUSE passthrough).
    pub fn backing_file(&self, fh: Fh) -> io::Result<BackingFile> {
        match &*self.handle(fh)? {
            Handle::File(f, upper) => Ok(BackingFile {
                file: f.clone(),
                upper: *upper,
            }),
            Handle::Dir(_) => Err(errno(libc::EISDIR)),
        }
    }

    /// Opens `ino` with `open(2)` flags; writing and truncating opens (`O_TRUNC`, also
    /// with `O_RDONLY`) copy the file up first, and `O_TRUNC` empties the upper copy
    /// before the file is handed out, so no open of the node ever reads the lower data
    /// afterwards (the kernel sends `O_TRUNC` with the open once `FUSE_ATOMIC_O_TRUNC`
    /// is negotiated, instead of a later size change).
    pub fn open(&self, ino: Ino, flags: i32) -> io::Result<Fh> {
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let _moving = write.then(|| self.moving.read());
        let info = self.tree.get(ino).ok_or_else(|| errno(libc::ESTALE))?;
        if !info.attached {
            let (f, upper) = self.reopen_unlinked(ino, &info, flags, write)?;
            return Ok(self.put_file(ino, f, upper));
        }
        let trunc = flags & libc::O_TRUNC != 0;
        let info = if write {
            self.copy_up_data(ino, !trunc)?
        } else {
            info
        };
        let path_host = self.abs(info.loc.top(), &info.path);
        let path = path_host.as_path();
        // Offsets come with every request, so O_APPEND must not reach the backing file
        // (pwrite on an O_APPEND fd appends on Linux); creation flags were handled.
        // O_TRUNC truncates even a read-only open on Linux; the file is in the upper
        // layer by now, writable by the daemon.
        let keep = libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME | libc::O_TRUNC;
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .custom_flags((flags & keep) | libc::O_NOFOLLOW)
            .open(path)?;
        // A read-only open of an upper link to a lower file reads lower data: the
        // passthrough bookkeeping must treat it as a lower file.
        let upper = self.is_upper(info.loc.top())
            && (self.shared.is_empty() || !self.shared.is_shared(&f.metadata()?));
        Ok(self.put_file(ino, f, upper))
    }

    /// An unlinked node that is still open elsewhere is reopened through one of its
    /// open files (`/proc/self/fd/N`), as the kernel does for `/proc/PID/fd` links.
    /// A write-open is allowed only when that file is in the upper layer: a lower file
    /// must never be written.
    fn reopen_unlinked(
        &self,
        ino: Ino,
        info: &tree::NodeInfo,
        flags: i32,
        write: bool,
    ) -> io::Result<(File, bool)> {
        let (acc, trunc) = (flags & libc::O_ACCMODE, flags & libc::O_TRUNC);
        let Some(h) = self.any_open_file(ino) else {
            return Err(errno(libc::ENOENT));
        };
        if write && !self.is_upper(info.loc.top()) {
            return Err(errno(libc::ENOENT));
        }
        let Handle::File(f, upper) = &*h else {
            return Err(errno(libc::ENOENT));
        };
        use std::os::fd::AsRawFd;
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .custom_flags(trunc & libc::O_TRUNC)
            .open(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
        Ok((f, *upper))
    }

    /// Registers an open file of `ino`.
    fn put_file(&self, ino: Ino, f: File, upper: bool) -> Fh {
        let fh = self.put_handle(Handle::File(Arc::new(f), upper));
        let mut open = self.open_files.lock();
        open.by_ino.entry(ino).or_default().push(fh);
        open.by_fh.insert(fh, ino);
        fh
    }

    /// Any open file handle of `ino`.
    fn any_open_file(&self, ino: Ino) -> Option<Arc<Handle>> {
        let fh = self.open_files.lock().by_ino.get(&ino)?.first().copied()?;
        self.open_file(Some(fh))
    }

    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let h = self.file(fh)?;
        let Handle::File(f, _) = &*h else {
            return Err(errno(libc::EISDIR));
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                // A short read of a regular file on a local filesystem means end of
                // file: asking again would only cost a second pread that returns 0.
                Ok(n) if done + n < buf.len() => {
                    done += n;
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> io::Result<usize> {
        let h = self.file(fh)?;
        let Handle::File(f, _) = &*h else {
            return Err(errno(libc::EISDIR));
        };
        f.write_all_at(data, offset)?;
        Ok(data.len())
    }

    /// Flushes a file to disk.
    pub fn fsync(&self, fh: Fh, datasync: bool) -> io::Result<()> {
        let h = self.file(fh)?;
        let Handle::File(f, _) = &*h else {
            return Err(errno(libc::EISDIR));
        };
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
    }

    /// Flushes a directory of the upper layer to disk (lower layers never change).
    pub fn fsyncdir(&self, ino: Ino) -> io::Result<()> {
        let info = self.node(ino)?;
        if !self.is_upper(info.loc.top()) {
            return Ok(());
        }
        File::open(self.abs(0, &info.path))?.sync_all()
    }

    /// Allocates or punches space in an open file (`fallocate(2)` mode bits).
    pub fn fallocate(&self, fh: Fh, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let h = self.file(fh)?;
        let Handle::File(f, _) = &*h else {
            return Err(errno(libc::EISDIR));
        };
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(errno(libc::EINVAL));
        };
        let flags = nix::fcntl::FallocateFlags::from_bits_retain(mode);
        nix::fcntl::fallocate(f, flags, offset, len).map_err(nix_err)
    }

    /// Closes a file or directory handle.
    pub fn release(&self, fh: Fh) {
        {
            let mut open = self.open_files.lock();
            if let Some(ino) = open.by_fh.remove(&fh) {
                if let Some(fhs) = open.by_ino.get_mut(&ino) {
                    fhs.retain(|f| *f != fh);
                    if fhs.is_empty() {
                        open.by_ino.remove(&ino);
                    }
                }
            }
        }
        let handle = self.handles.write().remove(&fh);
        // Closed here, after the table lock is gone (close may flush).
        drop(handle);
    }

    /// Snapshots the merged listing of directory `ino` (with `.` and `..`); readdir
    /// offsets index into this snapshot, so they stay stable while it is open.
    pub fn opendir(&self, ino: Ino) -> io::Result<Fh> {
        Ok(self.put_handle(Handle::Dir(self.listing(ino)?)))
    }

    /// The merged listing of directory `ino`, with `.` and `..`.
    fn listing(&self, ino: Ino) -> io::Result<Arc<Vec<DirEntry>>> {
        let info = self.node(ino)?;
        let parent_ino = self.tree.get(info.parent).map_or(info.st_ino, |p| p.st_ino);
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino: info.st_ino,
                kind: FileKind::Dir,
            },
            DirEntry {
                name: "..".into(),
                ino: parent_ino,
                kind: FileKind::Dir,
            },
        ];
        let listings = self.listings(&info.path, &info.loc.layers)?;
        let merged = self.list_listed(&info.path, &info.loc.layers, &listings)?;
        self.prefetch_subdirs(&info.path, &info.loc.layers, &listings, &merged);
        let ids = self.tree.insert_listed(
            ino,
            merged.iter().map(|m| {
                // Only upper regular files can be hard links that share a node.
                let key = m
                    .meta
                    .as_ref()
                    .and_then(|meta| self.link_key(&Loc::one(m.layer), meta));
                (m.name.as_os_str(), m.layer, key)
            }),
        );
        entries.reserve(merged.len());
        for (m, child) in merged.into_iter().zip(ids) {
            let mut kind = FileKind::of_type(m.ft, 0); // d_type: no device numbers
            if let Some(meta) = &m.meta {
                // A device recorded on an empty file lists as the device.
                if meta.len() == 0 {
                    let p_host = self.abs(m.layer, &info.path.join(&m.name));
                    let p = p_host.as_path();
                    if let Ok(Some(o)) = OverrideStat::read(p) {
                        kind = o.kind.unwrap_or(kind);
                    }
                }
            }
            entries.push(DirEntry {
                name: m.name,
                ino: child.0,
                kind,
            });
        }
        Ok(Arc::new(entries))
    }

    /// The snapshot entries from `offset` on.
    pub fn readdir(&self, fh: Fh) -> io::Result<Arc<Vec<DirEntry>>> {
        match &*self.handle(fh)? {
            Handle::Dir(d) => Ok(d.clone()),
            Handle::File(..) => Err(errno(libc::ENOTDIR)),
        }
    }

    /// The visible entries of the merged directory `path` over `layers`, in layer order.
    pub fn list_merged(&self, path: &Path, layers: &[usize]) -> io::Result<Vec<Listed>> {
        let listings = self.listings(path, layers)?;
        self.list_listed(path, layers, &listings)
    }

    /// [`Union::list_merged`] with the directory's listings at hand ([`Union::listings`]).
    fn list_listed(
        &self,
        path: &Path,
        layers: &[usize],
        listings: &[Option<Arc<lower::LowerDir>>],
    ) -> io::Result<Vec<Listed>> {
        // Lower layers are listed once per mount; the upper every time (kept here, so
        // that the names below can borrow from every layer's entries).
        let mut fresh = Vec::with_capacity(layers.len());
        for (i, &l) in layers.iter().enumerate() {
            fresh.push(match listings.get(i).and_then(Option::as_ref) {
                Some(_) => None,
                None => enoent_is_none(fs::read_dir(self.abs(l, path)))?
                    .map(lower::list_dir)
                    .transpose()?,
            });
        }
        let entries = |i: usize| -> &[lower::LowerEntry] {
            match (listings.get(i).and_then(Option::as_ref), &fresh[i]) {
                (Some(d), _) => &d.entries,
                (None, Some(f)) => f,
                (None, None) => &[],
            }
        };
        let total = (0..layers.len()).map(|i| entries(i).len()).sum();
        let mut out = Vec::with_capacity(total);
        let mut seen: tree::FastSet<&OsStr> = tree::FastSet::default();
        seen.reserve(total);
        let mut hidden: HashSet<OsString> = HashSet::new();
        for (i, &l) in layers.iter().enumerate() {
            let mut layer_whiteouts = Vec::new();
            for entry in entries(i) {
                let name = entry.name.as_os_str();
                match whiteout::classify_name(name) {
                    Marker::Opaque => continue,
                    Marker::Whiteout(x) => {
                        layer_whiteouts.push(x);
                        continue;
                    }
                    Marker::Entry => {}
                }
                if seen.contains(name) || hidden.contains(name) {
                    continue;
                }
                let ft = entry.ft;
                // Char devices and empty regular files may be in-place whiteouts; regular
                // files' metadata also serves hard-link grouping and recorded devices.
                let mut meta = None;
                if let Some(m) = &entry.meta {
                    if (ft.is_char_device() || !self.is_upper(l))
                        && self.is_whiteout_entry(l, || child_path(path, name), name, m)
                    {
                        layer_whiteouts.push(name.to_owned());
                        continue;
                    }
                    meta = ft.is_file().then(|| m.clone());
                }
                seen.insert(name);
                out.push(Listed {
                    name: name.to_owned(),
                    layer: l,
                    ft,
                    meta,
                });
            }
            hidden.extend(layer_whiteouts);
        }
        Ok(out)
    }
}

impl Union {
    /// Queues the lower listings of the subdirectories in `merged` (the listing of
    /// directory `path` over `layers`, whose lower listings are `listings`) for reading
    /// ahead ([`lower::LowerCache::prefetch`]): a tree walk opens them next.
    fn prefetch_subdirs(
        &self,
        path: &Path,
        layers: &[usize],
        listings: &[Option<Arc<lower::LowerDir>>],
        merged: &[Listed],
    ) {
        for m in merged.iter().filter(|m| m.ft.is_dir()) {
            for (&l, d) in layers.iter().zip(listings) {
                let sub = d.as_ref().and_then(|d| d.entry(&m.name));
                if sub.is_some_and(|e| e.ft.is_dir()) {
                    self.lower.prefetch(l, &self.layers[l], path.join(&m.name));
                }
            }
        }
    }
}

/// One visible entry of a merged directory listing.
#[derive(Debug)]
pub struct Listed {
    pub name: OsString,
    /// The layer that provides it.
    pub layer: usize,
    pub ft: fs::FileType,
    /// `lstat` of regular files (taken anyway to rule out whiteouts).
    pub meta: Option<Metadata>,
}

/// True when `path` (or, while it does not exist yet, its nearest existing ancestor)
/// is on a stacking filesystem (overlayfs, ecryptfs, FUSE), whose files are one level
/// deep already: FUSE passthrough to them needs stack depth 2.
pub fn on_stacking_fs(path: &Path) -> bool {
    use nix::sys::statfs::{ECRYPTFS_SUPER_MAGIC, FUSE_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC};
    let mut p = path;
    loop {
        if let Ok(st) = nix::sys::statfs::statfs(p) {
            return [
                OVERLAYFS_SUPER_MAGIC,
                ECRYPTFS_SUPER_MAGIC,
                FUSE_SUPER_MAGIC,
            ]
            .contains(&st.filesystem_type());
        }
        match p.parent() {
            Some(q) => p = q,
            None => return false,
        }
    }
}

/// True in the initial user namespace (identity uid map). Root of any other namespace
/// records ownership instead of chowning: a real chown there would hand upper files on
/// the host to subordinate ids that the user who runs the union cannot remove.
pub fn in_initial_userns() -> bool {
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Copies the user-visible and security xattrs of `src` to `dst` (both not followed);
/// overlay markers stay behind (they would change meaning in the upper layer), and
/// namespaces the daemon may not write (`trusted.*` unprivileged) are skipped.
fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let names = match xattr::list(src) {
        Ok(n) => n,
        Err(e) if ownership::is_unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        if is_private_xattr(&name) && name.as_bytes() != OVERRIDE_XATTR.as_bytes() {
            continue;
        }
        let Some(v) = xattr::get(src, &name)? else {
            continue;
        };
        match xattr::set(dst, &name, &v) {
            Ok(()) => {}
            Err(e) if ownership::is_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn timespec(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(t)) => {
            let (s, ns) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(e) => {
                    let d = e.duration();
                    let mut s = -(d.as_secs() as i64);
                    let mut ns = i64::from(d.subsec_nanos());
                    if ns > 0 {
                        s -= 1;
                        ns = 1_000_000_000 - ns;
                    }
                    (s, ns)
                }
            };
            TimeSpec::new(s, ns)
        }
    }
}

/// Sets access and modification times of `path` without following symlinks.
fn set_times(path: &Path, atime: Option<SetTime>, mtime: Option<SetTime>) -> io::Result<()> {
    nix::sys::stat::utimensat(
        AT_FDCWD,
        path,
        &timespec(atime),
        &timespec(mtime),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(nix_err)
}

/// Removes the whiteouts and opaque marker left in an upper directory whose merged view
/// is empty, so the directory itself can be removed or replaced.
fn clear_markers(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            // A visible subdirectory would have made the merged view non-empty.
            return Err(errno(libc::ENOTEMPTY));
        }
        fs::remove_file(entry.path())?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
