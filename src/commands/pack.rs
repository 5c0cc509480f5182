//! `gentree-fs pack`.

use super::CmdResult;
use crate::cli::PackArgs;

pub fn run(_args: &PackArgs) -> CmdResult {
    Err("`pack` is not implemented yet".into())
}
