use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::builder::config::ResolvedConfig;
use crate::builder::config::{CliOverrides, Defaults, resolve_str};
use crate::builder::namespace::{IdMapping, NsMount, Step};

fn cfg(text: &str) -> ResolvedConfig {
    let d = Defaults::embedded().unwrap();
    resolve_str(
        text,
        Path::new("/cfg/app.toml"),
        &CliOverrides::default(),
        &d,
    )
    .unwrap()
}

fn paths(seed_tmp: Option<&str>) -> LayerPaths {
    LayerPaths {
        root: "/run/r".into(),
        empty: "/run/e".into(),
        upper: "/l/up".into(),
        work: "/l/work".into(),
        lowers: vec![],
        seed_tmp: seed_tmp.map(PathBuf::from),
    }
}

#[test]
fn world_files_merge_in_first_seen_order() {
    assert_eq!(
        merge_world(["a/x\nb/y\n", "\n b/y \nc/z", "a/x\nd/w\n"]),
        ["a/x", "b/y", "c/z", "d/w"]
    );
    assert!(merge_world(["", "\n\n"]).is_empty());
    assert!(merge_world([]).is_empty());
}

#[test]
fn world_in_stack_is_what_the_union_shows() {
    let t = tempfile::tempdir().unwrap();
    let layer = |n: &str, world: Option<&str>, marker: Option<&str>| {
        let d = t.path().join(n).join("var/lib/portage");
        fs::create_dir_all(&d).unwrap();
        if let Some(w) = world {
            fs::write(d.join("world"), w).unwrap();
        }
        if let Some(m) = marker {
            fs::write(d.join(m), "").unwrap();
        }
        t.path().join(n)
    };
    let a = layer("a", Some("a/x\n"), None);
    let b = layer("b", None, None);
    let c = layer("c", Some("c/z\n"), None);
    let wh = layer("wh", None, Some(".wh.world"));
    let opq = layer("opq", None, Some(".wh..wh..opq"));
    assert_eq!(
        world_in_stack(&[b.clone(), a.clone()]).as_deref(),
        Some("a/x\n")
    );
    assert_eq!(
        world_in_stack(&[c.clone(), b.clone(), a.clone()]).as_deref(),
        Some("c/z\n")
    );
    assert_eq!(world_in_stack(&[wh, a.clone()]), None);
    assert_eq!(world_in_stack(&[opq, a]), None);
    assert_eq!(world_in_stack(&[b]), None);
}

#[test]
fn every_portage_command_gets_the_epoch() {
    let c = cfg("seed = \"s\"\npackages = [\"app-misc/x\"]\n[env]\nsource_date_epoch = \"9\"\n");
    let dirs = HostDirs::plain(Path::new("/conf"));
    let plan = layer_plan(&c, &dirs, &paths(None), &IdMapping::root_default(), 1234);
    let runs: Vec<_> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Run(r) => Some(r),
            _ => None,
        })
        .collect();
    assert!(!runs.is_empty());
    for r in runs {
        let sde: Vec<_> = r
            .env
            .iter()
            .filter(|(k, _)| k == "SOURCE_DATE_EPOCH")
            .collect();
        assert_eq!(sde, [&("SOURCE_DATE_EPOCH".to_owned(), "1234".to_owned())]);
    }
}

#[test]
fn ephemeral_seed_upper_lives_in_a_tmpfs_mounted_first() {
    let c = cfg("seed = \"s\"\npackages = [\"app-misc/x\"]\n");
    let dirs = HostDirs::plain(Path::new("/conf"));
    let mapping = IdMapping::root_default();
    let plan = layer_plan(&c, &dirs, &paths(Some("/run/seed")), &mapping, 1234);
    match &plan.mounts[..2] {
        [NsMount::HostTmpfs { path, mkdirs, .. }, NsMount::Union(u)] => {
            assert_eq!(path, Path::new("/run/seed"));
            assert_eq!(
                mkdirs,
                &[PathBuf::from("/run/seed/upper"), "/run/seed/work".into()]
            );
            assert_eq!(u.target, Path::new("/"));
            assert_eq!(u.lowers, [PathBuf::from("/conf/seeds/s")]);
            assert_eq!(u.upper.as_deref(), Some(Path::new("/run/seed/upper")));
            assert_eq!(u.work.as_deref(), Some(Path::new("/run/seed/work")));
        }
        other => panic!("{other:?}"),
    }
    // Without it, the persistent upper under seeds/ and no tmpfs.
    let plan = layer_plan(&c, &dirs, &paths(None), &mapping, 1234);
    assert!(
        !plan
            .mounts
            .iter()
            .any(|m| matches!(m, NsMount::HostTmpfs { .. }))
    );
    match &plan.mounts[0] {
        NsMount::Union(u) => {
            assert_eq!(u.upper.as_deref(), Some(Path::new("/conf/seeds/s.upper")))
        }
        other => panic!("{other:?}"),
    }
}
