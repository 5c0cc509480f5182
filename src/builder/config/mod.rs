//! genTree-compatible build config resolution.
//!
//! A build config is the reference tool's TOML, accepted unchanged. Resolution
//! merges, in increasing precedence: the embedded defaults, the default files
//! ([`DefaultSources`]), the per-seed and per-build-tag overrides, the parent config
//! (for inherited keys of a base), the file itself and the command line
//! ([`CliOverrides`]). The result is a [`ResolvedConfig`] tree: each config with its
//! buildname, exported environment, emerge/unmerge/depclean argv and filters, and
//! its bases nested in list order ([`ResolvedConfig::build_order`] gives each
//! distinct layer once, bases first).
//!
//! Invariants: resolution is pure apart from reading the config, base and default
//! files; resolved data is ordered (no hash-map iteration), so equal inputs give
//! equal, equally serialised trees. Unknown keys, wrong types and unsafe names are
//! errors ([`ConfigError`]), not silently ignored as in the reference. Deliberate
//! differences from genTree are listed in `docs/compat.md`.
//!
//! Modules: [`value`] (located, ordered TOML tree), [`raw`] (schema and checks),
//! [`cache`] (resolutions kept while the files they read are unchanged),
//! [`file`] (reading files: the size limit, file identities for caches),
//! [`defaults`] (embedded defaults, default files, overrides, builtin bases),
//! [`env`] (flag sets and the environment), [`emerge`] (argv), [`names`]
//! (buildname, pkgdir, name validation), [`oci`] (the `[oci]` table), [`resolve`]
//! (the tree).

pub mod cache;
pub mod defaults;
pub mod emerge;
pub mod env;
mod error;
pub mod file;
pub mod names;
pub mod oci;
pub mod raw;
pub mod resolve;
pub mod value;

pub use defaults::{DefaultSources, Defaults};
pub use env::FlagSet;
pub use error::ConfigError;
pub use resolve::{
    CliOverrides, Dirs, OrderedMap, Origin, ResolvedConfig, resolve_file, resolve_file_stamped,
    resolve_seed, resolve_str,
};
