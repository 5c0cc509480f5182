//! Turning configs into layers: config resolution, cache keys, emerge command lines
//! and the namespaced build helper. Never imports [`crate::fs`].

pub mod build;
pub mod clean;
pub mod config;
pub mod epoch;
pub mod key;
pub mod namespace;
pub mod repos;
pub mod seed_ops;
