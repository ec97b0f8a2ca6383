//! Paths of an image's inodes, for the access log (an inode the log never saw named by a
//! lookup, e.g. one the kernel learned from readdirplus) and the image's prefetch table.
//!
//! Built on the first question (the access log's writer asks first thing when its thread
//! starts, so usually before a container's first requests) by reading the image's
//! directories only: each entry is kept
//! as (parent, name) in one table with the names back to back in one buffer, and a path is
//! put together when asked for. Files' inodes are never decoded, so the table costs a pass
//! over the directory blocks, not a walk of the whole image.

use std::collections::hash_map::Entry;
use std::sync::{Arc, OnceLock};

use crate::accesslog::hash::IntMap;
use crate::accesslog::PathResolver;
use crate::rafs::layout::file_type;
use crate::rafs::reader::Image;

/// The paths of one image's inodes (a hard-linked file answers with one of its names).
pub struct ImagePaths {
    image: Arc<Image>,
    table: OnceLock<Table>,
}

#[derive(Default)]
struct Table {
    names: Vec<u8>,
    /// nid → (parent nid, start of its name in `names`, name length); the root is its own
    /// parent, with an empty name.
    up: IntMap<u64, (u64, usize, u32)>,
}

impl ImagePaths {
    /// Paths of `image`.
    pub fn new(image: Arc<Image>) -> Self {
        Self { image, table: OnceLock::new() }
    }

    fn table(&self) -> &Table {
        self.table.get_or_init(|| build(&self.image))
    }
}

/// Read every directory reachable from the root, depth first. A damaged directory, or an
/// entry that names a directory already seen, ends that branch: the table holds what could
/// be read.
fn build(image: &Image) -> Table {
    let mut t = Table::default();
    let Ok(root) = image.root() else { return t };
    t.up.insert(root.nid, (root.nid, 0, 0));
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = image.dir_entries(&dir) else { continue };
        for e in entries {
            let bad = e.name.is_empty() || e.name.contains(&b'/');
            if bad || e.name == b"." || e.name == b".." {
                continue;
            }
            let Ok(len) = u32::try_from(e.name.len()) else { continue };
            let Entry::Vacant(v) = t.up.entry(e.nid) else { continue };
            v.insert((dir.nid, t.names.len(), len));
            t.names.extend_from_slice(&e.name);
            if e.file_type == file_type::DIR {
                if let Ok(child) = image.inode(e.nid) {
                    if child.is_dir() {
                        dirs.push(child);
                    }
                }
            }
        }
    }
    t
}

impl PathResolver for ImagePaths {
    fn path(&self, _layer: u32, nid: u64) -> Option<Vec<u8>> {
        let t = self.table();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = nid;
        loop {
            let &(parent, at, len) = t.up.get(&cur)?;
            if parent == cur {
                break;
            }
            parts.push(t.names.get(at..at + len as usize)?);
            // Parents were entered before their children, so the chain ends at the root;
            // the bound only guards the loop.
            if parts.len() > t.up.len() {
                return None;
            }
            cur = parent;
        }
        if parts.is_empty() {
            return Some(b"/".to_vec());
        }
        let mut p = Vec::with_capacity(parts.iter().map(|n| n.len() + 1).sum());
        for name in parts.iter().rev() {
            p.push(b'/');
            p.extend_from_slice(name);
        }
        Some(p)
    }

    fn prepare(&self) {
        self.table();
    }

    /// Lock-free once the table is built, which `prepare` does before the writer goes idle.
    fn shares_locks(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rafs::reader::ReadError;
    use std::collections::HashMap;

    #[test]
    fn every_inode_gets_one_of_its_names() {
        let boot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nydus-image/v6-default/bootstrap");
        let image = Arc::new(Image::open(&boot).unwrap());
        // Every name of every inode, from the image's own walk.
        let mut names: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        image
            .walk::<ReadError>(|path, inode| {
                names.entry(inode.nid).or_default().push(path.to_vec());
                Ok(true)
            })
            .unwrap();
        assert!(names.len() > 10, "fixture walk found {} inodes", names.len());
        let paths = ImagePaths::new(image.clone());
        for (nid, all) in &names {
            let got = paths.path(0, *nid).unwrap_or_else(|| panic!("nid {nid}: no path"));
            assert!(all.contains(&got), "nid {nid}: {:?} not one of {all:?}", got);
        }
        let root = image.root().unwrap().nid;
        assert_eq!(paths.path(0, root).as_deref(), Some(&b"/"[..]));
        assert_eq!(paths.path(0, u64::MAX), None);
    }
}
