//! Serialise a [`Tree`] into a RAFS v6 bootstrap: a valid EROFS image whose file data lives in
//! the data blobs named by its device table.
//!
//! Layout (offsets in bytes; every region after the superblocks starts on a 4 KiB block):
//! ```text
//! 0     pad | 1024 EROFS SB | 1152 RAFS ext SB | 1408 device table (128 B per blob)
//! blob table (256 B per blob) | prefetch table (u32 nids)
//! inode area: root first, then breadth first; each inode is followed by its inline xattrs
//!             and either its chunk index array or the inline tail of its directory/symlink data
//! data area:  whole directory / symlink blocks that are not inline
//! chunk table (80 B per chunk, nydusd resolves chunk details through it)
//! ```
//! `meta_blkaddr` is one block before the inode area, so the root's nid is 128, never 0.
//!
//! Inode form rule (see docs/rafs-format.md): an inode is written compact (32 B) only when
//! nothing is lost: mtime is exactly 0 (what both nydusd and the kernel report for a compact
//! inode of an image whose build time is 0), uid, gid and nlink fit 16 bits and size fits 32
//! bits. Everything else is extended (64 B) and keeps its mtime.

use std::collections::{BTreeMap, HashMap};

use super::layout::{self as l, align_up, data_layout, file_type, DiskInode, BLOCK_SIZE};
use super::tree::{InodeId, NodeKind, Tree};

/// Errors of bootstrap serialisation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    /// A name is longer than EROFS allows.
    #[error("name {name:?} is {len} bytes; EROFS allows at most 255")]
    NameTooLong {
        /// The name (lossy).
        name: String,
        /// Its length.
        len: usize,
    },
    /// A regular file's chunk list does not cover its size.
    #[error(
        "inode {inode}: {chunks} chunks cannot hold {size} bytes with chunk size {chunk_size}"
    )]
    ChunkCount {
        /// Arena id.
        inode: InodeId,
        /// Number of chunks.
        chunks: usize,
        /// File size.
        size: u64,
        /// Chunk size.
        chunk_size: u32,
    },
    /// The image exceeds a format limit.
    #[error("image too large: {0}")]
    TooLarge(&'static str),
    /// A chunk references a blob that is not in the blob table.
    #[error("a chunk references blob index {0}, past the blob table")]
    BadBlobIndex(u32),
}

/// Figures about a written bootstrap.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteReport {
    /// Bootstrap size in bytes.
    pub bootstrap_size: u64,
    /// Inodes written.
    pub inodes: u64,
    /// Distinct chunks in the chunk table.
    pub chunks: u64,
}

const MAX_NAME: usize = 255;

/// One directory entry before nids are known.
struct Entry<'a> {
    name: &'a [u8],
    target: InodeId,
    ftype: u8,
}

/// Planned placement of one inode.
struct Placed {
    offset: u64,
    disk: DiskInode,
    xattrs: Vec<u8>,
    /// Bytes of directory or symlink data (dirs: filled after nids are known).
    data_len: u64,
    /// Bytes of the data stored inline after the inode (a tail).
    inline_len: u64,
    /// First block of the non-inline data.
    data_blk: u32,
}

/// Encode a Linux device number the way the kernel's erofs driver decodes `i_u` (new_encode_dev).
pub fn encode_rdev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Decode an erofs `i_u` device number into a Linux device number.
pub fn decode_rdev(v: u32) -> u64 {
    let major = (v & 0xfff00) >> 8;
    let minor = (v & 0xff) | ((v >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// Directory-entry file type of a mode.
pub fn mode_file_type(mode: u32) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => file_type::REG,
        libc::S_IFDIR => file_type::DIR,
        libc::S_IFCHR => file_type::CHR,
        libc::S_IFBLK => file_type::BLK,
        libc::S_IFIFO => file_type::FIFO,
        libc::S_IFSOCK => file_type::SOCK,
        libc::S_IFLNK => file_type::SYMLINK,
        _ => file_type::UNKNOWN,
    }
}

fn encode_xattrs(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    if xattrs.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0u8; l::XATTR_IBODY_HEADER_SIZE];
    for (name, value) in xattrs {
        let (idx, suffix) = l::xattr_split(name);
        let start = out.len();
        out.push(suffix.len() as u8);
        out.push(idx);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        out.resize(start + l::xattr_entry_size(suffix.len(), value.len()), 0);
    }
    out
}

/// Pack sorted directory entries into 4 KiB blocks: returns each block's entries.
fn pack_dir<'a, 'e>(entries: &'e [Entry<'a>]) -> Vec<&'e [Entry<'a>]> {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut used = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let need = l::DIRENT_SIZE + e.name.len();
        if used + need > BLOCK_SIZE as usize {
            blocks.push(&entries[start..i]);
            start = i;
            used = 0;
        }
        used += need;
    }
    if start < entries.len() {
        blocks.push(&entries[start..]);
    }
    blocks
}

fn dir_data_len(blocks: &[&[Entry<'_>]]) -> u64 {
    let last: usize = blocks.last().map_or(0, |b| b.iter().map(|e| 12 + e.name.len()).sum());
    (blocks.len().saturating_sub(1) as u64) * BLOCK_SIZE + last as u64
}

fn encode_dir(blocks: &[&[Entry<'_>]], nid_of: &HashMap<InodeId, u64>) -> Vec<u8> {
    let mut out = Vec::new();
    for (bi, block) in blocks.iter().enumerate() {
        let base = out.len();
        let mut nameoff = l::DIRENT_SIZE * block.len();
        for e in block.iter() {
            let d =
                l::Dirent { nid: nid_of[&e.target], nameoff: nameoff as u16, file_type: e.ftype };
            out.extend_from_slice(&d.encode());
            nameoff += e.name.len();
        }
        for e in block.iter() {
            out.extend_from_slice(e.name);
        }
        if bi + 1 < blocks.len() {
            out.resize(base + BLOCK_SIZE as usize, 0);
        }
    }
    out
}

/// Serialise `tree` into bootstrap bytes.
pub fn write_bootstrap(tree: &Tree) -> Result<(Vec<u8>, WriteReport), WriteError> {
    let (order, names) = tree.reachable();
    if order.len() > u32::MAX as usize {
        return Err(WriteError::TooLarge("more than 2^32 inodes"));
    }
    let chunk_size = tree.config.chunk_size;
    let chunk_bits = chunk_size.trailing_zeros() as u16;

    // Parents of directories (each directory is reachable through exactly one name).
    let mut parent: HashMap<InodeId, InodeId> = HashMap::from([(tree.root, tree.root)]);
    for &id in &order {
        if let Some(ch) = tree.nodes[id].children() {
            for &c in ch.values() {
                if tree.nodes[c].is_dir() {
                    parent.entry(c).or_insert(id);
                }
            }
        }
    }

    // Directory entries, sorted bytewise; "." and ".." sort first among printable names.
    let mut dir_entries: HashMap<InodeId, Vec<Entry<'_>>> = HashMap::new();
    for &id in &order {
        let Some(ch) = tree.nodes[id].children() else { continue };
        let mut v = vec![
            Entry { name: b".", target: id, ftype: file_type::DIR },
            Entry { name: b"..", target: parent[&id], ftype: file_type::DIR },
        ];
        for (name, &c) in ch {
            if name.len() > MAX_NAME || name.is_empty() {
                return Err(WriteError::NameTooLong {
                    name: String::from_utf8_lossy(name).into_owned(),
                    len: name.len(),
                });
            }
            v.push(Entry { name, target: c, ftype: mode_file_type(tree.nodes[c].mode) });
        }
        v.sort_by(|a, b| a.name.cmp(b.name));
        dir_entries.insert(id, v);
    }
    let dir_blocks: HashMap<InodeId, Vec<&[Entry<'_>]>> =
        dir_entries.iter().map(|(&id, v)| (id, pack_dir(v))).collect();

    // Header regions.
    let ndev = tree.blobs.len();
    if ndev > 255 {
        return Err(WriteError::TooLarge("more than 255 blobs"));
    }
    let devt_end = u64::from(l::DEVT_SLOT_OFF) * 128 + (ndev * l::DEVICE_SLOT_SIZE) as u64;
    let blob_table_offset = align_up(devt_end, BLOCK_SIZE);
    let blob_table_size = (ndev * l::BLOB_ENTRY_SIZE) as u64;
    let prefetch_offset = blob_table_offset + blob_table_size;
    let prefetch: Vec<InodeId> =
        tree.prefetch.iter().copied().filter(|id| names.contains_key(id)).collect();
    let prefetch_size = 4 * prefetch.len() as u64;
    let meta_start = align_up(prefetch_offset + prefetch_size, BLOCK_SIZE);
    let meta_blkaddr = meta_start / BLOCK_SIZE - 1;
    let meta_base = meta_blkaddr * BLOCK_SIZE;

    // Inode placement.
    let mut placed: Vec<Placed> = Vec::with_capacity(order.len());
    let mut nid_of: HashMap<InodeId, u64> = HashMap::with_capacity(order.len());
    let mut pos = meta_start;
    let mut any_xattr = false;
    for (seq, &id) in order.iter().enumerate() {
        let node = &tree.nodes[id];
        let xattrs = encode_xattrs(&node.xattrs);
        any_xattr |= !xattrs.is_empty();
        let xattr_icount = if xattrs.is_empty() {
            0
        } else {
            u16::try_from((xattrs.len() - l::XATTR_IBODY_HEADER_SIZE) / 4 + 1)
                .map_err(|_| WriteError::TooLarge("xattrs of one inode exceed 256 KiB"))?
        };
        let nlink = if node.is_dir() {
            2 + node
                .children()
                .map_or(0, |c| c.values().filter(|&&c| tree.nodes[c].is_dir()).count())
                as u32
        } else {
            names[&id]
        };
        let (size, data_len) = match &node.kind {
            NodeKind::Dir(_) => {
                let n = dir_data_len(&dir_blocks[&id]);
                (n, n)
            }
            NodeKind::Symlink(t) => (t.len() as u64, t.len() as u64),
            NodeKind::File(chunks) => {
                let need = node.size.div_ceil(u64::from(chunk_size));
                if chunks.len() as u64 != need {
                    return Err(WriteError::ChunkCount {
                        inode: id,
                        chunks: chunks.len(),
                        size: node.size,
                        chunk_size,
                    });
                }
                for c in chunks {
                    if c.blob_index as usize >= ndev {
                        return Err(WriteError::BadBlobIndex(c.blob_index));
                    }
                }
                (node.size, 0)
            }
            NodeKind::Special => (0, 0),
        };
        let implied = node.is_dir() && tree.implicit.contains(&id);
        let compact = !implied
            && node.mtime == 0
            && node.mtime_nsec == 0
            && node.uid <= 0xffff
            && node.gid <= 0xffff
            && nlink <= 0xffff
            && size <= u64::from(u32::MAX);
        let mut disk = DiskInode {
            extended: !compact,
            layout: data_layout::FLAT_PLAIN,
            xattr_icount,
            mode: node.mode as u16,
            nlink,
            size,
            u: 0,
            ino: seq as u32 + 1,
            uid: node.uid,
            gid: node.gid,
            mtime: node.mtime,
            mtime_nsec: node.mtime_nsec,
            strata_flags: if implied { l::STRATA_INODE_IMPLIED_DIR } else { 0 },
        };
        let head = (disk.disk_size() + xattrs.len()) as u64;
        pos = align_up(pos, l::INODE_SLOT_SIZE);
        let mut inline_len = 0;
        let total = match &node.kind {
            NodeKind::File(chunks) if node.size > 0 => {
                disk.layout = data_layout::CHUNK_BASED;
                disk.u =
                    u32::from(l::CHUNK_FORMAT_INDEXES | (chunk_bits - u16::from(l::BLOCK_BITS)));
                align_up(head, 8) + (chunks.len() * l::CHUNK_INDEX_SIZE) as u64
            }
            NodeKind::Dir(_) | NodeKind::Symlink(_) => {
                let tail = data_len % BLOCK_SIZE;
                if tail != 0 && head + tail <= BLOCK_SIZE {
                    if pos % BLOCK_SIZE + head + tail > BLOCK_SIZE {
                        pos = align_up(pos, BLOCK_SIZE);
                    }
                    disk.layout = data_layout::FLAT_INLINE;
                    inline_len = tail;
                }
                head + inline_len
            }
            NodeKind::Special => {
                if matches!(node.file_type(), libc::S_IFCHR | libc::S_IFBLK) {
                    disk.u = encode_rdev(node.rdev);
                }
                head
            }
            NodeKind::File(_) => head,
        };
        let nid = (pos - meta_base) / l::INODE_SLOT_SIZE;
        nid_of.insert(id, nid);
        placed.push(Placed { offset: pos, disk, xattrs, data_len, inline_len, data_blk: 0 });
        pos += total;
    }
    let root_nid = u16::try_from(nid_of[&tree.root])
        .map_err(|_| WriteError::TooLarge("root nid does not fit 16 bits"))?;

    // Non-inline data blocks.
    let mut blk = align_up(pos, BLOCK_SIZE) / BLOCK_SIZE;
    for p in placed.iter_mut() {
        let plain = p.data_len - p.inline_len;
        if plain > 0 {
            p.data_blk = u32::try_from(blk).map_err(|_| WriteError::TooLarge("block address"))?;
            p.disk.u = p.data_blk;
            blk += plain.div_ceil(BLOCK_SIZE);
        }
    }
    let chunk_table_offset = blk * BLOCK_SIZE;

    // Chunk table: every distinct (blob, chunk index) in blob order.
    let mut table: BTreeMap<(u32, u32), l::ChunkTableEntry> = BTreeMap::new();
    for &id in &order {
        if let NodeKind::File(chunks) = &tree.nodes[id].kind {
            for (i, c) in chunks.iter().enumerate() {
                table
                    .entry((c.blob_index, c.index))
                    .or_insert_with(|| c.to_table_entry(i as u64 * u64::from(chunk_size)));
            }
        }
    }
    let chunk_table_size = (table.len() * l::CHUNK_TABLE_ENTRY_SIZE) as u64;
    let total_size = align_up(chunk_table_offset + chunk_table_size, BLOCK_SIZE);
    let blocks = u32::try_from(total_size / BLOCK_SIZE)
        .map_err(|_| WriteError::TooLarge("bootstrap exceeds 16 TiB"))?;

    let mut out = vec![0u8; total_size as usize];
    let mut flags = tree.config.compressor.sb_flag()
        | tree.config.digester.sb_flag()
        | l::sb_flags::EXPLICIT_UID_GID
        | l::sb_flags::ENCRYPTION_NONE;
    if any_xattr {
        flags |= l::sb_flags::HAS_XATTR;
    }
    let sb = l::ErofsSuperBlock {
        feature_compat: l::FEATURE_COMPAT_RAFS_V6,
        blkszbits: l::BLOCK_BITS,
        root_nid,
        inos: order.len() as u64,
        build_time: 0,
        build_time_nsec: 0,
        blocks,
        meta_blkaddr: meta_blkaddr as u32,
        xattr_blkaddr: 0,
        uuid: [0; 16],
        feature_incompat: l::FEATURE_INCOMPAT_CHUNKED_FILE | l::FEATURE_INCOMPAT_DEVICE_TABLE,
        extra_devices: ndev as u16,
        devt_slotoff: l::DEVT_SLOT_OFF,
    };
    put(&mut out, l::EROFS_SB_OFFSET, &sb.encode());
    let ext = l::RafsExtSuperBlock {
        flags,
        blob_table_offset,
        blob_table_size: blob_table_size as u32,
        chunk_size,
        chunk_table_offset: if table.is_empty() { 0 } else { chunk_table_offset },
        chunk_table_size,
        prefetch_table_offset: if prefetch.is_empty() { 0 } else { prefetch_offset },
        prefetch_table_size: prefetch_size as u32,
    };
    put(&mut out, l::RAFS_EXT_SB_OFFSET, &ext.encode());
    for (i, b) in tree.blobs.iter().enumerate() {
        let dev = l::DeviceSlot {
            blob_id: b.blob_id.clone(),
            blocks: u32::try_from(b.uncompressed_size.div_ceil(BLOCK_SIZE))
                .map_err(|_| WriteError::TooLarge("blob exceeds 16 TiB"))?,
            mapped_blkaddr: 0,
        };
        put(&mut out, u64::from(l::DEVT_SLOT_OFF) * 128 + (i * 128) as u64, &dev.encode());
        let mut entry = b.clone();
        entry.blob_index = i as u32;
        put(&mut out, blob_table_offset + (i * l::BLOB_ENTRY_SIZE) as u64, &entry.encode());
    }
    for (i, id) in prefetch.iter().enumerate() {
        put(&mut out, prefetch_offset + 4 * i as u64, &(nid_of[id] as u32).to_le_bytes());
    }
    for (p, &id) in placed.iter().zip(&order) {
        let node = &tree.nodes[id];
        let ibytes = p.disk.encode();
        put(&mut out, p.offset, &ibytes);
        let xoff = p.offset + ibytes.len() as u64;
        put(&mut out, xoff, &p.xattrs);
        let after = xoff + p.xattrs.len() as u64;
        let data: Vec<u8> = match &node.kind {
            NodeKind::Dir(_) => encode_dir(&dir_blocks[&id], &nid_of),
            NodeKind::Symlink(t) => t.clone(),
            NodeKind::File(chunks) => {
                let mut at = align_up(after, 8);
                for c in chunks {
                    let idx = l::ChunkIndex {
                        ci_index: c.index,
                        device_id: (c.blob_index + 1) as u8,
                        blkaddr: (c.uncompressed_offset / BLOCK_SIZE) as u32,
                    };
                    put(&mut out, at, &idx.encode());
                    at += l::CHUNK_INDEX_SIZE as u64;
                }
                Vec::new()
            }
            NodeKind::Special => Vec::new(),
        };
        if !data.is_empty() {
            let plain = (p.data_len - p.inline_len) as usize;
            put(&mut out, u64::from(p.data_blk) * BLOCK_SIZE, &data[..plain]);
            put(&mut out, after, &data[plain..]);
        }
    }
    for (i, e) in table.values().enumerate() {
        put(&mut out, chunk_table_offset + (i * l::CHUNK_TABLE_ENTRY_SIZE) as u64, &e.encode());
    }
    let report = WriteReport {
        bootstrap_size: total_size,
        inodes: order.len() as u64,
        chunks: table.len() as u64,
    };
    Ok((out, report))
}

fn put(out: &mut [u8], at: u64, bytes: &[u8]) {
    let at = at as usize;
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_encoding_matches_the_kernel() {
        for (maj, min) in [(0, 0), (1, 3), (8, 1), (259, 70000), (4095, 0xfffff)] {
            let dev = libc::makedev(maj, min);
            assert_eq!(decode_rdev(encode_rdev(dev)), dev, "{maj}:{min}");
        }
        // new_encode_dev(makedev(1,3)) = 0x103
        assert_eq!(encode_rdev(libc::makedev(1, 3)), 0x103);
    }

    #[test]
    fn directories_pack_into_blocks_without_splitting_entries() {
        let names: Vec<Vec<u8>> = (0..1000).map(|i| format!("name-{i:05}").into_bytes()).collect();
        let entries: Vec<Entry<'_>> =
            names.iter().map(|n| Entry { name: n, target: 0, ftype: 1 }).collect();
        let blocks = pack_dir(&entries);
        assert!(blocks.len() > 1);
        assert_eq!(blocks.iter().map(|b| b.len()).sum::<usize>(), 1000);
        for b in &blocks {
            assert!(b.iter().map(|e| 12 + e.name.len()).sum::<usize>() <= 4096);
        }
    }
}
