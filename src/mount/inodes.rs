//! Inode and file handle numbering of the gentree mount: which [`TreeNode`] a number
//! names.
//!
//! The fixed directories and the builds entries use small numbers; the OCI layouts'
//! entries and SBOMs eight per config from `1 << 44`, their blobs from `1 << 46`
//! (by digest, so one number always names the same bytes); each union gets its
//! own range, `(index + 1) << 48 | union inode` (index 0 is configs/, then seeds and
//! package dirs in the order first seen). File handles are split the same way: below
//! `1 << 48` they are ours, above it they belong to a union.

use crate::layers::union::{Fh, Ino};

pub const ROOT: u64 = 1;
pub const SEEDS: u64 = 2;
pub const BUILDS: u64 = 3;
pub const LAYERS: u64 = 4;
pub const PACKAGES: u64 = 5;
/// First inode of the layers entries (`FIRST_LAYER + i` is layer i).
const FIRST_LAYER: u64 = 1 << 40;
/// First inode of the OCI layouts' and SBOMs' entries: [`OCI_SLOTS`] per config;
/// blobs from `FIRST_BLOB`, numbered by digest across configs.
const FIRST_OCI: u64 = 1 << 44;
const FIRST_BLOB: u64 = 1 << 46;
/// Inode slots per config: the [`OciPart`]s, then the SBOM in the last.
const OCI_SLOTS: u64 = 8;
const SBOM_SLOT: u64 = OCI_SLOTS - 1;
/// First inode of the builds entries: `FIRST_BUILD + 2 * i` is config i's tar,
/// `+ 1` its log; a tar's generation `g` adds `g << TAR_GEN_SHIFT`
/// ([`super::tree::GentreeFs::new_tar_generation`]).
const FIRST_BUILD: u64 = 16;
pub(super) const TAR_GEN_SHIFT: u32 = 32;
/// Tar generations wrap around below this (their inodes stay below `FIRST_LAYER`).
pub(super) const TAR_GENS: u64 = (FIRST_LAYER >> TAR_GEN_SHIFT) - 1;
const UNION_SHIFT: u32 = 48;
pub(super) const CONFIGS_UNION: usize = 0;

/// A part of `builds/<config>.oci/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciPart {
    Dir,
    Blobs,
    Sha256,
    Layout,
    Index,
}

const OCI_PARTS: [OciPart; 5] = [
    OciPart::Dir,
    OciPart::Blobs,
    OciPart::Sha256,
    OciPart::Layout,
    OciPart::Index,
];

/// What an inode number of the gentree mount names: a node of its tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeNode {
    Root,
    Seeds,
    Builds,
    Layers,
    Packages,
    Tar(usize),
    Log(usize),
    /// `layers/<buildname>.tar`, by layers index.
    Layer(usize),
    /// `builds/<config>.oci/...`, by builds index.
    Oci(usize, OciPart),
    /// `builds/<config>.oci/blobs/sha256/<digest>`, by blob number.
    Blob(usize),
    /// `builds/<config>.spdx.json`, by builds index.
    Sbom(usize),
    /// Union `index`, its inode.
    Union(usize, Ino),
}

impl TreeNode {
    pub fn of(ino: u64) -> Option<TreeNode> {
        match ino {
            ROOT => Some(TreeNode::Root),
            SEEDS => Some(TreeNode::Seeds),
            BUILDS => Some(TreeNode::Builds),
            LAYERS => Some(TreeNode::Layers),
            PACKAGES => Some(TreeNode::Packages),
            i if i >> UNION_SHIFT > 0 => Some(TreeNode::Union(
                (i >> UNION_SHIFT) as usize - 1,
                Ino(i & ((1 << UNION_SHIFT) - 1)),
            )),
            i if i >= FIRST_BLOB => Some(TreeNode::Blob((i - FIRST_BLOB) as usize)),
            i if i >= FIRST_OCI => {
                let (n, slot) = (
                    ((i - FIRST_OCI) / OCI_SLOTS) as usize,
                    (i - FIRST_OCI) % OCI_SLOTS,
                );
                match slot {
                    SBOM_SLOT => Some(TreeNode::Sbom(n)),
                    s => OCI_PARTS.get(s as usize).map(|p| TreeNode::Oci(n, *p)),
                }
            }
            i if i >= FIRST_LAYER => Some(TreeNode::Layer((i - FIRST_LAYER) as usize)),
            i if i >= FIRST_BUILD => {
                let i = (i - FIRST_BUILD) & ((1 << TAR_GEN_SHIFT) - 1);
                let n = (i / 2) as usize;
                Some(if i.is_multiple_of(2) {
                    TreeNode::Tar(n)
                } else {
                    TreeNode::Log(n)
                })
            }
            _ => None,
        }
    }

    pub fn ino(self) -> u64 {
        match self {
            TreeNode::Root => ROOT,
            TreeNode::Seeds => SEEDS,
            TreeNode::Builds => BUILDS,
            TreeNode::Layers => LAYERS,
            TreeNode::Packages => PACKAGES,
            TreeNode::Layer(n) => FIRST_LAYER + n as u64,
            TreeNode::Oci(n, p) => {
                let slot = OCI_PARTS.iter().position(|q| *q == p).unwrap_or(0) as u64;
                FIRST_OCI + n as u64 * OCI_SLOTS + slot
            }
            TreeNode::Sbom(n) => FIRST_OCI + n as u64 * OCI_SLOTS + SBOM_SLOT,
            TreeNode::Blob(n) => FIRST_BLOB + n as u64,
            TreeNode::Tar(n) => FIRST_BUILD + 2 * n as u64,
            TreeNode::Log(n) => FIRST_BUILD + 2 * n as u64 + 1,
            TreeNode::Union(u, ino) => union_ino(u, ino.0),
        }
    }
}

pub(super) fn union_ino(u: usize, ino: u64) -> u64 {
    ((u as u64 + 1) << UNION_SHIFT) | ino
}

pub(super) fn union_fh_out(u: usize, fh: u64) -> u64 {
    ((u as u64 + 1) << UNION_SHIFT) | fh
}

pub(super) fn split_fh(fh: u64) -> Option<(usize, Fh)> {
    (fh >> UNION_SHIFT > 0).then(|| {
        (
            (fh >> UNION_SHIFT) as usize - 1,
            Fh(fh & ((1 << UNION_SHIFT) - 1)),
        )
    })
}

pub(super) fn union_fh(u: usize, fh: u64) -> Option<Fh> {
    split_fh(fh).filter(|(v, _)| *v == u).map(|(_, f)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_ranges_round_trip() {
        for n in [
            TreeNode::Root,
            TreeNode::Seeds,
            TreeNode::Builds,
            TreeNode::Layers,
            TreeNode::Packages,
            TreeNode::Layer(0),
            TreeNode::Layer(99),
            TreeNode::Tar(0),
            TreeNode::Log(0),
            TreeNode::Tar(7),
            TreeNode::Log(7),
            TreeNode::Union(0, Ino(1)),
            TreeNode::Union(3, Ino(12345)),
            TreeNode::Oci(0, OciPart::Dir),
            TreeNode::Oci(5, OciPart::Sha256),
            TreeNode::Oci(1 << 20, OciPart::Index),
            TreeNode::Sbom(0),
            TreeNode::Sbom(77),
            TreeNode::Blob(0),
            TreeNode::Blob(1 << 30),
        ] {
            assert_eq!(TreeNode::of(n.ino()), Some(n), "{n:?}");
        }
        // The OCI slots stay below the blobs, and the blobs below the unions.
        assert!(TreeNode::Sbom(1 << 20).ino() < FIRST_BLOB);
        assert!(TreeNode::Blob(1 << 30).ino() >> UNION_SHIFT == 0);
        assert_eq!(TreeNode::of(FIRST_OCI + 5), None, "an unused slot");
        // Later generations of a tar are the same node, below the layers.
        let g = TreeNode::Tar(7).ino() + (5 << TAR_GEN_SHIFT);
        assert_eq!(TreeNode::of(g), Some(TreeNode::Tar(7)));
        let last = TreeNode::Tar(1 << 30).ino() + ((TAR_GENS - 1) << TAR_GEN_SHIFT);
        assert!(last < FIRST_LAYER, "{last:#x}");
        assert_eq!(TreeNode::of(last), Some(TreeNode::Tar(1 << 30)));
        assert_eq!(TreeNode::of(0), None);
        assert_eq!(TreeNode::of(6), None);
    }

    #[test]
    fn handles_split_between_ours_and_unions() {
        assert_eq!(split_fh(7), None);
        assert_eq!(split_fh(union_fh_out(2, 9)), Some((2, Fh(9))));
        assert_eq!(union_fh(2, union_fh_out(2, 9)), Some(Fh(9)));
        assert_eq!(union_fh(1, union_fh_out(2, 9)), None);
    }
}
