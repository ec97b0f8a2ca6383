//! The recorder's hot path: [`AccessSink::record`] copies an [`Event`] into the calling
//! thread's own ring buffer and returns; the background writer ([`super::writer`]) drains the
//! rings on a timer, when a ring is half full, and on [`AccessSink::flush`] / drop.
//!
//! Each thread that records claims one slot of a fixed array the first time it records (a
//! compare-and-swap on the slot's owner word, released when the thread exits). A slot is a
//! single-producer single-consumer ring of `AtomicU64` words: the owning thread writes an
//! event's words and publishes them with one release store of `head`; the writer reads up to
//! `head` and hands the space back with one release store of `tail`. So a `record` takes no
//! lock, allocates nothing (names are copied into the ring's words) and never waits: when the
//! ring has no room the event is dropped and counted. Memory is allocated per slot on its first
//! claim and bounded by `max_memory` in total. The writer runs at idle priority; the event that
//! finds it behind (a ring three quarters full or full, no round for two intervals) raises it
//! with one system call ([`super::priority`]), later ones see a flag.
//!
//! In first-touch mode each slot also keeps a small direct-mapped table of the touch keys it
//! has already recorded, so repeated reads of the same chunk or stats of the same file cost a
//! hash and a load; the writer removes the remaining duplicates exactly (between threads).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use super::config::{AccessLogConfig, Mode};
use super::event::{Access, Cache, ChunkSpan, Event, Op, Range};
use super::file::{LogHeader, LogWriter};
use super::priority::WriterPriority;
use super::query::{Filter, Resolved};
use super::resolve::{PathResolver, ProcFs, ProcessInfo, ProcessResolver};
use super::writer::{Cmd, Recent, Writer};
use super::Error;

/// Default number of thread slots: threads beyond it that record at the same time lose their
/// events (counted as dropped).
pub const DEFAULT_MAX_THREADS: usize = 64;
/// Entries of each slot's first-touch filter (a power of two).
const FILTER_ENTRIES: usize = 4096;
/// A data request touching more chunks than this is not filtered on the hot path (the writer
/// still dedupes it).
const FILTER_MAX_CHUNKS: u64 = 64;
/// Granularity of touch keys for reads and writes that carry a range but no chunk span.
pub const PSEUDO_CHUNK_SHIFT: u32 = 20;
/// Entries of each slot's table of recently seen pids (a new pid wakes the writer).
const PID_ENTRIES: usize = 64;
/// Fixed words of every encoded event: head, ts, inode, aux, pid|uid, layer.
const BASE_WORDS: usize = 6;
/// Largest encoded event (the length lives in 8 bits of the head word).
const MAX_EVENT_WORDS: usize = 255;

/// Counters of a sink, for stats and the metrics API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    /// Events taken into a buffer.
    pub recorded: u64,
    /// Events lost: buffer full, no free thread slot, or the log write failed.
    pub dropped: u64,
    /// First-touch mode: events skipped as already seen (hot path and writer).
    pub deduped: u64,
    /// Records written to the log (accesses, paths, processes, drops).
    pub written_records: u64,
    /// Bytes written to the log, headers excluded.
    pub written_bytes: u64,
    /// Failed writes or syncs of the log.
    pub write_errors: u64,
    /// Rotations done.
    pub rotations: u64,
    /// Times the idle-priority writer was raised for falling behind: a ring three quarters
    /// full or full, or no round for two flush intervals and 100 ms (see [`super::priority`]).
    pub writer_boosts: u64,
}

/// Everything a sink needs besides its config.
pub struct SinkOptions {
    /// The `accesslog` config section.
    pub config: AccessLogConfig,
    /// Thread slots (threads recording at the same time).
    pub max_threads: usize,
    /// Where inode paths come from, besides what the log learns from lookups.
    pub paths: Option<Arc<dyn PathResolver>>,
    /// Where process names come from (default: /proc).
    pub processes: Arc<dyn ProcessResolver>,
}

impl SinkOptions {
    /// Options for `config` with the default thread slots, no path resolver and /proc.
    pub fn new(config: AccessLogConfig) -> Self {
        Self { config, max_threads: DEFAULT_MAX_THREADS, paths: None, processes: Arc::new(ProcFs) }
    }

    /// Resolve inode paths with `r`.
    pub fn paths(mut self, r: Arc<dyn PathResolver>) -> Self {
        self.paths = Some(r);
        self
    }

    /// Resolve process names with `r`.
    pub fn processes(mut self, r: Arc<dyn ProcessResolver>) -> Self {
        self.processes = r;
        self
    }

    /// Use `n` thread slots (at least 1).
    pub fn max_threads(mut self, n: usize) -> Self {
        self.max_threads = n.max(1);
        self
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    /// Drops outside a slot (no free slot, thread teardown, lost writes).
    pub dropped: AtomicU64,
    /// Duplicates the writer removed.
    pub deduped: AtomicU64,
    pub written_records: AtomicU64,
    pub written_bytes: AtomicU64,
    pub write_errors: AtomicU64,
    pub rotations: AtomicU64,
}

/// One thread's ring.
pub(crate) struct Slot {
    /// Token of the owning thread, 0 when free.
    owner: AtomicU64,
    ring: OnceLock<Box<[AtomicU64]>>,
    filter: OnceLock<Box<[AtomicU64]>>,
    /// Words written, ever (only the owner stores).
    head: AtomicU64,
    /// Words consumed, ever (only the writer stores).
    tail: AtomicU64,
    /// Set when the owner has woken the writer for this slot; cleared by the writer.
    kicked: AtomicBool,
    /// Pids this slot's owner recorded lately, direct-mapped by pid.
    pids: [AtomicU32; PID_ENTRIES],
    /// Owner-only counters (plain load + store: no locked instruction on the hot path).
    recorded: AtomicU64,
    deduped: AtomicU64,
    dropped: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Self {
            owner: AtomicU64::new(0),
            ring: OnceLock::new(),
            filter: OnceLock::new(),
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            kicked: AtomicBool::new(false),
            pids: std::array::from_fn(|_| AtomicU32::new(0)),
            recorded: AtomicU64::new(0),
            deduped: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

/// State shared by the sink handle, the recording threads and the writer.
pub(crate) struct Shared {
    id: u64,
    mode: Mode,
    start: Instant,
    slots: Box<[Slot]>,
    ring_words: usize,
    filter_entries: usize,
    pub(crate) counters: Counters,
    /// A round is wanted (a new pid, a half-full ring, a flush's aftermath); set by the
    /// recording threads, which then unpark the writer: no lock, unlike a channel's wake-up.
    wake: AtomicBool,
    /// The writer thread, once it runs (to unpark it).
    writer_thread: OnceLock<std::thread::Thread>,
    /// Flushes and the stop, from API and unmount threads (never from request threads).
    pub(crate) cmds: Mutex<Commands>,
    /// `early_procs` has entries for the writer.
    pub(crate) early_pending: AtomicBool,
    /// Where a new pid's process is looked up on the recording thread (None: sink off).
    procs: Option<Arc<dyn ProcessResolver>>,
    /// Processes looked up by recording threads, for the writer to take.
    pub(crate) early_procs: Mutex<HashMap<u32, ProcessInfo>>,
    /// The writer's scheduling policy (idle unless it falls behind).
    pub(crate) priority: WriterPriority,
    /// When the writer's last round began (`now_ns`).
    pub(crate) last_round_ns: AtomicU64,
    /// A round beginning longer ago than this means the writer is starved.
    overdue_ns: u64,
}

/// The writer's command queue.
#[derive(Default)]
pub(crate) struct Commands {
    pub(crate) queue: VecDeque<Cmd>,
    /// The writer has ended.
    closed: bool,
}

/// Most processes held for the writer between two drains.
pub(crate) const EARLY_PROCS_CAP: usize = 4096;

static NEXT_SINK: AtomicU64 = AtomicU64::new(1);
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

struct Claim {
    sink: u64,
    shared: Weak<Shared>,
    slot: usize,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(s) = self.shared.upgrade() {
            s.slots[self.slot].owner.store(0, Ordering::Release);
        }
    }
}

thread_local! {
    static THREAD_TOKEN: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    static CLAIMS: RefCell<Vec<Claim>> = const { RefCell::new(Vec::new()) };
    /// (sink id, slot) of this thread's last record: the fast path past `CLAIMS`.
    static LAST: Cell<(u64, usize)> = const { Cell::new((0, 0)) };
}

/// Add one to a counter only its slot's owner writes.
#[inline]
fn bump(a: &AtomicU64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// The recorder the FUSE paths call. Cheap to share (`Arc<AccessSink>`); dropping the last
/// handle drains, writes and syncs what is buffered and stops the writer.
pub struct AccessSink {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    last_error: Arc<Mutex<Option<String>>>,
    recent: Arc<Mutex<VecDeque<Recent>>>,
}

impl std::fmt::Debug for AccessSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessSink").field("mode", &self.shared.mode).finish_non_exhaustive()
    }
}

impl AccessSink {
    /// A sink that records nothing (no file, no thread).
    pub fn off() -> Self {
        Self {
            shared: Arc::new(Shared {
                id: NEXT_SINK.fetch_add(1, Ordering::Relaxed),
                mode: Mode::Off,
                start: Instant::now(),
                slots: Box::new([]),
                ring_words: 0,
                filter_entries: 0,
                counters: Counters::default(),
                wake: AtomicBool::new(false),
                writer_thread: OnceLock::new(),
                cmds: Mutex::new(Commands::default()),
                early_pending: AtomicBool::new(false),
                procs: None,
                early_procs: Mutex::new(HashMap::new()),
                priority: WriterPriority::default(),
                last_round_ns: AtomicU64::new(0),
                overdue_ns: u64::MAX,
            }),
            writer: Mutex::new(None),
            last_error: Arc::new(Mutex::new(None)),
            recent: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    /// Start recording as `opts` says: create the log file (header written and synced) and
    /// the writer thread. A config that is not [`AccessLogConfig::enabled`] gives
    /// [`AccessSink::off`].
    pub fn start(opts: SinkOptions) -> Result<Self, Error> {
        let cfg = &opts.config;
        if !cfg.enabled() {
            return Ok(Self::off());
        }
        let start = Instant::now();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let start_unix_ns = u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX);
        let session = session_id(start_unix_ns);
        let log = LogWriter::create(
            &cfg.path,
            LogHeader::new(cfg.mode, start_unix_ns, session, 0),
            cfg.rotate_size,
            cfg.rotate_keep,
        )?;
        let threads = opts.max_threads.max(1);
        let per_slot_words = (cfg.max_memory / 8 / threads as u64) as usize;
        let filter_entries = if cfg.mode == Mode::FirstTouch {
            prev_pow2(FILTER_ENTRIES.min(per_slot_words / 4))
        } else {
            0
        };
        let ring_words = prev_pow2(per_slot_words - filter_entries);
        let shared = Arc::new(Shared {
            id: NEXT_SINK.fetch_add(1, Ordering::Relaxed),
            mode: cfg.mode,
            start,
            slots: (0..threads).map(|_| Slot::new()).collect(),
            ring_words,
            filter_entries,
            counters: Counters::default(),
            wake: AtomicBool::new(false),
            writer_thread: OnceLock::new(),
            cmds: Mutex::new(Commands::default()),
            early_pending: AtomicBool::new(false),
            procs: Some(opts.processes.clone()),
            early_procs: Mutex::new(HashMap::new()),
            priority: WriterPriority::default(),
            last_round_ns: AtomicU64::new(0),
            overdue_ns: overdue_after(cfg.flush_interval()),
        });
        let last_error = Arc::new(Mutex::new(None));
        let recent = Arc::new(Mutex::new(VecDeque::new()));
        let writer = Writer::new(
            shared.clone(),
            log,
            opts.paths,
            opts.processes,
            cfg.mode,
            last_error.clone(),
            recent.clone(),
        );
        let interval = cfg.flush_interval();
        let handle = std::thread::Builder::new()
            .name("accesslog".into())
            .spawn(move || writer.run(interval))
            .map_err(|e| Error::Thread(e.to_string()))?;
        Ok(Self { shared, writer: Mutex::new(Some(handle)), last_error, recent })
    }

    /// The mode recorded.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// Whether `record` does anything; callers may skip building events when not.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.shared.mode != Mode::Off
    }

    /// Nanoseconds since the session started (the clock events are stamped with).
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    /// Record `ev`, stamped now. Never blocks, never allocates after the calling thread's first
    /// event, takes no lock: when the thread's buffer is full the event is dropped and counted.
    #[inline]
    pub fn record(&self, ev: Event<'_>) {
        if self.shared.mode == Mode::Off {
            return;
        }
        self.shared.record(&ev);
    }

    /// Write everything recorded so far (by any thread, before this call) to the log and fsync
    /// it. Blocks until the writer has done so; returns the first error it hit doing it.
    pub fn flush(&self) -> Result<(), Error> {
        if self.writer.lock().is_none() {
            return Ok(());
        }
        let result = {
            // An idle writer would wait for busy CPUs; the flush's caller is waiting for it.
            let _hold = self.shared.priority.hold();
            let (tx, rx) = mpsc::sync_channel(1);
            let gone = || Error::Thread("writer gone".into());
            if !self.shared.command(Cmd::Flush(tx)) {
                return Err(gone());
            }
            // A writer that ends drops the queued flushes, and with them `tx`.
            rx.recv().map_err(|_| gone())?
        };
        // The flush's round leaves the writer raised; the round after puts it back to idle.
        self.shared.kick();
        result
    }

    /// The counters.
    pub fn stats(&self) -> SinkStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sum =
            |f: fn(&Slot) -> &AtomicU64| self.shared.slots.iter().map(|s| l(f(s))).sum::<u64>();
        SinkStats {
            recorded: sum(|s| &s.recorded),
            dropped: l(&c.dropped) + sum(|s| &s.dropped),
            deduped: l(&c.deduped) + sum(|s| &s.deduped),
            written_records: l(&c.written_records),
            written_bytes: l(&c.written_bytes),
            write_errors: l(&c.write_errors),
            rotations: l(&c.rotations),
            writer_boosts: self.shared.priority.boosts(),
        }
    }

    /// The writer thread's scheduling: `idle` (it yields to requests), `raised` (it fell
    /// behind, or a flush waits for it), `normal: why` (it could not go idle safely), or
    /// `starting`. See [`super::priority`].
    pub fn writer_priority(&self) -> String {
        self.shared.priority.describe()
    }

    /// The last `limit` written events that pass `filter`, oldest first, with paths and
    /// process names (for the `/api/v1/accesslog` endpoint). The writer keeps the last
    /// [`super::writer::RECENT_CAP`] events; call [`AccessSink::flush`] first to include
    /// events still buffered.
    pub fn recent(&self, filter: &Filter, limit: usize) -> Vec<Resolved> {
        let q = self.recent.lock();
        let mut v: Vec<Resolved> =
            q.iter().rev().map(Recent::resolve).filter(|e| filter.matches(e)).take(limit).collect();
        v.reverse();
        v
    }

    /// The last error the writer hit (a full disk, say), if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }
}

impl Drop for AccessSink {
    fn drop(&mut self) {
        if let Some(h) = self.writer.lock().take() {
            self.shared.priority.hold_forever();
            self.shared.command(Cmd::Stop);
            let _ = h.join();
        }
    }
}

/// A session id: the start time mixed with the pid (unique enough to tell sessions apart).
fn session_id(start_unix_ns: u64) -> u64 {
    mix(start_unix_ns ^ (u64::from(std::process::id()) << 32)).max(1)
}

/// How long without a round means the writer is starved: two flush intervals and a bit.
fn overdue_after(interval: std::time::Duration) -> u64 {
    let ns = interval.saturating_mul(2).saturating_add(std::time::Duration::from_millis(100));
    u64::try_from(ns.as_nanos()).unwrap_or(u64::MAX)
}

fn prev_pow2(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// splitmix64's finaliser: a cheap, well-spread 64-bit mix.
#[inline]
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d4_9bb1_33b1_11eb);
    x ^ (x >> 31)
}

/// What first-touch mode keys an event by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Touch {
    /// Always recorded (mutations other than write).
    Always,
    /// Data at chunks `first..=last` of the file (reads and writes).
    Chunks {
        /// Data op code (read and write are deduped separately).
        op: u8,
        /// First chunk (or 1 MiB pseudo-chunk when the event has no chunk span).
        first: u64,
        /// Last chunk.
        last: u64,
    },
    /// One key for the event (file-level ops: op + inode, and a name hash for named ones).
    Once(u64),
}

/// Hash of a name (FNV-1a), for touch keys only (never stored).
#[inline]
fn name_hash(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The first-touch key of an event.
#[inline]
pub(crate) fn touch(
    op: Op,
    range: Option<Range>,
    chunks: Option<ChunkSpan>,
    name: Option<&[u8]>,
) -> Touch {
    match op {
        Op::Read | Op::Write => match (chunks, range) {
            (Some(c), _) if c.last >= c.first => {
                Touch::Chunks { op: op.code(), first: u64::from(c.first), last: u64::from(c.last) }
            }
            (_, Some(r)) => Touch::Chunks {
                op: op.code(),
                first: r.offset >> PSEUDO_CHUNK_SHIFT,
                last: (r.offset + r.len.max(1) - 1) >> PSEUDO_CHUNK_SHIFT,
            },
            _ => Touch::Once(u64::from(op.code()) << 56),
        },
        _ if op.is_mutation() => Touch::Always,
        _ => Touch::Once((u64::from(op.code()) << 56) ^ name.map_or(0, |n| name_hash(n) >> 8)),
    }
}

/// The 64-bit filter hash of key `kind` (a chunk index or a [`Touch::Once`] value) of an
/// inode. Never 0 (0 marks an empty filter entry).
#[inline]
fn filter_hash(layer: u32, inode: u64, data_op: u8, kind: u64) -> u64 {
    let h = mix(inode ^ mix(kind ^ (u64::from(layer) << 32) ^ (u64::from(data_op) << 24)));
    h.max(1)
}

/// Words needed for a name of `len` bytes.
#[inline]
const fn name_words(len: usize) -> usize {
    len.div_ceil(8)
}

impl Shared {
    /// Nanoseconds since the session start.
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The calling thread's slot index, claiming one on its first event.
    #[inline]
    fn with_slot(self: &Arc<Self>, f: impl FnOnce(usize)) -> bool {
        // Fast path: the slot this thread used last, if it was for this sink.
        if let Ok((sink, slot)) = LAST.try_with(Cell::get) {
            if sink == self.id {
                f(slot);
                return true;
            }
        }
        CLAIMS
            .try_with(|c| {
                let Ok(mut claims) = c.try_borrow_mut() else { return false };
                let slot = match claims.iter().find(|cl| cl.sink == self.id) {
                    Some(cl) => cl.slot,
                    None => {
                        let Some(slot) = self.claim() else { return false };
                        claims.retain(|cl| cl.shared.strong_count() > 0);
                        claims.push(Claim { sink: self.id, shared: Arc::downgrade(self), slot });
                        slot
                    }
                };
                // The claim lives as long as the thread, so the cached index stays valid.
                let _ = LAST.try_with(|l| l.set((self.id, slot)));
                f(slot);
                true
            })
            .unwrap_or(false)
    }

    fn claim(&self) -> Option<usize> {
        let token = THREAD_TOKEN.try_with(|t| *t).ok()?;
        let i = self.slots.iter().position(|s| {
            s.owner.compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed).is_ok()
        })?;
        let s = &self.slots[i];
        s.ring.get_or_init(|| (0..self.ring_words).map(|_| AtomicU64::new(0)).collect());
        s.filter.get_or_init(|| (0..self.filter_entries).map(|_| AtomicU64::new(0)).collect());
        Some(i)
    }

    #[inline]
    fn record(self: &Arc<Self>, ev: &Event<'_>) {
        let done = self.with_slot(|i| self.push(i, ev));
        if !done {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    fn push(&self, i: usize, ev: &Event<'_>) {
        let slot = &self.slots[i];
        let (Some(ring), Some(filter)) = (slot.ring.get(), slot.filter.get()) else {
            bump(&slot.dropped);
            return;
        };
        let first_touch = self.mode == Mode::FirstTouch && !filter.is_empty();
        let key =
            if first_touch { touch(ev.op, ev.range, ev.chunks, ev.name) } else { Touch::Always };
        if first_touch && seen(filter, ev, key) {
            bump(&slot.deduped);
            return;
        }
        // A pid this thread has not seen lately: look its process up now, while it surely
        // runs (it is waiting for this request's reply), and hand it to the writer before the
        // event is published (so the round that takes the event finds the process). Once per
        // new pid and thread; a short-lived process would be gone by the writer's turn.
        let p = &slot.pids[ev.pid as usize % PID_ENTRIES];
        let new_pid = p.load(Ordering::Relaxed) != ev.pid;
        if new_pid {
            p.store(ev.pid, Ordering::Relaxed);
            if let Some(procs) = &self.procs {
                let info = procs.process(ev.pid);
                if !info.name.is_empty() {
                    let mut early = self.early_procs.lock();
                    if early.len() < EARLY_PROCS_CAP {
                        early.insert(ev.pid, info);
                        self.early_pending.store(true, Ordering::Release);
                    }
                }
            }
        }
        // Stamped only now: a deduped event needs no clock read.
        let ts = self.now_ns();
        let Some(used) = encode(slot, ring, ev, ts) else {
            bump(&slot.dropped);
            // The ring is full: the writer has fallen behind.
            self.priority.raise(true);
            return;
        };
        bump(&slot.recorded);
        if first_touch {
            remember(filter, ev, key);
        }
        if new_pid {
            self.kick();
        }
        if used * 2 > ring.len() as u64 {
            if !slot.kicked.swap(true, Ordering::Relaxed) {
                // Early drain when the ring is half full, once per drain.
                self.kick();
            } else if used * 4 > ring.len() as u64 * 3 {
                // Woken at half full and still not drained: the idle writer is starved.
                self.priority.raise(true);
            }
        }
        if ts.saturating_sub(self.last_round_ns.load(Ordering::Relaxed)) > self.overdue_ns {
            // No round for two flush intervals: starved (its timer has not fired).
            self.priority.raise(true);
        }
    }

    /// Ask the writer for a round (lock-free: a flag, and an unpark when it was clear).
    pub(crate) fn kick(&self) {
        if !self.wake.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.writer_thread.get() {
                t.unpark();
            }
        }
    }

    /// Queue a flush or the stop for the writer; false if the writer has ended.
    fn command(&self, c: Cmd) -> bool {
        {
            let mut q = self.cmds.lock();
            if q.closed {
                return false;
            }
            q.queue.push_back(c);
        }
        if let Some(t) = self.writer_thread.get() {
            t.unpark();
        }
        true
    }

    /// The writer thread is ending (however it ends): refuse commands from now on and drop
    /// the queued ones, so their callers get "writer gone" instead of waiting for ever.
    pub(crate) fn writer_ended(&self) {
        let mut q = self.cmds.lock();
        q.closed = true;
        q.queue.clear();
    }

    /// Called by the writer thread when it starts, before it first looks for work.
    pub(crate) fn writer_started(&self) {
        let _ = self.writer_thread.set(std::thread::current());
    }

    /// Take the wanted-round flag.
    pub(crate) fn take_wake(&self) -> bool {
        self.wake.swap(false, Ordering::AcqRel)
    }

    /// Whether every ring is at most a quarter full now.
    pub(crate) fn quiet(&self) -> bool {
        let limit = self.ring_words as u64 / 4;
        self.slots.iter().all(|s| {
            s.head.load(Ordering::Relaxed).wrapping_sub(s.tail.load(Ordering::Relaxed)) <= limit
        })
    }

    /// Decode and consume every published event of every slot, appending them to `out`.
    pub(crate) fn drain(&self, out: &mut Vec<Access>) {
        for slot in self.slots.iter() {
            let Some(ring) = slot.ring.get() else { continue };
            let head = slot.head.load(Ordering::Acquire);
            let mut t = slot.tail.load(Ordering::Relaxed);
            while t < head {
                match decode(ring, t, head) {
                    Some((a, n)) => {
                        out.push(a);
                        t += n;
                    }
                    None => {
                        // Cannot happen with this encoder; never loop on it.
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        t = head;
                    }
                }
            }
            slot.tail.store(t, Ordering::Release);
            slot.kicked.store(false, Ordering::Relaxed);
        }
    }

    /// Every event dropped so far, in slots and outside them.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
            + self.slots.iter().map(|s| s.dropped.load(Ordering::Relaxed)).sum::<u64>()
    }

    /// Count `n` events lost after they were buffered.
    pub(crate) fn lost(&self, n: u64) {
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Whether the slot has recorded every key of `ev` already.
#[inline]
fn seen(filter: &[AtomicU64], ev: &Event<'_>, key: Touch) -> bool {
    let mask = filter.len() - 1;
    let hit = |h: u64| filter[h as usize & mask].load(Ordering::Relaxed) == h;
    match key {
        Touch::Always => false,
        Touch::Once(k) => hit(filter_hash(ev.layer, ev.inode, 0, k)),
        Touch::Chunks { op, first, last } => {
            last - first < FILTER_MAX_CHUNKS
                && (first..=last).all(|c| hit(filter_hash(ev.layer, ev.inode, op, c)))
        }
    }
}

#[inline]
fn remember(filter: &[AtomicU64], ev: &Event<'_>, key: Touch) {
    let mask = filter.len() - 1;
    let put = |h: u64| filter[h as usize & mask].store(h, Ordering::Relaxed);
    match key {
        Touch::Always => {}
        Touch::Once(k) => put(filter_hash(ev.layer, ev.inode, 0, k)),
        Touch::Chunks { op, first, last } => {
            if last - first < FILTER_MAX_CHUNKS {
                (first..=last).for_each(|c| put(filter_hash(ev.layer, ev.inode, op, c)));
            }
        }
    }
}

// Head word layout: op (bits 0-7), length in words (8-15), has range (16), has chunks (17),
// cache code (18-19), has name (20), has name2 (21), name length (32-47), name2 length (48-63).

/// Write `ev` into the slot's ring; returns the words in use after it, None when it does not
/// fit.
#[inline]
fn encode(slot: &Slot, ring: &[AtomicU64], ev: &Event<'_>, ts: u64) -> Option<u64> {
    let name = ev.name.unwrap_or_default();
    let name2 = ev.name2.unwrap_or_default();
    let words = BASE_WORDS
        + if ev.range.is_some() { 2 } else { 0 }
        + usize::from(ev.chunks.is_some())
        + name_words(name.len())
        + name_words(name2.len());
    if words > MAX_EVENT_WORDS || name.len() > 0xffff || name2.len() > 0xffff {
        return None;
    }
    let cap = ring.len() as u64;
    let head = slot.head.load(Ordering::Relaxed);
    let tail = slot.tail.load(Ordering::Acquire);
    if head - tail + words as u64 > cap {
        return None;
    }
    let mask = cap - 1;
    let mut at = head;
    let mut put = |w: u64| {
        ring[(at & mask) as usize].store(w, Ordering::Relaxed);
        at += 1;
    };
    let cache = u64::from(ev.cache.map_or(0, Cache::code) & 3);
    let head_word = u64::from(ev.op.code())
        | (words as u64) << 8
        | u64::from(ev.range.is_some()) << 16
        | u64::from(ev.chunks.is_some()) << 17
        | cache << 18
        | u64::from(ev.name.is_some()) << 20
        | u64::from(ev.name2.is_some()) << 21
        | (name.len() as u64) << 32
        | (name2.len() as u64) << 48;
    put(head_word);
    put(ts);
    put(ev.inode);
    put(ev.aux);
    put(u64::from(ev.pid) | u64::from(ev.uid) << 32);
    put(u64::from(ev.layer));
    if let Some(r) = ev.range {
        put(r.offset);
        put(r.len);
    }
    if let Some(c) = ev.chunks {
        put(u64::from(c.first) | u64::from(c.last) << 32);
    }
    for n in [name, name2] {
        for chunk in n.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            put(u64::from_le_bytes(b));
        }
    }
    slot.head.store(head + words as u64, Ordering::Release);
    Some(head + words as u64 - tail)
}

/// Decode the event at word `t` (below `head`); returns it and its length in words.
fn decode(ring: &[AtomicU64], t: u64, head: u64) -> Option<(Access, u64)> {
    let mask = ring.len() as u64 - 1;
    let word = |i: u64| ring[((t + i) & mask) as usize].load(Ordering::Relaxed);
    let h = word(0);
    let words = (h >> 8) & 0xff;
    if (words as usize) < BASE_WORDS || t + words > head {
        return None;
    }
    let mut i = BASE_WORDS as u64;
    let pid_uid = word(4);
    let range = (h >> 16 & 1 == 1).then(|| {
        i += 2;
        Range { offset: word(i - 2), len: word(i - 1) }
    });
    let chunks = (h >> 17 & 1 == 1).then(|| {
        i += 1;
        let w = word(i - 1);
        ChunkSpan { first: w as u32, last: (w >> 32) as u32 }
    });
    let mut name_of = |present: bool, len: usize| {
        present.then(|| {
            let mut v = Vec::with_capacity(len);
            for _ in 0..name_words(len) {
                v.extend_from_slice(&word(i).to_le_bytes());
                i += 1;
            }
            v.truncate(len);
            v
        })
    };
    let name = name_of(h >> 20 & 1 == 1, (h >> 32 & 0xffff) as usize);
    let name2 = name_of(h >> 21 & 1 == 1, (h >> 48) as usize);
    if i != words {
        return None;
    }
    let a = Access {
        ts_ns: word(1),
        op: h as u8,
        layer: word(5) as u32,
        inode: word(2),
        aux: word(3),
        range,
        chunks,
        cache: (h >> 18 & 3) as u8,
        pid: pid_uid as u32,
        uid: (pid_uid >> 32) as u32,
        name,
        name2,
    };
    Some((a, words))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_slot(words: usize) -> (Slot, Box<[AtomicU64]>) {
        (Slot::new(), (0..words).map(|_| AtomicU64::new(0)).collect())
    }

    #[test]
    fn ring_round_trips_events_across_the_wrap() {
        let (slot, ring) = test_slot(64);
        let evs = [
            Event::new(Op::Read, 5, 10, 1)
                .with_range(4096, 100)
                .with_chunks(1, 2)
                .with_cache(Cache::Miss),
            Event::new(Op::Lookup, 1, 11, 0)
                .with_name(b"a-name-longer-than-8")
                .with_aux(7)
                .with_layer(3),
            Event::new(Op::Rename, 1, 12, 0).with_name(b"x").with_name2(b"").with_aux(2),
            Event::new(Op::Getattr, u64::MAX, u32::MAX, u32::MAX),
        ];
        // Many rounds so records straddle the end of the 64-word ring.
        for round in 0..50u64 {
            for (k, ev) in evs.iter().enumerate() {
                assert!(encode(&slot, &ring, ev, round * 10 + k as u64).is_some());
            }
            let head = slot.head.load(Ordering::Acquire);
            let mut t = slot.tail.load(Ordering::Relaxed);
            for (k, ev) in evs.iter().enumerate() {
                let (a, n) = decode(&ring, t, head).unwrap();
                assert_eq!(a, Access::from_event(ev, round * 10 + k as u64));
                t += n;
            }
            assert_eq!(t, head);
            slot.tail.store(t, Ordering::Release);
        }
    }

    #[test]
    fn full_ring_refuses_without_blocking() {
        let (slot, ring) = test_slot(16);
        let ev = Event::new(Op::Read, 1, 1, 1).with_range(0, 1);
        assert_eq!(encode(&slot, &ring, &ev, 0), Some(8));
        assert_eq!(encode(&slot, &ring, &ev, 0), Some(16));
        assert_eq!(encode(&slot, &ring, &ev, 0), None);
        let long = [b'n'; 2100];
        let (slot, ring) = test_slot(1024);
        assert_eq!(
            encode(&slot, &ring, &Event::new(Op::Lookup, 1, 1, 1).with_name(&long), 0),
            None
        );
    }

    #[test]
    fn touch_keys() {
        let r = |o, l| Some(Range { offset: o, len: l });
        let c = |f, l| Some(ChunkSpan { first: f, last: l });
        let cases = [
            (Op::Read, r(0, 10), c(3, 4), Touch::Chunks { op: 5, first: 3, last: 4 }),
            (Op::Read, r(1 << 20, 1 << 20), None, Touch::Chunks { op: 5, first: 1, last: 1 }),
            (Op::Read, r(5, 0), None, Touch::Chunks { op: 5, first: 0, last: 0 }),
            (Op::Write, r((1 << 20) - 1, 2), None, Touch::Chunks { op: 32, first: 0, last: 1 }),
            (Op::Unlink, None, None, Touch::Always),
            (Op::Setattr, None, None, Touch::Always),
            (Op::Getattr, None, None, Touch::Once(2 << 56)),
        ];
        for (op, range, chunks, want) in cases {
            assert_eq!(touch(op, range, chunks, None), want, "{op}");
        }
        assert_ne!(
            touch(Op::Lookup, None, None, Some(b"a")),
            touch(Op::Lookup, None, None, Some(b"b"))
        );
    }

    #[test]
    fn filter_sees_only_what_was_remembered() {
        let filter: Box<[AtomicU64]> = (0..64).map(|_| AtomicU64::new(0)).collect();
        let ev = Event::new(Op::Read, 9, 1, 1).with_chunks(0, 3);
        let key = touch(ev.op, ev.range, ev.chunks, None);
        assert!(!seen(&filter, &ev, key));
        remember(&filter, &ev, key);
        assert!(seen(&filter, &ev, key));
        let sub = Event::new(Op::Read, 9, 1, 1).with_chunks(1, 2);
        assert!(seen(&filter, &sub, touch(sub.op, sub.range, sub.chunks, None)));
        let more = Event::new(Op::Read, 9, 1, 1).with_chunks(3, 4);
        assert!(!seen(&filter, &more, touch(more.op, more.range, more.chunks, None)));
        let other = Event::new(Op::Read, 10, 1, 1).with_chunks(0, 0);
        assert!(!seen(&filter, &other, touch(other.op, other.range, other.chunks, None)));
    }

    #[test]
    fn pow2() {
        for (n, p) in [(0, 0), (1, 1), (3, 2), (4096, 4096), (5000, 4096)] {
            assert_eq!(prev_pow2(n), p);
        }
    }
}
