//! Open files and directories: the handle table, reads and writes, and merged
//! directory listings.

use super::*;

impl Union {
    fn put_handle(&self, h: Open) -> Fh {
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
        self.handles.write().insert(fh, Arc::new(h));
        fh
    }

    pub(super) fn handle(&self, fh: Fh) -> io::Result<Arc<Open>> {
        self.handles
            .read()
            .get(&fh)
            .cloned()
            .ok_or_else(|| io::Error::from(Errno::EBADF))
    }

    fn file(&self, fh: Fh) -> io::Result<Arc<Open>> {
        let h = self.handle(fh)?;
        match *h {
            Open::File(..) => Ok(h),
            Open::Dir(_) => Err(Errno::EISDIR.into()),
        }
    }

    /// The disk file behind the open file `fh` (for FUSE passthrough).
    pub fn backing_file(&self, fh: Fh) -> io::Result<BackingFile> {
        match &*self.handle(fh)? {
            Open::File(f, upper) => Ok(BackingFile {
                file: f.clone(),
                upper: *upper,
            }),
            Open::Dir(_) => Err(Errno::EISDIR.into()),
        }
    }

    /// Opens `ino` with `open(2)` flags; writing and truncating opens (`O_TRUNC`, also
    /// with `O_RDONLY`) copy the file up first, and `O_TRUNC` empties the upper copy
    /// before the file is handed out, so no open of the node ever reads the lower data
    /// afterwards (the kernel sends `O_TRUNC` with the open once `FUSE_ATOMIC_O_TRUNC`
    /// is negotiated, instead of a later size change).
    pub fn open(&self, ino: Ino, flags: i32) -> io::Result<Fh> {
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let _moving = write.then(|| self.moving.read());
        let info = self
            .tree
            .get(ino)
            .ok_or_else(|| io::Error::from(Errno::ESTALE))?;
        if !info.attached {
            let (f, upper) = self.reopen_unlinked(ino, &info, flags, write)?;
            return Ok(self.put_file(ino, f, upper));
        }
        let trunc = flags & libc::O_TRUNC != 0;
        let info = if write {
            self.copy_up_data(ino, !trunc)?
        } else {
            info
        };
        let path_host = self.abs(info.loc.top(), &info.path);
        let path = path_host.as_path();
        // Offsets come with every request, so O_APPEND must not reach the backing file
        // (pwrite on an O_APPEND fd appends on Linux); creation flags were handled.
        // O_TRUNC truncates even a read-only open on Linux; the file is in the upper
        // layer by now, writable by the daemon.
        let keep = libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME | libc::O_TRUNC;
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .custom_flags((flags & keep) | libc::O_NOFOLLOW)
            .open(path)?;
        // A read-only open of an upper link to a lower file reads lower data: the
        // passthrough bookkeeping must treat it as a lower file.
        let upper = self.is_upper(info.loc.top())
            && (self.shared.is_empty() || !self.shared.is_shared(&f.metadata()?));
        Ok(self.put_file(ino, f, upper))
    }

    /// An unlinked node that is still open elsewhere is reopened through one of its
    /// open files (`/proc/self/fd/N`), as the kernel does for `/proc/PID/fd` links.
    /// A write-open is allowed only when that file is in the upper layer: a lower file
    /// must never be written.
    fn reopen_unlinked(
        &self,
        ino: Ino,
        info: &tree::NodeInfo,
        flags: i32,
        write: bool,
    ) -> io::Result<(File, bool)> {
        let (acc, trunc) = (flags & libc::O_ACCMODE, flags & libc::O_TRUNC);
        let Some(h) = self.any_open_file(ino) else {
            return Err(Errno::ENOENT.into());
        };
        if write && !self.is_upper(info.loc.top()) {
            return Err(Errno::ENOENT.into());
        }
        let Open::File(f, upper) = &*h else {
            return Err(Errno::ENOENT.into());
        };
        use std::os::fd::AsRawFd;
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .custom_flags(trunc & libc::O_TRUNC)
            .open(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
        Ok((f, *upper))
    }

    /// Registers an open file of `ino`.
    pub(super) fn put_file(&self, ino: Ino, f: File, upper: bool) -> Fh {
        let fh = self.put_handle(Open::File(Arc::new(f), upper));
        let mut open = self.open_files.lock();
        open.by_ino.entry(ino).or_default().push(fh);
        open.by_fh.insert(fh, ino);
        fh
    }

    /// Any open file handle of `ino`.
    pub(super) fn any_open_file(&self, ino: Ino) -> Option<Arc<Open>> {
        let fh = self.open_files.lock().by_ino.get(&ino)?.first().copied()?;
        self.open_file(Some(fh))
    }

    /// Reads up to `size` bytes at `offset`; short only at end of file.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let h = self.file(fh)?;
        let Open::File(f, _) = &*h else {
            return Err(Errno::EISDIR.into());
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                // A short read of a regular file on a local filesystem means end of
                // file: asking again would only cost a second pread that returns 0.
                Ok(n) if done + n < buf.len() => {
                    done += n;
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> io::Result<usize> {
        let h = self.file(fh)?;
        let Open::File(f, _) = &*h else {
            return Err(Errno::EISDIR.into());
        };
        f.write_all_at(data, offset)?;
        Ok(data.len())
    }

    /// Flushes a file to disk.
    pub fn fsync(&self, fh: Fh, datasync: bool) -> io::Result<()> {
        let h = self.file(fh)?;
        let Open::File(f, _) = &*h else {
            return Err(Errno::EISDIR.into());
        };
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
    }

    /// Flushes a directory of the upper layer to disk (lower layers never change).
    pub fn fsyncdir(&self, ino: Ino) -> io::Result<()> {
        let info = self.node(ino)?;
        if !self.is_upper(info.loc.top()) {
            return Ok(());
        }
        File::open(self.abs(0, &info.path))?.sync_all()
    }

    /// Allocates or punches space in an open file (`fallocate(2)` mode bits).
    pub fn fallocate(&self, fh: Fh, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let h = self.file(fh)?;
        let Open::File(f, _) = &*h else {
            return Err(Errno::EISDIR.into());
        };
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Errno::EINVAL.into());
        };
        let flags = nix::fcntl::FallocateFlags::from_bits_retain(mode);
        nix::fcntl::fallocate(f, flags, offset, len).map_err(io::Error::from)
    }

    /// Closes a file or directory handle.
    pub fn release(&self, fh: Fh) {
        {
            let mut open = self.open_files.lock();
            if let Some(ino) = open.by_fh.remove(&fh) {
                if let Some(fhs) = open.by_ino.get_mut(&ino) {
                    fhs.retain(|f| *f != fh);
                    if fhs.is_empty() {
                        open.by_ino.remove(&ino);
                    }
                }
            }
        }
        let handle = self.handles.write().remove(&fh);
        // Closed here, after the table lock is gone (close may flush).
        drop(handle);
    }

    /// Snapshots the merged listing of directory `ino` (with `.` and `..`); readdir
    /// offsets index into this snapshot, so they stay stable while it is open.
    pub fn opendir(&self, ino: Ino) -> io::Result<Fh> {
        Ok(self.put_handle(Open::Dir(self.listing(ino)?)))
    }

    /// The merged listing of directory `ino`, with `.` and `..`.
    pub(super) fn listing(&self, ino: Ino) -> io::Result<Arc<Vec<DirEntry>>> {
        let info = self.node(ino)?;
        let parent_ino = self.tree.get(info.parent).map_or(info.st_ino, |p| p.st_ino);
        let mut entries = vec![
            DirEntry {
                name: ".".into(),
                ino: info.st_ino,
                kind: FileKind::Dir,
            },
            DirEntry {
                name: "..".into(),
                ino: parent_ino,
                kind: FileKind::Dir,
            },
        ];
        let listings = self.listings(&info.path, &info.loc.layers)?;
        let merged = self.list_listed(&info.path, &info.loc.layers, &listings)?;
        self.prefetch_subdirs(&info.path, &info.loc.layers, &listings, &merged);
        let ids = self.tree.insert_listed(
            ino,
            merged.iter().map(|m| {
                // Only upper regular files can be hard links that share a node.
                let key = m
                    .meta
                    .as_ref()
                    .and_then(|meta| self.link_key(&Loc::one(m.layer), meta));
                (m.name.as_os_str(), m.layer, key)
            }),
        );
        entries.reserve(merged.len());
        for (m, child) in merged.into_iter().zip(ids) {
            let mut kind = FileKind::of_type(m.ft, 0); // d_type: no device numbers
            if let Some(meta) = &m.meta {
                // A device recorded on an empty file lists as the device.
                if meta.len() == 0 {
                    let p_host = self.abs(m.layer, &info.path.join(&m.name));
                    let p = p_host.as_path();
                    if let Ok(Some(o)) = OverrideStat::read(p) {
                        kind = o.kind.unwrap_or(kind);
                    }
                }
            }
            entries.push(DirEntry {
                name: m.name,
                ino: child.0,
                kind,
            });
        }
        Ok(Arc::new(entries))
    }

    /// The snapshot entries from `offset` on.
    pub fn readdir(&self, fh: Fh) -> io::Result<Arc<Vec<DirEntry>>> {
        match &*self.handle(fh)? {
            Open::Dir(d) => Ok(d.clone()),
            Open::File(..) => Err(Errno::ENOTDIR.into()),
        }
    }

    /// The visible entries of the merged directory `path` over `layers`, in layer order.
    pub fn list_merged(&self, path: &Path, layers: &[usize]) -> io::Result<Vec<Listed>> {
        let listings = self.listings(path, layers)?;
        self.list_listed(path, layers, &listings)
    }

    /// [`Union::list_merged`] with the directory's listings at hand ([`Union::listings`]).
    pub(super) fn list_listed(
        &self,
        path: &Path,
        layers: &[usize],
        listings: &[Option<Arc<lower::LowerDir>>],
    ) -> io::Result<Vec<Listed>> {
        // Lower layers are listed once per mount; the upper every time (kept here, so
        // that the names below can borrow from every layer's entries).
        let mut fresh = Vec::with_capacity(layers.len());
        for (i, &l) in layers.iter().enumerate() {
            fresh.push(match listings.get(i).and_then(Option::as_ref) {
                Some(_) => None,
                None => enoent_is_none(fs::read_dir(self.abs(l, path)))?
                    .map(lower::list_dir)
                    .transpose()?,
            });
        }
        let entries = |i: usize| -> &[lower::LowerEntry] {
            match (listings.get(i).and_then(Option::as_ref), &fresh[i]) {
                (Some(d), _) => &d.entries,
                (None, Some(f)) => f,
                (None, None) => &[],
            }
        };
        let total = (0..layers.len()).map(|i| entries(i).len()).sum();
        let mut out = Vec::with_capacity(total);
        let mut seen: tree::FastSet<&OsStr> = tree::FastSet::default();
        seen.reserve(total);
        let mut hidden: HashSet<OsString> = HashSet::new();
        for (i, &l) in layers.iter().enumerate() {
            let mut layer_whiteouts = Vec::new();
            for entry in entries(i) {
                let name = entry.name.as_os_str();
                match whiteout::classify_name(name) {
                    Marker::Opaque => continue,
                    Marker::Whiteout(x) => {
                        layer_whiteouts.push(x);
                        continue;
                    }
                    Marker::Entry => {}
                }
                if seen.contains(name) || hidden.contains(name) {
                    continue;
                }
                let ft = entry.ft;
                // Char devices and empty regular files may be in-place whiteouts; regular
                // files' metadata also serves hard-link grouping and recorded devices.
                let mut meta = None;
                if let Some(m) = &entry.meta {
                    if (ft.is_char_device() || !self.is_upper(l))
                        && self.is_whiteout_entry(l, || child_path(path, name), name, m)
                    {
                        layer_whiteouts.push(name.to_owned());
                        continue;
                    }
                    meta = ft.is_file().then(|| m.clone());
                }
                seen.insert(name);
                out.push(Listed {
                    name: name.to_owned(),
                    layer: l,
                    ft,
                    meta,
                });
            }
            hidden.extend(layer_whiteouts);
        }
        Ok(out)
    }
}

impl Union {
    /// Queues the lower listings of the subdirectories in `merged` (the listing of
    /// directory `path` over `layers`, whose lower listings are `listings`) for reading
    /// ahead ([`lower::LowerCache::prefetch`]): a tree walk opens them next.
    fn prefetch_subdirs(
        &self,
        path: &Path,
        layers: &[usize],
        listings: &[Option<Arc<lower::LowerDir>>],
        merged: &[Listed],
    ) {
        for m in merged.iter().filter(|m| m.ft.is_dir()) {
            for (&l, d) in layers.iter().zip(listings) {
                let sub = d.as_ref().and_then(|d| d.entry(&m.name));
                if sub.is_some_and(|e| e.ft.is_dir()) {
                    self.lower.prefetch(l, &self.layers[l], path.join(&m.name));
                }
            }
        }
    }
}
