//! Turning configs into layers: config resolution, cache keys, emerge command lines,
//! the namespaced build helper with its sandbox (`namespace::sandbox`), and what
//! crashed or failed builds leave behind ([`crash`]). Imports only [`crate::layers`]
//! and [`crate::sys`].

pub mod build;
pub mod clean;
pub mod config;
pub mod crash;
pub mod epoch;
pub mod key;
pub mod namespace;
pub mod repos;
pub mod seed_ops;
