//! The C ABI of Floodgate: `include/floodgate.h` is generated from this crate by
//! cbindgen. Conventions (rustls-ffi's):
//!
//! - `fg_` prefix, opaque types, the object first and outputs last;
//! - every pointer is checked for NULL before use ([`FG_RESULT_NULL_PARAMETER`](fg_result));
//! - outputs are written only on success;
//! - every exported function runs inside a panic boundary: a panic comes back as
//!   `FG_RESULT_PANIC`, never an unwind into C or an abort;
//! - result codes are numbered explicitly and never reused.
//!
//! An `fg_engine` is an `Arc` inside: a `const fg_engine *` may be used from any
//! number of threads at once, and `fg_engine_free` releases it.
#![allow(unsafe_code)] // the C ABI: every unsafe block says why it is sound
#![allow(non_camel_case_types)] // C type names

mod boundary;
mod engine;
mod result;

pub use engine::*;
pub use result::*;

/// The panic boundary every exported function runs in, for the test that proves
/// a panic comes back as `FG_RESULT_PANIC`. Not part of the C API.
#[doc(hidden)]
pub fn __panic_boundary(f: impl FnOnce() -> fg_result) -> fg_result {
    boundary::guard(|| match f() {
        fg_result::Ok => Ok(()),
        code => Err(code),
    })
}
