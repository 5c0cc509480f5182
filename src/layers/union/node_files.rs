//! Files served without opens: the kernel's no-open mode (`FUSE_NO_OPEN_SUPPORT`).
//!
//! Once the daemon answers one OPEN with ENOSYS, the kernel opens regular files of
//! the mount itself: no OPEN and no RELEASE reach the daemon any more (half the
//! requests of a build, whose Python and shell start-ups open thousands of cached
//! files), and reads, writes, fsyncs and truncates arrive with file handle 0. The
//! union then serves each node through one disk file of its own, a *node file*,
//! opened on the first READ or WRITE of the node:
//! - a read opens the node's topmost copy read-only; a write (or fallocate) copies
//!   the node up and opens the upper copy for reading and writing, replacing the
//!   read-only file;
//! - **a copy-up by any other route** (a truncate, chmod, link, a write through a
//!   created file's handle) drops a read-only node file, so no read after the copy-up
//!   is served from the lower copy ([`Union::node_file_copied_up`]);
//! - **a name that goes** (unlink, or a rename over it) first pins its node's file,
//!   opened while the name still exists, because the kernel may still hold the file
//!   open: reads, writes, stat and chmod of an open, unlinked file keep working
//!   through it, as they do through a handle ([`Union::pin_node_file`]);
//! - a created file (CREATE still arrives, but its handle is never released) is the
//!   node's file from the start, open for reading and writing;
//! - a node file is closed when the kernel forgets the node; files of attached nodes
//!   are also closed, least recently used first, beyond [`CACHED`] of them (they
//!   reopen by path). Pinned files stay until the forget.
//!
//! Node files are ordinary handles of the union's handle table, so everything that
//! works through an open file (an unlinked node's attributes, reopening it through
//! `/proc/self/fd`) works through them. `O_TRUNC` arrives as a size change (the adapter
//! does not negotiate `FUSE_ATOMIC_O_TRUNC` in this mode: the kernel would drop it).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;

use super::{Fh, Ino, Union};
use crate::layers::ownership::FileKind;

/// Node files of attached nodes kept open at most (about one fd each).
pub const CACHED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeFile {
    fh: Fh,
    /// Opened for writing: the node's upper copy.
    writable: bool,
}

/// The node files of a union, by node.
#[derive(Debug)]
pub(super) struct NodeFiles {
    /// On once the adapter chose the no-open mode (at INIT).
    enabled: std::sync::atomic::AtomicBool,
    inner: parking_lot::Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    cached: lru::LruCache<Ino, NodeFile>,
    /// Files of nodes whose name went while the kernel may hold them open.
    pinned: HashMap<Ino, NodeFile>,
}

impl Default for NodeFiles {
    fn default() -> NodeFiles {
        NodeFiles {
            enabled: false.into(),
            inner: parking_lot::Mutex::new(Inner {
                cached: lru::LruCache::unbounded(),
                pinned: HashMap::new(),
            }),
        }
    }
}

impl Inner {
    fn get(&mut self, ino: Ino) -> Option<NodeFile> {
        self.pinned
            .get(&ino)
            .copied()
            .or_else(|| self.cached.get(&ino).copied())
    }

    fn remove(&mut self, ino: Ino) -> Option<NodeFile> {
        self.pinned.remove(&ino).or_else(|| self.cached.pop(&ino))
    }
}

impl Union {
    /// Turns on the no-open mode (see the module header); the adapter does so at
    /// INIT, before any request.
    pub fn set_no_open(&self) {
        self.node_files
            .enabled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the kernel opens files without the daemon.
    pub fn no_open(&self) -> bool {
        self.node_files
            .enabled
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The handle that serves a READ (`write` false) or a WRITE of `ino` sent
    /// without an open (file handle 0), opened on first use.
    pub fn node_file(&self, ino: Ino, write: bool) -> io::Result<Fh> {
        if let Some(f) = self.node_files.inner.lock().get(ino) {
            if f.writable || !write {
                return Ok(f.fh);
            }
        }
        // A write copies up (through `open`), which drops the read-only file.
        let flags = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let fh = self.open(ino, flags)?;
        let new = NodeFile {
            fh,
            writable: write,
        };
        let mut release = Vec::new();
        let chosen = {
            let mut inner = self.node_files.inner.lock();
            match inner.get(ino) {
                // Another request opened one meanwhile, at least as good.
                Some(f) if f.writable || !write => {
                    release.push(fh);
                    f.fh
                }
                old => {
                    if let Some(old) = old {
                        release.push(old.fh);
                    }
                    if let Some(pinned) = inner.pinned.get_mut(&ino) {
                        *pinned = new;
                    } else {
                        inner.cached.put(ino, new);
                    }
                    self.trim_node_files(&mut inner, &mut release);
                    fh
                }
            }
        };
        for fh in release {
            self.release(fh);
        }
        Ok(chosen)
    }

    /// Makes `fh`, a file of `ino` open for reading and writing (just created), the
    /// node's file.
    pub(super) fn adopt_node_file(&self, ino: Ino, fh: Fh) {
        let new = NodeFile { fh, writable: true };
        let mut release = Vec::new();
        {
            let mut inner = self.node_files.inner.lock();
            release.extend(inner.cached.put(ino, new).map(|old| old.fh));
            self.trim_node_files(&mut inner, &mut release);
        }
        for fh in release {
            self.release(fh);
        }
    }

    /// Closes (into `release`) the least recently used files of attached nodes
    /// beyond [`CACHED`].
    fn trim_node_files(&self, inner: &mut Inner, release: &mut Vec<Fh>) {
        while inner.cached.len() > CACHED {
            let Some((victim, f)) = inner.cached.pop_lru() else {
                break;
            };
            // A node detached by a route that did not pin it keeps its file.
            if self.tree.get(victim).is_some_and(|i| !i.attached) {
                inner.pinned.insert(victim, f);
            } else {
                release.push(f.fh);
            }
        }
    }

    /// The node file of `ino`, if one is open (an fsync needs no new one).
    pub fn open_node_file(&self, ino: Ino) -> Option<Fh> {
        self.node_files.inner.lock().get(ino).map(|f| f.fh)
    }

    /// Drops a read-only node file of `ino` once the node is copied up: it reads the
    /// lower copy, which no longer is the node's data.
    pub(super) fn node_file_copied_up(&self, ino: Ino) {
        if !self.no_open() {
            return;
        }
        let dropped = {
            let mut inner = self.node_files.inner.lock();
            match inner.get(ino) {
                Some(f) if !f.writable => inner.remove(ino),
                _ => None,
            }
        };
        if let Some(f) = dropped {
            self.release(f.fh);
        }
    }

    /// Before the name `parent/name` goes: keeps the file of its node open (pinned)
    /// while the kernel may hold it, since the name no longer reaches the data.
    /// Nodes the kernel never looked up cannot be open and are skipped.
    pub(super) fn pin_node_file(&self, parent: Ino, name: &std::ffi::OsStr) -> io::Result<()> {
        if !self.no_open() {
            return Ok(());
        }
        let Some(ino) = self.tree.child(parent, name) else {
            return Ok(());
        };
        let mut inner = self.node_files.inner.lock();
        if let Some(f) = inner.cached.pop(&ino) {
            inner.pinned.insert(ino, f);
            return Ok(());
        }
        if inner.pinned.contains_key(&ino) {
            return Ok(());
        }
        drop(inner);
        let info = self.node(ino)?;
        let path = self.abs(info.loc.top(), &info.path);
        let meta = std::fs::symlink_metadata(path.as_path())?;
        if FileKind::of(&meta) != FileKind::File {
            return Ok(());
        }
        // The upper copy for reading and writing (an unlinked file stays writable
        // through open descriptors); a lower one read-only.
        let upper = self.is_upper(info.loc.top());
        let open = |write: bool| {
            OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path.as_path())
        };
        let (f, writable) = match open(upper) {
            Ok(f) => (f, upper),
            Err(e) if upper && e.raw_os_error() == Some(libc::EACCES) => (open(false)?, false),
            Err(e) => return Err(e),
        };
        let upper = upper && (self.shared.is_empty() || !self.shared.is_shared(&f.metadata()?));
        let fh = self.put_file(ino, f, upper);
        let old = self
            .node_files
            .inner
            .lock()
            .pinned
            .insert(ino, NodeFile { fh, writable });
        if let Some(old) = old {
            self.release(old.fh);
        }
        Ok(())
    }

    /// After a FORGET: closes the node file of a node the kernel no longer knows.
    pub(super) fn node_file_forgotten(&self, ino: Ino) {
        if !self.no_open() || self.tree.lookups(ino).is_some_and(|n| n > 0) {
            return;
        }
        let dropped = self.node_files.inner.lock().remove(ino);
        if let Some(f) = dropped {
            self.release(f.fh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::union::{SetAttr, UnionOptions};
    use std::ffi::OsStr;
    use std::fs;
    use std::path::PathBuf;

    struct Fixture {
        _t: tempfile::TempDir,
        lower: PathBuf,
        upper: PathBuf,
        u: Union,
    }

    /// A union in the no-open mode over one lower layer holding `files`.
    fn fixture(files: &[(&str, &str)]) -> io::Result<Fixture> {
        let t = tempfile::tempdir()?;
        let (lower, upper, work) = (t.path().join("l"), t.path().join("u"), t.path().join("w"));
        for d in [&lower, &upper, &work] {
            fs::create_dir(d)?;
        }
        for (name, data) in files {
            fs::write(lower.join(name), data)?;
        }
        let u = Union::new(&UnionOptions {
            lowers: vec![lower.clone()],
            upper: Some(upper.clone()),
            work: Some(work),
            ..UnionOptions::default()
        })?;
        u.set_no_open();
        Ok(Fixture {
            _t: t,
            lower,
            upper,
            u,
        })
    }

    impl Fixture {
        fn ino(&self, name: &str) -> io::Result<Ino> {
            Ok(self.u.lookup(super::super::ROOT, OsStr::new(name))?.node)
        }

        fn read(&self, ino: Ino) -> io::Result<String> {
            let fh = self.u.node_file(ino, false)?;
            Ok(String::from_utf8_lossy(&self.u.read(fh, 0, 1 << 16)?).into_owned())
        }
    }

    #[test]
    fn a_write_copies_up_and_every_later_read_sees_it() -> io::Result<()> {
        let f = fixture(&[("f", "lower")])?;
        let ino = f.ino("f")?;
        assert_eq!(f.read(ino)?, "lower");
        let fh = f.u.node_file(ino, true)?;
        f.u.write(fh, 0, b"L")?;
        assert_eq!(f.read(ino)?, "Lower");
        assert_eq!(fs::read_to_string(f.upper.join("f"))?, "Lower");
        assert_eq!(fs::read_to_string(f.lower.join("f"))?, "lower");
        Ok(())
    }

    /// A read-only node file reads the lower copy: a copy-up by another route (a
    /// truncate by path, a chmod followed by a write through a created file's
    /// handle...) must not leave reads on it.
    #[test]
    fn a_copy_up_by_another_route_drops_the_read_only_file() -> io::Result<()> {
        let f = fixture(&[("t", "lower data"), ("m", "lower")])?;
        let t = f.ino("t")?;
        assert_eq!(f.read(t)?, "lower data");
        let trunc = SetAttr {
            size: Some(3),
            ..SetAttr::default()
        };
        f.u.setattr(t, trunc, None)?;
        assert_eq!(f.read(t)?, "low");
        let m = f.ino("m")?;
        assert_eq!(f.read(m)?, "lower");
        let chmod = SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        };
        f.u.setattr(m, chmod, None)?;
        // Changed behind the read-only file: a write by path into the upper copy.
        fs::write(f.upper.join("m"), "upper")?;
        assert_eq!(f.read(m)?, "upper");
        Ok(())
    }

    #[test]
    fn an_unlinked_file_stays_readable_until_the_kernel_forgets_it() -> io::Result<()> {
        let f = fixture(&[("low", "lower"), ("x", "over")])?;
        let low = f.ino("low")?;
        f.u.unlink(super::super::ROOT, OsStr::new("low"))?;
        // Pinned before the name went, though never read before.
        assert_eq!(f.read(low)?, "lower");
        assert_eq!(f.u.getattr(low, None)?.size, 5);
        // An upper file replaced by a rename stays readable and writable.
        let (parent, caller) = (super::super::ROOT, super::super::Caller { uid: 0, gid: 0 });
        let (a, fh) =
            f.u.create(parent, OsStr::new("new"), 0o644, libc::O_WRONLY, caller)?;
        assert_eq!(fh, Fh(0), "the kernel gets no handle to release");
        let w = f.u.node_file(a.node, true)?;
        f.u.write(w, 0, b"created")?;
        f.u.rename(parent, OsStr::new("x"), parent, OsStr::new("new"), 0)?;
        assert_eq!(f.read(a.node)?, "created");
        let w = f.u.node_file(a.node, true)?;
        f.u.write(w, 7, b"!")?;
        assert_eq!(f.read(a.node)?, "created!");
        let before = f.u.handles.read().len();
        f.u.forget(low, 1);
        f.u.forget(a.node, 1);
        assert_eq!(f.u.handles.read().len(), before - 2, "both files closed");
        assert_eq!(f.u.open_node_file(low), None);
        Ok(())
    }

    #[test]
    fn files_of_attached_nodes_are_bounded_and_reopen_by_path() -> io::Result<()> {
        let names: Vec<String> = (0..CACHED + 20).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), n.as_str())).collect();
        let f = fixture(&files)?;
        for n in &names {
            let ino = f.ino(n)?;
            assert_eq!(&f.read(ino)?, n);
        }
        assert!(f.u.handles.read().len() <= CACHED);
        let first = f.ino("f0")?;
        assert_eq!(f.read(first)?, "f0");
        Ok(())
    }
}
