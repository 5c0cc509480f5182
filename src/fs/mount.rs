//! FUSE adapter for the gentree mount ([`crate::mount::tree::GentreeFs`]) and its session.
//!
//! Each method decodes, calls one `GentreeFs` method and replies. The exceptions:
//! opening `builds/<config>.tar`: the `ReplyOpen` moves into an [`OpenWaiter`] handed
//! to the build manager ([`crate::mount::images::Images`]), which answers it from its own
//! thread when the image is ready, failed, or the opener got a signal; no FUSE worker
//! thread waits for a build. And any request on `builds/<config>.tar` whose config
//! resolution is not cached moves, reply and all, to a resolver thread
//! (`GentreeFuse::answer`): no FUSE worker thread reads a config.
//!
//! Size and cache policy (without direct I/O the kernel's page cache clips reads at the
//! size it was last told): an image that is ready reports its
//! exact size; one that is not reports size 0. An open that waited for the build is
//! answered with `FOPEN_DIRECT_IO` (the kernel may have cached size 0: direct reads
//! ignore it, so `cp` copies everything). Image bytes are immutable per key, so every
//! other open reads through the page cache (readahead, 1 MiB requests): the first one
//! for a new image of a config (the first since mounting, or after a config edit) is
//! answered only after the inode's cached attributes and pages were invalidated
//! through the notifier, so the kernel asks for the new size and never serves bytes
//! of the image before; later opens use `FOPEN_KEEP_CACHE`, so repeated reads of a
//! finished image come from the page cache without the daemon.
//!
//! A privileged daemon (root in the initial user namespace) instead keeps each
//! finished image as a file and answers opens of it with FUSE passthrough (see
//! [`Passthrough`]): the kernel reads the file itself, as fast as an ordinary file.

use super::Mounted;
use super::passthrough::{Join, OpenIo};
use super::{caller, file_attr, file_type, reply_empty, reply_xattr, set_time};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, BsdFileFlags, Config, Errno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::layers::tar::TarLayout;
use crate::layers::union::{Attr, SetAttr};
use crate::mount::image_open::{CacheAnswer, ImageOpen, cache_answer, image_open};
use crate::mount::images::{INTERRUPT_POLL, Images};
use crate::mount::slots::Waiter;
use crate::mount::tree::{ExtraOp, FhTable, GentreeFs, OpenData, Opened};

impl GentreeFuse {
    /// Answers now, or, for a request that needs a config resolution that is not
    /// cached (`config`), from a resolver thread once it is: a slow config never holds
    /// a FUSE worker thread, so every other path keeps answering.
    fn answer(&self, config: Option<String>, answer: impl FnOnce(&GentreeFs) + Send + 'static) {
        match config {
            None => answer(&self.fs),
            Some(name) => {
                let fs = self.fs.clone();
                let images = fs.images().clone();
                images.when_resolved(&name, Box::new(move || answer(&fs)));
            }
        }
    }

    /// Answers `op` on `ino` now, or, when it needs a config's OCI image or SBOM made
    /// for the current image first ([`GentreeFs::needs_extra`]), once that is done
    /// (a build, then hashing, on other threads): `answer` gets the outcome.
    fn with_extra(
        &self,
        pid: u32,
        op: ExtraOp<'_>,
        ino: u64,
        answer: impl FnOnce(&GentreeFs, Result<(), i32>) + Send + 'static,
    ) {
        match self.fs.needs_extra(op, ino) {
            None => answer(&self.fs, Ok(())),
            Some((name, want)) => {
                let fs = self.fs.clone();
                let extras = fs.extras().clone();
                extras.request(&name, want, pid, Box::new(move |r| answer(&fs, r)));
            }
        }
    }
}

/// The fuser `Filesystem` over a [`GentreeFs`].
#[derive(Debug)]
pub struct GentreeFuse {
    fs: Arc<GentreeFs>,
    /// Keep finished images as files and serve them by FUSE passthrough when the
    /// daemon may (`--no-image-files` turns it off).
    image_files: bool,
    passthrough: Arc<Passthrough>,
}

/// FUSE passthrough of finished images: the kernel reads `builds/<config>.tar` from the
/// image's file itself (one copy, as for an ordinary file) with no request to us.
/// Registering a file needs `CAP_SYS_ADMIN` in the initial user namespace, so only a
/// privileged daemon asks for it; a rootless one serves every image from its layout.
///
/// An image file is named by its device and inode: a file written again under the
/// same name, after a rebuild, is another file. While passthrough opens of one image
/// file last, an open of another image (the config was edited) gets a new inode
/// number for the tar ([`GentreeFs::new_tar_generation`]) and ESTALE, on which the
/// kernel looks the name up again and opens the new inode; while page-cached opens
/// last, opens stay page-cached. Direct I/O opens mix with page-cached ones, but not
/// with passthrough ones.
type Passthrough = super::passthrough::Passthrough<FileId>;

/// A file's device and inode.
type FileId = (u64, u64);

/// How to answer an open of an image that is ready.
enum ImageIo {
    /// Passthrough with this backing file.
    Backed(Arc<fuser::BackingId>),
    /// Through the page cache (today's served path).
    Cached,
    /// Not on this inode: passthrough opens of another image last (the kernel would
    /// fail the open); the image needs a new inode.
    Stale,
}

impl Passthrough {
    /// Decides how open `fh` of inode `ino` is served; `file` is the image's file
    /// when it is complete, `register` registers it.
    fn open_image(
        &self,
        ino: u64,
        fh: u64,
        file: Option<std::fs::File>,
        register: impl FnOnce(&std::fs::File) -> io::Result<fuser::BackingId>,
    ) -> ImageIo {
        let file = file.and_then(|f| {
            use std::os::unix::fs::MetadataExt;
            let m = f.metadata().ok()?;
            Some(((m.dev(), m.ino()), f))
        });
        let id = file.as_ref().map(|(id, _)| *id);
        let join = |backing: &FileId| {
            if Some(*backing) == id {
                Join::Share
            } else {
                Join::Refuse
            }
        };
        match self.open(
            ino,
            fh,
            file.as_ref().map(|(id, f)| (*id, f)),
            join,
            register,
        ) {
            OpenIo::Backed(id) => ImageIo::Backed(id),
            OpenIo::Cached => ImageIo::Cached,
            OpenIo::Conflict => ImageIo::Stale,
        }
    }
}

fn reply_entry(reply: ReplyEntry, ttl: Duration, r: io::Result<Attr>) {
    match r {
        Ok(a) => {
            let entry_ttl = if a.uncached_entry {
                Duration::ZERO
            } else {
                ttl
            };
            let attr_ttl = GentreeFs::attr_ttl(a.ino, ttl);
            reply.entry_with_ttls(&attr_ttl, &entry_ttl, &file_attr(&a), Generation(0));
        }
        Err(e) => reply.error(Errno::from(e)),
    }
}

fn reply_attr(reply: ReplyAttr, ttl: Duration, r: io::Result<Attr>) {
    match r {
        Ok(a) => reply.attr(&GentreeFs::attr_ttl(a.ino, ttl), &file_attr(&a)),
        Err(e) => reply.error(Errno::from(e)),
    }
}

/// An open of `builds/<config>.tar` waiting for its image.
struct OpenWaiter {
    fs: Arc<GentreeFs>,
    reply: ReplyOpen,
    pid: u32,
    ino: u64,
    name: String,
    images: Arc<Images>,
    handles: Arc<FhTable>,
    passthrough: Arc<Passthrough>,
}

impl Waiter for OpenWaiter {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn ready(self: Box<Self>, image: Arc<TarLayout>, built: bool) {
        let handle = |cached| OpenData::Image {
            name: self.name.clone(),
            image: image.clone(),
            cached,
        };
        let fh = FileHandle(self.handles.insert(handle(!built)));
        let negotiated = self.passthrough.switch.negotiated();
        let backed = negotiated && self.passthrough.backed(self.ino);
        let io = match image_open(negotiated, built, backed) {
            ImageOpen::Cache => None,
            ImageOpen::Stale => Some(ImageIo::Stale),
            ImageOpen::Passthrough => {
                let file = self.images.image_file(&self.name, &image);
                let reply = &self.reply;
                Some(
                    self.passthrough
                        .open_image(self.ino, fh.0, file, |f| reply.open_backing(f)),
                )
            }
        };
        match io {
            Some(ImageIo::Backed(id)) => {
                return self.reply.opened_passthrough(fh, FopenFlags::empty(), &id);
            }
            Some(ImageIo::Stale) => {
                tracing::debug!("{}: new image, new inode", self.name);
                self.handles.remove(fh.0);
                self.fs.new_tar_generation(&self.name);
                return self.reply.error(Errno::from_i32(libc::ESTALE));
            }
            Some(ImageIo::Cached) | None if negotiated && !self.passthrough.switch.enabled() => {
                // Refused: image files would serve nothing.
                self.images.disable_files();
            }
            Some(ImageIo::Cached) | None => {}
        }
        match cache_answer(built, self.images.is_served(&self.name, &image)) {
            CacheAnswer::DirectIo => return self.reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
            CacheAnswer::KeepCache => return self.reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE),
            CacheAnswer::InvalidateFirst => {}
        }
        // Invalidate off any handler thread (a notification from inside a handler for
        // a related inode can deadlock with the kernel), then answer without KEEP_CACHE
        // so the open itself drops any page left. Openers racing this one do the same until
        // it is recorded as served.
        let images = self.images.clone();
        let name = self.name.clone();
        let reply = self.reply;
        let spawned = std::thread::Builder::new()
            .name("invalidate".into())
            .spawn(move || {
                images.invalidate(&name);
                images.mark_served(&name, &image);
                reply.opened(fh, FopenFlags::empty());
            });
        if let Err(e) = spawned {
            // The reply went down with the closure (answered EIO when dropped).
            tracing::error!("cannot start a thread to open {}: {e}", self.name);
        }
    }
    fn fail(self: Box<Self>, errno: i32) {
        self.reply.error(Errno::from_i32(errno));
    }
}

impl Filesystem for GentreeFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // No FUSE_AUTO_INVAL_DATA: it makes every read() refresh expired attributes,
        // and the images' attributes never stay cached (see `GentreeFs::attr_ttl`);
        // page caches are dropped on open instead (see `Opened`).
        super::request_capabilities(
            config,
            &[
                InitFlags::FUSE_PARALLEL_DIROPS,
                InitFlags::FUSE_CACHE_SYMLINKS,
                InitFlags::FUSE_MAX_PAGES,
            ],
        );
        if self.image_files && super::privileged() {
            let stacked = crate::layers::union::on_stacking_fs(&self.fs.images().env().conf_root);
            if let Some(pt) = Arc::get_mut(&mut self.passthrough)
                && pt.switch.negotiate(config, stacked)
            {
                self.fs.images().enable_files();
                tracing::info!("FUSE passthrough: finished images are kept as files");
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let owned = name.to_owned();
        if self
            .fs
            .needs_extra(ExtraOp::Lookup(name), parent.0)
            .is_some()
        {
            return self.with_extra(
                req.pid(),
                ExtraOp::Lookup(name),
                parent.0,
                move |fs, r| match r {
                    Ok(()) => reply_entry(reply, fs.ttl(), fs.lookup(parent.0, &owned)),
                    Err(e) => reply.error(Errno::from_i32(e)),
                },
            );
        }
        self.answer(self.fs.unresolved_entry(parent.0, name), move |fs| {
            reply_entry(reply, fs.ttl(), fs.lookup(parent.0, &owned));
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.answer(self.fs.unresolved(ino.0), move |fs| {
            reply_attr(reply, fs.ttl(), fs.getattr(ino.0));
        });
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
        let r = self.fs.setattr(ino.0, set, fh.map(|f| f.0));
        reply_attr(reply, self.fs.ttl(), r);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(t.as_os_str().as_bytes()),
            Err(e) => reply.error(Errno::from(e)),
        }
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
        let r = self.fs.mkdir(parent.0, name, mode, caller(req));
        reply_entry(reply, self.fs.ttl(), r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.fs.unlink_resolves(parent.0, name) {
            return reply_empty(reply, self.fs.unlink(parent.0, name));
        }
        // Off this thread: resolving the config may be slow. Should the thread not
        // start, the dropped reply answers EIO.
        let (fs, name) = (self.fs.clone(), name.to_owned());
        let spawned = std::thread::Builder::new()
            .name("rm-image".into())
            .spawn(move || reply_empty(reply, fs.unlink(parent.0, &name)));
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread to remove an image: {e}");
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.fs.symlink(parent.0, link_name, target, caller(req));
        reply_entry(reply, self.fs.ttl(), r);
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
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        reply_empty(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.fs.needs_extra(ExtraOp::Open, ino.0).is_some() {
            return self.with_extra(req.pid(), ExtraOp::Open, ino.0, move |fs, r| {
                match r
                    .map_err(io::Error::from_raw_os_error)
                    .and_then(|()| fs.open(ino.0, flags.0))
                {
                    Ok(Opened::Direct(fh)) => {
                        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
                    }
                    Ok(Opened::Cached(fh) | Opened::Reread(fh)) => {
                        reply.opened(FileHandle(fh), FopenFlags::empty())
                    }
                    Ok(Opened::Image(_)) => reply.error(Errno::from_i32(libc::EIO)),
                    Err(e) => reply.error(Errno::from(e)),
                }
            });
        }
        match self.fs.open(ino.0, flags.0) {
            Ok(Opened::Cached(fh)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(Opened::Direct(fh)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Ok(Opened::Reread(fh)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Ok(Opened::Image(name)) => {
                let images: &Arc<Images> = self.fs.images();
                let waiter = OpenWaiter {
                    fs: self.fs.clone(),
                    reply,
                    pid: req.pid(),
                    ino: ino.0,
                    name: name.clone(),
                    images: images.clone(),
                    handles: self.fs.handles.clone(),
                    passthrough: self.passthrough.clone(),
                };
                let opener = images.clone();
                let owned = name.clone();
                images.when_resolved(
                    &name,
                    Box::new(move || opener.open(&owned, Box::new(waiter))),
                );
            }
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.fs.read(fh.0, offset, size, |r| match r {
            Ok(d) => reply.data(d),
            Err(e) => reply.error(Errno::from(e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data) {
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
        reply.ok();
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
        self.passthrough.release(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(fh.0, datasync));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.with_extra(req.pid(), ExtraOp::Opendir, ino.0, move |fs, r| {
            match r
                .map_err(io::Error::from_raw_os_error)
                .and_then(|()| fs.opendir(ino.0))
            {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(Errno::from(e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.fs.readdir(fh.0) {
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

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let owned = name.to_owned();
        self.answer(self.fs.unresolved(ino.0), move |fs| {
            reply_xattr(reply, size, fs.getxattr(ino.0, &owned));
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.answer(self.fs.unresolved(ino.0), move |fs| {
            reply_xattr(reply, size, fs.listxattr(ino.0));
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions makes the kernel check modes; this only confirms existence.
        self.answer(self.fs.unresolved(ino.0), move |fs| {
            reply_empty(reply, fs.getattr(ino.0).map(drop));
        });
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
        match self.fs.create(parent.0, name, mode, flags, caller(req)) {
            Ok((a, fh)) => reply.created(
                &self.fs.ttl(),
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(Errno::from(e)),
        }
    }
}

/// Our defaults, then the user's options, each replacing ours of its kind.
fn mount_options(user: &[MountOption]) -> Vec<MountOption> {
    use std::mem::discriminant as d;
    let pair = |o: &MountOption| -> Vec<MountOption> {
        use MountOption::*;
        match o {
            Dev | NoDev => vec![Dev, NoDev],
            Suid | NoSuid => vec![Suid, NoSuid],
            RO | RW => vec![RO, RW],
            Exec | NoExec => vec![Exec, NoExec],
            Atime | NoAtime => vec![Atime, NoAtime],
            Sync | Async => vec![Sync, Async],
            other => vec![other.clone()],
        }
    };
    let mut v = vec![
        MountOption::FSName("gentree".into()),
        MountOption::Subtype("gentree".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    for o in user {
        let kinds = pair(o);
        v.retain(|m| !kinds.iter().any(|k| d(k) == d(m)));
        v.push(o.clone());
    }
    v
}

/// The source and the fstype the mount shows in mountinfo.
fn names(opts: &[MountOption]) -> (String, String) {
    let mut fsname = String::new();
    let mut subtype = String::new();
    for o in opts {
        match o {
            MountOption::FSName(n) => fsname = n.clone(),
            MountOption::Subtype(n) => subtype = format!("fuse.{n}"),
            _ => {}
        }
    }
    (fsname, subtype)
}

/// The device (`maj:min`) of the topmost FUSE mount of ours (source `fsname`, type
/// `fuse` or `fstype`) on `mountpoint` in our mount namespace, from
/// `/proc/self/mountinfo` (a `stat` would ask ourselves).
fn mount_dev(mountpoint: &Path, fsname: &str, fstype: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = super::mountinfo_path(mountpoint)?;
    let ours = |l: &&str| {
        let (head, tail) = l.split_once(" - ").unwrap_or((l, ""));
        let mut t = tail.split(' ');
        let (t_fstype, source) = (t.next().unwrap_or(""), t.next().unwrap_or(""));
        head.split(' ').nth(4) == Some(want.as_str())
            && (t_fstype == "fuse" || t_fstype == fstype)
            && source == fsname
    };
    text.lines()
        .rfind(ours)
        .and_then(|l| l.split(' ').nth(2).map(str::to_owned))
}

/// Readahead of the mount, KiB: one full request (`max_pages`, from the 1 MiB
/// `max_write`). The kernel offers FUSE only 128 KiB in INIT; with 1 MiB, each READ
/// carries a whole request and reads from the page cache run as fast as from a local
/// filesystem's (bench/mount.sh: 0.86x at 128 KiB). The cache still holds 4 KiB pages
/// (tracepoint `mm_filemap_add_to_page_cache`): FUSE gets no large folios here.
const READAHEAD_KIB: u32 = 1024;

/// Raises the readahead of our mount's bdi (`/sys/class/bdi/<maj:min>`); only root
/// may, so an unprivileged mount keeps the kernel's 128 KiB.
fn raise_readahead(dev: &str) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, READAHEAD_KIB.to_string()) {
        tracing::debug!("cannot raise the readahead ({path}): {e}");
    }
}

/// Why the gentree mount (its tree, [`session`]) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TreeMountError {
    #[error("cannot open the configs dir {configs} as a union")]
    Configs {
        configs: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount on {mountpoint}")]
    Mount {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How to mount the gentree tree.
#[derive(Debug, Clone)]
pub struct TreeMountSpec {
    pub mountpoint: PathBuf,
    pub allow_other: bool,
    pub allow_root: bool,
    /// `-o` mount options; each replaces our default of its kind (`fsname=`,
    /// `dev` for `nodev`, ...).
    pub options: super::FuseOptions,
    pub threads: Option<usize>,
    /// Keep finished images as files under `<conf_root>/images` and serve them by
    /// FUSE passthrough, when the daemon is privileged.
    pub image_files: bool,
}

/// Mounts the tree and starts the build manager's interrupt watcher; serve with
/// `session.run()`.
pub fn session(
    fs: GentreeFs,
    spec: &TreeMountSpec,
) -> Result<Mounted<GentreeFuse>, TreeMountError> {
    let fs = Arc::new(fs);
    let mut cfg = Config::default();
    cfg.mount_options = mount_options(spec.options.options());
    let (fsname, subtype) = names(&cfg.mount_options);
    cfg.acl = if spec.allow_other {
        SessionACL::All
    } else if spec.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.n_threads = Some(spec.threads.unwrap_or(cpus).max(1));
    cfg.clone_fd = true;
    let mount_err = |source| TreeMountError::Mount {
        mountpoint: spec.mountpoint.clone(),
        source,
    };
    let session = fuser::Session::new(
        GentreeFuse {
            fs: fs.clone(),
            image_files: spec.image_files,
            passthrough: Arc::new(Passthrough::new("image data")),
        },
        &spec.mountpoint,
        &cfg,
    )
    .map_err(mount_err)?;
    // A finished build or a new image changes the size and bytes: drop the kernel's
    // cached attributes and pages. The hook runs on a build job's thread or one of
    // its own, never in a handler or under our locks.
    let notifier = session.notifier();
    let weak = Arc::downgrade(&fs);
    fs.images().set_ready_hook(Box::new(move |name| {
        if let Some(ino) = weak.upgrade().and_then(|fs| fs.tar_ino(name)) {
            let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
        }
    }));
    // The build helpers' mount namespaces hold copies of this mount, so an unmount in
    // ours does not end the session while a build runs: watch for it and stop the
    // builds, which releases the copies (and then the session ends).
    let dev = mount_dev(&spec.mountpoint, &fsname, &subtype);
    if let Some(dev) = &dev {
        raise_readahead(dev);
    }
    let mountpoint = spec.mountpoint.clone();
    let images = Arc::downgrade(fs.images());
    std::thread::Builder::new()
        .name("interrupts".into())
        .spawn(move || {
            while let Some(images) = images.upgrade() {
                images.check_interrupts();
                if images.any_building()
                    && dev.is_some()
                    && mount_dev(&mountpoint, &fsname, &subtype) != dev
                {
                    tracing::info!("{} was unmounted", mountpoint.display());
                    images.shutdown(Duration::from_secs(30));
                }
                drop(images);
                std::thread::sleep(INTERRUPT_POLL);
            }
        })
        .map_err(mount_err)?;
    // Load the indexes of finished images now, so a first open does not pay for it
    // (a 30k-entry index takes 15-30 ms to load).
    let images = Arc::downgrade(fs.images());
    std::thread::Builder::new()
        .name("preload".into())
        .spawn(move || {
            let Some(names) = images.upgrade().and_then(|i| i.names().ok()) else {
                return;
            };
            for name in names {
                match images.upgrade() {
                    Some(i) => drop(i.status(&name)),
                    None => return,
                }
            }
        })
        .map_err(mount_err)?;
    Ok(Mounted::new(session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use MountOption::*;

    #[test]
    fn user_options_replace_our_defaults_of_their_kind() {
        let ours = mount_options(&[]);
        assert_eq!(
            ours,
            [
                FSName("gentree".into()),
                Subtype("gentree".into()),
                DefaultPermissions,
                NoDev,
                NoSuid
            ]
        );
        assert_eq!(names(&ours), ("gentree".into(), "fuse.gentree".into()));
        let o = mount_options(&[Dev, RO, FSName("mine".into()), NoExec, Exec]);
        assert_eq!(
            o,
            [
                Subtype("gentree".into()),
                DefaultPermissions,
                NoSuid,
                Dev,
                RO,
                FSName("mine".into()),
                Exec
            ]
        );
        assert_eq!(names(&o), ("mine".into(), "fuse.gentree".into()));
        // Repeating an option keeps one copy.
        assert_eq!(mount_options(&[NoDev, NoDev]).len(), ours.len());
    }
}
