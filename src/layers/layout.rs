//! The conf root's layout: where seeds, layers, image files, build logs, run and state
//! dirs live under it, and how an image file is named.
//!
//! Every path under a conf root is spelled here once; the build's host dirs start from
//! these defaults and apply a config's overrides.

use std::path::{Path, PathBuf};

use crate::layers::store::BuildKey;

/// A conf root and the places under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfRoot {
    root: PathBuf,
}

impl ConfRoot {
    pub fn new(root: &Path) -> ConfRoot {
        ConfRoot {
            root: root.to_path_buf(),
        }
    }

    /// The conf root itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Imported seeds (`seeds/<name>`, with `<name>.upper`, `<name>.work`, locks).
    pub fn seeds(&self) -> PathBuf {
        self.root.join("seeds")
    }

    /// Published layers, by key ([`crate::layers::store::Store`]).
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// The mount's finished images kept as files for FUSE passthrough.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The file of the image over top layer `top` with image digest `digest`.
    pub fn image_file(&self, top: &BuildKey, digest: &str) -> PathBuf {
        self.images().join(format!("{top}-{digest}.tar"))
    }

    /// Images and logs `build` writes (the default build dir).
    pub fn builds(&self) -> PathBuf {
        self.root.join("builds")
    }

    /// Source archives Portage fetches (the default distfile dir).
    pub fn distfiles(&self) -> PathBuf {
        self.root.join("distfiles")
    }

    /// Ebuild repositories (the default repo dir).
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }

    /// Config overlays (the default config dir).
    pub fn config_overlays(&self) -> PathBuf {
        self.root.join("config")
    }

    /// The mount's configs dir (`<name>.toml`), unless another is given.
    pub fn configs(&self) -> PathBuf {
        self.root.join("configs")
    }

    /// Mount points and scratch dirs of running builds.
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The work dir of the mount's configs union.
    pub fn configs_work(&self) -> PathBuf {
        self.root.join("state/configs-work")
    }

    /// The recorded identity of seed `seed`.
    pub fn seed_id(&self, seed: &str) -> PathBuf {
        self.root.join("state/seed-ids").join(seed)
    }

    /// The persisted file digests of `name` (`seed-<seed>`, `repos`).
    pub fn digest_cache(&self, name: &str) -> PathBuf {
        self.root.join("state/digest-cache").join(name)
    }

    /// The logs of `serve`.
    pub fn serve_logs(&self) -> PathBuf {
        self.root.join("logs/serve")
    }
}

/// What an image file's name says: the top layer it is over, and whether it is
/// finished (`<key>-<digest>.tar`) rather than being written (`<key>-<digest>.tar.tmp<pid>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFileName {
    pub top: BuildKey,
    pub finished: bool,
}

impl ImageFileName {
    /// The temp name an image file is written to before it is renamed to `file`.
    pub fn temp_path(file: &Path) -> PathBuf {
        file.with_extension(format!("tar.tmp{}", std::process::id()))
    }

    /// `None` for a name that is no image file's.
    pub fn parse(name: &str) -> Option<ImageFileName> {
        let top = name.split_once('-').and_then(|(k, _)| BuildKey::parse(k))?;
        Some(ImageFileName {
            top,
            finished: name.ends_with(".tar"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_file_names_round_trip() {
        let root = ConfRoot::new(Path::new("/c"));
        let top = BuildKey::from_digest(&[7; 32]);
        let path = root.image_file(&top, "0123abcd");
        assert_eq!(path.parent(), Some(Path::new("/c/images")));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(
            ImageFileName::parse(name),
            Some(ImageFileName {
                top: top.clone(),
                finished: true
            })
        );
        let tmp = ImageFileName::temp_path(&path);
        let tmp = tmp.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(ImageFileName::parse(tmp).map(|n| n.finished), Some(false));
        assert_eq!(ImageFileName::parse("notakey-x.tar"), None);
        assert_eq!(ImageFileName::parse("README"), None);
    }
}
