//! Tar filters (spec section 6): which entries an image drops, and how absolute
//! symlink targets are rewritten.
//!
//! Path filters keep the reference's prefix lists and its match rule (a prefix `P`,
//! ending in `/`, rejects `N` when `N` starts with `P` or `N/` equals `P`), but on
//! *normalised* names (B52 fix): `./usr/share/man/x` and `/usr/share/man/x` are
//! rejected like `usr/share/man/x`. Unknown filter names are errors (B53 fix).
//! Two opt-in filters are added instead of widening `locales` (B52): `gconv` (iconv
//! modules) and `locale_archive` (`usr/lib/locale/locale-archive`).
//!
//! `whiteout` is accepted for compatibility but has no effect: whiteouts are always
//! converted when a layer is packed and always applied when an image is flattened
//! (B55 fix).

use std::borrow::Cow;

use crate::layers::ownership::FileKind;

/// A bad `--filter` argument or config filter option.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("unknown filter {name:?} (known: {})", known().join(", "))]
    Unknown { name: String },
    #[error("filter {name:?}: {value:?} is not a boolean (use true/false, yes/no, on/off, 1/0)")]
    BadValue { name: String, value: String },
}

/// Path filters in the reference's order, then the added opt-in ones.
const PATH_FILTERS: &[(&str, &[&str])] = &[
    ("man", &["usr/share/man/"]),
    ("docs", &["usr/share/doc/", "usr/share/gtk-doc/"]),
    ("include", &["usr/include/"]),
    (
        "locales",
        &[
            "usr/share/locale/",
            "usr/share/i18n/locales/",
            "usr/lib/gconv/",
            "usr/lib64/gconv/",
        ],
    ),
    ("charmaps", &["usr/share/i18n/charmaps/"]),
    ("completions", &["usr/share/bash-completion/"]),
    ("vardbpkg", &["var/db/pkg/"]),
    ("gconv", &["usr/lib/gconv/", "usr/lib64/gconv/"]),
    ("locale_archive", &["usr/lib/locale/locale-archive/"]),
];

/// Filters only `tar_filter_options` takes (the clean filter has the path filters
/// alone); `whiteout` is accepted and always on.
pub const TAR_ONLY: &[&str] = &["whiteout", "dev"];

/// The path filter names, in the order they run.
pub fn path_filter_names() -> impl Iterator<Item = &'static str> {
    PATH_FILTERS.iter().map(|(n, _)| *n)
}

/// Every accepted filter name.
pub fn known() -> Vec<&'static str> {
    TAR_ONLY
        .iter()
        .copied()
        .chain(path_filter_names())
        .collect()
}

/// Which filters are on. [`Default`] is the reference's `tar_filter_options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSet {
    /// Drop character and block devices (FIFOs pass).
    pub dev: bool,
    /// One flag per entry of `PATH_FILTERS`, same order.
    path: [bool; PATH_FILTERS.len()],
}

impl Default for FilterSet {
    fn default() -> FilterSet {
        let mut f = FilterSet::none();
        f.dev = true;
        for name in ["man", "docs", "include", "charmaps", "completions"] {
            // Names are from the table above; `set` cannot fail for them.
            let _ = f.set(name, true);
        }
        f
    }
}

impl FilterSet {
    /// The reference's `clean_filter_options` defaults: the tar defaults' path
    /// filters, no device filter (clean runs on the merged root, devices stay).
    pub fn clean_default() -> FilterSet {
        FilterSet {
            dev: false,
            ..FilterSet::default()
        }
    }

    /// No filter at all.
    pub fn none() -> FilterSet {
        FilterSet {
            dev: false,
            path: [false; PATH_FILTERS.len()],
        }
    }

    /// Turns one filter on or off.
    pub fn set(&mut self, name: &str, on: bool) -> Result<(), FilterError> {
        match name {
            "dev" => self.dev = on,
            "whiteout" | "whiteouts" => {
                if !on {
                    tracing::warn!("filter whiteout=false ignored: whiteouts are always handled");
                }
            }
            _ => {
                let i = PATH_FILTERS
                    .iter()
                    .position(|(n, _)| *n == name)
                    .ok_or_else(|| FilterError::Unknown {
                        name: name.to_owned(),
                    })?;
                self.path[i] = on;
            }
        }
        Ok(())
    }

    /// Applies `NAME[=BOOL]` arguments in order (later ones win).
    pub fn apply_args<S: AsRef<str>>(&mut self, args: &[S]) -> Result<(), FilterError> {
        for a in args {
            let a = a.as_ref();
            let (name, on) = match a.split_once('=') {
                None => (a, true),
                Some((n, v)) => (
                    n,
                    parse_bool(v).ok_or_else(|| FilterError::BadValue {
                        name: n.to_owned(),
                        value: v.to_owned(),
                    })?,
                ),
            };
            self.set(name.trim(), on)?;
        }
        Ok(())
    }

    /// The directory prefixes (ending in `/`) the enabled path filters reject: what a
    /// clean step deletes from a layer.
    pub fn path_prefixes(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for ((_, prefixes), on) in PATH_FILTERS.iter().zip(self.path) {
            if on {
                for p in *prefixes {
                    if !out.contains(p) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// The name of the path filter rejecting `path`, if any.
    pub fn rejects_path(&self, path: &[u8]) -> Option<&'static str> {
        let n = normalise(path);
        PATH_FILTERS
            .iter()
            .zip(self.path)
            .filter(|(_, on)| *on)
            .find(|((_, prefixes), _)| prefixes.iter().any(|p| prefix_rejects(p.as_bytes(), &n)))
            .map(|((name, _), _)| *name)
    }

    /// The name of the filter rejecting an entry of this path and (effective) kind.
    pub fn rejects(&self, path: &[u8], kind: FileKind) -> Option<&'static str> {
        if self.dev && matches!(kind, FileKind::Char { .. } | FileKind::Block { .. }) {
            return Some("dev");
        }
        self.rejects_path(path)
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The reference's rule: `N` starts with `P`, or `N/` equals `P`.
fn prefix_rejects(prefix: &[u8], name: &[u8]) -> bool {
    name.starts_with(prefix) || (name.len() + 1 == prefix.len() && prefix.starts_with(name))
}

/// A relative name without leading `/` or `./`, empty and `.` components, or a
/// trailing `/`. `..` is kept (it never matches a filter prefix).
pub fn normalise(path: &[u8]) -> Cow<'_, [u8]> {
    let clean = !path.starts_with(b"/")
        && !path.ends_with(b"/")
        && path
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b".");
    if clean {
        return Cow::Borrowed(path);
    }
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    Cow::Owned(parts.join(&b'/'))
}

/// Rewrites an absolute symlink target relative to the entry's directory (always,
/// before any filter runs, as genTree does: B54): one `..` per component of the entry's parent path, joined with
/// the target minus its leading `/`. `None` for relative targets. A result that
/// would be empty (`bin -> /`) becomes `.`.
pub fn rewrite_absolute_symlink(entry: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let rest = target.strip_prefix(b"/")?;
    let entry = normalise(entry);
    let depth = entry.iter().filter(|&&b| b == b'/').count();
    let mut parts: Vec<&[u8]> = vec![b".."; depth];
    let rest = &rest[rest.iter().take_while(|&&b| b == b'/').count()..];
    if !rest.is_empty() {
        parts.push(rest);
    }
    let out = parts.join(&b'/');
    Some(if out.is_empty() { b".".to_vec() } else { out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_reference_tar_filter_options() {
        let f = FilterSet::default();
        assert!(f.dev);
        let on: Vec<&str> = PATH_FILTERS
            .iter()
            .zip(f.path)
            .filter(|(_, on)| *on)
            .map(|((n, _), _)| *n)
            .collect();
        assert_eq!(on, ["man", "docs", "include", "charmaps", "completions"]);
    }

    #[test]
    fn clean_defaults_keep_devices() {
        let c = FilterSet::clean_default();
        assert!(!c.dev);
        assert_eq!(c.path, FilterSet::default().path);
    }

    #[test]
    fn decisions_table() {
        let mut all = FilterSet::none();
        all.apply_args(&[
            "man",
            "docs",
            "include",
            "locales",
            "charmaps",
            "completions",
            "vardbpkg",
            "dev",
        ])
        .expect("known names");
        let f = FileKind::File;
        let cases: &[(&str, FileKind, Option<&str>)] = &[
            ("usr/share/man", FileKind::Dir, Some("man")),
            ("usr/share/man/man1/ls.1", f, Some("man")),
            ("./usr/share/man/man1/ls.1", f, Some("man")),
            ("/usr/share/man/man1/ls.1", f, Some("man")),
            ("usr//share/./man/x", f, Some("man")),
            ("usr/share/mantis", f, None),
            ("usr/share/manx/y", f, None),
            ("usr/share/doc/pkg/README", f, Some("docs")),
            ("usr/share/gtk-doc", FileKind::Dir, Some("docs")),
            ("usr/include/stdio.h", f, Some("include")),
            ("usr/share/locale/de/LC_MESSAGES/x.mo", f, Some("locales")),
            ("usr/share/i18n/locales/de_DE", f, Some("locales")),
            ("usr/lib64/gconv/UTF-16.so", f, Some("locales")),
            ("usr/lib/locale/locale-archive", f, None),
            ("usr/share/i18n/charmaps/UTF-8.gz", f, Some("charmaps")),
            (
                "usr/share/bash-completion/completions/ls",
                f,
                Some("completions"),
            ),
            ("var/db/pkg/sys-apps/x-1/CONTENTS", f, Some("vardbpkg")),
            ("var/db/pkgs", f, None),
            ("usr/share/info/x.info", f, None),
            ("usr/bin/ls", f, None),
            (
                "dev/null",
                FileKind::Char { major: 1, minor: 3 },
                Some("dev"),
            ),
            (
                "dev/sda",
                FileKind::Block { major: 8, minor: 0 },
                Some("dev"),
            ),
            ("run/initctl", FileKind::Pipe, None),
            // dev is checked before the path filters.
            (
                "usr/share/man/odd",
                FileKind::Char { major: 1, minor: 1 },
                Some("dev"),
            ),
        ];
        for (p, k, want) in cases {
            assert_eq!(all.rejects(p.as_bytes(), *k), *want, "{p}");
        }
        for (p, k, _) in cases {
            assert_eq!(FilterSet::none().rejects(p.as_bytes(), *k), None, "{p}");
        }
    }

    #[test]
    fn opt_in_gconv_and_locale_archive() {
        let mut f = FilterSet::none();
        f.apply_args(&["gconv", "locale_archive=yes"])
            .expect("known");
        assert_eq!(f.rejects_path(b"usr/lib/gconv/X.so"), Some("gconv"));
        assert_eq!(
            f.rejects_path(b"usr/lib/locale/locale-archive"),
            Some("locale_archive")
        );
        assert_eq!(f.rejects_path(b"usr/share/locale/de/x.mo"), None);
    }

    #[test]
    fn args_errors_and_overrides() {
        let mut f = FilterSet::default();
        assert!(matches!(
            f.apply_args(&["manpages"]),
            Err(FilterError::Unknown { name }) if name == "manpages"
        ));
        assert!(matches!(
            f.apply_args(&["man=maybe"]),
            Err(FilterError::BadValue { .. })
        ));
        f.apply_args(&["man=false", "dev=0", "vardbpkg=on", "whiteout=false"])
            .expect("valid");
        assert_eq!(f.rejects_path(b"usr/share/man/x"), None);
        assert_eq!(
            f.rejects(b"dev/null", FileKind::Char { major: 1, minor: 3 }),
            None
        );
        assert_eq!(f.rejects_path(b"var/db/pkg/x"), Some("vardbpkg"));
    }

    #[test]
    fn symlink_rewrite_table_from_spec() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("usr/bin/awk", "/usr/bin/gawk", Some("../../usr/bin/gawk")),
            (
                "etc/localtime",
                "/usr/share/zoneinfo/UTC",
                Some("../usr/share/zoneinfo/UTC"),
            ),
            ("bin", "/usr/bin", Some("usr/bin")),
            ("a/b", "/", Some("..")),
            ("bin", "/", Some(".")),
            ("a/b", "//x", Some("../x")),
            ("usr/lib/x", "../y", None),
            ("usr/lib/x", "y", None),
        ];
        for (e, t, want) in cases {
            let got = rewrite_absolute_symlink(e.as_bytes(), t.as_bytes());
            assert_eq!(got.as_deref(), want.map(str::as_bytes), "{e} -> {t}");
        }
    }

    #[test]
    fn normalise_table() {
        for (i, o) in [
            ("a/b", "a/b"),
            ("./a/b", "a/b"),
            ("/a//b/", "a/b"),
            ("a/./b", "a/b"),
            (".", ""),
        ] {
            assert_eq!(&*normalise(i.as_bytes()), o.as_bytes(), "{i}");
        }
    }
}
