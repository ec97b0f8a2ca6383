//! The upper directory and its work directory, in kernel overlayfs's on-disk format.
//!
//! Objects are reached through kernel file handles (`open_by_handle_at`), so the daemon holds
//! three descriptors however many files exist. Private xattrs live under `trusted.overlay.`,
//! which kernel overlayfs hides from users as we do: `opaque` and `redirect` are the kernel's,
//! `strata.ino` is ours (the inode number shown before copy-up, so it survives it and remounts).
//! Staging happens in `<workdir>/strata/`, which is emptied at mount (leftovers of a crash).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::OverlayError;
use crate::sys::FileHandle;

/// Every private overlay xattr starts with this; users neither see nor set them.
pub const PRIVATE_PREFIX: &[u8] = b"trusted.overlay.";
/// Opaque directory marker (value `y`).
pub const OPAQUE: &str = "trusted.overlay.opaque";
/// Redirect of a renamed directory to its lower origin (absolute path in the layers).
pub const REDIRECT: &str = "trusted.overlay.redirect";
/// The inode number a copied-up object showed (decimal).
pub const ORIGIN_INO: &str = "trusted.overlay.strata.ino";
/// A file capability (the kernel asks for it before every write, to drop it).
pub const CAPS: &str = "security.capability";
/// A directory's default ACL (read at every creation in it).
pub const DEFAULT_ACL: &str = "system.posix_acl_default";
/// Staging directory inside the work directory.
pub const STAGING: &str = "strata";

/// The writable layer.
pub struct Upper {
    path: PathBuf,
    root: OwnedFd,
    work: OwnedFd,
    next_tmp: AtomicU64,
    /// Our pid, in staging names (read once: it is a syscall).
    pid: u32,
}

/// Open a directory for reading (open_by_handle_at refuses O_PATH mount descriptors).
fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(p)?;
    Ok(f.into())
}

impl Upper {
    /// Open `upper` and prepare `work` (same filesystem, staging emptied).
    pub fn new(upper: &Path, work: &Path) -> Result<Self, OverlayError> {
        let dir_err = |what: &'static str, p: &Path| {
            let path = p.display().to_string();
            move |source| OverlayError::Dir { what, path, source }
        };
        let root = open_dir(upper).map_err(dir_err("upperdir", upper))?;
        let work_root = open_dir(work).map_err(dir_err("workdir", work))?;
        let (su, sw) = (
            crate::sys::fstatat(root.as_raw_fd(), b"").map_err(dir_err("upperdir", upper))?,
            crate::sys::fstatat(work_root.as_raw_fd(), b"").map_err(dir_err("workdir", work))?,
        );
        if su.st_dev != sw.st_dev {
            return Err(OverlayError::CrossDevice {
                upper: upper.display().to_string(),
                work: work.display().to_string(),
            });
        }
        let staging = work.join(STAGING);
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(dir_err("workdir", &staging))?;
        }
        std::fs::create_dir(&staging).map_err(dir_err("workdir", &staging))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
                .map_err(dir_err("workdir", &staging))?;
        }
        let work = open_dir(&staging).map_err(dir_err("workdir", &staging))?;
        Ok(Self {
            path: upper.canonicalize().unwrap_or_else(|_| upper.to_path_buf()),
            root,
            work,
            next_tmp: AtomicU64::new(0),
            pid: std::process::id(),
        })
    }

    /// The upper directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Descriptor of the upper root (also the mount fd for handles).
    pub fn root_fd(&self) -> RawFd {
        self.root.as_raw_fd()
    }

    /// Descriptor of the staging directory.
    pub fn work_fd(&self) -> RawFd {
        self.work.as_raw_fd()
    }

    /// The root's handle.
    pub fn root_handle(&self) -> io::Result<FileHandle> {
        crate::sys::name_to_handle_at(self.root.as_raw_fd(), b"")
    }

    /// Open the object `h` names.
    pub fn open(&self, h: &FileHandle, flags: i32) -> io::Result<OwnedFd> {
        crate::sys::open_by_handle_at(self.root.as_raw_fd(), h, flags)
    }

    /// A fresh staging name.
    pub fn tmp_name(&self) -> Vec<u8> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        format!("#{}-{n}", self.pid).into_bytes()
    }
}

/// `/proc/self/fd/<fd>`: the object itself (following it reaches the object, even O_PATH).
pub fn fd_path(fd: RawFd) -> Vec<u8> {
    format!("/proc/self/fd/{fd}").into_bytes()
}

/// `/proc/self/fd/<dirfd>/<name>`.
pub fn child_path(dirfd: RawFd, name: &[u8]) -> Vec<u8> {
    let mut p = fd_path(dirfd);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// As a `Path`.
pub fn as_path(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

fn get(path: &[u8], name: &str) -> Option<Vec<u8>> {
    xattr::get(as_path(path), name).ok().flatten()
}

/// Set once `getxattrat(2)` turned out to be missing (Linux before 6.13).
static NO_GETXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Xattr `attr` of `name` in directory `dirfd` (not following a final symlink), read with
/// `getxattrat` where the kernel has it: a lookup of every upper entry reads one, and the path
/// through /proc/self/fd costs more than twice as much. Errors read as absent, as in `get`.
fn get_at(dirfd: RawFd, name: &[u8], attr: &str) -> Option<Vec<u8>> {
    use std::sync::atomic::Ordering::Relaxed;
    if !NO_GETXATTRAT.load(Relaxed) {
        match crate::sys::getxattrat(dirfd, name, attr) {
            Ok(v) => return v,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => NO_GETXATTRAT.store(true, Relaxed),
            Err(_) => return None,
        }
    }
    get(&child_path(dirfd, name), attr)
}

/// The inode number recorded at copy-up for `name` in the upper directory `dirfd`, if any.
pub fn origin_ino_at(dirfd: RawFd, name: &[u8]) -> Option<u64> {
    std::str::from_utf8(&get_at(dirfd, name, ORIGIN_INO)?).ok()?.trim().parse().ok()
}

/// Whether the upper directory `name` in `dirfd` is opaque.
pub fn is_opaque_at(dirfd: RawFd, name: &[u8]) -> bool {
    get_at(dirfd, name, OPAQUE).as_deref() == Some(b"y")
}

/// The redirect of the upper directory `name` in `dirfd`.
pub fn redirect_at(dirfd: RawFd, name: &[u8]) -> Option<Vec<u8>> {
    get_at(dirfd, name, REDIRECT).filter(|v| !v.is_empty())
}

/// Set a private xattr on the object at `path` (not following a final symlink).
pub fn set_private(path: &[u8], name: &str, value: &[u8]) -> io::Result<()> {
    xattr::set(as_path(path), name, value)
}

/// Whether `name` is one of the overlay's private xattrs.
pub fn is_private(name: &[u8]) -> bool {
    name.starts_with(PRIVATE_PREFIX)
}

/// Make a whiteout `name` in `dirfd`.
pub fn whiteout(dirfd: RawFd, name: &[u8]) -> io::Result<()> {
    nix::sys::stat::mknodat(
        Some(dirfd),
        OsStr::from_bytes(name),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .map_err(io::Error::from)
}

/// `chown` without following a final symlink.
pub fn chown(dirfd: RawFd, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let (flags, n) = if name.is_empty() {
        (nix::fcntl::AtFlags::AT_EMPTY_PATH, OsStr::new(""))
    } else {
        (nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW, OsStr::from_bytes(name))
    };
    nix::unistd::fchownat(
        Some(dirfd),
        n,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        flags,
    )
    .map_err(io::Error::from)
}

/// `chmod` of the object at `path` (following: never used on symlinks).
pub fn chmod(path: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(as_path(path), std::fs::Permissions::from_mode(mode & 0o7777))
}

/// `renameat2`.
pub fn rename(
    olddir: RawFd,
    old: &[u8],
    newdir: RawFd,
    new: &[u8],
    flags: nix::fcntl::RenameFlags,
) -> io::Result<()> {
    nix::fcntl::renameat2(
        Some(olddir),
        OsStr::from_bytes(old),
        Some(newdir),
        OsStr::from_bytes(new),
        flags,
    )
    .map_err(io::Error::from)
}

/// `unlinkat`, of a directory when `dir`.
pub fn unlink(dirfd: RawFd, name: &[u8], dir: bool) -> io::Result<()> {
    nix::unistd::unlinkat(
        Some(dirfd),
        OsStr::from_bytes(name),
        if dir {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        },
    )
    .map_err(io::Error::from)
}

/// Remove `name` in `dirfd` and everything below it (staging cleanup; the tree is ours).
pub fn remove_tree(dirfd: RawFd, name: &[u8]) -> io::Result<()> {
    let p = child_path(dirfd, name);
    let path = as_path(&p);
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
