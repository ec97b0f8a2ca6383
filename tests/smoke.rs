//! Tier 2: the binary runs its embedded demo end to end (tier 3 part: as root it also mounts
//! the image with stratad's FUSE server and reads it through the kernel).
mod common;

#[test]
fn demo_runs_and_reads_everything_back() {
    let out = common::strata(&["demo", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("demo prints JSON");
    assert_eq!(v["files_read"], 7);
    assert!(v["verified_chunks"].as_u64().unwrap() >= 6);
    assert_eq!(v["deduplicated"], 1, "a.txt and b.txt share their chunk");
    if common::require_root("demo_runs_and_reads_everything_back (FUSE step)", "FUSE mount") {
        assert_eq!(v["fuse_files_read"], 7, "read through the kernel: {v}");
        // The access log kept the files in the order the demo read them (empty files have no
        // read), each with the ranges of its first touch per chunk.
        let order: Vec<&str> = v["first_touch"]
            .as_array()
            .expect("first_touch list")
            .iter()
            .map(|x| x.as_str().unwrap().split(' ').next().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "/etc/hostname",
                "/etc/motd",
                "/usr/bin/hello",
                "/usr/lib/libbig.so",
                "/usr/share/doc/a.txt",
                "/usr/share/doc/b.txt"
            ],
            "{v}"
        );
    } else {
        assert!(v["fuse_files_read"].is_null());
    }
}

/// Scripts written for nydus-image run unchanged against strata invoked under that name.
#[test]
fn invoked_as_nydus_image_it_takes_nydus_image_arguments() {
    let t = tempfile::tempdir().unwrap();
    let bin = t.path().join("nydus-image");
    std::os::unix::fs::symlink(common::strata_bin(), &bin).unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("a/f"), b"hello").unwrap();
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new(&bin).args(args).current_dir(t.path()).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    };
    run(&[
        "create",
        "--fs-version",
        "6",
        "--compressor",
        "lz4_block",
        "--digester",
        "sha256",
        "-B",
        "boot",
        "-D",
        "blobs",
        "src",
    ]);
    run(&["check", "-B", "boot", "-D", "blobs", "--output-json", "check.json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("check.json")).unwrap()).unwrap();
    assert_eq!(v["files"], 1);
    assert_eq!(v["chunks_verified"], 1);
    // Without the name, `create` is not a strata command.
    let out = std::process::Command::new(common::strata_bin())
        .args(["create", "-B", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
