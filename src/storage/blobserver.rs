//! A blob server for tests and benchmarks: the server side of the `http-proxy` backend.
//!
//! Serves the files of one directory over HTTP/1.1: `HEAD /<anything>/<name>` for the size and
//! `GET` with an optional `Range: bytes=a-b` (also `a-` and `-n`) for the bytes of file
//! `<dir>/<name>`; only the last path segment names the file, so any `path` prefix of the
//! backend config works. It can add a fixed latency to every request and cap the bandwidth
//! of all connections together (a shared link: pieces of a body go out no faster than the
//! rate), which is what benchmarks of cold starts over a slow link need where netem is not
//! available. It counts connections, requests and body bytes; `GET /_stats` returns the
//! counters as JSON (not counted itself), and a stats file, when set, is rewritten after every
//! request.
//!
//! One thread per connection, keep-alive, idle connections closed after a timeout. Requests
//! are untrusted: heads are bounded ([`super::http::MAX_HEAD`]), bodies refused, names
//! checked like blob ids. Not a production server: no TLS, no auth, no multi-range replies.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use super::backend::validate_blob_id;
use super::http::{Conn, Head, Stream, WireError};

/// Size of the body pieces written (and paced under a bandwidth cap).
const PIECE: usize = 64 * 1024;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `host:port` (port 0: any free port) or an absolute unix socket path.
    pub listen: String,
    /// The directory whose files are served.
    pub dir: PathBuf,
    /// Added before every reply to HEAD and GET of a file.
    pub latency: Duration,
    /// Bytes per second of all bodies together; `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// A file rewritten (atomically) with the counters after every request.
    pub stats_file: Option<PathBuf>,
    /// Connections idle this long are closed.
    pub idle_timeout: Duration,
}

impl ServerOptions {
    /// Serve `dir` on `listen` with no latency, no cap, no stats file, 30 s idle timeout.
    pub fn new(listen: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: listen.into(),
            dir: dir.into(),
            latency: Duration::ZERO,
            bandwidth: None,
            stats_file: None,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Requests answered (HEAD and GET of files, errors included; `/_stats` excluded).
    pub requests: u64,
    /// HEAD requests.
    pub head_requests: u64,
    /// GET requests.
    pub get_requests: u64,
    /// GET requests with a Range header honoured (206 replies).
    pub range_requests: u64,
    /// Body bytes sent.
    pub bytes_sent: u64,
    /// Replies with a status of 400 or above.
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    head_requests: AtomicU64,
    get_requests: AtomicU64,
    range_requests: AtomicU64,
    bytes_sent: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            connections: g(&self.connections),
            requests: g(&self.requests),
            head_requests: g(&self.head_requests),
            get_requests: g(&self.get_requests),
            range_requests: g(&self.range_requests),
            bytes_sent: g(&self.bytes_sent),
            errors: g(&self.errors),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

struct Shared {
    opts: ServerOptions,
    counters: Counters,
    /// When the shared link is free again (bandwidth cap).
    link_free: Mutex<Instant>,
    stats_lock: Mutex<()>,
    stop: AtomicBool,
}

impl Shared {
    /// Wait until `n` more body bytes have crossed the capped link.
    fn pace(&self, n: usize) {
        let Some(rate) = self.opts.bandwidth.filter(|r| *r > 0) else { return };
        let cost = Duration::from_secs_f64(n as f64 / rate as f64);
        let done = {
            let mut free = self.link_free.lock();
            let start = (*free).max(Instant::now());
            *free = start + cost;
            *free
        };
        std::thread::sleep(done.saturating_duration_since(Instant::now()));
    }

    fn write_stats_file(&self) {
        let Some(path) = &self.opts.stats_file else { return };
        let _serial = self.stats_lock.lock();
        let Ok(json) = serde_json::to_vec_pretty(&self.counters.snapshot()) else { return };
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)).is_err() {
            eprintln!("strata-blobserver: cannot write stats file {}", path.display());
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A running blob server; stops accepting on drop (connections finish their request).
pub struct BlobServer {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    unix_path: Option<PathBuf>,
}

impl std::fmt::Debug for BlobServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl BlobServer {
    /// Bind and start serving on a background thread.
    pub fn start(opts: ServerOptions) -> io::Result<Self> {
        if !opts.dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", opts.dir.display()),
            ));
        }
        let (listener, addr, unix_path) = if opts.listen.starts_with('/') {
            let path = PathBuf::from(&opts.listen);
            let l = UnixListener::bind(&path)?;
            (Listener::Unix(l), opts.listen.clone(), Some(path))
        } else {
            let l = TcpListener::bind(&opts.listen)?;
            let addr = format!("http://{}", l.local_addr()?);
            (Listener::Tcp(l), addr, None)
        };
        let shared = Arc::new(Shared {
            opts,
            counters: Counters::default(),
            link_free: Mutex::new(Instant::now()),
            stats_lock: Mutex::new(()),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("blobserver-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        Ok(Self { addr, shared, accept: Some(accept), unix_path })
    }

    /// What the `http-proxy` backend's `addr` should be: `http://ip:port` or the socket path.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Current counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// Block the calling thread while the server runs (the binary's main).
    pub fn wait(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for BlobServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        match &self.unix_path {
            Some(p) => {
                let _ = std::os::unix::net::UnixStream::connect(p);
            }
            None => {
                if let Some(a) = self.addr.strip_prefix("http://") {
                    let _ = std::net::TcpStream::connect(a);
                }
            }
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    loop {
        let stream = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                bump(&shared.counters.connections, 1);
                let s = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("blobserver-conn".into())
                    .spawn(move || serve_connection(Conn::new(stream), &s));
                if let Err(e) = spawned {
                    eprintln!("strata-blobserver: cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("strata-blobserver: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A reply head; `Content-Length` is always sent.
fn head(status: u16, reason: &str, len: u64, extra: &[(&str, String)], close: bool) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\n");
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn serve_connection(mut conn: Conn, shared: &Shared) {
    let write_wait = Duration::from_secs(60);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let raw = match conn.read_head(Instant::now() + shared.opts.idle_timeout) {
            Ok(raw) => raw,
            Err(WireError::TooLarge) => {
                let _ = conn.write_all(
                    &head(431, "Request Header Fields Too Large", 0, &[], true),
                    Instant::now() + write_wait,
                );
                return;
            }
            Err(_) => return,
        };
        match answer(&mut conn, shared, &raw, Instant::now() + write_wait) {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// A request target's file name: the last path segment, percent-decoded.
fn file_name(target: &str) -> Option<String> {
    let path = target.split(['?', '#']).next()?;
    let seg = path.rsplit('/').next()?;
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    validate_blob_id(&name).ok()?;
    Some(name)
}

/// What a `Range` header asks of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// Send the whole file (no header, or one this server ignores as RFC 9110 allows: not
    /// `bytes=`, several ranges, malformed).
    Whole,
    /// Bytes `first..=last`, inside the file.
    Part(u64, u64),
    /// Nothing of the file is in the range (416).
    Unsatisfiable,
}

/// The `Range` header value `v` against a file of `size` bytes.
pub fn parse_range(v: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = v.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeAsk::Whole };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let (first, last) = match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => {
            let Some(n) = num(b) else { return RangeAsk::Whole };
            if n == 0 || size == 0 {
                return RangeAsk::Unsatisfiable;
            }
            (size - n.min(size), size - 1)
        }
        (false, true) => {
            let Some(first) = num(a) else { return RangeAsk::Whole };
            (first, size.saturating_sub(1))
        }
        (false, false) => {
            let (Some(first), Some(last)) = (num(a), num(b)) else { return RangeAsk::Whole };
            if last < first {
                return RangeAsk::Whole;
            }
            (first, last.min(size.saturating_sub(1)))
        }
        (true, true) => return RangeAsk::Whole,
    };
    if first >= size {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Part(first, last)
}

/// Answer one request; `Ok(true)` when the connection stays open.
fn answer(
    conn: &mut Conn,
    shared: &Shared,
    raw: &[u8],
    deadline: Instant,
) -> Result<bool, WireError> {
    let c = &shared.counters;
    let Ok(req) = Head::parse(raw) else {
        bump(&c.errors, 1);
        conn.write_all(&head(400, "Bad Request", 0, &[], true), deadline)?;
        return Ok(false);
    };
    let mut parts = req.first.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        bump(&c.errors, 1);
        conn.write_all(&head(400, "Bad Request", 0, &[], true), deadline)?;
        return Ok(false);
    };
    let close = req.connection_has("close")
        || (version == "HTTP/1.0" && !req.connection_has("keep-alive"))
        || !matches!(version, "HTTP/1.1" | "HTTP/1.0");
    // Bodies are not accepted: where the next request would start is then unknown.
    let has_body = req.get("transfer-encoding").is_some()
        || req.get("content-length").is_some_and(|v| v.trim() != "0");
    if has_body {
        bump(&c.errors, 1);
        conn.write_all(&head(400, "Bad Request", 0, &[], true), deadline)?;
        return Ok(false);
    }
    if method == "GET" && target.split('?').next() == Some("/_stats") {
        let body = serde_json::to_vec(&c.snapshot()).unwrap_or_default();
        let ct = [("Content-Type", "application/json".to_string())];
        conn.write_all(&head(200, "OK", body.len() as u64, &ct, close), deadline)?;
        conn.write_all(&body, deadline)?;
        return Ok(!close);
    }
    bump(&c.requests, 1);
    let result = serve_file(conn, shared, method, target, req.get("range"), close, deadline);
    shared.write_stats_file();
    result.map(|()| !close)
}

fn serve_file(
    conn: &mut Conn,
    shared: &Shared,
    method: &str,
    target: &str,
    range: Option<&str>,
    close: bool,
    deadline: Instant,
) -> Result<(), WireError> {
    let c = &shared.counters;
    let is_head = match method {
        "HEAD" => true,
        "GET" => false,
        _ => {
            bump(&c.errors, 1);
            let allow = [("Allow", "GET, HEAD".to_string())];
            return conn.write_all(&head(405, "Method Not Allowed", 0, &allow, close), deadline);
        }
    };
    bump(if is_head { &c.head_requests } else { &c.get_requests }, 1);
    if !shared.opts.latency.is_zero() {
        std::thread::sleep(shared.opts.latency);
    }
    let file = file_name(target).and_then(|n| open_file(&shared.opts.dir, &n));
    let Some((file, size)) = file else {
        bump(&c.errors, 1);
        return conn.write_all(&head(404, "Not Found", 0, &[], close), deadline);
    };
    let ranges = [("Accept-Ranges", "bytes".to_string())];
    if is_head {
        return conn.write_all(&head(200, "OK", size, &ranges, close), deadline);
    }
    let (status, reason, first, len, extra) = match parse_range(range, size) {
        RangeAsk::Unsatisfiable => {
            bump(&c.errors, 1);
            let cr = [("Content-Range", format!("bytes */{size}"))];
            return conn.write_all(&head(416, "Range Not Satisfiable", 0, &cr, close), deadline);
        }
        RangeAsk::Whole => (200, "OK", 0, size, ranges.to_vec()),
        RangeAsk::Part(first, last) => {
            bump(&c.range_requests, 1);
            let cr = ("Content-Range", format!("bytes {first}-{last}/{size}"));
            (206, "Partial Content", first, last - first + 1, vec![ranges[0].clone(), cr])
        }
    };
    conn.write_all(&head(status, reason, len, &extra, close), deadline)?;
    let mut piece = vec![0u8; PIECE.min(len as usize)];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(PIECE as u64) as usize;
        if let Err(e) = file.read_exact_at(&mut piece[..n], first + sent) {
            // The file shrank under us: the reply cannot be completed; close.
            return Err(WireError::Io(e));
        }
        shared.pace(n);
        conn.write_all(&piece[..n], deadline)?;
        sent += n as u64;
        bump(&c.bytes_sent, n as u64);
    }
    Ok(())
}

fn open_file(dir: &Path, name: &str) -> Option<(File, u64)> {
    let f = File::open(dir.join(name)).ok()?;
    let m = f.metadata().ok()?;
    m.is_file().then_some((f, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_rfc_9110() {
        use RangeAsk::{Part, Unsatisfiable as Un, Whole};
        let cases: &[(Option<&str>, u64, RangeAsk)] = &[
            (None, 10, Whole),
            (Some("bytes=0-4"), 10, Part(0, 4)),
            (Some("bytes=5-"), 10, Part(5, 9)),
            (Some("bytes=-3"), 10, Part(7, 9)),
            (Some("bytes=-30"), 10, Part(0, 9)),
            (Some("bytes=8-100"), 10, Part(8, 9)),
            (Some("bytes=10-12"), 10, Un),
            (Some("bytes=-0"), 10, Un),
            (Some("bytes=0-0"), 0, Un),
            (Some("bytes=4-2"), 10, Whole),
            (Some("bytes=0-1,4-5"), 10, Whole),
            (Some("items=0-1"), 10, Whole),
            (Some("bytes=x-1"), 10, Whole),
            (Some("bytes=-"), 10, Whole),
            (Some("bytes=99999999999999999999-"), 10, Whole),
        ];
        for (v, size, want) in cases {
            assert_eq!(parse_range(*v, *size), *want, "{v:?} of {size}");
        }
    }

    #[test]
    fn file_names_are_the_last_segment_and_safe() {
        assert_eq!(file_name("/a/b/blob1"), Some("blob1".into()));
        assert_eq!(file_name("/blob1?x=1"), Some("blob1".into()));
        assert_eq!(file_name("/x/%62lob"), Some("blob".into()));
        for bad in ["/a/..", "/a/", "/%2e%2e", "/a%2fb", "/%zz", "/%0", "/a%00b"] {
            assert_eq!(file_name(bad), None, "{bad}");
        }
    }
}
