//! Verify an image: metadata (every inode, directory, xattr and chunk reference reachable from
//! the root decodes and is in bounds; no cycles) and, given a chunk source, every chunk's data
//! (decompresses to its size and has its digest), in parallel.

use rayon::prelude::*;

use super::chunk::{ChunkReader, ChunkRef};
use super::reader::{Image, ReadError};

/// Result of a check.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// Inodes visited.
    pub inodes: u64,
    /// Directory entries visited (names, hardlinks counted each).
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Bytes of regular-file data (hardlinks counted once).
    pub file_bytes: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// Chunks whose data was verified.
    pub chunks_verified: u64,
    /// Problems found in chunk data (empty when all is well or data was not checked).
    pub chunk_errors: Vec<String>,
}

/// Check metadata; with `data`, also every referenced chunk.
pub fn check(img: &Image, data: Option<&dyn ChunkReader>) -> Result<CheckReport, ReadError> {
    let mut r = CheckReport::default();
    let mut seen = std::collections::HashSet::new();
    let mut chunks: std::collections::BTreeMap<(u32, u32), ChunkRef> = Default::default();
    img.walk::<ReadError>(|_, inode| {
        r.entries += 1;
        if !seen.insert(inode.nid) {
            return Ok(true);
        }
        r.inodes += 1;
        img.xattrs(inode)?;
        match inode.file_type() {
            libc::S_IFDIR => {
                img.dir_entries(inode)?;
            }
            libc::S_IFLNK => {
                img.readlink(inode)?;
            }
            libc::S_IFREG => {
                r.files += 1;
                if img.kind == crate::rafs::reader::ImageKind::RafsV6
                    || inode.disk.layout == crate::rafs::layout::data_layout::CHUNK_BASED
                {
                    for c in img.chunks(inode)?.into_iter().flatten() {
                        chunks.insert((c.blob_index, c.index), c);
                    }
                } else {
                    // Data stored in the image itself (plain EROFS): must lie inside it.
                    img.check_flat_layout(inode)?;
                }
                r.file_bytes = r.file_bytes.saturating_add(inode.disk.size);
            }
            _ => {}
        }
        Ok(true)
    })?;
    r.chunks = chunks.len() as u64;
    if let Some(src) = data {
        let errors: Vec<String> = chunks
            .values()
            .collect::<Vec<_>>()
            .par_iter()
            .filter_map(|c| src.read_chunk(c).err().map(|e| e.to_string()))
            .collect();
        r.chunks_verified = r.chunks - errors.len() as u64;
        r.chunk_errors = errors;
    }
    Ok(r)
}
