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
//! - Connections are a small pool of blocking connections with millisecond connect
//!   and command timeouts. A failed connection is dropped and retried after a
//!   backoff. While Redis cannot answer, each check follows the fail mode: allow,
//!   deny, or decide with a local in-memory limiter.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::limiter::Limiter;
use crate::quota::{Algorithm, Quota};

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

const SCRIPT: &str = include_str!("limiter.lua");

/// One pooled connection.
#[derive(Default)]
struct Slot {
    conn: Option<redis::Connection>,
    /// No reconnect attempt before this instant.
    retry_at: Option<Instant>,
}

/// Options for a [`RedisLimiter`].
#[derive(Debug, Clone)]
pub struct RedisLimiterBuilder {
    url: String,
    quotas: Vec<Quota>,
    prefix: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    reconnect_backoff: Duration,
    pool_size: usize,
    fail_mode: FailMode,
    max_key_bytes: usize,
    check_on_build: bool,
}

/// A rate limiter whose state lives in Redis, shared by every instance.
pub struct RedisLimiter {
    quotas: Box<[Quota]>,
    args: Box<[(&'static str, u64, u64)]>,
    script: redis::Script,
    client: redis::Client,
    prefix: Vec<u8>,
    pool: Box<[Mutex<Slot>]>,
    next: AtomicUsize,
    connect_timeout: Duration,
    command_timeout: Duration,
    backoff: Duration,
    fail_mode: FailMode,
    local: Limiter,
    fallbacks: AtomicU64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("quotas", &self.quotas)
            .field("fail_mode", &self.fail_mode)
            .finish_non_exhaustive()
    }
}

/// Whole microseconds, rounded up (a longer interval or window is only stricter).
fn micros_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

fn unavailable(url: &str, e: &redis::RedisError) -> Error {
    Error::StoreUnavailable {
        store: "redis",
        message: format!("{url}: {e}").into(),
    }
}

impl RedisLimiterBuilder {
    /// Adds a quota (several are checked together, all-or-nothing).
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// Key prefix (default `fg`), to share one Redis between services.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
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

    /// Wait before reconnecting a failed connection (default 100 ms).
    pub fn reconnect_backoff(mut self, t: Duration) -> Self {
        self.reconnect_backoff = t;
        self
    }

    /// Connections in the pool (default 2 per core).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// What checks answer while Redis cannot (default [`FailMode::Local`]).
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// Longest key accepted (default 256 bytes).
    pub fn max_key_bytes(mut self, n: usize) -> Self {
        self.max_key_bytes = n;
        self
    }

    /// Whether `build` must reach Redis (default true): a wrong URL, password or
    /// port is then an error at startup instead of a fail-mode answer later.
    pub fn check_on_build(mut self, yes: bool) -> Self {
        self.check_on_build = yes;
        self
    }

    /// Builds the limiter and (by default) checks that Redis answers.
    ///
    /// # Errors
    /// [`Error::StoreUnavailable`] for an invalid URL or, with `check_on_build`, a
    /// Redis that cannot be reached or refuses the credentials; the limiter errors
    /// ([`Error::NoQuotas`], ...) otherwise.
    pub fn build(self) -> Result<RedisLimiter> {
        let client =
            redis::Client::open(self.url.as_str()).map_err(|e| unavailable(&self.url, &e))?;
        let local = Limiter::builder()
            .quotas(self.quotas.iter().copied())
            .max_key_bytes(self.max_key_bytes)
            .build()?;
        if self.connect_timeout.is_zero() || self.command_timeout.is_zero() {
            return Err(Error::InvalidOption {
                option: "timeout",
                problem: "must be longer than zero",
            });
        }
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
        let pool_size = self.pool_size.clamp(1, 256);
        let limiter = RedisLimiter {
            quotas: self.quotas.into_boxed_slice(),
            args,
            script: redis::Script::new(SCRIPT),
            client,
            prefix: self.prefix.into_bytes(),
            pool: (0..pool_size)
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            backoff: self.reconnect_backoff,
            fail_mode: self.fail_mode,
            local,
            fallbacks: AtomicU64::new(0),
        };
        if self.check_on_build {
            let mut conn = limiter.connect().map_err(|e| unavailable(&self.url, &e))?;
            redis::cmd("PING")
                .query::<String>(&mut conn)
                .map_err(|e| unavailable(&self.url, &e))?;
            limiter
                .script
                .prepare_invoke()
                .load(&mut conn)
                .map_err(|e| unavailable(&self.url, &e))?;
        }
        Ok(limiter)
    }
}

impl RedisLimiter {
    /// A builder for a limiter on the Redis at `url` (`redis://[:password@]host:port/db`).
    pub fn builder(url: &str) -> RedisLimiterBuilder {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        RedisLimiterBuilder {
            url: url.to_string(),
            quotas: Vec::new(),
            prefix: "fg".into(),
            connect_timeout: Duration::from_millis(5),
            command_timeout: Duration::from_millis(5),
            reconnect_backoff: Duration::from_millis(100),
            pool_size: cores * 2,
            fail_mode: FailMode::Local,
            max_key_bytes: 256,
            check_on_build: true,
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        conn.set_read_timeout(Some(self.command_timeout))?;
        conn.set_write_timeout(Some(self.command_timeout))?;
        Ok(conn)
    }

    /// The quotas, as decisions' `quota` index refers to them.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// Checks answered by the fail mode because Redis could not answer.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Checks `cost` units for `key` on the server's clock, charging if allowed.
    /// `cost == 0` peeks.
    ///
    /// # Errors
    /// As [`Limiter::check`]. An unavailable Redis is not an error: the fail mode answers.
    pub fn check(&self, key: impl AsRef<[u8]>, cost: u64) -> Result<Decision> {
        self.run(key.as_ref(), cost, None)
    }

    /// [`check`](Self::check) at an explicit time (Unix time; microsecond resolution).
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn check_at(&self, key: impl AsRef<[u8]>, cost: u64, now: Duration) -> Result<Decision> {
        self.run(key.as_ref(), cost, Some(now))
    }

    /// Forgets `key` in Redis.
    ///
    /// # Errors
    /// [`Error::EmptyKey`], [`Error::KeyTooLong`], or [`Error::StoreUnavailable`].
    pub fn reset(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let key = key.as_ref();
        self.local.validate(key, 0)?;
        let keys: Vec<Vec<u8>> = (0..self.quotas.len())
            .flat_map(|i| {
                [
                    self.redis_key(key, i),
                    [self.redis_key(key, i), b":seq".to_vec()].concat(),
                ]
            })
            .collect();
        self.with_conn(|conn| redis::cmd("DEL").arg(&keys).query::<u64>(conn).map(|_| ()))
            .map_err(|e| Error::StoreUnavailable {
                store: "redis",
                message: e.to_string().into(),
            })
    }

    /// `{prefix:key}:i`
    fn redis_key(&self, key: &[u8], i: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len() + 8);
        k.push(b'{');
        k.extend_from_slice(&self.prefix);
        k.push(b':');
        k.extend_from_slice(key);
        k.extend_from_slice(format!("}}:{i}").as_bytes());
        k
    }

    /// Runs `f` on a pooled connection, (re)connecting as needed.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let Some(slot) = self.pool.get(i) else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "empty pool",
            )));
        };
        let mut slot = slot.lock();
        if slot.conn.is_none() {
            if slot.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "backing off after a failed connection",
                )));
            }
            match self.connect() {
                Ok(c) => slot.conn = Some(c),
                Err(e) => {
                    slot.retry_at = Some(Instant::now() + self.backoff);
                    return Err(e);
                }
            }
        }
        let Some(conn) = slot.conn.as_mut() else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no connection",
            )));
        };
        let result = f(conn);
        let broken = result.as_ref().err().is_some_and(|e| {
            e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
        });
        if broken {
            // A timed-out connection may still deliver the late reply: never reuse it.
            slot.conn = None;
            slot.retry_at = Some(Instant::now() + self.backoff);
        }
        result
    }

    fn run(&self, key: &[u8], cost: u64, now: Option<Duration>) -> Result<Decision> {
        self.local.validate(key, cost)?;
        let mut invocation = self.script.prepare_invoke();
        for i in 0..self.quotas.len() {
            invocation.key(self.redis_key(key, i));
        }
        let now_us = now.map_or(-1, |n| i64::try_from(n.as_micros()).unwrap_or(i64::MAX));
        invocation
            .arg(now_us)
            .arg(cost.max(1))
            .arg(if cost == 0 { 0 } else { 1 });
        for (alg, limit, period) in self.args.iter() {
            invocation.arg(*alg).arg(*limit).arg(*period);
        }
        match self.with_conn(|conn| invocation.invoke::<Vec<i64>>(conn)) {
            Ok(reply) => Ok(self.decision(&reply)),
            Err(_) => {
                self.fallbacks.fetch_add(1, Ordering::Relaxed);
                self.fail(key, cost, now)
            }
        }
    }

    fn decision(&self, reply: &[i64]) -> Decision {
        let get = |i: usize| reply.get(i).copied().unwrap_or(0).max(0) as u64;
        let quota = usize::try_from(get(0)).unwrap_or(1).saturating_sub(1);
        Decision {
            allowed: get(1) == 1,
            limit: self.quotas.get(quota).map_or(0, Quota::limit),
            remaining: get(2),
            retry_after: Duration::from_micros(get(3)),
            reset_after: Duration::from_micros(get(4)),
            quota,
        }
    }

    fn fail(&self, key: &[u8], cost: u64, now: Option<Duration>) -> Result<Decision> {
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
