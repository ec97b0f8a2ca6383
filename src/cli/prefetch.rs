//! `strata prefetch plan`: print the prefetch plan for an image and a record of what a
//! workload read. The planning is [`crate::prefetch`]'s; this is flags, input files and
//! printing.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::accesslog::replay_path;
use crate::prefetch::{
    plan, touches_from_events, touches_from_list, touches_from_optimize_json, Plan, PlanOptions,
    PlanStats, RafsSource, Touch, DEFAULT_MERGING_SIZE,
};
use crate::rafs::chunk::ChunkRef;
use crate::rafs::reader::Image;
use crate::storage::read_ready_bits;

/// Prefetch subcommands.
#[derive(Subcommand, Debug)]
pub enum PrefetchCmd {
    /// Plan the backend requests that prefetch what a workload read: chunks in first-touch
    /// order (duplicates, shared and cached chunks removed), merged into ranged requests.
    Plan(PlanArgs),
}

/// `strata prefetch plan` flags.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The image's bootstrap.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// An access log (its rotated files of the same session are read first): every read.
    #[arg(long, value_name = "LOG")]
    pub log: Option<PathBuf>,
    /// Read only LOG, not its rotated files.
    #[arg(long, requires = "log")]
    pub no_rotated: bool,
    /// A prefetch list: one absolute path per line (nydusd's --prefetch-files); a directory
    /// stands for every file below it.
    #[arg(long, value_name = "FILE")]
    pub list: Option<PathBuf>,
    /// nydus-image optimize's --prefetch-files JSON ({"version":"v1","files":[...]}).
    #[arg(long, value_name = "FILE")]
    pub optimize_json: Option<PathBuf>,
    /// Largest request in bytes (suffixes K, M, G: binary). 0: one request per chunk.
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MERGING_SIZE)]
    pub merging_size: u64,
    /// Largest gap of unneeded bytes a request may span to join two chunks (default: 1/128 of
    /// the merging size, as nydusd).
    #[arg(long, value_parser = parse_size)]
    pub max_gap: Option<u64>,
    /// A chunk cache's work dir: chunks it holds are left out of the plan.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A byte count: decimal, or `0x` hex, with an optional K/M/G (KiB, MiB, GiB) suffix.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse::<u64>(),
    }
    .map_err(|e| format!("{s:?} is not a byte count ({e})"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// Run a prefetch subcommand.
pub fn run(cmd: PrefetchCmd) -> Result<()> {
    match cmd {
        PrefetchCmd::Plan(a) => run_plan(a),
    }
}

/// The touches the flags name, in the order log, list, optimize JSON.
fn touches(a: &PlanArgs) -> Result<Vec<Touch>> {
    read_touches(a.log.as_deref(), !a.no_rotated, a.list.as_deref(), a.optimize_json.as_deref())
}

/// The touches of an access log (with its rotated files when `rotated`), a prefetch list and
/// an optimize JSON, in that order; at least one must be given.
pub(crate) fn read_touches(
    log: Option<&Path>,
    rotated: bool,
    list: Option<&Path>,
    optimize_json: Option<&Path>,
) -> Result<Vec<Touch>> {
    if log.is_none() && list.is_none() && optimize_json.is_none() {
        bail!("nothing to plan from: give --log, --list or --optimize-json");
    }
    let mut out = Vec::new();
    if let Some(log) = log {
        let replay = replay_path(log, rotated)
            .with_context(|| format!("reading access log {}", log.display()))?;
        for (file, at) in &replay.torn {
            eprintln!("warning: {file}: torn tail at byte {at}; read up to there");
        }
        out.extend(touches_from_events(&replay.events));
    }
    if let Some(list) = list {
        let text = std::fs::read_to_string(list)
            .with_context(|| format!("reading prefetch list {}", list.display()))?;
        out.extend(touches_from_list(&text).with_context(|| list.display().to_string())?);
    }
    if let Some(json) = optimize_json {
        let text = std::fs::read_to_string(json)
            .with_context(|| format!("reading optimize JSON {}", json.display()))?;
        out.extend(touches_from_optimize_json(&text).with_context(|| json.display().to_string())?);
    }
    Ok(out)
}

/// Readiness bitmaps per blob index from a cache work dir (empty for blobs it lacks).
fn cached_bits(image: &Image, dir: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    image
        .blobs
        .iter()
        .map(|b| {
            read_ready_bits(dir, b)
                .map(Option::unwrap_or_default)
                .with_context(|| format!("reading the chunk cache in {}", dir.display()))
        })
        .collect()
}

#[derive(Serialize)]
struct JsonRequest<'a> {
    blob_index: u32,
    blob_id: &'a str,
    offset: u64,
    len: u64,
    gap_bytes: u64,
    /// Chunk indexes in the blob, by offset.
    chunks: Vec<u32>,
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    bootstrap: String,
    merging_size: u64,
    max_gap: u64,
    stats: &'a PlanStats,
    requests: Vec<JsonRequest<'a>>,
    chunks: &'a [crate::prefetch::PlannedChunk],
}

fn run_plan(a: PlanArgs) -> Result<()> {
    let image = Image::open(&a.bootstrap)
        .with_context(|| format!("opening bootstrap {}", a.bootstrap.display()))?;
    let touches = touches(&a)?;
    let bits = match &a.cache_dir {
        Some(dir) => cached_bits(&image, dir)?,
        None => Vec::new(),
    };
    let is_cached = |c: &ChunkRef| {
        bits.get(c.blob_index as usize)
            .and_then(|b| b.get(c.index as usize / 8))
            .is_some_and(|byte| byte & (1 << (c.index % 8)) != 0)
    };
    let opts = PlanOptions { merging_size: a.merging_size, max_gap: a.max_gap };
    let plan = plan(&touches, &RafsSource::new(&image), &is_cached, &opts)?;
    let blob_id = |i: u32| image.blobs.get(i as usize).map_or("?", |b| b.blob_id.as_str());
    let stdout = io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    if a.json {
        let requests = plan
            .requests
            .iter()
            .map(|r| JsonRequest {
                blob_index: r.blob_index,
                blob_id: blob_id(r.blob_index),
                offset: r.offset,
                len: r.len,
                gap_bytes: r.gap_bytes,
                chunks: r.chunks.iter().map(|&i| plan.chunks[i].chunk.index).collect(),
            })
            .collect();
        let doc = JsonPlan {
            bootstrap: a.bootstrap.display().to_string(),
            merging_size: opts.merging_size,
            max_gap: opts.gap(),
            stats: &plan.stats,
            requests,
            chunks: &plan.chunks,
        };
        serde_json::to_writer_pretty(&mut w, &doc)?;
        writeln!(w)?;
    } else {
        print_table(&mut w, &plan, &opts, &blob_id)?;
    }
    w.flush()?;
    Ok(())
}

fn print_table<'a>(
    w: &mut dyn Write,
    plan: &Plan,
    opts: &PlanOptions,
    blob_id: &dyn Fn(u32) -> &'a str,
) -> io::Result<()> {
    let s = &plan.stats;
    writeln!(
        w,
        "{} touches, {} files, {} chunk refs: {} duplicate, {} cached, {} holes",
        s.touches, s.files, s.chunk_refs, s.duplicates, s.cached, s.holes
    )?;
    writeln!(
        w,
        "{} chunks ({} bytes) in {} requests ({} bytes, {} in gaps); merging size {}, max gap {}",
        s.chunks,
        s.chunk_bytes,
        s.requests,
        s.request_bytes,
        s.gap_bytes,
        opts.merging_size,
        opts.gap()
    )?;
    if s.missing > 0 {
        writeln!(
            w,
            "{} touches of paths not in the image: {}",
            s.missing,
            s.missing_paths.join(" ")
        )?;
    }
    if s.no_data > 0 {
        writeln!(w, "{} touches of entries without data (symlinks, devices, ...)", s.no_data)?;
    }
    if plan.requests.is_empty() {
        return Ok(());
    }
    writeln!(w)?;
    writeln!(
        w,
        "{:>5}  {:<16}  {:>12}  {:>10}  {:>6}  first file",
        "#", "blob", "offset", "len", "chunks"
    )?;
    for (n, r) in plan.requests.iter().enumerate() {
        let id = blob_id(r.blob_index);
        let short = id.get(..16).unwrap_or(id);
        let first = &plan.chunks[r.first_touch()].path;
        writeln!(
            w,
            "{n:>5}  {short:<16}  {:>12}  {:>10}  {:>6}  {first}",
            r.offset,
            r.len,
            r.chunks.len()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse() {
        for (s, want) in [
            ("0", Ok(0)),
            ("4096", Ok(4096)),
            ("0x100000", Ok(1 << 20)),
            ("1M", Ok(1 << 20)),
            ("128k", Ok(128 << 10)),
            ("2G", Ok(2 << 30)),
        ] {
            assert_eq!(parse_size(s), want, "{s}");
        }
        for bad in ["", "M", "x", "-1", "99999999999999999999", "17179869184G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
