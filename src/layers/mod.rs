//! Layers on disk, the views computed from them, and where they live under the conf
//! root ([`layout`]).
//!
//! A *layer* is a directory tree in the union's upper format: OCI whiteouts
//! (`.wh.<name>`), opaque markers (`.wh..wh..opq`) and in-image ownership in the
//! `user.containers.override_stat` xattr. This module owns reading and writing that
//! format; it imports neither `fuser` nor the build, so everything here is tested on
//! plain temp dirs. [`read_full_at`] is the one positional read of layer files (and of
//! the mount's logs) until a buffer is full or the file ends.

pub mod digest;
pub mod layout;
pub mod normalize;
pub mod ownership;
pub mod seed;
pub mod store;
pub mod tar;
pub mod union;
pub mod whiteout;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Reads `buf.len()` bytes of `f` at `offset`, fewer only at end of file (retrying
/// short reads and EINTR); returns the bytes read.
pub fn read_full_at(f: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
