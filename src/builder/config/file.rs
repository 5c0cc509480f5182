//! Reading config files: a size limit, and the identity of each file read.
//!
//! Every config, base and default file is read through [`read`], which refuses what
//! is not a regular file (a FIFO or device would block or never end) and a file
//! above [`MAX_CONFIG_BYTES`] before reading it (and stops reading at the limit should
//! the file grow meanwhile), so the memory of one resolution is bounded by a small
//! multiple of the limit whatever the file holds. [`FileStamp`] is what a cache of
//! resolutions compares to see that none of the files it read has changed: taken
//! before the file is read, so an edit racing the read changes the stamp and is seen
//! by the next check.

use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::ConfigError;

/// The largest config file read, in bytes (2 MiB: about 125,000 package atoms; the
/// worst case, 2 MiB of empty strings, peaks near 150 MiB while resolving).
pub const MAX_CONFIG_BYTES: u64 = 2 << 20;

/// The identity of a file as read: device, inode, size, modification and change
/// times; `None` for a file that did not exist (or could not be stat'ed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub path: PathBuf,
    pub id: Option<FileId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileStamp {
    /// The file at `path` as it is now (following symlinks, as reading does).
    pub fn of(path: &Path) -> FileStamp {
        let id = std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        });
        FileStamp {
            path: path.to_path_buf(),
            id,
        }
    }

    /// The file is still the one stamped.
    pub fn is_current(&self) -> bool {
        FileStamp::of(&self.path).id == self.id
    }
}

/// Reads the config file at `path` as UTF-8, refusing it above [`MAX_CONFIG_BYTES`];
/// `io` says which file an I/O error is about (a config, a base, a default file).
pub fn read(path: &Path, io: impl FnOnce(io::Error) -> ConfigError) -> Result<String, ConfigError> {
    let refused = |size| match size {
        Some(size) => ConfigError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_CONFIG_BYTES,
        },
        None => ConfigError::NotAFile {
            path: path.to_path_buf(),
        },
    };
    // Err(Some(size)): too large; Err(None): not a regular file.
    let read = || -> io::Result<Result<Vec<u8>, Option<u64>>> {
        // Non-blocking, so a FIFO is refused below instead of waiting for a writer.
        let f = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Ok(Err(None));
        }
        let size = meta.len();
        if size > MAX_CONFIG_BYTES {
            return Ok(Err(Some(size)));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        f.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
        Ok(match bytes.len() as u64 {
            n if n > MAX_CONFIG_BYTES => Err(Some(n)),
            _ => Ok(bytes),
        })
    };
    let bytes = read().map_err(io)?.map_err(refused)?;
    String::from_utf8(bytes).map_err(|e| ConfigError::NotText {
        path: path.to_path_buf(),
        at: e.utf8_error().valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_file_above_the_limit_by_name() {
        let d = tempfile::tempdir().unwrap();
        let at = d.path().join("at.toml");
        let above = d.path().join("above.toml");
        std::fs::write(&at, vec![b'#'; MAX_CONFIG_BYTES as usize]).unwrap();
        // Sparse: a 2 GiB file costs nothing to make and would cost 2 GiB to read.
        let f = std::fs::File::create(&above).unwrap();
        f.set_len(2 << 30).unwrap();
        let read = |p: &Path| {
            read(p, |source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        assert_eq!(read(&at).unwrap().len() as u64, MAX_CONFIG_BYTES);
        let e = read(&above).unwrap_err().to_string();
        assert!(e.contains("above.toml") && e.contains("2 MiB"), "{e}");
        assert!(e.contains(&(2u64 << 30).to_string()), "{e}");
        std::fs::write(&at, b"a = \"\xff\"").unwrap();
        let e = read(&at).unwrap_err().to_string();
        assert!(
            e.contains("at.toml") && e.contains("UTF-8") && e.contains("offset 5"),
            "{e}"
        );
    }

    #[test]
    fn stamps_see_edits_replacements_and_removal() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        let absent = FileStamp::of(&p);
        assert!(absent.id.is_none() && absent.is_current());
        std::fs::write(&p, "a = 1\n").unwrap();
        assert!(!absent.is_current());
        let s = FileStamp::of(&p);
        assert!(s.is_current());
        // Same size; the times tick coarsely, so an edit is dated apart explicitly.
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::fs::write(&p, "a = 2\n").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(before + std::time::Duration::from_millis(1))
            .unwrap();
        assert!(!s.is_current());
        let s = FileStamp::of(&p);
        let tmp = d.path().join("c.new");
        std::fs::write(&tmp, "a = 2\n").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert!(!s.is_current(), "a rename over the file is another inode");
        let s = FileStamp::of(&p);
        std::fs::remove_file(&p).unwrap();
        assert!(!s.is_current());
    }
}
