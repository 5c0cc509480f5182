//! Turning configs into layers: config resolution, cache keys, emerge command lines
//! and the namespaced build helper with its sandbox (`namespace::sandbox`). Never
//! imports [`crate::fs`].

pub mod build;
pub mod clean;
pub mod config;
pub mod key;
pub mod namespace;
pub mod seed_ops;
