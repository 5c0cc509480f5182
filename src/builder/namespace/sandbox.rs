//! What a process running seed code can reach: the sandbox every build, `exec`,
//! `update-seed`, `init-crossdev` and `serve` job runs in, as data.
//!
//! The helper ([`super::helper`]) performs it; this module says what it is, so the
//! tables are read (and tested) in one place:
//! - a user namespace always ([`super::idmap`]): root in the build is a host id of
//!   a subordinate range, with no capability over the host;
//! - mount, IPC and pid namespaces of its own;
//! - a minimal `/dev` ([`DEV_NODES`], a fresh `devpts`, `shm`, `mqueue`), as OCI
//!   runtimes build it: no host disk, `kmsg`, `kvm`, `loop*` or `mem`;
//! - a fresh `/proc` with [`MASKED_PATHS`] hidden and [`READONLY_PATHS`] read-only, as
//!   runc's defaults; the host's `/sys`, read-only down to every submount;
//! - read-only binds of what builds only read (the repositories, the config overlay,
//!   `resolv.conf`); writable binds only of the binary package dir and distfiles; the
//!   layer's and the seed's uppers are written through the union.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{IdMapping, NsMount, Plan};

/// The host device nodes bound into the sandbox's `/dev` (each `0666` on the host).
pub const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Symlinks of the sandbox's `/dev`, as OCI runtimes make them.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Paths hidden in the sandbox (a file under `/dev/null`, a directory under an
/// empty read-only tmpfs): runc's default masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths made read-only in the sandbox: runc's default read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// One line saying what the sandbox of a plan is: its ids, and which mounts are
/// read-only or writable. Logged once per run at debug level.
pub fn describe(mapping: &IdMapping, mounts: &[NsMount]) -> String {
    let mut ro = Vec::new();
    let mut rw = Vec::new();
    for m in mounts {
        match m {
            NsMount::Bind {
                target, readonly, ..
            } => {
                if *readonly {
                    ro.push(target.display().to_string())
                } else {
                    rw.push(target.display().to_string())
                }
            }
            NsMount::Union(u) => {
                let t = u.target.display().to_string();
                if u.upper.is_some() {
                    rw.push(format!("{t} (union upper)"));
                } else {
                    ro.push(format!("{t} (union)"));
                }
            }
            NsMount::Sys { target } => ro.push(target.display().to_string()),
            _ => {}
        }
    }
    format!(
        "sandbox: user namespace ({}); new mount, IPC and pid namespaces; minimal /dev ({}, \
         devpts, shm, mqueue); /proc with {} paths masked and {} read-only; read-only: {}; \
         writable: {}",
        mapping.describe(),
        DEV_NODES.join(" "),
        MASKED_PATHS.len(),
        READONLY_PATHS.len(),
        if ro.is_empty() {
            "-".to_owned()
        } else {
            ro.join(", ")
        },
        if rw.is_empty() {
            "-".to_owned()
        } else {
            rw.join(", ")
        }
    )
}

/// The host paths a plan writes outside its unions' upper content: the unions'
/// uppers and work dirs, tmpfs mount points on the host, and writable binds.
pub fn writable_host_paths(plan: &Plan) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in &plan.mounts {
        match m {
            NsMount::Union(u) => out.extend(u.upper.iter().chain(&u.work).cloned()),
            NsMount::HostTmpfs { path, .. } => out.push(path.clone()),
            NsMount::Bind {
                source, readonly, ..
            } if !*readonly && source.is_dir() => out.push(source.clone()),
            _ => {}
        }
    }
    out
}

/// The store content a plan stacks or chroots into: the lower layers of its
/// writable unions (the seed, base layers), or the seed itself when it is written in
/// place. A root caller's store holds it owned by the id range's root.
pub fn store_content_paths(plan: &Plan) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for m in &plan.mounts {
        if let NsMount::Union(u) = m {
            if u.upper.is_some() {
                out.extend(u.lowers.iter().cloned());
            }
        }
    }
    let root_is_union = plan
        .mounts
        .iter()
        .any(|m| matches!(m, NsMount::Union(u) if u.target.components().count() <= 1));
    if !root_is_union {
        out.push(plan.root.clone());
    }
    out
}

/// Before a root caller's run: creates the plan's writable host paths owned by the
/// namespace's root (the id range's first host id), so the build can write exactly
/// those; a path that exists owned by host root (made by an older version) is given
/// to it too, but never a path another user owns. Then checks that the build's ids
/// can reach what it reads, with an error naming the path when not.
pub fn prepare_host_paths(plan: &Plan) -> Result<(), SandboxError> {
    let IdMapping::Privileged { .. } = plan.mapping else {
        return Ok(());
    };
    let (uid, gid) = plan.mapping.host_root();
    for p in writable_host_paths(plan) {
        give_dir(&p, uid, gid)?;
    }
    for p in store_content_paths(plan) {
        let meta = std::fs::metadata(&p).map_err(|source| SandboxError::Io {
            path: p.clone(),
            source,
        })?;
        // An empty lower (a layer with no bases) may be anyone's.
        let empty = std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none());
        if meta.uid() != uid && !empty {
            return Err(SandboxError::Unreachable {
                path: p,
                owner: meta.uid(),
                uid,
            });
        }
    }
    Ok(())
}

/// Creates `path` and its missing parents, each new one owned by `uid:gid`; an
/// existing `path` owned by host root is chowned too.
fn give_dir(path: &Path, uid: u32, gid: u32) -> Result<(), SandboxError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SandboxError::Io { path: p, source }
    };
    let mut missing = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    std::fs::create_dir_all(path).map_err(io(path))?;
    let owned_by_root = std::fs::metadata(path).map_err(io(path))?.uid() == 0;
    if owned_by_root && missing.is_empty() {
        missing.push(path.to_path_buf());
    }
    for p in missing {
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).map_err(io(&p))?;
    }
    Ok(())
}

/// Makes the conf root private: created if missing, mode 0700 whatever the umask,
/// as containers/storage keeps its graph root, so no other user reaches a seed's or
/// layer's content (their setuid files, say). A root caller's conf root is owned by
/// the id range's root, and every directory above it must let that id search it
/// (`/root`, mode 0700, does not: root's default conf root is `/var/lib/gentree`).
pub fn private_store_root(conf_root: &Path, mapping: &IdMapping) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| SandboxError::Io {
        path: conf_root.to_path_buf(),
        source,
    };
    if let IdMapping::Privileged { .. } = mapping {
        let (uid, gid) = mapping.host_root();
        give_dir(conf_root, uid, gid)?;
        let abs = std::path::absolute(conf_root).map_err(io)?;
        for a in abs.ancestors().skip(1) {
            let m = std::fs::metadata(a).map_err(|source| SandboxError::Io {
                path: a.to_path_buf(),
                source,
            })?;
            let bit = if m.uid() == uid {
                0o100
            } else if m.gid() == gid {
                0o010
            } else {
                0o001
            };
            if m.mode() & bit == 0 {
                return Err(SandboxError::Unsearchable {
                    conf_root: conf_root.to_path_buf(),
                    dir: a.to_path_buf(),
                    uid,
                });
            }
        }
    } else {
        std::fs::create_dir_all(conf_root).map_err(io)?;
    }
    let meta = std::fs::metadata(conf_root).map_err(io)?;
    if meta.mode() & 0o077 != 0 && meta.uid() == mapping.host_root().0 {
        std::fs::set_permissions(conf_root, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Why a root caller's sandbox cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot prepare {path} for the build")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is owned by host uid {owner}, not by the build's root (host uid {uid}: root in \
         a build is never host root), so the build cannot read all of it: it was made by an older gentree-fs run as root \
         or under another /etc/subuid range for root; import the seed again with \
         `gentree-fs import-seed --force SOURCE NAME`, and remove old layers with `clean-builds`"
    )]
    Unreachable { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "the conf root {conf_root} cannot be reached by the build's ids: {dir} does not let \
         host uid {uid} (root in every build, never host root) search it. Use a conf root \
         below directories others can search, e.g. `--conf-root /var/lib/gentree`"
    )]
    Unsearchable {
        conf_root: PathBuf,
        dir: PathBuf,
        uid: u32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `path` (inside the root) is one the sandbox hides or makes read-only.
    fn is_protected(path: &Path) -> bool {
        MASKED_PATHS
            .iter()
            .chain(READONLY_PATHS)
            .any(|p| path.starts_with(p))
    }

    #[test]
    fn no_host_device_but_the_harmless_ones() {
        for bad in [
            "kmsg",
            "kvm",
            "mem",
            "port",
            "loop0",
            "loop-control",
            "sda",
            "fuse",
        ] {
            assert!(!DEV_NODES.contains(&bad), "{bad}");
        }
        assert!(is_protected(Path::new("/proc/sysrq-trigger")));
        assert!(is_protected(Path::new("/proc/sys/kernel/hostname")));
        assert!(is_protected(Path::new("/sys/firmware/efi")));
        assert!(!is_protected(Path::new("/proc/self/status")));
    }

    #[test]
    fn describe_names_ids_and_read_only_mounts() {
        let mounts = [
            NsMount::Bind {
                source: "/conf/repos".into(),
                target: "/var/db/repos".into(),
                recursive: true,
                readonly: true,
            },
            NsMount::Bind {
                source: "/conf/pkgdir".into(),
                target: "/var/cache/binpkgs".into(),
                recursive: false,
                readonly: false,
            },
            NsMount::Sys {
                target: "/sys".into(),
            },
        ];
        let d = describe(&IdMapping::root_default(), &mounts);
        assert!(d.contains("host 1000000000-1000065535"), "{d}");
        assert!(d.contains("read-only: /var/db/repos, /sys"), "{d}");
        assert!(d.contains("writable: /var/cache/binpkgs"), "{d}");
    }
}
