//! Inode and file handle numbering of the gentree mount: which node a number names.
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

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
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

impl Node {
    pub fn of(ino: u64) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Root),
            SEEDS => Some(Node::Seeds),
            BUILDS => Some(Node::Builds),
            LAYERS => Some(Node::Layers),
            PACKAGES => Some(Node::Packages),
            i if i >> UNION_SHIFT > 0 => Some(Node::Union(
                (i >> UNION_SHIFT) as usize - 1,
                Ino(i & ((1 << UNION_SHIFT) - 1)),
            )),
            i if i >= FIRST_BLOB => Some(Node::Blob((i - FIRST_BLOB) as usize)),
            i if i >= FIRST_OCI => {
                let (n, slot) = (
                    ((i - FIRST_OCI) / OCI_SLOTS) as usize,
                    (i - FIRST_OCI) % OCI_SLOTS,
                );
                match slot {
                    SBOM_SLOT => Some(Node::Sbom(n)),
                    s => OCI_PARTS.get(s as usize).map(|p| Node::Oci(n, *p)),
                }
            }
            i if i >= FIRST_LAYER => Some(Node::Layer((i - FIRST_LAYER) as usize)),
            i if i >= FIRST_BUILD => {
                let i = (i - FIRST_BUILD) & ((1 << TAR_GEN_SHIFT) - 1);
                let n = (i / 2) as usize;
                Some(if i.is_multiple_of(2) {
                    Node::Tar(n)
                } else {
                    Node::Log(n)
                })
            }
            _ => None,
        }
    }

    pub fn ino(self) -> u64 {
        match self {
            Node::Root => ROOT,
            Node::Seeds => SEEDS,
            Node::Builds => BUILDS,
            Node::Layers => LAYERS,
            Node::Packages => PACKAGES,
            Node::Layer(n) => FIRST_LAYER + n as u64,
            Node::Oci(n, p) => {
                let slot = OCI_PARTS.iter().position(|q| *q == p).unwrap_or(0) as u64;
                FIRST_OCI + n as u64 * OCI_SLOTS + slot
            }
            Node::Sbom(n) => FIRST_OCI + n as u64 * OCI_SLOTS + SBOM_SLOT,
            Node::Blob(n) => FIRST_BLOB + n as u64,
            Node::Tar(n) => FIRST_BUILD + 2 * n as u64,
            Node::Log(n) => FIRST_BUILD + 2 * n as u64 + 1,
            Node::Union(u, ino) => union_ino(u, ino.0),
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
            Node::Root,
            Node::Seeds,
            Node::Builds,
            Node::Layers,
            Node::Packages,
            Node::Layer(0),
            Node::Layer(99),
            Node::Tar(0),
            Node::Log(0),
            Node::Tar(7),
            Node::Log(7),
            Node::Union(0, Ino(1)),
            Node::Union(3, Ino(12345)),
            Node::Oci(0, OciPart::Dir),
            Node::Oci(5, OciPart::Sha256),
            Node::Oci(1 << 20, OciPart::Index),
            Node::Sbom(0),
            Node::Sbom(77),
            Node::Blob(0),
            Node::Blob(1 << 30),
        ] {
            assert_eq!(Node::of(n.ino()), Some(n), "{n:?}");
        }
        // The OCI slots stay below the blobs, and the blobs below the unions.
        assert!(Node::Sbom(1 << 20).ino() < FIRST_BLOB);
        assert!(Node::Blob(1 << 30).ino() >> UNION_SHIFT == 0);
        assert_eq!(Node::of(FIRST_OCI + 5), None, "an unused slot");
        // Later generations of a tar are the same node, below the layers.
        let g = Node::Tar(7).ino() + (5 << TAR_GEN_SHIFT);
        assert_eq!(Node::of(g), Some(Node::Tar(7)));
        let last = Node::Tar(1 << 30).ino() + ((TAR_GENS - 1) << TAR_GEN_SHIFT);
        assert!(last < FIRST_LAYER, "{last:#x}");
        assert_eq!(Node::of(last), Some(Node::Tar(1 << 30)));
        assert_eq!(Node::of(0), None);
        assert_eq!(Node::of(6), None);
    }

    #[test]
    fn handles_split_between_ours_and_unions() {
        assert_eq!(split_fh(7), None);
        assert_eq!(split_fh(union_fh_out(2, 9)), Some((2, Fh(9))));
        assert_eq!(union_fh(2, union_fh_out(2, 9)), Some(Fh(9)));
        assert_eq!(union_fh(1, union_fh_out(2, 9)), None);
    }
}
