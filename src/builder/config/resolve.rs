//! From a config file to a [`ResolvedConfig`] tree (spec 3.3-3.6 with the section 7
//! fixes): seed and build tag first (B03), then every key by one precedence rule,
//! command line > file > parent (inherited keys) > per-seed/tag overrides > global
//! defaults (B02, B21), where presence, not truthiness, decides (B04). Bases are
//! resolved recursively with the config as their parent, relative paths against the
//! including file (B51), with a cycle check.
//!
//! Everything resolved is ordered data (vectors, `BTreeMap`), so equal inputs give
//! equal trees and equal serialisations: later cache keys hash them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ConfigError;
use super::defaults::{self, Defaults};
use super::emerge;
use super::env::{self, EnvInputs};
use super::file::{self, FileStamp};
use super::names;
use super::raw::{self, Ctx, get_bool, get_int, get_list, get_str, node_text};
use super::value::{self, Node, Table, Val};

/// Values given on the command line (`-c`, `-p`, `-t`); they win over files and
/// defaults (B02).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    pub crossdev_target: Option<String>,
    pub profile: Option<String>,
    pub build_tag: Option<String>,
}

/// A string-keyed map that keeps insertion order (serialised as a JSON object).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<V> OrderedMap<V> {
    pub fn get(&self, k: &str) -> Option<&V> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v)
    }
}

impl<V: Serialize> Serialize for OrderedMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Where a config came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    File(PathBuf),
    Builtin(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Builtin(n) => write!(f, "builtin:{n}"),
        }
    }
}

/// Host directories a top-level config or the defaults may relocate (spec 2.1);
/// `None` means the builder's default below the conf root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dirs {
    pub conf_root: Option<PathBuf>,
    pub seed_dir: Option<PathBuf>,
    pub build_dir: Option<PathBuf>,
    /// Replaces the whole binpkg dir (no tag/target suffixes).
    pub pkgdir: Option<PathBuf>,
    pub distfile_dir: Option<PathBuf>,
    pub repo_dir: Option<PathBuf>,
    pub config_dir: Option<PathBuf>,
}

/// One resolved config (a layer) and, nested, its bases in list order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedConfig {
    pub name: String,
    pub origin: Origin,
    /// `seed[-build_tag][-crossdev_target]-name`, or `_buildname`.
    pub buildname: String,
    pub seed: String,
    pub build_tag: Option<String>,
    pub package_tag: Option<String>,
    pub crossdev_target: Option<String>,
    /// The host profile (`profile`).
    pub profile: Option<String>,
    /// `crossdev_profile[crossdev_target]`, when there is a target.
    pub crossdev_profile: Option<String>,
    pub profile_repo: String,
    pub config_overlay: Option<String>,
    pub packages: Vec<String>,
    pub unmerge: Vec<String>,
    pub depclean: bool,
    pub rebuild: bool,
    pub clean_build: bool,
    pub inherit_use: bool,
    pub inherit_features: bool,
    pub inherit_env: bool,
    pub inherit_config: bool,
    pub crossdev_use_env: bool,
    /// The exported environment: upper-case names, flag sets space-separated.
    pub env: BTreeMap<String, String>,
    pub emerge_args: OrderedMap<String>,
    pub emerge_bools: OrderedMap<bool>,
    pub emerge_plain_bools: Vec<String>,
    /// The layer's emerge argv; `None` without packages.
    pub emerge: Option<Vec<String>>,
    /// The unmerge argv; `None` without `unmerge` packages.
    pub unmerge_argv: Option<Vec<String>>,
    /// The depclean argv; `None` unless `depclean` and there are packages.
    pub depclean_argv: Option<Vec<String>>,
    pub clean_filters: OrderedMap<bool>,
    pub tar_filters: OrderedMap<bool>,
    /// Binpkg dir name below the conf root (`dirs.pkgdir` replaces it when set).
    pub pkgdir: String,
    pub clean_seed: bool,
    pub ephemeral_seed: bool,
    pub bind_system_repos: bool,
    pub system_repos: PathBuf,
    /// `seed_update_args`, split shell-style.
    pub seed_update_args: Vec<String>,
    /// Top-level only: the final output name, relative to the build dir.
    pub output_file: Option<PathBuf>,
    pub refilter: bool,
    /// Top-level only, accepted for compatibility: outputs are always reproducible.
    pub reproducible: bool,
    /// Top-level only: the build epoch (`SOURCE_DATE_EPOCH` in the environment wins).
    pub source_date_epoch: Option<i64>,
    /// Top-level only: the layer cache's reference (validated).
    pub cache: Option<String>,
    pub dirs: Dirs,
    /// Pre-seeded deletions (relative paths).
    pub whiteouts: Vec<String>,
    pub opaques: Vec<String>,
    pub bases: Vec<ResolvedConfig>,
}

impl ResolvedConfig {
    /// The profile the build links as `make.profile`: the crossdev profile for a
    /// cross build (never the host profile, B17), else `profile`.
    pub fn effective_profile(&self) -> Option<&str> {
        match self.crossdev_target {
            Some(_) => self.crossdev_profile.as_deref(),
            None => self.profile.as_deref(),
        }
    }

    /// `/builds/<buildname>`: the overlay root and emerge `--root` in the namespace.
    pub fn root(&self) -> String {
        format!("/builds/{}", self.buildname)
    }

    /// Every layer in build order, bases before the configs that use them, each
    /// distinct layer once at its first position (B33, B34). The last is `self`.
    pub fn build_order(&self) -> Vec<&ResolvedConfig> {
        fn walk<'a>(c: &'a ResolvedConfig, out: &mut Vec<&'a ResolvedConfig>) {
            for b in &c.bases {
                walk(b, out);
            }
            if !out.contains(&c) {
                out.push(c);
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

/// Resolves the build config at `path`.
pub fn resolve_file(
    path: &Path,
    cli: &CliOverrides,
    defaults: &Defaults,
) -> Result<ResolvedConfig, ConfigError> {
    resolve_file_stamped(path, cli, defaults).0
}

/// Resolves the build config at `path`, and says which files the resolution read
/// (the config and its base files, each stamped before it was read, a missing one as
/// absent): while every stamp is current, resolving again gives the same result.
pub fn resolve_file_stamped(
    path: &Path,
    cli: &CliOverrides,
    defaults: &Defaults,
) -> (Result<ResolvedConfig, ConfigError>, Vec<FileStamp>) {
    let reads = RefCell::new(vec![FileStamp::of(path)]);
    let r = file::read(path, |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
    .and_then(|text| resolve_text(&text, path, cli, defaults, &reads));
    (r, reads.into_inner())
}

/// Resolves config text as if read from `path` (which names it and anchors
/// relative base paths).
pub fn resolve_str(
    text: &str,
    path: &Path,
    cli: &CliOverrides,
    defaults: &Defaults,
) -> Result<ResolvedConfig, ConfigError> {
    resolve_text(text, path, cli, defaults, &RefCell::new(Vec::new()))
}

fn resolve_text(
    text: &str,
    path: &Path,
    cli: &CliOverrides,
    defaults: &Defaults,
    reads: &RefCell<Vec<FileStamp>>,
) -> Result<ResolvedConfig, ConfigError> {
    let table = raw::check(&value::parse(text, path)?, Ctx::Top)?;
    let seed = get_str(&table, "seed")
        .or_else(|| defaults.seed())
        .ok_or_else(|| ConfigError::MissingSeed {
            path: path.to_path_buf(),
            defaults: defaults.suggested.clone(),
        })?;
    let build_tag = cli
        .build_tag
        .clone()
        .or_else(|| get_str(&table, "build_tag"));
    let eff = defaults.effective(&seed, build_tag.as_deref());
    let src = Source {
        table,
        origin: Origin::File(path.to_path_buf()),
        id: identity(path),
        dir: path.parent().map(Path::to_path_buf),
        stem: stem(path),
    };
    let r = Resolver {
        cli,
        defaults: &eff,
        seed,
        build_tag,
        reads,
    };
    r.resolve(&src, None, &mut Vec::new())
}

/// Resolves the config of a command that works on a seed without a config file
/// (`update-seed`, `init-crossdev`; spec 3.4 "without a config file"): the config
/// `seed = "SEED"` with `bases` (builtin names), resolved as if read from
/// `SEED.toml`. So its name is the seed's, and every default (embedded, default
/// files, `[default.SEED]` and `[default.SEED.TAG]` overrides, `-c`/`-p`/`-t`)
/// applies exactly as it would to a one-line config file (B08, B25).
pub fn resolve_seed(
    seed: &str,
    bases: &[&str],
    cli: &CliOverrides,
    defaults: &Defaults,
) -> Result<ResolvedConfig, ConfigError> {
    // Validated names are plain TOML string contents (no quotes or backslashes).
    names::validate("seed", seed, "the command line")?;
    for b in bases {
        names::validate("base", b, "the command line")?;
    }
    let list: Vec<String> = bases.iter().map(|b| format!("\"{b}\"")).collect();
    let text = format!("seed = \"{seed}\"\nbases = [{}]\n", list.join(", "));
    resolve_str(&text, Path::new(&format!("{seed}.toml")), cli, defaults)
}

/// A parsed, checked config and where it came from.
struct Source {
    table: Table,
    origin: Origin,
    /// Identity for cycle detection: the canonical path or `builtin:<name>`.
    id: String,
    dir: Option<PathBuf>,
    stem: String,
}

fn identity(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Only the `.toml` suffix is dropped, so dotted names survive (B45).
    name.strip_suffix(".toml")
        .map(str::to_string)
        .unwrap_or(name)
}

struct Resolver<'a> {
    cli: &'a CliOverrides,
    /// Effective defaults for the run's seed and build tag.
    defaults: &'a Table,
    seed: String,
    build_tag: Option<String>,
    /// The base files read so far ([`resolve_file_stamped`]).
    reads: &'a RefCell<Vec<FileStamp>>,
}

impl Resolver<'_> {
    /// Resolves one config and, recursively, its bases; `chain` holds the configs
    /// being resolved (for the cycle check).
    fn resolve(
        &self,
        src: &Source,
        parent: Option<&ResolvedConfig>,
        chain: &mut Vec<(String, String)>,
    ) -> Result<ResolvedConfig, ConfigError> {
        let mut out = self.layer(src, parent)?;
        chain.push((src.id.clone(), src.origin.to_string()));
        let mut bases = Vec::new();
        for base_ref in get_list(&src.table, "bases").unwrap_or_default() {
            let (borigin, bid) = self.locate(src, &base_ref)?;
            if let Some(pos) = chain.iter().position(|(id, _)| *id == bid) {
                let mut names: Vec<String> = chain[pos..].iter().map(|(_, n)| n.clone()).collect();
                names.push(borigin.to_string());
                return Err(ConfigError::Cycle { chain: names });
            }
            let bsrc = self.load_base(src, &base_ref, borigin, bid)?;
            bases.push(self.resolve(&bsrc, Some(&out), chain)?);
        }
        chain.pop();
        out.bases = bases;
        Ok(out)
    }

    /// One config without its bases.
    fn layer(
        &self,
        src: &Source,
        parent: Option<&ResolvedConfig>,
    ) -> Result<ResolvedConfig, ConfigError> {
        let f = &src.table;
        let d = self.defaults;
        let origin = src.origin.to_string();
        let is_top = parent.is_none();

        // Precedence: file > parent (inherited keys only) > defaults.
        let s = |k: &str, inherited: Option<Option<&String>>| {
            get_str(f, k)
                .or_else(|| inherited.flatten().cloned())
                .or_else(|| get_str(d, k))
        };
        let b = |k: &str, inherited: Option<bool>| {
            get_bool(f, k)
                .or(inherited)
                .or_else(|| get_bool(d, k))
                .unwrap_or(false)
        };

        let name = get_str(f, "name").unwrap_or_else(|| src.stem.clone());
        names::validate("name", &name, &origin)?;
        names::validate("seed", &self.seed, &origin)?;

        let crossdev_target = match parent {
            Some(p) => p.crossdev_target.clone(),
            None => self
                .cli
                .crossdev_target
                .clone()
                .or_else(|| s("crossdev_target", None)),
        };
        let package_tag = match parent {
            Some(p) => p.package_tag.clone(),
            None => s("package_tag", None),
        };
        for (what, v) in [
            ("build_tag", &self.build_tag),
            ("crossdev_target", &crossdev_target),
            ("package_tag", &package_tag),
        ] {
            if let Some(v) = v {
                names::validate(what, v, &origin)?;
            }
        }
        let profile = self
            .cli
            .profile
            .clone()
            .or_else(|| s("profile", Some(parent.and_then(|p| p.profile.as_ref()))));
        let crossdev_profile = match &crossdev_target {
            None => None,
            Some(t) => f
                .table("crossdev_profile")
                .and_then(|c| get_str(c, t))
                .or_else(|| parent.and_then(|p| p.crossdev_profile.clone()))
                .or_else(|| d.table("crossdev_profile").and_then(|c| get_str(c, t))),
        };
        if let (Some(t), None, true) = (&crossdev_target, &crossdev_profile, is_top) {
            tracing::warn!(
                "{origin}: no crossdev_profile for {t}: the cross root's profile is left as it is (add `{t} = \"...\"` under [crossdev_profile])"
            );
        }
        let inherit_config = b("inherit_config", None);
        let config_overlay = get_str(f, "config_overlay")
            .or_else(|| {
                parent
                    .filter(|_| inherit_config)
                    .and_then(|p| p.config_overlay.clone())
            })
            .or_else(|| get_str(d, "config_overlay"));
        if let Some(o) = &config_overlay {
            names::validate("config_overlay", o, &origin)?;
        }
        let crossdev_use_env = b("crossdev_use_env", parent.map(|p| p.crossdev_use_env));
        let inherit_use = b("inherit_use", None);
        let inherit_features = b("inherit_features", None);
        let inherit_env = b("inherit_env", None);

        let env = env::compute(&EnvInputs {
            defaults: d,
            file: f,
            cross: crossdev_target.is_some(),
            crossdev_use_env,
            inherit_use,
            inherit_features,
            inherit_env,
            parent: parent.map(|p| &p.env),
        });

        let buildname = match get_str(f, "_buildname") {
            Some(n) => n,
            None => names::buildname(
                &self.seed,
                self.build_tag.as_deref(),
                crossdev_target.as_deref(),
                &name,
            ),
        };
        names::validate("buildname", &buildname, &origin)?;

        let packages = atoms(f, "packages")?;
        let unmerge = atoms(f, "unmerge")?;
        let emerge_args: OrderedMap<String> = OrderedMap(
            merged_table(d, f, "emerge_args")
                .entries()
                .iter()
                .map(|e| (e.key.clone(), node_text(&e.node)))
                .collect(),
        );
        let bools = |k: &str| -> OrderedMap<bool> {
            OrderedMap(
                merged_table(d, f, k)
                    .entries()
                    .iter()
                    .map(|e| (e.key.clone(), matches!(e.node.val, Val::Bool(true))))
                    .collect(),
            )
        };
        let emerge_bools = bools("emerge_bools");
        let clean_filters = bools("clean_filter_options");
        let tar_filters = bools("tar_filter_options");
        let emerge_plain_bools = get_list(f, "emerge_plain_bools")
            .or_else(|| get_list(d, "emerge_plain_bools"))
            .unwrap_or_default();

        let depclean = b("depclean", None);
        let root = format!("/builds/{buildname}");
        let cmds = emerge::LayerCommands {
            target: crossdev_target.as_deref(),
            root: &root,
            config_overlay: config_overlay.is_some(),
            args: &emerge_args.0,
            bools: &emerge_bools.0,
            plain: &emerge_plain_bools,
            packages: &packages,
            unmerge: &unmerge,
            depclean,
        };
        let (emerge_argv, unmerge_argv, depclean_argv) =
            (cmds.emerge(), cmds.unmerge(), cmds.depclean());

        let seed_update_text = s("seed_update_args", None).unwrap_or_default();
        let seed_update_args = emerge::shell_split(&seed_update_text).map_err(|why| {
            let at = f
                .get("seed_update_args")
                .or_else(|| d.get("seed_update_args"));
            bad_value(at, "seed_update_args", why)
        })?;

        let (dirs, refilter, reproducible, output_file, source_date_epoch) = match parent {
            Some(p) => (
                p.dirs.clone(),
                p.refilter,
                p.reproducible,
                None,
                p.source_date_epoch,
            ),
            None => (
                self.dirs(f)?,
                b("refilter", None),
                b("reproducible", None),
                get_str(f, "output_file").map(PathBuf::from),
                get_int(f, "source_date_epoch").or_else(|| get_int(d, "source_date_epoch")),
            ),
        };
        let cache = match parent {
            Some(p) => p.cache.clone(),
            None => {
                let at = f.get("cache").or_else(|| d.get("cache"));
                let r = get_str(f, "cache").or_else(|| get_str(d, "cache"));
                if let Some(r) = &r {
                    crate::cache::CacheRef::parse(r).map_err(|why| bad_value(at, "cache", &why))?;
                }
                r
            }
        };

        Ok(ResolvedConfig {
            name,
            origin: src.origin.clone(),
            buildname,
            seed: self.seed.clone(),
            build_tag: self.build_tag.clone(),
            pkgdir: names::pkgdir_name(
                package_tag.as_deref(),
                self.build_tag.as_deref(),
                crossdev_target.as_deref(),
            ),
            package_tag,
            crossdev_target,
            profile,
            crossdev_profile,
            profile_repo: s("profile_repo", Some(parent.map(|p| &p.profile_repo)))
                .unwrap_or_else(|| "gentoo".into()),
            config_overlay,
            packages,
            unmerge,
            depclean,
            rebuild: b("rebuild", parent.map(|p| p.rebuild)),
            clean_build: b("clean_build", parent.map(|p| p.clean_build)),
            inherit_use,
            inherit_features,
            inherit_env,
            inherit_config,
            crossdev_use_env,
            env,
            emerge_args,
            emerge_bools,
            emerge_plain_bools,
            emerge: emerge_argv,
            unmerge_argv,
            depclean_argv,
            clean_filters,
            tar_filters,
            clean_seed: b("clean_seed", None),
            ephemeral_seed: b("ephemeral_seed", None),
            bind_system_repos: b("bind_system_repos", None),
            system_repos: PathBuf::from(
                s("system_repos", None).unwrap_or_else(|| "/var/db/repos".into()),
            ),
            seed_update_args,
            output_file,
            refilter,
            reproducible,
            source_date_epoch,
            cache,
            dirs,
            whiteouts: rel_paths(f, "whiteouts")?,
            opaques: rel_paths(f, "opaques")?,
            bases: Vec::new(),
        })
    }

    /// Finds base `reference` of `parent` without reading it: a builtin by bare
    /// name, or a path (ending in `.toml` or containing `/`) relative to the
    /// including file (B51). Returns its origin and identity.
    fn locate(&self, parent: &Source, reference: &str) -> Result<(Origin, String), ConfigError> {
        if reference.ends_with(".toml") || reference.contains('/') {
            let path = match &parent.dir {
                Some(d) => d.join(reference),
                None => PathBuf::from(reference),
            };
            let id = identity(&path);
            return Ok((Origin::File(path), id));
        }
        if defaults::builtin(reference).is_none() {
            return Err(ConfigError::UnknownBuiltin {
                path: origin_path(&parent.origin),
                name: reference.to_string(),
                builtins: defaults::builtin_names(),
            });
        }
        Ok((
            Origin::Builtin(reference.to_string()),
            format!("builtin:{reference}"),
        ))
    }

    /// Reads and checks a located base.
    fn load_base(
        &self,
        parent: &Source,
        reference: &str,
        origin: Origin,
        id: String,
    ) -> Result<Source, ConfigError> {
        let (text, dir, stem_name) = match &origin {
            Origin::File(path) => {
                self.reads.borrow_mut().push(FileStamp::of(path));
                let text = file::read(path, |source| ConfigError::MissingBase {
                    path: origin_path(&parent.origin),
                    base: reference.to_string(),
                    resolved: path.clone(),
                    source,
                })?;
                (text, path.parent().map(Path::to_path_buf), stem(path))
            }
            Origin::Builtin(n) => (
                defaults::builtin(n).unwrap_or_default().to_string(),
                None,
                n.clone(),
            ),
        };
        let table = raw::check(&value::parse(&text, &origin_path(&origin))?, Ctx::Base)?;
        Ok(Source {
            table,
            origin,
            id,
            dir,
            stem: stem_name,
        })
    }

    fn dirs(&self, f: &Table) -> Result<Dirs, ConfigError> {
        let p = |k: &str| {
            get_str(f, k)
                .or_else(|| get_str(self.defaults, k))
                .map(PathBuf::from)
        };
        Ok(Dirs {
            conf_root: p("conf_root"),
            seed_dir: p("_seed_dir"),
            build_dir: p("_build_dir"),
            pkgdir: p("_pkgdir"),
            distfile_dir: p("_distfile_dir"),
            repo_dir: p("_repo_dir"),
            config_dir: p("_config_dir"),
        })
    }
}

/// A path naming a config in messages: the file, or `builtin:<name>`.
fn origin_path(o: &Origin) -> PathBuf {
    match o {
        Origin::File(p) => p.clone(),
        Origin::Builtin(n) => PathBuf::from(format!("builtin:{n}")),
    }
}

fn bad_value(at: Option<&Node>, key: &str, message: &str) -> ConfigError {
    ConfigError::BadValue {
        at: at.map_or_else(|| value::code_loc("<unknown>"), |n| n.at.clone()),
        key: key.to_string(),
        message: message.to_string(),
    }
}

/// The default table `key` shallow-merged with the file's: default keys first in
/// their order, file keys replacing in place or appended (spec 3.4 step 4).
fn merged_table(d: &Table, f: &Table, key: &str) -> Table {
    let mut t = d.table(key).cloned().unwrap_or_default();
    for e in f.table(key).map(|t| t.entries()).unwrap_or_default() {
        t.insert(e.clone());
    }
    t
}

/// Package atoms: none may start with `-`, which emerge would take as an option.
fn atoms(f: &Table, key: &str) -> Result<Vec<String>, ConfigError> {
    let list = get_list(f, key).unwrap_or_default();
    if let Some(bad) = list.iter().find(|a| a.starts_with('-')) {
        return Err(bad_value(
            f.get(key),
            key,
            &format!("`{bad}` is not a package atom (it would be an emerge option)"),
        ));
    }
    Ok(list)
}

/// Relative paths inside the image (whiteouts/opaques): no absolute paths, no `..`
/// (B57); `./` prefixes and trailing `/` dropped.
fn rel_paths(f: &Table, key: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in get_list(f, key).unwrap_or_default() {
        let parts: Vec<&str> = p
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if p.starts_with('/') || parts.is_empty() || parts.contains(&"..") {
            return Err(bad_value(
                f.get(key),
                key,
                &format!("`{p}` must be a relative path inside the image, without `..`"),
            ));
        }
        let norm = parts.join("/");
        if seen.insert(norm.clone()) {
            out.push(norm);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::config::DefaultSources;

    fn defaults(texts: &[&str]) -> Defaults {
        let mut d = Defaults::embedded().unwrap();
        for (i, t) in texts.iter().enumerate() {
            d.merge_text(t, Path::new(&format!("default{i}.toml")))
                .unwrap();
        }
        d
    }

    fn res(text: &str, defs: &[&str], cli: &CliOverrides) -> Result<ResolvedConfig, ConfigError> {
        resolve_str(text, Path::new("/cfg/nginx.toml"), cli, &defaults(defs))
    }

    fn ok(text: &str, defs: &[&str]) -> ResolvedConfig {
        res(text, defs, &CliOverrides::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn sv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn find<'a>(c: &'a ResolvedConfig, name: &str) -> &'a ResolvedConfig {
        c.build_order()
            .into_iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    const README_NGINX: &str = "seed = \"stage3-openrc\"\nbases = [\"tini\", \"gcc\"]\npackages = [\"www-servers/nginx\"]\nunmerge = [\"sys-devel/gcc\"]\n[env]\nuse = \"nginx\"\n[clean_filter_options]\ncharmaps = true\n[tar_filter_options]\nlocales = true\n";

    #[test]
    fn reproducible_is_a_top_level_switch_that_bases_share() {
        let c = ok(
            "seed = \"s\"\nbases = [\"glibc\"]\nreproducible = true\n",
            &[],
        );
        assert!(c.reproducible && find(&c, "glibc").reproducible);
        assert!(!ok("seed = \"s\"\n", &[]).reproducible);
        assert!(ok("seed = \"s\"\n", &["reproducible = true\n"]).reproducible);
    }

    #[test]
    fn cache_is_a_checked_top_level_reference_outside_the_key() {
        let d = "cache = \"http://127.0.0.1:5000/team/cache\"\n";
        let c = ok("seed = \"s\"\nbases = [\"glibc\"]\n", &[d]);
        assert_eq!(c.cache.as_deref(), Some("http://127.0.0.1:5000/team/cache"));
        assert_eq!(find(&c, "glibc").cache, c.cache);
        let own = ok("seed = \"s\"\ncache = \"reg.io/other\"\n", &[d]);
        assert_eq!(own.cache.as_deref(), Some("reg.io/other"));
        assert_eq!(ok("seed = \"s\"\n", &[]).cache, None);
        let plain = ok("seed = \"s\"\n", &[]);
        assert_eq!(
            crate::builder::build::key_config(&c),
            crate::builder::build::key_config(&plain),
            "where layers are cached is no input of a layer"
        );
        let e = res(
            "seed = \"s\"\ncache = \"ftp://x/y\"\n",
            &[],
            &CliOverrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cache") && e.contains("invalid cache reference"),
            "{e}"
        );
    }

    #[test]
    fn source_date_epoch_is_a_top_level_integer_that_bases_share() {
        let c = ok(
            "seed = \"s\"\nbases = [\"glibc\"]\nsource_date_epoch = 1700000000\n",
            &[],
        );
        assert_eq!(c.source_date_epoch, Some(1_700_000_000));
        assert_eq!(find(&c, "glibc").source_date_epoch, Some(1_700_000_000));
        assert_eq!(ok("seed = \"s\"\n", &[]).source_date_epoch, None);
        assert_eq!(
            ok("seed = \"s\"\n", &["source_date_epoch = 5\n"]).source_date_epoch,
            Some(5)
        );
        assert_eq!(
            ok(
                "seed = \"s\"\nsource_date_epoch = 7\n",
                &["source_date_epoch = 5\n"]
            )
            .source_date_epoch,
            Some(7)
        );
    }

    #[test]
    fn glibc_layer_argv_matches_spec_4_1() {
        let c = ok("seed = \"stage3-openrc\"\nbases = [\"glibc\"]\n", &[]);
        let g = find(&c, "glibc");
        assert_eq!(g.buildname, "stage3-openrc-glibc");
        assert_eq!(
            g.emerge.as_deref().unwrap(),
            sv(
                "emerge --root /builds/stage3-openrc-glibc --jobs=8 --verbose=y --nodeps --usepkg=y --with-bdeps=n --oneshot sys-libs/glibc"
            )
        );
        // A config without packages has no emerge run.
        assert_eq!(c.emerge, None);
    }

    #[test]
    fn readme_nginx_example() {
        let c = ok(README_NGINX, &[]);
        assert_eq!(c.name, "nginx");
        assert_eq!(c.buildname, "stage3-openrc-nginx");
        assert_eq!(
            c.emerge.as_deref().unwrap(),
            sv(
                "emerge --root /builds/stage3-openrc-nginx --jobs=8 --verbose=y --usepkg=y --with-bdeps=n www-servers/nginx"
            )
        );
        assert_eq!(
            c.unmerge_argv.as_deref().unwrap(),
            sv("emerge --root /builds/stage3-openrc-nginx --unmerge sys-devel/gcc")
        );
        assert_eq!(c.depclean_argv, None);
        assert_eq!(c.env.get("USE").map(String::as_str), Some("nginx"));
        assert_eq!(c.tar_filters.get("locales"), Some(&true));
        assert_eq!(c.clean_filters.get("locales"), Some(&false));
        // B34: base is listed once, at its first position.
        let order: Vec<&str> = c.build_order().iter().map(|b| b.name.as_str()).collect();
        assert_eq!(
            order,
            ["base", "glibc", "glibc-stripped", "tini", "gcc", "nginx"]
        );
        // Bases never get the parent's USE (inherit_use defaults to false, B11).
        assert_eq!(
            find(&c, "base").env.get("USE").map(String::as_str),
            Some("build")
        );
        assert_eq!(find(&c, "gcc").env.get("USE"), None);
        assert_eq!(
            find(&c, "glibc-stripped").clean_filters.get("locales"),
            Some(&true)
        );
        assert_eq!(find(&c, "tini").emerge_bools.get("oneshot"), None);
        assert_eq!(c.pkgdir, "pkgdir");
        assert_eq!(c.effective_profile(), None);
    }

    const README_USER_DEFAULTS: &str =
        include_str!("../../../tests/fixtures/configs/home/.config/genTree/config.toml");

    #[test]
    fn spec_3_7_worked_example() {
        let c = ok(
            README_NGINX,
            &["[env]\ncommon_flags = \"-march=native -O3 -pipe\"\n"],
        );
        let flags = "-march=native -O3 -pipe";
        let want: BTreeMap<String, String> = [
            ("USE", "nginx"),
            ("FEATURES", "buildpkg binpkg-multi-instance parallel-fetch parallel-install -ebuild-locks -merge-wait -merge-sync"),
            ("BINPKG_FORMAT", "gpkg"),
            ("COMMON_FLAGS", flags),
            ("CFLAGS", flags),
            ("CXXFLAGS", flags),
            ("FCFLAGS", flags),
            ("FFLAGS", flags),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(c.env, want);
        // Bases get their own file USE or none, never nginx; their flags are not doubled.
        let base = find(&c, "base");
        assert_eq!(base.env["USE"], "build");
        assert_eq!(base.env["CFLAGS"], flags);
        assert_eq!(find(&c, "tini").env.get("USE"), None);
    }

    #[test]
    fn readme_user_defaults_with_pi3_tag() {
        let cli = CliOverrides {
            build_tag: Some("pi3".into()),
            ..Default::default()
        };
        let c = res(
            "bases = [\"glibc\"]\npackages = [\"www-servers/nginx\"]\n",
            &[README_USER_DEFAULTS],
            &cli,
        )
        .unwrap();
        let t = "aarch64-unknown-linux-gnu";
        assert_eq!(c.seed, "openrc-hardened");
        assert_eq!(c.crossdev_target.as_deref(), Some(t));
        assert_eq!(c.buildname, format!("openrc-hardened-pi3-{t}-nginx"));
        assert_eq!(c.pkgdir, format!("pkgdir_pi3_{t}"));
        assert_eq!(c.effective_profile(), Some("default/linux/arm64/23.0"));
        assert_eq!(c.emerge.as_ref().unwrap()[0], format!("emerge-{t}"));
        let arm = "-march=armv8-a+crc -mtune=cortex-a53 -flto -O3 -pipe";
        for v in ["COMMON_FLAGS", "CFLAGS", "CXXFLAGS", "FCFLAGS", "FFLAGS"] {
            assert_eq!(c.env.get(v).map(String::as_str), Some(arm), "{v}");
        }
        assert_eq!(
            c.env.get("CPU_FLAGS_X86"),
            None,
            "host CPU flags must not leak into a cross build (B18)"
        );
        assert!(c.env["FEATURES"].contains("buildpkg"));
        let g = find(&c, "glibc");
        assert_eq!(g.crossdev_target.as_deref(), Some(t));
        assert_eq!(g.buildname, format!("openrc-hardened-pi3-{t}-glibc"));
        assert_eq!(g.env.get("CFLAGS").map(String::as_str), Some(arm));

        // Without the tag: the host build with the global profile and flags.
        let c = res(
            "packages = [\"x/y\"]\n",
            &[README_USER_DEFAULTS],
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.crossdev_target, None);
        assert_eq!(
            c.effective_profile(),
            Some("default/linux/amd64/23.0/no-multilib/hardened")
        );
        assert_eq!(c.env["CFLAGS"], "-march=native -flto -O3 -pipe");
        assert!(c.env["CPU_FLAGS_X86"].starts_with("aes avx"));

        // Per-seed overrides for another seed: env deep-merged (B05), package_tag names the pkgdir.
        let c = res(
            "seed = \"openrc-desktop-generic\"\n",
            &[README_USER_DEFAULTS],
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.effective_profile(),
            Some("default/linux/amd64/23.0/desktop")
        );
        assert_eq!(c.pkgdir, "pkgdir_generic");
        assert_eq!(c.env["CFLAGS"], "-flto -O3 -pipe");
        assert!(
            c.env.contains_key("CPU_FLAGS_X86"),
            "global env keys survive a seed's [env] override"
        );
    }

    #[test]
    fn precedence_table() {
        let defs = "seed = \"a\"\nprofile = \"global\"\ncrossdev_target = \"x86_64-pc-linux-gnu\"\n[default.a]\nprofile = \"seed-a\"\n[default.b]\nprofile = \"seed-b\"\ndepclean = true\n[default.b.t]\ndepclean = false\n";
        let cli_p = CliOverrides {
            profile: Some("cli".into()),
            crossdev_target: Some("aarch64-unknown-linux-gnu".into()),
            ..Default::default()
        };
        let none = CliOverrides::default();
        let tag = CliOverrides {
            build_tag: Some("t".into()),
            ..Default::default()
        };
        // (what, file, cli, profile, target, depclean)
        let cases = [
            (
                "seed overrides of the default seed",
                "",
                &none,
                Some("seed-a"),
                Some("x86_64-pc-linux-gnu"),
                false,
            ),
            (
                "B02: CLI beats file and defaults",
                "profile = \"file\"\n",
                &cli_p,
                Some("cli"),
                Some("aarch64-unknown-linux-gnu"),
                false,
            ),
            (
                "file beats defaults",
                "profile = \"file\"\n",
                &none,
                Some("file"),
                Some("x86_64-pc-linux-gnu"),
                false,
            ),
            (
                "B03: overrides of the file's seed",
                "seed = \"b\"\n",
                &none,
                Some("seed-b"),
                Some("x86_64-pc-linux-gnu"),
                true,
            ),
            (
                "B04: a false tag override wins",
                "seed = \"b\"\n",
                &tag,
                Some("seed-b"),
                Some("x86_64-pc-linux-gnu"),
                false,
            ),
            (
                "file false beats a true default",
                "seed = \"b\"\ndepclean = false\n",
                &none,
                Some("seed-b"),
                Some("x86_64-pc-linux-gnu"),
                false,
            ),
        ];
        for (what, file, cli, profile, target, depclean) in cases {
            let c = res(file, &[defs], cli).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(c.profile.as_deref(), profile, "{what}");
            assert_eq!(c.crossdev_target.as_deref(), target, "{what}");
            assert_eq!(c.depclean, depclean, "{what}");
        }
    }

    #[test]
    fn inheritance_to_bases() {
        let c = ok(
            "seed = \"s\"\nprofile = \"p\"\nrebuild = true\nclean_build = false\npackage_tag = \"pt\"\nconfig_overlay = \"ov\"\nbases = [\"glibc\"]\npackages = [\"a/b\"]\ndepclean = true\noutput_file = \"x.tar\"\n[env]\ncflags = \"-O2\"\nmakeopts = \"-j4\"\nuse = \"nginx\"\n[emerge_args]\nkeep_going = \"y\"\n[tar_filter_options]\nvardbpkg = true\n",
            &[],
        );
        let g = find(&c, "glibc");
        assert_eq!(g.profile.as_deref(), Some("p"));
        assert!(g.rebuild && !g.clean_build);
        assert_eq!(g.package_tag.as_deref(), Some("pt"));
        assert_eq!(g.pkgdir, "pkgdir_pt");
        // inherit_config defaults to false: no config overlay for the base.
        assert_eq!(g.config_overlay, None);
        assert!(
            !g.emerge
                .as_ref()
                .unwrap()
                .contains(&"--config-root".to_string())
        );
        // B21/B10: cflags and misc env inherited; USE is not.
        assert_eq!(g.env.get("CFLAGS").map(String::as_str), Some("-O2"));
        assert_eq!(g.env.get("MAKEOPTS").map(String::as_str), Some("-j4"));
        assert_eq!(g.env.get("USE"), None);
        // DEF_ARGS tables are not inherited (B10 deviation kept).
        assert_eq!(g.emerge_args.get("keep_going"), None);
        assert_eq!(g.tar_filters.get("vardbpkg"), Some(&false));
        assert_eq!(g.output_file, None);
        // The top config: B47 --config-root everywhere, depclean argv.
        let root = "/builds/s-nginx";
        assert_eq!(
            c.emerge.as_deref().unwrap(),
            sv(&format!(
                "emerge --root {root} --config-root {root} --jobs=8 --keep-going=y --verbose=y --usepkg=y --with-bdeps=n a/b"
            ))
        );
        assert_eq!(
            c.depclean_argv.as_deref().unwrap(),
            sv(&format!(
                "emerge --root {root} --config-root {root} --depclean --with-bdeps=n"
            ))
        );
        assert_eq!(c.output_file.as_deref(), Some(Path::new("x.tar")));
    }

    #[test]
    fn inherit_flags_explicit_true_apply_b09() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("child.toml"), "inherit_use = true\ninherit_config = true\ninherit_env = false\n[env]\nuse = \"-bar\"\n").unwrap();
        let top = dir.path().join("top.toml");
        std::fs::write(&top, "seed = \"s\"\nbases = [\"child.toml\"]\nconfig_overlay = \"ov\"\n[env]\nuse = \"foo bar\"\nmakeopts = \"-j4\"\n").unwrap();
        let c = resolve_file(&top, &CliOverrides::default(), &defaults(&[])).unwrap();
        let b = &c.bases[0];
        assert_eq!(b.env.get("USE").map(String::as_str), Some("-bar foo"));
        assert_eq!(b.config_overlay.as_deref(), Some("ov"));
        assert_eq!(b.env.get("MAKEOPTS"), None);
    }

    #[test]
    fn bases_by_relative_path_and_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("images");
        std::fs::create_dir_all(dir.path().join("common")).unwrap();
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(
            dir.path().join("common/tools.toml"),
            "bases = [\"base\", \"shared.toml\"]\npackages = \"app-misc/tool\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("common/shared.toml"),
            "bases = [\"base\"]\n",
        )
        .unwrap();
        let top = sub.join("img.toml");
        std::fs::write(&top, "seed = \"s\"\nbases = [\"../common/tools.toml\", \"../common/shared.toml\", \"base\"]\n").unwrap();
        let c = resolve_file(&top, &CliOverrides::default(), &defaults(&[])).unwrap();
        let order: Vec<&str> = c.build_order().iter().map(|b| b.name.as_str()).collect();
        assert_eq!(order, ["base", "shared", "tools", "img"]);
        assert_eq!(c.bases.len(), 3, "the nested tree keeps every reference");
    }

    #[test]
    fn stamps_name_every_file_read_and_a_too_large_base_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("img.toml");
        let base = dir.path().join("b.toml");
        let gone = dir.path().join("gone.toml");
        std::fs::write(&base, "packages = [\"a/b\"]\n").unwrap();
        std::fs::write(&top, "seed = \"s\"\nbases = [\"b.toml\", \"base\"]\n").unwrap();
        let cli = CliOverrides::default();
        let (r, files) = resolve_file_stamped(&top, &cli, &defaults(&[]));
        r.unwrap();
        let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
        assert_eq!(
            paths,
            [top.as_path(), base.as_path()],
            "builtins read no file"
        );
        assert!(files.iter().all(|f| f.id.is_some() && f.is_current()));

        // A missing base is stamped absent: creating it is a change.
        std::fs::write(&top, "seed = \"s\"\nbases = [\"gone.toml\"]\n").unwrap();
        let (r, files) = resolve_file_stamped(&top, &cli, &defaults(&[]));
        assert!(matches!(r, Err(ConfigError::MissingBase { .. })));
        assert_eq!(files[1].path, gone);
        assert!(files[1].id.is_none() && files[1].is_current());

        let f = std::fs::File::create(&base).unwrap();
        f.set_len(file::MAX_CONFIG_BYTES + 1).unwrap();
        std::fs::write(&top, "seed = \"s\"\nbases = [\"b.toml\"]\n").unwrap();
        let e = resolve_file(&top, &cli, &defaults(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{} is 2097153 bytes", base.display())),
            "{e}"
        );
    }

    #[test]
    fn base_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("a.toml"), "seed = \"s\"\nbases = [\"b.toml\"]\n").unwrap();
        std::fs::write(p("b.toml"), "bases = [\"c.toml\"]\n").unwrap();
        std::fs::write(p("c.toml"), "bases = [\"b.toml\"]\n").unwrap();
        std::fs::write(p("restricted.toml"), "\n\npackage_tag = \"x\"\n").unwrap();
        std::fs::write(p("r.toml"), "seed = \"s\"\nbases = [\"restricted.toml\"]\n").unwrap();
        std::fs::write(
            p("m.toml"),
            "seed = \"s\"\nbases = [\"nope/missing.toml\"]\n",
        )
        .unwrap();
        std::fs::write(p("u.toml"), "seed = \"s\"\nbases = [\"glibcc\"]\n").unwrap();
        let d = defaults(&[]);
        let err = |n: &str| {
            resolve_file(&p(n), &CliOverrides::default(), &d)
                .unwrap_err()
                .to_string()
        };
        let (a, b, c) = (p("a.toml"), p("b.toml"), p("c.toml"));
        assert_eq!(
            err("a.toml"),
            format!(
                "bases form a cycle: {} -> {} -> {}",
                b.display(),
                c.display(),
                b.display()
            )
        );
        let _ = a;
        assert_eq!(
            err("r.toml"),
            format!(
                "{}:3:1: `package_tag` cannot be set in a base config (only the top-level build file or the defaults set it; bases inherit it)",
                p("restricted.toml").display()
            )
        );
        let e = err("m.toml");
        assert!(
            e.starts_with(&format!(
                "{}: base `nope/missing.toml` not found at {}",
                p("m.toml").display(),
                p("nope/missing.toml").display()
            )),
            "{e}"
        );
        assert!(err("u.toml").contains("unknown builtin base `glibcc`: the builtin bases are base, ca-certificates, coreutils, gcc, glibc, glibc-stripped, openssl, tini"));
    }

    #[test]
    fn missing_seed_says_how_to_set_one() {
        let d = Defaults::load(&DefaultSources::files([PathBuf::from(
            "/nonexistent/gentree/config.toml",
        )]))
        .unwrap();
        let e = resolve_str(
            "packages = [\"a/b\"]\n",
            Path::new("x.toml"),
            &CliOverrides::default(),
            &d,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "x.toml: no seed: add `seed = \"NAME\"` to it or to a default config (/nonexistent/gentree/config.toml), naming a seed imported with `gentree-fs import-seed`"
        );
    }

    #[test]
    fn invalid_values() {
        let cases = [
            (
                "seed = \"a/b\"\n",
                "seed `a/b` (from /cfg/nginx.toml) is not a safe name",
            ),
            ("seed = \"s\"\nname = \"..\"\n", "name `..`"),
            ("seed = \"s\"\nbuild_tag = \"a,b\"\n", "build_tag `a,b`"),
            (
                "seed = \"s\"\npackages = [\"--ask\"]\n",
                "`packages`: `--ask` is not a package atom",
            ),
            (
                "seed = \"s\"\nwhiteouts = [\"/etc/x\"]\n",
                "`whiteouts`: `/etc/x` must be a relative path",
            ),
            (
                "seed = \"s\"\nopaques = [\"a/../../b\"]\n",
                "`opaques`: `a/../../b` must be a relative path",
            ),
            (
                "seed = \"s\"\nseed_update_args = \"'x\"\n",
                "/cfg/nginx.toml:2:20: `seed_update_args`: unterminated single quote",
            ),
        ];
        for (text, want) in cases {
            let e = res(text, &[], &CliOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn misc_keys() {
        let c = ok(
            "seed = \"s\"\n_buildname = \"custom\"\nwhiteouts = [\"./usr/share/x/\", \"usr/share/x\"]\npkgdir = \"/srv/pkgs\"\nseed_update_args = \"--update 'a b'\"\n[emerge_bools]\nupdate = true\ndeep = true\nask = false\n[emerge_args]\nload_average = 4.5\n",
            &["emerge_plain_bools = [\"ask\"]\n"],
        );
        assert_eq!(c.buildname, "custom");
        assert_eq!(c.whiteouts, ["usr/share/x"]);
        assert_eq!(c.dirs.pkgdir.as_deref(), Some(Path::new("/srv/pkgs")));
        assert_eq!(c.seed_update_args, ["--update", "a b"]);
        assert!(c.refilter && c.clean_build && !c.clean_seed);
        assert_eq!(c.profile_repo, "gentoo");
        assert_eq!(c.system_repos, Path::new("/var/db/repos"));
        let opts = emerge::option_args(&c.emerge_args.0, &c.emerge_bools.0, &c.emerge_plain_bools);
        assert_eq!(
            opts,
            sv("--jobs=8 --load-average=4.5 --verbose=y --usepkg=y --with-bdeps=n --update --deep")
        );
    }

    #[test]
    fn resolution_is_deterministic() {
        let a = serde_json::to_string(&ok(README_NGINX, &[README_USER_DEFAULTS])).unwrap();
        let b = serde_json::to_string(&ok(README_NGINX, &[README_USER_DEFAULTS])).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_seed_without_a_file_gets_every_default() {
        let d = defaults(&[
            "[default.s3]\nprofile = \"default/linux/amd64/23.0\"\nseed_update_args = \"--update 'a b'\"\n",
        ]);
        let c = resolve_seed("s3", &[], &CliOverrides::default(), &d).unwrap();
        assert_eq!(c.name, "s3");
        assert_eq!(c.seed, "s3");
        assert_eq!(c.profile.as_deref(), Some("default/linux/amd64/23.0"));
        assert_eq!(c.seed_update_args, ["--update", "a b"]);
        assert!(c.bases.is_empty() && c.emerge.is_none());
        // The embedded default update arguments (spec 1.4).
        let plain = resolve_seed("other", &[], &CliOverrides::default(), &d).unwrap();
        assert_eq!(
            plain.seed_update_args,
            sv("--jobs 4 --update --deep --newuse --changed-use --with-bdeps=y --usepkg=y @world")
        );
        assert_eq!(plain.profile, None);
        // Builtin bases and the command line apply as to a file.
        let cli = CliOverrides {
            crossdev_target: Some("aarch64-unknown-linux-gnu".into()),
            ..Default::default()
        };
        let x = resolve_seed("s3", &["glibc"], &cli, &d).unwrap();
        let names: Vec<&str> = x.build_order().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["base", "glibc", "s3"]);
        assert_eq!(
            find(&x, "glibc").emerge.as_deref().map(|a| a[0].as_str()),
            Some("emerge-aarch64-unknown-linux-gnu")
        );
        // Names that could break out of the synthetic TOML are refused.
        for bad in ["a\"b", "x y", "../s"] {
            assert!(
                resolve_seed(bad, &[], &CliOverrides::default(), &d).is_err(),
                "{bad}"
            );
        }
        assert!(resolve_seed("s3", &["g\"]"], &CliOverrides::default(), &d).is_err());
    }
}
