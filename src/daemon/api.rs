//! nydusd's HTTP API on a unix socket.
//!
//! [`ApiServer`] answers the endpoints nydus-snapshotter and nydusctl call (`/api/v1/...`) plus a
//! Prometheus exposition at `/metrics`, and hands every request to a [`DaemonControl`].
//!
//! Wire behaviour follows nydusd (`api/src/http_handler.rs`, `http_endpoint_v1.rs`,
//! `http_endpoint_common.rs`): exact path match, `200` with a JSON body for queries, `204` with
//! no body for commands that succeeded, and errors as `{"code": "UNDEFINED", "message": ...}`.
//! Two deliberate differences: a method an endpoint does not take answers `405` with an `Allow`
//! header (nydusd says `400`), and a query parameter given empty counts as absent.
//!
//! Threads: an accept thread (`strata-api-accept`), one thread per connection
//! (`strata-api-conn`) that does all socket I/O under timeouts, and a single dispatcher
//! (`strata-api`) that makes every [`DaemonControl`] call, one request at a time as nydusd
//! does. A slow or stuck client therefore only ever holds its own connection thread. An idle
//! keep-alive connection is never timed out: nydus-snapshotter keeps one open to each daemon
//! and takes a hang-up on it as the daemon's death. The clock starts at a request's first byte.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

/// An API failure: HTTP status and a message (sent as `{"code": ..., "message": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status (4xx for caller errors, 5xx for daemon failures).
    pub status: u16,
    /// Sentence saying what is wrong.
    pub message: String,
}

impl ApiError {
    /// A 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into() }
    }
    /// A 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: 404, message: message.into() }
    }
    /// A 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: 500, message: message.into() }
    }
    /// A 501: a valid request for something not built yet.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self { status: 501, message: message.into() }
    }

    /// The response body nydusd sends for an error: `{"code": "UNDEFINED", "message": ...}`.
    /// (nydusd puts `UNDEFINED` in `code` for every error; clients only print it.)
    pub fn to_json(&self) -> Value {
        serde_json::json!({ "code": ERROR_CODE, "message": self.message })
    }

    /// The status sent on the wire: `status` when it is a 4xx or 5xx, else 500.
    fn wire_status(&self) -> u16 {
        if (400..=599).contains(&self.status) {
            self.status
        } else {
            500
        }
    }
}

/// Body of `POST/PUT /api/v1/mount`, as nydusd takes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct MountRequest {
    /// Bootstrap path.
    pub source: String,
    /// `rafs` (or `passthrough_fs`, which stratad does not serve).
    pub fs_type: String,
    /// The daemon config for this mount, as a string (JSON or TOML).
    #[serde(default)]
    pub config: String,
    /// Files to prefetch.
    #[serde(default)]
    pub prefetch_files: Option<Vec<String>>,
}

/// What the API asks of the daemon. Every method returns nydusd's JSON shape.
///
/// The server makes these calls from one thread, one at a time; a panic inside one is caught
/// and answered `500`.
pub trait DaemonControl: Send + Sync {
    /// `GET /api/v1/daemon`: id, version, state (INIT/READY/RUNNING), supervisor, backends.
    fn daemon_info(&self) -> Value;
    /// `PUT /api/v1/daemon` with `{"log_level": ...}`.
    fn set_log_level(&self, level: &str) -> Result<(), ApiError>;
    /// `PUT /api/v1/daemon/exit`: unmount and exit (after the response is sent).
    fn exit(&self);
    /// `GET /api/v1/daemon/events`: recent error events.
    fn events(&self) -> Value;
    /// `GET /api/v1/daemon/backend?mountpoint=`: superblock facts of that RAFS mount.
    fn backend_info(&self, mountpoint: &str) -> Result<Value, ApiError>;
    /// `POST /api/v1/mount?mountpoint=`.
    fn mount(&self, mountpoint: &str, req: MountRequest) -> Result<(), ApiError>;
    /// `PUT /api/v1/mount?mountpoint=`.
    fn remount(&self, mountpoint: &str, req: MountRequest) -> Result<(), ApiError>;
    /// `DELETE /api/v1/mount?mountpoint=`.
    fn umount(&self, mountpoint: &str) -> Result<(), ApiError>;
    /// `GET /api/v1/metrics?id=`: global fs io stats.
    fn metrics(&self, id: Option<&str>) -> Result<Value, ApiError>;
    /// `GET /api/v1/metrics/files?id=[&latest=true]`.
    fn metrics_files(&self, id: Option<&str>, latest: bool) -> Result<Value, ApiError>;
    /// `GET /api/v1/metrics/pattern?id=`.
    fn metrics_pattern(&self, id: Option<&str>) -> Result<Value, ApiError>;
    /// `GET /api/v1/metrics/backend?id=`.
    fn metrics_backend(&self, id: Option<&str>) -> Result<Value, ApiError>;
    /// `GET /api/v1/metrics/blobcache?id=`.
    fn metrics_blobcache(&self, id: Option<&str>) -> Result<Value, ApiError>;
    /// `GET /api/v1/metrics/inflight`.
    fn metrics_inflight(&self) -> Value;
    /// `GET /api/v1/accesslog?id=&pid=&uid=&process=&path=&op=&since=&until=&limit=`: the
    /// access log's mode and counters and its most recent events passing `filter` (at most
    /// `limit`, oldest first). Answers 501 unless implemented.
    fn accesslog(
        &self,
        _id: Option<&str>,
        _filter: &crate::accesslog::Filter,
        _limit: usize,
    ) -> Result<Value, ApiError> {
        Err(ApiError::not_implemented("this daemon keeps no access log"))
    }

    /// `PUT /api/v1/daemon/start`: start serving after a takeover. Answers 501 unless
    /// implemented.
    fn start(&self) -> Result<(), ApiError> {
        Err(ApiError::not_implemented("daemon start (after takeover) is not supported"))
    }
    /// `PUT /api/v1/daemon/fuse/sendfd`: hand state and the `/dev/fuse` fd to the supervisor.
    /// Answers 501 unless implemented.
    fn send_fuse_fd(&self) -> Result<(), ApiError> {
        Err(ApiError::not_implemented("sending the fuse fd to a supervisor is not supported"))
    }
    /// `PUT /api/v1/daemon/fuse/takeover`: take state and the `/dev/fuse` fd from the
    /// supervisor. Answers 501 unless implemented.
    fn takeover(&self) -> Result<(), ApiError> {
        Err(ApiError::not_implemented("fuse takeover from a supervisor is not supported"))
    }
}

/// The `code` nydusd puts in every error body.
const ERROR_CODE: &str = "UNDEFINED";
/// `Server` header nydusd sends.
const SERVER_NAME: &str = "Nydus API";
const JSON_TYPE: &str = "application/json";
const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longest chunk-size line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
/// Deepest nesting of JSON objects flattened into Prometheus names.
const MAX_FLATTEN_DEPTH: usize = 4;
/// How long `shutdown` waits for its threads before leaving them behind.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// How long `start` waits for a connection to an existing socket file.
const PROBE_WAIT: Duration = Duration::from_secs(1);
/// How often a connection waiting on the dispatcher looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Bounds the server puts on its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Longest a request may take to arrive, head and body, counted from its first byte
    /// (answered `408` and closed beyond). Idle connections between requests are not timed out.
    pub request_timeout: Duration,
    /// Longest a response write may block (the connection is dropped beyond).
    pub write_timeout: Duration,
    /// Largest request body accepted; a larger one is answered `413` without being read.
    pub max_body: usize,
    /// Largest request line plus headers accepted (`431` beyond).
    pub max_head: usize,
    /// Most client connections open at once; one more is answered `503` and closed.
    pub max_connections: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_body: 1 << 20,
            max_head: 16 << 10,
            max_connections: 128,
        }
    }
}

/// The HTTP API server on a unix socket; see the module docs. Stops, and removes its socket,
/// on [`ApiServer::shutdown`] or drop.
pub struct ApiServer {
    path: PathBuf,
    /// `(dev, ino)` of the socket file we bound, so we never remove someone else's.
    ident: (u64, u64),
    shared: Arc<Shared>,
    /// A second handle on the listening socket, shut down to wake the accept thread.
    waker: Option<OwnedFd>,
    jobs: mpsc::Sender<Msg>,
    accept: Option<JoinHandle<()>>,
    dispatch: Option<JoinHandle<()>>,
    dispatch_id: ThreadId,
}

/// State the server's threads share.
struct Shared {
    limits: ApiLimits,
    stop: AtomicBool,
    conns: Mutex<ConnTable>,
}

/// Open client connections, so shutdown can close them.
#[derive(Default)]
struct ConnTable {
    next: u64,
    open: HashMap<u64, UnixStream>,
    closed: bool,
}

/// What connection threads send the dispatcher.
enum Msg {
    Job(Job),
    Stop,
}

/// One parsed request and where its answer goes.
struct Job {
    req: HttpRequest,
    reply: mpsc::Sender<Reply>,
}

/// The dispatcher's answer; `written` is signalled once the response is on the wire.
struct Reply {
    resp: HttpResponse,
    written: Option<mpsc::Sender<()>>,
}

/// A request as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpRequest {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A response before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HttpResponse {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: Option<String>,
    /// Close the connection after this response.
    close: bool,
    /// Call `DaemonControl::exit` once this response is written.
    exit_after: bool,
}

impl HttpResponse {
    fn json(status: u16, value: &Value) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
        Self { status, content_type: JSON_TYPE, body, allow: None, close: false, exit_after: false }
    }

    fn no_content() -> Self {
        Self {
            status: 204,
            content_type: JSON_TYPE,
            body: Vec::new(),
            allow: None,
            close: false,
            exit_after: false,
        }
    }

    fn error(err: &ApiError) -> Self {
        Self::json(err.wire_status(), &err.to_json())
    }

    /// An error from the HTTP layer, after which the connection cannot be trusted.
    fn fatal(status: u16, message: impl Into<String>) -> Self {
        let mut resp = Self::error(&ApiError { status, message: message.into() });
        resp.close = true;
        resp
    }

    fn text(body: String) -> Self {
        Self {
            status: 200,
            content_type: PROMETHEUS_TYPE,
            body: body.into_bytes(),
            allow: None,
            close: false,
            exit_after: false,
        }
    }
}

impl ApiServer {
    /// Serves the API on the unix socket `sock` with [`ApiLimits::default`].
    ///
    /// A socket file already at `sock` is removed first if nothing listens on it; a live socket
    /// fails with `AddrInUse` and any other kind of file with `AlreadyExists`, both left alone.
    pub fn start(sock: &Path, control: Arc<dyn DaemonControl>) -> Result<ApiServer, io::Error> {
        Self::start_with_limits(sock, control, ApiLimits::default())
    }

    /// [`ApiServer::start`] with explicit limits.
    pub fn start_with_limits(
        sock: &Path,
        control: Arc<dyn DaemonControl>,
        limits: ApiLimits,
    ) -> Result<ApiServer, io::Error> {
        remove_stale_socket(sock)?;
        let listener = UnixListener::bind(sock)?;
        let meta = std::fs::symlink_metadata(sock)?;
        let ident = (meta.dev(), meta.ino());
        let remove_ours = || {
            let _ = remove_socket_if_ours(sock, ident);
        };
        let waker = match listener.try_clone() {
            Ok(l) => OwnedFd::from(l),
            Err(e) => {
                remove_ours();
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            limits,
            stop: AtomicBool::new(false),
            conns: Mutex::new(ConnTable::default()),
        });
        let (jobs, inbox) = mpsc::channel::<Msg>();

        let write_timeout = limits.write_timeout;
        let dispatch = thread::Builder::new()
            .name("strata-api".into())
            .spawn(move || dispatch_loop(control, inbox, write_timeout));
        let dispatch = match dispatch {
            Ok(h) => h,
            Err(e) => {
                remove_ours();
                return Err(e);
            }
        };
        let dispatch_id = dispatch.thread().id();

        let accept_shared = Arc::clone(&shared);
        let accept_jobs = jobs.clone();
        let accept = thread::Builder::new()
            .name("strata-api-accept".into())
            .spawn(move || accept_loop(listener, accept_shared, accept_jobs));
        let accept = match accept {
            Ok(h) => h,
            Err(e) => {
                let _ = jobs.send(Msg::Stop);
                remove_ours();
                return Err(e);
            }
        };

        Ok(ApiServer {
            path: sock.to_path_buf(),
            ident,
            shared,
            waker: Some(waker),
            jobs,
            accept: Some(accept),
            dispatch: Some(dispatch),
            dispatch_id,
        })
    }

    /// The socket path this server listens on.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Stops serving: closes the listener and every client connection, stops the threads
    /// (waiting a few seconds at most for a daemon call in progress) and removes the socket
    /// file if it is still the one this server bound. Safe to call from inside a
    /// [`DaemonControl`] method (e.g. `exit`).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Shutting the listening socket down wakes the blocked accept() with EINVAL.
        if let Some(fd) = self.waker.take() {
            let _ = UnixStream::from(fd).shutdown(Shutdown::Both);
        }
        {
            let mut table = self.shared.conns.lock();
            table.closed = true;
            for stream in table.open.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        let _ = self.jobs.send(Msg::Stop);
        if let Some(h) = self.accept.take() {
            join_within(h, JOIN_WAIT);
        }
        if let Some(h) = self.dispatch.take() {
            // From inside a DaemonControl call the dispatcher is this thread: it stops by
            // itself on the Stop message once the call returns.
            if thread::current().id() != self.dispatch_id {
                join_within(h, JOIN_WAIT);
            }
        }
        let _ = remove_socket_if_ours(&self.path, self.ident);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// Joins `h` if it finishes within `wait`, else leaves it running.
fn join_within(h: JoinHandle<()>, wait: Duration) {
    let deadline = Instant::now() + wait;
    while !h.is_finished() {
        if Instant::now() >= deadline {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = h.join();
}

/// Clears the way for binding `sock`: removes a socket nobody listens on, refuses anything else.
fn remove_stale_socket(sock: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(sock) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", sock.display()),
        ));
    }
    match probe_socket(sock) {
        Ok(()) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is a live socket: another process serves it", sock.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(sock) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}

/// Connects to `sock` and hangs up. A listener with a full backlog makes `connect` block, so
/// the attempt runs on its own thread and a second without an answer counts as live.
fn probe_socket(sock: &Path) -> io::Result<()> {
    let (tx, rx) = mpsc::channel();
    let path = sock.to_path_buf();
    thread::Builder::new().name("strata-api-probe".into()).spawn(move || {
        let _ = tx.send(UnixStream::connect(&path).map(drop));
    })?;
    rx.recv_timeout(PROBE_WAIT).unwrap_or(Ok(()))
}

/// Removes `sock` if it is still the socket with this `(dev, ino)`.
fn remove_socket_if_ours(sock: &Path, ident: (u64, u64)) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(sock)?;
    if meta.file_type().is_socket() && (meta.dev(), meta.ino()) == ident {
        std::fs::remove_file(sock)?;
    }
    Ok(())
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>, jobs: mpsc::Sender<Msg>) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // EMFILE and friends: back off rather than spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let id = {
            let mut table = shared.conns.lock();
            if table.closed {
                return;
            }
            if table.open.len() >= shared.limits.max_connections {
                drop(table);
                refuse(stream);
                continue;
            }
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            let id = table.next;
            table.next += 1;
            table.open.insert(id, clone);
            id
        };
        let conn_shared = Arc::clone(&shared);
        let conn_jobs = jobs.clone();
        let spawned = thread::Builder::new().name("strata-api-conn".into()).spawn(move || {
            let mut conn = Conn::new(stream, Arc::clone(&conn_shared));
            conn.serve(&conn_jobs);
            conn_shared.conns.lock().open.remove(&id);
        });
        if spawned.is_err() {
            if let Some(s) = shared.conns.lock().open.remove(&id) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Answers a connection over the limit with a 503 and closes it.
fn refuse(stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let resp = HttpResponse::fatal(503, "too many API connections");
    let mut stream = stream;
    let _ = stream.write_all(&serialize_response(&resp, false));
    let _ = stream.shutdown(Shutdown::Both);
}

fn dispatch_loop(
    control: Arc<dyn DaemonControl>,
    inbox: mpsc::Receiver<Msg>,
    write_wait: Duration,
) {
    while let Ok(msg) = inbox.recv() {
        let job = match msg {
            Msg::Job(job) => job,
            Msg::Stop => return,
        };
        let resp = match catch_unwind(AssertUnwindSafe(|| route(&*control, &job.req))) {
            Ok(resp) => resp,
            Err(panic) => HttpResponse::error(&panic_error(&panic)),
        };
        let exit_after = resp.exit_after;
        let (written_tx, written_rx) = mpsc::channel();
        let reply = Reply { resp, written: exit_after.then_some(written_tx) };
        if job.reply.send(reply).is_ok() && exit_after {
            // nydusd answers before it goes down; give the connection the time it may take.
            let _ = written_rx.recv_timeout(write_wait + Duration::from_secs(1));
        }
        if exit_after {
            let _ = guard(|| control.exit());
        }
    }
}

/// Runs a daemon call, turning a panic into a 500.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, ApiError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| panic_error(&p))
}

fn panic_error(panic: &Box<dyn std::any::Any + Send>) -> ApiError {
    let what = if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    };
    ApiError::internal(format!("daemon panicked while handling the request: {what}"))
}

// ---------------------------------------------------------------------------------------------
// Routing

/// `PUT /api/v1/daemon` body.
#[derive(serde::Deserialize)]
struct DaemonConf {
    log_level: String,
}

/// Methods each path takes; `None` for paths that do not exist.
fn allowed_methods(path: &str) -> Option<&'static [&'static str]> {
    Some(match path {
        "/api/v1/daemon" => &["GET", "PUT"],
        "/api/v1/daemon/exit"
        | "/api/v1/daemon/start"
        | "/api/v1/daemon/fuse/sendfd"
        | "/api/v1/daemon/fuse/takeover" => &["PUT"],
        "/api/v1/daemon/events"
        | "/api/v1/daemon/backend"
        | "/api/v1/metrics"
        | "/api/v1/metrics/files"
        | "/api/v1/metrics/pattern"
        | "/api/v1/metrics/backend"
        | "/api/v1/metrics/blobcache"
        | "/api/v1/metrics/inflight"
        | "/api/v1/accesslog"
        | "/metrics" => &["GET"],
        "/api/v1/mount" => &["POST", "PUT", "DELETE"],
        _ => return None,
    })
}

/// Answers one request by calling `control`.
fn route(control: &dyn DaemonControl, req: &HttpRequest) -> HttpResponse {
    let Some(allowed) = allowed_methods(&req.path) else {
        return HttpResponse::error(&ApiError::not_found(format!(
            "no API endpoint at {}",
            req.path
        )));
    };
    if !allowed.contains(&req.method.as_str()) {
        let mut resp = HttpResponse::error(&ApiError {
            status: 405,
            message: format!(
                "method {} is not allowed on {} (allowed: {})",
                req.method,
                req.path,
                allowed.join(", ")
            ),
        });
        resp.allow = Some(allowed.join(", "));
        return resp;
    }
    match handle(control, req) {
        Ok(resp) => resp,
        Err(e) => HttpResponse::error(&e),
    }
}

fn handle(control: &dyn DaemonControl, req: &HttpRequest) -> Result<HttpResponse, ApiError> {
    let id = req.query("id");
    let value = |v: Value| Ok(HttpResponse::json(200, &v));
    let done = || Ok(HttpResponse::no_content());
    match (req.path.as_str(), req.method.as_str()) {
        ("/api/v1/daemon", "GET") => value(guard(|| control.daemon_info())?),
        ("/api/v1/daemon", "PUT") => {
            let conf: DaemonConf = parse_body(&req.body)?;
            guard(|| control.set_log_level(&conf.log_level))??;
            done()
        }
        ("/api/v1/daemon/exit", _) => {
            let mut resp = HttpResponse::no_content();
            resp.exit_after = true;
            Ok(resp)
        }
        ("/api/v1/daemon/start", _) => {
            guard(|| control.start())??;
            done()
        }
        ("/api/v1/daemon/fuse/sendfd", _) => {
            guard(|| control.send_fuse_fd())??;
            done()
        }
        ("/api/v1/daemon/fuse/takeover", _) => {
            guard(|| control.takeover())??;
            done()
        }
        ("/api/v1/daemon/events", _) => value(guard(|| control.events())?),
        ("/api/v1/daemon/backend", _) => {
            let mountpoint = req.required("mountpoint")?;
            value(guard(|| control.backend_info(mountpoint))??)
        }
        ("/api/v1/mount", method) => {
            let mountpoint = req.required("mountpoint")?;
            match method {
                "POST" => {
                    let cmd: MountRequest = parse_body(&req.body)?;
                    guard(|| control.mount(mountpoint, cmd))??;
                }
                "PUT" => {
                    let cmd: MountRequest = parse_body(&req.body)?;
                    guard(|| control.remount(mountpoint, cmd))??;
                }
                _ => guard(|| control.umount(mountpoint))??,
            }
            done()
        }
        ("/api/v1/metrics", _) => value(guard(|| control.metrics(id))??),
        ("/api/v1/metrics/files", _) => {
            // nydusd: anything but a literal "true" means false.
            let latest = req.query("latest").and_then(|v| v.parse().ok()).unwrap_or(false);
            value(guard(|| control.metrics_files(id, latest))??)
        }
        ("/api/v1/metrics/pattern", _) => value(guard(|| control.metrics_pattern(id))??),
        ("/api/v1/metrics/backend", _) => value(guard(|| control.metrics_backend(id))??),
        ("/api/v1/metrics/blobcache", _) => value(guard(|| control.metrics_blobcache(id))??),
        ("/api/v1/metrics/inflight", _) => value(guard(|| control.metrics_inflight())?),
        ("/api/v1/accesslog", _) => {
            let (filter, limit) = accesslog_query(req)?;
            value(guard(|| control.accesslog(id, &filter, limit))??)
        }
        ("/metrics", _) => prometheus(control),
        (path, _) => Err(ApiError::not_found(format!("no API endpoint at {path}"))),
    }
}

/// `GET /metrics`: the global, backend and blobcache metrics as Prometheus text. A section
/// whose call fails is left out; only when all fail is the first error returned.
fn prometheus(control: &dyn DaemonControl) -> Result<HttpResponse, ApiError> {
    let results = [
        ("global", guard(|| control.metrics(None)).and_then(|r| r)),
        ("backend", guard(|| control.metrics_backend(None)).and_then(|r| r)),
        ("blobcache", guard(|| control.metrics_blobcache(None)).and_then(|r| r)),
    ];
    let mut sections = Vec::new();
    let mut first_err = None;
    for (name, result) in results {
        match result {
            Ok(v) => sections.push((name, v)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if sections.is_empty() {
        if let Some(e) = first_err {
            return Err(e);
        }
    }
    let refs: Vec<(&str, &Value)> = sections.iter().map(|(n, v)| (*n, v)).collect();
    Ok(HttpResponse::text(prometheus_text(&refs)))
}

/// Most events one `/api/v1/accesslog` answer carries (and the default `limit`).
pub const ACCESSLOG_MAX_LIMIT: usize = 10_000;
const ACCESSLOG_DEFAULT_LIMIT: usize = 100;

/// The filter and limit of a `/api/v1/accesslog` query: `pid` and `op` take comma-separated
/// lists, `since`/`until` seconds since the log started, `path` a path prefix.
fn accesslog_query(req: &HttpRequest) -> Result<(crate::accesslog::Filter, usize), ApiError> {
    fn bad(key: &str, v: &str, want: &str) -> ApiError {
        ApiError::bad_request(format!("query parameter {key}={v:?}: expected {want}"))
    }
    let num = |key: &str| -> Result<Option<u64>, ApiError> {
        req.query(key)
            .map(|v| v.parse::<u64>().map_err(|_| bad(key, v, "a non-negative integer")))
            .transpose()
    };
    let secs = |key: &str| -> Result<Option<u64>, ApiError> {
        req.query(key)
            .map(|v| match v.parse::<f64>() {
                Ok(s) if s.is_finite() && s >= 0.0 => Ok((s * 1e9) as u64),
                _ => Err(bad(key, v, "seconds since the log started (a non-negative number)")),
            })
            .transpose()
    };
    let mut f = crate::accesslog::Filter::default();
    if let Some(v) = req.query("pid") {
        for p in v.split(',') {
            f.pids
                .push(p.trim().parse().map_err(|_| bad("pid", v, "process ids, comma-separated"))?);
        }
    }
    if let Some(v) = req.query("op") {
        for o in v.split(',') {
            f.ops.push(o.trim().parse().map_err(|e: crate::accesslog::event::UnknownOp| {
                ApiError::bad_request(format!("query parameter op={v:?}: {e}"))
            })?);
        }
    }
    f.uid = num("uid")?
        .map(|u| u32::try_from(u).map_err(|_| bad("uid", &u.to_string(), "a 32-bit uid")))
        .transpose()?;
    f.process = req.query("process").map(str::to_string);
    f.path_prefix = req.query("path").map(str::to_string);
    f.since_ns = secs("since")?;
    f.until_ns = secs("until")?;
    let limit = num("limit")?.map_or(ACCESSLOG_DEFAULT_LIMIT, |l| l as usize);
    if limit > ACCESSLOG_MAX_LIMIT {
        return Err(bad("limit", &limit.to_string(), &format!("at most {ACCESSLOG_MAX_LIMIT}")));
    }
    Ok((f, limit))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

impl HttpRequest {
    /// First value of query parameter `key`; an empty value counts as absent.
    fn query(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn required(&self, key: &str) -> Result<&str, ApiError> {
        self.query(key).ok_or_else(|| {
            ApiError::bad_request(format!("'{key}' should be specified in query string"))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition

/// Renders metrics JSON as Prometheus text (format 0.0.4). Each `(endpoint, value)` whose value
/// is an object contributes `strata_<endpoint>_<field>` families: numbers as one sample, arrays
/// of numbers as one sample per element labelled `bucket="<index>"`, nested objects flattened
/// with `_`. Strings, booleans and nulls are skipped. Fields that accumulate (counts, hits,
/// errors, totals, amounts, cumulative latencies, distributions) are typed `counter`, the rest
/// `gauge`. Keys are emitted in sorted order, each family once.
pub fn prometheus_text(sections: &[(&str, &Value)]) -> String {
    let mut out = String::new();
    let mut seen = HashSet::new();
    for (endpoint, value) in sections {
        if let Value::Object(map) = value {
            let prefix = format!("strata_{}", metric_name_part(endpoint));
            emit_object(&prefix, map, 0, &mut seen, &mut out);
        }
    }
    out
}

fn emit_object(
    prefix: &str,
    map: &serde_json::Map<String, Value>,
    depth: usize,
    seen: &mut HashSet<String>,
    out: &mut String,
) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let name = format!("{prefix}_{}", metric_name_part(key));
        match &map[key] {
            Value::Number(n) => emit_family(&name, key, &[(None, n)], seen, out),
            Value::Array(items) => {
                let samples: Vec<(Option<usize>, &serde_json::Number)> = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| match v {
                        Value::Number(n) => Some((Some(i), n)),
                        _ => None,
                    })
                    .collect();
                if !samples.is_empty() {
                    emit_family(&name, key, &samples, seen, out);
                }
            }
            Value::Object(inner) if depth + 1 < MAX_FLATTEN_DEPTH => {
                emit_object(&name, inner, depth + 1, seen, out)
            }
            _ => {}
        }
    }
}

fn emit_family(
    name: &str,
    field: &str,
    samples: &[(Option<usize>, &serde_json::Number)],
    seen: &mut HashSet<String>,
    out: &mut String,
) {
    if !seen.insert(name.to_string()) {
        return;
    }
    let kind = if is_counter(field) { "counter" } else { "gauge" };
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (bucket, n) in samples {
        let _ = match bucket {
            Some(b) => writeln!(out, "{name}{{bucket=\"{b}\"}} {n}"),
            None => writeln!(out, "{name} {n}"),
        };
    }
}

/// Whether a nydus metrics field only ever grows.
fn is_counter(field: &str) -> bool {
    const GAUGES: &[&str] = &[
        "nr_opens",
        "nr_max_opens",
        "entries_count",
        "prefetch_workers",
        "prefetch_unmerged_chunks",
        "buffered_backend_size",
    ];
    const COUNTER_WORDS: &[&str] = &[
        "count",
        "hits",
        "errors",
        "total",
        "amount",
        "cumulative",
        "dist",
        "data_read",
        "latency",
    ];
    let f = field.to_ascii_lowercase();
    if GAUGES.contains(&f.as_str()) {
        return false;
    }
    let timestamp = f.ends_with("_tp") || (f.contains("time") && !f.contains("cumulative"));
    !timestamp && COUNTER_WORDS.iter().any(|w| f.contains(w))
}

/// `s` with every character outside `[A-Za-z0-9_]` replaced by `_`.
fn metric_name_part(s: &str) -> String {
    let part: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if part.is_empty() {
        "_".to_string()
    } else {
        part
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over one connection

/// How reading the next request ended.
enum ReadOutcome {
    Request(HttpRequest, RequestMeta),
    /// The client went away (or the server is stopping): close quietly.
    Closed,
    /// The request is unusable: send this and close.
    Fail(HttpResponse),
}

/// What the connection needs to know about a request besides what the router sees.
#[derive(Debug, Clone, Copy)]
struct RequestMeta {
    keep_alive: bool,
    head_only: bool,
}

/// Framing of a request body.
enum BodyKind {
    None,
    Length(usize),
    Chunked,
}

/// Why filling the buffer stopped.
enum FillError {
    Eof,
    TimedOut,
    Io,
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    shared: Arc<Shared>,
}

impl Conn {
    fn new(stream: UnixStream, shared: Arc<Shared>) -> Self {
        Self { stream, buf: Vec::new(), shared }
    }

    fn limits(&self) -> ApiLimits {
        self.shared.limits
    }

    fn serve(&mut self, jobs: &mpsc::Sender<Msg>) {
        loop {
            let (req, meta) = match self.read_request() {
                ReadOutcome::Request(req, meta) => (req, meta),
                ReadOutcome::Closed => break,
                ReadOutcome::Fail(resp) => {
                    let _ = self.write_response(&resp, false);
                    break;
                }
            };
            let reply = self.dispatch(req, jobs);
            let mut resp = reply.resp;
            resp.close |= !meta.keep_alive || self.shared.stop.load(Ordering::SeqCst);
            let written = self.write_response(&resp, meta.head_only);
            if let Some(tx) = reply.written {
                let _ = tx.send(());
            }
            if written.is_err() || resp.close {
                break;
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Hands the request to the dispatcher and waits for its answer.
    fn dispatch(&self, req: HttpRequest, jobs: &mpsc::Sender<Msg>) -> Reply {
        let unavailable = || Reply {
            resp: HttpResponse::fatal(503, "the API server is shutting down"),
            written: None,
        };
        let (tx, rx) = mpsc::channel();
        if jobs.send(Msg::Job(Job { req, reply: tx })).is_err() {
            return unavailable();
        }
        loop {
            match rx.recv_timeout(STOP_POLL) {
                Ok(reply) => return reply,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        return unavailable();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return unavailable(),
            }
        }
    }

    /// Reads more bytes into `buf`: with no deadline it waits as long as it takes (an idle
    /// connection); with one it fails with `TimedOut` once the deadline passes.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<usize, FillError> {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(FillError::TimedOut);
                }
                Some(left)
            }
        };
        if self.stream.set_read_timeout(timeout).is_err() {
            return Err(FillError::Io);
        }
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(FillError::Eof),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(FillError::TimedOut)
                }
                Err(_) => return Err(FillError::Io),
            }
        }
    }

    fn read_request(&mut self) -> ReadOutcome {
        // Between requests: wait as long as the client likes. CRLFs before a request line
        // are ignored (RFC 9112 §2.2).
        loop {
            let skip = self.buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            self.buf.drain(..skip);
            if !self.buf.is_empty() {
                break;
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                return ReadOutcome::Closed;
            }
            if self.fill(None).is_err() {
                return ReadOutcome::Closed;
            }
        }
        let limits = self.limits();
        let deadline = Instant::now() + limits.request_timeout;
        let timeout = || ReadOutcome::Fail(HttpResponse::fatal(408, "request timed out"));

        // Head.
        let mut scanned = 0;
        let (head_len, body_start) = loop {
            if let Some(found) = find_head_end(&self.buf, scanned) {
                break found;
            }
            scanned = self.buf.len().saturating_sub(3);
            if self.buf.len() > limits.max_head {
                return ReadOutcome::Fail(HttpResponse::fatal(
                    431,
                    format!("request head larger than {} bytes", limits.max_head),
                ));
            }
            match self.fill(Some(deadline)) {
                Ok(_) => {}
                Err(FillError::TimedOut) => return timeout(),
                Err(_) => return ReadOutcome::Closed,
            }
        };
        if head_len > limits.max_head {
            return ReadOutcome::Fail(HttpResponse::fatal(
                431,
                format!("request head larger than {} bytes", limits.max_head),
            ));
        }
        let head = match parse_head(&self.buf[..head_len]) {
            Ok(h) => h,
            Err(resp) => return ReadOutcome::Fail(resp),
        };
        self.buf.drain(..body_start);

        let body_kind = match head.body_kind() {
            Ok(k) => k,
            Err(resp) => return ReadOutcome::Fail(resp),
        };
        if let BodyKind::Length(n) = body_kind {
            if n > limits.max_body {
                return ReadOutcome::Fail(too_large(limits.max_body));
            }
        }
        match head.header("expect") {
            None => {}
            Some(v) if v.eq_ignore_ascii_case("100-continue") => {
                let has_body = !matches!(body_kind, BodyKind::None | BodyKind::Length(0));
                if has_body && head.minor == 1 && self.buf.is_empty() {
                    let _ = self.stream.set_write_timeout(Some(limits.write_timeout));
                    if self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                        return ReadOutcome::Closed;
                    }
                }
            }
            Some(_) => {
                return ReadOutcome::Fail(HttpResponse::fatal(417, "unsupported expectation"))
            }
        }

        let body = match body_kind {
            BodyKind::None => Vec::new(),
            BodyKind::Length(n) => {
                while self.buf.len() < n {
                    match self.fill(Some(deadline)) {
                        Ok(_) => {}
                        Err(FillError::TimedOut) => return timeout(),
                        Err(_) => return ReadOutcome::Closed,
                    }
                }
                self.buf.drain(..n).collect()
            }
            BodyKind::Chunked => match self.read_chunked(deadline) {
                Ok(b) => b,
                Err(outcome) => return outcome,
            },
        };

        let Some((path, query)) = split_target(&head.target) else {
            return ReadOutcome::Fail(HttpResponse::fatal(
                400,
                format!("bad request target {:?}", head.target),
            ));
        };
        let keep_alive = head.keep_alive();
        let req = HttpRequest {
            method: head.method.clone(),
            path: path.to_string(),
            query: parse_query(query),
            body,
        };
        let head_only = head.method == "HEAD";
        ReadOutcome::Request(req, RequestMeta { keep_alive, head_only })
    }

    /// Reads a `Transfer-Encoding: chunked` body (RFC 9112 §7.1), trailers discarded.
    fn read_chunked(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadOutcome> {
        let limits = self.limits();
        let mut body = Vec::new();
        loop {
            let line = self.read_line(deadline, MAX_CHUNK_LINE)?;
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = match usize::from_str_radix(size_text, 16) {
                Ok(s) if !size_text.is_empty() && !size_text.starts_with('+') => s,
                _ => {
                    return Err(ReadOutcome::Fail(HttpResponse::fatal(
                        400,
                        format!("bad chunk size {size_text:?}"),
                    )))
                }
            };
            if size == 0 {
                break;
            }
            if size > limits.max_body.saturating_sub(body.len()) {
                return Err(ReadOutcome::Fail(too_large(limits.max_body)));
            }
            self.wait_for(size + 2, deadline)?;
            body.extend_from_slice(&self.buf[..size]);
            let crlf_ok = &self.buf[size..size + 2] == b"\r\n";
            self.buf.drain(..size + 2);
            if !crlf_ok {
                return Err(ReadOutcome::Fail(HttpResponse::fatal(
                    400,
                    "chunk data not followed by CRLF",
                )));
            }
        }
        // Trailer section: header lines up to an empty one.
        let mut trailer_bytes = 0;
        loop {
            let line = self.read_line(deadline, limits.max_head)?;
            if line.is_empty() {
                return Ok(body);
            }
            trailer_bytes += line.len();
            if trailer_bytes > limits.max_head {
                return Err(ReadOutcome::Fail(HttpResponse::fatal(431, "trailers too large")));
            }
        }
    }

    /// Waits until `buf` holds at least `n` bytes.
    fn wait_for(&mut self, n: usize, deadline: Instant) -> Result<(), ReadOutcome> {
        while self.buf.len() < n {
            match self.fill(Some(deadline)) {
                Ok(_) => {}
                Err(FillError::TimedOut) => {
                    return Err(ReadOutcome::Fail(HttpResponse::fatal(408, "request timed out")))
                }
                Err(_) => return Err(ReadOutcome::Closed),
            }
        }
        Ok(())
    }

    /// Takes one line (without its `\r\n` or `\n`) off the front of `buf`.
    fn read_line(&mut self, deadline: Instant, max: usize) -> Result<String, ReadOutcome> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return String::from_utf8(line)
                    .map_err(|_| ReadOutcome::Fail(HttpResponse::fatal(400, "line is not UTF-8")));
            }
            if self.buf.len() > max {
                return Err(ReadOutcome::Fail(HttpResponse::fatal(400, "line too long")));
            }
            let want = self.buf.len() + 1;
            self.wait_for(want, deadline)?;
        }
    }

    fn write_response(&mut self, resp: &HttpResponse, head_only: bool) -> io::Result<()> {
        self.stream.set_write_timeout(Some(self.limits().write_timeout))?;
        self.stream.write_all(&serialize_response(resp, head_only))?;
        self.stream.flush()
    }
}

fn too_large(max: usize) -> HttpResponse {
    HttpResponse::fatal(413, format!("request body larger than {max} bytes"))
}

/// Bytes of `resp` on the wire; the body is left out for HEAD requests and 204.
fn serialize_response(resp: &HttpResponse, head_only: bool) -> Vec<u8> {
    let mut head =
        format!("HTTP/1.1 {} {}\r\nServer: {SERVER_NAME}\r\n", resp.status, reason(resp.status));
    if resp.status != 204 {
        let _ = write!(
            head,
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            resp.content_type,
            resp.body.len()
        );
    }
    if let Some(allow) = &resp.allow {
        let _ = write!(head, "Allow: {allow}\r\n");
    }
    if resp.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only && resp.status != 204 {
        out.extend_from_slice(&resp.body);
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        s if (400..500).contains(&s) => "Client Error",
        s if (500..600).contains(&s) => "Server Error",
        _ => "Unknown",
    }
}

/// Where the head ends in `buf`: `(head length, body start)`. Scanning starts at `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i + 1, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i + 1, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// A parsed request line and headers.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    /// HTTP/1.minor.
    minor: u8,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn header_tokens(&self, name: &str) -> impl Iterator<Item = String> + '_ {
        let name = name.to_string();
        self.headers
            .iter()
            .filter(move |(n, _)| *n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
    }

    fn keep_alive(&self) -> bool {
        let tokens: Vec<String> = self.header_tokens("connection").collect();
        if tokens.iter().any(|t| t == "close") {
            return false;
        }
        self.minor == 1 || tokens.iter().any(|t| t == "keep-alive")
    }

    fn body_kind(&self) -> Result<BodyKind, HttpResponse> {
        let codings: Vec<String> = self.header_tokens("transfer-encoding").collect();
        let lengths: Vec<String> = self.header_tokens("content-length").collect();
        if !codings.is_empty() {
            if !lengths.is_empty() {
                return Err(HttpResponse::fatal(
                    400,
                    "both Transfer-Encoding and Content-Length given",
                ));
            }
            if codings != ["chunked"] {
                return Err(HttpResponse::fatal(
                    501,
                    format!("unsupported transfer-encoding {}", codings.join(", ")),
                ));
            }
            return Ok(BodyKind::Chunked);
        }
        let Some(first) = lengths.first() else {
            return Ok(BodyKind::None);
        };
        if lengths.iter().any(|l| l != first) {
            return Err(HttpResponse::fatal(400, "conflicting Content-Length headers"));
        }
        if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpResponse::fatal(400, format!("bad Content-Length {first:?}")));
        }
        // Too many digits for usize is certainly over any body limit.
        Ok(BodyKind::Length(first.parse().unwrap_or(usize::MAX)))
    }
}

fn parse_head(raw: &[u8]) -> Result<Head, HttpResponse> {
    let bad = |m: &str| HttpResponse::fatal(400, m.to_string());
    let text = std::str::from_utf8(raw).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed request method"));
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v if v.starts_with("HTTP/") => {
            return Err(HttpResponse::fatal(505, format!("{v} is not supported; use HTTP/1.1")))
        }
        _ => return Err(bad("malformed HTTP version")),
    };
    if target.is_empty() {
        return Err(bad("empty request target"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            return Err(bad("folded header lines are not accepted"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("malformed header line"));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("malformed header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head { method: method.to_string(), target: target.to_string(), minor, headers })
}

/// Path and raw query of an origin-form (`/p?q`) or absolute-form (`http://host/p?q`) target.
fn split_target(target: &str) -> Option<(&str, &str)> {
    let target = target.split('#').next().unwrap_or("");
    let rest = match target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) {
        Some(after_scheme) => {
            let at = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
            let rest = &after_scheme[at..];
            if let Some(query) = rest.strip_prefix('?') {
                return Some(("/", query));
            }
            if rest.is_empty() {
                "/"
            } else {
                rest
            }
        }
        None => target,
    };
    if !rest.starts_with('/') {
        return None;
    }
    Some(match rest.split_once('?') {
        Some((path, query)) => (path, query),
        None => (rest, ""),
    })
}

/// `application/x-www-form-urlencoded` pairs, as nydusd's `url::Url::query_pairs` reads them.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// Decodes `+` and `%XX`; malformed escapes are kept as they are, bad UTF-8 replaced.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let high = bytes.get(i + 1).and_then(|b| hex(*b));
                let low = bytes.get(i + 2).and_then(|b| hex(*b));
                match (high, low) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;

    // -----------------------------------------------------------------------------------------
    // A DaemonControl that records its calls.

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Info,
        LogLevel(String),
        Exit,
        Events,
        BackendInfo(String),
        Mount(String, MountRequest),
        Remount(String, MountRequest),
        Umount(String),
        Metrics(Option<String>),
        Files(Option<String>, bool),
        Pattern(Option<String>),
        Backend(Option<String>),
        Blobcache(Option<String>),
        Inflight,
        Accesslog(Option<String>, crate::accesslog::Filter, usize),
    }

    #[derive(Default)]
    struct Mock {
        calls: Mutex<Vec<Call>>,
        panic_in_info: AtomicBool,
        fail_blobcache: AtomicBool,
        fail_all_metrics: AtomicBool,
        mount_error: Mutex<Option<ApiError>>,
        /// `exit` shuts this server down from inside the call.
        server: Mutex<Option<ApiServer>>,
        /// Millisecond delay inside `events`, to hold the dispatcher.
        events_delay_ms: AtomicUsize,
    }

    impl Mock {
        fn record(&self, c: Call) {
            self.calls.lock().push(c);
        }
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().clone()
        }
        fn metrics_err(&self) -> Result<(), ApiError> {
            if self.fail_all_metrics.load(Ordering::SeqCst) {
                Err(ApiError::not_found("no counter"))
            } else {
                Ok(())
            }
        }
    }

    fn own(id: Option<&str>) -> Option<String> {
        id.map(str::to_string)
    }

    impl DaemonControl for Mock {
        fn daemon_info(&self) -> Value {
            self.record(Call::Info);
            if self.panic_in_info.load(Ordering::SeqCst) {
                panic!("boom in daemon_info");
            }
            json!({"id": "d1", "version": {"package_ver": "0.1.0"}, "state": "RUNNING"})
        }
        fn set_log_level(&self, level: &str) -> Result<(), ApiError> {
            self.record(Call::LogLevel(level.to_string()));
            if level == "loud" {
                return Err(ApiError::bad_request("unknown log level loud"));
            }
            Ok(())
        }
        fn exit(&self) {
            self.record(Call::Exit);
            if let Some(server) = self.server.lock().take() {
                server.shutdown();
            }
        }
        fn events(&self) -> Value {
            self.record(Call::Events);
            let ms = self.events_delay_ms.load(Ordering::SeqCst) as u64;
            thread::sleep(Duration::from_millis(ms));
            json!({"max_errors": 8, "total_errors": 0, "errors": []})
        }
        fn backend_info(&self, mountpoint: &str) -> Result<Value, ApiError> {
            self.record(Call::BackendInfo(mountpoint.to_string()));
            if mountpoint == "/missing" {
                return Err(ApiError::not_found("no rafs mounted at /missing"));
            }
            Ok(json!({"magic": 3759947928u64, "version": 6, "root_nid": 36}))
        }
        fn mount(&self, mountpoint: &str, req: MountRequest) -> Result<(), ApiError> {
            self.record(Call::Mount(mountpoint.to_string(), req));
            match self.mount_error.lock().clone() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        fn remount(&self, mountpoint: &str, req: MountRequest) -> Result<(), ApiError> {
            self.record(Call::Remount(mountpoint.to_string(), req));
            Ok(())
        }
        fn umount(&self, mountpoint: &str) -> Result<(), ApiError> {
            self.record(Call::Umount(mountpoint.to_string()));
            Ok(())
        }
        fn metrics(&self, id: Option<&str>) -> Result<Value, ApiError> {
            self.record(Call::Metrics(own(id)));
            self.metrics_err()?;
            Ok(json!({
                "id": id.unwrap_or("/"), "nr_opens": 2, "data_read": 4096,
                "block_count_read": [1, 0, 3], "measure_latency": true,
            }))
        }
        fn metrics_files(&self, id: Option<&str>, latest: bool) -> Result<Value, ApiError> {
            self.record(Call::Files(own(id), latest));
            Ok(if latest { json!([[1, 5], [8]]) } else { json!({"3": {"data_read": 10}}) })
        }
        fn metrics_pattern(&self, id: Option<&str>) -> Result<Value, ApiError> {
            self.record(Call::Pattern(own(id)));
            Ok(json!([{"ino": 3, "nr_read": 1, "first_access_time_secs": 5}]))
        }
        fn metrics_backend(&self, id: Option<&str>) -> Result<Value, ApiError> {
            self.record(Call::Backend(own(id)));
            self.metrics_err()?;
            Ok(json!({
                "id": "b", "backend_type": "localfs", "read_count": 7, "read_errors": 0,
                "read_amount_total": 8192, "read_cumulative_latency_millis_dist": [4, 5],
            }))
        }
        fn metrics_blobcache(&self, id: Option<&str>) -> Result<Value, ApiError> {
            self.record(Call::Blobcache(own(id)));
            self.metrics_err()?;
            if self.fail_blobcache.load(Ordering::SeqCst) {
                return Err(ApiError::not_found("no blobcache"));
            }
            Ok(json!({
                "id": "c", "store_path": "/cache", "underlying_files": ["x"], "whole_hits": 2,
                "entries_count": 4, "prefetch_begin_time_secs": 1700000000, "data_all_ready": false,
            }))
        }
        fn metrics_inflight(&self) -> Value {
            self.record(Call::Inflight);
            json!([])
        }
        fn accesslog(
            &self,
            id: Option<&str>,
            filter: &crate::accesslog::Filter,
            limit: usize,
        ) -> Result<Value, ApiError> {
            self.record(Call::Accesslog(own(id), filter.clone(), limit));
            Ok(json!({"events": []}))
        }
    }

    // -----------------------------------------------------------------------------------------
    // A tiny HTTP/1.1 client over UnixStream.

    #[derive(Debug)]
    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|e| {
                panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body))
            })
        }
        fn text(&self) -> String {
            String::from_utf8(self.body.clone()).unwrap()
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
        /// Asserts the nydusd error shape and returns the message.
        fn error_message(&self) -> String {
            let v = self.json();
            let obj = v.as_object().expect("error body is an object");
            assert_eq!(obj.len(), 2, "{v}");
            assert_eq!(obj["code"], json!("UNDEFINED"));
            obj["message"].as_str().expect("message is a string").to_string()
        }
    }

    struct Client {
        stream: UnixStream,
        buf: Vec<u8>,
    }

    impl Client {
        fn connect(sock: &Path) -> Client {
            let stream = UnixStream::connect(sock).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Client { stream, buf: Vec::new() }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).expect("write request");
        }

        fn more(&mut self) -> usize {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read response");
            self.buf.extend_from_slice(&chunk[..n]);
            n
        }

        /// Reads one response; `head_only` for answers to HEAD.
        fn response(&mut self, head_only: bool) -> Resp {
            let end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                assert!(self.more() > 0, "connection closed before a response head");
            };
            let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
            self.buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap();
            assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
            let status: u16 = status_line[9..12].parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.to_string(), v.trim().to_string())
                })
                .collect();
            let mut resp = Resp { status, headers, body: Vec::new() };
            if head_only || status == 204 || status < 200 {
                return resp;
            }
            let len: usize =
                resp.header("Content-Length").expect("content-length").parse().unwrap();
            while self.buf.len() < len {
                assert!(self.more() > 0, "connection closed inside a body");
            }
            resp.body = self.buf.drain(..len).collect();
            resp
        }

        /// Whether the server has closed the connection (within the read timeout).
        fn closed_by_server(&mut self) -> bool {
            let mut b = [0u8; 1];
            matches!(self.stream.read(&mut b), Ok(0) | Err(_))
        }
    }

    fn request(method: &str, target: &str, body: Option<&str>, close: bool) -> Vec<u8> {
        let mut r = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
        if close {
            r.push_str("Connection: close\r\n");
        }
        if let Some(b) = body {
            r.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        r.push_str("\r\n");
        if let Some(b) = body {
            r.push_str(b);
        }
        r.into_bytes()
    }

    fn call(sock: &Path, method: &str, target: &str, body: Option<&str>) -> Resp {
        let mut c = Client::connect(sock);
        c.send(&request(method, target, body, true));
        c.response(method == "HEAD")
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        sock: PathBuf,
        mock: Arc<Mock>,
        server: Option<ApiServer>,
    }

    fn fixture_with(limits: ApiLimits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let mock = Arc::new(Mock::default());
        let server = ApiServer::start_with_limits(&sock, mock.clone(), limits).unwrap();
        Fixture { _dir: dir, sock, mock, server: Some(server) }
    }

    fn fixture() -> Fixture {
        fixture_with(ApiLimits::default())
    }

    fn short_limits() -> ApiLimits {
        ApiLimits {
            request_timeout: Duration::from_millis(400),
            write_timeout: Duration::from_millis(400),
            ..ApiLimits::default()
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    const MOUNT_BODY: &str =
        r#"{"source":"/b/bootstrap","fs_type":"rafs","config":"{}","prefetch_files":["/a"]}"#;

    fn mount_req() -> MountRequest {
        MountRequest {
            source: "/b/bootstrap".into(),
            fs_type: "rafs".into(),
            config: "{}".into(),
            prefetch_files: Some(vec!["/a".into()]),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Endpoints

    #[test]
    fn get_daemon_returns_info_json() {
        let f = fixture();
        let r = call(&f.sock, "GET", "/api/v1/daemon", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("Server"), Some("Nydus API"));
        assert_eq!(r.json()["state"], json!("RUNNING"));
        assert_eq!(f.mock.calls(), vec![Call::Info]);
    }

    #[test]
    fn put_daemon_sets_log_level() {
        let f = fixture();
        let r = call(&f.sock, "PUT", "/api/v1/daemon", Some(r#"{"log_level":"debug"}"#));
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        assert_eq!(r.header("Content-Length"), None);
        assert_eq!(f.mock.calls(), vec![Call::LogLevel("debug".into())]);
    }

    #[test]
    fn put_daemon_error_from_control_keeps_its_status() {
        let f = fixture();
        let r = call(&f.sock, "PUT", "/api/v1/daemon", Some(r#"{"log_level":"loud"}"#));
        assert_eq!(r.status, 400);
        assert_eq!(r.error_message(), "unknown log level loud");
    }

    #[test]
    fn put_daemon_bad_bodies_are_400_with_serde_message() {
        let f = fixture();
        let r = call(&f.sock, "PUT", "/api/v1/daemon", Some(r#"{"level":"debug"}"#));
        assert_eq!(r.status, 400);
        assert!(r.error_message().contains("missing field `log_level`"), "{:?}", r.json());
        let r = call(&f.sock, "PUT", "/api/v1/daemon", Some(r#"{"log_level":5}"#));
        assert_eq!(r.status, 400);
        assert!(r.error_message().contains("invalid type: integer `5`"), "{:?}", r.json());
        let r = call(&f.sock, "PUT", "/api/v1/daemon", Some("{not json"));
        assert_eq!(r.status, 400);
        assert!(r.error_message().starts_with("invalid request body: "));
        let r = call(&f.sock, "PUT", "/api/v1/daemon", None);
        assert_eq!(r.status, 400);
        assert!(r.error_message().contains("EOF while parsing"), "{:?}", r.json());
        assert!(f.mock.calls().is_empty());
    }

    #[test]
    fn put_exit_responds_204_then_calls_exit() {
        let f = fixture();
        let r = call(&f.sock, "PUT", "/api/v1/daemon/exit", None);
        assert_eq!(r.status, 204);
        wait_until("exit call", || f.mock.calls() == vec![Call::Exit]);
        // The server keeps answering until the daemon shuts it down.
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon/events", None).status, 200);
    }

    #[test]
    fn exit_that_shuts_the_server_down_does_not_deadlock() {
        let mut f = fixture();
        *f.mock.server.lock() = f.server.take();
        let r = call(&f.sock, "PUT", "/api/v1/daemon/exit", None);
        assert_eq!(r.status, 204);
        wait_until("socket removal", || !f.sock.exists());
        assert!(f.mock.server.lock().is_none());
        assert!(UnixStream::connect(&f.sock).is_err());
    }

    #[test]
    fn get_events() {
        let f = fixture();
        let r = call(&f.sock, "GET", "/api/v1/daemon/events", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["max_errors"], json!(8));
        assert_eq!(f.mock.calls(), vec![Call::Events]);
    }

    #[test]
    fn backend_info_needs_and_decodes_mountpoint() {
        let f = fixture();
        let r = call(&f.sock, "GET", "/api/v1/daemon/backend?mountpoint=%2Fsub%20dir", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["version"], json!(6));
        let r = call(&f.sock, "GET", "/api/v1/daemon/backend", None);
        assert_eq!(r.status, 400);
        assert!(r.error_message().contains("'mountpoint'"));
        let r = call(&f.sock, "GET", "/api/v1/daemon/backend?mountpoint=", None);
        assert_eq!(r.status, 400);
        let r = call(&f.sock, "GET", "/api/v1/daemon/backend?mountpoint=/missing", None);
        assert_eq!(r.status, 404);
        assert_eq!(r.error_message(), "no rafs mounted at /missing");
        assert_eq!(
            f.mock.calls(),
            vec![Call::BackendInfo("/sub dir".into()), Call::BackendInfo("/missing".into())]
        );
    }

    #[test]
    fn mount_remount_umount() {
        let f = fixture();
        let r = call(&f.sock, "POST", "/api/v1/mount?mountpoint=%2Fimg1", Some(MOUNT_BODY));
        assert_eq!(r.status, 204);
        let r = call(&f.sock, "PUT", "/api/v1/mount?mountpoint=/img1", Some(MOUNT_BODY));
        assert_eq!(r.status, 204);
        let r = call(&f.sock, "DELETE", "/api/v1/mount?mountpoint=/img1", None);
        assert_eq!(r.status, 204);
        assert_eq!(
            f.mock.calls(),
            vec![
                Call::Mount("/img1".into(), mount_req()),
                Call::Remount("/img1".into(), mount_req()),
                Call::Umount("/img1".into()),
            ]
        );
    }

    #[test]
    fn mount_defaults_optional_fields() {
        let f = fixture();
        let body = r#"{"source":"/b","fs_type":"rafs","unknown":1}"#;
        let r = call(&f.sock, "POST", "/api/v1/mount?mountpoint=/m", Some(body));
        assert_eq!(r.status, 204);
        let want = MountRequest {
            source: "/b".into(),
            fs_type: "rafs".into(),
            config: String::new(),
            prefetch_files: None,
        };
        assert_eq!(f.mock.calls(), vec![Call::Mount("/m".into(), want)]);
    }

    #[test]
    fn mount_errors() {
        let f = fixture();
        let r = call(&f.sock, "POST", "/api/v1/mount", Some(MOUNT_BODY));
        assert_eq!(r.status, 400);
        assert!(r.error_message().contains("'mountpoint' should be specified"));
        let r = call(&f.sock, "DELETE", "/api/v1/mount?id=x", None);
        assert_eq!(r.status, 400);
        let r = call(&f.sock, "POST", "/api/v1/mount?mountpoint=/m", Some(r#"{"source":1}"#));
        assert_eq!(r.status, 400);
        assert!(r.error_message().contains("invalid type: integer `1`, expected a string"));
        let r = call(&f.sock, "PUT", "/api/v1/mount?mountpoint=/m", Some(r#"{"source":"/b"}"#));
        assert_eq!(r.status, 400);
        assert!(r.error_message().contains("missing field `fs_type`"));
        assert!(f.mock.calls().is_empty());

        *f.mock.mount_error.lock() = Some(ApiError::not_implemented("passthrough_fs"));
        let r = call(&f.sock, "POST", "/api/v1/mount?mountpoint=/m", Some(MOUNT_BODY));
        assert_eq!(r.status, 501);
        assert_eq!(r.error_message(), "passthrough_fs");
        // A status outside 4xx/5xx from the daemon goes out as 500.
        *f.mock.mount_error.lock() = Some(ApiError { status: 200, message: "odd".into() });
        let r = call(&f.sock, "POST", "/api/v1/mount?mountpoint=/m", Some(MOUNT_BODY));
        assert_eq!(r.status, 500);
    }

    #[test]
    fn metrics_endpoints_pass_id_and_latest() {
        let f = fixture();
        let r = call(&f.sock, "GET", "/api/v1/metrics?id=%2Fsnap1", None);
        assert_eq!((r.status, r.json()["id"].clone()), (200, json!("/snap1")));
        let r = call(&f.sock, "GET", "/api/v1/metrics", None);
        assert_eq!(r.status, 200);
        let r = call(&f.sock, "GET", "/api/v1/metrics/files?id=a&latest=true", None);
        assert_eq!((r.status, r.json()), (200, json!([[1, 5], [8]])));
        let r = call(&f.sock, "GET", "/api/v1/metrics/files?latest=yes", None);
        assert_eq!((r.status, r.json()), (200, json!({"3": {"data_read": 10}})));
        let r = call(&f.sock, "GET", "/api/v1/metrics/pattern?id=p", None);
        assert_eq!((r.status, r.json()[0]["ino"].clone()), (200, json!(3)));
        let r = call(&f.sock, "GET", "/api/v1/metrics/backend?id=b", None);
        assert_eq!((r.status, r.json()["read_count"].clone()), (200, json!(7)));
        let r = call(&f.sock, "GET", "/api/v1/metrics/blobcache?id=", None);
        assert_eq!((r.status, r.json()["whole_hits"].clone()), (200, json!(2)));
        let r = call(&f.sock, "GET", "/api/v1/metrics/inflight", None);
        assert_eq!((r.status, r.json()), (200, json!([])));
        assert_eq!(
            f.mock.calls(),
            vec![
                Call::Metrics(Some("/snap1".into())),
                Call::Metrics(None),
                Call::Files(Some("a".into()), true),
                Call::Files(None, false),
                Call::Pattern(Some("p".into())),
                Call::Backend(Some("b".into())),
                Call::Blobcache(None),
                Call::Inflight,
            ]
        );
    }

    #[test]
    fn accesslog_query_parses_filters_and_rejects_bad_values() {
        use crate::accesslog::{Filter, Op};
        let f = fixture();
        let q = "/api/v1/accesslog?id=i&pid=7,8&op=read,open&uid=0&process=cat&path=/usr\
                 &since=1.5&until=2&limit=5";
        let r = call(&f.sock, "GET", q, None);
        assert_eq!(r.status, 200, "{}", r.error_message());
        let r = call(&f.sock, "GET", "/api/v1/accesslog", None);
        assert_eq!(r.status, 200);
        let want = Filter {
            since_ns: Some(1_500_000_000),
            until_ns: Some(2_000_000_000),
            pids: vec![7, 8],
            process: Some("cat".into()),
            uid: Some(0),
            path_prefix: Some("/usr".into()),
            ops: vec![Op::Read, Op::Open],
        };
        assert_eq!(
            f.mock.calls(),
            vec![
                Call::Accesslog(Some("i".into()), want, 5),
                Call::Accesslog(None, Filter::default(), 100),
            ]
        );
        for (q, want) in [
            ("pid=x", "query parameter pid=\"x\": expected process ids, comma-separated"),
            ("op=reed", "query parameter op=\"reed\": unknown operation \"reed\""),
            ("since=-1", "query parameter since=\"-1\": expected seconds since the log"),
            ("uid=4294967296", "query parameter uid=\"4294967296\": expected a 32-bit uid"),
            ("limit=10001", "query parameter limit=\"10001\": expected at most 10000"),
        ] {
            let r = call(&f.sock, "GET", &format!("/api/v1/accesslog?{q}"), None);
            assert_eq!(r.status, 400, "{q}");
            assert!(r.error_message().starts_with(want), "{q}: {}", r.error_message());
        }
        assert_eq!(f.mock.calls().len(), 2, "bad queries never reach the daemon");
        let r = call(&f.sock, "POST", "/api/v1/accesslog", Some("{}"));
        assert_eq!(r.status, 405);
    }

    #[test]
    fn metrics_error_status_passes_through() {
        let f = fixture();
        f.mock.fail_all_metrics.store(true, Ordering::SeqCst);
        let r = call(&f.sock, "GET", "/api/v1/metrics/backend", None);
        assert_eq!(r.status, 404);
        assert_eq!(r.error_message(), "no counter");
    }

    #[test]
    fn supervisor_endpoints_default_to_501() {
        let f = fixture();
        for path in
            ["/api/v1/daemon/start", "/api/v1/daemon/fuse/sendfd", "/api/v1/daemon/fuse/takeover"]
        {
            let r = call(&f.sock, "PUT", path, None);
            assert_eq!(r.status, 501, "{path}");
            r.error_message();
            assert_eq!(call(&f.sock, "GET", path, None).status, 405, "{path}");
        }
    }

    #[test]
    fn prometheus_endpoint() {
        let f = fixture();
        let r = call(&f.sock, "GET", "/metrics", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some(PROMETHEUS_TYPE));
        let text = r.text();
        assert!(
            text.contains("# TYPE strata_global_data_read counter\nstrata_global_data_read 4096\n")
        );
        assert!(text.contains("strata_global_block_count_read{bucket=\"2\"} 3\n"));
        assert!(text
            .contains("# TYPE strata_backend_read_count counter\nstrata_backend_read_count 7\n"));
        assert!(text.contains("# TYPE strata_blobcache_entries_count gauge\n"));
        assert!(!text.contains("store_path") && !text.contains("data_all_ready"));
        assert_eq!(
            f.mock.calls(),
            vec![Call::Metrics(None), Call::Backend(None), Call::Blobcache(None)]
        );

        // A failing section is left out; all failing is an error.
        f.mock.fail_blobcache.store(true, Ordering::SeqCst);
        let text = call(&f.sock, "GET", "/metrics", None).text();
        assert!(text.contains("strata_backend_read_count 7") && !text.contains("blobcache"));
        f.mock.fail_all_metrics.store(true, Ordering::SeqCst);
        let r = call(&f.sock, "GET", "/metrics", None);
        assert_eq!(r.status, 404);
        assert_eq!(r.error_message(), "no counter");
    }

    #[test]
    fn prometheus_text_format() {
        let global = json!({
            "id": "/", "data_read": 10, "nr_opens": 1, "ratio": 0.5, "neg": -3,
            "block_count_read": [1, 2, "x"], "measure_latency": true, "empty": [],
            "nested": {"fop-hits": [7]}, "names": ["a"], "nothing": null,
        });
        let backend = json!({"read_errors": 0, "read_cumulative_latency_millis_total": 12});
        let cache = json!({"prefetch_begin_time_secs": 99, "prefetch_cumulative_time_millis": 5});
        let text = prometheus_text(&[
            ("global", &global),
            ("backend", &backend),
            ("block-cache", &cache),
            ("ignored", &json!([1, 2])),
        ]);
        let want = "\
# TYPE strata_global_block_count_read counter
strata_global_block_count_read{bucket=\"0\"} 1
strata_global_block_count_read{bucket=\"1\"} 2
# TYPE strata_global_data_read counter
strata_global_data_read 10
# TYPE strata_global_neg gauge
strata_global_neg -3
# TYPE strata_global_nested_fop_hits counter
strata_global_nested_fop_hits{bucket=\"0\"} 7
# TYPE strata_global_nr_opens gauge
strata_global_nr_opens 1
# TYPE strata_global_ratio gauge
strata_global_ratio 0.5
# TYPE strata_backend_read_cumulative_latency_millis_total counter
strata_backend_read_cumulative_latency_millis_total 12
# TYPE strata_backend_read_errors counter
strata_backend_read_errors 0
# TYPE strata_block_cache_prefetch_begin_time_secs gauge
strata_block_cache_prefetch_begin_time_secs 99
# TYPE strata_block_cache_prefetch_cumulative_time_millis counter
strata_block_cache_prefetch_cumulative_time_millis 5
";
        assert_eq!(text, want);
        // Every sample line is `name[{bucket="n"}] value`, names are legal.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').unwrap();
            let name = name.split('{').next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            value.parse::<f64>().unwrap();
        }
        // Colliding names after sanitising appear once.
        let dup = prometheus_text(&[("g", &json!({"a-b": 1, "a_b": 2}))]);
        assert_eq!(dup.matches("# TYPE").count(), 1, "{dup}");
    }

    // -----------------------------------------------------------------------------------------
    // Hostile and odd input

    #[test]
    fn unknown_path_is_404_json() {
        let f = fixture();
        for target in ["/api/v1/nope", "/api/v1/daemon/", "/", "/api/v2/blobs"] {
            let r = call(&f.sock, "GET", target, None);
            assert_eq!(r.status, 404, "{target}");
            assert!(r.error_message().contains("no API endpoint"));
        }
        assert!(f.mock.calls().is_empty());
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        let f = fixture();
        let cases = [
            ("DELETE", "/api/v1/daemon", "GET, PUT"),
            ("GET", "/api/v1/daemon/exit", "PUT"),
            ("POST", "/api/v1/metrics", "GET"),
            ("GET", "/api/v1/mount?mountpoint=/m", "POST, PUT, DELETE"),
            ("PATCH", "/metrics", "GET"),
        ];
        for (method, target, allow) in cases {
            let r = call(&f.sock, method, target, None);
            assert_eq!(r.status, 405, "{method} {target}");
            assert_eq!(r.header("Allow"), Some(allow));
            assert!(r.error_message().contains("not allowed"));
        }
        // HEAD gets the head only.
        let r = call(&f.sock, "HEAD", "/api/v1/daemon", None);
        assert_eq!(r.status, 405);
        assert!(r.body.is_empty());
        assert!(f.mock.calls().is_empty());
    }

    #[test]
    fn absolute_form_target_and_http10() {
        let f = fixture();
        let r = call(&f.sock, "GET", "http://localhost/api/v1/metrics/files?latest=true", None);
        assert_eq!(r.status, 200);
        let mut c = Client::connect(&f.sock);
        c.send(b"GET /api/v1/daemon/events HTTP/1.0\r\n\r\n");
        let r = c.response(false);
        assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
        assert!(c.closed_by_server());
        assert_eq!(f.mock.calls(), vec![Call::Files(None, true), Call::Events]);
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let f = fixture();
        let cases: [(&[u8], u16); 7] = [
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET /api/v1/daemon\r\n\r\n", 400),
            (b"get /api/v1/daemon HTTP/1.1\r\n\r\n", 400),
            (b"GET /api/v1/daemon HTTP/2.0\r\n\r\n", 505),
            (b"GET api/v1/daemon HTTP/1.1\r\n\r\n", 400),
            (b"GET /api/v1/daemon HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            let mut c = Client::connect(&f.sock);
            c.send(raw);
            let r = c.response(false);
            assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(raw));
            r.error_message();
            assert!(c.closed_by_server());
        }
        let mut c = Client::connect(&f.sock);
        c.send(b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        assert_eq!(c.response(false).status, 400);
        let mut c = Client::connect(&f.sock);
        c.send(b"PUT /api/v1/daemon HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(c.response(false).status, 501);
        assert!(f.mock.calls().is_empty());
    }

    #[test]
    fn oversized_body_is_413_without_reading_it() {
        let f = fixture();
        let mut c = Client::connect(&f.sock);
        let start = Instant::now();
        // Two MiB announced, none sent: the answer must come at once.
        c.send(b"POST /api/v1/mount?mountpoint=/m HTTP/1.1\r\nContent-Length: 2097152\r\n\r\n");
        let r = c.response(false);
        assert_eq!(r.status, 413);
        assert!(r.error_message().contains("larger than 1048576"));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(c.closed_by_server());
        // Absurd lengths too.
        let mut c = Client::connect(&f.sock);
        c.send(b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert_eq!(c.response(false).status, 413);
        assert!(f.mock.calls().is_empty());
    }

    #[test]
    fn chunked_bodies_are_decoded_and_bounded() {
        let f = fixture_with(ApiLimits { max_body: 64, ..ApiLimits::default() });
        let mut c = Client::connect(&f.sock);
        c.send(b"PUT /api/v1/daemon HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        c.send(b"6\r\n{\"log_\r\nf;ext=1\r\nlevel\":\"trace\"}\r\n0\r\nX-Trailer: 1\r\n\r\n");
        assert_eq!(c.response(false).status, 204);
        assert_eq!(f.mock.calls(), vec![Call::LogLevel("trace".into())]);

        let mut c = Client::connect(&f.sock);
        c.send(b"PUT /api/v1/daemon HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n");
        assert_eq!(c.response(false).status, 413);
        let mut c = Client::connect(&f.sock);
        c.send(b"PUT /api/v1/daemon HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert_eq!(c.response(false).status, 400);
        let mut c = Client::connect(&f.sock);
        c.send(b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 65\r\n\r\n");
        assert_eq!(c.response(false).status, 413);
        assert_eq!(f.mock.calls().len(), 1);
    }

    #[test]
    fn oversized_head_is_431() {
        let f = fixture();
        let mut c = Client::connect(&f.sock);
        let mut raw = b"GET /api/v1/daemon HTTP/1.1\r\n".to_vec();
        for i in 0..400 {
            raw.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
        }
        // No blank line: the server must give up on size, not wait for the end.
        c.send(&raw);
        let r = c.response(false);
        assert_eq!(r.status, 431);
        assert!(f.mock.calls().is_empty());
    }

    #[test]
    fn expect_100_continue() {
        let f = fixture();
        let mut c = Client::connect(&f.sock);
        let body = r#"{"log_level":"warn"}"#;
        c.send(
            format!(
                "PUT /api/v1/daemon HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(c.response(false).status, 100);
        c.send(body.as_bytes());
        assert_eq!(c.response(false).status, 204);
        assert_eq!(f.mock.calls(), vec![Call::LogLevel("warn".into())]);
        let mut c = Client::connect(&f.sock);
        c.send(b"GET /api/v1/daemon HTTP/1.1\r\nExpect: magic\r\n\r\n");
        assert_eq!(c.response(false).status, 417);
    }

    #[test]
    fn panic_in_control_is_500_and_server_survives() {
        let f = fixture();
        f.mock.panic_in_info.store(true, Ordering::SeqCst);
        let r = call(&f.sock, "GET", "/api/v1/daemon", None);
        assert_eq!(r.status, 500);
        let msg = r.error_message();
        assert!(msg.contains("panicked") && msg.contains("boom in daemon_info"), "{msg}");
        f.mock.panic_in_info.store(false, Ordering::SeqCst);
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon", None).status, 200);
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon/events", None).status, 200);
    }

    #[test]
    fn keep_alive_and_pipelining() {
        let f = fixture();
        let mut c = Client::connect(&f.sock);
        c.send(&request("GET", "/api/v1/daemon", None, false));
        assert_eq!(c.response(false).status, 200);
        // Three requests in one write, answered in order on the same connection.
        let mut raw = request("PUT", "/api/v1/daemon", Some(r#"{"log_level":"info"}"#), false);
        raw.extend(request("GET", "/api/v1/nope", None, false));
        raw.extend(request("GET", "/api/v1/metrics/inflight", None, false));
        c.send(&raw);
        assert_eq!(c.response(false).status, 204);
        assert_eq!(c.response(false).status, 404);
        assert_eq!(c.response(false).status, 200);
        assert_eq!(f.mock.calls(), vec![Call::Info, Call::LogLevel("info".into()), Call::Inflight]);
    }

    #[test]
    fn idle_connection_is_kept_open() {
        // nydus-snapshotter holds a connection open and takes a hang-up as the daemon's death.
        let f = fixture_with(short_limits());
        let mut c = Client::connect(&f.sock);
        c.stream.set_read_timeout(Some(Duration::from_millis(1200))).unwrap();
        let mut b = [0u8; 1];
        let err = c.stream.read(&mut b).expect_err("idle connection must stay open and silent");
        assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
        c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.send(&request("GET", "/api/v1/daemon/events", None, false));
        assert_eq!(c.response(false).status, 200);
    }

    #[test]
    fn slow_client_gets_408_and_does_not_block_others() {
        let f = fixture_with(short_limits());
        let mut slow_head = Client::connect(&f.sock);
        slow_head.send(b"GET /api/v1/daemon HTTP/1.1\r\nHost: x\r\n");
        let mut slow_body = Client::connect(&f.sock);
        slow_body.send(b"PUT /api/v1/daemon HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"log");
        thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon/events", None).status, 200);
        assert!(start.elapsed() < Duration::from_millis(300), "{:?}", start.elapsed());
        for c in [&mut slow_head, &mut slow_body] {
            let r = c.response(false);
            assert_eq!(r.status, 408);
            assert!(r.error_message().contains("timed out"));
            assert!(c.closed_by_server());
        }
        assert_eq!(f.mock.calls(), vec![Call::Events]);
    }

    #[test]
    fn client_that_never_reads_does_not_block_others() {
        let f = fixture_with(short_limits());
        let mut hog = Client::connect(&f.sock);
        let one = request("GET", "/api/v1/daemon", None, false);
        let count = 8000;
        let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * count).collect();
        // Feed requests from another thread and never read: the server's writes block.
        let mut writer = hog.stream.try_clone().unwrap();
        writer.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let feeder = thread::spawn(move || {
            let _ = writer.write_all(&many);
        });
        thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon/events", None).status, 200);
        assert!(start.elapsed() < Duration::from_millis(300), "{:?}", start.elapsed());
        // Past the write timeout the server has dropped the hog: what it reads ends in EOF
        // well short of all the answers.
        thread::sleep(Duration::from_millis(800));
        hog.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut sink = Vec::new();
        let _ = hog.stream.read_to_end(&mut sink);
        assert!(started.elapsed() < Duration::from_secs(2), "no EOF: {:?}", started.elapsed());
        let answered = sink.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
        assert!(answered > 0 && answered < count, "{answered}");
        feeder.join().unwrap();
    }

    #[test]
    fn slow_daemon_call_holds_only_api_requests() {
        let f = fixture();
        f.mock.events_delay_ms.store(300, Ordering::SeqCst);
        let sock = f.sock.clone();
        let slow = thread::spawn(move || call(&sock, "GET", "/api/v1/daemon/events", None).status);
        thread::sleep(Duration::from_millis(50));
        // Calls are serialised like nydusd's, so this one waits; it must still complete.
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon", None).status, 200);
        assert_eq!(slow.join().unwrap(), 200);
        assert_eq!(f.mock.calls(), vec![Call::Events, Call::Info]);
    }

    #[test]
    fn connection_limit_answers_503() {
        let f = fixture_with(ApiLimits { max_connections: 2, ..ApiLimits::default() });
        let a = Client::connect(&f.sock);
        let _b = Client::connect(&f.sock);
        wait_until("two registered connections", || {
            f.server.as_ref().unwrap().shared.conns.lock().open.len() == 2
        });
        let mut c = Client::connect(&f.sock);
        let r = c.response(false);
        assert_eq!(r.status, 503);
        r.error_message();
        drop(a);
        wait_until("a free slot", || f.server.as_ref().unwrap().shared.conns.lock().open.len() < 2);
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon/events", None).status, 200);
    }

    // -----------------------------------------------------------------------------------------
    // Lifecycle

    #[test]
    fn shutdown_removes_socket_and_restart_works() {
        let mut f = fixture();
        let idle = Client::connect(&f.sock);
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon", None).status, 200);
        let start = Instant::now();
        f.server.take().unwrap().shutdown();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(!f.sock.exists());
        // Idle connections are closed too.
        let mut idle = idle;
        assert!(idle.closed_by_server());

        let server = ApiServer::start(&f.sock, f.mock.clone()).unwrap();
        assert_eq!(server.socket_path(), f.sock.as_path());
        assert_eq!(call(&f.sock, "GET", "/api/v1/daemon/events", None).status, 200);
        drop(server);
        assert!(!f.sock.exists());
    }

    #[test]
    fn start_replaces_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        drop(UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let server = ApiServer::start(&sock, Arc::new(Mock::default())).unwrap();
        assert_eq!(call(&sock, "GET", "/api/v1/daemon", None).status, 200);
        server.shutdown();
    }

    #[test]
    fn start_refuses_a_live_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let live = UnixListener::bind(&sock).unwrap();
        let err = ApiServer::start(&sock, Arc::new(Mock::default())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(sock.exists());
        // The other listener still owns it.
        let _client = UnixStream::connect(&sock).unwrap();
        live.accept().unwrap();
    }

    #[test]
    fn start_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("api.sock");
        std::fs::write(&file, b"precious").unwrap();
        let err = ApiServer::start(&file, Arc::new(Mock::default())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");

        let sub = dir.path().join("subdir");
        std::fs::create_dir(&sub).unwrap();
        assert!(ApiServer::start(&sub, Arc::new(Mock::default())).is_err());
        assert!(sub.is_dir());

        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(ApiServer::start(&link, Arc::new(Mock::default())).is_err());
        assert_eq!(std::fs::read(&link).unwrap(), b"precious");
    }

    #[test]
    fn shutdown_leaves_a_foreign_socket_alone() {
        let mut f = fixture();
        std::fs::remove_file(&f.sock).unwrap();
        let other = UnixListener::bind(&f.sock).unwrap();
        f.server.take().unwrap().shutdown();
        assert!(f.sock.exists());
        drop(other);
    }

    #[test]
    fn server_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ApiServer>();
    }

    // -----------------------------------------------------------------------------------------
    // Pure helpers

    #[test]
    fn target_and_query_parsing() {
        assert_eq!(split_target("/a/b?x=1"), Some(("/a/b", "x=1")));
        assert_eq!(split_target("/a"), Some(("/a", "")));
        assert_eq!(split_target("http://unix/api?x"), Some(("/api", "x")));
        assert_eq!(split_target("http://unix"), Some(("/", "")));
        assert_eq!(split_target("http://unix?id=1"), Some(("/", "id=1")));
        assert_eq!(split_target("/p#frag"), Some(("/p", "")));
        assert_eq!(split_target("*"), None);
        assert_eq!(split_target("api"), None);
        assert_eq!(
            parse_query("mountpoint=%2Fa+b&&flag&x=%zz&y=%4"),
            vec![
                ("mountpoint".into(), "/a b".into()),
                ("flag".into(), String::new()),
                ("x".into(), "%zz".into()),
                ("y".into(), "%4".into()),
            ]
        );
        assert_eq!(form_decode("%E2%9C%93%ff"), "\u{2713}\u{fffd}");
        let req = HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            query: parse_query("id=&id=2&k=v&k=w"),
            body: vec![],
        };
        assert_eq!(req.query("id"), None);
        assert_eq!(req.query("k"), Some("v"));
        assert!(req.required("id").unwrap_err().message.contains("'id'"));
    }

    #[test]
    fn head_end_detection() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0), Some((16, 18)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nbody", 0), Some((15, 16)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn route_without_a_socket() {
        let mock = Mock::default();
        let req = |method: &str, path: &str, query: &str, body: &str| HttpRequest {
            method: method.into(),
            path: path.into(),
            query: parse_query(query),
            body: body.as_bytes().to_vec(),
        };
        let resp = route(&mock, &req("PUT", "/api/v1/daemon/exit", "", ""));
        assert_eq!((resp.status, resp.exit_after), (204, true));
        assert!(mock.calls().is_empty(), "exit waits for the response to be written");
        let resp = route(&mock, &req("DELETE", "/api/v1/mount", "mountpoint=/x", ""));
        assert_eq!(resp.status, 204);
        assert_eq!(mock.calls(), vec![Call::Umount("/x".into())]);
        let bytes = serialize_response(&HttpResponse::no_content(), false);
        assert_eq!(bytes, b"HTTP/1.1 204 No Content\r\nServer: Nydus API\r\n\r\n");
    }
}
