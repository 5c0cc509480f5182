//! `gentree-fs union`.

use super::CmdResult;
use crate::cli::UnionArgs;

pub fn run(_args: &UnionArgs) -> CmdResult {
    Err("`union` is not implemented yet".into())
}
