//! The state of the ebuild repositories, as it goes into layer keys.
//!
//! A build reads the repositories bound at `/var/db/repos` in two ways:
//! - **shared files**, which any resolution may read: everything in a repository that
//!   is not inside a package directory (`eclass/`, `profiles/`, `metadata/layout.conf`,
//!   `licenses/`, ...). Their digest, per repository, goes into every layer's key;
//! - **package directories** (`<category>/<package>/`: ebuilds, `files/`, `Manifest`):
//!   a layer's key covers the directories of the packages it merged, as recorded in
//!   its own `var/db/pkg/<category>/<pf>/repository` entries ([`merged_packages`]).
//!   Editing, adding or removing an ebuild of a package changes the keys of exactly
//!   the layers that merged that package (and the layers above them).
//!
//! Left out, because no build reads them or they are derived from what is covered:
//! VCS dirs (`.git`, `.svn`, `CVS`), every `metadata.xml`, and the generated or
//! informational `metadata/` entries: `md5-cache`, `pkg_desc_index`, `timestamp*`,
//! `news`, `glsa`, `dtd`, `xml-schema`, `projects.xml`. A category is a line of
//! `profiles/categories`, or without that file any top-level directory whose name has
//! a `-` or is `virtual`.
//!
//! Digests cover names, modes and contents (not owners or times: a checkout on another
//! machine is the same input) and are cached by file identity
//! ([`crate::layers::digest`]) in `state/digest-cache/repos`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use crate::layers::digest::{self, DigestCache, DigestError, TreeOptions};

pub use crate::layers::store::PackageInput;

/// The repositories of a build, by name.
#[derive(Debug)]
pub struct Repos {
    /// Repository name (`profiles/repo_name`, else the directory name) → directory.
    by_name: BTreeMap<String, PathBuf>,
    cache: DigestCache,
}

/// Entries of `metadata/` no build reads (generated caches, news, schemas).
const METADATA_SKIP: &[&str] = &[
    "md5-cache",
    "pkg_desc_index",
    "timestamp",
    "timestamp.chk",
    "timestamp.commit",
    "timestamp.x",
    "news",
    "glsa",
    "dtd",
    "xml-schema",
    "projects.xml",
];

const VCS: &[&str] = &[".git", ".svn", "CVS", ".hg"];

fn vcs_or_metadata_xml(rel: &Path) -> bool {
    rel.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| VCS.contains(&n) || n == "metadata.xml")
}

impl Repos {
    /// The repositories under `dir` (each subdirectory not starting with `.`), with
    /// the digest cache of `conf_root`. A missing `dir` has none.
    pub fn scan(dir: &Path, conf_root: &Path) -> io::Result<Repos> {
        let mut by_name = BTreeMap::new();
        let rd = match fs::read_dir(dir) {
            Ok(rd) => Some(rd),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        for e in rd.into_iter().flatten() {
            let e = e?;
            let path = e.path();
            let file_name = e.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || !path.is_dir() {
                continue;
            }
            let name = fs::read_to_string(path.join("profiles/repo_name"))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or(file_name);
            by_name.insert(name, path);
        }
        Ok(Repos {
            by_name,
            cache: DigestCache::load(&conf_root.join("state/digest-cache/repos")),
        })
    }

    /// Repository names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// `(name, digest of its shared files)` of every repository, sorted by name.
    pub fn shared_digests(&mut self) -> Result<Vec<(String, String)>, DigestError> {
        let mut out = Vec::new();
        for (name, dir) in &self.by_name {
            let cats = categories(dir);
            let skip = |rel: &Path, m: &Metadata| shared_skip(rel, m, &cats);
            let opts = TreeOptions {
                skip: &skip,
                ..TreeOptions::content()
            };
            let d = digest::digest_tree(dir, &opts, &mut self.cache)?;
            out.push((name.clone(), d.hex));
        }
        Ok(out)
    }

    /// The digest of one package directory (`category/package`) of `repo`.
    pub fn package_digest(&mut self, repo: &str, package: &str) -> Result<String, DigestError> {
        let Some(dir) = self.by_name.get(repo) else {
            return Ok("absent".into());
        };
        let pdir = dir.join(package);
        if !is_package_name(package) || !pdir.is_dir() {
            return Ok("absent".into());
        }
        let skip = |rel: &Path, _: &Metadata| vcs_or_metadata_xml(rel);
        let opts = TreeOptions {
            skip: &skip,
            ..TreeOptions::content()
        };
        Ok(digest::digest_tree(&pdir, &opts, &mut self.cache)?.hex)
    }

    /// The current digests of `packages` (`(repo, category/package)`), sorted.
    pub fn inputs(
        &mut self,
        packages: &BTreeSet<(String, String)>,
    ) -> Result<Vec<PackageInput>, DigestError> {
        packages
            .iter()
            .map(|(repo, package)| {
                Ok(PackageInput {
                    repo: repo.clone(),
                    package: package.clone(),
                    digest: self.package_digest(repo, package)?,
                })
            })
            .collect()
    }

    /// True when every recorded input still has its digest.
    pub fn still_current(&mut self, inputs: &[PackageInput]) -> Result<bool, DigestError> {
        for i in inputs {
            if self.package_digest(&i.repo, &i.package)? != i.digest {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Persists the digest cache (best effort: it only saves time).
    pub fn save_cache(&self) {
        if let Err(e) = self.cache.save() {
            tracing::warn!("cannot save the repository digest cache: {e}");
        }
    }
}

/// `category/package` with two plain components.
fn is_package_name(p: &str) -> bool {
    let mut it = p.split('/');
    let ok = |c: Option<&str>| c.is_some_and(|c| !c.is_empty() && c != "." && c != "..");
    ok(it.next()) && ok(it.next()) && it.next().is_none()
}

/// The categories of a repository: `profiles/categories`, else guessed from names.
fn categories(dir: &Path) -> BTreeSet<String> {
    if let Ok(text) = fs::read_to_string(dir.join("profiles/categories")) {
        return text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
    }
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.contains('-') || n == "virtual")
        .collect()
}

/// What the shared digest leaves out (see the module doc).
fn shared_skip(rel: &Path, m: &Metadata, cats: &BTreeSet<String>) -> bool {
    if vcs_or_metadata_xml(rel) {
        return true;
    }
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    match parts.as_slice() {
        ["metadata", n] => METADATA_SKIP.contains(n),
        // A package directory: covered per layer, by the packages it merged.
        [cat, _] if cats.contains(*cat) && m.is_dir() => true,
        _ => false,
    }
}

/// `PN` of a `PF` (`gt-lib-2-r1` → `gt-lib`): the version is the last `-`-separated
/// part that starts with a digit, after an optional `-rN` revision.
pub fn package_name(pf: &str) -> Option<&str> {
    let mut end = pf.len();
    if let Some(i) = pf.rfind('-') {
        let rev = &pf[i + 1..];
        if rev.len() > 1 && rev.starts_with('r') && rev[1..].bytes().all(|b| b.is_ascii_digit()) {
            end = i;
        }
    }
    let i = pf[..end].rfind('-')?;
    pf[i + 1..end]
        .starts_with(|c: char| c.is_ascii_digit())
        .then_some(&pf[..i])
        .filter(|pn| !pn.is_empty())
}

/// The packages merged into a layer: `(repository, category/package)` of every
/// `var/db/pkg/<category>/<pf>/` entry of the layer tree itself (its upper, so
/// packages of the layers below are not counted again).
pub fn merged_packages(layer_root: &Path) -> io::Result<BTreeSet<(String, String)>> {
    let vdb = layer_root.join("var/db/pkg");
    let mut out = BTreeSet::new();
    let Ok(cats) = fs::read_dir(&vdb) else {
        return Ok(out);
    };
    for cat in cats {
        let cat = cat?;
        let Some(cname) = cat.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !cat.file_type()?.is_dir() || cname.starts_with('.') {
            continue;
        }
        for pkg in fs::read_dir(cat.path())? {
            let pkg = pkg?;
            let Some(pf) = pkg.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(pn) = package_name(&pf) else {
                continue;
            };
            let repo = match fs::read_to_string(pkg.path().join("repository")) {
                Ok(r) => r.trim().to_owned(),
                Err(_) => continue,
            };
            out.insert((repo, format!("{cname}/{pn}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_of_pfs() {
        for (pf, pn) in [
            ("gt-lib-2", Some("gt-lib")),
            ("gt-lib-2-r1", Some("gt-lib")),
            ("foo-bar-1.2.3_p4-r12", Some("foo-bar")),
            ("x11-9", Some("x11")),
            ("font-util-1", Some("font-util")),
            ("gcc-13.2.1_p20240113-r1", Some("gcc")),
            ("noversion", None),
            ("a-b", None),
            ("-1", None),
        ] {
            assert_eq!(package_name(pf), pn, "{pf}");
        }
    }

    fn repo(t: &Path) -> PathBuf {
        let r = t.join("repos/test");
        for d in [
            "profiles",
            "eclass",
            "metadata/md5-cache/app-misc",
            "app-misc/a/files",
            "app-misc/b",
            ".git",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for (f, c) in [
            ("profiles/repo_name", "test\n"),
            ("profiles/categories", "app-misc\n"),
            ("eclass/x.eclass", "x\n"),
            ("metadata/layout.conf", "masters =\n"),
            ("metadata/md5-cache/app-misc/a-1", "cache\n"),
            ("app-misc/a/a-1.ebuild", "EAPI=8\n"),
            ("app-misc/a/files/p.patch", "p\n"),
            ("app-misc/a/metadata.xml", "<pkg/>\n"),
            ("app-misc/b/b-1.ebuild", "EAPI=8\n"),
            ("app-misc/metadata.xml", "<cat/>\n"),
            (".git/HEAD", "ref\n"),
        ] {
            fs::write(r.join(f), c).unwrap();
        }
        r
    }

    #[test]
    fn shared_and_package_digests_see_what_builds_read() -> Result<(), DigestError> {
        let t = tempfile::tempdir().unwrap();
        let r = repo(t.path());
        let conf = t.path().join("conf");
        let state = || -> Result<_, DigestError> {
            let mut repos = Repos::scan(&t.path().join("repos"), &conf).unwrap();
            Ok((
                repos.shared_digests()?,
                repos.package_digest("test", "app-misc/a")?,
                repos.package_digest("test", "app-misc/b")?,
            ))
        };
        let (shared, a, b) = state()?;
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].0, "test");
        // Not read by builds: nothing changes.
        for (f, c) in [
            ("metadata/md5-cache/app-misc/a-1", "regenerated\n"),
            ("app-misc/a/metadata.xml", "<pkg2/>\n"),
            ("app-misc/metadata.xml", "<cat2/>\n"),
            (".git/HEAD", "other\n"),
        ] {
            fs::write(r.join(f), c).unwrap();
            assert_eq!(state()?, (shared.clone(), a.clone(), b.clone()), "{f}");
        }
        // A package's files change that package only.
        fs::write(r.join("app-misc/a/files/p.patch"), "q\n").unwrap();
        let (s2, a2, b2) = state()?;
        assert_eq!((&s2, &b2), (&shared, &b));
        assert_ne!(a2, a);
        // A new ebuild of b: b only.
        fs::write(r.join("app-misc/b/b-2.ebuild"), "EAPI=8\n").unwrap();
        let (s3, a3, b3) = state()?;
        assert_eq!((&s3, &a3), (&shared, &a2));
        assert_ne!(b3, b2);
        // An eclass or a profile: the shared digest.
        fs::write(r.join("eclass/x.eclass"), "y\n").unwrap();
        let (s4, a4, b4) = state()?;
        assert_ne!(s4, shared);
        assert_eq!((&a4, &b4), (&a3, &b3));
        let mut repos = Repos::scan(&t.path().join("repos"), &conf).unwrap();
        assert_eq!(repos.package_digest("test", "app-misc/zz")?, "absent");
        assert_eq!(repos.package_digest("other", "app-misc/a")?, "absent");
        assert_eq!(repos.package_digest("test", "../../etc")?, "absent");
        Ok(())
    }

    #[test]
    fn merged_packages_are_read_from_the_layers_own_vdb() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let vdb = t.path().join("var/db/pkg");
        for (cat, pf, repo) in [
            ("app-misc", "gt-lib-2", Some("gentree-test")),
            ("sys-apps", "gt-baselayout-1-r3", Some("gentoo")),
            ("app-misc", "no-repo-1", None),
        ] {
            let d = vdb.join(cat).join(pf);
            fs::create_dir_all(&d)?;
            if let Some(r) = repo {
                fs::write(d.join("repository"), format!("{r}\n"))?;
            }
        }
        // A whiteout of a lower entry is not a merged package.
        fs::write(vdb.join("app-misc/.wh.gt-removable-1"), "")?;
        let got: Vec<_> = merged_packages(t.path())?.into_iter().collect();
        assert_eq!(
            got,
            [
                ("gentoo".to_owned(), "sys-apps/gt-baselayout".to_owned()),
                ("gentree-test".to_owned(), "app-misc/gt-lib".to_owned()),
            ]
        );
        assert!(merged_packages(&t.path().join("none"))?.is_empty());
        Ok(())
    }
}
