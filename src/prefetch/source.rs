//! The image as the planner sees it: paths to chunk lists.
//!
//! [`FileSource`] is the seam: the planner asks for one path at a time and never walks the
//! tree itself, so tests can hand it a table and the planner stays pure. [`RafsSource`]
//! answers from a RAFS bootstrap through [`crate::rafs::reader::Image`].

use crate::rafs::chunk::ChunkRef;
use crate::rafs::reader::{Image, ReadError};

use super::Error;

/// What a path names in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// The file's chunks in file order; `None` for a hole.
        chunks: Vec<Option<ChunkRef>>,
    },
    /// A directory.
    Dir {
        /// An identity of the directory (the nid), to detect cycles when expanding.
        id: u64,
        /// Absolute paths of its entries (without `.` and `..`), in the order to visit them.
        children: Vec<String>,
    },
    /// Anything else (symlink, device, fifo, socket): no data to fetch.
    Other,
}

/// Paths to chunks, for the planner.
pub trait FileSource {
    /// The chunk size files are cut by: file chunk `i` covers bytes `i*size..(i+1)*size`.
    fn chunk_size(&self) -> u64;

    /// What `path` (absolute) names, `None` when nothing.
    fn entry(&self, path: &str) -> Result<Option<Entry>, Error>;
}

/// A RAFS bootstrap as a [`FileSource`]. Paths are resolved without following symlinks (as
/// the access log records them: the path that was opened, which for a symlink is looked up
/// to its target by the kernel before the read).
#[derive(Debug)]
pub struct RafsSource<'a> {
    image: &'a Image,
}

impl<'a> RafsSource<'a> {
    /// Answer from `image`.
    pub fn new(image: &'a Image) -> Self {
        Self { image }
    }
}

impl FileSource for RafsSource<'_> {
    fn chunk_size(&self) -> u64 {
        u64::from(self.image.chunk_size)
    }

    fn entry(&self, path: &str) -> Result<Option<Entry>, Error> {
        let err = |source: ReadError| Error::Image { path: path.to_string(), source };
        let Some(inode) = self.image.resolve(path.as_bytes()).map_err(err)? else {
            return Ok(None);
        };
        if inode.is_reg() {
            let chunks = self.image.chunks(&inode).map_err(err)?;
            return Ok(Some(Entry::File { size: inode.disk.size, chunks }));
        }
        if inode.is_dir() {
            let base = path.trim_end_matches('/');
            let children = self
                .image
                .dir_entries(&inode)
                .map_err(err)?
                .into_iter()
                .filter(|e| e.name != b"." && e.name != b".." && !e.name.contains(&b'/'))
                .map(|e| format!("{base}/{}", String::from_utf8_lossy(&e.name)))
                .collect();
            return Ok(Some(Entry::Dir { id: inode.nid, children }));
        }
        Ok(Some(Entry::Other))
    }
}
