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
//!   (`node_files`). Directories are listed without opens in every mode, by
//!   offset-named snapshots (`dir_snapshots`).
//!
//! Every method takes node ids and returns `io::Result` carrying the OS errno; the
//! FUSE adapter (`crate::fs::union`) only decodes and replies. No lock is held across
//! disk I/O: the node arena ([`tree`]) and the handle table are locked only to look up
//! or insert. The one exception is the `moving` lock: changes to the upper layer hold
//! it shared, and a rename of a lower directory holds it exclusively while it copies
//! the tree, so that nothing changes below the old name between snapshot and swap.
//!
//! The [`Union`] methods live by concern: `resolve` (lookup, attributes),
//! `copy_up`, `create`, `remove` (removal and rename), `attr` (setattr, statfs,
//! xattrs), `files` (open files, directory listings), `node_files` and
//! `dir_snapshots` (files and listings without opens).

pub mod hostpath;
pub mod lower;
pub mod options;
pub mod records;
pub mod rename_dir;
pub mod shared;
pub mod tree;

mod attr;
mod copy_up;
mod create;
mod dir_snapshots;
mod files;
mod node_files;
mod remove;
mod resolve;

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

use nix::errno::Errno;
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

/// What an [`Fh`] stands for in the handle table.
#[derive(Debug)]
enum Open {
    /// An open file and whether it is the upper layer's copy.
    File(Arc<File>, bool),
    /// An open directory: its merged listing, read when it was opened.
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
    handles: RwLock<HashMap<Fh, Arc<Open>>>,
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
            Err(Errno::EROFS.into())
        } else {
            Ok(())
        }
    }

    /// The node's info for path-based work: ENOENT once it has no name (its old path may
    /// meanwhile name another file), ESTALE when unknown.
    fn node(&self, ino: Ino) -> io::Result<tree::NodeInfo> {
        match self.tree.get(ino) {
            Some(info) if info.attached => Ok(info),
            Some(_) => Err(Errno::ENOENT.into()),
            None => Err(Errno::ESTALE.into()),
        }
    }

    /// The open file behind `fh`, if it is one.
    fn open_file(&self, fh: Option<Fh>) -> Option<Arc<Open>> {
        fh.and_then(|fh| self.handle(fh).ok())
            .filter(|h| matches!(**h, Open::File(..)))
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
    .map_err(io::Error::from)
}

/// Removes the whiteouts and opaque marker left in an upper directory whose merged view
/// is empty, so the directory itself can be removed or replaced.
fn clear_markers(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            // A visible subdirectory would have made the merged view non-empty.
            return Err(Errno::ENOTEMPTY.into());
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
