//! `gentree-fs import-seed`: resolve the name and data directory, import, print a
//! summary line.

use std::io::IsTerminal;
use std::process::ExitCode;

use super::CmdResult;
use crate::cli::ImportSeedArgs;
use crate::layers::seed::{self, ImportOptions, Interrupt, Owners, Progress, progress};

pub fn run(args: &ImportSeedArgs) -> CmdResult {
    let name = match &args.name {
        Some(n) => {
            seed::validate_name(n)?;
            n.clone()
        }
        None => seed::default_name(&args.source)?,
    };
    let conf_root = match &args.conf_root {
        Some(d) => d.clone(),
        None => super::default_conf_root()?,
    };
    let owners = if nix::unistd::geteuid().is_root() {
        Owners::Real
    } else {
        Owners::Record
    };
    let opts = ImportOptions {
        source: args.source.clone(),
        name,
        conf_root,
        force: args.force,
        owners,
    };
    let intr = Interrupt::install();
    let mut prog = Progress::new(std::io::stderr().is_terminal());
    let r = seed::import(&opts, &intr, &mut prog)?;
    if opts.owners == Owners::Record {
        // Symlinks and FIFOs of the seed are ours on disk but root's in the seed.
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        crate::layers::ownership::HostOwner { uid, gid }
            .write(&r.dest)
            .map_err(|e| format!("cannot mark the owner of {}: {e}", r.dest.display()))?;
    }
    // The identity of the new content (a replaced seed's layers are rebuilt when it differs).
    seed::identity::refresh(&opts.conf_root, &opts.name, &r.dest)?;
    let s = &r.stats;
    let mut extra = String::new();
    if s.specials_recorded > 0 {
        extra += &format!(
            ", {} device nodes or fifos recorded as plain files",
            s.specials_recorded
        );
    }
    if s.skipped > 0 {
        extra += &format!(", {} entries skipped", s.skipped);
    }
    if s.xattrs_dropped > 0 {
        extra += &format!(", {} xattrs not restored", s.xattrs_dropped);
    }
    eprintln!(
        "{} seed {:?} from {} ({}) at {}: {} entries, {}{extra}, in {:.1} s",
        if r.replaced { "replaced" } else { "imported" },
        opts.name,
        opts.source.display(),
        r.format,
        r.dest.display(),
        s.entries,
        progress::human_bytes(s.bytes),
        r.elapsed.as_secs_f64(),
    );
    Ok(ExitCode::SUCCESS)
}
