//! [`Limiter`]: one or more quotas applied to many keys, shared by all threads.

use std::fmt;
use std::time::Duration;

use crate::algorithm::Outcome;
use crate::algorithm::gcra::Gcra;
use crate::clock::{Clock, DefaultClock};
use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::quota::{Algorithm, Quota};
use crate::state::{self, KeyState, PackedWindow, Params, QuotaState};
use crate::store::memory::MemoryStore;
use crate::sync::AtomicU64;

/// Most quotas one limiter checks at once.
pub const MAX_QUOTAS: usize = 16;

/// How the limiter keeps its per-key state.
enum Backend {
    /// One GCRA quota: one atomic `u64` per key, lock-free updates.
    Gcra {
        gcra: Gcra,
        store: MemoryStore<AtomicU64>,
    },
    /// One window quota whose state packs into 64 bits: one atomic `u64` per
    /// key, lock-free updates (`state::PackedWindow`).
    Window {
        window: PackedWindow,
        store: MemoryStore<AtomicU64>,
    },
    /// Two GCRA quotas: both TATs of a key in one 128-bit atomic, lock-free
    /// updates that charge both or neither (`state::pair`). Only where the CPU
    /// has a 128-bit compare-and-swap (x86_64 `cmpxchg16b`, aarch64).
    #[cfg(all(feature = "shm", not(floodgate_loom)))]
    Pair {
        gcra: [Gcra; 2],
        store: MemoryStore<portable_atomic::AtomicU128>,
    },
    /// Anything else: all quota states of a key behind the key's own lock.
    General {
        params: Box<[Params]>,
        store: MemoryStore<KeyState>,
    },
    /// A table in shared memory: every process that maps it sees every charge
    /// (`store/shm`). `shared_clock`: read the table's clock (the same in every
    /// process) rather than the limiter's.
    #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
    Shared {
        keys: crate::store::shm::SharedKeys,
        shared_clock: bool,
    },
}

/// What `reset`, `clear` and the statistics ask of an in-memory backend's key
/// table, whatever it keeps per key.
trait Keys {
    fn remove(&self, fp: u64) -> bool;
    fn clear(&self);
    fn len(&self) -> usize;
    fn capacity(&self) -> usize;
    fn evicted(&self) -> u64;
    fn table_bytes(&self) -> usize;
}

impl<V> Keys for MemoryStore<V> {
    fn remove(&self, fp: u64) -> bool {
        MemoryStore::remove(self, fp)
    }
    fn clear(&self) {
        MemoryStore::clear(self);
    }
    fn len(&self) -> usize {
        MemoryStore::len(self)
    }
    fn capacity(&self) -> usize {
        MemoryStore::capacity(self)
    }
    fn evicted(&self) -> u64 {
        MemoryStore::evicted(self)
    }
    fn table_bytes(&self) -> usize {
        MemoryStore::table_bytes(self)
    }
}

/// Where a backend keeps its keys.
enum Table<'a> {
    Memory(&'a dyn Keys),
    #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
    Shared(&'a crate::store::shm::SharedKeys),
}

impl Backend {
    fn table(&self) -> Table<'_> {
        match self {
            Self::Gcra { store, .. } | Self::Window { store, .. } => Table::Memory(store),
            #[cfg(all(feature = "shm", not(floodgate_loom)))]
            Self::Pair { store, .. } => Table::Memory(store),
            Self::General { store, .. } => Table::Memory(store),
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Self::Shared { keys, .. } => Table::Shared(keys),
        }
    }
}

/// A rate limiter over many keys: `Send + Sync`, meant to be shared (`Arc`) by every
/// thread of a server and called once per request.
///
/// Keys are arbitrary bytes (a `&str` is its UTF-8 bytes), 1 to `max_key_bytes`
/// long. The limiter keeps a randomly seeded 64-bit hash of each key, not the key:
/// memory per key does not grow with key length, and an attacker who cannot see
/// the seed cannot aim collisions (two keys sharing state) or hash floods.
///
/// # Examples
/// ```
/// use floodgate::{Limiter, Quota};
/// use std::time::Duration;
///
/// // 10 per second AND 1000 per hour, checked atomically.
/// let limiter = Limiter::builder()
///     .quota("10/s".parse()?)
///     .quota(Quota::per_hour(1000)?)
///     .build()?;
/// let d = limiter.check("user:42", 1)?;
/// assert!(d.allowed);
/// # Ok::<(), floodgate::Error>(())
/// ```
pub struct Limiter<C: Clock = DefaultClock> {
    quotas: Box<[Quota]>,
    backend: Backend,
    hasher: ahash::RandomState,
    max_key_bytes: usize,
    /// The smallest limit among the quotas, and that quota's index.
    max_cost: (u64, usize),
    clock: C,
}

impl<C: Clock> fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("quotas", &self.quotas)
            .field("max_key_bytes", &self.max_key_bytes)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

/// Options for a [`Limiter`]; start with [`Limiter::builder`].
#[derive(Debug, Clone)]
pub struct LimiterBuilder {
    quotas: Vec<Quota>,
    max_keys: usize,
    max_key_bytes: usize,
    max_log_limit: u64,
    shards: Option<usize>,
    shared_memory: Option<std::path::PathBuf>,
}

impl Default for LimiterBuilder {
    fn default() -> Self {
        Self {
            quotas: Vec::new(),
            max_keys: 1_000_000,
            max_key_bytes: 256,
            max_log_limit: 10_000,
            shards: None,
            shared_memory: None,
        }
    }
}

impl LimiterBuilder {
    /// Adds a quota. A request must fit every quota to be admitted.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// Adds several quotas.
    pub fn quotas(mut self, quotas: impl IntoIterator<Item = Quota>) -> Self {
        self.quotas.extend(quotas);
        self
    }

    /// Most keys held at once (default 1,000,000). When full, the least recently
    /// used keys are forgotten; keys idle longer than their state matters are
    /// forgotten on their own.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Longest key accepted, in bytes (default 256, at most 65,536).
    pub fn max_key_bytes(mut self, max_key_bytes: usize) -> Self {
        self.max_key_bytes = max_key_bytes;
        self
    }

    /// Ceiling on a sliding-log quota's limit (default 10,000): the log keeps up to
    /// `limit` entries of 16 bytes per key.
    pub fn max_log_limit(mut self, max_log_limit: u64) -> Self {
        self.max_log_limit = max_log_limit;
        self
    }

    /// Number of shards (rounded up to a power of two; default 64 per core, at
    /// most 256).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Keeps the state in a table in shared memory at `path` (on Linux, a file
    /// under `/dev/shm`), created by the first process and mapped by every
    /// other: one exact limit across all the worker processes of a machine. The
    /// table holds `max_keys` keys (fixed when the file is created, 16 bytes per
    /// key and quota). Every process must build the limiter with the same quotas
    /// and `max_keys`; the sliding log is refused. [`build`](Self::build) then
    /// reads a clock every process shares (`CLOCK_MONOTONIC` with the table's
    /// offset to Unix time); [`build_with_clock`](Self::build_with_clock) uses the
    /// given clock, which must then be the same in every process (tests).
    /// Unix only.
    pub fn shared_memory(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.shared_memory = Some(path.into());
        self
    }

    /// Builds a limiter on the [`DefaultClock`].
    ///
    /// # Errors
    /// [`Error::NoQuotas`], [`Error::TooManyQuotas`], [`Error::LogLimitTooLarge`],
    /// or [`Error::InvalidOption`] for a zero `max_keys` or an out-of-range
    /// `max_key_bytes`. With [`shared_memory`](Self::shared_memory):
    /// [`Error::InvalidOption`] for a quota the table cannot hold,
    /// [`Error::StoreUnavailable`] when the file cannot be created or opened,
    /// [`Error::StoreMismatch`] when it was made for other quotas.
    pub fn build(self) -> Result<Limiter> {
        let shared = self.shared_memory.is_some();
        let mut limiter = self.build_with_clock(DefaultClock::new())?;
        #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
        if let Backend::Shared { shared_clock, .. } = &mut limiter.backend {
            *shared_clock = shared;
        }
        #[cfg(not(all(feature = "shm", unix, not(floodgate_loom))))]
        let _ = (shared, &mut limiter);
        Ok(limiter)
    }

    /// Builds a limiter on the given clock (a [`FakeClock`](crate::FakeClock) in tests).
    ///
    /// # Errors
    /// As [`LimiterBuilder::build`].
    pub fn build_with_clock<C: Clock>(self, clock: C) -> Result<Limiter<C>> {
        let option = |option, problem| Err(Error::InvalidOption { option, problem });
        if self.quotas.is_empty() {
            return Err(Error::NoQuotas);
        }
        if self.quotas.len() > MAX_QUOTAS {
            return Err(Error::TooManyQuotas {
                count: self.quotas.len(),
                max: MAX_QUOTAS,
            });
        }
        if self.max_keys == 0 {
            return option("max_keys", "must be at least 1");
        }
        if !(1..=65_536).contains(&self.max_key_bytes) {
            return option("max_key_bytes", "must be between 1 and 65536");
        }
        for q in &self.quotas {
            if q.algorithm() == Algorithm::SlidingLog && q.limit() > self.max_log_limit {
                return Err(Error::LogLimitTooLarge {
                    limit: q.limit(),
                    max: self.max_log_limit,
                });
            }
        }
        let idle_ns = self
            .quotas
            .iter()
            .map(Quota::state_lifetime_ns)
            .max()
            .unwrap_or(1);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let shards = self.shards.unwrap_or_else(|| default_shards(cores));
        let packed = match self.quotas.as_slice() {
            [q] => PackedWindow::new(q),
            _ => None,
        };
        let backend = match (&self.shared_memory, self.quotas.as_slice(), packed) {
            (Some(path), qs, _) => shared_backend(path, qs, self.max_keys)?,
            (None, [q], _) if q.algorithm() == Algorithm::Gcra => Backend::Gcra {
                gcra: Gcra::new(q),
                store: MemoryStore::new(self.max_keys, shards, idle_ns),
            },
            (None, _, Some(window)) => Backend::Window {
                window,
                store: MemoryStore::new(self.max_keys, shards, idle_ns),
            },
            #[cfg(all(feature = "shm", not(floodgate_loom)))]
            (None, [a, b], None)
                if a.algorithm() == Algorithm::Gcra
                    && b.algorithm() == Algorithm::Gcra
                    && portable_atomic::AtomicU128::is_lock_free() =>
            {
                Backend::Pair {
                    gcra: [Gcra::new(a), Gcra::new(b)],
                    store: MemoryStore::new(self.max_keys, shards, idle_ns),
                }
            }
            (None, qs, None) => Backend::General {
                params: qs.iter().map(Params::new).collect(),
                store: MemoryStore::new(self.max_keys, shards, idle_ns),
            },
        };
        let max_cost = self
            .quotas
            .iter()
            .enumerate()
            .map(|(i, q)| (q.limit(), i))
            .min()
            .unwrap_or((0, 0));
        Ok(Limiter {
            quotas: self.quotas.into_boxed_slice(),
            backend,
            hasher: ahash::RandomState::new(),
            max_key_bytes: self.max_key_bytes,
            max_cost,
            clock,
        })
    }
}

/// Shards a memory store gets unless told: 64 a core, at most 256. Reads never
/// wait on one another (each core has its own reader lock in a shard), so
/// shards are for writers (a new key, a promotion, a rotation) and for short
/// pauses (a shard's table grows and rotates under its write lock). But each
/// costs about 1.1 KiB whether used or not (crossbeam's 8 padded reader
/// locks): uncapped, a rule's limiter held 4.5 MB before its first key on a
/// 64-core host (4,096 shards), in every worker process. 256 shards keep 64
/// writers on distinct shards three times in four, and a 1M-key generation
/// near 2,000 keys a shard. Hosts of up to 4 cores are unchanged.
const MAX_DEFAULT_SHARDS: usize = 256;

fn default_shards(cores: usize) -> usize {
    cores.saturating_mul(64).min(MAX_DEFAULT_SHARDS)
}

/// The shared-memory backend of a limiter's own table (quota numbers 0..n).
#[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
fn shared_backend(path: &std::path::Path, quotas: &[Quota], max_keys: usize) -> Result<Backend> {
    use crate::store::shm::{Codec, Fnv, SharedKeys, ShmTable, TableSpec};
    let codecs = quotas
        .iter()
        .map(Codec::new)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|problem| Error::InvalidOption {
            option: "shared_memory",
            problem,
        })?;
    let fingerprint = quotas
        .iter()
        .fold(Fnv::new().bytes(b"limiter"), |f, q| f.quota(q))
        .finish();
    let spec = TableSpec {
        slots: max_keys.saturating_mul(quotas.len()),
        codecs,
        fingerprint,
    };
    let table = ShmTable::open(path, &spec)?;
    Ok(Backend::Shared {
        keys: SharedKeys {
            table,
            first: 0,
            params: quotas.iter().map(Params::new).collect(),
            id: 0,
        },
        shared_clock: false,
    })
}

#[cfg(not(all(feature = "shm", unix, not(floodgate_loom))))]
fn shared_backend(_: &std::path::Path, _: &[Quota], _: usize) -> Result<Backend> {
    Err(Error::InvalidOption {
        option: "shared_memory",
        problem: "this build has no shared-memory store (Unix, cargo feature `shm`)",
    })
}

/// Nanoseconds in a `Duration`, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Limiter {
    /// A limiter with one quota and default options, on the default clock.
    ///
    /// # Errors
    /// As [`LimiterBuilder::build`].
    ///
    /// # Examples
    /// ```
    /// let limiter = floodgate::Limiter::new("100/s".parse()?)?;
    /// assert!(limiter.check("10.0.0.1", 1)?.allowed);
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn new(quota: Quota) -> Result<Self> {
        Self::builder().quota(quota).build()
    }

    /// A builder with default options and no quota yet.
    pub fn builder() -> LimiterBuilder {
        LimiterBuilder::default()
    }
}

impl<C: Clock> Limiter<C> {
    /// Checks a request of `cost` units for `key` now, and charges it if allowed.
    /// `cost == 0` is a [`peek`](Self::peek).
    ///
    /// # Errors
    /// [`Error::EmptyKey`], [`Error::KeyTooLong`], or [`Error::CostExceedsBurst`]
    /// when `cost` exceeds what a quota admits at once (it could never succeed).
    /// A denial is not an error: it is a `Decision` with `allowed == false`.
    ///
    /// # Examples
    /// ```
    /// let limiter = floodgate::Limiter::new("2/s".parse()?)?;
    /// assert!(limiter.check(b"\xff\x00raw bytes", 2)?.allowed);
    /// assert!(!limiter.check(b"\xff\x00raw bytes", 1)?.allowed);
    /// assert!(limiter.check("", 1).is_err());
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    #[inline]
    pub fn check(&self, key: impl AsRef<[u8]>, cost: u64) -> Result<Decision> {
        self.check_ns(key.as_ref(), cost, self.now_ns())
    }

    /// Now on the clock checks use: the limiter's, or a shared-memory table's.
    #[inline]
    fn now_ns(&self) -> u64 {
        #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
        if let Backend::Shared {
            keys,
            shared_clock: true,
        } = &self.backend
        {
            return keys.table.now_ns();
        }
        self.clock.now_ns()
    }

    /// [`check`](Self::check) at an explicit time: `now` since the clock's origin
    /// (any fixed origin works if every call uses it). For replay and tests.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let limiter = floodgate::Limiter::new("1/s".parse()?)?;
    /// assert!(limiter.check_at("k", 1, Duration::from_secs(5))?.allowed);
    /// let d = limiter.check_at("k", 1, Duration::from_secs(5))?;
    /// assert_eq!(d.retry_after, Duration::from_secs(1));
    /// assert!(limiter.check_at("k", 1, Duration::from_secs(6))?.allowed);
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    #[inline]
    pub fn check_at(&self, key: impl AsRef<[u8]>, cost: u64, now: Duration) -> Result<Decision> {
        self.check_ns(key.as_ref(), cost, nanos(now))
    }

    /// What a request of one unit would get now, without charging anything or
    /// storing the key. `remaining` and `reset_after` are as they stand.
    ///
    /// # Errors
    /// [`Error::EmptyKey`] or [`Error::KeyTooLong`].
    ///
    /// # Examples
    /// ```
    /// let limiter = floodgate::Limiter::new("5/s".parse()?)?;
    /// assert_eq!(limiter.peek("k")?.remaining, 5);
    /// assert_eq!(limiter.len(), 0);
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn peek(&self, key: impl AsRef<[u8]>) -> Result<Decision> {
        self.check_ns(key.as_ref(), 0, self.now_ns())
    }

    /// [`peek`](Self::peek) at an explicit time.
    ///
    /// # Errors
    /// As [`peek`](Self::peek).
    pub fn peek_at(&self, key: impl AsRef<[u8]>, now: Duration) -> Result<Decision> {
        self.check_ns(key.as_ref(), 0, nanos(now))
    }

    /// Gives back `cost` units that an allowed check of `key` at `now` charged: the
    /// undo half of an all-or-nothing group of checks across limiters (the policy
    /// layer uses it when a later rule denies). Refunding more than was charged
    /// only makes the key's state fresher than it was; it never goes below empty.
    ///
    /// # Errors
    /// [`Error::EmptyKey`] or [`Error::KeyTooLong`].
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let limiter = floodgate::Limiter::new("2/h".parse()?)?;
    /// let t = Duration::ZERO;
    /// limiter.check_at("k", 2, t)?;
    /// limiter.refund_at("k", 1, t)?;
    /// assert!(limiter.check_at("k", 1, t)?.allowed);
    /// assert!(!limiter.check_at("k", 1, t)?.allowed);
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn refund_at(&self, key: impl AsRef<[u8]>, cost: u64, now: Duration) -> Result<()> {
        let fp = self.fingerprint(key.as_ref())?;
        let now = nanos(now);
        match &self.backend {
            Backend::Gcra { gcra, store } => store.read(fp, |cell| {
                if let Some(cell) = cell {
                    state::gcra_refund(cell, gcra, cost);
                }
            }),
            Backend::Window { window, store } => store.read(fp, |cell| {
                if let Some(cell) = cell {
                    window.refund(cell, now, cost);
                }
            }),
            #[cfg(all(feature = "shm", not(floodgate_loom)))]
            Backend::Pair { gcra, store } => store.read(fp, |cell| {
                if let Some(cell) = cell {
                    state::pair::refund(cell, gcra, cost);
                }
            }),
            Backend::General { params, store } => store.read(fp, |slot| {
                if let Some(states) = slot {
                    state::refund_all(&mut states.lock(), params, now, cost);
                }
            }),
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Backend::Shared { keys, .. } => keys.refund(key.as_ref(), now, cost),
        }
        Ok(())
    }

    /// Forgets `key`, giving it a full limit again. Returns whether it was held.
    ///
    /// # Errors
    /// [`Error::EmptyKey`] or [`Error::KeyTooLong`].
    ///
    /// # Examples
    /// ```
    /// let limiter = floodgate::Limiter::new("1/h".parse()?)?;
    /// limiter.check("k", 1)?;
    /// assert!(limiter.reset("k")?);
    /// assert!(limiter.check("k", 1)?.allowed);
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn reset(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let fp = self.fingerprint(key.as_ref())?;
        Ok(match self.backend.table() {
            Table::Memory(t) => t.remove(fp),
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Table::Shared(keys) => keys.reset(key.as_ref()),
        })
    }

    /// Forgets every key.
    pub fn clear(&self) {
        match self.backend.table() {
            Table::Memory(t) => t.clear(),
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Table::Shared(keys) => keys.table.clear(keys.first..keys.first + keys.params.len()),
        }
    }

    /// The quotas, in the order decisions' `quota` index refers to.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// The shared-memory table this limiter keeps its state in, if any.
    pub fn shared_memory_path(&self) -> Option<&std::path::Path> {
        match &self.backend {
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Backend::Shared { keys, .. } => Some(keys.table.path()),
            _ => None,
        }
    }

    /// The limiter's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Keys currently held (O(shards); on shared memory, keys whose first
    /// quota still has live state, a scan of the table).
    pub fn len(&self) -> usize {
        match self.backend.table() {
            Table::Memory(t) => t.len(),
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Table::Shared(keys) => keys.table.live(keys.first, self.now_ns()),
        }
    }

    /// True if no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys ever held at once (`max_keys`, rounded down to the shards).
    pub fn capacity(&self) -> usize {
        match self.backend.table() {
            Table::Memory(t) => t.capacity(),
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Table::Shared(keys) => keys.table.slots() / keys.params.len().max(1),
        }
    }

    /// Keys forgotten because the limiter was full (see [`LimiterBuilder::max_keys`]).
    pub fn evicted(&self) -> u64 {
        match self.backend.table() {
            Table::Memory(t) => t.evicted(),
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Table::Shared(keys) => keys.table.evicted(),
        }
    }

    /// Bytes used by the key tables, plus each held key's fixed per-key state on the
    /// general path (a sliding log's entries, 16 bytes each, are not counted).
    pub fn memory_bytes(&self) -> usize {
        // The general path's Box<[QuotaState]> plus the allocator's header, per key.
        let per_key = match &self.backend {
            Backend::General { params, .. } => {
                params.len() * std::mem::size_of::<QuotaState>() + 16
            }
            _ => 0,
        };
        match self.backend.table() {
            Table::Memory(t) => t.table_bytes() + t.len() * per_key,
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Table::Shared(keys) => keys.table.bytes(),
        }
    }

    /// This limiter with its state moved to quota numbers `first..` of a shared
    /// table (the policy's shared-memory store; times come from the caller).
    #[cfg(all(feature = "shm", unix, not(floodgate_loom), feature = "policy"))]
    pub(crate) fn into_shared(
        mut self,
        table: std::sync::Arc<crate::store::shm::ShmTable>,
        first: usize,
        id: u64,
    ) -> Self {
        self.backend = Backend::Shared {
            keys: crate::store::shm::SharedKeys {
                table,
                first,
                params: self.quotas.iter().map(Params::new).collect(),
                id,
            },
            shared_clock: false,
        };
        self
    }

    /// Checks a key's length and a cost against the quotas: the argument errors of
    /// every check, shared with the Redis store.
    pub(crate) fn validate(&self, key: &[u8], cost: u64) -> Result<()> {
        if key.is_empty() {
            return Err(Error::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(Error::KeyTooLong {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        if cost > self.max_cost.0 {
            return Err(Error::CostExceedsBurst {
                cost,
                burst: self.max_cost.0,
                quota: self.max_cost.1,
            });
        }
        Ok(())
    }

    /// The most one check may cost: the smallest limit among the quotas.
    #[cfg(feature = "policy")]
    pub(crate) fn max_cost(&self) -> u64 {
        self.max_cost.0
    }

    /// Starts this limiter (new, not yet used) with every key `old` holds,
    /// each key's state carried over to this limiter's quotas by the rules of
    /// `carry.rs` (a policy reload that changed a rule's quotas, not its key):
    /// quota `i` takes over `old`'s quota `i`, quotas beyond `old`'s start
    /// empty. Both must keep keys in this process (else nothing is carried:
    /// false). `now`: ns on the time base both are checked on. Keys `old`
    /// charges meanwhile (it is still serving) keep what they had when read.
    #[cfg(feature = "policy")]
    pub(crate) fn carry_from(&mut self, old: &Limiter<C>, now: u64) -> bool {
        let own_states = |states: &[QuotaState]| -> Vec<QuotaState> {
            self.params()
                .iter()
                .enumerate()
                .map(|(i, to)| {
                    match (
                        states.get(i),
                        old.params().get(i),
                        old.quotas.get(i),
                        self.quotas.get(i),
                    ) {
                        (Some(s), Some(from), Some(fq), Some(tq)) => {
                            crate::carry::carried((fq, from), s, (tq, to), now)
                        }
                        _ => to.fresh(),
                    }
                })
                .collect()
        };
        let mut read: Vec<(u64, Vec<QuotaState>)> = Vec::new();
        match &old.backend {
            Backend::Gcra { store, .. } => store.for_each(|fp, cell| {
                let tat = cell.load(crate::sync::Ordering::Relaxed);
                read.push((fp, own_states(&[QuotaState::Gcra(tat)])));
            }),
            Backend::Window { window, store } => store.for_each(|fp, cell| {
                let bits = cell.load(crate::sync::Ordering::Relaxed);
                read.push((fp, own_states(&[window.unpack(bits, now)])));
            }),
            #[cfg(all(feature = "shm", not(floodgate_loom)))]
            Backend::Pair { store, .. } => store.for_each(|fp, cell| {
                read.push((fp, own_states(&state::pair::states(cell))));
            }),
            Backend::General { store, .. } => {
                store.for_each(|fp, states| read.push((fp, own_states(&states.lock()))));
            }
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            Backend::Shared { .. } => return false,
        }
        // The same fingerprints: this limiter hashes keys as `old` did.
        self.hasher = old.hasher.clone();
        for (fp, states) in read {
            let fresh = states
                .iter()
                .zip(self.params().iter())
                .all(|(s, p)| *s == p.fresh());
            if fresh {
                continue;
            }
            match &self.backend {
                Backend::Gcra { store, .. } => {
                    let tat = match states.first() {
                        Some(QuotaState::Gcra(tat)) => *tat,
                        _ => 0,
                    };
                    store.with(fp, now, || AtomicU64::new(tat), |_| ());
                }
                Backend::Window { window, store } => {
                    let bits = states.first().map_or(0, |s| window.pack(s));
                    store.with(fp, now, || AtomicU64::new(bits), |_| ());
                }
                #[cfg(all(feature = "shm", not(floodgate_loom)))]
                Backend::Pair { store, .. } => {
                    let tat = |i: usize| match states.get(i) {
                        Some(QuotaState::Gcra(tat)) => *tat,
                        _ => 0,
                    };
                    let bits = state::pair::bits([tat(0), tat(1)]);
                    store.with(fp, now, || portable_atomic::AtomicU128::new(bits), |_| ());
                }
                Backend::General { store, .. } => {
                    let mut states = Some(states.into_boxed_slice());
                    store.with(
                        fp,
                        now,
                        || parking_lot::Mutex::new(states.take().unwrap_or_default()),
                        |_| (),
                    );
                }
                #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
                Backend::Shared { .. } => return false,
            }
        }
        true
    }

    /// Each quota's parameters (built on demand for the one-GCRA backend).
    #[cfg(feature = "policy")]
    fn params(&self) -> Vec<Params> {
        match &self.backend {
            Backend::General { params, .. } => params.to_vec(),
            Backend::Window { window, .. } => vec![*window.params()],
            _ => self.quotas.iter().map(Params::new).collect(),
        }
    }

    fn fingerprint(&self, key: &[u8]) -> Result<u64> {
        self.validate(key, 0)?;
        Ok(self.hasher.hash_one(key))
    }

    #[inline]
    fn check_ns(&self, key: &[u8], cost: u64, now: u64) -> Result<Decision> {
        self.validate(key, cost)?;
        let fp = self.hasher.hash_one(key);
        let (outcome, quota) = match (&self.backend, cost) {
            (Backend::Gcra { gcra, store }, 0) => {
                let tat = store.read(fp, |cell| {
                    cell.map_or(0, |c| c.load(crate::sync::Ordering::Relaxed))
                });
                (state::gcra_peek(tat, gcra, now), 0)
            }
            (Backend::Gcra { gcra, store }, _) => (
                store.with(
                    fp,
                    now,
                    || AtomicU64::new(0),
                    |cell| state::gcra_check(cell, gcra, now, cost),
                ),
                0,
            ),
            (Backend::Window { window, store }, 0) => {
                let bits = store.read(fp, |cell| {
                    cell.map_or(0, |c| c.load(crate::sync::Ordering::Relaxed))
                });
                (window.peek(bits, now), 0)
            }
            (Backend::Window { window, store }, _) => (
                store.with(
                    fp,
                    now,
                    || AtomicU64::new(0),
                    |cell| window.check(cell, now, cost),
                ),
                0,
            ),
            #[cfg(all(feature = "shm", not(floodgate_loom)))]
            (Backend::Pair { gcra, store }, 0) => {
                let bits = store.read(fp, |cell| {
                    cell.map_or(0, |c| c.load(portable_atomic::Ordering::Relaxed))
                });
                state::pair::peek(bits, gcra, now)
            }
            #[cfg(all(feature = "shm", not(floodgate_loom)))]
            (Backend::Pair { gcra, store }, _) => store.with(
                fp,
                now,
                || portable_atomic::AtomicU128::new(0),
                |cell| state::pair::check(cell, gcra, now, cost),
            ),
            (Backend::General { params, store }, 0) => store.read(fp, |slot| match slot {
                Some(states) => state::peek_all(&mut states.lock(), params, now),
                None => state::peek_fresh(params, now),
            }),
            (Backend::General { params, store }, _) => store.with(
                fp,
                now,
                || parking_lot::Mutex::new(params.iter().map(Params::fresh).collect()),
                |states| state::check_all(&mut states.lock(), params, now, cost),
            ),
            #[cfg(all(feature = "shm", unix, not(floodgate_loom)))]
            (Backend::Shared { keys, .. }, _) => keys.check(key, now, cost),
        };
        Ok(self.decision(outcome, quota))
    }

    fn decision(&self, o: Outcome, quota: usize) -> Decision {
        Decision {
            allowed: o.allowed,
            limit: self.quotas.get(quota).map_or(0, Quota::limit),
            remaining: o.remaining,
            retry_after: Duration::from_nanos(o.retry_after),
            reset_after: Duration::from_nanos(o.reset_after),
            quota,
        }
    }
}

#[cfg(all(test, not(floodgate_loom)))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// `quotas` on the backend the builder picks (not the locked one) and on
    /// the locked general path, the reference: the same hasher, shards and
    /// store (keys and rotations), the state unpacked.
    fn with_reference(quotas: &[Quota]) -> (Limiter, Limiter) {
        let builder = Limiter::builder()
            .quotas(quotas.iter().copied())
            .max_keys(1000)
            .shards(4);
        let fast = builder.clone().build().unwrap();
        assert!(
            !matches!(fast.backend, Backend::General { .. }),
            "{quotas:?}"
        );
        let mut general = builder.build().unwrap();
        let idle = quotas
            .iter()
            .map(Quota::state_lifetime_ns)
            .max()
            .unwrap_or(1);
        general.backend = Backend::General {
            params: quotas.iter().map(Params::new).collect(),
            store: MemoryStore::new(1000, 4, idle),
        };
        general.hasher = fast.hasher.clone();
        (fast, general)
    }

    /// One window quota, packed, and its reference.
    fn pair(quota: Quota) -> (Limiter, Limiter) {
        let (packed, general) = with_reference(&[quota]);
        assert!(matches!(packed.backend, Backend::Window { .. }), "{quota}");
        (packed, general)
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// After `dt` ns, `cost` units for key `key` (0: a peek).
        Check {
            key: u8,
            cost: u64,
            dt: u64,
        },
        /// After `dt` ns, gives back `cost` units of `key`.
        Refund {
            key: u8,
            cost: u64,
            dt: u64,
        },
        /// The clock goes back `by` ns.
        Back {
            by: u64,
        },
        Reset {
            key: u8,
        },
    }

    fn ops(limit: u64, window: u64) -> impl Strategy<Value = Vec<Op>> {
        let dt = 0..window.saturating_mul(3) / 2;
        let op = prop_oneof![
            6 => (0..3u8, 0..=limit, dt.clone()).prop_map(|(key, cost, dt)| Op::Check { key, cost, dt }),
            1 => (0..3u8, 1..=limit, dt).prop_map(|(key, cost, dt)| Op::Refund { key, cost, dt }),
            1 => (0..window.saturating_mul(2)).prop_map(|by| Op::Back { by }),
            1 => (0..3u8).prop_map(|key| Op::Reset { key }),
        ];
        prop::collection::vec(op, 1..150)
    }

    fn window_quota() -> impl Strategy<Value = Quota> {
        let limit = prop_oneof![4 => 1..40u64, 1 => 40..16_384u64];
        let algorithm =
            prop::sample::select(vec![Algorithm::SlidingWindow, Algorithm::FixedWindow]);
        (limit, 1..7_200u64, algorithm).prop_map(|(limit, secs, algorithm)| {
            Quota::new(limit, Duration::from_secs(secs))
                .and_then(|q| q.with_algorithm(algorithm))
                .unwrap()
        })
    }

    /// Runs `script` from `start` on both limiters: every decision, peek,
    /// reset and the final key count must agree.
    fn replay(
        fast: &Limiter,
        general: &Limiter,
        start: u64,
        script: Vec<Op>,
    ) -> Result<(), TestCaseError> {
        let mut now = start;
        for op in script {
            match op {
                Op::Check { key, cost, dt } => {
                    now = now.saturating_add(dt);
                    let at = Duration::from_nanos(now);
                    let key = [b'k', key];
                    let cost = cost.min(fast.max_cost.0);
                    prop_assert_eq!(
                        fast.check_at(key, cost, at).unwrap(),
                        general.check_at(key, cost, at).unwrap(),
                        "cost {} at {}",
                        cost,
                        now
                    );
                    prop_assert_eq!(
                        fast.peek_at(key, at).unwrap(),
                        general.peek_at(key, at).unwrap()
                    );
                }
                Op::Refund { key, cost, dt } => {
                    now = now.saturating_add(dt);
                    let at = Duration::from_nanos(now);
                    fast.refund_at([b'k', key], cost, at).unwrap();
                    general.refund_at([b'k', key], cost, at).unwrap();
                }
                Op::Back { by } => now = now.saturating_sub(by),
                Op::Reset { key } => {
                    prop_assert_eq!(
                        fast.reset([b'k', key]).unwrap(),
                        general.reset([b'k', key]).unwrap()
                    );
                }
            }
        }
        prop_assert_eq!(fast.len(), general.len());
        Ok(())
    }

    proptest! {
        /// Every decision on the packed backend is the general backend's, from
        /// any starting time (Unix-epoch-sized ones too), with refunds, resets
        /// and a clock that goes back.
        #[test]
        fn packed_windows_decide_as_the_general_path(
            quota in window_quota(),
            start in prop_oneof![Just(0u64), any::<u64>(), Just(1_780_000_000_000_000_000u64)],
            script in (1..16_384u64, 1_000_000_000..7_200_000_000_000u64).prop_flat_map(|(l, w)| ops(l, w)),
        ) {
            let (packed, general) = pair(quota);
            replay(&packed, &general, start, script)?;
        }

        /// Two token buckets in one 128-bit cell decide as the locked path
        /// does: both charged or neither, the same deciding quota.
        #[cfg(feature = "shm")]
        #[test]
        fn two_token_buckets_decide_as_the_general_path(
            quotas in prop::collection::vec((1..50u64, 1..3_600_000u64, 1..100u64), 2..=2),
            start in prop_oneof![Just(0u64), any::<u64>()],
            script in ops(100, 3_600_000_000_000),
        ) {
            let quotas: Vec<Quota> = quotas
                .into_iter()
                .map(|(rate, ms, burst)| {
                    Quota::new(rate, Duration::from_millis(ms))
                        .and_then(|q| q.with_burst(burst))
                        .unwrap()
                })
                .collect();
            let (pair, general) = with_reference(&quotas);
            let is_pair = matches!(pair.backend, Backend::Pair { .. });
            prop_assert!(is_pair, "two GCRA quotas share one 128-bit cell");
            replay(&pair, &general, start, script)?;
        }
    }

    /// A reload's carry into and out of the packed cells: a limiter that takes
    /// over a packed one's keys, or a locked one's, answers as the original.
    #[cfg(feature = "policy")]
    #[test]
    fn reloads_carry_packed_keys_over_exactly() {
        let sliding = "10/min"
            .parse::<Quota>()
            .and_then(|q| q.with_algorithm(Algorithm::SlidingWindow))
            .unwrap();
        let (minute, hour) = ("10/min".parse::<Quota>().unwrap(), "100/h".parse().unwrap());
        let mut cases = vec![vec![sliding]];
        // Two buckets share a cell with the shm feature's 128-bit atomics;
        // either first: the one that decides is carried in either half.
        if cfg!(feature = "shm") {
            cases.extend([vec![minute, hour], vec![hour, minute]]);
        }
        for quotas in cases {
            let (fast, general) = with_reference(&quotas);
            let at = Duration::from_secs(1_000);
            for key in 0..4u8 {
                for _ in 0..key * 3 {
                    fast.check_at([key], 1, at).unwrap();
                    general.check_at([key], 1, at).unwrap();
                }
            }
            let took_over = |from: &Limiter| {
                let mut to = Limiter::builder()
                    .quotas(quotas.iter().copied())
                    .build()
                    .unwrap();
                assert!(to.carry_from(from, nanos(at)));
                to
            };
            let (from_fast, from_general) = (took_over(&fast), took_over(&general));
            for t in [at, at + Duration::from_secs(7)] {
                for key in 0..4u8 {
                    let expected = fast.check_at([key], 2, t).unwrap();
                    assert_eq!(
                        from_fast.check_at([key], 2, t).unwrap(),
                        expected,
                        "{quotas:?}"
                    );
                    assert_eq!(
                        from_general.check_at([key], 2, t).unwrap(),
                        expected,
                        "{quotas:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn default_shards_stop_growing_with_cores() {
        assert_eq!(default_shards(1), 64);
        assert_eq!(default_shards(2), 128);
        assert_eq!(default_shards(4), 256);
        // A 64-core host: 256 shards (0.3 MB a limiter before any key), not 4,096 (4.5 MB).
        assert_eq!(default_shards(64), 256);
        assert_eq!(default_shards(usize::MAX), 256);
    }

    /// Which quotas pack: window quotas of a second or more whose counts fit.
    #[test]
    fn only_window_quotas_that_fit_are_packed() {
        let backend = |text: &str, algorithm| {
            let quota = text
                .parse::<Quota>()
                .unwrap()
                .with_algorithm(algorithm)
                .unwrap();
            match Limiter::new(quota).unwrap().backend {
                Backend::Gcra { .. } => "gcra",
                Backend::Window { .. } => "window",
                #[cfg(feature = "shm")]
                Backend::Pair { .. } => "pair",
                Backend::General { .. } => "general",
                #[cfg(all(feature = "shm", unix))]
                Backend::Shared { .. } => "shared",
            }
        };
        assert_eq!(backend("30/min", Algorithm::SlidingWindow), "window");
        assert_eq!(backend("16383/s", Algorithm::SlidingWindow), "window");
        assert_eq!(backend("16384/s", Algorithm::SlidingWindow), "general");
        assert_eq!(backend("1073741823/day", Algorithm::FixedWindow), "window");
        assert_eq!(backend("1073741824/day", Algorithm::FixedWindow), "general");
        assert_eq!(backend("10/999ms", Algorithm::SlidingWindow), "general");
        assert_eq!(backend("10/s", Algorithm::SlidingLog), "general");
        assert_eq!(backend("10/s", Algorithm::Gcra), "gcra");
    }

    /// A key idle for nearly 2^31 windows (68 years of seconds) still reads its
    /// stored window as the past one it is, and a clock that went back a
    /// window reads it as the later one it is.
    #[test]
    fn a_packed_window_index_reads_back_either_side_of_now() {
        let s = 1_000_000_000u64;
        // Now (an index of ~2^30.7 seconds), and in 292 years (~2^33: beyond
        // the 33 bits of index 16383/s keeps, so it is read back from its low
        // bits). A key of its own per start: a key idle for more than 2^32
        // windows would be misread (the documented bound).
        let starts = [1_780_000_000 * s, u64::MAX / 2];
        for limit in [2, 16_383] {
            let quota = Quota::per_second(limit)
                .and_then(|q| q.with_algorithm(Algorithm::SlidingWindow))
                .unwrap();
            let (packed, general) = pair(quota);
            for start in starts {
                let key = start.to_be_bytes();
                for at in [
                    start,
                    start + s / 2,
                    start - s / 2,
                    start + ((1 << 31) - 2) * s,
                    start + ((1 << 31) - 2) * s + s / 3,
                ] {
                    let at = Duration::from_nanos(at);
                    for cost in [limit, 1, 1] {
                        assert_eq!(
                            packed.check_at(key, cost, at).unwrap(),
                            general.check_at(key, cost, at).unwrap(),
                            "{limit}/s, cost {cost} at {at:?}"
                        );
                    }
                }
            }
        }
    }
}
