//! Time units of the Redis store, as types: the script and the local layers count
//! whole **microseconds**, the in-memory store counts nanoseconds. A conversion is
//! a named method, so a missing `* 1000` cannot compile.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A time (µs since an epoch the caller states) or an interval, in whole
/// microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Micros(pub(super) u64);

impl Micros {
    /// Whole microseconds, rounded down.
    pub(super) fn floor(d: Duration) -> Self {
        Self(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// Whole microseconds, rounded up and at least 1: for a quota's interval or
    /// window, where longer is only stricter.
    pub(super) fn ceil(d: Duration) -> Self {
        Self(
            u64::try_from(d.as_nanos().div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1),
        )
    }

    /// The current Unix time.
    pub(super) fn unix_now() -> Self {
        Self::floor(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    pub(super) fn duration(self) -> Duration {
        Duration::from_micros(self.0)
    }

    /// The same instant in nanoseconds, the in-memory store's unit (saturating).
    pub(super) fn nanos(self) -> u64 {
        self.0.saturating_mul(1000)
    }

    /// For the script's `now` argument: the value, or `i64::MAX` past it.
    pub(super) fn script_arg(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    pub(super) fn saturating_add(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }

    pub(super) fn saturating_sub(self, other: Self) -> Self {
        Self(self.0.saturating_sub(other.0))
    }

    pub(super) fn is_zero(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_conversions() {
        assert_eq!(Micros::floor(Duration::from_nanos(1999)), Micros(1));
        assert_eq!(Micros::ceil(Duration::from_nanos(1001)), Micros(2));
        assert_eq!(Micros::ceil(Duration::ZERO), Micros(1));
        assert_eq!(Micros::floor(Duration::MAX), Micros(u64::MAX));
        assert_eq!(Micros(3).nanos(), 3000);
        assert_eq!(Micros(u64::MAX).nanos(), u64::MAX);
        assert_eq!(Micros(u64::MAX).script_arg(), i64::MAX);
        assert_eq!(Micros(1500).duration(), Duration::from_micros(1500));
        assert_eq!(Micros(1).saturating_sub(Micros(2)), Micros(0));
    }
}
