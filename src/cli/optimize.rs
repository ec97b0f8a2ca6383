//! `strata image optimize`: re-lay an image out so what a workload read comes first.
//!
//! The chunks a recorded workload touched (an access log, a prefetch list, or nydus-image
//! optimize's JSON) are ordered by the prefetch planner (first-touch order, each chunk once,
//! shared chunks once), then each blob holding some of them is rewritten with those chunks
//! first, in that order, and the rest after in their old order (stored bytes copied, nothing
//! recompressed, so digests and dedup are kept). The new bootstrap points at the new blobs and
//! its prefetch table lists the touched files in first-touch order. Blobs with no touched chunk
//! are left as they are (and keep their ids). The result is verified (metadata and every
//! chunk's digest) before the bootstrap is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::prefetch::{order_chunks, RafsSource};
use crate::rafs::blob::BlobTarget;
use crate::rafs::build::{relayout_chunks, set_prefetch, BuildOptions};
use crate::rafs::check::check;
use crate::rafs::layout::{Compressor, Digester};
use crate::rafs::merge::load_tree;
use crate::rafs::merge::WhiteoutSpec;
use crate::rafs::reader::Image;
use crate::rafs::tree::ImageConfig;
use crate::storage::backend::LocalFs;
use crate::storage::cache::DirectReader;

/// `strata image optimize` flags.
#[derive(Args, Debug)]
pub struct OptimizeArgs {
    /// The image's bootstrap.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// Directory holding the image's blobs (named by blob id).
    #[arg(short = 'D', long)]
    pub blob_dir: PathBuf,
    /// An access log of the workload (its rotated files of the same session are read first).
    #[arg(long, value_name = "LOG")]
    pub log: Option<PathBuf>,
    /// A prefetch list: one absolute path per line; a directory stands for every file below.
    #[arg(long, value_name = "FILE")]
    pub list: Option<PathBuf>,
    /// nydus-image optimize's --prefetch-files JSON ({"version":"v1","files":[...]}).
    #[arg(long, value_name = "FILE")]
    pub optimize_json: Option<PathBuf>,
    /// Where the new bootstrap goes.
    #[arg(short = 'O', long)]
    pub output_bootstrap: PathBuf,
    /// Where the new blobs go (default: the blob dir).
    #[arg(long)]
    pub output_blob_dir: Option<PathBuf>,
    /// Print a JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What one rewritten blob became.
#[derive(serde::Serialize)]
struct Rewritten {
    blob_index: u32,
    old_blob_id: String,
    new_blob_id: String,
    hot_chunks: usize,
    hot_bytes: u64,
}

/// Run `strata image optimize`.
pub fn run(a: OptimizeArgs) -> Result<()> {
    let img = Image::open(&a.bootstrap)
        .with_context(|| format!("bootstrap {}", a.bootstrap.display()))?;
    let touches = super::prefetch::read_touches(
        a.log.as_deref(),
        true,
        a.list.as_deref(),
        a.optimize_json.as_deref(),
    )?;
    let ordered = order_chunks(&touches, &RafsSource::new(&img), &|_| false)
        .context("ordering the touched chunks")?;
    if ordered.chunks.is_empty() {
        bail!(
            "the workload touched no chunk of this image ({} touches, {} paths not in the image)",
            touches.len(),
            ordered.stats.missing
        );
    }
    // Hot chunks per blob, in first-touch order; touched files in first-touch order.
    let mut hot: BTreeMap<u32, (Vec<u32>, u64)> = BTreeMap::new();
    let mut files: Vec<Vec<u8>> = Vec::new();
    for c in &ordered.chunks {
        let e = hot.entry(c.chunk.blob_index).or_default();
        e.0.push(c.chunk.index);
        e.1 += u64::from(c.chunk.compressed_size);
        let p = c.path.as_bytes();
        if files.last().map(Vec::as_slice) != Some(p) && !files.iter().any(|f| f == p) {
            files.push(p.to_vec());
        }
    }

    let out_dir = a.output_blob_dir.clone().unwrap_or_else(|| a.blob_dir.clone());
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating blob dir {}", out_dir.display()))?;
    let mut tree = load_tree(&img).context("loading the image")?;
    let mut rewritten = Vec::new();
    for (&bi, (indexes, bytes)) in &hot {
        let old = tree.blobs[bi as usize].clone();
        let opts = BuildOptions {
            config: ImageConfig {
                chunk_size: old.chunk_size,
                compressor: Compressor::from_u32(old.compression_algo)
                    .map_err(|e| anyhow::anyhow!("blob {}: {e}", old.blob_id))?,
                digester: Digester::from_u32(old.digest_algo)
                    .map_err(|e| anyhow::anyhow!("blob {}: {e}", old.blob_id))?,
            },
            aligned_chunk: old.features & crate::rafs::layout::blob_features::ALIGNED != 0,
            whiteout_spec: WhiteoutSpec::Oci,
            prefetch: Vec::new(),
            blob: BlobTarget::Dir(out_dir.clone()),
            progress: false,
        };
        let old_path = a.blob_dir.join(&old.blob_id);
        if !old_path.is_file() {
            bail!("blob {} is not in {}", old.blob_id, a.blob_dir.display());
        }
        let (new, _) = relayout_chunks(&mut tree, bi, &old_path, indexes, &opts)
            .with_context(|| format!("rewriting blob {}", old.blob_id))?;
        rewritten.push(Rewritten {
            blob_index: bi,
            old_blob_id: old.blob_id,
            new_blob_id: new.blob_id,
            hot_chunks: indexes.len(),
            hot_bytes: *bytes,
        });
    }
    set_prefetch(&mut tree, &files).context("setting the prefetch table")?;

    // Verify the result, every chunk's digest included, before it replaces anything.
    let (bytes, _) = crate::rafs::writer::write_bootstrap(&tree)?;
    let new_img = Image::from_bytes(bytes).context("the new bootstrap does not read back")?;
    let backend = Arc::new(LocalFs::new(&out_dir).with_alt_dirs([a.blob_dir.clone()]));
    let reader = DirectReader::new(backend, &new_img.blobs)?;
    let report = check(&new_img, Some(&reader)).context("checking the optimized image")?;
    if !report.chunk_errors.is_empty() {
        bail!("the optimized image fails its check: {:?}", report.chunk_errors);
    }
    super::image::write_tree(&tree, &a.output_bootstrap, false)?;
    print_report(&a.output_bootstrap, &ordered.stats, &files, &rewritten, a.json)
}

fn print_report(
    out: &Path,
    stats: &crate::prefetch::PlanStats,
    files: &[Vec<u8>],
    rewritten: &[Rewritten],
    json: bool,
) -> Result<()> {
    if json {
        let v = serde_json::json!({
            "bootstrap": out,
            "stats": stats,
            "prefetch_files": files.iter().map(|f| String::from_utf8_lossy(f)).collect::<Vec<_>>(),
            "blobs": rewritten,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("wrote {}; prefetch table: {} files in first-touch order", out.display(), files.len());
    for r in rewritten {
        println!(
            "blob {}: {} -> {} ({} hot chunks, {} bytes, first in the blob)",
            r.blob_index,
            &r.old_blob_id[..r.old_blob_id.len().min(12)],
            r.new_blob_id,
            r.hot_chunks,
            r.hot_bytes
        );
    }
    if stats.missing > 0 {
        println!(
            "{} touched paths are not in the image (skipped): {}",
            stats.missing,
            stats.missing_paths.join(", ")
        );
    }
    Ok(())
}
