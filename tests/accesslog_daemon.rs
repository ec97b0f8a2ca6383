//! Tier 3 (root): the access log as stratad keeps it. A scripted workload from two processes
//! comes back in the order, ranges, pids and names it happened; a killed daemon leaves a log
//! that reads up to its last flush and reports a torn tail; a tiny memory bound and a full log
//! disk never stop requests, and both count what they drop; the overlay records mutations with
//! paths. Every mount is under the test's own temp dir and guarded.

mod common;

use common::{noise, path_str as s};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::{is_mounted, Daemon};
use common::{require_root, strata};
use strata::accesslog::{replay_path, Op, Resolved};

/// A small image: /lib/big.bin (3 MiB, 3 chunks), /etc/{hosts,passwd}, 200 files in /many.
fn image(t: &Path) -> (PathBuf, PathBuf) {
    let src = t.join("src");
    std::fs::create_dir_all(src.join("lib")).unwrap();
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("many")).unwrap();
    std::fs::write(src.join("lib/big.bin"), noise(1, 3 << 20)).unwrap();
    std::fs::write(src.join("etc/hosts"), noise(2, 10_000)).unwrap();
    std::fs::write(src.join("etc/passwd"), noise(3, 8192)).unwrap();
    for i in 0..200 {
        std::fs::write(src.join(format!("many/f{i}")), noise(i as u64 + 10, 4096)).unwrap();
    }
    let (boot, blobs) = (t.join("boot"), t.join("blobs"));
    let out = strata(&["image", "create", "-B", s(&boot), "-D", s(&blobs), s(&src)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (boot, blobs)
}

/// A v2 config with a blob cache, no read-ahead (so cache outcomes are the reads' own) and the
/// given `accesslog` section.
fn config(t: &Path, blobs: &Path, accesslog: serde_json::Value) -> PathBuf {
    let p = t.join("config.json");
    let cfg = serde_json::json!({
        "version": 2,
        "backend": {"type": "localfs", "localfs": {"dir": blobs}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": t.join("cache")}},
        "rafs": {"batch_size": 0},
        "accesslog": accesslog,
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn mount(t: &Path, cfg: &Path, boot: &Path) -> Daemon {
    let mnt = t.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    Daemon::start(&["-C", s(cfg), "-B", s(boot)], &mnt, &t.join("api.sock"))
}

/// Run `prog args` to completion; returns its pid.
fn run(prog: &Path, args: &[&str]) -> u32 {
    let mut c = Command::new(prog).args(args).spawn().expect("spawn");
    let pid = c.id();
    let st = c.wait().unwrap();
    assert!(st.success(), "{} {args:?}: {st}", prog.display());
    pid
}

/// `dd` reading one 4 KiB block at block `blk` with O_DIRECT, so the daemon sees exactly that
/// read (no page cache, no read-ahead).
fn dd_block(dd: &Path, file: &Path, blk: u64) -> u32 {
    let (inf, skip) = (format!("if={}", s(file)), format!("skip={blk}"));
    run(dd, &[&inf, "of=/dev/null", "bs=4096", "count=1", "iflag=direct", &skip, "status=none"])
}

fn reads(events: &[Resolved]) -> Vec<(String, u64, u64, u32, String)> {
    events
        .iter()
        .filter(|e| e.op_kind == Some(Op::Read))
        .map(|e| {
            let path = e.path.clone().unwrap_or_default();
            (path, e.offset.unwrap(), e.len.unwrap(), e.tgid, e.process.clone())
        })
        .collect()
}

#[test]
fn a_scripted_workload_comes_back_in_order_with_ranges_pids_and_names() {
    if !require_root("a_scripted_workload_comes_back_in_order", "FUSE mounts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = image(t.path());
    let log = t.path().join("access.log");
    let cfg = config(t.path(), &blobs, serde_json::json!({"path": log, "mode": "first-touch"}));
    // Two programs: dd and a copy of it with another name (the name is what the log shows).
    let dd = PathBuf::from("/bin/dd");
    let dd2 = t.path().join("ddtwo");
    std::fs::copy(&dd, &dd2).unwrap();
    let mut d = mount(t.path(), &cfg, &boot);
    let m = d.mnt.clone();
    let big = m.join("lib/big.bin");
    let p1 = dd_block(&dd, &big, 300); // chunk 1
    let p2 = dd_block(&dd2, &m.join("etc/hosts"), 1);
    let p3 = dd_block(&dd, &big, 10); // chunk 0
    let p4 = dd_block(&dd2, &big, 301); // chunk 1 again: first-touch keeps it once
    let p5 = dd_block(&dd, &big, 600); // chunk 2
    let p6 = dd_block(&dd2, &m.join("etc/passwd"), 0);
    assert!(d.stop().success());

    let r = replay_path(&log, true).unwrap();
    assert!(r.torn.is_empty(), "{:?}", r.torn);
    let want: Vec<(String, u64, u64, u32, String)> = vec![
        ("/lib/big.bin".into(), 300 * 4096, 4096, p1, "dd".into()),
        ("/etc/hosts".into(), 4096, 4096, p2, "ddtwo".into()),
        ("/lib/big.bin".into(), 10 * 4096, 4096, p3, "dd".into()),
        ("/lib/big.bin".into(), 600 * 4096, 4096, p5, "dd".into()),
        ("/etc/passwd".into(), 0, 4096, p6, "ddtwo".into()),
    ];
    assert_eq!(reads(&r.events), want);
    let _ = p4;
    // Chunk spans and the cache outcome of each first touch (cold cache: all misses).
    let spans: Vec<(Option<u32>, Option<&str>)> = r
        .events
        .iter()
        .filter(|e| e.op_kind == Some(Op::Read))
        .map(|e| (e.chunk_first, e.cache))
        .collect();
    assert_eq!(
        spans,
        vec![
            (Some(1), Some("miss")),
            (Some(0), Some("miss")),
            (Some(0), Some("miss")),
            (Some(2), Some("miss")),
            (Some(0), Some("miss")),
        ]
    );
    // The lookups name each file before its first read, in the order they were first made.
    let looked_up: Vec<String> = r
        .events
        .iter()
        .filter(|e| e.op_kind == Some(Op::Lookup))
        .filter_map(|e| e.path.clone())
        .collect();
    assert_eq!(looked_up, ["/lib", "/lib/big.bin", "/etc", "/etc/hosts", "/etc/passwd"]);
    // The prefetch list export is that first-touch order of files.
    let out = strata(&["accesslog", "export", "--format", "prefetch-list", "-o", "-", s(&log)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/lib/big.bin\n/etc/hosts\n/etc/passwd\n");
}

#[test]
fn a_killed_daemon_leaves_a_log_that_reads_to_its_last_flush() {
    if !require_root("a_killed_daemon_leaves_a_log_that_reads_to_its_last_flush", "FUSE mounts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = image(t.path());
    let log = t.path().join("access.log");
    let al = serde_json::json!({"path": log, "mode": "full", "flush_interval_ms": 50});
    let cfg = config(t.path(), &blobs, al);
    let mut d = mount(t.path(), &cfg, &boot);
    let m = d.mnt.clone();
    for i in 0..20 {
        dd_block(Path::new("/bin/dd"), &m.join(format!("many/f{i}")), 0);
    }
    std::thread::sleep(Duration::from_millis(500)); // several writer intervals
    d.crash();
    assert!(!is_mounted(&m));

    let r = replay_path(&log, true).unwrap();
    let got: Vec<String> = reads(&r.events).into_iter().map(|e| e.0).collect();
    let want: Vec<String> = (0..20).map(|i| format!("/many/f{i}")).collect();
    assert_eq!(got, want, "every read flushed before the kill is in the log");

    // A crash in the middle of a write leaves part of a record: readers keep what is whole
    // and say where the tail tore.
    let data = std::fs::read(&log).unwrap();
    std::fs::write(&log, &data[..data.len() - 3]).unwrap();
    let r = replay_path(&log, true).unwrap();
    assert_eq!(r.torn.len(), 1, "{:?}", r.torn);
    assert!(reads(&r.events).len() >= 19);
    let out = strata(&["accesslog", "stats", s(&log)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("torn tail"));
}

/// The thread id of daemon `pid`'s access log writer (the thread named `accesslog`).
fn writer_thread(pid: u32) -> Option<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        (comm.trim_end() == "accesslog").then(|| t.file_name().to_str()?.parse().ok())?
    })
}

/// A tmpfs of `size` mounted at `dir` (inside the test's temp dir), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", s(dir)])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Read every file of /many `rounds` times with O_DIRECT from one python process (each read
/// reaches the daemon), checking every byte against the source tree `src`.
fn read_storm(m: &Path, src: &Path, rounds: u32) {
    let script = format!(
        r#"
import mmap, os
buf = mmap.mmap(-1, 4096)
want = [open("{src}/many/f%d" % i, "rb").read() for i in range(200)]
for r in range({rounds}):
    for i in range(200):
        fd = os.open("{m}/many/f%d" % i, os.O_RDONLY | os.O_DIRECT)
        n = os.preadv(fd, [buf], 0)
        os.close(fd)
        assert n == 4096 and buf[:4096] == want[i], (i, n)
"#,
        m = s(m),
        src = s(src)
    );
    let st = Command::new("python3").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "every read is served, with the right bytes");
}

#[test]
fn a_tiny_memory_bound_and_a_full_log_disk_drop_and_count_but_never_block() {
    if !require_root("a_tiny_memory_bound_and_a_full_log_disk", "FUSE and tmpfs mounts") {
        return;
    }
    // (a) A tiny memory bound: events are dropped and counted; the API and `stats` say so.
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = image(t.path());
    let log = t.path().join("access.log");
    let al = serde_json::json!({"path": log, "mode": "full", "max_memory": 2048,
                                "flush_interval_ms": 1000});
    let cfg = config(t.path(), &blobs, al);
    let mut d = mount(t.path(), &cfg, &boot);
    read_storm(&d.mnt, &t.path().join("src"), 3);
    let (status, v) = d.api("GET", "/api/v1/accesslog?op=read&limit=5");
    assert_eq!(status, 200, "{v}");
    let dropped = v["stats"]["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "a 2 KiB bound under 600+ events drops: {v}");
    // The daemon's writer runs under SCHED_IDLE when it could be raised again; the API's own
    // flush raised it, and the round after puts it back.
    let pid = d.child.as_ref().unwrap().id();
    let writer = writer_thread(pid).expect("an accesslog thread");
    if common::may_leave_sched_idle() {
        assert!(matches!(v["writer_priority"].as_str(), Some("idle" | "raised")), "{v}");
        let t0 = std::time::Instant::now();
        while common::thread_policy(pid, writer) != Some(5) {
            assert!(t0.elapsed() < Duration::from_secs(10), "the writer never went idle: {v}");
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        assert!(v["writer_priority"].as_str().unwrap().starts_with("normal: "), "{v}");
        assert_eq!(common::thread_policy(pid, writer), Some(0));
    }
    assert!(v["events"].as_array().unwrap().len() <= 5);
    assert!(d.stop().success());
    let out = strata(&["accesslog", "stats", s(&log)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text.lines().find(|l| l.contains("dropped by the recorder")).unwrap_or("");
    let n: u64 = line.rsplit(' ').next().and_then(|x| x.parse().ok()).unwrap_or(0);
    assert!(n > 0, "stats reports the drops: {text}");
    drop(t);

    // (b) The log's disk fills up: reads go on, the API reports write errors and drops.
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = image(t.path());
    let logfs = Tmpfs::mount(&t.path().join("logfs"), "12k");
    let log = logfs.0.join("access.log");
    let al = serde_json::json!({"path": log, "mode": "full", "flush_interval_ms": 20});
    let cfg = config(t.path(), &blobs, al);
    let mut d = mount(t.path(), &cfg, &boot);
    read_storm(&d.mnt, &t.path().join("src"), 3);
    let (status, v) = d.api("GET", "/api/v1/accesslog?limit=1");
    assert_eq!(status, 200, "{v}");
    assert!(v["stats"]["write_errors"].as_u64().unwrap() > 0, "{v}");
    assert!(v["stats"]["dropped"].as_u64().unwrap() > 0, "{v}");
    assert!(v["last_error"].as_str().unwrap_or("").contains("No space left"), "{v}");
    assert!(d.stop().success(), "a full log disk does not fail the daemon's exit");
    // What made it to disk still reads.
    let r = replay_path(&log, true).unwrap();
    assert!(!r.events.is_empty());
    drop(logfs);
}

#[test]
fn the_overlay_records_reads_and_mutations_with_paths() {
    if !require_root("the_overlay_records_reads_and_mutations_with_paths", "FUSE mounts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let lower = t.path().join("lower");
    std::fs::create_dir_all(lower.join("etc")).unwrap();
    std::fs::write(lower.join("etc/motd"), b"hello\n").unwrap();
    // Read in 128 KiB requests: those are spliced from the file (daemon::splice).
    let big: Vec<u8> = (0..262_144u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(lower.join("etc/big"), &big).unwrap();
    let (upper, work, mnt) = (t.path().join("upper"), t.path().join("work"), t.path().join("m"));
    for d in [&upper, &work, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    let log = t.path().join("overlay.log");
    let lowerdir = format!("--lowerdir={}", s(&lower));
    let args = [
        "overlay",
        &lowerdir,
        "--upperdir",
        s(&upper),
        "--workdir",
        s(&work),
        "--accesslog",
        s(&log),
        "--accesslog-mode",
        "full",
    ];
    let mut d = Daemon::start(&args, &mnt, &t.path().join("api.sock"));
    let script = format!(
        "cat {m}/etc/motd >/dev/null && echo new > {m}/etc/new && mv {m}/etc/new {m}/etc/renamed \
         && rm {m}/etc/renamed && mkdir {m}/d && cat {m}/etc/big >/dev/null",
        m = s(&mnt)
    );
    assert!(Command::new("sh").arg("-c").arg(&script).status().unwrap().success());
    let (status, v) = d.api("GET", "/api/v1/accesslog?op=create,rename,unlink,mkdir&limit=10");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["events"].as_array().unwrap().len(), 4, "{v}");
    // nydusd's io metrics count the overlay's reading operations too.
    let (status, m) = d.api("GET", "/api/v1/metrics");
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["data_read"], 6 + 262_144, "cat read /etc/motd and /etc/big: {m}");
    assert!(m["fop_hits"][9].as_u64().unwrap() >= 2, "lookups counted: {m}");
    assert!(d.stop().success());

    let r = replay_path(&log, true).unwrap();
    let big_reads: Vec<(u64, u64)> = r
        .events
        .iter()
        .filter(|e| e.op == "read" && e.path.as_deref() == Some("/etc/big"))
        .map(|e| (e.offset.unwrap_or(0), e.len.unwrap_or(0)))
        .collect();
    assert_eq!(big_reads.iter().map(|r| r.1).sum::<u64>(), 262_144, "{big_reads:?}");
    assert!(big_reads.iter().all(|r| r.1 >= 32 * 1024), "large (spliced) reads: {big_reads:?}");
    let ops: Vec<(String, String, Option<String>)> = r
        .events
        .iter()
        .filter(|e| e.path.as_deref() != Some("/etc/big"))
        .filter(|e| {
            matches!(
                e.op_kind,
                Some(Op::Read | Op::Create | Op::Write | Op::Rename | Op::Unlink | Op::Mkdir)
            )
        })
        .map(|e| (e.op.clone(), e.path.clone().unwrap_or_default(), e.path2.clone()))
        .collect();
    let o =
        |op: &str, p: &str, p2: Option<&str>| (op.to_string(), p.to_string(), p2.map(String::from));
    assert_eq!(
        ops,
        vec![
            o("read", "/etc/motd", None),
            o("create", "/etc/new", None),
            o("write", "/etc/new", None),
            o("rename", "/etc/new", Some("/etc/renamed")),
            o("unlink", "/etc/renamed", None),
            o("mkdir", "/d", None),
        ]
    );
    let procs: std::collections::BTreeSet<&str> =
        r.events.iter().map(|e| e.process.as_str()).collect();
    assert!(procs.contains("cat") && procs.contains("mv") && procs.contains("rm"), "{procs:?}");
}
