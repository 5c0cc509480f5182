//! Choosing the user-namespace id mapping for a build, from who the caller is and
//! what `/etc/subuid` and `/etc/subgid` grant.
//!
//! | caller | mapping | consequence |
//! |---|---|---|
//! | root | 0..=65535 → root's range in `/etc/subuid`/`/etc/subgid`, else [`DEFAULT_ROOT_RANGE`] (written directly, root may) | root in the build is an unprivileged host id; the store is owned by the range's first id |
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

impl SubRange {
    /// One past the last id.
    pub fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.count)
    }

    fn overlaps(&self, other: &SubRange) -> bool {
        u64::from(self.start) < other.end() && u64::from(other.start) < self.end()
    }
}

/// The range a root caller maps builds to when `/etc/subuid` gives root none: high
/// above the ranges `useradd` hands out (100000 + 65536 per user), below 2^31 (ids
/// past it trip signed-id bugs), and not a range of systemd's dynamic or container
/// users. [`choose`] moves past it, 65536 ids at a time, while any user's range in
/// `/etc/subuid` or `/etc/subgid` overlaps it.
pub const DEFAULT_ROOT_RANGE: SubRange = SubRange {
    start: 1_000_000_000,
    count: WANTED_RANGE,
};

/// The mapping a namespace helper sets up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdMapping {
    /// The caller is root: ids 0.. of the namespace are the host ids `uids.start..`
    /// (and `gids.start..`), so root in a build is never the host's root. The caller
    /// writes the maps itself; the store is owned by `uids.start`/`gids.start`.
    Privileged { uids: SubRange, gids: SubRange },
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
    /// What a root caller gets without a range of its own in `/etc/subuid`.
    pub fn root_default() -> IdMapping {
        IdMapping::Privileged {
            uids: DEFAULT_ROOT_RANGE,
            gids: DEFAULT_ROOT_RANGE,
        }
    }

    /// Whether ids other than 0 exist inside the namespace.
    pub fn has_subids(&self) -> bool {
        !matches!(self, IdMapping::Single { .. })
    }

    /// The host uid and gid that root of the namespace is: the owner the store's
    /// content must have on disk for a build to read and write it.
    pub fn host_root(&self) -> (u32, u32) {
        match self {
            IdMapping::Privileged { uids, gids } => (uids.start, gids.start),
            IdMapping::Single { uid, gid } | IdMapping::Subordinate { uid, gid, .. } => {
                (*uid, *gid)
            }
        }
    }

    /// How a tree unpacked into the store keeps its owners (a seed import, a layer
    /// pulled from the cache): recorded, and owned on disk by the build range's
    /// first ids when the caller is root.
    pub fn store_owners(&self) -> crate::layers::seed::Owners {
        match self {
            IdMapping::Privileged { .. } => {
                let (uid, gid) = self.host_root();
                crate::layers::seed::Owners::RecordAs { uid, gid }
            }
            _ => crate::layers::seed::Owners::Record,
        }
    }

    /// The `uid_map` and `gid_map` lines a root caller writes itself.
    pub fn privileged_maps(&self) -> Option<(String, String)> {
        match self {
            IdMapping::Privileged { uids, gids } => Some((
                format!("0 {} {}", uids.start, uids.count),
                format!("0 {} {}", gids.start, gids.count),
            )),
            _ => None,
        }
    }

    /// One line saying what ids the namespace has, for the sandbox's log line.
    pub fn describe(&self) -> String {
        match self {
            IdMapping::Privileged { uids, gids } => format!(
                "uids 0-{} -> host {}-{}, gids 0-{} -> host {}-{}",
                uids.count - 1,
                uids.start,
                uids.end() - 1,
                gids.count - 1,
                gids.start,
                gids.end() - 1
            ),
            IdMapping::Single { uid, gid } => format!("uid 0 -> host {uid}, gid 0 -> host {gid}"),
            IdMapping::Subordinate {
                uid,
                gid,
                uids,
                gids,
            } => format!(
                "uid 0 -> host {uid}, 1-{} -> host {}-{}; gid 0 -> host {gid}, 1-{} -> host {}-{}",
                uids.count,
                uids.start,
                uids.end() - 1,
                gids.count,
                gids.start,
                gids.end() - 1
            ),
        }
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

/// Every `name:start:count` entry of subuid/subgid text, in file order; comments and
/// malformed lines are ignored, as shadow's tools do.
fn entries(contents: &str) -> impl Iterator<Item = (&str, SubRange)> + '_ {
    contents.lines().filter_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let mut it = line.split(':');
        let (who, start, count) = (it.next()?, it.next()?, it.next()?);
        Some((
            who,
            SubRange {
                start: start.trim().parse().ok()?,
                count: count.trim().parse().ok()?,
            },
        ))
    })
}

/// Finds the first range for `user` (by name or numeric id) in subuid/subgid text.
/// The count is capped at [`WANTED_RANGE`].
pub fn find_range(contents: &str, user: &str, id: u32) -> Option<SubRange> {
    let id = id.to_string();
    entries(contents).find_map(|(who, r)| {
        ((who == user || who == id) && r.count > 0).then_some(SubRange {
            start: r.start,
            count: r.count.min(WANTED_RANGE),
        })
    })
}

/// Every range in subuid and subgid text, whoever holds it.
fn taken_ranges(subuid: Option<&str>, subgid: Option<&str>) -> Vec<SubRange> {
    [subuid, subgid]
        .into_iter()
        .flatten()
        .flat_map(|text| entries(text).map(|(_, r)| r))
        .collect()
}

/// The first [`WANTED_RANGE`] ids at `base` or above, on a 65536-id boundary counted
/// from `base` (as `useradd` places ranges), that overlap no range in `taken`; never
/// past 2^31.
pub fn first_free(base: u32, taken: &[SubRange]) -> SubRange {
    let mut r = SubRange {
        start: base,
        count: WANTED_RANGE,
    };
    let step = u64::from(WANTED_RANGE);
    while let Some(t) = taken.iter().find(|t| r.overlaps(t)) {
        // Jump past the range in the way (it ends above r.start >= base).
        let next = u64::from(base) + (t.end() - u64::from(base)).div_ceil(step) * step;
        match u32::try_from(next) {
            Ok(n) if n <= u32::MAX / 2 => r.start = n,
            _ => break,
        }
    }
    r
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
        let own = (
            subuid.and_then(|s| find_range(s, user, 0)),
            subgid.and_then(|s| find_range(s, user, 0)),
        );
        if let (Some(uids), Some(gids)) = own {
            if uids.count == WANTED_RANGE && gids.count == WANTED_RANGE {
                return IdMapping::Privileged { uids, gids };
            }
        }
        // One default range for both, clear of every user's uid and gid ranges.
        let r = first_free(DEFAULT_ROOT_RANGE.start, &taken_ranges(subuid, subgid));
        return IdMapping::Privileged { uids: r, gids: r };
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

/// The first 65536 ids from 100000 up (where `useradd` starts) that no range in
/// `/etc/subuid` or `/etc/subgid` holds: the range to suggest to a user without one.
pub fn free_range(subuid: Option<&str>, subgid: Option<&str>) -> SubRange {
    first_free(100_000, &taken_ranges(subuid, subgid))
}

/// The once-per-run warning for the single-id fallback, saying how to fix it with a
/// range (`free`, from [`free_range`]) that no other user holds.
pub fn single_mapping_warning(user: &str, free: SubRange) -> String {
    let (a, b) = (free.start, free.end() - 1);
    format!(
        "no subordinate id range for user {user} in /etc/subuid and /etc/subgid: \
         builds run with only root mapped, so Portage runs as root and files cannot be \
         owned by other users in the image. Add a range with \
         `sudo usermod --add-subuids {a}-{b} --add-subgids {a}-{b} {user}`"
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
    fn root_maps_to_its_range_or_a_free_default() {
        // No range for root: the default, which nobody here holds.
        assert_eq!(
            choose(0, 0, "root", Some(SUBUID), Some(SUBUID)),
            IdMapping::Privileged {
                uids: DEFAULT_ROOT_RANGE,
                gids: DEFAULT_ROOT_RANGE
            }
        );
        assert_eq!(
            choose(0, 0, "root", None, None).host_root(),
            (1_000_000_000, 1_000_000_000)
        );
        // Root's own range, when it is a full one.
        let with_root = format!("{SUBUID}root:500000:65536\n");
        let m = choose(0, 0, "root", Some(&with_root), Some(&with_root));
        assert_eq!(m.host_root(), (500000, 500000));
        assert_eq!(
            m.privileged_maps(),
            Some(("0 500000 65536".into(), "0 500000 65536".into()))
        );
        assert!(m.map_args().is_none(), "root writes its maps itself");
        // A user's range overlapping the default pushes it up, clear of both files.
        let clash = "eve:999990000:10065536\n";
        let m = choose(0, 0, "root", Some(clash), None);
        let (start, _) = m.host_root();
        assert!(start as u64 >= 999_990_000 + 10_065_536, "{start}");
        assert_eq!(start % WANTED_RANGE, 1_000_000_000 % WANTED_RANGE);
        // The log line names the host range.
        assert!(
            choose(0, 0, "root", None, None)
                .describe()
                .contains("host 1000000000-1000065535")
        );
    }

    #[test]
    fn choose_table() {
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
        let free = free_range(Some(SUBUID), Some("x:100000:65536\n"));
        let w = single_mapping_warning("alice", free);
        assert!(w.contains("alice") && w.contains("usermod --add-subuids"));
        // 100000-165535 and 200000-... are taken (alice, bob): the next free block.
        assert_eq!(free.start, 100_000 + 2 * 65536, "{w}");
        assert!(w.contains("--add-subuids 231072-296607"), "{w}");
        // Nothing taken: useradd's first range.
        assert_eq!(free_range(None, None).start, 100_000);
        // A range reaching past 2^31 leaves the last candidate, not an endless loop.
        let huge = [SubRange {
            start: 100_000,
            count: u32::MAX - 100_000,
        }];
        assert!(first_free(100_000, &huge).start <= u32::MAX / 2);
    }
}
