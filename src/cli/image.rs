//! `strata image ...`: create, merge, inspect, check, unpack, export. The flags are
//! nydus-image's, so scripts written for it run unchanged (also when this binary is invoked
//! under the name `nydus-image`).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::rafs::blob::BlobTarget;
use crate::rafs::build::{self, BuildOptions};
use crate::rafs::layout::{Compressor, Digester};
use crate::rafs::merge::{apply_layer, load_tree, WhiteoutSpec};
use crate::rafs::reader::Image;
use crate::rafs::tree::{ImageConfig, Tree};
use crate::rafs::{check, export, unpack, writer};
use crate::storage::backend::LocalFs;
use crate::storage::cache::DirectReader;

/// Image subcommands.
#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Build a RAFS v6 image from a directory or an OCI layer tar.
    Create(CreateArgs),
    /// Merge layer bootstraps (lower to upper) into one, applying whiteouts.
    Merge(MergeArgs),
    /// Show an image's superblock, blobs, prefetch table, or one path's inode.
    Inspect(InspectArgs),
    /// Validate metadata and, with a blob dir, every chunk's data.
    Check(CheckArgs),
    /// Write an image's tree to a tar or a directory.
    Unpack(UnpackArgs),
    /// Flatten bootstrap + blobs into one kernel-mountable EROFS image.
    Export(ExportArgs),
    /// Re-lay an image out so the chunks a recorded workload read come first, in first-touch
    /// order, and set its prefetch table (from an access log, a prefetch list or nydus's
    /// optimize JSON).
    Optimize(super::optimize::OptimizeArgs),
}

/// Source types, as nydus-image names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceType {
    /// A directory.
    #[value(name = "dir-rafs", alias = "directory")]
    DirRafs,
    /// A tar layer (compression detected from its magic).
    #[value(name = "tar-rafs")]
    TarRafs,
    /// A gzip tar layer.
    #[value(name = "targz-rafs")]
    TargzRafs,
    /// A zstd tar layer.
    #[value(name = "tarzst-rafs")]
    TarzstRafs,
}

/// `--compressor` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressorArg {
    /// No compression.
    None,
    /// lz4 block.
    #[value(name = "lz4_block")]
    Lz4Block,
    /// zstd.
    Zstd,
}

/// `--digester` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DigesterArg {
    /// blake3.
    Blake3,
    /// sha256.
    Sha256,
}

/// `--prefetch-policy` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrefetchPolicy {
    /// Read absolute paths from stdin into the prefetch table.
    Fs,
    /// Blob-level readahead (RAFS v5 only).
    Blob,
    /// No prefetch table.
    None,
}

fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else {
        s.parse()
    }
    .map_err(|e| format!("{s:?}: {e}"))?;
    build::check_chunk_size(v).map_err(|e| e.to_string())?;
    Ok(v)
}

/// `image create` flags.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Source directory or layer file (`-` reads the layer from stdin).
    pub source: PathBuf,
    /// Source type.
    #[arg(
        short = 't',
        long = "type",
        alias = "source-type",
        value_enum,
        default_value = "dir-rafs"
    )]
    pub source_type: SourceType,
    /// Output bootstrap.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// Directory for the data blob (named by its sha256).
    #[arg(short = 'D', long)]
    pub blob_dir: Option<PathBuf>,
    /// Explicit data blob path.
    #[arg(short = 'b', long)]
    pub blob: Option<PathBuf>,
    /// Chunk size: power of two, 0x1000..=0x1000000 (hex or decimal).
    #[arg(long, value_parser = parse_chunk_size, default_value = "0x100000")]
    pub chunk_size: u32,
    /// Chunk compressor.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compressor: CompressorArg,
    /// Chunk digester.
    #[arg(long, value_enum, default_value = "blake3")]
    pub digester: DigesterArg,
    /// RAFS version (only 6 is written).
    #[arg(long, default_value = "6")]
    pub fs_version: u32,
    /// Whiteout spelling in the source.
    #[arg(long, value_enum, default_value = "oci")]
    pub whiteout_spec: WhiteoutSpec,
    /// Build as a layer on top of this bootstrap (dedup against it, apply whiteouts).
    #[arg(long)]
    pub parent_bootstrap: Option<PathBuf>,
    /// Place uncompressed chunks at 4 KiB aligned offsets (with `--compressor none` the blob
    /// is then directly mountable by the kernel).
    #[arg(long)]
    pub aligned_chunk: bool,
    /// Prefetch policy; `fs` reads the list of paths from stdin.
    #[arg(long, value_enum, default_value = "none")]
    pub prefetch_policy: PrefetchPolicy,
    /// Skip the metadata check of the result.
    #[arg(long)]
    pub disable_check: bool,
    /// Accepted for nydus-image compatibility: our builds are always repeatable.
    #[arg(long)]
    pub repeatable: bool,
    /// Also write the JSON result to this file (nydus-image's `--output-json`).
    #[arg(long, short = 'J')]
    pub output_json: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `image merge` flags.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Layer bootstraps, lowest first.
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
    /// Output bootstrap.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// A bootstrap below all sources.
    #[arg(long)]
    pub parent_bootstrap: Option<PathBuf>,
    /// Accepted for nydus-image compatibility (blob ids come from the layer bootstraps).
    #[arg(short = 'D', long)]
    pub blob_dir: Option<PathBuf>,
    /// Whiteout spelling in the layers.
    #[arg(long, value_enum, default_value = "oci")]
    pub whiteout_spec: WhiteoutSpec,
    /// Prefetch policy; `fs` reads the list of paths from stdin.
    #[arg(long, value_enum, default_value = "none")]
    pub prefetch_policy: PrefetchPolicy,
    /// Also write the JSON result to this file (nydus-image's `--output-json`).
    #[arg(long, short = 'J')]
    pub output_json: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `image inspect` flags.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Bootstrap to inspect.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// One-shot request: `stats`, `blobs`, `prefetch`, or `inode <path>`... (default: stats).
    #[arg(short = 'R', long, default_value = "stats")]
    pub request: String,
    /// Path for `--request inode` or `--request ls`.
    pub path: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `image check` flags.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Bootstrap to check.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// Blob directory: also verify every chunk's data.
    #[arg(short = 'D', long)]
    pub blob_dir: Option<PathBuf>,
    /// Single blob file to verify against.
    #[arg(short = 'b', long)]
    pub blob: Option<PathBuf>,
    /// List every problem.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Also write the JSON result to this file (nydus-image's `--output-json`).
    #[arg(long, short = 'J')]
    pub output_json: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `image unpack` flags.
#[derive(Args, Debug)]
pub struct UnpackArgs {
    /// Bootstrap to unpack.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// Blob directory.
    #[arg(short = 'D', long)]
    pub blob_dir: Option<PathBuf>,
    /// Single blob file.
    #[arg(short = 'b', long)]
    pub blob: Option<PathBuf>,
    /// Output tar file (`-` for stdout), as nydus-image writes.
    #[arg(short = 'o', long, conflicts_with = "output_dir")]
    pub output: Option<PathBuf>,
    /// Output directory instead of a tar.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

/// `image export` flags.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Produce a raw block image (the only export format).
    #[arg(long, required = true)]
    pub block: bool,
    /// Bootstrap to export.
    #[arg(short = 'B', long)]
    pub bootstrap: PathBuf,
    /// Blob directory.
    #[arg(short = 'D', long, alias = "localfs-dir", alias = "blob-dir")]
    pub localfs_dir: PathBuf,
    /// Output image.
    #[arg(short = 'O', long)]
    pub output: PathBuf,
}

/// Run an image subcommand.
pub fn run(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Create(a) => create(a),
        ImageCmd::Merge(a) => merge(a),
        ImageCmd::Inspect(a) => inspect(a),
        ImageCmd::Check(a) => check_cmd(a),
        ImageCmd::Unpack(a) => unpack_cmd(a),
        ImageCmd::Export(a) => export_cmd(a),
        ImageCmd::Optimize(a) => super::optimize::run(a),
    }
}

/// Read the prefetch list (absolute paths, one per line) from stdin.
fn read_prefetch_list(policy: PrefetchPolicy) -> Result<Vec<Vec<u8>>> {
    match policy {
        PrefetchPolicy::None => Ok(Vec::new()),
        PrefetchPolicy::Blob => {
            bail!("--prefetch-policy blob records a blob readahead range, which only RAFS v5 has; use fs")
        }
        PrefetchPolicy::Fs => {
            let mut out = Vec::new();
            for line in std::io::stdin().lock().split(b'\n') {
                let line = line.context("reading the prefetch list from stdin")?;
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                if !line.starts_with(b"/") {
                    bail!(
                        "prefetch list: {:?} is not an absolute path",
                        String::from_utf8_lossy(line)
                    );
                }
                out.push(line.to_vec());
            }
            Ok(out)
        }
    }
}

/// Write bytes to `path` atomically: temporary file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.strata-tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    crate::sys::fsync_dir(dir)?;
    Ok(())
}

/// Serialise a tree, write it atomically and re-read it as a check.
pub fn write_tree(tree: &Tree, path: &Path, verify: bool) -> Result<writer::WriteReport> {
    let (bytes, report) = writer::write_bootstrap(tree)?;
    if verify {
        let img =
            Image::from_bytes(bytes.clone()).context("the written bootstrap does not read back")?;
        check::check(&img, None).context("the written bootstrap fails its check")?;
    }
    write_atomic(path, &bytes)?;
    Ok(report)
}

fn write_json_file(path: Option<&Path>, v: &serde_json::Value) -> Result<()> {
    if let Some(p) = path {
        write_atomic(p, serde_json::to_string_pretty(v)?.as_bytes())
            .with_context(|| format!("--output-json {}", p.display()))?;
    }
    Ok(())
}

fn load(path: &Path) -> Result<Image> {
    Image::open(path).with_context(|| format!("bootstrap {}", path.display()))
}

fn create(a: CreateArgs) -> Result<()> {
    if a.fs_version != 6 {
        bail!("--fs-version {}: strata writes RAFS v6 only", a.fs_version);
    }
    let target = match (&a.blob, &a.blob_dir) {
        (Some(b), _) => BlobTarget::File(b.clone()),
        (None, Some(d)) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating blob dir {}", d.display()))?;
            BlobTarget::Dir(d.clone())
        }
        (None, None) => bail!("give --blob-dir (-D) or --blob (-b) for the data blob"),
    };
    let opts = BuildOptions {
        config: ImageConfig {
            chunk_size: a.chunk_size,
            compressor: match a.compressor {
                CompressorArg::None => Compressor::None,
                CompressorArg::Lz4Block => Compressor::Lz4Block,
                CompressorArg::Zstd => Compressor::Zstd,
            },
            digester: match a.digester {
                DigesterArg::Blake3 => Digester::Blake3,
                DigesterArg::Sha256 => Digester::Sha256,
            },
        },
        aligned_chunk: a.aligned_chunk,
        whiteout_spec: a.whiteout_spec,
        prefetch: read_prefetch_list(a.prefetch_policy)?,
        blob: target,
        progress: !a.json,
    };
    let parent = match &a.parent_bootstrap {
        Some(p) => Some(load_tree(&load(p)?)?),
        None => None,
    };
    if let Some(p) = &parent {
        if p.config.chunk_size != opts.config.chunk_size
            || p.config.digester != opts.config.digester
        {
            bail!(
                "--parent-bootstrap uses chunk size {:#x} and {}; build with the same",
                p.config.chunk_size,
                p.config.digester
            );
        }
    }
    let started = std::time::Instant::now();
    let out = match a.source_type {
        SourceType::DirRafs => build::build_dir(&a.source, parent, &opts)?,
        _ => {
            let input: Box<dyn std::io::Read> = if a.source.as_os_str() == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(&a.source)
                        .with_context(|| format!("opening {}", a.source.display()))?,
                )
            };
            build::build_tar(input, parent, &opts)?
        }
    };
    let report = write_tree(&out.tree, &a.bootstrap, !a.disable_check)?;
    let secs = started.elapsed().as_secs_f64();
    let blob = out.blob.as_ref().map(|(e, p)| {
        serde_json::json!({"blob_id": e.blob_id, "path": p, "compressed_size": e.compressed_size,
            "uncompressed_size": e.uncompressed_size, "chunk_count": e.chunk_count})
    });
    let v = serde_json::json!({
        "bootstrap": a.bootstrap, "bootstrap_size": report.bootstrap_size, "inodes": report.inodes,
        "chunks": report.chunks, "blob": blob, "blobs": out.tree.blobs.iter().map(|b| &b.blob_id).collect::<Vec<_>>(),
        "stats": out.stats, "seconds": secs,
    });
    write_json_file(a.output_json.as_deref(), &v)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "bootstrap {} ({} inodes, {} bytes)",
            a.bootstrap.display(),
            report.inodes,
            report.bootstrap_size
        );
        match &out.blob {
            Some((e, p)) => println!(
                "blob {} ({} chunks, {} bytes stored, {} deduplicated) at {}",
                e.blob_id,
                e.chunk_count,
                e.compressed_size,
                out.stats.chunks_deduplicated,
                p.display()
            ),
            None => println!("no new data blob (no file data, or all of it deduplicated)"),
        }
    }
    Ok(())
}

fn merge(a: MergeArgs) -> Result<()> {
    let mut base: Option<Tree> = match &a.parent_bootstrap {
        Some(p) => Some(load_tree(&load(p)?)?),
        None => None,
    };
    for src in &a.sources {
        let layer = load_tree(&load(src)?)?;
        base = Some(match base {
            None => {
                let mut t = layer;
                crate::rafs::merge::strip_whiteouts(&mut t, a.whiteout_spec);
                t
            }
            Some(mut b) => {
                apply_layer(&mut b, &layer, a.whiteout_spec)
                    .with_context(|| format!("merging {}", src.display()))?;
                b
            }
        });
    }
    let mut tree = base.context("no source bootstraps")?;
    let prefetch = read_prefetch_list(a.prefetch_policy)?;
    if !prefetch.is_empty() {
        tree.prefetch.clear();
        for p in &prefetch {
            let id = tree.lookup(p).with_context(|| {
                format!("prefetch list names {}, not in the image", String::from_utf8_lossy(p))
            })?;
            tree.prefetch.push(id);
        }
    }
    let report = write_tree(&tree, &a.bootstrap, true)?;
    let v = serde_json::json!({"bootstrap": a.bootstrap, "inodes": report.inodes, "chunks": report.chunks,
        "blobs": tree.blobs.iter().map(|b| &b.blob_id).collect::<Vec<_>>()});
    write_json_file(a.output_json.as_deref(), &v)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "merged {} layers into {} ({} inodes, {} blobs)",
            a.sources.len(),
            a.bootstrap.display(),
            report.inodes,
            tree.blobs.len()
        );
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    let img = load(&a.bootstrap)?;
    let v = match a.request.as_str() {
        "stats" => {
            let r = check::check(&img, None)?;
            serde_json::json!({
                "kind": img.kind, "magic": format!("{:#x}", crate::rafs::layout::EROFS_MAGIC),
                "block_size": 1u32 << img.sb.blkszbits, "root_nid": img.sb.root_nid,
                "inodes": img.sb.inos, "meta_blkaddr": img.sb.meta_blkaddr, "blocks": img.sb.blocks,
                "flags": img.ext.as_ref().map(|e| format!("{:#x}", e.flags)),
                "chunk_size": img.chunk_size, "compressor": img.compressor, "digester": img.digester,
                "blobs": img.blobs.len(), "chunks": img.chunk_count(), "prefetch_entries": img.prefetch.len(),
                "files": r.files, "file_bytes": r.file_bytes, "entries": r.entries,
            })
        }
        "blobs" => serde_json::Value::Array(
            img.blobs
                .iter()
                .map(|b| {
                    serde_json::json!({"blob_id": b.blob_id, "index": b.blob_index, "chunk_size": b.chunk_size,
                        "chunk_count": b.chunk_count, "compressor": Compressor::from_u32(b.compression_algo).map(|c| c.name()).unwrap_or("?"),
                        "digester": Digester::from_u32(b.digest_algo).map(|d| d.name()).unwrap_or("?"),
                        "features": format!("{:#x}", b.features), "compressed_size": b.compressed_size,
                        "uncompressed_size": b.uncompressed_size})
                })
                .collect(),
        ),
        "prefetch" => {
            let mut paths = std::collections::HashMap::new();
            img.walk::<crate::rafs::reader::ReadError>(|p, i| {
                paths.entry(i.nid).or_insert_with(|| String::from_utf8_lossy(p).into_owned());
                Ok(true)
            })?;
            serde_json::Value::Array(
                img.prefetch
                    .iter()
                    .map(|n| serde_json::json!({"nid": n, "path": paths.get(n)}))
                    .collect(),
            )
        }
        "inode" | "ls" => {
            let p = a.path.clone().context("--request inode|ls needs a path")?;
            let inode = img.resolve(p.as_bytes())?.with_context(|| format!("{p}: not in the image"))?;
            if a.request == "ls" {
                serde_json::Value::Array(
                    img.dir_entries(&inode)?
                        .into_iter()
                        .map(|e| serde_json::json!({"name": String::from_utf8_lossy(&e.name), "nid": e.nid, "type": e.file_type}))
                        .collect(),
                )
            } else {
                let d = &inode.disk;
                let chunks = if inode.is_reg() { img.chunks(&inode)? } else { Vec::new() };
                serde_json::json!({
                    "nid": inode.nid, "ino": d.ino, "mode": format!("{:o}", d.mode), "nlink": d.nlink,
                    "uid": d.uid, "gid": d.gid, "size": d.size, "mtime": d.mtime, "mtime_nsec": d.mtime_nsec,
                    "extended": d.extended, "layout": d.layout, "rdev": inode.rdev(),
                    "xattrs": img.xattrs(&inode)?.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned())).collect::<std::collections::BTreeMap<_, _>>(),
                    "chunks": chunks.iter().map(|c| c.map(|c| serde_json::json!({"blob_index": c.blob_index, "index": c.index,
                        "digest": hex::encode(c.digest), "compressed_offset": c.compressed_offset, "compressed_size": c.compressed_size,
                        "uncompressed_offset": c.uncompressed_offset, "uncompressed_size": c.uncompressed_size}))).collect::<Vec<_>>(),
                })
            }
        }
        other => bail!("--request {other:?}: expected stats, blobs, prefetch, inode or ls"),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_plain(&v, 0);
    }
    Ok(())
}

fn print_plain(v: &serde_json::Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if v.is_object() || v.is_array() {
                    println!("{pad}{k}:");
                    print_plain(v, depth + 1);
                } else {
                    println!("{pad}{k}: {}", v.to_string().trim_matches('"'));
                }
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                if v.is_object() {
                    println!("{pad}-");
                    print_plain(v, depth + 1);
                } else {
                    println!("{pad}- {}", v.to_string().trim_matches('"'));
                }
            }
        }
        v => println!("{pad}{}", v.to_string().trim_matches('"')),
    }
}

/// A chunk source over a blob directory or one blob file.
pub fn direct_reader(
    img: &Image,
    dir: Option<&Path>,
    file: Option<&Path>,
) -> Result<Option<DirectReader>> {
    let backend: Arc<dyn crate::storage::backend::BlobBackend> = match (dir, file) {
        (_, Some(f)) => Arc::new(LocalFs::from_blob_file(f)),
        (Some(d), None) => Arc::new(LocalFs::new(d)),
        (None, None) => return Ok(None),
    };
    Ok(Some(DirectReader::new(backend, &img.blobs)?))
}

fn check_cmd(a: CheckArgs) -> Result<()> {
    let img = load(&a.bootstrap)?;
    let src = direct_reader(&img, a.blob_dir.as_deref(), a.blob.as_deref())?;
    let r = check::check(&img, src.as_ref().map(|s| s as &dyn crate::rafs::chunk::ChunkReader))?;
    write_json_file(a.output_json.as_deref(), &serde_json::to_value(&r)?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: {} inodes, {} files, {} bytes, {} chunks{}",
            a.bootstrap.display(),
            r.inodes,
            r.files,
            r.file_bytes,
            r.chunks,
            if src.is_some() { format!(", {} verified", r.chunks_verified) } else { String::new() }
        );
        let shown = if a.verbose { r.chunk_errors.len() } else { r.chunk_errors.len().min(10) };
        for e in &r.chunk_errors[..shown] {
            eprintln!("error: {e}");
        }
    }
    if !r.chunk_errors.is_empty() {
        bail!("{} of {} chunks failed verification", r.chunk_errors.len(), r.chunks);
    }
    Ok(())
}

fn unpack_cmd(a: UnpackArgs) -> Result<()> {
    let img = load(&a.bootstrap)?;
    let src = direct_reader(&img, a.blob_dir.as_deref(), a.blob.as_deref())?;
    let empty = DirectReader::new(Arc::new(LocalFs::new("/nonexistent")), &[])?;
    let src: &dyn crate::rafs::chunk::ChunkReader = match &src {
        Some(s) => s,
        None if img.blobs.is_empty() => &empty,
        None => bail!("the image has data blobs: give --blob-dir (-D) or --blob (-b)"),
    };
    match (&a.output, &a.output_dir) {
        (_, Some(dir)) => unpack::unpack_to_dir(&img, src, dir)?,
        (Some(p), None) if p.as_os_str() == "-" => {
            unpack::unpack_to_tar(&img, src, std::io::BufWriter::new(std::io::stdout().lock()))?
        }
        (Some(p), None) => {
            let tmp = p.with_extension("strata-tmp");
            let f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            unpack::unpack_to_tar(&img, src, std::io::BufWriter::new(&f))?;
            f.sync_all()?;
            std::fs::rename(&tmp, p)?;
        }
        (None, None) => bail!("give --output FILE (tar) or --output-dir DIR"),
    }
    Ok(())
}

fn export_cmd(a: ExportArgs) -> Result<()> {
    let img = load(&a.bootstrap)?;
    let src = direct_reader(&img, Some(&a.localfs_dir), None)?.context("blob dir")?;
    let size = export::export_block(&img, &src, &a.output)?;
    println!("{}: {} bytes", a.output.display(), size);
    Ok(())
}
