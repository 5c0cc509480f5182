//! The build worker: runs the queued jobs one at a time in the seed's namespace
//! ([`super::build_plan`]), holding the seed's lock, and records each outcome.

use std::sync::Arc;

use super::queue::{Outcome, SharedQueue};

/// Runs queued builds one at a time until the queue shuts down. A failed build is
/// recorded and the worker goes on (B30: the reference's worker died on surprises).
#[derive(Debug)]
pub struct Worker {
    pub queue: Arc<SharedQueue>,
    pub context: BuildContext,
}

/// What a build needs besides its job.
#[derive(Debug)]
pub struct BuildContext {
    pub cfg: crate::builder::config::ResolvedConfig,
    pub dirs: crate::builder::build::HostDirs,
    pub mapping: crate::builder::namespace::IdMapping,
}

impl Worker {
    pub fn run(self) {
        while let Some(job) = self.queue.take() {
            tracing::info!(
                "building {} (job {}), log {}",
                job.atom,
                job.id,
                job.log.display()
            );
            let outcome = build_in_seed(&job, &self.context, &self.queue);
            match &outcome {
                Outcome::Exited(0) => tracing::info!("built {} (job {})", job.atom, job.id),
                Outcome::Exited(c) => tracing::warn!(
                    "build of {} failed (exit status {c}); see {}",
                    job.atom,
                    job.log.display()
                ),
                Outcome::Error(e) => tracing::warn!("build of {} failed: {e}", job.atom),
            }
            self.queue.finish(job.id, outcome);
        }
    }
}

/// One build of a queued atom in the seed's namespace (see [`super::build_plan`]),
/// holding the seed's lock; output goes to the job's log (and our stderr).
pub fn build_in_seed(job: &super::queue::Job, ctx: &BuildContext, queue: &SharedQueue) -> Outcome {
    let BuildContext { cfg, dirs, mapping } = ctx;
    crate::builder::crash::remove_dead_run_dirs(&dirs.run);
    let run_dir = dirs
        .run
        .join(format!("serve-{}-{}", std::process::id(), job.id));
    let result = (|| -> Result<i32, Box<dyn std::error::Error>> {
        let root = run_dir.join("root");
        std::fs::create_dir_all(&root)?;
        if let Some(parent) = job.log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let seed_tmp = cfg.ephemeral_seed.then(|| run_dir.join("seed"));
        crate::builder::build::layer_seed_mounts(cfg, dirs, seed_tmp.as_deref()).create_dirs()?;
        // Shown as `waiting` while another build (a layer build, say) holds the seed.
        let _lock = match crate::builder::build::try_lock_seed(dirs, &cfg.seed)? {
            Some(lock) => lock,
            None => {
                tracing::info!("{}: waiting for seed {}", job.atom, cfg.seed);
                queue.set_waiting(job.id, true);
                let lock = crate::builder::build::lock_seed(dirs, &cfg.seed);
                queue.set_waiting(job.id, false);
                lock?
            }
        };
        let plan = super::build_plan(cfg, dirs, &job.atom, &root, seed_tmp.as_deref(), mapping);
        let argv = super::emerge_argv(cfg, &job.atom).join(" ");
        std::fs::write(
            &job.log,
            format!(
                "gentree-fs serve: job {} in seed {}: {argv}\n",
                job.id, cfg.seed
            ),
        )?;
        let (seed_upper, _) = dirs.seed_upper(&cfg.seed);
        crate::builder::crash::remove_portage_work(&seed_upper);
        let status = crate::builder::namespace::run(&plan, Some(&job.log));
        crate::builder::crash::remove_portage_work(&seed_upper);
        Ok(exit_code(status?))
    })();
    let _ = crate::layers::store::remove_tree(&run_dir);
    match result {
        Ok(code) => Outcome::Exited(code),
        Err(e) => {
            let causes: Vec<String> = crate::error_chain(&*e).map(|c| c.to_string()).collect();
            Outcome::Error(causes.join(": "))
        }
    }
}

/// The exit code, or 128 + signal as a shell reports it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    crate::builder::crash::Exit(status).shell_code()
}
