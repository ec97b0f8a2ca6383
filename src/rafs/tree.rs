//! The in-memory image: a directory tree of inodes with chunk lists, plus the blob table.
//!
//! Builders (directory, tar), `merge` and layered builds produce a [`Tree`]; the
//! [`super::writer`] turns it into a bootstrap. Inodes live in an arena; a directory maps names
//! to inode ids, so a hardlink is simply a second name for the same id. Removing a name (a
//! whiteout) leaves the inode unreachable, and the writer writes only reachable inodes.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::chunk::ChunkRef;
use super::layout::{BlobEntry, Compressor, Digester};

/// Arena index of an inode.
pub type InodeId = usize;

/// File type and type-specific content of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Directory: children by name (byte order, as EROFS sorts them).
    Dir(BTreeMap<Vec<u8>, InodeId>),
    /// Regular file: one chunk per `chunk_size` piece of the file.
    File(Vec<ChunkRef>),
    /// Symbolic link and its target.
    Symlink(Vec<u8>),
    /// Character or block device, fifo or socket (type in `mode`).
    Special,
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Mode including the file type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Device number of device nodes (Linux `makedev` encoding), else 0.
    pub rdev: u64,
    /// Size in bytes (files: data size; symlinks: target length; dirs: computed by the writer).
    pub size: u64,
    /// Extended attributes, sorted by name.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Type-specific content.
    pub kind: NodeKind,
}

impl Node {
    /// A directory with the given attributes and no children.
    pub fn dir(mode: u32) -> Self {
        Self::with_kind(libc::S_IFDIR | (mode & 0o7777), NodeKind::Dir(BTreeMap::new()))
    }
    /// A node of any kind with zeroed attributes.
    pub fn with_kind(mode: u32, kind: NodeKind) -> Self {
        Self {
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            rdev: 0,
            size: 0,
            xattrs: BTreeMap::new(),
            kind,
        }
    }
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir(_))
    }
    /// Children of a directory.
    pub fn children(&self) -> Option<&BTreeMap<Vec<u8>, InodeId>> {
        match &self.kind {
            NodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }
    /// Mutable children of a directory.
    pub fn children_mut(&mut self) -> Option<&mut BTreeMap<Vec<u8>, InodeId>> {
        match &mut self.kind {
            NodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }
    /// File type bits of the mode.
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// Image-wide settings recorded in the superblocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageConfig {
    /// Filesystem chunk size (power of two, 4 KiB ..= 16 MiB).
    pub chunk_size: u32,
    /// Compressor of new chunks (the superblock flag; each blob records its own).
    pub compressor: Compressor,
    /// Digester of chunks.
    pub digester: Digester,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            chunk_size: super::layout::DEFAULT_CHUNK_SIZE,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
        }
    }
}

/// A whole image in memory.
#[derive(Clone, Debug)]
pub struct Tree {
    /// Inode arena; `root` is the root directory.
    pub nodes: Vec<Node>,
    /// Root inode id.
    pub root: InodeId,
    /// Blob table; `ChunkRef::blob_index` indexes it.
    pub blobs: Vec<BlobEntry>,
    /// Image settings.
    pub config: ImageConfig,
    /// Inodes to prefetch, in hint order.
    pub prefetch: Vec<InodeId>,
    /// Directories that no source entry described (made up as parents of other entries, or a
    /// tar layer's root without a `./` entry). Applied as a layer they merge into the lower
    /// directory without replacing its attributes, as containerd leaves it. Not persisted.
    pub implicit: HashSet<InodeId>,
}

/// Errors of tree edits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// A path component is not a directory.
    #[error("{path}: a parent component is not a directory")]
    NotADirectory {
        /// The path being resolved.
        path: String,
    },
    /// A path is absolute garbage (`..`, empty component after normalisation).
    #[error("{path}: invalid path ({why})")]
    InvalidPath {
        /// The path.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A hardlink names a target that does not exist or is a directory.
    #[error("{path}: hardlink target {target} does not exist or is a directory")]
    BadLinkTarget {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
}

/// Split a path (relative to the image root, leading `/` or `./` allowed) into components,
/// rejecting `..` so no entry can escape the root.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>, TreeError> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(TreeError::InvalidPath {
                    path: String::from_utf8_lossy(path).into_owned(),
                    why: "contains ..",
                })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Tree {
    /// An empty image whose root directory has mode 0755.
    pub fn new(config: ImageConfig) -> Self {
        Self {
            nodes: vec![Node::dir(0o755)],
            root: 0,
            blobs: Vec::new(),
            config,
            prefetch: Vec::new(),
            implicit: HashSet::new(),
        }
    }

    /// Add an inode to the arena (not yet linked).
    pub fn add(&mut self, node: Node) -> InodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Inode at `path`, if any.
    pub fn lookup(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = self.root;
        for c in components(path).ok()? {
            cur = *self.nodes[cur].children()?.get(c)?;
        }
        Some(cur)
    }

    /// The directory that holds `path`'s last component, creating missing parents as
    /// directories with mode 0755 (tar layers may omit parent entries). Returns the parent id
    /// and the last component; `None` component for the root itself.
    pub fn parent_of<'p>(
        &mut self,
        path: &'p [u8],
    ) -> Result<(InodeId, Option<&'p [u8]>), TreeError> {
        let comps = components(path)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Ok((self.root, None));
        };
        let mut cur = self.root;
        for c in dirs {
            let next = match self.nodes[cur].children().and_then(|ch| ch.get(*c)) {
                Some(&id) => id,
                None => {
                    if !self.nodes[cur].is_dir() {
                        return Err(TreeError::NotADirectory {
                            path: String::from_utf8_lossy(path).into_owned(),
                        });
                    }
                    let mut d = Node::dir(0o755);
                    d.mtime = self.nodes[cur].mtime;
                    let id = self.add(d);
                    self.implicit.insert(id);
                    self.nodes[cur].children_mut().expect("checked dir").insert(c.to_vec(), id);
                    id
                }
            };
            if !self.nodes[next].is_dir() {
                return Err(TreeError::NotADirectory {
                    path: String::from_utf8_lossy(path).into_owned(),
                });
            }
            cur = next;
        }
        Ok((cur, Some(last)))
    }

    /// Put `node` at `path`, replacing what was there. A directory replacing a directory keeps
    /// the old children (tar semantics: a later dir entry updates attributes only).
    pub fn insert(&mut self, path: &[u8], node: Node) -> Result<InodeId, TreeError> {
        let (parent, name) = self.parent_of(path)?;
        let Some(name) = name else {
            // The root itself: keep children, take attributes.
            let children = std::mem::replace(&mut self.nodes[self.root].kind, NodeKind::Special);
            let mut node = node;
            if let (NodeKind::Dir(old), NodeKind::Dir(new)) = (children, &mut node.kind) {
                if new.is_empty() {
                    *new = old;
                }
            }
            self.nodes[self.root] = node;
            self.implicit.remove(&self.root);
            return Ok(self.root);
        };
        let existing = self.nodes[parent].children().and_then(|c| c.get(name)).copied();
        if let (Some(old), NodeKind::Dir(_)) = (existing, &node.kind) {
            if self.nodes[old].is_dir() {
                let kids = std::mem::replace(&mut self.nodes[old].kind, NodeKind::Special);
                let mut node = node;
                node.kind = kids;
                self.nodes[old] = node;
                self.implicit.remove(&old);
                return Ok(old);
            }
        }
        let id = self.add(node);
        self.nodes[parent].children_mut().expect("parent is a dir").insert(name.to_vec(), id);
        Ok(id)
    }

    /// Add another name for the inode at `target` (a hardlink).
    pub fn link(&mut self, path: &[u8], target: &[u8]) -> Result<InodeId, TreeError> {
        let bad = || TreeError::BadLinkTarget {
            path: String::from_utf8_lossy(path).into_owned(),
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let id = self.lookup(target).ok_or_else(bad)?;
        if self.nodes[id].is_dir() {
            return Err(bad());
        }
        let (parent, name) = self.parent_of(path)?;
        let name = name.ok_or_else(bad)?;
        self.nodes[parent].children_mut().expect("parent is a dir").insert(name.to_vec(), id);
        Ok(id)
    }

    /// Remove the name at `path` (the subtree becomes unreachable). Returns whether it existed.
    pub fn remove(&mut self, path: &[u8]) -> bool {
        let Ok(comps) = components(path) else { return false };
        let Some((last, dirs)) = comps.split_last() else { return false };
        let mut cur = self.root;
        for c in dirs {
            match self.nodes[cur].children().and_then(|ch| ch.get(*c)) {
                Some(&id) => cur = id,
                None => return false,
            }
        }
        self.nodes[cur].children_mut().is_some_and(|c| c.remove(*last).is_some())
    }

    /// Reachable inodes in breadth-first order from the root, each once (hardlinks share),
    /// with the number of names each has.
    pub fn reachable(&self) -> (Vec<InodeId>, HashMap<InodeId, u32>) {
        let mut order = vec![self.root];
        let mut names: HashMap<InodeId, u32> = HashMap::from([(self.root, 1)]);
        let mut i = 0;
        while i < order.len() {
            if let Some(children) = self.nodes[order[i]].children() {
                for &c in children.values() {
                    let n = names.entry(c).or_insert(0);
                    *n += 1;
                    // A directory reachable twice would be a cycle; builders cannot make one,
                    // and the first name wins if a merge ever did.
                    if *n == 1 {
                        order.push(c);
                    }
                }
            }
            i += 1;
        }
        (order, names)
    }

    /// Path of every reachable inode (first name found, breadth first), for reports.
    pub fn paths(&self) -> HashMap<InodeId, Vec<u8>> {
        let mut out = HashMap::from([(self.root, b"/".to_vec())]);
        let mut queue = vec![self.root];
        while let Some(d) = queue.pop() {
            let base = out[&d].clone();
            if let Some(ch) = self.nodes[d].children() {
                for (name, &c) in ch {
                    if out.contains_key(&c) {
                        continue;
                    }
                    let mut p = base.clone();
                    if p.len() > 1 {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    out.insert(c, p);
                    if self.nodes[c].is_dir() {
                        queue.push(c);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Node {
        Node::with_kind(libc::S_IFREG | 0o644, NodeKind::File(vec![]))
    }

    #[test]
    fn insert_creates_parents_and_keeps_dir_children() {
        let mut t = Tree::new(ImageConfig::default());
        t.insert(b"a/b/c", file()).unwrap();
        let mut d = Node::dir(0o700);
        d.uid = 5;
        let a = t.insert(b"/a", d).unwrap();
        assert_eq!(t.nodes[a].uid, 5);
        assert!(t.lookup(b"a/b/c").is_some());
        assert!(t.insert(b"a/b/c/d", file()).is_err(), "file as a parent");
        assert!(t.insert(b"../x", file()).is_err());
    }

    #[test]
    fn links_share_inodes_and_removal_unlinks_one_name() {
        let mut t = Tree::new(ImageConfig::default());
        let f = t.insert(b"x", file()).unwrap();
        assert_eq!(t.link(b"d/y", b"x").unwrap(), f);
        let (order, names) = t.reachable();
        assert_eq!(names[&f], 2);
        assert_eq!(order.iter().filter(|&&i| i == f).count(), 1);
        assert!(t.remove(b"x"));
        assert!(!t.remove(b"x"));
        assert_eq!(t.reachable().1[&f], 1);
        assert!(t.link(b"z", b"d").is_err(), "dir hardlink");
        assert_eq!(t.paths()[&f], b"/d/y".to_vec());
    }
}
