//! Copy-up: give a lower object an upper copy before its first modification.
//!
//! The copy is built under a fresh name in the staging directory — data (holes kept, through
//! `copy_file_range` from plain-directory layers), xattrs, owner, mode, times, and the inode
//! number users saw — fsynced when it holds data (unless the mount is volatile), then renamed
//! into place with RENAME_NOREPLACE. A crash leaves the old state visible plus a staging
//! leftover that the next mount removes. Only the node's own copy-up lock is held while data
//! is copied, so requests for other files proceed; parents are copied up first (metadata
//! only).
//!
//! A copy without data (a directory, a symlink, an empty file, or one an O_TRUNC open is about
//! to empty) is not fsynced, as in kernel overlayfs: the upper filesystem's journal commits the
//! staging, the metadata and the rename in order, so a crash shows the old state or the whole
//! copy, and the fsync would only wait for a journal commit (~150 µs) per file.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::inode::NodeView;
use super::layer::Layer;
use super::upper::{self, child_path};
use super::{errno, OverlayFs};

/// Bytes per read when copying from a layer without a plain file.
const COPY_STEP: u64 = 1 << 20;

/// What copy-up has done since the mount (for the daemon's metrics).
#[derive(Debug, Default)]
pub struct CopyUpStats {
    /// Objects copied up (directories, files, symlinks, special files).
    pub objects: AtomicU64,
    /// Bytes of file data copied (the files' sizes; holes included).
    pub bytes: AtomicU64,
    /// Copies fsynced before their rename into place.
    pub syncs: AtomicU64,
}

impl CopyUpStats {
    /// (objects, bytes, syncs) now.
    pub fn get(&self) -> (u64, u64, u64) {
        (self.objects.load(Relaxed), self.bytes.load(Relaxed), self.syncs.load(Relaxed))
    }
}

impl OverlayFs {
    /// What copy-up has done since the mount.
    pub fn copy_up_stats(&self) -> Arc<CopyUpStats> {
        self.copy_up_stats.clone()
    }

    /// Make sure node `id` has an upper object and return its view. `data` = false skips the
    /// file's contents (the caller truncates it to 0 anyway).
    pub(crate) fn copy_up(&self, id: u64, data: bool) -> io::Result<NodeView> {
        let v = self.view(id)?;
        if v.upper.is_some() {
            return Ok(v);
        }
        let parent = self.copy_up(v.parent, true)?;
        let lock = self.copyups.lock().entry(id).or_default().clone();
        let result = {
            // Waiting for another request's copy-up of this node is as slow as doing it.
            let _g = lock.try_lock().unwrap_or_else(|| {
                crate::slow::ahead();
                lock.lock()
            });
            let v = self.view(id)?;
            if v.upper.is_some() {
                Ok(v)
            } else {
                self.copy_up_locked(&v, &parent, data)
            }
        };
        let mut m = self.copyups.lock();
        if Arc::strong_count(&lock) <= 2 {
            m.remove(&id);
        }
        result
    }

    fn copy_up_locked(&self, v: &NodeView, parent: &NodeView, data: bool) -> io::Result<NodeView> {
        let &(l, lid) = v.lowers.first().ok_or_else(|| errno(libc::ESTALE))?;
        let layer = &self.layers[l];
        let st = layer.getattr(lid)?;
        let bytes = if data && st.st_mode & libc::S_IFMT == libc::S_IFREG {
            st.st_size.max(0) as u64
        } else {
            0
        };
        // A copy that waits for the disk (an fsync), or copies more than one request's worth,
        // may take long: let the FUSE server read on meanwhile. Smaller copies are as brief as
        // a READ (a chunk fetch from a remote backend says so by itself).
        if bytes > 0 && (self.sync_copyup || bytes > COPY_STEP) {
            crate::slow::ahead();
        }
        let pfd = self.dir_fd(parent)?;
        let work = self.upper.work_fd();
        let tmp = self.upper.tmp_name();
        // Copy-up is not a change users made: the parent keeps its times (as in the kernel).
        let pst = crate::sys::fstatat(pfd.as_raw_fd(), b"")?;
        // A copy of one name of a lower hard link is a new file: it cannot keep the inode
        // number the other names still show (kernel overlayfs without index does the same).
        let keep_ino = st.st_nlink <= 1 || v.is_dir();
        let built =
            self.build_copy(layer.as_ref(), lid, &st, keep_ino.then_some(v.ino), &tmp, bytes > 0);
        let placed = built.and_then(|absent| {
            upper::rename(
                work,
                &tmp,
                pfd.as_raw_fd(),
                &v.name,
                nix::fcntl::RenameFlags::RENAME_NOREPLACE,
            )
            .map(|()| absent)
        });
        let absent = match placed {
            Ok(n) => n,
            Err(e) => {
                let _ = upper::remove_tree(work, &tmp);
                return Err(e);
            }
        };
        let ts = |s: i64, ns: i64| libc::timespec { tv_sec: s, tv_nsec: ns };
        crate::sys::utimensat(
            pfd.as_raw_fd(),
            b"",
            [ts(pst.st_atime, pst.st_atime_nsec), ts(pst.st_mtime, pst.st_mtime_nsec)],
        )?;
        let h = crate::sys::name_to_handle_at(pfd.as_raw_fd(), &v.name)?;
        let ust = crate::sys::fstatat(pfd.as_raw_fd(), &v.name)?;
        self.table.lock().copied_up(v.id, h, ust.st_ino, (!keep_ino).then_some(ust.st_ino), absent);
        self.copy_up_stats.objects.fetch_add(1, Relaxed);
        self.copy_up_stats.bytes.fetch_add(bytes, Relaxed);
        // build_copy fsynced exactly these.
        self.copy_up_stats.syncs.fetch_add(u64::from(bytes > 0 && self.sync_copyup), Relaxed);
        self.view(v.id)
    }

    /// Build the copy of lower object `lid` as `tmp` in the staging directory, with the file's
    /// data when `data` (then fsynced, unless the mount is volatile); says whether it has no
    /// file capability and no default ACL (none among the xattrs copied).
    fn build_copy(
        &self,
        layer: &dyn Layer,
        lid: u64,
        st: &libc::stat64,
        ino: Option<u64>,
        tmp: &[u8],
        data: bool,
    ) -> io::Result<(bool, bool)> {
        let work = self.upper.work_fd();
        let name = std::ffi::OsStr::from_bytes(tmp);
        let kind = st.st_mode & libc::S_IFMT;
        let mut file = None;
        match kind {
            libc::S_IFDIR => nix::sys::stat::mkdirat(
                Some(work),
                name,
                nix::sys::stat::Mode::from_bits_truncate(0o700),
            )?,
            libc::S_IFREG => {
                let fd = nix::fcntl::openat(
                    Some(work),
                    name,
                    nix::fcntl::OFlag::O_CREAT
                        | nix::fcntl::OFlag::O_EXCL
                        | nix::fcntl::OFlag::O_WRONLY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                )?;
                let f = File::from(owned(fd));
                if data {
                    copy_data(layer, lid, &f, st)?;
                }
                file = Some(f);
            }
            libc::S_IFLNK => {
                let target = layer.readlink(lid)?;
                nix::unistd::symlinkat(std::ffi::OsStr::from_bytes(&target), Some(work), name)?
            }
            _ => nix::sys::stat::mknodat(
                Some(work),
                name,
                nix::sys::stat::SFlag::from_bits_truncate(kind),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                st.st_rdev,
            )?,
        }
        // Metadata through the open file when there is one (no path walk through /proc per
        // call), else by name in the staging directory. The owner goes first: a chown drops
        // security.capability (even by root), so it must come before the xattrs are copied.
        let path = child_path(work, tmp);
        let (at, name): (i32, &[u8]) = match &file {
            Some(f) => (f.as_raw_fd(), b""),
            None => (work, tmp),
        };
        upper::chown(at, name, st.st_uid, st.st_gid)?;
        let set_xattr = |k: &[u8], val: &[u8]| match &file {
            Some(f) => xattr::FileExt::set_xattr(f, std::ffi::OsStr::from_bytes(k), val),
            None => crate::sys::lsetxattr(&path, k, val, 0, false),
        };
        let (mut no_caps, mut no_default_acl) = (true, true);
        for (k, val) in layer.xattrs(lid)? {
            if upper::is_private(&k) {
                continue;
            }
            no_caps &= k != upper::CAPS.as_bytes();
            no_default_acl &= k != upper::DEFAULT_ACL.as_bytes();
            set_xattr(&k, &val)?;
        }
        if let Some(ino) = ino {
            set_xattr(upper::ORIGIN_INO.as_bytes(), ino.to_string().as_bytes())?;
        }
        match &file {
            Some(f) => nix::sys::stat::fchmod(
                f.as_raw_fd(),
                nix::sys::stat::Mode::from_bits_truncate(st.st_mode & 0o7777),
            )?,
            None if kind != libc::S_IFLNK => upper::chmod(&path, st.st_mode)?,
            None => {}
        }
        let ts = |s: i64, ns: i64| libc::timespec { tv_sec: s, tv_nsec: ns };
        crate::sys::utimensat(
            at,
            name,
            [ts(st.st_atime, st.st_atime_nsec), ts(st.st_mtime, st.st_mtime_nsec)],
        )?;
        if let Some(f) = file.filter(|_| data && self.sync_copyup) {
            f.sync_all()?;
        }
        Ok((no_caps, no_default_acl))
    }
}

/// Wrap a descriptor nix returned (it is ours alone).
fn owned(fd: i32) -> OwnedFd {
    crate::sys::owned_fd(fd)
}

/// Copy lower file `lid` (attributes `st`) into the empty `dst`, keeping holes.
fn copy_data(layer: &dyn Layer, lid: u64, dst: &File, st: &libc::stat64) -> io::Result<()> {
    let size = st.st_size as u64;
    if let Some(src) = layer.open_file(lid)? {
        if st.st_blocks as u64 * 512 >= size {
            // Fully allocated: no holes to look for (SEEK_DATA/SEEK_HOLE) or keep (the length
            // set first); one copy_file_range does it. A hole missed here would only be
            // copied as zeros.
            let end = copy_range(&src, dst, 0, size)?;
            if end < size {
                dst.set_len(size)?;
            }
            return Ok(());
        }
        dst.set_len(size)?;
        return copy_file(&src, dst, size);
    }
    dst.set_len(size)?;
    let mut off = 0;
    while off < size {
        let buf = layer.read(lid, off, COPY_STEP.min(size - off))?;
        if buf.is_empty() {
            break;
        }
        if buf.iter().any(|b| *b != 0) {
            dst.write_all_at(&buf, off)?;
        }
        off += buf.len() as u64;
    }
    Ok(())
}

/// Copy the data extents of `src` (SEEK_DATA/SEEK_HOLE) with `copy_file_range`, falling back
/// to reads and writes where the kernel cannot copy between the two filesystems.
fn copy_file(src: &File, dst: &File, size: u64) -> io::Result<()> {
    use nix::unistd::{lseek64, Whence};
    let fd = src.as_raw_fd();
    let mut off: i64 = 0;
    while (off as u64) < size {
        let start = match lseek64(fd, off, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => off, // no SEEK_DATA: copy everything
        };
        let end = lseek64(fd, start, Whence::SeekHole).unwrap_or(size as i64).min(size as i64);
        if copy_range(src, dst, start as u64, end as u64)? < end as u64 {
            break; // the source ended early; the length was set
        }
        off = end;
    }
    Ok(())
}

/// Copy `start..end` of `src` to the same offsets of `dst`; returns where it stopped (`end`, or
/// earlier at the source's end).
fn copy_range(src: &File, dst: &File, mut start: u64, end: u64) -> io::Result<u64> {
    while start < end {
        let (mut a, mut b) = (start as i64, start as i64);
        let want = ((end - start) as usize).min(1 << 30);
        match nix::fcntl::copy_file_range(src, Some(&mut a), dst, Some(&mut b), want) {
            Ok(0) => return Ok(start),
            Ok(n) => start += n as u64,
            Err(
                nix::errno::Errno::EXDEV
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) => return copy_slow(src, dst, start, end),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(start)
}

fn copy_slow(src: &File, dst: &File, mut start: u64, end: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_STEP as usize];
    while start < end {
        let want = ((end - start) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], start)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], start)?;
        start += n as u64;
    }
    Ok(start)
}
