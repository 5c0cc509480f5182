//! Choosing the user-namespace id mapping for a build, from who the caller is and
//! what `/etc/subuid` and `/etc/subgid` grant.
//!
//! | caller | mapping | consequence |
//! |---|---|---|
//! | root | none: no user namespace | real chown works |
//! | user with subuid+subgid ranges | 0 → caller, 1..=N → the range (via `newuidmap`/`newgidmap`) | Portage's users (portage, acct-user ids) exist |
//! | user without ranges | 0 → caller only | only root exists; Portage must run as root, `chown` to other ids fails (EINVAL) |
//!
//! Pure functions over file contents, so the decision is unit-tested without
//! touching the system.

use serde::{Deserialize, Serialize};

/// How many subordinate ids a build needs at most: the conventional 65536.
pub const WANTED_RANGE: u32 = 65536;

/// A contiguous subordinate id range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRange {
    pub start: u32,
    pub count: u32,
}

/// The mapping a namespace helper sets up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdMapping {
    /// The caller is root: no user namespace at all.
    Root,
    /// 0 → the caller's uid/gid only.
    Single { uid: u32, gid: u32 },
    /// 0 → the caller, 1.. → the subordinate ranges (written by newuidmap/newgidmap).
    Subordinate {
        uid: u32,
        gid: u32,
        uids: SubRange,
        gids: SubRange,
    },
}

impl IdMapping {
    /// The host uid and gid of the namespace's root (`None` without a user namespace).
    pub fn host_root(&self) -> Option<(u32, u32)> {
        match self {
            IdMapping::Root => None,
            IdMapping::Single { uid, gid } | IdMapping::Subordinate { uid, gid, .. } => {
                Some((*uid, *gid))
            }
        }
    }

    /// Whether ids other than 0 exist inside the namespace.
    pub fn has_subids(&self) -> bool {
        !matches!(self, IdMapping::Single { .. })
    }

    /// The `newuidmap`/`newgidmap` arguments after the pid (inside, outside, count triples).
    pub fn map_args(&self) -> Option<(Vec<String>, Vec<String>)> {
        match self {
            IdMapping::Subordinate {
                uid,
                gid,
                uids,
                gids,
            } => {
                let f = |own: u32, r: &SubRange| {
                    vec![
                        "0".into(),
                        own.to_string(),
                        "1".into(),
                        "1".into(),
                        r.start.to_string(),
                        r.count.to_string(),
                    ]
                };
                Some((f(*uid, uids), f(*gid, gids)))
            }
            _ => None,
        }
    }
}

/// Finds the first range for `user` (by name or numeric id) in subuid/subgid text.
///
/// Lines are `name:start:count`; comments and malformed lines are ignored, as
/// shadow's tools do. The count is capped at [`WANTED_RANGE`].
pub fn find_range(contents: &str, user: &str, id: u32) -> Option<SubRange> {
    let id = id.to_string();
    contents.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let mut it = line.split(':');
        let (who, start, count) = (it.next()?, it.next()?, it.next()?);
        if who != user && who != id {
            return None;
        }
        let start: u32 = start.trim().parse().ok()?;
        let count: u32 = count.trim().parse().ok()?;
        (count > 0).then_some(SubRange {
            start,
            count: count.min(WANTED_RANGE),
        })
    })
}

/// Decides the mapping for a caller.
pub fn choose(
    euid: u32,
    egid: u32,
    user: &str,
    subuid: Option<&str>,
    subgid: Option<&str>,
) -> IdMapping {
    if euid == 0 {
        return IdMapping::Root;
    }
    let uids = subuid.and_then(|s| find_range(s, user, euid));
    let gids = subgid.and_then(|s| find_range(s, user, euid));
    match (uids, gids) {
        (Some(uids), Some(gids)) => IdMapping::Subordinate {
            uid: euid,
            gid: egid,
            uids,
            gids,
        },
        _ => IdMapping::Single {
            uid: euid,
            gid: egid,
        },
    }
}

/// The once-per-run warning for the single-id fallback, saying how to fix it.
pub fn single_mapping_warning(user: &str) -> String {
    format!(
        "no subordinate id range for user {user} in /etc/subuid and /etc/subgid: \
         builds run with only root mapped, so Portage runs as root and files cannot be \
         owned by other users in the image. Add a range with \
         `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBUID: &str =
        "# comment\nalice:100000:65536\nbob:200000:1000\n1001:300000:70000\nbad line\n";

    #[test]
    fn find_range_table() {
        type Case<'a> = (&'a str, u32, Option<(u32, u32)>);
        let cases: &[Case<'_>] = &[
            ("alice", 1000, Some((100000, 65536))),
            ("bob", 1002, Some((200000, 1000))),
            ("carol", 1001, Some((300000, 65536))), // by uid, capped
            ("dave", 1003, None),
        ];
        for (user, id, want) in cases {
            let got = find_range(SUBUID, user, *id).map(|r| (r.start, r.count));
            assert_eq!(got, *want, "{user}");
        }
    }

    #[test]
    fn choose_table() {
        assert_eq!(
            choose(0, 0, "root", Some(SUBUID), Some(SUBUID)),
            IdMapping::Root
        );
        assert_eq!(
            choose(1003, 1003, "dave", Some(SUBUID), Some(SUBUID)),
            IdMapping::Single {
                uid: 1003,
                gid: 1003
            }
        );
        // A uid range without a gid range is not enough.
        assert_eq!(
            choose(1000, 1000, "alice", Some(SUBUID), None),
            IdMapping::Single {
                uid: 1000,
                gid: 1000
            }
        );
        let m = choose(1000, 100, "alice", Some(SUBUID), Some(SUBUID));
        assert!(m.has_subids());
        let (u, g) = m.map_args().expect("subordinate mapping");
        assert_eq!(u, ["0", "1000", "1", "1", "100000", "65536"]);
        assert_eq!(g, ["0", "100", "1", "1", "100000", "65536"]);
    }

    #[test]
    fn warning_names_user_and_fix() {
        let w = single_mapping_warning("alice");
        assert!(w.contains("alice") && w.contains("usermod --add-subuids"));
    }
}
