//! The extraction side of a seed import: creates entries below one root directory
//! without ever following a symlink and without writing outside that root.
//!
//! Invariants:
//! - Every entry name is cleaned by [`clean_name`] first: absolute names and `..`
//!   components are refused, `.` components and empty components dropped.
//! - A parent directory is opened from the root fd with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, falling back to a walk of
//!   `openat(O_NOFOLLOW | O_DIRECTORY)` per component (which also creates parents the
//!   archive left out, and names the component at fault). So a symlink created by an
//!   earlier entry (`a -> /etc`) can never redirect a later one (`a/passwd`).
//! - The final component is created with `O_EXCL`/`mkdirat`/`symlinkat`/`linkat`; an
//!   existing non-directory is unlinked first, never opened.
//! - Metadata order per entry: data, owner, xattrs, mode, times: `chown` clears
//!   setuid/setgid and file capabilities, and writing data clears capabilities.
//!   Directories get owner, mode and times after everything else, so a read-only or
//!   old-mtime directory can still be filled first.
//!
//! Ownership is never set for real: the archive's owners are recorded in
//! `user.containers.override_stat` (`uid:gid:mode`), every entry is owned on disk by
//! the importing user (or, as root, by the id range builds run as), and the on-disk
//! mode keeps the permission bits minus setuid/setgid/sticky plus owner read/write
//! (and search for directories) so the importing user can always read and delete the
//! seed. No device node is created, as root or not: devices become empty regular
//! files whose override records `char-MAJ-MIN`/`block-MAJ-MIN` with the owner and
//! mode, and the union and tar code present them as devices. Likewise fifos (type
//! `pipe`), because Linux allows `user.*` xattrs only on regular files and
//! directories. Symlinks cannot carry them either: a user's import leaves a
//! symlink's (unimportant) owner unrecorded, root's gives it the archive's owner.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat};
use xattr::FileExt;

use super::SeedError;
use super::interrupt::Interrupt;
use super::progress::Progress;
use crate::layers::ownership::{FileKind, OVERRIDE_XATTR, OverrideStat};

/// What an entry to create is.
///
/// The cases of a tar entry ([`crate::layers::tar::EntryKind`]: hard links, no
/// sockets), but with the link targets inside, as owned paths: the tar layout's kind
/// describes entries it writes and keeps targets beside it, while every entry made
/// here needs its target to be created at all. Not a [`FileKind`] either: a hard
/// link is no file type, and a fifo or device becomes a plain file recording its
/// [`Kind::recorded_type`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A symlink with this target, kept verbatim (absolute targets are fine: they are
    /// never followed here).
    Symlink(PathBuf),
    /// A hard link to an earlier entry (a cleaned, root-relative name).
    HardLink(PathBuf),
    Fifo,
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
}

impl Kind {
    /// The file type that the plain file standing in for a fifo or device records in
    /// the override xattr; `None` for entries created as what they are.
    pub fn recorded_type(&self) -> Option<FileKind> {
        match *self {
            Kind::Fifo => Some(FileKind::Pipe),
            Kind::Char { major, minor } => Some(FileKind::Char { major, minor }),
            Kind::Block { major, minor } => Some(FileKind::Block { major, minor }),
            Kind::File | Kind::Dir | Kind::Symlink(_) | Kind::HardLink(_) => None,
        }
    }
}

/// Owner, permissions, time and extended attributes of an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid/setgid/sticky (`0o7777` mask).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, u32),
    /// Extended attributes to restore (`security.capability`, `user.*`, ...).
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// How owners are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// Record them in the override xattr (ordinary user).
    Record,
    /// Record them in the override xattr, and own every entry on disk by this host
    /// uid and gid: root's import, owned by the id range its builds run as, so no
    /// device node, setuid or setgid file of the archive reaches the host. Symlinks,
    /// which cannot carry the xattr, get the archive's owner for real.
    RecordAs { uid: u32, gid: u32 },
}

/// Counts for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub bytes: u64,
    /// Device nodes and fifos recorded as plain files with an override type.
    pub specials_recorded: u64,
    /// Entries not extracted (sockets, unknown tar types), with a warning each.
    pub skipped: u64,
    /// xattrs that could not be set (e.g. `security.*` without privilege).
    pub xattrs_dropped: u64,
}

/// Cleans an archive member name into a root-relative path.
///
/// `./usr/bin` and `usr//bin/` give `usr/bin`; `./` and `.` give the empty path (the
/// root itself). Absolute names and `..` components are refused: an archive meant to
/// be unpacked in place has no business naming either.
pub fn clean_name(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute member name");
    }
    let mut out = PathBuf::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("`..` component in member name"),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// A directory whose owner, mode and times are applied at the end.
#[derive(Debug)]
struct PendingDir {
    rel: PathBuf,
    /// `None` once a later member replaced the directory.
    meta: Option<Meta>,
}

/// Writes entries below one root directory. See the module docs for the rules.
#[derive(Debug)]
pub struct Sink<'a> {
    root: OwnedFd,
    intr: &'a Interrupt,
    progress: &'a mut Progress,
    owners: Owners,
    /// Non-directories created so far: the only valid hard-link targets.
    created: HashSet<PathBuf>,
    /// Directories by name, in creation order, applied at [`Sink::finish`].
    dirs: Vec<PendingDir>,
    dir_index: HashMap<PathBuf, usize>,
    /// xattr names already warned about.
    warned_xattrs: HashSet<OsString>,
    pub stats: Stats,
    buf: Vec<u8>,
}

/// Where metadata is applied: an open fd (files, dirs) or a name in a directory
/// (symlinks, fifos, device nodes, which are not opened).
enum Target<'a> {
    Fd(&'a File),
    At(BorrowedFd<'a>, &'a OsStr),
}

impl<'a> Sink<'a> {
    /// A sink writing below the existing, empty directory `root`. It stops with
    /// [`SeedError::Interrupted`] once `intr` fires, and reports to `progress`.
    pub fn new(
        root: &Path,
        owners: Owners,
        intr: &'a Interrupt,
        progress: &'a mut Progress,
    ) -> Result<Sink<'a>, SeedError> {
        let fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SeedError::Install {
            path: root.to_path_buf(),
            source: io::Error::from(e),
        })?;
        let mut sink = Sink {
            root: fd,
            intr,
            progress,
            owners,
            created: HashSet::new(),
            dirs: Vec::new(),
            dir_index: HashMap::new(),
            warned_xattrs: HashSet::new(),
            stats: Stats::default(),
            buf: vec![0; 256 * 1024],
        };
        // The root's own metadata, unless the archive has a `./` entry.
        sink.pend_dir(PathBuf::new(), default_dir_meta());
        Ok(sink)
    }

    fn pend_dir(&mut self, rel: PathBuf, meta: Meta) {
        match self.dir_index.get(&rel) {
            Some(&i) => self.dirs[i].meta = Some(meta),
            None => {
                self.dir_index.insert(rel.clone(), self.dirs.len());
                self.dirs.push(PendingDir {
                    rel,
                    meta: Some(meta),
                });
            }
        }
    }

    /// Adds one entry. `name` is the member name as shown in errors; `data` is the
    /// content of a regular file.
    pub fn add(
        &mut self,
        rel: &Path,
        name: &str,
        kind: Kind,
        meta: Meta,
        data: Option<&mut dyn Read>,
    ) -> Result<(), SeedError> {
        if self.intr.pending() {
            return Err(SeedError::Interrupted);
        }
        self.add_inner(rel, name, kind, meta, data)?;
        self.stats.entries += 1;
        self.progress.tick(&self.stats);
        Ok(())
    }

    fn add_inner(
        &mut self,
        rel: &Path,
        name: &str,
        kind: Kind,
        meta: Meta,
        data: Option<&mut dyn Read>,
    ) -> Result<(), SeedError> {
        let entry_err = |op: &'static str| {
            move |e: io::Error| SeedError::Entry {
                entry: name.to_string(),
                op,
                source: e,
            }
        };
        let Some(file_name) = rel.file_name() else {
            // The root itself (`./`).
            if kind != Kind::Dir {
                return Err(SeedError::Hostile {
                    entry: name.to_string(),
                    reason: "the archive root is not a directory".into(),
                });
            }
            self.pend_dir(PathBuf::new(), meta);
            return Ok(());
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let parent = self.open_dir(parent_rel, name)?;
        let dir = parent.as_fd();
        self.clear_place(dir, rel, file_name, &kind, name)?;
        self.created.remove(rel);
        match kind {
            Kind::Dir => {
                if !matches!(stat_kind(dir, file_name), Some(SFlag::S_IFDIR)) {
                    mkdirat(dir, file_name, Mode::from_bits_truncate(0o700))
                        .map_err(io::Error::from)
                        .map_err(entry_err("mkdir"))?;
                }
                self.pend_dir(rel.to_path_buf(), meta);
                return Ok(());
            }
            Kind::File => {
                let file = create_file(dir, file_name).map_err(entry_err("create"))?;
                if let Some(data) = data {
                    self.copy_data(data, &file).map_err(|e| match e {
                        CopyError::Interrupted => SeedError::Interrupted,
                        CopyError::Read(e) => SeedError::Archive {
                            after: name.to_string(),
                            source: e,
                        },
                        CopyError::Write(e) => SeedError::Entry {
                            entry: name.to_string(),
                            op: "write",
                            source: e,
                        },
                    })?;
                }
                self.apply(Target::Fd(&file), &meta, None, name)?;
            }
            Kind::Symlink(ref target) => {
                symlinkat(target.as_path(), dir, file_name)
                    .map_err(io::Error::from)
                    .map_err(entry_err("symlink"))?;
                self.apply(Target::At(dir, file_name), &meta, Some(&kind), name)?;
            }
            Kind::HardLink(ref target) => {
                if !self.created.contains(target) {
                    return Err(SeedError::Hostile {
                        entry: name.to_string(),
                        reason: format!(
                            "hard link to {:?}, which is not an earlier file in the archive",
                            target
                        ),
                    });
                }
                let tparent = self.open_dir(target.parent().unwrap_or(Path::new("")), name)?;
                let tname = target.file_name().unwrap_or_default();
                linkat(tparent.as_fd(), tname, dir, file_name, AtFlags::empty())
                    .map_err(io::Error::from)
                    .map_err(entry_err("link"))?;
            }
            Kind::Fifo | Kind::Char { .. } | Kind::Block { .. } => {
                // Only files and directories take user xattrs: a plain file recording
                // the fifo or device, never a node on the host.
                let file = create_file(dir, file_name).map_err(entry_err("create"))?;
                self.stats.specials_recorded += 1;
                self.apply(Target::Fd(&file), &meta, Some(&kind), name)?;
            }
        }
        self.created.insert(rel.to_path_buf());
        Ok(())
    }

    /// Applies directory metadata (deepest first, though order does not matter for
    /// times: setting a child's attributes does not touch its parent's mtime).
    pub fn finish(&mut self) -> Result<(), SeedError> {
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let Some(meta) = &d.meta else { continue };
            let name = if d.rel.as_os_str().is_empty() {
                "./".to_string()
            } else {
                d.rel.to_string_lossy().into_owned()
            };
            let fd = self.open_dir(&d.rel, &name)?;
            let file = File::from(fd);
            self.apply(Target::Fd(&file), meta, Some(&Kind::Dir), &name)?;
        }
        Ok(())
    }

    /// Makes room for a new entry at `name` in `dir`: keeps an existing directory when
    /// the new entry is one too, otherwise removes what is there (an empty directory
    /// or a non-directory; symlinks are unlinked, never followed).
    fn clear_place(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &Path,
        file_name: &OsStr,
        kind: &Kind,
        name: &str,
    ) -> Result<(), SeedError> {
        let Some(existing) = stat_kind(dir, file_name) else {
            return Ok(());
        };
        let is_dir = existing == SFlag::S_IFDIR;
        if is_dir && *kind == Kind::Dir {
            return Ok(());
        }
        let flag = if is_dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(dir, file_name, flag).map_err(|e| SeedError::Entry {
            entry: name.to_string(),
            op: if is_dir {
                "replace the directory (it is not empty)"
            } else {
                "replace the earlier entry"
            },
            source: io::Error::from(e),
        })?;
        if is_dir {
            if let Some(i) = self.dir_index.remove(rel) {
                self.dirs[i].meta = None;
            }
        }
        Ok(())
    }

    /// Opens the directory `rel` below the root, never following a symlink. Missing
    /// directories are created (archives may leave parents out).
    fn open_dir(&mut self, rel: &Path, name: &str) -> Result<OwnedFd, SeedError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let path: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new().flags(flags).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        if let Ok(fd) = openat2(self.root.as_fd(), path, how) {
            return Ok(fd);
        }
        // Slow path: which component is missing or at fault?
        let mut cur: Option<OwnedFd> = None;
        let mut sofar = PathBuf::new();
        let mut made = Vec::new();
        for comp in rel.components() {
            let Component::Normal(c) = comp else {
                return Err(SeedError::Hostile {
                    entry: name.to_string(),
                    reason: "unexpected path component".into(),
                });
            };
            sofar.push(c);
            let base = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let fd = match openat(base, c, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    mkdirat(base, c, Mode::from_bits_truncate(0o700)).map_err(|e| {
                        SeedError::Entry {
                            entry: name.to_string(),
                            op: "create parent directory",
                            source: io::Error::from(e),
                        }
                    })?;
                    made.push(sofar.clone());
                    openat(base, c, flags, Mode::empty()).map_err(|e| SeedError::Entry {
                        entry: name.to_string(),
                        op: "open parent directory",
                        source: io::Error::from(e),
                    })?
                }
                Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                    let reason = if stat_kind(base, c) == Some(SFlag::S_IFLNK) {
                        format!(
                            "{} is a symlink, and extraction never goes through symlinks",
                            sofar.display()
                        )
                    } else {
                        format!("{} is not a directory ({e})", sofar.display())
                    };
                    return Err(SeedError::Hostile {
                        entry: name.to_string(),
                        reason,
                    });
                }
                Err(e) => {
                    return Err(SeedError::Entry {
                        entry: name.to_string(),
                        op: "open parent directory",
                        source: io::Error::from(e),
                    });
                }
            };
            cur = Some(fd);
        }
        for d in made {
            self.pend_dir(d, default_dir_meta());
        }
        match cur {
            Some(fd) => Ok(fd),
            None => self.root.try_clone().map_err(|e| SeedError::Entry {
                entry: name.to_string(),
                op: "open root",
                source: e,
            }),
        }
    }

    fn copy_data(&mut self, data: &mut dyn Read, mut file: &File) -> Result<(), CopyError> {
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            file.write_all(&self.buf[..n]).map_err(CopyError::Write)?;
            self.stats.bytes += n as u64;
            if self.intr.pending() {
                return Err(CopyError::Interrupted);
            }
            self.progress.tick(&self.stats);
        }
    }

    /// Owner, xattrs, mode and times, in that order (see the module docs).
    /// `kind` is the archive's type when it matters for the override record.
    fn apply(
        &mut self,
        target: Target<'_>,
        meta: &Meta,
        kind: Option<&Kind>,
        name: &str,
    ) -> Result<(), SeedError> {
        let err = |op: &'static str| {
            move |e: io::Error| SeedError::Entry {
                entry: name.to_string(),
                op,
                source: e,
            }
        };
        let is_symlink = matches!(kind, Some(Kind::Symlink(_)));
        let is_dir = matches!(kind, Some(Kind::Dir));
        // A device or fifo recorded as a plain file carries its type in the override.
        let recorded_type = match target {
            Target::Fd(_) => kind.and_then(Kind::recorded_type),
            Target::At(..) => None,
        };
        let mode = meta.mode & 0o7777;
        let disk_mode = if is_dir {
            (mode & 0o777) | 0o700
        } else {
            (mode & 0o777) | 0o600
        };
        let uid = Some(Uid::from_raw(meta.uid));
        let gid = Some(Gid::from_raw(meta.gid));

        // Owner.
        // A symlink cannot carry the record, and its owner grants nothing: root gives
        // it the archive's owner for real.
        let owner = match self.owners {
            Owners::RecordAs { .. } if is_symlink => Some((uid, gid)),
            Owners::RecordAs { uid, gid } => {
                Some((Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))))
            }
            Owners::Record => None,
        };
        if let Some((uid, gid)) = owner {
            match target {
                Target::Fd(f) => fchown(f, uid, gid),
                Target::At(d, n) => fchownat(d, n, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW),
            }
            .map_err(io::Error::from)
            .map_err(err("chown"))?;
        }
        // Symlinks (the only entries made by name) take no xattrs or mode; just the time.
        let f = match target {
            Target::At(d, n) => {
                let t = timespec(meta.mtime);
                return utimensat(d, n, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(io::Error::from)
                    .map_err(err("set times"));
            }
            Target::Fd(f) => f,
        };

        // Extended attributes, then the recorded ownership.
        for (k, v) in &meta.xattrs {
            if k.as_bytes() == OVERRIDE_XATTR.as_bytes() {
                continue; // the header's owner is authoritative
            }
            if let Err(e) = f.set_xattr(k, v) {
                self.stats.xattrs_dropped += 1;
                if self.warned_xattrs.insert(k.clone()) {
                    tracing::warn!(
                        "cannot set xattr {} (first on {name}): {e}; further failures for it are counted silently",
                        k.to_string_lossy()
                    );
                }
            }
        }
        let ov = OverrideStat {
            uid: meta.uid,
            gid: meta.gid,
            mode,
            kind: recorded_type,
        };
        f.set_xattr(OVERRIDE_XATTR, ov.encode().as_bytes())
            .map_err(|e| SeedError::Entry {
                entry: name.to_string(),
                op: "record ownership in the user.containers.override_stat xattr \
                     (the seed filesystem needs user xattrs)",
                source: e,
            })?;

        // Mode after owner (chown clears setuid/setgid), then times.
        let m = Mode::from_bits_truncate(disk_mode as libc::mode_t);
        let t = timespec(meta.mtime);
        fchmod(f, m)
            .map_err(io::Error::from)
            .map_err(err("chmod"))?;
        futimens(f, &t, &t)
            .map_err(io::Error::from)
            .map_err(err("set times"))
    }
}

enum CopyError {
    Interrupted,
    Read(io::Error),
    Write(io::Error),
}

/// Metadata of a directory the archive does not describe (the root, left-out parents).
fn default_dir_meta() -> Meta {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Meta {
        uid: 0,
        gid: 0,
        mode: 0o755,
        mtime: (now.as_secs() as i64, now.subsec_nanos()),
        xattrs: Vec::new(),
    }
}

fn timespec((s, ns): (i64, u32)) -> TimeSpec {
    TimeSpec::new(s, ns as _)
}

/// The file type at `name` in `dir` (not following symlinks), or `None` if absent.
fn stat_kind(dir: BorrowedFd<'_>, name: &OsStr) -> Option<SFlag> {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT))
}

fn create_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(io::Error::from)?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_name_table() {
        let ok: &[(&str, &str)] = &[
            ("./", ""),
            (".", ""),
            ("", ""),
            ("./usr/bin/", "usr/bin"),
            ("usr//bin/./ls", "usr/bin/ls"),
            ("a.b/..c/...", "a.b/..c/..."),
        ];
        for (raw, want) in ok {
            assert_eq!(
                clean_name(raw.as_bytes()).as_deref(),
                Ok(Path::new(want)),
                "{raw}"
            );
        }
        for bad in ["/etc/passwd", "//x", "../x", "a/../../x", "./a/..", ".."] {
            assert!(clean_name(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
