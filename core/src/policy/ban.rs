//! Temporary bans for repeat offenders, and adaptive tightening.
//!
//! **Bans.** Every denial of a key is a strike, counted by an exact sliding log of
//! `after` per `within`. The `after`-th strike inside `within` bans the key for
//! `duration`, and each further ban of the same key lasts `escalate` times longer,
//! up to `max_duration`. A banned key is answered at once (429 or 403, with
//! `Retry-After` = what is left of the ban) without touching its quotas.
//!
//! **Adaptive tightening.** Per rule and key, requests and denials are counted in
//! aligned windows of `window`. A key whose last complete window had at least
//! `min_requests` requests and a denied share above `threshold` is *tightened*:
//! each request costs `factor` times as much (capped at the quota's burst), so
//! with `factor = 2` it gets half its quota. A window at or below the threshold,
//! or a whole window without traffic, lifts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::limiter::Limiter;
use crate::quota::{Algorithm, Quota};
use crate::store::memory::MemoryStore;

/// Ban state of one key.
#[derive(Debug, Default)]
struct BanSlot {
    /// Ban ends at this time (ns, engine time); 0 = not banned.
    until: AtomicU64,
    /// Bans so far (for escalation).
    level: AtomicU64,
}

/// The `[ban]` policy.
pub(crate) struct Bans {
    strikes: Limiter,
    active: MemoryStore<BanSlot>,
    hasher: ahash::RandomState,
    duration_ns: u64,
    escalate: f64,
    max_ns: u64,
    pub(crate) status: u16,
}

impl std::fmt::Debug for Bans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bans")
            .field("duration_ns", &self.duration_ns)
            .field("status", &self.status)
            .finish()
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Bans {
    /// `after` strikes within `within` ban for `duration` (escalating, capped).
    pub(crate) fn new(
        after: u64,
        within: Duration,
        duration: Duration,
        escalate: f64,
        max: Duration,
        status: u16,
        max_keys: usize,
    ) -> crate::Result<Self> {
        let algorithm = if after <= 10_000 {
            Algorithm::SlidingLog
        } else {
            Algorithm::SlidingWindow
        };
        let strikes_quota = Quota::new(after, within)?.with_algorithm(algorithm)?;
        let strikes = Limiter::builder()
            .quota(strikes_quota)
            .max_keys(max_keys)
            .max_key_bytes(1024)
            .build()?;
        // Slots live at least as long as the longest ban, so a ban is never forgotten early.
        let lifetime = ns(max).max(ns(duration)).max(ns(within));
        Ok(Self {
            strikes,
            active: MemoryStore::new(max_keys, 64, lifetime),
            hasher: ahash::RandomState::new(),
            duration_ns: ns(duration),
            escalate,
            max_ns: ns(max),
            status,
        })
    }

    /// What is left of the key's ban at `now`, if it is banned.
    pub(crate) fn banned(&self, key: &[u8], now: u64) -> Option<Duration> {
        let fp = std::hash::BuildHasher::hash_one(&self.hasher, key);
        // Relaxed: `until` is self-contained; a racing ban shows up on the next request.
        let until = self.active.read(fp, |slot| {
            slot.map_or(0, |s| s.until.load(Ordering::Relaxed))
        });
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Records a denial of `key`; returns the ban's length if this strike starts one.
    pub(crate) fn strike(&self, key: &[u8], now: u64) -> Option<Duration> {
        let d = self
            .strikes
            .check_at(key, 1, Duration::from_nanos(now))
            .ok()?;
        if d.allowed && d.remaining > 0 {
            return None;
        }
        let _ = self.strikes.reset(key);
        let fp = std::hash::BuildHasher::hash_one(&self.hasher, key);
        let length = self.active.with(fp, now, BanSlot::default, |slot| {
            let level = slot.level.fetch_add(1, Ordering::Relaxed);
            let factor = self.escalate.powi(i32::try_from(level).unwrap_or(i32::MAX));
            let length = ((self.duration_ns as f64) * factor).min(self.max_ns as f64) as u64;
            slot.until
                .store(now.saturating_add(length), Ordering::Relaxed);
            length
        });
        Some(Duration::from_nanos(length))
    }
}

/// Counts of one key in one window.
#[derive(Debug, Default)]
struct Window {
    index: u64,
    requests: u64,
    denials: u64,
    tightened: bool,
}

/// Adaptive tightening for one rule.
pub(crate) struct Adaptive {
    threshold: f64,
    window_ns: u64,
    min_requests: u64,
    factor: u64,
    store: MemoryStore<Mutex<Window>>,
    hasher: ahash::RandomState,
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("threshold", &self.threshold)
            .field("factor", &self.factor)
            .finish()
    }
}

impl Window {
    /// Moves to the window of `now`, deciding whether the key stays tightened.
    fn roll(&mut self, index: u64, threshold: f64, min_requests: u64) {
        if index <= self.index {
            return;
        }
        self.tightened = index == self.index + 1
            && self.requests >= min_requests
            && self.denials as f64 > threshold * self.requests as f64;
        *self = Window {
            index,
            requests: 0,
            denials: 0,
            tightened: self.tightened,
        };
    }
}

impl Adaptive {
    pub(crate) fn new(
        threshold: f64,
        window: Duration,
        min_requests: u64,
        factor: u64,
        max_keys: usize,
    ) -> Self {
        Self {
            threshold,
            window_ns: ns(window).max(1),
            min_requests,
            factor,
            store: MemoryStore::new(max_keys, 64, ns(window).saturating_mul(2)),
            hasher: ahash::RandomState::new(),
        }
    }

    /// The cost multiplier for `key` at `now` (1, or `factor` while tightened).
    pub(crate) fn multiplier(&self, key: &[u8], now: u64) -> u64 {
        let fp = std::hash::BuildHasher::hash_one(&self.hasher, key);
        let index = now / self.window_ns;
        self.store.read(fp, |w| {
            w.map_or(1, |w| {
                let mut w = w.lock();
                w.roll(index, self.threshold, self.min_requests);
                if w.tightened { self.factor } else { 1 }
            })
        })
    }

    /// Records the outcome of a request of `key` at `now`.
    pub(crate) fn record(&self, key: &[u8], now: u64, denied: bool) {
        let fp = std::hash::BuildHasher::hash_one(&self.hasher, key);
        let index = now / self.window_ns;
        self.store.with(
            fp,
            now,
            || {
                Mutex::new(Window {
                    index,
                    ..Window::default()
                })
            },
            |w| {
                let mut w = w.lock();
                w.roll(index, self.threshold, self.min_requests);
                w.requests += 1;
                w.denials += u64::from(denied);
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn third_strike_bans_and_escalates() -> crate::Result<()> {
        let bans = Bans::new(
            3,
            Duration::from_secs(60),
            Duration::from_secs(10),
            2.0,
            Duration::from_secs(25),
            429,
            1000,
        )?;
        assert_eq!(bans.strike(b"k", 0), None);
        assert_eq!(bans.strike(b"k", S), None);
        assert_eq!(bans.strike(b"k", 2 * S), Some(Duration::from_secs(10)));
        assert_eq!(bans.banned(b"k", 3 * S), Some(Duration::from_secs(9)));
        assert_eq!(bans.banned(b"other", 3 * S), None);
        assert_eq!(bans.banned(b"k", 12 * S), None);
        for t in 13..15 {
            assert_eq!(bans.strike(b"k", t * S), None);
        }
        assert_eq!(
            bans.strike(b"k", 15 * S),
            Some(Duration::from_secs(20)),
            "second ban is twice as long"
        );
        for t in 40..42 {
            bans.strike(b"k", t * S);
        }
        assert_eq!(
            bans.strike(b"k", 42 * S),
            Some(Duration::from_secs(25)),
            "capped at max_duration"
        );
        Ok(())
    }

    #[test]
    fn strikes_outside_the_window_do_not_add_up() -> crate::Result<()> {
        let bans = Bans::new(
            2,
            Duration::from_secs(10),
            Duration::from_secs(10),
            1.0,
            Duration::from_secs(10),
            403,
            100,
        )?;
        assert_eq!(bans.strike(b"k", 0), None);
        assert_eq!(bans.strike(b"k", 11 * S), None);
        assert!(bans.strike(b"k", 12 * S).is_some());
        Ok(())
    }

    #[test]
    fn adaptive_tightens_then_lifts() {
        let a = Adaptive::new(0.5, Duration::from_secs(60), 10, 3, 1000);
        assert_eq!(a.multiplier(b"k", 0), 1);
        for i in 0..20 {
            a.record(b"k", i, i % 4 != 0); // 75% denied
        }
        assert_eq!(a.multiplier(b"k", 59 * S), 1, "decided at the window's end");
        assert_eq!(a.multiplier(b"k", 60 * S), 3);
        for i in 0..20 {
            a.record(b"k", 61 * S + i, false);
        }
        assert_eq!(a.multiplier(b"k", 120 * S), 1, "a clean window lifts it");
        // Too few requests never tighten.
        for i in 0..5 {
            a.record(b"q", 120 * S + i, true);
        }
        assert_eq!(a.multiplier(b"q", 180 * S), 1);
    }
}
