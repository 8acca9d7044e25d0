//! `Engine.checkRequest` as a plain Node-API callback: the per-request path of
//! the Express and Fastify middleware.
//!
//! Through napi-rs's generated glue, a request cost ~14 µs on the CI machine
//! (converting a request object property by property, then building a verdict
//! object and a headers map the same way: `perf` showed 80% of the time in
//! `napi_define_properties` and string interning), fifty times the engine's own
//! work. This callback, bound to its engine's handle (`check`, the third of
//! `engine.handle()`), takes the request's parts as arguments (method, path,
//! address, the values of the headers the policy reads, in the order of
//! `engine.requestHeaders`, then the time if given), reads them into one byte
//! arena the handle keeps,
//! decides into the handle's [`VerdictBuf`] (no allocation once warm), writes
//! the verdict's numbers into a Float64Array over the handle's memory, and
//! returns its strings (rule, identity, header values, body) as one JS string,
//! which `floodgate.js` slices by the lengths the numbers give.
//!
//! `out` layout (see [`Slot`]): allowed, status, retryAfterMs, resetAfterMs,
//! limit, remaining, authenticated, reason (index into the core's
//! `Reason::ALL`), tokenProblem (index into `TokenProblem::ALL`, -1 for none),
//! then the UTF-16 lengths of rule and identity (-1 for none) and body, the
//! header count, whether the verdict has a settlement (then `engineSettlement`
//! takes it), and per header its name (index into `RESPONSE_HEADERS`) and
//! value length.
//!
//! Settlement (`Engine.settle`): `engineSettlement(handle)` wraps the last
//! verdict's settlement in an external (tagged, freed by the GC when the
//! verdict goes), which `floodgate.js` keeps on the verdict under a symbol;
//! `engineSettle(handle, settlement, status, cost, nowMs)` settles it.
#![allow(unsafe_code)] // Node-API calls: every block says why it is sound

use std::cell::{Cell, RefCell};
use std::ptr;
use std::sync::Arc;

use std::ffi::c_void;

use floodgate::policy::{
    Engine as CoreEngine, Reason, Request, Settle, Settlement, TokenProblem, VerdictBuf,
    parse_client_ip, response_header_index,
};
use napi::sys;

use crate::fast::{
    Numbers, Thrown, args, bound_args, cb_info, double, export, make_handle, ok, run, unwrap_handle,
};
use crate::{Failure, invalid, ms};

/// Marks the externals of engine handles (which the settlement functions take).
const TAG: sys::napi_type_tag = sys::napi_type_tag {
    lower: 0x3c0f_5e1d_8a72_4b96,
    upper: 0xf100_e9b8_c4d3_a210,
};

/// Headers a verdict carries at most (a 429 in the draft-6 style has 5).
const MAX_HEADERS: usize = 8;

/// The check's fixed arguments: method, path, clientIp; the header values and
/// the time (when given) follow.
const FIXED_ARGS: usize = 3;

/// Arguments read on the stack: the fixed ones, up to 12 header values (a
/// policy reads a few) and the time; more are read into a vector.
const STACK_ARGS: usize = FIXED_ARGS + 12 + 1;

/// Header values a policy may read at most through this path.
const MAX_HEADER_ARGS: usize = 32;

/// Header values read on the stack (more go through vectors).
const STACK_HEADERS: usize = 8;

/// The slots of the `out` view.
#[repr(usize)]
#[derive(Clone, Copy)]
enum Slot {
    Allowed,
    Status,
    RetryAfterMs,
    ResetAfterMs,
    Limit,
    Remaining,
    Authenticated,
    Reason,
    TokenProblem,
    RuleLen,
    IdentityLen,
    BodyLen,
    HeaderCount,
    /// 1 when the verdict has a settlement.
    Settle,
    /// Then `(name, value length)` per header.
    Headers,
}

/// How many numbers the `out` view holds.
pub const FIELDS: usize = Slot::Headers as usize + 2 * MAX_HEADERS;

/// What an engine handle points to. Single-threaded (`Rc`, `Cell`,
/// `RefCell`): a handle lives on the JS thread that made it, and a call never
/// re-enters (no JS runs while the engine decides).
struct Handle {
    engine: Arc<CoreEngine>,
    out: [Cell<f64>; FIELDS],
    /// The request's strings, back to back (reused: grows to the largest request).
    arena: RefCell<Arena>,
    verdict: RefCell<VerdictBuf>,
    /// The verdict's strings, back to back, for the one JS string returned.
    text: RefCell<String>,
    /// The last verdict's settlement, until `engineSettlement` takes it.
    pending: RefCell<Option<Settlement>>,
}

/// Marks settlement externals.
const SETTLEMENT_TAG: sys::napi_type_tag = sys::napi_type_tag {
    lower: 0x5e77_1e30_c0de_4a11,
    upper: 0xf100_5e77_1e00_0001,
};

impl Numbers for Handle {
    fn out(&self) -> &[Cell<f64>] {
        &self.out
    }
}

/// `[handle, out, check]`: `check(method, path, clientIp, ...headerValues,
/// nowMs?)` is the engine's bound check (see the module docs).
pub fn handle(env: sys::napi_env, engine: Arc<CoreEngine>) -> napi::Result<sys::napi_value> {
    // Bound to the engine: the handle owns both and drops them together.
    let verdict = engine.verdict_buf();
    make_handle(
        env,
        Handle {
            engine,
            out: std::array::from_fn(|_| Cell::new(0.0)),
            arena: RefCell::new(Arena::default()),
            verdict: RefCell::new(verdict),
            text: RefCell::new(String::with_capacity(256)),
            pending: RefCell::new(None),
        },
        Some(&TAG),
        engine_check,
    )
}

/// Adds `engineSettlement(handle)` and `engineSettle(handle, ...)`.
pub fn register(env: sys::napi_env, exports: sys::napi_value) -> napi::Result<()> {
    export(env, exports, c"engineSettlement", engine_settlement)?;
    export(env, exports, c"engineSettle", engine_settle)
}

unsafe extern "C" fn engine_settlement(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    run(env, "engineSettlement", || take_settlement(env, info))
}

unsafe extern "C" fn engine_settle(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    run(env, "engineSettle", || settle(env, info))
}

unsafe extern "C" fn drop_settlement(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    if !data.is_null() {
        // SAFETY: `data` is the Box made in `take_settlement`, freed once here.
        drop(unsafe { Box::from_raw(data.cast::<Settlement>()) });
    }
}

/// `engineSettlement(handle)`: the last verdict's settlement as an external, or
/// undefined.
fn take_settlement(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Result<sys::napi_value, Thrown> {
    let ([handle], _) = args::<1>(env, info)?;
    // SAFETY: TAG marks engine `Handle`s only; `handle` is an argument of this call.
    let h = unsafe { unwrap_handle::<Handle>(env, handle, &TAG, "engineSettlement")? };
    let taken = h
        .pending
        .try_borrow_mut()
        .map_err(|_| invalid("engineSettlement re-entered"))?
        .take();
    match taken {
        Some(s) => settlement_value(env, s),
        None => undefined(env),
    }
}

/// `s` as a tagged external (what `engineSettle` takes), freed by the GC.
pub(crate) fn settlement_value(
    env: sys::napi_env,
    s: Settlement,
) -> Result<sys::napi_value, Thrown> {
    let mut result = ptr::null_mut();
    let data = Box::into_raw(Box::new(s)).cast::<c_void>();
    // SAFETY: on success the external owns `data` (freed by drop_settlement);
    // on failure it was not made and the Box is taken back.
    let status = unsafe {
        sys::napi_create_external(
            env,
            data,
            Some(drop_settlement),
            ptr::null_mut(),
            &mut result,
        )
    };
    if status != sys::Status::napi_ok {
        // SAFETY: not owned by an external: still ours.
        drop(unsafe { Box::from_raw(data.cast::<Settlement>()) });
        return Err(invalid("could not create the settlement"));
    }
    // SAFETY: `result` was just created in this environment.
    let status = unsafe { sys::napi_type_tag_object(env, result, &SETTLEMENT_TAG) };
    ok(status, "the settlement's tag")?;
    Ok(result)
}

pub(crate) fn undefined(env: sys::napi_env) -> Result<sys::napi_value, Thrown> {
    let mut result = ptr::null_mut();
    // SAFETY: `env` is the live environment of the current call.
    let status = unsafe { sys::napi_get_undefined(env, &mut result) };
    ok(status, "undefined")?;
    Ok(result)
}

/// `engineSettle(handle, settlement, status, cost, nowMs)`; `cost` and `nowMs`
/// may be undefined or null.
fn settle(env: sys::napi_env, info: sys::napi_callback_info) -> Result<sys::napi_value, Thrown> {
    let ([handle, settlement, status, cost, now], _) = args::<5>(env, info)?;
    // SAFETY: TAG marks engine `Handle`s only; `handle` is an argument of this call.
    let h = unsafe { unwrap_handle::<Handle>(env, handle, &TAG, "engineSettle")? };
    let s = settlement_of(env, settlement)?;
    let (outcome, now) = outcome_of(env, status, cost, now)?;
    h.engine.settle_settlement(Some(&s), outcome, now)?;
    undefined(env)
}

/// The settlement in an external `settlement_value` made (a clone: clones
/// share one settled flag, so it is still settled once).
pub(crate) fn settlement_of(
    env: sys::napi_env,
    settlement: sys::napi_value,
) -> Result<Settlement, Thrown> {
    let (mut data, mut tagged) = (ptr::null_mut(), false);
    // SAFETY: fails with a status on anything but an external; then only reads its tag.
    let is_settlement = unsafe {
        sys::napi_get_value_external(env, settlement, &mut data) == sys::Status::napi_ok
            && sys::napi_check_object_type_tag(env, settlement, &SETTLEMENT_TAG, &mut tagged)
                == sys::Status::napi_ok
    };
    if !is_settlement || !tagged || data.is_null() {
        return Err(invalid("settle needs a verdict from checkRequest"));
    }
    // SAFETY: only `settlement_value` tags externals with SETTLEMENT_TAG; their
    // data is a live Box<Settlement> while the external is (an argument here).
    let s = unsafe { &*data.cast::<Settlement>() };
    Ok(s.clone())
}

/// `status`, `cost` and `nowMs` of a settlement (`cost` and `nowMs` may be
/// undefined or null).
pub(crate) fn outcome_of(
    env: sys::napi_env,
    status: sys::napi_value,
    cost: sys::napi_value,
    now: sys::napi_value,
) -> Result<(Settle, Option<std::time::Duration>), Thrown> {
    let status = double(env, status, "status")?;
    let status = if status.fract() == 0.0 && (0.0..=65535.0).contains(&status) {
        status as u16
    } else {
        0 // refused by the core as out of range
    };
    let cost = if absent(type_of(env, cost)?) {
        None
    } else {
        Some(floodgate::Error::cost_from_f64(double(env, cost, "cost")?)?)
    };
    let now = if absent(type_of(env, now)?) {
        None
    } else {
        crate::time(Some(double(env, now, "nowMs")?))?
    };
    Ok((Settle { status, cost }, now))
}

unsafe extern "C" fn engine_check(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    run(env, "Engine.checkRequest", || check(env, info))
}

fn type_of(env: sys::napi_env, v: sys::napi_value) -> Result<sys::napi_valuetype, Thrown> {
    let mut t = 0;
    // SAFETY: `v` is an argument of the current call.
    ok(unsafe { sys::napi_typeof(env, v, &mut t) }, "typeof")?;
    Ok(t)
}

fn absent(t: sys::napi_valuetype) -> bool {
    t == sys::ValueType::napi_undefined || t == sys::ValueType::napi_null
}

/// The request's strings, back to back. The vector stays at its grown length
/// (zeroed once), and `used` marks the end of this call's strings, so reading
/// a string writes into initialised memory without zeroing it again.
#[derive(Default)]
struct Arena {
    bytes: Vec<u8>,
    used: usize,
}

impl Arena {
    /// At least `n` writable bytes after `used`.
    fn room(&mut self, n: usize) -> &mut [u8] {
        if self.bytes.len() < self.used + n {
            self.bytes.resize(self.used + n, 0);
        }
        self.bytes.get_mut(self.used..).unwrap_or_default()
    }
}

/// `n` slots: the first `n` of `stack`, or `n` copies of `fill` in `heap`
/// when they do not fit.
fn slots<'a, T: Clone>(stack: &'a mut [T], heap: &'a mut Vec<T>, n: usize, fill: T) -> &'a mut [T] {
    if n <= stack.len() {
        stack.get_mut(..n).unwrap_or_default()
    } else {
        *heap = vec![fill; n];
        heap
    }
}

/// Appends string `v` to `arena` and returns its byte range, or `None` if `v`
/// is not a string (asked first and `typeof` only then: a `napi_typeof` per
/// optional argument was ~160 instructions of the usual request).
fn try_string(
    env: sys::napi_env,
    v: sys::napi_value,
    arena: &mut Arena,
    what: &str,
) -> Result<Option<std::ops::Range<usize>>, Thrown> {
    const ROOM: usize = 256;
    let start = arena.used;
    let mut len = 0;
    let spare = arena.room(ROOM);
    // SAFETY: writes at most `spare.len()` bytes, NUL included, into `spare`;
    // fails with a status (no write) if `v` is not a string.
    let status = unsafe {
        sys::napi_get_value_string_utf8(env, v, spare.as_mut_ptr().cast(), spare.len(), &mut len)
    };
    if status == sys::Status::napi_string_expected {
        return Ok(None);
    }
    ok(status, what)?;
    // A string that did not fit is cut at a character boundary, so up to 3 bytes
    // before the end: only a shorter result is surely whole.
    if len + 4 >= spare.len() {
        len = read_long(env, v, arena, what)?;
    }
    arena.used = start + len;
    Ok(Some(start..start + len))
}

/// Reads string `v`, longer than [`try_string`]'s first try, whole into
/// `arena` after `used`; its length in bytes. Out of line, with the other
/// rare paths of a check (`cold`): a check's code is cold between real
/// requests, so each 64-byte line it runs is a cache miss there
/// (benches/README.md), and rare code between the common lines adds lines.
#[cold]
#[inline(never)]
fn read_long(
    env: sys::napi_env,
    v: sys::napi_value,
    arena: &mut Arena,
    what: &str,
) -> Result<usize, Thrown> {
    let mut len = 0;
    // SAFETY: a NULL buffer asks only for the length.
    let status = unsafe { sys::napi_get_value_string_utf8(env, v, ptr::null_mut(), 0, &mut len) };
    ok(status, what)?;
    let spare = arena.room(len + 1);
    // SAFETY: `spare` has room for the whole string and its NUL.
    let status = unsafe {
        sys::napi_get_value_string_utf8(env, v, spare.as_mut_ptr().cast(), spare.len(), &mut len)
    };
    ok(status, what)?;
    Ok(len)
}

/// `what must be a string` (out of line: see [`read_long`]).
#[cold]
#[inline(never)]
fn not_a_string(what: &str) -> Failure {
    invalid(&format!("{what} must be a string"))
}

/// [`try_string`] for a string argument that must be there.
fn read_string(
    env: sys::napi_env,
    v: sys::napi_value,
    arena: &mut Arena,
    what: &str,
) -> Result<std::ops::Range<usize>, Thrown> {
    try_string(env, v, arena, what)?.ok_or_else(|| not_a_string(what))
}

/// [`try_string`] for an optional string argument: undefined and null are
/// `None`, anything else but a string an error.
fn optional_string(
    env: sys::napi_env,
    v: sys::napi_value,
    arena: &mut Arena,
    what: &str,
) -> Result<Option<std::ops::Range<usize>>, Thrown> {
    match try_string(env, v, arena, what)? {
        Some(range) => Ok(Some(range)),
        None if absent(type_of(env, v)?) => Ok(None),
        None => Err(not_a_string(what)),
    }
}

/// A string of the arena, validated once as a whole (Node-API wrote valid
/// UTF-8, lone surrogates as U+FFFD, so every string starts and ends on a
/// character boundary): one `from_utf8` per call instead of one per string.
fn text<'a>(arena: &'a str, range: &std::ops::Range<usize>) -> &'a str {
    arena.get(range.clone()).unwrap_or_default()
}

/// The verdict's text pieces, in the order `check` writes them: the rule, the
/// identity, each header value, the body. Their lengths go into `out` in bytes;
/// when the text is not ASCII (a rule or key with other characters) they are
/// turned into UTF-16 code units (JS string indices) here, so the usual ASCII
/// verdict is scanned once (for Latin-1) instead of once per piece.
fn utf16_lengths(text: &str, out: &[Cell<f64>], header_count: usize) {
    let mut at = 0;
    let slots = [Slot::RuleLen as usize, Slot::IdentityLen as usize]
        .into_iter()
        .chain((0..header_count).map(|i| Slot::Headers as usize + 2 * i + 1))
        .chain([Slot::BodyLen as usize]);
    for slot in slots {
        let Some(c) = out.get(slot) else { continue };
        let n = c.get();
        if n < 0.0 {
            continue;
        }
        let end = at + n as usize;
        c.set(text.get(at..end).map_or(0, |s| s.encode_utf16().count()) as f64);
        at = end;
    }
}

/// The first `n` arguments of this call, in a vector (a policy reading more
/// headers than the stack holds; out of line: see [`read_long`]).
#[cold]
#[inline(never)]
fn all_args(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    n: usize,
) -> Result<Vec<sys::napi_value>, Thrown> {
    let mut v = vec![ptr::null_mut(); n];
    cb_info(env, info, &mut v)?;
    Ok(v)
}

/// A verdict header the JS side has no name for: a bug (out of line).
#[cold]
#[inline(never)]
fn unlisted(name: &str) -> Failure {
    Failure::Internal(format!("header {name} is not in RESPONSE_HEADERS"))
}

fn check(env: sys::napi_env, info: sys::napi_callback_info) -> Result<sys::napi_value, Thrown> {
    // SAFETY: `engine_check` is only bound to engine `Handle`s (`handle` above).
    let (stack_argv, mut argc, h) = unsafe { bound_args::<Handle, STACK_ARGS>(env, info)? };
    let [method, path, ip, ..] = stack_argv;
    let names = h.engine.request_headers();
    if names.len() > MAX_HEADER_ARGS {
        return Err(invalid("checkRequest: the policy reads too many headers"));
    }
    // A policy reading more headers than the stack holds: read them all again.
    let heap_argv: Vec<sys::napi_value>;
    let argv: &[sys::napi_value] = if argc > STACK_ARGS && names.len() + FIXED_ARGS >= STACK_ARGS {
        heap_argv = all_args(env, info, (FIXED_ARGS + names.len() + 1).min(argc))?;
        argc = argc.min(heap_argv.len());
        &heap_argv
    } else {
        argc = argc.min(STACK_ARGS);
        &stack_argv
    };
    let mut arena = h
        .arena
        .try_borrow_mut()
        .map_err(|_| invalid("checkRequest re-entered"))?;
    arena.used = 0;
    let method = read_string(env, method, &mut arena, "method")?;
    let path = read_string(env, path, &mut arena, "path")?;
    let ip = optional_string(env, ip, &mut arena, "clientIp")?;
    // The time, after the header values: passed only when given (a
    // `typeof` of an undefined one cost ~150 instructions per request).
    let now = match argv.get(FIXED_ARGS + names.len()) {
        Some(&now) if FIXED_ARGS + names.len() < argc => {
            if absent(type_of(env, now)?) {
                None
            } else {
                crate::time(Some(double(env, now, "nowMs")?))?
            }
        }
        _ => None,
    };
    // Header values: argument FIXED_ARGS + i is the value of `names[i]`, or
    // undefined.
    // On the stack for the few headers a policy reads (arrays of all
    // MAX_HEADER_ARGS were 1.5 KB of stores per call, the hottest
    // instructions of this function in a Fastify server's profile).
    let mut stack_ranges: [Option<std::ops::Range<usize>>; STACK_HEADERS] = Default::default();
    let mut heap_ranges = Vec::new();
    let ranges = slots(&mut stack_ranges, &mut heap_ranges, names.len(), None);
    for (i, (slot, value)) in ranges
        .iter_mut()
        .zip(argv.iter().skip(FIXED_ARGS))
        .enumerate()
    {
        if FIXED_ARGS + i >= argc {
            break;
        }
        // Anything but a string is no value, asked no `typeof`: floodgate.js
        // passes a string or undefined (`headerText`), and the usual request
        // lacks some of the headers a policy reads (an API key, a token), each
        // a `napi_typeof` of ~150 instructions before.
        *slot = try_string(env, *value, &mut arena, "a header value")?;
    }
    let arena =
        std::str::from_utf8(arena.bytes.get(..arena.used).unwrap_or_default()).unwrap_or_default();
    let mut stack_pairs = [("", ""); STACK_HEADERS];
    let mut heap_pairs = Vec::new();
    let pairs = slots(&mut stack_pairs, &mut heap_pairs, names.len(), ("", ""));
    let mut n = 0;
    for (name, range) in names.iter().zip(ranges.iter()) {
        if let (Some(range), Some(pair)) = (range, pairs.get_mut(n)) {
            *pair = (name.as_str(), text(arena, range));
            n += 1;
        }
    }
    let client_ip = match &ip {
        Some(r) => Some(parse_client_ip(text(arena, r))?),
        None => None,
    };
    let req = Request {
        method: text(arena, &method),
        path: text(arena, &path),
        client_ip,
        headers: pairs.get(..n).unwrap_or_default(),
        // The raw path carries no body: floodgate.js sends a request with one
        // through `checkRequestSettled`.
        body: None,
    };
    let mut buf = h
        .verdict
        .try_borrow_mut()
        .map_err(|_| invalid("checkRequest re-entered"))?;
    h.engine.check_request_into(&req, now, &mut buf)?;
    let v = buf.verdict();

    let set = |slot: usize, x: f64| {
        if let Some(c) = h.out.get(slot) {
            c.set(x);
        }
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    set(Slot::Allowed as usize, flag(v.allowed));
    set(Slot::Status as usize, f64::from(v.status));
    set(Slot::RetryAfterMs as usize, ms(v.retry_after));
    set(Slot::ResetAfterMs as usize, ms(v.reset_after));
    set(Slot::Limit as usize, v.limit as f64);
    set(Slot::Remaining as usize, v.remaining as f64);
    set(Slot::Authenticated as usize, flag(v.authenticated));
    let index = |i: Option<usize>| i.map_or(-1.0, |i| i as f64);
    set(
        Slot::Reason as usize,
        index(Reason::ALL.iter().position(|r| *r == v.reason)),
    );
    set(
        Slot::TokenProblem as usize,
        index(
            v.token_problem
                .and_then(|p| TokenProblem::ALL.iter().position(|q| *q == p)),
        ),
    );

    let mut text = h
        .text
        .try_borrow_mut()
        .map_err(|_| invalid("checkRequest re-entered"))?;
    text.clear();
    let mut piece = |slot: usize, s: Option<&str>| {
        set(slot, s.map_or(-1.0, |s| s.len() as f64));
        text.push_str(s.unwrap_or_default());
    };
    piece(Slot::RuleLen as usize, v.rule.as_deref());
    piece(Slot::IdentityLen as usize, v.identity.as_deref());
    let mut count = 0;
    for (name, value) in v.headers.iter().take(MAX_HEADERS) {
        let Some(i) = response_header_index(name) else {
            return Err(unlisted(name));
        };
        let at = Slot::Headers as usize + 2 * count;
        set(at, i as f64);
        piece(at + 1, Some(value));
        count += 1;
    }
    set(Slot::HeaderCount as usize, count as f64);
    set(Slot::Settle as usize, flag(v.settlement.is_some()));
    *h.pending
        .try_borrow_mut()
        .map_err(|_| invalid("checkRequest re-entered"))? = v.settlement.clone();
    // The body straight into the text (no string of its own per denial).
    let start = text.len();
    v.body_into(&mut text);
    set(Slot::BodyLen as usize, (text.len() - start) as f64);
    let ascii = text.is_ascii();
    if !ascii {
        utf16_lengths(&text, &h.out, count);
    }

    let mut result = ptr::null_mut();
    // ASCII (the usual verdict) is the same bytes in Latin-1, which V8 copies
    // without decoding. SAFETY: `text` is `text.len()` bytes of valid UTF-8 (and
    // of Latin-1 when ASCII); the call copies them.
    let status = unsafe {
        if ascii {
            sys::napi_create_string_latin1(
                env,
                text.as_ptr().cast(),
                text.len() as isize,
                &mut result,
            )
        } else {
            sys::napi_create_string_utf8(
                env,
                text.as_ptr().cast(),
                text.len() as isize,
                &mut result,
            )
        }
    };
    ok(status, "the verdict's text")?;
    Ok(result)
}

/// A verdict and its settlement, resolved as `[verdict, settlement | undefined]`
/// (`checkRequestAsync` in floodgate.js keeps the settlement on the verdict).
pub struct SettledVerdict(pub floodgate::policy::Verdict);

impl napi::bindgen_prelude::TypeName for SettledVerdict {
    fn type_name() -> &'static str {
        "[Verdict, unknown]"
    }

    fn value_type() -> napi::ValueType {
        napi::ValueType::Object
    }
}

impl napi::bindgen_prelude::ToNapiValue for SettledVerdict {
    unsafe fn to_napi_value(
        env: napi::sys::napi_env,
        val: Self,
    ) -> napi::Result<napi::sys::napi_value> {
        let settlement = val.0.settlement.clone();
        // SAFETY: `env` is the live environment napi-rs resolves the task in.
        let verdict = unsafe {
            <crate::Verdict as napi::bindgen_prelude::ToNapiValue>::to_napi_value(
                env,
                crate::Verdict::from(val.0),
            )?
        };
        let second = match settlement {
            Some(s) => settlement_value(env, s),
            None => undefined(env),
        }
        .map_err(|f| napi::Error::from_reason(f.message()))?;
        let mut pair = std::ptr::null_mut();
        // SAFETY: as above; the array is made of two values of this environment.
        let made = unsafe {
            napi::sys::napi_create_array_with_length(env, 2, &mut pair)
                == napi::sys::Status::napi_ok
                && napi::sys::napi_set_element(env, pair, 0, verdict) == napi::sys::Status::napi_ok
                && napi::sys::napi_set_element(env, pair, 1, second) == napi::sys::Status::napi_ok
        };
        if made {
            Ok(pair)
        } else {
            Err(napi::Error::from_reason(
                "could not create the verdict pair",
            ))
        }
    }
}
