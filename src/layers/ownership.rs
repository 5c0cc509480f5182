//! In-image ownership recorded in metadata: the `user.containers.override_stat` xattr.
//!
//! An ordinary user cannot chown files on the host to other ids, and files owned by
//! subordinate ids could no longer be read or removed by that user. So, when the real
//! owner cannot (or should not) be set on disk, the owner, group, permission bits and
//! file type the image *should* have are recorded in this xattr, in the format
//! fuse-overlayfs and containers/storage use:
//!
//! ```text
//! uid:gid:mode[:type]      e.g. 0:0:4755  1234:2345:0640:file  0:0:0620:char-4-1
//! ```
//!
//! `mode` is octal permission bits including setuid/setgid/sticky (no file-type bits);
//! `type` is one of `file`, `dir`, `symlink`, `pipe`, `socket`, `block-MAJ-MIN`,
//! `char-MAJ-MIN`. A recorded type lets an ordinary user's layer hold device nodes
//! as plain files. Every reader of layers (union, tar) presents the recorded values in
//! place of the on-disk ones.

use std::fmt;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// The xattr holding the recorded ownership.
pub const OVERRIDE_XATTR: &str = "user.containers.override_stat";

/// File types as the override xattr names them: what an inode is (the `S_IFMT` of
/// `lstat`), on disk or as recorded.
///
/// Archives have their own kinds: [`crate::layers::tar::EntryKind`] (tar headers,
/// which have hard links, a name rather than a file type, and no sockets; it
/// converts from this one with `try_from`) and the seed import's `sink::Kind` (the
/// same cases with the link targets inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Pipe,
    Socket,
    Block { major: u32, minor: u32 },
    Char { major: u32, minor: u32 },
}

impl FileKind {
    /// The kind of an `lstat` result.
    pub fn of(meta: &Metadata) -> FileKind {
        FileKind::of_type(meta.file_type(), meta.rdev())
    }

    /// The kind of a file type, with `dev` as the device number of devices (a
    /// directory entry's `d_type` has none: pass 0).
    pub fn of_type(ft: std::fs::FileType, dev: u64) -> FileKind {
        if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_fifo() {
            FileKind::Pipe
        } else if ft.is_socket() {
            FileKind::Socket
        } else if ft.is_block_device() {
            FileKind::Block {
                major: libc::major(dev),
                minor: libc::minor(dev),
            }
        } else if ft.is_char_device() {
            FileKind::Char {
                major: libc::major(dev),
                minor: libc::minor(dev),
            }
        } else {
            FileKind::File
        }
    }

    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Pipe => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::Block { .. } => libc::S_IFBLK,
            FileKind::Char { .. } => libc::S_IFCHR,
        }
    }

    /// The device number for block and character devices, else 0.
    pub fn rdev(self) -> u64 {
        match self {
            FileKind::Block { major, minor } | FileKind::Char { major, minor } => {
                libc::makedev(major, minor)
            }
            _ => 0,
        }
    }

    fn parse(s: &str) -> Option<FileKind> {
        Some(match s {
            "file" => FileKind::File,
            "dir" => FileKind::Dir,
            "symlink" => FileKind::Symlink,
            "pipe" => FileKind::Pipe,
            "socket" => FileKind::Socket,
            _ => {
                let (kind, rest) = s.split_once('-')?;
                let (ma, mi) = rest.split_once('-')?;
                let (major, minor) = (ma.parse().ok()?, mi.parse().ok()?);
                match kind {
                    "block" => FileKind::Block { major, minor },
                    "char" => FileKind::Char { major, minor },
                    _ => return None,
                }
            }
        })
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::File => f.write_str("file"),
            FileKind::Dir => f.write_str("dir"),
            FileKind::Symlink => f.write_str("symlink"),
            FileKind::Pipe => f.write_str("pipe"),
            FileKind::Socket => f.write_str("socket"),
            FileKind::Block { major, minor } => write!(f, "block-{major}-{minor}"),
            FileKind::Char { major, minor } => write!(f, "char-{major}-{minor}"),
        }
    }
}

/// Recorded ownership of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    /// The file type the image should have, when it differs from (or is recorded
    /// beside) the on-disk type.
    pub kind: Option<FileKind>,
}

/// A malformed override value, kept verbatim for the error message.
#[derive(Debug, thiserror::Error)]
#[error("malformed {OVERRIDE_XATTR} value {value:?} (want uid:gid:mode[:type])")]
pub struct ParseError {
    pub value: String,
}

impl OverrideStat {
    /// Parses `uid:gid:mode[:type]`.
    pub fn parse(value: &[u8]) -> Result<OverrideStat, ParseError> {
        let err = || ParseError {
            value: String::from_utf8_lossy(value).into_owned(),
        };
        let s = std::str::from_utf8(value).map_err(|_| err())?;
        let s = s.trim_end_matches('\0');
        let mut parts = s.splitn(4, ':');
        let uid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
        let gid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
        let mode = parts
            .next()
            .and_then(|p| u32::from_str_radix(p, 8).ok())
            .filter(|m| m & !0o7777 == 0)
            .ok_or_else(err)?;
        let kind = match parts.next() {
            None => None,
            Some(t) => Some(FileKind::parse(t).ok_or_else(err)?),
        };
        Ok(OverrideStat {
            uid,
            gid,
            mode,
            kind,
        })
    }

    /// The value as stored in the xattr.
    pub fn encode(&self) -> String {
        match self.kind {
            Some(k) => format!("{}:{}:{:04o}:{k}", self.uid, self.gid, self.mode),
            None => format!("{}:{}:{:04o}", self.uid, self.gid, self.mode),
        }
    }

    /// Reads the override of `path` (not following symlinks). `Ok(None)` when absent
    /// or when the filesystem has no user xattrs.
    pub fn read(path: &Path) -> io::Result<Option<OverrideStat>> {
        match xattr::get(path, OVERRIDE_XATTR) {
            Ok(Some(v)) => OverrideStat::parse(&v)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Ok(None) => Ok(None),
            Err(e) if is_unsupported(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records this override on `path` (not following symlinks).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        xattr::set(path, OVERRIDE_XATTR, self.encode().as_bytes())
    }
}

/// The xattr on the root of a layer (or seed) whose ownership is recorded: the host
/// uid and gid that files of the namespace's root have on disk (`uid:gid`).
///
/// Symlinks, FIFOs and sockets cannot carry user xattrs, so they have no ownership
/// record: on disk they belong to the host ids of whoever made them, the namespace's
/// root. Readers outside that namespace ([`HostOwner::image_ids`]) present those
/// ids as 0, so no host id ever reaches an image. Inside a build's namespace the
/// kernel's id map already shows them as 0.
pub const HOST_OWNER_XATTR: &str = "user.gentree.host_owner";

/// The host ids of a tree's namespace root ([`HOST_OWNER_XATTR`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOwner {
    pub uid: u32,
    pub gid: u32,
}

impl HostOwner {
    /// Reads the marker of the tree rooted at `root`, if any.
    pub fn read(root: &Path) -> io::Result<Option<HostOwner>> {
        let v = match xattr::get(root, HOST_OWNER_XATTR) {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(None),
            Err(e) if is_unsupported(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "malformed {HOST_OWNER_XATTR} value {:?} (want uid:gid)",
                    String::from_utf8_lossy(&v)
                ),
            )
        };
        let s = std::str::from_utf8(&v).map_err(|_| bad())?;
        let (u, g) = s.trim().split_once(':').ok_or_else(bad)?;
        Ok(Some(HostOwner {
            uid: u.parse().map_err(|_| bad())?,
            gid: g.parse().map_err(|_| bad())?,
        }))
    }

    /// Marks the tree rooted at `root`.
    pub fn write(&self, root: &Path) -> io::Result<()> {
        xattr::set(
            root,
            HOST_OWNER_XATTR,
            format!("{}:{}", self.uid, self.gid).as_bytes(),
        )
    }

    /// The in-image ids of an entry without an ownership record owned on disk by
    /// `uid`/`gid`.
    pub fn image_ids(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            if uid == self.uid { 0 } else { uid },
            if gid == self.gid { 0 } else { gid },
        )
    }
}

/// True for the errors that mean "this filesystem or file cannot carry user xattrs".
/// Symlinks cannot carry `user.*` xattrs on Linux (EPERM).
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::ENODATA)
    )
}

/// Ownership and type as the image presents them: the on-disk `lstat` values with
/// any recorded override applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o7777` mask).
    pub perm: u32,
    pub kind: FileKind,
}

impl Effective {
    /// Combines on-disk metadata with an optional override.
    pub fn new(meta: &Metadata, ov: Option<&OverrideStat>) -> Effective {
        let disk_kind = FileKind::of(meta);
        match ov {
            Some(o) => Effective {
                uid: o.uid,
                gid: o.gid,
                perm: o.mode & 0o7777,
                kind: o.kind.unwrap_or(disk_kind),
            },
            None => Effective {
                uid: meta.uid(),
                gid: meta.gid(),
                perm: meta.permissions().mode() & 0o7777,
                kind: disk_kind,
            },
        }
    }

    /// Reads `lstat` and the override of `path`.
    pub fn of_path(path: &Path) -> io::Result<(Metadata, Effective)> {
        let meta = std::fs::symlink_metadata(path)?;
        let ov = if meta.file_type().is_symlink() {
            None
        } else {
            OverrideStat::read(path)?
        };
        let eff = Effective::new(&meta, ov.as_ref());
        Ok((meta, eff))
    }

    /// Applies a tree's [`HostOwner`] to an entry that had no ownership record.
    pub fn with_host_owner(mut self, recorded: bool, host: Option<&HostOwner>) -> Effective {
        if let (false, Some(h)) = (recorded, host) {
            (self.uid, self.gid) = h.image_ids(self.uid, self.gid);
        }
        self
    }

    /// Full `st_mode` (type bits and permissions).
    pub fn st_mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok: &[(&str, OverrideStat)] = &[
            (
                "0:0:755",
                OverrideStat {
                    uid: 0,
                    gid: 0,
                    mode: 0o755,
                    kind: None,
                },
            ),
            (
                "1234:2345:0640:file",
                OverrideStat {
                    uid: 1234,
                    gid: 2345,
                    mode: 0o640,
                    kind: Some(FileKind::File),
                },
            ),
            (
                "0:5:0620:char-4-1",
                OverrideStat {
                    uid: 0,
                    gid: 5,
                    mode: 0o620,
                    kind: Some(FileKind::Char { major: 4, minor: 1 }),
                },
            ),
            (
                "0:0:4755:block-8-0",
                OverrideStat {
                    uid: 0,
                    gid: 0,
                    mode: 0o4755,
                    kind: Some(FileKind::Block { major: 8, minor: 0 }),
                },
            ),
            (
                "4294967294:1:1777:dir",
                OverrideStat {
                    uid: 4294967294,
                    gid: 1,
                    mode: 0o1777,
                    kind: Some(FileKind::Dir),
                },
            ),
        ];
        for (s, want) in ok {
            assert_eq!(&OverrideStat::parse(s.as_bytes()).expect(s), want, "{s}");
        }
        for bad in [
            "",
            "0",
            "0:0",
            "a:0:755",
            "0:0:999",
            "0:0:17777",
            "0:0:755:bogus",
            "0:0:755:char-4",
            "-1:0:755",
        ] {
            assert!(OverrideStat::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encode_round_trips() {
        for s in [
            "0:0:0755",
            "1234:2345:0640:file",
            "0:5:0620:char-4-1",
            "7:8:4755:pipe",
        ] {
            let o = OverrideStat::parse(s.as_bytes()).expect(s);
            assert_eq!(o.encode(), s);
            assert_eq!(OverrideStat::parse(o.encode().as_bytes()).expect(s), o);
        }
    }

    #[test]
    fn host_owner_maps_unrecorded_entries_only() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let h = HostOwner {
            uid: 1004,
            gid: 1005,
        };
        if h.write(t.path()).is_err() {
            crate::testing::skip(
                "host_owner_maps_unrecorded_entries_only",
                "no user xattrs here",
            );
            return Ok(());
        }
        assert_eq!(HostOwner::read(t.path())?, Some(h));
        assert_eq!(h.image_ids(1004, 1005), (0, 0));
        assert_eq!(h.image_ids(1004, 7), (0, 7));
        assert_eq!(h.image_ids(1234, 1005), (1234, 0));
        let meta = std::fs::symlink_metadata(t.path())?;
        let e = Effective::new(&meta, None);
        let mapped = e.with_host_owner(
            false,
            Some(&HostOwner {
                uid: e.uid,
                gid: e.gid,
            }),
        );
        assert_eq!((mapped.uid, mapped.gid), (0, 0));
        let kept = e.with_host_owner(
            true,
            Some(&HostOwner {
                uid: e.uid,
                gid: e.gid,
            }),
        );
        assert_eq!((kept.uid, kept.gid), (e.uid, e.gid), "a record wins");
        assert_eq!(HostOwner::read(&t.path().join("none")).ok().flatten(), None);
        xattr::set(t.path(), HOST_OWNER_XATTR, b"x")?;
        assert!(HostOwner::read(t.path()).is_err());
        Ok(())
    }

    #[test]
    fn effective_applies_override() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let p = t.path().join("f");
        std::fs::write(&p, b"x")?;
        let o = OverrideStat {
            uid: 1234,
            gid: 2345,
            mode: 0o4711,
            kind: Some(FileKind::Char { major: 1, minor: 3 }),
        };
        if o.write(&p).is_err() {
            crate::testing::skip("effective_applies_override", "user xattrs unsupported here");
            return Ok(());
        }
        let (_, eff) = Effective::of_path(&p)?;
        assert_eq!((eff.uid, eff.gid, eff.perm), (1234, 2345, 0o4711));
        assert_eq!(eff.st_mode(), libc::S_IFCHR | 0o4711);
        assert_eq!(eff.kind.rdev(), libc::makedev(1, 3));
        Ok(())
    }
}
