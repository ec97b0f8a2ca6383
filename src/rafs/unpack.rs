//! Turn an image back into files: a directory (with owners, modes, times, xattrs, device
//! nodes, fifos, sockets, hardlinks) or a tar stream (PAX, with xattrs and nanosecond mtimes;
//! tar has no socket type, so sockets are skipped with a warning, as GNU tar does).
//! Every file type the builder accepts is written back.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::chunk::ChunkReader;
use super::reader::{Image, Inode, ReadError};

/// Errors of unpacking.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading the image failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the output failed.
    #[error("{path}: {source}")]
    Io {
        /// Output path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Bytes read per request while copying file data.
const COPY_UNIT: u64 = 1 << 20;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io { path: path.display().to_string(), source }
}

fn rel(path: &[u8]) -> &[u8] {
    let mut p = path;
    while let Some(r) = p.strip_prefix(b"/") {
        p = r;
    }
    p
}

/// Copy a regular file's data to `out` in bounded pieces.
fn copy_data(
    img: &Image,
    inode: &Inode,
    src: &dyn ChunkReader,
    mut out: impl Write,
    path: &Path,
) -> Result<(), UnpackError> {
    let mut off = 0;
    while off < inode.disk.size {
        let buf = img.read(inode, off, COPY_UNIT, src)?;
        if buf.is_empty() {
            break;
        }
        out.write_all(&buf).map_err(io_err(path))?;
        off += buf.len() as u64;
    }
    Ok(())
}

/// Unpack into directory `dest` (created if missing; it should be empty). Ownership is set
/// when running as root; xattrs in namespaces the caller may not set are reported as errors.
pub fn unpack_to_dir(img: &Image, src: &dyn ChunkReader, dest: &Path) -> Result<(), UnpackError> {
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    let mut first_path: HashMap<u64, PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, Inode)> = Vec::new();
    let is_root = nix::unistd::geteuid().is_root();
    img.walk::<UnpackError>(|path, inode| {
        let out = dest.join(OsStr::from_bytes(rel(path)));
        if !inode.is_dir() {
            if let Some(existing) = first_path.get(&inode.nid) {
                std::fs::hard_link(existing, &out).map_err(io_err(&out))?;
                return Ok(true);
            }
            first_path.insert(inode.nid, out.clone());
        }
        let mode = u32::from(inode.disk.mode) & 0o7777;
        match inode.file_type() {
            libc::S_IFDIR => {
                if path != b"/" {
                    std::fs::create_dir(&out).map_err(io_err(&out))?;
                }
                // Permissions and times of directories are set after their children exist.
                dirs.push((out.clone(), inode.clone()));
            }
            libc::S_IFREG => {
                let f = std::fs::File::create(&out).map_err(io_err(&out))?;
                copy_data(img, inode, src, std::io::BufWriter::with_capacity(1 << 20, &f), &out)?;
                f.set_len(inode.disk.size).map_err(io_err(&out))?;
            }
            libc::S_IFLNK => {
                let target = img.readlink(inode)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &out)
                    .map_err(io_err(&out))?;
            }
            t => {
                let kind = match t {
                    libc::S_IFCHR => nix::sys::stat::SFlag::S_IFCHR,
                    libc::S_IFBLK => nix::sys::stat::SFlag::S_IFBLK,
                    libc::S_IFIFO => nix::sys::stat::SFlag::S_IFIFO,
                    _ => nix::sys::stat::SFlag::S_IFSOCK,
                };
                nix::sys::stat::mknod(
                    &out,
                    kind,
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    inode.rdev(),
                )
                .map_err(|e| UnpackError::Io {
                    path: out.display().to_string(),
                    source: e.into(),
                })?;
            }
        }
        if !inode.is_dir() {
            set_meta(img, inode, &out, is_root)?;
        }
        Ok(true)
    })?;
    // Deepest first, so setting a parent's mtime is not undone by creating its children.
    for (out, inode) in dirs.iter().rev() {
        set_meta(img, inode, out, is_root)?;
    }
    Ok(())
}

fn set_meta(img: &Image, inode: &Inode, out: &Path, is_root: bool) -> Result<(), UnpackError> {
    let d = &inode.disk;
    let is_link = inode.file_type() == libc::S_IFLNK;
    for (name, value) in img.xattrs(inode)? {
        xattr::set(out, OsStr::from_bytes(&name), &value).map_err(io_err(out))?;
    }
    if is_root {
        std::os::unix::fs::lchown(out, Some(d.uid), Some(d.gid)).map_err(io_err(out))?;
    }
    if !is_link {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(u32::from(d.mode) & 0o7777))
            .map_err(io_err(out))?;
    }
    let ts = nix::sys::time::TimeSpec::new(d.mtime as i64, i64::from(d.mtime_nsec));
    nix::sys::stat::utimensat(None, out, &ts, &ts, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(|e| UnpackError::Io { path: out.display().to_string(), source: e.into() })?;
    Ok(())
}

/// Unpack as a PAX tar stream to `out`.
pub fn unpack_to_tar(
    img: &Image,
    src: &dyn ChunkReader,
    out: impl Write,
) -> Result<(), UnpackError> {
    let mut builder = tar::Builder::new(out);
    let mut first_path: HashMap<u64, Vec<u8>> = HashMap::new();
    let tar_path = Path::new("<tar>");
    img.walk::<UnpackError>(|path, inode| {
        let name: Vec<u8> = if path == b"/" { b"./".to_vec() } else { [b"./", rel(path)].concat() };
        // Before anything is written for it (a PAX header would describe the next entry).
        if inode.file_type() == libc::S_IFSOCK {
            // tar has no socket type. GNU tar skips sockets with a warning; so do we, rather
            // than change the file type silently. (Directory unpack recreates them.)
            eprintln!("warning: {}: socket not stored in tar", String::from_utf8_lossy(path));
            return Ok(true);
        }
        let d = &inode.disk;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, v) in img.xattrs(inode)? {
            pax.push((format!("SCHILY.xattr.{}", String::from_utf8_lossy(&k)), v));
        }
        if d.mtime_nsec != 0 {
            pax.push(("mtime".into(), format!("{}.{:09}", d.mtime, d.mtime_nsec).into_bytes()));
        }
        if !pax.is_empty() {
            builder
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io_err(tar_path))?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(u32::from(d.mode) & 0o7777);
        h.set_uid(u64::from(d.uid));
        h.set_gid(u64::from(d.gid));
        h.set_mtime(d.mtime);
        h.set_size(0);
        if !inode.is_dir() {
            if let Some(target) = first_path.get(&inode.nid) {
                h.set_entry_type(tar::EntryType::Link);
                builder
                    .append_link(&mut h, OsStr::from_bytes(&name), OsStr::from_bytes(target))
                    .map_err(io_err(tar_path))?;
                return Ok(true);
            }
            first_path.insert(inode.nid, name.clone());
        }
        let p = OsStr::from_bytes(&name);
        match inode.file_type() {
            libc::S_IFDIR => {
                h.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut h, p, std::io::empty()).map_err(io_err(tar_path))?;
            }
            libc::S_IFREG => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.size);
                let reader = ChunkStream {
                    img,
                    inode: inode.clone(),
                    src,
                    off: 0,
                    buf: Vec::new(),
                    pos: 0,
                    err: None,
                };
                builder.append_data(&mut h, p, reader).map_err(io_err(tar_path))?;
            }
            libc::S_IFLNK => {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = img.readlink(inode)?;
                builder
                    .append_link(&mut h, p, OsStr::from_bytes(&target))
                    .map_err(io_err(tar_path))?;
            }
            t => {
                h.set_entry_type(match t {
                    libc::S_IFCHR => tar::EntryType::Char,
                    libc::S_IFBLK => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                let rdev = inode.rdev();
                h.set_device_major(libc::major(rdev)).map_err(io_err(tar_path))?;
                h.set_device_minor(libc::minor(rdev)).map_err(io_err(tar_path))?;
                builder.append_data(&mut h, p, std::io::empty()).map_err(io_err(tar_path))?;
            }
        }
        Ok(true)
    })?;
    builder.into_inner().map_err(io_err(tar_path))?.flush().map_err(io_err(tar_path))?;
    Ok(())
}

/// A file's data as a `Read`, in bounded pieces.
struct ChunkStream<'a> {
    img: &'a Image,
    inode: Inode,
    src: &'a dyn ChunkReader,
    off: u64,
    buf: Vec<u8>,
    pos: usize,
    err: Option<String>,
}

impl std::io::Read for ChunkStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.err {
            return Err(std::io::Error::other(e.clone()));
        }
        if self.pos == self.buf.len() {
            if self.off >= self.inode.disk.size {
                return Ok(0);
            }
            self.buf = self
                .img
                .read(&self.inode, self.off, COPY_UNIT, self.src)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.off += self.buf.len() as u64;
            self.pos = 0;
            if self.buf.is_empty() {
                self.err = Some("file data ended early".into());
                return Err(std::io::Error::other("file data ended early"));
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
