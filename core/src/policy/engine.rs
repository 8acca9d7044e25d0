//! [`Engine`]: the handle front ends keep. It decides with its current
//! [`Policy`], which [`Engine::reload`] replaces atomically: a request sees the
//! old policy or the new one, never a mix (one `arc-swap` load per call, no
//! lock). A reload compiles and validates the new policy first, off the
//! request path; on any error the running policy stays. Rules whose limiting
//! is unchanged keep their counters exactly (the new policy shares their
//! limiters), and so do places in flight, bans, the store's connections or
//! shared table, and the event sink.

use std::collections::VecDeque;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use parking_lot::Mutex;

use super::lifecycle::{Settle, Settlement};
use super::output::PolicyCache;
use super::{Event, OwnedRequest, Policy, Request, Spec, Verdict, VerdictBuf};
use crate::error::{Error, Result};

/// Policies a reload replaced that verdicts may still settle against (their
/// charges and places): the last few. Older verdicts settle as if already
/// settled: their places expire with `in_flight_ttl`.
const RECENT: usize = 4;

/// The policy engine: `Send + Sync`, shared by every thread, called once per
/// request; [`reload`](Engine::reload) changes its policy without a restart.
pub struct Engine {
    /// Shared with the [`VerdictBuf`]s bound to this engine (their `PolicyCache`).
    current: Arc<ArcSwap<Policy>>,
    /// What it was made from (a file is read again by `reload`).
    spec: Mutex<Spec>,
    /// The policies reloads replaced, newest last, for settlements.
    recent: Mutex<VecDeque<Arc<Policy>>>,
    /// The request headers the first policy reads: front ends pass these, so a
    /// reload must read no others.
    request_headers: Vec<String>,
    /// Whether the first policy settles requests and may block: front ends
    /// decide at start whether to hook responses and where to run checks, so
    /// a reload may not turn either on.
    settles: bool,
    may_block: bool,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policy", &**self.current.load())
            .finish_non_exhaustive()
    }
}

/// What a reload did to each rule, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reload {
    /// Rules whose limiting is unchanged: their counters are kept exactly.
    pub kept: Vec<String>,
    /// Rules whose quotas (algorithm, tiers, fail mode or settlement) changed
    /// but not their key, on the in-memory store: each key's state is carried
    /// over to the new quotas (GCRA keeps the used fraction of its burst, a
    /// window the units used, judged against the new limit).
    pub carried: Vec<String>,
    /// Rules that start with fresh counters: their key or calendar changed, or
    /// their quotas changed on Redis (new keys) or shared memory.
    pub reset: Vec<String>,
    /// New rules.
    pub added: Vec<String>,
    /// Rules no longer in the policy: their memory is freed once no verdict
    /// still refers to them.
    pub removed: Vec<String>,
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "kept: {}\ncarried over: {}\nreset: {}\nadded: {}\nremoved: {}",
            list(&self.kept),
            list(&self.carried),
            list(&self.reset),
            list(&self.added),
            list(&self.removed)
        )
    }
}

impl Reload {
    /// What replacing `old` by `new` keeps, resets, adds and removes.
    fn between(old: &Policy, new: &Policy) -> Self {
        let mut r = Reload::default();
        for rule in new.rules.iter() {
            match old.rules.iter().find(|o| o.name == rule.name) {
                Some(o) if super::build::same_limiting(&o.config, &rule.config) => {
                    r.kept.push(rule.name.to_string());
                }
                Some(o)
                    if super::build::carries_over(
                        &o.config,
                        &rule.config,
                        new.store.in_process(),
                    ) =>
                {
                    r.carried.push(rule.name.to_string());
                }
                Some(_) => r.reset.push(rule.name.to_string()),
                None => r.added.push(rule.name.to_string()),
            }
        }
        for o in old.rules.iter() {
            if !new.rules.iter().any(|n| n.name == o.name) {
                r.removed.push(o.name.to_string());
            }
        }
        r
    }
}

impl Engine {
    fn made(spec: Spec) -> Result<Self> {
        let policy = Policy::compile(&spec, None)?;
        Ok(Engine {
            request_headers: policy.request_headers.clone(),
            settles: policy.settles(),
            may_block: policy.may_block(),
            current: Arc::new(ArcSwap::from_pointee(policy)),
            spec: Mutex::new(spec),
            recent: Mutex::new(VecDeque::new()),
            reloading: Mutex::new(()),
        })
    }

    /// An engine from a TOML policy. Relative key files are read from the current directory.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and line of the first problem.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::made(Spec::Toml(text.to_string()))
    }

    /// An engine from the same policy as JSON (what the bindings pass for a dict).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field of the first problem.
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::made(Spec::Json(text.to_string()))
    }

    /// An engine from a policy file: JSON if it ends in `.json`, TOML otherwise.
    /// Relative key files are read from the policy file's directory.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the file cannot be read or is invalid.
    pub fn from_path(path: impl AsRef<FsPath>) -> Result<Self> {
        Self::made(Spec::Path(path.as_ref().to_path_buf()))
    }

    /// Reads the policy file the engine was made from again and switches to it
    /// (see [`reload_with`](Self::reload_with)). For an engine made from text,
    /// the same text is compiled again (nothing changes).
    ///
    /// # Errors
    /// As [`reload_with`](Self::reload_with).
    pub fn reload(&self) -> Result<Reload> {
        let spec = self.spec.lock().clone();
        self.swap(spec)
    }

    /// Switches to the TOML policy `text`.
    ///
    /// # Errors
    /// As [`reload_with`](Self::reload_with).
    pub fn reload_toml_str(&self, text: &str) -> Result<Reload> {
        self.swap(Spec::Toml(text.to_string()))
    }

    /// Switches to the JSON policy `text`.
    ///
    /// # Errors
    /// As [`reload_with`](Self::reload_with).
    pub fn reload_json_str(&self, text: &str) -> Result<Reload> {
        self.swap(Spec::Json(text.to_string()))
    }

    /// Switches to the policy in file `path` (which later `reload()`s read).
    ///
    /// The new policy is compiled and validated first, off the request path
    /// (requests go on deciding with the running policy meanwhile); on any
    /// error the running policy stays and the error names the problem. Then
    /// it replaces the running one atomically. Rules whose name, key and
    /// quotas (and algorithm, tiers, fail mode, settlement) are unchanged keep
    /// their counters exactly; a rule whose limiting changed starts afresh;
    /// places in flight, bans (with `[ban]` unchanged), the store's
    /// connections or shared table (with `[store]` and `max_keys` unchanged)
    /// and the event sink carry over. Verdicts decided before a reload settle
    /// against the policy that decided them.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid policy, one that reads request
    /// headers the first policy did not (front ends pass only those), or, on
    /// the shared-memory store, one that adds a rule or changes a rule's
    /// limiting (the table's layout is fixed); [`Error::StoreUnavailable`] for
    /// a new store that cannot be reached with `check_on_start`.
    pub fn reload_with(&self, path: impl AsRef<FsPath>) -> Result<Reload> {
        self.swap(Spec::Path(path.as_ref().to_path_buf()))
    }

    fn swap(&self, spec: Spec) -> Result<Reload> {
        let _one = self.reloading.lock();
        let old = self.current.load_full();
        let new = Policy::compile(&spec, Some(&old))?;
        if let Some(h) = new
            .request_headers
            .iter()
            .find(|h| !self.request_headers.contains(h))
        {
            return Err(Error::InvalidConfig {
                location: "policy".into(),
                line: None,
                message: format!(
                    "the new policy reads request header {h:?}, which the running one does \
                     not (front ends pass only the headers the first policy reads): restart \
                     to add it"
                )
                .into(),
            });
        }
        let refuse = |what: &str| Error::InvalidConfig {
            location: "policy".into(),
            line: None,
            message: format!(
                "the new policy {what}, which the running one does not (front ends chose \
                 how to call the engine at start): restart to change it"
            )
            .into(),
        };
        if new.settles() && !self.settles {
            return Err(refuse(
                "settles requests (count, cost_from or max_in_flight)",
            ));
        }
        if new.may_block() && !self.may_block {
            return Err(refuse("has a Redis store"));
        }
        let report = Reload::between(&old, &new);
        // Just before the swap: the counts the old policy makes meanwhile are
        // the few of a pointer store's time.
        new.metrics.continue_from(&old.metrics);
        self.current.store(Arc::new(new));
        *self.spec.lock() = spec;
        let mut recent = self.recent.lock();
        recent.push_back(old);
        while recent.len() > RECENT {
            recent.pop_front();
        }
        Ok(report)
    }

    /// The policy that decided `settlement`: the current one or a recent one.
    fn issuer(&self, settlement: Option<&Settlement>) -> Arc<Policy> {
        let current = self.current.load_full();
        let Some(s) = settlement else {
            return current;
        };
        if s.engine_id() == current.id {
            return current;
        }
        self.recent
            .lock()
            .iter()
            .find(|p| p.id == s.engine_id())
            .cloned()
            .unwrap_or(current)
    }

    /// Registers the function that receives [`Event`]s (replacing any earlier
    /// one; it carries over reloads).
    pub fn set_event_sink(&self, sink: impl Fn(&Event<'_>) + Send + Sync + 'static) {
        self.current.load().set_event_sink(sink);
    }

    /// Counters in the Prometheus text exposition format. A reload carries
    /// them on (a rule's counters by its name).
    pub fn metrics(&self) -> String {
        self.current.load().metrics()
    }

    /// The effective rules, as `floodgate check-config` prints them.
    pub fn describe(&self) -> String {
        self.current.load().describe()
    }

    /// Now, as Unix time.
    pub fn now(&self) -> Duration {
        self.current.load().now()
    }

    /// Decides a request now.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for an empty or non-alphabetic method. A denial is
    /// not an error.
    pub fn check_request(&self, req: &Request<'_>) -> Result<Verdict> {
        self.current.load().check_request(req)
    }

    /// Decides a request into `out`, reusing its strings: with one buffer kept
    /// per thread or handle, an allowed request allocates nothing (the common
    /// paths: anonymous per IP, API key, a cached token), nor does a flood's
    /// denial (a 429, a ban's answer, their event to a sink that only counts
    /// it). `now` as
    /// [`check_request_at`](Engine::check_request_at), or the engine's clock.
    /// On an error, `out` holds an empty allowed verdict with reason `no_rule`.
    ///
    /// A buffer from [`verdict_buf`](Engine::verdict_buf) is bound to this
    /// engine: it keeps the engine's current policy from one check to the
    /// next and only reads whether a reload replaced it (a reload still takes
    /// effect at the next check), so the check makes no atomic
    /// read-modify-write to find its policy. Any other buffer (or one bound
    /// to another engine) loads the policy each time (`ArcSwap::load`) and
    /// keeps nothing of it.
    ///
    /// # Errors
    /// As [`Engine::check_request`].
    pub fn check_request_into(
        &self,
        req: &Request<'_>,
        now: Option<Duration>,
        out: &mut VerdictBuf,
    ) -> Result<()> {
        // Taken out of `out` (a move) while `out` is filled, then put back.
        match out.policy.take() {
            Some(mut cache) if std::ptr::eq(cache.0.arc_swap(), &*self.current) => {
                let decided = cache.0.load().check_request_into(req, now, out);
                out.policy = Some(cache);
                decided
            }
            other => {
                out.policy = other;
                self.current.load().check_request_into(req, now, out)
            }
        }
    }

    /// A [`VerdictBuf`] bound to this engine, for a front end that keeps one
    /// beside the engine for as long as the engine (a binding's handle): it
    /// holds the engine's current policy between checks (see
    /// [`check_request_into`](Engine::check_request_into)), and so keeps that
    /// policy, its tables and its Redis connections, alive until the buffer
    /// is dropped, even past the engine's drop. Per-thread buffers shared by
    /// engines, which outlive them, use [`VerdictBuf::new`].
    pub fn verdict_buf(&self) -> VerdictBuf {
        VerdictBuf::bound(PolicyCache(Cache::new(Arc::clone(&self.current))))
    }

    /// Decides a request at `now` (Unix time: JWT `exp`/`nbf` are checked against it).
    /// Rules on a Redis store are then also decided at `now`, not the server's clock.
    ///
    /// # Errors
    /// As [`Engine::check_request`].
    pub fn check_request_at(&self, req: &Request<'_>, now: Duration) -> Result<Verdict> {
        self.current.load().check_request_at(req, now)
    }

    /// Decides a request now without holding a thread while Redis answers: a
    /// rule on a Redis store makes its round trips (places in flight, charges,
    /// refunds) on the store's multiplexed tokio connection, pipelined with
    /// every other task's, each within the store's deadline. The same decision
    /// procedure as [`check_request`](Engine::check_request), so the same
    /// verdict; on memory and shared memory it is ready at once. Await it on a
    /// tokio runtime with time enabled when a rule is on Redis (the Python and
    /// Node bindings use the core's background runtime).
    ///
    /// # Errors
    /// As [`Engine::check_request`].
    pub async fn check_request_async(&self, req: &Request<'_>) -> Result<Verdict> {
        let policy = self.current.load_full();
        policy.check_request_async(req).await
    }

    /// Decides an [`OwnedRequest`] now, or at `now` (Unix time) as
    /// [`check_request_at`](Engine::check_request_at).
    ///
    /// # Errors
    /// As [`check_request`](Engine::check_request).
    pub fn check_owned(&self, request: &OwnedRequest, now: Option<Duration>) -> Result<Verdict> {
        self.current.load().check_owned(request, now)
    }

    /// Decides an [`OwnedRequest`] now, as
    /// [`check_request_async`](Engine::check_request_async): for a front end
    /// that hands the request to a tokio task.
    ///
    /// # Errors
    /// As [`check_request`](Engine::check_request).
    pub async fn check_owned_async(&self, request: &OwnedRequest) -> Result<Verdict> {
        let policy = self.current.load_full();
        policy.check_owned_async(request).await
    }

    /// Whether a check may wait on the network (a rule on a Redis store): front
    /// ends then run checks off the event loop (Python releases the GIL, Node and
    /// asyncio use their async paths). In memory, a check never blocks.
    pub fn may_block(&self) -> bool {
        self.current.load().may_block()
    }

    /// Warnings about the policy, for `floodgate check-config`: things that are
    /// valid but probably not meant (a request that no rule limits, a `/*` that
    /// limits one path segment).
    pub fn warnings(&self) -> Vec<String> {
        self.current.load().warnings().to_vec()
    }

    /// Replaces the engine's random seeds (for key hashing and the `pk` partition
    /// keys in headers) with ones derived from `seed`, so replays print the same
    /// headers every time. For `floodgate simulate` and tests: predictable seeds
    /// make `pk` values guessable, so do not use it in production.
    #[must_use]
    pub fn with_fixed_seed(self, seed: u64) -> Self {
        // Before the engine is handed out no buffer holds its `ArcSwap`.
        let current = Arc::try_unwrap(self.current)
            .map_or_else(|shared| shared.load_full(), ArcSwap::into_inner);
        let policy = match Arc::try_unwrap(current) {
            Ok(p) => p.with_fixed_seed(seed),
            // Not shared before the engine is handed out: compiled again.
            Err(shared) => {
                let spec = self.spec.lock().clone();
                match Policy::compile(&spec, Some(&shared)) {
                    Ok(p) => p.with_fixed_seed(seed),
                    Err(_) => {
                        return Self {
                            current: Arc::new(ArcSwap::new(shared)),
                            ..self
                        };
                    }
                }
            }
        };
        Self {
            current: Arc::new(ArcSwap::from_pointee(policy)),
            ..self
        }
    }

    /// The request headers the policy reads, lower case: the API-key header,
    /// the token's header, `unless_header`s and `header:` key parts. A front end
    /// passes only these (the rest cannot change a verdict), so it converts a
    /// few strings per request instead of every header. Fixed for the engine's
    /// life: a reload may not read others.
    pub fn request_headers(&self) -> &[String] {
        &self.request_headers
    }

    /// Whether a rule that `method` and `path` meet keys on a field of the
    /// request body (`key = "body:username"`): a front end reads the body
    /// (at most [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES), else 413) and
    /// passes it as [`Request::body`](super::Request::body) for these
    /// requests only. False at once for a policy without such rules.
    pub fn reads_body(&self, method: &str, path: &str) -> bool {
        self.current.load().reads_body(method, path)
    }

    /// Whether the policy reads header `name` (any case).
    pub fn reads_header(&self, name: &str) -> bool {
        self.request_headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Settles an admitted request once its response is known: gives back the
    /// charge of rules that do not count `outcome.status` (`count`), adjusts
    /// rules with `cost_from = "response"` to `outcome.cost`, and frees the
    /// request's places in flight. A verdict without a settlement (no such rule
    /// matched, or it was denied) has nothing to settle: `Ok`. A verdict decided
    /// before a reload settles against the policy that decided it.
    ///
    /// # Errors
    /// [`Error::AlreadySettled`] the second time (nothing is given back twice);
    /// [`Error::InvalidRequest`] for a status outside 100-599 or a verdict of
    /// another engine.
    pub fn settle(&self, verdict: &Verdict, outcome: Settle) -> Result<()> {
        self.settle_settlement(verdict.settlement.as_ref(), outcome, None)
    }

    /// [`settle`](Self::settle) at an explicit time (Unix time, as
    /// [`check_request_at`](Self::check_request_at)), for replay and tests.
    ///
    /// # Errors
    /// As [`settle`](Self::settle).
    pub fn settle_at(&self, verdict: &Verdict, outcome: Settle, now: Duration) -> Result<()> {
        self.settle_settlement(verdict.settlement.as_ref(), outcome, Some(now))
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
    ) -> Result<()> {
        self.issuer(settlement)
            .settle_settlement(settlement, outcome, now)
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
    ) -> Result<()> {
        let policy = self.issuer(settlement);
        policy.settle_settlement_async(settlement, outcome).await
    }

    /// Whether any rule settles (`count`, `cost_from = "response"`,
    /// `max_in_flight`): middleware that must hook the end of every response
    /// for it (Fastify's `onResponse`) skip the hook otherwise.
    pub fn settles(&self) -> bool {
        self.current.load().settles()
    }

    /// Places in flight held by `key` on rule `rule` now (0 for a rule without
    /// `max_in_flight`), for metrics and tests.
    pub fn in_flight(&self, rule: &str, key: &[u8]) -> u64 {
        self.current.load().in_flight(rule, key)
    }
}
