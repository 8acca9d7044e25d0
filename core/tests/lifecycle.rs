//! The request lifecycle: settle after the response (`count`, `cost_from`) and
//! requests in flight (`max_in_flight`), in memory and in shared memory.
#![cfg(feature = "policy")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floodgate::ErrorKind;
use floodgate::policy::{Engine, Reason, Request, Settle, Verdict};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000; // a whole hour

fn at(secs: u64) -> Duration {
    Duration::from_secs(NOW + secs)
}

const POLICY: &str = r#"
[[rule]]
name = "login"
match = "POST /auth/login"
key = "header:x-username"
algorithm = "fixed_window"
quotas = ["5/h"]
count = "failures"

[[rule]]
name = "graphql"
match = "POST /graphql"
key = "ip"
algorithm = "fixed_window"
quotas = ["100/h"]
cost = 10
cost_from = "response"

[[rule]]
name = "export"
match = "GET /export"
key = "ip"
quotas = ["1000/s"]
max_in_flight = 2
in_flight_ttl = "60s"

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
quotas = ["1000/s"]
"#;

fn request<'a>(method: &'a str, path: &'a str, headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
    Request {
        method,
        path,
        client_ip: Some("198.51.100.9".parse().unwrap()),
        headers,
        body: None,
    }
}

fn status(s: u16) -> Settle {
    Settle {
        status: s,
        cost: None,
    }
}

fn attempt(e: &Engine, user: &str, t: u64) -> Verdict {
    let h = [("x-username", user)];
    e.check_request_at(&request("POST", "/auth/login", &h), at(t))
        .unwrap()
}

#[test]
fn only_failed_logins_count() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    // Twenty successful logins: each is given back.
    for t in 0..20 {
        let v = attempt(&e, "alice", t);
        assert!(v.allowed, "{t}");
        e.settle_at(&v, status(200), at(t)).unwrap();
    }
    // Five failures count; the sixth attempt is denied.
    for t in 20..25 {
        let v = attempt(&e, "alice", t);
        assert!(v.allowed);
        e.settle_at(&v, status(401), at(t)).unwrap();
    }
    let v = attempt(&e, "alice", 25);
    assert_eq!((v.status, v.reason), (429, Reason::RateLimited));
    assert!(v.settlement.is_none(), "a denial has nothing to settle");
    e.settle_at(&v, status(429), at(25)).unwrap();
    assert!(attempt(&e, "bob", 25).allowed, "keys apart");
}

#[test]
fn a_parallel_burst_is_held_to_the_limit_before_any_response() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    // 100 attempts sent at once: every one is charged on arrival.
    let verdicts: Vec<Verdict> = (0..100).map(|_| attempt(&e, "victim", 0)).collect();
    assert_eq!(verdicts.iter().filter(|v| v.allowed).count(), 5);
    // All five fail: nothing comes back.
    for v in verdicts.iter().filter(|v| v.allowed) {
        e.settle_at(v, status(401), at(1)).unwrap();
    }
    assert!(!attempt(&e, "victim", 2).allowed);
}

#[test]
fn settling_twice_is_an_error_and_gives_back_once() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    let vs: Vec<Verdict> = (0..5).map(|t| attempt(&e, "carol", t)).collect();
    assert!(!attempt(&e, "carol", 5).allowed);
    e.settle_at(&vs[0], status(200), at(6)).unwrap();
    let copy = vs[0].clone();
    let err = e.settle_at(&copy, status(200), at(6)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadySettled);
    assert_eq!(err.code(), "already_settled");
    assert!(vs[0].settlement.as_ref().unwrap().is_settled());
    // One place came back, not two.
    assert!(attempt(&e, "carol", 7).allowed);
    assert!(!attempt(&e, "carol", 8).allowed);
    // Bad statuses and other engines' verdicts are refused, settling nothing.
    assert_eq!(
        e.settle_at(&vs[1], status(99), at(9)).unwrap_err().kind(),
        ErrorKind::InvalidRequest
    );
    let other = Engine::from_toml_str(POLICY).unwrap();
    assert_eq!(
        other
            .settle_at(&vs[1], status(200), at(9))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidRequest
    );
    e.settle_at(&vs[1], status(200), at(9)).unwrap();
    assert!(attempt(&e, "carol", 10).allowed);
}

#[test]
fn a_rule_without_lifecycle_settles_to_nothing() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    let v = e
        .check_request_at(&request("GET", "/api/x", &[]), at(0))
        .unwrap();
    assert!(v.allowed && v.settlement.is_none());
    e.settle_at(&v, status(500), at(0)).unwrap();
    e.settle_at(&v, status(500), at(0)).unwrap();
}

#[test]
fn the_real_cost_replaces_the_estimate() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    let gql = |t: u64| {
        e.check_request_at(&request("POST", "/graphql", &[]), at(t))
            .unwrap()
    };
    let v = gql(0);
    assert_eq!(v.remaining, 90, "charged the estimate");
    e.settle_at(
        &v,
        Settle {
            status: 200,
            cost: Some(2),
        },
        at(0),
    )
    .unwrap();
    // 98 after the refund; this estimate stays unsettled (a crashed handler keeps it).
    assert_eq!(gql(1).remaining, 88);
    let v = gql(2);
    assert_eq!(v.remaining, 78);
    e.settle_at(
        &v,
        Settle {
            status: 200,
            cost: Some(40),
        },
        at(2),
    )
    .unwrap();
    assert_eq!(gql(3).remaining, 78 - 30 - 10);
    // Dearer than everything left: the key is emptied, and the next request is
    // denied (the one that ran is not).
    let v = gql(4);
    e.settle_at(
        &v,
        Settle {
            status: 200,
            cost: Some(1_000),
        },
        at(4),
    )
    .unwrap();
    let next = gql(5);
    assert!(!next.allowed);
    assert_eq!(next.remaining, 0);
    // A new window starts clean: no debt carried.
    assert_eq!(gql(3600).remaining, 90);
}

#[test]
fn requests_in_flight_are_capped_and_released() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    let export = |t: u64| {
        e.check_request_at(&request("GET", "/export", &[]), at(t))
            .unwrap()
    };
    let a = export(0);
    let b = export(0);
    assert!(a.allowed && b.allowed);
    let c = export(1);
    assert_eq!((c.status, c.reason), (429, Reason::Concurrency));
    assert_eq!(c.retry_after, Duration::from_secs(1));
    assert_eq!((c.limit, c.remaining), (2, 0));
    assert!(
        c.headers
            .iter()
            .any(|(n, v)| *n == "Retry-After" && v == "1")
    );
    e.settle_at(&a, status(200), at(2)).unwrap();
    let d = export(2);
    assert!(d.allowed, "a settled request gives its place back");
    assert!(!export(2).allowed);
    // b and d never settle (a crashed worker): their places are released by
    // the store between in_flight_ttl and twice that.
    assert!(!export(59).allowed);
    assert!(export(120).allowed);
    // Settling a place the store already released frees nothing more.
    e.settle_at(&b, status(200), at(121)).unwrap();
    assert!(export(121).allowed);
    assert!(!export(121).allowed);
    let metrics = e.metrics();
    assert!(
        metrics.contains("floodgate_requests_total{rule=\"export\",outcome=\"concurrency\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("floodgate_in_flight{rule=\"export\"}"));
    assert!(metrics.contains("floodgate_settled_total 2"));
}

#[test]
fn settlements_and_concurrency_denials_are_events() {
    use floodgate::policy::{EventKind, LogLevel};
    use std::sync::Mutex;
    let e = Engine::from_toml_str(POLICY).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    e.set_event_sink(move |ev| {
        sink.lock().unwrap().push((
            ev.kind,
            ev.rule.as_deref().map(String::from),
            ev.status,
            ev.key.as_deref().map(String::from),
        ));
    });
    // A success on the login rule: its charge comes back (an event); a failure
    // keeps it (none).
    e.settle_at(&attempt(&e, "ann", 0), status(200), at(0))
        .unwrap();
    e.settle_at(&attempt(&e, "ann", 0), status(401), at(0))
        .unwrap();
    // The estimate stands (none); the real cost differs (one).
    let gql = |cost| {
        let v = e
            .check_request_at(&request("POST", "/graphql", &[]), at(0))
            .unwrap();
        e.settle_at(
            &v,
            Settle {
                status: 200,
                cost: Some(cost),
            },
            at(0),
        )
        .unwrap();
    };
    gql(10);
    gql(3);
    let export = || {
        e.check_request_at(&request("GET", "/export", &[]), at(0))
            .unwrap()
    };
    let _held = (export(), export());
    assert_eq!(export().reason, Reason::Concurrency);
    let seen = seen.lock().unwrap().clone();
    let s = |k, r: &str, st, key: &str| (k, Some(r.to_string()), st, Some(key.to_string()));
    assert_eq!(
        seen,
        [
            s(EventKind::Settled, "login", 200, "ann"),
            s(EventKind::Settled, "graphql", 200, "198.51.100.9"),
            s(EventKind::ConcurrencyLimited, "export", 429, "198.51.100.9"),
        ]
    );
    assert_eq!(EventKind::Settled.code(), "settled");
    assert_eq!(EventKind::ConcurrencyLimited.code(), "concurrency_limited");
    assert_eq!(EventKind::Settled.log_level(), LogLevel::Debug);
}

#[test]
fn a_later_denial_releases_the_place() {
    let text = r#"
[[rule]]
name = "slots"
match = "/report"
key = "ip"
quotas = ["1000/s"]
max_in_flight = 1

[[rule]]
name = "tight"
match = "/report"
key = "ip"
algorithm = "fixed_window"
quotas = ["1/h"]
"#;
    let e = Engine::from_toml_str(text).unwrap();
    let r = |t: u64| {
        e.check_request_at(&request("GET", "/report", &[]), at(t))
            .unwrap()
    };
    let first = r(0);
    assert!(first.allowed);
    e.settle_at(&first, status(200), at(0)).unwrap();
    // Denied by the second rule: the place taken by the first is given back.
    assert_eq!(r(1).reason, Reason::RateLimited);
    assert_eq!(e.in_flight("slots", b"198.51.100.9"), 0);
}

#[test]
fn config_errors_name_the_field() {
    let rule = |extra: &str| {
        format!(
            "[[rule]]\nname = \"r\"\nmatch = \"/**\"\nkey = \"ip\"\nquotas = [\"1/s\"]\n{extra}\n"
        )
    };
    for (extra, field) in [
        ("max_in_flight = 0", "max_in_flight"),
        ("max_in_flight = 70000", "max_in_flight"),
        (
            "max_in_flight = 2\nin_flight_ttl = \"soon\"",
            "in_flight_ttl",
        ),
        ("in_flight_ttl = \"5s\"", "in_flight_ttl"),
        (
            "count = \"failures\"\nfailure_status = \"600\"",
            "failure_status",
        ),
        ("failure_status = \"401\"", "failure_status"),
        ("count = \"sometimes\"", "`all`, `failures`, `successes`"),
        ("count = \"failures\"\nshadow = true", "count"),
        ("cost_from = \"header\"", "`request` or `response`"),
    ] {
        let e = Engine::from_toml_str(&rule(extra)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{extra}");
        assert!(e.to_string().contains(field), "{extra}: {e}");
    }
    let e = Engine::from_toml_str(&rule(
        "count = \"failures\"\nfailure_status = \"401,403,429-499\"",
    ))
    .unwrap();
    let v = e
        .check_request_at(&request("GET", "/", &[]), at(0))
        .unwrap();
    e.settle_at(&v, status(500), at(0)).unwrap();
    assert!(
        e.check_request_at(&request("GET", "/", &[]), at(0))
            .unwrap()
            .allowed,
        "500 is not a failure here: given back"
    );
}

#[test]
fn in_flight_never_exceeds_the_cap_under_threads() {
    let e = Arc::new(Engine::from_toml_str(POLICY).unwrap());
    let running = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (e, running, peak, admitted) =
                (e.clone(), running.clone(), peak.clone(), admitted.clone());
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    let v = e
                        .check_request_at(&request("GET", "/export", &[]), at(0))
                        .unwrap();
                    if v.allowed {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        admitted.fetch_add(1, Ordering::Relaxed);
                        std::hint::spin_loop();
                        running.fetch_sub(1, Ordering::SeqCst);
                        e.settle_at(&v, status(200), at(0)).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 2);
    assert!(admitted.load(Ordering::Relaxed) > 0);
    assert_eq!(
        e.in_flight("export", b"198.51.100.9"),
        0,
        "every place returned"
    );
}

proptest! {
    /// Settlements never over-admit and never give back more than was charged:
    /// the charges outstanding (admitted, not given back) never exceed the
    /// limit, a request is denied only when they reach it, and once everything
    /// is given back the key is exactly full again.
    #[test]
    fn settle_never_over_admits(ops in proptest::collection::vec((any::<bool>(), any::<bool>(), 0usize..8), 1..200)) {
        let e = Engine::from_toml_str(POLICY).unwrap();
        let mut open: Vec<Verdict> = Vec::new();
        let mut outstanding = 0u64;
        for (check, fail, pick) in ops {
            if check || open.is_empty() {
                let v = attempt(&e, "p", 0);
                prop_assert_eq!(v.allowed, outstanding < 5, "outstanding {}", outstanding);
                if v.allowed {
                    outstanding += 1;
                    open.push(v);
                }
            } else {
                let v = open.remove(pick % open.len());
                e.settle_at(&v, status(if fail { 401 } else { 200 }), at(0)).unwrap();
                prop_assert_eq!(e.settle_at(&v, status(200), at(0)).unwrap_err().kind(), ErrorKind::AlreadySettled);
                if !fail {
                    outstanding -= 1;
                }
            }
        }
        for v in open.drain(..) {
            e.settle_at(&v, status(200), at(0)).unwrap();
            outstanding -= 1;
        }
        let admitted = (0..10).filter(|_| attempt(&e, "p", 0).allowed).count() as u64;
        prop_assert_eq!(admitted, 5 - outstanding);
    }
}

/// On the shared-memory store the places and the settlements are every worker's.
#[cfg(all(feature = "shm", unix))]
#[test]
fn shared_memory_workers_share_places_and_refunds() {
    let path = std::env::temp_dir().join(format!("floodgate-life-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let text = format!(
        "[store]\nkind = \"shared_memory\"\npath = \"{}\"\nmax_keys = 4096\n{POLICY}",
        path.display()
    );
    let a = Engine::from_toml_str(&text).unwrap();
    let b = Engine::from_toml_str(&text).unwrap();
    let export = |e: &Engine| {
        e.check_request_at(&request("GET", "/export", &[]), at(0))
            .unwrap()
    };
    let va = export(&a);
    let vb = export(&b);
    assert!(va.allowed && vb.allowed);
    assert_eq!(export(&a).reason, Reason::Concurrency, "two places in all");
    a.settle_at(&va, status(200), at(0)).unwrap();
    assert!(
        export(&b).allowed,
        "a place given back by one worker serves another"
    );
    // Failed logins from both workers count together; successes are given back.
    for t in 0..4 {
        let e = if t % 2 == 0 { &a } else { &b };
        let v = attempt(e, "dave", t);
        e.settle_at(&v, status(if t < 2 { 200 } else { 401 }), at(t))
            .unwrap();
    }
    let left = (0..10)
        .filter(|t| attempt(if t % 2 == 0 { &a } else { &b }, "dave", 5).allowed)
        .count();
    assert_eq!(left, 3, "two failures counted, two successes given back");
    // A changed max_in_flight is another table.
    let other = text.replace("max_in_flight = 2", "max_in_flight = 3");
    assert_eq!(
        Engine::from_toml_str(&other).unwrap_err().kind(),
        ErrorKind::StoreMismatch
    );
    drop((a, b));
    let _ = std::fs::remove_file(&path);
}
