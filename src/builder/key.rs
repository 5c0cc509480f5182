//! Layer keys: what a layer's content depends on, hashed.
//!
//! A layer is reused exactly when its key is unchanged. The key covers, as tagged,
//! length-prefixed fields:
//! - [`LAYER_FORMAT_VERSION`];
//! - the layer's resolved config (packages, USE, env, emerge argv, profile, filters...)
//!   as canonical JSON (object keys sorted by serde_json's map);
//! - the seed's identity, a digest of its content ([`crate::layers::seed::identity`]);
//! - the build epoch ([`crate::builder::epoch`]);
//! - the keys of the layers below, lowest first (so a changed base rebuilds above);
//! - the content of the config overlay, if any;
//! - each repository's name and the digest of its shared files (eclasses, profiles,
//!   ...), and the digest of every package directory the layer may use, sorted
//!   ([`crate::builder::repos`]).
//!
//! So two machines with the same seed content, repositories, config and epoch agree
//! on every key, and an edited ebuild changes the keys of exactly the layers that may
//! use its package, and of the layers above them.

use std::io;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::layers::digest::{self, DigestCache, TreeOptions};
use crate::layers::store::BuildKey;
use crate::layers::store::PackageInput;

/// Bumped whenever the layer format or the build procedure changes what a layer
/// contains for the same inputs.
pub const LAYER_FORMAT_VERSION: u32 = 2;

/// What a layer's inputs key covers (see the module doc).
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    pub config: &'a serde_json::Value,
    pub seed_id: &'a str,
    pub epoch: i64,
    pub base_keys: &'a [BuildKey],
    pub overlay_digest: Option<&'a str>,
    /// `(repository name, shared-files digest)`, sorted by name.
    pub repos: &'a [(String, String)],
    /// The package directories the layer may use, with their digests.
    pub packages: &'a [PackageInput],
}

fn field(h: &mut Sha256, tag: &str, data: &[u8]) {
    // Length-prefixed, tagged fields: no two different inputs share an encoding.
    h.update(tag.as_bytes());
    h.update([0]);
    h.update((data.len() as u64).to_le_bytes());
    h.update(data);
}

/// The key of a layer.
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
    field(&mut h, "epoch", inputs.epoch.to_string().as_bytes());
    for b in inputs.base_keys {
        field(&mut h, "base", b.as_str().as_bytes());
    }
    if let Some(d) = inputs.overlay_digest {
        field(&mut h, "overlay", d.as_bytes());
    }
    for (name, d) in inputs.repos {
        field(&mut h, "repo", name.as_bytes());
        field(&mut h, "shared", d.as_bytes());
    }
    let mut sorted: Vec<&PackageInput> = inputs.packages.iter().collect();
    sorted.sort();
    for p in sorted {
        field(&mut h, "package-repo", p.repo.as_bytes());
        field(&mut h, "package", p.package.as_bytes());
        field(&mut h, "package-digest", p.digest.as_bytes());
    }
    BuildKey::from_digest(&h.finalize().into())
}

/// A digest of a directory tree's content: names, types, permission bits, file
/// contents and symlink targets, in sorted order (owners and times excluded: a
/// config overlay copied by another user or at another time is the same input).
pub fn digest_tree(dir: &Path) -> io::Result<String> {
    digest::digest_tree(dir, &TreeOptions::content(), &mut DigestCache::in_memory())
        .map(|d| d.hex)
        .map_err(|e| io::Error::new(e.source.kind(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    fn key(
        config: &serde_json::Value,
        seed: &str,
        bases: &[BuildKey],
        ov: Option<&str>,
    ) -> BuildKey {
        keyx(config, seed, bases, ov, 0, &[], &[])
    }

    fn keyx(
        config: &serde_json::Value,
        seed: &str,
        bases: &[BuildKey],
        ov: Option<&str>,
        epoch: i64,
        repos: &[(String, String)],
        packages: &[PackageInput],
    ) -> BuildKey {
        layer_key(&KeyInputs {
            config,
            seed_id: seed,
            epoch,
            base_keys: bases,
            overlay_digest: ov,
            repos,
            packages,
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
            keyx(&c, "s1", &[], None, 1, &[], &[]),
            keyx(&c, "s1", &[], None, 0, &[("r".into(), "d".into())], &[]),
            keyx(&c, "s1", &[], None, 0, &[("r2".into(), "d".into())], &[]),
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

    #[test]
    fn package_digests_change_the_layer_key_in_any_order() {
        let p = |pkg: &str, d: &str| PackageInput {
            repo: "gentree-test".into(),
            package: pkg.into(),
            digest: d.into(),
        };
        let c = json!({});
        let k = |pkgs: &[PackageInput]| keyx(&c, "s", &[], None, 0, &[], pkgs);
        let a = k(&[p("app-misc/a", "1"), p("app-misc/b", "2")]);
        assert_eq!(a, k(&[p("app-misc/b", "2"), p("app-misc/a", "1")]));
        assert_ne!(a, k(&[p("app-misc/a", "1"), p("app-misc/b", "3")]));
        assert_ne!(a, k(&[p("app-misc/a", "1")]));
        assert_ne!(a, k(&[]));
    }

    fn filetime_touch(p: &Path) -> io::Result<()> {
        let f = fs::File::options().append(true).open(p)?;
        f.set_modified(std::time::SystemTime::UNIX_EPOCH)
    }
}
