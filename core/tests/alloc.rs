//! `check_request_into` allocates nothing on the three common paths (an anonymous
//! client keyed by IP, an API key, a cached verified token), counted by a
//! global allocator that counts this thread's allocations while asked to. And a
//! reused buffer gives the same verdicts as fresh ones, denials included.
#![cfg(feature = "policy")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
#![allow(unsafe_code)] // a GlobalAlloc that forwards to the system allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodgate::policy::{Engine, EventKind, EventSummary, Reason, Request, VerdictBuf};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

struct Counting;

thread_local! {
    /// `Some(n)`: counting, `n` so far on this thread.
    static COUNT: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note() {
    let _ = COUNT.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments, which
// upholds GlobalAlloc's contract; counting touches only a thread-local Cell.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(Some(0)));
    f();
    COUNT.with(|c| c.replace(None)).unwrap_or(0)
}

const NOW: u64 = 1_700_000_000;

/// The example policy's API rules (tiers by plan for verified users, API keys,
/// anonymous clients per IP, a catch-all), with an HS256 key so the test can sign.
const POLICY: &str = r#"
[settings]
headers = "draft-10"

[jwt]
algorithms = ["HS256"]
issuer = "https://auth.example.com"
audience = "api"
secret_file = "tests/keys/hs_secret.txt"
verify_limit = "20/s burst 40"

[ban]
after = 5
within = "10m"
duration = "15m"

[[rule]]
name = "api-user"
match = "/api/**"
applies_to = "authenticated"
key = "claim:sub"
[rule.tiers]
claim = "plan"
default = "free"
quotas = { free = ["60/min", "1000/day"], pro = ["600/min burst 100", "20000/day"] }

[[rule]]
name = "api-key"
match = "/api/**"
applies_to = "anonymous"
key = "api_key"
quotas = ["100/s burst 200"]

[[rule]]
name = "anonymous"
match = "/api/**"
applies_to = "anonymous"
unless_header = "x-api-key"
key = "ip"
quotas = ["30/min"]
algorithm = "sliding_window"

[[rule]]
name = "login-user"
match = "POST /auth/login"
key = "body:username"
quotas = ["60/min burst 30"]

[[rule]]
name = "everything"
match = "/**"
key = "ip"
quotas = ["600/min burst 100"]
"#;

fn engine() -> Engine {
    Engine::from_toml_str(POLICY).unwrap()
}

fn token(sub: &str, plan: &str) -> String {
    let secret = std::fs::read(format!(
        "{}/tests/keys/hs_secret.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let claims = json!({"sub": sub, "plan": plan, "iss": "https://auth.example.com",
                        "aud": "api", "exp": NOW + 3600});
    let secret = String::from_utf8(secret).unwrap();
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.trim().as_bytes()),
    )
    .unwrap()
}

/// Warms a buffer and the store with a few requests, then counts the
/// allocations of 20 more (2.5 s apart: inside every quota, the anonymous
/// 30/min included); the sum over a plain buffer and one bound to the engine
/// (`Engine::verdict_buf`), one after the other.
fn steady_state_allocations(engine: &Engine, req: &Request<'_>, expect_rule: &str) -> usize {
    let at = |i: u64| Some(Duration::from_secs(NOW) + Duration::from_millis(2500 * i));
    let mut total = 0;
    for (mut out, start) in [(VerdictBuf::new(), 0), (engine.verdict_buf(), 23)] {
        for i in start..start + 3 {
            engine.check_request_into(req, at(i), &mut out).unwrap();
            assert!(out.verdict().allowed, "{:?}", out.verdict());
            assert_eq!(out.verdict().rule.as_deref(), Some(expect_rule));
        }
        total += allocations(|| {
            for i in start + 3..start + 23 {
                engine.check_request_into(req, at(i), &mut out).unwrap();
                assert!(out.verdict().allowed);
            }
        });
    }
    total
}

#[test]
fn anonymous_per_ip_allocates_nothing() {
    let engine = engine();
    // A query string, as real requests have: the path is still borrowed.
    let req = Request {
        method: "GET",
        path: "/api/items?page=2",
        client_ip: "203.0.113.7".parse().ok(),
        headers: &[("accept", "*/*")],
        body: None,
    };
    assert_eq!(steady_state_allocations(&engine, &req, "anonymous"), 0);
    // The counter counts: a fresh verdict allocates its identity and headers.
    let t = Duration::from_secs(NOW + 3600);
    assert!(allocations(|| drop(engine.check_request_at(&req, t).unwrap())) >= 3);
    let v6 = Request {
        client_ip: "2001:db8::7".parse().ok(),
        ..req
    };
    assert_eq!(steady_state_allocations(&engine, &v6, "anonymous"), 0);
}

#[test]
fn api_key_allocates_nothing() {
    let engine = engine();
    let req = Request {
        method: "POST",
        path: "/api/orders",
        client_ip: "203.0.113.8".parse().ok(),
        headers: &[("X-Api-Key", "sk_live_abc123")],
        body: None,
    };
    // The deciding rule is the one with the fewest units left: the catch-all
    // (600/min burst 100) before the key's 200-unit burst.
    assert_eq!(steady_state_allocations(&engine, &req, "everything"), 0);
}

#[test]
fn cached_token_allocates_nothing() {
    let engine = engine();
    let bearer = format!("Bearer {}", token("alice", "pro"));
    let headers = [("authorization", bearer.as_str())];
    let req = Request {
        method: "GET",
        path: "/api/users/42",
        client_ip: "203.0.113.9".parse().ok(),
        headers: &headers,
        body: None,
    };
    // The pro tier's burst (100) ties with the catch-all's: the first rule decides.
    assert_eq!(steady_state_allocations(&engine, &req, "api-user"), 0);
    let v = engine
        .check_request_at(&req, Duration::from_secs(NOW))
        .unwrap();
    assert!(v.authenticated);
}

/// A login keyed by the body's username, as JSON, as a form whose other
/// fields have escapes and `+` (never decoded) and as multipart (its
/// delimiters built on the stack): the field is read once, in place. (Only a
/// form value with an escape of its own, `a%40b.c`, is decoded into a new
/// string.)
#[test]
fn a_username_from_the_body_allocates_nothing() {
    let engine = engine();
    for (content_type, body, name, ip) in [
        (
            "application/json",
            &br#"{"username":"Alice","password":"correct horse"}"#[..],
            "alice",
            "203.0.113.10",
        ),
        (
            "application/x-www-form-urlencoded",
            b"password=correct+horse%21&username=Bob&remember=on",
            "bob",
            "203.0.113.11",
        ),
        (
            "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW",
            b"------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nCarol\r\n------WebKitFormBoundary7MA4YWxkTrZu0gW\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nx\r\n------WebKitFormBoundary7MA4YWxkTrZu0gW--\r\n",
            "carol",
            "203.0.113.12",
        ),
    ] {
        let headers = [("content-type", content_type)];
        let req = Request {
            method: "POST",
            path: "/auth/login",
            client_ip: ip.parse().ok(),
            headers: &headers,
            body: Some(body),
        };
        assert_eq!(
            steady_state_allocations(&engine, &req, "login-user"),
            0,
            "{content_type}"
        );
        let v = engine
            .check_request_at(&req, Duration::from_secs(NOW + 3600))
            .unwrap();
        assert_eq!(v.identity.as_deref(), Some(name));
    }
}

#[test]
fn a_reused_buffer_gives_the_verdicts_fresh_ones_give() {
    // Two engines with the same seeds see the same requests: one decides into a
    // reused buffer, the other returns fresh verdicts. Allowed, rate-limited,
    // banned, 401 and allowed again: nothing of one verdict leaks into the next.
    let (a, b) = (engine().with_fixed_seed(7), engine().with_fixed_seed(7));
    let bearer = format!("Bearer {}", token("bob", "free"));
    let bad = "Bearer not.a.token".to_string();
    let mut out = VerdictBuf::new();
    for i in 0..200u64 {
        let auth = match i % 5 {
            0 => Some(bearer.as_str()),
            1 => Some(bad.as_str()),
            _ => None,
        };
        let headers: Vec<(&str, &str)> = auth.map(|t| ("authorization", t)).into_iter().collect();
        let req = Request {
            method: "GET",
            path: "/api/items",
            client_ip: "198.51.100.1".parse().ok(),
            headers: &headers,
            body: None,
        };
        let t = Duration::from_secs(NOW) + Duration::from_millis(50 * i);
        a.check_request_into(&req, Some(t), &mut out).unwrap();
        let fresh = b.check_request_at(&req, t).unwrap();
        assert_eq!(out.verdict(), &fresh, "request {i}");
    }
    // The flood was denied, then banned: both kinds of verdict went through the buffer.
    assert!(!out.verdict().allowed);
}

/// Allocations of 20 requests of a flood from one address, 10 ms apart, once
/// 40 of them have grown `out` and every answer is a `reason` denial from the
/// `anonymous` rule (30/min).
fn flood_allocations(engine: &Engine, reason: Reason) -> usize {
    let req = Request {
        method: "GET",
        path: "/api/items",
        client_ip: "203.0.113.10".parse().ok(),
        headers: &[],
        body: None,
    };
    let mut out = VerdictBuf::new();
    let at = |i: u64| Some(Duration::from_secs(NOW) + Duration::from_millis(10 * i));
    for i in 0..40 {
        engine.check_request_into(&req, at(i), &mut out).unwrap();
    }
    assert_eq!(out.verdict().reason, reason, "{:?}", out.verdict());
    allocations(|| {
        for i in 40..60 {
            engine.check_request_into(&req, at(i), &mut out).unwrap();
            let v = out.verdict();
            assert!(v.reason == reason && v.status == 429, "{v:?}");
            assert_eq!(v.rule.as_deref(), Some("anonymous"));
            assert!(v.headers.iter().any(|(name, _)| *name == "Retry-After"));
        }
    })
}

#[test]
fn a_flood_s_denials_allocate_nothing() {
    // A denial is what a flood gets over and over: decided into a reused
    // buffer, its verdict (rule, identity, headers with `Retry-After`) reuses
    // the last one's strings. Without bans, 429s; with them, after the fifth
    // 429 the ban's answers (its start, which records the ban, is before the
    // counted requests).
    let no_bans = POLICY.replace(
        "[ban]\nafter = 5\nwithin = \"10m\"\nduration = \"15m\"\n",
        "",
    );
    assert!(!no_bans.contains("[ban]"));
    let policy = no_bans;
    let no_bans = Engine::from_toml_str(&policy).unwrap();
    assert_eq!(flood_allocations(&no_bans, Reason::RateLimited), 0);
    assert_eq!(flood_allocations(&engine(), Reason::Banned), 0);
    // With the listener the Python package registers by default: every 429 an
    // event, counted into the interval's summary (its first, in the warm-up,
    // makes the summary's entry).
    let summarised = Engine::from_toml_str(&policy).unwrap();
    let summary = EventSummary::new(Duration::from_secs(3600));
    let denied = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&denied);
    summarised.set_event_sink(move |e| {
        seen.fetch_add(usize::from(e.kind == EventKind::Denied), Ordering::Relaxed);
        let _ = summary.record(e);
    });
    assert_eq!(flood_allocations(&summarised, Reason::RateLimited), 0);
    assert!(denied.load(Ordering::Relaxed) >= 20);
}

/// A policy of one rule by address (the lone path, `Policy::decide_lone`):
/// its allowed requests and its flood's 429s allocate nothing either.
#[test]
fn a_lone_ip_rule_allocates_nothing() {
    let engine = Engine::from_toml_str(
        "[[rule]]\nname = \"anonymous\"\nmatch = \"/api/**\"\nkey = \"ip\"\nquotas = [\"30/min\"]\n",
    )
    .unwrap();
    for ip in ["203.0.113.7", "2001:db8::7"] {
        let req = Request {
            method: "GET",
            path: "/api/items?page=2",
            client_ip: ip.parse().ok(),
            headers: &[("accept", "*/*")],
            body: None,
        };
        assert_eq!(steady_state_allocations(&engine, &req, "anonymous"), 0);
    }
    assert_eq!(flood_allocations(&engine, Reason::RateLimited), 0);
}
