//! Regression tests for the attacks of issue 12, each written as the attacker sent
//! it and decided through `check_request_at`. Each failed before its fix.
#![cfg(feature = "policy")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::IpAddr;
use std::time::Duration;

use floodgate::policy::{Engine, Reason, Request, TokenProblem, Verdict};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const NOW: u64 = 1_700_000_000;

fn at(ms: u64) -> Duration {
    Duration::from_secs(NOW) + Duration::from_millis(ms)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn engine(policy: &str) -> Engine {
    Engine::from_toml_str(policy).unwrap_or_else(|e| panic!("{e}"))
}

fn example() -> Engine {
    Engine::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy.toml"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn req<'a>(
    method: &'a str,
    path: &'a str,
    from: &str,
    headers: &'a [(&'a str, &'a str)],
) -> Request<'a> {
    Request {
        method,
        path,
        client_ip: ip(from),
        headers,
        body: None,
    }
}

fn check(e: &Engine, r: &Request<'_>, ms: u64) -> Verdict {
    e.check_request_at(r, at(ms))
        .unwrap_or_else(|err| panic!("{err}"))
}

/// `policy` under a `[jwt]` section that verifies HS256 tokens signed with the
/// test secret, without a verification budget.
fn with_hs_jwt(policy: &str) -> String {
    format!(
        "[jwt]\nalgorithms = [\"HS256\"]\nsecret_file = \"tests/keys/hs_secret.txt\"\nverify_limit = \"off\"\n{policy}"
    )
}

/// A token signed with the test HMAC secret (`tests/keys/hs_secret.txt`).
fn hs_token(claims: serde_json::Value) -> String {
    let secret = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/keys/hs_secret.txt"
    ))
    .unwrap();
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.trim_end().as_bytes()),
    )
    .unwrap()
}

fn rsa() -> EncodingKey {
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/keys/rsa_private.pem"
    ))
    .unwrap();
    EncodingKey::from_rsa_pem(&pem).unwrap()
}

/// A token the example policy accepts (its JWKS holds this key's public half).
fn example_token(claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("main".into());
    encode(&header, &claims, &rsa()).unwrap()
}

fn example_claims(sub: Option<serde_json::Value>) -> serde_json::Value {
    let mut c = json!({
        "iss": "https://auth.example.com",
        "aud": "api.example.com",
        "exp": NOW + 3600,
        "plan": "free",
    });
    if let Some(sub) = sub {
        c["sub"] = sub;
    }
    c
}

// ---- 1. Bans that anyone can aim ------------------------------------------------

#[test]
fn an_api_key_holding_a_victims_ip_cannot_ban_that_ip() {
    let e = example();
    let victim = "198.51.100.99";
    // The attacker hammers /api with X-Api-Key: <victim IP>, far past every limit.
    let headers = [("x-api-key", victim)];
    for i in 0..400 {
        check(&e, &req("GET", "/api/items", "203.0.113.66", &headers), i);
    }
    // The victim is not banned anywhere: not on /api, not on login.
    let v = check(&e, &req("GET", "/api/items", victim, &[]), 500);
    assert!(v.allowed, "{v:?}");
    let v = check(&e, &req("POST", "/auth/login", victim, &[]), 600);
    assert!(v.allowed, "{v:?}");
}

#[test]
fn a_header_value_cannot_ban_the_verified_user_of_that_name() {
    let e = engine(&with_hs_jwt(
        r#"
        [ban]
        after = 1
        within = "1m"
        duration = "1h"
        [[rule]]
        name = "uploads"
        match = "/upload"
        key = "header:x-upload-id"
        quotas = ["1/min"]
        [[rule]]
        name = "users"
        match = "/api/**"
        key = "claim:sub"
        quotas = ["100/min"]
        "#,
    ));
    let attacker = [("x-upload-id", "alice")];
    for i in 0..5 {
        check(&e, &req("POST", "/upload", "203.0.113.5", &attacker), i);
    }
    let token = hs_token(json!({"sub": "alice", "exp": NOW + 3600}));
    let auth = format!("Bearer {token}");
    let h = [("authorization", auth.as_str())];
    let v = check(&e, &req("GET", "/api/me", "198.51.100.1", &h), 10);
    assert!(v.allowed && v.authenticated, "{v:?}");
    assert_eq!(v.rule.as_deref(), Some("users"));
}

#[test]
fn a_client_wide_ban_holds_on_every_rule_even_with_an_api_key() {
    let e = example();
    let me = "203.0.113.7";
    // Past the login's per-address limit (5/min) again and again: banned.
    for i in 0..10 {
        check(&e, &req("POST", "/auth/login", me, &[]), i * 100);
    }
    for headers in [
        &[][..],
        &[("x-api-key", "")][..],
        &[("x-api-key", "k_partner_1")][..],
    ] {
        let v = check(&e, &req("GET", "/api/items", me, headers), 2_000);
        assert_eq!(v.reason, Reason::Banned, "{headers:?}: {v:?}");
    }
    // The ban is scoped to the IP: another client is fine.
    assert!(check(&e, &req("GET", "/api/items", "203.0.113.8", &[]), 2_000).allowed);
}

#[test]
fn ban_scope_is_checked() {
    let err = Engine::from_toml_str(
        "[ban]\nafter = 1\nwithin = \"1m\"\nduration = \"1m\"\nscope = \"everyone\"\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("(line 5)")
            && err.to_string().contains("expected `rule` or `client`"),
        "{err}"
    );
}

// ---- 2. The path the framework routes --------------------------------------------

const LOGIN: &str = include_str!("../../tests/policies/attacks.toml");

#[test]
fn every_spelling_of_the_login_path_meets_the_login_rule() {
    let spellings = [
        "/auth/login",
        "/AUTH/LOGIN",
        "/Auth/Login?x=1",
        "http://api.example.com/auth/login",
        "https://h:8443/AUTH/login?next=/",
        "/auth%2Flogin",
        "/auth%2flogin",
        "//auth//login/",
        "/auth/./login",
        "/x/../auth/login",
        "/auth/%6cogin",
    ];
    for spelling in spellings {
        let e = engine(LOGIN);
        let from = "203.0.113.9";
        for i in 0..3 {
            assert!(check(&e, &req("POST", spelling, from, &[]), i).allowed);
        }
        let v = check(&e, &req("POST", spelling, from, &[]), 3);
        assert_eq!(v.status, 429, "{spelling}: {v:?}");
        // And the spellings share one bucket with the plain path.
        let v = check(&e, &req("POST", "/auth/login", from, &[]), 4);
        assert_eq!(v.status, 429, "{spelling}");
    }
}

#[test]
fn head_is_limited_by_the_get_rule() {
    let e = engine(LOGIN);
    let from = "203.0.113.10";
    assert!(check(&e, &req("GET", "/page", from, &[]), 0).allowed);
    assert!(check(&e, &req("HEAD", "/page", from, &[]), 1).allowed);
    assert!(check(&e, &req("head", "/page", from, &[]), 2).allowed);
    let v = check(&e, &req("HEAD", "/page", from, &[]), 3);
    assert_eq!(v.status, 429, "HEAD shares the GET rule's 3/min");
}

#[test]
fn case_sensitive_paths_on_request() {
    let e = engine(&format!("[settings]\ncase_sensitive_paths = true\n{LOGIN}"));
    let v = check(&e, &req("POST", "/AUTH/LOGIN", "203.0.113.11", &[]), 0);
    assert_eq!(v.reason, Reason::NoRule);
}

// ---- 4. Empty and random API keys ------------------------------------------------

const KEYED: &str = r#"
[ban]
after = 2
within = "10m"
duration = "15m"
scope = "client"

[[rule]]
name = "api-key"
match = "/api/**"
key = "api_key"
quotas = ["100/s"]

[[rule]]
name = "anonymous"
match = "/api/**"
unless_header = "x-api-key"
key = "ip"
quotas = ["2/min"]
"#;

#[test]
fn an_empty_api_key_is_no_api_key() {
    let e = engine(KEYED);
    let from = "203.0.113.20";
    let empty = [("x-api-key", "")];
    let blank = [("X-Api-Key", "   ")];
    let mut allowed = 0;
    for i in 0..40 {
        let h: &[(&str, &str)] = if i % 2 == 0 { &empty } else { &blank };
        let v = check(&e, &req("GET", "/api/items", from, h), i);
        assert_ne!(v.reason, Reason::NoRule, "{v:?}");
        allowed += u32::from(v.allowed);
    }
    assert_eq!(allowed, 2, "held to the per-IP rule");
}

#[test]
fn unverified_api_keys_do_not_buy_fresh_buckets() {
    let dir = std::env::temp_dir().join(format!("fg-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keys.txt"), "# valid keys\nk_good\n").unwrap();
    std::fs::write(
        dir.join("p.toml"),
        format!("[settings]\napi_keys_file = \"keys.txt\"\n{KEYED}"),
    )
    .unwrap();
    let e = Engine::from_path(dir.join("p.toml")).unwrap();
    // Read at load: the files can go now (no litter in the temp dir).
    std::fs::remove_dir_all(&dir).unwrap();
    let from = "203.0.113.21";
    let mut allowed = 0;
    for i in 0..300 {
        let k = format!("random-{i}");
        let h = [("x-api-key", k.as_str())];
        allowed += u32::from(check(&e, &req("GET", "/api/items", from, &h), i).allowed);
    }
    assert_eq!(allowed, 2, "random keys fall to the per-IP rule");
    let good = [("x-api-key", "k_good")];
    let v = check(&e, &req("GET", "/api/items", "203.0.113.22", &good), 400);
    assert_eq!(v.rule.as_deref(), Some("api-key"));
}

#[test]
fn check_config_warns_about_unlimited_requests() {
    assert!(engine("").warnings()[0].contains("no rules"));
    let w = engine(KEYED).warnings().join("\n");
    assert!(w.contains("no rule limits every request"), "{w}");
    assert!(
        w.contains("keyed by the API key, which nothing verifies"),
        "{w}"
    );
    let w = engine("[[rule]]\nname = \"a\"\nmatch = \"/api/*\"\nquotas = [\"1/s\"]\n")
        .warnings()
        .join("\n");
    assert!(w.contains("exactly one path segment"), "{w}");
    // A rule keyed by a header a client may leave out, and the same rule
    // refusing requests without it.
    let by_header = "[[rule]]\nname = \"login-user\"\nmatch = \"POST /login\"\nquotas = [\"5/hour\"]\n\
                     key = \"header:x-login-user\"\n[[rule]]\nname = \"all\"\nmatch = \"/**\"\n\
                     quotas = [\"100/min\"]\nkey = \"ip\"\n";
    let w = engine(by_header).warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("rule \"login-user\" is keyed by the \"x-login-user\" header")
            && w[0].contains("a request without it skips the rule"),
        "{w:?}"
    );
    let denying = by_header.replace(
        "key = \"header:x-login-user\"",
        "key = \"header:x-login-user\"\nanonymous = \"deny\"",
    );
    assert!(engine(&denying).warnings().is_empty());
    assert!(
        example().warnings().is_empty(),
        "{:?}",
        example().warnings()
    );
}

// ---- 5. IPv4-mapped IPv6 ----------------------------------------------------------

#[test]
fn ipv4_mapped_addresses_meet_the_ip_lists() {
    let e = engine(
        r#"
        [lists]
        deny_ips = ["192.0.2.0/24"]
        allow_ips = ["10.0.0.0/8"]
        [[rule]]
        name = "all"
        match = "/**"
        quotas = ["1/min"]
        "#,
    );
    let v = check(&e, &req("GET", "/", "::ffff:192.0.2.5", &[]), 0);
    assert_eq!(v.reason, Reason::DenyListed);
    let v = check(&e, &req("GET", "/", "::ffff:10.1.1.1", &[]), 0);
    assert_eq!(v.reason, Reason::AllowListed);
    // The mapped and plain spellings are one client.
    assert!(check(&e, &req("GET", "/", "203.0.113.1", &[]), 0).allowed);
    assert!(!check(&e, &req("GET", "/", "::ffff:203.0.113.1", &[]), 1).allowed);
}

// ---- 6. A verified token without the key claim -------------------------------------

#[test]
fn a_verified_token_without_sub_is_refused_not_unlimited() {
    let e = example();
    for sub in [None, Some(json!("")), Some(json!(null))] {
        let token = example_token(example_claims(sub.clone()));
        let auth = format!("Bearer {token}");
        let h = [("authorization", auth.as_str())];
        let v = check(&e, &req("GET", "/api/items", "203.0.113.30", &h), 0);
        assert_eq!(v.status, 401, "{sub:?}: {v:?}");
        assert_eq!(v.token_problem, Some(TokenProblem::MissingClaim));
    }
    // A `sub` that is not a string is no valid token at all: anonymous, and limited.
    let token = example_token(example_claims(Some(json!({"x": 1}))));
    let auth = format!("Bearer {token}");
    let h = [("authorization", auth.as_str())];
    let v = check(&e, &req("GET", "/api/items", "203.0.113.30", &h), 0);
    assert!(!v.authenticated && v.rule.is_some(), "{v:?}");
}

#[test]
fn missing_claim_ip_keys_by_address() {
    let e = engine(&with_hs_jwt(
        r#"
        [[rule]]
        name = "users"
        match = "/api/**"
        key = "claim:sub"
        missing_claim = "ip"
        quotas = ["2/min"]
        "#,
    ));
    let mut allowed = 0;
    for i in 0..10 {
        // A fresh token every time, none with a subject.
        let token = hs_token(json!({"exp": NOW + 3600, "n": i}));
        let auth = format!("Bearer {token}");
        let h = [("authorization", auth.as_str())];
        allowed += u32::from(check(&e, &req("GET", "/api/x", "203.0.113.31", &h), i).allowed);
    }
    assert_eq!(allowed, 2);
}

// ---- 7. Duplicate headers --------------------------------------------------------

#[test]
fn the_first_copy_of_a_repeated_header_is_the_one() {
    let e = example();
    // A deny-listed key followed by a junk copy: the first copy (what Starlette
    // reads) is deny-listed.
    let h = [("x-api-key", "sk_live_leaked_2024"), ("x-api-key", "junk")];
    let v = check(&e, &req("GET", "/api/items", "203.0.113.40", &h), 0);
    assert_eq!(v.reason, Reason::DenyListed);
    // A framework that joins repeated headers (Node, WSGI servers) sends "a, b".
    let h = [("x-api-key", "junk, sk_live_leaked_2024")];
    let v = check(&e, &req("GET", "/api/items", "203.0.113.40", &h), 0);
    assert_eq!(v.reason, Reason::DenyListed);
}

// ---- 8, 13. The verification budget -----------------------------------------------

const VERIFY: &str = r#"
[settings]
ipv6_prefix = 64
[jwt]
algorithms = ["HS256"]
secret_file = "tests/keys/hs_secret.txt"
verify_limit = "3/min"
[[rule]]
name = "all"
match = "/**"
quotas = ["1000/min"]
"#;

fn forged(i: u32) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": format!("u{i}"), "exp": NOW + 3600}),
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the-secret"),
    )
    .unwrap()
}

fn valid(sub: &str) -> String {
    hs_token(json!({"sub": sub, "exp": NOW + 3600}))
}

fn problem_for(e: &Engine, token: &str, from: &str) -> Option<TokenProblem> {
    let auth = format!("Bearer {token}");
    let h = [("authorization", auth.as_str())];
    check(e, &req("GET", "/", from, &h), 0).token_problem
}

#[test]
fn the_verify_budget_is_per_network_not_per_address() {
    let e = engine(VERIFY);
    let problems: Vec<_> = (0..6)
        .map(|i| problem_for(&e, &forged(i), &format!("2001:db8:1:2::{:x}", i + 1)))
        .collect();
    assert_eq!(&problems[..3], &[Some(TokenProblem::BadSignature); 3]);
    assert_eq!(&problems[3..], &[Some(TokenProblem::RateLimited); 3]);
}

#[test]
fn valid_tokens_do_not_spend_the_shared_budget() {
    let e = engine(VERIFY);
    let shared = "203.0.113.50";
    // One user behind a shared address signs in with many fresh tokens...
    for i in 0..20 {
        assert_eq!(problem_for(&e, &valid(&format!("user{i}")), shared), None);
    }
    // ... which leaves the whole budget for everyone else there.
    assert_eq!(
        problem_for(&e, &forged(1), shared),
        Some(TokenProblem::BadSignature)
    );
    assert_eq!(problem_for(&e, &valid("late"), shared), None);
}

/// Past its network's budget, a token not in the cache is checked by no one:
/// 429 until the budget has room, whatever `on_invalid` says. Never a 401 (a
/// client would drop a good token) and never anonymous (the app may accept
/// the token, and serve its subject on the anonymous quota).
#[test]
fn past_the_budget_an_unchecked_token_waits_with_429() {
    for on_invalid in ["anonymous", "reject"] {
        let e = engine(&VERIFY.replace(
            "verify_limit = \"3/min\"",
            &format!("verify_limit = \"3/min\"\non_invalid = \"{on_invalid}\""),
        ));
        let call = |token: &str, from: &str, ms: u64| {
            let auth = format!("Bearer {token}");
            let h = [("authorization", auth.as_str())];
            check(&e, &req("GET", "/", from, &h), ms)
        };
        let cached = valid("carol");
        assert!(call(&cached, "203.0.113.61", 0).authenticated);
        // An attacker spends the budget of the address it shares with bob.
        for i in 0..3 {
            let v = call(&forged(i), "203.0.113.60", 0);
            assert_eq!(v.token_problem, Some(TokenProblem::BadSignature));
            assert_eq!(v.status, if on_invalid == "reject" { 401 } else { 200 });
        }
        for token in [forged(3), valid("bob")] {
            let v = call(&token, "203.0.113.60", 1_000);
            assert_eq!(
                (v.allowed, v.status, v.reason, v.token_problem),
                (
                    false,
                    429,
                    Reason::RateLimited,
                    Some(TokenProblem::RateLimited)
                ),
                "{on_invalid}"
            );
            // 3/min: one more check 20 s after the first.
            assert_eq!(v.retry_after, Duration::from_secs(19), "{on_invalid}");
            assert_eq!(v.headers, [("Retry-After", "19".to_string())]);
            assert_eq!(
                v.body(),
                r#"{"error":"rate_limited","retry_after":19,"rule":null}"#
            );
            assert!(!v.authenticated && v.identity.is_none());
        }
        // A token verified before is never held up; bob's is checked once
        // the budget has room.
        assert!(call(&cached, "203.0.113.60", 1_000).authenticated);
        let v = call(&valid("bob"), "203.0.113.60", 20_000);
        assert!(v.allowed && v.authenticated, "{on_invalid}: {v:?}");
    }
}

#[test]
fn requests_without_an_address_have_their_own_budget() {
    let e = engine(VERIFY);
    let check_none = |token: &str| {
        let auth = format!("Bearer {token}");
        let h = [("authorization", auth.as_str())];
        let r = Request {
            method: "GET",
            path: "/",
            client_ip: None,
            headers: &h,
            body: None,
        };
        check(&e, &r, 0).token_problem
    };
    for i in 0..3 {
        assert_eq!(check_none(&forged(i)), Some(TokenProblem::BadSignature));
    }
    assert_eq!(check_none(&forged(9)), Some(TokenProblem::RateLimited));
    // "::" is an address like any other, not the no-address bucket.
    assert_eq!(
        problem_for(&e, &forged(10), "::"),
        Some(TokenProblem::BadSignature)
    );
}

// ---- 9. Bans cannot be flushed (see also ban.rs unit tests) ------------------------

#[test]
fn throwaway_bans_do_not_evict_an_active_one() {
    let e = engine(
        r#"
        [settings]
        max_keys = 640
        [ban]
        after = 1
        within = "1m"
        duration = "10m"
        [[rule]]
        name = "r"
        match = "/**"
        key = "header:x-user"
        quotas = ["1/min"]
        "#,
    );
    let banned = [("x-user", "mallory")];
    check(&e, &req("GET", "/", "203.0.113.1", &banned), 0);
    assert_eq!(
        check(&e, &req("GET", "/", "203.0.113.1", &banned), 1).reason,
        Reason::Banned
    );
    for i in 0..20_000u32 {
        let name = format!("throwaway-{i}");
        let h = [("x-user", name.as_str())];
        check(&e, &req("GET", "/", "203.0.113.1", &h), 100);
        check(&e, &req("GET", "/", "203.0.113.1", &h), 101);
    }
    let v = check(&e, &req("GET", "/", "203.0.113.1", &banned), 200);
    assert_eq!(v.reason, Reason::Banned, "{v:?}");
}

// ---- 12. Symmetric keys in a JWKS file ---------------------------------------------

#[test]
fn a_jwks_file_with_an_oct_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("fg-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("jwks.json"),
        r#"{"keys":[{"kty":"oct","k":"QQ","alg":"HS256","kid":"x"}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("p.toml"),
        "[jwt]\nalgorithms = [\"HS256\"]\njwks_file = \"jwks.json\"\n",
    )
    .unwrap();
    let err = Engine::from_path(dir.join("p.toml")).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.to_string().contains("symmetric"), "{err}");
}

// ---- 14, 15. Odd requests get answers ----------------------------------------------

#[test]
fn a_path_key_with_an_empty_path_is_a_verdict() {
    let e = engine("[[rule]]\nname = \"p\"\nmatch = \"/**\"\nkey = \"path\"\nquotas = [\"1/s\"]\n");
    for path in ["", "?x", "http://h"] {
        let v = check(&e, &req("GET", path, "203.0.113.1", &[]), 0);
        assert_eq!(v.identity.as_deref(), Some("/"), "{path:?}");
    }
}

#[test]
fn method_tokens_are_methods_and_oversized_tokens_are_malformed() {
    let e = example();
    for method in ["M-SEARCH", "VERSION-CONTROL", "PROPFIND"] {
        assert!(check(&e, &req(method, "/api/x", "203.0.113.1", &[]), 0).allowed);
    }
    for method in ["", "GET /", "G\u{e9}T"] {
        assert!(
            e.check_request_at(&req(method, "/", "203.0.113.1", &[]), at(0))
                .is_err()
        );
    }
    let huge = format!("Bearer {}", "a".repeat(100_000));
    let h = [("authorization", huge.as_str())];
    let v = check(&e, &req("GET", "/api/x", "203.0.113.1", &h), 0);
    assert_eq!(v.token_problem, Some(TokenProblem::Malformed));
}

// ---- A client the server can no longer name ---------------------------------------

/// A request without a client address (Node reports none once the client has
/// reset its connection, which an attacker does right after sending; an ASGI
/// server on a Unix socket has none) is charged on one key for all such
/// requests in IP-keyed rules, alone or beside other parts, and bans by
/// address hold for it: it was skipped, so its login attempts went unlimited.
#[test]
fn requests_without_a_client_address_share_one_key_and_are_limited() {
    let e = engine(
        "[[rule]]\nname = \"login\"\nmatch = \"POST /auth/login\"\nkey = \"ip\"\nquotas = [\"2/min\"]\n\
         [[rule]]\nname = \"per_route\"\nmatch = \"GET /api/**\"\nkey = \"{ip}|{route}\"\nquotas = [\"3/min\"]\n",
    );
    let nameless = |method, path| Request {
        method,
        path,
        client_ip: None,
        headers: &[],
        body: None,
    };
    let login: Vec<bool> = (0..5)
        .map(|i| check(&e, &nameless("POST", "/auth/login"), i).allowed)
        .collect();
    assert_eq!(login, [true, true, false, false, false]);
    let denied = check(&e, &nameless("POST", "/auth/login"), 10);
    assert_eq!(
        (denied.status, denied.rule.as_deref()),
        (429, Some("login"))
    );
    assert_eq!(denied.identity.as_deref(), Some("-"));
    let api: Vec<bool> = (0..5)
        .map(|i| check(&e, &nameless("GET", "/api/x"), i).allowed)
        .collect();
    assert_eq!(api, [true, true, true, false, false]);
    // Clients with an address keep their own quota.
    assert!(check(&e, &req("POST", "/auth/login", "203.0.113.1", &[]), 20).allowed);
}
