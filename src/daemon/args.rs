//! stratad's command line: nydusd's, so a deployment can switch binaries. The legacy form
//! (fs options without a subcommand) and the `fuse` subcommand are the same thing.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// stratad: serve RAFS images over FUSE (a drop-in for nydusd).
#[derive(Parser, Debug)]
#[command(name = "stratad", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Daemon options shared by every form.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The legacy form: fs options without a subcommand.
    #[command(flatten)]
    pub fuse: FuseArgs,
    /// Subcommand.
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Serve over FUSE (the default).
    Fuse(Box<FuseCmd>),
    /// Serve a writable overlay of plain directories (the options `mount -t overlay` takes).
    Overlay(Box<OverlayCmd>),
    /// nydusd's shared fscache/FUSE daemon (not built).
    Singleton(Unbuilt),
    /// virtio-fs (not built).
    Virtiofs(Unbuilt),
}

/// `fuse` subcommand: global options may follow it too.
#[derive(Args, Debug)]
pub struct FuseCmd {
    /// Daemon options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// FUSE options.
    #[command(flatten)]
    pub fuse: FuseArgs,
}

/// `overlay` subcommand: `--lowerdir=A:B --upperdir=U --workdir=W --mountpoint=M`, or the same
/// keys in `-o lowerdir=A:B,upperdir=U,workdir=W`.
#[derive(Args, Debug, Default, Clone)]
pub struct OverlayCmd {
    /// Daemon options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Lower directories, colon-separated, top first (a RAFS bootstrap file works too).
    #[arg(long)]
    pub lowerdir: Option<String>,
    /// Writable upper directory.
    #[arg(long)]
    pub upperdir: Option<std::path::PathBuf>,
    /// Work directory on the upper's filesystem.
    #[arg(long)]
    pub workdir: Option<std::path::PathBuf>,
    /// Mount point.
    #[arg(short = 'M', long)]
    pub mountpoint: Option<std::path::PathBuf>,
    /// Blob directory for RAFS bootstraps given in --lowerdir.
    #[arg(short = 'D', long)]
    pub localfs_dir: Option<std::path::PathBuf>,
    /// Mount source shown in the mount table.
    #[arg(long, default_value = "strata")]
    pub fsname: String,
    /// FUSE worker threads.
    #[arg(long, alias = "thread-num", default_value_t = 4)]
    pub fuse_threads: usize,
    /// Do not fsync copied-up files (kernel overlayfs's `volatile`; faster, not crash-safe
    /// against power loss).
    #[arg(long)]
    pub volatile: bool,
    /// Keep plain files' reads and writes in the daemon instead of handing the files to the
    /// kernel (FUSE passthrough, used where the kernel offers it; docs/overlay.md).
    #[arg(long)]
    pub no_passthrough: bool,
    /// mount(8)-style options (lowerdir=, upperdir=, workdir=, volatile; others are ignored).
    #[arg(short = 'o')]
    pub options: Vec<String>,
    /// Record file accesses in this access log (docs/access-log.md).
    #[arg(long, value_name = "PATH")]
    pub accesslog: Option<std::path::PathBuf>,
    /// What the access log keeps: first-touch (what prefetch needs) or full (every access).
    #[arg(long, value_name = "MODE", default_value = "first-touch", requires = "accesslog")]
    pub accesslog_mode: crate::accesslog::Mode,
}

/// Arguments of a subcommand we do not serve: accepted so the error can say so clearly.
#[derive(Args, Debug)]
pub struct Unbuilt {
    /// Ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

/// Options of the daemon itself.
#[derive(Args, Debug, Default, Clone)]
pub struct GlobalArgs {
    /// HTTP API socket.
    #[arg(long)]
    pub apisock: Option<PathBuf>,
    /// Daemon config (nydusd v1 JSON, v2 JSON or v2 TOML).
    #[arg(short = 'C', long)]
    pub config: Option<PathBuf>,
    /// Daemon id (required with --supervisor).
    #[arg(long)]
    pub id: Option<String>,
    /// Supervisor socket for failover/upgrade (requires --id).
    #[arg(long, requires = "id")]
    pub supervisor: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error.
    #[arg(short = 'l', long, default_value = "info")]
    pub log_level: String,
    /// Log file (default stderr).
    #[arg(short = 'L', long)]
    pub log_file: Option<PathBuf>,
    /// Log rotation size in MB (0 = off).
    #[arg(long, default_value_t = 0)]
    pub log_rotation_size: u64,
    /// Raise RLIMIT_NOFILE to this (0 = leave unchanged).
    #[arg(long, default_value_t = 1_000_000)]
    pub rlimit_nofile: u64,
    /// Start in upgrade mode (wait for a takeover).
    #[arg(long)]
    pub upgrade: bool,
}

/// Failover policies.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum FailoverPolicy {
    /// No failover.
    None,
    /// Resend in-flight requests.
    Resend,
    /// Flush in-flight requests.
    Flush,
}

/// FUSE and fs options.
#[derive(Args, Debug, Default, Clone)]
pub struct FuseArgs {
    /// Mount point.
    #[arg(short = 'M', long)]
    pub mountpoint: Option<PathBuf>,
    /// RAFS bootstrap to serve at the root.
    #[arg(short = 'B', long)]
    pub bootstrap: Option<PathBuf>,
    /// Blob directory (a localfs backend, instead of --config).
    #[arg(short = 'D', long, conflicts_with = "config")]
    pub localfs_dir: Option<PathBuf>,
    /// FUSE worker threads.
    #[arg(long, alias = "thread-num", default_value_t = 4)]
    pub fuse_threads: usize,
    /// Mount read-write (needs an `overlay` section).
    #[arg(long)]
    pub writable: bool,
    /// With --writable: keep upper files' reads and writes in the daemon instead of handing
    /// the files to the kernel (FUSE passthrough; docs/overlay.md).
    #[arg(long, requires = "writable")]
    pub no_passthrough: bool,
    /// File listing paths to prefetch.
    #[arg(long, requires = "bootstrap")]
    pub prefetch_files: Option<PathBuf>,
    /// An access log whose reads are prefetched (ours; after --prefetch-files).
    #[arg(long, requires = "bootstrap", value_name = "LOG")]
    pub prefetch_log: Option<PathBuf>,
    /// Failover policy.
    #[arg(long, value_enum)]
    pub failover_policy: Option<FailoverPolicy>,
    /// Passthrough directory (nydusd passthroughfs).
    #[arg(long, conflicts_with = "bootstrap")]
    pub shared_dir: Option<PathBuf>,
    /// Where the root fs appears inside the mount.
    #[arg(short = 'm', long, default_value = "/")]
    pub virtual_mountpoint: String,
}
