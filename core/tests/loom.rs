//! Loom model of the fast path's CAS state machine: two threads race on one key and
//! never over-admit. Run with:
//! `RUSTFLAGS="--cfg floodgate_loom" cargo test -p floodgate --test loom --release`
#![cfg(floodgate_loom)]
#![allow(clippy::unwrap_used)]

use floodgate::Quota;
use floodgate::loom_api::{AtomicU64, gcra_allowed};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

/// Each thread tries `tries` checks of cost `cost` at time `now`; returns the total
/// admitted units and the final TAT.
fn race(burst: u64, cost: u64, tries: usize, nows: [u64; 2]) -> (usize, u64) {
    let quota = Quota::per_second(10).unwrap().with_burst(burst).unwrap();
    let cell = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = nows
        .into_iter()
        .map(|now| {
            let (cell, admitted) = (cell.clone(), admitted.clone());
            thread::spawn(move || {
                for _ in 0..tries {
                    if gcra_allowed(&cell, &quota, now, cost) {
                        admitted.fetch_add(cost as usize, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (
        admitted.load(Ordering::Relaxed),
        cell.load(Ordering::Relaxed),
    )
}

#[test]
fn two_threads_never_over_admit() {
    loom::model(|| {
        let (admitted, tat) = race(3, 1, 2, [0, 0]);
        assert_eq!(admitted, 3, "exactly the burst");
        assert_eq!(
            tat, 300_000_000,
            "the TAT accounts for exactly what was admitted"
        );
    });
}

#[test]
fn costs_and_different_times() {
    loom::model(|| {
        // Burst 3 (T = 100 ms), cost 2, one thread at 0 and one at 100 ms.
        // 0 first: TAT 200 ms, then the 100 ms one fits exactly (TAT 400 ms).
        // 100 ms first: TAT 300 ms, then the one at 0 would need 500 ms > 300 ms: denied.
        let outcome = race(3, 2, 1, [0, 100_000_000]);
        assert!(
            outcome == (4, 400_000_000) || outcome == (2, 300_000_000),
            "{outcome:?}"
        );
    });
}
