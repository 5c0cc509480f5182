//! `serve`'s connections: one poll thread owns every open connection, reads request
//! heads and writes answers as fast as each client takes them (non-blocking, files
//! by `sendfile`); a fixed pool of worker threads turns complete request heads into
//! answers.
//!
//! Bounds, so that no client can hold the server (see [`ServeLimits`]):
//! - threads: one poll thread and [`ServeLimits::workers`] workers, whatever the load;
//! - connections: at most [`ServeLimits::max_connections`] open; when full, a new
//!   connection replaces the one idle the longest (no request bytes pending), and is
//!   answered 503 only if every open connection is in the middle of a request;
//! - memory: a connection buffers at most one request head ([`wire::Limits`]);
//! - time: an idle keep-alive connection closes after [`ServeLimits::idle`], a request
//!   head must arrive whole within [`ServeLimits::head`] of its first byte (else 408),
//!   and an answer is dropped when its client takes no bytes of it for
//!   [`ServeLimits::write`].
//!
//! Idle, slow-sending and slow-reading connections cost the poll thread a descriptor
//! and a buffer, never a thread: a worker only ever sees a complete request head and
//! never writes to a client.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::wire::{self, Parse, RequestHead};

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub head_limits: wire::Limits,
    pub max_connections: usize,
    pub workers: usize,
    pub idle: Duration,
    pub head: Duration,
    pub write: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            head_limits: wire::Limits::default(),
            max_connections: 512,
            workers: 4,
            idle: Duration::from_secs(10),
            head: Duration::from_secs(10),
            write: Duration::from_secs(30),
        }
    }
}

/// A response: status, headers (without `Content-Length`), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes read from the file's current position.
    File(std::fs::File, u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File(_, n) => *n,
        }
    }
}

impl Response {
    pub fn text(status: u16, msg: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: Body::Bytes(format!("{msg}\n").into_bytes()),
        }
    }
}

/// Answers one request (called on a worker thread).
pub type Handler = dyn Fn(&RequestHead) -> Response + Send + Sync;

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Since when it is idle (empty buffer) or since its request's first byte.
    since: Instant,
    /// Refused: what the client still sends is read and dropped (up to [`DRAIN`],
    /// for [`LINGER`]) before closing, so that the refusal is not lost to the reset
    /// a close with unread bytes would send.
    closing: Option<u64>,
    /// The answer being written, and whether the connection stays open after it.
    out: Option<(Outgoing, bool)>,
}

/// An answer being written: the head's unwritten part, then the body's.
struct Outgoing {
    head: Vec<u8>,
    head_sent: usize,
    body: Body,
    /// Body bytes written.
    body_sent: u64,
    /// Where a file body starts in its file.
    file_start: i64,
}

/// Most bytes read and dropped from a refused connection.
const DRAIN: u64 = 1 << 20;
/// How long a refused connection stays open to be drained.
const LINGER: Duration = Duration::from_secs(2);

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
            since: Instant::now(),
            closing: None,
            out: None,
        }
    }

    /// Answers `status` and starts closing.
    fn refuse(&mut self, status: u16, msg: &str) {
        refuse(&self.stream, status, msg);
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.buf = Vec::new();
        self.since = Instant::now();
        self.closing = Some(0);
    }
}

/// Best effort, for refusals: a short answer on a non-blocking socket.
fn refuse(mut stream: &TcpStream, status: u16, msg: &str) {
    let body = format!("{msg}\n");
    let mut out = wire::response_head(
        status,
        &[("Content-Type".into(), "text/plain; charset=utf-8".into())],
        body.len() as u64,
        false,
    );
    out.extend_from_slice(body.as_bytes());
    let _ = stream.write(&out);
}

/// Serves `listener` until `stop` is set (checked every 200 ms): returns once every
/// thread has ended.
pub fn serve(
    listener: TcpListener,
    limits: ServeLimits,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let (wake_rx, wake_tx) = UnixStream::pair()?;
    wake_rx.set_nonblocking(true)?;
    wake_tx.set_nonblocking(true)?;
    let (work_tx, work_rx) = channel::<(Conn, RequestHead)>();
    // Every request comes back from its worker with its answer to write.
    let (back_tx, back_rx) = channel::<Conn>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let wake_tx = Arc::new(wake_tx);
    let mut workers = Vec::new();
    for i in 0..limits.workers.max(1) {
        let (rx, back, wake, handler) = (
            work_rx.clone(),
            back_tx.clone(),
            wake_tx.clone(),
            handler.clone(),
        );
        workers.push(
            std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || worker(&rx, &back, &wake, &*handler))?,
        );
    }
    drop(back_tx);
    let r = poll_loop(&listener, &limits, &wake_rx, &work_tx, &back_rx, &stop);
    drop(work_tx); // the workers end once the requests queued are answered
    for w in workers {
        let _ = w.join();
    }
    r
}

fn worker(
    rx: &Mutex<Receiver<(Conn, RequestHead)>>,
    back: &Sender<Conn>,
    wake: &UnixStream,
    handler: &Handler,
) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((mut conn, head)) = next else { return };
        conn.out = Some((outgoing(&head, handler(&head)), head.keep_alive()));
        if back.send(conn).is_err() {
            return;
        }
        let _ = (&*wake).write(&[1]);
    }
}

/// The bytes of `resp` to `head` (no body for HEAD).
fn outgoing(head: &RequestHead, resp: Response) -> Outgoing {
    use std::io::Seek;
    let bytes = wire::response_head(
        resp.status,
        &resp.headers,
        resp.body.len(),
        head.keep_alive(),
    );
    let (body, file_start) = match resp.body {
        _ if head.method == "HEAD" => (Body::Bytes(Vec::new()), 0),
        Body::File(mut f, n) => {
            match f.stream_position().ok().and_then(|p| i64::try_from(p).ok()) {
                Some(p) => (Body::File(f, n), p),
                // Unknown position: the write fails on the short file, the client sees it.
                None => (Body::File(f, n), i64::MAX),
            }
        }
        b => (b, 0),
    };
    Outgoing {
        head: bytes,
        head_sent: 0,
        body,
        body_sent: 0,
        file_start,
    }
}

/// What writing to a connection came to.
enum Wrote {
    /// All of the answer.
    Done,
    /// What the client took; the rest waits until it takes more.
    Pending,
    Failed,
}

/// Writes as much of `out` as `stream` takes now; progress moves `since`.
fn write_some(stream: &TcpStream, out: &mut Outgoing, since: &mut Instant) -> Wrote {
    let mut s = stream;
    loop {
        let r = if out.head_sent < out.head.len() {
            s.write(&out.head[out.head_sent..])
                .inspect(|&n| out.head_sent += n)
        } else {
            let left = out.body.len() - out.body_sent;
            if left == 0 {
                return Wrote::Done;
            }
            let r = match &out.body {
                Body::Bytes(b) => s.write(&b[out.body_sent as usize..]),
                Body::File(f, _) => {
                    let mut at = out.file_start.saturating_add(out.body_sent as i64);
                    let chunk = left.min(1 << 20) as usize;
                    nix::sys::sendfile::sendfile(stream, f, Some(&mut at), chunk)
                        .map_err(io::Error::from)
                }
            };
            r.inspect(|&n| out.body_sent += n as u64)
        };
        match r {
            // A client gone, or a file that shrank: the length promised cannot be kept.
            Ok(0) => return Wrote::Failed,
            Ok(_) => *since = Instant::now(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Wrote::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("answering a client failed: {e}");
                return Wrote::Failed;
            }
        }
    }
}

/// Writes what the client takes of `c`'s answer: `Close` when it is done with a
/// closing connection or failed; a kept-alive connection goes on with the next
/// request, which may already be buffered.
fn flush(c: &mut Conn, limits: &wire::Limits) -> Next {
    let Some((out, keep_alive)) = &mut c.out else {
        return Next::Wait;
    };
    match write_some(&c.stream, out, &mut c.since) {
        Wrote::Pending => Next::Wait,
        Wrote::Failed => Next::Close,
        Wrote::Done if !*keep_alive => Next::Close,
        Wrote::Done => {
            c.out = None;
            c.since = Instant::now();
            parse_buffered(c, limits)
        }
    }
}

/// What to do with a connection after reading from it.
enum Next {
    Wait,
    Answer(RequestHead),
    Close,
}

/// Reads what `conn` has.
fn read_some(conn: &mut Conn, limits: &wire::Limits) -> Next {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                if let Some(dropped) = &mut conn.closing {
                    *dropped += n as u64;
                    if *dropped > DRAIN {
                        return Next::Close;
                    }
                    continue;
                }
                if conn.buf.is_empty() {
                    conn.since = Instant::now();
                }
                conn.buf.extend_from_slice(&chunk[..n]);
                // Parse as soon as bytes come: a limit is enforced before the buffer
                // grows past it by more than one chunk.
                match parse_buffered(conn, limits) {
                    Next::Wait => continue,
                    other => return other,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Next::Close,
        }
    }
}

/// A complete head from the buffer, consumed; a bad one is refused.
fn parse_buffered(conn: &mut Conn, limits: &wire::Limits) -> Next {
    if conn.buf.is_empty() || conn.closing.is_some() {
        return Next::Wait;
    }
    match wire::parse_head(&conn.buf, limits) {
        Parse::Incomplete => Next::Wait,
        Parse::Refused(status, msg) => {
            conn.refuse(status, msg);
            Next::Wait
        }
        Parse::Done(head, used) => {
            if head.has_body() {
                conn.refuse(413, "request bodies are not accepted");
                return Next::Wait;
            }
            conn.buf.drain(..used);
            conn.since = Instant::now();
            Next::Answer(head)
        }
    }
}

fn poll_loop(
    listener: &TcpListener,
    limits: &ServeLimits,
    wake: &UnixStream,
    work: &Sender<(Conn, RequestHead)>,
    back: &Receiver<Conn>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    // Connections out with a worker, so the bound counts them too.
    let mut busy = 0usize;
    let mut next_id = 0u64;
    let dispatch = |conns: &mut HashMap<u64, Conn>, busy: &mut usize, id: u64, head| {
        if let Some(c) = conns.remove(&id) {
            *busy += 1;
            let _ = work.send((c, head));
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<u64> = conns.keys().copied().collect();
        let mut fds = vec![
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        for id in &ids {
            if let Some(c) = conns.get(id) {
                let want = if c.out.is_some() {
                    PollFlags::POLLOUT
                } else {
                    PollFlags::POLLIN
                };
                fds.push(PollFd::new(c.stream.as_fd(), want));
            }
        }
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        let listener_ready = ready(&fds[0]);
        let woken = ready(&fds[1]);
        let readable: Vec<u64> = ids
            .iter()
            .zip(&fds[2..])
            .filter(|(_, f)| ready(f))
            .map(|(id, _)| *id)
            .collect();
        drop(fds);

        if woken {
            let mut sink = [0u8; 64];
            while matches!((&*wake).read(&mut sink), Ok(n) if n > 0) {}
        }
        // Answers from the workers are written at once, as far as each client takes.
        let mut ready_ids = readable;
        while let Ok(c) = back.try_recv() {
            busy = busy.saturating_sub(1);
            conns.insert(next_id, c);
            ready_ids.push(next_id);
            next_id += 1;
        }
        for id in ready_ids {
            let Some(c) = conns.get_mut(&id) else {
                continue;
            };
            let next = if c.out.is_some() {
                flush(c, &limits.head_limits)
            } else {
                read_some(c, &limits.head_limits)
            };
            match next {
                Next::Answer(head) => dispatch(&mut conns, &mut busy, id, head),
                Next::Wait => {}
                Next::Close => {
                    conns.remove(&id);
                }
            }
        }
        if listener_ready {
            accept_all(listener, limits, &mut conns, busy, &mut next_id);
        }
        // Deadlines.
        let now = Instant::now();
        conns.retain(|_, c| {
            let age = now.duration_since(c.since);
            if c.closing.is_some() {
                age < LINGER
            } else if c.out.is_some() {
                age < limits.write
            } else if c.buf.is_empty() {
                age < limits.idle
            } else if age >= limits.head {
                c.refuse(408, "request head not received in time");
                true
            } else {
                true
            }
        });
    }
    Ok(())
}

fn accept_all(
    listener: &TcpListener,
    limits: &ServeLimits,
    conns: &mut HashMap<u64, Conn>,
    busy: usize,
    next_id: &mut u64,
) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and the like: try again on the next round.
                tracing::warn!("accepting a connection: {e}");
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if conns.len() + busy >= limits.max_connections {
            // Closing ones first, then the one idle the longest.
            let oldest_idle = conns
                .iter()
                .filter(|(_, c)| c.buf.is_empty() && c.out.is_none())
                .min_by_key(|(_, c)| (c.closing.is_none(), c.since))
                .map(|(id, _)| *id);
            match oldest_idle {
                Some(id) => {
                    conns.remove(&id);
                }
                None => {
                    refuse(&stream, 503, "too many connections");
                    continue;
                }
            }
        }
        conns.insert(*next_id, Conn::new(stream));
        *next_id += 1;
    }
}
