//! The Redis store beside a raw `INCR` on the same kind of connection, in the same
//! run: criterion figures for issue 4. Starts its own `redis-server` on a free
//! loopback port (skipped, with a message, if redis-server is not installed).
//!
//! `cargo bench -p floodgate-benches --bench redis`

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use floodgate::{Algorithm, Quota, RedisLimiter};

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Option<Server> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child, port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(server)
}

fn limiter(url: &str, quotas: &[Quota], lease: u64) -> RedisLimiter {
    let mut b = RedisLimiter::builder(url)
        .pool_size(1)
        .command_timeout(Duration::from_secs(1))
        .deny_cache(false);
    if lease > 1 {
        b = b.lease(lease, Duration::from_secs(1));
    }
    for q in quotas {
        b = b.quota(*q);
    }
    b.build().unwrap()
}

fn bench(c: &mut Criterion) {
    let Some(server) = start() else {
        eprintln!("redis-server not found: skipping the Redis benchmarks");
        return;
    };
    let url = format!("redis://127.0.0.1:{}/", server.1);
    let big = Quota::per_second(1_000_000_000).unwrap();
    let four = [
        big,
        Quota::per_minute(1_000_000_000)
            .unwrap()
            .with_algorithm(Algorithm::FixedWindow)
            .unwrap(),
        Quota::per_hour(1_000_000_000)
            .unwrap()
            .with_algorithm(Algorithm::SlidingWindow)
            .unwrap(),
        Quota::per_second(1_000_000).unwrap(),
    ];
    let keys: Vec<String> = (0..1000).map(|i| format!("client:{i:012}")).collect();
    let mut g = c.benchmark_group("redis_sequential");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut i = 0usize;
    g.bench_function("raw_incr", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            redis::cmd("INCR")
                .arg(&keys[i])
                .query::<i64>(&mut conn)
                .unwrap()
        })
    });
    for (name, quotas, lease) in [
        ("check_1_gcra", &four[..1], 0),
        ("check_4_quotas", &four[..], 0),
        ("check_1_gcra_lease_20", &four[..1], 20),
    ] {
        let l = limiter(&url, quotas, lease);
        // The same 1000 keys as INCR; 16 hot keys for leases (where they matter).
        let n = if lease > 1 { 16 } else { keys.len() };
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % n;
                l.check(&keys[i], 1).unwrap()
            })
        });
        assert_eq!(l.fallbacks(), 0);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
