//! The binary package dir as static files: request paths, byte ranges and opening a
//! file that is guaranteed to lie below the package dir.
//!
//! Invariants:
//! - a request path is decoded one segment at a time, so `%2f` can never create a
//!   separator; a decoded segment that is `.`, `..`, contains `/` or NUL, or starts
//!   with `.` (hidden files, Portage's lock and temp files) is refused before any
//!   file system access;
//! - the file is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from
//!   the package dir, so a symlink (or a `..` planted by a rename race) can never
//!   reach outside it; kernels without openat2 get canonicalize + prefix check;
//! - only regular files are served: a directory is "not found" (no index).

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

/// Why a request path was refused (400) before touching the file system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request path must start with '/'")]
    NotAbsolute,
    #[error("malformed percent escape in the request path")]
    BadEscape,
    #[error("request path segment {0:?} is not allowed (no '.' or '..')")]
    DotSegment(String),
    #[error("encoded '/' in a request path segment")]
    EncodedSlash,
    #[error("NUL byte in the request path")]
    Nul,
}

/// What a valid request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A relative path below the package dir (at least one segment).
    File(PathBuf),
    /// `/` itself, or a hidden name: never served (404), but not malformed either.
    Hidden,
}

/// Decodes the path part of a request target (no query) into a path below the
/// package dir. Empty segments (`//`) are skipped.
pub fn decode_path(raw: &str) -> Result<Target, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut out = PathBuf::new();
    let mut hidden = false;
    for seg in rest.split('/') {
        let bytes = percent_decode(seg).ok_or(PathError::BadEscape)?;
        if bytes.contains(&0) {
            return Err(PathError::Nul);
        }
        if bytes.contains(&b'/') {
            return Err(PathError::EncodedSlash);
        }
        match bytes.as_slice() {
            b"" => continue,
            b"." | b".." => {
                return Err(PathError::DotSegment(
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
            [b'.', ..] => hidden = true,
            _ => {}
        }
        out.push(OsString::from_vec(bytes));
    }
    if hidden || out.as_os_str().is_empty() {
        Ok(Target::Hidden)
    } else {
        Ok(Target::File(out))
    }
}

/// `%XX` decoding; `None` on a malformed escape. `+` stays `+` (paths are not forms).
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// What a `Range` header asks of a file of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No (usable) range: the whole file, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial { start: u64, end: u64 },
    /// 416, with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// Interprets a `Range` header for a file of `len` bytes (RFC 9110 14.2). One range
/// `bytes=A-B`, `bytes=A-` or `bytes=-N` is honoured; several ranges, other units or
/// a malformed header are ignored (the whole file is sent), as the RFC allows.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeAnswer {
    let Some(h) = header else {
        return RangeAnswer::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(b) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => RangeAnswer::Full,
        },
        (false, _) => {
            let Some(start) = num(a) else {
                return RangeAnswer::Full;
            };
            let end = if b.is_empty() {
                None
            } else {
                match num(b) {
                    Some(e) if e >= start => Some(e),
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= len {
                return RangeAnswer::Unsatisfiable;
            }
            RangeAnswer::Partial {
                start,
                end: end.map_or(len - 1, |e| e.min(len - 1)),
            }
        }
        (true, true) => RangeAnswer::Full,
    }
}

/// The Content-Type of a file in a binary package dir.
pub fn content_type(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == "Packages" {
        "text/plain; charset=utf-8"
    } else if name.ends_with(".tar") {
        // gpkg: a plain tar holding compressed members.
        "application/x-tar"
    } else if name.ends_with(".tbz2") || name.ends_with(".xpak") {
        "application/x-bzip2"
    } else if name.ends_with(".gz") {
        "application/gzip"
    } else if name.ends_with(".zst") {
        "application/zstd"
    } else if name.ends_with(".sig") || name.ends_with(".asc") {
        "application/pgp-signature"
    } else {
        "application/octet-stream"
    }
}

/// Why a path below the package dir cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Missing, a directory, not a regular file, or leading outside: 404.
    #[error("not found")]
    NotFound,
    #[error("permission denied")]
    Denied,
    #[error("cannot open {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Opens `rel` below `root` for reading, never leaving `root` (see the module docs).
/// Returns the file and its length.
pub fn open_beneath(root: &Path, rel: &Path) -> Result<(File, u64), OpenError> {
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| errno_err(root, e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let file = match openat2(&dir, rel, how) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOSYS) => open_checked(root, rel)?,
        Err(e) => return Err(errno_err(&root.join(rel), e)),
    };
    let meta = file.metadata().map_err(|source| OpenError::Io {
        path: root.join(rel),
        source,
    })?;
    if !meta.is_file() {
        return Err(OpenError::NotFound);
    }
    Ok((file, meta.len()))
}

/// Without openat2: resolve every symlink, then insist the result is below `root`.
fn open_checked(root: &Path, rel: &Path) -> Result<File, OpenError> {
    let base = root.canonicalize().map_err(|e| io_err(root, e))?;
    let full = root.join(rel);
    let real = full.canonicalize().map_err(|e| io_err(&full, e))?;
    if !real.starts_with(&base) {
        return Err(OpenError::NotFound);
    }
    File::open(&real).map_err(|e| io_err(&real, e))
}

fn errno_err(path: &Path, e: Errno) -> OpenError {
    match e {
        // EXDEV: the walk would leave the root (RESOLVE_BENEATH); ELOOP: magic links.
        Errno::ENOENT | Errno::ENOTDIR | Errno::EXDEV | Errno::ELOOP | Errno::ENAMETOOLONG => {
            OpenError::NotFound
        }
        Errno::EACCES | Errno::EPERM => OpenError::Denied,
        e => OpenError::Io {
            path: path.to_path_buf(),
            source: io::Error::from(e),
        },
    }
}

fn io_err(path: &Path, e: io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(n) => errno_err(path, Errno::from_raw(n)),
        None => OpenError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn paths_decode_segment_by_segment_and_refuse_traversal() {
        let file = |s: &str| Ok(Target::File(PathBuf::from(s)));
        assert_eq!(decode_path("/Packages"), file("Packages"));
        assert_eq!(
            decode_path("/app-misc/gt-lib/gt-lib-1-1.gpkg.tar"),
            file("app-misc/gt-lib/gt-lib-1-1.gpkg.tar")
        );
        assert_eq!(decode_path("//app-misc//x"), file("app-misc/x"));
        assert_eq!(decode_path("/a%20b/c%2Bd+e"), file("a b/c+d+e"));
        assert_eq!(decode_path("/"), Ok(Target::Hidden));
        assert_eq!(decode_path("/.locks/x"), Ok(Target::Hidden));
        assert_eq!(decode_path("/cat/.Packages.tmp"), Ok(Target::Hidden));
        for (raw, want) in [
            ("Packages", PathError::NotAbsolute),
            ("/../etc/passwd", PathError::DotSegment("..".into())),
            ("/a/../../etc/passwd", PathError::DotSegment("..".into())),
            ("/a/./b", PathError::DotSegment(".".into())),
            ("/%2e%2e/etc/passwd", PathError::DotSegment("..".into())),
            ("/%2E%2E/etc/passwd", PathError::DotSegment("..".into())),
            ("/.%2e/etc", PathError::DotSegment("..".into())),
            ("/a/%2e", PathError::DotSegment(".".into())),
            ("/..%2fetc%2fpasswd", PathError::EncodedSlash),
            ("/%2e%2fetc", PathError::EncodedSlash),
            ("/a%2F..%2F..%2Fetc", PathError::EncodedSlash),
            ("/%2fetc/passwd", PathError::EncodedSlash),
            ("/a%00b", PathError::Nul),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/a%+1", PathError::BadEscape),
        ] {
            assert_eq!(decode_path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        let p = |start, end| Partial { start, end };
        for (h, len, want) in [
            (None, 10, Full),
            (Some("bytes=0-3"), 10, p(0, 3)),
            (Some("bytes=2-"), 10, p(2, 9)),
            (Some("bytes=-3"), 10, p(7, 9)),
            (Some("bytes=-30"), 10, p(0, 9)),
            (Some("bytes=5-100"), 10, p(5, 9)),
            (Some("bytes=9-9"), 10, p(9, 9)),
            (Some(" bytes=1-1 "), 10, p(1, 1)),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=10-20"), 10, Unsatisfiable),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-1"), 0, Unsatisfiable),
            // Ignored: the whole file.
            (Some("bytes=3-1"), 10, Full),
            (Some("bytes=0-1,4-5"), 10, Full),
            (Some("items=0-1"), 10, Full),
            (Some("bytes=a-b"), 10, Full),
            (Some("bytes=-"), 10, Full),
            (Some("bytes=+1-2"), 10, Full),
            (Some("bytes=1"), 10, Full),
            (Some("bytes=99999999999999999999999-"), 10, Full),
        ] {
            assert_eq!(parse_range(h, len), want, "{h:?} of {len}");
        }
    }

    #[test]
    fn content_types_by_name() {
        assert!(content_type(Path::new("Packages")).starts_with("text/plain"));
        assert_eq!(
            content_type(Path::new("a/b/b-1-1.gpkg.tar")),
            "application/x-tar"
        );
        assert_eq!(
            content_type(Path::new("a/b/b-1.tbz2")),
            "application/x-bzip2"
        );
        assert_eq!(content_type(Path::new("a/b/x")), "application/octet-stream");
    }

    #[test]
    fn open_beneath_serves_files_and_never_leaves_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("pkgdir");
        std::fs::create_dir_all(root.join("cat/pkg")).unwrap();
        std::fs::write(root.join("cat/pkg/pkg-1.gpkg.tar"), b"0123456789").unwrap();
        std::fs::write(t.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out-rel")).unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("out-abs")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("cat/pkg/pkg-1.gpkg.tar", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root", root.join("magic")).unwrap();

        let (mut f, len) = open_beneath(&root, Path::new("cat/pkg/pkg-1.gpkg.tar")).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), len), ("0123456789", 10));
        // A symlink that stays inside is followed.
        assert_eq!(open_beneath(&root, Path::new("inside")).unwrap().1, 10);
        for rel in [
            "out-rel",
            "out-abs",
            "etc/passwd",
            "magic/etc/passwd",
            "cat",
            "cat/pkg",
            "missing",
            "cat/pkg/pkg-1.gpkg.tar/x",
        ] {
            assert!(
                matches!(
                    open_beneath(&root, Path::new(rel)),
                    Err(OpenError::NotFound)
                ),
                "{rel}"
            );
        }
        // The fallback check agrees on the symlinks out.
        assert!(matches!(
            open_checked(&root, Path::new("out-rel")),
            Err(OpenError::NotFound)
        ));
        assert!(open_checked(&root, Path::new("inside")).is_ok());
    }
}
