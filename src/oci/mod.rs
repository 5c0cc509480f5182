//! OCI images and SBOMs of built configs.
//!
//! - [`blob`]: one layer's OCI layer blob under an image's filters: its
//!   [`TarLayout`](crate::layers::tar::TarLayout) and sha256, computed once by
//!   streaming the tar through the hash and kept beside the layer
//!   (`layers/<key>/oci-<tag>.idx`, `.sha256`);
//! - [`image`]: the image config, manifest and index of a layer stack, the image
//!   layout's files, the seed's architecture, and writing a layout to a directory;
//! - [`sbom`]: an SPDX 2.3 JSON document of the packages in the image's `var/db/pkg`.
//!
//! Invariants: every JSON document is canonical (keys sorted, no whitespace), so the
//! same inputs give byte-identical blobs, manifest and index; every time in them is
//! the build epoch. Layers are uncompressed (`application/vnd.oci.image.layer.v1.tar`),
//! so a blob's bytes are the layer tar itself: its size is known before the first
//! byte and any range can be read without holding the layer in memory
//! (`skopeo copy --dest-compress` compresses on the way to a registry).
//! Nothing here knows FUSE; the mount serves [`image::OciImage`]'s files.

pub mod blob;
pub mod image;
pub mod sbom;

use std::io;
use std::path::PathBuf;

pub use blob::LayerBlob;
pub use image::OciImage;

/// Errors making an OCI image or an SBOM, each naming what was at fault.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("laying out layer {layer}")]
    Layout {
        layer: PathBuf,
        #[source]
        source: crate::layers::tar::TarError,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the OCI {what} of {name}: {message}")]
    Spec {
        what: &'static str,
        name: String,
        message: String,
    },
    #[error("cannot tell the image architecture: {0}")]
    Arch(String),
    #[error("{path}: {message}")]
    Refused { path: PathBuf, message: String },
    #[error("{0}")]
    Build(#[from] crate::builder::build::BuildError),
}

pub(crate) fn io_err(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(io::Error) -> OciError {
    let path = path.to_path_buf();
    move |source| OciError::Io { what, path, source }
}

/// `v` as canonical JSON: object keys sorted at every level, no whitespace (the
/// types' own maps are hash maps, whose order changes from run to run).
pub fn canonical_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut items: Vec<(String, serde_json::Value)> = m.into_iter().collect();
                items.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(items.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            serde_json::Value::Array(a) => {
                serde_json::Value::Array(a.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    serde_json::to_vec(&sorted(serde_json::to_value(v)?))
}

/// Seconds since the Unix epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes `bytes` to `path` through a synced temp file in the same directory and a
/// rename, so `path` is never half-written.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_times() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ] {
            assert_eq!(rfc3339(secs), want, "{secs}");
        }
    }

    #[test]
    fn canonical_json_sorts_hash_map_keys() {
        let mut m = std::collections::HashMap::new();
        for k in ["b", "a", "d", "c", "e"] {
            m.insert(
                k.to_owned(),
                serde_json::json!({"z": 1, "y": [{"q": 1, "p": 2}]}),
            );
        }
        let text = String::from_utf8(canonical_json(&m).expect("json")).expect("utf8");
        assert!(
            text.starts_with(r#"{"a":{"y":[{"p":2,"q":1}],"z":1},"b":"#),
            "{text}"
        );
        assert_eq!(canonical_json(&m).expect("json"), text.as_bytes());
    }
}
