//! The access log: records every file access cheaply, keeps it on disk, and answers questions
//! with it. Depends on nothing else in the crate but `sys` (system calls); the FUSE
//! filesystems call [`AccessSink`].
//!
//! - [`event`] what one access is: the hot-path [`Event`] and the stored [`Record`]s.
//! - [`sink`] the recorder: per-thread lock-free rings, a memory bound, drop counting.
//! - [`writer`] the background thread: drain, first-touch dedupe, path/process records, write.
//! - `priority` the writer's scheduling: `SCHED_IDLE`, raised when a ring fills.
//! - [`resolve`] where paths ([`PathResolver`], implemented by the FUSE side) and process
//!   names ([`ProcessResolver`], /proc) come from.
//! - [`file`] the on-disk format: header, framed records, torn-tail-tolerant reader, rotation.
//! - [`query`] replaying a log into events with paths and processes; filters.
//! - [`report`] stats and exports (JSON, CSV, prefetch list, nydus-image optimize JSON).
//! - [`config`] the `accesslog` config section and the recording [`Mode`].
//! - `hash` integer-keyed maps with a fast hasher (the writer's, the image path table).
//!
//! The format and its versioning rules: docs/access-log.md.
//!
//! # Wiring it into a filesystem
//!
//! ```no_run
//! use std::sync::Arc;
//! use strata::accesslog::{AccessLogConfig, AccessSink, Event, Mode, Op, RootOnly, SinkOptions};
//!
//! let cfg = AccessLogConfig { path: "/tmp/access.log".into(), mode: Mode::FirstTouch,
//!                             ..Default::default() };
//! let sink = Arc::new(AccessSink::start(SinkOptions::new(cfg).paths(Arc::new(RootOnly(1))))?);
//! // In a FUSE read handler, after the read (pid/uid from the request context):
//! sink.record(Event::new(Op::Read, 42, 1234, 0).with_range(0, 4096).with_chunks(0, 0));
//! sink.flush()?; // on unmount; dropping the last handle does the same
//! # Ok::<(), strata::accesslog::Error>(())
//! ```

pub mod config;
pub mod event;
pub mod file;
pub(crate) mod hash;
pub(crate) mod priority;
pub mod query;
pub mod report;
pub mod resolve;
pub mod sink;
pub mod writer;

use std::io;
use std::path::{Path, PathBuf};

pub use config::{AccessLogConfig, Mode};
pub use event::{Access, Cache, ChunkSpan, Event, Op, Range, Record};
pub use file::{parse_log, read_log, LogHeader, ParsedLog};
pub use query::{replay_path, Filter, Replay, Replayer, Resolved};
pub use resolve::{PathResolver, ProcFs, ProcessInfo, ProcessResolver, RootOnly};
pub use sink::{AccessSink, SinkOptions, SinkStats};

/// Errors of the access log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file does not start with the access log magic.
    #[error("not a strata access log: the file starts with {found:02x?}, not \"STRATAAL\"")]
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// The file ends inside its header.
    #[error("access log header is truncated: the file has {len} bytes, the header needs {need}")]
    TruncatedHeader {
        /// Bytes present.
        len: u64,
        /// Bytes the header needs.
        need: u64,
    },
    /// The header's version is 0.
    #[error("access log header has format version 0, which no strata writes")]
    BadVersion,
    /// Written by a newer strata with an incompatible format.
    #[error(
        "access log format version {found} is newer than this strata reads (up to \
         {supported}); read it with a newer strata (upgrade)"
    )]
    FutureVersion {
        /// Version in the file.
        found: u16,
        /// Newest this build reads.
        supported: u16,
    },
    /// The header length field is out of bounds.
    #[error("access log header length {len} is out of bounds (64..=4096)")]
    BadHeaderLen {
        /// The length field.
        len: u64,
    },
    /// The header's checksum does not match.
    #[error(
        "access log header is corrupt: checksum {stored:#010x} stored, {computed:#010x} computed"
    )]
    HeaderChecksum {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// A record could not be encoded.
    #[error("cannot encode an access log record: {0}")]
    Encode(String),
    /// A record is larger than the format allows.
    #[error("access log record of {len} bytes exceeds the limit of {max}")]
    RecordTooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The writer thread could not start or has gone.
    #[error("access log writer thread: {0}")]
    Thread(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
}
