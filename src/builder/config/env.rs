//! The environment exported around a layer's emerge runs (genTree's, with the fixes
//! B09-B12, B14, B18-B23): flag sets with an ordered `+x`/`-x` rule, inheritance
//! where a config's own values beat its parent's, which beat the defaults, crossdev
//! builds starting from the crossdev defaults, and `common_flags` appended to the
//! compiler variables with a token-wise duplicate check.
//!
//! The result is the *whole* environment portage sees from genTree (names
//! upper-cased, empty values left out), so each emerge call starts from it on a
//! clean base (B23) and two equal configs always export equal maps.

use std::collections::BTreeMap;

use super::raw::value_text;
use super::value::Table;

/// The compiler variables `common_flags` is appended to.
pub const COMPILER_VARS: &[&str] = &["cflags", "cxxflags", "fcflags", "fflags"];

/// The CPU feature variables.
pub const CPU_FLAG_VARS: &[&str] = &["cpu_flags_x86", "cpu_flags_arm", "cpu_flags_ppc"];

/// Inherited from the parent whatever `inherit_env` says (genTree's ENV_VAR_INHERITED):
/// the compiler and CPU flag variables and `binpkg_format`.
fn always_inherited(k: &str) -> bool {
    COMPILER_VARS.contains(&k) || CPU_FLAG_VARS.contains(&k) || k == "binpkg_format"
}

/// Host-specific compiler/CPU keys: for a crossdev target they come only from
/// `crossdev_env` unless `crossdev_use_env` is set (B18).
fn is_flag_key(k: &str) -> bool {
    k == "common_flags" || COMPILER_VARS.contains(&k) || k.starts_with("cpu_flags_")
}

/// An ordered USE/FEATURES-style set. Each flag name appears once, enabled (`x`) or
/// disabled (`-x`); a later token for the same name changes it in place, so
/// `"test -test"` is `-test` and the order is the order names were first seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagSet(Vec<String>);

impl FlagSet {
    pub fn parse<'a>(tokens: impl IntoIterator<Item = &'a str>) -> Self {
        let mut s = Self::default();
        for t in tokens {
            s.add(t);
        }
        s
    }

    fn name(token: &str) -> &str {
        token.trim_start_matches(['+', '-'])
    }

    /// Adds `x`/`+x` (enable) or `-x` (disable), replacing any earlier state of `x`.
    pub fn add(&mut self, token: &str) {
        let name = Self::name(token);
        if name.is_empty() {
            return;
        }
        let stored = if token.starts_with('-') {
            format!("-{name}")
        } else {
            name.to_string()
        };
        match self.0.iter_mut().find(|t| Self::name(t) == name) {
            Some(t) => *t = stored,
            None => self.0.push(stored),
        }
    }

    /// Disables `name` (stores `-name`), whether or not it was listed (B27).
    pub fn remove(&mut self, name: &str) {
        self.add(&format!("-{}", Self::name(name)));
    }

    /// `self` over an inherited set: the parent's flags this set does not mention are
    /// appended; where both mention a flag, this set wins (B20).
    pub fn over(mut self, parent: &FlagSet) -> Self {
        for t in &parent.0 {
            if !self.0.iter().any(|o| Self::name(o) == Self::name(t)) {
                self.0.push(t.clone());
            }
        }
        self
    }

    pub fn tokens(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for FlagSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// Whether the whitespace-separated `needle` appears as a contiguous run of whole
/// tokens in `hay` (B22: `-pipe` is not "contained" in `-pipe-x`).
pub fn contains_tokens(hay: &str, needle: &str) -> bool {
    let h: Vec<&str> = hay.split_whitespace().collect();
    let n: Vec<&str> = needle.split_whitespace().collect();
    n.is_empty() || h.windows(n.len()).any(|w| w == n.as_slice())
}

/// Everything the env of one config depends on.
#[derive(Debug, Clone, Copy)]
pub struct EnvInputs<'a> {
    /// Effective defaults (global + seed + tag); their `env` and `crossdev_env` are used.
    pub defaults: &'a Table,
    /// The config file's checked table; its `env` and `crossdev_env` are used.
    pub file: &'a Table,
    pub cross: bool,
    pub crossdev_use_env: bool,
    pub inherit_use: bool,
    pub inherit_features: bool,
    pub inherit_env: bool,
    /// The parent's exported env (upper-case names), for a base.
    pub parent: Option<&'a BTreeMap<String, String>>,
}

impl EnvInputs<'_> {
    /// The tables that supply key `k`, highest precedence first: (file layers,
    /// default layers).
    fn layers(&self, k: &str) -> (Vec<&Table>, Vec<&Table>) {
        fn pick<'t>(tab: &'t Table, name: &str) -> Option<&'t Table> {
            tab.table(name)
        }
        let host_too = !self.cross || !is_flag_key(k) || self.crossdev_use_env;
        let mut own = Vec::new();
        let mut def = Vec::new();
        if self.cross {
            own.extend(pick(self.file, "crossdev_env"));
            def.extend(pick(self.defaults, "crossdev_env"));
        }
        if host_too {
            own.extend(pick(self.file, "env"));
            def.extend(pick(self.defaults, "env"));
        }
        (own, def)
    }

    fn first(tables: &[&Table], k: &str) -> Option<String> {
        tables.iter().find_map(|t| t.get(k)).map(value_text)
    }

    fn all_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for src in [self.file, self.defaults] {
            for name in ["env", "crossdev_env"] {
                for e in src.table(name).map(|t| t.entries()).unwrap_or_default() {
                    if seen.insert(e.key.as_str()) {
                        keys.push(e.key.clone());
                    }
                }
            }
        }
        keys
    }
}

/// Computes the exported environment (upper-case names, empty values left out).
pub fn compute(i: &EnvInputs<'_>) -> BTreeMap<String, String> {
    let parent = |k: &str| i.parent.and_then(|p| p.get(&k.to_ascii_uppercase()));
    let mut vars: BTreeMap<String, String> = BTreeMap::new();

    let mut keys = i.all_keys();
    if let Some(p) = i.parent {
        keys.extend(p.keys().map(|k| k.to_ascii_lowercase()));
    }
    for k in keys {
        if matches!(k.as_str(), "use" | "features" | "common_flags") || vars.contains_key(&k) {
            continue;
        }
        let (own, def) = i.layers(&k);
        let inherits = always_inherited(&k) || i.inherit_env;
        let v = EnvInputs::first(&own, &k)
            .or_else(|| parent(&k).filter(|_| inherits).cloned())
            .or_else(|| EnvInputs::first(&def, &k));
        if let Some(v) = v {
            vars.insert(k, v);
        }
    }

    for (k, inherit) in [("use", i.inherit_use), ("features", i.inherit_features)] {
        let (own, def) = i.layers(k);
        let text = EnvInputs::first(&own, k).or_else(|| EnvInputs::first(&def, k));
        let mut set = FlagSet::parse(text.as_deref().unwrap_or("").split_whitespace());
        if inherit && let Some(p) = parent(k) {
            set = set.over(&FlagSet::parse(p.split_whitespace()));
        }
        vars.insert(k.to_string(), set.to_string());
    }

    let (own, def) = i.layers("common_flags");
    let common =
        EnvInputs::first(&own, "common_flags").or_else(|| EnvInputs::first(&def, "common_flags"));
    if let Some(common) = common.filter(|c| !c.trim().is_empty()) {
        for var in COMPILER_VARS {
            let v = vars.entry((*var).to_string()).or_default();
            if v.trim().is_empty() {
                *v = common.clone();
            } else if !contains_tokens(v, &common) {
                v.push(' ');
                v.push_str(&common);
            }
        }
        vars.insert("common_flags".into(), common);
    }

    vars.into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.to_ascii_uppercase(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::config::value::parse;
    use std::path::Path;

    #[test]
    fn flag_set_table() {
        // genTree's flag-set rules, with the B19/B20 decisions.
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("-dracut ugrd", None, "-dracut ugrd"),
            ("test -test", None, "-test"),
            ("+foo bar", None, "foo bar"),
            ("foo -bar baz", Some("-foo bar +qux"), "foo -bar baz qux"),
            ("", Some("a -b"), "a -b"),
            ("x", Some(""), "x"),
            ("-* a", None, "-* a"),
            ("a - + b", None, "a b"),
        ];
        for (own, parent, want) in cases {
            let mut s = FlagSet::parse(own.split_whitespace());
            if let Some(p) = parent {
                s = s.over(&FlagSet::parse(p.split_whitespace()));
            }
            assert_eq!(s.to_string(), *want, "{own:?} over {parent:?}");
        }
    }

    #[test]
    fn remove_disables_whether_listed_or_not() {
        let mut s = FlagSet::parse(["buildpkg", "usersandbox"]);
        s.remove("usersandbox");
        s.remove("sandbox");
        assert_eq!(s.to_string(), "buildpkg -usersandbox -sandbox");
    }

    #[test]
    fn contains_tokens_table() {
        for (hay, needle, want) in [
            ("-O2 -pipe", "-pipe", true),
            ("-O2 -pipe-x", "-pipe", false),
            ("-march=native -O3 -pipe", "-O3 -pipe", true),
            ("-O3 -x -pipe", "-O3 -pipe", false),
            ("", "", true),
        ] {
            assert_eq!(contains_tokens(hay, needle), want, "{hay:?} {needle:?}");
        }
    }

    fn t(s: &str) -> Table {
        parse(s, Path::new("t.toml")).unwrap()
    }

    struct Case {
        what: &'static str,
        defaults: &'static str,
        file: &'static str,
        cross: bool,
        use_env: bool,
        parent: Option<&'static [(&'static str, &'static str)]>,
        inherit_use: bool,
        inherit_env: bool,
        want: &'static [(&'static str, &'static str)],
    }

    const C: Case = Case {
        what: "",
        defaults: "",
        file: "",
        cross: false,
        use_env: false,
        parent: None,
        inherit_use: false,
        inherit_env: true,
        want: &[],
    };

    #[test]
    fn env_table() {
        let cases = [
            Case {
                what: "common_flags fill the compiler vars",
                defaults: "[env]\nfeatures = \"a -b\"\nbinpkg_format = \"gpkg\"\ncommon_flags = \"-march=native -O3 -pipe\"\n",
                file: "[env]\nuse = \"nginx\"\n",
                want: &[
                    ("BINPKG_FORMAT", "gpkg"),
                    ("CFLAGS", "-march=native -O3 -pipe"),
                    ("COMMON_FLAGS", "-march=native -O3 -pipe"),
                    ("CXXFLAGS", "-march=native -O3 -pipe"),
                    ("FCFLAGS", "-march=native -O3 -pipe"),
                    ("FEATURES", "a -b"),
                    ("FFLAGS", "-march=native -O3 -pipe"),
                    ("USE", "nginx"),
                ],
                ..C
            },
            Case {
                what: "common_flags appended to an existing cflags, token-wise (B22)",
                file: "[env]\ncflags = \"-O2 -pipe-x\"\ncxxflags = \"-g -pipe\"\ncommon_flags = \"-pipe\"\n",
                want: &[
                    ("CFLAGS", "-O2 -pipe-x -pipe"),
                    ("COMMON_FLAGS", "-pipe"),
                    ("CXXFLAGS", "-g -pipe"),
                    ("FCFLAGS", "-pipe"),
                    ("FFLAGS", "-pipe"),
                ],
                ..C
            },
            Case {
                what: "file value replaces default, empty value unsets; arbitrary keys exported, file wins (B12)",
                defaults: "[env]\nuse = \"x y\"\nmakeopts = \"-j2\"\naccept_license = \"*\"\n",
                file: "[env]\nuse = \"\"\nmakeopts = \"-j9\"\nfoo_arg = \"bar\"\naccept_keywords = [\"~amd64\", \"amd64\"]\n",
                want: &[
                    ("ACCEPT_KEYWORDS", "~amd64 amd64"),
                    ("ACCEPT_LICENSE", "*"),
                    ("FOO_ARG", "bar"),
                    ("MAKEOPTS", "-j9"),
                ],
                ..C
            },
            Case {
                what: "base: own file > parent > defaults (B21); use not inherited by default (B11)",
                defaults: "[env]\ncflags = \"-O1\"\nbinpkg_format = \"gpkg\"\nuse = \"d\"\nfeatures = \"f1\"\n",
                file: "[env]\nfcflags = \"-Ofile\"\n",
                parent: Some(&[
                    ("CFLAGS", "-Oparent"),
                    ("FCFLAGS", "-Oparent"),
                    ("USE", "nginx"),
                    ("FEATURES", "f1 -f2"),
                    ("MAKEOPTS", "-j3"),
                ]),
                want: &[
                    ("BINPKG_FORMAT", "gpkg"),
                    ("CFLAGS", "-Oparent"),
                    ("FCFLAGS", "-Ofile"),
                    ("FEATURES", "f1 -f2"),
                    ("MAKEOPTS", "-j3"),
                    ("USE", "d"),
                ],
                ..C
            },
            Case {
                what: "inherit_use merges parent USE under own (B20); inherit_env false keeps misc keys out (B10)",
                file: "[env]\nuse = \"foo -bar baz\"\n",
                parent: Some(&[
                    ("USE", "-foo bar +qux"),
                    ("MAKEOPTS", "-j3"),
                    ("CFLAGS", "-O2"),
                ]),
                inherit_use: true,
                inherit_env: false,
                want: &[("CFLAGS", "-O2"), ("USE", "foo -bar baz qux")],
                ..C
            },
            Case {
                what: "cross: host flag keys do not leak, crossdev defaults apply, file crossdev_env applies (B18)",
                defaults: "[env]\ncpu_flags_x86 = \"aes\"\ncommon_flags = \"-march=native\"\ncflags = \"-Ohost\"\nfeatures = \"f\"\nbinpkg_format = \"gpkg\"\n[crossdev_env]\ncommon_flags = \"-march=armv8-a\"\n",
                file: "[env]\nuse = \"nginx\"\ncxxflags = \"-Ofile\"\n[crossdev_env]\nfflags = \"-Ox\"\n",
                cross: true,
                want: &[
                    ("BINPKG_FORMAT", "gpkg"),
                    ("CFLAGS", "-march=armv8-a"),
                    ("COMMON_FLAGS", "-march=armv8-a"),
                    ("CXXFLAGS", "-march=armv8-a"),
                    ("FCFLAGS", "-march=armv8-a"),
                    ("FEATURES", "f"),
                    ("FFLAGS", "-Ox -march=armv8-a"),
                    ("USE", "nginx"),
                ],
                ..C
            },
            Case {
                what: "cross with crossdev_use_env: file/default env flag keys apply under crossdev_env",
                defaults: "[env]\ncpu_flags_x86 = \"aes\"\n[crossdev_env]\ncommon_flags = \"-march=armv8-a\"\n",
                file: "[env]\ncxxflags = \"-Ofile\"\n",
                cross: true,
                use_env: true,
                want: &[
                    ("CFLAGS", "-march=armv8-a"),
                    ("COMMON_FLAGS", "-march=armv8-a"),
                    ("CPU_FLAGS_X86", "aes"),
                    ("CXXFLAGS", "-Ofile -march=armv8-a"),
                    ("FCFLAGS", "-march=armv8-a"),
                    ("FFLAGS", "-march=armv8-a"),
                ],
                ..C
            },
        ];
        for c in &cases {
            let (d, f) = (t(c.defaults), t(c.file));
            let parent: Option<BTreeMap<String, String>> = c.parent.map(|p| {
                p.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            });
            let got = compute(&EnvInputs {
                defaults: &d,
                file: &f,
                cross: c.cross,
                crossdev_use_env: c.use_env,
                inherit_use: c.inherit_use,
                inherit_features: true,
                inherit_env: c.inherit_env,
                parent: parent.as_ref(),
            });
            let want: BTreeMap<String, String> = c
                .want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{}", c.what);
        }
    }
}
