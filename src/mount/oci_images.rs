//! `builds/<config>.oci/` and `builds/<config>.spdx.json`: the OCI image layout and
//! the SBOM of a config's image, made once its image is ready.
//!
//! A request ([`OciImages::request`]) goes through [`Images::open`] like an open of
//! `builds/<config>.tar`: it builds the config or reuses it, and waits without
//! holding the caller's thread. Once the image is ready, the OCI image (or SBOM) made
//! for that very image (the same [`TarLayout`]) is answered from memory; otherwise it
//! is made on a thread of its own (hashing a layer can take a while; each layer's
//! blob is hashed once and recorded beside the layer, see [`crate::oci::blob`]).
//!
//! Invariants: an OCI image or SBOM is kept only with the image it was made from, so
//! an edited config never serves the layout of its old image; a blob is found by
//! digest in any config's layout (equal digests are equal bytes). Locks are never
//! held while a layer is read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

use super::images::Images;
use super::slots::Waiter;
use crate::builder::build::KeyPlanner;
use crate::layers::store::Store;
use crate::layers::tar::TarLayout;
use crate::oci::image::{self, ImageSpec};
use crate::oci::{LayerBlob, OciImage, blob, sbom};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Want {
    Oci,
    Sbom,
}

/// Called once with the outcome of a request (an errno on failure).
pub type Then = Box<dyn FnOnce(Result<(), i32>) + Send>;

/// What was made from one config's image.
#[derive(Debug, Default)]
struct Slot {
    /// The image they were made from.
    image: Option<Arc<TarLayout>>,
    /// What else they were made from ([`fingerprint`]): `[oci]` is no part of any
    /// layer key, so an edited `[oci]` table keeps the image and changes this.
    inputs: String,
    oci: Option<Arc<OciImage>>,
    sbom: Option<Arc<[u8]>>,
}

/// The OCI layouts and SBOMs of the configs' images.
pub struct OciImages {
    images: Arc<Images>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Layer blobs by layer directory and options tag, once computed or loaded.
    blobs: Mutex<HashMap<(PathBuf, String), LayerBlob>>,
    /// Requests waiting for a layout or SBOM being made, by config: one maker each.
    making: Mutex<HashMap<(String, Want), Vec<Then>>>,
}

impl std::fmt::Debug for OciImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciImages")
            .field("configs", &self.slots.lock().len())
            .finish()
    }
}

/// What an OCI image or SBOM depends on besides the image's layers: the configs'
/// `[oci]` tables, the image's filters, its names and target.
fn fingerprint(cfg: &crate::builder::config::ResolvedConfig) -> String {
    let order = cfg.build_order();
    let settings = crate::builder::config::oci::ImageSettings::merged(order.iter().map(|c| &c.oci));
    let names: Vec<&str> = order.iter().map(|c| c.buildname.as_str()).collect();
    format!(
        "{settings:?}\n{:?}\n{names:?}\n{:?}",
        cfg.tar_filters, cfg.crossdev_target
    )
}

impl OciImages {
    pub fn new(images: Arc<Images>) -> Arc<OciImages> {
        Arc::new(OciImages {
            images,
            slots: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
            making: Mutex::new(HashMap::new()),
        })
    }

    /// The OCI image last made for `name` (it may be of an image before an edit).
    pub fn cached_oci(&self, name: &str) -> Option<Arc<OciImage>> {
        self.slots.lock().get(name).and_then(|s| s.oci.clone())
    }

    /// The SBOM last made for `name`.
    pub fn cached_sbom(&self, name: &str) -> Option<Arc<[u8]>> {
        self.slots.lock().get(name).and_then(|s| s.sbom.clone())
    }

    /// A blob of any config's layout, by hex digest (equal digests, equal bytes).
    pub fn blob(&self, digest: &str) -> Option<BlobHandle> {
        let slots = self.slots.lock();
        for oci in slots.values().filter_map(|s| s.oci.as_ref()) {
            if let Some(l) = oci.layers.iter().find(|l| l.digest == digest) {
                return Some(BlobHandle::Layer(l.layout.clone()));
            }
            for b in [&oci.config, &oci.manifest] {
                if crate::layers::digest::sha256_hex(b) == digest {
                    return Some(BlobHandle::Bytes(b.clone()));
                }
            }
        }
        None
    }

    /// Makes sure `name`'s current image is built and `want` made for it, then calls
    /// `then` (at once when nothing is missing; else from another thread).
    pub fn request(self: &Arc<Self>, name: &str, want: Want, pid: u32, then: Then) {
        let waiter = ExtraWaiter {
            oci: self.clone(),
            name: name.to_owned(),
            want,
            pid,
            then,
        };
        let images = self.images.clone();
        let owned = name.to_owned();
        self.images.when_resolved(
            name,
            Box::new(move || images.open(&owned, Box::new(waiter))),
        );
    }

    /// True when `want` is made for `image` and the config as it is now.
    fn is_made(&self, name: &str, image: &Arc<TarLayout>, want: Want) -> bool {
        let Some(cfg) = self.images.resolved(name) else {
            return false;
        };
        let inputs = fingerprint(&cfg);
        let slots = self.slots.lock();
        slots.get(name).is_some_and(|s| {
            s.image.as_ref().is_some_and(|i| Arc::ptr_eq(i, image))
                && s.inputs == inputs
                && match want {
                    Want::Oci => s.oci.is_some(),
                    Want::Sbom => s.sbom.is_some(),
                }
        })
    }

    /// Makes `want` for `image` (the current image of `name`) and keeps it.
    fn make(&self, name: &str, image: &Arc<TarLayout>, want: Want) -> Result<(), String> {
        let (cfg, dirs, keys) = self.images.layer_plan(name).map_err(|e| chain(&e))?;
        let store = Store::open(&dirs.conf_root).map_err(|e| chain(&e))?;
        let mut layers = Vec::new();
        for k in &keys {
            match store.lookup(k).map_err(|e| chain(&e))? {
                Some(l) => layers.push(l),
                None => return Err(format!("layer {} is not in the store", k.short())),
            }
        }
        let inputs = fingerprint(&cfg);
        let roots: Vec<PathBuf> = layers.iter().map(|l| l.root()).collect();
        if roots.as_slice() != image.layers() {
            return Err("the config changed while its image was opened".into());
        }
        let epoch = KeyPlanner::new(&cfg, &dirs)
            .map_err(|e| chain(&e))?
            .epoch()
            .secs;
        match want {
            Want::Oci => {
                let seed_dir = dirs.require_seed(&cfg.seed).map_err(|e| chain(&e))?;
                let opts = image::layer_options(&cfg, epoch).map_err(|e| chain(&e))?;
                let tag = blob::options_tag(&opts);
                let mut blobs = Vec::new();
                for l in &layers {
                    let key = (l.dir.clone(), tag.clone());
                    let known = self.blobs.lock().get(&key).cloned();
                    let b = match known {
                        Some(b) => b,
                        None => {
                            let b = blob::layer_blob(&l.dir, &opts).map_err(|e| chain(&e))?;
                            self.blobs.lock().insert(key, b.clone());
                            b
                        }
                    };
                    blobs.push(b);
                }
                let spec = ImageSpec {
                    top: &cfg,
                    layers: &layers,
                    seed_dir: &seed_dir,
                    epoch,
                };
                let oci = Arc::new(image::assemble(&spec, blobs).map_err(|e| chain(&e))?);
                tracing::info!("{name}: OCI image {}", oci.manifest_digest());
                self.keep(name, image, inputs, |s| s.oci = Some(oci));
            }
            Want::Sbom => {
                let doc =
                    sbom::document(&cfg.buildname, image.layers(), epoch).map_err(|e| chain(&e))?;
                self.keep(name, image, inputs, |s| s.sbom = Some(doc.into()));
            }
        }
        Ok(())
    }

    fn keep(
        &self,
        name: &str,
        image: &Arc<TarLayout>,
        inputs: String,
        set: impl FnOnce(&mut Slot),
    ) {
        let mut slots = self.slots.lock();
        let s = slots.entry(name.to_owned()).or_default();
        if !s.image.as_ref().is_some_and(|i| Arc::ptr_eq(i, image)) || s.inputs != inputs {
            *s = Slot {
                image: Some(image.clone()),
                inputs,
                ..Slot::default()
            };
        }
        set(s);
    }
}

/// A blob's bytes, for an open file.
#[derive(Debug, Clone)]
pub enum BlobHandle {
    Bytes(Arc<[u8]>),
    Layer(Arc<TarLayout>),
}

impl BlobHandle {
    pub fn size(&self) -> u64 {
        match self {
            BlobHandle::Bytes(b) => b.len() as u64,
            BlobHandle::Layer(l) => l.size(),
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::error_chain(e)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// A request waiting for its config's image.
struct ExtraWaiter {
    oci: Arc<OciImages>,
    name: String,
    want: Want,
    pid: u32,
    then: Then,
}

impl Waiter for ExtraWaiter {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn ready(self: Box<Self>, image: Arc<TarLayout>, _built: bool) {
        if self.oci.is_made(&self.name, &image, self.want) {
            return (self.then)(Ok(()));
        }
        let key = (self.name.clone(), self.want);
        {
            let mut making = self.oci.making.lock();
            if let Some(waiting) = making.get_mut(&key) {
                // Another request is making it: answered with that one.
                waiting.push(self.then);
                return;
            }
            making.insert(key.clone(), vec![self.then]);
        }
        let oci = self.oci.clone();
        let mine = self.oci;
        let key2 = key.clone();
        let name = self.name;
        let spawned = std::thread::Builder::new()
            .name(format!("oci-{name}"))
            .spawn(move || {
                let r = oci.make(&name, &image, key.1);
                if let Err(e) = &r {
                    tracing::error!("{name}: {:?}: {e}", key.1);
                }
                let waiting = oci.making.lock().remove(&key).unwrap_or_default();
                for then in waiting {
                    then(r.clone().map_err(|_| libc::EIO));
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread for an OCI image: {e}");
            let waiting = mine.making.lock().remove(&key2).unwrap_or_default();
            for then in waiting {
                then(Err(libc::EAGAIN));
            }
        }
    }

    fn fail(self: Box<Self>, errno: i32) {
        (self.then)(Err(errno));
    }
}
