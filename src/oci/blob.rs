//! One layer's OCI layer blob: the layer tar under an image's filters and epoch, and
//! its sha256, computed once and kept beside the layer.
//!
//! A layer is immutable once published, so its blob for given [`PackOptions`] never
//! changes: `layers/<key>/oci-<tag>.idx` keeps the tar layout and
//! `layers/<key>/oci-<tag>.sha256` the digest and size (`<hex> <size>\n`), where
//! `<tag>` is a digest of the options. A record whose size does not match the layout
//! is ignored and computed again. The digest is computed by streaming the tar
//! through sha256 in bounded chunks, never holding the layer.
//!
//! The blob is [`TarLayout::oci_layer`] of the layer with the *image's* filters
//! (the top config's `tar_filter_options`), so the image unpacks to what the flat
//! `builds/<cfg>.tar` holds. `layers/<bn>.tar` in the mount is the same layer
//! unfiltered: where the top config's filters drop files of a base layer (docs,
//! man pages, `var/db/pkg` with `vardbpkg`), that base's blob differs from
//! `layers/<bn>.tar`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{OciError, io_err};
use crate::layers::digest::hex;
use crate::layers::tar::{PackOptions, TarLayout};

/// Bumped when the layer blob's bytes change for the same layer and options.
const BLOB_FORMAT: u32 = 1;

/// A layer's blob: its tar and the tar's sha256.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub layout: Arc<TarLayout>,
    /// Lowercase hex sha256 of the tar: the blob digest and, uncompressed, the diff id.
    pub digest: String,
    pub size: u64,
}

/// The file-name tag of `opts` (what besides the layer decides the blob's bytes).
pub fn options_tag(opts: &PackOptions) -> String {
    let text = format!(
        "{BLOB_FORMAT}\n{:?}\n{:?}",
        opts.filters, opts.source_date_epoch
    );
    hex(&Sha256::digest(text.as_bytes())[..8])
}

/// The blob of the layer stored in `layer_dir` (its tree is `layer_dir/root`):
/// loaded from its records, else computed and recorded.
pub fn layer_blob(layer_dir: &Path, opts: &PackOptions) -> Result<LayerBlob, OciError> {
    let root = layer_dir.join("root");
    let tag = options_tag(opts);
    let idx = layer_dir.join(format!("oci-{tag}.idx"));
    let rec = layer_dir.join(format!("oci-{tag}.sha256"));
    if let Some(b) = load(&idx, &rec, &root) {
        return Ok(b);
    }
    let layout = TarLayout::oci_layer(std::slice::from_ref(&root), opts).map_err(|source| {
        OciError::Layout {
            layer: root.clone(),
            source,
        }
    })?;
    let digest = digest_of(&layout).map_err(io_err("cannot read the layer", &root))?;
    let size = layout.size();
    // The records only save later opens the walk and the hash.
    if let Err(e) = layout.save(&idx) {
        tracing::warn!("cannot save {}: {e}", idx.display());
    } else if let Err(e) = write_record(&rec, &digest, size) {
        tracing::warn!("cannot save {}: {e}", rec.display());
    }
    Ok(LayerBlob {
        layout: Arc::new(layout),
        digest,
        size,
    })
}

fn load(idx: &Path, rec: &Path, root: &Path) -> Option<LayerBlob> {
    let text = fs::read_to_string(rec).ok()?;
    let (digest, size) = text.trim_end().split_once(' ')?;
    let size: u64 = size.parse().ok()?;
    let valid = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    let mut layout = TarLayout::load(idx).ok()?;
    let root = PathBuf::from(root);
    if layout.layers() != [root.clone()] {
        // The store moved since the records were written.
        layout.relocate(vec![root]).ok()?;
    }
    (valid && layout.size() == size).then(|| LayerBlob {
        layout: Arc::new(layout),
        digest: digest.to_ascii_lowercase(),
        size,
    })
}

fn write_record(path: &Path, digest: &str, size: u64) -> io::Result<()> {
    super::write_atomic(path, format!("{digest} {size}\n").as_bytes())
}

/// sha256 of the whole tar, streamed.
pub fn digest_of(layout: &TarLayout) -> io::Result<String> {
    // sha2's hashers are `io::Write` themselves.
    let mut h = Sha256::new();
    layout.write_to(&mut h)?;
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tar::FilterSet;
    use crate::layers::tar::scan::tests::build;

    #[test]
    fn computed_once_then_loaded_and_equal_to_the_bytes() {
        let t = tempfile::tempdir().expect("tmp");
        let dir = t.path().join("layer");
        build(
            &dir.join("root"),
            "f etc/a 1\nf usr/share/man/x.1 manpage\nw etc/gone",
        );
        let mut opts = PackOptions {
            filters: FilterSet::none(),
            source_date_epoch: Some(7),
        };
        let a = layer_blob(&dir, &opts).expect("blob");
        let mut bytes = Vec::new();
        a.layout.write_to(&mut bytes).expect("tar");
        assert_eq!(a.digest, hex(&Sha256::digest(&bytes)));
        assert_eq!(a.size, bytes.len() as u64);
        let tag = options_tag(&opts);
        assert!(dir.join(format!("oci-{tag}.sha256")).is_file());
        // A forged record of the wrong size is not believed.
        fs::write(
            dir.join(format!("oci-{tag}.sha256")),
            format!("{} 1\n", "0".repeat(64)),
        )
        .expect("write");
        assert_eq!(layer_blob(&dir, &opts).expect("blob").digest, a.digest);
        // A record of the right size is believed: the layer is not read again.
        fs::write(
            dir.join(format!("oci-{tag}.sha256")),
            format!("{} {}\n", "ab".repeat(32), a.size),
        )
        .expect("write");
        assert_eq!(
            layer_blob(&dir, &opts).expect("blob").digest,
            "ab".repeat(32)
        );
        // Other filters: another blob, another record.
        opts.filters.set("man", true).expect("man");
        let b = layer_blob(&dir, &opts).expect("blob");
        assert_ne!(options_tag(&opts), tag);
        assert!(b.size < a.size);
        assert!(
            !b.layout
                .entries()
                .iter()
                .any(|e| e.path.starts_with(b"usr/share/man/"))
        );
    }
}
