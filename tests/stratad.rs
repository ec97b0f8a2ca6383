//! Tier 3 (root): stratad serves RAFS images over FUSE like nydusd. Every test mounts only under
//! its own temp dir; a guard stops the daemon it started (by PID) and unmounts, also on failure.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{http, is_mounted, stratad_bin, Daemon};
use common::{assert_same, require_root, snapshot_dir, strata, Compare};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn write_file(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn localfs_v1_config(dir: &Path, blobs: &Path, cache: &Path, cache_type: &str) -> PathBuf {
    config_with(dir, blobs, cache, cache_type, 1 << 20)
}

/// A v1 config with read amplification `amplify_io` (0: fetch only what a read touches).
fn config_with(
    dir: &Path,
    blobs: &Path,
    cache: &Path,
    cache_type: &str,
    amplify_io: u64,
) -> PathBuf {
    let p = dir.join(format!("config-{cache_type}-{amplify_io}.json"));
    let cfg = serde_json::json!({
        "device": {"backend": {"type": "localfs", "config": {"dir": blobs}},
                   "cache": {"type": cache_type, "config": {"work_dir": cache}}},
        "mode": "direct", "digest_validate": false, "iostats_files": true, "enable_xattr": true,
        "access_pattern": true, "latest_read_files": true, "amplify_io": amplify_io,
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

/// A two-layer image: layer1 from a directory, layer2 (with whiteouts) as a tar layer built on
/// it; returns (merged bootstrap, blob dir).
fn two_layer_image(t: &Path) -> (PathBuf, PathBuf) {
    let l1 = t.join("l1");
    write_file(&l1.join("etc/hostname"), b"strata\n");
    write_file(&l1.join("usr/lib/big.bin"), &pseudo_random(5 << 20, 7));
    write_file(&l1.join("usr/share/doc/gone.txt"), b"removed by layer 2\n");
    write_file(&l1.join("usr/share/many/a"), b"a\n");
    std::os::unix::fs::symlink("../lib/big.bin", l1.join("usr/share/big-link")).unwrap();
    std::fs::hard_link(l1.join("etc/hostname"), l1.join("etc/hostname.hard")).unwrap();
    xattr::set(l1.join("etc/hostname"), "user.fixture", b"v").unwrap();
    let blobs = t.join("blobs");
    let boot1 = t.join("l1.boot");
    strata(&["image", "create", "-B", s(&boot1), "-D", s(&blobs), s(&l1)]);
    // Layer 2: a tar with a whiteout, an opaque dir and a new file.
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in [
        ("usr/share/doc/.wh.gone.txt", &b""[..]),
        ("usr/share/many/.wh..wh..opq", b""),
        ("usr/share/many/new.txt", b"new in layer 2\n"),
        ("etc/motd", b"hello from layer 2\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }
    let l2 = t.join("l2.tar");
    std::fs::write(&l2, b.into_inner().unwrap()).unwrap();
    let boot2 = t.join("l2.boot");
    strata(&["image", "create", "-t", "tar-rafs", "-B", s(&boot2), "-D", s(&blobs), s(&l2)]);
    let merged = t.join("merged.boot");
    strata(&["image", "merge", "-B", s(&merged), s(&boot1), s(&boot2)]);
    (merged, blobs)
}

#[test]
fn merged_image_mounts_as_the_tree_unpack_shows() {
    if !require_root("merged_image_mounts_as_the_tree_unpack_shows", "FUSE mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = two_layer_image(t.path());
    let unpacked = t.path().join("unpacked");
    strata(&["image", "unpack", "-B", s(&boot), "-D", s(&blobs), "--output-dir", s(&unpacked)]);
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cfg = localfs_v1_config(t.path(), &blobs, &t.path().join("cache"), "blobcache");
    let d = Daemon::start(
        &["--config", s(&cfg), "--bootstrap", s(&boot)],
        &mnt,
        &t.path().join("api.sock"),
    );
    let want = snapshot_dir(&unpacked);
    let got = snapshot_dir(&mnt);
    assert_same(&want, &got, Compare::default(), "stratad mount vs unpack");
    assert!(!got.contains_key(b"usr/share/doc/gone.txt".as_slice()), "whiteout applied");
    assert_eq!(std::fs::read(mnt.join("usr/share/many/new.txt")).unwrap(), b"new in layer 2\n");
    drop(d);
}

#[test]
fn reads_are_lazy_and_a_warm_cache_needs_no_backend() {
    if !require_root("reads_are_lazy_and_a_warm_cache_needs_no_backend", "FUSE mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let big = pseudo_random(64 << 20, 11);
    write_file(&src.join("big.bin"), &big);
    let (boot, blobs) = (t.path().join("boot"), t.path().join("blobs"));
    strata(&["image", "create", "-B", s(&boot), "-D", s(&blobs), s(&src)]);
    let cache = t.path().join("cache");
    // No read amplification: exactly the chunks a read touches are fetched.
    let cfg = config_with(t.path(), &blobs, &cache, "blobcache", 0);
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sock = t.path().join("api.sock");
    {
        let d = Daemon::start(&["--config", s(&cfg), "--bootstrap", s(&boot)], &mnt, &sock);
        let f = std::fs::File::open(mnt.join("big.bin")).unwrap();
        let mut buf = vec![0u8; 4096];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut buf, 33 << 20).unwrap();
        assert_eq!(buf, big[33 << 20..(33 << 20) + 4096]);
        let (status, m) = d.api("GET", "/api/v1/metrics/backend");
        assert_eq!(status, 200, "{m}");
        assert_eq!(m["read_count"], 1, "one chunk fetched for one 4 KiB read: {m}");
        assert!(m["read_amount_total"].as_u64().unwrap() <= (1 << 20) + 4096, "{m}");
        let (_, files) = d.api("GET", "/api/v1/metrics/files");
        assert!(files.as_object().is_some_and(|o| !o.is_empty()), "iostats_files: {files}");
        let (_, g) = d.api("GET", "/api/v1/metrics");
        assert_eq!(g["data_read"], 4096, "{g}");
    }
    assert!(!is_mounted(&mnt));
    // Second daemon over the same (now warm) cache: the same range needs no backend read.
    let d = Daemon::start(&["--config", s(&cfg), "--bootstrap", s(&boot)], &mnt, &sock);
    let f = std::fs::File::open(mnt.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut buf, 33 << 20).unwrap();
    assert_eq!(buf, big[33 << 20..(33 << 20) + 4096]);
    let (_, m) = d.api("GET", "/api/v1/metrics/backend");
    assert_eq!(m["read_count"], 0, "warm cache: {m}");
    let (_, bc) = d.api("GET", "/api/v1/metrics/blobcache");
    assert!(bc["whole_hits"].as_u64().unwrap() >= 1, "{bc}");
}

#[test]
fn a_corrupted_chunk_is_eio_and_an_event_and_other_files_still_read() {
    if !require_root(
        "a_corrupted_chunk_is_eio_and_an_event_and_other_files_still_read",
        "FUSE mount",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_file(&src.join("good.txt"), &b"good data\n".repeat(1000));
    write_file(&src.join("bad.bin"), &pseudo_random(300_000, 3));
    let (boot, blobs) = (t.path().join("boot"), t.path().join("blobs"));
    strata(&["image", "create", "--compressor", "none", "-B", s(&boot), "-D", s(&blobs), s(&src)]);
    // Flip a byte inside bad.bin's chunk (found through inspect).
    let out =
        strata(&["image", "inspect", "-B", s(&boot), "--request", "inode", "/bad.bin", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let off = v["chunks"][0]["compressed_offset"].as_u64().unwrap() + 1000;
    let blob = common::only_blob(&blobs);
    let mut data = std::fs::read(&blob).unwrap();
    data[off as usize] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    let cfg = localfs_v1_config(t.path(), &blobs, &t.path().join("cache"), "blobcache");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let d = Daemon::start(
        &["--config", s(&cfg), "--bootstrap", s(&boot)],
        &mnt,
        &t.path().join("api.sock"),
    );
    let err = std::fs::read(mnt.join("bad.bin")).expect_err("corrupted data must not be returned");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(std::fs::read(mnt.join("good.txt")).unwrap(), b"good data\n".repeat(1000));
    let (status, ev) = d.api("GET", "/api/v1/daemon/events");
    assert_eq!(status, 200);
    assert!(ev.to_string().contains("digest mismatch"), "{ev}");
}

#[test]
fn thirty_two_cold_readers_get_right_bytes_and_each_chunk_is_fetched_once() {
    if !require_root(
        "thirty_two_cold_readers_get_right_bytes_and_each_chunk_is_fetched_once",
        "FUSE mount",
    ) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let big = pseudo_random(16 << 20, 5);
    write_file(&src.join("big.bin"), &big);
    let (boot, blobs) = (t.path().join("boot"), t.path().join("blobs"));
    strata(&["image", "create", "-B", s(&boot), "-D", s(&blobs), s(&src)]);
    let cfg = localfs_v1_config(t.path(), &blobs, &t.path().join("cache"), "blobcache");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let d = Daemon::start(
        &["--config", s(&cfg), "--bootstrap", s(&boot), "--thread-num", "8"],
        &mnt,
        &t.path().join("api.sock"),
    );
    let want = sha2_hex(&big);
    std::thread::scope(|sc| {
        for i in 0..32 {
            let mnt = &mnt;
            let want = &want;
            sc.spawn(move || {
                // Different start points so readers race on the same chunks.
                let mut f = std::fs::File::open(mnt.join("big.bin")).unwrap();
                let mut data = Vec::new();
                f.read_to_end(&mut data).unwrap();
                assert_eq!(&sha2_hex(&data), want, "reader {i}");
            });
        }
    });
    let (_, m) = d.api("GET", "/api/v1/metrics/backend");
    assert_eq!(m["read_count"], 16, "16 chunks of 1 MiB, each fetched once: {m}");
}

fn sha2_hex(d: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(d))
}

#[test]
fn nydusd_doc_configs_start_stratad() {
    if !require_root("nydusd_doc_configs_start_stratad", "FUSE mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_file(&src.join("hello.txt"), b"hello\n");
    let (boot, blobs) = (t.path().join("boot"), t.path().join("blobs"));
    strata(&["image", "create", "-B", s(&boot), "-D", s(&blobs), s(&src)]);
    let cache = t.path().join("cache");
    // The seed doc's localfs v1 example, and its v2 example with "localfs": "<dir>" (which
    // nydusd itself rejects), minus the overlay section (not built yet), paths adjusted.
    let v1 = format!(
        r#"{{"device": {{"backend": {{"type": "localfs", "config": {{"dir": "{}"}}}},
            "cache": {{"type": "blobcache", "config": {{"work_dir": "{}"}}}}}},
            "mode": "direct", "digest_validate": false, "iostats_files": false}}"#,
        blobs.display(),
        cache.display()
    );
    let v2 = format!(
        r#"{{"version": 2, "backend": {{"type": "localfs", "localfs": "{}"}},
            "cache": {{"type": "blobcache", "filecache": {{"work_dir": "{}"}}}}}}"#,
        blobs.display(),
        cache.display()
    );
    for (name, text) in [("v1.json", v1), ("v2.json", v2)] {
        let cfg = t.path().join(name);
        std::fs::write(&cfg, text).unwrap();
        let mnt = t.path().join(format!("mnt-{name}"));
        std::fs::create_dir(&mnt).unwrap();
        let mut d = Daemon::start(
            &["--config", s(&cfg), "--bootstrap", s(&boot)],
            &mnt,
            &t.path().join(format!("{name}.sock")),
        );
        assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"hello\n", "{name}");
        let st = d.stop();
        assert!(st.success(), "SIGTERM exits 0 ({name}): {st}");
        assert!(!is_mounted(&mnt), "SIGTERM unmounts ({name})");
    }
}

#[test]
fn sigterm_with_a_busy_mount_still_exits_cleanly() {
    if !require_root("sigterm_with_a_busy_mount_still_exits_cleanly", "FUSE mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = two_layer_image(t.path());
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cfg = localfs_v1_config(t.path(), &blobs, &t.path().join("cache"), "blobcache");
    let mut d = Daemon::start(&["-C", s(&cfg), "-B", s(&boot)], &mnt, &t.path().join("api.sock"));
    // A process whose working directory and an open file are inside the mount keep it busy:
    // the unmount can only detach it, and the workers' reads must still be ended.
    let mut busy = Command::new("sh")
        .args(["-c", "exec 3<etc/hostname; exec sleep 30"])
        .current_dir(&mnt)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let st = d.stop();
    let took = started.elapsed();
    let _ = busy.kill();
    let _ = busy.wait();
    assert!(st.success(), "stratad exits 0 on SIGTERM with a busy mount: {st}");
    assert!(took < Duration::from_secs(9), "it did not need the SIGKILL fallback ({took:?})");
    assert!(!is_mounted(&mnt));
}

#[test]
fn startup_errors_are_one_line_and_nonzero() {
    if !require_root("startup_errors_are_one_line_and_nonzero", "FUSE mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write_file(&src.join("f"), b"x");
    let (boot, blobs) = (t.path().join("boot"), t.path().join("blobs"));
    strata(&["image", "create", "-B", s(&boot), "-D", s(&blobs), s(&src)]);
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(stratad_bin()).args(args).output().expect("spawn");
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            err.trim_end().lines().filter(|l| l.contains("error")).count(),
            1,
            "{args:?}: {err}"
        );
        err
    };
    let missing = t.path().join("nope.boot");
    assert!(run(&["-M", s(&mnt), "-B", s(&missing), "-D", s(&blobs)]).contains("nope.boot"));
    std::fs::write(t.path().join("garbage.boot"), vec![7u8; 8192]).unwrap();
    let g = t.path().join("garbage.boot");
    assert!(run(&["-M", s(&mnt), "-B", s(&g), "-D", s(&blobs)]).contains("malformed"));
    assert!(run(&["-M", s(&t.path().join("no-such-dir")), "-B", s(&boot), "-D", s(&blobs)])
        .contains("no-such-dir"));
    assert!(run(&["-M", s(&mnt), "-B", s(&boot), "-D", s(&blobs), "--writable"])
        .contains("no overlay section"));
    // Busy: a daemon already serves the mountpoint.
    let _d = Daemon::start(&["-B", s(&boot), "-D", s(&blobs)], &mnt, &t.path().join("api.sock"));
    assert!(run(&["-M", s(&mnt), "-B", s(&boot), "-D", s(&blobs)]).contains("busy"));
}

#[test]
fn api_pseudo_mounts_and_malformed_requests() {
    if !require_root("api_pseudo_mounts_and_malformed_requests", "FUSE mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (boot, blobs) = two_layer_image(t.path());
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sock = t.path().join("api.sock");
    let cfg = localfs_v1_config(t.path(), &blobs, &t.path().join("cache"), "blobcache");
    // A daemon with no root image: images arrive through the mount API (shared mode).
    let d = Daemon::start(&["--config", s(&cfg)], &mnt, &sock);
    let cfg_text = std::fs::read_to_string(&cfg).unwrap();
    let body =
        serde_json::json!({"source": boot, "fs_type": "rafs", "config": cfg_text}).to_string();
    let (st, b) = http(&sock, "POST", "/api/v1/mount?mountpoint=/img1", Some(&body)).unwrap();
    assert!((200..300).contains(&st), "{st} {b}");
    assert_eq!(std::fs::read(mnt.join("img1/etc/motd")).unwrap(), b"hello from layer 2\n");
    let (st, _) = http(&sock, "POST", "/api/v1/mount?mountpoint=/img2", Some(&body)).unwrap();
    assert!((200..300).contains(&st));
    assert_eq!(std::fs::read(mnt.join("img2/etc/hostname")).unwrap(), b"strata\n");
    let (st, _) = http(&sock, "DELETE", "/api/v1/mount?mountpoint=/img2", None).unwrap();
    assert!((200..300).contains(&st));
    // Malformed requests get a 4xx with a JSON error, and the daemon keeps serving.
    for (m, p, body) in [
        ("POST", "/api/v1/mount?mountpoint=/x", Some("{not json")),
        ("POST", "/api/v1/mount", Some(body.as_str())),
        ("GET", "/api/v1/nonexistent", None),
        ("PUT", "/api/v1/daemon", Some(r#"{"log_level": "loud"}"#)),
    ] {
        let (st, b) = http(&sock, m, p, body).unwrap();
        assert!((400..500).contains(&st), "{m} {p}: {st} {b}");
    }
    let (st, info) = d.api("GET", "/api/v1/daemon");
    assert_eq!(st, 200);
    assert_eq!(info["state"], "RUNNING");
    assert_eq!(std::fs::read(mnt.join("img1/etc/hostname")).unwrap(), b"strata\n");
    // Exit through the API: the daemon unmounts and exits 0.
    let mut d = d;
    let (st, _) = http(&sock, "PUT", "/api/v1/daemon/exit", None).unwrap();
    assert!((200..300).contains(&st));
    let deadline = Instant::now() + Duration::from_secs(10);
    let child = d.child.as_mut().unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "exit via API");
        std::thread::sleep(Duration::from_millis(20));
    };
    d.child = None;
    assert!(status.success());
    assert!(!is_mounted(&mnt));
}

#[test]
fn read_ahead_fetches_the_next_chunks_in_the_background() {
    if !require_root("read_ahead_fetches_the_next_chunks_in_the_background", "FUSE mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let big = pseudo_random(8 << 20, 9);
    write_file(&src.join("big.bin"), &big);
    let (boot, blobs) = (t.path().join("boot"), t.path().join("blobs"));
    strata(&["image", "create", "-B", s(&boot), "-D", s(&blobs), s(&src)]);
    // amplify_io 2 MiB = the two chunks after each read.
    let cfg = config_with(t.path(), &blobs, &t.path().join("cache"), "blobcache", 2 << 20);
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let d = Daemon::start(
        &["--config", s(&cfg), "--bootstrap", s(&boot)],
        &mnt,
        &t.path().join("api.sock"),
    );
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(mnt.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 3 << 20).unwrap();
    assert_eq!(buf, big[3 << 20..(3 << 20) + 4096]);
    // Chunks 4 and 5 arrive without being read; never more than the 3.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = d.api("GET", "/api/v1/metrics/backend");
        let n = m["read_count"].as_u64().unwrap();
        assert!(n <= 3, "read-ahead fetched more than amplify_io allows: {m}");
        if n == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "read-ahead did not fetch chunks 4 and 5: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reading them now is served from the cache.
    let mut rest = vec![0u8; 2 << 20];
    f.read_exact_at(&mut rest, 4 << 20).unwrap();
    assert_eq!(rest, big[4 << 20..6 << 20]);
    let (_, m) = d.api("GET", "/api/v1/metrics/backend");
    assert!(m["read_count"].as_u64().unwrap() <= 5, "{m}");
    let (_, bc) = d.api("GET", "/api/v1/metrics/blobcache");
    assert!(bc["whole_hits"].as_u64().unwrap() >= 1, "{bc}");
}
