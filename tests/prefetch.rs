//! Tier 2: `strata prefetch plan` over an image built by `strata image create`, from a
//! hand-written prefetch list, an access log and nydus optimize JSON; chunks checked against
//! the image's own chunk tables.

mod common;

use common::{noise, path_str as s};

use std::sync::Arc;

use common::strata;
use strata::accesslog::{AccessLogConfig, AccessSink, Event, Mode, Op, RootOnly, SinkOptions};
use strata::rafs::chunk::{ChunkReader, ChunkRef};
use strata::rafs::reader::Image;
use strata::storage::{ChunkCache, LocalFs};

const CHUNK: usize = 0x10000;

/// An image of /a (3 chunks), /b (1 short chunk), /dup (a copy of /a), /dir/c (2 chunks) and
/// /dir/link (a symlink), 64 KiB chunks, uncompressed. Returns (tmp, bootstrap, blob dir).
fn build() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    let a = noise(1, 3 * CHUNK);
    std::fs::write(src.join("a"), &a).unwrap();
    std::fs::write(src.join("dup"), &a).unwrap();
    std::fs::write(src.join("b"), noise(2, 1000)).unwrap();
    std::fs::write(src.join("dir/c"), noise(3, 2 * CHUNK)).unwrap();
    std::os::unix::fs::symlink("c", src.join("dir/link")).unwrap();
    let boot = tmp.path().join("image.boot");
    let blobs = tmp.path().join("blobs");
    strata(&[
        "image",
        "create",
        s(&src),
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--chunk-size",
        "0x10000",
        "--compressor",
        "none",
    ]);
    (tmp, boot, blobs)
}

fn chunks_of(img: &Image, path: &str) -> Vec<ChunkRef> {
    let inode = img.resolve(path.as_bytes()).unwrap().expect(path);
    img.chunks(&inode).unwrap().into_iter().map(|c| c.expect("no holes")).collect()
}

fn plan_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["prefetch", "plan"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = strata(&all);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// (path, blob chunk index, stored offset) of each planned chunk, in plan order.
fn planned(v: &serde_json::Value) -> Vec<(String, u64, u64)> {
    v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_string(),
                c["index"].as_u64().unwrap(),
                c["compressed_offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn expected(img: &Image, paths: &[&str]) -> Vec<(String, u64, u64)> {
    paths
        .iter()
        .flat_map(|p| {
            chunks_of(img, p)
                .into_iter()
                .map(|c| (p.to_string(), u64::from(c.index), c.compressed_offset))
        })
        .collect()
}

#[test]
fn plan_from_a_prefetch_list() {
    let (tmp, boot, _blobs) = build();
    let img = Image::open(&boot).unwrap();
    let list = tmp.path().join("list");
    std::fs::write(&list, "/dir\n/b\n/dup\n/a\n/missing\n").unwrap();

    let v = plan_json(&["-B", s(&boot), "--list", s(&list)]);
    // /dir expands to /dir/c (the symlink has no data); /a is /dup's chunks again.
    assert_eq!(planned(&v), expected(&img, &["/dir/c", "/b", "/dup"]));
    let st = &v["stats"];
    assert_eq!(st["touches"], 5);
    assert_eq!(st["missing"], 1);
    assert_eq!(st["missing_paths"], serde_json::json!(["/missing"]));
    assert_eq!(st["files"], 4, "/dir/c, /b, /dup, /a");
    assert_eq!(st["duplicates"], 3, "/a shares /dup's chunks");
    assert_eq!(st["chunks"], 6);

    // Every planned chunk in exactly one request; requests within the merging size.
    let check = |v: &serde_json::Value, merging: u64| {
        let mut seen: Vec<u64> = Vec::new();
        for r in v["requests"].as_array().unwrap() {
            assert!(r["len"].as_u64().unwrap() <= merging.max(CHUNK as u64), "{r}");
            assert_eq!(r["blob_id"], img.blobs[0].blob_id.as_str());
            seen.extend(r["chunks"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()));
        }
        seen.sort_unstable();
        let mut want: Vec<u64> = planned(v).into_iter().map(|c| c.1).collect();
        want.sort_unstable();
        assert_eq!(seen, want);
    };
    check(&v, 1 << 20);
    assert_eq!(v["requests"].as_array().unwrap().len(), 1, "six adjacent chunks: {v}");
    assert_eq!(v["requests"][0]["gap_bytes"], 0);

    let v = plan_json(&["-B", s(&boot), "--list", s(&list), "--merging-size", "0"]);
    check(&v, 0);
    assert_eq!(v["requests"].as_array().unwrap().len(), 6);
    // Request order is first-touch order: /dir/c's first chunk first.
    let first = &expected(&img, &["/dir/c"])[0];
    assert_eq!(v["requests"][0]["offset"].as_u64(), Some(first.2));

    let v = plan_json(&["-B", s(&boot), "--list", s(&list), "--merging-size", "128K"]);
    check(&v, 128 << 10);

    // The human table names the requests and the first file.
    let out = strata(&["prefetch", "plan", "-B", s(&boot), "--list", s(&list)]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("6 chunks"), "{text}");
    assert!(text.contains("1 requests"), "{text}");
    assert!(text.contains("/dir/c"), "{text}");
    assert!(text.contains("/missing"), "{text}");
}

#[test]
fn cached_chunks_are_left_out() {
    let (tmp, boot, blobs) = build();
    let img = Image::open(&boot).unwrap();
    let cache_dir = tmp.path().join("cache");
    {
        let cache = ChunkCache::open(&cache_dir, Arc::new(LocalFs::new(&blobs)), &img.blobs, false)
            .unwrap();
        for c in chunks_of(&img, "/b") {
            cache.read_chunk(&c).unwrap();
        }
        cache.flush().unwrap();
    }
    let list = tmp.path().join("list");
    std::fs::write(&list, "/b\n/dir/c\n").unwrap();
    let v = plan_json(&["-B", s(&boot), "--list", s(&list), "--cache-dir", s(&cache_dir)]);
    assert_eq!(planned(&v), expected(&img, &["/dir/c"]));
    assert_eq!(v["stats"]["cached"], 1);
}

#[test]
fn plan_from_an_access_log_and_optimize_json() {
    let (tmp, boot, _blobs) = build();
    let img = Image::open(&boot).unwrap();
    let log = tmp.path().join("access.log");
    {
        let cfg = AccessLogConfig { path: log.clone(), mode: Mode::Full, ..Default::default() };
        let sink = AccessSink::start(SinkOptions::new(cfg).paths(Arc::new(RootOnly(1)))).unwrap();
        // Inode numbers here are the log's own; only the paths matter to the plan.
        sink.record(Event::new(Op::Lookup, 1, 100, 0).with_name(b"dir").with_aux(10));
        sink.record(Event::new(Op::Lookup, 10, 100, 0).with_name(b"c").with_aux(11));
        sink.record(Event::new(Op::Lookup, 1, 100, 0).with_name(b"b").with_aux(12));
        sink.record(Event::new(Op::Read, 11, 100, 0).with_range(CHUNK as u64 + 5, 10));
        sink.record(Event::new(Op::Read, 12, 100, 0).with_range(0, 1000));
        sink.record(Event::new(Op::Read, 11, 100, 0).with_range(0, 2 * CHUNK as u64));
        sink.flush().unwrap();
    }
    let v = plan_json(&["-B", s(&boot), "--log", s(&log)]);
    let c = expected(&img, &["/dir/c"]);
    let b = expected(&img, &["/b"]);
    assert_eq!(planned(&v), vec![c[1].clone(), b[0].clone(), c[0].clone()]);
    assert_eq!(v["stats"]["touches"], 3);
    assert_eq!(v["stats"]["duplicates"], 1);

    let json = tmp.path().join("optimize.json");
    std::fs::write(
        &json,
        r#"{"version":"v1","files":[{"path":"/a","ranges":[[131072,1]]},{"path":"/b"}]}"#,
    )
    .unwrap();
    let v = plan_json(&["-B", s(&boot), "--optimize-json", s(&json)]);
    let a = expected(&img, &["/a"]);
    assert_eq!(planned(&v), vec![a[2].clone(), b[0].clone()]);
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let (tmp, boot, _blobs) = build();
    let list = tmp.path().join("list");
    std::fs::write(&list, "/ok\nnot/absolute\n").unwrap();
    let err = common::strata_fails(&["prefetch", "plan", "-B", s(&boot), "--list", s(&list)]);
    assert!(err.contains("line 2") && err.contains("absolute"), "{err}");
    let err = common::strata_fails(&["prefetch", "plan", "-B", s(&boot)]);
    assert!(err.contains("--list"), "{err}");
    let json = tmp.path().join("j");
    std::fs::write(&json, r#"{"version":"v9","files":[]}"#).unwrap();
    let err =
        common::strata_fails(&["prefetch", "plan", "-B", s(&boot), "--optimize-json", s(&json)]);
    assert!(err.contains("v9"), "{err}");
}
