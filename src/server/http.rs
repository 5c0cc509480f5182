//! The request handlers: each request head is routed by [`super::route`] and
//! answered here with a [`Response`] ([`super::listen`] writes it; the queued jobs are
//! run by [`super::worker::Worker`]).
//!
//! Status codes: 200/206 files and JSON; 400 malformed path or query, missing or
//! invalid atom; 404 anything not a regular file below the package dir (directories,
//! hidden names, symlinks out); 405 other methods (`/pkg` is GET only: a HEAD must not
//! queue a build); 409 duplicate atom; 416 bad range;
//! 429 full queue; 503 shutting down.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::listen::{Body, Response};
use super::queue::{EnqueueError, SharedQueue};
use super::static_files::{self, OpenError, RangeAnswer, Target};
use super::wire::RequestHead;
use super::{Route, atom, route};

/// What the request handlers share.
#[derive(Debug)]
pub struct Site {
    pub pkgdir: PathBuf,
    pub log_dir: PathBuf,
    pub queue: Arc<SharedQueue>,
}

fn text(code: u16, msg: &str) -> Response {
    Response::text(code, msg)
}

fn json<T: Serialize>(code: u16, value: &T) -> Response {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    Response {
        status: code,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Body::Bytes((body + "\n").into_bytes()),
    }
}

#[derive(Serialize)]
struct Error<'a> {
    error: &'a str,
}

fn json_error(code: u16, msg: &str) -> Response {
    json(code, &Error { error: msg })
}

/// Answers one request.
pub fn handle(site: &Site, req: &RequestHead) -> Response {
    let route = route(&req.target);
    // HEAD must not queue a build.
    let allowed: &[&str] = match route {
        Route::Enqueue(_) => &["GET"],
        _ => &["GET", "HEAD"],
    };
    match route {
        _ if !allowed.contains(&req.method.as_str()) => {
            let mut r = text(
                405,
                &format!("method not allowed: use {}", allowed.join(" or ")),
            );
            r.headers.push(("Allow".into(), allowed.join(", ")));
            r
        }
        Route::Bad(msg) => text(400, &msg),
        Route::Queue => json(200, &site.queue.snapshot()),
        Route::Enqueue(atom) => enqueue(site, atom.as_deref()),
        Route::Static(Target::Hidden) => text(404, "not found"),
        Route::Static(Target::File(rel)) => serve_file(site, req, &rel),
    }
}

#[derive(Serialize)]
struct Queued<'a> {
    queued: &'a super::queue::Job,
    pending: &'a [String],
}

fn enqueue(site: &Site, atom: Option<&str>) -> Response {
    let Some(atom) = atom else {
        return json_error(400, "No package name provided");
    };
    if let Err(e) = atom::validate(atom) {
        return json_error(400, &format!("invalid package atom: {e}"));
    }
    match site
        .queue
        .enqueue(atom, |id| super::log_path(&site.log_dir, id, atom))
    {
        Ok((job, snap)) => {
            tracing::info!("queued {atom} (job {})", job.id);
            json(
                200,
                &Queued {
                    queued: &job,
                    pending: &snap.pending,
                },
            )
        }
        Err(e @ EnqueueError::Duplicate { .. }) => json_error(409, &e.to_string()),
        Err(e @ EnqueueError::Full { .. }) => json_error(429, &e.to_string()),
        Err(e @ EnqueueError::ShuttingDown) => json_error(503, &e.to_string()),
    }
}

fn serve_file(site: &Site, req: &RequestHead, rel: &Path) -> Response {
    let (mut file, len) = match static_files::open_beneath(&site.pkgdir, rel) {
        Ok(f) => f,
        Err(OpenError::NotFound) => return text(404, "not found"),
        Err(OpenError::Denied) => return text(403, "forbidden"),
        Err(e) => {
            tracing::warn!("{e}: {:?}", std::error::Error::source(&e));
            return text(500, "cannot read the file");
        }
    };
    let mut headers: Vec<(String, String)> = vec![
        (
            "Content-Type".into(),
            static_files::content_type(rel).into(),
        ),
        ("Accept-Ranges".into(), "bytes".into()),
    ];
    let (status, start, count) = match static_files::parse_range(req.header("Range"), len) {
        RangeAnswer::Full => (200, 0, len),
        RangeAnswer::Partial { start, end } => {
            headers.push(("Content-Range".into(), format!("bytes {start}-{end}/{len}")));
            (206, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            let mut r = text(416, "range not satisfiable");
            r.headers
                .push(("Content-Range".into(), format!("bytes */{len}")));
            return r;
        }
    };
    if start > 0 && file.seek(SeekFrom::Start(start)).is_err() {
        return text(500, "cannot read the file");
    }
    Response {
        status,
        headers,
        body: Body::File(file, count),
    }
}
