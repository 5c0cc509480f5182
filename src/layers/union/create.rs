//! Creation: new entries in the upper layer, over whiteouts (a new directory there
//! is made opaque), with their owner applied or recorded.

use super::*;

impl Union {
    /// Readies `parent/name` for a new entry: the parent in the upper layer, no visible
    /// entry of that name, in-place whiteouts removed. Returns the parent's info, the
    /// upper path, and whether a whiteout was there (a new directory must be opaque).
    fn prepare_new(
        &self,
        parent: Ino,
        name: &OsStr,
    ) -> io::Result<(tree::NodeInfo, HostPath, bool)> {
        self.writable()?;
        if whiteout::classify_name(name) != Marker::Entry {
            return Err(Errno::EINVAL.into());
        }
        let pinfo = self.node(parent)?;
        let in_upper = self.is_upper(pinfo.loc.top());
        let has_lowers = pinfo.loc.layers.iter().any(|&l| !self.is_upper(l));
        // An OCI whiteout only matters over a lower directory. A name taken in the upper
        // shows as EEXIST from the creating call itself (O_EXCL and the like), and a
        // whiteout device there is replaced then (see `make_in_place`).
        let mut had_whiteout =
            in_upper && has_lowers && has_whiteout_file(self.abs(0, &pinfo.path).as_path(), name)?;
        let mut kernel_whiteout = false;
        if !had_whiteout && has_lowers && self.lower_has(&pinfo, name)? {
            // Shown from below, unless a whiteout device occupies the name in the upper.
            if in_upper {
                let dst_host = self.abs(0, &child_path(&pinfo.path, name));
                let dst = dst_host.as_path();
                if let Some(meta) = enoent_is_none(fs::symlink_metadata(dst))? {
                    kernel_whiteout = whiteout::classify(dst, name, &meta) != Marker::Entry;
                }
            }
            if !kernel_whiteout {
                return Err(Errno::EEXIST.into());
            }
            had_whiteout = true;
        }
        let pinfo = self.copy_up(parent)?;
        let dst_host = self.abs(0, &child_path(&pinfo.path, name));
        if kernel_whiteout {
            fs::remove_file(dst_host.as_path())?;
        }
        Ok((pinfo, dst_host, had_whiteout))
    }

    /// Runs `make` at `dst` (the upper path of `name`); when the name is taken by a
    /// whiteout device that hides nothing, removes it and runs `make` again. Sets
    /// `had_whiteout` then. Any other taken name stays EEXIST.
    fn make_in_place<T>(
        &self,
        dst: &Path,
        name: &OsStr,
        had_whiteout: &mut bool,
        mut make: impl FnMut(&Path) -> io::Result<T>,
    ) -> io::Result<T> {
        match make(dst) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let meta = fs::symlink_metadata(dst)?;
                if whiteout::classify(dst, name, &meta) == Marker::Entry {
                    return Err(e);
                }
                fs::remove_file(dst)?;
                *had_whiteout = true;
                make(dst)
            }
            r => r,
        }
    }

    /// After a new entry appeared at `dst`: a directory that replaces a whiteout turns
    /// opaque, then the OCI whiteout goes (in this order, so the lower entry never shows).
    fn settle_whiteout(
        &self,
        pinfo: &tree::NodeInfo,
        name: &OsStr,
        dst: &Path,
        had_whiteout: bool,
    ) -> io::Result<()> {
        if !had_whiteout {
            return Ok(());
        }
        if fs::symlink_metadata(dst)?.is_dir() {
            whiteout::write_opaque(dst)?;
        }
        let wh_host = self.abs(0, &pinfo.path.join(whiteout::whiteout_name(name)));
        let wh = wh_host.as_path();
        match fs::remove_file(wh) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Finishes a new entry at `dst`: whiteouts settled, a fresh node. `meta` is the
    /// entry's `lstat` when known to be current.
    #[allow(clippy::too_many_arguments)]
    fn finish_new(
        &self,
        parent: Ino,
        pinfo: &tree::NodeInfo,
        name: &OsStr,
        dst: &Path,
        had_whiteout: bool,
        known_ov: Option<Option<OverrideStat>>,
        meta: Option<Metadata>,
    ) -> io::Result<Attr> {
        self.settle_whiteout(pinfo, name, dst, had_whiteout)?;
        self.tree.detach(parent, name);
        // Turning a directory opaque writes an xattr: its ctime moves.
        let meta = match meta {
            Some(m) if !had_whiteout => m,
            _ => fs::symlink_metadata(dst)?,
        };
        let loc = Loc::one(0);
        let key = self.link_key(&loc, &meta);
        let id = self.tree.insert(parent, name, loc.clone(), key, true);
        match known_ov {
            Some(ov) => {
                self.records.wrote(id, ov);
                Ok(self.attr_from(id, id.0, &loc, &meta, ov.as_ref()))
            }
            None => self.attr(id, id.0, &loc, &meta, dst),
        }
    }

    /// The owner group and permission bits of a new entry, honouring a setgid parent.
    fn new_owner(
        &self,
        parent: Ino,
        pinfo: &tree::NodeInfo,
        caller: Caller,
        perm: u32,
        is_dir: bool,
    ) -> io::Result<(u32, u32)> {
        // The parent is in the upper layer by now (prepare_new copied it up).
        let p_host = self.abs(pinfo.loc.top(), &pinfo.path);
        let p = p_host.as_path();
        let meta = fs::symlink_metadata(p)?;
        let ov = self.record(Some(parent), &pinfo.loc, &meta, p)?;
        let peff = Effective::new(&meta, ov.as_ref());
        if peff.perm & libc::S_ISGID != 0 {
            let perm = if is_dir { perm | libc::S_ISGID } else { perm };
            return Ok((peff.gid, perm));
        }
        Ok((caller.gid, perm))
    }

    /// Makes a new entry with `make` (which returns the kind it put on disk and, for a
    /// regular file, the file it opened) and gives it its owner and mode.
    fn create_entry(
        &self,
        parent: Ino,
        name: &OsStr,
        kind: FileKind,
        perm: u32,
        caller: Caller,
        make: impl FnMut(&Path) -> io::Result<(FileKind, Option<File>)>,
    ) -> io::Result<(Attr, Option<File>)> {
        let _moving = self.moving.read();
        let (pinfo, dst_host, mut had_wh) = self.prepare_new(parent, name)?;
        let dst = dst_host.as_path();
        let (gid, perm) =
            self.new_owner(parent, &pinfo, caller, perm & 0o7777, kind == FileKind::Dir)?;
        let (on_disk, file) = self.make_in_place(dst, name, &mut had_wh, make)?;
        let meta = match &file {
            Some(f) => f.metadata(),
            None => fs::symlink_metadata(dst),
        };
        let owned = meta.and_then(|meta| {
            self.apply_owner(dst, &meta, kind, caller.uid, gid, perm, on_disk != kind)
                .map(|(ov, changed)| (ov, (!changed).then_some(meta)))
        });
        let (ov, meta) = match owned {
            Ok(r) => r,
            Err(e) => {
                let _ = remove_any(dst);
                return Err(e);
            }
        };
        let attr = self.finish_new(parent, &pinfo, name, dst, had_wh, Some(ov), meta)?;
        Ok((attr, file))
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, caller: Caller) -> io::Result<Attr> {
        self.create_entry(parent, name, FileKind::Dir, mode, caller, |p| {
            fs::create_dir(p)?;
            fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
            Ok((FileKind::Dir, None))
        })
        .map(|(a, _)| a)
    }

    /// Creates a fifo, socket, device node or empty regular file (`mode` has the type bits).
    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> io::Result<Attr> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFIFO => FileKind::Pipe,
            libc::S_IFSOCK => FileKind::Socket,
            // Device 0/0 is a whiteout: kernel overlayfs refuses to create one too.
            libc::S_IFCHR if rdev == 0 => return Err(Errno::EPERM.into()),
            libc::S_IFCHR => FileKind::Char {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            },
            libc::S_IFBLK => FileKind::Block {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            },
            _ => return Err(Errno::EINVAL.into()),
        };
        self.create_entry(parent, name, kind, mode, caller, |p| {
            if kind == FileKind::File {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(p)?;
                Ok((FileKind::File, Some(f)))
            } else {
                Ok((self.make_special(p, kind, 0o600)?, None))
            }
        })
        .map(|(a, _)| a)
    }

    /// Creates a symlink.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> io::Result<Attr> {
        self.create_entry(parent, name, FileKind::Symlink, 0o777, caller, |p| {
            std::os::unix::fs::symlink(target, p)?;
            Ok((FileKind::Symlink, None))
        })
        .map(|(a, _)| a)
    }

    /// Creates and opens a regular file; returns its attributes and a file handle.
    pub fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> io::Result<(Attr, Fh)> {
        let (attr, file) = self.create_entry(parent, name, FileKind::File, mode, caller, |p| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)?;
            Ok((FileKind::File, Some(f)))
        })?;
        let f = match file {
            // Without opens the kernel releases no handle: the file, open for
            // reading and writing (the kernel checks the access mode itself), becomes
            // the node's own and the kernel gets handle 0.
            Some(f) if self.no_open() => {
                let fh = self.put_file(attr.node, f, true);
                self.adopt_node_file(attr.node, fh);
                return Ok((attr, Fh(0)));
            }
            Some(f) if flags & libc::O_ACCMODE != libc::O_RDONLY => f,
            // Read-only create: reopen read-only so a later write fails with EBADF.
            _ => {
                let info = self.node(attr.node)?;
                File::open(self.abs(0, &info.path))?
            }
        };
        Ok((attr, self.put_file(attr.node, f, true)))
    }

    /// Makes a hard link `newparent/newname` to `ino`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> io::Result<Attr> {
        let _moving = self.moving.read();
        let info = self.copy_up(ino)?;
        let (pinfo, dst_host, had_wh) = self.prepare_new(newparent, newname)?;
        let dst = dst_host.as_path();
        let src_host = self.abs(0, &info.path);
        let src = src_host.as_path();
        fs::hard_link(src, dst)?;
        self.settle_whiteout(&pinfo, newname, dst, had_wh)?;
        let meta = fs::symlink_metadata(dst)?;
        self.tree.detach(newparent, newname);
        self.tree
            .add_link(ino, newparent, newname, (meta.dev(), meta.ino()));
        self.getattr(ino, None)
    }
}
