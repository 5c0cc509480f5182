//! An SPDX 2.3 JSON SBOM of an image: one package per Portage package installed in
//! it, read from the image's merged `var/db/pkg` (whiteouts applied, so a package a
//! later layer unmerged is absent), before any tar filter (`vardbpkg` drops
//! `var/db/pkg` from the image, not from its SBOM).
//!
//! Per package: `name` = `category/PN`, `versionInfo` = PVR, `licenseDeclared` = the
//! vdb `LICENSE` as an SPDX expression (common Gentoo names mapped to SPDX ids, the
//! others as `LicenseRef-gentoo-<name>`, declared in `hasExtractedLicensingInfos`),
//! `homepage` = the first URL of `HOMEPAGE`, `summary` = `DESCRIPTION`, an external
//! reference `gentoo-atom` = `=category/PF:SLOT::repository`, and a `comment` with
//! `SLOT`, `repository` and `USE` (the ebuild's IUSE flags, `-` before those off).
//!
//! Deterministic: packages sorted by `category/PF`, `created` = the build epoch,
//! `documentNamespace` derived from a digest of the document's content. Bounded: a
//! vdb file larger than [`MAX_FIELD`] is refused (a build runs untrusted code and
//! could plant one), and no vdb file is followed through a symlink.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{OciError, canonical_json, io_err, rfc3339};
use crate::layers::digest::hex;
use crate::layers::ownership::FileKind;
use crate::layers::tar::scan;

/// The largest vdb field file read (HOMEPAGE, LICENSE, USE, ...).
pub const MAX_FIELD: u64 = 256 * 1024;

/// One installed package, as Portage recorded it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Installed {
    pub category: String,
    pub pf: String,
    pub slot: String,
    pub repository: String,
    pub license: String,
    pub homepage: String,
    pub description: String,
    /// `flag` or `-flag` for each IUSE flag.
    pub use_flags: Vec<String>,
}

/// The installed packages of the image over `layers` (lowest first), sorted.
pub fn installed(layers: &[PathBuf]) -> Result<Vec<Installed>, OciError> {
    let merged = scan::merge_subtree(layers, b"var/db/pkg").map_err(|source| OciError::Layout {
        layer: layers.last().cloned().unwrap_or_default(),
        source,
    })?;
    let mut out = Vec::new();
    for (path, node) in &merged {
        let Some(rest) = path.strip_prefix(b"var/db/pkg/".as_slice()) else {
            continue;
        };
        let parts: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
        if parts.len() != 2 || node.kind != FileKind::Dir {
            continue;
        }
        let (Ok(category), Ok(pf)) = (std::str::from_utf8(parts[0]), std::str::from_utf8(parts[1]))
        else {
            continue;
        };
        // Portage's in-progress merges (`-MERGING-`) and stray names are not packages.
        if pf.starts_with('-') || category.starts_with('-') || split_pf(pf).is_none() {
            continue;
        }
        let field = |name: &str| -> Result<String, OciError> {
            let mut key = path.clone();
            key.push(b'/');
            key.extend_from_slice(name.as_bytes());
            match merged.get(&key) {
                Some(n) if n.kind == FileKind::File => {
                    read_field(&scan::join(&layers[usize::from(n.layer)], &key))
                }
                _ => Ok(String::new()),
            }
        };
        let iuse = field("IUSE")?;
        let enabled: BTreeSet<String> = field("USE")?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let mut flags: Vec<String> = iuse
            .split_whitespace()
            .map(|f| f.trim_start_matches(['+', '-']).to_owned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|f| {
                if enabled.contains(&f) {
                    f
                } else {
                    format!("-{f}")
                }
            })
            .collect();
        flags.sort_by(|a, b| a.trim_start_matches('-').cmp(b.trim_start_matches('-')));
        out.push(Installed {
            category: category.to_owned(),
            pf: pf.to_owned(),
            slot: field("SLOT")?.trim().to_owned(),
            repository: field("repository")?.trim().to_owned(),
            license: field("LICENSE")?.trim().to_owned(),
            homepage: field("HOMEPAGE")?.trim().to_owned(),
            description: field("DESCRIPTION")?.trim().to_owned(),
            use_flags: flags,
        });
    }
    out.sort();
    Ok(out)
}

fn read_field(path: &Path) -> Result<String, OciError> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("cannot open", path))?;
    let mut buf = Vec::new();
    f.take(MAX_FIELD + 1)
        .read_to_end(&mut buf)
        .map_err(io_err("cannot read", path))?;
    if buf.len() as u64 > MAX_FIELD {
        return Err(OciError::Refused {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_FIELD} bytes: not a Portage record"),
        });
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// `PF` as `(PN, PVR)`: the version starts at the first `-` followed by a valid
/// Gentoo version that runs to the end (`-rN` included).
pub fn split_pf(pf: &str) -> Option<(&str, &str)> {
    pf.match_indices('-')
        .map(|(i, _)| i)
        .find(|&i| crate::builder::config::names::is_version(&pf[i + 1..]))
        .filter(|&i| i > 0)
        .map(|i| (&pf[..i], &pf[i + 1..]))
}

/// Gentoo license names with an SPDX id (Gentoo's own `license-mapping.conf` agrees).
const SPDX_IDS: &[(&str, &str)] = &[
    ("AGPL-3", "AGPL-3.0-only"),
    ("AGPL-3+", "AGPL-3.0-or-later"),
    ("Apache-2.0", "Apache-2.0"),
    ("Artistic", "Artistic-1.0-Perl"),
    ("Artistic-2", "Artistic-2.0"),
    ("BSD", "BSD-3-Clause"),
    ("BSD-2", "BSD-2-Clause"),
    ("BSD-4", "BSD-4-Clause"),
    ("BSL-1.1", "BSL-1.0"),
    ("CC0-1.0", "CC0-1.0"),
    ("FDL-1.3", "GFDL-1.3-only"),
    ("FDL-1.3+", "GFDL-1.3-or-later"),
    ("GPL-1", "GPL-1.0-only"),
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("ISC", "ISC"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("MIT", "MIT"),
    ("MPL-1.1", "MPL-1.1"),
    ("MPL-2.0", "MPL-2.0"),
    ("openssl", "OpenSSL"),
    ("PSF-2", "PSF-2.0"),
    ("Unlicense", "Unlicense"),
    ("ZLIB", "Zlib"),
];

/// One license name as an SPDX id, or as a `LicenseRef-` (then `true`).
fn license_id(name: &str) -> (String, bool) {
    match SPDX_IDS.iter().find(|(g, _)| *g == name) {
        Some((_, s)) => ((*s).to_owned(), false),
        None => {
            let clean: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            (format!("LicenseRef-gentoo-{clean}"), true)
        }
    }
}

/// A vdb `LICENSE` (`A B`, `|| ( A B )`, nested groups; a leftover `flag? ( )` group
/// counts as present) as an SPDX expression; the `LicenseRef`s used go to `refs`.
pub fn license_expression(text: &str, refs: &mut BTreeSet<(String, String)>) -> String {
    fn group<'a>(
        toks: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
        refs: &mut BTreeSet<(String, String)>,
    ) -> Vec<String> {
        let mut items = Vec::new();
        while let Some(t) = toks.next() {
            let item = match t {
                ")" => break,
                "||" | "(" => {
                    let is_or = t == "||";
                    if is_or && toks.peek() == Some(&"(") {
                        toks.next();
                    }
                    join(group(toks, refs), is_or)
                }
                t if t.ends_with('?') => {
                    if toks.peek() == Some(&"(") {
                        toks.next();
                    }
                    join(group(toks, refs), false)
                }
                name => {
                    let (id, is_ref) = license_id(name);
                    if is_ref {
                        refs.insert((id.clone(), name.to_owned()));
                    }
                    Some(id)
                }
            };
            items.extend(item);
        }
        items
    }
    fn join(items: Vec<String>, or: bool) -> Option<String> {
        match items.len() {
            0 => None,
            1 => items.into_iter().next(),
            _ => Some(format!(
                "({})",
                items.join(if or { " OR " } else { " AND " })
            )),
        }
    }
    let mut toks = text.split_whitespace().peekable();
    let items = group(&mut toks, refs);
    match join(items, false) {
        None => "NOASSERTION".to_owned(),
        Some(s) => {
            let inner = s.strip_prefix('(').and_then(|s| s.strip_suffix(')'));
            // The outermost parentheses of a top-level AND are not needed.
            match inner {
                Some(i) if balanced(i) => i.to_owned(),
                _ => s,
            }
        }
    }
}

fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// SPDX ids are letters, digits, `.` and `-`.
fn spdx_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The SPDX document (canonical JSON) of the image `name` over `layers`.
pub fn document(name: &str, layers: &[PathBuf], epoch: i64) -> Result<Vec<u8>, OciError> {
    let pkgs = installed(layers)?;
    Ok(render(name, &pkgs, epoch))
}

/// The document of `pkgs`.
pub fn render(name: &str, pkgs: &[Installed], epoch: i64) -> Vec<u8> {
    let mut refs = BTreeSet::new();
    let mut packages = Vec::new();
    let mut relationships = Vec::new();
    for p in pkgs {
        let (pn, pvr) = split_pf(&p.pf).unwrap_or((&p.pf, ""));
        let id = format!(
            "SPDXRef-Package-{}",
            spdx_id(&format!("{}-{}", p.category, p.pf))
        );
        let homepage = p
            .homepage
            .split_whitespace()
            .find(|u| u.starts_with("https://") || u.starts_with("http://"))
            .unwrap_or("NOASSERTION");
        let mut atom = format!("={}/{}", p.category, p.pf);
        if !p.slot.is_empty() {
            atom.push(':');
            atom.push_str(&p.slot);
        }
        if !p.repository.is_empty() {
            atom.push_str("::");
            atom.push_str(&p.repository);
        }
        let mut pkg = json!({
            "SPDXID": id,
            "name": format!("{}/{pn}", p.category),
            "versionInfo": pvr,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "homepage": homepage,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license_expression(&p.license, &mut refs),
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "OTHER",
                "referenceType": "gentoo-atom",
                "referenceLocator": atom,
            }],
            "comment": format!(
                "SLOT: {}; repository: {}; USE: {}",
                p.slot,
                p.repository,
                p.use_flags.join(" ")
            ),
        });
        if !p.description.is_empty() {
            pkg["summary"] = Value::String(p.description.clone());
        }
        packages.push(pkg);
        relationships.push(json!({
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": id,
        }));
    }
    let extracted: Vec<Value> = refs
        .iter()
        .map(|(id, gentoo)| {
            json!({
                "licenseId": id,
                "name": gentoo,
                "extractedText": format!(
                    "The license Gentoo calls {gentoo}: its text is licenses/{gentoo} in the ebuild repository."
                ),
            })
        })
        .collect();
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": "",
        "creationInfo": {
            "created": rfc3339(epoch),
            "creators": [format!("Tool: gentree-fs-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(extracted);
    }
    // The namespace names this content: a digest of the document without it.
    let body = canonical_json(&doc).unwrap_or_default();
    doc["documentNamespace"] = Value::String(format!(
        "https://gentree-fs.invalid/spdx/{}-{}",
        spdx_id(name),
        hex(&Sha256::digest(&body))
    ));
    canonical_json(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tar::scan::tests::build;

    #[test]
    fn pf_splits_at_the_version() {
        for (pf, want) in [
            ("gt-app-1.0", Some(("gt-app", "1.0"))),
            ("gt-app-1.0-r1", Some(("gt-app", "1.0-r1"))),
            (
                "font-misc-1-2.3_rc1_p2",
                Some(("font-misc-1", "2.3_rc1_p2")),
            ),
            ("libfoo2-3.4b", Some(("libfoo2", "3.4b"))),
            ("perl-5.38.2-r3", Some(("perl", "5.38.2-r3"))),
            ("noversion", None),
            ("bad-1.x", None),
        ] {
            assert_eq!(split_pf(pf), want, "{pf}");
        }
    }

    #[test]
    fn licenses_become_spdx_expressions() {
        let mut refs = BTreeSet::new();
        assert_eq!(license_expression("GPL-2+", &mut refs), "GPL-2.0-or-later");
        assert_eq!(
            license_expression("MIT || ( GPL-2 BSD )", &mut refs),
            "MIT AND (GPL-2.0-only OR BSD-3-Clause)"
        );
        assert_eq!(
            license_expression("|| ( MIT Apache-2.0 )", &mut refs),
            "MIT OR Apache-2.0"
        );
        assert_eq!(license_expression("", &mut refs), "NOASSERTION");
        assert!(refs.is_empty());
        assert_eq!(
            license_expression("public-domain ssl? ( openssl )", &mut refs),
            "LicenseRef-gentoo-public-domain AND OpenSSL"
        );
        assert_eq!(
            refs.into_iter().collect::<Vec<_>>(),
            [(
                "LicenseRef-gentoo-public-domain".to_owned(),
                "public-domain".to_owned()
            )]
        );
    }

    #[test]
    fn unmerged_packages_are_absent_and_output_is_stable() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        let l1 = t.path().join("l1");
        build(
            &l0,
            "f var/db/pkg/app-misc/a-1.0/SLOT 0\nf var/db/pkg/app-misc/a-1.0/repository gentree-test\n\
             f var/db/pkg/app-misc/a-1.0/LICENSE MIT\nf var/db/pkg/app-misc/a-1.0/IUSE +x y\n\
             f var/db/pkg/app-misc/a-1.0/USE amd64 x\n\
             f var/db/pkg/app-misc/gone-2/SLOT 0\nf var/db/pkg/sys-apps/b-3-r1/SLOT 2/3",
        );
        build(
            &l1,
            "w var/db/pkg/app-misc/gone-2\nf var/db/pkg/app-misc/-MERGING-c-1/SLOT 0",
        );
        let pkgs = installed(&[l0.clone(), l1.clone()]).expect("vdb");
        let names: Vec<String> = pkgs
            .iter()
            .map(|p| format!("{}/{}", p.category, p.pf))
            .collect();
        assert_eq!(names, ["app-misc/a-1.0", "sys-apps/b-3-r1"]);
        assert_eq!(pkgs[0].use_flags, ["x", "-y"]);
        assert_eq!(pkgs[0].repository, "gentree-test");
        assert_eq!(pkgs[1].slot, "2/3");
        let a = document("img", &[l0.clone(), l1.clone()], 1_700_000_000).expect("doc");
        let b = document("img", &[l0, l1], 1_700_000_000).expect("doc");
        assert_eq!(a, b);
        let v: Value = serde_json::from_slice(&a).expect("json");
        assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        assert_eq!(v["packages"][0]["name"], "app-misc/a");
        assert_eq!(v["packages"][0]["versionInfo"], "1.0");
        assert_eq!(
            v["packages"][0]["externalRefs"][0]["referenceLocator"],
            "=app-misc/a-1.0:0::gentree-test"
        );
        let ns = v["documentNamespace"].as_str().expect("ns");
        assert!(
            ns.starts_with("https://gentree-fs.invalid/spdx/img-"),
            "{ns}"
        );
        let other = render("img", &pkgs[..1], 1_700_000_000);
        let w: Value = serde_json::from_slice(&other).expect("json");
        assert_ne!(w["documentNamespace"], v["documentNamespace"]);
    }

    #[test]
    fn a_huge_or_linked_record_is_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let l0 = t.path().join("l0");
        build(&l0, "f var/db/pkg/app-misc/a-1.0/SLOT 0");
        let lic = l0.join("var/db/pkg/app-misc/a-1.0/LICENSE");
        fs::write(&lic, vec![b'x'; MAX_FIELD as usize + 1]).expect("write");
        let err = installed(std::slice::from_ref(&l0))
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("LICENSE") && err.contains("larger than"),
            "{err}"
        );
        fs::remove_file(&lic).expect("rm");
        std::os::unix::fs::symlink("/etc/passwd", &lic).expect("link");
        // A symlink is not a record: the field is empty, nothing outside is read.
        let pkgs = installed(&[l0]).expect("vdb");
        assert_eq!(pkgs[0].license, "");
    }
}
