//! Build a RAFS image from a directory or an OCI layer tar (plain, gzip or zstd; streamed).
//!
//! Data flows through a bounded [`Pipeline`]: chunks are collected into batches of at most
//! [`BATCH_BYTES`], digested and compressed in parallel with rayon, then appended to the blob in
//! order, each chunk deduplicated by digest against the image so far and against the parent
//! image. Memory stays bounded whatever the input size.
//!
//! Files named in the prefetch list have their chunks first in the blob, in list order: a
//! directory source is read in that order; a tar stream cannot be, so its blob is rewritten
//! once at the end by [`relayout`] (stored bytes copied, nothing recompressed).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::blob::{BlobError, BlobTarget, BlobWriter, DedupMap};
use super::chunk::{self, ChunkError, ChunkRef};
use super::layout::{self as l, BlobEntry, Compressor};
use super::merge::{apply_layer, strip_whiteouts, MergeError, WhiteoutSpec};
use super::tree::{ImageConfig, InodeId, Node, NodeKind, Tree, TreeError};

/// Chunk bytes held in memory at most, per batch.
pub const BATCH_BYTES: usize = 32 << 20;
/// Chunk bytes read ahead of the batch being compressed (directory sources).
pub const READ_AHEAD_BYTES: usize = 16 << 20;

/// Errors of building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading the source failed.
    #[error("{path}: {source}")]
    Source {
        /// Path in the source.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The tar stream is malformed.
    #[error("tar stream: {0}")]
    Tar(String),
    /// An option is invalid.
    #[error("{0}")]
    Option(String),
    /// Writing the blob failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Compressing a chunk failed.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// A tree edit failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Applying the layer onto its parent failed.
    #[error(transparent)]
    Merge(#[from] MergeError),
}

/// What to build and how.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Chunk size, compressor, digester.
    pub config: ImageConfig,
    /// Store uncompressed chunks at their 4 KiB aligned offsets (kernel-mountable blob).
    pub aligned_chunk: bool,
    /// How whiteouts are spelled in the source.
    pub whiteout_spec: WhiteoutSpec,
    /// Paths (relative to the image root) whose chunks go first and form the prefetch table.
    pub prefetch: Vec<Vec<u8>>,
    /// Where the blob goes.
    pub blob: BlobTarget,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Figures about a build.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BuildStats {
    /// Regular files with data.
    pub files: u64,
    /// Bytes of file data read.
    pub bytes_in: u64,
    /// Chunks written to the new blob.
    pub chunks_written: u64,
    /// Chunks found already present (in this image or a parent).
    pub chunks_deduplicated: u64,
    /// Stored bytes of chunk data in the new blob.
    pub blob_data_bytes: u64,
}

/// Result of a build.
pub struct BuildOutput {
    /// The finished image (whiteouts applied onto the parent, if any).
    pub tree: Tree,
    /// The new blob and its path, if the source had any data not already present.
    pub blob: Option<(BlobEntry, PathBuf)>,
    /// Figures.
    pub stats: BuildStats,
}

/// Validate a chunk size the way nydus-image does.
pub fn check_chunk_size(cs: u32) -> Result<(), BuildError> {
    if !cs.is_power_of_two() || !(l::MIN_CHUNK_SIZE..=l::MAX_CHUNK_SIZE).contains(&cs) {
        return Err(BuildError::Option(format!(
            "--chunk-size {cs:#x}: must be a power of two between 0x1000 and 0x1000000"
        )));
    }
    Ok(())
}

struct Pending {
    inode: InodeId,
    idx: usize,
    data: Vec<u8>,
}

/// Batches chunks, digests and compresses them in parallel, appends them in order.
struct Pipeline {
    writer: BlobWriter,
    dedup: DedupMap,
    batch: Vec<Pending>,
    batch_bytes: usize,
    config: ImageConfig,
    stats: BuildStats,
    progress: Option<indicatif::ProgressBar>,
}

impl Pipeline {
    fn push(
        &mut self,
        tree: &mut Tree,
        inode: InodeId,
        idx: usize,
        data: Vec<u8>,
    ) -> Result<(), BuildError> {
        self.batch_bytes += data.len();
        self.stats.bytes_in += data.len() as u64;
        if let Some(p) = &self.progress {
            p.inc(data.len() as u64);
        }
        self.batch.push(Pending { inode, idx, data });
        if self.batch_bytes >= BATCH_BYTES {
            self.flush(tree)?;
        }
        Ok(())
    }

    fn flush(&mut self, tree: &mut Tree) -> Result<(), BuildError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let (digester, compressor) = (self.config.digester, self.config.compressor);
        let dedup = &self.dedup;
        // Digest everything, compress only what is not already stored. The inner option is
        // `compress`'s answer (None = store raw); the outer is None for a known chunk.
        type Digested = ([u8; 32], Option<Option<Vec<u8>>>);
        let work: Vec<Digested> = batch
            .par_iter()
            .map(|p| {
                let d = digester.digest(&p.data);
                if dedup.contains_key(&d) {
                    return Ok((d, None));
                }
                Ok((d, Some(chunk::compress(compressor, &p.data)?)))
            })
            .collect::<Result<_, ChunkError>>()?;
        for (p, (digest, stored)) in batch.iter().zip(work) {
            let c = match self.dedup.get(&digest) {
                Some(c) => {
                    self.stats.chunks_deduplicated += 1;
                    *c
                }
                None => {
                    let stored = stored
                        .unwrap_or_else(|| chunk::compress(compressor, &p.data).ok().flatten());
                    let (bytes, compressed) = match &stored {
                        Some(s) => (s.as_slice(), true),
                        None => (p.data.as_slice(), false),
                    };
                    let c = self.writer.add(digest, p.data.len() as u32, bytes, compressed)?;
                    self.stats.chunks_written += 1;
                    self.stats.blob_data_bytes += bytes.len() as u64;
                    self.dedup.insert(digest, c);
                    c
                }
            };
            if let NodeKind::File(chunks) = &mut tree.nodes[p.inode].kind {
                chunks[p.idx] = c;
            }
        }
        Ok(())
    }
}

fn progress_bar(enabled: bool, total: Option<u64>) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bytes}/{total_bytes} {bytes_per_sec} {wide_bar}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// Seed the dedup map with every chunk of `parent` and return the blob index of the new blob.
fn start_pipeline(
    parent: Option<&Tree>,
    opts: &BuildOptions,
    total: Option<u64>,
) -> Result<Pipeline, BuildError> {
    let mut dedup = DedupMap::new();
    let mut blob_index = 0;
    if let Some(p) = parent {
        blob_index = p.blobs.len() as u32;
        for n in &p.nodes {
            if let NodeKind::File(chunks) = &n.kind {
                for c in chunks {
                    dedup.entry(c.digest).or_insert(*c);
                }
            }
        }
    }
    let c = &opts.config;
    Ok(Pipeline {
        writer: BlobWriter::new(
            opts.blob.clone(),
            blob_index,
            c.compressor,
            c.digester,
            c.chunk_size,
            opts.aligned_chunk,
        )?,
        dedup,
        batch: Vec::new(),
        batch_bytes: 0,
        config: c.clone(),
        stats: BuildStats::default(),
        progress: progress_bar(opts.progress, total),
    })
}

fn placeholder_chunks(size: u64, chunk_size: u32) -> NodeKind {
    let n = size.div_ceil(u64::from(chunk_size)) as usize;
    NodeKind::File(vec![ChunkRef::default(); n])
}

/// Finish: close the blob, put the layer onto its parent, set the prefetch table.
fn finish(
    mut pipe: Pipeline,
    mut layer: Tree,
    parent: Option<Tree>,
    opts: &BuildOptions,
) -> Result<BuildOutput, BuildError> {
    pipe.flush(&mut layer)?;
    if let Some(p) = &pipe.progress {
        p.finish_and_clear();
    }
    let stats = pipe.stats.clone();
    let blob = pipe.writer.finish()?;
    let base_blobs = parent.as_ref().map_or(Vec::new(), |p| p.blobs.clone());
    layer.blobs = base_blobs;
    if let Some((entry, _)) = &blob {
        layer.blobs.push(entry.clone());
    }
    let tree = match parent {
        Some(mut p) => {
            // New chunks already carry the index the blob has in the parent's table + 1, and
            // deduplicated ones the parent's own indexes, so the tables line up.
            p.config.compressor = opts.config.compressor;
            apply_layer(&mut p, &layer, opts.whiteout_spec)?;
            p
        }
        None => layer,
    };
    Ok(BuildOutput { tree, blob, stats })
}

/// Make `paths` (in order, each once) the prefetch table of `tree`.
pub fn set_prefetch(tree: &mut Tree, paths: &[Vec<u8>]) -> Result<(), BuildError> {
    tree.prefetch.clear();
    for p in paths {
        let id = tree.lookup(p).ok_or_else(|| {
            BuildError::Option(format!(
                "prefetch list names {}, which is not in the image",
                String::from_utf8_lossy(p)
            ))
        })?;
        if !tree.prefetch.contains(&id) {
            tree.prefetch.push(id);
        }
    }
    Ok(())
}

/// Regular files at or below `ids`, depth first in name order, each once.
fn files_under(tree: &Tree, ids: &[InodeId]) -> Vec<InodeId> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for &id in ids {
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            match &tree.nodes[n].kind {
                NodeKind::Dir(ch) => stack.extend(ch.values().rev()),
                NodeKind::File(_) if seen.insert(n) => out.push(n),
                _ => {}
            }
        }
    }
    out
}

fn source_err(path: &Path) -> impl Fn(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Source { path: path.display().to_string(), source }
}

fn read_xattrs(path: &Path) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>, BuildError> {
    let mut out = std::collections::BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        // Filesystems without xattr support simply have none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(source_err(path)(e)),
    };
    for name in names {
        if let Some(v) = xattr::get(path, &name).map_err(source_err(path))? {
            out.insert(name.as_bytes().to_vec(), v);
        }
    }
    Ok(out)
}

/// Build from a directory tree. With `parent`, the directory is a layer on top of it.
pub fn build_dir(
    src: &Path,
    parent: Option<Tree>,
    opts: &BuildOptions,
) -> Result<BuildOutput, BuildError> {
    check_chunk_size(opts.config.chunk_size)?;
    let meta = std::fs::symlink_metadata(src).map_err(source_err(src))?;
    if !meta.is_dir() {
        return Err(BuildError::Option(format!("{} is not a directory", src.display())));
    }
    let mut tree = Tree::new(opts.config.clone());
    let root = tree.root;
    fill_attrs(&mut tree.nodes[root], &meta);
    tree.nodes[root].xattrs = read_xattrs(src)?;
    // Metadata pass: the whole tree, hardlinks by (dev, ino), file paths remembered.
    let mut links: HashMap<(u64, u64), InodeId> = HashMap::new();
    let mut data_paths: HashMap<InodeId, PathBuf> = HashMap::new();
    let mut total = 0u64;
    let mut stack = vec![(src.to_path_buf(), root)];
    while let Some((dir, id)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(source_err(&dir))?
            .collect::<Result<_, _>>()
            .map_err(source_err(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = e.file_name().as_bytes().to_vec();
            let m = std::fs::symlink_metadata(&path).map_err(source_err(&path))?;
            let ft = m.mode() & libc::S_IFMT;
            // Every non-directory with several names is one inode (as mkfs.erofs and
            // nydus-image keep them), whatever its type.
            if ft != libc::S_IFDIR && m.nlink() > 1 {
                if let Some(&existing) = links.get(&(m.dev(), m.ino())) {
                    tree.nodes[id].children_mut().expect("dir").insert(name, existing);
                    continue;
                }
            }
            let kind = match ft {
                libc::S_IFDIR => NodeKind::Dir(Default::default()),
                libc::S_IFREG => placeholder_chunks(m.len(), opts.config.chunk_size),
                libc::S_IFLNK => NodeKind::Symlink(
                    std::fs::read_link(&path)
                        .map_err(source_err(&path))?
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                ),
                _ => NodeKind::Special,
            };
            let mut node = Node::with_kind(m.mode(), kind);
            fill_attrs(&mut node, &m);
            node.xattrs = read_xattrs(&path)?;
            let child = tree.add(node);
            tree.nodes[id].children_mut().expect("dir").insert(name, child);
            if ft != libc::S_IFDIR && m.nlink() > 1 {
                links.insert((m.dev(), m.ino()), child);
            }
            match ft {
                libc::S_IFDIR => stack.push((path, child)),
                libc::S_IFREG if m.len() > 0 => {
                    total += m.len();
                    data_paths.insert(child, path);
                }
                _ => {}
            }
        }
    }
    if parent.is_none() {
        // A bottom layer has nothing to hide: whiteouts are dropped (nydus-image does too).
        strip_whiteouts(&mut tree, opts.whiteout_spec);
    }
    set_prefetch(&mut tree, &opts.prefetch)?;
    // Data pass: prefetch files first, then everything else in tree order.
    let mut order = files_under(&tree, &tree.prefetch.clone());
    let first: HashSet<InodeId> = order.iter().copied().collect();
    order.extend(files_under(&tree, &[tree.root]).into_iter().filter(|i| !first.contains(i)));
    let mut pipe = start_pipeline(parent.as_ref(), opts, Some(total))?;
    let cs = opts.config.chunk_size as u64;
    // Files are read on their own thread into a bounded queue, so disk reads overlap the
    // digest/compress/append of the previous batch; at most READ_AHEAD_BYTES wait in the queue.
    let jobs: Vec<(InodeId, PathBuf, u64)> = order
        .into_iter()
        .filter_map(|id| data_paths.remove(&id).map(|p| (id, p, tree.nodes[id].size)))
        .collect();
    let depth = (READ_AHEAD_BYTES / cs as usize).max(2);
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<Result<(InodeId, usize, Vec<u8>), BuildError>>(depth);
    std::thread::scope(|scope| -> Result<(), BuildError> {
        scope.spawn(move || {
            for (id, path, size) in jobs {
                let f = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(source_err(&path)(e)));
                        return;
                    }
                };
                let (mut off, mut idx) = (0u64, 0usize);
                while off < size {
                    let n = (size - off).min(cs) as usize;
                    let mut buf = vec![0u8; n];
                    if let Err(e) = f.read_exact_at(&mut buf, off) {
                        let _ = tx.send(Err(BuildError::Source {
                            path: path.display().to_string(),
                            source: std::io::Error::new(
                                e.kind(),
                                format!("file shrank while building: {e}"),
                            ),
                        }));
                        return;
                    }
                    // The receiver stops early only on an error; then there is nothing to do.
                    if tx.send(Ok((id, idx, buf))).is_err() {
                        return;
                    }
                    off += n as u64;
                    idx += 1;
                }
            }
        });
        let mut last = None;
        for item in rx {
            let (id, idx, buf) = item?;
            if last != Some(id) {
                pipe.stats.files += 1;
                last = Some(id);
            }
            pipe.push(&mut tree, id, idx, buf)?;
        }
        Ok(())
    })?;
    let prefetch = tree.prefetch.clone();
    let mut out = finish(pipe, tree, parent, opts)?;
    if out.tree.prefetch.is_empty() && !prefetch.is_empty() {
        set_prefetch(&mut out.tree, &opts.prefetch)?;
    }
    Ok(out)
}

fn fill_attrs(node: &mut Node, m: &std::fs::Metadata) {
    node.mode = m.mode();
    node.uid = m.uid();
    node.gid = m.gid();
    node.mtime = m.mtime().max(0) as u64;
    node.mtime_nsec = m.mtime_nsec().clamp(0, 999_999_999) as u32;
    node.rdev = m.rdev();
    node.size = if m.is_file() { m.len() } else { 0 };
}

/// Wrap a layer stream in the decompressor its magic bytes call for (gzip, zstd or none).
pub fn open_layer(mut r: impl Read + 'static) -> Result<Box<dyn Read>, BuildError> {
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut magic[got..]).map_err(|e| BuildError::Tar(e.to_string()))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let head = std::io::Cursor::new(magic[..got].to_vec());
    let whole = head.chain(r);
    Ok(if got >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(whole))
    } else if got == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(
            zstd::stream::read::Decoder::new(whole).map_err(|e| BuildError::Tar(e.to_string()))?,
        )
    } else {
        Box::new(whole)
    })
}

/// A PAX extended header record: (key, value).
type PaxRecord = (Vec<u8>, Vec<u8>);

/// Largest PAX or GNU long-name header we read (real ones are a few KiB; xattrs up to 64 KiB).
const MAX_META_ENTRY: u64 = 1 << 20;

fn read_meta_entry(entry: &mut tar::Entry<'_, impl Read>) -> Result<Vec<u8>, BuildError> {
    if entry.size() > MAX_META_ENTRY {
        return Err(BuildError::Tar(format!("extended header of {} bytes", entry.size())));
    }
    let mut data = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut data).map_err(|e| BuildError::Tar(e.to_string()))?;
    Ok(data)
}

/// Parse PAX records `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, so
/// values may hold any byte including newlines.
fn parse_pax(mut data: &[u8]) -> Result<Vec<PaxRecord>, BuildError> {
    let bad = |why: &str| BuildError::Tar(format!("malformed PAX record: {why}"));
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data.iter().position(|&b| b == b' ').ok_or_else(|| bad("no length"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("length is not a number"))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("length does not match the record"));
        }
        let kv = &data[sp + 1..len - 1];
        let eq = kv.iter().position(|&b| b == b'=').ok_or_else(|| bad("no '='"))?;
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

fn parse_pax_time(v: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nsec = 0u32;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let scale = 10u32.pow(9 - digits.len() as u32);
        nsec = digits.parse::<u32>().ok()? * scale;
    }
    Some((sec.max(0) as u64, nsec))
}

/// Build from an OCI layer stream. Whiteouts stay as entries unless `parent` is given, in which
/// case they are applied to it (a layered build).
pub fn build_tar(
    input: impl Read + 'static,
    parent: Option<Tree>,
    opts: &BuildOptions,
) -> Result<BuildOutput, BuildError> {
    check_chunk_size(opts.config.chunk_size)?;
    let reader = open_layer(input)?;
    let mut archive = tar::Archive::new(reader);
    let mut tree = Tree::new(opts.config.clone());
    // Until a `./` entry describes it, the layer's root is only implied.
    tree.implicit.insert(tree.root);
    let mut pipe = start_pipeline(parent.as_ref(), opts, None)?;
    let cs = opts.config.chunk_size as usize;
    let terr = |e: std::io::Error| BuildError::Tar(e.to_string());
    // Raw entries: PAX and GNU long-name headers are parsed here, by their length prefixes
    // (the tar crate's own PAX parser splits records at newlines, which binary xattr values
    // such as security.capability may contain).
    let mut global: Vec<PaxRecord> = Vec::new();
    let mut local: Vec<PaxRecord> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    for entry in archive.entries().map_err(terr)?.raw(true) {
        let mut entry = entry.map_err(terr)?;
        let etype = entry.header().entry_type();
        match etype {
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {
                let data = read_meta_entry(&mut entry)?;
                let records = parse_pax(&data)?;
                if etype == tar::EntryType::XGlobalHeader {
                    global.extend(records);
                } else {
                    local.extend(records);
                }
                continue;
            }
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {
                let mut data = read_meta_entry(&mut entry)?;
                while data.last() == Some(&0) {
                    data.pop();
                }
                if etype == tar::EntryType::GNULongName {
                    long_name = Some(data);
                } else {
                    long_link = Some(data);
                }
                continue;
            }
            _ => {}
        }
        let pax: Vec<PaxRecord> =
            global.iter().chain(local.drain(..).as_slice()).cloned().collect();
        let pax_get = |k: &[u8]| pax.iter().rev().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let h = entry.header();
        let path = pax_get(b"path")
            .or_else(|| long_name.take())
            .unwrap_or_else(|| h.path_bytes().into_owned());
        let link = pax_get(b"linkpath")
            .or_else(|| long_link.take())
            .or_else(|| h.link_name_bytes().map(|c| c.into_owned()));
        long_name = None;
        long_link = None;
        let shown = String::from_utf8_lossy(&path).into_owned();
        let num = |key: &[u8], fallback: u64| -> Result<u64, BuildError> {
            match pax_get(key) {
                Some(v) => {
                    std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).ok_or_else(|| {
                        BuildError::Tar(format!(
                            "{shown}: PAX {} is not a number",
                            String::from_utf8_lossy(key)
                        ))
                    })
                }
                None => Ok(fallback),
            }
        };
        if num(b"size", entry.size())? != entry.size() {
            return Err(BuildError::Tar(format!("{shown}: PAX size records are not supported")));
        }
        let mut node = Node::with_kind(0, NodeKind::Special);
        node.mode = h.mode().map_err(terr)? & 0o7777;
        node.uid = num(b"uid", h.uid().map_err(terr)?)? as u32;
        node.gid = num(b"gid", h.gid().map_err(terr)?)? as u32;
        node.mtime = h.mtime().map_err(terr)?;
        if let Some((sec, nsec)) = pax_get(b"mtime").as_deref().and_then(parse_pax_time) {
            node.mtime = sec;
            node.mtime_nsec = nsec;
        }
        if matches!(etype, tar::EntryType::Char | tar::EntryType::Block) {
            let major = h.device_major().map_err(terr)?.unwrap_or(0);
            let minor = h.device_minor().map_err(terr)?.unwrap_or(0);
            node.rdev = libc::makedev(major, minor);
        }
        for (k, v) in &pax {
            if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                node.xattrs.insert(name.to_vec(), v.clone());
            }
        }
        match etype {
            tar::EntryType::Directory => {
                node.mode |= libc::S_IFDIR;
                node.kind = NodeKind::Dir(Default::default());
                tree.insert(&path, node)?;
            }
            tar::EntryType::Symlink => {
                node.mode |= libc::S_IFLNK;
                let target = link
                    .ok_or_else(|| BuildError::Tar(format!("{shown}: symlink without target")))?;
                node.size = target.len() as u64;
                node.kind = NodeKind::Symlink(target);
                tree.insert(&path, node)?;
            }
            tar::EntryType::Link => {
                let target = link
                    .ok_or_else(|| BuildError::Tar(format!("{shown}: hardlink without target")))?;
                tree.link(&path, &target)?;
            }
            tar::EntryType::Char => {
                node.mode |= libc::S_IFCHR;
                tree.insert(&path, node)?;
            }
            tar::EntryType::Block => {
                node.mode |= libc::S_IFBLK;
                tree.insert(&path, node)?;
            }
            tar::EntryType::Fifo => {
                node.mode |= libc::S_IFIFO;
                tree.insert(&path, node)?;
            }
            tar::EntryType::GNUSparse => {
                return Err(BuildError::Tar(format!(
                    "{shown}: GNU sparse entries are not supported"
                )));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                node.mode |= libc::S_IFREG;
                let size = entry.size();
                node.size = size;
                node.kind = placeholder_chunks(size, opts.config.chunk_size);
                let id = tree.insert(&path, node)?;
                if size > 0 {
                    pipe.stats.files += 1;
                }
                let mut idx = 0;
                let mut left = size;
                while left > 0 {
                    let n = left.min(cs as u64) as usize;
                    let mut buf = vec![0u8; n];
                    entry
                        .read_exact(&mut buf)
                        .map_err(|e| BuildError::Tar(format!("{shown}: {e}")))?;
                    pipe.push(&mut tree, id, idx, buf)?;
                    left -= n as u64;
                    idx += 1;
                }
            }
            other => {
                return Err(BuildError::Tar(format!(
                    "{shown}: unsupported tar entry type {other:?}"
                )));
            }
        }
    }
    let want_prefetch = !opts.prefetch.is_empty();
    if want_prefetch && parent.is_none() {
        set_prefetch(&mut tree, &opts.prefetch)?;
    }
    let layer_prefetch = tree.prefetch.clone();
    let mut out = finish(pipe, tree, parent, opts)?;
    if want_prefetch {
        set_prefetch(&mut out.tree, &opts.prefetch)?;
        if let Some((entry, path)) = out.blob.take() {
            let order = files_under(&out.tree, &out.tree.prefetch.clone());
            let _ = layer_prefetch;
            let new = relayout(&mut out.tree, entry.blob_index, &path, &order, opts)?;
            // Same content gives the same name: then the old blob was replaced, not left behind.
            if new.1 != path {
                std::fs::remove_file(&path).map_err(source_err(&path))?;
            }
            out.blob = Some(new);
        }
    }
    Ok(out)
}

/// Rewrite blob `blob_index` of `tree` so the chunks of `first` (in order) come first, then the
/// rest in their old order. Stored bytes are copied, not recompressed; every chunk reference
/// in the tree is re-pointed. Returns the new blob (the old file is left for the caller).
pub fn relayout(
    tree: &mut Tree,
    blob_index: u32,
    old_path: &Path,
    first: &[InodeId],
    opts: &BuildOptions,
) -> Result<(BlobEntry, PathBuf), BuildError> {
    let mut hot = Vec::new();
    for &id in first {
        if let NodeKind::File(ch) = &tree.nodes[id].kind {
            hot.extend(ch.iter().filter(|c| c.blob_index == blob_index).map(|c| c.index));
        }
    }
    relayout_chunks(tree, blob_index, old_path, &hot, opts)
}

/// Rewrite blob `blob_index` of `tree` so its chunks with chunk-info indexes `hot` come first,
/// in that order (repeats and indexes the tree does not use are skipped), then the rest in
/// their old order. Stored bytes are copied, not recompressed; every chunk reference in the
/// tree is re-pointed. Returns the new blob (the old file is left for the caller).
pub fn relayout_chunks(
    tree: &mut Tree,
    blob_index: u32,
    old_path: &Path,
    hot: &[u32],
    opts: &BuildOptions,
) -> Result<(BlobEntry, PathBuf), BuildError> {
    let old = File::open(old_path).map_err(source_err(old_path))?;
    let mut used: HashMap<u32, ChunkRef> = HashMap::new();
    for n in &tree.nodes {
        if let NodeKind::File(ch) = &n.kind {
            for c in ch.iter().filter(|c| c.blob_index == blob_index) {
                used.entry(c.index).or_insert(*c);
            }
        }
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut ordered: Vec<ChunkRef> =
        hot.iter().filter(|i| seen.insert(**i)).filter_map(|i| used.get(i).copied()).collect();
    let mut rest: Vec<ChunkRef> =
        used.values().filter(|c| !seen.contains(&c.index)).copied().collect();
    rest.sort_by_key(|c| c.index);
    ordered.extend(rest);
    let compressor = Compressor::from_u32(tree.blobs[blob_index as usize].compression_algo)
        .map_err(|e| BuildError::Option(e.to_string()))?;
    let mut w = BlobWriter::new(
        opts.blob.clone(),
        blob_index,
        compressor,
        opts.config.digester,
        opts.config.chunk_size,
        opts.aligned_chunk,
    )?;
    let mut map: HashMap<u32, ChunkRef> = HashMap::new();
    for c in &ordered {
        let mut buf = vec![0u8; c.compressed_size as usize];
        old.read_exact_at(&mut buf, c.compressed_offset).map_err(source_err(old_path))?;
        let n = w.add(c.digest, c.uncompressed_size, &buf, c.compressed)?;
        map.insert(c.index, n);
    }
    for n in tree.nodes.iter_mut() {
        if let NodeKind::File(ch) = &mut n.kind {
            for c in ch.iter_mut() {
                if c.blob_index == blob_index {
                    *c = map[&c.index];
                }
            }
        }
    }
    let (entry, path) =
        w.finish()?.ok_or_else(|| BuildError::Option("relayout of an empty blob".into()))?;
    tree.blobs[blob_index as usize] = entry.clone();
    Ok((entry, path))
}
