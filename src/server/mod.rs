//! `gentree-fs serve`: a Portage binhost over a seed's binary package dir, plus a
//! queue of package builds run in the seed (genTree-server's, with B30 fixed).
//!
//! The domain logic lives in plain modules tested without a socket: [`atom`] (what a
//! build request may name), [`static_files`] (request paths, ranges, opening below
//! the package dir), [`queue`] (the job state machine), and here the request routing
//! and the namespace plan of one build. [`http`] answers each request, [`wire`]
//! (bounded HTTP/1.1 framing) and [`listen`] (connections, threads, time-outs) carry
//! them; [`worker`] runs the builds.
//!
//! A build runs `emerge --oneshot --autounmask=y --autounmask-continue=y --usepkg=y
//! --buildpkg --jobs=N --noreplace ATOM` in the seed's namespace, on the seed's
//! persistent upper (or a tmpfs one with `--ephemeral-seed`) exactly as a layer
//! build's seed is set up, under the seed's lock; the package dir is bind-mounted
//! where Portage writes binary packages, so the result is served at once.

pub mod atom;
pub mod http;
pub mod listen;
pub mod queue;
pub mod static_files;
pub mod wire;
pub mod worker;

use std::path::{Path, PathBuf};

use crate::builder::build::{self, HostDirs, emerge_env, portage_run, profile_step};
use crate::builder::config::{ResolvedConfig, emerge};
use crate::builder::namespace::{IdMapping, Plan, Step};
use static_files::{PathError, Target};

/// What a request asks for, decided from its target alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/pkg?pkg=ATOM`: the decoded parameter, `None` when missing or empty.
    Enqueue(Option<String>),
    /// `/queue`.
    Queue,
    /// A file of the package dir.
    Static(Target),
    /// 400 with this message.
    Bad(String),
}

/// Routes a request target (`/path?query`).
pub fn route(target: &str) -> Route {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    match path {
        "/pkg" => match query_param(query.unwrap_or(""), "pkg") {
            Ok(v) => Route::Enqueue(v.filter(|v| !v.is_empty())),
            Err(e) => Route::Bad(e),
        },
        "/queue" => Route::Queue,
        _ => match static_files::decode_path(path) {
            Ok(t) => Route::Static(t),
            Err(e) => Route::Bad(bad_path(&e)),
        },
    }
}

fn bad_path(e: &PathError) -> String {
    format!("bad request path: {e}")
}

/// The single value of `name` in a form-encoded query (`+` is a space); an error when
/// it is given twice or does not decode to UTF-8.
fn query_param(query: &str, name: &str) -> Result<Option<String>, String> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != name {
            continue;
        }
        if found.is_some() {
            return Err(format!("more than one {name} parameter"));
        }
        let bytes = static_files::percent_decode(&v.replace('+', " "))
            .ok_or_else(|| format!("malformed percent escape in the {name} parameter"))?;
        found = Some(
            String::from_utf8(bytes).map_err(|_| format!("the {name} parameter is not UTF-8"))?,
        );
    }
    Ok(found)
}

/// The log of job `id`: `<dir>/<id>-<atom with every unusual byte as _>.log`.
pub fn log_path(dir: &Path, id: u64, atom: &str) -> PathBuf {
    let safe: String = atom
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{id}-{safe}.log"))
}

/// The first job id that no log in `dir` uses yet, so that a restarted server does not
/// overwrite earlier logs.
pub fn first_free_id(dir: &Path) -> u64 {
    let used = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.split_once('-')?.0.parse::<u64>().ok()
        });
    used.max().map_or(1, |n| n.saturating_add(1))
}

/// The emerge command of a build request (genTree-server's, plus
/// `--buildpkg` so the package lands in the served dir whatever FEATURES say). `--jobs`
/// comes from the config's `emerge_args` when it is a number, else 8.
pub fn emerge_argv(cfg: &ResolvedConfig, atom: &str) -> Vec<String> {
    let jobs = cfg
        .emerge_args
        .get("jobs")
        .filter(|j| !j.is_empty() && j.bytes().all(|b| b.is_ascii_digit()))
        .map_or("8", String::as_str);
    let mut v = vec![emerge::program(cfg.crossdev_target.as_deref())];
    v.extend(
        [
            "--oneshot",
            "--autounmask=y",
            "--autounmask-continue=y",
            "--usepkg=y",
            "--buildpkg",
            &format!("--jobs={jobs}"),
            "--noreplace",
            atom,
        ]
        .map(str::to_owned),
    );
    v
}

/// The namespace plan of one build into the seed: the seed mounts of a layer build
/// (persistent upper, or a tmpfs one at `seed_tmp`), chroot at `root`, the profile
/// link, then emerge.
pub fn build_plan(
    cfg: &ResolvedConfig,
    dirs: &HostDirs,
    atom: &str,
    root: &Path,
    seed_tmp: Option<&Path>,
    mapping: &IdMapping,
) -> Plan {
    let target = cfg.crossdev_target.as_deref();
    let env = emerge_env(cfg, mapping);
    let mut steps: Vec<Step> = profile_step(cfg).into_iter().collect();
    steps.push(portage_run(emerge_argv(cfg, atom), &env, target));
    Plan {
        mapping: mapping.clone(),
        root: root.to_path_buf(),
        mounts: build::layer_seed_mounts(cfg, dirs, seed_tmp).mounts(),
        steps,
        cwd: "/".into(),
        no_network: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::config::{CliOverrides, Defaults, resolve_seed};
    use crate::builder::namespace::NsMount;

    #[test]
    fn routes_by_path_and_decodes_the_pkg_parameter() {
        let enq = |s: &str| Route::Enqueue(Some(s.to_owned()));
        for (target, want) in [
            ("/pkg?pkg=app-misc/gt-lib", enq("app-misc/gt-lib")),
            ("/pkg?pkg=app-misc%2Fgt-lib", enq("app-misc/gt-lib")),
            ("/pkg?x=1&pkg=%3E%3Dc/p-1", enq(">=c/p-1")),
            ("/pkg?pkg=c/p+name", enq("c/p name")),
            ("/pkg?pkg=--config-root%3D/x", enq("--config-root=/x")),
            ("/pkg", Route::Enqueue(None)),
            ("/pkg?", Route::Enqueue(None)),
            ("/pkg?pkg=", Route::Enqueue(None)),
            ("/pkg?pkg", Route::Enqueue(None)),
            ("/pkg?other=c/p", Route::Enqueue(None)),
            (
                "/pkg?pkg=a/b&pkg=c/d",
                Route::Bad("more than one pkg parameter".into()),
            ),
            (
                "/pkg?pkg=%ff",
                Route::Bad("the pkg parameter is not UTF-8".into()),
            ),
            (
                "/pkg?pkg=%zz",
                Route::Bad("malformed percent escape in the pkg parameter".into()),
            ),
            ("/queue", Route::Queue),
            ("/queue?x", Route::Queue),
            ("/Packages", Route::Static(Target::File("Packages".into()))),
            (
                "/Packages?x=1",
                Route::Static(Target::File("Packages".into())),
            ),
            ("/pkg/x", Route::Static(Target::File("pkg/x".into()))),
            ("/", Route::Static(Target::Hidden)),
            (
                "/%2e%2e/etc/passwd",
                Route::Bad(bad_path(&PathError::DotSegment("..".into()))),
            ),
            ("*", Route::Bad(bad_path(&PathError::NotAbsolute))),
        ] {
            assert_eq!(route(target), want, "{target}");
        }
    }

    #[test]
    fn logs_are_numbered_past_the_existing_ones() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(first_free_id(t.path()), 1);
        assert_eq!(first_free_id(&t.path().join("missing")), 1);
        let p = log_path(t.path(), 9, ">=app-misc/gt-lib-1:0::repo");
        assert_eq!(p, t.path().join("9-__app-misc_gt-lib-1_0__repo.log"));
        std::fs::write(&p, "").unwrap();
        std::fs::write(t.path().join("3-x.log"), "").unwrap();
        std::fs::write(t.path().join("notes"), "").unwrap();
        assert_eq!(first_free_id(t.path()), 10);
    }

    #[test]
    fn a_build_emerges_the_atom_into_the_seed_not_a_layer() {
        let mut d = Defaults::embedded().unwrap();
        d.merge_text(
            "[default.s]\nprofile = \"default/linux/amd64\"\n[emerge_args]\njobs = \"3\"\n",
            Path::new("d.toml"),
        )
        .unwrap();
        let cfg = resolve_seed("s", &[], &CliOverrides::default(), &d).unwrap();
        let dirs = HostDirs::plain(Path::new("/conf"));
        let plan = build_plan(
            &cfg,
            &dirs,
            "app-misc/gt-lib",
            Path::new("/conf/run/r"),
            None,
            &IdMapping::root_default(),
        );
        assert_eq!(
            crate::builder::seed_ops::tests::argvs(&plan),
            [
                "ln /etc/portage/make.profile /var/db/repos/gentoo/profiles/default/linux/amd64",
                "emerge --oneshot --autounmask=y --autounmask-continue=y --usepkg=y --buildpkg --jobs=3 --noreplace app-misc/gt-lib",
            ]
        );
        assert_eq!(plan.root, Path::new("/conf/run/r"));
        // The seed's persistent upper is the chroot root's upper; no /builds layer.
        match &plan.mounts[0] {
            NsMount::Union(u) => {
                assert_eq!(u.target, Path::new("/"));
                assert_eq!(u.lowers, [PathBuf::from("/conf/seeds/s")]);
                assert_eq!(u.upper.as_deref(), Some(Path::new("/conf/seeds/s.upper")));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !plan
                .mounts
                .iter()
                .any(|m| matches!(m, NsMount::Union(u) if u.target.starts_with("/builds")))
        );
        assert!(plan.mounts.iter().any(|m| matches!(m,
            NsMount::Bind { source, target, .. }
                if source == &dirs.pkgdir(&cfg) && target == Path::new("/var/cache/binpkgs"))));
        // An ephemeral seed: a tmpfs upper first.
        let plan = build_plan(
            &cfg,
            &dirs,
            "app-misc/gt-lib",
            Path::new("/conf/run/r"),
            Some(Path::new("/conf/run/t")),
            &IdMapping::root_default(),
        );
        assert!(
            matches!(&plan.mounts[0], NsMount::HostTmpfs { path, .. } if path == Path::new("/conf/run/t"))
        );
        // A crossdev target: the cross emerge, and the cross root's package dir.
        let t = "aarch64-unknown-linux-gnu";
        let cli = CliOverrides {
            crossdev_target: Some(t.into()),
            ..Default::default()
        };
        let cross = resolve_seed("s", &[], &cli, &d).unwrap();
        let plan = build_plan(
            &cross,
            &dirs,
            "c/p",
            Path::new("/r"),
            None,
            &IdMapping::root_default(),
        );
        assert!(
            crate::builder::seed_ops::tests::argvs(&plan)
                .last()
                .unwrap()
                .starts_with(&format!("emerge-{t} --oneshot"))
        );
        assert!(plan.mounts.iter().any(|m| matches!(m,
            NsMount::Bind { source, target, .. }
                if source == &dirs.pkgdir(&cross) && target == Path::new(&format!("/usr/{t}/var/cache/binpkgs")))));
        assert_ne!(dirs.pkgdir(&cross), dirs.pkgdir(&cfg));
        // A non-numeric jobs value is not passed through.
        let mut cfg2 = cfg.clone();
        cfg2.emerge_args.0 = vec![("jobs".into(), "1 --x".into())];
        assert!(emerge_argv(&cfg2, "c/p").contains(&"--jobs=8".to_owned()));
    }
}
