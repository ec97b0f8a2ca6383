//! The chunk cache, and the uncached [`DirectReader`].
//!
//! [`ChunkCache`] keeps the uncompressed, verified bytes of every chunk it has served in a sparse
//! file per blob, `<work_dir>/<blob_id>.blob.data`, at the chunk's `uncompressed_offset`.
//! Which chunks that file holds is recorded in `<work_dir>/<blob_id>.blob.data.chunk_map`:
//!
//! ```text
//! 0      u32 LE magic 0x424D4150
//! 4      u32 LE version 1
//! 8      u32 LE chunk count of the blob
//! 12     zero up to 4096
//! 4096   ceil(chunk_count / 8) bytes: bit i (byte i / 8, bit i % 8) set = chunk i is ready
//! ```
//!
//! Crash safety: a bit is set in memory only after the chunk was verified and written; the
//! bitmap on disk is replaced (temp file, fsync, rename, directory fsync) only after the data
//! file was synced, and only with bits that were set before that sync. So the bitmap on disk
//! never claims a chunk whose bytes may not be on disk. A bitmap that does not match the blob
//! (magic, version, chunk count, length) or a data file of the wrong size makes the cache start
//! empty for that blob: data-file bytes are never trusted without a bit.
//!
//! The cache trusts that the chunk table is consistent (one uncompressed range per chunk index,
//! ranges not overlapping). With `validate`, every hit is re-verified, which also catches a
//! cache file damaged behind our back; a hit that fails is dropped and refetched.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::backend::{validate_blob_id, BlobBackend};
use super::StorageError;
use crate::rafs::chunk::{decompress, verify, ChunkError, ChunkReader, ChunkRef};
use crate::rafs::layout::{BlobEntry, Compressor, Digester, MAX_CHUNKS_PER_BLOB, MAX_CHUNK_SIZE};

/// Magic at offset 0 of a chunk map file ("BMAP" read as a little-endian u32).
pub const CHUNK_MAP_MAGIC: u32 = 0x424D_4150;
/// Version of the chunk map format.
pub const CHUNK_MAP_VERSION: u32 = 1;
/// Size of the chunk map header; the bitmap follows it.
pub const CHUNK_MAP_HEADER_SIZE: usize = 4096;
/// The cache flushes a blob after this many of its chunks became ready since the last flush.
pub const AUTO_FLUSH_EVERY: u32 = 64;
/// Auto-flushes of one cache run at most this often (explicit flushes and drop are immediate).
pub const MIN_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What a reader needs to know about one blob of the blob table, checked once.
#[derive(Debug)]
struct BlobInfo {
    blob_id: String,
    chunk_count: u32,
    uncompressed_size: u64,
    compressor: Compressor,
    digester: Digester,
}

impl BlobInfo {
    fn from_entry(entry: &BlobEntry) -> Result<Self, StorageError> {
        validate_blob_id(&entry.blob_id)?;
        let bad = |source| StorageError::BadAlgorithm { blob_id: entry.blob_id.clone(), source };
        let compressor = Compressor::from_u32(entry.compression_algo).map_err(bad)?;
        let digester = Digester::from_u32(entry.digest_algo).map_err(bad)?;
        if entry.chunk_count > MAX_CHUNKS_PER_BLOB {
            return Err(StorageError::TooManyChunks {
                blob_id: entry.blob_id.clone(),
                chunk_count: entry.chunk_count,
                max: MAX_CHUNKS_PER_BLOB,
            });
        }
        Ok(Self {
            blob_id: entry.blob_id.clone(),
            chunk_count: entry.chunk_count,
            uncompressed_size: entry.uncompressed_size,
            compressor,
            digester,
        })
    }

    /// Check that `chunk` lies inside this blob.
    fn check(&self, chunk: &ChunkRef) -> Result<(), ChunkError> {
        let err = |e: StorageError| e.into_chunk_error(&self.blob_id, chunk.index);
        if chunk.index >= self.chunk_count {
            return Err(err(StorageError::ChunkIndexOutOfRange {
                blob_id: self.blob_id.clone(),
                index: chunk.index,
                chunk_count: self.chunk_count,
            }));
        }
        if chunk.uncompressed_size > MAX_CHUNK_SIZE {
            return Err(err(StorageError::ChunkTooLarge {
                blob_id: self.blob_id.clone(),
                index: chunk.index,
                size: chunk.uncompressed_size,
                max: MAX_CHUNK_SIZE,
            }));
        }
        let end = chunk.uncompressed_offset.checked_add(u64::from(chunk.uncompressed_size));
        if end.is_none_or(|end| end > self.uncompressed_size) {
            return Err(err(StorageError::ChunkOutOfBounds {
                blob_id: self.blob_id.clone(),
                index: chunk.index,
                offset: chunk.uncompressed_offset,
                size: chunk.uncompressed_size,
                blob_size: self.uncompressed_size,
            }));
        }
        Ok(())
    }

    /// The stored bytes of `chunk`, from the backend.
    fn fetch(&self, backend: &dyn BlobBackend, chunk: &ChunkRef) -> Result<Vec<u8>, ChunkError> {
        backend
            .read_range(&self.blob_id, chunk.compressed_offset, chunk.compressed_size as usize)
            .map_err(|e| e.into_chunk_error(&self.blob_id, chunk.index))
    }

    /// The uncompressed bytes of `chunk` from its stored bytes, verified against its digest.
    fn decode(&self, chunk: &ChunkRef, stored: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let data = decompress(self.compressor, chunk, stored)?;
        verify(self.digester, chunk, &data)?;
        Ok(data)
    }
}

/// The error for a chunk whose blob index is past the end of the blob table.
fn no_such_blob(chunk: &ChunkRef, blob_count: usize) -> ChunkError {
    StorageError::BlobIndexOutOfRange { blob_index: chunk.blob_index, blob_count }
        .into_chunk_error(&format!("#{}", chunk.blob_index), chunk.index)
}

/// Reads every chunk from the backend: fetch, decompress and verify on each call, no cache.
/// For whole-image passes (`check`, `unpack`) that read each chunk once.
pub struct DirectReader {
    backend: Arc<dyn BlobBackend>,
    blobs: Vec<BlobInfo>,
}

impl DirectReader {
    /// A reader over `backend` for the blob table `blobs` (blob index i is `blobs[i]`). Fails on
    /// an invalid blob id or an unknown compressor or digester.
    pub fn new(backend: Arc<dyn BlobBackend>, blobs: &[BlobEntry]) -> Result<Self, StorageError> {
        let blobs = blobs.iter().map(BlobInfo::from_entry).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { backend, blobs })
    }
}

impl fmt::Debug for DirectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectReader").field("blobs", &self.blobs).finish_non_exhaustive()
    }
}

impl ChunkReader for DirectReader {
    fn read_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>, ChunkError> {
        let info = self
            .blobs
            .get(chunk.blob_index as usize)
            .ok_or_else(|| no_such_blob(chunk, self.blobs.len()))?;
        info.check(chunk)?;
        let stored = info.fetch(self.backend.as_ref(), chunk)?;
        Ok(Arc::new(info.decode(chunk, &stored)?))
    }
}

/// Counters of a [`ChunkCache`], copied at one point in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheMetrics {
    /// Reads served from the cache file.
    pub hits: u64,
    /// Reads of chunks that were not ready (they fetched, or waited for another fetch).
    pub misses: u64,
    /// Backend fetches made.
    pub backend_fetches: u64,
    /// Stored bytes fetched from the backend.
    pub fetch_bytes: u64,
    /// Digest mismatches, of fetched chunks and (with `validate`) of cached ones.
    pub digest_errors: u64,
    /// Failed reads, writes and flushes of cache files (the reads themselves were still
    /// answered, from the backend when needed).
    pub cache_io_errors: u64,
    /// Ready chunks per blob, by blob index.
    pub ready: Vec<u32>,
}

impl CacheMetrics {
    /// Ready chunks of blob `blob_index`, `None` past the blob table.
    pub fn ready_count(&self, blob_index: u32) -> Option<u32> {
        self.ready.get(blob_index as usize).copied()
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    backend_fetches: AtomicU64,
    fetch_bytes: AtomicU64,
    digest_errors: AtomicU64,
    cache_io_errors: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Readiness bits of one blob, in memory.
#[derive(Debug)]
struct ReadyMap {
    bits: Vec<u8>,
    ready: u32,
    /// Bumped on every change; compared with the generation last written to disk.
    generation: u64,
    /// Chunks that became ready since the last flush (or auto-flush trigger).
    since_flush: u32,
}

impl ReadyMap {
    fn get(&self, index: u32) -> bool {
        self.bits.get(index as usize / 8).is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    /// Set bit `index`; true when that makes an auto-flush due.
    fn set(&mut self, index: u32) -> bool {
        let Some(byte) = self.bits.get_mut(index as usize / 8) else { return false };
        let mask = 1 << (index % 8);
        if *byte & mask != 0 {
            return false;
        }
        *byte |= mask;
        self.ready += 1;
        self.generation += 1;
        self.since_flush += 1;
        if self.since_flush >= AUTO_FLUSH_EVERY {
            self.since_flush = 0;
            return true;
        }
        false
    }

    fn clear(&mut self, index: u32) {
        if let Some(byte) = self.bits.get_mut(index as usize / 8) {
            let mask = 1 << (index % 8);
            if *byte & mask != 0 {
                *byte &= !mask;
                self.ready -= 1;
                self.generation += 1;
            }
        }
    }
}

/// One blob of the cache: its files and readiness.
struct CachedBlob {
    info: BlobInfo,
    data: File,
    data_path: PathBuf,
    map_path: PathBuf,
    state: Mutex<ReadyMap>,
    /// Generation of the bitmap on disk; holding this lock serialises flushes of the blob.
    flushed: Mutex<u64>,
}

impl CachedBlob {
    fn open(work_dir: &Path, info: BlobInfo) -> Result<Self, StorageError> {
        let data_path = work_dir.join(format!("{}.blob.data", info.blob_id));
        let map_path = work_dir.join(format!("{}.blob.data.chunk_map", info.blob_id));
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(cache_io("open", &data_path))?;
        let len = data.metadata().map_err(cache_io("stat", &data_path))?.len();
        // A data file of another size than the blob was damaged or belongs to something else:
        // whatever its bitmap says is not trusted.
        let loaded = if len == info.uncompressed_size {
            load_chunk_map(&map_path, info.chunk_count)?
        } else {
            None
        };
        let bits = match loaded {
            Some(bits) => bits,
            None => {
                // Remove the untrusted bitmap durably before touching the data file, so that a
                // crash cannot leave it next to a data file it does not describe.
                discard_chunk_map(work_dir, &map_path)?;
                if len != info.uncompressed_size {
                    data.set_len(info.uncompressed_size).map_err(cache_io("resize", &data_path))?;
                }
                vec![0u8; bitmap_len(info.chunk_count)]
            }
        };
        let ready = bits.iter().map(|b| b.count_ones()).sum();
        Ok(Self {
            info,
            data,
            data_path,
            map_path,
            state: Mutex::new(ReadyMap { bits, ready, generation: 0, since_flush: 0 }),
            flushed: Mutex::new(0),
        })
    }

    fn is_ready(&self, index: u32) -> bool {
        self.state.lock().get(index)
    }
}

/// Result of a fetch as shared with the threads that waited for it.
type Shared = Result<Arc<Vec<u8>>, String>;

/// One in-flight fetch: the fetching thread fills `result`, the waiters sleep on `done`.
#[derive(Default)]
struct Slot {
    result: Mutex<Option<Shared>>,
    done: Condvar,
    /// Filled by prefetch: a failure is not the waiting reader's, which then fetches itself.
    prefetch: bool,
}

impl Slot {
    fn wait(&self) -> Shared {
        let mut result = self.result.lock();
        if result.is_none() {
            crate::slow::ahead();
        }
        loop {
            if let Some(r) = result.as_ref() {
                return r.clone();
            }
            self.done.wait(&mut result);
        }
    }
}

type InFlight = Mutex<HashMap<(u32, u32), Arc<Slot>>>;

/// The thread fetching a chunk. Publishes the outcome to the waiters and retires the slot;
/// if dropped without an outcome (a panic), waiters get an error instead of hanging.
struct Leader<'a> {
    inflight: &'a InFlight,
    key: (u32, u32),
    slot: Arc<Slot>,
    finished: bool,
}

impl Leader<'_> {
    fn publish(&mut self, outcome: Shared) {
        self.finished = true;
        {
            let mut map = self.inflight.lock();
            if map.get(&self.key).is_some_and(|s| Arc::ptr_eq(s, &self.slot)) {
                map.remove(&self.key);
            }
        }
        *self.slot.result.lock() = Some(outcome);
        self.slot.done.notify_all();
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.publish(Err("the fetching thread stopped without a result".to_string()));
        }
    }
}

/// A [`ChunkReader`] that keeps verified chunks in local files (see the module docs for the
/// on-disk format and its crash-safety rules). Concurrent reads of a chunk that is not ready
/// share one backend fetch.
pub struct ChunkCache {
    work_dir: PathBuf,
    backend: Arc<dyn BlobBackend>,
    blobs: Vec<Arc<CachedBlob>>,
    validate: bool,
    inflight: InFlight,
    /// Chunks readers are fetching from the backend right now (not prefetch): prefetch holds
    /// back its next request while this is non-zero, so readers get the link.
    demand: std::sync::atomic::AtomicUsize,
    counters: Arc<Counters>,
    /// Auto-flushes run on this thread, off the path of the reader that made them due (a
    /// flush syncs the data file: tens of ms a reader should not wait for).
    flusher: Option<(std::sync::mpsc::Sender<Arc<CachedBlob>>, std::thread::JoinHandle<()>)>,
}

impl fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.blobs.iter().map(|b| b.info.blob_id.as_str()).collect();
        f.debug_struct("ChunkCache")
            .field("work_dir", &self.work_dir)
            .field("blobs", &ids)
            .field("validate", &self.validate)
            .finish_non_exhaustive()
    }
}

impl ChunkCache {
    /// A cache in `work_dir` (created if missing) over `backend` for the blob table `blobs`
    /// (blob index i is `blobs[i]`), picking up what an earlier cache in `work_dir` left.
    ///
    /// With `validate`, bytes read back from the cache files are verified on every hit (fetched
    /// bytes are always verified). Fails on an invalid or duplicate blob id, an unknown
    /// compressor or digester, or an I/O error on the cache files.
    pub fn open(
        work_dir: &Path,
        backend: Arc<dyn BlobBackend>,
        blobs: &[BlobEntry],
        validate: bool,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(work_dir).map_err(cache_io("create", work_dir))?;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut cached = Vec::with_capacity(blobs.len());
        for (i, entry) in blobs.iter().enumerate() {
            let info = BlobInfo::from_entry(entry)?;
            if let Some(&first) = seen.get(entry.blob_id.as_str()) {
                return Err(StorageError::DuplicateBlob {
                    blob_id: entry.blob_id.clone(),
                    first,
                    second: i,
                });
            }
            seen.insert(&entry.blob_id, i);
            cached.push(Arc::new(CachedBlob::open(work_dir, info)?));
        }
        let counters = Arc::new(Counters::default());
        let flusher = {
            let (tx, rx) = std::sync::mpsc::channel::<Arc<CachedBlob>>();
            let (dir, counters) = (work_dir.to_path_buf(), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("strata-cache-flush".into())
                .spawn(move || {
                    // Auto-flushes are coalesced to one per MIN_FLUSH_INTERVAL: each syncs
                    // the data file, whose I/O competes with cold reads, and a lost bit only
                    // costs a refetch after a crash. Drop and `flush()` are not delayed.
                    // No subtraction from Instant::now(): that panics on a clock younger than
                    // the interval (a daemon started right after boot).
                    let mut last: Option<std::time::Instant> = None;
                    while let Ok(first) = rx.recv() {
                        let wait = last.map_or(std::time::Duration::ZERO, |l| {
                            MIN_FLUSH_INTERVAL.saturating_sub(l.elapsed())
                        });
                        let mut due = vec![first];
                        // Gather requests arriving during the pause; a closed channel (the
                        // cache is dropping) ends the pause at once.
                        let until = std::time::Instant::now() + wait;
                        loop {
                            let left = until.saturating_duration_since(std::time::Instant::now());
                            match rx.recv_timeout(left) {
                                Ok(b) => due.push(b),
                                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                            }
                        }
                        due.sort_by_key(|b| Arc::as_ptr(b) as usize);
                        due.dedup_by_key(|b| Arc::as_ptr(b) as usize);
                        for blob in due {
                            if flush_blob(&dir, &blob).is_err() {
                                // The bits stay set in memory; the next flush retries.
                                bump(&counters.cache_io_errors, 1);
                            }
                        }
                        last = Some(std::time::Instant::now());
                    }
                })
                .ok()
                .map(|h| (tx, h))
        };
        Ok(Self {
            work_dir: work_dir.to_path_buf(),
            backend,
            blobs: cached,
            validate,
            inflight: Mutex::new(HashMap::new()),
            demand: std::sync::atomic::AtomicUsize::new(0),
            counters,
            flusher,
        })
    }

    /// The directory holding the cache files.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Number of blobs in the cache's blob table.
    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    /// True when chunk `index` of blob `blob_index` is in the cache (false when either is out
    /// of range).
    pub fn is_ready(&self, blob_index: u32, index: u32) -> bool {
        self.blobs.get(blob_index as usize).is_some_and(|b| b.is_ready(index))
    }

    /// Number of ready chunks of blob `blob_index`, `None` past the blob table.
    pub fn ready_count(&self, blob_index: u32) -> Option<u32> {
        self.blobs.get(blob_index as usize).map(|b| b.state.lock().ready)
    }

    /// Current counters.
    pub fn metrics(&self) -> CacheMetrics {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheMetrics {
            hits: get(&c.hits),
            misses: get(&c.misses),
            backend_fetches: get(&c.backend_fetches),
            fetch_bytes: get(&c.fetch_bytes),
            digest_errors: get(&c.digest_errors),
            cache_io_errors: get(&c.cache_io_errors),
            ready: self.blobs.iter().map(|b| b.state.lock().ready).collect(),
        }
    }

    /// Make the readiness of every blob durable: sync the data files, then replace the chunk
    /// maps. Blobs with no change since their last flush are skipped. Every blob is attempted;
    /// the first error is returned. Runs on its own every [`AUTO_FLUSH_EVERY`] newly ready
    /// chunks of a blob and on drop (where errors cannot be reported; call this to see them).
    pub fn flush(&self) -> Result<(), StorageError> {
        let mut first = None;
        for blob in &self.blobs {
            if let Err(e) = self.flush_blob(blob) {
                bump(&self.counters.cache_io_errors, 1);
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn flush_blob(&self, blob: &CachedBlob) -> Result<(), StorageError> {
        flush_blob(&self.work_dir, blob)
    }

    /// Flush `blob` on the flusher thread (inline if there is none).
    fn flush_in_background(&self, blob: &Arc<CachedBlob>) {
        let queued = self.flusher.as_ref().is_some_and(|(tx, _)| tx.send(Arc::clone(blob)).is_ok());
        if !queued && self.flush_blob(blob).is_err() {
            bump(&self.counters.cache_io_errors, 1);
        }
    }
}

/// Make one blob's readiness durable (see [`ChunkCache::flush`]).
fn flush_blob(work_dir: &Path, blob: &CachedBlob) -> Result<(), StorageError> {
    let mut flushed = blob.flushed.lock();
    // Snapshot first, sync second: every bit in the snapshot was set after its chunk's
    // write returned, so the sync below covers all of them. (Snapshotting after the sync
    // could capture a chunk written after it.)
    let (bits, generation) = {
        let mut state = blob.state.lock();
        state.since_flush = 0;
        (state.bits.clone(), state.generation)
    };
    if generation == *flushed {
        return Ok(());
    }
    blob.data.sync_data().map_err(cache_io("sync", &blob.data_path))?;
    write_chunk_map(work_dir, &blob.map_path, blob.info.chunk_count, &bits)?;
    *flushed = generation;
    Ok(())
}

impl ChunkCache {
    /// The cached bytes of a ready chunk; `None` (and the chunk no longer ready) when they
    /// cannot be read or, with `validate`, do not verify.
    fn try_hit(&self, blob: &CachedBlob, chunk: &ChunkRef) -> Option<Arc<Vec<u8>>> {
        let read = crate::sys::read_exact_at_vec(
            &blob.data,
            chunk.uncompressed_size as usize,
            chunk.uncompressed_offset,
        );
        let Ok(buf) = read else {
            bump(&self.counters.cache_io_errors, 1);
            blob.state.lock().clear(chunk.index);
            return None;
        };
        if self.validate && verify(blob.info.digester, chunk, &buf).is_err() {
            bump(&self.counters.digest_errors, 1);
            blob.state.lock().clear(chunk.index);
            return None;
        }
        bump(&self.counters.hits, 1);
        Some(Arc::new(buf))
    }

    /// Fetch, verify and store a chunk. Returns the bytes and whether an auto-flush is due.
    fn fetch_and_store(
        &self,
        blob: &CachedBlob,
        chunk: &ChunkRef,
    ) -> (Result<Arc<Vec<u8>>, ChunkError>, bool) {
        bump(&self.counters.backend_fetches, 1);
        crate::slow::ahead();
        let stored = match blob.info.fetch(self.backend.as_ref(), chunk) {
            Ok(stored) => stored,
            Err(e) => return (Err(e), false),
        };
        bump(&self.counters.fetch_bytes, stored.len() as u64);
        match self.store(blob, chunk, &stored) {
            Ok((data, _, flush_due)) => (Ok(Arc::new(data)), flush_due),
            Err(e) => (Err(e), false),
        }
    }

    /// Decode and verify a chunk's `stored` bytes, write them to the cache file and mark the
    /// chunk ready. Returns the bytes, whether they were written (the bit is set only once the
    /// verified bytes are; a failed write leaves the chunk not ready, the bytes are still good)
    /// and whether an auto-flush is due.
    fn store(
        &self,
        blob: &CachedBlob,
        chunk: &ChunkRef,
        stored: &[u8],
    ) -> Result<(Vec<u8>, bool, bool), ChunkError> {
        let data = blob.info.decode(chunk, stored).inspect_err(|e| {
            if matches!(e, ChunkError::DigestMismatch { .. }) {
                bump(&self.counters.digest_errors, 1);
            }
        })?;
        match blob.data.write_all_at(&data, chunk.uncompressed_offset) {
            Ok(()) => {
                let flush_due = blob.state.lock().set(chunk.index);
                Ok((data, true, flush_due))
            }
            Err(_) => {
                bump(&self.counters.cache_io_errors, 1);
                Ok((data, false, false))
            }
        }
    }
}

/// Counts one reader's backend fetch for as long as it lives.
struct DemandFetch<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> DemandFetch<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for DemandFetch<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What one [`ChunkCache::fill_range`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filled {
    /// Whether a backend request was made (false when every chunk was ready or being fetched).
    pub fetched: bool,
    /// Stored bytes fetched.
    pub bytes: u64,
    /// Chunks verified and stored.
    pub chunks: usize,
}

impl ChunkCache {
    /// Chunks readers are fetching from the backend at this moment (prefetch excluded).
    pub fn demand_fetches(&self) -> usize {
        self.demand.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Prefetch: fetch the stored bytes `[offset, offset+len)` of blob `blob_index` with one
    /// backend request and store every chunk of `chunks` inside that range that is neither
    /// ready nor being fetched. A reader wanting one of those chunks meanwhile waits for this
    /// request instead of fetching again. Chunks outside the range are skipped; the range is
    /// trimmed to the chunks still needed. A chunk that fails to verify is not stored (and
    /// its waiting readers fetch it themselves); the first such error is returned after the
    /// others were stored.
    pub fn fill_range(
        &self,
        blob_index: u32,
        offset: u64,
        len: u64,
        chunks: &[ChunkRef],
    ) -> Result<Filled, ChunkError> {
        let Some(blob) = self.blobs.get(blob_index as usize) else {
            return Err(StorageError::BlobIndexOutOfRange {
                blob_index,
                blob_count: self.blobs.len(),
            }
            .into_chunk_error(&format!("#{blob_index}"), 0));
        };
        let end = offset.saturating_add(len);
        let mut mine: Vec<(ChunkRef, Leader<'_>)> = Vec::new();
        {
            let mut inflight = self.inflight.lock();
            for c in chunks {
                let inside = c.blob_index == blob_index
                    && c.compressed_offset >= offset
                    && c.compressed_offset.saturating_add(u64::from(c.compressed_size)) <= end;
                if !inside || blob.info.check(c).is_err() || blob.is_ready(c.index) {
                    continue;
                }
                let key = (blob_index, c.index);
                if inflight.contains_key(&key) || mine.iter().any(|(m, _)| m.index == c.index) {
                    continue;
                }
                let slot = Arc::new(Slot { prefetch: true, ..Slot::default() });
                inflight.insert(key, Arc::clone(&slot));
                mine.push((*c, Leader { inflight: &self.inflight, key, slot, finished: false }));
            }
        }
        if mine.is_empty() {
            return Ok(Filled::default());
        }
        let from = mine.iter().map(|(c, _)| c.compressed_offset).min().unwrap_or(offset);
        let to = mine
            .iter()
            .map(|(c, _)| c.compressed_offset + u64::from(c.compressed_size))
            .max()
            .unwrap_or(end);
        let stored = match self.backend.read_range(&blob.info.blob_id, from, (to - from) as usize) {
            Ok(b) => b,
            Err(e) => {
                let e = e.into_chunk_error(&blob.info.blob_id, mine[0].0.index);
                for (_, mut l) in mine {
                    l.publish(Err(e.to_string()));
                }
                return Err(e);
            }
        };
        bump(&self.counters.fetch_bytes, stored.len() as u64);
        let mut filled = Filled { fetched: true, bytes: stored.len() as u64, chunks: 0 };
        let mut first_err = None;
        let mut flush_due = false;
        for (c, mut leader) in mine {
            let at = (c.compressed_offset - from) as usize;
            match self.store(blob, &c, &stored[at..at + c.compressed_size as usize]) {
                Ok((data, written, due)) => {
                    flush_due |= due;
                    filled.chunks += usize::from(written);
                    leader.publish(Ok(Arc::new(data)));
                }
                Err(e) => {
                    leader.publish(Err(e.to_string()));
                    first_err.get_or_insert(e);
                }
            }
        }
        if flush_due {
            self.flush_in_background(blob);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(filled),
        }
    }
}

impl ChunkReader for ChunkCache {
    fn is_cached(&self, chunk: &ChunkRef) -> bool {
        self.blobs.get(chunk.blob_index as usize).is_some_and(|b| b.is_ready(chunk.index))
    }

    fn read_chunk_range(
        &self,
        chunk: &ChunkRef,
        offset: u32,
        len: u32,
    ) -> Result<Vec<u8>, ChunkError> {
        // A ready chunk without `validate`: read only the requested bytes from the cache file
        // (a 4 KiB read of a 1 MiB chunk copies 4 KiB, not 1 MiB). Validation needs the whole
        // chunk, and so does a miss.
        if !self.validate {
            if let Some(blob) = self.blobs.get(chunk.blob_index as usize) {
                blob.info.check(chunk)?;
                let from = offset.min(chunk.uncompressed_size);
                let to = from.saturating_add(len).min(chunk.uncompressed_size);
                if blob.is_ready(chunk.index) {
                    let at = chunk.uncompressed_offset + u64::from(from);
                    if let Ok(buf) =
                        crate::sys::read_exact_at_vec(&blob.data, (to - from) as usize, at)
                    {
                        bump(&self.counters.hits, 1);
                        return Ok(buf);
                    }
                    bump(&self.counters.cache_io_errors, 1);
                    blob.state.lock().clear(chunk.index);
                }
            }
        }
        Ok(crate::rafs::chunk::clip(&self.read_chunk(chunk)?, offset, len).to_vec())
    }

    fn read_chunk(&self, chunk: &ChunkRef) -> Result<Arc<Vec<u8>>, ChunkError> {
        let blob = self
            .blobs
            .get(chunk.blob_index as usize)
            .ok_or_else(|| no_such_blob(chunk, self.blobs.len()))?;
        blob.info.check(chunk)?;
        let key = (chunk.blob_index, chunk.index);
        // After two cached copies failed to read back, stop trusting the bit and fetch.
        let mut failed_hits = 0;
        loop {
            let trust_bit = failed_hits < 2;
            if trust_bit && blob.is_ready(chunk.index) {
                match self.try_hit(blob, chunk) {
                    Some(bytes) => return Ok(bytes),
                    None => {
                        failed_hits += 1;
                        continue;
                    }
                }
            }
            let mut inflight = self.inflight.lock();
            // A fetch sets the bit before it retires its slot, so checking the bit under the
            // in-flight lock means a chunk is fetched once, not once more by a late reader.
            if trust_bit && blob.is_ready(chunk.index) {
                continue;
            }
            bump(&self.counters.misses, 1);
            if let Some(slot) = inflight.get(&key).cloned() {
                drop(inflight);
                if slot.prefetch {
                    match slot.wait() {
                        Ok(bytes) => return Ok(bytes),
                        // The prefetch failed; this reader tries for itself.
                        Err(_) => continue,
                    }
                }
                return slot.wait().map_err(|message| ChunkError::Io {
                    blob_id: blob.info.blob_id.clone(),
                    index: chunk.index,
                    source: io::Error::other(message),
                });
            }
            let slot = Arc::new(Slot::default());
            inflight.insert(key, Arc::clone(&slot));
            drop(inflight);

            let mut leader = Leader { inflight: &self.inflight, key, slot, finished: false };
            let _demand = DemandFetch::new(&self.demand);
            let (result, flush_due) = self.fetch_and_store(blob, chunk);
            leader.publish(match &result {
                Ok(bytes) => Ok(Arc::clone(bytes)),
                Err(e) => Err(e.to_string()),
            });
            if flush_due {
                self.flush_in_background(blob);
            }
            return result;
        }
    }
}

impl Drop for ChunkCache {
    fn drop(&mut self) {
        // Let queued auto-flushes finish, then flush what is left. Errors are counted but
        // cannot be reported; losing them only loses cache state.
        if let Some((tx, handle)) = self.flusher.take() {
            drop(tx);
            let _ = handle.join();
        }
        let _ = self.flush();
    }
}

/// The readiness bits a cache in `work_dir` keeps for `blob` (bit `i` of byte `i / 8` set:
/// chunk `i` is ready), read without opening the cache or changing any file. `None` when the
/// cache holds nothing trusted for the blob: no chunk map, a map that does not match the blob,
/// or a data file of the wrong size (the rules [`ChunkCache::open`] applies). For planners
/// that skip cached chunks; a running cache's [`ChunkCache::is_ready`] is the live answer.
pub fn read_ready_bits(work_dir: &Path, blob: &BlobEntry) -> Result<Option<Vec<u8>>, StorageError> {
    let info = BlobInfo::from_entry(blob)?;
    let data_path = work_dir.join(format!("{}.blob.data", info.blob_id));
    let map_path = work_dir.join(format!("{}.blob.data.chunk_map", info.blob_id));
    match std::fs::metadata(&data_path) {
        Ok(m) if m.len() == info.uncompressed_size => load_chunk_map(&map_path, info.chunk_count),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(cache_io("stat", &data_path)(e)),
    }
}

fn cache_io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::CacheIo { op, path: path.to_path_buf(), source }
}

fn bitmap_len(chunk_count: u32) -> usize {
    (chunk_count as usize).div_ceil(8)
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// The bitmap in `raw` if it is a well-formed chunk map for `chunk_count` chunks.
fn parse_chunk_map(raw: &[u8], chunk_count: u32) -> Option<Vec<u8>> {
    if raw.len() != CHUNK_MAP_HEADER_SIZE + bitmap_len(chunk_count)
        || le32(raw, 0)? != CHUNK_MAP_MAGIC
        || le32(raw, 4)? != CHUNK_MAP_VERSION
        || le32(raw, 8)? != chunk_count
        || raw.get(12..CHUNK_MAP_HEADER_SIZE)?.iter().any(|&b| b != 0)
    {
        return None;
    }
    let bits = raw.get(CHUNK_MAP_HEADER_SIZE..)?.to_vec();
    // Bits past the last chunk must be clear; set ones mean the file is not ours.
    let tail = chunk_count % 8;
    if tail != 0 && bits.last().is_some_and(|&last| last >> tail != 0) {
        return None;
    }
    Some(bits)
}

/// The chunk map at `path`: `None` when absent or malformed.
fn load_chunk_map(path: &Path, chunk_count: u32) -> Result<Option<Vec<u8>>, StorageError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cache_io("open", path)(e)),
    };
    let expected = (CHUNK_MAP_HEADER_SIZE + bitmap_len(chunk_count)) as u64;
    if file.metadata().map_err(cache_io("stat", path))?.len() != expected {
        return Ok(None);
    }
    let mut raw = Vec::with_capacity(expected as usize);
    file.read_to_end(&mut raw).map_err(cache_io("read", path))?;
    Ok(parse_chunk_map(&raw, chunk_count))
}

/// Remove the chunk map at `path`, durably, if there is one.
fn discard_chunk_map(dir: &Path, path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(cache_io("remove", path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(cache_io("sync", dir))
}

/// Replace the chunk map at `path` atomically and durably.
fn write_chunk_map(
    dir: &Path,
    path: &Path,
    chunk_count: u32,
    bits: &[u8],
) -> Result<(), StorageError> {
    let mut raw = vec![0u8; CHUNK_MAP_HEADER_SIZE];
    raw[0..4].copy_from_slice(&CHUNK_MAP_MAGIC.to_le_bytes());
    raw[4..8].copy_from_slice(&CHUNK_MAP_VERSION.to_le_bytes());
    raw[8..12].copy_from_slice(&chunk_count.to_le_bytes());
    raw.extend_from_slice(bits);

    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(&raw).and_then(|()| f.sync_all()))
        .map_err(cache_io("write", &tmp));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(cache_io("rename", &tmp))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rafs::chunk::compress;
    use crate::storage::backend::{BackendMetrics, LocalFs};
    use std::sync::Barrier;
    use std::time::Duration;

    const BLOB_ID: &str = "5eed0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";

    /// Pseudo-random bytes (xorshift64), incompressible.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    }

    /// A compressible 1 MiB pattern, a small chunk, an incompressible one, an odd-sized one.
    fn sample_chunks() -> Vec<Vec<u8>> {
        vec![
            (0..1u32 << 20).map(|i| (i % 251) as u8).collect(),
            b"a small chunk".to_vec(),
            noise(200_000, 0x9e37_79b9_7f4a_7c15),
            (0..10_007u32).map(|i| b"strata "[(i % 7) as usize] ^ (i / 700) as u8).collect(),
        ]
    }

    /// Write blob `blob_id` holding `datas` into `dir`, as a builder would.
    fn build_blob(
        dir: &Path,
        blob_id: &str,
        blob_index: u32,
        compressor: Compressor,
        digester: Digester,
        datas: &[Vec<u8>],
    ) -> (BlobEntry, Vec<ChunkRef>) {
        let mut blob = Vec::new();
        let mut chunks = Vec::new();
        let mut uncompressed_end = 0u64;
        for (i, data) in datas.iter().enumerate() {
            let stored = compress(compressor, data).unwrap();
            let (bytes, compressed) = match &stored {
                Some(s) => (s.as_slice(), true),
                None => (data.as_slice(), false),
            };
            chunks.push(ChunkRef {
                digest: digester.digest(data),
                blob_index,
                index: i as u32,
                compressed_offset: blob.len() as u64,
                compressed_size: bytes.len() as u32,
                uncompressed_offset: uncompressed_end,
                uncompressed_size: data.len() as u32,
                compressed,
            });
            blob.extend_from_slice(bytes);
            uncompressed_end = (uncompressed_end + data.len() as u64).next_multiple_of(4096);
        }
        std::fs::write(dir.join(blob_id), &blob).unwrap();
        let entry = BlobEntry {
            blob_id: blob_id.to_string(),
            blob_index,
            chunk_size: 1 << 20,
            chunk_count: datas.len() as u32,
            compression_algo: compressor.to_u32(),
            digest_algo: digester.to_u32(),
            compressed_size: blob.len() as u64,
            uncompressed_size: uncompressed_end,
            ..Default::default()
        };
        (entry, chunks)
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        blob_dir: PathBuf,
        work_dir: PathBuf,
        entry: BlobEntry,
        chunks: Vec<ChunkRef>,
        datas: Vec<Vec<u8>>,
    }

    impl Fixture {
        fn new(compressor: Compressor, digester: Digester) -> Self {
            Self::with_chunks(compressor, digester, sample_chunks())
        }

        fn with_chunks(compressor: Compressor, digester: Digester, datas: Vec<Vec<u8>>) -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let blob_dir = tmp.path().join("blobs");
            let work_dir = tmp.path().join("cache");
            std::fs::create_dir(&blob_dir).unwrap();
            let (entry, chunks) = build_blob(&blob_dir, BLOB_ID, 0, compressor, digester, &datas);
            Self { _tmp: tmp, blob_dir, work_dir, entry, chunks, datas }
        }

        fn backend(&self) -> Arc<LocalFs> {
            Arc::new(LocalFs::new(&self.blob_dir))
        }

        fn cache(&self, backend: Arc<dyn BlobBackend>, validate: bool) -> ChunkCache {
            ChunkCache::open(&self.work_dir, backend, std::slice::from_ref(&self.entry), validate)
                .unwrap()
        }

        fn data_path(&self) -> PathBuf {
            self.work_dir.join(format!("{BLOB_ID}.blob.data"))
        }

        fn map_path(&self) -> PathBuf {
            self.work_dir.join(format!("{BLOB_ID}.blob.data.chunk_map"))
        }

        /// Index of the incompressible chunk, stored raw.
        fn raw_chunk(&self) -> usize {
            assert!(!self.chunks[2].compressed && self.chunks[2].compressed_size > 100_000);
            2
        }

        /// Fill the cache with every chunk and close it.
        fn populate(&self) {
            let cache = self.cache(self.backend(), false);
            self.read_all(&cache);
            assert_eq!(cache.ready_count(0), Some(self.chunks.len() as u32));
        }

        fn read_all(&self, reader: &dyn ChunkReader) {
            for (chunk, data) in self.chunks.iter().zip(&self.datas) {
                let got = reader.read_chunk(chunk).unwrap();
                assert!(got.as_slice() == data.as_slice(), "chunk {} differs", chunk.index);
            }
        }
    }

    /// Delegates to `LocalFs`, sleeping in every read to widen races.
    struct SlowBackend {
        inner: LocalFs,
        delay: Duration,
    }

    impl BlobBackend for SlowBackend {
        fn blob_size(&self, blob_id: &str) -> Result<u64, StorageError> {
            self.inner.blob_size(blob_id)
        }
        fn read_at(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
            std::thread::sleep(self.delay);
            self.inner.read_at(blob_id, offset, buf)
        }
        fn metrics(&self) -> &BackendMetrics {
            self.inner.metrics()
        }
    }

    fn flip_byte(path: &Path, offset: u64) {
        let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, offset).unwrap();
        b[0] ^= 0x5a;
        f.write_all_at(&b, offset).unwrap();
    }

    fn reads(backend: &LocalFs) -> u64 {
        backend.metrics().snapshot().read_count
    }

    #[test]
    fn every_chunk_reads_back_exact_for_each_compressor_and_digester() {
        for (compressor, digester) in [
            (Compressor::Zstd, Digester::Blake3),
            (Compressor::Lz4Block, Digester::Sha256),
            (Compressor::Zstd, Digester::Sha256),
            (Compressor::Lz4Block, Digester::Blake3),
            (Compressor::None, Digester::Blake3),
        ] {
            let fx = Fixture::new(compressor, digester);
            if compressor != Compressor::None {
                assert!(fx.chunks[0].compressed, "the pattern chunk should compress");
            }
            assert!(!fx.chunks[2].compressed, "the noise chunk should be stored raw");
            let n = fx.chunks.len() as u64;

            let backend = fx.backend();
            let cache = fx.cache(backend.clone(), true);
            fx.read_all(&cache); // cold: every chunk fetched
            fx.read_all(&cache); // warm: every chunk from the cache file
            let m = cache.metrics();
            assert_eq!((m.misses, m.hits, m.backend_fetches), (n, n, n), "{compressor}/{digester}");
            assert_eq!(m.fetch_bytes, std::fs::metadata(fx.blob_dir.join(BLOB_ID)).unwrap().len());
            assert_eq!(m.ready, vec![n as u32]);
            assert_eq!(reads(&backend), n);
            assert!((0..n as u32).all(|i| cache.is_ready(0, i)));

            let direct_backend = fx.backend();
            let direct =
                DirectReader::new(direct_backend.clone(), std::slice::from_ref(&fx.entry)).unwrap();
            fx.read_all(&direct);
            fx.read_all(&direct);
            assert_eq!(reads(&direct_backend), 2 * n, "DirectReader never caches");
        }
    }

    #[test]
    fn ready_bits_are_read_without_opening_the_cache() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        assert_eq!(read_ready_bits(&fx.work_dir, &fx.entry).unwrap(), None, "no cache yet");
        {
            let cache = fx.cache(fx.backend(), false);
            cache.read_chunk(&fx.chunks[1]).unwrap();
            cache.flush().unwrap();
        }
        let bits = read_ready_bits(&fx.work_dir, &fx.entry).unwrap().expect("a chunk map");
        assert_eq!(bits[0], 0b10, "only chunk 1 is ready");
        // A data file of the wrong size is not trusted, as ChunkCache::open would not.
        let f = OpenOptions::new().write(true).open(fx.data_path()).unwrap();
        f.set_len(fx.entry.uncompressed_size + 1).unwrap();
        assert_eq!(read_ready_bits(&fx.work_dir, &fx.entry).unwrap(), None);
        assert!(fx.map_path().exists(), "reading changed nothing");
    }

    #[test]
    fn several_blobs_keep_their_own_algorithms_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let datas = sample_chunks();
        let (e0, c0) =
            build_blob(tmp.path(), "blob-a", 0, Compressor::Zstd, Digester::Blake3, &datas);
        let (e1, c1) = build_blob(
            tmp.path(),
            "blob-b",
            1,
            Compressor::Lz4Block,
            Digester::Sha256,
            &datas[1..],
        );
        let work = tmp.path().join("work");
        let backend = Arc::new(LocalFs::new(tmp.path()));
        let cache = ChunkCache::open(&work, backend, &[e0, e1], false).unwrap();
        for (chunk, data) in c1.iter().zip(&datas[1..]).chain(c0.iter().zip(&datas)) {
            assert_eq!(cache.read_chunk(chunk).unwrap().as_slice(), data.as_slice());
        }
        assert_eq!(cache.metrics().ready, vec![4, 3]);
        assert!(work.join("blob-a.blob.data").exists());
        assert!(work.join("blob-b.blob.data").exists());
    }

    #[test]
    fn concurrent_cold_reads_share_one_backend_fetch() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        let backend = Arc::new(SlowBackend {
            inner: LocalFs::new(&fx.blob_dir),
            delay: Duration::from_millis(30),
        });
        let cache = fx.cache(backend.clone(), false);
        let before = backend.metrics().snapshot().read_count;
        let barrier = Barrier::new(32);
        std::thread::scope(|s| {
            for _ in 0..32 {
                s.spawn(|| {
                    barrier.wait();
                    let got = cache.read_chunk(&fx.chunks[0]).unwrap();
                    assert!(got.as_slice() == fx.datas[0].as_slice());
                });
            }
        });
        assert_eq!(backend.metrics().snapshot().read_count - before, 1);
        let m = cache.metrics();
        assert_eq!(m.backend_fetches, 1);
        assert_eq!(m.hits + m.misses, 32);
        assert!(cache.inflight.lock().is_empty());
    }

    #[test]
    fn concurrent_readers_of_a_bad_chunk_all_get_the_error() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        let raw = fx.raw_chunk();
        flip_byte(&fx.blob_dir.join(BLOB_ID), fx.chunks[raw].compressed_offset + 99);
        let backend = Arc::new(SlowBackend {
            inner: LocalFs::new(&fx.blob_dir),
            delay: Duration::from_millis(30),
        });
        let cache = fx.cache(backend.clone(), false);
        let barrier = Barrier::new(16);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        cache.read_chunk(&fx.chunks[raw])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Each fetch's leader sees the mismatch itself; every waiter gets it as an I/O error.
        let mut leaders = 0;
        for r in &results {
            match r {
                Err(ChunkError::DigestMismatch { index, .. }) => {
                    assert_eq!(*index as usize, raw);
                    leaders += 1;
                }
                Err(e @ ChunkError::Io { .. }) => {
                    assert!(e.to_string().contains("digest mismatch"), "{e}")
                }
                other => panic!("expected an error, got {other:?}"),
            }
        }
        assert_eq!(backend.metrics().snapshot().read_count, leaders);
        assert!(leaders < 16, "waiters should have shared a fetch");
        assert!(!cache.is_ready(0, raw as u32));
        assert!(cache.inflight.lock().is_empty());
    }

    #[test]
    fn corrupted_blob_byte_is_a_digest_mismatch_and_never_ready() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        let raw = fx.raw_chunk();
        let bad = fx.chunks[raw];
        flip_byte(&fx.blob_dir.join(BLOB_ID), bad.compressed_offset + 1234);

        let backend = fx.backend();
        let cache = fx.cache(backend.clone(), false);
        match cache.read_chunk(&bad) {
            Err(ChunkError::DigestMismatch { blob_index: 0, index, .. }) => {
                assert_eq!(index, bad.index)
            }
            other => panic!("expected DigestMismatch, got {other:?}"),
        }
        assert!(!cache.is_ready(0, bad.index));
        assert_eq!(cache.metrics().digest_errors, 1);
        // Nothing was written where the chunk would go.
        let data = std::fs::read(fx.data_path()).unwrap();
        let range = bad.uncompressed_offset as usize..(bad.uncompressed_offset as usize + 4096);
        assert!(data[range].iter().all(|&b| b == 0));
        // The error is not cached: a second read fetches again and fails again.
        assert!(matches!(cache.read_chunk(&bad), Err(ChunkError::DigestMismatch { .. })));
        assert_eq!(reads(&backend), 2);
        // The other chunks are fine.
        for (i, (chunk, data)) in fx.chunks.iter().zip(&fx.datas).enumerate() {
            if i != raw {
                assert_eq!(cache.read_chunk(chunk).unwrap().as_slice(), data.as_slice());
            }
        }
        drop(cache);
        // Not claimed ready on disk either.
        let cache = fx.cache(fx.backend(), false);
        assert!(!cache.is_ready(0, bad.index));
        assert_eq!(cache.ready_count(0), Some(fx.chunks.len() as u32 - 1));

        let direct = DirectReader::new(fx.backend(), std::slice::from_ref(&fx.entry)).unwrap();
        assert!(matches!(direct.read_chunk(&bad), Err(ChunkError::DigestMismatch { .. })));
    }

    #[test]
    fn corrupted_compressed_chunk_is_an_error_and_never_ready() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        let c = fx.chunks[0];
        assert!(c.compressed);
        flip_byte(
            &fx.blob_dir.join(BLOB_ID),
            c.compressed_offset + u64::from(c.compressed_size) / 2,
        );
        let cache = fx.cache(fx.backend(), false);
        assert!(cache.read_chunk(&c).is_err());
        assert!(!cache.is_ready(0, 0));
        assert_eq!(cache.read_chunk(&fx.chunks[1]).unwrap().as_slice(), fx.datas[1].as_slice());
    }

    #[test]
    fn restart_serves_ready_chunks_without_backend_reads() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        fx.populate();
        let n = fx.chunks.len() as u32;
        for validate in [false, true] {
            let backend = fx.backend();
            let cache = fx.cache(backend.clone(), validate);
            assert_eq!(cache.ready_count(0), Some(n));
            fx.read_all(&cache);
            assert_eq!(reads(&backend), 0, "validate={validate}");
            assert_eq!(cache.metrics().hits, u64::from(n));
        }
    }

    #[test]
    fn range_reads_of_ready_chunks_read_only_the_range() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        fx.populate();
        for validate in [false, true] {
            let backend = fx.backend();
            let cache = fx.cache(backend.clone(), validate);
            for (c, data) in fx.chunks.iter().zip(&fx.datas) {
                let n = data.len() as u32;
                for (off, len) in [(0, n), (n / 3, 100), (n - 1, 50), (n, 10), (0, 0)] {
                    let got = cache.read_chunk_range(c, off, len).unwrap();
                    let from = (off as usize).min(data.len());
                    let to = (from + len as usize).min(data.len());
                    assert_eq!(
                        got,
                        &data[from..to],
                        "chunk {} {off}+{len} validate={validate}",
                        c.index
                    );
                }
            }
            assert_eq!(reads(&backend), 0, "hits need no backend (validate={validate})");
        }
        // A cold range read fetches the chunk once and caches it.
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        let backend = fx.backend();
        let cache = fx.cache(backend.clone(), false);
        let c = &fx.chunks[0];
        assert_eq!(cache.read_chunk_range(c, 5, 7).unwrap(), &fx.datas[0][5..12]);
        assert_eq!(cache.read_chunk_range(c, 7, 9).unwrap(), &fx.datas[0][7..16]);
        assert_eq!(reads(&backend), 1);
    }

    #[test]
    fn unflushed_bits_are_not_on_disk() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        let cache = fx.cache(fx.backend(), false);
        fx.read_all(&cache);
        assert!(!fx.map_path().exists(), "fewer than 64 chunks: no flush yet");
        // Simulate a crash: no Drop, no flush.
        std::mem::forget(cache);
        let backend = fx.backend();
        let cache = fx.cache(backend.clone(), false);
        assert_eq!(cache.ready_count(0), Some(0));
        fx.read_all(&cache);
        assert_eq!(reads(&backend), fx.chunks.len() as u64);
    }

    #[test]
    fn chunk_map_is_flushed_every_64_new_chunks_in_the_documented_layout() {
        let datas: Vec<Vec<u8>> = (0..70u64).map(|i| noise(100 + i as usize, i + 1)).collect();
        let fx = Fixture::with_chunks(Compressor::Lz4Block, Digester::Blake3, datas);
        let cache = fx.cache(fx.backend(), false);
        let map_bits = || {
            let raw = std::fs::read(fx.map_path()).unwrap();
            assert_eq!(raw.len(), CHUNK_MAP_HEADER_SIZE + 9);
            assert_eq!(&raw[0..4], &0x424D_4150u32.to_le_bytes());
            assert_eq!(&raw[4..8], &1u32.to_le_bytes());
            assert_eq!(&raw[8..12], &70u32.to_le_bytes());
            assert!(raw[12..CHUNK_MAP_HEADER_SIZE].iter().all(|&b| b == 0));
            raw[CHUNK_MAP_HEADER_SIZE..].to_vec()
        };
        for chunk in &fx.chunks[..63] {
            cache.read_chunk(chunk).unwrap();
        }
        assert!(!fx.map_path().exists());
        // Rereading ready chunks does not count towards the flush.
        cache.read_chunk(&fx.chunks[0]).unwrap();
        assert!(!fx.map_path().exists());
        cache.read_chunk(&fx.chunks[63]).unwrap();
        // The 64th new chunk queues a flush on the flusher thread, off the reader's path.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !fx.map_path().exists() {
            assert!(std::time::Instant::now() < deadline, "no flush after 64 new chunks");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let bits = map_bits();
        assert_eq!(bits.iter().map(|b| b.count_ones()).sum::<u32>(), 64);
        assert_eq!(&bits[..8], &[0xff; 8]);
        assert_eq!(bits[8], 0);
        cache.read_chunk(&fx.chunks[69]).unwrap();
        assert_eq!(map_bits()[8], 0, "not flushed before the next 64");
        cache.flush().unwrap();
        assert_eq!(map_bits()[8], 0b0010_0000, "bit 69 = byte 8, bit 5");
        assert!(!fx.work_dir.join(format!("{BLOB_ID}.blob.data.chunk_map.tmp")).exists());
        assert_eq!(
            std::fs::metadata(fx.data_path()).unwrap().len(),
            fx.entry.uncompressed_size,
            "the data file spans the uncompressed blob"
        );
    }

    #[test]
    fn damaged_chunk_maps_are_discarded() {
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 7] = [
            ("truncated", |m| m.truncate(100)),
            ("bitmap cut short", |m| {
                m.pop();
            }),
            ("one byte too long", |m| m.push(0)),
            ("wrong magic", |m| m[0] ^= 1),
            ("wrong version", |m| m[4] = 2),
            ("wrong chunk count", |m| m[8] += 1),
            ("garbage of the right length", |m| {
                let n = m.len();
                *m = noise(n, 7);
            }),
        ];
        for (what, damage) in damages {
            let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
            fx.populate();
            let mut map = std::fs::read(fx.map_path()).unwrap();
            damage(&mut map);
            std::fs::write(fx.map_path(), &map).unwrap();

            let backend = fx.backend();
            let cache = fx.cache(backend.clone(), false);
            assert_eq!(cache.ready_count(0), Some(0), "{what}");
            assert!(!fx.map_path().exists(), "{what}: the bad map is removed");
            fx.read_all(&cache);
            assert_eq!(reads(&backend), fx.chunks.len() as u64, "{what}");
        }
    }

    #[test]
    fn chunk_map_with_stray_bits_or_header_bytes_is_discarded() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        fx.populate();
        let good = std::fs::read(fx.map_path()).unwrap();
        assert_eq!(parse_chunk_map(&good, 4), Some(vec![0x0f]));
        let mut stray = good.clone();
        stray[CHUNK_MAP_HEADER_SIZE] |= 0x10; // chunk 4 of a 4-chunk blob
        assert_eq!(parse_chunk_map(&stray, 4), None);
        let mut header = good.clone();
        header[100] = 1;
        assert_eq!(parse_chunk_map(&header, 4), None);
        assert_eq!(parse_chunk_map(&good, 5), None);
        assert_eq!(parse_chunk_map(&[], 0), None);
    }

    #[test]
    fn data_file_of_the_wrong_size_discards_the_bitmap() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        fx.populate();
        let f = OpenOptions::new().write(true).open(fx.data_path()).unwrap();
        f.set_len(4096).unwrap();
        drop(f);
        let backend = fx.backend();
        let cache = fx.cache(backend.clone(), false);
        assert_eq!(cache.ready_count(0), Some(0));
        assert!(!fx.map_path().exists());
        fx.read_all(&cache);
        assert_eq!(reads(&backend), fx.chunks.len() as u64);
    }

    #[test]
    fn validate_catches_a_damaged_cache_file_and_refetches() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        fx.populate();
        flip_byte(&fx.data_path(), fx.chunks[0].uncompressed_offset + 5000);
        let backend = fx.backend();
        let cache = fx.cache(backend.clone(), true);
        fx.read_all(&cache);
        let m = cache.metrics();
        assert_eq!(m.digest_errors, 1);
        assert_eq!(reads(&backend), 1, "only the damaged chunk is refetched");
        assert!(cache.is_ready(0, 0));
        // The repaired copy now reads back fine.
        fx.read_all(&cache);
        assert_eq!(cache.metrics().digest_errors, 1);
        assert_eq!(reads(&backend), 1);
    }

    #[test]
    fn out_of_range_chunks_are_errors_not_panics() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        let backend = fx.backend();
        let cache = fx.cache(backend.clone(), false);
        let direct = DirectReader::new(backend.clone(), std::slice::from_ref(&fx.entry)).unwrap();
        let good = fx.chunks[1];
        let cases = [
            ("out of range", ChunkRef { index: 4, ..good }),
            ("out of range", ChunkRef { index: u32::MAX, ..good }),
            ("past the end of the blob table", ChunkRef { blob_index: 1, ..good }),
            (
                "past the blob's uncompressed size",
                ChunkRef { uncompressed_offset: u64::MAX, ..good },
            ),
            (
                "past the blob's uncompressed size",
                ChunkRef { uncompressed_offset: fx.entry.uncompressed_size - 4, ..good },
            ),
            ("largest chunk size", ChunkRef { uncompressed_size: u32::MAX, ..good }),
            ("past the end of the blob", ChunkRef { compressed_offset: u64::MAX - 3, ..good }),
            ("past the end of the blob", ChunkRef { compressed_size: u32::MAX, ..good }),
        ];
        for (want, chunk) in cases {
            for reader in [&cache as &dyn ChunkReader, &direct] {
                match reader.read_chunk(&chunk) {
                    Err(e @ ChunkError::Io { .. }) => {
                        assert!(e.to_string().contains(want), "{e} lacks {want:?}")
                    }
                    other => panic!("{want}: expected an Io error, got {other:?}"),
                }
            }
            assert!(!cache.is_ready(chunk.blob_index, chunk.index));
        }
        assert_eq!(backend.metrics().snapshot().read_bytes, 0);
        assert_eq!(cache.ready_count(0), Some(0));
        assert_eq!(cache.ready_count(1), None);
    }

    #[test]
    fn bad_blob_table_entries_are_rejected() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        let backend: Arc<dyn BlobBackend> = fx.backend();
        let open = |entries: &[BlobEntry]| {
            ChunkCache::open(&fx.work_dir, backend.clone(), entries, false).unwrap_err()
        };
        let bad_algo = BlobEntry { compression_algo: 99, ..fx.entry.clone() };
        let err = open(std::slice::from_ref(&bad_algo));
        assert!(matches!(&err, StorageError::BadAlgorithm { blob_id, .. } if blob_id == BLOB_ID));
        assert!(err.to_string().contains(BLOB_ID), "{err}");
        assert!(DirectReader::new(backend.clone(), &[bad_algo]).is_err());
        let bad_digest = BlobEntry { digest_algo: 9, ..fx.entry.clone() };
        assert!(matches!(open(&[bad_digest]), StorageError::BadAlgorithm { .. }));
        for id in ["../x", "a/b", "", ".."] {
            let e = BlobEntry { blob_id: id.to_string(), ..fx.entry.clone() };
            assert!(matches!(open(std::slice::from_ref(&e)), StorageError::InvalidBlobId { .. }));
            assert!(matches!(
                DirectReader::new(backend.clone(), &[e]),
                Err(StorageError::InvalidBlobId { .. })
            ));
        }
        let dup = [fx.entry.clone(), fx.entry.clone()];
        assert!(matches!(open(&dup), StorageError::DuplicateBlob { first: 0, second: 1, .. }));
        let huge = BlobEntry { chunk_count: MAX_CHUNKS_PER_BLOB + 1, ..fx.entry.clone() };
        assert!(matches!(open(&[huge]), StorageError::TooManyChunks { .. }));
    }

    #[test]
    fn missing_blob_file_is_an_error_naming_it() {
        let fx = Fixture::new(Compressor::Zstd, Digester::Blake3);
        std::fs::remove_file(fx.blob_dir.join(BLOB_ID)).unwrap();
        let cache = fx.cache(fx.backend(), false);
        let direct = DirectReader::new(fx.backend(), std::slice::from_ref(&fx.entry)).unwrap();
        for reader in [&cache as &dyn ChunkReader, &direct] {
            match reader.read_chunk(&fx.chunks[0]) {
                Err(ChunkError::Io { blob_id, source, .. }) => {
                    assert_eq!(blob_id, BLOB_ID);
                    assert_eq!(source.kind(), io::ErrorKind::NotFound);
                    let msg = source.to_string();
                    assert!(msg.contains(BLOB_ID) && msg.contains("not found"), "{msg}");
                }
                other => panic!("expected a not-found error, got {other:?}"),
            }
        }
        assert!(!cache.is_ready(0, 0));
    }
}
