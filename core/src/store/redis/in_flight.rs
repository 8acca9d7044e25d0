//! Places in flight (`max_in_flight`) of one rule, counted in Redis so that
//! every instance shares them: one script call to take a place on arrival, one
//! to give it back at settlement (`in_flight.lua`, the same per-period
//! arithmetic as the in-memory count). A place never given back expires with
//! the key, 1-2 `in_flight_ttl` after it was taken, whatever became of the
//! instance that took it.

use std::time::Duration;

use super::connection::RedisStore;
use super::units::Micros;

const SOURCE: &str = include_str!("in_flight.lua");

/// One rule's places in flight in Redis.
pub struct RedisInFlight {
    store: RedisStore,
    script: redis::Script,
    prefix: Vec<u8>,
    max: u64,
    ttl: Micros,
}

impl std::fmt::Debug for RedisInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisInFlight")
            .field("max", &self.max)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisInFlight {
    /// At most `max` places per key, each released by Redis 1-2 `ttl` after it
    /// was taken; keys `{<prefix>:<key>}:f`.
    pub fn new(store: RedisStore, prefix: &str, max: u64, ttl: Duration) -> Self {
        Self {
            store,
            script: redis::Script::new(SOURCE),
            prefix: prefix.as_bytes().to_vec(),
            max,
            ttl: Micros::ceil(ttl),
        }
    }

    /// The script call for `key` (`mode`: `a`cquire, `r`elease, `h`eld), or an
    /// error while the breaker is open.
    fn invocation(
        &self,
        key: &[u8],
        mode: &str,
        arg: u64,
        now: Option<Duration>,
    ) -> redis::RedisResult<redis::ScriptInvocation<'_>> {
        if !self.store.breaker_allows() {
            return Err(super::io_error("circuit breaker open"));
        }
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(super::tagged_key(&self.prefix, key, 'f'))
            .arg(now.map_or(-1, |t| Micros::floor(t).script_arg()))
            .arg(mode)
            .arg(self.ttl.0)
            .arg(arg);
        Ok(invocation)
    }

    /// `(taken, held)` from the script's reply, the breaker told how it went.
    fn reply(&self, reply: redis::RedisResult<Vec<i64>>) -> redis::RedisResult<(i64, u64)> {
        let reply = reply.and_then(|r| match r[..] {
            [taken, held] => Ok((taken, u64::try_from(held).unwrap_or(0))),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected script reply",
                "expected 2 integers".into(),
            ))),
        });
        self.store.record(&reply);
        reply
    }

    fn call(
        &self,
        key: &[u8],
        mode: &str,
        arg: u64,
        now: Option<Duration>,
    ) -> redis::RedisResult<(i64, u64)> {
        let invocation = self.invocation(key, mode, arg, now)?;
        self.reply(self.store.run_sync(&invocation))
    }

    async fn call_async(
        &self,
        key: &[u8],
        mode: &str,
        arg: u64,
        now: Option<Duration>,
    ) -> redis::RedisResult<(i64, u64)> {
        let invocation = self.invocation(key, mode, arg, now)?;
        self.reply(self.store.run_async(&invocation).await)
    }

    /// Takes a place for `key`: the period it was taken in (to give it back),
    /// or `None` when `max` are held. `now`: an explicit Unix time, or `None`
    /// for the server's clock.
    ///
    /// # Errors
    /// Redis could not answer (the caller applies its fail mode).
    pub fn acquire(&self, key: &[u8], now: Option<Duration>) -> redis::RedisResult<Option<u32>> {
        let (taken, _) = self.call(key, "a", self.max, now)?;
        Ok(u32::try_from(taken).ok())
    }

    /// [`acquire`](Self::acquire) on the multiplexed tokio connection.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_async(
        &self,
        key: &[u8],
        now: Option<Duration>,
    ) -> redis::RedisResult<Option<u32>> {
        let (taken, _) = self.call_async(key, "a", self.max, now).await?;
        Ok(u32::try_from(taken).ok())
    }

    /// Gives back a place taken in period `taken`.
    ///
    /// # Errors
    /// Redis could not answer: the place is released when its period ends.
    pub fn release(&self, key: &[u8], taken: u32, now: Option<Duration>) -> redis::RedisResult<()> {
        self.call(key, "r", u64::from(taken), now).map(|_| ())
    }

    /// [`release`](Self::release) on the multiplexed tokio connection.
    ///
    /// # Errors
    /// As [`release`](Self::release).
    pub async fn release_async(
        &self,
        key: &[u8],
        taken: u32,
        now: Option<Duration>,
    ) -> redis::RedisResult<()> {
        self.call_async(key, "r", u64::from(taken), now)
            .await
            .map(|_| ())
    }

    /// Places `key` holds.
    ///
    /// # Errors
    /// Redis could not answer.
    pub fn held(&self, key: &[u8], now: Option<Duration>) -> redis::RedisResult<u64> {
        self.call(key, "h", 0, now).map(|(_, held)| held)
    }
}
