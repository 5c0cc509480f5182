//! The namespace helper through the hidden `__ns-run` command: real user, mount and
//! pid namespaces, as root and as the unprivileged test user.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{self, gentree, run};

/// A temp dir holding a tiny root: merged-usr symlinks and empty mount points (the
/// plans bind the host's /usr read-only).
fn mini_root() -> (tempfile::TempDir, PathBuf) {
    let t = util::tempdir();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    for l in ["bin", "lib", "lib64", "sbin"] {
        symlink(format!("usr/{l}"), root.join(l)).unwrap();
    }
    for d in ["usr", "etc", "tmp", "dev", "proc"] {
        std::fs::create_dir(root.join(d)).unwrap();
    }
    (t, root)
}

fn plan(root: &Path, mapping: serde_json::Value, script: &str) -> serde_json::Value {
    serde_json::json!({
        "mapping": mapping,
        "root": root,
        "mounts": [
            {"Bind": {"source": "/usr", "target": "/usr", "recursive": false, "readonly": true}},
            {"Dev": {"target": "/dev"}},
            {"Tmpfs": {"target": "/tmp", "options": "mode=1777"}},
            {"Proc": {"target": "/proc"}}
        ],
        "steps": [{"Run": {"argv": ["sh", "-c", script], "env": env()}}],
        "cwd": "/"
    })
}

/// What a root caller maps to without a range of its own (root's default range),
/// with the mini root given to that range's root, as a root store is.
fn root_mapping(root: &Path) -> serde_json::Value {
    let range = serde_json::json!({"start": ROOT_RANGE, "count": 65536});
    let id = ROOT_RANGE.to_string();
    util::run_ok(
        Command::new("chown")
            .args(["-R", "-h", &format!("{id}:{id}")])
            .arg(root),
    );
    serde_json::json!({"Privileged": {"uids": range, "gids": range}})
}

const ROOT_RANGE: u32 = 1_000_000_000;

fn env() -> serde_json::Value {
    serde_json::json!([["PATH", "/usr/bin:/bin"], ["MARK", "yes"]])
}

fn write_plan(dir: &Path, plan: &serde_json::Value) -> std::path::PathBuf {
    let p = dir.join("plan.json");
    std::fs::write(&p, serde_json::to_vec(plan).unwrap()).unwrap();
    util::set_mode(&p, 0o644);
    p
}

const PROBE: &str = "echo pid=$$; echo uid=$(id -u); echo env=$(env | sort | tr '\\n' ' '); \
    echo maps=$(wc -l < /proc/self/uid_map); \
    touch /usr/probe 2>/dev/null && echo usr=rw || echo usr=ro; \
    touch /tmp/f && chown 1234:2345 /tmp/f 2>/dev/null && echo chown=$(stat -c %u:%g /tmp/f) || echo chown=no; \
    exit 7";

#[test]
fn namespace_as_root() {
    if !util::require_root("namespace_as_root") {
        return;
    }
    let (t, root) = mini_root();
    let p = write_plan(t.path(), &plan(&root, root_mapping(&root), PROBE));
    let out = run(gentree().arg("__ns-run").arg(&p));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pid 1 is the reaper; the command is its first child.
    assert!(stdout.contains("pid=2\n"), "{stdout}");
    assert!(stdout.contains("uid=0\n"), "{stdout}");
    // Exactly the plan's environment (sh adds PWD and SHLVL, nothing from the host).
    assert!(stdout.contains("MARK=yes"), "{stdout}");
    assert!(!stdout.contains("HOME="), "host env leaked: {stdout}");
    assert!(stdout.contains("usr=ro"), "{stdout}");
    assert!(stdout.contains("chown=1234:2345"), "{stdout}");
    // Nothing stays mounted on the host.
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(root.to_str().unwrap()),
        "mount leaked to the host"
    );
}

#[test]
fn namespace_as_user_with_subids() {
    let Some((user, _, _)) = util::require_test_user("namespace_as_user_with_subids") else {
        return;
    };
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    if !subuid.lines().any(|l| l.starts_with(&format!("{user}:"))) {
        util::missing(
            "namespace_as_user_with_subids",
            "test user has no subuid range",
        );
        return;
    }
    let (t, root) = mini_root();
    // The plan's mapping is replaced by the caller's (--auto-map).
    let p = write_plan(t.path(), &plan(&root, root_mapping(&root), PROBE));
    let out = run(Command::new("runuser")
        .args(["-u", &user, "--"])
        .arg(util::bin())
        .args(["__ns-run", "--auto-map"])
        .arg(&p));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("uid=0\n"), "{stdout}");
    assert!(
        stdout.contains("maps=2"),
        "want 0->user and 1..->subuids: {stdout}"
    );
    assert!(stdout.contains("chown=1234:2345"), "{stdout}");
    assert!(stdout.contains("pid=2\n"), "{stdout}");
}

#[test]
fn namespace_as_user_single_mapping() {
    let Some((user, uid, gid)) = util::require_test_user("namespace_as_user_single_mapping") else {
        return;
    };
    let (t, root) = mini_root();
    let mapping = serde_json::json!({"Single": {"uid": uid, "gid": gid}});
    let p = write_plan(t.path(), &plan(&root, mapping, PROBE));
    let out = run(Command::new("runuser")
        .args(["-u", &user, "--"])
        .arg(util::bin())
        .arg("__ns-run")
        .arg(&p));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("uid=0\n") && stdout.contains("maps=1"),
        "{stdout}"
    );
    // Only one id exists: chown to another one is refused by the kernel.
    assert!(stdout.contains("chown=no"), "{stdout}");
}

#[test]
fn namespace_reports_setup_and_exec_failures() {
    if !util::require_root("namespace_reports_setup_and_exec_failures") {
        return;
    }
    let (t, root) = mini_root();
    let mut bad = plan(&root, root_mapping(&root), "true");
    bad["mounts"][0]["Bind"]["source"] = "/nonexistent-gentree-src".into();
    let out = run(gentree().arg("__ns-run").arg(write_plan(t.path(), &bad)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("/nonexistent-gentree-src"), "{err}");

    let mut nocmd = plan(&root, root_mapping(&root), "true");
    nocmd["steps"][0]["Run"]["argv"] = serde_json::json!(["no-such-command-xyz"]);
    let out = run(gentree().arg("__ns-run").arg(write_plan(t.path(), &nocmd)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(127), "{err}");
    assert!(err.contains("no-such-command-xyz"), "{err}");

    // A symlink in the root must not redirect a mount point.
    std::fs::remove_dir(root.join("tmp")).unwrap();
    symlink("/etc", root.join("tmp")).unwrap();
    let out = run(gentree().arg("__ns-run").arg(write_plan(
        t.path(),
        &plan(&root, root_mapping(&root), "true"),
    )));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("symlink"), "{err}");
}

#[test]
fn namespace_dies_with_its_caller() {
    if !util::require_root("namespace_dies_with_its_caller") {
        return;
    }
    let (t, root) = mini_root();
    let marker = format!("gentree-sleep-marker-{}", std::process::id());
    let script = format!("sleep 300; : {marker}");
    let p = write_plan(t.path(), &plan(&root, root_mapping(&root), &script));
    let mut child = gentree().arg("__ns-run").arg(&p).spawn().unwrap();
    let found = |m: &str| {
        Command::new("pgrep")
            .args(["-f", m])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !found(&marker) {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL to the caller: no chance to clean up itself
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while found(&marker) {
        assert!(
            Instant::now() < deadline,
            "the build process outlived its caller"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn namespace_runs_steps_in_order_and_stops_at_a_failure() {
    if !util::require_root("namespace_runs_steps_in_order_and_stops_at_a_failure") {
        return;
    }
    let (t, root) = mini_root();
    let mut p = plan(&root, root_mapping(&root), "true");
    let run =
        |script: &str| serde_json::json!({"Run": {"argv": ["sh", "-c", script], "env": env()}});
    p["steps"] = serde_json::json!([
        {"WriteFile": {"path": "/tmp/log/app.log", "contents": "old line\n"}},
        {"Symlink": {"link": "/tmp/profile", "target": "/usr/share"}},
        run("readlink /tmp/profile; cat /tmp/log/app.log"),
        {"Run": {
            "argv": ["sh", "-c", "echo 'new line: the cause' >> /tmp/log/app.log; exit 3"],
            "env": env(),
            "on_failure": [["echo", "diagnostic output"]],
            "log_tail": "/tmp/log/app.log"
        }},
        run("echo must-not-run")
    ]);
    let out = run_cmd(&p, t.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("/usr/share\nold line\n"), "{stdout}");
    assert!(stdout.contains("diagnostic output"), "{stdout}");
    assert!(
        stderr.contains("new line: the cause"),
        "log growth not shown: {stderr}"
    );
    assert!(
        !stderr.contains("old line"),
        "only the growth is shown: {stderr}"
    );
    assert!(!stdout.contains("must-not-run"), "{stdout}");
}

fn run_cmd(plan: &serde_json::Value, dir: &Path) -> std::process::Output {
    run(gentree().arg("__ns-run").arg(write_plan(dir, plan)))
}

#[test]
fn namespace_symlink_step_checks_the_target_first() {
    if !util::require_root("namespace_symlink_step_checks_the_target_first") {
        return;
    }
    let (t, root) = mini_root();
    let mut p = plan(&root, root_mapping(&root), "true");
    p["steps"] = serde_json::json!([
        {"Symlink": {"link": "/etc/make.profile", "target": "/usr/share"}},
        {"Symlink": {"link": "/etc/make.profile", "target": "/nonexistent/profile"}}
    ]);
    let out = run_cmd(&p, t.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{err}");
    assert!(err.contains("/nonexistent/profile does not exist"), "{err}");
    // The existing link was left alone (B48).
    assert_eq!(
        std::fs::read_link(root.join("etc/make.profile")).unwrap(),
        Path::new("/usr/share")
    );
}
