//! The panic boundary and the pointer helpers every exported function uses.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::result::fg_result;

/// The one boundary of every exported function that returns a code: runs `f`,
/// whose `?` turns any failure into its code, and turns a panic into
/// `FG_RESULT_PANIC`. With `panic = "unwind"` (set in every profile of the
/// workspace) nothing unwinds into C.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), fg_result>) -> fg_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => fg_result::Ok,
        Ok(Err(code)) => code,
        Err(_) => fg_result::Panic,
    }
}

/// As [`guard`], for functions that return nothing.
pub(crate) fn guard_void(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// An output pointer, checked before any work is done: `Err(NULL_PARAMETER)`
/// for NULL.
pub(crate) fn try_out<T>(p: *mut T) -> Result<*mut T, fg_result> {
    if p.is_null() {
        Err(fg_result::NullParameter)
    } else {
        Ok(p)
    }
}

/// `Ok(&T)` for a non-NULL pointer, else `FG_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// A non-NULL `p` must point to a valid `T` for the returned lifetime.
pub(crate) unsafe fn try_ref<'a, T>(p: *const T) -> Result<&'a T, fg_result> {
    // SAFETY: the caller promises a non-NULL `p` is valid; NULL is refused here.
    unsafe { p.as_ref() }.ok_or(fg_result::NullParameter)
}

/// Bytes from a pointer and a length. NULL with length 0 is the empty slice.
///
/// # Safety
/// A non-NULL `p` must point to `len` readable bytes for the returned lifetime.
pub(crate) unsafe fn try_bytes<'a>(p: *const u8, len: usize) -> Result<&'a [u8], fg_result> {
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(fg_result::NullParameter)
        };
    }
    if len > isize::MAX as usize {
        return Err(fg_result::InvalidArgument);
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// UTF-8 text from a pointer and a length.
///
/// # Safety
/// As [`try_bytes`].
pub(crate) unsafe fn try_str<'a>(p: *const u8, len: usize) -> Result<&'a str, fg_result> {
    // SAFETY: try_bytes has this function's contract, which the caller upholds.
    let bytes = unsafe { try_bytes(p, len) }?;
    std::str::from_utf8(bytes).map_err(|_| fg_result::InvalidUtf8)
}

/// UTF-8 text from a NUL-terminated C string.
///
/// # Safety
/// A non-NULL `p` must point to a NUL-terminated string.
pub(crate) unsafe fn try_cstr<'a>(p: *const std::ffi::c_char) -> Result<&'a str, fg_result> {
    if p.is_null() {
        return Err(fg_result::NullParameter);
    }
    // SAFETY: non-NULL and NUL-terminated per the caller.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| fg_result::InvalidUtf8)
}

/// Writes `value` to an output pointer (`Err(NULL_PARAMETER)` for NULL).
///
/// # Safety
/// A non-NULL `out` must be valid for writes of a `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T) -> Result<(), fg_result> {
    let out = try_out(out)?;
    // SAFETY: non-NULL (checked) and writable per the caller; `write` drops
    // nothing there.
    unsafe { out.write(value) };
    Ok(())
}
