//! The OCI layer tar of one layer directory (the top of a stack): its changes as
//! they are, deletions as OCI whiteouts.
//!
//! Every whiteout encoding the layer may hold (see [`crate::layers::whiteout`]) is
//! written as an empty regular file `<dir>/.wh.<name>`, an opaque directory as
//! `<dir>/.wh..wh..opq` (B37 fix), both mode 0644, owner 0:0, mtime
//! `SOURCE_DATE_EPOCH` or 0 (B44). Order is depth-first: a directory, then its
//! opaque marker, its whiteouts (sorted), then its entries sorted bytewise, so
//! markers precede their siblings as the OCI spec asks; each path appears once.
//! Filters apply as for the flattened image; markers are always kept (B55 fix).

use std::path::PathBuf;

use super::layout::{LinkGroups, TarLayout, to_entry};
use super::scan::{self, child};
use super::{EntryKind, PackOptions, TarEntry, TarError};
use crate::layers::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX, is_opaque_dir};

impl TarLayout {
    /// The OCI layer tar of the last of `layers` (the lower ones are not read).
    pub fn oci_layer(layers: &[PathBuf], opts: &PackOptions) -> Result<TarLayout, TarError> {
        let top = layers.last().ok_or(TarError::NoLayers)?;
        let top = std::path::absolute(top).map_err(|source| TarError::Walk {
            layer: top.clone(),
            path: top.clone(),
            source,
        })?;
        let root_opaque = is_opaque_dir(&top).map_err(|source| TarError::Walk {
            layer: top.clone(),
            path: top.join(OPAQUE_MARKER),
            source,
        })?;
        let mut w = Walk {
            root: &top,
            opts,
            links: LinkGroups::default(),
            out: Vec::new(),
        };
        w.dir(b"", root_opaque)?;
        let entries = w.out;
        TarLayout::from_entries(vec![top.clone()], entries)
    }
}

struct Walk<'a> {
    root: &'a std::path::Path,
    opts: &'a PackOptions,
    links: LinkGroups,
    out: Vec<TarEntry>,
}

impl Walk<'_> {
    fn dir(&mut self, rel: &[u8], opaque_xattr: bool) -> Result<(), TarError> {
        let listing = scan::list_dir(self.root, 0, rel, opaque_xattr)?;
        if listing.opaque {
            self.marker(child(rel, OPAQUE_MARKER.as_bytes()));
        }
        for w in &listing.whiteouts {
            let mut name = WHITEOUT_PREFIX.as_bytes().to_vec();
            name.extend_from_slice(w);
            self.marker(child(rel, &name));
        }
        for (name, node) in listing.entries {
            let p = child(rel, &name);
            if let Some(f) = self.opts.filters.rejects(&p, node.kind) {
                tracing::trace!("filter {f} drops {}", String::from_utf8_lossy(&p));
                continue;
            }
            let (is_dir, opaque) = (node.is_dir(), node.opaque_xattr);
            if let Some(e) = to_entry(
                p.clone(),
                node,
                self.opts.source_date_epoch,
                &mut self.links,
            ) {
                self.out.push(e);
            }
            if is_dir {
                self.dir(&p, opaque)?;
            }
        }
        Ok(())
    }

    fn marker(&mut self, path: Vec<u8>) {
        self.out.push(TarEntry {
            path: path.into(),
            kind: EntryKind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: self.opts.source_date_epoch.unwrap_or(0).max(0),
            size: 0,
            link: None,
            xattrs: Vec::new(),
            source: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tar::FilterSet;
    use crate::layers::tar::scan::tests::build;

    #[test]
    fn markers_precede_siblings_no_duplicates() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        let l1 = t.path().join("l1");
        build(&l0, "f etc/x 0");
        build(
            &l1,
            "f etc/!first 1\nw etc/gone\nw etc/zap\nd etc/op\no etc/op\nf etc/op/new 1\nf etc/x 1",
        );
        let opts = PackOptions {
            filters: FilterSet::none(),
            source_date_epoch: Some(5),
        };
        let l = TarLayout::oci_layer(&[l0, l1], &opts).expect("layout");
        let names: Vec<String> = l
            .entries()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/.wh.gone",
                "etc/.wh.zap",
                "etc/!first",
                "etc/op",
                "etc/op/.wh..wh..opq",
                "etc/op/new",
                "etc/x",
            ]
        );
        let m = &l.entries()[1];
        assert_eq!((m.perm, m.uid, m.mtime, m.size), (0o644, 0, 5, 0));
        let mut bytes = Vec::new();
        l.write_to(&mut bytes).expect("write");
        let mut ar = tar::Archive::new(&bytes[..]);
        let got: Vec<String> = ar
            .entries()
            .expect("entries")
            .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
            .collect();
        assert_eq!(got.len(), names.len());
    }

    #[test]
    fn other_encodings_become_oci_markers_once() {
        let t = tempfile::tempdir().expect("tmp");
        let l = t.path().join("l");
        build(&l, "w etc/dup\nf etc/keep 1\nd opq\nf opq/x 1");
        if xattr::set(l.join("opq"), "user.overlay.opaque", b"y").is_err() {
            crate::testing::skip("other_encodings_become_oci_markers_once", "no user xattrs");
            return;
        }
        let mut want = vec![
            "etc",
            "etc/.wh.dup",
            "etc/keep",
            "opq",
            "opq/.wh..wh..opq",
            "opq/x",
        ];
        if nix::unistd::geteuid().is_root() {
            // A kernel-overlayfs whiteout of the same name, and of another name.
            for n in ["dup", "gone"] {
                nix::sys::stat::mknod(
                    &l.join("etc").join(n),
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    0,
                )
                .expect("mknod");
            }
            want.insert(2, "etc/.wh.gone");
        }
        let opts = PackOptions::default();
        let layout = TarLayout::oci_layer(&[l], &opts).expect("layout");
        let names: Vec<String> = layout
            .entries()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert_eq!(names, want);
    }
}
