//! FUSE adapters (the only module that imports `fuser`).
//!
//! Each `Filesystem` method decodes its request, calls one method of a core type from
//! [`crate::layers`], and writes one reply. Inode and handle tables live here.
pub mod images;
pub mod mount;
pub mod tree;
pub mod union;
