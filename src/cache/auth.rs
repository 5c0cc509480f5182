//! Registry credentials and challenges, as podman and skopeo find and answer them.
//!
//! Credentials come from the first of these files that has an entry for the
//! registry (containers-auth.json(5)):
//! 1. `$REGISTRY_AUTH_FILE`;
//! 2. `$XDG_RUNTIME_DIR/containers/auth.json`;
//! 3. `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config/containers/auth.json`);
//! 4. `~/.docker/config.json`.
//!
//! Each file is `{"auths": {"KEY": {"auth": base64("user:password")}}}`. KEY is
//! `host[:port]`, optionally with a repository path (`host/team/cache`: the most
//! specific entry wins, as in podman), and docker's legacy `https://host/v1/` form is
//! accepted. `credHelpers`/`credsStore` are not run: such an entry is skipped and said
//! so. A file that is missing is skipped; one that is not valid JSON is skipped with a
//! warning naming it (the cache never breaks a build). Files over 1 MiB are refused.
//!
//! A `401` names its scheme in `WWW-Authenticate`: `Basic` (answered with the
//! credentials) or `Bearer realm=...,service=...,scope=...` (a token fetched from
//! the realm, with the credentials as Basic auth when there are some, anonymous
//! otherwise), parsed by [`Challenge::parse`].

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The most bytes read of an auth file.
const MAX_AUTH_FILE: u64 = 1 << 20;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.user)
    }
}

impl Credentials {
    /// The `Authorization` header value of Basic auth.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.user, self.password))
        )
    }
}

/// The auth files to read, in order, from this process's environment.
pub fn auth_files_from_env() -> Vec<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = var("HOME");
    let mut out = Vec::new();
    out.extend(var("REGISTRY_AUTH_FILE"));
    if let Some(x) = var("XDG_RUNTIME_DIR") {
        out.push(x.join("containers/auth.json"));
    }
    match var("XDG_CONFIG_HOME") {
        Some(x) => out.push(x.join("containers/auth.json")),
        None => out.extend(
            home.as_ref()
                .map(|h| h.join(".config/containers/auth.json")),
        ),
    }
    out.extend(home.map(|h| h.join(".docker/config.json")));
    out
}

/// The credentials for `repo` on `host` (`host[:port]`) in the first file of
/// `files` that has an entry for it.
pub fn find_credentials(files: &[PathBuf], host: &str, repo: &str) -> Option<Credentials> {
    files.iter().find_map(|f| {
        let text = read_capped(f)?;
        match lookup(&text, host, repo) {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!("registry auth file {}: {why}; ignored", f.display());
                None
            }
        }
    })
}

fn read_capped(path: &Path) -> Option<String> {
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("cannot read registry auth file {}: {e}", path.display());
            return None;
        }
    };
    let mut text = String::new();
    let read = f.take(MAX_AUTH_FILE + 1).read_to_string(&mut text);
    match read {
        Ok(n) if n as u64 > MAX_AUTH_FILE => {
            tracing::warn!(
                "registry auth file {} is larger than 1 MiB; ignored",
                path.display()
            );
            None
        }
        Ok(_) => Some(text),
        Err(e) => {
            tracing::warn!("cannot read registry auth file {}: {e}", path.display());
            None
        }
    }
}

/// The entry of one auth file's text for `host`/`repo`: the longest key that is the
/// host itself or the host followed by a path prefix of `repo`.
pub fn lookup(text: &str, host: &str, repo: &str) -> Result<Option<Credentials>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let mut best: Option<(usize, &serde_json::Value, &str)> = None;
    for (key, entry) in auths {
        let norm = normalize_key(key);
        let Some(rest) = norm.strip_prefix(host) else {
            continue;
        };
        let matches = rest.is_empty()
            || rest
                .strip_prefix('/')
                .is_some_and(|p| repo == p || repo.starts_with(&format!("{p}/")));
        if matches && best.is_none_or(|(len, _, _)| norm.len() > len) {
            best = Some((norm.len(), entry, key));
        }
    }
    let Some((_, entry, key)) = best else {
        return Ok(None);
    };
    let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
        tracing::warn!(
            "registry auth entry {key:?} has no `auth` field (credential helpers are not run)"
        );
        return Ok(None);
    };
    let raw = STANDARD
        .decode(auth.trim())
        .map_err(|_| format!("the `auth` of {key:?} is not base64"))?;
    let raw = String::from_utf8(raw).map_err(|_| format!("the `auth` of {key:?} is not UTF-8"))?;
    let (user, password) = raw
        .split_once(':')
        .ok_or_else(|| format!("the `auth` of {key:?} is not user:password"))?;
    Ok(Some(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    }))
}

/// `https://host/v1/` and `http://host` keys as plain `host[/path]`.
fn normalize_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    k.strip_suffix("/v1").or(k.strip_suffix("/v2")).unwrap_or(k)
}

/// What a `401` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value: `Basic realm="x"` or
    /// `Bearer realm="https://auth/token",service="reg",scope="repository:r:pull"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

/// `k="v", k2=v2` pairs; quoted values may hold commas and `\"`.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    out
}

/// The token of a token server's answer: `token`, else `access_token`.
pub fn token_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user_pass: &str) -> String {
        format!("{{\"auth\": \"{}\"}}", STANDARD.encode(user_pass))
    }

    #[test]
    fn the_most_specific_entry_for_host_and_repo_wins() {
        let text = format!(
            "{{\"auths\": {{\"reg:5000\": {}, \"reg:5000/team\": {}, \"reg:5000/team/cache\": {}, \"other\": {}, \"https://index.docker.io/v1/\": {}}}}}",
            entry("a:1"),
            entry("b:2"),
            entry("c:3:with:colons"),
            entry("d:4"),
            entry("e:5")
        );
        let user = |host, repo| lookup(&text, host, repo).unwrap().map(|c| c.user);
        assert_eq!(user("reg:5000", "x"), Some("a".into()));
        assert_eq!(user("reg:5000", "team/other"), Some("b".into()));
        assert_eq!(
            user("reg:5000", "teamx"),
            Some("a".into()),
            "not a path prefix"
        );
        assert_eq!(user("reg:5000", "team/cache"), Some("c".into()));
        assert_eq!(user("reg", "x"), None, "another port is another registry");
        assert_eq!(user("index.docker.io", "lib/x"), Some("e".into()));
        let c = lookup(&text, "reg:5000", "team/cache/sub")
            .unwrap()
            .unwrap();
        assert_eq!(c.password, "3:with:colons");
        assert_eq!(
            c.basic_header(),
            format!("Basic {}", STANDARD.encode("c:3:with:colons"))
        );
    }

    #[test]
    fn malformed_entries_are_refused_or_skipped() {
        assert!(lookup("nope", "h", "r").is_err());
        assert_eq!(lookup("{}", "h", "r"), Ok(None));
        assert!(lookup("{\"auths\":{\"h\":{\"auth\":\"!!\"}}}", "h", "r").is_err());
        let no_colon = format!("{{\"auths\":{{\"h\":{}}}}}", entry("nocolon"));
        assert!(lookup(&no_colon, "h", "r").is_err());
        // A credential-helper entry has no `auth`: skipped.
        assert_eq!(lookup("{\"auths\":{\"h\":{}}}", "h", "r"), Ok(None));
    }

    #[test]
    fn the_first_file_with_an_entry_wins() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, bad) = (t.path().join("a"), t.path().join("b"), t.path().join("bad"));
        fs::write(&a, format!("{{\"auths\":{{\"other\":{}}}}}", entry("x:1"))).unwrap();
        fs::write(&b, format!("{{\"auths\":{{\"h:1\":{}}}}}", entry("y:2"))).unwrap();
        fs::write(&bad, "{").unwrap();
        let files = [t.path().join("missing"), bad, a, b];
        let c = find_credentials(&files, "h:1", "r").unwrap();
        assert_eq!(c.user, "y");
        assert!(find_credentials(&files, "h:2", "r").is_none());
    }

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                "Bearer realm=\"https://auth.io/token\",service=\"reg.io\",scope=\"repository:a/b:pull,push\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.io/token".into(),
                service: Some("reg.io".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse("bearer realm=http://t/x"),
            Some(Challenge::Bearer {
                realm: "http://t/x".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None, "no realm");
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(token_of(b"{\"token\":\"t1\"}"), Some("t1".into()));
        assert_eq!(token_of(b"{\"access_token\":\"t2\"}"), Some("t2".into()));
        assert_eq!(token_of(b"{\"token\":\"\"}"), None);
        assert_eq!(token_of(b"<html>"), None);
    }
}
