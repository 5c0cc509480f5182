//! The only place `unsafe` is allowed. Each block carries a `// SAFETY:` note.
//!
//! Most system calls go through `nix`'s safe wrappers; what lands here is what nix
//! does not wrap, kept small so it can be read in one sitting.
#![allow(unsafe_code)]
