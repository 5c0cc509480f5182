//! The entry index of one tar and the bytes at any offset.
//!
//! Entry `i` occupies `[offsets[i], offsets[i+1])`: its header bytes
//! ([`header::encode`], regenerated on demand, only their length is kept), then
//! `size` bytes of file data read from the layer, then zero padding to 512. The
//! archive ends with a 1024-byte zero trailer (no padding to a 10240-byte record:
//! GNU tar, bsdtar and Python read it as is).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::header::{self, BLOCK, padded};
use super::scan::{self, LayerFile};
use super::{EntryKind, PackOptions, TarEntry, TarError, filter};
use crate::layers::read_full_at;

const TRAILER: u64 = 2 * BLOCK;
/// Files up to this size are copied through the output buffer; larger ones are
/// copied by `sendfile` ([`TarLayout::write_to_file`]) or in chunks.
const SMALL_FILE: u64 = 64 * 1024;
/// Bytes of headers and small files gathered before one `write`.
const OUT_BUF: usize = 256 * 1024;
/// Chunk size of buffered copies of large files.
const COPY_CHUNK: usize = 256 * 1024;

/// A tar computed from layers: entries, offsets, total size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarLayout {
    pub(super) layers: Vec<PathBuf>,
    pub(super) entries: Vec<TarEntry>,
    /// Start of each entry; one more element at the end: the trailer's start.
    offsets: Vec<u64>,
    header_lens: Vec<u32>,
    size: u64,
}

impl TarLayout {
    /// The flattened image of `layers` (lowest first): whiteouts and opaque dirs
    /// applied, filters applied, absolute symlinks rewritten.
    pub fn flattened(layers: &[PathBuf], opts: &PackOptions) -> Result<TarLayout, TarError> {
        let layers = absolute(layers)?;
        let merged = scan::merge(&layers, &opts.filters)?;
        let mut links = LinkGroups::default();
        let mut entries = Vec::with_capacity(merged.len());
        for (path, node) in merged {
            if let Some(f) = opts.filters.rejects(&path, node.kind) {
                tracing::trace!("filter {f} drops {}", String::from_utf8_lossy(&path));
                continue;
            }
            entries.extend(to_entry(path, node, opts.source_date_epoch, &mut links));
        }
        TarLayout::from_entries(layers, entries)
    }

    /// Computes offsets and the total size of `entries` (in archive order).
    pub(super) fn from_entries(
        layers: Vec<PathBuf>,
        entries: Vec<TarEntry>,
    ) -> Result<TarLayout, TarError> {
        let mut offsets = Vec::with_capacity(entries.len() + 1);
        let mut header_lens = Vec::with_capacity(entries.len());
        let mut pos = 0u64;
        let mut buf = Vec::with_capacity(4096);
        for e in &entries {
            buf.clear();
            header::encode(e, &mut buf);
            offsets.push(pos);
            header_lens.push(buf.len() as u32);
            pos += buf.len() as u64 + padded(e.size);
        }
        offsets.push(pos);
        Ok(TarLayout {
            layers,
            entries,
            offsets,
            header_lens,
            size: pos + TRAILER,
        })
    }

    /// Total size of the archive in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The entries in archive order.
    pub fn entries(&self) -> &[TarEntry] {
        &self.entries
    }

    /// The layer directories (absolute) the data is read from.
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// Points the layout at the same layers in a new place (a moved layer store).
    /// The count must match; nothing is re-read.
    pub fn relocate(&mut self, layers: Vec<PathBuf>) -> Result<(), TarError> {
        if layers.len() != self.layers.len() {
            return Err(TarError::Relocate {
                have: self.layers.len(),
                given: layers.len(),
            });
        }
        self.layers = absolute(&layers)?;
        Ok(())
    }

    /// Fills `buf` with the archive bytes at `offset`; returns the count, short only
    /// at the end of the archive (0 at or past it).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        let mut hdr = Vec::new();
        while done < buf.len() && offset + (done as u64) < self.size {
            let pos = offset + done as u64;
            let out = &mut buf[done..];
            let n = self.entries.len();
            let trailer = self.offsets[n];
            if pos >= trailer {
                let k = out.len().min((self.size - pos) as usize);
                out[..k].fill(0);
                done += k;
                continue;
            }
            let i = self.offsets.partition_point(|&o| o <= pos) - 1;
            let e = &self.entries[i];
            let rel = pos - self.offsets[i];
            let hl = u64::from(self.header_lens[i]);
            let k = if rel < hl {
                hdr.clear();
                header::encode(e, &mut hdr);
                let k = out.len().min((hl - rel) as usize);
                out[..k].copy_from_slice(&hdr[rel as usize..rel as usize + k]);
                k
            } else if rel < hl + e.size {
                let data_off = rel - hl;
                let k = out.len().min((e.size - data_off) as usize);
                self.read_data(e, data_off, &mut out[..k])?;
                k
            } else {
                let k = out.len().min((self.offsets[i + 1] - pos) as usize);
                out[..k].fill(0);
                k
            };
            done += k;
        }
        Ok(done)
    }

    fn data_path(&self, e: &TarEntry) -> Option<PathBuf> {
        let layer = self.layers.get(usize::from(e.source?))?;
        Some(scan::join(layer, &e.path))
    }

    fn open_data(&self, e: &TarEntry) -> io::Result<(PathBuf, File)> {
        let path = self.data_path(e).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "entry with data has no source layer",
            )
        })?;
        // Never follow a symlink swapped in after the layout was computed.
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(data_err(&path))?;
        Ok((path, f))
    }

    /// Reads `buf.len()` data bytes of `e` from `off`; zero-fills what the file no
    /// longer has (it shrank) and warns.
    fn read_data(&self, e: &TarEntry, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let (path, f) = self.open_data(e)?;
        let got = read_full_at(&f, off, buf).map_err(data_err(&path))?;
        if got < buf.len() {
            warn_size_changed(&path, e.size);
            buf[got..].fill(0);
        }
        Ok(())
    }

    /// Writes the whole archive to `out`; returns the bytes written (== `size()`).
    /// Memory stays bounded: data is copied in chunks, never gathered.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<u64> {
        let mut buf = vec![0u8; COPY_CHUNK];
        self.stream(out, |f, len, out| buffered_copy(f, len, out, &mut buf))
    }

    /// [`TarLayout::write_to`] for a file, pipe or socket: large files go by
    /// `sendfile` (no copy through user space; into a pipe, only page references).
    pub fn write_to_file(&self, out: &mut File) -> io::Result<u64> {
        let mut buf = Vec::new();
        self.stream(out, |f, len, out| match sendfile_copy(f, len, out) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                buf.resize(COPY_CHUNK, 0);
                buffered_copy(f, len, out, &mut buf)
            }
            r => r,
        })
    }

    /// The streaming loop: headers and small files gathered in one buffer, large
    /// files copied by `copy(file, len, out)` (which returns the bytes it copied,
    /// fewer at EOF).
    fn stream<W: Write>(
        &self,
        out: &mut W,
        mut copy: impl FnMut(&mut File, u64, &mut W) -> io::Result<u64>,
    ) -> io::Result<u64> {
        let mut pending: Vec<u8> = Vec::with_capacity(OUT_BUF + SMALL_FILE as usize + 4096);
        let mut written = 0u64;
        for e in &self.entries {
            header::encode(e, &mut pending);
            if e.size > 0 {
                let (path, mut f) = self.open_data(e)?;
                let (got, grew) = if e.size <= SMALL_FILE {
                    // One byte more than recorded: a file that grew shows it
                    // without an extra read.
                    let start = pending.len();
                    pending.resize(start + e.size as usize + 1, 0);
                    let got = read_small(&mut f, &mut pending[start..], e.size)
                        .map_err(data_err(&path))?;
                    pending.truncate(start + e.size as usize);
                    (got.min(e.size), got > e.size)
                } else {
                    flush(out, &mut pending, &mut written)?;
                    let n = copy(&mut f, e.size, out).map_err(data_err(&path))?;
                    written += n;
                    (n, n == e.size && probe_more(&mut f))
                };
                if got < e.size || grew {
                    warn_size_changed(&path, e.size);
                }
                if got < e.size && e.size > SMALL_FILE {
                    // Large-file path: the zeros go through `pending`, in chunks.
                    let mut left = e.size - got;
                    while left > 0 {
                        let k = left.min(OUT_BUF as u64) as usize;
                        pending.resize(pending.len() + k, 0);
                        flush(out, &mut pending, &mut written)?;
                        left -= k as u64;
                    }
                }
                // Small-file path: the buffer already holds zeros past `got`.
                pending.resize(pending.len() + (padded(e.size) - e.size) as usize, 0);
            }
            if pending.len() >= OUT_BUF {
                flush(out, &mut pending, &mut written)?;
            }
        }
        pending.resize(pending.len() + TRAILER as usize, 0);
        flush(out, &mut pending, &mut written)?;
        out.flush()?;
        Ok(written)
    }

    /// Persists the index (see `index.rs` for the format), atomically.
    pub fn save(&self, path: &Path) -> Result<(), TarError> {
        super::index::save(self, path)
    }

    /// Loads an index saved by [`TarLayout::save`]; no tree walk.
    pub fn load(path: &Path) -> Result<TarLayout, TarError> {
        let (layers, entries, size) = super::index::load(path)?;
        let l = TarLayout::from_entries(layers, entries)?;
        if l.size != size {
            return Err(TarError::IndexFormat {
                path: path.to_path_buf(),
                what: format!("recorded size {size} but entries give {}", l.size),
            });
        }
        Ok(l)
    }
}

/// An I/O error on a layer file, naming it.
#[derive(Debug, thiserror::Error)]
#[error("reading {}: {err}", path.display())]
struct DataError {
    path: PathBuf,
    #[source]
    err: io::Error,
}

/// Wraps an I/O error on the layer file `path`, keeping its kind (and errno) visible.
fn data_err(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |err| {
        let kind = err.kind();
        io::Error::new(
            kind,
            DataError {
                path: path.to_path_buf(),
                err,
            },
        )
    }
}

/// Writes and empties `pending`, counting the bytes.
fn flush<W: Write>(out: &mut W, pending: &mut Vec<u8>, written: &mut u64) -> io::Result<()> {
    out.write_all(pending)?;
    *written += pending.len() as u64;
    pending.clear();
    Ok(())
}

fn warn_size_changed(path: &Path, size: u64) {
    tracing::warn!(
        "{} changed size while the tar was read; kept its recorded size {size} (truncated or zero-padded)",
        path.display()
    );
}

/// Copies up to `len` bytes from `f`'s position to `out` through `buf`.
fn buffered_copy<W: Write>(f: &mut File, len: u64, out: &mut W, buf: &mut [u8]) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = read_full(f, &mut buf[..want])? as usize;
        out.write_all(&buf[..n])?;
        done += n as u64;
        if n < want {
            break;
        }
    }
    Ok(done)
}

/// Copies up to `len` bytes from `f`'s position to `out` with `sendfile`.
fn sendfile_copy(f: &mut File, len: u64, out: &mut File) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        match nix::sys::sendfile::sendfile(&*out, &*f, None, want) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Reads a file expected to hold `size` bytes into `buf` (`size + 1` long): one
/// `read` in the usual case, more only when it came back short of `size`.
fn read_small(f: &mut File, buf: &mut [u8], size: u64) -> io::Result<u64> {
    let first = loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => break r?,
        }
    };
    if first as u64 >= size || first == 0 {
        return Ok(first as u64);
    }
    Ok(first as u64 + read_full(f, &mut buf[first..])?)
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got as u64)
}

/// True when the file has data past what was read (it grew).
fn probe_more(f: &mut File) -> bool {
    let mut b = [0u8; 1];
    matches!(f.read(&mut b), Ok(1))
}

fn absolute(layers: &[PathBuf]) -> Result<Vec<PathBuf>, TarError> {
    layers
        .iter()
        .map(|l| {
            std::path::absolute(l).map_err(|source| TarError::Walk {
                layer: l.clone(),
                path: l.clone(),
                source,
            })
        })
        .collect()
}

/// Hard-link groups: the first emitted member of (layer, dev, ino) carries the data;
/// later members link to its path. Filtered members never reach this (B56 fix).
#[derive(Debug, Default)]
pub(super) struct LinkGroups(HashMap<(u16, u64, u64), Box<[u8]>>);

/// The archive entry of a merged node; `None` for what tar cannot hold (sockets).
pub(super) fn to_entry(
    path: Vec<u8>,
    node: LayerFile,
    epoch: Option<i64>,
    links: &mut LinkGroups,
) -> Option<TarEntry> {
    let mut mtime = node.mtime.max(0);
    if let Some(e) = epoch {
        mtime = mtime.min(e.max(0));
    }
    let mut e = TarEntry {
        path: path.into(),
        kind: EntryKind::File,
        perm: node.perm,
        uid: node.uid,
        gid: node.gid,
        mtime,
        size: 0,
        link: None,
        xattrs: node.xattrs,
        source: None,
    };
    e.kind = match EntryKind::try_from(node.kind) {
        Ok(k) => k,
        Err(_) => {
            tracing::debug!(
                "tar cannot hold socket {}",
                String::from_utf8_lossy(&e.path)
            );
            return None;
        }
    };
    if e.kind == EntryKind::Symlink {
        let t = node.target.unwrap_or_default();
        e.link = Some(match filter::rewrite_absolute_symlink(&e.path, &t) {
            Some(r) => r.into(),
            None => t,
        });
    }
    if e.kind != EntryKind::Dir && node.nlink > 1 {
        let key = (node.layer, node.dev, node.ino);
        if let Some(first) = links.0.get(&key) {
            e.kind = EntryKind::HardLink;
            e.link = Some(first.clone());
            e.xattrs.clear();
            return Some(e);
        }
        links.0.insert(key, e.path.clone());
    }
    if e.kind == EntryKind::File && node.size > 0 {
        e.size = node.size;
        e.source = Some(node.layer);
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tar::FilterSet;
    use crate::layers::tar::scan::tests::build;
    use std::fs;

    fn opts() -> PackOptions {
        PackOptions {
            filters: FilterSet::none(),
            source_date_epoch: None,
        }
    }

    /// The archive by `write_to`, checked against `write_to_file` (sendfile).
    fn stream(l: &TarLayout) -> Vec<u8> {
        let mut v = Vec::new();
        let n = l.write_to(&mut v).expect("write_to");
        assert_eq!(n, l.size());
        assert_eq!(v.len() as u64, l.size());
        let mut f = tempfile::tempfile().expect("tempfile");
        assert_eq!(l.write_to_file(&mut f).expect("write_to_file"), l.size());
        let mut back = Vec::new();
        use std::io::Seek;
        f.rewind().expect("rewind");
        f.read_to_end(&mut back).expect("read back");
        assert!(back == v, "write_to_file differs from write_to");
        v
    }

    /// Entries read back with tar-rs: (path, type, size, link target).
    fn listing(bytes: &[u8]) -> Vec<(String, tar::EntryType, u64, Option<String>)> {
        let mut ar = tar::Archive::new(bytes);
        ar.entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    e.header().entry_type(),
                    e.size(),
                    e.link_name_bytes()
                        .map(|l| String::from_utf8_lossy(&l).into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn sizes_and_offsets() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        build(&l0, "d a\nf a/one 1\nf a/empty \nf b 0123456789");
        fs::write(l0.join("big"), vec![7u8; 513]).expect("big");
        let l = TarLayout::flattened(&[l0], &opts()).expect("layout");
        let names: Vec<&[u8]> = l.entries().iter().map(|e| &*e.path).collect();
        assert_eq!(names, [&b"a"[..], b"a/empty", b"a/one", b"b", b"big"]);
        // a/ (512) | a/empty (512) | a/one (512+512) | b (512+512) | big (512+1024) | trailer
        assert_eq!(l.offsets, [0, 512, 1024, 2048, 3072, 4608]);
        assert_eq!(l.size(), 4608 + 1024);
        let bytes = stream(&l);
        let got = listing(&bytes);
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], ("big".into(), tar::EntryType::Regular, 513, None));
        assert_eq!(&bytes[2048 + 512..2048 + 512 + 10], b"0123456789");
        assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
    }

    /// Non-directory entries: (path, type, size, link target).
    fn files(l: &TarLayout) -> Vec<(String, tar::EntryType, u64, Option<String>)> {
        let got = listing(&stream(l));
        got.into_iter()
            .filter(|e| e.1 != tar::EntryType::Directory)
            .collect()
    }

    #[test]
    fn hard_link_groups_and_filtered_first_member() {
        use tar::EntryType::{Link, Regular};
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        build(&l0, "f usr/include/x data\nd usr/sbin");
        fs::hard_link(l0.join("usr/include/x"), l0.join("usr/sbin/y")).expect("link");
        fs::hard_link(l0.join("usr/include/x"), l0.join("usr/zz")).expect("link");
        let s = |x: &str| Some(x.to_owned());

        let l = TarLayout::flattened(std::slice::from_ref(&l0), &opts()).expect("layout");
        assert_eq!(
            files(&l),
            [
                ("usr/include/x".into(), Regular, 4, None),
                ("usr/sbin/y".into(), Link, 0, s("usr/include/x")),
                ("usr/zz".into(), Link, 0, s("usr/include/x")),
            ]
        );

        // The first member is filtered: the next one carries the data (B56).
        let mut o = opts();
        o.filters.set("include", true).expect("include");
        let l = TarLayout::flattened(std::slice::from_ref(&l0), &o).expect("layout");
        assert_eq!(
            files(&l),
            [
                ("usr/sbin/y".into(), Regular, 4, None),
                ("usr/zz".into(), Link, 0, s("usr/sbin/y")),
            ]
        );

        // ... and whited out in an upper layer: the last one does.
        let l1 = t.path().join("l1");
        build(&l1, "w usr/sbin/y");
        let l = TarLayout::flattened(&[l0, l1], &o).expect("layout");
        assert_eq!(files(&l), [("usr/zz".into(), Regular, 4, None)]);
    }

    /// A tiny deterministic PRNG (xorshift64*), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    #[test]
    fn random_reads_equal_stream_slices() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        fs::create_dir_all(l0.join("d")).expect("dir");
        for i in 0..60 {
            let len = match i % 4 {
                0 => 0,
                1 => rng.below(600),
                2 => 512 * (1 + rng.below(3)),
                _ => rng.below(200_000),
            };
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let name = if i % 7 == 0 {
                format!("d/{}-{i}", "long".repeat(40))
            } else {
                format!("d/f{i}")
            };
            fs::write(l0.join(name), data).expect("file");
        }
        std::os::unix::fs::symlink("f1", l0.join("d/link")).expect("symlink");
        let l = TarLayout::flattened(&[l0], &opts()).expect("layout");
        let full = stream(&l);
        assert_eq!(listing(&full).len(), 62);
        let size = l.size();
        let mut buf = vec![0u8; 300_000];
        for _ in 0..2000 {
            let off = rng.below(size + 100);
            let len = match rng.below(3) {
                0 => rng.below(1100),
                1 => rng.below(70_000),
                _ => rng.below(300_000),
            } as usize;
            let n = l.read_at(off, &mut buf[..len]).expect("read_at");
            let want_end = (off as usize + len).min(full.len());
            let want = full.get(off as usize..want_end).unwrap_or(&[]);
            assert_eq!(n, want.len(), "off {off} len {len}");
            assert!(buf[..n] == *want, "bytes differ at off {off} len {len}");
        }
        // Every entry boundary, read across.
        for &o in &l.offsets {
            let off = o.saturating_sub(3);
            let n = l.read_at(off, &mut buf[..1030]).expect("read_at");
            assert_eq!(&buf[..n], &full[off as usize..off as usize + n]);
        }
    }

    #[test]
    fn reproducible_and_clamped() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        build(&l0, "f a 1\nd b\nl c /usr/bin/x");
        let mut o = opts();
        o.source_date_epoch = Some(1000);
        let a = stream(&TarLayout::flattened(std::slice::from_ref(&l0), &o).expect("layout"));
        let b = stream(&TarLayout::flattened(&[l0], &o).expect("layout"));
        assert_eq!(a, b);
        let mut ar = tar::Archive::new(&a[..]);
        for e in ar.entries().expect("entries") {
            let e = e.expect("entry");
            assert_eq!(e.header().mtime().expect("mtime"), 1000);
            if e.header().entry_type() == tar::EntryType::Symlink {
                assert_eq!(&*e.link_name_bytes().expect("target"), b"usr/bin/x");
            }
        }
    }

    #[test]
    fn file_changing_size_keeps_recorded_size() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        build(&l0, "f a 0123456789\nf b xyz");
        fs::write(l0.join("c"), vec![1u8; 100_000]).expect("c");
        let l = TarLayout::flattened(std::slice::from_ref(&l0), &opts()).expect("layout");
        fs::write(l0.join("a"), "01234").expect("shrink");
        fs::write(l0.join("b"), "xyz and more").expect("grow");
        fs::write(l0.join("c"), vec![2u8; 10]).expect("shrink big");
        let bytes = stream(&l);
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut got = Vec::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let mut v = Vec::new();
            e.read_to_end(&mut v).expect("data");
            got.push(v);
        }
        assert_eq!(got[0], b"01234\0\0\0\0\0");
        assert_eq!(got[1], b"xyz");
        assert_eq!(got[2].len(), 100_000);
        assert!(got[2][..10].iter().all(|&b| b == 2) && got[2][10..].iter().all(|&b| b == 0));
        let mut buf = vec![0u8; bytes.len()];
        assert_eq!(l.read_at(0, &mut buf).expect("read_at"), bytes.len());
        assert!(buf == bytes);
    }

    #[test]
    fn save_load_round_trip() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        build(&l0, "f a 1\nd b\nl b/c ../a\nf \u{e9}t\u{e9} x");
        let l = TarLayout::flattened(&[l0], &opts()).expect("layout");
        let idx = t.path().join("index");
        l.save(&idx).expect("save");
        let back = TarLayout::load(&idx).expect("load");
        assert_eq!(back, l);
        assert_eq!(stream(&back), stream(&l));
        let moved = t.path().join("moved");
        fs::rename(&l.layers()[0], &moved).expect("move layer");
        let mut back = back;
        assert!(back.relocate(vec![]).is_err());
        back.relocate(vec![moved]).expect("relocate");
        assert_eq!(
            stream(&back),
            stream(&{
                let mut l = l.clone();
                l.layers = back.layers.clone();
                l
            })
        );
        let mut bytes = fs::read(&idx).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&idx, &bytes).expect("corrupt");
        assert!(matches!(
            TarLayout::load(&idx),
            Err(TarError::IndexFormat { .. })
        ));
    }
}
