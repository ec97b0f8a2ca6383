//! The `strata` command line: argument parsing and the commands' glue. Owns nothing of the
//! formats; every command calls into [`crate::rafs`], [`crate::storage`],
//! [`crate::accesslog`] and [`crate::prefetch`].

pub mod accesslog;
pub mod demo;
pub mod image;
pub mod optimize;
pub mod prefetch;

use clap::{Parser, Subcommand};

/// strata: container root filesystems from lazily loaded RAFS images.
#[derive(Parser, Debug)]
#[command(name = "strata", version, about)]
pub struct Cli {
    /// Log level (accepted for nydus-image compatibility; errors always print).
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// The command.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build, merge, inspect, check, unpack and export RAFS v6 images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Build a sample image from an embedded tree, check it, inspect it, read it back.
    Demo(demo::DemoArgs),
    /// Read access logs: show events, stats, exports (JSON, CSV, prefetch lists).
    #[command(subcommand)]
    Accesslog(accesslog::AccesslogCmd),
    /// Plan prefetches from access logs, prefetch lists or nydus optimize JSON.
    #[command(subcommand)]
    Prefetch(prefetch::PrefetchCmd),
}

/// Parse the arguments and run. Invoked as `nydus-image`, the arguments are those of
/// `strata image` (so existing nydus-image scripts run unchanged).
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let args = if invoked_as == "nydus-image" {
        let mut v = vec!["strata".into(), "image".into()];
        v.extend(args.into_iter().skip(1));
        v
    } else {
        args
    };
    let cli = Cli::parse_from(args);
    match cli.cmd {
        Cmd::Image(c) => image::run(c),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Accesslog(c) => accesslog::run(c),
        Cmd::Prefetch(c) => prefetch::run(c),
    }
}
