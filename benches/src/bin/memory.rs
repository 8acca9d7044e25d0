//! Bytes per key, measured with a counting allocator: Floodgate and governor each
//! hold the same 1,000,000 string keys (19-20 bytes). Run:
//! `cargo run --release -p floodgate-benches --bin memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, Ordering};

use floodgate::{Limiter, Quota};
use floodgate_benches::keys;

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

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let ks = keys(n);
    println!(
        "{n} keys of {}-{} bytes; heap bytes per key (counting allocator)",
        ks[0].len(),
        ks[n - 1].len()
    );

    let before = LIVE.load(Ordering::Relaxed);
    let fg = Limiter::builder()
        .quota(Quota::per_second(1000).unwrap())
        .max_keys(n * 2)
        .build()
        .unwrap();
    for k in &ks {
        fg.check(k, 1).unwrap();
    }
    let fg_bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "floodgate  {:>6.1} B/key  (memory_bytes() says {:.1}; {} keys held)",
        fg_bytes as f64 / n as f64,
        fg.memory_bytes() as f64 / fg.len() as f64,
        fg.len()
    );
    drop(fg);

    let before = LIVE.load(Ordering::Relaxed);
    let gov: governor::DefaultKeyedRateLimiter<String> =
        governor::RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::new(1000).unwrap()));
    for k in &ks {
        let _ = gov.check_key(k);
    }
    let gov_bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "governor   {:>6.1} B/key  (String keys cloned into its DashMap)",
        gov_bytes as f64 / n as f64
    );
}
