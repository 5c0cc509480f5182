//! `gentree-fs config` on the reference README's examples and on bad input. Default
//! files come only from fixture homes (HOME/XDG_CONFIG_HOME point into the fixtures
//! or temp dirs) or are skipped with --no-config, so the real user's files are never
//! read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::util::{gentree, missing, run, run_ok, tempdir};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// `gentree-fs config` with HOME pointing at `home` (or an empty dir) and no XDG
/// override, so only that home's default files are read.
fn config_cmd(home: Option<&Path>) -> (Command, tempfile::TempDir) {
    let empty = tempdir();
    let mut c = gentree();
    c.arg("config")
        .env("HOME", home.unwrap_or(empty.path()))
        .env_remove("XDG_CONFIG_HOME");
    (c, empty)
}

/// The system default files would be read by any run that does not pass
/// --no-config; tests that use a fixture home need them absent.
fn no_system_defaults(test: &str) -> bool {
    for p in ["/etc/gentree/config.toml", "/etc/genTree/config.toml"] {
        if Path::new(p).exists() {
            return missing(
                test,
                &format!("{p} exists and would be merged into the defaults"),
            );
        }
    }
    true
}

fn json_of(cmd: &mut Command) -> Value {
    let out = run_ok(cmd.arg("--json"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

fn argv(s: &str) -> Value {
    Value::from(s.split_whitespace().collect::<Vec<_>>())
}

fn base<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for name in path {
        cur = cur["bases"]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| b["name"] == *name))
            .unwrap_or_else(|| panic!("no base {name} in {}", cur["name"]));
    }
    cur
}

/// The names of a config's direct bases, in order.
fn base_names(v: &Value) -> Vec<&str> {
    let bases = v["bases"].as_array().map(Vec::as_slice).unwrap_or_default();
    bases
        .iter()
        .map(|b| b["name"].as_str().unwrap_or("?"))
        .collect()
}

const FEATURES: &str = "buildpkg binpkg-multi-instance parallel-fetch parallel-install -ebuild-locks -merge-wait -merge-sync";

#[test]
fn readme_nginx_json() {
    let (mut c, _t) = config_cmd(None);
    let v = json_of(c.arg("--no-config").arg(fixture("nginx.toml")));
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "bases",
            "buildname",
            "clean_filters",
            "depclean",
            "emerge",
            "env",
            "key",
            "name",
            "profile",
            "seed",
            "tar_filters",
            "unmerge"
        ]
    );
    assert_eq!(v["name"], "nginx");
    assert_eq!(v["buildname"], "stage3-openrc-nginx");
    assert_eq!(v["seed"], "stage3-openrc");
    assert_eq!(v["profile"], Value::Null);
    assert_eq!(
        v["emerge"],
        argv(
            "emerge --root /builds/stage3-openrc-nginx --jobs=8 --verbose=y --usepkg=y --with-bdeps=n www-servers/nginx"
        )
    );
    assert_eq!(
        v["unmerge"],
        argv("emerge --root /builds/stage3-openrc-nginx --unmerge sys-devel/gcc")
    );
    assert_eq!(v["depclean"], false);
    assert_eq!(
        v["env"],
        json!({"BINPKG_FORMAT": "gpkg", "FEATURES": FEATURES, "USE": "nginx"})
    );
    assert_eq!(v["tar_filters"]["locales"], true);
    assert_eq!(v["clean_filters"]["charmaps"], true);
    assert_eq!(v["clean_filters"]["locales"], false);

    assert_eq!(base_names(&v), ["tini", "gcc"]);
    let glibc = base(&v, &["tini", "glibc-stripped", "glibc"]);
    assert_eq!(
        glibc["emerge"],
        argv(
            "emerge --root /builds/stage3-openrc-glibc --jobs=8 --verbose=y --nodeps --usepkg=y --with-bdeps=n --oneshot sys-libs/glibc"
        )
    );
    let stripped = base(&v, &["tini", "glibc-stripped"]);
    assert_eq!(stripped["emerge"], Value::Null);
    assert_eq!(stripped["clean_filters"]["locales"], true);
    let b = base(&v, &["gcc", "base"]);
    assert_eq!(b["env"]["USE"], "build");
    assert_eq!(base(&v, &["gcc"])["env"].get("USE"), None);
    assert_eq!(
        base(&v, &["tini"])["bases"][0]["bases"][0]["bases"][0]["name"],
        "base"
    );
}

#[test]
fn readme_user_defaults_pi3_cross_build() {
    if !no_system_defaults("readme_user_defaults_pi3_cross_build") {
        return;
    }
    let home = fixtures().join("home");
    let (mut c, _t) = config_cmd(Some(&home));
    let v = json_of(c.args(["-t", "pi3"]).arg(fixture("examples/tor.toml")));
    let t = "aarch64-unknown-linux-gnu";
    let bn = format!("openrc-hardened-pi3-{t}-tor");
    assert_eq!(v["seed"], "openrc-hardened");
    assert_eq!(v["buildname"], bn.as_str());
    assert_eq!(v["profile"], "default/linux/arm64/23.0");
    assert_eq!(
        v["emerge"],
        argv(&format!(
            "emerge-{t} --root /builds/{bn} --jobs=8 --verbose=y --usepkg=y --with-bdeps=n net-vpn/tor"
        ))
    );
    let arm = "-march=armv8-a+crc -mtune=cortex-a53 -flto -O3 -pipe";
    assert_eq!(
        v["env"],
        json!({
            "BINPKG_FORMAT": "gpkg", "FEATURES": FEATURES, "USE": "-test",
            "COMMON_FLAGS": arm, "CFLAGS": arm, "CXXFLAGS": arm, "FCFLAGS": arm, "FFLAGS": arm,
        })
    );
    assert_eq!(v["tar_filters"]["vardbpkg"], true);
    let ssl = base(&v, &["openssl"]);
    assert_eq!(ssl["buildname"], format!("openrc-hardened-pi3-{t}-openssl"));
    assert_eq!(ssl["env"]["CFLAGS"], arm);
    assert_eq!(ssl["env"].get("USE"), None);
    assert_eq!(ssl["tar_filters"]["vardbpkg"], false);
}

#[test]
fn readme_user_defaults_host_build_and_cli_precedence() {
    if !no_system_defaults("readme_user_defaults_host_build_and_cli_precedence") {
        return;
    }
    let home = fixtures().join("home");
    let (mut c, _t) = config_cmd(Some(&home));
    let v = json_of(c.arg(fixture("examples/tor.toml")));
    let host = "-march=native -flto -O3 -pipe";
    assert_eq!(v["buildname"], "openrc-hardened-tor");
    assert_eq!(
        v["profile"],
        "default/linux/amd64/23.0/no-multilib/hardened"
    );
    assert_eq!(v["emerge"][0], "emerge");
    assert_eq!(v["env"]["CFLAGS"], host);
    assert_eq!(v["env"]["COMMON_FLAGS"], host);
    assert!(
        v["env"]["CPU_FLAGS_X86"]
            .as_str()
            .unwrap()
            .starts_with("aes avx avx2")
    );

    // B02: -p and -c on the command line win over the user's defaults.
    let (mut c, _t) = config_cmd(Some(&home));
    let v = json_of(
        c.args([
            "-p",
            "default/linux/amd64/23.0",
            "-c",
            "aarch64-unknown-linux-gnu",
        ])
        .arg(fixture("examples/tor.toml")),
    );
    assert_eq!(
        v["buildname"],
        "openrc-hardened-aarch64-unknown-linux-gnu-tor"
    );
    // A cross build links the crossdev profile, never the host one (B17).
    assert_eq!(v["profile"], "default/linux/arm64/23.0");
    let (mut c, _t) = config_cmd(Some(&home));
    let v = json_of(
        c.args(["-p", "default/linux/amd64/23.0"])
            .arg(fixture("examples/tor.toml")),
    );
    assert_eq!(v["profile"], "default/linux/amd64/23.0");
}

#[test]
fn xdg_gentree_file_shadows_reference_file() {
    if !no_system_defaults("xdg_gentree_file_shadows_reference_file") {
        return;
    }
    let xdg = tempdir();
    std::fs::create_dir_all(xdg.path().join("gentree")).unwrap();
    std::fs::write(
        xdg.path().join("gentree/config.toml"),
        "seed = \"from-xdg\"\n",
    )
    .unwrap();
    let home = fixtures().join("home");
    let (mut c, _t) = config_cmd(Some(&home));
    let v = json_of(
        c.env("XDG_CONFIG_HOME", xdg.path())
            .arg(fixture("examples/tor.toml")),
    );
    assert_eq!(v["seed"], "from-xdg");
    assert_eq!(v["profile"], Value::Null, "the genTree file was not read");
}

#[test]
fn readme_flag_set_examples() {
    let (mut c, _t) = config_cmd(None);
    let v = json_of(c.arg("--no-config").arg(fixture("flags.toml")));
    let common = "-O3 -pipe -march=native -flto";
    assert_eq!(
        v["env"],
        json!({
            "BINPKG_FORMAT": "gpkg",
            "USE": "-dracut ugrd",
            "FEATURES": "-test",
            "FOO_ARG": "bar",
            "COMMON_FLAGS": common, "CFLAGS": common, "CXXFLAGS": common, "FCFLAGS": common, "FFLAGS": common,
        })
    );
}

#[test]
fn emerge_options_config_overlay_and_depclean() {
    let (mut c, _t) = config_cmd(None);
    let v = json_of(c.arg("--no-config").arg(fixture("emerge-opts.toml")));
    let root = "/builds/stage3-openrc-emerge-opts";
    let pre = format!("emerge --root {root} --config-root {root}");
    assert_eq!(
        v["emerge"],
        argv(&format!(
            "{pre} --jobs=4 --verbose=y --usepkg=y --with-bdeps=n app-misc/hello"
        ))
    );
    assert_eq!(
        v["unmerge"],
        argv(&format!("{pre} --unmerge app-misc/unwanted"))
    );
    assert_eq!(v["depclean"], true);
}

#[test]
fn shipped_nginx_example() {
    let (mut c, _t) = config_cmd(None);
    let v = json_of(c.arg("--no-config").arg(fixture("examples/nginx.toml")));
    assert_eq!(base_names(&v), ["tini", "gcc", "ca-certificates"]);
    assert_eq!(v["tar_filters"]["vardbpkg"], true);
    let ca = base(&v, &["ca-certificates"]);
    assert_eq!(
        ca["emerge"],
        argv(
            "emerge --root /builds/stage3-openrc-ca-certificates --jobs=8 --verbose=y --nodeps --usepkg=y --with-bdeps=n --oneshot app-misc/ca-certificates"
        )
    );
    assert_eq!(ca["bases"], json!([]));
}

#[test]
fn dnscrypt_example() {
    let (mut c, _t) = config_cmd(None);
    let v = json_of(c.arg("--no-config").arg(fixture("examples/dnscrypt.toml")));
    assert_eq!(
        v["profile"],
        "default/linux/amd64/23.0/no-multilib/hardened"
    );
    assert_eq!(base_names(&v), ["tini", "ca-certificates"]);
    assert_eq!(v["tar_filters"]["vardbpkg"], true);
    assert_eq!(v["tar_filters"]["locales"], true);
    // Bases inherit the profile.
    assert_eq!(base(&v, &["ca-certificates"])["profile"], v["profile"]);
}

#[test]
fn text_output_lists_bases_first_indented() {
    let (mut c, _t) = config_cmd(None);
    let out = run_ok(c.arg("--no-config").arg(fixture("nginx.toml")));
    let pos = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in\n{out}"))
    };
    assert!(
        pos("\n        base (builtin:base)\n")
            < pos("\n    glibc-stripped (builtin:glibc-stripped)\n")
    );
    assert!(pos("\n  tini (builtin:tini)\n") < pos("\nnginx ("));
    assert!(out.contains("    base (builtin:base): same layer as above\n"));
    assert!(out.contains(
        "  emerge     emerge --root /builds/stage3-openrc-nginx --jobs=8 --verbose=y --usepkg=y --with-bdeps=n www-servers/nginx\n"
    ));
    assert!(
        out.ends_with("build order: base glibc glibc-stripped tini gcc nginx\n"),
        "{out}"
    );
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_input_errors() {
    let dir = tempdir();
    let p = |n: &str| dir.path().join(n);
    let files = [
        ("malformed.toml", "seed = \"s\"\npackages = = [\"a\"]\n"),
        ("noseed.toml", "packages = [\"a/b\"]\n"),
        (
            "unknown-builtin.toml",
            "seed = \"s\"\nbases = [\"glibc\", \"tinii\"]\n",
        ),
        (
            "missing-base.toml",
            "seed = \"s\"\nbases = [\"../nowhere/x.toml\"]\n",
        ),
        (
            "restricted-base.toml",
            "bases = [\"glibc\"]\nseed = \"s2\"\n",
        ),
        (
            "uses-restricted.toml",
            "seed = \"s\"\nbases = [\"restricted-base.toml\"]\n",
        ),
        ("cycle-a.toml", "seed = \"s\"\nbases = [\"cycle-b.toml\"]\n"),
        ("cycle-b.toml", "bases = [\"cycle-a.toml\"]\n"),
        (
            "wrong-type.toml",
            "seed = \"s\"\n[emerge_bools]\nverbose = \"false\"\n",
        ),
    ];
    for (n, text) in files {
        std::fs::write(p(n), text).unwrap();
    }
    let d = |n: &str| p(n).display().to_string();
    let cases: Vec<(PathBuf, String)> = vec![
        (fixture("typo.toml"), format!("{}:2:1: unknown key `pakages`: did you mean `packages`?", fixture("typo.toml").display())),
        (
            fixture("examples/tor-stale.toml"),
            format!("{}:6:1: unknown key `use`: did you mean `use` in the [env] table?", fixture("examples/tor-stale.toml").display()),
        ),
        (p("malformed.toml"), format!("{}:2:12: invalid TOML", d("malformed.toml"))),
        (p("noseed.toml"), format!("{}: no seed: add `seed = \"NAME\"` to it", d("noseed.toml"))),
        (
            p("unknown-builtin.toml"),
            "unknown builtin base `tinii`: the builtin bases are base, ca-certificates, coreutils, gcc, glibc, glibc-stripped, openssl, tini".into(),
        ),
        (
            p("missing-base.toml"),
            format!("base `../nowhere/x.toml` not found at {}", dir.path().join("../nowhere/x.toml").display()),
        ),
        (p("uses-restricted.toml"), format!("{}:2:1: `seed` cannot be set in a base config", d("restricted-base.toml"))),
        (p("cycle-a.toml"), format!("bases form a cycle: {0} -> {1} -> {0}", d("cycle-a.toml"), d("cycle-b.toml"))),
        (
            p("wrong-type.toml"),
            format!("{}:3:11: `emerge_bools.verbose` must be a boolean (true or false), not a string", d("wrong-type.toml")),
        ),
    ];
    for (file, want) in cases {
        let (mut c, _t) = config_cmd(None);
        let err = fails(&run(c.arg("--no-config").arg(&file)));
        assert!(
            err.contains(&want),
            "{}: want {want:?} in:\n{err}",
            file.display()
        );
    }
}
