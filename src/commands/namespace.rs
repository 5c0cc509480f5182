//! The hidden namespace subcommands: `__ns-exec` (the helper itself) and `__ns-run`
//! (run a plan file as the caller; for tests and debugging).

use std::io;
use std::path::Path;
use std::process::ExitCode;

use super::CmdResult;
use crate::builder::namespace::{self, Plan, UnionSpec, helper};
use crate::fs::union;
use crate::layers::union::UnionOptions;
use crate::layers::union::options::CACHE_FOREVER;

/// Mounts plan unions with gentree-fs's own FUSE union, served by the helper's threads.
struct FuseUnions;

impl helper::UnionMounter for FuseUnions {
    fn mount_union(&self, spec: &UnionSpec, target: &Path) -> io::Result<Box<dyn Send>> {
        let options = UnionOptions {
            lowers: spec.lowers.clone(),
            upper: spec.upper.clone(),
            work: spec.work.clone(),
            // Portage's own users (portage, acct-user ids) must reach the build root.
            allow_other: true,
            // Nothing but this union writes its upper while the namespace lives (the
            // seed's lock keeps other builds out), so the kernel may keep entries,
            // attributes and misses for good, as it does for lower-only ones: the
            // default second for upper entries exists for changes behind a user's
            // union's back. A build's work files (Portage's dir in /var/tmp, the new
            // layer) and the misses of include and PATH searches then stay cached.
            timeout: Some(CACHE_FOREVER),
            ..UnionOptions::default()
        };
        let mount = union::mount(&union::UnionMountSpec {
            options,
            mountpoint: target.to_path_buf(),
            source: None,
            threads: None,
        })
        .map_err(io::Error::other)?;
        Ok(Box::new(mount))
    }
}

/// `__ns-exec`: the helper side. Exits with the command's status.
pub fn ns_exec() -> CmdResult {
    match helper::helper_main(Some(&FuseUnions)) {
        Ok(code) => Ok(exit_code(code)),
        Err(e) => {
            super::report_error(&e);
            Ok(ExitCode::from(125))
        }
    }
}

/// `__ns-run PLAN`: runs the plan in new namespaces and returns its exit status.
pub fn ns_run(plan_file: &Path, auto_map: bool) -> CmdResult {
    let text = std::fs::read_to_string(plan_file)
        .map_err(|e| format!("cannot read plan {}: {e}", plan_file.display()))?;
    let mut plan: Plan = serde_json::from_str(&text)
        .map_err(|e| format!("malformed plan {}: {e}", plan_file.display()))?;
    if auto_map {
        plan.mapping = namespace::current_mapping();
    }
    let status = namespace::run(&plan, None)?;
    Ok(match status.code() {
        Some(c) => exit_code(c),
        None => ExitCode::from(125),
    })
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(125))
}
