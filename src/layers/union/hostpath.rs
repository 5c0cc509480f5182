//! Host paths of union entries that may be longer than `PATH_MAX`.
//!
//! The union names a layer's entry by the layer root joined with the merged path. A
//! merged tree may be as deep as any filesystem allows (each component under
//! `NAME_MAX`, the whole unbounded), so that join can exceed `PATH_MAX` and every path
//! system call on it fails with ENAMETOOLONG, although the user reached it with
//! relative paths. Such a path is shortened here: its leading directories are opened
//! one chunk at a time (`openat`, `O_PATH`), and the rest is named through the last
//! one's `/proc/self/fd/N` link, which every path system call follows. The directory
//! stays open as long as the [`HostPath`] lives, so the number cannot be reused.
//! Without `/proc` (never the case for the daemon so far) such paths fail with ENOENT.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
#[cfg(test)]
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;

/// Paths up to this length are used as they are; longer ones are shortened so that
/// what follows the directory link stays under it too (`PATH_MAX` is 4096 with the NUL).
const LIMIT: usize = 3072;

/// A path on the host, usable with any path system call while this value lives.
#[derive(Debug, Clone)]
pub struct HostPath {
    path: PathBuf,
    /// The directory `path` starts from (`/proc/self/fd/N/...`), when shortened.
    dir: Option<Arc<OwnedFd>>,
}

impl AsRef<Path> for HostPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl HostPath {
    /// `root` joined with the relative path `rel`, shortened when too long.
    pub fn new(root: &Path, rel: &Path) -> HostPath {
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        shorten(path)
    }

    /// The path as given to system calls (valid while `self` lives).
    pub fn as_path(&self) -> &Path {
        &self.path
    }

    /// This path joined with a relative path `rel` (a name, usually).
    pub fn join(&self, rel: impl AsRef<Path>) -> HostPath {
        let path = self.path.join(rel);
        if self.dir.is_none() || path.as_os_str().len() > LIMIT {
            return shorten(path);
        }
        HostPath {
            path,
            dir: self.dir.clone(),
        }
    }

    /// The parent directory, if any.
    pub fn parent(&self) -> Option<HostPath> {
        let parent = self.path.parent()?.to_path_buf();
        Some(HostPath {
            path: parent,
            dir: self.dir.clone(),
        })
    }
}

/// Shortens `path` when it is longer than [`LIMIT`]. When a leading directory cannot be
/// opened, the result names the failing component and stops right after it, so system
/// calls fail with that component's error (ENOENT, ENOTDIR, EACCES) as they would on
/// the full path were it not too long.
fn shorten(path: PathBuf) -> HostPath {
    if path.as_os_str().len() <= LIMIT {
        return HostPath { path, dir: None };
    }
    let parts: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir: Option<OwnedFd> = None;
    let mut i = 0;
    // The remaining components, joined, must fit under LIMIT after the fd link.
    while remaining_len(&parts[i..]) > LIMIT - 32 {
        // Open as many whole components as fit in one chunk.
        let mut chunk = OsString::new();
        let start = i;
        while i < parts.len() - 1 && chunk.len() + parts[i].len() < LIMIT {
            if !chunk.is_empty() || dir.is_none() {
                chunk.push("/");
            }
            chunk.push(parts[i]);
            i += 1;
        }
        if i == start {
            break;
        }
        let chunk = PathBuf::from(chunk);
        let opened = match &dir {
            None => open(&chunk, flags, Mode::empty()),
            Some(d) => openat(d, &chunk, flags, Mode::empty()),
        };
        match opened {
            Ok(fd) => dir = Some(fd),
            Err(_) => {
                // Name the chunk's components one by one from the last good directory,
                // up to the one that fails, and stop there.
                return failing_path(dir, &parts[start..i]);
            }
        }
    }
    let Some(dir) = dir else {
        return HostPath { path, dir: None };
    };
    let mut rest = fd_link(&dir);
    for p in &parts[i..] {
        rest.push(p);
    }
    HostPath {
        path: rest,
        dir: Some(Arc::new(dir)),
    }
}

fn remaining_len(parts: &[&OsStr]) -> usize {
    parts.iter().map(|p| p.len() + 1).sum()
}

fn fd_link(dir: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// A path through `dir` (or from `/`) that walks `parts` until the first component
/// that cannot be opened as a directory, ending with that component and a dummy name.
fn failing_path(dir: Option<OwnedFd>, parts: &[&OsStr]) -> HostPath {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = dir;
    for p in parts {
        let opened = match &dir {
            None => open(&Path::new("/").join(p), flags, Mode::empty()),
            Some(d) => openat(d, *p, flags, Mode::empty()),
        };
        match opened {
            Ok(fd) => dir = Some(fd),
            Err(_) => {
                let mut path = match &dir {
                    Some(d) => fd_link(d),
                    None => PathBuf::from("/"),
                };
                path.push(p);
                path.push("x");
                return HostPath {
                    path,
                    dir: dir.map(Arc::new),
                };
            }
        }
    }
    // Every component opened after all (a race): name the last one.
    let path = dir.as_ref().map_or_else(|| PathBuf::from("/"), fd_link);
    HostPath {
        path,
        dir: dir.map(Arc::new),
    }
}

/// Bytes of a path, for tests.
#[cfg(test)]
fn len(p: &Path) -> usize {
    p.as_os_str().as_bytes().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn long_paths_are_reached_through_a_directory_link() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = fs::canonicalize(t.path()).expect("canonical");
        // 40 levels of 200-byte names: 8 KB, twice PATH_MAX.
        let name = "d".repeat(200);
        let mut rel = PathBuf::new();
        for _ in 0..40 {
            rel.push(&name);
            let hp = HostPath::new(&root, &rel);
            fs::create_dir(hp.as_path()).expect("mkdir through the short path");
        }
        let hp = HostPath::new(&root, &rel);
        assert!(len(hp.as_path()) <= LIMIT, "{}", len(hp.as_path()));
        fs::write(hp.join("f").as_path(), b"deep").expect("write");
        assert_eq!(
            fs::read(HostPath::new(&root, &rel.join("f")).as_path()).expect("read"),
            b"deep"
        );
        assert!(hp.parent().expect("parent").as_path().join(&name).is_dir());
        // A missing component fails with ENOENT, a file as a directory with ENOTDIR.
        let missing = HostPath::new(&root, &rel.join("nope").join(&name).join("x"));
        let e = fs::symlink_metadata(missing.as_path()).expect_err("missing");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let deeper: PathBuf = std::iter::repeat_n(name.as_str(), 20).collect();
        let notdir = HostPath::new(&root, &rel.join("f").join(&deeper));
        let e = fs::symlink_metadata(notdir.as_path()).expect_err("not a dir");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        // Short paths stay as they are.
        let short = HostPath::new(&root, Path::new("a/b"));
        assert_eq!(short.as_path(), root.join("a/b"));
    }
}
