//! Result codes, their messages, and the thread's last error detail.

use std::cell::RefCell;
use std::ffi::c_char;

use fg_core::{Error, ErrorKind};

use crate::boundary::{guard, try_out, write_out};

/// What a call did. Numbers are stable: a code is never renumbered or reused.
/// 0-99 are the C layer's own; 100 and up map one-to-one to the core's error
/// kinds (`ErrorKind::code()` in Rust, `ERR_FG_*` in Node, exceptions in Python).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum fg_result {
    /// Success.
    Ok = 0,
    /// A required pointer was NULL.
    NullParameter = 1,
    /// A bug: Rust panicked inside the call. The call had no effect that can be
    /// relied on; please report it.
    Panic = 2,
    /// Text that must be UTF-8 (method, path, header, policy, URL) was not.
    InvalidUtf8 = 3,
    /// The caller's buffer is too small; the size needed was written to `len_out`.
    BufferTooSmall = 4,
    /// The call does not apply to this engine (quota calls on a policy engine,
    /// or the reverse).
    WrongEngineKind = 5,
    /// An argument out of its range (an unknown algorithm or format constant, an
    /// unparsable client IP, a length above `PTRDIFF_MAX`).
    InvalidArgument = 6,
    /// An invalid quota (zero rate or period, burst above the limits).
    InvalidQuota = 100,
    /// A quota string that does not parse.
    QuotaParse = 101,
    /// An unknown algorithm name.
    UnknownAlgorithm = 102,
    /// An empty key.
    EmptyKey = 103,
    /// A key longer than the limit (256 bytes by default).
    KeyTooLong = 104,
    /// A cost above the smallest burst: it could never be allowed.
    CostExceedsBurst = 105,
    /// A cost that is not a whole number of units.
    InvalidCost = 106,
    /// No quota given.
    NoQuotas = 107,
    /// More quotas than one check can take.
    TooManyQuotas = 108,
    /// A sliding-log limit above the configured maximum.
    LogLimitTooLarge = 109,
    /// An invalid option value.
    InvalidOption = 110,
    /// An invalid policy (see `fg_last_error` for the line and the reason).
    InvalidConfig = 111,
    /// An invalid request (e.g. an empty method).
    InvalidRequest = 112,
    /// The store (Redis) cannot be reached, or refused the credentials.
    StoreUnavailable = 113,
    /// A shared-memory table made for other quotas, another size or another
    /// build, or corrupt (see `fg_last_error` for what differs).
    StoreMismatch = 114,
    /// A settlement settled a second time: nothing was given back again.
    AlreadySettled = 115,
}

impl fg_result {
    /// The code for a core error kind.
    pub fn from_kind(kind: ErrorKind) -> fg_result {
        match kind {
            ErrorKind::InvalidQuota => Self::InvalidQuota,
            ErrorKind::QuotaParse => Self::QuotaParse,
            ErrorKind::UnknownAlgorithm => Self::UnknownAlgorithm,
            ErrorKind::EmptyKey => Self::EmptyKey,
            ErrorKind::KeyTooLong => Self::KeyTooLong,
            ErrorKind::CostExceedsBurst => Self::CostExceedsBurst,
            ErrorKind::InvalidCost => Self::InvalidCost,
            ErrorKind::NoQuotas => Self::NoQuotas,
            ErrorKind::TooManyQuotas => Self::TooManyQuotas,
            ErrorKind::LogLimitTooLarge => Self::LogLimitTooLarge,
            ErrorKind::InvalidOption => Self::InvalidOption,
            ErrorKind::InvalidConfig => Self::InvalidConfig,
            ErrorKind::InvalidRequest => Self::InvalidRequest,
            ErrorKind::StoreUnavailable => Self::StoreUnavailable,
            ErrorKind::StoreMismatch => Self::StoreMismatch,
            ErrorKind::AlreadySettled => Self::AlreadySettled,
        }
    }

    fn message(self) -> &'static std::ffi::CStr {
        match self {
            Self::Ok => c"ok",
            Self::NullParameter => c"a required pointer was NULL",
            Self::Panic => c"internal error: Rust panicked (a bug; please report it)",
            Self::InvalidUtf8 => c"text was not valid UTF-8",
            Self::BufferTooSmall => c"the buffer is too small (the size needed is in len_out)",
            Self::WrongEngineKind => c"this call does not apply to this kind of engine",
            Self::InvalidArgument => c"an argument is out of its range",
            Self::InvalidQuota => c"invalid quota",
            Self::QuotaParse => c"the quota does not parse",
            Self::UnknownAlgorithm => c"unknown algorithm",
            Self::EmptyKey => c"the key is empty",
            Self::KeyTooLong => c"the key is too long",
            Self::CostExceedsBurst => c"the cost is above the burst: it could never be allowed",
            Self::InvalidCost => c"invalid cost",
            Self::NoQuotas => c"no quota given",
            Self::TooManyQuotas => c"too many quotas",
            Self::LogLimitTooLarge => c"the sliding log limit is too large",
            Self::InvalidOption => c"invalid option",
            Self::InvalidConfig => c"invalid policy",
            Self::InvalidRequest => c"invalid request",
            Self::StoreUnavailable => c"the store (Redis, shared memory) is unavailable",
            Self::StoreMismatch => {
                c"the shared-memory table was made for other quotas or is corrupt"
            }
            Self::AlreadySettled => c"the verdict was already settled",
        }
    }

    /// Every code, for tests.
    pub const ALL: &'static [fg_result] = &[
        Self::Ok,
        Self::NullParameter,
        Self::Panic,
        Self::InvalidUtf8,
        Self::BufferTooSmall,
        Self::WrongEngineKind,
        Self::InvalidArgument,
        Self::InvalidQuota,
        Self::QuotaParse,
        Self::UnknownAlgorithm,
        Self::EmptyKey,
        Self::KeyTooLong,
        Self::CostExceedsBurst,
        Self::InvalidCost,
        Self::NoQuotas,
        Self::TooManyQuotas,
        Self::LogLimitTooLarge,
        Self::InvalidOption,
        Self::InvalidConfig,
        Self::InvalidRequest,
        Self::StoreUnavailable,
        Self::StoreMismatch,
        Self::AlreadySettled,
    ];
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `e`'s full text as this thread's last error and returns its code.
pub(crate) fn fail(e: &Error) -> fg_result {
    LAST_ERROR.with(|l| {
        let mut l = l.borrow_mut();
        l.clear();
        l.push_str(&e.to_string());
    });
    fg_result::from_kind(e.kind())
}

/// A short, static, NUL-terminated description of a result code (never NULL;
/// an unknown number gives "unknown result code"). Takes the code as a number so
/// that any value a C caller passes is defined behaviour.
#[unsafe(no_mangle)]
pub extern "C" fn fg_result_message(result: u32) -> *const c_char {
    fg_result::ALL
        .iter()
        .find(|r| **r as u32 == result)
        .map_or(c"unknown result code", |r| r.message())
        .as_ptr()
}

/// The library version, e.g. "0.1.0": static and NUL-terminated.
#[unsafe(no_mangle)]
pub extern "C" fn fg_version() -> *const c_char {
    const VERSION: &std::ffi::CStr = match std::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    VERSION.as_ptr()
}

/// Copies the full text of this thread's last core error (e.g. a policy error
/// with its line number) into `buf` as a NUL-terminated string.
///
/// The text is set by any call that failed with a code of 100 or above, and
/// stays until the next such failure on the same thread. With no error yet, it
/// is empty. If `cap` is too small (text length + 1 for the NUL), nothing is
/// copied, `*len_out` gets the length needed (without the NUL) and the call
/// returns `FG_RESULT_BUFFER_TOO_SMALL`; on success `*len_out` gets the length.
///
/// # Safety
/// `buf` must be writable for `cap` bytes (it may be NULL when `cap` is 0);
/// `len_out` must be valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fg_last_error(
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> fg_result {
    guard(|| {
        LAST_ERROR.with(|l| {
            let l = l.borrow();
            // SAFETY: buf/cap/len_out are this function's, under the same contract.
            unsafe { copy_text(&l, buf, cap, len_out) }
        })
    })
}

/// Copies `text` plus a NUL into `buf` if it fits; writes the length to `len_out`.
///
/// # Safety
/// `buf` writable for `cap` bytes (or NULL with `cap` 0), `len_out` writable.
pub(crate) unsafe fn copy_text(
    text: &str,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> Result<(), fg_result> {
    let len_out = try_out(len_out)?;
    if buf.is_null() && cap > 0 {
        return Err(fg_result::NullParameter);
    }
    if text.len() >= cap {
        // SAFETY: len_out is non-NULL (checked) and writable per the caller.
        unsafe { len_out.write(text.len()) };
        return Err(fg_result::BufferTooSmall);
    }
    // SAFETY: buf holds cap > text.len() bytes (it is non-NULL: cap > 0); the
    // regions cannot overlap (text is Rust-owned).
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        buf.add(text.len()).write(0);
        write_out(len_out, text.len())
    }
}
