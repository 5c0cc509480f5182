//! How an open of `builds/<config>.tar` whose image is ready is answered: by FUSE
//! passthrough of the image file, with ESTALE, or through the page cache (kept, or
//! invalidated first) or by direct I/O. The decision only; the adapter
//! (`crate::fs::mount`) carries it out.

/// What to do first with an open whose image is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOpen {
    /// Try passthrough of the image's file; when that is not possible, answer
    /// through the page cache ([`cache_answer`]).
    Passthrough,
    /// The inode has passthrough opens of an older image, whose backing file is fixed
    /// (the kernel would fail the open): answer ESTALE and give the image a new inode.
    Stale,
    /// Answer through the page cache or direct I/O ([`cache_answer`]).
    Cache,
}

/// The decision for an open of an image that is ready: `negotiated`: the mount got
/// FUSE passthrough at INIT; `built`: the opener waited for the job that built the
/// image (its file is not written yet); `backed`: the inode has passthrough opens.
pub fn image_open(negotiated: bool, built: bool, backed: bool) -> ImageOpen {
    match (negotiated, built, backed) {
        (false, _, _) | (true, true, false) => ImageOpen::Cache,
        (true, true, true) => ImageOpen::Stale,
        (true, false, _) => ImageOpen::Passthrough,
    }
}

/// How an open not served by passthrough is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheAnswer {
    /// Direct I/O: the opener waited for the build, and the kernel may hold whatever
    /// size a racing GETATTR left in the inode; direct reads ignore it.
    DirectIo,
    /// Keep the kernel's size and pages: they are this image's.
    KeepCache,
    /// A new image for this inode (the first open since mounting, or a config edited
    /// back to an image built before): invalidate the kernel's size and pages off any
    /// request thread, then answer without keeping the cache.
    InvalidateFirst,
}

/// The answer through the page cache: `built` as for [`image_open`]; `served`: the
/// kernel's view of the inode was last invalidated for this image.
pub fn cache_answer(built: bool, served: bool) -> CacheAnswer {
    match (built, served) {
        (true, _) => CacheAnswer::DirectIo,
        (false, true) => CacheAnswer::KeepCache,
        (false, false) => CacheAnswer::InvalidateFirst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_passthrough_every_open_goes_through_the_cache() {
        for built in [false, true] {
            for backed in [false, true] {
                assert_eq!(image_open(false, built, backed), ImageOpen::Cache);
            }
        }
    }

    #[test]
    fn a_finished_image_tries_passthrough_whatever_the_inode_holds() {
        assert_eq!(image_open(true, false, false), ImageOpen::Passthrough);
        assert_eq!(image_open(true, false, true), ImageOpen::Passthrough);
    }

    #[test]
    fn a_built_image_on_a_backed_inode_is_stale_else_cached() {
        assert_eq!(image_open(true, true, true), ImageOpen::Stale);
        assert_eq!(image_open(true, true, false), ImageOpen::Cache);
    }

    #[test]
    fn the_cache_is_kept_only_for_the_image_it_was_invalidated_for() {
        assert_eq!(cache_answer(true, false), CacheAnswer::DirectIo);
        assert_eq!(cache_answer(true, true), CacheAnswer::DirectIo);
        assert_eq!(cache_answer(false, true), CacheAnswer::KeepCache);
        assert_eq!(cache_answer(false, false), CacheAnswer::InvalidateFirst);
    }
}
