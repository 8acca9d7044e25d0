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
//!   standalone server or a Cluster, with millisecond connect and command timeouts;
//!   on the blocking path the command timeout is a deadline for the whole call
//!   (pool wait, connect, write, read).
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
//! Modules: `connection` (the store: pool, async connection, timeouts),
//! `breaker` (the circuit breaker, on an injected clock), `script` (the Lua
//! protocol, typed: call modes, per-quota arguments, the reply parser),
//! `limiter` (checks: validation, local answers, one call, the fail mode),
//! `local` (the over-limit cache and leases of one key), `in_flight` (a rule's
//! places in flight, `max_in_flight`, in their own script), `units` (µs as a type).
//!
//! [`check`]: RedisLimiter::check
//! [`check_async`]: RedisLimiter::check_async

mod blocking;
mod breaker;
mod connection;
mod in_flight;
mod limiter;
mod local;
mod script;
mod units;

pub use connection::{
    DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, RedisStore, RedisStoreBuilder,
};
pub(crate) use in_flight::RedisInFlight;
pub use limiter::{RedisLimiter, RedisLimiterBuilder};
pub(crate) use script::CalendarClock;

use crate::error::{Error, Result};

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

pub(super) fn unavailable(what: &str, e: &redis::RedisError) -> Error {
    Error::StoreUnavailable {
        store: "redis",
        message: format!("{what}: {e}").into(),
    }
}

/// `{<prefix>:<key>}:<suffix>`: the hash tag puts every Redis key of one
/// client (each quota's state, its places in flight) in one Cluster slot.
pub(super) fn tagged_key(prefix: &[u8], key: &[u8], suffix: impl std::fmt::Display) -> Vec<u8> {
    use std::io::Write as _;
    let mut k = Vec::with_capacity(prefix.len() + key.len() + 8);
    k.push(b'{');
    k.extend_from_slice(prefix);
    k.push(b':');
    k.extend_from_slice(key);
    // Writing into a Vec cannot fail.
    let _ = write!(k, "}}:{suffix}");
    k
}

pub(super) fn io_error(message: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, message))
}

/// A process-wide tokio runtime with one worker, for callers that have none
/// (the Python and Node bindings) to run [`RedisLimiter::check_async`] on. One
/// worker suffices: it mostly waits on the multiplexed connection, whose driver
/// task then shares its thread, so a round trip costs no thread hop inside it.
/// Made on first use, and again in a process forked since: the parent's
/// worker thread is not in the child, so a task spawned on the parent's
/// runtime would never run (every async check of a gunicorn `--preload`
/// worker would wait forever). The parent's is left alone there (dropping it
/// would wait for that thread); a process makes one runtime (two if its
/// threads race to make the first: the spare, idle, is kept).
///
/// # Errors
/// [`Error::StoreUnavailable`] if the runtime cannot be started (no threads).
pub fn background_runtime() -> Result<&'static tokio::runtime::Runtime> {
    /// A process's runtime.
    struct Owned {
        pid: u32,
        rt: &'static tokio::runtime::Runtime,
    }
    static RT: arc_swap::ArcSwapOption<Owned> = arc_swap::ArcSwapOption::const_empty();
    let pid = std::process::id();
    if let Some(owned) = RT.load().as_ref().filter(|o| o.pid == pid) {
        return Ok(owned.rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("floodgate-redis")
        .enable_all()
        .build()
        .map_err(|e| Error::StoreUnavailable {
            store: "redis",
            message: format!("cannot start the async runtime: {e}").into(),
        })?;
    // Leaked: a runtime lives as long as its process (the one it replaces is
    // the parent's, in a child).
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    let mut winner = rt;
    RT.rcu(|current| match current.as_ref().filter(|o| o.pid == pid) {
        Some(raced) => {
            winner = raced.rt;
            Some(std::sync::Arc::clone(raced))
        }
        None => {
            winner = rt;
            Some(std::sync::Arc::new(Owned { pid, rt }))
        }
    });
    Ok(winner)
}
