//! stratad's lifecycle: parse nydusd's command line, open the image, mount FUSE, serve with N
//! worker threads and the API, and unmount cleanly on SIGTERM/SIGINT, `PUT /daemon/exit` or an
//! external `umount`. Startup failures are one line on stderr and a non-zero exit.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use fuse_backend_rs::transport::FuseSession;
use nix::sys::signal::{SigSet, Signal};

use super::args::{Cli, Cmd, FuseArgs, GlobalArgs};
use super::config::{self, DaemonConfig};
use super::service::{Daemon, State};

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
    let cli = Cli::parse_from(args);
    let (g, f) = resolve(cli)?;
    let level = super::log::Level::parse(&g.log_level).with_context(|| {
        format!("--log-level {:?}: expected trace, debug, info, warn or error", g.log_level)
    })?;
    super::log::set_level(level);
    if let Some(p) = &g.log_file {
        super::log::set_file(p).with_context(|| format!("--log-file {}", p.display()))?;
    }
    // Flags whose feature changes what is served fail; operational ones are accepted with a
    // warning that says they have no effect yet. None is ignored silently.
    if g.upgrade {
        bail!("--upgrade: hot upgrade/takeover is not built yet");
    }
    if f.writable {
        bail!("--writable: the writable overlay is not built yet");
    }
    if f.shared_dir.is_some() {
        bail!("--shared-dir: passthroughfs is not built; stratad serves RAFS bootstraps");
    }
    if f.prefetch_files.is_some() {
        bail!("--prefetch-files: prefetch is not built yet");
    }
    if let Some(s) = &g.supervisor {
        log_warn!(
            "--supervisor {}: failover is not built yet; sendfd/takeover are refused",
            s.display()
        );
    }
    if let Some(p) = f.failover_policy {
        log_warn!("--failover-policy {p:?}: failover is not built yet; it has no effect");
    }
    if g.log_rotation_size > 0 {
        log_warn!("--log-rotation-size {}: log rotation is not built yet", g.log_rotation_size);
    }
    if f.fuse_threads == 0 || f.fuse_threads > 1024 {
        bail!("--fuse-threads {}: expected 1..=1024", f.fuse_threads);
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

    let mountpoint = f.mountpoint.clone().context("--mountpoint is required")?;
    let meta = std::fs::metadata(&mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    if is_mountpoint(&mountpoint)? {
        bail!("mountpoint {} is busy: something is already mounted there", mountpoint.display());
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse does not exist: load the fuse module (modprobe fuse)");
    }
    let config: Option<DaemonConfig> = match (&g.config, &f.localfs_dir) {
        (Some(p), _) => {
            Some(config::from_file(p).with_context(|| format!("--config {}", p.display()))?)
        }
        (None, Some(d)) => Some(DaemonConfig::localfs(d.clone())),
        (None, None) => None,
    };
    if let Some(c) = &config {
        for w in &c.warnings {
            log_warn!("config: {w}");
        }
    }

    let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let id = g.id.clone().unwrap_or_else(|| format!("stratad-{}", std::process::id()));
    let daemon = Arc::new(Daemon::new(id, g.supervisor.clone(), config.clone(), exit_tx));
    if let Some(b) = &f.bootstrap {
        let c = config.clone().context("--bootstrap needs --config or --localfs-dir")?;
        daemon.mount_instance(&f.virtual_mountpoint, b, c)?;
    }

    let serving = Serving::mount(&mountpoint, daemon.vfs(), f.fuse_threads, {
        let tx = stop_tx.clone();
        move || {
            let _ = tx.send(Stop::Unmounted);
        }
    })?;
    daemon.set_state(State::Ready);
    log_info!("mounted at {}", mountpoint.display());

    let api = match &g.apisock {
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
    log_info!("running with {} FUSE threads", f.fuse_threads);

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

/// A mounted FUSE session and its worker threads.
pub struct Serving {
    session: FuseSession,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    mountpoint: std::path::PathBuf,
}

impl Serving {
    /// Mount `vfs` read-only at `mountpoint` and serve it with `threads` workers. `on_exit` runs
    /// when a worker stops because the mount went away (an external `umount`).
    pub fn mount(
        mountpoint: &Path,
        vfs: Arc<Vfs>,
        threads: usize,
        on_exit: impl Fn() + Send + Sync + Clone + 'static,
    ) -> Result<Self> {
        let mut session = FuseSession::new(mountpoint, "strata", "rafs", true)
            .map_err(|e| anyhow::anyhow!("FUSE session on {}: {e}", mountpoint.display()))?;
        session
            .mount()
            .map_err(|e| anyhow::anyhow!("mounting FUSE at {}: {e}", mountpoint.display()))?;
        let server = Arc::new(Server::new(vfs));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut serving = Serving {
            session,
            stopping: stopping.clone(),
            workers: Vec::new(),
            mountpoint: mountpoint.to_path_buf(),
        };
        for i in 0..threads {
            let mut channel = match serving.session.new_channel() {
                Ok(c) => c,
                Err(e) => {
                    serving.stop();
                    bail!("FUSE channel: {e}");
                }
            };
            let server = server.clone();
            let on_exit = on_exit.clone();
            let stopping = stopping.clone();
            let w =
                std::thread::Builder::new().name(format!("fuse_server_{i}")).spawn(move || {
                    loop {
                        match channel.get_request() {
                            Ok(Some((reader, writer))) => {
                                if let Err(e) =
                                    server.handle_message(reader, writer.into(), None, None)
                                {
                                    super::log::log(
                                        super::log::Level::Debug,
                                        format_args!("request failed: {e}"),
                                    );
                                }
                            }
                            // Woken for shutdown, or the kernel side is gone (unmounted).
                            Ok(None) => break,
                            Err(e) => {
                                // Errors while we unmount are the unmount itself.
                                if !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                                    log_warn!("FUSE channel: {e}");
                                }
                                break;
                            }
                        }
                    }
                    on_exit();
                })?;
            serving.workers.push(w);
        }
        Ok(serving)
    }

    /// Stop the workers and unmount.
    pub fn stop(mut self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.session.wake() {
            log_warn!("waking FUSE workers: {e}");
        }
        if let Err(e) = self.session.umount() {
            log_warn!("unmounting {}: {e}", self.mountpoint.display());
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
