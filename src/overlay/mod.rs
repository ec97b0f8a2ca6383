//! The writable union filesystem: an upper directory stacked on read-only lower layers.
//!
//! The upper directory uses kernel overlayfs's on-disk format, so either implementation can
//! mount what the other wrote: a whiteout is a char device 0/0, an opaque directory carries
//! `trusted.overlay.opaque=y`, a renamed lower directory carries `trusted.overlay.redirect`
//! (the absolute path of its lower origin). Lower layers implement [`layer::Layer`]: RAFS
//! images and plain directories (where OCI `.wh.` whiteouts count too).
//!
//! Objects are nodes in an [`inode::Table`]: a node knows its upper object by kernel file handle
//! (so renames never invalidate it and no descriptor is held per inode) and its lower objects
//! by layer id. Copy-up stages the object in the work directory and renames it into place, so
//! a crash leaves either the old state or the complete new object. Inode numbers shown to users
//! come from the lower origin and survive copy-up (persisted in `trusted.overlay.strata.ino`).
//!
//! The FUSE side is in [`fs`]; docs/overlay.md lists the semantics and where we differ from the
//! kernel.

pub mod copyup;
pub mod fs;
pub mod inode;
pub mod layer;
pub mod listing;
pub mod passthrough;
pub mod upper;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::stat64;
use parking_lot::{Mutex, RwLock};

use self::inode::{NodeView, Table};
use self::layer::{Found, Layer};
use self::upper::Upper;

/// How long the kernel may cache entries and attributes. Every change goes through the mount
/// and the kernel keeps its caches coherent for those, so this can be long.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(86400);

/// Upper directories whose descriptors stay open (see [`DirFds`]): more than the directories a
/// build or an unpack works in at once, far below any descriptor limit.
const DIR_FDS: usize = 512;

/// Errors setting up an overlay.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// A directory given is unusable.
    #[error("{what} {path}: {source}")]
    Dir {
        /// Which option.
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The upper and work directories are on different filesystems.
    #[error("upperdir {upper} and workdir {work} must be on the same filesystem")]
    CrossDevice {
        /// Upper.
        upper: String,
        /// Work.
        work: String,
    },
    /// The upper filesystem cannot name inodes by handle.
    #[error("upperdir {0}: the filesystem does not support file handles (name_to_handle_at): {1}")]
    NoHandles(String, io::Error),
    /// No layers.
    #[error("an overlay needs at least one lower layer")]
    NoLowers,
}

/// What to stack.
pub struct OverlayOptions {
    /// Writable upper directory.
    pub upper: PathBuf,
    /// Work directory on the upper's filesystem (staging for copy-up and whiteouts).
    pub work: PathBuf,
    /// Read-only layers, top first.
    pub lowers: Vec<Arc<dyn Layer>>,
    /// fsync copied-up files that hold data before renaming them into place (kernel overlayfs
    /// does, unless mounted `volatile`).
    pub sync_copyup: bool,
    /// Entry and attribute cache timeout.
    pub timeout: Duration,
    /// Hand plain files to the kernel (FUSE passthrough) where the kernel offers it.
    pub passthrough: bool,
}

/// An open file of the overlay (directories have no handles: see [`listing`]).
pub enum Open {
    /// A file of the upper directory (shared with [`OverlayFs`]'s open-file index).
    Upper(Arc<File>),
    /// A lower file read through a plain file.
    Lower(Arc<File>),
    /// A lower file read through its layer.
    Layer(usize, u64),
}

impl Open {
    /// The plain file a READ of this handle reads, if there is one.
    pub fn file(&self) -> Option<&File> {
        match self {
            Open::Upper(f) | Open::Lower(f) => Some(f.as_ref()),
            Open::Layer(..) => None,
        }
    }
}

/// The union filesystem.
pub struct OverlayFs {
    layers: Vec<Arc<dyn Layer>>,
    upper: Upper,
    table: Mutex<Table>,
    handles: RwLock<std::collections::HashMap<u64, Arc<Open>>>,
    /// The upper files open through handles, per node: what node operations without a handle
    /// (SETATTR of fchmod/fchown/futimens, GETATTR, xattrs) use instead of opening the node
    /// by its file handle and closing it again (`tar` makes five such requests per file).
    open_files: Mutex<std::collections::HashMap<u64, Vec<Arc<File>>>>,
    /// Nodes being executed: open by an exec (`__FMODE_EXEC`) and not yet released. See
    /// [`OverlayFs::check_truncate_open`].
    executing: Mutex<Execs>,
    next_handle: AtomicU64,
    /// Per-node copy-up locks (only while a copy-up of that node runs).
    copyups: Mutex<std::collections::HashMap<u64, Arc<Mutex<()>>>>,
    copy_up_stats: Arc<copyup::CopyUpStats>,
    dirs: Mutex<DirFds>,
    /// Listings of directory passes in progress (there are no directory handles).
    listings: listing::Listings,
    /// The kernel takes ENOSYS from OPENDIR as "no OPENDIR/RELEASEDIR needed" (set at INIT).
    no_opendir: std::sync::atomic::AtomicBool,
    sync_copyup: bool,
    timeout: Duration,
    /// Passthrough is wanted ([`OverlayOptions::passthrough`]) ...
    want_passthrough: bool,
    /// ... and, once INIT enabled it, in use.
    passthrough: std::sync::OnceLock<passthrough::Passthrough>,
}

/// The exec opens of nodes: their handles and, per node, how many.
#[derive(Default)]
struct Execs {
    handles: std::collections::HashSet<u64>,
    nodes: std::collections::HashMap<u64, u32>,
}

/// A descriptor of a node's upper object ([`OverlayFs::upper_fd`]).
enum UpperFd {
    /// O_PATH: kept for a removed object, cached for a directory, or opened by handle.
    Path(Arc<OwnedFd>),
    /// A file the node has open through a handle.
    Open(Arc<File>),
}

impl From<OwnedFd> for UpperFd {
    fn from(fd: OwnedFd) -> Self {
        UpperFd::Path(Arc::new(fd))
    }
}

impl AsRawFd for UpperFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            UpperFd::Path(fd) => fd.as_raw_fd(),
            UpperFd::Open(f) => f.as_raw_fd(),
        }
    }
}

/// O_PATH descriptors of upper directories by node, so that every LOOKUP, CREATE, copy-up
/// or rename in a directory does not reopen it by file handle (open_by_handle_at + close each
/// time). An entry never goes stale: a node's upper object, once it has one, never changes
/// (copy-up sets it once; a removed one is the node's `kept` descriptor, which wins). Entries
/// go when their node is forgotten or its directory removed, and the oldest first past
/// [`DIR_FDS`].
#[derive(Default)]
struct DirFds {
    fds: std::collections::HashMap<u64, Arc<OwnedFd>>,
    /// Insertion order (may hold ids removed since; skipped when evicting).
    order: std::collections::VecDeque<u64>,
}

impl DirFds {
    fn get(&self, id: u64) -> Option<Arc<OwnedFd>> {
        self.fds.get(&id).cloned()
    }

    fn insert(&mut self, id: u64, fd: Arc<OwnedFd>) {
        if self.fds.insert(id, fd).is_some() {
            return;
        }
        self.order.push_back(id);
        while self.fds.len() > DIR_FDS {
            match self.order.pop_front() {
                Some(old) => {
                    self.fds.remove(&old);
                }
                None => break,
            }
        }
        if self.order.len() > 2 * DIR_FDS {
            let fds = &self.fds;
            self.order.retain(|id| fds.contains_key(id));
        }
    }

    fn remove(&mut self, id: u64) {
        self.fds.remove(&id);
    }
}

/// `st_ino` shown for an object of lower layer `layer` with inode number `ino`.
pub fn lower_ino(layer: usize, ino: u64) -> u64 {
    ((layer as u64 + 1) << 48) | (ino & ((1 << 48) - 1))
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

fn is_dir(st: &stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// What a name resolves to in a merged directory.
pub struct Resolved {
    /// The upper object: handle, attributes, and the ino it records (copied-up origin).
    pub upper: Option<(sys_handle::FileHandle, stat64, Option<u64>)>,
    /// The lower objects: for a directory every merged lower dir, top first; otherwise the one.
    pub lowers: Vec<(usize, u64)>,
    /// Attributes of the first lower object.
    pub lower_st: Option<stat64>,
    /// Directories: the path of the lower objects inside their layers.
    pub lower_path: Option<Arc<[u8]>>,
}

/// Re-export of the handle type used by nodes.
pub mod sys_handle {
    pub use crate::sys::FileHandle;
}

impl OverlayFs {
    /// Stack `opts.upper` on `opts.lowers`. Leftovers of an interrupted copy-up in the work
    /// directory are removed.
    pub fn new(opts: OverlayOptions) -> Result<Self, OverlayError> {
        if opts.lowers.is_empty() {
            return Err(OverlayError::NoLowers);
        }
        let upper = Upper::new(&opts.upper, &opts.work)?;
        let mut lowers = Vec::new();
        let mut lower_path = Some(Arc::from(&b""[..]));
        for (i, l) in opts.lowers.iter().enumerate() {
            let root = l.root().map_err(|source| OverlayError::Dir {
                what: "lowerdir",
                path: l.describe(),
                source,
            })?;
            lowers.push((i, root));
            if l.is_opaque(root).unwrap_or(false) {
                break;
            }
        }
        if lowers.is_empty() {
            lower_path = None;
        }
        let root_ino = match lowers.first() {
            Some(&(l, id)) => opts.lowers[l].getattr(id).map(|st| lower_ino(l, st.st_ino)).ok(),
            None => None,
        };
        let root_handle = upper
            .root_handle()
            .map_err(|e| OverlayError::NoHandles(opts.upper.display().to_string(), e))?;
        let root_st = crate::sys::fstatat(upper.root_fd(), b"").map_err(|source| {
            OverlayError::Dir { what: "upperdir", path: opts.upper.display().to_string(), source }
        })?;
        let table = Table::new(
            root_handle,
            root_st.st_ino,
            lowers,
            lower_path,
            root_ino.unwrap_or(root_st.st_ino),
        );
        // The kernel applied the caller's umask already; create with exactly that mode.
        crate::sys::set_umask(0);
        Ok(Self {
            layers: opts.lowers,
            upper,
            table: Mutex::new(table),
            handles: RwLock::new(Default::default()),
            open_files: Mutex::new(Default::default()),
            executing: Mutex::new(Default::default()),
            next_handle: AtomicU64::new(1),
            copyups: Mutex::new(Default::default()),
            copy_up_stats: Default::default(),
            dirs: Mutex::new(Default::default()),
            listings: Default::default(),
            no_opendir: Default::default(),
            sync_copyup: opts.sync_copyup,
            timeout: opts.timeout,
            want_passthrough: opts.passthrough,
            passthrough: Default::default(),
        })
    }

    /// Whether this overlay would hand plain files to the kernel (FUSE passthrough).
    pub fn wants_passthrough(&self) -> bool {
        self.want_passthrough
    }

    /// INIT enabled passthrough: register backing files on FUSE device `dev` from now on.
    pub fn start_passthrough(&self, dev: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        let p = passthrough::Passthrough::new(dev)?;
        let _ = self.passthrough.set(p);
        Ok(())
    }

    /// Passthrough, when INIT enabled it.
    pub fn passthrough(&self) -> Option<&passthrough::Passthrough> {
        self.passthrough.get()
    }

    /// The upper directory.
    pub fn upper_dir(&self) -> &Path {
        self.upper.path()
    }

    fn view(&self, id: u64) -> io::Result<NodeView> {
        self.table.lock().view(id).ok_or_else(|| errno(libc::ESTALE))
    }

    /// A descriptor of the node's upper object, if it has one: the kept one of a removed
    /// object, one of its open files, the cached one of a directory, else opened (O_PATH) by
    /// handle.
    fn upper_fd(&self, v: &NodeView) -> io::Result<Option<UpperFd>> {
        if let Some(k) = &v.kept {
            return Ok(Some(UpperFd::Path(k.clone())));
        }
        let Some(h) = &v.upper else { return Ok(None) };
        if !v.is_dir() {
            if let Some(f) = self.open_files.lock().get(&v.id).and_then(|fs| fs.first()) {
                return Ok(Some(UpperFd::Open(f.clone())));
            }
            return self.upper.open(h, libc::O_PATH | libc::O_NOFOLLOW).map(|fd| Some(fd.into()));
        }
        if let Some(fd) = self.dirs.lock().get(v.id) {
            return Ok(Some(UpperFd::Path(fd)));
        }
        let fd = Arc::new(self.upper.open(h, libc::O_PATH | libc::O_DIRECTORY)?);
        self.dirs.lock().insert(v.id, fd.clone());
        Ok(Some(UpperFd::Path(fd)))
    }

    /// Upper descriptor (O_PATH) of a directory that has one.
    fn dir_fd(&self, v: &NodeView) -> io::Result<Arc<OwnedFd>> {
        if !v.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        match self.upper_fd(v)? {
            Some(UpperFd::Path(fd)) => Ok(fd),
            Some(UpperFd::Open(_)) | None => Err(errno(libc::ESTALE)),
        }
    }

    /// Node `id` is gone, or its upper directory was removed: drop its cached descriptor.
    fn drop_dir_fd(&self, id: u64) {
        self.dirs.lock().remove(id);
    }

    /// Open the node's upper object with `flags`: by its file handle, or, once it was removed,
    /// through the descriptor kept for it (a handle no longer opens an unlinked inode).
    fn open_upper(&self, v: &NodeView, flags: i32) -> io::Result<OwnedFd> {
        if let Some(k) = &v.kept {
            if flags & libc::O_PATH != 0 {
                return k.try_clone();
            }
            // Reopening through /proc follows the link to the object itself, which works for
            // an unlinked inode too.
            let fd = nix::fcntl::open(
                upper::as_path(&upper::fd_path(k.as_raw_fd())),
                nix::fcntl::OFlag::from_bits_truncate(
                    (flags & !libc::O_NOFOLLOW) | libc::O_CLOEXEC,
                ),
                nix::sys::stat::Mode::empty(),
            )?;
            return Ok(crate::sys::owned_fd(fd));
        }
        let h = v.upper.as_ref().ok_or_else(|| errno(libc::ESTALE))?;
        self.upper.open(h, flags)
    }

    /// Attributes of a node as users see them.
    fn stat_view(&self, v: &NodeView) -> io::Result<stat64> {
        let mut st = match self.upper_fd(v)? {
            Some(fd) => crate::sys::fstatat(fd.as_raw_fd(), b"")?,
            None => {
                let &(l, id) = v.lowers.first().ok_or_else(|| errno(libc::ESTALE))?;
                self.layers[l].getattr(id)?
            }
        };
        self.present(v, &mut st);
        Ok(st)
    }

    /// Adjust real attributes for the overlay: the stable inode number, and nlink 1 for a
    /// merged directory (its real link counts do not count subdirectories of other layers,
    /// and 1 tells `find` not to use them).
    fn present(&self, v: &NodeView, st: &mut stat64) {
        st.st_ino = v.ino;
        if is_dir(st) && v.kept.is_none() && (v.lowers.len() + usize::from(v.upper.is_some())) > 1 {
            st.st_nlink = 1;
        }
    }

    /// Resolve `name` in the merged directory `p`.
    fn resolve(&self, p: &NodeView, name: &[u8]) -> io::Result<Option<Resolved>> {
        let mut r = Resolved { upper: None, lowers: Vec::new(), lower_st: None, lower_path: None };
        let mut search_lower = true;
        let mut redirect: Option<Vec<u8>> = None;
        if let Some(pfd) = self.upper_fd(p)? {
            match crate::sys::fstatat(pfd.as_raw_fd(), name) {
                Ok(st) if layer::is_whiteout(&st) => return Ok(None),
                Ok(st) => {
                    let origin = upper::origin_ino_at(pfd.as_raw_fd(), name);
                    if is_dir(&st) {
                        if upper::is_opaque_at(pfd.as_raw_fd(), name) {
                            search_lower = false;
                        }
                        redirect = upper::redirect_at(pfd.as_raw_fd(), name);
                    } else {
                        search_lower = false;
                    }
                    let h = crate::sys::name_to_handle_at(pfd.as_raw_fd(), name)?;
                    r.upper = Some((h, st, origin));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        if search_lower {
            match redirect {
                Some(abs) if abs.starts_with(b"/") => {
                    let rel = abs.strip_prefix(b"/").unwrap_or(&abs).to_vec();
                    self.resolve_abs(&rel, &mut r)?;
                    r.lower_path = Some(rel.into());
                }
                other => {
                    let lname = other.as_deref().unwrap_or(name);
                    self.resolve_lower(p, lname, &mut r)?;
                    if let Some(pp) = &p.lower_path {
                        r.lower_path = Some(join(pp, lname).into());
                    }
                }
            }
        }
        if r.upper.is_none() && r.lowers.is_empty() {
            return Ok(None);
        }
        Ok(Some(r))
    }

    /// Look `name` up in the lower directories of `p`, merging directories.
    fn resolve_lower(&self, p: &NodeView, name: &[u8], r: &mut Resolved) -> io::Result<()> {
        let merging_dir = r.upper.as_ref().map(|(_, st, _)| is_dir(st));
        for &(l, dir) in &p.lowers {
            match self.layers[l].lookup(dir, name)? {
                Found::Whiteout => break,
                Found::Missing => continue,
                Found::Entry(id, st) => {
                    // Below a directory only directories merge; anything else ends it.
                    if (merging_dir == Some(true) || !r.lowers.is_empty()) && !is_dir(&st) {
                        break;
                    }
                    if r.lower_st.is_none() {
                        r.lower_st = Some(st);
                    }
                    r.lowers.push((l, id));
                    if !is_dir(&st) || self.layers[l].is_opaque(id)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Follow an absolute redirect (`a/b/c` from each layer's root).
    fn resolve_abs(&self, rel: &[u8], r: &mut Resolved) -> io::Result<()> {
        for (l, layer) in self.layers.iter().enumerate() {
            let mut cur = layer.root()?;
            let mut st = None;
            let mut gone = false;
            for comp in rel.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
                match layer.lookup(cur, comp)? {
                    Found::Entry(id, s) => {
                        cur = id;
                        st = Some(s);
                    }
                    _ => {
                        gone = true;
                        break;
                    }
                }
            }
            let Some(s) = st.filter(|s| !gone && is_dir(s)) else { continue };
            if r.lower_st.is_none() {
                r.lower_st = Some(s);
            }
            r.lowers.push((l, cur));
            if layer.is_opaque(cur)? {
                break;
            }
        }
        Ok(())
    }

    /// Whether a lower layer below `p` still shows `name` (then removing or moving it from the
    /// upper needs a whiteout).
    fn lower_has(&self, p: &NodeView, name: &[u8]) -> io::Result<bool> {
        for &(l, dir) in &p.lowers {
            match self.layers[l].lookup(dir, name)? {
                Found::Whiteout => return Ok(false),
                Found::Missing => continue,
                Found::Entry(..) => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Install a resolved object as a node (or find the node it already is), counting one
    /// kernel lookup; returns its id and attributes.
    fn install(&self, parent: u64, name: &[u8], r: Resolved) -> io::Result<(u64, stat64)> {
        let (mut st, ino) = match (&r.upper, &r.lower_st) {
            (Some((_, st, origin)), lst) => {
                let ino = origin
                    .or_else(|| {
                        let (&(l, _), lst) = (r.lowers.first()?, lst.as_ref()?);
                        Some(lower_ino(l, lst.st_ino))
                    })
                    .unwrap_or(st.st_ino);
                (*st, ino)
            }
            (None, Some(lst)) => (*lst, lower_ino(r.lowers[0].0, lst.st_ino)),
            (None, None) => return Err(errno(libc::ENOENT)),
        };
        let id = self.table.lock().install(parent, name, &r, st.st_mode & libc::S_IFMT, ino);
        let v = self.view(id)?;
        self.present(&v, &mut st);
        Ok((id, st))
    }

    /// Register an open object of node `node`; returns its handle.
    fn add_handle(&self, node: u64, o: Open) -> u64 {
        if let Open::Upper(f) = &o {
            self.open_files.lock().entry(node).or_default().push(f.clone());
        }
        let h = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(h, Arc::new(o));
        h
    }

    /// Forget open handle `handle` of node `node`. The file is closed (or the listing freed)
    /// after the locks are released: RELEASE is asynchronous, so it runs next to the OPEN and
    /// READs of the next file, which would otherwise wait on a close(2) under the lock
    /// (spinning, then sched_yield, on 2 CPUs).
    fn drop_handle(&self, node: u64, handle: u64) {
        let open = self.handles.write().remove(&handle);
        if let Some(Open::Upper(f)) = open.as_deref() {
            let mut files = self.open_files.lock();
            if let Some(fs) = files.get_mut(&node) {
                fs.retain(|g| !Arc::ptr_eq(f, g));
                if fs.is_empty() {
                    files.remove(&node);
                }
            }
        }
        drop(open);
    }

    /// Refuse an OPEN with O_TRUNC of node `node` while it is being executed (ETXTBSY). The
    /// kernel hands O_TRUNC to the OPEN (FUSE_ATOMIC_O_TRUNC) and checks for a running
    /// executable only afterwards, and only for O_RDONLY|O_TRUNC does the OPEN get that far:
    /// truncating there would cut the file under the running program, which then dies of
    /// SIGBUS or SIGSEGV at its next page fault, and the open still fails (pjdfstest
    /// open::etxtbsy; fuse-overlayfs has the same hole, kernel overlayfs does not).
    fn check_truncate_open(&self, node: u64) -> io::Result<()> {
        if self.executing.lock().nodes.contains_key(&node) {
            return Err(errno(libc::ETXTBSY));
        }
        Ok(())
    }

    /// Handle `handle` of node `node` is an exec's open.
    fn exec_opened(&self, node: u64, handle: u64) {
        let mut e = self.executing.lock();
        e.handles.insert(handle);
        *e.nodes.entry(node).or_default() += 1;
    }

    /// Handle `handle` of node `node` was released: if it was an exec's, the node may be
    /// written again once no other exec has it open.
    fn exec_released(&self, node: u64, handle: u64) {
        let mut e = self.executing.lock();
        if !e.handles.remove(&handle) {
            return;
        }
        if let Some(n) = e.nodes.get_mut(&node) {
            *n -= 1;
            if *n == 0 {
                e.nodes.remove(&node);
            }
        }
    }

    fn handle(&self, h: u64) -> io::Result<Arc<Open>> {
        self.handles.read().get(&h).cloned().ok_or_else(|| errno(libc::EBADF))
    }

    /// The open handle `h` if a READ of it returns a plain file's bytes as they are (an upper
    /// file, or a lower one read through a descriptor), for replies spliced from that file.
    pub fn plain_file(&self, h: u64) -> Option<Arc<Open>> {
        self.handles.read().get(&h).filter(|o| o.file().is_some()).cloned()
    }

    /// The path of node `id` in the merged tree (`/` for the root), by the names the node table
    /// knows; None for a forgotten node. For the access log's writer thread.
    pub fn path_of(&self, id: u64) -> Option<Vec<u8>> {
        let table = self.table.lock();
        let mut names = Vec::new();
        let mut cur = id;
        while cur != inode::ROOT {
            let v = table.view(cur)?;
            names.push(v.name);
            cur = v.parent;
            if names.len() > 4096 {
                return None;
            }
        }
        drop(table);
        if names.is_empty() {
            return Some(b"/".to_vec());
        }
        let mut path = Vec::new();
        for n in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(n);
        }
        Some(path)
    }
}

/// `dir/name` with `dir` possibly empty (the root).
fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_inos_are_unique_across_layers() {
        assert_ne!(lower_ino(0, 5), lower_ino(1, 5));
        assert_ne!(lower_ino(0, 5), 5);
        assert_eq!(lower_ino(2, 7) >> 48, 3);
    }

    #[test]
    fn join_handles_the_root() {
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a/b", b"c"), b"a/b/c");
    }
}
