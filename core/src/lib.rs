//! # Floodgate
//!
//! An embedded rate-limiting engine: call it once per request to decide allow or
//! deny, from Rust here and from C, Python and Node through the bindings.
//!
//! ```
//! use floodgate::{Algorithm, Limiter, Quota};
//! use std::time::Duration;
//!
//! // Token bucket (GCRA): 10 per second, bursts of up to 20.
//! let limiter = Limiter::new("10/s burst 20".parse()?)?;
//! let decision = limiter.check("api-key:abc123", 1)?;
//! if !decision.allowed {
//!     // Answer 429 with Retry-After = decision.retry_after.
//! }
//!
//! // Several quotas, charged all-or-nothing, and explicit time for tests.
//! let strict = Limiter::builder()
//!     .quota(Quota::per_second(5)?)
//!     .quota(Quota::per_hour(100)?.with_algorithm(Algorithm::SlidingLog)?)
//!     .build()?;
//! let d = strict.check_at("ip:203.0.113.7", 5, Duration::ZERO)?;
//! assert!(d.allowed);
//! let d = strict.check_at("ip:203.0.113.7", 1, Duration::ZERO)?;
//! assert!(!d.allowed);
//! assert_eq!(d.retry_after, Duration::from_millis(200));
//! # Ok::<(), floodgate::Error>(())
//! ```
//!
//! See the [`guide`] for the algorithms' exact semantics and error bounds, memory
//! use, and how the store stays bounded under attack.

// No unsafe code, but for the shared-memory store's mapping (one module,
// `store/shm/region.rs`, each block justified).
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod algorithm;
#[cfg(feature = "policy")]
mod carry;
mod clock;
#[cfg(feature = "policy")]
mod codes;
mod decision;
mod error;
#[cfg(any(feature = "policy", floodgate_loom))]
mod flight;
mod limiter;
mod quota;
mod state;
mod store;
mod sync;

pub mod guide;
#[cfg(feature = "policy")]
pub mod policy;

pub use clock::{Clock, DefaultClock, FakeClock, MonotonicClock, QuantaClock};
pub use decision::Decision;
pub use error::{CostProblem, Error, ErrorField, ErrorKind, ParseProblem, QuotaProblem, Result};
pub use limiter::{Limiter, LimiterBuilder, MAX_QUOTAS};
pub use quota::{Algorithm, Quota};
#[cfg(feature = "redis")]
pub use store::redis::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DecisionSource, FailMode, RedisLimiter,
    RedisLimiterBuilder, RedisStore, RedisStoreBuilder, background_runtime,
};

/// Items for the loom model only (`--cfg floodgate_loom`); not a public API.
#[cfg(floodgate_loom)]
#[doc(hidden)]
pub mod loom_api {
    pub use loom::sync::atomic::AtomicU64;

    /// Takes a place in flight (`max_in_flight`) at `period`; true if one was free.
    pub fn flight_acquire(cell: &AtomicU64, period: u32, max: u64) -> bool {
        crate::flight::acquire(cell, period, max)
    }

    /// Gives back a place taken at `taken`, as of period `now`.
    pub fn flight_release(cell: &AtomicU64, taken: u32, now: u32) {
        crate::flight::release(cell, taken, now);
    }

    /// Places held at `period`.
    pub fn flight_held(cell: &AtomicU64, period: u32) -> u64 {
        crate::flight::Flight::unpack(cell.load(loom::sync::atomic::Ordering::Acquire)).held(period)
    }

    /// One packed-window check (a fixed-window or sliding-window `quota` that
    /// packs) on `cell`; true if admitted.
    pub fn window_allowed(cell: &AtomicU64, quota: &crate::Quota, now: u64, cost: u64) -> bool {
        packed(quota).is_some_and(|w| w.check(cell, now, cost).allowed)
    }

    /// Gives back `cost` units of a packed window charged at `now`.
    pub fn window_refund(cell: &AtomicU64, quota: &crate::Quota, now: u64, cost: u64) {
        if let Some(w) = packed(quota) {
            w.refund(cell, now, cost);
        }
    }

    /// Units a packed window has left at `now` (nothing charged).
    pub fn window_remaining(cell: &AtomicU64, quota: &crate::Quota, now: u64) -> u64 {
        let bits = cell.load(loom::sync::atomic::Ordering::Acquire);
        packed(quota).map_or(0, |w| w.peek(bits, now).remaining)
    }

    fn packed(quota: &crate::Quota) -> Option<crate::state::PackedWindow> {
        crate::state::PackedWindow::new(quota)
    }

    /// One fast-path GCRA check on `cell`; true if admitted.
    pub fn gcra_allowed(cell: &AtomicU64, quota: &crate::Quota, now: u64, cost: u64) -> bool {
        let gcra = crate::algorithm::gcra::Gcra::new(quota);
        crate::state::gcra_check(cell, &gcra, now, cost).allowed
    }
}

/// The README's Rust example runs as a doctest, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
