//! The properties the fuzz targets check. Each target in `fuzz_targets/` calls one
//! function here; `ffi/tests/fuzz_replay.rs` includes this file and runs the
//! committed corpora (`fuzz/corpus/<target>/`) through the same functions on
//! stable, so CI replays every finding without nightly.
//!
//! The targets assert properties, not only "no panic":
//! - `policy`: any text either builds an engine that answers a request, or is a
//!   located `InvalidConfig` error; TOML and JSON alike.
//! - `check_request`: under a policy with `[jwt]`, any method, path, headers and
//!   token give a verdict whose `allowed` is exactly `status == 200`, whose
//!   headers cannot inject a line, and which is authenticated only for tokens
//!   this harness signed (and always for those).
//! - `quota`: a quota string that parses prints back to an equal quota.
//! - `path`: the normalised path is normal (idempotent, `/`-rooted, no empty or
//!   dot segments) and matching it gives the same verdict as the raw target.
//! - `c_abi`: the C entry points, given arbitrary bytes, return a known result
//!   code (never `FG_RESULT_PANIC`), and a verdict consistent with itself.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    missing_docs,
    unsafe_code
)]

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use floodgate_core::policy::{Engine, Request, Verdict, normalize_path};
use floodgate_core::{Error, Quota};

/// Unix time of every fuzzed request.
const NOW_S: u64 = 1_700_000_000;

/// The HMAC secret of the fuzzed policy (the harness signs tokens with it).
pub const SECRET: &str = "fuzz-secret-0123456789abcdef-0123456789";

/// Splits input into at most `n` fields at 0xFF bytes (which no UTF-8 text holds).
fn fields(data: &[u8], n: usize) -> Vec<String> {
    data.splitn(n, |b| *b == 0xFF)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

fn field(f: &[String], i: usize) -> &str {
    f.get(i).map_or("", String::as_str)
}

/// Policy text that could reach the network (a Redis store) is not fuzzed here.
fn reaches_network(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("redis") || t.contains("store") || t.contains("cluster")
}

pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if reaches_network(text) {
        return;
    }
    for engine in [Engine::from_toml_str(text), Engine::from_json_str(text)] {
        match engine {
            Ok(e) => {
                let _ = e.describe();
                let _ = e.warnings();
                let r = Request {
                    method: "GET",
                    path: "/",
                    client_ip: "203.0.113.1".parse().ok(),
                    headers: &[("x-api-key", "k")],
                    body: None,
                };
                let v = e
                    .check_request_at(&r, Duration::from_secs(NOW_S))
                    .unwrap_or_else(|err| panic!("a valid policy failed a plain request: {err}"));
                assert_eq!(v.allowed, v.status == 200);
                let _ = e.metrics();
            }
            Err(Error::InvalidConfig { location, .. }) => assert!(!location.is_empty()),
            Err(other) => panic!("a policy error that is not InvalidConfig: {other:?}"),
        }
    }
}

/// The secret's file, written once per process: the replay tests build the
/// policy on several threads at once, and a rewrite (truncate, then write) let
/// one of them read an empty secret.
fn secret_file() -> String {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("floodgate-fuzz-secret-{}", std::process::id()));
        std::fs::write(&path, SECRET).unwrap();
        path.display().to_string()
    })
    .clone()
}

/// The policy `check_request` fuzzes: verified claims, headers, paths and IPs as
/// keys, lists, bans and tiers.
pub fn request_policy() -> String {
    format!(
        r#"
[jwt]
algorithms = ["HS256"]
secret_file = {secret:?}
verify_limit = "off"

[lists]
deny_ips = ["192.0.2.0/24"]
allow_ips = ["10.0.0.0/8"]
deny_api_keys = ["revoked"]

[ban]
after = 3
within = "1m"
duration = "1m"
scope = "client"

[[rule]]
name = "login"
match = "POST /auth/login"
key = "ip"
quotas = ["3/min"]

[[rule]]
name = "login-user"
match = "POST /auth/login"
key = "body:username"
quotas = ["3/min"]

[[rule]]
name = "user"
match = "/api/**"
applies_to = "authenticated"
key = "{{claim.sub}}:{{route}}"
quotas = ["5/min"]

[[rule]]
name = "keyed"
match = "/api/**"
applies_to = "anonymous"
key = "api_key"
quotas = ["4/min"]

[[rule]]
name = "anon"
match = "/api/**"
applies_to = "anonymous"
unless_header = "x-api-key"
key = "ip"
quotas = ["2/min"]

[[rule]]
name = "paths"
match = "GET,PUT /files/{{id}}/**"
key = "{{method}}{{path}}"
quotas = ["2/min"]

[[rule]]
name = "everything"
match = "/**"
key = "ip"
quotas = ["50/min"]
"#,
        secret = secret_file()
    )
}

fn request_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::from_toml_str(&request_policy()).unwrap())
}

fn sign(sub: &str) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let claims = serde_json::json!({"sub": sub, "exp": NOW_S + 3600});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Checks what any verdict must satisfy.
fn assert_sound(v: &Verdict) {
    assert_eq!(v.allowed, v.status == 200, "{v:?}");
    assert!(matches!(v.status, 200 | 401 | 403 | 429), "{v:?}");
    if v.status == 429 {
        assert!(!v.retry_after.is_zero(), "429 without a wait: {v:?}");
    }
    for (name, value) in &v.headers {
        assert!(
            !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0),
            "header {name} could inject a line: {value:?}"
        );
    }
    assert!(v.remaining <= v.limit, "{v:?}");
}

/// Fields: mode, method, path, client IP, token/sub, then header name, value, ...
pub fn check_request(data: &[u8]) {
    let f = fields(data, 16);
    let mode = field(&f, 0).bytes().next().unwrap_or(0) % 3;
    let method = field(&f, 1);
    let path = field(&f, 2);
    let ip: Option<IpAddr> = field(&f, 3).parse().ok();
    // mode 0: no token; 1: the fuzzer's own token; 2: a token the harness signs
    // for the fuzzed subject.
    let token = match mode {
        1 => Some(field(&f, 4).to_string()),
        2 => Some(sign(field(&f, 4))),
        _ => None,
    };
    let auth = token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = f
        .get(5..)
        .unwrap_or_default()
        .chunks(2)
        .map(|c| (c[0].as_str(), c.get(1).map_or("", String::as_str)))
        .collect();
    if let Some(a) = &auth {
        headers.insert(0, ("authorization", a.as_str()));
    }
    let r = Request {
        method,
        path,
        client_ip: ip,
        headers: &headers,
        body: None,
    };
    let e = request_engine();
    match e.check_request_at(&r, Duration::from_secs(NOW_S)) {
        Ok(v) => {
            assert_sound(&v);
            if v.authenticated {
                assert_eq!(
                    mode, 2,
                    "authenticated a token the harness did not sign: {v:?}"
                );
            }
            let listed = v.reason == floodgate_core::policy::Reason::DenyListed
                || v.reason == floodgate_core::policy::Reason::AllowListed
                || v.reason == floodgate_core::policy::Reason::Banned;
            let oversized = token
                .as_ref()
                .is_some_and(|t| t.len() > floodgate_core::policy::MAX_TOKEN_BYTES);
            if oversized && !listed {
                // Refused unparsed, however it was signed (lists and client-wide
                // bans answer before the token is read).
                assert!(!v.authenticated, "{v:?}");
                assert_eq!(
                    v.token_problem,
                    Some(floodgate_core::policy::TokenProblem::Malformed)
                );
            } else if mode == 2 && !listed {
                if field(&f, 4).is_empty() {
                    // Verified, but without the subject the user rule keys on:
                    // refused (401 missing_claim) on that rule, never unlimited.
                    assert!(
                        v.authenticated
                            || v.token_problem
                                == Some(floodgate_core::policy::TokenProblem::MissingClaim),
                        "{v:?}"
                    );
                } else {
                    assert!(v.authenticated, "a harness-signed token was refused: {v:?}");
                }
            }
        }
        Err(Error::InvalidRequest { field, .. }) => assert_eq!(field, "method"),
        Err(other) => panic!("unexpected error: {other:?}"),
    }
}

pub fn quota(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = text.parse::<Quota>() {
        let printed = q.to_string();
        let again: Quota = printed
            .parse()
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(q, again, "{text:?} printed as {printed:?}");
    }
}

fn path_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::from_toml_str(
            r#"
            [[rule]]
            name = "login"
            match = "POST /auth/login"
            key = "ip"
            quotas = ["1000/min"]
            [[rule]]
            name = "files"
            match = "/files/{id}/**"
            key = "path"
            quotas = ["1000/min"]
            "#,
        )
        .unwrap()
    })
}

pub fn path(data: &[u8]) {
    let target = String::from_utf8_lossy(data);
    for ci in [true, false] {
        let n = normalize_path(&target, ci);
        assert!(n.starts_with('/'), "{target:?} -> {n:?}");
        assert!(n.len() == 1 || !n.ends_with('/'), "{target:?} -> {n:?}");
        assert!(!n.contains("//"), "{target:?} -> {n:?}");
        assert!(
            !n.split('/').any(|s| s == "." || s == ".."),
            "{target:?} -> {n:?}"
        );
        if ci {
            assert!(!n.bytes().any(|b| b.is_ascii_uppercase()), "{n:?}");
        }
        // Decoding happens once: only a target without '%' is a fixed point.
        if !n.contains('%') && !n.contains('?') && !n.contains('#') {
            assert_eq!(normalize_path(&n, ci), n, "not idempotent for {target:?}");
        }
    }
    // The engine decides the raw target exactly as its normal form.
    let e = path_engine();
    let n = normalize_path(&target, true).into_owned();
    if n.contains(['%', '?', '#']) {
        return;
    }
    for method in ["POST", "GET"] {
        let at = |p: &str| {
            let r = Request {
                method,
                path: p,
                client_ip: "203.0.113.1".parse().ok(),
                headers: &[],
                body: None,
            };
            let v = e.check_request_at(&r, Duration::from_secs(NOW_S)).unwrap();
            (v.rule, v.identity)
        };
        assert_eq!(at(&target), at(&n), "{target:?} vs {n:?}");
    }
}

/// A login's body of arbitrary bytes (the first byte picks its type: a form,
/// JSON, text, none, multipart), for the rule keyed by its `username`: the field is read
/// without a panic; a verdict is sound and, from that rule, names a key; the
/// only error is the body's own 400 (a field named twice, or no name).
pub fn body(data: &[u8]) {
    let (kind, mut body) = data.split_first().unwrap_or((&0, &[]));
    let mut content_type = [
        "application/x-www-form-urlencoded",
        "application/json",
        "text/plain; charset=utf-8",
        "",
        "multipart/form-data; boundary=XyZ",
        "",
    ][usize::from(*kind % 6)];
    if *kind % 6 == 5 {
        // The type from the input too (its first line): the strict reading
        // of its parameters sees arbitrary text.
        let (line, rest) =
            body.split_at(body.iter().position(|b| *b == b'\n').unwrap_or(body.len()));
        content_type = std::str::from_utf8(line).unwrap_or_default();
        body = rest.get(1..).unwrap_or_default();
    }
    let headers = [("content-type", content_type)];
    let r = Request {
        method: "POST",
        path: "/auth/login",
        client_ip: "203.0.113.9".parse().ok(),
        headers: if content_type.is_empty() {
            &[]
        } else {
            &headers
        },
        body: Some(body),
    };
    match request_engine().check_request_at(&r, Duration::from_secs(NOW_S)) {
        Ok(v) => {
            assert_sound(&v);
            if v.rule.as_deref() == Some("login-user") {
                let key = v.identity.as_deref().unwrap_or_default();
                assert!(
                    !key.trim().is_empty(),
                    "an empty username keyed the rule: {v:?}"
                );
            }
        }
        Err(e) => assert!(
            matches!(e, Error::InvalidRequest { field: "body", .. }),
            "{e}"
        ),
    }
}

/// The C ABI with arbitrary bytes: policy text, then a request's fields.
pub fn c_abi(data: &[u8]) {
    use floodgate_ffi::*;
    use std::ffi::c_char;
    let f: Vec<&[u8]> = data.splitn(8, |b| *b == 0xFF).collect();
    let get = |i: usize| f.get(i).copied().unwrap_or_default();
    let known = |r: fg_result| {
        assert_ne!(r, fg_result::Panic, "a panic crossed the C ABI");
        // SAFETY: any value is accepted; the message is static.
        assert!(!fg_result_message(r as u32).is_null());
    };
    // 1. Policy text from the fuzzer (TOML or JSON).
    let text = get(0);
    if !reaches_network(&String::from_utf8_lossy(text)) {
        let mut engine: *const fg_engine = std::ptr::null();
        for format in [FG_FORMAT_TOML, FG_FORMAT_JSON, 7] {
            // SAFETY: text is `len` readable bytes; engine_out is writable.
            let r = unsafe {
                fg_engine_from_str(text.as_ptr().cast(), text.len(), format, &raw mut engine)
            };
            known(r);
            if r == fg_result::Ok {
                // SAFETY: from the constructor, freed once.
                unsafe { fg_engine_free(engine) };
            }
        }
    }
    // 2. A request of arbitrary bytes against the fuzzed policy.
    static POLICY: OnceLock<usize> = OnceLock::new();
    let engine = *POLICY.get_or_init(|| {
        let text = request_policy();
        let mut e: *const fg_engine = std::ptr::null();
        // SAFETY: as above.
        let r = unsafe {
            fg_engine_from_str(text.as_ptr().cast(), text.len(), FG_FORMAT_TOML, &raw mut e)
        };
        assert_eq!(r, fg_result::Ok);
        e as usize
    }) as *const fg_engine;
    let bytes = |b: &[u8]| (b.as_ptr().cast::<c_char>(), b.len());
    let (method, method_len) = bytes(get(1));
    let (path, path_len) = bytes(get(2));
    let (ip, ip_len) = bytes(get(3));
    let headers = [
        fg_header {
            name: bytes(get(4)).0,
            name_len: get(4).len(),
            value: bytes(get(5)).0,
            value_len: get(5).len(),
        },
        fg_header {
            name: c"authorization".as_ptr(),
            name_len: 13,
            value: bytes(get(6)).0,
            value_len: get(6).len(),
        },
    ];
    let request = fg_request {
        method,
        method_len,
        path,
        path_len,
        client_ip: if get(3).is_empty() {
            std::ptr::null()
        } else {
            ip
        },
        client_ip_len: ip_len,
        headers: headers.as_ptr(),
        header_count: headers.len(),
        // The fuzzed header's value is the body too (its name may be
        // content-type): the body rule reads it.
        body: get(5).as_ptr(),
        body_len: get(5).len(),
    };
    let mut verdict = std::mem::MaybeUninit::<fg_verdict>::uninit();
    // SAFETY: every pointer covers its length; verdict_out is writable.
    let r = unsafe {
        fg_engine_check_request_at(
            engine,
            &raw const request,
            NOW_S * 1_000_000_000,
            verdict.as_mut_ptr(),
        )
    };
    known(r);
    if r == fg_result::Ok {
        // SAFETY: written on success.
        let v = unsafe { verdict.assume_init() };
        assert_eq!(v.allowed, v.status == 200);
        // SAFETY: headers_len bytes of text, valid until the next call on this thread.
        let text = unsafe { std::slice::from_raw_parts(v.headers.cast::<u8>(), v.headers_len) };
        let lines = text.windows(2).filter(|w| w == b"\r\n").count();
        assert_eq!(lines, v.header_count, "header text and count disagree");
    }
    // 3. A keyed check with arbitrary key bytes and cost.
    let key = get(7);
    let cost = key.first().map_or(1, |b| u64::from(*b));
    let mut decision = std::mem::MaybeUninit::<fg_decision>::uninit();
    // SAFETY: key covers its length; decision_out is writable.
    let r =
        unsafe { fg_engine_check(engine, key.as_ptr(), key.len(), cost, decision.as_mut_ptr()) };
    known(r);
    assert_eq!(
        r,
        fg_result::WrongEngineKind,
        "a policy engine has no keyed check"
    );
}
