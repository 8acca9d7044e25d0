//! The exported functions called from Rust: error mapping, NULLs, panics.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    unsafe_code,
    clippy::undocumented_unsafe_blocks
)]

use std::ffi::CStr;
use std::ptr;

use fg_core::ErrorKind;
use floodgate::*;

fn quota(limit: u64, period_ns: u64) -> fg_quota {
    fg_quota {
        algorithm: FG_ALGORITHM_GCRA,
        limit,
        period_ns,
        burst: 0,
    }
}

#[test]
fn every_core_error_kind_has_its_own_result_code() {
    let mut seen = std::collections::HashSet::new();
    for kind in ErrorKind::ALL {
        let code = fg_result::from_kind(*kind);
        assert!(code as u32 >= 100, "{kind:?} -> {code:?}");
        assert!(
            seen.insert(code as u32),
            "{kind:?} shares code {}",
            code as u32
        );
        // And the code's name is the kind's code, upper-cased.
        let name = format!("{code:?}");
        let snake: String = name
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                if c.is_uppercase() && i > 0 {
                    vec!['_', c.to_ascii_lowercase()]
                } else {
                    vec![c.to_ascii_lowercase()]
                }
            })
            .collect();
        assert_eq!(snake, kind.code());
    }
    // Every code has its own message.
    let messages: std::collections::HashSet<_> = fg_result::ALL
        .iter()
        .map(|r| unsafe { CStr::from_ptr(fg_result_message(*r as u32)) }.to_owned())
        .collect();
    assert_eq!(messages.len(), fg_result::ALL.len());
    let unknown = unsafe { CStr::from_ptr(fg_result_message(9999)) };
    assert_eq!(unknown.to_str().unwrap(), "unknown result code");
}

/// An exported function built like every other one (body inside the boundary),
/// whose body panics the way a bug would: an out-of-range index.
#[unsafe(no_mangle)]
pub extern "C" fn fg_test_panics(index: usize) -> fg_result {
    __panic_boundary(|| {
        let v = [fg_result::Ok];
        v[index]
    })
}

#[test]
fn a_panic_inside_an_exported_function_is_the_panic_code_not_an_abort() {
    assert_eq!(fg_test_panics(0), fg_result::Ok);
    assert_eq!(fg_test_panics(std::hint::black_box(5)), fg_result::Panic);
    // The library still works afterwards.
    let q = quota(1, 1_000_000_000);
    let mut engine = ptr::null();
    unsafe {
        assert_eq!(
            fg_engine_new_quotas(&q, 1, ptr::null(), &mut engine),
            fg_result::Ok
        );
        fg_engine_free(engine);
    }
}

#[test]
fn nulls_are_refused_and_outputs_untouched() {
    unsafe {
        let mut engine = ptr::null();
        assert_eq!(
            fg_engine_new_quotas(ptr::null(), 1, ptr::null(), &mut engine),
            fg_result::NullParameter
        );
        assert_eq!(
            fg_engine_new_quotas(ptr::null(), 0, ptr::null(), &mut engine),
            fg_result::NoQuotas
        );
        let q = quota(2, 1_000_000_000);
        assert_eq!(
            fg_engine_new_quotas(&q, 1, ptr::null(), ptr::null_mut()),
            fg_result::NullParameter
        );
        assert!(engine.is_null());
        assert_eq!(
            fg_engine_new_quotas(&q, 1, ptr::null(), &mut engine),
            fg_result::Ok
        );
        let mut d = fg_decision {
            quota: 77,
            ..fg_decision::default()
        };
        assert_eq!(
            fg_engine_check(ptr::null(), b"k".as_ptr(), 1, 1, &mut d),
            fg_result::NullParameter
        );
        assert_eq!(
            fg_engine_check(engine, ptr::null(), 1, 1, &mut d),
            fg_result::NullParameter
        );
        assert_eq!(
            fg_engine_check(engine, ptr::null(), 0, 1, &mut d),
            fg_result::EmptyKey
        );
        assert_eq!(
            fg_engine_check(engine, b"k".as_ptr(), 1, 3, &mut d),
            fg_result::CostExceedsBurst
        );
        assert_eq!(d.quota, 77, "outputs are written only on success");
        assert_eq!(
            fg_engine_check(engine, b"k".as_ptr(), 1, 1, ptr::null_mut()),
            fg_result::NullParameter
        );
        assert_eq!(
            fg_engine_check(engine, b"k".as_ptr(), 1, 1, &mut d),
            fg_result::Ok
        );
        assert!(d.allowed && d.remaining == 1);
        let mut len = 0usize;
        assert_eq!(
            fg_engine_metrics(engine, ptr::null_mut(), 0, &mut len),
            fg_result::WrongEngineKind
        );
        fg_engine_free(engine);
        fg_engine_free(ptr::null());
    }
}

#[test]
fn every_event_kind_has_the_cores_log_level() {
    use fg_core::policy::{EventKind, LogLevel};
    for kind in EventKind::ALL {
        let event = fg_event {
            kind: kind.c_code().as_ptr(),
            rule: std::ptr::null(),
            rule_len: 0,
            key: std::ptr::null(),
            key_len: 0,
            client_ip: std::ptr::null(),
            client_ip_len: 0,
            status: 0,
            retry_after_ns: 0,
            token_problem: std::ptr::null(),
        };
        let want = match kind.log_level() {
            LogLevel::Debug => FG_LOG_DEBUG,
            LogLevel::Info => FG_LOG_INFO,
            LogLevel::Warning => FG_LOG_WARNING,
        };
        // SAFETY: a valid event whose kind is a static code.
        assert_eq!(unsafe { fg_event_level(&event) }, want, "{}", kind.code());
    }
    // SAFETY: NULL is allowed.
    assert_eq!(unsafe { fg_event_level(std::ptr::null()) }, FG_LOG_DEBUG);
}
