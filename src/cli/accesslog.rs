//! `strata accesslog show|stats|export`: read an access log (and its rotated files), filter
//! it, and print events, stats, or an export. Everything is computed by
//! [`crate::accesslog::query`] and [`crate::accesslog::report`]; this is flags and printing.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::accesslog::query::{replay_path, Filter, Replay, Resolved};
use crate::accesslog::report::{self, Stats};
use crate::accesslog::Op;

/// Access log subcommands.
#[derive(Subcommand, Debug)]
pub enum AccesslogCmd {
    /// Print the events of a log, oldest first.
    Show(ShowArgs),
    /// Top files by bytes and by count, first-touch order, per-process totals, cache hit ratio,
    /// drops.
    Stats(StatsArgs),
    /// Write the events in another format.
    Export(ExportArgs),
}

/// The log to read and which of its events to keep.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// The log file. Its rotated files of the same session (LOG.1, LOG.2, ...) are read first.
    pub log: PathBuf,
    /// Read only LOG, not its rotated files.
    #[arg(long)]
    pub no_rotated: bool,
    /// Keep events at or after SECS seconds since the log started.
    #[arg(long, value_name = "SECS")]
    pub since: Option<f64>,
    /// Keep events before SECS seconds since the log started.
    #[arg(long, value_name = "SECS")]
    pub until: Option<f64>,
    /// Keep events of this thread or process id (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Keep events of processes with this name (their comm).
    #[arg(long = "process", alias = "comm", value_name = "NAME")]
    pub process: Option<String>,
    /// Keep events of this uid.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Keep events about this path or below it.
    #[arg(long, value_name = "PATH")]
    pub path_prefix: Option<String>,
    /// Keep these operations (comma-separated or repeated: read,open,lookup,...).
    #[arg(long = "op", value_delimiter = ',', value_parser = parse_op, value_name = "OP")]
    pub ops: Vec<Op>,
}

fn parse_op(s: &str) -> Result<Op, String> {
    s.parse::<Op>().map_err(|e| e.to_string())
}

fn secs_to_ns(s: f64) -> u64 {
    if s <= 0.0 || s.is_nan() {
        0
    } else {
        (s * 1e9).min(u64::MAX as f64) as u64
    }
}

impl LogArgs {
    /// The filter the flags describe.
    pub fn filter(&self) -> Filter {
        Filter {
            since_ns: self.since.map(secs_to_ns),
            until_ns: self.until.map(secs_to_ns),
            pids: self.pids.clone(),
            process: self.process.clone(),
            uid: self.uid,
            path_prefix: self.path_prefix.clone(),
            ops: self.ops.clone(),
        }
    }

    /// Read and replay the log, warning on stderr about torn tails.
    fn replay(&self) -> Result<Replay> {
        let r = replay_path(&self.log, !self.no_rotated)
            .with_context(|| format!("reading access log {}", self.log.display()))?;
        for (file, at) in &r.torn {
            eprintln!(
                "warning: {file}: torn tail at byte {at} (a crash or a full disk mid-write); \
                 every record before it was read"
            );
        }
        if r.unknown_records > 0 {
            eprintln!(
                "warning: skipped {} records of types this strata does not know (written by a \
                 newer version)",
                r.unknown_records
            );
        }
        Ok(r)
    }
}

/// `show` flags.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The log and filters.
    #[command(flatten)]
    pub log: LogArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Print at most N events.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// `stats` flags.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The log and filters.
    #[command(flatten)]
    pub log: LogArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Entries in each top list (and of the first-touch order in text output).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
}

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A JSON array of events.
    Json,
    /// CSV with a header line.
    Csv,
    /// Files read, one absolute path per line, in first-read order (`--prefetch-files`).
    PrefetchList,
    /// nydus-image optimize's `--prefetch-files` JSON (files in first-read order, ranges).
    NydusOptimize,
}

/// `export` flags.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The log and filters.
    #[command(flatten)]
    pub log: LogArgs,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file (`-` for stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// Run an access log command.
pub fn run(cmd: AccesslogCmd) -> Result<()> {
    match cmd {
        AccesslogCmd::Show(a) => show(a),
        AccesslogCmd::Stats(a) => stats(a),
        AccesslogCmd::Export(a) => export(a),
    }
}

#[derive(Serialize)]
struct TornJson<'a> {
    file: &'a str,
    offset: u64,
}

#[derive(Serialize)]
struct Meta<'a> {
    mode: Option<&'static str>,
    start_unix_ns: Option<u64>,
    dropped: u64,
    unknown_records: u64,
    torn: Vec<TornJson<'a>>,
}

fn meta(r: &Replay) -> Meta<'_> {
    Meta {
        mode: r.header.and_then(|h| h.mode).map(|m| m.name()),
        start_unix_ns: r.header.map(|h| h.start_unix_ns),
        dropped: r.dropped,
        unknown_records: r.unknown_records,
        torn: r.torn.iter().map(|(file, offset)| TornJson { file, offset: *offset }).collect(),
    }
}

fn show(a: ShowArgs) -> Result<()> {
    let r = a.log.replay()?;
    let f = a.log.filter();
    let events: Vec<&Resolved> = f.apply(&r.events).take(a.limit.unwrap_or(usize::MAX)).collect();
    let out = io::stdout();
    let mut w = BufWriter::new(out.lock());
    if a.json {
        #[derive(Serialize)]
        struct Show<'a> {
            #[serde(flatten)]
            meta: Meta<'a>,
            events: Vec<&'a Resolved>,
        }
        serde_json::to_writer_pretty(&mut w, &Show { meta: meta(&r), events })?;
        writeln!(w)?;
    } else {
        for e in events {
            writeln!(w, "{}", line(e))?;
        }
        if r.dropped > 0 {
            writeln!(w, "({} events were dropped by the recorder)", r.dropped)?;
        }
    }
    w.flush()?;
    Ok(())
}

/// One event as a text line.
fn line(e: &Resolved) -> String {
    let mut s = format!(
        "{:>14.6}s {:<9} {:>7} {:<15} uid {:<5} {}",
        e.ts_ns as f64 / 1e9,
        e.op,
        e.process_id(),
        if e.process.is_empty() { "?" } else { &e.process },
        e.uid,
        e.path.clone().unwrap_or_else(|| format!("<inode {} layer {}>", e.inode, e.layer)),
    );
    if let Some(p2) = &e.path2 {
        s.push_str(&format!(" -> {p2}"));
    }
    if let (Some(o), Some(l)) = (e.offset, e.len) {
        s.push_str(&format!(" @{o}+{l}"));
    }
    if let (Some(f), Some(l)) = (e.chunk_first, e.chunk_last) {
        s.push_str(&format!(" chunks {f}..={l}"));
    }
    if let Some(c) = e.cache {
        s.push_str(&format!(" {c}"));
    }
    s
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn stats(a: StatsArgs) -> Result<()> {
    let r = a.log.replay()?;
    let f = a.log.filter();
    let s = report::stats(f.apply(&r.events), r.dropped, a.top);
    let out = io::stdout();
    let mut w = BufWriter::new(out.lock());
    if a.json {
        #[derive(Serialize)]
        struct StatsJson<'a> {
            #[serde(flatten)]
            meta: Meta<'a>,
            #[serde(flatten)]
            stats: &'a Stats,
        }
        let mut m = meta(&r);
        m.dropped = s.dropped;
        serde_json::to_writer_pretty(&mut w, &StatsJson { meta: m, stats: &s })?;
        writeln!(w)?;
    } else {
        print_stats(&mut w, &r, &s, a.top)?;
    }
    w.flush()?;
    Ok(())
}

fn print_stats(w: &mut dyn Write, r: &Replay, s: &Stats, top: usize) -> io::Result<()> {
    let mode = r.header.and_then(|h| h.mode).map_or("unknown", |m| m.name());
    writeln!(
        w,
        "events: {} over {:.3} s (mode {mode}); dropped by the recorder: {}",
        s.events,
        s.span_ns as f64 / 1e9,
        s.dropped
    )?;
    for (file, at) in &r.torn {
        writeln!(w, "torn tail: {file} at byte {at}")?;
    }
    let ops: Vec<String> = s.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    writeln!(w, "operations: {}", ops.join(", "))?;
    let c = &s.cache;
    match c.hit_ratio {
        Some(ratio) => writeln!(
            w,
            "cache: {} hits, {} misses, {} partial (hit ratio {:.1}%)",
            c.hits,
            c.misses,
            c.partial,
            ratio * 100.0
        )?,
        None => writeln!(w, "cache: no read recorded a cache outcome")?,
    }
    writeln!(w, "top files by bytes:")?;
    for f in &s.top_by_bytes {
        writeln!(
            w,
            "  {:>10}  {:>7} events  {}",
            human(f.bytes_read + f.bytes_written),
            f.events,
            f.path
        )?;
    }
    writeln!(w, "top files by count:")?;
    for f in &s.top_by_count {
        writeln!(
            w,
            "  {:>7} events  {:>10}  {}",
            f.events,
            human(f.bytes_read + f.bytes_written),
            f.path
        )?;
    }
    writeln!(w, "first-touch order ({} paths):", s.first_touch.len())?;
    for t in s.first_touch.iter().take(top) {
        writeln!(w, "  {:>12.6}s  {:<9} {:<15} {}", t.ts_ns as f64 / 1e9, t.op, t.process, t.path)?;
    }
    if s.first_touch.len() > top {
        writeln!(w, "  ... {} more (--top or --json for all)", s.first_touch.len() - top)?;
    }
    writeln!(w, "processes:")?;
    for p in &s.processes {
        writeln!(
            w,
            "  {:>7} {:<15} {:>7} events  {:>10} read  {:>10} written  {} files",
            p.pid,
            if p.process.is_empty() { "?" } else { &p.process },
            p.events,
            human(p.bytes_read),
            human(p.bytes_written),
            p.files
        )?;
    }
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    let r = a.log.replay()?;
    let f = a.log.filter();
    let events = f.apply(&r.events);
    let to_stdout = a.output.as_os_str() == "-";
    let mut w: Box<dyn Write> = if to_stdout {
        Box::new(BufWriter::new(io::stdout().lock()))
    } else {
        let file =
            File::create(&a.output).with_context(|| format!("creating {}", a.output.display()))?;
        Box::new(BufWriter::new(file))
    };
    match a.format {
        ExportFormat::Json => report::write_json(events, &mut w),
        ExportFormat::Csv => report::write_csv(events, &mut w),
        ExportFormat::PrefetchList => report::write_prefetch_list(events, &mut w),
        ExportFormat::NydusOptimize => report::write_nydus_optimize(events, &mut w),
    }
    .and_then(|()| w.flush())
    .with_context(|| format!("writing {}", a.output.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_sizes() {
        for (s, ns) in [(0.0, 0), (-1.0, 0), (1.5, 1_500_000_000), (f64::NAN, 0)] {
            assert_eq!(secs_to_ns(s), ns, "{s}");
        }
        for (n, h) in [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (3 << 20, "3.0 MiB")] {
            assert_eq!(human(n), h);
        }
        assert_eq!(parse_op("read"), Ok(Op::Read));
        assert!(parse_op("nope").is_err());
    }
}
