//! `gentree-fs import-seed`: resolve the name and data directory, import, print a
//! summary line.

use std::io::IsTerminal;
use std::process::ExitCode;

use super::CmdResult;
use crate::cli::ImportSeedArgs;
use crate::layers::seed::{self, ImportOptions, Interrupt, Progress, progress};

/// An ordinary user cannot read a root filesystem that root made (`/etc/shadow`,
/// `.pwd.lock`, ...): say how to import it anyway instead of only naming the file.
fn unreadable_hint(
    e: seed::SeedError,
    opts: &ImportOptions,
) -> Box<dyn std::error::Error + Send + Sync> {
    let denied = matches!(&e, seed::SeedError::Source { source, .. }
        if source.kind() == std::io::ErrorKind::PermissionDenied);
    if denied && opts.source.is_dir() && !nix::unistd::geteuid().is_root() {
        let dir = opts.source.display();
        return format!(
            "{e}: permission denied. A directory made by root has files only root can \
             read, so import it as a tarball instead: `sudo tar --numeric-owner --xattrs \
             --xattrs-include='*' -cf seed.tar -C {dir} .` then `gentree-fs import-seed \
             seed.tar {}` (ownership and modes are kept)",
            opts.name
        )
        .into();
    }
    e.into()
}

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
    // Never real owners, device nodes or setuid bits on the host: recorded, and as
    // root owned on disk by the id range builds run as (the sandbox's root).
    let mapping = crate::builder::namespace::current_mapping();
    let owners = mapping.store_owners();
    crate::builder::namespace::sandbox::private_store_root(&conf_root, &mapping)?;
    let opts = ImportOptions {
        source: args.source.clone(),
        name,
        conf_root,
        force: args.force,
        owners,
    };
    let intr = Interrupt::install();
    let mut prog = Progress::new(std::io::stderr().is_terminal());
    let r = seed::import(&opts, &intr, &mut prog).map_err(|e| unreadable_hint(e, &opts))?;
    // Unrecorded entries (symlinks) are the store owner's on disk (the user's, or
    // root's build id range) but root's in the seed.
    let (uid, gid) = mapping.host_root();
    crate::layers::ownership::HostOwner { uid, gid }
        .write(&r.dest)
        .map_err(|e| format!("cannot mark the owner of {}: {e}", r.dest.display()))?;
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
