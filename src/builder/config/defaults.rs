//! Default configuration: the embedded defaults (genTree's `default.toml` plus its
//! code defaults), the default files merged over them (one level deep, B06),
//! the per-seed and per-build-tag overrides (deep-merged, B05), and the builtin bases.
//!
//! Which files are read is a [`DefaultSources`] value, so tests never touch the real
//! `/etc` or home directory.

use std::path::{Path, PathBuf};

use super::ConfigError;
use super::raw::{self, Ctx};
use super::value::{self, Table};

/// The embedded defaults (`src/builder/config/default.toml`).
pub const EMBEDDED_DEFAULTS: &str = include_str!("default.toml");

/// The builtin bases, referenced by bare name, with genTree's contents.
pub const BUILTINS: &[(&str, &str)] = &[
    ("base", include_str!("../builtin/base.toml")),
    (
        "ca-certificates",
        include_str!("../builtin/ca-certificates.toml"),
    ),
    ("coreutils", include_str!("../builtin/coreutils.toml")),
    ("gcc", include_str!("../builtin/gcc.toml")),
    ("glibc", include_str!("../builtin/glibc.toml")),
    (
        "glibc-stripped",
        include_str!("../builtin/glibc-stripped.toml"),
    ),
    ("openssl", include_str!("../builtin/openssl.toml")),
    ("tini", include_str!("../builtin/tini.toml")),
];

pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn builtin_names() -> Vec<&'static str> {
    BUILTINS.iter().map(|(n, _)| *n).collect()
}

/// Which default config files to read. Each group is read at most once: its first
/// existing file (so `gentree/config.toml` shadows genTree's `genTree/config.toml`).
#[derive(Debug, Clone, Default)]
pub struct DefaultSources {
    pub groups: Vec<Vec<PathBuf>>,
}

impl DefaultSources {
    /// No default files: the embedded defaults only (`--no-config`, tests).
    pub fn none() -> Self {
        Self::default()
    }

    /// Exactly these files, each read if it exists, in this order.
    pub fn files(files: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            groups: files.into_iter().map(|f| vec![f]).collect(),
        }
    }

    /// The standard locations: `/etc/gentree/config.toml` (else
    /// `/etc/genTree/config.toml`), then `$XDG_CONFIG_HOME/gentree/config.toml`
    /// (XDG default `~/.config`; else genTree's `~/.config/genTree/config.toml`).
    pub fn standard(xdg_config_home: Option<PathBuf>, home: Option<PathBuf>) -> Self {
        let mut groups = vec![vec![
            PathBuf::from("/etc/gentree/config.toml"),
            PathBuf::from("/etc/genTree/config.toml"),
        ]];
        let home_config = home
            .filter(|h| !h.as_os_str().is_empty())
            .map(|h| h.join(".config"));
        let xdg = xdg_config_home
            .filter(|x| x.is_absolute())
            .or_else(|| home_config.clone());
        let mut user = Vec::new();
        if let Some(x) = xdg {
            user.push(x.join("gentree/config.toml"));
        }
        if let Some(h) = home_config {
            user.push(h.join("genTree/config.toml"));
        }
        if !user.is_empty() {
            groups.push(user);
        }
        Self { groups }
    }

    /// [`Self::standard`] from this process's `XDG_CONFIG_HOME` and `HOME`.
    pub fn from_env() -> Self {
        Self::standard(
            std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from),
            std::env::var_os("HOME").map(PathBuf::from),
        )
    }

    /// The preferred file of each group (for "add it to ..." messages).
    pub fn preferred(&self) -> Vec<PathBuf> {
        self.groups
            .iter()
            .filter_map(|g| g.first().cloned())
            .collect()
    }
}

/// The merged defaults: embedded, then each default file.
#[derive(Debug, Clone)]
pub struct Defaults {
    table: Table,
    /// The default files actually read, in merge order.
    pub files: Vec<PathBuf>,
    /// Where a user could put defaults (for error messages).
    pub suggested: Vec<PathBuf>,
}

impl Defaults {
    /// Embedded defaults merged with the files of `sources` that exist.
    pub fn load(sources: &DefaultSources) -> Result<Self, ConfigError> {
        let mut d = Self::embedded()?;
        d.suggested = sources.preferred();
        for group in &sources.groups {
            let Some(path) = group.iter().find(|p| p.is_file()) else {
                continue;
            };
            let text = super::file::read(path, |source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            d.merge_text(&text, path)?;
            tracing::debug!("read default config {}", path.display());
            d.files.push(path.clone());
        }
        Ok(d)
    }

    /// The embedded defaults alone.
    pub fn embedded() -> Result<Self, ConfigError> {
        let path = Path::new("<embedded defaults>");
        let table = raw::check(&value::parse(EMBEDDED_DEFAULTS, path)?, Ctx::Defaults)?;
        Ok(Self {
            table,
            files: Vec::new(),
            suggested: Vec::new(),
        })
    }

    /// Merges one more default file's text (genTree's one-level merge).
    pub fn merge_text(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let t = raw::check(&value::parse(text, path)?, Ctx::Defaults)?;
        self.table.merge_default_file(&t);
        Ok(())
    }

    /// The global default seed.
    pub fn seed(&self) -> Option<String> {
        raw::get_str(&self.table, "seed")
    }

    /// The defaults in effect for `seed` and `build_tag`: the global keys, deep-merged
    /// with `[default.<seed>]` and then `[default.<seed>.<tag>]` (B05). Presence
    /// decides, so an override can set false or an empty string (B04).
    pub fn effective(&self, seed: &str, build_tag: Option<&str>) -> Table {
        let mut out = self.table.clone();
        out.remove("default");
        let Some(st) = self.table.table("default").and_then(|d| d.table(seed)) else {
            return out;
        };
        let keys_only = |t: &Table| -> Table {
            t.entries()
                .iter()
                .filter(|e| raw::spec(&e.key).is_some())
                .cloned()
                .collect()
        };
        out.deep_merge(&keys_only(st));
        if let Some(tt) = build_tag.and_then(|t| st.table(t)) {
            out.deep_merge(tt);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::config::raw::{get_bool, get_str, value_text};

    fn with(texts: &[&str]) -> Defaults {
        let mut d = Defaults::embedded().unwrap();
        for (i, t) in texts.iter().enumerate() {
            d.merge_text(t, Path::new(&format!("d{i}.toml"))).unwrap();
        }
        d
    }

    fn env(t: &Table, k: &str) -> Option<String> {
        t.table("env").and_then(|e| e.get(k)).map(value_text)
    }

    #[test]
    fn embedded_defaults_and_builtins_parse() {
        let d = Defaults::embedded().unwrap();
        let t = d.effective("any", None);
        assert_eq!(env(&t, "binpkg_format").as_deref(), Some("gpkg"));
        assert_eq!(get_str(&t, "profile_repo").as_deref(), Some("gentoo"));
        assert_eq!(d.seed(), None);
        for (name, text) in BUILTINS {
            let t = value::parse(text, Path::new(name)).unwrap();
            raw::check(&t, Ctx::Base).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(builtin_names().len(), 8);
    }

    #[test]
    fn override_table() {
        let d = with(&[
            "seed = \"s\"\nprofile = \"global\"\nclean_seed = true\n[env]\nuse = \"g\"\n\
             [default.s]\nprofile = \"seed\"\nclean_seed = false\n[default.s.env]\nuse = \"\"\n\
             [default.s.t]\nprofile = \"tag\"\n[default.s.t.env]\ncflags = \"-O1\"\n",
        ]);
        // (seed, tag, profile, clean_seed, use, cflags, features still there)
        let cases = [
            ("other", None, "global", true, Some("g"), None),
            ("s", None, "seed", false, Some(""), None),
            ("s", Some("t"), "tag", false, Some(""), Some("-O1")),
            ("s", Some("nope"), "seed", false, Some(""), None),
        ];
        for (seed, tag, profile, clean, use_, cflags) in cases {
            let t = d.effective(seed, tag);
            let ctx = format!("{seed} {tag:?}");
            assert_eq!(get_str(&t, "profile").as_deref(), Some(profile), "{ctx}");
            // B04: an explicit false in an override wins over the global true.
            assert_eq!(get_bool(&t, "clean_seed"), Some(clean), "{ctx}");
            assert_eq!(env(&t, "use").as_deref(), use_, "{ctx}");
            assert_eq!(env(&t, "cflags").as_deref(), cflags, "{ctx}");
            // B05: override env tables merge with the global env, FEATURES survive.
            assert!(env(&t, "features").unwrap().contains("buildpkg"), "{ctx}");
            assert!(t.get("default").is_none());
        }
    }

    #[test]
    fn user_env_features_replaces_builtin_list_b06() {
        let d = with(&["[env]\nfeatures = \"-buildpkg\"\n"]);
        let t = d.effective("s", None);
        assert_eq!(env(&t, "features").as_deref(), Some("-buildpkg"));
        assert_eq!(env(&t, "binpkg_format").as_deref(), Some("gpkg"));
    }

    #[test]
    fn standard_sources_prefer_gentree_then_gentree_spelling() {
        let s = DefaultSources::standard(None, Some("/home/u".into()));
        assert_eq!(
            s.groups,
            vec![
                vec![
                    PathBuf::from("/etc/gentree/config.toml"),
                    PathBuf::from("/etc/genTree/config.toml")
                ],
                vec![
                    PathBuf::from("/home/u/.config/gentree/config.toml"),
                    PathBuf::from("/home/u/.config/genTree/config.toml")
                ],
            ]
        );
        let s = DefaultSources::standard(Some("/x".into()), Some("/home/u".into()));
        assert_eq!(s.groups[1][0], PathBuf::from("/x/gentree/config.toml"));
        assert_eq!(
            s.groups[1][1],
            PathBuf::from("/home/u/.config/genTree/config.toml")
        );
    }

    #[test]
    fn gentree_file_shadows_reference_file() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("gentree.toml");
        let old = dir.path().join("genTree.toml");
        std::fs::write(&old, "seed = \"old\"\n").unwrap();
        let src = DefaultSources {
            groups: vec![vec![new.clone(), old.clone()]],
        };
        assert_eq!(Defaults::load(&src).unwrap().seed().as_deref(), Some("old"));
        std::fs::write(&new, "seed = \"new\"\n").unwrap();
        let d = Defaults::load(&src).unwrap();
        assert_eq!(d.seed().as_deref(), Some("new"));
        assert_eq!(d.files, vec![new]);
    }
}
