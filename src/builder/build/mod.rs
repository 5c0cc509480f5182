//! Building a resolved config into layers: keys, reuse, one namespaced run per
//! missing layer, atomic publication.
//!
//! For each distinct layer in build order (bases first):
//! 1. its key hashes its resolved config, the seed's identity, the epoch, the keys of
//!    the layers below it, the config overlay's content, the repositories' shared files
//!    and the package directories it may use ([`crate::builder::key`], [`KeyPlanner`]);
//! 2. a published layer with that key is reused as it is (no emerge runs); else, with
//!    a layer cache configured, the key is looked up there and a hit is pulled and
//!    published as if built here ([`crate::cache`]; a failure is a warning);
//! 3. otherwise, under the key's lock, a fresh upper dir is stacked over the layers
//!    below it in a gentree-fs union at `/builds/<buildname>`, inside a chroot whose
//!    root is a union of the seed's persistent upper over the seed; the profile is
//!    linked, emerge / depclean / unmerge run with `SOURCE_DATE_EPOCH`, the clean
//!    filters delete through the union; the upper is normalised and clamped to the
//!    epoch ([`crate::layers::normalize`]) and published as the layer, then pushed
//!    to the cache if there is one. A failure publishes nothing.
//!
//! The plan for one layer is computed by [`layer_plan`], a pure function, so the
//! mounts and commands a build will run are unit-tested without running them.
//!
//! Its rooms: `dirs` (where a build reads and writes on the host), `keys` (each
//! layer's key), `plan` (the pure namespace plan), `run` (reuse or build, then
//! publish), `cached` (the layer cache's pull and push in a build), `world` (the
//! merged world file) and `image` (the final tar).

use std::io;
use std::path::{Path, PathBuf};

use crate::builder::namespace;
use crate::layers::normalize;
use crate::layers::store::StoreError;

mod cached;
mod dirs;
mod image;
mod keys;
mod plan;
mod run;
mod world;

pub use dirs::*;
pub use image::*;
pub use keys::*;
pub use plan::*;
pub use run::*;
pub use world::*;

/// Errors of a build, each naming the layer or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "seed {seed:?} is not imported ({path} does not exist): run `gentree-fs import-seed SOURCE {seed}`"
    )]
    NoSeed { seed: String, path: PathBuf },
    #[error("config overlay {name:?} of layer {layer} does not exist ({path})")]
    NoOverlay {
        name: String,
        layer: String,
        path: PathBuf,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    SeedIdentity(#[from] crate::layers::seed::identity::IdentityError),
    #[error("running the build of layer {layer}")]
    Namespace {
        layer: String,
        #[source]
        source: namespace::NsError,
    },
    #[error("layer {layer} failed ({status}); its log is {log}")]
    Failed {
        layer: String,
        status: crate::builder::crash::Exit,
        log: PathBuf,
    },
    #[error("{what} of seed {seed} failed ({status}); its log is {log}")]
    SeedFailed {
        what: &'static str,
        seed: String,
        status: crate::builder::crash::Exit,
        log: PathBuf,
    },
    #[error("writing the image {path}")]
    Image {
        path: PathBuf,
        #[source]
        source: crate::layers::tar::TarError,
    },
    #[error("the build epoch: {message}")]
    Epoch { message: String },
    #[error("cannot digest {what}")]
    Digest {
        what: &'static str,
        #[source]
        source: crate::layers::digest::DigestError,
    },
    #[error("normalising layer {layer}")]
    Normalize {
        layer: String,
        #[source]
        source: normalize::NormalizeError,
    },
    #[error("filter option of {layer}")]
    Filter {
        layer: String,
        #[source]
        source: crate::layers::tar::FilterError,
    },
}

impl BuildError {
    /// The error of an I/O `what` ("cannot create", ...) on `path`, for `map_err`.
    pub fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BuildError + 'a {
        move |source| BuildError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
