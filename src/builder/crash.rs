//! What a crash or a failed build leaves behind, and how a build helper's end is told.
//!
//! Each build makes a scratch dir under `CONF_ROOT/run/` named after the process
//! running it: `<key>-<pid>` for a layer build, `serve-<pid>-<job>` for a `serve`
//! build. The builder removes it when the build ends; after a crash (kill -9 of the
//! mount daemon or of `build`) [`remove_dead_run_dirs`], run on start-up and before
//! each build, removes those whose process is gone. A dir whose pid is alive is kept,
//! even if the pid was reused: removing a live build's dir would be worse than keeping
//! a stale one a while longer.
//!
//! Portage keeps a failed build's work dir (`/var/tmp/portage/<cat>/<pf>`, often
//! hundreds of MB) in the seed's persistent upper; [`remove_portage_work`] removes
//! it after every build and before the next (for one that was killed), under the
//! seed's lock.
//!
//! A build's log starts with space set aside for its end ([`start_log`]), so the
//! cause of a failure reaches the log ([`log_failure`]) even on a full disk.
//!
//! [`Exit`] tells a helper's end the way a shell would: its exit status, or the
//! signal that killed it (`ExitStatus::code` alone says nothing for a signal).

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// The pid in a run dir's name, if it is one of ours.
fn owner_pid(name: &str) -> Option<i32> {
    let pid = match name.strip_prefix("serve-") {
        Some(rest) => rest.split('-').next()?,
        None => name.rsplit('-').next()?,
    };
    pid.parse().ok().filter(|&p| p > 0)
}

/// Whether process `pid` exists (EPERM: it does, another user's).
fn alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e != Errno::ESRCH,
    }
}

/// Removes the run dirs under `run` whose process is gone; returns them. Errors are
/// logged, not returned: a leftover that cannot be removed must not stop a build.
pub fn remove_dead_run_dirs(run: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(owner_pid) else {
            continue;
        };
        if alive(pid) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        match crate::layers::store::remove_tree(&path) {
            Ok(()) => {
                tracing::info!("removed {} (left by process {pid}, gone)", path.display());
                removed.push(path);
            }
            Err(err) => tracing::warn!("cannot remove the leftover {}: {err}", path.display()),
        }
    }
    removed
}

/// Portage's work dir in a seed root.
pub const PORTAGE_TMP: &str = "var/tmp/portage";

/// Removes what Portage left in `seed_upper`'s `var/tmp/portage` (work dirs of failed
/// or killed builds), keeping whiteouts (`.wh.*`), which hide lower entries; returns
/// what was removed. Errors are logged: a leftover must not fail the build.
pub fn remove_portage_work(seed_upper: &Path) -> Vec<PathBuf> {
    let dir = seed_upper.join(PORTAGE_TMP);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        if e.file_name().as_encoded_bytes().starts_with(b".wh.") {
            continue;
        }
        let path = e.path();
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            crate::layers::store::remove_tree(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Ok(()) => removed.push(path),
            Err(err) => {
                tracing::warn!("cannot remove Portage's leftover {}: {err}", path.display())
            }
        }
    }
    if !removed.is_empty() {
        tracing::info!("removed Portage's work files from {}", dir.display());
    }
    removed
}

/// Space a log keeps allocated past its end for the cause of a failure.
const LOG_RESERVE: i64 = 64 << 10;

/// Creates (truncating) the log at `path` with `header`, and allocates
/// 64 KiB past its end without growing it (`FALLOC_FL_KEEP_SIZE`):
/// appends, the failure's cause among them, then need no new space while the
/// reserve lasts. A filesystem without fallocate just goes without.
pub fn start_log(path: &Path, header: &str) -> std::io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let _ = fallocate(&f, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, LOG_RESERVE);
    f.write_all(header.as_bytes())
}

/// Appends the error `e` and its causes to the log at `path` (creating it) as
/// `gentree-fs: error: ...` lines; returns the text. When even that fails, the text
/// is logged with the reason it is not in the file.
pub fn log_failure(path: &Path, e: &(dyn std::error::Error + 'static)) -> String {
    use std::io::Write;
    let mut text = format!("gentree-fs: error: {e}\n");
    for cause in crate::error_chain(e).skip(1) {
        text.push_str(&format!("  caused by: {cause}\n"));
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(err) = written {
        tracing::error!(
            "cannot write the cause of a failed build to {}: {err}: {}",
            path.display(),
            text.trim_end()
        );
    }
    text
}

/// A helper's end, shown as `exit status N` or `killed by signal N, SIGNAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub ExitStatus);

impl Exit {
    /// The exit code, or 128 + signal as a shell reports it.
    pub fn shell_code(self) -> i32 {
        self.0
            .code()
            .or_else(|| self.0.signal().map(|s| 128 + s))
            .unwrap_or(-1)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = self.0.code() {
            return write!(f, "exit status {c}");
        }
        match self.0.signal() {
            Some(s) => {
                let name = nix::sys::signal::Signal::try_from(s).map_or("unknown", |s| s.as_str());
                let core = if self.0.core_dumped() {
                    ", core dumped"
                } else {
                    ""
                };
                write!(f, "killed by signal {s}, {name}{core}")
            }
            None => write!(f, "ended with wait status {:#x}", self.0.into_raw()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_names_give_their_pid() {
        let cases = [
            ("0123456789ab-4242", Some(4242)),
            ("serve-77-3", Some(77)),
            ("serve-x-3", None),
            ("lost+found", None),
            ("abc-0", None),
            ("abc--5", Some(5)),
        ];
        for (name, want) in cases {
            assert_eq!(owner_pid(name), want, "{name}");
        }
    }

    #[test]
    fn dirs_of_dead_processes_go_those_of_live_ones_stay() {
        let run = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let gone = run.path().join(format!("0123456789ab-{dead}"));
        let gone_serve = run.path().join(format!("serve-{dead}-1"));
        let mine = run.path().join(format!("0123456789ab-{me}"));
        let pid1 = run.path().join("0123456789ab-1");
        let other = run.path().join("notes");
        for d in [&gone, &gone_serve, &mine, &pid1, &other] {
            std::fs::create_dir_all(d.join("root/etc")).unwrap();
            std::fs::write(d.join("root/etc/f"), "x").unwrap();
        }
        let mut removed = remove_dead_run_dirs(run.path());
        removed.sort();
        let mut want = vec![gone.clone(), gone_serve.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(!gone.exists() && !gone_serve.exists());
        assert!(mine.exists() && pid1.exists() && other.exists());
    }

    #[test]
    fn portage_work_goes_whiteouts_stay() {
        let upper = tempfile::tempdir().unwrap();
        let tmp = upper.path().join(PORTAGE_TMP);
        std::fs::create_dir_all(tmp.join("app-misc/gt-fail-1/work")).unwrap();
        std::fs::write(tmp.join("app-misc/gt-fail-1/work/big"), "x").unwrap();
        std::fs::write(tmp.join(".keep"), "").unwrap();
        std::fs::write(tmp.join(".wh.lower-entry"), "").unwrap();
        std::fs::write(upper.path().join("var/tmp/other"), "kept").unwrap();
        let mut removed = remove_portage_work(upper.path());
        removed.sort();
        assert_eq!(removed, [tmp.join(".keep"), tmp.join("app-misc")]);
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [".wh.lower-entry"]);
        assert!(upper.path().join("var/tmp/other").exists());
        assert!(remove_portage_work(&upper.path().join("none")).is_empty());
    }

    #[test]
    fn a_killed_helper_names_its_signal() {
        let st = |raw| Exit(ExitStatus::from_raw(raw));
        assert_eq!(st(1 << 8).to_string(), "exit status 1");
        assert_eq!(st(9).to_string(), "killed by signal 9, SIGKILL");
        assert_eq!(st(9).shell_code(), 137);
        assert_eq!(
            st(11 | 0x80).to_string(),
            "killed by signal 11, SIGSEGV, core dumped"
        );
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        child.kill().unwrap();
        let real = Exit(child.wait().unwrap());
        assert_eq!(real.to_string(), "killed by signal 9, SIGKILL");
    }
}
