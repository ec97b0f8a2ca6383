//! The access log end to end through the public API: events recorded by threads come back from
//! the file exactly (order, ranges, pids, names, paths); a torn tail at any byte reads up to
//! the last whole record; bad headers give clear errors; a tiny memory bound drops and counts
//! without blocking; rotation keeps a session readable in order.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use strata::accesslog::file::{encode_record, rotated_path, HEADER_LEN};
use strata::accesslog::{
    parse_log, read_log, replay_path, AccessLogConfig, AccessSink, Cache, Error, Event, Filter,
    Mode, Op, PathResolver, ProcessInfo, ProcessResolver, Record, RootOnly, SinkOptions,
};

/// Fixed pid → process names, so tests do not depend on /proc.
struct Names;

impl ProcessResolver for Names {
    fn process(&self, pid: u32) -> ProcessInfo {
        match pid {
            100 => ProcessInfo { tgid: 100, name: "alpha".into() },
            201 => ProcessInfo { tgid: 200, name: "beta".into() },
            _ => ProcessInfo::default(),
        }
    }
}

fn config(dir: &tempfile::TempDir, mode: Mode) -> AccessLogConfig {
    AccessLogConfig {
        path: dir.path().join("access.log"),
        mode,
        flush_interval_ms: 50,
        ..Default::default()
    }
}

fn start(cfg: AccessLogConfig) -> Arc<AccessSink> {
    let opts = SinkOptions::new(cfg).paths(Arc::new(RootOnly(1))).processes(Arc::new(Names));
    Arc::new(AccessSink::start(opts).unwrap())
}

/// What thread `who` (0 = alpha, 1 = beta) records at step `i` of the ping-pong.
fn step(who: usize, i: u64) -> Event<'static> {
    let pid = [100, 201][who];
    match i {
        0 if who == 0 => Event::new(Op::Lookup, 1, pid, 0).with_name(b"etc").with_aux(2),
        0 => Event::new(Op::Lookup, 2, pid, 1000).with_name(b"hosts").with_aux(3),
        1 => Event::new(Op::Open, 3, pid, 0),
        _ => Event::new(Op::Read, 3, pid, if who == 0 { 0 } else { 1000 })
            .with_range(i * 4096, 4096)
            .with_chunks(i as u32, i as u32)
            .with_cache(if i % 2 == 0 { Cache::Hit } else { Cache::Miss }),
    }
}

/// Two threads take turns (a channel ping-pong fixes the global order), `rounds` each.
fn ping_pong(sink: &Arc<AccessSink>, rounds: u64) {
    let (to_b, b_rx) = mpsc::channel::<u64>();
    let (to_a, a_rx) = mpsc::channel::<u64>();
    let sa = sink.clone();
    let a = std::thread::spawn(move || {
        for i in 0..rounds {
            sa.record(step(0, i));
            to_b.send(i).unwrap();
            a_rx.recv().unwrap();
        }
    });
    let sb = sink.clone();
    let b = std::thread::spawn(move || {
        for i in 0..rounds {
            assert_eq!(b_rx.recv().unwrap(), i);
            sb.record(step(1, i));
            to_a.send(i).unwrap();
        }
    });
    a.join().unwrap();
    b.join().unwrap();
}

#[test]
fn two_threads_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::Full);
    let path = cfg.path.clone();
    let sink = start(cfg);
    ping_pong(&sink, 40);
    sink.flush().unwrap();
    let st = sink.stats();
    assert_eq!((st.recorded, st.dropped), (80, 0));

    let r = replay_path(&path, true).unwrap();
    assert_eq!(r.events.len(), 80);
    assert!(r.torn.is_empty());
    assert!(r.events.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns), "strictly in time order");
    for (k, e) in r.events.iter().enumerate() {
        let (who, i) = (k % 2, (k / 2) as u64);
        let want = step(who, i);
        assert_eq!(e.op_kind, Some(want.op), "event {k}");
        assert_eq!(e.pid, want.pid);
        assert_eq!(e.uid, want.uid);
        assert_eq!(e.offset, want.range.map(|r| r.offset));
        assert_eq!(e.len, want.range.map(|r| r.len));
        assert_eq!(e.chunk_first, want.chunks.map(|c| c.first));
        assert_eq!((e.tgid, e.process.as_str()), [(100, "alpha"), (200, "beta")][who]);
        let path = match (who, i) {
            (0, 0) => "/etc",
            (1, 0) => "/etc/hosts",
            _ => "/etc/hosts",
        };
        assert_eq!(e.path.as_deref(), Some(path), "event {k}");
    }
    let beta = Filter { process: Some("beta".into()), ops: vec![Op::Read], ..Default::default() };
    assert_eq!(beta.apply(&r.events).count(), 38);
    let by_tgid = Filter { pids: vec![200], ..Default::default() };
    assert_eq!(by_tgid.apply(&r.events).count(), 40);
    // The in-memory view of the last events (what the API serves) matches the file.
    let recent = sink.recent(&Filter::default(), 5);
    assert_eq!(recent[..], r.events[75..]);
    let recent_beta = sink.recent(&beta, 1000);
    assert_eq!(recent_beta.len(), 38);
    assert!(recent_beta
        .iter()
        .all(|e| e.process == "beta" && e.path.as_deref() == Some("/etc/hosts")));
    drop(sink);
}

#[test]
fn first_touch_keeps_each_chunk_and_file_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::FirstTouch);
    let path = cfg.path.clone();
    let sink = start(cfg);
    let t = |op, ino| Event::new(op, ino, 100, 0);
    sink.record(t(Op::Lookup, 1).with_name(b"f").with_aux(5));
    for _ in 0..3 {
        sink.record(t(Op::Getattr, 5));
        sink.record(t(Op::Read, 5).with_range(0, 8192).with_chunks(0, 1));
    }
    // Chunks 1..=3 with 1 already seen: kept, clipped to 2..=3.
    sink.record(t(Op::Read, 5).with_range(4096, 12288).with_chunks(1, 3));
    // The same chunks from another thread: deduped by the writer.
    let s2 = sink.clone();
    std::thread::spawn(move || s2.record(Event::new(Op::Read, 5, 201, 0).with_chunks(2, 2)))
        .join()
        .unwrap();
    // Mutations are always kept.
    sink.record(t(Op::Unlink, 1).with_name(b"g"));
    sink.record(t(Op::Unlink, 1).with_name(b"g"));
    drop(sink);

    let r = replay_path(&path, false).unwrap();
    let got: Vec<(&str, Option<u32>, Option<u32>)> =
        r.events.iter().map(|e| (e.op.as_str(), e.chunk_first, e.chunk_last)).collect();
    assert_eq!(
        got,
        [
            ("lookup", None, None),
            ("getattr", None, None),
            ("read", Some(0), Some(1)),
            ("read", Some(2), Some(3)),
            ("unlink", None, None),
            ("unlink", None, None),
        ]
    );
    assert_eq!(r.events[2].path.as_deref(), Some("/f"));
    assert_eq!(r.events[4].path.as_deref(), Some("/g"));
}

#[test]
fn paths_follow_renames_and_resolvers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::Full);
    let path = cfg.path.clone();
    // A resolver that knows the root and inode 50 (never looked up).
    let resolver = |_l: u32, ino: u64| match ino {
        1 => Some(b"/".to_vec()),
        50 => Some(b"/opt/known".to_vec()),
        _ => None,
    };
    let sink = AccessSink::start(
        SinkOptions::new(cfg).paths(Arc::new(resolver)).processes(Arc::new(Names)),
    )
    .unwrap();
    let e = |op, ino| Event::new(op, ino, 100, 0);
    sink.record(e(Op::Mkdir, 1).with_name(b"d").with_aux(2));
    sink.record(e(Op::Create, 2).with_name(b"x").with_aux(3));
    sink.record(e(Op::Write, 3).with_range(0, 10));
    sink.record(e(Op::Rename, 1).with_name(b"d").with_aux(1).with_name2(b"e"));
    sink.record(e(Op::Write, 3).with_range(10, 10));
    sink.record(e(Op::Getattr, 2));
    sink.record(e(Op::Read, 50).with_range(0, 1));
    sink.record(e(Op::Read, 77).with_range(0, 1));
    sink.flush().unwrap();
    // The API's view resolves events as they were written: /d/x before the rename, /e/x after.
    let recent = sink.recent(&Filter::default(), 100);
    drop(sink);
    let r = replay_path(&path, false).unwrap();
    assert_eq!(recent, r.events);
    let paths: Vec<Option<&str>> = r.events.iter().map(|e| e.path.as_deref()).collect();
    assert_eq!(
        paths,
        [
            Some("/d"),
            Some("/d/x"),
            Some("/d/x"),
            Some("/d"),
            Some("/e/x"),
            Some("/e"),
            Some("/opt/known"),
            None
        ]
    );
    assert_eq!(r.events[3].path2.as_deref(), Some("/e"));
}

/// Frame boundaries of the records after the header.
fn frame_ends(data: &[u8]) -> Vec<usize> {
    let mut ends = vec![HEADER_LEN];
    let mut at = HEADER_LEN;
    while at + 8 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
        ends.push(at);
    }
    ends
}

#[test]
fn truncation_anywhere_in_the_last_records_reads_what_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::Full);
    let path = cfg.path.clone();
    let sink = start(cfg);
    ping_pong(&sink, 10);
    drop(sink);
    let data = std::fs::read(&path).unwrap();
    let full = parse_log(&data).unwrap();
    assert_eq!(full.torn_tail, None);
    let ends = frame_ends(&data);
    assert_eq!(*ends.last().unwrap(), data.len());
    assert_eq!(ends.len() - 1, full.records.len());
    // Every byte of the last five records.
    let from = ends[ends.len() - 6];
    for cut in from..=data.len() {
        let log = parse_log(&data[..cut]).unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
        assert_eq!(log.records, full.records[..whole], "cut at {cut}");
        if ends.contains(&cut) {
            assert_eq!(log.torn_tail, None, "cut at {cut}");
        } else {
            assert_eq!(log.torn_tail, Some(ends[whole] as u64), "cut at {cut}");
        }
    }
    // The same through the file reader and replay: a torn file still replays.
    std::fs::write(&path, &data[..data.len() - 3]).unwrap();
    let r = replay_path(&path, false).unwrap();
    assert_eq!(r.torn.len(), 1);
    assert_eq!(r.events.len(), 19);
}

#[test]
fn bad_headers_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::Full);
    let path = cfg.path.clone();
    drop(start(cfg));
    let good = std::fs::read(&path).unwrap();

    let mut future = good.clone();
    future[8] = 7; // version 7
    let msg = parse_log(&future).unwrap_err().to_string();
    assert!(msg.contains("version 7") && msg.contains("newer"), "{msg}");

    let garbage = b"this is not an access log at all, just some text".to_vec();
    let e = parse_log(&garbage).unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("not a strata access log"));

    assert!(matches!(parse_log(&good[..10]).unwrap_err(), Error::TruncatedHeader { .. }));
    let mut flipped = good.clone();
    flipped[20] ^= 1;
    assert!(parse_log(&flipped).unwrap_err().to_string().contains("checksum"));

    let missing = dir.path().join("nope.log");
    let msg = read_log(&missing).unwrap_err().to_string();
    assert!(msg.contains("nope.log"), "{msg}");
}

#[test]
fn tiny_memory_bound_drops_and_counts_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, Mode::Full);
    cfg.max_memory = 4096; // 512 words over 64 slots: 8 words each, barely one event
    cfg.flush_interval_ms = 10_000; // the writer never drains by timer in this test
    let path = cfg.path.clone();
    let sink = start(cfg);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = sink.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                for i in 0..20_000u64 {
                    s.record(Event::new(Op::Read, i, 100 + t, 0).with_range(i, 1));
                }
                t0.elapsed()
            })
        })
        .collect();
    for t in threads {
        // 20k events must take far less than the writer's interval: nothing waited.
        assert!(t.join().unwrap() < Duration::from_secs(5));
    }
    let st = sink.stats();
    assert_eq!(st.recorded + st.dropped, 80_000, "{st:?}");
    assert!(st.dropped > 70_000, "{st:?}");
    sink.flush().unwrap();
    let written = sink.stats();
    drop(sink);
    // The drops are in the log too.
    let r = replay_path(&path, false).unwrap();
    assert_eq!(r.dropped, written.dropped);
    assert_eq!(r.events.len() as u64, written.recorded);
}

/// A path resolver that notes which thread calls it and at what scheduling policy, and holds
/// `path` calls while its gate is shut: a writer stuck in a round, as a starved one would be.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
    /// What `shares_locks` answers.
    locks: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct GateState {
    writer: Option<u32>,
    /// `path` calls so far, with the policy of the calling thread at entry.
    calls: Vec<(u64, u32)>,
    shut: bool,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wait (10 s at most) until `what` holds.
    fn wait_for(&self, what: impl Fn(&GateState) -> bool) {
        let g = self.lock();
        let (g, t) = self
            .cv
            .wait_timeout_while(g, Duration::from_secs(10), |s| !what(s))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(g);
        assert!(!t.timed_out(), "the writer never got there");
    }

    fn shut(&self, shut: bool) {
        self.lock().shut = shut;
        self.cv.notify_all();
    }
}

/// Opens the gate when dropped, so a failing test does not leave the writer (and the sink's
/// drop, which joins it) waiting for ever. Declared after the sink: dropped before it.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.shut(false);
    }
}

impl PathResolver for Gate {
    fn path(&self, _layer: u32, inode: u64) -> Option<Vec<u8>> {
        let me = strata::sys::gettid() as u32;
        let mut g = self.lock();
        g.calls.push((inode, policy(me)));
        self.cv.notify_all();
        while g.shut {
            g = self.cv.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        Some(format!("/f{inode}").into_bytes())
    }

    fn prepare(&self) {
        self.lock().writer = Some(strata::sys::gettid() as u32);
        self.cv.notify_all();
    }

    fn shares_locks(&self) -> bool {
        self.locks.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The test's own thread `tid`'s scheduling policy.
fn policy(tid: u32) -> u32 {
    common::thread_policy(std::process::id(), tid).unwrap()
}

/// Starts a sink whose writer resolves paths through a [`Gate`]; returns the writer's tid.
fn gated(cfg: AccessLogConfig, gate: &Arc<Gate>) -> (AccessSink, u32) {
    let opts = SinkOptions::new(cfg).max_threads(2).paths(gate.clone()).processes(Arc::new(Names));
    let sink = AccessSink::start(opts).unwrap();
    gate.wait_for(|s| s.writer.is_some());
    let tid = gate.lock().writer.unwrap();
    (sink, tid)
}

/// Waits (10 s at most) until the sink reports `state` and the kernel the matching policy.
fn wait_priority(sink: &AccessSink, tid: u32, state: &str) {
    let want = if state == "idle" { 5 } else { 0 };
    let t0 = Instant::now();
    while (sink.writer_priority().as_str(), policy(tid)) != (state, want) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "writer {} with policy {}, expected {state}",
            sink.writer_priority(),
            policy(tid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_writer_yields_the_cpu_until_it_falls_behind_or_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, Mode::Full);
    cfg.max_memory = 16 << 10; // two slots of 1,024 words; a read event is 8 words
    cfg.flush_interval_ms = 10_000; // rounds come from wakes (a new pid, a half-full ring)
    let path = cfg.path.clone();
    let gate = Arc::new(Gate::default());
    let (sink, tid) = gated(cfg, &gate);
    let _open = OpenOnDrop(gate.clone());
    if !common::may_leave_sched_idle() {
        println!(
            "SKIPPED the_writer_yields_the_cpu_until_it_falls_behind_or_is_waited_for: this \
             process may not leave SCHED_IDLE (no CAP_SYS_NICE), so the writer stays normal"
        );
        let t0 = Instant::now();
        while sink.writer_priority() == "starting" && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sink.writer_priority().starts_with("normal: "), "{}", sink.writer_priority());
        assert_eq!(policy(tid), 0);
        return;
    }
    wait_priority(&sink, tid, "idle");
    let read = |inode: u64, pid: u32, i: u64| {
        Event::new(Op::Read, inode, pid, 0).with_range(i * 4096, 4096)
    };

    // Pids without a process name, so the writer has no new-process map to take (which it
    // does raised) and meets the resolver at whatever priority the test put it in.
    // 1. It falls behind. A first event wakes the writer (a new pid), which then waits in
    // the resolver, at idle priority.
    gate.shut(true);
    sink.record(read(7, 500, 0));
    gate.wait_for(|s| s.calls.len() == 1);
    // Past half the ring it is woken again; past three quarters, raised: at the first event
    // beyond 768 of the ring's 1,024 words (8 words each; event 0 was drained).
    let mut raised_at = None;
    for i in 1..=120 {
        sink.record(read(7, 500, i));
        if raised_at.is_none() && sink.stats().writer_boosts > 0 {
            raised_at = Some(i);
            assert_eq!((sink.writer_priority().as_str(), policy(tid)), ("raised", 0));
        }
    }
    assert_eq!(raised_at, Some(97), "{:?}", sink.stats());
    assert_eq!(sink.stats().writer_boosts, 1, "raised once, not once per event");
    // Let it go: the round after that drains the ring and ends with it empty: idle again.
    gate.shut(false);
    wait_priority(&sink, tid, "idle");

    // 2. A flush waits for it: raised while the flush waits, although nothing filled up.
    gate.shut(true);
    sink.record(read(8, 501, 0)); // a new pid wakes it; inode 8 needs the resolver
    gate.wait_for(|s| s.calls.len() == 2);
    std::thread::scope(|sc| {
        // Dropped before the scope joins the flusher, which waits for the writer.
        let _open = OpenOnDrop(gate.clone());
        let flusher = sc.spawn(|| sink.flush());
        wait_priority(&sink, tid, "raised");
        gate.shut(false);
        flusher.join().unwrap().unwrap();
    });
    // The flush wakes one more round, which finds the rings empty: idle again.
    wait_priority(&sink, tid, "idle");

    // 3. A resolver that takes the requests' locks is called at normal priority.
    gate.locks.store(true, std::sync::atomic::Ordering::SeqCst);
    sink.record(read(9, 502, 0));
    gate.wait_for(|s| s.calls.len() == 3);
    wait_priority(&sink, tid, "idle");

    // 4. So is any resolver in a round that takes the new-process map the recording threads
    // fill (pid 100 has a name: its first recording thread looked it up).
    gate.locks.store(false, std::sync::atomic::Ordering::SeqCst);
    sink.record(read(10, 100, 0));
    gate.wait_for(|s| s.calls.len() == 4);
    wait_priority(&sink, tid, "idle");

    let calls = gate.lock().calls.clone();
    let want = vec![(7, 5), (8, 5), (9, 0), (10, 0)];
    assert_eq!(calls, want, "(inode, the writer's policy in the resolver)");
    sink.flush().unwrap();
    let st = sink.stats();
    assert_eq!((st.recorded, st.dropped, st.writer_boosts), (124, 0, 1), "{st:?}");
    drop(sink);
    let r = replay_path(&path, false).unwrap();
    assert_eq!(r.events.len(), 124);
    assert_eq!(r.events[123].process, "alpha");
    assert!(r.events[..121].iter().all(|e| e.path.as_deref() == Some("/f7")), "{:?}", r.events[0]);
}

#[test]
fn a_writer_without_a_round_for_two_intervals_is_raised() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, Mode::Full);
    cfg.flush_interval_ms = 1000; // overdue after 2.1 s
    let gate = Arc::new(Gate::default());
    let (sink, tid) = gated(cfg, &gate);
    let _open = OpenOnDrop(gate.clone());
    if !common::may_leave_sched_idle() {
        println!(
            "SKIPPED a_writer_without_a_round_for_two_intervals_is_raised: this process may \
             not leave SCHED_IDLE (no CAP_SYS_NICE), so the writer stays normal"
        );
        return;
    }
    wait_priority(&sink, tid, "idle");
    // The writer waits in the resolver in the middle of a round; its timer cannot fire.
    // (A pid without a process name: the writer takes no new-process map, raised, first.)
    gate.shut(true);
    sink.record(Event::new(Op::Open, 7, 500, 0));
    gate.wait_for(|s| s.calls.len() == 1);
    sink.record(Event::new(Op::Open, 7, 500, 0));
    let early = sink.stats().writer_boosts;
    std::thread::sleep(Duration::from_millis(2500)); // past 2 × 1 s + 100 ms
    sink.record(Event::new(Op::Open, 7, 500, 0));
    assert_eq!((early, sink.stats().writer_boosts), (0, 1), "raised once, and only when late");
    assert_eq!((sink.writer_priority().as_str(), policy(tid)), ("raised", 0));
    gate.shut(false);
    wait_priority(&sink, tid, "idle");
}

#[test]
fn a_flush_after_the_writer_died_fails_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::Full);
    // A resolver with a bug: the writer thread panics on its first path.
    let buggy = |_layer: u32, inode: u64| -> Option<Vec<u8>> { panic!("no path for {inode}") };
    let opts = SinkOptions::new(cfg).paths(Arc::new(buggy)).processes(Arc::new(Names));
    let sink = Arc::new(AccessSink::start(opts).unwrap());
    sink.record(Event::new(Op::Open, 7, 500, 0)); // a new pid wakes the writer
    let t0 = Instant::now();
    while sink.writer_priority() != "stopped" {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", sink.writer_priority());
        std::thread::sleep(Duration::from_millis(5));
    }
    let (tx, rx) = mpsc::channel();
    let s = sink.clone();
    std::thread::spawn(move || tx.send(s.flush().map_err(|e| e.to_string())));
    let r = rx.recv_timeout(Duration::from_secs(10)).expect("flush waited for a dead writer");
    assert_eq!(r, Err("access log writer thread: writer gone".to_string()));
    // Recording goes on without blocking (events stay in the ring, then are dropped).
    for i in 0..100_000 {
        sink.record(Event::new(Op::Read, 7, 500, 0).with_range(i, 1));
    }
    assert!(sink.stats().dropped > 0);
}

#[test]
fn rotation_keeps_the_session_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, Mode::Full);
    cfg.rotate_size = 2048;
    cfg.rotate_keep = 100;
    let path = cfg.path.clone();
    let sink = start(cfg);
    sink.record(Event::new(Op::Lookup, 1, 100, 0).with_name(b"f").with_aux(9));
    for i in 0..400u64 {
        sink.record(Event::new(Op::Read, 9, 100, 0).with_range(i, 1));
        if i % 20 == 19 {
            sink.flush().unwrap();
        }
    }
    let st = sink.stats();
    drop(sink);
    assert!(st.rotations >= 3, "{st:?}");
    assert!(rotated_path(&path, 1).exists());
    let r = replay_path(&path, true).unwrap();
    assert_eq!(r.events.len(), 401);
    let offsets: Vec<u64> = r.events[1..].iter().map(|e| e.offset.unwrap()).collect();
    assert_eq!(offsets, (0..400).collect::<Vec<_>>());
    // Each file carries the paths and processes its events need.
    assert!(r.events.iter().all(|e| e.path.as_deref() == Some("/f") && e.process == "alpha"));
    let only_live = replay_path(&path, false).unwrap();
    assert!(only_live.events.len() < 401);
    assert!(only_live.events.iter().all(|e| e.path.as_deref() == Some("/f")));
}

#[test]
fn off_records_nothing_and_has_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::Off);
    let sink = start(cfg.clone());
    sink.record(Event::new(Op::Read, 1, 1, 1));
    sink.flush().unwrap();
    assert_eq!(sink.stats().recorded, 0);
    assert!(!sink.enabled());
    assert!(!cfg.path.exists());
}

#[test]
fn unknown_record_tags_from_a_newer_writer_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::Full);
    let path = cfg.path.clone();
    let sink = start(cfg);
    sink.record(Event::new(Op::Read, 1, 100, 0));
    drop(sink);
    let mut data = std::fs::read(&path).unwrap();
    let payload = [200u8, 9, 9, 9];
    data.extend_from_slice(&4u32.to_le_bytes());
    data.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    data.extend_from_slice(&payload);
    let more = Record::Dropped(strata::accesslog::event::DropRecord { ts_ns: 1, count: 2 });
    encode_record(&more, &mut data).unwrap();
    let log = parse_log(&data).unwrap();
    assert_eq!(log.unknown_records, 1);
    assert_eq!(log.torn_tail, None);
    assert_eq!(log.records.last(), Some(&more));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_log(&data);
    }

    #[test]
    fn random_records_after_a_good_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..1024),
        lens in proptest::collection::vec(0u32..64, 0..8),
    ) {
        let mut data = strata::accesslog::LogHeader::new(Mode::Full, 0, 1, 0).encode().to_vec();
        // Frames with valid checksums over random payloads: the decoder sees hostile bodies.
        let mut at = 0;
        for l in lens {
            let l = l as usize;
            let p = &body[at.min(body.len())..(at + l).min(body.len())];
            at += l;
            data.extend_from_slice(&(p.len() as u32).to_le_bytes());
            data.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            data.extend_from_slice(p);
        }
        data.extend_from_slice(&body[at.min(body.len())..]);
        let log = parse_log(&data).unwrap();
        if let Some(t) = log.torn_tail {
            prop_assert!(t as usize <= data.len());
        }
    }
}

fn strata(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_strata")).args(args).output().unwrap()
}

fn strata_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = strata(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cli_show_stats_export() {
    use std::ffi::OsStr;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir, Mode::Full);
    let log = cfg.path.clone();
    let sink = start(cfg);
    ping_pong(&sink, 6);
    drop(sink);
    let l = log.as_os_str();
    let a = |s: &'static str| OsStr::new(s);

    let v = strata_json(&[a("accesslog"), a("show"), a("--json"), l]);
    assert_eq!(v["mode"], "full");
    assert_eq!(v["dropped"], 0);
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 12);
    assert_eq!(evs[0]["op"], "lookup");
    assert_eq!(evs[0]["path"], "/etc");
    assert_eq!(evs[1]["process"], "beta");
    assert_eq!(evs[5]["offset"], 2 * 4096);

    let v = strata_json(&[
        a("accesslog"),
        a("show"),
        a("--json"),
        a("--process"),
        a("beta"),
        a("--op"),
        a("read,open"),
        l,
    ]);
    assert_eq!(v["events"].as_array().unwrap().len(), 5);
    let v = strata_json(&[
        a("accesslog"),
        a("show"),
        a("--json"),
        a("--uid"),
        a("1000"),
        a("--limit"),
        a("2"),
        l,
    ]);
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
    let v = strata_json(&[
        a("accesslog"),
        a("show"),
        a("--json"),
        a("--path-prefix"),
        a("/etc/hosts"),
        l,
    ]);
    assert_eq!(v["events"].as_array().unwrap().len(), 11);
    let v = strata_json(&[a("accesslog"), a("show"), a("--json"), a("--until"), a("0"), l]);
    assert_eq!(v["events"].as_array().unwrap().len(), 0);

    let v = strata_json(&[a("accesslog"), a("stats"), a("--json"), l]);
    assert_eq!(v["events"], 12);
    assert_eq!(v["top_by_bytes"][0]["path"], "/etc/hosts");
    assert_eq!(v["top_by_bytes"][0]["bytes_read"], 8 * 4096);
    let order: Vec<&str> =
        v["first_touch"].as_array().unwrap().iter().map(|t| t["path"].as_str().unwrap()).collect();
    assert_eq!(order, ["/etc", "/etc/hosts"]);
    assert_eq!(v["cache"]["hit_ratio"], 0.5);
    assert_eq!(v["processes"].as_array().unwrap().len(), 2);
    let text = strata(&[a("accesslog"), a("stats"), l]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("first-touch order (2 paths)"));

    let out = dir.path().join("opt.json");
    let r = strata(&[
        a("accesslog"),
        a("export"),
        a("--format"),
        a("nydus-optimize"),
        a("-o"),
        out.as_os_str(),
        l,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"version":"v1","files":[{"path":"/etc/hosts","ranges":[[8192,16384]]}]})
    );
    let r = strata(&[
        a("accesslog"),
        a("export"),
        a("--format"),
        a("prefetch-list"),
        a("-o"),
        a("-"),
        l,
    ]);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "/etc/hosts\n");
    let r = strata(&[a("accesslog"), a("export"), a("--format"), a("csv"), a("-o"), a("-"), l]);
    assert_eq!(String::from_utf8_lossy(&r.stdout).lines().count(), 13);
    let r = strata(&[a("accesslog"), a("export"), a("--format"), a("json"), a("-o"), a("-"), l]);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 12);

    // A torn tail warns and still reads; garbage and future versions fail clearly.
    let data = std::fs::read(&log).unwrap();
    std::fs::write(&log, &data[..data.len() - 2]).unwrap();
    let r = strata(&[a("accesslog"), a("show"), a("--json"), l]);
    assert!(r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("torn tail"));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 11);
    assert_eq!(v["torn"].as_array().unwrap().len(), 1);
    let bad = dir.path().join("garbage.log");
    std::fs::write(&bad, b"\x7fELF this is no log").unwrap();
    let r = strata(&[a("accesslog"), a("stats"), bad.as_os_str()]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("not a strata access log"));
    let mut future = data.clone();
    future[8] = 3;
    std::fs::write(&bad, &future).unwrap();
    let r = strata(&[
        a("accesslog"),
        a("export"),
        a("--format"),
        a("csv"),
        a("-o"),
        a("-"),
        bad.as_os_str(),
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("version 3 is newer"));
}

#[test]
fn a_short_lived_process_keeps_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir, Mode::Full);
    cfg.flush_interval_ms = 60_000; // only the new-pid wakeup can resolve it in time
    let path = cfg.path.clone();
    let sink =
        Arc::new(AccessSink::start(SinkOptions::new(cfg).paths(Arc::new(RootOnly(1)))).unwrap());
    let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
    // `spawn` can return before exec renames the child (the kernel closes the close-on-exec
    // pipe spawn waits on before it sets the new name): wait until the process is `sleep`, as
    // a process sending a FUSE request always is.
    let comm = format!("/proc/{}/comm", child.id());
    let t0 = Instant::now();
    while std::fs::read_to_string(&comm).unwrap_or_default().trim_end() != "sleep" {
        assert!(t0.elapsed() < Duration::from_secs(10), "the child never became sleep");
        std::thread::sleep(Duration::from_millis(1));
    }
    sink.record(Event::new(Op::Lookup, 1, child.id(), 0).with_name(b"x").with_aux(2));
    // The writer wakes for the new pid; give it a moment, then end the process.
    let t0 = Instant::now();
    while sink.stats().written_records < 2 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(sink);
    let r = replay_path(&path, false).unwrap();
    assert_eq!(r.events.len(), 1);
    assert_eq!((r.events[0].process.as_str(), r.events[0].tgid), ("sleep", child.id()));
}
