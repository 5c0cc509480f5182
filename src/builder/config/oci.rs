//! The `[oci]` table: how a container runs the image (a gentree-fs extension; genTree
//! has no such table and ignores it).
//!
//! ```toml
//! [oci]
//! entrypoint = ["/usr/bin/nginx"]      # arrays of strings; [] clears a base's value
//! cmd = ["-g", "daemon off;"]
//! env = { PATH = "/usr/bin:/bin" }     # name -> value
//! working_dir = "/srv"                 # absolute
//! user = "nginx"                       # user, uid, user:group or uid:gid
//! labels = { "org.example.team" = "web" }
//! exposed_ports = ["80", "443/tcp", "53/udp"]
//! ```
//!
//! Each config of an image may have one; the image's settings are the bases' merged
//! in build order, then the top config's ([`ImageSettings::merged`]): a scalar or list
//! set nearer the top wins, `env` and `labels` merge by name, `exposed_ports` add up.
//! The table only shapes the image config, so it is not part of any layer key.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ConfigError;
use super::raw::{did_you_mean, wrong_type};
use super::value::{Entry, LocatedVal, Table, Val};

/// The keys of `[oci]`.
pub const KEYS: &[&str] = &[
    "entrypoint",
    "cmd",
    "env",
    "working_dir",
    "user",
    "labels",
    "exposed_ports",
];

/// One config's `[oci]` table, or the merged settings of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImageSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `port/proto`, sorted, each once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
}

fn pick<T: Clone>(lower: &Option<T>, upper: &Option<T>) -> Option<T> {
    upper.clone().or_else(|| lower.clone())
}

impl ImageSettings {
    /// `upper` over `self`: see the module doc.
    pub fn over(&self, upper: &ImageSettings) -> ImageSettings {
        let mut env = self.env.clone();
        env.extend(upper.env.clone());
        let mut labels = self.labels.clone();
        labels.extend(upper.labels.clone());
        let mut exposed_ports: Vec<String> = self
            .exposed_ports
            .iter()
            .chain(&upper.exposed_ports)
            .cloned()
            .collect();
        exposed_ports.sort();
        exposed_ports.dedup();
        ImageSettings {
            entrypoint: pick(&self.entrypoint, &upper.entrypoint),
            cmd: pick(&self.cmd, &upper.cmd),
            env,
            working_dir: pick(&self.working_dir, &upper.working_dir),
            user: pick(&self.user, &upper.user),
            labels,
            exposed_ports,
        }
    }

    /// The settings of the image whose layers are `layers` (build order, top last).
    pub fn merged<'a>(layers: impl IntoIterator<Item = &'a ImageSettings>) -> ImageSettings {
        layers
            .into_iter()
            .fold(ImageSettings::default(), |acc, s| acc.over(s))
    }
}

/// Checks an `[oci]` table (`key` is its name, for messages).
pub fn check(t: &Table, key: &str) -> Result<Table, ConfigError> {
    let mut out = Table::default();
    for e in t.entries() {
        let full = format!("{key}.{}", e.key);
        match e.key.as_str() {
            "entrypoint" | "cmd" => strings(&e.value, &full)?,
            "exposed_ports" => {
                strings(&e.value, &full)?;
                if let Val::Array(items) = &e.value.val {
                    for i in items {
                        if let Val::Str(s) = &i.val {
                            port(s).map_err(|message| ConfigError::BadValue {
                                at: i.at.clone(),
                                key: full.clone(),
                                message,
                            })?;
                        }
                    }
                }
            }
            "working_dir" | "user" => match &e.value.val {
                Val::Str(s) if e.key == "working_dir" && !s.starts_with('/') => {
                    return Err(bad(e, &full, "must be an absolute path"));
                }
                Val::Str(s) if s.is_empty() => return Err(bad(e, &full, "must not be empty")),
                Val::Str(_) => {}
                _ => return Err(wrong_type(&e.value, &full, "a string")),
            },
            "env" | "labels" => {
                let Val::Table(sub) = &e.value.val else {
                    return Err(wrong_type(&e.value, &full, "a table of names to strings"));
                };
                for s in sub.entries() {
                    let name = format!("{full}.{}", s.key);
                    if !matches!(s.value.val, Val::Str(_)) {
                        return Err(wrong_type(&s.value, &name, "a string"));
                    }
                    let ok = if e.key == "env" {
                        env_name(&s.key)
                    } else {
                        !s.key.is_empty()
                    };
                    if !ok {
                        return Err(bad(
                            s,
                            &name,
                            "names are letters, digits and `_`, not starting with a digit",
                        ));
                    }
                }
            }
            other => {
                return Err(ConfigError::UnknownKey {
                    at: e.key_at.clone(),
                    key: full,
                    hint: Some(
                        did_you_mean(other, KEYS.iter().copied())
                            .unwrap_or_else(|| format!("[oci] keys: {}", KEYS.join(", "))),
                    ),
                });
            }
        }
        out.insert(e.clone());
    }
    Ok(out)
}

fn bad(e: &Entry, key: &str, message: &str) -> ConfigError {
    ConfigError::BadValue {
        at: e.value.at.clone(),
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

fn strings(n: &LocatedVal, key: &str) -> Result<(), ConfigError> {
    let Val::Array(items) = &n.val else {
        return Err(wrong_type(n, key, "an array of strings"));
    };
    for i in items {
        if !matches!(i.val, Val::Str(_)) {
            return Err(wrong_type(i, key, "a string (array item)"));
        }
    }
    Ok(())
}

fn env_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `80` or `80/tcp` as `80/tcp`; `53/udp`, `9/sctp` as they are.
pub fn port(s: &str) -> Result<String, String> {
    let (num, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let ok_num = num.parse::<u16>().is_ok_and(|n| n > 0) && !num.starts_with('0');
    if !ok_num || !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(format!(
            "{s:?} is not a port: write PORT or PORT/PROTO (1-65535, tcp, udp or sctp)"
        ));
    }
    Ok(format!("{num}/{proto}"))
}

/// The settings a checked config table sets (none without `[oci]`).
pub fn settings(f: &Table) -> ImageSettings {
    let Some(Val::Table(t)) = f.get("oci").map(|n| &n.val) else {
        return ImageSettings::default();
    };
    let list = |k: &str| match t.get(k).map(|n| &n.val) {
        Some(Val::Array(items)) => Some(
            items
                .iter()
                .filter_map(|i| match &i.val {
                    Val::Str(s) => Some(s.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let text = |k: &str| match t.get(k).map(|n| &n.val) {
        Some(Val::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let map = |k: &str| match t.get(k).map(|n| &n.val) {
        Some(Val::Table(m)) => m
            .entries()
            .iter()
            .filter_map(|e| match &e.value.val {
                Val::Str(s) => Some((e.key.clone(), s.clone())),
                _ => None,
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let mut exposed_ports: Vec<String> = list("exposed_ports")
        .unwrap_or_default()
        .iter()
        .filter_map(|p| port(p).ok())
        .collect();
    exposed_ports.sort();
    exposed_ports.dedup();
    ImageSettings {
        entrypoint: list("entrypoint"),
        cmd: list("cmd"),
        env: map("env"),
        working_dir: text("working_dir"),
        user: text("user"),
        labels: map("labels"),
        exposed_ports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::config::raw::{Ctx, check as check_file};
    use crate::builder::config::value::parse;
    use std::path::Path;

    fn table(text: &str) -> Result<Table, ConfigError> {
        check_file(&parse(text, Path::new("c.toml")).expect("toml"), Ctx::Base)
    }

    #[test]
    fn a_full_table_reads_back() {
        let t = table(
            "[oci]\nentrypoint = [\"/bin/app\"]\ncmd = []\nenv = { B = \"2\", A = \"1\" }\n\
             working_dir = \"/srv\"\nuser = \"1000:1000\"\nlabels = { \"x.y\" = \"z\" }\n\
             exposed_ports = [\"443/tcp\", \"80\", \"53/udp\", \"80/tcp\"]\n",
        )
        .expect("valid");
        let s = settings(&t);
        assert_eq!(s.entrypoint.as_deref(), Some(&["/bin/app".to_owned()][..]));
        assert_eq!(s.cmd, Some(vec![]));
        assert_eq!(
            s.env.iter().collect::<Vec<_>>(),
            [(&"A".into(), &"1".into()), (&"B".into(), &"2".into())]
        );
        assert_eq!(s.working_dir.as_deref(), Some("/srv"));
        assert_eq!(s.user.as_deref(), Some("1000:1000"));
        assert_eq!(s.labels.get("x.y").map(String::as_str), Some("z"));
        assert_eq!(s.exposed_ports, ["443/tcp", "53/udp", "80/tcp"]);
        assert_eq!(
            settings(&table("packages = []\n").expect("ok")),
            ImageSettings::default()
        );
    }

    #[test]
    fn bad_tables_name_the_key_and_line() {
        for (text, want) in [
            ("[oci]\nentrypint = []\n", "did you mean `entrypoint`"),
            (
                "[oci]\ncmd = \"/bin/sh\"\n",
                "`oci.cmd` must be an array of strings",
            ),
            (
                "[oci]\ncmd = [1]\n",
                "`oci.cmd` must be a string (array item)",
            ),
            ("[oci]\nworking_dir = \"srv\"\n", "absolute"),
            ("[oci]\nuser = \"\"\n", "must not be empty"),
            ("[oci]\nenv = { \"1X\" = \"a\" }\n", "oci.env.1X"),
            ("[oci]\nenv = { X = 1 }\n", "`oci.env.X` must be a string"),
            ("[oci]\nexposed_ports = [\"http\"]\n", "is not a port"),
            ("[oci]\nexposed_ports = [\"80/icmp\"]\n", "is not a port"),
            ("[oci]\nexposed_ports = [\"0\"]\n", "is not a port"),
            ("oci = 3\n", "`oci` must be"),
        ] {
            let err = table(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains("c.toml:"), "{text}: {err}");
        }
    }

    #[test]
    fn nearer_the_top_wins_maps_merge_ports_add_up() {
        let base = ImageSettings {
            entrypoint: Some(vec!["/base".into()]),
            cmd: Some(vec!["-x".into()]),
            env: [("A".into(), "base".into()), ("B".into(), "base".into())].into(),
            user: Some("nobody".into()),
            exposed_ports: vec!["80/tcp".into()],
            ..ImageSettings::default()
        };
        let top = ImageSettings {
            cmd: Some(vec![]),
            env: [("B".into(), "top".into())].into(),
            labels: [("l".into(), "v".into())].into(),
            exposed_ports: vec!["443/tcp".into(), "80/tcp".into()],
            ..ImageSettings::default()
        };
        let m = ImageSettings::merged([&base, &top]);
        assert_eq!(m.entrypoint, Some(vec!["/base".to_owned()]));
        assert_eq!(m.cmd, Some(vec![]), "an empty list clears the base's");
        assert_eq!(m.env.get("A").map(String::as_str), Some("base"));
        assert_eq!(m.env.get("B").map(String::as_str), Some("top"));
        assert_eq!(m.user.as_deref(), Some("nobody"));
        assert_eq!(m.labels.len(), 1);
        assert_eq!(m.exposed_ports, ["443/tcp", "80/tcp"]);
    }
}
