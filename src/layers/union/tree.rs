//! The node arena: stable inode numbers for merged paths.
//!
//! A node is one file of the merged tree, reached by a primary name (`parent` + `name`)
//! and, for hard links, alias names; its id is both the FUSE node id and `st_ino` (so
//! the kernel sees one inode, with one link count, for all names of a hard-linked file).
//!
//! Hard links inside a lower layer are one node too (keyed by layer, st_dev, st_ino),
//! as kernel overlayfs shows them, until one name is copied up: as in overlayfs without
//! `index`, that name then becomes a file of its own and the other names stay linked
//! ([`Tree::split_off`]). FUSE requests on a node do not say which name the caller
//! used, so the tree remembers the name a lookup last resolved to such a node, and the
//! adapter gives these names no entry cache, so every path walk looks them up (see
//! [`Tree::last_name`]). Ids are never reused, and
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
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

/// A node id: the FUSE node id and the `st_ino` of one merged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

/// The root's node id (FUSE_ROOT_ID).
pub const ROOT: Ino = Ino(1);

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

/// A multiply-rotate hasher (the "Fx" hash of rustc): the maps are keyed by node ids
/// and file names, hashed on every request, and SipHash showed up in profiles.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let mut w = [0u8; 8];
        let rest = chunks.remainder();
        w[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(w) ^ (rest.len() as u64) << 56);
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FastHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A map hashed with [`FastHasher`].
pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// A set of names hashed with [`FastHasher`], for the union's per-listing sets.
pub(super) type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<FastHasher>>;

/// The disk identity of a file with several links, which makes its names one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKey {
    /// (st_dev, st_ino) of an upper file.
    Upper(u64, u64),
    /// (layer, st_dev, st_ino) of a lower file: the names share a node until copy-up.
    Lower(usize, u64, u64),
}

/// The arena's record of one node: a file of the merged tree, its names, where it
/// lives and how many lookups the kernel holds.
#[derive(Debug, Clone)]
struct MergedFile {
    parent: Ino,
    /// Shared with the `children` key of the primary name.
    name: Arc<OsStr>,
    /// Further names of a hard-linked file.
    aliases: Vec<(Ino, OsString)>,
    loc: Loc,
    /// The group this node stands for, when its file has several links.
    link: Option<LinkKey>,
    /// Of a lower hard-link group: the name the last lookup resolved.
    last: Option<(Ino, OsString)>,
    attached: bool,
    lookups: u64,
}

impl MergedFile {
    fn names(&self) -> impl Iterator<Item = (Ino, &OsStr)> {
        std::iter::once((self.parent, &*self.name))
            .chain(self.aliases.iter().map(|(p, n)| (*p, n.as_os_str())))
    }

    fn has_name(&self, parent: Ino, name: &OsStr) -> bool {
        self.names().any(|(p, n)| p == parent && n == name)
    }
}

#[derive(Debug, Default)]
struct Maps {
    /// Boxed: the map moves only pointers when it grows (tens of thousands of nodes
    /// after a tree walk; moving the nodes themselves showed in profiles).
    nodes: FastMap<Ino, Box<MergedFile>>,
    /// parent → name → child. Two levels, so a lookup borrows the name instead of
    /// allocating a key.
    children: FastMap<Ino, FastMap<Arc<OsStr>, Ino>>,
    /// Hard-linked files: disk identity → their node.
    links: FastMap<LinkKey, Ino>,
    next: u64,
}

impl Maps {
    fn get_child(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.children.get(&parent)?.get(name).copied()
    }

    fn put_child(&mut self, parent: Ino, name: impl Into<Arc<OsStr>>, id: Ino) -> Option<Ino> {
        self.children
            .entry(parent)
            .or_default()
            .insert(name.into(), id)
    }

    fn take_child(&mut self, parent: Ino, name: &OsStr) -> Option<Ino> {
        let names = self.children.get_mut(&parent)?;
        let id = names.remove(name);
        if names.is_empty() {
            self.children.remove(&parent);
        }
        id
    }
}

/// The arena. Cheap to share behind `&`.
#[derive(Debug)]
pub struct Tree {
    maps: RwLock<Maps>,
}

/// What [`Tree::get`] returns for one node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The merged path, relative to the union root (`""` for the root).
    pub path: PathBuf,
    pub loc: Loc,
    pub st_ino: u64,
    pub parent: Ino,
    /// False once the last name is gone: `path` may then name another file.
    pub attached: bool,
}

impl Tree {
    /// A tree holding only the root, located in `root_loc`.
    pub fn new(root_loc: Loc) -> Tree {
        let mut maps = Maps {
            next: ROOT.0 + 1,
            ..Maps::default()
        };
        maps.nodes.insert(
            ROOT,
            Box::new(MergedFile {
                parent: ROOT,
                name: Arc::from(OsStr::new("")),
                aliases: Vec::new(),
                loc: root_loc,
                link: None,
                last: None,
                attached: true,
                lookups: 1,
            }),
        );
        Tree {
            maps: RwLock::new(maps),
        }
    }

    /// The node's path, location and inode number; `None` for an unknown id.
    pub fn get(&self, ino: Ino) -> Option<NodeInfo> {
        let maps = self.maps.read();
        let node = maps.nodes.get(&ino)?;
        let mut names: Vec<&OsStr> = Vec::with_capacity(8);
        let mut len = 0;
        let mut cur = node;
        let mut id = ino;
        while id != ROOT {
            names.push(&cur.name);
            len += cur.name.len() + 1;
            id = cur.parent;
            cur = maps.nodes.get(&id)?;
        }
        // One allocation: every request builds the path of its node.
        let mut path = PathBuf::with_capacity(len);
        for n in names.iter().rev() {
            path.push(n);
        }
        Some(NodeInfo {
            path,
            loc: node.loc.clone(),
            st_ino: ino.0,
            parent: node.parent,
            attached: node.attached,
        })
    }

    /// The kernel's lookup count of a node; `None` for an unknown id.
    pub fn lookups(&self, ino: Ino) -> Option<u64> {
        self.maps.read().nodes.get(&ino).map(|n| n.lookups)
    }

    /// The attached child `name` of `parent`, if the tree knows it.
    pub fn child(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.maps
            .read()
            .children
            .get(&parent)
            .and_then(|m| m.get(name))
            .copied()
    }

    /// Records that `parent/name` lives at `loc` and returns its node id, creating the
    /// node on first sight. `link_key` (the disk identity of a file with several links)
    /// makes every name of one file the same node. `counted` adds a kernel lookup
    /// reference (and makes this name the last one resolved, for a lower group).
    ///
    /// An existing node keeps its location unless `loc` is higher up the stack: a
    /// lookup that raced with a copy-up must not move the node back down. An existing
    /// single-name node without a key (a listing made it without the metadata that
    /// shows the links: symlinks, fifos) gets `link_key` now, joining the node of that
    /// group if there is one; the kernel finds the new node when it looks again.
    pub fn insert(
        &self,
        parent: Ino,
        name: &OsStr,
        loc: Loc,
        link_key: Option<LinkKey>,
        counted: bool,
    ) -> Ino {
        Self::insert_locked(&mut self.maps.write(), parent, name, loc, link_key, counted)
    }

    /// The nodes of a listing of directory `parent`, in order: for each (name, layer
    /// holding it, link key), the existing child of that name as it is, or a new node
    /// made as [`Tree::insert`] makes it (no kernel reference). One lock for the lot.
    pub fn insert_listed<'a>(
        &self,
        parent: Ino,
        listed: impl ExactSizeIterator<Item = (&'a OsStr, usize, Option<LinkKey>)>,
    ) -> Vec<Ino> {
        let mut out = Vec::with_capacity(listed.len());
        let mut maps = self.maps.write();
        maps.nodes.reserve(listed.len());
        maps.children
            .entry(parent)
            .or_default()
            .reserve(listed.len());
        for (name, layer, key) in listed {
            out.push(match maps.get_child(parent, name) {
                Some(id) => id,
                None => Self::insert_locked(&mut maps, parent, name, Loc::one(layer), key, false),
            });
        }
        // An empty listing must not leave an empty map behind (take_child's invariant).
        if maps.children.get(&parent).is_some_and(|m| m.is_empty()) {
            maps.children.remove(&parent);
        }
        out
    }

    fn insert_locked(
        maps: &mut Maps,
        parent: Ino,
        name: &OsStr,
        loc: Loc,
        link_key: Option<LinkKey>,
        counted: bool,
    ) -> Ino {
        if let (Some(id), Some(k)) = (maps.get_child(parent, name), link_key) {
            let group = maps
                .links
                .get(&k)
                .copied()
                .filter(|&g| g != id && maps.nodes.get(&g).is_some_and(|n| n.attached));
            if let Some(node) = maps.nodes.get_mut(&id).filter(|n| n.link.is_none()) {
                if node.aliases.is_empty() {
                    if group.is_some() {
                        maps.take_child(parent, name);
                        Self::unname(maps, id, parent, name);
                    } else {
                        node.link = Some(k);
                        maps.links.insert(k, id);
                    }
                }
            }
        }
        if let Some(id) = maps.get_child(parent, name) {
            if let Some(node) = maps.nodes.get_mut(&id) {
                if loc.top() < node.loc.top()
                    || (loc.top() == node.loc.top() && loc.layers.len() > node.loc.layers.len())
                {
                    node.loc = loc;
                }
                node.lookups += u64::from(counted);
                Self::note_lookup(node, parent, name, counted);
                return id;
            }
        }
        if let Some(id) = link_key.and_then(|k| maps.links.get(&k).copied()) {
            if let Some(node) = maps.nodes.get_mut(&id).filter(|n| n.attached) {
                node.aliases.push((parent, name.to_owned()));
                node.lookups += u64::from(counted);
                Self::note_lookup(node, parent, name, counted);
                maps.put_child(parent, name, id);
                return id;
            }
        }
        let id = Ino(maps.next);
        maps.next += 1;
        if let Some(k) = link_key {
            maps.links.insert(k, id);
        }
        let name: Arc<OsStr> = Arc::from(name);
        maps.nodes.insert(
            id,
            Box::new(MergedFile {
                parent,
                name: name.clone(),
                aliases: Vec::new(),
                loc,
                link: link_key,
                last: None,
                attached: true,
                lookups: u64::from(counted),
            }),
        );
        maps.put_child(parent, name, id);
        id
    }

    fn note_lookup(node: &mut MergedFile, parent: Ino, name: &OsStr, counted: bool) {
        if counted && matches!(node.link, Some(LinkKey::Lower(..))) {
            match &mut node.last {
                Some((p, n)) if *p == parent && n == name => {}
                last => *last = Some((parent, name.to_owned())),
            }
        }
    }

    /// The name of `ino` a copy-up should break off: the one the last lookup resolved
    /// if it still names the node, else the primary name. `None` unless `ino` is a
    /// lower hard-link group (which may have only one name in the tree so far: other
    /// names may not have been looked up yet).
    ///
    /// FUSE requests on a node (open, setattr, setxattr, link) carry no name; the
    /// kernel looks a name up right before them because the adapter gives group names
    /// no entry cache. Two processes resolving different names of one group at the
    /// same moment can still make the wrong name the last one: a known limit.
    pub fn last_name(&self, ino: Ino) -> Option<(Ino, OsString)> {
        let maps = self.maps.read();
        let node = maps.nodes.get(&ino)?;
        if !matches!(node.link, Some(LinkKey::Lower(..))) {
            return None;
        }
        match &node.last {
            Some((p, n)) if node.has_name(*p, n) => Some((*p, n.clone())),
            _ => Some((node.parent, node.name.to_os_string())),
        }
    }

    /// Makes `parent/name` the only name of `ino`; its other names move to a new node
    /// that takes over the hard-link group (same location, no kernel references: the
    /// kernel finds it on its next lookup of those names; with no other names, names
    /// not looked up yet will make a new node). `ino` leaves the group: it has been
    /// copied up as a file of its own.
    pub fn split_off(&self, ino: Ino, parent: Ino, name: &OsStr) {
        let mut maps = self.maps.write();
        let Some(node) = maps.nodes.get_mut(&ino) else {
            return;
        };
        if !matches!(node.link, Some(LinkKey::Lower(..))) || !node.has_name(parent, name) {
            return;
        }
        let others: Vec<(Ino, OsString)> = node
            .names()
            .filter(|&(p, n)| !(p == parent && n == name))
            .map(|(p, n)| (p, n.to_owned()))
            .collect();
        let link = node.link.take();
        let loc = node.loc.clone();
        node.parent = parent;
        node.name = Arc::from(name);
        node.aliases.clear();
        node.last = None;
        let Some(((first_parent, first_name), rest)) = others.split_first() else {
            if let Some(k) = link {
                if maps.links.get(&k) == Some(&ino) {
                    maps.links.remove(&k);
                }
            }
            return;
        };
        let id = Ino(maps.next);
        maps.next += 1;
        maps.nodes.insert(
            id,
            Box::new(MergedFile {
                parent: *first_parent,
                name: Arc::from(first_name.as_os_str()),
                aliases: rest.to_vec(),
                loc,
                link,
                last: None,
                attached: true,
                lookups: 0,
            }),
        );
        for (p, n) in &others {
            maps.put_child(*p, n.as_os_str(), id);
        }
        if let Some(k) = link {
            maps.links.insert(k, id);
        }
    }

    /// Sets the location of `ino` (after copy-up or creation in the upper layer).
    pub fn set_loc(&self, ino: Ino, loc: Loc) {
        if let Some(n) = self.maps.write().nodes.get_mut(&ino) {
            n.loc = loc;
        }
    }

    /// Adds the name `parent/name` to `ino` (a new hard link to the upper file with
    /// disk identity `link_key`), with one kernel reference for the entry reply.
    pub fn add_link(&self, ino: Ino, parent: Ino, name: &OsStr, link_key: (u64, u64)) {
        let mut maps = self.maps.write();
        let Some(node) = maps.nodes.get_mut(&ino) else {
            return;
        };
        let key = LinkKey::Upper(link_key.0, link_key.1);
        node.aliases.push((parent, name.to_owned()));
        node.lookups += 1;
        node.link = Some(key);
        maps.put_child(parent, name, ino);
        maps.links.insert(key, ino);
    }

    /// Removes one name of a node; a node without names is detached.
    fn unname(maps: &mut Maps, id: Ino, parent: Ino, name: &OsStr) {
        let Some(n) = maps.nodes.get_mut(&id) else {
            return;
        };
        if n.parent == parent && &*n.name == name {
            match n.aliases.pop() {
                Some((p, nm)) => {
                    n.parent = p;
                    n.name = Arc::from(nm);
                }
                None => n.attached = false,
            }
        } else {
            n.aliases.retain(|(p, nm)| !(*p == parent && nm == name));
        }
        if !n.attached && n.lookups == 0 {
            maps.nodes.remove(&id);
        }
    }

    /// Detaches `parent/name` (unlinked, removed or replaced). Returns its id if known.
    pub fn detach(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        let mut maps = self.maps.write();
        let id = maps.take_child(parent, name)?;
        Self::unname(&mut maps, id, parent, name);
        Some(id)
    }

    /// Moves the node at `parent/name` to `new_parent/new_name`, detaching whatever was
    /// there. Descendants follow, since paths are computed from parent links.
    pub fn rename(&self, parent: Ino, name: &OsStr, new_parent: Ino, new_name: &OsStr) {
        let mut maps = self.maps.write();
        let Some(id) = maps.take_child(parent, name) else {
            return;
        };
        if let Some(old) = maps.put_child(new_parent, new_name, id) {
            if old != id {
                Self::unname(&mut maps, old, new_parent, new_name);
            }
        }
        if let Some(n) = maps.nodes.get_mut(&id) {
            if n.parent == parent && &*n.name == name {
                n.parent = new_parent;
                n.name = Arc::from(new_name);
            } else if let Some(a) = n
                .aliases
                .iter_mut()
                .find(|(p, nm)| *p == parent && nm == name)
            {
                *a = (new_parent, new_name.to_owned());
            }
        }
    }

    /// After `ino`'s directory was copied whole into the upper layer (a renamed lower
    /// directory): `ino` and every known node below it now live in the upper layer
    /// alone. Nodes of lower hard-link groups are detached instead (their names became
    /// files of their own; the kernel looks such names up on every use, see
    /// [`Tree::last_name`], and finds new nodes). Returns the nodes that moved.
    pub fn relocate_to_upper(&self, ino: Ino) -> Vec<Ino> {
        let mut maps = self.maps.write();
        let mut moved = Vec::new();
        let mut stack = vec![ino];
        while let Some(dir) = stack.pop() {
            if let Some(n) = maps.nodes.get_mut(&dir) {
                n.loc = Loc::one(0);
                moved.push(dir);
            }
            let children: Vec<(Arc<OsStr>, Ino)> = match maps.children.get(&dir) {
                Some(c) => c.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                None => continue,
            };
            for (name, child) in children {
                let lower_group = maps
                    .nodes
                    .get(&child)
                    .is_some_and(|n| matches!(n.link, Some(LinkKey::Lower(..))));
                if lower_group {
                    maps.take_child(dir, &name);
                    Self::unname(&mut maps, child, dir, &name);
                } else {
                    stack.push(child);
                }
            }
        }
        moved
    }

    /// Drops `n` kernel references; a detached node with none left is freed. The root
    /// and attached nodes stay, so their inode numbers stay stable.
    pub fn forget(&self, ino: Ino, n: u64) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_renames_and_ids_are_stable() {
        let t = Tree::new(Loc::one(0));
        let a = t.insert(ROOT, OsStr::new("a"), Loc::one(1), None, true);
        let b = t.insert(a, OsStr::new("b"), Loc::one(1), None, true);
        assert_eq!(t.get(b).map(|i| i.path), Some(PathBuf::from("a/b")));
        // Same name again: same id; a higher location wins, a lower one does not.
        assert_eq!(t.insert(a, OsStr::new("b"), Loc::one(0), None, true), b);
        assert_eq!(t.get(b).map(|i| i.loc.top()), Some(0));
        t.insert(a, OsStr::new("b"), Loc::one(2), None, false);
        assert_eq!(t.get(b).map(|i| i.loc.top()), Some(0));

        t.rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("z"));
        assert_eq!(t.get(b).map(|i| i.path), Some(PathBuf::from("z/b")));
        assert_eq!(t.child(ROOT, OsStr::new("a")), None);
        assert_eq!(t.child(ROOT, OsStr::new("z")), Some(a));
    }

    #[test]
    fn a_relocated_subtree_lives_in_the_upper_and_drops_lower_groups() {
        let t = Tree::new(Loc::one(0));
        let n = OsStr::new;
        let merged = Loc {
            layers: vec![0, 1, 2],
        };
        let a = t.insert(ROOT, n("a"), merged.clone(), None, true);
        let sub = t.insert(a, n("sub"), Loc { layers: vec![1, 2] }, None, true);
        let f = t.insert(sub, n("f"), Loc::one(2), None, true);
        let key = Some(LinkKey::Lower(2, 5, 9));
        let g = t.insert(sub, n("g"), Loc::one(2), key, true);
        let outside = t.insert(ROOT, n("o"), Loc::one(1), None, true);
        t.rename(ROOT, n("a"), ROOT, n("b"));
        let mut moved = t.relocate_to_upper(a);
        moved.sort();
        assert_eq!(moved, [a, sub, f]);
        for id in [a, sub, f] {
            assert_eq!(t.get(id).map(|i| i.loc), Some(Loc::one(0)));
        }
        assert_eq!(t.get(f).map(|i| i.path), Some(PathBuf::from("b/sub/f")));
        // The group's name is looked up afresh; the old node lives on, detached.
        assert_eq!(t.child(sub, n("g")), None);
        assert!(t.get(g).is_some_and(|i| !i.attached));
        assert_eq!(t.get(outside).map(|i| i.loc), Some(Loc::one(1)));
    }

    #[test]
    fn detached_nodes_live_until_forgotten() {
        let t = Tree::new(Loc::one(0));
        let f = t.insert(ROOT, OsStr::new("f"), Loc::one(0), None, true);
        assert_eq!(t.detach(ROOT, OsStr::new("f")), Some(f));
        assert!(
            t.get(f).is_some(),
            "open file of a deleted name still resolves"
        );
        t.forget(f, 1);
        assert!(t.get(f).is_none());
        // A new file of the same name is a new inode.
        let g = t.insert(ROOT, OsStr::new("f"), Loc::one(0), None, true);
        assert_ne!(f, g);
        // Attached nodes survive forget: stable inode numbers.
        t.forget(g, 1);
        assert!(t.get(g).is_some());
    }

    #[test]
    fn hard_links_are_one_node_that_survives_unlink_of_either_name() {
        let t = Tree::new(Loc::one(0));
        let a = t.insert(
            ROOT,
            OsStr::new("a"),
            Loc::one(0),
            Some(LinkKey::Upper(5, 77)),
            true,
        );
        let b = t.insert(
            ROOT,
            OsStr::new("b"),
            Loc::one(0),
            Some(LinkKey::Upper(5, 77)),
            true,
        );
        assert_eq!(a, b);
        t.detach(ROOT, OsStr::new("a"));
        assert_eq!(t.get(a).map(|i| i.path), Some(PathBuf::from("b")));
        let d = t.insert(ROOT, OsStr::new("d"), Loc::one(0), None, true);
        t.add_link(a, d, OsStr::new("c"), (5, 77));
        t.rename(ROOT, OsStr::new("b"), ROOT, OsStr::new("b2"));
        t.detach(d, OsStr::new("c"));
        assert_eq!(t.get(a).map(|i| i.path), Some(PathBuf::from("b2")));
    }

    #[test]
    fn lower_hard_links_are_one_node_until_a_name_is_split_off() {
        let t = Tree::new(Loc::one(0));
        let key = Some(LinkKey::Lower(2, 5, 77));
        let a = t.insert(ROOT, OsStr::new("a"), Loc::one(2), key, true);
        let b = t.insert(ROOT, OsStr::new("b"), Loc::one(2), key, true);
        let c = t.insert(ROOT, OsStr::new("c"), Loc::one(2), key, false);
        assert!(a == b && b == c);
        // The same inode number in another layer is another file.
        let o = t.insert(
            ROOT,
            OsStr::new("o"),
            Loc::one(1),
            Some(LinkKey::Lower(1, 5, 77)),
            true,
        );
        assert_ne!(o, a);
        // Only counted lookups pick the name to copy up.
        assert_eq!(t.last_name(a), Some((ROOT, OsString::from("b"))));
        t.insert(ROOT, OsStr::new("c"), Loc::one(2), key, true);
        assert_eq!(t.last_name(a), Some((ROOT, OsString::from("c"))));

        t.split_off(a, ROOT, OsStr::new("c"));
        assert_eq!(t.get(a).map(|i| i.path), Some(PathBuf::from("c")));
        assert_eq!(t.last_name(a), None);
        assert_eq!(t.insert(ROOT, OsStr::new("c"), Loc::one(0), None, true), a);
        let rest = t.child(ROOT, OsStr::new("a"));
        assert!(rest.is_some_and(|r| r != a));
        assert_eq!(t.child(ROOT, OsStr::new("b")), rest);
        assert_eq!(t.child(ROOT, OsStr::new("c")), Some(a));
        // The group lives on in the new node: a fresh lookup by key finds it.
        t.detach(ROOT, OsStr::new("b"));
        assert_eq!(
            t.insert(ROOT, OsStr::new("b"), Loc::one(2), key, true),
            rest.unwrap_or(a)
        );
        // Unlinking a name leaves the rest: the last name left is the primary one.
        t.detach(ROOT, OsStr::new("a"));
        let r = rest.unwrap_or(a);
        assert_eq!(t.get(r).map(|i| i.path), Some(PathBuf::from("b")));
    }

    #[test]
    fn a_listed_name_joins_its_link_group_on_lookup() {
        let t = Tree::new(Loc::one(0));
        let key = Some(LinkKey::Lower(1, 5, 9));
        // A listing made both without keys; the first lookup makes `a` the group.
        let a = t.insert(ROOT, OsStr::new("a"), Loc::one(1), None, false);
        let b = t.insert(ROOT, OsStr::new("b"), Loc::one(1), None, true);
        assert_ne!(a, b);
        assert_eq!(t.insert(ROOT, OsStr::new("a"), Loc::one(1), key, true), a);
        // `b` moves over; its old node lives on, nameless, until the kernel forgets it.
        assert_eq!(t.insert(ROOT, OsStr::new("b"), Loc::one(1), key, true), a);
        assert_eq!(t.child(ROOT, OsStr::new("b")), Some(a));
        assert!(t.get(b).is_some_and(|i| !i.attached));
        t.forget(b, 1);
        assert!(t.get(b).is_none());
    }

    #[test]
    fn a_group_copied_up_before_its_other_names_were_seen_does_not_take_them() {
        let t = Tree::new(Loc::one(0));
        let key = Some(LinkKey::Lower(1, 5, 9));
        let a = t.insert(ROOT, OsStr::new("a"), Loc::one(1), key, true);
        assert_eq!(t.last_name(a), Some((ROOT, OsString::from("a"))));
        t.split_off(a, ROOT, OsStr::new("a"));
        t.set_loc(a, Loc::one(0));
        let b = t.insert(ROOT, OsStr::new("b"), Loc::one(1), key, true);
        assert_ne!(a, b);
        assert_eq!(t.insert(ROOT, OsStr::new("c"), Loc::one(1), key, true), b);
    }

    #[test]
    fn a_listing_keeps_known_children_and_makes_the_others_uncounted() {
        let t = Tree::new(Loc::one(0));
        let up = Some(LinkKey::Upper(5, 9));
        // Known from a lookup, located in the upper layer.
        let a = t.insert(ROOT, OsStr::new("a"), Loc::one(0), None, true);
        let n = |s| OsStr::new(s);
        let ids = t.insert_listed(
            ROOT,
            [
                (n("a"), 2, None),
                (n("b"), 1, up),
                (n("c"), 2, None),
                (n("d"), 1, up),
            ]
            .into_iter(),
        );
        assert_eq!(ids.len(), 4);
        assert_eq!(ids[0], a);
        // The listing does not move a known child down the stack.
        assert_eq!(t.get(a).map(|i| i.loc), Some(Loc::one(0)));
        assert_eq!(
            t.get(ids[2]).map(|i| (i.loc, i.path)),
            Some((Loc::one(2), "c".into()))
        );
        // Two names of one linked file: one node.
        assert_eq!(ids[1], ids[3]);
        assert_ne!(ids[1], ids[2]);
        assert_eq!(t.child(ROOT, n("d")), Some(ids[1]));
        // Listing again gives the same nodes.
        let again = t.insert_listed(ROOT, [(n("c"), 2, None), (n("a"), 2, None)].into_iter());
        assert_eq!(again, [ids[2], a]);
        // An empty directory's listing leaves no trace.
        let c = ids[2];
        assert!(t.insert_listed(c, std::iter::empty()).is_empty());
        assert!(!t.maps.read().children.contains_key(&c));
    }
}
