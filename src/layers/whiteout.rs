//! Whiteouts and opaque directories: every encoding read, the OCI one written.
//!
//! A layer directory (a union's upper dir, a published layer) records deletions of
//! lower-layer entries. Several encodings exist in the wild and all are *read*:
//!
//! | meaning  | encodings |
//! |----------|-----------|
//! | whiteout | `.wh.<name>` (OCI, any file type); a character device 0/0 named `<name>` (kernel overlayfs); a zero-size regular file carrying `trusted.overlay.whiteout` or `user.overlay.whiteout` (overlayfs "xwhiteout") |
//! | opaque   | a `.wh..wh..opq` entry inside the directory (OCI); the xattr `trusted.overlay.opaque`, `user.overlay.opaque` or `user.fuseoverlayfs.opaque` set to `y` (kernel and fuse-overlayfs) |
//!
//! gentree-fs *writes* only the OCI encoding: empty regular files, which need no
//! privilege and make an upper dir an OCI layer as it stands.
//!
//! Invariant: the merged view never shows a whiteout or opaque marker.

use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Name prefix of an OCI whiteout file.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Xattrs that mark a directory opaque when their value is `y`.
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

/// Xattrs that turn a zero-size regular file into a whiteout (overlayfs "xwhiteout").
pub const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];

/// What one directory entry of a layer means for the union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// An ordinary entry, visible under its own name.
    Entry,
    /// Hides the entry `name` of the lower layers (and shows nothing itself).
    Whiteout(OsString),
    /// The directory holding this entry hides everything below it in lower layers.
    Opaque,
}

/// Classifies an entry by name alone: the OCI encodings.
///
/// `.wh..wh..opq` is the opaque marker; `.wh.X` (X non-empty, not containing `/`)
/// whites out `X`. A bare `.wh.` is not a valid whiteout and is treated as an entry.
pub fn classify_name(name: &OsStr) -> Marker {
    let bytes = name.as_bytes();
    if bytes == OPAQUE_MARKER.as_bytes() {
        return Marker::Opaque;
    }
    match bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        Some(rest) if !rest.is_empty() && rest != b"." && rest != b".." => {
            Marker::Whiteout(OsStr::from_bytes(rest).to_owned())
        }
        _ => Marker::Entry,
    }
}

/// True when `meta` describes a kernel-overlayfs whiteout: a character device 0/0.
pub fn is_chardev_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Classifies an entry from its name and `lstat` metadata, reading xattrs only when
/// the cheap checks leave the question open (a zero-size regular file).
pub fn classify(path: &Path, name: &OsStr, meta: &Metadata) -> Marker {
    match classify_name(name) {
        Marker::Entry => {}
        other => return other,
    }
    if is_chardev_whiteout(meta) {
        return Marker::Whiteout(name.to_owned());
    }
    if meta.file_type().is_file() && meta.len() == 0 && has_whiteout_xattr(path) {
        return Marker::Whiteout(name.to_owned());
    }
    Marker::Entry
}

fn has_whiteout_xattr(path: &Path) -> bool {
    WHITEOUT_XATTRS
        .iter()
        .any(|x| matches!(xattr::get(path, x), Ok(Some(_))))
}

/// True when the directory at `dir` is opaque in any encoding.
///
/// Errors reading xattrs (unsupported filesystem, no permission for `trusted.*`)
/// count as "not set": they cannot be set there either.
pub fn is_opaque_dir(dir: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(dir.join(OPAQUE_MARKER)) {
        Ok(_) => return Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(has_opaque_xattr(dir))
}

/// True when the directory at `dir` is marked opaque by an xattr in any encoding (the
/// OCI marker file is [`is_opaque_dir`]'s, or the caller's listing's, to check).
/// One `llistxattr` answers for the usual directory, which has no xattrs at all;
/// only the opaque names it lists have their values read. Errors count as "not set",
/// as for [`is_opaque_dir`].
pub fn has_opaque_xattr(dir: &Path) -> bool {
    let Ok(names) = xattr::list(dir) else {
        return false;
    };
    names
        .filter(|n| OPAQUE_XATTRS.iter().any(|x| n == *x))
        .any(|n| matches!(xattr::get(dir, &n), Ok(Some(v)) if v == b"y"))
}

/// The on-disk name of the OCI whiteout for `name`.
pub fn whiteout_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(WHITEOUT_PREFIX);
    s.push(name);
    s
}

/// Writes an OCI whiteout for `name` in `dir` (an empty regular file `.wh.<name>`).
/// Idempotent: an existing whiteout is left as it is.
pub fn write_whiteout(dir: &Path, name: &OsStr) -> io::Result<()> {
    create_marker(&dir.join(whiteout_name(name)))
}

/// Marks `dir` opaque with the OCI marker `.wh..wh..opq`. Idempotent.
pub fn write_opaque(dir: &Path) -> io::Result<()> {
    create_marker(&dir.join(OPAQUE_MARKER))
}

fn create_marker(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn classify_name_table() {
        let cases: &[(&str, Marker)] = &[
            ("file", Marker::Entry),
            (".wh.", Marker::Entry),
            (".wh..", Marker::Entry),
            (".wh...", Marker::Entry),
            (".wh..wh..opq", Marker::Opaque),
            (".wh.foo", Marker::Whiteout("foo".into())),
            (".wh..hidden", Marker::Whiteout(".hidden".into())),
            (".wh..wh.x", Marker::Whiteout(".wh.x".into())),
            (".whfoo", Marker::Entry),
            ("x.wh.foo", Marker::Entry),
        ];
        for (name, want) in cases {
            assert_eq!(&classify_name(OsStr::new(name)), want, "name {name:?}");
        }
    }

    #[test]
    fn write_and_detect_markers() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let d = t.path();
        assert!(!is_opaque_dir(d)?);
        write_opaque(d)?;
        write_opaque(d)?; // idempotent
        assert!(is_opaque_dir(d)?);
        write_whiteout(d, OsStr::new("gone"))?;
        let p = d.join(".wh.gone");
        let m = fs::symlink_metadata(&p)?;
        assert!(m.is_file());
        assert_eq!(m.len(), 0);
        assert_eq!(
            classify(&p, OsStr::new(".wh.gone"), &m),
            Marker::Whiteout("gone".into())
        );
        Ok(())
    }

    #[test]
    fn marker_creation_does_not_follow_symlinks() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let victim = t.path().join("victim");
        symlink(&victim, t.path().join(".wh.x"))?;
        // An existing entry of that name (even a symlink) is left alone, never followed.
        write_whiteout(t.path(), OsStr::new("x"))?;
        assert!(!victim.exists());
        Ok(())
    }

    #[test]
    fn opaque_by_user_xattr() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let d = t.path().join("d");
        fs::create_dir(&d)?;
        if xattr::set(&d, "user.overlay.opaque", b"y").is_err() {
            crate::testing::skip(
                "opaque_by_user_xattr",
                "user xattrs unsupported on the temp dir's filesystem",
            );
            return Ok(());
        }
        assert!(is_opaque_dir(&d)?);
        assert!(has_opaque_xattr(&d));
        xattr::set(&d, "user.overlay.opaque", b"n")?;
        assert!(!is_opaque_dir(&d)?);
        assert!(!has_opaque_xattr(&d));
        // Other xattrs only, or none: not opaque. The marker file is not an xattr.
        let e = t.path().join("e");
        fs::create_dir(&e)?;
        assert!(!has_opaque_xattr(&e));
        xattr::set(&e, "user.other", b"y")?;
        assert!(!has_opaque_xattr(&e));
        write_opaque(&e)?;
        assert!(is_opaque_dir(&e)? && !has_opaque_xattr(&e));
        xattr::set(&e, "user.fuseoverlayfs.opaque", b"y")?;
        assert!(has_opaque_xattr(&e));
        Ok(())
    }

    #[test]
    fn plain_file_is_entry() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let p = t.path().join("empty");
        fs::write(&p, b"")?;
        let m = fs::symlink_metadata(&p)?;
        assert_eq!(classify(&p, OsStr::new("empty"), &m), Marker::Entry);
        if xattr::set(&p, "user.overlay.whiteout", b"").is_ok() {
            assert_eq!(
                classify(&p, OsStr::new("empty"), &m),
                Marker::Whiteout("empty".into())
            );
        }
        Ok(())
    }
}
