//! `gentree-fs serve` with real Portage on the test seed: the build queue, the
//! binhost files (lengths, ranges, HEAD), hostile requests that must change nothing,
//! SIGTERM during a build, and a real Portage client installing from it.
//!
//! Requests go over plain `TcpStream`s with hand-written HTTP/1.1, so paths reach the
//! server exactly as written (no client-side normalisation of `..` or escapes).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::build::{Fixture, stderr, stdout};
use crate::util::{self, run};

/// A running `gentree-fs serve` on a free port; SIGTERM on drop.
struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

/// Starts `serve` (`cmd` with `--port 0` and the seed name) and reads the port from
/// its first line; returns the child, the port, that line and the rest of stderr.
fn spawn_serve(
    cmd: &mut std::process::Command,
    seed: &str,
) -> (Child, u16, String, BufReader<std::process::ChildStderr>) {
    let mut child = cmd
        .args(["--port", "0"])
        .arg(seed)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    let port = first
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no listening line: {first:?}"));
    (child, port, first, err)
}

impl Server {
    fn start(f: &Fixture, extra: &[&str]) -> Server {
        let mut cmd = f.cmd(None);
        cmd.arg("serve")
            .arg("--no-config")
            .arg("--conf-root")
            .arg(f.conf())
            .args(extra);
        let (child, port, first, mut err) = spawn_serve(&mut cmd, "testseed");
        // Keep draining stderr (build output is teed there) so the server never blocks.
        let log = Arc::new(Mutex::new(first));
        let l2 = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                l2.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Server { child, port, log }
    }

    fn get(&self, path: &str) -> Reply {
        request(self.port, "GET", path, &[])
    }

    fn queue(&self) -> serde_json::Value {
        let r = self.get("/queue");
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Polls `/queue` until `done(queue)` holds.
    fn wait_for(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let q = self.queue();
            if done(&q) {
                return q;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {q:#}\nserver log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every job has finished; returns the jobs.
    fn wait_idle(&self) -> Vec<serde_json::Value> {
        let q = self.wait_for("all builds", |q| {
            q["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["state"] == "done" || j["state"] == "failed")
        });
        q["jobs"].as_array().unwrap().clone()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "serve did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The message of an error reply: a JSON `error`, or the plain text.
    fn message(&self) -> String {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => v["error"].as_str().unwrap_or_default().to_owned(),
            Err(_) => self.text(),
        }
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = raw[split + 4..].to_vec();
    let r = Reply {
        status,
        headers,
        body,
    };
    assert!(
        r.header("Transfer-Encoding").is_none(),
        "{method} {path}: chunked reply"
    );
    if method != "HEAD" {
        let len: usize = r
            .header("Content-Length")
            .expect("Content-Length")
            .parse()
            .unwrap();
        assert_eq!(len, r.body.len(), "{method} {path}: Content-Length");
    }
    r
}

/// Every file below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

/// The `PATH:` of `cpv` in a Packages index (binpkg-multi-instance layout), and its `SIZE:`.
fn packages_entry(index: &str, cpv: &str) -> Option<(String, u64)> {
    let block = index
        .split("\n\n")
        .find(|b| b.lines().any(|l| l == format!("CPV: {cpv}")))?;
    let field = |k: &str| {
        block
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .map(str::to_owned)
    };
    Some((field("PATH")?, field("SIZE")?.parse().ok()?))
}

fn job<'a>(jobs: &'a [serde_json::Value], atom: &str) -> &'a serde_json::Value {
    jobs.iter()
        .find(|j| j["atom"] == atom)
        .unwrap_or_else(|| panic!("no job for {atom} in {jobs:#?}"))
}

#[test]
fn hostile_requests_are_refused_and_change_nothing() {
    if !util::require_root("hostile_requests_are_refused_and_change_nothing") {
        return;
    }
    let f = Fixture::new(None);
    let pkgdir = f.conf().join("pkgdir");
    let mut s = Server::start(&f, &[]);
    assert!(pkgdir.is_dir(), "the package dir is created on start-up");
    // Planted: a symlink leading out of the package dir, and a file beside it.
    std::os::unix::fs::symlink("/etc", pkgdir.join("escape")).unwrap();
    fs::write(f.conf().join("secret"), "secret").unwrap();
    std::os::unix::fs::symlink("../secret", pkgdir.join("secret-link")).unwrap();
    let before = (tree(&f.conf()), s.queue());
    let long = format!("/pkg?pkg=app-misc/{}", "a".repeat(300));
    for (path, status, says) in [
        ("/pkg", 400, "No package name provided"),
        ("/pkg?pkg=", 400, "No package name provided"),
        (
            "/pkg?pkg=--config-root%3D/x",
            400,
            "options are not accepted",
        ),
        ("/pkg?pkg=--config-root=/x", 400, "options are not accepted"),
        ("/pkg?pkg=-v", 400, "options are not accepted"),
        ("/pkg?pkg=../../etc", 400, "more than one '/'"),
        ("/pkg?pkg=app-misc/gt-lib;rm", 400, "';'"),
        ("/pkg?pkg=app-misc/gt-lib%3Brm%20-rf%20/", 400, "';'"),
        ("/pkg?pkg=app-misc/gt-lib+name", 400, "' '"),
        ("/pkg?pkg=app-misc/gt-lib%0a--ask", 400, "'\\n'"),
        ("/pkg?pkg=gt-lib", 400, "needs a category"),
        ("/pkg?pkg=a/b&pkg=c/d", 400, "more than one pkg"),
        (&long, 400, "the limit is"),
        ("/../etc/passwd", 400, "'..'"),
        ("/app-misc/../../etc/passwd", 400, "'..'"),
        ("/%2e%2e/%2e%2e/etc/passwd", 400, "'..'"),
        ("/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", 400, "encoded '/'"),
        ("/app-misc%2f..%2f..%2fsecret", 400, "encoded '/'"),
        ("/Packages%00.txt", 400, "NUL"),
        ("/escape/passwd", 404, "not found"),
        ("/secret-link", 404, "not found"),
        ("/", 404, "not found"),
        ("/.locks", 404, "not found"),
        ("/Packages", 404, "not found"), // nothing built yet
    ] {
        let r = s.get(path);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(
            r.message().contains(says),
            "{path}: {:?} lacks {says:?}",
            r.message()
        );
    }
    let r = request(s.port, "DELETE", "/Packages", &[]);
    assert_eq!(r.status, 405);
    for method in ["POST", "HEAD"] {
        let r = request(s.port, method, "/pkg?pkg=app-misc/gt-lib", &[]);
        assert_eq!(r.status, 405, "{method} /pkg");
        assert_eq!(r.header("Allow"), Some("GET"));
    }
    // Nothing was queued and no file appeared (no log, no package, no state).
    let after = (tree(&f.conf()), s.queue());
    assert_eq!(before.0, after.0, "files changed");
    assert_eq!(before.1, after.1, "the queue changed");
    assert!(after.1["jobs"].as_array().unwrap().is_empty());
    assert!(s.terminate().success());
}

#[test]
fn queued_builds_land_in_packages_and_are_served_with_ranges() {
    if !util::require_root("queued_builds_land_in_packages_and_are_served_with_ranges") {
        return;
    }
    let f = Fixture::new(None);
    let mut s = Server::start(&f, &["--queue-size", "1"]);
    // Hold the seed's lock: the first build waits for it, so the queue can be filled
    // deterministically.
    let lock_path = f.conf().join("seeds/.testseed.lock");
    let lock = fs::File::create(&lock_path).unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();

    let r = s.get("/pkg?pkg=app-misc/gt-lib");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["queued"]["atom"], "app-misc/gt-lib");
    s.wait_for("gt-lib to wait for the seed", |q| {
        q["jobs"][0]["state"] == "waiting"
    });
    let r = s.get("/pkg?pkg=app-misc/gt-lib");
    assert_eq!(r.status, 409, "building duplicate: {}", r.text());
    assert_eq!(s.get("/pkg?pkg=app-misc/gt-removable").status, 200);
    let r = s.get("/pkg?pkg=app-misc/gt-removable");
    assert_eq!(r.status, 409, "queued duplicate: {}", r.text());
    let r = s.get("/pkg?pkg=app-misc/gt-special");
    assert_eq!(r.status, 429, "full queue: {}", r.text());
    assert!(r.text().contains("queue is full"), "{}", r.text());
    assert_eq!(
        s.queue()["pending"],
        serde_json::json!(["app-misc/gt-removable"])
    );
    drop(lock);

    let jobs = s.wait_idle();
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    for atom in ["app-misc/gt-lib", "app-misc/gt-removable"] {
        let j = job(&jobs, atom);
        assert_eq!(j["state"], "done", "{j:#}");
        assert_eq!(j["exit_status"], 0);
        assert!(j["started"].as_u64() <= j["ended"].as_u64());
        let log = fs::read_to_string(j["log"].as_str().unwrap()).unwrap();
        assert!(
            log.contains(&format!(">>> Emerging (1 of 1) {atom}")),
            "{log}"
        );
        assert!(log.contains("--buildpkg"), "the command line is logged");
    }
    // Into the seed's persistent upper, not into a layer.
    assert!(
        fs::read_dir(f.conf().join("seeds/testseed.upper/var/db/pkg/app-misc"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("gt-lib-"))
    );
    assert!(f.layers().is_empty());

    // The index and the package, with lengths Portage itself recorded.
    let pkgdir = f.conf().join("pkgdir");
    let r = s.get("/Packages");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fs::read(pkgdir.join("Packages")).unwrap());
    assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
    let (path, size) = packages_entry(&r.text(), "app-misc/gt-lib-2").expect("gt-lib in Packages");
    let file = fs::read(pkgdir.join(&path)).unwrap();
    assert_eq!(file.len() as u64, size);
    let url = format!("/{path}");
    let r = s.get(&url);
    assert_eq!((r.status, r.body.len() as u64), (200, size));
    assert_eq!(r.body, file);
    assert_eq!(r.header("Content-Type"), Some("application/x-tar"));
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    let r = request(s.port, "HEAD", &url, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some(size.to_string().as_str()));
    assert!(r.body.is_empty());
    let r = request(s.port, "GET", &url, &[("Range", "bytes=100-1123")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &file[100..1124]);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes 100-1123/{size}").as_str())
    );
    let r = request(s.port, "GET", &url, &[("Range", "bytes=-7")]);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &file[file.len() - 7..])
    );
    let r = request(s.port, "GET", &url, &[("Range", &format!("bytes={size}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("Content-Range"),
        Some(format!("bytes */{size}").as_str())
    );
    // A directory of the package dir is not listed.
    let dir = Path::new(&path).parent().unwrap().display().to_string();
    assert_eq!(s.get(&format!("/{dir}")).status, 404);
    assert_eq!(s.get(&format!("/{dir}/")).status, 404);

    // A failing build is recorded; the worker goes on with the next one.
    assert_eq!(s.get("/pkg?pkg=app-misc/gt-fail").status, 200);
    assert_eq!(s.get("/pkg?pkg=%3Dapp-misc/gt-lib-1").status, 200);
    let jobs = s.wait_idle();
    let fail = job(&jobs, "app-misc/gt-fail");
    assert_eq!(fail["state"], "failed", "{fail:#}");
    assert_ne!(fail["exit_status"], 0);
    let log = fs::read_to_string(fail["log"].as_str().unwrap()).unwrap();
    assert!(log.contains("gt-fail"), "{log}");
    assert_eq!(job(&jobs, "=app-misc/gt-lib-1")["state"], "done");
    let index = s.get("/Packages").text();
    assert!(
        packages_entry(&index, "app-misc/gt-lib-1").is_some(),
        "{index}"
    );
    assert!(s.terminate().success());
}

#[test]
fn sigterm_kills_a_running_build_and_exits() {
    if !util::require_root("sigterm_kills_a_running_build_and_exits") {
        return;
    }
    let f = Fixture::new(None);
    let mut s = Server::start(&f, &[]);
    assert_eq!(s.get("/pkg?pkg=app-misc/gt-special").status, 200);
    let q = s.wait_for("the build to start", |q| {
        q["jobs"][0]["state"] == "building"
    });
    let log = PathBuf::from(q["jobs"][0]["log"].as_str().unwrap());
    // Wait until the namespace helper runs (it writes the log), and note its pid.
    let deadline = Instant::now() + Duration::from_secs(60);
    let helpers = loop {
        let kids: Vec<i32> = fs::read_dir(format!("/proc/{}/task", s.child.id()))
            .unwrap()
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|l| {
                l.split_whitespace()
                    .map(|p| p.parse().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        if !kids.is_empty() && fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            break kids;
        }
        assert!(Instant::now() < deadline, "no build process appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    let t = Instant::now();
    assert!(s.terminate().success(), "{}", s.log.lock().unwrap());
    eprintln!("serve exited {:?} after SIGTERM", t.elapsed());
    for pid in helpers {
        // Gone, or at most a zombie not yet reaped by init.
        let st = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            st.is_empty() || st.contains(") Z "),
            "build process {pid} survived: {st}"
        );
    }
    let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(f.conf().to_str().unwrap()),
        "mounts left behind"
    );
    let log = s.log.lock().unwrap().clone();
    assert!(log.contains("killing the running build"), "{log}");
}

#[test]
fn a_portage_client_installs_from_the_server_without_building() {
    if !util::require_root("a_portage_client_installs_from_the_server_without_building") {
        return;
    }
    let f = Fixture::new(None);
    let mut s = Server::start(&f, &[]);
    assert_eq!(s.get("/pkg?pkg=app-misc/gt-app").status, 200);
    let jobs = s.wait_idle();
    assert_eq!(job(&jobs, "app-misc/gt-app")["state"], "done", "{jobs:#?}");

    // The client: another conf root with its own import of the seed and an empty
    // package dir; the server is its binhost. wget is not in the seed, so Portage
    // fetches the packages with a python3 urllib one-liner.
    let client = Fixture::new(None);
    let script = format!(
        r#"set -e
mkdir -p /etc/portage/binrepos.conf
printf '[gentree]\nsync-uri = http://127.0.0.1:{port}\nverify-signature = false\n' > /etc/portage/binrepos.conf/gentree.conf
cat > /usr/local/bin/gt-fetch <<'EOF'
#!/usr/bin/python3
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1]) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)
EOF
chmod +x /usr/local/bin/gt-fetch
export FETCHCOMMAND='/usr/local/bin/gt-fetch "${{URI}}" "${{DISTDIR}}/${{FILE}}"'
export RESUMECOMMAND="$FETCHCOMMAND"
echo '=== pretend'
emerge -pv --getbinpkg --usepkgonly app-misc/gt-app
echo '=== install'
emerge --getbinpkg --usepkgonly app-misc/gt-app
echo '=== installed'
cat /usr/lib/gt-lib/version.txt
ls /var/db/pkg/app-misc
echo '=== cached'
find /var/cache/binhost -name '*.gpkg.tar'
"#,
        port = s.port
    );
    let o = run(client
        .cmd(None)
        .arg("exec")
        .arg("--conf-root")
        .arg(client.conf())
        .args(["testseed", "--", "sh", "-c", &script]));
    let out = stdout(&o);
    eprintln!("--- client stdout:\n{out}\n--- stderr:\n{}", stderr(&o));
    assert!(o.status.success(), "the client emerge failed");
    let pretend = out.split("=== install").next().unwrap();
    for p in ["app-misc/gt-lib-2", "app-misc/gt-app-1"] {
        assert!(
            pretend
                .lines()
                .any(|l| l.starts_with("[binary") && l.contains(p)),
            "{p} is not a binary merge:\n{pretend}"
        );
    }
    let all = format!("{out}{}", stderr(&o));
    assert!(
        all.contains(">>> Emerging binary (1 of 2) app-misc/gt-lib-2"),
        "{all}"
    );
    assert!(
        all.contains(">>> Emerging binary (2 of 2) app-misc/gt-app-1"),
        "{all}"
    );
    assert!(!all.contains(">>> Compiling source"), "built from source");
    assert!(!all.contains(">>> Emerging (1 of"), "built from source");
    assert!(out.contains("gt-lib 2"), "gt-lib not installed: {out}");
    // The packages came over HTTP: into Portage's cache of remote packages, while the
    // client's own package dir (mounted at PKGDIR) has none to use locally.
    let cached = out.split("=== cached").nth(1).unwrap_or_default();
    for f in ["gt-lib-2-1.gpkg.tar", "gt-app-1-1.gpkg.tar"] {
        assert!(
            cached.lines().any(|l| l.ends_with(f)),
            "{f} not fetched: {cached}"
        );
    }
    let local = tree(&client.conf().join("pkgdir"));
    assert!(
        !local
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".gpkg.tar")),
        "{local:?}"
    );
    assert!(s.terminate().success());
}

#[test]
fn ephemeral_seed_builds_serve_packages_but_leave_the_seed_upper_alone() {
    if !util::require_root("ephemeral_seed_builds_serve_packages_but_leave_the_seed_upper_alone") {
        return;
    }
    let f = Fixture::new(None);
    let mut s = Server::start(&f, &["--ephemeral-seed"]);
    assert_eq!(s.get("/pkg?pkg=app-misc/gt-lib").status, 200);
    let jobs = s.wait_idle();
    assert_eq!(job(&jobs, "app-misc/gt-lib")["state"], "done", "{jobs:#?}");
    let index = s.get("/Packages").text();
    assert!(
        packages_entry(&index, "app-misc/gt-lib-2").is_some(),
        "{index}"
    );
    // The installed package lived in a tmpfs: nothing of it reached the disk.
    let upper = f.conf().join("seeds/testseed.upper");
    assert!(
        !upper.join("var/db/pkg/app-misc").exists(),
        "{:?}",
        tree(&upper)
    );
    assert!(s.terminate().success());
}

/// `serve` on a fake seed (no build runs): enough for the HTTP side alone.
fn bare_server(conf: &Path, extra: &[&str]) -> (Child, u16) {
    fs::create_dir_all(conf.join("seeds/s")).unwrap();
    fs::create_dir_all(conf.join("pkgdir")).unwrap();
    fs::write(conf.join("pkgdir/Packages"), "PACKAGES: 0\n").unwrap();
    let mut cmd = util::gentree();
    cmd.args(["serve", "--no-config", "--conf-root"])
        .arg(conf)
        .args(extra);
    let (child, port, _, mut err) = spawn_serve(&mut cmd, "s");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    (child, port)
}

/// The whole answer to `bytes` sent on a fresh connection (the server closes it).
fn raw_exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {st}"))
}

/// Hostile clients: oversized request lines and headers are refused (414, 431)
/// without being buffered, bodies are refused (413), idle and slow connections are
/// closed after the client timeout (slow ones with 408), and with more idle sockets
/// open than the connection limit, a normal client is still served, by the same few
/// threads.
#[test]
fn hostile_clients_are_bounded() {
    let t = util::tempdir();
    let conf = t.path().join("conf");
    let (mut child, port) = bare_server(
        &conf,
        &["--client-timeout", "2", "--max-connections", "200"],
    );
    let pid = child.id();

    let long_line = [b"GET /".as_slice(), &[b'a'; 9000]].concat();
    let answer = raw_exchange(port, &long_line);
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer}");
    // Every thread has started once a request was answered.
    let threads_idle = proc_status(pid, "Threads:");
    let big_header = [b"GET / HTTP/1.1\r\nX-Big: ".as_slice(), &[b'a'; 20000]].concat();
    let answer = raw_exchange(port, &big_header);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    let answer = raw_exchange(port, format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let answer = raw_exchange(
        port,
        b"GET /Packages HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    // A 64 MiB header: refused early, never held in memory.
    let rss_before = proc_status(pid, "VmRSS:");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nX: ").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0;
    while sent < 64 && s.write_all(&chunk).is_ok() {
        sent += 1;
    }
    assert!(sent < 64, "the server kept reading a 64 MiB header");
    assert!(
        proc_status(pid, "VmRSS:") < rss_before + 16 * 1024,
        "RSS grew"
    );

    // Slow: a head that never ends gets 408 after the client timeout; idle: closed.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /Packages HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut out = String::new();
    slow.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    let mut buf = [0u8; 16];
    assert_eq!(
        idle.read(&mut buf).unwrap(),
        0,
        "idle connection not closed"
    );

    // 300 idle sockets, more than the limit of 200: a normal client is served (the
    // longest idle ones make room), by no more threads than with none.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let r = request(port, "GET", "/Packages", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "PACKAGES: 0\n"));
    // Answered connections leave the count: more requests than the limit, in turn.
    for i in 0..250 {
        let r = request(port, "GET", "/Packages", &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    // Clients that ask for a large file and do not read it hold no worker: with more
    // of them than workers, a normal client is served, and then each gets it all.
    let big = conf.join("pkgdir/big.gpkg.tar");
    fs::File::create(&big).unwrap().set_len(64 << 20).unwrap();
    let slow_readers: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /big.gpkg.tar HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let r = request(port, "GET", "/Packages", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    for mut s in slow_readers {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let body = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(
            all.len() - body,
            64 << 20,
            "a slow reader's download was cut"
        );
    }
    // Keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        b"HEAD /Packages HTTP/1.1\r\n\r\nGET /Packages HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut both = String::new();
    s.read_to_string(&mut both).unwrap();
    assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
    assert!(both.ends_with("\r\n\r\nPACKAGES: 0\n"), "{both}");
    assert_eq!(
        proc_status(pid, "Threads:"),
        threads_idle,
        "threads per connection"
    );
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(
        fds < 200 + 32,
        "{fds} descriptors open: connections not bounded"
    );
    drop(idle);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}
