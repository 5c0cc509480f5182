//! The rough edges a new user hits first: what the mount says about a live or empty
//! mountpoint, and plain (uncoloured) logs when output is not a terminal.

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::mount::Daemon;
use crate::util::{self, gentree, run, wait_until};

#[test]
fn mount_refuses_a_live_mountpoint_and_says_how_to_fill_an_empty_one() {
    if !(util::require_root("mount_refuses_a_live_mountpoint")
        && util::require_fuse("mount_refuses_a_live_mountpoint"))
    {
        return;
    }
    let t = util::tempdir();
    let (conf, mp) = (t.path().join("conf"), t.path().join("mnt"));
    // Unmounted and stopped on drop, even when an assertion fails first.
    let daemon = Daemon::start(gentree(), &conf, &conf.join("configs"), &mp, t.path());
    let log = || daemon.log();
    wait_until("the hints", Duration::from_secs(10), || {
        log().contains("no build config in")
    });
    let l = log();
    assert!(
        l.contains("no seed in") && l.contains("gentree-fs import-seed"),
        "{l}"
    );
    assert!(l.contains("/configs/`"), "{l}");
    assert!(
        !l.contains('\u{1b}'),
        "colour codes in a redirected log: {l:?}"
    );
    // A second mount on the live one says so, instead of "not empty".
    let again = run(gentree()
        .args(["--no-config", "--conf-root"])
        .arg(&conf)
        .arg(&mp));
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "mounted twice");
    assert!(
        e.contains("is already mounted (fuse") && e.contains("fusermount3 -u"),
        "{e}"
    );
    daemon.stop();
}

#[test]
fn warnings_are_plain_text_when_redirected_and_with_no_color() {
    let t = util::tempdir();
    let cfg = t.path().join("c.toml");
    // `deplean` is a README misspelling accepted with a warning.
    fs::write(&cfg, "seed = \"s\"\ndeplean = true\n").unwrap();
    for no_color in [false, true] {
        let mut c = gentree();
        c.args(["config", "--no-config"]).arg(&cfg);
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let out = run(&mut c);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{e}");
        assert!(
            e.contains("WARN") && e.contains("deplean"),
            "no warning: {e}"
        );
        assert!(
            !e.contains('\u{1b}'),
            "colour codes in redirected output: {e:?}"
        );
    }
}

#[test]
fn pack_of_a_store_layer_dir_packs_its_tree_not_its_metadata() {
    let t = util::tempdir();
    let layer = t.path().join("layers/0123abcd");
    fs::create_dir_all(layer.join("root/etc")).unwrap();
    fs::write(layer.join("root/etc/hostname"), "box\n").unwrap();
    fs::write(layer.join("meta.json"), "{\"key\": \"0123abcd\"}").unwrap();
    let out = run(gentree()
        .arg("pack")
        .arg("--layer")
        .arg(&layer)
        .arg("-o")
        .arg(t.path().join("x.tar")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = util::run_ok(Command::new("tar").arg("-tf").arg(t.path().join("x.tar")));
    assert!(list.lines().any(|l| l == "etc/hostname"), "{list}");
    assert!(
        !list.contains("meta.json") && !list.contains("root/"),
        "{list}"
    );
}

#[test]
fn a_user_importing_roots_directory_is_told_to_import_a_tarball() {
    let Some((user, _, _)) =
        util::require_test_user("a_user_importing_roots_directory_is_told_to_import_a_tarball")
    else {
        return;
    };
    let t = util::tempdir();
    let src = t.path().join("rootfs");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/shadow"), "root:*:1::::::\n").unwrap();
    util::set_mode(&src.join("etc/shadow"), 0o600);
    let conf = t.path().join("conf");
    fs::create_dir_all(&conf).unwrap();
    util::run_ok(Command::new("chown").arg(&user).arg(&conf));
    let out = run(Command::new("runuser")
        .args(["-u", &user, "--"])
        .arg(util::bin())
        .arg("import-seed")
        .arg(&src)
        .arg("s")
        .arg("--conf-root")
        .arg(&conf));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("etc/shadow") && e.contains("import it as a tarball") && e.contains("tar "),
        "{e}"
    );
    assert!(!conf.join("seeds/s").exists(), "a partial seed was left");
}

#[test]
fn completions_load_in_bash_and_man_pages_cover_every_command() {
    let out = util::run_ok(Command::new("bash").arg("-c").arg(format!(
        "source <({} completions bash) && complete -p gentree-fs",
        util::bin().display()
    )));
    assert!(out.contains(" -F _gentree__fs gentree-fs"), "{out}");
    let t = util::tempdir();
    let dir = t.path().join("man1");
    let o = run(gentree().arg("man").arg("--dir").arg(&dir));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for sub in [
        "",
        "-build",
        "-exec",
        "-import-seed",
        "-union",
        "-serve",
        "-pack",
    ] {
        let page = fs::read_to_string(dir.join(format!("gentree-fs{sub}.1")))
            .unwrap_or_else(|e| panic!("gentree-fs{sub}.1: {e}"));
        assert!(
            page.starts_with(".ie") || page.contains(".TH"),
            "{sub}: {page}"
        );
    }
    let main = fs::read_to_string(dir.join("gentree-fs.1")).unwrap();
    assert!(
        main.contains("layers/") && main.contains("import\\-seed"),
        "{main}"
    );
    assert!(
        !fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("__")),
        "internal commands get no page"
    );
}

#[test]
fn tail_follows_a_first_build_and_a_users_copies_can_be_repeated() {
    let Some((user, _, _)) = util::require_test_user("tail_follows_a_first_build") else {
        return;
    };
    if !util::require_fuse("tail_follows_a_first_build") {
        return;
    }
    let f = crate::build::Fixture::new(None);
    f.write_cfg(
        "small.toml",
        "seed = \"testseed\"\npackages = [\"app-misc/gt-lib\"]\n",
    );
    let mp = f.dir.path().join("mp");
    let mut cmd = f.cmd(None);
    cmd.args(["-o", "allow_other"]);
    let daemon = Daemon::start(cmd, &f.conf(), &f.cfg_dir(), &mp, f.dir.path());
    // The README's example: follow the log of a build that has not started yet.
    let followed = f.dir.path().join("followed");
    let mut tail = Command::new("tail")
        .arg("-f")
        .arg(mp.join("builds/small.log"))
        .stdout(fs::File::create(&followed).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let cp = run(Command::new("cp")
        .arg(mp.join("builds/small.tar"))
        .arg(f.dir.path().join("a.tar")));
    assert!(cp.status.success(), "{}", daemon.log());
    let log = fs::read_to_string(mp.join("builds/small.log")).unwrap();
    assert!(log.lines().count() > 10, "{log}");
    // tail polls once a second on FUSE.
    wait_until("tail to catch up", Duration::from_secs(15), || {
        fs::read_to_string(&followed).unwrap_or_default() == log
    });
    tail.kill().unwrap();
    tail.wait().unwrap();
    // An ordinary user copies the image twice into the same place.
    let out = f.dir.path().join("user-out");
    fs::create_dir(&out).unwrap();
    util::run_ok(Command::new("chown").arg(&user).arg(&out));
    for round in 0..2 {
        let c = run(Command::new("runuser")
            .args(["-u", &user, "--", "cp"])
            .arg(mp.join("builds/small.tar"))
            .arg(out.join("small.tar")));
        assert!(
            c.status.success(),
            "cp #{round} as {user}: {}",
            String::from_utf8_lossy(&c.stderr)
        );
    }
    // Still read-only: writing the image is refused.
    let w = fs::OpenOptions::new()
        .write(true)
        .open(mp.join("builds/small.tar"));
    assert_eq!(w.err().and_then(|e| e.raw_os_error()), Some(libc::EACCES));
}

#[test]
fn a_build_shows_its_steps_and_the_image_write_progress_on_a_terminal() {
    if !util::require_root("a_build_shows_its_steps")
        || !util::require_tool("a_build_shows_its_steps", "script")
    {
        return;
    }
    let f = crate::build::Fixture::new(None);
    let cfg = f.write_cfg(
        "steps.toml",
        "seed = \"testseed\"\npackages = [\"app-misc/gt-lib\"]\n",
    );
    let build = format!(
        "HOME={} {} build --no-config --conf-root {} {}",
        f.dir.path().display(),
        util::bin().display(),
        f.conf().display(),
        cfg.display()
    );
    // On a terminal (script(1) gives the build a pty): step lines and a redrawn line.
    let out = run(Command::new("script").args(["-qefc", &build, "/dev/null"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for step in [
        "computing layer keys",
        "building layer",
        "published layer",
        "writing the image",
    ] {
        assert!(text.contains(step), "no {step:?} line:\n{text}");
    }
    assert!(
        text.contains("\rwriting image: "),
        "no progress line on a terminal:\n{text}"
    );
    // Redirected: the same steps as plain lines, nothing redrawn.
    let out = f.build(None, &cfg, &["--rebuild"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("published layer") && err.contains("writing the image"),
        "{err}"
    );
    assert!(
        !err.contains('\r'),
        "a redrawn line in redirected output: {err:?}"
    );
}
