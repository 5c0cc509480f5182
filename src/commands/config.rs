//! `gentree-fs config`: resolve a build config and print the tree, bases first.
//! Text by default; `--json` prints one object per config with exactly the keys
//! `name, buildname, seed, profile, emerge, unmerge, depclean, env, clean_filters,
//! tar_filters, key, bases` (bases nested in build order). `key` is the layer's key
//! with the seed, repositories and config overlays of the conf root (`null` when
//! it cannot be computed: no seed imported there).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use super::CmdResult;
use crate::builder::build::{BuildError, HostDirs, plan_jobs};
use crate::builder::config::{
    CliOverrides, DefaultSources, Defaults, OrderedMap, ResolvedConfig, resolve_file,
};
use crate::cli::{BuildSelect, ConfigArgs};
use crate::layers::store::Store;

impl From<&BuildSelect> for CliOverrides {
    fn from(s: &BuildSelect) -> Self {
        Self {
            crossdev_target: s.crossdev_target.clone(),
            profile: s.profile.clone(),
            build_tag: s.build_tag.clone(),
        }
    }
}

pub fn run(args: &ConfigArgs) -> CmdResult {
    let sources = if args.no_config {
        DefaultSources::none()
    } else {
        DefaultSources::from_env()
    };
    let defaults = Defaults::load(&sources)?;
    let resolved = resolve_file(&args.file, &CliOverrides::from(&args.select), &defaults)?;
    let out = if args.json {
        let keys = layer_keys(args, &resolved);
        let mut s = serde_json::to_string_pretty(&JsonConfig::with_keys(&resolved, &keys))?;
        s.push('\n');
        s
    } else {
        render_text(&resolved, &defaults)
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The key of each layer (by buildname) under the conf root; none, with a warning,
/// when they cannot be computed (no seed imported yet).
fn layer_keys(args: &ConfigArgs, cfg: &ResolvedConfig) -> BTreeMap<String, String> {
    let conf_root = match &args.conf_root {
        Some(d) => d.clone(),
        None => match super::default_conf_root() {
            Ok(d) => d,
            Err(_) => return BTreeMap::new(),
        },
    };
    let dirs = HostDirs::new(&conf_root, cfg);
    if !dirs.seed(&cfg.seed).is_dir() {
        return BTreeMap::new();
    }
    let keys = Store::open(&dirs.conf_root)
        .map_err(BuildError::from)
        .and_then(|store| {
            Ok(plan_jobs(cfg, &store, &dirs)?
                .into_iter()
                .map(|j| (j.config.buildname.clone(), j.key.to_string()))
                .collect())
        });
    match keys {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(
                "layer keys unknown: {}",
                crate::error_chain(&e)
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(": ")
            );
            BTreeMap::new()
        }
    }
}

/// The `--json` view of one config.
#[derive(Debug, Serialize)]
pub struct JsonConfig<'a> {
    name: &'a str,
    buildname: &'a str,
    seed: &'a str,
    profile: Option<&'a str>,
    emerge: Option<&'a [String]>,
    unmerge: Option<&'a [String]>,
    depclean: bool,
    env: &'a BTreeMap<String, String>,
    clean_filters: &'a OrderedMap<bool>,
    tar_filters: &'a OrderedMap<bool>,
    key: Option<&'a str>,
    bases: Vec<JsonConfig<'a>>,
}

impl<'a> JsonConfig<'a> {
    pub fn new(c: &'a ResolvedConfig) -> Self {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        Self::with_keys(c, &NONE)
    }

    /// The view with each layer's key from `keys` (by buildname).
    pub fn with_keys(c: &'a ResolvedConfig, keys: &'a BTreeMap<String, String>) -> Self {
        Self {
            name: &c.name,
            buildname: &c.buildname,
            seed: &c.seed,
            profile: c.effective_profile(),
            emerge: c.emerge.as_deref(),
            unmerge: c.unmerge_argv.as_deref(),
            depclean: c.depclean,
            env: &c.env,
            clean_filters: &c.clean_filters,
            tar_filters: &c.tar_filters,
            key: keys.get(&c.buildname).map(String::as_str),
            bases: c
                .bases
                .iter()
                .map(|b| JsonConfig::with_keys(b, keys))
                .collect(),
        }
    }
}

/// The human-readable tree: each config after its bases, indented by depth; a
/// layer already shown is named, not repeated.
pub fn render_text(c: &ResolvedConfig, defaults: &Defaults) -> String {
    let mut out = String::new();
    let files: Vec<String> = std::iter::once("embedded".to_string())
        .chain(defaults.files.iter().map(|p| p.display().to_string()))
        .collect();
    let _ = writeln!(out, "# defaults: {}", files.join(", "));
    let mut shown = Vec::new();
    render(c, 0, &mut shown, &mut out);
    let order: Vec<&str> = c.build_order().iter().map(|b| b.name.as_str()).collect();
    let _ = writeln!(out, "build order: {}", order.join(" "));
    out
}

fn render<'a>(
    c: &'a ResolvedConfig,
    depth: usize,
    shown: &mut Vec<&'a ResolvedConfig>,
    out: &mut String,
) {
    let pad = "  ".repeat(depth);
    if shown.contains(&c) {
        let _ = writeln!(out, "{pad}{} ({}): same layer as above", c.name, c.origin);
        return;
    }
    for b in &c.bases {
        render(b, depth + 1, shown, out);
    }
    shown.push(c);
    let _ = writeln!(out, "{pad}{} ({})", c.name, c.origin);
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{pad}  {k:<10} {v}");
    };
    line("buildname", c.buildname.clone());
    line("seed", c.seed.clone());
    if let Some(t) = &c.crossdev_target {
        line("target", t.clone());
    }
    line(
        "profile",
        c.effective_profile().map_or_else(
            || "(left as the seed has it)".into(),
            |p| format!("{} ({})", p, c.profile_repo),
        ),
    );
    if let Some(o) = &c.config_overlay {
        line("overlay", o.clone());
    }
    line("pkgdir", c.pkgdir.clone());
    let argv = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map_or_else(|| "(none)".into(), |a| shell_words(a))
    };
    line("emerge", argv(&c.emerge));
    line("unmerge", argv(&c.unmerge_argv));
    line("depclean", argv(&c.depclean_argv));
    let filters = |m: &OrderedMap<bool>| {
        let on: Vec<&str> =
            m.0.iter()
                .filter(|(_, v)| *v)
                .map(|(k, _)| k.as_str())
                .collect();
        if on.is_empty() {
            "(none)".into()
        } else {
            on.join(" ")
        }
    };
    line("clean", filters(&c.clean_filters));
    line("tar", filters(&c.tar_filters));
    if let Some(o) = &c.output_file {
        line("output", o.display().to_string());
    }
    let _ = writeln!(out, "{pad}  env:");
    for (k, v) in &c.env {
        let _ = writeln!(out, "{pad}    {k}={}", shell_quote(v));
    }
}

fn shell_words(v: &[String]) -> String {
    v.iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes a word for display so it could be pasted into a shell.
fn shell_quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+@,%^".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_table() {
        for (w, want) in [
            ("a/b", "a/b"),
            ("--jobs=8", "--jobs=8"),
            ("a b", "'a b'"),
            ("", "''"),
            ("it's", "'it'\\''s'"),
            ("*", "'*'"),
        ] {
            assert_eq!(shell_quote(w), want);
        }
    }
}
