//! [`Recorded`]: any FUSE filesystem with its requests handed to an access log and counted in
//! nydusd's io metrics ([`FsMetrics`]: per-op hits, errors and latency, read sizes, and the
//! optional per-file, access-pattern and recent-file recorders; nydusd counts only reading
//! operations, so writes are counted by the access log alone).
//!
//! The overlay is served through this wrapper, so its own code knows nothing of either: every
//! request is forwarded unchanged, then the outcome is recorded with the caller's pid and uid
//! (lookups and creates with the inode they found or made; reads and writes with the bytes they
//! moved). Failed requests are recorded too, except a lookup of a missing name, which is
//! recorded with no child (`aux` 0), as the kernel's negative entry. With the log off a request
//! costs one compare more. The RAFS filesystem records inside itself instead, because only
//! it knows chunk indexes and cache hits.

use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter,
};

use super::metrics::{Fop, FsMetrics};
use super::passthrough::Passthrough;
use super::splice::SplicedRead;
use crate::accesslog::{AccessSink, Event, Op};

/// `inner` with its requests recorded in `sink` and counted in `metrics`.
pub struct Recorded<F> {
    inner: F,
    sink: Arc<AccessSink>,
    metrics: Arc<FsMetrics>,
}

impl<F: SplicedRead> SplicedRead for Recorded<F> {
    fn splices(&self) -> bool {
        self.inner.splices()
    }

    fn read_spliced(
        &self,
        ctx: &Context,
        inode: u64,
        fh: u64,
        offset: u64,
        size: u32,
        reply: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> Option<io::Result<usize>> {
        // Counted and logged as `read` does, once there is a file to splice from.
        let mut op = None;
        let r = self.inner.read_spliced(ctx, inode, fh, offset, size, &mut |file| {
            op = Some(self.metrics.begin(Fop::Read, inode));
            reply(file)
        })?;
        let n = *r.as_ref().unwrap_or(&0);
        if let Some(op) = op {
            op.done(r.is_ok(), n);
        }
        let n = n as u64;
        self.log(ctx, Op::Read, inode, |e| e.with_range(offset, n));
        Some(r)
    }
}

/// Passthrough files' reads and writes never reach us: an access log or a per-file recorder
/// that needs to see them keeps files cached.
impl<F: Passthrough> Passthrough for Recorded<F> {
    fn wants_passthrough(&self) -> bool {
        self.inner.wants_passthrough() && !self.sink.enabled() && !self.metrics.per_file()
    }

    fn start_passthrough(&self, dev: BorrowedFd<'_>) -> io::Result<()> {
        self.inner.start_passthrough(dev)
    }
}

impl<F> Recorded<F> {
    /// Record the requests of `inner` in `sink` and count them in `metrics`.
    pub fn new(inner: F, sink: Arc<AccessSink>, metrics: Arc<FsMetrics>) -> Self {
        Self { inner, sink, metrics }
    }

    /// Run `f` as a counted `fop` on `inode`; `bytes` tells what a successful result read.
    #[inline]
    fn counted<T>(
        &self,
        fop: Fop,
        inode: u64,
        f: impl FnOnce() -> io::Result<T>,
        bytes: impl Fn(&T) -> usize,
    ) -> io::Result<T> {
        let op = self.metrics.begin(fop, inode);
        let r = f();
        op.done(r.is_ok(), r.as_ref().map_or(0, bytes));
        r
    }

    /// The access log.
    pub fn sink(&self) -> &Arc<AccessSink> {
        &self.sink
    }

    #[inline]
    fn log<'a>(&self, ctx: &Context, op: Op, inode: u64, add: impl FnOnce(Event<'a>) -> Event<'a>) {
        if self.sink.enabled() {
            self.sink.record(add(Event::new(op, inode, ctx.pid as u32, ctx.uid)));
        }
    }

    /// Record a request that makes `name` under `parent` (`aux` is the new inode, 0 on failure).
    fn made<T>(
        &self,
        ctx: &Context,
        op: Op,
        parent: u64,
        name: &CStr,
        r: &io::Result<T>,
        ino: impl Fn(&T) -> u64,
    ) {
        let child = r.as_ref().map_or(0, ino);
        self.log(ctx, op, parent, |e| e.with_name(name.to_bytes()).with_aux(child));
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for Recorded<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let r = self.counted(Fop::Lookup, parent, || self.inner.lookup(ctx, parent, name), |_| 0);
        self.made(ctx, Op::Lookup, parent, name, &r, |e| e.inode);
        r
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(&self, ctx: &Context, inode: u64, h: Option<u64>) -> io::Result<(stat64, Duration)> {
        self.log(ctx, Op::Getattr, inode, |e| e);
        self.counted(Fop::Getattr, inode, || self.inner.getattr(ctx, inode, h), |_| 0)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        h: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.log(ctx, Op::Setattr, inode, |e| e);
        self.inner.setattr(ctx, inode, attr, h, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.log(ctx, Op::Readlink, inode, |e| e);
        self.counted(Fop::Readlink, inode, || self.inner.readlink(ctx, inode), |_| 0)
    }

    fn symlink(&self, ctx: &Context, target: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        let r = self.inner.symlink(ctx, target, parent, name);
        self.made(ctx, Op::Symlink, parent, name, &r, |e| e.inode);
        r
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let r = self.inner.mknod(ctx, parent, name, mode, rdev, umask);
        self.made(ctx, Op::Mknod, parent, name, &r, |e| e.inode);
        r
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let r = self.inner.mkdir(ctx, parent, name, mode, umask);
        self.made(ctx, Op::Mkdir, parent, name, &r, |e| e.inode);
        r
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.log(ctx, Op::Unlink, parent, |e| e.with_name(name.to_bytes()));
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.log(ctx, Op::Rmdir, parent, |e| e.with_name(name.to_bytes()));
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        // Recorded before the move, while the old path still names what moved.
        self.log(ctx, Op::Rename, olddir, |e| {
            e.with_name(oldname.to_bytes()).with_aux(newdir).with_name2(newname.to_bytes())
        });
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.log(ctx, Op::Link, inode, |e| e.with_aux(newparent).with_name(newname.to_bytes()));
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.log(ctx, Op::Open, inode, |e| e);
        self.counted(Fop::Open, inode, || self.inner.open(ctx, inode, flags, fuse_flags), |_| 0)
    }

    #[allow(clippy::type_complexity)]
    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let r = self.inner.create(ctx, parent, name, args);
        self.made(ctx, Op::Create, parent, name, &r, |(e, ..)| e.inode);
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let r = self.counted(
            Fop::Read,
            inode,
            || self.inner.read(ctx, inode, handle, w, size, offset, lock_owner, flags),
            |n| *n,
        );
        let n = *r.as_ref().unwrap_or(&0) as u64;
        self.log(ctx, Op::Read, inode, |e| e.with_range(offset, n));
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let res = self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        );
        let n = *res.as_ref().unwrap_or(&0) as u64;
        self.log(ctx, Op::Write, inode, |e| e.with_range(offset, n));
        res
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.log(ctx, Op::Fsync, inode, |e| e);
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.log(ctx, Op::Fallocate, inode, |e| e.with_range(offset, length));
        self.inner.fallocate(ctx, inode, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.counted(
            Fop::Release,
            inode,
            || self.inner.release(ctx, inode, flags, handle, flush, flock_release, lock_owner),
            |_| 0,
        )
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.log(ctx, Op::Statfs, inode, |e| e);
        self.counted(Fop::Statfs, inode, || self.inner.statfs(ctx, inode), |_| 0)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.log(ctx, Op::Setxattr, inode, |e| e.with_name(name.to_bytes()));
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.log(ctx, Op::Getxattr, inode, |e| e.with_name(name.to_bytes()));
        self.counted(Fop::Getxattr, inode, || self.inner.getxattr(ctx, inode, name, size), |_| 0)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.log(ctx, Op::Listxattr, inode, |e| e);
        self.counted(Fop::Listxattr, inode, || self.inner.listxattr(ctx, inode, size), |_| 0)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.log(ctx, Op::Removexattr, inode, |e| e.with_name(name.to_bytes()));
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.log(ctx, Op::Opendir, inode, |e| e);
        let op = self.metrics.begin(Fop::Opendir, inode);
        let r = self.inner.opendir(ctx, inode, flags);
        // ENOSYS switches OPENDIR off (zero-message opendir): not an error users should see.
        let zero_message = r.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOSYS));
        op.done(r.is_ok() || zero_message, 0);
        r
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.log(ctx, Op::Readdir, inode, |e| e);
        self.counted(
            Fop::Readdir,
            inode,
            || self.inner.readdir(ctx, inode, handle, size, offset, add_entry),
            |_| 0,
        )
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.log(ctx, Op::Readdir, inode, |e| e);
        self.counted(
            Fop::Readdirplus,
            inode,
            || self.inner.readdirplus(ctx, inode, handle, size, offset, add_entry),
            |_| 0,
        )
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.log(ctx, Op::Fsync, inode, |e| e);
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.log(ctx, Op::Access, inode, |e| e);
        self.counted(Fop::Access, inode, || self.inner.access(ctx, inode, mask), |_| 0)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
