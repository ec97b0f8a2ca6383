//! What a workload touched, in order: the planner's input.
//!
//! Three sources give the same [`Touch`] sequence:
//! - access-log events ([`touches_from_events`]): every read with a path, in log order;
//! - a prefetch list ([`touches_from_list`]): one absolute path per line, as nydusd's
//!   `--prefetch-files` and `strata accesslog export --format prefetch-list` write it;
//! - nydus-image optimize's `--prefetch-files` JSON ([`touches_from_optimize_json`]):
//!   `{"version":"v1","files":[{"path":"/abs","ranges":[[offset,len],...]}]}`.
//!
//! Parsing is pure (text or events in, touches out); paths are resolved against the image by
//! the planner, not here.

use serde::Deserialize;

use super::Error;
use crate::accesslog::{Op, Resolved};

/// Which part of a file was touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// The whole file (a directory: every regular file below it).
    Whole,
    /// `len` bytes at `offset` (clipped to the file's size when planned).
    Bytes {
        /// Byte offset in the file.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// The file's chunks `first..=last`, counted from the start of the file (what the access
    /// log records as a read's chunk span); clipped to the file's chunk count when planned.
    Chunks {
        /// First chunk of the file touched.
        first: u32,
        /// Last chunk touched (inclusive).
        last: u32,
    },
}

/// One touch of one file: the unit the planner orders by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Touch {
    /// Absolute path inside the image.
    pub path: String,
    /// The part touched.
    pub extent: Extent,
}

impl Touch {
    /// The whole of `path`.
    pub fn whole(path: impl Into<String>) -> Self {
        Self { path: path.into(), extent: Extent::Whole }
    }

    /// `len` bytes of `path` at `offset`.
    pub fn bytes(path: impl Into<String>, offset: u64, len: u64) -> Self {
        Self { path: path.into(), extent: Extent::Bytes { offset, len } }
    }
}

/// The reads among `events`, in the order given (replayed logs are in time order), as touches.
///
/// A read's extent is its byte range when it has one, else its chunk span, else the whole
/// file. Events without a path (the log never learnt the inode's name) and operations other
/// than `read` are skipped: only reads move file data. The layer is not looked at: paths are
/// looked up in the image the plan is for.
pub fn touches_from_events<'a>(events: impl IntoIterator<Item = &'a Resolved>) -> Vec<Touch> {
    events
        .into_iter()
        .filter(|e| e.op_kind == Some(Op::Read))
        .filter_map(|e| {
            let path = e.path.as_ref()?;
            let extent = match (e.offset, e.len, e.chunk_first, e.chunk_last) {
                (Some(offset), Some(len), _, _) => Extent::Bytes { offset, len },
                (_, _, Some(first), Some(last)) => Extent::Chunks { first, last },
                _ => Extent::Whole,
            };
            Some(Touch { path: path.clone(), extent })
        })
        .collect()
}

/// A prefetch list: one absolute path per line, whole files (a directory stands for every file
/// below it; `/` for the whole image). Blank lines and lines starting with `#` are skipped;
/// surrounding whitespace is trimmed (nydusd trims too). A relative path is an error naming
/// its line.
pub fn touches_from_list(text: &str) -> Result<Vec<Touch>, Error> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with('/') {
            return Err(Error::ListLine {
                line: i + 1,
                text: line.to_string(),
                reason: "not an absolute path",
            });
        }
        out.push(Touch::whole(line));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct OptimizeFile {
    path: String,
    #[serde(default)]
    ranges: Option<Vec<[u64; 2]>>,
}

#[derive(Deserialize)]
struct OptimizeDoc {
    version: String,
    files: Vec<OptimizeFile>,
}

/// nydus-image optimize's `--prefetch-files` JSON. A file without `ranges` (or with an empty
/// list) is touched whole; with ranges, each `[offset, len]` is a touch, in the order given.
/// Files are in the order given (first-read order when strata wrote the file).
pub fn touches_from_optimize_json(text: &str) -> Result<Vec<Touch>, Error> {
    let doc: OptimizeDoc = serde_json::from_str(text)?;
    if doc.version != "v1" {
        return Err(Error::OptimizeVersion { found: doc.version });
    }
    let mut out = Vec::new();
    for (index, f) in doc.files.into_iter().enumerate() {
        if !f.path.starts_with('/') {
            return Err(Error::OptimizePath { index, path: f.path });
        }
        match f.ranges {
            Some(ranges) if !ranges.is_empty() => {
                out.extend(ranges.into_iter().map(|[o, l]| Touch::bytes(f.path.clone(), o, l)))
            }
            _ => out.push(Touch::whole(f.path)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        op: Op,
        path: Option<&str>,
        range: Option<(u64, u64)>,
        chunks: Option<(u32, u32)>,
    ) -> Resolved {
        Resolved {
            ts_ns: 0,
            op: op.name().into(),
            op_kind: Some(op),
            layer: 0,
            inode: 7,
            aux: 0,
            path: path.map(str::to_string),
            path2: None,
            offset: range.map(|r| r.0),
            len: range.map(|r| r.1),
            chunk_first: chunks.map(|c| c.0),
            chunk_last: chunks.map(|c| c.1),
            cache: None,
            pid: 1,
            tgid: 1,
            process: String::new(),
            uid: 0,
        }
    }

    #[test]
    fn events_keep_reads_with_paths_in_order() {
        let evs = vec![
            ev(Op::Lookup, Some("/a"), None, None),
            ev(Op::Read, Some("/b"), Some((4096, 10)), Some((1, 1))),
            ev(Op::Read, None, Some((0, 10)), None),
            ev(Op::Open, Some("/a"), None, None),
            ev(Op::Read, Some("/a"), None, Some((2, 3))),
            ev(Op::Read, Some("/c"), None, None),
            ev(Op::Write, Some("/d"), Some((0, 1)), None),
        ];
        assert_eq!(
            touches_from_events(&evs),
            vec![
                Touch::bytes("/b", 4096, 10),
                Touch { path: "/a".into(), extent: Extent::Chunks { first: 2, last: 3 } },
                Touch::whole("/c"),
            ]
        );
        assert!(touches_from_events(&[]).is_empty());
    }

    #[test]
    fn lists_are_absolute_paths_per_line() {
        let t = touches_from_list("/usr/bin/python3\n\n  /etc/hosts  \n# comment\n/lib\n").unwrap();
        assert_eq!(
            t,
            vec![
                Touch::whole("/usr/bin/python3"),
                Touch::whole("/etc/hosts"),
                Touch::whole("/lib")
            ]
        );
        assert!(touches_from_list("").unwrap().is_empty());
        let err = touches_from_list("/ok\nrelative/path\n").unwrap_err();
        assert!(matches!(err, Error::ListLine { line: 2, .. }), "{err:?}");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn optimize_json_cases() {
        let cases: &[(&str, Result<Vec<Touch>, &str>)] = &[
            (
                r#"{"version":"v1","files":[{"path":"/a","ranges":[[0,4096],[8192,1]]},{"path":"/b"}]}"#,
                Ok(vec![
                    Touch::bytes("/a", 0, 4096),
                    Touch::bytes("/a", 8192, 1),
                    Touch::whole("/b"),
                ]),
            ),
            (
                r#"{"version":"v1","files":[{"path":"/c","ranges":[]}]}"#,
                Ok(vec![Touch::whole("/c")]),
            ),
            (r#"{"version":"v1","files":[]}"#, Ok(vec![])),
            (r#"{"version":"v2","files":[]}"#, Err("version \"v2\"")),
            (r#"{"version":"v1","files":[{"path":"rel"}]}"#, Err("not absolute")),
            (
                r#"{"version":"v1","files":[{"path":"/a","ranges":[[1]]}]}"#,
                Err("nydus optimize JSON"),
            ),
            (r#"not json"#, Err("nydus optimize JSON")),
            (r#"{"files":[]}"#, Err("version")),
        ];
        for (text, want) in cases {
            match (touches_from_optimize_json(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{text}"),
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }
}
