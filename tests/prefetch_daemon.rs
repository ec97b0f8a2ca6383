//! Tier 3 (root): stratad prefetches over the http-proxy backend from `strata-blobserver`:
//! `--prefetch-files`, a recorded access log (`--prefetch-log`), the mount API's
//! `prefetch_files`; what was prefetched then reads without a backend request, the rest is
//! still fetched on demand, and the blobcache metrics report it. Mounts and processes are the
//! test's own and are cleaned up by guards.

mod common;

use common::{noise, path_str as s};

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{require_root, strata};

/// A blob server child, killed (by its PID) on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_strata-blobserver"))
            .args(["--listen", "127.0.0.1:0", "--dir", s(dir)])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap().to_string();
        Server { child, addr }
    }

    /// GET requests served so far.
    fn gets(&self) -> u64 {
        let mut c =
            std::net::TcpStream::connect(self.addr.strip_prefix("http://").unwrap()).unwrap();
        c.write_all(b"GET /_stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
        v["get_requests"].as_u64().unwrap()
    }
}

/// /a, /b, /c: 3 chunks of 1 MiB each (distinct data), and /etc/small.
fn image(t: &Path) -> (PathBuf, PathBuf) {
    let src = t.join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    for (i, f) in ["a", "b", "c"].iter().enumerate() {
        std::fs::write(src.join(f), noise(i as u64 + 1, 3 << 20)).unwrap();
    }
    std::fs::write(src.join("etc/small"), b"small\n").unwrap();
    let (boot, blobs) = (t.join("boot"), t.join("blobs"));
    strata(&["image", "create", "-B", s(&boot), "-D", s(&blobs), s(&src)]);
    (boot, blobs)
}

fn config(t: &Path, name: &str, addr: &str, extra: serde_json::Value) -> PathBuf {
    let mut v = serde_json::json!({
        "version": 2,
        "backend": {"type": "http-proxy", "http-proxy": {"addr": addr, "path": "/blobs"}},
        "cache": {"type": "blobcache", "filecache": {"work_dir": t.join(format!("cache-{name}"))},
                  "prefetch": {"enable": true, "threads_count": 2, "prefetch_all": false}},
        "rafs": {"batch_size": 0},
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    let p = t.join(format!("{name}.json"));
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

/// Blobcache metrics once prefetch finished (its end time is set).
fn prefetched(d: &Daemon, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = d.api("GET", &format!("/api/v1/metrics/blobcache?id={id}"));
        assert_eq!(st, 200, "{v}");
        if v["prefetch_end_time_secs"].as_u64().unwrap_or(0) > 0 {
            return v;
        }
        assert!(Instant::now() < deadline, "prefetch did not finish: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn prefetch_files_and_a_recorded_log_are_fetched_before_they_are_read() {
    if !require_root("prefetch_files_and_a_recorded_log", "FUSE mounts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = image(t.path());
    let server = Server::start(&blobs);
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();

    // 1. --prefetch-files: /b is fetched at mount; reading it costs no request, /a does.
    let list = t.path().join("list");
    std::fs::write(&list, "/b\n").unwrap();
    let cfg = config(t.path(), "list", &server.addr, serde_json::json!({}));
    let args = ["-C", s(&cfg), "-B", s(&boot), "--prefetch-files", s(&list)];
    let mut d = Daemon::start(&args, &mnt, &t.path().join("api1.sock"));
    let m = prefetched(&d, "/");
    assert_eq!(m["prefetch_unmerged_chunks"], 3, "{m}");
    let amount = m["prefetch_data_amount"].as_u64().unwrap();
    assert!(amount <= (3 << 20) + 65536, "only /b was fetched: {m}");
    let before = server.gets();
    assert_eq!(read(&mnt.join("b")), noise(2, 3 << 20));
    assert_eq!(server.gets(), before, "a prefetched file reads from the cache");
    assert_eq!(read(&mnt.join("a")), noise(1, 3 << 20));
    assert!(server.gets() > before, "the rest is still fetched on demand");
    assert!(d.stop().success());

    // 2. Record a workload (/c, then /etc/small), then prefetch from that log.
    let log = t.path().join("access.log");
    let al = serde_json::json!({"accesslog": {"path": log, "mode": "first-touch"}});
    let cfg = config(t.path(), "record", &server.addr, al);
    let mut d = Daemon::start(&["-C", s(&cfg), "-B", s(&boot)], &mnt, &t.path().join("api2.sock"));
    read(&mnt.join("c"));
    read(&mnt.join("etc/small"));
    assert!(d.stop().success());
    let cfg = config(t.path(), "replay", &server.addr, serde_json::json!({}));
    let args = ["-C", s(&cfg), "-B", s(&boot), "--prefetch-log", s(&log)];
    let mut d = Daemon::start(&args, &mnt, &t.path().join("api3.sock"));
    let m = prefetched(&d, "/");
    // /c's 3 chunks and /etc/small's chunk (which may share a blob range with them).
    assert_eq!(m["prefetch_unmerged_chunks"], 4, "{m}");
    let before = server.gets();
    assert_eq!(read(&mnt.join("c")), noise(3, 3 << 20));
    assert_eq!(read(&mnt.join("etc/small")), b"small\n");
    assert_eq!(server.gets(), before, "the recorded working set came from the cache");
    assert!(d.stop().success());

    // 3. A log that is not an access log: a one-line error at start.
    std::fs::write(&log, [b'x'; 100]).unwrap();
    let out = Command::new(common::daemon::stratad_bin())
        .args(["-C", s(&cfg), "-B", s(&boot), "-M", s(&mnt), "--prefetch-log", s(&log)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a strata access log"), "{err}");
    assert_eq!(err.matches("not a strata access log").count(), 1, "said once: {err}");
}

#[test]
fn the_mount_api_prefetch_files_prefetch_a_pseudo_mount() {
    if !require_root("the_mount_api_prefetch_files_prefetch_a_pseudo_mount", "FUSE mounts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = image(t.path());
    let server = Server::start(&blobs);
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let cfg = config(t.path(), "api", &server.addr, serde_json::json!({}));
    let d = Daemon::start(&["-C", s(&cfg)], &mnt, &t.path().join("api.sock"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let body = serde_json::json!({"source": boot, "fs_type": "rafs", "config": text,
                                  "prefetch_files": ["/a", "/etc"]});
    let (st, _) = common::daemon::http(
        &d.sock,
        "POST",
        "/api/v1/mount?mountpoint=/img",
        Some(&body.to_string()),
    )
    .unwrap();
    assert_eq!(st, 204);
    let m = prefetched(&d, "/img");
    assert_eq!(m["prefetch_unmerged_chunks"], 4, "/a's 3 chunks and /etc/small's: {m}");
    let before = server.gets();
    assert_eq!(read(&mnt.join("img/a")), noise(1, 3 << 20));
    assert_eq!(server.gets(), before);
    // A relative path is a 400 naming it.
    let body = serde_json::json!({"source": boot, "fs_type": "rafs", "config": text,
                                  "prefetch_files": ["a"]});
    let (st, msg) = common::daemon::http(
        &d.sock,
        "POST",
        "/api/v1/mount?mountpoint=/img2",
        Some(&body.to_string()),
    )
    .unwrap();
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("not an absolute path"), "{msg}");
}
