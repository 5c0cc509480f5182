//! The gentree mount without FUSE: its tree of seeds, configs, builds, layers and
//! package dirs, and the images built on first open; the `fuser` adapter over them is
//! [`crate::fs::mount`].
//!
//! - [`tree`]: the tree and its operations ([`tree::GentreeFs`]);
//! - [`inodes`]: which node an inode or file handle number names;
//! - [`images`]: the build manager ([`images::Images`]): one build job per config,
//!   resolutions on resolver threads, the image's layout and index;
//! - [`slots`]: each config's image slot and the openers waiting in it;
//! - [`image_file`]: finished images kept as files for FUSE passthrough;
//! - [`image_open`]: how an open of a ready image is answered;
//! - [`signals`]: whether a waiting opener got a signal;
//! - [`oci_images`]: the OCI image layouts and SBOMs made from ready images
//!   (`builds/<config>.oci/`, `builds/<config>.spdx.json`; their nodes are in
//!   `tree/oci.rs`).

pub mod image_file;
pub mod image_open;
pub mod images;
pub mod inodes;
pub mod oci_images;
pub mod signals;
pub mod slots;
pub mod tree;
