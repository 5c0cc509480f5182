//! Copy-up: an entry copied into the upper layer (data, mode, owner, times, xattrs)
//! in the work dir, then renamed into place, before any change.

use super::*;

impl Union {
    pub(super) fn tmp_path(&self) -> io::Result<PathBuf> {
        let work = self
            .work
            .as_ref()
            .ok_or_else(|| io::Error::from(Errno::EROFS))?;
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        Ok(work.join(format!("tmp-{}-{n}", std::process::id())))
    }

    /// Makes sure `ino` has its own entry in the upper layer (copying it up with its
    /// parents if needed) and returns its node info with the upper location.
    ///
    /// Of a lower hard-link group only the name last looked up is copied up, as a file
    /// of its own; the other names stay linked in the lower layer (kernel overlayfs
    /// without `index`).
    ///
    /// An upper file that is a hard link to a lower file (a renamed lower directory's)
    /// gets a copy of its own, as a lower file would ([`Union::unshare`]).
    pub fn copy_up(&self, ino: Ino) -> io::Result<tree::NodeInfo> {
        self.copy_up_data(ino, true)
    }

    /// [`Union::copy_up`]; a regular file's data is copied only when `data` (not for a
    /// file about to be emptied: an `O_TRUNC` open).
    pub(super) fn copy_up_data(&self, ino: Ino, data: bool) -> io::Result<tree::NodeInfo> {
        let info = self.copy_up_as(ino, None, data)?;
        if !self.shared.is_empty() {
            self.unshare(ino, &info, data)?;
        }
        self.node_file_copied_up(ino);
        Ok(info)
    }

    /// [`Union::copy_up_data`], copying up the name `parent/name` when `ino` is a lower
    /// hard-link group (default: the name last looked up). That name leaves the group
    /// once its copy is in place.
    pub(super) fn copy_up_as(
        &self,
        ino: Ino,
        name: Option<(Ino, &OsStr)>,
        data: bool,
    ) -> io::Result<tree::NodeInfo> {
        self.writable()?;
        let mut info = self.node(ino)?;
        if self.is_upper(info.loc.top()) {
            return Ok(info);
        }
        let chosen = match name {
            Some((p, n)) => Some((p, n.to_owned())),
            None => self.tree.last_name(ino),
        };
        if let Some((p, n)) = &chosen {
            info.path = self.node(*p)?.path.join(n);
            info.parent = *p;
        }
        if ino != ROOT {
            self.copy_up(info.parent)?;
        }
        let src_host = self.abs(info.loc.top(), &info.path);
        let src = src_host.as_path();
        let dst_host = self.abs(0, &info.path);
        let dst = dst_host.as_path();
        // Linking the copy in is no change the user made: the upper parent keeps its
        // times, as kernel overlayfs restores them (ovl_set_timestamps) after copy-up.
        let dst_parent = dst.parent().map(Path::to_path_buf);
        let parent_times = match &dst_parent {
            Some(p) if ino != ROOT => Some(fs::symlink_metadata(p)?),
            _ => None,
        };
        let meta = fs::symlink_metadata(src)?;
        let tmp = self.tmp_path()?;
        let built = self.build_copy(src, &meta, &tmp, data);
        if let Err(e) = built {
            let _ = remove_any(&tmp);
            return Err(e);
        }
        match nix::fcntl::renameat2(AT_FDCWD, &tmp, AT_FDCWD, dst, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {
                // Best effort, as in the kernel: the copy is in place, and a parent the
                // daemon may not set times on (not its own) just keeps the new ones.
                if let (Some(p), Some(pm)) = (&dst_parent, &parent_times) {
                    let _ = set_times(
                        p,
                        pm.accessed().ok().map(SetTime::At),
                        pm.modified().ok().map(SetTime::At),
                    );
                }
            }
            // Another thread copied it up first: use theirs.
            Err(nix::Error::EEXIST) | Err(nix::Error::ENOTEMPTY) => remove_any(&tmp)?,
            Err(e) => {
                let _ = remove_any(&tmp);
                return Err(e.into());
            }
        }
        if let Some((p, n)) = &chosen {
            self.tree.split_off(ino, *p, n);
        }
        let mut layers = vec![0];
        if meta.is_dir() {
            layers.extend(info.loc.layers.iter().copied());
        }
        let loc = Loc { layers };
        self.records.forget(ino);
        self.tree.set_loc(ino, loc.clone());
        Ok(tree::NodeInfo { loc, ..info })
    }

    /// Builds a copy of `src` at `tmp`: content (a regular file's only when `data`),
    /// xattrs, owner, mode, times.
    pub(super) fn build_copy(
        &self,
        src: &Path,
        meta: &Metadata,
        tmp: &Path,
        data: bool,
    ) -> io::Result<()> {
        let ft = meta.file_type();
        let ov = if ft.is_symlink() {
            None
        } else {
            OverrideStat::read(src)?
        };
        let eff = Effective::new(meta, ov.as_ref());
        let mut kind_on_disk = FileKind::of(meta);
        if ft.is_dir() {
            fs::create_dir(tmp)?;
            fs::set_permissions(tmp, fs::Permissions::from_mode(0o700))?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(src)?, tmp)?;
        } else if ft.is_file() {
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)?;
            if data {
                io::copy(&mut File::open(src)?, &mut to)?;
            }
        } else {
            kind_on_disk = self.make_special(tmp, FileKind::of(meta), 0o600)?;
        }
        if !ft.is_symlink() {
            copy_xattrs(src, tmp)?;
        }
        let force_record = kind_on_disk != eff.kind;
        self.apply_owner(
            tmp,
            &fs::symlink_metadata(tmp)?,
            eff.kind,
            eff.uid,
            eff.gid,
            eff.perm,
            force_record || ov.is_some(),
        )?;
        set_times(
            tmp,
            Some(SetTime::At(meta.accessed()?)),
            Some(SetTime::At(meta.modified()?)),
        )
    }

    /// Creates a fifo, socket or device node at `path`. A device the daemon may not
    /// create becomes an empty regular file whose recorded type is the device.
    /// Returns the kind actually on disk.
    pub(super) fn make_special(
        &self,
        path: &Path,
        kind: FileKind,
        perm: u32,
    ) -> io::Result<FileKind> {
        let sflag = match kind {
            FileKind::Pipe => SFlag::S_IFIFO,
            FileKind::Socket => SFlag::S_IFSOCK,
            FileKind::Block { .. } => SFlag::S_IFBLK,
            FileKind::Char { .. } => SFlag::S_IFCHR,
            _ => return Err(Errno::EINVAL.into()),
        };
        let mode = Mode::from_bits_truncate(perm & 0o777);
        let device = matches!(kind, FileKind::Block { .. } | FileKind::Char { .. });
        let as_file = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map(|_| FileKind::File)
        };
        // A recorded device must be a regular file: devices cannot carry user xattrs.
        if device && self.owner_mode == OwnerMode::Record {
            return as_file();
        }
        match nix::sys::stat::mknod(path, sflag, mode, kind.rdev()) {
            Ok(()) => Ok(kind),
            Err(nix::Error::EPERM) if device => as_file(),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives `path` (whose `lstat` is `meta`) the owner, group and mode the image should
    /// show: by chown/chmod, or recorded in the override xattr (always when `record`,
    /// when the mode says so, or when a real chown is refused). Returns the record the
    /// file carries afterwards (`record` is set only for files that had one, or must
    /// get one, so `None` means it has none) and whether the file changed on disk (when
    /// it did not, `meta` still describes it and need not be read again).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply_owner(
        &self,
        path: &Path,
        meta: &Metadata,
        kind: FileKind,
        uid: u32,
        gid: u32,
        perm: u32,
        record: bool,
    ) -> io::Result<(Option<OverrideStat>, bool)> {
        let is_symlink = meta.file_type().is_symlink();
        let mut record = record || self.owner_mode == OwnerMode::Record;
        let mut chowned = false;
        if !record && (meta.uid() != uid || meta.gid() != gid) {
            match nix::unistd::fchownat(
                AT_FDCWD,
                path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(()) => chowned = true,
                Err(nix::Error::EPERM) | Err(nix::Error::EINVAL) => record = true,
                Err(e) => return Err(e.into()),
            }
        }
        if is_symlink {
            // Symlinks carry neither modes nor user xattrs on Linux.
            return Ok((None, chowned));
        }
        let ft = meta.file_type();
        let chmod = |mode: u32| fs::set_permissions(path, fs::Permissions::from_mode(mode));
        if record && !ft.is_file() && !ft.is_dir() {
            // Fifos and sockets cannot carry user xattrs: keep the real mode, and the
            // owner the daemon could give them.
            chmod(perm & 0o7777)?;
            return Ok((None, true));
        }
        if record {
            chmod(accessible(perm, kind))?;
            let on_disk = FileKind::of(meta);
            let ov = OverrideStat {
                uid,
                gid,
                mode: perm & 0o7777,
                kind: (on_disk != kind).then_some(kind),
            };
            ov.write(path)?;
            Ok((Some(ov), true))
        } else {
            // A real chown drops setuid/setgid bits: put them back.
            let want = perm & 0o7777;
            let chmodded = meta.mode() & 0o7777 != want || (chowned && want & 0o6000 != 0);
            if chmodded {
                chmod(want)?;
            }
            Ok((None, chowned || chmodded))
        }
    }
}

/// Copies the user-visible and security xattrs of `src` to `dst` (both not followed);
/// overlay markers stay behind (they would change meaning in the upper layer), and
/// namespaces the daemon may not write (`trusted.*` unprivileged) are skipped.
fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let names = match xattr::list(src) {
        Ok(n) => n,
        Err(e) if ownership::is_unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        if is_private_xattr(&name) && name.as_bytes() != OVERRIDE_XATTR.as_bytes() {
            continue;
        }
        let Some(v) = xattr::get(src, &name)? else {
            continue;
        };
        match xattr::set(dst, &name, &v) {
            Ok(()) => {}
            Err(e) if ownership::is_unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
