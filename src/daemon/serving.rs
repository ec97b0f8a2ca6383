//! Serving a mounted FUSE session: the mount (options per [`Kind`]), the worker threads that
//! read requests from the FUSE device and answer them, and a clean stop (unmount, then abort or
//! interrupt the workers a busy mount keeps blocked).
//!
//! Each worker reads with a blocking read on its own clone of the device. The kernel wakes one
//! blocked reader per request (an exclusive wait), where fuse-backend-rs's epoll channels woke
//! every worker for each request and all but one read EAGAIN: 3 wasted wakeups and 6 syscalls
//! per request with 4 workers, measured. Which workers read at all is the [`Relay`]'s business.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Result};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, FuseSession, Reader};

use super::passthrough::{self, Passthrough};
use super::splice::{SplicedRead, Splicer};

/// How to mount.
pub enum Kind<'a> {
    /// Read-only images (nosuid, nodev, noatime; source `strata`, type `fuse.rafs`).
    ReadOnly,
    /// A writable overlay: a root filesystem (suid, dev, relatime); type `fuse`, source `fsname`.
    Writable(&'a str),
}

/// A mounted FUSE session and its worker threads.
pub struct Serving {
    session: FuseSession,
    /// The FUSE connection number (the mount's device minor), to abort it if need be.
    conn: Option<u32>,
    stopping: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    mountpoint: std::path::PathBuf,
}

impl Serving {
    /// Mount `fs` at `mountpoint` and serve it with `threads` workers. `on_exit` runs when a
    /// worker stops because the mount went away (an external `umount`).
    pub fn mount<F: FileSystem + SplicedRead + Passthrough + Send + Sync + 'static>(
        mountpoint: &Path,
        fs: Arc<F>,
        threads: usize,
        kind: Kind<'_>,
        on_exit: impl Fn() + Send + Sync + Clone + 'static,
    ) -> Result<Self> {
        let (fsname, subtype, ro) = match kind {
            Kind::ReadOnly => ("strata", "rafs", true),
            Kind::Writable(name) => (name, "", false),
        };
        let canonical = mountpoint.canonicalize().ok();
        let mut session = FuseSession::new(mountpoint, fsname, subtype, ro)
            .map_err(|e| anyhow::anyhow!("FUSE session on {}: {e}", mountpoint.display()))?;
        session
            .mount()
            .map_err(|e| anyhow::anyhow!("mounting FUSE at {}: {e}", mountpoint.display()))?;
        if !ro && std::env::var_os("STRATA_NO_REMOUNT").is_none() {
            // The session mounts nosuid,nodev,noatime; a root filesystem needs suid binaries
            // and device nodes, and atime semantics like any disk filesystem (relatime).
            let r = nix::mount::mount(
                None::<&str>,
                mountpoint,
                None::<&str>,
                nix::mount::MsFlags::MS_REMOUNT
                    | nix::mount::MsFlags::MS_BIND
                    | nix::mount::MsFlags::MS_RELATIME,
                None::<&str>,
            );
            if let Err(e) = r {
                log_warn!("remounting {} with suid,dev: {e}", mountpoint.display());
            }
        }
        let server = Arc::new(Server::new(fs.clone()));
        let stopping = Arc::new(AtomicBool::new(false));
        // Lets `stop` interrupt a worker blocked in its read.
        if let Err(e) = crate::sys::interrupt_on(libc::SIGUSR1) {
            log_warn!("SIGUSR1 handler: {e}");
        }
        // Not a stat of the mountpoint: that would wait for the INIT no worker serves yet.
        let conn = canonical.as_deref().and_then(fuse_connection);
        let mut serving = Serving {
            session,
            conn,
            stopping: stopping.clone(),
            workers: Vec::new(),
            mountpoint: mountpoint.to_path_buf(),
        };
        let relay = Arc::new(Relay::default());
        for i in 0..threads {
            let dev = match serving.session.clone_fuse_file() {
                Ok(f) => f,
                Err(e) => {
                    serving.stop();
                    bail!("FUSE channel: {e}");
                }
            };
            let server = server.clone();
            let fs = fs.clone();
            let on_exit = on_exit.clone();
            let stopping = stopping.clone();
            let relay = relay.clone();
            let bufsize = serving.session.bufsize();
            let w =
                std::thread::Builder::new().name(format!("fuse_server_{i}")).spawn(move || {
                    serve_device(&dev, bufsize, &server, &*fs, &stopping, &relay);
                    on_exit();
                })?;
            serving.workers.push(w);
        }
        Ok(serving)
    }

    /// Stop the workers and unmount.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.session.umount() {
            log_warn!("unmounting {}: {e}", self.mountpoint.display());
        }
        // The unmount ends the workers' reads (ENODEV). If it could not (the mount is busy,
        // or was detached lazily while files stay open), abort the connection when fusectl is
        // mounted, else interrupt each worker's read with a signal; a worker whose read fails
        // with EINTR while stopping returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        let mut aborted = false;
        while self.workers.iter().any(|w| !w.is_finished()) {
            if std::time::Instant::now() >= deadline && !aborted {
                aborted = true;
                let abort = self.conn.map(|c| format!("/sys/fs/fuse/connections/{c}/abort"));
                let done = abort.is_some_and(|a| std::fs::write(a, b"1").is_ok());
                if !done {
                    for w in self.workers.iter().filter(|w| !w.is_finished()) {
                        use std::os::unix::thread::JoinHandleExt;
                        let _ = nix::sys::pthread::pthread_kill(
                            w.as_pthread_t(),
                            nix::sys::signal::Signal::SIGUSR1,
                        );
                    }
                }
            }
            if std::time::Instant::now() >= deadline + std::time::Duration::from_secs(2) {
                log_warn!(
                    "FUSE workers of {} did not stop; leaving them",
                    self.mountpoint.display()
                );
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The FUSE connection number (device minor) of the topmost mount at `mountpoint`, from
/// /proc/self/mountinfo.
fn fuse_connection(mountpoint: &Path) -> Option<u32> {
    let want = mountpoint.to_str()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(want))
        .find_map(|l| l.split(' ').nth(2)?.split_once(':')?.1.parse().ok())
}

/// Decides which worker reads the FUSE device. The kernel hands a request to the reader that
/// has waited longest, so with every worker reading, a run of one-at-a-time requests (one
/// process walking a tree) visits each worker in turn, and each wakes cold, often on another
/// CPU: with 4 workers, twice the context switches and 40 times the CPU migrations of one
/// worker, and 26 % fewer entries/s (perf stat, stat_warm); two readers in turn still cost a
/// third more context switches than one. So one worker reads and the others park. The reader
/// answers a [`brief`] request itself and reads on, also when more are queued (waking a worker
/// whenever the queue held another request made every walk's asynchronous RELEASEDIR a
/// handoff: 1.8 futex calls per request). Before a request that is not brief (an fsync, a
/// lock wait), or when a brief one turns slow ([`crate::slow::ahead`]: a copy-up, a chunk
/// fetch from a registry), it wakes a parked worker to read in its place, so the device is
/// never left unread for long while a worker is free.
#[derive(Default)]
struct Relay {
    state: Mutex<RelayState>,
    wake: Condvar,
}

#[derive(Default)]
struct RelayState {
    /// Workers in (or on their way into) the device's read.
    reading: usize,
    /// Parked workers, and the wakeups handed to them and not yet taken.
    parked: usize,
    wakeups: usize,
    /// The connection ended (or a worker failed to read): nobody reads again.
    closed: bool,
}

impl Relay {
    fn lock(&self) -> std::sync::MutexGuard<'_, RelayState> {
        // The state is a handful of counters, consistent after every critical section.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free worker asks to read: it parks while another reads. False once the connection is
    /// closed.
    fn enter(&self) -> bool {
        let mut s = self.lock();
        if !s.closed && s.reading > 0 {
            s.parked += 1;
            while s.wakeups == 0 && !s.closed {
                s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.wakeups > 0 {
                s.wakeups -= 1;
            } else {
                s.parked -= 1;
            }
        }
        if s.closed {
            return false;
        }
        s.reading += 1;
        true
    }

    /// A reader took a request: unless it is `brief`, a parked worker reads in its place.
    fn took(&self, brief: bool) {
        let mut s = self.lock();
        s.reading -= 1;
        if !brief {
            self.relieve(&mut s);
        }
    }

    /// A worker is about to block for long: if nobody reads (or is woken to), a parked worker
    /// reads.
    fn hand_on(&self) {
        self.relieve(&mut self.lock());
    }

    fn relieve(&self, s: &mut RelayState) {
        if s.reading + s.wakeups == 0 && s.parked > 0 {
            s.parked -= 1;
            s.wakeups += 1;
            self.wake.notify_one();
        }
    }

    /// A reader stops for good: every parked worker returns.
    fn close(&self) {
        let mut s = self.lock();
        s.reading -= 1;
        s.closed = true;
        self.wake.notify_all();
    }
}

/// Whether the request in `req` is bounded local work: memory, or a few syscalls on local
/// files of at most one request's size (lookups, listings, attributes, creates, renames,
/// reads, writes). Not brief: what waits for the disk to make data durable (FSYNC, FSYNCDIR, a
/// write to an O_SYNC/O_DSYNC file), for other processes (SETLK, SETLKW, POLL, IOCTL), or copies
/// a whole range (FALLOCATE, COPY_FILE_RANGE). Brief requests that turn slow say so on the way
/// ([`crate::slow::ahead`]): a copy-up, a chunk fetch from the backend.
fn brief(req: &[u8]) -> bool {
    use fuse_backend_rs::abi::fuse_abi::Opcode as Op;
    let word = |at: usize| req.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().unwrap()));
    // fuse_in_header: len, opcode, unique (8), nodeid (8), uid, gid, pid, padding: 40 bytes.
    let Some(op) = word(4) else { return false };
    const SLOW: [Op; 8] = [
        Op::Fsync,
        Op::Fsyncdir,
        Op::Fallocate,
        Op::CopyFileRange,
        Op::Setlk,
        Op::Setlkw,
        Op::Ioctl,
        Op::Poll,
    ];
    if op >= Op::MaxOpcode as u32 || SLOW.iter().any(|&q| q as u32 == op) {
        return false;
    }
    // fuse_write_in: fh (8), offset (8), size, write_flags, lock_owner (8), flags (the file's
    // open flags), padding.
    op != Op::Write as u32 || word(72).is_some_and(|f| f as i32 & libc::O_DSYNC == 0)
}

/// Serve requests read from `dev` (blocking) until the connection ends, reading only when the
/// `relay` lets this worker.
fn serve_device<F: FileSystem + SplicedRead + Passthrough + Send + Sync>(
    dev: &std::fs::File,
    bufsize: usize,
    server: &Server<Arc<F>>,
    fs: &F,
    stopping: &AtomicBool,
    relay: &Arc<Relay>,
) {
    use std::os::fd::{AsFd, AsRawFd};
    let r = relay.clone();
    crate::slow::listen(move || r.hand_on());
    let fd = dev.as_raw_fd();
    let mut req = vec![0u8; bufsize];
    let mut reply = vec![0u8; bufsize];
    // READs of plain files are answered by splicing (see [`super::splice`]).
    let mut splicer = if fs.splices() {
        Splicer::new(bufsize)
            .map_err(|e| log_warn!("FUSE channel: no spliced reads (pipes: {e})"))
            .ok()
    } else {
        None
    };
    while relay.enter() {
        let n = loop {
            match nix::unistd::read(fd, &mut req) {
                Ok(n) => break n,
                // Interrupted to stop.
                Err(nix::errno::Errno::EINTR) if stopping.load(Ordering::SeqCst) => {
                    return relay.close()
                }
                // Interrupted otherwise, or a request the kernel withdrew: read again.
                Err(
                    nix::errno::Errno::EINTR
                    | nix::errno::Errno::ENOENT
                    | nix::errno::Errno::EAGAIN,
                ) => continue,
                // Unmounted or aborted.
                Err(nix::errno::Errno::ENODEV) => return relay.close(),
                Err(e) => {
                    if !stopping.load(Ordering::SeqCst) {
                        log_warn!("FUSE channel: reading a request: {e}");
                    }
                    return relay.close();
                }
            }
        };
        relay.took(brief(&req[..n]));
        if fs.wants_passthrough()
            && passthrough::offers_passthrough(&req[..n])
            && passthrough::answer_init(server, fs, dev.as_fd(), &mut req[..n], &mut reply)
        {
            continue;
        }
        if splicer.as_mut().is_some_and(|s| s.answer(fs, dev.as_fd(), &req[..n])) {
            continue;
        }
        let reader = match Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut req[..n])) {
            Ok(r) => r,
            Err(e) => {
                log_warn!("FUSE channel: {e}");
                continue;
            }
        };
        let writer = match FuseDevWriter::new(fd, &mut reply) {
            Ok(w) => w,
            Err(e) => {
                log_warn!("FUSE channel: {e}");
                continue;
            }
        };
        if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
            super::log::log(super::log::Level::Debug, format_args!("request failed: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until `f` holds (the relay's waiters run on other threads).
    fn until(what: &str, f: impl Fn() -> bool) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn one_reader_answers_brief_requests_and_hands_on_before_others() {
        let relay = Arc::new(Relay::default());
        assert!(relay.enter());
        let parked: Vec<_> = (0..2)
            .map(|_| {
                let r = relay.clone();
                std::thread::spawn(move || r.enter())
            })
            .collect();
        until("two parked workers", || relay.lock().parked == 2);
        // A brief request: the reader answers it and reads on; nobody is woken.
        relay.took(true);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let s = relay.lock();
        assert_eq!((s.reading, s.parked), (0, 2));
        drop(s);
        // It turns slow: one parked worker reads instead, however often it says so.
        relay.hand_on();
        relay.hand_on();
        until("one woken worker reading", || relay.lock().reading == 1);
        assert_eq!(relay.lock().parked, 1);
        assert_eq!(parked.iter().filter(|h| h.is_finished()).count(), 1);
        // The old reader, done, parks behind it.
        let r = relay.clone();
        let back = std::thread::spawn(move || r.enter());
        until("the old reader parked", || relay.lock().parked == 2);
        // A request that is not brief: the last parked-before worker reads in its place.
        relay.took(false);
        until("a second woken worker reading", || relay.lock().reading == 1);
        assert_eq!(relay.lock().parked, 1);
        // The connection ends: the parked workers return without reading.
        relay.close();
        let mut got: Vec<bool> = parked.into_iter().map(|h| h.join().unwrap()).collect();
        got.push(back.join().unwrap());
        assert_eq!(got.iter().filter(|&&b| b).count(), 2, "two were woken, one returns: {got:?}");
        assert!(!relay.enter(), "a closed relay lets nobody read");
    }

    /// A request of `opcode` with `flags` at byte `at` (where fuse_write_in keeps them).
    fn request(opcode: u32, at: usize, flags: i32) -> Vec<u8> {
        let mut r = vec![0u8; 80];
        r[4..8].copy_from_slice(&opcode.to_ne_bytes());
        r[at..at + 4].copy_from_slice(&flags.to_ne_bytes());
        r
    }

    #[test]
    fn brief_requests_are_bounded_local_work() {
        use fuse_backend_rs::abi::fuse_abi::Opcode as Op;
        for op in [Op::Lookup, Op::Readdirplus, Op::Read, Op::Open, Op::Create, Op::Rename2] {
            assert!(brief(&request(op as u32, 40, libc::O_RDWR)), "{op:?}");
        }
        assert!(brief(&request(Op::Write as u32, 72, libc::O_WRONLY | libc::O_APPEND)));
        for flags in [libc::O_SYNC, libc::O_DSYNC] {
            assert!(!brief(&request(Op::Write as u32, 72, flags)), "write {flags:#o}");
        }
        for op in [Op::Fsync, Op::Fsyncdir, Op::Fallocate, Op::CopyFileRange, Op::Setlkw] {
            assert!(!brief(&request(op as u32, 40, 0)), "{op:?}");
        }
        assert!(!brief(&request(Op::MaxOpcode as u32 + 7, 40, 0)), "an unknown opcode");
        // Too short to hold a header: not brief (the server will reject it).
        assert!(!brief(&[0u8; 6]));
    }
}
