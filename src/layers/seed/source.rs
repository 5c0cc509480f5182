//! The reading side of a seed import: a tarball (compression detected from its first
//! bytes) or a directory tree, turned into [`Sink::add`] calls.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::SeedError;
use super::sink::{Kind, Meta, Sink, clean_name};
use super::sparse::{self, Sparse};
use crate::layers::ownership::{Effective, FileKind, OVERRIDE_XATTR};

/// Compression of a tarball, from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Bzip2,
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of a file. `None` is returned for
    /// anything else; the tar reader then judges whether it is a tar at all.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Zstd => "zstd",
        }
    }
}

/// Opens `path` as a possibly compressed stream. Multi-member gzip, multi-stream xz
/// and bzip2 and multi-frame zstd files are read whole, as their CLI tools do.
pub fn open_decompressed(path: &Path) -> Result<(Compression, Box<dyn Read>), SeedError> {
    let src_err = |e: io::Error| SeedError::Source {
        path: path.to_path_buf(),
        source: e,
    };
    let file = File::open(path).map_err(src_err)?;
    let mut buf = BufReader::with_capacity(256 * 1024, file);
    let head = buf.fill_buf().map_err(src_err)?;
    let comp = Compression::detect(head);
    let reader: Box<dyn Read> = match comp {
        Compression::None => Box::new(buf),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(buf)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buf)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(src_err)?)
        }
    };
    Ok((comp, reader))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses a pax time (`1700000000.123456789`, possibly negative) into seconds and
/// nanoseconds.
pub fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (s, frac) = match v.split_once('.') {
        Some((s, f)) => (s, f),
        None => (v, ""),
    };
    let secs: i64 = s.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let ns: u32 = digits.parse().ok()?;
    if s.starts_with('-') && ns > 0 {
        // -1.5 means 1.5 s before the epoch: (-2 s) + 0.5 s.
        Some((secs - 1, 1_000_000_000 - ns))
    } else {
        Some((secs, ns))
    }
}

/// Extracts every member of a tar stream into `sink`.
pub fn read_tar(reader: &mut dyn Read, sink: &mut Sink<'_>) -> Result<(), SeedError> {
    let mut ar = tar::Archive::new(reader);
    let mut last = String::from("(start of archive)");
    let arch_err = |after: &str| {
        let after = after.to_string();
        move |e: io::Error| SeedError::Archive { after, source: e }
    };
    let entries = ar.entries().map_err(arch_err(&last))?;
    for entry in entries {
        let mut e = entry.map_err(arch_err(&last))?;
        let et = e.header().entry_type();
        if et.is_pax_global_extensions() || et.is_pax_local_extensions() {
            continue;
        }
        // The member's PAX records (its real name and map when it is sparse).
        let mut records = Vec::new();
        if let Some(exts) = e.pax_extensions().map_err(arch_err(&last))? {
            for ext in exts {
                let ext = ext.map_err(arch_err(&last))?;
                records.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
            }
        }
        let header_name = e.path_bytes().into_owned();
        let sparse = sparse::from_pax(&records).map_err(|reason| SeedError::Unsupported {
            entry: lossy(&header_name),
            reason,
        })?;
        let raw = match &sparse {
            Some(Sparse::InData { name, .. })
            | Some(Sparse::InHeader {
                name: Some(name), ..
            }) => name.clone(),
            _ => header_name,
        };
        let name = lossy(&raw);
        last = name.clone();
        let rel = clean_name(&raw).map_err(|reason| SeedError::Hostile {
            entry: name.clone(),
            reason: reason.into(),
        })?;
        let hdr = e.header();
        let field = |r: io::Result<u64>| r.map_err(arch_err(&name));
        let mut meta = Meta {
            uid: field(hdr.uid())? as u32,
            gid: field(hdr.gid())? as u32,
            mode: hdr.mode().map_err(arch_err(&name))? & 0o7777,
            mtime: (field(hdr.mtime())? as i64, 0),
            xattrs: Vec::new(),
        };
        let dev = |r: io::Result<Option<u32>>| r.map(|o| o.unwrap_or(0)).map_err(arch_err(&name));
        let kind = match et {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Kind::File
            }
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                Kind::Symlink(PathBuf::from(std::ffi::OsStr::from_bytes(&target)))
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let clean = clean_name(&target).map_err(|reason| SeedError::Hostile {
                    entry: name.clone(),
                    reason: format!("hard link target {:?}: {reason}", lossy(&target)),
                })?;
                if clean.as_os_str().is_empty() {
                    return Err(SeedError::Hostile {
                        entry: name.clone(),
                        reason: "hard link to the archive root".into(),
                    });
                }
                Kind::HardLink(clean)
            }
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Char => Kind::Char {
                major: dev(hdr.device_major())?,
                minor: dev(hdr.device_minor())?,
            },
            tar::EntryType::Block => Kind::Block {
                major: dev(hdr.device_major())?,
                minor: dev(hdr.device_minor())?,
            },
            other => {
                tracing::warn!("skipping {name}: unsupported tar entry type {other:?}");
                sink.stats.skipped += 1;
                continue;
            }
        };
        for (key, value) in &records {
            if key == b"mtime" {
                if let Some(t) = std::str::from_utf8(value).ok().and_then(parse_pax_time) {
                    meta.mtime = t;
                }
            } else if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs
                    .push((std::ffi::OsStr::from_bytes(x).to_os_string(), value.clone()));
            }
        }
        let refuse = |reason| SeedError::Unsupported {
            entry: name.clone(),
            reason,
        };
        let size = e.size();
        let mut expanded;
        let data: Option<&mut dyn Read> = match sparse {
            _ if kind != Kind::File => {
                if sparse.is_some() {
                    return Err(refuse(
                        "GNU sparse records on a member that is not a file".into(),
                    ));
                }
                None
            }
            None => Some(&mut e),
            Some(Sparse::InHeader { map, .. }) => {
                map.check(size).map_err(refuse)?;
                expanded = sparse::Expand::new(&mut e as &mut dyn Read, map);
                Some(&mut expanded)
            }
            Some(Sparse::InData { real_size, .. }) => {
                let (map, _) = sparse::read_map_1_0(&mut e, size, real_size).map_err(refuse)?;
                expanded = sparse::Expand::new(&mut e as &mut dyn Read, map);
                Some(&mut expanded)
            }
        };
        sink.add(&rel, &name, kind, meta, data)?;
    }
    Ok(())
}

/// Copies the directory tree `src` into `sink`: symlinks as symlinks, hard links as
/// links, owners from the source (its override xattrs honoured, so an imported seed
/// can be imported again), `security.capability` and `user.*` xattrs.
pub fn read_dir_tree(src: &Path, sink: &mut Sink<'_>) -> Result<(), SeedError> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = if rel.as_os_str().is_empty() {
            src.to_path_buf()
        } else {
            src.join(&rel)
        };
        let src_err = |e: io::Error| SeedError::Source {
            path: abs.clone(),
            source: e,
        };
        // The source root may be a symlink the user named; below it nothing is followed.
        let (md, eff) = if rel.as_os_str().is_empty() {
            let md = std::fs::metadata(&abs).map_err(src_err)?;
            let ov = crate::layers::ownership::OverrideStat::read(&abs).map_err(src_err)?;
            (md.clone(), Effective::new(&md, ov.as_ref()))
        } else {
            Effective::of_path(&abs).map_err(src_err)?
        };
        let name = if rel.as_os_str().is_empty() {
            "./".to_string()
        } else {
            rel.to_string_lossy().into_owned()
        };
        let mut meta = Meta {
            uid: eff.uid,
            gid: eff.gid,
            mode: eff.perm,
            mtime: (md.mtime(), md.mtime_nsec() as u32),
            xattrs: Vec::new(),
        };
        let on_disk_symlink = md.file_type().is_symlink();
        if !on_disk_symlink {
            for k in xattr::list(&abs).map_err(src_err)? {
                if k.as_bytes() == OVERRIDE_XATTR.as_bytes() {
                    continue;
                }
                if let Some(v) = xattr::get(&abs, &k).map_err(src_err)? {
                    meta.xattrs.push((k, v));
                }
            }
        }
        let mut file = None;
        let kind = match eff.kind {
            FileKind::Dir => {
                let mut children: Vec<OsString> = std::fs::read_dir(&abs)
                    .map_err(src_err)?
                    .map(|d| d.map(|d| d.file_name()))
                    .collect::<Result<_, _>>()
                    .map_err(src_err)?;
                // Popped from the end: reverse order keeps the walk in name order.
                children.sort_unstable_by(|a, b| b.cmp(a));
                stack.extend(children.into_iter().map(|c| rel.join(c)));
                Some(Kind::Dir)
            }
            _ if md.nlink() > 1 && !md.is_dir() => match links.get(&(md.dev(), md.ino())) {
                Some(first) => Some(Kind::HardLink(first.clone())),
                None => {
                    links.insert((md.dev(), md.ino()), rel.clone());
                    plain_kind(eff.kind, &abs, &mut file, &name, sink)?
                }
            },
            k => plain_kind(k, &abs, &mut file, &name, sink)?,
        };
        let Some(kind) = kind else {
            continue;
        };
        let data = file.as_mut().map(|f: &mut File| f as &mut dyn Read);
        sink.add(&rel, &name, kind, meta, data)?;
    }
    Ok(())
}

/// The kind of a non-directory; `None` means "skip it" (sockets, with a warning).
fn plain_kind(
    k: FileKind,
    abs: &Path,
    file: &mut Option<File>,
    name: &str,
    sink: &mut Sink<'_>,
) -> Result<Option<Kind>, SeedError> {
    Ok(Some(match k {
        FileKind::File => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(abs)
                .map_err(|e| SeedError::Source {
                    path: abs.to_path_buf(),
                    source: e,
                })?;
            *file = Some(f);
            Kind::File
        }
        FileKind::Dir => Kind::Dir,
        FileKind::Symlink => {
            let t = std::fs::read_link(abs).map_err(|e| SeedError::Source {
                path: abs.to_path_buf(),
                source: e,
            })?;
            Kind::Symlink(t)
        }
        FileKind::Pipe => Kind::Fifo,
        FileKind::Char { major, minor } => Kind::Char { major, minor },
        FileKind::Block { major, minor } => Kind::Block { major, minor },
        FileKind::Socket => {
            tracing::warn!("skipping socket {name}: sockets cannot be copied");
            sink.stats.skipped += 1;
            return Ok(None);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_table() {
        let cases: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b, 8, 0], Compression::Gzip),
            (b"\xfd7zXZ\0\0\x04", Compression::Xz),
            (b"BZh91AY&SY", Compression::Bzip2),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0x24], Compression::Zstd),
            (b"usr/\0\0\0\0", Compression::None),
            (b"", Compression::None),
            (b"\xfd7zX", Compression::None),
        ];
        for (head, want) in cases {
            assert_eq!(Compression::detect(head), *want, "{head:?}");
        }
    }

    #[test]
    fn pax_time_table() {
        let cases: &[(&str, Option<(i64, u32)>)] = &[
            ("1700000000", Some((1700000000, 0))),
            ("1700000000.5", Some((1700000000, 500_000_000))),
            ("1700000000.123456789123", Some((1700000000, 123_456_789))),
            ("-1.5", Some((-2, 500_000_000))),
            ("x", None),
            ("1.x", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_pax_time(s), *want, "{s}");
        }
    }
}
