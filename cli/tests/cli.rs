//! Runs the built `floodgate` binary.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::process::Command;

fn floodgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bench_json_reports_a_consistent_run() {
    let out = floodgate(&[
        "bench",
        "--duration",
        "0.3",
        "--keys",
        "1000",
        "--threads",
        "2",
        "--json",
        "--quota",
        "50/s burst 5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v["checks"].as_u64().unwrap();
    assert!(checks > 1000, "{v}");
    assert_eq!(
        v["allowed"].as_u64().unwrap() + v["denied"].as_u64().unwrap(),
        checks
    );
    // 1000 keys x (5 burst + 50/s x 0.3 s) bounds what can be admitted.
    assert!(v["allowed"].as_u64().unwrap() <= 1000 * (5 + 16), "{v}");
    assert!(v["keys_held"].as_u64().unwrap() <= 1000);
    assert!(v["bytes_per_key"].as_f64().unwrap() > 0.0);
    assert!(v["latency_ns"]["p50"].as_u64().unwrap() <= v["latency_ns"]["p99"].as_u64().unwrap());
}

#[test]
fn bench_table_and_every_algorithm() {
    for algorithm in ["gcra", "sliding_log", "sliding_window", "fixed_window"] {
        let out = floodgate(&[
            "bench",
            "--duration",
            "0.2",
            "--keys",
            "100",
            "--threads",
            "1",
            "-q",
            "--algorithm",
            algorithm,
            "--quota",
            "10/s",
        ]);
        assert!(
            out.status.success(),
            "{algorithm}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        for row in [
            "checks/s",
            "latency p99",
            "allowed",
            "denied",
            "keys held",
            "B per key",
        ] {
            assert!(text.contains(row), "{algorithm}: no {row} in\n{text}");
        }
        assert!(text.contains(algorithm), "{text}");
    }
}

#[test]
fn bad_arguments_fail_clearly() {
    for (args, needle) in [
        (&["bench", "--quota", "ten/s"][..], "cannot parse quota"),
        (&["bench", "--algorithm", "leaky"][..], "unknown algorithm"),
        (&["bench", "--duration", "NaN"][..], "--duration"),
        (&["bench", "--threads", "0"][..], "--threads"),
        (
            &[
                "bench",
                "--duration",
                "0.1",
                "--cost",
                "99",
                "--quota",
                "5/s",
            ][..],
            "above the burst",
        ),
    ] {
        let out = floodgate(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
