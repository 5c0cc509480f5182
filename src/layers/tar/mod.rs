//! Tar images computed from a stack of layer directories, never written to disk first.
//!
//! Two products, one [`TarLayout`]:
//! - [`TarLayout::flattened`]: the image of a layer stack (lowest first) with
//!   whiteouts and opaque directories applied position-sensitively, filters applied,
//!   absolute symlinks rewritten ([`scan`], [`filter`]);
//! - [`TarLayout::oci_layer`]: the top layer's changes as an OCI layer tar, whiteouts
//!   kept as `.wh.` entries ([`oci`]).
//!
//! A layout is the list of entries (metadata plus a pointer to the layer file that
//! holds the data), with each entry's offset. Header bytes are a pure function of an
//! entry ([`header`]), so the total size is known before the first byte and any
//! `(offset, len)` can be served: [`TarLayout::read_at`] emits header bytes, file data
//! by `pread` or zero padding. The index can be saved and loaded without a tree walk.
//!
//! Invariants: entries are in bytewise path order (OCI layers: depth-first, markers
//! before their siblings); the same layers and options give byte-identical output;
//! no atime/ctime; mtimes clamped to `SOURCE_DATE_EPOCH` when set.
//!
//! Files that change size after the layout was computed: the archive keeps the
//! recorded size (data truncated, or zero-padded when the file shrank) and a warning
//! is logged, so the stream stays a valid tar of the stated size.

pub mod filter;
pub mod header;
mod index;
pub mod layout;
pub mod oci;
pub mod scan;

use std::io;
use std::path::PathBuf;

pub use filter::{FilterError, FilterSet};
pub use layout::TarLayout;

use crate::layers::ownership::FileKind;

/// Options shared by both products.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    pub filters: FilterSet,
    /// Clamp mtimes to this time; markers get it as their mtime (else 0).
    pub source_date_epoch: Option<i64>,
}

/// Errors building, saving or loading a tar layout.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("no layer given")]
    NoLayers,
    #[error("too many layers ({0}, at most 65535)")]
    TooManyLayers(usize),
    #[error("reading layer {layer}: {path}")]
    Walk {
        layer: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the tar layout reads {have} layers, {given} given to relocate it")]
    Relocate { have: usize, given: usize },
    #[error("tar index {path}")]
    IndexIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tar index {path} is corrupt or of another version: {what}")]
    IndexFormat { path: PathBuf, what: String },
}

/// One extended attribute: `(name, value)`.
pub type Xattr = (Box<[u8]>, Box<[u8]>);

/// What one archive entry is: a tar header's type.
///
/// Its own type, not [`FileKind`]: a tar entry can be a hard link to an earlier
/// entry (a name, not a file type) and cannot be a socket. The link target of
/// symlinks and hard links is [`TarEntry::link`], so the kind stays `Copy` and the
/// saved index flat. `EntryKind::try_from(FileKind)` maps a file on disk (`Pipe` is
/// `Fifo`; a socket has no entry); the seed import's `sink::Kind` has the same cases
/// with the link targets inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    /// A hard link to an earlier entry (its path is the entry's `link`).
    HardLink,
    Symlink,
    Dir,
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

impl TryFrom<FileKind> for EntryKind {
    /// A socket: tar has no entry type for it.
    type Error = FileKind;

    fn try_from(k: FileKind) -> Result<EntryKind, FileKind> {
        Ok(match k {
            FileKind::File => EntryKind::File,
            FileKind::Dir => EntryKind::Dir,
            FileKind::Symlink => EntryKind::Symlink,
            FileKind::Pipe => EntryKind::Fifo,
            FileKind::Char { major, minor } => EntryKind::Char { major, minor },
            FileKind::Block { major, minor } => EntryKind::Block { major, minor },
            FileKind::Socket => return Err(k),
        })
    }
}

/// One archive entry: everything its header needs, and where its data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Relative path, no leading `./` or `/`, no trailing `/`.
    pub path: Box<[u8]>,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch, already clamped; never negative.
    pub mtime: i64,
    /// Bytes of data in the archive (regular files only).
    pub size: u64,
    /// Symlink target or hard-link target path.
    pub link: Option<Box<[u8]>>,
    /// `(name, value)` pairs stored as `SCHILY.xattr.<name>`, sorted by name.
    pub xattrs: Vec<Xattr>,
    /// Index of the layer whose file `path` holds the data (when `size > 0`).
    pub source: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_kind_of_each_file_kind() {
        let (major, minor) = (4, 1);
        let cases = [
            (FileKind::File, Ok(EntryKind::File)),
            (FileKind::Dir, Ok(EntryKind::Dir)),
            (FileKind::Symlink, Ok(EntryKind::Symlink)),
            (FileKind::Pipe, Ok(EntryKind::Fifo)),
            (
                FileKind::Char { major, minor },
                Ok(EntryKind::Char { major, minor }),
            ),
            (
                FileKind::Block { major, minor },
                Ok(EntryKind::Block { major, minor }),
            ),
            (FileKind::Socket, Err(FileKind::Socket)),
        ];
        for (k, want) in cases {
            assert_eq!(EntryKind::try_from(k), want, "{k:?}");
        }
    }
}
