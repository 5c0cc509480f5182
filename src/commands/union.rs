//! `gentree-fs union`: mount a userspace union and serve it.
//!
//! Foreground and background (re-exec) handling: [`super::daemon`].

use std::process::ExitCode;

use super::{CmdResult, daemon};
use crate::cli::UnionArgs;
use crate::fs::Mounted;
use crate::fs::union::{UnionMountError, UnionMountSpec, session};
use crate::layers::union::UnionOptions;

pub fn run(args: &UnionArgs) -> CmdResult {
    let spec = UnionMountSpec {
        options: UnionOptions::parse(&args.options)?,
        mountpoint: args.mountpoint().to_owned(),
        // `union` by default: the source an fstab line gives (the word mount.fuse3
        // turns into this subcommand), so `mount -a` knows the line is mounted.
        source: Some(args.source().unwrap_or("union").to_owned()),
        threads: args.threads,
    };
    if args.foreground {
        serve(&spec)
    } else {
        // Report option and layout errors here, before starting a daemon.
        spec.options.validate(&spec.mountpoint)?;
        daemon::spawn_daemon(Some("union"), "union")
    }
}

/// Mounts and serves until unmounted. An unmount that lands before the kernel's INIT
/// handshake is a clean end too, as for the gentree mount.
fn serve(spec: &UnionMountSpec) -> CmdResult {
    let fg = daemon::Foreground::start()?;
    let Mounted { session, unmounter } = match session(spec) {
        Ok(m) => m,
        Err(UnionMountError::Mount { source, .. }) if daemon::unmounted_early(&source) => {
            return daemon::gone_before_ready(&spec.mountpoint);
        }
        Err(e) => return Err(e.into()),
    };
    fg.unmount_on_signal(spec.mountpoint.clone(), unmounter)?;
    tracing::info!("union mounted on {}", spec.mountpoint.display());
    match session.run() {
        Err(e) if daemon::unmounted_early(&e) => daemon::gone_before_ready(&spec.mountpoint),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
