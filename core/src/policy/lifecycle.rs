//! The request lifecycle: what a rule does once the response is known, and
//! requests in flight.
//!
//! **Settlement.** A request is charged on arrival, always (so 100 parallel
//! login attempts sent before any response are held to the limit). A rule with
//! `count = "failures"` (or `"successes"`) gives the charge back when the
//! response's status says the request did not count; a rule with `cost_from =
//! "response"` refunds the difference when the real cost is lower, and charges
//! the rest when it is higher: as much as the key has left, so an extra charge
//! that exceeds the quota empties the key and denies the *next* request (it
//! never carries debt past an empty key, and never denies the request that
//! already ran). A verdict never settled (a crashed handler) keeps its charge.
//!
//! The charges to settle travel with the verdict as a [`Settlement`] (one
//! allocation per request, only when a matching rule has a lifecycle setting).
//! Settling it twice is [`Error::AlreadySettled`](crate::Error::AlreadySettled):
//! clones of a verdict share one settlement.
//!
//! **In flight.** A rule with `max_in_flight = N` holds a place per admitted
//! request of a key until it is settled; the N+1th concurrent request is denied
//! (429, reason `concurrency`, `Retry-After: 1`). A place never given back is
//! released by the store between `in_flight_ttl` and twice that after it was
//! taken: places are counted per period of `in_flight_ttl` (this period's and
//! the previous one's), so a crashed worker cannot leak places for longer. The
//! count lives in one 64-bit word per key (the period index modulo 2^32 and
//! two 16-bit counts, so `max_in_flight <= 65535`), in memory or in the
//! shared-memory table; on the Redis store, in a hash per key with the same
//! arithmetic (`store/redis/in_flight.lua`), whose TTL releases forgotten places
//! even when the instance that took them is gone. Redis costs one more round
//! trip on arrival and one at settlement for such a rule; while Redis cannot
//! answer, the rule's fail mode decides (open: admit without a place; closed:
//! deny; local: count in this process).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use smallvec::SmallVec;

use crate::flight::{self, Flight};
use crate::store::memory::MemoryStore;

/// Most requests of a key a rule may hold in flight.
pub(crate) const MAX_IN_FLIGHT: u64 = 0xffff;

/// Which settled requests keep their charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    All,
    Failures,
    Successes,
}

/// A rule's lifecycle settings (`None` on a rule that has none).
#[derive(Debug)]
pub(crate) struct Lifecycle {
    pub count: Count,
    /// Inclusive ranges of failure statuses.
    pub failures: Vec<(u16, u16)>,
    pub cost_from_response: bool,
    pub in_flight: Option<Arc<InFlight>>,
}

impl Lifecycle {
    /// Whether a request answered `status` keeps its charge.
    pub(crate) fn counts(&self, status: u16) -> bool {
        let failed = self
            .failures
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status));
        match self.count {
            Count::All => true,
            Count::Failures => failed,
            Count::Successes => !failed,
        }
    }
}

/// Parses `failure_status`: codes and inclusive ranges, comma-separated.
pub(crate) fn parse_statuses(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let status = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("{:?} is not an HTTP status (100-599)", s.trim()))
    };
    let ranges = text
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (status(lo)?, status(hi)?);
                if lo > hi {
                    return Err(format!("{:?}: the range is empty", part.trim()));
                }
                Ok((lo, hi))
            }
            None => status(part).map(|c| (c, c)),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ranges)
}

/// Where a rule's in-flight counts live in shared memory.
#[cfg(all(feature = "shm", unix))]
pub(crate) struct SharedFlight {
    pub table: Arc<crate::store::shm::ShmTable>,
    pub quota: usize,
}

#[cfg(not(all(feature = "shm", unix)))]
pub(crate) enum SharedFlight {}

/// Where a rule's places in flight are counted.
pub(crate) enum Backing {
    /// This process's memory (the `store` of [`InFlight`]).
    Memory,
    /// The shared-memory table.
    #[cfg_attr(not(all(feature = "shm", unix)), allow(dead_code))]
    Shared(SharedFlight),
    /// Redis, and what to do while it cannot answer.
    #[cfg(feature = "redis")]
    Redis(Box<crate::store::redis::RedisInFlight>, crate::FailMode),
}

/// A place a request holds in flight: the period it was taken in, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Place {
    /// In this process's memory or the shared-memory table (also Redis's
    /// `local` fail mode).
    Local(u32),
    /// In Redis.
    Remote(u32),
    /// None: Redis could not answer and the rule fails open.
    Unheld,
}

/// `max_in_flight` of one rule.
pub(crate) struct InFlight {
    pub max: u64,
    ttl_ns: u64,
    store: MemoryStore<AtomicU64>,
    hasher: ahash::RandomState,
    #[cfg_attr(
        not(any(feature = "redis", all(feature = "shm", unix))),
        allow(dead_code)
    )]
    backing: Backing,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("max", &self.max)
            .field("ttl_ns", &self.ttl_ns)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    pub(crate) fn new(max: u64, ttl: Duration, max_keys: usize, backing: Backing) -> Self {
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX).max(1);
        Self {
            max,
            ttl_ns,
            store: MemoryStore::new(
                if matches!(backing, Backing::Shared(_)) {
                    1
                } else {
                    max_keys
                },
                64,
                ttl_ns.saturating_mul(2),
            ),
            hasher: ahash::RandomState::new(),
            backing,
        }
    }

    fn period(&self, now: u64) -> u32 {
        // Modulo 2^32: only this period and the previous one are ever compared.
        (now / self.ttl_ns) as u32
    }

    /// Runs `step` on the key's word (0 for a new key): the memory store's
    /// compare-and-swap loop, or the shared table's.
    fn update<R>(&self, key: &[u8], now: u64, step: impl FnMut(u64) -> (R, Option<u64>)) -> R
    where
        R: Default,
    {
        #[cfg(all(feature = "shm", unix))]
        if let Backing::Shared(sh) = &self.backing {
            let mut step = step;
            let h = sh.table.key_hash(5, key);
            return sh
                .table
                .apply_bits(sh.quota, h, now, true, |bits| {
                    let (r, next) = step(bits as u64);
                    (r, next.map(u128::from))
                })
                // A table that cannot answer (corrupt, or full of live places):
                // the caller's default (no place).
                .unwrap_or_default();
        }
        let fp = std::hash::BuildHasher::hash_one(&self.hasher, key);
        self.store.with(
            fp,
            now,
            || AtomicU64::new(0),
            |cell| flight::update(cell, step),
        )
    }

    fn acquire_local(&self, key: &[u8], now: u64) -> Option<Place> {
        let period = self.period(now);
        self.update(key, now, flight::acquire_step(period, self.max))
            .then_some(Place::Local(period))
    }

    /// Takes a place for `key` at `now` (ns; `explicit` is the Unix time a
    /// replay gives, else Redis uses its own clock): where it was taken, to give
    /// it back, or `None` when `max` are held.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn acquire(
        &self,
        key: &[u8],
        now: u64,
        explicit: Option<Duration>,
    ) -> Option<Place> {
        #[cfg(feature = "redis")]
        if let Backing::Redis(r, fail_mode) = &self.backing {
            return self.remote(r.acquire(key, explicit), *fail_mode, key, now);
        }
        self.acquire_local(key, now)
    }

    /// [`acquire`](Self::acquire) for async callers: a Redis round trip on the
    /// multiplexed tokio connection.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) async fn acquire_async(
        &self,
        key: &[u8],
        now: u64,
        explicit: Option<Duration>,
    ) -> Option<Place> {
        #[cfg(feature = "redis")]
        if let Backing::Redis(r, fail_mode) = &self.backing {
            let taken = r.acquire_async(key, explicit).await;
            return self.remote(taken, *fail_mode, key, now);
        }
        self.acquire_local(key, now)
    }

    /// A place Redis gave (or not), or the fail mode's answer when it could not.
    #[cfg(feature = "redis")]
    fn remote(
        &self,
        taken: redis::RedisResult<Option<u32>>,
        fail_mode: crate::FailMode,
        key: &[u8],
        now: u64,
    ) -> Option<Place> {
        match taken {
            Ok(taken) => taken.map(Place::Remote),
            Err(_) => match fail_mode {
                crate::FailMode::Open => Some(Place::Unheld),
                crate::FailMode::Closed => None,
                _ => self.acquire_local(key, now),
            },
        }
    }

    /// Gives back a place.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn release(&self, key: &[u8], place: Place, now: u64, explicit: Option<Duration>) {
        match place {
            Place::Local(taken) => {
                self.update(key, now, flight::release_step(taken, self.period(now)));
            }
            Place::Remote(taken) => {
                #[cfg(feature = "redis")]
                if let Backing::Redis(r, _) = &self.backing {
                    // Redis could not answer: the place expires with its period.
                    let _ = r.release(key, taken, explicit);
                }
            }
            Place::Unheld => {}
        }
    }

    /// [`release`](Self::release) for async callers.
    pub(crate) async fn release_async(
        &self,
        key: &[u8],
        place: Place,
        now: u64,
        explicit: Option<Duration>,
    ) {
        #[cfg(feature = "redis")]
        if let (Place::Remote(taken), Backing::Redis(r, _)) = (place, &self.backing) {
            // Redis could not answer: the place expires with its period.
            let _ = r.release_async(key, taken, explicit).await;
            return;
        }
        self.release(key, place, now, explicit);
    }

    /// Places `key` holds at `now` (in Redis: on its clock, or this process's
    /// count while Redis cannot answer).
    pub(crate) fn held(&self, key: &[u8], now: u64) -> u64 {
        #[cfg(feature = "redis")]
        if let Backing::Redis(r, _) = &self.backing
            && let Ok(n) = r.held(key, None)
        {
            return n;
        }
        self.update(key, now, |bits| {
            (Flight::unpack(bits).held(self.period(now)), None)
        })
    }
}

/// One charge a verdict may settle.
pub(crate) struct Entry {
    pub rule: usize,
    pub tier: usize,
    /// The key, inline: the ticket is one allocation.
    pub key: super::identity::KeyBuf,
    pub cost: u64,
    /// The place this request holds in flight.
    pub flight: Option<Place>,
    /// The calendar time it was charged at (a calendar rule settles in it:
    /// a refund reaches the window it was charged in, or none).
    pub at: Option<Duration>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("rule", &self.rule)
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Ticket {
    engine: u64,
    settled: AtomicBool,
    entries: SmallVec<[Entry; 2]>,
}

/// What an admitted request must settle once its response is known (see the
/// module documentation). Clones share one settlement.
#[derive(Debug, Clone)]
pub struct Settlement(Arc<Ticket>);

impl PartialEq for Settlement {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Settlement {
    pub(crate) fn new(engine: u64, entries: SmallVec<[Entry; 2]>) -> Self {
        Self(Arc::new(Ticket {
            engine,
            settled: AtomicBool::new(false),
            entries,
        }))
    }

    /// The policy that made it.
    pub(crate) fn engine_id(&self) -> u64 {
        self.0.engine
    }

    /// Whether it was settled.
    pub fn is_settled(&self) -> bool {
        self.0.settled.load(Ordering::Acquire)
    }

    /// The charges, if this is the first settlement and `engine` made them.
    pub(crate) fn take(&self, engine: u64) -> crate::Result<&[Entry]> {
        if self.0.engine != engine {
            return Err(crate::Error::InvalidRequest {
                field: "verdict",
                problem: "was decided by another engine",
            });
        }
        if self.0.settled.swap(true, Ordering::AcqRel) {
            return Err(crate::Error::AlreadySettled);
        }
        Ok(&self.0.entries)
    }
}

/// How a request ended, for [`Engine::settle`](super::Engine::settle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    /// The response's HTTP status (100-599).
    pub status: u16,
    /// The request's real cost, for rules with `cost_from = "response"`
    /// (`None`: the estimate stands).
    pub cost: Option<u64>,
}

impl super::Policy {
    /// The settlement of an admitted request's charges, if a rule needs one
    /// (inlined: the usual policy has no rule that settles).
    #[inline]
    pub(super) fn settlement(&self, charges: &super::Charges<'_>) -> Option<Settlement> {
        if self.settles {
            self.settlement_entries(charges)
        } else {
            None
        }
    }

    fn settlement_entries(&self, charges: &super::Charges<'_>) -> Option<Settlement> {
        let settles = |c: &super::Charge<'_>| {
            self.rules
                .get(c.rule)
                .is_some_and(|r| r.lifecycle.is_some())
        };
        // Most requests have nothing to settle: say so before making room for
        // entries (a key buffer each, hundreds of bytes on the stack).
        if !charges.iter().any(settles) {
            return None;
        }
        let mut entries: SmallVec<[Entry; 2]> = SmallVec::new();
        for c in charges {
            if settles(c) {
                entries.push(Entry {
                    rule: c.rule,
                    tier: c.tier_index,
                    key: super::identity::KeyBuf::copy_of(charges.key(c)),
                    cost: c.cost,
                    flight: c.flight,
                    at: c.at,
                });
            }
        }
        (!entries.is_empty()).then(|| Settlement::new(self.id, entries))
    }

    /// [`settle`](Self::settle) with the verdict's settlement alone (what a
    /// front end keeps after it has read the verdict): `now` and whether it
    /// is an explicit time (else a Redis store uses its own clock).
    ///
    /// # Errors
    /// As [`settle`](Self::settle).
    pub fn settle_settlement(
        &self,
        settlement: Option<&Settlement>,
        outcome: Settle,
        now: Option<Duration>,
    ) -> crate::Result<()> {
        let settle =
            std::pin::pin!(self.settle_with(&super::io::Blocking, settlement, outcome, now));
        super::io::complete(settle).unwrap_or_else(|| {
            Err(crate::Error::StoreUnavailable {
                store: "engine",
                message: "a blocking settlement waited (a bug: please report it)".into(),
            })
        })
    }

    /// [`settle_settlement`](Self::settle_settlement) now, without holding a
    /// thread while Redis answers (as
    /// [`check_request_async`](Self::check_request_async)).
    ///
    /// # Errors
    /// As [`settle`](Self::settle).
    pub async fn settle_settlement_async(
        &self,
        settlement: Option<&Settlement>,
        outcome: Settle,
    ) -> crate::Result<()> {
        self.settle_with(&super::io::NonBlocking, settlement, outcome, None)
            .await
    }

    async fn settle_with<I: super::io::Io>(
        &self,
        io: &I,
        settlement: Option<&Settlement>,
        outcome: Settle,
        now: Option<Duration>,
    ) -> crate::Result<()> {
        if !(100..=599).contains(&outcome.status) {
            return Err(crate::Error::InvalidRequest {
                field: "status",
                problem: "must be an HTTP status between 100 and 599",
            });
        }
        let Some(settlement) = settlement else {
            return Ok(());
        };
        let explicit = now.is_some();
        let now = now.unwrap_or_else(|| self.now());
        let entries = settlement.take(self.id)?;
        let now_ns = super::nanos(now);
        for e in entries {
            let Some(rule) = self.rules.get(e.rule) else {
                continue;
            };
            let Some(life) = &rule.lifecycle else {
                continue;
            };
            let Some(tier) = rule.limits.tier(e.tier) else {
                continue;
            };
            let key = e.key.bytes();
            self.release_flight_with(io, e.rule, rule, key, e.flight, now_ns, explicit)
                .await;
            let limiter = &tier.limiter;
            let (now, explicit) = e.at.map_or((now, explicit), |at| (at, true));
            let settled = || {
                self.event(
                    super::EventKind::Settled,
                    Some(&rule.name),
                    None,
                    Some(e.key.bytes()),
                    outcome.status,
                    Duration::ZERO,
                    None,
                )
            };
            if !life.counts(outcome.status) {
                io.refund(limiter, key, e.cost, now, explicit).await;
                super::events::bump(&self.metrics.settle_refunds);
                self.emit(settled);
                continue;
            }
            let Some(real) = outcome.cost.filter(|_| life.cost_from_response) else {
                continue;
            };
            if real != e.cost {
                self.emit(settled);
            }
            if real < e.cost {
                io.refund(limiter, key, e.cost - real, now, explicit).await;
                super::events::bump(&self.metrics.settle_refunds);
            } else if real > e.cost {
                // The rest, as much as the key has left: an overrun empties it (the
                // next request is denied) but carries no debt beyond.
                let extra = (real - e.cost).min(limiter.max_cost());
                super::events::bump(&self.metrics.settle_charges);
                let d = io.check(limiter, key, extra, now, explicit).await?.decision;
                if !d.allowed && d.remaining > 0 {
                    io.check(limiter, key, d.remaining, now, explicit).await?;
                }
            }
        }
        // Counted once done: a front end that settles off the request's
        // thread can wait for the count.
        super::events::bump(&self.metrics.settled);
        Ok(())
    }

    /// Whether any rule settles (`count`, `cost_from = "response"`,
    /// `max_in_flight`): middleware that must hook the end of every response
    /// for it (Fastify's `onResponse`) skip the hook otherwise.
    pub fn settles(&self) -> bool {
        self.settles
    }

    /// Places in flight held by `key` on rule `rule` now (0 for a rule without
    /// `max_in_flight`), for metrics and tests.
    pub fn in_flight(&self, rule: &str, key: &[u8]) -> u64 {
        let now = super::nanos(self.now());
        self.rules
            .iter()
            .find(|r| &*r.name == rule)
            .and_then(|r| r.lifecycle.as_ref()?.in_flight.as_ref())
            .map_or(0, |f| f.held(key, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_as_codes_and_ranges() {
        assert_eq!(parse_statuses("400-599"), Ok(vec![(400, 599)]));
        assert_eq!(
            parse_statuses("401, 403,429-430"),
            Ok(vec![(401, 401), (403, 403), (429, 430)])
        );
        for bad in ["", "abc", "600", "99", "500-400", "400-", "4000"] {
            assert!(parse_statuses(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn in_flight_counts_per_key() {
        let s = 1_000_000_000;
        let inf = InFlight::new(2, Duration::from_secs(60), 100, Backing::Memory);
        let a = inf.acquire(b"a", 0, None).unwrap();
        assert!(inf.acquire(b"a", s, None).is_some());
        assert_eq!(inf.acquire(b"a", 2 * s, None), None);
        assert!(inf.acquire(b"b", 2 * s, None).is_some(), "keys apart");
        inf.release(b"a", a, 3 * s, None);
        assert_eq!(inf.held(b"a", 3 * s), 1);
        assert!(inf.acquire(b"a", 4 * s, None).is_some());
        assert_eq!(inf.held(b"a", 120 * s), 0, "released after two periods");
    }
}
