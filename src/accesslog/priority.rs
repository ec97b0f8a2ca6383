//! The writer's CPU priority: it yields to requests, unless it falls behind or someone waits.
//!
//! The writer runs under `SCHED_IDLE`: the scheduler gives it a CPU when nothing else wants
//! one (and otherwise only a tiny share), a waking FUSE worker preempts it at once, and a CPU
//! running only the writer counts as idle when a woken thread is placed. So the log's CPU work
//! (path records, encoding, crc) leaves the requests' critical path; on a 2-vCPU VM it was
//! most of first-touch's cost on read_all (docs/benchmarks.md §5, run 7).
//!
//! It is raised back to `SCHED_OTHER` ([`WriterPriority::raise`]) when:
//! - it falls behind: a recording thread finds its ring more than three quarters full (it
//!   woke the writer at half and no round has drained it since), or full, or the writer's last
//!   round began more than two flush intervals and 100 ms ago (each counted as a boost);
//! - someone waits for it: a flush (API, unmount) or the shutdown ([`WriterPriority::hold`]);
//! - it is about to take a lock the requests take too, in user space (a path resolver that
//!   says so, the recording threads' new-process map) or in the kernel (a `write` or `fsync`
//!   of the log holds a journal handle): a writer preempted at idle priority while holding one
//!   would stall the requests behind it.
//!
//! It returns to `SCHED_IDLE` ([`WriterPriority::relax`]) after a round that ends with every
//! ring at most a quarter full and nothing holding it: its CPU work (draining, deduplicating,
//! encoding) runs idle, its locked steps raised. A raise is one `sched_setscheduler` per
//! episode (later ones see the flag and return); the hot path pays a comparison while the
//! ring is less than half full, and a load and a comparison of the last round's time.
//!
//! Coming back from `SCHED_IDLE` needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` allowing the
//! thread's nice value). Before it goes idle the writer has a throwaway thread check that
//! right (raise its nice value by one and lower it back); without it the writer stays at
//! normal priority, as a writer that could starve would lose events.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::SeqCst};

use parking_lot::Mutex;

use crate::sys;

/// Where the writer thread is and who may move it.
#[derive(Debug, Default)]
pub(crate) struct WriterPriority {
    /// The writer's thread id while it may be idle; 0 before it starts, when it cannot come
    /// back from idle, and after it exited.
    tid: AtomicI32,
    /// At `SCHED_OTHER` (set before the call that raises it, cleared before the one that
    /// lowers it: see `relax`).
    raised: AtomicBool,
    /// Flushes and the shutdown waiting for the writer: no relaxing meanwhile.
    holds: AtomicU32,
    /// Raises because it fell behind.
    boosts: AtomicU64,
    /// Why it stays at normal priority, or the last failed raise.
    note: Mutex<Option<String>>,
    /// Held by another thread's raise while it calls the kernel and by `exited`, so a raise
    /// never moves a thread id the writer no longer has. The writer raises itself without it
    /// ([`WriterPriority::raise_self`]); it takes it only to exit.
    moving: Mutex<()>,
    /// The writer thread has ended.
    stopped: AtomicBool,
}

/// Keeps the writer at normal priority while it lives (see [`WriterPriority::hold`]).
pub(crate) struct Hold<'a>(&'a WriterPriority);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, SeqCst);
    }
}

impl WriterPriority {
    /// Called by the writer thread when it starts: go idle if it could come back, keeping
    /// best-effort I/O (see [`sys::set_io_best_effort`]).
    pub(crate) fn lower(&self) {
        let tid = sys::gettid();
        if let Err(why) = can_come_back() {
            *self.note.lock() = Some(why);
            return;
        }
        let _ = sys::set_io_best_effort(tid);
        // Start as raised: `relax` does the lowering, so a flush already waiting holds it.
        self.raised.store(true, SeqCst);
        self.tid.store(tid, SeqCst);
        self.relax();
    }

    /// The writer thread is exiting: never move that thread id again (it may be reused).
    pub(crate) fn exited(&self) {
        let _moving = self.moving.lock();
        self.tid.store(0, SeqCst);
        self.stopped.store(true, SeqCst);
    }

    /// Raise the writer to normal priority (from any thread). `boost`: because it fell
    /// behind (counted). Two loads when it is raised already.
    pub(crate) fn raise(&self, boost: bool) {
        if self.tid.load(SeqCst) == 0 || self.raised.load(SeqCst) || self.raised.swap(true, SeqCst)
        {
            return;
        }
        let _moving = self.moving.lock();
        let tid = self.tid.load(SeqCst);
        if tid == 0 {
            return;
        }
        match sys::set_sched_idle(tid, false) {
            Ok(()) if boost => {
                self.boosts.fetch_add(1, SeqCst);
            }
            Ok(()) => {}
            // `raised` stays set, so this is not retried on every event; the writer's next
            // relax clears it and the next shortfall tries again.
            Err(e) => *self.note.lock() = Some(format!("raising it failed: {e}")),
        }
    }

    /// The writer raises itself (before a lock the requests take): always with its own call,
    /// since another thread's raise may have set the flag and not yet called the kernel.
    /// Returns whether it runs at normal priority now.
    pub(crate) fn raise_self(&self) -> bool {
        let tid = self.tid.load(SeqCst);
        if tid == 0 {
            return false;
        }
        self.raised.store(true, SeqCst);
        match sys::set_sched_idle(tid, false) {
            Ok(()) => true,
            Err(e) => {
                *self.note.lock() = Some(format!("raising it failed: {e}"));
                false
            }
        }
    }

    /// Keep the writer at normal priority until the guard drops (a flush waits for it).
    pub(crate) fn hold(&self) -> Hold<'_> {
        self.holds.fetch_add(1, SeqCst);
        self.raise(false);
        Hold(self)
    }

    /// Keep the writer at normal priority for good (the sink is shutting down).
    pub(crate) fn hold_forever(&self) {
        std::mem::forget(self.hold());
    }

    /// Called by the writer between rounds, when its rings are nearly empty: back to idle
    /// unless someone holds it. Returns whether it is idle now.
    pub(crate) fn relax(&self) -> bool {
        let tid = self.tid.load(SeqCst);
        if tid == 0 || self.holds.load(SeqCst) > 0 {
            return false;
        }
        if !self.raised.load(SeqCst) {
            return true;
        }
        // Clear the flag first, then look for holds: a `hold` either sees the flag clear (and
        // raises by itself) or is seen here.
        self.raised.store(false, SeqCst);
        if self.holds.load(SeqCst) > 0 || sys::set_sched_idle(tid, true).is_err() {
            self.raised.store(true, SeqCst);
            return false;
        }
        // A raise or hold that came after the store may have set SCHED_OTHER before the call
        // above undid it; its traces are visible now, so come back up.
        if self.raised.load(SeqCst) || self.holds.load(SeqCst) > 0 {
            self.raised.store(true, SeqCst);
            if let Err(e) = sys::set_sched_idle(tid, false) {
                *self.note.lock() = Some(format!("raising it failed: {e}"));
            }
            return false;
        }
        true
    }

    /// Where the writer runs: `idle`, `raised` (it fell behind, someone waits for it, or it
    /// takes a shared lock), `normal: why` (it could not go idle safely), `starting` or
    /// `stopped`; a failed raise is appended.
    pub(crate) fn describe(&self) -> String {
        if self.stopped.load(SeqCst) {
            return "stopped".into();
        }
        let note = self.note.lock().clone();
        let state = match (self.tid.load(SeqCst), self.raised.load(SeqCst)) {
            (0, _) => return note.map_or("starting".into(), |why| format!("normal: {why}")),
            (_, false) => "idle",
            (_, true) => "raised",
        };
        match note {
            Some(n) => format!("{state} ({n})"),
            None => state.into(),
        }
    }

    /// Boosts so far.
    pub(crate) fn boosts(&self) -> u64 {
        self.boosts.load(SeqCst)
    }
}

/// Whether a thread of this process may come back from `SCHED_IDLE` at its nice value:
/// checked on a throwaway thread (which inherits the caller's nice value) by raising its
/// nice value by one and lowering it back, which the kernel allows under the same rule.
fn can_come_back() -> Result<(), String> {
    let probe = std::thread::Builder::new().name("accesslog-probe".into()).spawn(|| {
        let tid = sys::gettid();
        let nice = sys::thread_nice(tid).map_err(|e| format!("getpriority: {e}"))?;
        if nice >= 19 {
            return Err("its nice value is 19".to_string());
        }
        sys::set_thread_nice(tid, nice + 1).map_err(|e| format!("setpriority: {e}"))?;
        sys::set_thread_nice(tid, nice)
            .map_err(|e| format!("it could not be raised again from idle ({e})"))
    });
    match probe {
        Ok(h) => h.join().unwrap_or_else(|_| Err("the probe thread panicked".into())),
        Err(e) => Err(format!("no probe thread: {e}")),
    }
}
