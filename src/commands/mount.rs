//! `gentree-fs [OPTIONS] MOUNTPOINT`: mount the gentree tree ([`crate::mount::tree`]).
//!
//! Foreground and background (re-exec) handling: [`super::daemon`].

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{CmdResult, daemon};
use crate::builder::config::{DefaultSources, Defaults};
use crate::cli::MountArgs;
use crate::fs::FuseOptions;
use crate::fs::Mounted;
use crate::fs::mount::{TreeMountError, TreeMountSpec, session};
use crate::layers::layout::ConfRoot;
use crate::mount::images::{BuildEnv, Images};
use crate::mount::tree::{GentreeFs, TreeSpec};

/// The `-o` options: who may use the mount, and mount(8)/FUSE options for fuser.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    allow_other: bool,
    allow_root: bool,
    mount: FuseOptions,
}

/// The options `-o` takes besides allow_other/allow_root (named in the error).
const KNOWN: &str = "allow_other, allow_root, ro, rw, dev, nodev, suid, nosuid, exec, noexec, \
                     atime, noatime, sync, async, dirsync, auto_unmount, default_permissions, \
                     fsname=NAME, subtype=NAME";

fn parse_options(groups: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    for opt in groups
        .iter()
        .flat_map(|g| g.split(','))
        .filter(|s| !s.is_empty())
    {
        match opt {
            "allow_other" => o.allow_other = true,
            "allow_root" => o.allow_root = true,
            other if o.mount.add(other) => {}
            other => return Err(format!("unknown mount option {other:?} (known: {KNOWN})")),
        }
    }
    if o.mount.auto_unmount() && !o.allow_other && !o.allow_root {
        return Err("mount option auto_unmount needs allow_other or allow_root \
                    (fusermount3 cannot watch an owner-only mount)"
            .into());
    }
    Ok(o)
}

pub fn run(args: &MountArgs) -> CmdResult {
    let mountpoint = args
        .mountpoint
        .clone()
        .ok_or("no mountpoint given (gentree-fs [OPTIONS] MOUNTPOINT)")?;
    let opts = parse_options(&args.options)?;
    check_mountpoint(&mountpoint)?;
    let mountpoint = std::fs::canonicalize(&mountpoint)
        .map_err(|e| format!("cannot use mountpoint {}: {e}", mountpoint.display()))?;
    // Absolute: the daemon's paths must not depend on where it was started.
    let conf_root = std::path::absolute(match &args.conf_root {
        Some(d) => d.clone(),
        None => super::default_conf_root()?,
    })?;
    let configs = std::path::absolute(
        args.configs
            .clone()
            .unwrap_or_else(|| ConfRoot::new(&conf_root).configs()),
    )?;
    if !args.foreground {
        // Report what we can here, before starting a daemon.
        prepare_dirs(&conf_root, &configs)?;
        return daemon::spawn_daemon(None, "mount");
    }
    let fg = daemon::Foreground::start()?;
    let (seeds, work) = prepare_dirs(&conf_root, &configs)?;
    // Scratch dirs of builds a crashed daemon (or `build`) ran.
    crate::builder::crash::remove_dead_run_dirs(&ConfRoot::new(&conf_root).run());
    let sources = if args.no_config {
        DefaultSources::none()
    } else {
        DefaultSources::from_env()
    };
    let mapping = super::sandbox_mapping(&conf_root)?;
    let images = Images::new(BuildEnv {
        conf_root: conf_root.clone(),
        configs: configs.clone(),
        defaults: Defaults::load(&sources)?,
        mapping,
        cache: args.cache.clone(),
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    });
    let tree = GentreeFs::new(
        TreeSpec {
            seeds,
            configs: configs.clone(),
            configs_work: work,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        },
        images.clone(),
    )
    .map_err(|source| TreeMountError::Configs {
        configs: configs.clone(),
        source,
    })?;
    let spec = TreeMountSpec {
        mountpoint: mountpoint.clone(),
        allow_other: opts.allow_other,
        allow_root: opts.allow_root,
        options: opts.mount,
        threads: args.threads,
        image_files: !args.no_image_files,
    };
    let Mounted { session, unmounter } = match session(tree, &spec) {
        Ok(m) => m,
        Err(TreeMountError::Mount { source, .. }) if daemon::unmounted_early(&source) => {
            return daemon::gone_before_ready(&mountpoint);
        }
        Err(e) => return Err(e.into()),
    };
    fg.unmount_on_signal(mountpoint.clone(), unmounter)?;
    tracing::info!("gentree mounted on {}", mountpoint.display());
    hint_empty(
        &crate::builder::build::HostDirs::plain(&conf_root).seeds,
        &configs,
        &mountpoint,
    );
    let served = session.run();
    // Unmounted (or the session failed): no build may outlive the daemon.
    images.shutdown(std::time::Duration::from_secs(30));
    match served {
        Err(e) if daemon::unmounted_early(&e) => daemon::gone_before_ready(&mountpoint),
        Err(e) => Err(e.into()),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

/// Creates the seeds and configs dirs and the configs union's scratch dir (on the
/// configs dir's filesystem, else none: creating configs then fails with EROFS).
fn prepare_dirs(
    conf_root: &Path,
    configs: &Path,
) -> Result<(PathBuf, Option<PathBuf>), Box<dyn std::error::Error + Send + Sync>> {
    let layout = ConfRoot::new(conf_root);
    let (seeds, work) = (layout.seeds(), layout.configs_work());
    for d in [&seeds, configs, &work] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let work = (dev(&work) == dev(configs)).then_some(work);
    if work.is_none() {
        tracing::warn!(
            "{} is on another filesystem than {}: configs/ cannot take new files",
            configs.display(),
            conf_root.display()
        );
    }
    Ok((seeds, work))
}

/// A stale mount, a live one or a non-empty mountpoint, with what to do about it.
fn check_mountpoint(mp: &Path) -> Result<(), String> {
    match std::fs::read_dir(mp) {
        Ok(mut d) => {
            let live = std::fs::canonicalize(mp).ok().and_then(|c| {
                let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
                mounted_type(&info, &c)
            });
            if let Some(fs_type) = live {
                return Err(format!(
                    "{} is already mounted ({fs_type}): unmount it first with \
                     `fusermount3 -u {}` (or `umount`), or choose another mountpoint",
                    mp.display(),
                    mp.display()
                ));
            }
            if d.next().is_some() {
                return Err(format!(
                    "mountpoint {} is not empty: use an empty directory",
                    mp.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(format!(
            "{} is a stale mount (transport endpoint is not connected): \
             run `fusermount3 -u {}` first",
            mp.display(),
            mp.display()
        )),
        Err(e) => Err(format!("cannot use mountpoint {}: {e}", mp.display())),
    }
}

/// The filesystem type of the topmost mount at `mp` in `/proc/self/mountinfo` text
/// (mount point is field 5, octal-escaped; the type follows the ` - ` separator).
fn mounted_type(mountinfo: &str, mp: &Path) -> Option<String> {
    let want = crate::fs::mountinfo_path(mp)?;
    mountinfo.lines().rev().find_map(|l| {
        let point = l.split(' ').nth(4)?;
        let fs_type = l.split(" - ").nth(1)?.split(' ').next()?;
        (point == want).then(|| fs_type.to_owned())
    })
}

/// Says in the log how to give an empty mount something to build.
fn hint_empty(seeds: &Path, configs: &Path, mountpoint: &Path) {
    let empty = |d: &Path, ext: Option<&str>| {
        std::fs::read_dir(d).map_or(true, |r| {
            !r.filter_map(Result::ok).any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.')
                    && ext.is_none_or(|x| name.ends_with(x))
                    && !name.ends_with(".upper")
                    && !name.ends_with(".work")
            })
        })
    };
    if empty(seeds, None) {
        tracing::warn!(
            "no seed in {}: import one with `gentree-fs import-seed STAGE3.tar.xz NAME` \
             (the same --conf-root), then name it in a config's `seed = \"NAME\"`",
            seeds.display()
        );
    }
    if empty(configs, Some(".toml")) {
        tracing::warn!(
            "no build config in {}: add one with `cp app.toml {}/configs/`, then \
             `cp {}/builds/app.tar .` builds it",
            configs.display(),
            mountpoint.display(),
            mountpoint.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_the_live_mount_and_its_type() {
        let info = "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                    40 22 0:41 / /tmp/my\\040tree rw,nosuid - fuse.gentree-fs gentree rw\n\
                    41 22 0:42 / /tmp/x rw - tmpfs tmpfs rw\n\
                    42 41 0:43 / /tmp/x rw - fuse fuse rw\n";
        assert_eq!(
            mounted_type(info, Path::new("/tmp/my tree")).as_deref(),
            Some("fuse.gentree-fs")
        );
        assert_eq!(
            mounted_type(info, Path::new("/tmp/x")).as_deref(),
            Some("fuse")
        );
        assert_eq!(mounted_type(info, Path::new("/tmp")), None);
    }

    #[test]
    fn options_parse_and_reject_unknown_ones() {
        assert_eq!(parse_options(&[]), Ok(Options::default()));
        let o = parse_options(&["allow_other".into(), "allow_root,".into()]).unwrap_or_default();
        assert!(o.allow_other && o.allow_root && o.mount.is_empty());
        let o = parse_options(&[
            "ro,nodev,nosuid,noexec,noatime".into(),
            "fsname=mine,subtype=tree,default_permissions".into(),
        ])
        .unwrap_or_default();
        let mut want = FuseOptions::default();
        for w in
            "ro nodev nosuid noexec noatime fsname=mine subtype=tree default_permissions".split(' ')
        {
            assert!(want.add(w), "{w}");
        }
        assert_eq!(o.mount, want);
        for bad in ["rw,bogus", "fsname=", "subtype", "kernel_cache"] {
            let e = parse_options(&[bad.into()]).err().unwrap_or_default();
            let name = bad.rsplit(',').next().unwrap_or(bad);
            assert!(e.contains(&format!("{name:?}")), "{bad}: {e}");
        }
        let e = parse_options(&["auto_unmount".into()])
            .err()
            .unwrap_or_default();
        assert!(e.contains("allow_other"), "{e}");
        assert!(parse_options(&["auto_unmount,allow_root".into()]).is_ok());
    }
}
