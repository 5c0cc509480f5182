//! The layer cache in an OCI registry: a layer missing here is pulled from the
//! registry when another machine built it, and a layer built here is pushed.
//!
//! One cache entry per layer key, in the repository `REPO` of `--cache
//! [http://|https://]HOST[:PORT]/REPO` (or `cache = "REF"` in the defaults):
//!
//! ```text
//! REPO:<key>   an OCI image manifest (application/vnd.oci.image.manifest.v1+json)
//!   config     the layer's LayerMeta as JSON   (application/vnd.gentree.layer.meta.v1+json)
//!   layers[0]  the layer's OCI layer tar       (application/vnd.oci.image.layer.v1.tar)
//! ```
//!
//! The layer tar is the mount's `layers/<bn>.tar` ([`TarLayout::oci_layer`], no
//! filters): in-image owners and modes in the headers, `security.capability` and
//! `user.*` xattrs as PAX `SCHILY.xattr` records, hard links as links, whiteouts and
//! opaque directories as `.wh.` entries. Pulling unpacks it with the seed import's
//! sink ([`crate::layers::seed::sink`]: no write outside the layer, no device node,
//! owners recorded in `user.containers.override_stat`), and marks the tree with the
//! build ids' [`HostOwner`], so the pulled layer presents the same entries as the one
//! built elsewhere, and the images and layers built over it are byte-identical
//! (tested end to end). Sub-second mtimes are not carried (tar holds seconds);
//! images hold seconds too.
//!
//! Invariants:
//! - the cache never breaks a build: every failure (registry down, refused login,
//!   bad manifest, digest mismatch, a layer that cannot be unpacked faithfully) is a
//!   warning and the layer is built here ([`Cache::fetch`] and [`Cache::push`]
//!   return errors; the build path logs them and goes on);
//! - nothing from the registry becomes visible unverified: the manifest's config and
//!   layer blobs are checked against their digests and sizes (streamed to disk, never
//!   held in memory), the metadata must name the wanted key, its base keys and layer
//!   format, and the layer is unpacked into the store's [`Pending`] dir and published
//!   only complete ([`Store::publish`]);
//! - the metadata published is the one a local build writes (the registry's copy is
//!   only checked), so a pulled layer is indistinguishable from a built one.

pub mod auth;
pub mod registry;

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oci_spec::image::{Descriptor, ImageManifest, ImageManifestBuilder, MediaType};

use crate::layers::ownership::HostOwner;
use crate::layers::seed::{self, Interrupt, Owners, Progress, SeedError};
use crate::layers::store::{Layer, LayerMeta, Pending, Store, StoreError};
use crate::layers::tar::{FilterSet, PackOptions, TarError, TarLayout};
pub use registry::{Registry, RegistryError};

/// The media type of a cache entry's config: the layer's [`LayerMeta`].
pub const META_MEDIA_TYPE: &str = "application/vnd.gentree.layer.meta.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// How long one connect or read may take before the registry counts as down.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Where the cache is: `[http://|https://]HOST[:PORT]/REPO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRef {
    /// `https` unless the reference says `http://`.
    pub https: bool,
    /// `host[:port]`, as auth files name registries.
    pub host: String,
    /// The repository path (`team/gentree-cache`).
    pub repo: String,
}

impl CacheRef {
    /// Parses a reference; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<CacheRef, String> {
        let bad = |why: &str| {
            format!(
                "invalid cache reference {s:?}: {why} (want [http://|https://]HOST[:PORT]/REPO)"
            )
        };
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if s.contains("://") {
            return Err(bad("only http:// and https:// are known"));
        } else {
            (true, s)
        };
        let (host, repo) = rest.split_once('/').ok_or_else(|| bad("no repository"))?;
        let repo = repo.trim_end_matches('/');
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !host_ok {
            return Err(bad(
                "the host is empty or has characters a host name cannot",
            ));
        }
        // The distribution spec's repository name grammar.
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if repo.is_empty() || !repo.split('/').all(component_ok) {
            return Err(bad(
                "the repository must be lowercase letters, digits and . _ - in /-separated parts",
            ));
        }
        Ok(CacheRef {
            https,
            host: host.to_owned(),
            repo: repo.to_owned(),
        })
    }

    /// `https://host:port` (no path).
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.host
        )
    }
}

impl std::fmt::Display for CacheRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base_url(), self.repo)
    }
}

/// Why a cache lookup or push did not work out (the build goes on locally).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the cache entry of {key} is not one gentree-fs wrote: {why}")]
    Entry { key: String, why: String },
    #[error("unpacking the layer {key} from the cache")]
    Unpack {
        key: String,
        #[source]
        source: SeedError,
    },
    #[error("the layer {key} from the cache cannot be kept as built: {why}")]
    Unfaithful { key: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("laying out the layer tar of {key}")]
    Layout {
        key: String,
        #[source]
        source: TarError,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The cache of a build: `--cache` if given, else the config's `cache` (already
/// validated at resolution), else none.
pub fn configured(cli: Option<&CacheRef>, config: Option<&str>) -> Option<Arc<Cache>> {
    let r = match (cli, config) {
        (Some(r), _) => r.clone(),
        (None, Some(s)) => match CacheRef::parse(s) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!("{why}; building without the cache");
                return None;
            }
        },
        (None, None) => return None,
    };
    Some(Arc::new(Cache::open(r)))
}

/// `e` and its causes on one line, for the warning of a cache failure.
pub fn error_text(e: &CacheError) -> String {
    crate::error_chain(e)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// A configured cache.
#[derive(Debug)]
pub struct Cache {
    registry: Registry,
}

impl Cache {
    /// The cache at `r`, with the credentials the auth files hold for it.
    pub fn open(r: CacheRef) -> Cache {
        Cache::with_auth_files(r, &auth::auth_files_from_env())
    }

    /// The cache at `r`, with the credentials the first of `files` holds for it.
    pub fn with_auth_files(r: CacheRef, files: &[std::path::PathBuf]) -> Cache {
        let creds = auth::find_credentials(files, &r.host, &r.repo);
        tracing::debug!(
            "layer cache {r}: {}",
            if creds.is_some() {
                "credentials found"
            } else {
                "no credentials"
            }
        );
        Cache {
            registry: Registry::new(r, creds, TIMEOUT),
        }
    }

    pub fn reference(&self) -> &CacheRef {
        self.registry.reference()
    }

    /// Looks up the layer of `want.key` and, when the registry has it, pulls,
    /// verifies and publishes it as `want`, its entries kept as `owners` says and
    /// the tree marked with `host` (the build ids' root, as a build marks it).
    /// `Ok(None)`: not in the cache. The caller holds nothing; the key's lock is
    /// taken here, and a layer another builder published meanwhile is returned as
    /// it is.
    pub fn fetch(
        &self,
        store: &Store,
        want: &LayerMeta,
        owners: Owners,
        host: HostOwner,
    ) -> Result<Option<Layer>, CacheError> {
        let key = want.key.as_str();
        let Some((bytes, _)) = self.registry.manifest(key, MANIFEST_MEDIA_TYPE)? else {
            return Ok(None);
        };
        let entry = |why: String| CacheError::Entry {
            key: key.to_owned(),
            why,
        };
        let manifest =
            ImageManifest::from_reader(&bytes[..]).map_err(|e| entry(format!("manifest: {e}")))?;
        let (config, layer) = entry_descriptors(&manifest).map_err(entry)?;
        let meta_bytes = self
            .registry
            .small_blob(config.digest().as_ref(), config.size())?;
        let theirs: LayerMeta = serde_json::from_slice(&meta_bytes)
            .map_err(|e| entry(format!("layer metadata: {e}")))?;
        check_meta(&theirs, want).map_err(entry)?;

        let lock = store.lock(&want.key)?;
        if let Some(l) = store.lookup(&want.key)? {
            return Ok(Some(l));
        }
        let pending = store.begin(&want.key, &lock)?;
        let tar = pending.work().join("layer.tar");
        // The tar and its unpacked copy must fit: a declared size beyond the free
        // space is refused before the first byte (a full disk would fail builds).
        let free = nix::sys::statvfs::statvfs(&pending.work())
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(u64::MAX);
        if layer.size().saturating_mul(2) > free {
            return Err(CacheError::Unfaithful {
                key: key.to_owned(),
                why: format!(
                    "its tar of {} MiB does not fit twice in the {} MiB free",
                    layer.size() >> 20,
                    free >> 20
                ),
            });
        }
        {
            let mut f = File::create(&tar).map_err(io_at("cannot create", &tar))?;
            self.registry
                .blob_to(layer.digest().as_ref(), layer.size(), &mut f)?;
        }
        unpack(&pending, &tar, owners, host, key)?;
        Ok(Some(store.publish(pending, want.clone())?))
    }

    /// Pushes `layer` unless the cache has its key. Returns whether it pushed.
    pub fn push(&self, layer: &Layer) -> Result<bool, CacheError> {
        let key = layer.meta.key.as_str();
        if self.registry.manifest(key, MANIFEST_MEDIA_TYPE)?.is_some() {
            return Ok(false);
        }
        let layout = layer_tar(&layer.root()).map_err(|source| CacheError::Layout {
            key: key.to_owned(),
            source,
        })?;
        // Large reads of the layout: each crosses many small files.
        let mut reader = io::BufReader::with_capacity(
            1 << 20,
            LayoutReader {
                layout: &layout,
                pos: 0,
            },
        );
        let (tar_digest, tar_size) = self.registry.push_stream(&mut reader, layout.size())?;
        let meta = serde_json::to_vec(&layer.meta).map_err(|e| CacheError::Entry {
            key: key.to_owned(),
            why: format!("cannot encode its metadata: {e}"),
        })?;
        let meta_digest = self.registry.push_small(&meta)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                MediaType::Other(META_MEDIA_TYPE.into()),
                meta.len() as u64,
                &meta_digest,
            )?)
            .layers(vec![descriptor(
                MediaType::ImageLayer,
                tar_size,
                &tar_digest,
            )?])
            .build()
            .and_then(|m| m.to_string())
            .map_err(|e| CacheError::Entry {
                key: key.to_owned(),
                why: format!("cannot make its manifest: {e}"),
            })?;
        self.registry
            .put_manifest(key, MANIFEST_MEDIA_TYPE, manifest.as_bytes())?;
        Ok(true)
    }
}

/// The OCI layer tar a cache entry holds for the layer tree at `root`: the mount's
/// `layers/<bn>.tar`.
pub fn layer_tar(root: &Path) -> Result<TarLayout, TarError> {
    TarLayout::oci_layer(
        &[root.to_path_buf()],
        &PackOptions {
            filters: FilterSet::none(),
            source_date_epoch: None,
        },
    )
}

fn descriptor(mt: MediaType, size: u64, digest: &str) -> Result<Descriptor, CacheError> {
    let d: oci_spec::image::Digest = digest.parse().map_err(|e| CacheError::Entry {
        key: String::new(),
        why: format!("digest {digest}: {e}"),
    })?;
    Ok(Descriptor::new(mt, size, d))
}

/// The config and layer descriptors of a cache entry's manifest.
fn entry_descriptors(m: &ImageManifest) -> Result<(&Descriptor, &Descriptor), String> {
    let config = m.config();
    if config.media_type() != &MediaType::Other(META_MEDIA_TYPE.into()) {
        return Err(format!("config media type {}", config.media_type()));
    }
    let [layer] = m.layers().as_slice() else {
        return Err(format!("{} layers, not 1", m.layers().len()));
    };
    if layer.media_type() != &MediaType::ImageLayer {
        return Err(format!("layer media type {}", layer.media_type()));
    }
    for d in [config, layer] {
        if !registry::valid_digest(d.digest().as_ref()) {
            return Err(format!("digest {} is not sha256", d.digest()));
        }
    }
    Ok((config, layer))
}

/// The registry's metadata must describe the wanted layer.
fn check_meta(theirs: &LayerMeta, want: &LayerMeta) -> Result<(), String> {
    if theirs.key != want.key {
        return Err(format!("its metadata names the key {}", theirs.key));
    }
    if theirs.base_keys != want.base_keys {
        return Err("its metadata names other base layers".into());
    }
    if theirs.format != want.format {
        return Err(format!(
            "layer format {}, not {}",
            theirs.format, want.format
        ));
    }
    Ok(())
}

/// Unpacks the verified layer tar `tar` into `pending`'s root as a build would have
/// left it, then deletes the tar.
fn unpack(
    pending: &Pending,
    tar: &Path,
    owners: Owners,
    host: HostOwner,
    key: &str,
) -> Result<(), CacheError> {
    let root = pending.root();
    let intr = Interrupt::none();
    let mut progress = Progress::new(false);
    let unpack_err = |source| CacheError::Unpack {
        key: key.to_owned(),
        source,
    };
    let mut sink =
        seed::sink::Sink::new(&root, owners, &intr, &mut progress).map_err(unpack_err)?;
    let mut f = File::open(tar).map_err(io_at("cannot open", tar))?;
    seed::source::read_tar(&mut f as &mut dyn Read, &mut sink).map_err(unpack_err)?;
    sink.finish().map_err(unpack_err)?;
    let stats = sink.stats.clone();
    drop(sink);
    if stats.skipped > 0 || stats.xattrs_dropped > 0 {
        return Err(CacheError::Unfaithful {
            key: key.to_owned(),
            why: format!(
                "{} entries skipped, {} xattrs not settable here",
                stats.skipped, stats.xattrs_dropped
            ),
        });
    }
    host.write(&root)
        .map_err(io_at("cannot mark the owner of", &root))?;
    fs::remove_file(tar).map_err(io_at("cannot remove", tar))?;
    Ok(())
}

fn io_at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A [`TarLayout`] as a byte stream.
struct LayoutReader<'a> {
    layout: &'a TarLayout,
    pos: u64,
}

impl Read for LayoutReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.layout.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
