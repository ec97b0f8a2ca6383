//! `strata-blobserver`: serve a directory of blobs over HTTP/1.1 for the `http-proxy` backend,
//! with optional per-request latency and a bandwidth cap (tests and benchmarks). The server is
//! [`strata::storage::blobserver`]; this is flags.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata::storage::blobserver::{BlobServer, ServerOptions};

/// Serve the files of DIR: HEAD for sizes, GET with Range for bytes; GET /_stats for counters.
#[derive(Parser, Debug)]
#[command(name = "strata-blobserver", version, about)]
struct Args {
    /// host:port to listen on (port 0: any free port), or an absolute unix socket path.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Directory whose files are served (the last URL path segment names the file).
    #[arg(long)]
    dir: PathBuf,
    /// Milliseconds added to every HEAD and GET of a file.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Bandwidth cap of all connections together, in megabytes (10^6 bytes) per second;
    /// 0: unlimited. Fractions are accepted.
    #[arg(long, default_value_t = 0.0)]
    bandwidth_mbps: f64,
    /// Rewrite this file with the counters (JSON) after every request.
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if !(a.bandwidth_mbps >= 0.0 && a.bandwidth_mbps.is_finite()) {
        anyhow::bail!("--bandwidth-mbps must be a number of at least 0");
    }
    let mut opts = ServerOptions::new(a.listen.clone(), a.dir.clone());
    opts.latency = Duration::from_millis(a.latency_ms);
    opts.bandwidth = (a.bandwidth_mbps > 0.0).then(|| ((a.bandwidth_mbps * 1e6) as u64).max(1));
    opts.stats_file = a.stats_file;
    let server = BlobServer::start(opts)
        .with_context(|| format!("serving {} on {}", a.dir.display(), a.listen))?;
    // The first line of stdout is the address to give the backend (scripts read it).
    println!("listening on {}", server.addr());
    use std::io::Write;
    std::io::stdout().flush()?;
    server.wait();
    Ok(())
}
