//! gentree-fs: builds minimal Gentoo-style root filesystem images with Portage and
//! presents them as a filesystem.
//!
//! Crate map (see `README.md` and `docs/` for the user's view), top down: a module
//! imports only modules below it.
//! - [`cli`] and [`commands`]: argument parsing and one function per subcommand.
//! - [`server`]: `gentree-fs serve`, the binhost and build queue over its own bounded
//!   HTTP/1.1 server.
//! - [`fs`]: the FUSE adapters, the only code that imports `fuser`: each decodes a
//!   request, calls one method of [`mount`] or of the union in [`layers`], and replies.
//! - [`mount`]: the gentree mount without FUSE: its tree, and the images built on
//!   first open and shared by concurrent openers, with their OCI layouts and SBOMs.
//! - [`oci`]: OCI image layouts of built configs (layer blobs and their digests, image
//!   config, manifest, index) and their SPDX SBOMs.
//! - [`builder`]: config resolution (genTree-compatible TOML) and its cache, cache
//!   keys (with the repository state and the build epoch), emerge command lines, the
//!   namespaced build helper and the sandbox every process that runs seed code is
//!   confined to, crash leftovers.
//! - [`cache`]: the layer cache in an OCI registry: pull a missing layer another
//!   machine built (verified, published as if built here), push a built one; its
//!   registry client and podman-style auth.
//! - [`layers`]: layers on disk: the conf root's layout, whiteouts, ownership
//!   metadata, the union view, tar layout and streaming, seed import and identity, tree
//!   digests, the normalisation that makes a built layer reproducible.
//! - [`sys`]: the few `unsafe` system calls, each documented.

pub mod builder;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod fs;
pub mod layers;
pub mod mount;
pub mod oci;
pub mod server;
pub mod sys;
#[cfg(test)]
mod testing;

/// `e` and the errors that caused it, outermost first (what `Error::sources` will be
/// once stable), for messages that name every cause.
pub fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}
