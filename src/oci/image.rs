//! The OCI image of a built config: one layer blob per layer (bases first), an image
//! config, a manifest, an index naming it `latest`, and the `oci-layout` file.
//!
//! The image config holds `rootfs.diff_ids` (the layer digests: layers are
//! uncompressed), `architecture`/`os` from the seed ([`platform`]), `created` and
//! every history entry's time at the build epoch, one history entry per layer, and
//! the run settings of the `[oci]` tables ([`ImageSettings`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{
    ANNOTATION_CREATED, ANNOTATION_REF_NAME, Arch, ConfigBuilder, Descriptor, DescriptorBuilder,
    HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    Os, PlatformBuilder, RootFsBuilder, Sha256Digest,
};

use super::blob::{LayerBlob, layer_blob};
use super::{OciError, canonical_json, io_err, rfc3339};
use crate::builder::build;
use crate::builder::config::ResolvedConfig;
use crate::builder::config::oci::ImageSettings;
use crate::layers::digest::sha256_hex;
use crate::layers::store::Layer;
use crate::layers::tar::{PackOptions, TarLayout};

/// The `oci-layout` file.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// The tag `index.json` gives the image.
pub const REF_NAME: &str = "latest";

/// A finished OCI image: its blobs and the layout's two files.
#[derive(Debug, Clone)]
pub struct OciImage {
    pub layers: Vec<LayerBlob>,
    pub config: Arc<[u8]>,
    pub manifest: Arc<[u8]>,
    /// `index.json`.
    pub index: Arc<[u8]>,
}

/// Where a blob's bytes are.
#[derive(Debug, Clone, Copy)]
pub enum BlobData<'a> {
    Bytes(&'a [u8]),
    Layer(&'a TarLayout),
}

impl BlobData<'_> {
    pub fn size(&self) -> u64 {
        match self {
            BlobData::Bytes(b) => b.len() as u64,
            BlobData::Layer(l) => l.size(),
        }
    }

    /// Fills `buf` from `offset`; short only at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            BlobData::Bytes(b) => {
                let start = (offset.min(b.len() as u64)) as usize;
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
            BlobData::Layer(l) => l.read_at(offset, buf),
        }
    }
}

impl OciImage {
    /// The distinct blobs by hex digest, sorted (two equal layers share one blob).
    pub fn blobs(&self) -> Vec<(String, BlobData<'_>)> {
        let mut v: Vec<(String, BlobData<'_>)> = self
            .layers
            .iter()
            .map(|l| (l.digest.clone(), BlobData::Layer(&l.layout)))
            .collect();
        v.push((sha256_hex(&self.config), BlobData::Bytes(&self.config)));
        v.push((sha256_hex(&self.manifest), BlobData::Bytes(&self.manifest)));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    }

    /// The manifest's digest (`sha256:<hex>`).
    pub fn manifest_digest(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.manifest))
    }

    /// Writes the image layout to `dir`: built beside it under a temporary name and
    /// renamed into place, so `dir` is never a half layout. An existing `dir` is
    /// replaced only when it is an image layout itself (has `oci-layout`).
    pub fn write_dir(&self, dir: &Path) -> Result<(), OciError> {
        let dir = std::path::absolute(dir).map_err(io_err("cannot resolve", dir))?;
        let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        if dir.exists() && !dir.join("oci-layout").is_file() {
            return Err(OciError::Refused {
                path: dir,
                message:
                    "exists and is not an OCI image layout: remove it or name another directory"
                        .into(),
            });
        }
        fs::create_dir_all(&parent).map_err(io_err("cannot create", &parent))?;
        let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
        let r = self.write_new(&tmp);
        let r = r.and_then(|()| swap_in(&tmp, &dir));
        if r.is_err() {
            let _ = crate::layers::store::remove_tree(&tmp);
        }
        r
    }

    fn write_new(&self, tmp: &Path) -> Result<(), OciError> {
        let blobs = tmp.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err("cannot create", &blobs))?;
        for (digest, data) in self.blobs() {
            let path = blobs.join(&digest);
            let mut f = fs::File::create(&path).map_err(io_err("cannot create", &path))?;
            match data {
                BlobData::Bytes(b) => f.write_all(b),
                BlobData::Layer(l) => l.write_to_file(&mut f).map(drop),
            }
            .and_then(|()| f.sync_all())
            .map_err(io_err("cannot write", &path))?;
        }
        for (file, bytes) in [("oci-layout", OCI_LAYOUT), ("index.json", &self.index[..])] {
            let path = tmp.join(file);
            fs::write(&path, bytes).map_err(io_err("cannot write", &path))?;
        }
        Ok(())
    }
}

/// Renames `tmp` to `dir`, replacing an earlier layout there.
fn swap_in(tmp: &Path, dir: &Path) -> Result<(), OciError> {
    if !dir.exists() {
        return fs::rename(tmp, dir).map_err(io_err("cannot rename into place", dir));
    }
    let old = dir.with_file_name(format!(
        ".{}.old{}",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    fs::rename(dir, &old).map_err(io_err("cannot move aside", dir))?;
    fs::rename(tmp, dir).map_err(io_err("cannot rename into place", dir))?;
    crate::layers::store::remove_tree(&old).map_err(io_err("cannot remove", &old))
}

/// What an image is made of besides its layers' trees.
#[derive(Debug)]
pub struct ImageSpec<'a> {
    /// The top config (its build order gives the layers' configs).
    pub top: &'a ResolvedConfig,
    /// The published layers, build order (bases first), one per config of the order.
    pub layers: &'a [Layer],
    /// The seed's directory (the architecture is read from it).
    pub seed_dir: &'a Path,
    pub epoch: i64,
}

/// The pack options of the image's layer blobs: the top config's tar filters, the epoch.
pub fn layer_options(top: &ResolvedConfig, epoch: i64) -> Result<PackOptions, OciError> {
    Ok(PackOptions {
        filters: build::image_filters(top)?,
        source_date_epoch: Some(epoch),
    })
}

/// Computes (or loads) every layer blob, then the config, manifest and index.
pub fn build_image(spec: &ImageSpec<'_>) -> Result<OciImage, OciError> {
    let opts = layer_options(spec.top, spec.epoch)?;
    let layers = spec
        .layers
        .iter()
        .map(|l| layer_blob(&l.dir, &opts))
        .collect::<Result<Vec<_>, _>>()?;
    assemble(spec, layers)
}

/// The image of `spec` over blobs already computed (`layers`, build order).
pub fn assemble(spec: &ImageSpec<'_>, layers: Vec<LayerBlob>) -> Result<OciImage, OciError> {
    let top = spec.top;
    let order = top.build_order();
    let bad = |what: &'static str| {
        move |e: oci_spec::OciSpecError| OciError::Spec {
            what,
            name: top.buildname.clone(),
            message: e.to_string(),
        }
    };
    if order.len() != spec.layers.len() || layers.len() != spec.layers.len() {
        return Err(OciError::Spec {
            what: "layers",
            name: top.buildname.clone(),
            message: format!(
                "{} configs, {} layers, {} blobs",
                order.len(),
                spec.layers.len(),
                layers.len()
            ),
        });
    }
    let created = rfc3339(spec.epoch);
    let (arch, variant) = platform(top, spec.seed_dir)?;
    let settings = ImageSettings::merged(order.iter().map(|c| &c.oci));
    let history = order
        .iter()
        .zip(spec.layers)
        .map(|(cfg, layer)| {
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(created_by(cfg))
                .comment(format!(
                    "gentree-fs layer {} {}",
                    cfg.buildname, layer.meta.key
                ))
                .build()
                .map_err(bad("history"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", l.digest))
        .collect();
    let mut run = ConfigBuilder::default();
    if let Some(v) = &settings.entrypoint {
        run = run.entrypoint(v.clone());
    }
    if let Some(v) = &settings.cmd {
        run = run.cmd(v.clone());
    }
    if !settings.env.is_empty() {
        run = run.env(
            settings
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        );
    }
    if let Some(v) = &settings.working_dir {
        run = run.working_dir(v.clone());
    }
    if let Some(v) = &settings.user {
        run = run.user(v.clone());
    }
    if !settings.labels.is_empty() {
        run = run.labels(
            settings
                .labels
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    if !settings.exposed_ports.is_empty() {
        run = run.exposed_ports(settings.exposed_ports.clone());
    }
    let mut config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::from(arch.as_str()))
        .os(Os::Linux)
        .config(run.build().map_err(bad("run config"))?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids)
                .build()
                .map_err(bad("rootfs"))?,
        )
        .history(history);
    if let Some(v) = &variant {
        config = config.variant(v.clone());
    }
    let config = config.build().map_err(bad("image config"))?;
    let config = json(&config, top)?;
    let layer_descs = layers
        .iter()
        .map(|l| descriptor(MediaType::ImageLayer, l.size, &l.digest, top))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            config.len() as u64,
            &sha256_hex(&config),
            top,
        )?)
        .layers(layer_descs)
        .annotations(
            [(ANNOTATION_CREATED.to_owned(), created.clone())]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()
        .map_err(bad("manifest"))?;
    let manifest = json(&manifest, top)?;
    let mut platform = PlatformBuilder::default()
        .architecture(Arch::from(arch.as_str()))
        .os(Os::Linux);
    if let Some(v) = variant {
        platform = platform.variant(v);
    }
    let mut mdesc = descriptor(
        MediaType::ImageManifest,
        manifest.len() as u64,
        &sha256_hex(&manifest),
        top,
    )?;
    mdesc.set_annotations(Some(
        [(ANNOTATION_REF_NAME.to_owned(), REF_NAME.to_owned())]
            .into_iter()
            .collect(),
    ));
    mdesc.set_platform(Some(platform.build().map_err(bad("platform"))?));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![mdesc])
        .build()
        .map_err(bad("index"))?;
    let index = json(&index, top)?;
    Ok(OciImage {
        layers,
        config: config.into(),
        manifest: manifest.into(),
        index: index.into(),
    })
}

fn json<T: serde::Serialize>(v: &T, top: &ResolvedConfig) -> Result<Vec<u8>, OciError> {
    canonical_json(v).map_err(|e| OciError::Spec {
        what: "JSON",
        name: top.buildname.clone(),
        message: e.to_string(),
    })
}

fn descriptor(
    media: MediaType,
    size: u64,
    hex_digest: &str,
    top: &ResolvedConfig,
) -> Result<Descriptor, OciError> {
    let digest: Sha256Digest =
        hex_digest
            .parse()
            .map_err(|e: oci_spec::OciSpecError| OciError::Spec {
                what: "digest",
                name: top.buildname.clone(),
                message: e.to_string(),
            })?;
    DescriptorBuilder::default()
        .media_type(media)
        .size(size)
        .digest(digest)
        .build()
        .map_err(|e| OciError::Spec {
            what: "descriptor",
            name: top.buildname.clone(),
            message: e.to_string(),
        })
}

/// The history line of a layer: what gentree-fs ran for it.
fn created_by(cfg: &ResolvedConfig) -> String {
    let mut s = format!("gentree-fs {}:", cfg.buildname);
    if !cfg.packages.is_empty() {
        s.push_str(&format!(" emerge {}", cfg.packages.join(" ")));
    }
    if !cfg.unmerge.is_empty() {
        s.push_str(&format!("; unmerge {}", cfg.unmerge.join(" ")));
    }
    if cfg.packages.is_empty() && cfg.unmerge.is_empty() {
        s.push_str(" no packages");
    }
    s
}

/// The image's OCI architecture and variant: a cross build's from its target tuple,
/// else the seed's, read from the ELF header of its shell (or another program every
/// seed has).
pub fn platform(
    top: &ResolvedConfig,
    seed_dir: &Path,
) -> Result<(String, Option<String>), OciError> {
    if let Some(t) = &top.crossdev_target {
        return tuple_arch(t)
            .map(|(a, v)| (a.to_owned(), v.map(str::to_owned)))
            .ok_or_else(|| OciError::Arch(format!("unknown target tuple {t:?}")));
    }
    for prog in [
        "bin/sh",
        "usr/bin/sh",
        "bin/busybox",
        "usr/bin/env",
        "bin/bash",
    ] {
        let Some(path) = resolve_in(seed_dir, prog) else {
            continue;
        };
        let mut head = [0u8; 20];
        let n = fs::File::open(&path)
            .and_then(|f| {
                use std::os::unix::fs::FileExt;
                f.read_at(&mut head, 0)
            })
            .unwrap_or(0);
        if n == head.len() {
            return elf_arch(&head).ok_or_else(|| {
                OciError::Arch(format!(
                    "{} is not an ELF file of a known machine",
                    path.display()
                ))
            });
        }
    }
    Err(OciError::Arch(format!(
        "no shell in the seed {} to read the machine type from",
        seed_dir.display()
    )))
}

/// `rel` inside `root`, following symlinks as the seed would (absolute targets from
/// `root`), never leaving it; `None` when missing or not a regular file.
fn resolve_in(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = rel.split('/').rev().map(str::to_owned).collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(p) = parts.pop() {
        match p.as_str() {
            "" | "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let here = at
            .iter()
            .fold(root.to_path_buf(), |a, c| a.join(c))
            .join(&p);
        let meta = fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&here).ok()?;
            let t = target.to_string_lossy();
            if t.starts_with('/') {
                at.clear();
            }
            parts.extend(t.split('/').rev().map(str::to_owned));
        } else {
            at.push(p);
        }
    }
    let path = at.iter().fold(root.to_path_buf(), |a, c| a.join(c));
    fs::symlink_metadata(&path)
        .ok()
        .filter(|m| m.is_file())
        .map(|_| path)
}

/// The OCI architecture of an ELF header (the first 20 bytes).
pub fn elf_arch(h: &[u8; 20]) -> Option<(String, Option<String>)> {
    if &h[..4] != b"\x7fELF" {
        return None;
    }
    let (class64, little) = (h[4] == 2, h[5] == 1);
    let machine = if little {
        u16::from_le_bytes([h[18], h[19]])
    } else {
        u16::from_be_bytes([h[18], h[19]])
    };
    let arch = match (machine, class64, little) {
        (62, true, _) => "amd64",
        (62, false, _) => "amd64p32",
        (3, _, _) => "386",
        (183, _, _) => "arm64",
        (40, _, true) => "arm",
        (40, _, false) => "armbe",
        (21, _, true) => "ppc64le",
        (21, _, false) => "ppc64",
        (20, _, _) => "ppc",
        (243, true, _) => "riscv64",
        (22, true, _) => "s390x",
        (258, _, _) => "loong64",
        (8, true, true) => "mips64le",
        (8, true, false) => "mips64",
        (8, false, true) => "mipsle",
        (8, false, false) => "mips",
        (2 | 43, _, _) => "sparc64",
        _ => return None,
    };
    Some((arch.to_owned(), None))
}

/// The OCI architecture (and variant) of a GNU target tuple's CPU.
pub fn tuple_arch(tuple: &str) -> Option<(&'static str, Option<&'static str>)> {
    let cpu = tuple.split('-').next()?;
    Some(match cpu {
        "x86_64" => ("amd64", None),
        "i386" | "i486" | "i586" | "i686" => ("386", None),
        "aarch64" => ("arm64", None),
        "armv7a" | "armv7" => ("arm", Some("v7")),
        "armv6" | "armv6j" => ("arm", Some("v6")),
        "armv5tel" | "armv5" => ("arm", Some("v5")),
        "powerpc64le" => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "riscv64" => ("riscv64", None),
        "s390x" => ("s390x", None),
        "loongarch64" => ("loong64", None),
        "mips64el" => ("mips64le", None),
        "mipsel" => ("mipsle", None),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_machines_and_tuples() {
        let head = |class: u8, data: u8, machine: u16| {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(b"\x7fELF");
            h[4] = class;
            h[5] = data;
            let m = if data == 1 {
                machine.to_le_bytes()
            } else {
                machine.to_be_bytes()
            };
            h[18..20].copy_from_slice(&m);
            h
        };
        let arch = |h: [u8; 20]| elf_arch(&h).map(|(a, _)| a);
        assert_eq!(arch(head(2, 1, 62)).as_deref(), Some("amd64"));
        assert_eq!(arch(head(2, 1, 183)).as_deref(), Some("arm64"));
        assert_eq!(arch(head(1, 1, 3)).as_deref(), Some("386"));
        assert_eq!(arch(head(2, 2, 22)).as_deref(), Some("s390x"));
        assert_eq!(arch(head(2, 1, 21)).as_deref(), Some("ppc64le"));
        assert_eq!(arch(head(2, 1, 9999)), None);
        let mut not_elf = head(2, 1, 62);
        not_elf[0] = b'#';
        assert_eq!(arch(not_elf), None);
        assert_eq!(
            tuple_arch("aarch64-unknown-linux-gnu"),
            Some(("arm64", None))
        );
        assert_eq!(
            tuple_arch("armv7a-unknown-linux-gnueabihf"),
            Some(("arm", Some("v7")))
        );
        assert_eq!(tuple_arch("vax-dec-ultrix"), None);
    }

    #[test]
    fn the_shell_is_found_through_symlinks_inside_the_seed() {
        let t = tempfile::tempdir().expect("tmp");
        let root = t.path();
        fs::create_dir_all(root.join("usr/bin")).expect("dirs");
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).expect("bin");
        std::os::unix::fs::symlink("/usr/bin/dash", root.join("usr/bin/sh")).expect("sh");
        fs::copy("/proc/self/exe", root.join("usr/bin/dash")).expect("an ELF file");
        let found = resolve_in(root, "bin/sh").expect("resolved");
        assert_eq!(found, root.join("usr/bin/dash"));
        // An escape is resolved inside the root, never outside it.
        std::os::unix::fs::symlink("../../../../../../etc/passwd", root.join("usr/bin/esc"))
            .expect("esc");
        assert_eq!(resolve_in(root, "usr/bin/esc"), None);
        let want = if cfg!(target_arch = "x86_64") {
            "amd64"
        } else {
            "arm64"
        };
        let cfg = crate::builder::config::resolve_str(
            "seed = \"s\"\n",
            Path::new("c.toml"),
            &crate::builder::config::CliOverrides::default(),
            &crate::builder::config::Defaults::embedded().expect("defaults"),
        )
        .expect("config");
        assert_eq!(platform(&cfg, root).expect("platform").0, want);
    }
}
