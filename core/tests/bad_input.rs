//! Bad input gets a typed error or a correct decision: never a panic.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use floodgate::{Algorithm, Error, ErrorKind, FakeClock, Limiter, Quota, QuotaProblem};

fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> ErrorKind {
    r.unwrap_err().kind()
}

#[test]
fn keys() {
    let l = Limiter::builder()
        .quota("5/s".parse().unwrap())
        .max_key_bytes(16)
        .build()
        .unwrap();
    assert_eq!(kind(l.check("", 1)), ErrorKind::EmptyKey);
    assert_eq!(kind(l.check([0u8; 17], 1)), ErrorKind::KeyTooLong);
    assert_eq!(
        kind(l.check(vec![b'x'; 10_000_000], 1)),
        ErrorKind::KeyTooLong
    );
    assert_eq!(
        l.check("x".repeat(17), 1).unwrap_err(),
        Error::KeyTooLong { len: 17, max: 16 }
    );
    assert!(
        l.check([0xff, 0xfe, 0x00, 0x80], 1).unwrap().allowed,
        "non-UTF-8 bytes are fine"
    );
    assert!(l.check([0u8], 1).unwrap().allowed, "a NUL byte is a key");
    assert_eq!(l.len(), 2, "failed checks store nothing");
    assert_eq!(kind(l.peek("")), ErrorKind::EmptyKey);
    assert_eq!(kind(l.reset([1u8; 17])), ErrorKind::KeyTooLong);
}

#[test]
fn costs() {
    let l = Limiter::new("5/s".parse().unwrap()).unwrap();
    assert_eq!(
        l.check("k", u64::MAX).unwrap_err(),
        Error::CostExceedsBurst {
            cost: u64::MAX,
            burst: 5,
            quota: 0
        }
    );
    assert_eq!(kind(l.check("k", 6)), ErrorKind::CostExceedsBurst);
    assert!(l.check("k", 0).unwrap().allowed, "cost 0 peeks");
    assert_eq!(l.check("k", 5).unwrap().remaining, 0);
    for bad in [-1.0, f64::NAN, f64::INFINITY, 0.5, 1e20] {
        assert_eq!(kind(Error::cost_from_f64(bad)), ErrorKind::InvalidCost);
    }
}

#[test]
fn quotas_and_options() {
    assert_eq!(kind(Limiter::builder().build()), ErrorKind::NoQuotas);
    let q = Quota::per_second(1).unwrap();
    assert_eq!(
        kind(Limiter::builder().quotas([q; 17]).build()),
        ErrorKind::TooManyQuotas
    );
    assert_eq!(
        kind(Limiter::builder().quota(q).max_keys(0).build()),
        ErrorKind::InvalidOption
    );
    assert_eq!(
        kind(Limiter::builder().quota(q).max_key_bytes(0).build()),
        ErrorKind::InvalidOption
    );
    let log = Quota::per_second(20_000)
        .unwrap()
        .with_algorithm(Algorithm::SlidingLog)
        .unwrap();
    assert_eq!(
        kind(Limiter::builder().quota(log).build()),
        ErrorKind::LogLimitTooLarge
    );
    assert!(
        Limiter::builder()
            .quota(log)
            .max_log_limit(20_000)
            .build()
            .is_ok()
    );
    assert_eq!(
        Quota::per_second(0),
        Err(Error::InvalidQuota {
            problem: QuotaProblem::ZeroRate
        })
    );
    assert_eq!(
        kind(Quota::new(u64::MAX, Duration::from_secs(1))),
        ErrorKind::InvalidQuota
    );
    assert_eq!(
        kind("10/s burst 99999999999999999999".parse::<Quota>()),
        ErrorKind::QuotaParse
    );
    assert_eq!(
        kind("1/d burst 18446744073709551615".parse::<Quota>()),
        ErrorKind::InvalidQuota
    );
    assert_eq!(
        kind("\u{0}/\u{ffff}".parse::<Quota>()),
        ErrorKind::QuotaParse
    );
}

#[test]
fn time_going_backwards_never_over_admits() {
    for algorithm in Algorithm::ALL {
        let clock = FakeClock::new();
        let q = Quota::per_second(3)
            .unwrap()
            .with_algorithm(algorithm)
            .unwrap();
        let l = Limiter::builder()
            .quota(q)
            .build_with_clock(clock.clone())
            .unwrap();
        clock.set(Duration::from_secs(100));
        let mut admitted = 0;
        for _ in 0..3 {
            admitted += u64::from(l.check("k", 1).unwrap().allowed);
        }
        // Jump back an hour, and to zero: still nothing more before time catches up.
        for back in [Duration::from_secs(3600 - 1), Duration::ZERO] {
            clock.set(Duration::from_secs(100).saturating_sub(back));
            let d = l.check("k", 1).unwrap();
            assert!(!d.allowed, "{algorithm} admitted after the clock went back");
            assert!(d.remaining <= d.limit);
        }
        assert_eq!(admitted, 3, "{algorithm}");
    }
}

#[test]
fn extreme_times_do_not_panic() {
    for algorithm in Algorithm::ALL {
        let q = Quota::per_day(3)
            .unwrap()
            .with_algorithm(algorithm)
            .unwrap();
        let l = Limiter::new(q).unwrap();
        for now in [
            Duration::ZERO,
            Duration::from_nanos(u64::MAX - 1),
            Duration::MAX,
            Duration::from_nanos(1),
        ] {
            let d = l.check_at("k", 1, now).unwrap();
            assert!(d.remaining <= d.limit);
            l.peek_at("k", now).unwrap();
        }
    }
}
