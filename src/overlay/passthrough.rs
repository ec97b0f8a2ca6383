//! FUSE passthrough for the overlay's plain files (kernel 6.9+, protocol 7.40): an OPEN or
//! CREATE reply names a registered backing file, and the kernel reads, writes and maps that
//! file itself; no READ or WRITE of it reaches the daemon. Upper files and the files of
//! plain-directory lowers qualify; RAFS files are decoded from chunks and stay cached.
//!
//! The kernel's rule (fs/fuse/iomode.c): while an inode is open, its open files are either all
//! cached (page cache, READ and WRITE requests) or all passthrough to *one* registered backing
//! file; an open that breaks it fails with EIO. So a node has a [`Mode`] while it has open
//! handles, decided by its first open, and keeps one backing id until its last handle is
//! released. A node whose open files read its *lower* file cannot take an open that changes
//! its data (that needs the upper copy as backing): such an open, and a truncate, get ETXTBSY
//! until those files close. It is the one place where passthrough changes what users see
//! (docs/overlay.md); kernel overlayfs lets the old files read on in the lower file.
//!
//! Writes through a shared mapping of a passthrough file dirty the backing file's pages and
//! change its times, which the kernel's cached attributes of our inode never learn (xfstests
//! generic/080, 215). So while a node has a writable passthrough open, its attributes are not
//! cached: the open drops what the kernel holds (FUSE_NOTIFY_INVAL_INODE) and its GETATTR and
//! LOOKUP replies carry a zero timeout ([`Passthrough::has_writers`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// FOPEN_PASSTHROUGH, the open reply flag fuse-backend-rs 0.14 has no name for.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// How a node's open files do I/O, while it has any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Through the daemon and the page cache.
    Cached { opens: u32 },
    /// Passthrough to backing `id`, the node's lower file when `lower`; `writers` of the opens
    /// may write.
    Backed { id: u32, lower: bool, opens: u32, writers: u32 },
}

/// What the kernel negotiated and the nodes' modes.
pub struct Passthrough {
    /// The FUSE device (a duplicate), where backing files are registered.
    dev: OwnedFd,
    nodes: Mutex<HashMap<u64, Mode>>,
    /// Registering failed in a way every later attempt would too: open cached from now on.
    off: AtomicBool,
}

/// One open of a node, as [`Passthrough::open`] needs it.
pub struct OpenRequest<'a> {
    /// The node (FUSE inode).
    pub node: u64,
    /// The plain file the open reads, None for a file read through its layer (RAFS).
    pub file: Option<&'a File>,
    /// The file is the node's lower file.
    pub lower: bool,
    /// The open may change the node's data (writable, or truncating).
    pub write: bool,
    /// The open's access mode allows writing (and so a writable shared mapping).
    pub writable: bool,
    /// The node was just created (CREATE): the kernel holds no attributes of it to drop.
    pub created: bool,
}

impl Passthrough {
    /// Passthrough on the FUSE device `dev` (after INIT enabled it).
    pub fn new(dev: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(Self {
            dev: dev.try_clone_to_owned()?,
            nodes: Mutex::new(HashMap::new()),
            off: AtomicBool::new(false),
        })
    }

    /// Refuse (ETXTBSY) a change of `node`'s data while its open files read its lower file.
    pub fn check_change(&self, node: u64) -> io::Result<()> {
        match self.nodes.lock().get(&node) {
            Some(Mode::Backed { lower: true, .. }) => {
                Err(io::Error::from_raw_os_error(libc::ETXTBSY))
            }
            _ => Ok(()),
        }
    }

    /// Count an open of `r.node`; the backing id to answer it with, None to open it cached.
    pub fn open(&self, r: &OpenRequest<'_>) -> io::Result<Option<u32>> {
        let mut nodes = self.nodes.lock();
        match nodes.get_mut(&r.node) {
            Some(Mode::Cached { opens }) => {
                *opens += 1;
                Ok(None)
            }
            Some(Mode::Backed { lower: true, .. }) if r.write => {
                Err(io::Error::from_raw_os_error(libc::ETXTBSY))
            }
            // A read-only open of a node copied up (metadata only: its data cannot change
            // while lower-backed files are open) reads the same bytes through the lower file.
            Some(Mode::Backed { id, opens, writers, .. }) => {
                *opens += 1;
                let (id, first_writer) = (*id, r.writable && *writers == 0);
                *writers += u32::from(r.writable);
                drop(nodes);
                if first_writer && !r.created {
                    self.drop_cached_attrs(r.node);
                }
                Ok(Some(id))
            }
            None => {
                let id = r.file.and_then(|f| self.register(f));
                let writers = u32::from(r.writable);
                let mode = match id {
                    Some(id) => Mode::Backed { id, lower: r.lower, opens: 1, writers },
                    None => Mode::Cached { opens: 1 },
                };
                nodes.insert(r.node, mode);
                drop(nodes);
                if id.is_some() && r.writable && !r.created {
                    self.drop_cached_attrs(r.node);
                }
                Ok(id)
            }
        }
    }

    /// Whether `node` has a writable passthrough open: its attributes must not be cached.
    pub fn has_writers(&self, node: u64) -> bool {
        matches!(self.nodes.lock().get(&node), Some(Mode::Backed { writers: 1.., .. }))
    }

    /// A handle of `node` (`writable` by its access mode) was released; its last one ends the
    /// node's mode (and backing id).
    pub fn release(&self, node: u64, writable: bool) {
        let mut nodes = self.nodes.lock();
        let Some(mode) = nodes.get_mut(&node) else { return };
        if let (Mode::Backed { writers, .. }, true) = (&mut *mode, writable) {
            *writers = writers.saturating_sub(1);
        }
        let (Mode::Cached { opens } | Mode::Backed { opens, .. }) = mode;
        *opens = opens.saturating_sub(1);
        if *opens == 0 {
            let mode = nodes.remove(&node);
            drop(nodes);
            if let Some(Mode::Backed { id, .. }) = mode {
                self.unregister(id);
            }
        }
    }

    /// `node` is forgotten: the kernel has no open file of it left; drop what is still counted
    /// (an open whose reply the kernel never took).
    pub fn forget(&self, node: u64) {
        let mode = self.nodes.lock().remove(&node);
        if let Some(Mode::Backed { id, .. }) = mode {
            self.unregister(id);
        }
    }

    /// Nodes with open handles.
    #[cfg(test)]
    fn open_nodes(&self) -> usize {
        self.nodes.lock().len()
    }

    fn register(&self, file: &File) -> Option<u32> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        match crate::sys::fuse_backing_open(self.dev.as_fd(), file.as_fd()) {
            Ok(id) => Some(id),
            // A backing file on a stacked filesystem (overlayfs, another FUSE passthrough)
            // exceeds the stack depth: this file opens cached, others may not.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => None,
            Err(e) => {
                if !self.off.swap(true, Ordering::Relaxed) {
                    crate::log_warn!("FUSE passthrough: registering a backing file: {e}; files open cached from now on");
                }
                None
            }
        }
    }

    /// FUSE_NOTIFY_INVAL_INODE for `node`'s attributes only (offset -1: no page is touched).
    fn drop_cached_attrs(&self, node: u64) {
        use fuse_backend_rs::abi::fuse_abi::{NotifyInvalInodeOut, NotifyOpcode, OutHeader};
        const LEN: usize = size_of::<OutHeader>() + size_of::<NotifyInvalInodeOut>();
        let mut msg = [0u8; LEN];
        msg[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
        // The notification code goes in the header's error field.
        msg[4..8].copy_from_slice(&(NotifyOpcode::InvalInode as i32).to_ne_bytes());
        // unique 0 (a notification); then fuse_notify_inval_inode_out: ino, off, len.
        msg[16..24].copy_from_slice(&node.to_ne_bytes());
        msg[24..32].copy_from_slice(&(-1i64).to_ne_bytes());
        if let Err(e) = nix::unistd::write(&self.dev, &msg) {
            // ENOENT: the kernel has no such inode cached, so nothing to drop.
            if e != nix::errno::Errno::ENOENT {
                crate::log_warn!("FUSE passthrough: invalidating attributes of node {node}: {e}");
            }
        }
    }

    fn unregister(&self, id: u32) {
        if let Err(e) = crate::sys::fuse_backing_close(self.dev.as_fd(), id) {
            crate::log_warn!("FUSE passthrough: closing backing id {id}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(node: u64, file: Option<&File>, lower: bool, write: bool) -> OpenRequest<'_> {
        OpenRequest { node, file, lower, write, writable: write, created: false }
    }

    #[test]
    fn a_device_that_cannot_register_leaves_nodes_cached_and_counts_balance() {
        // A plain file is no FUSE device: the ioctl fails (ENOTTY) and everything opens cached.
        let dev = tempfile::tempfile().unwrap();
        let p = Passthrough::new(dev.as_fd()).unwrap();
        let f = tempfile::tempfile().unwrap();
        assert_eq!(p.open(&req(5, Some(&f), true, false)).unwrap(), None);
        assert!(p.off.load(Ordering::Relaxed), "registration is not tried again");
        assert_eq!(p.open(&req(5, Some(&f), false, true)).unwrap(), None, "cached takes writes");
        assert!(p.check_change(5).is_ok());
        assert_eq!(p.open_nodes(), 1);
        p.release(5, false);
        assert_eq!(p.open_nodes(), 1, "one handle is still open");
        p.release(5, false);
        assert_eq!(p.open_nodes(), 0);
        p.release(5, false); // a release too many changes nothing
        assert_eq!(p.open_nodes(), 0);
    }

    #[test]
    fn a_lower_backed_node_takes_readers_and_refuses_data_changes_until_released() {
        let dev = tempfile::tempfile().unwrap();
        let p = Passthrough::new(dev.as_fd()).unwrap();
        p.nodes.lock().insert(9, Mode::Backed { id: 3, lower: true, opens: 1, writers: 0 });
        let busy = Some(libc::ETXTBSY);
        assert_eq!(p.check_change(9).unwrap_err().raw_os_error(), busy);
        assert_eq!(p.open(&req(9, None, false, true)).unwrap_err().raw_os_error(), busy);
        // A reader after a metadata-only copy-up (its file is the upper one) shares the backing.
        assert_eq!(p.open(&req(9, None, false, false)).unwrap(), Some(3));
        p.release(9, false);
        assert_eq!(p.check_change(9).unwrap_err().raw_os_error(), busy, "one reader is left");
        p.release(9, false);
        assert!(p.check_change(9).is_ok(), "no readers: the mode is gone");
        assert!(!p.has_writers(9));
        // An upper-backed node takes writers and readers alike, and its attributes are not
        // cached while a writer is open; forget drops what is left.
        p.nodes.lock().insert(10, Mode::Backed { id: 4, lower: false, opens: 1, writers: 0 });
        assert!(p.check_change(10).is_ok());
        assert!(!p.has_writers(10));
        assert_eq!(p.open(&req(10, None, false, true)).unwrap(), Some(4));
        assert!(p.has_writers(10));
        assert_eq!(p.open(&req(10, None, false, false)).unwrap(), Some(4));
        p.release(10, true);
        assert!(!p.has_writers(10), "the writer went, a reader stays");
        assert_eq!(p.open(&req(10, None, false, true)).unwrap(), Some(4));
        p.forget(10);
        assert_eq!(p.open_nodes(), 0);
    }
}
