//! The build epoch: the one time a build may write into a layer.
//!
//! Chosen, in order: `SOURCE_DATE_EPOCH` from the environment; the top config's
//! `source_date_epoch` key (a gentree-fs key: genTree ignores unknown keys, so a
//! config that sets it still loads there); else the newest mtime of a file in the
//! seed ([`crate::layers::seed::identity`]), which is a function of the seed's
//! content, so two machines with the same stage3 agree without configuration.
//!
//! The epoch is exported to every Portage command as `SOURCE_DATE_EPOCH` (gzip,
//! Python, many build systems honour it), every mtime newer than it is clamped to it
//! in the layer after the build ([`crate::layers::normalize`]), and it is part of
//! every layer key.

/// Where the epoch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Env,
    Config,
    Seed,
}

/// The epoch of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    pub secs: i64,
    pub source: Source,
}

/// Picks the epoch (see the module doc). `env` is `SOURCE_DATE_EPOCH`'s value.
pub fn resolve(
    env: Option<&str>,
    config: Option<i64>,
    seed_newest_mtime: i64,
) -> Result<Epoch, String> {
    if let Some(v) = env.map(str::trim).filter(|v| !v.is_empty()) {
        return match v.parse::<i64>() {
            Ok(secs) if secs >= 0 => Ok(Epoch {
                secs,
                source: Source::Env,
            }),
            _ => Err(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a non-negative number of seconds: unset it or fix it"
            )),
        };
    }
    Ok(match config {
        Some(secs) => Epoch {
            secs,
            source: Source::Config,
        },
        None => Epoch {
            secs: seed_newest_mtime.max(0),
            source: Source::Seed,
        },
    })
}

/// [`resolve`] with the process environment.
pub fn from_env(config: Option<i64>, seed_newest_mtime: i64) -> Result<Epoch, String> {
    let env = std::env::var("SOURCE_DATE_EPOCH").ok();
    resolve(env.as_deref(), config, seed_newest_mtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_then_config_then_seed() {
        let e = |env, cfg| resolve(env, cfg, 1234).map(|e| (e.secs, e.source));
        assert_eq!(e(Some("99"), Some(5)), Ok((99, Source::Env)));
        assert_eq!(e(Some(" 99\n"), None), Ok((99, Source::Env)));
        assert_eq!(e(Some(""), Some(5)), Ok((5, Source::Config)));
        assert_eq!(e(None, Some(5)), Ok((5, Source::Config)));
        assert_eq!(e(None, None), Ok((1234, Source::Seed)));
        for bad in ["x", "-1", "1.5"] {
            let err = e(Some(bad), None).unwrap_err();
            assert!(err.contains("SOURCE_DATE_EPOCH"), "{err}");
        }
    }
}
