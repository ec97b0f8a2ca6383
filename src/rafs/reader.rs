//! Read a RAFS v6 bootstrap (or a plain, uncompressed EROFS image) without trusting it.
//!
//! Every offset and length read from the image is checked against the image size before use;
//! counts are capped by what the image can physically hold; a directory tree walk detects
//! cycles. Anything wrong is a [`ReadError`] naming the structure, never a panic.
//!
//! File data of chunk-based inodes comes through a [`ChunkReader`] (the storage layer); data
//! stored in the image itself (directories, symlinks, plain EROFS files) is read directly.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::chunk::{ChunkError, ChunkReader, ChunkRef};
use super::layout::{self as l, data_layout, le, Compressor, Digester, DiskInode, FormatError};
use super::writer::decode_rdev;

/// Errors of reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The image file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A structure failed to decode.
    #[error("malformed image: {0}")]
    Format(#[from] FormatError),
    /// A structure points outside the image.
    #[error("malformed image: {what} at offset {offset} (+{len}) is past the end of the {size}-byte image")]
    OutOfBounds {
        /// What was being read.
        what: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Image size.
        size: u64,
    },
    /// A value breaks a format rule.
    #[error("malformed image: {0}")]
    Invalid(String),
    /// The image is valid but uses something we do not implement.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The directory tree loops.
    #[error("malformed image: directory cycle at nid {0}")]
    Cycle(u64),
    /// A chunk could not be read.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

type Result<T> = std::result::Result<T, ReadError>;

/// An extended attribute: (full name, value).
pub type Xattr = (Vec<u8>, Vec<u8>);

/// RAFS v5 superblock magic ("RAFS"), recognised to reject v5 clearly.
const RAFS_V5_MAGIC: u32 = 0x5241_4653;
/// Largest chunk table we accept (entries), far above any real image.
const MAX_CHUNK_TABLE_ENTRIES: u64 = 1 << 28;

/// Bytes of an image: a private mapping of the file or an owned buffer.
enum Backing {
    Map(crate::sys::ReadOnlyMap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m.as_slice(),
            Backing::Owned(v) => v,
        }
    }
}

/// Which flavour of EROFS image this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// RAFS v6: data in external blobs, chunk details in the chunk table.
    RafsV6,
    /// Plain EROFS (e.g. from mkfs.erofs): data inside the image.
    Erofs,
}

/// An inode as read from the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Node id (also the inode number the kernel reports).
    pub nid: u64,
    /// Byte offset of the inode in the image.
    pub offset: u64,
    /// Decoded fields.
    pub disk: DiskInode,
}

impl Inode {
    /// File type bits.
    pub fn file_type(&self) -> u32 {
        u32::from(self.disk.mode) & libc::S_IFMT
    }
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }
    /// True for regular files.
    pub fn is_reg(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
    /// Device number for device nodes.
    pub fn rdev(&self) -> u64 {
        match self.file_type() {
            libc::S_IFCHR | libc::S_IFBLK => decode_rdev(self.disk.u),
            _ => 0,
        }
    }
    fn head_len(&self) -> u64 {
        (self.disk.disk_size() + self.disk.xattr_size()) as u64
    }
}

/// A directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name bytes.
    pub name: Vec<u8>,
    /// Target nid.
    pub nid: u64,
    /// `layout::file_type`.
    pub file_type: u8,
}

/// A parsed image.
pub struct Image {
    data: Backing,
    /// EROFS superblock.
    pub sb: l::ErofsSuperBlock,
    /// RAFS extended superblock (RAFS images only).
    pub ext: Option<l::RafsExtSuperBlock>,
    /// Flavour.
    pub kind: ImageKind,
    /// Device table.
    pub devices: Vec<l::DeviceSlot>,
    /// Blob table (RAFS images only).
    pub blobs: Vec<l::BlobEntry>,
    /// Prefetch table: nids in hint order.
    pub prefetch: Vec<u64>,
    /// Filesystem chunk size (RAFS) or 0.
    pub chunk_size: u32,
    /// Image compressor flag.
    pub compressor: Compressor,
    /// Image digester flag.
    pub digester: Digester,
    chunks: HashMap<(u32, u32), ChunkRef>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("kind", &self.kind).field("sb", &self.sb).finish()
    }
}

impl Image {
    /// Open and validate the image at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ReadError::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let map = crate::sys::ReadOnlyMap::new(&file).map_err(io)?;
        Self::parse(Backing::Map(map))
    }

    /// Parse an image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(data: Backing) -> Result<Self> {
        if data.len() >= 4 && le::u32(&data, 0) == RAFS_V5_MAGIC {
            return Err(ReadError::Unsupported(
                "this is a RAFS v5 bootstrap; strata reads RAFS v6 only (rebuild with --fs-version 6)"
                    .into(),
            ));
        }
        let size = data.len() as u64;
        let sb_bytes =
            slice(&data, l::EROFS_SB_OFFSET, l::EROFS_SB_SIZE as u64, "EROFS superblock")?;
        let sb = l::ErofsSuperBlock::decode(sb_bytes)?;
        if sb.blkszbits != l::BLOCK_BITS {
            return Err(ReadError::Unsupported(format!(
                "block size 2^{} (only 4 KiB blocks are supported)",
                sb.blkszbits
            )));
        }
        let known_incompat = l::FEATURE_INCOMPAT_CHUNKED_FILE
            | l::FEATURE_INCOMPAT_DEVICE_TABLE
            | l::FEATURE_INCOMPAT_ZERO_PADDING;
        if sb.feature_incompat & !known_incompat != 0 {
            return Err(ReadError::Unsupported(format!(
                "EROFS incompatible features {:#x}",
                sb.feature_incompat & !known_incompat
            )));
        }
        let is_rafs = sb.feature_compat & l::FEATURE_COMPAT_RAFS_V6 != 0;
        let mut devices = Vec::new();
        if sb.extra_devices > 0 {
            let off = u64::from(sb.devt_slotoff) * 128;
            for i in 0..u64::from(sb.extra_devices) {
                let b = slice(&data, off + i * 128, 128, "device table")?;
                devices.push(l::DeviceSlot::decode(b)?);
            }
        }
        let mut img = Image {
            sb,
            ext: None,
            kind: if is_rafs { ImageKind::RafsV6 } else { ImageKind::Erofs },
            devices,
            blobs: Vec::new(),
            prefetch: Vec::new(),
            chunk_size: 0,
            compressor: Compressor::None,
            digester: Digester::Blake3,
            chunks: HashMap::new(),
            data,
        };
        if is_rafs {
            img.parse_rafs(size)?;
        }
        // The root must be a directory.
        let root = img.root()?;
        if !root.is_dir() {
            return Err(ReadError::Invalid(format!("root nid {} is not a directory", root.nid)));
        }
        Ok(img)
    }

    fn parse_rafs(&mut self, size: u64) -> Result<()> {
        let ext = l::RafsExtSuperBlock::decode(slice(
            &self.data,
            l::RAFS_EXT_SB_OFFSET,
            l::RAFS_EXT_SB_SIZE as u64,
            "RAFS extended superblock",
        )?)?;
        let cs = ext.chunk_size;
        if !cs.is_power_of_two() || !(l::MIN_CHUNK_SIZE..=l::MAX_CHUNK_SIZE).contains(&cs) {
            return Err(ReadError::Invalid(format!(
                "chunk size {cs:#x} is not a power of two in [4 KiB, 16 MiB]"
            )));
        }
        self.chunk_size = cs;
        self.compressor = Compressor::from_sb_flags(ext.flags)?;
        self.digester = Digester::from_sb_flags(ext.flags)?;
        if ext.flags & l::sb_flags::TARFS_MODE != 0 {
            return Err(ReadError::Unsupported("tarfs mode images".into()));
        }
        if ext.flags & l::sb_flags::ENCRYPTION_AES_128_XTS != 0 {
            return Err(ReadError::Unsupported("encrypted images".into()));
        }
        // Blob table.
        if ext.blob_table_size as usize % l::BLOB_ENTRY_SIZE != 0 {
            return Err(ReadError::Invalid(format!(
                "blob table size {} is not a multiple of {}",
                ext.blob_table_size,
                l::BLOB_ENTRY_SIZE
            )));
        }
        let nblobs = ext.blob_table_size as usize / l::BLOB_ENTRY_SIZE;
        let bt =
            slice(&self.data, ext.blob_table_offset, u64::from(ext.blob_table_size), "blob table")?;
        for i in 0..nblobs {
            let e = l::BlobEntry::decode(&bt[i * l::BLOB_ENTRY_SIZE..])?;
            if e.features & l::blob_features::UNSUPPORTED != 0 {
                return Err(ReadError::Unsupported(format!(
                    "blob {} uses features {:#x} (zran, batch, tarfs, separate or encrypted chunks)",
                    e.blob_id,
                    e.features & l::blob_features::UNSUPPORTED
                )));
            }
            Compressor::from_u32(e.compression_algo)?;
            Digester::from_u32(e.digest_algo)?;
            if e.chunk_count > l::MAX_CHUNKS_PER_BLOB {
                return Err(ReadError::Invalid(format!(
                    "blob {} claims {} chunks (max 2^24)",
                    e.blob_id, e.chunk_count
                )));
            }
            self.blobs.push(e);
        }
        if self.blobs.len() != self.devices.len() {
            return Err(ReadError::Invalid(format!(
                "blob table has {} entries but the device table {}",
                self.blobs.len(),
                self.devices.len()
            )));
        }
        // Prefetch table (older builders wrote a size with offset 0: treat as absent).
        if ext.prefetch_table_offset != 0 && ext.prefetch_table_size > 0 {
            let pt = slice(
                &self.data,
                ext.prefetch_table_offset,
                u64::from(ext.prefetch_table_size),
                "prefetch table",
            )?;
            self.prefetch = pt.chunks_exact(4).map(|c| u64::from(le::u32(c, 0))).collect();
        }
        // Chunk table.
        if ext.chunk_table_size > 0 {
            let n = ext.chunk_table_size / l::CHUNK_TABLE_ENTRY_SIZE as u64;
            if ext.chunk_table_size % l::CHUNK_TABLE_ENTRY_SIZE as u64 != 0
                || n > MAX_CHUNK_TABLE_ENTRIES
            {
                return Err(ReadError::Invalid(format!(
                    "chunk table size {} is not a multiple of 80 or too large",
                    ext.chunk_table_size
                )));
            }
            let ct =
                slice(&self.data, ext.chunk_table_offset, ext.chunk_table_size, "chunk table")?;
            self.chunks.reserve(n as usize);
            for raw in ct.chunks_exact(l::CHUNK_TABLE_ENTRY_SIZE) {
                let e = l::ChunkTableEntry::decode(raw)?;
                let blob = self.blobs.get(e.blob_index as usize).ok_or_else(|| {
                    ReadError::Invalid(format!(
                        "chunk table entry names blob index {} of {}",
                        e.blob_index,
                        self.blobs.len()
                    ))
                })?;
                if e.uncompressed_size == 0 || e.uncompressed_size > l::MAX_CHUNK_SIZE {
                    return Err(ReadError::Invalid(format!(
                        "chunk {} of blob {} has uncompressed size {}",
                        e.index, blob.blob_id, e.uncompressed_size
                    )));
                }
                self.chunks.insert((e.blob_index, e.index), ChunkRef::from_table_entry(&e));
            }
        }
        let _ = size;
        self.ext = Some(ext);
        Ok(())
    }

    /// Size of the image in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Raw bytes of the image.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Number of distinct chunks in the chunk table.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// All chunks of the chunk table, in (blob, index) order.
    pub fn all_chunks(&self) -> Vec<ChunkRef> {
        let mut v: Vec<ChunkRef> = self.chunks.values().copied().collect();
        v.sort_by_key(|c| (c.blob_index, c.index));
        v
    }

    /// The root directory.
    pub fn root(&self) -> Result<Inode> {
        self.inode(u64::from(self.sb.root_nid))
    }

    /// Inode at `nid`.
    pub fn inode(&self, nid: u64) -> Result<Inode> {
        let offset = u64::from(self.sb.meta_blkaddr)
            .checked_mul(l::BLOCK_SIZE)
            .and_then(|b| nid.checked_mul(l::INODE_SLOT_SIZE).and_then(|n| b.checked_add(n)))
            .ok_or_else(|| ReadError::Invalid(format!("nid {nid} overflows")))?;
        let head = slice(&self.data, offset, l::INODE_COMPACT_SIZE as u64, "inode")?;
        let extended = le::u16(head, 0) & 1 == 1;
        let len = if extended { l::INODE_EXTENDED_SIZE } else { l::INODE_COMPACT_SIZE };
        let b = slice(&self.data, offset, len as u64, "inode")?;
        let disk = DiskInode::decode(b, (self.sb.build_time, self.sb.build_time_nsec))?;
        let inode = Inode { nid, offset, disk };
        // The xattr area must be inside the image too.
        slice(&self.data, offset, inode.head_len(), "inode xattrs")?;
        match inode.file_type() {
            libc::S_IFREG
            | libc::S_IFDIR
            | libc::S_IFLNK
            | libc::S_IFCHR
            | libc::S_IFBLK
            | libc::S_IFIFO
            | libc::S_IFSOCK => {}
            t => return Err(ReadError::Invalid(format!("nid {nid}: unknown file type {t:#o}"))),
        }
        Ok(inode)
    }

    /// Extended attributes of `inode`: shared ones (plain EROFS images) first, then inline.
    pub fn xattrs(&self, inode: &Inode) -> Result<Vec<Xattr>> {
        let size = inode.disk.xattr_size() as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        let area = slice(&self.data, inode.offset + inode.disk.disk_size() as u64, size, "xattrs")?;
        let shared = usize::from(area[4]);
        let mut p = l::XATTR_IBODY_HEADER_SIZE + 4 * shared;
        if p > area.len() {
            return Err(ReadError::Invalid(format!(
                "nid {}: {shared} shared xattr ids overrun the xattr area",
                inode.nid
            )));
        }
        let mut out = Vec::new();
        for i in 0..shared {
            let id = u64::from(le::u32(area, l::XATTR_IBODY_HEADER_SIZE + 4 * i));
            // Block 0 is a valid start: mkfs.erofs packs them right after the superblock.
            let at = u64::from(self.sb.xattr_blkaddr) * l::BLOCK_SIZE + id * 4;
            let head = slice(&self.data, at, 4, "shared xattr")?;
            let len = 4 + u64::from(head[0]) + u64::from(le::u16(head, 2));
            let entry = slice(&self.data, at, len, "shared xattr")?;
            out.push(self.decode_xattr(inode, entry)?.0);
        }
        while p + 4 <= area.len() {
            let (kv, used) = self.decode_xattr(inode, &area[p..])?;
            out.push(kv);
            p += used;
        }
        Ok(out)
    }

    /// Decode one xattr entry at the start of `b`; returns it and its padded size.
    fn decode_xattr(&self, inode: &Inode, b: &[u8]) -> Result<(Xattr, usize)> {
        let name_len = usize::from(b[0]);
        let idx = b[1];
        let value_len = usize::from(le::u16(b, 2));
        let end = 4 + name_len + value_len;
        if end > b.len() {
            return Err(ReadError::Invalid(format!("nid {}: xattr entry overruns", inode.nid)));
        }
        let prefix = l::xattr_prefix(idx).ok_or_else(|| {
            ReadError::Unsupported(format!("nid {}: xattr name index {idx}", inode.nid))
        })?;
        let mut name = prefix.as_bytes().to_vec();
        name.extend_from_slice(&b[4..4 + name_len]);
        if name.is_empty() {
            return Err(ReadError::Invalid(format!("nid {}: empty xattr name", inode.nid)));
        }
        Ok(((name, b[4 + name_len..end].to_vec()), l::xattr_entry_size(name_len, value_len)))
    }

    /// Bytes `[offset, offset+len)` of the data of a flat (non chunk-based) inode, which lives in
    /// the image itself: whole blocks from `i_u`, the tail inline for FLAT_INLINE.
    fn flat_data(&self, inode: &Inode, offset: u64, len: u64) -> Result<Vec<u8>> {
        let tail_start = self.check_flat_layout(inode)?;
        let size = inode.disk.size;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let bs = l::BLOCK_SIZE;
        // Bounded by the image size (checked above), so the allocation is too.
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            if pos >= tail_start {
                let src = inode.offset + inode.head_len() + (pos - tail_start);
                out.extend_from_slice(slice(&self.data, src, end - pos, "inline data")?);
                break;
            }
            let blk = u64::from(inode.disk.u) + pos / bs;
            let in_blk = pos % bs;
            let n = (bs - in_blk).min(end - pos).min(tail_start - pos);
            out.extend_from_slice(slice(&self.data, blk * bs + in_blk, n, "data block")?);
            pos += n;
        }
        Ok(out)
    }

    /// Check that a flat inode's data lies inside the image; returns where its inline tail
    /// starts (the size rounded up to blocks when there is no inline tail).
    pub fn check_flat_layout(&self, inode: &Inode) -> Result<u64> {
        let size = inode.disk.size;
        // Flat data lives in the image, so it cannot be larger than the image.
        if size > self.size() {
            return Err(ReadError::Invalid(format!(
                "nid {}: {size} bytes of flat data in a {}-byte image",
                inode.nid,
                self.size()
            )));
        }
        let bs = l::BLOCK_SIZE;
        let inline = match inode.disk.layout {
            data_layout::FLAT_PLAIN => false,
            data_layout::FLAT_INLINE => true,
            data_layout::COMPRESSED_FULL | data_layout::COMPRESSED_COMPACT => {
                return Err(ReadError::Unsupported(format!(
                    "nid {}: EROFS-compressed data (build without -z)",
                    inode.nid
                )))
            }
            other => {
                return Err(ReadError::Invalid(format!(
                    "nid {}: data layout {other} where flat data was expected",
                    inode.nid
                )))
            }
        };
        let tail_start = if inline { size / bs * bs } else { size.div_ceil(bs) * bs };
        if inline && inode.offset % bs + inode.head_len() + (size - tail_start) > bs {
            return Err(ReadError::Invalid(format!(
                "nid {}: inline data crosses a block boundary",
                inode.nid
            )));
        }
        if tail_start > 0 {
            let end = (u64::from(inode.disk.u) + tail_start / bs) * bs;
            if end > self.size() {
                return Err(ReadError::OutOfBounds {
                    what: "data blocks",
                    offset: u64::from(inode.disk.u) * bs,
                    len: tail_start,
                    size: self.size(),
                });
            }
        }
        if inline {
            slice(&self.data, inode.offset + inode.head_len(), size - tail_start, "inline data")?;
        }
        Ok(tail_start)
    }

    /// Entries of directory `dir`, including `.` and `..`, in on-disk (sorted) order.
    pub fn dir_entries(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for bi in 0..self.dir_blocks(dir)? {
            out.extend(self.dir_block(dir, bi)?);
        }
        Ok(out)
    }

    /// Number of directory blocks of `dir`.
    pub fn dir_blocks(&self, dir: &Inode) -> Result<u64> {
        if !dir.is_dir() {
            return Err(ReadError::Invalid(format!("nid {} is not a directory", dir.nid)));
        }
        // A directory cannot be larger than the image that holds it.
        if dir.disk.size > self.size() {
            return Err(ReadError::Invalid(format!(
                "directory nid {} claims {} bytes",
                dir.nid, dir.disk.size
            )));
        }
        Ok(dir.disk.size.div_ceil(l::BLOCK_SIZE))
    }

    /// The entries of directory block `bi`.
    pub fn dir_block(&self, dir: &Inode, bi: u64) -> Result<Vec<DirEntry>> {
        let block = self.flat_data(dir, bi * l::BLOCK_SIZE, l::BLOCK_SIZE)?;
        let bad = |why: String| {
            ReadError::Invalid(format!("directory nid {} block {bi}: {why}", dir.nid))
        };
        if block.len() < l::DIRENT_SIZE {
            return Err(bad("short block".into()));
        }
        let first = l::Dirent::decode(&block)?;
        let n = usize::from(first.nameoff) / l::DIRENT_SIZE;
        if n == 0
            || usize::from(first.nameoff) % l::DIRENT_SIZE != 0
            || usize::from(first.nameoff) > block.len()
        {
            return Err(bad(format!("bad first name offset {}", first.nameoff)));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let d = l::Dirent::decode(&block[i * l::DIRENT_SIZE..])?;
            let start = usize::from(d.nameoff);
            let limit = if i + 1 < n {
                usize::from(l::Dirent::decode(&block[(i + 1) * l::DIRENT_SIZE..])?.nameoff)
            } else {
                block.len()
            };
            if start < n * l::DIRENT_SIZE || start >= limit || limit > block.len() {
                return Err(bad("name offsets out of order".into()));
            }
            let raw = &block[start..limit];
            let name_len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
            if name_len == 0 {
                return Err(bad("empty name".into()));
            }
            out.push(DirEntry {
                name: raw[..name_len].to_vec(),
                nid: d.nid,
                file_type: d.file_type,
            });
        }
        Ok(out)
    }

    /// Entry `name` of directory `dir`: binary search over blocks (by their first name), then
    /// within the block, as EROFS sorts names bytewise.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
        let blocks = self.dir_blocks(dir)?;
        let (mut lo, mut hi) = (0u64, blocks);
        let mut found: Option<Vec<DirEntry>> = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entries = self.dir_block(dir, mid)?;
            let first = entries.first().map(|e| e.name.as_slice()).unwrap_or_default();
            let last = entries.last().map(|e| e.name.as_slice()).unwrap_or_default();
            if name < first {
                hi = mid;
            } else if name > last {
                lo = mid + 1;
            } else {
                found = Some(entries);
                break;
            }
        }
        Ok(found.and_then(|entries| {
            entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .ok()
                .map(|i| entries[i].clone())
        }))
    }

    /// Resolve an absolute or root-relative path (no symlink following).
    pub fn resolve(&self, path: &[u8]) -> Result<Option<Inode>> {
        let mut cur = self.root()?;
        for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
            if !cur.is_dir() {
                return Ok(None);
            }
            match self.lookup(&cur, c)? {
                Some(e) => cur = self.inode(e.nid)?,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Target of a symlink.
    pub fn readlink(&self, inode: &Inode) -> Result<Vec<u8>> {
        if inode.file_type() != libc::S_IFLNK {
            return Err(ReadError::Invalid(format!("nid {} is not a symlink", inode.nid)));
        }
        if inode.disk.size > 4096 {
            return Err(ReadError::Invalid(format!(
                "symlink nid {} is {} bytes",
                inode.nid, inode.disk.size
            )));
        }
        self.flat_data(inode, 0, inode.disk.size)
    }

    /// Chunk size that applies to `inode`'s index array.
    fn inode_chunk_size(&self, inode: &Inode) -> Result<u64> {
        let fmt = inode.disk.u as u16;
        if self.kind == ImageKind::RafsV6 {
            // nydusd's rule: the filesystem chunk size, whatever the per-inode hint says.
            return Ok(u64::from(self.chunk_size));
        }
        if fmt & l::CHUNK_FORMAT_INDEXES == 0 {
            return Err(ReadError::Unsupported(format!(
                "nid {}: chunk block maps without indexes",
                inode.nid
            )));
        }
        let bits = u32::from(fmt & l::CHUNK_FORMAT_BLKBITS_MASK) + u32::from(l::BLOCK_BITS);
        if bits > 40 {
            return Err(ReadError::Invalid(format!("nid {}: chunk bits {bits}", inode.nid)));
        }
        Ok(1u64 << bits)
    }

    /// The raw chunk index array of a chunk-based file.
    pub fn chunk_indexes(&self, inode: &Inode) -> Result<Vec<l::ChunkIndex>> {
        if inode.disk.layout != data_layout::CHUNK_BASED {
            return Ok(Vec::new());
        }
        let (_, raw) = self.chunk_index_bytes(inode)?;
        raw.chunks_exact(l::CHUNK_INDEX_SIZE).map(|c| Ok(l::ChunkIndex::decode(c)?)).collect()
    }

    /// Offset and bytes of a chunk-based inode's index array, bounds-checked.
    fn chunk_index_bytes(&self, inode: &Inode) -> Result<(u64, &[u8])> {
        let cs = self.inode_chunk_size(inode)?;
        let n = inode.disk.size.div_ceil(cs);
        let start = l::align_up(inode.offset + inode.head_len(), 8);
        let bytes = n.checked_mul(l::CHUNK_INDEX_SIZE as u64).filter(|&b| b <= self.size()).ok_or(
            ReadError::OutOfBounds {
                what: "chunk indexes",
                offset: start,
                len: n,
                size: self.size(),
            },
        )?;
        Ok((start, slice(&self.data, start, bytes, "chunk indexes")?))
    }

    /// Chunks of a regular file, resolved through the chunk table. Holes are `None`.
    pub fn chunks(&self, inode: &Inode) -> Result<Vec<Option<ChunkRef>>> {
        self.chunk_range(inode, 0, u64::MAX)
    }

    /// Chunks `first..first+count` (clipped to the file) of a regular file.
    pub fn chunk_range(
        &self,
        inode: &Inode,
        first: u64,
        count: u64,
    ) -> Result<Vec<Option<ChunkRef>>> {
        self.chunk_iter(inode, first, count)?.collect()
    }

    /// Like [`Image::chunk_range`], one chunk at a time, without allocating.
    pub fn chunk_iter<'a>(
        &'a self,
        inode: &Inode,
        first: u64,
        count: u64,
    ) -> Result<impl Iterator<Item = Result<Option<ChunkRef>>> + 'a> {
        if !inode.is_reg() {
            return Err(ReadError::Invalid(format!("nid {} is not a regular file", inode.nid)));
        }
        if inode.disk.layout != data_layout::CHUNK_BASED {
            if inode.disk.size > 0 && self.kind == ImageKind::RafsV6 {
                return Err(ReadError::Invalid(format!(
                    "nid {}: RAFS regular file with data layout {}",
                    inode.nid, inode.disk.layout
                )));
            }
            return Ok(self.decode_chunks(inode.nid, &[], 0, 0));
        }
        if self.kind != ImageKind::RafsV6 {
            return Err(ReadError::Unsupported(format!(
                "nid {}: chunk-based file in a plain EROFS image",
                inode.nid
            )));
        }
        let flags = self.ext.as_ref().map_or(0, |e| e.flags);
        if self.chunks.is_empty() && flags & l::sb_flags::INLINED_CHUNK_DIGEST != 0 {
            return Err(ReadError::Unsupported(
                "chunk details only in blob meta (INLINED_CHUNK_DIGEST without a chunk table)"
                    .into(),
            ));
        }
        let (_, raw) = self.chunk_index_bytes(inode)?;
        let total = raw.len() as u64 / l::CHUNK_INDEX_SIZE as u64;
        let first = first.min(total);
        let last = first.saturating_add(count).min(total);
        Ok(self.decode_chunks(inode.nid, raw, first, last))
    }

    /// Chunk index entries `first..last` of `raw` (a file's chunk index array) resolved.
    fn decode_chunks<'a>(
        &'a self,
        nid: u64,
        raw: &'a [u8],
        first: u64,
        last: u64,
    ) -> impl Iterator<Item = Result<Option<ChunkRef>>> + 'a {
        (first..last).map(move |i| {
            let at = (i as usize) * l::CHUNK_INDEX_SIZE;
            let idx = l::ChunkIndex::decode(&raw[at..at + l::CHUNK_INDEX_SIZE])?;
            if idx.blkaddr == l::NULL_ADDR {
                return Ok(None);
            }
            if idx.device_id == 0 || usize::from(idx.device_id) > self.blobs.len() {
                return Err(ReadError::Invalid(format!(
                    "nid {} chunk {i}: device id {} with {} blobs",
                    nid,
                    idx.device_id,
                    self.blobs.len()
                )));
            }
            let blob = u32::from(idx.device_id) - 1;
            self.chunks.get(&(blob, idx.ci_index)).copied().map(Some).ok_or_else(|| {
                ReadError::Invalid(format!(
                    "nid {} chunk {i}: chunk index {} of blob {blob} is past the chunk table",
                    nid, idx.ci_index
                ))
            })
        })
    }

    /// Read `[offset, offset+len)` of a regular file (short at EOF), chunk data through `src`.
    pub fn read(
        &self,
        inode: &Inode,
        offset: u64,
        len: u64,
        src: &dyn ChunkReader,
    ) -> Result<Vec<u8>> {
        let size = inode.disk.size;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        if inode.disk.layout != data_layout::CHUNK_BASED {
            return self.flat_data(inode, offset, end - offset);
        }
        let cs = self.inode_chunk_size(inode)?;
        let first = offset / cs;
        let chunks = self.chunk_range(inode, first, (end - 1) / cs - first + 1)?;
        // Bounded: the chunks exist, so the range is backed by that many chunk indexes.
        let mut out = Vec::with_capacity((end - offset).min(chunks.len() as u64 * cs) as usize);
        let mut pos = offset;
        while pos < end {
            let ci = (pos / cs - first) as usize;
            let in_chunk = pos % cs;
            let n = (cs - in_chunk).min(end - pos);
            match chunks.get(ci).copied().flatten() {
                None => out.resize(out.len() + n as usize, 0),
                Some(c) => {
                    if in_chunk + n > u64::from(c.uncompressed_size) {
                        return Err(ReadError::Invalid(format!(
                            "nid {}: chunk {} holds {} bytes, file needs {}",
                            inode.nid,
                            c.index,
                            c.uncompressed_size,
                            in_chunk + n
                        )));
                    }
                    let bytes = src.read_chunk_range(&c, in_chunk as u32, n as u32)?;
                    if bytes.len() as u64 != n {
                        return Err(ReadError::Invalid(format!(
                            "nid {}: chunk {} returned {} of {n} bytes",
                            inode.nid,
                            c.index,
                            bytes.len()
                        )));
                    }
                    out.extend_from_slice(&bytes);
                }
            }
            pos += n;
        }
        Ok(out)
    }

    /// Visit every reachable inode depth first, with its path. Detects directory cycles and
    /// directories with two names. `visit` returns `false` to skip a directory's children.
    pub fn walk<E: From<ReadError>>(
        &self,
        mut visit: impl FnMut(&[u8], &Inode) -> std::result::Result<bool, E>,
    ) -> std::result::Result<(), E> {
        let root = self.root()?;
        let mut seen_dirs: HashSet<u64> = HashSet::from([root.nid]);
        let mut stack: Vec<(Vec<u8>, Inode)> = vec![(b"/".to_vec(), root)];
        while let Some((path, inode)) = stack.pop() {
            if !visit(&path, &inode)? || !inode.is_dir() {
                continue;
            }
            let mut kids = Vec::new();
            for e in self.dir_entries(&inode)? {
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                if e.name.contains(&b'/') {
                    return Err(ReadError::Invalid(format!(
                        "directory nid {}: name contains '/'",
                        inode.nid
                    ))
                    .into());
                }
                let child = self.inode(e.nid)?;
                if child.is_dir() && !seen_dirs.insert(child.nid) {
                    return Err(ReadError::Cycle(child.nid).into());
                }
                let mut p = path.clone();
                if p.len() > 1 {
                    p.push(b'/');
                }
                p.extend_from_slice(&e.name);
                kids.push((p, child));
            }
            // Reverse so the stack pops in sorted order.
            stack.extend(kids.into_iter().rev());
        }
        Ok(())
    }
}

/// `len` bytes at `offset` of `data`, or an out-of-bounds error naming `what`.
fn slice<'a>(data: &'a [u8], offset: u64, len: u64, what: &'static str) -> Result<&'a [u8]> {
    let size = data.len() as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(&data[offset as usize..end as usize]),
        _ => Err(ReadError::OutOfBounds { what, offset, len, size }),
    }
}

/// d_type of an image file type.
pub fn dtype(ft: u8) -> u32 {
    u32::from(match ft {
        crate::rafs::layout::file_type::REG => libc::DT_REG,
        crate::rafs::layout::file_type::DIR => libc::DT_DIR,
        crate::rafs::layout::file_type::CHR => libc::DT_CHR,
        crate::rafs::layout::file_type::BLK => libc::DT_BLK,
        crate::rafs::layout::file_type::FIFO => libc::DT_FIFO,
        crate::rafs::layout::file_type::SOCK => libc::DT_SOCK,
        crate::rafs::layout::file_type::SYMLINK => libc::DT_LNK,
        _ => libc::DT_UNKNOWN,
    })
}

/// uid/gid to report for an image that does not carry explicit owners (the daemon's own, as
/// nydusd does); `None` when it does.
pub fn implied_owner(image: &Image) -> Option<(u32, u32)> {
    let explicit = image
        .ext
        .as_ref()
        .is_none_or(|e| e.flags & crate::rafs::layout::sb_flags::EXPLICIT_UID_GID != 0);
    (!explicit).then(|| (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()))
}

/// The attributes of an image inode (`st_ino` = nid; times all from mtime, as images keep one).
pub fn inode_stat(inode: &Inode, owner: Option<(u32, u32)>) -> libc::stat64 {
    let d = &inode.disk;
    let mut st = crate::sys::zeroed_stat64();
    st.st_ino = inode.nid;
    st.st_mode = u32::from(d.mode);
    st.st_nlink = u64::from(d.nlink);
    let (uid, gid) = owner.unwrap_or((d.uid, d.gid));
    st.st_uid = uid;
    st.st_gid = gid;
    st.st_rdev = inode.rdev();
    st.st_size = d.size as i64;
    st.st_blksize = 4096;
    st.st_blocks = d.size.div_ceil(512) as i64;
    st.st_mtime = d.mtime as i64;
    st.st_mtime_nsec = i64::from(d.mtime_nsec);
    st.st_ctime = st.st_mtime;
    st.st_ctime_nsec = st.st_mtime_nsec;
    st.st_atime = st.st_mtime;
    st.st_atime_nsec = st.st_mtime_nsec;
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rafs::tree::{ImageConfig, Node, NodeKind, Tree};
    use crate::rafs::writer::write_bootstrap;

    fn image_with(names: &[Vec<u8>]) -> Image {
        let mut t = Tree::new(ImageConfig::default());
        for n in names {
            let mut p = b"d/".to_vec();
            p.extend_from_slice(n);
            t.insert(&p, Node::with_kind(libc::S_IFREG | 0o644, NodeKind::File(vec![]))).unwrap();
        }
        Image::from_bytes(write_bootstrap(&t).unwrap().0).unwrap()
    }

    #[test]
    fn lookup_finds_every_name_across_blocks_and_nothing_else() {
        let names: Vec<Vec<u8>> = (0..5000)
            .map(|i| format!("f{:05}-{}", i * 7 % 5000, "x".repeat(i % 40)).into_bytes())
            .collect();
        let img = image_with(&names);
        let d = img.resolve(b"/d").unwrap().unwrap();
        assert!(d.disk.size > 40 * l::BLOCK_SIZE, "spans many blocks");
        assert_eq!(img.dir_entries(&d).unwrap().len(), names.len() + 2);
        for n in &names {
            assert!(img.lookup(&d, n).unwrap().is_some(), "{}", String::from_utf8_lossy(n));
        }
        for miss in [&b"a"[..], b"f", b"f00000-y", b"zzz", b"f02500", b"\xff"] {
            assert!(img.lookup(&d, miss).unwrap().is_none(), "{}", String::from_utf8_lossy(miss));
        }
        assert_eq!(img.lookup(&d, b"..").unwrap().unwrap().nid, u64::from(img.sb.root_nid));
    }

    #[test]
    fn empty_image_has_a_root_and_rejects_garbage() {
        let img = image_with(&[]);
        assert!(img.root().unwrap().is_dir());
        assert!(Image::from_bytes(vec![0; 100]).is_err());
        assert!(Image::from_bytes(vec![0; 8192]).is_err());
    }
}
