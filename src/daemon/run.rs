//! stratad's lifecycle: parse nydusd's command line, open the image, mount FUSE, serve with N
//! worker threads and the API, and unmount cleanly on SIGTERM/SIGINT, `PUT /daemon/exit` or an
//! external `umount`. Startup failures are one line on stderr and a non-zero exit.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use super::args::{Cli, Cmd, FuseArgs, GlobalArgs, OverlayCmd};
use super::config::{self, DaemonConfig};
use super::recorded::Recorded;
use super::service::{Daemon, State};
use super::serving::{Kind, Serving};
use crate::accesslog::{AccessLogConfig, AccessSink, SinkOptions};
use crate::overlay::layer::RafsLayer;
use crate::overlay::{OverlayFs, OverlayOptions};

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
            passthrough: !f.no_passthrough,
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
    metrics.track_copy_ups(fs.copy_up_stats());
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
        passthrough: !o.no_passthrough,
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
