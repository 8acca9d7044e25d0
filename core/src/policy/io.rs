//! How the request path reaches its stores. [`Blocking`]: every synchronous
//! check (memory and shared memory never wait; Redis holds the calling thread
//! for at most its deadline). [`NonBlocking`]: `Engine::check_request_async`,
//! whose Redis round trips go over the multiplexed tokio connection and never
//! hold an executor thread. The decision procedure is written once
//! (`procedure!` in decide.rs) and expanded twice, so the two paths cannot
//! drift: plain against [`Now`] ([`Blocking`]), `async` against [`Io`]
//! ([`NonBlocking`]). Settling a verdict is written once as `async` and
//! driven on the caller's thread with [`complete`] when blocking (every
//! future it awaits is ready at once: no runtime, no allocation).

use std::future::{Future, ready};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::calendar::{Calendar, CalendarAt};
use super::lifecycle::{InFlight, Place};
use super::store::{Checked, RuleLimiter};
use crate::error::Result;

/// The store calls a decision makes.
pub(super) trait Io: Sync {
    /// Charges `cost` to `key` under `limiter`.
    fn check(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> impl Future<Output = Result<Checked>> + Send;

    /// Charges `cost` to `key` under a calendar rule's `limiter` at `at`
    /// (`Engine::check_request`'s time: Redis works its calendar time out
    /// from its own clock).
    fn check_calendar(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        calendar: &Calendar,
        at: CalendarAt,
    ) -> impl Future<Output = Result<Checked>> + Send;

    /// Gives back `cost` (best effort).
    fn refund(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> impl Future<Output = ()> + Send;

    /// Takes a place in flight.
    fn acquire(
        &self,
        flight: &InFlight,
        key: &[u8],
        now: u64,
        explicit: Option<Duration>,
    ) -> impl Future<Output = Option<Place>> + Send;

    /// Gives a place back.
    fn release(
        &self,
        flight: &InFlight,
        key: &[u8],
        place: Place,
        now: u64,
        explicit: Option<Duration>,
    ) -> impl Future<Output = ()> + Send;
}

/// The store calls of a synchronous decision: [`Io`]'s, answered when made.
pub(super) trait Now {
    /// [`Io::check`], answered.
    fn check(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> Result<Checked>;

    /// [`Io::check_calendar`], answered.
    fn check_calendar(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        calendar: &Calendar,
        at: CalendarAt,
    ) -> Result<Checked>;

    /// [`Io::refund`], done.
    fn refund(&self, limiter: &RuleLimiter, key: &[u8], cost: u64, now: Duration, explicit: bool);

    /// [`Io::acquire`], answered.
    fn acquire(
        &self,
        flight: &InFlight,
        key: &[u8],
        now: u64,
        explicit: Option<Duration>,
    ) -> Option<Place>;

    /// [`Io::release`], done.
    fn release(
        &self,
        flight: &InFlight,
        key: &[u8],
        place: Place,
        now: u64,
        explicit: Option<Duration>,
    );
}

/// Synchronous calls on the caller's thread (Redis holds it for at most its
/// deadline).
pub(super) struct Blocking;

impl Now for Blocking {
    fn check(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> Result<Checked> {
        limiter.check(key, cost, now, explicit)
    }

    fn check_calendar(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        calendar: &Calendar,
        at: CalendarAt,
    ) -> Result<Checked> {
        limiter.check_calendar(key, cost, calendar, at)
    }

    fn refund(&self, limiter: &RuleLimiter, key: &[u8], cost: u64, now: Duration, explicit: bool) {
        limiter.refund(key, cost, now, explicit)
    }

    fn acquire(
        &self,
        flight: &InFlight,
        key: &[u8],
        now: u64,
        explicit: Option<Duration>,
    ) -> Option<Place> {
        flight.acquire(key, now, explicit)
    }

    fn release(
        &self,
        flight: &InFlight,
        key: &[u8],
        place: Place,
        now: u64,
        explicit: Option<Duration>,
    ) {
        flight.release(key, place, now, explicit)
    }
}

/// The same calls as futures ready when made, for procedures written only
/// once as `async` (settling a verdict: `Engine::settle`), driven by
/// [`complete`].
impl Io for Blocking {
    fn check(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> impl Future<Output = Result<Checked>> + Send {
        ready(Now::check(self, limiter, key, cost, now, explicit))
    }

    fn check_calendar(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        calendar: &Calendar,
        at: CalendarAt,
    ) -> impl Future<Output = Result<Checked>> + Send {
        ready(Now::check_calendar(self, limiter, key, cost, calendar, at))
    }

    fn refund(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> impl Future<Output = ()> + Send {
        Now::refund(self, limiter, key, cost, now, explicit);
        ready(())
    }

    fn acquire(
        &self,
        flight: &InFlight,
        key: &[u8],
        now: u64,
        explicit: Option<Duration>,
    ) -> impl Future<Output = Option<Place>> + Send {
        ready(Now::acquire(self, flight, key, now, explicit))
    }

    fn release(
        &self,
        flight: &InFlight,
        key: &[u8],
        place: Place,
        now: u64,
        explicit: Option<Duration>,
    ) -> impl Future<Output = ()> + Send {
        Now::release(self, flight, key, place, now, explicit);
        ready(())
    }
}

/// Async calls: Redis round trips on the multiplexed tokio connection.
pub(super) struct NonBlocking;

impl Io for NonBlocking {
    fn check(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> impl Future<Output = Result<Checked>> + Send {
        limiter.check_async(key, cost, now, explicit)
    }

    fn check_calendar(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        calendar: &Calendar,
        at: CalendarAt,
    ) -> impl Future<Output = Result<Checked>> + Send {
        limiter.check_calendar_async(key, cost, calendar, at)
    }

    fn refund(
        &self,
        limiter: &RuleLimiter,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> impl Future<Output = ()> + Send {
        limiter.refund_async(key, cost, now, explicit)
    }

    fn acquire(
        &self,
        flight: &InFlight,
        key: &[u8],
        now: u64,
        explicit: Option<Duration>,
    ) -> impl Future<Output = Option<Place>> + Send {
        flight.acquire_async(key, now, explicit)
    }

    fn release(
        &self,
        flight: &InFlight,
        key: &[u8],
        place: Place,
        now: u64,
        explicit: Option<Duration>,
    ) -> impl Future<Output = ()> + Send {
        flight.release_async(key, place, now, explicit)
    }
}

/// The output of a future that never waits (one written against [`Blocking`]),
/// run on this thread; `None` if it did wait (it cannot: every [`Blocking`]
/// call is ready when made). The caller pins the future where it made it
/// (`pin!`): passing a large future by value costs a copy per call (a
/// decision's was 2,256 bytes, `size_of_val`, when decisions ran this way).
pub(super) fn complete<T>(future: Pin<&mut impl Future<Output = T>>) -> Option<T> {
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
