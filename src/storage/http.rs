//! nydusd's `http-proxy` backend: blobs over plain HTTP/1.1, `HEAD <prefix>/<blob_id>` for the
//! size and `GET` with `Range: bytes=a-b` for reads, to a TCP address or a unix socket.
//!
//! The client is small and blocking, on std sockets: one request at a time per connection,
//! idle connections kept for reuse (keep-alive), every exchange under a deadline so a server
//! that stalls or drips cannot hang a reader. Replies are hostile input: the status, the
//! `Content-Length` and the `Content-Range` must say exactly what was asked for, the body must
//! be whole, and each failure is a [`StorageError::Http`] naming the URL and what was wrong.
//! TLS (`https://`) is not implemented; such an address is refused when the backend is built.
//!
//! The wire helpers ([`Conn`], [`Stream`]) are shared with [`super::blobserver`], the server
//! side used by tests and benchmarks.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::backend::{validate_blob_id, BackendMetrics, BlobBackend};
use super::StorageError;

/// Largest response or request head (status line and headers) read. Heads of blob servers
/// are a few hundred bytes; this bounds what a hostile peer can make us buffer.
pub const MAX_HEAD: usize = 16 * 1024;

/// Largest error-response body read and discarded to keep a connection; larger ones close it.
const MAX_DISCARD: u64 = 64 * 1024;

/// Idle connections kept per backend.
const MAX_IDLE: usize = 8;

/// nydusd's `http-proxy` backend config (`backend.config` in v1, `backend.http-proxy` in v2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProxyConfig {
    /// `http://host[:port][/prefix]`, or an absolute unix socket path.
    pub addr: String,
    /// URL path prefix of blobs: blob `id` is at `<path>/<id>`.
    pub path: String,
    /// nydusd's TLS verification switch; accepted, without effect (no TLS here).
    pub skip_verify: bool,
    /// Deadline of one exchange (request sent, reply head and body read). nydusd: 5 s.
    pub timeout: Duration,
    /// Deadline of a TCP connect. nydusd: 5 s.
    pub connect_timeout: Duration,
    /// Extra attempts after a failed connect, a broken connection, a timeout or a 5xx reply.
    pub retry_limit: u8,
}

impl Default for HttpProxyConfig {
    fn default() -> Self {
        Self {
            addr: String::new(),
            path: String::new(),
            skip_verify: false,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            retry_limit: 0,
        }
    }
}

/// What went wrong in an HTTP exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpProblem {
    /// The connection could not be made.
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    /// Sending or receiving failed.
    #[error("connection error: {0}")]
    Io(#[source] io::Error),
    /// The deadline passed.
    #[error("no complete reply within {0:?}")]
    TimedOut(Duration),
    /// The server closed the connection before a whole reply head.
    #[error("the server closed the connection before replying")]
    Closed,
    /// The reply does not start with an HTTP/1.x status line.
    #[error("malformed status line {0:?}")]
    BadStatusLine(String),
    /// The reply head is larger than [`MAX_HEAD`].
    #[error("reply head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// A header line without a colon, or a header value that does not parse.
    #[error("bad header {0:?}")]
    BadHeader(String),
    /// A status other than the expected one.
    #[error("status {status} {reason}, expected {expected}")]
    Status {
        /// Status code.
        status: u16,
        /// Reason phrase.
        reason: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A reply without `Content-Length` where one is needed.
    #[error("reply has no Content-Length")]
    NoContentLength,
    /// A reply using a transfer coding this client does not read.
    #[error("reply uses Transfer-Encoding {0:?}, which this client does not read")]
    TransferEncoding(String),
    /// `Content-Length` differs from the bytes asked for.
    #[error("Content-Length is {got}, expected {expected}")]
    LengthMismatch {
        /// Bytes asked for.
        expected: u64,
        /// Content-Length of the reply.
        got: u64,
    },
    /// `Content-Range` missing or differing from the range asked for.
    #[error("Content-Range is {got:?}, expected \"bytes {first}-{last}/<size>\"")]
    BadContentRange {
        /// The header (empty when missing).
        got: String,
        /// First byte asked for.
        first: u64,
        /// Last byte asked for.
        last: u64,
    },
    /// The server answered a ranged GET with the whole blob.
    #[error("the server ignored the Range header (status 200 with {len} bytes)")]
    RangeIgnored {
        /// Content-Length of the reply.
        len: u64,
    },
    /// The body ended early.
    #[error("body ended after {got} of {expected} bytes")]
    ShortBody {
        /// Bytes announced.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
}

impl HttpProblem {
    /// Whether another attempt may succeed (the connection or the server's state).
    fn retryable(&self) -> bool {
        match self {
            HttpProblem::Connect(_)
            | HttpProblem::Io(_)
            | HttpProblem::TimedOut(_)
            | HttpProblem::Closed
            | HttpProblem::ShortBody { .. } => true,
            HttpProblem::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The `io::ErrorKind` closest to this problem.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            HttpProblem::Connect(e) | HttpProblem::Io(e) => e.kind(),
            HttpProblem::TimedOut(_) => io::ErrorKind::TimedOut,
            HttpProblem::Closed | HttpProblem::ShortBody { .. } => io::ErrorKind::UnexpectedEof,
            HttpProblem::Status { status: 404, .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::InvalidData,
        }
    }
}

/// A connected socket: TCP or unix.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix stream socket.
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Why a deadline-bound read stopped.
#[derive(Debug)]
pub enum WireError {
    /// The deadline passed.
    TimedOut,
    /// The peer closed the connection; `got` bytes of what was wanted had arrived.
    Eof {
        /// Bytes read before the end.
        got: usize,
    },
    /// The head grew past the limit.
    TooLarge,
    /// A socket error.
    Io(io::Error),
}

/// A buffered connection whose reads and writes all finish by a deadline.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[pos..]`.
    pos: usize,
    /// Where the next message starts is unknown (a reply body left unread): never reuse.
    poisoned: bool,
}

impl Conn {
    /// Wrap a connected stream.
    pub fn new(stream: Stream) -> Self {
        Self { stream, buf: Vec::new(), pos: 0, poisoned: false }
    }

    /// Mark the connection unusable for further messages.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Whether the connection may carry another message: not poisoned and nothing unread.
    pub fn reusable(&self) -> bool {
        !self.poisoned && self.buffered() == 0
    }

    /// Bytes received and not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn remaining(deadline: Instant) -> Result<Duration, WireError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(WireError::TimedOut)
        } else {
            Ok(left)
        }
    }

    /// Read more bytes into the buffer; returns how many (0: end of stream).
    fn fill(&mut self, deadline: Instant) -> Result<usize, WireError> {
        let left = Self::remaining(deadline)?;
        self.stream.set_read_timeout(Some(left)).map_err(WireError::Io)?;
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + 16 * 1024, 0);
        let n = loop {
            match self.stream.read(&mut self.buf[start..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    self.buf.truncate(start);
                    return Err(WireError::TimedOut);
                }
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(WireError::Io(e));
                }
            }
        };
        self.buf.truncate(start + n);
        Ok(n)
    }

    /// The next head (up to and including the blank line), consumed. `Eof { got }` tells how
    /// many head bytes had arrived when the peer closed (0: a clean close between messages).
    pub fn read_head(&mut self, deadline: Instant) -> Result<Vec<u8>, WireError> {
        let mut scanned = 0;
        loop {
            let pending = &self.buf[self.pos..];
            if let Some(i) = find_blank_line(pending, scanned) {
                if i > MAX_HEAD {
                    return Err(WireError::TooLarge);
                }
                let head = pending[..i].to_vec();
                self.pos += i;
                return Ok(head);
            }
            if pending.len() > MAX_HEAD {
                return Err(WireError::TooLarge);
            }
            scanned = pending.len().saturating_sub(3);
            if self.fill(deadline)? == 0 {
                return Err(WireError::Eof { got: self.buffered() });
            }
        }
    }

    /// Fill `out` with the next bytes.
    pub fn read_exact(&mut self, out: &mut [u8], deadline: Instant) -> Result<(), WireError> {
        let mut got = 0;
        while got < out.len() {
            if self.buffered() == 0 && self.fill(deadline)? == 0 {
                return Err(WireError::Eof { got });
            }
            let n = self.buffered().min(out.len() - got);
            out[got..got + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            got += n;
        }
        Ok(())
    }

    /// Read and drop `n` bytes.
    pub fn skip(&mut self, mut n: u64, deadline: Instant) -> Result<(), WireError> {
        let mut scratch = [0u8; 4096];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.read_exact(&mut scratch[..k], deadline)?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Write all of `data` by `deadline`.
    pub fn write_all(&mut self, data: &[u8], deadline: Instant) -> Result<(), WireError> {
        let mut done = 0;
        while done < data.len() {
            let left = Self::remaining(deadline)?;
            self.stream.set_write_timeout(Some(left)).map_err(WireError::Io)?;
            match self.stream.write(&data[done..]) {
                Ok(0) => return Err(WireError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    return Err(WireError::TimedOut)
                }
                Err(e) => return Err(WireError::Io(e)),
            }
        }
        Ok(())
    }
}

/// End of the first `\r\n\r\n` in `data` (searching from `from`), if any.
fn find_blank_line(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|i| from + i + 4)
}

/// A parsed head: the first line and the header fields (names lowercased), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The request or status line.
    pub first: String,
    /// Header fields, names lowercased, values trimmed.
    pub fields: Vec<(String, String)>,
}

impl Head {
    /// Parse a head as [`Conn::read_head`] returns it. Fails on non-UTF-8 bytes and on a field
    /// line without a colon or with whitespace before it; obsolete line folding is refused.
    pub fn parse(raw: &[u8]) -> Result<Head, String> {
        let text = std::str::from_utf8(raw).map_err(|_| "head is not UTF-8".to_string())?;
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or_default().to_string();
        let mut fields = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let Some((name, value)) = line.split_once(':') else {
                return Err(line.to_string());
            };
            if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
                return Err(line.to_string());
            }
            fields.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        Ok(Head { first, fields })
    }

    /// The value of field `name` (lowercase); the first when repeated.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of field `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Whether a `Connection` field lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.all("connection").any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    /// `host:port`, also the `Host` header.
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

/// A status line's code and reason.
fn parse_status(first: &str) -> Result<(u16, String), HttpProblem> {
    let bad = || HttpProblem::BadStatusLine(first.chars().take(80).collect());
    let rest = first.strip_prefix("HTTP/1.1 ").or_else(|| first.strip_prefix("HTTP/1.0 "));
    let rest = rest.ok_or_else(bad)?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok((code.parse().map_err(|_| bad())?, reason.to_string()))
}

/// A decimal header value.
fn parse_u64(name: &str, v: &str) -> Result<u64, HttpProblem> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpProblem::BadHeader(format!("{name}: {v}")));
    }
    v.parse().map_err(|_| HttpProblem::BadHeader(format!("{name}: {v}")))
}

/// A reply's head, checked for what every reply needs here.
struct Reply {
    status: u16,
    reason: String,
    head: Head,
    content_length: Option<u64>,
    /// The server will close (or we cannot know where the reply ends).
    close: bool,
}

impl Reply {
    fn parse(raw: &[u8]) -> Result<Reply, HttpProblem> {
        let head = Head::parse(raw).map_err(HttpProblem::BadHeader)?;
        let (status, reason) = parse_status(&head.first)?;
        if let Some(te) = head.get("transfer-encoding") {
            return Err(HttpProblem::TransferEncoding(te.to_string()));
        }
        let lengths: Vec<&str> = head.all("content-length").collect();
        let content_length = match lengths.first() {
            None => None,
            Some(v) => {
                let n = parse_u64("Content-Length", v)?;
                // Repeated fields must agree (RFC 9110 8.6); anything else is an attack or a bug.
                if lengths.iter().any(|o| o != v) {
                    return Err(HttpProblem::BadHeader(
                        "Content-Length repeated with different values".into(),
                    ));
                }
                Some(n)
            }
        };
        let close = head.connection_has("close") || head.first.starts_with("HTTP/1.0");
        Ok(Reply { status, reason, head, content_length, close })
    }

    fn unexpected(&self, expected: &'static str) -> HttpProblem {
        HttpProblem::Status { status: self.status, reason: self.reason.clone(), expected }
    }
}

/// The `http-proxy` backend. See the module docs.
#[derive(Debug)]
pub struct HttpProxy {
    endpoint: Endpoint,
    /// `""` or `/a/b`: blob `id` is at `<prefix>/<id>`.
    prefix: String,
    /// For messages: `http://host:port` or `unix:/path`.
    origin: String,
    config: HttpProxyConfig,
    idle: Mutex<Vec<Conn>>,
    sizes: Mutex<HashMap<String, u64>>,
    /// Held while a HEAD for a size runs, so concurrent first reads of a blob ask once.
    head_lock: Mutex<()>,
    metrics: BackendMetrics,
}

/// Percent-encode what is not an unreserved URL character (RFC 3986 2.3).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Join URL path pieces into `""` or `/a/b` (no empty segments, no trailing slash).
fn join_prefix(parts: &[&str]) -> String {
    parts.iter().flat_map(|p| p.split('/')).filter(|s| !s.is_empty()).fold(
        String::new(),
        |mut acc, s| {
            acc.push('/');
            acc.push_str(s);
            acc
        },
    )
}

impl HttpProxy {
    /// A backend for `config`. Fails on an address that is neither `http://host[:port]` nor an
    /// absolute unix socket path (`https://` included: no TLS here). Nothing is connected yet.
    pub fn new(config: HttpProxyConfig) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BackendConfig { backend: "http-proxy", reason };
        let addr = config.addr.trim();
        let (endpoint, addr_path, origin) = if addr.starts_with('/') {
            (Endpoint::Unix(PathBuf::from(addr)), "", format!("unix:{addr}"))
        } else if let Some(rest) = addr.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c == '@') {
                return Err(bad(format!("addr {addr:?} has no usable host")));
            }
            let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
                authority.to_string()
            } else {
                format!("{authority}:80")
            };
            let origin = format!("http://{authority}");
            (Endpoint::Tcp(authority), path, origin)
        } else if addr.starts_with("https://") {
            return Err(bad(format!(
                "addr {addr:?} is https, which strata's http-proxy backend does not speak (use \
                 http:// or a unix socket path)"
            )));
        } else {
            return Err(bad(format!(
                "addr {addr:?} is neither http://host[:port] nor an absolute unix socket path"
            )));
        };
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            return Err(bad("timeout and connect_timeout must be above zero".into()));
        }
        let prefix = join_prefix(&[addr_path, &config.path]);
        Ok(Self {
            endpoint,
            prefix,
            origin,
            config,
            idle: Mutex::new(Vec::new()),
            sizes: Mutex::new(HashMap::new()),
            head_lock: Mutex::new(()),
            metrics: BackendMetrics::new(),
        })
    }

    /// The URL path of blob `blob_id`.
    fn target(&self, blob_id: &str) -> String {
        format!("{}/{}", self.prefix, encode_segment(blob_id))
    }

    /// The blob's URL, for messages.
    pub fn url(&self, blob_id: &str) -> String {
        format!("{}{}", self.origin, self.target(blob_id))
    }

    fn connect(&self) -> Result<Conn, HttpProblem> {
        let stream = match &self.endpoint {
            Endpoint::Unix(path) => {
                Stream::Unix(UnixStream::connect(path).map_err(HttpProblem::Connect)?)
            }
            Endpoint::Tcp(authority) => {
                let addrs = authority.to_socket_addrs().map_err(HttpProblem::Connect)?;
                let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, self.config.connect_timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or(HttpProblem::Connect(last))?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
        };
        Ok(Conn::new(stream))
    }

    /// Return a connection whose last reply was read whole to the idle pool.
    fn release(&self, conn: Conn) {
        // Bytes beyond the reply would be taken for the next reply: never reuse such a conn.
        if conn.reusable() {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    /// One exchange: send `method` for `blob_id` (with `range`), read the reply head, and let
    /// `body` consume the reply. Retries per the config; a reused connection that the server
    /// closed while idle is replaced once without counting as a retry.
    fn exchange<T>(
        &self,
        method: &str,
        blob_id: &str,
        range: Option<(u64, u64)>,
        body: &mut dyn FnMut(&mut Conn, &Reply, Instant) -> Result<T, HttpProblem>,
    ) -> Result<T, HttpProblem> {
        let host = match &self.endpoint {
            Endpoint::Tcp(a) => a.as_str(),
            Endpoint::Unix(_) => "localhost",
        };
        let mut req = format!(
            "{method} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: strata/{}\r\nAccept: */*\r\n",
            self.target(blob_id),
            env!("CARGO_PKG_VERSION")
        );
        if let Some((first, last)) = range {
            req.push_str(&format!("Range: bytes={first}-{last}\r\n"));
        }
        req.push_str("\r\n");
        let mut retries_left = self.config.retry_limit;
        loop {
            let pooled = self.idle.lock().pop();
            let reused = pooled.is_some();
            let outcome = match pooled.map_or_else(|| self.connect(), Ok) {
                Err(e) => Err((e, false)),
                Ok(mut conn) => self.attempt(&mut conn, &req, body).map(|(v, keep)| {
                    if keep {
                        self.release(conn);
                    }
                    v
                }),
            };
            match outcome {
                Ok(v) => return Ok(v),
                // The server closed an idle connection before we used it: not a failure.
                Err((_, true)) if reused => continue,
                Err((e, _)) if e.retryable() && retries_left > 0 => retries_left -= 1,
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One attempt on `conn`. Err carries whether nothing at all came back (a stale
    /// keep-alive connection); Ok carries whether the connection may be reused.
    fn attempt<T>(
        &self,
        conn: &mut Conn,
        req: &str,
        body: &mut dyn FnMut(&mut Conn, &Reply, Instant) -> Result<T, HttpProblem>,
    ) -> Result<(T, bool), (HttpProblem, bool)> {
        let timeout = self.config.timeout;
        let deadline = Instant::now() + timeout;
        let wire = |e: WireError| match e {
            WireError::TimedOut => HttpProblem::TimedOut(timeout),
            WireError::Eof { .. } => HttpProblem::Closed,
            WireError::TooLarge => HttpProblem::HeadTooLarge,
            WireError::Io(e) => HttpProblem::Io(e),
        };
        if let Err(e) = conn.write_all(req.as_bytes(), deadline) {
            let silent = matches!(e, WireError::Io(_));
            return Err((wire(e), silent));
        }
        let raw = match conn.read_head(deadline) {
            Ok(raw) => raw,
            Err(e) => {
                let silent = matches!(e, WireError::Eof { got: 0 })
                    || matches!(&e, WireError::Io(io) if io.kind() == io::ErrorKind::ConnectionReset);
                return Err((wire(e), silent));
            }
        };
        let reply = Reply::parse(&raw).map_err(|e| (e, false))?;
        let value = body(conn, &reply, deadline).map_err(|e| (e, false))?;
        Ok((value, !reply.close))
    }

    /// Read (and drop) an error reply's body when small, so the connection stays usable;
    /// otherwise mark the connection unusable.
    fn drain(conn: &mut Conn, reply: &Reply, deadline: Instant) {
        let drained = match reply.content_length {
            Some(n) if n <= MAX_DISCARD && !reply.close => conn.skip(n, deadline).is_ok(),
            _ => false,
        };
        if !drained {
            conn.poison();
        }
    }

    fn fail(&self, blob_id: &str, method: &'static str, problem: HttpProblem) -> StorageError {
        StorageError::Http { blob_id: blob_id.to_string(), method, url: self.url(blob_id), problem }
    }

    fn not_found(&self, blob_id: &str) -> StorageError {
        StorageError::BlobNotFound {
            blob_id: blob_id.to_string(),
            searched: vec![PathBuf::from(self.url(blob_id))],
        }
    }

    /// Size from `HEAD`.
    fn head_size(&self, blob_id: &str) -> Result<Option<u64>, HttpProblem> {
        self.exchange("HEAD", blob_id, None, &mut |_, reply, _| match reply.status {
            200 => reply.content_length.map(Some).ok_or(HttpProblem::NoContentLength),
            404 => Ok(None),
            _ => Err(reply.unexpected("200")),
        })
    }

    /// `buf.len()` bytes at `offset` by ranged `GET`.
    fn get_range(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<Got, HttpProblem> {
        let len = buf.len() as u64;
        let last = offset + len - 1;
        self.exchange("GET", blob_id, Some((offset, last)), &mut |conn, reply, deadline| {
            let read_body = |conn: &mut Conn, buf: &mut [u8]| {
                conn.read_exact(buf, deadline).map_err(|e| match e {
                    WireError::Eof { got } => {
                        HttpProblem::ShortBody { expected: len, got: got as u64 }
                    }
                    WireError::TimedOut => HttpProblem::TimedOut(self.config.timeout),
                    WireError::TooLarge => HttpProblem::HeadTooLarge,
                    WireError::Io(e) => HttpProblem::Io(e),
                })
            };
            match reply.status {
                206 => {
                    let cl = reply.content_length.ok_or(HttpProblem::NoContentLength)?;
                    if cl != len {
                        return Err(HttpProblem::LengthMismatch { expected: len, got: cl });
                    }
                    let cr = reply.head.get("content-range").unwrap_or_default();
                    let total = parse_content_range(cr, offset, last).ok_or_else(|| {
                        HttpProblem::BadContentRange { got: cr.to_string(), first: offset, last }
                    })?;
                    read_body(conn, buf)?;
                    if let Some(total) = total {
                        self.sizes.lock().insert(blob_id.to_string(), total);
                    }
                    Ok(Got::Bytes)
                }
                200 => {
                    let cl = reply.content_length.ok_or(HttpProblem::NoContentLength)?;
                    // A server without range support sends the whole blob: fine when that is
                    // exactly what was asked for.
                    if offset != 0 || cl != len {
                        return Err(HttpProblem::RangeIgnored { len: cl });
                    }
                    read_body(conn, buf)?;
                    Ok(Got::Bytes)
                }
                404 => {
                    Self::drain(conn, reply, deadline);
                    Ok(Got::NotFound)
                }
                416 => {
                    let size = reply
                        .head
                        .get("content-range")
                        .and_then(|v| v.strip_prefix("bytes */"))
                        .and_then(|v| parse_u64("Content-Range", v).ok());
                    Self::drain(conn, reply, deadline);
                    Ok(Got::Unsatisfiable(size))
                }
                _ => {
                    Self::drain(conn, reply, deadline);
                    Err(reply.unexpected("206"))
                }
            }
        })
    }
}

/// What a ranged GET brought.
enum Got {
    /// The bytes, in the caller's buffer.
    Bytes,
    /// 404.
    NotFound,
    /// 416: the range is not inside the blob (its size when the server said it).
    Unsatisfiable(Option<u64>),
}

/// Check `Content-Range: bytes first-last/total` against the range asked for; the total
/// (`None` for `*`) when it matches.
fn parse_content_range(v: &str, first: u64, last: u64) -> Option<Option<u64>> {
    let rest = v.strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let a = parse_u64("", a).ok()?;
    let b = parse_u64("", b).ok()?;
    if (a, b) != (first, last) {
        return None;
    }
    match total {
        "*" => Some(None),
        t => {
            let t = parse_u64("", t).ok()?;
            (t > last).then_some(Some(t))
        }
    }
}

impl BlobBackend for HttpProxy {
    fn blob_size(&self, blob_id: &str) -> Result<u64, StorageError> {
        validate_blob_id(blob_id)?;
        if let Some(&size) = self.sizes.lock().get(blob_id) {
            return Ok(size);
        }
        let _one = self.head_lock.lock();
        // Another thread may have asked while this one waited.
        if let Some(&size) = self.sizes.lock().get(blob_id) {
            return Ok(size);
        }
        match self.head_size(blob_id) {
            Ok(Some(size)) => {
                self.sizes.lock().insert(blob_id.to_string(), size);
                Ok(size)
            }
            Ok(None) => Err(self.not_found(blob_id)),
            Err(p) => {
                self.metrics.record_error();
                Err(self.fail(blob_id, "HEAD", p))
            }
        }
    }

    fn read_at(&self, blob_id: &str, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        if let Err(e) = validate_blob_id(blob_id) {
            self.metrics.record_failed_read();
            return Err(e);
        }
        let len = buf.len() as u64;
        if len == 0 {
            self.metrics.record_read(0);
            return Ok(());
        }
        if offset.checked_add(len).is_none() {
            self.metrics.record_failed_read();
            return Err(StorageError::ShortRead {
                blob_id: blob_id.to_string(),
                offset,
                len,
                size: 0,
            });
        }
        match self.get_range(blob_id, offset, buf) {
            Ok(Got::Bytes) => {
                self.metrics.record_read(len);
                Ok(())
            }
            Ok(Got::Unsatisfiable(size)) => {
                self.metrics.record_failed_read();
                let size = size.or_else(|| self.sizes.lock().get(blob_id).copied()).unwrap_or(0);
                Err(StorageError::ShortRead { blob_id: blob_id.to_string(), offset, len, size })
            }
            Ok(Got::NotFound) => {
                self.metrics.record_failed_read();
                Err(self.not_found(blob_id))
            }
            Err(p) => {
                self.metrics.record_failed_read();
                Err(self.fail(blob_id, "GET", p))
            }
        }
    }

    fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// What the scripted server does with one request.
    enum Act {
        /// Send these bytes and keep the connection.
        Reply(Vec<u8>),
        /// Send these bytes and close.
        ReplyClose(Vec<u8>),
        /// Say nothing for this long, then close.
        Stall(Duration),
    }

    struct Scripted {
        addr: String,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    /// A TCP server answering request `n` (counted over all connections) with `script(n, head)`.
    fn scripted(script: impl Fn(usize, &str) -> Act + Send + Sync + 'static) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, script) = (Arc::clone(&r), Arc::clone(&script));
                std::thread::spawn(move || {
                    let mut conn = Conn::new(Stream::Tcp(s));
                    let far = || Instant::now() + Duration::from_secs(10);
                    while let Ok(raw) = conn.read_head(far()) {
                        let n = r.fetch_add(1, Ordering::SeqCst);
                        match script(n, &String::from_utf8_lossy(&raw)) {
                            Act::Reply(b) => {
                                if conn.write_all(&b, far()).is_err() {
                                    return;
                                }
                            }
                            Act::ReplyClose(b) => {
                                let _ = conn.write_all(&b, far());
                                return;
                            }
                            Act::Stall(d) => {
                                std::thread::sleep(d);
                                return;
                            }
                        }
                    }
                });
            }
        });
        Scripted { addr, connections, requests }
    }

    const BLOB: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    /// A correct reply to `head` for [`BLOB`].
    fn correct(head: &str) -> Vec<u8> {
        if head.starts_with("HEAD ") {
            return format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", BLOB.len())
                .into_bytes();
        }
        let range = head.lines().find_map(|l| l.strip_prefix("Range: bytes=")).unwrap();
        let (a, b) = range.trim().split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        let mut out = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{b}/{}\r\n\r\n",
            b - a + 1,
            BLOB.len()
        )
        .into_bytes();
        out.extend_from_slice(&BLOB[a..=b]);
        out
    }

    fn backend(addr: &str, retry_limit: u8, timeout_ms: u64) -> HttpProxy {
        HttpProxy::new(HttpProxyConfig {
            addr: addr.to_string(),
            path: "/ns/repo/blobs".into(),
            retry_limit,
            timeout: Duration::from_millis(timeout_ms),
            ..Default::default()
        })
        .unwrap()
    }

    fn read(b: &HttpProxy, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0u8; len];
        b.read_at("blob1", offset, &mut buf).map(|()| buf)
    }

    #[test]
    fn reads_reuse_one_connection() {
        let srv = scripted(|_, h| {
            assert!(h.contains(" /ns/repo/blobs/blob1 HTTP/1.1\r\n"), "{h}");
            assert!(h.contains("\r\nHost: 127.0.0.1:"), "{h}");
            Act::Reply(correct(h))
        });
        let b = backend(&srv.addr, 0, 5000);
        assert_eq!(b.blob_size("blob1").unwrap(), BLOB.len() as u64);
        assert_eq!(read(&b, 0, 10).unwrap(), &BLOB[..10]);
        assert_eq!(read(&b, 30, 6).unwrap(), &BLOB[30..]);
        assert_eq!(b.read_range("blob1", 5, 3).unwrap(), b"567");
        assert_eq!(read(&b, 3, 0).unwrap(), b"", "no request for nothing");
        assert_eq!(srv.requests.load(Ordering::SeqCst), 4, "one HEAD (size cached), three GETs");
        assert_eq!(srv.connections.load(Ordering::SeqCst), 1, "keep-alive");
        let m = b.metrics().snapshot();
        assert_eq!((m.read_count, m.read_bytes, m.read_errors), (4, 19, 0));
    }

    #[test]
    fn a_connection_closed_while_idle_is_replaced_quietly() {
        // The server closes after every reply without saying so.
        let srv = scripted(|_, h| Act::ReplyClose(correct(h)));
        let b = backend(&srv.addr, 0, 5000);
        for i in 0..3 {
            assert_eq!(read(&b, i, 2).unwrap(), &BLOB[i as usize..i as usize + 2]);
        }
        assert_eq!(srv.connections.load(Ordering::SeqCst), 3);
    }

    /// Replies for a GET of bytes 0..10 that must each fail with a message containing the
    /// given words.
    #[test]
    fn hostile_replies_are_clear_errors() {
        let body10 = "0123456789";
        let cases: Vec<(&str, String, &[&str])> = vec![
            ("garbage status", "HELLO\r\n\r\n".into(), &["malformed status line", "HELLO"]),
            ("bad code", "HTTP/1.1 2x6 Partial\r\n\r\n".into(), &["malformed status line"]),
            ("wrong status", "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".into(), &["403 Forbidden", "expected 206"]),
            ("no length", format!("HTTP/1.1 206 P\r\nContent-Range: bytes 0-9/36\r\n\r\n{body10}"), &["no Content-Length"]),
            ("bad length", "HTTP/1.1 206 P\r\nContent-Length: ten\r\n\r\n".into(), &["bad header", "Content-Length: ten"]),
            ("negative length", "HTTP/1.1 206 P\r\nContent-Length: -1\r\n\r\n".into(), &["bad header"]),
            ("two lengths", "HTTP/1.1 206 P\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n".into(), &["repeated"]),
            ("length mismatch", "HTTP/1.1 206 P\r\nContent-Length: 9\r\nContent-Range: bytes 0-8/36\r\n\r\n012345678".into(), &["Content-Length is 9, expected 10"]),
            ("no range", format!("HTTP/1.1 206 P\r\nContent-Length: 10\r\n\r\n{body10}"), &["Content-Range is \"\"", "bytes 0-9/"]),
            ("wrong range", format!("HTTP/1.1 206 P\r\nContent-Length: 10\r\nContent-Range: bytes 1-10/36\r\n\r\n{body10}"), &["bytes 1-10/36"]),
            ("total too small", format!("HTTP/1.1 206 P\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/5\r\n\r\n{body10}"), &["bytes 0-9/5"]),
            ("range ignored", format!("HTTP/1.1 200 OK\r\nContent-Length: 36\r\n\r\n{}", std::str::from_utf8(BLOB).unwrap()), &["ignored the Range header"]),
            ("chunked", "HTTP/1.1 206 P\r\nTransfer-Encoding: chunked\r\n\r\n".into(), &["Transfer-Encoding", "chunked"]),
            ("header without colon", "HTTP/1.1 206 P\r\nContent-Length 10\r\n\r\n".into(), &["bad header"]),
            ("short body", "HTTP/1.1 206 P\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/36\r\n\r\n01234".into(), &["body ended after 5 of 10 bytes"]),
            ("huge head", format!("HTTP/1.1 206 P\r\nX: {}\r\n\r\n", "y".repeat(MAX_HEAD + 10)), &["reply head exceeds"]),
            ("closed", String::new(), &["closed the connection before replying"]),
        ];
        for (what, reply, words) in cases {
            let bytes = reply.into_bytes();
            let srv = scripted(move |_, _| Act::ReplyClose(bytes.clone()));
            let b = backend(&srv.addr, 0, 5000);
            let err = read(&b, 0, 10).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, StorageError::Http { .. }), "{what}: {err:?}");
            assert!(msg.contains("blob blob1: GET http://127.0.0.1:"), "{what}: {msg}");
            assert!(msg.contains("/ns/repo/blobs/blob1"), "{what}: {msg}");
            for w in words {
                assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
            }
            assert_eq!(b.metrics().snapshot().read_errors, 1, "{what}");
        }
    }

    #[test]
    fn server_errors_are_retried_up_to_the_limit() {
        let srv = scripted(|_, _| {
            Act::Reply(b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy".to_vec())
        });
        let b = backend(&srv.addr, 2, 5000);
        let err = read(&b, 0, 10).unwrap_err();
        assert!(err.to_string().contains("503 Busy"), "{err}");
        assert_eq!(srv.requests.load(Ordering::SeqCst), 3, "one try and two retries");
        assert_eq!(srv.connections.load(Ordering::SeqCst), 3, "a failed reply's conn is dropped");
        // A 5xx then a good reply: the retry succeeds.
        let srv = scripted(|n, h| {
            if n == 0 {
                Act::Reply(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_vec())
            } else {
                Act::Reply(correct(h))
            }
        });
        let b = backend(&srv.addr, 1, 5000);
        assert_eq!(read(&b, 2, 3).unwrap(), b"234");
        // 4xx is not retried.
        let srv =
            scripted(|_, _| Act::Reply(b"HTTP/1.1 403 No\r\nContent-Length: 0\r\n\r\n".to_vec()));
        let b = backend(&srv.addr, 3, 5000);
        assert!(read(&b, 0, 1).is_err());
        assert_eq!(srv.requests.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_silent_or_dripping_server_times_out() {
        let srv = scripted(|_, _| Act::Stall(Duration::from_secs(3)));
        let b = backend(&srv.addr, 0, 300);
        let started = Instant::now();
        let err = read(&b, 0, 10).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(err.to_string().contains("no complete reply within 300ms"), "{err}");
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::TimedOut);
        // A head then a body that never comes.
        let srv = scripted(|_, _| {
            Act::Reply(
                b"HTTP/1.1 206 P\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/36\r\n\r\n0"
                    .to_vec(),
            )
        });
        let b = backend(&srv.addr, 0, 300);
        let err = read(&b, 0, 10).unwrap_err();
        assert!(err.to_string().contains("no complete reply"), "{err}");
    }

    #[test]
    fn missing_blobs_and_ranges_past_the_end() {
        let srv = scripted(|_, h| {
            if h.starts_with("HEAD") || h.contains("/nothere ") {
                Act::Reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec())
            } else {
                Act::Reply(
                    b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */36\r\nContent-Length: 0\r\n\r\n"
                        .to_vec(),
                )
            }
        });
        let b = backend(&srv.addr, 0, 5000);
        let err = b.blob_size("nothere").unwrap_err();
        assert!(matches!(err, StorageError::BlobNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("/ns/repo/blobs/nothere"), "{err}");
        let err = b.read_at("nothere", 0, &mut [0u8; 4]).unwrap_err();
        assert!(matches!(err, StorageError::BlobNotFound { .. }), "{err:?}");
        let err = read(&b, 40, 4).unwrap_err();
        assert!(
            matches!(err, StorageError::ShortRead { offset: 40, len: 4, size: 36, .. }),
            "{err:?}"
        );
        assert!(read(&b, u64::MAX, 2).is_err());
        assert!(matches!(b.blob_size("../x"), Err(StorageError::InvalidBlobId { .. })));
        assert_eq!(
            srv.connections.load(Ordering::SeqCst),
            1,
            "error replies with bodies read keep the conn"
        );
    }

    #[test]
    fn connect_failures_name_the_url() {
        // A port nobody listens on: bind, learn the port, close.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let b = backend(&format!("http://127.0.0.1:{port}"), 1, 1000);
        let err = read(&b, 0, 1).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cannot connect") && msg.contains(&port.to_string()), "{msg}");
    }

    #[test]
    fn addresses_parse() {
        let ok = |addr: &str, path: &str| {
            HttpProxy::new(HttpProxyConfig {
                addr: addr.into(),
                path: path.into(),
                ..Default::default()
            })
            .map(|b| b.url("id"))
        };
        assert_eq!(
            ok("http://127.0.0.1:9977", "/namespace/r/blobs").unwrap(),
            "http://127.0.0.1:9977/namespace/r/blobs/id"
        );
        assert_eq!(ok("http://host", "").unwrap(), "http://host:80/id");
        assert_eq!(ok("http://host:1/pre/", "blobs/").unwrap(), "http://host:1/pre/blobs/id");
        assert_eq!(ok("http://[::1]:8080", "x").unwrap(), "http://[::1]:8080/x/id");
        assert_eq!(ok("http://[::1]", "").unwrap(), "http://[::1]:80/id");
        assert_eq!(ok("/run/blobs.sock", "/b").unwrap(), "unix:/run/blobs.sock/b/id");
        for (bad, word) in [
            ("https://host", "https"),
            ("ftp://host", "neither"),
            ("host:80", "neither"),
            ("http://", "no usable host"),
            ("http://a b", "no usable host"),
        ] {
            let err = ok(bad, "").unwrap_err().to_string();
            assert!(err.contains(word) && err.contains("http-proxy"), "{bad}: {err}");
        }
        let zero = HttpProxyConfig {
            addr: "http://h".into(),
            timeout: Duration::ZERO,
            ..Default::default()
        };
        assert!(HttpProxy::new(zero).is_err());
        assert_eq!(encode_segment("a b/c%"), "a%20b%2Fc%25");
    }
}
