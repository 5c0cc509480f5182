//! Layer keys: what a layer's content depends on, hashed.
//!
//! A layer is reused exactly when its key is unchanged. The key covers:
//! - the layer's resolved config (packages, USE, env, emerge argv, profile, filters...)
//!   as canonical JSON (object keys sorted by serde_json's map);
//! - the seed's identity token (changes on import, update-seed, exec --persistent);
//! - the keys of the layers below, lowest first (so a changed base rebuilds above);
//! - the content of the config overlay, if any;
//! - [`LAYER_FORMAT_VERSION`].
//!
//! It deliberately does not cover the ebuild repositories: a `emerge --sync` alone does
//! not rebuild layers (docs/compat.md). Use `--rebuild` to pick up new ebuilds.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::layers::store::BuildKey;

/// Bumped whenever the layer format or the build procedure changes what a layer
/// contains for the same inputs.
pub const LAYER_FORMAT_VERSION: u32 = 1;

/// The inputs of one layer's key.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    pub config: &'a serde_json::Value,
    pub seed_id: &'a str,
    pub base_keys: &'a [BuildKey],
    pub overlay_digest: Option<&'a str>,
}

fn field(h: &mut Sha256, tag: &str, data: &[u8]) {
    // Length-prefixed, tagged fields: no two different inputs share an encoding.
    h.update(tag.as_bytes());
    h.update([0]);
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
}

/// Computes the key of a layer.
pub fn layer_key(inputs: &KeyInputs<'_>) -> BuildKey {
    let mut h = Sha256::new();
    field(
        &mut h,
        "format",
        LAYER_FORMAT_VERSION.to_string().as_bytes(),
    );
    // serde_json's default map is a BTreeMap: serialization is canonical.
    let config = serde_json::to_vec(inputs.config).unwrap_or_default();
    field(&mut h, "config", &config);
    field(&mut h, "seed", inputs.seed_id.as_bytes());
    for b in inputs.base_keys {
        field(&mut h, "base", b.as_str().as_bytes());
    }
    if let Some(d) = inputs.overlay_digest {
        field(&mut h, "overlay", d.as_bytes());
    }
    BuildKey::from_digest(&h.finalize().into())
}

/// A digest of a directory tree's content: names, types, permission bits, file
/// contents and symlink targets, in sorted order (owners and times excluded: a
/// config overlay copied by another user or at another time is the same input).
pub fn digest_tree(dir: &Path) -> io::Result<String> {
    let mut h = Sha256::new();
    walk(dir, Path::new(""), &mut h)?;
    Ok(BuildKey::from_digest(&h.finalize().into()).to_string())
}

fn walk(base: &Path, rel: &Path, h: &mut Sha256) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(base.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let p = base.join(&r);
        let m = fs::symlink_metadata(&p)?;
        let path = r.as_os_str().as_bytes();
        let mode = (m.permissions().mode() & 0o7777).to_le_bytes();
        if m.is_dir() {
            field(h, "dir", path);
            h.update(mode);
            walk(base, &r, h)?;
        } else if m.file_type().is_symlink() {
            field(h, "link", path);
            field(h, "target", fs::read_link(&p)?.as_os_str().as_bytes());
        } else if m.is_file() {
            field(h, "file", path);
            h.update(mode);
            field(h, "data", &fs::read(&p)?);
        } else {
            field(h, "special", path);
            h.update(mode);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(
        config: &serde_json::Value,
        seed: &str,
        bases: &[BuildKey],
        ov: Option<&str>,
    ) -> BuildKey {
        layer_key(&KeyInputs {
            config,
            seed_id: seed,
            base_keys: bases,
            overlay_digest: ov,
        })
    }

    #[test]
    fn every_input_changes_the_key() {
        let c = json!({"packages": ["a"], "env": {"USE": "x"}});
        let base = key(&c, "s1", &[], None);
        assert_eq!(base, key(&c, "s1", &[], None), "deterministic");
        let variants = [
            key(
                &json!({"packages": ["a"], "env": {"USE": "y"}}),
                "s1",
                &[],
                None,
            ),
            key(
                &json!({"packages": ["b"], "env": {"USE": "x"}}),
                "s1",
                &[],
                None,
            ),
            key(&c, "s2", &[], None),
            key(&c, "s1", std::slice::from_ref(&base), None),
            key(&c, "s1", &[], Some("d")),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(v, &base, "variant {i}");
        }
        // Object key order does not matter; array order does.
        let reordered: serde_json::Value =
            serde_json::from_str(r#"{"env": {"USE": "x"}, "packages": ["a"]}"#).unwrap();
        assert_eq!(key(&reordered, "s1", &[], None), base);
    }

    #[test]
    fn tree_digest_sees_content_not_times() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        fs::create_dir(t.path().join("package.use"))?;
        fs::write(t.path().join("package.use/a"), "app-misc/x foo\n")?;
        let d1 = digest_tree(t.path())?;
        filetime_touch(&t.path().join("package.use/a"))?;
        assert_eq!(digest_tree(t.path())?, d1);
        fs::write(t.path().join("package.use/a"), "app-misc/x -foo\n")?;
        assert_ne!(digest_tree(t.path())?, d1);
        Ok(())
    }

    fn filetime_touch(p: &Path) -> io::Result<()> {
        let f = fs::File::options().append(true).open(p)?;
        f.set_modified(std::time::SystemTime::UNIX_EPOCH)
    }
}
