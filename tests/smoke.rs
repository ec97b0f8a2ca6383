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
    } else {
        assert!(v["fuse_files_read"].is_null());
    }
}
