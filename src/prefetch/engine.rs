//! The prefetch engine: worker threads that run a [`Plan`]'s ranged requests into the chunk
//! cache in the background.
//!
//! - Requests are taken in plan order (first touch first) by `threads` workers, one request
//!   in flight each ([`ChunkCache::fill_range`]: one backend read per request; chunks that
//!   became ready or are being fetched meanwhile are skipped).
//! - Readers come first: a reader that needs a chunk being prefetched waits for that request
//!   instead of fetching again, and while any reader is fetching from the backend the workers
//!   hold their next request back, so a reader shares the link with at most the requests
//!   already in flight, never with the queue behind them.
//! - A token bucket shared by the workers caps prefetch at `bandwidth_rate` bytes/s (readers
//!   are not charged). Its capacity is at least one request, so a large request cannot stall.
//! - [`Engine::stop`] (and drop) cancels: no new request starts, workers waiting for the
//!   bucket or for readers leave within a few milliseconds, the request in flight finishes.
//! - Counters in nydusd's `prefetch_*` shapes ([`Engine::metrics`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::plan::{Plan, Request};
use crate::rafs::chunk::ChunkRef;
use crate::storage::ChunkCache;

/// How the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Prefetch bandwidth cap in bytes/s; 0: none.
    pub bandwidth_rate: u64,
}

/// Prefetch counters (nydusd's blobcache `prefetch_*` fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefetchMetrics {
    /// Stored bytes fetched by prefetch.
    pub prefetch_data_amount: u64,
    /// Backend requests made by prefetch.
    pub prefetch_requests_count: u64,
    /// Worker threads.
    pub prefetch_workers: u64,
    /// Chunks stored by prefetch.
    pub prefetch_unmerged_chunks: u64,
    /// Requests that failed (their chunks are left for readers to fetch).
    pub prefetch_errors: u64,
    /// Time spent fetching, summed over workers, in ms.
    pub prefetch_cumulative_time_millis: u64,
    /// Wall clock when prefetch started (s, ms part).
    pub prefetch_begin_time_secs: u64,
    /// Milliseconds part of the start time.
    pub prefetch_begin_time_millis: u64,
    /// Wall clock when the last worker finished (0 while running).
    pub prefetch_end_time_secs: u64,
    /// Milliseconds part of the end time.
    pub prefetch_end_time_millis: u64,
}

#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    requests: AtomicU64,
    chunks: AtomicU64,
    errors: AtomicU64,
    busy_ms: AtomicU64,
    begin_ms: AtomicU64,
    end_ms: AtomicU64,
    running: AtomicU64,
    last_error: Mutex<Option<String>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A token bucket in bytes.
struct Bucket {
    rate: u64,
    capacity: u64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Take `n` bytes if there are enough; otherwise how long until there will be.
    fn take(&mut self, n: u64) -> Result<(), Duration> {
        let now = Instant::now();
        let add = now.duration_since(self.last).as_secs_f64() * self.rate as f64;
        self.tokens = (self.tokens + add).min(self.capacity as f64);
        self.last = now;
        let want = n.min(self.capacity) as f64;
        if self.tokens >= want {
            self.tokens -= want;
            return Ok(());
        }
        Err(Duration::from_secs_f64((want - self.tokens) / self.rate as f64))
    }
}

struct Shared {
    cache: Arc<ChunkCache>,
    queue: Mutex<VecDeque<(Request, Vec<ChunkRef>)>>,
    bucket: Option<Mutex<Bucket>>,
    cancel: AtomicBool,
    counters: Counters,
}

/// Running prefetch workers.
pub struct Engine {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

/// Longest single sleep of a waiting worker, so cancellation is noticed quickly.
const POLL: Duration = Duration::from_millis(2);

impl Engine {
    /// Start running `plan` into `cache`.
    pub fn start(cache: Arc<ChunkCache>, plan: &Plan, opts: EngineOptions) -> Engine {
        let threads = opts.threads.max(1);
        let queue: VecDeque<(Request, Vec<ChunkRef>)> = plan
            .requests
            .iter()
            .map(|r| {
                let chunks = r.chunks.iter().filter_map(|&i| plan.chunks.get(i)).map(|c| c.chunk);
                (r.clone(), chunks.collect())
            })
            .collect();
        let largest = plan.requests.iter().map(|r| r.len).max().unwrap_or(0);
        let bucket = (opts.bandwidth_rate > 0).then(|| {
            let capacity = opts.bandwidth_rate.max(largest).max(1);
            Mutex::new(Bucket {
                rate: opts.bandwidth_rate,
                capacity,
                tokens: 0.0,
                last: Instant::now(),
            })
        });
        let shared = Arc::new(Shared {
            cache,
            queue: Mutex::new(queue),
            bucket,
            cancel: AtomicBool::new(false),
            counters: Counters::default(),
        });
        shared.counters.begin_ms.store(now_ms(), Relaxed);
        shared.counters.running.store(threads as u64, Relaxed);
        let workers = (0..threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("prefetch-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a prefetch thread")
            })
            .collect();
        Engine { shared, workers, threads }
    }

    /// The counters so far.
    pub fn metrics(&self) -> PrefetchMetrics {
        let c = &self.shared.counters;
        let (begin, end) = (c.begin_ms.load(Relaxed), c.end_ms.load(Relaxed));
        PrefetchMetrics {
            prefetch_data_amount: c.bytes.load(Relaxed),
            prefetch_requests_count: c.requests.load(Relaxed),
            prefetch_workers: self.threads as u64,
            prefetch_unmerged_chunks: c.chunks.load(Relaxed),
            prefetch_errors: c.errors.load(Relaxed),
            prefetch_cumulative_time_millis: c.busy_ms.load(Relaxed),
            prefetch_begin_time_secs: begin / 1000,
            prefetch_begin_time_millis: begin % 1000,
            prefetch_end_time_secs: end / 1000,
            prefetch_end_time_millis: end % 1000,
        }
    }

    /// The last failed request, if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.counters.last_error.lock().clone()
    }

    /// Whether every worker has finished (queue done or cancelled).
    pub fn is_done(&self) -> bool {
        self.shared.counters.running.load(Relaxed) == 0
    }

    /// Wait until the plan has run (or `timeout` passed); returns whether it finished.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_done() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    }

    /// Cancel and wait for the workers (a request in flight completes first).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.cancel.store(true, Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Sleep in short steps until `ready()` or cancellation; returns false when cancelled.
fn wait_until(s: &Shared, mut ready: impl FnMut() -> Option<Duration>) -> bool {
    loop {
        if s.cancel.load(Relaxed) {
            return false;
        }
        match ready() {
            None => return true,
            Some(d) => std::thread::sleep(d.min(POLL)),
        }
    }
}

fn worker(s: &Shared) {
    loop {
        if s.cancel.load(Relaxed) {
            break;
        }
        let Some((req, chunks)) = s.queue.lock().pop_front() else { break };
        // Readers first: hold the request while any reader fetches from the backend.
        if !wait_until(s, || (s.cache.demand_fetches() > 0).then_some(POLL)) {
            break;
        }
        if let Some(bucket) = &s.bucket {
            if !wait_until(s, || bucket.lock().take(req.len).err()) {
                break;
            }
        }
        let started = Instant::now();
        match s.cache.fill_range(req.blob_index, req.offset, req.len, &chunks) {
            Ok(f) => {
                if f.fetched {
                    s.counters.requests.fetch_add(1, Relaxed);
                    s.counters.bytes.fetch_add(f.bytes, Relaxed);
                }
                s.counters.chunks.fetch_add(f.chunks as u64, Relaxed);
            }
            Err(e) => {
                s.counters.requests.fetch_add(1, Relaxed);
                s.counters.errors.fetch_add(1, Relaxed);
                let msg = format!("blob {} at {}+{}: {e}", req.blob_index, req.offset, req.len);
                *s.counters.last_error.lock() = Some(msg);
            }
        }
        s.counters.busy_ms.fetch_add(started.elapsed().as_millis() as u64, Relaxed);
    }
    if s.counters.running.fetch_sub(1, Relaxed) == 1 {
        s.counters.end_ms.store(now_ms(), Relaxed);
    }
}
