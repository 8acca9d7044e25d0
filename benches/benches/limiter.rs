//! Floodgate against governor (keyed, DashMap store, default hasher) in the same run,
//! on the same keys in the same order. See benches/README.md for the figures.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use floodgate::{Algorithm, Clock, Limiter, MonotonicClock, QuantaClock, Quota};
use floodgate_benches::{Cycle, keys, order};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

/// Generous enough that the benchmarks measure admitted checks (the CAS path) on
/// every key: 1000/s with a burst of 1000.
fn floodgate_limiter(algorithm: Algorithm) -> Limiter {
    let q = Quota::per_second(1000)
        .unwrap()
        .with_algorithm(algorithm)
        .unwrap();
    Limiter::builder()
        .quota(q)
        .max_keys(4_000_000)
        .max_log_limit(1000)
        .build()
        .unwrap()
}

fn governor_limiter() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::new(1000).unwrap()))
}

fn keyed(c: &mut Criterion) {
    for n in [1usize, 10_000, 1_000_000] {
        let (ks, ord) = (keys(n), order(n));
        let mut group = c.benchmark_group(format!("keyed/{n}"));
        let fg = floodgate_limiter(Algorithm::Gcra);
        let gov = governor_limiter();
        // Fill both with every key before timing.
        for k in &ks {
            let _ = fg.check(k, 1);
            let _ = gov.check_key(k);
        }
        let mut cycle = Cycle::new(&ks, &ord);
        group.bench_function("floodgate", |b| {
            b.iter(|| black_box(fg.check(cycle.next_key(), 1).is_ok()))
        });
        let mut cycle = Cycle::new(&ks, &ord);
        group.bench_function("governor", |b| {
            b.iter(|| black_box(gov.check_key(cycle.next_key()).is_ok()))
        });
        if n == 10_000 {
            // A bare sharded map probe plus an atomic add: the floor for any keyed limiter.
            let map: dashmap::DashMap<String, std::sync::atomic::AtomicU64, ahash::RandomState> =
                dashmap::DashMap::with_hasher(ahash::RandomState::new());
            for k in &ks {
                map.insert(k.clone(), std::sync::atomic::AtomicU64::new(0));
            }
            let mut cycle = Cycle::new(&ks, &ord);
            group.bench_function("dashmap_ahash_fetch_add", |b| {
                b.iter(|| {
                    let e = map.get(cycle.next_key()).unwrap();
                    black_box(e.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                })
            });
        }
        group.finish();
    }
}

fn algorithms(c: &mut Criterion) {
    let n = 10_000;
    let (ks, ord) = (keys(n), order(n));
    let mut group = c.benchmark_group("algorithm/10000");
    for algorithm in Algorithm::ALL {
        let fg = floodgate_limiter(algorithm);
        let mut cycle = Cycle::new(&ks, &ord);
        group.bench_function(algorithm.name(), |b| {
            b.iter(|| black_box(fg.check(cycle.next_key(), 1).is_ok()))
        });
    }
    let fg = floodgate_limiter(Algorithm::Gcra);
    for k in &ks {
        let _ = fg.check(k, 1);
    }
    let mut cycle = Cycle::new(&ks, &ord);
    group.bench_function("gcra_peek", |b| {
        b.iter(|| black_box(fg.peek(cycle.next_key()).is_ok()))
    });
    let pair = Limiter::builder()
        .quota("1000/s".parse().unwrap())
        .quota("100000/h".parse().unwrap())
        .build()
        .unwrap();
    let mut cycle = Cycle::new(&ks, &ord);
    group.bench_function("two_token_buckets", |b| {
        b.iter(|| black_box(pair.check(cycle.next_key(), 1).is_ok()))
    });
    let multi = Limiter::builder()
        .quota("1000/s".parse().unwrap())
        .quota(
            "10000/min"
                .parse::<Quota>()
                .unwrap()
                .with_algorithm(Algorithm::SlidingWindow)
                .unwrap(),
        )
        .quota("100000/h".parse().unwrap())
        .build()
        .unwrap();
    let mut cycle = Cycle::new(&ks, &ord);
    group.bench_function("three_quotas", |b| {
        b.iter(|| black_box(multi.check(cycle.next_key(), 1).is_ok()))
    });
    group.finish();
}

fn clocks(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    let origin = Instant::now();
    group.bench_function("std_instant", |b| b.iter(|| black_box(origin.elapsed())));
    let mono = MonotonicClock::new();
    group.bench_function("monotonic_clock", |b| b.iter(|| black_box(mono.now_ns())));
    let quanta = QuantaClock::new();
    group.bench_function("quanta_tsc", |b| b.iter(|| black_box(quanta.now_ns())));
    group.bench_function("clock_monotonic_coarse", |b| {
        b.iter(|| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid, writable timespec for the call's duration.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
            black_box(ts.tv_nsec)
        })
    });
    group.finish();
}

/// Runs `threads` threads that each do `iters / threads` checks through `f` (given
/// the thread's index and iteration); returns the wall time, so criterion's time
/// per iteration is the aggregate cost of one check.
fn parallel<F: Fn(usize, u64) + Sync>(threads: usize, iters: u64, f: F) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, f) = (&barrier, &f);
            s.spawn(move || {
                barrier.wait();
                for i in 0..iters / threads as u64 {
                    f(t, i);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn threads(c: &mut Criterion) {
    let n = 10_000;
    let ks = keys(n);
    // Thread t uses keys t, t + 2, t + 4...: distinct keys per thread.
    let mut group = c.benchmark_group("threads/10000");
    let fg = floodgate_limiter(Algorithm::Gcra);
    let gov = governor_limiter();
    for k in &ks {
        let _ = fg.check(k, 1);
        let _ = gov.check_key(k);
    }
    let pick =
        |t: usize, i: u64, threads: usize| &ks[((i as usize * 7919) % (n / threads)) * threads + t];
    for threads in [1usize, 2] {
        group.bench_function(format!("floodgate_distinct_{threads}t"), |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, |t, i| {
                    black_box(fg.check(pick(t, i, threads), 1).is_ok());
                })
            })
        });
        let own: Vec<Limiter> = (0..threads)
            .map(|_| floodgate_limiter(Algorithm::Gcra))
            .collect();
        group.bench_function(format!("floodgate_own_limiter_{threads}t"), |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, |t, i| {
                    black_box(own[t].check(pick(t, i, threads), 1).is_ok());
                })
            })
        });
        group.bench_function(format!("governor_distinct_{threads}t"), |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, |t, i| {
                    black_box(gov.check_key(pick(t, i, threads)).is_ok());
                })
            })
        });
    }
    // One hot key: a huge burst so every check is admitted and writes the key's state.
    let hot_q = Quota::per_second(1_000_000_000)
        .unwrap()
        .with_burst(1_000_000_000)
        .unwrap();
    let hot = Limiter::new(hot_q).unwrap();
    let gov_hot: DefaultKeyedRateLimiter<String> = RateLimiter::keyed(
        governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
            .allow_burst(NonZeroU32::new(1_000_000_000).unwrap()),
    );
    let hot_key = "client:hot-key-0001".to_string();
    for threads in [1usize, 2] {
        group.bench_function(format!("floodgate_hot_key_{threads}t"), |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, |_, _| {
                    black_box(hot.check(&hot_key, 1).is_ok());
                })
            })
        });
        group.bench_function(format!("governor_hot_key_{threads}t"), |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, |_, _| {
                    black_box(gov_hot.check_key(&hot_key).is_ok());
                })
            })
        });
    }
    group.finish();
}

/// An attack: every request carries a new key. Floodgate is capped at 100k keys and
/// evicts; governor has no cap and grows (its memory is not bounded).
fn flood(c: &mut Criterion) {
    let n = 2_000_000;
    let (ks, ord) = (keys(n), order(n));
    let mut group = c.benchmark_group("flood/unique_keys");
    let fg = Limiter::builder()
        .quota(Quota::per_second(1000).unwrap())
        .max_keys(100_000)
        .build()
        .unwrap();
    let mut cycle = Cycle::new(&ks, &ord);
    group.bench_function("floodgate_capped_100k", |b| {
        b.iter(|| black_box(fg.check(cycle.next_key(), 1).is_ok()))
    });
    let gov = governor_limiter();
    let mut cycle = Cycle::new(&ks, &ord);
    group.bench_function("governor_unbounded", |b| {
        b.iter(|| black_box(gov.check_key(cycle.next_key()).is_ok()))
    });
    group.finish();
}

fn config() -> Criterion {
    // Sized for 2-core shared machines: short, repeated, compared within one run.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// The shared-memory store beside the in-process one, same keys, same order,
/// same process: the table sized to the keys (2 slots per key), as a deployment
/// sizes `max_keys`. `check_at` leaves out the clock read (the shared clock is
/// `CLOCK_MONOTONIC`, the in-process one the TSC).
fn shared_memory(c: &mut Criterion) {
    for n in [10_000usize, 1_000_000] {
        let (ks, ord) = (keys(n), order(n));
        let mut group = c.benchmark_group(format!("shared_memory/{n}"));
        let memory = floodgate_limiter(Algorithm::Gcra);
        let path = std::env::temp_dir().join(format!("fg-bench-shm-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let shared = Limiter::builder()
            .quota(Quota::per_second(1000).unwrap())
            .max_keys(2 * n)
            .shared_memory(&path)
            .build()
            .unwrap();
        let at = Duration::from_secs(1_800_000_000);
        for k in &ks {
            let _ = memory.check(k, 1);
            let _ = shared.check(k, 1);
        }
        for (name, l) in [("memory", &memory), ("shared_memory", &shared)] {
            let mut cycle = Cycle::new(&ks, &ord);
            group.bench_function(name, |b| {
                b.iter(|| black_box(l.check(cycle.next_key(), 1).is_ok()))
            });
            let mut cycle = Cycle::new(&ks, &ord);
            group.bench_function(format!("{name}_check_at"), |b| {
                b.iter(|| black_box(l.check_at(cycle.next_key(), 1, at).is_ok()))
            });
        }
        group.finish();
        let _ = std::fs::remove_file(&path);
    }
}

criterion_group! { name = benches; config = config(); targets = clocks, keyed, algorithms, threads, flood, shared_memory }
criterion_main!(benches);
