//! Paired comparison with governor, robust to a noisy shared machine: both limiters
//! run alternating short batches over the same keys in the same order, many rounds,
//! and the report is the median of the per-round ratios. Run:
//! `cargo run --release -p floodgate-benches --bin compare [rounds]`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use floodgate::{Limiter, Quota};
use floodgate_benches::{Cycle, keys, order};

const BATCH: usize = 100_000;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(31);
    println!(
        "{:<10} {:>14} {:>14} {:>22}",
        "keys", "floodgate ns", "governor ns", "ratio (median, p10-p90)"
    );
    for n in [1usize, 10_000, 1_000_000] {
        let (ks, ord) = (keys(n), order(n));
        let fg = Limiter::builder()
            .quota(Quota::per_second(1000).unwrap())
            .max_keys(4_000_000)
            .build()
            .unwrap();
        let gov: governor::DefaultKeyedRateLimiter<String> = governor::RateLimiter::keyed(
            governor::Quota::per_second(NonZeroU32::new(1000).unwrap()),
        );
        for k in &ks {
            let _ = fg.check(k, 1);
            let _ = gov.check_key(k);
        }
        let (mut cf, mut cg) = (Cycle::new(&ks, &ord), Cycle::new(&ks, &ord));
        let (mut tf, mut tg, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut time_fg = || {
                let t = Instant::now();
                for _ in 0..BATCH {
                    black_box(fg.check(cf.next_key(), 1).is_ok());
                }
                t.elapsed().as_nanos() as f64 / BATCH as f64
            };
            let mut time_gov = || {
                let t = Instant::now();
                for _ in 0..BATCH {
                    black_box(gov.check_key(cg.next_key()).is_ok());
                }
                t.elapsed().as_nanos() as f64 / BATCH as f64
            };
            // Alternate which goes first, so drift favours neither.
            let (f, g) = if round % 2 == 0 {
                let f = time_fg();
                (f, time_gov())
            } else {
                let g = time_gov();
                (time_fg(), g)
            };
            tf.push(f);
            tg.push(g);
            ratio.push(f / g);
        }
        let mut sorted = ratio.clone();
        sorted.sort_by(f64::total_cmp);
        let (p10, p90) = (sorted[sorted.len() / 10], sorted[sorted.len() * 9 / 10]);
        println!(
            "{:<10} {:>14.1} {:>14.1} {:>10.2}x ({:.2}-{:.2})",
            n,
            median(&mut tf),
            median(&mut tg),
            median(&mut ratio),
            p10,
            p90
        );
    }
}
