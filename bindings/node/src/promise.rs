//! `RedisLimiter.checkAsync`, `Engine.checkRequestAsync` and
//! `Engine.settleSettlementAsync`: a Promise settled from a tokio runtime
//! through one Node-API threadsafe function per JS thread.
//!
//! napi-rs's `spawn_future` creates a threadsafe function (a libuv handle) for
//! every promise, which made a sequential check over Redis slower than
//! rate-limiter-flexible's. Here the checks run on one tokio worker that owns the
//! multiplexed Redis connection, and each completion travels back through the
//! thread's one threadsafe function, which is referenced (keeps Node alive) only
//! while checks are in flight.
#![allow(unsafe_code)] // Node-API calls: every block says why it is sound

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use floodgate::Decision as CoreDecision;
use floodgate::policy::Verdict as CoreVerdict;
use napi::bindgen_prelude::ToNapiValue;
use napi::{JsValue, sys};
use parking_lot::Mutex;

use crate::request::SettledVerdict;
use crate::{Decision, Failure, Verdict};

/// The threadsafe function of one JS thread, as an address; `None` once Node
/// finalized it. Tokio tasks call it under this lock, so a call never races
/// the finalizer.
type Gate = Arc<Mutex<Option<usize>>>;

struct Channel {
    gate: Gate,
    in_flight: Cell<usize>,
}

thread_local! {
    static CHANNEL: std::cell::RefCell<Option<Channel>> = const { std::cell::RefCell::new(None) };
}

/// What a promise resolves to, converted on the JS thread.
pub enum Done {
    Decision(floodgate::Result<CoreDecision>),
    Verdict(floodgate::Result<CoreVerdict>),
    /// `[verdict, settlement | undefined]` (see [`crate::request::SettledVerdict`]).
    SettledVerdict(floodgate::Result<CoreVerdict>),
    Settled(floodgate::Result<()>),
}

struct Completion {
    deferred: usize,
    result: Done,
}

/// Settles one promise, from any thread (a tokio task, a blocking thread).
pub struct Reply {
    deferred: usize,
    gate: Gate,
}

impl Reply {
    pub fn send(self, result: Done) {
        let data = Box::into_raw(Box::new(Completion {
            deferred: self.deferred,
            result,
        }));
        let guard = self.gate.lock();
        let sent = guard.is_some_and(|tsfn| {
            // SAFETY: `tsfn` is alive: the finalizer takes the gate's lock, which
            // is held here, before Node frees it.
            status_ok(unsafe {
                sys::napi_call_threadsafe_function(
                    tsfn as sys::napi_threadsafe_function,
                    data.cast(),
                    sys::ThreadsafeFunctionCallMode::nonblocking,
                )
            })
        });
        if !sent {
            // Node is shutting down this thread: nobody awaits the promise.
            // SAFETY: `data` was not handed over, so it is still ours.
            drop(unsafe { Box::from_raw(data) });
        }
    }
}

fn status_ok(s: sys::napi_status) -> bool {
    s == sys::Status::napi_ok
}

/// Makes a promise and hands its [`Reply`] to `go`, with the background
/// runtime and whether nothing else is in flight on this thread (then a
/// blocking round trip on a pooled connection can answer sooner than the
/// multiplexed connection's task hand-offs). Returns the promise.
pub fn start(
    env: sys::napi_env,
    go: impl FnOnce(&'static tokio::runtime::Runtime, bool, Reply),
) -> Result<sys::napi_value, &'static str> {
    let rt = floodgate::background_runtime().map_err(|_| "could not start the Redis runtime")?;
    let (gate, alone) = CHANNEL.with(|c| -> Result<(Gate, bool), &'static str> {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(Channel {
                gate: open(env)?,
                in_flight: Cell::new(0),
            });
        }
        let ch = c.as_ref().ok_or("no channel")?;
        let alone = ch.in_flight.get() == 0;
        if alone && let Some(tsfn) = *ch.gate.lock() {
            // SAFETY: on the JS thread that made `tsfn`, which is not finalized
            // (the gate still holds it).
            unsafe {
                sys::napi_ref_threadsafe_function(env, tsfn as sys::napi_threadsafe_function)
            };
        }
        ch.in_flight.set(ch.in_flight.get() + 1);
        Ok((Arc::clone(&ch.gate), alone))
    })?;
    let (mut deferred, mut promise) = (ptr::null_mut(), ptr::null_mut());
    // SAFETY: `env` is the live environment of the current call.
    if !status_ok(unsafe { sys::napi_create_promise(env, &mut deferred, &mut promise) }) {
        done(env);
        return Err("could not create a promise");
    }
    go(
        rt,
        alone,
        Reply {
            deferred: deferred as usize,
            gate,
        },
    );
    Ok(promise)
}

/// One check fewer in flight: unreference the threadsafe function at zero so
/// an idle limiter does not keep Node running.
fn done(env: sys::napi_env) {
    CHANNEL.with(|c| {
        if let Some(ch) = c.borrow().as_ref() {
            let n = ch.in_flight.get().saturating_sub(1);
            ch.in_flight.set(n);
            if n == 0
                && let Some(tsfn) = *ch.gate.lock()
            {
                // SAFETY: on the JS thread that made `tsfn`, not finalized yet.
                unsafe {
                    sys::napi_unref_threadsafe_function(env, tsfn as sys::napi_threadsafe_function)
                };
            }
        }
    });
}

fn open(env: sys::napi_env) -> Result<Gate, &'static str> {
    let gate: Gate = Arc::new(Mutex::new(None));
    let mut name = ptr::null_mut();
    let label = "floodgate.async";
    let mut tsfn = ptr::null_mut();
    let finalize_data = Arc::into_raw(Arc::clone(&gate)).cast_mut().cast::<c_void>();
    // SAFETY: `env` is live; `label` is valid UTF-8 of the given length. On
    // success Node owns `finalize_data` until it calls `finalized` once.
    let made = unsafe {
        status_ok(sys::napi_create_string_utf8(
            env,
            label.as_ptr().cast(),
            label.len() as isize,
            &mut name,
        )) && status_ok(sys::napi_create_threadsafe_function(
            env,
            ptr::null_mut(),
            ptr::null_mut(),
            name,
            0,
            1,
            finalize_data,
            Some(finalized),
            ptr::null_mut(),
            Some(settle),
            &mut tsfn,
        ))
    };
    if !made {
        // SAFETY: Node did not take `finalize_data`.
        drop(unsafe { Arc::from_raw(finalize_data.cast_const().cast::<Mutex<Option<usize>>>()) });
        return Err("could not create the threadsafe function");
    }
    // SAFETY: `tsfn` was just made on this thread; unreferenced until a check
    // is in flight.
    unsafe { sys::napi_unref_threadsafe_function(env, tsfn) };
    *gate.lock() = Some(tsfn as usize);
    Ok(gate)
}

unsafe extern "C" fn finalized(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the `Arc` given to Node in `open`, returned once, here.
    let gate = unsafe { Arc::from_raw(data.cast_const().cast::<Mutex<Option<usize>>>()) };
    *gate.lock() = None;
    // `try_with`: during a thread's teardown the thread-local may be gone already.
    let _ = CHANNEL.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = None;
        }
    });
}

/// Runs on the JS thread for each completion: settles its promise.
unsafe extern "C" fn settle(
    env: sys::napi_env,
    _js_callback: sys::napi_value,
    _context: *mut c_void,
    data: *mut c_void,
) {
    if data.is_null() {
        return;
    }
    // SAFETY: `data` is a `Box<Completion>` from `check`, delivered once.
    let c = unsafe { Box::from_raw(data.cast::<Completion>()) };
    if env.is_null() {
        return; // the environment is going away
    }
    let deferred = c.deferred as sys::napi_deferred;
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: on the JS thread with a live `env`; `deferred` is settled
        // exactly once, here.
        unsafe {
            let value = match c.result {
                Done::Decision(r) => r.map(|d| Decision::to_napi_value(env, Decision::from(d))),
                Done::Verdict(r) => r.map(|v| Verdict::to_napi_value(env, Verdict::from(v))),
                Done::SettledVerdict(r) => {
                    r.map(|v| SettledVerdict::to_napi_value(env, SettledVerdict(v)))
                }
                Done::Settled(r) => r.map(|()| <()>::to_napi_value(env, ())),
            };
            match value {
                Ok(Ok(v)) => sys::napi_resolve_deferred(env, deferred, v),
                Ok(Err(_)) => reject(
                    env,
                    deferred,
                    Failure::Internal("could not convert the result".into()),
                ),
                Err(e) => reject(env, deferred, Failure::Core(e)),
            }
        };
    });
    done(env);
}

/// Rejects with the JS error of `f` (`err.code` and fields).
///
/// # Safety
/// On the JS thread of a live `env`; `deferred` is unsettled and settled here.
unsafe fn reject(env: sys::napi_env, deferred: sys::napi_deferred, f: Failure) -> sys::napi_status {
    let js_env = napi::Env::from_raw(env);
    let value = match f.object(&js_env) {
        Ok(obj) => obj.raw(),
        Err(_) => {
            let mut undefined = ptr::null_mut();
            // SAFETY: `env` is live (the caller's contract).
            unsafe { sys::napi_get_undefined(env, &mut undefined) };
            undefined
        }
    };
    // SAFETY: the caller's contract.
    unsafe { sys::napi_reject_deferred(env, deferred, value) }
}
