//! Malformed input must be rejected with an error, never a panic, a hang or wrong bytes.
//!
//! tests/fixtures/should-fail/*.boot are bootstraps with one thing wrong each, named by what
//! is wrong. `malformed_fixtures_match_their_generator` rebuilds them from a small valid image
//! (built here with the binary; builds are repeatable) by patching the bytes of the structure
//! named, located by parsing the valid image with the reader and strata::rafs::layout; so each
//! file stays explainable. Set STRATA_BLESS=1 to (re)write the committed files.
mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{only_blob, require_tool, strata, strata_fails};
use proptest::prelude::*;
use strata::rafs::check::check;
use strata::rafs::chunk::{ChunkError, ChunkReader, ChunkRef};
use strata::rafs::layout::{self as l, data_layout};
use strata::rafs::reader::{Image, Inode, ReadError};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/should-fail")
}

fn put16(b: &mut [u8], at: u64, v: u16) {
    b[at as usize..at as usize + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: u64, v: u32) {
    b[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: u64, v: u64) {
    b[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}
fn get16(b: &[u8], at: u64) -> u16 {
    u16::from_le_bytes([b[at as usize], b[at as usize + 1]])
}

const MTIME: u64 = 1_690_000_000;

/// A tar for the base image: nested directories (for a cycle), a file of three 4 KiB chunks,
/// a file with an xattr, a symlink, and enough names in the root for dirent games.
fn base_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>,
               name: &str,
               kind: tar::EntryType,
               data: &[u8],
               target: Option<&str>| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        match target {
            Some(t) => b.append_link(&mut h, name, t).unwrap(),
            None => b.append_data(&mut h, name, data).unwrap(),
        }
    };
    add(&mut b, "d/", tar::EntryType::Directory, b"", None);
    add(&mut b, "d/sub/", tar::EntryType::Directory, b"", None);
    add(&mut b, "d/f", tar::EntryType::Regular, b"in d\n", None);
    add(&mut b, "d/sub/g", tar::EntryType::Regular, b"in d/sub\n", None);
    let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    add(&mut b, "big", tar::EntryType::Regular, &big, None);
    add(&mut b, "link", tar::EntryType::Symlink, b"", Some("d/f"));
    add(&mut b, "plain", tar::EntryType::Regular, b"plain\n", None);
    b.append_pax_extensions([("SCHILY.xattr.user.note", b"a note on x".as_slice())]).unwrap();
    add(&mut b, "x", tar::EntryType::Regular, b"has an xattr\n", None);
    b.into_inner().unwrap()
}

/// Build the base image into `dir`; returns (bootstrap path, blob dir).
fn build_base(dir: &Path) -> (PathBuf, PathBuf) {
    let tar_path = dir.join("base.tar");
    fs::write(&tar_path, base_tar()).unwrap();
    let boot = dir.join("base.boot");
    let blobs = dir.join("blobs");
    strata(&[
        "image",
        "create",
        "-t",
        "tar-rafs",
        s(&tar_path),
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--chunk-size",
        "0x1000",
    ]);
    (boot, blobs)
}

fn inode(img: &Image, path: &str) -> Inode {
    img.resolve(path.as_bytes()).unwrap().unwrap_or_else(|| panic!("{path} in base image"))
}

/// Byte offset of the first block of directory data of `dir`.
fn dir_data(dir: &Inode) -> u64 {
    let head = (dir.disk.disk_size() + dir.disk.xattr_size()) as u64;
    match dir.disk.layout {
        data_layout::FLAT_INLINE if dir.disk.size < l::BLOCK_SIZE => dir.offset + head,
        data_layout::FLAT_INLINE | data_layout::FLAT_PLAIN => u64::from(dir.disk.u) * l::BLOCK_SIZE,
        other => panic!("directory layout {other}"),
    }
}

/// Offset of the dirent record named `name` in `dir` (first block only).
fn dirent_at(img: &Image, dir: &Inode, name: &str) -> u64 {
    let i = img
        .dir_entries(dir)
        .unwrap()
        .iter()
        .position(|e| e.name == name.as_bytes())
        .unwrap_or_else(|| panic!("no entry {name}"));
    let at = dir_data(dir) + (i * l::DIRENT_SIZE) as u64;
    // Cross-check against the layout struct.
    let d = l::Dirent::decode(&img.bytes()[at as usize..]).unwrap();
    assert_eq!(d.nid, img.dir_entries(dir).unwrap()[i].nid);
    at
}

/// Offset of the chunk index array of a chunk-based file.
fn chunk_indexes_at(f: &Inode) -> u64 {
    assert_eq!(f.disk.layout, data_layout::CHUNK_BASED);
    l::align_up(f.offset + (f.disk.disk_size() + f.disk.xattr_size()) as u64, 8)
}

type Patch = fn(&Image, &mut Vec<u8>);

/// Every malformed fixture: file name, how it is made from the base image, and a word the
/// error must contain.
fn malformations() -> Vec<(&'static str, Patch, &'static str)> {
    vec![
        // The EROFS superblock (1024..1152) is cut off.
        ("truncated-at-1100.boot", |_, b| b.truncate(1100), "superblock"),
        ("bad-magic.boot", |_, b| put32(b, l::EROFS_SB_OFFSET, 0x1234_5678), "magic"),
        // The root inode's mode says regular file.
        (
            "root-not-dir.boot",
            |img, b| {
                let root = img.root().unwrap();
                put16(b, root.offset + 4, (libc::S_IFREG | 0o644) as u16);
            },
            "not a directory",
        ),
        // The root's entry "d" names an inode far past the end of the image.
        (
            "dirent-nid-past-end.boot",
            |img, b| {
                let at = dirent_at(img, &img.root().unwrap(), "d");
                let far = b.len() as u64 / l::INODE_SLOT_SIZE * 4;
                put64(b, at, far);
            },
            "past the end",
        ),
        // d/sub points back at the root directory.
        (
            "dir-cycle.boot",
            |img, b| {
                let at = dirent_at(img, &inode(img, "/d"), "sub");
                put64(b, at, img.root().unwrap().nid);
            },
            "cycle",
        ),
        // big's first chunk names chunk 0xffffff of its blob; the table has a handful.
        (
            "chunk-index-past-table.boot",
            |img, b| {
                let at = chunk_indexes_at(&inode(img, "/big"));
                put16(b, at, 0xffff);
                b[at as usize + 3] = 0xff;
            },
            "past the chunk table",
        ),
        (
            "blob-table-offset-past-end.boot",
            |_, b| {
                let past = b.len() as u64 + 4096;
                put64(b, l::RAFS_EXT_SB_OFFSET + 8, past);
            },
            "blob table",
        ),
        (
            "chunk-table-size-not-multiple.boot",
            |img, b| {
                let size = img.ext.as_ref().unwrap().chunk_table_size;
                put64(b, l::RAFS_EXT_SB_OFFSET + 32, size + 1);
            },
            "multiple of 80",
        ),
        // big claims u64::MAX bytes: far more chunk indexes than the image holds.
        (
            "inode-size-huge.boot",
            |img, b| {
                let f = inode(img, "/big");
                assert!(f.disk.extended);
                put64(b, f.offset + 8, u64::MAX);
            },
            "chunk indexes",
        ),
        // x's first xattr entry claims a 65535-byte value.
        (
            "xattr-overrun.boot",
            |img, b| {
                let f = inode(img, "/x");
                assert!(f.disk.xattr_size() > l::XATTR_IBODY_HEADER_SIZE);
                let entry =
                    f.offset + f.disk.disk_size() as u64 + l::XATTR_IBODY_HEADER_SIZE as u64;
                put16(b, entry + 2, 0xffff);
            },
            "overruns",
        ),
        // big's first chunk is on device 0: the bootstrap itself, never a RAFS data blob.
        (
            "device-id-zero.boot",
            |img, b| {
                let at = chunk_indexes_at(&inode(img, "/big"));
                b[at as usize + 2] = 0;
            },
            "device id 0",
        ),
        // The root's third name starts after the fourth's.
        (
            "name-offsets-out-of-order.boot",
            |img, b| {
                let root = img.root().unwrap();
                let base = dir_data(&root);
                let third = get16(b, base + 2 * l::DIRENT_SIZE as u64 + 8);
                let fourth = get16(b, base + 3 * l::DIRENT_SIZE as u64 + 8);
                assert!(third < fourth);
                put16(b, base + 2 * l::DIRENT_SIZE as u64 + 8, fourth + 1);
            },
            "out of order",
        ),
    ]
}

/// Generate every malformed bootstrap from a freshly built base image.
fn generate() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let tmp = tempfile::tempdir().unwrap();
    let (boot, _) = build_base(tmp.path());
    let bytes = fs::read(&boot).unwrap();
    let img = Image::from_bytes(bytes.clone()).unwrap();
    check(&img, None).expect("the base image is valid");
    malformations()
        .into_iter()
        .map(|(name, patch, word)| {
            let mut b = bytes.clone();
            patch(&img, &mut b);
            assert_ne!(b, bytes, "{name}: the patch changed nothing");
            (name, b, word)
        })
        .collect()
}

#[test]
fn malformed_fixtures_match_their_generator() {
    let dir = fixture_dir();
    let bless = std::env::var_os("STRATA_BLESS").is_some();
    if bless {
        fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes, _) in generate() {
        let path = dir.join(name);
        if bless {
            fs::write(&path, &bytes).unwrap();
            continue;
        }
        let committed = fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (STRATA_BLESS=1 writes it)", path.display()));
        assert!(
            committed == bytes,
            "{name}: the committed file differs from what the generator makes \
             (the writer's output changed? re-run with STRATA_BLESS=1 and review)"
        );
    }
}

/// Open, fully check, and walk reading everything; the first error wins.
fn open_and_check(bytes: Vec<u8>) -> Result<(), ReadError> {
    let img = Image::from_bytes(bytes)?;
    check(&img, None)?;
    Ok(())
}

#[test]
fn every_malformed_fixture_is_rejected_with_an_error() {
    let dir = fixture_dir();
    let names: Vec<&str> = malformations().iter().map(|m| m.0).collect();
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(on_disk, want, "fixture files and generator list agree");
    for (name, _, word) in malformations() {
        let path = dir.join(name);
        let bytes = fs::read(&path).unwrap();
        // Through the file mapping and through memory: both must fail cleanly.
        let by_path =
            catch_unwind(|| Image::open(&path).and_then(|img| check(&img, None).map(|_| ())))
                .unwrap_or_else(|_| panic!("{name}: Image::open + check panicked"));
        let err = by_path.expect_err(name).to_string();
        assert!(err.contains(word), "{name}: error {err:?} should mention {word:?}");
        let in_mem = catch_unwind(|| open_and_check(bytes))
            .unwrap_or_else(|_| panic!("{name}: from_bytes + check panicked"));
        assert_eq!(in_mem.expect_err(name).to_string(), err, "{name}: same error either way");

        let stderr = strata_fails(&["image", "check", "-B", s(&path)]);
        assert!(stderr.starts_with("error: "), "{name}: {stderr:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: one line: {stderr:?}");
        assert!(stderr.contains(word), "{name}: {stderr:?} should mention {word:?}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Corrupted chunk data
// ---------------------------------------------------------------------------------------------

/// A file of 3 chunks; each chunk compressible (so the default zstd compresses it).
fn data_file() -> Vec<u8> {
    (0..12_000u32).map(|i| b"corruption test "[(i % 16) as usize] ^ (i / 4000) as u8).collect()
}

/// Build an image of one file `f` with `compressor`; flip one byte in the middle of the
/// second chunk's stored bytes; returns (tmp, boot, blob dir).
fn corrupted(compressor: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let data = data_file();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "f", data.as_slice()).unwrap();
    let tar_path = tmp.path().join("l.tar");
    fs::write(&tar_path, b.into_inner().unwrap()).unwrap();
    let boot = tmp.path().join("l.boot");
    let blobs = tmp.path().join("blobs");
    strata(&[
        "image",
        "create",
        "-t",
        "tar-rafs",
        s(&tar_path),
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--chunk-size",
        "0x1000",
        "--compressor",
        compressor,
    ]);
    strata(&["image", "check", "-B", s(&boot), "-D", s(&blobs)]);
    let img = Image::open(&boot).unwrap();
    let f = img.resolve(b"/f").unwrap().unwrap();
    let c = img.chunks(&f).unwrap()[1].expect("second chunk");
    assert_eq!(c.compressed, compressor != "none", "{compressor}: chunk stored as expected");
    let blob = only_blob(&blobs);
    let mut bytes = fs::read(&blob).unwrap();
    let at = (c.compressed_offset + u64::from(c.compressed_size) / 2) as usize;
    bytes[at] ^= 0x5a;
    let mut perm = fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&blob, perm).unwrap();
    fs::write(&blob, bytes).unwrap();
    (tmp, boot, blobs)
}

fn corrupted_chunk_is_caught(compressor: &str) {
    let (tmp, boot, blobs) = corrupted(compressor);
    let err = strata_fails(&["image", "check", "-B", s(&boot), "-D", s(&blobs)]);
    assert!(
        err.contains("digest mismatch") || err.contains("decompression failed"),
        "{compressor}: check should name the bad chunk: {err}"
    );
    assert!(err.contains("1 of 3 chunks failed"), "{compressor}: {err}");

    // Unpack to a tar fails and leaves no tar behind.
    let out = tmp.path().join("out.tar");
    let err =
        strata_fails(&["image", "unpack", "-B", s(&boot), "-D", s(&blobs), "--output", s(&out)]);
    assert!(err.starts_with("error:"), "{compressor}: {err}");
    assert!(!out.exists(), "{compressor}: a tar was written despite the bad chunk");

    // Unpack to a directory fails; what was written of f is a correct prefix, never wrong bytes.
    let dir = tmp.path().join("out");
    strata_fails(&["image", "unpack", "-B", s(&boot), "-D", s(&blobs), "--output-dir", s(&dir)]);
    if let Ok(got) = fs::read(dir.join("f")) {
        let want = data_file();
        assert!(got.len() <= 4096, "{compressor}: {} bytes written past the bad chunk", got.len());
        assert_eq!(got, want[..got.len()], "{compressor}: wrong bytes written");
    }

    // The library: reading f is an error, reading the intact first chunk still works.
    let img = Image::open(&boot).unwrap();
    let src = common::blob_reader(&img, &blobs);
    let f = img.resolve(b"/f").unwrap().unwrap();
    assert!(img.read(&f, 0, f.disk.size, &src).is_err(), "{compressor}");
    assert_eq!(img.read(&f, 0, 4096, &src).unwrap(), data_file()[..4096], "{compressor}");
    let r = check(&img, Some(&src)).unwrap();
    assert_eq!((r.chunks, r.chunks_verified, r.chunk_errors.len()), (3, 2, 1), "{compressor}");
}

#[test]
fn corrupted_zstd_chunk_fails_check_and_unpack() {
    corrupted_chunk_is_caught("zstd");
}

#[test]
fn corrupted_lz4_chunk_fails_check_and_unpack() {
    corrupted_chunk_is_caught("lz4_block");
}

#[test]
fn corrupted_uncompressed_chunk_fails_check_and_unpack() {
    corrupted_chunk_is_caught("none");
}

// ---------------------------------------------------------------------------------------------
// Flat (in-image) file data with an absurd size
// ---------------------------------------------------------------------------------------------

/// A chunk reader that never has data.
struct NoData;

impl ChunkReader for NoData {
    fn read_chunk(&self, c: &ChunkRef) -> Result<Arc<Vec<u8>>, ChunkError> {
        Err(ChunkError::Io {
            blob_id: "none".into(),
            index: c.index,
            source: std::io::Error::other("no data in this test"),
        })
    }
}

/// A plain EROFS image (mkfs.erofs) whose regular file "f" (FLAT_PLAIN, 3 blocks) or "t"
/// (FLAT_INLINE, 5 bytes) is patched to `size`.
fn erofs_with_size(name: &str, size: u64) -> Option<(Vec<u8>, u64)> {
    if !require_tool("flat file size tests", "mkfs.erofs") {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), vec![7u8; 3 * 4096]).unwrap();
    fs::write(src.join("t"), b"tiny\n").unwrap();
    let img_path = tmp.path().join("e.img");
    let o = std::process::Command::new("mkfs.erofs").arg(&img_path).arg(&src).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut bytes = fs::read(&img_path).unwrap();
    let img = Image::from_bytes(bytes.clone()).unwrap();
    let f = img.resolve(format!("/{name}").as_bytes()).unwrap().unwrap();
    assert!(f.disk.extended, "mkfs.erofs keeps mtimes in extended inodes");
    put64(&mut bytes, f.offset + 8, size);
    Some((bytes, f.nid))
}

/// Read `len` bytes at 0 of inode `nid` of `bytes`, catching panics.
fn read_flat(
    bytes: Vec<u8>,
    nid: u64,
    len: Option<u64>,
) -> std::thread::Result<Result<usize, ReadError>> {
    catch_unwind(move || {
        let img = Image::from_bytes(bytes)?;
        let f = img.inode(nid)?;
        let len = len.unwrap_or(f.disk.size);
        img.read(&f, 0, len, &NoData).map(|v| v.len())
    })
}

/// A FLAT_PLAIN file claiming u64::MAX bytes: its data would start at block `i_u` and run far
/// past the image. Reading its first block must be an error (or at most the bytes in the
/// image), not an arithmetic overflow.
#[test]
fn flat_file_with_size_near_u64_max_read_is_an_error_not_a_panic() {
    let Some((bytes, nid)) = erofs_with_size("f", u64::MAX) else { return };
    let r = read_flat(bytes, nid, Some(4096));
    assert!(r.is_ok(), "Image::read of a FLAT_PLAIN file with size u64::MAX panicked");
}

/// A FLAT_PLAIN file claiming u64::MAX - 4095 bytes starting at block u32::MAX, read near its
/// claimed end (a FUSE read at a large offset): the block address arithmetic must not
/// overflow.
#[test]
fn flat_file_read_at_huge_offset_is_an_error_not_a_panic() {
    let Some((mut bytes, nid)) = erofs_with_size("f", u64::MAX - 4095) else { return };
    let off = Image::from_bytes(bytes.clone()).unwrap().inode(nid).unwrap().offset;
    put32(&mut bytes, off + 16, u32::MAX);
    let r = catch_unwind(move || {
        let img = Image::from_bytes(bytes)?;
        let f = img.inode(nid)?;
        img.read(&f, u64::MAX - 2 * 4096, 4096, &NoData).map(|v| v.len())
    });
    assert!(r.is_ok(), "Image::read at offset 2^64 - 8192 of a FLAT_PLAIN file panicked");
    assert!(r.unwrap().is_err(), "block u32::MAX + 2^52 is not in the image");
}

/// A FLAT_PLAIN file of a plain EROFS image claiming 2^40 bytes: its data blocks run far past
/// the end of the image, which the metadata check should report (as it does for a chunk-based
/// file whose chunk indexes run past the end).
#[test]
fn check_rejects_flat_file_whose_data_runs_past_the_image() {
    let Some((bytes, nid)) = erofs_with_size("f", 1 << 40) else { return };
    let r = read_flat(bytes.clone(), nid, Some(4 << 20)).expect("no panic");
    assert!(r.is_err(), "reading past the image is an error");
    let checked = catch_unwind(|| open_and_check(bytes)).expect("check must not panic");
    assert!(
        checked.is_err(),
        "check accepts a plain EROFS file whose data blocks run past the end of the image"
    );
}

/// Sizes of regular files are summed into the check report. A file claiming
/// u64::MAX - 4095 bytes after others must give an error (its chunk indexes run past the
/// image), not an arithmetic overflow while adding up the sizes.
#[test]
fn check_with_file_sizes_summing_past_u64_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (boot, _) = build_base(tmp.path());
    let mut bytes = fs::read(&boot).unwrap();
    let img = Image::from_bytes(bytes.clone()).unwrap();
    // "x" is walked after "big" and "plain", whose sizes are already counted.
    let x = inode(&img, "/x");
    assert!(x.disk.extended);
    put64(&mut bytes, x.offset + 8, u64::MAX - 4095);
    let r = catch_unwind(|| open_and_check(bytes));
    assert!(r.is_ok(), "check panicked summing file sizes");
    assert!(r.unwrap().is_err(), "x's chunk indexes run past the image");
}

/// A FLAT_INLINE file claiming 2^63 + 5 bytes, read whole (`read(inode, 0, size)`, as
/// snapshot/export code does): the reader must not reserve the claimed size up front.
#[test]
fn flat_file_read_whole_with_absurd_size_is_an_error_not_a_panic() {
    let Some((bytes, nid)) = erofs_with_size("t", (1 << 63) + 5) else { return };
    let r = read_flat(bytes, nid, None);
    assert!(
        r.is_ok(),
        "Image::read(inode, 0, size) of a FLAT_INLINE file of 2^63+5 bytes panicked"
    );
    assert!(r.unwrap().is_err(), "a 2^63-byte file cannot be read from a small image");
}

// ---------------------------------------------------------------------------------------------
// Random mutations
// ---------------------------------------------------------------------------------------------

/// Where a mutation lands.
#[derive(Clone, Copy, Debug)]
enum Region {
    /// The first 8 KiB: superblocks, device, blob and prefetch tables.
    Head,
    /// The inode area (inodes, xattrs, chunk indexes, inline dirents).
    Inodes,
    /// A field of a real inode (or its xattr or chunk index area just after it).
    InodeField,
    /// Anywhere.
    Anywhere,
}

#[derive(Clone, Debug)]
enum Op {
    Flip { region: Region, pos: u32, mask: u8 },
    Put32 { region: Region, pos: u32, value: u32 },
    Put64 { region: Region, pos: u32, value: u64 },
    Truncate { pos: u32 },
}

const B32: [u32; 12] =
    [0, 1, 2, 0x7f, 0x80, 0xff, 0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, u32::MAX - 1, u32::MAX];
const B64: [u64; 12] = [
    0,
    1,
    4095,
    4096,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 4095,
    u64::MAX - 1,
    u64::MAX,
];

fn region() -> impl Strategy<Value = Region> {
    prop_oneof![
        3 => Just(Region::Head),
        3 => Just(Region::Inodes),
        3 => Just(Region::InodeField),
        1 => Just(Region::Anywhere),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (region(), any::<u32>(), 1u8..=255).prop_map(|(region, pos, mask)| Op::Flip { region, pos, mask }),
        3 => (region(), any::<u32>(), prop::sample::select(B32.to_vec()).boxed().prop_union(any::<u32>().boxed()))
            .prop_map(|(region, pos, value)| Op::Put32 { region, pos, value }),
        2 => (region(), any::<u32>(), prop::sample::select(B64.to_vec()).boxed().prop_union(any::<u64>().boxed()))
            .prop_map(|(region, pos, value)| Op::Put64 { region, pos, value }),
        1 => any::<u32>().prop_map(|pos| Op::Truncate { pos }),
    ]
}

/// A valid bootstrap to mutate, with the span of its inode area.
struct Base {
    name: &'static str,
    bytes: Vec<u8>,
    inodes: std::ops::Range<u64>,
    /// Offsets of the inodes reachable from the root.
    inode_offsets: Vec<u64>,
    /// Blob dir with the real data, if small enough to read in every case.
    blobs: Option<PathBuf>,
}

impl Base {
    fn new(name: &'static str, bytes: Vec<u8>, blobs: Option<PathBuf>) -> Self {
        let img = Image::from_bytes(bytes.clone()).unwrap();
        let start =
            u64::from(img.sb.meta_blkaddr) * l::BLOCK_SIZE + u64::from(img.sb.root_nid) * 32;
        let ct = img.ext.as_ref().map_or(0, |e| e.chunk_table_offset);
        let end = if ct > start { ct } else { bytes.len() as u64 };
        let mut inode_offsets = Vec::new();
        img.walk::<ReadError>(|_, i| {
            inode_offsets.push(i.offset);
            Ok(true)
        })
        .unwrap();
        Base { name, bytes, inodes: start..end, inode_offsets, blobs }
    }

    /// Apply `ops`; returns the bytes and the resolved (op, offset) list for messages.
    fn mutate(&self, ops: &[Op]) -> (Vec<u8>, Vec<String>) {
        let mut b = self.bytes.clone();
        let mut log = Vec::new();
        for op in ops {
            let len = b.len() as u64;
            if len < 8 {
                break;
            }
            let at = |region: Region, pos: u32, width: u64| -> u64 {
                if let Region::InodeField = region {
                    // Field offsets of compact and extended inodes, the xattr header and
                    // first entry, and the first chunk indexes after either form.
                    const FIELDS: [u64; 16] =
                        [0, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 64, 68];
                    let n = self.inode_offsets.len() as u64;
                    let base = self.inode_offsets[(u64::from(pos) % n) as usize];
                    let field = FIELDS[(u64::from(pos) / n % FIELDS.len() as u64) as usize];
                    return (base + field).min(len - width);
                }
                let (lo, hi) = match region {
                    Region::InodeField => unreachable!(),
                    Region::Head => (0, len.min(8192)),
                    Region::Inodes => (self.inodes.start.min(len), self.inodes.end.min(len)),
                    Region::Anywhere => (0, len),
                };
                let span = hi.saturating_sub(lo).saturating_sub(width - 1).max(1);
                (lo + u64::from(pos) % span).min(len - width)
            };
            match *op {
                Op::Flip { region, pos, mask } => {
                    let o = at(region, pos, 1);
                    b[o as usize] ^= mask;
                    log.push(format!("flip {mask:#04x} at {o}"));
                }
                Op::Put32 { region, pos, value } => {
                    let o = at(region, pos, 4);
                    put32(&mut b, o, value);
                    log.push(format!("u32 {value:#x} at {o}"));
                }
                Op::Put64 { region, pos, value } => {
                    let o = at(region, pos, 8);
                    put64(&mut b, o, value);
                    log.push(format!("u64 {value:#x} at {o}"));
                }
                Op::Truncate { pos } => {
                    let n = u64::from(pos) % len;
                    b.truncate(n as usize);
                    log.push(format!("truncate to {n}"));
                }
            }
        }
        (b, log)
    }
}

/// Everything a consumer might do with an image, errors ignored: check, walk with xattrs,
/// directory listings, symlinks, chunk lists, lookups, and reading every regular file (in 1
/// MiB pieces, at most 8 per file, as unpack does) through `src`. Returns (opened, checked).
fn exercise(bytes: Vec<u8>, src: &dyn ChunkReader) -> (bool, bool) {
    let Ok(img) = Image::from_bytes(bytes) else { return (false, false) };
    let checked = check(&img, None).is_ok();
    let _ = check(&img, Some(src));
    let _ = img.all_chunks();
    let _ = img.resolve(b"/d/sub/g");
    let _ = img.resolve(b"/usr/lib/big.bin");
    let _ = img.walk::<ReadError>(|_, inode| {
        let _ = img.xattrs(inode);
        if inode.is_dir() {
            if let Ok(entries) = img.dir_entries(inode) {
                if let Some(e) = entries.last() {
                    let _ = img.lookup(inode, &e.name);
                }
            }
        } else if inode.file_type() == libc::S_IFLNK {
            let _ = img.readlink(inode);
        } else if inode.is_reg() {
            let _ = img.chunks(inode);
            let mut off = 0;
            for _ in 0..8 {
                match img.read(inode, off, 1 << 20, src) {
                    Ok(v) if !v.is_empty() => off += v.len() as u64,
                    _ => break,
                }
            }
        }
        Ok(true)
    });
    (true, checked)
}

/// Run `cases` random mutation cases (fixed seed) over `bases`; every case must finish
/// without a panic. Returns how many mutated images opened and how many passed the check.
fn mutate_and_exercise(bases: &[Base], cases: u32) -> (u32, usize, usize) {
    // STRATA_FUZZ_CASES=n runs more (or fewer) cases, for a longer hunt by hand.
    let cases =
        std::env::var("STRATA_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let readers: Vec<Option<strata::storage::cache::DirectReader>> = bases
        .iter()
        .map(|b| {
            let img = Image::from_bytes(b.bytes.clone()).unwrap();
            b.blobs.as_ref().map(|d| common::blob_reader(&img, d))
        })
        .collect();
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..ProptestConfig::default()
    };
    // A fixed seed: the same cases every run.
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &[0x5a; 32],
        ),
    );
    let (opened, checked) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let strategy = (0..bases.len(), prop::collection::vec(op(), 1..6));
    let result = runner.run(&strategy, |(which, ops)| {
        let base = &bases[which];
        let (bytes, log) = base.mutate(&ops);
        let b2 = bytes.clone();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let r = exercise(bytes, &NoData);
            if let Some(src) = &readers[which] {
                exercise(b2, src);
            }
            r
        }));
        prop_assert!(
            outcome.is_ok(),
            "{}: panicked after mutations [{}]",
            base.name,
            log.join(", ")
        );
        let (o, c) = outcome.unwrap();
        opened.fetch_add(usize::from(o), Relaxed);
        checked.fetch_add(usize::from(c), Relaxed);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    (cases, opened.into_inner(), checked.into_inner())
}

/// Our base image (built into `tmp`, with its blob) and the nydus-image v6-default bootstrap.
fn rafs_bases(tmp: &Path) -> Vec<Base> {
    let (boot, blobs) = build_base(tmp);
    let nydus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nydus-image/v6-default/bootstrap");
    vec![
        Base::new("ours", fs::read(boot).unwrap(), Some(blobs)),
        Base::new("nydus v6-default", fs::read(nydus).unwrap(), None),
    ]
}

#[test]
fn random_mutations_of_rafs_bootstraps_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (cases, opened, checked) = mutate_and_exercise(&rafs_bases(tmp.path()), 300);
    eprintln!("{cases} mutated RAFS bootstraps: {opened} opened, {checked} passed the check");
    // The mutations must reach past the superblock checks to be worth anything.
    assert!(opened as u32 >= cases / 3, "only {opened} of {cases} mutated images opened");
}

/// The same over a plain EROFS image from mkfs.erofs (flat file data, inline tails, shared
/// xattrs), where file data is read from the image itself.
#[test]
fn random_mutations_of_plain_erofs_never_panic() {
    if !require_tool("random_mutations_of_plain_erofs_never_panic", "mkfs.erofs") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d/sub")).unwrap();
    fs::write(src.join("big"), (0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>()).unwrap();
    fs::write(src.join("tiny"), b"tiny\n").unwrap();
    fs::write(src.join("d/sub/g"), b"g\n").unwrap();
    std::os::unix::fs::symlink("d/sub/g", src.join("link")).unwrap();
    for p in ["big", "tiny", "d"] {
        xattr::set(src.join(p), "user.shared", b"on three inodes").unwrap();
    }
    let img_path = tmp.path().join("e.img");
    let o = std::process::Command::new("mkfs.erofs").arg(&img_path).arg(&src).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = Base::new("mkfs.erofs", fs::read(&img_path).unwrap(), None);
    let (cases, opened, checked) = mutate_and_exercise(&[base], 300);
    eprintln!("{cases} mutated EROFS images: {opened} opened, {checked} passed the check");
    assert!(opened as u32 >= cases / 3, "only {opened} of {cases} mutated images opened");
}
