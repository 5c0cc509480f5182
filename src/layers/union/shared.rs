//! Upper files that share their inode with a lower file.
//!
//! Renaming a directory that exists in a lower layer copies its merged tree into the
//! upper layer ([`super::Union::rename`]); where the layers share a filesystem, the
//! lower files are hard-linked into the copy instead of copied. Such an upper file is
//! the lower file: its data, mode, owner and xattrs must never change in place. So the
//! union records the disk identity (st_dev, st_ino) of every lower file it links, and
//! a change to an upper file with that identity first replaces the link by a copy of
//! its own ([`super::Union::copy_up`]), as a copy-up would for the lower file.
//!
//! Invariant: such a file has exactly one lower and one upper name (lower files with
//! several links are copied, not linked), so its presented link count is the disk's
//! minus one, as the kernel shows the lower file after a rename.
//!
//! The record outlives the mount: identities are appended to `WORKDIR/gentree-shared`
//! (outside the scratch dir the union empties at start) before the links are put in
//! place, and read back when the union opens. A stale record (a link since replaced)
//! is harmless: no upper file has that identity any more.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use parking_lot::RwLock;

/// Name of the record file in the work dir.
pub const SHARED_FILE: &str = "gentree-shared";

/// The identities of upper files hard-linked to lower files.
#[derive(Debug, Default)]
pub struct SharedInodes {
    ids: RwLock<HashSet<(u64, u64)>>,
    /// Where the record lives; `None` for a union without a work dir (read-only).
    file: Option<PathBuf>,
}

impl SharedInodes {
    /// Reads the record at `file` (missing: none yet).
    pub fn load(file: Option<PathBuf>) -> io::Result<SharedInodes> {
        let mut ids = HashSet::new();
        if let Some(path) = &file {
            let mut text = String::new();
            match File::open(path) {
                Ok(mut f) => {
                    f.read_to_string(&mut text)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // A line cut short by a crash is ignored: its links were never put in place.
            for line in text.split_inclusive('\n') {
                let Some(line) = line.strip_suffix('\n') else {
                    continue;
                };
                let mut it = line.split(' ').map(str::parse::<u64>);
                if let (Some(Ok(dev)), Some(Ok(ino)), None) = (it.next(), it.next(), it.next()) {
                    ids.insert((dev, ino));
                }
            }
        }
        Ok(SharedInodes {
            ids: RwLock::new(ids),
            file,
        })
    }

    /// True when no file was ever linked: nothing to check.
    pub fn is_empty(&self) -> bool {
        self.ids.read().is_empty()
    }

    /// True when `meta` (an upper entry's lstat) is a hard link to a lower file.
    pub fn is_shared(&self, meta: &std::fs::Metadata) -> bool {
        if !meta.is_file() || meta.nlink() < 2 {
            return false;
        }
        let ids = self.ids.read();
        !ids.is_empty() && ids.contains(&(meta.dev(), meta.ino()))
    }

    /// Records `ids` durably; call before the links appear in the upper layer.
    pub fn add(&self, ids: &[(u64, u64)]) -> io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let Some(path) = &self.file else {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        };
        let mut text = String::with_capacity(ids.len() * 24);
        for (dev, ino) in ids {
            text.push_str(&format!("{dev} {ino}\n"));
        }
        // One append: concurrent renames' records never interleave within a line.
        let mut f = OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        self.ids.write().extend(ids.iter().copied());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_survives_reopening_and_ignores_torn_lines() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let path = t.path().join(SHARED_FILE);
        fs_write(&t.path().join("f"), "x")?;
        let meta = std::fs::metadata(t.path().join("f"))?;
        std::fs::hard_link(t.path().join("f"), t.path().join("g"))?;
        let linked = std::fs::metadata(t.path().join("f"))?;
        let s = SharedInodes::load(Some(path.clone()))?;
        assert!(!s.is_shared(&linked));
        s.add(&[(meta.dev(), meta.ino())])?;
        assert!(s.is_shared(&linked));
        // One link only: not a link to anything (the lower name went).
        assert!(!s.is_shared(&meta));
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(b"12 3")?;
        drop(f);
        let again = SharedInodes::load(Some(path))?;
        assert!(again.is_shared(&linked));
        assert_eq!(again.ids.read().len(), 1);
        Ok(())
    }

    fn fs_write(p: &std::path::Path, s: &str) -> io::Result<()> {
        std::fs::write(p, s)
    }
}
