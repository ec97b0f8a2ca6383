//! `export --block`: flatten a bootstrap and its blobs into one EROFS image the kernel mounts
//! without extra devices.
//!
//! The bootstrap's blocks come first; each blob's uncompressed image follows at a block address
//! recorded as the device's `mapped_blkaddr`. With every device mapped, the kernel's erofs
//! driver resolves `(device, blkaddr)` to `mapped_blkaddr + blkaddr` on the single device.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::chunk::ChunkReader;
use super::layout::{self as l, BLOCK_SIZE};
use super::reader::{Image, ImageKind, ReadError};

/// Errors of export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the image or a chunk failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Io {
        /// Output path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image cannot be exported.
    #[error("cannot export: {0}")]
    Unsupported(String),
}

/// Write the flattened image to `out` (staged under a temporary name, then renamed).
pub fn export_block(img: &Image, src: &dyn ChunkReader, out: &Path) -> Result<u64, ExportError> {
    if img.kind != ImageKind::RafsV6 {
        return Err(ExportError::Unsupported("not a RAFS bootstrap".into()));
    }
    let io = |source| ExportError::Io { path: out.display().to_string(), source };
    let tmp = out.with_extension("strata-tmp");
    let f = File::create(&tmp).map_err(io)?;
    let mut boot = img.bytes().to_vec();
    let mut next = boot.len() as u64 / BLOCK_SIZE;
    let mut bases = Vec::new();
    for (i, dev) in img.devices.iter().enumerate() {
        let base = u32::try_from(next)
            .map_err(|_| ExportError::Unsupported("image exceeds 16 TiB".into()))?;
        bases.push(u64::from(base));
        let slot = l::DeviceSlot { mapped_blkaddr: base, ..dev.clone() };
        let at = u64::from(img.sb.devt_slotoff) as usize * 128 + i * l::DEVICE_SLOT_SIZE;
        boot[at..at + l::DEVICE_SLOT_SIZE].copy_from_slice(&slot.encode());
        next += u64::from(dev.blocks);
    }
    let mut sb = img.sb.clone();
    sb.blocks =
        u32::try_from(next).map_err(|_| ExportError::Unsupported("image exceeds 16 TiB".into()))?;
    let sb_at = l::EROFS_SB_OFFSET as usize;
    boot[sb_at..sb_at + l::EROFS_SB_SIZE].copy_from_slice(&sb.encode());
    (&f).write_all(&boot).map_err(io)?;
    for c in img.all_chunks() {
        let data = src.read_chunk(&c).map_err(ReadError::from)?;
        let base = bases[c.blob_index as usize] * BLOCK_SIZE;
        f.write_all_at(&data, base + c.uncompressed_offset).map_err(io)?;
    }
    let size = next * BLOCK_SIZE;
    f.set_len(size).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)?;
    Ok(size)
}
