//! Temporary bans for repeat offenders, and adaptive tightening.
//!
//! **Bans.** Every denial of a key is a strike, counted by an exact sliding log of
//! `after` per `within`. The `after`-th strike inside `within` bans the key for
//! `duration`, and each further ban of the same key lasts `escalate` times longer,
//! up to `max_duration`. A banned key is answered at once (429 or 403, with
//! `Retry-After` = what is left of the ban) without touching its quotas.
//!
//! A ban is *scoped*: by default to the rule that earned it ([`BanScope::Rule`]),
//! so a ban earned on a header-keyed rule by sending `x-upload-id: alice` can
//! never ban the verified user `alice` on another rule, and an `X-Api-Key`
//! holding a victim's IP address can never ban that IP. With `[ban] scope =
//! "client"`, bans earned on rules keyed by `ip` alone are client-wide
//! ([`BanScope::Client`]): they are checked for every request from that address
//! (the same network for IPv6), whatever rule it meets. Only an IP-keyed rule can
//! earn such a ban.
//!
//! The table is bounded (`max_keys`). An entry is kept while its ban runs and for
//! `max_duration` after (to escalate a returning offender). When a shard is full,
//! forgotten entries go first, then bans already over, then an active ban of a
//! *lower* escalation level than the new one. An active ban is never evicted by
//! a newer one of the same or a lower level: flooding the table with throwaway
//! bans cannot free a banned key. A new ban that finds no room is not recorded
//! (the request is still denied by its quota) and is counted in `dropped`
//! (`floodgate_bans_dropped_total`).
//!
//! **Adaptive tightening.** Per rule and key, requests and denials are counted in
//! aligned windows of `window`. A key whose last complete window had at least
//! `min_requests` requests and a denied share above `threshold` is *tightened*:
//! each request costs `factor` times as much (capped at the quota's burst), so
//! with `factor = 2` it gets half its quota. A window at or below the threshold,
//! or a whole window without traffic, lifts it.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use crate::limiter::Limiter;
use crate::quota::{Algorithm, Quota};
use crate::store::memory::MemoryStore;

/// What a ban covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BanScope {
    /// The key of one rule (its index in the policy).
    Rule(usize),
    /// A client address, on every rule (`[ban] scope = "client"`).
    Client,
}

/// One key's ban state. Invariant: `until <= forget_at`.
#[derive(Debug, Clone, Copy)]
struct BanEntry {
    fp: u64,
    /// The ban ends at this time (ns); in the past once it is over.
    until: u64,
    /// Bans of this key so far (for escalation).
    level: u32,
    /// The entry may be dropped from this time on (ns).
    forget_at: u64,
}

/// Bans kept in a shared-memory table (`[store] kind = "shared_memory"`): a ban
/// earned in one worker process holds in every other, and strikes from every
/// worker count together. Strikes are a sliding-window counter there (the exact
/// log is refused by the table); a ban is one slot (its end and escalation
/// level), kept for `max_duration` after it ends, like the in-process entry.
#[cfg(all(feature = "shm", unix))]
pub(crate) struct SharedBans {
    pub table: std::sync::Arc<crate::store::shm::ShmTable>,
    /// The strikes quota's number in the table.
    pub strikes_quota: usize,
    /// The bans' quota number in the table.
    pub ban_quota: usize,
}

#[cfg(all(feature = "shm", unix))]
struct SharedState {
    table: std::sync::Arc<crate::store::shm::ShmTable>,
    strikes: crate::store::shm::SharedKeys,
    ban_quota: usize,
}

#[cfg(not(all(feature = "shm", unix)))]
pub(crate) enum SharedBans {}
#[cfg(not(all(feature = "shm", unix)))]
enum SharedState {}

/// The `[ban]` policy.
pub(crate) struct Bans {
    #[cfg_attr(not(all(feature = "shm", unix)), allow(dead_code))]
    shared: Option<SharedState>,
    strikes: Limiter,
    shards: Box<[RwLock<HashTable<BanEntry>>]>,
    shard_cap: usize,
    hasher: ahash::RandomState,
    duration_ns: u64,
    escalate: f64,
    max_ns: u64,
    pub(crate) status: u16,
    /// Whether IP-keyed rules ban the client on every rule.
    pub(crate) client_scope: bool,
    dropped: AtomicU64,
    /// The latest end of any ban this table has recorded (ns): at or after it
    /// no key is banned, and a check skips the hash and the shard's lock (the
    /// usual case, when nobody is banned).
    latest_end: AtomicU64,
}

impl std::fmt::Debug for Bans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bans")
            .field("duration_ns", &self.duration_ns)
            .field("status", &self.status)
            .field("client_scope", &self.client_scope)
            .finish_non_exhaustive()
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const BAN_SHARDS: usize = 64;

/// Settings of [`Bans::new`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BanSetup {
    pub after: u64,
    pub within: Duration,
    pub duration: Duration,
    pub escalate: f64,
    pub max: Duration,
    pub status: u16,
    pub max_keys: usize,
    pub client_scope: bool,
}

/// The hash a ban key has in a shared table: the scope as the limiter id.
#[cfg(all(feature = "shm", unix))]
fn shared_hash(table: &crate::store::shm::ShmTable, scope: BanScope, key: &[u8]) -> u64 {
    let id = match scope {
        BanScope::Rule(i) => (1u64 << 32) | i as u64,
        BanScope::Client => 2,
    };
    table.key_hash(id, key)
}

/// The strikes quota: `after` per `within`, as the shared table holds it.
#[cfg_attr(not(all(feature = "shm", unix)), allow(dead_code))]
pub(crate) fn shared_strikes_quota(after: u64, within: Duration) -> crate::Result<Quota> {
    Quota::new(after, within)?.with_algorithm(Algorithm::SlidingWindow)
}

impl Bans {
    /// `after` strikes within `within` ban for `duration` (escalating, capped).
    #[cfg_attr(not(all(feature = "shm", unix)), allow(clippy::needless_pass_by_value))]
    pub(crate) fn new(s: BanSetup, shared: Option<SharedBans>) -> crate::Result<Self> {
        #[cfg(all(feature = "shm", unix))]
        let shared = match shared {
            Some(b) => Some(SharedState {
                strikes: crate::store::shm::SharedKeys {
                    table: b.table.clone(),
                    first: b.strikes_quota,
                    params: vec![crate::state::Params::new(&shared_strikes_quota(
                        s.after, s.within,
                    )?)]
                    .into_boxed_slice(),
                    id: 3,
                },
                table: b.table,
                ban_quota: b.ban_quota,
            }),
            None => None,
        };
        #[cfg(not(all(feature = "shm", unix)))]
        let shared: Option<SharedState> = shared.map(|never| match never {});
        let algorithm = if s.after <= 10_000 {
            Algorithm::SlidingLog
        } else {
            Algorithm::SlidingWindow
        };
        let strikes_quota = Quota::new(s.after, s.within)?.with_algorithm(algorithm)?;
        let strikes = Limiter::builder()
            .quota(strikes_quota)
            .max_keys(s.max_keys)
            .max_key_bytes(8)
            .build()?;
        let shard_cap = (s.max_keys / BAN_SHARDS).max(1);
        Ok(Self {
            shared,
            strikes,
            shards: (0..BAN_SHARDS)
                .map(|_| RwLock::new(HashTable::new()))
                .collect(),
            shard_cap,
            hasher: ahash::RandomState::new(),
            duration_ns: ns(s.duration),
            escalate: s.escalate,
            max_ns: ns(s.max).max(ns(s.duration)),
            status: s.status,
            client_scope: s.client_scope,
            dropped: AtomicU64::new(0),
            latest_end: AtomicU64::new(0),
        })
    }

    /// The fingerprint of `key` in `scope`: the same key bytes in two scopes are
    /// two unrelated entries.
    fn fingerprint(&self, scope: BanScope, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        match scope {
            BanScope::Rule(i) => {
                h.write_u8(1);
                h.write_usize(i);
            }
            BanScope::Client => h.write_u8(2),
        }
        h.write(key);
        h.finish()
    }

    fn shard(&self, fp: u64) -> &RwLock<HashTable<BanEntry>> {
        #[allow(clippy::indexing_slicing)] // BAN_SHARDS is a power of two; the index is masked
        &self.shards[(fp >> 32) as usize & (BAN_SHARDS - 1)]
    }

    /// What is left of the key's ban in `scope` at `now`, if it is banned.
    pub(crate) fn banned(&self, scope: BanScope, key: &[u8], now: u64) -> Option<Duration> {
        #[cfg(all(feature = "shm", unix))]
        if let Some(sh) = &self.shared {
            let h = shared_hash(&sh.table, scope, key);
            let until = sh
                .table
                .read_bits(sh.ban_quota, h, now)
                .map_or(0, |b| crate::store::shm::ban_of(b).0);
            return (until > now).then(|| Duration::from_nanos(until - now));
        }
        // Relaxed: a check concurrent with a ban may miss it either way; one
        // that happens after the ban (same thread, or synchronised with it)
        // sees this store by coherence.
        if now >= self.latest_end.load(Ordering::Relaxed) {
            return None;
        }
        let fp = self.fingerprint(scope, key);
        let until = self
            .shard(fp)
            .read()
            .find(fp, |e| e.fp == fp)
            .map_or(0, |e| e.until);
        (until > now).then(|| Duration::from_nanos(until - now))
    }

    /// Bans that found no room in a full table (never longer than any held).
    pub(crate) fn dropped(&self) -> u64 {
        // Relaxed: a statistics counter.
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records a denial of `key` in `scope`; returns the ban's length if this
    /// strike starts one.
    pub(crate) fn strike(&self, scope: BanScope, key: &[u8], now: u64) -> Option<Duration> {
        #[cfg(all(feature = "shm", unix))]
        if let Some(sh) = &self.shared {
            return self.strike_shared(sh, scope, key, now);
        }
        let fp = self.fingerprint(scope, key);
        let strike_key = fp.to_le_bytes();
        let d = self
            .strikes
            .check_at(strike_key, 1, Duration::from_nanos(now))
            .ok()?;
        if d.allowed && d.remaining > 0 {
            return None;
        }
        let _ = self.strikes.reset(strike_key);
        let mut table = self.shard(fp).write();
        let level = table
            .find(fp, |e| e.fp == fp)
            .map_or(0, |e| if e.forget_at > now { e.level } else { 0 });
        let length = self.length(level);
        let until = now.saturating_add(length);
        // Before the entry: the fast "nobody banned" answer never outlives it.
        // Relaxed: see `banned`.
        self.latest_end.fetch_max(until, Ordering::Relaxed);
        let entry = BanEntry {
            fp,
            until,
            level: level.saturating_add(1),
            forget_at: until.saturating_add(self.max_ns),
        };
        if let Ok(mut held) = table.find_entry(fp, |e| e.fp == fp) {
            *held.get_mut() = entry;
            return Some(Duration::from_nanos(length));
        }
        if table.len() >= self.shard_cap {
            table.retain(|e| e.forget_at > now);
        }
        if table.len() >= self.shard_cap {
            // The cheapest entry: a ban already over (kept only to escalate), else
            // the lowest level, then the soonest end.
            let cheapest = table
                .iter()
                .min_by_key(|e| (e.until > now, e.level, e.until))
                .map(|e| (e.fp, e.until > now, e.level));
            match cheapest {
                Some((victim, active, level)) if !active || level < entry.level => {
                    if let Ok(e) = table.find_entry(victim, |e| e.fp == victim) {
                        e.remove();
                    }
                }
                _ => {
                    // Relaxed: a statistics counter.
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return Some(Duration::from_nanos(length));
                }
            }
        }
        table.insert_unique(fp, entry, |e| e.fp);
        Some(Duration::from_nanos(length))
    }
}

impl Bans {
    /// How long the ban after `level` earlier ones lasts (ns).
    fn length(&self, level: u32) -> u64 {
        let factor = self.escalate.powi(i32::try_from(level).unwrap_or(i32::MAX));
        ((self.duration_ns as f64) * factor).min(self.max_ns as f64) as u64
    }

    /// `strike` on the shared table: one counter and one ban slot per key, each
    /// changed by one compare-and-swap.
    #[cfg(all(feature = "shm", unix))]
    fn strike_shared(
        &self,
        sh: &SharedState,
        scope: BanScope,
        key: &[u8],
        now: u64,
    ) -> Option<Duration> {
        use crate::store::shm::{ban_bits, ban_of};
        let h = shared_hash(&sh.table, scope, key);
        let strike_key = h.to_le_bytes();
        let (o, _) = sh.strikes.check(&strike_key, now, 1);
        if o.allowed && o.remaining > 0 {
            return None;
        }
        sh.strikes.reset(&strike_key);
        let max_ns = self.max_ns;
        let length = sh.table.apply_bits(sh.ban_quota, h, now, true, |bits| {
            let (until, held) = ban_of(bits);
            // A level is remembered until `max_duration` after its ban ended.
            let level = if bits != 0 && until.saturating_add(max_ns) > now {
                held
            } else {
                0
            };
            let length = self.length(level);
            (
                length,
                Some(ban_bits(
                    now.saturating_add(length),
                    level.saturating_add(1),
                )),
            )
        });
        if length.is_none() {
            // Relaxed: a statistics counter.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Some(Duration::from_nanos(length.unwrap_or(self.duration_ns)))
    }
}

/// Where one rule's adaptive-tightening counts live when the rules are in
/// shared memory: every worker counts the same windows.
#[cfg(all(feature = "shm", unix))]
pub(crate) struct SharedAdaptive {
    pub table: std::sync::Arc<crate::store::shm::ShmTable>,
    /// The rule's adaptive quota number in the table.
    pub quota: usize,
}

#[cfg(not(all(feature = "shm", unix)))]
pub(crate) enum SharedAdaptive {}

/// Counts of one key in one window.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    index: u64,
    requests: u64,
    denials: u64,
    tightened: bool,
}

/// Adaptive tightening for one rule.
pub(crate) struct Adaptive {
    threshold: f64,
    window_ns: u64,
    min_requests: u64,
    factor: u64,
    store: MemoryStore<Mutex<Window>>,
    hasher: ahash::RandomState,
    #[cfg_attr(not(all(feature = "shm", unix)), allow(dead_code))]
    shared: Option<SharedAdaptive>,
}

#[cfg(all(feature = "shm", unix))]
impl From<crate::store::shm::AdaptiveBits> for Window {
    fn from(b: crate::store::shm::AdaptiveBits) -> Self {
        Self {
            index: b.index,
            requests: b.requests,
            denials: b.denials,
            tightened: b.tightened,
        }
    }
}

#[cfg(all(feature = "shm", unix))]
impl From<Window> for crate::store::shm::AdaptiveBits {
    fn from(w: Window) -> Self {
        Self {
            index: w.index,
            requests: w.requests,
            denials: w.denials,
            tightened: w.tightened,
        }
    }
}

impl std::fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adaptive")
            .field("threshold", &self.threshold)
            .field("factor", &self.factor)
            .finish()
    }
}

impl Window {
    /// Moves to the window of `now`, deciding whether the key stays tightened.
    fn roll(&mut self, index: u64, threshold: f64, min_requests: u64) {
        if index <= self.index {
            return;
        }
        self.tightened = index == self.index + 1
            && self.requests >= min_requests
            && self.denials as f64 > threshold * self.requests as f64;
        *self = Window {
            index,
            requests: 0,
            denials: 0,
            tightened: self.tightened,
        };
    }
}

impl Adaptive {
    pub(crate) fn new(
        threshold: f64,
        window: Duration,
        min_requests: u64,
        factor: u64,
        max_keys: usize,
        shared: Option<SharedAdaptive>,
    ) -> Self {
        Self {
            threshold,
            window_ns: ns(window).max(1),
            min_requests,
            factor,
            store: MemoryStore::new(
                if shared.is_some() { 1 } else { max_keys },
                64,
                ns(window).saturating_mul(2),
            ),
            hasher: ahash::RandomState::new(),
            shared,
        }
    }

    /// The key's hash in the shared table (the same in every process).
    #[cfg(all(feature = "shm", unix))]
    fn shared_hash(sh: &SharedAdaptive, key: &[u8]) -> u64 {
        sh.table.key_hash(4, key)
    }

    /// The cost multiplier for `key` at `now` (1, or `factor` while tightened).
    pub(crate) fn multiplier(&self, key: &[u8], now: u64) -> u64 {
        let index = now / self.window_ns;
        #[cfg(all(feature = "shm", unix))]
        if let Some(sh) = &self.shared {
            let Some(bits) = sh
                .table
                .read_bits(sh.quota, Self::shared_hash(sh, key), now)
            else {
                return 1;
            };
            let mut w = Window::from(crate::store::shm::AdaptiveBits::unpack(bits, index));
            w.roll(index, self.threshold, self.min_requests);
            return if w.tightened { self.factor } else { 1 };
        }
        let fp = std::hash::BuildHasher::hash_one(&self.hasher, key);
        self.store.read(fp, |w| {
            w.map_or(1, |w| {
                let mut w = w.lock();
                w.roll(index, self.threshold, self.min_requests);
                if w.tightened { self.factor } else { 1 }
            })
        })
    }

    /// Records the outcome of a request of `key` at `now`.
    pub(crate) fn record(&self, key: &[u8], now: u64, denied: bool) {
        let index = now / self.window_ns;
        #[cfg(all(feature = "shm", unix))]
        if let Some(sh) = &self.shared {
            use crate::store::shm::AdaptiveBits;
            // A full table drops the count (the key's quota still decides).
            let _ = sh
                .table
                .apply_bits(sh.quota, Self::shared_hash(sh, key), now, true, |bits| {
                    let mut w = if bits == 0 {
                        Window {
                            index,
                            ..Window::default()
                        }
                    } else {
                        Window::from(AdaptiveBits::unpack(bits, index))
                    };
                    w.roll(index, self.threshold, self.min_requests);
                    w.requests = w.requests.saturating_add(1);
                    w.denials = w.denials.saturating_add(u64::from(denied));
                    ((), Some(AdaptiveBits::from(w).pack()))
                });
            return;
        }
        let fp = std::hash::BuildHasher::hash_one(&self.hasher, key);
        self.store.with(
            fp,
            now,
            || {
                Mutex::new(Window {
                    index,
                    ..Window::default()
                })
            },
            |w| {
                let mut w = w.lock();
                w.roll(index, self.threshold, self.min_requests);
                w.requests += 1;
                w.denials += u64::from(denied);
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const R: BanScope = BanScope::Rule(0);

    #[test]
    fn third_strike_bans_and_escalates() -> crate::Result<()> {
        let bans = Bans::new(
            BanSetup {
                after: 3,
                within: Duration::from_secs(60),
                duration: Duration::from_secs(10),
                escalate: 2.0,
                max: Duration::from_secs(25),
                status: 429,
                max_keys: 1000,
                client_scope: false,
            },
            None,
        )?;
        assert_eq!(bans.strike(R, b"k", 0), None);
        assert_eq!(bans.strike(R, b"k", S), None);
        assert_eq!(bans.strike(R, b"k", 2 * S), Some(Duration::from_secs(10)));
        assert_eq!(bans.banned(R, b"k", 3 * S), Some(Duration::from_secs(9)));
        assert_eq!(bans.banned(R, b"other", 3 * S), None);
        assert_eq!(bans.banned(R, b"k", 12 * S), None);
        for t in 13..15 {
            assert_eq!(bans.strike(R, b"k", t * S), None);
        }
        assert_eq!(
            bans.strike(R, b"k", 15 * S),
            Some(Duration::from_secs(20)),
            "second ban is twice as long"
        );
        // After every ban had ended (the quick "nobody is banned" answer at 12 s),
        // a new one is seen at once, and not once it is over.
        assert_eq!(bans.banned(R, b"k", 16 * S), Some(Duration::from_secs(19)));
        assert_eq!(bans.banned(R, b"other", 16 * S), None);
        assert_eq!(bans.banned(R, b"k", 35 * S), None);
        for t in 40..42 {
            bans.strike(R, b"k", t * S);
        }
        assert_eq!(
            bans.strike(R, b"k", 42 * S),
            Some(Duration::from_secs(25)),
            "capped at max_duration"
        );
        Ok(())
    }

    #[test]
    fn strikes_outside_the_window_do_not_add_up() -> crate::Result<()> {
        let bans = Bans::new(
            BanSetup {
                after: 2,
                within: Duration::from_secs(10),
                duration: Duration::from_secs(10),
                escalate: 1.0,
                max: Duration::from_secs(10),
                status: 403,
                max_keys: 100,
                client_scope: false,
            },
            None,
        )?;
        assert_eq!(bans.strike(R, b"k", 0), None);
        assert_eq!(bans.strike(R, b"k", 11 * S), None);
        assert!(bans.strike(R, b"k", 12 * S).is_some());
        Ok(())
    }

    fn one_strike_bans(max_keys: usize) -> crate::Result<Bans> {
        Bans::new(
            BanSetup {
                after: 1,
                within: Duration::from_secs(60),
                duration: Duration::from_secs(60),
                escalate: 4.0,
                max: Duration::from_secs(3600),
                status: 429,
                max_keys,
                client_scope: false,
            },
            None,
        )
    }

    #[test]
    fn scopes_never_share_a_ban() -> crate::Result<()> {
        let bans = one_strike_bans(1000)?;
        assert!(bans.strike(BanScope::Rule(1), b"alice", 0).is_some());
        assert!(bans.banned(BanScope::Rule(1), b"alice", S).is_some());
        assert_eq!(bans.banned(BanScope::Rule(2), b"alice", S), None);
        assert_eq!(bans.banned(BanScope::Client, b"alice", S), None);
        Ok(())
    }

    #[test]
    fn cheap_new_bans_never_evict_longer_ones() -> crate::Result<()> {
        let bans = one_strike_bans(BAN_SHARDS * 4)?;
        // An escalated ban: 60 s, then 240 s.
        assert!(bans.strike(R, b"victim", 0).is_some());
        assert_eq!(
            bans.strike(R, b"victim", 61 * S),
            Some(Duration::from_secs(240))
        );
        // Then a flood of fresh 60-second bans, far more than the table holds.
        for i in 0..20_000u32 {
            bans.strike(R, &i.to_le_bytes(), 62 * S);
        }
        assert!(bans.dropped() > 0, "the table was full");
        assert_eq!(
            bans.banned(R, b"victim", 100 * S),
            Some(Duration::from_secs(201)),
            "the longer ban survived the flood"
        );
        // Once the flood's bans are forgotten, new bans find room again.
        assert!(bans.strike(R, b"late", 62 * S + 3661 * S).is_some());
        assert!(bans.banned(R, b"late", 62 * S + 3662 * S).is_some());
        Ok(())
    }

    #[test]
    fn adaptive_tightens_then_lifts() {
        let a = Adaptive::new(0.5, Duration::from_secs(60), 10, 3, 1000, None);
        assert_eq!(a.multiplier(b"k", 0), 1);
        for i in 0..20 {
            a.record(b"k", i, i % 4 != 0); // 75% denied
        }
        assert_eq!(a.multiplier(b"k", 59 * S), 1, "decided at the window's end");
        assert_eq!(a.multiplier(b"k", 60 * S), 3);
        for i in 0..20 {
            a.record(b"k", 61 * S + i, false);
        }
        assert_eq!(a.multiplier(b"k", 120 * S), 1, "a clean window lifts it");
        // Too few requests never tighten.
        for i in 0..5 {
            a.record(b"q", 120 * S + i, true);
        }
        assert_eq!(a.multiplier(b"q", 180 * S), 1);
    }
}
