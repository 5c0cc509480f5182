//! Attributes and xattrs: setattr (after a copy-up), statfs, and the user-visible
//! xattrs, the private ones hidden.

use super::*;

impl Union {
    /// Changes size, mode, owner or times, copying the entry up first.
    pub fn setattr(&self, ino: Ino, set: SetAttr, fh: Option<Fh>) -> io::Result<Attr> {
        let _moving = self.moving.read();
        let detached = self.tree.get(ino).is_some_and(|i| !i.attached);
        let open = self
            .open_file(fh)
            .or_else(|| detached.then(|| self.any_open_file(ino)).flatten());
        if detached {
            return self.setattr_unlinked(ino, set, open.as_deref());
        }
        if let (Some(size), Some(Open::File(f, _))) = (set.size, open.as_deref()) {
            // Through the handle: works for open, unlinked files too.
            self.writable()?;
            f.set_len(size)?;
            let only_size = SetAttr { size: None, ..set } == SetAttr::default();
            if only_size {
                return self.getattr(ino, fh);
            }
        }
        // Emptied anyway (an O_TRUNC open without FUSE_ATOMIC_O_TRUNC arrives so): the
        // lower data need not be copied.
        let info = self.copy_up_data(ino, set.size != Some(0))?;
        let path_host = self.abs(0, &info.path);
        let path = path_host.as_path();
        if let (Some(size), None) = (set.size, &open) {
            OpenOptions::new().write(true).open(path)?.set_len(size)?;
        }
        // The record after the changes, when known (spares re-reading it).
        let mut known_ov = None;
        if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            let meta = fs::symlink_metadata(path)?;
            let ov = self.record(Some(ino), &info.loc, &meta, path)?;
            let eff = Effective::new(&meta, ov.as_ref());
            let uid = set.uid.unwrap_or(eff.uid);
            let gid = set.gid.unwrap_or(eff.gid);
            let perm = set.mode.map_or(eff.perm, |m| m & 0o7777);
            let record = ov.is_some() || FileKind::of(&meta) != eff.kind;
            let (ov, _) = self.apply_owner(path, &meta, eff.kind, uid, gid, perm, record)?;
            self.records.wrote(ino, ov);
            known_ov = Some(ov);
        }
        if set.atime.is_some() || set.mtime.is_some() {
            set_times(path, set.atime, set.mtime)?;
        }
        if let Some(ov) = known_ov {
            if let Ok(meta) = fs::symlink_metadata(path) {
                return Ok(self.attr_from(ino, info.st_ino, &info.loc, &meta, ov.as_ref()));
            }
        }
        // Unknown record, or the name went meanwhile: the general path.
        self.getattr(ino, fh)
    }

    /// setattr of an unlinked file, through an open file of it; only files of the
    /// upper layer may change.
    fn setattr_unlinked(&self, ino: Ino, set: SetAttr, open: Option<&Open>) -> io::Result<Attr> {
        self.writable()?;
        let info = self
            .tree
            .get(ino)
            .ok_or_else(|| io::Error::from(Errno::ESTALE))?;
        let Some(Open::File(f, _)) = open else {
            return Err(Errno::ENOENT.into());
        };
        if !self.is_upper(info.loc.top()) {
            return Err(Errno::ENOENT.into());
        }
        if let Some(size) = set.size {
            f.set_len(size)?;
        }
        if let Some(mode) = set.mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            nix::unistd::fchown(
                f,
                set.uid.map(nix::unistd::Uid::from_raw),
                set.gid.map(nix::unistd::Gid::from_raw),
            )?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = |t: Option<SetTime>| match t {
                None => nix::sys::time::TimeSpec::new(0, libc::UTIME_OMIT),
                Some(SetTime::Now) => nix::sys::time::TimeSpec::new(0, libc::UTIME_NOW),
                Some(SetTime::At(t)) => {
                    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    nix::sys::time::TimeSpec::new(d.as_secs() as i64, d.subsec_nanos() as i64)
                }
            };
            nix::sys::stat::futimens(f, &ts(set.atime), &ts(set.mtime))?;
        }
        self.getattr(ino, None)
    }

    /// Filesystem statistics of the upper (or topmost) layer.
    pub fn statfs(&self) -> io::Result<StatFs> {
        let s = nix::sys::statvfs::statvfs(&self.layers[0])?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: s.block_size() as u32,
            namelen: s.name_max() as u32,
            frsize: s.fragment_size() as u32,
        })
    }

    fn top_path(&self, ino: Ino) -> io::Result<HostPath> {
        let info = self.node(ino)?;
        Ok(self.abs(info.loc.top(), &info.path))
    }

    /// The value of a user-visible xattr (ENODATA when absent or private).
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> io::Result<Vec<u8>> {
        if is_acl_xattr(name) {
            return Err(Errno::EOPNOTSUPP.into());
        }
        if is_private_xattr(name) {
            return Err(Errno::ENODATA.into());
        }
        xattr::get(self.top_path(ino)?, name)?.ok_or_else(|| io::Error::from(Errno::ENODATA))
    }

    /// The user-visible xattr names, each NUL-terminated (the `listxattr` format).
    pub fn listxattr(&self, ino: Ino) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let names = match xattr::list(self.top_path(ino)?) {
            Ok(n) => n,
            Err(e) if ownership::is_unsupported(&e) => return Ok(out),
            Err(e) => return Err(e),
        };
        for n in names.filter(|n| !is_private_xattr(n) && !is_acl_xattr(n)) {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// Sets an xattr (copying up first). `flags` are `XATTR_CREATE`/`XATTR_REPLACE`.
    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let _moving = self.moving.read();
        if is_acl_xattr(name) {
            return Err(Errno::EOPNOTSUPP.into());
        }
        if is_private_xattr(name) {
            return Err(Errno::EPERM.into());
        }
        let info = self.copy_up(ino)?;
        let path_host = self.abs(0, &info.path);
        let path = path_host.as_path();
        if flags & (libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            let exists = xattr::get(path, name)?.is_some();
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(Errno::EEXIST.into());
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(Errno::ENODATA.into());
            }
        }
        xattr::set(path, name, value)
    }

    /// Removes an xattr (copying up first).
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> io::Result<()> {
        let _moving = self.moving.read();
        if is_private_xattr(name) {
            return Err(Errno::EPERM.into());
        }
        let info = self.node(ino)?;
        if xattr::get(self.abs(info.loc.top(), &info.path), name)?.is_none() {
            return Err(Errno::ENODATA.into());
        }
        let info = self.copy_up(ino)?;
        xattr::remove(self.abs(0, &info.path), name)
    }
}
