//! The writer's CPU priority: it yields to requests, unless it falls behind.
//!
//! The writer runs under `SCHED_IDLE`: the scheduler gives it a CPU only when nothing else
//! wants one, a waking FUSE worker preempts it at once, and a CPU running only the writer
//! counts as idle when a woken thread is placed. So the log's CPU work (path records,
//! encoding, crc) leaves the requests' critical path on a busy machine; on a 2-vCPU VM it was
//! most of first-touch's cost on read_all (docs/benchmarks.md §5, run 7).
//!
//! An idle thread can starve while the CPUs are busy. The recording threads watch for that:
//! when a ring passes three quarters (it was already half full and the writer, woken then,
//! has not drained it) the recording thread raises the writer back to `SCHED_OTHER`
//! ([`WriterPriority::raise`], counted as a boost); the writer returns to `SCHED_IDLE` when it
//! ends a round with every ring at most a quarter full ([`WriterPriority::relax`]). A flush
//! (API, unmount, shutdown) raises it too, so it never waits behind busy CPUs.
//!
//! Coming back from `SCHED_IDLE` needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` allowing the
//! thread's nice value). The writer checks that it could come back before it goes idle
//! (lowering its nice value by one and restoring it); without that right it stays at normal
//! priority, as a writer that can starve would lose events.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::sys;

/// Where the writer thread is and who may move it.
#[derive(Debug, Default)]
pub(crate) struct WriterPriority {
    /// The writer's thread id once it went idle; 0 while it runs at normal priority for good.
    tid: AtomicI32,
    /// Raised to `SCHED_OTHER` and not relaxed since (changed only under `moving`).
    raised: AtomicBool,
    /// Held while the policy and `raised` change together.
    moving: Mutex<()>,
    /// Raises because a ring was three quarters full.
    boosts: AtomicU64,
    /// Why the writer stays at normal priority, when it does.
    pinned: Mutex<Option<String>>,
}

impl WriterPriority {
    /// Called by the writer thread when it starts: go idle if it could come back.
    pub(crate) fn lower(&self) {
        if let Err(why) = self.try_lower() {
            *self.pinned.lock() = Some(why);
        }
    }

    fn try_lower(&self) -> Result<(), String> {
        let tid = sys::gettid();
        let nice = match sys::thread_nice(tid) {
            Ok(n) => n,
            Err(e) => return Err(format!("getpriority: {e}")),
        };
        // Coming back from SCHED_IDLE is checked as setting the current nice value again
        // from a higher one; a nice value of 19 cannot be raised to test, and stays.
        if nice >= 19 {
            return Err("nice value 19".into());
        }
        if let Err(e) = sys::set_thread_nice(tid, nice + 1) {
            return Err(format!("setpriority: {e}"));
        }
        if let Err(e) = sys::set_thread_nice(tid, nice) {
            return Err(format!("could not be raised again ({e})"));
        }
        if let Err(e) = sys::set_sched_idle(tid, true) {
            return Err(format!("SCHED_IDLE: {e}"));
        }
        self.tid.store(tid, Ordering::Release);
        Ok(())
    }

    /// Raise the writer to normal priority (from any thread). `boost`: because a ring is
    /// filling (counted), not for a flush. Cheap when already raised: one load.
    pub(crate) fn raise(&self, boost: bool) {
        if self.tid.load(Ordering::Acquire) == 0 || self.raised.load(Ordering::Acquire) {
            return;
        }
        let _moving = self.moving.lock();
        let tid = self.tid.load(Ordering::Acquire);
        if tid == 0 || self.raised.load(Ordering::Acquire) {
            return;
        }
        if sys::set_sched_idle(tid, false).is_ok() {
            self.raised.store(true, Ordering::Release);
            if boost {
                self.boosts.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            // Checked in `lower`, so not expected; never retry on every event.
            self.tid.store(0, Ordering::Release);
            *self.pinned.lock() = Some("could not be raised (SCHED_OTHER refused)".into());
        }
    }

    /// Called by the writer after a round whose backlog was small: back to idle if raised.
    pub(crate) fn relax(&self) {
        if !self.raised.load(Ordering::Acquire) {
            return;
        }
        let _moving = self.moving.lock();
        let tid = self.tid.load(Ordering::Acquire);
        if tid != 0 && self.raised.load(Ordering::Acquire) && sys::set_sched_idle(tid, true).is_ok()
        {
            self.raised.store(false, Ordering::Release);
        }
    }

    /// Where the writer runs now: `idle`, `raised` (boosted or flushing), `normal: why`, or
    /// `starting`.
    pub(crate) fn describe(&self) -> String {
        if let Some(why) = self.pinned.lock().as_ref() {
            return format!("normal: {why}");
        }
        match (self.tid.load(Ordering::Acquire), self.raised.load(Ordering::Acquire)) {
            (0, _) => "starting".into(),
            (_, false) => "idle".into(),
            (_, true) => "raised".into(),
        }
    }

    /// Boosts so far.
    pub(crate) fn boosts(&self) -> u64 {
        self.boosts.load(Ordering::Relaxed)
    }
}
