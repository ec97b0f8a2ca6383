//! Tier 2: the prefetch engine against a backend whose reads the test holds and releases, so
//! the orderings are forced, not timed. Readers join a prefetch request in flight (one backend
//! read for both); workers hold back while a reader fetches; the bandwidth cap makes prefetch
//! take at least what the rate allows; stop cancels the queue; a failed prefetch leaves the
//! chunk to its reader.

mod common;

use common::{noise, path_str as s};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::strata;
use strata::prefetch::{plan, Engine, EngineOptions, PlanOptions, RafsSource, Touch};
use strata::rafs::chunk::ChunkReader;
use strata::rafs::reader::Image;
use strata::storage::{BackendMetrics, BlobBackend, ChunkCache, LocalFs, StorageError};

const CHUNK: usize = 0x10000;

/// /big (8 chunks of 64 KiB) and /small (1 chunk), uncompressed.
fn image() -> (tempfile::TempDir, Image, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), noise(1, 8 * CHUNK)).unwrap();
    std::fs::write(src.join("small"), noise(2, 1000)).unwrap();
    let (boot, blobs) = (t.path().join("boot"), t.path().join("blobs"));
    strata(&[
        "image",
        "create",
        s(&src),
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--chunk-size",
        "0x10000",
        "--compressor",
        "none",
    ]);
    let img = Image::open(&boot).unwrap();
    (t, img, blobs)
}

/// LocalFs, with every read counted by kind and, while `hold` is set, parked until released.
struct Gated {
    inner: LocalFs,
    hold: AtomicBool,
    gate: (Mutex<bool>, Condvar),
    /// Reads longer than one chunk (prefetch merges) and the rest.
    big_reads: AtomicU64,
    small_reads: AtomicU64,
    parked: AtomicU64,
    fail: AtomicBool,
}

impl Gated {
    fn new(dir: &Path) -> Arc<Self> {
        Arc::new(Gated {
            inner: LocalFs::new(dir),
            hold: AtomicBool::new(false),
            gate: (Mutex::new(false), Condvar::new()),
            big_reads: AtomicU64::new(0),
            small_reads: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            fail: AtomicBool::new(false),
        })
    }

    fn release(&self) {
        self.hold.store(false, SeqCst);
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }

    fn wait_parked(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.parked.load(SeqCst) < n {
            assert!(Instant::now() < deadline, "no read reached the backend");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl BlobBackend for Gated {
    fn blob_size(&self, id: &str) -> Result<u64, StorageError> {
        self.inner.blob_size(id)
    }

    fn read_at(&self, id: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        if buf.len() > CHUNK {
            self.big_reads.fetch_add(1, SeqCst);
        } else {
            self.small_reads.fetch_add(1, SeqCst);
        }
        if self.hold.load(SeqCst) {
            self.parked.fetch_add(1, SeqCst);
            let mut open = self.gate.0.lock().unwrap();
            while !*open {
                open = self.gate.1.wait(open).unwrap();
            }
        }
        if self.fail.load(SeqCst) {
            return Err(StorageError::ShortRead { blob_id: id.into(), offset, len: 0, size: 0 });
        }
        self.inner.read_at(id, offset, buf)
    }

    fn metrics(&self) -> &BackendMetrics {
        self.inner.metrics()
    }
}

fn cache(img: &Image, backend: Arc<Gated>, dir: &Path) -> Arc<ChunkCache> {
    Arc::new(ChunkCache::open(dir, backend, &img.blobs, false).unwrap())
}

fn big_plan(img: &Image, merging: u64) -> strata::prefetch::Plan {
    let opts = PlanOptions { merging_size: merging, max_gap: None };
    plan(&[Touch::whole("/big")], &RafsSource::new(img), &|_| false, &opts).unwrap()
}

fn chunks_of(img: &Image, path: &str) -> Vec<strata::rafs::chunk::ChunkRef> {
    let ino = img.resolve(path.as_bytes()).unwrap().unwrap();
    img.chunks(&ino).unwrap().into_iter().map(Option::unwrap).collect()
}

#[test]
fn a_reader_joins_the_prefetch_request_in_flight() {
    let (t, img, blobs) = image();
    let backend = Gated::new(&blobs);
    let c = cache(&img, backend.clone(), &t.path().join("cache"));
    backend.hold.store(true, SeqCst);
    let plan = big_plan(&img, 8 * CHUNK as u64); // one request for all of /big
    assert_eq!(plan.requests.len(), 1);
    let engine = Engine::start(c.clone(), &plan, EngineOptions { threads: 1, bandwidth_rate: 0 });
    backend.wait_parked(1);
    // A reader of /big's 5th chunk while the request is held: it must wait for that request.
    let want = chunks_of(&img, "/big")[4];
    let reader = {
        let c = c.clone();
        std::thread::spawn(move || c.read_chunk(&want).unwrap())
    };
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(backend.small_reads.load(SeqCst), 0, "the reader did not fetch on its own");
    backend.release();
    let bytes = reader.join().unwrap();
    assert_eq!(&bytes[..], &noise(1, 8 * CHUNK)[4 * CHUNK..5 * CHUNK]);
    assert!(engine.wait(Duration::from_secs(20)));
    let m = engine.metrics();
    assert_eq!((m.prefetch_requests_count, m.prefetch_unmerged_chunks), (1, 8));
    assert_eq!(backend.big_reads.load(SeqCst) + backend.small_reads.load(SeqCst), 1);
    for ch in chunks_of(&img, "/big") {
        assert!(c.is_cached(&ch));
    }
}

#[test]
fn workers_hold_back_while_a_reader_fetches() {
    let (t, img, blobs) = image();
    let backend = Gated::new(&blobs);
    let c = cache(&img, backend.clone(), &t.path().join("cache"));
    // A reader of /small is parked in the backend...
    backend.hold.store(true, SeqCst);
    let small = chunks_of(&img, "/small")[0];
    let reader = {
        let c = c.clone();
        std::thread::spawn(move || c.read_chunk(&small).unwrap().len())
    };
    backend.wait_parked(1);
    assert_eq!(c.demand_fetches(), 1);
    // ...so prefetch, started now, sends nothing until it is done.
    let plan = big_plan(&img, 2 * CHUNK as u64);
    assert_eq!(plan.requests.len(), 4);
    let engine = Engine::start(c.clone(), &plan, EngineOptions { threads: 2, bandwidth_rate: 0 });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(backend.big_reads.load(SeqCst), 0, "prefetch waited for the reader");
    backend.release();
    assert_eq!(reader.join().unwrap(), 1000);
    assert!(engine.wait(Duration::from_secs(20)));
    assert_eq!(backend.big_reads.load(SeqCst), 4);
    assert_eq!(engine.metrics().prefetch_unmerged_chunks, 8);
}

#[test]
fn the_bandwidth_cap_paces_prefetch_and_stop_cancels_the_queue() {
    let (t, img, blobs) = image();
    let backend = Gated::new(&blobs);
    let c = cache(&img, backend.clone(), &t.path().join("cache"));
    // 8 requests of 64 KiB at 256 KiB/s: the bucket starts empty, so at least 2 s.
    let plan = big_plan(&img, 0);
    assert_eq!(plan.requests.len(), 8);
    let rate = 256 * 1024;
    let started = Instant::now();
    let engine =
        Engine::start(c.clone(), &plan, EngineOptions { threads: 4, bandwidth_rate: rate });
    assert!(engine.wait(Duration::from_secs(30)));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "8 x 64 KiB at 256 KiB/s took {took:?}");
    assert_eq!(engine.metrics().prefetch_data_amount, 8 * CHUNK as u64);

    // Stop: with a slow cap, only what started before the stop is fetched.
    let c2 = cache(&img, backend.clone(), &t.path().join("cache2"));
    let before = backend.big_reads.load(SeqCst) + backend.small_reads.load(SeqCst);
    let engine =
        Engine::start(c2.clone(), &plan, EngineOptions { threads: 2, bandwidth_rate: 4096 });
    std::thread::sleep(Duration::from_millis(50));
    let stopped = Instant::now();
    engine.stop();
    assert!(stopped.elapsed() < Duration::from_secs(5), "stop does not wait out the queue");
    let after = backend.big_reads.load(SeqCst) + backend.small_reads.load(SeqCst);
    assert!(after - before < 8, "the queue was cancelled ({} reads)", after - before);
}

#[test]
fn a_failed_prefetch_leaves_the_chunk_to_its_reader() {
    let (t, img, blobs) = image();
    let backend = Gated::new(&blobs);
    let c = cache(&img, backend.clone(), &t.path().join("cache"));
    backend.fail.store(true, SeqCst);
    let plan = big_plan(&img, 8 * CHUNK as u64);
    let engine = Engine::start(c.clone(), &plan, EngineOptions { threads: 1, bandwidth_rate: 0 });
    assert!(engine.wait(Duration::from_secs(20)));
    let m = engine.metrics();
    assert_eq!((m.prefetch_errors, m.prefetch_unmerged_chunks), (1, 0));
    assert!(engine.last_error().unwrap().contains("blob 0"));
    backend.fail.store(false, SeqCst);
    let ch = chunks_of(&img, "/big")[2];
    assert!(!c.is_cached(&ch));
    assert_eq!(c.read_chunk(&ch).unwrap().len(), CHUNK);
}
