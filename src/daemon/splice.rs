//! READ replies spliced from the file: the overlay's plain upper and lower files go file →
//! pipe → FUSE device by page reference, never through our memory. A pread into a buffer and
//! a write of it copy every byte twice (page cache → buffer → the FUSE request's pages); the
//! splice path copies once, in the kernel (fuse-overlayfs does the same through libfuse).
//!
//! A worker owns one [`Splicer`]: a data pipe that takes the file's pages and a message pipe
//! where the 16-byte reply header goes first and the data is moved behind it, since the header
//! must lead and its length is known only after the data is in. The message goes to the device
//! in one splice, which the kernel takes whole or not at all. Four syscalls per READ instead of
//! two, which for a small READ cost about what the copy does (4 KiB random reads measured no
//! better spliced, see docs/daemon.md), so only READs of [`SPLICE_MIN`] bytes or more splice.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use fuse_backend_rs::api::filesystem::Context;
use fuse_backend_rs::api::Vfs;
use nix::fcntl::{splice, FcntlArg, SpliceFFlags};

use crate::overlay::OverlayFs;

/// A filesystem that can name the file behind a READ. The defaults never splice.
pub trait SplicedRead {
    /// Whether [`SplicedRead::read_spliced`] ever answers (else a worker sets up no pipes).
    fn splices(&self) -> bool {
        false
    }

    /// Answer READ (`inode`, handle `fh`, `size` bytes at `offset`) by calling `reply` with the
    /// file whose bytes it returns; `reply` sends them and says how many. None: this handle
    /// has no such file; answer the READ the usual way.
    fn read_spliced(
        &self,
        _ctx: &Context,
        _inode: u64,
        _fh: u64,
        _offset: u64,
        _size: u32,
        _reply: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> Option<io::Result<usize>> {
        None
    }
}

impl<T: SplicedRead + ?Sized> SplicedRead for std::sync::Arc<T> {
    fn splices(&self) -> bool {
        (**self).splices()
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
        (**self).read_spliced(ctx, inode, fh, offset, size, reply)
    }
}

/// RAFS data is decoded from chunks (maybe compressed): there is no file to splice.
impl SplicedRead for Vfs {}

impl SplicedRead for OverlayFs {
    fn splices(&self) -> bool {
        true
    }

    fn read_spliced(
        &self,
        _ctx: &Context,
        _inode: u64,
        fh: u64,
        _offset: u64,
        _size: u32,
        reply: &mut dyn FnMut(BorrowedFd<'_>) -> io::Result<usize>,
    ) -> Option<io::Result<usize>> {
        let open = self.plain_file(fh)?;
        Some(reply(open.file()?.as_fd()))
    }
}

/// The fields of a READ request the splice path needs.
#[derive(Debug, PartialEq, Eq)]
struct ReadRequest {
    /// Request id the reply names.
    unique: u64,
    /// Node id.
    inode: u64,
    /// Caller's uid, gid, pid.
    ctx_ids: (u32, u32, u32),
    /// Open handle.
    fh: u64,
    /// File offset.
    offset: u64,
    /// Bytes asked for.
    size: u32,
}

impl ReadRequest {
    /// `req` if it is a READ (whole header and arguments present).
    fn parse(req: &[u8]) -> Option<Self> {
        use fuse_backend_rs::abi::fuse_abi::Opcode;
        let u32_at = |at: usize| Some(u32::from_ne_bytes(req.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_ne_bytes(req.get(at..at + 8)?.try_into().ok()?));
        // fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, padding (40 bytes);
        // fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding.
        if u32_at(4)? != Opcode::Read as u32 || req.len() < 80 {
            return None;
        }
        Some(ReadRequest {
            unique: u64_at(8)?,
            inode: u64_at(16)?,
            ctx_ids: (u32_at(24)?, u32_at(28)?, u32_at(32)?),
            fh: u64_at(40)?,
            offset: u64_at(48)?,
            size: u32_at(56)?,
        })
    }

    /// The caller's identity, as the FUSE server gives it to a filesystem.
    fn context(&self) -> Context {
        let (uid, gid, pid) = self.ctx_ids;
        Context { uid, gid, pid: pid as libc::pid_t }
    }
}

/// The smallest READ answered by splicing (read-ahead sends 128 KiB; random 4 KiB reads copy).
pub const SPLICE_MIN: usize = 32 * 1024;

const HEADER: usize = 16;
const PAGE: usize = 4096;

/// A worker's pipes for spliced READ replies.
pub struct Splicer {
    data: (OwnedFd, OwnedFd),
    msg: (OwnedFd, OwnedFd),
    max: usize,
}

impl Splicer {
    /// Pipes for replies of up to `max` bytes of data (fewer if the pipes cannot grow that
    /// far; see [`Splicer::max`]).
    pub fn new(max: usize) -> io::Result<Self> {
        let (data, d) = Self::pipe(max)?;
        let (msg, m) = Self::pipe(max)?;
        // A pipe holds one page (or part) per slot: data that does not start on a page
        // boundary takes one slot more, the header one more in the message pipe.
        let max = d.min(m).saturating_sub(2 * PAGE).min(max);
        Ok(Self { data, msg, max })
    }

    fn pipe(max: usize) -> io::Result<((OwnedFd, OwnedFd), usize)> {
        use std::os::fd::AsRawFd;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Above /proc/sys/fs/pipe-max-size (1 MiB by default) growing needs CAP_SYS_RESOURCE,
        // which root in a container may lack: halve until it is granted.
        let mut want = (max + 2 * PAGE).next_power_of_two();
        while want > 16 * PAGE {
            if let Ok(got) = nix::fcntl::fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(want as i32)) {
                return Ok(((r, w), got as usize));
            }
            want /= 2;
        }
        let got = nix::fcntl::fcntl(w.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)?;
        Ok(((r, w), got as usize))
    }

    /// The largest READ (data bytes) these pipes take.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Answer request `req` read from `dev` by splicing, if it is a READ of [`SPLICE_MIN`] to
    /// [`Splicer::max`] bytes of a file `fs` can name. False: it is not answered; serve it the
    /// usual way.
    pub fn answer<F: SplicedRead + ?Sized>(
        &mut self,
        fs: &F,
        dev: BorrowedFd<'_>,
        req: &[u8],
    ) -> bool {
        let Some(rd) = ReadRequest::parse(req) else { return false };
        if !(SPLICE_MIN..=self.max).contains(&(rd.size as usize)) {
            return false;
        }
        let answered =
            fs.read_spliced(&rd.context(), rd.inode, rd.fh, rd.offset, rd.size, &mut |file| {
                self.reply(dev, rd.unique, file, rd.offset, rd.size as usize)
            });
        match answered {
            None => false,
            Some(Ok(_)) => true,
            Some(Err(e)) => {
                // Answered all the same (an error reply, or the request was interrupted).
                super::log::log(super::log::Level::Debug, format_args!("spliced read: {e}"));
                true
            }
        }
    }

    /// Reply to request `unique` on `dev` with up to `size` bytes of `file` from `offset`
    /// (fewer at its end). Returns the data bytes sent. On an error before the reply went out
    /// the reply is that error instead; either way the request is answered.
    pub fn reply(
        &mut self,
        dev: BorrowedFd<'_>,
        unique: u64,
        file: BorrowedFd<'_>,
        offset: u64,
        size: usize,
    ) -> io::Result<usize> {
        let n = match self.fill(unique, file, offset, size.min(self.max)) {
            Ok(n) => n,
            Err(e) => {
                self.reset()?;
                let code = e.raw_os_error().unwrap_or(libc::EIO);
                nix::unistd::write(dev, &header(HEADER, -code, unique))?;
                return Err(e);
            }
        };
        match splice(&self.msg.0, None, dev, None, HEADER + n, SpliceFFlags::SPLICE_F_MOVE) {
            Ok(k) if k == HEADER + n => Ok(n),
            Ok(k) => {
                self.reset()?;
                Err(io::Error::other(format!("FUSE device took {k} of {} bytes", HEADER + n)))
            }
            Err(e) => {
                // ENOENT: the request was interrupted and is gone; nothing more to answer.
                self.reset()?;
                Err(e.into())
            }
        }
    }

    /// Put header and data of the reply in the message pipe; returns the data bytes.
    fn fill(
        &self,
        unique: u64,
        file: BorrowedFd<'_>,
        offset: u64,
        size: usize,
    ) -> io::Result<usize> {
        let mut off =
            i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut n = 0;
        while n < size {
            let k = splice(
                file,
                Some(&mut off),
                &self.data.1,
                None,
                size - n,
                SpliceFFlags::SPLICE_F_MOVE,
            )?;
            if k == 0 {
                break;
            }
            n += k;
        }
        let h = header(HEADER + n, 0, unique);
        if nix::unistd::write(&self.msg.1, &h)? != HEADER {
            return Err(io::Error::other("short write of a reply header to a pipe"));
        }
        let mut moved = 0;
        while moved < n {
            let k = splice(
                &self.data.0,
                None,
                &self.msg.1,
                None,
                n - moved,
                SpliceFFlags::SPLICE_F_MOVE,
            )?;
            if k == 0 {
                return Err(io::Error::other("data pipe ran dry"));
            }
            moved += k;
        }
        Ok(n)
    }

    /// Fresh pipes: whatever an error left in the old ones must not lead the next reply.
    fn reset(&mut self) -> io::Result<()> {
        *self = Self::new(self.max)?;
        Ok(())
    }
}

/// fuse_out_header: len, error, unique.
fn header(len: usize, error: i32, unique: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&(len as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..].copy_from_slice(&unique.to_ne_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A pipe standing in for the FUSE device, read back as bytes.
    fn device() -> (std::fs::File, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w), FcntlArg::F_SETPIPE_SZ(1 << 20))
            .unwrap();
        (std::fs::File::from(r), w)
    }

    fn take(dev: &mut std::fs::File, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        dev.read_exact(&mut b).unwrap();
        b
    }

    #[test]
    fn a_reply_is_the_header_then_the_file_bytes_and_stops_at_the_end() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let (mut rd, wr) = device();
        let mut s = Splicer::new(256 * 1024).unwrap();
        assert_eq!(s.max(), 256 * 1024);
        // Unaligned offset, whole request.
        let n = s.reply(wr.as_fd(), 42, f.as_fd(), 1001, 131072).unwrap();
        assert_eq!(n, 131072);
        assert_eq!(take(&mut rd, HEADER), header(HEADER + n, 0, 42));
        assert_eq!(take(&mut rd, n), &data[1001..1001 + n]);
        // Across the end: what there is; past it: the header alone.
        let n = s.reply(wr.as_fd(), 43, f.as_fd(), 290_000, 65536).unwrap();
        assert_eq!(n, 10_000);
        assert_eq!(take(&mut rd, HEADER), header(HEADER + n, 0, 43));
        assert_eq!(take(&mut rd, n), &data[290_000..]);
        assert_eq!(s.reply(wr.as_fd(), 44, f.as_fd(), 400_000, 4096).unwrap(), 0);
        assert_eq!(take(&mut rd, HEADER), header(HEADER, 0, 44));
    }

    #[test]
    fn a_file_that_cannot_be_read_gets_an_error_reply() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let (mut rd, wr) = device();
        let mut s = Splicer::new(65536).unwrap();
        let e = s.reply(wr.as_fd(), 9, d.as_fd(), 0, 4096).unwrap_err();
        let code = e.raw_os_error().expect("an OS error");
        assert_eq!(take(&mut rd, HEADER), header(HEADER, -code, 9));
        // The splicer still works after it.
        let f = tempfile::tempfile().unwrap();
        nix::unistd::write(&f, b"abc").unwrap();
        assert_eq!(s.reply(wr.as_fd(), 10, f.as_fd(), 0, 4096).unwrap(), 3);
        assert_eq!(take(&mut rd, HEADER + 3)[HEADER..], *b"abc");
    }

    #[test]
    fn only_complete_read_requests_parse() {
        use fuse_backend_rs::abi::fuse_abi::Opcode;
        let mut r = vec![0u8; 80];
        r[4..8].copy_from_slice(&(Opcode::Read as u32).to_ne_bytes());
        r[8..16].copy_from_slice(&77u64.to_ne_bytes());
        r[16..24].copy_from_slice(&5u64.to_ne_bytes());
        r[32..36].copy_from_slice(&1234u32.to_ne_bytes());
        r[40..48].copy_from_slice(&3u64.to_ne_bytes());
        r[48..56].copy_from_slice(&8192u64.to_ne_bytes());
        r[56..60].copy_from_slice(&4096u32.to_ne_bytes());
        let p = ReadRequest::parse(&r).unwrap();
        assert_eq!((p.unique, p.inode, p.fh, p.offset, p.size), (77, 5, 3, 8192, 4096));
        assert_eq!(p.context().pid, 1234);
        assert!(ReadRequest::parse(&r[..79]).is_none());
        r[4..8].copy_from_slice(&(Opcode::Write as u32).to_ne_bytes());
        assert!(ReadRequest::parse(&r).is_none());
    }
}
