//! Tier 2: `strata-blobserver` as a subprocess, read through the `http-proxy` backend: bytes,
//! request and byte counts (GET /_stats and the stats file), latency and the bandwidth cap
//! applied (lower bounds only: a loaded machine may be slower, never faster); an image read
//! whole through the chunk cache over HTTP; the unix socket mode in process.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::rafs::chunk::ChunkReader;
use strata::rafs::reader::Image;
use strata::storage::blobserver::{BlobServer, ServerOptions};
use strata::storage::{BlobBackend, ChunkCache, HttpProxy, HttpProxyConfig, StorageError};

/// The server process; killed on drop.
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

fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata-blobserver"))
        .args(["--listen", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn strata-blobserver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}"));
    Server { addr: addr.to_string(), child }
}

fn backend(addr: &str) -> HttpProxy {
    HttpProxy::new(HttpProxyConfig {
        addr: addr.to_string(),
        path: "/namespace/repo/blobs".into(),
        ..Default::default()
    })
    .unwrap()
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// GET /_stats with a plain socket.
fn stats(addr: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(addr.strip_prefix("http://").unwrap()).unwrap();
    s.write_all(b"GET /_stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    let body = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

#[test]
fn ranges_counts_and_latency() {
    let tmp = tempfile::tempdir().unwrap();
    let data = blob(300_000, 7);
    std::fs::write(tmp.path().join("blob-a"), &data).unwrap();
    let stats_file = tmp.path().join("stats.json");
    let srv =
        start(tmp.path(), &["--latency-ms", "40", "--stats-file", stats_file.to_str().unwrap()]);
    let b = backend(&srv.addr);

    assert_eq!(b.blob_size("blob-a").unwrap(), 300_000);
    let ranges = [(0u64, 10usize), (299_990, 10), (65_536, 100_000), (1, 1)];
    for (off, len) in ranges {
        let started = Instant::now();
        let got = b.read_range("blob-a", off, len).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40), "latency applied");
        assert!(got == data[off as usize..off as usize + len], "bytes at {off}+{len}");
    }
    // Past the end: refused by the size check before a request.
    assert!(matches!(b.read_range("blob-a", 299_999, 2), Err(StorageError::ShortRead { .. })));
    // Past the end with read_at: the server's 416.
    let err = b.read_at("blob-a", 400_000, &mut [0u8; 4]).unwrap_err();
    assert!(matches!(err, StorageError::ShortRead { size: 300_000, .. }), "{err:?}");
    let err = b.blob_size("nope").unwrap_err();
    assert!(matches!(err, StorageError::BlobNotFound { .. }), "{err:?}");

    let s = stats(&srv.addr);
    let body: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    assert_eq!(s["head_requests"], 2, "{s}");
    assert_eq!(s["get_requests"], 5, "{s}");
    assert_eq!(s["requests"], 7, "{s}");
    assert_eq!(s["range_requests"], 4, "{s}");
    assert_eq!(s["bytes_sent"], body, "{s}");
    assert_eq!(s["errors"], 2, "416 and 404: {s}");
    // One keep-alive connection for the backend, one for the stats request.
    assert_eq!(s["connections"], 2, "{s}");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats_file).unwrap()).unwrap();
    assert_eq!(file["requests"], 7, "{file}");
    assert_eq!(file["bytes_sent"], body, "{file}");
    assert_eq!(b.metrics().snapshot().read_bytes, body);
}

#[test]
fn bandwidth_cap_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let data = blob(1_000_000, 3);
    std::fs::write(tmp.path().join("big"), &data).unwrap();
    // 5 MB/s: 1 MB takes at least 200 ms, over one connection or several.
    let srv = start(tmp.path(), &["--bandwidth-mbps", "5"]);
    let started = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let addr = srv.addr.clone();
            let expect = data[i * 500_000..(i + 1) * 500_000].to_vec();
            std::thread::spawn(move || {
                let b = backend(&addr);
                let mut buf = vec![0u8; 500_000];
                b.read_at("big", (i * 500_000) as u64, &mut buf).unwrap();
                assert!(buf == expect);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "1 MB at 5 MB/s took {took:?}");
    assert_eq!(stats(&srv.addr)["bytes_sent"], 1_000_000);
}

#[test]
fn an_image_reads_back_through_the_cache_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("one"), blob(200_000, 1)).unwrap();
    std::fs::write(src.join("d/two"), blob(5_000, 2)).unwrap();
    let boot = tmp.path().join("boot");
    let blobs = tmp.path().join("blobs");
    common::strata(&[
        "image",
        "create",
        src.to_str().unwrap(),
        "-B",
        boot.to_str().unwrap(),
        "-D",
        blobs.to_str().unwrap(),
        "--chunk-size",
        "0x10000",
    ]);
    let srv = start(&blobs, &[]);
    let img = Image::open(&boot).unwrap();
    let http: Arc<dyn BlobBackend> = Arc::new(backend(&srv.addr));
    let cache = ChunkCache::open(&tmp.path().join("cache"), http, &img.blobs, false).unwrap();
    for (path, want) in [("/one", blob(200_000, 1)), ("/d/two", blob(5_000, 2))] {
        let inode = img.resolve(path.as_bytes()).unwrap().unwrap();
        let got = img.read(&inode, 0, u64::MAX, &cache).unwrap();
        assert!(got == want, "{path}");
    }
    let chunks = img.all_chunks().len() as u64;
    let s = stats(&srv.addr);
    assert_eq!(s["get_requests"], chunks, "one GET per chunk, cold: {s}");
    // Warm: nothing more fetched.
    for c in img.all_chunks() {
        cache.read_chunk(&c).unwrap();
    }
    assert_eq!(stats(&srv.addr)["get_requests"], chunks);
}

#[test]
fn unix_socket_mode() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("b1"), b"hello over a unix socket").unwrap();
    let sock = tmp.path().join("blobs.sock");
    let mut opts = ServerOptions::new(sock.to_str().unwrap(), tmp.path());
    opts.latency = Duration::from_millis(5);
    let srv = BlobServer::start(opts).unwrap();
    assert_eq!(srv.addr(), sock.to_str().unwrap());
    let b = backend(srv.addr());
    assert_eq!(b.blob_size("b1").unwrap(), 24);
    assert_eq!(b.read_range("b1", 6, 4).unwrap(), b"over");
    let s = srv.stats();
    assert_eq!((s.requests, s.connections, s.bytes_sent), (2, 1, 4));
    drop(srv);
    assert!(!sock.exists(), "the socket is removed on drop");
}

#[test]
fn concurrent_first_reads_of_a_blob_ask_its_size_once() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("blob-s"), blob(100_000, 3)).unwrap();
    let server = start(tmp.path(), &["--latency-ms", "50"]);
    let b = std::sync::Arc::new(backend(&server.addr));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let b = b.clone();
            std::thread::spawn(move || b.read_range("blob-s", i * 1000, 100).unwrap())
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), blob(100_000, 3)[i * 1000..i * 1000 + 100]);
    }
    let s = stats(&server.addr);
    assert_eq!(s["head_requests"], 1, "one HEAD for four first reads: {s}");
    assert_eq!(s["get_requests"], 4, "{s}");
}
