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

/// Keys up to this many bytes are read without allocating.
const STACK_KEY: usize = 1024;

pub(crate) type Thrown = Failure;

pub(crate) fn ok(status: sys::napi_status, what: &str) -> Result<(), Thrown> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(Failure::Internal(format!("Node-API call failed: {what}")))
    }
}

/// What a limiter handle points to: the limiter, and the numbers of its last
/// decision. Single-threaded (`Rc`, `Cell`): a handle lives on the JS thread
/// that made it.
struct Handle {
    limiter: Arc<CoreLimiter>,
    out: [Cell<f64>; DECISION_FIELDS as usize],
}

/// A value behind a handle: where its numbers go.
pub(crate) trait Numbers {
    /// The `f64`s a Float64Array shows.
    fn out(&self) -> &[Cell<f64>];
}

impl Numbers for Handle {
    fn out(&self) -> &[Cell<f64>] {
        &self.out
    }
}

unsafe extern "C" fn release<T>(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is a pointer `Rc::<T>::into_raw` gave in `make_handle::<T>`,
    // one per finalizer, and V8 calls each finalizer once, after the last use of
    // its value.
    drop(unsafe { Rc::from_raw(hint.cast::<T>()) });
}

/// `[undefined, out, check]` for a limiter: see [`make_handle`] (nothing
/// takes a limiter's handle: its one raw function is bound to it).
pub fn handle(env: sys::napi_env, limiter: Arc<CoreLimiter>) -> napi::Result<sys::napi_value> {
    make_handle(
        env,
        Handle {
            limiter,
            out: Default::default(),
        },
        None,
        limiter_check,
    )
}

/// `[handle, out, check]`: an external holding `value`, tagged with `tag`
/// (undefined without a tag: for a value no raw function takes as an
/// argument); a Float64Array over `value.out()`, where the raw functions write
/// their numbers; and a function running `check` bound to the value (its
/// callback data, read by [`bound_args`]). Each keeps the value alive.
///
/// The bound function is the hot path: it finds its value in its own data
/// instead of unwrapping a handle argument, whose two Node-API calls (the
/// external, its type tag) were ~230 of the ~5,600 instructions of a
/// Fastify request's check (callgrind, 2026-12-07).
pub(crate) fn make_handle<T: Numbers + 'static>(
    env: sys::napi_env,
    value: T,
    tag: Option<&sys::napi_type_tag>,
    check: unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value,
) -> napi::Result<sys::napi_value> {
    let h = Rc::new(value);
    let fail = |what: &str| napi::Error::from_reason(format!("could not create {what}"));
    let ok = |status: sys::napi_status| status == sys::Status::napi_ok;
    let fields = h.out().len();
    let data = h.out().as_ptr().cast_mut().cast::<c_void>();
    let (mut external, mut buffer, mut view, mut function, mut triple) = (
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
        ptr::null_mut(),
    );
    match tag {
        Some(tag) => {
            let hint = Rc::into_raw(Rc::clone(&h)).cast_mut().cast::<c_void>();
            // SAFETY: `env` is the live environment of the current call. On
            // success the external owns one `Rc` (its data, and its hint for
            // `release`); on failure it was not made, and the `Rc` is taken
            // back here.
            if !ok(unsafe {
                sys::napi_create_external(env, hint, Some(release::<T>), hint, &mut external)
            }) {
                // SAFETY: the external was not made, so this `Rc` is still ours.
                drop(unsafe { Rc::from_raw(hint.cast::<T>()) });
                return Err(fail("the handle"));
            }
            // SAFETY: `external` was just created in this environment.
            if !ok(unsafe { sys::napi_type_tag_object(env, external, tag) }) {
                return Err(fail("the handle's tag"));
            }
        }
        None => {
            // SAFETY: `env` is the live environment of the current call.
            if !ok(unsafe { sys::napi_get_undefined(env, &mut external) }) {
                return Err(fail("the handle"));
            }
        }
    }
    let bound = Rc::into_raw(Rc::clone(&h)).cast_mut().cast::<c_void>();
    // SAFETY: `env` is live; `bound` is an `Rc` the function's finalizer frees
    // (once, after the function's last call), and the function's callbacks
    // read it as their data. On failure the function was not made, or made
    // without its finalizer (then it is never called: it is dropped here
    // unreturned), and the `Rc` is taken back.
    let made = unsafe {
        sys::napi_create_function(env, c"check".as_ptr(), 5, Some(check), bound, &mut function)
            == sys::Status::napi_ok
            && sys::napi_add_finalizer(
                env,
                function,
                bound,
                Some(release::<T>),
                bound, // `release` frees its hint
                ptr::null_mut(),
            ) == sys::Status::napi_ok
    };
    if !made {
        // SAFETY: no finalizer holds this `Rc`.
        drop(unsafe { Rc::from_raw(bound.cast::<T>()) });
        return Err(fail("the bound check"));
    }
    let hint = Rc::into_raw(h).cast_mut().cast::<c_void>();
    let bytes = fields * std::mem::size_of::<f64>();
    // SAFETY: `data` points to `fields` f64 cells (Cell<f64> has f64's layout)
    // inside the `Rc` allocation, which this array buffer keeps alive through its
    // own `Rc` (freed by `release`).
    if !ok(unsafe {
        sys::napi_create_external_arraybuffer(
            env,
            data,
            bytes,
            Some(release::<T>),
            hint,
            &mut buffer,
        )
    }) {
        // SAFETY: the buffer was not made, so its `Rc` is still ours.
        drop(unsafe { Rc::from_raw(hint.cast::<T>()) });
        return Err(fail("the numbers buffer"));
    }
    // SAFETY: `buffer` was just created with room for `fields` f64s; the array
    // is made of two values of this environment.
    let made = unsafe {
        ok(sys::napi_create_typedarray(
            env,
            sys::TypedarrayType::float64_array,
            fields,
            buffer,
            0,
            &mut view,
        )) && ok(sys::napi_create_array_with_length(env, 3, &mut triple))
            && ok(sys::napi_set_element(env, triple, 0, external))
            && ok(sys::napi_set_element(env, triple, 1, view))
            && ok(sys::napi_set_element(env, triple, 2, function))
    };
    if made {
        Ok(triple)
    } else {
        Err(fail("the numbers view"))
    }
}

/// The value behind `handle` if it is an external tagged `tag` (so made by
/// [`make_handle::<T>`] with that tag), else an `ERR_FG_INVALID_ARGUMENT`.
///
/// # Safety
/// `tag` must be used with one type `T` only, and `handle` must be an argument
/// of the current call (which keeps it alive for the call). The reference is
/// for this call only, on the JS thread.
pub(crate) unsafe fn unwrap_handle<'a, T>(
    env: sys::napi_env,
    handle: sys::napi_value,
    tag: &sys::napi_type_tag,
    what: &str,
) -> Result<&'a T, Thrown> {
    let (mut data, mut tagged) = (ptr::null_mut(), false);
    // SAFETY: the first call fails with a status (and throws nothing) on
    // anything but an external; the second only reads the external's tag.
    let is_handle = unsafe {
        sys::napi_get_value_external(env, handle, &mut data) == sys::Status::napi_ok
            && sys::napi_check_object_type_tag(env, handle, tag, &mut tagged)
                == sys::Status::napi_ok
    };
    if !is_handle || !tagged || data.is_null() {
        return Err(invalid(&format!("{what} needs its handle")));
    }
    // SAFETY: only `make_handle::<T>` tags externals with `tag` (the caller's
    // contract), and their data is a pointer from `Rc::into_raw`, alive while
    // the external is.
    Ok(unsafe { &*data.cast::<T>() })
}

/// Exports `f` as `name` on `exports`.
pub(crate) fn export(
    env: sys::napi_env,
    exports: sys::napi_value,
    name: &std::ffi::CStr,
    f: unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value,
) -> napi::Result<()> {
    let mut value = ptr::null_mut();
    // SAFETY: `env` and `exports` are the module's, during its initialisation;
    // `name` is a NUL-terminated string (length -1 = up to the NUL).
    let status = unsafe {
        sys::napi_create_function(env, name.as_ptr(), -1, Some(f), ptr::null_mut(), &mut value)
    };
    if status != sys::Status::napi_ok
        // SAFETY: as above; `value` is the function just created.
        || unsafe { sys::napi_set_named_property(env, exports, name.as_ptr(), value) }
            != sys::Status::napi_ok
    {
        return Err(napi::Error::from_reason(format!(
            "could not export {}",
            name.to_string_lossy()
        )));
    }
    Ok(())
}

/// Runs `f` (a raw callback's body) with no unwind crossing into V8, and throws
/// its failure as a JS error with `err.code = 'ERR_FG_...'` and the error's
/// fields. Returns NULL (undefined) after throwing.
pub(crate) fn run(
    env: sys::napi_env,
    what: &str,
    f: impl FnOnce() -> Result<sys::napi_value, Thrown>,
) -> sys::napi_value {
    // The core never panics on its hot path; should it, no unwind crosses into V8.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Failure::Internal(format!("panic in {what}"))));
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

/// Fills `argv` with this call's arguments (missing ones are undefined);
/// returns how many were passed and the function's data.
pub(crate) fn cb_info(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    argv: &mut [sys::napi_value],
) -> Result<(usize, *mut c_void), Thrown> {
    let mut argc = argv.len();
    let mut data = ptr::null_mut();
    // SAFETY: `info` is this call's; argv has room for `argc` values, and missing
    // arguments are filled with undefined. `argc` becomes the number passed.
    let status = unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            argv.as_mut_ptr(),
            ptr::null_mut(),
            &mut data,
        )
    };
    ok(status, "arguments")?;
    Ok((argc, data))
}

/// This call's arguments, up to `N` (missing ones are undefined), and how many
/// were passed.
pub(crate) fn args<const N: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Result<([sys::napi_value; N], usize), Thrown> {
    let mut argv = [ptr::null_mut(); N];
    let (argc, _) = cb_info(env, info, &mut argv)?;
    Ok((argv, argc))
}

/// This call's arguments (as [`args`]), and the value its function is bound to.
///
/// # Safety
/// The current call must be one of a function [`make_handle::<T>`] made (its
/// data is then an `Rc<T>` pointer the function's finalizer frees, so alive
/// for the call). The reference is for this call only, on the JS thread.
pub(crate) unsafe fn bound_args<'a, T, const N: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Result<([sys::napi_value; N], usize, &'a T), Thrown> {
    let mut argv = [ptr::null_mut(); N];
    let (argc, data) = cb_info(env, info, &mut argv)?;
    if data.is_null() {
        return Err(Failure::Internal("a bound check without its value".into()));
    }
    // SAFETY: the caller's contract: `data` is an `Rc<T>` pointer, alive.
    Ok((argv, argc, unsafe { &*data.cast::<T>() }))
}

/// The limiter's bound `check(key, cost, nowMs?)` (see [`make_handle`]).
unsafe extern "C" fn limiter_check(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    run(env, "Limiter.check", || check(env, info))
}

pub(crate) fn double(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<f64, Thrown> {
    let mut n = 0.0;
    // SAFETY: `v` is an argument of the current call; anything but a number
    // fails with a status, not undefined behaviour.
    if unsafe { sys::napi_get_value_double(env, v, &mut n) } == sys::Status::napi_ok {
        Ok(n)
    } else {
        Err(invalid(&format!("{what} must be a number")))
    }
}

/// The bound `check(key, cost, nowMs?)`: `floodgate.js` passes `cost`
/// (default applied) always and `nowMs` only when given, so the common call
/// needs no `typeof`.
fn check(env: sys::napi_env, info: sys::napi_callback_info) -> Result<sys::napi_value, Thrown> {
    // SAFETY: `limiter_check` is only bound to `Handle`s (`handle` above).
    let ([key, cost, now], argc, h) = unsafe { bound_args::<Handle, 3>(env, info)? };

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
    let now = if argc > 2 {
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
