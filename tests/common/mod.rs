//! Shared test support: tree snapshots (of a directory, an image, a tar) that compare content,
//! mode, owner, mtime, xattrs, symlink targets, device numbers and hardlink structure, plus the
//! privileged-test convention.
#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod daemon;

use sha2::Digest;
use strata::rafs::chunk::ChunkReader;
use strata::rafs::reader::Image;

/// One entry of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// 'd' dir, 'f' file, 'l' symlink, 'c' char, 'b' block, 'p' fifo, 's' socket.
    pub kind: char,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    pub size: u64,
    /// sha256 of file content.
    pub digest: String,
    pub target: Vec<u8>,
    pub rdev: (u32, u32),
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For names sharing one inode: the smallest of those names. None when alone.
    pub link_group: Option<Vec<u8>>,
}

/// Path (relative, no leading slash; the root is "") -> entry.
pub type Snapshot = BTreeMap<Vec<u8>, Entry>;

/// What a comparison looks at.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    pub mtime: bool,
    pub dir_mtime: bool,
    pub owner: bool,
    pub xattrs: bool,
    pub root_attrs: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Self { mtime: true, dir_mtime: true, owner: true, xattrs: true, root_attrs: true }
    }
}

fn kind_of(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFREG => 'f',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        _ => 's',
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// Fill `link_group` from (path, inode key) pairs of non-directories.
fn set_link_groups<K: std::hash::Hash + Eq>(snap: &mut Snapshot, keys: Vec<(Vec<u8>, K)>) {
    let mut groups: HashMap<K, Vec<Vec<u8>>> = HashMap::new();
    for (p, k) in keys {
        groups.entry(k).or_default().push(p);
    }
    for names in groups.into_values() {
        if names.len() > 1 {
            let first = names.iter().min().cloned();
            for n in names {
                snap.get_mut(&n).expect("entry").link_group = first.clone();
            }
        }
    }
}

/// Snapshot a real directory tree.
pub fn snapshot_dir(root: &Path) -> Snapshot {
    let mut snap = Snapshot::new();
    let mut keys = Vec::new();
    let mut stack = vec![(root.to_path_buf(), Vec::new())];
    while let Some((path, rel)) = stack.pop() {
        let m =
            std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let kind = kind_of(m.mode());
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(&path).into_iter().flatten() {
            if let Ok(Some(v)) = xattr::get(&path, &name) {
                xattrs.insert(name.as_bytes().to_vec(), v);
            }
        }
        let (size, digest) = if kind == 'f' {
            let data = std::fs::read(&path).expect("read file");
            (data.len() as u64, sha(&data))
        } else {
            (0, String::new())
        };
        let target = if kind == 'l' {
            std::fs::read_link(&path).expect("readlink").as_os_str().as_bytes().to_vec()
        } else {
            Vec::new()
        };
        let rdev = if matches!(kind, 'c' | 'b') {
            (libc::major(m.rdev()), libc::minor(m.rdev()))
        } else {
            (0, 0)
        };
        if kind != 'd' {
            keys.push((rel.clone(), (m.dev(), m.ino())));
        }
        snap.insert(
            rel.clone(),
            Entry {
                kind,
                perm: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec() as u32),
                size,
                digest,
                target,
                rdev,
                xattrs,
                link_group: None,
            },
        );
        if kind == 'd' {
            for e in std::fs::read_dir(&path).expect("read_dir") {
                let e = e.expect("dirent");
                let mut r = rel.clone();
                if !r.is_empty() {
                    r.push(b'/');
                }
                r.extend_from_slice(e.file_name().as_bytes());
                stack.push((e.path(), r));
            }
        }
    }
    set_link_groups(&mut snap, keys);
    snap
}

/// Snapshot an image through the reader, data through `src`.
pub fn snapshot_image(img: &Image, src: &dyn ChunkReader) -> Snapshot {
    let mut snap = Snapshot::new();
    let mut keys = Vec::new();
    img.walk::<strata::rafs::reader::ReadError>(|path, inode| {
        let rel = path.strip_prefix(b"/").unwrap_or(path).to_vec();
        let d = &inode.disk;
        let kind = kind_of(u32::from(d.mode));
        let (size, digest) = if kind == 'f' {
            let data = img.read(inode, 0, d.size, src)?;
            assert_eq!(data.len() as u64, d.size, "{}: short read", String::from_utf8_lossy(path));
            (d.size, sha(&data))
        } else {
            (0, String::new())
        };
        let target = if kind == 'l' { img.readlink(inode)? } else { Vec::new() };
        let rdev = inode.rdev();
        if kind != 'd' {
            keys.push((rel.clone(), inode.nid));
        }
        snap.insert(
            rel,
            Entry {
                kind,
                perm: u32::from(d.mode) & 0o7777,
                uid: d.uid,
                gid: d.gid,
                mtime: (d.mtime as i64, d.mtime_nsec),
                size,
                digest,
                target,
                rdev: (libc::major(rdev), libc::minor(rdev)),
                xattrs: img.xattrs(inode)?.into_iter().collect(),
                link_group: None,
            },
        );
        Ok(true)
    })
    .expect("walk image");
    set_link_groups(&mut snap, keys);
    snap
}

/// Snapshot a tar stream (plain or gzip). Whiteout entries are kept as plain entries.
pub fn snapshot_tar(mut r: impl Read) -> Snapshot {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).expect("tar head");
    let whole = std::io::Cursor::new(head.to_vec()).chain(r);
    let reader: Box<dyn Read> = if head == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(whole))
    } else {
        Box::new(whole)
    };
    let mut ar = tar::Archive::new(reader);
    let mut snap = Snapshot::new();
    let mut keys: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let norm = |p: &[u8]| -> Vec<u8> {
        let mut p = p;
        while let Some(r) = p.strip_prefix(b"./").or_else(|| p.strip_prefix(b"/")) {
            p = r;
        }
        let mut v = p.to_vec();
        while v.last() == Some(&b'/') {
            v.pop();
        }
        if v == b"." {
            v.clear();
        }
        v
    };
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = norm(&e.path_bytes());
        let h = e.header().clone();
        let t = h.entry_type();
        let mut xattrs = BTreeMap::new();
        let mut mtime = (h.mtime().expect("mtime") as i64, 0u32);
        if let Some(exts) = e.pax_extensions().expect("pax") {
            for x in exts {
                let x = x.expect("pax ext");
                if let Some(n) = x.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.insert(n.to_vec(), x.value_bytes().to_vec());
                } else if x.key_bytes() == b"mtime" {
                    let s = String::from_utf8_lossy(x.value_bytes()).into_owned();
                    let (a, b) = s.split_once('.').unwrap_or((&s, ""));
                    let frac: String = b.chars().chain(std::iter::repeat('0')).take(9).collect();
                    mtime = (a.parse().expect("secs"), frac.parse().expect("nsec"));
                }
            }
        }
        if t == tar::EntryType::Link {
            let target = norm(&e.link_name_bytes().expect("link target"));
            let mut entry = snap.get(&target).cloned().expect("hardlink target precedes link");
            entry.link_group = None;
            snap.insert(path.clone(), entry);
            keys.push((path, target.clone()));
            if !keys.iter().any(|(p, _)| *p == target) {
                keys.push((target.clone(), target));
            }
            continue;
        }
        let kind = match t {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            _ => 'f',
        };
        let mut data = Vec::new();
        if kind == 'f' {
            e.read_to_end(&mut data).expect("tar data");
        }
        let target =
            if kind == 'l' { e.link_name_bytes().expect("target").to_vec() } else { Vec::new() };
        let rdev = if matches!(kind, 'c' | 'b') {
            (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        snap.insert(
            path,
            Entry {
                kind,
                perm: h.mode().expect("mode") & 0o7777,
                uid: h.uid().expect("uid") as u32,
                gid: h.gid().expect("gid") as u32,
                mtime,
                size: data.len() as u64,
                digest: if kind == 'f' { sha(&data) } else { String::new() },
                target,
                rdev,
                xattrs,
                link_group: None,
            },
        );
    }
    let mut groups: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
    for (p, k) in keys {
        groups.entry(k).or_default().push(p);
    }
    for names in groups.into_values() {
        let first = names.iter().min().cloned();
        for n in names {
            if let Some(e) = snap.get_mut(&n) {
                e.link_group = first.clone();
            }
        }
    }
    snap
}

/// Human-readable differences between two snapshots (empty when equal under `cmp`).
pub fn diff(want: &Snapshot, got: &Snapshot, cmp: Compare) -> Vec<String> {
    let mut out = Vec::new();
    for (p, w) in want {
        let shown = String::from_utf8_lossy(p);
        let Some(g) = got.get(p) else {
            out.push(format!("missing: /{shown}"));
            continue;
        };
        let mut w = w.clone();
        let mut g = g.clone();
        let root = p.is_empty();
        if !cmp.mtime || (w.kind == 'd' && !cmp.dir_mtime) || (root && !cmp.root_attrs) {
            w.mtime = (0, 0);
            g.mtime = (0, 0);
        }
        if !cmp.owner || (root && !cmp.root_attrs) {
            (w.uid, w.gid, g.uid, g.gid) = (0, 0, 0, 0);
        }
        if !cmp.xattrs {
            w.xattrs.clear();
            g.xattrs.clear();
        }
        if root && !cmp.root_attrs {
            w.perm = 0;
            g.perm = 0;
        }
        if w != g {
            out.push(format!("differs: /{shown}\n  want {w:?}\n  got  {g:?}"));
        }
    }
    for p in got.keys() {
        if !want.contains_key(p) {
            out.push(format!("unexpected: /{}", String::from_utf8_lossy(p)));
        }
    }
    out
}

/// Assert two snapshots are equal, printing at most 20 differences.
pub fn assert_same(want: &Snapshot, got: &Snapshot, cmp: Compare, what: &str) {
    let d = diff(want, got, cmp);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n{}",
        d.len(),
        d.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Thread `tid` of process `pid`: its scheduling policy as the kernel reports it (0
/// SCHED_OTHER, 5 SCHED_IDLE), None when it has gone.
pub fn thread_policy(pid: u32, tid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // Fields after the parenthesised name start at field 3; the policy is field 41.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(41 - 3)?.parse().ok()
}

/// Whether a thread of this process may come back from SCHED_IDLE (what the access log's
/// writer checks before it goes idle: root without CAP_SYS_NICE may not, a user with a high
/// RLIMIT_NICE may), tried on a spare thread: raise its nice value by one, lower it back.
pub fn may_leave_sched_idle() -> bool {
    std::thread::spawn(|| {
        let tid = strata::sys::gettid();
        let Ok(nice) = strata::sys::thread_nice(tid) else { return false };
        nice < 19
            && strata::sys::set_thread_nice(tid, nice + 1).is_ok()
            && strata::sys::set_thread_nice(tid, nice).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// True when running as root. Otherwise prints why `test` is skipped and returns false, so a
/// non-root run says what it did not test instead of passing silently.
pub fn require_root(test: &str, why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root ({why})");
    false
}

/// True when `tool` is on PATH; otherwise prints why `test` is skipped... unless the
/// environment says CI (STRATA_CI=1), where a missing tool is a failure.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var_os("STRATA_CI").is_some() {
        panic!("{test}: {tool} is not installed (scripts/install-deps.sh installs it)");
    }
    eprintln!("SKIPPED {test}: {tool} not installed (run scripts/install-deps.sh)");
    false
}

/// Path of the strata binary under test.
pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

/// Run strata with `args`; panics with stdout/stderr on failure.
pub fn strata(args: &[&str]) -> Output {
    let out = Command::new(strata_bin()).args(args).output().expect("spawn strata");
    assert!(
        out.status.success(),
        "strata {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run strata expecting failure; returns stderr.
pub fn strata_fails(args: &[&str]) -> String {
    let out = Command::new(strata_bin()).args(args).output().expect("spawn strata");
    assert!(!out.status.success(), "strata {args:?} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The single blob file in `dir`.
pub fn only_blob(dir: &Path) -> PathBuf {
    let v: Vec<_> =
        std::fs::read_dir(dir).expect("blob dir").map(|e| e.expect("e").path()).collect();
    assert_eq!(v.len(), 1, "expected one blob in {}: {v:?}", dir.display());
    v[0].clone()
}

/// A direct (uncached) chunk reader over a blob dir.
pub fn blob_reader(img: &Image, dir: &Path) -> strata::storage::cache::DirectReader {
    strata::storage::cache::DirectReader::new(
        std::sync::Arc::new(strata::storage::backend::LocalFs::new(dir)),
        &img.blobs,
    )
    .expect("direct reader")
}

/// Run `fsck.erofs` on a bootstrap with each blob as an extra device.
pub fn fsck_erofs(boot: &Path, blobs: &[PathBuf]) -> Result<(), String> {
    let mut cmd = Command::new("fsck.erofs");
    for b in blobs {
        cmd.arg(format!("--device={}", b.display()));
    }
    let out = cmd.arg(boot).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `len` deterministic bytes that do not repeat at chunk scale (xorshift from `seed`), so
/// files made of them share no chunk by accident.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A temporary path as the `&str` command lines take.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
