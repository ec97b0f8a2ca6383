//! FUSE passthrough negotiation. fuse-backend-rs 0.14 drops the PASSTHROUGH bit the kernel
//! offers in INIT and never fills `max_stack_depth`, so for a filesystem that wants
//! passthrough ([`Passthrough`]) the worker has the server write its INIT reply into a pipe,
//! adds what the kernel needs (INIT_EXT, PASSTHROUGH in flags2, max_stack_depth 1: backing
//! files on a plain, unstacked filesystem) and sends it on. The protocol minor stays the
//! crate's 7.33: the kernel reads these fields whatever minor the reply names, and the requests
//! it sends keep the 7.33 layouts the crate parses. Per-open backing files are the
//! filesystem's business (the overlay's is in [`crate::overlay::passthrough`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::Vfs;
use fuse_backend_rs::transport::{FuseBuf, FuseDevWriter, Reader};

use crate::overlay::OverlayFs;

/// A filesystem that can hand open files to the kernel. The defaults never do.
pub trait Passthrough {
    /// Whether to ask the kernel for passthrough at INIT.
    fn wants_passthrough(&self) -> bool {
        false
    }

    /// The kernel agreed at INIT: register backing files on the FUSE device `dev`. An error
    /// leaves passthrough off (the INIT reply then does not ask for it).
    fn start_passthrough(&self, _dev: BorrowedFd<'_>) -> io::Result<()> {
        Ok(())
    }
}

impl<T: Passthrough + ?Sized> Passthrough for Arc<T> {
    fn wants_passthrough(&self) -> bool {
        (**self).wants_passthrough()
    }

    fn start_passthrough(&self, dev: BorrowedFd<'_>) -> io::Result<()> {
        (**self).start_passthrough(dev)
    }
}

/// RAFS images are read from chunks: no file to hand over.
impl Passthrough for Vfs {}

impl Passthrough for OverlayFs {
    fn wants_passthrough(&self) -> bool {
        OverlayFs::wants_passthrough(self)
    }

    fn start_passthrough(&self, dev: BorrowedFd<'_>) -> io::Result<()> {
        OverlayFs::start_passthrough(self, dev)
    }
}

/// FUSE_INIT's opcode.
const INIT: u32 = 26;
/// fuse_init_in/out `flags`: flags2 is valid.
const INIT_EXT: u32 = 1 << 30;
/// FUSE_WRITEBACK_CACHE: the kernel refuses passthrough beside it.
const WRITEBACK_CACHE: u32 = 1 << 16;
/// FUSE_PASSTHROUGH (bit 37) as a bit of flags2.
const PASSTHROUGH2: u32 = 1 << 5;
/// The fuse_out_header before each reply.
const OUT_HEADER: usize = 16;
/// fuse_init_out up to and including max_stack_depth.
const INIT_OUT_MIN: usize = 40;

fn word(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|w| u32::from_ne_bytes(w.try_into().expect("4 bytes")))
}

/// Whether `req` is an INIT in which the kernel offers passthrough.
pub(super) fn offers_passthrough(req: &[u8]) -> bool {
    // fuse_in_header (40 bytes), then fuse_init_in: major, minor, max_readahead, flags, flags2.
    word(req, 4) == Some(INIT)
        && word(req, 52).is_some_and(|f| f & INIT_EXT != 0)
        && word(req, 56).is_some_and(|f2| f2 & PASSTHROUGH2 != 0)
}

/// Turn the successful INIT reply `reply` (out header + fuse_init_out) into one that enables
/// passthrough; an error says why it cannot.
fn enable_in_reply(reply: &mut [u8]) -> Result<(), &'static str> {
    let len = word(reply, 0).ok_or("no reply header")? as usize;
    if len != reply.len() || len < OUT_HEADER + INIT_OUT_MIN {
        return Err("a reply shorter than fuse_init_out");
    }
    if word(reply, 4) != Some(0) {
        return Err("an error reply");
    }
    let at = |field: usize| OUT_HEADER + field;
    let flags = word(reply, at(12)).expect("length checked");
    if flags & WRITEBACK_CACHE != 0 {
        return Err("writeback cache is on");
    }
    let flags2 = word(reply, at(32)).expect("length checked");
    reply[at(12)..at(12) + 4].copy_from_slice(&(flags | INIT_EXT).to_ne_bytes());
    reply[at(32)..at(32) + 4].copy_from_slice(&(flags2 | PASSTHROUGH2).to_ne_bytes());
    // max_stack_depth: our backing files sit on unstacked filesystems (a stacked one's files
    // fail to register with ELOOP and open cached), and the mount may itself be stacked on.
    reply[at(36)..at(36) + 4].copy_from_slice(&1u32.to_ne_bytes());
    Ok(())
}

/// Answer the INIT in `req`, which offers passthrough, with passthrough enabled when `fs`
/// starts it. False when this could not answer at all (answer it the usual way).
pub(super) fn answer_init<F: FileSystem + Passthrough + Send + Sync>(
    server: &Server<Arc<F>>,
    fs: &F,
    dev: BorrowedFd<'_>,
    req: &mut [u8],
    buf: &mut [u8],
) -> bool {
    let Ok((rx, tx)) = nix::unistd::pipe() else { return false };
    let (Ok(reader), Ok(writer)) = (
        Reader::<()>::from_fuse_buffer(FuseBuf::new(req)),
        FuseDevWriter::<()>::new(tx.as_raw_fd(), buf),
    ) else {
        return false;
    };
    if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
        crate::log_warn!("FUSE INIT: {e}");
    }
    drop(tx);
    let mut reply = vec![0u8; 4096];
    let n = match nix::unistd::read(rx.as_raw_fd(), &mut reply) {
        Ok(n) if n > 0 => n,
        // The server wrote nothing: it failed the request; the kernel waits for a reply.
        _ => return false,
    };
    reply.truncate(n);
    let mut patched = reply.clone();
    let why = match enable_in_reply(&mut patched) {
        Ok(()) => fs.start_passthrough(dev).map_err(|e| e.to_string()),
        Err(why) => Err(why.to_string()),
    };
    let out = match why {
        Ok(()) => {
            crate::log_info!("FUSE passthrough on: plain files are read and written by the kernel");
            &patched
        }
        Err(why) => {
            crate::log_warn!("FUSE passthrough off: {why}");
            &reply
        }
    };
    if let Err(e) = nix::unistd::write(dev, out) {
        crate::log_warn!("FUSE INIT reply: {e}");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_request(flags: u32, flags2: u32) -> Vec<u8> {
        let mut r = vec![0u8; 104];
        r[0..4].copy_from_slice(&104u32.to_ne_bytes());
        r[4..8].copy_from_slice(&INIT.to_ne_bytes());
        r[40..44].copy_from_slice(&7u32.to_ne_bytes());
        r[44..48].copy_from_slice(&45u32.to_ne_bytes());
        r[52..56].copy_from_slice(&flags.to_ne_bytes());
        r[56..60].copy_from_slice(&flags2.to_ne_bytes());
        r
    }

    fn init_reply(flags: u32, error: i32) -> Vec<u8> {
        let len = OUT_HEADER + 64;
        let mut r = vec![0u8; len];
        r[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        r[4..8].copy_from_slice(&error.to_ne_bytes());
        r[16..20].copy_from_slice(&7u32.to_ne_bytes());
        r[20..24].copy_from_slice(&33u32.to_ne_bytes());
        r[28..32].copy_from_slice(&flags.to_ne_bytes());
        r[48..52].copy_from_slice(&(1u32 << 1).to_ne_bytes());
        r
    }

    #[test]
    fn only_an_init_offering_passthrough_counts() {
        assert!(offers_passthrough(&init_request(INIT_EXT | 1, PASSTHROUGH2 | 1)));
        assert!(!offers_passthrough(&init_request(INIT_EXT, 1)), "not offered");
        assert!(!offers_passthrough(&init_request(0, PASSTHROUGH2)), "flags2 not valid");
        let mut lookup = init_request(INIT_EXT, PASSTHROUGH2);
        lookup[4..8].copy_from_slice(&1u32.to_ne_bytes());
        assert!(!offers_passthrough(&lookup));
        assert!(!offers_passthrough(&[0u8; 20]), "too short");
    }

    #[test]
    fn the_reply_gains_init_ext_passthrough_and_a_stack_depth() {
        let mut r = init_reply(1, 0);
        enable_in_reply(&mut r).unwrap();
        assert_eq!(word(&r, 28), Some(1 | INIT_EXT));
        assert_eq!(word(&r, 48), Some((1 << 1) | PASSTHROUGH2), "flags2 keeps its bits");
        assert_eq!(word(&r, 52), Some(1), "max_stack_depth");
        assert_eq!(word(&r, 20), Some(33), "the minor stays");
    }

    #[test]
    fn replies_passthrough_cannot_go_with_are_left_alone() {
        for (mut r, why) in [
            (init_reply(WRITEBACK_CACHE, 0), "writeback cache is on"),
            (init_reply(0, -libc::EPROTO), "an error reply"),
            (init_reply(0, 0)[..40].to_vec(), "a reply shorter than fuse_init_out"),
        ] {
            let before = r.clone();
            assert_eq!(enable_in_reply(&mut r), Err(why));
            assert_eq!(r, before);
        }
    }
}
