//! Reading a log back as events: records are replayed in order (a path or process record
//! applies to the events after it) into [`Resolved`] events, and [`Filter`] selects among them.
//! Pure: takes records, returns values.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::event::{Access, Cache, Op, Record};
use super::file::{read_log, session_files, LogHeader, ParsedLog};
use super::writer::join;
use super::Error;

/// One access with its path and process filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// ns since the session start.
    pub ts_ns: u64,
    /// Operation name (`op#N` for a code this build does not know).
    pub op: String,
    /// The operation, when known.
    #[serde(skip)]
    pub op_kind: Option<Op>,
    /// Layer.
    pub layer: u32,
    /// Inode as recorded (the parent directory for operations that name a child).
    pub inode: u64,
    /// Second inode: the child a lookup found (0: none) or a create made; a rename's or
    /// link's new parent.
    pub aux: u64,
    /// The path the event is about (`parent/name` for named operations); None if unknown.
    pub path: Option<String>,
    /// rename's new path, link's new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path2: Option<String>,
    /// Byte offset.
    pub offset: Option<u64>,
    /// Byte count.
    pub len: Option<u64>,
    /// First chunk index touched.
    pub chunk_first: Option<u32>,
    /// Last chunk index touched.
    pub chunk_last: Option<u32>,
    /// `hit`, `miss`, `partial`, or None.
    pub cache: Option<&'static str>,
    /// Requesting thread id.
    pub pid: u32,
    /// Its process id (0 when unknown).
    pub tgid: u32,
    /// Its process name (empty when unknown).
    pub process: String,
    /// Requesting uid.
    pub uid: u32,
}

impl Resolved {
    /// The pid to group by: the process when known, else the thread.
    pub fn process_id(&self) -> u32 {
        if self.tgid != 0 {
            self.tgid
        } else {
            self.pid
        }
    }
}

/// `a` with its path filled in from `dir` (the path of `a.inode`), its second path from
/// `dir2` (the path of `a.aux`: a rename's or link's new parent) and its process
/// (`(tgid, name)`), as known when it was written.
pub(crate) fn resolve(
    a: &Access,
    dir: Option<&[u8]>,
    dir2: Option<&[u8]>,
    proc: Option<(u32, &str)>,
) -> Resolved {
    let op = a.op();
    let named = op.is_some_and(Op::names_child);
    let path = match (&a.name, dir) {
        (Some(n), Some(d)) if named => Some(join(d, n)),
        (_, Some(d)) if !named => Some(d.to_vec()),
        _ => None,
    };
    let path2 = match op {
        Some(Op::Rename | Op::Link) => {
            let new_name = if op == Some(Op::Rename) { &a.name2 } else { &a.name };
            match (dir2, new_name) {
                (Some(d), Some(n)) => Some(join(d, n)),
                _ => None,
            }
        }
        _ => None,
    };
    let (tgid, process) = proc.map_or((0, String::new()), |(t, n)| (t, n.to_string()));
    let lossy = |p: Vec<u8>| String::from_utf8_lossy(&p).into_owned();
    Resolved {
        ts_ns: a.ts_ns,
        op: op.map_or_else(|| format!("op#{}", a.op), |o| o.name().to_string()),
        op_kind: op,
        layer: a.layer,
        inode: a.inode,
        aux: a.aux,
        path: path.map(lossy),
        path2: path2.map(lossy),
        offset: a.range.map(|r| r.offset),
        len: a.range.map(|r| r.len),
        chunk_first: a.chunks.map(|c| c.first),
        chunk_last: a.chunks.map(|c| c.last),
        cache: Cache::from_code(a.cache).map(Cache::name),
        pid: a.pid,
        tgid,
        process,
        uid: a.uid,
    }
}

/// A log (one file or a session of rotated files) replayed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Replay {
    /// Header of the first file read (None when nothing was read).
    #[serde(skip)]
    pub header: Option<LogHeader>,
    /// Every access, in log order.
    pub events: Vec<Resolved>,
    /// Events the recorder reported lost.
    pub dropped: u64,
    /// Records skipped for an unknown tag.
    pub unknown_records: u64,
    /// Files whose tail was torn, with the offset where reading stopped.
    pub torn: Vec<(String, u64)>,
}

/// Replays records into events. Feed it files in order with [`Replayer::feed`].
#[derive(Default)]
pub struct Replayer {
    paths: HashMap<(u32, u64), Vec<u8>>,
    procs: HashMap<u32, (u32, String)>,
    out: Replay,
}

impl Replayer {
    /// An empty replay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replay one parsed file named `name` (for torn-tail reports).
    pub fn feed(&mut self, name: &str, log: &ParsedLog) {
        if self.out.header.is_none() {
            self.out.header = Some(log.header);
        }
        self.out.unknown_records += log.unknown_records;
        if let Some(at) = log.torn_tail {
            self.out.torn.push((name.to_string(), at));
        }
        for r in &log.records {
            self.record(r);
        }
    }

    /// Replay one record.
    pub fn record(&mut self, r: &Record) {
        match r {
            Record::Path(p) => {
                self.paths.insert((p.layer, p.inode), p.path.clone());
            }
            Record::Process(p) => {
                self.procs.insert(p.pid, (p.tgid, p.name.clone()));
            }
            Record::Dropped(d) => self.out.dropped += d.count,
            Record::Access(a) => {
                let dir = self.paths.get(&(a.layer, a.inode)).map(Vec::as_slice);
                let dir2 = match a.op() {
                    Some(Op::Rename | Op::Link) => {
                        self.paths.get(&(a.layer, a.aux)).map(Vec::as_slice)
                    }
                    _ => None,
                };
                let proc = self.procs.get(&a.pid).map(|(t, n)| (*t, n.as_str()));
                self.out.events.push(resolve(a, dir, dir2, proc));
            }
        }
    }

    /// Take the events replayed so far (the path and process state stays).
    pub fn take_events(&mut self) -> Vec<Resolved> {
        std::mem::take(&mut self.out.events)
    }

    /// Forget paths and processes when more than `cap` of either are held (a long-running
    /// replay; later records name them again).
    pub fn bound(&mut self, cap: usize) {
        if self.paths.len() > cap {
            self.paths.clear();
        }
        if self.procs.len() > cap {
            self.procs.clear();
        }
    }

    /// The result, events in time order. The file is in time order within each writer batch;
    /// an event published just after a drain can follow later-stamped ones, so this sorts
    /// (stably) by time stamp.
    pub fn finish(mut self) -> Replay {
        self.out.events.sort_by_key(|e| e.ts_ns);
        self.out
    }
}

/// Read the log at `path` and, when `with_rotated`, the older files of its session first.
pub fn replay_path(path: &Path, with_rotated: bool) -> Result<Replay, Error> {
    let files = if with_rotated { session_files(path)? } else { vec![path.to_path_buf()] };
    let mut r = Replayer::new();
    for f in files {
        let log = read_log(&f)?;
        r.feed(&f.display().to_string(), &log);
    }
    Ok(r.finish())
}

/// Which events to keep. Empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep events at or after this many ns since the session start.
    pub since_ns: Option<u64>,
    /// Keep events before this many ns since the session start.
    pub until_ns: Option<u64>,
    /// Keep events of these threads or processes.
    pub pids: Vec<u32>,
    /// Keep events of processes with exactly this name.
    pub process: Option<String>,
    /// Keep events of this uid.
    pub uid: Option<u32>,
    /// Keep events whose path (or rename target) is this path or below it.
    pub path_prefix: Option<String>,
    /// Keep only these operations.
    pub ops: Vec<Op>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &Resolved) -> bool {
        self.since_ns.is_none_or(|s| e.ts_ns >= s)
            && self.until_ns.is_none_or(|u| e.ts_ns < u)
            && (self.pids.is_empty() || self.pids.iter().any(|&p| p == e.pid || p == e.tgid))
            && self.process.as_ref().is_none_or(|p| *p == e.process)
            && self.uid.is_none_or(|u| u == e.uid)
            && (self.ops.is_empty() || e.op_kind.is_some_and(|o| self.ops.contains(&o)))
            && self.path_prefix.as_ref().is_none_or(|pre| {
                [&e.path, &e.path2].into_iter().flatten().any(|p| path_under(p, pre))
            })
    }

    /// The events of `events` that pass, in order.
    pub fn apply<'a>(&'a self, events: &'a [Resolved]) -> impl Iterator<Item = &'a Resolved> + 'a {
        events.iter().filter(move |e| self.matches(e))
    }
}

/// Whether `path` is `prefix` or below it, by whole components (`/usr/lib` holds `/usr/lib/x`,
/// not `/usr/lib64`).
pub fn path_under(path: &str, prefix: &str) -> bool {
    let pre = prefix.trim_end_matches('/');
    if pre.is_empty() {
        return path.starts_with('/');
    }
    path.strip_prefix(pre).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accesslog::event::{Access, DropRecord, Event, PathRecord, ProcessRecord};

    fn acc(ev: Event<'_>, ts: u64) -> Record {
        Record::Access(Access::from_event(&ev, ts))
    }

    fn replay(recs: &[Record]) -> Replay {
        let mut r = Replayer::new();
        for x in recs {
            r.record(x);
        }
        r.finish()
    }

    #[test]
    fn replay_applies_path_and_process_records_in_order() {
        let recs = [
            Record::Path(PathRecord { layer: 0, inode: 1, path: b"/".to_vec() }),
            Record::Process(ProcessRecord { pid: 11, tgid: 10, name: "cat".into() }),
            acc(Event::new(Op::Lookup, 1, 11, 0).with_name(b"etc").with_aux(2), 1),
            Record::Path(PathRecord { layer: 0, inode: 2, path: b"/etc".to_vec() }),
            acc(Event::new(Op::Getattr, 2, 11, 0), 2),
            acc(Event::new(Op::Rename, 2, 11, 0).with_aux(1).with_name(b"a").with_name2(b"b"), 3),
            acc(Event::new(Op::Read, 9, 12, 0).with_range(0, 5).with_cache(Cache::Hit), 4),
            Record::Dropped(DropRecord { ts_ns: 5, count: 7 }),
        ];
        let r = replay(&recs);
        let paths: Vec<_> = r.events.iter().map(|e| e.path.as_deref()).collect();
        assert_eq!(paths, [Some("/etc"), Some("/etc"), Some("/etc/a"), None]);
        assert_eq!(r.events[2].path2.as_deref(), Some("/b"));
        assert_eq!((r.events[0].tgid, r.events[0].process.as_str()), (10, "cat"));
        assert_eq!((r.events[3].tgid, r.events[3].process.as_str()), (0, ""));
        assert_eq!(r.events[3].cache, Some("hit"));
        assert_eq!(r.dropped, 7);
    }

    #[test]
    fn unknown_op_codes_show_as_codes() {
        let mut a = Access::from_event(&Event::new(Op::Read, 1, 1, 1), 0);
        a.op = 250;
        let r = replay(&[Record::Access(a)]);
        assert_eq!(r.events[0].op, "op#250");
        assert_eq!(r.events[0].op_kind, None);
    }

    #[test]
    fn filters() {
        let e = Resolved {
            ts_ns: 100,
            op: "read".into(),
            op_kind: Some(Op::Read),
            layer: 0,
            inode: 5,
            aux: 0,
            path: Some("/usr/lib/libc.so".into()),
            path2: None,
            offset: Some(0),
            len: Some(10),
            chunk_first: None,
            chunk_last: None,
            cache: None,
            pid: 11,
            tgid: 10,
            process: "cat".into(),
            uid: 1000,
        };
        let f = |f: Filter| f.matches(&e);
        assert!(f(Filter::default()));
        assert!(f(Filter { since_ns: Some(100), until_ns: Some(101), ..Default::default() }));
        assert!(!f(Filter { until_ns: Some(100), ..Default::default() }));
        assert!(!f(Filter { since_ns: Some(101), ..Default::default() }));
        assert!(f(Filter { pids: vec![10], ..Default::default() }));
        assert!(f(Filter { pids: vec![11], ..Default::default() }));
        assert!(!f(Filter { pids: vec![12], ..Default::default() }));
        assert!(f(Filter { process: Some("cat".into()), ..Default::default() }));
        assert!(!f(Filter { process: Some("ca".into()), ..Default::default() }));
        assert!(f(Filter { uid: Some(1000), ..Default::default() }));
        assert!(!f(Filter { uid: Some(0), ..Default::default() }));
        assert!(f(Filter { ops: vec![Op::Open, Op::Read], ..Default::default() }));
        assert!(!f(Filter { ops: vec![Op::Open], ..Default::default() }));
        assert!(f(Filter { path_prefix: Some("/usr/lib/".into()), ..Default::default() }));
        assert!(!f(Filter { path_prefix: Some("/usr/li".into()), ..Default::default() }));
    }

    #[test]
    fn path_prefixes() {
        for (p, pre, want) in [
            ("/usr/lib", "/usr/lib", true),
            ("/usr/lib/x", "/usr/lib", true),
            ("/usr/lib64", "/usr/lib", false),
            ("/a", "/", true),
            ("/a", "", true),
            ("/a/b", "/a/", true),
        ] {
            assert_eq!(path_under(p, pre), want, "{p} under {pre}");
        }
    }
}
