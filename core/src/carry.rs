//! A key's state carried over to changed quotas, when a policy reload changes
//! a rule's quotas but not its key (`Limiter::carry_from`):
//!
//! - the same algorithm over the same window keeps its state as it is (a
//!   window's count, a log's entries), judged against the new limit;
//! - GCRA keeps the *used fraction* of its burst: a client that had spent
//!   half of `"100/min"` has spent half of `"1000/min"`;
//! - a window keeps the *units used*, judged against its new limit, in the
//!   window (of its new length) that holds now; from GCRA, the units used are
//!   the burst less what was left.
//!
//! So a raised limit gives a busy client the difference, never a fresh
//! burst, and a lowered one can leave it over its new limit until the window
//! ends (or the bucket drains) — never a reset that lets it burst again.

use crate::algorithm::fixed_window::FixedState;
use crate::algorithm::sliding_window::{CounterState, LogState};
use crate::quota::Quota;
use crate::state::{Params, QuotaState};

/// `state`, of quota `from`, carried over to quota `to` at `now` (ns).
pub(crate) fn carried(
    (from_quota, from): (&Quota, &Params),
    state: &QuotaState,
    (to_quota, to): (&Quota, &Params),
    now: u64,
) -> QuotaState {
    match (from, state, to) {
        (Params::Fixed(a), QuotaState::Fixed(s), Params::Fixed(b)) if a.window() == b.window() => {
            return QuotaState::Fixed(*s);
        }
        (Params::Counter(a), QuotaState::Counter(s), Params::Counter(b))
            if a.window() == b.window() =>
        {
            return QuotaState::Counter(*s);
        }
        (Params::Log(a), QuotaState::Log(s), Params::Log(b)) if a.window() == b.window() => {
            return QuotaState::Log(s.clone());
        }
        _ => {}
    }
    // Units used: a window's count (over its limit, if a lowered limit left
    // it there), GCRA's burst less what is left.
    let used = match (from, state) {
        (Params::Fixed(f), QuotaState::Fixed(s)) => f.used(*s, now),
        (Params::Counter(c), QuotaState::Counter(s)) => c.used(*s, now),
        (Params::Log(l), QuotaState::Log(s)) => l.used(s, now),
        _ => {
            let remaining = from.decide(&mut state.clone(), now, 0).remaining;
            from_quota.limit().saturating_sub(remaining)
        }
    };
    match to {
        Params::Gcra(g) => {
            // How far ahead of now the new TAT is: the same share of the new
            // burst as was spent of the old one.
            let ahead = match (from, state) {
                (Params::Gcra(old), QuotaState::Gcra(tat)) => {
                    scale(tat.saturating_sub(now), g.capacity(), old.capacity())
                }
                _ => scale(used, g.capacity(), from_quota.limit()),
            };
            if ahead == 0 {
                QuotaState::Gcra(0)
            } else {
                QuotaState::Gcra(now.saturating_add(ahead.min(g.capacity())))
            }
        }
        Params::Fixed(f) => QuotaState::Fixed(FixedState {
            window: now / f.window().max(1),
            count: used,
        }),
        Params::Counter(c) => QuotaState::Counter(CounterState {
            window: now / c.window().max(1),
            prev: 0,
            curr: used,
        }),
        Params::Log(_) => QuotaState::Log(LogState::single(now, used.min(to_quota.limit()))),
    }
}

/// `value × num / den`, rounded down, at most `num` (`den == 0`: 0).
fn scale(value: u64, num: u64, den: u64) -> u64 {
    if den == 0 {
        return 0;
    }
    let v = u128::from(value.min(den)) * u128::from(num) / u128::from(den);
    u64::try_from(v).unwrap_or(num)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Algorithm;

    fn q(text: &str, a: Algorithm) -> (Quota, Params) {
        let quota = text
            .parse::<Quota>()
            .and_then(|q| q.with_algorithm(a))
            .unwrap_or_else(|e| panic!("{e}"));
        let params = Params::new(&quota);
        (quota, params)
    }

    /// Charges `n` units at `now` on a fresh state of `(quota, params)`.
    fn spent(p: &Params, n: u64, now: u64) -> QuotaState {
        let mut s = p.fresh();
        p.charge(&mut s, now, n);
        s
    }

    fn remaining(p: &Params, s: &QuotaState, now: u64) -> u64 {
        p.decide(&mut s.clone(), now, 0).remaining
    }

    const NOW: u64 = 1_000 * 1_000_000_000;

    #[test]
    fn gcra_keeps_the_used_fraction_of_its_burst() {
        let (oq, op) = q("100/m", Algorithm::Gcra);
        let (nq, np) = q("1000/m", Algorithm::Gcra);
        let s = spent(&op, 50, NOW);
        let c = carried((&oq, &op), &s, (&nq, &np), NOW);
        assert_eq!(remaining(&np, &c, NOW), 500, "half of the new burst");
        // Lowered: half of 10.
        let (lq, lp) = q("10/m", Algorithm::Gcra);
        assert_eq!(
            remaining(&lp, &carried((&oq, &op), &s, (&lq, &lp), NOW), NOW),
            5
        );
        // Unused: fresh.
        let c = carried((&oq, &op), &op.fresh(), (&nq, &np), NOW);
        assert_eq!(c, QuotaState::Gcra(0));
    }

    #[test]
    fn windows_keep_their_count_against_the_new_limit() {
        let (oq, op) = q("10/m", Algorithm::FixedWindow);
        let (nq, np) = q("5/m", Algorithm::FixedWindow);
        let s = spent(&op, 7, NOW);
        let c = carried((&oq, &op), &s, (&nq, &np), NOW);
        assert_eq!(c, s, "same window: as it is");
        assert!(
            !np.decide(&mut c.clone(), NOW, 1).allowed,
            "7 used of 5: denied"
        );
        // Another window length: the count in the window holding now.
        let (hq, hp) = q("20/h", Algorithm::FixedWindow);
        let c = carried((&oq, &op), &s, (&hq, &hp), NOW);
        assert_eq!(remaining(&hp, &c, NOW), 13);
        // A sliding counter and a log keep the units too.
        for a in [Algorithm::SlidingWindow, Algorithm::SlidingLog] {
            let (tq, tp) = q("20/h", a);
            let c = carried((&oq, &op), &s, (&tq, &tp), NOW);
            assert_eq!(remaining(&tp, &c, NOW), 13, "{a}");
        }
        // Window to GCRA: 7 of 10 used is 70% of the new burst.
        let (gq, gp) = q("100/m", Algorithm::Gcra);
        let c = carried((&oq, &op), &s, (&gq, &gp), NOW);
        assert_eq!(remaining(&gp, &c, NOW), 30);
        // GCRA to a window: the units used.
        let g = spent(&gp, 40, NOW);
        let c = carried((&gq, &gp), &g, (&hq, &hp), NOW);
        assert_eq!(remaining(&hp, &c, NOW), 0, "40 used of 20");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::Algorithm;
    use proptest::prelude::*;

    fn algorithm() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            Just(Algorithm::Gcra),
            Just(Algorithm::FixedWindow),
            Just(Algorithm::SlidingWindow),
            Just(Algorithm::SlidingLog),
        ]
    }

    proptest! {
        /// Carried over, a key has used what the rules say of its new quota:
        /// a window the units used (capped by nothing: judged against the new
        /// limit), GCRA the fraction of its burst, never more than all of it;
        /// and an unused key stays unused.
        #[test]
        fn carried_state_keeps_what_was_used(
            (from_a, to_a) in (algorithm(), algorithm()),
            (old_limit, new_limit) in (1u64..500, 1u64..500),
            (old_secs, new_secs) in (1u64..7200, 1u64..7200),
            used_share in 0u64..=100,
        ) {
            let quota = |limit: u64, secs: u64, a: Algorithm| {
                let q = Quota::new(limit, std::time::Duration::from_secs(secs))
                    .and_then(|q| q.with_algorithm(a))
                    .unwrap_or_else(|e| panic!("{e}"));
                (q, Params::new(&q))
            };
            let (fq, fp) = quota(old_limit, old_secs, from_a);
            let (tq, tp) = quota(new_limit, new_secs, to_a);
            let now = 1_000_000 * 1_000_000_000u64;
            let used = old_limit * used_share / 100;
            let mut s = fp.fresh();
            if used > 0 {
                fp.charge(&mut s, now, used);
            }
            let c = carried((&fq, &fp), &s, (&tq, &tp), now);
            let left = tp.decide(&mut c.clone(), now, 0).remaining;
            prop_assert!(left <= new_limit);
            if used == 0 {
                prop_assert_eq!(left, new_limit, "unused stays unused");
            }
            match to_a {
                Algorithm::Gcra => {
                    // The same share of the burst, rounded toward used.
                    let want = new_limit - (new_limit * used).div_ceil(old_limit).min(new_limit);
                    prop_assert!(left.abs_diff(want) <= 1, "left {} want {}", left, want);
                }
                _ if from_a == to_a && old_secs == new_secs => {
                    // As it was, judged against the new limit.
                    prop_assert_eq!(left, new_limit.saturating_sub(used));
                }
                _ => {
                    prop_assert_eq!(left, new_limit.saturating_sub(used));
                }
            }
        }
    }
}
