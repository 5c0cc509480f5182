//! The node arena: stable inode numbers for merged paths.
//!
//! A node is one name in the merged tree (`parent` + `name`); its id is the FUSE node id
//! and, unless it is one of several hard links, its `st_ino`. Ids are never reused, and
//! a node stays in the arena while it is attached (so a path keeps its inode number for
//! the life of the mount, whatever the kernel forgets). Removing or replacing a name
//! detaches its node; a detached node lives until the kernel forgets it, so open files
//! of deleted names keep working.
//!
//! Each node caches where its entry lives (`Loc`). Only this union changes the layers, so
//! the cache is updated by the operations that move an entry (copy-up, create, rename).
//!
//! Locking: one `RwLock` over the maps, taken only to look up or insert, never across
//! disk I/O.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use parking_lot::RwLock;

/// The root's node id (FUSE_ROOT_ID).
pub const ROOT: u64 = 1;

/// Where a merged entry lives: layer indices, upper (0, when present) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The layers holding this entry, topmost first. A non-directory has exactly one;
    /// a directory has every layer whose directory of that path shows through (down to
    /// the first opaque one).
    pub layers: Vec<usize>,
}

impl Loc {
    /// A location in one layer.
    pub fn one(layer: usize) -> Loc {
        Loc {
            layers: vec![layer],
        }
    }

    /// The topmost layer: the one whose metadata the union presents.
    pub fn top(&self) -> usize {
        self.layers.first().copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct Node {
    parent: u64,
    name: OsString,
    st_ino: u64,
    loc: Loc,
    attached: bool,
    lookups: u64,
}

#[derive(Debug, Default)]
struct Maps {
    nodes: HashMap<u64, Node>,
    children: HashMap<(u64, OsString), u64>,
    /// Hard-link groups: (layer, st_dev, st_ino) on disk → the st_ino the union shows.
    links: HashMap<(usize, u64, u64), u64>,
    next: u64,
}

/// The arena. Cheap to share behind `&`.
#[derive(Debug)]
pub struct Tree {
    maps: RwLock<Maps>,
}

/// What [`Tree::path`] and [`Tree::get`] return for one node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The merged path, relative to the union root (`""` for the root).
    pub path: PathBuf,
    pub loc: Loc,
    pub st_ino: u64,
    pub parent: u64,
}

impl Tree {
    /// A tree holding only the root, located in `root_loc`.
    pub fn new(root_loc: Loc) -> Tree {
        let mut maps = Maps {
            next: ROOT + 1,
            ..Maps::default()
        };
        maps.nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: OsString::new(),
                st_ino: ROOT,
                loc: root_loc,
                attached: true,
                lookups: 1,
            },
        );
        Tree {
            maps: RwLock::new(maps),
        }
    }

    /// The node's path, location and inode number; `None` for an unknown id.
    pub fn get(&self, ino: u64) -> Option<NodeInfo> {
        let maps = self.maps.read();
        let node = maps.nodes.get(&ino)?;
        let mut names = Vec::new();
        let mut cur = node;
        let mut id = ino;
        while id != ROOT {
            names.push(cur.name.as_os_str());
            id = cur.parent;
            cur = maps.nodes.get(&id)?;
        }
        let path = names.iter().rev().collect();
        Some(NodeInfo {
            path,
            loc: node.loc.clone(),
            st_ino: node.st_ino,
            parent: node.parent,
        })
    }

    /// The attached child `name` of `parent`, if the tree knows it.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.maps
            .read()
            .children
            .get(&(parent, name.to_owned()))
            .copied()
    }

    /// Records that `parent/name` lives at `loc` and returns its node id, creating the
    /// node on first sight. `link_key` (layer, dev, ino) groups hard links so that they
    /// share one `st_ino`. `counted` adds a kernel lookup reference.
    ///
    /// An existing node keeps its location unless `loc` is higher up the stack: a
    /// lookup that raced with a copy-up must not move the node back down.
    pub fn insert(
        &self,
        parent: u64,
        name: &OsStr,
        loc: Loc,
        link_key: Option<(usize, u64, u64)>,
        counted: bool,
    ) -> (u64, u64) {
        let mut maps = self.maps.write();
        let key = (parent, name.to_owned());
        if let Some(&id) = maps.children.get(&key) {
            if let Some(node) = maps.nodes.get_mut(&id) {
                if loc.top() < node.loc.top()
                    || (loc.top() == node.loc.top() && loc.layers.len() > node.loc.layers.len())
                {
                    node.loc = loc;
                }
                node.lookups += u64::from(counted);
                return (id, node.st_ino);
            }
        }
        let id = maps.next;
        maps.next += 1;
        let st_ino = match link_key {
            Some(k) => *maps.links.entry(k).or_insert(id),
            None => id,
        };
        maps.nodes.insert(
            id,
            Node {
                parent,
                name: name.to_owned(),
                st_ino,
                loc,
                attached: true,
                lookups: u64::from(counted),
            },
        );
        maps.children.insert(key, id);
        (id, st_ino)
    }

    /// Sets the location of `ino` (after copy-up or creation in the upper layer).
    pub fn set_loc(&self, ino: u64, loc: Loc) {
        if let Some(n) = self.maps.write().nodes.get_mut(&ino) {
            n.loc = loc;
        }
    }

    /// Makes `key` (an upper file's dev/ino) show as `st_ino`: the target of a new hard
    /// link keeps the inode number of the name it was linked from.
    pub fn join_link_group(&self, key: (usize, u64, u64), st_ino: u64) {
        self.maps.write().links.insert(key, st_ino);
    }

    /// Detaches `parent/name` (unlinked, removed or replaced). Returns its id if known.
    pub fn detach(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let mut maps = self.maps.write();
        let id = maps.children.remove(&(parent, name.to_owned()))?;
        if let Some(n) = maps.nodes.get_mut(&id) {
            n.attached = false;
            if n.lookups == 0 {
                maps.nodes.remove(&id);
            }
        }
        Some(id)
    }

    /// Moves the node at `parent/name` to `new_parent/new_name`, detaching whatever was
    /// there. Descendants follow, since paths are computed from parent links.
    pub fn rename(&self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let mut maps = self.maps.write();
        let Some(id) = maps.children.remove(&(parent, name.to_owned())) else {
            return;
        };
        if let Some(old) = maps.children.insert((new_parent, new_name.to_owned()), id) {
            if let Some(n) = maps.nodes.get_mut(&old) {
                n.attached = false;
            }
        }
        if let Some(n) = maps.nodes.get_mut(&id) {
            n.parent = new_parent;
            n.name = new_name.to_owned();
        }
    }

    /// Drops `n` kernel references; a detached node with none left is freed. The root
    /// and attached nodes stay, so their inode numbers stay stable.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut maps = self.maps.write();
        let free = match maps.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0 && !node.attached && ino != ROOT
            }
            None => false,
        };
        if free {
            maps.nodes.remove(&ino);
        }
    }

    /// Number of nodes held (for tests).
    pub fn len(&self) -> usize {
        self.maps.read().nodes.len()
    }

    /// Never true: the root is always there.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_ids_are_stable() {
        let t = Tree::new(Loc::one(0));
        let (a, _) = t.insert(ROOT, OsStr::new("a"), Loc::one(1), None, true);
        let (b, _) = t.insert(a, OsStr::new("b"), Loc::one(1), None, true);
        assert_eq!(t.get(b).map(|i| i.path), Some(PathBuf::from("a/b")));
        // Same name again: same id; a higher location wins, a lower one does not.
        assert_eq!(t.insert(a, OsStr::new("b"), Loc::one(0), None, true).0, b);
        assert_eq!(t.get(b).map(|i| i.loc.top()), Some(0));
        t.insert(a, OsStr::new("b"), Loc::one(2), None, false);
        assert_eq!(t.get(b).map(|i| i.loc.top()), Some(0));

        t.rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("z"));
        assert_eq!(t.get(b).map(|i| i.path), Some(PathBuf::from("z/b")));
        assert_eq!(t.child(ROOT, OsStr::new("a")), None);
        assert_eq!(t.child(ROOT, OsStr::new("z")), Some(a));
    }

    #[test]
    fn detached_nodes_live_until_forgotten() {
        let t = Tree::new(Loc::one(0));
        let (f, _) = t.insert(ROOT, OsStr::new("f"), Loc::one(0), None, true);
        assert_eq!(t.detach(ROOT, OsStr::new("f")), Some(f));
        assert!(
            t.get(f).is_some(),
            "open file of a deleted name still resolves"
        );
        t.forget(f, 1);
        assert!(t.get(f).is_none());
        // A new file of the same name is a new inode.
        let (g, _) = t.insert(ROOT, OsStr::new("f"), Loc::one(0), None, true);
        assert_ne!(f, g);
        // Attached nodes survive forget: stable inode numbers.
        t.forget(g, 1);
        assert!(t.get(g).is_some());
    }

    #[test]
    fn hard_links_share_st_ino() {
        let t = Tree::new(Loc::one(0));
        let (a, ia) = t.insert(ROOT, OsStr::new("a"), Loc::one(0), Some((0, 5, 77)), true);
        let (b, ib) = t.insert(ROOT, OsStr::new("b"), Loc::one(0), Some((0, 5, 77)), true);
        assert_ne!(a, b);
        assert_eq!(ia, ib);
        assert_eq!(ia, a);
    }
}
