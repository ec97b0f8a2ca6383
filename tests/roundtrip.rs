//! Whole-tree round trips. A fixture tree holding every kind of entry the builder accepts goes
//! through `strata image create` (directory and OCI tar sources, every compressor x digester)
//! and comes back through the reader, `image unpack` (directory and tar), `image check`,
//! `fsck.erofs` and the kernel's erofs driver; plus the blob properties the builder promises:
//! aligned uncompressed chunks, deduplication, layered builds and prefetch ordering.
//!
//! The fixture's large parts (a 10,000-entry directory, a 40 MiB sparse file) are made once
//! per test and every build of that test reads the same source. Tests work in a temporary
//! directory on tmpfs when /dev/shm allows (see `test_dir`); the kernel tests mount and attach
//! loop devices only under it, and a drop guard undoes both even when an assertion fails.
//! Without root, entries and tests that need it are left out and say so.

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::{
    assert_same, blob_reader, fsck_erofs, only_blob, require_root, require_tool, snapshot_dir,
    snapshot_image, snapshot_tar, strata, Compare, Entry, Snapshot,
};
use strata::rafs::reader::Image;

const SMALL_CHUNK: u64 = 0x1_0000;
const DEFAULT_CHUNK: u64 = 0x10_0000;
const SPARSE_SIZE: u64 = 40 << 20;
const BIG_DIR_ENTRIES: usize = 10_000;
const DEPTH: usize = 60;

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Deterministic incompressible bytes (xorshift64).
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// [`pseudo_random`] without newline bytes, for xattr values that must travel through tar
/// readers built on the `tar` crate, which splits PAX records at newlines (see
/// `tar_layer_with_a_newline_in_a_pax_xattr_value_builds`).
fn binary_value(seed: u64, len: usize) -> Vec<u8> {
    pseudo_random(seed, len).into_iter().map(|b| if b == b'\n' { 0x0b } else { b }).collect()
}

/// Deterministic compressible bytes.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = seed;
    while out.len() < len {
        out.extend_from_slice(format!("line {i} of a compressible text file\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

fn at(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

fn shown(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

fn put(root: &Path, rel: &[u8], data: &[u8]) {
    let path = at(root, rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir -p");
    fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn mkdir(root: &Path, rel: &[u8]) {
    let path = at(root, rel);
    fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn symlink(root: &Path, rel: &[u8], target: &[u8]) {
    let path = at(root, rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir -p");
    std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", path.display()));
}

fn hard_link(root: &Path, existing: &[u8], new: &[u8]) {
    let new = at(root, new);
    fs::create_dir_all(new.parent().expect("parent")).expect("mkdir -p");
    fs::hard_link(at(root, existing), &new)
        .unwrap_or_else(|e| panic!("link {}: {e}", new.display()));
}

fn chmod(root: &Path, rel: &[u8], mode: u32) {
    let path = at(root, rel);
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn chown(root: &Path, rel: &[u8], uid: u32, gid: u32) {
    let path = at(root, rel);
    std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
}

fn set_xattr(root: &Path, rel: &[u8], name: &str, value: &[u8]) {
    let path = at(root, rel);
    xattr::set(&path, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

fn mknod(root: &Path, rel: &[u8], kind: nix::sys::stat::SFlag, major: u64, minor: u64) {
    let path = at(root, rel);
    nix::sys::stat::mknod(
        &path,
        kind,
        nix::sys::stat::Mode::from_bits_truncate(0o640),
        nix::sys::stat::makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {}: {e}", path.display()));
}

/// Every entry under `root` (root included, as ""), parents before children, each directory's
/// entries in byte order. Symlinks are not followed.
fn list_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, rel: &[u8], out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("dirent").file_name())
            .collect();
        names.sort();
        for n in names {
            let path = dir.join(&n);
            let mut r = rel.to_vec();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(n.as_bytes());
            let is_dir = fs::symlink_metadata(&path).expect("lstat").is_dir();
            out.push((path.clone(), r.clone()));
            if is_dir {
                walk(&path, &r, out);
            }
        }
    }
    let mut out = vec![(root.to_path_buf(), Vec::new())];
    walk(root, b"", &mut out);
    out
}

/// Give every entry an mtime with nanoseconds (or the override for its path), deepest first so
/// that no later step changes a directory after its time is set. Symlinks are not followed.
fn stamp_times(root: &Path, overrides: &HashMap<Vec<u8>, (i64, i64)>) {
    let mut all = list_tree(root);
    all.sort_by_key(|(_, rel)| {
        let depth = if rel.is_empty() { 0 } else { 1 + rel.iter().filter(|&&b| b == b'/').count() };
        std::cmp::Reverse(depth)
    });
    for (i, (path, rel)) in all.iter().enumerate() {
        let i = i as i64;
        let (sec, nsec) = overrides.get(rel).copied().unwrap_or((
            1_500_000_000 + (i * 7_919) % 300_000_000,
            1 + (i * 104_729) % 999_999_998,
        ));
        let ts = nix::sys::time::TimeSpec::new(sec, nsec);
        nix::sys::stat::utimensat(
            None,
            path,
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
    }
}

/// The path of the deepest directory of the nesting fixture.
fn deep_dir() -> Vec<u8> {
    let mut rel = b"deep".to_vec();
    for i in 0..DEPTH {
        rel.extend_from_slice(format!("/level_{i:02}").as_bytes());
    }
    rel
}

/// Build the fixture tree at `root` (created). Entries that need root (device nodes, trusted.*
/// and security.* xattrs, foreign owners, a mode-000 file and directory) are made only when
/// running as root; otherwise they are left out.
fn make_tree(root: &Path) {
    use nix::sys::stat::SFlag;
    let privileged = is_root();
    mkdir(root, b"");

    // Regular files of every size class at both chunk sizes the tests build with.
    put(root, b"data/empty", b"");
    put(root, b"data/one_byte", b"x");
    put(root, b"data/chunk_small", &pseudo_random(1, SMALL_CHUNK as usize));
    put(root, b"data/chunk_default", &text(2, DEFAULT_CHUNK as usize));
    put(root, b"data/multi_small", &pseudo_random(3, (SMALL_CHUNK * 5 / 2) as usize));
    let mut mixed = pseudo_random(4, (DEFAULT_CHUNK * 5 / 4) as usize);
    mixed.extend_from_slice(&text(5, (DEFAULT_CHUNK * 5 / 4) as usize));
    put(root, b"data/multi_default", &mixed);
    put(root, b"data/chunk_small_minus_1", &pseudo_random(6, SMALL_CHUNK as usize - 1));
    put(root, b"data/chunk_small_plus_1", &pseudo_random(7, SMALL_CHUNK as usize + 1));
    let same = pseudo_random(8, (SMALL_CHUNK * 5 / 2) as usize);
    put(root, b"data/same_1", &same);
    put(root, b"data/same_2", &same);
    put(root, b"data/text", &text(9, 300_000));
    // 40 MiB, mostly holes: data at the start, in the middle, across a chunk boundary of both
    // chunk sizes (16 MiB), and a hole at the end.
    {
        let f = File::create(at(root, b"data/sparse")).expect("create sparse");
        f.write_all_at(b"head of a sparse file", 0).expect("write");
        f.write_all_at(&pseudo_random(10, 4096), (5 << 20) + 123).expect("write");
        f.write_all_at(&pseudo_random(11, 8192), (16 << 20) - 4096).expect("write");
        f.set_len(SPARSE_SIZE).expect("set_len");
    }

    // Symlinks: relative, absolute, dangling, to a directory, long targets.
    symlink(root, b"links/relative", b"../data/one_byte");
    symlink(root, b"links/absolute", b"/etc/hostname");
    symlink(root, b"links/dangling", b"does/not/exist");
    symlink(root, b"links/to_dir", b"../deep");
    let long: Vec<u8> = b"segment/".iter().copied().cycle().take(1000).collect();
    symlink(root, b"links/long_1000", &long);
    let longest: Vec<u8> = b"abcdefg/".iter().copied().cycle().take(4095).collect();
    symlink(root, b"links/long_4095", &longest);

    // Hardlinks: a pair in one directory, a triple over three directories.
    put(root, b"hard/pair_a", b"one inode, two names\n");
    hard_link(root, b"hard/pair_a", b"hard/pair_b");
    put(root, b"hard/triple_1", &pseudo_random(12, 0x1_8000));
    hard_link(root, b"hard/triple_1", b"hard/sub/triple_2");
    hard_link(root, b"hard/triple_1", b"other_dir/triple_3");

    // Special files.
    mkdir(root, b"special");
    nix::unistd::mkfifo(
        &at(root, b"special/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    drop(std::os::unix::net::UnixListener::bind(at(root, b"special/socket")).expect("bind"));
    if privileged {
        mknod(root, b"special/null", SFlag::S_IFCHR, 1, 3);
        mknod(root, b"special/loop200", SFlag::S_IFBLK, 7, 200);
        mknod(root, b"special/wide_numbers", SFlag::S_IFCHR, 259, 300_000);
    }

    // Extended attributes, including an empty value and a 1000-byte value.
    put(root, b"xattrs/file", b"has xattrs\n");
    set_xattr(root, b"xattrs/file", "user.plain", b"value");
    set_xattr(root, b"xattrs/file", "user.empty", b"");
    set_xattr(root, b"xattrs/file", "user.big", &binary_value(13, 1000));
    mkdir(root, b"xattrs/dir");
    set_xattr(root, b"xattrs/dir", "user.on_dir", b"dir value");
    symlink(root, b"xattrs/link", b"file");
    set_xattr(root, b"", "user.on_root", b"root value");
    if privileged {
        set_xattr(root, b"xattrs/file", "trusted.t", b"trusted value");
        set_xattr(root, b"xattrs/file", "trusted.empty", b"");
        set_xattr(root, b"xattrs/file", "security.s", b"security value");
        set_xattr(root, b"xattrs/dir", "security.on_dir", &binary_value(14, 1000));
        set_xattr(root, b"xattrs/link", "trusted.on_symlink", b"link value");
        set_xattr(root, b"special/fifo", "trusted.on_fifo", b"fifo value");
    }

    // Names: the longest EROFS allows, not UTF-8, sorting before ".", odd bytes.
    put(root, &[b"names/".as_slice(), &[b'n'; 255]].concat(), b"255\n");
    put(root, &[b"names/".as_slice(), &[b'd'; 255], b"/inner"].concat(), b"in a 255-byte dir\n");
    put(root, b"names/\xff\xfe", b"not utf-8\n");
    put(root, b"names/caf\xe9/inner", b"latin-1 directory\n");
    for name in [
        &b"!bang"[..],
        b" leading space",
        b"\x01control",
        b"new\nline",
        b"-dash",
        b".hidden",
        b"~tilde",
    ] {
        put(root, &[b"names/".as_slice(), name].concat(), name);
    }

    // A directory with 10,000 entries, most of them empty files.
    mkdir(root, b"big_dir");
    for i in 0..BIG_DIR_ENTRIES {
        let data = if i % 5 == 0 { format!("{i}\n").into_bytes() } else { Vec::new() };
        fs::write(root.join(format!("big_dir/entry_{i:05}")), data).expect("write big_dir entry");
    }

    // Deep nesting.
    let deep = deep_dir();
    mkdir(root, &deep);
    put(root, &[deep.as_slice(), b"/leaf"].concat(), b"bottom\n");

    // Unusual modes (set after owners: chown clears set-id bits).
    put(root, b"modes/setuid", b"#!/bin/sh\n");
    chmod(root, b"modes/setuid", 0o4755);
    put(root, b"modes/setgid", b"#!/bin/sh\n");
    chmod(root, b"modes/setgid", 0o2711);
    mkdir(root, b"modes/sticky");
    chmod(root, b"modes/sticky", 0o1777);
    // Mode 000: only root can read it back (to build it, and to snapshot the source).
    if privileged {
        put(root, b"modes/none", b"unreadable\n");
        chmod(root, b"modes/none", 0o000);
    }
    put(root, b"modes/private/secret", b"secret\n");
    chmod(root, b"modes/private/secret", 0o600);
    chmod(root, b"modes/private", 0o700);
    if privileged {
        mkdir(root, b"modes/none_dir");
        chmod(root, b"modes/none_dir", 0o000);
    }

    // Owners.
    let mut overrides: HashMap<Vec<u8>, (i64, i64)> = HashMap::new();
    if privileged {
        put(root, b"owners/u1000", b"1000:2000\n");
        chown(root, b"owners/u1000", 1000, 2000);
        put(root, b"owners/u100000", b"100000:100000\n");
        chown(root, b"owners/u100000", 100_000, 100_000);
        put(root, b"owners/dir/inner", b"2000:1000\n");
        chown(root, b"owners/dir/inner", 2000, 1000);
        chown(root, b"owners/dir", 1000, 2000);
        symlink(root, b"owners/link", b"u1000");
        chown(root, b"owners/link", 1000, 2000);
        put(root, b"owners/setuid_1000", b"#!/bin/sh\n");
        chown(root, b"owners/setuid_1000", 1000, 2000);
        chmod(root, b"owners/setuid_1000", 0o4750);
    }

    // Times: epoch (a compact inode), whole seconds, past 2038 and 2100.
    put(root, b"times/epoch", b"1970\n");
    put(root, b"times/epoch_owned", b"1970\n");
    put(root, b"times/epoch_uid_65536", b"1970\n");
    put(root, b"times/whole_second", b"no nanoseconds\n");
    put(root, b"times/y2100", b"future\n");
    symlink(root, b"times/epoch_link", b"epoch");
    mkdir(root, b"times/epoch_dir");
    if privileged {
        chown(root, b"times/epoch_owned", 65_535, 65_535);
        chown(root, b"times/epoch_uid_65536", 65_536, 1);
    }
    for rel in [
        &b"times/epoch"[..],
        b"times/epoch_owned",
        b"times/epoch_uid_65536",
        b"times/epoch_link",
        b"times/epoch_dir",
    ] {
        overrides.insert(rel.to_vec(), (0, 0));
    }
    overrides.insert(b"times/whole_second".to_vec(), (1_234_567_890, 0));
    overrides.insert(b"times/y2100".to_vec(), (4_102_444_800, 999_999_999));

    chmod(root, b"", 0o750);
    stamp_times(root, &overrides);
}

/// A fresh temporary directory for one test. Preferably on tmpfs (/dev/shm): creating the
/// fixture's 10,000 files, and unpacking them again, costs ~15x more on an ext4 /tmp. Falls
/// back to the default temporary directory when /dev/shm is missing or lacks user xattrs.
fn test_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new().prefix("strata-roundtrip-").tempdir_in(shm) {
            if xattr::set(dir.path(), "user.strata_probe", b"1").is_ok()
                && xattr::remove(dir.path(), "user.strata_probe").is_ok()
            {
                return dir;
            }
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// A fresh temporary directory holding the fixture at `<tmp>/src`.
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    make_tree(&src);
    (tmp, src)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Run strata with `input` on stdin; panics with its output on failure.
fn strata_stdin(args: &[&str], input: Vec<u8>) -> Output {
    let mut child = Command::new(common::strata_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        // strata may legitimately stop reading early only when it fails; that shows below.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait strata");
    feeder.join().expect("stdin feeder");
    assert!(
        out.status.success(),
        "strata {args:?} (with stdin) failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A built image: bootstrap, blob directory, and the `--json` report of the build.
struct Built {
    boot: PathBuf,
    blobs: PathBuf,
    report: serde_json::Value,
}

impl Built {
    fn image(&self) -> Image {
        Image::open(&self.boot).unwrap_or_else(|e| panic!("open {}: {e}", self.boot.display()))
    }
    fn snapshot(&self) -> Snapshot {
        let img = self.image();
        snapshot_image(&img, &blob_reader(&img, &self.blobs))
    }
    fn stat(&self, key: &str) -> u64 {
        self.report["stats"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("stats.{key} missing in {}", self.report))
    }
    /// `image check -D` passes and verified every chunk.
    fn check(&self, what: &str) {
        let out = strata(&["image", "check", "-B", s(&self.boot), "-D", s(&self.blobs), "--json"]);
        let v = json(&out);
        let chunks = v["chunks"].as_u64().expect("chunks");
        assert!(chunks > 0, "{what}: check saw no chunks: {v}");
        assert_eq!(v["chunks_verified"].as_u64(), Some(chunks), "{what}: {v}");
        assert_eq!(v["chunk_errors"].as_array().map(Vec::len), Some(0), "{what}: {v}");
    }
}

/// `strata image create SOURCE -B <work>/<name>.boot -D <blobs> --json EXTRA...`.
fn create(source: &str, work: &Path, name: &str, blobs: &Path, extra: &[&str]) -> Built {
    let boot = work.join(format!("{name}.boot"));
    let mut args = vec!["image", "create", source, "-B", s(&boot), "-D", s(blobs), "--json"];
    args.extend_from_slice(extra);
    let report = json(&strata(&args));
    Built { boot, blobs: blobs.to_path_buf(), report }
}

/// Like [`create`], with `input` on stdin (a layer when SOURCE is `-`, or a prefetch list).
fn create_stdin(
    source: &str,
    input: Vec<u8>,
    work: &Path,
    name: &str,
    blobs: &Path,
    extra: &[&str],
) -> Built {
    let boot = work.join(format!("{name}.boot"));
    let mut args = vec!["image", "create", source, "-B", s(&boot), "-D", s(blobs), "--json"];
    args.extend_from_slice(extra);
    let report = json(&strata_stdin(&args, input));
    Built { boot, blobs: blobs.to_path_buf(), report }
}

/// `image inspect -B boot --request inode PATH --json`.
fn inspect_inode(boot: &Path, path: &str) -> serde_json::Value {
    json(&strata(&["image", "inspect", "-B", s(boot), "--request", "inode", path, "--json"]))
}

/// Chunks of `path` as (compressed_offset, uncompressed_offset) per chunk.
fn inspect_chunks(boot: &Path, path: &str) -> Vec<(u64, u64)> {
    let v = inspect_inode(boot, path);
    v["chunks"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: no chunks array: {v}"))
        .iter()
        .map(|c| {
            assert!(!c.is_null(), "{path}: a hole where data was expected: {v}");
            (
                c["compressed_offset"].as_u64().expect("compressed_offset"),
                c["uncompressed_offset"].as_u64().expect("uncompressed_offset"),
            )
        })
        .collect()
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

/// True (after saying so) when the kernel has no erofs; under STRATA_CI that is a failure.
fn kernel_lacks_erofs(test: &str) -> bool {
    let have = fs::read_to_string("/proc/filesystems").is_ok_and(|f| f.contains("erofs"));
    if have {
        return false;
    }
    if std::env::var_os("STRATA_CI").is_some() {
        panic!("{test}: the kernel has no erofs filesystem");
    }
    eprintln!("SKIPPED {test}: the kernel has no erofs filesystem");
    true
}

/// Loop devices and mounts made by one test, all undone on drop (also when an assertion
/// fails): mounts unmounted newest first, then the loop devices detached. Mount points must
/// lie under `base`, the test's own temporary directory; only what this guard made is touched.
struct KernelMounts {
    base: PathBuf,
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
}

impl KernelMounts {
    fn new(base: &Path) -> Self {
        Self { base: base.to_path_buf(), mounts: Vec::new(), loops: Vec::new() }
    }

    /// Attach `file` read-only to a free loop device; returns the device.
    fn attach(&mut self, file: &Path) -> String {
        assert!(file.starts_with(&self.base), "{} is outside the test dir", file.display());
        let out = Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(file)
            .output()
            .expect("spawn losetup");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if dev.starts_with("/dev/") {
            self.loops.push(dev.clone());
        }
        assert!(
            out.status.success() && dev.starts_with("/dev/"),
            "losetup -f --show -r {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dev
    }

    /// `mount -t erofs -o OPTIONS DEV AT`, `AT` under the test's directory.
    fn mount(&mut self, dev: &str, options: &str, mount_point: &Path) {
        assert!(
            mount_point.starts_with(&self.base),
            "refusing to mount at {} (outside the test's directory)",
            mount_point.display()
        );
        fs::create_dir_all(mount_point).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", options, dev])
            .arg(mount_point)
            .output()
            .expect("spawn mount");
        assert!(
            out.status.success(),
            "mount -t erofs -o {options} {dev} {}: {}{}",
            mount_point.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounts.push(mount_point.to_path_buf());
    }
}

impl Drop for KernelMounts {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let ok = Command::new("umount").arg(&m).status().is_ok_and(|s| s.success());
            if !ok {
                // Still ours and still under the test dir: detach it lazily rather than leak it.
                let lazy = Command::new("umount").arg("-l").arg(&m).status();
                eprintln!("umount {} failed; lazy umount: {lazy:?}", m.display());
            }
        }
        for dev in self.loops.drain(..).rev() {
            let ok =
                Command::new("losetup").arg("-d").arg(&dev).status().is_ok_and(|s| s.success());
            if !ok {
                eprintln!("losetup -d {dev} failed");
            }
        }
    }
}

/// `snap` with only the fields `keep` leaves.
fn project(snap: &Snapshot, keep: impl Fn(&mut Entry)) -> Snapshot {
    snap.iter()
        .map(|(k, e)| {
            let mut e = e.clone();
            keep(&mut e);
            (k.clone(), e)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The fixture itself
// ---------------------------------------------------------------------------------------------

/// The generator makes what the other tests rely on; a fixture that silently lost an entry
/// kind would make every round trip below pass vacuously.
#[test]
fn fixture_tree_has_every_kind_of_entry() {
    let (_tmp, src) = fixture();
    let snap = snapshot_dir(&src);
    let get = |p: &[u8]| snap.get(p).unwrap_or_else(|| panic!("fixture lacks /{}", shown(p)));

    let mut kinds: Vec<char> = snap.values().map(|e| e.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let want_kinds: &[char] =
        if is_root() { &['b', 'c', 'd', 'f', 'l', 'p', 's'] } else { &['d', 'f', 'l', 'p', 's'] };
    assert_eq!(kinds, want_kinds);

    assert_eq!(get(b"data/empty").size, 0);
    assert_eq!(get(b"data/one_byte").size, 1);
    assert_eq!(get(b"data/chunk_small").size, SMALL_CHUNK);
    assert_eq!(get(b"data/chunk_default").size, DEFAULT_CHUNK);
    assert_eq!(get(b"data/multi_small").size, SMALL_CHUNK * 5 / 2);
    assert_eq!(get(b"data/multi_default").size, DEFAULT_CHUNK * 5 / 2);
    assert_eq!(get(b"data/same_1").digest, get(b"data/same_2").digest);
    assert_eq!(get(b"data/sparse").size, SPARSE_SIZE);
    let sparse = fs::metadata(src.join("data/sparse")).expect("stat sparse");
    assert!(sparse.blocks() * 512 < SPARSE_SIZE / 4, "data/sparse is not sparse");

    assert_eq!(get(b"links/long_1000").target.len(), 1000);
    assert_eq!(get(b"links/absolute").target, b"/etc/hostname");
    assert_eq!(get(b"hard/pair_a").link_group, get(b"hard/pair_b").link_group);
    assert!(get(b"hard/pair_a").link_group.is_some());
    let triple = get(b"hard/triple_1").link_group.clone().expect("triple is linked");
    let members: Vec<&Vec<u8>> = snap
        .iter()
        .filter(|(_, e)| e.link_group.as_ref() == Some(&triple))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.iter().any(|p| p.starts_with(b"other_dir/")), "{members:?}");
    assert_eq!(get(b"special/socket").kind, 's');
    assert_eq!(get(b"special/fifo").kind, 'p');
    if is_root() {
        assert_eq!((get(b"special/null").kind, get(b"special/null").rdev), ('c', (1, 3)));
        assert_eq!((get(b"special/loop200").kind, get(b"special/loop200").rdev), ('b', (7, 200)));
        assert_eq!(get(b"owners/u100000").uid, 100_000);
        assert_eq!((get(b"owners/u1000").uid, get(b"owners/u1000").gid), (1000, 2000));
        assert_eq!(get(b"owners/setuid_1000").perm, 0o4750);
        let x = &get(b"xattrs/file").xattrs;
        assert!(x.contains_key(&b"trusted.t"[..]) && x.contains_key(&b"security.s"[..]), "{x:?}");
    }

    let x = &get(b"xattrs/file").xattrs;
    assert_eq!(x.get(&b"user.empty"[..]).map(Vec::len), Some(0));
    assert_eq!(x.get(&b"user.big"[..]).map(Vec::len), Some(1000));
    assert!(get(b"").xattrs.contains_key(&b"user.on_root"[..]));

    assert!(snap.keys().any(|p| p.rsplit(|&b| b == b'/').next().is_some_and(|n| n.len() == 255)));
    assert!(snap.keys().any(|p| std::str::from_utf8(p).is_err()));
    let big = snap.keys().filter(|p| p.starts_with(b"big_dir/")).count();
    assert_eq!(big, BIG_DIR_ENTRIES);
    assert!(snap.contains_key(&[deep_dir().as_slice(), b"/leaf"].concat()));

    assert_eq!(get(b"modes/setuid").perm, 0o4755);
    assert_eq!((get(b"modes/sticky").kind, get(b"modes/sticky").perm), ('d', 0o1777));
    if is_root() {
        assert_eq!(get(b"modes/none").perm, 0);
    }
    assert_eq!(get(b"").perm, 0o750);

    for p in [&b"data/text"[..], b"deep", b"links/relative", b""] {
        assert_ne!(get(p).mtime.1, 0, "/{} has no nanoseconds", shown(p));
    }
    assert_eq!(get(b"times/epoch").mtime, (0, 0));
    assert_eq!(get(b"times/epoch_link").mtime, (0, 0));
    assert_eq!(get(b"times/y2100").mtime, (4_102_444_800, 999_999_999));
}

// ---------------------------------------------------------------------------------------------
// 2. Every compressor x digester, through every way back out
// ---------------------------------------------------------------------------------------------

type Combo = (&'static str, &'static str, Option<&'static str>);

const COMBOS: [Combo; 6] = [
    ("none", "blake3", Some("0x10000")),
    ("none", "sha256", None),
    ("lz4_block", "blake3", None),
    ("lz4_block", "sha256", Some("0x10000")),
    ("zstd", "blake3", Some("0x10000")),
    ("zstd", "sha256", None),
];

/// `snap` as a tar can carry it: tar has no socket type, and `image unpack --output` leaves
/// sockets out with a warning (as GNU tar does; see src/rafs/unpack.rs).
fn without_sockets(snap: &Snapshot) -> Snapshot {
    snap.iter().filter(|(_, e)| e.kind != 's').map(|(k, e)| (k.clone(), e.clone())).collect()
}

/// Run `f`; a panic becomes a line in `failures`, so one broken step does not hide the others.
fn step(failures: &mut Vec<String>, what: &str, f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        failures.push(format!("{what}: {}", panic_message(&*e)));
    }
}

/// Build `src` with one combination and bring it back every way; returns what failed.
fn round_trip_one(src: &Path, want: &Snapshot, work: &Path, (c, d, cs): Combo) -> Vec<String> {
    let mut failures = Vec::new();
    fs::create_dir_all(work).expect("work dir");
    let blobs = work.join("blobs");
    let mut extra = vec!["--compressor", c, "--digester", d];
    if let Some(cs) = cs {
        extra.extend_from_slice(&["--chunk-size", cs]);
    }
    let mut built = None;
    step(&mut failures, "build", || {
        let b = create(s(src), work, "image", &blobs, &extra);
        let blob = only_blob(&blobs);
        assert_eq!(
            b.report["blob"]["blob_id"].as_str(),
            blob.file_name().and_then(|n| n.to_str()),
            "the reported blob is not the one in the blob dir"
        );
        let want_cs = cs.map_or(DEFAULT_CHUNK, |h| u64::from_str_radix(&h[2..], 16).expect("hex"));
        assert_eq!(u64::from(b.image().chunk_size), want_cs);
        built = Some((b, blob));
    });
    let Some((built, blob)) = built else { return failures };

    step(&mut failures, "(a) reader", || {
        assert_same(want, &built.snapshot(), Compare::default(), "reader vs source");
    });

    step(&mut failures, "(b) unpack --output-dir", || {
        let out_dir = work.join("unpacked");
        let args = ["-B", s(&built.boot), "-D", s(&blobs), "--output-dir", s(&out_dir)];
        strata(&[&["image", "unpack"][..], &args].concat());
        let got = snapshot_dir(&out_dir);
        let _ = fs::remove_dir_all(&out_dir);
        assert_same(want, &got, Compare::default(), "unpacked dir vs source");
    });

    step(&mut failures, "(c) unpack --output", || {
        // Equal except that the sockets are left out, each with a warning.
        let tar_path = work.join("t.tar");
        let args = ["-B", s(&built.boot), "-D", s(&blobs), "--output", s(&tar_path)];
        let out = strata(&[&["image", "unpack"][..], &args].concat());
        let sockets = want.values().filter(|e| e.kind == 's').count();
        assert!(sockets > 0, "the fixture has a socket");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warnings = stderr.matches("socket not stored in tar").count();
        assert_eq!(warnings, sockets, "one warning per socket left out: {stderr}");
        let got = snapshot_tar(File::open(&tar_path).expect("open tar"));
        let _ = fs::remove_file(&tar_path);
        assert_same(&without_sockets(want), &got, Compare::default(), "tar vs source");
    });

    step(&mut failures, "(d) image check -D", || built.check("image check"));

    step(&mut failures, "(e) fsck.erofs", || {
        if require_tool("every_compressor_and_digester_round_trips_the_fixture", "fsck.erofs") {
            fsck_erofs(&built.boot, std::slice::from_ref(&blob)).unwrap_or_else(|e| panic!("{e}"));
        }
    });
    failures
}

#[test]
fn every_compressor_and_digester_round_trips_the_fixture() {
    let (tmp, src) = fixture();
    let want = snapshot_dir(&src);
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&combo) = COMBOS.get(i) else { break };
                let work = tmp.path().join(format!("combo{i}"));
                let (c, d, cs) = combo;
                let what = format!(
                    "--compressor {c} --digester {d} --chunk-size {}",
                    cs.unwrap_or("default")
                );
                let mut f = Vec::new();
                step(&mut f, &what, || {
                    for line in round_trip_one(&src, &want, &work, combo) {
                        failures.lock().expect("lock").push(format!("{what}: {line}"));
                    }
                });
                failures.lock().expect("lock").extend(f);
                let _ = fs::remove_dir_all(&work);
            });
        }
    });
    let failures = failures.into_inner().expect("lock");
    assert!(failures.is_empty(), "{} failures:\n\n{}", failures.len(), failures.join("\n\n"));
}

// ---------------------------------------------------------------------------------------------
// 3. The kernel as oracle
// ---------------------------------------------------------------------------------------------

#[test]
fn kernel_erofs_mounts_show_the_source_tree() {
    const T: &str = "kernel_erofs_mounts_show_the_source_tree";
    if !require_root(T, "losetup and mount")
        || !require_tool(T, "losetup")
        || !require_tool(T, "mount")
        || kernel_lacks_erofs(T)
    {
        return;
    }
    // Declared before the guard so the guard (unmount, detach) runs before the dir is removed.
    let (tmp, src) = fixture();
    let want = snapshot_dir(&src);
    let blobs = tmp.path().join("blobs");
    let built =
        create(s(&src), tmp.path(), "kernel", &blobs, &["--compressor", "none", "--aligned-chunk"]);
    let blob = only_blob(&blobs);
    let mut kernel = KernelMounts::new(tmp.path());

    // Bootstrap + blob as two block devices.
    let boot_dev = kernel.attach(&built.boot);
    let blob_dev = kernel.attach(&blob);
    let mnt = tmp.path().join("mnt");
    kernel.mount(&boot_dev, &format!("ro,device={blob_dev}"), &mnt);
    assert_same(&want, &snapshot_dir(&mnt), Compare::default(), "kernel: bootstrap + blob device");

    // Flattened into one image.
    let flat = tmp.path().join("flat.img");
    strata(&["image", "export", "--block", "-B", s(&built.boot), "-D", s(&blobs), "-O", s(&flat)]);
    let flat_dev = kernel.attach(&flat);
    let mnt2 = tmp.path().join("mnt_flat");
    kernel.mount(&flat_dev, "ro", &mnt2);
    assert_same(&want, &snapshot_dir(&mnt2), Compare::default(), "kernel: export --block");
    drop(kernel);

    // fsck.erofs extracts the same tree. erofs-utils 1.5 writes content, types, modes, owners
    // and times, but neither xattrs nor hardlinks (every name becomes its own file), and its
    // chown after chmod clears set-id bits; the kernel mounts above show all three intact, so
    // those are masked here.
    if require_tool(T, "fsck.erofs") {
        let out = tmp.path().join("extracted");
        let r = Command::new("fsck.erofs")
            .arg(format!("--extract={}", out.display()))
            .arg(format!("--device={}", blob.display()))
            .arg(&built.boot)
            .output()
            .expect("spawn fsck.erofs");
        assert!(
            r.status.success(),
            "fsck.erofs --extract: {}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        let reduce = |e: &mut Entry| {
            e.xattrs.clear();
            e.link_group = None;
            e.perm &= !0o6000;
        };
        let got = project(&snapshot_dir(&out), reduce);
        assert_same(&project(&want, reduce), &got, Compare::default(), "fsck.erofs --extract");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. --aligned-chunk --compressor none: the blob is its own uncompressed image
// ---------------------------------------------------------------------------------------------

#[test]
fn aligned_uncompressed_chunks_sit_at_their_uncompressed_offsets() {
    let (tmp, src) = fixture();
    let want = snapshot_dir(&src);
    let blobs = tmp.path().join("blobs");
    let cs = SMALL_CHUNK;
    let built = create(
        s(&src),
        tmp.path(),
        "aligned",
        &blobs,
        &["--compressor", "none", "--aligned-chunk", "--chunk-size", "0x10000"],
    );
    let blob_bytes = fs::read(only_blob(&blobs)).expect("read blob");

    // Every chunk of the chunk table, through the library.
    let img = built.image();
    let chunks = img.all_chunks();
    assert!(chunks.len() > 100, "only {} chunks", chunks.len());
    for c in &chunks {
        assert_eq!(c.compressed_offset, c.uncompressed_offset, "{c:?}");
        assert_eq!(c.uncompressed_offset % 4096, 0, "{c:?}");
        assert!(!c.compressed, "{c:?}");
        let end = (c.uncompressed_offset + u64::from(c.uncompressed_size)) as usize;
        assert!(end <= blob_bytes.len(), "{c:?} past the blob's end");
        let stored = &blob_bytes[c.uncompressed_offset as usize..end];
        assert_eq!(*blake3::hash(stored).as_bytes(), c.digest, "{c:?}: bytes at the offset");
    }

    // Every chunk of every data file (outside the 10,000-entry directory), through the CLI.
    let mut files = 0;
    for (rel, e) in &want {
        let Ok(path) = std::str::from_utf8(rel) else { continue };
        if e.kind != 'f' || e.size == 0 || rel.starts_with(b"big_dir/") {
            continue;
        }
        let v = inspect_chunks(&built.boot, &format!("/{path}"));
        assert_eq!(v.len() as u64, e.size.div_ceil(cs), "/{path}: chunk count");
        for (compressed, uncompressed) in v {
            assert_eq!(compressed, uncompressed, "/{path}");
            assert_eq!(compressed % 4096, 0, "/{path}: offset {compressed}");
        }
        files += 1;
    }
    assert!(files >= 15, "only {files} files inspected");
    assert_same(&want, &built.snapshot(), Compare::default(), "aligned build");
}

// ---------------------------------------------------------------------------------------------
// 5. Dedup within a build and against a parent bootstrap
// ---------------------------------------------------------------------------------------------

#[test]
fn identical_chunks_are_stored_once_and_parent_chunks_are_not_rewritten() {
    let tmp = test_dir();
    let t = tmp.path();
    let chunks_per_file = 5u64;
    let shared = pseudo_random(20, (SMALL_CHUNK * chunks_per_file) as usize);
    put(&t.join("two"), b"one", &shared);
    put(&t.join("two"), b"sub/two", &shared);
    put(&t.join("two"), b"small", b"small file\n");
    put(&t.join("single"), b"one", &shared);
    put(&t.join("single"), b"small", b"small file\n");
    let cs = ["--chunk-size", "0x10000"];

    let blobs_two = t.join("blobs_two");
    let two = create(s(&t.join("two")), t, "two", &blobs_two, &cs);
    let single = create(s(&t.join("single")), t, "single", &t.join("blobs_single"), &cs);
    assert_eq!(two.stat("chunks_deduplicated"), chunks_per_file, "{}", two.report);
    assert_eq!(two.stat("chunks_written"), single.stat("chunks_written"), "{}", two.report);
    let size = |d: &str| fs::metadata(only_blob(&t.join(d))).expect("blob").len();
    assert!(
        size("blobs_two") <= size("blobs_single"),
        "two copies make a {}-byte blob, one copy {} bytes",
        size("blobs_two"),
        size("blobs_single")
    );
    assert_same(&snapshot_dir(&t.join("two")), &two.snapshot(), Compare::default(), "two copies");

    // A layer on top: one new file (3.5 chunks) and another copy of parent data.
    let layer = t.join("layer");
    let new_chunks = 4u64;
    put(&layer, b"new", &pseudo_random(21, (SMALL_CHUNK * 7 / 2) as usize));
    put(&layer, b"copy_of_one", &shared);
    // Same root attributes as the parent, so "parent + new" is unambiguous.
    let parent_root = fs::metadata(t.join("two")).expect("stat");
    fs::set_permissions(&layer, parent_root.permissions()).expect("chmod");
    let ts = nix::sys::time::TimeSpec::new(parent_root.mtime(), parent_root.mtime_nsec());
    nix::sys::stat::utimensat(
        None,
        &layer,
        &ts,
        &ts,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("utimensat");
    let parent_snap = snapshot_dir(&t.join("two"));
    let layer_snap = snapshot_dir(&layer);

    let upper = create(
        s(&layer),
        t,
        "upper",
        &blobs_two,
        &["--chunk-size", "0x10000", "--parent-bootstrap", s(&two.boot)],
    );
    assert_eq!(upper.stat("chunks_written"), new_chunks, "{}", upper.report);
    assert_eq!(upper.stat("chunks_deduplicated"), chunks_per_file, "{}", upper.report);
    assert_eq!(upper.report["blob"]["chunk_count"].as_u64(), Some(new_chunks), "{}", upper.report);
    assert_eq!(upper.image().blobs.len(), 2);
    assert_eq!(fs::read_dir(&blobs_two).expect("blob dir").count(), 2);

    let mut want = parent_snap;
    want.extend(layer_snap);
    assert_same(&want, &upper.snapshot(), Compare::default(), "parent + layer");
    upper.check("layered build");
}

// ---------------------------------------------------------------------------------------------
// 6. OCI tar layers
// ---------------------------------------------------------------------------------------------

/// Pack `root` as a PAX tar the way an OCI layer is written: "./" first, parents before
/// children, PAX records for xattrs (SCHILY.xattr.*), nanosecond mtimes and names or link
/// targets longer than the ustar fields; hardlinks as Link entries naming the first path.
/// Sockets are left out (tar has no type for them).
fn pack_tar(root: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut first: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for (path, rel) in list_tree(root) {
        let m = fs::symlink_metadata(&path).expect("lstat");
        let ft = m.mode() & libc::S_IFMT;
        if ft == libc::S_IFSOCK {
            continue;
        }
        let mut name = b"./".to_vec();
        name.extend_from_slice(&rel);
        if ft == libc::S_IFDIR && !rel.is_empty() {
            name.push(b'/');
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(u64::from(m.uid()));
        h.set_gid(u64::from(m.gid()));
        h.set_mtime(m.mtime() as u64);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for x in xattr::list(&path).expect("listxattr") {
            let v = xattr::get(&path, &x).expect("getxattr").unwrap_or_default();
            pax.push((format!("SCHILY.xattr.{}", x.to_str().expect("xattr names are UTF-8")), v));
        }
        pax.push(("mtime".into(), format!("{}.{:09}", m.mtime(), m.mtime_nsec()).into_bytes()));
        let mut link: Option<Vec<u8>> = None;
        let mut data = Vec::new();
        let key = (m.dev(), m.ino());
        match first.get(&key) {
            Some(target) if ft != libc::S_IFDIR => {
                h.set_entry_type(tar::EntryType::Link);
                link = Some(target.clone());
            }
            _ => {
                if ft != libc::S_IFDIR && m.nlink() > 1 {
                    first.insert(key, name.clone());
                }
                match ft {
                    libc::S_IFDIR => h.set_entry_type(tar::EntryType::Directory),
                    libc::S_IFREG => {
                        h.set_entry_type(tar::EntryType::Regular);
                        data = fs::read(&path).expect("read");
                        h.set_size(data.len() as u64);
                    }
                    libc::S_IFLNK => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        link = Some(
                            fs::read_link(&path).expect("readlink").as_os_str().as_bytes().to_vec(),
                        );
                    }
                    libc::S_IFCHR | libc::S_IFBLK => {
                        h.set_entry_type(if ft == libc::S_IFCHR {
                            tar::EntryType::Char
                        } else {
                            tar::EntryType::Block
                        });
                        h.set_device_major(libc::major(m.rdev())).expect("major");
                        h.set_device_minor(libc::minor(m.rdev())).expect("minor");
                    }
                    libc::S_IFIFO => h.set_entry_type(tar::EntryType::Fifo),
                    other => panic!("{}: unexpected file type {other:#o}", path.display()),
                }
            }
        }
        let ustar = h.as_ustar_mut().expect("ustar header");
        if name.len() > ustar.name.len() {
            pax.push(("path".into(), name.clone()));
        }
        let n = name.len().min(ustar.name.len());
        ustar.name[..n].copy_from_slice(&name[..n]);
        if let Some(l) = &link {
            if l.len() > ustar.linkname.len() {
                pax.push(("linkpath".into(), l.clone()));
            }
            let n = l.len().min(ustar.linkname.len());
            ustar.linkname[..n].copy_from_slice(&l[..n]);
        }
        h.set_cksum();
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).expect("pax");
        b.append(&h, data.as_slice()).expect("append");
    }
    b.into_inner().expect("finish tar")
}

#[test]
fn oci_tar_layers_plain_gzip_zstd_and_stdin_build_the_tar_tree() {
    let (tmp, src) = fixture();
    let t = tmp.path();
    // A tar stores the 40 MiB sparse file in full; here it would only multiply hashing time in
    // a debug build (the other tests cover it), so this layer goes without it.
    fs::remove_file(src.join("data/sparse")).expect("rm sparse");
    let plain = pack_tar(&src);
    let want = snapshot_tar(plain.as_slice());
    // The packer is faithful (everything but the sockets it must leave out), so a difference
    // below is the builder's.
    let mut from_dir = snapshot_dir(&src);
    from_dir.retain(|_, e| e.kind != 's');
    assert_same(&from_dir, &want, Compare::default(), "pack_tar vs the source directory");

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zst = zstd::encode_all(plain.as_slice(), 3).expect("zstd");
    fs::write(t.join("layer.tar"), &plain).expect("write");
    fs::write(t.join("layer.tar.gz"), &gz).expect("write");
    fs::write(t.join("layer.tar.zst"), &zst).expect("write");

    // (file, bytes for stdin, extra create args)
    type Case<'a> = (&'a str, Option<&'a [u8]>, &'a [&'a str]);
    let cases: [Case<'_>; 4] = [
        ("layer.tar", None, &["-t", "tar-rafs"]),
        (
            "layer.tar.gz",
            None,
            &[
                "-t",
                "tar-rafs",
                "--compressor",
                "lz4_block",
                "--digester",
                "sha256",
                "--chunk-size",
                "0x10000",
            ],
        ),
        ("layer.tar.zst", None, &["-t", "tar-rafs", "--compressor", "none"]),
        ("stdin (zstd)", Some(&zst), &["-t", "tar-rafs", "--digester", "sha256"]),
    ];
    for (i, (name, stdin, extra)) in cases.into_iter().enumerate() {
        let blobs = t.join(format!("blobs{i}"));
        let built = match stdin {
            None => create(s(&t.join(name)), t, &format!("tar{i}"), &blobs, extra),
            Some(bytes) => create_stdin("-", bytes.to_vec(), t, &format!("tar{i}"), &blobs, extra),
        };
        assert_same(&want, &built.snapshot(), Compare::default(), &format!("tar source {name}"));
        built.check(name);
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Prefetch
// ---------------------------------------------------------------------------------------------

/// Builds `source` with `--prefetch-policy fs` and the list "/d/b\n/a" on stdin and checks the
/// prefetch table and that the listed files' chunks lead the blob, in list order.
fn check_prefetch(source_dir: &Path, built: &Built, what: &str) {
    let listed = ["/d/b", "/a"];
    let v = json(&strata(&[
        "image",
        "inspect",
        "-B",
        s(&built.boot),
        "--request",
        "prefetch",
        "--json",
    ]));
    let paths: Vec<&str> = v
        .as_array()
        .unwrap_or_else(|| panic!("{what}: prefetch is not an array: {v}"))
        .iter()
        .map(|e| e["path"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(paths, listed, "{what}: prefetch table {v}");

    let mut leading = Vec::new();
    for p in listed {
        leading.extend(inspect_chunks(&built.boot, p).into_iter().map(|c| c.0));
    }
    let mut all: Vec<u64> =
        built.image().all_chunks().iter().map(|c| c.compressed_offset).collect();
    all.sort_unstable();
    assert_eq!(
        leading,
        all[..leading.len()],
        "{what}: the chunks of /d/b then /a should open the blob; all offsets: {all:?}"
    );
    assert_same(&snapshot_dir(source_dir), &built.snapshot(), Compare::default(), what);
    built.check(what);
}

#[test]
fn prefetch_listed_files_come_first_in_the_blob_for_dir_and_tar_sources() {
    let tmp = test_dir();
    let t = tmp.path();
    let src = t.join("src");
    put(&src, b"a", &pseudo_random(30, (SMALL_CHUNK * 3) as usize));
    put(&src, b"c", &pseudo_random(31, (SMALL_CHUNK * 2) as usize));
    put(&src, b"d/b", &pseudo_random(32, (SMALL_CHUNK * 5 / 2) as usize));
    put(&src, b"d/e", &pseudo_random(33, SMALL_CHUNK as usize));
    put(&src, b"z", &pseudo_random(34, SMALL_CHUNK as usize / 2));
    stamp_times(&src, &HashMap::new());
    let list = b"/d/b\n/a\n".to_vec();
    let opts = ["--prefetch-policy", "fs", "--chunk-size", "0x10000"];

    let from_dir = create_stdin(s(&src), list.clone(), t, "dir", &t.join("blobs_dir"), &opts);
    check_prefetch(&src, &from_dir, "directory source");

    // The tar lists /a before /d/b, so the builder must reorder its blob.
    fs::write(t.join("layer.tar"), pack_tar(&src)).expect("write tar");
    let tar_opts = [&opts[..], &["-t", "tar-rafs"]].concat();
    let from_tar =
        create_stdin(s(&t.join("layer.tar")), list, t, "tar", &t.join("blobs_tar"), &tar_opts);
    assert_eq!(
        fs::read_dir(t.join("blobs_tar")).expect("blob dir").count(),
        1,
        "old blob left behind"
    );
    check_prefetch(&src, &from_tar, "tar source");
}

// ---------------------------------------------------------------------------------------------
// 8. Tar details met while writing the tests above
// ---------------------------------------------------------------------------------------------

/// `image unpack --output` leaves sockets out. Nothing of a skipped socket may reach the tar:
/// its PAX header (xattrs, nanosecond mtime) would otherwise describe the next member.
#[test]
fn tar_unpack_leaves_no_trace_of_a_skipped_socket() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    mkdir(&src, b"");
    drop(std::os::unix::net::UnixListener::bind(src.join("a_socket")).expect("bind"));
    put(&src, b"b_file", b"after the socket\n");
    if is_root() {
        set_xattr(&src, b"a_socket", "trusted.on_socket", b"socket value");
    }
    let mut times = HashMap::new();
    times.insert(b"a_socket".to_vec(), (1_600_000_000, 123_456_789));
    times.insert(b"b_file".to_vec(), (1_600_000_001, 0));
    stamp_times(&src, &times);
    let want = without_sockets(&snapshot_dir(&src));

    let blobs = tmp.path().join("blobs");
    let built = create(s(&src), tmp.path(), "img", &blobs, &[]);
    let tar_path = tmp.path().join("t.tar");
    strata(&["image", "unpack", "-B", s(&built.boot), "-D", s(&blobs), "--output", s(&tar_path)]);
    let got = snapshot_tar(File::open(&tar_path).expect("open tar"));
    assert_same(&want, &got, Compare::default(), "tar unpack of a socket followed by a file");
}

/// A PAX record is delimited by its length prefix, so its value may hold any byte, newlines
/// included; binary xattr values (security.capability, ...) can contain 0x0a. GNU tar writes
/// and reads such layers, so the builder must accept them.
#[test]
fn tar_layer_with_a_newline_in_a_pax_xattr_value_builds() {
    const T: &str = "tar_layer_with_a_newline_in_a_pax_xattr_value_builds";
    let tmp = test_dir();
    let t = tmp.path();
    let value: &[u8] = b"line one\nline two\n\x00\xff";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    b.append_data(&mut h, "./", std::io::empty()).expect("root entry");
    b.append_pax_extensions([("SCHILY.xattr.user.bin", value)]).expect("pax");
    let data = b"data\n";
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "./f", &data[..]).expect("file entry");
    let layer = t.join("layer.tar");
    fs::write(&layer, b.into_inner().expect("finish")).expect("write layer");

    // The layer is valid: GNU tar restores the value.
    if require_tool(T, "tar") {
        let out = t.join("gnu");
        fs::create_dir(&out).expect("mkdir");
        let r = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-xf"])
            .arg(&layer)
            .arg("-C")
            .arg(&out)
            .output()
            .expect("spawn tar");
        assert!(r.status.success(), "GNU tar: {}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(
            xattr::get(out.join("f"), "user.bin").expect("getxattr").as_deref(),
            Some(value)
        );
    }

    let boot = t.join("boot");
    let r = Command::new(common::strata_bin())
        .args(["image", "create", s(&layer), "-t", "tar-rafs", "-B", s(&boot), "-D"])
        .arg(t.join("blobs"))
        .output()
        .expect("spawn strata");
    assert!(
        r.status.success(),
        "strata rejects a layer GNU tar reads: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let img = Image::open(&boot).expect("open");
    let f = img.resolve(b"/f").expect("resolve").expect("/f exists");
    assert_eq!(img.xattrs(&f).expect("xattrs"), vec![(b"user.bin".to_vec(), value.to_vec())]);
}

// ---------------------------------------------------------------------------------------------
// 9. More of the same tree: hardlinks of every type, path lookup, layered images in the kernel
// ---------------------------------------------------------------------------------------------

/// A hardlink is a property of the inode, whatever its type: mkfs.erofs and nydus-image keep
/// hardlinked fifos, devices and symlinks as one inode with nlink > 1, and so must we.
#[test]
fn directory_build_keeps_hardlinks_of_every_file_type() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    mkdir(&src, b"");
    nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644))
        .expect("mkfifo");
    hard_link(&src, b"fifo", b"fifo_link");
    symlink(&src, b"symlink", b"target");
    hard_link(&src, b"symlink", b"sub/symlink_link");
    drop(std::os::unix::net::UnixListener::bind(src.join("socket")).expect("bind"));
    hard_link(&src, b"socket", b"socket_link");
    if is_root() {
        mknod(&src, b"null", nix::sys::stat::SFlag::S_IFCHR, 1, 3);
        hard_link(&src, b"null", b"null_link");
    }
    stamp_times(&src, &HashMap::new());
    let want = snapshot_dir(&src);
    assert!(want[&b"fifo"[..]].link_group.is_some(), "fixture: the fifo has two names");

    let built = create(s(&src), tmp.path(), "img", &tmp.path().join("blobs"), &[]);
    let img = built.image();
    let fifo = img.resolve(b"/fifo").expect("resolve").expect("/fifo");
    assert_same(&want, &built.snapshot(), Compare::default(), "hardlinked special files");
    assert_eq!(fifo.disk.nlink, 2, "nlink of a fifo with two names");
}

/// `Image::resolve` (a binary search over directory blocks, then within the block) finds every
/// path the walk finds, at the same inode, among names that sort before "." and ".." and in
/// the 10,000-entry directory (there, to keep a debug build fast, the names around each 4 KiB
/// block boundary and every 97th name); names that are not there are not found.
#[test]
fn every_path_resolves_to_the_inode_the_walk_found() {
    let (tmp, src) = fixture();
    let built = create(s(&src), tmp.path(), "img", &tmp.path().join("blobs"), &[]);
    let img = built.image();
    let mut walked: Vec<(Vec<u8>, u64)> = Vec::new();
    img.walk::<strata::rafs::reader::ReadError>(|path, inode| {
        walked.push((path.to_vec(), inode.nid));
        Ok(true)
    })
    .expect("walk");
    assert_eq!(walked.len(), list_tree(&src).len(), "walk vs source entry count");

    // The big directory's names in on-disk order, packed into blocks as the writer packs them
    // (12-byte dirent + name per entry, "." and ".." first): probe around each boundary.
    let mut names: Vec<Vec<u8>> = vec![b".".to_vec(), b"..".to_vec()];
    names.extend(
        walked.iter().filter_map(|(p, _)| p.strip_prefix(b"/big_dir/")).map(<[u8]>::to_vec),
    );
    names.sort();
    let mut probe_big = std::collections::BTreeSet::new();
    let mut used = 0;
    for (i, n) in names.iter().enumerate() {
        if used + 12 + n.len() > 4096 {
            probe_big.extend([i - 1, i, i + 1]);
            used = 0;
        }
        used += 12 + n.len();
        if i % 97 == 0 {
            probe_big.insert(i);
        }
    }
    let probe_big: std::collections::HashSet<&[u8]> =
        probe_big.iter().filter_map(|&i| names.get(i)).map(Vec::as_slice).collect();
    assert!(probe_big.len() > 150, "{} big_dir names probed", probe_big.len());

    let present: std::collections::HashSet<&[u8]> =
        walked.iter().map(|(p, _)| p.as_slice()).collect();
    let (mut hits, mut misses) = (0, 0);
    for (path, nid) in &walked {
        if let Some(name) = path.strip_prefix(b"/big_dir/") {
            if !probe_big.contains(name) {
                continue;
            }
        }
        let found = img.resolve(path).unwrap_or_else(|e| panic!("resolve {}: {e}", shown(path)));
        assert_eq!(found.map(|i| i.nid), Some(*nid), "resolve {}", shown(path));
        hits += 1;
        if path.len() > 1 {
            for suffix in [&b"~"[..], b"\x00", b"!"] {
                let absent = [path.as_slice(), suffix].concat();
                if !present.contains(absent.as_slice()) {
                    let r = img.resolve(&absent).expect("resolve");
                    assert!(r.is_none(), "{} resolves", shown(&absent));
                    misses += 1;
                }
            }
        }
    }
    for absent in [&b"/big_dir/entry_10000"[..], b"/big_dir/a", b"/big_dir/zzz", b"/names/ "] {
        assert!(img.resolve(absent).expect("resolve").is_none(), "{}", shown(absent));
        misses += 1;
    }
    assert!(hits > 300 && misses > 900, "{hits} hits, {misses} misses probed");
}

/// A layer built on a parent has two blobs: the kernel mounts it with both as devices, and its
/// `export --block` image (two mapped devices) alone; both show lower + upper with the upper's
/// whiteout applied.
#[test]
fn kernel_mounts_a_layered_image_with_two_blobs() {
    const T: &str = "kernel_mounts_a_layered_image_with_two_blobs";
    if !require_root(T, "losetup and mount")
        || !require_tool(T, "losetup")
        || !require_tool(T, "mount")
        || kernel_lacks_erofs(T)
    {
        return;
    }
    let tmp = test_dir();
    let t = tmp.path();
    let (lower, upper) = (t.join("lower"), t.join("upper"));
    put(&lower, b"a", &pseudo_random(40, 300_000));
    put(&lower, b"gone", b"removed by the upper layer\n");
    put(&lower, b"dir/kept", b"lower file in a merged dir\n");
    put(&upper, b"c", &pseudo_random(41, 200_000));
    put(&upper, b"a_copy", &pseudo_random(40, 300_000));
    put(&upper, b".wh.gone", b"");
    put(&upper, b"dir/added", b"upper file in a merged dir\n");
    stamp_times(&lower, &HashMap::new());
    stamp_times(&upper, &HashMap::new());
    // The merged directories take the upper's attributes: give both layers the same ones.
    for d in [&b""[..], b"dir"] {
        let m = fs::metadata(at(&lower, d)).expect("stat");
        fs::set_permissions(at(&upper, d), m.permissions()).expect("chmod");
        let ts = nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec());
        let flag = nix::sys::stat::UtimensatFlags::NoFollowSymlink;
        nix::sys::stat::utimensat(None, &at(&upper, d), &ts, &ts, flag).expect("utimensat");
    }
    let mut want = snapshot_dir(&lower);
    want.remove(&b"gone"[..]);
    want.extend(snapshot_dir(&upper).into_iter().filter(|(p, _)| p != b".wh.gone"));

    let blobs = t.join("blobs");
    let aligned = ["--compressor", "none", "--aligned-chunk"];
    let parent = create(s(&lower), t, "lower", &blobs, &aligned);
    let extra = [&aligned[..], &["--parent-bootstrap", s(&parent.boot)]].concat();
    let built = create(s(&upper), t, "upper", &blobs, &extra);
    let img = built.image();
    assert_eq!(img.blobs.len(), 2);
    assert_same(&want, &built.snapshot(), Compare::default(), "layered image, reader");

    let mut kernel = KernelMounts::new(t);
    let boot_dev = kernel.attach(&built.boot);
    let mut options = String::from("ro");
    for b in &img.blobs {
        let dev = kernel.attach(&blobs.join(&b.blob_id));
        options.push_str(&format!(",device={dev}"));
    }
    let mnt = t.join("mnt");
    kernel.mount(&boot_dev, &options, &mnt);
    assert_same(&want, &snapshot_dir(&mnt), Compare::default(), "kernel: bootstrap + 2 blobs");

    let flat = t.join("flat.img");
    strata(&["image", "export", "--block", "-B", s(&built.boot), "-D", s(&blobs), "-O", s(&flat)]);
    let flat_dev = kernel.attach(&flat);
    let mnt2 = t.join("mnt_flat");
    kernel.mount(&flat_dev, "ro", &mnt2);
    assert_same(&want, &snapshot_dir(&mnt2), Compare::default(), "kernel: export --block");
}
