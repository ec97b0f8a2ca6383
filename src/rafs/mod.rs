//! RAFS v6: the image format (a valid EROFS image plus nydus's RAFS extensions).
//!
//! Owns the on-disk structs ([`layout`]), chunk coding ([`chunk`]), the in-memory tree that
//! builders and merges produce ([`tree`]), the bootstrap writer ([`writer`]) and reader
//! ([`reader`]). Knows nothing about FUSE, caches or HTTP.

pub mod blob;
pub mod build;
pub mod check;
pub mod chunk;
pub mod export;
pub mod layout;
pub mod merge;
pub mod reader;
pub mod tree;
pub mod unpack;
pub mod writer;
