//! What the unit tests share: the one way a unit test skips.

/// Reports that this machine cannot run unit test `test` (`why`): under CI (`CI` set),
/// which has every capability the tests need, a failure; elsewhere a loud skip, after
/// which the caller returns.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("{test}: required capability missing in CI: {why}");
    }
    eprintln!("\n!!!! SKIPPING {test}: {why} (runs in CI, which has it) !!!!\n");
}
