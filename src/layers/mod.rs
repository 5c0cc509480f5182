//! Layers on disk and the views computed from them.
//!
//! A *layer* is a directory tree in the union's upper format: OCI whiteouts
//! (`.wh.<name>`), opaque markers (`.wh..wh..opq`) and in-image ownership in the
//! `user.containers.override_stat` xattr. This module owns reading and writing that
//! format; it knows nothing of FUSE or namespaces, so everything here is tested on
//! plain temp dirs.

pub mod digest;
pub mod normalize;
pub mod ownership;
pub mod seed;
pub mod store;
pub mod tar;
pub mod union;
pub mod whiteout;
