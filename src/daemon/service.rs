//! The running daemon: RAFS instances mounted into one FUSE session through the Vfs (the root
//! image at `/`, more under pseudo mountpoints through the API), their backends, caches and
//! metrics, the daemon state nydusd reports (INIT, READY, RUNNING), and the control the HTTP
//! API drives.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use fuse_backend_rs::api::{Vfs, VfsOptions};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::api::{ApiError, DaemonControl, MountRequest};
use super::config::{BackendConfig, CacheKind, DaemonConfig, PrefetchConfig};
use super::image_paths::ImagePaths;
use super::metrics::{Events, FsMetrics, Recorders};
use super::rafsfs::RafsFs;
use crate::accesslog::{AccessSink, Filter, SinkOptions};
use crate::prefetch::{Engine, EngineOptions, PlanOptions, Touch};
use crate::rafs::chunk::ChunkReader;
use crate::rafs::reader::Image;
use crate::storage::backend::{BlobBackend, LocalFs};
use crate::storage::cache::{ChunkCache, DirectReader};
use crate::storage::HttpProxy;

/// Daemon states, as nydusd names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Starting.
    Init,
    /// Mounted, not yet serving.
    Ready,
    /// Serving requests.
    Running,
    /// Shutting down.
    Stopping,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Init => "INIT",
            State::Ready => "READY",
            State::Running => "RUNNING",
            State::Stopping => "DESTROYED",
        }
    }
}

/// Errors of setting up an instance.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The bootstrap cannot be used.
    #[error("bootstrap {path}: {source}")]
    Bootstrap {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: crate::rafs::reader::ReadError,
    },
    /// The configuration asks for something stratad does not do (yet).
    #[error("{0}")]
    Unsupported(String),
    /// Storage setup failed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The access log could not start, or a prefetch log could not be read.
    #[error(transparent)]
    AccessLog(#[from] crate::accesslog::Error),
    /// Planning the prefetch failed.
    #[error(transparent)]
    Prefetch(#[from] crate::prefetch::Error),
    /// Vfs mount failed.
    #[error("mount {path}: {detail}")]
    Vfs {
        /// Pseudo mountpoint.
        path: String,
        /// What the Vfs said.
        detail: String,
    },
}

/// One mounted RAFS instance.
pub struct Instance {
    /// Bootstrap path.
    pub bootstrap: PathBuf,
    /// The image.
    pub image: Arc<Image>,
    /// Its configuration.
    pub config: DaemonConfig,
    /// Blob backend.
    pub backend: Arc<dyn BlobBackend>,
    /// Chunk cache (None with dummycache).
    pub cache: Option<Arc<ChunkCache>>,
    /// io statistics.
    pub metrics: Arc<FsMetrics>,
    /// The access log (off unless the config has an `accesslog` section; a writable mount's
    /// log is the overlay's, made by the caller).
    pub access: Arc<AccessSink>,
    /// Background prefetch, when the config enables it and there is something to fetch;
    /// cancelled when the instance is dropped.
    pub prefetch: Option<Engine>,
}

impl Instance {
    /// Open `bootstrap` with `config` and build its filesystem.
    pub fn open(
        id: &str,
        bootstrap: &Path,
        config: DaemonConfig,
        events: Arc<Events>,
    ) -> Result<(Self, RafsFs), ServiceError> {
        let image = Arc::new(Image::open(bootstrap).map_err(|source| ServiceError::Bootstrap {
            path: bootstrap.display().to_string(),
            source,
        })?);
        let backend: Arc<dyn BlobBackend> = match &config.backend {
            BackendConfig::Localfs { dir, alt_dirs, blob_file } => match (blob_file, dir) {
                (Some(f), _) => Arc::new(LocalFs::from_blob_file(f)),
                (None, Some(d)) => Arc::new(LocalFs::new(d).with_alt_dirs(alt_dirs.clone())),
                (None, None) => {
                    return Err(ServiceError::Unsupported(
                        "backend localfs needs dir or blob_file".into(),
                    ))
                }
            },
            BackendConfig::HttpProxy(c) => Arc::new(
                HttpProxy::new(c.clone()).map_err(|e| ServiceError::Unsupported(e.to_string()))?,
            ),
            BackendConfig::Unsupported { kind } => {
                return Err(ServiceError::Unsupported(format!(
                    "backend type {kind:?} is not supported yet (localfs is)"
                )))
            }
        };
        let (reader, cache): (Arc<dyn ChunkReader>, Option<Arc<ChunkCache>>) = match config.cache.kind
        {
            CacheKind::Blobcache => {
                std::fs::create_dir_all(&config.cache.work_dir).map_err(|e| {
                    ServiceError::Unsupported(format!(
                        "cache work_dir {}: {e}",
                        config.cache.work_dir.display()
                    ))
                })?;
                let c = Arc::new(ChunkCache::open(
                    &config.cache.work_dir,
                    backend.clone(),
                    &image.blobs,
                    config.cache.validate,
                )?);
                (c.clone(), Some(c))
            }
            CacheKind::Dummy => (Arc::new(DirectReader::new(backend.clone(), &image.blobs)?), None),
            CacheKind::Fscache => {
                return Err(ServiceError::Unsupported(
                    "cache type fscache needs the kernel fscache mode, which stratad does not serve; use blobcache".into(),
                ))
            }
        };
        let recorders = Recorders {
            files: config.rafs.iostats_files,
            pattern: config.rafs.access_pattern,
            latest: config.rafs.latest_read_files,
        };
        let metrics = Arc::new(FsMetrics::new(id, recorders));
        // One walk of the image answers both the log's paths and the prefetch table's.
        let paths = Arc::new(ImagePaths::new(image.clone()));
        let access = if config.accesslog.enabled() && config.overlay.is_none() {
            let opts = SinkOptions::new(config.accesslog.clone()).paths(paths.clone());
            Arc::new(AccessSink::start(opts)?)
        } else {
            Arc::new(AccessSink::off())
        };
        let prefetch = match &cache {
            Some(c) => start_prefetch(&image, &paths, c, &config.prefetch)?,
            None => None,
        };
        let fs = RafsFs::new(
            image.clone(),
            reader,
            metrics.clone(),
            events,
            access.clone(),
            config.rafs.enable_xattr,
            config.rafs.amplify_io,
        );
        Ok((
            Self {
                bootstrap: bootstrap.to_path_buf(),
                image,
                config,
                backend,
                cache,
                metrics,
                access,
                prefetch,
            },
            fs,
        ))
    }
}

/// Plan what `p` asks to prefetch (`files`, then the reads of `log`, then the image's prefetch
/// table unless `files` were given, then everything with `prefetch_all`), leaving out what the
/// cache holds, and start the engine. `None` when prefetch is off or there is nothing to fetch.
fn start_prefetch(
    image: &Arc<Image>,
    paths: &ImagePaths,
    cache: &Arc<ChunkCache>,
    p: &PrefetchConfig,
) -> Result<Option<Engine>, ServiceError> {
    if !p.enable {
        return Ok(None);
    }
    let mut touches: Vec<Touch> = p.files.iter().map(Touch::whole).collect();
    if let Some(log) = &p.log {
        let replay = crate::accesslog::replay_path(log, true)?;
        touches.extend(crate::prefetch::touches_from_events(&replay.events));
    }
    if p.files.is_empty() && !image.prefetch.is_empty() {
        for nid in &image.prefetch {
            if let Some(path) = crate::accesslog::PathResolver::path(paths, 0, *nid) {
                touches.push(Touch::whole(String::from_utf8_lossy(&path)));
            }
        }
    }
    if p.prefetch_all {
        touches.push(Touch::whole("/"));
    }
    if touches.is_empty() {
        return Ok(None);
    }
    // nydusd merges up to max(batch size, 128 KiB).
    let opts = PlanOptions { merging_size: p.merging_size.max(128 << 10), max_gap: None };
    let plan = crate::prefetch::plan(
        &touches,
        &crate::prefetch::RafsSource::new(image),
        &|c| cache.is_cached(c),
        &opts,
    )?;
    if plan.requests.is_empty() {
        return Ok(None);
    }
    let eo = EngineOptions { threads: p.threads_count, bandwidth_rate: p.bandwidth_rate };
    Ok(Some(Engine::start(cache.clone(), &plan, eo)))
}

/// The daemon.
pub struct Daemon {
    id: String,
    supervisor: Option<PathBuf>,
    state: Mutex<State>,
    vfs: Arc<Vfs>,
    instances: Mutex<BTreeMap<String, Instance>>,
    events: Arc<Events>,
    default_config: Option<DaemonConfig>,
    exit: Mutex<Option<Sender<()>>>,
    /// The writable overlay's access log and io metrics, when the daemon serves one (not a
    /// Vfs instance).
    overlay_access: Mutex<Option<Arc<AccessSink>>>,
    overlay_metrics: Mutex<Option<Arc<FsMetrics>>>,
}

impl Daemon {
    /// A daemon with an empty Vfs. `exit` is signalled when the API asks the daemon to exit.
    pub fn new(
        id: String,
        supervisor: Option<PathBuf>,
        default_config: Option<DaemonConfig>,
        exit: Sender<()>,
    ) -> Self {
        Self {
            id,
            supervisor,
            state: Mutex::new(State::Init),
            // No writeback cache: the images are read-only, and with it the kernel invalidates
            // st_blocks on every close, so the next stat of each file went to the daemon
            // (measured: one GETATTR per file per warm read pass).
            vfs: Arc::new(Vfs::new(VfsOptions { no_writeback: true, ..VfsOptions::default() })),
            instances: Mutex::new(BTreeMap::new()),
            events: Arc::new(Events::default()),
            default_config,
            exit: Mutex::new(Some(exit)),
            overlay_access: Mutex::new(None),
            overlay_metrics: Mutex::new(None),
        }
    }

    /// The Vfs to serve.
    pub fn vfs(&self) -> Arc<Vfs> {
        self.vfs.clone()
    }

    /// Error events.
    pub fn events_ref(&self) -> &Arc<Events> {
        &self.events
    }

    /// The access log and io metrics of the writable overlay this daemon serves, for the API
    /// (answered for id `/` or no id).
    pub fn set_overlay(&self, sink: Arc<AccessSink>, metrics: Arc<FsMetrics>) {
        *self.overlay_access.lock() = Some(sink);
        *self.overlay_metrics.lock() = Some(metrics);
    }

    /// The io metrics the API means by `id`: the overlay's, else a RAFS instance's.
    fn fs_metrics(&self, id: Option<&str>) -> Result<Arc<FsMetrics>, ApiError> {
        match self.overlay_metrics.lock().clone() {
            Some(m) if id.is_none() || id == Some("/") => Ok(m),
            _ => self.with_instance(id, |i| i.metrics.clone()),
        }
    }

    /// Write out every access log's buffered events (on unmount and exit).
    pub fn flush_access_logs(&self) {
        let sinks: Vec<Arc<AccessSink>> = self
            .instances
            .lock()
            .values()
            .map(|i| i.access.clone())
            .chain(self.overlay_access.lock().clone())
            .collect();
        for s in sinks.iter().filter(|s| s.enabled()) {
            if let Err(e) = s.flush() {
                crate::log_warn!("access log: {e}");
            }
        }
    }

    /// Set the state.
    pub fn set_state(&self, s: State) {
        *self.state.lock() = s;
    }

    /// Mount `bootstrap` at pseudo path `at` ("/" for the root).
    pub fn mount_instance(
        &self,
        at: &str,
        bootstrap: &Path,
        config: DaemonConfig,
    ) -> Result<(), ServiceError> {
        if config.overlay.is_some() {
            return Err(ServiceError::Unsupported(
                "an overlay section is served at the mount root with --writable, not through the mount API".into(),
            ));
        }
        let mut instances = self.instances.lock();
        if instances.contains_key(at) {
            return Err(ServiceError::Vfs { path: at.into(), detail: "already mounted".into() });
        }
        let (inst, fs) = Instance::open(at, bootstrap, config, self.events.clone())?;
        self.vfs
            .mount(Box::new(fs), at)
            .map_err(|e| ServiceError::Vfs { path: at.into(), detail: format!("{e:?}") })?;
        instances.insert(at.to_string(), inst);
        crate::log_info!("mounted {} at {at}", bootstrap.display());
        Ok(())
    }

    /// Unmount the instance at `at`.
    pub fn umount_instance(&self, at: &str) -> Result<(), ServiceError> {
        let mut instances = self.instances.lock();
        if !instances.contains_key(at) {
            return Err(ServiceError::Vfs {
                path: at.into(),
                detail: "nothing mounted there".into(),
            });
        }
        self.vfs
            .umount(at)
            .map_err(|e| ServiceError::Vfs { path: at.into(), detail: format!("{e:?}") })?;
        if let Some(inst) = instances.remove(at) {
            if let Some(c) = &inst.cache {
                if let Err(e) = c.flush() {
                    crate::log_warn!("flushing the cache of {at}: {e}");
                }
            }
            if inst.access.enabled() {
                if let Err(e) = inst.access.flush() {
                    crate::log_warn!("flushing the access log of {at}: {e}");
                }
            }
        }
        Ok(())
    }

    /// Flush every cache and access log (clean shutdown).
    pub fn flush_all(&self) {
        self.flush_access_logs();
        for (at, inst) in self.instances.lock().iter() {
            if let Some(c) = &inst.cache {
                if let Err(e) = c.flush() {
                    crate::log_warn!("flushing the cache of {at}: {e}");
                }
            }
        }
    }

    fn with_instance<T>(
        &self,
        id: Option<&str>,
        f: impl FnOnce(&Instance) -> T,
    ) -> Result<T, ApiError> {
        let instances = self.instances.lock();
        let key = id.unwrap_or("/");
        let inst = instances
            .get(key)
            .or_else(|| if id.is_none() { instances.values().next() } else { None })
            .ok_or_else(|| ApiError::not_found(format!("no RAFS instance with id {key:?}")))?;
        Ok(f(inst))
    }

    fn config_for(&self, req: &MountRequest) -> Result<DaemonConfig, ApiError> {
        if req.fs_type != "rafs" {
            return Err(ApiError::not_implemented(format!(
                "fs_type {:?}: stratad serves rafs only",
                req.fs_type
            )));
        }
        let mut config = if req.config.trim().is_empty() {
            self.default_config.clone().ok_or_else(|| {
                ApiError::bad_request("config is empty and the daemon has no default")
            })?
        } else {
            super::config::parse(&req.config)
                .map_err(|e| ApiError::bad_request(format!("config: {e}")))?
        };
        // nydusd: the request's list replaces the image's prefetch table for this mount.
        if let Some(files) = &req.prefetch_files {
            if let Some(bad) = files.iter().find(|f| !f.starts_with('/')) {
                return Err(ApiError::bad_request(format!(
                    "prefetch_files: {bad:?} is not an absolute path"
                )));
            }
            config.prefetch.files = files.clone();
        }
        Ok(config)
    }
}

fn service_to_api(e: ServiceError) -> ApiError {
    match e {
        ServiceError::Unsupported(m) => ApiError::not_implemented(m),
        ServiceError::Bootstrap { .. } | ServiceError::AccessLog(_) | ServiceError::Prefetch(_) => {
            ApiError::bad_request(e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}

impl DaemonControl for Daemon {
    fn daemon_info(&self) -> Value {
        let instances = self.instances.lock();
        json!({
            "id": self.id,
            "version": {"package_ver": env!("CARGO_PKG_VERSION"), "git_commit": "", "build_time": "",
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" }, "rustc": ""},
            "state": self.state.lock().name(),
            "supervisor": self.supervisor.as_ref().map(|p| p.display().to_string()),
            "backend_collection": instances.iter().map(|(k, i)| (k.clone(), json!({
                "mountpoint": k, "source": i.bootstrap, "fs_type": "rafs",
            }))).collect::<serde_json::Map<_, _>>(),
        })
    }

    fn set_log_level(&self, level: &str) -> Result<(), ApiError> {
        let l = super::log::Level::parse(level).ok_or_else(|| {
            ApiError::bad_request(format!(
                "log_level {level:?}: expected trace, debug, info, warn or error"
            ))
        })?;
        super::log::set_level(l);
        Ok(())
    }

    fn exit(&self) {
        if let Some(tx) = self.exit.lock().take() {
            let _ = tx.send(());
        }
    }

    fn events(&self) -> Value {
        self.events.to_json()
    }

    fn backend_info(&self, mountpoint: &str) -> Result<Value, ApiError> {
        self.with_instance(Some(mountpoint), |i| {
            let img = &i.image;
            json!({
                "version": 6, "magic": format!("{:#x}", crate::rafs::layout::EROFS_MAGIC),
                "block_size": 4096, "chunk_size": img.chunk_size, "inodes_count": img.sb.inos,
                "root_nid": img.sb.root_nid, "meta_blkaddr": img.sb.meta_blkaddr,
                "flags": img.ext.as_ref().map(|e| e.flags), "compressor": img.compressor.name(),
                "digester": img.digester.name(),
                "blob_table": img.blobs.iter().map(|b| b.blob_id.clone()).collect::<Vec<_>>(),
                "prefetch_table_entries": img.prefetch.len(),
            })
        })
    }

    fn mount(&self, mountpoint: &str, req: MountRequest) -> Result<(), ApiError> {
        let config = self.config_for(&req)?;
        self.mount_instance(mountpoint, Path::new(&req.source), config).map_err(service_to_api)
    }

    fn remount(&self, mountpoint: &str, req: MountRequest) -> Result<(), ApiError> {
        let config = self.config_for(&req)?;
        self.umount_instance(mountpoint).map_err(|e| ApiError::not_found(e.to_string()))?;
        self.mount_instance(mountpoint, Path::new(&req.source), config).map_err(service_to_api)
    }

    fn umount(&self, mountpoint: &str) -> Result<(), ApiError> {
        self.umount_instance(mountpoint).map_err(|e| ApiError::not_found(e.to_string()))
    }

    fn metrics(&self, id: Option<&str>) -> Result<Value, ApiError> {
        Ok(self.fs_metrics(id)?.global())
    }

    fn metrics_files(&self, id: Option<&str>, latest: bool) -> Result<Value, ApiError> {
        self.fs_metrics(id)?.files(latest).ok_or_else(|| {
            ApiError::bad_request(if latest {
                "latest_read_files is not enabled in the config"
            } else {
                "iostats_files is not enabled in the config"
            })
        })
    }

    fn metrics_pattern(&self, id: Option<&str>) -> Result<Value, ApiError> {
        self.fs_metrics(id)?
            .pattern()
            .ok_or_else(|| ApiError::bad_request("access_pattern is not enabled in the config"))
    }

    fn accesslog(
        &self,
        id: Option<&str>,
        filter: &Filter,
        limit: usize,
    ) -> Result<Value, ApiError> {
        let overlay = self.overlay_access.lock().clone();
        let sink = match overlay {
            Some(s) if id.is_none() || id == Some("/") => s,
            _ => self.with_instance(id, |i| i.access.clone())?,
        };
        if !sink.enabled() {
            return Err(ApiError::bad_request(
                "the access log is not enabled (the config has no accesslog section with a path)",
            ));
        }
        // Events still in per-thread buffers are included; a failing log file (a full disk)
        // still answers from memory, and says so in last_error.
        let _ = sink.flush();
        Ok(json!({
            "mode": sink.mode().name(),
            "stats": sink.stats(),
            "writer_priority": sink.writer_priority(),
            "last_error": sink.last_error(),
            "events": sink.recent(filter, limit),
        }))
    }

    fn metrics_backend(&self, id: Option<&str>) -> Result<Value, ApiError> {
        self.with_instance(id, |i| {
            let m = i.backend.metrics().snapshot();
            json!({
                "id": id.unwrap_or("/"), "backend_type": "localfs",
                "read_count": m.read_count, "read_errors": m.read_errors,
                "read_amount_total": m.read_bytes, "read_cumulative_latency_millis_total": 0,
            })
        })
    }

    fn metrics_blobcache(&self, id: Option<&str>) -> Result<Value, ApiError> {
        self.with_instance(id, |i| {
            let (hits, misses, entries, store) = match &i.cache {
                Some(c) => {
                    let m = c.metrics();
                    (m.hits, m.misses, m.ready.iter().map(|&r| u64::from(r)).sum::<u64>(), c.work_dir().display().to_string())
                }
                None => (0, 0, 0, String::new()),
            };
            let total_chunks: u64 = i.image.blobs.iter().map(|b| u64::from(b.chunk_count)).sum();
            let mut v = json!({
                "id": id.unwrap_or("/"), "underlying_files": i.image.blobs.iter().map(|b| b.blob_id.clone()).collect::<Vec<_>>(),
                "store_path": store, "partial_hits": 0, "whole_hits": hits, "total": hits + misses,
                "entries_count": entries, "buffered_backend_size": 0,
                "data_all_ready": total_chunks > 0 && entries >= total_chunks,
            });
            let p = i.prefetch.as_ref().map(|e| e.metrics()).unwrap_or_default();
            if let (Value::Object(m), Ok(Value::Object(pm))) = (&mut v, serde_json::to_value(p)) {
                m.extend(pm);
            }
            v
        })
    }

    fn metrics_inflight(&self) -> Value {
        let mut values: Vec<Value> =
            self.instances.lock().values().flat_map(|i| i.metrics.inflight()).collect();
        if let Some(m) = self.overlay_metrics.lock().as_ref() {
            values.extend(m.inflight());
        }
        json!({"values": values})
    }
}
