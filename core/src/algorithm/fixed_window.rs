//! Fixed window: at most `limit` units per aligned window `[k*W, (k+1)*W)`.
//!
//! State: the window index `k` the count belongs to, and the count.

use super::Outcome;
use crate::quota::Quota;

/// State of one key: the window it counts for and the units admitted in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FixedState {
    pub window: u64,
    pub count: u64,
}

/// Fixed-window parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedWindow {
    limit: u64,
    window: u64,
}

impl FixedWindow {
    pub(crate) fn new(quota: &Quota) -> Self {
        Self {
            limit: quota.limit(),
            window: quota.period_ns(),
        }
    }

    /// The window's length in ns.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // carry.rs
    pub(crate) const fn window(&self) -> u64 {
        self.window
    }

    /// Units counted in the window of `now` (a later stored window, after the
    /// clock went back, still counts), whatever the limit.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // carry.rs
    pub(crate) fn used(&self, state: FixedState, now: u64) -> u64 {
        if state.window >= now / self.window {
            state.count
        } else {
            0
        }
    }

    /// Gives back `cost` units if the state is still in the window of `now`.
    pub(crate) fn refund(&self, state: &mut FixedState, now: u64, cost: u64) {
        if state.window == now / self.window {
            state.count = state.count.saturating_sub(cost);
        }
    }

    #[inline]
    pub(crate) fn decide(&self, state: FixedState, now: u64, cost: u64) -> (Outcome, FixedState) {
        let index = now / self.window;
        // A clock that went back stays in the stored (later) window: never a fresh count.
        let current = if state.window >= index && state.count > 0 {
            state
        } else {
            FixedState {
                window: index,
                count: 0,
            }
        };
        let window_end = current.window.saturating_add(1).saturating_mul(self.window);
        let until_end = window_end.saturating_sub(now);
        let count = current.count.saturating_add(cost);
        if count <= self.limit {
            let reset_after = if count == 0 { 0 } else { until_end };
            let outcome = Outcome {
                allowed: true,
                remaining: self.limit - count,
                retry_after: 0,
                reset_after,
            };
            (outcome, FixedState { count, ..current })
        } else {
            let outcome = Outcome {
                allowed: false,
                remaining: self.limit.saturating_sub(current.count),
                // The next window starts empty and cost <= limit is checked upstream.
                retry_after: until_end,
                reset_after: until_end,
            };
            (outcome, state)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_aligned_window() {
        let f = FixedWindow::new(&"3/s".parse().unwrap_or_else(|e| panic!("{e}")));
        let mut s = FixedState::default();
        for (now, allowed, remaining) in [
            (100, true, 2),
            (200, true, 1),
            (300, true, 0),
            (400, false, 0),
        ] {
            let (o, n) = f.decide(s, now, 1);
            assert_eq!((o.allowed, o.remaining), (allowed, remaining), "at {now}");
            s = n;
        }
        let (o, _) = f.decide(s, 400, 1);
        assert_eq!(o.retry_after, 1_000_000_000 - 400);
        assert!(!f.decide(s, 999_999_999, 1).0.allowed);
        assert!(f.decide(s, 1_000_000_000, 1).0.allowed);
        // Clock back into an earlier window keeps the later window's count.
        assert!(!f.decide(s, 0, 1).0.allowed);
    }
}
