//! The one module allowed to use `unsafe`: thin wrappers over system calls and mappings.
#![allow(unsafe_code)]

use std::fs::File;

/// A read-only, private memory mapping of a whole file.
pub struct ReadOnlyMap(Option<memmap2::Mmap>);

impl ReadOnlyMap {
    /// Map `file` read-only. An empty file maps to an empty slice (mmap rejects length 0).
    pub fn new(file: &File) -> std::io::Result<Self> {
        if file.metadata()?.len() == 0 {
            return Ok(Self(None));
        }
        // SAFETY: the mapping is read-only and private. Image files are immutable by contract
        // (builders write them to a temporary name and rename them into place, never rewrite
        // them); if another process truncates one anyway, access faults with SIGBUS rather than
        // yielding undefined behaviour inside safe Rust data structures, and every offset we
        // read through the slice is bounds-checked against the length seen at map time.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(Self(Some(map)))
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// fsync a directory so a rename into it survives a crash.
pub fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An all-zero `stat64` (its padding fields are private, so it cannot be built field by field).
pub fn zeroed_stat64() -> libc::stat64 {
    // SAFETY: stat64 is a plain C struct of integers; all-zero is a valid value of each field.
    unsafe { std::mem::zeroed() }
}

/// An all-zero `statvfs64`.
pub fn zeroed_statvfs64() -> libc::statvfs64 {
    // SAFETY: statvfs64 is a plain C struct of integers; all-zero is a valid value of each field.
    unsafe { std::mem::zeroed() }
}

/// An opaque kernel file handle (`struct file_handle`): names an inode of one filesystem
/// without holding it open, and survives renames (`name_to_handle_at(2)`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileHandle {
    handle_type: i32,
    bytes: Box<[u8]>,
}

/// The largest handle the kernel hands out (MAX_HANDLE_SZ).
const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

fn cstring(name: &[u8]) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// The handle of `name` in directory `dirfd` (an empty name means `dirfd` itself); symlinks are
/// not followed.
pub fn name_to_handle_at(dirfd: i32, name: &[u8]) -> std::io::Result<FileHandle> {
    let c = cstring(name)?;
    let mut raw = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: `raw` is a properly sized, writable file_handle with handle_bytes set to its
    // capacity; `c` is NUL-terminated; mount_id is a valid out pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dirfd,
            c.as_ptr(),
            &mut raw as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle { handle_type: raw.handle_type, bytes: raw.f_handle[..n].into() })
}

/// Open the inode `handle` names on the filesystem of `mount_fd` (needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle_at(
    mount_fd: i32,
    handle: &FileHandle,
    flags: i32,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut raw = RawHandle {
        handle_bytes: handle.bytes.len() as u32,
        handle_type: handle.handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
    // SAFETY: `raw` is a valid file_handle whose handle_bytes matches the copied bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            &mut raw as *mut RawHandle,
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Run `op` with a `&mut File` view of a shared `file` (fuse-backend-rs' zero-copy I/O wants
/// `&mut File`; positioned reads and writes do not need exclusive access).
pub fn with_file_mut<R>(file: &File, op: impl FnOnce(&mut File) -> R) -> R {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: the File is wrapped in ManuallyDrop, so the fd is never closed through it; it
    // does not outlive `file`, which keeps the descriptor open for the duration of `op`.
    let mut view = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(file.as_raw_fd()) });
    op(&mut view)
}

/// `utimensat(dirfd, name, times, AT_SYMLINK_NOFOLLOW)` with raw timespecs, so UTIME_NOW and
/// UTIME_OMIT can be passed (an empty name with AT_EMPTY_PATH means `dirfd` itself).
pub fn utimensat(dirfd: i32, name: &[u8], times: [libc::timespec; 2]) -> std::io::Result<()> {
    let c = cstring(name)?;
    let flags = if name.is_empty() { libc::AT_EMPTY_PATH } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: `c` is NUL-terminated and `times` is an array of two timespecs.
    let r = unsafe { libc::utimensat(dirfd, c.as_ptr(), times.as_ptr(), flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)` (an empty name means `dirfd` itself, which may
/// be an O_PATH descriptor).
pub fn fstatat(dirfd: i32, name: &[u8]) -> std::io::Result<libc::stat64> {
    let c = cstring(name)?;
    let flags = libc::AT_SYMLINK_NOFOLLOW | if name.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    let mut st = zeroed_stat64();
    // SAFETY: `c` is NUL-terminated and `st` is a writable stat64.
    let r = unsafe { libc::fstatat64(dirfd, c.as_ptr(), &mut st, flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// `fstatvfs64` of an open descriptor.
pub fn fstatvfs(fd: i32) -> std::io::Result<libc::statvfs64> {
    let mut st = zeroed_statvfs64();
    // SAFETY: `st` is a writable statvfs64.
    let r = unsafe { libc::fstatvfs64(fd, &mut st) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Install a handler for `sig` that does nothing and does not restart system calls, so sending
/// `sig` to a thread blocked in a slow call (a read of /dev/fuse) makes that call fail with
/// EINTR. Idempotent.
pub fn interrupt_on(sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (it does nothing)
    // and SA_RESTART is left out on purpose.
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's id (what `/proc/self/task/` lists and the scheduling calls take).
pub fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail (called as a raw system call: the
    // libc wrapper needs glibc 2.30).
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Put thread `tid` of this process under `SCHED_IDLE` (`idle`) or back under `SCHED_OTHER`.
/// An idle thread gets a CPU when no other thread wants one, and beyond that only a tiny
/// share (weight 3 against 1024 for nice 0); any other thread waking preempts it. Going idle
/// needs no privilege; coming back needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows the
/// thread's nice value. The nice value is kept either way.
pub fn set_sched_idle(tid: i32, idle: bool) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    // SAFETY: `param` is a valid sched_param (priority 0, as both policies require) that
    // outlives the call. A raw system call: musl's wrapper always fails with ENOSYS.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            tid as libc::c_long,
            policy as libc::c_long,
            &param as *const libc::sched_param,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Give thread `tid` the best-effort I/O class at its default level (4). A thread that never
/// set one follows its CPU policy, and under `SCHED_IDLE` that is the idle I/O class (BFQ
/// would then serve its fsyncs only when the disk has nothing else to do).
pub fn set_io_best_effort(tid: i32) -> std::io::Result<()> {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: ioprio_set has no memory arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid as libc::c_long,
            (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 4,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Thread `tid`'s nice value.
pub fn thread_nice(tid: i32) -> std::io::Result<i32> {
    // SAFETY: errno is thread-local; getpriority has no memory arguments. It can return -1
    // as a value, so errno is cleared first and checked after.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if n == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n)
    }
}

/// Set thread `tid`'s nice value (Linux keeps one per thread).
pub fn set_thread_nice(tid: i32, nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority has no memory arguments.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Set the process umask (the overlay creates files with exactly the modes the kernel passed).
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

/// `setxattr(path, name, value, flags)` with the caller's XATTR_CREATE / XATTR_REPLACE flags;
/// `follow` follows a final symlink (`/proc/self/fd/N` paths need it), otherwise `lsetxattr`.
pub fn lsetxattr(
    path: &[u8],
    name: &[u8],
    value: &[u8],
    flags: i32,
    follow: bool,
) -> std::io::Result<()> {
    let (p, n) = (cstring(path)?, cstring(name)?);
    let (v, len) = (value.as_ptr().cast(), value.len());
    // SAFETY: both strings are NUL-terminated; value is a valid slice of value.len() bytes.
    let r = unsafe {
        if follow {
            libc::setxattr(p.as_ptr(), n.as_ptr(), v, len, flags)
        } else {
            libc::lsetxattr(p.as_ptr(), n.as_ptr(), v, len, flags)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Take ownership of a descriptor a syscall wrapper returned as a raw fd.
pub fn owned_fd(fd: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass a descriptor that was just returned to them and that nothing else
    // owns or closes.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// `len` bytes of `file` at `offset`, read into a new buffer without zero-filling it first
/// (a zeroed `vec!` cost 2 % of a small-file read's CPU, all of it overwritten at once).
/// `UnexpectedEof` if the file ends before `len` bytes.
pub fn read_exact_at_vec(file: &File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut done = 0usize;
    while done < len {
        let pos = i64::try_from(offset + done as u64)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: the destination is the vector's spare capacity from `done` to `len`, which
        // it owns and nothing else references; pread writes at most `len - done` bytes there.
        let n = unsafe {
            libc::pread64(file.as_raw_fd(), buf.as_mut_ptr().add(done).cast(), len - done, pos)
        };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => done += n as usize,
        }
    }
    // SAFETY: pread initialised exactly the first `len` bytes (`done == len`).
    unsafe { buf.set_len(len) };
    Ok(buf)
}

/// FUSE passthrough (protocol 7.40): `ioctl(FUSE_DEV_IOC_BACKING_OPEN)` on the FUSE device
/// `dev` registers `file` as a backing file and returns its id for an OPEN or CREATE reply.
/// Needs CAP_SYS_ADMIN; EPERM when the connection negotiated WRITEBACK_CACHE or no passthrough.
pub fn fuse_backing_open(
    dev: std::os::fd::BorrowedFd<'_>,
    file: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    /// struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; }
    #[repr(C)]
    struct BackingMap {
        fd: i32,
        flags: u32,
        padding: u64,
    }
    /// _IOW(229, 1, struct fuse_backing_map)
    const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
    let map = BackingMap { fd: file.as_raw_fd(), flags: 0, padding: 0 };
    // SAFETY: the kernel reads 16 bytes from `map`, which lives across the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, &map) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// `ioctl(FUSE_DEV_IOC_BACKING_CLOSE)`: forget backing id `id` (files opened with it keep it).
pub fn fuse_backing_close(dev: std::os::fd::BorrowedFd<'_>, id: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    /// _IOW(229, 2, uint32_t)
    const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;
    // SAFETY: the kernel reads a u32 from `id`, which lives across the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_CLOSE, &id) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Open options with bits fuse-backend-rs 0.14 has no names for (FOPEN_PASSTHROUGH, 1 << 7);
/// its bitflags 1 type keeps unnamed bits only through `from_bits_unchecked`.
pub fn open_options(bits: u32) -> fuse_backend_rs::api::filesystem::OpenOptions {
    // SAFETY: OpenOptions is a plain u32 sent to the kernel as is; any bit pattern is valid.
    unsafe { fuse_backend_rs::api::filesystem::OpenOptions::from_bits_unchecked(bits) }
}

/// `getxattrat(2)`'s number (Linux 6.13 and later; the same in every architecture's table).
const SYS_GETXATTRAT: libc::c_long = 464;

/// The value of extended attribute `attr` of `name` in directory `dirfd`, without following a
/// final symlink and without a path through /proc: `getxattrat(2)`. Ok(None) when the
/// attribute is absent; ENOSYS before Linux 6.13.
pub fn getxattrat(dirfd: i32, name: &[u8], attr: &str) -> std::io::Result<Option<Vec<u8>>> {
    /// `struct xattr_args` (include/uapi/linux/xattr.h).
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }
    let name = std::ffi::CString::new(name)?;
    let attr = std::ffi::CString::new(attr)?;
    let mut buf = vec![0u8; 256];
    loop {
        let args = XattrArgs { value: buf.as_mut_ptr() as u64, size: buf.len() as u32, flags: 0 };
        // SAFETY: the strings are NUL-terminated and live across the call; `args` points at
        // `buf`, which the kernel writes at most `args.size` bytes of.
        let n = unsafe {
            libc::syscall(
                SYS_GETXATTRAT,
                dirfd,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            // XATTR_SIZE_MAX is 64 KiB.
            Some(libc::ERANGE) if buf.len() < 1 << 16 => buf.resize(1 << 16, 0),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_exact_at_vec_reads_the_range_or_says_eof() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::io::Write::write_all(&mut f, &data).unwrap();
        assert_eq!(super::read_exact_at_vec(&f, 4096, 1234).unwrap(), &data[1234..1234 + 4096]);
        assert_eq!(super::read_exact_at_vec(&f, 0, 99_999).unwrap(), b"");
        let e = super::read_exact_at_vec(&f, 100, 9_950).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn getxattrat_reads_an_attribute_by_directory_and_name() {
        let d = tempfile::tempdir_in("/var/tmp").unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"").unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        match super::getxattrat(fd, b"f", "user.strata.t") {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                println!("SKIPPED getxattrat: the kernel is older than 6.13");
                return;
            }
            r => assert_eq!(r.unwrap(), None, "absent"),
        }
        let big = vec![b'x'; 1000]; // more than the first buffer
        for value in [&b"v"[..], &big] {
            xattr::set(&f, "user.strata.t", value).unwrap();
            assert_eq!(
                super::getxattrat(fd, b"f", "user.strata.t").unwrap().as_deref(),
                Some(value)
            );
        }
        let e = super::getxattrat(fd, b"missing", "user.strata.t").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
