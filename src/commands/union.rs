//! `gentree-fs union`: mount a userspace union and serve it.
//!
//! Foreground and background (re-exec) handling: [`super::daemon`].

use std::process::ExitCode;

use super::{CmdResult, daemon};
use crate::cli::UnionArgs;
use crate::fs::union::{MountSpec, Mounted, session};
use crate::layers::union::UnionOptions;

pub fn run(args: &UnionArgs) -> CmdResult {
    let spec = MountSpec {
        options: UnionOptions::parse(&args.options)?,
        mountpoint: args.mountpoint.clone(),
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

/// Mounts and serves until unmounted.
fn serve(spec: &MountSpec) -> CmdResult {
    let fg = daemon::Foreground::start()?;
    let Mounted { session, unmounter } = session(spec)?;
    fg.unmount_on_signal(spec.mountpoint.clone(), unmounter)?;
    tracing::info!("union mounted on {}", spec.mountpoint.display());
    session.run()?;
    Ok(ExitCode::SUCCESS)
}
