//! Tests of config resolution: inheritance, defaults, dirs, overrides and their errors.

use super::*;
use crate::builder::config::DefaultSources;

fn defaults(texts: &[&str]) -> Defaults {
    let mut d = Defaults::embedded().unwrap();
    for (i, t) in texts.iter().enumerate() {
        d.merge_text(t, Path::new(&format!("default{i}.toml")))
            .unwrap();
    }
    d
}

fn res(text: &str, defs: &[&str], cli: &CliOverrides) -> Result<ResolvedConfig, ConfigError> {
    resolve_str(text, Path::new("/cfg/nginx.toml"), cli, &defaults(defs))
}

fn ok(text: &str, defs: &[&str]) -> ResolvedConfig {
    res(text, defs, &CliOverrides::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn sv(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn find<'a>(c: &'a ResolvedConfig, name: &str) -> &'a ResolvedConfig {
    c.build_order()
        .into_iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

const README_NGINX: &str = "seed = \"stage3-openrc\"\nbases = [\"tini\", \"gcc\"]\npackages = [\"www-servers/nginx\"]\nunmerge = [\"sys-devel/gcc\"]\n[env]\nuse = \"nginx\"\n[clean_filter_options]\ncharmaps = true\n[tar_filter_options]\nlocales = true\n";

#[test]
fn reproducible_is_a_top_level_switch_that_bases_share() {
    let c = ok(
        "seed = \"s\"\nbases = [\"glibc\"]\nreproducible = true\n",
        &[],
    );
    assert!(c.reproducible && find(&c, "glibc").reproducible);
    assert!(!ok("seed = \"s\"\n", &[]).reproducible);
    assert!(ok("seed = \"s\"\n", &["reproducible = true\n"]).reproducible);
}

#[test]
fn cache_is_a_checked_top_level_reference_outside_the_key() {
    let d = "cache = \"http://127.0.0.1:5000/team/cache\"\n";
    let c = ok("seed = \"s\"\nbases = [\"glibc\"]\n", &[d]);
    assert_eq!(c.cache.as_deref(), Some("http://127.0.0.1:5000/team/cache"));
    assert_eq!(find(&c, "glibc").cache, c.cache);
    let own = ok("seed = \"s\"\ncache = \"reg.io/other\"\n", &[d]);
    assert_eq!(own.cache.as_deref(), Some("reg.io/other"));
    assert_eq!(ok("seed = \"s\"\n", &[]).cache, None);
    let plain = ok("seed = \"s\"\n", &[]);
    assert_eq!(
        crate::builder::build::key_config(&c),
        crate::builder::build::key_config(&plain),
        "where layers are cached is no input of a layer"
    );
    let e = res(
        "seed = \"s\"\ncache = \"ftp://x/y\"\n",
        &[],
        &CliOverrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cache") && e.contains("invalid cache reference"),
        "{e}"
    );
}

#[test]
fn source_date_epoch_is_a_top_level_integer_that_bases_share() {
    let c = ok(
        "seed = \"s\"\nbases = [\"glibc\"]\nsource_date_epoch = 1700000000\n",
        &[],
    );
    assert_eq!(c.source_date_epoch, Some(1_700_000_000));
    assert_eq!(find(&c, "glibc").source_date_epoch, Some(1_700_000_000));
    assert_eq!(ok("seed = \"s\"\n", &[]).source_date_epoch, None);
    assert_eq!(
        ok("seed = \"s\"\n", &["source_date_epoch = 5\n"]).source_date_epoch,
        Some(5)
    );
    assert_eq!(
        ok(
            "seed = \"s\"\nsource_date_epoch = 7\n",
            &["source_date_epoch = 5\n"]
        )
        .source_date_epoch,
        Some(7)
    );
}

#[test]
fn glibc_layer_argv_matches_spec_4_1() {
    let c = ok("seed = \"stage3-openrc\"\nbases = [\"glibc\"]\n", &[]);
    let g = find(&c, "glibc");
    assert_eq!(g.buildname, "stage3-openrc-glibc");
    assert_eq!(
        g.emerge.as_deref().unwrap(),
        sv(
            "emerge --root /builds/stage3-openrc-glibc --jobs=8 --verbose=y --nodeps --usepkg=y --with-bdeps=n --oneshot sys-libs/glibc"
        )
    );
    // A config without packages has no emerge run.
    assert_eq!(c.emerge, None);
}

#[test]
fn readme_nginx_example() {
    let c = ok(README_NGINX, &[]);
    assert_eq!(c.name, "nginx");
    assert_eq!(c.buildname, "stage3-openrc-nginx");
    assert_eq!(
        c.emerge.as_deref().unwrap(),
        sv(
            "emerge --root /builds/stage3-openrc-nginx --jobs=8 --verbose=y --usepkg=y --with-bdeps=n www-servers/nginx"
        )
    );
    assert_eq!(
        c.unmerge_argv.as_deref().unwrap(),
        sv("emerge --root /builds/stage3-openrc-nginx --unmerge sys-devel/gcc")
    );
    assert_eq!(c.depclean_argv, None);
    assert_eq!(c.env.get("USE").map(String::as_str), Some("nginx"));
    assert_eq!(c.tar_filters.get("locales"), Some(&true));
    assert_eq!(c.clean_filters.get("locales"), Some(&false));
    // B34: base is listed once, at its first position.
    let order: Vec<&str> = c.build_order().iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        order,
        ["base", "glibc", "glibc-stripped", "tini", "gcc", "nginx"]
    );
    // Bases never get the parent's USE (inherit_use defaults to false, B11).
    assert_eq!(
        find(&c, "base").env.get("USE").map(String::as_str),
        Some("build")
    );
    assert_eq!(find(&c, "gcc").env.get("USE"), None);
    assert_eq!(
        find(&c, "glibc-stripped").clean_filters.get("locales"),
        Some(&true)
    );
    assert_eq!(find(&c, "tini").emerge_bools.get("oneshot"), None);
    assert_eq!(c.pkgdir, "pkgdir");
    assert_eq!(c.effective_profile(), None);
}

const README_USER_DEFAULTS: &str =
    include_str!("../../../../tests/fixtures/configs/home/.config/genTree/config.toml");

#[test]
fn spec_3_7_worked_example() {
    let c = ok(
        README_NGINX,
        &["[env]\ncommon_flags = \"-march=native -O3 -pipe\"\n"],
    );
    let flags = "-march=native -O3 -pipe";
    let want: BTreeMap<String, String> = [
            ("USE", "nginx"),
            ("FEATURES", "buildpkg binpkg-multi-instance parallel-fetch parallel-install -ebuild-locks -merge-wait -merge-sync"),
            ("BINPKG_FORMAT", "gpkg"),
            ("COMMON_FLAGS", flags),
            ("CFLAGS", flags),
            ("CXXFLAGS", flags),
            ("FCFLAGS", flags),
            ("FFLAGS", flags),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(c.env, want);
    // Bases get their own file USE or none, never nginx; their flags are not doubled.
    let base = find(&c, "base");
    assert_eq!(base.env["USE"], "build");
    assert_eq!(base.env["CFLAGS"], flags);
    assert_eq!(find(&c, "tini").env.get("USE"), None);
}

#[test]
fn readme_user_defaults_with_pi3_tag() {
    let cli = CliOverrides {
        build_tag: Some("pi3".into()),
        ..Default::default()
    };
    let c = res(
        "bases = [\"glibc\"]\npackages = [\"www-servers/nginx\"]\n",
        &[README_USER_DEFAULTS],
        &cli,
    )
    .unwrap();
    let t = "aarch64-unknown-linux-gnu";
    assert_eq!(c.seed, "openrc-hardened");
    assert_eq!(c.crossdev_target.as_deref(), Some(t));
    assert_eq!(c.buildname, format!("openrc-hardened-pi3-{t}-nginx"));
    assert_eq!(c.pkgdir, format!("pkgdir_pi3_{t}"));
    assert_eq!(c.effective_profile(), Some("default/linux/arm64/23.0"));
    assert_eq!(c.emerge.as_ref().unwrap()[0], format!("emerge-{t}"));
    let arm = "-march=armv8-a+crc -mtune=cortex-a53 -flto -O3 -pipe";
    for v in ["COMMON_FLAGS", "CFLAGS", "CXXFLAGS", "FCFLAGS", "FFLAGS"] {
        assert_eq!(c.env.get(v).map(String::as_str), Some(arm), "{v}");
    }
    assert_eq!(
        c.env.get("CPU_FLAGS_X86"),
        None,
        "host CPU flags must not leak into a cross build (B18)"
    );
    assert!(c.env["FEATURES"].contains("buildpkg"));
    let g = find(&c, "glibc");
    assert_eq!(g.crossdev_target.as_deref(), Some(t));
    assert_eq!(g.buildname, format!("openrc-hardened-pi3-{t}-glibc"));
    assert_eq!(g.env.get("CFLAGS").map(String::as_str), Some(arm));

    // Without the tag: the host build with the global profile and flags.
    let c = res(
        "packages = [\"x/y\"]\n",
        &[README_USER_DEFAULTS],
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(c.crossdev_target, None);
    assert_eq!(
        c.effective_profile(),
        Some("default/linux/amd64/23.0/no-multilib/hardened")
    );
    assert_eq!(c.env["CFLAGS"], "-march=native -flto -O3 -pipe");
    assert!(c.env["CPU_FLAGS_X86"].starts_with("aes avx"));

    // Per-seed overrides for another seed: env deep-merged (B05), package_tag names the pkgdir.
    let c = res(
        "seed = \"openrc-desktop-generic\"\n",
        &[README_USER_DEFAULTS],
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.effective_profile(),
        Some("default/linux/amd64/23.0/desktop")
    );
    assert_eq!(c.pkgdir, "pkgdir_generic");
    assert_eq!(c.env["CFLAGS"], "-flto -O3 -pipe");
    assert!(
        c.env.contains_key("CPU_FLAGS_X86"),
        "global env keys survive a seed's [env] override"
    );
}

#[test]
fn precedence_table() {
    let defs = "seed = \"a\"\nprofile = \"global\"\ncrossdev_target = \"x86_64-pc-linux-gnu\"\n[default.a]\nprofile = \"seed-a\"\n[default.b]\nprofile = \"seed-b\"\ndepclean = true\n[default.b.t]\ndepclean = false\n";
    let cli_p = CliOverrides {
        profile: Some("cli".into()),
        crossdev_target: Some("aarch64-unknown-linux-gnu".into()),
        ..Default::default()
    };
    let none = CliOverrides::default();
    let tag = CliOverrides {
        build_tag: Some("t".into()),
        ..Default::default()
    };
    // (what, file, cli, profile, target, depclean)
    let cases = [
        (
            "seed overrides of the default seed",
            "",
            &none,
            Some("seed-a"),
            Some("x86_64-pc-linux-gnu"),
            false,
        ),
        (
            "B02: CLI beats file and defaults",
            "profile = \"file\"\n",
            &cli_p,
            Some("cli"),
            Some("aarch64-unknown-linux-gnu"),
            false,
        ),
        (
            "file beats defaults",
            "profile = \"file\"\n",
            &none,
            Some("file"),
            Some("x86_64-pc-linux-gnu"),
            false,
        ),
        (
            "B03: overrides of the file's seed",
            "seed = \"b\"\n",
            &none,
            Some("seed-b"),
            Some("x86_64-pc-linux-gnu"),
            true,
        ),
        (
            "B04: a false tag override wins",
            "seed = \"b\"\n",
            &tag,
            Some("seed-b"),
            Some("x86_64-pc-linux-gnu"),
            false,
        ),
        (
            "file false beats a true default",
            "seed = \"b\"\ndepclean = false\n",
            &none,
            Some("seed-b"),
            Some("x86_64-pc-linux-gnu"),
            false,
        ),
    ];
    for (what, file, cli, profile, target, depclean) in cases {
        let c = res(file, &[defs], cli).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(c.profile.as_deref(), profile, "{what}");
        assert_eq!(c.crossdev_target.as_deref(), target, "{what}");
        assert_eq!(c.depclean, depclean, "{what}");
    }
}

#[test]
fn inheritance_to_bases() {
    let c = ok(
        "seed = \"s\"\nprofile = \"p\"\nrebuild = true\nclean_build = false\npackage_tag = \"pt\"\nconfig_overlay = \"ov\"\nbases = [\"glibc\"]\npackages = [\"a/b\"]\ndepclean = true\noutput_file = \"x.tar\"\n[env]\ncflags = \"-O2\"\nmakeopts = \"-j4\"\nuse = \"nginx\"\n[emerge_args]\nkeep_going = \"y\"\n[tar_filter_options]\nvardbpkg = true\n",
        &[],
    );
    let g = find(&c, "glibc");
    assert_eq!(g.profile.as_deref(), Some("p"));
    assert!(g.rebuild && !g.clean_build);
    assert_eq!(g.package_tag.as_deref(), Some("pt"));
    assert_eq!(g.pkgdir, "pkgdir_pt");
    // inherit_config defaults to false: no config overlay for the base.
    assert_eq!(g.config_overlay, None);
    assert!(
        !g.emerge
            .as_ref()
            .unwrap()
            .contains(&"--config-root".to_string())
    );
    // B21/B10: cflags and misc env inherited; USE is not.
    assert_eq!(g.env.get("CFLAGS").map(String::as_str), Some("-O2"));
    assert_eq!(g.env.get("MAKEOPTS").map(String::as_str), Some("-j4"));
    assert_eq!(g.env.get("USE"), None);
    // DEF_ARGS tables are not inherited (B10 deviation kept).
    assert_eq!(g.emerge_args.get("keep_going"), None);
    assert_eq!(g.tar_filters.get("vardbpkg"), Some(&false));
    assert_eq!(g.output_file, None);
    // The top config: B47 --config-root everywhere, depclean argv.
    let root = "/builds/s-nginx";
    assert_eq!(
        c.emerge.as_deref().unwrap(),
        sv(&format!(
            "emerge --root {root} --config-root {root} --jobs=8 --keep-going=y --verbose=y --usepkg=y --with-bdeps=n a/b"
        ))
    );
    assert_eq!(
        c.depclean_argv.as_deref().unwrap(),
        sv(&format!(
            "emerge --root {root} --config-root {root} --depclean --with-bdeps=n"
        ))
    );
    assert_eq!(c.output_file.as_deref(), Some(Path::new("x.tar")));
}

#[test]
fn inherit_flags_explicit_true_apply_b09() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("child.toml"),
        "inherit_use = true\ninherit_config = true\ninherit_env = false\n[env]\nuse = \"-bar\"\n",
    )
    .unwrap();
    let top = dir.path().join("top.toml");
    std::fs::write(&top, "seed = \"s\"\nbases = [\"child.toml\"]\nconfig_overlay = \"ov\"\n[env]\nuse = \"foo bar\"\nmakeopts = \"-j4\"\n").unwrap();
    let c = resolve_file(&top, &CliOverrides::default(), &defaults(&[])).unwrap();
    let b = &c.bases[0];
    assert_eq!(b.env.get("USE").map(String::as_str), Some("-bar foo"));
    assert_eq!(b.config_overlay.as_deref(), Some("ov"));
    assert_eq!(b.env.get("MAKEOPTS"), None);
}

#[test]
fn bases_by_relative_path_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("images");
    std::fs::create_dir_all(dir.path().join("common")).unwrap();
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(
        dir.path().join("common/tools.toml"),
        "bases = [\"base\", \"shared.toml\"]\npackages = \"app-misc/tool\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("common/shared.toml"),
        "bases = [\"base\"]\n",
    )
    .unwrap();
    let top = sub.join("img.toml");
    std::fs::write(
        &top,
        "seed = \"s\"\nbases = [\"../common/tools.toml\", \"../common/shared.toml\", \"base\"]\n",
    )
    .unwrap();
    let c = resolve_file(&top, &CliOverrides::default(), &defaults(&[])).unwrap();
    let order: Vec<&str> = c.build_order().iter().map(|b| b.name.as_str()).collect();
    assert_eq!(order, ["base", "shared", "tools", "img"]);
    assert_eq!(c.bases.len(), 3, "the nested tree keeps every reference");
}

#[test]
fn stamps_name_every_file_read_and_a_too_large_base_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("img.toml");
    let base = dir.path().join("b.toml");
    let gone = dir.path().join("gone.toml");
    std::fs::write(&base, "packages = [\"a/b\"]\n").unwrap();
    std::fs::write(&top, "seed = \"s\"\nbases = [\"b.toml\", \"base\"]\n").unwrap();
    let cli = CliOverrides::default();
    let (r, files) = resolve_file_stamped(&top, &cli, &defaults(&[]));
    r.unwrap();
    let paths: Vec<&Path> = files.iter().map(|f| f.path.as_path()).collect();
    assert_eq!(
        paths,
        [top.as_path(), base.as_path()],
        "builtins read no file"
    );
    assert!(files.iter().all(|f| f.id.is_some() && f.is_current()));

    // A missing base is stamped absent: creating it is a change.
    std::fs::write(&top, "seed = \"s\"\nbases = [\"gone.toml\"]\n").unwrap();
    let (r, files) = resolve_file_stamped(&top, &cli, &defaults(&[]));
    assert!(matches!(r, Err(ConfigError::MissingBase { .. })));
    assert_eq!(files[1].path, gone);
    assert!(files[1].id.is_none() && files[1].is_current());

    let f = std::fs::File::create(&base).unwrap();
    f.set_len(file::MAX_CONFIG_BYTES + 1).unwrap();
    std::fs::write(&top, "seed = \"s\"\nbases = [\"b.toml\"]\n").unwrap();
    let e = resolve_file(&top, &cli, &defaults(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{} is 2097153 bytes", base.display())),
        "{e}"
    );
}

#[test]
fn base_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("a.toml"), "seed = \"s\"\nbases = [\"b.toml\"]\n").unwrap();
    std::fs::write(p("b.toml"), "bases = [\"c.toml\"]\n").unwrap();
    std::fs::write(p("c.toml"), "bases = [\"b.toml\"]\n").unwrap();
    std::fs::write(p("restricted.toml"), "\n\npackage_tag = \"x\"\n").unwrap();
    std::fs::write(p("r.toml"), "seed = \"s\"\nbases = [\"restricted.toml\"]\n").unwrap();
    std::fs::write(
        p("m.toml"),
        "seed = \"s\"\nbases = [\"nope/missing.toml\"]\n",
    )
    .unwrap();
    std::fs::write(p("u.toml"), "seed = \"s\"\nbases = [\"glibcc\"]\n").unwrap();
    let d = defaults(&[]);
    let err = |n: &str| {
        resolve_file(&p(n), &CliOverrides::default(), &d)
            .unwrap_err()
            .to_string()
    };
    let (a, b, c) = (p("a.toml"), p("b.toml"), p("c.toml"));
    assert_eq!(
        err("a.toml"),
        format!(
            "bases form a cycle: {} -> {} -> {}",
            b.display(),
            c.display(),
            b.display()
        )
    );
    let _ = a;
    assert_eq!(
        err("r.toml"),
        format!(
            "{}:3:1: `package_tag` cannot be set in a base config (only the top-level build file or the defaults set it; bases inherit it)",
            p("restricted.toml").display()
        )
    );
    let e = err("m.toml");
    assert!(
        e.starts_with(&format!(
            "{}: base `nope/missing.toml` not found at {}",
            p("m.toml").display(),
            p("nope/missing.toml").display()
        )),
        "{e}"
    );
    assert!(err("u.toml").contains("unknown builtin base `glibcc`: the builtin bases are base, ca-certificates, coreutils, gcc, glibc, glibc-stripped, openssl, tini"));
}

#[test]
fn missing_seed_says_how_to_set_one() {
    let d = Defaults::load(&DefaultSources::files([PathBuf::from(
        "/nonexistent/gentree/config.toml",
    )]))
    .unwrap();
    let e = resolve_str(
        "packages = [\"a/b\"]\n",
        Path::new("x.toml"),
        &CliOverrides::default(),
        &d,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "x.toml: no seed: add `seed = \"NAME\"` to it or to a default config (/nonexistent/gentree/config.toml), naming a seed imported with `gentree-fs import-seed`"
    );
}

#[test]
fn invalid_values() {
    let cases = [
        (
            "seed = \"a/b\"\n",
            "seed `a/b` (from /cfg/nginx.toml) is not a safe name",
        ),
        ("seed = \"s\"\nname = \"..\"\n", "name `..`"),
        ("seed = \"s\"\nbuild_tag = \"a,b\"\n", "build_tag `a,b`"),
        (
            "seed = \"s\"\npackages = [\"--ask\"]\n",
            "`packages`: `--ask` is not a package atom",
        ),
        (
            "seed = \"s\"\nwhiteouts = [\"/etc/x\"]\n",
            "`whiteouts`: `/etc/x` must be a relative path",
        ),
        (
            "seed = \"s\"\nopaques = [\"a/../../b\"]\n",
            "`opaques`: `a/../../b` must be a relative path",
        ),
        (
            "seed = \"s\"\nseed_update_args = \"'x\"\n",
            "/cfg/nginx.toml:2:20: `seed_update_args`: unterminated single quote",
        ),
    ];
    for (text, want) in cases {
        let e = res(text, &[], &CliOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn misc_keys() {
    let c = ok(
        "seed = \"s\"\n_buildname = \"custom\"\nwhiteouts = [\"./usr/share/x/\", \"usr/share/x\"]\npkgdir = \"/srv/pkgs\"\nseed_update_args = \"--update 'a b'\"\n[emerge_bools]\nupdate = true\ndeep = true\nask = false\n[emerge_args]\nload_average = 4.5\n",
        &["emerge_plain_bools = [\"ask\"]\n"],
    );
    assert_eq!(c.buildname, "custom");
    assert_eq!(c.whiteouts, ["usr/share/x"]);
    assert_eq!(c.dirs.pkgdir.as_deref(), Some(Path::new("/srv/pkgs")));
    assert_eq!(c.seed_update_args, ["--update", "a b"]);
    assert!(c.refilter && c.clean_build && !c.clean_seed);
    assert_eq!(c.profile_repo, "gentoo");
    assert_eq!(c.system_repos, Path::new("/var/db/repos"));
    let opts = emerge::option_args(&c.emerge_args.0, &c.emerge_bools.0, &c.emerge_plain_bools);
    assert_eq!(
        opts,
        sv("--jobs=8 --load-average=4.5 --verbose=y --usepkg=y --with-bdeps=n --update --deep")
    );
}

#[test]
fn resolution_is_deterministic() {
    let a = serde_json::to_string(&ok(README_NGINX, &[README_USER_DEFAULTS])).unwrap();
    let b = serde_json::to_string(&ok(README_NGINX, &[README_USER_DEFAULTS])).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_seed_without_a_file_gets_every_default() {
    let d = defaults(&[
        "[default.s3]\nprofile = \"default/linux/amd64/23.0\"\nseed_update_args = \"--update 'a b'\"\n",
    ]);
    let c = resolve_seed("s3", &[], &CliOverrides::default(), &d).unwrap();
    assert_eq!(c.name, "s3");
    assert_eq!(c.seed, "s3");
    assert_eq!(c.profile.as_deref(), Some("default/linux/amd64/23.0"));
    assert_eq!(c.seed_update_args, ["--update", "a b"]);
    assert!(c.bases.is_empty() && c.emerge.is_none());
    // The embedded default update arguments.
    let plain = resolve_seed("other", &[], &CliOverrides::default(), &d).unwrap();
    assert_eq!(
        plain.seed_update_args,
        sv("--jobs 4 --update --deep --newuse --changed-use --with-bdeps=y --usepkg=y @world")
    );
    assert_eq!(plain.profile, None);
    // Builtin bases and the command line apply as to a file.
    let cli = CliOverrides {
        crossdev_target: Some("aarch64-unknown-linux-gnu".into()),
        ..Default::default()
    };
    let x = resolve_seed("s3", &["glibc"], &cli, &d).unwrap();
    let names: Vec<&str> = x.build_order().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["base", "glibc", "s3"]);
    assert_eq!(
        find(&x, "glibc").emerge.as_deref().map(|a| a[0].as_str()),
        Some("emerge-aarch64-unknown-linux-gnu")
    );
    // Names that could break out of the synthetic TOML are refused.
    for bad in ["a\"b", "x y", "../s"] {
        assert!(
            resolve_seed(bad, &[], &CliOverrides::default(), &d).is_err(),
            "{bad}"
        );
    }
    assert!(resolve_seed("s3", &["g\"]"], &CliOverrides::default(), &d).is_err());
}
