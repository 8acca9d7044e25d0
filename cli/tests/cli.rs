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

fn root(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_config_accepts_the_example_and_names_errors() {
    let out = floodgate(&["check-config", &root("examples/policy.toml")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("warning:"), "{text}");
    for rule in [
        "login-ip",
        "login-user",
        "token",
        "api-user",
        "api-key",
        "anonymous",
    ] {
        assert!(text.contains(&format!("rule \"{rule}\"")), "{text}");
    }
    let dir = std::env::temp_dir().join(format!("floodgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"x\"\nmatch = \"/a\"\nquotas = [\"10/fortnight\"]\n",
    )
    .unwrap();
    let out = floodgate(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rule[0].quotas[0] (line 4)") && err.contains("unknown unit"),
        "{err}"
    );
    let open = dir.join("open.toml");
    std::fs::write(
        &open,
        "[[rule]]\nname = \"x\"\nmatch = \"/api/*\"\nquotas = [\"10/s\"]\n",
    )
    .unwrap();
    let out = floodgate(&["check-config", open.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("warning: no rule limits every request")
            && text.contains("exactly one path segment"),
        "{text}"
    );
}

#[test]
fn hmac_secret_from_the_environment() {
    let dir = std::env::temp_dir().join(format!("floodgate-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.toml");
    std::fs::write(
        &policy,
        "[jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"FG_TEST_SECRET\"\n",
    )
    .unwrap();
    let run = |secret: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        cmd.args(["check-config", policy.to_str().unwrap()])
            .env_remove("FG_TEST_SECRET");
        if let Some(s) = secret {
            cmd.env("FG_TEST_SECRET", s);
        }
        cmd.output().unwrap()
    };
    assert!(
        run(Some("0123456789abcdef0123456789abcdef"))
            .status
            .success()
    );
    let out = run(None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("FG_TEST_SECRET is not set"));
    let out = run(Some("short"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32 bytes"));
}

/// Replays `tests/traces/{name}.jsonl` through `config` and compares with the
/// reviewed `{name}.expected.jsonl`.
fn replay_matches(config: &str, name: &str, at_least: usize) {
    replay_from(config, name, at_least, &[]);
}

/// [`replay_matches`] with more arguments for `floodgate simulate`.
fn replay_from(config: &str, name: &str, at_least: usize, more: &[&str]) {
    let (config, trace) = (root(config), root(&format!("tests/traces/{name}.jsonl")));
    let mut args = vec!["simulate", "--config", &config, "--trace", &trace];
    args.extend_from_slice(more);
    let out = floodgate(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected =
        std::fs::read_to_string(root(&format!("tests/traces/{name}.expected.jsonl"))).unwrap();
    let got = String::from_utf8(out.stdout).unwrap();
    for (i, (g, e)) in got.lines().zip(expected.lines()).enumerate() {
        assert_eq!(g, e, "{name} line {}", i + 1);
    }
    assert_eq!(got.lines().count(), expected.lines().count());
    assert!(got.lines().count() >= at_least);
}

#[test]
fn simulate_reproduces_the_committed_trace() {
    replay_matches("examples/policy.toml", "example", 20);
}

/// Settlement and concurrency replayed: failed logins only, a parallel burst,
/// places in flight (settled, and crashed), the real cost.
#[test]
fn simulate_replays_settlement_and_concurrency() {
    replay_matches("tests/policies/lifecycle.toml", "lifecycle", 28);
}

/// Calendar quotas replayed across a month's end (UTC) and a day's end in
/// Paris, from 2026-01-31T22:00:00Z.
#[test]
fn simulate_crosses_calendar_boundaries() {
    replay_from(
        "tests/policies/calendar.toml",
        "calendar",
        13,
        &["--start-unix", "1769896800"],
    );
}

#[test]
fn simulate_rejects_bad_traces_with_the_line() {
    let dir = std::env::temp_dir().join(format!("floodgate-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.jsonl");
    std::fs::write(
        &trace,
        "{\"t_ms\": 0, \"method\": \"GET\", \"path\": \"/\"}\n{\"t_ms\": \"soon\"}\n",
    )
    .unwrap();
    let out = floodgate(&[
        "simulate",
        "--config",
        &root("examples/policy.toml"),
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("t.jsonl:2: t_ms"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_with_a_policy() {
    let out = floodgate(&[
        "bench",
        "--config",
        &root("examples/policy.toml"),
        "--duration",
        "0.3",
        "--keys",
        "50",
        "-q",
        "--threads",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("requests/s") && text.contains("denied"),
        "{text}"
    );
}

#[test]
fn bench_store_with_an_unreachable_redis_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let start = std::time::Instant::now();
    let out = floodgate(&["bench", "--store", &url, "--duration", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&port.to_string()) && err.contains("redis"),
        "{err}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn check_config_against_the_running_policy_prints_what_a_reload_keeps() {
    let dir = std::env::temp_dir().join(format!("floodgate-cli-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let old = root("examples/policy.toml");
    let text = std::fs::read_to_string(&old).unwrap();
    // The example's key files are relative to it: the new file sits beside it.
    let new =
        std::path::Path::new(&old).with_file_name(format!(".reload-{}.toml", std::process::id()));
    let changed = text.replacen("name = \"token\"", "name = \"oauth-token\"", 1);
    assert_ne!(changed, text);
    std::fs::write(&new, &changed).unwrap();
    let out = floodgate(&["check-config", "--against", &old, new.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("as a reload of"), "{stdout}");
    assert!(stdout.contains("added: oauth-token"), "{stdout}");
    assert!(stdout.contains("removed: token"), "{stdout}");
    assert!(stdout.contains("kept: login-ip"), "{stdout}");
    // A reload the engine would refuse: exit 1, and why.
    std::fs::write(&new, changed.replacen("[[rule]]", "[[rule]]\nbogus = 1", 1)).unwrap();
    let out = floodgate(&["check-config", "--against", &old, new.to_str().unwrap()]);
    assert!(!out.status.success());
    let _ = std::fs::remove_file(&new);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_compares_latency_with_and_without_reloads() {
    let out = floodgate(&[
        "bench",
        "--config",
        &root("benches/http/policy.toml"),
        "--reload-every",
        "5",
        "--duration",
        "0.8",
        "--threads",
        "1",
        "--quiet",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("without reloads") && text.contains("with reloads"),
        "{text}"
    );
    let reloads: u64 = text
        .split_whitespace()
        .zip(text.split_whitespace().skip(1))
        .find_map(|(n, w)| (w == "reloads,").then(|| n.replace(',', "").parse().ok())?)
        .unwrap_or(0);
    assert!(reloads > 0, "{text}");
}
