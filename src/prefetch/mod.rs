//! Prefetch: turning a record of what a workload read into the backend requests that fetch it
//! before it is asked for.
//!
//! Planning is pure; [`engine`] runs a plan into the chunk cache (worker threads, bandwidth
//! cap, readers first).
//!
//! - [`input`] what was touched, as [`Touch`]es: from access-log events, a prefetch list (one
//!   absolute path per line, nydusd's `--prefetch-files`) or nydus-image optimize's JSON.
//! - [`source`] the image seen as paths -> chunks ([`FileSource`]); [`RafsSource`] implements
//!   it over a RAFS bootstrap, tests implement it over a table.
//! - [`mod@plan`] the planner: touches -> chunks in first-touch order (duplicates, shared chunks
//!   and cached chunks removed) -> merged ranged requests per blob.
//! - [`engine`] background workers running a plan's requests into a
//!   [`crate::storage::ChunkCache`].
//!
//! Depends on [`crate::rafs`] (chunk records, the bootstrap reader), [`crate::accesslog`]
//! (resolved events) and [`crate::storage`] (the cache the engine fills); knows nothing of FUSE, HTTP or the daemon. Planning is deterministic:
//! the same inputs give the same plan. docs/prefetch.md describes the rules.

pub mod engine;
pub mod input;
pub mod plan;
pub mod source;

use crate::rafs::reader::ReadError;

pub use engine::{Engine, EngineOptions, PrefetchMetrics};
pub use input::{
    touches_from_events, touches_from_list, touches_from_optimize_json, Extent, Touch,
};
pub use plan::{
    merge_requests, order_chunks, plan, Ordered, Plan, PlanOptions, PlanStats, PlannedChunk,
    Request, DEFAULT_MERGING_SIZE,
};
pub use source::{Entry, FileSource, RafsSource};

/// Errors of prefetch planning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of a prefetch list is not an absolute path.
    #[error("prefetch list line {line}: {reason} ({text:?})")]
    ListLine {
        /// 1-based line number.
        line: usize,
        /// The line as found (lossy UTF-8, trimmed).
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// nydus-image optimize JSON that does not parse or has the wrong shape.
    #[error("nydus optimize JSON: {0}")]
    OptimizeJson(#[from] serde_json::Error),
    /// nydus-image optimize JSON of a version other than v1.
    #[error("nydus optimize JSON has version {found:?}; only \"v1\" is known")]
    OptimizeVersion {
        /// The version string found.
        found: String,
    },
    /// A path in the optimize JSON is not absolute.
    #[error("nydus optimize JSON: file {index} has path {path:?}, which is not absolute")]
    OptimizePath {
        /// Index in `files`.
        index: usize,
        /// The path.
        path: String,
    },
    /// The image could not be read while resolving a path.
    #[error("image: resolving {path}: {source}")]
    Image {
        /// The path being resolved.
        path: String,
        /// The reader's error.
        #[source]
        source: ReadError,
    },
}
