//! The gentree mount without FUSE: its tree of seeds, configs, builds, layers and
//! package dirs ([`tree`]) and the images built on first open ([`images`]); the
//! `fuser` adapter over them is [`crate::fs::mount`].

pub mod images;
pub mod tree;
