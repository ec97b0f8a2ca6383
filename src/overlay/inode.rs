//! The overlay's inode table: FUSE node ids for union objects.
//!
//! A node is found again by its identity, not its name: by the upper object's real inode
//! number once it has one, by (layer, lower id) before that. So hard links share a node (the
//! kernel then keeps one inode with one set of cached attributes), and copy-up keeps the node
//! id (the kernel needs no invalidation). A node also remembers one name (parent, name) — the
//! one copy-up recreates in the upper directory — and is dropped when the kernel forgets it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::Resolved;
use crate::sys::FileHandle;

/// The root's node id (FUSE_ROOT_ID).
pub const ROOT: u64 = 1;

/// One union object.
#[derive(Debug)]
pub struct Node {
    /// File type bits (S_IFMT).
    pub kind: u32,
    /// Parent node and name (for copy-up).
    pub parent: u64,
    /// Name in the parent.
    pub name: Vec<u8>,
    /// The upper object, once there is one.
    pub upper: Option<Arc<FileHandle>>,
    /// Its real inode number in the upper filesystem.
    pub upper_ino: Option<u64>,
    /// Lower objects: merged lower dirs top first, or a non-directory's one origin.
    pub lowers: Vec<(usize, u64)>,
    /// Directories: the path of the lower objects in their layers ("" = root).
    pub lower_path: Option<Arc<[u8]>>,
    /// The inode number users see.
    pub ino: u64,
    /// Kernel lookup count.
    pub lookups: u64,
    /// An O_PATH descriptor of the upper object once its last name was removed: a file handle
    /// no longer opens an unlinked inode, but the kernel may still ask about it (an open file,
    /// a removed working directory), and must then see it with nlink 0, not ESTALE.
    pub kept: Option<Arc<OwnedFd>>,
    /// The object is known to have no `security.capability`: the kernel asks for it before
    /// every write (to drop file capabilities), and the answer is served from here. Only a
    /// SETXATTR through the mount can add one: it bumps `xattr_gen` and clears this.
    pub no_caps: bool,
    /// The directory is known to have no default ACL (`system.posix_acl_default`), read
    /// at every creation in it; kept like `no_caps`.
    pub no_default_acl: bool,
    /// Counts the node's xattr changes, so a lookup that found no capability records that only
    /// when no change came in between (see [`Table::caps_absent`]).
    pub xattr_gen: u64,
}

/// A copy of what an operation needs from a node (taken under the table lock, used without).
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Node id.
    pub id: u64,
    /// File type bits.
    pub kind: u32,
    /// Parent node.
    pub parent: u64,
    /// Name in the parent.
    pub name: Vec<u8>,
    /// Upper object.
    pub upper: Option<Arc<FileHandle>>,
    /// Lower objects.
    pub lowers: Vec<(usize, u64)>,
    /// Lower path of a directory.
    pub lower_path: Option<Arc<[u8]>>,
    /// Shown inode number.
    pub ino: u64,
    /// The removed upper object, see [`Node::kept`].
    pub kept: Option<Arc<OwnedFd>>,
    /// See [`Node::no_caps`].
    pub no_caps: bool,
    /// See [`Node::no_default_acl`].
    pub no_default_acl: bool,
    /// See [`Node::xattr_gen`].
    pub xattr_gen: u64,
}

impl NodeView {
    /// Whether the object is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
}

/// Every node the kernel knows.
#[derive(Debug)]
pub struct Table {
    nodes: HashMap<u64, Node>,
    by_upper: HashMap<u64, u64>,
    by_lower: HashMap<(usize, u64), u64>,
    next: u64,
}

impl Table {
    /// A table holding only the root.
    pub fn new(
        upper: FileHandle,
        upper_ino: u64,
        lowers: Vec<(usize, u64)>,
        lower_path: Option<Arc<[u8]>>,
        ino: u64,
    ) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: libc::S_IFDIR,
                parent: ROOT,
                name: Vec::new(),
                upper: Some(Arc::new(upper)),
                upper_ino: Some(upper_ino),
                lowers,
                lower_path,
                ino,
                lookups: 1,
                kept: None,
                no_caps: false,
                no_default_acl: false,
                xattr_gen: 0,
            },
        );
        let mut by_upper = HashMap::new();
        by_upper.insert(upper_ino, ROOT);
        Self { nodes, by_upper, by_lower: HashMap::new(), next: ROOT + 1 }
    }

    /// A copy of node `id`.
    pub fn view(&self, id: u64) -> Option<NodeView> {
        let n = self.nodes.get(&id)?;
        Some(NodeView {
            id,
            kind: n.kind,
            parent: n.parent,
            name: n.name.clone(),
            upper: n.upper.clone(),
            lowers: n.lowers.clone(),
            lower_path: n.lower_path.clone(),
            ino: n.ino,
            kept: n.kept.clone(),
            no_caps: n.no_caps,
            no_default_acl: n.no_default_acl,
            xattr_gen: n.xattr_gen,
        })
    }

    /// Find or create the node for a resolved object and count one lookup.
    pub fn install(&mut self, parent: u64, name: &[u8], r: &Resolved, kind: u32, ino: u64) -> u64 {
        let upper_ino = r.upper.as_ref().map(|(_, st, _)| st.st_ino);
        // Names of one lower hard link get a node each, as in kernel overlayfs without an
        // index: each copies up on its own (sharing one node would copy up the wrong name).
        let shareable = kind == libc::S_IFDIR || r.lower_st.is_none_or(|st| st.st_nlink <= 1);
        let existing = match upper_ino {
            Some(u) => self.by_upper.get(&u).copied(),
            None if shareable => r.lowers.first().and_then(|k| self.by_lower.get(k).copied()),
            None => None,
        }
        .filter(|id| self.nodes.get(id).is_some_and(|n| n.kind == kind));
        if let Some(id) = existing {
            let n = self.nodes.get_mut(&id).expect("checked above");
            n.lookups += 1;
            if n.upper.is_none() {
                if let (Some((h, _, _)), Some(u)) = (&r.upper, upper_ino) {
                    n.upper = Some(Arc::new(h.clone()));
                    n.upper_ino = Some(u);
                    self.by_upper.insert(u, id);
                }
            }
            if kind == libc::S_IFDIR {
                // A directory has one name; refresh what it merges.
                n.parent = parent;
                n.name = name.to_vec();
                n.lowers = r.lowers.clone();
                n.lower_path = r.lower_path.clone();
            }
            return id;
        }
        let id = self.next;
        self.next += 1;
        self.nodes.insert(
            id,
            Node {
                kind,
                parent,
                name: name.to_vec(),
                upper: r.upper.as_ref().map(|(h, _, _)| Arc::new(h.clone())),
                upper_ino,
                lowers: r.lowers.clone(),
                lower_path: r.lower_path.clone(),
                ino,
                lookups: 1,
                kept: None,
                no_caps: false,
                no_default_acl: false,
                xattr_gen: 0,
            },
        );
        if let Some(u) = upper_ino {
            self.by_upper.insert(u, id);
        } else if let Some(k) = r.lowers.first().filter(|_| shareable) {
            self.by_lower.insert(*k, id);
        }
        id
    }

    /// A new upper-only object was created through the mount (it has no file capability:
    /// only a SETXATTR gives one).
    pub fn created(
        &mut self,
        parent: u64,
        name: &[u8],
        kind: u32,
        upper: FileHandle,
        upper_ino: u64,
        ino: u64,
    ) -> u64 {
        let r = Resolved {
            upper: Some((upper, crate::sys::zeroed_stat64(), None)),
            lowers: Vec::new(),
            lower_st: None,
            lower_path: None,
        };
        // A stale entry for a recycled inode number must not be reused.
        if let Some(old) = self.by_upper.remove(&upper_ino) {
            if let Some(n) = self.nodes.get_mut(&old) {
                n.upper_ino = None;
            }
        }
        let mut r = r;
        if let Some((_, st, _)) = r.upper.as_mut() {
            st.st_ino = upper_ino;
        }
        let id = self.install(parent, name, &r, kind, ino);
        if let Some(n) = self.nodes.get_mut(&id).filter(|n| n.lookups == 1) {
            n.no_caps = true;
        }
        id
    }

    /// Node `id` now has an upper object (copy-up finished); `shown` replaces the inode
    /// number users see when the copy could not keep the lower one; `no_caps` says the copy
    /// has no file capability and `no_default_acl` no default ACL (copy-up copied the lower
    /// object's xattrs and saw none).
    pub fn copied_up(
        &mut self,
        id: u64,
        upper: FileHandle,
        upper_ino: u64,
        shown: Option<u64>,
        (no_caps, no_default_acl): (bool, bool),
    ) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.no_caps = no_caps;
            n.no_default_acl = no_default_acl;
            n.upper = Some(Arc::new(upper));
            n.upper_ino = Some(upper_ino);
            if let Some(s) = shown {
                n.ino = s;
            }
            self.by_upper.insert(upper_ino, id);
        }
    }

    /// The xattrs of node `id` changed (or may have): its capability is unknown again.
    pub fn xattrs_changed(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.xattr_gen += 1;
            n.no_caps = false;
            n.no_default_acl = false;
        }
    }

    /// A lookup of `security.capability` on node `id`, begun when its xattrs were at
    /// generation `gen`, found none: remember that unless they changed since.
    pub fn caps_absent(&mut self, id: u64, gen: u64) {
        if let Some(n) = self.nodes.get_mut(&id).filter(|n| n.xattr_gen == gen) {
            n.no_caps = true;
        }
    }

    /// Like [`Table::caps_absent`], for directory `id`'s default ACL.
    pub fn default_acl_absent(&mut self, id: u64, gen: u64) {
        if let Some(n) = self.nodes.get_mut(&id).filter(|n| n.xattr_gen == gen) {
            n.no_default_acl = true;
        }
    }

    /// Node `id` got an extra kernel reference (link, readdirplus of a known node).
    pub fn add_lookup(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.lookups += 1;
        }
    }

    /// The name `name` in `parent`, which node `id` had, is gone. `last_link` says the object
    /// itself is gone, so its identity may be recycled by a new object; `kept` then is a
    /// descriptor of the removed upper object, served to whoever still refers to the node.
    pub fn unlinked(
        &mut self,
        id: u64,
        parent: u64,
        name: &[u8],
        last_link: bool,
        kept: Option<OwnedFd>,
    ) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if n.parent == parent && n.name == name {
            // Another name of a lower hard link must get a node of its own, not copy-up into
            // this removed name.
            if let Some(k) = n.lowers.first() {
                if self.by_lower.get(k) == Some(&id) {
                    self.by_lower.remove(k);
                }
            }
        }
        if last_link {
            if let Some(u) = n.upper_ino.take() {
                if self.by_upper.get(&u) == Some(&id) {
                    self.by_upper.remove(&u);
                }
            }
            if let Some(fd) = kept {
                n.kept = Some(Arc::new(fd));
                if n.kind == libc::S_IFDIR {
                    // A removed directory is empty: nothing below shows through any more.
                    n.lowers.clear();
                    n.lower_path = None;
                }
            }
        }
    }

    /// Node `id` moved to `parent`/`name`.
    pub fn renamed(&mut self, id: u64, parent: u64, name: &[u8]) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.parent = parent;
            n.name = name.to_vec();
        }
    }

    /// Directory `id` is opaque now: it merges nothing below.
    pub fn made_opaque(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.lowers.clear();
            n.lower_path = None;
        }
    }

    /// The kernel dropped `count` references to `id`; true when that dropped the node.
    pub fn forget(&mut self, id: u64, count: u64) -> bool {
        if id == ROOT {
            return false;
        }
        let Some(n) = self.nodes.get_mut(&id) else { return false };
        n.lookups = n.lookups.saturating_sub(count);
        if n.lookups > 0 {
            return false;
        }
        let n = self.nodes.remove(&id).expect("present");
        if let Some(u) = n.upper_ino {
            if self.by_upper.get(&u) == Some(&id) {
                self.by_upper.remove(&u);
            }
        }
        if let Some(k) = n.lowers.first() {
            if self.by_lower.get(k) == Some(&id) {
                self.by_lower.remove(k);
            }
        }
        true
    }

    /// Number of nodes (tests and metrics).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is left.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(n: u8) -> FileHandle {
        // Any handle bytes do for the table, which never opens them.
        let dir = std::env::temp_dir();
        let _ = n;
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(dir).unwrap();
        crate::sys::name_to_handle_at(f.as_raw_fd(), b"").unwrap()
    }

    fn lower(l: usize, id: u64, ino: u64) -> Resolved {
        let mut st = crate::sys::zeroed_stat64();
        st.st_ino = ino;
        Resolved { upper: None, lowers: vec![(l, id)], lower_st: Some(st), lower_path: None }
    }

    #[test]
    fn lower_objects_share_a_node_until_their_name_is_removed() {
        let mut t = Table::new(handle(0), 2, vec![(0, 1)], None, 100);
        let a = t.install(ROOT, b"a", &lower(0, 7, 7), libc::S_IFREG, 77);
        let again = t.install(ROOT, b"a", &lower(0, 7, 7), libc::S_IFREG, 77);
        assert_eq!(a, again);
        assert_eq!(t.nodes[&a].lookups, 2);
        t.unlinked(a, ROOT, b"a", false, None);
        let b2 = t.install(ROOT, b"a", &lower(0, 7, 7), libc::S_IFREG, 77);
        assert_ne!(a, b2, "a removed name must not be copied up again through another name");
    }

    #[test]
    fn names_of_a_lower_hard_link_get_a_node_each() {
        let mut t = Table::new(handle(0), 2, vec![(0, 1)], None, 100);
        let mut r = lower(0, 7, 7);
        r.lower_st.as_mut().unwrap().st_nlink = 2;
        let a = t.install(ROOT, b"a", &r, libc::S_IFREG, 77);
        let b = t.install(ROOT, b"b", &r, libc::S_IFREG, 77);
        assert_ne!(a, b);
    }

    #[test]
    fn forget_drops_nodes_but_never_the_root() {
        let mut t = Table::new(handle(0), 2, vec![], None, 2);
        let a = t.install(ROOT, b"a", &lower(0, 7, 7), libc::S_IFREG, 77);
        t.forget(a, 1);
        assert!(t.view(a).is_none());
        t.forget(ROOT, 100);
        assert!(t.view(ROOT).is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn a_removed_directory_keeps_its_descriptor_and_merges_nothing() {
        let mut t = Table::new(handle(0), 2, vec![(0, 1)], None, 100);
        let mut r = lower(0, 7, 7);
        r.upper = Some((handle(1), crate::sys::zeroed_stat64(), None));
        r.upper.as_mut().unwrap().1.st_ino = 60;
        let d = t.install(ROOT, b"d", &r, libc::S_IFDIR, 77);
        let fd: OwnedFd = std::fs::File::open(std::env::temp_dir()).unwrap().into();
        t.unlinked(d, ROOT, b"d", true, Some(fd));
        let v = t.view(d).unwrap();
        assert!(v.kept.is_some());
        assert!(v.lowers.is_empty());
        // Its upper inode number may be recycled by a new object, which gets a new node.
        let e = t.created(ROOT, b"e", libc::S_IFDIR, handle(2), 60, 60);
        assert_ne!(d, e);
    }

    #[test]
    fn a_capability_lookup_is_remembered_only_without_an_xattr_change_in_between() {
        let mut t = Table::new(handle(0), 2, vec![(0, 1)], None, 100);
        let c = t.created(ROOT, b"c", libc::S_IFREG, handle(1), 50, 50);
        assert!(t.view(c).unwrap().no_caps, "a new object has no file capability");
        let a = t.install(ROOT, b"a", &lower(0, 7, 7), libc::S_IFREG, 77);
        let v = t.view(a).unwrap();
        assert!(!v.no_caps);
        // A SETXATTR lands between the lookup's read and its record: the record is dropped.
        t.xattrs_changed(a);
        t.caps_absent(a, v.xattr_gen);
        assert!(!t.view(a).unwrap().no_caps);
        let v = t.view(a).unwrap();
        t.caps_absent(a, v.xattr_gen);
        assert!(t.view(a).unwrap().no_caps);
        t.xattrs_changed(a);
        assert!(!t.view(a).unwrap().no_caps);
        t.copied_up(a, handle(2), 51, None, (true, false));
        assert!(t.view(a).unwrap().no_caps);
        t.copied_up(c, handle(3), 52, None, (false, true));
        assert!(!t.view(c).unwrap().no_caps);
        assert!(t.view(c).unwrap().no_default_acl);
        let v = t.view(c).unwrap();
        t.xattrs_changed(c);
        t.default_acl_absent(c, v.xattr_gen);
        assert!(!t.view(c).unwrap().no_default_acl);
    }

    #[test]
    fn created_objects_are_found_by_upper_inode_and_recycled_inodes_get_new_nodes() {
        let mut t = Table::new(handle(0), 2, vec![], None, 2);
        let a = t.created(ROOT, b"a", libc::S_IFREG, handle(1), 50, 50);
        t.unlinked(a, ROOT, b"a", true, None);
        let b = t.created(ROOT, b"b", libc::S_IFREG, handle(2), 50, 50);
        assert_ne!(a, b);
        t.copied_up(b, handle(3), 51, None, (true, true));
        assert_eq!(t.by_upper.get(&51), Some(&b));
    }
}
