//! The FUSE "floor" for `bench/union.sh`: what any FUSE filesystem costs on this
//! machine for the read-only workloads (walk, read).
//!
//! A read-only mirror of one host directory tree that does the least work FUSE allows:
//! at mount it loads every name, attribute and symlink target into memory; LOOKUP,
//! GETATTR and READDIR(PLUS) are answered from that table with very long TTLs (the tree
//! never changes); OPEN hands the host file to the kernel by FUSE passthrough when the
//! daemon is root of the initial user namespace (else the daemon serves READs with
//! `pread`); FLUSH answers ENOSYS so the kernel stops sending it; RELEASE drops the
//! backing file. It runs as many threads as `gentree-fs union` (one per CPU, cloned
//! /dev/fuse fds), so a union slower than this floor pays for its own work, and a floor
//! slower than kernel overlayfs is the price of FUSE itself.
//!
//! ```text
//! cargo build --release --example fuse_floor
//! target/release/examples/fuse_floor [--no-passthrough | --no-open] [--threads N] SOURCE MOUNTPOINT
//! fusermount3 -u MOUNTPOINT     # the daemon serves in the foreground until then
//! ```
//!
//! `--no-passthrough` serves file data by READ; `--no-open` also answers OPEN with
//! ENOSYS (`FUSE_NO_OPEN_SUPPORT`: no OPEN, FLUSH or RELEASE per file, one READ), for
//! comparison: a writable union cannot use the latter, the kernel skips every OPEN.
//!
//! Changes to SOURCE after the mount are not seen: this is a benchmark baseline, not a
//! filesystem to use.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod floor_tree;

use floor_tree::at;
use gentree_fs::layers::read_full_at;
use gentree_fs::layers::union::{in_initial_userns, on_stacking_fs};

use fuser::{
    BackingId, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr, Request,
    SessionACL,
};

/// The tree never changes while mounted: the kernel may keep every entry and attribute
/// (fuse-overlayfs uses the same for its immutable lower layers).
const TTL: Duration = Duration::from_secs(1_000_000_000);

type Node = floor_tree::Node<FileAttr>;

#[derive(Debug)]
struct Floor {
    nodes: Vec<Node>,
    /// Asked for at INIT when privileged; a refused registration turns it off.
    passthrough: AtomicBool,
    /// Passthrough: per inode, the backing file the kernel holds and its open count
    /// (the kernel refuses a second backing file for an inode while one is in use).
    backing: Mutex<HashMap<u64, (Arc<BackingId>, usize)>>,
    /// Without passthrough: the host file of each open handle.
    files: Mutex<HashMap<u64, Arc<File>>>,
    next_fh: AtomicU64,
    stack_depth: u32,
    /// `--no-open`: OPEN answers ENOSYS, after which the kernel opens files without
    /// asking (and sends no RELEASE); every READ then opens the host file itself.
    no_open: bool,
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let t = Duration::new(secs.unsigned_abs(), nsecs.clamp(0, 999_999_999) as u32);
    if secs >= 0 {
        UNIX_EPOCH + t
    } else {
        UNIX_EPOCH - t
    }
}

fn attr(ino: u64, m: &Metadata) -> FileAttr {
    let ft = m.file_type();
    let kind = FileType::from_std(ft).unwrap_or(FileType::RegularFile);
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

impl Floor {
    fn node(&self, ino: INodeNo) -> Option<&Node> {
        self.nodes.get((ino.0 as usize).checked_sub(1)?)
    }

    /// Registers (or reuses) the backing file of `ino` and answers by passthrough.
    fn open_passthrough(&self, ino: u64, file: &File, reply: ReplyOpen) {
        let mut backing = self.backing.lock().unwrap_or_else(PoisonError::into_inner);
        let id = match backing.get_mut(&ino) {
            Some((id, opens)) => {
                *opens += 1;
                id.clone()
            }
            None => match reply.open_backing(file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    backing.insert(ino, (id.clone(), 1));
                    id
                }
                Err(e) => {
                    drop(backing);
                    eprintln!("fuse_floor: passthrough refused ({e}); serving reads instead");
                    self.passthrough.store(false, Ordering::Relaxed);
                    return self.open_cached(file, reply);
                }
            },
        };
        reply.opened_passthrough(FileHandle(0), FopenFlags::empty(), &id);
    }

    /// Keeps the host file for READs; the page cache may outlive the open.
    fn open_cached(&self, file: &File, reply: ReplyOpen) {
        let file = match file.try_clone() {
            Ok(f) => f,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(fh, Arc::new(file));
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The capabilities `gentree-fs union` asks for but FUSE_AUTO_INVAL_DATA
        // (nothing changes here).
        gentree_fs::fs::request_capabilities(config, gentree_fs::fs::union::TREE_CAPABILITIES);
        if *self.passthrough.get_mut() {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(self.stack_depth).is_ok();
            *self.passthrough.get_mut() = granted;
        }
        let mode = if self.no_open {
            "daemon reads, no OPEN"
        } else if *self.passthrough.get_mut() {
            "passthrough"
        } else {
            "daemon reads"
        };
        eprintln!(
            "fuse_floor: {} entries preloaded; file data by {mode}",
            self.nodes.len()
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(dir) = self.node(parent) else {
            return reply.error(Errno::ENOENT);
        };
        match dir.by_name.get(name).and_then(|&i| self.node(INodeNo(i))) {
            Some(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            // A negative entry (node 0) the kernel keeps as long as the positive ones.
            None => {
                let mut none = dir.attr;
                none.ino = INodeNo(0);
                reply.entry(&TTL, &none, Generation(0));
            }
        }
    }

    fn getattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: Option<FileHandle>,
        reply: fuser::ReplyAttr,
    ) {
        match self.node(ino) {
            Some(n) => reply.attr(&TTL, &n.attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).and_then(|n| n.target.as_ref()) {
            Some(t) => reply.data(t.as_os_str().as_bytes()),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if self.no_open {
            return reply.error(Errno::ENOSYS);
        }
        let Some(n) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let file = match File::open(&n.host) {
            Ok(f) => f,
            Err(e) => return reply.error(Errno::from(e)),
        };
        if self.passthrough.load(Ordering::Relaxed) {
            self.open_passthrough(ino.0, &file, reply);
        } else {
            self.open_cached(&file, reply);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = if self.no_open {
            let Some(n) = self.node(ino) else {
                return reply.error(Errno::ENOENT);
            };
            match File::open(&n.host) {
                Ok(f) => Some(Arc::new(f)),
                Err(e) => return reply.error(Errno::from(e)),
            }
        } else {
            self.files
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&fh.0)
                .cloned()
        };
        let Some(file) = file else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0; size as usize];
        let got = match read_full_at(&file, offset, &mut buf) {
            Ok(got) => got,
            Err(e) => return reply.error(Errno::from(e)),
        };
        reply.data(&buf[..got]);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // ENOSYS: the kernel stops sending FLUSH for this mount.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Handle 0 is a passthrough open; cached opens count from 1.
        if fh.0 == 0 {
            let mut backing = self.backing.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, opens)) = backing.get_mut(&ino.0) {
                *opens -= 1;
                if *opens == 0 {
                    backing.remove(&ino.0);
                }
            }
        } else {
            self.files
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&fh.0);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Some(n) if n.attr.kind == FileType::Directory => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Some(_) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        for (i, (name, ino, kind)) in self.listing(dir).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(dir) = self.node(ino) else {
            return reply.error(Errno::ENOENT);
        };
        for (i, (name, ino, _)) in self.listing(dir).enumerate().skip(offset as usize) {
            let Some(n) = self.node(INodeNo(ino)) else {
                continue;
            };
            if reply.add(
                INodeNo(ino),
                i as u64 + 1,
                name,
                &TTL,
                &n.attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // ENOSYS: the kernel stops asking for xattrs of this mount.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }
}

impl Floor {
    /// `.`, `..` and the entries of `dir`: (name, inode, kind).
    fn listing<'a>(&'a self, dir: &'a Node) -> impl Iterator<Item = (&'a OsStr, u64, FileType)> {
        let dots = [
            (OsStr::new("."), dir.attr.ino.0),
            (OsStr::new(".."), dir.parent),
        ];
        dots.into_iter()
            .chain(
                dir.children
                    .iter()
                    .map(|(name, ino)| (name.as_os_str(), *ino)),
            )
            .map(|(name, ino)| {
                let kind = self
                    .node(INodeNo(ino))
                    .map_or(FileType::RegularFile, |n| n.attr.kind);
                (name, ino, kind)
            })
    }
}

struct Args {
    source: PathBuf,
    mountpoint: PathBuf,
    passthrough: bool,
    no_open: bool,
    threads: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let usage = "usage: fuse_floor [--no-passthrough | --no-open] [--threads N] SOURCE MOUNTPOINT";
    let mut passthrough = true;
    let mut no_open = false;
    let mut threads = None;
    let mut paths = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--no-passthrough") => passthrough = false,
            Some("--no-open") => (passthrough, no_open) = (false, true),
            Some("--threads") => {
                let n = args.next().and_then(|n| n.to_str()?.parse().ok());
                threads = Some(n.ok_or(usage)?);
            }
            Some("-h" | "--help") => return Err(usage.into()),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    let [source, mountpoint] = <[PathBuf; 2]>::try_from(paths).map_err(|_| usage)?;
    Ok(Args {
        source,
        mountpoint,
        passthrough,
        no_open,
        threads,
    })
}

fn run(args: Args) -> io::Result<()> {
    let nodes = floor_tree::preload(&args.source, attr)?;
    let floor = Floor {
        nodes,
        // Registering backing files needs CAP_SYS_ADMIN in the initial user namespace.
        passthrough: AtomicBool::new(
            args.passthrough && nix::unistd::geteuid().is_root() && in_initial_userns(),
        ),
        backing: Mutex::default(),
        files: Mutex::default(),
        next_fh: AtomicU64::new(1),
        // Files on a stacking filesystem are one level deep already.
        stack_depth: if on_stacking_fs(&args.source) { 2 } else { 1 },
        no_open: args.no_open,
    };
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("fuse-floor".into()),
        MountOption::Subtype("fuse-floor".into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    cfg.acl = SessionACL::Owner;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.n_threads = Some(args.threads.unwrap_or(cpus).max(1));
    cfg.clone_fd = true;
    fuser::Session::new(floor, &args.mountpoint, &cfg)
        .map_err(at(&args.mountpoint))?
        .run()
}

fn main() -> ExitCode {
    floor_tree::main("fuse_floor", parse_args, run)
}
