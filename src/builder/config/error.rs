//! Config errors. Each names the file and, where one is at fault, the key and its
//! line:column, and says what to do.

use std::io;
use std::path::PathBuf;

use super::value::Loc;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{} is {size} bytes, above the {} MiB limit for config files: split it into bases",
        path.display(),
        limit >> 20
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },

    #[error("{}: not a regular file", path.display())]
    NotAFile { path: PathBuf },

    #[error("{}: not UTF-8 text (invalid byte at offset {at})", path.display())]
    NotText { path: PathBuf, at: usize },

    #[error("{}:{line}:{col}: invalid TOML: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },

    #[error("{at}: unknown key `{key}`{}", hint.as_ref().map(|h| format!(": {h}")).unwrap_or_default())]
    UnknownKey {
        at: Loc,
        key: String,
        hint: Option<String>,
    },

    #[error("{at}: `{key}` must be {expected}, not {} {found}", article(found))]
    WrongType {
        at: Loc,
        key: String,
        expected: &'static str,
        found: &'static str,
    },

    #[error(
        "{at}: `{key}` cannot be set in a base config (only the top-level build file or the defaults set it; bases inherit it)"
    )]
    Restricted { at: Loc, key: String },

    #[error("{at}: `{key}` cannot be set in a default config (it belongs to each build file)")]
    NotDefaultable { at: Loc, key: String },

    #[error("{at}: `{key}`: {message}")]
    BadValue {
        at: Loc,
        key: String,
        message: String,
    },

    #[error(
        "{}: no seed: add `seed = \"NAME\"` to it{}, naming a seed imported with `gentree-fs import-seed`",
        path.display(),
        if defaults.is_empty() {
            " (no default config files were read)".to_string()
        } else {
            format!(" or to a default config ({})", defaults.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))
        }
    )]
    MissingSeed {
        path: PathBuf,
        defaults: Vec<PathBuf>,
    },

    #[error("{}: unknown builtin base `{name}`: the builtin bases are {}; a path to a base file ends in .toml", path.display(), builtins.join(", "))]
    UnknownBuiltin {
        path: PathBuf,
        name: String,
        builtins: Vec<&'static str>,
    },

    #[error("{}: base `{base}` not found at {}", path.display(), resolved.display())]
    MissingBase {
        path: PathBuf,
        base: String,
        resolved: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("bases form a cycle: {}", chain.join(" -> "))]
    Cycle { chain: Vec<String> },

    #[error("{what} `{value}` (from {origin}) is not a safe name: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        origin: String,
        reason: &'static str,
    },
}

/// "a" or "an" before a TOML type name (an array, an integer).
fn article(word: &str) -> &'static str {
    match word.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => "an",
        _ => "a",
    }
}

impl ConfigError {
    /// Prefixes the key of a key-level error with the table it was found in.
    pub(crate) fn in_table(self, prefix: &str) -> Self {
        let p = |key: String| format!("{prefix}.{key}");
        match self {
            Self::UnknownKey { at, key, hint } => Self::UnknownKey {
                at,
                key: p(key),
                hint,
            },
            Self::WrongType {
                at,
                key,
                expected,
                found,
            } => Self::WrongType {
                at,
                key: p(key),
                expected,
                found,
            },
            Self::BadValue { at, key, message } => Self::BadValue {
                at,
                key: p(key),
                message,
            },
            other => other,
        }
    }
}
