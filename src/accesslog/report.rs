//! Answers from a replayed log: [`stats`] (top files, first-touch order, per-process totals,
//! cache hit ratio, drops) and the exports (JSON, CSV, a prefetch list, nydus-image optimize's
//! prefetch JSON). Pure: events in, values or bytes out.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};

use serde::Serialize;

use super::event::Op;
use super::query::Resolved;

/// Per-file totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileStat {
    /// Path.
    pub path: String,
    /// Events about it.
    pub events: u64,
    /// Bytes read from it.
    pub bytes_read: u64,
    /// Bytes written to it.
    pub bytes_written: u64,
}

/// A file's first event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Touch {
    /// ns since the session start.
    pub ts_ns: u64,
    /// Path.
    pub path: String,
    /// The operation that touched it first.
    pub op: String,
    /// Its process id.
    pub pid: u32,
    /// Its process name.
    pub process: String,
}

/// Per-process totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessStat {
    /// Process id (the thread id when the process was unknown).
    pub pid: u32,
    /// Name.
    pub process: String,
    /// Events.
    pub events: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Distinct paths touched.
    pub files: u64,
}

/// Cache outcomes of reads that recorded one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CacheStat {
    /// Every chunk ready.
    pub hits: u64,
    /// No chunk ready.
    pub misses: u64,
    /// Some ready.
    pub partial: u64,
    /// hits / (hits + misses + partial); None when there were none.
    pub hit_ratio: Option<f64>,
}

/// What `strata accesslog stats` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Events counted.
    pub events: u64,
    /// Time from the first to the last event, ns.
    pub span_ns: u64,
    /// Events per operation.
    pub ops: BTreeMap<String, u64>,
    /// Files by bytes read + written, most first.
    pub top_by_bytes: Vec<FileStat>,
    /// Files by events, most first.
    pub top_by_count: Vec<FileStat>,
    /// Every path in the order it was first touched.
    pub first_touch: Vec<Touch>,
    /// Per process, by events, most first.
    pub processes: Vec<ProcessStat>,
    /// Cache outcomes.
    pub cache: CacheStat,
    /// Events the recorder lost.
    pub dropped: u64,
}

fn bytes_of(e: &Resolved) -> (u64, u64) {
    let n = e.len.unwrap_or(0);
    match e.op_kind {
        Some(Op::Read) => (n, 0),
        Some(Op::Write) => (0, n),
        _ => (0, 0),
    }
}

/// Whether an event says its path exists (a lookup that found nothing touches no file).
fn touches(e: &Resolved) -> bool {
    !(e.op_kind == Some(Op::Lookup) && e.aux == 0)
}

/// Stats of `events` (already filtered), keeping the `top` largest files per list.
pub fn stats<'a>(
    events: impl IntoIterator<Item = &'a Resolved>,
    dropped: u64,
    top: usize,
) -> Stats {
    let mut s = Stats { dropped, ..Default::default() };
    let mut files: HashMap<&str, FileStat> = HashMap::new();
    let mut procs: HashMap<u32, (ProcessStat, std::collections::HashSet<&str>)> = HashMap::new();
    let (mut first, mut last) = (None::<u64>, 0u64);
    for e in events {
        s.events += 1;
        first = Some(first.map_or(e.ts_ns, |f| f.min(e.ts_ns)));
        last = last.max(e.ts_ns);
        *s.ops.entry(e.op.clone()).or_default() += 1;
        let (r, w) = bytes_of(e);
        match e.cache {
            Some("hit") => s.cache.hits += 1,
            Some("miss") => s.cache.misses += 1,
            Some("partial") => s.cache.partial += 1,
            _ => {}
        }
        let p = procs.entry(e.process_id()).or_insert_with(|| {
            (ProcessStat { pid: e.process_id(), ..Default::default() }, Default::default())
        });
        if p.0.process.is_empty() {
            p.0.process.clone_from(&e.process);
        }
        p.0.events += 1;
        p.0.bytes_read += r;
        p.0.bytes_written += w;
        let Some(path) = e.path.as_deref() else { continue };
        p.1.insert(path);
        let f = files.entry(path).or_insert_with(|| {
            if touches(e) {
                s.first_touch.push(Touch {
                    ts_ns: e.ts_ns,
                    path: path.to_string(),
                    op: e.op.clone(),
                    pid: e.process_id(),
                    process: e.process.clone(),
                });
            }
            FileStat { path: path.to_string(), ..Default::default() }
        });
        f.events += 1;
        f.bytes_read += r;
        f.bytes_written += w;
    }
    s.span_ns = first.map_or(0, |f| last - f);
    let n = s.cache.hits + s.cache.misses + s.cache.partial;
    s.cache.hit_ratio = (n > 0).then(|| s.cache.hits as f64 / n as f64);
    // The log is in time order per writer batch; make the touch order strictly by time.
    s.first_touch.sort_by_key(|t| t.ts_ns);
    let mut all: Vec<FileStat> = files.into_values().collect();
    all.sort_by(|a, b| {
        (b.bytes_read + b.bytes_written)
            .cmp(&(a.bytes_read + a.bytes_written))
            .then(a.path.cmp(&b.path))
    });
    s.top_by_bytes =
        all.iter().filter(|f| f.bytes_read + f.bytes_written > 0).take(top).cloned().collect();
    all.sort_by(|a, b| b.events.cmp(&a.events).then(a.path.cmp(&b.path)));
    s.top_by_count = all.into_iter().take(top).collect();
    let mut ps: Vec<ProcessStat> = procs
        .into_values()
        .map(|(mut p, paths)| {
            p.files = paths.len() as u64;
            p
        })
        .collect();
    ps.sort_by(|a, b| b.events.cmp(&a.events).then(a.pid.cmp(&b.pid)));
    s.processes = ps;
    s
}

/// Files that were read, in the order of their first read, with the byte ranges read (sorted,
/// overlapping and adjacent ranges merged). What prefetch lists and layout optimisation need.
pub fn read_order<'a>(
    events: impl IntoIterator<Item = &'a Resolved>,
) -> Vec<(String, Vec<[u64; 2]>)> {
    let mut order: Vec<(u64, String)> = Vec::new();
    let mut ranges: HashMap<String, Vec<[u64; 2]>> = HashMap::new();
    for e in events {
        if e.op_kind != Some(Op::Read) {
            continue;
        }
        let Some(path) = &e.path else { continue };
        let rs = ranges.entry(path.clone()).or_insert_with(|| {
            order.push((e.ts_ns, path.clone()));
            Vec::new()
        });
        if let (Some(o), Some(l)) = (e.offset, e.len) {
            if l > 0 {
                rs.push([o, l]);
            }
        }
    }
    order.sort_by_key(|(ts, _)| *ts);
    order
        .into_iter()
        .map(|(_, p)| {
            let rs = merge_ranges(ranges.remove(&p).unwrap_or_default());
            (p, rs)
        })
        .collect()
}

/// Sort `[offset, len]` ranges and merge those that overlap or touch.
pub fn merge_ranges(mut rs: Vec<[u64; 2]>) -> Vec<[u64; 2]> {
    rs.sort_unstable();
    let mut out: Vec<[u64; 2]> = Vec::with_capacity(rs.len());
    for [o, l] in rs {
        let end = o.saturating_add(l);
        if let Some(last) = out.last_mut() {
            let last_end = last[0].saturating_add(last[1]);
            if o <= last_end {
                last[1] = last_end.max(end) - last[0];
                continue;
            }
        }
        out.push([o, l]);
    }
    out
}

/// Write events as a JSON array.
pub fn write_json<'a>(
    events: impl IntoIterator<Item = &'a Resolved>,
    w: &mut dyn Write,
) -> io::Result<()> {
    let v: Vec<&Resolved> = events.into_iter().collect();
    serde_json::to_writer_pretty(&mut *w, &v)?;
    w.write_all(b"\n")
}

/// CSV columns, in order.
pub const CSV_HEADER: &str =
    "ts_ns,op,layer,inode,path,path2,offset,len,chunk_first,chunk_last,cache,pid,tgid,process,uid";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Write events as CSV (RFC 4180 quoting, header line first, empty fields for absent values).
pub fn write_csv<'a>(
    events: impl IntoIterator<Item = &'a Resolved>,
    w: &mut dyn Write,
) -> io::Result<()> {
    writeln!(w, "{CSV_HEADER}")?;
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    for e in events {
        writeln!(
            w,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            e.ts_ns,
            csv_field(&e.op),
            e.layer,
            e.inode,
            csv_field(e.path.as_deref().unwrap_or("")),
            csv_field(e.path2.as_deref().unwrap_or("")),
            opt(e.offset),
            opt(e.len),
            opt(e.chunk_first.map(u64::from)),
            opt(e.chunk_last.map(u64::from)),
            e.cache.unwrap_or(""),
            e.pid,
            e.tgid,
            csv_field(&e.process),
            e.uid,
        )?;
    }
    Ok(())
}

/// Write the files read, one absolute path per line in first-read order (what
/// `--prefetch-files` and `nydus-image create --prefetch-policy fs` take). Paths that cannot
/// be written one per line (a newline in the name) are left out.
pub fn write_prefetch_list<'a>(
    events: impl IntoIterator<Item = &'a Resolved>,
    w: &mut dyn Write,
) -> io::Result<()> {
    for (path, _) in read_order(events) {
        if path.starts_with('/') && !path.contains('\n') {
            writeln!(w, "{path}")?;
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct NydusFile {
    path: String,
    ranges: Vec<[u64; 2]>,
}

#[derive(Serialize)]
struct NydusPrefetch {
    version: &'static str,
    files: Vec<NydusFile>,
}

/// Write nydus-image optimize's `--prefetch-files` JSON:
/// `{"version":"v1","files":[{"path":"/abs","ranges":[[offset,len],...]}]}`, files in
/// first-read order, ranges merged.
pub fn write_nydus_optimize<'a>(
    events: impl IntoIterator<Item = &'a Resolved>,
    w: &mut dyn Write,
) -> io::Result<()> {
    let files = read_order(events)
        .into_iter()
        .filter(|(p, _)| p.starts_with('/'))
        .map(|(path, ranges)| NydusFile { path, ranges })
        .collect();
    serde_json::to_writer_pretty(&mut *w, &NydusPrefetch { version: "v1", files })?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, op: Op, path: &str, off: u64, len: u64, pid: u32) -> Resolved {
        let data = matches!(op, Op::Read | Op::Write);
        Resolved {
            ts_ns: ts,
            op: op.name().into(),
            op_kind: Some(op),
            layer: 0,
            inode: 1,
            aux: 0,
            path: Some(path.into()),
            path2: None,
            offset: data.then_some(off),
            len: data.then_some(len),
            chunk_first: None,
            chunk_last: None,
            cache: data.then_some(if off == 0 { "miss" } else { "hit" }),
            pid,
            tgid: pid,
            process: format!("p{pid}"),
            uid: 0,
        }
    }

    fn workload() -> Vec<Resolved> {
        vec![
            ev(1, Op::Open, "/b", 0, 0, 1),
            ev(2, Op::Read, "/b", 0, 100, 1),
            ev(3, Op::Read, "/a", 0, 10, 2),
            ev(4, Op::Read, "/b", 100, 50, 1),
            ev(5, Op::Read, "/b", 4096, 10, 1),
            ev(6, Op::Write, "/c", 0, 7, 2),
            ev(7, Op::Read, "/a", 5, 10, 2),
        ]
    }

    #[test]
    fn merges_ranges() {
        for (inp, out) in [
            (vec![], vec![]),
            (vec![[10, 5], [0, 10]], vec![[0, 15]]),
            (vec![[0, 5], [6, 1]], vec![[0, 5], [6, 1]]),
            (vec![[0, 10], [2, 3]], vec![[0, 10]]),
            (vec![[u64::MAX - 1, 5], [u64::MAX - 1, 1]], vec![[u64::MAX - 1, 1]]),
        ] {
            assert_eq!(merge_ranges(inp.clone()), out, "{inp:?}");
        }
    }

    #[test]
    fn stats_of_a_workload() {
        let evs = workload();
        let s = stats(&evs, 3, 10);
        assert_eq!(s.events, 7);
        assert_eq!(s.span_ns, 6);
        assert_eq!(s.dropped, 3);
        assert_eq!(s.ops["read"], 5);
        let order: Vec<&str> = s.first_touch.iter().map(|t| t.path.as_str()).collect();
        assert_eq!(order, ["/b", "/a", "/c"]);
        assert_eq!(s.top_by_bytes[0].path, "/b");
        assert_eq!(s.top_by_bytes[0].bytes_read, 160);
        assert_eq!(s.top_by_count[0].path, "/b");
        assert_eq!(s.top_by_count[0].events, 4);
        assert_eq!((s.cache.hits, s.cache.misses), (3, 3));
        assert_eq!(s.cache.hit_ratio, Some(0.5));
        let p1 = s.processes.iter().find(|p| p.pid == 1).unwrap();
        assert_eq!((p1.events, p1.bytes_read, p1.files, p1.process.as_str()), (4, 160, 1, "p1"));
        let p2 = s.processes.iter().find(|p| p.pid == 2).unwrap();
        assert_eq!((p2.bytes_read, p2.bytes_written, p2.files), (20, 7, 2));
        assert_eq!(stats(&evs, 0, 1).top_by_count.len(), 1);
    }

    #[test]
    fn exports() {
        let evs = workload();
        assert_eq!(
            read_order(&evs),
            vec![("/b".to_string(), vec![[0, 150], [4096, 10]]), ("/a".to_string(), vec![[0, 15]])]
        );
        let mut out = Vec::new();
        write_prefetch_list(&evs, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "/b\n/a\n");
        let mut out = Vec::new();
        write_nydus_optimize(&evs, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version":"v1","files":[
                {"path":"/b","ranges":[[0,150],[4096,10]]},
                {"path":"/a","ranges":[[0,15]]}]})
        );
        let mut out = Vec::new();
        write_csv(&evs[..2], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[2], "2,read,0,1,/b,,0,100,,,miss,1,1,p1,0");
        assert_eq!(lines[1].split(',').count(), CSV_HEADER.split(',').count());
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        let mut out = Vec::new();
        write_json(&evs, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 7);
        assert_eq!(v[1]["op"], "read");
        assert_eq!(v[1]["path"], "/b");
    }
}
