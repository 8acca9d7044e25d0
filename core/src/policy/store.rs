//! Where a policy's rules keep their counters: in memory (default), in a
//! shared-memory table (`[store] kind = "shared_memory"`, feature `shm`: one
//! table for every rule, each rule's keys apart) or in Redis (`[store] kind =
//! "redis"`, feature `redis`).

use std::time::Duration;

#[cfg(feature = "redis")]
use super::config::StoreConfig;
use super::config::{FailModeConfig, Path, PolicyConfig, Source, StoreKind};
use crate::decision::Decision;
use crate::error::Result;
use crate::limiter::Limiter;
use crate::quota::Quota;

/// Names of the ban state in a shared table's plan (no rule name starts with NUL).
#[cfg(all(feature = "shm", unix))]
const BAN_STRIKES: &str = "\0ban strikes";
#[cfg(all(feature = "shm", unix))]
const BANS: &str = "\0bans";
/// The name of a rule's adaptive-tightening state in a shared table's plan.
#[cfg(all(feature = "shm", unix))]
fn adaptive_name(rule: &str) -> String {
    format!("\0adaptive {rule}")
}

/// The name of a rule's in-flight counts in a shared table's plan.
#[cfg(all(feature = "shm", unix))]
fn in_flight_name(rule: &str) -> String {
    format!("\0in_flight {rule}")
}

/// A limiter's name in errors.
#[cfg(all(feature = "shm", unix))]
fn plan_name(name: &str) -> String {
    if name == BAN_STRIKES {
        "[ban] (strikes)".into()
    } else {
        format!("rule {name:?}")
    }
}

/// The store chosen by `[store]`.
pub(super) enum Store {
    Memory,
    #[cfg(all(feature = "shm", unix))]
    Shared {
        table: std::sync::Arc<crate::store::shm::ShmTable>,
        /// Each limiter's name and first quota number in the table.
        firsts: std::collections::HashMap<String, usize>,
    },
    #[cfg(feature = "redis")]
    Redis {
        store: crate::RedisStore,
        cfg: Box<StoreConfig>,
    },
}

impl Store {
    /// Whether this is the shared-memory table (whose layout a reload keeps).
    pub(super) fn is_shared(&self) -> bool {
        #[cfg(all(feature = "shm", unix))]
        if matches!(self, Store::Shared { .. }) {
            return true;
        }
        false
    }
}

/// One limiter of a rule (or tier).
pub(super) enum RuleLimiter {
    Memory(Limiter),
    #[cfg(feature = "redis")]
    Redis(Box<crate::RedisLimiter>),
}

/// A decision, and whether the fail mode gave it because Redis could not.
pub(super) struct Checked {
    pub decision: Decision,
    /// Answered by the fail mode because Redis could not.
    pub fallback: bool,
    /// Answered by (or on behalf of) a Redis store.
    pub remote: bool,
}

impl Store {
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) fn build(
        policy: &PolicyConfig,
        p: &Path,
        source: &Source<'_>,
        dir: &std::path::Path,
    ) -> Result<Store> {
        let cfg = &policy.store;
        let err = |field: &'static str, msg: String| source.error(&p.key(field), msg);
        match cfg.kind {
            StoreKind::Memory => Ok(Store::Memory),
            #[cfg(all(feature = "shm", unix))]
            StoreKind::SharedMemory => Self::shared(policy, p, source),
            #[cfg(not(all(feature = "shm", unix)))]
            StoreKind::SharedMemory => Err(err(
                "kind",
                "this build of floodgate has no shared-memory store (Unix, cargo feature `shm`)"
                    .into(),
            )),
            #[cfg(feature = "redis")]
            StoreKind::Redis => {
                let given = [
                    cfg.url.is_some(),
                    !cfg.cluster.is_empty(),
                    !cfg.sentinel.is_empty(),
                ];
                if given.iter().filter(|&&g| g).count() > 1 {
                    return Err(err(
                        "url",
                        "give one of url, cluster = [...] or sentinel = [...]".into(),
                    ));
                }
                if cfg.master_name.is_some() == cfg.sentinel.is_empty() {
                    return Err(err(
                        "master_name",
                        "sentinel = [...] and master_name go together".into(),
                    ));
                }
                let master_settings = cfg.master_user.is_some()
                    || cfg.master_password.is_some()
                    || cfg.master_db.is_some()
                    || cfg.master_tls;
                if master_settings && cfg.sentinel.is_empty() {
                    return Err(err(
                        "master_password",
                        "master_user, master_password, master_db and master_tls are for the master \
                         that sentinel = [...] names; with url, put them in the URL"
                            .into(),
                    ));
                }
                if cfg.master_user.is_some() && cfg.master_password.is_none() {
                    return Err(err(
                        "master_user",
                        "master_user needs master_password".into(),
                    ));
                }
                if cfg.master_db.is_some_and(|db| db < 0) {
                    return Err(err("master_db", "a database number is 0 or more".into()));
                }
                let builder = match (&cfg.url, &cfg.master_name) {
                    (Some(url), _) => crate::RedisStore::builder(url),
                    (None, Some(master)) => {
                        let mut b = crate::RedisStore::sentinel_builder(&cfg.sentinel, master)
                            .master_tls(cfg.master_tls)
                            .master_db(cfg.master_db.unwrap_or(0));
                        if let Some(password) = &cfg.master_password {
                            b = b.master_auth(cfg.master_user.as_deref(), password);
                        }
                        b
                    }
                    (None, None) if !cfg.cluster.is_empty() => {
                        crate::RedisStore::cluster_builder(&cfg.cluster)
                    }
                    (None, None) => {
                        return Err(err(
                            "url",
                            "kind = \"redis\" needs url = \"redis://host:port\" (or cluster = [...], or sentinel = [...] with master_name)"
                                .into(),
                        ));
                    }
                };
                if cfg.connect_timeout_ms == Some(0) || cfg.timeout_ms == Some(0) {
                    return Err(err("timeout_ms", "timeouts must be at least 1 ms".into()));
                }
                let mut builder = builder.check_on_build(cfg.check_on_start);
                if let Some(ca) = &cfg.ca_file {
                    let file = dir.join(ca);
                    let pem = std::fs::read(&file).map_err(|e| {
                        err("ca_file", format!("cannot read {}: {e}", file.display()))
                    })?;
                    builder = builder.ca_pem(pem);
                }
                if let Some(ms) = cfg.connect_timeout_ms {
                    builder = builder.connect_timeout(Duration::from_millis(ms));
                }
                if let Some(ms) = cfg.timeout_ms {
                    builder = builder.command_timeout(Duration::from_millis(ms));
                }
                if let Some(n) = cfg.pool_size {
                    builder = builder.pool_size(n);
                }
                // Unreachable at start-up is StoreUnavailable (what every binding
                // documents), not a policy error; a bad URL stays InvalidConfig.
                let store = builder.build().map_err(|e| match e {
                    crate::Error::StoreUnavailable { .. } => e,
                    other => err("url", other.to_string()),
                })?;
                Ok(Store::Redis {
                    store,
                    cfg: Box::new(cfg.clone()),
                })
            }
            #[cfg(not(feature = "redis"))]
            StoreKind::Redis => Err(err(
                "kind",
                "this build of floodgate has no Redis support (cargo feature `redis`)".into(),
            )),
        }
    }

    /// Opens the shared-memory table for every limiter the policy will build.
    /// The table is made for all of them at once (its fingerprint covers every
    /// rule's name and quotas), so the rules are read here before they are built;
    /// a quota that does not parse is left to the rule's own error.
    #[cfg(all(feature = "shm", unix))]
    fn shared(policy: &PolicyConfig, p: &Path, source: &Source<'_>) -> Result<Store> {
        use crate::store::shm::{Codec, Fnv, MAX_TABLE_QUOTAS, ShmTable, TableSpec};
        let err = |field: &'static str, msg: String| source.error(&p.key(field), msg);
        let cfg = &policy.store;
        let Some(path) = &cfg.path else {
            return Err(err(
                "path",
                "kind = \"shared_memory\" needs path = \"/dev/shm/<name>\"".into(),
            ));
        };
        let mut limiters: Vec<(String, Vec<crate::Quota>)> = Vec::new();
        for r in &policy.rules {
            let algorithm = r
                .algorithm
                .as_deref()
                .and_then(|a| a.parse::<crate::Algorithm>().ok())
                .unwrap_or(crate::Algorithm::Gcra);
            let calendar = super::calendar::Calendar::of_rule(r, true).ok().flatten();
            let parse = |qs: &[String]| -> Vec<crate::Quota> {
                qs.iter()
                    .filter_map(|q| match &calendar {
                        Some(c) => c.quota(q).ok(),
                        None => q
                            .parse::<crate::Quota>()
                            .ok()?
                            .with_algorithm(algorithm)
                            .ok(),
                    })
                    .collect()
            };
            match &r.tiers {
                Some(t) => limiters.extend(
                    t.quotas
                        .iter()
                        .map(|(tier, qs)| (format!("{}:{tier}", r.name), parse(qs))),
                ),
                None => limiters.push((r.name.clone(), parse(&r.quotas))),
            }
        }
        // Bans live in the table too: strikes (a limiter) and one ban slot per key.
        let ban = policy.ban.as_ref().and_then(|b| {
            let within = crate::quota::parse_duration(&b.within)?;
            let duration = crate::quota::parse_duration(&b.duration)?;
            let max = match &b.max_duration {
                Some(m) => crate::quota::parse_duration(m)?,
                None => duration,
            }
            .max(duration);
            let strikes = super::ban::shared_strikes_quota(b.after, within).ok()?;
            Some((strikes, duration, max, b.escalate))
        });
        if let Some((strikes, ..)) = &ban {
            limiters.push((BAN_STRIKES.into(), vec![*strikes]));
        }
        let mut codecs = Vec::new();
        let mut firsts = std::collections::HashMap::new();
        let mut fingerprint = Fnv::new().bytes(b"policy");
        for (name, quotas) in &limiters {
            firsts.insert(name.clone(), codecs.len());
            fingerprint = fingerprint.bytes(name.as_bytes()).u64(quotas.len() as u64);
            for q in quotas {
                fingerprint = fingerprint.quota(q);
                codecs.push(
                    Codec::new(q).map_err(|m| err("kind", format!("{}: {m}", plan_name(name))))?,
                );
            }
        }
        if let Some((_, duration, max, escalate)) = ban {
            let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
            firsts.insert(BANS.into(), codecs.len());
            codecs.push(Codec::Ban { max_ns });
            fingerprint = fingerprint
                .bytes(BANS.as_bytes())
                .u64(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
                .u64(max_ns)
                .u64(escalate.to_bits());
        }
        // Adaptive tightening counts each key's windows in the table too.
        for r in &policy.rules {
            let Some(a) = &r.adaptive else { continue };
            let Some(window) = crate::quota::parse_duration(&a.window) else {
                continue; // the rule's own error
            };
            let window = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
            let name = adaptive_name(&r.name);
            firsts.insert(name.clone(), codecs.len());
            codecs.push(Codec::Adaptive { window });
            fingerprint = fingerprint
                .bytes(name.as_bytes())
                .u64(window)
                .u64(a.threshold.to_bits())
                .u64(a.min_requests)
                .u64(a.factor);
        }
        // So do the places of rules with max_in_flight.
        for r in &policy.rules {
            let Some(max) = r.max_in_flight else { continue };
            let Some(ttl) =
                crate::quota::parse_duration(r.in_flight_ttl.as_deref().unwrap_or("60s"))
            else {
                continue; // the rule's own error
            };
            let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX).max(1);
            let name = in_flight_name(&r.name);
            firsts.insert(name.clone(), codecs.len());
            codecs.push(Codec::InFlight { ttl });
            fingerprint = fingerprint.bytes(name.as_bytes()).u64(max).u64(ttl);
        }
        if codecs.is_empty() {
            return Err(err(
                "kind",
                "the policy has no rule to keep in shared memory".into(),
            ));
        }
        if codecs.len() > MAX_TABLE_QUOTAS {
            return Err(err(
                "kind",
                format!(
                    "{} quotas in all; a shared-memory table holds at most {MAX_TABLE_QUOTAS}",
                    codecs.len()
                ),
            ));
        }
        let spec = TableSpec {
            slots: cfg.max_keys,
            codecs,
            fingerprint: fingerprint.finish(),
        };
        // Unusable files are StoreUnavailable / StoreMismatch (what every binding
        // documents); an out-of-range size is the policy's error.
        let table = ShmTable::open(path, &spec).map_err(|e| match e {
            crate::Error::InvalidOption { problem, .. } => err("max_keys", problem.into()),
            other => other,
        })?;
        Ok(Store::Shared { table, firsts })
    }

    /// Where `[ban]` keeps its state when the rules live in shared memory.
    pub(super) fn shared_bans(&self) -> Option<super::ban::SharedBans> {
        match self {
            #[cfg(all(feature = "shm", unix))]
            Store::Shared { table, firsts } => Some(super::ban::SharedBans {
                table: table.clone(),
                strikes_quota: *firsts.get(BAN_STRIKES)?,
                ban_quota: *firsts.get(BANS)?,
            }),
            _ => None,
        }
    }

    /// Where rule `rule`'s adaptive tightening keeps its counts when the rules
    /// live in shared memory.
    #[cfg_attr(not(all(feature = "shm", unix)), allow(unused_variables))]
    pub(super) fn shared_adaptive(&self, rule: &str) -> Option<super::ban::SharedAdaptive> {
        match self {
            #[cfg(all(feature = "shm", unix))]
            Store::Shared { table, firsts } => Some(super::ban::SharedAdaptive {
                table: table.clone(),
                quota: *firsts.get(&adaptive_name(rule))?,
            }),
            _ => None,
        }
    }

    /// Where rule `rule`'s places in flight are counted: in memory, in the
    /// shared-memory table, or in Redis (under the rule's prefix, with its
    /// fail mode).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) fn in_flight_backing(
        &self,
        rule: &str,
        fail_mode: Option<FailModeConfig>,
        max: u64,
        ttl: Duration,
    ) -> std::result::Result<super::lifecycle::Backing, String> {
        use super::lifecycle::Backing;
        match self {
            Store::Memory => Ok(Backing::Memory),
            #[cfg(all(feature = "shm", unix))]
            Store::Shared { table, firsts } => {
                Ok(Backing::Shared(super::lifecycle::SharedFlight {
                    table: table.clone(),
                    quota: *firsts
                        .get(&in_flight_name(rule))
                        .ok_or("the rule's places are not in the shared-memory table")?,
                }))
            }
            #[cfg(feature = "redis")]
            Store::Redis { store, cfg } => Ok(Backing::Redis(
                Box::new(crate::store::redis::RedisInFlight::new(
                    store.clone(),
                    &format!("{}:{rule}", cfg.prefix),
                    max,
                    ttl,
                )),
                fail_mode_of(fail_mode.unwrap_or(cfg.fail_mode)),
            )),
        }
    }

    /// Now on the shared-memory table's clock (the same in every process), if
    /// the rules live in one.
    #[inline]
    pub(super) fn shared_now(&self) -> Option<u64> {
        match self {
            #[cfg(all(feature = "shm", unix))]
            Store::Shared { table, .. } => Some(table.now_ns()),
            _ => None,
        }
    }

    /// A limiter for `quotas` of one rule (and tier), named `name` in Redis keys.
    /// The in-memory limiter is built first: it validates the quotas, and the Redis
    /// one uses it for the `local` fail mode.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) fn limiter(
        &self,
        memory: Limiter,
        name: &str,
        fail_mode: Option<FailModeConfig>,
        max_keys: usize,
        max_key_bytes: usize,
        settles: bool,
    ) -> std::result::Result<RuleLimiter, String> {
        match self {
            Store::Memory => {
                if fail_mode.is_some() {
                    return Err("fail_mode applies to [store] kind = \"redis\" only".into());
                }
                Ok(RuleLimiter::Memory(memory))
            }
            #[cfg(all(feature = "shm", unix))]
            Store::Shared { table, firsts } => {
                if fail_mode.is_some() {
                    return Err("fail_mode applies to [store] kind = \"redis\" only".into());
                }
                let first = firsts
                    .get(name)
                    .copied()
                    .ok_or_else(|| format!("limiter {name:?} is not in the shared-memory table"))?;
                let id = crate::store::shm::Fnv::new()
                    .bytes(name.as_bytes())
                    .finish();
                Ok(RuleLimiter::Memory(memory.into_shared(
                    table.clone(),
                    first,
                    id,
                )))
            }
            #[cfg(feature = "redis")]
            Store::Redis { store, cfg } => {
                let mode = fail_mode_of(fail_mode.unwrap_or(cfg.fail_mode));
                let mut b = store
                    .limiter()
                    .prefix(&format!("{}:{name}", cfg.prefix))
                    .fail_mode(mode)
                    .local_share(cfg.local_share)
                    .deny_cache(cfg.deny_cache && !settles)
                    .max_keys(max_keys)
                    .max_key_bytes(max_key_bytes);
                if cfg.lease > 0 {
                    b = b.lease(cfg.lease, Duration::from_millis(cfg.lease_ttl_ms));
                }
                for q in memory.quotas() {
                    b = b.quota(*q);
                }
                b.build()
                    .map(|l| RuleLimiter::Redis(Box::new(l)))
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Whether keys live in this process's memory (not shared memory, not Redis).
    pub(super) fn in_process(&self) -> bool {
        matches!(self, Store::Memory)
    }

    /// The Redis connections, for metrics.
    #[cfg(feature = "redis")]
    pub(super) fn redis(&self) -> Option<&crate::RedisStore> {
        match self {
            Store::Redis { store, .. } => Some(store),
            _ => None,
        }
    }
}

#[cfg(feature = "redis")]
fn fail_mode_of(mode: FailModeConfig) -> crate::FailMode {
    match mode {
        FailModeConfig::Open => crate::FailMode::Open,
        FailModeConfig::Closed => crate::FailMode::Closed,
        FailModeConfig::Local => crate::FailMode::Local,
    }
}

#[cfg(feature = "redis")]
impl Checked {
    /// A Redis limiter's answer.
    fn remote((decision, source): (crate::Decision, crate::DecisionSource)) -> Self {
        Checked {
            decision,
            fallback: source == crate::DecisionSource::Fallback,
            remote: true,
        }
    }
}

impl RuleLimiter {
    /// Checks at `now` (Unix time); a Redis limiter uses the server's clock unless
    /// `explicit` (a replay).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) fn check(
        &self,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> Result<Checked> {
        match self {
            RuleLimiter::Memory(l) => l.check_at(key, cost, now).map(|decision| Checked {
                decision,
                fallback: false,
                remote: false,
            }),
            #[cfg(feature = "redis")]
            RuleLimiter::Redis(l) => l
                .check_source(key, cost, explicit.then_some(now))
                .map(Checked::remote),
        }
    }

    /// [`check`](Self::check) for async callers: a Redis round trip on the
    /// multiplexed tokio connection (memory answers at once).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) async fn check_async(
        &self,
        key: &[u8],
        cost: u64,
        now: Duration,
        explicit: bool,
    ) -> Result<Checked> {
        #[cfg(feature = "redis")]
        if let RuleLimiter::Redis(l) = self {
            return l
                .check_source_async(key, cost, explicit.then_some(now))
                .await
                .map(Checked::remote);
        }
        self.check(key, cost, now, explicit)
    }

    /// A calendar rule's charge at `at` (memory: its calendar time; Redis:
    /// worked out from the server's clock with the windows around `at`).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) fn check_calendar(
        &self,
        key: &[u8],
        cost: u64,
        calendar: &super::calendar::Calendar,
        at: super::calendar::CalendarAt,
    ) -> Result<Checked> {
        #[cfg(feature = "redis")]
        if let RuleLimiter::Redis(l) = self {
            return l
                .check_calendar(key, cost, at.at, calendar.clock(&at))
                .map(Checked::remote);
        }
        self.check(key, cost, at.at, true)
    }

    /// [`check_calendar`](Self::check_calendar) for async callers.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) async fn check_calendar_async(
        &self,
        key: &[u8],
        cost: u64,
        calendar: &super::calendar::Calendar,
        at: super::calendar::CalendarAt,
    ) -> Result<Checked> {
        #[cfg(feature = "redis")]
        if let RuleLimiter::Redis(l) = self {
            return l
                .check_calendar_async(key, cost, at.at, calendar.clock(&at))
                .await
                .map(Checked::remote);
        }
        self.check(key, cost, at.at, true)
    }

    /// [`refund`](Self::refund) for async callers.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) async fn refund_async(&self, key: &[u8], cost: u64, now: Duration, explicit: bool) {
        #[cfg(feature = "redis")]
        if let RuleLimiter::Redis(l) = self {
            let _ = l.refund_async(key, cost, explicit.then_some(now)).await;
            return;
        }
        self.refund(key, cost, now, explicit);
    }

    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(super) fn refund(&self, key: &[u8], cost: u64, now: Duration, explicit: bool) {
        match self {
            RuleLimiter::Memory(l) => {
                let _ = l.refund_at(key, cost, now);
            }
            #[cfg(feature = "redis")]
            RuleLimiter::Redis(l) => {
                let _ = l.refund(key, cost, explicit.then_some(now));
            }
        }
    }

    pub(super) fn max_cost(&self) -> u64 {
        match self {
            RuleLimiter::Memory(l) => l.max_cost(),
            #[cfg(feature = "redis")]
            RuleLimiter::Redis(l) => l.max_cost(),
        }
    }

    pub(super) fn quotas(&self) -> &[Quota] {
        match self {
            RuleLimiter::Memory(l) => l.quotas(),
            #[cfg(feature = "redis")]
            RuleLimiter::Redis(l) => l.quotas(),
        }
    }
}
