//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same
//! property functions the cargo-fuzz targets run (`fuzz/src/lib.rs`), on stable:
//! every input a fuzzing run found interesting, and every past crash, stays a
//! regression test in CI.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    missing_docs,
    unsafe_code
)]

extern crate fg_core as floodgate_core;
extern crate floodgate as floodgate_ffi;

#[path = "../../fuzz/src/lib.rs"]
mod props;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = format!("{}/../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails its properties", path.display());
        count += 1;
    }
    assert!(count > 0, "{dir} holds no inputs");
}

#[test]
fn policy_corpus() {
    replay("policy", props::policy);
}

#[test]
fn check_request_corpus() {
    replay("check_request", props::check_request);
}

#[test]
fn quota_corpus() {
    replay("quota", props::quota);
}

#[test]
fn path_corpus() {
    replay("path", props::path);
}

#[test]
fn body_corpus() {
    replay("body", props::body);
}

#[test]
fn c_abi_corpus() {
    replay("c_abi", props::c_abi);
}
