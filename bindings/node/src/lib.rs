//! The napi-rs binding behind the `floodgate` npm package. Thin: the core
//! decides; this file converts options, results and errors. Engines are
//! immutable and `Sync`, so JS objects hold them in an `Arc` without a lock.
#![allow(clippy::needless_pass_by_value)] // napi passes owned values
#![allow(missing_debug_implementations)] // JS-facing types

use std::sync::Arc;
use std::time::Duration;

use floodgate::policy::{
    Engine as CoreEngine, Event, EventSummary, LogLevel, OwnedRequest, Verdict as CoreVerdict,
};
use floodgate::{
    Algorithm, Decision as CoreDecision, ErrorKind, FailMode, Limiter as CoreLimiter, Quota,
    RedisLimiter as CoreRedis,
};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

mod fast;
mod promise;
mod request;

use promise::Done;

/// A promise that `go` settles through its [`promise::Reply`] (see `promise.rs`).
fn promised<'env>(
    env: &'env Env,
    go: impl FnOnce(&'static tokio::runtime::Runtime, bool, promise::Reply),
) -> Result<Unknown<'env>> {
    let p = promise::start(env.raw(), go).map_err(|m| napi::Error::from_reason(m.to_string()))?;
    // SAFETY: `p` is a promise just created in this environment.
    #[allow(unsafe_code)]
    unsafe {
        Unknown::from_napi_value(env.raw(), p)
    }
}

/// Decides `request` on the background runtime and settles the promise with
/// `wrap` of the verdict: with the core's async engine (no thread waits for
/// Redis), or, for a replay at an explicit time, on a blocking thread.
fn decide_async<'env>(
    env: &'env Env,
    engine: Arc<CoreEngine>,
    request: Owned,
    wrap: fn(floodgate::Result<CoreVerdict>) -> Done,
) -> Result<Unknown<'env>> {
    promised(env, move |rt, _, reply| {
        if request.now.is_some() {
            rt.spawn_blocking(move || reply.send(wrap(decide(&engine, &request))));
        } else {
            rt.spawn(
                async move { reply.send(wrap(engine.check_owned_async(&request.request).await)) },
            );
        }
    })
}

/// `ERR_FG_<CODE>` for a core error, the same stable code as Rust's
/// `ErrorKind::code()` and C's `FG_RESULT_<CODE>`.
fn code_of(kind: ErrorKind) -> String {
    format!("ERR_FG_{}", kind.code().to_uppercase())
}

/// Why a call failed, before it becomes a JS error.
pub enum Failure {
    /// A core error: `err.code = 'ERR_FG_...'` and the error's fields.
    Core(floodgate::Error),
    /// A value of the wrong type or range for the binding itself:
    /// `ERR_FG_INVALID_ARGUMENT`.
    Invalid(String),
    /// Node-API itself failed (out of memory, an environment going away):
    /// `ERR_FG_INTERNAL`.
    Internal(String),
}

impl From<floodgate::Error> for Failure {
    fn from(e: floodgate::Error) -> Self {
        Failure::Core(e)
    }
}

/// A field of a thrown error.
enum Field {
    Num(f64),
    Text(String),
}

impl Failure {
    fn code(&self) -> String {
        match self {
            Failure::Core(e) => code_of(e.kind()),
            Failure::Invalid(_) => "ERR_FG_INVALID_ARGUMENT".into(),
            Failure::Internal(_) => "ERR_FG_INTERNAL".into(),
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Core(e) => e.to_string(),
            Failure::Invalid(m) | Failure::Internal(m) => m.clone(),
        }
    }

    /// The structured fields of the error (the core's `Error::fields`), beside
    /// `code` and `message`.
    fn fields(&self) -> Vec<(&'static str, Field)> {
        let Failure::Core(e) = self else {
            return Vec::new();
        };
        e.fields()
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    floodgate::ErrorField::Number(v) => Field::Num(v as f64),
                    floodgate::ErrorField::Text(v) => Field::Text(v),
                };
                (name, value)
            })
            .collect()
    }

    /// The JS `Error`: `err.code`, `err.message` and the fields.
    fn object<'e>(&self, env: &'e Env) -> Result<Object<'e>> {
        let mut obj = env.create_error(napi::Error::new(Status::GenericFailure, self.message()))?;
        obj.set_named_property("code", self.code())?;
        for (name, value) in self.fields() {
            match value {
                Field::Num(v) => obj.set_named_property(name, v)?,
                Field::Text(v) => obj.set_named_property(name, v)?,
            }
        }
        Ok(obj)
    }

    /// As a napi error that throws (or rejects with) that object.
    fn into_js(self, env: &Env) -> napi::Error {
        match self.object(env).and_then(|o| o.into_unknown(env)) {
            Ok(v) => napi::Error::from(v),
            Err(_) => napi::Error::new(Status::GenericFailure, self.message()),
        }
    }
}

/// An `ERR_FG_INVALID_ARGUMENT` failure (out of line: the raw checks' error
/// paths stay off the lines their common path runs, see `request.rs`).
#[cold]
#[inline(never)]
fn invalid(what: &str) -> Failure {
    Failure::Invalid(what.to_string())
}

/// Registers the raw settlement functions (see `request.rs`) beside the
/// generated exports. (The raw checks are bound to their handles: `handle()`.)
#[napi(module_exports)]
pub fn init(exports: Object<'_>, env: Env) -> Result<()> {
    request::register(env.raw(), exports.raw())
}

/// Whether `address` is where a reverse proxy usually sits (loopback,
/// private, link-local, carrier-grade NAT: the core's list, which every front
/// end's untrusted-proxy warning uses); false for text that is no address.
#[napi]
pub fn is_proxy_address(address: String) -> bool {
    address
        .parse()
        .is_ok_and(floodgate::policy::is_proxy_address)
}

/// Every stable error code, as JS sees it in `err.code`.
#[napi]
pub fn error_codes() -> Vec<String> {
    ErrorKind::ALL.iter().map(|k| code_of(*k)).collect()
}

/// The answer to a key check.
#[napi(object)]
pub struct Decision {
    /// Let the request through.
    pub allowed: bool,
    /// The deciding quota's limit (its burst).
    pub limit: f64,
    /// Units left of it.
    pub remaining: f64,
    /// Milliseconds until a retry can be allowed (0 when allowed).
    pub retry_after_ms: f64,
    /// Milliseconds until the quota is full again.
    pub reset_after_ms: f64,
    /// Index of the deciding quota.
    pub quota: u32,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl From<CoreDecision> for Decision {
    fn from(d: CoreDecision) -> Self {
        let [limit, remaining, retry_after_ms, reset_after_ms, _] = numbers(&d);
        Decision {
            allowed: d.allowed,
            limit,
            remaining,
            retry_after_ms,
            reset_after_ms,
            quota: u32::try_from(d.quota).unwrap_or(u32::MAX),
        }
    }
}

/// Options of a `Limiter` / `RedisLimiter`.
#[napi(object)]
pub struct LimiterOptions {
    /// A quota like `'100/minute'` or `'10/s burst 20'`, or several.
    pub quota: Either<String, Vec<String>>,
    /// Burst for every quota (default: the rate).
    pub burst: Option<f64>,
    /// `gcra` (default), `sliding_log`, `sliding_window` or `fixed_window`.
    pub algorithm: Option<String>,
    /// Most keys held in memory (default 1,000,000).
    pub max_keys: Option<u32>,
    /// Longest key, in bytes (default 256).
    pub max_key_bytes: Option<u32>,
    /// Keep the state in a shared-memory table at this path (e.g.
    /// `/dev/shm/myapp`): one exact limit across every process of the machine
    /// that opens it (Node `cluster` workers, PM2). `Limiter` only.
    pub shared_memory: Option<String>,
}

fn quotas(o: &LimiterOptions) -> std::result::Result<Vec<Quota>, Failure> {
    let texts = match &o.quota {
        Either::A(s) => vec![s.clone()],
        Either::B(v) => v.clone(),
    };
    let alg: Algorithm = o
        .algorithm
        .as_deref()
        .unwrap_or("gcra")
        .parse()
        .map_err(Failure::from)?;
    texts
        .iter()
        .map(|t| {
            let mut q: Quota = t.parse().map_err(Failure::from)?;
            if let Some(b) = o.burst {
                q = q.with_burst(count("burst", b)?).map_err(Failure::from)?;
            }
            q.with_algorithm(alg).map_err(Failure::from)
        })
        .collect()
}

/// A whole, non-negative number from JS (rejects NaN, Infinity, fractions).
fn count(what: &str, n: f64) -> std::result::Result<u64, Failure> {
    if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_991.0 {
        Ok(n as u64)
    } else {
        Err(invalid(&format!(
            "{what} must be a whole number >= 0, not {n}"
        )))
    }
}

fn cost(c: Option<f64>) -> std::result::Result<u64, Failure> {
    match c {
        None => Ok(1),
        Some(c) => floodgate::Error::cost_from_f64(c).map_err(Failure::from),
    }
}

fn time(now_ms: Option<f64>) -> std::result::Result<Option<Duration>, Failure> {
    match now_ms {
        None => Ok(None),
        Some(t) => match Duration::try_from_secs_f64(t / 1000.0) {
            Ok(d) => Ok(Some(d)),
            Err(_) => Err(invalid(&format!(
                "nowMs must be a finite number of milliseconds >= 0, not {t}"
            ))),
        },
    }
}

fn key_bytes(key: &Either<String, Buffer>) -> &[u8] {
    match key {
        Either::A(s) => s.as_bytes(),
        Either::B(b) => b.as_ref(),
    }
}

/// The native half of `Limiter` (floodgate.js), which users construct: it writes
/// a decision into a caller's `Float64Array` instead of creating an object, which
/// would cost more than the check itself.
#[napi(js_name = "NativeLimiter")]
pub struct Limiter {
    inner: Arc<CoreLimiter>,
}

/// How many numbers a handle's `out` view holds: `[limit, remaining,
/// retryAfterMs, resetAfterMs, quota]`.
#[napi]
pub const DECISION_FIELDS: u32 = 5;

/// A decision's numbers, in the order of the `out` view of a handle.
fn numbers(d: &CoreDecision) -> [f64; DECISION_FIELDS as usize] {
    [
        d.limit as f64,
        d.remaining as f64,
        ms(d.retry_after),
        ms(d.reset_after),
        d.quota as f64,
    ]
}

#[napi]
impl Limiter {
    #[napi(constructor)]
    pub fn new(env: Env, options: LimiterOptions) -> Result<Self> {
        let build = || -> std::result::Result<Self, Failure> {
            let mut b = CoreLimiter::builder().quotas(quotas(&options)?);
            if let Some(n) = options.max_keys {
                b = b.max_keys(n as usize);
            }
            if let Some(n) = options.max_key_bytes {
                b = b.max_key_bytes(n as usize);
            }
            if let Some(path) = &options.shared_memory {
                b = b.shared_memory(path);
            }
            Ok(Limiter {
                inner: Arc::new(b.build()?),
            })
        };
        build().map_err(|f| f.into_js(&env))
    }

    /// `[undefined, out, check]`: `check(key, cost, nowMs?)` is the hot path
    /// (`fast.rs`): it returns whether the check is allowed and writes the
    /// decision's numbers into `out`, a Float64Array of `DECISION_FIELDS`. Both
    /// keep the limiter alive. Used by `Limiter` in floodgate.js. (The first
    /// slot is the engines' handle, which their settlement functions take;
    /// nothing takes a limiter's.)
    #[napi(
        ts_return_type = "[unknown, Float64Array, (key: string | Buffer, cost: number, nowMs?: number) => boolean]"
    )]
    pub fn handle(&self, env: Env) -> Result<Unknown<'_>> {
        let raw = fast::handle(env.raw(), self.inner.clone())?;
        // SAFETY: `raw` is a value just created in this environment.
        #[allow(unsafe_code)]
        unsafe {
            Unknown::from_napi_value(env.raw(), raw)
        }
    }

    /// The shared-memory table's path, or null for the in-process store.
    #[napi(getter)]
    pub fn shared_memory(&self) -> Option<String> {
        self.inner
            .shared_memory_path()
            .map(|p| p.display().to_string())
    }

    /// Forgets `key`; true if it was held.
    #[napi]
    pub fn reset(&self, env: Env, key: Either<String, Buffer>) -> Result<bool> {
        self.inner
            .reset(key_bytes(&key))
            .map_err(|e| Failure::from(e).into_js(&env))
    }

    /// Keys held now (counts every shard: not for the hot path).
    #[napi(getter)]
    pub fn size(&self) -> u32 {
        u32::try_from(self.inner.len()).unwrap_or(u32::MAX)
    }
}

/// Options of a `RedisLimiter`.
#[napi(object)]
pub struct RedisOptions {
    /// `redis://[:password@]host:port/db`.
    pub url: String,
    /// A quota like `'100/minute'`, or several.
    pub quota: Either<String, Vec<String>>,
    pub burst: Option<f64>,
    pub algorithm: Option<String>,
    /// `open`, `closed` or `local` (default).
    pub fail_mode: Option<String>,
    /// The deadline of a whole check in ms (default 50). Connecting (at
    /// construction, then in the background) has its own timeout, 1 s.
    pub timeout_ms: Option<u32>,
    /// Key prefix (default `fg`).
    pub prefix: Option<String>,
}

/// A limiter on Redis, shared by every process: `checkAsync` never blocks the
/// event loop.
#[napi]
pub struct RedisLimiter {
    inner: Arc<CoreRedis>,
}

#[napi]
impl RedisLimiter {
    /// Connects (blocking, at most the timeout) and checks that Redis answers.
    #[napi(constructor)]
    pub fn new(env: Env, options: RedisOptions) -> Result<Self> {
        Self::build(options).map_err(|f| f.into_js(&env))
    }

    /// Checks on Redis; resolves to a Decision. The round trip runs on a tokio
    /// worker over one multiplexed connection, so concurrent checks are
    /// pipelined and the event loop never waits.
    #[napi(ts_return_type = "Promise<Decision>")]
    pub fn check_async<'env>(
        &self,
        env: &'env Env,
        key: Either<String, Buffer>,
        cost: Option<f64>,
    ) -> Result<Unknown<'env>> {
        let cost = self::cost(cost).map_err(|f| f.into_js(env))?;
        let (limiter, key) = (self.inner.clone(), key_bytes(&key).to_vec());
        promised(env, |rt, alone, reply| {
            if alone {
                // Nothing else in flight: a blocking round trip on a pooled
                // connection answers sooner than the multiplexed connection's
                // task hand-offs.
                rt.spawn_blocking(move || reply.send(Done::Decision(limiter.check(&key, cost))));
            } else {
                rt.spawn(async move {
                    reply.send(Done::Decision(limiter.check_async(&key, cost).await))
                });
            }
        })
    }

    /// Checks answered by the fail mode so far.
    #[napi(getter)]
    pub fn fallbacks(&self) -> f64 {
        self.inner.fallbacks() as f64
    }
}

impl RedisLimiter {
    fn build(options: RedisOptions) -> std::result::Result<Self, Failure> {
        let lo = LimiterOptions {
            quota: options.quota,
            burst: options.burst,
            algorithm: options.algorithm,
            max_keys: None,
            max_key_bytes: None,
            shared_memory: None,
        };
        let t = options
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms.max(1))));
        let mode: FailMode = options.fail_mode.as_deref().unwrap_or("local").parse()?;
        let mut b = CoreRedis::builder(&options.url).timeouts(t).fail_mode(mode);
        if let Some(p) = &options.prefix {
            b = b.prefix(p);
        }
        for q in quotas(&lo)? {
            b = b.quota(q);
        }
        Ok(RedisLimiter {
            inner: Arc::new(b.build()?),
        })
    }
}

impl Engine {
    fn made(env: &Env, engine: floodgate::Result<CoreEngine>) -> Result<Self> {
        let engine = Engine {
            inner: Arc::new(engine.map_err(|e| Failure::from(e).into_js(env))?),
            dropped_events: Arc::default(),
        };
        // The default log lines (see `setDefaultLog`), if this environment
        // has a function for them.
        if let Some(DefaultLog(Some(f))) = env.get_instance_data::<DefaultLog>()? {
            let callback = f
                .borrow_back(env)?
                .build_threadsafe_function::<LogLine>()
                .weak::<true>()
                .max_queue_size::<LOG_QUEUE>()
                .build()?;
            engine.log_to(callback, Duration::from_secs(SUMMARY_SECS));
        }
        Ok(engine)
    }

    /// Installs the core's default logging policy (see `logSummaries`).
    fn log_to(&self, callback: LogCallback, interval: Duration) {
        let summary = EventSummary::new(interval);
        let dropped = self.dropped_events.clone();
        let send = move |level: LogLevel, kind: &str, line: String| {
            let line = LogLine {
                level: level_name(level).to_string(),
                kind: kind.to_string(),
                line,
            };
            if callback.call(line, ThreadsafeFunctionCallMode::NonBlocking) != Status::Ok {
                // Relaxed: a statistics counter.
                dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        self.inner.set_event_sink(move |e: &Event| {
            if let Some(s) = summary.record(e) {
                send(s.level(), "summary", s.to_string());
            }
            if e.kind.is_state_change() {
                let rule = e.rule.as_deref().unwrap_or("-");
                let line = format!("floodgate: {} (rule {rule})", e.kind.code());
                send(e.kind.log_level(), e.kind.code(), line);
            }
        });
    }
}

/// A request to decide.
#[napi(object)]
pub struct RequestInit {
    pub method: String,
    pub path: String,
    /// The client's address: the socket peer, or what a trusted proxy reported.
    pub client_ip: Option<String>,
    /// Request headers: an object (`req.headers`); array values are joined.
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// Unix time in ms replacing the clock (replays and tests).
    pub now_ms: Option<f64>,
    /// The request body as text, for rules keyed by a body field (`key =
    /// "body:username"`; `engine.readsBody` says when): the JSON or form the
    /// client sent, or the JSON of what a body parser made of it.
    pub body: Option<String>,
}

/// The answer to a request.
#[napi(object)]
pub struct Verdict {
    pub allowed: bool,
    /// 200, 429, 403 or 401.
    pub status: u32,
    /// Milliseconds the client must wait (0 unless 429 or banned).
    pub retry_after_ms: f64,
    /// Response headers to set.
    pub headers: std::collections::HashMap<String, String>,
    /// The deciding rule.
    pub rule: Option<String>,
    /// The deciding rule's key (may contain a user id).
    pub identity: Option<String>,
    /// allowed, no_rule, allow_listed, rate_limited, banned, deny_listed, unauthorized,
    /// concurrency.
    pub reason: String,
    pub limit: f64,
    pub remaining: f64,
    pub authenticated: bool,
    /// Milliseconds until the deciding quota is full again.
    pub reset_after_ms: f64,
    /// Why a token was refused, if one was (`bad_signature`, `expired`, ...).
    pub token_problem: Option<String>,
    /// The JSON body to answer a denial with (empty when allowed), built by the
    /// core so every front end sends the same one.
    pub body: String,
}

impl From<CoreVerdict> for Verdict {
    fn from(v: CoreVerdict) -> Self {
        Verdict {
            allowed: v.allowed,
            status: u32::from(v.status),
            retry_after_ms: ms(v.retry_after),
            headers: v
                .headers
                .iter()
                .map(|(n, val)| (n.to_string(), val.clone()))
                .collect(),
            rule: v.rule.as_deref().map(str::to_string),
            identity: v.identity.clone(),
            reason: v.reason.code().to_string(),
            limit: v.limit as f64,
            remaining: v.remaining as f64,
            authenticated: v.authenticated,
            reset_after_ms: ms(v.reset_after),
            token_problem: v.token_problem.map(|p| p.code().to_string()),
            body: v.body(),
        }
    }
}

/// A request, owned (for the thread pool), and the time to decide it at.
struct Owned {
    request: OwnedRequest,
    now: Option<Duration>,
}

/// The request as the core takes it, with only the headers the policy reads
/// (`Engine.requestHeaders`; the middleware pass only those already).
fn owned(engine: &CoreEngine, r: RequestInit) -> std::result::Result<Owned, Failure> {
    // Express gives IPv4 peers as ::ffff:a.b.c.d; the core maps those itself.
    let mut request = OwnedRequest::new(r.method, r.path, r.client_ip.as_deref())?;
    for (k, v) in r.headers.unwrap_or_default() {
        if !engine.reads_header(&k) {
            continue;
        }
        match v {
            serde_json::Value::String(s) => request.header(k, s),
            serde_json::Value::Array(items) => {
                let joined: Vec<&str> =
                    items.iter().filter_map(serde_json::Value::as_str).collect();
                request.header(k, joined.join(", "))
            }
            serde_json::Value::Null => continue,
            other => request.header(k, other.to_string()),
        };
    }
    request.body = r.body.map(String::into_bytes);
    Ok(Owned {
        request,
        now: time(r.now_ms)?,
    })
}

fn decide(engine: &CoreEngine, r: &Owned) -> floodgate::Result<CoreVerdict> {
    engine.check_owned(&r.request, r.now)
}

/// An event, as the event callback receives it.
#[napi(object)]
#[derive(Clone)]
pub struct EngineEvent {
    /// denied, shadow_denied, banned, token_invalid, deny_listed, unauthorized,
    /// store_fallback, store_recovered, concurrency_limited, settled.
    pub kind: String,
    pub rule: Option<String>,
    pub client_ip: Option<String>,
    /// The rule's key (may contain a user id).
    pub key: Option<String>,
    pub status: u32,
    pub retry_after_ms: f64,
    /// Why a token was refused (token_invalid, unauthorized events).
    pub token_problem: Option<String>,
    /// The level the core's logging policy gives it: `warning` (a Redis
    /// fallback), `info` (its recovery) or `debug` (per-request events: log
    /// those as counts, not one line each, under a flood).
    pub level: String,
}

/// A line of the core's default logging policy (`Engine.logSummaries`).
#[napi(object)]
pub struct LogLine {
    /// `warning` (a summary that counts bans, a Redis fallback) or `info`.
    pub level: String,
    /// `summary`, `store_fallback` or `store_recovered`.
    pub kind: String,
    /// `floodgate: last 10 s: denied 1200 (login 1200)`,
    /// `floodgate: store_fallback (rule api)`.
    pub line: String,
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warning",
    }
}

/// Lines queued for the JS thread at most (see `Engine.logSummaries`): a
/// summary per interval and the rare state changes never fill it.
const LOG_QUEUE: usize = 64;

/// Seconds between summary lines by default (as the Python package's).
const SUMMARY_SECS: u64 = 10;

/// Where an engine's default log lines go (on the JS thread).
type LogCallback = ThreadsafeFunction<LogLine, (), LogLine, Status, false, true, LOG_QUEUE>;

/// The function every engine made in a JS environment (the main thread, a
/// worker) sends its default log lines to: `setDefaultLog`.
struct DefaultLog(Option<FunctionRef<LogLine, ()>>);

/// Sets the function that every engine made from now on in this JS
/// environment sends the core's default log lines to (see
/// `Engine.logSummaries`); `null`: none. floodgate.js sets one that writes
/// to the console.
#[napi(ts_args_type = "callback: ((line: LogLine) => void) | null")]
pub fn set_default_log(env: Env, callback: Option<Function<LogLine, ()>>) -> Result<()> {
    let f = callback.map(|f| f.create_ref()).transpose()?;
    env.set_instance_data(DefaultLog(f), (), |_| {})
}

/// What a reload did to each rule, by name.
#[napi(object)]
pub struct ReloadReport {
    /// Unchanged limiting: counters kept exactly.
    pub kept: Vec<String>,
    /// Quotas changed, not the key, in memory: each key's state carried over
    /// to the new quotas.
    pub carried: Vec<String>,
    /// Key or calendar changed, or quotas on Redis or shared memory: counters afresh.
    pub reset: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl From<floodgate::policy::Reload> for ReloadReport {
    fn from(r: floodgate::policy::Reload) -> Self {
        Self {
            kept: r.kept,
            carried: r.carried,
            reset: r.reset,
            added: r.added,
            removed: r.removed,
        }
    }
}

/// A policy engine: `Engine.fromFile(path)`, `Engine.fromToml(text)`,
/// `Engine.fromObject({ rule: [...] })`.
#[napi]
pub struct Engine {
    inner: Arc<CoreEngine>,
    dropped_events: Arc<std::sync::atomic::AtomicU64>,
}

/// Events queued for the JS thread at most (see `Engine.onEvent`).
const EVENT_QUEUE: usize = 10_000;

#[napi]
impl Engine {
    /// From a policy file (TOML, or JSON if it ends in .json).
    #[napi(factory)]
    pub fn from_file(env: Env, path: String) -> Result<Self> {
        Self::made(&env, CoreEngine::from_path(path))
    }

    /// From TOML text.
    #[napi(factory)]
    pub fn from_toml(env: Env, text: String) -> Result<Self> {
        Self::made(&env, CoreEngine::from_toml_str(&text))
    }

    /// From an object shaped like the TOML file.
    #[napi(factory)]
    pub fn from_object(env: Env, policy: serde_json::Value) -> Result<Self> {
        Self::made(&env, CoreEngine::from_json_str(&policy.to_string()))
    }

    /// Decides a request synchronously (in-memory engines: well under a µs of work).
    #[napi]
    pub fn check_request(&self, env: Env, request: RequestInit) -> Result<Verdict> {
        let r = owned(&self.inner, request).map_err(|f| f.into_js(&env))?;
        decide(&self.inner, &r)
            .map(Verdict::from)
            .map_err(|e| Failure::from(e).into_js(&env))
    }

    /// Decides a request without holding a thread while Redis answers (the
    /// core's async engine: round trips on one multiplexed connection, on a
    /// tokio worker): use it with a Redis store. A request it cannot use (no
    /// HTTP method token, a client address that is none) throws
    /// `ERR_FG_INVALID_REQUEST` at once rather than rejecting.
    #[napi(ts_return_type = "Promise<Verdict>")]
    pub fn check_request_async<'env>(
        &self,
        env: &'env Env,
        request: RequestInit,
    ) -> Result<Unknown<'env>> {
        let request = owned(&self.inner, request).map_err(|f| f.into_js(env))?;
        decide_async(env, self.inner.clone(), request, Done::Verdict)
    }

    /// `checkRequestAsync` as floodgate.js calls it: resolves `[verdict,
    /// settlement | undefined]`.
    #[napi(ts_return_type = "Promise<[Verdict, unknown]>")]
    pub fn check_request_async_settled<'env>(
        &self,
        env: &'env Env,
        request: RequestInit,
    ) -> Result<Unknown<'env>> {
        let request = owned(&self.inner, request).map_err(|f| f.into_js(env))?;
        decide_async(env, self.inner.clone(), request, Done::SettledVerdict)
    }

    /// `checkRequest` as floodgate.js calls it for a request with a body:
    /// `[verdict, settlement | undefined]`.
    #[napi(ts_return_type = "[Verdict, unknown]")]
    pub fn check_request_settled(
        &self,
        env: Env,
        request: RequestInit,
    ) -> Result<request::SettledVerdict> {
        let r = owned(&self.inner, request).map_err(|f| f.into_js(&env))?;
        decide(&self.inner, &r)
            .map(request::SettledVerdict)
            .map_err(|e| Failure::from(e).into_js(&env))
    }

    /// Whether a rule that `method` and `path` meet keys on a field of the
    /// request body (`key = "body:username"`): the middleware then pass the
    /// body (`request.body`) for these requests only.
    #[napi]
    pub fn reads_body(&self, method: String, path: String) -> bool {
        self.inner.reads_body(&method, &path)
    }

    /// `[handle, out, check]`: `check(method, path, clientIp,
    /// ...headerValues, nowMs?)` is the raw check (see `request.rs`) that
    /// `checkRequest` in floodgate.js calls. Each keeps the engine alive.
    #[napi(ts_return_type = "[unknown, Float64Array, (...args: unknown[]) => string]")]
    pub fn handle(&self, env: Env) -> Result<Unknown<'_>> {
        let raw = request::handle(env.raw(), self.inner.clone())?;
        // SAFETY: `raw` is a value just created in this environment.
        #[allow(unsafe_code)]
        unsafe {
            Unknown::from_napi_value(env.raw(), raw)
        }
    }

    /// `settle` without holding a thread while Redis answers (the core's async
    /// settlement on the background runtime), for engines whose settlement
    /// may wait on Redis (`mayBlock`), with the settlement floodgate.js keeps
    /// on a verdict (`engine.settleAsync(verdict, outcome)` calls it). Bad
    /// arguments throw at once; a second settlement rejects with
    /// `ERR_FG_ALREADY_SETTLED`.
    #[napi(
        js_name = "settleSettlementAsync",
        ts_args_type = "settlement: unknown, status: number, cost?: number | null, nowMs?: number | null"
    )]
    pub fn settle_settlement_async<'env>(
        &self,
        env: &'env Env,
        settlement: Unknown<'_>,
        status: Unknown<'_>,
        cost: Unknown<'_>,
        now_ms: Unknown<'_>,
    ) -> Result<Unknown<'env>> {
        let settlement =
            request::settlement_of(env.raw(), settlement.raw()).map_err(|f| f.into_js(env))?;
        let (outcome, now) = request::outcome_of(env.raw(), status.raw(), cost.raw(), now_ms.raw())
            .map_err(|f| f.into_js(env))?;
        let engine = self.inner.clone();
        promised(env, move |rt, _, reply| {
            if now.is_some() {
                rt.spawn_blocking(move || {
                    let settled = engine.settle_settlement(Some(&settlement), outcome, now);
                    reply.send(Done::Settled(settled))
                });
            } else {
                rt.spawn(async move {
                    let settled = engine
                        .settle_settlement_async(Some(&settlement), outcome)
                        .await;
                    reply.send(Done::Settled(settled))
                });
            }
        })
    }

    /// Changes the policy without a restart: the file at `path`, or (no
    /// argument) the file the engine was made from, read again. The new
    /// policy is compiled and checked first; on any error the running one
    /// stays and the error (`ERR_FG_INVALID_CONFIG`) says why. Rules with
    /// unchanged limiting keep their counters. Wire it to `SIGHUP`:
    /// `process.on('SIGHUP', () => engine.reload())`.
    #[napi]
    pub fn reload(&self, env: Env, path: Option<String>) -> Result<ReloadReport> {
        match path {
            Some(p) => self.inner.reload_with(p),
            None => self.inner.reload(),
        }
        .map(ReloadReport::from)
        .map_err(|e| Failure::from(e).into_js(&env))
    }

    /// `reload` from TOML text.
    #[napi]
    pub fn reload_toml(&self, env: Env, text: String) -> Result<ReloadReport> {
        self.inner
            .reload_toml_str(&text)
            .map(ReloadReport::from)
            .map_err(|e| Failure::from(e).into_js(&env))
    }

    /// Whether any rule settles after the response (`count`, `cost_from =
    /// "response"`, `max_in_flight`): the middleware hook the response's end
    /// only then.
    #[napi(getter)]
    pub fn settles(&self) -> bool {
        self.inner.settles()
    }

    /// The request headers the policy reads, lower case (`x-api-key`,
    /// `authorization`, ...): pass only these, the rest cannot change a verdict.
    #[napi(getter)]
    pub fn request_headers(&self) -> Vec<String> {
        self.inner.request_headers().to_vec()
    }

    /// Whether checks may wait on the network (a rule on a Redis store): the
    /// middleware then use `checkRequestAsync` by themselves.
    #[napi(getter)]
    pub fn may_block(&self) -> bool {
        self.inner.may_block()
    }

    /// Events (or `logSummaries` lines) dropped because their queue was full.
    #[napi(getter)]
    pub fn dropped_events(&self) -> f64 {
        self.dropped_events
            .load(std::sync::atomic::Ordering::Relaxed) as f64
    }

    /// Prometheus text of the counters.
    #[napi]
    pub fn metrics(&self) -> String {
        self.inner.metrics()
    }

    /// Sends events to `callback(event)` on the JS thread, without blocking the
    /// request. Events wait in a queue of at most 10,000; when the JS thread falls
    /// that far behind (a flood of denials), further events are dropped and
    /// counted in `droppedEvents`, so memory stays bounded.
    #[napi(ts_args_type = "callback: (event: EngineEvent) => void")]
    pub fn on_event(
        &self,
        callback: ThreadsafeFunction<
            EngineEvent,
            (),
            EngineEvent,
            Status,
            false,
            true,
            EVENT_QUEUE,
        >,
    ) -> Result<()> {
        let tsfn = Arc::new(callback);
        let dropped = self.dropped_events.clone();
        self.inner.set_event_sink(move |e: &Event| {
            let ev = EngineEvent {
                kind: e.kind.code().to_string(),
                rule: e.rule.as_deref().map(str::to_string),
                client_ip: e.client_ip.map(|ip| ip.to_string()),
                key: e.key.as_deref().map(str::to_string),
                status: u32::from(e.status),
                retry_after_ms: ms(e.retry_after),
                token_problem: e.token_problem.map(|p| p.code().to_string()),
                level: level_name(e.kind.log_level()).to_string(),
            };
            if tsfn.call(ev, ThreadsafeFunctionCallMode::NonBlocking) != Status::Ok {
                // Relaxed: a statistics counter.
                dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Ok(())
    }

    /// The core's default logging policy, as the Python package's: a Redis
    /// fallback (`warning`) and its recovery (`info`) as they happen, and one
    /// summary line per interval (10 s unless `intervalMs`, at least 1,000)
    /// counting denials, bans and refused tokens per rule (`warning` when it
    /// counts bans, else `info`), never a line per request. Summaries
    /// piggyback on events (a quiet engine writes nothing). The package calls
    /// it on every engine it makes, with `console`; `onEvent` replaces it, and
    /// so does a later call (to send the lines to another logger).
    #[napi(ts_args_type = "callback: (line: LogLine) => void, intervalMs?: number | null")]
    pub fn log_summaries(
        &self,
        env: Env,
        callback: LogCallback,
        interval_ms: Option<f64>,
    ) -> Result<()> {
        let interval = match interval_ms {
            None => Duration::from_secs(SUMMARY_SECS),
            Some(ms) if ms.is_finite() && (1_000.0..=86_400_000.0).contains(&ms) => {
                Duration::from_secs_f64(ms / 1_000.0)
            }
            Some(_) => {
                return Err(
                    invalid("intervalMs must be a number of ms from 1000 to 86400000")
                        .into_js(&env),
                );
            }
        };
        self.log_to(callback, interval);
        Ok(())
    }
}

/// The fields of a `Verdict`, as the core names them (snake_case; JS has them in
/// camelCase, with `Ms` on durations). For tests that compare the two.
#[napi]
pub fn verdict_fields() -> Vec<&'static str> {
    floodgate::policy::Verdict::FIELDS.to_vec()
}

/// The tables the raw check's numbers index: `[reasons, tokenProblems,
/// responseHeaders]` (the core's `Reason::ALL`, `TokenProblem::ALL` codes and
/// `RESPONSE_HEADERS`), read once by floodgate.js.
#[napi]
pub fn verdict_tables() -> Vec<Vec<&'static str>> {
    use floodgate::policy::{RESPONSE_HEADERS, Reason, TokenProblem};
    vec![
        Reason::ALL.iter().map(|r| r.code()).collect(),
        TokenProblem::ALL.iter().map(|p| p.code()).collect(),
        RESPONSE_HEADERS.to_vec(),
    ]
}

/// How many numbers an engine handle's `out` view holds.
#[napi]
pub const VERDICT_FIELDS: u32 = request::FIELDS as u32;

/// The JSON body of a 400 (a request the engine cannot use), from the core.
#[napi]
pub fn bad_request_body() -> String {
    floodgate::policy::denial_body(400, Duration::ZERO, None)
}

/// The JSON body of a 413: a body over `MAX_BODY_BYTES` on a request a rule
/// keyed by a body field meets.
#[napi]
pub fn too_large_body() -> String {
    floodgate::policy::denial_body(413, Duration::ZERO, None)
}

/// The largest body the middleware pass for rules keyed by a body field
/// (`engine.readsBody`); a longer one is answered 413.
#[napi]
pub const MAX_BODY_BYTES: u32 = floodgate::policy::MAX_BODY_BYTES as u32;
