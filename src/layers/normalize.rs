//! Making a freshly built layer a function of its inputs: Portage's records
//! normalised, then every mtime newer than the build epoch clamped to it.
//!
//! Found by building the same config twice and diffing the layers; each change keeps
//! the records consistent with the files:
//!
//! | file (under the layer root) | change | why it is safe |
//! |---|---|---|
//! | `var/db/pkg/*/*/BUILD_TIME` | `min(value, epoch)` | only compared for `--rebuilt-binaries`, against binary packages, which the image does not hold |
//! | `var/db/pkg/*/*/CONTENTS` `obj`/`sym` lines | mtime field `min(value, epoch)`: the clamped file's mtime | `emerge --unmerge` skips a file whose mtime differs from the record (`!mtime`), so the record must follow the clamp |
//! | `var/db/pkg/*/*/metadata` | its `BUILD_TIME=` as above; `#dir_mtime=` set to the entry directory's mtime after the clamp | Portage serves this snapshot only while `#dir_mtime` equals the directory's `st_mtime_ns`; otherwise it reads the single files, which say the same |
//! | `var/db/pkg/*/*/COUNTER` (and `COUNTER=` in `metadata`) | the layer's own entries renumbered from their smallest value, in `category/PF` order | the merge counter orders installs; with parallel merges (`--jobs`) the order within one emerge run is arbitrary, so a name order is as true, and the largest value (`var/cache/edb/counter`) is never exceeded |
//! | `var/db/pkg/*/*/BINPKGMD5` | removed | the md5 of the binary package in `PKGDIR`, outside the image; gpkg archives carry build times, so it differs per build. Portage treats a missing value as unknown |
//! | `var/cache/edb/mtimedb` | removed | resume lists and the mtimes of library directories at the last `env-update`; Portage recreates it (at worst `ldconfig` runs once more) |
//!
//! The clamp then walks the layer (children before their directory, as changing a
//! child never changes a directory's mtime but removing one does) and sets every mtime
//! newer than the epoch to the epoch, atime with it, never following symlinks. Older
//! mtimes (from the seed, from tarballs) are kept, as reproducible-builds.org's clamp
//! does. Ownership records, modes and inodes are untouched: files are rewritten in
//! place.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

/// A failure, naming the file at fault.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}")]
pub struct NormalizeError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NormalizeError + 'a {
    move |source| NormalizeError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What [`normalize_layer`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub clamped: u64,
    pub records_rewritten: u64,
    pub removed: u64,
    pub micros: u128,
}

/// Normalises Portage's records in the layer at `root`, then clamps its mtimes to
/// `epoch` (see the module doc).
pub fn normalize_layer(root: &Path, epoch: i64) -> Result<Stats, NormalizeError> {
    let start = Instant::now();
    let mut st = Stats::default();
    remove_if_file(&root.join("var/cache/edb/mtimedb"), &mut st)?;
    let vdb = root.join("var/db/pkg");
    let entries = vdb_entries(&vdb)?;
    renumber_counters(&entries, &mut st)?;
    for entry in &entries {
        normalize_vdb_entry(entry, epoch, &mut st)?;
    }
    clamp_tree(root, epoch, &mut st)?;
    st.micros = start.elapsed().as_micros();
    Ok(st)
}

/// The new merge counters of entries listed in `category/PF` order. The entries this
/// build merged hold the consecutive run of values ending at the largest (each merge
/// takes the next one); they get that run's values in name order. Any other entry
/// (one copied up from a lower layer) keeps its value.
pub fn renumbered(counters: &[u64]) -> Vec<u64> {
    let mut sorted = counters.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut low = sorted.last().copied().unwrap_or(0);
    for w in sorted.windows(2).rev() {
        if w[1] != w[0] + 1 {
            break;
        }
        low = w[0];
    }
    let mut next = low;
    counters
        .iter()
        .map(|&c| {
            if c >= low {
                next += 1;
                next - 1
            } else {
                c
            }
        })
        .collect()
}

/// Gives the layer's vdb entries (sorted by `category/PF`) merge counters in that
/// order, in `COUNTER` and in the `metadata` snapshot's `COUNTER=` line.
fn renumber_counters(entries: &[PathBuf], st: &mut Stats) -> Result<(), NormalizeError> {
    let mut found: Vec<(&PathBuf, u64)> = Vec::new();
    for e in entries {
        let p = e.join("COUNTER");
        match fs::read_to_string(&p) {
            Ok(t) => {
                if let Ok(n) = t.trim().parse::<u64>() {
                    found.push((e, n));
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(at("read", &p)(err)),
        }
    }
    let values: Vec<u64> = found.iter().map(|(_, n)| *n).collect();
    for ((dir, _), new) in found.iter().zip(renumbered(&values)) {
        rewrite(&dir.join("COUNTER"), st, |t| {
            let digits = t.trim();
            t.replacen(digits, &new.to_string(), 1)
        })?;
        rewrite(&dir.join("metadata"), st, |t| {
            let mut out = String::with_capacity(t.len());
            for line in t.lines() {
                if line.starts_with("COUNTER=") && t.starts_with("#format=") {
                    out.push_str(&format!("COUNTER={new}"));
                } else {
                    out.push_str(line);
                }
                out.push('\n');
            }
            if t.ends_with('\n') {
                out
            } else {
                out.trim_end_matches('\n').to_owned()
            }
        })?;
    }
    Ok(())
}

fn remove_if_file(p: &Path, st: &mut Stats) -> Result<(), NormalizeError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_file() => {
            fs::remove_file(p).map_err(at("remove", p))?;
            st.removed += 1;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(at("read", p)(e)),
    }
}

/// `var/db/pkg/<cat>/<pf>` directories of the layer itself (whiteouts and other
/// dot-names skipped).
fn vdb_entries(vdb: &Path) -> Result<Vec<PathBuf>, NormalizeError> {
    let mut out = Vec::new();
    let list = |d: &Path| -> Result<Vec<PathBuf>, NormalizeError> {
        let mut v = Vec::new();
        let rd = match fs::read_dir(d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(at("list", d)(e)),
        };
        for e in rd {
            let e = e.map_err(at("list", d))?;
            let dot = e.file_name().as_encoded_bytes().starts_with(b".");
            if !dot && e.file_type().map_err(at("list", d))?.is_dir() {
                v.push(e.path());
            }
        }
        v.sort();
        Ok(v)
    };
    for cat in list(vdb)? {
        out.extend(list(&cat)?);
    }
    Ok(out)
}

/// Rewrites `path` in place (same inode, xattrs kept) when `f` changes its text.
fn rewrite(
    path: &Path,
    st: &mut Stats,
    f: impl FnOnce(&str) -> String,
) -> Result<(), NormalizeError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(at("read", path)(e)),
    };
    // Records are UTF-8 in practice; a file that is not is left alone.
    let Ok(text) = String::from_utf8(text) else {
        return Ok(());
    };
    let new = f(&text);
    if new != text {
        let mut file = File::options()
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(at("rewrite", path))?;
        file.write_all(new.as_bytes())
            .map_err(at("rewrite", path))?;
        st.records_rewritten += 1;
    }
    Ok(())
}

fn clamp_num(v: &str, epoch: i64) -> Option<String> {
    let n: i64 = v.trim().parse().ok()?;
    Some(n.min(epoch).to_string())
}

/// `BUILD_TIME` file content, clamped.
pub fn clamp_build_time(text: &str, epoch: i64) -> String {
    match clamp_num(text, epoch) {
        Some(n) => format!("{n}\n"),
        None => text.to_owned(),
    }
}

/// `CONTENTS` with the mtime of every `obj` and `sym` line clamped. The mtime is the
/// last space-separated field (paths may contain spaces, the field never does).
pub fn clamp_contents(text: &str, epoch: i64) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let is_timed = body.starts_with("obj ") || body.starts_with("sym ");
        match body.rsplit_once(' ') {
            Some((head, mtime)) if is_timed => match clamp_num(mtime, epoch) {
                Some(m) => {
                    out.push_str(head);
                    out.push(' ');
                    out.push_str(&m);
                    out.push_str(nl);
                }
                None => out.push_str(line),
            },
            _ => out.push_str(line),
        }
    }
    out
}

/// The consolidated `metadata` snapshot with `BUILD_TIME=` clamped and `#dir_mtime=`
/// set to `dir_mtime_ns`.
pub fn fix_metadata(text: &str, epoch: i64, dir_mtime_ns: i128) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("BUILD_TIME=") {
            match clamp_num(v, epoch) {
                Some(n) => out.push_str(&format!("BUILD_TIME={n}")),
                None => out.push_str(line),
            }
        } else if line.starts_with("#dir_mtime=") {
            out.push_str(&format!("#dir_mtime={dir_mtime_ns}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn normalize_vdb_entry(dir: &Path, epoch: i64, st: &mut Stats) -> Result<(), NormalizeError> {
    remove_if_file(&dir.join("BINPKGMD5"), st)?;
    rewrite(&dir.join("BUILD_TIME"), st, |t| clamp_build_time(t, epoch))?;
    rewrite(&dir.join("CONTENTS"), st, |t| clamp_contents(t, epoch))?;
    // Rewriting files in place leaves the directory's mtime alone: after the clamp it
    // is the epoch if it is newer now, else what it is now.
    let m = fs::symlink_metadata(dir).map_err(at("read", dir))?;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    let dir_ns = if m.mtime() > epoch || (m.mtime() == epoch && m.mtime_nsec() > 0) {
        ns(epoch, 0)
    } else {
        ns(m.mtime(), m.mtime_nsec())
    };
    rewrite(&dir.join("metadata"), st, |t| {
        if t.starts_with("#format=") {
            fix_metadata(t, epoch, dir_ns)
        } else {
            t.to_owned()
        }
    })
}

/// Sets every mtime newer than `epoch` under `root` (itself included) to `epoch`.
pub fn clamp_tree(root: &Path, epoch: i64, st: &mut Stats) -> Result<(), NormalizeError> {
    let m = fs::symlink_metadata(root).map_err(at("read", root))?;
    if m.is_dir() {
        let rd = fs::read_dir(root).map_err(at("list", root))?;
        for e in rd {
            let e = e.map_err(at("list", root))?;
            clamp_tree(&e.path(), epoch, st)?;
        }
    }
    st.entries += 1;
    if m.mtime() > epoch || (m.mtime() == epoch && m.mtime_nsec() > 0) {
        let t = TimeSpec::new(epoch, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            root,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| at("set the mtime of", root)(io::Error::from(e)))?;
        st.clamped += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_counters_follow_the_name_order() {
        assert_eq!(renumbered(&[7, 5, 6]), [5, 6, 7]);
        assert_eq!(renumbered(&[2, 1]), [1, 2]);
        assert_eq!(renumbered(&[]), Vec::<u64>::new());
        // 3 came from a lower layer (copied up): only the run 10..=11 is this build's.
        assert_eq!(renumbered(&[11, 3, 10]), [10, 3, 11]);
        // Two runs that merged a and b in either order give the same records.
        let t = tempfile::tempdir().unwrap();
        for (a, b) in [(1, 2), (2, 1)] {
            let vdb = t.path().join(format!("run{a}/var/db/pkg/app-misc"));
            for (name, c) in [("a-1", a), ("b-1", b)] {
                let d = vdb.join(name);
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join("COUNTER"), c.to_string()).unwrap();
                fs::write(
                    d.join("metadata"),
                    format!("#format=1\nCOUNTER={c}\nEAPI=8\n"),
                )
                .unwrap();
            }
            normalize_layer(&t.path().join(format!("run{a}")), 1_700_000_000).unwrap();
            assert_eq!(fs::read_to_string(vdb.join("a-1/COUNTER")).unwrap(), "1");
            assert_eq!(fs::read_to_string(vdb.join("b-1/COUNTER")).unwrap(), "2");
            assert_eq!(
                fs::read_to_string(vdb.join("b-1/metadata")).unwrap(),
                "#format=1\nCOUNTER=2\nEAPI=8\n"
            );
        }
    }
    use std::time::{Duration, UNIX_EPOCH};

    const EPOCH: i64 = 1_700_000_000;

    #[test]
    fn contents_lines_are_clamped_by_their_last_field() {
        let text = "dir /usr\n\
                    obj /usr/bin/a b 0123abcd 1800000000\n\
                    obj /usr/old 0123abcd 1600000000\n\
                    sym /bin -> usr/bin 1800000001\n\
                    sym /odd name -> t a r g e t 1800000002\n\
                    dev /dev/x\n\
                    obj /weird 0123 notanumber";
        let want = "dir /usr\n\
                    obj /usr/bin/a b 0123abcd 1700000000\n\
                    obj /usr/old 0123abcd 1600000000\n\
                    sym /bin -> usr/bin 1700000000\n\
                    sym /odd name -> t a r g e t 1700000000\n\
                    dev /dev/x\n\
                    obj /weird 0123 notanumber";
        assert_eq!(clamp_contents(text, EPOCH), want);
        assert_eq!(clamp_build_time("1800000000\n", EPOCH), "1700000000\n");
        assert_eq!(clamp_build_time("1600000000\n", EPOCH), "1600000000\n");
        assert_eq!(
            fix_metadata(
                "#format=1\nBUILD_TIME=1800000000\nUSE=a\n#dir_mtime=1800000000123\n",
                EPOCH,
                1_700_000_000_000_000_000
            ),
            "#format=1\nBUILD_TIME=1700000000\nUSE=a\n#dir_mtime=1700000000000000000\n"
        );
    }

    fn set_mtime(p: &Path, secs: i64) {
        let t = TimeSpec::new(secs, 5);
        utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn mtime(p: &Path) -> (i64, i64) {
        let m = fs::symlink_metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec())
    }

    #[test]
    fn a_layer_is_normalised_and_clamped_consistently() -> Result<(), NormalizeError> {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let pkg = r.join("var/db/pkg/app-misc/gt-app-1");
        fs::create_dir_all(&pkg).unwrap();
        fs::create_dir_all(r.join("var/cache/edb")).unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::write(r.join("usr/bin/new"), "x").unwrap();
        fs::write(r.join("usr/bin/old"), "y").unwrap();
        set_mtime(&r.join("usr/bin/old"), EPOCH - 100);
        std::os::unix::fs::symlink("new", r.join("usr/bin/link")).unwrap();
        let now = mtime(&r.join("usr/bin/new")).0;
        fs::write(r.join("var/cache/edb/mtimedb"), "{}").unwrap();
        fs::write(r.join("var/cache/edb/counter"), "3").unwrap();
        fs::write(pkg.join("BINPKGMD5"), "abc\n").unwrap();
        fs::write(pkg.join("BUILD_TIME"), format!("{now}\n")).unwrap();
        fs::write(
            pkg.join("CONTENTS"),
            format!(
                "obj /usr/bin/new 9dd4e461268c8034f5c8564e155c67a6 {now}\nobj /usr/bin/old 41 {}\nsym /usr/bin/link -> new {now}\n",
                EPOCH - 100
            ),
        )
        .unwrap();
        fs::write(
            pkg.join("metadata"),
            format!("#format=1\nBUILD_TIME={now}\n#dir_mtime=1\n"),
        )
        .unwrap();

        let st = normalize_layer(r, EPOCH)?;
        assert_eq!(st.removed, 2);
        assert!(!pkg.join("BINPKGMD5").exists());
        assert!(!r.join("var/cache/edb/mtimedb").exists());
        assert!(r.join("var/cache/edb/counter").exists());
        assert_eq!(
            fs::read_to_string(pkg.join("BUILD_TIME")).unwrap(),
            format!("{EPOCH}\n")
        );
        // Every entry newer than the epoch is at the epoch; the older file kept its
        // time, nanoseconds included.
        for p in [
            "",
            "usr",
            "usr/bin",
            "usr/bin/new",
            "usr/bin/link",
            "var/db/pkg/app-misc/gt-app-1",
            "var/db/pkg/app-misc/gt-app-1/CONTENTS",
        ] {
            assert_eq!(mtime(&r.join(p)), (EPOCH, 0), "{p}");
        }
        assert_eq!(mtime(&r.join("usr/bin/old")), (EPOCH - 100, 5));
        // CONTENTS agrees with the files, so --unmerge would remove them.
        let contents = fs::read_to_string(pkg.join("CONTENTS")).unwrap();
        for line in contents.lines() {
            let (_, m) = line.rsplit_once(' ').unwrap();
            let path = line.split(' ').nth(1).unwrap();
            assert_eq!(m, mtime(&r.join(&path[1..])).0.to_string(), "{line}");
        }
        // The metadata snapshot stays valid: its stamp is the directory's mtime.
        let meta = fs::read_to_string(pkg.join("metadata")).unwrap();
        let m = fs::metadata(&pkg).unwrap();
        let dir_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        assert!(meta.contains(&format!("#dir_mtime={dir_ns}\n")), "{meta}");
        assert!(meta.contains(&format!("BUILD_TIME={EPOCH}\n")), "{meta}");

        // Idempotent: a second pass changes nothing.
        let again = normalize_layer(r, EPOCH)?;
        assert_eq!(
            (again.clamped, again.records_rewritten, again.removed),
            (0, 0, 0)
        );
        Ok(())
    }

    #[test]
    fn a_future_epoch_clamps_nothing() -> Result<(), NormalizeError> {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), "x").unwrap();
        let before = mtime(&t.path().join("f"));
        let far = (UNIX_EPOCH.elapsed().unwrap() + Duration::from_secs(86400)).as_secs() as i64;
        let st = normalize_layer(t.path(), far)?;
        assert_eq!(st.clamped, 0);
        assert_eq!(mtime(&t.path().join("f")), before);
        Ok(())
    }
}
