//! `gentree-fs import-seed`.

use super::CmdResult;
use crate::cli::ImportSeedArgs;

pub fn run(_args: &ImportSeedArgs) -> CmdResult {
    Err("`import-seed` is not implemented yet".into())
}
