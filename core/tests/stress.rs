//! Real threads racing on shared and distinct keys: exact totals, no over-admission.
#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use floodgate::{Algorithm, FakeClock, Limiter, Quota};

const THREADS: usize = 4;
const CHECKS: u64 = 50_000;

/// Many threads hammer one key with time frozen (no refill): exactly `burst` pass.
fn one_hot_key(quotas: Vec<Quota>, expect: u64) {
    let limiter = Arc::new(
        Limiter::builder()
            .quotas(quotas)
            .build_with_clock(FakeClock::new())
            .unwrap(),
    );
    let allowed = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (limiter, allowed) = (limiter.clone(), allowed.clone());
            thread::spawn(move || {
                for _ in 0..CHECKS {
                    if limiter.check("hot", 1).unwrap().allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(allowed.load(Ordering::Relaxed), expect);
}

#[test]
fn hot_key_gcra_admits_exactly_burst() {
    one_hot_key(
        vec![Quota::per_hour(10).unwrap().with_burst(25_000).unwrap()],
        25_000,
    );
}

#[test]
fn hot_key_every_algorithm_admits_exactly_limit() {
    for algorithm in Algorithm::ALL.into_iter().filter(|a| *a != Algorithm::Gcra) {
        let limit = if algorithm == Algorithm::SlidingLog {
            5_000
        } else {
            30_000
        };
        let q = Quota::per_hour(limit)
            .unwrap()
            .with_algorithm(algorithm)
            .unwrap();
        one_hot_key(vec![q], limit);
    }
}

/// Threads race on one key of a limiter; returns how many checks were admitted.
fn hammer<C: floodgate::Clock>(limiter: &Limiter<C>) -> u64 {
    thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    (0..CHECKS)
                        .filter(|_| limiter.check("hot", 1).unwrap().allowed)
                        .count() as u64
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

#[test]
fn hot_key_multi_quota_charges_all_or_nothing() {
    // 1,500/h (token bucket, T = 2.4 s) AND 1,000/min: a sliding counter (the
    // key's two states under its lock) or a second token bucket (both TATs in
    // one 128-bit cell, charged by one CAS).
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let hour = Quota::per_hour(1_500).unwrap();
        let minute = Quota::per_minute(1_000)
            .unwrap()
            .with_algorithm(algorithm)
            .unwrap();
        let clock = FakeClock::new();
        let limiter = Limiter::builder()
            .quota(hour)
            .quota(minute)
            .build_with_clock(clock.clone())
            .unwrap();
        // The minute quota binds: 1,000 pass, and the 199,000 denials charge nothing.
        assert_eq!(hammer(&limiter), 1_000, "{}", algorithm.name());
        // Two minutes on, the minute quota is clear and the hour bucket has refilled
        // 120 s / 2.4 s = 50 units: exactly 500 + 50 pass if only admissions were charged.
        clock.advance(std::time::Duration::from_secs(120));
        assert_eq!(hammer(&limiter), 550, "{}", algorithm.name());
    }
}

/// A packable sliding window (one 64-bit cell per key) under the same race.
#[test]
fn hot_key_packed_sliding_window_admits_exactly_limit() {
    let q = Quota::per_hour(10_000)
        .unwrap()
        .with_algorithm(Algorithm::SlidingWindow)
        .unwrap();
    one_hot_key(vec![q], 10_000);
}

#[test]
fn distinct_keys_each_get_exactly_their_limit() {
    let limiter = Arc::new(
        Limiter::builder()
            .quota(Quota::per_hour(100).unwrap())
            .build_with_clock(FakeClock::new())
            .unwrap(),
    );
    let per_key: Vec<u64> = thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let limiter = &limiter;
                s.spawn(move || {
                    let mut allowed = 0;
                    for i in 0..CHECKS {
                        // Each thread has 50 keys of its own, plus one shared key.
                        let key = if i % 2 == 0 {
                            format!("t{t}-k{}", i % 50)
                        } else {
                            "shared".to_string()
                        };
                        if limiter.check(&key, 1).unwrap().allowed && key != "shared" {
                            allowed += 1;
                        }
                    }
                    allowed
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // 25 distinct even-index keys per thread (i % 50 over even i), 100 each.
    for allowed in per_key {
        assert_eq!(allowed, 25 * 100);
    }
    assert_eq!(limiter.peek("shared").unwrap().remaining, 0);
}
