//! `update-seed`, `clean-builds`, `init-crossdev`, `ephemeral_seed` and the merged
//! world file, with real Portage on the test seed (the [`Fixture`] of `build`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::build::{BASE, Fixture, member, read_member, stderr, stdout, tar_listing};
use crate::util::{self, run};

fn seed_id(f: &Fixture) -> String {
    fs::read_to_string(f.conf().join("state/seed-ids/testseed")).unwrap_or_default()
}

fn is_empty_or_absent(p: &Path) -> bool {
    fs::read_dir(p).map_or(true, |mut d| d.next().is_none())
}

fn gentree_cmd(f: &Fixture, sub: &str) -> Command {
    let mut c = f.cmd(None);
    c.arg(sub)
        .arg("--no-config")
        .arg("--conf-root")
        .arg(f.conf());
    c
}

fn show(what: &str, o: &Output) {
    eprintln!(
        "--- {what}:\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

#[test]
fn update_seed_changes_the_seed_clears_its_upper_and_forces_rebuilds() {
    if !util::require_root("update_seed_changes_the_seed_clears_its_upper_and_forces_rebuilds") {
        return;
    }
    let f = Fixture::new(None);
    let cfg = f.write_cfg("base.toml", &format!("seed = \"testseed\"\n{BASE}"));
    assert!(f.build(None, &cfg, &[]).status.success());
    let upper = f.conf().join("seeds/testseed.upper");
    assert!(
        !is_empty_or_absent(&upper),
        "a build leaves Portage's state in the seed upper"
    );
    let id = seed_id(&f);

    // Not oneshot: gt-lib enters the seed's world file, so depclean keeps it.
    let o = run(gentree_cmd(&f, "update-seed").args(["testseed", "--usepkg=y app-misc/gt-lib"]));
    show("update-seed", &o);
    assert!(o.status.success());
    let seed = f.conf().join("seeds/testseed");
    let vdb: Vec<String> = fs::read_dir(seed.join("var/db/pkg/app-misc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(vdb.iter().any(|n| n.starts_with("gt-lib-")), "{vdb:?}");
    let world = fs::read_to_string(seed.join("var/lib/portage/world")).unwrap();
    assert!(world.lines().any(|l| l == "app-misc/gt-lib"), "{world}");
    // Both commands ran, and their output is in the log.
    let log = fs::read_to_string(f.conf().join("builds/update-seed-testseed.log")).unwrap();
    assert!(log.contains("app-misc/gt-lib"), "{log}");
    assert!(
        log.contains("depclean") || log.contains("Dependencies"),
        "{log}"
    );
    // B26: the stale upper is gone and the seed has a new identity ...
    assert!(!upper.exists(), "seed upper kept after an update");
    assert!(stderr(&o).contains("removing its persistent upper"));
    assert_ne!(seed_id(&f), id);
    // ... so the layer is rebuilt rather than reused.
    let again = f.build(None, &cfg, &[]);
    assert!(again.status.success());
    assert_eq!(stderr(&again).matches("building layer").count(), 1);
    assert_eq!(stderr(&again).matches("reusing layer").count(), 0);

    // A failing update still counts as a change of the seed, and says so.
    let bad = run(gentree_cmd(&f, "update-seed").args(["testseed", "app-misc/gt-fail"]));
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("update of seed testseed failed"),
        "{}",
        stderr(&bad)
    );
    // Unbalanced quotes in UPDATE_ARGS are refused before anything runs.
    let id = seed_id(&f);
    let quote = run(gentree_cmd(&f, "update-seed").args(["testseed", "'@world"]));
    assert!(!quote.status.success());
    assert!(stderr(&quote).contains("unterminated single quote"));
    assert_eq!(seed_id(&f), id);
}

const A: &str = "packages = [\"app-misc/gt-lib\"]\n";
const B: &str = "packages = [\"app-misc/gt-removable\"]\n";
const TOP: &str = "seed = \"testseed\"\nephemeral_seed = true\nbases = [\"a.toml\", \"b.toml\"]\npackages = [\"app-misc/gt-docs\"]\n";

#[test]
fn ephemeral_seed_world_merge_and_clean_builds() {
    if !util::require_root("ephemeral_seed_world_merge_and_clean_builds") {
        return;
    }
    let f = Fixture::new(None);
    f.write_cfg("a.toml", A);
    // Only top-level configs resolve on their own: this one keeps a.toml's layer.
    let a = f.write_cfg("keep-a.toml", "seed = \"testseed\"\nbases = [\"a.toml\"]\n");
    f.write_cfg("b.toml", B);
    let top = f.write_cfg("top.toml", TOP);
    let out = f.build(None, &top, &[]);
    assert!(out.status.success());
    // Nothing of the seed's changes reached the disk.
    let upper = f.conf().join("seeds/testseed.upper");
    assert!(is_empty_or_absent(&upper), "ephemeral seed wrote its upper");
    assert!(is_empty_or_absent(&f.conf().join("run")), "mount dirs left");

    // B41: the image's world file has both bases' entries and the top's.
    let image = PathBuf::from(stdout(&out).trim());
    let world = read_member(&image, "var/lib/portage/world");
    let entries: Vec<&str> = world.lines().collect();
    for want in [
        "app-misc/gt-lib",
        "app-misc/gt-removable",
        "app-misc/gt-docs",
    ] {
        assert!(entries.contains(&want), "{want} missing from {world:?}");
    }
    assert!(member(&tar_listing(&image), "var/lib/portage/world").is_some());

    // clean-builds: a.toml's layer is kept, the rest goes; a dry run removes nothing.
    assert_eq!(f.layers().len(), 3);
    let clean = |extra: &[&Path]| {
        let o = run(gentree_cmd(&f, "clean-builds").args(extra));
        show("clean-builds", &o);
        assert!(o.status.success());
        stdout(&o)
    };
    let dry = {
        let o = run(gentree_cmd(&f, "clean-builds").arg("--dry-run").arg(&a));
        show("clean-builds --dry-run", &o);
        assert!(o.status.success());
        stdout(&o)
    };
    assert!(dry.contains("would remove image"), "{dry}");
    assert_eq!(dry.matches("would remove layer").count(), 2, "{dry}");
    assert!(image.exists() && f.layers().len() == 3);
    let image_size = fs::metadata(&image).unwrap().len();
    let freed = clean(&[&a]);
    assert!(!image.exists());
    let layers = f.layers();
    assert_eq!(layers.len(), 1);
    let meta = fs::read_to_string(layers[0].join("meta.json")).unwrap();
    assert!(meta.contains("\"testseed-a\""), "{meta}");
    let summary = freed.lines().last().unwrap();
    let bytes: u64 = summary
        .strip_prefix("freed ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(bytes > image_size, "{summary}");
    assert!(summary.contains("1 images, 2 layers"), "{summary}");

    // A layer whose key lock is held (a build running) survives a clean-all.
    let key = layers[0].file_name().unwrap().to_str().unwrap().to_owned();
    let lock = fs::File::options()
        .write(true)
        .open(f.conf().join(format!("layers/{key}.lock")))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let out = clean(&[]);
    assert!(out.contains("a build of it is running"), "{out}");
    assert_eq!(f.layers().len(), 1);
    drop(held);
    let out = clean(&[]);
    assert!(out.contains("1 layers"), "{out}");
    assert!(f.layers().is_empty());
}

#[test]
fn init_crossdev_refuses_a_seed_without_crossdev() {
    if !util::require_root("init_crossdev_refuses_a_seed_without_crossdev") {
        return;
    }
    let f = Fixture::new(None);
    let id = seed_id(&f);
    let o = run(gentree_cmd(&f, "init-crossdev").args(["testseed", "aarch64-unknown-linux-gnu"]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("has no crossdev"), "{err}");
    assert!(err.contains("sys-devel/crossdev"), "{err}");
    assert_eq!(seed_id(&f), id, "nothing may run");
    // A tuple that is not a safe name is refused too.
    let o = run(gentree_cmd(&f, "init-crossdev").args(["testseed", "../x"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a safe name"), "{}", stderr(&o));
}
