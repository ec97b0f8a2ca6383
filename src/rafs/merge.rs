//! Layers: load a bootstrap back into a [`Tree`], and apply an upper layer onto a lower tree
//! the way containerd unpacks OCI layers.
//!
//! Whiteout rules (`WhiteoutSpec`):
//! - `oci`: an entry `.wh.<name>` removes `<name>` from the lower layers; an entry
//!   `.wh..wh..opq` in a directory hides every lower entry of that directory.
//! - `overlayfs`: a character device 0/0 removes the entry of its name; a directory with
//!   `trusted.overlay.opaque=y` (or `user.overlay.opaque=y`) hides the lower entries, and the
//!   marker xattr is dropped from the result.
//! - `none`: nothing is interpreted.
//!
//! A merged tree holds no whiteouts. A directory in the upper layer over a lower directory
//! merges with it and takes the upper attributes; anything else replaces what was below.

use std::collections::HashMap;

use super::chunk::ChunkRef;
use super::layout::Compressor;
use super::reader::{Image, ImageKind, ReadError};
use super::tree::{ImageConfig, InodeId, Node, NodeKind, Tree, TreeError};

/// OCI whiteout prefix.
pub const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque-directory marker name.
pub const OCI_OPAQUE: &[u8] = b".wh..wh..opq";
/// overlayfs opaque xattr names we honour.
pub const OVERLAY_OPAQUE_XATTRS: [&[u8]; 2] = [b"trusted.overlay.opaque", b"user.overlay.opaque"];

/// How whiteouts are spelled in a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum WhiteoutSpec {
    /// `.wh.` files (OCI image spec).
    #[default]
    Oci,
    /// Character device 0/0 and the opaque xattr (kernel overlayfs).
    Overlayfs,
    /// No whiteouts.
    None,
}

/// Errors of loading and merging.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Reading a bootstrap failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A tree edit failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Layers disagree on an image-wide setting.
    #[error("layers disagree: {0}")]
    Incompatible(String),
    /// The image cannot be represented.
    #[error("cannot load image: {0}")]
    Unsupported(String),
}

/// Load a RAFS bootstrap into a tree (chunk references kept, no data read).
pub fn load_tree(img: &Image) -> Result<Tree, MergeError> {
    if img.kind != ImageKind::RafsV6 {
        return Err(MergeError::Unsupported(
            "plain EROFS images keep data inside the image; only RAFS bootstraps can be layered"
                .into(),
        ));
    }
    let config = ImageConfig {
        chunk_size: img.chunk_size,
        compressor: img.compressor,
        digester: img.digester,
    };
    let mut tree = Tree::new(config);
    tree.blobs = img.blobs.clone();
    let mut by_nid: HashMap<u64, InodeId> = HashMap::new();
    let mut dir_of_path: HashMap<Vec<u8>, InodeId> = HashMap::new();
    img.walk::<ReadError>(|path, inode| {
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            _ if path == b"/" => (None, &path[..0]),
            Some(i) => (Some(if i == 0 { b"/".as_slice() } else { &path[..i] }), &path[i + 1..]),
            None => (None, path),
        };
        let id = if let Some(&id) = by_nid.get(&inode.nid) {
            id
        } else {
            let kind = match inode.file_type() {
                libc::S_IFDIR => NodeKind::Dir(Default::default()),
                libc::S_IFREG => {
                    let chunks = img.chunks(inode)?;
                    let mut v = Vec::with_capacity(chunks.len());
                    for c in chunks {
                        v.push(c.ok_or_else(|| {
                            ReadError::Unsupported(format!(
                                "{}: sparse chunk holes cannot be merged",
                                String::from_utf8_lossy(path)
                            ))
                        })?);
                    }
                    NodeKind::File(v)
                }
                libc::S_IFLNK => NodeKind::Symlink(img.readlink(inode)?),
                _ => NodeKind::Special,
            };
            let node = Node {
                mode: u32::from(inode.disk.mode),
                uid: inode.disk.uid,
                gid: inode.disk.gid,
                mtime: inode.disk.mtime,
                mtime_nsec: inode.disk.mtime_nsec,
                rdev: inode.rdev(),
                size: if inode.is_reg() { inode.disk.size } else { 0 },
                xattrs: img.xattrs(inode)?.into_iter().collect(),
                kind,
            };
            let id = if parent.is_none() {
                let root = tree.root;
                tree.nodes[root] = node;
                root
            } else {
                tree.add(node)
            };
            by_nid.insert(inode.nid, id);
            id
        };
        if inode.is_dir() {
            dir_of_path.insert(path.to_vec(), id);
            if inode.disk.strata_flags & crate::rafs::layout::STRATA_INODE_IMPLIED_DIR != 0 {
                tree.implicit.insert(id);
            }
        }
        if let Some(p) = parent {
            let pid = dir_of_path[p];
            tree.nodes[pid].children_mut().expect("parent is a dir").insert(name.to_vec(), id);
        }
        Ok(true)
    })?;
    tree.prefetch = img.prefetch.iter().filter_map(|nid| by_nid.get(nid).copied()).collect();
    Ok(tree)
}

fn is_overlay_whiteout(n: &Node) -> bool {
    n.file_type() == libc::S_IFCHR && n.rdev == 0
}

fn is_overlay_opaque(n: &Node) -> bool {
    OVERLAY_OPAQUE_XATTRS.iter().any(|x| n.xattrs.get(*x).is_some_and(|v| v.as_slice() == b"y"))
}

/// True if `name`/`node` is a whiteout or opaque marker entry under `spec`.
pub fn is_whiteout_entry(spec: WhiteoutSpec, name: &[u8], node: &Node) -> bool {
    match spec {
        WhiteoutSpec::Oci => name.starts_with(OCI_WHITEOUT_PREFIX),
        WhiteoutSpec::Overlayfs => is_overlay_whiteout(node),
        WhiteoutSpec::None => false,
    }
}

/// Remove whiteout entries and opaque markers from a bottom layer (nothing below to hide).
pub fn strip_whiteouts(tree: &mut Tree, spec: WhiteoutSpec) {
    let (order, _) = tree.reachable();
    for id in order {
        let names: Vec<Vec<u8>> = match tree.nodes[id].children() {
            Some(ch) => ch
                .iter()
                .filter(|(n, &c)| is_whiteout_entry(spec, n, &tree.nodes[c]))
                .map(|(n, _)| n.clone())
                .collect(),
            None => continue,
        };
        for n in names {
            tree.nodes[id].children_mut().expect("dir").remove(&n);
        }
        if spec == WhiteoutSpec::Overlayfs {
            for x in OVERLAY_OPAQUE_XATTRS {
                tree.nodes[id].xattrs.remove(x);
            }
        }
    }
}

/// Apply `upper` onto `base` (lower), honouring whiteouts. Blobs of the upper layer are added
/// to the base blob table (matched by id) and its chunks re-pointed.
pub fn apply_layer(base: &mut Tree, upper: &Tree, spec: WhiteoutSpec) -> Result<(), MergeError> {
    if base.config.chunk_size != upper.config.chunk_size {
        return Err(MergeError::Incompatible(format!(
            "chunk size {:#x} vs {:#x}",
            base.config.chunk_size, upper.config.chunk_size
        )));
    }
    if base.config.digester != upper.config.digester {
        return Err(MergeError::Incompatible(format!(
            "digester {} vs {}",
            base.config.digester, upper.config.digester
        )));
    }
    let mut remap = Vec::with_capacity(upper.blobs.len());
    for b in &upper.blobs {
        let idx = match base.blobs.iter().position(|x| x.blob_id == b.blob_id) {
            Some(i) => i,
            None => {
                let mut e = b.clone();
                e.blob_index = base.blobs.len() as u32;
                base.blobs.push(e);
                base.blobs.len() - 1
            }
        };
        remap.push(idx as u32);
    }
    // An image built from several compressors reports the topmost one; blobs keep their own.
    if upper.blobs.iter().any(|b| b.compression_algo != Compressor::None.to_u32()) {
        base.config.compressor = upper.config.compressor;
    }
    let mut copied: HashMap<InodeId, InodeId> = HashMap::new();
    let (broot, uroot) = (base.root, upper.root);
    if !upper.implicit.contains(&uroot) {
        copy_attrs(&mut base.nodes[broot], &upper.nodes[uroot], spec);
        base.implicit.remove(&broot);
    }
    apply_dir(base, broot, upper, uroot, spec, &remap, &mut copied)?;
    for &p in &upper.prefetch {
        if let Some(&id) = copied.get(&p) {
            base.prefetch.push(id);
        }
    }
    Ok(())
}

fn copy_attrs(dst: &mut Node, src: &Node, spec: WhiteoutSpec) {
    dst.mode = src.mode;
    dst.uid = src.uid;
    dst.gid = src.gid;
    dst.mtime = src.mtime;
    dst.mtime_nsec = src.mtime_nsec;
    dst.xattrs = src.xattrs.clone();
    if spec == WhiteoutSpec::Overlayfs {
        for x in OVERLAY_OPAQUE_XATTRS {
            dst.xattrs.remove(x);
        }
    }
}

fn apply_dir(
    base: &mut Tree,
    bdir: InodeId,
    upper: &Tree,
    udir: InodeId,
    spec: WhiteoutSpec,
    remap: &[u32],
    copied: &mut HashMap<InodeId, InodeId>,
) -> Result<(), MergeError> {
    let entries: Vec<(Vec<u8>, InodeId)> = upper.nodes[udir]
        .children()
        .map(|c| c.iter().map(|(n, &i)| (n.clone(), i)).collect())
        .unwrap_or_default();
    let opaque = match spec {
        WhiteoutSpec::Oci => entries.iter().any(|(n, _)| n == OCI_OPAQUE),
        WhiteoutSpec::Overlayfs => is_overlay_opaque(&upper.nodes[udir]),
        WhiteoutSpec::None => false,
    };
    if opaque {
        base.nodes[bdir].children_mut().expect("dir").clear();
    }
    for (name, uid) in entries {
        let unode = &upper.nodes[uid];
        match spec {
            WhiteoutSpec::Oci if name == OCI_OPAQUE => continue,
            WhiteoutSpec::Oci if name.starts_with(OCI_WHITEOUT_PREFIX) => {
                base.nodes[bdir]
                    .children_mut()
                    .expect("dir")
                    .remove(&name[OCI_WHITEOUT_PREFIX.len()..]);
                continue;
            }
            WhiteoutSpec::Overlayfs if is_overlay_whiteout(unode) => {
                base.nodes[bdir].children_mut().expect("dir").remove(&name);
                continue;
            }
            _ => {}
        }
        let existing = base.nodes[bdir].children().and_then(|c| c.get(&name)).copied();
        if unode.is_dir() {
            let (target, fresh) = match existing {
                Some(e) if base.nodes[e].is_dir() => (e, false),
                _ => {
                    let id = base.add(Node::dir(0o755));
                    base.nodes[bdir].children_mut().expect("dir").insert(name.clone(), id);
                    (id, true)
                }
            };
            // A directory the layer only implied keeps the lower one's attributes; a new one
            // stays implied for layers merged later.
            if upper.implicit.contains(&uid) {
                if fresh {
                    copy_attrs(&mut base.nodes[target], unode, spec);
                    base.implicit.insert(target);
                }
            } else {
                copy_attrs(&mut base.nodes[target], unode, spec);
                base.implicit.remove(&target);
            }
            copied.insert(uid, target);
            apply_dir(base, target, upper, uid, spec, remap, copied)?;
        } else {
            let id = match copied.get(&uid) {
                Some(&id) => id,
                None => {
                    let mut n = unode.clone();
                    if let NodeKind::File(chunks) = &mut n.kind {
                        for c in chunks.iter_mut() {
                            remap_chunk(c, remap)?;
                        }
                    }
                    let id = base.add(n);
                    copied.insert(uid, id);
                    id
                }
            };
            base.nodes[bdir].children_mut().expect("dir").insert(name, id);
        }
    }
    Ok(())
}

fn remap_chunk(c: &mut ChunkRef, remap: &[u32]) -> Result<(), MergeError> {
    c.blob_index = *remap.get(c.blob_index as usize).ok_or_else(|| {
        MergeError::Unsupported(format!("chunk names blob index {} past the table", c.blob_index))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tag: u32) -> Node {
        let mut n = Node::with_kind(libc::S_IFREG | 0o644, NodeKind::File(vec![]));
        n.uid = tag;
        n
    }

    fn names(t: &Tree, path: &[u8]) -> Vec<String> {
        let id = t.lookup(path).unwrap();
        t.nodes[id].children().unwrap().keys().map(|k| String::from_utf8_lossy(k).into()).collect()
    }

    #[test]
    fn oci_whiteouts_and_opaque_dirs() {
        let mut lower = Tree::new(ImageConfig::default());
        for p in ["a/x", "a/y", "b/z", "c"] {
            lower.insert(p.as_bytes(), file(1)).unwrap();
        }
        let mut upper = Tree::new(ImageConfig::default());
        upper.insert(b"a/.wh.x", file(0)).unwrap();
        upper.insert(b"b/.wh..wh..opq", file(0)).unwrap();
        upper.insert(b"b/new", file(2)).unwrap();
        upper.insert(b"c", file(3)).unwrap();
        apply_layer(&mut lower, &upper, WhiteoutSpec::Oci).unwrap();
        assert_eq!(names(&lower, b"a"), ["y"]);
        assert_eq!(names(&lower, b"b"), ["new"]);
        assert_eq!(lower.nodes[lower.lookup(b"c").unwrap()].uid, 3);
    }

    #[test]
    fn overlayfs_whiteouts_and_opaque_xattr() {
        let mut lower = Tree::new(ImageConfig::default());
        for p in ["a/x", "a/y", "b/z"] {
            lower.insert(p.as_bytes(), file(1)).unwrap();
        }
        let mut upper = Tree::new(ImageConfig::default());
        upper.insert(b"a/x", Node::with_kind(libc::S_IFCHR, NodeKind::Special)).unwrap();
        let mut opaque = Node::dir(0o755);
        opaque.xattrs.insert(b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
        upper.insert(b"b", opaque).unwrap();
        upper.insert(b"b/w", file(2)).unwrap();
        apply_layer(&mut lower, &upper, WhiteoutSpec::Overlayfs).unwrap();
        assert_eq!(names(&lower, b"a"), ["y"]);
        assert_eq!(names(&lower, b"b"), ["w"]);
        assert!(lower.nodes[lower.lookup(b"b").unwrap()].xattrs.is_empty());
    }

    #[test]
    fn file_replacing_dir_and_hardlinks_survive() {
        let mut lower = Tree::new(ImageConfig::default());
        lower.insert(b"d/inner", file(1)).unwrap();
        let mut upper = Tree::new(ImageConfig::default());
        upper.insert(b"d", file(2)).unwrap();
        upper.insert(b"h1", file(3)).unwrap();
        upper.link(b"h2", b"h1").unwrap();
        apply_layer(&mut lower, &upper, WhiteoutSpec::Oci).unwrap();
        assert!(!lower.nodes[lower.lookup(b"d").unwrap()].is_dir());
        assert_eq!(lower.lookup(b"h1"), lower.lookup(b"h2"));
    }
}
