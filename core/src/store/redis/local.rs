//! The per-key local layers in front of Redis: the **over-limit cache** (a key
//! Redis denied is answered here until its retry time) and **token leases**
//! (units charged in Redis ahead of time, spent here). Pure state and
//! arithmetic on an injected time; the limiter keeps one [`Local`] per key in a
//! bounded in-memory store.

use super::units::Micros;

/// One key's local state. Times are Unix µs.
#[derive(Debug, Default)]
pub(super) struct Local {
    deny_until: Micros,
    deny_cost: u64,
    deny_reset: Micros,
    deny_quota: u32,
    lease_left: u64,
    lease_until: Micros,
    lease_remaining: u64,
    lease_quota: u32,
}

/// A check answered here, without a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// Redis denied this cost earlier and its retry time has not come.
    Denied {
        quota: usize,
        retry_after: Micros,
        reset_after: Micros,
    },
    /// Admitted from the lease; `remaining` counts the lease's unspent units.
    Leased { quota: usize, remaining: u64 },
}

fn quota_u32(quota: usize) -> u32 {
    u32::try_from(quota).unwrap_or(u32::MAX)
}

impl Local {
    /// A cached denial of exactly this cost, else `cost` units spent from the
    /// lease, else `None` (go to Redis). `cost` is above 0.
    pub(super) fn answer(&mut self, cost: u64, now: Micros) -> Option<Answer> {
        if self.deny_until > now && cost == self.deny_cost {
            return Some(Answer::Denied {
                quota: self.deny_quota as usize,
                retry_after: self.deny_until.saturating_sub(now),
                reset_after: self.deny_reset.saturating_sub(now),
            });
        }
        if self.lease_until <= now || self.lease_left < cost {
            return None;
        }
        self.lease_left -= cost;
        Some(Answer::Leased {
            quota: self.lease_quota as usize,
            remaining: self.lease_remaining.saturating_add(self.lease_left),
        })
    }

    /// Remembers a denial of `cost` until `now + retry_after`.
    pub(super) fn deny(
        &mut self,
        cost: u64,
        now: Micros,
        quota: usize,
        retry_after: Micros,
        reset_after: Micros,
    ) {
        self.deny_until = now.saturating_add(retry_after);
        self.deny_cost = cost;
        self.deny_reset = now.saturating_add(reset_after);
        self.deny_quota = quota_u32(quota);
    }

    /// Adds `units` charged in Redis to the lease, which now lasts `ttl` from
    /// `now`; `remaining` is what Redis had left after the charge. Units of an
    /// expired lease are dropped, never carried over.
    pub(super) fn grant(
        &mut self,
        units: u64,
        now: Micros,
        ttl: Micros,
        remaining: u64,
        quota: usize,
    ) {
        if self.lease_until <= now {
            self.lease_left = 0;
        }
        self.lease_left = self.lease_left.saturating_add(units);
        self.lease_until = now.saturating_add(ttl);
        self.lease_remaining = remaining;
        self.lease_quota = quota_u32(quota);
    }

    /// Puts `cost` units back into a live lease; false if there is none (the
    /// refund must then go to Redis).
    pub(super) fn refund(&mut self, cost: u64, now: Micros) -> bool {
        if self.lease_until > now {
            self.lease_left = self.lease_left.saturating_add(cost);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_is_answered_until_its_retry_time_for_the_same_cost() {
        let mut l = Local::default();
        l.deny(2, Micros(1000), 1, Micros(500), Micros(900));
        assert_eq!(
            l.answer(2, Micros(1200)),
            Some(Answer::Denied {
                quota: 1,
                retry_after: Micros(300),
                reset_after: Micros(700)
            })
        );
        assert_eq!(
            l.answer(1, Micros(1200)),
            None,
            "a smaller cost may fit: ask Redis"
        );
        assert_eq!(l.answer(2, Micros(1500)), None, "retry time reached");
    }

    #[test]
    fn a_lease_is_spent_until_empty_or_expired_and_never_carried_over() {
        let mut l = Local::default();
        l.grant(4, Micros(0), Micros(100), 10, 0);
        assert_eq!(
            l.answer(3, Micros(10)),
            Some(Answer::Leased {
                quota: 0,
                remaining: 11
            })
        );
        assert_eq!(l.answer(2, Micros(20)), None, "one unit left");
        assert_eq!(
            l.answer(1, Micros(20)),
            Some(Answer::Leased {
                quota: 0,
                remaining: 10
            })
        );
        l.grant(2, Micros(50), Micros(100), 5, 0);
        assert_eq!(
            l.answer(2, Micros(149)),
            Some(Answer::Leased {
                quota: 0,
                remaining: 5
            })
        );
        l.grant(5, Micros(120), Micros(10), 3, 0);
        assert_eq!(l.answer(1, Micros(130)), None, "expired at 130");
        l.grant(1, Micros(200), Micros(10), 0, 0);
        assert_eq!(
            l.answer(2, Micros(201)),
            None,
            "the expired lease's 5 units were dropped"
        );
    }

    #[test]
    fn a_refund_goes_to_a_live_lease_only() {
        let mut l = Local::default();
        assert!(!l.refund(1, Micros(0)));
        l.grant(2, Micros(0), Micros(100), 0, 0);
        assert!(l.refund(3, Micros(99)));
        assert_eq!(
            l.answer(5, Micros(99)),
            Some(Answer::Leased {
                quota: 0,
                remaining: 0
            })
        );
        assert!(!l.refund(1, Micros(100)));
    }
}
