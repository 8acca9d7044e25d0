//! The C ABI's overhead: `fg_engine_check` (the exported function, called through
//! its C signature) against `Limiter::check` on the same quota and keys, in the
//! same run. The difference is what a C caller pays for the boundary (pointer
//! checks, panic guard, conversion of the decision).
//!
//! `cargo bench -p floodgate-benches --bench ffi`

#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use floodgate::{Limiter, Quota};
use floodgate_benches::{Cycle, keys, order};
use floodgate_ffi::{
    FG_ALGORITHM_GCRA, fg_decision, fg_engine, fg_engine_check, fg_engine_free,
    fg_engine_new_quotas, fg_quota, fg_result,
};

fn bench(c: &mut Criterion) {
    for n in [1usize, 10_000] {
        let (ks, ord) = (keys(n), order(n));
        let mut g = c.benchmark_group(format!("ffi/{n}"));
        let rust = Limiter::builder()
            .quota(Quota::per_second(1000).unwrap())
            .build()
            .unwrap();
        let q = fg_quota {
            algorithm: FG_ALGORITHM_GCRA,
            limit: 1000,
            period_ns: 1_000_000_000,
            burst: 0,
        };
        let mut engine: *const fg_engine = std::ptr::null();
        assert_eq!(
            unsafe { fg_engine_new_quotas(&q, 1, std::ptr::null(), &mut engine) },
            fg_result::Ok
        );
        for k in &ks {
            let _ = rust.check(k, 1);
            let mut d = fg_decision::default();
            let _ = unsafe { fg_engine_check(engine, k.as_ptr(), k.len(), 1, &mut d) };
        }
        let mut cycle = Cycle::new(&ks, &ord);
        g.bench_function("rust_limiter_check", |b| {
            b.iter(|| black_box(rust.check(cycle.next_key(), 1).map(|d| d.allowed)))
        });
        let mut cycle = Cycle::new(&ks, &ord);
        g.bench_function("c_fg_engine_check", |b| {
            b.iter(|| {
                let k = cycle.next_key();
                let mut d = fg_decision::default();
                let r = unsafe { fg_engine_check(engine, k.as_ptr(), k.len(), 1, &mut d) };
                black_box((r, d.allowed))
            })
        });
        g.finish();
        unsafe { fg_engine_free(engine) };
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
