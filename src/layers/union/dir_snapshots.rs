//! Directories listed without opens: the kernel's no-opendir mode
//! (`FUSE_NO_OPENDIR_SUPPORT`), which the adapter asks for in every mode, passthrough
//! or not (the directory side of [`super::node_files`], which only the no-open mode
//! uses).
//!
//! Once OPENDIR answers ENOSYS the kernel sends no OPENDIR and no RELEASEDIR (two
//! round trips per `ls`, per Python path scan) and READDIR(PLUS) arrives with handle
//! 0. A listing must still stay stable while one reader walks it in several replies,
//! also while another reader starts over: so the offset the kernel gets back for each
//! entry names the snapshot it came from, `generation << 32 | index + 1`. A READDIR
//! at offset 0 takes a new snapshot; one at another offset continues in the snapshot
//! its offset names. Snapshots are kept least recently used first, at most
//! [`KEPT`] of them and [`KEPT_ENTRIES`] entries in all; a reader that comes back to a
//! snapshot dropped meanwhile continues at the same index in a new one (as after
//! `seekdir` to an old position of a changed directory).

use std::io;
use std::sync::Arc;

use super::{Attr, DirEntry, Ino, Union};

/// Snapshots kept at most.
pub const KEPT: usize = 64;
/// Entries kept in all snapshots at most (the newest is always kept).
pub const KEPT_ENTRIES: usize = 1 << 20;

#[derive(Debug)]
pub(super) struct DirSnapshots {
    inner: parking_lot::Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    next: u32,
    entries: usize,
    kept: lru::LruCache<u32, (Ino, Arc<Vec<DirEntry>>)>,
}

impl Default for DirSnapshots {
    fn default() -> DirSnapshots {
        DirSnapshots {
            inner: parking_lot::Mutex::new(Inner {
                next: 1,
                entries: 0,
                kept: lru::LruCache::unbounded(),
            }),
        }
    }
}

/// The offset of the entry after entry `index` of snapshot `generation`.
fn cookie(generation: u32, index: usize) -> u64 {
    (u64::from(generation) << 32) | (index as u64 + 1)
}

impl Union {
    /// The snapshot a READDIR of `dir` at `offset` reads, its generation and the
    /// index to start at.
    fn dir_snapshot(&self, dir: Ino, offset: u64) -> io::Result<(u32, Arc<Vec<DirEntry>>, usize)> {
        let (generation, index) = ((offset >> 32) as u32, (offset & 0xffff_ffff) as usize);
        if offset != 0 {
            let mut inner = self.dir_snapshots.inner.lock();
            if let Some((ino, entries)) = inner.kept.get(&generation) {
                if *ino == dir {
                    return Ok((generation, entries.clone(), index));
                }
            }
        }
        let entries = self.listing(dir)?;
        let mut inner = self.dir_snapshots.inner.lock();
        let generation = inner.next;
        inner.next = inner.next.wrapping_add(1).max(1);
        inner.entries += entries.len();
        inner.kept.put(generation, (dir, entries.clone()));
        while inner.kept.len() > 1 && (inner.kept.len() > KEPT || inner.entries > KEPT_ENTRIES) {
            if let Some((_, (_, old))) = inner.kept.pop_lru() {
                inner.entries -= old.len();
            }
        }
        Ok((generation, entries, index))
    }

    /// READDIR of `dir` sent without an open: `(offset of the next entry, entry)`
    /// from `offset` on.
    pub fn readdir_node(&self, dir: Ino, offset: u64) -> io::Result<Vec<(u64, DirEntry)>> {
        let (generation, entries, start) = self.dir_snapshot(dir, offset)?;
        Ok(entries
            .iter()
            .enumerate()
            .skip(start)
            .map(|(i, e)| (cookie(generation, i), e.clone()))
            .collect())
    }

    /// READDIRPLUS of `dir` sent without an open (see [`Union::readdirplus`]).
    pub fn readdirplus_node(
        &self,
        dir: Ino,
        offset: u64,
        emit: impl FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> io::Result<()> {
        let (generation, entries, start) = self.dir_snapshot(dir, offset)?;
        self.readdirplus_of(dir, &entries, start, |i| cookie(generation, i), emit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::union::{Caller, ROOT, UnionOptions};
    use std::ffi::OsStr;
    use std::fs;

    fn names(v: &[(u64, DirEntry)]) -> Vec<String> {
        v.iter()
            .map(|(_, e)| e.name.to_string_lossy().into_owned())
            .collect()
    }

    /// A reader continuing after a second reader started over, with a change to the
    /// directory in between, still reads its own snapshot: every entry once.
    #[test]
    fn a_listing_continues_in_its_own_snapshot() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let (lower, upper, work) = (t.path().join("l"), t.path().join("u"), t.path().join("w"));
        for d in [&lower, &upper, &work] {
            fs::create_dir(d)?;
        }
        for n in ["a", "b", "c", "d"] {
            fs::write(lower.join(n), n)?;
        }
        let u = Union::new(&UnionOptions {
            lowers: vec![lower],
            upper: Some(upper),
            work: Some(work),
            ..UnionOptions::default()
        })?;
        let sorted = |v: &[(u64, DirEntry)]| {
            let mut n = names(v);
            n.sort();
            n
        };
        let first = u.readdir_node(ROOT, 0)?;
        assert_eq!(sorted(&first), [".", "..", "a", "b", "c", "d"]);
        // Reader one read three entries; reader two starts over after a change.
        let resume = first[2].0;
        u.unlink(ROOT, OsStr::new("a"))?;
        u.create(
            ROOT,
            OsStr::new("0"),
            0o644,
            libc::O_RDWR,
            Caller { uid: 0, gid: 0 },
        )?;
        let second = u.readdir_node(ROOT, 0)?;
        assert_eq!(sorted(&second), [".", "..", "0", "b", "c", "d"]);
        assert_eq!(u.readdir_node(ROOT, resume)?, first[3..].to_vec());
        // Offsets of the new snapshot continue in it.
        assert_eq!(u.readdir_node(ROOT, second[3].0)?, second[4..].to_vec());
        // A snapshot dropped meanwhile: the same index in a new one.
        {
            let mut inner = u.dir_snapshots.inner.lock();
            while inner.kept.pop_lru().is_some() {}
        }
        assert_eq!(u.readdir_node(ROOT, resume)?.len(), 3);
        Ok(())
    }
}
