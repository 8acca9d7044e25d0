//! Places in flight (`max_in_flight`) of one key, as one 64-bit word changed
//! only by compare-and-swap: the state machine the policy layer's `InFlight`
//! runs on every store (a word in memory, a slot of the shared table, the same
//! arithmetic in Redis's `in_flight.lua`). Free of the `policy` feature so the
//! loom model (`tests/loom.rs`) checks it.

use crate::sync::{AtomicU64, Ordering};

/// One key's places in flight, packed in a word: the period index modulo 2^32
/// (high half), the previous period's count and this period's (16 bits each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Flight {
    pub period: u32,
    pub prev: u16,
    pub curr: u16,
}

impl Flight {
    pub(crate) fn unpack(bits: u64) -> Self {
        Self {
            period: (bits >> 32) as u32,
            prev: (bits >> 16) as u16,
            curr: bits as u16,
        }
    }

    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.period) << 32) | (u64::from(self.prev) << 16) | u64::from(self.curr)
    }

    /// The counts as of period `now` (modulo 2^32): places older than the
    /// previous period are released.
    fn roll(self, now: u32) -> Self {
        match now.wrapping_sub(self.period) {
            0 => self,
            1 => Self {
                period: now,
                prev: self.curr,
                curr: 0,
            },
            _ => Self {
                period: now,
                prev: 0,
                curr: 0,
            },
        }
    }

    /// Places held at period `now`.
    pub(crate) fn held(self, now: u32) -> u64 {
        let f = self.roll(now);
        u64::from(f.prev) + u64::from(f.curr)
    }

    /// Takes a place at period `now` if fewer than `max` are held: the new
    /// state, or `None` when full.
    pub(crate) fn acquire(self, now: u32, max: u64) -> Option<Self> {
        let f = self.roll(now);
        (u64::from(f.prev) + u64::from(f.curr) < max).then_some(Self {
            curr: f.curr.saturating_add(1),
            ..f
        })
    }

    /// Gives back a place taken at period `taken`, as of period `now` (nothing
    /// if the store already released it).
    pub(crate) fn release(self, taken: u32, now: u32) -> Self {
        let mut f = self.roll(now);
        match now.wrapping_sub(taken) {
            0 => f.curr = f.curr.saturating_sub(1),
            1 => f.prev = f.prev.saturating_sub(1),
            _ => {}
        }
        f
    }
}

/// Runs `step` on `cell` until its compare-and-swap lands: `step` gets the
/// current word and returns a result and the next word (`None`: leave it).
/// Acquire/release: a place given back is seen by the next taker.
pub(crate) fn update<R>(cell: &AtomicU64, mut step: impl FnMut(u64) -> (R, Option<u64>)) -> R {
    let mut current = cell.load(Ordering::Acquire);
    loop {
        let (r, next) = step(current);
        let Some(next) = next else { return r };
        match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return r,
            Err(seen) => current = seen,
        }
    }
}

/// The step that takes a place at period `period` if fewer than `max` are
/// held (true when taken), for [`update`] or the shared table's CAS.
pub(crate) fn acquire_step(period: u32, max: u64) -> impl FnMut(u64) -> (bool, Option<u64>) {
    move |bits| match Flight::unpack(bits).acquire(period, max) {
        Some(f) => (true, Some(f.pack())),
        None => (false, None),
    }
}

/// The step that gives back a place taken at period `taken`, as of `now`.
pub(crate) fn release_step(taken: u32, now: u32) -> impl FnMut(u64) -> ((), Option<u64>) {
    move |bits| {
        let f = Flight::unpack(bits);
        let next = f.release(taken, now);
        ((), (next != f).then(|| next.pack()))
    }
}

/// Takes a place at period `period` if fewer than `max` are held.
#[cfg(floodgate_loom)]
pub(crate) fn acquire(cell: &AtomicU64, period: u32, max: u64) -> bool {
    update(cell, acquire_step(period, max))
}

/// Gives back a place taken at period `taken`, as of period `now`.
#[cfg(floodgate_loom)]
pub(crate) fn release(cell: &AtomicU64, taken: u32, now: u32) {
    update(cell, release_step(taken, now));
}

#[cfg(all(test, not(floodgate_loom)))]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_released_and_expire() {
        let mut f = Flight::default();
        for _ in 0..3 {
            f = f.acquire(10, 3).unwrap();
        }
        assert_eq!(f.acquire(10, 3), None, "full");
        f = f.release(10, 10);
        assert_eq!(f.held(10), 2);
        f = f.acquire(10, 3).unwrap();
        // The next period: places of period 10 still held.
        assert_eq!(f.held(11), 3);
        assert_eq!(f.acquire(11, 3), None);
        f = f.release(10, 11);
        assert_eq!(f.held(11), 2);
        // Two periods on, every place of period 10 is released by the store.
        assert_eq!(f.held(12), 0);
        assert_eq!(
            f.release(10, 12).held(12),
            0,
            "a late release frees nothing"
        );
        // Wraps with the period index.
        let f = Flight::default().acquire(u32::MAX, 1).unwrap();
        assert_eq!(f.held(0), 1);
        assert_eq!(f.held(1), 0);
        assert_eq!(Flight::unpack(f.pack()), f);
    }
}
