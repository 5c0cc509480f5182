//! Image files and their readers: `rm` and shared layers, stale readers after an
//! edit, finished images served by passthrough.

use super::*;

/// Publishes a layer under `key` by hand (no Portage): `data/<name>` in its root.
fn fake_layer(conf: &Path, key: &str, name: &str, base_keys: &[&str]) {
    let dir = conf.join("layers").join(key);
    fs::create_dir_all(dir.join("root/data")).unwrap();
    fs::write(dir.join("root/data").join(name), format!("{name}\n")).unwrap();
    let meta = serde_json::json!({
        "key": key, "name": name, "buildname": format!("s1-{name}"),
        "base_keys": base_keys, "created": 1, "format": 1,
    });
    fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
}

/// Publishes the image of `tar`'s config under its current key (a single layer with
/// `data/<name>` and 8 MiB of `fill` in `data/big`); returns the key.
fn fill_image(conf: &Path, tar: &Path, name: &str, fill: u8) -> String {
    let key = xattr_str(tar, "user.gentree.key").unwrap();
    fake_layer(conf, &key, name, &[]);
    let big = conf.join("layers").join(&key).join("root/data/big");
    fs::write(big, vec![fill; 8 << 20]).unwrap();
    key
}

/// `rm builds/x.tar` drops x's own layer, but not one another config builds on.
#[test]
fn mount_rm_keeps_layers_other_configs_use() {
    if !root_and_fuse("mount_rm_keeps_layers_other_configs_use") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    // The seed comes from the defaults, so the base is a config of its own too.
    let xdg = t.path().join("xdg");
    fs::create_dir_all(xdg.join("gentree")).unwrap();
    fs::write(xdg.join("gentree/config.toml"), "seed = \"s1\"\n").unwrap();
    fs::write(
        configs.join("base.toml"),
        "packages = [\"app-misc/base\"]\n",
    )
    .unwrap();
    for n in ["a", "b"] {
        fs::write(
            configs.join(format!("{n}.toml")),
            format!("bases = [\"base.toml\"]\npackages = [\"app-misc/{n}\"]\n"),
        )
        .unwrap();
    }
    let mp = t.path().join("mp");
    let mut cmd = util::gentree();
    cmd.env("XDG_CONFIG_HOME", &xdg);
    let d = Daemon::start(cmd, &conf, &configs, &mp, t.path());
    let tar = |n: &str| mp.join(format!("builds/{n}.tar"));
    let key = |n: &str| xattr_str(&tar(n), "user.gentree.key").expect("key");
    let (kbase, ka, kb) = (key("base"), key("a"), key("b"));
    assert!(kbase != ka && ka != kb, "{kbase} {ka} {kb}");
    fake_layer(&conf, &kbase, "base", &[]);
    fake_layer(&conf, &ka, "a", &[&kbase]);
    fake_layer(&conf, &kb, "b", &[&kbase]);
    let layer = |k: &str| conf.join("layers").join(k).join("meta.json").exists();
    let state = |n: &str| xattr_str(&tar(n), "user.gentree.state");
    let listing = |n: &str| {
        let copy = t.path().join(format!("{n}.tar"));
        run_ok(Command::new("cp").arg(tar(n)).arg(&copy));
        run_ok(Command::new("tar").arg("-tf").arg(&copy))
    };
    // a's image is the base's layer and its own (the keys match: nothing is built).
    let l = listing("a");
    assert!(l.contains("data/base") && l.contains("data/a"), "{l}");
    assert_eq!(state("a").as_deref(), Some("ready"));

    // a and b build on the base: rm of the base's image keeps its layer.
    fs::remove_file(tar("base")).unwrap();
    assert!(layer(&kbase), "a shared layer was removed");
    // a's own layer goes; the base and b's stay, and b is still whole.
    fs::remove_file(tar("a")).unwrap();
    assert!(!layer(&ka), "a's layer kept");
    assert!(layer(&kbase) && layer(&kb));
    assert_eq!(state("a").as_deref(), Some("absent"));
    let l = listing("b");
    assert!(l.contains("data/base") && l.contains("data/b"), "{l}");
    assert_eq!(state("b").as_deref(), Some("ready"));
    // A config not resolved yet might use b's layer: rm keeps it (without waiting
    // for that config), and removes it once every config is known.
    fs::write(
        configs.join("c.toml"),
        "bases = [\"base.toml\"]\npackages = [\"app-misc/c\"]\n",
    )
    .unwrap();
    fs::remove_file(tar("b")).unwrap();
    assert!(layer(&kb), "removed while c was not resolved");
    assert_ne!(key("c"), kb);
    fs::remove_file(tar("b")).unwrap();
    assert!(!layer(&kb), "b's layer kept");
    d.stop();
}

/// A reader still holding the image a config had before an edit cannot fill the page
/// cache with its old bytes: once the new image is served, its reads fail with ESTALE,
/// and readers of the new image get only new bytes.
#[test]
fn mount_old_image_readers_cannot_pollute_the_new_image() {
    if !root_and_fuse("mount_old_image_readers_cannot_pollute_the_new_image") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    let cfg = configs.join("x.toml");
    fs::write(&cfg, "seed = \"s1\"\n").unwrap();
    let mp = t.path().join("mp");
    // The served path (as root, images would be served by passthrough once written).
    let mut cmd = util::gentree();
    cmd.arg("--no-image-files");
    let d = Daemon::start(cmd, &conf, &configs, &mp, t.path());
    let tar = mp.join("builds/x.tar");
    let image = |name: &str, fill: u8| drop(fill_image(&conf, &tar, name, fill));
    image("a", b'A');
    // The first open builds the index (direct I/O); the next reads through the cache.
    fs::read(&tar).unwrap();
    let old = fs::File::open(&tar).unwrap();
    let mut head = [0u8; 4096];
    old.read_at(&mut head, 0).unwrap();

    // The config changes: another key, another image, which a reader builds.
    fs::write(&cfg, "seed = \"s1\"\npackages = [\"app-misc/b\"]\n").unwrap();
    image("b", b'B');
    let first = fs::read(&tar).unwrap();
    // The old reader's page-cache misses now fail instead of caching old bytes.
    let mut buf = vec![0u8; 64 << 10];
    let e = old.read_at(&mut buf, 6 << 20).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
    let new = fs::File::open(&tar).unwrap();
    let mut bytes = vec![0u8; first.len()];
    new.read_exact_at(&mut bytes, 0).unwrap();
    assert!(bytes == first, "the cached read differs from the first one");
    let a_block = [b'A'; 4096];
    assert!(
        !bytes.windows(4096).step_by(512).any(|w| w == a_block),
        "old bytes in the new image"
    );
    assert!(bytes.windows(4096).any(|w| w == [b'B'; 4096]));
    drop((old, new));
    d.stop();
    assert!(!conf.join("images").exists(), "--no-image-files kept files");
}

/// Bytes the process `pid` has read so far (`rchar` of /proc/PID/io).
fn rchar(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// The image files under `conf`, with their sizes.
fn image_files(conf: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(rd) = fs::read_dir(conf.join("images")) else {
        return Vec::new();
    };
    // Finished files only: one still being written (`.tmp<pid>`) is renamed away
    // under our feet.
    let mut v: Vec<_> = rd
        .filter_map(|e| {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().contains(".tmp") {
                return None;
            }
            Some((e.path(), e.metadata().ok()?.len()))
        })
        .collect();
    v.sort();
    v
}

/// As root, a finished image is kept as a file and served by FUSE passthrough: the
/// kernel reads the file, the daemon reads nothing. A reader of the previous image
/// keeps reading its bytes after a config edit, and the new image's readers get the
/// new bytes, on a new inode while the old one's backing file is in use.
#[test]
fn mount_serves_finished_images_by_passthrough() {
    if !root_and_fuse("mount_serves_finished_images_by_passthrough") {
        return;
    }
    let t = util::tempdir();
    let (conf, configs) = plain_conf(t.path());
    let cfg = configs.join("x.toml");
    fs::write(&cfg, "seed = \"s1\"\n").unwrap();
    let mp = t.path().join("mp");
    let d = Daemon::start(util::gentree(), &conf, &configs, &mp, t.path());
    let pid = d.child.id();
    let tar = mp.join("builds/x.tar");
    let image = |name: &str, fill: u8| fill_image(&conf, &tar, name, fill);
    // Reads all of `f` from offset 0; the bytes and what the daemon read meanwhile.
    let read_all = |f: &fs::File| {
        let before = rchar(pid);
        let mut v = vec![0u8; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut v, 0).unwrap();
        (v, rchar(pid) - before)
    };
    let file_of = |key: &str, len: usize| {
        let files = image_files(&conf);
        let found = files.iter().find(|(p, n)| {
            *n == len as u64 && p.file_name().unwrap().to_str().unwrap().starts_with(key)
        });
        found.map(|(p, _)| p.clone())
    };

    let ka = image("a", b'A');
    // The first open builds the index and is served from the layout; the image file
    // is written after it.
    let first = fs::read(&tar).unwrap();
    assert!(first.windows(4096).any(|w| w == [b'A'; 4096]));
    wait_until("the image file", Duration::from_secs(20), || {
        file_of(&ka, first.len()).is_some()
    });
    let file_a = file_of(&ka, first.len()).unwrap();
    assert!(fs::read(&file_a).unwrap() == first, "image file differs");
    let listing = run_ok(Command::new("tar").arg("-tf").arg(&file_a));
    assert!(listing.contains("data/big"), "{listing}");
    // Served by the kernel from the file (the layout path would read 8 MiB here).
    let old = fs::File::open(&tar).unwrap();
    let (bytes, daemon) = read_all(&old);
    assert!(bytes == first, "passthrough bytes differ");
    assert!(
        daemon < 1 << 20,
        "the daemon read {daemon} bytes: not passthrough"
    );

    // The config changes while `old` is open: a new image, built by the next reader.
    fs::write(&cfg, "seed = \"s1\"\npackages = [\"app-misc/b\"]\n").unwrap();
    let kb = image("b", b'B');
    assert_ne!(ka, kb);
    let second = fs::read(&tar).unwrap();
    assert!(second.windows(4096).any(|w| w == [b'B'; 4096]));
    assert!(!second.windows(4096).step_by(512).any(|w| w == [b'A'; 4096]));
    wait_until("the new image file", Duration::from_secs(20), || {
        file_of(&kb, second.len()).is_some()
    });
    // The old reader still reads its own image, all of it.
    let (bytes, _) = read_all(&old);
    assert!(bytes == first, "the old reader's bytes changed");
    // A new reader while `old` holds image a's file as the inode's backing file:
    // image b by passthrough too, on a new inode of builds/x.tar.
    let new = fs::File::open(&tar).unwrap();
    let (bytes, daemon) = read_all(&new);
    assert!(bytes == second, "the new reader got other bytes");
    assert!(
        daemon < 1 << 20,
        "the daemon read {daemon} bytes: not passthrough"
    );
    use std::os::unix::fs::MetadataExt;
    let (ino_old, ino_new) = (old.metadata().unwrap().ino(), new.metadata().unwrap().ino());
    assert_ne!(ino_old, ino_new, "image b on image a's inode");
    assert_eq!(fs::metadata(&tar).unwrap().ino(), ino_new);
    drop((old, new));
    // Once the old opens are released (RELEASE comes after close), b by passthrough.
    wait_until(
        "passthrough of the new image",
        Duration::from_secs(10),
        || {
            let f = fs::File::open(&tar).unwrap();
            let (bytes, daemon) = read_all(&f);
            assert!(bytes == second);
            daemon < 1 << 20
        },
    );
    // Image files are content-addressed: a's stays for an edit back, until
    // clean-builds. `rm` drops b's layer and its file (a rebuild may differ).
    assert!(file_of(&ka, first.len()).is_some());
    fs::remove_file(&tar).unwrap();
    assert!(
        file_of(&kb, second.len()).is_none(),
        "rm kept the image file"
    );
    assert!(file_of(&ka, first.len()).is_some());
    d.stop();
}
