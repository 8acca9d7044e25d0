//! `tests/c/vectors.h`, the shared test vectors as C data for the C harness, is
//! generated from `tests/vectors/*.json` and committed; this test fails if it is
//! stale. `FG_BLESS=1 cargo test -p floodgate-ffi --test vectors_header` rewrites it.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::path::PathBuf;

use fg_core::{Algorithm, Quota};
use serde_json::Value;

fn c_bytes(bytes: &[u8]) -> String {
    let mut s = String::from("\"");
    for b in bytes {
        let _ = write!(s, "\\x{b:02x}");
    }
    s.push('"');
    s
}

fn generate() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/* Generated from the JSON files in tests/vectors by ffi/tests/vectors_header.rs: do not edit.\n \
         * Regenerate: FG_BLESS=1 cargo test -p floodgate-ffi --test vectors_header */\n\
         #ifndef FG_VECTORS_H\n#define FG_VECTORS_H\n#include \"floodgate.h\"\n\n\
         typedef struct {\n  int op; /* 0 check, 1 peek, 2 reset */\n  uint64_t now_ns;\n  const char *key;\n  size_t key_len;\n  uint64_t cost;\n  \
         uint32_t expect_error; /* an FG_RESULT_*, or 0 */\n  fg_decision expect; /* for a reset, expect.allowed = whether the key was held */\n} fgv_step;\n\n\
         typedef struct {\n  const char *name;\n  fg_quota quotas[8];\n  size_t quota_count;\n  size_t max_key_bytes;\n  const fgv_step *steps;\n  size_t step_count;\n} fgv_vector;\n\n",
    );
    let mut vectors = Vec::new();
    for (n, file) in files.iter().enumerate() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let _ = writeln!(out, "static const fgv_step fgv_steps_{n}[] = {{");
        let steps = v["steps"].as_array().unwrap();
        for step in steps {
            let key: Vec<u8> = match step["key_hex"].as_str() {
                Some(hex) => (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect(),
                None => step["key"].as_str().unwrap().as_bytes().to_vec(),
            };
            let op = match step["op"].as_str().unwrap_or("check") {
                "check" => 0,
                "peek" => 1,
                "reset" => 2,
                other => panic!("unknown op {other}"),
            };
            let err = step["expect_error"].as_str().map_or("0".to_string(), |c| {
                format!("FG_RESULT_{}", c.to_uppercase())
            });
            let e = &step["expect"];
            let u = |f: &str| e[f].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "  {{{op}, {}ULL, {}, {}, {}ULL, {err}, {{{}, {}ULL, {}ULL, {}ULL, {}ULL, {}}}}},",
                step["now_ns"].as_u64().unwrap(),
                c_bytes(&key),
                key.len(),
                step["cost"].as_u64().unwrap_or(0),
                e["allowed"]
                    .as_bool()
                    .or(step["expect_reset"].as_bool())
                    .unwrap_or(false),
                u("limit"),
                u("remaining"),
                u("retry_after_ns"),
                u("reset_after_ns"),
                u("quota"),
            );
        }
        out.push_str("};\n\n");
        let quotas: Vec<String> = v["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                let alg: Algorithm = q["algorithm"].as_str().unwrap().parse().unwrap();
                let quota: Quota = q["quota"].as_str().unwrap().parse().unwrap();
                let quota = quota.with_algorithm(alg).unwrap();
                let c_alg = match alg {
                    Algorithm::Gcra => "FG_ALGORITHM_GCRA",
                    Algorithm::SlidingLog => "FG_ALGORITHM_SLIDING_LOG",
                    Algorithm::SlidingWindow => "FG_ALGORITHM_SLIDING_WINDOW",
                    Algorithm::FixedWindow => "FG_ALGORITHM_FIXED_WINDOW",
                    _ => panic!("unknown algorithm"),
                };
                format!(
                    "{{{c_alg}, {}ULL, {}ULL, {}ULL}}",
                    quota.rate(),
                    quota.period().as_nanos(),
                    quota.burst()
                )
            })
            .collect();
        vectors.push(format!(
            "  {{\"{}\", {{{}}}, {}, {}, fgv_steps_{n}, {}}},",
            v["name"].as_str().unwrap(),
            quotas.join(", "),
            quotas.len(),
            v["options"]["max_key_bytes"].as_u64().unwrap_or(0),
            steps.len()
        ));
    }
    let _ = writeln!(
        out,
        "static const fgv_vector fgv_vectors[] = {{\n{}\n}};\n#define FGV_VECTOR_COUNT {}\n\n#endif",
        vectors.join("\n"),
        vectors.len()
    );
    out
}

#[test]
fn c_vectors_header_is_fresh() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/c/vectors.h");
    let generated = generate();
    if std::env::var_os("FG_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "tests/c/vectors.h is stale: run FG_BLESS=1 cargo test -p floodgate-ffi --test vectors_header"
    );
}
