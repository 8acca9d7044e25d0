//! Loom models of the per-key CAS state machines: two threads race on one key
//! and never over-admit (GCRA, a packed sliding window), a refund racing a
//! check loses no unit, and never hold more places in flight than
//! `max_in_flight` nor lose a place given back (`flight`). Run with:
//! `RUSTFLAGS="--cfg floodgate_loom" cargo test -p floodgate --test loom --release`
#![cfg(floodgate_loom)]
#![allow(clippy::unwrap_used)]

use floodgate::loom_api::{
    AtomicU64, flight_acquire, flight_held, flight_release, gcra_allowed, window_allowed,
    window_refund, window_remaining,
};
use floodgate::{Algorithm, Quota};
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

/// Two threads each take a place, and give it back if they got one, while a
/// third place is taken: at most `max` held at any time, and every place
/// given back is free again at the end.
#[test]
fn places_in_flight_never_exceed_the_cap_nor_leak() {
    loom::model(|| {
        let cell = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (cell, peak) = (cell.clone(), peak.clone());
                thread::spawn(move || {
                    if flight_acquire(&cell, 7, 1) {
                        let held = flight_held(&cell, 7) as usize;
                        peak.fetch_max(held, Ordering::Relaxed);
                        flight_release(&cell, 7, 7);
                        true
                    } else {
                        false
                    }
                })
            })
            .collect();
        let taken: usize = handles
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum();
        assert!(taken >= 1, "one of the two always gets the place");
        assert_eq!(peak.load(Ordering::Relaxed), 1, "never two at once");
        assert_eq!(flight_held(&cell, 7), 0, "every place given back");
    });
}

/// A place taken in the previous period is given back while another thread
/// takes one in the new period: the release lands on the previous period's
/// count, whatever the order.
#[test]
fn a_release_across_a_period_boundary_frees_the_right_count() {
    loom::model(|| {
        let cell = Arc::new(AtomicU64::new(0));
        assert!(flight_acquire(&cell, 7, 2));
        let releaser = {
            let cell = cell.clone();
            thread::spawn(move || flight_release(&cell, 7, 8))
        };
        let taker = {
            let cell = cell.clone();
            thread::spawn(move || flight_acquire(&cell, 8, 2))
        };
        releaser.join().unwrap();
        assert!(taker.join().unwrap(), "two places: one was always free");
        assert_eq!(flight_held(&cell, 8), 1, "only the new place is held");
    });
}

fn sliding(text: &str) -> Quota {
    text.parse::<Quota>()
        .unwrap()
        .with_algorithm(Algorithm::SlidingWindow)
        .unwrap()
}

/// Two threads take two units each from a packed sliding window of three:
/// exactly three are admitted, and the state counts exactly those.
#[test]
fn a_packed_window_admits_exactly_its_limit() {
    loom::model(|| {
        let quota = sliding("3/s");
        let now = 5_000_000_000;
        let cell = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let cell = cell.clone();
                thread::spawn(move || {
                    (0..2)
                        .filter(|_| window_allowed(&cell, &quota, now, 1))
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 3, "exactly the limit");
        assert_eq!(window_remaining(&cell, &quota, now), 0);
    });
}

/// Two of three units in use: one thread gives a unit back while another
/// takes one. Both write, in either order; neither write is lost: one unit
/// is left at the end.
#[test]
fn a_refund_racing_a_packed_window_check_loses_nothing() {
    loom::model(|| {
        let quota = sliding("3/s");
        let now = 5_000_000_000;
        let cell = Arc::new(AtomicU64::new(0));
        assert!(window_allowed(&cell, &quota, now, 2));
        let refund = {
            let cell = cell.clone();
            thread::spawn(move || window_refund(&cell, &quota, now, 1))
        };
        let take = {
            let cell = cell.clone();
            thread::spawn(move || window_allowed(&cell, &quota, now, 1))
        };
        refund.join().unwrap();
        assert!(take.join().unwrap(), "a unit was free either way");
        assert_eq!(window_remaining(&cell, &quota, now), 1);
    });
}
