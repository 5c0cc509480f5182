//! OCI image layouts and SBOMs with real Portage and real consumers: `build --oci
//! --sbom` and the mount's `builds/<cfg>.oci/` and `builds/<cfg>.spdx.json` give the
//! same bytes; skopeo inspects the layout, copies it into a real registry
//! (docker-registry on 127.0.0.1) and reads it back; umoci unpacks exactly the files,
//! modes and owners of `builds/<cfg>.tar`; podman (root) loads it and shows its
//! config; pyspdxtools validates the SBOM, which lists the installed packages (not
//! the unmerged one) although the image's filters drop `var/db/pkg`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::build::{BASE, Fixture, stdout};
use crate::mount::Daemon;
use crate::util::{self, run, run_ok};

const MID: &str = "bases = [\"base.toml\"]\n\
     packages = [\"app-misc/gt-lib\", \"app-misc/gt-removable\"]\n\
     [oci]\nenv = { PATH = \"/usr/bin:/bin\", FROM = \"mid\" }\n\
     labels = { \"org.example.layer\" = \"mid\" }\nexposed_ports = [\"80\"]\n";
const APP: &str = "seed = \"testseed\"\nbases = [\"mid.toml\"]\n\
     packages = [\"app-misc/gt-app\"]\nunmerge = [\"app-misc/gt-removable\"]\n\
     [env]\nuse = \"extras\"\n\
     [tar_filter_options]\nvardbpkg = true\n\
     [oci]\nentrypoint = [\"/usr/bin/gt-app\"]\ncmd = [\"--version\"]\n\
     env = { FROM = \"app\" }\nworking_dir = \"/usr/share/gt-app\"\nuser = \"0:0\"\n\
     exposed_ports = [\"53/udp\"]\n";

/// One member of an image: type, permission bits, owner, size, link target, data hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    link: String,
    data: Vec<u8>,
}

/// The members of a tar (hard links read as the file they link to).
fn tar_members(tar: &Path) -> BTreeMap<String, Member> {
    let mut ar = tar::Archive::new(fs::File::open(tar).unwrap());
    let mut out: BTreeMap<String, Member> = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if path.is_empty() {
            continue;
        }
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Regular => 'f',
            other => panic!("{path}: unexpected member type {other:?}"),
        };
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let mut m = Member {
            kind,
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            link,
            data,
        };
        if kind == 'h' {
            let target = out[m.link.trim_start_matches("./")].clone();
            m = target;
        }
        out.insert(path, m);
    }
    out
}

/// The same facts of a directory tree.
fn tree_members(root: &Path) -> BTreeMap<String, Member> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, link, data) = if ft.is_dir() {
                stack.push(p.clone());
                ('d', String::new(), Vec::new())
            } else if ft.is_symlink() {
                let l = fs::read_link(&p).unwrap().to_string_lossy().into_owned();
                ('l', l, Vec::new())
            } else if ft.is_file() {
                ('f', String::new(), fs::read(&p).unwrap())
            } else {
                panic!("{}: unexpected file type", p.display());
            };
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(
                rel,
                Member {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: u64::from(m.uid()),
                    gid: u64::from(m.gid()),
                    link,
                    data,
                },
            );
        }
    }
    out
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// docker-registry (CNCF distribution) on a free 127.0.0.1 port, storage in `dir`;
/// killed on drop.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.join("registry");
        fs::create_dir_all(&storage).unwrap();
        let cfg = dir.join("registry.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        util::wait_until("the registry", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Registry { child, port }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file of an image layout, by relative path.
fn layout_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for rel in ["oci-layout", "index.json"] {
        out.insert(rel.to_owned(), fs::read(dir.join(rel)).unwrap());
    }
    for e in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(format!("blobs/sha256/{name}"), fs::read(&p).unwrap());
    }
    out
}

#[test]
fn oci_layout_and_sbom_from_build_and_mount_satisfy_real_consumers() {
    let test = "oci_layout_and_sbom_from_build_and_mount_satisfy_real_consumers";
    if !util::require_root(test) || !util::require_fuse(test) {
        return;
    }
    for tool in [
        "skopeo",
        "umoci",
        "podman",
        "docker-registry",
        "pyspdxtools",
    ] {
        if !util::require_tool(test, tool) {
            return;
        }
    }
    let f = Fixture::new(None);
    f.write_cfg("base.toml", BASE);
    f.write_cfg("mid.toml", MID);
    let cfg = f.write_cfg("app.toml", APP);
    let work = f.dir.path().join("work");
    fs::create_dir_all(&work).unwrap();
    // The mount builds the image when index.json is first read (nothing is built
    // yet), then serves the layout and the SBOM.
    let mp = f.dir.path().join("mnt");
    let d = Daemon::start(util::gentree(), &f.conf(), &f.cfg_dir(), &mp, f.dir.path());
    let builds = mp.join("builds");
    let names: Vec<String> = fs::read_dir(&builds)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"app.oci".to_owned()) && names.contains(&"app.spdx.json".to_owned()));
    let oci = builds.join("app.oci");
    let sbom = builds.join("app.spdx.json");
    assert!(f.layers().is_empty());
    let index = fs::read(oci.join("index.json")).unwrap();
    assert_eq!(f.layers().len(), 3, "reading index.json built the image");
    assert_eq!(d.log().matches(": build job ").count(), 1, "{}", d.log());
    let served = layout_files(&oci);
    assert_eq!(served["index.json"], index);

    // build --oci --sbom reuses the layers and writes the same bytes.
    let (oci_cli, sbom_cli) = (work.join("cli.oci"), work.join("cli.spdx.json"));
    let out = f.build(
        None,
        &cfg,
        &[
            "--oci",
            oci_cli.to_str().unwrap(),
            "--sbom",
            sbom_cli.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "build failed");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("built "),
        "nothing to build"
    );
    let flat_cli = PathBuf::from(stdout(&out).trim());
    assert_eq!(
        served,
        layout_files(&oci_cli),
        "mount and build --oci differ"
    );
    assert_eq!(fs::read(&sbom).unwrap(), fs::read(&sbom_cli).unwrap());
    let flat = work.join("app.tar");
    fs::copy(builds.join("app.tar"), &flat).unwrap();
    assert_eq!(
        fs::read(&flat).unwrap(),
        fs::read(&flat_cli).unwrap(),
        "the mount's image differs from build -o"
    );
    // A second --oci of the same build: byte-identical.
    let again = work.join("again.oci");
    let out = f.build(None, &cfg, &["--oci", again.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(layout_files(&again), served, "not reproducible");

    // skopeo reads the layout from the mount.
    let oci_ref = format!("oci:{}", oci.display());
    let inspect = json(&run_ok(Command::new("skopeo").args(["inspect", &oci_ref])));
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3, "{inspect}");
    assert_eq!(inspect["Os"], "linux");
    let arch = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else {
        "arm64"
    };
    assert_eq!(inspect["Architecture"], arch);
    let config = json(&run_ok(
        Command::new("skopeo").args(["inspect", "--config", &oci_ref]),
    ));
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/bin/gt-app"]));
    assert_eq!(c["Cmd"], serde_json::json!(["--version"]));
    assert_eq!(
        c["Env"],
        serde_json::json!(["FROM=app", "PATH=/usr/bin:/bin"])
    );
    assert_eq!(c["WorkingDir"], "/usr/share/gt-app");
    assert_eq!(c["User"], "0:0");
    assert_eq!(c["Labels"]["org.example.layer"], "mid");
    let ports: Vec<&String> = c["ExposedPorts"].as_object().unwrap().keys().collect();
    assert_eq!(ports, ["53/udp", "80/tcp"]);
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert!(
        history[2]["created_by"]
            .as_str()
            .unwrap()
            .contains("emerge app-misc/gt-app")
    );
    let epoch: i64 = fs::read_to_string(f.conf().join("state/seed-ids/testseed"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let created = config["created"].as_str().unwrap().to_owned();
    let shown = run_ok(Command::new("date").args(["-u", "-d", &created, "+%s"]));
    assert_eq!(
        shown.trim().parse::<i64>().unwrap(),
        epoch,
        "created is the build epoch"
    );

    // The base blob is filtered by the top config (vardbpkg): it differs from
    // layers/<bn>.tar, which keeps the base's var/db/pkg.
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().trim_start_matches("sha256:").to_owned())
        .collect();
    let base_blob = oci.join("blobs/sha256").join(&diff_ids[0]);
    let plain = fs::read(mp.join("layers/testseed-base.tar")).unwrap();
    assert_ne!(fs::read(&base_blob).unwrap(), plain);
    let plain_tar = work.join("plain-base.tar");
    fs::write(&plain_tar, &plain).unwrap();
    assert!(
        tar_members(&plain_tar)
            .keys()
            .any(|k| k.starts_with("var/db/pkg/"))
    );
    assert!(
        !tar_members(&base_blob)
            .keys()
            .any(|k| k.starts_with("var/db/pkg/"))
    );

    // umoci unpacks exactly the image's files, modes and owners.
    let bundle = work.join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:latest", oci.display()))
            .arg(&bundle),
    );
    let want = tar_members(&flat);
    let got = tree_members(&bundle.join("rootfs"));
    assert!(want.contains_key("usr/bin/gt-app"), "{:?}", want.keys());
    assert!(!want.keys().any(|k| k.starts_with("var/db/pkg/")));
    let wrong: Vec<_> = want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .collect();
    assert!(
        wrong.is_empty(),
        "umoci's rootfs differs from app.tar at {wrong:?}"
    );

    // Into a real registry and back.
    let reg = Registry::start(&work);
    let dest = format!("docker://127.0.0.1:{}/gentree/app:1", reg.port);
    run_ok(Command::new("skopeo").args(["copy", "--dest-tls-verify=false", &oci_ref, &dest]));
    let pulled = json(&run_ok(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &dest,
    ])));
    assert_eq!(pulled["Layers"].as_array().unwrap().len(), 3, "{pulled}");
    let pulled_cfg = json(&run_ok(Command::new("skopeo").args([
        "inspect",
        "--config",
        "--tls-verify=false",
        &dest,
    ])));
    assert_eq!(
        pulled_cfg["rootfs"]["diff_ids"],
        config["rootfs"]["diff_ids"]
    );
    drop(reg);

    // podman (root, a storage of its own) loads it and shows its config.
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(work.join("podman-root"))
            .arg("--runroot")
            .arg(work.join("podman-run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    };
    // podman names the image after the path, which must be lowercase: a symlink.
    let link = std::env::temp_dir().join(format!("gentree-oci-{}", std::process::id()));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&builds, &link).unwrap();
    let pulled = run(&mut podman(&[
        "pull",
        "-q",
        &format!("oci:{}/app.oci:latest", link.display()),
    ]));
    fs::remove_file(&link).unwrap();
    assert!(
        pulled.status.success(),
        "podman pull: {}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let id = stdout(&pulled);
    let shown = json(&run_ok(&mut podman(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        id.trim(),
    ])));
    assert_eq!(shown["Entrypoint"], c["Entrypoint"]);
    assert_eq!(shown["Env"], c["Env"]);
    assert_eq!(shown["WorkingDir"], c["WorkingDir"]);
    let _ = run(&mut podman(&["rmi", "-a", "-f"]));

    // An edited [oci] table is no part of any key: no build, same layer blobs, a new
    // image config.
    let jobs = d.log().matches(": build job ").count();
    let edited = APP.replace("cmd = [\"--version\"]", "cmd = [\"--help\"]");
    assert_ne!(edited, APP);
    fs::write(mp.join("configs/app.toml"), &edited).unwrap();
    let config2 = json(&run_ok(
        Command::new("skopeo").args(["inspect", "--config", &oci_ref]),
    ));
    assert_eq!(config2["config"]["Cmd"], serde_json::json!(["--help"]));
    assert_eq!(config2["rootfs"], config["rootfs"]);
    assert_eq!(d.log().matches(": build job ").count(), jobs, "no rebuild");
    fs::write(mp.join("configs/app.toml"), APP).unwrap();

    // The SBOM validates and lists what is installed, not what was unmerged, though
    // the image has no var/db/pkg.
    let v = run(Command::new("pyspdxtools").arg("-i").arg(&sbom));
    assert!(
        v.status.success(),
        "pyspdxtools: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let doc = json(&fs::read_to_string(&sbom).unwrap());
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    let pkgs: BTreeMap<String, serde_json::Value> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone()))
        .collect();
    let names: Vec<&String> = pkgs.keys().collect();
    assert_eq!(
        names,
        [
            "app-misc/gt-app",
            "app-misc/gt-docs",
            "app-misc/gt-lib",
            "sys-apps/gt-baselayout"
        ]
    );
    let app = &pkgs["app-misc/gt-app"];
    assert_eq!(
        app["externalRefs"][0]["referenceLocator"],
        "=app-misc/gt-app-1:0::gentree-test"
    );
    assert!(
        app["comment"].as_str().unwrap().contains("USE: extras"),
        "{app}"
    );
    assert_eq!(app["licenseDeclared"], "LicenseRef-gentoo-public-domain");
    assert_eq!(app["homepage"], "https://gentree-fs.invalid/");
    d.stop();
}
