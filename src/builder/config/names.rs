//! Names that become path components on the host and inside the build namespace
//! the buildname and the binary-package directory. Every component is
//! validated (B58), since `/`, `..`, `,` or `:` would escape directories or break
//! overlay mount options. Also the PMS version syntax ([`is_version`]), which the
//! server's atom check and the SBOM's `PF` split share.

use super::ConfigError;

/// Checks that `value` is a safe path component: `[A-Za-z0-9._+-]`, not empty, not
/// `.`/`..`, not starting with `-` or `.`.
pub fn validate(what: &'static str, value: &str, origin: &str) -> Result<(), ConfigError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.starts_with('.') {
        Some("it starts with `.`")
    } else if value.starts_with('-') {
        Some("it starts with `-`")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
    {
        Some("only letters, digits and `._+-` are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::InvalidName {
            what,
            value: value.to_string(),
            origin: origin.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `seed[-build_tag][-crossdev_target]-name`.
pub fn buildname(seed: &str, build_tag: Option<&str>, target: Option<&str>, name: &str) -> String {
    let mut parts = vec![seed];
    parts.extend(build_tag);
    parts.extend(target);
    parts.push(name);
    parts.join("-")
}

/// The binary-package directory name below the conf root: `pkgdir`, then
/// `_<package_tag>` (else `_<build_tag>`), then `_<crossdev_target>`.
pub fn pkgdir_name(
    package_tag: Option<&str>,
    build_tag: Option<&str>,
    target: Option<&str>,
) -> String {
    let mut s = String::from("pkgdir");
    for part in [package_tag.or(build_tag), target].into_iter().flatten() {
        s.push('_');
        s.push_str(part);
    }
    s
}

/// PMS version syntax: `1.2.3b_rc4_p1-r2`.
pub fn is_version(v: &str) -> bool {
    let (v, rev) = match v.rsplit_once("-r") {
        Some((v, r)) => (v, Some(r)),
        None => (v, None),
    };
    if let Some(r) = rev {
        if r.is_empty() || !r.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    let mut parts = v.split('_');
    let Some(main) = parts.next() else {
        return false;
    };
    let main = main
        .strip_suffix(|c: char| c.is_ascii_lowercase())
        .unwrap_or(main);
    let numbers_ok = main
        .split('.')
        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    numbers_ok
        && parts.all(|suffix| {
            ["alpha", "beta", "pre", "rc", "p"].iter().any(|s| {
                suffix
                    .strip_prefix(s)
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PI: &str = "aarch64-unknown-linux-gnu";

    #[test]
    fn buildname_table() {
        let cases = [
            (
                "stage3-openrc",
                Some("pi3"),
                Some(PI),
                "nginx",
                "stage3-openrc-pi3-aarch64-unknown-linux-gnu-nginx",
            ),
            ("stage3-openrc", None, None, "glibc", "stage3-openrc-glibc"),
            ("s", Some("t"), None, "n", "s-t-n"),
            ("s", None, Some(PI), "n", "s-aarch64-unknown-linux-gnu-n"),
        ];
        for (seed, tag, target, name, want) in cases {
            assert_eq!(buildname(seed, tag, target, name), want);
        }
    }

    #[test]
    fn pkgdir_table() {
        let cases = [
            (None, None, None, "pkgdir"),
            (
                None,
                Some("pi3"),
                Some(PI),
                "pkgdir_pi3_aarch64-unknown-linux-gnu",
            ),
            (Some("generic"), Some("pi3"), None, "pkgdir_generic"),
            (Some("generic"), None, None, "pkgdir_generic"),
            (None, None, Some(PI), "pkgdir_aarch64-unknown-linux-gnu"),
        ];
        for (ptag, btag, target, want) in cases {
            assert_eq!(pkgdir_name(ptag, btag, target), want);
        }
    }

    #[test]
    fn validation_table() {
        for ok in [
            "nginx",
            "stage3-amd64-openrc-2025",
            "a.b_c+d",
            "x86_64-pc-linux-gnu",
        ] {
            validate("name", ok, "t").unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("..", "starts with `.`"),
            (".hidden", "starts with `.`"),
            ("-x", "starts with `-`"),
            ("a/b", "only letters"),
            ("a,b", "only letters"),
            ("a:b", "only letters"),
            ("a b", "only letters"),
        ] {
            let e = validate("seed", bad, "f.toml").unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("f.toml"), "{bad:?}: {e}");
        }
    }
}
