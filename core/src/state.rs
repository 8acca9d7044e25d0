//! Per-key state and how it is updated.
//!
//! - **Fast path** (one GCRA quota): the state is one `AtomicU64` holding the
//!   theoretical arrival time (ns; 0 = never seen, which reads as a full bucket).
//!   A check is a load, pure math, and one compare-exchange, retried only when
//!   another thread changed the same key in between. A denial writes nothing.
//! - **Packed window path** (one fixed-window or sliding-window quota that
//!   fits, [`PackedWindow`]): the same, on the window index and counts packed
//!   into one `AtomicU64`.
//! - **Two token buckets** (`pair`, where 128-bit atomics are lock-free): both
//!   TATs in one `AtomicU128`, both charged or neither by one compare-exchange.
//! - **General path** (other quota sets, a sliding log, or a window quota too
//!   large to pack): the states of all of a key's quotas sit behind one per-key
//!   `parking_lot::Mutex`, held only for the math of one check. That makes a
//!   multi-quota check all-or-nothing: every quota admits and all are charged,
//!   or none is.

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

/// Two GCRA quotas of one key (a rule's `["100/min", "1000/day"]`), their
/// TATs in one 128-bit atomic (quota 0 in the low half): a check is a load,
/// both decisions, and one compare-exchange that charges both or neither, as
/// [`check_all`] does under the key's lock, without the lock or a heap
/// allocation per key. A denial writes nothing.
#[cfg(all(feature = "shm", not(floodgate_loom)))]
pub(crate) mod pair {
    use portable_atomic::{AtomicU128, Ordering};

    use super::{Outcome, pick};
    use crate::algorithm::gcra::Gcra;

    fn tats(bits: u128) -> [u64; 2] {
        [bits as u64, (bits >> 64) as u64]
    }

    /// The cell's bits for TATs `[low, high]`.
    pub(crate) fn bits([low, high]: [u64; 2]) -> u128 {
        u128::from(low) | (u128::from(high) << 64)
    }

    /// Both TATs, as a [`QuotaState::Gcra`](super::QuotaState::Gcra) each.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // carry
    pub(crate) fn states(cell: &AtomicU128) -> [super::QuotaState; 2] {
        // Relaxed: as in check.
        tats(cell.load(Ordering::Relaxed)).map(super::QuotaState::Gcra)
    }

    /// One check of `cost` on both quotas: the deciding outcome and its quota.
    #[inline]
    pub(crate) fn check(
        cell: &AtomicU128,
        gcra: &[Gcra; 2],
        now: u64,
        cost: u64,
    ) -> (Outcome, usize) {
        // Relaxed everywhere: the two TATs are the whole state and publish no
        // other memory (as gcra_check).
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            let [a, b] = tats(current);
            let (oa, na) = gcra[0].decide(a, now, cost);
            let (ob, nb) = gcra[1].decide(b, now, cost);
            let decided = pick([oa, ob].into_iter());
            let next = bits([na, nb]);
            if !decided.0.allowed || next == current {
                return decided;
            }
            match cell.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return decided,
                Err(seen) => current = seen,
            }
        }
    }

    /// What one unit would get with the cell at `bits` (0: a key never seen).
    pub(crate) fn peek(bits: u128, gcra: &[Gcra; 2], now: u64) -> (Outcome, usize) {
        let [a, b] = tats(bits);
        pick(
            [(&gcra[0], a), (&gcra[1], b)]
                .into_iter()
                .map(|(g, tat)| super::gcra_peek(tat, g, now)),
        )
    }

    /// Gives back `cost` units to both quotas.
    pub(crate) fn refund(cell: &AtomicU128, gcra: &[Gcra; 2], cost: u64) {
        // Relaxed: as in check.
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
            let [a, b] = tats(current);
            Some(bits([gcra[0].refund(a, cost), gcra[1].refund(b, cost)]))
        });
    }
}

/// The full window index whose low `bits` bits are `stored`, nearest to
/// `current`: exact for a stored index within 2^(bits-1) windows of `current`.
/// (Packed window states here and in shared memory, `store/shm/codec.rs`.)
pub(crate) fn nearest(stored: u128, bits: u32, current: u64) -> u64 {
    let m = (1u128 << bits) - 1;
    let stored = stored & m;
    let behind = (u128::from(current).wrapping_sub(stored)) & m;
    if behind < (1u128 << (bits - 1)) {
        current.saturating_sub(behind as u64)
    } else {
        current.saturating_add(((m + 1 - behind) & m) as u64)
    }
}

/// One window quota (fixed window or sliding-window counter) whose whole state
/// for a key fits one `AtomicU64`: the one-window-quota fast path, a load, the
/// algorithm's pure math and one compare-exchange, as GCRA's (no per-key lock,
/// no heap allocation per key).
///
/// Bits: 63 is set once the key holds state (0 reads as never seen); the counts
/// take `count_bits` bits each at the bottom (sliding counter: current, then
/// previous; fixed: the count); the window index modulo 2^w fills the rest
/// (w >= 32) and is read back as the index nearest now's: exact for state
/// younger than 2^31 windows, and a window here is at least a second (68 years).
/// `count_bits` holds twice the limit: counts a reload carried over from a
/// higher limit stay exact up to there (more saturate, still over the limit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PackedWindow {
    params: Params,
    window: u64,
    count_bits: u32,
    /// Counts kept: 2 for the sliding counter, 1 for the fixed window.
    counts: u32,
}

/// Set in a packed window state once the key holds state.
const HELD: u64 = 1 << 63;
/// Fewest bits a packed window index keeps.
const MIN_INDEX_BITS: u32 = 32;
/// Shortest window packed (1 s): 2^31 windows of it are 68 years.
const MIN_PACKED_WINDOW_NS: u64 = 1_000_000_000;

impl PackedWindow {
    /// The packing of `quota`, if it is a window quota whose state fits (a
    /// sliding counter's limit below 16,384, a fixed window's below 2^30, and a
    /// window of at least a second).
    pub(crate) fn new(quota: &Quota) -> Option<Self> {
        let counts = match quota.algorithm() {
            Algorithm::FixedWindow => 1,
            Algorithm::SlidingWindow => 2,
            Algorithm::Gcra | Algorithm::SlidingLog => return None,
        };
        let count_bits = u64::BITS - quota.limit().leading_zeros() + 1;
        let fits = 63u32.saturating_sub(counts * count_bits) >= MIN_INDEX_BITS;
        (fits && quota.period_ns() >= MIN_PACKED_WINDOW_NS).then(|| Self {
            params: Params::new(quota),
            window: quota.period_ns(),
            count_bits,
            counts,
        })
    }

    /// The quota's parameters.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // carry
    pub(crate) fn params(&self) -> &Params {
        &self.params
    }

    fn count_mask(&self) -> u64 {
        (1 << self.count_bits) - 1
    }

    fn index_bits(&self) -> u32 {
        63 - self.counts * self.count_bits
    }

    /// The state in `bits`, its window index read as the one nearest `now`'s.
    pub(crate) fn unpack(&self, bits: u64, now: u64) -> QuotaState {
        if bits & HELD == 0 {
            return self.params.fresh();
        }
        let (c, m) = (self.count_bits, self.count_mask());
        let index = nearest(
            u128::from((bits & !HELD) >> (self.counts * c)),
            self.index_bits(),
            now / self.window,
        );
        if self.counts == 2 {
            QuotaState::Counter(CounterState {
                window: index,
                prev: (bits >> c) & m,
                curr: bits & m,
            })
        } else {
            QuotaState::Fixed(FixedState {
                window: index,
                count: bits & m,
            })
        }
    }

    /// The bits of `state` (this quota's algorithm; counts saturate at the mask).
    pub(crate) fn pack(&self, state: &QuotaState) -> u64 {
        let (c, m) = (self.count_bits, self.count_mask());
        let (index, low) = match state {
            QuotaState::Counter(s) => (s.window, (s.prev.min(m) << c) | s.curr.min(m)),
            QuotaState::Fixed(s) => (s.window, s.count.min(m)),
            // Built from the same quota as the state: nothing else is stored.
            QuotaState::Gcra(_) | QuotaState::Log(_) => return 0,
        };
        let index = index & ((1 << self.index_bits()) - 1);
        HELD | (index << (self.counts * c)) | low
    }

    /// One check on the key's cell: a compare-exchange loop, as GCRA's. A denial
    /// writes nothing.
    #[inline]
    pub(crate) fn check(&self, cell: &AtomicU64, now: u64, cost: u64) -> Outcome {
        // gcra_check's loop written out again on purpose: one helper for both,
        // taking the decision as a closure, measured 3-9% slower on each
        // (gcra 73.4 -> 76.3 ns, fixed window 80.0 -> 86.8 ns; benches/README.md,
        // "one compare-exchange loop for GCRA and the packed window").
        // Relaxed everywhere: the packed state is the whole state and publishes
        // no other memory (as gcra_check).
        let mut bits = cell.load(Ordering::Relaxed);
        loop {
            let mut state = self.unpack(bits, now);
            let (outcome, changed) = self.params.check(&mut state, now, cost);
            if !changed {
                return outcome;
            }
            let next = self.pack(&state);
            if next == bits {
                return outcome;
            }
            match cell.compare_exchange_weak(bits, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return outcome,
                Err(current) => bits = current,
            }
        }
    }

    /// What a request of one unit would get with the state in `bits`, charging
    /// nothing.
    pub(crate) fn peek(&self, bits: u64, now: u64) -> Outcome {
        let mut state = self.unpack(bits, now);
        let one = self.params.decide(&mut state, now, 1);
        Outcome::peek(one, self.params.decide(&mut state, now, 0))
    }

    /// Gives back `cost` units charged at `now`.
    pub(crate) fn refund(&self, cell: &AtomicU64, now: u64, cost: u64) {
        // Relaxed: as in check.
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            if bits & HELD == 0 {
                return None;
            }
            let mut state = self.unpack(bits, now);
            self.params.refund(&mut state, now, cost);
            Some(self.pack(&state))
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_reads_either_side_of_now() {
        assert_eq!(nearest(5, 36, 5), 5);
        assert_eq!(nearest(4, 36, 5), 4);
        assert_eq!(nearest(7, 36, 5), 7);
        let current = (1u64 << 40) + 3;
        let stored = u128::from(current - 10) & ((1 << 36) - 1);
        assert_eq!(nearest(stored, 36, current), current - 10);
        let ahead = u128::from(current + 10) & ((1 << 36) - 1);
        assert_eq!(nearest(ahead, 36, current), current + 10);
    }
}
