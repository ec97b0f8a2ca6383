//! Interoperability: images made by the real nydus-image read back as the tree they were made
//! from; layers merge the way containerd unpacks them (OCI and overlayfs whiteouts); plain
//! EROFS images made by mkfs.erofs read back as their source directory.
//!
//! Fixtures are in tests/fixtures/nydus-image (see its README.md for how they were made).
mod common;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{
    assert_same, blob_reader, fsck_erofs, only_blob, require_root, require_tool, snapshot_dir,
    snapshot_image, snapshot_tar, strata, strata_fails, Compare, Snapshot,
};
use strata::rafs::layout::{Compressor, Digester};
use strata::rafs::reader::{Image, ImageKind, ReadError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nydus-image")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn tar_snapshot(path: &Path) -> Snapshot {
    snapshot_tar(fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The source tree of every nydus fixture.
fn source_tree() -> Snapshot {
    let snap = tar_snapshot(&fixtures().join("tree.tar.gz"));
    // tree.tar.gz has a "./" entry (0755 0:0, mtime 1700000000), so root attributes are
    // compared (Compare::default). A tar-rafs build keeps all of them (layer1.boot); for the
    // directory builds see nydus_dir_build_tree.
    let root = snap.get(b"".as_slice()).expect("tree.tar.gz has a ./ entry");
    assert_eq!((root.kind, root.perm, root.uid, root.mtime.0), ('d', 0o755, 0, 1_700_000_000));
    snap
}

// ---------------------------------------------------------------------------------------------
// Images made by nydus-image
// ---------------------------------------------------------------------------------------------

/// The tree a nydus-image directory build (the v6-* fixtures) holds: the source tree, except
/// that nydus-image writes the root inode with i_mtime 0 (an extended inode whose mtime field
/// is 0 in each bootstrap, whatever the source directory's mtime). We read what is on disk,
/// so only the root's mtime is adjusted here; its mode and owner are compared as they are.
/// (The tar-rafs layers carry "./" from the tar, with its mtime: see the layer tests.)
fn nydus_dir_build_tree() -> Snapshot {
    let mut t = source_tree();
    t.get_mut(b"".as_slice()).unwrap().mtime = (0, 0);
    t
}

/// Read a nydus-image v6 fixture: tree equals tree.tar.gz, `image check -D` passes, fsck.erofs
/// accepts the bootstrap with its blob as the extra device.
fn nydus_v6_fixture(name: &str, chunk_size: u32, compressor: Compressor, digester: Digester) {
    let dir = fixtures().join(name);
    let boot = dir.join("bootstrap");
    let blobs = dir.join("blobs");
    let img = Image::open(&boot).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(img.kind, ImageKind::RafsV6, "{name}");
    assert_eq!(img.chunk_size, chunk_size, "{name}: chunk size");
    assert_eq!(img.compressor, compressor, "{name}: compressor");
    assert_eq!(img.digester, digester, "{name}: digester");
    assert_eq!(img.blobs.len(), 1, "{name}: one blob");
    assert_eq!(
        only_blob(&blobs).file_name().unwrap().to_str().unwrap(),
        img.blobs[0].blob_id,
        "{name}: blob file is named by the blob id"
    );
    let got = snapshot_image(&img, &blob_reader(&img, &blobs));
    assert_same(&nydus_dir_build_tree(), &got, Compare::default(), name);

    let out = strata(&["image", "check", "-B", s(&boot), "-D", s(&blobs), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    assert!(v["chunks"].as_u64().unwrap() > 0, "{name}: {v}");
    assert_eq!(v["chunks"], v["chunks_verified"], "{name}: {v}");
    assert_eq!(v["chunk_errors"].as_array().map(Vec::len), Some(0), "{name}: {v}");

    if require_tool(name, "fsck.erofs") {
        fsck_erofs(&boot, &[only_blob(&blobs)]).unwrap_or_else(|e| panic!("{name}: fsck: {e}"));
    }
}

#[test]
fn nydus_v6_default_reads_as_source_tree() {
    nydus_v6_fixture("v6-default", 0x10_0000, Compressor::Zstd, Digester::Blake3);
}

#[test]
fn nydus_v6_lz4_sha256_reads_as_source_tree() {
    nydus_v6_fixture("v6-lz4-sha256", 0x10_0000, Compressor::Lz4Block, Digester::Sha256);
}

#[test]
fn nydus_v6_none_4k_reads_as_source_tree() {
    nydus_v6_fixture("v6-none-4k", 0x1000, Compressor::None, Digester::Blake3);
}

#[test]
fn nydus_v6_prefetch_reads_as_source_tree() {
    nydus_v6_fixture("v6-prefetch", 0x10_0000, Compressor::Zstd, Digester::Blake3);
}

#[test]
fn nydus_v6_prefetch_table_follows_prefetch_list() {
    let boot = fixtures().join("v6-prefetch/bootstrap");
    let want: Vec<String> = fs::read_to_string(fixtures().join("prefetch.list"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    assert_eq!(want, ["/usr/lib/big.bin", "/etc/hostname"]);
    let out = strata(&["image", "inspect", "-B", s(&boot), "--request", "prefetch", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json");
    let got: Vec<String> = v
        .as_array()
        .expect("prefetch is a list")
        .iter()
        .map(|e| e["path"].as_str().unwrap_or_else(|| panic!("entry without path: {e}")).into())
        .collect();
    assert_eq!(got, want);
    // The same through the library: the table's nids are the inodes of those paths.
    let img = Image::open(&boot).unwrap();
    let nids: Vec<u64> =
        want.iter().map(|p| img.resolve(p.as_bytes()).unwrap().expect(p).nid).collect();
    assert_eq!(img.prefetch, nids);
    // The default fixture has no prefetch table.
    let plain = Image::open(&fixtures().join("v6-default/bootstrap")).unwrap();
    assert!(plain.prefetch.is_empty());
}

#[test]
fn nydus_v5_is_rejected_clearly() {
    let dir = fixtures().join("v5-default");
    let boot = dir.join("bootstrap");
    let err = strata_fails(&["image", "check", "-B", s(&boot), "-D", s(&dir.join("blobs"))]);
    assert!(err.contains("v5"), "error should name RAFS v5: {err}");
    assert!(err.starts_with("error:"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err}");
    match Image::open(&boot) {
        Err(ReadError::Unsupported(m)) => assert!(m.contains("v5"), "{m}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// nydus-image layers merged by us
// ---------------------------------------------------------------------------------------------

/// What containerd unpacks from the two layers, as a snapshot.
///
/// expected-merged.tar.gz is the tree containerd unpacks from the two layers (fixture README),
/// attributes included: directories that layer 2 carries (/, etc, usr, usr/share, usr/share/many,
/// usr/lib) have layer 2's attributes (mtime 22:15, and usr/share 0:0 where layer 1 had
/// 1000:1000), the rest layer 1's. Nothing needs relaxing: it is compared in full.
fn expected_merged() -> Snapshot {
    let want = tar_snapshot(&fixtures().join("layers/expected-merged.tar.gz"));
    let share = &want[b"usr/share".as_slice()];
    assert_eq!((share.uid, share.mtime.0), (0, 1_700_000_100), "usr/share takes layer 2's attrs");
    assert!(!want.contains_key(b"usr/lib/dup2".as_slice()));
    assert!(!want.contains_key(b"usr/share/many/f001.txt".as_slice()));
    want
}

#[test]
fn nydus_layers_merge_like_containerd() {
    let layers = fixtures().join("layers");
    let blobs = layers.join("blobs");
    let tmp = tempfile::tempdir().unwrap();
    let merged = tmp.path().join("merged.boot");
    strata(&[
        "image",
        "merge",
        s(&layers.join("layer1.boot")),
        s(&layers.join("layer2.boot")),
        "-B",
        s(&merged),
    ]);
    let img = Image::open(&merged).unwrap();
    assert_eq!(img.blobs.len(), 2, "both layers' blobs");
    let got = snapshot_image(&img, &blob_reader(&img, &blobs));
    assert_same(&expected_merged(), &got, Compare::default(), "merged layers");

    // Mount-free checks of the merged bootstrap.
    strata(&["image", "check", "-B", s(&merged), "-D", s(&blobs)]);
    if require_tool("nydus_layers_merge_like_containerd", "fsck.erofs") {
        // Devices in blob-table order.
        let devs: Vec<PathBuf> = img.blobs.iter().map(|b| blobs.join(&b.blob_id)).collect();
        fsck_erofs(&merged, &devs).unwrap_or_else(|e| panic!("fsck merged: {e}"));
    }

    // Unpacked to a tar, the merged image is the containerd tree too.
    let out_tar = tmp.path().join("merged.tar");
    strata(&["image", "unpack", "-B", s(&merged), "-D", s(&blobs), "--output", s(&out_tar)]);
    assert_same(&expected_merged(), &tar_snapshot(&out_tar), Compare::default(), "unpacked tar");
}

#[test]
fn nydus_layer_bootstraps_read_alone() {
    // Layer 1 is the whole source tree; layer 2 keeps its whiteout entries as plain files.
    let layers = fixtures().join("layers");
    let blobs = layers.join("blobs");
    let l1 = Image::open(&layers.join("layer1.boot")).unwrap();
    assert_same(
        &source_tree(),
        &snapshot_image(&l1, &blob_reader(&l1, &blobs)),
        Compare::default(),
        "layer1.boot",
    );
    let l2 = Image::open(&layers.join("layer2.boot")).unwrap();
    let want = tar_snapshot(&layers.join("layer2.tar"));
    assert!(want.contains_key(b"usr/lib/.wh.dup2".as_slice()));
    assert_same(
        &want,
        &snapshot_image(&l2, &blob_reader(&l2, &blobs)),
        Compare::default(),
        "layer2.boot",
    );
}

// ---------------------------------------------------------------------------------------------
// Our own layers: OCI and overlayfs whiteouts, end to end
// ---------------------------------------------------------------------------------------------

/// One entry of a test layer.
#[derive(Clone, Debug)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
    /// Hardlink to a path of the same layer.
    Hardlink(&'static str),
    Fifo,
}

#[derive(Clone, Debug)]
struct Item {
    path: &'static str,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(&'static str, &'static [u8])>,
}

const T1: u64 = 1_600_000_000;
const T2: u64 = 1_650_000_000;

fn item(path: &'static str, kind: Kind, mtime: u64) -> Item {
    let mode = match kind {
        Kind::Dir => 0o755,
        Kind::Symlink(_) => 0o777,
        _ => 0o644,
    };
    Item { path, kind, mode, uid: 0, gid: 0, mtime, xattrs: Vec::new() }
}

fn dir(path: &'static str, mtime: u64) -> Item {
    item(path, Kind::Dir, mtime)
}

fn file(path: &'static str, data: &[u8], mtime: u64) -> Item {
    item(path, Kind::File(data.to_vec()), mtime)
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Lower layer: a bit of everything, with a file bigger than one 1 MiB chunk.
fn layer1() -> Vec<Item> {
    let mut keep = file("keep", b"kept from layer 1\n", T1);
    keep.xattrs.push(("user.k", b"v1"));
    let mut own = dir("owned", T1);
    (own.uid, own.gid, own.mode) = (1000, 1000, 0o750);
    vec![
        dir(".", T1),
        dir("a", T1),
        file("a/x", b"x from layer 1\n", T1),
        file("a/y", b"y from layer 1\n", T1),
        dir("opq", T1),
        file("opq/old", b"hidden by the opaque marker\n", T1),
        dir("opq/sub", T1),
        file("opq/sub/deep", b"also hidden\n", T1),
        dir("d2f", T1),
        file("d2f/inner", b"goes with its directory\n", T1),
        file("f2d", b"a file that becomes a directory\n", T1),
        file("gone", &noise(70_000, 1), T1),
        keep,
        file("hl1", b"lower hardlink pair\n", T1),
        item("hl2", Kind::Hardlink("hl1"), T1),
        item("sym", Kind::Symlink("a/y"), T1),
        item("fifo", Kind::Fifo, T1),
        file("big.bin", &noise(2_500_000, 2), T1),
        own,
        file("owned/f", b"owned file\n", T1),
    ]
}

/// Upper layer, OCI spelling: whiteouts, an opaque dir that also gets a new file, a file over
/// a directory, a directory over a file, a hardlink pair, and data that dedups with layer 1.
fn layer2() -> Vec<Item> {
    let mut opq = dir("opq", T2);
    (opq.mode, opq.uid, opq.gid) = (0o700, 7, 8);
    let mut h1 = file("h1", b"upper hardlink pair\n", T2);
    h1.xattrs.push(("user.h", b"both names"));
    vec![
        dir(".", T2),
        dir("a", T2),
        file("a/.wh.x", b"", T2),
        file("a/dupe", &noise(2_500_000, 2), T2),
        opq,
        file("opq/.wh..wh..opq", b"", T2),
        file("opq/new", b"new in the opaque dir\n", T2),
        file("d2f", b"now a file\n", T2),
        dir("f2d", T2),
        file("f2d/inner", b"now inside a directory\n", T2),
        file(".wh.gone", b"", T2),
        h1,
        item("h2", Kind::Hardlink("h1"), T2),
    ]
}

/// A tar of `items`, with PAX headers for xattrs.
fn to_tar(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for it in items {
        if !it.xattrs.is_empty() {
            let recs: Vec<(String, &[u8])> =
                it.xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v)).collect();
            b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v))).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(it.mode);
        h.set_uid(u64::from(it.uid));
        h.set_gid(u64::from(it.gid));
        h.set_mtime(it.mtime);
        h.set_size(0);
        let name = if it.path == "." { "./".to_string() } else { format!("./{}", it.path) };
        match &it.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                let name = if name.ends_with('/') { name } else { format!("{name}/") };
                set_name(&mut h, &name);
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            Kind::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &name, data.as_slice()).unwrap();
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, &name, t).unwrap();
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, &name, format!("./{t}")).unwrap();
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, &name, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Put a short name into a ustar header byte for byte (the tar crate normalises "./" away).
fn set_name(h: &mut tar::Header, name: &str) {
    let raw = &mut h.as_old_mut().name;
    assert!(name.len() < raw.len(), "{name}: too long for the test helper");
    raw.fill(0);
    raw[..name.len()].copy_from_slice(name.as_bytes());
}

fn set_mtime(path: &Path, secs: u64) {
    let ts = nix::sys::time::TimeSpec::new(secs as i64, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// Owner, mode (not of symlinks) and xattrs of a just-created path; its mtime is set by the
/// caller (directories last, after their children).
fn set_attrs(path: &Path, mode: u32, uid: u32, gid: u32, xattrs: &[(Vec<u8>, Vec<u8>)]) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
    let is_link = fs::symlink_metadata(path).unwrap().file_type().is_symlink();
    if !is_link {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
    for (k, v) in xattrs {
        xattr::set(path, OsStr::from_bytes(k), v).unwrap();
    }
}

/// Apply an OCI layer tar onto `dest` the way containerd's applier does: `.wh.<name>` removes
/// `<name>`, `.wh..wh..opq` empties its directory of everything not from this layer, an entry
/// over an existing path replaces it unless both are directories (then attributes are
/// replaced), hardlinks point at the already extracted target, and directory times are set
/// after everything else.
fn apply_oci_tar(tar_bytes: &[u8], dest: &Path) {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut from_layer: HashSet<PathBuf> = HashSet::new();
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let rel: PathBuf = e.path().unwrap().components().collect();
        let out = dest.join(&rel);
        let name = rel.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        let parent = out.parent().unwrap().to_path_buf();
        if name == b".wh..wh..opq" {
            for c in fs::read_dir(&parent).unwrap() {
                let p = c.unwrap().path();
                if !from_layer.contains(&p) {
                    remove_any(&p);
                }
            }
            continue;
        }
        if let Some(victim) = name.strip_prefix(b".wh.") {
            remove_any(&parent.join(OsStr::from_bytes(victim)));
            continue;
        }
        let h = e.header().clone();
        let t = h.entry_type();
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if let Some(n) = x.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((n.to_vec(), x.value_bytes().to_vec()));
                }
            }
        }
        let existing = fs::symlink_metadata(&out).ok();
        if let Some(m) = &existing {
            if !(m.is_dir() && t == tar::EntryType::Directory) {
                remove_any(&out);
            }
        }
        let mode = h.mode().unwrap() & 0o7777;
        let (uid, gid) = (h.uid().unwrap() as u32, h.gid().unwrap() as u32);
        match t {
            tar::EntryType::Directory => {
                if !out.is_dir() {
                    fs::create_dir(&out).unwrap();
                }
                dir_times.push((out.clone(), h.mtime().unwrap()));
            }
            tar::EntryType::Regular => {
                let mut f = fs::File::create(&out).unwrap();
                std::io::copy(&mut e, &mut f).unwrap();
            }
            tar::EntryType::Symlink => {
                let target = e.link_name().unwrap().unwrap().into_owned();
                std::os::unix::fs::symlink(target, &out).unwrap();
            }
            tar::EntryType::Link => {
                let target: PathBuf =
                    e.link_name().unwrap().unwrap().components().collect::<PathBuf>();
                fs::hard_link(dest.join(target), &out).unwrap();
                from_layer.insert(out);
                continue;
            }
            tar::EntryType::Fifo => {
                nix::unistd::mkfifo(&out, nix::sys::stat::Mode::from_bits_truncate(mode)).unwrap();
            }
            other => panic!("test applier: unexpected entry type {other:?}"),
        }
        set_attrs(&out, mode, uid, gid, &xattrs);
        if t != tar::EntryType::Directory {
            set_mtime(&out, h.mtime().unwrap());
        }
        from_layer.insert(out);
    }
    for (p, t) in dir_times.iter().rev() {
        set_mtime(p, *t);
    }
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// `items` as an overlayfs upper directory: `.wh.<name>` becomes a 0/0 character device
/// `<name>`, `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on its directory.
fn to_overlay_dir(items: &[Item], root: &Path) {
    let mut dir_times = Vec::new();
    for it in items {
        let out = if it.path == "." { root.to_path_buf() } else { root.join(it.path) };
        let name = out.file_name().unwrap().as_bytes().to_vec();
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> =
            it.xattrs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec())).collect();
        if it.path != "." && name == b".wh..wh..opq" {
            xattr::set(out.parent().unwrap(), "trusted.overlay.opaque", b"y").unwrap();
            continue;
        }
        if let Some(victim) = name.strip_prefix(b".wh.") {
            let p = out.parent().unwrap().join(OsStr::from_bytes(victim));
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                0,
            )
            .unwrap();
            set_mtime(&p, it.mtime);
            continue;
        }
        match &it.kind {
            Kind::Dir => {
                fs::create_dir_all(&out).unwrap();
                dir_times.push((out.clone(), it.mtime));
            }
            Kind::File(d) => fs::write(&out, d).unwrap(),
            Kind::Symlink(t) => std::os::unix::fs::symlink(t, &out).unwrap(),
            Kind::Hardlink(t) => {
                fs::hard_link(root.join(t), &out).unwrap();
                continue;
            }
            Kind::Fifo => {
                nix::unistd::mkfifo(&out, nix::sys::stat::Mode::from_bits_truncate(it.mode))
                    .unwrap()
            }
        }
        set_attrs(&out, it.mode, it.uid, it.gid, &xattrs);
        if !matches!(it.kind, Kind::Dir) {
            set_mtime(&out, it.mtime);
        }
    }
    for (p, t) in dir_times.iter().rev() {
        set_mtime(p, *t);
    }
}

struct Layers {
    tmp: tempfile::TempDir,
    blobs: PathBuf,
    l1_boot: PathBuf,
    l2_tar: PathBuf,
    /// What containerd would unpack from layer1 + layer2.
    expected: Snapshot,
}

impl Layers {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = tmp.path().join("blobs");
        let l1_tar = tmp.path().join("layer1.tar");
        let l2_tar = tmp.path().join("layer2.tar");
        let (t1, t2) = (to_tar(&layer1()), to_tar(&layer2()));
        fs::write(&l1_tar, &t1).unwrap();
        fs::write(&l2_tar, &t2).unwrap();
        let l1_boot = tmp.path().join("layer1.boot");
        strata(&[
            "image",
            "create",
            "-t",
            "tar-rafs",
            s(&l1_tar),
            "-B",
            s(&l1_boot),
            "-D",
            s(&blobs),
        ]);
        let applied = tmp.path().join("applied");
        fs::create_dir(&applied).unwrap();
        apply_oci_tar(&t1, &applied);
        apply_oci_tar(&t2, &applied);
        let expected = snapshot_dir(&applied);
        Self::sanity(&expected);
        Layers { tmp, blobs, l1_boot, l2_tar, expected }
    }

    /// The applier did what the layers say.
    fn sanity(t: &Snapshot) {
        let has = |p: &str| t.contains_key(p.as_bytes());
        for gone in ["a/x", "gone", "opq/old", "opq/sub", "d2f/inner"] {
            assert!(!has(gone), "{gone} should be gone");
        }
        for p in ["a/y", "a/dupe", "opq/new", "f2d/inner", "keep", "hl2", "h2", "owned/f"] {
            assert!(has(p), "{p} should exist");
        }
        assert_eq!(t[b"d2f".as_slice()].kind, 'f');
        assert_eq!(t[b"f2d".as_slice()].kind, 'd');
        assert_eq!(t[b"h2".as_slice()].link_group.as_deref(), Some(b"h1".as_slice()));
        assert_eq!(t[b"hl2".as_slice()].link_group.as_deref(), Some(b"hl1".as_slice()));
        assert_eq!(t[b"opq".as_slice()].perm, 0o700);
        assert_eq!(t[b"".as_slice()].mtime.0, T2 as i64);
        assert!(!t.keys().any(|k| k.windows(4).any(|w| w == b".wh.")), "no whiteouts left");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `dedup`: layer 2 was built on top of layer 1 (its copy of big.bin shares the chunks).
    fn check_merged(&self, boot: &Path, what: &str, dedup: bool) {
        let img = Image::open(boot).unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = snapshot_image(&img, &blob_reader(&img, &self.blobs));
        assert_same(&self.expected, &got, Compare::default(), what);
        strata(&["image", "check", "-B", s(boot), "-D", s(&self.blobs)]);
        // a/dupe has big.bin's content. Built on layer 1, its chunks are layer 1's, not stored
        // again; built alone (then merged), layer 2 has its own copy in its own blob.
        let dupe = img.resolve(b"/a/dupe").unwrap().unwrap();
        let big = img.resolve(b"/big.bin").unwrap().unwrap();
        let (cd, cb) = (img.chunks(&dupe).unwrap(), img.chunks(&big).unwrap());
        if dedup {
            assert_eq!(cd, cb, "{what}: dedup against the parent");
        } else {
            assert!(cd.iter().flatten().all(|c| c.blob_index == 1), "{what}: layer 2's blob");
        }
        if require_tool(what, "fsck.erofs") {
            let devs: Vec<PathBuf> =
                img.blobs.iter().map(|b| self.blobs.join(&b.blob_id)).collect();
            fsck_erofs(boot, &devs).unwrap_or_else(|e| panic!("{what}: fsck: {e}"));
        }
        // Unpacked to a tar, the same tree.
        let out = self.path(&format!("{what}.tar"));
        strata(&["image", "unpack", "-B", s(boot), "-D", s(&self.blobs), "--output", s(&out)]);
        assert_same(
            &self.expected,
            &tar_snapshot(&out),
            Compare::default(),
            &format!("{what} tar"),
        );
    }
}

#[test]
fn oci_whiteouts_merge_of_tar_layers() {
    let l = Layers::new();
    let l2_boot = l.path("layer2.boot");
    strata(&[
        "image",
        "create",
        "-t",
        "tar-rafs",
        s(&l.l2_tar),
        "-B",
        s(&l2_boot),
        "-D",
        s(&l.blobs),
    ]);
    // Alone, layer 2 keeps its whiteouts as entries (there is nothing below to hide).
    let alone = Image::open(&l2_boot).unwrap();
    assert!(alone.resolve(b"/.wh.gone").unwrap().is_some());
    assert!(alone.resolve(b"/opq/.wh..wh..opq").unwrap().is_some());
    let merged = l.path("merged.boot");
    strata(&["image", "merge", s(&l.l1_boot), s(&l2_boot), "-B", s(&merged)]);
    l.check_merged(&merged, "merge", false);
}

#[test]
fn oci_whiteouts_layered_build_on_parent_bootstrap() {
    let l = Layers::new();
    let merged = l.path("layered.boot");
    strata(&[
        "image",
        "create",
        "-t",
        "tar-rafs",
        s(&l.l2_tar),
        "--parent-bootstrap",
        s(&l.l1_boot),
        "-B",
        s(&merged),
        "-D",
        s(&l.blobs),
    ]);
    l.check_merged(&merged, "layered", true);
}

#[test]
fn overlayfs_whiteouts_layered_build_from_dir() {
    if !require_root("overlayfs_whiteouts_layered_build_from_dir", "mknod 0/0, trusted.* xattrs") {
        return;
    }
    let l = Layers::new();
    let upper = l.path("upper");
    fs::create_dir(&upper).unwrap();
    to_overlay_dir(&layer2(), &upper);
    // The upper dir really is spelled the overlayfs way.
    let up = snapshot_dir(&upper);
    assert_eq!(up[b"gone".as_slice()].kind, 'c');
    assert_eq!(up[b"gone".as_slice()].rdev, (0, 0));
    assert_eq!(
        up[b"opq".as_slice()].xattrs.get(b"trusted.overlay.opaque".as_slice()).map(Vec::as_slice),
        Some(b"y".as_slice())
    );
    let merged = l.path("overlay.boot");
    strata(&[
        "image",
        "create",
        s(&upper),
        "--whiteout-spec",
        "overlayfs",
        "--parent-bootstrap",
        s(&l.l1_boot),
        "-B",
        s(&merged),
        "-D",
        s(&l.blobs),
    ]);
    l.check_merged(&merged, "overlayfs", true);
}

/// A layer tar may omit the entries of parent directories (many real layers do: `tar -c
/// dir/file`). containerd then leaves an existing lower directory as it is; only a missing
/// parent is created (0755). The merged image must not replace the lower directory's mode
/// and owner with those of a made-up parent.
#[test]
fn oci_upper_layer_without_parent_entry_keeps_lower_dir_attrs() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = tmp.path().join("blobs");
    let mut own = dir("owned", T1);
    (own.uid, own.gid, own.mode) = (1000, 1000, 0o750);
    let lower = vec![dir(".", T1), own, file("owned/f", b"lower\n", T1)];
    let upper = vec![dir(".", T2), file("owned/g", b"upper, no ./owned/ entry\n", T2)];
    let (t1, t2) = (to_tar(&lower), to_tar(&upper));
    let (l1_tar, l2_tar) = (tmp.path().join("l1.tar"), tmp.path().join("l2.tar"));
    fs::write(&l1_tar, &t1).unwrap();
    fs::write(&l2_tar, &t2).unwrap();
    let create = |tar: &Path, boot: &Path, parent: Option<&Path>| {
        let mut args =
            vec!["image", "create", "-t", "tar-rafs", s(tar), "-B", s(boot), "-D", s(&blobs)];
        if let Some(p) = parent {
            args.extend(["--parent-bootstrap", s(p)]);
        }
        strata(&args);
    };
    let (l1, l2) = (tmp.path().join("l1.boot"), tmp.path().join("l2.boot"));
    create(&l1_tar, &l1, None);
    create(&l2_tar, &l2, None);
    let merged = tmp.path().join("merged.boot");
    strata(&["image", "merge", s(&l1), s(&l2), "-B", s(&merged)]);
    let layered = tmp.path().join("layered.boot");
    create(&l2_tar, &layered, Some(&l1));

    let applied = tmp.path().join("applied");
    fs::create_dir(&applied).unwrap();
    apply_oci_tar(&t1, &applied);
    apply_oci_tar(&t2, &applied);
    let want = snapshot_dir(&applied);
    assert_eq!(want[b"owned".as_slice()].perm, 0o750);
    assert_eq!(want[b"owned".as_slice()].uid, 1000);
    // Relaxed: directory mtimes. containerd leaves "owned" with the time of the unpack (adding
    // "g" touches it and the tar has no entry to restore it from), which no image can hold.
    let cmp = Compare { dir_mtime: false, ..Compare::default() };
    let mut problems = Vec::new();
    for (what, boot) in [("merge", &merged), ("layered build", &layered)] {
        let img = Image::open(boot).unwrap();
        let got = snapshot_image(&img, &blob_reader(&img, &blobs));
        for d in common::diff(&want, &got, cmp) {
            problems.push(format!("{what}: {d}"));
        }
    }
    assert!(
        problems.is_empty(),
        "lower dir attrs replaced by a made-up parent:\n{}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Plain EROFS images from mkfs.erofs
// ---------------------------------------------------------------------------------------------

/// A source directory for mkfs.erofs: sizes around the block size, tiny inline files, a
/// symlink, subdirectories, xattrs (one value shared by several inodes, so mkfs.erofs puts it
/// in the shared xattr area unless told `-x-1`), odd modes and owners, and explicit mtimes.
fn erofs_source(root: &Path) {
    let files: [(&str, usize); 9] = [
        ("empty", 0),
        ("tiny", 5),
        ("small", 100),
        ("just-under-block", 4095),
        ("block", 4096),
        ("just-over-block", 4097),
        ("sub/mid", 10_000),
        ("sub/deeper/big", 300_000),
        ("sub/deeper/tail", 8192 + 17),
    ];
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir(root.join("emptydir")).unwrap();
    for (i, (p, n)) in files.iter().enumerate() {
        fs::write(root.join(p), noise(*n, i as u64 + 10)).unwrap();
    }
    std::os::unix::fs::symlink("sub/deeper/big", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/an/absolute/target/that/does/not/exist", root.join("abs"))
        .unwrap();
    fs::hard_link(root.join("small"), root.join("small.hard")).unwrap();
    for p in ["tiny", "sub/mid", "sub", "block"] {
        xattr::set(root.join(p), "user.shared", b"the same value everywhere").unwrap();
    }
    xattr::set(root.join("tiny"), "user.only", b"1").unwrap();
    xattr::set(root.join("sub/deeper/big"), "trusted.big", &[0u8, 1, 2, 255]).unwrap();
    fs::set_permissions(root.join("just-over-block"), fs::Permissions::from_mode(0o4750)).unwrap();
    std::os::unix::fs::lchown(root.join("sub/mid"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("link"), Some(42), Some(43)).unwrap();
    let mut all: Vec<PathBuf> =
        snapshot_dir(root).keys().map(|k| root.join(OsStr::from_bytes(k))).collect();
    // Children before parents, so setting a child does not move its parent's mtime.
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_500_000_000 + i as u64 * 1000);
    }
}

fn mkfs_erofs(args: &[&str], out: &Path, src: &Path) {
    let o = std::process::Command::new("mkfs.erofs").args(args).arg(out).arg(src).output().unwrap();
    assert!(
        o.status.success(),
        "mkfs.erofs {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Inodes whose xattr area references shared xattrs (`h_shared_count` > 0).
fn shared_xattr_refs(img: &Image) -> usize {
    let mut n = 0;
    img.walk::<ReadError>(|_, inode| {
        if inode.disk.xattr_size() > 0 {
            let at = (inode.offset + inode.disk.disk_size() as u64) as usize;
            n += usize::from(img.bytes()[at + 4] > 0);
        }
        Ok(true)
    })
    .unwrap();
    n
}

/// Build `src` with mkfs.erofs `args`, read it back without blobs, compare with `cmp`; also
/// `image check` and `image unpack` (no blob dir needed for a plain image). Returns the image.
fn mkfs_erofs_round_trip(args: &[&str], cmp: Compare) -> Image {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    erofs_source(&src);
    let want = snapshot_dir(&src);
    let what = format!("mkfs.erofs {args:?}");
    let img_path = tmp.path().join("plain.img");
    mkfs_erofs(args, &img_path, &src);
    let img = Image::open(&img_path).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(img.kind, ImageKind::Erofs);
    assert!(img.blobs.is_empty());
    let empty = tmp.path().join("no-blobs");
    fs::create_dir(&empty).unwrap();
    let got = snapshot_image(&img, &blob_reader(&img, &empty));
    assert_same(&want, &got, cmp, &what);
    strata(&["image", "check", "-B", s(&img_path)]);
    let out = tmp.path().join("out.tar");
    strata(&["image", "unpack", "-B", s(&img_path), "--output", s(&out)]);
    assert_same(&want, &tar_snapshot(&out), cmp, &format!("{what}, unpacked"));
    if require_tool(&what, "fsck.erofs") {
        fsck_erofs(&img_path, &[]).unwrap_or_else(|e| panic!("{what}: fsck: {e}"));
    }
    img
}

/// mkfs.erofs 1.5 by default moves an xattr that several inodes carry into the shared xattr
/// area (here user.shared, on four inodes). It is read back like an inline one.
#[test]
fn mkfs_erofs_default_image_with_shared_xattrs_reads_as_source() {
    if !require_tool("mkfs_erofs_default_image_with_shared_xattrs_reads_as_source", "mkfs.erofs") {
        return;
    }
    let img = mkfs_erofs_round_trip(&[], Compare::default());
    assert!(shared_xattr_refs(&img) >= 4, "mkfs.erofs shares user.shared");
}

/// A high xattr tolerance keeps every xattr inline.
#[test]
fn mkfs_erofs_image_with_inline_xattrs_reads_as_source() {
    if !require_tool("mkfs_erofs_image_with_inline_xattrs_reads_as_source", "mkfs.erofs") {
        return;
    }
    let img = mkfs_erofs_round_trip(&["-x100"], Compare::default());
    assert_eq!(shared_xattr_refs(&img), 0, "-x100 keeps xattrs inline");
}

/// `-x-1` is not "no shared xattrs" but "no xattrs at all" (mkfs.erofs: "< 0, disable
/// xattrs"), so xattrs are relaxed here, and the image must indeed have none.
#[test]
fn mkfs_erofs_image_without_xattrs_reads_as_source() {
    if !require_tool("mkfs_erofs_image_without_xattrs_reads_as_source", "mkfs.erofs") {
        return;
    }
    let img = mkfs_erofs_round_trip(&["-x-1"], Compare { xattrs: false, ..Compare::default() });
    img.walk::<ReadError>(|p, inode| {
        assert!(
            img.xattrs(inode)?.is_empty(),
            "{}: -x-1 stores no xattrs",
            String::from_utf8_lossy(p)
        );
        Ok(true)
    })
    .unwrap();
}

/// Sanity of the test helpers themselves: a tar written by `to_tar` reads back with the
/// attributes given.
#[test]
fn test_layer_tars_hold_what_they_say() {
    let snap = snapshot_tar(to_tar(&layer1()).as_slice());
    let root = &snap[b"".as_slice()];
    assert_eq!((root.kind, root.perm, root.mtime.0), ('d', 0o755, T1 as i64));
    let keep = &snap[b"keep".as_slice()];
    let want: BTreeMap<Vec<u8>, Vec<u8>> =
        [(b"user.k".to_vec(), b"v1".to_vec())].into_iter().collect();
    assert_eq!(keep.xattrs, want);
    assert_eq!(snap[b"owned".as_slice()].uid, 1000);
    assert_eq!(snap[b"hl2".as_slice()].link_group.as_deref(), Some(b"hl1".as_slice()));
}
