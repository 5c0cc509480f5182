//! A small blocking client of the OCI distribution API, just what the layer cache
//! needs: manifests by tag, blobs by digest, streamed uploads, and the auth
//! handshake of [`super::auth`].
//!
//! Hostile registries cannot make it use unbounded memory: manifests and small
//! blobs are read into memory only up to [`MAX_MANIFEST`]/[`MAX_SMALL_BLOB`], large
//! blobs are streamed to a file while hashed and cut off at their declared size, and
//! every blob is checked against its digest before a caller sees it. Each request
//! has a timeout ([`Registry::new`]); a `401` is answered once (Basic or Bearer),
//! and the answer reused for later requests.

use std::io::{self, Read, Write};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use super::CacheRef;
use super::auth::{Challenge, Credentials, token_of};
use crate::layers::digest::{hex, sha256_hex};

/// The largest manifest accepted.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The largest blob read into memory (the layer metadata).
pub const MAX_SMALL_BLOB: u64 = 4 << 20;
/// The slowest transfer of a layer blob accepted: a blob of N MiB may take
/// N seconds beyond the base timeout (ureq's body timeouts are totals, not idle).
const MIN_RATE: u64 = 1 << 20;

/// Errors of one request, naming the URL.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{method} {url}: {source}")]
    Http {
        method: &'static str,
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{method} {url}: HTTP {status}{detail}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: {what} is larger than {limit} bytes")]
    TooLarge {
        url: String,
        what: &'static str,
        limit: u64,
    },
    #[error("{url}: content digest is {got}, not {want}")]
    Digest {
        url: String,
        want: String,
        got: String,
    },
    #[error("{url}: {what}")]
    Protocol { url: String, what: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// True for `sha256:` and 64 lowercase hex digits, the only digests used.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// One repository of one registry.
#[derive(Debug)]
pub struct Registry {
    agent: ureq::Agent,
    r: CacheRef,
    creds: Option<Credentials>,
    timeout: Duration,
    /// The `Authorization` value that last worked.
    authorization: Mutex<Option<String>>,
}

type Resp = ureq::http::Response<ureq::Body>;

impl Registry {
    /// A client of `r`, authenticating with `creds` when asked. `timeout` bounds
    /// connecting and each read or write.
    pub fn new(r: CacheRef, creds: Option<Credentials>, timeout: Duration) -> Registry {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(Some(timeout * 4))
            .timeout_send_body(Some(timeout * 4))
            .max_response_header_size(64 << 10)
            .https_only(r.https)
            .user_agent(concat!("gentree-fs/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Registry {
            agent,
            r,
            creds,
            timeout,
            authorization: Mutex::new(None),
        }
    }

    pub fn reference(&self) -> &CacheRef {
        &self.r
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.r.base_url(), self.r.repo)
    }

    /// Sends a request with a replayable body, answering one `401`.
    fn send(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Resp, RegistryError> {
        self.send_sized(method, url, headers, body, 0)
    }

    /// [`Self::send`] of a request whose answer is a body of `size` bytes.
    fn send_sized(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        size: u64,
    ) -> Result<Resp, RegistryError> {
        let resp = self.run(method, url, headers, body, size)?;
        if resp.status() != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse);
        let Some(challenge) = challenge else {
            return Err(status_err(method, url, resp));
        };
        let value = self.answer(&challenge, url)?;
        *self.authorization.lock() = Some(value);
        self.run(method, url, headers, body, size)
    }

    /// One request with the last `Authorization` that worked; its body (either
    /// way) may take [`Self::budget`] of `size`.
    fn run(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl ureq::AsSendBody,
        size: u64,
    ) -> Result<Resp, RegistryError> {
        let mut b = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = self.authorization.lock().clone() {
            b = b.header("authorization", a);
        }
        let req = b.body(body).map_err(|e| RegistryError::Protocol {
            url: url.to_owned(),
            what: format!("cannot make the request: {e}"),
        })?;
        let req = self
            .agent
            .configure_request(req)
            .timeout_recv_body(Some(self.budget(size)))
            .timeout_send_body(Some(self.budget(size)))
            .build();
        self.agent.run(req).map_err(|source| RegistryError::Http {
            method,
            url: url.to_owned(),
            source,
        })
    }

    /// How long a body of `size` bytes may take.
    fn budget(&self, size: u64) -> Duration {
        self.timeout * 4 + Duration::from_secs(size / MIN_RATE)
    }

    /// The `Authorization` value that answers `challenge`.
    fn answer(&self, challenge: &Challenge, url: &str) -> Result<String, RegistryError> {
        match challenge {
            Challenge::Basic => match &self.creds {
                Some(c) => Ok(c.basic_header()),
                None => Err(RegistryError::Protocol {
                    url: url.to_owned(),
                    what: format!(
                        "the registry asks for a login and no auth file has one for {}: run `podman login {}`",
                        self.r.host, self.r.host
                    ),
                }),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope
                    .clone()
                    .unwrap_or_else(|| format!("repository:{}:pull,push", self.r.repo));
                let mut token_url = realm.clone();
                let mut sep = if realm.contains('?') { '&' } else { '?' };
                for (k, v) in [("service", service.as_deref()), ("scope", Some(&scope))] {
                    if let Some(v) = v {
                        token_url.push_str(&format!("{sep}{k}={}", query_escape(v)));
                        sep = '&';
                    }
                }
                if self.r.https && !token_url.starts_with("https://") {
                    return Err(RegistryError::Protocol {
                        url: url.to_owned(),
                        what: format!("token realm {realm} is not https"),
                    });
                }
                let mut b = ureq::http::Request::builder().method("GET").uri(&token_url);
                if let Some(c) = &self.creds {
                    b = b.header("authorization", c.basic_header());
                }
                let req = b.body(()).map_err(|e| RegistryError::Protocol {
                    url: token_url.clone(),
                    what: format!("cannot make the request: {e}"),
                })?;
                let mut resp = self.agent.run(req).map_err(|source| RegistryError::Http {
                    method: "GET",
                    url: token_url.clone(),
                    source,
                })?;
                if resp.status() != 200 {
                    return Err(status_err("GET", &token_url, resp));
                }
                let body = read_small(&mut resp, &token_url, "the token answer", 1 << 20)?;
                let token = token_of(&body).ok_or_else(|| RegistryError::Protocol {
                    url: token_url.clone(),
                    what: "the token answer holds no token".into(),
                })?;
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// The manifest tagged `tag` and its digest, or `None` when there is none.
    pub fn manifest(
        &self,
        tag: &str,
        accept: &str,
    ) -> Result<Option<(Vec<u8>, String)>, RegistryError> {
        let url = self.url(&format!("manifests/{tag}"));
        let mut resp = self.send("GET", &url, &[("accept", accept)], b"")?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(status_err("GET", &url, resp)),
        }
        let body = read_small(&mut resp, &url, "the manifest", MAX_MANIFEST)?;
        let digest = sha256_digest(&body);
        if let Some(said) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if said.starts_with("sha256:") && said != digest {
                return Err(RegistryError::Digest {
                    url,
                    want: said.to_owned(),
                    got: digest,
                });
            }
        }
        Ok(Some((body, digest)))
    }

    /// A small blob, checked against `digest`.
    pub fn small_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        if size > MAX_SMALL_BLOB {
            return Err(RegistryError::TooLarge {
                url,
                what: "the blob",
                limit: MAX_SMALL_BLOB,
            });
        }
        let mut resp = self.send("GET", &url, &[], b"")?;
        if resp.status() != 200 {
            return Err(status_err("GET", &url, resp));
        }
        let body = read_small(&mut resp, &url, "the blob", size)?;
        let got = sha256_digest(&body);
        if got != digest || body.len() as u64 != size {
            return Err(RegistryError::Digest {
                url,
                want: digest.to_owned(),
                got,
            });
        }
        Ok(body)
    }

    /// Streams the blob `digest` of `size` bytes into `out`, hashing it; fails if
    /// it is longer or shorter or its digest differs.
    pub fn blob_to(
        &self,
        digest: &str,
        size: u64,
        out: &mut dyn Write,
    ) -> Result<(), RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send_sized("GET", &url, &[], b"", size)?;
        if resp.status() != 200 {
            return Err(status_err("GET", &url, resp));
        }
        let mut reader = resp
            .into_body()
            .into_with_config()
            .limit(size.saturating_add(1))
            .reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut n: u64 = 0;
        loop {
            let k = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(RegistryError::Io {
                        what: format!("reading {url}"),
                        source,
                    });
                }
            };
            n += k as u64;
            if n > size {
                return Err(RegistryError::TooLarge {
                    url,
                    what: "the blob (over its declared size)",
                    limit: size,
                });
            }
            hasher.update(&buf[..k]);
            out.write_all(&buf[..k])
                .map_err(|source| RegistryError::Io {
                    what: format!("saving {url}"),
                    source,
                })?;
        }
        let got = format!("sha256:{}", hex(&hasher.finalize()));
        if n != size || got != digest {
            return Err(RegistryError::Digest {
                url,
                want: format!("{digest} ({size} bytes)"),
                got: format!("{got} ({n} bytes)"),
            });
        }
        Ok(())
    }

    /// Whether the registry has the blob `digest`.
    pub fn has_blob(&self, digest: &str) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.send("HEAD", &url, &[], b"")?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(status_err("HEAD", &url, resp)),
        }
    }

    /// Starts an upload: the URL to send its data to.
    fn start_upload(&self) -> Result<String, RegistryError> {
        let url = self.url("blobs/uploads/");
        let resp = self.send("POST", &url, &[("content-length", "0")], b"")?;
        if resp.status() != 202 {
            return Err(status_err("POST", &url, resp));
        }
        self.location(&url, &resp)
    }

    fn location(&self, url: &str, resp: &Resp) -> Result<String, RegistryError> {
        let loc = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                url: url.to_owned(),
                what: "an upload answer without a Location".into(),
            })?;
        Ok(if loc.starts_with('/') {
            format!("{}{loc}", self.r.base_url())
        } else {
            loc.to_owned()
        })
    }

    /// Uploads a blob held in memory (skipped when the registry has it).
    pub fn push_small(&self, bytes: &[u8]) -> Result<String, RegistryError> {
        let digest = sha256_digest(bytes);
        if self.has_blob(&digest)? {
            return Ok(digest);
        }
        let loc = self.start_upload()?;
        let url = with_query(&loc, "digest", &digest);
        let len = bytes.len().to_string();
        let resp = self.send(
            "PUT",
            &url,
            &[
                ("content-type", "application/octet-stream"),
                ("content-length", &len),
            ],
            bytes,
        )?;
        if resp.status() != 201 {
            return Err(status_err("PUT", &url, resp));
        }
        Ok(digest)
    }

    /// Uploads the `size` bytes of `data` in one streamed PATCH, hashing them on the
    /// way, then completes the upload under their digest. Returns digest and size.
    pub fn push_stream(
        &self,
        data: &mut dyn Read,
        size: u64,
    ) -> Result<(String, u64), RegistryError> {
        let loc = self.start_upload()?;
        let mut hashing = HashingReader {
            inner: data,
            hasher: Sha256::new(),
            n: 0,
        };
        let resp = self.run(
            "PATCH",
            &loc,
            &[("content-type", "application/octet-stream")],
            ureq::SendBody::from_reader(&mut hashing),
            size,
        )?;
        if resp.status() != 202 {
            return Err(status_err("PATCH", &loc, resp));
        }
        let loc = self.location(&loc, &resp)?;
        let digest = format!("sha256:{}", hex(&hashing.hasher.finalize()));
        let size = hashing.n;
        let url = with_query(&loc, "digest", &digest);
        let resp = self.send("PUT", &url, &[("content-length", "0")], b"")?;
        if resp.status() != 201 {
            return Err(status_err("PUT", &url, resp));
        }
        Ok((digest, size))
    }

    /// Tags `bytes` (a manifest of `media_type`) as `tag`.
    pub fn put_manifest(
        &self,
        tag: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let url = self.url(&format!("manifests/{tag}"));
        let resp = self.send("PUT", &url, &[("content-type", media_type)], bytes)?;
        if resp.status() != 201 {
            return Err(status_err("PUT", &url, resp));
        }
        Ok(())
    }
}

struct HashingReader<'a> {
    inner: &'a mut dyn Read,
    hasher: Sha256,
    n: u64,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// Reads at most `limit` bytes of a body, refusing a longer one.
fn read_small(
    resp: &mut Resp,
    url: &str,
    what: &'static str,
    limit: u64,
) -> Result<Vec<u8>, RegistryError> {
    resp.body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => RegistryError::TooLarge {
                url: url.to_owned(),
                what,
                limit,
            },
            source => RegistryError::Http {
                method: "GET",
                url: url.to_owned(),
                source,
            },
        })
}

/// The error of an unexpected status, with the start of the registry's message.
fn status_err(method: &'static str, url: &str, mut resp: Resp) -> RegistryError {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_vec()
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let text: String = text.trim().chars().take(300).collect();
    RegistryError::Status {
        method,
        url: url.to_owned(),
        status,
        detail: if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        },
    }
}

fn with_query(url: &str, k: &str, v: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{k}={}", query_escape(v))
}

/// Percent-encodes everything but unreserved characters.
fn query_escape(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_queries() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(valid_digest(&sha256_digest(b"x")));
        for bad in [
            "sha256:abc",
            "md5:00",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(!valid_digest(bad), "{bad}");
        }
        assert_eq!(
            with_query("http://h/u?_state=a", "digest", "sha256:00"),
            "http://h/u?_state=a&digest=sha256%3A00"
        );
        assert_eq!(
            with_query("http://h/u", "scope", "repository:a/b:pull,push"),
            "http://h/u?scope=repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }
}
