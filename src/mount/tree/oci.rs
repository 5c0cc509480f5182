//! The OCI nodes of the tree: `builds/<config>.oci/` and `builds/<config>.spdx.json`.
//!
//! ```text
//! builds/<config>.oci/      oci-layout, index.json, blobs/sha256/<digest>...
//! builds/<config>.spdx.json
//! ```
//!
//! `oci-layout` and the directories above the blobs need nothing built. `index.json`,
//! the blob listing, a blob not seen yet and the SBOM need the config's image: the
//! adapter asks [`GentreeFs::needs_extra`] and, when it names a config, has the request
//! answered only after [`OciImages::request`] made what is needed for the current
//! image (a build if there is none). Blob inodes are numbered by digest across configs,
//! so an inode always means the same bytes.

use std::ffi::OsStr;
use std::io;
use std::sync::Arc;

use nix::errno::Errno;
use parking_lot::Mutex;

use super::{FILE_MODE, GentreeFs, OpenData, Opened};
use crate::layers::ownership::FileKind;
use crate::layers::union::Attr;
use crate::mount::images::Images;
use crate::mount::inodes::{BUILDS, OciPart, TreeNode};
use crate::mount::oci_images::{BlobHandle, OciImages, Want};
use crate::oci::image::OCI_LAYOUT;

/// The request that may need an OCI image or SBOM made first.
#[derive(Debug, Clone, Copy)]
pub enum ExtraOp<'a> {
    Lookup(&'a OsStr),
    Opendir,
    Open,
}

/// The tree's OCI state: the layouts and SBOMs, and the blobs' numbers.
#[derive(Debug)]
pub(super) struct Extras {
    made: Arc<OciImages>,
    /// Digests by blob number.
    blobs: Mutex<Vec<String>>,
}

impl Extras {
    pub(super) fn new(images: &Arc<Images>) -> Extras {
        Extras {
            made: OciImages::new(images.clone()),
            blobs: Mutex::new(Vec::new()),
        }
    }
}

impl GentreeFs {
    /// The OCI layouts and SBOMs of the configs.
    pub fn extras(&self) -> &Arc<OciImages> {
        &self.extras.made
    }

    /// The config whose OCI image (or SBOM) must be made for its current image before
    /// `op` on `ino` is answered; `None` when it can be answered now.
    pub fn needs_extra(&self, op: ExtraOp<'_>, ino: u64) -> Option<(String, Want)> {
        let (i, want) = match (TreeNode::of(ino)?, op) {
            (TreeNode::Oci(i, OciPart::Index), ExtraOp::Open) => (i, Want::Oci),
            (TreeNode::Sbom(i), ExtraOp::Open) => (i, Want::Sbom),
            (TreeNode::Oci(i, OciPart::Sha256), ExtraOp::Opendir) => (i, Want::Oci),
            (TreeNode::Oci(i, OciPart::Sha256), ExtraOp::Lookup(name)) => {
                let known = name.to_str().and_then(|d| self.extras.made.blob(d));
                if known.is_some() {
                    return None;
                }
                (i, Want::Oci)
            }
            _ => return None,
        };
        Some((self.build_name(i).ok()?, want))
    }

    /// `<config>.oci` and `<config>.spdx.json` in builds/ (`None`: not one of those).
    pub(super) fn extra_in_builds(&self, n: &str) -> Option<io::Result<Attr>> {
        let (stem, node): (&str, fn(usize) -> TreeNode) = if let Some(s) = n.strip_suffix(".oci") {
            (s, |i| TreeNode::Oci(i, OciPart::Dir))
        } else if let Some(s) = n.strip_suffix(".spdx.json") {
            (s, TreeNode::Sbom)
        } else {
            return None;
        };
        let i = self.build_index(stem)?;
        Some(self.getattr(node(i).ino()))
    }

    /// The builds/ entries of config `i`, `name`, besides its tar and log.
    pub(super) fn extras_in_builds(&self, i: usize, name: &str) -> [(u64, FileKind, String); 2] {
        [
            (
                TreeNode::Oci(i, OciPart::Dir).ino(),
                FileKind::Dir,
                format!("{name}.oci"),
            ),
            (
                TreeNode::Sbom(i).ino(),
                FileKind::File,
                format!("{name}.spdx.json"),
            ),
        ]
    }

    pub(super) fn oci_lookup(&self, i: usize, part: OciPart, name: &OsStr) -> io::Result<Attr> {
        let n = name
            .to_str()
            .ok_or_else(|| io::Error::from(Errno::ENOENT))?;
        let node = match (part, n) {
            (OciPart::Dir, "oci-layout") => TreeNode::Oci(i, OciPart::Layout),
            (OciPart::Dir, "index.json") => TreeNode::Oci(i, OciPart::Index),
            (OciPart::Dir, "blobs") => TreeNode::Oci(i, OciPart::Blobs),
            (OciPart::Blobs, "sha256") => TreeNode::Oci(i, OciPart::Sha256),
            (OciPart::Sha256, digest) => {
                if self.extras.made.blob(digest).is_none() {
                    return Err(Errno::ENOENT.into());
                }
                TreeNode::Blob(self.blob_number(digest))
            }
            (OciPart::Layout | OciPart::Index, _) => return Err(Errno::ENOTDIR.into()),
            _ => return Err(Errno::ENOENT.into()),
        };
        self.getattr(node.ino())
    }

    fn blob_number(&self, digest: &str) -> usize {
        let mut b = self.extras.blobs.lock();
        match b.iter().position(|d| d == digest) {
            Some(n) => n,
            None => {
                b.push(digest.to_owned());
                b.len() - 1
            }
        }
    }

    fn blob_of(&self, n: usize) -> io::Result<BlobHandle> {
        let digest = self
            .extras
            .blobs
            .lock()
            .get(n)
            .cloned()
            .ok_or_else(|| io::Error::from(Errno::ESTALE))?;
        self.extras
            .made
            .blob(&digest)
            .ok_or_else(|| io::Error::from(Errno::ESTALE))
    }

    /// Attributes: the sizes of `index.json` and the SBOM are those last made (0
    /// before; their opens use direct I/O, so readers get every byte).
    pub(super) fn oci_getattr(&self, node: TreeNode) -> io::Result<Attr> {
        let ino = node.ino();
        let file = |size: u64| self.attr(ino, FileKind::File, FILE_MODE, size, self.started);
        match node {
            TreeNode::Oci(_, OciPart::Dir | OciPart::Blobs | OciPart::Sha256) => {
                Ok(self.dir_attr(ino, 0o555))
            }
            TreeNode::Oci(_, OciPart::Layout) => Ok(file(OCI_LAYOUT.len() as u64)),
            TreeNode::Oci(i, OciPart::Index) => {
                let name = self.build_name(i)?;
                let size = self
                    .extras
                    .made
                    .cached_oci(&name)
                    .map_or(0, |o| o.index.len());
                Ok(file(size as u64))
            }
            TreeNode::Sbom(i) => {
                let name = self.build_name(i)?;
                let size = self.extras.made.cached_sbom(&name).map_or(0, |s| s.len());
                Ok(file(size as u64))
            }
            TreeNode::Blob(n) => Ok(file(self.blob_of(n)?.size())),
            _ => Err(Errno::ENOENT.into()),
        }
    }

    pub(super) fn oci_listing(
        &self,
        i: usize,
        part: OciPart,
    ) -> io::Result<Vec<(u64, FileKind, String)>> {
        let me = TreeNode::Oci(i, part).ino();
        let mut v = vec![(me, FileKind::Dir, ".".to_owned())];
        let node = |p| TreeNode::Oci(i, p).ino();
        match part {
            OciPart::Dir => {
                v.push((BUILDS, FileKind::Dir, "..".into()));
                v.push((node(OciPart::Layout), FileKind::File, "oci-layout".into()));
                v.push((node(OciPart::Index), FileKind::File, "index.json".into()));
                v.push((node(OciPart::Blobs), FileKind::Dir, "blobs".into()));
            }
            OciPart::Blobs => {
                v.push((node(OciPart::Dir), FileKind::Dir, "..".into()));
                v.push((node(OciPart::Sha256), FileKind::Dir, "sha256".into()));
            }
            OciPart::Sha256 => {
                v.push((node(OciPart::Blobs), FileKind::Dir, "..".into()));
                let name = self.build_name(i)?;
                let oci = self
                    .extras
                    .made
                    .cached_oci(&name)
                    .ok_or_else(|| io::Error::from(Errno::EIO))?;
                for (digest, _) in oci.blobs() {
                    let n = self.blob_number(&digest);
                    v.push((TreeNode::Blob(n).ino(), FileKind::File, digest));
                }
            }
            OciPart::Layout | OciPart::Index => return Err(Errno::ENOTDIR.into()),
        }
        Ok(v)
    }

    /// Opens a file (reading only; the adapter made what it needs first).
    pub(super) fn oci_open(&self, node: TreeNode) -> io::Result<Opened> {
        let h = &self.handles;
        match node {
            TreeNode::Oci(_, OciPart::Layout) => Ok(Opened::Cached(
                h.insert(OpenData::Bytes(Arc::from(OCI_LAYOUT))),
            )),
            TreeNode::Oci(i, OciPart::Index) => {
                let oci = self.extras.made.cached_oci(&self.build_name(i)?);
                let oci = oci.ok_or_else(|| io::Error::from(Errno::EIO))?;
                Ok(Opened::Direct(h.insert(OpenData::Bytes(oci.index.clone()))))
            }
            TreeNode::Sbom(i) => {
                let doc = self.extras.made.cached_sbom(&self.build_name(i)?);
                let doc = doc.ok_or_else(|| io::Error::from(Errno::EIO))?;
                Ok(Opened::Direct(h.insert(OpenData::Bytes(doc))))
            }
            // Blob bytes are immutable: the page cache may keep them.
            TreeNode::Blob(n) => Ok(Opened::Cached(match self.blob_of(n)? {
                BlobHandle::Bytes(b) => h.insert(OpenData::Bytes(b)),
                BlobHandle::Layer(l) => h.insert(OpenData::Tar(l)),
            })),
            TreeNode::Oci(..) => Err(Errno::EISDIR.into()),
            _ => Err(Errno::ENOENT.into()),
        }
    }
}
