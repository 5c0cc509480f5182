//! The one integration-test binary (one link, many modules). Each module tests one
//! command or subsystem through the built `gentree-fs` binary and real tools.

mod union_diff;
mod util;
