//! Criterion benchmarks of the RAFS read and build paths.
//!
//! * `lookup/*`: per-call cost of the reader on one image built once (4 KiB chunks, a 64 MiB
//!   random file `/big.bin` = 16,384 chunks, and `/dir` with 2,000 small files):
//!   `Image::chunks` of the big file, `Image::resolve` of the last name in `/dir`, and a 4 KiB
//!   `Image::read` at a random 4 KiB-aligned offset of the big file through a warm
//!   `ChunkCache` (plus the same read of a small file, for contrast).
//! * `build/*`: `build_dir` of a 32 MiB tree (half compressible text in many small files, half
//!   random bytes) with each compressor, reported as source bytes per second.
//!
//! All data comes from a seeded xorshift64 generator, so every run builds the same bytes.
//! Run with `cargo bench --bench rafs`; see docs/benchmarks.md for results.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use strata::rafs::blob::BlobTarget;
use strata::rafs::build::{build_dir, BuildOptions};
use strata::rafs::layout::{Compressor, Digester};
use strata::rafs::merge::WhiteoutSpec;
use strata::rafs::reader::Image;
use strata::rafs::tree::ImageConfig;
use strata::rafs::writer::write_bootstrap;
use strata::storage::{ChunkCache, LocalFs};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Size of `/big.bin` in the lookup image.
const BIG_FILE: usize = 64 * MIB;
/// Chunk size of the lookup image.
const LOOKUP_CHUNK: u32 = 4 * KIB as u32;
/// Number of small files in `/dir` of the lookup image.
const SMALL_FILES: usize = 2_000;
/// Bytes of each half (text, random) of the build tree.
const BUILD_HALF: usize = 16 * MIB;

/// xorshift64 (13, 7, 17): a tiny, fixed pseudo-random sequence.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish value in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// `len` incompressible bytes.
    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// `len` bytes of log-like text: words from a small vocabulary and numbers, so both lz4
    /// and zstd find plenty to compress, but no two files are the same.
    fn text_bytes(&mut self, len: usize) -> Vec<u8> {
        const WORDS: [&str; 24] = [
            "level=info",
            "level=warn",
            "level=debug",
            "msg=\"request served\"",
            "msg=\"cache miss\"",
            "msg=\"chunk fetched\"",
            "path=/usr/lib/x86_64-linux-gnu",
            "path=/etc/ssl/certs",
            "path=/var/lib/containerd",
            "blob=sha256",
            "status=200",
            "status=404",
            "method=GET",
            "method=HEAD",
            "component=fuse",
            "component=cache",
            "retry=0",
            "retry=1",
            "user=root",
            "pid",
            "bytes",
            "elapsed_ms",
            "the",
            "and",
        ];
        let mut out = Vec::with_capacity(len + 64);
        let mut words_on_line = 0;
        while out.len() < len {
            let r = self.next();
            if r % 4 == 0 {
                out.extend_from_slice(format!("{}", (r >> 8) % 100_000).as_bytes());
            } else {
                out.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()].as_bytes());
            }
            words_on_line += 1;
            if words_on_line == 12 {
                out.push(b'\n');
                words_on_line = 0;
            } else {
                out.push(b' ');
            }
        }
        out.truncate(len);
        out
    }
}

fn write(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create source dir");
    }
    std::fs::write(path, data).expect("write source file");
}

fn options(chunk_size: u32, compressor: Compressor, blobs: &Path) -> BuildOptions {
    BuildOptions {
        config: ImageConfig { chunk_size, compressor, digester: Digester::Blake3 },
        aligned_chunk: false,
        whiteout_spec: WhiteoutSpec::Oci,
        prefetch: Vec::new(),
        blob: BlobTarget::Dir(blobs.to_path_buf()),
        progress: false,
    }
}

/// Everything the lookup benchmarks need; the tempdir lives as long as the image and cache.
struct LookupImage {
    _dir: tempfile::TempDir,
    img: Image,
    cache: ChunkCache,
}

/// Source tree: `/big.bin` (64 MiB random) and `/dir/file-00000` .. `/dir/file-01999`
/// (1 KiB to 12 KiB of text each; the last one exactly 8 KiB). Built with 4 KiB chunks and
/// zstd, written as a bootstrap, opened, and the whole big file read once through a
/// `ChunkCache` so every one of its chunks is ready.
fn lookup_image() -> LookupImage {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).expect("blob dir");
    let mut rng = XorShift::new(0x5EED_0001);
    write(&src.join("big.bin"), &rng.random_bytes(BIG_FILE));
    for i in 0..SMALL_FILES {
        let size = if i == SMALL_FILES - 1 { 8 * KIB } else { rng.range(KIB, 12 * KIB) };
        write(&src.join(format!("dir/file-{i:05}")), &rng.text_bytes(size));
    }

    let out = build_dir(&src, None, &options(LOOKUP_CHUNK, Compressor::Zstd, &blobs))
        .expect("build lookup image");
    let (bytes, _) = write_bootstrap(&out.tree).expect("serialise bootstrap");
    let boot = dir.path().join("bootstrap");
    std::fs::write(&boot, bytes).expect("write bootstrap");
    let img = Image::open(&boot).expect("open bootstrap");
    eprintln!(
        "lookup image: {} byte bootstrap, {} chunks in the chunk table",
        img.size(),
        img.chunk_count()
    );

    let backend = Arc::new(LocalFs::new(&blobs));
    let cache =
        ChunkCache::open(&dir.path().join("cache"), backend, &img.blobs, false).expect("cache");
    let big = img.resolve(b"/big.bin").expect("resolve").expect("/big.bin in image");
    let mut off = 0;
    while off < big.disk.size {
        let got = img.read(&big, off, MIB as u64, &cache).expect("warm read");
        off += got.len() as u64;
    }
    cache.flush().expect("flush cache");
    LookupImage { _dir: dir, img, cache }
}

fn bench_lookup(c: &mut Criterion) {
    let li = lookup_image();
    let (img, cache) = (&li.img, &li.cache);
    let big = img.resolve(b"/big.bin").expect("resolve").expect("/big.bin");
    let small = img.resolve(b"/dir/file-01999").expect("resolve").expect("/dir/file-01999");
    let nchunks = img.chunks(&big).expect("chunks").len();
    assert_eq!(nchunks, BIG_FILE / LOOKUP_CHUNK as usize);
    let misses_before = cache.metrics().misses;

    let mut g = c.benchmark_group("lookup");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));

    g.throughput(Throughput::Elements(nchunks as u64));
    g.bench_function("chunks/big.bin_64MiB_4KiB", |b| {
        b.iter(|| img.chunks(black_box(&big)).expect("chunks"))
    });

    g.throughput(Throughput::Elements(1));
    g.bench_function("resolve/dir/file-01999", |b| {
        b.iter(|| img.resolve(black_box(b"/dir/file-01999")).expect("resolve").expect("found"))
    });

    // Same offset sequence as the reference rand workload: xorshift64 from the golden ratio,
    // block = x % blocks, offset = block * 4 KiB.
    let blocks = big.disk.size / 4096;
    let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("read_4KiB_warm/big.bin_random_offset", |b| {
        b.iter(|| {
            let off = (rng.next() % blocks) * 4096;
            let data = img.read(&big, black_box(off), 4096, cache).expect("read");
            debug_assert_eq!(data.len(), 4096);
            data
        })
    });
    // For contrast: the same 4 KiB read from a 2-chunk file.
    g.bench_function("read_4KiB_warm/dir/file-01999_offset_0", |b| {
        b.iter(|| img.read(&small, black_box(0), 4096, cache).expect("read"))
    });
    g.finish();

    // Every read above must have been a cache hit: the small file was warmed by its first
    // iteration (warm-up), the big file before the group.
    let m = cache.metrics();
    assert!(
        m.misses - misses_before <= 2,
        "lookup benchmarks missed the cache {} times",
        m.misses - misses_before
    );
}

/// Write files of `lo..=hi` bytes (the last one shorter) until `budget` bytes are written;
/// file `i` goes to `name(i)`.
fn fill(
    rng: &mut XorShift,
    budget: usize,
    (lo, hi): (usize, usize),
    text: bool,
    name: impl Fn(usize) -> PathBuf,
) {
    let mut left = budget;
    let mut i = 0;
    while left > 0 {
        let n = rng.range(lo, hi).min(left);
        let data = if text { rng.text_bytes(n) } else { rng.random_bytes(n) };
        write(&name(i), &data);
        left -= n;
        i += 1;
    }
}

/// The build source: `text/dNN/file-NNNN.txt` (16 MiB of text in files of 512 B..64 KiB) and
/// `bin/` (16 MiB random: three 4 MiB files and files of 4 KiB..256 KiB). Returns its data size.
fn build_tree(root: &Path) -> u64 {
    let mut rng = XorShift::new(0x5EED_0002);
    fill(&mut rng, BUILD_HALF, (512, 64 * KIB), true, |i| {
        root.join(format!("text/d{:02}/file-{i:04}.txt", i / 64))
    });
    for i in 0..3 {
        write(&root.join(format!("bin/large-{i}.bin")), &rng.random_bytes(4 * MIB));
    }
    fill(&mut rng, BUILD_HALF - 12 * MIB, (4 * KIB, 256 * KIB), false, |i| {
        root.join(format!("bin/small/file-{i:04}.bin"))
    });
    (2 * BUILD_HALF) as u64
}

fn bench_build(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let total = build_tree(&src);

    let mut g = c.benchmark_group("build");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(total));
    for compressor in [Compressor::None, Compressor::Lz4Block, Compressor::Zstd] {
        let blobs = dir.path().join(format!("blobs-{}", compressor.name()));
        std::fs::create_dir_all(&blobs).expect("blob dir");
        // Default (1 MiB) chunks, as `strata image create` uses.
        let opts = options(ImageConfig::default().chunk_size, compressor, &blobs);
        let once = build_dir(&src, None, &opts).expect("build");
        eprintln!(
            "build_dir_32MiB/{}: {} source bytes -> {} bytes of chunk data in the blob ({:.3})",
            compressor.name(),
            total,
            once.stats.blob_data_bytes,
            once.stats.blob_data_bytes as f64 / total as f64
        );
        g.bench_with_input(
            BenchmarkId::new("build_dir_32MiB", compressor.name()),
            &opts,
            |b, o| {
                b.iter(|| {
                    let out = build_dir(black_box(&src), None, o).expect("build");
                    debug_assert_eq!(out.stats.bytes_in, total);
                    out.stats.blob_data_bytes
                })
            },
        );
    }
    g.finish();
}

/// The generated group function has no doc comment; keep `missing_docs` quiet about it only.
#[allow(missing_docs)]
mod group {
    use super::{bench_build, bench_lookup};
    criterion::criterion_group!(benches, bench_lookup, bench_build);
}

criterion_main!(group::benches);
