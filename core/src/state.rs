//! Per-key state and how it is updated.
//!
//! - **Fast path** (one GCRA quota): the state is one `AtomicU64` holding the
//!   theoretical arrival time (ns; 0 = never seen, which reads as a full bucket).
//!   A check is a load, pure math, and one compare-exchange, retried only when
//!   another thread changed the same key in between. A denial writes nothing.
//! - **General path** (several quotas, or a window algorithm): the states of all of
//!   a key's quotas sit behind one per-key `parking_lot::Mutex`, held only for the
//!   math of one check. That makes a multi-quota check all-or-nothing: every quota
//!   admits and all are charged, or none is.

use parking_lot::Mutex;

use crate::algorithm::Outcome;
use crate::algorithm::fixed_window::{FixedState, FixedWindow};
use crate::algorithm::gcra::Gcra;
use crate::algorithm::sliding_window::{CounterState, LogState, SlidingCounter, SlidingLog};
use crate::quota::{Algorithm, Quota};
use crate::sync::{AtomicU64, Ordering};

/// One GCRA check on the fast path: a compare-exchange loop on the key's TAT.
#[inline]
pub(crate) fn gcra_check(cell: &AtomicU64, gcra: &Gcra, now: u64, cost: u64) -> Outcome {
    // Relaxed everywhere: the TAT is the whole state and publishes no other memory;
    // a single atomic's modification order alone makes the CAS loop correct.
    let mut tat = cell.load(Ordering::Relaxed);
    loop {
        let (outcome, new_tat) = gcra.decide(tat, now, cost);
        if !outcome.allowed || new_tat == tat {
            return outcome;
        }
        match cell.compare_exchange_weak(tat, new_tat, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return outcome,
            Err(current) => tat = current,
        }
    }
}

/// Gives back `cost` units on the fast path (undoing part of an all-or-nothing group).
pub(crate) fn gcra_refund(cell: &AtomicU64, gcra: &Gcra, cost: u64) {
    // Relaxed: as in gcra_check, the TAT is self-contained.
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
        Some(gcra.refund(tat, cost))
    });
}

/// A GCRA peek on the fast path: reads, never writes.
#[inline]
pub(crate) fn gcra_peek(tat: u64, gcra: &Gcra, now: u64) -> Outcome {
    Outcome::peek(gcra.decide(tat, now, 1).0, gcra.decide(tat, now, 0).0)
}

/// One quota's algorithm with its derived parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Params {
    Gcra(Gcra),
    Fixed(FixedWindow),
    Counter(SlidingCounter),
    Log(SlidingLog),
}

/// One quota's state for one key (general path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QuotaState {
    Gcra(u64),
    Fixed(FixedState),
    Counter(CounterState),
    Log(LogState),
}

/// All of one key's quota states, behind the key's own lock.
pub(crate) type KeyState = Mutex<Box<[QuotaState]>>;

impl Params {
    pub(crate) fn new(quota: &Quota) -> Self {
        match quota.algorithm() {
            Algorithm::Gcra => Self::Gcra(Gcra::new(quota)),
            Algorithm::FixedWindow => Self::Fixed(FixedWindow::new(quota)),
            Algorithm::SlidingWindow => Self::Counter(SlidingCounter::new(quota)),
            Algorithm::SlidingLog => Self::Log(SlidingLog::new(quota)),
        }
    }

    /// The state of a key never seen.
    pub(crate) fn fresh(&self) -> QuotaState {
        match self {
            Self::Gcra(_) => QuotaState::Gcra(0),
            Self::Fixed(_) => QuotaState::Fixed(FixedState::default()),
            Self::Counter(_) => QuotaState::Counter(CounterState::default()),
            Self::Log(_) => QuotaState::Log(LogState::default()),
        }
    }

    /// Decides without charging (the log may drop expired entries).
    pub(crate) fn decide(&self, state: &mut QuotaState, now: u64, cost: u64) -> Outcome {
        match (self, state) {
            (Self::Gcra(p), QuotaState::Gcra(tat)) => p.decide(*tat, now, cost).0,
            (Self::Fixed(p), QuotaState::Fixed(s)) => p.decide(*s, now, cost).0,
            (Self::Counter(p), QuotaState::Counter(s)) => p.decide(*s, now, cost).0,
            (Self::Log(p), QuotaState::Log(s)) => p.decide(s, now, cost),
            // States are built from the same params, so this cannot happen; deny
            // rather than panic if it ever did.
            _ => Outcome {
                allowed: false,
                remaining: 0,
                retry_after: 0,
                reset_after: 0,
            },
        }
    }

    /// Decides, and charges `state` if allowed: one evaluation (what `decide`
    /// then `charge` compute twice). Returns whether the state changed. (The
    /// shared-memory store's per-quota charge, and a one-quota key's.)
    pub(crate) fn check(&self, state: &mut QuotaState, now: u64, cost: u64) -> (Outcome, bool) {
        match (self, state) {
            (Self::Gcra(p), QuotaState::Gcra(tat)) => {
                let (o, next) = p.decide(*tat, now, cost);
                let changed = o.allowed && next != *tat;
                if changed {
                    *tat = next;
                }
                (o, changed)
            }
            (Self::Fixed(p), QuotaState::Fixed(s)) => {
                let (o, next) = p.decide(*s, now, cost);
                let changed = o.allowed && next != *s;
                if changed {
                    *s = next;
                }
                (o, changed)
            }
            (Self::Counter(p), QuotaState::Counter(s)) => {
                let (o, next) = p.decide(*s, now, cost);
                let changed = o.allowed && next != *s;
                if changed {
                    *s = next;
                }
                (o, changed)
            }
            (Self::Log(p), QuotaState::Log(s)) => {
                let o = p.decide(s, now, cost);
                if o.allowed {
                    p.commit(s, now, cost);
                }
                (o, o.allowed)
            }
            (p, s) => (p.decide(s, now, cost), false),
        }
    }

    /// Gives back `cost` units charged at `now` by an allowed request.
    pub(crate) fn refund(&self, state: &mut QuotaState, now: u64, cost: u64) {
        match (self, state) {
            (Self::Gcra(p), QuotaState::Gcra(tat)) => *tat = p.refund(*tat, cost),
            (Self::Fixed(p), QuotaState::Fixed(s)) => p.refund(s, now, cost),
            (Self::Counter(p), QuotaState::Counter(s)) => p.refund(s, now, cost),
            (Self::Log(p), QuotaState::Log(s)) => p.refund(s, cost),
            _ => {}
        }
    }

    /// Charges an allowed request.
    pub(crate) fn charge(&self, state: &mut QuotaState, now: u64, cost: u64) {
        match (self, state) {
            (Self::Gcra(p), QuotaState::Gcra(tat)) => *tat = p.decide(*tat, now, cost).1,
            (Self::Fixed(p), QuotaState::Fixed(s)) => *s = p.decide(*s, now, cost).1,
            (Self::Counter(p), QuotaState::Counter(s)) => *s = p.decide(*s, now, cost).1,
            (Self::Log(p), QuotaState::Log(s)) => p.commit(s, now, cost),
            _ => {}
        }
    }
}

/// Picks the deciding quota: among denials the longest wait; else the fewest
/// remaining units. Returns the outcome and the quota's index.
pub(crate) fn pick(outcomes: impl Iterator<Item = Outcome>) -> (Outcome, usize) {
    let mut best: Option<(Outcome, usize)> = None;
    for (i, o) in outcomes.enumerate() {
        let better = match &best {
            None => true,
            Some((b, _)) => match (o.allowed, b.allowed) {
                (false, true) => true,
                (false, false) => o.retry_after > b.retry_after,
                (true, true) => o.remaining < b.remaining,
                (true, false) => false,
            },
        };
        if better {
            best = Some((o, i));
        }
    }
    best.unwrap_or((
        Outcome {
            allowed: false,
            remaining: 0,
            retry_after: 0,
            reset_after: 0,
        },
        0,
    ))
}

/// A check on the general path, under the key's lock: all quotas or none.
pub(crate) fn check_all(
    states: &mut [QuotaState],
    params: &[Params],
    now: u64,
    cost: u64,
) -> (Outcome, usize) {
    // One quota (the usual window rule): decide and charge in one evaluation.
    if let ([p], [s]) = (params, &mut *states) {
        return (p.check(s, now, cost).0, 0);
    }
    let decided = pick(
        params
            .iter()
            .zip(states.iter_mut())
            .map(|(p, s)| p.decide(s, now, cost)),
    );
    if decided.0.allowed {
        for (p, s) in params.iter().zip(states.iter_mut()) {
            p.charge(s, now, cost);
        }
    }
    decided
}

/// Gives back `cost` units to every quota (under the key's lock).
pub(crate) fn refund_all(states: &mut [QuotaState], params: &[Params], now: u64, cost: u64) {
    for (p, s) in params.iter().zip(states.iter_mut()) {
        p.refund(s, now, cost);
    }
}

/// A peek on the general path: charges nothing.
pub(crate) fn peek_all(states: &mut [QuotaState], params: &[Params], now: u64) -> (Outcome, usize) {
    pick(params.iter().zip(states.iter_mut()).map(|(p, s)| {
        let one = p.decide(s, now, 1);
        Outcome::peek(one, p.decide(s, now, 0))
    }))
}

/// A peek at a key that holds no state: every quota is fresh. Allocates nothing.
pub(crate) fn peek_fresh(params: &[Params], now: u64) -> (Outcome, usize) {
    pick(params.iter().map(|p| {
        let mut s = p.fresh();
        let one = p.decide(&mut s, now, 1);
        Outcome::peek(one, p.decide(&mut s, now, 0))
    }))
}
