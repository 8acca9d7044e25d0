//! Memory stays bounded when an attacker sends millions of unique keys. The heap is
//! measured with a counting allocator, so the bound is on real bytes.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use floodgate::{Algorithm, Limiter, Quota};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers to the system allocator and only counts the sizes it handles.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The allocator counts the whole process: tests here run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Sends `keys` unique 24-byte keys; returns live heap growth in bytes.
fn flood(limiter: &Limiter, keys: u64) -> isize {
    let before = live();
    let mut key = *b"attacker-0000000000000000";
    for i in 0..keys {
        key[9..].copy_from_slice(format!("{i:016}").as_bytes());
        let d = limiter.check_at(key, 1, Duration::from_micros(i)).unwrap();
        assert!(d.allowed);
    }
    live() - before
}

/// Floods `limiter` (built with `max_keys(cap)`) with `keys` unique keys and
/// holds the heap it grows, and what `memory_bytes` reports, to `per_key`
/// bytes per key of the cap (plus 256 KiB of slack).
fn flood_within(what: &str, limiter: &Limiter, cap: usize, keys: u64, per_key: usize) {
    let grown = flood(limiter, keys);
    assert!(limiter.len() <= cap, "{what}: {} keys held", limiter.len());
    eprintln!(
        "{what}: {keys} keys, cap {cap}: {} held, heap +{grown} B ({} B per held key)",
        limiter.len(),
        grown / limiter.len().max(1) as isize
    );
    let budget = (cap * per_key) as isize + 256 * 1024;
    assert!(
        grown <= budget,
        "{what}: heap grew {grown} B for a cap of {cap} keys (budget {budget})"
    );
    assert!(limiter.memory_bytes() as isize <= budget, "{what}");
}

#[test]
fn three_million_keys_stay_within_the_cap() {
    let _serial = serial();
    let cap = 100_000;
    let limiter = Limiter::builder()
        .quota(Quota::per_hour(10).unwrap())
        .max_keys(cap)
        .build()
        .unwrap();
    // 16-byte entries in tables at most 2x oversized, plus control bytes: < 40 B/key.
    flood_within("one bucket", &limiter, cap, 3_000_000, 40);
    assert!(
        limiter.len() >= cap / 4,
        "evicted too eagerly: {}",
        limiter.len()
    );
    assert!(limiter.evicted() >= 2_800_000);
}

/// A rule's lone window quota packs into the same 16-byte entry as GCRA's:
/// a flood of unique keys costs what it costs on GCRA, with nothing on the
/// heap per key (before packing: a lock and a boxed state, 86 B per held key
/// against 23 B here, measured by this test).
#[test]
fn a_lone_window_quota_costs_what_gcra_costs() {
    let _serial = serial();
    let cap = 100_000;
    for algorithm in [Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        let q = Quota::per_minute(100)
            .unwrap()
            .with_algorithm(algorithm)
            .unwrap();
        let limiter = Limiter::builder().quota(q).max_keys(cap).build().unwrap();
        flood_within(algorithm.name(), &limiter, cap, 1_000_000, 40);
    }
}

/// Two token buckets share one 32-byte entry per key (the fingerprint and a
/// 128-bit cell): nothing on the heap per key beyond the table. (The cell
/// needs the `shm` feature's 128-bit atomics; without it, the locked path.)
#[cfg(feature = "shm")]
#[test]
fn two_token_buckets_cost_one_table_entry_per_key() {
    let _serial = serial();
    let cap = 100_000;
    let limiter = Limiter::builder()
        .quota(Quota::per_minute(100).unwrap())
        .quota(Quota::per_hour(1_000).unwrap())
        .max_keys(cap)
        .build()
        .unwrap();
    // 32-byte entries in tables at most 2x oversized, plus control bytes.
    flood_within("two buckets", &limiter, cap, 1_000_000, 72);
}

#[test]
fn general_path_is_bounded_too() {
    let _serial = serial();
    let cap = 20_000;
    let q = Quota::per_minute(100)
        .unwrap()
        .with_algorithm(Algorithm::SlidingWindow)
        .unwrap();
    let limiter = Limiter::builder()
        .quota(q)
        .quota(Quota::per_hour(1000).unwrap())
        .max_keys(cap)
        .build()
        .unwrap();
    // Entry (8 + 24 B) in the table plus a boxed 2 x 40 B state per key, generously.
    flood_within("locked path", &limiter, cap, 1_000_000, 200);
}

#[test]
fn idle_keys_are_forgotten_without_a_cap() {
    let _serial = serial();
    // No cap pressure: keys idle longer than their state matters are dropped as
    // shards rotate, so memory follows the active set, not the history.
    let limiter = Limiter::builder()
        .quota("10/s".parse().unwrap())
        .shards(1)
        .build()
        .unwrap();
    for i in 0..10_000u64 {
        limiter
            .check_at(format!("old-{i}"), 1, Duration::from_millis(i / 100))
            .unwrap();
    }
    // Shards rotate by time at most every 30 s: two rotations later, new traffic
    // has rotated the old keys away.
    for i in 0..10u64 {
        limiter
            .check_at(format!("new-{i}"), 1, Duration::from_secs(40 + 35 * i))
            .unwrap();
    }
    assert!(limiter.len() <= 10, "{} keys still held", limiter.len());
    assert_eq!(limiter.evicted(), 0);
}

/// `memory_bytes` reports what the limiter holds on the heap, from its build
/// on, within a few percent: the tables and the shards' locks included, fresh
/// (a small `max_keys` keeps the default shard count, so the fixed part is
/// most of it) and full, for a key in one cell and a key on the general path.
#[test]
fn memory_bytes_reports_the_heap_the_limiter_holds() {
    let _serial = serial();
    let hour = || Quota::per_hour(10).unwrap();
    let window = || hour().with_algorithm(Algorithm::SlidingWindow).unwrap();
    for (what, quotas) in [
        ("one bucket", vec![hour()]),
        ("one window", vec![window()]),
        ("general path", vec![hour(), window(), window()]),
    ] {
        for (cap, keys) in [(100_000, 0), (100_000, 300_000), (1_000_000, 50_000)] {
            let before = live();
            let mut builder = Limiter::builder().max_keys(cap);
            for q in &quotas {
                builder = builder.quota(*q);
            }
            let limiter = builder.build().unwrap();
            flood(&limiter, keys);
            let held = live() - before;
            let reported = limiter.memory_bytes() as isize;
            eprintln!("{what}, cap {cap}, {keys} keys: heap {held} B, reported {reported} B");
            // The general path's boxed state also counts malloc's header (16 B
            // a key), which this allocator does not see.
            let header = if quotas.len() > 1 {
                16 * limiter.len() as isize
            } else {
                0
            };
            let slack = held / 20;
            assert!(
                reported >= held - slack && reported <= held + header + slack,
                "{what}, cap {cap}, {keys} keys: reported {reported} B, heap {held} B"
            );
        }
    }
}
