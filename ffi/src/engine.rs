//! `fg_engine`: a limiter built from quotas (in memory or on Redis), or a policy
//! engine built from a policy file or string.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::Duration;

use fg_core::policy::{Engine, Event, EventKind, LogLevel, Request, Verdict, VerdictBuf};
use fg_core::{Algorithm, Decision, FailMode, Limiter, Quota, RedisLimiter};

use crate::boundary::{
    guard, guard_void, try_bytes, try_cstr, try_out, try_ref, try_str, write_out,
};
use crate::result::{copy_text, fail, fg_result};

/// An engine. Opaque: an `Arc` of the Rust engine. Create it with one of the
/// `fg_engine_new_*` / `fg_engine_from_*` functions, release it with
/// `fg_engine_free`. Every call that takes a `const fg_engine *` is safe to make
/// from any number of threads at once.
#[derive(Debug)]
pub struct fg_engine {
    _private: [u8; 0],
}

/// What is behind an `fg_engine` pointer.
pub(crate) enum Inner {
    Memory(Limiter),
    Redis(Box<RedisLimiter>),
    Policy(Box<Engine>),
}

/// Algorithm of an `fg_quota`: token bucket (GCRA).
pub const FG_ALGORITHM_GCRA: u32 = 0;
/// Algorithm of an `fg_quota`: exact sliding log.
pub const FG_ALGORITHM_SLIDING_LOG: u32 = 1;
/// Algorithm of an `fg_quota`: sliding-window counter.
pub const FG_ALGORITHM_SLIDING_WINDOW: u32 = 2;
/// Algorithm of an `fg_quota`: fixed window.
pub const FG_ALGORITHM_FIXED_WINDOW: u32 = 3;

/// Policy text format for `fg_engine_from_str`: TOML.
pub const FG_FORMAT_TOML: u32 = 0;
/// Policy text format for `fg_engine_from_str`: JSON.
pub const FG_FORMAT_JSON: u32 = 1;

/// Redis fail mode: allow while Redis cannot answer.
pub const FG_FAIL_OPEN: u32 = 0;
/// Redis fail mode: deny while Redis cannot answer.
pub const FG_FAIL_CLOSED: u32 = 1;
/// Redis fail mode: decide with an in-memory limiter of the same quotas.
pub const FG_FAIL_LOCAL: u32 = 2;

/// One quota: `limit` units per `period_ns`, with a burst of `burst` units (0 =
/// `limit`). For the window algorithms the window is `period_ns` and `burst` must
/// be 0 or `limit`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fg_quota {
    /// One of the `FG_ALGORITHM_*` constants.
    pub algorithm: u32,
    /// Units per period (at least 1).
    pub limit: u64,
    /// The period in nanoseconds (at least 1 ms for the window algorithms).
    pub period_ns: u64,
    /// Burst, in units; 0 means `limit`.
    pub burst: u64,
}

/// Options of an in-memory engine from quotas; a zero field takes the default.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct fg_options {
    /// Most keys held (default 1,000,000); least recently used go first.
    pub max_keys: usize,
    /// Longest key accepted, in bytes (default 256).
    pub max_key_bytes: usize,
}

/// The answer to a key check. Plain data, owned by the caller.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct fg_decision {
    /// Let the request through.
    pub allowed: bool,
    /// The deciding quota's limit (its burst).
    pub limit: u64,
    /// Units left of the deciding quota.
    pub remaining: u64,
    /// 0 when allowed; else how long until a retry can be allowed.
    pub retry_after_ns: u64,
    /// Until the deciding quota is full again.
    pub reset_after_ns: u64,
    /// Index of the deciding quota, in the order given.
    pub quota: u32,
}

/// One request header. Name and value are byte ranges (not NUL-terminated),
/// UTF-8.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fg_header {
    /// The name (any case).
    pub name: *const c_char,
    /// Its length in bytes.
    pub name_len: usize,
    /// The value.
    pub value: *const c_char,
    /// Its length in bytes.
    pub value_len: usize,
}

/// A request to decide. All text is UTF-8 byte ranges, not NUL-terminated;
/// every pointer need only live for the duration of the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fg_request {
    /// `GET`, `POST`... (required).
    pub method: *const c_char,
    /// Its length in bytes.
    pub method_len: usize,
    /// The request target, query string allowed (required).
    pub path: *const c_char,
    /// Its length in bytes.
    pub path_len: usize,
    /// The client's address as text (`203.0.113.7`, `2001:db8::1`,
    /// `fe80::1%eth0`, `::ffff:203.0.113.7`; a port, `203.0.113.7:5678`, is
    /// dropped), or NULL if unknown (rules keyed by IP then charge the one key
    /// `-` of every such request): the socket peer, or what a *trusted* proxy
    /// reported. Text that is no address is `FG_RESULT_INVALID_REQUEST`.
    pub client_ip: *const c_char,
    /// Its length in bytes (0 with a NULL `client_ip`).
    pub client_ip_len: usize,
    /// The request headers (may be NULL when `header_count` is 0).
    pub headers: *const fg_header,
    /// How many headers.
    pub header_count: usize,
    /// The whole request body, for rules keyed by one of its fields (`key =
    /// "body:username"`), or NULL if it was not read (such a rule then finds
    /// no key). Read it only when `fg_engine_reads_body` says so, and answer
    /// a body over `FG_MAX_BODY_BYTES` 413 (`fg_too_large_body`) rather than
    /// pass a part of it.
    pub body: *const u8,
    /// Bytes in `body` (0 with a NULL `body`).
    pub body_len: usize,
}

/// The largest request body a front end reads for rules keyed by a body field
/// (64 KiB): a longer one is answered 413 with `fg_too_large_body`.
pub const FG_MAX_BODY_BYTES: usize = 65_536;
// cbindgen needs the literal; it is the core's.
const _: () = assert!(FG_MAX_BODY_BYTES == fg_core::policy::MAX_BODY_BYTES);

/// The answer to a request.
///
/// `headers` points to the response header lines to send, each
/// `Name: value\r\n`, ready to copy into an HTTP response (`headers_len` bytes,
/// `header_count` lines, NUL-terminated). `rule` is the deciding rule's name,
/// `identity` its key and `body` the JSON body of a denial (each with its
/// length, NUL-terminated, empty if none).
///
/// **Ownership and lifetime:** from `fg_engine_check_request` and `_at`, they
/// point into a buffer owned by the library, one per thread, reused by each such
/// call on that thread: valid until the next one on the same thread (or the
/// thread's exit). From `fg_engine_check_request_buf`, they point into the
/// caller's `fg_verdict_buf`: valid until the next check with that buffer or its
/// `fg_verdict_buf_free`. Copy what you need to keep. Nothing to free per
/// verdict, and no allocation on an allowed request once the buffer has grown to
/// the largest verdict seen. A buffer keeps no engine alive: free the engine
/// and its buffers in any order.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fg_verdict {
    /// Let the request through.
    pub allowed: bool,
    /// The HTTP status to answer: 200, 429, 403 or 401.
    pub status: u16,
    /// Zero unless 429 or banned: how long the client must wait.
    pub retry_after_ns: u64,
    /// The deciding quota's limit.
    pub limit: u64,
    /// Units left of it.
    pub remaining: u64,
    /// Until it is full again.
    pub reset_after_ns: u64,
    /// The request carried a verified token.
    pub authenticated: bool,
    /// Response header lines, `Name: value\r\n` each (see above for lifetime).
    pub headers: *const c_char,
    /// Bytes in `headers`, without the NUL.
    pub headers_len: usize,
    /// Lines in `headers`.
    pub header_count: usize,
    /// The deciding rule's name (see above for lifetime).
    pub rule: *const c_char,
    /// Bytes in `rule`, without the NUL.
    pub rule_len: usize,
    /// Why: `allowed`, `no_rule`, `allow_listed`, `rate_limited`, `banned`,
    /// `deny_listed`, `unauthorized`, `concurrency`. Static, NUL-terminated.
    pub reason: *const c_char,
    /// The deciding rule's key (may contain a user id; see above for lifetime;
    /// empty if none).
    pub identity: *const c_char,
    /// Bytes in `identity`, without the NUL.
    pub identity_len: usize,
    /// Why a token was refused (`bad_signature`, `expired`, `missing_claim`...;
    /// empty if none). Static, NUL-terminated.
    pub token_problem: *const c_char,
    /// The JSON body to answer a denial with, the same as every other front end
    /// sends (empty when allowed; see above for lifetime).
    pub body: *const c_char,
    /// Bytes in `body`, without the NUL.
    pub body_len: usize,
    /// What to settle once the response is known, when a matching rule has
    /// `count`, `cost_from = "response"` or `max_in_flight` (else NULL). The
    /// caller owns it: pass it to `fg_engine_settle` (which frees it), or free
    /// it unsettled with `fg_settlement_free` (the charge stays).
    pub settlement: *mut fg_settlement,
}

/// An admitted request's charges to settle (opaque; see `fg_verdict`).
#[derive(Debug)]
pub struct fg_settlement {
    _private: [u8; 0],
}

/// An event, passed to the event callback. Every pointer is valid only during
/// the callback; text is not NUL-terminated except `kind`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct fg_event {
    /// What happened: `denied`, `shadow_denied`, `banned`, `token_invalid`,
    /// `deny_listed`, `unauthorized`, `store_fallback`, `store_recovered`,
    /// `concurrency_limited`, `settled` (static, NUL-terminated).
    pub kind: *const c_char,
    /// The rule involved (may be empty).
    pub rule: *const c_char,
    /// Its length.
    pub rule_len: usize,
    /// The rule's key (may contain a user id: log it accordingly; may be empty).
    pub key: *const c_char,
    /// Its length.
    pub key_len: usize,
    /// The client's address as text (may be empty).
    pub client_ip: *const c_char,
    /// Its length.
    pub client_ip_len: usize,
    /// The status answered (0 for a shadow denial).
    pub status: u16,
    /// How long the client must wait (429 and bans).
    pub retry_after_ns: u64,
    /// Why a token was refused (`bad_signature`, `expired`, ...; empty if no
    /// token was refused). Static, NUL-terminated.
    pub token_problem: *const c_char,
}

/// Log level of an event (`fg_event_level`): per-request events (denials,
/// bans, refused tokens...). Log them as counts, one line per interval, not
/// one line each: a flood makes millions.
pub const FG_LOG_DEBUG: u32 = 0;
/// Log level of an event (`fg_event_level`): a store recovering.
pub const FG_LOG_INFO: u32 = 1;
/// Log level of an event (`fg_event_level`): a store falling back.
pub const FG_LOG_WARNING: u32 = 2;

/// The level the core's logging policy gives `event` (`FG_LOG_DEBUG`,
/// `FG_LOG_INFO` or `FG_LOG_WARNING`), the same as Python's logger and Node's
/// `event.level` use. `FG_LOG_DEBUG` for NULL or an event this library did not
/// make.
///
/// # Safety
/// `event` must be NULL or the pointer an event callback received, during the
/// callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_event_level(event: *const fg_event) -> u32 {
    std::panic::catch_unwind(|| {
        // SAFETY: NULL or a valid event per the caller's contract.
        let Some(event) = (unsafe { event.as_ref() }) else {
            return FG_LOG_DEBUG;
        };
        if event.kind.is_null() {
            return FG_LOG_DEBUG;
        }
        // SAFETY: an event's `kind` is a static NUL-terminated code.
        let code = unsafe { std::ffi::CStr::from_ptr(event.kind) };
        let kind = EventKind::ALL.iter().find(|k| k.c_code() == code);
        match kind.map(|k| k.log_level()) {
            Some(LogLevel::Warning) => FG_LOG_WARNING,
            Some(LogLevel::Info) => FG_LOG_INFO,
            Some(LogLevel::Debug) | None => FG_LOG_DEBUG,
        }
    })
    .unwrap_or(FG_LOG_DEBUG)
}

/// An event callback: called on the thread that made the request, so keep it
/// quick and make `userdata` safe to use from several threads at once.
pub type fg_event_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, event: *const fg_event)>;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl From<Decision> for fg_decision {
    fn from(d: Decision) -> Self {
        fg_decision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after_ns: nanos(d.retry_after),
            reset_after_ns: nanos(d.reset_after),
            quota: u32::try_from(d.quota).unwrap_or(u32::MAX),
        }
    }
}

fn into_engine(inner: Inner) -> *const fg_engine {
    Arc::into_raw(Arc::new(inner)).cast::<fg_engine>()
}

/// # Safety
/// A non-NULL `e` must come from an `fg_engine` constructor and not be freed.
unsafe fn inner<'a>(e: *const fg_engine) -> Result<&'a Inner, fg_result> {
    // SAFETY: every fg_engine pointer is an Arc<Inner> from into_engine.
    unsafe { try_ref(e.cast::<Inner>()) }
}

fn quota(q: &fg_quota) -> Result<Quota, fg_result> {
    let algorithm = match q.algorithm {
        FG_ALGORITHM_GCRA => Algorithm::Gcra,
        FG_ALGORITHM_SLIDING_LOG => Algorithm::SlidingLog,
        FG_ALGORITHM_SLIDING_WINDOW => Algorithm::SlidingWindow,
        FG_ALGORITHM_FIXED_WINDOW => Algorithm::FixedWindow,
        _ => return Err(fg_result::InvalidArgument),
    };
    let mut quota = Quota::new(q.limit, Duration::from_nanos(q.period_ns)).map_err(|e| fail(&e))?;
    if q.burst != 0 {
        quota = quota.with_burst(q.burst).map_err(|e| fail(&e))?;
    }
    quota.with_algorithm(algorithm).map_err(|e| fail(&e))
}

/// # Safety
/// `quotas` must point to `count` quotas (or be NULL with `count` 0).
unsafe fn quotas(quotas: *const fg_quota, count: usize) -> Result<Vec<Quota>, fg_result> {
    if quotas.is_null() {
        return if count == 0 {
            Err(fail(&fg_core::Error::NoQuotas))
        } else {
            Err(fg_result::NullParameter)
        };
    }
    if count > fg_core::MAX_QUOTAS {
        return Err(fail(&fg_core::Error::TooManyQuotas {
            count,
            max: fg_core::MAX_QUOTAS,
        }));
    }
    // SAFETY: non-NULL, `count` quotas per the caller, count is small.
    let slice = unsafe { std::slice::from_raw_parts(quotas, count) };
    slice.iter().map(quota).collect()
}

/// Creates an in-memory limiter from `count` quotas, all checked together
/// (all-or-nothing) on each key. `options` may be NULL for the defaults (at most
/// 1,000,000 keys, least recently used going first; keys of at most 256 bytes).
///
/// On success `*engine_out` gets a new engine; release it with `fg_engine_free`.
///
/// # Safety
/// `quotas` must point to `count` `fg_quota`s; `options` must be NULL or valid;
/// `engine_out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_new_quotas(
    quotas_in: *const fg_quota,
    count: usize,
    options: *const fg_options,
    engine_out: *mut *const fg_engine,
) -> fg_result {
    guard(|| {
        let engine_out = try_out(engine_out)?;
        // SAFETY: `quotas_in` points to `count` quotas per this function's contract.
        let qs = unsafe { quotas(quotas_in, count) }?;
        // SAFETY: `options` is NULL or valid per this function's contract.
        let o = unsafe { options.as_ref() }.copied().unwrap_or_default();
        let mut b = Limiter::builder().quotas(qs);
        if o.max_keys > 0 {
            b = b.max_keys(o.max_keys);
        }
        if o.max_key_bytes > 0 {
            b = b.max_key_bytes(o.max_key_bytes);
        }
        let l = b.build().map_err(|e| fail(&e))?;
        // SAFETY: `engine_out` is writable per this function's contract.
        unsafe { write_out(engine_out, into_engine(Inner::Memory(l))) }
    })
}

/// Creates a limiter whose state lives in a shared-memory table at `path`
/// (NUL-terminated; on Linux a file under `/dev/shm`), created by the first
/// process and mapped by every other: one exact limit across the worker
/// processes of a machine (a pre-forking server's workers each call this after
/// the fork). Every process must pass the same quotas and `max_keys`
/// (`options`, NULL for 1,000,000 keys; the table takes 16 bytes per key and
/// quota). Fails with `FG_RESULT_STORE_UNAVAILABLE` when the file cannot be
/// created or opened (a symlink, another user's, group- or world-accessible),
/// `FG_RESULT_STORE_MISMATCH` when it was made for other quotas or is corrupt,
/// `FG_RESULT_INVALID_OPTION` for a sliding-log quota.
///
/// # Safety
/// `path` must be NUL-terminated; `quotas` must point to `count` `fg_quota`s;
/// `options` must be NULL or valid; `engine_out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_new_shared(
    path: *const c_char,
    quotas_in: *const fg_quota,
    count: usize,
    options: *const fg_options,
    engine_out: *mut *const fg_engine,
) -> fg_result {
    guard(|| {
        let engine_out = try_out(engine_out)?;
        // SAFETY: `path` is NUL-terminated per this function's contract.
        let path = unsafe { try_cstr(path) }?;
        // SAFETY: `quotas_in` points to `count` quotas per this function's contract.
        let qs = unsafe { quotas(quotas_in, count) }?;
        // SAFETY: `options` is NULL or valid per this function's contract.
        let o = unsafe { options.as_ref() }.copied().unwrap_or_default();
        let mut b = Limiter::builder().quotas(qs).shared_memory(path);
        if o.max_keys > 0 {
            b = b.max_keys(o.max_keys);
        }
        if o.max_key_bytes > 0 {
            b = b.max_key_bytes(o.max_key_bytes);
        }
        let l = b.build().map_err(|e| fail(&e))?;
        // SAFETY: `engine_out` is writable per this function's contract.
        unsafe { write_out(engine_out, into_engine(Inner::Memory(l))) }
    })
}

/// Creates a limiter whose state lives in Redis at `url`
/// (`redis://[:password@]host:port/db`, NUL-terminated), shared by every process
/// using the same Redis and quotas. A call blocks for at most `timeout_ms` (a
/// deadline for the whole call; 0 means the default, 50 ms). While Redis
/// cannot answer, checks follow `fail_mode` (`FG_FAIL_*`). Fails with
/// `FG_RESULT_STORE_UNAVAILABLE` if Redis cannot be reached (within 1 s) or
/// refuses the credentials now.
///
/// # Safety
/// `url` must be NUL-terminated; `quotas` must point to `count` `fg_quota`s;
/// `engine_out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_new_redis(
    url: *const c_char,
    quotas_in: *const fg_quota,
    count: usize,
    fail_mode: u32,
    timeout_ms: u32,
    engine_out: *mut *const fg_engine,
) -> fg_result {
    guard(|| {
        let engine_out = try_out(engine_out)?;
        // SAFETY: `url` is NUL-terminated per this function's contract.
        let url = unsafe { try_cstr(url) }?;
        // SAFETY: `quotas_in` points to `count` quotas per this function's contract.
        let qs = unsafe { quotas(quotas_in, count) }?;
        let mode = match fail_mode {
            FG_FAIL_OPEN => FailMode::Open,
            FG_FAIL_CLOSED => FailMode::Closed,
            FG_FAIL_LOCAL => FailMode::Local,
            _ => return Err(fg_result::InvalidArgument),
        };
        // 0: the core's default.
        let t = (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms)));
        let mut b = RedisLimiter::builder(url).timeouts(t).fail_mode(mode);
        for q in qs {
            b = b.quota(q);
        }
        let l = b.build().map_err(|e| fail(&e))?;
        // SAFETY: `engine_out` is writable per this function's contract.
        unsafe { write_out(engine_out, into_engine(Inner::Redis(Box::new(l)))) }
    })
}

/// Creates a policy engine from the policy file at `path` (NUL-terminated; TOML,
/// or JSON if it ends in `.json`). Relative paths inside the policy (keys,
/// secrets) are relative to the file. On `FG_RESULT_INVALID_CONFIG`,
/// `fg_last_error` gives the line and the reason.
///
/// # Safety
/// `path` must be NUL-terminated; `engine_out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_from_file(
    path: *const c_char,
    engine_out: *mut *const fg_engine,
) -> fg_result {
    guard(|| {
        let engine_out = try_out(engine_out)?;
        // SAFETY: `path` is NUL-terminated per this function's contract.
        let path = unsafe { try_cstr(path) }?;
        let e = Engine::from_path(path).map_err(|e| fail(&e))?;
        // SAFETY: `engine_out` is writable per this function's contract.
        unsafe { write_out(engine_out, into_engine(Inner::Policy(Box::new(e)))) }
    })
}

/// Creates a policy engine from policy text (`len` bytes, UTF-8) in `format`
/// (`FG_FORMAT_TOML` or `FG_FORMAT_JSON`). Relative paths inside it are relative
/// to the current directory.
///
/// # Safety
/// `text` must point to `len` readable bytes; `engine_out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_from_str(
    text: *const c_char,
    len: usize,
    format: u32,
    engine_out: *mut *const fg_engine,
) -> fg_result {
    guard(|| {
        let engine_out = try_out(engine_out)?;
        // SAFETY: `text` points to `len` readable bytes per this function's contract.
        let text = unsafe { try_str(text.cast(), len) }?;
        let engine = match format {
            FG_FORMAT_TOML => Engine::from_toml_str(text),
            FG_FORMAT_JSON => Engine::from_json_str(text),
            _ => return Err(fg_result::InvalidArgument),
        }
        .map_err(|e| fail(&e))?;
        // SAFETY: `engine_out` is writable per this function's contract.
        unsafe { write_out(engine_out, into_engine(Inner::Policy(Box::new(engine)))) }
    })
}

/// Releases an engine. NULL is ignored. The engine must not be used afterwards;
/// calls still running on other threads must have returned.
///
/// # Safety
/// `engine` must be NULL or come from an `fg_engine` constructor, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_free(engine: *const fg_engine) {
    guard_void(|| {
        if !engine.is_null() {
            // SAFETY: an Arc<Inner> from into_engine, released exactly once.
            drop(unsafe { Arc::from_raw(engine.cast::<Inner>()) });
        }
    });
}

/// # Safety
/// `engine` from a constructor; `key` readable for `key_len` bytes;
/// `decision_out` writable.
unsafe fn check(
    engine: *const fg_engine,
    key: *const u8,
    key_len: usize,
    cost: u64,
    now_ns: Option<u64>,
    decision_out: *mut fg_decision,
) -> Result<(), fg_result> {
    let decision_out = try_out(decision_out)?;
    // SAFETY: `engine` comes from a constructor per the caller's contract.
    let inner = unsafe { inner(engine) }?;
    // SAFETY: `key` is readable for `key_len` bytes per the caller's contract.
    let key = unsafe { try_bytes(key, key_len) }?;
    {
        let now = now_ns.map(Duration::from_nanos);
        let d = match (inner, now) {
            (Inner::Memory(l), None) => l.check(key, cost),
            (Inner::Memory(l), Some(now)) => l.check_at(key, cost, now),
            (Inner::Redis(l), None) => l.check(key, cost),
            (Inner::Redis(l), Some(now)) => l.check_at(key, cost, now),
            (Inner::Policy(_), _) => return Err(fg_result::WrongEngineKind),
        }
        .map_err(|e| fail(&e))?;
        // SAFETY: `decision_out` is writable per the caller's contract.
        unsafe { write_out(decision_out, d.into()) }
    }
}

/// Checks `cost` units for `key` (`key_len` bytes, any bytes) now, charging them
/// if allowed; `cost` 0 peeks. A denial is `FG_RESULT_OK` with
/// `decision_out->allowed == false`. For engines from quotas only
/// (`FG_RESULT_WRONG_ENGINE_KIND` on a policy engine).
///
/// # Safety
/// `engine` must come from a constructor; `key` must be readable for `key_len`
/// bytes; `decision_out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_check(
    engine: *const fg_engine,
    key: *const u8,
    key_len: usize,
    cost: u64,
    decision_out: *mut fg_decision,
) -> fg_result {
    // SAFETY: `check` has this function's contract.
    guard(|| unsafe { check(engine, key, key_len, cost, None, decision_out) })
}

/// Forgets `key` (`key_len` bytes): its next check starts from a full quota.
/// For engines from quotas only. If `held_out` is not NULL, it gets whether the
/// key had state here (always false for a Redis engine, which does not know).
///
/// # Safety
/// `engine` must come from a constructor; `key` must be readable for `key_len`
/// bytes; `held_out` must be NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_reset(
    engine: *const fg_engine,
    key: *const u8,
    key_len: usize,
    held_out: *mut bool,
) -> fg_result {
    guard(|| {
        // SAFETY: `engine` comes from a constructor per this function's contract.
        let inner = unsafe { inner(engine) }?;
        // SAFETY: `key` is readable for `key_len` bytes per this function's contract.
        let key = unsafe { try_bytes(key, key_len) }?;
        let held = match inner {
            Inner::Memory(l) => l.reset(key).map_err(|e| fail(&e))?,
            Inner::Redis(l) => l.reset(key).map(|()| false).map_err(|e| fail(&e))?,
            Inner::Policy(_) => return Err(fg_result::WrongEngineKind),
        };
        if !held_out.is_null() {
            // SAFETY: `held_out` is NULL (not this branch) or writable per this
            // function's contract.
            unsafe { write_out(held_out, held) }?;
        }
        Ok(())
    })
}

/// As `fg_engine_check`, at an explicit time: `now_ns` nanoseconds since an
/// epoch of your choice (Unix time for Redis engines), for replays and tests.
/// Use one time source per engine.
///
/// # Safety
/// As `fg_engine_check`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_check_at(
    engine: *const fg_engine,
    key: *const u8,
    key_len: usize,
    cost: u64,
    now_ns: u64,
    decision_out: *mut fg_decision,
) -> fg_result {
    // SAFETY: `check` has this function's contract.
    guard(|| unsafe { check(engine, key, key_len, cost, Some(now_ns), decision_out) })
}

/// A verdict buffer the caller owns (`fg_verdict_buf_new`): the engine decides
/// into it and the `fg_verdict` it fills points into it, valid until the next
/// check with the same buffer or `fg_verdict_buf_free`. For callers that keep
/// a verdict while the same thread decides other requests (an event loop
/// interleaving requests), or want the lifetime explicit. Not thread-safe: one
/// per thread (or lock it).
#[derive(Debug)]
pub struct fg_verdict_buf {
    _private: [u8; 0],
}

/// What is behind an `fg_verdict_buf` pointer: the core's reusable verdict,
/// and the verdict's text as C reads it.
#[derive(Default)]
struct VerdictText {
    verdict: VerdictBuf,
    text: String,
}

thread_local! {
    /// The buffer of `fg_engine_check_request` and `_at`, one per thread.
    static VERDICT_BUF: RefCell<VerdictText> = RefCell::new(VerdictText::default());
}

/// A new, empty verdict buffer (it grows to the largest verdict decided into it,
/// then allocates no more). Free it with `fg_verdict_buf_free`. NULL only if a
/// panic was caught.
#[unsafe(no_mangle)]
pub extern "C" fn fg_verdict_buf_new() -> *mut fg_verdict_buf {
    std::panic::catch_unwind(|| Box::into_raw(Box::<VerdictText>::default()).cast())
        .unwrap_or(std::ptr::null_mut())
}

/// Frees a buffer from `fg_verdict_buf_new` (NULL is ignored). Verdicts that
/// point into it are invalid after.
///
/// # Safety
/// `buf` must come from `fg_verdict_buf_new` and not be used after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_verdict_buf_free(buf: *mut fg_verdict_buf) {
    guard_void(|| {
        if !buf.is_null() {
            // SAFETY: a Box<VerdictText> from fg_verdict_buf_new, freed once.
            drop(unsafe { Box::from_raw(buf.cast::<VerdictText>()) });
        }
    });
}

/// Most headers decided without a heap allocation.
const STACK_HEADERS: usize = 32;

/// # Safety
/// As `fg_engine_check_request`; `own`, if given, as `fg_engine_check_request_buf`.
unsafe fn check_request(
    engine: *const fg_engine,
    request: *const fg_request,
    now_ns: Option<u64>,
    own: Option<*mut fg_verdict_buf>,
    verdict_out: *mut fg_verdict,
) -> Result<(), fg_result> {
    let verdict_out = try_out(verdict_out)?;
    if own.is_some_and(<*mut fg_verdict_buf>::is_null) {
        return Err(fg_result::NullParameter);
    }
    // SAFETY: `engine` comes from a constructor per the caller's contract.
    let inner = unsafe { inner(engine) }?;
    // SAFETY: `request` points to a valid fg_request per the caller's contract.
    let r = unsafe { try_ref(request) }?;
    {
        let Inner::Policy(policy) = inner else {
            return Err(fg_result::WrongEngineKind);
        };
        // SAFETY: the request's ranges are readable per the caller's contract
        // (try_str refuses NULL with a length).
        let method = unsafe { try_str(r.method.cast(), r.method_len) }?;
        // SAFETY: the path's range is readable per the caller's contract.
        let path = unsafe { try_str(r.path.cast(), r.path_len) }?;
        let client_ip = if r.client_ip.is_null() {
            None
        } else {
            // SAFETY: the client_ip range is readable per the caller's contract.
            let text = unsafe { try_str(r.client_ip.cast(), r.client_ip_len) }?;
            Some(fg_core::policy::parse_client_ip(text).map_err(|e| fail(&e))?)
        };
        if r.headers.is_null() && r.header_count > 0 {
            return Err(fg_result::NullParameter);
        }
        let raw: &[fg_header] = if r.header_count == 0 {
            &[]
        } else {
            if r.header_count > (isize::MAX as usize) / std::mem::size_of::<fg_header>() {
                return Err(fg_result::InvalidArgument);
            }
            // SAFETY: non-NULL, `header_count` headers per the caller.
            unsafe { std::slice::from_raw_parts(r.headers, r.header_count) }
        };
        let mut stack: [(&str, &str); STACK_HEADERS] = [("", ""); STACK_HEADERS];
        let mut heap = Vec::new();
        let headers: &[(&str, &str)] = if raw.len() <= STACK_HEADERS {
            for (slot, h) in stack.iter_mut().zip(raw) {
                // SAFETY: each header's ranges are readable per the caller.
                *slot = unsafe {
                    (
                        try_str(h.name.cast(), h.name_len)?,
                        try_str(h.value.cast(), h.value_len)?,
                    )
                };
            }
            stack.get(..raw.len()).unwrap_or(&[])
        } else {
            for h in raw {
                // SAFETY: each header's ranges are readable per the caller.
                heap.push(unsafe {
                    (
                        try_str(h.name.cast(), h.name_len)?,
                        try_str(h.value.cast(), h.value_len)?,
                    )
                });
            }
            &heap
        };
        let body = if r.body.is_null() {
            if r.body_len > 0 {
                return Err(fg_result::NullParameter);
            }
            None
        } else {
            // SAFETY: `body_len` readable bytes per the caller's contract.
            Some(unsafe { try_bytes(r.body, r.body_len) }?)
        };
        let req = Request {
            method,
            path,
            client_ip,
            headers,
            body,
        };
        let decide = |buf: &mut VerdictText| -> Result<fg_verdict, fg_result> {
            policy
                .check_request_into(&req, now_ns.map(Duration::from_nanos), &mut buf.verdict)
                .map_err(|e| fail(&e))?;
            Ok(fill_verdict(&mut buf.text, buf.verdict.verdict()))
        };
        let out = match own {
            // SAFETY: a buffer from fg_verdict_buf_new, used by one thread at a
            // time per the caller's contract.
            Some(buf) => decide(unsafe { &mut *buf.cast::<VerdictText>() })?,
            None => VERDICT_BUF.with(|buf| match buf.try_borrow_mut() {
                Ok(mut buf) => decide(&mut buf),
                // Only an event callback calling back into the engine re-enters.
                Err(_) => Err(fg_result::InvalidArgument),
            })?,
        };
        // SAFETY: `verdict_out` is writable per the caller's contract.
        unsafe { write_out(verdict_out, out) }
    }
}

/// Writes the verdict's header lines, the rule name, the identity and the body,
/// each followed by a NUL, into `buf`, and points the C verdict at them. The
/// String keeps its capacity across calls; pointers are taken after the last write.
fn fill_verdict(buf: &mut String, v: &Verdict) -> fg_verdict {
    buf.clear();
    // Pushed, not `write!`: `core::fmt` was ~300 instructions of a check.
    for (name, value) in &v.headers {
        buf.push_str(name);
        buf.push_str(": ");
        buf.push_str(value);
        buf.push_str("\r\n");
    }
    let headers_len = buf.len();
    buf.push('\0');
    let mut text = |s: &str| {
        let at = buf.len();
        buf.push_str(s);
        buf.push('\0');
        (at, s.len())
    };
    let (rule_at, rule_len) = text(v.rule.as_deref().unwrap_or(""));
    let (identity_at, identity_len) = text(v.identity.as_deref().unwrap_or(""));
    let body_at = buf.len();
    v.body_into(buf);
    let body_len = buf.len() - body_at;
    buf.push('\0');
    let base = buf.as_ptr().cast::<c_char>();
    fg_verdict {
        allowed: v.allowed,
        status: v.status,
        retry_after_ns: nanos(v.retry_after),
        limit: v.limit,
        remaining: v.remaining,
        reset_after_ns: nanos(v.reset_after),
        authenticated: v.authenticated,
        headers: base,
        headers_len,
        header_count: v.headers.len(),
        rule: base.wrapping_add(rule_at),
        rule_len,
        reason: v.reason.c_code().as_ptr(),
        identity: base.wrapping_add(identity_at),
        identity_len,
        token_problem: v.token_problem.map_or(c"", |p| p.c_code()).as_ptr(),
        body: base.wrapping_add(body_at),
        body_len,
        settlement: v
            .settlement
            .clone()
            .map_or(std::ptr::null_mut(), |s| Box::into_raw(Box::new(s)).cast()),
    }
}

/// Settles an admitted request once its response is known: `status` is the
/// response's HTTP status (100-599); `cost` the request's real cost for rules
/// with `cost_from = "response"`, or -1 to keep the estimate. Gives back the
/// charge of rules that do not count the status (`count = "failures"`...) and
/// frees the request's places in flight. Consumes `settlement` whatever the
/// result (NULL is `FG_RESULT_OK`: nothing to settle). `now_ns`: nanoseconds of
/// Unix time as in `fg_engine_check_request_at`, or 0 for the engine's clock.
/// `FG_RESULT_ALREADY_SETTLED` never happens through this call (each pointer is
/// settled once); `FG_RESULT_INVALID_REQUEST` for a status out of range or a
/// settlement of another engine.
///
/// # Safety
/// `engine` must come from a constructor; `settlement` must come from a verdict
/// and not be used after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_settle(
    engine: *const fg_engine,
    settlement: *mut fg_settlement,
    status: u16,
    cost: i64,
    now_ns: u64,
) -> fg_result {
    guard(|| {
        let owned = (!settlement.is_null()).then(|| {
            // SAFETY: a Box<Settlement> from fill_verdict, consumed once.
            unsafe { Box::from_raw(settlement.cast::<fg_core::policy::Settlement>()) }
        });
        // SAFETY: `engine` comes from a constructor per the caller's contract.
        let inner = unsafe { inner(engine) }?;
        let Inner::Policy(policy) = inner else {
            return Err(fg_result::WrongEngineKind);
        };
        let cost = match cost {
            -1 => None,
            c => Some(u64::try_from(c).map_err(|_| fg_result::InvalidArgument)?),
        };
        policy
            .settle_settlement(
                owned.as_deref(),
                fg_core::policy::Settle { status, cost },
                (now_ns != 0).then(|| Duration::from_nanos(now_ns)),
            )
            .map_err(|e| fail(&e))
    })
}

/// Changes a policy engine's policy without a restart: `path` (NUL-terminated)
/// is read and compiled, or, with `path` NULL, the file the engine was made
/// from is read again. On any error the running policy stays (a typo never
/// opens the gates) and `fg_last_error` names the problem:
/// `FG_RESULT_INVALID_CONFIG` for an invalid policy or one the engine cannot
/// switch to while running (see the README, "Changing the policy without a
/// restart"). Rules whose name, key and quotas are unchanged keep their
/// counters; requests deciding meanwhile see the old policy or the new one.
/// Safe to call from any thread while others decide (nginx: on `SIGHUP`
/// nginx starts new workers anyway; a long-lived C server calls this).
///
/// # Safety
/// `engine` must come from a constructor; `path` must be NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_reload(
    engine: *const fg_engine,
    path: *const c_char,
) -> fg_result {
    guard(|| {
        // SAFETY: `engine` comes from a constructor per the caller's contract.
        let inner = unsafe { inner(engine) }?;
        let Inner::Policy(policy) = inner else {
            return Err(fg_result::WrongEngineKind);
        };
        if path.is_null() {
            policy.reload().map(|_| ()).map_err(|e| fail(&e))
        } else {
            // SAFETY: `path` is NUL-terminated per this function's contract.
            let path = unsafe { try_cstr(path) }?;
            policy.reload_with(path).map(|_| ()).map_err(|e| fail(&e))
        }
    })
}

/// Whether `engine`'s checks may wait on the network (an engine from
/// `fg_engine_new_redis`, or a policy with rules on a Redis store). A pre-forking server (nginx) may build an engine that does not
/// before it forks and share it with its workers (in memory, each worker then
/// counts apart; a shared-memory store's mapping is inherited, so they count
/// together). An engine that does may be shared too (each process makes its
/// own Redis connections and runtime at its first check), but a worker that
/// builds its own connects, and finds Redis unreachable, at start rather than
/// at its first request: nginx builds one per worker. False for NULL.
///
/// # Safety
/// `engine` must be NULL or come from a constructor.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_may_block(engine: *const fg_engine) -> bool {
    let mut blocks = false;
    guard_void(|| {
        // SAFETY: `engine` is NULL (refused by `inner`) or comes from a
        // constructor per the caller's contract.
        blocks = match unsafe { inner(engine) } {
            Ok(Inner::Policy(policy)) => policy.may_block(),
            Ok(Inner::Redis(_)) => true,
            Ok(Inner::Memory(_)) | Err(_) => false,
        };
    });
    blocks
}

/// Whether a rule that a `method` request to `path` meets keys on a field of
/// the request body (`key = "body:username"`): then read the body (at most
/// `FG_MAX_BODY_BYTES`) and pass it in `fg_request.body`. False for NULL
/// arguments, text that is not UTF-8, and engines without a policy.
///
/// # Safety
/// `engine` must be NULL or come from a constructor; `method` and `path` must
/// point to `method_len` and `path_len` readable bytes (or be NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_reads_body(
    engine: *const fg_engine,
    method: *const c_char,
    method_len: usize,
    path: *const c_char,
    path_len: usize,
) -> bool {
    let mut reads = false;
    guard_void(|| {
        // SAFETY: `engine` is NULL (refused by `inner`) or comes from a
        // constructor; the ranges are readable per the caller's contract.
        let (Ok(Inner::Policy(policy)), Ok(method), Ok(path)) = (
            unsafe { inner(engine) },
            unsafe { try_str(method.cast(), method_len) },
            unsafe { try_str(path.cast(), path_len) },
        ) else {
            return;
        };
        reads = !method.is_empty() && !path.is_empty() && policy.reads_body(method, path);
    });
    reads
}

/// The JSON body of a 413 for a body over `FG_MAX_BODY_BYTES`
/// (`{"error":"payload_too_large"}`, static and NUL-terminated), the same as
/// every other front end's.
#[unsafe(no_mangle)]
pub extern "C" fn fg_too_large_body() -> *const c_char {
    static BODY: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    BODY.get_or_init(|| {
        let body = fg_core::policy::denial_body(413, Duration::ZERO, None);
        std::ffi::CString::new(body).unwrap_or_default()
    })
    .as_ptr()
}

/// Frees a settlement without settling it: its charges stay, and its places
/// in flight are released by the store after `in_flight_ttl` (NULL is ignored).
///
/// # Safety
/// `settlement` must come from a verdict and not be used after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_settlement_free(settlement: *mut fg_settlement) {
    guard_void(|| {
        if !settlement.is_null() {
            // SAFETY: a Box<Settlement> from fill_verdict, freed once.
            drop(unsafe { Box::from_raw(settlement.cast::<fg_core::policy::Settlement>()) });
        }
    });
}

/// Decides one HTTP request with a policy engine (`FG_RESULT_WRONG_ENGINE_KIND`
/// on an engine from quotas). A denial is `FG_RESULT_OK` with
/// `verdict_out->allowed == false` and the status to answer. See `fg_verdict` for
/// the lifetime of its header and rule text. With a Redis store, blocks for at
/// most the configured timeouts.
///
/// # Safety
/// `engine` must come from a constructor; `request` must point to a valid
/// `fg_request` whose ranges are readable; `verdict_out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_check_request(
    engine: *const fg_engine,
    request: *const fg_request,
    verdict_out: *mut fg_verdict,
) -> fg_result {
    // SAFETY: `check_request` has this function's contract.
    guard(|| unsafe { check_request(engine, request, None, None, verdict_out) })
}

/// As `fg_engine_check_request`, at `now_ns` nanoseconds of Unix time (JWT
/// `exp`/`nbf` are checked against it), for replays and tests.
///
/// # Safety
/// As `fg_engine_check_request`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_check_request_at(
    engine: *const fg_engine,
    request: *const fg_request,
    now_ns: u64,
    verdict_out: *mut fg_verdict,
) -> fg_result {
    // SAFETY: `check_request` has this function's contract.
    guard(|| unsafe { check_request(engine, request, Some(now_ns), None, verdict_out) })
}

/// As `fg_engine_check_request`, deciding into `buf`, a buffer the caller owns
/// (`fg_verdict_buf_new`): the verdict's text stays valid until the next check
/// with `buf` or `fg_verdict_buf_free(buf)`, whatever else the thread decides
/// meanwhile. `now_ns`: nanoseconds of Unix time as in
/// `fg_engine_check_request_at`, or 0 for the engine's clock. No allocation on an
/// allowed request once `buf` has grown.
///
/// # Safety
/// As `fg_engine_check_request`; `buf` must come from `fg_verdict_buf_new`, not
/// be freed, and not be used by another thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_check_request_buf(
    engine: *const fg_engine,
    request: *const fg_request,
    now_ns: u64,
    buf: *mut fg_verdict_buf,
    verdict_out: *mut fg_verdict,
) -> fg_result {
    let now = (now_ns != 0).then_some(now_ns);
    // SAFETY: `check_request` has this function's contract.
    guard(|| unsafe { check_request(engine, request, now, Some(buf), verdict_out) })
}

/// `userdata` crosses threads: the C caller promises it may (see fg_event_callback).
struct UserData(*mut c_void);
// SAFETY: the documented contract of fg_engine_set_event_callback makes the
// caller responsible for userdata being usable from any thread.
unsafe impl Send for UserData {}
// SAFETY: the same contract covers sharing: the callback may run on several
// request threads at once with the same userdata.
unsafe impl Sync for UserData {}

/// Sends the policy engine's events (denials, bans, refused tokens, Redis
/// fallbacks...) to `callback(userdata, event)`, on the thread that made the
/// request; NULL `callback` stops them. Replaces any earlier callback.
///
/// # Safety
/// `engine` must come from a constructor. `callback` must be safe to call from
/// any thread with `userdata` until it is replaced or the engine freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_set_event_callback(
    engine: *const fg_engine,
    callback: fg_event_callback,
    userdata: *mut c_void,
) -> fg_result {
    guard(|| {
        // SAFETY: `engine` comes from a constructor per this function's contract.
        let inner = unsafe { inner(engine) }?;
        let Inner::Policy(policy) = inner else {
            return Err(fg_result::WrongEngineKind);
        };
        let Some(cb) = callback else {
            policy.set_event_sink(|_| {});
            return Ok(());
        };
        let data = UserData(userdata);
        policy.set_event_sink(move |e: &Event| {
            let data = &data;
            let ip = e.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
            let rule = e.rule.as_deref().unwrap_or("");
            let key = e.key.as_deref().unwrap_or("");
            let event = fg_event {
                kind: e.kind.c_code().as_ptr(),
                token_problem: e.token_problem.map_or(c"", |p| p.c_code()).as_ptr(),
                rule: rule.as_ptr().cast(),
                rule_len: rule.len(),
                key: key.as_ptr().cast(),
                key_len: key.len(),
                client_ip: ip.as_ptr().cast(),
                client_ip_len: ip.len(),
                status: e.status,
                retry_after_ns: nanos(e.retry_after),
            };
            // SAFETY: the caller's callback and userdata, per the documented contract;
            // `event` and its text outlive the call.
            unsafe { cb(data.0, &event) };
        });
        Ok(())
    })
}

/// Writes the policy engine's counters as Prometheus text into `buf`
/// (NUL-terminated). If `cap` is too small (text length + 1), nothing is written
/// to `buf`, `*len_out` gets the length needed (without the NUL) and the call
/// returns `FG_RESULT_BUFFER_TOO_SMALL`: call again with a bigger buffer. On
/// success `*len_out` gets the text's length.
///
/// # Safety
/// `engine` must come from a constructor; `buf` must be writable for `cap` bytes
/// (NULL with `cap` 0 asks for the size); `len_out` must be writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_engine_metrics(
    engine: *const fg_engine,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> fg_result {
    guard(|| {
        // SAFETY: `engine` comes from a constructor per this function's contract.
        let inner = unsafe { inner(engine) }?;
        let Inner::Policy(policy) = inner else {
            return Err(fg_result::WrongEngineKind);
        };
        // SAFETY: buf/cap/len_out are this function's, under the same contract.
        unsafe { copy_text(&policy.metrics(), buf, cap, len_out) }
    })
}
