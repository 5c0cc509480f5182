//! The layer cache in a build: a missing layer looked up before it is built, a built
//! one pushed after it is published ([`crate::cache`]). Every cache failure is a
//! warning, and the build goes on here.

use super::BuildOptions;
use crate::layers::ownership::HostOwner;
use crate::layers::store::{Layer, LayerMeta, Store};

/// The layer of `meta.key` from the cache, if one is configured and has it. A
/// failure is a warning: the layer is then built here.
pub(super) fn fetch_cached(opts: &BuildOptions, store: &Store, meta: &LayerMeta) -> Option<Layer> {
    let cache = opts.cache.as_deref()?;
    let started = std::time::Instant::now();
    let (uid, gid) = opts.mapping.host_root();
    let host = HostOwner { uid, gid };
    match cache.fetch(store, meta, opts.mapping.store_owners(), host) {
        Ok(Some(layer)) => {
            tracing::debug!("pulled {} in {:.1?}", meta.key.short(), started.elapsed());
            Some(layer)
        }
        Ok(None) => {
            tracing::info!(
                "{}: layer {} is not in the cache {}",
                meta.buildname,
                meta.key.short(),
                cache.reference()
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                "cache {}: cannot use the cached layer {} of {} ({}); building it here",
                cache.reference(),
                meta.key.short(),
                meta.buildname,
                crate::cache::error_text(&e)
            );
            None
        }
    }
}

/// Pushes a layer built here to the cache, if one is configured; a failure is a
/// warning.
pub(super) fn push_cached(opts: &BuildOptions, layer: &Layer) {
    let Some(cache) = opts.cache.as_deref() else {
        return;
    };
    let started = std::time::Instant::now();
    match cache.push(layer) {
        Ok(true) => tracing::info!(
            "{}: pushed layer {} to the cache in {:.1?}",
            layer.meta.buildname,
            layer.meta.key.short(),
            started.elapsed()
        ),
        Ok(false) => tracing::debug!("the cache has {} already", layer.meta.key.short()),
        Err(e) => tracing::warn!(
            "cache {}: cannot push the layer {} of {} ({})",
            cache.reference(),
            layer.meta.key.short(),
            layer.meta.buildname,
            crate::cache::error_text(&e)
        ),
    }
}
