//! Every on-disk structure of RAFS v6 (and the plain EROFS it extends), in one place.
//!
//! Each struct here has a fixed byte size, an `encode` into a little-endian buffer and a
//! `decode` from one. Decoders never trust their input: they check lengths and return
//! [`FormatError`] instead of panicking; semantic checks (offsets inside the file, counts
//! within bounds) are the reader's job, which knows the file size.
//!
//! The constants are format contracts shared with nydus-image, nydusd and the kernel's erofs
//! driver. Changing any of them is a format break.

use std::fmt;

/// Errors of the byte-level codec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The buffer is shorter than the structure.
    #[error("{what}: need {need} bytes, have {have}")]
    Short {
        /// Structure being decoded.
        what: &'static str,
        /// Bytes the structure needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("{what}: {detail}")]
    Invalid {
        /// Structure or field being decoded.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// EROFS superblock magic.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// Byte offset of the EROFS superblock in the image.
pub const EROFS_SB_OFFSET: u64 = 1024;
/// Size of the EROFS superblock.
pub const EROFS_SB_SIZE: usize = 128;
/// Byte offset of the RAFS v6 extended superblock (right after the EROFS one).
pub const RAFS_EXT_SB_OFFSET: u64 = EROFS_SB_OFFSET + EROFS_SB_SIZE as u64;
/// Size of the RAFS v6 extended superblock.
pub const RAFS_EXT_SB_SIZE: usize = 256;
/// Device table slot offset in 128-byte units: 11 * 128 = 1408, right after the ext SB.
pub const DEVT_SLOT_OFF: u16 = 11;
/// Size of one device table entry.
pub const DEVICE_SLOT_SIZE: usize = 128;
/// Size of one RAFS blob table entry.
pub const BLOB_ENTRY_SIZE: usize = 256;
/// Size of one bootstrap chunk table entry (`RafsV5ChunkInfo`, shared with v5).
pub const CHUNK_TABLE_ENTRY_SIZE: usize = 80;
/// Inode slots are 32 bytes: nid = (inode offset - meta_blkaddr * block size) / 32.
pub const INODE_SLOT_SIZE: u64 = 32;
/// Size of a compact inode.
pub const INODE_COMPACT_SIZE: usize = 32;
/// Size of an extended inode.
pub const INODE_EXTENDED_SIZE: usize = 64;
/// Size of one directory entry record (names follow the records of a block).
pub const DIRENT_SIZE: usize = 12;
/// Size of one chunk index entry after a chunk-based inode.
pub const CHUNK_INDEX_SIZE: usize = 8;
/// Size of the inline xattr body header.
pub const XATTR_IBODY_HEADER_SIZE: usize = 12;
/// Meta block size bits of every image we write (4 KiB blocks).
pub const BLOCK_BITS: u8 = 12;
/// Meta block size of every image we write.
pub const BLOCK_SIZE: u64 = 1 << BLOCK_BITS;
/// Magic at both ends of the 4 KiB blob meta header (`blob.meta.header`).
pub const BLOB_META_MAGIC: u32 = 0xb10b_b10b;
/// Size of the blob meta header.
pub const BLOB_META_HEADER_SIZE: usize = 4096;
/// Size of one blob ToC entry.
pub const TOC_ENTRY_SIZE: usize = 128;
/// Null block address: a hole chunk (reads as zeros).
pub const NULL_ADDR: u32 = u32::MAX;
/// strata extension: byte offset, in an extended inode's reserved area, of strata's inode
/// flags. The kernel and nydusd ignore the reserved bytes; other builders write zeros.
pub const INODE_EXT_STRATA_FLAGS_OFFSET: usize = 48;
/// strata inode flag: a directory no layer entry described (an implied parent). Merging such
/// a layer keeps the lower directory's attributes, as containerd does.
pub const STRATA_INODE_IMPLIED_DIR: u8 = 0x1;

/// `s_feature_compat` bit marking a RAFS v6 bootstrap.
pub const FEATURE_COMPAT_RAFS_V6: u32 = 0x4000_0000;
/// `s_feature_compat` bit: superblock checksum (we never set it).
pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 0x1;
/// `s_feature_compat` bit: mtime in the EROFS superblock (ignored).
pub const FEATURE_COMPAT_MTIME: u32 = 0x2;
/// `s_feature_incompat`: lz4 0-padding (compressed erofs; we never write it).
pub const FEATURE_INCOMPAT_ZERO_PADDING: u32 = 0x1;
/// `s_feature_incompat`: chunk-based files.
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// `s_feature_incompat`: device table.
pub const FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x8;

/// Largest number of chunks a blob may hold (24-bit chunk-info index).
pub const MAX_CHUNKS_PER_BLOB: u32 = 1 << 24;
/// Smallest chunk size.
pub const MIN_CHUNK_SIZE: u32 = 0x1000;
/// Largest chunk size.
pub const MAX_CHUNK_SIZE: u32 = 0x100_0000;
/// Default chunk size (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 0x10_0000;

/// RAFS superblock flags (`RafsSuperFlags`).
pub mod sb_flags {
    /// Chunks are not compressed.
    pub const COMPRESSION_NONE: u64 = 0x1;
    /// lz4_block compression.
    pub const COMPRESSION_LZ4: u64 = 0x2;
    /// blake3 chunk digests.
    pub const HASH_BLAKE3: u64 = 0x4;
    /// sha256 chunk digests.
    pub const HASH_SHA256: u64 = 0x8;
    /// uid/gid in inodes are meaningful (else the daemon reports its own).
    pub const EXPLICIT_UID_GID: u64 = 0x10;
    /// Some inode carries xattrs.
    pub const HAS_XATTR: u64 = 0x20;
    /// gzip compression.
    pub const COMPRESSION_GZIP: u64 = 0x40;
    /// zstd compression.
    pub const COMPRESSION_ZSTD: u64 = 0x80;
    /// Chunk digests are inlined in the blob meta.
    pub const INLINED_CHUNK_DIGEST: u64 = 0x100;
    /// tarfs mode (512-byte blocks, tar as blob).
    pub const TARFS_MODE: u64 = 0x200;
    /// No encryption.
    pub const ENCRYPTION_NONE: u64 = 0x0100_0000;
    /// AES-128-XTS encryption.
    pub const ENCRYPTION_AES_128_XTS: u64 = 0x0200_0000;
}

/// Blob features (`BlobFeatures`).
pub mod blob_features {
    /// Uncompressed chunk offsets are 4 KiB aligned.
    pub const ALIGNED: u32 = 0x1;
    /// The bootstrap is inlined in the blob.
    pub const INLINED_FS_META: u32 = 0x2;
    /// Chunk-info array uses the 24-byte v2 entries.
    pub const CHUNK_INFO_V2: u32 = 0x4;
    /// zran (referenced gzip) blob.
    pub const ZRAN: u32 = 0x8;
    /// Separate meta blob.
    pub const SEPARATE: u32 = 0x10;
    /// Chunk digests inlined in blob meta.
    pub const INLINED_CHUNK_DIGEST: u32 = 0x20;
    /// tarfs blob.
    pub const TARFS: u32 = 0x40;
    /// Batch chunks.
    pub const BATCH: u32 = 0x80;
    /// Encrypted chunks.
    pub const ENCRYPTED: u32 = 0x100;
    /// Sections are preceded by tar headers.
    pub const HAS_TAR_HEADER: u32 = 0x1000_0000;
    /// The blob ends with a ToC.
    pub const HAS_TOC: u32 = 0x2000_0000;
    /// Built by a builder that can write tar headers and ToC.
    pub const CAP_TAR_TOC: u32 = 0x4000_0000;
    /// Features whose data we cannot read: an image using them is rejected clearly.
    pub const UNSUPPORTED: u32 = ZRAN | SEPARATE | TARFS | BATCH | ENCRYPTED;
}

/// Chunk flags (`BlobChunkFlags`).
pub mod chunk_flags {
    /// The stored chunk is compressed.
    pub const COMPRESSED: u32 = 0x1;
    /// Legacy hole marker.
    pub const HOLE: u32 = 0x2;
    /// Encrypted chunk.
    pub const ENCRYPTED: u32 = 0x4;
    /// Batch chunk.
    pub const BATCH: u32 = 0x8;
    /// A crc32 is stored.
    pub const HAS_CRC32: u32 = 0x10;
}

/// Inode data layouts (`i_format` bits 1..3).
pub mod data_layout {
    /// Data in consecutive blocks starting at `i_u`.
    pub const FLAT_PLAIN: u16 = 0;
    /// Compressed full (erofs compression, not supported).
    pub const COMPRESSED_FULL: u16 = 1;
    /// Full blocks at `i_u`, the tail inlined after inode and xattrs.
    pub const FLAT_INLINE: u16 = 2;
    /// Compressed compact (erofs compression, not supported).
    pub const COMPRESSED_COMPACT: u16 = 3;
    /// Chunk-based: an index array after inode and xattrs.
    pub const CHUNK_BASED: u16 = 4;
}

/// Chunk format word flag: entries are 8-byte chunk indexes (not 4-byte block maps).
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;
/// Chunk format word mask of the chunk size bits (log2(chunk size) - block bits).
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x1f;

/// Directory entry file types.
pub mod file_type {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Character device.
    pub const CHR: u8 = 3;
    /// Block device.
    pub const BLK: u8 = 4;
    /// FIFO.
    pub const FIFO: u8 = 5;
    /// Socket.
    pub const SOCK: u8 = 6;
    /// Symbolic link.
    pub const SYMLINK: u8 = 7;
}

/// Compression algorithms as numbered in the blob table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compressor {
    /// Stored as is.
    None,
    /// lz4 block format (no frame), as nydus's `lz4_block`.
    Lz4Block,
    /// gzip (only for referenced OCI data; we can read but do not write it).
    Gzip,
    /// zstd frames.
    Zstd,
}

impl Compressor {
    /// Value in the blob table and ToC-independent enums.
    pub fn to_u32(self) -> u32 {
        match self {
            Compressor::None => 0,
            Compressor::Lz4Block => 1,
            Compressor::Gzip => 2,
            Compressor::Zstd => 3,
        }
    }
    /// Parse the blob table value.
    pub fn from_u32(v: u32) -> Result<Self, FormatError> {
        Ok(match v {
            0 => Compressor::None,
            1 => Compressor::Lz4Block,
            2 => Compressor::Gzip,
            3 => Compressor::Zstd,
            _ => return Err(invalid("compression_algo", format!("unknown value {v}"))),
        })
    }
    /// The superblock flag for this compressor.
    pub fn sb_flag(self) -> u64 {
        match self {
            Compressor::None => sb_flags::COMPRESSION_NONE,
            Compressor::Lz4Block => sb_flags::COMPRESSION_LZ4,
            Compressor::Gzip => sb_flags::COMPRESSION_GZIP,
            Compressor::Zstd => sb_flags::COMPRESSION_ZSTD,
        }
    }
    /// The compressor named by superblock flags, if exactly one is set.
    pub fn from_sb_flags(flags: u64) -> Result<Self, FormatError> {
        let all = [Compressor::None, Compressor::Lz4Block, Compressor::Gzip, Compressor::Zstd];
        let set: Vec<_> = all.into_iter().filter(|c| flags & c.sb_flag() != 0).collect();
        match set.as_slice() {
            [one] => Ok(*one),
            // Plain EROFS images carry no RAFS flags; they never reference blob chunks.
            [] => Ok(Compressor::None),
            _ => Err(invalid("s_flags", format!("several compressors set in {flags:#x}"))),
        }
    }
    /// The name nydus-image uses on its command line.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::None => "none",
            Compressor::Lz4Block => "lz4_block",
            Compressor::Gzip => "gzip",
            Compressor::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Chunk digest algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Digester {
    /// blake3 (nydus default).
    Blake3,
    /// sha256.
    Sha256,
}

impl Digester {
    /// Value in the blob table.
    pub fn to_u32(self) -> u32 {
        match self {
            Digester::Blake3 => 0,
            Digester::Sha256 => 1,
        }
    }
    /// Parse the blob table value.
    pub fn from_u32(v: u32) -> Result<Self, FormatError> {
        match v {
            0 => Ok(Digester::Blake3),
            1 => Ok(Digester::Sha256),
            _ => Err(invalid("digest_algo", format!("unknown value {v}"))),
        }
    }
    /// The superblock flag for this digester.
    pub fn sb_flag(self) -> u64 {
        match self {
            Digester::Blake3 => sb_flags::HASH_BLAKE3,
            Digester::Sha256 => sb_flags::HASH_SHA256,
        }
    }
    /// The digester named by superblock flags.
    pub fn from_sb_flags(flags: u64) -> Result<Self, FormatError> {
        match (flags & sb_flags::HASH_BLAKE3 != 0, flags & sb_flags::HASH_SHA256 != 0) {
            (true, false) | (false, false) => Ok(Digester::Blake3),
            (false, true) => Ok(Digester::Sha256),
            (true, true) => Err(invalid("s_flags", format!("both hash flags set in {flags:#x}"))),
        }
    }
    /// The name nydus-image uses on its command line.
    pub fn name(self) -> &'static str {
        match self {
            Digester::Blake3 => "blake3",
            Digester::Sha256 => "sha256",
        }
    }
    /// Digest of `data`.
    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            Digester::Blake3 => *blake3::hash(data).as_bytes(),
            Digester::Sha256 => {
                use sha2::Digest;
                sha2::Sha256::digest(data).into()
            }
        }
    }
}

impl fmt::Display for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> FormatError {
    FormatError::Invalid { what, detail: detail.into() }
}

fn need(what: &'static str, buf: &[u8], n: usize) -> Result<(), FormatError> {
    if buf.len() < n {
        return Err(FormatError::Short { what, need: n, have: buf.len() });
    }
    Ok(())
}

/// Little-endian field access on a byte slice whose length the caller checked.
pub(crate) mod le {
    pub fn u16(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    pub fn u32(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
    }
    pub fn u64(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
    }
    pub fn put16(b: &mut [u8], o: usize, v: u16) {
        b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put32(b: &mut [u8], o: usize, v: u32) {
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put64(b: &mut [u8], o: usize, v: u64) {
        b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
}

/// The EROFS superblock (128 bytes at offset 1024).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErofsSuperBlock {
    /// Compatible features.
    pub feature_compat: u32,
    /// Block size bits (12 for 4 KiB).
    pub blkszbits: u8,
    /// nid of the root directory.
    pub root_nid: u16,
    /// Number of inodes.
    pub inos: u64,
    /// Build time; the kernel uses it as the mtime of compact inodes.
    pub build_time: u64,
    /// Nanoseconds of the build time.
    pub build_time_nsec: u32,
    /// Image size in blocks.
    pub blocks: u32,
    /// Start block of the inode area.
    pub meta_blkaddr: u32,
    /// Start block of shared xattrs (must be 0 for RAFS).
    pub xattr_blkaddr: u32,
    /// Volume uuid.
    pub uuid: [u8; 16],
    /// Incompatible features.
    pub feature_incompat: u32,
    /// Number of extra devices (data blobs).
    pub extra_devices: u16,
    /// Device table offset in 128-byte slots.
    pub devt_slotoff: u16,
}

impl ErofsSuperBlock {
    /// Serialise into 128 bytes.
    pub fn encode(&self) -> [u8; EROFS_SB_SIZE] {
        let mut b = [0u8; EROFS_SB_SIZE];
        le::put32(&mut b, 0, EROFS_MAGIC);
        le::put32(&mut b, 8, self.feature_compat);
        b[12] = self.blkszbits;
        le::put16(&mut b, 14, self.root_nid);
        le::put64(&mut b, 16, self.inos);
        le::put64(&mut b, 24, self.build_time);
        le::put32(&mut b, 32, self.build_time_nsec);
        le::put32(&mut b, 36, self.blocks);
        le::put32(&mut b, 40, self.meta_blkaddr);
        le::put32(&mut b, 44, self.xattr_blkaddr);
        b[48..64].copy_from_slice(&self.uuid);
        le::put32(&mut b, 80, self.feature_incompat);
        le::put16(&mut b, 86, self.extra_devices);
        le::put16(&mut b, 88, self.devt_slotoff);
        b
    }
    /// Parse 128 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("EROFS superblock", b, EROFS_SB_SIZE)?;
        let magic = le::u32(b, 0);
        if magic != EROFS_MAGIC {
            return Err(invalid(
                "EROFS superblock",
                format!("bad magic {magic:#010x} (expected {EROFS_MAGIC:#010x})"),
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[48..64]);
        Ok(Self {
            feature_compat: le::u32(b, 8),
            blkszbits: b[12],
            root_nid: le::u16(b, 14),
            inos: le::u64(b, 16),
            build_time: le::u64(b, 24),
            build_time_nsec: le::u32(b, 32),
            blocks: le::u32(b, 36),
            meta_blkaddr: le::u32(b, 40),
            xattr_blkaddr: le::u32(b, 44),
            uuid,
            feature_incompat: le::u32(b, 80),
            extra_devices: le::u16(b, 86),
            devt_slotoff: le::u16(b, 88),
        })
    }
}

/// The RAFS v6 extended superblock (256 bytes at offset 1152).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RafsExtSuperBlock {
    /// `RafsSuperFlags`.
    pub flags: u64,
    /// Blob table offset (4 KiB aligned).
    pub blob_table_offset: u64,
    /// Blob table size in bytes.
    pub blob_table_size: u32,
    /// Filesystem chunk size.
    pub chunk_size: u32,
    /// Chunk table offset (0 when absent).
    pub chunk_table_offset: u64,
    /// Chunk table size in bytes.
    pub chunk_table_size: u64,
    /// Prefetch table offset (0 when absent).
    pub prefetch_table_offset: u64,
    /// Prefetch table size in bytes (4 per entry).
    pub prefetch_table_size: u32,
}

impl RafsExtSuperBlock {
    /// Serialise into 256 bytes.
    pub fn encode(&self) -> [u8; RAFS_EXT_SB_SIZE] {
        let mut b = [0u8; RAFS_EXT_SB_SIZE];
        le::put64(&mut b, 0, self.flags);
        le::put64(&mut b, 8, self.blob_table_offset);
        le::put32(&mut b, 16, self.blob_table_size);
        le::put32(&mut b, 20, self.chunk_size);
        le::put64(&mut b, 24, self.chunk_table_offset);
        le::put64(&mut b, 32, self.chunk_table_size);
        le::put64(&mut b, 40, self.prefetch_table_offset);
        le::put32(&mut b, 48, self.prefetch_table_size);
        b
    }
    /// Parse 256 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("RAFS extended superblock", b, RAFS_EXT_SB_SIZE)?;
        Ok(Self {
            flags: le::u64(b, 0),
            blob_table_offset: le::u64(b, 8),
            blob_table_size: le::u32(b, 16),
            chunk_size: le::u32(b, 20),
            chunk_table_offset: le::u64(b, 24),
            chunk_table_size: le::u64(b, 32),
            prefetch_table_offset: le::u64(b, 40),
            prefetch_table_size: le::u32(b, 48),
        })
    }
}

/// Blob ids are 64 ASCII hex characters in the device and blob tables.
pub const BLOB_ID_LEN: usize = 64;

fn encode_blob_id(dst: &mut [u8], id: &str) {
    let n = id.len().min(BLOB_ID_LEN);
    dst[..n].copy_from_slice(&id.as_bytes()[..n]);
}

fn decode_blob_id(what: &'static str, src: &[u8]) -> Result<String, FormatError> {
    let end = src.iter().position(|&c| c == 0).unwrap_or(src.len());
    let id = std::str::from_utf8(&src[..end]).map_err(|_| invalid(what, "blob id is not ASCII"))?;
    if id.is_empty() || !id.bytes().all(|c| c.is_ascii_graphic()) || id.contains('/') {
        return Err(invalid(what, format!("blob id {id:?} is empty or not a file name")));
    }
    Ok(id.to_string())
}

/// One device table entry (128 bytes): what the kernel reads for each data blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSlot {
    /// Blob id (the file name of the blob).
    pub blob_id: String,
    /// Uncompressed blob size in blocks.
    pub blocks: u32,
    /// Block address of the blob in a flattened image (`export --block`), else 0.
    pub mapped_blkaddr: u32,
}

impl DeviceSlot {
    /// Serialise into 128 bytes.
    pub fn encode(&self) -> [u8; DEVICE_SLOT_SIZE] {
        let mut b = [0u8; DEVICE_SLOT_SIZE];
        encode_blob_id(&mut b[..BLOB_ID_LEN], &self.blob_id);
        le::put32(&mut b, 64, self.blocks);
        le::put32(&mut b, 68, self.mapped_blkaddr);
        b
    }
    /// Parse 128 bytes. Plain EROFS images may carry a non-hex tag; it is kept as is.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("device table entry", b, DEVICE_SLOT_SIZE)?;
        let end = b[..BLOB_ID_LEN].iter().position(|&c| c == 0).unwrap_or(BLOB_ID_LEN);
        Ok(Self {
            blob_id: String::from_utf8_lossy(&b[..end]).into_owned(),
            blocks: le::u32(b, 64),
            mapped_blkaddr: le::u32(b, 68),
        })
    }
}

/// One RAFS blob table entry (256 bytes): what nydusd and strata read for each data blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobEntry {
    /// Blob id (hex sha256 of the blob file).
    pub blob_id: String,
    /// Position in the table.
    pub blob_index: u32,
    /// Chunk size used when building the blob.
    pub chunk_size: u32,
    /// Number of chunks in the blob.
    pub chunk_count: u32,
    /// `Compressor::to_u32`.
    pub compression_algo: u32,
    /// `Digester::to_u32`.
    pub digest_algo: u32,
    /// `blob_features`.
    pub features: u32,
    /// Size of the chunk data part (compressed).
    pub compressed_size: u64,
    /// Uncompressed size of the chunk data (aligned layout).
    pub uncompressed_size: u64,
    /// Size of the ToC at the end of the blob (0 when absent).
    pub blob_toc_size: u32,
    /// Compressor of the chunk-info array.
    pub ci_compressor: u32,
    /// Offset of the chunk-info array in the blob.
    pub ci_offset: u64,
    /// Stored size of the chunk-info array.
    pub ci_compressed_size: u64,
    /// Uncompressed size of the chunk-info array.
    pub ci_uncompressed_size: u64,
    /// sha256 of the ToC.
    pub blob_toc_digest: [u8; 32],
    /// zran / encryption key material (unused by us).
    pub blob_meta_digest: [u8; 32],
    /// zran meta size (unused by us).
    pub blob_meta_size: u64,
}

impl BlobEntry {
    /// Serialise into 256 bytes.
    pub fn encode(&self) -> [u8; BLOB_ENTRY_SIZE] {
        let mut b = [0u8; BLOB_ENTRY_SIZE];
        encode_blob_id(&mut b[..BLOB_ID_LEN], &self.blob_id);
        le::put32(&mut b, 64, self.blob_index);
        le::put32(&mut b, 68, self.chunk_size);
        le::put32(&mut b, 72, self.chunk_count);
        le::put32(&mut b, 76, self.compression_algo);
        le::put32(&mut b, 80, self.digest_algo);
        le::put32(&mut b, 84, self.features);
        le::put64(&mut b, 88, self.compressed_size);
        le::put64(&mut b, 96, self.uncompressed_size);
        le::put32(&mut b, 104, self.blob_toc_size);
        le::put32(&mut b, 108, self.ci_compressor);
        le::put64(&mut b, 112, self.ci_offset);
        le::put64(&mut b, 120, self.ci_compressed_size);
        le::put64(&mut b, 128, self.ci_uncompressed_size);
        b[136..168].copy_from_slice(&self.blob_toc_digest);
        b[168..200].copy_from_slice(&self.blob_meta_digest);
        le::put64(&mut b, 200, self.blob_meta_size);
        b
    }
    /// Parse 256 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("blob table entry", b, BLOB_ENTRY_SIZE)?;
        let mut toc = [0u8; 32];
        toc.copy_from_slice(&b[136..168]);
        let mut meta = [0u8; 32];
        meta.copy_from_slice(&b[168..200]);
        Ok(Self {
            blob_id: decode_blob_id("blob table entry", &b[..BLOB_ID_LEN])?,
            blob_index: le::u32(b, 64),
            chunk_size: le::u32(b, 68),
            chunk_count: le::u32(b, 72),
            compression_algo: le::u32(b, 76),
            digest_algo: le::u32(b, 80),
            features: le::u32(b, 84),
            compressed_size: le::u64(b, 88),
            uncompressed_size: le::u64(b, 96),
            blob_toc_size: le::u32(b, 104),
            ci_compressor: le::u32(b, 108),
            ci_offset: le::u64(b, 112),
            ci_compressed_size: le::u64(b, 120),
            ci_uncompressed_size: le::u64(b, 128),
            blob_toc_digest: toc,
            blob_meta_digest: meta,
            blob_meta_size: le::u64(b, 200),
        })
    }
}

/// One bootstrap chunk table entry (80 bytes, `RafsV5ChunkInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChunkTableEntry {
    /// Digest of the uncompressed chunk.
    pub digest: [u8; 32],
    /// Blob the chunk lives in.
    pub blob_index: u32,
    /// `chunk_flags`.
    pub flags: u32,
    /// Stored size.
    pub compressed_size: u32,
    /// Uncompressed size.
    pub uncompressed_size: u32,
    /// Offset of the stored bytes in the blob.
    pub compressed_offset: u64,
    /// Offset in the uncompressed (aligned) blob image.
    pub uncompressed_offset: u64,
    /// Offset in the first file that used it.
    pub file_offset: u64,
    /// Index of the chunk in its blob (the chunk-info index).
    pub index: u32,
    /// crc32 (unused).
    pub crc32: u32,
}

impl ChunkTableEntry {
    /// Serialise into 80 bytes.
    pub fn encode(&self) -> [u8; CHUNK_TABLE_ENTRY_SIZE] {
        let mut b = [0u8; CHUNK_TABLE_ENTRY_SIZE];
        b[..32].copy_from_slice(&self.digest);
        le::put32(&mut b, 32, self.blob_index);
        le::put32(&mut b, 36, self.flags);
        le::put32(&mut b, 40, self.compressed_size);
        le::put32(&mut b, 44, self.uncompressed_size);
        le::put64(&mut b, 48, self.compressed_offset);
        le::put64(&mut b, 56, self.uncompressed_offset);
        le::put64(&mut b, 64, self.file_offset);
        le::put32(&mut b, 72, self.index);
        le::put32(&mut b, 76, self.crc32);
        b
    }
    /// Parse 80 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("chunk table entry", b, CHUNK_TABLE_ENTRY_SIZE)?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[..32]);
        Ok(Self {
            digest,
            blob_index: le::u32(b, 32),
            flags: le::u32(b, 36),
            compressed_size: le::u32(b, 40),
            uncompressed_size: le::u32(b, 44),
            compressed_offset: le::u64(b, 48),
            uncompressed_offset: le::u64(b, 56),
            file_offset: le::u64(b, 64),
            index: le::u32(b, 72),
            crc32: le::u32(b, 76),
        })
    }
}

/// An inode, compact or extended, with the fields both share widened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskInode {
    /// True for the 64-byte extended form.
    pub extended: bool,
    /// `data_layout`.
    pub layout: u16,
    /// Inline xattr size in 4-byte units (erofs `i_xattr_icount`).
    pub xattr_icount: u16,
    /// File mode including type bits.
    pub mode: u16,
    /// Link count.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Start block, rdev or chunk format, depending on type and layout.
    pub u: u32,
    /// Inode serial number.
    pub ino: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (extended only; compact inodes take the superblock build time).
    pub mtime: u64,
    /// Nanoseconds of mtime.
    pub mtime_nsec: u32,
    /// strata flags (extended inodes only; see `STRATA_INODE_IMPLIED_DIR`).
    pub strata_flags: u8,
}

impl DiskInode {
    /// On-disk size of this inode's fixed part.
    pub fn disk_size(&self) -> usize {
        if self.extended {
            INODE_EXTENDED_SIZE
        } else {
            INODE_COMPACT_SIZE
        }
    }
    /// Size of the inline xattr area.
    pub fn xattr_size(&self) -> usize {
        xattr_ibody_size(self.xattr_icount)
    }
    /// Serialise; the caller has chosen `extended` so that nothing is lost.
    pub fn encode(&self) -> Vec<u8> {
        let format = u16::from(self.extended) | (self.layout << 1);
        if self.extended {
            let mut b = vec![0u8; INODE_EXTENDED_SIZE];
            le::put16(&mut b, 0, format);
            le::put16(&mut b, 2, self.xattr_icount);
            le::put16(&mut b, 4, self.mode);
            le::put64(&mut b, 8, self.size);
            le::put32(&mut b, 16, self.u);
            le::put32(&mut b, 20, self.ino);
            le::put32(&mut b, 24, self.uid);
            le::put32(&mut b, 28, self.gid);
            le::put64(&mut b, 32, self.mtime);
            le::put32(&mut b, 40, self.mtime_nsec);
            le::put32(&mut b, 44, self.nlink);
            b[INODE_EXT_STRATA_FLAGS_OFFSET] = self.strata_flags;
            b
        } else {
            let mut b = vec![0u8; INODE_COMPACT_SIZE];
            le::put16(&mut b, 0, format);
            le::put16(&mut b, 2, self.xattr_icount);
            le::put16(&mut b, 4, self.mode);
            le::put16(&mut b, 6, self.nlink as u16);
            le::put32(&mut b, 8, self.size as u32);
            le::put32(&mut b, 16, self.u);
            le::put32(&mut b, 20, self.ino);
            le::put16(&mut b, 24, self.uid as u16);
            le::put16(&mut b, 26, self.gid as u16);
            b
        }
    }
    /// Parse an inode; `build_time` is the mtime compact inodes report (as the kernel does).
    pub fn decode(b: &[u8], build_time: (u64, u32)) -> Result<Self, FormatError> {
        need("inode", b, INODE_COMPACT_SIZE)?;
        let format = le::u16(b, 0);
        let extended = format & 1 == 1;
        let layout = (format >> 1) & 0x7;
        if format >> 4 != 0 {
            return Err(invalid("inode", format!("unknown i_format bits {format:#x}")));
        }
        if extended {
            need("extended inode", b, INODE_EXTENDED_SIZE)?;
            Ok(Self {
                extended,
                layout,
                xattr_icount: le::u16(b, 2),
                mode: le::u16(b, 4),
                size: le::u64(b, 8),
                u: le::u32(b, 16),
                ino: le::u32(b, 20),
                uid: le::u32(b, 24),
                gid: le::u32(b, 28),
                mtime: le::u64(b, 32),
                mtime_nsec: le::u32(b, 40),
                nlink: le::u32(b, 44),
                strata_flags: b[INODE_EXT_STRATA_FLAGS_OFFSET],
            })
        } else {
            Ok(Self {
                extended,
                layout,
                xattr_icount: le::u16(b, 2),
                mode: le::u16(b, 4),
                nlink: u32::from(le::u16(b, 6)),
                size: u64::from(le::u32(b, 8)),
                u: le::u32(b, 16),
                ino: le::u32(b, 20),
                uid: u32::from(le::u16(b, 24)),
                gid: u32::from(le::u16(b, 26)),
                mtime: build_time.0,
                mtime_nsec: build_time.1,
                strata_flags: 0,
            })
        }
    }
}

/// Bytes of the inline xattr area for an `i_xattr_icount`.
pub fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XATTR_IBODY_HEADER_SIZE + 4 * (usize::from(icount) - 1)
    }
}

/// One chunk index entry after a chunk-based inode (8 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkIndex {
    /// Index of the chunk in its blob's chunk-info array (24 bits).
    pub ci_index: u32,
    /// Device id: blob index + 1; 0 is the bootstrap itself (invalid for RAFS chunks).
    pub device_id: u8,
    /// Uncompressed offset of the chunk in its blob, in blocks; `NULL_ADDR` for a hole.
    pub blkaddr: u32,
}

impl ChunkIndex {
    /// Serialise into 8 bytes.
    pub fn encode(&self) -> [u8; CHUNK_INDEX_SIZE] {
        let mut b = [0u8; CHUNK_INDEX_SIZE];
        le::put16(&mut b, 0, (self.ci_index & 0xffff) as u16);
        let hi = (((self.ci_index >> 16) & 0xff) as u16) << 8 | u16::from(self.device_id);
        le::put16(&mut b, 2, hi);
        le::put32(&mut b, 4, self.blkaddr);
        b
    }
    /// Parse 8 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("chunk index", b, CHUNK_INDEX_SIZE)?;
        let lo = le::u16(b, 0);
        let hi = le::u16(b, 2);
        Ok(Self {
            ci_index: u32::from(lo) | (u32::from(hi >> 8) << 16),
            device_id: (hi & 0xff) as u8,
            blkaddr: le::u32(b, 4),
        })
    }
}

/// A directory entry record (12 bytes; the name lives elsewhere in the block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dirent {
    /// Target inode.
    pub nid: u64,
    /// Offset of the name within the block.
    pub nameoff: u16,
    /// `file_type`.
    pub file_type: u8,
}

impl Dirent {
    /// Serialise into 12 bytes.
    pub fn encode(&self) -> [u8; DIRENT_SIZE] {
        let mut b = [0u8; DIRENT_SIZE];
        le::put64(&mut b, 0, self.nid);
        le::put16(&mut b, 8, self.nameoff);
        b[10] = self.file_type;
        b
    }
    /// Parse 12 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("dirent", b, DIRENT_SIZE)?;
        Ok(Self { nid: le::u64(b, 0), nameoff: le::u16(b, 8), file_type: b[10] })
    }
}

/// Xattr name prefixes by erofs index. Index 0 means the full name is stored.
pub const XATTR_PREFIXES: &[(u8, &str)] = &[
    (1, "user."),
    (2, "system.posix_acl_access"),
    (3, "system.posix_acl_default"),
    (4, "trusted."),
    (6, "security."),
];

/// Split an xattr name into (prefix index, stored suffix).
pub fn xattr_split(name: &[u8]) -> (u8, &[u8]) {
    // Longest prefix first so the ACL names win over any shorter match.
    let mut best: Option<(u8, usize)> = None;
    for &(idx, p) in XATTR_PREFIXES {
        if name.starts_with(p.as_bytes()) && best.is_none_or(|(_, l)| p.len() > l) {
            best = Some((idx, p.len()));
        }
    }
    match best {
        Some((idx, l)) => (idx, &name[l..]),
        None => (0, name),
    }
}

/// The prefix for an erofs xattr index.
pub fn xattr_prefix(idx: u8) -> Option<&'static str> {
    if idx == 0 {
        return Some("");
    }
    XATTR_PREFIXES.iter().find(|(i, _)| *i == idx).map(|(_, p)| *p)
}

/// Size of one xattr entry record with its name suffix and value, padded to 4 bytes.
pub fn xattr_entry_size(suffix_len: usize, value_len: usize) -> usize {
    (4 + suffix_len + value_len).div_ceil(4) * 4
}

/// The 4 KiB blob meta header (`blob.meta.header`) following the chunk-info array.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobMetaHeader {
    /// Blob features.
    pub features: u32,
    /// Compressor of the chunk-info array.
    pub ci_compressor: u32,
    /// Number of chunk-info entries.
    pub ci_entries: u32,
    /// Offset of the array in the blob.
    pub ci_offset: u64,
    /// Stored size of the array.
    pub ci_compressed_size: u64,
    /// Uncompressed size of the array.
    pub ci_uncompressed_size: u64,
}

impl BlobMetaHeader {
    /// Serialise into 4096 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOB_META_HEADER_SIZE];
        le::put32(&mut b, 0, BLOB_META_MAGIC);
        le::put32(&mut b, 4, self.features);
        le::put32(&mut b, 8, self.ci_compressor);
        le::put32(&mut b, 12, self.ci_entries);
        le::put64(&mut b, 16, self.ci_offset);
        le::put64(&mut b, 24, self.ci_compressed_size);
        le::put64(&mut b, 32, self.ci_uncompressed_size);
        le::put32(&mut b, BLOB_META_HEADER_SIZE - 4, BLOB_META_MAGIC);
        b
    }
    /// Parse 4096 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("blob meta header", b, BLOB_META_HEADER_SIZE)?;
        if le::u32(b, 0) != BLOB_META_MAGIC
            || le::u32(b, BLOB_META_HEADER_SIZE - 4) != BLOB_META_MAGIC
        {
            return Err(invalid("blob meta header", "bad magic"));
        }
        Ok(Self {
            features: le::u32(b, 4),
            ci_compressor: le::u32(b, 8),
            ci_entries: le::u32(b, 12),
            ci_offset: le::u64(b, 16),
            ci_compressed_size: le::u64(b, 24),
            ci_uncompressed_size: le::u64(b, 32),
        })
    }
}

/// One chunk-info entry of the blob meta, decoded from either the v1 (16 B) or v2 (24 B) form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkInfoEntry {
    /// Offset in the uncompressed (aligned) blob.
    pub uncompressed_offset: u64,
    /// Uncompressed size.
    pub uncompressed_size: u32,
    /// Offset of the stored bytes.
    pub compressed_offset: u64,
    /// Stored size.
    pub compressed_size: u32,
    /// True when the stored bytes are compressed.
    pub compressed: bool,
}

/// Size of a v2 chunk-info entry (what we write).
pub const CHUNK_INFO_V2_SIZE: usize = 24;
/// Size of a v1 chunk-info entry.
pub const CHUNK_INFO_V1_SIZE: usize = 16;

impl ChunkInfoEntry {
    /// Serialise as a v2 entry.
    pub fn encode_v2(&self) -> [u8; CHUNK_INFO_V2_SIZE] {
        let mut b = [0u8; CHUNK_INFO_V2_SIZE];
        let flags: u64 = if self.compressed { 0x1 } else { 0 };
        let uncomp = (self.uncompressed_offset >> 12) & 0xffff_ffff
            | (u64::from(self.uncompressed_size.saturating_sub(1)) & 0xff_ffff) << 32
            | flags << 56;
        let comp = self.compressed_offset & 0xff_ffff_ffff | u64::from(self.compressed_size) << 40;
        le::put64(&mut b, 0, uncomp);
        le::put64(&mut b, 8, comp);
        b
    }
    /// Parse a v2 entry.
    pub fn decode_v2(b: &[u8]) -> Result<Self, FormatError> {
        need("chunk info v2", b, CHUNK_INFO_V2_SIZE)?;
        let uncomp = le::u64(b, 0);
        let comp = le::u64(b, 8);
        let flags = (uncomp >> 56) as u8;
        if flags & !0x11 != 0 {
            return Err(invalid("chunk info v2", format!("unsupported chunk flags {flags:#x}")));
        }
        Ok(Self {
            uncompressed_offset: (uncomp & 0xffff_ffff) << 12,
            uncompressed_size: ((uncomp >> 32) & 0xff_ffff) as u32 + 1,
            compressed_offset: comp & 0xff_ffff_ffff,
            compressed_size: (comp >> 40) as u32,
            compressed: flags & 1 != 0,
        })
    }
    /// Parse a v1 entry.
    pub fn decode_v1(b: &[u8]) -> Result<Self, FormatError> {
        need("chunk info v1", b, CHUNK_INFO_V1_SIZE)?;
        let uncomp = le::u64(b, 0);
        let comp = le::u64(b, 8);
        let usize_ = ((uncomp >> 44) & 0xf_ffff) | ((uncomp >> 8) & 0xf) << 20;
        let csize = ((comp >> 44) & 0xf_ffff) | ((comp >> 40) & 0xf) << 20;
        Ok(Self {
            uncompressed_offset: uncomp & 0xfff_ffff_f000,
            uncompressed_size: usize_ as u32 + 1,
            compressed_offset: comp & 0xff_ffff_ffff,
            compressed_size: csize as u32 + 1,
            compressed: csize != usize_,
        })
    }
}

/// One ToC entry (128 bytes) in `rafs.blob.toc` at the end of a blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TocEntry {
    /// Compression of the section: 0x1 none, 0x2 zstd, 0x4 lz4_block.
    pub flags: u32,
    /// Section name (`blob.meta`, `blob.meta.header`, `blob.digest`, `rafs.blob.toc`).
    pub name: String,
    /// sha256 of the uncompressed section.
    pub uncompressed_digest: [u8; 32],
    /// Offset of the section in the blob.
    pub compressed_offset: u64,
    /// Stored size.
    pub compressed_size: u64,
    /// Uncompressed size.
    pub uncompressed_size: u64,
}

impl TocEntry {
    /// Serialise into 128 bytes.
    pub fn encode(&self) -> [u8; TOC_ENTRY_SIZE] {
        let mut b = [0u8; TOC_ENTRY_SIZE];
        le::put32(&mut b, 0, self.flags);
        let n = self.name.len().min(16);
        b[8..8 + n].copy_from_slice(&self.name.as_bytes()[..n]);
        b[24..56].copy_from_slice(&self.uncompressed_digest);
        le::put64(&mut b, 56, self.compressed_offset);
        le::put64(&mut b, 64, self.compressed_size);
        le::put64(&mut b, 72, self.uncompressed_size);
        b
    }
    /// Parse 128 bytes.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        need("ToC entry", b, TOC_ENTRY_SIZE)?;
        let end = b[8..24].iter().position(|&c| c == 0).unwrap_or(16);
        let mut d = [0u8; 32];
        d.copy_from_slice(&b[24..56]);
        Ok(Self {
            flags: le::u32(b, 0),
            name: String::from_utf8_lossy(&b[8..8 + end]).into_owned(),
            uncompressed_digest: d,
            compressed_offset: le::u64(b, 56),
            compressed_size: le::u64(b, 64),
            uncompressed_size: le::u64(b, 72),
        })
    }
}

/// Round `v` up to a multiple of `a` (a power of two).
pub fn align_up(v: u64, a: u64) -> u64 {
    debug_assert!(a.is_power_of_two());
    (v + a - 1) & !(a - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trips() {
        let sb = ErofsSuperBlock {
            feature_compat: FEATURE_COMPAT_RAFS_V6,
            blkszbits: 12,
            root_nid: 128,
            inos: 42,
            build_time: 1_700_000_000,
            build_time_nsec: 5,
            blocks: 17,
            meta_blkaddr: 1,
            feature_incompat: FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE,
            extra_devices: 2,
            devt_slotoff: DEVT_SLOT_OFF,
            ..Default::default()
        };
        assert_eq!(ErofsSuperBlock::decode(&sb.encode()).unwrap(), sb);
        let mut bad = sb.encode();
        bad[0] ^= 1;
        assert!(ErofsSuperBlock::decode(&bad).is_err());
        assert!(ErofsSuperBlock::decode(&bad[..10]).is_err());
    }

    #[test]
    fn chunk_index_packs_ci_index_above_device_id() {
        let ci = ChunkIndex { ci_index: 0x12_3456, device_id: 3, blkaddr: 77 };
        let b = ci.encode();
        // The kernel sees (advise=0x3456, device_id=0x1203): masked by its device count
        // the low byte 3 is what it uses.
        assert_eq!(le::u16(&b, 0), 0x3456);
        assert_eq!(le::u16(&b, 2), 0x1203);
        assert_eq!(ChunkIndex::decode(&b).unwrap(), ci);
    }

    #[test]
    fn chunk_info_v2_round_trips() {
        let e = ChunkInfoEntry {
            uncompressed_offset: 0x123_4000,
            uncompressed_size: 0x10_0000,
            compressed_offset: 0xab_cdef,
            compressed_size: 0x8_0001,
            compressed: true,
        };
        assert_eq!(ChunkInfoEntry::decode_v2(&e.encode_v2()).unwrap(), e);
    }

    #[test]
    fn xattr_prefixes_split_longest_first() {
        assert_eq!(xattr_split(b"user.a"), (1, &b"a"[..]));
        assert_eq!(xattr_split(b"system.posix_acl_access"), (2, &b""[..]));
        assert_eq!(xattr_split(b"security.capability"), (6, &b"capability"[..]));
        assert_eq!(xattr_split(b"other.x"), (0, &b"other.x"[..]));
        assert_eq!(xattr_entry_size(1, 0), 8);
        assert_eq!(xattr_ibody_size(0), 0);
        assert_eq!(xattr_ibody_size(1), 12);
    }

    #[test]
    fn inode_forms_round_trip() {
        let mut ino = DiskInode {
            extended: true,
            layout: data_layout::CHUNK_BASED,
            xattr_icount: 3,
            mode: 0o100644,
            nlink: 70000,
            size: 5 << 32,
            u: 0x28,
            ino: 9,
            uid: 100_000,
            gid: 7,
            mtime: 1_700_000_000,
            mtime_nsec: 123,
            strata_flags: STRATA_INODE_IMPLIED_DIR,
        };
        assert_eq!(DiskInode::decode(&ino.encode(), (0, 0)).unwrap(), ino);
        ino.extended = false;
        ino.nlink = 1;
        ino.size = 10;
        ino.uid = 1;
        let got = DiskInode::decode(&ino.encode(), (55, 6)).unwrap();
        assert_eq!((got.mtime, got.mtime_nsec), (55, 6));
        assert_eq!(got.size, 10);
    }
}
