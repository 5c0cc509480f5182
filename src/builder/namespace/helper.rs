//! The helper side of [`super::run`]: runs in the re-executed `__ns-exec` process.
//!
//! Ordering matters and is the point of this file:
//! - the user and mount namespaces are unshared, and a child forked, while the helper
//!   has one thread;
//! - FUSE unions (which start threads) are mounted by the helper only after that fork;
//! - the child waits on a pipe until every mount is in place, then unshares the pid
//!   namespace (a process that did so cannot start threads, so the helper never does)
//!   and forks pid 1, which mounts `/proc` (only a member of the new pid namespace
//!   can), chroots, and runs the steps, reaping orphans.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, chroot, execve, pipe};

use super::{IdMapping, NsMount, PLAN_ENV, Plan, RunStep, Step, UnionSpec, in_root};

/// Mounts a union inside the helper's mount namespace and serves it from the
/// helper's threads; the returned guard unmounts it when dropped. Provided by the
/// binary so that `builder` does not depend on the FUSE adapter.
pub trait UnionMounter {
    fn mount_union(&self, spec: &UnionSpec, target: &Path) -> io::Result<Box<dyn Send>>;
}

/// A failed step of the helper, naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("no namespace plan in ${PLAN_ENV}: `__ns-exec` is internal to gentree-fs")]
    NoPlan,
    #[error("malformed namespace plan")]
    BadPlan(#[source] serde_json::Error),
    #[error("{step}")]
    Sys {
        step: String,
        #[source]
        source: io::Error,
    },
    #[error("mount target {target} has a symlink at {component}: refusing to mount through it")]
    SymlinkTarget { target: PathBuf, component: PathBuf },
    #[error("a step of the plan has an empty command")]
    NoCommand,
    #[error("the id maps were not written within 10 s (newuidmap/newgidmap did not run?)")]
    MapTimeout,
    #[error("a union needs a mounter, and none is available here")]
    NoUnionMounter,
}

fn sys<T, E: Into<io::Error>>(
    r: Result<T, E>,
    step: impl FnOnce() -> String,
) -> Result<T, HelperError> {
    r.map_err(|e| HelperError::Sys {
        step: step(),
        source: e.into(),
    })
}

/// Runs the plan from the environment; returns the exit code the helper should exit
/// with (the command's, or 128 + signal).
pub fn helper_main(mounter: Option<&dyn UnionMounter>) -> Result<i32, HelperError> {
    let json = std::env::var(PLAN_ENV).map_err(|_| HelperError::NoPlan)?;
    let plan: Plan = serde_json::from_str(&json).map_err(HelperError::BadPlan)?;
    if plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::Run(r) if r.argv.is_empty()))
    {
        return Err(HelperError::NoCommand);
    }
    // Die with the caller: a killed build leaves nothing running.
    sys(
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from),
        || "prctl(PR_SET_PDEATHSIG)".into(),
    )?;
    enter_namespaces(&plan.mapping, plan.no_network)?;
    let (go_r, go_w) = sys(pipe().map_err(io::Error::from), || "pipe".into())?;
    let forked = sys(crate::sys::fork_single_threaded(), || "fork".into())?;
    match forked {
        ForkResult::Child => {
            drop(go_w);
            child_main(&plan, go_r)
        }
        ForkResult::Parent { child: pid } => {
            drop(go_r);
            let mut guards = Vec::new();
            if let Err((done, e)) = do_mounts(&plan, mounter, &mut guards) {
                drop(go_w); // the child reads EOF and exits without running anything
                let _ = waitpid(pid, None);
                unmount_all(&plan, &plan.mounts[..done], guards);
                return Err(e);
            }
            let mut go = fs::File::from(go_w);
            sys(go.write_all(b"g"), || "releasing pid 1".into())?;
            drop(go);
            let code = wait_exit_code(pid)?;
            unmount_all(&plan, &plan.mounts, guards);
            Ok(code)
        }
    }
}

fn enter_namespaces(mapping: &IdMapping, no_network: bool) -> Result<(), HelperError> {
    // A user namespace always, so root in the build is never the host's root; an IPC
    // namespace of its own, so its SysV IPC and POSIX message queues (`/dev/mqueue`)
    // are not the host's.
    let mut flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC;
    if no_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    sys(unshare(flags).map_err(io::Error::from), || {
        "unshare(user, mount, IPC and network namespaces)".into()
    })?;
    match mapping {
        IdMapping::Single { uid, gid } => {
            // An unprivileged process may map only its own ids, and only after
            // giving up setgroups(2).
            write_proc("/proc/self/setgroups", "deny")?;
            write_proc("/proc/self/uid_map", &format!("0 {uid} 1"))?;
            write_proc("/proc/self/gid_map", &format!("0 {gid} 1"))?;
        }
        IdMapping::Subordinate { .. } | IdMapping::Privileged { .. } => {
            // The caller watches /proc/PID/ns/user change and writes the maps
            // (newuidmap/newgidmap, or directly when it is root).
            let deadline = Instant::now() + Duration::from_secs(10);
            while fs::read_to_string("/proc/self/gid_map")
                .map(|s| s.trim().is_empty())
                .unwrap_or(true)
            {
                if Instant::now() > deadline {
                    return Err(HelperError::MapTimeout);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let root = nix::unistd::Gid::from_raw(0);
            sys(
                nix::unistd::setgroups(&[root]).map_err(io::Error::from),
                || "setgroups".into(),
            )?;
            if matches!(mapping, IdMapping::Privileged { .. }) {
                become_namespace_root()?;
            }
        }
    }
    // Our mounts must not propagate back to the host.
    sys(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(io::Error::from),
        || "making / private".into(),
    )?;
    Ok(())
}

/// A root caller's helper still has the host's uid 0, which the namespace does not
/// map: it takes the namespace's root (the range's first host id), so everything it
/// and its children create on disk is owned by the range, never by host root.
/// Changing credentials clears the parent-death signal and dumpability: both are
/// set again.
fn become_namespace_root() -> Result<(), HelperError> {
    use nix::unistd::{Gid, Uid, setresgid, setresuid};
    let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
    sys(setresgid(g, g, g).map_err(io::Error::from), || {
        "setresgid(0)".into()
    })?;
    sys(setresuid(u, u, u).map_err(io::Error::from), || {
        "setresuid(0)".into()
    })?;
    sys(
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from),
        || "prctl(PR_SET_PDEATHSIG)".into(),
    )?;
    sys(
        nix::sys::prctl::set_dumpable(true).map_err(io::Error::from),
        || "prctl(PR_SET_DUMPABLE)".into(),
    )
}

fn write_proc(path: &str, value: &str) -> Result<(), HelperError> {
    sys(fs::write(path, value), || {
        format!("writing {value:?} to {path}")
    })
}

/// The helper's single-threaded child: waits until the mounts are in place, then
/// enters a new pid namespace and forks its pid 1. (The helper itself cannot unshare
/// the pid namespace: a process that has done so may not create threads, and the
/// helper serves the unions from threads.) Never returns.
fn child_main(plan: &Plan, go: OwnedFd) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let mut buf = [0u8; 1];
    if !matches!(fs::File::from(go).read(&mut buf), Ok(1)) {
        std::process::exit(126); // the helper failed to set up; it reports why
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        eprintln!("gentree-fs: in the build namespace: unshare(pid namespace): {e}");
        std::process::exit(126)
    }
    match crate::sys::fork_single_threaded() {
        Ok(ForkResult::Child) => pid1_main(plan),
        Ok(ForkResult::Parent { child }) => std::process::exit(reap_until(child)),
        Err(e) => {
            eprintln!("gentree-fs: in the build namespace: fork: {e}");
            std::process::exit(126)
        }
    }
}

/// pid 1 of the new pid namespace: mounts `/proc`, chroots, runs the steps, reaping
/// orphans. Never returns. Single-threaded, so it may allocate and fork freely.
fn pid1_main(plan: &Plan) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let fail = |what: String, e: &dyn std::fmt::Display| -> ! {
        eprintln!("gentree-fs: in the build namespace: {what}: {e}");
        std::process::exit(126)
    };
    for m in &plan.mounts {
        if let NsMount::Proc { target } = m {
            let p = in_root(&plan.root, target);
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            if let Err(e) = mount(Some("proc"), &p, Some("proc"), flags, None::<&str>) {
                fail(format!("mounting /proc at {}", p.display()), &e);
            }
            if let Err(e) = mask_paths(&plan.root) {
                fail("setting up the sandbox's /proc and /sys".into(), &e);
            }
        }
    }
    if let Err(e) = chroot(&plan.root) {
        fail(format!("chroot {}", plan.root.display()), &e);
    }
    if let Err(e) = chdir(&plan.cwd) {
        fail(format!("chdir {}", plan.cwd.display()), &e);
    }
    for step in &plan.steps {
        let code = match step {
            Step::Run(r) => run_step(r),
            Step::Symlink { link, target } => {
                if let Err(e) = replace_with_symlink(link, target) {
                    fail(
                        format!("linking {} to {}", link.display(), target.display()),
                        &e,
                    );
                }
                0
            }
            Step::Remove { paths } => {
                for p in paths {
                    if let Err(e) = crate::layers::store::remove_tree(p) {
                        fail(format!("removing {}", p.display()), &e);
                    }
                }
                0
            }
            Step::WriteFile { path, contents } => {
                let r = path
                    .parent()
                    .map_or(Ok(()), fs::create_dir_all)
                    .and_then(|_| fs::write(path, contents));
                if let Err(e) = r {
                    fail(format!("writing {}", path.display()), &e);
                }
                0
            }
        };
        if code != 0 {
            std::process::exit(code);
        }
    }
    std::process::exit(0)
}

/// Points `link` at `target`, which must exist (B48: check before removing anything).
fn replace_with_symlink(link: &Path, target: &Path) -> io::Result<()> {
    if !target.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} does not exist in the seed (is the profile name right, and is its repository in /var/db/repos?)",
                target.display()
            ),
        ));
    }
    match fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() && fs::read_link(link)? == target => return Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(link)?,
        Ok(_) => fs::remove_file(link)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)?;
    }
    std::os::unix::fs::symlink(target, link)
}

/// Runs one command to completion (reaping orphans meanwhile); on failure prints
/// the log growth and the diagnostics. Returns the exit code (128 + signal).
fn run_step(r: &RunStep) -> i32 {
    let log_start = r
        .log_tail
        .as_ref()
        .and_then(|p| fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let code = spawn_and_reap(&r.argv, &r.env);
    if code != 0 {
        if let Some(log) = &r.log_tail {
            print_log_growth(log, log_start);
        }
        for argv in &r.on_failure {
            eprintln!("gentree-fs: diagnostics: {}", argv.join(" "));
            spawn_and_reap(argv, &r.env);
        }
    }
    code
}

fn print_log_growth(log: &Path, from: u64) {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(log) else {
        return;
    };
    let mut text = String::new();
    if f.seek(SeekFrom::Start(from)).is_ok() && f.read_to_string(&mut text).is_ok() {
        eprintln!("gentree-fs: {} during the failed step:", log.display());
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {l}");
        }
    }
}

fn spawn_and_reap(argv: &[String], env: &[(String, String)]) -> i32 {
    match crate::sys::fork_single_threaded() {
        Ok(ForkResult::Child) => exec_command(argv, env),
        Ok(ForkResult::Parent { child }) => reap_until(child),
        Err(e) => {
            eprintln!("gentree-fs: in the build namespace: fork: {e}");
            126
        }
    }
}

/// An execve call prepared: argv, envp, and the paths to try in PATH order.
struct Exec {
    args: Vec<CString>,
    envs: Vec<CString>,
    cands: Vec<CString>,
}

fn exec_command(argv: &[String], env: &[(String, String)]) -> ! {
    let prepared = (|| -> Result<Exec, HelperError> {
        let args = argv
            .iter()
            .map(|a| cstr(a.as_bytes(), "argument"))
            .collect::<Result<Vec<_>, _>>()?;
        let envs = env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}").as_bytes(), "environment"))
            .collect::<Result<Vec<_>, _>>()?;
        let prog = argv.first().map(String::as_str).unwrap_or("");
        let cands = if prog.contains('/') {
            vec![cstr(prog.as_bytes(), "command")?]
        } else {
            let path = env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map_or(super::DEFAULT_PATH, |(_, v)| v.as_str());
            path.split(':')
                .filter(|d| !d.is_empty())
                .map(|d| cstr(format!("{d}/{prog}").as_bytes(), "command"))
                .collect::<Result<_, _>>()?
        };
        Ok(Exec { args, envs, cands })
    })();
    let Exec { args, envs, cands } = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gentree-fs: {e}");
            std::process::exit(127)
        }
    };
    let mut last = nix::Error::ENOENT;
    for cand in &cands {
        match execve(cand.as_c_str(), &args, &envs) {
            Err(nix::Error::ENOENT) | Err(nix::Error::ENOTDIR) => {}
            Err(e) => last = e,
        }
    }
    eprintln!(
        "gentree-fs: cannot execute {:?} in the build root: {last}",
        argv.first().map(String::as_str).unwrap_or("")
    );
    std::process::exit(127)
}

fn cstr(b: &[u8], what: &str) -> Result<CString, HelperError> {
    CString::new(b).map_err(|e| HelperError::Sys {
        step: format!("{what} contains a NUL byte"),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })
}

fn reap_until(main: Pid) -> i32 {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => return code,
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => return 128 + sig as i32,
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return 127,
        }
    }
}

fn wait_exit_code(pid: Pid) -> Result<i32, HelperError> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return sys(Err(io::Error::from(e)), || "waiting for pid 1".into()),
        }
    }
}

/// Unmounts in reverse plan order, so that each union is unmounted (by dropping its
/// guard) only after everything mounted inside it. The mount namespace dies with the
/// helper anyway; this lets the FUSE sessions end cleanly instead of failing busy.
fn unmount_all(plan: &Plan, mounted: &[NsMount], mut guards: Vec<Box<dyn Send>>) {
    use nix::mount::{MntFlags, umount2};
    for m in mounted.iter().rev() {
        match m {
            NsMount::Union(_) => drop(guards.pop()),
            NsMount::Dev { target }
            | NsMount::Sys { target }
            | NsMount::Bind { target, .. }
            | NsMount::Tmpfs { target, .. }
            | NsMount::Proc { target } => {
                let _ = umount2(&in_root(&plan.root, target), MntFlags::MNT_DETACH);
            }
            NsMount::HostTmpfs { path, .. } => {
                let _ = umount2(path, MntFlags::MNT_DETACH);
            }
        }
    }
}

/// Performs the plan's mounts in order, pushing each union's guard. On failure,
/// returns how many mounts were done (the failed one excluded) with the error.
fn do_mounts(
    plan: &Plan,
    mounter: Option<&dyn UnionMounter>,
    guards: &mut Vec<Box<dyn Send>>,
) -> Result<(), (usize, HelperError)> {
    for (i, m) in plan.mounts.iter().enumerate() {
        do_mount(plan, m, mounter, guards).map_err(|e| (i, e))?;
    }
    Ok(())
}

fn do_mount(
    plan: &Plan,
    m: &NsMount,
    mounter: Option<&dyn UnionMounter>,
    guards: &mut Vec<Box<dyn Send>>,
) -> Result<(), HelperError> {
    {
        match m {
            NsMount::Union(spec) => {
                let target = if spec.target.components().count() <= 1 {
                    plan.root.clone() // the root itself: it exists
                } else {
                    prepare_target(&plan.root, &spec.target, true)?
                };
                let mounter = mounter.ok_or(HelperError::NoUnionMounter)?;
                let g = sys(mounter.mount_union(spec, &target), || {
                    format!("mounting the union at {}", target.display())
                })?;
                guards.push(g);
            }
            NsMount::Bind {
                source,
                target,
                recursive,
                readonly,
            } => bind(&plan.root, source, target, *recursive, *readonly)?,
            NsMount::Tmpfs { target, options } => {
                let t = prepare_target(&plan.root, target, true)?;
                tmpfs(&t, options)?;
            }
            NsMount::HostTmpfs {
                path,
                options,
                mkdirs,
            } => {
                sys(fs::create_dir_all(path), || {
                    format!("creating mount point {}", path.display())
                })?;
                tmpfs(path, options)?;
                for d in mkdirs {
                    sys(fs::create_dir_all(d), || {
                        format!("creating {}", d.display())
                    })?;
                }
            }
            NsMount::Dev { target } => dev(&plan.root, target)?,
            NsMount::Sys { target } => {
                let t = prepare_target(&plan.root, target, true)?;
                sys(
                    mount(
                        Some("/sys"),
                        &t,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    )
                    .map_err(io::Error::from),
                    || format!("bind-mounting /sys at {}", t.display()),
                )?;
                make_readonly(&t)?;
            }
            NsMount::Proc { target } => {
                prepare_target(&plan.root, target, true)?;
            }
        }
    }
    Ok(())
}

fn tmpfs(t: &Path, options: &str) -> Result<(), HelperError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    fresh_fs("tmpfs", "tmpfs", t, flags, Some(options))
}

/// Creates the mount point inside `root` (a directory, or an empty file for file
/// binds), refusing to walk through symlinks the root may contain.
fn prepare_target(root: &Path, target: &Path, dir: bool) -> Result<PathBuf, HelperError> {
    let full = in_root(root, target);
    let mut cur = root.to_path_buf();
    let rel = full.strip_prefix(root).unwrap_or(Path::new(""));
    for comp in rel.components() {
        cur.push(comp);
        if let Ok(m) = fs::symlink_metadata(&cur) {
            if m.file_type().is_symlink() {
                return Err(HelperError::SymlinkTarget {
                    target: target.to_path_buf(),
                    component: cur,
                });
            }
        }
    }
    if dir {
        sys(fs::create_dir_all(&full), || {
            format!("creating mount point {}", full.display())
        })?;
    } else if fs::symlink_metadata(&full).is_err() {
        if let Some(parent) = full.parent() {
            sys(fs::create_dir_all(parent), || {
                format!("creating {}", parent.display())
            })?;
        }
        sys(fs::write(&full, b""), || {
            format!("creating mount point {}", full.display())
        })?;
    }
    Ok(full)
}

fn bind(
    root: &Path,
    source: &Path,
    target: &Path,
    recursive: bool,
    readonly: bool,
) -> Result<(), HelperError> {
    let is_dir = sys(fs::metadata(source), || {
        format!("bind source {}", source.display())
    })?
    .is_dir();
    let t = prepare_target(root, target, is_dir)?;
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    sys(
        mount(Some(source), &t, None::<&str>, flags, None::<&str>).map_err(io::Error::from),
        || format!("bind-mounting {} at {}", source.display(), t.display()),
    )?;
    if readonly {
        make_readonly(&t)?;
    }
    Ok(())
}

/// Makes the mount at `t` read-only with every mount below it; on kernels without
/// `mount_setattr` (before 5.12), the top mount only, by a remount.
fn make_readonly(t: &Path) -> Result<(), HelperError> {
    match crate::sys::make_readonly_recursive(t) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        Err(e) => {
            return Err(HelperError::Sys {
                step: format!("making {} read-only", t.display()),
                source: e,
            });
        }
    }
    {
        // In a user namespace the source's nosuid/nodev/noexec are locked: a remount
        // must repeat them or the kernel refuses it.
        let st = sys(statvfs(t).map_err(io::Error::from), || {
            format!("statvfs {}", t.display())
        })?;
        let mut ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        for (f, m) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if st.flags().contains(f) {
                ro |= m;
            }
        }
        sys(
            mount(None::<&str>, t, None::<&str>, ro, None::<&str>).map_err(io::Error::from),
            || format!("making {} read-only", t.display()),
        )?;
    }
    Ok(())
}

/// The sandbox's `/dev`: a fresh tmpfs, the harmless host nodes bound onto empty
/// files in it (a tmpfs mounted in a user namespace cannot hold working device nodes
/// itself, and a bind of the host's node keeps its own mount), a new devpts instance
/// whose `ptmx` `/dev/ptmx` links to, `shm` and `mqueue` (of the build's own IPC
/// namespace), and the usual symlinks.
fn dev(root: &Path, target: &Path) -> Result<(), HelperError> {
    use super::sandbox::{DEV_LINKS, DEV_NODES};
    let t = prepare_target(root, target, true)?;
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    fresh_fs(
        "tmpfs",
        "tmpfs",
        &t,
        nosuid_noexec,
        Some("mode=0755,size=65536k"),
    )?;
    for node in DEV_NODES {
        let host = Path::new("/dev").join(node);
        if !host.exists() {
            continue; // no controlling-terminal device on this host, say
        }
        let dst = t.join(node);
        sys(fs::write(&dst, b""), || {
            format!("creating {}", dst.display())
        })?;
        sys(
            mount(
                Some(&host),
                &dst,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io::Error::from),
            || format!("binding {} at {}", host.display(), dst.display()),
        )?;
    }
    for (link, to) in DEV_LINKS {
        let l = t.join(link);
        sys(std::os::unix::fs::symlink(to, &l), || {
            format!("linking {} to {to}", l.display())
        })?;
    }
    let ptmx = Some("newinstance,ptmxmode=0666,mode=0620");
    let nodev = nosuid_noexec | MsFlags::MS_NODEV;
    for (dir, fs_type, source, flags, data) in [
        ("pts", "devpts", "devpts", nosuid_noexec, ptmx),
        ("shm", "tmpfs", "shm", nodev, Some("mode=1777,size=65536k")),
        ("mqueue", "mqueue", "mqueue", nodev, None),
    ] {
        let d = t.join(dir);
        sys(fs::create_dir(&d), || format!("creating {}", d.display()))?;
        fresh_fs(fs_type, source, &d, flags, data)?;
    }
    Ok(())
}

/// Mounts a fresh filesystem of `fs_type` at `t`.
fn fresh_fs(
    fs_type: &str,
    source: &str,
    t: &Path,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), HelperError> {
    sys(
        mount(Some(source), t, Some(fs_type), flags, data).map_err(io::Error::from),
        || format!("mounting {fs_type} at {}", t.display()),
    )
}

/// Hides [`super::sandbox::MASKED_PATHS`] and makes
/// [`super::sandbox::READONLY_PATHS`] read-only, below `root` (pid 1 calls it once
/// `/proc` is mounted; `/dev/null` comes from the sandbox's `/dev`). Paths this
/// kernel does not have are skipped.
fn mask_paths(root: &Path) -> Result<(), String> {
    use super::sandbox::{MASKED_PATHS, READONLY_PATHS};
    let null = in_root(root, Path::new("/dev/null"));
    for p in MASKED_PATHS {
        let t = in_root(root, Path::new(p));
        let Ok(meta) = fs::symlink_metadata(&t) else {
            continue;
        };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &t,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=0555"),
            )
        } else {
            mount(
                Some(&null),
                &t,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(|e| format!("masking {p}: {e}"))?;
    }
    for p in READONLY_PATHS {
        let t = in_root(root, Path::new(p));
        if fs::symlink_metadata(&t).is_err() {
            continue;
        }
        mount(
            Some(&t),
            &t,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("binding {p} for read-only: {e}"))?;
        make_readonly(&t).map_err(|e| match e {
            HelperError::Sys { step, source } => format!("{step}: {source}"),
            e => e.to_string(),
        })?;
    }
    Ok(())
}
