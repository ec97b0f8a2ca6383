//! Tier 2: `strata image optimize` re-lays an image out hot-first. The touched chunks come
//! first in the new blob in first-touch order, the prefetch table lists the touched files in
//! that order, the tree reads the same, dedup and digests are kept, `image check` passes, and
//! bad inputs are clear errors.

mod common;

use common::{noise, path_str as s};

use std::path::PathBuf;

use common::{assert_same, blob_reader, only_blob, snapshot_image, strata, strata_fails, Compare};
use strata::rafs::reader::Image;

const CHUNK: usize = 0x10000;

/// /a (3 chunks), /dup (a copy of /a: shares its chunks), /b (1 chunk), /dir/c (2 chunks),
/// 64 KiB chunks, zstd. Returns (tmp, bootstrap, blob dir).
fn build() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    let a = noise(1, 3 * CHUNK);
    std::fs::write(src.join("a"), &a).unwrap();
    std::fs::write(src.join("dup"), &a).unwrap();
    std::fs::write(src.join("b"), noise(2, 1000)).unwrap();
    std::fs::write(src.join("dir/c"), noise(3, 2 * CHUNK)).unwrap();
    let (boot, blobs) = (tmp.path().join("image.boot"), tmp.path().join("blobs"));
    let out = strata(&[
        "image",
        "create",
        s(&src),
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--chunk-size",
        "0x10000",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (tmp, boot, blobs)
}

/// (path, file chunk index) of every chunk of the image, in stored-offset order of the blob.
fn blob_order(img: &Image) -> Vec<(String, usize)> {
    let mut v = Vec::new();
    for p in ["/a", "/dup", "/b", "/dir/c"] {
        let ino = img.resolve(p.as_bytes()).unwrap().unwrap();
        for (i, c) in img.chunks(&ino).unwrap().into_iter().enumerate() {
            let c = c.unwrap();
            v.push((c.compressed_offset, c.index, p.to_string(), i));
        }
    }
    v.sort();
    // A chunk shared by /a and /dup is listed under the first name at that offset.
    v.dedup_by_key(|x| x.0);
    v.into_iter().map(|(_, _, p, i)| (p, i)).collect()
}

#[test]
fn optimize_puts_touched_chunks_first_in_first_touch_order() {
    let (tmp, boot, blobs) = build();
    // The workload read /dir/c's second chunk, then bytes in /a's third chunk, then all of /b.
    let json = tmp.path().join("optimize.json");
    std::fs::write(
        &json,
        r#"{"version":"v1","files":[
            {"path":"/dir/c","ranges":[[65536,100]]},
            {"path":"/a","ranges":[[131072,4096]]},
            {"path":"/b","ranges":[[0,1000]]},
            {"path":"/not/there","ranges":[[0,1]]}]}"#,
    )
    .unwrap();
    let (out, out_blobs) = (tmp.path().join("opt.boot"), tmp.path().join("opt-blobs"));
    let r = strata(&[
        "image",
        "optimize",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--optimize-json",
        s(&json),
        "-O",
        s(&out),
        "--output-blob-dir",
        s(&out_blobs),
        "--json",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["prefetch_files"], serde_json::json!(["/dir/c", "/a", "/b"]));
    assert_eq!(v["stats"]["missing"], 1);
    assert_eq!(v["blobs"][0]["hot_chunks"], 3);

    let old = Image::open(&boot).unwrap();
    let new = Image::open(&out).unwrap();
    let order = blob_order(&new);
    let hot: Vec<(String, usize)> = vec![("/dir/c".into(), 1), ("/a".into(), 2), ("/b".into(), 0)];
    assert_eq!(order[..3], hot[..], "hot chunks first, in first-touch order: {order:?}");
    // The rest keep their old relative order.
    let rest_old: Vec<(String, usize)> =
        blob_order(&old).into_iter().filter(|c| !hot.contains(c)).collect();
    assert_eq!(order[3..], rest_old[..]);

    // Prefetch table: the touched files, in order.
    let nid = |p: &str| new.resolve(p.as_bytes()).unwrap().unwrap().nid;
    assert_eq!(new.prefetch, vec![nid("/dir/c"), nid("/a"), nid("/b")]);
    // Same tree, same bytes, same dedup, same digests.
    assert_same(
        &snapshot_image(&old, &blob_reader(&old, &blobs)),
        &snapshot_image(&new, &blob_reader(&new, &out_blobs)),
        Compare::default(),
        "optimized image",
    );
    assert_eq!(old.blobs[0].chunk_count, new.blobs[0].chunk_count);
    let digests = |img: &Image| {
        let mut d: Vec<[u8; 32]> = img.all_chunks().iter().map(|c| c.digest).collect();
        d.sort();
        d
    };
    assert_eq!(digests(&old), digests(&new));
    assert_ne!(old.blobs[0].blob_id, new.blobs[0].blob_id);
    assert!(only_blob(&out_blobs).ends_with(&new.blobs[0].blob_id));
    let r = strata(&["image", "check", "-B", s(&out), "-D", s(&out_blobs)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

#[test]
fn optimize_from_a_prefetch_list_and_bad_inputs() {
    let (tmp, boot, blobs) = build();
    let list = tmp.path().join("list");
    std::fs::write(&list, "/b\n/dir\n").unwrap();
    let out = tmp.path().join("opt.boot");
    let args = ["image", "optimize", "-B", s(&boot), "-D", s(&blobs), "-O", s(&out)];
    let r = strata(&[&args[..], &["--list", s(&list)]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let new = Image::open(&out).unwrap();
    let order = blob_order(&new);
    let want: Vec<(String, usize)> =
        vec![("/b".into(), 0), ("/dir/c".into(), 0), ("/dir/c".into(), 1)];
    assert_eq!(order[..3], want[..]);
    let r = strata(&["image", "check", "-B", s(&out), "-D", s(&blobs)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    // Nothing given, nothing touched, a missing blob, a malformed JSON: one clear line each.
    let e = strata_fails(&args);
    assert!(e.contains("give --log, --list or --optimize-json"), "{e}");
    std::fs::write(&list, "/nope\n").unwrap();
    let e = strata_fails(&[&args[..], &["--list", s(&list)]].concat());
    assert!(e.contains("touched no chunk"), "{e}");
    std::fs::write(&list, "/a\n").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = strata_fails(&[
        "image",
        "optimize",
        "-B",
        s(&boot),
        "-D",
        s(&empty),
        "-O",
        s(&out),
        "--list",
        s(&list),
    ]);
    assert!(e.contains("is not in"), "{e}");
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"version\":\"v9\"}").unwrap();
    let e = strata_fails(&[&args[..], &["--optimize-json", s(&bad)]].concat());
    assert!(e.contains("bad.json"), "{e}");
}
