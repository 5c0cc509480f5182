//! The persisted entry index: a compact little-endian binary file, so a finished
//! image reopens without a tree walk (paths are raw bytes, which JSON would bloat).
//!
//! ```text
//! magic "GTTARIX1"
//! u32 layer count, then per layer: bytes (absolute layer path)
//! u64 entry count, then per entry:
//!   bytes path; u8 kind (0 file, 1 hardlink, 2 symlink, 3 dir, 4 fifo, 5 char, 6 block);
//!   u32 major; u32 minor; u32 perm; u32 uid; u32 gid; i64 mtime; u64 size;
//!   u8 has_link [bytes link]; u8 has_source [u16 source];
//!   u32 xattr count, then per xattr: bytes name; bytes value
//! u64 total archive size
//! u64 FNV-1a 64 of everything above
//! bytes = u32 length + the bytes
//! ```
//! Header lengths and offsets are recomputed on load (cheap, no I/O) and the total
//! size is checked against the recorded one.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{EntryKind, TarEntry, TarError, TarLayout};

const MAGIC: &[u8; 8] = b"GTTARIX1";

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn bytes(&mut self) -> Result<Box<[u8]>, String> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.into())
    }
}

pub(super) fn save(l: &TarLayout, path: &Path) -> Result<(), TarError> {
    let mut e = Enc(Vec::with_capacity(64 * l.entries.len() + 64));
    e.0.extend_from_slice(MAGIC);
    e.u32(l.layers.len() as u32);
    for layer in &l.layers {
        e.bytes(layer.as_os_str().as_bytes());
    }
    e.u64(l.entries.len() as u64);
    for t in &l.entries {
        e.bytes(&t.path);
        let (kind, major, minor) = match t.kind {
            EntryKind::File => (0, 0, 0),
            EntryKind::HardLink => (1, 0, 0),
            EntryKind::Symlink => (2, 0, 0),
            EntryKind::Dir => (3, 0, 0),
            EntryKind::Fifo => (4, 0, 0),
            EntryKind::Char { major, minor } => (5, major, minor),
            EntryKind::Block { major, minor } => (6, major, minor),
        };
        e.u8(kind);
        for v in [major, minor, t.perm, t.uid, t.gid] {
            e.u32(v);
        }
        e.u64(t.mtime as u64);
        e.u64(t.size);
        match &t.link {
            Some(link) => {
                e.u8(1);
                e.bytes(link);
            }
            None => e.u8(0),
        }
        match t.source {
            Some(s) => {
                e.u8(1);
                e.u16(s);
            }
            None => e.u8(0),
        }
        e.u32(t.xattrs.len() as u32);
        for (k, v) in &t.xattrs {
            e.bytes(k);
            e.bytes(v);
        }
    }
    e.u64(l.size());
    let sum = fnv1a(&e.0);
    e.u64(sum);

    let io = |source| TarError::IndexIo {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(&e.0).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

pub(super) fn load(path: &Path) -> Result<(Vec<PathBuf>, Vec<TarEntry>, u64), TarError> {
    let buf = fs::read(path).map_err(|source| TarError::IndexIo {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&buf).map_err(|what| TarError::IndexFormat {
        path: path.to_path_buf(),
        what,
    })
}

fn decode(buf: &[u8]) -> Result<(Vec<PathBuf>, Vec<TarEntry>, u64), String> {
    if buf.len() < MAGIC.len() + 16 || &buf[..8] != MAGIC {
        return Err("bad magic".into());
    }
    let (body, sum) = buf.split_at(buf.len() - 8);
    let mut s = [0u8; 8];
    s.copy_from_slice(sum);
    if fnv1a(body) != u64::from_le_bytes(s) {
        return Err("checksum mismatch".into());
    }
    let mut d = Dec { buf: body, pos: 8 };
    let n_layers = d.u32()?;
    let layers = (0..n_layers)
        .map(|_| Ok(PathBuf::from(OsStr::from_bytes(&d.bytes()?))))
        .collect::<Result<Vec<_>, String>>()?;
    let n = d.u64()?;
    let mut entries = Vec::with_capacity(n.min(1 << 24) as usize);
    for _ in 0..n {
        let path = d.bytes()?;
        let kind_tag = d.u8()?;
        let (major, minor) = (d.u32()?, d.u32()?);
        let kind = match kind_tag {
            0 => EntryKind::File,
            1 => EntryKind::HardLink,
            2 => EntryKind::Symlink,
            3 => EntryKind::Dir,
            4 => EntryKind::Fifo,
            5 => EntryKind::Char { major, minor },
            6 => EntryKind::Block { major, minor },
            k => return Err(format!("unknown entry kind {k}")),
        };
        let (perm, uid, gid) = (d.u32()?, d.u32()?, d.u32()?);
        let mtime = d.u64()? as i64;
        let size = d.u64()?;
        let link = if d.u8()? == 1 { Some(d.bytes()?) } else { None };
        let source = if d.u8()? == 1 { Some(d.u16()?) } else { None };
        if source.is_some_and(|s| usize::from(s) >= layers.len()) {
            return Err("entry source names a missing layer".into());
        }
        let nx = d.u32()?;
        let xattrs = (0..nx)
            .map(|_| Ok((d.bytes()?, d.bytes()?)))
            .collect::<Result<Vec<_>, String>>()?;
        entries.push(TarEntry {
            path,
            kind,
            perm,
            uid,
            gid,
            mtime,
            size,
            link,
            xattrs,
            source,
        });
    }
    let size = d.u64()?;
    if d.pos != body.len() {
        return Err("trailing bytes".into());
    }
    Ok((layers, entries, size))
}
