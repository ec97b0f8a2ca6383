//! The prefetch planner: touches -> ordered chunks -> merged ranged requests. Pure.
//!
//! Two steps, each a function of values:
//!
//! 1. [`order_chunks`]: each touch is resolved through a [`FileSource`] to the file's chunks it
//!    covers; chunks are listed in the order they were first touched. A chunk already listed
//!    (touched again, or shared by several files through dedup) is skipped, as is a chunk the
//!    caller says is cached. Chunks are identified by (blob index, chunk index), the identity
//!    the chunk cache keeps readiness by.
//! 2. [`merge_requests`]: the ordered chunks of each blob, taken by stored offset, are merged
//!    into ranged backend requests: a chunk joins the previous request when it is in the same
//!    blob, the gap between them is at most `max_gap` bytes, and the request stays within
//!    `merging_size` bytes. Requests never span blobs. They are then ordered by the first-touch
//!    position of their earliest chunk, so the data needed first is asked for first while a
//!    workload that read a file backwards still gets one request for it.
//!
//! Sizes and offsets here are of stored (possibly compressed) bytes: what a backend serves.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use serde::ser::SerializeStruct;
use serde::Serialize;

use super::input::{Extent, Touch};
use super::source::{Entry, FileSource};
use super::Error;
use crate::rafs::chunk::ChunkRef;

/// nydusd's default `merging_size` (`fs_prefetch.merging_size`, v2 `batch_size`): 1 MiB.
pub const DEFAULT_MERGING_SIZE: u64 = 1 << 20;

/// How many missing paths a plan names (the rest are only counted).
pub const MISSING_PATHS_SHOWN: usize = 16;

/// Knobs of [`merge_requests`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Largest request, in bytes. A chunk larger than this is a request of its own; 0 means no
    /// merging at all (one request per chunk).
    pub merging_size: u64,
    /// Largest gap of unplanned bytes a request may cover to join two chunks. `None`: 1/128 of
    /// `merging_size`, nydusd's rule (8 KiB for 1 MiB).
    pub max_gap: Option<u64>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self { merging_size: DEFAULT_MERGING_SIZE, max_gap: None }
    }
}

impl PlanOptions {
    /// The gap tolerance in effect.
    pub fn gap(&self) -> u64 {
        self.max_gap.unwrap_or(self.merging_size / 128)
    }
}

/// One chunk of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChunk {
    /// The chunk (blob, stored range, uncompressed range, digest).
    pub chunk: ChunkRef,
    /// The file whose touch put it in the plan first.
    pub path: Arc<str>,
    /// Its position in that file (file chunk index).
    pub file_chunk: u64,
}

impl Serialize for PlannedChunk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = &self.chunk;
        let mut st = s.serialize_struct("PlannedChunk", 8)?;
        st.serialize_field("blob_index", &c.blob_index)?;
        st.serialize_field("index", &c.index)?;
        st.serialize_field("compressed_offset", &c.compressed_offset)?;
        st.serialize_field("compressed_size", &c.compressed_size)?;
        st.serialize_field("uncompressed_size", &c.uncompressed_size)?;
        st.serialize_field("digest", &hex::encode(c.digest))?;
        st.serialize_field("path", &*self.path)?;
        st.serialize_field("file_chunk", &self.file_chunk)?;
        st.end()
    }
}

/// One ranged backend request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Blob index in the image's blob table.
    pub blob_index: u32,
    /// First stored byte.
    pub offset: u64,
    /// Bytes asked for.
    pub len: u64,
    /// The chunks it brings, as indexes into [`Plan::chunks`], by stored offset.
    pub chunks: Vec<usize>,
    /// Bytes of the range that belong to no planned chunk (tolerated gaps).
    pub gap_bytes: u64,
}

impl Request {
    /// First-touch position of the request: the smallest index into [`Plan::chunks`].
    pub fn first_touch(&self) -> usize {
        self.chunks.iter().copied().min().unwrap_or(usize::MAX)
    }
}

/// Counters of a planning run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlanStats {
    /// Touches read.
    pub touches: u64,
    /// Distinct regular files with at least one touch (directories expanded).
    pub files: u64,
    /// Touches whose path the image does not have.
    pub missing: u64,
    /// The first [`MISSING_PATHS_SHOWN`] distinct missing paths.
    pub missing_paths: Vec<String>,
    /// Touches of something that holds no data (symlink, device, ...), or of a directory with
    /// a byte range.
    pub no_data: u64,
    /// Chunk references the touches covered, duplicates included.
    pub chunk_refs: u64,
    /// References to a chunk already planned (touched again, or shared with another file).
    pub duplicates: u64,
    /// Chunks left out because they are cached.
    pub cached: u64,
    /// File chunks that are holes (no data to fetch).
    pub holes: u64,
    /// Chunks planned.
    pub chunks: u64,
    /// Stored bytes of the planned chunks.
    pub chunk_bytes: u64,
    /// Requests.
    pub requests: u64,
    /// Bytes the requests ask for (chunk bytes plus tolerated gaps).
    pub request_bytes: u64,
    /// Bytes of tolerated gaps.
    pub gap_bytes: u64,
}

/// The outcome of [`order_chunks`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ordered {
    /// Chunks to fetch, in first-touch order, each once.
    pub chunks: Vec<PlannedChunk>,
    /// Counters (request fields are zero).
    pub stats: PlanStats,
}

/// A prefetch plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Counters.
    pub stats: PlanStats,
    /// Chunks to fetch, in first-touch order, each once.
    pub chunks: Vec<PlannedChunk>,
    /// Ranged requests fetching them, in first-touch order of their earliest chunk.
    pub requests: Vec<Request>,
}

/// Touches -> chunks -> requests: [`order_chunks`] then [`merge_requests`]. `is_cached` says
/// which chunks need no fetch.
pub fn plan(
    touches: &[Touch],
    src: &dyn FileSource,
    is_cached: &dyn Fn(&ChunkRef) -> bool,
    opts: &PlanOptions,
) -> Result<Plan, Error> {
    let Ordered { chunks, mut stats } = order_chunks(touches, src, is_cached)?;
    let requests = merge_requests(&chunks, opts);
    stats.requests = requests.len() as u64;
    stats.request_bytes = requests.iter().map(|r| r.len).sum();
    stats.gap_bytes = requests.iter().map(|r| r.gap_bytes).sum();
    Ok(Plan { stats, chunks, requests })
}

/// A resolved path: the path (shared by every chunk it contributes) and what it names.
type Found = Option<(Arc<str>, Rc<Entry>)>;

/// Resolves paths through `src` once each, and remembers which directories were expanded.
struct Resolver<'a> {
    src: &'a dyn FileSource,
    entries: HashMap<String, Found>,
    expanded_dirs: HashSet<u64>,
    files_seen: HashSet<Arc<str>>,
}

impl Resolver<'_> {
    fn get(&mut self, path: &str) -> Result<Found, Error> {
        if let Some(found) = self.entries.get(path) {
            return Ok(found.clone());
        }
        let found = self.src.entry(path)?.map(|e| (Arc::<str>::from(path), Rc::new(e)));
        self.entries.insert(path.to_string(), found.clone());
        Ok(found)
    }
}

/// The file chunk indexes `extent` covers in a file of `size` bytes and `count` chunks of
/// `chunk_size` bytes (clipped to the file; empty when nothing is covered).
fn covered(extent: Extent, size: u64, count: u64, chunk_size: u64) -> std::ops::Range<u64> {
    match extent {
        Extent::Whole => 0..count,
        // Without a chunk size (not a chunked image) a range cannot be mapped: take the file.
        _ if chunk_size == 0 => 0..count,
        Extent::Bytes { offset, len } => {
            let end = offset.saturating_add(len).min(size);
            if offset >= end {
                return 0..0;
            }
            (offset / chunk_size).min(count)..((end - 1) / chunk_size + 1).min(count)
        }
        Extent::Chunks { first, last } => {
            if last < first {
                return 0..0;
            }
            u64::from(first).min(count)..(u64::from(last) + 1).min(count)
        }
    }
}

/// The chunks `touches` cover, in first-touch order, each chunk once, cached ones left out.
///
/// A whole-file touch of a directory stands for every regular file below it, depth first in
/// directory order; a directory is expanded once however often it is touched (which also
/// stops a malformed image's cycles). A path the image lacks is counted and named in the
/// stats, not an error: logs outlive images. Errors are only the image's own (malformed
/// metadata).
pub fn order_chunks(
    touches: &[Touch],
    src: &dyn FileSource,
    is_cached: &dyn Fn(&ChunkRef) -> bool,
) -> Result<Ordered, Error> {
    let chunk_size = src.chunk_size();
    let mut r = Resolver {
        src,
        entries: HashMap::new(),
        expanded_dirs: HashSet::new(),
        files_seen: HashSet::new(),
    };
    let mut out = Ordered::default();
    let mut planned: HashSet<(u32, u32)> = HashSet::new();
    let mut missing: HashSet<String> = HashSet::new();
    let stats = &mut out.stats;
    for touch in touches {
        stats.touches += 1;
        let Some((path, entry)) = r.get(&touch.path)? else {
            stats.missing += 1;
            if missing.len() < MISSING_PATHS_SHOWN && missing.insert(touch.path.clone()) {
                stats.missing_paths.push(touch.path.clone());
            }
            continue;
        };
        // Files this touch covers, with the extent that applies to each.
        let mut files: Vec<(Arc<str>, Rc<Entry>, Extent)> = Vec::new();
        match (&*entry, touch.extent) {
            (Entry::File { .. }, extent) => files.push((path, entry, extent)),
            (Entry::Dir { .. }, Extent::Whole) => {
                // Depth first, children in directory order: a stack fed in reverse.
                let mut stack = vec![(path, entry)];
                while let Some((p, e)) = stack.pop() {
                    match &*e {
                        Entry::File { .. } => files.push((p, e, Extent::Whole)),
                        Entry::Dir { id, children } => {
                            if !r.expanded_dirs.insert(*id) {
                                continue;
                            }
                            for child in children.iter().rev() {
                                if let Some((cp, ce)) = r.get(child)? {
                                    stack.push((cp, ce));
                                }
                            }
                        }
                        Entry::Other => {}
                    }
                }
            }
            _ => stats.no_data += 1,
        }
        for (path, entry, extent) in files {
            let Entry::File { size, chunks } = &*entry else { continue };
            if r.files_seen.insert(Arc::clone(&path)) {
                stats.files += 1;
            }
            for i in covered(extent, *size, chunks.len() as u64, chunk_size) {
                let Some(chunk) = chunks[i as usize] else {
                    stats.holes += 1;
                    continue;
                };
                stats.chunk_refs += 1;
                if !planned.insert((chunk.blob_index, chunk.index)) {
                    stats.duplicates += 1;
                    continue;
                }
                if is_cached(&chunk) {
                    stats.cached += 1;
                    continue;
                }
                stats.chunks += 1;
                stats.chunk_bytes += u64::from(chunk.compressed_size);
                out.chunks.push(PlannedChunk { chunk, path: Arc::clone(&path), file_chunk: i });
            }
        }
    }
    Ok(out)
}

/// Merge `chunks` (a plan's chunk list) into ranged requests, per blob, by stored offset,
/// within `opts`; requests are returned in first-touch order of their earliest chunk (see
/// the module docs). Chunks whose stored ranges overlap (two chunk entries over the same
/// bytes) share a request and their bytes are asked for once.
pub fn merge_requests(chunks: &[PlannedChunk], opts: &PlanOptions) -> Vec<Request> {
    let gap = opts.gap();
    let mut by_offset: Vec<usize> = (0..chunks.len()).collect();
    by_offset.sort_by_key(|&i| {
        let c = &chunks[i].chunk;
        (c.blob_index, c.compressed_offset, c.compressed_size, i)
    });
    let mut out: Vec<Request> = Vec::new();
    for i in by_offset {
        let c = &chunks[i].chunk;
        let start = c.compressed_offset;
        let end = start.saturating_add(u64::from(c.compressed_size));
        if let Some(r) = out.last_mut() {
            let r_end = r.offset + r.len;
            let joins = opts.merging_size > 0
                && r.blob_index == c.blob_index
                && start.saturating_sub(r_end) <= gap
                && end.max(r_end) - r.offset <= opts.merging_size;
            if joins {
                r.gap_bytes += start.saturating_sub(r_end);
                r.len = end.max(r_end) - r.offset;
                r.chunks.push(i);
                continue;
            }
        }
        out.push(Request {
            blob_index: c.blob_index,
            offset: start,
            len: end - start,
            chunks: vec![i],
            gap_bytes: 0,
        });
    }
    // Stable on equal keys, but keys are distinct: each chunk is in exactly one request.
    out.sort_by_key(Request::first_touch);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 4096;

    /// A table image: paths to entries.
    #[derive(Default)]
    struct Table {
        chunk_size: u64,
        map: HashMap<String, Entry>,
    }

    impl FileSource for Table {
        fn chunk_size(&self) -> u64 {
            self.chunk_size
        }
        fn entry(&self, path: &str) -> Result<Option<Entry>, Error> {
            Ok(self.map.get(path).cloned())
        }
    }

    /// Chunk `index` of blob `blob`, stored at `off` with `size` bytes.
    fn c(blob: u32, index: u32, off: u64, size: u32) -> ChunkRef {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&index.to_le_bytes());
        digest[4..8].copy_from_slice(&blob.to_le_bytes());
        ChunkRef {
            digest,
            blob_index: blob,
            index,
            compressed_offset: off,
            compressed_size: size,
            uncompressed_offset: u64::from(index) * CS,
            uncompressed_size: CS as u32,
            compressed: true,
        }
    }

    impl Table {
        fn new() -> Self {
            Self { chunk_size: CS, map: HashMap::new() }
        }
        fn file(mut self, path: &str, chunks: &[ChunkRef]) -> Self {
            let size = chunks.len() as u64 * CS;
            let chunks = chunks.iter().copied().map(Some).collect();
            self.map.insert(path.into(), Entry::File { size, chunks });
            self
        }
        fn sized(mut self, path: &str, size: u64, chunks: Vec<Option<ChunkRef>>) -> Self {
            self.map.insert(path.into(), Entry::File { size, chunks });
            self
        }
        fn dir(mut self, path: &str, id: u64, children: &[&str]) -> Self {
            let children = children.iter().map(|s| s.to_string()).collect();
            self.map.insert(path.into(), Entry::Dir { id, children });
            self
        }
    }

    fn never(_: &ChunkRef) -> bool {
        false
    }

    fn ids(p: &Plan) -> Vec<(u32, u32)> {
        p.chunks.iter().map(|c| (c.chunk.blob_index, c.chunk.index)).collect()
    }

    fn ranges(p: &Plan) -> Vec<(u32, u64, u64)> {
        p.requests.iter().map(|r| (r.blob_index, r.offset, r.len)).collect()
    }

    fn run(t: &Table, touches: &[Touch], opts: PlanOptions) -> Plan {
        plan(touches, t, &never, &opts).unwrap()
    }

    /// Blob 0 holds /a's chunks 0..4 at 0, 1000, 2000, 3000 (1000 bytes each); /b's chunks
    /// 4..6 follow at 4000, 5000.
    fn two_files() -> Table {
        Table::new()
            .file(
                "/a",
                &[c(0, 0, 0, 1000), c(0, 1, 1000, 1000), c(0, 2, 2000, 1000), c(0, 3, 3000, 1000)],
            )
            .file("/b", &[c(0, 4, 4000, 1000), c(0, 5, 5000, 1000)])
    }

    #[test]
    fn chunks_come_in_first_touch_order() {
        let t = two_files();
        type Case<'a> = (&'a [Touch], &'a [(u32, u32)]);
        let cases: &[Case] = &[
            (
                &[Touch::whole("/b"), Touch::whole("/a")],
                &[(0, 4), (0, 5), (0, 0), (0, 1), (0, 2), (0, 3)],
            ),
            (
                &[Touch::bytes("/a", 3 * CS, 1), Touch::bytes("/a", 0, 1), Touch::whole("/b")],
                &[(0, 3), (0, 0), (0, 4), (0, 5)],
            ),
            (&[Touch::bytes("/a", 2 * CS + 5, CS)], &[(0, 2), (0, 3)]),
        ];
        for (touches, want) in cases {
            let p = run(&t, touches, PlanOptions::default());
            assert_eq!(ids(&p), *want, "{touches:?}");
        }
    }

    #[test]
    fn requests_are_ordered_by_their_earliest_chunk() {
        // Touched backwards: one request (contiguous) but the chunk list keeps the order.
        let t = two_files();
        let touches: Vec<Touch> = (0..4).rev().map(|i| Touch::bytes("/a", i * CS, 1)).collect();
        let p = run(&t, &touches, PlanOptions::default());
        assert_eq!(ids(&p), vec![(0, 3), (0, 2), (0, 1), (0, 0)]);
        assert_eq!(ranges(&p), vec![(0, 0, 4000)]);
        assert_eq!(p.requests[0].chunks, vec![3, 2, 1, 0], "by offset");
        // Two requests (a gap too large between them): the later-offset one was touched first.
        let t = Table::new().file("/x", &[c(0, 0, 0, 100)]).file("/y", &[c(0, 1, 1 << 20, 100)]);
        let p = run(&t, &[Touch::whole("/y"), Touch::whole("/x")], PlanOptions::default());
        assert_eq!(ranges(&p), vec![(0, 1 << 20, 100), (0, 0, 100)]);
    }

    #[test]
    fn duplicates_are_planned_once() {
        let t = two_files();
        let touches = [
            Touch::bytes("/a", 0, 10),
            Touch::bytes("/a", 5, 10),
            Touch::whole("/a"),
            Touch::bytes("/a", 0, 2 * CS),
        ];
        let p = run(&t, &touches, PlanOptions::default());
        assert_eq!(ids(&p), vec![(0, 0), (0, 1), (0, 2), (0, 3)]);
        assert_eq!(p.stats.chunk_refs, 1 + 1 + 4 + 2);
        assert_eq!(p.stats.duplicates, 4);
        assert_eq!(p.stats.files, 1);
        assert_eq!(p.stats.touches, 4);
    }

    #[test]
    fn chunks_shared_by_files_are_fetched_once() {
        // /c and /d are the same content (dedup at build): both point at chunks 0 and 1.
        let shared = [c(0, 0, 0, 1000), c(0, 1, 1000, 1000)];
        let t = Table::new()
            .file("/c", &shared)
            .file("/d", &shared)
            .file("/e", &[shared[1], c(0, 2, 2000, 7)]);
        let p = run(
            &t,
            &[Touch::whole("/d"), Touch::whole("/c"), Touch::whole("/e")],
            PlanOptions::default(),
        );
        assert_eq!(ids(&p), vec![(0, 0), (0, 1), (0, 2)]);
        assert_eq!(&*p.chunks[0].path, "/d", "the first toucher is named");
        assert_eq!(p.stats.duplicates, 3);
        assert_eq!(p.stats.files, 3);
        assert_eq!(ranges(&p), vec![(0, 0, 2007)]);
        // Two chunk entries over the same stored bytes: one request, bytes asked for once.
        let t = Table::new().file("/f", &[c(1, 0, 500, 100), c(1, 1, 500, 100)]);
        let p = run(&t, &[Touch::whole("/f")], PlanOptions::default());
        assert_eq!(p.chunks.len(), 2);
        assert_eq!(ranges(&p), vec![(1, 500, 100)]);
        assert_eq!(p.stats.request_bytes, 100);
    }

    #[test]
    fn merging_size_caps_requests() {
        // Eight contiguous 256 KiB chunks.
        const K256: u32 = 256 << 10;
        let chunks: Vec<ChunkRef> = (0..8).map(|i| c(0, i, u64::from(i * K256), K256)).collect();
        let t = Table::new().file("/big", &chunks);
        let whole = [Touch::whole("/big")];
        let cases: &[(u64, &[u64])] = &[
            (1 << 20, &[1 << 20, 1 << 20]),
            (512 << 10, &[512 << 10; 4]),
            ((512 << 10) + 1, &[512 << 10; 4]),
            (100, &[256 << 10; 8]), // a chunk larger than the cap stands alone
            (0, &[256 << 10; 8]),   // 0: no merging
            (u64::MAX, &[2 << 20]),
        ];
        for (merging_size, lens) in cases {
            let p = run(&t, &whole, PlanOptions { merging_size: *merging_size, max_gap: None });
            let got: Vec<u64> = p.requests.iter().map(|r| r.len).collect();
            assert_eq!(got, *lens, "merging_size {merging_size}");
            assert_eq!(p.stats.request_bytes, 2 << 20);
            let mut offs: Vec<u64> = p.requests.iter().map(|r| r.offset).collect();
            offs.dedup();
            assert_eq!(offs.len(), lens.len(), "distinct offsets");
        }
    }

    #[test]
    fn small_gaps_are_tolerated() {
        // 1000-byte chunks every 1300 bytes: 300-byte gaps (chunks of other files between).
        let chunks: Vec<ChunkRef> = (0..4).map(|i| c(0, i, u64::from(i) * 1300, 1000)).collect();
        let t = Table::new().file("/g", &chunks);
        let whole = [Touch::whole("/g")];
        // (max_gap, merging_size, requests, gap bytes)
        type Case<'a> = (Option<u64>, u64, &'a [(u32, u64, u64)], u64);
        let cases: &[Case] = &[
            (Some(300), 1 << 20, &[(0, 0, 4900)], 900),
            (
                Some(299),
                1 << 20,
                &[(0, 0, 1000), (0, 1300, 1000), (0, 2600, 1000), (0, 3900, 1000)],
                0,
            ),
            (
                Some(0),
                1 << 20,
                &[(0, 0, 1000), (0, 1300, 1000), (0, 2600, 1000), (0, 3900, 1000)],
                0,
            ),
            // Default: 1/128 of merging_size. 38400/128 = 300.
            (None, 38400, &[(0, 0, 4900)], 900),
            (None, 38399, &[(0, 0, 1000), (0, 1300, 1000), (0, 2600, 1000), (0, 3900, 1000)], 0),
            // The gap counts towards merging_size.
            (Some(300), 2300, &[(0, 0, 2300), (0, 2600, 2300)], 600),
        ];
        for (max_gap, merging_size, want, gap_bytes) in cases {
            let p = run(&t, &whole, PlanOptions { merging_size: *merging_size, max_gap: *max_gap });
            assert_eq!(ranges(&p), *want, "gap {max_gap:?} merging {merging_size}");
            assert_eq!(p.stats.gap_bytes, *gap_bytes, "gap {max_gap:?} merging {merging_size}");
            assert_eq!(p.stats.request_bytes, p.stats.chunk_bytes + p.stats.gap_bytes);
        }
    }

    #[test]
    fn requests_never_span_blobs() {
        // Blob 0 ends where blob 1's chunk would continue it.
        let t = Table::new().file(
            "/m",
            &[c(0, 0, 0, 1000), c(1, 0, 1000, 1000), c(0, 1, 1000, 1000), c(1, 1, 0, 1000)],
        );
        let p = run(&t, &[Touch::whole("/m")], PlanOptions::default());
        assert_eq!(ranges(&p), vec![(0, 0, 2000), (1, 0, 2000)]);
        for r in &p.requests {
            assert!(r.chunks.iter().all(|&i| p.chunks[i].chunk.blob_index == r.blob_index));
        }
    }

    #[test]
    fn cached_chunks_are_left_out() {
        let t = two_files();
        let cached = |ch: &ChunkRef| ch.index % 2 == 1;
        let p =
            plan(&[Touch::whole("/a"), Touch::whole("/b")], &t, &cached, &PlanOptions::default())
                .unwrap();
        assert_eq!(ids(&p), vec![(0, 0), (0, 2), (0, 4)]);
        assert_eq!(p.stats.cached, 3);
        // 1000-byte holes left by cached chunks are below the default 8 KiB gap tolerance.
        assert_eq!(ranges(&p), vec![(0, 0, 5000)]);
        let tight = PlanOptions { merging_size: 1 << 20, max_gap: Some(0) };
        let p = plan(&[Touch::whole("/a"), Touch::whole("/b")], &t, &cached, &tight).unwrap();
        assert_eq!(ranges(&p), vec![(0, 0, 1000), (0, 2000, 1000), (0, 4000, 1000)]);
        // Everything cached: an empty plan.
        let p = plan(&[Touch::whole("/a")], &t, &|_| true, &PlanOptions::default()).unwrap();
        assert!(p.chunks.is_empty() && p.requests.is_empty());
        assert_eq!(p.stats.cached, 4);
    }

    #[test]
    fn extents_map_to_the_right_chunks() {
        // /h: 10000 bytes in 3 chunks (the last short), chunk 1 a hole.
        let t = Table::new().sized(
            "/h",
            10_000,
            vec![Some(c(0, 0, 0, 10)), None, Some(c(0, 2, 10, 10))],
        );
        let chunk = |first, last| Extent::Chunks { first, last };
        let bytes = |offset, len| Extent::Bytes { offset, len };
        let cases: &[(Extent, &[u32], u64)] = &[
            (Extent::Whole, &[0, 2], 1),
            (bytes(0, 1), &[0], 0),
            (bytes(CS - 1, 2), &[0], 1),
            (bytes(CS, CS), &[], 1),
            (bytes(2 * CS, 1), &[2], 0),
            (bytes(9_999, 100), &[2], 0),
            (bytes(10_000, 1), &[], 0),
            (bytes(0, 0), &[], 0),
            (bytes(u64::MAX, u64::MAX), &[], 0),
            (bytes(3, u64::MAX), &[0, 2], 1),
            (chunk(2, 2), &[2], 0),
            (chunk(0, 1), &[0], 1),
            (chunk(2, 9), &[2], 0),
            (chunk(3, 9), &[], 0),
            (chunk(2, 1), &[], 0),
            (chunk(0, u32::MAX), &[0, 2], 1),
        ];
        for (extent, want, holes) in cases {
            let p =
                run(&t, &[Touch { path: "/h".into(), extent: *extent }], PlanOptions::default());
            let got: Vec<u32> = p.chunks.iter().map(|c| c.chunk.index).collect();
            assert_eq!(got, *want, "{extent:?}");
            assert_eq!(p.stats.holes, *holes, "{extent:?}");
            for pc in &p.chunks {
                assert_eq!(pc.file_chunk, u64::from(pc.chunk.index), "{extent:?}");
            }
        }
    }

    #[test]
    fn directories_expand_missing_paths_are_counted() {
        let t = two_files()
            .dir("/", 1, &["/d", "/a", "/link"])
            .dir("/d", 2, &["/d/b", "/d/again"])
            .file("/d/b", &[c(0, 4, 4000, 1000), c(0, 5, 5000, 1000)])
            .dir("/d/again", 2, &["/d/b"]);
        let mut t = t;
        t.map.insert("/link".into(), Entry::Other);
        let p = run(&t, &[Touch::whole("/"), Touch::whole("/a")], PlanOptions::default());
        assert_eq!(ids(&p), vec![(0, 4), (0, 5), (0, 0), (0, 1), (0, 2), (0, 3)]);
        assert_eq!(p.stats.files, 2);
        let p = run(
            &t,
            &[
                Touch::whole("/nope"),
                Touch::whole("/nope"),
                Touch::bytes("/d", 0, 10),
                Touch::whole("/link"),
                Touch::whole("/d"),
                Touch::whole("/d"),
            ],
            PlanOptions::default(),
        );
        assert_eq!(p.stats.missing, 2);
        assert_eq!(p.stats.missing_paths, vec!["/nope".to_string()]);
        assert_eq!(p.stats.no_data, 2);
        assert_eq!(ids(&p), vec![(0, 4), (0, 5)]);
    }

    #[test]
    fn empty_inputs_give_empty_plans() {
        let p = run(&two_files(), &[], PlanOptions::default());
        assert_eq!(p, Plan::default());
        let p = run(&Table::new(), &[Touch::whole("/a")], PlanOptions::default());
        assert!(p.chunks.is_empty() && p.requests.is_empty());
        assert!(merge_requests(&[], &PlanOptions::default()).is_empty());
        // An empty file.
        let t = Table::new().sized("/empty", 0, vec![]);
        let p = run(
            &t,
            &[Touch::whole("/empty"), Touch::bytes("/empty", 0, 10)],
            PlanOptions::default(),
        );
        assert_eq!(p.stats.files, 1);
        assert!(p.requests.is_empty());
    }

    #[test]
    fn a_million_touches_plan_quickly() {
        // 1024 files of 64 chunks over 4 blobs; a log of 1M one-chunk reads cycling through
        // them. Every chunk planned once, in first-touch order.
        let mut t = Table::new();
        let mut next = [0u32; 4];
        for f in 0..1024u32 {
            let blob = f % 4;
            let chunks: Vec<ChunkRef> = (0..64)
                .map(|_| {
                    let i = next[blob as usize];
                    next[blob as usize] += 1;
                    c(blob, i, u64::from(i) * 4096, 4096)
                })
                .collect();
            t = t.file(&format!("/f{f}"), &chunks);
        }
        let touches: Vec<Touch> = (0..1_000_000u64)
            .map(|n| Touch::bytes(format!("/f{}", n % 1024), (n / 1024 % 64) * CS, 100))
            .collect();
        let started = std::time::Instant::now();
        let p = run(&t, &touches, PlanOptions::default());
        eprintln!("1M touches planned in {:?}", started.elapsed());
        assert_eq!(p.stats.touches, 1_000_000);
        assert_eq!(p.chunks.len(), 65_536);
        assert_eq!(p.stats.duplicates, 1_000_000 - 65_536);
        assert_eq!(&*p.chunks[0].path, "/f0");
        assert_eq!(&*p.chunks[1023].path, "/f1023");
        // Each blob is contiguous: 16384 chunks of 4 KiB, 64 MiB in 1 MiB requests.
        assert_eq!(p.requests.len(), 4 * 64);
        assert!(p.requests.iter().all(|r| r.len == 1 << 20));
        let mut seen = vec![false; p.chunks.len()];
        for r in &p.requests {
            for &i in &r.chunks {
                assert!(!std::mem::replace(&mut seen[i], true), "chunk {i} in two requests");
            }
        }
        assert!(seen.iter().all(|s| *s));
    }
}
