//! FUSE adapters (the only module that imports `fuser`).
//!
//! Each `Filesystem` method decodes its request, calls one method of a core type
//! ([`crate::layers::union::Union`], [`crate::mount::tree::GentreeFs`]), and writes one
//! reply. What only the kernel needs (its inode references, passthrough backing ids)
//! is kept here; the passthrough bookkeeping both adapters share is in `passthrough`.
pub mod mount;
mod passthrough;
pub mod union;

// Conversions and replies both adapters (`union`, `mount`) share.

use std::io;

use fuser::{Errno, FileAttr, FileType, INodeNo, ReplyEmpty, ReplyXattr, Request, TimeOrNow};

use crate::layers::ownership::FileKind;
use crate::layers::union::{Attr, Caller, SetTime};

pub(crate) fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Pipe => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::Block { .. } => FileType::BlockDevice,
        FileKind::Char { .. } => FileType::CharDevice,
    }
}

pub(crate) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: a.blksize,
        flags: 0,
    }
}

pub(crate) fn reply_empty(reply: ReplyEmpty, r: io::Result<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(Errno::from(e)),
    }
}

pub(crate) fn reply_xattr(reply: ReplyXattr, size: u32, r: io::Result<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(Errno::from(e)),
    }
}

pub(crate) fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

pub(crate) fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

/// A mounted session (not yet serving) and its unmounter.
#[derive(Debug)]
pub struct Mounted<FS: fuser::Filesystem> {
    pub session: fuser::Session<FS>,
    pub unmounter: Unmounter,
}

impl<FS: fuser::Filesystem> Mounted<FS> {
    fn new(mut session: fuser::Session<FS>) -> Self {
        let unmounter = Unmounter(session.unmount_callable());
        Mounted { session, unmounter }
    }
}

/// Unmounts a mounted session from another thread, which ends its loop.
#[derive(Debug)]
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> io::Result<()> {
        self.0.unmount()
    }
}

/// The mount(8)/FUSE options given with `-o`, in the order given.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FuseOptions(Vec<fuser::MountOption>);

impl FuseOptions {
    /// Adds the option `word` names (`nodev`, `fsname=NAME`, ...); false when it names
    /// none.
    pub fn add(&mut self, word: &str) -> bool {
        use fuser::MountOption as O;
        let o = match word {
            "ro" => O::RO,
            "rw" => O::RW,
            "dev" => O::Dev,
            "nodev" => O::NoDev,
            "suid" => O::Suid,
            "nosuid" => O::NoSuid,
            "exec" => O::Exec,
            "noexec" => O::NoExec,
            "atime" => O::Atime,
            "noatime" => O::NoAtime,
            "sync" => O::Sync,
            "async" => O::Async,
            "dirsync" => O::DirSync,
            "auto_unmount" => O::AutoUnmount,
            "default_permissions" => O::DefaultPermissions,
            other => match other.split_once('=') {
                Some(("fsname", v)) if !v.is_empty() => O::FSName(v.to_owned()),
                Some(("subtype", v)) if !v.is_empty() => O::Subtype(v.to_owned()),
                _ => return false,
            },
        };
        self.0.push(o);
        true
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn auto_unmount(&self) -> bool {
        self.0.contains(&fuser::MountOption::AutoUnmount)
    }

    pub(crate) fn options(&self) -> &[fuser::MountOption] {
        &self.0
    }
}

/// Asks the kernel at INIT for each of `flags` that it offers, and for 1 MiB writes
/// and readahead. One flag at a time: `add_capabilities` is all-or-nothing. Public for
/// `examples/fuse_floor.rs`, which must ask for what the union asks for.
pub fn request_capabilities(config: &mut fuser::KernelConfig, flags: &[fuser::InitFlags]) {
    for &flag in flags {
        let _ = config.add_capabilities(flag);
    }
    let _ = config.set_max_write(1 << 20);
    let _ = config.set_max_readahead(1 << 20);
}

/// `path` as `/proc/self/mountinfo` spells a mount point: space, tab, newline and
/// backslash octal-escaped. `None` for a path that is not UTF-8.
pub fn mountinfo_path(path: &std::path::Path) -> Option<String> {
    Some(
        path.to_str()?
            .replace('\\', "\\134")
            .replace(' ', "\\040")
            .replace('\t', "\\011")
            .replace('\n', "\\012"),
    )
}

/// Root of the initial user namespace: the only daemon that may register backing files.
pub(crate) fn privileged() -> bool {
    nix::unistd::geteuid().is_root() && crate::layers::union::in_initial_userns()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_words_name_their_fuse_options() {
        use fuser::MountOption::*;
        let mut o = FuseOptions::default();
        for w in
            "ro nodev nosuid noexec noatime fsname=mine subtype=tree default_permissions".split(' ')
        {
            assert!(o.add(w), "{w}");
        }
        assert_eq!(
            o.options(),
            [
                RO,
                NoDev,
                NoSuid,
                NoExec,
                NoAtime,
                FSName("mine".into()),
                Subtype("tree".into()),
                DefaultPermissions,
            ]
        );
        assert!(!o.auto_unmount());
        for bad in ["bogus", "fsname=", "subtype", "kernel_cache", "allow_other"] {
            assert!(!o.add(bad), "{bad}");
        }
        assert!(o.add("auto_unmount") && o.auto_unmount());
    }
}
