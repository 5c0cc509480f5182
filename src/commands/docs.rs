//! `gentree-fs completions` and `gentree-fs man`: shell completions and man pages,
//! generated from the clap definitions so they always match `--help`.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use super::CmdResult;
use crate::cli::Cli;

/// Prints the completion script for `shell` to standard output.
pub fn completions(shell: clap_complete::Shell) -> CmdResult {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "gentree-fs", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Writes `gentree-fs.1` and `gentree-fs-<sub>.1` for every visible subcommand.
pub fn man_pages(dir: &Path) -> CmdResult {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| format!("cannot write man pages into {}: {e}", dir.display()))?;
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        // Hidden internal subcommands get no page.
        if name.starts_with("gentree-fs-__") {
            let _ = std::fs::remove_file(e.path());
        } else if name.starts_with("gentree-fs") && name.ends_with(".1") {
            n += 1;
        }
    }
    eprintln!("wrote {n} man pages into {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
