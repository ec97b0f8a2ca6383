//! strata: container root filesystems.
//!
//! RAFS v6 images ([`rafs`]) stored as chunked, content-addressed blobs fetched through
//! [`storage`]. See README.md for the architecture.

pub mod accesslog;
pub mod cli;
pub mod daemon;
pub mod overlay;
pub mod prefetch;
pub mod rafs;
pub mod slow;
pub mod storage;
pub mod sys;
