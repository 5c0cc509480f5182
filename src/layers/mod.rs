//! Layers on disk, the views computed from them, and where they live under the conf
//! root ([`layout`]).
//!
//! A *layer* is a directory tree in the union's upper format: OCI whiteouts
//! (`.wh.<name>`), opaque markers (`.wh..wh..opq`) and in-image ownership in the
//! `user.containers.override_stat` xattr. This module owns reading and writing that
//! format; it imports neither `fuser` nor the build, so everything here is tested on
//! plain temp dirs.

pub mod digest;
pub mod layout;
pub mod normalize;
pub mod ownership;
pub mod seed;
pub mod store;
pub mod tar;
pub mod union;
pub mod whiteout;
