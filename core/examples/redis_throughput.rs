//! RedisLimiter throughput beside a raw INCR baseline, in the same run, on loopback.
//! Start a server, then:
//! `cargo run --release -p floodgate --features redis --example redis_throughput -- redis://127.0.0.1:6379/`
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use floodgate::{Algorithm, Quota, RedisLimiter};

const N: u64 = 20_000;

fn rate(n: u64, t: Duration) -> f64 {
    n as f64 / t.as_secs_f64()
}

fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let client = redis::Client::open(url.as_str()).unwrap();
    let limiter = |quotas: &[Quota], pool: usize| {
        let mut b = RedisLimiter::builder(&url)
            .pool_size(pool)
            .command_timeout(Duration::from_secs(1));
        for q in quotas {
            b = b.quota(*q);
        }
        b.build().unwrap()
    };
    let one = [Quota::per_second(1_000_000_000).unwrap()];
    let four = [
        Quota::per_second(1_000_000_000).unwrap(),
        Quota::per_minute(1_000_000_000)
            .unwrap()
            .with_algorithm(Algorithm::FixedWindow)
            .unwrap(),
        Quota::per_hour(1_000_000_000)
            .unwrap()
            .with_algorithm(Algorithm::SlidingWindow)
            .unwrap(),
        Quota::per_second(1_000_000)
            .unwrap()
            .with_burst(1_000_000)
            .unwrap(),
    ];

    // Sequential, one connection each.
    let mut conn = client.get_connection().unwrap();
    let t = Instant::now();
    for i in 0..N {
        let _: u64 = redis::cmd("INCR")
            .arg(format!("bench:incr:{}", i % 1000))
            .query(&mut conn)
            .unwrap();
    }
    let incr = rate(N, t.elapsed());
    let l1 = limiter(&one, 1);
    let t = Instant::now();
    for i in 0..N {
        l1.check(format!("k{}", i % 1000), 1).unwrap();
    }
    let seq1 = rate(N, t.elapsed());
    let l4 = limiter(&four, 1);
    let t = Instant::now();
    for i in 0..N {
        l4.check(format!("k{}", i % 1000), 1).unwrap();
    }
    let seq4 = rate(N, t.elapsed());
    println!("sequential, one connection:");
    println!("  raw INCR                 {:>9.0}/s", incr);
    println!(
        "  check, 1 quota           {:>9.0}/s  ({:.2}x INCR)",
        seq1,
        seq1 / incr
    );
    println!(
        "  check, 4 quotas          {:>9.0}/s  ({:.2}x INCR; still one round trip)",
        seq4,
        seq4 / incr
    );

    // Concurrent: 16 threads, 16 connections.
    let threads = 16;
    let per = N / 2;
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            let client = &client;
            s.spawn(move || {
                let mut c = client.get_connection().unwrap();
                for i in 0..per {
                    let _: u64 = redis::cmd("INCR")
                        .arg(format!("bench:incr:{th}:{}", i % 100))
                        .query(&mut c)
                        .unwrap();
                }
            });
        }
    });
    let cincr = rate(per * threads as u64, t.elapsed());
    let lp = limiter(&one, threads);
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            let lp = &lp;
            s.spawn(move || {
                for i in 0..per {
                    lp.check(format!("k{th}:{}", i % 100), 1).unwrap();
                }
            });
        }
    });
    let cfg = rate(per * threads as u64, t.elapsed());
    println!("concurrent, {threads} threads and connections:");
    println!("  raw INCR                 {:>9.0}/s", cincr);
    println!(
        "  check, 1 quota           {:>9.0}/s  ({:.2}x INCR)",
        cfg,
        cfg / cincr
    );
    println!(
        "fallbacks (must be 0): {}",
        l1.fallbacks() + l4.fallbacks() + lp.fallbacks()
    );
}
