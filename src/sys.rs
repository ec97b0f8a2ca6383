//! The one module allowed to use `unsafe`: thin wrappers over system calls and mappings.
#![allow(unsafe_code)]

use std::fs::File;

/// A read-only, private memory mapping of a whole file.
pub struct ReadOnlyMap(Option<memmap2::Mmap>);

impl ReadOnlyMap {
    /// Map `file` read-only. An empty file maps to an empty slice (mmap rejects length 0).
    pub fn new(file: &File) -> std::io::Result<Self> {
        if file.metadata()?.len() == 0 {
            return Ok(Self(None));
        }
        // SAFETY: the mapping is read-only and private. Image files are immutable by contract
        // (builders write them to a temporary name and rename them into place, never rewrite
        // them); if another process truncates one anyway, access faults with SIGBUS rather than
        // yielding undefined behaviour inside safe Rust data structures, and every offset we
        // read through the slice is bounds-checked against the length seen at map time.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(Self(Some(map)))
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.0.as_deref().unwrap_or(&[])
    }
}

/// fsync a directory so a rename into it survives a crash.
pub fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An all-zero `stat64` (its padding fields are private, so it cannot be built field by field).
pub fn zeroed_stat64() -> libc::stat64 {
    // SAFETY: stat64 is a plain C struct of integers; all-zero is a valid value of each field.
    unsafe { std::mem::zeroed() }
}

/// An all-zero `statvfs64`.
pub fn zeroed_statvfs64() -> libc::statvfs64 {
    // SAFETY: statvfs64 is a plain C struct of integers; all-zero is a valid value of each field.
    unsafe { std::mem::zeroed() }
}
