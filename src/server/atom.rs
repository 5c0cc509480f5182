//! Package atoms accepted by the build queue (`GET /pkg?pkg=ATOM`).
//!
//! The atom becomes an argument of `emerge`, so anything that is not plainly a package
//! atom is refused before it gets near a command line (B30: the reference passed
//! `--config-root=/x` straight through as an option). The accepted grammar is the
//! PMS package dependency specification, narrowed to what a build request needs:
//!
//! ```text
//! atom     = [op] category "/" name ["-" version] [":" slot] ["::" repo]
//! op       = ">=" | "<=" | "=" | "<" | ">" | "~"       (then the version is required)
//! category = [A-Za-z0-9_][A-Za-z0-9+_.-]*
//! name     = [A-Za-z0-9_][A-Za-z0-9+_-]*               (not ending in "-" version)
//! version  = \d+(\.\d+)*[a-z]?(_(alpha|beta|pre|rc|p)\d*)*(-r\d+)?   ("*" may end it after "=")
//!            (a "-" followed by anything else is part of the name, which is then checked)
//! slot     = [A-Za-z0-9_][A-Za-z0-9+_.-]*              (no sub-slot: one "/" only)
//! repo     = [A-Za-z0-9_][A-Za-z0-9_-]*
//! ```
//!
//! The category is required (a bare name would let emerge guess), and an atom is at
//! most [`MAX_LEN`] bytes. Every rejection names the problem.

/// The longest atom accepted, in bytes.
pub const MAX_LEN: usize = 200;

/// Why an atom was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtomError {
    #[error("empty package atom")]
    Empty,
    #[error("package atom is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("package atom starts with '-': options are not accepted")]
    Option,
    #[error("package atom contains {ch:?} at byte {at}, which no atom may contain")]
    BadChar { ch: char, at: usize },
    #[error("package atom needs a category: write CATEGORY/NAME, e.g. app-misc/foo")]
    NoCategory,
    #[error("package atom has more than one '/': only CATEGORY/NAME is accepted")]
    ExtraSlash,
    #[error("invalid category {0:?}")]
    Category(String),
    #[error("invalid package name {0:?}")]
    Name(String),
    #[error("operator {op:?} needs a version, e.g. {op}{cpn}-1.0")]
    MissingVersion { op: String, cpn: String },
    #[error("a version ({0:?}) needs an operator, e.g. ={0}")]
    MissingOperator(String),
    #[error("'*' may only end a version after the '=' operator")]
    Glob,
    #[error("invalid slot {0:?}")]
    Slot(String),
    #[error("invalid repository name {0:?}")]
    Repo(String),
}

/// Checks that `atom` is a package atom (see the module docs); `Ok` means it is safe
/// to pass to emerge as one argument.
pub fn validate(atom: &str) -> Result<(), AtomError> {
    if atom.is_empty() {
        return Err(AtomError::Empty);
    }
    if atom.len() > MAX_LEN {
        return Err(AtomError::TooLong {
            len: atom.len(),
            max: MAX_LEN,
        });
    }
    if atom.starts_with('-') {
        return Err(AtomError::Option);
    }
    if let Some((at, ch)) = atom
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || "+_.-/:=<>~*".contains(*c)))
    {
        return Err(AtomError::BadChar { ch, at });
    }
    if atom.matches('/').count() > 1 {
        return Err(AtomError::ExtraSlash);
    }
    let (op, rest) = split_operator(atom);
    let rest = checked_suffix(rest, "::", "_-", AtomError::Repo)?;
    let cpv = checked_suffix(rest, ":", "+_.-", AtomError::Slot)?;
    let (category, pv) = cpv.split_once('/').ok_or(AtomError::NoCategory)?;
    if !is_word(category, "+_.-") {
        return Err(AtomError::Category(category.to_owned()));
    }
    let (pv, glob) = match pv.strip_suffix('*') {
        Some(p) => (p, true),
        None => (pv, false),
    };
    if glob && op != Some("=") {
        return Err(AtomError::Glob);
    }
    let (name, version) = split_version(pv);
    if !is_word(name, "+_-") || name.contains('*') {
        return Err(AtomError::Name(name.to_owned()));
    }
    match (op, version) {
        (Some(op), None) => Err(AtomError::MissingVersion {
            op: op.to_owned(),
            cpn: format!("{category}/{name}"),
        }),
        (None, Some(v)) => Err(AtomError::MissingOperator(format!("{category}/{name}-{v}"))),
        _ if glob && version.is_none() => Err(AtomError::Glob),
        _ => Ok(()),
    }
}

/// `s` up to `sep`, once the part after it is checked as a word of `extra`.
fn checked_suffix<'a>(
    s: &'a str,
    sep: &str,
    extra: &str,
    err: fn(String) -> AtomError,
) -> Result<&'a str, AtomError> {
    match s.split_once(sep) {
        Some((head, tail)) if is_word(tail, extra) => Ok(head),
        Some((_, tail)) => Err(err(tail.to_owned())),
        None => Ok(s),
    }
}

fn split_operator(atom: &str) -> (Option<&str>, &str) {
    for op in [">=", "<=", "=", "<", ">", "~"] {
        if let Some(rest) = atom.strip_prefix(op) {
            return (Some(op), rest);
        }
    }
    (None, atom)
}

/// Splits `name-version` at the last '-' that starts a valid version (PMS: a name
/// never ends in a hyphen followed by a valid version).
fn split_version(pv: &str) -> (&str, Option<&str>) {
    // `-r1` belongs to the version: look at the last two hyphens.
    let mut cut = None;
    for (i, _) in pv.match_indices('-') {
        if crate::builder::config::names::is_version(&pv[i + 1..]) {
            cut = Some(i);
            break;
        }
    }
    match cut {
        Some(i) => (&pv[..i], Some(&pv[i + 1..])),
        None => (pv, None),
    }
}

/// A word of `[A-Za-z0-9_]` followed by `[A-Za-z0-9]` and `extra`.
fn is_word(s: &str, extra: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_atoms_are_accepted() {
        for ok in [
            "app-misc/gt-lib",
            "app-misc/gt-lib:0",
            "app-misc/gt-lib::gentree-test",
            "app-misc/gt-lib:0::gentree-test",
            "=app-misc/gt-lib-1",
            ">=app-misc/gt-lib-2",
            "<=app-misc/gt-lib-2-r1",
            "<dev-lang/python-3.12.1_rc2_p3",
            ">sys-libs/glibc-2.39a",
            "~app-misc/gt-lib-1",
            "=dev-lang/python-3.12*",
            "sys-libs/glibc",
            "dev-cpp/libxml++",
            "x11-libs/gtk+:3",
            "virtual/perl-File-Spec",
            "app-misc/foo-bar-baz",
            "app-misc/foo-1a-b",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn hostile_and_malformed_atoms_are_refused_with_the_reason() {
        use AtomError::*;
        let long = format!("app-misc/{}", "a".repeat(MAX_LEN));
        let cases: Vec<(&str, AtomError)> = vec![
            ("", Empty),
            (
                &long,
                TooLong {
                    len: long.len(),
                    max: MAX_LEN,
                },
            ),
            ("--config-root=/x", Option),
            ("-v", Option),
            ("-", Option),
            ("../../etc", ExtraSlash),
            ("../etc", Category("..".into())),
            ("cat/pkg;rm", BadChar { ch: ';', at: 7 }),
            ("cat/pkg name", BadChar { ch: ' ', at: 7 }),
            ("cat/pkg\tx", BadChar { ch: '\t', at: 7 }),
            ("cat/pkg\nx", BadChar { ch: '\n', at: 7 }),
            ("cat/pkg\0", BadChar { ch: '\0', at: 7 }),
            ("cat/$(id)", BadChar { ch: '$', at: 4 }),
            ("cat/`id`", BadChar { ch: '`', at: 4 }),
            ("cat/pkg|x", BadChar { ch: '|', at: 7 }),
            ("cat/pkg&", BadChar { ch: '&', at: 7 }),
            ("cat/p'k", BadChar { ch: '\'', at: 5 }),
            ("cat/pkg\\", BadChar { ch: '\\', at: 7 }),
            ("@world", BadChar { ch: '@', at: 0 }),
            ("cat/pké", BadChar { ch: 'é', at: 6 }),
            ("gt-lib", NoCategory),
            ("/etc/passwd", ExtraSlash),
            ("dev-perl/A-1x", MissingOperator("dev-perl/A-1x".into())),
            ("cat/pkg/extra", ExtraSlash),
            ("cat//pkg", ExtraSlash),
            ("/", Category(String::new())),
            (".hidden/pkg", Category(".hidden".into())),
            ("cat/-pkg", Name("-pkg".into())),
            ("cat/", Name(String::new())),
            ("cat/pkg-1", MissingOperator("cat/pkg-1".into())),
            (
                ">=cat/pkg",
                MissingVersion {
                    op: ">=".into(),
                    cpn: "cat/pkg".into(),
                },
            ),
            ("=cat/pkg-1.", Name("pkg-1.".into())),
            ("cat/pkg*", Glob),
            (">=cat/pkg-1*", Glob),
            ("cat/pkg:", Slot(String::new())),
            ("cat/pkg:0/1", ExtraSlash),
            ("cat/pkg:-x", Slot("-x".into())),
            ("cat/pkg::", Repo(String::new())),
            ("cat/pkg::re.po", Repo("re.po".into())),
            ("==cat/pkg-1", Category("=cat".into())),
            ("=<cat/pkg-1", Category("<cat".into())),
        ];
        for (atom, want) in cases {
            assert_eq!(validate(atom), Err(want), "{atom:?}");
        }
    }

    #[test]
    fn every_rejection_message_names_the_problem() {
        let e = validate("--config-root=/x").unwrap_err().to_string();
        assert!(e.contains("options are not accepted"), "{e}");
        let e = validate("cat/pkg;rm").unwrap_err().to_string();
        assert!(e.contains("';'"), "{e}");
        let e = validate("cat/pkg-1").unwrap_err().to_string();
        assert!(e.contains("=cat/pkg-1"), "{e}");
    }

    #[test]
    fn versions_follow_pms() {
        for v in [
            "1",
            "1.2.3",
            "1b",
            "1_rc1",
            "1_p",
            "1.0_alpha2_p3-r10",
            "2023.01.01",
        ] {
            assert!(crate::builder::config::names::is_version(v), "{v}");
        }
        for v in [
            "", "a", "1.", ".1", "1..2", "1bb", "1_foo", "1-r", "1-rx", "1_rc-1",
        ] {
            assert!(!crate::builder::config::names::is_version(v), "{v}");
        }
        assert_eq!(split_version("foo-bar-1.0-r1"), ("foo-bar", Some("1.0-r1")));
        assert_eq!(split_version("foo-1a-b"), ("foo-1a-b", None));
    }
}
