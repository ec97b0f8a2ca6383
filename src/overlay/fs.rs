//! The overlay as a fuse-backend-rs `FileSystem`: every FUSE operation.
//!
//! Permission checks are the kernel's (`default_permissions`); the daemon acts as root and
//! gives new objects the caller's owner (or the parent's group under a setgid directory).
//! Namespace operations of one directory are serialised by the kernel (it holds the parent's
//! inode lock), so a create, unlink or rename sees a stable directory here.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, WRITE_KILL_PRIV};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use nix::fcntl::RenameFlags;

use super::inode::NodeView;
use super::listing::Pass;
use super::upper::{self, child_path, fd_path};
use super::{errno, is_dir, Open, OverlayFs, UpperFd};

/// `__FMODE_EXEC`: set in the open flags the kernel passes on for an exec's open of the file.
const FMODE_EXEC: i32 = 0x20;

/// Longest name (NAME_MAX).
const NAME_MAX: usize = 255;

/// The xattr holding a POSIX access ACL (the kernel enforces it: FUSE_POSIX_ACL).
const ACL_ACCESS: &str = "system.posix_acl_access";
/// The xattr holding a directory's default ACL, inherited by what is created in it.
const ACL_DEFAULT: &str = upper::DEFAULT_ACL;

pub use super::listing::DirItem;

/// What to create.
enum Make<'a> {
    Dir(u32),
    Node(u32, u32),
    Symlink(&'a [u8]),
    File(u32, u32),
    Link(&'a NodeView),
}

fn check_name(name: &[u8]) -> io::Result<()> {
    if name.len() > NAME_MAX {
        return Err(errno(libc::ENAMETOOLONG));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    Ok(())
}

fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

impl OverlayFs {
    fn entry(&self, id: u64, st: stat64) -> Entry {
        Entry {
            inode: id,
            generation: 0,
            attr: st,
            attr_flags: 0,
            attr_timeout: self.attr_timeout(id),
            entry_timeout: self.timeout,
        }
    }

    /// How long the kernel may cache `id`'s attributes: not at all while a writable
    /// passthrough open can change them behind our back (see [`super::passthrough`]).
    fn attr_timeout(&self, id: u64) -> Duration {
        match self.passthrough() {
            Some(p) if p.has_writers(id) => Duration::ZERO,
            _ => self.timeout,
        }
    }

    fn negative(&self) -> Entry {
        self.entry(0, crate::sys::zeroed_stat64())
    }

    /// Resolve and install `name` in `parent`, counting a lookup (callers that only need the
    /// node for an operation give it back with `release`).
    fn child(&self, parent: &NodeView, name: &[u8]) -> io::Result<Option<(u64, stat64)>> {
        match self.resolve(parent, name)? {
            Some(r) => self.install(parent.id, name, r).map(Some),
            None => Ok(None),
        }
    }

    fn release(&self, id: u64) {
        if self.table.lock().forget(id, 1) {
            self.drop_dir_fd(id);
        }
    }

    /// The merged listing of directory `v` (without `.` and `..`).
    pub(crate) fn list(&self, v: &NodeView) -> io::Result<Vec<DirItem>> {
        use std::collections::HashSet;
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut items = Vec::new();
        if let Some(fd) = self.upper_fd(v)? {
            let dfd = fd.as_raw_fd();
            for e in std::fs::read_dir(upper::as_path(&fd_path(dfd)))? {
                let e = e?;
                let name = e.file_name().as_bytes().to_vec();
                let ft = e.file_type()?;
                use std::os::unix::fs::{DirEntryExt, FileTypeExt};
                if ft.is_char_device() {
                    if let Ok(st) = crate::sys::fstatat(dfd, &name) {
                        if super::layer::is_whiteout(&st) {
                            seen.insert(name);
                            continue;
                        }
                    }
                }
                let dtype = super::layer::dtype_of(ft);
                seen.insert(name.clone());
                items.push(DirItem { name, ino: e.ino(), dtype });
            }
        }
        let upper_count = items.len();
        for &(l, dir) in &v.lowers {
            for item in self.layers[l].readdir(dir)? {
                match item {
                    super::layer::DirItem::Whiteout(n) => {
                        seen.insert(n);
                    }
                    super::layer::DirItem::Entry(n, ino, dtype) => {
                        let shown = super::lower_ino(l, ino);
                        if seen.contains(&n) {
                            // An upper object over a lower one shows the lower inode number
                            // (copy-up keeps it).
                            if let Some(it) = items[..upper_count].iter_mut().find(|i| i.name == n)
                            {
                                if it.dtype == dtype {
                                    it.ino = shown;
                                }
                            }
                            continue;
                        }
                        seen.insert(n.clone());
                        items.push(DirItem { name: n, ino: shown, dtype });
                    }
                }
            }
        }
        Ok(items)
    }

    /// The listing of open directory `handle` for a READDIR at `offset`: taken anew at offset 0
    /// (opendir, rewinddir) and kept for the rest of the pass, so offsets stay valid.
    /// The listing a READDIR of `inode` at `offset` continues (see [`super::listing`]); None
    /// when the pass has read everything (its snapshot is then dropped).
    fn dir_pass(&self, inode: u64, offset: u64) -> io::Result<Option<Pass>> {
        let pass = self.listings.pass(inode, offset, || {
            let v = self.view(inode)?;
            if !v.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            let parent_ino = self.view(v.parent).map(|p| p.ino).unwrap_or(v.ino);
            let mut items = vec![
                DirItem { name: b".".to_vec(), ino: v.ino, dtype: u32::from(libc::DT_DIR) },
                DirItem { name: b"..".to_vec(), ino: parent_ino, dtype: u32::from(libc::DT_DIR) },
            ];
            items.extend(self.list(&v)?);
            Ok(items)
        })?;
        if pass.start >= pass.items.len() {
            self.listings.finish(&pass);
            return Ok(None);
        }
        Ok(Some(pass))
    }

    /// Create `name` in `parent`; `umask` is the caller's (the kernel leaves it to us, since
    /// a default ACL of the parent replaces it).
    fn make(
        &self,
        ctx: &Context,
        parent: u64,
        name: &[u8],
        what: Make<'_>,
        umask: u32,
    ) -> io::Result<(u64, stat64, Option<File>)> {
        check_name(name)?;
        let p = self.copy_up(parent, true)?;
        if !p.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let pfd = self.dir_fd(&p)?;
        let pfd = pfd.as_raw_fd();
        // Create in place; only when the name is taken look at what takes it (the kernel
        // looked it up and found nothing, so that is a whiteout, replaced through staging).
        let (file, exact) = match self.make_at(ctx, &p, pfd, pfd, name, &what, umask) {
            Ok(made) => made,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                match crate::sys::fstatat(pfd, name) {
                    Ok(st) if super::layer::is_whiteout(&st) => {}
                    Ok(_) => return Err(e),
                    Err(e2) if e2.raw_os_error() == Some(libc::ENOENT) => return Err(e),
                    Err(e2) => return Err(e2),
                }
                (self.replace_whiteout(ctx, &p, pfd, name, &what, umask)?, None)
            }
            Err(e) => return Err(e),
        };
        // The attributes make_at saw last, unless it changed them after (or renamed/linked).
        let st = match exact {
            Some(st) => st,
            None => crate::sys::fstatat(pfd, name)?,
        };
        let kind = st.st_mode & libc::S_IFMT;
        let id = match what {
            Make::Link(v) => {
                self.table.lock().add_lookup(v.id);
                v.id
            }
            _ => {
                let h = crate::sys::name_to_handle_at(pfd, name)?;
                self.table.lock().created(parent, name, kind, h, st.st_ino, st.st_ino)
            }
        };
        let v = self.view(id)?;
        let mut st = st;
        self.present(&v, &mut st);
        Ok((id, st, file))
    }

    /// Create `name` in `pfd` over the whiteout there: built in the staging directory, then
    /// renamed over it (a directory swapped in opaque, the whiteout then removed).
    fn replace_whiteout(
        &self,
        ctx: &Context,
        p: &NodeView,
        pfd: i32,
        name: &[u8],
        what: &Make<'_>,
        umask: u32,
    ) -> io::Result<Option<File>> {
        let work = self.upper.work_fd();
        let tmp = self.upper.tmp_name();
        let tname = tmp.as_slice();
        let file = match self.make_at(ctx, p, pfd, work, tname, what, umask) {
            Ok((f, _)) => f,
            Err(e) => {
                let _ = upper::remove_tree(work, tname);
                return Err(e);
            }
        };
        let placed = if let Make::Dir(_) = what {
            upper::set_private(&child_path(work, tname), upper::OPAQUE, b"y")
                .and_then(|()| upper::rename(work, tname, pfd, name, RenameFlags::RENAME_EXCHANGE))
                .and_then(|()| upper::unlink(work, tname, false))
        } else {
            upper::rename(work, tname, pfd, name, RenameFlags::empty())
        };
        if let Err(e) = placed {
            let _ = upper::remove_tree(work, tname);
            return Err(e);
        }
        Ok(file)
    }

    /// Create the object in `tdir`/`tname` (the parent `pfd`, or the staging dir when it
    /// replaces a whiteout) with the caller's ownership, and the parent's default ACL or else
    /// the caller's `umask` applied to its mode. Also returns its attributes when nothing
    /// changed them after they were read (a hard link: never).
    #[allow(clippy::too_many_arguments)]
    fn make_at(
        &self,
        ctx: &Context,
        p: &NodeView,
        pfd: i32,
        tdir: i32,
        tname: &[u8],
        what: &Make<'_>,
        umask: u32,
    ) -> io::Result<(Option<File>, Option<stat64>)> {
        use nix::sys::stat::{Mode, SFlag};
        let n = os(tname);
        let mut file = None;
        let mut mode = 0;
        let default_acl = if p.no_default_acl {
            None
        } else {
            match xattr::get_deref(upper::as_path(&fd_path(pfd)), ACL_DEFAULT) {
                Ok(Some(v)) => Some(v),
                Ok(None) => {
                    self.table.lock().default_acl_absent(p.id, p.xattr_gen);
                    None
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => None,
                Err(e) => return Err(e),
            }
        };
        // With a default ACL the new object's permissions come from it (the upper filesystem
        // applies it when creating in the parent itself); without one the umask applies.
        let umask = if default_acl.is_some() { 0 } else { umask & 0o777 };
        match *what {
            Make::Dir(m) => {
                mode = m & 0o7777 & !umask;
                nix::sys::stat::mkdirat(Some(tdir), n, Mode::from_bits_truncate(mode))?
            }
            Make::Node(m, rdev) => {
                let kind = m & libc::S_IFMT;
                if kind == libc::S_IFCHR && rdev == 0 {
                    // 0/0 is the whiteout encoding; kernel overlayfs refuses it too.
                    return Err(errno(libc::EPERM));
                }
                mode = m & 0o7777 & !umask;
                nix::sys::stat::mknodat(
                    Some(tdir),
                    n,
                    SFlag::from_bits_truncate(if kind == 0 { libc::S_IFREG } else { kind }),
                    Mode::from_bits_truncate(mode),
                    u64::from(rdev),
                )?
            }
            Make::Symlink(target) => nix::unistd::symlinkat(os(target), Some(tdir), n)?,
            Make::File(m, flags) => {
                mode = m & 0o7777 & !umask;
                let keep = flags as i32
                    & (libc::O_ACCMODE | libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC);
                let fd = nix::fcntl::openat(
                    Some(tdir),
                    n,
                    nix::fcntl::OFlag::from_bits_truncate(
                        keep | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    ),
                    Mode::from_bits_truncate(mode),
                )?;
                file = Some(File::from(crate::sys::owned_fd(fd)));
            }
            Make::Link(v) => {
                let src = self.open_upper(v, libc::O_PATH)?;
                nix::unistd::linkat(
                    None,
                    os(&fd_path(src.as_raw_fd())),
                    Some(tdir),
                    n,
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )?;
                return Ok((None, None));
            }
        }
        let mut st = crate::sys::fstatat(tdir, tname)?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if let (Some(acl), false, true) = (&default_acl, is_link, tdir != pfd) {
            // Built in the staging dir, which has no default ACL: inherit the parent's by hand.
            // Setting the access ACL sets the permission bits from it; a chmod to those bits
            // masked by the requested mode then masks the ACL the way creation does.
            let path = child_path(tdir, tname);
            crate::sys::lsetxattr(&path, ACL_ACCESS.as_bytes(), acl, 0, false)?;
            if is_dir {
                crate::sys::lsetxattr(&path, ACL_DEFAULT.as_bytes(), acl, 0, false)?;
            }
            let from_acl = crate::sys::fstatat(tdir, tname)?.st_mode;
            upper::chmod(&path, (mode & !0o777) | (mode & from_acl & 0o777))?;
            st = crate::sys::fstatat(tdir, tname)?;
        }
        // Owner: the caller, or the directory's group under a setgid directory.
        let pst = crate::sys::fstatat(pfd, b"")?;
        let sgid_dir = pst.st_mode & libc::S_ISGID != 0;
        let gid = if sgid_dir { pst.st_gid } else { ctx.gid };
        let chowned = st.st_uid != ctx.uid || st.st_gid != gid;
        if chowned {
            upper::chown(tdir, tname, ctx.uid, gid)?;
        }
        // What creation gave it (the requested mode, or masked by a default ACL).
        let made = st.st_mode & 0o7777;
        let want = if is_dir && sgid_dir { made | libc::S_ISGID } else { made };
        let mut exact = (!chowned).then_some(st);
        if !is_link {
            // chown may have cleared setuid/setgid: look again only then.
            let now = if chowned { crate::sys::fstatat(tdir, tname)? } else { st };
            exact = Some(now);
            if now.st_mode & 0o7777 != want {
                upper::chmod(&child_path(tdir, tname), want)?;
                exact = None;
            }
        }
        Ok((file, exact))
    }

    /// Remove `name` from `parent` (a directory when `dir`).
    fn remove(&self, parent: u64, name: &[u8], dir: bool) -> io::Result<()> {
        check_name(name)?;
        let p = self.view(parent)?;
        let (id, st) = self.child(&p, name)?.ok_or_else(|| errno(libc::ENOENT))?;
        let r = self.remove_node(&p, name, id, &st, dir);
        self.release(id);
        r
    }

    fn remove_node(
        &self,
        p: &NodeView,
        name: &[u8],
        id: u64,
        st: &stat64,
        dir: bool,
    ) -> io::Result<()> {
        let v = self.view(id)?;
        if dir != is_dir(st) {
            return Err(errno(if dir { libc::ENOTDIR } else { libc::EISDIR }));
        }
        if dir && !self.list(&v)?.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        let need_wh = v.upper.is_none() || self.lower_has(p, name)?;
        let p = self.copy_up(p.id, true)?;
        let pfd = self.dir_fd(&p)?;
        let pfd = pfd.as_raw_fd();
        let work = self.upper.work_fd();
        let real = crate::sys::fstatat(pfd, name).ok().filter(|s| !super::layer::is_whiteout(s));
        let in_upper = real.is_some();
        let mut last_link = true;
        let mut kept = None;
        if let Some(real) = real {
            last_link = dir || real.st_nlink <= 1;
            if last_link {
                kept = Some(keep_fd(pfd, name)?);
            }
        }
        match (in_upper, need_wh) {
            (false, true) => upper::whiteout(pfd, name)?,
            (false, false) => return Err(errno(libc::ENOENT)),
            (true, false) => {
                if !dir {
                    upper::unlink(pfd, name, false)?;
                } else if let Err(e) = upper::unlink(pfd, name, true) {
                    if e.raw_os_error() != Some(libc::ENOTEMPTY) {
                        return Err(e);
                    }
                    // Only whiteouts are left inside: move it away whole, then clean it up.
                    let tmp = self.upper.tmp_name();
                    upper::rename(pfd, name, work, &tmp, RenameFlags::empty())?;
                    upper::remove_tree(work, &tmp)?;
                }
            }
            (true, true) => {
                let tmp = self.upper.tmp_name();
                match upper::rename(pfd, name, work, &tmp, RenameFlags::RENAME_WHITEOUT) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        // No RENAME_WHITEOUT here: swap a ready whiteout in instead.
                        upper::whiteout(work, &tmp)?;
                        upper::rename(work, &tmp, pfd, name, RenameFlags::RENAME_EXCHANGE)?;
                    }
                    Err(e) => return Err(e),
                }
                upper::remove_tree(work, &tmp)?;
            }
        }
        self.table.lock().unlinked(id, p.id, name, last_link, kept);
        if dir {
            self.drop_dir_fd(id);
        }
        Ok(())
    }

    /// A directory being moved gets what keeps its content right at the new name: a redirect
    /// to its lower origin, or opacity when it has none but a lower layer has the new name.
    fn prepare_dir_move(&self, v: &NodeView, newp: &NodeView, newname: &[u8]) -> io::Result<()> {
        let fd = self.dir_fd(v)?;
        let path = fd_path(fd.as_raw_fd());
        if !v.lowers.is_empty() {
            if let Some(lp) = &v.lower_path {
                let mut abs = b"/".to_vec();
                abs.extend_from_slice(lp);
                set_private_follow(&path, upper::REDIRECT, &abs)?;
            }
        } else if self.lower_has(newp, newname)? {
            set_private_follow(&path, upper::OPAQUE, b"y")?;
        }
        Ok(())
    }

    fn do_rename(
        &self,
        olddir: u64,
        oldname: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return Err(errno(libc::EINVAL));
        }
        check_name(oldname)?;
        check_name(newname)?;
        let op = self.view(olddir)?;
        let np = self.view(newdir)?;
        let (sid, sst) = self.child(&op, oldname)?.ok_or_else(|| errno(libc::ENOENT))?;
        let dst = match self.child(&np, newname) {
            Ok(d) => d,
            Err(e) => {
                self.release(sid);
                return Err(e);
            }
        };
        let r = self.rename_nodes(&op, oldname, &np, newname, sid, &sst, dst, exchange, noreplace);
        self.release(sid);
        if let Some((did, _)) = dst {
            self.release(did);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_nodes(
        &self,
        op: &NodeView,
        oldname: &[u8],
        np: &NodeView,
        newname: &[u8],
        sid: u64,
        sst: &stat64,
        dst: Option<(u64, stat64)>,
        exchange: bool,
        noreplace: bool,
    ) -> io::Result<()> {
        if dst.is_some_and(|(d, _)| d == sid) {
            return Ok(()); // the same object (hard links): nothing to do
        }
        match (&dst, exchange, noreplace) {
            (None, true, _) => return Err(errno(libc::ENOENT)),
            (Some(_), _, true) => return Err(errno(libc::EEXIST)),
            _ => {}
        }
        if let Some((did, dst_st)) = &dst {
            if !exchange {
                match (is_dir(sst), is_dir(dst_st)) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) if !self.list(&self.view(*did)?)?.is_empty() => {
                        return Err(errno(libc::ENOTEMPTY))
                    }
                    _ => {}
                }
            }
        }
        let sv = self.copy_up(sid, true)?;
        let op = self.copy_up(op.id, true)?;
        let np = self.copy_up(np.id, true)?;
        if is_dir(sst) {
            self.prepare_dir_move(&sv, &np, newname)?;
        }
        let ofd = self.dir_fd(&op)?;
        let nfd = self.dir_fd(&np)?;
        let (ofd, nfd) = (ofd.as_raw_fd(), nfd.as_raw_fd());
        if exchange {
            let (did, dst_st) = dst.expect("checked");
            let dv = self.copy_up(did, true)?;
            if is_dir(&dst_st) {
                self.prepare_dir_move(&dv, &op, oldname)?;
            }
            upper::rename(ofd, oldname, nfd, newname, RenameFlags::RENAME_EXCHANGE)?;
            let mut t = self.table.lock();
            t.renamed(sid, np.id, newname);
            t.renamed(did, op.id, oldname);
            return Ok(());
        }
        let need_wh = self.lower_has(&op, oldname)?;
        let work = self.upper.work_fd();
        let at_new = crate::sys::fstatat(nfd, newname).ok();
        let mut last_link = true;
        let mut kept = None;
        if let Some(st) = &at_new {
            if super::layer::is_whiteout(st) {
                last_link = false;
            } else {
                last_link = is_dir(st) || st.st_nlink <= 1;
                if last_link {
                    kept = Some(keep_fd(nfd, newname)?);
                }
                if is_dir(st) {
                    // The target is empty in the union: only whiteouts can be left inside.
                    clear_dir(nfd, newname)?;
                }
            }
        }
        let over_whiteout = at_new.as_ref().is_some_and(super::layer::is_whiteout);
        if is_dir(sst) && over_whiteout {
            // A directory cannot replace a non-directory: swap, then drop or keep the
            // whiteout now at the old name.
            upper::rename(ofd, oldname, nfd, newname, RenameFlags::RENAME_EXCHANGE)?;
            if !need_wh {
                upper::unlink(ofd, oldname, false)?;
            }
        } else if need_wh {
            match upper::rename(ofd, oldname, nfd, newname, RenameFlags::RENAME_WHITEOUT) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    let tmp = self.upper.tmp_name();
                    upper::whiteout(work, &tmp)?;
                    upper::rename(ofd, oldname, nfd, newname, RenameFlags::empty())?;
                    upper::rename(work, &tmp, ofd, oldname, RenameFlags::empty())?;
                }
                Err(e) => return Err(e),
            }
        } else {
            upper::rename(ofd, oldname, nfd, newname, RenameFlags::empty())?;
        }
        let mut t = self.table.lock();
        t.renamed(sid, np.id, newname);
        if let Some((did, _)) = dst {
            t.unlinked(did, np.id, newname, last_link, kept);
            drop(t);
            self.drop_dir_fd(did);
        }
        Ok(())
    }

    /// Path for xattr calls on node `v`'s upper object, and whether to follow it.
    fn xattr_path(&self, v: &NodeView) -> io::Result<(Vec<u8>, Option<UpperFd>, bool)> {
        if v.kind == libc::S_IFLNK {
            let p = self.view(v.parent)?;
            let pfd = self.dir_fd(&p)?;
            let path = child_path(pfd.as_raw_fd(), &v.name);
            return Ok((path, Some(UpperFd::Path(pfd)), false));
        }
        let fd = self.upper_fd(v)?.ok_or_else(|| errno(libc::ESTALE))?;
        Ok((fd_path(fd.as_raw_fd()), Some(fd), true))
    }

    fn all_xattrs(&self, v: &NodeView) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if v.upper.is_none() {
            let &(l, id) = v.lowers.first().ok_or_else(|| errno(libc::ESTALE))?;
            return self.layers[l].xattrs(id);
        }
        let (path, _fd, follow) = self.xattr_path(v)?;
        let p = upper::as_path(&path);
        let names = if follow { xattr::list_deref(p) } else { xattr::list(p) };
        let names = match names {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for n in names {
            let val = if follow { xattr::get_deref(p, &n)? } else { xattr::get(p, &n)? };
            if let Some(val) = val {
                out.push((n.as_bytes().to_vec(), val));
            }
        }
        Ok(out)
    }
}

/// An O_PATH descriptor of `dirfd`/`name`, taken before the object's last name goes (see
/// `Node::kept`).
fn keep_fd(dirfd: i32, name: &[u8]) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        Some(dirfd),
        os(name),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(crate::sys::owned_fd(fd))
}

fn set_private_follow(path: &[u8], name: &str, value: &[u8]) -> io::Result<()> {
    crate::sys::lsetxattr(path, name.as_bytes(), value, 0, true)
}

/// Remove every entry inside `dirfd`/`name` (a directory holding only whiteouts).
fn clear_dir(dirfd: i32, name: &[u8]) -> io::Result<()> {
    let p = child_path(dirfd, name);
    for e in std::fs::read_dir(upper::as_path(&p))? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Open options of a regular file, also when it is opened with O_DIRECT.
///
/// FOPEN_DIRECT_IO would make the kernel refuse shared mmap of the file (ENODEV) unless INIT
/// negotiated FUSE_DIRECT_IO_ALLOW_MMAP (bit 36, in flags2), which fuse-backend-rs 0.14 cannot
/// express: it drops capability bits it has no name for. Without it the kernel still serves an
/// O_DIRECT descriptor without its page cache (its direct_IO path sends READ/WRITE for exactly
/// the range and writes back and drops cached pages around it), and mmap works.
fn file_open_options() -> OpenOptions {
    OpenOptions::KEEP_CACHE
}

impl OverlayFs {
    /// With passthrough on, refuse a change of `node`'s data while its open files read its
    /// lower file (see [`super::passthrough`]).
    fn check_change(&self, node: u64) -> io::Result<()> {
        self.passthrough().map_or(Ok(()), |p| p.check_change(node))
    }

    /// How the kernel does I/O on `open`, a new handle of `node` (`created` by this request):
    /// its open options and, for passthrough, the backing id.
    fn open_mode(
        &self,
        node: u64,
        open: &Open,
        write: bool,
        writable: bool,
        created: bool,
    ) -> io::Result<(OpenOptions, Option<u32>)> {
        let Some(p) = self.passthrough() else { return Ok((file_open_options(), None)) };
        let lower = matches!(open, Open::Lower(_));
        let file = open.file();
        let r = super::passthrough::OpenRequest { node, file, lower, write, writable, created };
        Ok(match p.open(&r)? {
            // Alone: the kernel takes no cache flags beside it (EINVAL, the open fails EIO).
            Some(id) => (crate::sys::open_options(super::passthrough::FOPEN_PASSTHROUGH), Some(id)),
            None => (file_open_options(), None),
        })
    }
}

/// Clear set-user-ID and set-group-ID of the upper file `fd` after `ctx` changed its data or
/// size without privilege, by the VFS rule (`setattr_should_drop_suidgid`): S_ISUID always;
/// S_ISGID when group-exec is set (otherwise it marks mandatory locking) or the caller is not
/// in the file's group.
///
/// The kernel asks for this with FUSE_WRITE_KILL_SUIDGID on writes of its direct-I/O path;
/// otherwise it sends the new mode in a SETATTR itself (see `setattr`). HANDLE_KILLPRIV_V2,
/// which would leave truncate and open(O_TRUNC) to us too, is not negotiated: the kernel then
/// keeps the mode it cached across a write, and stat shows the bits we cleared until the
/// attribute timeout. The daemon writes as root, so the upper filesystem never clears the bits
/// on its own. security.capability needs nothing here: the upper filesystem drops it at every
/// write, truncate and chown, by root too.
fn kill_suidgid(ctx: &Context, fd: i32) -> io::Result<()> {
    let st = crate::sys::fstatat(fd, b"")?;
    let mode = st.st_mode & 0o7777;
    let mut kill = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !caller_in_group(ctx, st.st_gid))
    {
        kill |= libc::S_ISGID;
    }
    if kill == 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    upper::chmod(&fd_path(fd), mode & !kill)
}

/// Whether the calling process has `gid` as its (fs) group or among its supplementary groups.
/// FUSE requests carry only the fsgid; the supplementary list is read from /proc, and when the
/// process is gone the answer is what the fsgid alone says.
fn caller_in_group(ctx: &Context, gid: u32) -> bool {
    if ctx.gid == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", ctx.pid)) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

fn timespec(
    valid: SetattrValid,
    set: SetattrValid,
    now: SetattrValid,
    s: i64,
    ns: i64,
) -> libc::timespec {
    if valid.contains(now) {
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW }
    } else if valid.contains(set) {
        libc::timespec { tv_sec: s, tv_nsec: ns }
    } else {
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }
    }
}

impl FileSystem for OverlayFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.no_opendir.store(capable.contains(FsOptions::ZERO_MESSAGE_OPENDIR), Ordering::Relaxed);
        Ok(capable
            & (FsOptions::ASYNC_READ
                | FsOptions::PARALLEL_DIROPS
                | FsOptions::BIG_WRITES
                | FsOptions::MAX_PAGES
                | FsOptions::DO_READDIRPLUS
                | FsOptions::READDIRPLUS_AUTO
                | FsOptions::ATOMIC_O_TRUNC
                | FsOptions::CACHE_SYMLINKS
                | FsOptions::AUTO_INVAL_DATA
                | FsOptions::POSIX_ACL
                | FsOptions::DONT_MASK
                | FsOptions::ZERO_MESSAGE_OPENDIR))
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let name = name.to_bytes();
        if name.len() > NAME_MAX {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let p = self.view(parent)?;
        if !p.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        match self.child(&p, name)? {
            Some((id, st)) => Ok(self.entry(id, st)),
            None => Ok(self.negative()),
        }
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        if self.table.lock().forget(inode, count) {
            self.drop_dir_fd(inode);
            if let Some(p) = self.passthrough() {
                p.forget(inode);
            }
        }
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        let mut gone = Vec::new();
        {
            let mut t = self.table.lock();
            for (i, c) in requests {
                if t.forget(i, c) {
                    gone.push(i);
                }
            }
        }
        if !gone.is_empty() {
            let mut d = self.dirs.lock();
            for &i in &gone {
                d.remove(i);
            }
        }
        if let Some(p) = self.passthrough() {
            gone.iter().for_each(|&i| p.forget(i));
        }
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let v = self.view(inode)?;
        if let Some(h) = handle {
            if let Ok(o) = self.handle(h) {
                if let Open::Upper(f) = o.as_ref() {
                    let mut st = crate::sys::fstatat(f.as_raw_fd(), b"")?;
                    self.present(&v, &mut st);
                    return Ok((st, self.attr_timeout(inode)));
                }
            }
        }
        Ok((self.stat_view(&v)?, self.attr_timeout(inode)))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        // A truncation to 0 needs no copy of the data, unless owner or mode change in the same
        // request: if those then failed, the call would fail with the file already emptied.
        let truncating = valid.contains(SetattrValid::SIZE)
            && attr.st_size == 0
            && !valid.intersects(SetattrValid::UID | SetattrValid::GID | SetattrValid::MODE);
        if valid.contains(SetattrValid::SIZE) {
            self.check_change(inode)?;
        }
        let v = self.copy_up(inode, !truncating)?;
        let fd = self.upper_fd(&v)?.ok_or_else(|| errno(libc::ESTALE))?;
        let raw = fd.as_raw_fd();
        if valid.intersects(SetattrValid::UID | SetattrValid::GID) {
            let uid =
                valid.contains(SetattrValid::UID).then(|| nix::unistd::Uid::from_raw(attr.st_uid));
            let gid =
                valid.contains(SetattrValid::GID).then(|| nix::unistd::Gid::from_raw(attr.st_gid));
            nix::unistd::fchownat(Some(raw), "", uid, gid, nix::fcntl::AtFlags::AT_EMPTY_PATH)?;
        }
        if valid.contains(SetattrValid::MODE) {
            let mut mode = attr.st_mode;
            if mode & libc::S_ISGID != 0 && ctx.uid != 0 {
                // Without HANDLE_KILLPRIV the kernel clears set-ID bits after a write,
                // truncate or fallocate by sending this mode, computed by the old rule (S_ISGID
                // only with group-exec); the VFS also clears S_ISGID when the caller is not
                // in the file's group. A chmod by such a caller never keeps S_ISGID either
                // (the VFS strips it before it reaches us), so the rule holds for every mode
                // change of an unprivileged caller.
                let gid = crate::sys::fstatat(raw, b"")?.st_gid;
                if !caller_in_group(ctx, gid) {
                    mode &= !libc::S_ISGID;
                }
            }
            match &fd {
                UpperFd::Open(f) => {
                    use std::os::unix::fs::PermissionsExt;
                    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?
                }
                // fchmod does not take an O_PATH descriptor.
                UpperFd::Path(_) => upper::chmod(&fd_path(raw), mode)?,
            }
        }
        if valid.contains(SetattrValid::SIZE) {
            let open = handle.and_then(|h| self.handle(h).ok());
            match open.as_deref() {
                Some(Open::Upper(f)) => f.set_len(attr.st_size as u64)?,
                _ => {
                    let f = File::from(self.open_upper(&v, libc::O_WRONLY)?);
                    f.set_len(attr.st_size as u64)?;
                }
            }
        }
        if valid.intersects(
            SetattrValid::ATIME
                | SetattrValid::MTIME
                | SetattrValid::ATIME_NOW
                | SetattrValid::MTIME_NOW,
        ) {
            let a = timespec(
                valid,
                SetattrValid::ATIME,
                SetattrValid::ATIME_NOW,
                attr.st_atime,
                attr.st_atime_nsec,
            );
            let m = timespec(
                valid,
                SetattrValid::MTIME,
                SetattrValid::MTIME_NOW,
                attr.st_mtime,
                attr.st_mtime_nsec,
            );
            crate::sys::utimensat(raw, b"", [a, m])?;
        }
        let mut st = crate::sys::fstatat(raw, b"")?;
        self.present(&v, &mut st);
        Ok((st, self.attr_timeout(inode)))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let v = self.view(inode)?;
        match self.upper_fd(&v)? {
            Some(fd) => Ok(nix::fcntl::readlinkat(Some(fd.as_raw_fd()), "")?.as_bytes().to_vec()),
            None => {
                let &(l, id) = v.lowers.first().ok_or_else(|| errno(libc::ESTALE))?;
                self.layers[l].readlink(id)
            }
        }
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let (id, st, _) =
            self.make(ctx, parent, name.to_bytes(), Make::Symlink(linkname.to_bytes()), 0)?;
        Ok(self.entry(id, st))
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (id, st, _) = self.make(ctx, parent, name.to_bytes(), Make::Node(mode, rdev), umask)?;
        Ok(self.entry(id, st))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (id, st, _) = self.make(ctx, parent, name.to_bytes(), Make::Dir(mode), umask)?;
        Ok(self.entry(id, st))
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name.to_bytes(), false)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name.to_bytes(), true)
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.do_rename(olddir, oldname.to_bytes(), newdir, newname.to_bytes(), flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let v = self.copy_up(inode, true)?;
        if v.is_dir() {
            return Err(errno(libc::EPERM));
        }
        let (id, st, _) = self.make(ctx, newparent, newname.to_bytes(), Make::Link(&v), 0)?;
        Ok(self.entry(id, st))
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let flags = flags as i32;
        let trunc = flags & libc::O_TRUNC != 0;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || trunc;
        if trunc {
            self.check_truncate_open(inode)?;
        }
        if write {
            self.check_change(inode)?;
        }
        let v = if write { self.copy_up(inode, !trunc)? } else { self.view(inode)? };
        let open = match &v.upper {
            Some(_) => {
                let f = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT);
                Open::Upper(Arc::new(File::from(self.open_upper(&v, f)?)))
            }
            None => {
                let &(l, id) = v.lowers.first().ok_or_else(|| errno(libc::ESTALE))?;
                match self.layers[l].open_file(id)? {
                    Some(f) => Open::Lower(Arc::new(f)),
                    None => Open::Layer(l, id),
                }
            }
        };
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let (opts, backing) = self.open_mode(inode, &open, write, writable, false)?;
        let h = self.add_handle(inode, open);
        if flags & FMODE_EXEC != 0 {
            self.exec_opened(inode, h);
        }
        Ok((Some(h), opts, backing))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (id, st, file) =
            self.make(ctx, parent, name.to_bytes(), Make::File(args.mode, args.flags), args.umask)?;
        let file = file.ok_or_else(|| errno(libc::EIO))?;
        let open = Open::Upper(Arc::new(file));
        let writable = args.flags as i32 & libc::O_ACCMODE != libc::O_RDONLY;
        let (opts, backing) = self.open_mode(id, &open, true, writable, true)?;
        let h = self.add_handle(id, open);
        let mut entry = self.entry(id, st);
        // The attributes of a file this request made empty may be cached even with a writable
        // passthrough open: what [`Self::attr_timeout`] guards against is a write through a
        // shared mapping, and an empty file has no page to map until its size changes, which
        // goes through a SETATTR (answered uncached) or a write the kernel invalidates the
        // attributes after itself. Saves the GETATTR of the permission check that follows
        // every CREATE (`default_permissions`), one of the ~10 requests tar makes per file.
        if st.st_size == 0 {
            entry.attr_timeout = self.timeout;
        }
        Ok((entry, Some(h), opts, backing))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        match self.handle(handle)?.as_ref() {
            Open::Upper(f) | Open::Lower(f) => {
                crate::sys::with_file_mut(f, |f| w.write_from(f, size as usize, offset))
            }
            Open::Layer(l, id) => {
                let data = self.layers[*l].read(*id, offset, u64::from(size))?;
                w.write_all(&data)?;
                Ok(data.len())
            }
        }
    }

    fn write(
        &self,
        ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        match self.handle(handle)?.as_ref() {
            Open::Upper(f) => {
                if fuse_flags & WRITE_KILL_PRIV != 0 {
                    kill_suidgid(ctx, f.as_raw_fd())?;
                }
                crate::sys::with_file_mut(f, |f| r.read_to(f, size as usize, offset))
            }
            _ => Err(errno(libc::EBADF)),
        }
    }

    /// Nothing to do at close: writes went straight to the upper file and POSIX locks are the
    /// kernel's (no GETLK/SETLK here). ENOSYS tells the kernel so once (`fc->no_flush`), and it
    /// stops sending a FLUSH, which it treats as success, at every close: one request less per
    /// open file, as with fuse-overlayfs.
    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> io::Result<()> {
        Err(errno(libc::ENOSYS))
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        match self.handle(handle)?.as_ref() {
            Open::Upper(f) => {
                if datasync {
                    f.sync_data()
                } else {
                    f.sync_all()
                }
            }
            _ => Ok(()),
        }
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        match self.handle(handle)?.as_ref() {
            Open::Upper(f) => nix::fcntl::fallocate(
                f.as_raw_fd(),
                nix::fcntl::FallocateFlags::from_bits_truncate(mode as i32),
                offset as i64,
                length as i64,
            )
            .map_err(io::Error::from),
            _ => Err(errno(libc::EBADF)),
        }
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.drop_handle(inode, handle);
        self.exec_released(inode, handle);
        if let Some(p) = self.passthrough() {
            p.release(inode, flags as i32 & libc::O_ACCMODE != libc::O_RDONLY);
        }
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        crate::sys::fstatvfs(self.upper.root_fd())
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if upper::is_private(name.to_bytes()) {
            return Err(errno(libc::EPERM));
        }
        let v = self.copy_up(inode, true)?;
        let (path, fd, follow) = self.xattr_path(&v)?;
        let set = crate::sys::lsetxattr(&path, name.to_bytes(), value, flags as i32, follow);
        self.table.lock().xattrs_changed(v.id);
        set?;
        if let (true, Some(fd)) = (
            name.to_bytes() == ACL_ACCESS.as_bytes() && ctx.uid != 0,
            follow.then_some(fd).flatten(),
        ) {
            // The upper filesystem set the mode from the ACL for root, keeping S_ISGID; the
            // caller would lose it outside the file's group (posix_acl_update_mode). The kernel
            // flags that (FUSE_SETXATTR_ACL_KILL_SGID) only with SETXATTR_EXT, which
            // fuse-backend-rs 0.14 does not negotiate.
            let st = crate::sys::fstatat(fd.as_raw_fd(), b"")?;
            if st.st_mode & libc::S_ISGID != 0 && !caller_in_group(ctx, st.st_gid) {
                upper::chmod(&path, st.st_mode & 0o7777 & !libc::S_ISGID)?;
            }
        }
        Ok(())
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        if upper::is_private(name.to_bytes()) {
            return Err(errno(libc::ENODATA));
        }
        let v = self.view(inode)?;
        let caps = name.to_bytes() == upper::CAPS.as_bytes();
        if caps && v.no_caps {
            // Asked before every write; see `Node::no_caps`.
            return Err(errno(libc::ENODATA));
        }
        let val = if v.upper.is_some() {
            let (path, _fd, follow) = self.xattr_path(&v)?;
            let p = upper::as_path(&path);
            let n = os(name.to_bytes());
            if follow {
                xattr::get_deref(p, n)?
            } else {
                xattr::get(p, n)?
            }
        } else {
            self.all_xattrs(&v)?.into_iter().find(|(k, _)| k == name.to_bytes()).map(|(_, v)| v)
        };
        let Some(val) = val else {
            if caps {
                self.table.lock().caps_absent(v.id, v.xattr_gen);
            }
            return Err(errno(libc::ENODATA));
        };
        match size {
            0 => Ok(GetxattrReply::Count(val.len() as u32)),
            s if (s as usize) < val.len() => Err(errno(libc::ERANGE)),
            _ => Ok(GetxattrReply::Value(val)),
        }
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let v = self.view(inode)?;
        let mut names = Vec::new();
        for (k, _) in self.all_xattrs(&v)? {
            if upper::is_private(&k) {
                continue;
            }
            names.extend_from_slice(&k);
            names.push(0);
        }
        match size {
            0 => Ok(ListxattrReply::Count(names.len() as u32)),
            s if (s as usize) < names.len() => Err(errno(libc::ERANGE)),
            _ => Ok(ListxattrReply::Names(names)),
        }
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        if upper::is_private(name.to_bytes()) {
            return Err(errno(libc::EPERM));
        }
        let v = self.copy_up(inode, true)?;
        let (path, _fd, follow) = self.xattr_path(&v)?;
        let p = upper::as_path(&path);
        let n = os(name.to_bytes());
        let removed = if follow { xattr::remove_deref(p, n) } else { xattr::remove(p, n) };
        self.table.lock().xattrs_changed(v.id);
        removed
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        // No per-open state: a pass's listing lives in `listings`, found by READDIR offset.
        // Where the kernel offers it, ENOSYS makes it stop sending OPENDIR and RELEASEDIR
        // (it then keeps the directory cache as below without asking).
        if self.no_opendir.load(Ordering::Relaxed) {
            return Err(errno(libc::ENOSYS));
        }
        if !self.view(inode)?.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        // CACHE_DIR lets the kernel keep the listing it read; it tags that cache with the
        // directory's mtime and change counter as of the READDIR at offset 0 and drops it at the
        // next pass from offset 0 when either moved, which is safe because that READDIR is
        // answered with a listing taken after it was sent.
        Ok((None, OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let Some(pass) = self.dir_pass(inode, offset)? else { return Ok(()) };
        for (i, it) in pass.items.iter().enumerate().skip(pass.start) {
            let n = add_entry(DirEntry {
                ino: it.ino,
                offset: pass.offset_after(i),
                type_: it.dtype,
                name: &it.name,
            })?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let Some(pass) = self.dir_pass(inode, offset)? else { return Ok(()) };
        let v = self.view(inode)?;
        for (i, it) in pass.items.iter().enumerate().skip(pass.start) {
            let de = DirEntry {
                ino: it.ino,
                offset: pass.offset_after(i),
                type_: it.dtype,
                name: &it.name,
            };
            if it.name == b"." || it.name == b".." {
                if add_entry(de, self.negative())? == 0 {
                    break;
                }
                continue;
            }
            let Some((id, st)) = self.child(&v, &it.name)? else { continue };
            let de = DirEntry { ino: st.st_ino, ..de };
            if add_entry(de, self.entry(id, st))? == 0 {
                // Not sent: the kernel did not take this reference.
                self.release(id);
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn fsyncdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _datasync: bool,
        _handle: u64,
    ) -> io::Result<()> {
        let v = self.view(inode)?;
        if v.upper.is_some() || v.kept.is_some() {
            File::from(self.open_upper(&v, libc::O_RDONLY | libc::O_DIRECTORY)?).sync_all()?;
        }
        Ok(())
    }

    fn access(&self, _ctx: &Context, inode: u64, _mask: u32) -> io::Result<()> {
        self.view(inode).map(|_| ())
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        use nix::unistd::Whence;
        let w = match whence as i32 {
            libc::SEEK_DATA => Whence::SeekData,
            libc::SEEK_HOLE => Whence::SeekHole,
            libc::SEEK_SET => Whence::SeekSet,
            libc::SEEK_CUR => Whence::SeekCur,
            libc::SEEK_END => Whence::SeekEnd,
            _ => return Err(errno(libc::EINVAL)),
        };
        match self.handle(handle)?.as_ref() {
            Open::Upper(f) | Open::Lower(f) => {
                Ok(nix::unistd::lseek64(f.as_raw_fd(), offset as i64, w)? as u64)
            }
            _ => {
                // A layer file without a plain file: all data, no holes.
                let size = self.stat_view(&self.view(inode)?)?.st_size as u64;
                match w {
                    Whence::SeekData if offset < size => Ok(offset),
                    Whence::SeekHole if offset < size => Ok(size),
                    _ => Err(errno(libc::ENXIO)),
                }
            }
        }
    }
}
