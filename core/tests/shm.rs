//! The shared-memory store: the same decisions as the in-process store, one
//! count across every limiter (and process) that maps a table, typed errors for
//! files it cannot use, bounded under unique-key floods, and exact for the
//! survivors when worker processes are SIGKILLed mid-check.
#![cfg(all(unix, feature = "shm"))]
#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floodgate::{Algorithm, ErrorKind, FakeClock, Limiter, Quota};
use proptest::prelude::*;

/// A fresh path under the temporary directory (`/dev/shm` where it exists).
fn table_path(name: &str) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let unique = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let path = dir.join(format!("fg-test-{name}-{}-{unique}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

struct Removed(PathBuf);
impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn shared(
    path: &PathBuf,
    quotas: &[Quota],
    max_keys: usize,
) -> floodgate::Result<Limiter<FakeClock>> {
    Limiter::builder()
        .quotas(quotas.iter().copied())
        .max_keys(max_keys)
        .shared_memory(path)
        .build_with_clock(FakeClock::new())
}

fn q(text: &str) -> Quota {
    text.parse().unwrap()
}

fn algo(text: &str, a: Algorithm) -> Quota {
    q(text).with_algorithm(a).unwrap()
}

#[test]
fn two_limiters_on_one_table_share_one_count() {
    let path = table_path("share");
    let _rm = Removed(path.clone());
    for quotas in [
        vec![q("10/min")],
        vec![algo("10/min", Algorithm::FixedWindow)],
        vec![algo("10/min", Algorithm::SlidingWindow)],
        vec![q("10/min"), algo("100/h", Algorithm::FixedWindow)],
    ] {
        let _ = std::fs::remove_file(&path);
        let a = shared(&path, &quotas, 1000).unwrap();
        let b = shared(&path, &quotas, 1000).unwrap();
        let t = Duration::from_secs(1_800_000_000);
        let allowed = (0..40)
            .filter(|i| {
                let l = if i % 2 == 0 { &a } else { &b };
                l.check_at("client", 1, t).unwrap().allowed
            })
            .count();
        assert_eq!(allowed, 10, "{quotas:?}");
        assert!(!b.peek_at("client", t).unwrap().allowed);
        assert!(a.check_at("other", 1, t).unwrap().allowed);
        // A reset in one is seen by the other.
        assert!(a.reset("client").unwrap());
        assert!(b.check_at("client", 1, t).unwrap().allowed);
        assert_eq!(b.peek_at("client", t).unwrap().remaining, 9);
    }
}

#[test]
fn refunds_and_peeks_store_nothing_new() {
    let path = table_path("peek");
    let _rm = Removed(path.clone());
    let l = shared(&path, &[q("5/min")], 100).unwrap();
    let t = Duration::from_secs(1_800_000_000);
    assert_eq!(l.peek_at("k", t).unwrap().remaining, 5);
    l.refund_at("k", 3, t).unwrap();
    assert_eq!(l.len(), 0);
    assert!(l.check_at("k", 5, t).unwrap().allowed);
    l.refund_at("k", 2, t).unwrap();
    assert!(l.check_at("k", 2, t).unwrap().allowed);
    assert!(!l.check_at("k", 1, t).unwrap().allowed);
}

#[test]
fn a_table_made_for_other_quotas_or_another_size_is_refused() {
    let path = table_path("mismatch");
    let _rm = Removed(path.clone());
    shared(&path, &[q("10/s")], 1000).unwrap();
    for (quotas, keys) in [
        (vec![q("11/s")], 1000),
        (vec![q("10/s")], 2000),
        (vec![q("10/s"), q("100/h")], 500),
    ] {
        let e = shared(&path, &quotas, keys).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StoreMismatch, "{e}");
    }
    assert!(shared(&path, &[q("10/s")], 1000).is_ok());
}

#[test]
fn the_sliding_log_and_oversized_window_limits_are_refused() {
    let path = table_path("refused");
    let _rm = Removed(path.clone());
    let e = shared(&path, &[algo("10/s", Algorithm::SlidingLog)], 100).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidOption);
    assert!(e.to_string().contains("sliding_window"), "{e}");
    let big = Quota::per_second(5_000_000)
        .unwrap()
        .with_algorithm(Algorithm::SlidingWindow)
        .unwrap();
    assert_eq!(
        shared(&path, &[big], 100).unwrap_err().kind(),
        ErrorKind::InvalidOption
    );
    assert!(!path.exists());
}

#[test]
fn unusable_files_are_typed_errors_never_crashes() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let path = table_path("corrupt");
    let _rm = Removed(path.clone());
    // Garbage of every kind of length: empty, shorter than the header, a header
    // of noise, a valid length of noise.
    for len in [0usize, 10, 4096, 4096 + 16 * 1000, 4096 + 16 * 1000 + 3] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = shared(&path, &[q("10/s")], 1000).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StoreMismatch, "{len}: {e}");
    }
    // A valid table with its slot count rewritten: refused, nothing read out of bounds.
    std::fs::remove_file(&path).unwrap();
    shared(&path, &[q("10/s")], 1000).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        shared(&path, &[q("10/s")], 1000).unwrap_err().kind(),
        ErrorKind::StoreMismatch
    );
    // Other users may read it: refused.
    std::fs::remove_file(&path).unwrap();
    shared(&path, &[q("10/s")], 1000).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = shared(&path, &[q("10/s")], 1000).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StoreUnavailable, "{e}");
    // A symlink (to a table or anything else) is never followed.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = table_path("link");
    let _rm_link = Removed(link.clone());
    symlink(&path, &link).unwrap();
    let e = shared(&link, &[q("10/s")], 1000).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StoreUnavailable);
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // A directory where the file should be.
    let dir = table_path("dir");
    std::fs::create_dir(&dir).unwrap();
    assert!(shared(&dir, &[q("10/s")], 1000).is_err());
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn new_tables_are_private_to_their_user() {
    use std::os::unix::fs::PermissionsExt;
    let path = table_path("mode");
    let _rm = Removed(path.clone());
    let l = shared(&path, &[q("10/s")], 1000).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // 16 bytes per key slot for one GCRA quota, plus a 4 KiB header.
    assert_eq!(meta.len(), 4096 + 16 * 1000);
    assert_eq!(l.memory_bytes(), 4096 + 16 * 1000);
    assert_eq!(l.capacity(), 1000);
}

#[test]
fn a_table_from_an_earlier_boot_is_replaced() {
    let path = table_path("boot");
    let _rm = Removed(path.clone());
    let t = Duration::from_secs(1_800_000_000);
    let l = shared(&path, &[q("1/h")], 100).unwrap();
    assert!(l.check_at("k", 1, t).unwrap().allowed);
    drop(l);
    // Rewrite the boot id (header words 4 and 5).
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[32..48].copy_from_slice(&[0xAB; 16]);
    std::fs::write(&path, &bytes).unwrap();
    let l = shared(&path, &[q("1/h")], 100).unwrap();
    assert!(l.check_at("k", 1, t).unwrap().allowed, "a fresh table");
}

#[test]
fn a_flood_of_unique_keys_stays_in_the_table() {
    let path = table_path("flood");
    let _rm = Removed(path.clone());
    let l = shared(&path, &[q("5/min")], 1024).unwrap();
    let t = Duration::from_secs(1_800_000_000);
    // A client that is over its limit.
    for _ in 0..5 {
        assert!(l.check_at("victim", 1, t).unwrap().allowed);
    }
    for i in 0..100_000u32 {
        let d = l.check_at(i.to_le_bytes(), 1, t).unwrap();
        assert!(d.allowed);
    }
    assert!(l.len() <= l.capacity());
    assert!(l.evicted() > 90_000, "{}", l.evicted());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096 + 16 * 1024);
    // Expired slots are reused before live ones are evicted: a minute later the
    // whole flood has expired, and new keys (a third of the table) evict nothing.
    let before = l.evicted();
    let later = t + Duration::from_secs(61);
    for i in 0..300u32 {
        assert!(l.check_at(format!("late{i}"), 1, later).unwrap().allowed);
    }
    assert_eq!(l.evicted(), before);
}

#[test]
fn threads_on_one_hot_key_admit_exactly_the_limit() {
    let path = table_path("threads");
    let _rm = Removed(path.clone());
    for quotas in [
        vec![q("1000/h")],
        vec![algo("1000/h", Algorithm::SlidingWindow), q("5000/h")],
    ] {
        let _ = std::fs::remove_file(&path);
        let limiters: Vec<_> = (0..4)
            .map(|_| shared(&path, &quotas, 1000).unwrap())
            .collect();
        let t = Duration::from_secs(1_800_000_000);
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = limiters
                .iter()
                .map(|l| {
                    s.spawn(move || {
                        (0..2000)
                            .filter(|_| l.check_at("hot", 1, t).unwrap().allowed)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 1000, "{quotas:?}");
    }
}

// The in-process store and the shared one decide every sequence the same way.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn same_decisions_as_the_in_process_store(
        which in 0usize..4,
        steps in prop::collection::vec((0u64..400_000_000, 1u64..4, 0usize..3), 1..150),
    ) {
        let quotas = match which {
            0 => vec![q("5/s burst 8")],
            1 => vec![algo("6/s", Algorithm::FixedWindow)],
            2 => vec![algo("6/s", Algorithm::SlidingWindow)],
            _ => vec![q("4/s"), algo("10/5s", Algorithm::SlidingWindow), algo("12/3s", Algorithm::FixedWindow)],
        };
        let path = table_path("prop");
        let _rm = Removed(path.clone());
        let memory = Limiter::builder().quotas(quotas.iter().copied()).build().unwrap();
        let shm = shared(&path, &quotas, 256).unwrap();
        let mut now = 1_800_000_000_000_000_000u64;
        for (dt, cost, key) in steps {
            now += dt;
            let t = Duration::from_nanos(now);
            let key = ["a", "b", "c"][key];
            let m = memory.check_at(key, cost, t).unwrap();
            let s = shm.check_at(key, cost, t).unwrap();
            prop_assert_eq!(m, s);
            prop_assert_eq!(memory.peek_at(key, t).unwrap(), shm.peek_at(key, t).unwrap());
        }
    }
}

/// The worker of the crash test: checks `hot` until it has seen 200 denials in
/// a row, printing one line per admitted check (flushed, so a SIGKILLed
/// worker's admissions are still counted, less at most the one in flight).
#[test]
#[ignore = "run by crash_test_killed_workers_leave_the_table_exact as a child process"]
fn crash_worker() {
    let Ok(path) = std::env::var("FG_SHM_WORKER") else {
        return;
    };
    let l = Limiter::builder()
        .quota(q("50000/h"))
        .quota(algo("100000/h", Algorithm::FixedWindow))
        .max_keys(4096)
        .shared_memory(&path)
        .build()
        .unwrap();
    let mut out = std::io::stdout().lock();
    let mut denials = 0;
    let mut i = 0u64;
    while denials < 200 {
        // Other keys between hot checks (300 per worker, within the table), so a
        // kill can land anywhere: in a hot-key CAS, in an insert, in a refund.
        let _ = l
            .check(format!("noise{}-{}", std::process::id(), i % 300), 1)
            .unwrap();
        i += 1;
        if l.check("hot", 1).unwrap().allowed {
            denials = 0;
            writeln!(out, "ok").unwrap();
            out.flush().unwrap();
        } else {
            denials += 1;
        }
    }
}

#[test]
fn crash_test_killed_workers_leave_the_table_exact() {
    let path = table_path("crash");
    let _rm = Removed(path.clone());
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args([
                "--exact",
                "crash_worker",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FG_SHM_WORKER", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut workers: Vec<_> = (0..6).map(|_| spawn()).collect();
    // Kill three of them at staggered moments, while all six are checking.
    let mut killed = 0;
    for (i, w) in workers.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
        std::thread::sleep(Duration::from_millis(5 + 5 * i as u64));
        // Killed while still running (try_wait: not yet exited).
        if matches!(w.try_wait(), Ok(None)) && w.kill().is_ok() {
            killed += 1;
        }
    }
    let mut admitted = 0;
    for mut w in workers {
        let out = w.stdout.take().unwrap();
        admitted += BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l == "ok")
            .count();
        let _ = w.wait();
    }
    // Exact: never more than the limit; at most one admission per killed worker
    // not printed (it was killed between the CAS and the print) or lost (killed
    // between its two quotas' charges).
    eprintln!("crash test: {admitted} admitted, {killed} workers killed mid-run");
    assert!(
        killed >= 1,
        "the kills came after the workers ended: {killed}"
    );
    assert!(admitted <= 50000, "{admitted}");
    assert!(
        admitted + 2 * killed >= 50000,
        "{admitted} admitted, {killed} killed"
    );
    // The table still answers, for the hot key and for new keys, and no key is
    // stuck: an hour later the hot key has its whole limit again.
    let l = Limiter::builder()
        .quota(q("50000/h"))
        .quota(algo("100000/h", Algorithm::FixedWindow))
        .max_keys(4096)
        .shared_memory(&path)
        .build()
        .unwrap();
    // Spent: only what refilled since the workers stopped (one unit per 72 ms).
    assert!(l.peek("hot").unwrap().remaining < 50, "{:?}", l.peek("hot"));
    assert!(l.check("a new client", 1).unwrap().allowed);
    let later = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(7300);
    assert_eq!(l.peek_at("hot", later).unwrap().remaining, 50000);
}

/// A policy on the shared-memory store: engines built from the same policy (one
/// per worker process in production) share every rule's counts.
#[cfg(feature = "policy")]
mod policy {
    use super::*;
    use floodgate::policy::{Engine, Request};

    fn policy(path: &std::path::Path, login: &str) -> String {
        format!(
            r#"
[store]
kind = "shared_memory"
path = "{}"
max_keys = 4096

[[rule]]
name = "login"
match = "POST /auth/login"
key = "ip"
quotas = ["{login}"]

[[rule]]
name = "api"
match = "/api/**"
key = "ip"
algorithm = "sliding_window"
quotas = ["20/min"]
"#,
            path.display()
        )
    }

    fn request<'a>(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            client_ip: Some("203.0.113.7".parse().unwrap()),
            headers: &[],
            body: None,
        }
    }

    #[test]
    fn engines_on_one_table_share_every_rule() {
        let path = table_path("policy");
        let _rm = Removed(path.clone());
        let a = Engine::from_toml_str(&policy(&path, "5/min")).unwrap();
        let b = Engine::from_toml_str(&policy(&path, "5/min")).unwrap();
        let login = (0..12)
            .filter(|i| {
                let e = if i % 2 == 0 { &a } else { &b };
                e.check_request(&request("POST", "/auth/login"))
                    .unwrap()
                    .allowed
            })
            .count();
        assert_eq!(login, 5);
        let api = (0..50)
            .filter(|i| {
                let e = if i % 3 == 0 { &a } else { &b };
                e.check_request(&request("GET", "/api/items"))
                    .unwrap()
                    .allowed
            })
            .count();
        assert_eq!(
            api, 20,
            "the rules' keys are apart: login's count is not api's"
        );
        // Both engines read one clock: their times agree to well under a millisecond.
        let gap = a.now().abs_diff(b.now());
        assert!(gap < Duration::from_millis(50), "{gap:?}");
    }

    #[test]
    fn a_changed_policy_is_refused_not_mixed() {
        let path = table_path("policy-change");
        let _rm = Removed(path.clone());
        let _a = Engine::from_toml_str(&policy(&path, "5/min")).unwrap();
        let e = Engine::from_toml_str(&policy(&path, "6/min")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::StoreMismatch, "{e}");
    }

    #[test]
    fn policy_errors_name_the_field() {
        let path = table_path("policy-errors");
        let _rm = Removed(path.clone());
        let no_path = "[store]\nkind = \"shared_memory\"\n[[rule]]\nname = \"a\"\nmatch = \"/**\"\nkey = \"ip\"\nquotas = [\"1/s\"]\n";
        let e = Engine::from_toml_str(no_path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("store.path"), "{e}");
        let log = policy(&path, "5/min").replace("\"sliding_window\"", "\"sliding_log\"");
        let e = Engine::from_toml_str(&log).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("rule \"api\""), "{e}");
        assert!(!path.exists(), "nothing created for a policy that fails");
    }

    #[test]
    fn a_ban_earned_in_one_worker_holds_in_every_worker() {
        use floodgate::policy::Reason;
        let path = table_path("bans");
        let _rm = Removed(path.clone());
        let text = policy(&path, "3/min")
            + "\n[ban]\nafter = 2\nwithin = \"1m\"\nduration = \"10m\"\nescalate = 3.0\nmax_duration = \"1h\"\nstatus = 403\n";
        let a = Engine::from_toml_str(&text).unwrap();
        let b = Engine::from_toml_str(&text).unwrap();
        let t0 = 1_800_000_000u64;
        let at = |s: u64| Duration::from_secs(t0 + s);
        let login = |e: &Engine, s: u64| {
            e.check_request_at(&request("POST", "/auth/login"), at(s))
                .unwrap()
        };
        for s in 0..3 {
            assert!(login(if s % 2 == 0 { &a } else { &b }, s).allowed);
        }
        // One strike in each worker: together they make the second, which bans.
        assert_eq!(login(&a, 3).reason, Reason::RateLimited);
        let v = login(&b, 4);
        assert_eq!(
            (v.status, v.reason),
            (403, Reason::Banned),
            "strikes count across workers"
        );
        assert_eq!(v.retry_after, Duration::from_secs(600));
        let v = login(&a, 300);
        assert_eq!(
            (v.status, v.reason, v.retry_after),
            (403, Reason::Banned, Duration::from_secs(304))
        );
        assert!(login(&b, 604).allowed, "the ban ends everywhere");
        login(&a, 605);
        login(&b, 606);
        login(&a, 607);
        let v = login(&b, 608);
        assert_eq!(
            (v.reason, v.retry_after),
            (Reason::Banned, Duration::from_secs(1800)),
            "escalates across workers"
        );
        // A worker started later sees the ban.
        let c = Engine::from_toml_str(&text).unwrap();
        assert_eq!(login(&c, 700).reason, Reason::Banned);
        // A changed [ban] is another table.
        let other = text.replace("duration = \"10m\"", "duration = \"11m\"");
        assert_eq!(
            Engine::from_toml_str(&other).unwrap_err().kind(),
            ErrorKind::StoreMismatch
        );
    }

    #[test]
    fn adaptive_tightening_counts_every_worker() {
        let path = table_path("adaptive");
        let _rm = Removed(path.clone());
        let text = format!(
            r#"
[store]
kind = "shared_memory"
path = "{}"
max_keys = 4096

[[rule]]
name = "search"
match = "/search"
key = "ip"
algorithm = "fixed_window"
quotas = ["10/min"]
adaptive = {{ threshold = 0.5, window = "1m", min_requests = 40, factor = 2 }}
"#,
            path.display()
        );
        let a = Engine::from_toml_str(&text).unwrap();
        let b = Engine::from_toml_str(&text).unwrap();
        let t0 = 1_800_000_000u64; // a whole minute
        let allowed_in_minute = |m: u64, n: u64| {
            (0..n)
                .filter(|i| {
                    let e = if i % 2 == 0 { &a } else { &b };
                    let at = Duration::from_secs(t0 + 60 * m) + Duration::from_millis(i * 100);
                    e.check_request_at(&request("GET", "/search"), at)
                        .unwrap()
                        .allowed
                })
                .count()
        };
        // 50 requests, 40 denied: each worker alone saw 25, under min_requests.
        assert_eq!(allowed_in_minute(0, 50), 10);
        assert_eq!(
            allowed_in_minute(1, 50),
            5,
            "tightened in both workers by their counts together: each request costs 2"
        );
        // A quiet minute lifts it everywhere.
        assert_eq!(allowed_in_minute(3, 20), 10);
        let other = text.replace("factor = 2", "factor = 3");
        assert_eq!(
            Engine::from_toml_str(&other).unwrap_err().kind(),
            ErrorKind::StoreMismatch,
            "a changed [adaptive] is another table"
        );
    }
}
