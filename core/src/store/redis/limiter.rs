//! [`RedisLimiter`]: validation, the local layers, one script call per check,
//! the fail mode while Redis cannot answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::limiter::Limiter;
use crate::quota::Quota;
use crate::store::memory::MemoryStore;

use super::connection::{RedisStore, RedisStoreBuilder};
use super::local::{Answer, Local};
use super::script::{self, CalendarClock, Call, Merged, Mode, Now, QuotaArgs, Reply};
use super::units::Micros;
use super::{DecisionSource, FailMode, unavailable};

#[derive(Debug)]
pub(super) enum StoreSource {
    Own(Box<RedisStoreBuilder>),
    Shared(RedisStore),
}

/// Options for a [`RedisLimiter`].
#[derive(Debug)]
pub struct RedisLimiterBuilder {
    store: StoreSource,
    quotas: Vec<Quota>,
    prefix: String,
    fail_mode: FailMode,
    local_share: u64,
    max_key_bytes: usize,
    max_keys: usize,
    deny_cache: bool,
    lease: u64,
    lease_ttl: Duration,
}

/// A rate limiter whose state lives in Redis, shared by every instance.
pub struct RedisLimiter {
    store: RedisStore,
    quotas: Box<[Quota]>,
    args: std::sync::Arc<[QuotaArgs]>,
    /// Per quota, a tag of its algorithm and numbers in its key's name: a
    /// quota changed (a reload, a restart with another policy) starts on keys
    /// of its own, never reads state kept under other numbers or in another
    /// algorithm's format.
    tags: Box<[u32]>,
    /// The tag of the one key holding every quota's state, when they share
    /// one (`script::packs`): the quotas' tags folded, so that any change to
    /// any quota starts afresh.
    packed: Option<u32>,
    prefix: Vec<u8>,
    fail_mode: FailMode,
    local: Limiter,
    hasher: ahash::RandomState,
    cache: MemoryStore<Mutex<Local>>,
    deny_cache: bool,
    lease: u64,
    lease_ttl: Micros,
    fallbacks: AtomicU64,
    cached_denials: AtomicU64,
    lease_hits: AtomicU64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("store", &self.store)
            .field("quotas", &self.quotas)
            .field("fail_mode", &self.fail_mode)
            .finish_non_exhaustive()
    }
}

impl RedisLimiterBuilder {
    pub(super) fn with_store(store: StoreSource) -> Self {
        Self {
            store,
            quotas: Vec::new(),
            prefix: "fg".into(),
            fail_mode: FailMode::Local,
            local_share: 1,
            max_key_bytes: 256,
            max_keys: 100_000,
            deny_cache: true,
            lease: 0,
            lease_ttl: Duration::from_secs(1),
        }
    }

    fn own(mut self, f: impl FnOnce(RedisStoreBuilder) -> RedisStoreBuilder) -> Self {
        if let StoreSource::Own(b) = self.store {
            self.store = StoreSource::Own(Box::new(f(*b)));
        }
        self
    }

    /// Adds a quota (several are checked together, all-or-nothing).
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// Key prefix (default `fg`), to share one Redis between services or rules.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Connect timeout (default [`DEFAULT_CONNECT_TIMEOUT`](super::DEFAULT_CONNECT_TIMEOUT),
    /// 1 s; connects are never on a request's path). Ignored with a shared [`RedisStore`].
    pub fn connect_timeout(self, t: Duration) -> Self {
        self.own(|b| b.connect_timeout(t))
    }

    /// The deadline of a whole check (default
    /// [`DEFAULT_COMMAND_TIMEOUT`](super::DEFAULT_COMMAND_TIMEOUT), 50 ms).
    /// Ignored with a shared [`RedisStore`].
    pub fn command_timeout(self, t: Duration) -> Self {
        self.own(|b| b.command_timeout(t))
    }

    /// The per-check deadline, if given; `None` keeps the default. For front
    /// ends whose callers may leave the option out, so that none of them copies
    /// a default. The connect timeout keeps its default: connects are never on
    /// a check's path, and a short one fails start-ups on a loaded host.
    pub fn timeouts(self, t: Option<Duration>) -> Self {
        match t {
            Some(t) => self.command_timeout(t),
            None => self,
        }
    }

    /// Reconnect backoff: the breaker's first cool-down (default 50 ms). Ignored
    /// with a shared [`RedisStore`].
    pub fn reconnect_backoff(self, t: Duration) -> Self {
        self.own(|b| b.breaker_cooldown(t))
    }

    /// Blocking connections in the pool (default 2 per core). Ignored with a
    /// shared [`RedisStore`].
    pub fn pool_size(self, n: usize) -> Self {
        self.own(|b| b.pool_size(n))
    }

    /// See [`RedisStoreBuilder::check_on_build`]. Ignored with a shared [`RedisStore`].
    pub fn check_on_build(self, yes: bool) -> Self {
        self.own(|b| b.check_on_build(yes))
    }

    /// What checks answer while Redis cannot (default [`FailMode::Local`]).
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// With [`FailMode::Local`], divide each quota by `instances` (default 1), so
    /// that a fleet of that many instances falling back together admits about the
    /// shared limit, not `instances` times it.
    pub fn local_share(mut self, instances: u64) -> Self {
        self.local_share = instances.max(1);
        self
    }

    /// Longest key accepted (default 256 bytes).
    pub fn max_key_bytes(mut self, n: usize) -> Self {
        self.max_key_bytes = n;
        self
    }

    /// Most keys the local state (over-limit cache, leases, local fallback) holds
    /// (default 100 000): bounded memory whatever keys an attacker sends.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Whether a key Redis denied is answered locally until its retry time
    /// (default true). Such a denial reports `remaining` 0 and the retry and reset
    /// times Redis gave, counted down.
    pub fn deny_cache(mut self, yes: bool) -> Self {
        self.deny_cache = yes;
        self
    }

    /// Token leases (default 0 = off): a check that must go to Redis charges up to
    /// `units` at once (as many as every quota has left, at least the cost) and this
    /// instance spends the rest locally, without a round trip, for up to `ttl`.
    ///
    /// **Bound.** Every unit admitted was charged in Redis first, so the fleet never
    /// admits more than Redis granted. What moves is *when* a unit is spent: up to
    /// `ttl` after it was charged. So in any window of a quota, `n` instances admit at
    /// most `limit + n × (units − 1)`; and never more than `limit` at one instant.
    /// Unspent units expire with the lease (they are not given back), so leases can
    /// under-admit by as much. Use small leases (e.g. 1-2% of the limit) on hot keys.
    pub fn lease(mut self, units: u64, ttl: Duration) -> Self {
        self.lease = units;
        self.lease_ttl = ttl;
        self
    }

    /// Builds the limiter (and its own store, unless one is shared).
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] as [`RedisStoreBuilder::build`]; the limiter
    /// errors ([`Error::NoQuotas`], ...) otherwise.
    pub fn build(self) -> Result<RedisLimiter> {
        let local = Limiter::builder()
            .quotas(
                self.quotas
                    .iter()
                    .map(|q| share(q, self.local_share))
                    .collect::<Result<Vec<_>>>()?,
            )
            .max_key_bytes(self.max_key_bytes)
            .max_keys(self.max_keys)
            .build()?;
        if self.lease == 1 || self.lease_ttl.is_zero() && self.lease > 0 {
            return Err(Error::InvalidOption {
                option: "lease",
                problem: "use 0 (off) or at least 2 units, with a ttl above zero",
            });
        }
        let store = match self.store {
            StoreSource::Own(b) => b.build()?,
            StoreSource::Shared(s) => s,
        };
        let args: std::sync::Arc<[QuotaArgs]> = self.quotas.iter().map(QuotaArgs::of).collect();
        let shards = (std::thread::available_parallelism().map_or(1, usize::from) * 4)
            .next_power_of_two()
            .min(self.max_keys.max(1).next_power_of_two());
        let tags: Box<[u32]> = self.quotas.iter().map(quota_tag).collect();
        let packed = script::packs(&args).then(|| fnv1a(tags.iter().flat_map(|t| t.to_le_bytes())));
        Ok(RedisLimiter {
            store,
            quotas: self.quotas.into_boxed_slice(),
            args,
            tags,
            packed,
            prefix: self.prefix.into_bytes(),
            fail_mode: self.fail_mode,
            local,
            hasher: ahash::RandomState::new(),
            cache: MemoryStore::new(self.max_keys.max(1), shards, 0),
            deny_cache: self.deny_cache,
            lease: self.lease,
            lease_ttl: Micros::floor(self.lease_ttl),
            fallbacks: AtomicU64::new(0),
            cached_denials: AtomicU64::new(0),
            lease_hits: AtomicU64::new(0),
        })
    }
}

/// `q` with its limit (and burst) divided by `n`, at least 1.
fn share(q: &Quota, n: u64) -> Result<Quota> {
    if n <= 1 {
        return Ok(*q);
    }
    Quota::new((q.rate() / n).max(1), q.period())?
        .with_burst((q.burst() / n).max(1))?
        .with_algorithm(q.algorithm())
}

/// What a check does after local answers: go to Redis in this mode (the key's
/// fingerprint for the local layers).
enum Step {
    Done(Decision, DecisionSource),
    Call(Mode, u64),
}

impl RedisLimiter {
    /// A builder for a limiter with its own connections to the standalone Redis at
    /// `url` (`redis://[:password@]host:port/db`).
    pub fn builder(url: &str) -> RedisLimiterBuilder {
        RedisLimiterBuilder::with_store(StoreSource::Own(Box::new(RedisStore::builder(url))))
    }

    /// A builder for a limiter with its own connections to a Redis Cluster.
    pub fn cluster_builder<S: AsRef<str>>(nodes: &[S]) -> RedisLimiterBuilder {
        RedisLimiterBuilder::with_store(StoreSource::Own(Box::new(RedisStore::cluster_builder(
            nodes,
        ))))
    }

    /// The quotas, as decisions' `quota` index refers to them.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// The connections this limiter uses.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// What checks answer while Redis cannot.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// Checks answered by the fail mode because Redis could not answer.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Denials answered by the over-limit cache, without a round trip.
    pub fn cached_denials(&self) -> u64 {
        self.cached_denials.load(Ordering::Relaxed)
    }

    /// Checks admitted from a lease, without a round trip.
    pub fn lease_hits(&self) -> u64 {
        self.lease_hits.load(Ordering::Relaxed)
    }

    /// The most units a check may cost (the smallest burst of the quotas).
    pub fn max_cost(&self) -> u64 {
        self.local.max_cost()
    }

    /// Checks `cost` units for `key` on the server's clock, charging if allowed.
    /// `cost == 0` peeks. Blocks for at most the command timeout.
    ///
    /// # Errors
    /// As [`Limiter::check`]. An unavailable Redis is not an error: the fail mode answers.
    pub fn check(&self, key: impl AsRef<[u8]>, cost: u64) -> Result<Decision> {
        self.check_source(key.as_ref(), cost, None).map(|(d, _)| d)
    }

    /// [`check`](Self::check) at an explicit time (Unix time; microsecond resolution).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_at(&self, key: impl AsRef<[u8]>, cost: u64, now: Duration) -> Result<Decision> {
        self.check_source(key.as_ref(), cost, Some(now))
            .map(|(d, _)| d)
    }

    /// [`check`](Self::check) that also says where the answer came from. `now`
    /// is an explicit Unix time, or `None` for the server's clock.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_source(
        &self,
        key: &[u8],
        cost: u64,
        now: Option<Duration>,
    ) -> Result<(Decision, DecisionSource)> {
        self.check_with(key, cost, At::new(now))
    }

    /// A calendar rule's check (`policy/calendar.rs`): `at` is its calendar
    /// time here, and Redis works its own out from `TIME` and `clock`.
    pub(crate) fn check_calendar(
        &self,
        key: &[u8],
        cost: u64,
        at: Duration,
        clock: CalendarClock,
    ) -> Result<(Decision, DecisionSource)> {
        self.check_with(key, cost, At::calendar(at, clock))
    }

    /// [`check_calendar`](Self::check_calendar) on the multiplexed connection.
    pub(crate) async fn check_calendar_async(
        &self,
        key: &[u8],
        cost: u64,
        at: Duration,
        clock: CalendarClock,
    ) -> Result<(Decision, DecisionSource)> {
        self.check_at_async(key, cost, At::calendar(at, clock))
            .await
    }

    fn check_with(&self, key: &[u8], cost: u64, at: At) -> Result<(Decision, DecisionSource)> {
        match self.prepare(key, cost, at)? {
            Step::Done(d, s) => Ok((d, s)),
            Step::Call(mode, fp) => {
                let invocation = self.invocation(key, cost, mode, at.script());
                let reply = self.store.run_sync(&invocation);
                self.finish(key, cost, at, fp, reply)
            }
        }
    }

    /// [`check`](Self::check) for async code: the round trip runs on a multiplexed
    /// tokio connection (requests from many tasks are pipelined on one socket), so
    /// it never blocks the executor. Must be awaited inside a tokio runtime.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub async fn check_async(&self, key: impl AsRef<[u8]>, cost: u64) -> Result<Decision> {
        self.check_source_async(key.as_ref(), cost, None)
            .await
            .map(|(d, _)| d)
    }

    /// [`check_source`](Self::check_source), async as [`check_async`](Self::check_async).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub async fn check_source_async(
        &self,
        key: &[u8],
        cost: u64,
        now: Option<Duration>,
    ) -> Result<(Decision, DecisionSource)> {
        self.check_at_async(key, cost, At::new(now)).await
    }

    async fn check_at_async(
        &self,
        key: &[u8],
        cost: u64,
        at: At,
    ) -> Result<(Decision, DecisionSource)> {
        match self.prepare(key, cost, at)? {
            Step::Done(d, s) => Ok((d, s)),
            Step::Call(mode, fp) => {
                let reply = match at.script() {
                    // On the server's clock: merged with other tasks' checks
                    // into one call (standalone Redis; see `run_merged`).
                    Now::Server if self.store.merges() => {
                        let keys = self.state_keys(key).collect();
                        let check = Merged::new(keys, cost, mode, self.lease, self.args.clone());
                        self.store.run_merged(check).await
                    }
                    _ => {
                        let invocation = self.invocation(key, cost, mode, at.script());
                        self.store.run_async(&invocation).await
                    }
                };
                self.finish(key, cost, at, fp, reply)
            }
        }
    }

    /// Gives back `cost` units charged for `key` (e.g. when a later rule denied
    /// the request). Best effort: a Redis that cannot answer keeps the charge.
    ///
    /// # Errors
    /// [`Error::EmptyKey`], [`Error::KeyTooLong`], or [`Error::StoreUnavailable`].
    pub fn refund(&self, key: &[u8], cost: u64, now: Option<Duration>) -> Result<()> {
        match self.refund_call(key, cost, now)? {
            Some(invocation) => self
                .store
                .run_sync(&invocation)
                .map(|_| ())
                .map_err(|e| unavailable(self.store.what(), &e)),
            None => Ok(()),
        }
    }

    /// [`refund`](Self::refund) on the multiplexed tokio connection.
    ///
    /// # Errors
    /// As [`refund`](Self::refund).
    pub async fn refund_async(&self, key: &[u8], cost: u64, now: Option<Duration>) -> Result<()> {
        match self.refund_call(key, cost, now)? {
            Some(invocation) => self
                .store
                .run_async(&invocation)
                .await
                .map(|_| ())
                .map_err(|e| unavailable(self.store.what(), &e)),
            None => Ok(()),
        }
    }

    /// What a refund sends to Redis, or `None` when it is done locally.
    fn refund_call(
        &self,
        key: &[u8],
        cost: u64,
        now: Option<Duration>,
    ) -> Result<Option<redis::ScriptInvocation<'_>>> {
        self.local.validate(key, cost)?;
        if cost == 0 {
            return Ok(None);
        }
        let at = At::new(now);
        if self.deny_cache && self.lease == 0 {
            // A cached denial no longer holds once units come back.
            self.cache.remove(self.hasher.hash_one(key));
        }
        if self.lease > 0 {
            let fp = self.hasher.hash_one(key);
            let done = self
                .cache
                .read(fp, |e| e.is_some_and(|e| e.lock().refund(cost, at.local)));
            if done {
                return Ok(None);
            }
        }
        Ok(Some(self.invocation(key, cost, Mode::Refund, at.script())))
    }

    /// Forgets `key` in Redis and in this instance's local state.
    ///
    /// # Errors
    /// [`Error::EmptyKey`], [`Error::KeyTooLong`], or [`Error::StoreUnavailable`].
    pub fn reset(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        self.local.validate(key, 0)?;
        self.cache.remove(self.hasher.hash_one(key));
        let _ = self.local.reset(key);
        let mut keys: Vec<Vec<u8>> = (0..self.quotas.len())
            .flat_map(|i| {
                let k = self.redis_key(key, i);
                let seq = [k.as_slice(), b":seq"].concat();
                [k, seq]
            })
            .collect();
        keys.extend(self.packed_key(key));
        // One DEL: in a Cluster a multi-key DEL must not cross slots, and every
        // key here shares one hash tag, so this is one slot.
        self.store
            .del(&keys)
            .map_err(|e| unavailable(self.store.what(), &e))
    }

    /// `{prefix:key}:i.tag` (`tag`: eight hex digits of the quota).
    fn redis_key(&self, key: &[u8], i: usize) -> Vec<u8> {
        let tag = self.tags.get(i).copied().unwrap_or(0);
        super::tagged_key(&self.prefix, key, format_args!("{i}.{tag:08x}"))
    }

    /// `{prefix:key}:p.tag`, the one key of every quota's state, if they
    /// share one.
    fn packed_key(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.packed
            .map(|tag| super::tagged_key(&self.prefix, key, format_args!("p.{tag:08x}")))
    }

    /// The keys a check of `key` reads and writes: the packed key, or one per
    /// quota (as the script expects them, see `script::packs`).
    fn state_keys<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = Vec<u8>> + 'a {
        let packed = self.packed_key(key);
        let each = if packed.is_some() {
            0
        } else {
            self.quotas.len()
        };
        packed
            .into_iter()
            .chain((0..each).map(move |i| self.redis_key(key, i)))
    }

    fn invocation(
        &self,
        key: &[u8],
        cost: u64,
        mode: Mode,
        now: Now,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = script::limiter().prepare_invoke();
        for k in self.state_keys(key) {
            invocation.key(k);
        }
        Call {
            now,
            cost,
            mode,
            lease: self.lease,
            quotas: &self.args,
        }
        .args(&mut invocation);
        invocation
    }

    /// Validation, local answers (over-limit cache, lease, open breaker), or the
    /// invocation to send.
    fn prepare(&self, key: &[u8], cost: u64, at: At) -> Result<Step> {
        self.local.validate(key, cost)?;
        let fp = self.hasher.hash_one(key);
        if cost > 0 && (self.deny_cache || self.lease > 0) {
            // One lookup answers both: a cached denial, else units of a lease.
            if let Some(answer) = self
                .cache
                .read(fp, |e| e.and_then(|e| e.lock().answer(cost, at.local)))
            {
                return Ok(Step::Done(self.answered(answer), source_of(answer)));
            }
        }
        if !self.store.breaker_allows() {
            return self
                .fallback(key, cost, at)
                .map(|d| Step::Done(d, DecisionSource::Fallback));
        }
        let mode = if cost == 0 {
            Mode::Peek
        } else if self.lease > 0 {
            Mode::Lease
        } else {
            Mode::Check
        };
        Ok(Step::Call(mode, fp))
    }

    fn limit(&self, quota: usize) -> u64 {
        self.quotas.get(quota).map_or(0, Quota::limit)
    }

    /// The decision for a local answer (counted).
    fn answered(&self, answer: Answer) -> Decision {
        match answer {
            Answer::Denied {
                quota,
                retry_after,
                reset_after,
            } => {
                self.cached_denials.fetch_add(1, Ordering::Relaxed);
                Decision {
                    allowed: false,
                    limit: self.limit(quota),
                    remaining: 0,
                    retry_after: retry_after.duration(),
                    reset_after: reset_after.duration(),
                    quota,
                }
            }
            Answer::Leased { quota, remaining } => {
                self.lease_hits.fetch_add(1, Ordering::Relaxed);
                Decision {
                    allowed: true,
                    limit: self.limit(quota),
                    remaining,
                    retry_after: Duration::ZERO,
                    reset_after: Duration::ZERO,
                    quota,
                }
            }
        }
    }

    fn finish(
        &self,
        key: &[u8],
        cost: u64,
        at: At,
        fp: u64,
        reply: redis::RedisResult<Vec<i64>>,
    ) -> Result<(Decision, DecisionSource)> {
        let reply = reply.and_then(|r| Reply::parse(&r, self.quotas.len()));
        self.store.record(&reply);
        let Ok(r) = reply else {
            return self
                .fallback(key, cost, at)
                .map(|d| (d, DecisionSource::Fallback));
        };
        let d = Decision {
            allowed: r.allowed,
            limit: self.limit(r.quota),
            remaining: r.remaining,
            retry_after: r.retry_after(),
            reset_after: r.reset_after(),
            quota: r.quota,
        };
        let t = at.local;
        if cost > 0 && r.allowed && r.granted > cost {
            let extra = r.granted - cost;
            self.cache.with(fp, t.nanos(), Mutex::default, |e| {
                e.lock()
                    .grant(extra, t, self.lease_ttl, r.remaining, r.quota);
            });
            return Ok((
                Decision {
                    remaining: r.remaining.saturating_add(extra),
                    ..d
                },
                DecisionSource::Redis,
            ));
        }
        if cost > 0 && !r.allowed && self.deny_cache && !r.retry_after.is_zero() {
            self.cache.with(fp, t.nanos(), Mutex::default, |e| {
                e.lock()
                    .deny(cost, t, r.quota, r.retry_after, r.reset_after);
            });
        }
        Ok((d, DecisionSource::Redis))
    }

    fn fallback(&self, key: &[u8], cost: u64, at: At) -> Result<Decision> {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let limit = self.limit(0);
        let fixed = |allowed| Decision {
            allowed,
            limit,
            remaining: if allowed { limit } else { 0 },
            retry_after: if allowed {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            },
            reset_after: Duration::ZERO,
            quota: 0,
        };
        match self.fail_mode {
            FailMode::Open => Ok(fixed(true)),
            FailMode::Closed => Ok(fixed(false)),
            FailMode::Local => match at.explicit {
                Some(now) => self.local.check_at(key, cost, now),
                None => self.local.check(key, cost),
            },
        }
    }
}

/// A check's time: the explicit Unix time given (replays, tests), if any, and
/// the local clock's Unix time for the local layers (the explicit one if given).
#[derive(Debug, Clone, Copy)]
struct At {
    explicit: Option<Duration>,
    /// The time local answers (cache, lease) are judged at.
    local: Micros,
    calendar: Option<CalendarClock>,
}

impl At {
    fn new(now: Option<Duration>) -> Self {
        Self {
            explicit: now,
            local: now.map_or_else(Micros::unix_now, Micros::floor),
            calendar: None,
        }
    }

    /// A calendar rule's check: `at` its calendar time on this host's clock,
    /// the script working it out from the server's clock with `clock`.
    fn calendar(at: Duration, clock: CalendarClock) -> Self {
        Self {
            explicit: None,
            local: Micros::floor(at),
            calendar: Some(clock),
        }
    }

    /// The script's `now`.
    fn script(self) -> Now {
        match (self.calendar, self.explicit) {
            (Some(c), _) => Now::Calendar(c),
            (None, Some(t)) => Now::At(Micros::floor(t)),
            (None, None) => Now::Server,
        }
    }
}

fn source_of(answer: Answer) -> DecisionSource {
    match answer {
        Answer::Denied { .. } => DecisionSource::CachedDenial,
        Answer::Leased { .. } => DecisionSource::Lease,
    }
}

/// The tag of a quota in its keys' names: FNV-1a over its algorithm and numbers.
fn quota_tag(q: &Quota) -> u32 {
    let calendar = q.calendar_unit().map_or("", |u| u.name());
    let text = format!(
        "{}/{}/{}/{}/{calendar}",
        q.algorithm().name(),
        q.limit(),
        q.period().as_nanos(),
        q.burst()
    );
    fnv1a(text.bytes())
}

/// 32-bit FNV-1a: a key's tag (stable across versions and processes, unlike
/// the std hasher).
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u32 {
    bytes.into_iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
