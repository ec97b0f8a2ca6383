//! The `Layer` seam: a read-only lower layer of the overlay. RAFS images ([`RafsLayer`]) and
//! plain directories ([`DirLayer`]) implement it.
//!
//! A layer names its objects with its own `u64` ids (RAFS: nids; plain directories: an id per
//! path seen, since a read-only tree's paths are stable and holding no file descriptor per
//! object keeps the daemon under the fd limit). Layers report whiteouts — overlayfs's char
//! device 0/0 and, in plain directories, OCI's `.wh.<name>` files — and opaque directories
//! (`trusted.overlay.opaque=y`, `user.overlay.opaque=y`, OCI's `.wh..wh..opq`); the overlay
//! decides what they hide.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::stat64;
use parking_lot::Mutex;

use crate::rafs::chunk::ChunkReader;
use crate::rafs::layout::file_type;
use crate::rafs::reader::{Image, Inode, ReadError};

/// OCI whiteout prefix.
pub const WH_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker entry.
pub const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// What a name resolves to inside one layer's directory.
#[derive(Debug)]
pub enum Found {
    /// An object: its id in the layer and its attributes.
    Entry(u64, stat64),
    /// A whiteout: the name is deleted here and in every layer below.
    Whiteout,
    /// Nothing here; look further down.
    Missing,
}

/// One raw directory entry of a layer.
#[derive(Debug)]
pub enum DirItem {
    /// An object: name, the object's inode number in its filesystem, its d_type.
    Entry(Vec<u8>, u64, u32),
    /// A whiteout for the name.
    Whiteout(Vec<u8>),
}

/// A read-only lower layer.
pub trait Layer: Send + Sync {
    /// A short description for errors and logs (a path or a bootstrap).
    fn describe(&self) -> String;
    /// The root directory's id.
    fn root(&self) -> io::Result<u64>;
    /// Resolve `name` in directory `dir`.
    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Found>;
    /// Attributes of an object (`st_ino` is the object's inode number in the layer).
    fn getattr(&self, id: u64) -> io::Result<stat64>;
    /// Whether directory `dir` hides everything below this layer.
    fn is_opaque(&self, dir: u64) -> io::Result<bool>;
    /// Every entry of `dir` except `.` and `..`, whiteouts reported as such.
    fn readdir(&self, dir: u64) -> io::Result<Vec<DirItem>>;
    /// A symlink's target.
    fn readlink(&self, id: u64) -> io::Result<Vec<u8>>;
    /// Every extended attribute of an object.
    fn xattrs(&self, id: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// A plain file to read the object's data from, when the layer has one (zero-copy reads
    /// and `copy_file_range` for copy-up); `None` means read through [`Layer::read`].
    fn open_file(&self, id: u64) -> io::Result<Option<File>>;
    /// Up to `len` bytes of a regular file at `offset`.
    fn read(&self, id: u64, offset: u64, len: u64) -> io::Result<Vec<u8>>;
}

/// Whether a stat describes an overlayfs whiteout (char device 0/0).
pub fn is_whiteout(st: &stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// A `stat64` from std metadata.
pub fn stat_of(m: &std::fs::Metadata) -> stat64 {
    let mut st = crate::sys::zeroed_stat64();
    st.st_dev = m.dev();
    st.st_ino = m.ino();
    st.st_mode = m.mode();
    st.st_nlink = m.nlink();
    st.st_uid = m.uid();
    st.st_gid = m.gid();
    st.st_rdev = m.rdev();
    st.st_size = m.size() as i64;
    st.st_blksize = m.blksize() as i64;
    st.st_blocks = m.blocks() as i64;
    st.st_atime = m.atime();
    st.st_atime_nsec = m.atime_nsec();
    st.st_mtime = m.mtime();
    st.st_mtime_nsec = m.mtime_nsec();
    st.st_ctime = m.ctime();
    st.st_ctime_nsec = m.ctime_nsec();
    st
}

/// d_type of a std file type.
pub fn dtype_of(ft: std::fs::FileType) -> u32 {
    u32::from(if ft.is_dir() {
        libc::DT_DIR
    } else if ft.is_file() {
        libc::DT_REG
    } else if ft.is_symlink() {
        libc::DT_LNK
    } else if ft.is_char_device() {
        libc::DT_CHR
    } else if ft.is_block_device() {
        libc::DT_BLK
    } else if ft.is_fifo() {
        libc::DT_FIFO
    } else if ft.is_socket() {
        libc::DT_SOCK
    } else {
        libc::DT_UNKNOWN
    })
}

/// Extended attributes of a path, not following a final symlink.
pub fn path_xattrs(p: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match xattr::list(p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for n in names {
        if let Some(v) = xattr::get(p, &n)? {
            out.push((n.as_bytes().to_vec(), v));
        }
    }
    Ok(out)
}

fn opaque_value(v: &Option<Vec<u8>>) -> bool {
    v.as_deref() == Some(b"y")
}

/// id -> path relative to the layer root, and its inverse.
type PathTable = (Vec<Arc<[u8]>>, HashMap<Arc<[u8]>, u64>);

/// A plain directory as a lower layer.
pub struct DirLayer {
    root: PathBuf,
    /// id -> path relative to the root ("" is the root), and its inverse.
    paths: Mutex<PathTable>,
}

impl DirLayer {
    /// Serve the tree at `root` (read-only; it must not change while mounted).
    pub fn new(root: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let empty: Arc<[u8]> = Arc::from(&b""[..]);
        let mut map = HashMap::new();
        map.insert(empty.clone(), 0);
        Ok(Self { root: root.canonicalize()?, paths: Mutex::new((vec![empty], map)) })
    }

    fn rel(&self, id: u64) -> io::Result<Arc<[u8]>> {
        let g = self.paths.lock();
        g.0.get(id as usize).cloned().ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    fn full(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(std::ffi::OsStr::from_bytes(rel))
        }
    }

    fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
        if !dir.is_empty() {
            p.extend_from_slice(dir);
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }

    fn intern(&self, rel: Vec<u8>) -> u64 {
        let mut g = self.paths.lock();
        if let Some(id) = g.1.get(rel.as_slice()) {
            return *id;
        }
        let id = g.0.len() as u64;
        let rel: Arc<[u8]> = rel.into();
        g.0.push(rel.clone());
        g.1.insert(rel, id);
        id
    }
}

fn missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG))
}

impl Layer for DirLayer {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn root(&self) -> io::Result<u64> {
        Ok(0)
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Found> {
        if name.starts_with(WH_PREFIX) {
            return Ok(Found::Missing);
        }
        let d = self.rel(dir)?;
        let rel = Self::child(&d, name);
        match std::fs::symlink_metadata(self.full(&rel)) {
            Ok(m) => {
                let st = stat_of(&m);
                if is_whiteout(&st) {
                    return Ok(Found::Whiteout);
                }
                Ok(Found::Entry(self.intern(rel), st))
            }
            Err(e) if missing(&e) => {
                let mut wh = WH_PREFIX.to_vec();
                wh.extend_from_slice(name);
                match std::fs::symlink_metadata(self.full(&Self::child(&d, &wh))) {
                    Ok(_) => Ok(Found::Whiteout),
                    Err(e) if missing(&e) => Ok(Found::Missing),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn getattr(&self, id: u64) -> io::Result<stat64> {
        Ok(stat_of(&std::fs::symlink_metadata(self.full(&self.rel(id)?))?))
    }

    fn is_opaque(&self, dir: u64) -> io::Result<bool> {
        let p = self.full(&self.rel(dir)?);
        for n in ["trusted.overlay.opaque", "user.overlay.opaque"] {
            match xattr::get(&p, n) {
                Ok(v) if opaque_value(&v) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(p.join(std::ffi::OsStr::from_bytes(WH_OPAQUE)).symlink_metadata().is_ok())
    }

    fn readdir(&self, dir: u64) -> io::Result<Vec<DirItem>> {
        let p = self.full(&self.rel(dir)?);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&p)? {
            let e = e?;
            let name = e.file_name().as_bytes().to_vec();
            if name == WH_OPAQUE {
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WH_PREFIX) {
                out.push(DirItem::Whiteout(hidden.to_vec()));
                continue;
            }
            let ft = e.file_type()?;
            if ft.is_char_device() {
                let st = stat_of(&e.metadata()?);
                if is_whiteout(&st) {
                    out.push(DirItem::Whiteout(name));
                    continue;
                }
            }
            out.push(DirItem::Entry(name, e.ino(), dtype_of(ft)));
        }
        Ok(out)
    }

    fn readlink(&self, id: u64) -> io::Result<Vec<u8>> {
        Ok(std::fs::read_link(self.full(&self.rel(id)?))?.as_os_str().as_bytes().to_vec())
    }

    fn xattrs(&self, id: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        path_xattrs(&self.full(&self.rel(id)?))
    }

    fn open_file(&self, id: u64) -> io::Result<Option<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOATIME)
            .open(self.full(&self.rel(id)?))
            .or_else(|_| {
                // O_NOATIME is refused for files we do not own when not privileged.
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(self.full(&self.rel(id)?))
            })?;
        Ok(Some(f))
    }

    fn read(&self, id: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = self.open_file(id)?.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        let mut buf = vec![0u8; len as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = f.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }
}

/// A RAFS image as a lower layer (served in-process through the chunk cache).
pub struct RafsLayer {
    image: Arc<Image>,
    chunks: Arc<dyn ChunkReader>,
    name: String,
    /// uid/gid to report when the image does not carry explicit owners.
    owner: Option<(u32, u32)>,
}

fn rafs_err(e: ReadError) -> io::Error {
    crate::daemon::rafsfs::to_errno(&e)
}

impl RafsLayer {
    /// Serve `image`, reading chunks through `chunks`; `name` describes it in errors.
    pub fn new(image: Arc<Image>, chunks: Arc<dyn ChunkReader>, name: String) -> Self {
        let owner = crate::rafs::reader::implied_owner(&image);
        Self { image, chunks, name, owner }
    }

    fn inode(&self, id: u64) -> io::Result<Inode> {
        self.image.inode(id).map_err(rafs_err)
    }

    fn stat(&self, inode: &Inode) -> stat64 {
        crate::rafs::reader::inode_stat(inode, self.owner)
    }
}

impl Layer for RafsLayer {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn root(&self) -> io::Result<u64> {
        Ok(self.image.root().map_err(rafs_err)?.nid)
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> io::Result<Found> {
        if name.starts_with(WH_PREFIX) {
            return Ok(Found::Missing);
        }
        let d = self.inode(dir)?;
        if !d.is_dir() {
            return Ok(Found::Missing);
        }
        match self.image.lookup(&d, name).map_err(rafs_err)? {
            Some(e) => {
                let st = self.stat(&self.inode(e.nid)?);
                if is_whiteout(&st) {
                    return Ok(Found::Whiteout);
                }
                Ok(Found::Entry(e.nid, st))
            }
            None => {
                let mut wh = WH_PREFIX.to_vec();
                wh.extend_from_slice(name);
                match self.image.lookup(&d, &wh).map_err(rafs_err)? {
                    Some(_) => Ok(Found::Whiteout),
                    None => Ok(Found::Missing),
                }
            }
        }
    }

    fn getattr(&self, id: u64) -> io::Result<stat64> {
        Ok(self.stat(&self.inode(id)?))
    }

    fn is_opaque(&self, dir: u64) -> io::Result<bool> {
        let d = self.inode(dir)?;
        for (k, v) in self.image.xattrs(&d).map_err(rafs_err)? {
            if (k == b"trusted.overlay.opaque" || k == b"user.overlay.opaque") && v == b"y" {
                return Ok(true);
            }
        }
        Ok(self.image.lookup(&d, WH_OPAQUE).map_err(rafs_err)?.is_some())
    }

    fn readdir(&self, dir: u64) -> io::Result<Vec<DirItem>> {
        let d = self.inode(dir)?;
        let blocks = self.image.dir_blocks(&d).map_err(rafs_err)?;
        let mut out = Vec::new();
        for b in 0..blocks {
            for e in self.image.dir_block(&d, b).map_err(rafs_err)? {
                if e.name == b"." || e.name == b".." || e.name == WH_OPAQUE {
                    continue;
                }
                if let Some(hidden) = e.name.strip_prefix(WH_PREFIX) {
                    out.push(DirItem::Whiteout(hidden.to_vec()));
                    continue;
                }
                if e.file_type == file_type::CHR && is_whiteout(&self.getattr(e.nid)?) {
                    out.push(DirItem::Whiteout(e.name.to_vec()));
                    continue;
                }
                out.push(DirItem::Entry(
                    e.name.to_vec(),
                    e.nid,
                    crate::rafs::reader::dtype(e.file_type),
                ));
            }
        }
        Ok(out)
    }

    fn readlink(&self, id: u64) -> io::Result<Vec<u8>> {
        self.image.readlink(&self.inode(id)?).map_err(rafs_err)
    }

    fn xattrs(&self, id: u64) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.image.xattrs(&self.inode(id)?).map_err(rafs_err)
    }

    fn open_file(&self, _id: u64) -> io::Result<Option<File>> {
        Ok(None)
    }

    fn read(&self, id: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let i = self.inode(id)?;
        self.image.read(&i, offset, len, self.chunks.as_ref()).map_err(rafs_err)
    }
}
