//! Reproducible images and portable keys, with real Portage: two conf roots built
//! apart in time give byte-identical images and OCI layer tars under the same keys;
//! an edited ebuild changes exactly the keys of the layers that use it; Portage's
//! records agree with the clamped files, so an unmerge in a derived layer removes a
//! base package completely. (Rootless ownership is checked in `build`.)

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::build::{BASE, Fixture, stderr, stdout};
use crate::util::{self, run, run_ok};

const MID: &str =
    "bases = [\"base.toml\"]\npackages = [\"app-misc/gt-lib\", \"app-misc/gt-removable\"]\n";
const APP: &str = "seed = \"testseed\"\nbases = [\"mid.toml\"]\n\
     packages = [\"app-misc/gt-app\", \"app-misc/gt-special\"]\n\
     unmerge = [\"app-misc/gt-removable\"]\n";

fn write_cfgs(f: &Fixture) -> PathBuf {
    f.write_cfg("base.toml", BASE);
    f.write_cfg("mid.toml", MID);
    f.write_cfg("app.toml", APP)
}

pub fn sha256(p: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// buildname → key of the published layers (one per buildname in a fresh conf root).
fn built_keys(f: &Fixture) -> BTreeMap<String, String> {
    f.layers()
        .iter()
        .map(|d| {
            let meta: serde_json::Value =
                serde_json::from_slice(&fs::read(d.join("meta.json")).unwrap()).unwrap();
            (
                meta["buildname"].as_str().unwrap().to_owned(),
                meta["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// buildname → key as `config --json` shows them (`None` for an unbuilt layer).
fn config_keys(f: &Fixture, cfg: &Path) -> BTreeMap<String, Option<String>> {
    let out = run_ok(
        f.cmd(None)
            .args(["config", "--json", "--no-config", "--conf-root"])
            .arg(f.conf())
            .arg(cfg),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut keys = BTreeMap::new();
    fn walk(v: &serde_json::Value, keys: &mut BTreeMap<String, Option<String>>) {
        for b in v["bases"].as_array().into_iter().flatten() {
            walk(b, keys);
        }
        keys.insert(
            v["buildname"].as_str().unwrap().to_owned(),
            v["key"].as_str().map(str::to_owned),
        );
    }
    walk(&v, &mut keys);
    keys
}

fn layer_dir(f: &Fixture, key: &str) -> PathBuf {
    f.conf().join("layers").join(key).join("root")
}

/// The build epoch the conf root's seed gives (no SOURCE_DATE_EPOCH in the tests).
fn seed_epoch(f: &Fixture) -> i64 {
    let id = fs::read_to_string(f.conf().join("state/seed-ids/testseed")).unwrap();
    id.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn two_conf_roots_give_identical_images_layers_and_keys_and_records_match_files() {
    let test = "two_conf_roots_give_identical_images_layers_and_keys_and_records_match_files";
    if !util::require_root(test) || !util::require_tool(test, "diffoscope") {
        return;
    }
    let build = || {
        let f = Fixture::new(None);
        let cfg = write_cfgs(&f);
        let out = f.build(None, &cfg, &[]);
        assert!(out.status.success(), "build failed");
        let image = PathBuf::from(stdout(&out).trim());
        (f, cfg, image)
    };
    let (fa, cfg_a, ia) = build();
    std::thread::sleep(Duration::from_secs(2));
    let (fb, _, ib) = build();

    let (ka, kb) = (built_keys(&fa), built_keys(&fb));
    assert_eq!(ka.len(), 3, "{ka:?}");
    assert_eq!(ka, kb, "the same inputs must give the same keys");
    let shown: BTreeMap<_, _> = config_keys(&fa, &cfg_a)
        .into_iter()
        .map(|(b, k)| (b, k.expect("config --json shows a built layer's key")))
        .collect();
    assert_eq!(shown, ka, "config --json shows the built keys");
    let diff = run(Command::new("diffoscope").arg(&ia).arg(&ib));
    assert!(
        diff.status.success() && diff.stdout.is_empty(),
        "diffoscope reports differences:\n{}{}",
        stdout(&diff),
        stderr(&diff)
    );
    assert_eq!(sha256(&ia), sha256(&ib), "images differ");
    for (bn, key) in &ka {
        let tar = |f: &Fixture, name: &str| {
            let out = f.dir.path().join(name);
            run_ok(
                f.cmd(None)
                    .args(["pack", "--oci-layer", "--layer"])
                    .arg(layer_dir(f, key))
                    .arg("-o")
                    .arg(&out),
            );
            out
        };
        assert_eq!(
            sha256(&tar(&fa, "a.tar")),
            sha256(&tar(&fb, "b.tar")),
            "OCI layer tar of {bn} differs"
        );
    }
    // Portage's records in the image agree with its (clamped) files.
    let epoch = seed_epoch(&fa);
    let x = util::tempdir();
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(&ia)
            .arg("-C")
            .arg(x.path()),
    );
    let root = x.path();
    assert!(!root.join("var/cache/edb/mtimedb").exists());
    let mut checked = 0;
    let vdb = root.join("var/db/pkg");
    for cat in fs::read_dir(&vdb).unwrap() {
        for pkg in fs::read_dir(cat.unwrap().path()).unwrap() {
            let pkg = pkg.unwrap().path();
            assert!(!pkg.join("BINPKGMD5").exists(), "{}", pkg.display());
            let bt: i64 = fs::read_to_string(pkg.join("BUILD_TIME"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(bt <= epoch, "{}: BUILD_TIME {bt} > {epoch}", pkg.display());
            for line in fs::read_to_string(pkg.join("CONTENTS")).unwrap().lines() {
                if !(line.starts_with("obj ") || line.starts_with("sym ")) {
                    continue;
                }
                let (_, mtime) = line.rsplit_once(' ').unwrap();
                let path = line[4..].split(' ').next().unwrap();
                // Paths the image's filters drop (man pages, docs) are not there.
                let Ok(m) = fs::symlink_metadata(root.join(&path[1..])) else {
                    continue;
                };
                assert_eq!(mtime, m.mtime().to_string(), "{}: {line}", pkg.display());
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} CONTENTS entries checked");
    let newest = run_ok(Command::new("find").arg(root).args([
        "-mindepth",
        "1",
        "-newermt",
        &format!("@{epoch}"),
        "-print",
        "-quit",
    ]));
    assert!(newest.trim().is_empty(), "newer than the epoch: {newest}");

    // The unmerge in the top layer removed every file the base layer's package had,
    // which it does only when CONTENTS agrees with the files (else "!mtime").
    let mid = layer_dir(&fa, &ka["testseed-mid"]);
    let contents =
        fs::read_to_string(mid.join("var/db/pkg/app-misc/gt-removable-1/CONTENTS")).unwrap();
    let files: Vec<&str> = contents
        .lines()
        .filter(|l| l.starts_with("obj "))
        .map(|l| l[4..].split(' ').next().unwrap())
        .collect();
    assert_eq!(files.len(), 5, "{contents}");
    for p in files {
        assert!(
            fs::symlink_metadata(root.join(&p[1..])).is_err(),
            "{p} survived the unmerge"
        );
    }
    let log = fs::read_to_string(fa.conf().join("builds/testseed-app.log")).unwrap();
    assert!(!log.contains("!mtime"), "{log}");
}

#[test]
fn an_edited_ebuild_changes_the_keys_of_the_layers_that_use_it_and_no_other() {
    let test = "an_edited_ebuild_changes_the_keys_of_the_layers_that_use_it_and_no_other";
    if !util::require_root(test) {
        return;
    }
    let f = Fixture::new(None);
    let cfg = write_cfgs(&f);
    assert!(f.build(None, &cfg, &[]).status.success());
    let k1 = built_keys(&f);
    let shown = |f: &Fixture| config_keys(f, &cfg);
    let all_known: BTreeMap<_, _> = k1
        .iter()
        .map(|(b, k)| (b.clone(), Some(k.clone())))
        .collect();
    assert_eq!(shown(&f), all_known);
    let repo = f.conf().join("repos/gentree-test");
    let edit = |ebuild: &str| {
        let p = repo.join(ebuild);
        let mut text = fs::read_to_string(&p).unwrap();
        text.push_str("# edited by the test\n");
        fs::write(&p, text).unwrap();
    };

    // A package no layer merged: every key stays, every layer is reused.
    edit("app-misc/gt-fail/gt-fail-1.ebuild");
    assert_eq!(shown(&f), all_known);
    let out = f.build(None, &cfg, &[]);
    assert!(out.status.success());
    assert_eq!(stderr(&out).matches("reusing layer").count(), 3);

    // A package of the top layer only: its key changes before anything is built.
    edit("app-misc/gt-special/gt-special-1.ebuild");
    let k2 = known_keys(&f, &cfg);
    assert_eq!(k2["testseed-base"], k1["testseed-base"]);
    assert_eq!(k2["testseed-mid"], k1["testseed-mid"]);
    assert_ne!(k2["testseed-app"], k1["testseed-app"]);
    let out = f.build(None, &cfg, &[]);
    assert!(out.status.success());
    assert_eq!(stderr(&out).matches("reusing layer").count(), 2);
    assert!(published(&f).contains(&k2["testseed-app"]));

    // A dependency of both upper layers, merged in the middle one: both change.
    edit("app-misc/gt-lib/gt-lib-2.ebuild");
    let k3 = known_keys(&f, &cfg);
    assert_eq!(k3["testseed-base"], k1["testseed-base"]);
    assert_ne!(k3["testseed-mid"], k2["testseed-mid"]);
    assert_ne!(k3["testseed-app"], k2["testseed-app"]);
    let out = f.build(None, &cfg, &[]);
    assert!(out.status.success());
    assert_eq!(stderr(&out).matches("reusing layer").count(), 1);
    let built = published(&f);
    assert!(built.contains(&k3["testseed-mid"]) && built.contains(&k3["testseed-app"]));
}

/// The keys of every published layer.
fn published(f: &Fixture) -> Vec<String> {
    f.layers()
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The keys `config --json` shows (all known: the seed is imported).
fn known_keys(f: &Fixture, cfg: &Path) -> BTreeMap<String, String> {
    config_keys(f, cfg)
        .into_iter()
        .map(|(b, k)| (b, k.expect("a key")))
        .collect()
}
