//! Token bucket as GCRA (generic cell rate algorithm).
//!
//! State: the theoretical arrival time `tat` (ns). The bucket is full when
//! `tat <= now`; each unit of cost pushes `tat` one emission interval `T` later; a
//! request of cost `n` fits iff `max(tat, now) + n*T - now <= burst*T`.
//! Invariant (with a non-decreasing clock): `tat <= now + burst*T`.

use super::Outcome;
use crate::quota::Quota;

/// GCRA parameters, derived once from a [`Quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Emission interval T in ns (>= 1).
    interval: u64,
    /// burst * T in ns (<= 2^62, checked by `Quota`).
    capacity: u64,
}

impl Gcra {
    pub(crate) fn new(quota: &Quota) -> Self {
        let interval = quota.interval_ns();
        Self {
            interval,
            capacity: quota.burst().saturating_mul(interval),
        }
    }

    /// burst × T in ns: how far ahead of now a full bucket's TAT may be.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // carry.rs
    pub(crate) const fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The TAT after giving back `cost` units charged earlier.
    #[inline]
    pub(crate) fn refund(&self, tat: u64, cost: u64) -> u64 {
        tat.saturating_sub(cost.saturating_mul(self.interval))
    }

    /// Decides a request of `cost` units at `now`; returns the outcome and the new
    /// `tat` to store if allowed. Never panics; saturates on absurd inputs.
    #[inline]
    pub(crate) fn decide(&self, tat: u64, now: u64, cost: u64) -> (Outcome, u64) {
        let base = tat.max(now);
        // Time already "owed" (bucket debt) at now: > capacity only if the clock went back.
        let owed = base - now;
        let new_tat = base.saturating_add(cost.saturating_mul(self.interval));
        let used = new_tat - now;
        if used <= self.capacity {
            let outcome = Outcome {
                allowed: true,
                remaining: (self.capacity - used) / self.interval,
                retry_after: 0,
                reset_after: used,
            };
            (outcome, new_tat)
        } else {
            let outcome = Outcome {
                allowed: false,
                remaining: self.capacity.saturating_sub(owed) / self.interval,
                retry_after: used - self.capacity,
                reset_after: owed,
            };
            (outcome, tat)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(spec: &str) -> Gcra {
        Gcra::new(&spec.parse().unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn burst_then_steady_rate() {
        let g = gcra("10/s burst 3"); // T = 100 ms
        let mut tat = 0;
        for expect_remaining in [2, 1, 0] {
            let (o, t) = g.decide(tat, 0, 1);
            assert!(o.allowed);
            assert_eq!(o.remaining, expect_remaining);
            tat = t;
        }
        let (o, _) = g.decide(tat, 0, 1);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 100_000_000);
        assert_eq!(o.reset_after, 300_000_000);
        assert!(!g.decide(tat, 99_999_999, 1).0.allowed);
        assert!(g.decide(tat, 100_000_000, 1).0.allowed);
    }

    #[test]
    fn cost_is_charged_in_units() {
        let g = gcra("10/s burst 5");
        let (o, tat) = g.decide(0, 1_000, 4);
        assert!(o.allowed);
        assert_eq!(o.remaining, 1);
        let (o, _) = g.decide(tat, 1_000, 2);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 100_000_000);
        assert_eq!(o.remaining, 1);
    }

    #[test]
    fn clock_going_back_never_over_admits() {
        let g = gcra("10/s burst 2");
        let (_, tat) = g.decide(0, 1_000_000_000, 2);
        // Now is before the last check: the debt looks larger, so it is denied.
        let (o, _) = g.decide(tat, 0, 1);
        assert!(!o.allowed);
        assert_eq!(o.remaining, 0);
        let (o, _) = g.decide(u64::MAX, 0, 1);
        assert!(!o.allowed);
    }
}
