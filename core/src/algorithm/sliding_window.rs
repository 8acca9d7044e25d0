//! Sliding windows: the exact log, and the O(1) two-window counter.

use std::collections::VecDeque;

use super::Outcome;
use crate::quota::Quota;

/// Sliding window counter state: counts of the window `window` and of the one before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CounterState {
    pub window: u64,
    pub prev: u64,
    pub curr: u64,
}

/// Sliding window counter. At offset `off` into window `k` the estimate of the last
/// `W` ns is `ceil(prev * (W - off) / W) + curr`; a request of cost `n` fits iff
/// `estimate + n <= limit`.
///
/// Error bound (see the guide): any aligned window admits at most `limit`, and any
/// sliding window of length `W` admits less than `2 * limit`; the estimate is
/// exact when the previous window's traffic was spread evenly. Rounding up the
/// previous window's share means rounding never admits extra.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlidingCounter {
    limit: u64,
    window: u64,
}

impl SlidingCounter {
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

    /// `ceil(count * (W - off) / W)`: the previous window's share at offset `off`.
    fn weighted(&self, count: u64, off: u64) -> u64 {
        let left = self.window - off.min(self.window);
        match count.checked_mul(left) {
            // The common case, without a 128-bit division.
            Some(product) => product.div_ceil(self.window),
            None => {
                let w = u128::from(self.window);
                let share = (u128::from(count) * u128::from(left)).div_ceil(w);
                u64::try_from(share).unwrap_or(u64::MAX)
            }
        }
    }

    /// Rolls `state` forward to the window holding `now` (clamped, if the clock went
    /// back, to the stored window's start), returning the rolled state and `now`.
    fn roll(&self, state: CounterState, now: u64) -> (CounterState, u64) {
        let start = state.window.saturating_mul(self.window);
        let now = now.max(start);
        let index = now / self.window;
        let rolled = match index.saturating_sub(state.window) {
            0 => state,
            1 => CounterState {
                window: index,
                prev: state.curr,
                curr: 0,
            },
            _ => CounterState {
                window: index,
                prev: 0,
                curr: 0,
            },
        };
        (rolled, now)
    }

    /// Smallest offset into a window whose previous count is `prev` at which
    /// `ceil(prev * (W - off) / W) <= room`, or `W` if none within the window.
    fn offset_fitting(&self, prev: u64, room: u64) -> u64 {
        if prev <= room {
            return 0;
        }
        let fit = u128::from(room) * u128::from(self.window) / u128::from(prev);
        self.window - u64::try_from(fit).unwrap_or(self.window).min(self.window)
    }

    /// The sliding window's estimate at `now`, whatever the limit.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // carry.rs
    pub(crate) fn used(&self, state: CounterState, now: u64) -> u64 {
        let (s, at) = self.roll(state, now);
        let off = at - s.window.saturating_mul(self.window);
        self.weighted(s.prev, off).saturating_add(s.curr)
    }

    /// Gives back `cost` units charged in the window of `now` (if still current).
    pub(crate) fn refund(&self, state: &mut CounterState, now: u64, cost: u64) {
        if state.window == now / self.window {
            state.curr = state.curr.saturating_sub(cost);
        }
    }

    #[inline]
    pub(crate) fn decide(
        &self,
        state: CounterState,
        now: u64,
        cost: u64,
    ) -> (Outcome, CounterState) {
        let (s, at) = self.roll(state, now);
        let lag = at - now; // > 0 only if the clock went back
        let start = s.window.saturating_mul(self.window);
        let off = at - start;
        let estimate = self.weighted(s.prev, off).saturating_add(s.curr);
        let until = |windows: u64| {
            lag.saturating_add(
                start
                    .saturating_add(windows * self.window)
                    .saturating_sub(at),
            )
        };
        let reset_after = if s.curr > 0 {
            until(2)
        } else if s.prev > 0 {
            until(1)
        } else {
            0
        };
        let used = estimate.saturating_add(cost);
        if used <= self.limit {
            let next = CounterState {
                curr: s.curr.saturating_add(cost),
                ..s
            };
            let reset_after = if cost > 0 && s.curr == 0 {
                until(2)
            } else {
                reset_after
            };
            let outcome = Outcome {
                allowed: true,
                remaining: self.limit - used,
                retry_after: 0,
                reset_after,
            };
            return (outcome, next);
        }
        // Denied: find the first instant the request fits, in this window or later.
        let retry_at = match (self.limit - cost).checked_sub(s.curr) {
            Some(room) if self.offset_fitting(s.prev, room) < self.window => {
                start.saturating_add(self.offset_fitting(s.prev, room))
            }
            // Next window: prev becomes curr, curr becomes 0.
            _ => start
                .saturating_add(self.window)
                .saturating_add(self.offset_fitting(s.curr, self.limit - cost)),
        };
        let outcome = Outcome {
            allowed: false,
            remaining: self.limit.saturating_sub(estimate),
            retry_after: lag.saturating_add(retry_at.saturating_sub(at)),
            reset_after,
        };
        (outcome, state)
    }
}

/// Sliding log state: (timestamp, cost) of each admitted request still in the
/// window, oldest first, and their total. At most `limit` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogState {
    entries: VecDeque<(u64, u64)>,
    total: u64,
}

impl LogState {
    /// One entry of `cost` units at `at`.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // carry.rs
    pub(crate) fn single(at: u64, cost: u64) -> Self {
        let mut entries = VecDeque::with_capacity(1);
        if cost > 0 {
            entries.push_back((at, cost));
        }
        Self {
            entries,
            total: cost,
        }
    }
}

/// Sliding log: a request of cost `n` fits iff the costs logged in `(now - W, now]`
/// plus `n` are at most `limit`. Exact; O(limit) memory per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlidingLog {
    limit: u64,
    window: u64,
}

impl SlidingLog {
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

    /// Units logged in the window ending at `now`, whatever the limit.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // carry.rs
    pub(crate) fn used(&self, state: &LogState, now: u64) -> u64 {
        let mut s = state.clone();
        self.prune(&mut s, now);
        s.total
    }

    /// Drops entries that left the window. They can never count again, so doing
    /// this on a denied request changes nothing.
    fn prune(&self, state: &mut LogState, now: u64) {
        while let Some(&(ts, cost)) = state.entries.front() {
            if ts.saturating_add(self.window) > now {
                break;
            }
            state.entries.pop_front();
            state.total = state.total.saturating_sub(cost);
        }
    }

    /// Decides without charging; [`SlidingLog::commit`] charges an allowed request.
    pub(crate) fn decide(&self, state: &mut LogState, now: u64, cost: u64) -> Outcome {
        self.prune(state, now);
        let reset_after = |extra: Option<u64>| {
            extra
                .or(state.entries.back().map(|e| e.0))
                .map_or(0, |ts| ts.saturating_add(self.window).saturating_sub(now))
        };
        let used = state.total.saturating_add(cost);
        if used <= self.limit {
            let last = if cost > 0 {
                Some(now.max(state.entries.back().map_or(0, |e| e.0)))
            } else {
                None
            };
            return Outcome {
                allowed: true,
                remaining: self.limit - used,
                retry_after: 0,
                reset_after: reset_after(last),
            };
        }
        // Wait until enough of the oldest entries expire.
        let mut need = used - self.limit;
        let mut retry_after = 0;
        for &(ts, c) in &state.entries {
            retry_after = ts.saturating_add(self.window).saturating_sub(now);
            need = need.saturating_sub(c);
            if need == 0 {
                break;
            }
        }
        Outcome {
            allowed: false,
            remaining: self.limit.saturating_sub(state.total),
            retry_after,
            reset_after: reset_after(None),
        }
    }

    /// Gives back `cost` units from the newest entries.
    pub(crate) fn refund(&self, state: &mut LogState, mut cost: u64) {
        while cost > 0 {
            let Some(last) = state.entries.back_mut() else {
                break;
            };
            let take = last.1.min(cost);
            last.1 -= take;
            state.total = state.total.saturating_sub(take);
            cost -= take;
            if last.1 == 0 {
                state.entries.pop_back();
            }
        }
    }

    /// Charges `cost` at `now` (after `decide` allowed it at the same `now`).
    pub(crate) fn commit(&self, state: &mut LogState, now: u64, cost: u64) {
        if cost == 0 {
            return;
        }
        state.total = state.total.saturating_add(cost);
        match state.entries.back_mut() {
            // A clock that went back logs at the latest time seen: entries stay sorted.
            Some(last) if last.0 >= now => last.1 = last.1.saturating_add(cost),
            _ => state.entries.push_back((now, cost)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(s: &str) -> Quota {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn counter_weights_previous_window() {
        let c = SlidingCounter::new(&quota("10/s"));
        let full = CounterState {
            window: 0,
            prev: 0,
            curr: 10,
        };
        // At 25% into window 1, the previous 10 weigh ceil(7.5) = 8: room for 2.
        let (o, s) = c.decide(full, 1_250_000_000, 2);
        assert!(o.allowed);
        assert_eq!(o.remaining, 0);
        let (o, _) = c.decide(s, 1_250_000_000, 1);
        assert!(!o.allowed);
        // Needs ceil(10*(W-off)/W) <= 7: off >= 0.3 s.
        assert_eq!(o.retry_after, 50_000_000);
        assert!(c.decide(s, 1_300_000_000, 1).0.allowed);
        assert!(!c.decide(s, 1_299_999_999, 1).0.allowed);
    }

    #[test]
    fn log_is_exact() {
        let l = SlidingLog::new(&quota("3/s"));
        let mut s = LogState::default();
        for now in [0, 100, 200] {
            assert!(l.decide(&mut s, now, 1).allowed);
            l.commit(&mut s, now, 1);
        }
        let o = l.decide(&mut s, 500, 1);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 1_000_000_000 - 500);
        assert!(!l.decide(&mut s, 999_999_999, 1).allowed);
        assert!(l.decide(&mut s, 1_000_000_000, 1).allowed);
        // Cost 2 needs the first two entries gone.
        let o = l.decide(&mut s, 1_000_000_000, 3);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, 200);
    }
}
