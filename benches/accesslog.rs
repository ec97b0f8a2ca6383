//! Criterion benchmarks of the access log's hot path, and its size on disk.
//!
//! * `record/<mode>/<workload>`: ns per `AccessSink::record` with the writer thread running
//!   (4 KiB reads with a chunk span and a cache outcome, the common FUSE event):
//!   * `off`: the mode check only.
//!   * `first-touch/repeat`: the same chunk again and again (the per-thread filter answers).
//!   * `first-touch/new`: a new chunk every time (ring write plus filter insert).
//!   * `full/read`: every read kept.
//!   * `full/lookup`: lookups carrying a 12-byte name.
//!
//!   The timed loop records `BATCH` events, then (untimed) flushes, so rings never overflow and
//!   nothing is dropped: this is the cost a request pays, not the writer's.
//! * `writer/<mode>/small-files`: ns per event for recording AND writing a cold small-file
//!   workload (per file: a lookup naming it, getattr, open, four 4 KiB reads of new chunks),
//!   timed from the first record to the end of the flush that writes it: the background
//!   writer's drain, first-touch filter, path/process records, encoding and `write`, which
//!   runs on a core the daemon's requests would otherwise use. The log lives on /dev/shm when
//!   there is one, so the flush's fsync is not what is measured.
//! * `writer/<mode>/read-new-files`: the same for what `bench/accesslog_overhead.sh`'s
//!   read_all sends a RAFS mount: one whole-file read per file, every file new, no lookup
//!   naming it (the kernel learned it from readdirplus), so the writer asks the path resolver
//!   (here a two-level tree of 100 directories, as the bench's image) and writes a path record
//!   and an access record per file.
//! * Before the criterion runs, `bytes/event` lines: log bytes per recorded event for a
//!   workload of lookups and sequential 4 KiB reads over 200 files (full and first-touch).
//!
//! Run with `cargo bench --bench accesslog`; results in docs/benchmarks.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use strata::accesslog::file::HEADER_LEN;
use strata::accesslog::{
    read_log, AccessLogConfig, AccessSink, Cache, Event, Mode, Op, PathResolver, ProcessInfo,
    ProcessResolver, Record, RootOnly, SinkOptions,
};

/// Events recorded between two (untimed) flushes.
const BATCH: u64 = 50_000;

struct OneProcess;

impl ProcessResolver for OneProcess {
    fn process(&self, pid: u32) -> ProcessInfo {
        ProcessInfo { tgid: pid, name: "bench".into() }
    }
}

fn sink(dir: &tempfile::TempDir, mode: Mode, name: &str) -> AccessSink {
    sink_with(dir, mode, name, Arc::new(RootOnly(1)))
}

fn sink_with(
    dir: &tempfile::TempDir,
    mode: Mode,
    name: &str,
    paths: Arc<dyn PathResolver>,
) -> AccessSink {
    let cfg = AccessLogConfig {
        path: dir.path().join(name),
        mode,
        max_memory: 64 << 20,
        rotate_size: 0,
        ..Default::default()
    };
    let opts = SinkOptions::new(cfg).max_threads(4).paths(paths).processes(Arc::new(OneProcess));
    AccessSink::start(opts).expect("start sink")
}

/// Time `iters` calls of `f(i)` on `s`, flushing (untimed) every `BATCH`.
fn timed(s: &AccessSink, iters: u64, mut f: impl FnMut(u64)) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = BATCH.min(iters - done);
        let t0 = Instant::now();
        for i in done..done + n {
            f(i);
        }
        total += t0.elapsed();
        done += n;
        s.flush().expect("flush");
    }
    assert_eq!(s.stats().dropped, 0, "the bench must not overflow the rings");
    total
}

fn read(i: u64) -> Event<'static> {
    // 256 files of 1 MiB in 4 KiB chunks, read in order.
    let ino = 2 + (i >> 8) % 256;
    let chunk = (i & 255) as u32;
    Event::new(Op::Read, ino, 4242, 0)
        .with_range(u64::from(chunk) << 12, 4096)
        .with_chunks(chunk, chunk)
        .with_cache(Cache::Hit)
}

fn bench_record(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("record");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));

    let off = sink(&dir, Mode::Off, "off.log");
    g.bench_function("off", |b| {
        b.iter_custom(|n| timed(&off, n, |i| off.record(black_box(read(i)))))
    });

    let ft = sink(&dir, Mode::FirstTouch, "ft-repeat.log");
    g.bench_function("first-touch/repeat", |b| {
        b.iter_custom(|n| timed(&ft, n, |_| ft.record(black_box(read(7)))))
    });
    drop(ft);

    let ft = sink(&dir, Mode::FirstTouch, "ft-new.log");
    let mut next = 0u64;
    g.bench_function("first-touch/new", |b| {
        b.iter_custom(|n| {
            timed(&ft, n, |_| {
                // A new inode every time: every event is a first touch.
                next += 1;
                ft.record(black_box(
                    Event::new(Op::Read, 1_000 + next, 4242, 0)
                        .with_range(0, 4096)
                        .with_chunks(0, 0)
                        .with_cache(Cache::Miss),
                ))
            })
        })
    });
    drop(ft);

    let full = sink(&dir, Mode::Full, "full.log");
    g.bench_function("full/read", |b| {
        b.iter_custom(|n| timed(&full, n, |i| full.record(black_box(read(i)))))
    });
    g.bench_function("full/lookup", |b| {
        b.iter_custom(|n| {
            timed(&full, n, |i| {
                full.record(black_box(
                    Event::new(Op::Lookup, 1, 4242, 0).with_name(b"libc.so.6.12").with_aux(i),
                ))
            })
        })
    });
    g.finish();
}

/// One file's cold access: lookup, getattr, open, four reads of new chunks (7 events).
fn small_file(s: &AccessSink, file: u64, name: &[u8]) {
    let ino = 1_000 + file;
    s.record(Event::new(Op::Lookup, 1, 4242, 0).with_name(name).with_aux(ino));
    s.record(Event::new(Op::Getattr, ino, 4242, 0));
    s.record(Event::new(Op::Open, ino, 4242, 0));
    for chunk in 0..4u32 {
        s.record(
            Event::new(Op::Read, ino, 4242, 0)
                .with_range(u64::from(chunk) << 12, 4096)
                .with_chunks(chunk, chunk)
                .with_cache(Cache::Miss),
        );
    }
}

fn bench_writer(c: &mut Criterion) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    let dir = dir.expect("tempdir");
    let mut g = c.benchmark_group("writer");
    g.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_millis(500));
    for mode in [Mode::FirstTouch, Mode::Full] {
        let s = sink(&dir, mode, &format!("writer-{mode}.log"));
        let mut file = 0u64;
        g.bench_function(format!("{mode}/small-files"), |b| {
            b.iter_custom(|n| {
                // n events, 7 per file; every file is new (a cold start).
                let files = n.div_ceil(7);
                let t0 = Instant::now();
                let mut name = [0u8; 16];
                for _ in 0..files {
                    file += 1;
                    name[..8].copy_from_slice(b"mod-.py.");
                    name[8..].copy_from_slice(&file.to_le_bytes());
                    small_file(&s, file, &name);
                    if file % (BATCH / 8) == 0 {
                        s.flush().expect("flush");
                    }
                }
                s.flush().expect("flush");
                t0.elapsed().mul_f64(n as f64 / (7 * files) as f64)
            })
        });
        assert_eq!(s.stats().dropped, 0, "the bench must not overflow the rings");
    }
    for mode in [Mode::FirstTouch, Mode::Full] {
        let tree = Arc::new(Tree((0..100).map(|d| format!("d{d:03}").into_bytes()).collect()));
        let s = sink_with(&dir, mode, &format!("reads-{mode}.log"), tree);
        let mut file = 0u64;
        g.bench_function(format!("{mode}/read-new-files"), |b| {
            b.iter_custom(|n| {
                let t0 = Instant::now();
                for _ in 0..n {
                    // Every file new (inodes past the root and the 100 directories).
                    file += 1;
                    let ino = 1_000 + file;
                    s.record(
                        Event::new(Op::Read, ino, 4242, 0)
                            .with_range(0, 8192)
                            .with_chunks(0, 0)
                            .with_cache(Cache::Hit),
                    );
                    if file % (BATCH / 8) == 0 {
                        s.flush().expect("flush");
                    }
                }
                s.flush().expect("flush");
                t0.elapsed()
            })
        });
        assert_eq!(s.stats().dropped, 0, "the bench must not overflow the rings");
    }
    g.finish();
}

/// Paths of a two-level tree: the root (inode 1) is `/`, inodes 2..=101 its directories
/// (names in the vector), and inode `i` > 101 the file `f<i>` of directory `2 + i % 100`.
struct Tree(Vec<Vec<u8>>);

impl PathResolver for Tree {
    fn path(&self, _layer: u32, inode: u64) -> Option<Vec<u8>> {
        use std::io::Write;
        let dir = |i: u64| self.0.get(usize::try_from(i.checked_sub(2)?).ok()?);
        let mut p = Vec::with_capacity(32);
        match inode {
            0 => return None,
            1 => p.push(b'/'),
            2..=101 => {
                p.push(b'/');
                p.extend_from_slice(dir(inode)?);
            }
            _ => {
                p.push(b'/');
                p.extend_from_slice(dir(2 + inode % 100)?);
                write!(p, "/f{inode}").ok()?;
            }
        }
        Some(p)
    }
}

/// Log bytes per recorded event for a small, realistic workload.
fn bytes_per_event() {
    for mode in [Mode::Full, Mode::FirstTouch] {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sink(&dir, mode, "size.log");
        let mut names = Vec::new();
        for f in 0..200u64 {
            names.push(format!("file-{f:05}.so"));
        }
        let mut events = 0u64;
        for round in 0..3u64 {
            for (f, name) in names.iter().enumerate() {
                let ino = 100 + f as u64;
                s.record(
                    Event::new(Op::Lookup, 1, 4242, 0).with_name(name.as_bytes()).with_aux(ino),
                );
                s.record(Event::new(Op::Open, ino, 4242, 0));
                events += 2;
                for chunk in 0..64u32 {
                    let cache = if round == 0 { Cache::Miss } else { Cache::Hit };
                    s.record(
                        Event::new(Op::Read, ino, 4242, 0)
                            .with_range(u64::from(chunk) << 12, 4096)
                            .with_chunks(chunk, chunk)
                            .with_cache(cache),
                    );
                    events += 1;
                }
            }
            s.flush().expect("flush");
        }
        drop(s);
        let log = read_log(&dir.path().join("size.log")).expect("read log");
        let kept = log.records.iter().filter(|r| matches!(r, Record::Access(_))).count() as u64;
        let body = log.len - HEADER_LEN as u64;
        println!(
            "bytes/event/{mode}: {:.1} ({body} bytes of records for {kept} access records kept \
             of {events} recorded; {} records in all)",
            body as f64 / kept.max(1) as f64,
            log.records.len(),
        );
    }
}

fn main() {
    bytes_per_event();
    let mut c = Criterion::default().configure_from_args();
    bench_record(&mut c);
    bench_writer(&mut c);
    c.final_summary();
}
