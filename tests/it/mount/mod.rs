//! The gentree mount (`gentree-fs [OPTIONS] MOUNTPOINT`) through real FUSE mounts:
//! the tree without Portage, then images built on read with real Portage (the
//! [`crate::build::Fixture`] seed and test repository).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::{BASE, Fixture};
use crate::util::{self, mounted, run, run_ok, wait_until};

mod builds;
mod images;
mod lifecycle;
mod tree;

/// A foreground daemon serving `mp`, its stderr kept in a file; unmounted on drop.
pub struct Daemon {
    child: Child,
    mp: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// With `--no-config` unless `cmd` sets XDG_CONFIG_HOME (then its defaults count).
    pub fn start(
        mut cmd: Command,
        conf: &Path,
        configs: &Path,
        mp: &Path,
        scratch: &Path,
    ) -> Daemon {
        fs::create_dir_all(mp).unwrap();
        if !cmd.get_envs().any(|(k, _)| k == "XDG_CONFIG_HOME") {
            cmd.arg("--no-config");
        }
        let stderr = scratch.join(format!(
            "daemon-{}.err",
            mp.file_name().unwrap().to_string_lossy()
        ));
        let child = cmd
            .args(["-f", "--conf-root"])
            .arg(conf)
            .arg("--configs")
            .arg(configs)
            .arg(mp)
            .stdin(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            mp: mp.to_path_buf(),
            stderr,
        };
        wait_until("the mount", Duration::from_secs(20), || mounted(mp));
        d
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn jobs(&self) -> usize {
        self.log().matches(": build job ").count()
    }

    /// Unmounts with fusermount3 and waits for the daemon to exit.
    pub fn stop(mut self) {
        run_ok(Command::new("fusermount3").arg("-u").arg(&self.mp));
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "daemon exit {st}:\n{}", self.log());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon still running after unmount:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!mounted(&self.mp), "mount left behind");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if mounted(&self.mp) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mp)
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Root and /dev/fuse, which the mount tests below need (loud skip, CI panics).
fn root_and_fuse(test: &str) -> bool {
    util::require_root(test) && util::require_fuse(test)
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn xattr_str(p: &Path, name: &str) -> Option<String> {
    xattr::get(p, name)
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// A conf root with a fake seed (no Portage): enough for the tree itself.
fn plain_conf(dir: &Path) -> (PathBuf, PathBuf) {
    let conf = dir.join("conf");
    fs::create_dir_all(conf.join("seeds/s1/etc")).unwrap();
    fs::write(conf.join("seeds/s1/etc/hostname"), "seed-one\n").unwrap();
    fs::create_dir_all(conf.join("seeds/s1.upper/etc")).unwrap();
    fs::write(conf.join("seeds/s1.upper/etc/added"), "from the upper\n").unwrap();
    let configs = dir.join("cfg");
    fs::create_dir_all(&configs).unwrap();
    (conf, configs)
}

/// Command lines of live processes that mention `needle` (to check nothing is left).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                v.push(c);
            }
        }
    }
    v
}
