//! The Redis store (feature `redis`): one limit shared by every instance of a
//! service, in one round trip per check.
//!
//! - Every quota of a check is decided and charged by one Lua script, atomically
//!   and all-or-nothing (`limiter.lua`). It is loaded once and called by SHA; after a
//!   failover or `SCRIPT FLUSH` (a `NOSCRIPT` reply) it is loaded again and the call
//!   retried, so no error reaches the caller.
//! - Time comes from the server's `TIME`, never the client's clock, unless a
//!   time is passed explicitly (`check_at`, for replays and tests). The script counts
//!   integer **microseconds** (Lua numbers are doubles, exact below 2^53); intervals
//!   are rounded up to whole microseconds, which can only make a limit stricter.
//! - Keys are `{<prefix>:<key>}:<quota>`: the hash tag puts all of one key's quotas
//!   in one Cluster slot, so a check never fails with CROSSSLOT. Every key carries a
//!   TTL, so nothing lingers.
//! - Connections ([`RedisStore`]): a pool of blocking connections for [`check`]
//!   and one multiplexed (pipelining) tokio connection for [`check_async`], to a
//!   standalone server or a Cluster, with millisecond connect and command timeouts.
//!   A broken connection is dropped and made again on next use. A **circuit
//!   breaker** opens after consecutive failures: while open, checks are answered by
//!   the fail mode without waiting for a timeout; a single probe is let through
//!   after a cool-down that doubles up to a ceiling, and the first success closes
//!   it again.
//! - While Redis cannot answer, each check follows the [`FailMode`]: allow, deny,
//!   or decide with an in-memory limiter (optionally at limit / instances).
//! - A key Redis denied is answered locally until its retry time (the
//!   *over-limit cache*), so a flood costs no round trip per request.
//! - Optional **token leases**: an instance reserves up to `lease` units of a key
//!   in one round trip and spends them locally; see [`RedisLimiterBuilder::lease`]
//!   for the bound this puts on over-admission.
//!
//! [`check`]: RedisLimiter::check
//! [`check_async`]: RedisLimiter::check_async

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::limiter::Limiter;
use crate::quota::{Algorithm, Quota};
use crate::store::memory::MemoryStore;

/// What a check answers while Redis cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailMode {
    /// Allow every request (availability first).
    Open,
    /// Deny every request (protection first).
    Closed,
    /// Decide with an in-memory limiter of the same quotas on this instance.
    Local,
}

impl std::str::FromStr for FailMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            "local" => Ok(Self::Local),
            _ => Err(Error::InvalidOption {
                option: "fail_mode",
                problem: "use open, closed or local",
            }),
        }
    }
}

/// Where a check's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecisionSource {
    /// A round trip to Redis.
    Redis,
    /// The over-limit cache: Redis denied this key earlier, and its retry time has
    /// not come.
    CachedDenial,
    /// Units of a lease this instance holds.
    Lease,
    /// The fail mode, because Redis could not answer.
    Fallback,
}

const SCRIPT: &str = include_str!("limiter.lua");

fn unavailable(what: &str, e: &redis::RedisError) -> Error {
    Error::StoreUnavailable {
        store: "redis",
        message: format!("{what}: {e}").into(),
    }
}

fn io_error(message: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, message))
}

/// Whole microseconds, rounded up (a longer interval or window is only stricter).
fn micros_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A process-wide tokio runtime with one worker, for callers that have none
/// (the Python and Node bindings) to run [`RedisLimiter::check_async`] on. One
/// worker suffices: it mostly waits on the multiplexed connection, whose driver
/// task then shares its thread, so a round trip costs no thread hop inside it.
/// Made on first use.
///
/// # Errors
/// [`Error::StoreUnavailable`] if the runtime cannot be started (no threads).
pub fn background_runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: std::sync::OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("floodgate-redis")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::StoreUnavailable {
        store: "redis",
        message: format!("cannot start the async runtime: {e}").into(),
    })
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Connections

enum Client {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

enum SyncConn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl SyncConn {
    fn as_dyn(&mut self) -> &mut dyn redis::ConnectionLike {
        match self {
            Self::Single(c) => c,
            Self::Cluster(c) => c.as_mut(),
        }
    }
}

#[derive(Clone)]
enum AsyncConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// The circuit breaker. Times are µs since `base`.
struct Breaker {
    base: Instant,
    failures: AtomicU32,
    /// 0 = closed; else the time from which one probe may go through.
    open_until: AtomicU64,
    cooldown: AtomicU64,
    trips: AtomicU64,
    threshold: u32,
    min_cooldown: u64,
    max_cooldown: u64,
}

impl Breaker {
    fn now(&self) -> u64 {
        micros(self.base.elapsed())
    }

    /// Whether a call may go to Redis now.
    fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now();
        if now < until {
            return false;
        }
        // Half-open: the caller that moves the deadline on is the one probe.
        let next = now + self.cooldown.load(Ordering::Relaxed);
        self.open_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0
            || self.open_until.load(Ordering::Relaxed) != 0
        {
            self.failures.store(0, Ordering::Relaxed);
            self.cooldown.store(self.min_cooldown, Ordering::Relaxed);
            self.open_until.store(0, Ordering::Release);
        }
    }

    fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold {
            let cooldown = self.cooldown.load(Ordering::Relaxed);
            let was = self
                .open_until
                .swap(self.now() + cooldown, Ordering::AcqRel);
            if was == 0 {
                self.trips.fetch_add(1, Ordering::Relaxed);
            }
            self.cooldown.store(
                cooldown.saturating_mul(2).min(self.max_cooldown),
                Ordering::Relaxed,
            );
        }
    }

    fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

struct StoreInner {
    what: String,
    client: Client,
    pool: Box<[Mutex<Option<SyncConn>>]>,
    next: AtomicUsize,
    async_conn: Mutex<Option<AsyncConn>>,
    async_gate: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
    command_timeout: Duration,
    breaker: Breaker,
    round_trips: AtomicU64,
}

/// Connections to one Redis (standalone or Cluster), shared by any number of
/// [`RedisLimiter`]s (e.g. all the rules of a policy), with one circuit breaker.
/// Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.inner.what)
            .field("breaker_open", &self.inner.breaker.is_open())
            .finish_non_exhaustive()
    }
}

/// Options for a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    urls: Vec<String>,
    cluster: bool,
    connect_timeout: Duration,
    command_timeout: Duration,
    pool_size: usize,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    breaker_max_cooldown: Duration,
    check_on_build: bool,
}

impl RedisStoreBuilder {
    fn new(urls: Vec<String>, cluster: bool) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            urls,
            cluster,
            connect_timeout: Duration::from_millis(5),
            command_timeout: Duration::from_millis(5),
            pool_size: cores * 2,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_millis(50),
            breaker_max_cooldown: Duration::from_millis(500),
            check_on_build: true,
        }
    }

    /// Connect timeout (default 5 ms).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Per-command timeout (default 5 ms).
    pub fn command_timeout(mut self, t: Duration) -> Self {
        self.command_timeout = t;
        self
    }

    /// Blocking connections in the pool (default 2 per core; at most 256).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Consecutive failures that open the circuit breaker (default 3).
    pub fn breaker_threshold(mut self, n: u32) -> Self {
        self.breaker_threshold = n;
        self
    }

    /// First cool-down of an open breaker (default 50 ms); it doubles after each
    /// failed probe up to [`breaker_max_cooldown`](Self::breaker_max_cooldown).
    /// This is also the reconnect backoff.
    pub fn breaker_cooldown(mut self, t: Duration) -> Self {
        self.breaker_cooldown = t;
        self
    }

    /// Longest cool-down (default 500 ms): once Redis is back, checks return to it
    /// within this time.
    pub fn breaker_max_cooldown(mut self, t: Duration) -> Self {
        self.breaker_max_cooldown = t;
        self
    }

    /// Whether `build` must reach Redis (default true): a wrong URL, password or
    /// port is then an error at startup instead of a fail-mode answer later.
    pub fn check_on_build(mut self, yes: bool) -> Self {
        self.check_on_build = yes;
        self
    }

    /// Opens the store and (by default) checks that Redis answers and loads the script.
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] for an invalid URL or, with `check_on_build`, a
    /// Redis that cannot be reached or refuses the credentials;
    /// [`Error::InvalidOption`] for zero timeouts or no URL.
    pub fn build(self) -> Result<RedisStore> {
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(Error::InvalidOption {
                option: "timeout",
                problem: "must be longer than zero",
            });
        }
        if self.urls.is_empty() {
            return Err(Error::InvalidOption {
                option: "url",
                problem: "give at least one redis:// URL",
            });
        }
        let what = self.urls.join(",");
        let client = if self.cluster {
            redis::cluster::ClusterClient::builder(self.urls.iter().map(String::as_str))
                .connection_timeout(self.connect_timeout)
                .response_timeout(self.command_timeout)
                .retries(1)
                .min_retry_wait(1)
                .max_retry_wait(10)
                .build()
                .map(|c| Client::Cluster(Box::new(c)))
        } else {
            redis::Client::open(self.urls.first().map_or("", String::as_str)).map(Client::Single)
        }
        .map_err(|e| unavailable(&what, &e))?;
        let cooldown = micros(self.breaker_cooldown).max(1);
        let store = RedisStore {
            inner: Arc::new(StoreInner {
                what,
                client,
                pool: (0..self.pool_size.clamp(1, 256))
                    .map(|_| Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
                async_conn: Mutex::new(None),
                async_gate: tokio::sync::Mutex::new(()),
                connect_timeout: self.connect_timeout,
                command_timeout: self.command_timeout,
                breaker: Breaker {
                    base: Instant::now(),
                    failures: AtomicU32::new(0),
                    open_until: AtomicU64::new(0),
                    cooldown: AtomicU64::new(cooldown),
                    trips: AtomicU64::new(0),
                    threshold: self.breaker_threshold.max(1),
                    min_cooldown: cooldown,
                    max_cooldown: micros(self.breaker_max_cooldown).max(cooldown),
                },
                round_trips: AtomicU64::new(0),
            }),
        };
        if self.check_on_build {
            let script = redis::Script::new(SCRIPT);
            store
                .with_conn(|conn| {
                    redis::cmd("PING").query::<String>(conn.as_dyn())?;
                    script.prepare_invoke().load(conn.as_dyn())
                })
                .map_err(|e| unavailable(&store.inner.what, &e))?;
        }
        Ok(store)
    }
}

/// Whether an error means the connection can no longer be trusted.
fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

impl RedisStore {
    /// A store on the standalone Redis at `url` (`redis://[:password@]host:port/db`).
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::new(vec![url.to_string()], false)
    }

    /// A store on a Redis Cluster, given one or more of its nodes' URLs.
    pub fn cluster_builder<S: AsRef<str>>(nodes: &[S]) -> RedisStoreBuilder {
        RedisStoreBuilder::new(nodes.iter().map(|s| s.as_ref().to_string()).collect(), true)
    }

    /// A limiter using these connections.
    pub fn limiter(&self) -> RedisLimiterBuilder {
        RedisLimiterBuilder::with_store(StoreSource::Shared(self.clone()))
    }

    /// Round trips made to Redis (successful or not).
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// Times the circuit breaker opened.
    pub fn breaker_trips(&self) -> u64 {
        self.inner.breaker.trips.load(Ordering::Relaxed)
    }

    /// Whether the circuit breaker is open (or half-open) now.
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    fn connect(&self) -> redis::RedisResult<SyncConn> {
        let i = &self.inner;
        match &i.client {
            Client::Single(c) => {
                let conn = c.get_connection_with_timeout(i.connect_timeout)?;
                conn.set_read_timeout(Some(i.command_timeout))?;
                conn.set_write_timeout(Some(i.command_timeout))?;
                Ok(SyncConn::Single(conn))
            }
            Client::Cluster(c) => Ok(SyncConn::Cluster(Box::new(c.get_connection()?))),
        }
    }

    /// Runs `f` on a pooled blocking connection, connecting as needed; a connection
    /// that failed is dropped (a timed-out one may still deliver a late reply).
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut SyncConn) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let i = &self.inner;
        let n = i.next.fetch_add(1, Ordering::Relaxed) % i.pool.len();
        let slot = i.pool.get(n).ok_or_else(|| io_error("empty pool"))?;
        let mut slot = slot.lock();
        if slot.is_none() {
            *slot = Some(self.connect()?);
        }
        let conn = slot.as_mut().ok_or_else(|| io_error("no connection"))?;
        let result = f(conn);
        if result.as_ref().err().is_some_and(is_broken) {
            *slot = None;
        }
        result
    }

    async fn async_conn(&self) -> redis::RedisResult<AsyncConn> {
        let i = &self.inner;
        if let Some(c) = i.async_conn.lock().clone() {
            return Ok(c);
        }
        let _gate = i.async_gate.lock().await;
        if let Some(c) = i.async_conn.lock().clone() {
            return Ok(c);
        }
        let conn = match &i.client {
            Client::Single(c) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(i.connect_timeout))
                    .set_response_timeout(Some(i.command_timeout));
                AsyncConn::Single(
                    c.get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
            Client::Cluster(c) => AsyncConn::Cluster(c.get_async_connection().await?),
        };
        *i.async_conn.lock() = Some(conn.clone());
        Ok(conn)
    }

    fn run_sync(&self, invocation: &redis::ScriptInvocation<'_>) -> redis::RedisResult<Vec<i64>> {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        self.with_conn(|conn| invocation.invoke::<Vec<i64>>(conn.as_dyn()))
    }

    async fn run_async(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<Vec<i64>> {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        let conn = self.async_conn().await;
        let result = match conn {
            Ok(AsyncConn::Single(mut c)) => invocation.invoke_async(&mut c).await,
            Ok(AsyncConn::Cluster(mut c)) => invocation.invoke_async(&mut c).await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
        {
            // The multiplexed connection is gone: make a new one on next use. (A
            // timeout alone leaves it usable: replies are matched in order.)
            *self.inner.async_conn.lock() = None;
        }
        result
    }
}

// ---------------------------------------------------------------------------
// Limiter

/// Per-key local state: the over-limit cache and the lease. Times are Unix µs.
#[derive(Debug, Default)]
struct Local {
    deny_until: u64,
    deny_cost: u64,
    deny_reset: u64,
    deny_quota: u32,
    lease_left: u64,
    lease_until: u64,
    lease_remaining: u64,
    lease_quota: u32,
}

#[derive(Debug)]
enum StoreSource {
    Own(RedisStoreBuilder),
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
    args: Box<[(&'static str, u64, u64)]>,
    script: redis::Script,
    prefix: Vec<u8>,
    fail_mode: FailMode,
    local: Limiter,
    hasher: ahash::RandomState,
    cache: MemoryStore<Mutex<Local>>,
    deny_cache: bool,
    lease: u64,
    lease_ttl: u64,
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
    fn with_store(store: StoreSource) -> Self {
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
            self.store = StoreSource::Own(f(b));
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

    /// Connect timeout (default 5 ms). Ignored with a shared [`RedisStore`].
    pub fn connect_timeout(self, t: Duration) -> Self {
        self.own(|b| b.connect_timeout(t))
    }

    /// Per-command timeout (default 5 ms). Ignored with a shared [`RedisStore`].
    pub fn command_timeout(self, t: Duration) -> Self {
        self.own(|b| b.command_timeout(t))
    }

    /// Both timeouts, if given; `None` keeps the defaults. For front ends whose
    /// callers may leave the option out, so that none of them copies a default.
    pub fn timeouts(self, t: Option<Duration>) -> Self {
        match t {
            Some(t) => self.connect_timeout(t).command_timeout(t),
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
        let args = self
            .quotas
            .iter()
            .map(|q| match q.algorithm() {
                Algorithm::Gcra => ("g", q.limit(), micros_up(q.interval())),
                Algorithm::FixedWindow => ("f", q.limit(), micros_up(q.period())),
                Algorithm::SlidingWindow => ("c", q.limit(), micros_up(q.period())),
                Algorithm::SlidingLog => ("l", q.limit(), micros_up(q.period())),
            })
            .collect();
        let shards = (std::thread::available_parallelism().map_or(1, usize::from) * 4)
            .next_power_of_two()
            .min(self.max_keys.max(1).next_power_of_two());
        Ok(RedisLimiter {
            store,
            quotas: self.quotas.into_boxed_slice(),
            args,
            script: redis::Script::new(SCRIPT),
            prefix: self.prefix.into_bytes(),
            fail_mode: self.fail_mode,
            local,
            hasher: ahash::RandomState::new(),
            cache: MemoryStore::new(self.max_keys.max(1), shards, 0),
            deny_cache: self.deny_cache,
            lease: self.lease,
            lease_ttl: micros(self.lease_ttl),
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

/// What a check does after local answers: go to Redis with this invocation.
enum Step<'a> {
    Done(Decision, DecisionSource),
    Call(redis::ScriptInvocation<'a>, u64),
}

impl RedisLimiter {
    /// A builder for a limiter with its own connections to the standalone Redis at
    /// `url` (`redis://[:password@]host:port/db`).
    pub fn builder(url: &str) -> RedisLimiterBuilder {
        RedisLimiterBuilder::with_store(StoreSource::Own(RedisStore::builder(url)))
    }

    /// A builder for a limiter with its own connections to a Redis Cluster.
    pub fn cluster_builder<S: AsRef<str>>(nodes: &[S]) -> RedisLimiterBuilder {
        RedisLimiterBuilder::with_store(StoreSource::Own(RedisStore::cluster_builder(nodes)))
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
        let local_now = now.unwrap_or_else(unix_now);
        match self.prepare(key, cost, now, local_now)? {
            Step::Done(d, s) => Ok((d, s)),
            Step::Call(invocation, fp) => {
                let reply = self.store.run_sync(&invocation);
                self.finish(key, cost, now, local_now, fp, reply)
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
        let local_now = now.unwrap_or_else(unix_now);
        match self.prepare(key, cost, now, local_now)? {
            Step::Done(d, s) => Ok((d, s)),
            Step::Call(invocation, fp) => {
                let reply = self.store.run_async(&invocation).await;
                self.finish(key, cost, now, local_now, fp, reply)
            }
        }
    }

    /// Gives back `cost` units charged for `key` (e.g. when a later rule denied
    /// the request). Best effort: a Redis that cannot answer keeps the charge.
    ///
    /// # Errors
    /// [`Error::EmptyKey`], [`Error::KeyTooLong`], or [`Error::StoreUnavailable`].
    pub fn refund(&self, key: &[u8], cost: u64, now: Option<Duration>) -> Result<()> {
        self.local.validate(key, cost)?;
        if cost == 0 {
            return Ok(());
        }
        if self.lease > 0 {
            let fp = self.hasher.hash_one(key);
            let local_now = micros(now.unwrap_or_else(unix_now));
            let done = self.cache.read(fp, |e| {
                e.is_some_and(|e| {
                    let mut e = e.lock();
                    if e.lease_until > local_now {
                        e.lease_left = e.lease_left.saturating_add(cost);
                        true
                    } else {
                        false
                    }
                })
            });
            if done {
                return Ok(());
            }
        }
        let invocation = self.invocation(key, cost, "r", now);
        self.store
            .run_sync(&invocation)
            .map(|_| ())
            .map_err(|e| unavailable(&self.store.inner.what, &e))
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
        let keys: Vec<Vec<u8>> = (0..self.quotas.len())
            .flat_map(|i| {
                let k = self.redis_key(key, i);
                let seq = [k.as_slice(), b":seq"].concat();
                [k, seq]
            })
            .collect();
        let store = &self.store;
        store.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        // One DEL per key: in a Cluster a multi-key DEL must not cross slots, and
        // every key here shares one hash tag, so this is also one slot.
        store
            .with_conn(|conn| {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query::<u64>(conn.as_dyn())
                    .map(|_| ())
            })
            .map_err(|e| unavailable(&store.inner.what, &e))
    }

    /// `{prefix:key}:i`
    fn redis_key(&self, key: &[u8], i: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len() + 8);
        k.push(b'{');
        k.extend_from_slice(&self.prefix);
        k.push(b':');
        k.extend_from_slice(key);
        k.extend_from_slice(b"}:");
        k.extend_from_slice(i.to_string().as_bytes());
        k
    }

    fn invocation(
        &self,
        key: &[u8],
        cost: u64,
        mode: &'static str,
        now: Option<Duration>,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        for i in 0..self.quotas.len() {
            invocation.key(self.redis_key(key, i));
        }
        let now_us = now.map_or(-1, |n| i64::try_from(n.as_micros()).unwrap_or(i64::MAX));
        invocation
            .arg(now_us)
            .arg(cost.max(1))
            .arg(mode)
            .arg(self.lease);
        for (alg, limit, period) in self.args.iter() {
            invocation.arg(*alg).arg(*limit).arg(*period);
        }
        invocation
    }

    /// Validation, local answers (over-limit cache, lease, open breaker), or the
    /// invocation to send.
    fn prepare(
        &self,
        key: &[u8],
        cost: u64,
        now: Option<Duration>,
        local_now: Duration,
    ) -> Result<Step<'_>> {
        self.local.validate(key, cost)?;
        let fp = self.hasher.hash_one(key);
        if cost > 0 && (self.deny_cache || self.lease > 0) {
            let t = micros(local_now);
            // One lookup answers both: a cached denial, else units of a lease.
            if let Some((d, source)) = self.cache.read(fp, |e| {
                e.and_then(|e| self.local_answer(&mut e.lock(), cost, t))
            }) {
                return Ok(Step::Done(d, source));
            }
        }
        if !self.store.inner.breaker.allow() {
            return self
                .fallback(key, cost, now)
                .map(|d| Step::Done(d, DecisionSource::Fallback));
        }
        let mode = if cost == 0 {
            "p"
        } else if self.lease > 0 {
            "l"
        } else {
            "c"
        };
        Ok(Step::Call(self.invocation(key, cost, mode, now), fp))
    }

    /// A cached denial of this cost, else `cost` units spent from the key's lease.
    fn local_answer(
        &self,
        e: &mut Local,
        cost: u64,
        now: u64,
    ) -> Option<(Decision, DecisionSource)> {
        if e.deny_until > now && cost == e.deny_cost {
            self.cached_denials.fetch_add(1, Ordering::Relaxed);
            let quota = e.deny_quota as usize;
            let d = Decision {
                allowed: false,
                limit: self.quotas.get(quota).map_or(0, Quota::limit),
                remaining: 0,
                retry_after: Duration::from_micros(e.deny_until - now),
                reset_after: Duration::from_micros(e.deny_reset.saturating_sub(now)),
                quota,
            };
            return Some((d, DecisionSource::CachedDenial));
        }
        if e.lease_until <= now || e.lease_left < cost {
            return None;
        }
        e.lease_left -= cost;
        self.lease_hits.fetch_add(1, Ordering::Relaxed);
        let quota = e.lease_quota as usize;
        let d = Decision {
            allowed: true,
            limit: self.quotas.get(quota).map_or(0, Quota::limit),
            remaining: e.lease_remaining + e.lease_left,
            retry_after: Duration::ZERO,
            reset_after: Duration::ZERO,
            quota,
        };
        Some((d, DecisionSource::Lease))
    }

    fn finish(
        &self,
        key: &[u8],
        cost: u64,
        now: Option<Duration>,
        local_now: Duration,
        fp: u64,
        reply: redis::RedisResult<Vec<i64>>,
    ) -> Result<(Decision, DecisionSource)> {
        let breaker = &self.store.inner.breaker;
        let reply = match reply {
            Ok(r) => r,
            Err(_) => {
                breaker.failure();
                return self
                    .fallback(key, cost, now)
                    .map(|d| (d, DecisionSource::Fallback));
            }
        };
        breaker.success();
        let get = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        let quota = usize::try_from(get(0)).unwrap_or(1).saturating_sub(1);
        let d = Decision {
            allowed: get(1) == 1,
            limit: self.quotas.get(quota).map_or(0, Quota::limit),
            remaining: get(2),
            retry_after: Duration::from_micros(get(3)),
            reset_after: Duration::from_micros(get(4)),
            quota,
        };
        let t = micros(local_now);
        let granted = get(5);
        if cost > 0 && d.allowed && granted > cost {
            self.cache
                .with(fp, t.saturating_mul(1000), Mutex::default, |e| {
                    let mut e = e.lock();
                    if e.lease_until <= t {
                        e.lease_left = 0;
                    }
                    e.lease_left += granted - cost;
                    e.lease_until = t.saturating_add(self.lease_ttl);
                    e.lease_remaining = d.remaining;
                    e.lease_quota = u32::try_from(quota).unwrap_or(0);
                });
            return Ok((
                Decision {
                    remaining: d.remaining + granted - cost,
                    ..d
                },
                DecisionSource::Redis,
            ));
        }
        if cost > 0 && !d.allowed && self.deny_cache && !d.retry_after.is_zero() {
            self.cache
                .with(fp, t.saturating_mul(1000), Mutex::default, |e| {
                    let mut e = e.lock();
                    e.deny_until = t.saturating_add(micros(d.retry_after));
                    e.deny_cost = cost;
                    e.deny_reset = t.saturating_add(micros(d.reset_after));
                    e.deny_quota = u32::try_from(quota).unwrap_or(0);
                });
        }
        Ok((d, DecisionSource::Redis))
    }

    fn fallback(&self, key: &[u8], cost: u64, now: Option<Duration>) -> Result<Decision> {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let limit = self.quotas.first().map_or(0, Quota::limit);
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
            FailMode::Local => match now {
                Some(now) => self.local.check_at(key, cost, now),
                None => self.local.check(key, cost),
            },
        }
    }
}
