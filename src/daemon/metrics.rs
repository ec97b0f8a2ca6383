//! Filesystem io statistics in nydusd's shapes (`FsIoStats`): global counters per FUSE op,
//! read sizes, latencies; optional per-file stats, access pattern and recently-read files;
//! requests in flight; and the daemon's recent error events.
//!
//! Global counters are atomics (no lock on the request path). The optional per-file recorders
//! take a lock and are off unless the config enables them, as in nydusd.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::overlay::copyup::CopyUpStats;

/// FUSE operations counted, in nydusd's `StatsFop` order (the index into `fop_hits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Fop {
    Getattr = 0,
    Readlink,
    Open,
    Release,
    Read,
    Statfs,
    Getxattr,
    Listxattr,
    Opendir,
    Lookup,
    Readdir,
    Readdirplus,
    Access,
    Forget,
    BatchForget,
}

/// Number of counted ops.
pub const FOP_COUNT: usize = 15;
/// Read-size buckets: <1K, 1K, 4K, 16K, 64K, 128K, 512K, >=1M (nydusd's `block_count_read`).
pub const READ_BUCKETS: usize = 8;
/// Read latency buckets in microseconds: <=200us, <=1ms, <=20ms, <=50ms, <=500ms, >500ms.
pub const LATENCY_BUCKETS: usize = 6;
/// Error events kept for `/api/v1/daemon/events`.
pub const MAX_EVENTS: usize = 64;

fn size_bucket(n: usize) -> usize {
    match n {
        0..=1023 => 0,
        1024..=4095 => 1,
        4096..=16383 => 2,
        16384..=65535 => 3,
        65536..=131071 => 4,
        131072..=524287 => 5,
        524288..=1048575 => 6,
        _ => 7,
    }
}

fn latency_bucket(us: u64) -> usize {
    match us {
        0..=200 => 0,
        201..=1000 => 1,
        1001..=20_000 => 2,
        20_001..=50_000 => 3,
        50_001..=500_000 => 4,
        _ => 5,
    }
}

fn now_secs_nanos() -> (u64, u32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

#[derive(Default)]
struct FileStats {
    total_fops: u64,
    data_read: u64,
    block_count_read: [u64; READ_BUCKETS],
    fop_hits: [u64; FOP_COUNT],
    fop_errors: [u64; FOP_COUNT],
}

struct Pattern {
    nr_read: u64,
    first: (u64, u32),
}

/// What the optional recorders do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recorders {
    /// Per-file stats.
    pub files: bool,
    /// Access pattern.
    pub pattern: bool,
    /// Recently read files.
    pub latest: bool,
}

/// One in-flight request.
#[derive(Clone, Copy, Debug)]
struct Inflight {
    fop: Fop,
    inode: u64,
    since: (u64, u32),
}

/// All statistics of one mounted filesystem.
pub struct FsMetrics {
    id: String,
    recorders: Recorders,
    data_read: AtomicU64,
    block_count_read: [AtomicU64; READ_BUCKETS],
    fop_hits: [AtomicU64; FOP_COUNT],
    fop_errors: [AtomicU64; FOP_COUNT],
    fop_latency_us: [AtomicU64; FOP_COUNT],
    read_latency_dist: [AtomicU64; LATENCY_BUCKETS],
    files: Mutex<HashMap<u64, FileStats>>,
    pattern: Mutex<BTreeMap<u64, Pattern>>,
    latest: Mutex<std::collections::BTreeSet<u64>>,
    inflight: Mutex<HashMap<u64, Inflight>>,
    next_req: AtomicU64,
    /// A writable overlay's copy-up counters, shown beside nydusd's fields.
    copy_ups: std::sync::OnceLock<Arc<CopyUpStats>>,
}

/// Records one request: created at the start of an op, finished with its outcome.
pub struct OpGuard<'a> {
    m: &'a FsMetrics,
    fop: Fop,
    inode: u64,
    req: u64,
    start: Instant,
}

impl OpGuard<'_> {
    /// Finish with `ok` (and `bytes` read, for reads).
    pub fn done(self, ok: bool, bytes: usize) {
        let m = self.m;
        let us = self.start.elapsed().as_micros() as u64;
        let i = self.fop as usize;
        if ok {
            m.fop_hits[i].fetch_add(1, Relaxed);
        } else {
            m.fop_errors[i].fetch_add(1, Relaxed);
        }
        m.fop_latency_us[i].fetch_add(us, Relaxed);
        if self.fop == Fop::Read && ok {
            m.data_read.fetch_add(bytes as u64, Relaxed);
            m.block_count_read[size_bucket(bytes)].fetch_add(1, Relaxed);
            m.read_latency_dist[latency_bucket(us)].fetch_add(1, Relaxed);
        }
        if m.recorders.files {
            let mut files = m.files.lock();
            let f = files.entry(self.inode).or_default();
            f.total_fops += 1;
            if ok {
                f.fop_hits[i] += 1;
            } else {
                f.fop_errors[i] += 1;
            }
            if self.fop == Fop::Read && ok {
                f.data_read += bytes as u64;
                f.block_count_read[size_bucket(bytes)] += 1;
            }
        }
        if self.fop == Fop::Read && ok {
            if m.recorders.pattern {
                m.pattern
                    .lock()
                    .entry(self.inode)
                    .or_insert_with(|| Pattern { nr_read: 0, first: now_secs_nanos() })
                    .nr_read += 1;
            }
            if m.recorders.latest {
                m.latest.lock().insert(self.inode);
            }
        }
        m.inflight.lock().remove(&self.req);
        std::mem::forget(self);
    }
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        // An op that unwound without `done` still leaves the in-flight table.
        self.m.inflight.lock().remove(&self.req);
    }
}

impl FsMetrics {
    /// Metrics for the filesystem `id` with the given optional recorders.
    pub fn new(id: impl Into<String>, recorders: Recorders) -> Self {
        Self {
            id: id.into(),
            recorders,
            data_read: AtomicU64::new(0),
            block_count_read: Default::default(),
            fop_hits: Default::default(),
            fop_errors: Default::default(),
            fop_latency_us: Default::default(),
            read_latency_dist: Default::default(),
            files: Mutex::new(HashMap::new()),
            pattern: Mutex::new(BTreeMap::new()),
            latest: Mutex::new(Default::default()),
            inflight: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            copy_ups: Default::default(),
        }
    }

    /// Show a writable overlay's copy-up counters in [`FsMetrics::global`] (`copy_up_count`,
    /// `copy_up_bytes_total`, `copy_up_sync_count`).
    pub fn track_copy_ups(&self, stats: Arc<CopyUpStats>) {
        let _ = self.copy_ups.set(stats);
    }

    /// Whether a per-file recorder (files, access pattern, latest reads) is on.
    pub fn per_file(&self) -> bool {
        self.recorders.files || self.recorders.pattern || self.recorders.latest
    }

    /// Start recording an op on `inode`.
    pub fn begin(&self, fop: Fop, inode: u64) -> OpGuard<'_> {
        let req = self.next_req.fetch_add(1, Relaxed);
        self.inflight.lock().insert(req, Inflight { fop, inode, since: now_secs_nanos() });
        OpGuard { m: self, fop, inode, req, start: Instant::now() }
    }

    /// Total bytes read through the filesystem.
    pub fn data_read(&self) -> u64 {
        self.data_read.load(Relaxed)
    }

    /// `/api/v1/metrics` shape.
    pub fn global(&self) -> Value {
        let load = |a: &[AtomicU64]| a.iter().map(|x| x.load(Relaxed)).collect::<Vec<_>>();
        let mut v = json!({
            "id": self.id,
            "nr_opens": 0,
            "nr_max_opens": 0,
            "data_read": self.data_read(),
            "block_count_read": load(&self.block_count_read),
            "fop_hits": load(&self.fop_hits),
            "fop_errors": load(&self.fop_errors),
            "fop_cumulative_latency_total": load(&self.fop_latency_us),
            "read_latency_dist": load(&self.read_latency_dist),
            "files_account_enabled": self.recorders.files,
            "access_pattern_enabled": self.recorders.pattern,
            "record_latest_read_files_enabled": self.recorders.latest,
        });
        if let Some(c) = self.copy_ups.get() {
            let (objects, bytes, syncs) = c.get();
            v["copy_up_count"] = objects.into();
            v["copy_up_bytes_total"] = bytes.into();
            v["copy_up_sync_count"] = syncs.into();
        }
        v
    }

    /// `/api/v1/metrics/files` shape (object keyed by inode number), or with `latest` the
    /// inode ranges read since the last such query (drained).
    pub fn files(&self, latest: bool) -> Option<Value> {
        if latest {
            if !self.recorders.latest {
                return None;
            }
            let set = std::mem::take(&mut *self.latest.lock());
            let mut ranges: Vec<Vec<u64>> = Vec::new();
            for ino in set {
                match ranges.last_mut() {
                    Some(r) if *r.last().expect("non-empty") + 1 == ino => {
                        if r.len() == 2 {
                            r[1] = ino;
                        } else {
                            r.push(ino);
                        }
                    }
                    _ => ranges.push(vec![ino]),
                }
            }
            return Some(json!(ranges));
        }
        if !self.recorders.files {
            return None;
        }
        let files = self.files.lock();
        let mut out = serde_json::Map::new();
        for (ino, f) in files.iter() {
            out.insert(
                ino.to_string(),
                json!({"total_fops": f.total_fops, "data_read": f.data_read,
                    "block_count_read": f.block_count_read, "fop_hits": f.fop_hits,
                    "fop_errors": f.fop_errors}),
            );
        }
        Some(Value::Object(out))
    }

    /// `/api/v1/metrics/pattern` shape.
    pub fn pattern(&self) -> Option<Value> {
        if !self.recorders.pattern {
            return None;
        }
        let p = self.pattern.lock();
        Some(Value::Array(
            p.iter()
                .map(|(ino, x)| {
                    json!({"ino": ino, "nr_read": x.nr_read,
                        "first_access_time_secs": x.first.0, "first_access_time_nanos": x.first.1})
                })
                .collect(),
        ))
    }

    /// `/api/v1/metrics/inflight` entries.
    pub fn inflight(&self) -> Vec<Value> {
        self.inflight
            .lock()
            .iter()
            .map(|(req, f)| {
                json!({"unique": req, "opcode": format!("{:?}", f.fop), "inode": f.inode,
                    "timestamp_secs": f.since.0})
            })
            .collect()
    }
}

/// Recent error events (`/api/v1/daemon/events`).
#[derive(Default)]
pub struct Events {
    ring: Mutex<VecDeque<Value>>,
    total: AtomicU64,
}

impl Events {
    /// Record an error event.
    pub fn error(&self, message: String) {
        self.total.fetch_add(1, Relaxed);
        let (secs, _) = now_secs_nanos();
        let mut r = self.ring.lock();
        if r.len() == MAX_EVENTS {
            r.pop_front();
        }
        r.push_back(json!({"timestamp": secs, "kind": "error", "message": message}));
    }

    /// The events, oldest first, with the total ever recorded.
    pub fn to_json(&self) -> Value {
        json!({"total": self.total.load(Relaxed), "events": self.ring.lock().iter().cloned().collect::<Vec<_>>()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reads_by_size_and_outcome() {
        let m = FsMetrics::new("t", Recorders { files: true, pattern: true, latest: true });
        m.begin(Fop::Read, 7).done(true, 4096);
        m.begin(Fop::Read, 8).done(true, 2 << 20);
        m.begin(Fop::Lookup, 1).done(false, 0);
        let g = m.global();
        assert_eq!(g["data_read"], 4096 + (2 << 20));
        assert_eq!(g["block_count_read"][2], 1);
        assert_eq!(g["block_count_read"][7], 1);
        assert_eq!(g["fop_hits"][Fop::Read as usize], 2);
        assert_eq!(g["fop_errors"][Fop::Lookup as usize], 1);
        assert_eq!(m.files(false).unwrap()["7"]["data_read"], 4096);
        assert_eq!(m.files(true).unwrap(), json!([[7, 8]]));
        assert_eq!(m.files(true).unwrap(), json!([]), "latest drains");
        assert_eq!(m.pattern().unwrap().as_array().unwrap().len(), 2);
        assert!(m.inflight().is_empty());
    }

    #[test]
    fn disabled_recorders_answer_none_and_inflight_tracks_open_ops() {
        let m = FsMetrics::new("t", Recorders::default());
        assert!(m.files(false).is_none() && m.files(true).is_none() && m.pattern().is_none());
        let g = m.begin(Fop::Read, 3);
        assert_eq!(m.inflight().len(), 1);
        drop(g);
        assert!(m.inflight().is_empty());
        let e = Events::default();
        for i in 0..(MAX_EVENTS + 5) {
            e.error(format!("e{i}"));
        }
        let v = e.to_json();
        assert_eq!(v["total"], MAX_EVENTS as u64 + 5);
        assert_eq!(v["events"].as_array().unwrap().len(), MAX_EVENTS);
    }
}
