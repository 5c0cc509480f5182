//! The tree both FUSE floors (`fuse_floor`, `uring_floor`) serve: one host directory
//! loaded into memory at mount, every name, attribute and symlink target, so their
//! requests are answered from a table and cost only what FUSE itself costs.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One entry of the preloaded tree; its inode number is its index + 1 (root: 1).
/// `A` is its attributes in the form the floor replies with.
#[derive(Debug)]
pub struct Node<A> {
    pub parent: u64,
    pub host: PathBuf,
    pub attr: A,
    /// Directories: entries in listing order, and the same by name.
    pub children: Vec<(OsString, u64)>,
    pub by_name: HashMap<OsString, u64>,
    /// Symlinks: the target.
    pub target: Option<PathBuf>,
}

/// An error that names the host path it happened on, keeping the OS error.
pub fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Loads the whole tree under `root` (names, lstat attributes, symlink targets);
/// `attr` makes a node's attributes from its inode number and lstat.
pub fn preload<A>(root: &Path, attr: impl Fn(u64, &Metadata) -> A) -> io::Result<Vec<Node<A>>> {
    let meta = std::fs::symlink_metadata(root).map_err(at(root))?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{}: not a directory", root.display()),
        ));
    }
    let mut nodes = vec![Node {
        parent: 1,
        host: root.to_path_buf(),
        attr: attr(1, &meta),
        children: Vec::new(),
        by_name: HashMap::new(),
        target: None,
    }];
    let mut dirs = vec![0usize];
    while let Some(d) = dirs.pop() {
        let dir = nodes[d].host.clone();
        let mut names: Vec<OsString> = std::fs::read_dir(&dir)
            .map_err(at(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(at(&dir))?;
        names.sort();
        for name in names {
            let host = dir.join(&name);
            let m = std::fs::symlink_metadata(&host).map_err(at(&host))?;
            let ino = nodes.len() as u64 + 1;
            let target = if m.file_type().is_symlink() {
                Some(std::fs::read_link(&host).map_err(at(&host))?)
            } else {
                None
            };
            if m.is_dir() {
                dirs.push(nodes.len());
            }
            nodes.push(Node {
                parent: d as u64 + 1,
                host,
                attr: attr(ino, &m),
                children: Vec::new(),
                by_name: HashMap::new(),
                target,
            });
            nodes[d].children.push((name.clone(), ino));
            nodes[d].by_name.insert(name, ino);
        }
    }
    Ok(nodes)
}

/// A floor's `main`: usage (exit 2) when `parse` fails, else `run`, whose error is
/// printed after the program's `name` (exit 1).
pub fn main<A>(
    name: &str,
    parse: impl FnOnce() -> Result<A, String>,
    run: impl FnOnce(A) -> io::Result<()>,
) -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(usage) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
