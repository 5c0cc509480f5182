//! The one integration-test binary (one link, many modules). Each module tests one
//! command or subsystem through the built `gentree-fs` binary and real tools.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod build;
mod cache;
mod commands;
mod config;
mod edges;
mod import_seed;
mod mount;
mod namespace;
mod oci;
mod pack;
mod repro;
mod sandbox;
mod serve;
mod union;
mod union_diff;
mod util;
