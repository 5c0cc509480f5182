//! Renaming a directory that exists in a lower layer, and the hard links it leaves.
//!
//! Kernel overlayfs with `redirect_dir=on` renames such a directory by pointing an
//! xattr of the new upper directory at the old lower path. An OCI layer has no such
//! xattr, so the union makes the upper layer say the same with plain entries: the new
//! name becomes a copy of the merged tree (what the lower and upper layers show at the
//! old name, whiteouts applied), opaque (`.wh..wh..opq`), and the old name gets a
//! whiteout. The copy is built in the work dir and renamed into place, so the new name
//! appears whole; the old upper directory then moves to the work dir before its
//! whiteout is written.
//!
//! The copy costs one entry per file, not its data: upper files are hard-linked into
//! it (the work dir shares the upper's filesystem), and so are lower regular files
//! whose layer shares that filesystem ([`super::shared`] keeps them from being changed
//! in place). Lower files on another filesystem, lower files with several links (each
//! group is copied once, its names linked to that copy), and other lower entries
//! (symlinks, devices, fifos) are copied.
//!
//! Atomicity as others see it: the kernel holds both parent directories locked across
//! the request; inside the union, every change to the namespace or to a file's upper
//! copy holds the union's `moving` lock shared, and this rename holds it exclusively,
//! so no copy-up or create below the old name is lost between snapshot and swap. A
//! crash leaves the old name, or both names (the new one complete), never a partial
//! copy: the work dir is emptied at the next mount.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags};

use super::{Loc, SetTime, Union, remove_any, set_times, tree};
use crate::layers::whiteout;

/// What one tree copy links and copies.
#[derive(Default)]
struct CopyState {
    /// Lower files hard-linked into the copy: their (st_dev, st_ino).
    shared: Vec<(u64, u64)>,
    /// Lower files with several links copied so far: (layer, st_dev, st_ino) → the
    /// copy, so that their other names link to it.
    groups: HashMap<(usize, u64, u64), std::path::PathBuf>,
    /// Lower layers a link failed from (another filesystem): copy their files without
    /// trying.
    other_fs: Vec<usize>,
}

impl Union {
    /// Renames the directory `parent/name` (at `src`, present in a lower layer) to
    /// `newparent/newname`, whose target has been checked (absent, or an empty
    /// directory that may be replaced). `noreplace` is `RENAME_NOREPLACE`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rename_lower_dir(
        &self,
        parent: super::Ino,
        name: &OsStr,
        src: &Loc,
        newparent: super::Ino,
        newname: &OsStr,
        noreplace: bool,
    ) -> io::Result<()> {
        let pinfo = self.copy_up(parent)?;
        let npinfo = self.copy_up(newparent)?;
        let from = pinfo.path.join(name);
        let tmp = self.tmp_path()?;
        let mut st = CopyState::default();
        let built = self
            .copy_tree(&from, &src.layers, &tmp, true, &mut st)
            .and_then(|()| self.shared.add(&st.shared));
        if let Err(e) = built {
            let _ = remove_any(&tmp);
            return Err(e);
        }
        let to_host = self.abs(0, &npinfo.path.join(newname));
        let to = to_host.as_path();
        let had_wh = super::has_whiteout_file(self.abs(0, &npinfo.path).as_path(), newname)?;
        // What the target's upper entry holds: an emptied merged directory (markers
        // only) or a whiteout device.
        if let Some(meta) = super::enoent_is_none(fs::symlink_metadata(to))? {
            if meta.is_dir() {
                super::clear_markers(to)?;
            } else if whiteout::classify(to, newname, &meta) != whiteout::Marker::Entry {
                fs::remove_file(to)?;
            }
        }
        let rflags = if noreplace {
            RenameFlags::RENAME_NOREPLACE
        } else {
            RenameFlags::empty()
        };
        if let Err(e) = nix::fcntl::renameat2(AT_FDCWD, &tmp, AT_FDCWD, to, rflags) {
            let _ = remove_any(&tmp);
            return Err(e.into());
        }
        if had_wh {
            let wh = self.abs(0, &npinfo.path.join(whiteout::whiteout_name(newname)));
            fs::remove_file(wh.as_path())?;
        }
        // The old name: its upper directory (if any) leaves, then the whiteout hides
        // the lower ones.
        let old_host = self.abs(0, &from);
        let trash = match super::enoent_is_none(fs::symlink_metadata(old_host.as_path()))? {
            Some(_) => {
                let trash = self.tmp_path()?;
                fs::rename(old_host.as_path(), &trash)?;
                Some(trash)
            }
            None => None,
        };
        whiteout::write_whiteout(self.abs(0, &pinfo.path).as_path(), name)?;
        self.tree.rename(parent, name, newparent, newname);
        if let Some(node) = self.tree.child(newparent, newname) {
            for moved in self.tree.relocate_to_upper(node) {
                self.records.forget(moved);
            }
        }
        if let Some(trash) = trash {
            // Only links and the union's own copies: nothing of a lower layer.
            fs::remove_dir_all(&trash)?;
        }
        Ok(())
    }

    /// Copies the merged directory `path` (over `layers`) to `dst`, which must not
    /// exist: its entries as listed, subdirectories recursively, each directory with
    /// the mode, owner, xattrs and times of its topmost entry. `opaque` marks `dst`.
    fn copy_tree(
        &self,
        path: &Path,
        layers: &[usize],
        dst: &Path,
        opaque: bool,
        st: &mut CopyState,
    ) -> io::Result<()> {
        let top_host = self.abs(layers[0], path);
        let top = top_host.as_path();
        let meta = fs::symlink_metadata(top)?;
        self.build_copy(top, &meta, dst, true)?;
        let listings = self.listings(path, layers)?;
        for m in self.list_listed(path, layers, &listings)? {
            let rel = path.join(&m.name);
            let to = dst.join(&m.name);
            if m.ft.is_dir() {
                let (loc, _) = self
                    .resolve_listed(path, layers, &listings, &m.name)?
                    .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
                self.copy_tree(&rel, &loc.layers, &to, false, st)?;
                continue;
            }
            let from_host = self.abs(m.layer, &rel);
            let from = from_host.as_path();
            if self.is_upper(m.layer) {
                fs::hard_link(from, &to)?;
                continue;
            }
            let meta = match m.meta {
                Some(meta) => meta,
                None => fs::symlink_metadata(from)?,
            };
            self.copy_lower_entry(m.layer, from, &meta, &to, st)?;
        }
        if opaque {
            whiteout::write_opaque(dst)?;
        }
        // Filling the directory moved its times.
        set_times(
            dst,
            Some(SetTime::At(meta.accessed()?)),
            Some(SetTime::At(meta.modified()?)),
        )
    }

    /// One lower non-directory into the copy at `to`: linked when it is a regular file
    /// with one link on the upper's filesystem, else copied (a group once).
    fn copy_lower_entry(
        &self,
        layer: usize,
        from: &Path,
        meta: &fs::Metadata,
        to: &Path,
        st: &mut CopyState,
    ) -> io::Result<()> {
        if !meta.is_file() {
            return self.build_copy(from, meta, to, true);
        }
        if meta.nlink() > 1 {
            let key = (layer, meta.dev(), meta.ino());
            if let Some(first) = st.groups.get(&key) {
                return fs::hard_link(first, to);
            }
            self.build_copy(from, meta, to, true)?;
            st.groups.insert(key, to.to_owned());
            return Ok(());
        }
        if !st.other_fs.contains(&layer) {
            match fs::hard_link(from, to) {
                Ok(()) => {
                    st.shared.push((meta.dev(), meta.ino()));
                    return Ok(());
                }
                // Another filesystem; or a file the daemon may not link (not its own,
                // with fs.protected_hardlinks): copy.
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => st.other_fs.push(layer),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) => return Err(e),
            }
        }
        self.build_copy(from, meta, to, true)
    }

    /// Replaces the upper file of `info` by a copy of its own (with the data when
    /// `data`) when it is a hard link to a lower file ([`super::shared`]), before
    /// anything changes it.
    pub(super) fn unshare(
        &self,
        ino: super::Ino,
        info: &tree::NodeInfo,
        data: bool,
    ) -> io::Result<()> {
        let path_host = self.abs(0, &info.path);
        let path = path_host.as_path();
        let meta = fs::symlink_metadata(path)?;
        if !self.shared.is_shared(&meta) {
            return Ok(());
        }
        // Two unshares of one file must not both replace it: the second would drop
        // what a writer of the first copy wrote. Rare (once per renamed file), short.
        let _one = self.unsharing.lock();
        let meta = fs::symlink_metadata(path)?;
        if !self.shared.is_shared(&meta) {
            return Ok(());
        }
        let tmp = self.tmp_path()?;
        let parent_times = path.parent().map(fs::symlink_metadata).transpose()?;
        let built = self
            .build_copy(path, &meta, &tmp, data)
            .and_then(|()| fs::rename(&tmp, path));
        if let Err(e) = built {
            let _ = remove_any(&tmp);
            return Err(e);
        }
        // As for a copy-up: the parent keeps its times.
        if let (Some(p), Some(pm)) = (path.parent(), parent_times) {
            let _ = set_times(
                p,
                pm.accessed().ok().map(SetTime::At),
                pm.modified().ok().map(SetTime::At),
            );
        }
        self.records.forget(ino);
        Ok(())
    }
}
