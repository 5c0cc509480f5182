//! The round trip a cache entry makes: a layer tree → its OCI layer tar → unpacked
//! into another store → the same layer tar and the same flattened image.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use super::*;
use crate::layers::ownership::OVERRIDE_XATTR;
use crate::layers::store::BuildKey;

fn set_mtime(p: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A layer with what a built one holds: recorded owners (setuid, another user),
/// a user xattr, a hard link, a symlink, a whiteout, an opaque directory, a
/// read-only directory, a recorded device node.
fn make_layer(root: &Path) {
    let w = |p: &str, data: &str| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
    };
    w("usr/bin/tool", "#!/bin/sh\n");
    xattr::set(root.join("usr/bin/tool"), OVERRIDE_XATTR, b"0:0:4755").unwrap();
    w("home/u/notes", "mine");
    xattr::set(root.join("home/u/notes"), OVERRIDE_XATTR, b"250:250:0600").unwrap();
    xattr::set(root.join("home/u/notes"), "user.note", b"kept").unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    symlink("tool", root.join("usr/bin/t")).unwrap();
    w("etc/.wh.gone", "");
    w("var/cache/.wh..wh..opq", "");
    w("var/cache/new", "fresh");
    w("dev/null", "");
    xattr::set(root.join("dev/null"), OVERRIDE_XATTR, b"0:0:0666:char-1-3").unwrap();
    fs::create_dir_all(root.join("ro")).unwrap();
    w("ro/f", "r");
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    for p in [
        "usr/bin/tool",
        "home/u/notes",
        "usr/bin/t",
        "etc/.wh.gone",
        "var/cache/new",
        "dev/null",
        "ro/f",
        "usr/bin",
        "usr",
        "home/u",
        "home",
        "etc",
        "var/cache",
        "var",
        "dev",
        "ro",
    ] {
        set_mtime(&root.join(p), 1_600_000_000);
    }
}

fn bytes(l: &TarLayout) -> Vec<u8> {
    let mut v = Vec::new();
    l.write_to(&mut v).unwrap();
    v
}

#[test]
fn a_pulled_layer_gives_the_same_layer_tar_and_image() {
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let built = t.path().join("built");
    fs::create_dir(&built).unwrap();
    if xattr::set(&built, "user.probe", b"1").is_err() {
        crate::testing::skip(
            "a_pulled_layer_gives_the_same_layer_tar_and_image",
            "no user xattrs on /var/tmp",
        );
        return;
    }
    xattr::remove(&built, "user.probe").unwrap();
    make_layer(&built);
    let epoch = 1_700_000_000;
    let tar1 = bytes(&layer_tar(&built).unwrap());

    let store = Store::open(&t.path().join("conf")).unwrap();
    let key = BuildKey::parse(&"d".repeat(64)).unwrap();
    let lock = store.lock(&key).unwrap();
    let pending = store.begin(&key, &lock).unwrap();
    let tar = pending.work().join("layer.tar");
    fs::write(&tar, &tar1).unwrap();
    let host = HostOwner {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    };
    unpack(&pending, &tar, Owners::Record, host, key.as_str()).unwrap();
    assert!(!tar.exists(), "the downloaded tar is removed");
    let pulled = pending.root();

    let tar2 = bytes(&layer_tar(&pulled).unwrap());
    assert!(tar1 == tar2, "the layer tar differs after the round trip");
    let image = |root: &Path| {
        let opts = PackOptions {
            filters: FilterSet::none(),
            source_date_epoch: Some(epoch),
        };
        bytes(&TarLayout::flattened(&[root.to_path_buf()], &opts).unwrap())
    };
    assert!(image(&built) == image(&pulled), "the image differs");
    // Nothing privileged on the host: the setuid file and the device are plain.
    let m = fs::metadata(pulled.join("usr/bin/tool")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7000, 0);
    assert!(
        fs::symlink_metadata(pulled.join("dev/null"))
            .unwrap()
            .is_file()
    );
}

#[test]
fn references() {
    let r = CacheRef::parse("127.0.0.1:5000/gentree/cache").unwrap();
    assert_eq!(
        r,
        CacheRef {
            https: true,
            host: "127.0.0.1:5000".into(),
            repo: "gentree/cache".into()
        }
    );
    assert_eq!(r.to_string(), "https://127.0.0.1:5000/gentree/cache");
    let r = CacheRef::parse("http://localhost:5000/c/").unwrap();
    assert!(!r.https);
    assert_eq!(r.repo, "c");
    for bad in [
        "",
        "host",
        "host/",
        "ftp://h/r",
        "h/Upper",
        "h/a//b",
        "h/-a",
        "ho st/r",
        "h/r?x",
        "/r",
    ] {
        let e = CacheRef::parse(bad).unwrap_err();
        assert!(e.contains("invalid cache reference"), "{bad}: {e}");
    }
}

#[test]
fn foreign_or_mismatched_entries_are_refused() {
    let key = BuildKey::parse(&"a".repeat(64)).unwrap();
    let want = LayerMeta {
        key: key.clone(),
        name: "n".into(),
        buildname: "s-n".into(),
        base_keys: vec![BuildKey::parse(&"b".repeat(64)).unwrap()],
        created: 1,
        format: 3,
        packages: vec![],
    };
    assert_eq!(check_meta(&want, &want), Ok(()));
    let mut other = want.clone();
    other.key = BuildKey::parse(&"c".repeat(64)).unwrap();
    assert!(
        check_meta(&other, &want)
            .unwrap_err()
            .contains("names the key")
    );
    let mut other = want.clone();
    other.base_keys.clear();
    assert!(check_meta(&other, &want).is_err());
    let mut other = want.clone();
    other.format = 2;
    assert!(check_meta(&other, &want).is_err());
    let mut other = want.clone();
    other.created = 99; // made elsewhere, at another time: fine
    assert_eq!(check_meta(&other, &want), Ok(()));

    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let manifest = |config_mt: MediaType, layers: Vec<(MediaType, String)>| {
        ImageManifestBuilder::default()
            .schema_version(2u32)
            .config(descriptor(config_mt, 10, &d('1')).unwrap())
            .layers(
                layers
                    .into_iter()
                    .map(|(mt, dg)| descriptor(mt, 5, &dg).unwrap())
                    .collect::<Vec<_>>(),
            )
            .build()
            .unwrap()
    };
    let meta_mt = || MediaType::Other(META_MEDIA_TYPE.into());
    let good = manifest(meta_mt(), vec![(MediaType::ImageLayer, d('2'))]);
    assert!(entry_descriptors(&good).is_ok());
    for (m, why) in [
        (
            manifest(
                MediaType::ImageConfig,
                vec![(MediaType::ImageLayer, d('2'))],
            ),
            "config media type",
        ),
        (manifest(meta_mt(), vec![]), "0 layers"),
        (
            manifest(
                meta_mt(),
                vec![
                    (MediaType::ImageLayer, d('2')),
                    (MediaType::ImageLayer, d('3')),
                ],
            ),
            "2 layers",
        ),
        (
            manifest(meta_mt(), vec![(MediaType::ImageLayerGzip, d('2'))]),
            "layer media type",
        ),
    ] {
        let e = entry_descriptors(&m).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}
