//! The layer cache against a real registry: Debian's `docker-registry` (CNCF
//! distribution) started here on 127.0.0.1 with a temporary storage directory.
//! A conf root pushes what it builds; a fresh conf root pulls every layer, runs no
//! emerge and writes a byte-identical image; a stopped registry and a corrupted
//! blob in its storage each give a warning and a local build; a registry with
//! htpasswd logins is used only with the credentials of an auth file.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gentree_fs::cache::{Cache, CacheRef, layer_tar};
use gentree_fs::layers::store::{BuildKey, Layer, LayerMeta, Store};

use crate::build::{BASE, Fixture, stderr, stdout};
use crate::mount::Daemon;
use crate::repro::sha256;
use crate::util::{self, run, run_ok};

/// A `docker-registry` process serving a temporary storage dir.
pub struct TestRegistry {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry; with `login`, only that user (htpasswd, bcrypt) may use it.
    pub fn start(login: Option<(&str, &str)>) -> TestRegistry {
        let dir = util::tempdir();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: gentree-test\n",
            dir.path().join("storage").display()
        );
        if let Some((user, password)) = login {
            let htpasswd = dir.path().join("htpasswd");
            run_ok(
                Command::new("htpasswd")
                    .args(["-Bbc"])
                    .arg(&htpasswd)
                    .args([user, password]),
            );
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: gentree-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut r = TestRegistry {
            child: None,
            port,
            dir,
        };
        r.restart();
        r
    }

    /// Starts the registry process again (on the same port and storage).
    pub fn restart(&mut self) {
        let log = fs::File::create(self.dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        util::wait_until("the registry to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The `--cache` reference of its repository `gentree/cache`.
    pub fn reference(&self) -> String {
        format!("http://127.0.0.1:{}/gentree/cache", self.port)
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage/docker/registry/v2")
    }

    /// The file holding the blob `digest` (`sha256:...`).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The manifest tagged `tag` in `gentree/cache`, from the storage.
    pub fn manifest(&self, tag: &str) -> serde_json::Value {
        let link = self
            .storage()
            .join("repositories/gentree/cache/_manifests/tags")
            .join(tag)
            .join("current/link");
        let digest = fs::read_to_string(&link).unwrap();
        serde_json::from_slice(&fs::read(self.blob_file(digest.trim())).unwrap()).unwrap()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn require_registry(test: &str) -> bool {
    util::require_tool(test, "docker-registry") && util::require_tool(test, "htpasswd")
}

/// The command of `f` with no credentials from the machine running the tests.
fn no_machine_auth(mut c: Command) -> Command {
    c.env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUST_LOG");
    c
}

const MID: &str = "bases = [\"base.toml\"]\npackages = [\"app-misc/gt-lib\"]\n";
const APP: &str = "seed = \"testseed\"\nbases = [\"mid.toml\"]\npackages = [\"app-misc/gt-app\"]\n";

fn write_cfgs(f: &Fixture) -> PathBuf {
    f.write_cfg("base.toml", BASE);
    f.write_cfg("mid.toml", MID);
    f.write_cfg("app.toml", APP)
}

/// `gentree-fs build` of `cfg` in `f` with `args`, as root; stdout, stderr, success.
fn build(f: &Fixture, cfg: &Path, args: &[&str]) -> (String, String, bool) {
    let mut c = no_machine_auth(f.cmd(None));
    c.arg("build")
        .arg("--conf-root")
        .arg(f.conf())
        .args(args)
        .arg(cfg);
    let out = run(&mut c);
    let (o, e) = (stdout(&out), stderr(&out));
    eprintln!("--- build {}:\n{e}", cfg.display());
    (o, e, out.status.success())
}

/// How many layers the build summary says were built, pulled, reused.
fn outcomes(err: &str, what: &str) -> usize {
    err.lines()
        .filter(|l| l.trim_start().starts_with(&format!("{what} ")))
        .count()
}

/// The top layer's key from the summary of a build that built every layer.
fn top_key(err: &str) -> String {
    err.lines()
        .rfind(|l| l.trim_start().starts_with("built ") && l.ends_with(')'))
        .and_then(|l| {
            l.rsplit_once('(')
                .map(|(_, k)| k.trim_end_matches(')').to_owned())
        })
        .expect("a layer line in the summary")
}

#[test]
fn a_second_conf_root_pulls_every_layer_and_a_bad_cache_only_costs_a_local_build() {
    let test = "a_second_conf_root_pulls_every_layer_and_a_bad_cache_only_costs_a_local_build";
    if !util::require_root(test) || !require_registry(test) {
        return;
    }
    let mut reg = TestRegistry::start(None);
    let cache = reg.reference();

    // A builds the three layers and pushes each.
    let a = Fixture::new(None);
    let cfg_a = write_cfgs(&a);
    let (out_a, err_a, ok) = build(&a, &cfg_a, &["--no-config", "--cache", &cache]);
    assert!(ok, "build in A failed");
    assert_eq!(outcomes(&err_a, "built"), 3, "{err_a}");
    assert_eq!(err_a.matches("pushed layer").count(), 3, "{err_a}");
    let image_a = PathBuf::from(out_a.trim());
    let top = top_key(&err_a);
    let m = reg.manifest(&top);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.gentree.layer.meta.v1+json"
    );
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );

    // B, a fresh import of the same seed, takes the cache from its default config
    // and pulls all three layers: no emerge runs, the same image byte for byte.
    let b = Fixture::new(None);
    let cfg_b = write_cfgs(&b);
    let user_cfg = b.dir.path().join(".config/gentree");
    fs::create_dir_all(&user_cfg).unwrap();
    fs::write(
        user_cfg.join("config.toml"),
        format!("cache = \"{cache}\"\n"),
    )
    .unwrap();
    let (out_b, err_b, ok) = build(&b, &cfg_b, &[]);
    assert!(ok, "build in B failed");
    assert_eq!(outcomes(&err_b, "pulled"), 3, "{err_b}");
    assert_eq!(outcomes(&err_b, "built"), 0, "{err_b}");
    let log = fs::read_to_string(b.conf().join("builds/testseed-app.log")).unwrap();
    assert!(!log.contains(">>> Emerging"), "emerge ran in B:\n{log}");
    let image_b = PathBuf::from(out_b.trim());
    assert_eq!(sha256(&image_a), sha256(&image_b), "images differ");
    for key in b.layers() {
        let tar = |f: &Fixture, name: &str| {
            let out = f.dir.path().join(name);
            run_ok(
                f.cmd(None)
                    .args(["pack", "--oci-layer", "--layer"])
                    .arg(
                        f.conf()
                            .join("layers")
                            .join(key.file_name().unwrap())
                            .join("root"),
                    )
                    .arg("-o")
                    .arg(&out),
            );
            sha256(&out)
        };
        assert_eq!(tar(&a, "a.tar"), tar(&b, "b.tar"), "layer {key:?} differs");
    }
    // The layer a later build stacks on is the pulled one: B's reuse is a reuse.
    let (_, err, ok) = build(&b, &cfg_b, &[]);
    assert!(ok && outcomes(&err, "reused") == 3, "{err}");

    // C reads the image through a mount with --cache: pulled, the same bytes.
    if util::require_fuse(test) {
        let c = Fixture::new(None);
        write_cfgs(&c);
        let mut cmd = no_machine_auth(c.cmd(None));
        cmd.arg("--cache").arg(&cache);
        let mp = c.dir.path().join("mnt");
        let d = Daemon::start(cmd, &c.conf(), &c.cfg_dir(), &mp, c.dir.path());
        let copy = c.dir.path().join("app.tar");
        run_ok(Command::new("cp").arg(mp.join("builds/app.tar")).arg(&copy));
        let log = fs::read_to_string(mp.join("builds/app.log")).unwrap();
        d.stop();
        assert_eq!(log.matches("pulled layer").count(), 3, "{log}");
        assert!(!log.contains(">>> Emerging"), "emerge ran in C:\n{log}");
        assert_eq!(sha256(&image_a), sha256(&copy), "the mount's image differs");
    }

    // The cache cannot give the top layer: one warning, the layer built here from
    // source, the same image. (On a conf root that has built the layer before, the
    // rebuild would merge the binary packages of that build: another image.)
    let build_top_here = |f: &Fixture, cfg: &Path, case: &str, warning: &str, others: &str| {
        let (out, err, ok) = build(f, cfg, &["--cache", &cache]);
        assert!(ok, "no build with {case}");
        assert!(
            err.contains("WARN") && err.contains(warning),
            "{case}: {err}"
        );
        assert_eq!(outcomes(&err, "built"), 1, "{case}: {err}");
        assert_eq!(outcomes(&err, others), 2, "{case}: {err}");
        assert_eq!(sha256(&image_a), sha256(Path::new(out.trim())), "{case}");
        assert!(
            fs::read_dir(f.conf().join("layers")).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")),
            "{case}: a half-pulled layer was left behind"
        );
    };
    // The registry is down; B lacks the top layer (as a machine that never built it).
    reg.stop();
    run_ok(
        Command::new("rm")
            .arg("-rf")
            .arg(b.conf().join("layers").join(&top)),
    );
    build_top_here(
        &b,
        &cfg_b,
        "the registry down",
        "building it here",
        "reused",
    );

    // A blob corrupted in the registry's storage (same size): the digest check. D is
    // a fresh conf root that pulls the two bases.
    reg.restart();
    let blob = reg.blob_file(reg.manifest(&top)["layers"][0]["digest"].as_str().unwrap());
    let len = fs::metadata(&blob).unwrap().len();
    let mut f = fs::OpenOptions::new().write(true).open(&blob).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(b"corrupted").unwrap();
    drop(f);
    let d = Fixture::new(None);
    let cfg_d = write_cfgs(&d);
    build_top_here(
        &d,
        &cfg_d,
        "a corrupted blob",
        "content digest is",
        "pulled",
    );
}

/// A small published layer in a fresh store, made without Portage.
fn small_layer(store: &Store, key: &BuildKey) -> Layer {
    let lock = store.lock(key).unwrap();
    let p = store.begin(key, &lock).unwrap();
    fs::create_dir_all(p.root().join("etc")).unwrap();
    fs::write(p.root().join("etc/motd"), "hello from the cache\n").unwrap();
    std::os::unix::fs::symlink("motd", p.root().join("etc/issue")).unwrap();
    // As a build marks its layer: entries owned by the build's root are root's.
    let (uid, gid) = gentree_fs::builder::namespace::current_mapping().host_root();
    gentree_fs::layers::ownership::HostOwner { uid, gid }
        .write(&p.root())
        .unwrap();
    store.publish(p, meta(key)).unwrap()
}

fn meta(key: &BuildKey) -> LayerMeta {
    LayerMeta {
        key: key.clone(),
        name: "small".into(),
        buildname: "testseed-small".into(),
        base_keys: vec![],
        created: 1,
        format: 1,
        packages: vec![],
    }
}

fn tar_bytes(root: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    layer_tar(root).unwrap().write_to(&mut v).unwrap();
    v
}

#[test]
fn a_registry_with_logins_is_used_only_with_the_auth_files_credentials() {
    let test = "a_registry_with_logins_is_used_only_with_the_auth_files_credentials";
    if !require_registry(test) {
        return;
    }
    let reg = TestRegistry::start(Some(("builder", "s3cret")));
    let r = CacheRef::parse(&reg.reference()).unwrap();
    let t = util::tempdir();
    let key = BuildKey::parse(&"5".repeat(64)).unwrap();
    let a = Store::open(&t.path().join("a")).unwrap();
    let layer = small_layer(&a, &key);
    let mapping = gentree_fs::builder::namespace::current_mapping();
    let (uid, gid) = mapping.host_root();
    let host = gentree_fs::layers::ownership::HostOwner { uid, gid };
    let owners = mapping.store_owners();

    let auth = |name: &str, user_pass: &str| {
        use base64::Engine as _;
        let p = t.path().join(name);
        let enc = base64::engine::general_purpose::STANDARD.encode(user_pass);
        fs::write(
            &p,
            format!(
                "{{\"auths\":{{\"127.0.0.1:{}\":{{\"auth\":\"{enc}\"}}}}}}",
                reg.port
            ),
        )
        .unwrap();
        p
    };
    // No credentials, wrong ones: refused, with a message saying why.
    let anon = Cache::with_auth_files(r.clone(), &[]);
    let e = anon.push(&layer).unwrap_err().to_string();
    assert!(e.contains("podman login"), "{e}");
    let wrong = Cache::with_auth_files(r.clone(), &[auth("wrong.json", "builder:nope")]);
    let e = wrong.push(&layer).unwrap_err().to_string();
    assert!(e.contains("401"), "{e}");

    // The right ones, in the second file (the first has none for this registry).
    let other = t.path().join("other.json");
    fs::write(
        &other,
        "{\"auths\":{\"elsewhere:5000\":{\"auth\":\"eDp5\"}}}",
    )
    .unwrap();
    let good = Cache::with_auth_files(r.clone(), &[other, auth("good.json", "builder:s3cret")]);
    assert!(good.push(&layer).unwrap(), "pushed");
    assert!(!good.push(&layer).unwrap(), "already there");
    assert!(
        anon.fetch(
            &Store::open(&t.path().join("x")).unwrap(),
            &meta(&key),
            owners,
            host
        )
        .is_err()
    );

    let b = Store::open(&t.path().join("b")).unwrap();
    let pulled = good
        .fetch(&b, &meta(&key), owners, host)
        .unwrap()
        .expect("a hit");
    assert_eq!(tar_bytes(&pulled.root()), tar_bytes(&layer.root()));
    assert_eq!(pulled.meta, meta(&key));
    // A key nobody pushed is a miss, not an error.
    let other_key = BuildKey::parse(&"6".repeat(64)).unwrap();
    assert!(
        good.fetch(&b, &meta(&other_key), owners, host)
            .unwrap()
            .is_none()
    );
    // Metadata naming other bases than wanted: refused, nothing published.
    let mut want = meta(&key);
    want.base_keys = vec![other_key];
    let c = Store::open(&t.path().join("c")).unwrap();
    let e = good.fetch(&c, &want, owners, host).unwrap_err().to_string();
    assert!(e.contains("other base layers"), "{e}");
    assert!(c.lookup(&key).unwrap().is_none());
}

/// A registry stand-in that demands a bearer token from its token server (which
/// wants `builder:s3cret`), and then has no manifests: enough for the handshake
/// docker-registry's token mode needs a JWT issuer for. Serves `n` connections.
fn bearer_registry(n: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    use base64::Engine as _;
    use std::io::{BufRead, BufReader};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("builder:s3cret")
    );
    let h = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for s in l.incoming().take(n) {
            let mut s = s.unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h
                    .strip_prefix("authorization: ")
                    .or(h.strip_prefix("Authorization: "))
                {
                    auth = v.trim().to_owned();
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
            seen.push(format!("{path} [{auth}]"));
            let (status, extra, body) = if path.starts_with("/token?") {
                if auth == basic && path.contains("scope=repository%3Agentree%2Fcache%3Apull") {
                    ("200 OK", String::new(), "{\"token\":\"tok123\"}")
                } else {
                    ("401 Unauthorized", String::new(), "{}")
                }
            } else if auth == "Bearer tok123" {
                ("404 Not Found", String::new(), "{}")
            } else {
                (
                    "401 Unauthorized",
                    format!(
                        "www-authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\",scope=\"repository:gentree/cache:pull\"\r\n"
                    ),
                    "{}",
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        seen
    });
    (port, h)
}

#[test]
fn a_bearer_token_is_fetched_from_the_realm_with_the_login() {
    let (port, server) = bearer_registry(6);
    let r = CacheRef::parse(&format!("http://127.0.0.1:{port}/gentree/cache")).unwrap();
    let t = util::tempdir();
    let auth = t.path().join("auth.json");
    fs::write(
        &auth,
        format!("{{\"auths\":{{\"127.0.0.1:{port}\":{{\"auth\":\"YnVpbGRlcjpzM2NyZXQ=\"}}}}}}"),
    )
    .unwrap();
    let store = Store::open(&t.path().join("s")).unwrap();
    let mapping = gentree_fs::builder::namespace::current_mapping();
    let (uid, gid) = mapping.host_root();
    let host = gentree_fs::layers::ownership::HostOwner { uid, gid };
    let owners = mapping.store_owners();
    let key = BuildKey::parse(&"7".repeat(64)).unwrap();
    // With the login: manifest → 401 → token → manifest with the token → a miss.
    let good = Cache::with_auth_files(r.clone(), &[auth]);
    assert!(
        good.fetch(&store, &meta(&key), owners, host)
            .unwrap()
            .is_none()
    );
    // The token is kept for the next request.
    assert!(
        good.fetch(&store, &meta(&key), owners, host)
            .unwrap()
            .is_none()
    );
    // Without: the token server refuses, and that is an error, not a miss.
    let anon = Cache::with_auth_files(r, &[]);
    let e = anon
        .fetch(&store, &meta(&key), owners, host)
        .unwrap_err()
        .to_string();
    assert!(e.contains("401"), "{e}");
    let seen = server.join().unwrap();
    let tail: Vec<&str> = seen.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(tail.len(), 6, "{seen:?}");
    assert!(
        seen[1].starts_with("/token?") && seen[1].contains("[Basic "),
        "{seen:?}"
    );
    assert!(seen[2].ends_with("[Bearer tok123]"), "{seen:?}");
    assert!(seen[3].ends_with("[Bearer tok123]"), "reused: {seen:?}");
    assert!(
        seen[5].starts_with("/token?") && seen[5].ends_with("[]"),
        "{seen:?}"
    );
}
