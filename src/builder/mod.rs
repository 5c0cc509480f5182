//! Turning configs into layers: config resolution, cache keys, emerge command lines
//! and (later) the namespaced build helper. Never imports [`crate::fs`].
pub mod config;
