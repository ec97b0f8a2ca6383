//! Blob backends: stored blob bytes by blob id and byte range.
//!
//! A backend knows nothing about chunks, compression or digests; it returns exactly the bytes
//! asked for or an error. [`LocalFs`] reads blob files from local directories, like nydusd's
//! `localfs` backend.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::StorageError;

/// Source of stored blob bytes.
pub trait BlobBackend: Send + Sync {
    /// Size in bytes of blob `blob_id`.
    fn blob_size(&self, blob_id: &str) -> Result<u64, StorageError>;

    /// Fill all of `buf` with the bytes of blob `blob_id` starting at `offset`. A range that
    /// ends past the end of the blob is an error ([`StorageError::ShortRead`]), never a partial
    /// fill.
    fn read_at(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;

    /// The `len` bytes of blob `blob_id` at `offset`.
    ///
    /// The range is checked against [`BlobBackend::blob_size`] before the buffer is allocated,
    /// so a corrupt length cannot make us allocate more than the blob holds. Backends whose
    /// `blob_size` is expensive may override this.
    fn read_range(&self, blob_id: &str, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let size = self.blob_size(blob_id)?;
        let len64 = len as u64;
        if offset.checked_add(len64).is_none_or(|end| end > size) {
            self.metrics().record_error();
            return Err(StorageError::ShortRead {
                blob_id: blob_id.to_string(),
                offset,
                len: len64,
                size,
            });
        }
        let mut buf = vec![0u8; len];
        self.read_at(blob_id, offset, &mut buf)?;
        Ok(buf)
    }

    /// Counters of this backend.
    fn metrics(&self) -> &BackendMetrics;
}

/// Read counters of a backend, updated lock-free.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Number of `read_at` calls (successful or not).
    pub read_count: AtomicU64,
    /// Bytes returned by successful reads.
    pub read_bytes: AtomicU64,
    /// Reads that failed.
    pub read_errors: AtomicU64,
}

/// A point-in-time copy of [`BackendMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendMetricsSnapshot {
    /// Number of `read_at` calls (successful or not).
    pub read_count: u64,
    /// Bytes returned by successful reads.
    pub read_bytes: u64,
    /// Reads that failed.
    pub read_errors: u64,
}

impl BackendMetrics {
    /// All counters at zero.
    pub fn new() -> Self {
        Self::default()
    }
    /// Count one successful read of `bytes` bytes.
    pub fn record_read(&self, bytes: u64) {
        self.read_count.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    /// Count one failed read attempt.
    pub fn record_failed_read(&self) {
        self.read_count.fetch_add(1, Ordering::Relaxed);
        self.record_error();
    }
    /// Count one error (a read refused before it was attempted counts here only).
    pub fn record_error(&self) {
        self.read_errors.fetch_add(1, Ordering::Relaxed);
    }
    /// Current values.
    pub fn snapshot(&self) -> BackendMetricsSnapshot {
        BackendMetricsSnapshot {
            read_count: self.read_count.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            read_errors: self.read_errors.load(Ordering::Relaxed),
        }
    }
}

/// Check that `blob_id` can name a file in a directory: non-empty, no `/`, no NUL, not `.` or
/// `..`. Blob ids come from untrusted bootstraps and become file names in backends and caches.
pub fn validate_blob_id(blob_id: &str) -> Result<(), StorageError> {
    let reason = if blob_id.is_empty() {
        "it is empty"
    } else if blob_id.contains('/') {
        "it contains '/'"
    } else if blob_id.contains('\0') {
        "it contains a NUL byte"
    } else if blob_id == "." || blob_id == ".." {
        "it is a directory reference"
    } else {
        return Ok(());
    };
    Err(StorageError::InvalidBlobId { blob_id: blob_id.to_string(), reason })
}

/// Blob files in local directories (nydusd's `localfs` backend).
///
/// Blob `id` is the file `<dir>/<id>`, else `<alt_dir>/<id>` for the first of `alt_dirs` that
/// has it. With a `blob_file`, that one file serves every blob id. Opened files are kept open,
/// one per blob id.
#[derive(Debug)]
pub struct LocalFs {
    dir: PathBuf,
    alt_dirs: Vec<PathBuf>,
    blob_file: Option<PathBuf>,
    /// Open files by blob id; in `blob_file` mode the single file is kept under the key "",
    /// which no valid blob id can collide with.
    files: Mutex<HashMap<String, Arc<File>>>,
    metrics: BackendMetrics,
}

impl LocalFs {
    /// Blobs are files named by their id in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            alt_dirs: Vec::new(),
            blob_file: None,
            files: Mutex::new(HashMap::new()),
            metrics: BackendMetrics::new(),
        }
    }

    /// Also look in these directories, in order, when a blob is not in the main one.
    pub fn with_alt_dirs(mut self, alt_dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        self.alt_dirs.extend(alt_dirs);
        self
    }

    /// One file serves every blob id (nydusd's `blob_file`).
    pub fn from_blob_file(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut fs = Self::new(dir);
        fs.blob_file = Some(path);
        fs
    }

    /// The main directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The alternative directories.
    pub fn alt_dirs(&self) -> &[PathBuf] {
        &self.alt_dirs
    }

    /// The single blob file, when configured.
    pub fn blob_file(&self) -> Option<&Path> {
        self.blob_file.as_deref()
    }

    fn cache_key<'a>(&self, blob_id: &'a str) -> &'a str {
        if self.blob_file.is_some() {
            ""
        } else {
            blob_id
        }
    }

    /// The open file of `blob_id`, opening (and remembering) it on first use.
    fn file(&self, blob_id: &str) -> Result<Arc<File>, StorageError> {
        validate_blob_id(blob_id)?;
        let key = self.cache_key(blob_id);
        if let Some(f) = self.files.lock().get(key) {
            return Ok(Arc::clone(f));
        }
        // Open outside the lock; if another thread won the race, keep its file.
        let opened = Arc::new(self.open(blob_id)?);
        let mut files = self.files.lock();
        Ok(Arc::clone(files.entry(key.to_string()).or_insert(opened)))
    }

    fn open(&self, blob_id: &str) -> Result<File, StorageError> {
        let open_one = |path: &Path| -> Result<Option<File>, StorageError> {
            match File::open(path) {
                Ok(f) => Ok(Some(f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(StorageError::BlobIo {
                    blob_id: blob_id.to_string(),
                    op: "open",
                    path: path.to_path_buf(),
                    source,
                }),
            }
        };
        let candidates: Vec<PathBuf> = match &self.blob_file {
            Some(path) => vec![path.clone()],
            None => std::iter::once(&self.dir)
                .chain(self.alt_dirs.iter())
                .map(|dir| dir.join(blob_id))
                .collect(),
        };
        for path in &candidates {
            if let Some(f) = open_one(path)? {
                return Ok(f);
            }
        }
        Err(StorageError::BlobNotFound { blob_id: blob_id.to_string(), searched: candidates })
    }

    fn path_hint(&self, blob_id: &str) -> PathBuf {
        match &self.blob_file {
            Some(path) => path.clone(),
            None => self.dir.join(blob_id),
        }
    }
}

impl BlobBackend for LocalFs {
    fn blob_size(&self, blob_id: &str) -> Result<u64, StorageError> {
        let file = self.file(blob_id)?;
        file.metadata().map(|m| m.len()).map_err(|source| StorageError::BlobIo {
            blob_id: blob_id.to_string(),
            op: "stat",
            path: self.path_hint(blob_id),
            source,
        })
    }

    fn read_at(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let file = match self.file(blob_id) {
            Ok(f) => f,
            Err(e) => {
                self.metrics.record_failed_read();
                return Err(e);
            }
        };
        let len = buf.len() as u64;
        let result = match offset.checked_add(len) {
            None => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Some(_) => file.read_exact_at(buf, offset),
        };
        match result {
            Ok(()) => {
                self.metrics.record_read(len);
                Ok(())
            }
            Err(e) => {
                self.metrics.record_failed_read();
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    return Err(StorageError::ShortRead {
                        blob_id: blob_id.to_string(),
                        offset,
                        len,
                        size,
                    });
                }
                Err(StorageError::BlobIo {
                    blob_id: blob_id.to_string(),
                    op: "read",
                    path: self.path_hint(blob_id),
                    source: e,
                })
            }
        }
    }

    fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, data: &[u8]) {
        std::fs::write(dir.join(name), data).unwrap();
    }

    #[test]
    fn bad_blob_ids_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "x", b"outside");
        let sub = tmp.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let fs = LocalFs::new(&sub);
        for id in ["../x", "a/b", "", ".", "..", "a\0b", "/etc/passwd"] {
            match fs.blob_size(id) {
                Err(StorageError::InvalidBlobId { blob_id, .. }) => assert_eq!(blob_id, id),
                other => panic!("{id:?}: expected InvalidBlobId, got {other:?}"),
            }
            let mut buf = [0u8; 1];
            assert!(
                matches!(fs.read_at(id, 0, &mut buf), Err(StorageError::InvalidBlobId { .. })),
                "{id:?}"
            );
        }
        assert_eq!(fs.metrics().snapshot().read_bytes, 0);
        // A blob file mode backend validates ids too.
        let single = LocalFs::from_blob_file(tmp.path().join("x"));
        assert!(matches!(single.blob_size("../x"), Err(StorageError::InvalidBlobId { .. })));
        assert!(validate_blob_id("..x").is_ok());
        assert!(validate_blob_id("abc123").is_ok());
    }

    #[test]
    fn missing_blob_names_id_and_every_dir_searched() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let fs = LocalFs::new(&a).with_alt_dirs([b.clone()]);
        let err = fs.blob_size("deadbeef").unwrap_err();
        match &err {
            StorageError::BlobNotFound { blob_id, searched } => {
                assert_eq!(blob_id, "deadbeef");
                assert_eq!(searched, &vec![a.join("deadbeef"), b.join("deadbeef")]);
            }
            other => panic!("expected BlobNotFound, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("deadbeef"), "{msg}");
        assert!(msg.contains(&a.display().to_string()), "{msg}");
        assert!(msg.contains(&b.display().to_string()), "{msg}");
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::NotFound);
        let mut buf = [0u8; 4];
        assert!(fs.read_at("deadbeef", 0, &mut buf).is_err());
        assert_eq!(fs.metrics().snapshot().read_errors, 1);
    }

    #[test]
    fn blobs_are_found_in_dir_then_alt_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let c = tmp.path().join("c");
        for d in [&a, &b, &c] {
            std::fs::create_dir(d).unwrap();
        }
        write(&a, "one", b"from a");
        write(&b, "one", b"from b");
        write(&c, "two", b"from c");
        let fs = LocalFs::new(&a).with_alt_dirs([b, c]);
        assert_eq!(fs.read_range("one", 0, 6).unwrap(), b"from a");
        assert_eq!(fs.read_range("two", 5, 1).unwrap(), b"c");
        assert_eq!(fs.blob_size("two").unwrap(), 6);
        let m = fs.metrics().snapshot();
        assert_eq!(m, BackendMetricsSnapshot { read_count: 2, read_bytes: 7, read_errors: 0 });
    }

    #[test]
    fn blob_file_serves_every_blob_id() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "the-blob", b"0123456789");
        let fs = LocalFs::from_blob_file(tmp.path().join("the-blob"));
        assert_eq!(fs.read_range("aaaa", 2, 3).unwrap(), b"234");
        assert_eq!(fs.read_range("bbbb", 7, 3).unwrap(), b"789");
        assert_eq!(fs.blob_size("cccc").unwrap(), 10);
        assert_eq!(fs.files.lock().len(), 1, "one open file for every id");

        let missing = LocalFs::from_blob_file(tmp.path().join("nope"));
        match missing.blob_size("aaaa") {
            Err(StorageError::BlobNotFound { searched, .. }) => {
                assert_eq!(searched, vec![tmp.path().join("nope")]);
            }
            other => panic!("expected BlobNotFound, got {other:?}"),
        }
    }

    #[test]
    fn reads_past_the_end_are_errors_naming_blob_offset_and_length() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "short", b"12345");
        let fs = LocalFs::new(tmp.path());
        let mut buf = [0u8; 4];
        let err = fs.read_at("short", 3, &mut buf).unwrap_err();
        match &err {
            StorageError::ShortRead { blob_id, offset, len, size } => {
                assert_eq!((blob_id.as_str(), *offset, *len, *size), ("short", 3, 4, 5));
            }
            other => panic!("expected ShortRead, got {other:?}"),
        }
        let msg = err.to_string();
        for part in ["short", "offset 3", "4 bytes"] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
        // read_range refuses before allocating, and an overflowing range is no panic.
        assert!(matches!(
            fs.read_range("short", 0, 1 << 40),
            Err(StorageError::ShortRead { size: 5, .. })
        ));
        assert!(matches!(fs.read_range("short", u64::MAX, 2), Err(StorageError::ShortRead { .. })));
        assert!(fs.read_at("short", u64::MAX, &mut buf).is_err());
        // An empty read at the end is fine.
        assert_eq!(fs.read_range("short", 5, 0).unwrap(), b"");
        let m = fs.metrics().snapshot();
        assert_eq!(m.read_errors, 4);
        assert_eq!(m.read_bytes, 0);
    }
}
