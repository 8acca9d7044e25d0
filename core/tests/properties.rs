//! Property tests of the algorithms' invariants, through the public API, against
//! straightforward reference models.
#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use std::time::Duration;

use floodgate::{Algorithm, Decision, ErrorKind, Limiter, Quota};
use proptest::prelude::*;

/// (time step in ns, cost) pairs; times are cumulative, so never decreasing.
fn steps(max_dt: u64, max_cost: u64) -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0..max_dt, 1..=max_cost), 1..120)
}

fn limiter(quotas: &[Quota]) -> Limiter {
    Limiter::builder()
        .quotas(quotas.iter().copied())
        .build()
        .unwrap()
}

/// Runs the steps on one key; returns (time, cost, decision) of each.
fn replay(quotas: &[Quota], steps: &[(u64, u64)]) -> Vec<(u64, u64, Decision)> {
    let l = limiter(quotas);
    let mut now = 0;
    steps
        .iter()
        .map(|&(dt, cost)| {
            now += dt;
            (
                now,
                cost,
                l.check_at("k", cost, Duration::from_nanos(now)).unwrap(),
            )
        })
        .collect()
}

fn admitted(run: &[(u64, u64, Decision)]) -> Vec<(u64, u64)> {
    run.iter()
        .filter(|(_, _, d)| d.allowed)
        .map(|&(t, c, _)| (t, c))
        .collect()
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop::sample::select(Algorithm::ALL.to_vec())
}

/// A quota of `rate` per `period_ms`, burst for GCRA only.
fn quota(algorithm: Algorithm, rate: u64, period_ms: u64, burst: u64) -> Quota {
    let q = Quota::new(rate, Duration::from_millis(period_ms)).unwrap();
    let q = if algorithm == Algorithm::Gcra {
        q.with_burst(burst).unwrap()
    } else {
        q
    };
    q.with_algorithm(algorithm).unwrap()
}

/// Straightforward token bucket: a level of credit in ns, refilled with time.
struct RefBucket {
    interval: u64,
    capacity: u64,
    level: u64,
    last: u64,
}

impl RefBucket {
    fn new(q: &Quota) -> Self {
        let interval = q.interval().as_nanos() as u64;
        Self {
            interval,
            capacity: q.burst() * interval,
            level: q.burst() * interval,
            last: 0,
        }
    }
    fn refill(&mut self, now: u64) {
        self.level = (self.level + (now - self.last)).min(self.capacity);
        self.last = now;
    }
    fn fits(&mut self, now: u64, cost: u64) -> bool {
        self.refill(now);
        self.level >= cost * self.interval
    }
    fn take(&mut self, cost: u64) {
        self.level -= cost * self.interval;
    }
}

/// Straightforward sliding log: every admitted (time, cost).
struct RefLog {
    window: u64,
    limit: u64,
    log: Vec<(u64, u64)>,
}

impl RefLog {
    fn fits(&self, now: u64, cost: u64) -> bool {
        let used: u64 = self
            .log
            .iter()
            .filter(|(t, _)| t + self.window > now)
            .map(|(_, c)| c)
            .sum();
        used + cost <= self.limit
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// GCRA admits exactly what a plain token bucket admits, with the same remaining.
    #[test]
    fn gcra_equals_reference_bucket(rate in 1u64..50, period_ms in 1u64..2000, burst in 1u64..20,
                                    steps in steps(200_000_000, 20)) {
        let q = quota(Algorithm::Gcra, rate, period_ms, burst);
        let mut bucket = RefBucket::new(&q);
        let steps: Vec<_> = steps.into_iter().map(|(dt, c)| (dt, c.min(burst))).collect();
        for (now, cost, d) in replay(&[q], &steps) {
            let fits = bucket.fits(now, cost);
            prop_assert_eq!(d.allowed, fits, "at {} cost {}", now, cost);
            if fits { bucket.take(cost); }
            if d.allowed { prop_assert_eq!(d.remaining, bucket.level / bucket.interval); }
        }
    }

    /// GCRA: in any interval [a, b], at most burst + (b - a) / T units are admitted.
    #[test]
    fn gcra_never_exceeds_burst_plus_rate(rate in 1u64..50, period_ms in 1u64..2000, burst in 1u64..20,
                                          steps in steps(100_000_000, 5)) {
        let q = quota(Algorithm::Gcra, rate, period_ms, burst);
        let t = q.interval().as_nanos() as u64;
        let steps: Vec<_> = steps.into_iter().map(|(dt, c)| (dt, c.min(burst))).collect();
        let adm = admitted(&replay(&[q], &steps));
        for i in 0..adm.len() {
            let mut sum = 0;
            for j in i..adm.len() {
                sum += adm[j].1;
                prop_assert!(sum <= burst + (adm[j].0 - adm[i].0) / t, "{} units in [{}, {}]", sum, adm[i].0, adm[j].0);
            }
        }
    }

    /// Exact windows: the log never holds more than `limit` in any window of length W;
    /// fixed and sliding counters never more than `limit` per aligned window, and the
    /// counter less than 2 * limit in any sliding window (its documented bound).
    #[test]
    fn windows_respect_their_bounds(algorithm in algorithm().prop_filter("windows", |a| *a != Algorithm::Gcra),
                                    limit in 1u64..20, period_ms in 1u64..1000, steps in steps(50_000_000, 5)) {
        let q = quota(algorithm, limit, period_ms, limit);
        let w = period_ms * 1_000_000;
        let steps: Vec<_> = steps.into_iter().map(|(dt, c)| (dt, c.min(limit))).collect();
        let adm = admitted(&replay(&[q], &steps));
        for i in 0..adm.len() {
            let sliding: u64 = adm[i..].iter().take_while(|(t, _)| *t < adm[i].0 + w).map(|(_, c)| c).sum();
            let aligned: u64 = adm.iter().filter(|(t, _)| t / w == adm[i].0 / w).map(|(_, c)| c).sum();
            match algorithm {
                Algorithm::SlidingLog => prop_assert!(sliding <= limit),
                Algorithm::FixedWindow => prop_assert!(aligned <= limit),
                _ => { prop_assert!(aligned <= limit); prop_assert!(sliding < 2 * limit); }
            }
        }
    }

    /// A denied request retried exactly at retry_after is admitted; 1 ns earlier it is
    /// not. Checked by replaying the same history on fresh limiters. All algorithms.
    #[test]
    fn retry_after_is_exact(algorithm in algorithm(), rate in 1u64..10, period_ms in 1u64..1000,
                            burst in 1u64..10, steps in prop::collection::vec((0u64..50_000_000, 1u64..=3), 1..40)) {
        let limit = if algorithm == Algorithm::Gcra { burst } else { rate };
        let q = quota(algorithm, rate, period_ms, burst);
        let steps: Vec<_> = steps.into_iter().map(|(dt, c)| (dt, c.min(limit))).collect();
        let run = replay(&[q], &steps);
        for (k, (now, cost, d)) in run.iter().enumerate() {
            prop_assert!(d.remaining <= d.limit);
            if d.allowed { prop_assert_eq!(d.retry_after, Duration::ZERO); continue; }
            let retry = d.retry_after.as_nanos() as u64;
            prop_assert!(retry > 0);
            for (at, expect) in [(now + retry - 1, false), (now + retry, true)] {
                let l = limiter(&[q]);
                let mut t = 0;
                for &(dt, c) in &steps[..k] { t += dt; l.check_at("k", c, Duration::from_nanos(t)).unwrap(); }
                let again = l.check_at("k", *cost, Duration::from_nanos(at)).unwrap();
                prop_assert_eq!(again.allowed, expect, "{} at {} (denied at {}, retry {})", algorithm, at, now, retry);
            }
        }
    }

    /// Several quotas: admitted iff every reference model admits, and then all are
    /// charged; otherwise none is.
    #[test]
    fn multi_quota_is_all_or_nothing(r1 in 1u64..20, p1 in 1u64..500, b1 in 1u64..10,
                                     limit in 1u64..15, p2 in 1u64..3000, steps in steps(40_000_000, 4)) {
        let q1 = quota(Algorithm::Gcra, r1, p1, b1);
        let q2 = quota(Algorithm::SlidingLog, limit, p2, limit);
        let mut bucket = RefBucket::new(&q1);
        let mut log = RefLog { window: p2 * 1_000_000, limit, log: Vec::new() };
        let steps: Vec<_> = steps.into_iter().map(|(dt, c)| (dt, c.min(b1).min(limit))).collect();
        for (now, cost, d) in replay(&[q1, q2], &steps) {
            let fits = bucket.fits(now, cost) & log.fits(now, cost);
            prop_assert_eq!(d.allowed, fits, "at {} cost {}", now, cost);
            if fits { bucket.take(cost); log.log.push((now, cost)); }
        }
    }

    /// A cost above some quota's burst is always an error, never a decision.
    #[test]
    fn cost_above_burst_is_an_error(algorithm in algorithm(), rate in 1u64..100, extra in 1u64..1000) {
        let q = quota(algorithm, rate, 1000, rate);
        let l = limiter(&[q]);
        let err = l.check_at("k", rate + extra, Duration::ZERO).unwrap_err();
        prop_assert_eq!(err.kind(), ErrorKind::CostExceedsBurst);
        prop_assert_eq!(l.len(), 0, "an error stores nothing");
    }

    /// Peek never charges: after any number of peeks the next check is unchanged.
    #[test]
    fn peek_never_charges(algorithm in algorithm(), rate in 1u64..10, peeks in 1usize..20) {
        let q = quota(algorithm, rate, 1000, rate);
        let l = limiter(&[q]);
        for _ in 0..peeks { l.peek_at("k", Duration::ZERO).unwrap(); l.check_at("k", 0, Duration::ZERO).unwrap(); }
        let d = l.check_at("k", rate, Duration::ZERO).unwrap();
        prop_assert!(d.allowed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// A charge followed by its refund at the same instant leaves the key as if the
    /// charge never happened: every later decision is the same.
    #[test]
    fn refund_undoes_a_charge(algorithm in algorithm(), rate in 1u64..10, period_ms in 1u64..1000,
                              burst in 1u64..10, history in steps(30_000_000, 3), probe in steps(30_000_000, 3),
                              extra in 1u64..=3) {
        let limit = if algorithm == Algorithm::Gcra { burst } else { rate };
        let q = quota(algorithm, rate, period_ms, burst);
        let clamp = |s: Vec<(u64, u64)>| -> Vec<(u64, u64)> { s.into_iter().map(|(dt, c)| (dt, c.min(limit))).collect() };
        let (history, probe, extra) = (clamp(history), clamp(probe), extra.min(limit));
        let (a, b) = (limiter(&[q]), limiter(&[q]));
        let mut t = 0;
        for &(dt, c) in &history {
            t += dt;
            let at = Duration::from_nanos(t);
            prop_assert_eq!(a.check_at("k", c, at).unwrap(), b.check_at("k", c, at).unwrap());
        }
        let at = Duration::from_nanos(t);
        if b.check_at("k", extra, at).unwrap().allowed {
            b.refund_at("k", extra, at).unwrap();
        }
        for &(dt, c) in &probe {
            t += dt;
            let at = Duration::from_nanos(t);
            prop_assert_eq!(a.check_at("k", c, at).unwrap(), b.check_at("k", c, at).unwrap(), "at {}", t);
        }
    }
}
