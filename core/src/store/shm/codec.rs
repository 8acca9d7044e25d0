//! A quota's state packed into the 80 state bits of a slot.
//!
//! - GCRA: the theoretical arrival time, 64 bits of ns.
//! - Fixed window: the count in `bits(limit)` bits, above it the window index
//!   modulo 2^(80 - count bits).
//! - Sliding-window counter: the current and previous counts in `bits(limit)`
//!   bits each, above them the window index modulo 2^(80 - 2 * count bits).
//!
//! A window index is stored modulo 2^w (w >= 36) and read back as the index
//! nearest the current one: exact for any state younger than 2^(w-1) windows
//! (a year of 1 ms windows; 1,000 years of 1 s windows). The sliding log needs
//! one entry per request and is refused on this store.

use crate::algorithm::fixed_window::FixedState;
use crate::algorithm::sliding_window::CounterState;
use crate::quota::{Algorithm, Quota};
use crate::state::{QuotaState, nearest};

/// State bits in a slot.
pub(super) const STATE_BITS: u32 = 80;
/// Fewest bits a window index keeps.
const MIN_WINDOW_BITS: u32 = 36;

/// How one quota's state is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Gcra,
    Fixed {
        window: u64,
        count_bits: u32,
        limit: u64,
        /// Windows a past window's slot is kept: 1 for a calendar quota, whose
        /// keys are decided at times up to a window apart (`Quota::calendar`).
        grace: u64,
    },
    Counter {
        window: u64,
        count_bits: u32,
        limit: u64,
    },
    /// A ban (`policy/ban.rs`): the end of the ban (64 bits of ns) and its
    /// escalation level (16 bits above), kept `max_ns` after the ban ends so a
    /// returning offender's next ban escalates. Written with `apply_bits`.
    Ban {
        max_ns: u64,
    },
    /// Adaptive tightening's counts of one key (`policy/ban.rs`) in windows of
    /// `window` ns: see [`AdaptiveBits`]. Written with `apply_bits`.
    Adaptive {
        window: u64,
    },
    /// A key's requests in flight (`policy/lifecycle.rs`): a period index modulo
    /// 2^32 and two counts in the low 64 bits, periods of `ttl` ns. Written with
    /// `apply_bits`.
    InFlight {
        ttl: u64,
    },
}

/// One key's adaptive-tightening window packed in 80 state bits: requests and
/// denials in 22 bits each (saturating at 4,194,303 per window), the tightened
/// flag, and the window index modulo 2^35 (read back as the index nearest now's:
/// exact for state younger than 2^34 windows, 199 days of 1 ms windows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AdaptiveBits {
    pub index: u64,
    pub requests: u64,
    pub denials: u64,
    pub tightened: bool,
}

const ADAPTIVE_COUNT_BITS: u32 = 22;
const ADAPTIVE_INDEX_SHIFT: u32 = 2 * ADAPTIVE_COUNT_BITS + 1;

impl AdaptiveBits {
    /// Most requests (or denials) a window counts.
    pub(crate) const MAX_COUNT: u64 = (1 << ADAPTIVE_COUNT_BITS) - 1;

    /// Unpacks state bits, reading the window index as the one nearest `current`.
    pub(crate) fn unpack(bits: u128, current: u64) -> Self {
        let c = ADAPTIVE_COUNT_BITS;
        Self {
            index: nearest(
                bits >> ADAPTIVE_INDEX_SHIFT,
                STATE_BITS - ADAPTIVE_INDEX_SHIFT,
                current,
            ),
            requests: (bits & mask(c)) as u64,
            denials: ((bits >> c) & mask(c)) as u64,
            tightened: (bits >> (2 * c)) & 1 == 1,
        }
    }

    /// The state bits (counts saturate at [`MAX_COUNT`](Self::MAX_COUNT)).
    pub(crate) fn pack(&self) -> u128 {
        let c = ADAPTIVE_COUNT_BITS;
        let count = |n: u64| u128::from(n.min(Self::MAX_COUNT));
        ((u128::from(self.index) & mask(STATE_BITS - ADAPTIVE_INDEX_SHIFT)) << ADAPTIVE_INDEX_SHIFT)
            | (u128::from(self.tightened) << (2 * c))
            | (count(self.denials) << c)
            | count(self.requests)
    }
}

/// A ban's state bits: (end, level).
pub(crate) fn ban_of(bits: u128) -> (u64, u32) {
    (bits as u64, ((bits >> 64) & 0xffff) as u32)
}

/// The state bits of a ban ending at `until` at escalation level `level`.
pub(crate) fn ban_bits(until: u64, level: u32) -> u128 {
    u128::from(until) | (u128::from(level.min(0xffff)) << 64)
}

fn mask(bits: u32) -> u128 {
    (1u128 << bits) - 1
}

impl Codec {
    /// The codec of `quota`, or why the shared-memory store cannot hold it.
    pub(crate) fn new(quota: &Quota) -> Result<Self, &'static str> {
        let count_bits = (u64::BITS - quota.limit().leading_zeros()).max(1);
        let window = quota.period_ns().max(1);
        let limit = quota.limit();
        let (codec, counts) = match quota.algorithm() {
            Algorithm::Gcra => return Ok(Self::Gcra),
            Algorithm::FixedWindow => (
                Self::Fixed {
                    window,
                    count_bits,
                    limit,
                    grace: u64::from(quota.calendar_unit().is_some()),
                },
                1,
            ),
            Algorithm::SlidingWindow => (
                Self::Counter {
                    window,
                    count_bits,
                    limit,
                },
                2,
            ),
            Algorithm::SlidingLog => {
                return Err(
                    "the sliding log keeps one entry per request and cannot live in \
                     shared memory: use sliding_window (the two-window counter), gcra or \
                     fixed_window",
                );
            }
        };
        if STATE_BITS.saturating_sub(counts * count_bits) < MIN_WINDOW_BITS {
            return Err(
                "the limit is too large for a window quota in shared memory \
                 (sliding_window: at most 4194303, fixed_window: at most 17592186044415); \
                 use gcra for larger limits",
            );
        }
        Ok(codec)
    }

    /// Bits left for the window index beside `counts` counts.
    fn window_bits(count_bits: u32, counts: u32) -> u32 {
        STATE_BITS - counts * count_bits
    }

    /// Packs `state` (of this codec's algorithm) into state bits.
    pub(super) fn pack(&self, state: &QuotaState) -> u128 {
        match (self, state) {
            (Self::Gcra, QuotaState::Gcra(tat)) => u128::from(*tat),
            (Self::Fixed { count_bits, .. }, QuotaState::Fixed(s)) => {
                let wb = Self::window_bits(*count_bits, 1);
                let w = u128::from(s.window) & mask(wb);
                (w << count_bits) | (u128::from(s.count) & mask(*count_bits))
            }
            (Self::Counter { count_bits, .. }, QuotaState::Counter(s)) => {
                let wb = Self::window_bits(*count_bits, 2);
                let w = u128::from(s.window) & mask(wb);
                let c = *count_bits;
                (w << (2 * c))
                    | ((u128::from(s.prev) & mask(c)) << c)
                    | (u128::from(s.curr) & mask(c))
            }
            // A codec is built from the same quota as the state; nothing to store otherwise.
            _ => 0,
        }
    }

    /// Unpacks state bits, reading a window index as the one nearest `now`'s.
    pub(super) fn unpack(&self, bits: u128, now: u64) -> QuotaState {
        let bits = bits & mask(STATE_BITS);
        match self {
            // The low 64 bits are the TAT (packed from a u64).
            Self::Gcra | Self::Ban { .. } | Self::Adaptive { .. } | Self::InFlight { .. } => {
                QuotaState::Gcra(bits as u64)
            }
            Self::Fixed {
                window, count_bits, ..
            } => {
                let wb = Self::window_bits(*count_bits, 1);
                QuotaState::Fixed(FixedState {
                    window: nearest(bits >> count_bits, wb, now / window),
                    count: (bits & mask(*count_bits)) as u64,
                })
            }
            Self::Counter {
                window, count_bits, ..
            } => {
                let c = *count_bits;
                let wb = Self::window_bits(c, 2);
                QuotaState::Counter(CounterState {
                    window: nearest(bits >> (2 * c), wb, now / window),
                    prev: ((bits >> c) & mask(c)) as u64,
                    curr: (bits & mask(c)) as u64,
                })
            }
        }
    }

    /// How far ahead of its window's start a key has spent, as a time: GCRA's
    /// TAT, and for a window the instant its count would have been earned at the
    /// quota's steady rate. When every slot a new key may take holds live state,
    /// the one with the smallest score is evicted: the key that has spent least
    /// (one request of a unique-key flood) goes before a client that is near
    /// its limit.
    pub(super) fn score(&self, bits: u128, now: u64) -> u64 {
        if let Self::Ban { .. } | Self::Adaptive { .. } | Self::InFlight { .. } = self {
            return self.expiry(bits, now);
        }
        let spent = |start: u64, window: u64, count: u64, limit: u64| {
            let ahead = u128::from(count) * u128::from(window) / u128::from(limit.max(1));
            start.saturating_add(u64::try_from(ahead).unwrap_or(u64::MAX))
        };
        match (self, self.unpack(bits, now)) {
            (_, QuotaState::Gcra(tat)) => tat,
            (Self::Fixed { window, limit, .. }, QuotaState::Fixed(s)) => {
                spent(s.window.saturating_mul(*window), *window, s.count, *limit)
            }
            (Self::Counter { window, limit, .. }, QuotaState::Counter(s)) => spent(
                s.window.saturating_mul(*window),
                *window,
                s.prev.saturating_add(s.curr),
                *limit,
            ),
            _ => 0,
        }
    }

    /// The time after which the state in `bits` no longer changes any decision
    /// (a full bucket, a past window): a slot past it is free to reuse.
    pub(super) fn expiry(&self, bits: u128, now: u64) -> u64 {
        if let Self::Ban { max_ns } = self {
            return ban_of(bits).0.saturating_add(*max_ns);
        }
        if let Self::Adaptive { window } = self {
            // A window decides the next one; after that it no longer matters.
            let window = (*window).max(1);
            let w = AdaptiveBits::unpack(bits, now / window);
            return w.index.saturating_add(2).saturating_mul(window);
        }
        if let Self::InFlight { ttl } = self {
            // A place is released two periods after the one it was taken in.
            let ttl = (*ttl).max(1);
            let period = nearest(u128::from(bits as u64 >> 32), 32, now / ttl);
            return period.saturating_add(2).saturating_mul(ttl);
        }
        match (self, self.unpack(bits, now)) {
            (_, QuotaState::Gcra(tat)) => tat,
            (Self::Fixed { window, grace, .. }, QuotaState::Fixed(s)) => {
                s.window.saturating_add(1 + grace).saturating_mul(*window)
            }
            (Self::Counter { window, .. }, QuotaState::Counter(s)) => {
                s.window.saturating_add(2).saturating_mul(*window)
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quota {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn window_states_round_trip_near_now() {
        let fixed = Codec::new(
            &q("100/s")
                .with_algorithm(Algorithm::FixedWindow)
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let now = 1_780_000_000_000_000_000u64; // 2026, in ns
        let index = now / 1_000_000_000;
        for (window, count) in [(index, 0), (index, 100), (index - 1, 7), (index + 3, 1)] {
            let s = QuotaState::Fixed(FixedState { window, count });
            match fixed.unpack(fixed.pack(&s), now) {
                QuotaState::Fixed(back) => assert_eq!((back.window, back.count), (window, count)),
                other => panic!("{other:?}"),
            }
        }
        let counter = Codec::new(
            &Quota::new(1000, std::time::Duration::from_millis(1))
                .unwrap_or_else(|e| panic!("{e}"))
                .with_algorithm(Algorithm::SlidingWindow)
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let index = now / 1_000_000;
        let s = QuotaState::Counter(CounterState {
            window: index - 1,
            prev: 1000,
            curr: 3,
        });
        match counter.unpack(counter.pack(&s), now) {
            QuotaState::Counter(back) => {
                assert_eq!((back.window, back.prev, back.curr), (index - 1, 1000, 3))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_bits_read_as_a_fresh_state() {
        let fixed = Codec::new(
            &q("5/min")
                .with_algorithm(Algorithm::FixedWindow)
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        match fixed.unpack(0, 1_780_000_000_000_000_000) {
            QuotaState::Fixed(s) => assert_eq!(s.count, 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(Codec::Gcra.unpack(0, 5), QuotaState::Gcra(0));
    }

    #[test]
    fn refuses_what_cannot_be_packed() {
        let log = q("10/s")
            .with_algorithm(Algorithm::SlidingLog)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(Codec::new(&log).unwrap_err().contains("sliding_window"));
        let big = Quota::per_second(5_000_000)
            .and_then(|q| q.with_algorithm(Algorithm::SlidingWindow))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(Codec::new(&big).unwrap_err().contains("4194303"));
        let ok = Quota::per_second(1_048_575)
            .and_then(|q| q.with_algorithm(Algorithm::SlidingWindow))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(Codec::new(&ok).is_ok());
        let huge = Quota::per_hour(1 << 40).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Codec::new(&huge), Ok(Codec::Gcra));
    }

    #[test]
    fn adaptive_bits_round_trip_and_saturate() {
        let current = 1_800_000_000_000; // ms windows since 1970
        for w in [
            AdaptiveBits::default(),
            AdaptiveBits {
                index: current - 1,
                requests: 17,
                denials: 9,
                tightened: true,
            },
            AdaptiveBits {
                index: current,
                requests: AdaptiveBits::MAX_COUNT,
                denials: 0,
                tightened: false,
            },
        ] {
            let w = AdaptiveBits {
                index: if w.index == 0 { current } else { w.index },
                ..w
            };
            assert_eq!(AdaptiveBits::unpack(w.pack(), current), w);
            assert!(w.pack() < 1u128 << STATE_BITS);
        }
        let over = AdaptiveBits {
            index: current,
            requests: u64::MAX,
            denials: AdaptiveBits::MAX_COUNT + 5,
            tightened: true,
        };
        let back = AdaptiveBits::unpack(over.pack(), current);
        assert_eq!(
            (back.requests, back.denials, back.tightened),
            (AdaptiveBits::MAX_COUNT, AdaptiveBits::MAX_COUNT, true)
        );
        let codec = Codec::Adaptive { window: 1_000_000 };
        let at = current * 1_000_000;
        let bits = AdaptiveBits {
            index: current,
            requests: 1,
            ..AdaptiveBits::default()
        }
        .pack();
        assert_eq!(codec.expiry(bits, at), (current + 2) * 1_000_000);
        assert_eq!(codec.score(bits, at), codec.expiry(bits, at));
    }
}
