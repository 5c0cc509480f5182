//! `gentree-fs serve`: the binhost and build queue (see [`crate::server`]).
//!
//! Threads: one HTTP poll thread and a few HTTP workers ([`crate::server::listen`])
//! answer requests, one worker runs builds, and this thread waits for SIGINT/SIGTERM
//! (blocked everywhere else). On a signal: the queue
//! refuses new work, the HTTP threads stop, a running build is killed (its namespace
//! helper, a child of this process; the helper's pid 1 follows by PDEATHSIG and takes
//! the whole pid namespace with it), and the command exits once the worker has
//! recorded the build's end.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use super::CmdResult;
use crate::builder::build::HostDirs;
use crate::builder::config::{CliOverrides, resolve_seed};
use crate::cli::ServeArgs;
use crate::layers::layout::ConfRoot;
use crate::server::http::{Site, handle};
use crate::server::listen::{self, Handler, ServeLimits};
use crate::server::queue::{Queue, SharedQueue};
use crate::server::worker::{BuildContext, Worker};

/// HTTP workers: enough that a large download does not hold up `/queue`.
const HTTP_THREADS: usize = 4;
/// Finished builds listed by `/queue`.
const HISTORY: usize = 100;

pub fn run(args: &ServeArgs) -> CmdResult {
    let defaults = super::load_defaults(args.data.no_config)?;
    let mut cfg = resolve_seed(
        &args.seed,
        &[],
        &CliOverrides::from(&args.select),
        &defaults,
    )?;
    cfg.ephemeral_seed |= args.ephemeral_seed;
    let dirs = HostDirs::new(&super::conf_root(&args.data.conf_root)?, &cfg);
    dirs.require_seed(&cfg.seed)?;
    let pkgdir = dirs.pkgdir(&cfg);
    let log_dir = ConfRoot::new(&dirs.conf_root).serve_logs();
    for d in [&pkgdir, &log_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    if args.queue_size == 0 {
        return Err("--queue-size must be at least 1".into());
    }
    if args.max_connections == 0 || args.client_timeout == 0 {
        return Err("--max-connections and --client-timeout must be at least 1".into());
    }
    let mapping = super::sandbox_mapping(&dirs.conf_root)?;

    // Before any thread exists, so that every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block()?;

    let listener = std::net::TcpListener::bind((args.address, args.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.address, args.port))?;
    let addr = listener.local_addr().map_or_else(
        |_| format!("{}:{}", args.address, args.port),
        |a| a.to_string(),
    );
    let queue = Arc::new(SharedQueue::new(Queue::new(
        args.queue_size,
        HISTORY,
        crate::server::first_free_id(&log_dir),
    )));
    let site = Arc::new(Site {
        pkgdir: pkgdir.clone(),
        log_dir,
        queue: queue.clone(),
    });
    let stop = Arc::new(AtomicBool::new(false));

    let worker = Worker {
        queue: queue.clone(),
        context: BuildContext { cfg, dirs, mapping },
    };
    let worker = std::thread::Builder::new()
        .name("build".into())
        .spawn(move || worker.run())?;
    let handler: Arc<Handler> = Arc::new(move |req| handle(&site, req));
    let limits = ServeLimits {
        workers: HTTP_THREADS,
        max_connections: args.max_connections,
        idle: Duration::from_secs(args.client_timeout),
        head: Duration::from_secs(args.client_timeout),
        ..ServeLimits::default()
    };
    let http_stop = stop.clone();
    let http = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || listen::serve(listener, limits, handler, http_stop))?;
    eprintln!(
        "gentree-fs serve: serving {} on http://{addr}/ (queue: /pkg?pkg=ATOM, /queue)",
        pkgdir.display()
    );

    let sig = signals.wait()?;
    eprintln!("gentree-fs serve: {sig}: stopping");
    queue.shut_down();
    stop.store(true, Ordering::Relaxed);
    // Once joined, the listening socket is closed.
    if let Ok(Err(e)) = http.join() {
        tracing::warn!("serving HTTP: {e}");
    }
    kill_children();
    // The worker records the killed build's end. It may instead be waiting for the
    // seed's lock (held by another command) or the kill may have found nothing to
    // kill: then exiting is enough, the helper dies with us (PDEATHSIG).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !worker.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if worker.is_finished() {
        let _ = worker.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGKILLs every child of this process: at most the namespace helper of the running
/// build (and a short-lived id mapper). Reads `/proc/self/task/*/children`.
fn kill_children() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for pid in list
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            tracing::info!("killing the running build (pid {pid})");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
