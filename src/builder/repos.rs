//! The state of the ebuild repositories, as it goes into layer keys.
//!
//! A build reads the repositories bound at `/var/db/repos` in two ways:
//! - **shared files**, which any resolution may read: everything in a repository that
//!   is not inside a package directory (`eclass/`, `profiles/`, `metadata/layout.conf`,
//!   `licenses/`, ...). Their digest, per repository, goes into every layer's key;
//! - **package directories** (`<category>/<package>/`: ebuilds, `files/`, `Manifest`).
//!   A layer's key covers the directories of the packages it may use
//!   ([`Repos::closure`]): the packages its config names and those of the profiles'
//!   `packages` files (the system set), and, transitively, every package named in
//!   their ebuilds or in the eclasses those inherit. Names are found by scanning the
//!   text for `category/package` tokens of known categories, so the set is a superset
//!   of what resolution can reach (USE-conditional and `|| ( )` alternatives included).
//!   Editing, adding or removing an ebuild of a package changes the keys of exactly the
//!   layers whose set holds it (and of the layers above them).
//!
//! Left out, because no build reads them or they are derived from what is covered:
//! VCS dirs (`.git`, `.svn`, `CVS`, `.hg`), every `metadata.xml`, and the generated or
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
use crate::layers::layout::ConfRoot;

pub use crate::layers::store::PackageInput;

/// The repositories of a build, by name.
#[derive(Debug)]
pub struct Repos {
    /// Repository name (`profiles/repo_name`, else the directory name) → directory.
    by_name: BTreeMap<String, PathBuf>,
    /// The categories of every repository.
    cats: BTreeSet<String>,
    cache: DigestCache,
    /// Package → the packages its ebuilds (and their eclasses) name.
    refs: BTreeMap<String, BTreeSet<String>>,
    /// Eclass → (packages it names, eclasses it inherits).
    eclasses: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
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
        let cats = by_name.values().flat_map(|d| categories(d)).collect();
        Ok(Repos {
            by_name,
            cats,
            cache: DigestCache::load(&ConfRoot::new(conf_root).digest_cache("repos")),
            refs: BTreeMap::new(),
            eclasses: BTreeMap::new(),
        })
    }

    /// The packages a layer may use (see the module doc): the closure of `roots`
    /// (atoms or `category/package` names) and of the profiles' `packages` files over
    /// the packages named in ebuilds and inherited eclasses, as `(repository,
    /// category/package)` of every repository that has the package.
    pub fn closure<'a>(
        &mut self,
        roots: impl IntoIterator<Item = &'a str>,
    ) -> io::Result<BTreeSet<(String, String)>> {
        let mut queue: Vec<String> = Vec::new();
        for r in roots {
            queue.extend(package_refs(r, &self.cats));
        }
        let dirs: Vec<PathBuf> = self.by_name.values().cloned().collect();
        for d in &dirs {
            for f in profile_package_files(&d.join("profiles"))? {
                queue.extend(package_refs(&fs::read_to_string(&f)?, &self.cats));
            }
        }
        let mut seen: BTreeSet<String> = BTreeSet::new();
        while let Some(p) = queue.pop() {
            if !seen.insert(p.clone()) {
                continue;
            }
            let refs = self.package_refs_of(&p)?;
            queue.extend(refs.into_iter().filter(|r| !seen.contains(r)));
        }
        let mut out = BTreeSet::new();
        for p in seen {
            for (name, dir) in &self.by_name {
                if dir.join(&p).is_dir() {
                    out.insert((name.clone(), p.clone()));
                }
            }
        }
        Ok(out)
    }

    /// The packages named by the ebuilds of `package` (every repository) and by the
    /// eclasses they inherit, transitively.
    fn package_refs_of(&mut self, package: &str) -> io::Result<BTreeSet<String>> {
        if let Some(r) = self.refs.get(package) {
            return Ok(r.clone());
        }
        let mut refs = BTreeSet::new();
        let mut inherits = BTreeSet::new();
        if is_package_name(package) {
            for dir in self.by_name.values() {
                let pdir = dir.join(package);
                let Ok(rd) = fs::read_dir(&pdir) else {
                    continue;
                };
                for e in rd {
                    let path = e?.path();
                    if path.extension().is_some_and(|x| x == "ebuild") {
                        let text = fs::read_to_string(&path)?;
                        refs.extend(package_refs(&text, &self.cats));
                        inherits.extend(inherited(&text));
                    }
                }
            }
        }
        let mut done = BTreeSet::new();
        while let Some(ec) = inherits.pop_first() {
            if !done.insert(ec.clone()) {
                continue;
            }
            let (r, i) = self.eclass(&ec)?;
            refs.extend(r);
            inherits.extend(i.into_iter().filter(|x| !done.contains(x)));
        }
        refs.remove(package);
        self.refs.insert(package.to_owned(), refs.clone());
        Ok(refs)
    }

    fn eclass(&mut self, name: &str) -> io::Result<(BTreeSet<String>, BTreeSet<String>)> {
        if let Some(e) = self.eclasses.get(name) {
            return Ok(e.clone());
        }
        let mut e = (BTreeSet::new(), BTreeSet::new());
        if !name.contains('/') {
            for dir in self.by_name.values() {
                if let Ok(text) =
                    fs::read_to_string(dir.join("eclass").join(format!("{name}.eclass")))
                {
                    e.0.extend(package_refs(&text, &self.cats));
                    e.1.extend(inherited(&text));
                }
            }
        }
        self.eclasses.insert(name.to_owned(), e.clone());
        Ok(e)
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

    /// Persists the digest cache (best effort: it only saves time).
    pub fn save_cache(&self) {
        if let Err(e) = self.cache.save() {
            tracing::warn!("cannot save the repository digest cache: {e}");
        }
    }
}

/// The `category/package` names of the known categories `text` mentions: every
/// token of name characters with a `/`, operators, versions, slots and USE deps
/// stripped (`>=dev-libs/foo-1.2:0=[ssl]` names `dev-libs/foo`). A token that is a
/// name with a version gives both readings (`app-misc/x-11` may be the package
/// `x-11`): which exist is decided by the caller.
pub fn package_refs(text: &str, cats: &BTreeSet<String>) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || "+_.-/".contains(c);
    let mut out = BTreeSet::new();
    for tok in text.split(|c: char| !is_name(c)) {
        let mut parts = tok.split('/');
        let (Some(cat), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        if rest.is_empty() || !cats.contains(cat) {
            continue;
        }
        let rest = rest.trim_end_matches('.');
        out.insert(format!("{cat}/{rest}"));
        if let Some(pn) = package_name(rest) {
            out.insert(format!("{cat}/{pn}"));
        }
    }
    out
}

/// The eclasses an ebuild or eclass inherits (`inherit a b` lines).
fn inherited(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("inherit ") {
            for w in rest.split_whitespace() {
                if w.starts_with('#') {
                    break;
                }
                if w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                {
                    out.insert(w.to_owned());
                }
            }
        }
    }
    out
}

/// Every file named `packages` under a repository's `profiles/`.
fn profile_package_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            out.extend(profile_package_files(&e.path())?);
        } else if ft.is_file() && e.file_name() == "packages" {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
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
    fn package_refs_strip_operators_versions_slots_and_use_deps() {
        let cats: BTreeSet<String> = ["dev-libs", "app-misc", "virtual"]
            .into_iter()
            .map(String::from)
            .collect();
        let got = package_refs(
            "RDEPEND=\">=dev-libs/foo-1.2:0=[ssl] || ( app-misc/a virtual/b )\n\
             !!app-misc/blocker HOMEPAGE=https://github.com/x/y \
             sys-apps/unknown-cat dev-libs/bar:2 app-misc/x11\"",
            &cats,
        );
        let want = [
            "app-misc/a",
            "app-misc/blocker",
            "app-misc/x11",
            "dev-libs/bar",
            "dev-libs/foo",
            "dev-libs/foo-1.2",
            "virtual/b",
        ];
        assert_eq!(got.iter().map(String::as_str).collect::<Vec<_>>(), want);
        assert_eq!(
            inherited("inherit toolchain-funcs  flag-o-matic # c\n  inherit x\ninherits y\n"),
            ["flag-o-matic", "toolchain-funcs", "x"]
                .into_iter()
                .map(String::from)
                .collect()
        );
    }

    #[test]
    fn the_closure_follows_ebuilds_eclasses_and_the_system_set() -> io::Result<()> {
        let t = tempfile::tempdir()?;
        let r = t.path().join("repos/test");
        for (f, c) in [
            ("profiles/repo_name", "test\n"),
            ("profiles/categories", "app-misc\nsys-apps\ndev-libs\n"),
            ("profiles/default/packages", "*sys-apps/base\n"),
            ("sys-apps/base/base-1.ebuild", "EAPI=8\n"),
            (
                "app-misc/top/top-1.ebuild",
                "inherit helper\nRDEPEND=\">=app-misc/mid-2\"\n",
            ),
            (
                "app-misc/mid/mid-2.ebuild",
                "DEPEND=\"use? ( dev-libs/deep )\"\n",
            ),
            ("dev-libs/deep/deep-1.ebuild", "EAPI=8\n"),
            ("eclass/helper.eclass", "inherit more\n"),
            ("eclass/more.eclass", "BDEPEND=dev-libs/tool\n"),
            ("dev-libs/tool/tool-1.ebuild", "EAPI=8\n"),
            (
                "app-misc/unrelated/unrelated-1.ebuild",
                "RDEPEND=app-misc/top\n",
            ),
        ] {
            let p = r.join(f);
            fs::create_dir_all(p.parent().unwrap())?;
            fs::write(p, c)?;
        }
        let mut repos = Repos::scan(&t.path().join("repos"), &t.path().join("conf"))?;
        let got: Vec<String> = repos
            .closure(["app-misc/top"])?
            .into_iter()
            .map(|(repo, p)| format!("{repo}::{p}"))
            .collect();
        assert_eq!(
            got,
            [
                "test::app-misc/mid",
                "test::app-misc/top",
                "test::dev-libs/deep",
                "test::dev-libs/tool",
                "test::sys-apps/base",
            ]
        );
        let base: Vec<_> = repos.closure(["@world"])?.into_iter().collect();
        assert_eq!(base, [("test".to_owned(), "sys-apps/base".to_owned())]);
        Ok(())
    }
}
