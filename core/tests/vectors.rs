#![allow(clippy::indexing_slicing, clippy::unwrap_used)]
//! Runs every shared test vector in `tests/vectors/` against the core.

use std::path::PathBuf;
use std::time::Duration;

use floodgate::{Algorithm, Decision, Limiter, Quota};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

fn key_bytes(step: &Value) -> Vec<u8> {
    if let Some(hex) = step["key_hex"].as_str() {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex key"))
            .collect()
    } else {
        step["key"]
            .as_str()
            .expect("key or key_hex")
            .as_bytes()
            .to_vec()
    }
}

fn decision_json(d: &Decision) -> Value {
    serde_json::json!({
        "allowed": d.allowed,
        "limit": d.limit,
        "remaining": d.remaining,
        "retry_after_ns": d.retry_after.as_nanos() as u64,
        "reset_after_ns": d.reset_after.as_nanos() as u64,
        "quota": d.quota,
    })
}

fn build(vector: &Value) -> Limiter {
    let mut builder = Limiter::builder();
    for q in vector["quotas"].as_array().expect("quotas") {
        let quota: Quota = q["quota"]
            .as_str()
            .expect("quota string")
            .parse()
            .expect("valid quota");
        let algorithm: Algorithm = q["algorithm"]
            .as_str()
            .unwrap_or("gcra")
            .parse()
            .expect("algorithm");
        builder = builder.quota(
            quota
                .with_algorithm(algorithm)
                .expect("algorithm fits quota"),
        );
    }
    if let Some(max) = vector["options"]["max_key_bytes"].as_u64() {
        builder = builder.max_key_bytes(max as usize);
    }
    builder.build().expect("limiter")
}

fn run(vector: &Value) -> usize {
    let name = vector["name"].as_str().expect("name");
    let limiter = build(vector);
    let steps = vector["steps"].as_array().expect("steps");
    for (i, step) in steps.iter().enumerate() {
        let now = Duration::from_nanos(step["now_ns"].as_u64().expect("now_ns"));
        let key = key_bytes(step);
        let op = step["op"].as_str().unwrap_or("check");
        let got: Result<Value, floodgate::Error> = match op {
            "check" => limiter
                .check_at(&key, step["cost"].as_u64().expect("cost"), now)
                .map(|d| decision_json(&d)),
            "peek" => limiter.peek_at(&key, now).map(|d| decision_json(&d)),
            "reset" => limiter.reset(&key).map(Value::Bool),
            other => panic!("{name} step {i}: unknown op {other}"),
        };
        let want = if let Some(code) = step["expect_error"].as_str() {
            Err(code.to_string())
        } else if op == "reset" {
            Ok(step["expect_reset"].clone())
        } else {
            Ok(step["expect"].clone())
        };
        assert_eq!(
            got.map_err(|e| e.code().to_string()),
            want,
            "vector {name}, step {i}: {step}"
        );
    }
    steps.len()
}

#[test]
fn all_vectors_pass() {
    let mut files: Vec<_> = std::fs::read_dir(vectors_dir())
        .expect("tests/vectors")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the vector files, found {files:?}"
    );
    let mut steps = 0;
    for file in &files {
        let vector: Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("json");
        assert_eq!(
            vector["name"].as_str(),
            file.file_stem().and_then(|s| s.to_str()),
            "name matches the file"
        );
        steps += run(&vector);
    }
    assert!(steps >= 40, "only {steps} steps ran");
}
