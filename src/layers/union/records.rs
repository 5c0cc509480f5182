//! The ownership records (`user.containers.override_stat`) of upper files, by node.
//!
//! Every attribute reply for an upper file needs its record (or its absence), and a
//! tar extraction asks for attributes six times per file: reading the xattr each time
//! was a quarter of the daemon's system calls. While the union is mounted only the
//! union itself changes the upper layer, and users may not set the record themselves
//! ([`super::is_private_xattr`]), so what was read or written once stays true until
//! the union writes it again.
//!
//! Races: a writer stores what it wrote, unconditionally; a reader stores what it read
//! only into an empty slot. A reader that read before a concurrent write therefore
//! never replaces the writer's value, whichever stores first.
//!
//! Node ids are never reused, so an entry of a deleted file is merely dead weight; the
//! map is a bounded LRU. Unions whose layers change underneath them (the mount's view
//! of a seed and its live upper) do not cache.

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;

use super::tree::Ino;
use crate::layers::ownership::OverrideStat;

/// Nodes whose record is kept.
const NODES: usize = 256 * 1024;

/// A node's known record: `None` when the file has none.
type Record = Option<OverrideStat>;

#[derive(Debug)]
pub struct UpperRecords {
    map: Option<Mutex<LruCache<Ino, Record>>>,
}

impl UpperRecords {
    /// A cache; `enabled` false gives one that keeps nothing.
    pub fn new(enabled: bool) -> UpperRecords {
        let cap = NonZeroUsize::new(NODES).unwrap_or(NonZeroUsize::MIN);
        UpperRecords {
            map: enabled.then(|| Mutex::new(LruCache::new(cap))),
        }
    }

    /// The record of `node`'s upper file, when known.
    pub fn get(&self, node: Ino) -> Option<Record> {
        self.map.as_ref()?.lock().get(&node).copied()
    }

    /// Stores what was just written to `node`'s upper file.
    pub fn wrote(&self, node: Ino, record: Record) {
        if let Some(m) = &self.map {
            m.lock().put(node, record);
        }
    }

    /// Stores what was just read from `node`'s upper file, unless a writer stored
    /// something meanwhile.
    pub fn read(&self, node: Ino, record: Record) {
        if let Some(m) = &self.map {
            let mut m = m.lock();
            if !m.contains(&node) {
                m.put(node, record);
            }
        }
    }

    /// Forgets `node`'s record: its upper file was replaced (copy-up).
    pub fn forget(&self, node: Ino) {
        if let Some(m) = &self.map {
            m.lock().pop(&node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: u32) -> Record {
        Some(OverrideStat {
            uid,
            gid: 0,
            mode: 0o644,
            kind: None,
        })
    }

    #[test]
    fn a_read_never_replaces_a_write_whichever_comes_first() {
        let r = UpperRecords::new(true);
        // The reader read the old record before the writer wrote, and stores last.
        r.wrote(Ino(5), rec(1));
        r.read(Ino(5), None);
        assert_eq!(r.get(Ino(5)), Some(rec(1)));
        // The reader stores first: the write still wins.
        r.read(Ino(6), None);
        r.wrote(Ino(6), rec(2));
        assert_eq!(r.get(Ino(6)), Some(rec(2)));
    }

    #[test]
    fn forget_and_disabled_mean_unknown() {
        let r = UpperRecords::new(true);
        r.wrote(Ino(7), None);
        assert_eq!(r.get(Ino(7)), Some(None));
        r.forget(Ino(7));
        assert_eq!(r.get(Ino(7)), None);
        let off = UpperRecords::new(false);
        off.wrote(Ino(7), rec(3));
        off.read(Ino(8), rec(3));
        assert_eq!((off.get(Ino(7)), off.get(Ino(8))), (None, None));
    }
}
