//! Where the writer gets what the hot path leaves out: inode paths ([`PathResolver`], which the
//! FUSE side implements) and process names ([`ProcessResolver`], /proc by default). Both are
//! called only on the background writer thread, at most once per inode or pid per log file.

use std::fs;

/// Maps an inode of a layer to its path, for the log. Implemented by the FUSE side (the
/// overlay's inode table, or a RAFS image's tree).
///
/// Contract: called only from the access log's writer thread, never from a request path; may
/// take locks and do I/O, but must not call back into the sink (no `record` or `flush` from
/// here). Returns the absolute path inside the mount (`/` for the root) as raw bytes, or `None`
/// when the inode is unknown (forgotten, or never looked up). The writer also learns paths by
/// itself from lookup and create events (`parent path + "/" + name`), so a resolver that only
/// knows the root is enough when the log starts with the mount.
pub trait PathResolver: Send + Sync {
    /// The path of `inode` in `layer`.
    fn path(&self, layer: u32, inode: u64) -> Option<Vec<u8>>;

    /// Get ready to answer (build tables, say): the writer calls this once when it starts,
    /// before the first event, so that work is not done in the middle of the first requests.
    fn prepare(&self) {}

    /// Whether `path` takes locks that request threads take too (asked before each call).
    /// The writer then raises itself to normal priority before calling it (an idle-priority thread preempted while
    /// holding such a lock would stall the requests). Say `false` only for lock-free lookups.
    fn shares_locks(&self) -> bool {
        true
    }
}

impl<F> PathResolver for F
where
    F: Fn(u32, u64) -> Option<Vec<u8>> + Send + Sync,
{
    fn path(&self, layer: u32, inode: u64) -> Option<Vec<u8>> {
        self(layer, inode)
    }
}

/// A resolver that knows only the root inode (`/` in every layer): enough when the log starts
/// with the mount, since every other path is then learned from lookups.
#[derive(Clone, Copy, Debug)]
pub struct RootOnly(pub u64);

impl PathResolver for RootOnly {
    fn path(&self, _layer: u32, inode: u64) -> Option<Vec<u8>> {
        (inode == self.0).then(|| b"/".to_vec())
    }

    fn shares_locks(&self) -> bool {
        false
    }
}

/// What the log stores about a requesting thread id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its process (thread group) id, 0 when unknown.
    pub tgid: u32,
    /// The process's name (its main thread's `comm`), empty when unknown.
    pub name: String,
}

/// Maps a requesting thread id (what FUSE reports as the pid) to its process. Called on the
/// writer thread only.
pub trait ProcessResolver: Send + Sync {
    /// The process of thread `pid`; a default (empty) value when it has gone.
    fn process(&self, pid: u32) -> ProcessInfo;
}

/// Reads `/proc/<pid>/status` (for the thread group id) and `/proc/<tgid>/comm`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcFs;

impl ProcessResolver for ProcFs {
    fn process(&self, pid: u32) -> ProcessInfo {
        if pid == 0 {
            return ProcessInfo::default();
        }
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            return ProcessInfo::default();
        };
        let (tgid, name) = parse_status(&status);
        let tgid = tgid.unwrap_or(pid);
        // The main thread's name names the program; worker threads often rename themselves.
        let name = fs::read_to_string(format!("/proc/{tgid}/comm"))
            .map(|s| s.trim_end_matches('\n').to_string())
            .unwrap_or(name);
        ProcessInfo { tgid, name }
    }
}

/// `Tgid:` and `Name:` of a /proc status file.
fn parse_status(s: &str) -> (Option<u32>, String) {
    let mut tgid = None;
    let mut name = String::new();
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("Tgid:") {
            tgid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Name:") {
            name = v.trim().to_string();
        }
    }
    (tgid, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        for (s, tgid, name) in [
            ("Name:\tcat\nUmask:\t0022\nState:\tR\nTgid:\t42\nPid:\t43\n", Some(42), "cat"),
            ("Name:\tx y\n", None, "x y"),
            ("", None, ""),
            ("Tgid:\tnot-a-number\n", None, ""),
        ] {
            assert_eq!(parse_status(s), (tgid, name.to_string()));
        }
    }

    #[test]
    fn this_process_resolves() {
        let me = std::process::id();
        let p = ProcFs.process(me);
        assert_eq!(p.tgid, me);
        assert!(!p.name.is_empty());
        assert_eq!(ProcFs.process(0), ProcessInfo::default());
    }

    #[test]
    fn closures_and_root_only_resolve() {
        let r = |_l: u32, i: u64| (i == 7).then(|| b"/seven".to_vec());
        assert_eq!(r.path(0, 7).as_deref(), Some(&b"/seven"[..]));
        assert_eq!(RootOnly(1).path(3, 1).as_deref(), Some(&b"/"[..]));
        assert_eq!(RootOnly(1).path(3, 2), None);
    }
}
