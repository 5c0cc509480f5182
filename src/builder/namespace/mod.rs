//! Running a command in its own user, mount and pid namespaces, chrooted into a
//! prepared root: the way builds (and `exec`) run Portage without privilege.
//!
//! The caller (the CLI or the threaded mount daemon) never forks. It re-executes its
//! own binary with the hidden `__ns-exec` subcommand and hands it a [`Plan`] (JSON in
//! an environment variable). The helper, a fresh single-threaded process:
//!
//! 1. unshares a user, a mount and an IPC namespace, always: root in a build is never
//!    the host's root. A root caller writes the id maps itself (0.. → a subordinate
//!    range, [`idmap`]) and the helper then becomes the namespace's root; an ordinary
//!    caller runs `newuidmap`/`newgidmap` when it has subordinate ranges, otherwise
//!    the helper maps 0 to the caller itself;
//! 2. unshares a pid namespace and forks the future pid 1, which waits on a pipe;
//! 3. performs the plan's mounts (unions, binds, tmpfs, devpts) in its mount namespace
//!    — FUSE unions are served by the helper's own threads, started only after the
//!    fork, so no thread is ever forked;
//! 4. releases pid 1, which mounts `/proc`, chroots, and runs the plan's steps: each
//!    command as its own child with exactly the step's environment, reaping orphans.
//!
//! Teardown needs no code: pid 1 carries `PR_SET_PDEATHSIG(SIGKILL)` toward the helper
//! and the helper toward its caller, so killing either end kills every process of the
//! build, and the mounts vanish with the last process of the mount namespace.

pub mod helper;
pub mod idmap;
pub mod sandbox;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use idmap::IdMapping;

/// The environment variable carrying the JSON plan to the helper.
pub const PLAN_ENV: &str = "GENTREE_NS_PLAN";
/// The hidden subcommand that runs the helper side.
pub const HELPER_SUBCOMMAND: &str = "__ns-exec";

/// Everything the helper needs to set up the namespace and run one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub mapping: IdMapping,
    /// Host directory to chroot into (a union mount target is fine: unions are
    /// mounted first, in plan order).
    pub root: PathBuf,
    /// Mounts, in order. Targets are paths inside `root`.
    pub mounts: Vec<NsMount>,
    /// What pid 1 does, in order, once chrooted; the first failing step ends the plan.
    pub steps: Vec<Step>,
    /// Working directory inside the root.
    pub cwd: PathBuf,
    /// A network namespace of its own (only a loopback device, down): a build with no
    /// network (`--no-network`). Otherwise the host's network, so emerge can fetch.
    #[serde(default)]
    pub no_network: bool,
}

/// One step run by pid 1 inside the chroot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Step {
    /// Runs a command and waits for it; a non-zero exit ends the plan with that status.
    Run(RunStep),
    /// Makes `link` a symlink to `target`, replacing what was there (make.profile).
    Symlink { link: PathBuf, target: PathBuf },
    /// Writes a file (creating parent directories), replacing what was there.
    WriteFile { path: PathBuf, contents: String },
    /// Removes each path (recursively) if it exists: the clean filters, applied
    /// through the union so that deleting a lower layer's file records a whiteout.
    Remove { paths: Vec<PathBuf> },
}

/// A command of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStep {
    /// `argv[0]` is looked up in this step's `PATH` inside the root.
    pub argv: Vec<String>,
    /// The complete environment of the command (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Commands whose output explains a failure (e.g. `emerge --info`), run when this
    /// step fails, before the plan ends.
    #[serde(default)]
    pub on_failure: Vec<Vec<String>>,
    /// A log file whose growth during this step is printed when it fails
    /// (`/var/log/emerge.log`).
    #[serde(default)]
    pub log_tail: Option<PathBuf>,
}

impl RunStep {
    /// A plain command with an environment.
    pub fn new(argv: Vec<String>, env: Vec<(String, String)>) -> RunStep {
        RunStep {
            argv,
            env,
            on_failure: Vec::new(),
            log_tail: None,
        }
    }
}

/// One mount performed inside the namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum NsMount {
    /// A bind mount of a host path (file or directory).
    Bind {
        source: PathBuf,
        target: PathBuf,
        recursive: bool,
        readonly: bool,
    },
    /// A fresh tmpfs.
    Tmpfs { target: PathBuf, options: String },
    /// A fresh tmpfs on a host path (outside the root, so it may come before the root
    /// union and hold its upper: `ephemeral_seed`), seen only in the namespace.
    /// `mkdirs` (host paths inside it) are created once it is mounted.
    HostTmpfs {
        path: PathBuf,
        options: String,
        mkdirs: Vec<PathBuf>,
    },
    /// A fresh procfs for the new pid namespace (mounted by pid 1 itself), with
    /// [`sandbox::MASKED_PATHS`] hidden and [`sandbox::READONLY_PATHS`] read-only.
    Proc { target: PathBuf },
    /// The sandbox's minimal `/dev` ([`sandbox::DEV_NODES`] bound from the host over
    /// a fresh tmpfs, a new devpts instance with `ptmx`, `shm`, `mqueue`).
    Dev { target: PathBuf },
    /// The host's `/sys`, bound recursively and read-only down to every submount.
    Sys { target: PathBuf },
    /// A gentree-fs union, served by the helper's threads. `target` is a host path
    /// when it is the root itself, else a path inside the root.
    Union(UnionSpec),
}

/// A union mount: `lowers` topmost first, an optional writable `upper`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnionSpec {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub target: PathBuf,
}

/// Errors of the caller side.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("cannot start the namespace helper {exe}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode the namespace plan")]
    Encode(#[source] serde_json::Error),
    #[error("the namespace helper (pid {pid}) did not create its user namespace within 10 s")]
    UnshareTimeout { pid: u32 },
    #[error(
        "{tool} failed for pid {pid}: {stderr}\n(check the ranges for this user in /etc/subuid and /etc/subgid)"
    )]
    IdMap {
        tool: &'static str,
        pid: u32,
        stderr: String,
    },
    #[error("cannot run {tool}")]
    IdMapSpawn {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {map:?} to {path}")]
    WriteMap {
        path: PathBuf,
        map: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("waiting for the namespace helper")]
    Wait(#[source] io::Error),
    #[error("cannot write the build log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Runs `plan` in new namespaces and waits for it. Standard input is inherited;
/// output is inherited too, or, with `log`, both streams go to our stderr and are
/// appended to the log file (the build log users can `tail -f`).
pub fn run(plan: &Plan, log: Option<&Path>) -> Result<ExitStatus, NsError> {
    tracing::debug!("{}", sandbox::describe(&plan.mapping, &plan.mounts));
    sandbox::prepare_host_paths(plan)?;
    let exe = PathBuf::from("/proc/self/exe");
    let json = serde_json::to_string(plan).map_err(NsError::Encode)?;
    let mut cmd = Command::new(&exe);
    // `ps` shows the helper by role: the layer it builds, or the root it runs in.
    std::os::unix::process::CommandExt::arg0(&mut cmd, helper_title(plan));
    cmd.arg(HELPER_SUBCOMMAND).env(PLAN_ENV, json);
    let tee = match log {
        Some(path) => {
            let file = std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| NsError::Log {
                    path: path.to_path_buf(),
                    source,
                })?;
            let (reader, writer) = io::pipe().map_err(|source| NsError::Log {
                path: path.to_path_buf(),
                source,
            })?;
            let w2 = writer.try_clone().map_err(|source| NsError::Log {
                path: path.to_path_buf(),
                source,
            })?;
            cmd.stdout(writer).stderr(w2);
            Some(std::thread::spawn(move || tee_to(reader, file)))
        }
        None => None,
    };
    let spawned = cmd.spawn();
    drop(cmd); // our copies of the pipe's write end: the tee ends when the helper does
    let mut child = spawned.map_err(|source| NsError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    let mapped = match (plan.mapping.map_args(), plan.mapping.privileged_maps()) {
        (Some((uid_args, gid_args)), _) => map_ids(child.id(), &uid_args, &gid_args),
        (None, Some((uid_map, gid_map))) => write_maps(child.id(), &uid_map, &gid_map),
        (None, None) => Ok(()),
    };
    if let Err(e) = mapped {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let status = child.wait().map_err(NsError::Wait);
    if let Some(t) = tee {
        let _ = t.join();
    }
    status
}

/// The helper's `argv[0]`: `gentree-fs: build helper for LAYER` when the plan builds
/// a layer at `/builds/LAYER`, else `gentree-fs: helper in ROOT`.
pub fn helper_title(plan: &Plan) -> String {
    let layer = plan.mounts.iter().find_map(|m| match m {
        NsMount::Union(u) => u
            .target
            .strip_prefix("/builds")
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
            .map(|r| r.display().to_string()),
        _ => None,
    });
    match layer {
        Some(l) => format!("gentree-fs: build helper for {l}"),
        None => format!("gentree-fs: helper in {}", plan.root.display()),
    }
}

/// Copies the helper's output to our stderr and the log, until the pipe closes.
fn tee_to(mut reader: io::PipeReader, mut log: std::fs::File) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    let mut stderr = io::stderr();
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        let _ = stderr.write_all(&buf[..n]);
        let _ = log.write_all(&buf[..n]);
    }
}

/// Waits until `pid` has entered a user namespace of its own; `false` when it exited
/// first (`wait` then reports its own error message).
fn await_user_namespace(pid: u32) -> Result<bool, NsError> {
    let ours = std::fs::read_link("/proc/self/ns/user").ok();
    let theirs = PathBuf::from(format!("/proc/{pid}/ns/user"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if exited(pid) {
            return Ok(false);
        }
        match std::fs::read_link(&theirs) {
            Ok(ns) if Some(&ns) != ours.as_ref() => return Ok(true),
            Err(_) => return Ok(false),
            _ if Instant::now() > deadline => return Err(NsError::UnshareTimeout { pid }),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Whether `pid` (our child) has exited: a zombie still shows its user namespace
/// link, so the link alone cannot tell.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| matches!(state, "Z" | "X")),
        Err(_) => true,
    }
}

/// A root caller writes the maps of `pid` itself (it holds `CAP_SETUID` and
/// `CAP_SETGID` over the namespace's parent); no `/etc/subuid` entry is needed.
fn write_maps(pid: u32, uid_map: &str, gid_map: &str) -> Result<(), NsError> {
    if !await_user_namespace(pid)? {
        return Ok(());
    }
    for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, map).map_err(|source| NsError::WriteMap {
            path,
            map: map.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// Writes the subordinate id maps of `pid` once it has entered its user namespace.
fn map_ids(pid: u32, uid_args: &[String], gid_args: &[String]) -> Result<(), NsError> {
    if !await_user_namespace(pid)? {
        return Ok(());
    }
    for (tool, args) in [("newuidmap", uid_args), ("newgidmap", gid_args)] {
        let out = Command::new(tool)
            .arg(pid.to_string())
            .args(args)
            .output()
            .map_err(|source| NsError::IdMapSpawn { tool, source })?;
        if !out.status.success() {
            return Err(NsError::IdMap {
                tool,
                pid,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    Ok(())
}

/// The caller's mapping, read from the system (`/etc/subuid`, `/etc/subgid`).
pub fn current_mapping() -> IdMapping {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(euid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    let subuid = std::fs::read_to_string("/etc/subuid").ok();
    let subgid = std::fs::read_to_string("/etc/subgid").ok();
    idmap::choose(euid, egid, &user, subuid.as_deref(), subgid.as_deref())
}

/// Joins `inner` (absolute or relative, inside the root) onto `root`.
pub fn in_root(root: &Path, inner: &Path) -> PathBuf {
    let rel: PathBuf = inner
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    root.join(rel)
}

/// A minimal default `PATH` for commands in a Gentoo-like root.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment a command gets when the caller passes nothing else.
pub fn base_env() -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
    ];
    if let Some(Ok(term)) = std::env::var_os("TERM").map(OsString::into_string) {
        env.push(("TERM".to_owned(), term));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_root_never_escapes() {
        let r = Path::new("/srv/root");
        for (inner, want) in [
            ("/proc", "/srv/root/proc"),
            ("dev/pts", "/srv/root/dev/pts"),
            ("/../../etc", "/srv/root/etc"),
            ("/", "/srv/root"),
        ] {
            assert_eq!(in_root(r, Path::new(inner)), PathBuf::from(want), "{inner}");
        }
    }

    #[test]
    fn helper_title_names_the_layer_or_the_root() {
        let mut plan = Plan {
            mapping: IdMapping::root_default(),
            root: "/conf/run/exec-1/root".into(),
            mounts: vec![NsMount::Tmpfs {
                target: "/builds".into(),
                options: String::new(),
            }],
            steps: Vec::new(),
            cwd: "/".into(),
            no_network: false,
        };
        assert_eq!(
            helper_title(&plan),
            "gentree-fs: helper in /conf/run/exec-1/root"
        );
        plan.mounts.push(NsMount::Union(UnionSpec {
            lowers: vec![],
            upper: None,
            work: None,
            target: "/builds/nginx".into(),
        }));
        assert_eq!(helper_title(&plan), "gentree-fs: build helper for nginx");
    }

    #[test]
    fn plan_round_trips_as_json() {
        let plan = Plan {
            mapping: IdMapping::Single {
                uid: 1000,
                gid: 1000,
            },
            root: "/r".into(),
            mounts: vec![
                NsMount::Proc {
                    target: "/proc".into(),
                },
                NsMount::Bind {
                    source: "/etc/resolv.conf".into(),
                    target: "/etc/resolv.conf".into(),
                    recursive: false,
                    readonly: true,
                },
            ],
            steps: vec![Step::Run(RunStep::new(
                vec!["emerge".into(), "--info".into()],
                base_env(),
            ))],
            cwd: "/".into(),
            no_network: false,
        };
        let json = serde_json::to_string(&plan).expect("encode");
        let back: Plan = serde_json::from_str(&json).expect("decode");
        assert!(matches!(&back.steps[..], [Step::Run(r)] if r.argv[0] == "emerge"));
        assert_eq!(back.mounts.len(), 2);
    }
}
