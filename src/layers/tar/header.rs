//! Header bytes of one entry: a ustar header, preceded by a pax extended header
//! when ustar falls short.
//!
//! pax records are written, in this fixed order, only when needed: `hdrcharset=BINARY`
//! (a pax path or link path that is not UTF-8; without it bsdtar exits with an
//! error, with it GNU tar 1.34 warns "unknown keyword" and reads the bytes), `path` (name over
//! 100 bytes that cannot be split into ustar prefix/name), `linkpath` (over 100
//! bytes), `size` (8 GiB or more), `uid`/`gid` (over 2097151), `mtime` (beyond the
//! 11-digit octal field), then `SCHILY.xattr.<name>` sorted by name. The ustar field
//! of a value moved to pax holds a truncated name or 0. Owners are numeric (uname
//! and gname empty); there is no atime or ctime. The pax header is named
//! `PaxHeaders/<base name>` (truncated to 100 bytes), owner 0, mode 0644, with the
//! entry's mtime, so it is as reproducible as the entry itself.

use super::{EntryKind, TarEntry};

pub const BLOCK: u64 = 512;

const MAX_OCTAL_7: u64 = 0o7777777; // 8-byte fields: uid, gid, mode
const MAX_OCTAL_11: u64 = 0o77777777777; // 12-byte fields: size, mtime

/// Rounds up to a whole number of 512-byte blocks.
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Appends the header bytes of `e` (a multiple of 512) to `out`.
pub fn encode(e: &TarEntry, out: &mut Vec<u8>) {
    let mut name = e.path.to_vec();
    if e.kind == EntryKind::Dir {
        name.push(b'/');
    }
    let mut pax = Vec::new();
    let split = split_name(&name);
    let link = e.link.as_deref().unwrap_or(b"");
    let long_link = link.len() > 100;
    // pax values are UTF-8 unless declared binary (POSIX `hdrcharset`).
    let binary = (split.is_none() && std::str::from_utf8(&name).is_err())
        || (long_link && std::str::from_utf8(link).is_err());
    if binary {
        pax_record(&mut pax, b"hdrcharset", b"BINARY");
    }
    let (prefix, short) = match split {
        Some(split) => split,
        None => {
            pax_record(&mut pax, b"path", &name);
            (&[][..], &name[..name.len().min(100)])
        }
    };
    if long_link {
        pax_record(&mut pax, b"linkpath", link);
    }
    let size = if e.kind == EntryKind::File { e.size } else { 0 };
    if size > MAX_OCTAL_11 {
        pax_record(&mut pax, b"size", size.to_string().as_bytes());
    }
    for (key, v) in [(&b"uid"[..], e.uid), (b"gid", e.gid)] {
        if u64::from(v) > MAX_OCTAL_7 {
            pax_record(&mut pax, key, v.to_string().as_bytes());
        }
    }
    let mtime = e.mtime.max(0) as u64;
    if mtime > MAX_OCTAL_11 {
        pax_record(&mut pax, b"mtime", mtime.to_string().as_bytes());
    }
    for (k, v) in &e.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        pax_record(&mut pax, &key, v);
    }

    if !pax.is_empty() {
        let base = name
            .rsplit(|&b| b == b'/')
            .find(|c| !c.is_empty())
            .unwrap_or(b"");
        let mut pname = b"PaxHeaders/".to_vec();
        pname.extend_from_slice(base);
        pname.truncate(100);
        let h = ustar(UstarFields {
            prefix: b"",
            name: &pname,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: pax.len() as u64,
            mtime,
            typeflag: b'x',
            link: b"",
            dev: (0, 0),
        });
        out.extend_from_slice(&h);
        out.extend_from_slice(&pax);
        out.resize(
            out.len() + (padded(pax.len() as u64) as usize - pax.len()),
            0,
        );
    }

    let (typeflag, dev) = match e.kind {
        EntryKind::File => (b'0', (0, 0)),
        EntryKind::HardLink => (b'1', (0, 0)),
        EntryKind::Symlink => (b'2', (0, 0)),
        EntryKind::Char { major, minor } => (b'3', (major, minor)),
        EntryKind::Block { major, minor } => (b'4', (major, minor)),
        EntryKind::Dir => (b'5', (0, 0)),
        EntryKind::Fifo => (b'6', (0, 0)),
    };
    let h = ustar(UstarFields {
        prefix,
        name: short,
        mode: e.perm & 0o7777,
        uid: e.uid,
        gid: e.gid,
        size,
        mtime,
        typeflag,
        link: &link[..link.len().min(100)],
        dev,
    });
    out.extend_from_slice(&h);
}

/// The header length of `e` without keeping the bytes.
pub fn len(e: &TarEntry) -> u64 {
    let mut v = Vec::with_capacity(1024);
    encode(e, &mut v);
    v.len() as u64
}

/// Splits a name into ustar (prefix, name) at a `/`: name at most 100 bytes, prefix
/// at most 155, name not empty. `None` when impossible.
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((b"", name));
    }
    // The shortest prefix whose remainder fits; a longer prefix only grows.
    let i = name
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(|(i, _)| i)
        .find(|&i| name.len() - i - 1 <= 100)?;
    let (prefix, rest) = (&name[..i], &name[i + 1..]);
    (prefix.len() <= 155 && !rest.is_empty() && rest != b"/").then_some((prefix, rest))
}

/// Appends `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut n = body + 1;
    loop {
        let total = body + n.to_string().len();
        if total == n {
            break;
        }
        n = total;
    }
    out.extend_from_slice(n.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

struct UstarFields<'a> {
    prefix: &'a [u8],
    name: &'a [u8],
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    dev: (u32, u32),
}

fn ustar(f: UstarFields<'_>) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..f.name.len()].copy_from_slice(f.name);
    octal(&mut h[100..108], u64::from(f.mode));
    octal(&mut h[108..116], capped(u64::from(f.uid), MAX_OCTAL_7));
    octal(&mut h[116..124], capped(u64::from(f.gid), MAX_OCTAL_7));
    octal(&mut h[124..136], capped(f.size, MAX_OCTAL_11));
    octal(&mut h[136..148], capped(f.mtime, MAX_OCTAL_11));
    h[156] = f.typeflag;
    h[157..157 + f.link.len()].copy_from_slice(f.link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if matches!(f.typeflag, b'3' | b'4') {
        octal(&mut h[329..337], capped(u64::from(f.dev.0), MAX_OCTAL_7));
        octal(&mut h[337..345], capped(u64::from(f.dev.1), MAX_OCTAL_7));
    }
    h[345..345 + f.prefix.len()].copy_from_slice(f.prefix);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h
}

/// A value that does not fit is carried by pax; its ustar field holds 0.
fn capped(v: u64, max: u64) -> u64 {
    if v > max { 0 } else { v }
}

/// Zero-padded octal digits filling all but the last byte, which is NUL.
/// Callers cap `v` to the field's width first.
fn octal(field: &mut [u8], mut v: u64) {
    let digits = field.len() - 1;
    for b in field[..digits].iter_mut().rev() {
        *b = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> TarEntry {
        TarEntry {
            path: path.as_bytes().into(),
            kind: EntryKind::File,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            mtime: 1_700_000_000,
            size: 5,
            link: None,
            xattrs: vec![],
            source: Some(0),
        }
    }

    /// Parses `bytes` (headers followed by `e.size` data and padding) with tar-rs.
    type ReadBack = (
        Vec<u8>,
        tar::EntryType,
        Vec<(String, Vec<u8>)>,
        tar::Header,
        Option<Vec<u8>>,
    );

    fn read_back(e: &TarEntry) -> ReadBack {
        let mut bytes = Vec::new();
        encode(e, &mut bytes);
        assert_eq!(bytes.len() % 512, 0);
        let data = if e.kind == EntryKind::File { e.size } else { 0 };
        bytes.resize(bytes.len() + padded(data) as usize + 1024, 0);
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut entries = ar.entries().expect("entries");
        let mut ent = entries.next().expect("one entry").expect("valid entry");
        let path = ent.path_bytes().into_owned();
        let ty = ent.header().entry_type();
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = ent.pax_extensions() {
            for x in exts {
                let x = x.expect("pax record");
                if let Some(k) = x.key().expect("utf8 key").strip_prefix("SCHILY.xattr.") {
                    xattrs.push((k.to_owned(), x.value_bytes().to_vec()));
                }
            }
        }
        assert_eq!(ent.size(), data);
        let link = ent.link_name_bytes().map(|c| c.into_owned());
        let _ = &mut ent;
        (path, ty, xattrs, ent.header().clone(), link)
    }

    #[test]
    fn short_ustar_without_pax() {
        let e = file("usr/bin/su");
        let mut v = Vec::new();
        encode(&e, &mut v);
        assert_eq!(v.len(), 512, "no pax header for a plain entry");
        let (path, ty, _, h, _) = read_back(&e);
        assert_eq!(path, b"usr/bin/su");
        assert_eq!(ty, tar::EntryType::Regular);
        assert_eq!(h.mode().expect("mode"), 0o4755);
        assert_eq!((h.uid().expect("uid"), h.gid().expect("gid")), (1000, 100));
        assert_eq!(h.mtime().expect("mtime"), 1_700_000_000);
        assert_eq!(&v[257..263], b"ustar\0");
        // An independent checksum: sum of bytes with the field as spaces.
        let mut c = v.clone();
        c[148..156].fill(b' ');
        let sum: u32 = c.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(&v[148..156], format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn pax_cases() {
        let long_dir = "d".repeat(120);
        let splittable = format!("{long_dir}/{}", "f".repeat(90));
        let unsplittable = format!("a/{}", "f".repeat(120));
        // (entry, header blocks expected, path read back)
        let mut cases: Vec<(TarEntry, usize)> = vec![
            (file(&"x".repeat(100)), 1),
            (file(&splittable), 1),
            (file(&unsplittable), 3),
        ];
        let mut big = file("big");
        big.size = 8 << 30;
        cases.push((big, 3));
        let mut ids = file("ids");
        ids.uid = 2_097_152;
        ids.gid = 4_000_000_000;
        cases.push((ids, 3));
        let mut edge = file("edge");
        edge.uid = 2_097_151;
        edge.size = (8 << 30) - 1;
        cases.push((edge, 1));
        let mut link = file("l");
        link.kind = EntryKind::Symlink;
        link.size = 0;
        link.link = Some("t".repeat(150).into_bytes().into());
        cases.push((link, 3));
        let mut dir = file(&format!("{}/{}", "p".repeat(100), "q".repeat(99)));
        dir.kind = EntryKind::Dir;
        dir.size = 0;
        cases.push((dir, 1)); // split after the p's: the name part "q..q/" is 100 bytes
        for (e, blocks) in cases {
            let mut v = Vec::new();
            encode(&e, &mut v);
            let name = String::from_utf8_lossy(&e.path).into_owned();
            assert_eq!(v.len(), blocks * 512, "{name}");
            if e.size >= 8 << 30 {
                // Too big to read back through a Vec; check the pax record itself.
                let text = String::from_utf8_lossy(&v[512..1024]).into_owned();
                assert!(
                    text.starts_with(&format!("19 size={}\n", 8u64 << 30)),
                    "{text:?}"
                );
                continue;
            }
            if e.size > 1 << 20 {
                let h = tar::Header::from_byte_slice(&v[v.len() - 512..]);
                assert_eq!(h.size().expect("size"), e.size, "{name}");
                continue;
            }
            let (path, _, _, _, link) = read_back(&e);
            let mut want = e.path.to_vec();
            if e.kind == EntryKind::Dir {
                want.push(b'/');
            }
            let want_trim = want.strip_suffix(b"/").unwrap_or(&want);
            assert_eq!(
                path.strip_suffix(b"/").unwrap_or(&path),
                want_trim,
                "{name}"
            );
            assert_eq!(link.as_deref(), e.link.as_deref(), "{name}");
        }
    }

    #[test]
    fn dir_name_with_trailing_slash_exactly_100() {
        // 99 bytes + '/' fits the name field; 100 bytes + '/' does not.
        let mut d = file(&"n".repeat(99));
        d.kind = EntryKind::Dir;
        assert_eq!(len(&d), 512);
        let mut d = file(&"n".repeat(100));
        d.kind = EntryKind::Dir;
        assert_eq!(len(&d), 3 * 512);
    }

    #[test]
    fn xattrs_as_schily_records() {
        let mut e = file("bin/ping");
        e.xattrs = vec![
            (
                b"security.capability".to_vec().into(),
                vec![
                    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ]
                .into(),
            ),
            // tar-rs splits records at '\n', so no newline in this value.
            (b"user.note".to_vec().into(), b"hello=world".to_vec().into()),
        ];
        let (_, _, xattrs, _, _) = read_back(&e);
        assert_eq!(xattrs.len(), 2);
        assert_eq!(xattrs[0].0, "security.capability");
        assert_eq!(xattrs[0].1[5], 0x20);
        assert_eq!(xattrs[1], ("user.note".to_owned(), b"hello=world".to_vec()));
    }

    #[test]
    fn non_utf8_long_name_is_declared_binary() {
        let mut name = b"d/".to_vec();
        name.extend(std::iter::repeat_n(0xe9u8, 120)); // Latin-1 'é'
        let mut e = file("x");
        e.path = name.clone().into();
        let mut v = Vec::new();
        encode(&e, &mut v);
        let rec = &v[512..1024];
        assert!(
            rec.starts_with(b"21 hdrcharset=BINARY\n"),
            "{:?}",
            &rec[..40]
        );
        assert_eq!(read_back(&e).0, name);
        // A short non-UTF-8 name fits ustar: no pax header at all.
        e.path = b"caf\xe9".to_vec().into();
        assert_eq!(len(&e), 512);
    }

    #[test]
    fn octal_fields() {
        let mut f = [0xffu8; 8];
        octal(&mut f, 0o4755);
        assert_eq!(&f, b"0004755\0");
        let mut f = [0u8; 12];
        octal(&mut f, MAX_OCTAL_11);
        assert_eq!(&f, b"77777777777\0");
    }

    #[test]
    fn pax_record_lengths() {
        // The length prefix counts itself, including when it gains a digit.
        for (klen, vlen) in [
            (1, 1),
            (4, 2),
            (4, 3),
            (10, 85),
            (10, 86),
            (10, 87),
            (3, 995),
        ] {
            let mut v = Vec::new();
            pax_record(&mut v, &b"k".repeat(klen), &b"v".repeat(vlen));
            let sp = v.iter().position(|&b| b == b' ').expect("space");
            let n: usize = std::str::from_utf8(&v[..sp])
                .expect("ascii")
                .parse()
                .expect("n");
            assert_eq!(n, v.len(), "{klen} {vlen}");
        }
    }

    #[test]
    fn devices_and_fifo() {
        let mut c = file("dev/null");
        c.kind = EntryKind::Char { major: 1, minor: 3 };
        c.perm = 0o666;
        let (_, ty, _, h, _) = read_back(&c);
        assert_eq!(ty, tar::EntryType::Char);
        assert_eq!(h.device_major().expect("major"), Some(1));
        assert_eq!(h.device_minor().expect("minor"), Some(3));
        assert_eq!(h.size().expect("size"), 0);
        let mut f = file("run/fifo");
        f.kind = EntryKind::Fifo;
        assert_eq!(read_back(&f).1, tar::EntryType::Fifo);
    }
}
