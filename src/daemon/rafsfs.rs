//! A RAFS image as a read-only FUSE filesystem (fuse-backend-rs `FileSystem`).
//!
//! Inode numbers are nids (as nydusd reports for v6; the Vfs adds the mount index in the top
//! byte). The filesystem is stateless per inode: every request decodes what it needs from the
//! mapped bootstrap, so `forget` has nothing to release and memory does not grow with the
//! number of inodes the kernel remembers. Images are immutable, so entries, attributes and
//! negative lookups are cached by the kernel for 2^32 s and file/dir pages are kept
//! (KEEP_CACHE, CACHE_DIR).
//!
//! Every request the access log covers (lookup, getattr, readlink, open, read, readdir,
//! xattrs) is handed to the instance's [`AccessSink`] with the caller's pid and uid; reads
//! carry their range, chunk span and whether the chunks were cached. With the log off that is
//! one compare per request.
//!
//! Errors: a name that does not exist is a cached negative entry; everything that goes wrong
//! reading the image or a chunk (corruption, a missing blob, a digest mismatch) is EIO for the
//! caller and an error event for the daemon. `to_errno` is the one place this mapping lives.

use std::any::Any;
use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    ZeroCopyWriter,
};
use fuse_backend_rs::api::BackendFileSystem;

use super::metrics::{Events, Fop, FsMetrics};
use crate::accesslog::{AccessSink, Cache, Event, Op};
use crate::rafs::chunk::{ChunkReader, ChunkRef};
use crate::rafs::reader::{Image, Inode, ReadError};

/// How long the kernel may cache entries and attributes of an immutable image.
pub const CACHE_TIMEOUT: Duration = Duration::from_secs(1 << 32);

/// The only place image errors become errno values.
pub fn to_errno(e: &ReadError) -> io::Error {
    io::Error::from_raw_os_error(match e {
        ReadError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    })
}

/// Read-ahead worker threads per mounted image.
pub const READAHEAD_THREADS: usize = 2;
/// Read-ahead requests queued at most; more are dropped (a reader never waits for read-ahead).
const READAHEAD_QUEUE: usize = 64;

/// Background fetches of the chunks after the one a read touched, so a sequential reader finds
/// them ready instead of waiting for each fetch in turn. The cache's single-flight map makes a
/// reader that arrives while its chunk is being read ahead wait for that fetch, not start
/// another.
struct ReadAhead {
    tx: std::sync::mpsc::SyncSender<ChunkRef>,
    chunks: u64,
}

impl ReadAhead {
    fn start(src: Arc<dyn ChunkReader>, chunks: u64, events: Arc<Events>) -> Option<Self> {
        if chunks == 0 {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<ChunkRef>(READAHEAD_QUEUE);
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        for i in 0..READAHEAD_THREADS {
            let (rx, src, events) = (rx.clone(), src.clone(), events.clone());
            let spawned = std::thread::Builder::new().name(format!("strata-readahead-{i}")).spawn(
                move || {
                    // Ends when the filesystem (and with it the sender) is dropped.
                    loop {
                        let next = rx.lock().recv();
                        let Ok(c) = next else { break };
                        if !src.is_cached(&c) {
                            if let Err(e) = src.read_chunk(&c) {
                                events.error(format!(
                                    "read-ahead of chunk {} of blob {}: {e}",
                                    c.index, c.blob_index
                                ));
                            }
                        }
                    }
                },
            );
            if spawned.is_err() {
                return None;
            }
        }
        Some(Self { tx, chunks })
    }
}

/// A mounted RAFS image.
pub struct RafsFs {
    image: Arc<Image>,
    chunks: Arc<dyn ChunkReader>,
    readahead: Option<ReadAhead>,
    metrics: Arc<FsMetrics>,
    events: Arc<Events>,
    access: Arc<AccessSink>,
    xattr: bool,
    /// uid/gid to report when the image does not carry explicit owners.
    owner: Option<(u32, u32)>,
}

impl RafsFs {
    /// Serve `image`, reading chunk data through `chunks`. `amplify_io` bytes after each read
    /// are fetched in the background (nydusd's read amplification; 0 disables it). Accesses
    /// go to `access` ([`AccessSink::off`] records nothing).
    pub fn new(
        image: Arc<Image>,
        chunks: Arc<dyn ChunkReader>,
        metrics: Arc<FsMetrics>,
        events: Arc<Events>,
        access: Arc<AccessSink>,
        xattr: bool,
        amplify_io: u64,
    ) -> Self {
        let owner = crate::rafs::reader::implied_owner(&image);
        let cs = u64::from(image.chunk_size);
        let ahead = if cs == 0 { 0 } else { amplify_io.div_ceil(cs) };
        let readahead = ReadAhead::start(chunks.clone(), ahead, events.clone());
        Self { image, chunks, readahead, metrics, events, access, xattr, owner }
    }

    /// Hand an access of the request `ctx` to the access log.
    #[inline]
    fn log<'a>(&self, ctx: &Context, op: Op, inode: u64, add: impl FnOnce(Event<'a>) -> Event<'a>) {
        if self.access.enabled() {
            self.access.record(add(Event::new(op, inode, ctx.pid as u32, ctx.uid)));
        }
    }

    /// The cache state of the chunks holding `[offset, offset+len)` of `inode`, and their
    /// indexes. Only called when the access log is on; allocates nothing.
    fn cache_state(&self, inode: &Inode, offset: u64, len: u64) -> Option<(u32, u32, Cache)> {
        let cs = u64::from(self.image.chunk_size);
        if cs == 0 || len == 0 || offset >= inode.disk.size {
            return None;
        }
        let end = (offset + len).min(inode.disk.size);
        let (first, last) = (offset / cs, (end - 1) / cs);
        let (mut hit, mut all) = (0usize, 0usize);
        for c in self.image.chunk_iter(inode, first, last - first + 1).ok()? {
            if let Some(c) = c.ok()? {
                all += 1;
                hit += usize::from(self.chunks.is_cached(&c));
            }
        }
        let cache = match hit {
            _ if hit == all => Cache::Hit,
            0 => Cache::Miss,
            _ => Cache::Partial,
        };
        Some((first as u32, last as u32, cache))
    }

    /// Queue the chunks after the one holding byte `end - 1` of `inode`.
    fn read_ahead(&self, inode: &Inode, end: u64) {
        let Some(ra) = &self.readahead else { return };
        let cs = u64::from(self.image.chunk_size);
        if cs == 0 || end == 0 || end >= inode.disk.size {
            return;
        }
        let next = (end - 1) / cs + 1;
        let Ok(list) = self.image.chunk_range(inode, next, ra.chunks) else { return };
        for c in list.into_iter().flatten() {
            if self.chunks.is_cached(&c) {
                continue;
            }
            // Full queue: drop it; read-ahead must never hold up a reader.
            if ra.tx.try_send(c).is_err() {
                break;
            }
        }
    }

    /// The chunk reader file data goes through.
    pub fn chunk_reader(&self) -> Arc<dyn ChunkReader> {
        self.chunks.clone()
    }

    /// The image served.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    fn inode(&self, ino: u64) -> io::Result<Inode> {
        self.image.inode(ino).map_err(|e| self.fail(format!("inode {ino}"), &e))
    }

    /// Record an error event and turn it into an errno.
    fn fail(&self, what: String, e: &ReadError) -> io::Error {
        self.events.error(format!("{what}: {e}"));
        to_errno(e)
    }

    /// The xattrs of `inode`, or ENOTSUP when the config disables them.
    fn xattrs_of(&self, inode: u64) -> io::Result<Vec<crate::rafs::reader::Xattr>> {
        if !self.xattr {
            return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
        }
        let i = self.inode(inode)?;
        self.image.xattrs(&i).map_err(|e| self.fail(format!("xattrs {inode}"), &e))
    }

    fn stat(&self, inode: &Inode) -> stat64 {
        crate::rafs::reader::inode_stat(inode, self.owner)
    }

    fn entry(&self, inode: &Inode) -> Entry {
        Entry {
            inode: inode.nid,
            generation: 0,
            attr: self.stat(inode),
            attr_flags: 0,
            attr_timeout: CACHE_TIMEOUT,
            entry_timeout: CACHE_TIMEOUT,
        }
    }

    /// Walk directory entries from the readdir cursor `offset` = block * 2^16 + index.
    fn each_dirent(
        &self,
        dir: u64,
        offset: u64,
        mut add: impl FnMut(&crate::rafs::reader::DirEntry, u64) -> io::Result<bool>,
    ) -> io::Result<()> {
        let inode = self.inode(dir)?;
        let blocks =
            self.image.dir_blocks(&inode).map_err(|e| self.fail(format!("dir {dir}"), &e))?;
        let (mut b, mut j) = (offset >> 16, (offset & 0xffff) as usize);
        while b < blocks {
            let entries =
                self.image.dir_block(&inode, b).map_err(|e| self.fail(format!("dir {dir}"), &e))?;
            while j < entries.len() {
                if !add(&entries[j], (b << 16) | (j as u64 + 1))? {
                    return Ok(());
                }
                j += 1;
            }
            b += 1;
            j = 0;
        }
        Ok(())
    }
}

impl FileSystem for RafsFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // Used without the Vfs these are what a read-only image wants; the Vfs sends its own.
        Ok(capable
            & (FsOptions::ASYNC_READ
                | FsOptions::PARALLEL_DIROPS
                | FsOptions::BIG_WRITES
                | FsOptions::MAX_PAGES
                | FsOptions::DO_READDIRPLUS
                | FsOptions::READDIRPLUS_AUTO
                | FsOptions::CACHE_SYMLINKS
                | FsOptions::ZERO_MESSAGE_OPEN
                | FsOptions::ZERO_MESSAGE_OPENDIR))
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let op = self.metrics.begin(Fop::Lookup, parent);
        let r = (|| {
            let dir = self.inode(parent)?;
            if !dir.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            match self.image.lookup(&dir, name.to_bytes()) {
                Ok(Some(e)) => Ok(self.entry(&self.inode(e.nid)?)),
                // A cached negative entry: the image never changes.
                Ok(None) => Ok(Entry {
                    inode: 0,
                    generation: 0,
                    attr: crate::sys::zeroed_stat64(),
                    attr_flags: 0,
                    attr_timeout: CACHE_TIMEOUT,
                    entry_timeout: CACHE_TIMEOUT,
                }),
                Err(e) => Err(self.fail(format!("lookup in dir {parent}"), &e)),
            }
        })();
        op.done(r.is_ok(), 0);
        let found = r.as_ref().map_or(0, |e| e.inode);
        self.log(ctx, Op::Lookup, parent, |e| e.with_name(name.to_bytes()).with_aux(found));
        r
    }

    fn forget(&self, _ctx: &Context, _inode: u64, _count: u64) {}

    fn batch_forget(&self, _ctx: &Context, _requests: Vec<(u64, u64)>) {}

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        _h: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let op = self.metrics.begin(Fop::Getattr, inode);
        let r = self.inode(inode).map(|i| (self.stat(&i), CACHE_TIMEOUT));
        op.done(r.is_ok(), 0);
        self.log(ctx, Op::Getattr, inode, |e| e);
        r
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let op = self.metrics.begin(Fop::Readlink, inode);
        let r = self.inode(inode).and_then(|i| {
            if i.file_type() != libc::S_IFLNK {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            self.image.readlink(&i).map_err(|e| self.fail(format!("readlink {inode}"), &e))
        });
        op.done(r.is_ok(), 0);
        self.log(ctx, Op::Readlink, inode, |e| e);
        r
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        _flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let op = self.metrics.begin(Fop::Open, inode);
        let r = self.inode(inode).map(|_| (None, OpenOptions::KEEP_CACHE, None));
        op.done(r.is_ok(), 0);
        self.log(ctx, Op::Open, inode, |e| e);
        r
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let op = self.metrics.begin(Fop::Read, inode);
        let r = self.inode(inode).and_then(|i| {
            if !i.is_reg() {
                return Err(io::Error::from_raw_os_error(libc::EISDIR));
            }
            let logged = self
                .access
                .enabled()
                .then(|| self.cache_state(&i, offset, u64::from(size)))
                .flatten();
            let data = self
                .image
                .read(&i, offset, u64::from(size), self.chunks.as_ref())
                .map_err(|e| self.fail(format!("read inode {inode} at {offset}+{size}"), &e))?;
            self.read_ahead(&i, offset + data.len() as u64);
            w.write_all(&data)?;
            if let Some((first, last, cache)) = logged {
                self.log(ctx, Op::Read, inode, |e| {
                    let e = e.with_range(offset, data.len() as u64).with_cache(cache);
                    if data.is_empty() {
                        e
                    } else {
                        e.with_chunks(first, last)
                    }
                });
            } else {
                self.log(ctx, Op::Read, inode, |e| e.with_range(offset, data.len() as u64));
            }
            Ok(data.len())
        });
        op.done(r.is_ok(), *r.as_ref().unwrap_or(&0));
        r
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        _handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let op = self.metrics.begin(Fop::Statfs, inode);
        let mut st = crate::sys::zeroed_statvfs64();
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        let data_blocks: u64 = self.image.devices.iter().map(|d| u64::from(d.blocks)).sum();
        st.f_blocks = u64::from(self.image.sb.blocks) + data_blocks;
        st.f_files = self.image.sb.inos;
        st.f_namemax = 255;
        op.done(true, 0);
        Ok(st)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let op = self.metrics.begin(Fop::Getxattr, inode);
        let r = (|| {
            let xattrs = self.xattrs_of(inode)?;
            let v = xattrs
                .into_iter()
                .find(|(k, _)| k.as_slice() == name.to_bytes())
                .map(|(_, v)| v)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA))?;
            match size {
                0 => Ok(GetxattrReply::Count(v.len() as u32)),
                s if (s as usize) < v.len() => Err(io::Error::from_raw_os_error(libc::ERANGE)),
                _ => Ok(GetxattrReply::Value(v)),
            }
        })();
        self.log(ctx, Op::Getxattr, inode, |e| e.with_name(name.to_bytes()));
        // ENODATA is an answer, not a failure.
        op.done(
            r.as_ref().is_ok()
                || r.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::ENODATA),
            0,
        );
        r
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let op = self.metrics.begin(Fop::Listxattr, inode);
        self.log(ctx, Op::Listxattr, inode, |e| e);
        let r = (|| {
            let xattrs = self.xattrs_of(inode)?;
            let mut names = Vec::new();
            for (k, _) in xattrs {
                names.extend_from_slice(&k);
                names.push(0);
            }
            match size {
                0 => Ok(ListxattrReply::Count(names.len() as u32)),
                s if (s as usize) < names.len() => Err(io::Error::from_raw_os_error(libc::ERANGE)),
                _ => Ok(ListxattrReply::Names(names)),
            }
        })();
        op.done(r.is_ok(), 0);
        r
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let op = self.metrics.begin(Fop::Opendir, inode);
        self.log(ctx, Op::Opendir, inode, |e| e);
        let r = self.inode(inode).and_then(|i| {
            if !i.is_dir() {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            Ok((None, OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR))
        });
        op.done(r.is_ok(), 0);
        r
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let op = self.metrics.begin(Fop::Readdir, inode);
        self.log(ctx, Op::Readdir, inode, |e| e);
        let r = self.each_dirent(inode, offset, |e, next| {
            let n = add_entry(DirEntry {
                ino: e.nid,
                offset: next,
                type_: crate::rafs::reader::dtype(e.file_type),
                name: &e.name,
            })?;
            Ok(n > 0)
        });
        op.done(r.is_ok(), 0);
        r
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let op = self.metrics.begin(Fop::Readdirplus, inode);
        self.log(ctx, Op::Readdir, inode, |e| e);
        let r = self.each_dirent(inode, offset, |e, next| {
            let child = self.inode(e.nid)?;
            let n = add_entry(
                DirEntry {
                    ino: e.nid,
                    offset: next,
                    type_: crate::rafs::reader::dtype(e.file_type),
                    name: &e.name,
                },
                self.entry(&child),
            )?;
            Ok(n > 0)
        });
        op.done(r.is_ok(), 0);
        r
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, _mask: u32) -> io::Result<()> {
        self.log(ctx, Op::Access, inode, |e| e);
        // Permission checks happen in the kernel (default_permissions); existence is all.
        self.inode(inode).map(|_| ())
    }
}

impl BackendFileSystem for RafsFs {
    fn mount(&self) -> io::Result<(Entry, u64)> {
        let root = self.image.root().map_err(|e| self.fail("root".into(), &e))?;
        // The largest nid: an upper bound is the image size / 32.
        Ok((self.entry(&root), self.image.size() / 32))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
