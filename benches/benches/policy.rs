//! `Engine::check_request` on the request layer's main paths, beside the bare
//! limiter check it is built on (same run). See benches/README.md.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use floodgate::Limiter;
use floodgate::policy::{Engine, Request, VerdictBuf};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/keys");
const NOW: u64 = 1_700_000_000;

fn engine(policy: &str) -> Engine {
    Engine::from_toml_str(&policy.replace("KEYS", KEYS)).unwrap()
}

/// Benches `engine` deciding `GET /api/items` from each of `clients` in
/// turn, at `at`, into one reused buffer.
fn per_client_into(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    engine: &Engine,
    clients: &[IpAddr],
    at: Duration,
) {
    let mut out = VerdictBuf::new();
    let mut i = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % clients.len();
            let req = Request {
                method: "GET",
                path: "/api/items",
                client_ip: Some(clients[i]),
                headers: &[],
                body: None,
            };
            engine.check_request_into(&req, Some(at), &mut out).unwrap();
            black_box(out.verdict().allowed)
        })
    });
}

/// Where a bench's check decides: a fresh `Verdict` (`check_request_at`), a
/// reused `VerdictBuf`, or a reused one bound to the engine
/// (`Engine::verdict_buf`, as the Node handle keeps: no `ArcSwap::load`).
#[derive(Clone, Copy, PartialEq)]
enum Out {
    Fresh,
    Reused,
    Bound,
}

/// The buffer a bench deciding into `out` keeps.
fn buffer(engine: &Engine, out: Out) -> VerdictBuf {
    match out {
        Out::Bound => engine.verdict_buf(),
        Out::Fresh | Out::Reused => VerdictBuf::new(),
    }
}

fn ips(n: u32) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::from((0x6440_0000u32 | i).to_be_bytes()))
        .collect()
}

fn tokens(alg: Algorithm, key: &EncodingKey, kid: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut h = Header::new(alg);
            h.kid = Some(kid.into());
            let claims = json!({"sub": format!("user-{i}"), "exp": NOW + 3600, "aud": "api", "iss": "https://auth.example.com"});
            format!("Bearer {}", encode(&h, &claims, key).unwrap())
        })
        .collect()
}

const JWT: &str = r#"
[jwt]
algorithms = ["HS256", "RS256", "ES256"]
issuer = "https://auth.example.com"
audience = "api"
secret_file = "KEYS/hs_secret.txt"
keys = [
  { kid = "rsa", algorithm = "RS256", pem_file = "KEYS/rsa_public.pem" },
  { kid = "ec", algorithm = "ES256", pem_file = "KEYS/ec_public.pem" },
]
verify_limit = "off"
cache_size = CACHE

[[rule]]
name = "user"
match = "/api/**"
quotas = ["1000000/s"]
key = "claim:sub"
"#;

fn requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_request");
    let at = Duration::from_secs(NOW);
    let clients = ips(10_000);

    // Baseline: the bare limiter check on the same keys.
    let limiter = Limiter::new("1000000/s".parse().unwrap()).unwrap();
    let keys: Vec<String> = clients.iter().map(IpAddr::to_string).collect();
    let mut i = 0;
    group.bench_function("baseline_limiter_check_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check_at(&keys[i], 1, at).unwrap().allowed)
        })
    });

    let anon = engine(
        "[[rule]]\nname = \"anonymous\"\nmatch = \"/api/**\"\nquotas = [\"1000000/s\"]\nkey = \"ip\"\n",
    );
    // Fresh verdicts, then the same check into a reused VerdictBuf
    // (`check_request_into`): no allocation for the identity and header
    // strings; then into one bound to the engine.
    for (name, how) in [
        ("anonymous_per_ip_10k_ips", Out::Fresh),
        ("anonymous_per_ip_10k_ips_into", Out::Reused),
        ("anonymous_per_ip_10k_ips_into_bound", Out::Bound),
    ] {
        let mut out = buffer(&anon, how);
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % clients.len();
                let req = Request {
                    method: "GET",
                    path: "/api/items",
                    client_ip: Some(clients[i]),
                    headers: &[],
                    body: None,
                };
                if how != Out::Fresh {
                    anon.check_request_into(&req, Some(at), &mut out).unwrap();
                    black_box(out.verdict().allowed)
                } else {
                    black_box(anon.check_request_at(&req, at).unwrap().allowed)
                }
            })
        });
    }

    // A flood: the same addresses at 1 request per minute each, so after each
    // address's first request every check is a denial (a 429 with its
    // headers, `Retry-After` among them), decided into a reused buffer.
    let tight =
        engine("[[rule]]\nname = \"tight\"\nmatch = \"/**\"\nquotas = [\"1/min\"]\nkey = \"ip\"\n");
    per_client_into(
        &mut group,
        "denied_per_ip_10k_ips_into",
        &tight,
        &clients,
        at,
    );

    // A blocklist of 10,000 networks (`deny_ips`, every other /24, so none
    // merges with the next; none holds a client) before the per-IP rule: what
    // a long list costs each request.
    let blocklist: Vec<String> = (0..10_000u32)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 128, i % 128 * 2))
        .collect();
    let blocked = engine(&format!(
        "[lists]\ndeny_ips = [{}]\n\n[[rule]]\nname = \"anonymous\"\nmatch = \"/api/**\"\nquotas = [\"1000000/s\"]\nkey = \"ip\"\n",
        blocklist.join(", ")
    ));
    per_client_into(
        &mut group,
        "deny_list_10k_networks_per_ip_into",
        &blocked,
        &clients,
        at,
    );

    // The example policy (examples/policy.toml: lists, bans, a JWT section and
    // seven rules), an anonymous client: its `anonymous` and `everything` rules
    // both charge. Fresh verdicts, a reused buffer, a bound one. The clock moves 1 ms
    // per request, so each of the 10k addresses comes back every 10 s: inside
    // its 30/min, and every request takes the allowed path.
    let example = Engine::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy.toml"
    ))
    .unwrap();
    // One clock for all three: each bench goes on where the last stopped.
    let mut n = 0u64;
    for (name, how) in [
        ("example_policy_anonymous", Out::Fresh),
        ("example_policy_anonymous_into", Out::Reused),
        ("example_policy_anonymous_into_bound", Out::Bound),
    ] {
        let mut out = buffer(&example, how);
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let t = at + Duration::from_millis(n);
                let req = Request {
                    method: "GET",
                    path: "/api/items",
                    client_ip: Some(clients[n as usize % clients.len()]),
                    headers: &[],
                    body: None,
                };
                let allowed = if how != Out::Fresh {
                    example.check_request_into(&req, Some(t), &mut out).unwrap();
                    out.verdict().allowed
                } else {
                    example.check_request_at(&req, t).unwrap().allowed
                };
                assert!(allowed);
                black_box(allowed)
            })
        });
    }

    let api = engine(
        "[[rule]]\nname = \"api-key\"\nmatch = \"/api/**\"\nquotas = [\"1000000/s\"]\nkey = \"api_key\"\n",
    );
    let api_keys: Vec<String> = (0..10_000).map(|i| format!("k_live_{i:016x}")).collect();
    let mut i = 0;
    group.bench_function("api_key_10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % api_keys.len();
            let headers = [
                ("accept", "application/json"),
                ("x-api-key", api_keys[i].as_str()),
            ];
            let req = Request {
                method: "GET",
                path: "/api/items",
                client_ip: Some(clients[i]),
                headers: &headers,
                body: None,
            };
            black_box(api.check_request_at(&req, at).unwrap().allowed)
        })
    });

    let cached = engine(&JWT.replace("CACHE", "10000"));
    let hs = EncodingKey::from_secret(&std::fs::read(format!("{KEYS}/hs_secret.txt")).unwrap());
    let hs_tokens = tokens(Algorithm::HS256, &hs, "hs", 100);
    let mut i = 0;
    group.bench_function("jwt_hs256_cached_100_tokens", |b| {
        b.iter(|| {
            i = (i + 1) % hs_tokens.len();
            let headers = [("authorization", hs_tokens[i].as_str())];
            let req = Request {
                method: "GET",
                path: "/api/items",
                client_ip: Some(clients[i]),
                headers: &headers,
                body: None,
            };
            let v = cached.check_request_at(&req, at).unwrap();
            assert!(v.authenticated);
            black_box(v.allowed)
        })
    });

    // Uncached: 1000 distinct tokens through a 16-entry cache, so (nearly) every
    // request verifies a signature.
    let uncached = engine(&JWT.replace("CACHE", "16"));
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(format!("{KEYS}/rsa_private.pem")).unwrap())
        .unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(format!("{KEYS}/ec_private.pem")).unwrap())
        .unwrap();
    for (name, toks) in [
        (
            "jwt_rs256_uncached",
            tokens(Algorithm::RS256, &rsa, "rsa", 1000),
        ),
        (
            "jwt_es256_uncached",
            tokens(Algorithm::ES256, &ec, "ec", 1000),
        ),
        (
            "jwt_hs256_uncached",
            tokens(Algorithm::HS256, &hs, "hs", 1000),
        ),
    ] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % toks.len();
                let headers = [("authorization", toks[i].as_str())];
                let req = Request {
                    method: "GET",
                    path: "/api/items",
                    client_ip: Some(clients[i % clients.len()]),
                    headers: &headers,
                    body: None,
                };
                let v = uncached.check_request_at(&req, at).unwrap();
                assert!(v.authenticated);
                black_box(v.allowed)
            })
        });
    }
    // A login keyed by the body's username (`key = "body:username"`), as
    // JSON and as a form, beside the same rule keyed by the address: what
    // reading the field costs. 10k users, each body ~70 bytes.
    let logins = |key: &str| {
        engine(&format!(
            "[[rule]]\nname = \"login\"\nmatch = \"POST /auth/login\"\nquotas = [\"1000000/s\"]\nkey = \"{key}\"\n"
        ))
    };
    let json_bodies: Vec<String> = (0..10_000)
        .map(|i| {
            format!(r#"{{"username":"user-{i}@example.com","password":"correct horse battery"}}"#)
        })
        .collect();
    let form_bodies: Vec<String> = (0..10_000)
        .map(|i| format!("username=user-{i}%40example.com&password=correct+horse+battery"))
        .collect();
    for (name, key, bodies, content_type) in [
        (
            "login_keyed_by_ip_into",
            "ip",
            &json_bodies,
            "application/json",
        ),
        (
            "login_keyed_by_body_json_into",
            "body:username",
            &json_bodies,
            "application/json",
        ),
        (
            "login_keyed_by_body_form_into",
            "body:username",
            &form_bodies,
            "application/x-www-form-urlencoded",
        ),
    ] {
        let e = logins(key);
        let mut out = VerdictBuf::new();
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % bodies.len();
                let headers = [("content-type", content_type)];
                let req = Request {
                    method: "POST",
                    path: "/auth/login",
                    client_ip: Some(clients[i]),
                    headers: &headers,
                    body: Some(bodies[i].as_bytes()),
                };
                e.check_request_into(&req, Some(at), &mut out).unwrap();
                assert!(out.verdict().allowed);
                black_box(out.verdict().allowed)
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// The request lifecycle: a check alone beside a check then its settlement,
/// on the same rule except for `count = "failures"` (in memory, 10k clients,
/// each request settled as a success: its charge given back), and with
/// `max_in_flight` (a place taken, then freed).
fn lifecycle(c: &mut Criterion) {
    use floodgate::policy::Settle;
    let mut group = c.benchmark_group("lifecycle");
    let at = Duration::from_secs(NOW);
    let clients = ips(10_000);
    let rule = "[[rule]]\nname = \"login\"\nmatch = \"POST /login\"\nquotas = [\"1000000/s\"]\nkey = \"ip\"\n";
    for (name, extra, settle) in [
        ("check_alone", "", false),
        (
            "check_then_settle_failures_only",
            "count = \"failures\"\n",
            true,
        ),
        (
            "check_then_settle_max_in_flight",
            "max_in_flight = 100\n",
            true,
        ),
    ] {
        let e = engine(&format!("{rule}{extra}"));
        let mut out = VerdictBuf::new();
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % clients.len();
                let req = Request {
                    method: "POST",
                    path: "/login",
                    client_ip: Some(clients[i]),
                    headers: &[],
                    body: None,
                };
                e.check_request_into(&req, Some(at), &mut out).unwrap();
                if settle {
                    e.settle_at(
                        out.verdict(),
                        Settle {
                            status: 200,
                            cost: None,
                        },
                        at,
                    )
                    .unwrap();
                }
                black_box(out.verdict().allowed)
            })
        });
    }
    group.finish();
}

/// Calendar quotas: a fixed window of a day beside the same limit per
/// calendar day in UTC, and per calendar month in Paris (in memory, 10k
/// clients). What a calendar rule adds is working out the window of now in
/// its zone (`jiff`) on each check.
fn calendar(c: &mut Criterion) {
    let mut group = c.benchmark_group("calendar");
    let at = Duration::from_secs(NOW);
    let clients = ips(10_000);
    let rule = "[[rule]]\nname = \"plan\"\nmatch = \"/api/**\"\nkey = \"ip\"\n";
    for (name, extra) in [
        (
            "fixed_window_day",
            "quotas = [\"1000000000/day\"]\nalgorithm = \"fixed_window\"\n",
        ),
        (
            "calendar_day_utc",
            "quotas = [\"1000000000/day\"]\ncalendar = true\n",
        ),
        (
            "calendar_month_paris",
            "quotas = [\"1000000000/month\"]\ncalendar = true\ntime_zone = \"Europe/Paris\"\n",
        ),
    ] {
        let e = engine(&format!("{rule}{extra}"));
        per_client_into(&mut group, name, &e, &clients, at);
    }
    group.finish();
}

/// One engine checked by one thread, then by two at once, each with its own
/// addresses and `VerdictBuf` (the way the Node and Python bindings and a
/// multi-threaded server call it): criterion's time is the wall time per
/// check, so two threads that never touched a shared cache line would halve
/// it. What stays above half is what the threads share (counters, reference
/// counts, locks).
fn threads(c: &mut Criterion) {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    let mut group = c.benchmark_group("check_request_threads");
    let clients = ips(20_000);
    let per_ip = engine(
        "[[rule]]\nname = \"anonymous\"\nmatch = \"/api/**\"\nquotas = [\"1000000/s\"]\nkey = \"ip\"\n",
    );
    let example = Engine::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy.toml"
    ))
    .unwrap();
    // The clock moves 1 ms per check of each thread and never goes back
    // between runs: every address comes back 10-20 s later, inside its quotas.
    let clock = AtomicU64::new(0);
    for (name, engine) in [("per_ip", &per_ip), ("example_policy", &example)] {
        for threads in [1usize, 2] {
            group.bench_function(format!("{name}_{threads}t"), |b| {
                b.iter_custom(|iters| {
                    let per_thread = iters / threads as u64;
                    let base = clock.fetch_add(per_thread, Ordering::Relaxed);
                    let barrier = Barrier::new(threads + 1);
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let (barrier, clients) = (&barrier, &clients);
                            s.spawn(move || {
                                let mut out = VerdictBuf::new();
                                let mine = clients.len() / threads;
                                barrier.wait();
                                for i in 0..per_thread {
                                    let n = base + i;
                                    let req = Request {
                                        method: "GET",
                                        path: "/api/items",
                                        client_ip: Some(clients[(n as usize % mine) * threads + t]),
                                        headers: &[],
                                        body: None,
                                    };
                                    let at = Duration::from_secs(NOW) + Duration::from_millis(n);
                                    engine.check_request_into(&req, Some(at), &mut out).unwrap();
                                    assert!(out.verdict().allowed);
                                }
                                barrier.wait();
                            });
                        }
                        barrier.wait();
                        let start = Instant::now();
                        barrier.wait();
                        start.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group! { name = benches; config = config(); targets = requests, threads, lifecycle, calendar }
criterion_main!(benches);
