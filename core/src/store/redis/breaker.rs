//! The circuit breaker shared by every limiter on one [`RedisStore`](super::RedisStore).
//!
//! It opens after `threshold` consecutive failures; while open, checks are
//! answered by the fail mode without waiting for a timeout. After a cool-down one
//! probe is let through (half-open); a failed probe doubles the cool-down up to a
//! ceiling, and the first success closes the breaker and resets the cool-down.
//!
//! Lock-free (atomics only), and the clock is the caller's: every method takes
//! `now`, so the tests drive it with plain numbers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::units::Micros;

#[derive(Debug)]
pub(super) struct Breaker {
    failures: AtomicU32,
    /// 0 = closed; else the time (µs) from which one probe may go through.
    open_until: AtomicU64,
    cooldown: AtomicU64,
    trips: AtomicU64,
    threshold: u32,
    min_cooldown: u64,
    max_cooldown: u64,
}

impl Breaker {
    /// `cooldown` is the first cool-down (at least 1 µs), `max_cooldown` the
    /// ceiling (at least `cooldown`). Times passed to the methods must be above 0.
    pub(super) fn new(threshold: u32, cooldown: Micros, max_cooldown: Micros) -> Self {
        let min = cooldown.0.max(1);
        Self {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            cooldown: AtomicU64::new(min),
            trips: AtomicU64::new(0),
            threshold: threshold.max(1),
            min_cooldown: min,
            max_cooldown: max_cooldown.0.max(min),
        }
    }

    /// Whether a call may go to Redis at `now`.
    pub(super) fn allow(&self, now: Micros) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now.0 < until {
            return false;
        }
        // Half-open: the caller that moves the deadline on is the one probe.
        let next = now.0.saturating_add(self.cooldown.load(Ordering::Relaxed));
        self.open_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub(super) fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0
            || self.open_until.load(Ordering::Relaxed) != 0
        {
            self.failures.store(0, Ordering::Relaxed);
            self.cooldown.store(self.min_cooldown, Ordering::Relaxed);
            self.open_until.store(0, Ordering::Release);
        }
    }

    pub(super) fn failure(&self, now: Micros) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= self.threshold {
            let cooldown = self.cooldown.load(Ordering::Relaxed);
            let was = self
                .open_until
                .swap(now.0.saturating_add(cooldown).max(1), Ordering::AcqRel);
            if was == 0 {
                self.trips.fetch_add(1, Ordering::Relaxed);
            }
            self.cooldown.store(
                cooldown.saturating_mul(2).min(self.max_cooldown),
                Ordering::Relaxed,
            );
        }
    }

    /// Open or half-open.
    pub(super) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Times it went from closed to open.
    pub(super) fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    fn breaker() -> Breaker {
        Breaker::new(3, Micros(50 * MS), Micros(500 * MS))
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = breaker();
        let t = Micros(1_000_000);
        b.failure(t);
        b.failure(t);
        assert!(!b.is_open() && b.allow(t));
        b.success(); // a success in between starts the count again
        b.failure(t);
        b.failure(t);
        assert!(!b.is_open());
        b.failure(t);
        assert!(b.is_open());
        assert_eq!(b.trips(), 1);
        assert!(!b.allow(t));
        assert!(!b.allow(Micros(t.0 + 50 * MS - 1)));
    }

    #[test]
    fn one_probe_after_the_cooldown_then_closed_by_a_success() {
        let b = breaker();
        let t = Micros(1_000_000);
        for _ in 0..3 {
            b.failure(t);
        }
        let later = Micros(t.0 + 50 * MS);
        assert!(
            b.allow(later),
            "the first caller after the cool-down probes"
        );
        assert!(!b.allow(later), "only one probe goes through");
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(later));
        assert_eq!(b.trips(), 1);
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_the_ceiling() {
        let b = breaker();
        let mut t = 1_000_000;
        for _ in 0..3 {
            b.failure(Micros(t));
        }
        // Cool-downs: 50 ms, then 100, 200, 400, 500, 500 after failed probes.
        for want in [50, 100, 200, 400, 500, 500] {
            assert!(
                !b.allow(Micros(t + want * MS - 1)),
                "still open before {want} ms"
            );
            t += want * MS;
            assert!(b.allow(Micros(t)), "probe after {want} ms");
            b.failure(Micros(t));
        }
        assert_eq!(b.trips(), 1, "a failed probe is not a new trip");
        b.success();
        for _ in 0..3 {
            b.failure(Micros(t));
        }
        assert!(
            b.allow(Micros(t + 50 * MS)),
            "a success reset the cool-down"
        );
        assert_eq!(b.trips(), 2);
    }

    #[test]
    fn concurrent_callers_get_exactly_one_probe() {
        let b = std::sync::Arc::new(breaker());
        for _ in 0..3 {
            b.failure(Micros(1));
        }
        let probes: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let b = &b;
                    s.spawn(move || usize::from(b.allow(Micros(50 * MS + 1))))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(probes, 1);
    }
}
