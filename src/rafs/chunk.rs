//! Chunks: the unit of data in a blob. Compression, digests, and the `ChunkReader` seam through
//! which file reads obtain chunk bytes without knowing where they come from (a blob file, a
//! cache, a registry).

use super::layout::{ChunkTableEntry, Compressor, Digester};

/// Errors of chunk encoding and decoding.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The stored bytes do not decompress to the recorded size.
    #[error("chunk {index} of blob {blob_index}: {compressor} decompression failed: {detail}")]
    Decompress {
        /// Blob index.
        blob_index: u32,
        /// Chunk index in the blob.
        index: u32,
        /// Compressor.
        compressor: Compressor,
        /// What went wrong.
        detail: String,
    },
    /// The decompressed bytes have another digest than recorded.
    #[error(
        "chunk {index} of blob {blob_index}: digest mismatch (expected {expected}, got {actual})"
    )]
    DigestMismatch {
        /// Blob index.
        blob_index: u32,
        /// Chunk index in the blob.
        index: u32,
        /// Recorded digest (hex).
        expected: String,
        /// Computed digest (hex).
        actual: String,
    },
    /// The chunk cannot be fetched.
    #[error("chunk {index} of blob {blob_id}: {source}")]
    Io {
        /// Blob id.
        blob_id: String,
        /// Chunk index in the blob.
        index: u32,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Compression is not supported for writing.
    #[error("compressor {0} is not supported for building images")]
    Unsupported(Compressor),
}

/// Where one chunk lives and what it holds. Same fields as the bootstrap chunk table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// Digest of the uncompressed bytes.
    pub digest: [u8; 32],
    /// Index of the blob in the image's blob table.
    pub blob_index: u32,
    /// Index of the chunk in its blob (the chunk-info index).
    pub index: u32,
    /// Offset of the stored bytes in the blob file.
    pub compressed_offset: u64,
    /// Stored size.
    pub compressed_size: u32,
    /// Offset in the uncompressed (4 KiB aligned) blob image.
    pub uncompressed_offset: u64,
    /// Uncompressed size.
    pub uncompressed_size: u32,
    /// True when the stored bytes are compressed.
    pub compressed: bool,
}

impl ChunkRef {
    /// The bootstrap chunk-table form of this chunk; `file_offset` is informative only.
    pub fn to_table_entry(&self, file_offset: u64) -> ChunkTableEntry {
        ChunkTableEntry {
            digest: self.digest,
            blob_index: self.blob_index,
            flags: if self.compressed { super::layout::chunk_flags::COMPRESSED } else { 0 },
            compressed_size: self.compressed_size,
            uncompressed_size: self.uncompressed_size,
            compressed_offset: self.compressed_offset,
            uncompressed_offset: self.uncompressed_offset,
            file_offset,
            index: self.index,
            crc32: 0,
        }
    }
    /// From a bootstrap chunk-table entry.
    pub fn from_table_entry(e: &ChunkTableEntry) -> Self {
        Self {
            digest: e.digest,
            blob_index: e.blob_index,
            index: e.index,
            compressed_offset: e.compressed_offset,
            compressed_size: e.compressed_size,
            uncompressed_offset: e.uncompressed_offset,
            uncompressed_size: e.uncompressed_size,
            compressed: e.flags & super::layout::chunk_flags::COMPRESSED != 0,
        }
    }
}

/// Compress `data`; returns `None` when compression would not make it smaller (the chunk is
/// then stored raw and flagged uncompressed, as nydus-image does).
pub fn compress(compressor: Compressor, data: &[u8]) -> Result<Option<Vec<u8>>, ChunkError> {
    let out = match compressor {
        Compressor::None => return Ok(None),
        Compressor::Lz4Block => lz4_flex::block::compress(data),
        Compressor::Zstd => zstd::bulk::compress(data, 3).map_err(|e| ChunkError::Io {
            blob_id: String::new(),
            index: 0,
            source: e,
        })?,
        Compressor::Gzip => return Err(ChunkError::Unsupported(compressor)),
    };
    Ok((out.len() < data.len()).then_some(out))
}

/// Decompress the stored bytes of `chunk` (or return them when it is stored raw) and check the
/// size. The digest is checked separately by [`verify`].
pub fn decompress(
    compressor: Compressor,
    chunk: &ChunkRef,
    stored: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    let err = |detail: String| ChunkError::Decompress {
        blob_index: chunk.blob_index,
        index: chunk.index,
        compressor,
        detail,
    };
    let size = chunk.uncompressed_size as usize;
    let out = if !chunk.compressed {
        stored.to_vec()
    } else {
        match compressor {
            Compressor::None => stored.to_vec(),
            Compressor::Lz4Block => {
                lz4_flex::block::decompress(stored, size).map_err(|e| err(e.to_string()))?
            }
            Compressor::Zstd => {
                zstd::bulk::decompress(stored, size).map_err(|e| err(e.to_string()))?
            }
            Compressor::Gzip => {
                use std::io::Read;
                let mut out = Vec::with_capacity(size);
                flate2::read::GzDecoder::new(stored)
                    .take(size as u64 + 1)
                    .read_to_end(&mut out)
                    .map_err(|e| err(e.to_string()))?;
                out
            }
        }
    };
    if out.len() != size {
        return Err(err(format!("got {} bytes, expected {size}", out.len())));
    }
    Ok(out)
}

/// Check that `data` has the chunk's recorded digest.
pub fn verify(digester: Digester, chunk: &ChunkRef, data: &[u8]) -> Result<(), ChunkError> {
    let actual = digester.digest(data);
    if actual != chunk.digest {
        return Err(ChunkError::DigestMismatch {
            blob_index: chunk.blob_index,
            index: chunk.index,
            expected: hex::encode(chunk.digest),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}

/// Supplies the uncompressed, verified bytes of a chunk. Implemented by the storage layer
/// (direct blob reads, the chunk cache); file reads in [`super::reader`] go through it.
///
/// Contract: the returned bytes are exactly `chunk.uncompressed_size` long and have the chunk's
/// digest. An implementation that cannot guarantee that returns an error (never wrong data).
pub trait ChunkReader: Send + Sync {
    /// Bytes of `chunk`.
    fn read_chunk(&self, chunk: &ChunkRef) -> Result<std::sync::Arc<Vec<u8>>, ChunkError>;

    /// True when `chunk` can be served without a backend fetch (a cache hit). The default says
    /// no, which only costs a redundant read-ahead.
    fn is_cached(&self, _chunk: &ChunkRef) -> bool {
        false
    }

    /// Bytes `[offset, offset+len)` of `chunk` (clipped to the chunk). The default reads the
    /// whole chunk; a cache that holds chunks uncompressed overrides it to read only the range.
    fn read_chunk_range(
        &self,
        chunk: &ChunkRef,
        offset: u32,
        len: u32,
    ) -> Result<Vec<u8>, ChunkError> {
        Ok(clip(&self.read_chunk(chunk)?, offset, len).to_vec())
    }
}

/// `bytes[offset..offset+len]`, clipped to `bytes`.
pub fn clip(bytes: &[u8], offset: u32, len: u32) -> &[u8] {
    let from = (offset as usize).min(bytes.len());
    let to = from.saturating_add(len as usize).min(bytes.len());
    &bytes[from..to]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_for(data: &[u8], stored: &[u8], compressed: bool) -> ChunkRef {
        ChunkRef {
            digest: Digester::Blake3.digest(data),
            blob_index: 0,
            index: 0,
            compressed_offset: 0,
            compressed_size: stored.len() as u32,
            uncompressed_offset: 0,
            uncompressed_size: data.len() as u32,
            compressed,
        }
    }

    #[test]
    fn every_compressor_round_trips_and_verifies() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in [Compressor::None, Compressor::Lz4Block, Compressor::Zstd] {
            let stored = compress(c, &data).unwrap();
            let (bytes, compressed) = match &stored {
                Some(s) => (s.as_slice(), true),
                None => (data.as_slice(), false),
            };
            let chunk = chunk_for(&data, bytes, compressed);
            let out = decompress(c, &chunk, bytes).unwrap();
            assert_eq!(out, data, "{c}");
            verify(Digester::Blake3, &chunk, &out).unwrap();
        }
    }

    #[test]
    fn incompressible_data_is_stored_raw() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(Compressor::Zstd, &data).unwrap().is_none());
    }

    #[test]
    fn corrupt_data_is_an_error_not_wrong_bytes() {
        let data = vec![7u8; 10_000];
        let stored = compress(Compressor::Zstd, &data).unwrap().unwrap();
        let chunk = chunk_for(&data, &stored, true);
        let mut bad = stored.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        match decompress(Compressor::Zstd, &chunk, &bad) {
            Err(_) => {}
            Ok(out) => assert!(verify(Digester::Blake3, &chunk, &out).is_err()),
        }
        let mut other = data.clone();
        other[0] = 8;
        assert!(verify(Digester::Blake3, &chunk, &other).is_err());
    }
}
