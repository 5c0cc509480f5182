//! `-o` option parsing and pre-mount validation for the union.
//!
//! Option names follow kernel overlayfs and fuse-overlayfs: `lowerdir=L1:L2` (L1 is the
//! topmost lower), `upperdir=U`, `workdir=W`. Without `upperdir` the union is read-only.
//! Validation runs before mounting so that every mistake is reported with the path at fault.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Parsed union options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnionOptions {
    /// Lower layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer; `None` makes the union read-only.
    pub upper: Option<PathBuf>,
    /// Scratch dir on the upper's filesystem for atomic copy-up.
    pub work: Option<PathBuf>,
    /// Let every user (not only the mounting one) use the mount.
    pub allow_other: bool,
    /// Keep a union mounted by root to root alone (`noallow_other`): by default root
    /// gets `allow_other`, as with fuse-overlayfs (see [`UnionOptions::allows_other`]).
    pub no_allow_other: bool,
    /// Let root (besides the mounting user) use the mount.
    pub allow_root: bool,
    /// Mount read-only even with an upper layer.
    pub read_only: bool,
    /// Honour device files (`dev`); the default is `nodev`.
    pub dev: bool,
    /// Honour setuid bits (`suid`); the default is `nosuid`.
    pub suid: bool,
    /// Entry and attribute cache time in seconds (`timeout=`, as fuse-overlayfs names
    /// it); `None` picks the default for the kind of union.
    pub timeout: Option<std::time::Duration>,
    /// Options accepted for fuse-overlayfs compatibility and ignored.
    pub ignored: Vec<String>,
    /// The lower layers may change while mounted (not an overlayfs option: set by
    /// gentree-fs for its read-only view of a seed whose upper builds keep writing).
    /// Disables the lower-layer caches and the long TTL of lower-only entries.
    pub volatile_lowers: bool,
    /// Never hand open files to the kernel (FUSE passthrough), even when privileged
    /// (`nopassthrough`; a gentree-fs option, for comparison and as an escape hatch).
    pub no_passthrough: bool,
}

/// A bad option string or a layer layout that cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("unknown union option {0:?}")]
    Unknown(String),
    #[error("option {0:?} needs a value ({0}=...)")]
    MissingValue(String),
    #[error("no lowerdir given: pass -o lowerdir=DIR[:DIR...]")]
    NoLower,
    #[error("timeout={0:?} is not a number of seconds")]
    BadTimeout(String),
    #[error("lowerdir {0:?} contains an empty layer path")]
    EmptyLayer(String),
    #[error("upperdir {0} needs a workdir: pass -o workdir=DIR on the same filesystem")]
    NoWorkdir(PathBuf),
    #[error("workdir {0} given without upperdir")]
    WorkdirWithoutUpper(PathBuf),
    #[error("cannot use {role} {path}")]
    Unusable {
        role: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{role} {path} is not a directory")]
    NotDir { role: &'static str, path: PathBuf },
    #[error("upperdir {upper} is inside lowerdir {lower}: layers must not nest")]
    UpperInLower { upper: PathBuf, lower: PathBuf },
    #[error("lowerdir {inner} is inside upperdir {upper}: layers must not nest")]
    LowerInUpper { inner: PathBuf, upper: PathBuf },
    #[error("workdir {work} and upperdir {upper} nest: give them separate directories")]
    WorkNested { work: PathBuf, upper: PathBuf },
    #[error("mountpoint {mountpoint} is inside {role} {layer}: the union would serve itself")]
    MountpointInLayer {
        mountpoint: PathBuf,
        role: &'static str,
        layer: PathBuf,
    },
    #[error(
        "workdir {work} is on another filesystem than upperdir {upper}: \
         copy-up renames from one to the other, so put both on the same filesystem"
    )]
    WorkdirOtherFs { work: PathBuf, upper: PathBuf },
}

/// The cache time that means "for good": entries and attributes the kernel may keep
/// until the union itself changes them (about 32 years; FUSE takes seconds).
pub const CACHE_FOREVER: std::time::Duration = std::time::Duration::from_secs(1_000_000_000);

const IGNORED: &[&str] = &[
    "default_permissions",
    "userxattr",
    "redirect_dir",
    "index",
    "metacopy",
    "xino",
    "volatile",
    "fsync",
    "noatime",
    "exec",
    "noexec",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "static_nlink",
    "noacl",
    "threaded",
    "fast_ino",
    "writeback",
    "plugins",
    "uidmapping",
    "gidmapping",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "fsname",
    "subtype",
    "auto_unmount",
    "rw",
    "nodev",
    "nosuid",
    // What mount(8) and mount.fuse3 may pass along from /etc/fstab.
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "nofail",
    "_netdev",
    "atime",
    "relatime",
    "strictatime",
    "nodiratime",
    "async",
];

impl UnionOptions {
    /// Parses repeated `-o` values, each a comma-separated list.
    pub fn parse<S: AsRef<str>>(groups: &[S]) -> Result<UnionOptions, OptionsError> {
        let mut o = UnionOptions::default();
        for group in groups {
            for opt in group.as_ref().split(',').filter(|s| !s.is_empty()) {
                o.apply(opt)?;
            }
        }
        if o.lowers.is_empty() {
            return Err(OptionsError::NoLower);
        }
        match (&o.upper, &o.work) {
            (Some(u), None) => return Err(OptionsError::NoWorkdir(u.clone())),
            (None, Some(w)) => return Err(OptionsError::WorkdirWithoutUpper(w.clone())),
            _ => {}
        }
        Ok(o)
    }

    fn apply(&mut self, opt: &str) -> Result<(), OptionsError> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&str>| {
            v.filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| OptionsError::MissingValue(key.to_owned()))
        };
        match key {
            "lowerdir" => {
                let v = need(value)?;
                self.lowers = split_lowers(&v)?;
            }
            "upperdir" => self.upper = Some(PathBuf::from(need(value)?)),
            "workdir" => self.work = Some(PathBuf::from(need(value)?)),
            "timeout" => {
                let v = need(value)?;
                let secs: f64 = v.parse().map_err(|_| OptionsError::BadTimeout(v.clone()))?;
                if !(0.0..=1e9).contains(&secs) {
                    return Err(OptionsError::BadTimeout(v));
                }
                self.timeout = Some(std::time::Duration::from_secs_f64(secs));
            }
            "allow_other" => (self.allow_other, self.no_allow_other) = (true, false),
            "noallow_other" => (self.allow_other, self.no_allow_other) = (false, true),
            "allow_root" => self.allow_root = true,
            "ro" => self.read_only = true,
            "dev" => self.dev = true,
            "suid" => self.suid = true,
            "nopassthrough" => self.no_passthrough = true,
            // fstab's userspace options (`x-systemd.automount` and the like).
            k if IGNORED.contains(&k) || k.starts_with("x-") => self.ignored.push(opt.to_owned()),
            _ => return Err(OptionsError::Unknown(opt.to_owned())),
        }
        Ok(())
    }

    /// How long the kernel may cache entries and attributes. A read-only union never
    /// changes, so the kernel may keep them for good; a writable one defaults to one
    /// second, so changes made to the layer dirs behind the union's back show soon.
    pub fn cache_timeout(&self) -> std::time::Duration {
        match self.timeout {
            Some(t) => t,
            None if self.is_read_only() && !self.volatile_lowers => CACHE_FOREVER,
            None => std::time::Duration::from_secs(1),
        }
    }

    /// How long the kernel may cache entries and attributes of files and directories
    /// that live only in lower layers. Lower layers never change during the mount, and
    /// every change to such an entry (copy-up, whiteout, rename) passes through the
    /// union, whose reply or the kernel's own invalidation refreshes the cache; so,
    /// unless `timeout` says otherwise, they are cached for good (fuse-overlayfs caches
    /// every entry so). This spares the stat walk through every layer on each lookup.
    pub fn lower_cache_timeout(&self) -> std::time::Duration {
        match self.timeout {
            Some(t) => t,
            None if self.volatile_lowers => std::time::Duration::from_secs(1),
            None => CACHE_FOREVER,
        }
    }

    /// Whether every user may use the mount: asked with `allow_other`, or by default
    /// when the daemon runs as root (`root`), unless `noallow_other` says root alone.
    /// Root mounts a union for others (fstab, containers): without it every other user
    /// gets EACCES, even for `stat` of the root. The kernel still checks the presented
    /// modes (`default_permissions`).
    pub fn allows_other(&self, root: bool) -> bool {
        self.allow_other || (root && !self.no_allow_other)
    }

    /// True when writes are refused with EROFS.
    pub fn is_read_only(&self) -> bool {
        self.read_only || self.upper.is_none()
    }

    /// Checks every layer before mounting: each must be a readable directory, layers
    /// must not nest, the mountpoint must not lie inside a layer, and the workdir must
    /// share the upper's filesystem. Returns the options with canonical paths.
    pub fn validate(&self, mountpoint: &Path) -> Result<UnionOptions, OptionsError> {
        let mut out = self.clone();
        out.lowers = self
            .lowers
            .iter()
            .map(|l| usable_dir("lowerdir", l))
            .collect::<Result<_, _>>()?;
        out.upper = self
            .upper
            .as_deref()
            .map(|u| usable_dir("upperdir", u))
            .transpose()?;
        out.work = self
            .work
            .as_deref()
            .map(|w| usable_dir("workdir", w))
            .transpose()?;
        let mp = usable_dir("mountpoint", mountpoint)?;
        if let Some(upper) = &out.upper {
            for lower in &out.lowers {
                if upper.starts_with(lower) {
                    return Err(OptionsError::UpperInLower {
                        upper: upper.clone(),
                        lower: lower.clone(),
                    });
                }
                if lower.starts_with(upper) {
                    return Err(OptionsError::LowerInUpper {
                        inner: lower.clone(),
                        upper: upper.clone(),
                    });
                }
            }
            if let Some(work) = &out.work {
                if work.starts_with(upper) || upper.starts_with(work) {
                    return Err(OptionsError::WorkNested {
                        work: work.clone(),
                        upper: upper.clone(),
                    });
                }
                let dev = |p: &Path, role| {
                    std::fs::metadata(p)
                        .map(|m| m.dev())
                        .map_err(|source| OptionsError::Unusable {
                            role,
                            path: p.to_owned(),
                            source,
                        })
                };
                if dev(work, "workdir")? != dev(upper, "upperdir")? {
                    return Err(OptionsError::WorkdirOtherFs {
                        work: work.clone(),
                        upper: upper.clone(),
                    });
                }
            }
        }
        let layers = out
            .lowers
            .iter()
            .map(|l| ("lowerdir", l))
            .chain(out.upper.iter().map(|u| ("upperdir", u)))
            .chain(out.work.iter().map(|w| ("workdir", w)));
        for (role, layer) in layers {
            if mp.starts_with(layer) {
                return Err(OptionsError::MountpointInLayer {
                    mountpoint: mp.clone(),
                    role,
                    layer: layer.clone(),
                });
            }
        }
        Ok(out)
    }
}

/// Splits `L1:L2`, honouring `\:` escapes as kernel overlayfs does.
fn split_lowers(v: &str) -> Result<Vec<PathBuf>, OptionsError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    if out.iter().any(String::is_empty) {
        return Err(OptionsError::EmptyLayer(v.to_owned()));
    }
    Ok(out.into_iter().map(PathBuf::from).collect())
}

/// Canonicalises `p` and checks it is a directory the daemon can list.
fn usable_dir(role: &'static str, p: &Path) -> Result<PathBuf, OptionsError> {
    let unusable = |source| OptionsError::Unusable {
        role,
        path: p.to_owned(),
        source,
    };
    let canon = std::fs::canonicalize(p).map_err(unusable)?;
    let meta = std::fs::metadata(&canon).map_err(unusable)?;
    if !meta.is_dir() {
        return Err(OptionsError::NotDir {
            role,
            path: p.to_owned(),
        });
    }
    std::fs::read_dir(&canon).map_err(unusable)?;
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let o = UnionOptions::parse(&[
            "lowerdir=/a:/b\\:c,upperdir=/u",
            "workdir=/w,allow_other,userxattr",
        ])
        .expect("parses");
        assert_eq!(o.lowers, vec![PathBuf::from("/a"), PathBuf::from("/b:c")]);
        assert_eq!(o.upper.as_deref(), Some(Path::new("/u")));
        assert_eq!(o.work.as_deref(), Some(Path::new("/w")));
        assert!(o.allow_other && !o.allow_root && !o.is_read_only());
        assert_eq!(o.ignored, vec!["userxattr".to_owned()]);

        let ro = UnionOptions::parse(&["lowerdir=/a"]).expect("parses");
        assert!(ro.is_read_only());
        assert_eq!(ro.cache_timeout().as_secs(), 1_000_000_000);
        assert_eq!(o.cache_timeout().as_secs(), 1);
        assert_eq!(o.lower_cache_timeout().as_secs(), 1_000_000_000);
        let t = UnionOptions::parse(&["lowerdir=/a,timeout=0.5"]).expect("parses");
        assert_eq!(t.cache_timeout().as_millis(), 500);
        assert_eq!(t.lower_cache_timeout().as_millis(), 500);

        // Root lets others in unless told not to; the last of the two options wins.
        let root = |opts: &str| {
            let o = UnionOptions::parse(&[opts]).expect("parses");
            (o.allows_other(true), o.allows_other(false))
        };
        assert_eq!(root("lowerdir=/a"), (true, false));
        assert_eq!(root("lowerdir=/a,allow_other"), (true, true));
        assert_eq!(root("lowerdir=/a,noallow_other"), (false, false));
        assert_eq!(
            root("lowerdir=/a,allow_other,noallow_other"),
            (false, false)
        );
        assert_eq!(root("lowerdir=/a,noallow_other,allow_other"), (true, true));
        // What mount.fuse3 passes from an fstab line is accepted.
        let f = UnionOptions::parse(&["rw,lowerdir=/a,nofail,x-systemd.automount,dev,suid"])
            .expect("parses");
        assert!(f.dev && f.suid);

        for (bad, want) in [
            (&["upperdir=/u,workdir=/w"][..], "no lowerdir"),
            (&["lowerdir=/a,upperdir=/u"][..], "needs a workdir"),
            (&["lowerdir=/a,workdir=/w"][..], "without upperdir"),
            (&["lowerdir=/a::/b"][..], "empty layer"),
            (&["lowerdir="][..], "needs a value"),
            (&["lowerdir=/a,frobnicate"][..], "unknown union option"),
            (&["lowerdir=/a,timeout=soon"][..], "not a number"),
            (&["lowerdir=/a,timeout=-1"][..], "not a number"),
        ] {
            let e = UnionOptions::parse(bad).expect_err("must fail").to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn validate_names_the_path_at_fault() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let d = |n: &str| -> io::Result<PathBuf> {
            let p = t.path().join(n);
            std::fs::create_dir_all(&p)?;
            Ok(p)
        };
        let (l, u, w, mp) = (d("l")?, d("u")?, d("w")?, d("mp")?);
        let opts = |lower: &Path, upper: &Path, work: &Path| UnionOptions {
            lowers: vec![lower.to_owned()],
            upper: Some(upper.to_owned()),
            work: Some(work.to_owned()),
            ..UnionOptions::default()
        };
        assert!(opts(&l, &u, &w).validate(&mp).is_ok());

        let missing = t.path().join("missing");
        let e = opts(&missing, &u, &w).validate(&mp).expect_err("missing");
        assert!(e.to_string().contains("lowerdir") && e.to_string().contains("missing"));

        let file = t.path().join("file");
        std::fs::write(&file, b"")?;
        let e = opts(&file, &u, &w).validate(&mp).expect_err("file");
        assert!(matches!(e, OptionsError::NotDir { .. }), "{e}");

        let nested = d("l/up")?;
        let e = opts(&l, &nested, &w).validate(&mp).expect_err("nested");
        assert!(matches!(e, OptionsError::UpperInLower { .. }), "{e}");

        let inner_mp = d("u/mnt")?;
        let e = opts(&l, &u, &w)
            .validate(&inner_mp)
            .expect_err("mp in upper");
        assert!(e.to_string().contains("mountpoint"), "{e}");

        // /dev/shm is a tmpfs: another filesystem than the temp dir, unless TMPDIR is there.
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && std::fs::metadata(shm)?.dev() != std::fs::metadata(&u)?.dev() {
            let w2 = tempfile::tempdir_in(shm)?;
            let e = opts(&l, &u, w2.path()).validate(&mp).expect_err("other fs");
            assert!(matches!(e, OptionsError::WorkdirOtherFs { .. }), "{e}");
        } else {
            eprintln!(
                "!!!! validate_names_the_path_at_fault: workdir-on-another-filesystem case \
                 not checked: /dev/shm is missing or on the temp dir's filesystem !!!!"
            );
        }
        Ok(())
    }
}
