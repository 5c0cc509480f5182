//! GNU sparse members of a tar stream, in the PAX formats GNU tar writes
//! (`--sparse --format=posix`, `--sparse-version` 0.0, 0.1 and 1.0).
//!
//! Such a member is a regular file (type `0`) whose data holds only the non-hole
//! segments of the file; the PAX header says where they go:
//!
//! | version | real name           | real size             | map                                      |
//! |---------|---------------------|-----------------------|------------------------------------------|
//! | 0.0     | the header's        | `GNU.sparse.size`     | `GNU.sparse.offset`/`numbytes` pairs     |
//! | 0.1     | `GNU.sparse.name`   | `GNU.sparse.size`     | `GNU.sparse.map` = `off,len,off,len,...` |
//! | 1.0     | `GNU.sparse.name`   | `GNU.sparse.realsize` | decimal lines at the start of the data (count, then off/len), padded to 512 bytes |
//!
//! (GNU tar's old `S` member type is expanded by the `tar` crate itself.) A map is
//! checked before any byte is written: segments in order, not overlapping, inside the
//! real size, and exactly as long as the data; anything else refuses the member by
//! name. [`Expand`] turns the data into the whole file, holes as zeros.

use std::io::{self, Read};

/// Segments (offset, length) of a sparse file and its real size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    pub segments: Vec<(u64, u64)>,
    pub real_size: u64,
}

/// What a member's PAX records say about sparseness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sparse {
    /// Version 0.0 or 0.1: the map is in the records.
    InHeader {
        name: Option<Vec<u8>>,
        map: SparseMap,
    },
    /// Version 1.0: the map starts the data ([`read_map_1_0`]).
    InData { name: Vec<u8>, real_size: u64 },
}

/// Most segments a map may have (GNU tar writes one per data run; a map this long is
/// megabytes of text).
const MAX_SEGMENTS: u64 = 1 << 20;

fn num(key: &str, v: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "GNU sparse record {key} is not a number: {:?}",
                String::from_utf8_lossy(v)
            )
        })
}

/// The sparse layout declared by a member's PAX records (`None`: not sparse).
pub fn from_pax(records: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<Sparse>, String> {
    let get = |k: &str| {
        records
            .iter()
            .rev()
            .find(|(rk, _)| rk == k.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    if !records.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
        return Ok(None);
    }
    let major = get("GNU.sparse.major")
        .map(|v| num("GNU.sparse.major", v))
        .transpose()?;
    let minor = get("GNU.sparse.minor")
        .map(|v| num("GNU.sparse.minor", v))
        .transpose()?;
    let name = get("GNU.sparse.name").map(<[u8]>::to_vec);
    match (major, minor) {
        (Some(1), Some(0)) => {
            let name = name.ok_or("GNU sparse 1.0 member without GNU.sparse.name")?;
            let real_size = num(
                "GNU.sparse.realsize",
                get("GNU.sparse.realsize")
                    .ok_or("GNU sparse 1.0 member without GNU.sparse.realsize")?,
            )?;
            Ok(Some(Sparse::InData { name, real_size }))
        }
        (None, None) => {
            let real_size = num(
                "GNU.sparse.size",
                get("GNU.sparse.size").ok_or("GNU sparse member without GNU.sparse.size")?,
            )?;
            let mut segments = Vec::new();
            if let Some(map) = get("GNU.sparse.map") {
                // 0.1: one record.
                let text = std::str::from_utf8(map).map_err(|_| "GNU.sparse.map is not text")?;
                let nums: Vec<u64> = text
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| num("GNU.sparse.map", s.as_bytes()))
                    .collect::<Result<_, _>>()?;
                if !nums.len().is_multiple_of(2) {
                    return Err("GNU.sparse.map has an odd number of values".into());
                }
                segments.extend(nums.chunks(2).map(|p| (p[0], p[1])));
            } else {
                // 0.0: offset/numbytes records in order.
                let mut offset = None;
                for (k, v) in records {
                    if k == b"GNU.sparse.offset" {
                        offset = Some(num("GNU.sparse.offset", v)?);
                    } else if k == b"GNU.sparse.numbytes" {
                        let off = offset
                            .take()
                            .ok_or("GNU.sparse.numbytes without an offset")?;
                        segments.push((off, num("GNU.sparse.numbytes", v)?));
                    }
                }
            }
            Ok(Some(Sparse::InHeader {
                name,
                map: SparseMap {
                    segments,
                    real_size,
                },
            }))
        }
        (major, minor) => Err(format!(
            "unsupported GNU sparse format {}.{}: re-create the archive with GNU tar \
             --sparse-version=1.0, or without --sparse",
            major.map_or("?".into(), |m| m.to_string()),
            minor.map_or("?".into(), |m| m.to_string()),
        )),
    }
}

impl SparseMap {
    /// Checks the map against `data_len`, the bytes of segment data that follow.
    pub fn check(&self, data_len: u64) -> Result<(), String> {
        if self.segments.len() as u64 > MAX_SEGMENTS {
            return Err(format!(
                "GNU sparse map of {} segments",
                self.segments.len()
            ));
        }
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &self.segments {
            let seg_end = off.checked_add(len).ok_or("GNU sparse segment past 2^64")?;
            if off < end {
                return Err(format!("GNU sparse segment at {off} overlaps or goes back"));
            }
            if seg_end > self.real_size {
                return Err(format!(
                    "GNU sparse segment {off}+{len} ends past the real size {}",
                    self.real_size
                ));
            }
            end = seg_end;
            total += len;
        }
        if total != data_len {
            return Err(format!(
                "GNU sparse map covers {total} bytes but the member has {data_len}"
            ));
        }
        Ok(())
    }
}

/// Reads a 1.0 map from the start of a member's data (`data_len` bytes in all):
/// decimal lines, the count then offset/length pairs, padded with NULs to 512 bytes.
/// Returns the map and how many bytes it took.
pub fn read_map_1_0(
    data: &mut dyn Read,
    data_len: u64,
    real_size: u64,
) -> Result<(SparseMap, u64), String> {
    let mut used = 0u64;
    let mut line = || -> Result<u64, String> {
        let mut digits = Vec::new();
        loop {
            let mut b = [0u8];
            data.read_exact(&mut b)
                .map_err(|e| format!("GNU sparse 1.0 map cut short: {e}"))?;
            used += 1;
            match b[0] {
                b'\n' => break,
                d @ b'0'..=b'9' if digits.len() < 20 => digits.push(d),
                _ => return Err("GNU sparse 1.0 map is not decimal lines".into()),
            }
        }
        num("GNU sparse 1.0 map", &digits)
    };
    let count = line()?;
    if count > MAX_SEGMENTS {
        return Err(format!("GNU sparse map of {count} segments"));
    }
    let mut segments = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let off = line()?;
        let len = line()?;
        segments.push((off, len));
    }
    let pad = used.next_multiple_of(512) - used;
    io::copy(&mut data.take(pad), &mut io::sink())
        .map_err(|e| format!("GNU sparse 1.0 map cut short: {e}"))?;
    let used = used + pad;
    let map = SparseMap {
        segments,
        real_size,
    };
    map.check(
        data_len
            .checked_sub(used)
            .ok_or("GNU sparse 1.0 map longer than the member")?,
    )?;
    Ok((map, used))
}

/// The whole file from a checked map and its segment data: holes read as zeros.
#[derive(Debug)]
pub struct Expand<R> {
    data: R,
    map: SparseMap,
    /// Next segment and the position in the whole file.
    next: usize,
    pos: u64,
}

impl<R: Read> Expand<R> {
    pub fn new(data: R, map: SparseMap) -> Self {
        Expand {
            data,
            map,
            next: 0,
            pos: 0,
        }
    }
}

impl<R: Read> Read for Expand<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(off, len)) = self.map.segments.get(self.next) {
            if self.pos >= off + len {
                self.next += 1;
                continue;
            }
            if self.pos < off {
                break;
            }
            let want = (off + len - self.pos).min(buf.len() as u64) as usize;
            let n = self.data.read(&mut buf[..want])?;
            if n == 0 && want > 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.pos += n as u64;
            return Ok(n);
        }
        // A hole: up to the next segment or the end.
        let until = self
            .map
            .segments
            .get(self.next)
            .map_or(self.map.real_size, |&(off, _)| off);
        let n = (until - self.pos).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn each_version_parses() {
        assert_eq!(from_pax(&rec(&[("mtime", "1")])).unwrap(), None);
        let want = SparseMap {
            segments: vec![(0, 2), (10, 3)],
            real_size: 20,
        };
        let v00 = rec(&[
            ("GNU.sparse.size", "20"),
            ("GNU.sparse.offset", "0"),
            ("GNU.sparse.numbytes", "2"),
            ("GNU.sparse.offset", "10"),
            ("GNU.sparse.numbytes", "3"),
        ]);
        assert_eq!(
            from_pax(&v00).unwrap(),
            Some(Sparse::InHeader {
                name: None,
                map: want.clone()
            })
        );
        let v01 = rec(&[
            ("GNU.sparse.size", "20"),
            ("GNU.sparse.name", "etc/f"),
            ("GNU.sparse.map", "0,2,10,3"),
        ]);
        assert_eq!(
            from_pax(&v01).unwrap(),
            Some(Sparse::InHeader {
                name: Some(b"etc/f".to_vec()),
                map: want
            })
        );
        let v10 = rec(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "etc/f"),
            ("GNU.sparse.realsize", "20"),
        ]);
        assert_eq!(
            from_pax(&v10).unwrap(),
            Some(Sparse::InData {
                name: b"etc/f".to_vec(),
                real_size: 20
            })
        );
        let v20 = rec(&[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")]);
        assert!(
            from_pax(&v20)
                .unwrap_err()
                .contains("unsupported GNU sparse format 2.0")
        );
        let odd = rec(&[("GNU.sparse.size", "20"), ("GNU.sparse.map", "0,2,10")]);
        assert!(from_pax(&odd).is_err());
    }

    #[test]
    fn bad_maps_are_refused() {
        let m = |segments: Vec<(u64, u64)>, real_size| SparseMap {
            segments,
            real_size,
        };
        assert!(m(vec![(0, 2), (10, 3)], 20).check(5).is_ok());
        assert!(
            m(vec![(0, 2), (10, 3)], 20)
                .check(6)
                .unwrap_err()
                .contains("covers 5")
        );
        assert!(
            m(vec![(10, 3), (0, 2)], 20)
                .check(5)
                .unwrap_err()
                .contains("goes back")
        );
        assert!(
            m(vec![(0, 5), (3, 3)], 20)
                .check(8)
                .unwrap_err()
                .contains("overlaps")
        );
        assert!(
            m(vec![(18, 3)], 20)
                .check(3)
                .unwrap_err()
                .contains("past the real size")
        );
        assert!(m(vec![(u64::MAX, 3)], u64::MAX).check(3).is_err());
    }

    #[test]
    fn map_1_0_and_expansion() {
        let mut member = b"2\n0\n2\n10\n3\n".to_vec();
        member.resize(512, 0);
        member.extend_from_slice(b"abXYZ");
        let len = member.len() as u64;
        let mut r = &member[..];
        let (map, used) = read_map_1_0(&mut r, len, 15).unwrap();
        assert_eq!(
            (map.segments.as_slice(), used),
            (&[(0, 2), (10, 3)][..], 512)
        );
        let mut out = Vec::new();
        Expand::new(r, map).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab\0\0\0\0\0\0\0\0XYZ\0\0");
        // Cut short, or a map longer than the member.
        let mut r = &b"2\n0\n2\n"[..];
        assert!(
            read_map_1_0(&mut r, 6, 15)
                .unwrap_err()
                .contains("cut short")
        );
        let mut r = &member[..];
        assert!(
            read_map_1_0(&mut r, 100, 15)
                .unwrap_err()
                .contains("longer than")
        );
        let mut r = &b"x\n"[..];
        assert!(read_map_1_0(&mut r, 512, 15).is_err());
    }

    #[test]
    fn expansion_fails_on_missing_data() {
        let map = SparseMap {
            segments: vec![(4, 4)],
            real_size: 8,
        };
        let mut out = Vec::new();
        let e = Expand::new(&b"ab"[..], map)
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
