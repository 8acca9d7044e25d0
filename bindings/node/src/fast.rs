//! The hot path of `Limiter.check` as a plain Node-API callback.
//!
//! napi-rs's generated glue (class unwrap, borrow registry, an allocated
//! `String` per key, an object built property by property) cost about a
//! microsecond per call, twenty times the check itself. This callback does only
//! what the call needs: it reads the key into a stack buffer and the limiter
//! from an `External` that carries our type tag, and writes the decision's
//! numbers into memory the handle owns, which JS reads through a Float64Array
//! made over it once; `floodgate.js` builds the Decision object, which V8 does
//! in nanoseconds. Errors are thrown with `err.code = 'ERR_FG_...'` like
//! everywhere else in the binding.
#![allow(unsafe_code)] // Node-API calls: every block says why it is sound

use std::cell::Cell;
use std::ffi::{CString, c_void};
use std::mem::MaybeUninit;
use std::ptr;
use std::rc::Rc;
use std::sync::Arc;

use floodgate::{Error, Limiter as CoreLimiter};
use napi::{JsValue, sys};

use crate::{DECISION_FIELDS, Failure, invalid, numbers};

/// Marks the externals made by [`handle`], so that `limiterCheck` never casts a
/// foreign external (or any other value) to a limiter.
const TAG: sys::napi_type_tag = sys::napi_type_tag {
    lower: 0x6a1f_0c3e_9b2d_4f87,
    upper: 0xf100_d6a7_e5c4_b321,
};

/// Keys up to this many bytes are read without allocating.
const STACK_KEY: usize = 1024;

type Thrown = Failure;

fn ok(status: sys::napi_status, what: &str) -> Result<(), Thrown> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Failure::Internal(format!("Node-API call failed: {what}")))
    }
}

/// What a handle points to: the limiter, and the numbers of its last decision.
/// Single-threaded (`Rc`, `Cell`): a handle lives on the JS thread that made it.
struct Handle {
    limiter: Arc<CoreLimiter>,
    out: [Cell<f64>; DECISION_FIELDS as usize],
}

unsafe extern "C" fn release(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is a pointer `Rc::into_raw` gave in `handle`, one per
    // finalizer, and V8 calls each finalizer once, after the last use of its value.
    drop(unsafe { Rc::from_raw(hint.cast::<Handle>()) });
}

/// `[handle, out]`: an external holding `limiter`, and a Float64Array over the
/// memory where `limiterCheck(handle, ...)` writes `[limit, remaining,
/// retryAfterMs, resetAfterMs, quota]`. Each keeps the memory alive.
pub fn handle(env: sys::napi_env, limiter: Arc<CoreLimiter>) -> napi::Result<sys::napi_value> {
    let h = Rc::new(Handle {
        limiter,
        out: Default::default(),
    });
    let fail = |what: &str| napi::Error::from_reason(format!("could not create {what}"));
    let ok = |status: sys::napi_status| status == sys::Status::napi_ok;
    let data = h.out.as_ptr().cast_mut().cast::<c_void>();
    let (mut external, mut buffer, mut view, mut pair) = (
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
    );
    let hint = Rc::into_raw(Rc::clone(&h)).cast_mut().cast::<c_void>();
    // SAFETY: `env` is the live environment of the current call. On success the
    // external owns one `Rc` (its data, and its hint for `release`); on failure
    // it was not made, and the `Rc` is taken back here.
    if !ok(unsafe { sys::napi_create_external(env, hint, Some(release), hint, &mut external) }) {
        // SAFETY: as above.
        drop(unsafe { Rc::from_raw(hint.cast::<Handle>()) });
        return Err(fail("the limiter handle"));
    }
    // SAFETY: `external` was just created in this environment.
    if !ok(unsafe { sys::napi_type_tag_object(env, external, &TAG) }) {
        return Err(fail("the limiter handle's tag"));
    }
    let hint = Rc::into_raw(h).cast_mut().cast::<c_void>();
    let bytes = DECISION_FIELDS as usize * std::mem::size_of::<f64>();
    // SAFETY: `data` points to `bytes` bytes inside the `Rc` allocation, which
    // this array buffer keeps alive through its own `Rc` (freed by `release`).
    if !ok(unsafe {
        sys::napi_create_external_arraybuffer(env, data, bytes, Some(release), hint, &mut buffer)
    }) {
        // SAFETY: the buffer was not made, so its `Rc` is still ours.
        drop(unsafe { Rc::from_raw(hint.cast::<Handle>()) });
        return Err(fail("the decision buffer"));
    }
    // SAFETY: `buffer` was just created with room for DECISION_FIELDS f64s; the
    // array is made of two values of this environment.
    let made = unsafe {
        ok(sys::napi_create_typedarray(
            env,
            sys::TypedarrayType::float64_array,
            DECISION_FIELDS as usize,
            buffer,
            0,
            &mut view,
        )) && ok(sys::napi_create_array_with_length(env, 2, &mut pair))
            && ok(sys::napi_set_element(env, pair, 0, external))
            && ok(sys::napi_set_element(env, pair, 1, view))
    };
    if made {
        Ok(pair)
    } else {
        Err(fail("the decision view"))
    }
}

/// Adds `limiterCheck(handle, key, cost, nowMs?) -> boolean` to `exports`.
pub fn register(env: sys::napi_env, exports: sys::napi_value) -> napi::Result<()> {
    let name = c"limiterCheck";
    let mut f = ptr::null_mut();
    // SAFETY: `env` and `exports` are the module's, during its initialisation;
    // `name` is a NUL-terminated string (length -1 = up to the NUL).
    let status = unsafe {
        sys::napi_create_function(
            env,
            name.as_ptr(),
            -1,
            Some(limiter_check),
            ptr::null_mut(),
            &mut f,
        )
    };
    if status != sys::Status::napi_ok
        // SAFETY: as above; `f` is the function just created.
        || unsafe { sys::napi_set_named_property(env, exports, name.as_ptr(), f) }
            != sys::Status::napi_ok
    {
        return Err(napi::Error::from_reason("could not export limiterCheck"));
    }
    Ok(())
}

unsafe extern "C" fn limiter_check(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    // The core never panics on its hot path; should it, no unwind crosses into V8.
    let result = std::panic::catch_unwind(|| check(env, info))
        .unwrap_or_else(|_| Err(Failure::Internal("panic in limiterCheck".into())));
    match result {
        Ok(v) => v,
        Err(f) => {
            let js_env = napi::Env::from_raw(env);
            match f.object(&js_env) {
                // SAFETY: `env` is the live environment of this call and the error
                // object was just made in it.
                Ok(obj) => unsafe { sys::napi_throw(env, obj.raw()) },
                Err(_) => {
                    let code = CString::new(f.code()).unwrap_or_default();
                    let msg = CString::new(f.message().replace('\0', "\\0")).unwrap_or_default();
                    // SAFETY: as above; both strings are NUL-terminated and
                    // outlive the call, which copies them.
                    unsafe { sys::napi_throw_error(env, code.as_ptr(), msg.as_ptr()) }
                }
            };
            ptr::null_mut()
        }
    }
}

fn double(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<f64, Thrown> {
    let mut n = 0.0;
    // SAFETY: `v` is an argument of the current call; anything but a number
    // fails with a status, not undefined behaviour.
    if unsafe { sys::napi_get_value_double(env, v, &mut n) } == sys::Status::napi_ok {
        Ok(n)
    } else {
        Err(invalid(&format!("{what} must be a number")))
    }
}

/// `limiterCheck(handle, key, cost, nowMs?)`: `floodgate.js` passes `cost`
/// (default applied) always and `nowMs` only when given, so the common call
/// needs no `typeof`.
fn check(env: sys::napi_env, info: sys::napi_callback_info) -> Result<sys::napi_value, Thrown> {
    let mut argv = [ptr::null_mut(); 4];
    let mut argc = argv.len();
    // SAFETY: `info` is this call's; argv has room for `argc` values, and missing
    // arguments are filled with undefined. `argc` becomes the number passed.
    let status = unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            argv.as_mut_ptr(),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    ok(status, "arguments")?;
    let [handle, key, cost, now] = argv;

    let (mut data, mut tagged) = (ptr::null_mut(), false);
    // SAFETY: `handle` is an argument of this call. The first call fails with a
    // status (and throws nothing) on anything but an external; the second only
    // reads the external's tag. Only `handle()` tags values with TAG, and only
    // externals whose data is a pointer from `Rc::into_raw`, alive while the
    // external is (and it is: it is an argument of this call).
    let is_handle = unsafe {
        sys::napi_get_value_external(env, handle, &mut data) == sys::Status::napi_ok
            && sys::napi_check_object_type_tag(env, handle, &TAG, &mut tagged)
                == sys::Status::napi_ok
    };
    if !is_handle || !tagged || data.is_null() {
        return Err(invalid("limiterCheck needs a limiter handle"));
    }
    // SAFETY: as above; borrowed for this call only, on the handle's JS thread.
    let h = unsafe { &*data.cast::<Handle>() };

    let mut stack = [MaybeUninit::<u8>::uninit(); STACK_KEY];
    let heap: Vec<u8>;
    let mut len = 0;
    // SAFETY: writes at most `stack.len()` bytes, NUL included, into `stack`;
    // fails with a status if `key` is not a string.
    let status = unsafe {
        sys::napi_get_value_string_utf8(env, key, stack.as_mut_ptr().cast(), stack.len(), &mut len)
    };
    // A string that did not fit is cut at a character boundary, so up to 3 bytes
    // before the end: only a shorter result is surely whole.
    let key: &[u8] = if status == sys::Status::napi_ok && len + 4 < stack.len() {
        // SAFETY: the call initialised the first `len` bytes.
        unsafe { std::slice::from_raw_parts(stack.as_ptr().cast::<u8>(), len) }
    } else if status == sys::Status::napi_ok {
        // It may not have fit: ask the length, then read it whole.
        // SAFETY: a NULL buffer asks only for the length.
        let status =
            unsafe { sys::napi_get_value_string_utf8(env, key, ptr::null_mut(), 0, &mut len) };
        ok(status, "key")?;
        let mut v = vec![0u8; len + 1];
        // SAFETY: `v` has room for the whole string and its NUL.
        let status = unsafe {
            sys::napi_get_value_string_utf8(env, key, v.as_mut_ptr().cast(), v.len(), &mut len)
        };
        ok(status, "key")?;
        v.truncate(len);
        heap = v;
        &heap
    } else {
        let mut is_buffer = false;
        // SAFETY: `key` is an argument of this call.
        let status = unsafe { sys::napi_is_buffer(env, key, &mut is_buffer) };
        if status != sys::Status::napi_ok || !is_buffer {
            return Err(invalid("key must be a string or a Buffer"));
        }
        let (mut p, mut n) = (ptr::null_mut(), 0);
        // SAFETY: `key` is a Buffer argument of this call.
        let status = unsafe { sys::napi_get_buffer_info(env, key, &mut p, &mut n) };
        ok(status, "key")?;
        if n == 0 || p.is_null() {
            &[]
        } else {
            // SAFETY: a Buffer's `n` bytes at `p`, kept alive by the argument; no
            // JS runs during this call, so nothing writes them meanwhile.
            unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) }
        }
    };

    let cost = Error::cost_from_f64(double(env, cost, "cost")?)?;
    let now = if argc > 3 {
        crate::time(Some(double(env, now, "nowMs")?))?
    } else {
        None
    };
    let d = match now {
        Some(t) => h.limiter.check_at(key, cost, t),
        None => h.limiter.check(key, cost),
    }?;
    for (cell, n) in h.out.iter().zip(numbers(&d)) {
        cell.set(n);
    }
    let mut result = ptr::null_mut();
    // SAFETY: `env` is live; returns the JS boolean singleton.
    let status = unsafe { sys::napi_get_boolean(env, d.allowed, &mut result) };
    ok(status, "result")?;
    Ok(result)
}
