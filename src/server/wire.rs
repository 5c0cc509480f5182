//! HTTP/1.1 framing for `serve`, over bytes: a bounded parser of request heads and the
//! writer of response heads. No socket here ([`super::listen`] owns those).
//!
//! Bounds (each refused as soon as the bytes received pass it, before the rest
//! arrives): the request line ([`Limits::request_line`], 414), the header block
//! ([`Limits::headers`] bytes or [`Limits::header_count`] fields, 431). A request with
//! a body (`Content-Length` other than 0, or any `Transfer-Encoding`) is answered 413
//! and its connection closed: every route is GET or HEAD, and not reading a body
//! means no body can be used to hold the server.

use std::fmt::Write as _;

/// Size limits of a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line, in bytes (without its line end).
    pub request_line: usize,
    /// Longest header block, in bytes (every field line with its line end).
    pub headers: usize,
    /// Most header fields.
    pub header_count: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_line: 8 << 10,
            headers: 16 << 10,
            header_count: 64,
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Whether the connection stays open after the answer (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub fn keep_alive(&self) -> bool {
        if self.minor == 0 {
            self.connection_has("keep-alive")
        } else {
            !self.connection_has("close")
        }
    }

    /// Whether a body follows the head.
    pub fn has_body(&self) -> bool {
        self.header("transfer-encoding").is_some()
            || self
                .headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("content-length") && v.trim() != "0")
    }
}

/// The outcome of parsing the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed (none of the limits is passed yet).
    Incomplete,
    /// A head, and how many bytes of the buffer it took.
    Done(RequestHead, usize),
    /// Refused: answer with this status and message, then close.
    Refused(u16, &'static str),
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The end of the line starting at `from`: (index of its `\n`, length without `\r\n`).
fn line_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let nl = from + buf.get(from..)?.iter().position(|&b| b == b'\n')?;
    let len = if nl > from && buf[nl - 1] == b'\r' {
        nl - 1 - from
    } else {
        nl - from
    };
    Some((nl, len))
}

/// Parses a request head from the start of `buf`.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Parse {
    // Empty lines before a request line are ignored (RFC 9112 2.2).
    let mut start = 0;
    while let Some(&b) = buf.get(start) {
        match b {
            b'\r' | b'\n' => start += 1,
            _ => break,
        }
        if start > 8 {
            return Parse::Refused(400, "bad request line");
        }
    }
    let Some((nl, len)) = line_end(buf, start) else {
        return if buf.len() - start > limits.request_line {
            Parse::Refused(414, "request line too long")
        } else {
            Parse::Incomplete
        };
    };
    if len > limits.request_line {
        return Parse::Refused(414, "request line too long");
    }
    let Ok(line) = std::str::from_utf8(&buf[start..start + len]) else {
        return Parse::Refused(400, "bad request line");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Refused(400, "bad request line");
    };
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => return Parse::Refused(505, "HTTP version not supported"),
        _ => return Parse::Refused(400, "bad request line"),
    };
    if method.is_empty() || !method.bytes().all(is_token) || target.is_empty() {
        return Parse::Refused(400, "bad request line");
    }

    let fields = nl + 1;
    let mut headers = Vec::new();
    let mut at = fields;
    loop {
        let Some((nl, len)) = line_end(buf, at) else {
            return if buf.len() - fields > limits.headers {
                Parse::Refused(431, "request header fields too large")
            } else {
                Parse::Incomplete
            };
        };
        if nl + 1 - fields > limits.headers {
            return Parse::Refused(431, "request header fields too large");
        }
        if len == 0 {
            let head = RequestHead {
                method: method.to_owned(),
                target: target.to_owned(),
                minor,
                headers,
            };
            return Parse::Done(head, nl + 1);
        }
        if headers.len() == limits.header_count {
            return Parse::Refused(431, "too many request header fields");
        }
        let field = &buf[at..at + len];
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            return Parse::Refused(400, "bad header field");
        };
        let (name, value) = (&field[..colon], &field[colon + 1..]);
        // No obsolete line folding, no space before the colon (RFC 9112 5.1).
        if name.is_empty() || !name.iter().copied().all(is_token) {
            return Parse::Refused(400, "bad header field");
        }
        let (Ok(name), Ok(value)) = (std::str::from_utf8(name), std::str::from_utf8(value)) else {
            return Parse::Refused(400, "bad header field");
        };
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
        at = nl + 1;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A response head: status line, the given headers, `Content-Length` and, when the
/// connection is to close, `Connection: close`.
pub fn response_head(
    status: u16,
    headers: &[(String, String)],
    content_length: u64,
    keep_alive: bool,
) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    let _ = write!(s, "Content-Length: {content_length}\r\n");
    if !keep_alive {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Parse {
        parse_head(s, &Limits::default())
    }

    #[test]
    fn heads_parse() {
        let Parse::Done(h, n) =
            parse(b"GET /a?b HTTP/1.1\r\nHost: x\r\nRange:  bytes=0-1 \r\n\r\nrest")
        else {
            panic!()
        };
        assert_eq!(n, 50);
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.minor),
            ("GET", "/a?b", 1)
        );
        assert_eq!(h.header("range"), Some("bytes=0-1"));
        assert!(h.keep_alive() && !h.has_body());
        let Parse::Done(h, _) = parse(b"\r\nHEAD / HTTP/1.0\nConnection: Keep-Alive\n\n") else {
            panic!()
        };
        assert!(h.minor == 0 && h.keep_alive());
        let Parse::Done(h, _) = parse(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n") else {
            panic!()
        };
        assert!(!h.keep_alive());
        let Parse::Done(h, _) = parse(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n") else {
            panic!()
        };
        assert!(h.has_body());
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_are_refused() {
        for partial in [&b""[..], b"GET / HT", b"GET / HTTP/1.1\r\nHost: x\r\n"] {
            assert_eq!(parse(partial), Parse::Incomplete, "{partial:?}");
        }
        let cases: &[(&[u8], u16)] = &[
            (b"GET /\r\n\r\n", 400),
            (b"GET / HTTP/1.1 x\r\n\r\n", 400),
            (b"G(T / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nName : v\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: \xff\r\n\r\n", 400),
        ];
        for (bytes, want) in cases {
            match parse(bytes) {
                Parse::Refused(code, _) => assert_eq!(code, *want, "{bytes:?}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn limits_refuse_before_the_end_arrives() {
        let l = Limits {
            request_line: 20,
            headers: 40,
            header_count: 2,
        };
        let p = |b: &[u8]| parse_head(b, &l);
        // At the limit: fine; one past it, even unfinished: refused.
        assert!(matches!(
            p(b"GET /123456 HTTP/1.1\r\n\r\n"),
            Parse::Done(..)
        ));
        assert_eq!(
            p(b"GET /1234567 HTTP/1.1"),
            Parse::Refused(414, "request line too long")
        );
        assert_eq!(
            p(b"GET /1234567 HTTP/1.1\r\n\r\n").clone(),
            Parse::Refused(414, "request line too long")
        );
        let long = [b"GET / HTTP/1.1\r\nA: ".as_slice(), &[b'x'; 40]].concat();
        assert_eq!(
            p(&long),
            Parse::Refused(431, "request header fields too large")
        );
        assert!(matches!(
            p(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n"),
            Parse::Done(..)
        ));
        assert_eq!(
            p(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
            Parse::Refused(431, "too many request header fields")
        );
    }

    #[test]
    fn response_heads() {
        let h = response_head(
            404,
            &[("Content-Type".into(), "text/plain".into())],
            10,
            false,
        );
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
        );
        let h = response_head(200, &[], 0, true);
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
