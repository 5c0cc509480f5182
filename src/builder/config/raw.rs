//! The config schema: which keys exist, their types, where they may be written, and
//! the checks that turn genTree's silent ignoring of typos and wrong types into
//! errors (B13, B14, B53). [`check`] validates one file's table and returns it with
//! README aliases renamed to the canonical keys (B15); the typed getters read the
//! checked values.

use super::ConfigError;
use super::env::{COMPILER_VARS, CPU_FLAG_VARS};
use super::value::{Entry, Loc, LocatedVal, Table, Val};
use crate::layers::tar::filter;

/// The type a key's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Bool,
    /// A non-negative integer.
    Int,
    /// An array of strings, or a string split on whitespace (B14).
    List,
    /// `[env]` / `[crossdev_env]`: arbitrary lower-case keys.
    Env,
    /// Table of filter name -> bool; `true` for the tar filters.
    Filters {
        tar: bool,
    },
    EmergeArgs,
    EmergeBools,
    /// `[crossdev_profile]`: target tuple -> profile.
    StrTable,
    /// `[oci]`: the image's run settings ([`super::oci`]).
    Oci,
}

impl Ty {
    fn expected(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Bool => "a boolean (true or false)",
            Ty::Int => "a non-negative integer",
            Ty::List => "an array of strings (or one whitespace-separated string)",
            Ty::Env => "a table of environment variables",
            Ty::Filters { .. } => "a table of filter names to booleans",
            Ty::EmergeArgs => "a table of emerge option names to values",
            Ty::EmergeBools => "a table of emerge option names to booleans",
            Ty::StrTable => "a table of target tuples to profile names",
            Ty::Oci => "a table of image settings (entrypoint, cmd, env, ...)",
        }
    }
}

/// Never taken from a default config: identity of a build, set per file.
pub const FILE_ONLY: u8 = 1;
/// Only in a top-level build file or defaults, never in a base ("child restricted").
pub const TOP_ONLY: u8 = 2;

#[derive(Debug)]
pub struct KeySpec {
    pub name: &'static str,
    pub ty: Ty,
    pub flags: u8,
}

const fn k(name: &'static str, ty: Ty, flags: u8) -> KeySpec {
    KeySpec { name, ty, flags }
}

/// Every top-level key of a build config (and of a default config, minus FILE_ONLY).
pub const KEYS: &[KeySpec] = &[
    k("name", Ty::Str, FILE_ONLY),
    k("seed", Ty::Str, TOP_ONLY),
    k("bases", Ty::List, FILE_ONLY),
    k("packages", Ty::List, FILE_ONLY),
    k("unmerge", Ty::List, FILE_ONLY),
    k("depclean", Ty::Bool, 0),
    k("rebuild", Ty::Bool, 0),
    k("profile", Ty::Str, 0),
    k("profile_repo", Ty::Str, 0),
    k("config_overlay", Ty::Str, 0),
    k("inherit_use", Ty::Bool, 0),
    k("inherit_features", Ty::Bool, 0),
    k("inherit_env", Ty::Bool, 0),
    k("inherit_config", Ty::Bool, 0),
    k("crossdev_target", Ty::Str, TOP_ONLY),
    k("crossdev_profile", Ty::StrTable, 0),
    k("crossdev_use_env", Ty::Bool, 0),
    k("crossdev_env", Ty::Env, 0),
    k("build_tag", Ty::Str, FILE_ONLY | TOP_ONLY),
    k("package_tag", Ty::Str, TOP_ONLY),
    k("output_file", Ty::Str, FILE_ONLY | TOP_ONLY),
    k("refilter", Ty::Bool, TOP_ONLY),
    k("reproducible", Ty::Bool, TOP_ONLY),
    // The build epoch (gentree-fs only: genTree ignores unknown keys).
    k("source_date_epoch", Ty::Int, TOP_ONLY),
    // The layer cache, `[http://|https://]HOST[:PORT]/REPO` (gentree-fs only).
    k("cache", Ty::Str, TOP_ONLY),
    k("clean_seed", Ty::Bool, 0),
    k("ephemeral_seed", Ty::Bool, 0),
    k("bind_system_repos", Ty::Bool, 0),
    k("system_repos", Ty::Str, 0),
    k("clean_build", Ty::Bool, 0),
    k("seed_update_args", Ty::Str, 0),
    k("env", Ty::Env, 0),
    k("emerge_args", Ty::EmergeArgs, 0),
    k("emerge_bools", Ty::EmergeBools, 0),
    k("emerge_plain_bools", Ty::List, 0),
    k("clean_filter_options", Ty::Filters { tar: false }, 0),
    k("tar_filter_options", Ty::Filters { tar: true }, 0),
    k("whiteouts", Ty::List, FILE_ONLY),
    k("opaques", Ty::List, FILE_ONLY),
    // The image's run settings (gentree-fs only).
    k("oci", Ty::Oci, FILE_ONLY),
    k("_buildname", Ty::Str, FILE_ONLY | TOP_ONLY),
    k("conf_root", Ty::Str, TOP_ONLY),
    k("_seed_dir", Ty::Str, TOP_ONLY),
    k("_build_dir", Ty::Str, TOP_ONLY),
    k("_pkgdir", Ty::Str, TOP_ONLY),
    k("_distfile_dir", Ty::Str, TOP_ONLY),
    k("_repo_dir", Ty::Str, TOP_ONLY),
    k("_config_dir", Ty::Str, TOP_ONLY),
];

/// Other spellings accepted (with a warning) for compatibility: README names (B15)
/// and genTree's plain directory keys, which crash the reference (B13).
pub const ALIASES: &[(&str, &str)] = &[
    ("profile_repos", "profile_repo"),
    ("deplean", "depclean"),
    ("seed_dir", "_seed_dir"),
    ("build_dir", "_build_dir"),
    ("pkgdir", "_pkgdir"),
    ("distfile_dir", "_distfile_dir"),
    ("repo_dir", "_repo_dir"),
    ("config_dir", "_config_dir"),
];

/// Env keys with a meaning of their own besides the compiler and CPU flag variables.
const OWN_ENV: &[&str] = &[
    "use",
    "features",
    "accept_keywords",
    "accept_license",
    "binpkg_format",
    "common_flags",
];

/// Every env key with a meaning of its own (flag sets, `common_flags`, the compiler
/// and CPU flag variables); any other lower-case key is exported as-is.
pub fn known_env() -> impl Iterator<Item = &'static str> {
    OWN_ENV
        .iter()
        .chain(COMPILER_VARS)
        .chain(CPU_FLAG_VARS)
        .copied()
}

/// Where a table being checked sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    /// A top-level build file.
    Top,
    /// A base (child) config.
    Base,
    /// A default config file, top level.
    Defaults,
    /// `[default.<seed>]` or `[default.<seed>.<tag>]`.
    Override,
}

pub fn spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.name == name)
}

/// Validates a config table and returns it with aliases renamed. `Ctx::Defaults`
/// also checks the `[default.<seed>[.<tag>]]` override tables.
pub fn check(t: &Table, ctx: Ctx) -> Result<Table, ConfigError> {
    let mut out = Table::default();
    for e in t.entries() {
        if e.key == "default" && ctx == Ctx::Defaults {
            out.insert(Entry {
                value: check_seed_overrides(e)?,
                ..e.clone()
            });
            continue;
        }
        let name = canonical(&e.key, &e.key_at);
        let Some(s) = spec(name) else {
            // [default.<seed>.<tag>] sub-tables are handled by the caller.
            return Err(unknown_top_key(e));
        };
        if out.get(name).is_some() {
            return Err(ConfigError::BadValue {
                at: e.key_at.clone(),
                key: e.key.clone(),
                message: format!("`{name}` is set twice (under two spellings)"),
            });
        }
        match ctx {
            Ctx::Base if s.flags & TOP_ONLY != 0 => {
                return Err(ConfigError::Restricted {
                    at: e.key_at.clone(),
                    key: name.to_string(),
                });
            }
            Ctx::Defaults | Ctx::Override if s.flags & FILE_ONLY != 0 => {
                return Err(ConfigError::NotDefaultable {
                    at: e.key_at.clone(),
                    key: name.to_string(),
                });
            }
            Ctx::Override if name == "seed" => {
                return Err(ConfigError::BadValue {
                    at: e.key_at.clone(),
                    key: name.to_string(),
                    message: "a per-seed override cannot set `seed`".into(),
                });
            }
            _ => {}
        }
        let value = check_value(&e.value, s.ty, name)?;
        out.insert(Entry {
            key: name.to_string(),
            key_at: e.key_at.clone(),
            value,
        });
    }
    Ok(out)
}

/// `[default]`: each sub-table is a seed's overrides, whose own sub-tables that are
/// not table-valued keys are build-tag overrides.
fn check_seed_overrides(e: &Entry) -> Result<LocatedVal, ConfigError> {
    let seeds = table_of(&e.value, "default", "a table of per-seed tables")?;
    let mut out = Table::default();
    for se in seeds.entries() {
        let key = format!("default.{}", se.key);
        let st = table_of(&se.value, &key, "a table of overrides for that seed")?;
        out.insert(Entry {
            value: LocatedVal {
                val: Val::Table(check_override(st, true, &key)?),
                at: se.value.at.clone(),
            },
            ..se.clone()
        });
    }
    Ok(LocatedVal {
        val: Val::Table(out),
        at: e.value.at.clone(),
    })
}

/// One `[default.<seed>]` (with tag sub-tables) or `[default.<seed>.<tag>]` table.
fn check_override(t: &Table, allow_tags: bool, prefix: &str) -> Result<Table, ConfigError> {
    let mut keys = Table::default();
    let mut tags = Vec::new();
    for e in t.entries() {
        let is_key = spec(&e.key).is_some() || ALIASES.iter().any(|(alias, _)| *alias == e.key);
        if !is_key && allow_tags && e.value.as_table().is_some() {
            tags.push(e);
        } else {
            keys.insert(e.clone());
        }
    }
    let mut out = check(&keys, Ctx::Override).map_err(|err| err.in_table(prefix))?;
    for e in tags {
        let key = format!("{prefix}.{}", e.key);
        let tt = table_of(&e.value, &key, "a table of overrides for that build tag")?;
        out.insert(Entry {
            value: LocatedVal {
                val: Val::Table(check_override(tt, false, &key)?),
                at: e.value.at.clone(),
            },
            ..e.clone()
        });
    }
    Ok(out)
}

fn table_of<'a>(
    n: &'a LocatedVal,
    key: &str,
    expected: &'static str,
) -> Result<&'a Table, ConfigError> {
    n.as_table().ok_or_else(|| wrong_type(n, key, expected))
}

/// The canonical name of a key written under an alias (with a warning).
fn canonical<'a>(key: &'a str, at: &Loc) -> &'a str {
    match ALIASES.iter().find(|(alias, _)| *alias == key) {
        Some((alias, name)) => {
            tracing::warn!("{at}: `{alias}` is genTree's spelling; using `{name}`");
            name
        }
        None => key,
    }
}

fn unknown_top_key(e: &Entry) -> ConfigError {
    let key = e.key.as_str();
    let hint = if key == "default" {
        Some("[default.<seed>] tables belong in a default config file (~/.config/gentree/config.toml)".to_string())
    } else if known_env().any(|k| k == key) {
        Some(format!("did you mean `{key}` in the [env] table?"))
    } else if let Some(f) = key.strip_prefix("tar_filter_") {
        Some(format!(
            "did you mean `{f}` in the [tar_filter_options] table?"
        ))
    } else if let Some(f) = key.strip_prefix("clean_filter_") {
        Some(format!(
            "did you mean `{f}` in the [clean_filter_options] table?"
        ))
    } else {
        let names = KEYS
            .iter()
            .map(|s| s.name)
            .chain(ALIASES.iter().map(|a| a.0));
        did_you_mean(key, names)
    };
    ConfigError::UnknownKey {
        at: e.key_at.clone(),
        key: key.to_string(),
        hint,
    }
}

/// "did you mean `x`?" for the candidate closest to `key`, if close enough.
pub fn did_you_mean<'a>(
    key: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let limit = (key.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(key, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn wrong_type(n: &LocatedVal, key: &str, expected: &'static str) -> ConfigError {
    ConfigError::WrongType {
        at: n.at.clone(),
        key: key.to_string(),
        expected,
        found: n.type_name(),
    }
}

fn check_value(n: &LocatedVal, ty: Ty, key: &str) -> Result<LocatedVal, ConfigError> {
    let ok = match (&n.val, ty) {
        (Val::Str(_), Ty::Str) | (Val::Bool(_), Ty::Bool) | (Val::Str(_), Ty::List) => true,
        (Val::Int(i), Ty::Int) => *i >= 0,
        (Val::Array(items), Ty::List) => {
            for i in items {
                if !matches!(i.val, Val::Str(_)) {
                    return Err(wrong_type(i, key, "a string (array item)"));
                }
            }
            true
        }
        (Val::Table(t), _) if !matches!(ty, Ty::Str | Ty::Bool | Ty::Int | Ty::List) => {
            return Ok(LocatedVal {
                val: Val::Table(check_subtable(t, ty, key)?),
                at: n.at.clone(),
            });
        }
        _ => false,
    };
    if ok {
        Ok(n.clone())
    } else {
        Err(wrong_type(n, key, ty.expected()))
    }
}

fn check_subtable(t: &Table, ty: Ty, key: &str) -> Result<Table, ConfigError> {
    if ty == Ty::Oci {
        return super::oci::check(t, key);
    }
    let mut out = Table::default();
    for e in t.entries() {
        let full = format!("{key}.{}", e.key);
        let mut name = e.key.clone();
        match ty {
            Ty::Env => {
                name = e.key.to_ascii_lowercase();
                if !valid_env_name(&name) {
                    return Err(ConfigError::BadValue {
                        at: e.key_at.clone(),
                        key: full,
                        message: "environment variable names are letters, digits and `_`, not starting with a digit".into(),
                    });
                }
                if !known_env().any(|k| k == name)
                    && !name.starts_with("cpu_flags_")
                    && let Some(h) = did_you_mean(&name, known_env())
                {
                    tracing::warn!(
                        "{}: `{full}` is exported as {}; {h}",
                        e.key_at,
                        name.to_ascii_uppercase()
                    );
                }
                let ok = match &e.value.val {
                    Val::Str(_) | Val::Int(_) | Val::Float(_) => true,
                    Val::Array(items) => items
                        .iter()
                        .all(|i| matches!(i.val, Val::Str(_) | Val::Int(_))),
                    _ => false,
                };
                if !ok {
                    return Err(wrong_type(
                        &e.value,
                        &full,
                        "a string, number or array of strings",
                    ));
                }
            }
            Ty::Filters { tar } => {
                if tar && e.key == "whiteouts" {
                    tracing::warn!(
                        "{}: `{full}` is the README's spelling; using `whiteout`",
                        e.key_at
                    );
                    name = "whiteout".into();
                }
                // One list of filter names: the packer's.
                let known: Vec<&str> = if tar {
                    filter::known()
                } else {
                    filter::path_filter_names().collect()
                };
                if !known.contains(&name.as_str()) {
                    return Err(ConfigError::UnknownKey {
                        at: e.key_at.clone(),
                        key: full,
                        hint: Some(
                            did_you_mean(&name, known.iter().copied())
                                .unwrap_or_else(|| format!("known filters: {}", known.join(", "))),
                        ),
                    });
                }
                if !matches!(e.value.val, Val::Bool(_)) {
                    return Err(wrong_type(&e.value, &full, Ty::Bool.expected()));
                }
            }
            Ty::EmergeArgs => match e.value.val {
                Val::Str(_) | Val::Int(_) | Val::Float(_) => {}
                Val::Bool(_) => {
                    return Err(wrong_type(
                        &e.value,
                        &full,
                        "a string or number (booleans go in [emerge_bools])",
                    ));
                }
                _ => return Err(wrong_type(&e.value, &full, "a string or number")),
            },
            Ty::EmergeBools => {
                if !matches!(e.value.val, Val::Bool(_)) {
                    return Err(wrong_type(&e.value, &full, Ty::Bool.expected()));
                }
            }
            Ty::StrTable => {
                if !matches!(e.value.val, Val::Str(_)) {
                    return Err(wrong_type(&e.value, &full, Ty::Str.expected()));
                }
            }
            Ty::Str | Ty::Bool | Ty::Int | Ty::List | Ty::Oci => {}
        }
        if ty != Ty::Env && (name.is_empty() || name.starts_with('-') || name.contains(['=', ' ']))
        {
            return Err(ConfigError::BadValue {
                at: e.key_at.clone(),
                key: full,
                message: "option names must not be empty, start with `-` or contain `=` or spaces"
                    .into(),
            });
        }
        out.insert(Entry {
            key: name,
            ..e.clone()
        });
    }
    Ok(out)
}

fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---- typed getters over checked tables ----

pub fn get_str(t: &Table, key: &str) -> Option<String> {
    match &t.get(key)?.val {
        Val::Str(s) => Some(s.clone()),
        _ => None,
    }
}

pub fn get_int(t: &Table, key: &str) -> Option<i64> {
    match t.get(key)?.val {
        Val::Int(i) => Some(i),
        _ => None,
    }
}

pub fn get_bool(t: &Table, key: &str) -> Option<bool> {
    match t.get(key)?.val {
        Val::Bool(b) => Some(b),
        _ => None,
    }
}

/// A list key: array items, or a string split on whitespace (B14).
pub fn get_list(t: &Table, key: &str) -> Option<Vec<String>> {
    t.get(key).map(value_words)
}

/// A value as words: strings split on whitespace, array items each split likewise.
pub fn value_words(n: &LocatedVal) -> Vec<String> {
    match &n.val {
        Val::Str(s) => s.split_whitespace().map(str::to_string).collect(),
        Val::Array(items) => items.iter().flat_map(value_words).collect(),
        other => scalar_text(other).into_iter().collect(),
    }
}

/// A value as one string: arrays joined with spaces (B14), numbers as written.
pub fn value_text(n: &LocatedVal) -> String {
    match &n.val {
        Val::Array(items) => items.iter().map(value_text).collect::<Vec<_>>().join(" "),
        other => scalar_text(other).unwrap_or_default(),
    }
}

fn scalar_text(v: &Val) -> Option<String> {
    match v {
        Val::Str(s) => Some(s.clone()),
        Val::Int(i) => Some(i.to_string()),
        Val::Float(f) => Some(f.to_string()),
        Val::Bool(b) => Some(b.to_string()),
        Val::Datetime(d) => Some(d.clone()),
        Val::Array(_) | Val::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::config::value::parse;
    use std::path::Path;

    fn chk(s: &str, ctx: Ctx) -> Result<Table, ConfigError> {
        check(&parse(s, Path::new("f.toml")).unwrap(), ctx)
    }

    #[test]
    fn edit_distance_table() {
        for (a, b, d) in [
            ("", "", 0),
            ("pakages", "packages", 1),
            ("abc", "", 3),
            ("kitten", "sitting", 3),
            ("depclean", "deplean", 1),
        ] {
            assert_eq!(edit_distance(a, b), d, "{a} {b}");
        }
    }

    #[test]
    fn bad_input_messages() {
        let cases: &[(&str, Ctx, &str)] = &[
            (
                "pakages = [\"x\"]",
                Ctx::Top,
                "f.toml:1:1: unknown key `pakages`: did you mean `packages`?",
            ),
            (
                "sed = \"x\"",
                Ctx::Top,
                "unknown key `sed`: did you mean `seed`?",
            ),
            (
                "use = \"x\"",
                Ctx::Top,
                "did you mean `use` in the [env] table?",
            ),
            (
                "tar_filter_vardbpkg = true",
                Ctx::Top,
                "did you mean `vardbpkg` in the [tar_filter_options] table?",
            ),
            ("zzzzzzzz = 1", Ctx::Top, "unknown key `zzzzzzzz`"),
            (
                "source_date_epoch = \"1700000000\"",
                Ctx::Top,
                "`source_date_epoch` must be a non-negative integer, not a string",
            ),
            (
                "source_date_epoch = -1",
                Ctx::Top,
                "`source_date_epoch` must be a non-negative integer",
            ),
            (
                "depclean = \"false\"",
                Ctx::Top,
                "f.toml:1:12: `depclean` must be a boolean (true or false), not a string",
            ),
            (
                "packages = [1]",
                Ctx::Top,
                "f.toml:1:13: `packages` must be a string (array item), not an integer",
            ),
            (
                "depclean = []",
                Ctx::Top,
                "f.toml:1:12: `depclean` must be a boolean (true or false), not an array",
            ),
            (
                "seed = \"s\"",
                Ctx::Base,
                "f.toml:1:1: `seed` cannot be set in a base config",
            ),
            (
                "_pkgdir = \"/x\"",
                Ctx::Base,
                "`_pkgdir` cannot be set in a base config",
            ),
            (
                "pkgdir = \"/x\"",
                Ctx::Base,
                "`_pkgdir` cannot be set in a base config",
            ),
            (
                "packages = [\"x\"]",
                Ctx::Defaults,
                "`packages` cannot be set in a default config",
            ),
            (
                "[default.s]\nbases = [\"x\"]",
                Ctx::Defaults,
                "f.toml:2:1: `bases` cannot be set in a default config",
            ),
            (
                "[default.s.t]\npakages = 1",
                Ctx::Defaults,
                "unknown key `default.s.t.pakages`: did you mean `packages`?",
            ),
            (
                "[clean_filter_options]\ndev = true",
                Ctx::Top,
                "unknown key `clean_filter_options.dev`",
            ),
            (
                "[tar_filter_options]\nlocale = true",
                Ctx::Top,
                "did you mean `locales`?",
            ),
            (
                "[tar_filter_options]\nman = \"yes\"",
                Ctx::Top,
                "`tar_filter_options.man` must be a boolean",
            ),
            (
                "[emerge_bools]\nverbose = 1",
                Ctx::Top,
                "`emerge_bools.verbose` must be a boolean",
            ),
            (
                "[emerge_args]\nkeep_going = true",
                Ctx::Top,
                "booleans go in [emerge_bools]",
            ),
            (
                "[env]\n\"9x\" = \"a\"",
                Ctx::Top,
                "environment variable names",
            ),
            (
                "[env]\nuse = true",
                Ctx::Top,
                "`env.use` must be a string, number or array of strings, not a boolean",
            ),
            (
                "env = \"x\"",
                Ctx::Top,
                "`env` must be a table of environment variables, not a string",
            ),
            (
                "profile_repo = \"a\"\nprofile_repos = \"b\"",
                Ctx::Top,
                "set twice",
            ),
            (
                "[default.s]\nx = 1",
                Ctx::Top,
                "unknown key `default`: [default.<seed>] tables belong in a default config file",
            ),
        ];
        for (text, ctx, want) in cases {
            let err = chk(text, *ctx).expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn aliases_and_normalisation() {
        let t = chk("deplean = true\nprofile_repos = \"r\"\nrepo_dir = \"/r\"\n[env]\nUSE = \"a\"\n[tar_filter_options]\nwhiteouts = false\n", Ctx::Top).unwrap();
        assert_eq!(get_bool(&t, "depclean"), Some(true));
        assert_eq!(get_str(&t, "profile_repo").as_deref(), Some("r"));
        assert_eq!(get_str(&t, "_repo_dir").as_deref(), Some("/r"));
        assert!(t.table("env").unwrap().get("use").is_some());
        assert_eq!(
            get_bool(t.table("tar_filter_options").unwrap(), "whiteout"),
            Some(false)
        );
    }

    #[test]
    fn defaults_split_keys_from_tag_tables() {
        let t = chk("[default.s]\nprofile = \"p\"\n[default.s.env]\nuse = \"x\"\n[default.s.pi3]\ncrossdev_target = \"a-b-c\"\n[default.s.pi3.crossdev_env]\ncommon_flags = \"-O2\"\n", Ctx::Defaults).unwrap();
        let s = t.table("default").unwrap().table("s").unwrap();
        assert!(s.table("env").is_some());
        let pi3 = s.table("pi3").unwrap();
        assert_eq!(get_str(pi3, "crossdev_target").as_deref(), Some("a-b-c"));
    }

    #[test]
    fn lists_accept_strings_split_on_whitespace() {
        let t = chk("packages = \"a/b  c/d\"\nunmerge = [\"x\"]\n", Ctx::Top).unwrap();
        assert_eq!(get_list(&t, "packages").unwrap(), ["a/b", "c/d"]);
        assert_eq!(get_list(&t, "unmerge").unwrap(), ["x"]);
    }
}
