//! The adapter to `tiny_http`: each request is routed by [`super::route`] and
//! answered here (the queued jobs are run by [`super::worker::Worker`]).
//!
//! Status codes: 200/206 files and JSON; 400 malformed path or query, missing or
//! invalid atom; 404 anything not a regular file below the package dir (directories,
//! hidden names, symlinks out); 405 other methods (`/pkg` is GET only: a HEAD must not
//! queue a build); 409 duplicate atom; 416 bad range;
//! 429 full queue; 503 shutting down.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, StatusCode};

use super::queue::{EnqueueError, SharedQueue};
use super::static_files::{self, OpenError, RangeAnswer, Target};
use super::{Route, atom, route};

/// What the request handlers share.
#[derive(Debug)]
pub struct Site {
    pub pkgdir: PathBuf,
    pub log_dir: PathBuf,
    pub queue: Arc<SharedQueue>,
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn text(code: u16, msg: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut r = Response::from_string(format!("{msg}\n")).with_status_code(StatusCode(code));
    if let Some(h) = header("Content-Type", "text/plain; charset=utf-8") {
        r.add_header(h);
    }
    r
}

fn json<T: Serialize>(code: u16, value: &T) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    let mut r = Response::from_string(body + "\n").with_status_code(StatusCode(code));
    if let Some(h) = header("Content-Type", "application/json") {
        r.add_header(h);
    }
    r
}

#[derive(Serialize)]
struct Error<'a> {
    error: &'a str,
}

fn json_error(code: u16, msg: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    json(code, &Error { error: msg })
}

/// Answers one request; errors writing the answer (a client gone) are only logged.
pub fn handle(site: &Site, req: Request) {
    let method = req.method().clone();
    let url = req.url().to_owned();
    let route = route(&url);
    // HEAD must not queue a build.
    let allowed: &[Method] = match route {
        Route::Enqueue(_) => &[Method::Get],
        _ => &[Method::Get, Method::Head],
    };
    let result = match route {
        _ if !allowed.contains(&method) => {
            let names: Vec<String> = allowed.iter().map(|m| m.to_string()).collect();
            let mut r = text(
                405,
                &format!("method not allowed: use {}", names.join(" or ")),
            );
            if let Some(h) = header("Allow", &names.join(", ")) {
                r.add_header(h);
            }
            req.respond(r)
        }
        Route::Bad(msg) => req.respond(text(400, &msg)),
        Route::Queue => req.respond(json(200, &site.queue.snapshot())),
        Route::Enqueue(atom) => req.respond(enqueue(site, atom.as_deref())),
        Route::Static(Target::Hidden) => req.respond(text(404, "not found")),
        Route::Static(Target::File(rel)) => serve_file(site, req, &rel),
    };
    if let Err(e) = result {
        tracing::debug!("{method} {url}: answering failed: {e}");
    }
}

#[derive(Serialize)]
struct Queued<'a> {
    queued: &'a super::queue::Job,
    pending: &'a [String],
}

fn enqueue(site: &Site, atom: Option<&str>) -> Response<std::io::Cursor<Vec<u8>>> {
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

fn serve_file(site: &Site, req: Request, rel: &Path) -> std::io::Result<()> {
    let (mut file, len) = match static_files::open_beneath(&site.pkgdir, rel) {
        Ok(f) => f,
        Err(OpenError::NotFound) => return req.respond(text(404, "not found")),
        Err(OpenError::Denied) => return req.respond(text(403, "forbidden")),
        Err(e) => {
            tracing::warn!("{e}: {:?}", std::error::Error::source(&e));
            return req.respond(text(500, "cannot read the file"));
        }
    };
    let range = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| h.value.as_str().to_owned());
    let mut headers: Vec<Header> = [
        header("Content-Type", static_files::content_type(rel)),
        header("Accept-Ranges", "bytes"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (code, start, count) = match static_files::parse_range(range.as_deref(), len) {
        RangeAnswer::Full => (200, 0, len),
        RangeAnswer::Partial { start, end } => {
            headers.extend(header(
                "Content-Range",
                &format!("bytes {start}-{end}/{len}"),
            ));
            (206, start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => {
            let mut r = text(416, "range not satisfiable");
            if let Some(h) = header("Content-Range", &format!("bytes */{len}")) {
                r.add_header(h);
            }
            return req.respond(r);
        }
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    let Ok(count_usize) = usize::try_from(count) else {
        return req.respond(text(500, "file too large"));
    };
    // A known length never switches to chunked encoding: Content-Length is always sent.
    let response = Response::new(
        StatusCode(code),
        headers,
        file.take(count),
        Some(count_usize),
        None,
    )
    .with_chunked_threshold(usize::MAX);
    req.respond(response)
}
