//! `gentree-fs config`.

use super::CmdResult;
use crate::cli::ConfigArgs;

pub fn run(_args: &ConfigArgs) -> CmdResult {
    Err("`config` is not implemented yet".into())
}
