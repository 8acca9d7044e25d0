//! Time sources. A limiter reads its clock once per check; tests inject a
//! [`FakeClock`] or pass the time explicitly with `check_at`.
//!
//! All clocks report integer nanoseconds since their own origin. Only differences
//! matter to the algorithms, and a clock that goes backwards never over-admits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic time source in nanoseconds.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since this clock's origin.
    fn now_ns(&self) -> u64;
}

/// The clock a limiter uses unless told otherwise: [`QuantaClock`] (TSC when it is
/// invariant, else the OS monotonic clock). Chosen on measurements recorded in
/// `benches/README.md`: about 3x cheaper than `Instant::now()` here.
pub type DefaultClock = QuantaClock;

/// `std::time::Instant` (the OS monotonic clock, `clock_gettime` through the vDSO).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The CPU's time-stamp counter, through `quanta`, calibrated against the OS clock;
/// falls back to the OS clock where the TSC is not invariant. Monotonic.
#[derive(Debug, Clone)]
pub struct QuantaClock {
    clock: quanta::Clock,
    origin: u64,
}

impl QuantaClock {
    /// A clock whose origin is now. Calibration happens once per process.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self { clock, origin }
    }
}

impl Default for QuantaClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for QuantaClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// # Examples
/// ```
/// use floodgate::{Clock, FakeClock};
/// use std::time::Duration;
/// let clock = FakeClock::new();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now_ns(), 5_000_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward (saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: the clock value is the only data; readers need no other memory.
        let _ = self
            .now
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Sets the time, which may go backwards (to test that case).
    pub fn set(&self, now: Duration) {
        self.now.store(
            u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_clocks_are_monotonic() {
        let (m, q) = (MonotonicClock::new(), QuantaClock::new());
        let (mut lm, mut lq) = (0, 0);
        for _ in 0..10_000 {
            let (a, b) = (m.now_ns(), q.now_ns());
            assert!(a >= lm && b >= lq);
            (lm, lq) = (a, b);
        }
    }

    #[test]
    fn fake_clock_saturates_and_goes_back() {
        let c = FakeClock::new();
        c.advance(Duration::MAX);
        assert_eq!(c.now_ns(), u64::MAX);
        c.set(Duration::from_nanos(7));
        assert_eq!(c.clone().now_ns(), 7);
    }
}
