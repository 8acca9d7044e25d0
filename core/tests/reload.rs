//! Changing the policy without a restart (`Engine::reload*`): counters of
//! unchanged rules kept exactly, changed quotas carried over (or afresh when
//! the key changed), a bad policy refused
//! with the running one kept, settlements of earlier verdicts, bans and places
//! in flight carried over, and reloads under load that never over-admit.
#![cfg(feature = "policy")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use floodgate::ErrorKind;
use floodgate::policy::{Engine, Reason, Reload, Request, Settle, VerdictBuf};

const NOW: u64 = 1_800_000_000; // a whole hour

fn at(secs: u64) -> Duration {
    Duration::from_secs(NOW + secs)
}

fn req<'a>(method: &'a str, path: &'a str, ip: &str) -> Request<'a> {
    Request {
        method,
        path,
        client_ip: Some(ip.parse().unwrap()),
        headers: &[],
        body: None,
    }
}

const BEFORE: &str = r#"
[[rule]]
name = "login"
match = "POST /auth/login"
key = "ip"
algorithm = "fixed_window"
quotas = ["3/h"]

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
algorithm = "fixed_window"
quotas = ["5/h"]

[[rule]]
name = "export"
match = "GET /export"
key = "ip"
quotas = ["100/h"]
max_in_flight = 1

[[rule]]
name = "old"
match = "/old/**"
quotas = ["1/h"]
"#;

// login: a new pattern, the same limiting (kept); api: a new quota (carried);
// export: unchanged; old: gone; search: new.
const AFTER: &str = r#"
[[rule]]
name = "login"
match = ["POST /auth/login", "POST /v2/login"]
key = "ip"
algorithm = "fixed_window"
quotas = ["3/h"]

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
algorithm = "fixed_window"
quotas = ["10/h"]

[[rule]]
name = "export"
match = "GET /export"
key = "ip"
quotas = ["100/h"]
max_in_flight = 1

[[rule]]
name = "search"
match = "/search"
quotas = ["2/h"]
"#;

#[test]
fn unchanged_rules_keep_their_counters_changed_quotas_carry_them_over() {
    let e = Engine::from_toml_str(BEFORE).unwrap();
    let ip = "203.0.113.7";
    for t in 0..3 {
        assert!(
            e.check_request_at(&req("POST", "/auth/login", ip), at(t))
                .unwrap()
                .allowed
        );
    }
    for t in 0..5 {
        assert!(
            e.check_request_at(&req("GET", "/api/x", ip), at(t))
                .unwrap()
                .allowed
        );
    }
    assert!(
        !e.check_request_at(&req("GET", "/api/x", ip), at(5))
            .unwrap()
            .allowed
    );
    // An export in flight, settled after the reload.
    let export = e
        .check_request_at(&req("GET", "/export", ip), at(6))
        .unwrap();
    assert!(export.allowed);

    let report = e.reload_toml_str(AFTER).unwrap();
    assert_eq!(
        report,
        Reload {
            kept: vec!["login".into(), "export".into()],
            carried: vec!["api".into()],
            reset: vec![],
            added: vec!["search".into()],
            removed: vec!["old".into()],
        }
    );
    // login: still spent, on both of its patterns now.
    let v = e
        .check_request_at(&req("POST", "/auth/login", ip), at(7))
        .unwrap();
    assert_eq!(v.reason, Reason::RateLimited);
    let v = e
        .check_request_at(&req("POST", "/v2/login", ip), at(7))
        .unwrap();
    assert_eq!(
        v.reason,
        Reason::RateLimited,
        "the new pattern shares the counter"
    );
    // api: its count (5, the same hourly window) judged against the new 10.
    let admitted = (0..12)
        .filter(|&t| {
            e.check_request_at(&req("GET", "/api/x", ip), at(8 + t))
                .unwrap()
                .allowed
        })
        .count();
    assert_eq!(admitted, 5);
    // export: the place taken before the reload is still held...
    let v = e
        .check_request_at(&req("GET", "/export", ip), at(30))
        .unwrap();
    assert_eq!(v.reason, Reason::Concurrency);
    // ...until the verdict decided before the reload settles it.
    e.settle_at(
        &export,
        Settle {
            status: 200,
            cost: None,
        },
        at(31),
    )
    .unwrap();
    assert_eq!(e.in_flight("export", ip.as_bytes()), 0);
    assert!(
        e.check_request_at(&req("GET", "/export", ip), at(32))
            .unwrap()
            .allowed
    );
    // The counters carry on across the reload (Prometheus sees no reset).
    let metrics = e.metrics();
    let allowed = metrics
        .lines()
        .find(|l| l.contains("rule=\"api\"") && l.contains("outcome=\"allowed\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(allowed, Some(5 + 5), "{metrics}");
    // old: gone; search: new.
    assert_eq!(
        e.check_request_at(&req("GET", "/old/x", ip), at(33))
            .unwrap()
            .reason,
        Reason::NoRule
    );
    assert!(
        e.check_request_at(&req("GET", "/search", ip), at(33))
            .unwrap()
            .allowed
    );
    assert!(e.describe().contains("search"));
}

#[test]
fn a_bad_policy_is_refused_and_the_running_one_stays() {
    let e = Engine::from_toml_str(BEFORE).unwrap();
    let ip = "198.51.100.1";
    for t in 0..3 {
        assert!(
            e.check_request_at(&req("POST", "/auth/login", ip), at(t))
                .unwrap()
                .allowed
        );
    }
    // A typo never opens the gates.
    let typo = AFTER.replace("quotas = [\"3/h\"]", "quotas = [\"three/h\"]");
    let err = e.reload_toml_str(&typo).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.to_string().contains("line"), "{err}");
    let err = e.reload_toml_str("[[rule]\nname = ").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(
        e.reload_with("/nonexistent/policy.toml").is_err(),
        "a missing file"
    );
    let v = e
        .check_request_at(&req("POST", "/auth/login", ip), at(4))
        .unwrap();
    assert_eq!(
        v.reason,
        Reason::RateLimited,
        "the running policy and its counters stay"
    );
    assert!(e.describe().contains("old"));
}

#[test]
fn reloads_front_ends_could_not_follow_are_refused() {
    let e = Engine::from_toml_str(BEFORE).unwrap();
    // A header the first policy did not read: front ends do not pass it.
    let keyed = format!(
        "{BEFORE}\n[[rule]]\nname = \"k\"\nmatch = \"/k\"\nkey = \"header:x-tenant\"\nquotas = [\"1/s\"]\n"
    );
    let err = e.reload_toml_str(&keyed).unwrap_err();
    assert!(err.to_string().contains("x-tenant"), "{err}");
    // Settling where nothing settled: front ends hook responses only if so.
    let plain =
        Engine::from_toml_str("[[rule]]\nname = \"a\"\nmatch = \"/**\"\nquotas = [\"1/s\"]\n")
            .unwrap();
    let err = plain
        .reload_toml_str(
            "[[rule]]\nname = \"a\"\nmatch = \"/**\"\nquotas = [\"1/s\"]\nmax_in_flight = 2\n",
        )
        .unwrap_err();
    assert!(err.to_string().contains("settles"), "{err}");
    // The engine that could not reload is still the one it was.
    assert!(!plain.settles());
}

#[test]
fn bans_and_the_event_sink_carry_over() {
    let with_ban = |quota: &str| {
        format!(
            "[ban]\nafter = 1\nwithin = \"1h\"\nduration = \"1h\"\n\n\
             [[rule]]\nname = \"login\"\nmatch = \"POST /auth/login\"\nkey = \"ip\"\nquotas = [\"{quota}\"]\n"
        )
    };
    let e = Engine::from_toml_str(&with_ban("1/h")).unwrap();
    let events = Arc::new(AtomicU64::new(0));
    let seen = events.clone();
    e.set_event_sink(move |_| {
        seen.fetch_add(1, Ordering::Relaxed);
    });
    let ip = "192.0.2.44";
    assert!(
        e.check_request_at(&req("POST", "/auth/login", ip), at(0))
            .unwrap()
            .allowed
    );
    assert!(
        !e.check_request_at(&req("POST", "/auth/login", ip), at(1))
            .unwrap()
            .allowed
    );
    assert_eq!(
        e.check_request_at(&req("POST", "/auth/login", ip), at(2))
            .unwrap()
            .reason,
        Reason::Banned
    );
    // Even with the rule's quota changed (its counter carried over), the ban holds.
    let report = e.reload_toml_str(&with_ban("2/h")).unwrap();
    assert_eq!(report.carried, ["login"]);
    assert_eq!(
        e.check_request_at(&req("POST", "/auth/login", ip), at(3))
            .unwrap()
            .reason,
        Reason::Banned
    );
    // And the sink set before the reload hears the new policy's denials.
    let before = events.load(Ordering::Relaxed);
    let other = "192.0.2.45";
    for t in 4..7 {
        e.check_request_at(&req("POST", "/auth/login", other), at(t))
            .unwrap();
    }
    assert!(
        events.load(Ordering::Relaxed) > before,
        "the sink still hears"
    );
}

/// Threads decide while another thread reloads in a loop, between two
/// policies whose `api` rule differs only in its patterns: no error, and the
/// rule's counter is never lost nor doubled (exactly its limit is admitted
/// across all threads, at one instant).
#[test]
fn reloads_under_load_lose_no_counter_and_never_over_admit() {
    under_load(false);
}

/// The same through `check_request_into`, one buffer bound to the engine per
/// thread (`Engine::verdict_buf`): a bound buffer keeps the policy it last
/// decided with, and must follow every reload.
#[test]
fn reloads_under_load_through_reused_buffers_lose_no_counter() {
    under_load(true);
}

fn under_load(into: bool) {
    let a = "[[rule]]\nname = \"api\"\nmatch = \"/api/**\"\nkey = \"ip\"\nalgorithm = \"fixed_window\"\nquotas = [\"500/h\"]\n";
    let b = a.replace("\"/api/**\"", "[\"/api/**\", \"/v2/**\"]");
    let e = Arc::new(Engine::from_toml_str(a).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let reloads = {
        let (e, stop, count, b) = (e.clone(), stop.clone(), count.clone(), b.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = count.load(Ordering::Relaxed);
                let r = e.reload_toml_str(if n % 2 == 0 { &b } else { a }).unwrap();
                assert_eq!(r.kept, ["api"]);
                count.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let admitted: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (e, count) = (e.clone(), count.clone());
                s.spawn(move || {
                    let mut admitted = 0u64;
                    let mut checks = 0u64;
                    let mut buf = e.verdict_buf();
                    // Until 50 reloads happened meanwhile (and 1000 checks).
                    while checks < 1000 || count.load(Ordering::Relaxed) < 50 {
                        let r = req("GET", "/api/x", "203.0.113.99");
                        let allowed = if into {
                            e.check_request_into(&r, Some(at(0)), &mut buf).unwrap();
                            buf.verdict().allowed
                        } else {
                            e.check_request_at(&r, at(0)).unwrap().allowed
                        };
                        admitted += u64::from(allowed);
                        checks += 1;
                    }
                    admitted
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    stop.store(true, Ordering::Relaxed);
    reloads.join().unwrap();
    let n = count.load(Ordering::Relaxed);
    assert!(n >= 50);
    assert_eq!(
        admitted, 500,
        "checks across {n} reloads: exactly the limit"
    );
}

/// A buffer reused across checks (`check_request_into`), bound to an engine
/// or not, decides with the policy of the engine it is given at that check:
/// a reload's new quota at the very next check, and each engine's own policy
/// when one buffer serves two engines in turn.
#[test]
fn a_reused_buffer_follows_reloads_and_engines() {
    for bound in [true, false] {
        reused_buffer(bound);
    }
}

fn reused_buffer(bound: bool) {
    let rule = |limit: u32| {
        format!(
            "[[rule]]\nname = \"api\"\nmatch = \"/api/**\"\nkey = \"ip\"\nalgorithm = \"fixed_window\"\nquotas = [\"{limit}/h\"]\n"
        )
    };
    let e = Engine::from_toml_str(&rule(2)).unwrap();
    let other = Engine::from_toml_str(&rule(100)).unwrap();
    let mut buf = if bound {
        e.verdict_buf()
    } else {
        VerdictBuf::new()
    };
    let r = req("GET", "/api/x", "203.0.113.7");
    let check = |engine: &Engine, buf: &mut VerdictBuf| {
        engine.check_request_into(&r, Some(at(0)), buf).unwrap();
        (buf.verdict().allowed, buf.verdict().limit)
    };
    assert_eq!(check(&e, &mut buf), (true, 2));
    assert_eq!(check(&e, &mut buf), (true, 2));
    assert_eq!(check(&e, &mut buf), (false, 2), "the third of 2/h");
    // Another engine through the same buffer: its own policy and counters.
    assert_eq!(check(&other, &mut buf), (true, 100));
    // A reload to 5/h (the count of 2 carried): the next check through the
    // buffer that last decided with the old policy sees the new one.
    e.reload_toml_str(&rule(5)).unwrap();
    assert_eq!(check(&e, &mut buf), (true, 5));
    assert_eq!(check(&e, &mut buf), (true, 5));
    assert_eq!(check(&e, &mut buf), (true, 5));
    assert_eq!(check(&e, &mut buf), (false, 5));
    assert_eq!(check(&other, &mut buf), (true, 100));
}

#[test]
fn reload_reads_the_file_again() {
    let dir = std::env::temp_dir().join(format!("fg-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    std::fs::write(&file, BEFORE).unwrap();
    let e = Engine::from_path(&file).unwrap();
    std::fs::write(&file, AFTER).unwrap();
    let report = e.reload().unwrap();
    assert_eq!(report.added, ["search"]);
    assert_eq!(
        e.reload().unwrap().kept.len(),
        4,
        "the same file again: all kept"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// On the shared-memory store (every worker maps one table): a reload that
/// keeps each rule's limiting keeps the shared counters; one that would need
/// the table laid out again is refused, and the running policy stays.
#[cfg(all(feature = "shm", unix))]
#[test]
fn shared_memory_reloads_keep_the_table() {
    let path = std::env::temp_dir().join(format!("floodgate-reload-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = format!(
        "[store]\nkind = \"shared_memory\"\npath = \"{}\"\nmax_keys = 4096\n",
        path.display()
    );
    let a = Engine::from_toml_str(&format!("{store}{BEFORE}")).unwrap();
    let b = Engine::from_toml_str(&format!("{store}{BEFORE}")).unwrap();
    let ip = "203.0.113.70";
    for (t, e) in [&a, &b, &a].into_iter().enumerate() {
        assert!(
            e.check_request_at(&req("POST", "/auth/login", ip), at(t as u64))
                .unwrap()
                .allowed
        );
    }
    // Worker a reloads with a new login pattern: the table's counter stays.
    let patterns = BEFORE.replace(
        "match = \"POST /auth/login\"",
        "match = [\"POST /auth/login\", \"POST /v2/login\"]",
    );
    assert_eq!(
        a.reload_toml_str(&format!("{store}{patterns}"))
            .unwrap()
            .kept
            .len(),
        4
    );
    let v = a
        .check_request_at(&req("POST", "/v2/login", ip), at(5))
        .unwrap();
    assert_eq!(v.reason, Reason::RateLimited, "3 spent across both workers");
    // A new rule would need the table laid out again: refused.
    let err = a.reload_toml_str(&format!("{store}{AFTER}")).unwrap_err();
    assert!(err.to_string().contains("restart the workers"), "{err}");
    assert!(a.describe().contains("old"));
    let _ = std::fs::remove_file(&path);
}

/// A changed quota carries each key's state over, on the engine's clock:
/// GCRA keeps the used fraction of its burst, a window the units used,
/// judged against the new limit; a changed key starts afresh.
#[test]
fn changed_quotas_carry_each_key_over() {
    let policy = |quota: &str, algorithm: &str, key: &str| {
        format!(
            "[[rule]]\nname = \"api\"\nmatch = \"/api/**\"\nkey = \"{key}\"\n\
             quotas = [\"{quota}\"]\nalgorithm = \"{algorithm}\"\n"
        )
    };
    let get = |e: &Engine, ip: &str| e.check_request(&req("GET", "/api/x", ip)).unwrap();
    // GCRA: half of 10 spent is half of 100, and of 10 again.
    let e = Engine::from_toml_str(&policy("10/h", "gcra", "ip")).unwrap();
    for _ in 0..5 {
        assert!(get(&e, "198.51.100.1").allowed);
    }
    let report = e.reload_toml_str(&policy("100/h", "gcra", "ip")).unwrap();
    assert_eq!(report.carried, ["api"]);
    assert_eq!(
        get(&e, "198.51.100.1").remaining,
        49,
        "50 used of 100, then one more"
    );
    assert_eq!(
        get(&e, "198.51.100.2").remaining,
        99,
        "an unseen key is fresh"
    );
    e.reload_toml_str(&policy("10/h", "gcra", "ip")).unwrap();
    assert_eq!(
        get(&e, "198.51.100.1").remaining,
        3,
        "51 of 100 is 5 of 10, then one more"
    );
    // A window keeps its count: 7 used is over a new limit of 5, and leaves
    // 13 of 20.
    let w = Engine::from_toml_str(&policy("10/h", "fixed_window", "ip")).unwrap();
    for _ in 0..7 {
        assert!(get(&w, "198.51.100.3").allowed);
    }
    w.reload_toml_str(&policy("5/h", "fixed_window", "ip"))
        .unwrap();
    assert!(!get(&w, "198.51.100.3").allowed, "7 used of a new 5");
    w.reload_toml_str(&policy("20/h", "sliding_window", "ip"))
        .unwrap();
    assert_eq!(
        get(&w, "198.51.100.3").remaining,
        12,
        "7 used of 20, then one more"
    );
    // Another key: nothing to carry.
    let report = w
        .reload_toml_str(&policy("20/h", "sliding_window", "route"))
        .unwrap();
    assert_eq!(
        (report.carried.len(), report.reset.as_slice()),
        (0, &["api".to_string()][..])
    );
}
