//! gentree-fs: builds minimal Gentoo-style root filesystem images with Portage and
//! presents them as a filesystem.
//!
//! Crate map (see `README.md` and `docs/` for the user's view):
//! - [`builder`]: config resolution (genTree-compatible TOML) and its cache, cache
//!   keys (with the repository state and the build epoch), emerge command lines, the
//!   namespaced build helper and the sandbox every process that runs seed code is
//!   confined to, crash leftovers. Never imports [`fs`].
//! - [`layers`]: layers on disk: whiteouts, ownership metadata, the union view,
//!   tar layout and streaming, seed import and identity, tree digests, the
//!   normalisation that makes a built layer reproducible. Knows nothing of FUSE or
//!   namespaces.
//! - [`cache`]: the layer cache in an OCI registry: pull a missing layer another
//!   machine built (verified, published as if built here), push a built one; its
//!   registry client and podman-style auth.
//! - [`fs`]: the only code that talks to FUSE (fuser): thin adapters over `layers`.
//! - [`server`]: `gentree-fs serve`, the binhost and build queue over its own bounded
//!   HTTP/1.1 server.
//! - [`sys`]: the few `unsafe` system calls, each documented.
//! - [`cli`] and [`commands`]: argument parsing and one function per subcommand.

pub mod builder;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod fs;
pub mod layers;
pub mod server;
pub mod sys;

/// `e` and the errors that caused it, outermost first (what `Error::sources` will be
/// once stable), for messages that name every cause.
pub fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}
