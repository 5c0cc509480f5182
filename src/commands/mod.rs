//! One function per subcommand: resolve raw flags into settings, call the library,
//! print. Errors bubble up to [`report_error`], which prints the whole cause chain.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub mod build;
pub mod clean_builds;
pub mod config;
pub mod daemon;
pub mod docs;
pub mod exec;
pub mod import_seed;
pub mod init_crossdev;
pub mod mount;
pub mod namespace;
pub mod pack;
pub mod serve;
pub mod union;
pub mod update_seed;

/// What a command returns: an exit code, or an error for [`report_error`].
pub type CmdResult = Result<ExitCode, Box<dyn Error + Send + Sync>>;

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> CmdResult {
    // Re-executed processes (the background daemon, namespace helpers) start from
    // /proc/self/exe, whose name is `exe`: `pgrep gentree-fs` and `ps` must find them.
    let _ = nix::sys::prctl::set_name(c"gentree-fs");
    let Some(command) = cli.command else {
        return mount::run(&cli.mount);
    };
    match command {
        Command::Config(a) => config::run(&a),
        Command::Union(a) => union::run(&a),
        Command::Pack(a) => pack::run(&a),
        Command::ImportSeed(a) => import_seed::run(&a),
        Command::Build(a) => build::run(&a),
        Command::Exec(a) => exec::run(&a),
        Command::UpdateSeed(a) => update_seed::run(&a),
        Command::CleanBuilds(a) => clean_builds::run(&a),
        Command::InitCrossdev(a) => init_crossdev::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { dir } => docs::man_pages(&dir),
        Command::NsExec => namespace::ns_exec(),
        Command::NsRun { plan, auto_map } => namespace::ns_run(&plan, auto_map),
    }
}

/// Logging to stderr: `-d` debug, `-dd` trace; `RUST_LOG` wins when set.
pub fn init_logging(debug: u8) {
    use tracing_subscriber::EnvFilter;
    // fuser logs every mount, unimplemented request and reply to an interrupted
    // request (ENOENT from /dev/fuse, normal when a build kills a process): noise.
    let default = match debug {
        0 => "info,fuser=off",
        1 => "debug,fuser=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only on a terminal, and never with NO_COLOR set (no-color.org): a
    // redirected stderr and the build logs get plain text.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(debug > 0)
        .without_time()
        .try_init();
}

/// Prints `error: ...` and every underlying cause, one per line.
pub fn report_error(e: &(dyn Error + 'static)) {
    eprintln!("gentree-fs: error: {e}");
    for cause in crate::error_chain(e).skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// The defaults: embedded only with `--no-config`, else with the default files.
pub fn load_defaults(
    no_config: bool,
) -> Result<crate::builder::config::Defaults, Box<dyn Error + Send + Sync>> {
    use crate::builder::config::{DefaultSources, Defaults};
    let sources = if no_config {
        DefaultSources::none()
    } else {
        DefaultSources::from_env()
    };
    Ok(Defaults::load(&sources)?)
}

/// Root's default data directory.
pub const ROOT_CONF_ROOT: &str = "/var/lib/gentree";

/// The caller's sandbox id mapping for a command that runs seed code in
/// `conf_root`: said once when it has no subordinate ids, with the conf root made
/// private to the mapping's root (see
/// [`crate::builder::namespace::sandbox::private_store_root`]).
pub fn sandbox_mapping(
    conf_root: &std::path::Path,
) -> Result<crate::builder::namespace::IdMapping, Box<dyn Error + Send + Sync>> {
    let mapping = crate::builder::namespace::current_mapping();
    build::warn_single_mapping(&mapping);
    crate::builder::namespace::sandbox::private_store_root(conf_root, &mapping)?;
    Ok(mapping)
}

/// `--conf-root`, or the default data directory.
pub fn conf_root(arg: &Option<PathBuf>) -> Result<PathBuf, Box<dyn Error + Send + Sync>> {
    match arg {
        Some(d) => Ok(d.clone()),
        None => default_conf_root(),
    }
}

/// The data directory: `$XDG_DATA_HOME/gentree`, else for root `/var/lib/gentree`
/// (builds run as an unprivileged id range, which cannot search root's 0700 home),
/// else `~/.local/share/gentree`.
pub fn default_conf_root() -> Result<PathBuf, Box<dyn Error + Send + Sync>> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("gentree"));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from(ROOT_CONF_ROOT));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/gentree")),
        None => Err("neither XDG_DATA_HOME nor HOME is set: pass --conf-root DIR".into()),
    }
}
