//! The request layer: JWT attacks, config errors, headers, bans, tiers, shadow rules,
//! lists, adaptive tightening, events and metrics.
#![cfg(feature = "policy")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use floodgate::policy::{Engine, EventKind, Reason, Request, TokenProblem, Verdict};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const NOW: u64 = 1_700_000_000;

fn at(secs: u64) -> Duration {
    Duration::from_secs(NOW + secs)
}

fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, &claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_file("rsa_private.pem")).unwrap()
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "iss": "https://auth.example.com", "aud": "api", "exp": NOW + 3600, "plan": "pro"})
}

/// A per-user rule keyed by the verified subject, and an anonymous per-IP rule.
const JWT_POLICY: &str = r#"
[jwt]
algorithms = ["RS256", "ES256", "HS256"]
issuer = "https://auth.example.com"
audience = "api"
leeway_s = 30
secret_file = "tests/keys/hs_secret.txt"
keys = [
  { kid = "rsa1", algorithm = "RS256", pem_file = "tests/keys/rsa_public.pem" },
  { kid = "ec1", algorithm = "ES256", pem_file = "tests/keys/ec_public.pem" },
]
verify_limit = "off"

[[rule]]
name = "user"
match = "/api/**"
quotas = ["100/min"]
key = "claim:sub"

[[rule]]
name = "anonymous"
match = "/api/**"
quotas = ["5/min"]
key = "ip"
"#;

fn engine(policy: &str) -> Engine {
    Engine::from_toml_str(policy).unwrap_or_else(|e| panic!("{e}"))
}

fn get<'a>(headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
    Request {
        method: "GET",
        path: "/api/items",
        client_ip: ip("203.0.113.7"),
        headers,
        body: None,
    }
}

fn with_token(engine: &Engine, token: &str, t: Duration) -> Verdict {
    let auth = format!("Bearer {token}");
    engine
        .check_request_at(&get(&[("Authorization", &auth)]), t)
        .unwrap()
}

/// The token was refused for `problem`, and the request fell to the per-IP rule.
fn assert_refused(v: &Verdict, problem: TokenProblem) {
    assert_eq!(v.token_problem, Some(problem), "{v:?}");
    assert!(!v.authenticated);
    assert_eq!(
        v.rule.as_deref(),
        Some("anonymous"),
        "an invalid token is anonymous: {v:?}"
    );
}

#[test]
fn a_valid_token_keys_by_its_subject() {
    let e = engine(JWT_POLICY);
    let v = with_token(
        &e,
        &sign(Algorithm::RS256, &rsa(), Some("rsa1"), claims("alice")),
        at(0),
    );
    assert!(v.allowed && v.authenticated, "{v:?}");
    assert_eq!(
        v.rule.as_deref(),
        Some("anonymous"),
        "the tighter of the two matching rules reports"
    );
    let es = EncodingKey::from_ec_pem(&key_file("ec_private.pem")).unwrap();
    let v = with_token(
        &e,
        &sign(Algorithm::ES256, &es, Some("ec1"), claims("bob")),
        at(0),
    );
    assert!(v.authenticated, "{v:?}");
    let hs = EncodingKey::from_secret(&key_file("hs_secret.txt"));
    let v = with_token(
        &e,
        &sign(Algorithm::HS256, &hs, None, claims("carol")),
        at(0),
    );
    assert!(v.authenticated, "{v:?}");
}

#[test]
fn attack_alg_none() {
    let e = engine(JWT_POLICY);
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            b64(json!({"alg": alg, "typ": "JWT"})),
            b64(claims("admin"))
        );
        assert_refused(&with_token(&e, &token, at(0)), TokenProblem::Malformed);
    }
}

#[test]
fn attack_hs256_signed_with_the_rsa_public_key() {
    // The classic confusion: the attacker uses the (public) RSA key as an HMAC secret.
    let public_pem = key_file("rsa_public.pem");
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        Some("rsa1"),
        claims("admin"),
    );
    let e = engine(JWT_POLICY);
    let v = with_token(&e, &forged, at(0));
    assert!(
        matches!(
            v.token_problem,
            Some(TokenProblem::UnknownKey | TokenProblem::BadSignature)
        ),
        "{v:?}"
    );
    assert!(!v.authenticated);
    // And with HS256 not allowed at all, it is refused before any key is tried.
    let rs_only = JWT_POLICY
        .replace(r#"["RS256", "ES256", "HS256"]"#, r#"["RS256", "ES256"]"#)
        .replace("secret_file = \"tests/keys/hs_secret.txt\"\n", "");
    let v = with_token(&engine(&rs_only), &forged, at(0));
    assert_refused(&v, TokenProblem::AlgorithmNotAllowed);
}

#[test]
fn attack_expired_and_not_yet_valid() {
    let e = engine(JWT_POLICY);
    let mut c = claims("alice");
    c["exp"] = json!(NOW - 31); // beyond the 30 s leeway
    assert_refused(
        &with_token(
            &e,
            &sign(Algorithm::RS256, &rsa(), Some("rsa1"), c.clone()),
            at(0),
        ),
        TokenProblem::Expired,
    );
    c["exp"] = json!(NOW - 29); // within the leeway
    assert!(with_token(&e, &sign(Algorithm::RS256, &rsa(), Some("rsa1"), c), at(0)).authenticated);
    let mut c = claims("alice");
    c["nbf"] = json!(NOW + 120);
    let token = sign(Algorithm::RS256, &rsa(), Some("rsa1"), c);
    assert_refused(&with_token(&e, &token, at(0)), TokenProblem::NotYetValid);
    assert!(
        with_token(&e, &token, at(100)).authenticated,
        "valid once nbf - leeway has passed"
    );
}

#[test]
fn a_cached_token_still_expires() {
    let e = engine(JWT_POLICY);
    let mut c = claims("alice");
    c["exp"] = json!(NOW + 60);
    let token = sign(Algorithm::RS256, &rsa(), Some("rsa1"), c);
    assert!(with_token(&e, &token, at(0)).authenticated);
    assert!(
        with_token(&e, &token, at(1)).authenticated,
        "served from the cache"
    );
    assert_refused(&with_token(&e, &token, at(91)), TokenProblem::Expired);
}

#[test]
fn attack_wrong_issuer_and_audience() {
    let e = engine(JWT_POLICY);
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.example.com");
    assert_refused(
        &with_token(&e, &sign(Algorithm::RS256, &rsa(), Some("rsa1"), c), at(0)),
        TokenProblem::WrongIssuer,
    );
    let mut c = claims("alice");
    c["aud"] = json!("other-api");
    assert_refused(
        &with_token(&e, &sign(Algorithm::RS256, &rsa(), Some("rsa1"), c), at(0)),
        TokenProblem::WrongAudience,
    );
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("iss");
    assert_refused(
        &with_token(&e, &sign(Algorithm::RS256, &rsa(), Some("rsa1"), c), at(0)),
        TokenProblem::MissingClaim,
    );
}

#[test]
fn attack_exp_as_a_string() {
    let e = engine(JWT_POLICY);
    // jsonwebtoken's own claim parser fails on some of these (reported as
    // malformed); our numeric check catches the rest. Either way: refused.
    for exp in [
        json!("99999999999"),
        json!(null),
        json!({"n": 1}),
        json!([NOW + 3600]),
        json!(true),
    ] {
        let mut c = claims("alice");
        c["exp"] = exp.clone();
        let v = with_token(&e, &sign(Algorithm::RS256, &rsa(), Some("rsa1"), c), at(0));
        assert!(!v.authenticated, "exp = {exp}: {v:?}");
        assert!(
            matches!(
                v.token_problem,
                Some(TokenProblem::BadTimeClaim | TokenProblem::Malformed)
            ),
            "exp = {exp}: {v:?}"
        );
        assert_eq!(v.rule.as_deref(), Some("anonymous"));
    }
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("exp");
    assert_refused(
        &with_token(&e, &sign(Algorithm::RS256, &rsa(), Some("rsa1"), c), at(0)),
        TokenProblem::MissingClaim,
    );
}

#[test]
fn attack_unknown_kid() {
    let e = engine(JWT_POLICY);
    let v = with_token(
        &e,
        &sign(
            Algorithm::RS256,
            &rsa(),
            Some("rsa-rotated-away"),
            claims("alice"),
        ),
        at(0),
    );
    assert_refused(&v, TokenProblem::UnknownKey);
    // An ES256 token claiming the RSA key's kid finds no ES256 key by that kid.
    let es = EncodingKey::from_ec_pem(&key_file("ec_private.pem")).unwrap();
    assert_refused(
        &with_token(
            &e,
            &sign(Algorithm::ES256, &es, Some("rsa1"), claims("alice")),
            at(0),
        ),
        TokenProblem::UnknownKey,
    );
}

#[test]
fn attack_tampered_payload() {
    let e = engine(JWT_POLICY);
    let token = sign(Algorithm::RS256, &rsa(), Some("rsa1"), claims("alice"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims("admin").to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    assert_refused(
        &with_token(&e, &tampered, at(0)),
        TokenProblem::BadSignature,
    );
    // A signature from another RSA key.
    let other = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        &parts[2][..parts[2].len() - 4]
    );
    assert!(!with_token(&e, &format!("{other}AAAA"), at(0)).authenticated);
}

#[test]
fn attack_a_fresh_forged_subject_on_every_request() {
    // Each request claims a new user; none verifies, so all count against the IP.
    let e = engine(JWT_POLICY);
    let fake = EncodingKey::from_secret(b"attacker-chosen-secret-0123456789abcdef");
    let mut allowed = 0;
    for i in 0..50 {
        let token = sign(Algorithm::HS256, &fake, None, claims(&format!("user{i}")));
        let v = with_token(&e, &token, at(0));
        assert!(!v.authenticated);
        allowed += u32::from(v.allowed);
    }
    assert_eq!(allowed, 5, "the per-IP rule (5/min) still limits the flood");
}

#[test]
fn verification_is_limited_per_ip() {
    let policy = JWT_POLICY.replace("verify_limit = \"off\"", "verify_limit = \"3/min\"");
    let e = engine(&policy);
    let fake = EncodingKey::from_secret(b"attacker-chosen-secret-0123456789abcdef");
    let problems: Vec<_> = (0..5)
        .map(|i| {
            with_token(
                &e,
                &sign(Algorithm::HS256, &fake, None, claims(&format!("u{i}"))),
                at(0),
            )
            .token_problem
        })
        .collect();
    assert_eq!(&problems[..3], &[Some(TokenProblem::BadSignature); 3]);
    assert_eq!(
        &problems[3..],
        &[Some(TokenProblem::RateLimited); 2],
        "not even verified"
    );
    // A cached valid token is unaffected by the limit.
    let good = sign(Algorithm::RS256, &rsa(), Some("rsa1"), claims("alice"));
    let other_ip = Request {
        client_ip: ip("198.51.100.1"),
        ..get(&[])
    };
    let auth = format!("Bearer {good}");
    let headers = [("authorization", auth.as_str())];
    assert!(
        e.check_request_at(
            &Request {
                headers: &headers,
                ..other_ip
            },
            at(0)
        )
        .unwrap()
        .authenticated
    );
}

#[test]
fn config_errors_name_the_place() {
    let cases = [
        (
            "[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquotas = [\"1/s\"]\nlimit = 3\n",
            "unknown field `limit`",
            Some(5),
        ),
        (
            "[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquotas = [\"1/s\", \"ten/min\"]\n",
            "rule[0].quotas[1]",
            Some(4),
        ),
        (
            "[[rule]]\nname = \"a\"\nmatch = \"/x/**/y\"\nquotas = [\"1/s\"]\n",
            "rule[0].match",
            Some(3),
        ),
        (
            "[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquotas = [\"1/s\"]\nkey = \"cookie\"\n",
            "rule[0].key",
            Some(5),
        ),
        (
            "[jwt]\nalgorithms = [\"RS256\"]\nkeys = [{ algorithm = \"RS256\", pem_file = \"no/such.pem\" }]\n",
            "jwt.keys[0].pem_file",
            Some(3),
        ),
        ("[jwt]\nalgorithms = [\"none\"]\n", "never allowed", Some(2)),
        (
            "[jwt]\nalgorithms = [\"HS256\"]\nsecret_env = \"FLOODGATE_SURELY_UNSET_VAR\"\n",
            "is not set",
            Some(3),
        ),
        (
            "[lists]\ndeny_ips = [\"10.0.0.0/33\"]\n",
            "lists.deny_ips[0]",
            Some(2),
        ),
        (
            "[ban]\nafter = 3\nwithin = \"1 fortnight\"\nduration = \"1m\"\n",
            "ban.within",
            Some(3),
        ),
        (
            "[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquotas = [\"1/s\"]\nkey = \"claim:sub\"\n",
            "no [jwt] section",
            Some(5),
        ),
        (
            "[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquotas = [\"5/s\"]\ncost = 6\n",
            "above the burst",
            Some(5),
        ),
        (
            "[settings]\nheaders = \"draft-99\"\n",
            "unknown variant `draft-99`, expected one of `draft-10`, `draft10`, `ietf`",
            Some(2),
        ),
        (
            "[store]\nkind = \"memcached\"\n",
            "unknown variant `memcached`, expected one of `memory`, `redis`, `shared_memory`",
            Some(2),
        ),
        (
            "[store]\nfail_mode = \"maybe\"\n",
            "expected one of `open`, `closed`, `local`",
            Some(2),
        ),
        (
            "[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquotas = [\"1/s\"]\nfail_mode = \"later\"\n",
            "unknown variant `later`",
            Some(5),
        ),
        ("[[rule]\nname = 1", "", Some(1)),
    ];
    for (policy, needle, line) in cases {
        let err = Engine::from_toml_str(policy).unwrap_err();
        let floodgate::Error::InvalidConfig { line: got, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(err.to_string().contains(needle), "{policy:?}: {err}");
        assert_eq!(*got, line, "{policy:?}: {err}");
        assert_eq!(err.code(), "invalid_config");
    }
    let err =
        Engine::from_json_str(r#"{"rule": [{"name": "a", "match": "/x", "quotas": ["1/x"]}]}"#)
            .unwrap_err();
    assert!(err.to_string().contains("rule[0].quotas[0]"), "{err}");
}

fn login_policy(extra: &str) -> Engine {
    engine(&format!(
        "{extra}\n[[rule]]\nname = \"login\"\nmatch = \"POST /auth/login\"\nquotas = [\"3/min\"]\nalgorithm = \"sliding_log\"\nkey = \"ip\"\n"
    ))
}

fn login(e: &Engine, from: &str, t: Duration) -> Verdict {
    e.check_request_at(
        &Request {
            method: "POST",
            path: "/auth/login",
            client_ip: ip(from),
            headers: &[],
            body: None,
        },
        t,
    )
    .unwrap()
}

#[test]
fn five_charged_rules_are_all_listed_and_an_ipv6_client_is_keyed_by_its_network() {
    // More charged rules than the request path keeps on the stack (4): the
    // policy list is still every rule's, in rule order. Keyed by "ip", an IPv6
    // client is its /64 (the settings' default prefix), written as text. Each
    // GCRA quota's window is its whole minute (99/min once read w=61).
    let rules: String = (1..=5)
        .map(|i| format!("[[rule]]\nname = \"r{i}\"\nmatch = \"/**\"\nquotas = [\"{}/min\"]\nkey = \"ip\"\n\n", 100 - i))
        .collect();
    let e = engine(&rules);
    let v = e
        .check_request_at(
            &Request {
                method: "GET",
                path: "/items",
                client_ip: ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
                headers: &[],
                body: None,
            },
            at(0),
        )
        .unwrap();
    let policy = v.headers.iter().find(|(n, _)| *n == "RateLimit-Policy");
    assert_eq!(
        policy.map(|(_, v)| v.as_str()),
        Some(
            "\"r1\";q=99;w=60, \"r2\";q=98;w=60, \"r3\";q=97;w=60, \"r4\";q=96;w=60, \"r5\";q=95;w=60"
        )
    );
    assert_eq!(v.rule.as_deref(), Some("r5"), "the fewest left decides");
    assert_eq!(v.identity.as_deref(), Some("2001:db8:1:2::"));
}

#[test]
fn ratelimit_policy_lists_every_applying_quota_and_ratelimit_the_deciding_one() {
    // Two rules meet the login route: a per-IP rule with two quotas and a
    // catch-all. Every response, allowed or denied, lists the same four items
    // in rule order; RateLimit names the quota that decided.
    let e = engine(
        "[[rule]]\nname = \"login\"\nmatch = \"POST /auth/login\"\nquotas = [\"3/min\", \"10/h\"]\nalgorithm = \"fixed_window\"\n\n\
         [[rule]]\nname = \"all\"\nmatch = \"/**\"\nquotas = [\"100/min\"]\nalgorithm = \"fixed_window\"\n\n\
         [[rule]]\nname = \"shadow\"\nmatch = \"/**\"\nquotas = [\"1/min\"]\nshadow = true\n",
    );
    let list = "\"login.1\";q=3;w=60, \"login.2\";q=10;w=3600, \"all\";q=100;w=60";
    let header = |v: &Verdict, name: &str| {
        v.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    for i in 0..5 {
        let v = login(&e, "203.0.113.7", at(i));
        assert_eq!(header(&v, "RateLimit-Policy"), list, "request {i}");
        assert!(
            header(&v, "RateLimit").starts_with("\"login.1\";"),
            "request {i}: {:?}",
            v.headers
        );
        assert_eq!(v.allowed, i < 3);
    }
    // Another path meets only the catch-all.
    let v = e
        .check_request_at(
            &Request {
                method: "GET",
                path: "/items",
                client_ip: ip("203.0.113.7"),
                headers: &[],
                body: None,
            },
            at(10),
        )
        .unwrap();
    assert_eq!(header(&v, "RateLimit-Policy"), "\"all\";q=100;w=60");
    // A rule whose quotas would be named like another rule is refused.
    let err = Engine::from_toml_str(
        "[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquotas = [\"1/s\", \"9/h\"]\n\n\
         [[rule]]\nname = \"a.2\"\nmatch = \"/y\"\nquotas = [\"1/s\"]\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("rename one"), "{err}");
}

#[test]
fn headers_and_retry_after() {
    let e = login_policy("");
    let v = login(&e, "203.0.113.7", at(0));
    assert_eq!(
        v.headers[0],
        ("RateLimit-Policy", "\"login\";q=3;w=60".to_string())
    );
    assert!(
        v.headers[1].1.starts_with("\"login\";r=2;t=60;pk=:"),
        "{:?}",
        v.headers
    );
    assert!(
        !v.headers[1].1.contains("203.0.113.7"),
        "pk never shows the raw key"
    );
    login(&e, "203.0.113.7", at(10));
    login(&e, "203.0.113.7", at(20));
    let v = login(
        &e,
        "203.0.113.7",
        Duration::from_millis(NOW * 1000 + 20_500),
    );
    assert_eq!((v.status, v.reason), (429, Reason::RateLimited));
    // The first entry leaves the window at 60 s: 39.5 s away, announced as 40.
    assert_eq!(v.retry_after, Duration::from_millis(39_500));
    assert!(
        v.headers.contains(&("Retry-After", "40".to_string())),
        "{:?}",
        v.headers
    );
    assert!(
        !login(
            &e,
            "203.0.113.7",
            Duration::from_millis(NOW * 1000 + 59_999)
        )
        .allowed
    );
    assert!(
        login(&e, "203.0.113.7", at(60)).allowed,
        "admitted at Retry-After"
    );
    for (style, name) in [
        ("draft-6", "RateLimit-Limit"),
        ("legacy", "X-RateLimit-Limit"),
    ] {
        let e = login_policy(&format!("[settings]\nheaders = \"{style}\"\n"));
        assert_eq!(
            login(&e, "203.0.113.7", at(0)).headers[0],
            (name, "3".to_string())
        );
    }
}

#[test]
fn bans_block_repeat_offenders_and_escalate() {
    let e = login_policy(
        "[ban]\nafter = 2\nwithin = \"1m\"\nduration = \"10m\"\nescalate = 3.0\nmax_duration = \"1h\"\nstatus = 403\n",
    );
    for t in 0..3 {
        assert!(login(&e, "203.0.113.7", at(t)).allowed);
    }
    assert_eq!(login(&e, "203.0.113.7", at(3)).reason, Reason::RateLimited);
    let v = login(&e, "203.0.113.7", at(4));
    assert_eq!(
        (v.status, v.reason),
        (403, Reason::Banned),
        "second denial within a minute bans"
    );
    assert_eq!(v.retry_after, Duration::from_secs(600));
    let v = login(&e, "203.0.113.7", at(300));
    assert_eq!((v.status, v.retry_after), (403, Duration::from_secs(304)));
    assert!(v.headers.contains(&("Retry-After", "304".to_string())));
    assert!(
        login(&e, "198.51.100.1", at(300)).allowed,
        "only that client"
    );
    assert!(login(&e, "203.0.113.7", at(604)).allowed, "the ban ends");
    for t in 605..607 {
        login(&e, "203.0.113.7", at(t));
    }
    login(&e, "203.0.113.7", at(607));
    let v = login(&e, "203.0.113.7", at(608));
    assert_eq!(
        v.retry_after,
        Duration::from_secs(1800),
        "the second ban is 3x longer"
    );
    assert!(
        e.metrics().contains("floodgate_bans_total 2"),
        "{}",
        e.metrics()
    );
}

#[test]
fn tiers_follow_the_verified_plan() {
    let policy = JWT_POLICY.replace(
        "[[rule]]\nname = \"user\"\nmatch = \"/api/**\"\nquotas = [\"100/min\"]\nkey = \"claim:sub\"\n",
        "[[rule]]\nname = \"user\"\nmatch = \"/api/**\"\nkey = \"claim:sub\"\n[rule.tiers]\nclaim = \"plan\"\ndefault = \"free\"\nquotas = { free = [\"2/min\"], pro = [\"4/min\"] }\n",
    );
    let e = engine(&policy.replace(
        "quotas = [\"5/min\"]\nkey = \"ip\"",
        "quotas = [\"1000/min\"]\nkey = \"ip\"",
    ));
    let count = |c: serde_json::Value| {
        let token = sign(Algorithm::RS256, &rsa(), Some("rsa1"), c);
        (0..10)
            .filter(|_| with_token(&e, &token, at(0)).allowed)
            .count()
    };
    assert_eq!(count(claims("pro-user")), 4);
    let mut free = claims("free-user");
    free["plan"] = json!("free");
    assert_eq!(count(free), 2);
    let mut unknown = claims("odd-user");
    unknown["plan"] = json!("platinum");
    assert_eq!(count(unknown), 2, "an unknown plan gets the default tier");
}

#[test]
fn shadow_rules_count_but_never_deny() {
    let e = engine(
        "[[rule]]\nname = \"trial\"\nmatch = \"/api/**\"\nquotas = [\"2/min\"]\nshadow = true\n\n[[rule]]\nname = \"real\"\nmatch = \"/api/**\"\nquotas = [\"100/min\"]\n",
    );
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    e.set_event_sink(move |ev| sink.lock().unwrap().push(ev.kind));
    for _ in 0..5 {
        assert!(e.check_request_at(&get(&[]), at(0)).unwrap().allowed);
    }
    assert_eq!(
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|k| **k == EventKind::ShadowDenied)
            .count(),
        3
    );
    let m = e.metrics();
    assert!(
        m.contains("floodgate_requests_total{rule=\"trial\",outcome=\"shadow_denied\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("floodgate_requests_total{rule=\"real\",outcome=\"allowed\"} 5"),
        "{m}"
    );
}

#[test]
fn allow_and_deny_lists() {
    let e = login_policy(
        "[lists]\nallow_ips = [\"10.0.0.0/8\"]\ndeny_ips = [\"192.0.2.0/24\", \"2001:db8::/32\"]\ndeny_api_keys = [\"leaked\"]\nallow_api_keys = [\"partner\"]\n",
    );
    for _ in 0..10 {
        assert_eq!(login(&e, "10.1.2.3", at(0)).reason, Reason::AllowListed);
    }
    assert_eq!(login(&e, "192.0.2.77", at(0)).status, 403);
    assert_eq!(login(&e, "2001:db8::1", at(0)).reason, Reason::DenyListed);
    let leaked = [("X-Api-Key", "leaked")];
    let v = e
        .check_request_at(
            &Request {
                method: "POST",
                path: "/auth/login",
                client_ip: ip("203.0.113.9"),
                headers: &leaked,
                body: None,
            },
            at(0),
        )
        .unwrap();
    assert_eq!(v.reason, Reason::DenyListed);
    let partner = [("x-api-key", "partner")];
    let v = e
        .check_request_at(
            &Request {
                method: "POST",
                path: "/auth/login",
                client_ip: ip("203.0.113.9"),
                headers: &partner,
                body: None,
            },
            at(0),
        )
        .unwrap();
    assert_eq!(v.reason, Reason::AllowListed);
}

#[test]
fn rules_needing_identity_skip_or_answer_401() {
    let e = engine(
        "[[rule]]\nname = \"keyed\"\nmatch = \"/api/**\"\nquotas = [\"10/min\"]\nkey = \"api_key\"\nanonymous = \"deny\"\n",
    );
    let v = e.check_request_at(&get(&[]), at(0)).unwrap();
    assert_eq!((v.status, v.reason), (401, Reason::Unauthorized));
    assert!(v.headers.iter().any(|(n, _)| *n == "WWW-Authenticate"));
    let v = e
        .check_request_at(&get(&[("x-api-key", "k1")]), at(0))
        .unwrap();
    assert!(v.allowed);
    assert_eq!(v.identity.as_deref(), Some("k1"));
}

#[test]
fn several_rules_are_charged_all_or_nothing() {
    // Both match; the per-route rule (2/min) denies the third request, and the
    // per-IP rule (3/min) must not have been charged for it.
    let e = engine(
        "[[rule]]\nname = \"ip\"\nmatch = \"/**\"\nquotas = [\"3/min\"]\n\n[[rule]]\nname = \"search\"\nmatch = \"GET /search\"\nquotas = [\"2/min\"]\n",
    );
    let search = Request {
        method: "GET",
        path: "/search",
        client_ip: ip("203.0.113.7"),
        headers: &[],
        body: None,
    };
    let other = Request {
        path: "/home",
        ..search
    };
    assert!(e.check_request_at(&search, at(0)).unwrap().allowed);
    assert!(e.check_request_at(&search, at(0)).unwrap().allowed);
    let v = e.check_request_at(&search, at(0)).unwrap();
    assert_eq!(v.rule.as_deref(), Some("search"));
    assert!(!v.allowed);
    assert!(
        e.check_request_at(&other, at(0)).unwrap().allowed,
        "the ip rule still has its third unit"
    );
    assert!(!e.check_request_at(&other, at(0)).unwrap().allowed);
}

#[test]
fn adaptive_tightening_halves_a_misbehaving_key() {
    let e = engine(
        "[[rule]]\nname = \"api\"\nmatch = \"/api/**\"\nquotas = [\"10/min\"]\nalgorithm = \"fixed_window\"\n[rule.adaptive]\nthreshold = 0.5\nwindow = \"1m\"\nmin_requests = 10\nfactor = 2\n",
    );
    let burst = |t| {
        (0..40)
            .filter(|_| e.check_request_at(&get(&[]), at(t)).unwrap().allowed)
            .count()
    };
    let base = NOW - NOW % 60; // align to the minute the fixed window uses
    let t0 = base + 60 - NOW;
    assert_eq!(burst(t0), 10, "30 of 40 denied: 75% > 50%");
    assert_eq!(burst(t0 + 60), 5, "tightened: each request costs 2");
    assert_eq!(burst(t0 + 120), 5, "still misbehaving");
    assert_eq!(
        e.check_request_at(&get(&[]), at(t0 + 180))
            .unwrap()
            .remaining,
        8,
        "still tightened after a bad minute"
    );
    // A quiet minute (1 request of 10) lifts it.
    assert_eq!(burst(t0 + 240), 10);
}

#[test]
fn events_and_metrics() {
    let e = engine(JWT_POLICY);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    e.set_event_sink(move |ev| sink.lock().unwrap().push(ev.clone().into_owned()));
    with_token(&e, "not.a.token", at(0));
    for _ in 0..6 {
        e.check_request_at(&get(&[]), at(0)).unwrap();
    }
    let events = events.lock().unwrap();
    assert_eq!(events[0].kind, EventKind::TokenInvalid);
    assert_eq!(events[0].token_problem, Some(TokenProblem::Malformed));
    // The invalid-token request counted against the IP too: 5 allowed of 7, 2 denied.
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::Denied)
        .collect();
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0].rule.as_deref(), Some("anonymous"));
    assert_eq!(denied[0].status, 429);
    assert_eq!(denied[0].client_ip, ip("203.0.113.7"));
    let m = e.metrics();
    assert!(
        m.contains("floodgate_jwt_invalid_total{reason=\"malformed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("floodgate_requests_total{rule=\"anonymous\",outcome=\"denied\"} 2"),
        "{m}"
    );
    assert!(m.contains("# TYPE floodgate_requests_total counter"));
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let e = login_policy("");
    for method in ["", "GE T", "GET\n", "ПОСТ"] {
        let err = e
            .check_request_at(
                &Request {
                    method,
                    path: "/",
                    client_ip: None,
                    headers: &[],
                    body: None,
                },
                at(0),
            )
            .unwrap_err();
        assert_eq!(err.code(), "invalid_request");
    }
    // Odd paths and no IP are fine: the IP-keyed rule is skipped.
    for path in [
        "",
        "*",
        "http://x/auth/login",
        "/auth/login?%%%",
        &"/a".repeat(10_000),
    ] {
        let v = e
            .check_request_at(
                &Request {
                    method: "POST",
                    path,
                    client_ip: None,
                    headers: &[],
                    body: None,
                },
                at(0),
            )
            .unwrap();
        assert!(v.allowed, "{path}");
    }
}

mod retry_after {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// On every 429, Retry-After (whole seconds) is never earlier than the exact
        /// retry time, and a retry at Retry-After is admitted.
        #[test]
        fn never_earlier_than_the_true_retry(rate in 1u64..20, period_s in 1u64..120,
                                             algorithm in prop::sample::select(vec!["gcra", "sliding_log", "sliding_window", "fixed_window"]),
                                             offset_ms in 0u64..5000) {
            let policy = format!("[[rule]]\nname = \"r\"\nmatch = \"/**\"\nquotas = [\"{rate}/{period_s}s\"]\nalgorithm = \"{algorithm}\"\n");
            let e = Engine::from_toml_str(&policy).unwrap();
            let req = Request { method: "GET", path: "/x", client_ip: ip("203.0.113.7"), headers: &[], body: None };
            let t = Duration::from_millis(NOW * 1000 + offset_ms);
            let denied = (0..=rate).map(|_| e.check_request_at(&req, t).unwrap()).find(|v| !v.allowed).unwrap();
            let header: u64 = denied.headers.iter().find(|(n, _)| *n == "Retry-After").unwrap().1.parse().unwrap();
            prop_assert!(Duration::from_secs(header) >= denied.retry_after);
            prop_assert!(e.check_request_at(&req, t + Duration::from_secs(header)).unwrap().allowed);
        }
    }
}

#[test]
fn ed25519_required_claims_and_subject_lists() {
    let policy = r#"
[jwt]
algorithms = ["EdDSA"]
keys = [{ algorithm = "EdDSA", pem_file = "tests/keys/ed_public.pem" }]
required_claims = ["tenant"]
verify_limit = "off"

[lists]
deny_subjects = ["mallory"]
allow_subjects = ["ops-bot"]

[[rule]]
name = "tenant"
match = "/api/**"
quotas = ["2/min"]
key = "{claim.tenant}:{route}"
"#;
    let e = engine(policy);
    let ed = EncodingKey::from_ed_pem(&key_file("ed_private.pem")).unwrap();
    let token = |sub: &str, tenant: Option<&str>| {
        let mut c = json!({"sub": sub, "exp": NOW + 600});
        if let Some(t) = tenant {
            c["tenant"] = json!(t);
        }
        sign(Algorithm::EdDSA, &ed, None, c)
    };
    let v = with_token(&e, &token("alice", Some("acme")), at(0));
    assert!(v.authenticated && v.allowed, "{v:?}");
    assert_eq!(v.identity.as_deref(), Some("acme:tenant"));
    // Another user of the same tenant shares its quota.
    assert!(with_token(&e, &token("bob", Some("acme")), at(0)).allowed);
    assert!(!with_token(&e, &token("carol", Some("acme")), at(0)).allowed);
    // Without the required claim the token is refused, and no rule applies.
    let v = with_token(&e, &token("dave", None), at(0));
    assert_eq!(
        (v.token_problem, v.reason),
        (Some(TokenProblem::MissingClaim), Reason::NoRule)
    );
    assert_eq!(
        with_token(&e, &token("mallory", Some("evil")), at(0)).reason,
        Reason::DenyListed
    );
    for _ in 0..5 {
        assert_eq!(
            with_token(&e, &token("ops-bot", Some("acme")), at(0)).reason,
            Reason::AllowListed
        );
    }
}

#[test]
fn reject_mode_answers_401_for_bad_tokens() {
    let e = engine(&JWT_POLICY.replace(
        "verify_limit = \"off\"",
        "verify_limit = \"off\"\non_invalid = \"reject\"",
    ));
    let v = with_token(&e, "garbage.garbage.garbage", at(0));
    assert_eq!((v.status, v.reason), (401, Reason::Unauthorized));
    let challenge = v
        .headers
        .iter()
        .find(|(n, _)| *n == "WWW-Authenticate")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        challenge,
        Some("Bearer error=\"invalid_token\", error_description=\"malformed\"")
    );
    // No token at all is still anonymous, not 401.
    assert!(e.check_request_at(&get(&[]), at(0)).unwrap().allowed);
}

#[test]
fn json_and_toml_policies_behave_the_same() {
    let toml = "[[rule]]\nname = \"a\"\nmatch = [\"GET /x\", \"/y/**\"]\nquotas = [\"2/min\"]\nkey = \"ip\"\n";
    let json = r#"{"rule": [{"name": "a", "match": ["GET /x", "/y/**"], "quotas": ["2/min"], "key": "ip"}]}"#;
    let (t, j) = (engine(toml), Engine::from_json_str(json).unwrap());
    for path in ["/x", "/x", "/x", "/y/z", "/other"] {
        let req = Request {
            method: "GET",
            path,
            client_ip: ip("203.0.113.7"),
            headers: &[],
            body: None,
        };
        let (a, b) = (
            t.check_request_at(&req, at(0)).unwrap(),
            j.check_request_at(&req, at(0)).unwrap(),
        );
        assert_eq!(
            (a.allowed, a.status, a.reason, a.remaining),
            (b.allowed, b.status, b.reason, b.remaining),
            "{path}"
        );
    }
}

#[test]
fn an_ip_rule_after_a_header_rule_keys_by_the_address() {
    // The address key is built once per request and reused by every rule keyed
    // by "ip" alone; a rule keyed otherwise in between must not leave its key
    // in the place of the address.
    let e = engine(
        r#"
[ban]
after = 100
within = "10m"
duration = "1m"
scope = "client"

[[rule]]
name = "by-ip"
match = "/**"
key = "ip"
quotas = ["1000/min"]

[[rule]]
name = "by-header"
match = "/**"
key = "header:x-k"
quotas = ["1000/min"]

[[rule]]
name = "by-ip-again"
match = "/**"
key = "ip"
quotas = ["2/min"]
"#,
    );
    let check = |k: &str| {
        let headers = [("x-k", k)];
        e.check_request_at(
            &Request {
                method: "GET",
                path: "/x",
                client_ip: ip("203.0.113.5"),
                headers: &headers,
                body: None,
            },
            at(0),
        )
        .unwrap_or_else(|err| panic!("{err}"))
    };
    assert!(check("one").allowed && check("two").allowed);
    let third = check("three");
    assert!(!third.allowed, "{third:?}");
    assert_eq!(third.rule.as_deref(), Some("by-ip-again"));
    assert_eq!(third.identity.as_deref(), Some("203.0.113.5"));
}

#[test]
fn long_keys_of_many_charged_rules_are_refunded_to_themselves() {
    // Six rules keyed by 250-byte header values: their keys pass the charge
    // list's 1 KiB on the stack, so the last two are kept past it (the short
    // address key of the per-IP rule after them still fits). A denial by that rule
    // gives every charge back to its own key, and the verdict names the
    // deciding rule's long key (long-5 ties with by-ip at 0 left: the first
    // rule wins a tie).
    let mut policy = String::new();
    for i in 0..6 {
        policy.push_str(&format!(
            "[[rule]]\nname = \"long-{i}\"\nmatch = \"/**\"\nkey = \"header:x-k{i}\"\nquotas = [\"{}/min\"]\n\n",
            if i == 5 { 2 } else { 3 }
        ));
    }
    policy.push_str(
        "[[rule]]\nname = \"by-ip\"\nmatch = \"/**\"\nkey = \"ip\"\nquotas = [\"1/min\"]\n",
    );
    let e = engine(&policy);
    let values: Vec<String> = (0..6).map(|i| format!("{i}").repeat(250)).collect();
    let names: Vec<String> = (0..6).map(|i| format!("x-k{i}")).collect();
    let headers: Vec<(&str, &str)> = names
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(String::as_str))
        .collect();
    let check = |from: &str| {
        e.check_request_at(
            &Request {
                method: "GET",
                path: "/x",
                client_ip: ip(from),
                headers: &headers,
                body: None,
            },
            at(0),
        )
        .unwrap_or_else(|err| panic!("{err}"))
    };
    let first = check("203.0.113.1");
    assert!(first.allowed, "{first:?}");
    // by-ip has 0 left; long-5 (2/min) has 1, the fewest of the others.
    assert_eq!(first.rule.as_deref(), Some("by-ip"));
    let denied = check("203.0.113.1");
    assert!(!denied.allowed);
    assert_eq!(denied.rule.as_deref(), Some("by-ip"));
    // Refunded: long-5 still has 1 unit, so a request from a new address is
    // allowed and decided by long-5, on its own key.
    let second = check("203.0.113.2");
    assert!(second.allowed, "{second:?}");
    assert_eq!(second.rule.as_deref(), Some("long-5"));
    assert_eq!(second.remaining, 0);
    assert_eq!(second.identity.as_deref(), Some(values[5].as_str()));
    // long-0 to long-4 were refunded too: had they not been, long-0 (3/min,
    // charged three times by now) would deny first.
    let third = check("203.0.113.3");
    assert!(!third.allowed);
    assert_eq!(third.rule.as_deref(), Some("long-5"));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, .. proptest::prelude::ProptestConfig::default() })]

    /// A policy whose rules every request meets (`/**`) does not read the
    /// path at all; it decides as the same policy with a rule that makes it
    /// read (and normalise) every path, for any request target: odd,
    /// encoded, absolute-form, dot segments, query strings.
    #[test]
    fn a_policy_that_never_reads_the_path_decides_as_one_that_does(
        requests in proptest::collection::vec(
            ("(GET|POST|HEAD|DELETE)", "(/|http://h/|)([a-zA-Z0-9%./?=&~-]{0,12}/?){0,4}", 0u8..4),
            1..40,
        ),
    ) {
        let rules = r#"
[[rule]]
name = "everything"
match = "/**"
key = "ip"
quotas = ["5/min", "20/hour"]
algorithm = "sliding_window"

[[rule]]
name = "burst"
match = ["GET /**", "/**"]
key = "ip"
quotas = ["3/s burst 4"]
"#;
        // This rule is met by no generated request (POST only, a path no
        // target normalises to), but makes the policy route by path.
        let reads_paths = "\n[[rule]]\nname = \"never\"\nmatch = \"POST /never-met/x\"\nkey = \"ip\"\nquotas = [\"1/min\"]\n";
        let blind = Engine::from_toml_str(rules).unwrap().with_fixed_seed(3);
        let routed = Engine::from_toml_str(&format!("{rules}{reads_paths}")).unwrap().with_fixed_seed(3);
        for (i, (method, path, client)) in requests.iter().enumerate() {
            let addr = format!("203.0.113.{client}");
            let req = Request {
                method,
                path,
                client_ip: ip(&addr),
                headers: &[],
                body: None,
            };
            let t = at(1) + Duration::from_millis(i as u64 * 97);
            let (a, b) = (blind.check_request_at(&req, t), routed.check_request_at(&req, t));
            proptest::prop_assert_eq!(a, b, "{} {}", method, path);
        }
    }
}
