//! [`Decision`]: the answer to one check. A denial is data, not an error.

use std::time::Duration;

/// The verdict of one check, from the quota that decided it.
///
/// When allowed, the deciding quota is the most constraining one (fewest units
/// remaining). When denied, it is the denying quota with the longest wait.
///
/// # Examples
/// ```
/// use floodgate::{Limiter, Quota};
/// use std::time::Duration;
/// let limiter = Limiter::new(Quota::per_second(1)?)?;
/// let d = limiter.check_at("k", 1, Duration::ZERO)?;
/// assert!(d.allowed && d.remaining == 0);
/// let d = limiter.check_at("k", 1, Duration::ZERO)?;
/// assert!(!d.allowed);
/// assert_eq!(d.retry_after, Duration::from_secs(1));
/// # Ok::<(), floodgate::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The request may proceed (and was charged, unless it was a peek).
    pub allowed: bool,
    /// The deciding quota's limit (its burst for GCRA).
    pub limit: u64,
    /// Units of that quota left after this request (if allowed) or now (if denied).
    pub remaining: u64,
    /// Zero when allowed. When denied, the exact wait after which the same request
    /// would be admitted (if nothing else is charged meanwhile): not one
    /// nanosecond earlier.
    pub retry_after: Duration,
    /// Time until the deciding quota is back to its full limit.
    pub reset_after: Duration,
    /// Index of the deciding quota in the limiter's quota list.
    pub quota: usize,
}
