//! FUSE adapter for the union ([`crate::layers::union::Union`]) and the mount entry
//! points: [`mount`] (served from background threads, for in-process use such as the
//! build helper; unmounts on drop) and [`session`] (mounted but not yet serving, with an
//! unmounter for a signal thread: `gentree-fs union -f`).
//!
//! Each `Filesystem` method decodes the request, calls one `Union` method and replies;
//! errors keep the OS errno of the `io::Error`. Without passthrough the kernel opens
//! files and directories itself (`init`), and requests with file handle 0 go to the
//! union's by-node methods.

use super::{caller, file_attr, file_type, reply_empty, reply_xattr, set_time};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Config, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL,
    TimeOrNow, WriteFlags,
};

use super::Mounted;
use super::passthrough::{Join, OpenIo};
use crate::layers::union::{Attr, BackingFile, Fh, Ino, SetAttr, Union, UnionOptions};

/// Page cache policy. Every change to the union passes through the kernel (writes
/// update its cache, creates and unlinks bump the directory's version), and
/// `FUSE_AUTO_INVAL_DATA` drops cached data whose mtime changed behind our back, so
/// file data and directory listings may outlive an open: the second read of a file or
/// listing is then served without the daemon.
const CACHE_FILE: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE;
const CACHE_DIR: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_CACHE_DIR);

/// The INIT capabilities of a union's tree (also asked for by the read-only FUSE floor
/// of `bench/union.sh`, `examples/fuse_floor.rs`, so that it measures the same kernel
/// paths): parallel lookups, cached symlinks, large requests, listings with attributes.
///
/// Every READDIR is a READDIRPLUS (no `FUSE_READDIRPLUS_AUTO`): with the kernel's
/// automatic choice only a listing's first reply carried attributes, so each entry of
/// a directory longer than one reply (about 200 names: `/usr/bin`,
/// `/usr/lib/x86_64-linux-gnu`) cost a LOOKUP when stat'ed, 3,510 of them in a
/// `find -printf` of a Debian root filesystem; always with attributes, none.
pub const TREE_CAPABILITIES: &[InitFlags] = &[
    InitFlags::FUSE_PARALLEL_DIROPS,
    InitFlags::FUSE_CACHE_SYMLINKS,
    InitFlags::FUSE_MAX_PAGES,
    InitFlags::FUSE_DO_READDIRPLUS,
];

/// The fuser `Filesystem` over a [`Union`].
#[derive(Debug)]
pub struct UnionFs {
    union: Union,
    ttl: Ttl,
    passthrough: Passthrough,
    /// The kernel lists directories without OPENDIR (`init`).
    no_opendir: bool,
}

/// FUSE passthrough: the kernel reads and writes an open file's disk file itself, with
/// no request to the daemon. Registering a disk file (`FUSE_DEV_IOC_BACKING_OPEN`) needs
/// `CAP_SYS_ADMIN` in the initial user namespace, so only a privileged union asks for
/// it; anywhere else, or once the kernel refuses, files are served through the daemon.
/// A node's backing file is named by whether it is the node's upper copy (else a
/// lower file, read-only); the union's rule for an open that needs another one is
/// [`UnionFs::backing`]'s.
type Passthrough = super::passthrough::Passthrough<bool>;

/// How long a write-open waits for the kernel's release of a read-only lower file
/// (the kernel sends RELEASE asynchronously after close(2)).
const BACKING_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The reply that hands an open file to the kernel: OPEN's, or CREATE's with the new
/// entry.
trait OpenReply {
    /// Registers `file` as a backing file (`FUSE_DEV_IOC_BACKING_OPEN`).
    fn open_backing(&self, file: &BackingFile) -> io::Result<BackingId>;
    /// Answers with `fh`, served by the kernel from `backing` when given.
    fn opened(self, fh: Fh, backing: Option<&BackingId>);
    fn error(self, e: Errno);
}

impl OpenReply for ReplyOpen {
    fn open_backing(&self, file: &BackingFile) -> io::Result<BackingId> {
        ReplyOpen::open_backing(self, file)
    }
    fn opened(self, fh: Fh, backing: Option<&BackingId>) {
        match backing {
            None => ReplyOpen::opened(self, FileHandle(fh.0), CACHE_FILE),
            Some(id) => self.opened_passthrough(FileHandle(fh.0), FopenFlags::empty(), id),
        }
    }
    fn error(self, e: Errno) {
        ReplyOpen::error(self, e);
    }
}

/// CREATE's reply and the entry it carries.
struct Created {
    reply: ReplyCreate,
    ttl: Duration,
    attr: FileAttr,
}

impl OpenReply for Created {
    fn open_backing(&self, file: &BackingFile) -> io::Result<BackingId> {
        self.reply.open_backing(file)
    }
    fn opened(self, fh: Fh, backing: Option<&BackingId>) {
        let (ttl, attr, fh) = (&self.ttl, &self.attr, FileHandle(fh.0));
        match backing {
            None => self.reply.created(ttl, attr, Generation(0), fh, CACHE_FILE),
            Some(id) => {
                let flags = FopenFlags::empty();
                self.reply
                    .created_passthrough(ttl, attr, Generation(0), fh, flags, id)
            }
        }
    }
    fn error(self, e: Errno) {
        self.reply.error(e);
    }
}

/// Entry and attribute cache times.
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    /// For entries with an upper copy ([`UnionOptions::cache_timeout`]).
    pub upper: Duration,
    /// For entries only in lower layers ([`UnionOptions::lower_cache_timeout`]).
    pub lower: Duration,
}

impl Ttl {
    pub fn new(options: &UnionOptions) -> Ttl {
        Ttl {
            upper: options.cache_timeout(),
            lower: options.lower_cache_timeout(),
        }
    }

    /// Attribute cache time of `a`.
    fn attr(&self, a: &Attr) -> Duration {
        // A lower hard-link group may become another node once a name is copied up.
        if a.from_lower && !a.uncached_entry {
            self.lower
        } else {
            self.upper
        }
    }

    /// Entry cache time of `a`: none for a name of a lower hard-link group.
    fn entry(&self, a: &Attr) -> Duration {
        if a.uncached_entry {
            Duration::ZERO
        } else {
            self.attr(a)
        }
    }
}

impl UnionFs {
    pub fn new(union: Union, ttl: Ttl) -> UnionFs {
        UnionFs {
            union,
            ttl,
            passthrough: Passthrough::new("union file data"),
            no_opendir: false,
        }
    }

    /// Asks for FUSE passthrough when the kernel offers it and the daemon may register
    /// disk files (root of the initial user namespace).
    fn want_passthrough(&self) -> bool {
        !self.union.no_passthrough() && super::privileged()
    }

    /// The union handle a READ (`write` false), WRITE or fallocate of `ino` goes to:
    /// the node's own file for handle 0 (the no-open mode).
    fn file_handle(&self, ino: INodeNo, fh: FileHandle, write: bool) -> io::Result<Fh> {
        match fh.0 {
            0 => self.union.node_file(Ino(ino.0), write),
            n => Ok(Fh(n)),
        }
    }

    /// Answers an open (OPEN or CREATE) of `ino` whose file is `fh`, opened for writing
    /// when `write`.
    fn reply_open(&self, ino: INodeNo, fh: Fh, write: bool, reply: impl OpenReply) {
        match self.backing(ino.0, fh, write, |f| reply.open_backing(f)) {
            Ok(id) => reply.opened(fh, id.as_deref()),
            Err(e) => {
                self.union.release(fh);
                reply.error(Errno::from(e));
            }
        }
    }

    /// The backing file open file `fh` of `node` is served by (`None`: by the daemon),
    /// registered through `register` when the node gets one.
    fn backing(
        &self,
        node: u64,
        fh: Fh,
        write: bool,
        register: impl FnOnce(&BackingFile) -> io::Result<BackingId>,
    ) -> io::Result<Option<Arc<BackingId>>> {
        if !self.passthrough.switch.negotiated() {
            return Ok(None);
        }
        let file = self.union.backing_file(fh)?;
        let deadline = Instant::now() + BACKING_RELEASE_WAIT;
        let join = |upper: &bool| {
            if *upper == file.upper || !write {
                // A read-only open after a copy-up by chmod or chown may keep reading
                // the lower file the node's other opens read: the same data (a
                // truncate first waits for those readers, see `wait_lower_readers`).
                Join::Share
            } else {
                // A write-open of a file copied up while its lower copy is open for
                // reading: the kernel keeps the lower file until the last reader goes.
                // Usually that reader is closed already and its RELEASE on its way.
                Join::Wait(deadline)
            }
        };
        match self
            .passthrough
            .open(node, fh.0, Some((file.upper, &file)), join, register)
        {
            OpenIo::Cached => Ok(None),
            OpenIo::Backed(id) => Ok(Some(id)),
            OpenIo::Conflict => Err(io::Error::from_raw_os_error(libc::ETXTBSY)),
        }
    }

    /// Waits until no open of `node` reads its lower file through the kernel, so that
    /// a change of the file's data (a truncate or a write-open, which copy up) is seen
    /// by every later open: those reuse the node's backing file. ETXTBSY if the readers
    /// stay, before anything was copied up or truncated.
    fn wait_lower_readers(&self, node: u64) -> io::Result<()> {
        if !self.passthrough.switch.negotiated() {
            return Ok(());
        }
        let deadline = Instant::now() + BACKING_RELEASE_WAIT;
        if self
            .passthrough
            .wait_unbacked(node, |upper| !upper, deadline)
        {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ETXTBSY))
        }
    }
}

/// The union's handle of a request's file handle: none for 0, which the kernel sends
/// for files it opened without the daemon (the no-open mode).
fn handle(fh: Option<FileHandle>) -> Option<Fh> {
    fh.filter(|f| f.0 != 0).map(|f| Fh(f.0))
}

fn reply_entry(reply: ReplyEntry, ttl: Ttl, r: io::Result<Attr>) {
    match r {
        Ok(a) => {
            reply.entry_with_ttls(&ttl.attr(&a), &ttl.entry(&a), &file_attr(&a), Generation(0));
        }
        Err(e) => reply.error(Errno::from(e)),
    }
}

impl Filesystem for UnionFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        super::request_capabilities(config, TREE_CAPABILITIES);
        // Cached pages and listings are dropped when a refreshed mtime differs, so
        // changes made behind the union's back show once the attributes expire.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        if self.want_passthrough() {
            // Depth 1 unless a layer stacks already: it leaves the union usable as a
            // layer of a kernel overlay.
            let stacked = self.union.layers_on_stacked_fs();
            self.passthrough.switch.negotiate(config, stacked);
        }
        if self.passthrough.switch.negotiated() {
            // O_TRUNC arrives with the open instead of as a later SETATTR: the union
            // then copies up and empties the file before choosing the disk file behind
            // the open. Without it, a passthrough O_RDONLY|O_TRUNC open of a lower file
            // would hold the lower file and its own truncate would wait for it
            // (ETXTBSY).
            let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        } else if config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok()
        {
            // Without passthrough every open is a round trip, and so is its release:
            // the kernel opens files itself once OPEN says ENOSYS, and the union serves
            // READ and WRITE by node ([`crate::layers::union`]'s `node_files`). Not with
            // FUSE_ATOMIC_O_TRUNC: the kernel would then drop an O_TRUNC it never sends.
            self.union.set_no_open();
        }
        // Directories are listed by node in every mode (`dir_snapshots`): no OPENDIR
        // and RELEASEDIR round trips per listing, passthrough or not.
        self.no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.union.lookup(Ino(parent.0), name) {
            // A name in no layer: a negative entry (node 0) the kernel keeps as long as
            // an upper entry, so repeated misses (PATH and include searches) stay local.
            // Every change through the union updates the kernel's dentries itself.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let t = std::time::SystemTime::UNIX_EPOCH;
                let none = FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: t,
                    mtime: t,
                    ctime: t,
                    crtime: t,
                    kind: FileType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 0,
                    flags: 0,
                };
                reply.entry_with_ttls(&Duration::ZERO, &self.ttl.upper, &none, Generation(0));
            }
            r => reply_entry(reply, self.ttl, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.union.getattr(Ino(ino.0), handle(fh)) {
            Ok(a) => reply.attr(&self.ttl.attr(&a), &file_attr(&a)),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        if size.is_some() {
            if let Err(e) = self.wait_lower_readers(ino.0) {
                return reply.error(Errno::from(e));
            }
        }
        match self.union.setattr(Ino(ino.0), set, handle(fh)) {
            Ok(a) => reply.attr(&self.ttl.attr(&a), &file_attr(&a)),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        match self.union.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .union
            .mknod(Ino(parent.0), name, mode, u64::from(rdev), caller(req));
        reply_entry(reply, self.ttl, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.ttl,
            self.union.mkdir(Ino(parent.0), name, mode, caller(req)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.union.unlink(Ino(parent.0), name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.union.rmdir(Ino(parent.0), name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self
            .union
            .symlink(Ino(parent.0), link_name, target, caller(req));
        reply_entry(reply, self.ttl, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self
            .union
            .rename(Ino(parent.0), name, Ino(newparent.0), newname, flags.bits());
        reply_empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.ttl,
            self.union.link(Ino(ino.0), Ino(newparent.0), newname),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.union.no_open() {
            // From now on the kernel opens files without asking (see `init`).
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        let acc = flags.0 & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        // A write-open that must fail for a lasting lower reader fails before it copies
        // up or truncates anything.
        if write {
            if let Err(e) = self.wait_lower_readers(ino.0) {
                return reply.error(Errno::from(e));
            }
        }
        match self.union.open(Ino(ino.0), flags.0) {
            Ok(fh) => self.reply_open(ino, fh, write, reply),
            Err(e) => reply.error(Errno::from(e)),
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
        let fh = match self.file_handle(ino, fh, false) {
            Ok(fh) => fh,
            Err(e) => return reply.error(Errno::from(e)),
        };
        match self.union.read(fh, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let fh = match self.file_handle(ino, fh, true) {
            Ok(fh) => fh,
            Err(e) => return reply.error(Errno::from(e)),
        };
        match self.union.write(fh, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do on close(2): writes went straight to the backing file. ENOSYS
        // tells the kernel so once (`fc->no_flush`), sparing a request per close.
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.passthrough.switch.negotiated() {
            self.passthrough.release(fh.0);
        }
        self.union.release(Fh(fh.0));
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let fh = match fh.0 {
            // No node file: nothing was written without an open.
            0 => match self.union.open_node_file(Ino(ino.0)) {
                Some(fh) => fh,
                None => return reply.ok(),
            },
            n => Fh(n),
        };
        reply_empty(reply, self.union.fsync(fh, datasync));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .file_handle(ino, fh, true)
            .and_then(|fh| self.union.fallocate(fh, offset, length, mode));
        reply_empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            // From now on the kernel opens directories without asking (see `init`).
            return reply.error(Errno::from_i32(libc::ENOSYS));
        }
        match self.union.opendir(Ino(ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh.0), CACHE_DIR),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if fh.0 == 0 {
            // Opened by the kernel alone: the union's snapshot named by the offset.
            match self.union.readdir_node(Ino(ino.0), offset) {
                Ok(entries) => {
                    for (next, e) in &entries {
                        if reply.add(INodeNo(e.ino), *next, file_type(e.kind), &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(Errno::from(e)),
            }
            return;
        }
        let entries = match self.union.readdir(Fh(fh.0)) {
            Ok(e) => e,
            Err(e) => return reply.error(Errno::from(e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), i as u64 + 1, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.ttl;
        let emit = |next, e: &crate::layers::union::DirEntry, a: &Attr| {
            // One TTL serves entry and attributes here: none for a lower group.
            let ttl = ttl.entry(a);
            reply.add(
                INodeNo(a.node.0),
                next,
                &e.name,
                &ttl,
                &file_attr(a),
                Generation(0),
            )
        };
        let r = match fh.0 {
            0 => self.union.readdirplus_node(Ino(ino.0), offset, emit),
            n => self.union.readdirplus(Ino(ino.0), Fh(n), offset, emit),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.union.release(Fh(fh.0));
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.union.fsyncdir(Ino(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.union.setxattr(Ino(ino.0), name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.union.getxattr(Ino(ino.0), name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.union.listxattr(Ino(ino.0)));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.union.removexattr(Ino(ino.0), name));
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions makes the kernel check modes; this only confirms existence.
        reply_empty(reply, self.union.getattr(Ino(ino.0), None).map(drop));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (a, fh) = match self
            .union
            .create(Ino(parent.0), name, mode, flags, caller(req))
        {
            Ok(r) => r,
            Err(e) => return reply.error(Errno::from(e)),
        };
        let reply = Created {
            reply,
            ttl: self.ttl.attr(&a),
            attr: file_attr(&a),
        };
        self.reply_open(INodeNo(a.node.0), fh, true, reply);
    }
}

/// Why a union could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum UnionMountError {
    #[error(transparent)]
    Options(#[from] crate::layers::union::OptionsError),
    #[error("cannot prepare the union's work dir under {work}")]
    Work {
        work: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot mount the union on {mountpoint}: /dev/fuse is not open to this user \
         (ordinary users need it mode 0666, e.g. `chmod 0666 /dev/fuse` as root)"
    )]
    DevFuseClosed {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount the union on {mountpoint}")]
    Mount {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Everything needed to mount a union (the CLI's `-o` options, parsed).
#[derive(Debug, Clone)]
pub struct UnionMountSpec {
    pub options: UnionOptions,
    pub mountpoint: PathBuf,
    /// What the mount table shows as the mount's source (`fsname`); `None` for
    /// `gentree-union`.
    pub source: Option<String>,
    /// Event-loop threads; `None` means one per CPU.
    pub threads: Option<usize>,
}

/// The mount's subtype: the mount shows as `fuse.gentree-fs` (`/proc/mounts`, `df -T`),
/// and `mount -t fuse.gentree-fs` finds the binary through mount.fuse3 by this name.
pub const SUBTYPE: &str = "gentree-fs";

/// The fuser configuration for a union: `default_permissions` (the kernel checks the
/// presented, possibly recorded, ownership), `allow_other` when asked or when run as
/// root ([`UnionOptions::allows_other`]; needed inside the build's user namespace so
/// Portage's users are not locked out), one event loop per CPU with its own cloned fd.
pub fn fuse_config(spec: &UnionMountSpec) -> Config {
    let o = &spec.options;
    let mut cfg = Config::default();
    let fsname = spec.source.as_deref().unwrap_or("gentree-union");
    cfg.mount_options = vec![
        MountOption::FSName(fsname.into()),
        // fuser's own mount(2) names the type "fuse" and passes the subtype only to
        // fusermount3: the kernel takes it as a mount option too.
        MountOption::Subtype(SUBTYPE.into()),
        MountOption::CUSTOM(format!("subtype={SUBTYPE}")),
        MountOption::DefaultPermissions,
        if o.is_read_only() {
            MountOption::RO
        } else {
            MountOption::RW
        },
        if o.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        if o.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
    ];
    cfg.acl = if o.allows_other(nix::unistd::geteuid().is_root()) {
        SessionACL::All
    } else if o.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.n_threads = Some(spec.threads.unwrap_or(cpus).max(1));
    cfg.clone_fd = true;
    cfg
}

/// Validates, opens and mounts a union; the returned session is mounted (the INIT
/// handshake is done) but not yet serving.
pub fn session(spec: &UnionMountSpec) -> Result<Mounted<UnionFs>, UnionMountError> {
    let options = spec.options.validate(&spec.mountpoint)?;
    let union = Union::new(&options).map_err(|source| UnionMountError::Work {
        work: options.work.clone().unwrap_or_default(),
        source,
    })?;
    let spec = UnionMountSpec {
        options,
        ..spec.clone()
    };
    raise_fd_limit();
    let cfg = fuse_config(&spec);
    let session = fuser::Session::new(
        UnionFs::new(union, Ttl::new(&spec.options)),
        &spec.mountpoint,
        &cfg,
    )
    .map_err(|source| mount_error(&spec.mountpoint, source))?;
    Ok(Mounted::new(session))
}

/// Every open file of the union holds a real fd: allow as many as the hard limit does
/// (fuse-overlayfs does the same; EMFILE otherwise comes early under builds).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// fuser falls back to fusermount3 only when mount(2) says EPERM; when `/dev/fuse` is
/// closed to the user (mode 0600, as in some containers) even fusermount3 cannot help,
/// since it opens the device with the caller's rights.
fn mount_error(mountpoint: &Path, source: io::Error) -> UnionMountError {
    let closed = !nix::unistd::geteuid().is_root()
        && matches!(
            std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse"),
            Err(e) if e.raw_os_error() == Some(libc::EACCES)
        );
    if closed {
        return UnionMountError::DevFuseClosed {
            mountpoint: mountpoint.to_owned(),
            source,
        };
    }
    UnionMountError::Mount {
        mountpoint: mountpoint.to_owned(),
        source,
    }
}

/// A union mounted and served from background threads. Dropping it unmounts (without
/// waiting for the threads); [`UnionMount::unmount`] also waits.
#[derive(Debug)]
pub struct UnionMount {
    bg: fuser::BackgroundSession,
    mountpoint: PathBuf,
}

impl UnionMount {
    /// Where the union is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the serving threads to finish.
    pub fn unmount(self) -> io::Result<()> {
        self.bg.umount_and_join()
    }
}

/// Mounts a union and serves it from background threads (for in-process use, e.g. the
/// namespaced build helper). Returns once the mount is usable.
pub fn mount(spec: &UnionMountSpec) -> Result<UnionMount, UnionMountError> {
    let Mounted { session, .. } = session(spec)?;
    let bg = session
        .spawn()
        .map_err(|source| mount_error(&spec.mountpoint, source))?;
    Ok(UnionMount {
        bg,
        mountpoint: spec.mountpoint.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::ownership::FileKind;
    use std::time::SystemTime;

    #[test]
    fn lower_only_entries_are_cached_long_and_lower_link_groups_get_no_entry_cache() {
        let o = UnionOptions::parse(&["lowerdir=/a,upperdir=/u,workdir=/w"]).expect("parses");
        let ttl = Ttl::new(&o);
        let t = SystemTime::UNIX_EPOCH;
        let a = |from_lower, uncached_entry| Attr {
            node: crate::layers::union::ROOT,
            ino: 1,
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            uncached_entry,
            from_lower,
        };
        let (long, short) = (Duration::from_secs(1_000_000_000), Duration::from_secs(1));
        // (from_lower, uncached_entry) -> (attr ttl, entry ttl)
        for (lower, uncached, want) in [
            (true, false, (long, long)),
            (false, false, (short, short)),
            (true, true, (short, Duration::ZERO)),
        ] {
            let x = a(lower, uncached);
            assert_eq!((ttl.attr(&x), ttl.entry(&x)), want, "{lower} {uncached}");
        }
        // An explicit timeout= holds for every entry.
        let o =
            UnionOptions::parse(&["lowerdir=/a,upperdir=/u,workdir=/w,timeout=2"]).expect("parses");
        let ttl = Ttl::new(&o);
        assert_eq!(ttl.attr(&a(true, false)), Duration::from_secs(2));
    }
}
