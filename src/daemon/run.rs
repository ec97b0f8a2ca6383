//! stratad's lifecycle: parse nydusd's command line, open the image, mount FUSE, serve with N
//! worker threads and the API, and unmount cleanly on SIGTERM/SIGINT, `PUT /daemon/exit` or an
//! external `umount`. Startup failures are one line on stderr and a non-zero exit.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, FuseSession, Reader};
use nix::sys::signal::{SigSet, Signal};

use super::args::{Cli, Cmd, FuseArgs, GlobalArgs, OverlayCmd};
use super::config::{self, DaemonConfig};
use super::recorded::Recorded;
use super::service::{Daemon, State};
use crate::accesslog::{AccessLogConfig, AccessSink, SinkOptions};
use crate::overlay::layer::RafsLayer;
use crate::overlay::{OverlayFs, OverlayOptions};
use fuse_backend_rs::api::filesystem::FileSystem;

/// Why the daemon stops.
enum Stop {
    Signal(Signal),
    ApiExit,
    Unmounted,
}

/// Run stratad with `args`; returns the process exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("stratad: error: {e:#}");
            1
        }
    }
}

fn resolve(cli: Cli) -> Result<(GlobalArgs, FuseArgs)> {
    match cli.cmd {
        None => Ok((cli.global, cli.fuse)),
        Some(Cmd::Fuse(f)) => {
            let f = *f;
            Ok((f.global, f.fuse))
        }
        Some(Cmd::Overlay(_)) => unreachable!("handled before"),
        Some(Cmd::Singleton(_)) => {
            bail!("the singleton subcommand (shared fscache daemon) is not built; use fuse")
        }
        Some(Cmd::Virtiofs(_)) => bail!("the virtiofs subcommand is not built; use fuse"),
    }
}

fn is_mountpoint(path: &Path) -> Result<bool> {
    let canon = path.canonicalize().with_context(|| format!("mountpoint {}", path.display()))?;
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    // Field 5 is the mount point, with spaces etc. octal-escaped.
    let want = canon.to_string_lossy().replace(' ', "\\040");
    Ok(info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str())))
}

fn run(args: Vec<std::ffi::OsString>) -> Result<()> {
    // Signals are handled by one thread; block them before any other thread exists (mounting
    // an image starts read-ahead threads, which inherit this mask).
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        sigs.add(s);
    }
    sigs.thread_block().context("blocking signals")?;
    let mut cli = Cli::parse_from(args);
    if let Some(Cmd::Overlay(o)) = cli.cmd.take() {
        return run_overlay(*o, sigs);
    }
    let (g, f) = resolve(cli)?;
    setup_logging(&g)?;
    check_global(&g)?;

    if f.shared_dir.is_some() {
        bail!("--shared-dir: passthroughfs is not built; stratad serves RAFS bootstraps");
    }
    if let Some(p) = f.failover_policy {
        log_warn!("--failover-policy {p:?}: failover is not built yet; it has no effect");
    }
    check_threads(f.fuse_threads)?;

    let mountpoint = f.mountpoint.clone().context("--mountpoint is required")?;
    check_mountpoint(&mountpoint)?;
    let config: Option<DaemonConfig> = match (&g.config, &f.localfs_dir) {
        (Some(p), _) => {
            Some(config::from_file(p).with_context(|| format!("--config {}", p.display()))?)
        }
        (None, Some(d)) => Some(DaemonConfig::localfs(d.clone())),
        (None, None) => None,
    };
    let mut config = config;
    if let Some(c) = config.as_mut() {
        for w in &c.warnings {
            log_warn!("config: {w}");
        }
        if let Some(list) = &f.prefetch_files {
            let text = std::fs::read_to_string(list)
                .with_context(|| format!("--prefetch-files {}", list.display()))?;
            let files = crate::prefetch::touches_from_list(&text)
                .with_context(|| format!("--prefetch-files {}", list.display()))?;
            c.prefetch.files = files.into_iter().map(|t| t.path).collect();
        }
        c.prefetch.log = f.prefetch_log.clone();
        if (f.prefetch_files.is_some() || f.prefetch_log.is_some()) && !c.prefetch.enable {
            log_warn!(
                "--prefetch-files/--prefetch-log: prefetch is not enabled in the config \
                 (fs_prefetch.enable / prefetch.enable); nothing is prefetched"
            );
        }
    }

    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let id = g.id.clone().unwrap_or_else(|| format!("stratad-{}", std::process::id()));
    let daemon = Arc::new(Daemon::new(id, g.supervisor.clone(), config.clone(), exit_tx));
    let on_exit = {
        let tx = stop_tx.clone();
        move || {
            let _ = tx.send(Stop::Unmounted);
        }
    };
    let mut writable_cache = None;
    let serving = if f.writable {
        let c = config.clone().context("--writable needs --config with an overlay section")?;
        let ov = c.overlay.clone().context(
            "--writable: the config has no overlay section (overlay.upper_dir, overlay.work_dir)",
        )?;
        let b = f.bootstrap.as_ref().context("--writable needs --bootstrap")?;
        let (inst, rafs) = super::service::Instance::open("/", b, c, daemon.events_ref().clone())?;
        writable_cache = inst.cache.clone();
        let layer =
            RafsLayer::new(rafs.image().clone(), rafs.chunk_reader(), b.display().to_string());
        let fs = OverlayFs::new(OverlayOptions {
            upper: ov.upper_dir,
            work: ov.work_dir,
            lowers: vec![Arc::new(layer)],
            sync_copyup: true,
            timeout: crate::overlay::DEFAULT_TIMEOUT,
        })?;
        let accesslog = config.as_ref().map(|c| c.accesslog.clone()).unwrap_or_default();
        let recorders =
            config.as_ref().map_or_else(Default::default, |c| super::metrics::Recorders {
                files: c.rafs.iostats_files,
                pattern: c.rafs.access_pattern,
                latest: c.rafs.latest_read_files,
            });
        Serving::mount(
            &mountpoint,
            recorded_overlay(fs, &accesslog, recorders, &daemon)?,
            f.fuse_threads,
            Kind::Writable("strata"),
            on_exit,
        )?
    } else {
        if let Some(b) = &f.bootstrap {
            let c = config.clone().context("--bootstrap needs --config or --localfs-dir")?;
            daemon.mount_instance(&f.virtual_mountpoint, b, c)?;
        }
        Serving::mount(&mountpoint, daemon.vfs(), f.fuse_threads, Kind::ReadOnly, on_exit)?
    };
    let stopped = serve(
        serving,
        &daemon,
        &mountpoint,
        g.apisock.as_deref(),
        f.fuse_threads,
        sigs,
        stop_tx,
        stop_rx,
        exit_rx,
    );
    if let Some(c) = writable_cache {
        if let Err(e) = c.flush() {
            log_warn!("flushing the chunk cache: {e}");
        }
    }
    stopped
}

fn setup_logging(g: &GlobalArgs) -> Result<()> {
    let level = super::log::Level::parse(&g.log_level).with_context(|| {
        format!("--log-level {:?}: expected trace, debug, info, warn or error", g.log_level)
    })?;
    super::log::set_level(level);
    if let Some(p) = &g.log_file {
        super::log::set_file(p).with_context(|| format!("--log-file {}", p.display()))?;
    }
    Ok(())
}

fn check_threads(n: usize) -> Result<()> {
    if n == 0 || n > 1024 {
        bail!("--fuse-threads {n}: expected 1..=1024");
    }
    Ok(())
}

/// Flags whose feature changes what is served fail; operational ones are accepted with a
/// warning that says they have no effect yet. None is ignored silently.
fn check_global(g: &GlobalArgs) -> Result<()> {
    if g.upgrade {
        bail!("--upgrade: hot upgrade/takeover is not built yet");
    }
    if let Some(s) = &g.supervisor {
        log_warn!(
            "--supervisor {}: failover is not built yet; sendfd/takeover are refused",
            s.display()
        );
    }
    if g.log_rotation_size > 0 {
        log_warn!("--log-rotation-size {}: log rotation is not built yet", g.log_rotation_size);
    }
    if g.rlimit_nofile > 0 {
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
        let want = g.rlimit_nofile.min(hard);
        if let Err(e) =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, want)
        {
            log_warn!("--rlimit-nofile {}: {e}; keeping the current limit", g.rlimit_nofile);
        } else if want < g.rlimit_nofile {
            log_warn!("--rlimit-nofile {}: the hard limit is {hard}; using it", g.rlimit_nofile);
        }
    }
    Ok(())
}

fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    if is_mountpoint(mountpoint)? {
        bail!("mountpoint {} is busy: something is already mounted there", mountpoint.display());
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist: load the fuse module (modprobe fuse)");
    }
    Ok(())
}

/// Serve until a signal, `PUT /daemon/exit` or an external umount; then unmount cleanly.
#[allow(clippy::too_many_arguments)]
fn serve(
    serving: Serving,
    daemon: &Arc<Daemon>,
    mountpoint: &Path,
    apisock: Option<&Path>,
    threads: usize,
    sigs: SigSet,
    stop_tx: mpsc::Sender<Stop>,
    stop_rx: mpsc::Receiver<Stop>,
    exit_rx: mpsc::Receiver<()>,
) -> Result<()> {
    daemon.set_state(State::Ready);
    log_info!("mounted at {}", mountpoint.display());

    let api = match apisock {
        Some(sock) => match super::api::ApiServer::start(sock, daemon.clone()) {
            Ok(a) => Some(a),
            Err(e) => {
                serving.stop();
                bail!("--apisock {}: {e}", sock.display());
            }
        },
        None => None,
    };

    {
        let tx = stop_tx.clone();
        std::thread::Builder::new().name("strata-signal".into()).spawn(move || {
            if let Ok(sig) = sigs.wait() {
                let _ = tx.send(Stop::Signal(sig));
            }
        })?;
        let tx = stop_tx.clone();
        std::thread::Builder::new().name("strata-exit".into()).spawn(move || {
            if exit_rx.recv().is_ok() {
                let _ = tx.send(Stop::ApiExit);
            }
        })?;
    }
    daemon.set_state(State::Running);
    log_info!("running with {threads} FUSE threads");

    let why = stop_rx.recv().unwrap_or(Stop::Unmounted);
    match &why {
        Stop::Signal(s) => log_info!("{s:?}: unmounting"),
        Stop::ApiExit => log_info!("exit requested through the API: unmounting"),
        Stop::Unmounted => log_info!("the mount went away: exiting"),
    }
    daemon.set_state(State::Stopping);
    serving.stop();
    daemon.flush_all();
    if let Some(a) = api {
        a.shutdown();
    }
    log_info!("stopped");
    Ok(())
}

/// Serve a writable overlay of plain directories and RAFS bootstraps (`stratad overlay`).
/// The overlay, its requests recorded in an access log when `cfg` enables one (paths come
/// from the overlay's node table). The daemon's API answers `/api/v1/accesslog` from it.
fn recorded_overlay(
    fs: OverlayFs,
    cfg: &AccessLogConfig,
    recorders: super::metrics::Recorders,
    daemon: &Daemon,
) -> Result<Arc<Recorded<Arc<OverlayFs>>>> {
    let fs = Arc::new(fs);
    let sink = if cfg.enabled() {
        let weak = Arc::downgrade(&fs);
        let paths = move |_layer: u32, id: u64| weak.upgrade()?.path_of(id);
        let opts = SinkOptions::new(cfg.clone()).paths(Arc::new(paths));
        Arc::new(AccessSink::start(opts).context("access log")?)
    } else {
        Arc::new(AccessSink::off())
    };
    let metrics = Arc::new(super::metrics::FsMetrics::new("/", recorders));
    daemon.set_overlay(sink.clone(), metrics.clone());
    Ok(Arc::new(Recorded::new(fs, sink, metrics)))
}

fn run_overlay(o: OverlayCmd, sigs: SigSet) -> Result<()> {
    setup_logging(&o.global)?;
    check_global(&o.global)?;
    check_threads(o.fuse_threads)?;
    let (mut lowerdir, mut upperdir, mut workdir, mut volatile) =
        (o.lowerdir.clone(), o.upperdir.clone(), o.workdir.clone(), o.volatile);
    for opt in o.options.iter().flat_map(|s| s.split(',')) {
        match opt.split_once('=') {
            Some(("lowerdir", v)) => lowerdir = Some(v.to_string()),
            Some(("upperdir", v)) => upperdir = Some(v.into()),
            Some(("workdir", v)) => workdir = Some(v.into()),
            None if opt == "volatile" => volatile = true,
            _ => log_warn!("-o {opt}: not an overlay option; ignored"),
        }
    }
    let lowerdir = lowerdir.context("--lowerdir is required")?;
    let upper = upperdir.context("--upperdir is required")?;
    let work = workdir.context("--workdir is required")?;
    let mountpoint = o.mountpoint.clone().context("--mountpoint is required")?;
    check_mountpoint(&mountpoint)?;
    let mut lowers: Vec<Arc<dyn crate::overlay::layer::Layer>> = Vec::new();
    let mut caches = Vec::new();
    let events = Arc::new(super::metrics::Events::default());
    for l in lowerdir.split(':').filter(|l| !l.is_empty()) {
        let p = Path::new(l);
        let meta = std::fs::metadata(p).with_context(|| format!("lowerdir {l}"))?;
        if meta.is_dir() {
            lowers.push(Arc::new(
                crate::overlay::layer::DirLayer::new(p).with_context(|| format!("lowerdir {l}"))?,
            ));
        } else {
            let blobs = o.localfs_dir.clone().with_context(|| {
                format!("lowerdir {l} is a file (a RAFS bootstrap?): give its blob dir with -D")
            })?;
            let (inst, rafs) =
                super::service::Instance::open(l, p, DaemonConfig::localfs(blobs), events.clone())
                    .with_context(|| format!("lowerdir {l}"))?;
            caches.extend(inst.cache.clone());
            lowers.push(Arc::new(RafsLayer::new(
                rafs.image().clone(),
                rafs.chunk_reader(),
                l.into(),
            )));
        }
    }
    let fs = OverlayFs::new(OverlayOptions {
        upper,
        work,
        lowers,
        sync_copyup: !volatile,
        timeout: crate::overlay::DEFAULT_TIMEOUT,
    })?;
    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let id = o.global.id.clone().unwrap_or_else(|| format!("stratad-{}", std::process::id()));
    let daemon = Arc::new(Daemon::new(id, None, None, exit_tx));
    let on_exit = {
        let tx = stop_tx.clone();
        move || {
            let _ = tx.send(Stop::Unmounted);
        }
    };
    let accesslog = match &o.accesslog {
        Some(path) => AccessLogConfig {
            path: path.clone(),
            mode: o.accesslog_mode,
            ..AccessLogConfig::default()
        },
        None => AccessLogConfig::default(),
    };
    let serving = Serving::mount(
        &mountpoint,
        recorded_overlay(fs, &accesslog, Default::default(), &daemon)?,
        o.fuse_threads,
        Kind::Writable(&o.fsname),
        on_exit,
    )?;
    let r = serve(
        serving,
        &daemon,
        &mountpoint,
        o.global.apisock.as_deref(),
        o.fuse_threads,
        sigs,
        stop_tx,
        stop_rx,
        exit_rx,
    );
    for c in caches {
        if let Err(e) = c.flush() {
            log_warn!("flushing the chunk cache: {e}");
        }
    }
    r
}

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
    stopping: Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    mountpoint: std::path::PathBuf,
}

impl Serving {
    /// Mount `fs` at `mountpoint` and serve it with `threads` workers. `on_exit` runs when a
    /// worker stops because the mount went away (an external `umount`).
    pub fn mount<F: FileSystem + Send + Sync + 'static>(
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
        let server = Arc::new(Server::new(fs));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
        // Each worker reads requests with a blocking read on its own clone of the FUSE device.
        // The kernel wakes one blocked reader per request (an exclusive wait), where the
        // crate's epoll channels woke every worker for each request and all but one read
        // EAGAIN: 3 wasted wakeups and 6 syscalls per request with 4 workers, measured.
        for i in 0..threads {
            let dev = match serving.session.clone_fuse_file() {
                Ok(f) => f,
                Err(e) => {
                    serving.stop();
                    bail!("FUSE channel: {e}");
                }
            };
            let server = server.clone();
            let on_exit = on_exit.clone();
            let stopping = stopping.clone();
            let bufsize = serving.session.bufsize();
            let w =
                std::thread::Builder::new().name(format!("fuse_server_{i}")).spawn(move || {
                    serve_device(&dev, bufsize, &server, &stopping);
                    on_exit();
                })?;
            serving.workers.push(w);
        }
        Ok(serving)
    }

    /// Stop the workers and unmount.
    pub fn stop(mut self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
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

/// Serve requests read from `dev` (blocking) until the connection ends.
fn serve_device<F: FileSystem + Send + Sync>(
    dev: &std::fs::File,
    bufsize: usize,
    server: &Server<Arc<F>>,
    stopping: &std::sync::atomic::AtomicBool,
) {
    use std::os::fd::AsRawFd;
    let fd = dev.as_raw_fd();
    let mut req = vec![0u8; bufsize];
    let mut reply = vec![0u8; bufsize];
    loop {
        let n = match nix::unistd::read(fd, &mut req) {
            Ok(n) => n,
            // Interrupted to stop.
            Err(nix::errno::Errno::EINTR) if stopping.load(std::sync::atomic::Ordering::SeqCst) => {
                return
            }
            // Interrupted otherwise, or a request the kernel withdrew: read again.
            Err(
                nix::errno::Errno::EINTR | nix::errno::Errno::ENOENT | nix::errno::Errno::EAGAIN,
            ) => continue,
            // Unmounted or aborted.
            Err(nix::errno::Errno::ENODEV) => return,
            Err(e) => {
                if !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    log_warn!("FUSE channel: reading a request: {e}");
                }
                return;
            }
        };
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
