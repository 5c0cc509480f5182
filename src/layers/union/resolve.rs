//! Resolution: a name looked up through the layers (first entry wins, whiteouts
//! stop, directories merge down to an opaque one), and the attributes presented.

use super::*;

impl Union {
    /// Resolves `name` in the directory `dir` (path `dir_path`, layers `dir_layers`).
    /// Returns the child's location and the metadata of its topmost entry.
    fn resolve_in(
        &self,
        dir_path: &Path,
        dir_layers: &[usize],
        name: &OsStr,
    ) -> io::Result<Option<(Loc, Metadata)>> {
        if whiteout::classify_name(name) != Marker::Entry {
            return Ok(None);
        }
        let listings = self.listings(dir_path, dir_layers)?;
        self.resolve_listed(dir_path, dir_layers, &listings, name)
    }

    /// The cached listings of directory `dir_path` in each of `dir_layers` (`None` for
    /// the upper layer and unlistable directories), for [`Union::resolve_listed`].
    pub(super) fn listings(
        &self,
        dir_path: &Path,
        dir_layers: &[usize],
    ) -> io::Result<Vec<Option<Arc<lower::LowerDir>>>> {
        let mut out = Vec::with_capacity(dir_layers.len());
        for &l in dir_layers {
            out.push(if self.is_upper(l) {
                None
            } else {
                self.lower.dir(l, &self.layers[l], dir_path)?
            });
        }
        Ok(out)
    }

    /// [`Union::resolve_in`] with the directory's listings at hand (`listings[i]` is
    /// the listing in `dir_layers[i]`).
    pub(super) fn resolve_listed(
        &self,
        dir_path: &Path,
        dir_layers: &[usize],
        listings: &[Option<Arc<lower::LowerDir>>],
        name: &OsStr,
    ) -> io::Result<Option<(Loc, Metadata)>> {
        let found = self.resolve_entry(dir_path, dir_layers, listings, name)?;
        Ok(found.map(|f| (f.loc, f.meta)))
    }

    /// [`Union::resolve_listed`], with the ownership record of the topmost entry when
    /// its layer's listing holds it.
    fn resolve_entry(
        &self,
        dir_path: &Path,
        dir_layers: &[usize],
        listings: &[Option<Arc<lower::LowerDir>>],
        name: &OsStr,
    ) -> io::Result<Option<Resolved>> {
        if whiteout::classify_name(name) != Marker::Entry {
            return Ok(None);
        }
        // Built only when a disk call needs it: listed lower files need none.
        let rel = std::cell::OnceCell::new();
        let rel = || rel.get_or_init(|| child_path(dir_path, name)).as_path();
        let mut found: Option<Resolved> = None;
        let last = dir_layers.last().copied();
        // Opaqueness only matters when a layer below could show through.
        let opaque = |l: usize| -> io::Result<bool> {
            if Some(l) == last {
                return Ok(true);
            }
            if !self.is_upper(l) {
                if let Some(d) = self.lower.dir(l, &self.layers[l], rel())? {
                    return Ok(d.opaque);
                }
            }
            whiteout::is_opaque_dir(self.abs(l, rel()).as_path())
        };
        for (i, &l) in dir_layers.iter().enumerate() {
            // A lower layer's listing answers for names it lacks without an lstat each
            // for the name and its whiteout, and holds the lstat of its files.
            let mut listed = None;
            let mut ov = None;
            if let Some(Some(d)) = listings.get(i) {
                match d.entry(name) {
                    None if d.has_whiteout(name) => break,
                    None => continue,
                    Some(e) => {
                        listed = e.meta.clone();
                        ov = e.ov;
                    }
                }
            }
            let meta = match listed {
                Some(m) => Some(m),
                None => enoent_is_none(fs::symlink_metadata(self.abs(l, rel()).as_path()))?,
            };
            match meta {
                Some(meta) => {
                    if self.is_whiteout_entry(l, rel, name, &meta) {
                        break;
                    }
                    let is_dir = meta.is_dir();
                    match &mut found {
                        None => {
                            found = Some(Resolved {
                                loc: Loc::one(l),
                                meta,
                                ov,
                            });
                            if !is_dir || opaque(l)? {
                                break;
                            }
                        }
                        Some(f) => {
                            if !is_dir {
                                break;
                            }
                            f.loc.layers.push(l);
                            if opaque(l)? {
                                break;
                            }
                        }
                    }
                }
                // A whiteout hides layers below; the last layer has none (spares an
                // lstat per missing name in directories that exist only in the upper).
                None => {
                    if Some(l) != last && has_whiteout_file(self.abs(l, dir_path).as_path(), name)?
                    {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// True when the entry `name` (a plain name: [`whiteout::classify_name`] said
    /// `Entry`) with metadata `meta` in layer `l` is an in-place whiteout, as
    /// [`whiteout::classify`] decides; its path (`rel`, relative to the layer) is only
    /// built for the one case that reads xattrs, an empty regular file.
    pub(super) fn is_whiteout_entry<P: AsRef<Path>>(
        &self,
        l: usize,
        rel: impl FnOnce() -> P,
        name: &OsStr,
        meta: &Metadata,
    ) -> bool {
        if meta.file_type().is_file() && meta.len() == 0 {
            let host = self.abs(l, rel().as_ref());
            whiteout::classify(host.as_path(), name, meta) != Marker::Entry
        } else {
            whiteout::is_chardev_whiteout(meta)
        }
    }

    pub(super) fn resolve_child(
        &self,
        parent: &tree::NodeInfo,
        name: &OsStr,
    ) -> io::Result<Option<(Loc, Metadata)>> {
        self.resolve_in(&parent.path, &parent.loc.layers, name)
    }

    /// True when `name` shows through from a lower layer of `parent` (so deleting or
    /// renaming it from the upper layer needs a whiteout).
    pub(super) fn lower_has(&self, parent: &tree::NodeInfo, name: &OsStr) -> io::Result<bool> {
        let lowers: Vec<usize> = parent
            .loc
            .layers
            .iter()
            .copied()
            .filter(|&l| !self.is_upper(l))
            .collect();
        Ok(self.resolve_in(&parent.path, &lowers, name)?.is_some())
    }

    /// The ownership record of `node`'s upper file at `path`, known or read.
    fn upper_record(&self, node: Ino, path: &Path) -> io::Result<Option<OverrideStat>> {
        if let Some(r) = self.records.get(node) {
            return Ok(r);
        }
        let r = OverrideStat::read(path)?;
        self.records.read(node, r);
        Ok(r)
    }

    pub(super) fn attr(
        &self,
        node: Ino,
        st_ino: u64,
        loc: &Loc,
        meta: &Metadata,
        path: &Path,
    ) -> io::Result<Attr> {
        let ov = self.record(Some(node), loc, meta, path)?;
        Ok(self.attr_from(node, st_ino, loc, meta, ov.as_ref()))
    }

    /// The ownership record of the entry at `path` (its top layer's file, `loc` and
    /// `meta`), through the caches; an upper file's only when its `node` is known.
    pub(super) fn record(
        &self,
        node: Option<Ino>,
        loc: &Loc,
        meta: &Metadata,
        path: &Path,
    ) -> io::Result<Option<OverrideStat>> {
        let top = loc.top();
        if meta.file_type().is_symlink() {
            Ok(None)
        } else if !self.is_upper(top) {
            self.lower.override_stat(top, path)
        } else if let Some(node) = node {
            self.upper_record(node, path)
        } else {
            OverrideStat::read(path)
        }
    }

    pub(super) fn attr_from(
        &self,
        node: Ino,
        st_ino: u64,
        loc: &Loc,
        meta: &Metadata,
        ov: Option<&OverrideStat>,
    ) -> Attr {
        let eff = Effective::new(meta, ov);
        let time = |s: i64, ns: i64| {
            let d = Duration::new(s.unsigned_abs(), ns.clamp(0, 999_999_999) as u32);
            if s >= 0 {
                SystemTime::UNIX_EPOCH + d
            } else {
                SystemTime::UNIX_EPOCH - d
            }
        };
        // Kernel overlayfs reports 1 for merged directories: their real count is unknown.
        let nlink = if meta.is_dir() && loc.layers.len() > 1 {
            1
        } else if self.is_upper(loc.top()) && self.shared.is_shared(meta) {
            // The lower name of a file a directory rename linked is no name here.
            meta.nlink() as u32 - 1
        } else {
            meta.nlink() as u32
        };
        Attr {
            node,
            ino: st_ino,
            size: meta.size(),
            blocks: meta.blocks(),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            kind: eff.kind,
            perm: eff.perm,
            nlink,
            uid: eff.uid,
            gid: eff.gid,
            rdev: eff.kind.rdev(),
            blksize: meta.blksize() as u32,
            uncached_entry: false,
            from_lower: !self.is_upper(loc.top()),
        }
    }

    /// The disk identity that makes the names of a hard-linked file one node. Names of
    /// a lower file share the node until one is copied up ([`tree::Tree::split_off`]).
    pub(super) fn link_key(&self, loc: &Loc, meta: &Metadata) -> Option<LinkKey> {
        if meta.is_dir() || meta.nlink() < 2 {
            return None;
        }
        let l = loc.top();
        if self.is_upper(l) && self.shared.is_shared(meta) {
            return None;
        }
        Some(if self.is_upper(l) {
            LinkKey::Upper(meta.dev(), meta.ino())
        } else {
            LinkKey::Lower(l, meta.dev(), meta.ino())
        })
    }

    /// Looks `name` up in `parent`, adding one kernel reference to the node.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> io::Result<Attr> {
        let pinfo = self.node(parent)?;
        self.lookup_in(parent, &pinfo, name)
    }

    fn lookup_in(&self, parent: Ino, pinfo: &tree::NodeInfo, name: &OsStr) -> io::Result<Attr> {
        let listings = self.listings(&pinfo.path, &pinfo.loc.layers)?;
        self.lookup_listed(parent, pinfo, &listings, name)
    }

    /// [`Union::lookup_in`] with the parent's listings at hand ([`Union::listings`]).
    fn lookup_listed(
        &self,
        parent: Ino,
        pinfo: &tree::NodeInfo,
        listings: &[Option<Arc<lower::LowerDir>>],
        name: &OsStr,
    ) -> io::Result<Attr> {
        let Resolved { loc, meta, ov } = self
            .resolve_entry(&pinfo.path, &pinfo.loc.layers, listings, name)?
            .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
        let key = self.link_key(&loc, &meta);
        // Attributes first: a failure must not leave a kernel reference behind. The
        // node is not known yet (a known one's cached record serves an upper file).
        let ov = match ov {
            // The record read with the top layer's listing, if that is a lower one.
            Some(ov) if !meta.file_type().is_symlink() => ov,
            _ => {
                let path_host = self.abs(loc.top(), &child_path(&pinfo.path, name));
                let known = self.tree.child(parent, name);
                self.record(known, &loc, &meta, path_host.as_path())?
            }
        };
        let attr = self.attr_from(ROOT, 0, &loc, &meta, ov.as_ref());
        let upper = self.is_upper(loc.top());
        let id = self.tree.insert(parent, name, loc, key, true);
        if upper && !meta.file_type().is_symlink() {
            self.records.read(id, ov);
        }
        Ok(Attr {
            node: id,
            ino: id.0,
            uncached_entry: matches!(key, Some(LinkKey::Lower(..))),
            ..attr
        })
    }

    /// Walks the snapshot of `fh` (directory `dir`) from `offset`, handing `emit` each
    /// entry's next offset, the entry and its attributes as a lookup finds them (one
    /// kernel reference each, except for `.` and `..`), until `emit` reports the reply
    /// full; the entry that did not fit gets its reference back. Entries gone since
    /// `opendir` are skipped.
    pub fn readdirplus(
        &self,
        dir: Ino,
        fh: Fh,
        offset: u64,
        emit: impl FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> io::Result<()> {
        let entries = self.readdir(fh)?;
        self.readdirplus_of(dir, &entries, offset as usize, |i| i as u64 + 1, emit)
    }

    /// [`Union::readdirplus`] of `entries` from index `start`; `cookie(i)` is the
    /// offset of the entry after entry `i`.
    pub(super) fn readdirplus_of(
        &self,
        dir: Ino,
        entries: &[DirEntry],
        start: usize,
        cookie: impl Fn(usize) -> u64,
        mut emit: impl FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> io::Result<()> {
        let pinfo = self.node(dir)?;
        let dir_attr = self.getattr(dir, None)?;
        // One fetch of the layers' listings serves every entry of this reply.
        let listings = self.listings(&pinfo.path, &pinfo.loc.layers)?;
        for (i, e) in entries.iter().enumerate().skip(start) {
            let dots = e.name == "." || e.name == "..";
            let attr = if dots {
                // The kernel takes neither attributes nor a reference from these.
                Attr {
                    node: Ino(e.ino),
                    ino: e.ino,
                    ..dir_attr
                }
            } else {
                match self.lookup_listed(dir, &pinfo, &listings, &e.name) {
                    Ok(a) => a,
                    Err(_) => continue,
                }
            };
            if emit(cookie(i), e, &attr) {
                if !dots {
                    self.forget(attr.node, 1);
                }
                break;
            }
        }
        Ok(())
    }

    /// Drops `n` kernel references to `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.tree.forget(ino, n);
        self.node_file_forgotten(ino);
    }

    /// Attributes of `ino`. The path wins over an open handle (a read-only handle may
    /// still point at the lower copy after a copy-up); the handle answers only when the
    /// name is gone (an open, unlinked file).
    pub fn getattr(&self, ino: Ino, fh: Option<Fh>) -> io::Result<Attr> {
        let info = self
            .tree
            .get(ino)
            .ok_or_else(|| io::Error::from(Errno::ESTALE))?;
        if info.attached {
            let top = info.loc.top();
            let p_host = self.abs(top, &info.path);
            let p = p_host.as_path();
            if !self.is_upper(top) {
                if let Some((meta, ov)) = self.lower.listed(top, &info.path) {
                    let ov = match ov {
                        Some(ov) if !meta.file_type().is_symlink() => ov,
                        _ => self.record(Some(ino), &info.loc, &meta, p)?,
                    };
                    return Ok(self.attr_from(ino, info.st_ino, &info.loc, &meta, ov.as_ref()));
                }
            }
            match fs::symlink_metadata(p) {
                Ok(meta) => return self.attr(ino, info.st_ino, &info.loc, &meta, p),
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                Err(_) => {}
            }
        }
        let h = self
            .open_file(fh)
            .or_else(|| self.any_open_file(ino))
            .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
        let Open::File(f, _) = &*h else {
            return Err(Errno::ENOENT.into());
        };
        let meta = f.metadata()?;
        let ov = match xattr::FileExt::get_xattr(&**f, OVERRIDE_XATTR) {
            Ok(Some(v)) => OverrideStat::parse(&v).ok(),
            _ => None,
        };
        Ok(self.attr_from(ino, info.st_ino, &info.loc, &meta, ov.as_ref()))
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> io::Result<PathBuf> {
        let info = self.node(ino)?;
        fs::read_link(self.abs(info.loc.top(), &info.path))
    }
}
