//! What every front end takes from the core instead of deciding for itself: the
//! denial body, whether checks may block, and which error a dead store is.
#![cfg(feature = "policy")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::Duration;

use floodgate::policy::{Engine, Request, Verdict, denial_body};

fn at(s: u64) -> Duration {
    Duration::from_secs(1_700_000_000 + s)
}

#[test]
fn one_denial_body_for_every_front_end() {
    let e = Engine::from_toml_str(
        r#"
        [lists]
        deny_ips = ["192.0.2.0/24"]
        [[rule]]
        name = "login \"x\""
        match = "POST /auth/login"
        quotas = ["1/min"]
        [[rule]]
        name = "token"
        match = "/oauth/token"
        key = "header:x-client-id"
        quotas = ["10/min"]
        anonymous = "deny"
        "#,
    )
    .unwrap();
    let req = |method, path, ip: &str| Request {
        method,
        path,
        client_ip: ip.parse().ok(),
        headers: &[],
        body: None,
    };
    let v = e
        .check_request_at(&req("POST", "/auth/login", "203.0.113.1"), at(0))
        .unwrap();
    assert_eq!(v.body(), "", "allowed: no body");
    let v = e
        .check_request_at(&req("POST", "/auth/login", "203.0.113.1"), at(0))
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&v.body()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "rate_limited", "retry_after": 60, "rule": "login \"x\""})
    );
    let v = e
        .check_request_at(&req("GET", "/oauth/token", "203.0.113.1"), at(0))
        .unwrap();
    assert_eq!(v.body(), r#"{"error":"unauthorized","rule":"token"}"#);
    let v = e
        .check_request_at(&req("GET", "/", "192.0.2.1"), at(0))
        .unwrap();
    assert_eq!(v.body(), r#"{"error":"forbidden"}"#);
    assert_eq!(
        denial_body(400, Duration::ZERO, None),
        r#"{"error":"bad_request"}"#
    );
    assert_eq!(
        denial_body(429, Duration::from_millis(1), Some("r")),
        r#"{"error":"rate_limited","retry_after":1,"rule":"r"}"#
    );
    assert_eq!(Verdict::FIELDS.len(), 13);
}

#[test]
fn denial_bodies_are_the_json_serde_would_write() {
    let names = [
        "login",
        "a\"b",
        "back\\slash",
        "tab\tnew\nline\r",
        "\u{1}\u{1f}\u{7f}",
        "é ü 😀",
        "\u{2028}",
        "",
        "{\"x\":1}",
    ];
    for status in [429, 401, 403, 404, 400] {
        for rule in names.iter().map(|n| Some(*n)).chain([None]) {
            for ms in [0, 1, 999, 1000, 1001, 86_400_000] {
                let retry = Duration::from_millis(ms);
                let want = match status {
                    // Whole seconds, rounded up, at least 1.
                    429 => serde_json::json!({"error": "rate_limited",
                        "retry_after": ms.div_ceil(1000).max(1), "rule": rule}),
                    401 => serde_json::json!({"error": "unauthorized", "rule": rule}),
                    400 => serde_json::json!({"error": "bad_request"}),
                    _ => serde_json::json!({"error": "forbidden"}),
                };
                let body = denial_body(status, retry, rule);
                let got: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(got, want, "{status} {rule:?} {ms}");
                // Byte for byte what serde_json writes (it escapes the same set).
                assert_eq!(body, want.to_string(), "{status} {rule:?} {ms}");
            }
        }
    }
}

#[test]
fn memory_engines_never_block() {
    assert!(!Engine::from_toml_str("").unwrap().may_block());
}

#[cfg(feature = "redis")]
#[test]
fn a_redis_store_may_block_and_an_unreachable_one_is_store_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let policy = |check: bool| {
        format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{port}/\"\ncheck_on_start = {check}\n\
             connect_timeout_ms = 200\n[[rule]]\nname = \"a\"\nmatch = \"/**\"\nquotas = [\"1/s\"]\n"
        )
    };
    let err = Engine::from_toml_str(&policy(true)).unwrap_err();
    assert_eq!(err.kind(), floodgate::ErrorKind::StoreUnavailable, "{err}");
    let e = Engine::from_toml_str(&policy(false)).unwrap();
    assert!(e.may_block());
}

#[test]
fn pk_is_the_same_in_every_process_with_the_same_policy() {
    let policy = "[[rule]]\nname = \"a\"\nmatch = \"/**\"\nquotas = [\"100/min\"]\n";
    let pk = |text: &str| {
        let e = Engine::from_toml_str(text).unwrap();
        let r = Request {
            method: "GET",
            path: "/",
            client_ip: "203.0.113.9".parse().ok(),
            headers: &[],
            body: None,
        };
        let v = e.check_request_at(&r, at(0)).unwrap();
        let value = v
            .headers
            .iter()
            .find(|(n, _)| *n == "RateLimit")
            .unwrap()
            .1
            .clone();
        value.split_once(";pk=").unwrap().1.to_string()
    };
    // Two engines stand for two worker processes: each builds its own seeds.
    assert_eq!(pk(policy), pk(policy));
    assert_ne!(pk(policy), pk(&policy.replace("100/min", "101/min")));
}

#[test]
fn the_engine_lists_the_headers_it_reads() {
    let e = Engine::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy.toml"
    ))
    .unwrap();
    let mut got = e.request_headers().to_vec();
    got.sort();
    assert_eq!(
        got,
        [
            "authorization",
            "content-encoding",
            "content-type",
            "x-api-key",
            "x-client-id"
        ]
    );
    assert!(e.reads_header("X-Client-Id") && !e.reads_header("cookie"));
}

#[test]
fn owned_requests_decide_as_borrowed_ones() {
    use floodgate::policy::OwnedRequest;
    let policy = r#"
        [[rule]]
        name = "by-header"
        match = "/**"
        key = "header:x-user"
        quotas = ["2/min"]
        anonymous = "deny"
    "#;
    // Two engines with one seed: the same key gives the same `pk`.
    let owned_engine = Engine::from_toml_str(policy).unwrap().with_fixed_seed(7);
    let borrowed_engine = Engine::from_toml_str(policy).unwrap().with_fixed_seed(7);
    let err = OwnedRequest::new("GET", "/", Some("not-an-ip")).unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(err.to_string().contains("client_ip"), "{err}");
    // A few headers (the stack view) and many (the heap one).
    for filler in [0, 40] {
        let mut owned = OwnedRequest::new("GET", "/a", Some("::ffff:198.51.100.4")).unwrap();
        for i in 0..filler {
            owned.header(format!("x-filler-{i}"), "v");
        }
        owned.header("X-User", format!("u{filler}"));
        let pairs: Vec<(&str, &str)> = owned
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let borrowed = Request {
            method: "GET",
            path: "/a",
            client_ip: "198.51.100.4".parse().ok(),
            headers: &pairs,
            body: None,
        };
        for t in 0..3 {
            let a = owned_engine.check_owned(&owned, Some(at(t))).unwrap();
            let b: Verdict = borrowed_engine.check_request_at(&borrowed, at(t)).unwrap();
            assert_eq!(a, b, "{filler} headers, request {t}");
        }
    }
}
