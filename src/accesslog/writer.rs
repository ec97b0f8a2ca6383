//! The background writer: drains the sink's rings on a timer, when a ring is half full and on
//! flush; orders the batch by time; in first-touch mode drops what was seen before (exactly,
//! across threads); puts a process record before a pid's first event and a path record before
//! an inode's first event in each file; writes the batch with one `write`; rotates by size.
//!
//! Timer ticks only `write` (the data then survives a crash of the daemon, not of the
//! machine); `flush()`, rotation and shutdown also fsync.

use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::config::Mode;
use super::event::{Access, DropRecord, Op, ProcessRecord, Record};
use super::file::LogWriter;
use super::hash::{IntMap, IntSet};
use super::query::{resolve, Resolved};
use super::resolve::{PathResolver, ProcessInfo, ProcessResolver};
use super::sink::{touch, Shared, Touch};
use super::Error;
use std::sync::atomic::Ordering;

/// First-touch keys remembered by the writer; past this, new keys are not remembered (their
/// events are still written, so nothing is lost, only deduped less).
const TOUCH_CAP: usize = 1 << 20;
/// A data request spanning more chunks than this is written whole, not deduped per chunk.
const TOUCH_MAX_SPAN: u64 = 4096;
/// Learned paths kept (cleared when exceeded; the resolver then answers again).
const KNOWN_CAP: usize = 1 << 20;
/// Pids whose process is cached (cleared when exceeded).
const PROCS_CAP: usize = 1 << 16;
/// How long a pid's process stays cached before it is looked up again (pids get reused).
const PROC_TTL: Duration = Duration::from_secs(10);

/// Recent events kept in memory for [`super::AccessSink::recent`].
pub const RECENT_CAP: usize = 4096;

/// Requests to the writer thread (rounds for new pids and half-full rings are asked for with
/// a flag instead: [`Shared::kick`]).
pub(crate) enum Cmd {
    /// Drain, write and fsync, then answer.
    Flush(SyncSender<Result<(), Error>>),
    /// Drain, write, fsync and exit.
    Stop,
}

type Key = (u32, u64);

/// A written event as `GET /api/v1/accesslog` shows it: the access with the paths and the
/// process it was written under, resolved into a [`Resolved`] only when asked for (most
/// events are never asked for, so the writer does not pay for strings it would throw away).
pub(crate) struct Recent {
    access: Access,
    /// Path of `access.inode`.
    dir: Option<Arc<[u8]>>,
    /// Path of `access.aux` (a rename's or link's new parent).
    dir2: Option<Arc<[u8]>>,
    proc: Option<Arc<ProcessInfo>>,
}

impl Recent {
    /// The event with its path and process filled in.
    pub(crate) fn resolve(&self) -> Resolved {
        let proc = self.proc.as_deref().map(|p| (p.tgid, p.name.as_str()));
        resolve(&self.access, self.dir.as_deref(), self.dir2.as_deref(), proc)
    }
}

/// Marks the writer gone when its thread ends, however it ends (a panic included): its thread
/// id is not moved again, and waiting and later flushes get "writer gone".
struct Exited(Arc<Shared>);

impl Drop for Exited {
    fn drop(&mut self) {
        self.0.priority.exited();
        self.0.writer_ended();
    }
}

/// A path the writer knows.
struct Known {
    path: Arc<[u8]>,
    /// The current log file has it (a path record was written since the file began).
    emitted: bool,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    log: LogWriter,
    paths: Option<Arc<dyn PathResolver>>,
    procs: Arc<dyn ProcessResolver>,
    mode: Mode,
    last_error: Arc<Mutex<Option<String>>>,
    batch: Vec<Access>,
    /// Paths learned from lookups or given by the resolver, and whether the current file has
    /// each (one map: a new file's inode costs one lookup here, not three).
    known: IntMap<Key, Known>,
    /// Inodes the resolver could not name for the current file (asked once per file).
    unnamed: IntSet<Key>,
    proc_cache: IntMap<u32, (Arc<ProcessInfo>, Instant)>,
    /// Processes the recording threads looked up, taken from the sink each round.
    early_procs: IntMap<u32, ProcessInfo>,
    /// Pids whose process the current file has, with what it said.
    emitted_procs: IntMap<u32, Arc<ProcessInfo>>,
    touched: IntSet<(u32, u64, u64)>,
    reported_drops: u64,
    /// The time of this round (process cache ages).
    now: Instant,
    /// This round's written events, for the recent-events view.
    fresh: Vec<Recent>,
    /// This thread raised itself since it was last idle ([`Writer::raise_self`]).
    self_raised: bool,
    recent: Arc<Mutex<VecDeque<Recent>>>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        log: LogWriter,
        paths: Option<Arc<dyn PathResolver>>,
        procs: Arc<dyn ProcessResolver>,
        mode: Mode,
        last_error: Arc<Mutex<Option<String>>>,
        recent: Arc<Mutex<VecDeque<Recent>>>,
    ) -> Self {
        Self {
            shared,
            log,
            paths,
            procs,
            mode,
            last_error,
            batch: Vec::new(),
            known: IntMap::default(),
            unnamed: IntSet::default(),
            proc_cache: IntMap::default(),
            early_procs: IntMap::default(),
            emitted_procs: IntMap::default(),
            touched: IntSet::default(),
            reported_drops: 0,
            now: Instant::now(),
            fresh: Vec::new(),
            self_raised: false,
            recent,
        }
    }

    pub(crate) fn run(mut self, interval: Duration) {
        let _exit = Exited(self.shared.clone());
        self.shared.writer_started();
        // Built at normal priority: the prefetcher may be waiting for the same table.
        if let Some(p) = &self.paths {
            p.prepare();
        }
        self.shared.last_round_ns.store(self.shared.now_ns(), Ordering::Relaxed);
        self.shared.priority.lower();
        let mut next = Instant::now() + interval;
        loop {
            let cmd = self.shared.cmds.lock().queue.pop_front();
            match cmd {
                Some(Cmd::Flush(ack)) => {
                    let r = self.tick(true);
                    let _ = ack.send(r);
                    continue;
                }
                Some(Cmd::Stop) => {
                    let _ = self.tick(true);
                    return;
                }
                None => {}
            }
            let now = Instant::now();
            let due = now >= next;
            if self.shared.take_wake() || due {
                let _ = self.tick(false);
                self.relax();
                if due {
                    next = Instant::now() + interval;
                }
                continue;
            }
            // A kick or a command unparks it; a kick that came since the checks above makes
            // this return at once.
            std::thread::park_timeout(next - now);
        }
    }

    /// Back to idle priority if it was raised and the rings are nearly empty (not after a
    /// flush's round: the next round decides).
    fn relax(&mut self) {
        if self.shared.quiet() && self.shared.priority.relax() {
            self.self_raised = false;
        }
    }

    /// Run at normal priority from here to the round's end (before a lock the requests
    /// take). The writer makes the call itself once per raised stretch, whatever another
    /// thread's raise is doing, so it never meets that lock at idle priority.
    fn raise_self(&mut self) {
        if !self.self_raised {
            self.self_raised = self.shared.priority.raise_self();
        }
    }

    fn fail(&self, e: &Error) {
        self.shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(e.to_string());
    }

    /// One round: drain, filter, resolve, encode, write (and fsync when `sync`).
    fn tick(&mut self, sync: bool) -> Result<(), Error> {
        self.shared.last_round_ns.store(self.shared.now_ns(), Ordering::Relaxed);
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        self.shared.drain(&mut batch);
        // Rings are in order each; merge them by time (stable: a thread's order is kept).
        if !batch.is_sorted_by_key(|a| a.ts_ns) {
            batch.sort_by_key(|a| a.ts_ns);
        }
        self.now = Instant::now();
        self.take_early_procs();
        let drops_before = self.reported_drops;
        let mut records = 0u64;
        let mut events = 0u64;
        let dropped = self.shared.dropped_total();
        if dropped > self.reported_drops {
            let d =
                DropRecord { ts_ns: self.shared.now_ns(), count: dropped - self.reported_drops };
            records += self.push(&Record::Dropped(d));
            self.reported_drops = dropped;
        }
        for mut a in batch.drain(..) {
            if self.mode == Mode::FirstTouch && !self.first_touch(&mut a) {
                self.shared.counters.deduped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            records += self.before(&a);
            let record = Record::Access(a);
            let written = self.push(&record);
            records += written;
            events += 1;
            let Record::Access(a) = record else { continue };
            let recent = (written == 1).then(|| self.recent_of(&a));
            self.after(&a);
            if let Some((dir, dir2, proc)) = recent {
                self.fresh.push(Recent { access: a, dir, dir2, proc });
            }
        }
        self.batch = batch;
        self.publish_recent();
        if self.log.pending() > 0 || sync {
            // A write holds filesystem locks (a journal handle for the mtime); never at idle
            // priority, where a preemption would hold up other writers' commits and fsyncs.
            self.raise_self();
        }
        let mut result = match self.log.commit() {
            Ok(n) => {
                let c = &self.shared.counters;
                c.written_bytes.fetch_add(n, Ordering::Relaxed);
                c.written_records.fetch_add(records, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // The file was cut back to its last whole record: re-report these drops,
                // count the events lost, and re-emit path and process records next time.
                self.fail(&e);
                self.shared.lost(events);
                self.reported_drops = drops_before;
                self.new_file();
                Err(e)
            }
        };
        if sync {
            if let Err(e) = self.log.sync() {
                self.fail(&e);
                result = result.and(Err(e));
            }
        }
        if self.log.wants_rotation() {
            self.raise_self();
            match self.log.rotate() {
                Ok(()) => {
                    self.shared.counters.rotations.fetch_add(1, Ordering::Relaxed);
                    self.new_file();
                }
                Err(e) => {
                    self.fail(&e);
                    result = result.and(Err(e));
                }
            }
        }
        result
    }

    /// The path, second path and process `a` was just written under (what a reader of the
    /// file would replay it with).
    #[allow(clippy::type_complexity)]
    fn recent_of(
        &self,
        a: &Access,
    ) -> (Option<Arc<[u8]>>, Option<Arc<[u8]>>, Option<Arc<ProcessInfo>>) {
        let dir = self.known.get(&(a.layer, a.inode)).map(|k| k.path.clone());
        let dir2 = match a.op() {
            Some(Op::Rename | Op::Link) => {
                self.known.get(&(a.layer, a.aux)).map(|k| k.path.clone())
            }
            _ => None,
        };
        let proc = self.proc_cache.get(&a.pid).map(|(p, _)| p.clone());
        (dir, dir2, proc)
    }

    /// Move this round's written events to the recent-events view, keeping the last
    /// [`RECENT_CAP`].
    fn publish_recent(&mut self) {
        if self.fresh.is_empty() {
            return;
        }
        let skip = self.fresh.len().saturating_sub(RECENT_CAP);
        let mut q = self.recent.lock();
        let room = RECENT_CAP - (self.fresh.len() - skip);
        let excess = q.len().saturating_sub(room);
        q.drain(..excess);
        q.extend(self.fresh.drain(..).skip(skip));
    }

    /// Move the processes the recording threads looked up into this thread's map (bounded:
    /// entries whose events were dropped are never taken, so it is cleared when full).
    fn take_early_procs(&mut self) {
        if !self.shared.early_pending.load(Ordering::Acquire) {
            return;
        }
        // The recording threads take this lock: never hold it at idle priority (relaxed after
        // the round). Swapped out under the lock (the flag with it), merged outside it.
        self.raise_self();
        let taken = {
            let mut m = self.shared.early_procs.lock();
            self.shared.early_pending.store(false, Ordering::Release);
            std::mem::take(&mut *m)
        };
        if taken.is_empty() {
            return;
        }
        if self.early_procs.len() >= super::sink::EARLY_PROCS_CAP {
            self.early_procs.clear();
        }
        self.early_procs.extend(taken);
    }

    /// Encode one record; returns 1 (or 0 if it could not be encoded, which is counted).
    fn push(&mut self, r: &Record) -> u64 {
        match self.log.push(r) {
            Ok(()) => 1,
            Err(e) => {
                self.fail(&e);
                if matches!(r, Record::Access(_)) {
                    self.shared.lost(1);
                }
                0
            }
        }
    }

    /// First-touch: whether to keep `a` (clipping its chunk span to what is new).
    fn first_touch(&mut self, a: &mut Access) -> bool {
        let Some(op) = a.op() else { return true };
        let key = touch(op, a.range, a.chunks, a.name.as_deref());
        let full = self.touched.len() >= TOUCH_CAP;
        match key {
            Touch::Always => true,
            Touch::Once(k) => full || self.touched.insert((a.layer, a.inode, k)),
            Touch::Chunks { op, first, last } => {
                if last - first >= TOUCH_MAX_SPAN || full {
                    return true;
                }
                let tag = u64::from(op) << 56;
                let mut new = None::<(u64, u64)>;
                for c in first..=last {
                    if self.touched.insert((a.layer, a.inode, tag | c)) {
                        new = Some(new.map_or((c, c), |(f, _)| (f, c)));
                    }
                }
                let Some((f, l)) = new else { return false };
                if let Some(span) = a.chunks.as_mut() {
                    span.first = f as u32;
                    span.last = l as u32;
                }
                true
            }
        }
    }

    /// Records an access needs before it: its process, its inodes' paths. Returns how many.
    fn before(&mut self, a: &Access) -> u64 {
        let mut n = self.process(a.pid);
        n += self.ensure_path((a.layer, a.inode));
        if matches!(a.op(), Some(Op::Rename | Op::Link)) && a.aux != 0 {
            n += self.ensure_path((a.layer, a.aux));
        }
        n
    }

    /// Learn from an access: lookups and creates name a child; renames and unlinks move or
    /// remove paths.
    fn after(&mut self, a: &Access) {
        let Some(op) = a.op() else { return };
        let Some(name) = a.name.as_deref() else { return };
        if op.aux_is_child() && a.aux != 0 {
            if let Some(parent) = self.path_of((a.layer, a.inode)) {
                self.learn((a.layer, a.aux), join(&parent, name).into());
            }
        }
        match op {
            Op::Rename => {
                let (Some(old_dir), Some(new_dir)) =
                    (self.path_of((a.layer, a.inode)), self.path_of((a.layer, a.aux)))
                else {
                    return;
                };
                let Some(new_name) = a.name2.as_deref() else { return };
                let (from, to) = (join(&old_dir, name), join(&new_dir, new_name));
                let moved: Vec<(Key, Arc<[u8]>)> = self
                    .known
                    .iter()
                    .filter_map(|(k, p)| {
                        under(&p.path, &from).map(|rest| {
                            let mut np = to.clone();
                            np.extend_from_slice(rest);
                            (*k, Arc::from(np))
                        })
                    })
                    .collect();
                for (k, p) in moved {
                    self.learn(k, p);
                }
            }
            Op::Unlink | Op::Rmdir => {
                let Some(dir) = self.path_of((a.layer, a.inode)) else { return };
                let gone = join(&dir, name);
                let keys: Vec<Key> = self
                    .known
                    .iter()
                    .filter(|(_, p)| under(&p.path, &gone).is_some())
                    .map(|(k, _)| *k)
                    .collect();
                for k in keys {
                    self.known.remove(&k);
                }
            }
            _ => {}
        }
    }

    fn learn(&mut self, k: Key, p: Arc<[u8]>) {
        if self.known.get(&k).is_some_and(|x| x.path == p) {
            return;
        }
        self.bound_known();
        // The file has an older path (or none) for it: write the new one before its next use.
        self.known.insert(k, Known { path: p, emitted: false });
        if !self.unnamed.is_empty() {
            self.unnamed.remove(&k);
        }
    }

    /// The log file is new (rotated) or was cut back: it has no path or process record yet.
    fn new_file(&mut self) {
        for k in self.known.values_mut() {
            k.emitted = false;
        }
        self.unnamed.clear();
        self.emitted_procs.clear();
    }

    /// Forget every learned path when [`KNOWN_CAP`] are held; the file then gets each path
    /// again before its next use (so what it says and what the writer knows never differ).
    fn bound_known(&mut self) {
        if self.known.len() >= KNOWN_CAP {
            self.known.clear();
            self.unnamed.clear();
        }
    }

    /// The path of `k`, learned or from the resolver.
    fn path_of(&mut self, k: Key) -> Option<Arc<[u8]>> {
        if let Some(p) = self.known.get(&k) {
            return Some(p.path.clone());
        }
        self.resolve(k, false)
    }

    /// Ask the resolver for `k`'s path and remember it (`emitted`: the file gets it now).
    fn resolve(&mut self, k: Key, emitted: bool) -> Option<Arc<[u8]>> {
        let paths = self.paths.clone()?;
        if paths.shares_locks() {
            // Never hold a lock the requests need at idle priority (relaxed after the round).
            self.raise_self();
        }
        let p: Arc<[u8]> = paths.path(k.0, k.1)?.into();
        self.bound_known();
        self.known.insert(k, Known { path: p.clone(), emitted });
        if !self.unnamed.is_empty() {
            self.unnamed.remove(&k);
        }
        Some(p)
    }

    /// Write `k`'s path record unless the file has it; returns the records written.
    fn ensure_path(&mut self, k: Key) -> u64 {
        let path = match self.known.get_mut(&k) {
            Some(x) if x.emitted => return 0,
            Some(x) => {
                x.emitted = true;
                x.path.clone()
            }
            None if self.unnamed.contains(&k) => return 0,
            None => match self.resolve(k, true) {
                Some(p) => p,
                None => {
                    if self.unnamed.len() >= KNOWN_CAP {
                        self.unnamed.clear();
                    }
                    self.unnamed.insert(k);
                    return 0;
                }
            },
        };
        match self.log.push_path(k.0, k.1, &path) {
            Ok(()) => 1,
            Err(e) => {
                self.fail(&e);
                0
            }
        }
    }

    fn process(&mut self, pid: u32) -> u64 {
        // Most events come from a process the file already has, looked up lately.
        if !self.early_procs.contains_key(&pid) {
            if let (Some((info, at)), Some(emitted)) =
                (self.proc_cache.get(&pid), self.emitted_procs.get(&pid))
            {
                if Arc::ptr_eq(info, emitted) && self.now.duration_since(*at) < PROC_TTL {
                    return 0;
                }
            }
        }
        // A recording thread may have looked the process up while it ran: that wins.
        let early = self.early_procs.remove(&pid);
        let now = self.now;
        let fresh = early.is_none()
            && self.proc_cache.get(&pid).is_some_and(|(_, at)| now.duration_since(*at) < PROC_TTL);
        if !fresh {
            if self.proc_cache.len() >= PROCS_CAP {
                self.proc_cache.clear();
            }
            let info = early.unwrap_or_else(|| self.procs.process(pid));
            // A thread that has exited keeps the name it had when last seen; an unchanged
            // process keeps its entry (the fast path above compares entries by identity).
            let info = match self.proc_cache.get(&pid) {
                Some((old, _)) if info.name.is_empty() || **old == info => old.clone(),
                _ => Arc::new(info),
            };
            self.proc_cache.insert(pid, (info, now));
        }
        let info = self.proc_cache[&pid].0.clone();
        if self.emitted_procs.get(&pid).is_some_and(|e| **e == *info) {
            return 0;
        }
        self.emitted_procs.insert(pid, info.clone());
        let name = info.name.clone();
        self.push(&Record::Process(ProcessRecord { pid, tgid: info.tgid, name }))
    }
}

/// `dir/name` (`/name` under the root).
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// If `path` is `base` or below it, the rest of `path` after `base` (empty or starting `/`).
fn under<'a>(path: &'a [u8], base: &[u8]) -> Option<&'a [u8]> {
    let rest = path.strip_prefix(base)?;
    (rest.is_empty() || rest.starts_with(b"/")).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_prefixes() {
        assert_eq!(join(b"/", b"a"), b"/a");
        assert_eq!(join(b"/a", b"b"), b"/a/b");
        assert_eq!(under(b"/a/b", b"/a"), Some(&b"/b"[..]));
        assert_eq!(under(b"/a", b"/a"), Some(&b""[..]));
        assert_eq!(under(b"/ab", b"/a"), None);
        assert_eq!(under(b"/b", b"/a"), None);
    }
}
