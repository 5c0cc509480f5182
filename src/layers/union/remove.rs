//! Removal and rename: whiteouts for names that exist below, and renames through the
//! upper layer (a lower directory's through [`super::rename_dir`]).

use super::*;

impl Union {
    /// Removes a non-directory.
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    /// Removes an empty directory (entries hidden by whiteouts do not count).
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> io::Result<()> {
        let _moving = self.moving.read();
        self.writable()?;
        let pinfo = self.node(parent)?;
        let (loc, meta) = self
            .resolve_child(&pinfo, name)?
            .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
        match (dir, meta.is_dir()) {
            (true, false) => return Err(Errno::ENOTDIR.into()),
            (false, true) => return Err(Errno::EISDIR.into()),
            _ => {}
        }
        let path = pinfo.path.join(name);
        if dir && !self.list_merged(&path, &loc.layers)?.is_empty() {
            return Err(Errno::ENOTEMPTY.into());
        }
        let needs_whiteout = self.lower_has(&pinfo, name)?;
        let pinfo = if needs_whiteout {
            self.copy_up(parent)?
        } else {
            pinfo
        };
        if !dir {
            self.pin_node_file(parent, name)?;
        }
        if self.is_upper(loc.top()) {
            let p_host = self.abs(0, &path);
            let p = p_host.as_path();
            if dir {
                clear_markers(p)?;
                fs::remove_dir(p)?;
            } else {
                fs::remove_file(p)?;
            }
        }
        if needs_whiteout {
            whiteout::write_whiteout(self.abs(0, &pinfo.path).as_path(), name)?;
        }
        self.tree.detach(parent, name);
        Ok(())
    }

    /// Renames `parent/name` to `newparent/newname`. Supports `RENAME_NOREPLACE`;
    /// `RENAME_EXCHANGE` and `RENAME_WHITEOUT` fail with EINVAL. A directory present
    /// in a lower layer is copied to the new name ([`rename_dir`]).
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(Errno::EINVAL.into());
        }
        self.writable()?;
        if whiteout::classify_name(newname) != Marker::Entry {
            return Err(Errno::EINVAL.into());
        }
        // Most renames move one name and share the lock; a lower directory's takes it
        // alone. Whether the source is one is known only after resolving it, and may
        // change until the lock is held: decided under the lock, retried once with the
        // other kind when it changed.
        let mut alone = false;
        loop {
            let r = if alone {
                let _g = self.moving.write();
                self.rename_locked(parent, name, newparent, newname, flags, true)
            } else {
                let _g = self.moving.read();
                self.rename_locked(parent, name, newparent, newname, flags, false)
            };
            match r {
                Err(e) if e.raw_os_error() == Some(RETRY_ALONE) && !alone => alone = true,
                r => return r,
            }
        }
    }

    /// [`Union::rename`] under the `moving` lock, held exclusively when `alone`; fails
    /// with [`RETRY_ALONE`] for a lower directory when not.
    fn rename_locked(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
        alone: bool,
    ) -> io::Result<()> {
        let pinfo = self.node(parent)?;
        let (sloc, smeta) = self
            .resolve_child(&pinfo, name)?
            .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
        let src_dir = smeta.is_dir();
        let lower_dir = src_dir && sloc.layers.iter().any(|&l| !self.is_upper(l));
        if lower_dir && !alone {
            return Err(io::Error::from_raw_os_error(RETRY_ALONE));
        }
        let npinfo = self.node(newparent)?;
        let target = self.resolve_child(&npinfo, newname)?;
        if let Some((tloc, tmeta)) = &target {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST.into());
            }
            if parent == newparent && name == newname {
                return Ok(());
            }
            match (src_dir, tmeta.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR.into()),
                (false, true) => return Err(Errno::EISDIR.into()),
                (true, true)
                    if !self
                        .list_merged(&npinfo.path.join(newname), &tloc.layers)?
                        .is_empty() =>
                {
                    return Err(Errno::ENOTEMPTY.into());
                }
                _ => {}
            }
            if !src_dir && tmeta.ino() == smeta.ino() && tmeta.dev() == smeta.dev() {
                // Two names of one file: POSIX says do nothing.
                return Ok(());
            }
            if !tmeta.is_dir() {
                self.pin_node_file(newparent, newname)?;
            }
        }
        if lower_dir {
            let noreplace = flags & RENAME_NOREPLACE != 0;
            return self.rename_lower_dir(parent, name, &sloc, newparent, newname, noreplace);
        }
        let src_node = match self.tree.child(parent, name) {
            Some(id) => id,
            None => {
                let key = self.link_key(&sloc, &smeta);
                self.tree.insert(parent, name, sloc.clone(), key, false)
            }
        };
        // Of a lower hard-link group, this name moves alone.
        self.copy_up_as(src_node, Some((parent, name)), true)?;
        let npinfo = self.copy_up(newparent)?;
        let pinfo = self.node(parent)?;
        // The name given, not the node's path: the node of a hard-link group is known
        // by one of its names, and this rename moves `name` alone.
        let from_host = self.abs(0, &pinfo.path.join(name));
        let from = from_host.as_path();
        let to_host = self.abs(0, &npinfo.path.join(newname));
        let to = to_host.as_path();
        let target_in_lower = self.lower_has(&npinfo, newname)?;
        let wh_path_host = self.abs(0, &npinfo.path.join(whiteout::whiteout_name(newname)));
        let wh_path = wh_path_host.as_path();
        let had_wh = has_whiteout_file(self.abs(0, &npinfo.path).as_path(), newname)?;
        // A kernel-style whiteout or an emptied merged directory may sit at the target.
        if let Some(meta) = enoent_is_none(fs::symlink_metadata(to))? {
            if meta.is_dir() && src_dir {
                clear_markers(to)?;
            } else if whiteout::classify(to, newname, &meta) != Marker::Entry {
                fs::remove_file(to)?;
            }
        }
        let rflags = if flags & RENAME_NOREPLACE != 0 {
            RenameFlags::RENAME_NOREPLACE
        } else {
            RenameFlags::empty()
        };
        nix::fcntl::renameat2(AT_FDCWD, from, AT_FDCWD, to, rflags)?;
        if src_dir && (target_in_lower || had_wh) {
            whiteout::write_opaque(to)?;
        }
        if had_wh {
            fs::remove_file(wh_path)?;
        }
        if self.lower_has(&pinfo, name)? {
            whiteout::write_whiteout(self.abs(0, &pinfo.path).as_path(), name)?;
        }
        self.tree.rename(parent, name, newparent, newname);
        Ok(())
    }
}
