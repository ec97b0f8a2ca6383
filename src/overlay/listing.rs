//! Directory listings between READDIR requests, without a directory handle.
//!
//! The overlay answers OPENDIR with ENOSYS when the kernel offers zero-message opendir, so the
//! kernel sends neither OPENDIR nor RELEASEDIR (two of every three requests of a warm tree walk,
//! since READDIR itself is served from the kernel's directory cache). A pass over a directory
//! still needs a stable listing: the merged listing is taken at the READDIR at offset 0 (opendir
//! or rewinddir) and kept as a *snapshot*; every offset handed out names its snapshot and an
//! index in it (`snapshot << 32 | index + 1`), so the next READDIR of that pass continues in the
//! same listing even when another pass over the same directory started in between. A new pass
//! sees every change made before it started.
//!
//! Snapshots are dropped when their pass reads past the end, and the oldest first beyond
//! [`MAX_SNAPSHOTS`] or [`MAX_ITEMS`] entries in all. A pass whose snapshot was dropped (many
//! passes left unfinished at once, or a `seekdir` to an old position) continues by index in a
//! fresh listing: entries may then repeat or be missed if the directory changed meanwhile,
//! which is what a directory handle's listing would have avoided.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

/// One entry of a merged directory listing.
#[derive(Clone, Debug)]
pub struct DirItem {
    /// Name.
    pub name: Vec<u8>,
    /// Inode number shown.
    pub ino: u64,
    /// d_type.
    pub dtype: u32,
}

/// Snapshots kept at most (passes in progress at once, across all directories).
pub const MAX_SNAPSHOTS: usize = 256;
/// Entries kept at most in all snapshots together (~20 MiB).
pub const MAX_ITEMS: usize = 1 << 18;
/// Snapshot ids live in bits 32..63 of an offset, so that offsets stay positive as `off_t`.
const ID_MASK: u32 = 0x7fff_ffff;

/// A listing and where a READDIR continues in it.
pub struct Pass {
    /// The listing.
    pub items: Arc<Vec<DirItem>>,
    /// Index of the first entry to return.
    pub start: usize,
    id: u32,
}

impl Pass {
    /// The offset the kernel passes back to continue after entry `index`.
    pub fn offset_after(&self, index: usize) -> u64 {
        (u64::from(self.id) << 32) | (index as u64 + 1)
    }
}

struct Snapshot {
    dir: u64,
    items: Arc<Vec<DirItem>>,
}

/// The snapshots of passes in progress.
#[derive(Default)]
pub struct Listings {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By id; ids grow, so the first is the oldest (until the id space wraps, after 2^31
    /// passes, when "oldest" is off for one round of evictions).
    snaps: BTreeMap<u32, Snapshot>,
    items: usize,
    next: u32,
}

impl Listings {
    /// The pass a READDIR of directory `dir` at `offset` continues; `list` takes a fresh
    /// listing (at offset 0, or when the pass's snapshot is gone).
    pub fn pass(
        &self,
        dir: u64,
        offset: u64,
        list: impl FnOnce() -> io::Result<Vec<DirItem>>,
    ) -> io::Result<Pass> {
        let (id, index) = ((offset >> 32) as u32, (offset & 0xffff_ffff) as usize);
        let beyond = || io::Error::from_raw_os_error(libc::EINVAL);
        if offset != 0 {
            let g = self.inner.lock();
            if let Some(s) = g.snaps.get(&id).filter(|s| s.dir == dir) {
                if index > s.items.len() {
                    return Err(beyond());
                }
                return Ok(Pass { items: s.items.clone(), start: index, id });
            }
        }
        // Listing happens outside the lock: it reads directories.
        let items = Arc::new(list()?);
        // A position no pass handed out (a `seekdir` to a made-up offset) is an error, not an
        // empty rest: readdir(3) would take that for the end of the directory.
        if index > items.len() {
            return Err(beyond());
        }
        let mut g = self.inner.lock();
        let id = g.add(dir, items.clone());
        Ok(Pass { items, start: index, id })
    }

    /// The pass read everything: its snapshot is no longer needed.
    pub fn finish(&self, pass: &Pass) {
        let mut g = self.inner.lock();
        if let Some(s) = g.snaps.remove(&pass.id) {
            g.items -= s.items.len();
        }
    }
}

impl Inner {
    fn add(&mut self, dir: u64, items: Arc<Vec<DirItem>>) -> u32 {
        self.next = (self.next % ID_MASK) + 1;
        let id = self.next;
        self.items += items.len();
        if let Some(old) = self.snaps.insert(id, Snapshot { dir, items }) {
            self.items -= old.items.len();
        }
        while self.snaps.len() > MAX_SNAPSHOTS || (self.items > MAX_ITEMS && self.snaps.len() > 1) {
            let oldest = match self.snaps.keys().find(|&&k| k != id) {
                Some(&k) => k,
                None => break,
            };
            let s = self.snaps.remove(&oldest).expect("key just found");
            self.items -= s.items.len();
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(names: &[&str]) -> Vec<DirItem> {
        names.iter().map(|n| DirItem { name: n.as_bytes().to_vec(), ino: 1, dtype: 0 }).collect()
    }

    fn names(p: &Pass) -> Vec<String> {
        p.items[p.start..].iter().map(|i| String::from_utf8_lossy(&i.name).into_owned()).collect()
    }

    #[test]
    fn a_pass_continues_in_its_own_snapshot_while_another_pass_starts() {
        let l = Listings::default();
        let a = l.pass(7, 0, || Ok(items(&["x", "y", "z"]))).unwrap();
        let after_x = a.offset_after(0);
        // Another pass of the same directory sees a change; the first does not.
        let b = l.pass(7, 0, || Ok(items(&["y", "z"]))).unwrap();
        assert_eq!(names(&b), ["y", "z"]);
        let a2 = l.pass(7, after_x, || panic!("snapshot must be reused")).unwrap();
        assert_eq!(names(&a2), ["y", "z"]);
        let b2 = l.pass(7, b.offset_after(0), || panic!("snapshot must be reused")).unwrap();
        assert_eq!(names(&b2), ["z"]);
        assert!(after_x >> 63 == 0 && after_x > 0, "offsets are positive off_t");
    }

    #[test]
    fn finishing_drops_the_snapshot_and_a_lost_one_continues_by_index() {
        let l = Listings::default();
        let a = l.pass(7, 0, || Ok(items(&["x", "y", "z"]))).unwrap();
        let off = a.offset_after(1);
        l.finish(&a);
        assert!(l.inner.lock().snaps.is_empty());
        let again = l.pass(7, off, || Ok(items(&["x", "y", "z", "w"]))).unwrap();
        assert_eq!(names(&again), ["z", "w"]);
        // An offset of another directory's snapshot is not taken for this one.
        let other = l.pass(8, off, || Ok(items(&["p", "q", "r"]))).unwrap();
        assert_eq!(names(&other), ["r"]);
    }

    #[test]
    fn an_offset_past_the_end_is_invalid_and_the_end_itself_is_empty() {
        let l = Listings::default();
        let a = l.pass(7, 0, || Ok(items(&["x", "y"]))).unwrap();
        let end = l.pass(7, a.offset_after(1), || panic!("kept")).unwrap();
        assert!(names(&end).is_empty());
        let past = l.pass(7, a.offset_after(2), || panic!("kept")).err().unwrap();
        assert_eq!(past.raw_os_error(), Some(libc::EINVAL));
        let made_up = l.pass(7, (12345 << 32) | 99, || Ok(items(&["x"]))).err().unwrap();
        assert_eq!(made_up.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn snapshots_are_bounded_by_count_and_by_entries() {
        let l = Listings::default();
        for d in 0..(MAX_SNAPSHOTS as u64 + 10) {
            l.pass(d, 0, || Ok(items(&["a"]))).unwrap();
        }
        assert_eq!(l.inner.lock().snaps.len(), MAX_SNAPSHOTS);
        let big = vec![DirItem { name: b"n".to_vec(), ino: 1, dtype: 0 }; MAX_ITEMS / 2 + 1];
        l.pass(1000, 0, || Ok(big.clone())).unwrap();
        let last = l.pass(1001, 0, || Ok(big.clone())).unwrap();
        let g = l.inner.lock();
        assert!(g.items <= MAX_ITEMS, "{} entries kept", g.items);
        assert!(g.snaps.contains_key(&last.id), "the newest snapshot stays");
    }
}
