//! Storage: where the bytes of a chunk come from.
//!
//! Owns the blob backends ([`backend`]: a blob id plus a byte range in, stored bytes out;
//! [`http`]: nydusd's `http-proxy` over HTTP/1.1, with [`blobserver`] as its server side for
//! tests and benchmarks) and the chunk cache ([`cache`]: uncompressed, verified chunks kept in
//! a sparse local file with a crash-safe readiness bitmap), plus [`DirectReader`] for uncached
//! reads. Both readers implement [`crate::rafs::chunk::ChunkReader`], the seam through which
//! file reads obtain chunk bytes.
//!
//! Storage knows blobs, chunks ([`crate::rafs::chunk::ChunkRef`]) and the blob table
//! ([`crate::rafs::layout::BlobEntry`]) and nothing above them: it must not know about FUSE,
//! the daemon's HTTP API, inodes or the directory tree (HTTP here is only a way to fetch blob
//! bytes). A chunk is addressed by (blob index, chunk index) and its
//! recorded offsets; where a file's bytes map to chunks is the reader's business.
//!
//! Invariant shared by every reader here: the bytes returned for a chunk have the chunk's
//! digest, or the read is an error. Bytes are never marked ready in the cache before they were
//! verified.

pub mod backend;
pub mod blobserver;
pub mod cache;
pub mod http;

use std::io;
use std::path::PathBuf;

use crate::rafs::chunk::ChunkError;
use crate::rafs::layout::FormatError;

pub use http::{HttpProblem, HttpProxy, HttpProxyConfig};

pub use backend::{validate_blob_id, BackendMetrics, BackendMetricsSnapshot, BlobBackend, LocalFs};
pub use cache::{
    read_ready_bits, CacheMetrics, ChunkCache, DirectReader, Filled, AUTO_FLUSH_EVERY,
    CHUNK_MAP_HEADER_SIZE, CHUNK_MAP_MAGIC, CHUNK_MAP_VERSION,
};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A blob id that cannot be used as a file name.
    #[error("blob id {blob_id:?} is not usable as a file name: {reason}")]
    InvalidBlobId {
        /// The rejected id.
        blob_id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// No backend location holds the blob.
    #[error("blob {blob_id} was not found (searched {})", display_paths(searched))]
    BlobNotFound {
        /// Blob id.
        blob_id: String,
        /// Every path that was tried, in order.
        searched: Vec<PathBuf>,
    },
    /// A read asked for bytes past the end of the blob.
    #[error(
        "blob {blob_id}: read of {len} bytes at offset {offset} goes past the end of the blob \
         ({size} bytes)"
    )]
    ShortRead {
        /// Blob id.
        blob_id: String,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Size of the blob.
        size: u64,
    },
    /// An I/O error on a blob file of a backend.
    #[error("blob {blob_id}: cannot {op} {}: {source}", path.display())]
    BlobIo {
        /// Blob id.
        blob_id: String,
        /// What was being done ("open", "read", "stat").
        op: &'static str,
        /// File involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// An I/O error on a file of the chunk cache.
    #[error("chunk cache: cannot {op} {}: {source}", path.display())]
    CacheIo {
        /// What was being done ("open", "sync", "write", "rename", ...).
        op: &'static str,
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A backend's configuration is unusable.
    #[error("backend {backend}: {reason}")]
    BackendConfig {
        /// Backend type (`http-proxy`, ...).
        backend: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An HTTP exchange with a blob server failed.
    #[error("blob {blob_id}: {method} {url}: {problem}")]
    Http {
        /// Blob id.
        blob_id: String,
        /// `HEAD` or `GET`.
        method: &'static str,
        /// The blob's URL.
        url: String,
        /// What went wrong.
        #[source]
        problem: HttpProblem,
    },
    /// A blob table entry names a compressor or digester we do not know.
    #[error("blob {blob_id}: unsupported algorithm in the blob table: {source}")]
    BadAlgorithm {
        /// Blob id.
        blob_id: String,
        /// The decoding error.
        #[source]
        source: FormatError,
    },
    /// A blob table entry claims more chunks than the format allows.
    #[error("blob {blob_id} claims {chunk_count} chunks, more than the format allows ({max})")]
    TooManyChunks {
        /// Blob id.
        blob_id: String,
        /// Claimed chunk count.
        chunk_count: u32,
        /// Format limit.
        max: u32,
    },
    /// The same blob id appears twice in the blob table given to the cache.
    #[error("blob {blob_id} appears twice in the blob table (indexes {first} and {second})")]
    DuplicateBlob {
        /// Blob id.
        blob_id: String,
        /// First index.
        first: usize,
        /// Second index.
        second: usize,
    },
    /// A chunk names a blob index past the end of the blob table.
    #[error("blob index {blob_index} is past the end of the blob table ({blob_count} blobs)")]
    BlobIndexOutOfRange {
        /// Requested blob index.
        blob_index: u32,
        /// Number of blobs in the table.
        blob_count: usize,
    },
    /// A chunk index is not below the blob's chunk count.
    #[error("chunk {index} of blob {blob_id} is out of range (the blob has {chunk_count} chunks)")]
    ChunkIndexOutOfRange {
        /// Blob id.
        blob_id: String,
        /// Requested chunk index.
        index: u32,
        /// Chunk count of the blob.
        chunk_count: u32,
    },
    /// A chunk's uncompressed range ends past the blob's uncompressed size.
    #[error(
        "chunk {index} of blob {blob_id}: uncompressed range of {size} bytes at offset {offset} \
         ends past the blob's uncompressed size ({blob_size} bytes)"
    )]
    ChunkOutOfBounds {
        /// Blob id.
        blob_id: String,
        /// Chunk index.
        index: u32,
        /// Uncompressed offset of the chunk.
        offset: u64,
        /// Uncompressed size of the chunk.
        size: u32,
        /// Uncompressed size of the blob.
        blob_size: u64,
    },
    /// A chunk is larger than the format allows.
    #[error("chunk {index} of blob {blob_id}: size {size} exceeds the largest chunk size ({max})")]
    ChunkTooLarge {
        /// Blob id.
        blob_id: String,
        /// Chunk index.
        index: u32,
        /// Claimed uncompressed size.
        size: u32,
        /// Format limit.
        max: u32,
    },
}

impl StorageError {
    /// The `io::ErrorKind` closest to this error.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            StorageError::BlobNotFound { .. } => io::ErrorKind::NotFound,
            StorageError::ShortRead { .. } => io::ErrorKind::UnexpectedEof,
            StorageError::BlobIo { source, .. } | StorageError::CacheIo { source, .. } => {
                source.kind()
            }
            StorageError::Http { problem, .. } => problem.kind(),
            StorageError::BackendConfig { .. } => io::ErrorKind::InvalidInput,
            StorageError::InvalidBlobId { .. }
            | StorageError::BlobIndexOutOfRange { .. }
            | StorageError::ChunkIndexOutOfRange { .. } => io::ErrorKind::InvalidInput,
            StorageError::BadAlgorithm { .. }
            | StorageError::TooManyChunks { .. }
            | StorageError::DuplicateBlob { .. }
            | StorageError::ChunkOutOfBounds { .. }
            | StorageError::ChunkTooLarge { .. } => io::ErrorKind::InvalidData,
        }
    }

    /// This error as the [`ChunkError::Io`] of chunk `index` of blob `blob_id`, the form the
    /// [`crate::rafs::chunk::ChunkReader`] seam returns.
    pub fn into_chunk_error(self, blob_id: &str, index: u32) -> ChunkError {
        ChunkError::Io { blob_id: blob_id.to_string(), index, source: self.into() }
    }
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing".to_string();
    }
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}
