//! The `gentree-fs` binary: parse, set up logging, dispatch. No domain logic here.

use std::process::ExitCode;

use clap::Parser;
use gentree_fs::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    gentree_fs::commands::init_logging(cli.debug);
    match gentree_fs::commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            gentree_fs::commands::report_error(e.as_ref());
            ExitCode::FAILURE
        }
    }
}
