//! The limiting algorithms as pure functions of (state, now, cost): integer
//! nanoseconds in, a new state and an [`Outcome`] out. No atomics, no clock, no
//! allocation (except the sliding log's bounded entry list); the store decides how
//! state is kept and swapped.

pub(crate) mod fixed_window;
pub(crate) mod gcra;
pub(crate) mod sliding_window;

/// What one quota says about one request, before it is turned into a `Decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The request fits.
    pub allowed: bool,
    /// Units still available after this request (if allowed) or now (if denied).
    pub remaining: u64,
    /// 0 when allowed; else the exact wait after which the same request fits.
    pub retry_after: u64,
    /// Time until the key is back to its full, unused limit.
    pub reset_after: u64,
}

impl Outcome {
    /// The outcome a peek reports: allowed/retry for one unit, remaining/reset as they
    /// stand (nothing charged). `one` is the outcome for cost 1, `zero` for cost 0.
    pub(crate) fn peek(one: Outcome, zero: Outcome) -> Outcome {
        Outcome {
            remaining: zero.remaining,
            reset_after: zero.reset_after,
            ..one
        }
    }
}
