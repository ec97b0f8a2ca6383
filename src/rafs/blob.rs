//! Writing data blobs: chunk data, then the self-describing tail nydus defines.
//!
//! ```text
//! chunk data | blob.meta (chunk-info v2 array) | blob.meta.header (4 KiB) |
//! blob.digest (32 B per chunk) | rafs.blob.toc (128 B per section)
//! ```
//! Uncompressed chunk offsets are always 4 KiB aligned (the ALIGNED feature), so the
//! bootstrap's chunk indexes address an uncompressed image of the blob. With `aligned_data`
//! (`--aligned-chunk --compressor none`) the stored bytes also sit at those offsets, which
//! makes the blob file itself that uncompressed image: the kernel's erofs driver reads it
//! directly as a device.
//!
//! A blob is written to a temporary file in the blob directory, fsynced, and renamed to its
//! id (the hex sha256 of the file), so a crash never leaves a half-written blob under an id.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::chunk::ChunkRef;
use super::layout::{self as l, blob_features, BlobEntry, Compressor, Digester};

/// Errors of blob writing.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// I/O on the blob file.
    #[error("blob {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// More chunks than a blob can index.
    #[error("a blob holds at most 2^24 chunks")]
    TooManyChunks,
}

/// Where a finished blob goes.
#[derive(Clone, Debug)]
pub enum BlobTarget {
    /// A directory; the blob is named by its sha256 id.
    Dir(PathBuf),
    /// An explicit path (nydus-image `--blob`); the id is still the sha256.
    File(PathBuf),
}

/// Streams chunks into a new blob.
pub struct BlobWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    target: BlobTarget,
    hasher: sha2::Sha256,
    pos: u64,
    upos: u64,
    blob_index: u32,
    compressor: Compressor,
    digester: Digester,
    chunk_size: u32,
    aligned_data: bool,
    infos: Vec<l::ChunkInfoEntry>,
    digests: Vec<[u8; 32]>,
}

/// Chunk digest -> where the chunk already is (this blob or a parent image's).
pub type DedupMap = HashMap<[u8; 32], ChunkRef>;

impl BlobWriter {
    /// Start a blob that will be entry `blob_index` of the image's blob table.
    pub fn new(
        target: BlobTarget,
        blob_index: u32,
        compressor: Compressor,
        digester: Digester,
        chunk_size: u32,
        aligned_data: bool,
    ) -> Result<Self, BlobError> {
        let dir = match &target {
            BlobTarget::Dir(d) => d.clone(),
            BlobTarget::File(f) => f.parent().map(Path::to_path_buf).unwrap_or_else(|| ".".into()),
        };
        let tmp = dir.join(format!(".strata-blob-{}-{}.tmp", std::process::id(), blob_index));
        let file = File::create(&tmp)
            .map_err(|source| BlobError::Io { path: tmp.display().to_string(), source })?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            target,
            hasher: sha2::Sha256::new(),
            pos: 0,
            upos: 0,
            blob_index,
            compressor,
            digester,
            chunk_size,
            aligned_data: aligned_data && compressor == Compressor::None,
            infos: Vec::new(),
            digests: Vec::new(),
        })
    }

    fn io(&self, source: std::io::Error) -> BlobError {
        BlobError::Io { path: self.tmp.display().to_string(), source }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        self.out.write_all(bytes).map_err(|e| self.io(e))?;
        self.hasher.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, at: u64) -> Result<(), BlobError> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < at {
            let n = (at - self.pos).min(4096) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Append a chunk whose digest and stored form were computed by the caller. `stored` is
    /// the compressed bytes, or the raw bytes when `compressed` is false.
    pub fn add(
        &mut self,
        digest: [u8; 32],
        uncompressed_size: u32,
        stored: &[u8],
        compressed: bool,
    ) -> Result<ChunkRef, BlobError> {
        if self.infos.len() as u32 >= l::MAX_CHUNKS_PER_BLOB {
            return Err(BlobError::TooManyChunks);
        }
        if self.aligned_data {
            let at = self.upos;
            self.pad_to(at)?;
        }
        let chunk = ChunkRef {
            digest,
            blob_index: self.blob_index,
            index: self.infos.len() as u32,
            compressed_offset: self.pos,
            compressed_size: stored.len() as u32,
            uncompressed_offset: self.upos,
            uncompressed_size,
            compressed,
        };
        self.write(stored)?;
        self.upos = l::align_up(self.upos + u64::from(uncompressed_size), l::BLOCK_SIZE);
        self.infos.push(l::ChunkInfoEntry {
            uncompressed_offset: chunk.uncompressed_offset,
            uncompressed_size,
            compressed_offset: chunk.compressed_offset,
            compressed_size: chunk.compressed_size,
            compressed,
        });
        self.digests.push(digest);
        Ok(chunk)
    }

    /// Number of chunks written so far.
    pub fn chunk_count(&self) -> usize {
        self.infos.len()
    }

    /// Write the tail, fsync, and rename into place. Returns `None` (and removes the
    /// temporary file) when no chunk was written: an image without data needs no blob.
    pub fn finish(mut self) -> Result<Option<(BlobEntry, PathBuf)>, BlobError> {
        if self.infos.is_empty() {
            // Drop removes the temporary file.
            return Ok(None);
        }
        let data_size = self.pos;
        let uncompressed_size = self.upos;
        if self.aligned_data {
            // Pad so the blob covers every block the device table announces.
            self.pad_to(uncompressed_size)?;
        }
        let features = blob_features::ALIGNED
            | blob_features::CHUNK_INFO_V2
            | blob_features::HAS_TOC
            | blob_features::CAP_TAR_TOC;
        let mut ci = Vec::with_capacity(self.infos.len() * l::CHUNK_INFO_V2_SIZE);
        for e in &self.infos {
            ci.extend_from_slice(&e.encode_v2());
        }
        let ci_offset = self.pos;
        self.write(&ci.clone())?;
        let header = l::BlobMetaHeader {
            features,
            ci_compressor: Compressor::None.to_u32(),
            ci_entries: self.infos.len() as u32,
            ci_offset,
            ci_compressed_size: ci.len() as u64,
            ci_uncompressed_size: ci.len() as u64,
        }
        .encode();
        let header_offset = self.pos;
        self.write(&header.clone())?;
        let digests: Vec<u8> = self.digests.concat();
        let digest_offset = self.pos;
        self.write(&digests.clone())?;
        let section = |name: &str, off: u64, bytes: &[u8]| l::TocEntry {
            flags: 0x1,
            name: name.to_string(),
            uncompressed_digest: sha2::Sha256::digest(bytes).into(),
            compressed_offset: off,
            compressed_size: bytes.len() as u64,
            uncompressed_size: bytes.len() as u64,
        };
        let mut toc_entries = vec![
            section("blob.meta", ci_offset, &ci),
            section("blob.meta.header", header_offset, &header),
            section("blob.digest", digest_offset, &digests),
        ];
        // The ToC is found from the end of the blob. Starting it on a 512-byte boundary makes
        // the blob a whole number of sectors (4 entries x 128 B), so losetup takes all of it.
        let toc_offset = l::align_up(self.pos, 512);
        self.pad_to(toc_offset)?;
        let toc_size = (toc_entries.len() + 1) * l::TOC_ENTRY_SIZE;
        // The ToC lists itself last, without a digest (it cannot contain its own).
        toc_entries.push(l::TocEntry {
            flags: 0x1,
            name: "rafs.blob.toc".into(),
            uncompressed_digest: [0; 32],
            compressed_offset: toc_offset,
            compressed_size: toc_size as u64,
            uncompressed_size: toc_size as u64,
        });
        let toc: Vec<u8> = toc_entries.iter().flat_map(|e| e.encode()).collect();
        self.write(&toc)?;

        self.out.flush().map_err(|e| self.io(e))?;
        let file = self.out.get_ref();
        file.sync_all()
            .map_err(|e| BlobError::Io { path: self.tmp.display().to_string(), source: e })?;
        let blob_id = hex::encode(self.hasher.finalize_reset());
        let dest = match &self.target {
            BlobTarget::Dir(d) => d.join(&blob_id),
            BlobTarget::File(f) => f.clone(),
        };
        std::fs::rename(&self.tmp, &dest)
            .map_err(|source| BlobError::Io { path: dest.display().to_string(), source })?;
        if let Some(dir) = dest.parent() {
            crate::sys::fsync_dir(dir)
                .map_err(|source| BlobError::Io { path: dir.display().to_string(), source })?;
        }
        let entry = BlobEntry {
            blob_id,
            blob_index: self.blob_index,
            chunk_size: self.chunk_size,
            chunk_count: self.infos.len() as u32,
            compression_algo: self.compressor.to_u32(),
            digest_algo: self.digester.to_u32(),
            features,
            compressed_size: data_size,
            uncompressed_size,
            blob_toc_size: toc_size as u32,
            ci_compressor: Compressor::None.to_u32(),
            ci_offset,
            ci_compressed_size: ci.len() as u64,
            ci_uncompressed_size: ci.len() as u64,
            blob_toc_digest: sha2::Sha256::digest(&toc).into(),
            blob_meta_digest: [0; 32],
            blob_meta_size: 0,
        };
        Ok(Some((entry, dest)))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful finish the temporary name no longer exists; after an error it is
        // removed so no partial blob is left behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}
