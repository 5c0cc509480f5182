//! From a config file to a [`ResolvedConfig`] tree: seed and build tag first (B03),
//! then every key by one precedence rule, command line > file > parent (inherited
//! keys) > per-seed/tag overrides > global defaults (B02, B21), where presence, not
//! truthiness, decides (B04). Bases are resolved recursively with the config as their
//! parent, relative paths against the including file (B51), with a cycle check.
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
use super::raw::{self, Ctx, get_bool, get_int, get_list, get_str, value_text};
use super::value::{self, LocatedVal, Table, Val};

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

/// Host directories a top-level config or the defaults may relocate;
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
    /// This config's own `[oci]` table (the image merges them: [`super::oci`]).
    pub oci: super::oci::ImageSettings,
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
/// (`update-seed`, `init-crossdev`): the config
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
        let keys = Keys {
            file: f,
            defaults: d,
        };
        let s = |k: &str, inherited: Option<Option<&String>>| keys.str(k, inherited);
        let b = |k: &str, inherited: Option<bool>| keys.bool(k, inherited);

        let name = get_str(f, "name").unwrap_or_else(|| src.stem.clone());
        names::validate("name", &name, &origin)?;
        names::validate("seed", &self.seed, &origin)?;

        let (crossdev_target, package_tag) = self.targets(&keys, parent, &origin)?;
        let (profile, crossdev_profile) =
            self.profiles(&keys, parent, crossdev_target.as_deref(), &origin);
        let inherit_config = b("inherit_config", None);
        let config_overlay = config_overlay(&keys, parent, inherit_config, &origin)?;
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

        let depclean = b("depclean", None);
        let cmds = Commands::of(
            &keys,
            crossdev_target.as_deref(),
            &buildname,
            config_overlay.is_some(),
            depclean,
        )?;
        let seed_update_args = seed_update_args(&keys)?;
        let top = self.top_only(&keys, parent)?;

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
            packages: cmds.packages,
            unmerge: cmds.unmerge,
            depclean,
            rebuild: b("rebuild", parent.map(|p| p.rebuild)),
            clean_build: b("clean_build", parent.map(|p| p.clean_build)),
            inherit_use,
            inherit_features,
            inherit_env,
            inherit_config,
            crossdev_use_env,
            env,
            emerge_args: cmds.emerge_args,
            emerge_bools: cmds.emerge_bools,
            emerge_plain_bools: cmds.emerge_plain_bools,
            emerge: cmds.emerge_argv,
            unmerge_argv: cmds.unmerge_argv,
            depclean_argv: cmds.depclean_argv,
            clean_filters: cmds.clean_filters,
            tar_filters: cmds.tar_filters,
            clean_seed: b("clean_seed", None),
            ephemeral_seed: b("ephemeral_seed", None),
            bind_system_repos: b("bind_system_repos", None),
            system_repos: PathBuf::from(
                s("system_repos", None).unwrap_or_else(|| "/var/db/repos".into()),
            ),
            seed_update_args,
            output_file: top.output_file,
            refilter: top.refilter,
            reproducible: top.reproducible,
            source_date_epoch: top.source_date_epoch,
            cache: top.cache,
            dirs: top.dirs,
            whiteouts: rel_paths(f, "whiteouts")?,
            opaques: rel_paths(f, "opaques")?,
            oci: super::oci::settings(f),
            bases: Vec::new(),
        })
    }

    /// The crossdev target and package tag (a base takes its parent's), each
    /// validated with the build tag as a name.
    fn targets(
        &self,
        keys: &Keys<'_>,
        parent: Option<&ResolvedConfig>,
        origin: &str,
    ) -> Result<(Option<String>, Option<String>), ConfigError> {
        let s = |k: &str, inherited: Option<Option<&String>>| keys.str(k, inherited);
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
                names::validate(what, v, origin)?;
            }
        }
        Ok((crossdev_target, package_tag))
    }

    /// The profile and, with a crossdev target, the cross root's profile (warned
    /// about on the top config when there is none).
    fn profiles(
        &self,
        keys: &Keys<'_>,
        parent: Option<&ResolvedConfig>,
        crossdev_target: Option<&str>,
        origin: &str,
    ) -> (Option<String>, Option<String>) {
        let (f, d) = (keys.file, keys.defaults);
        let s = |k: &str, inherited: Option<Option<&String>>| keys.str(k, inherited);
        let is_top = parent.is_none();
        let profile = self
            .cli
            .profile
            .clone()
            .or_else(|| s("profile", Some(parent.and_then(|p| p.profile.as_ref()))));
        let crossdev_profile = match crossdev_target {
            None => None,
            Some(t) => f
                .table("crossdev_profile")
                .and_then(|c| get_str(c, t))
                .or_else(|| parent.and_then(|p| p.crossdev_profile.clone()))
                .or_else(|| d.table("crossdev_profile").and_then(|c| get_str(c, t))),
        };
        if let (Some(t), None, true) = (crossdev_target, &crossdev_profile, is_top) {
            tracing::warn!(
                "{origin}: no crossdev_profile for {t}: the cross root's profile is left as it is (add `{t} = \"...\"` under [crossdev_profile])"
            );
        }
        (profile, crossdev_profile)
    }

    /// What only the top config sets; a base takes its parent's (and writes no
    /// output file).
    fn top_only(
        &self,
        keys: &Keys<'_>,
        parent: Option<&ResolvedConfig>,
    ) -> Result<TopOnly, ConfigError> {
        let (f, d) = (keys.file, keys.defaults);
        let b = |k: &str, inherited: Option<bool>| keys.bool(k, inherited);
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
        Ok(TopOnly {
            dirs,
            refilter,
            reproducible,
            output_file,
            source_date_epoch,
            cache,
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

/// A config file's keys over the defaults: file > parent (inherited keys only) >
/// defaults.
struct Keys<'t> {
    file: &'t Table,
    defaults: &'t Table,
}

impl Keys<'_> {
    /// A string key; `inherited` is the parent's value for keys a base inherits.
    fn str(&self, k: &str, inherited: Option<Option<&String>>) -> Option<String> {
        get_str(self.file, k)
            .or_else(|| inherited.flatten().cloned())
            .or_else(|| get_str(self.defaults, k))
    }

    /// A boolean key, false when set nowhere.
    fn bool(&self, k: &str, inherited: Option<bool>) -> bool {
        get_bool(self.file, k)
            .or(inherited)
            .or_else(|| get_bool(self.defaults, k))
            .unwrap_or(false)
    }
}

/// The config overlay: the file's, the parent's with `inherit_config`, or the
/// defaults'.
fn config_overlay(
    keys: &Keys<'_>,
    parent: Option<&ResolvedConfig>,
    inherit_config: bool,
    origin: &str,
) -> Result<Option<String>, ConfigError> {
    let (f, d) = (keys.file, keys.defaults);
    let config_overlay = get_str(f, "config_overlay")
        .or_else(|| {
            parent
                .filter(|_| inherit_config)
                .and_then(|p| p.config_overlay.clone())
        })
        .or_else(|| get_str(d, "config_overlay"));
    if let Some(o) = &config_overlay {
        names::validate("config_overlay", o, origin)?;
    }
    Ok(config_overlay)
}

/// A layer's package atoms, emerge options and filter switches, and the Portage
/// command lines made of them.
struct Commands {
    packages: Vec<String>,
    unmerge: Vec<String>,
    emerge_args: OrderedMap<String>,
    emerge_bools: OrderedMap<bool>,
    clean_filters: OrderedMap<bool>,
    tar_filters: OrderedMap<bool>,
    emerge_plain_bools: Vec<String>,
    emerge_argv: Option<Vec<String>>,
    unmerge_argv: Option<Vec<String>>,
    depclean_argv: Option<Vec<String>>,
}

impl Commands {
    fn of(
        keys: &Keys<'_>,
        crossdev_target: Option<&str>,
        buildname: &str,
        config_overlay: bool,
        depclean: bool,
    ) -> Result<Commands, ConfigError> {
        let (f, d) = (keys.file, keys.defaults);
        let packages = atoms(f, "packages")?;
        let unmerge = atoms(f, "unmerge")?;
        let emerge_args: OrderedMap<String> = OrderedMap(
            merged_table(d, f, "emerge_args")
                .entries()
                .iter()
                .map(|e| (e.key.clone(), value_text(&e.value)))
                .collect(),
        );
        let bools = |k: &str| -> OrderedMap<bool> {
            OrderedMap(
                merged_table(d, f, k)
                    .entries()
                    .iter()
                    .map(|e| (e.key.clone(), matches!(e.value.val, Val::Bool(true))))
                    .collect(),
            )
        };
        let emerge_bools = bools("emerge_bools");
        let clean_filters = bools("clean_filter_options");
        let tar_filters = bools("tar_filter_options");
        let emerge_plain_bools = get_list(f, "emerge_plain_bools")
            .or_else(|| get_list(d, "emerge_plain_bools"))
            .unwrap_or_default();

        let root = format!("/builds/{buildname}");
        let cmds = emerge::LayerCommands {
            target: crossdev_target,
            root: &root,
            config_overlay,
            args: &emerge_args.0,
            bools: &emerge_bools.0,
            plain: &emerge_plain_bools,
            packages: &packages,
            unmerge: &unmerge,
            depclean,
        };
        let (emerge_argv, unmerge_argv, depclean_argv) =
            (cmds.emerge(), cmds.unmerge(), cmds.depclean());
        Ok(Commands {
            packages,
            unmerge,
            emerge_args,
            emerge_bools,
            clean_filters,
            tar_filters,
            emerge_plain_bools,
            emerge_argv,
            unmerge_argv,
            depclean_argv,
        })
    }
}

/// `seed_update_args`, split shell-style; a quoting error names the key.
fn seed_update_args(keys: &Keys<'_>) -> Result<Vec<String>, ConfigError> {
    let (f, d) = (keys.file, keys.defaults);
    let seed_update_text = keys.str("seed_update_args", None).unwrap_or_default();
    emerge::shell_split(&seed_update_text).map_err(|why| {
        let at = f
            .get("seed_update_args")
            .or_else(|| d.get("seed_update_args"));
        bad_value(at, "seed_update_args", why)
    })
}

/// The keys only a top config sets ([`Resolver::top_only`]).
struct TopOnly {
    dirs: Dirs,
    refilter: bool,
    reproducible: bool,
    output_file: Option<PathBuf>,
    source_date_epoch: Option<i64>,
    cache: Option<String>,
}

/// A path naming a config in messages: the file, or `builtin:<name>`.
fn origin_path(o: &Origin) -> PathBuf {
    match o {
        Origin::File(p) => p.clone(),
        Origin::Builtin(n) => PathBuf::from(format!("builtin:{n}")),
    }
}

fn bad_value(at: Option<&LocatedVal>, key: &str, message: &str) -> ConfigError {
    ConfigError::BadValue {
        at: at.map_or_else(|| value::code_loc("<unknown>"), |n| n.at.clone()),
        key: key.to_string(),
        message: message.to_string(),
    }
}

/// The default table `key` shallow-merged with the file's: default keys first in
/// their order, file keys replacing in place or appended.
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
mod tests;
