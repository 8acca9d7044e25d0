//! One limiter's quotas in the shared table ([`SharedKeys`]): check and charge
//! every quota of a key all-or-nothing (refunding the ones charged before a
//! denial), refund, reset, peek.

use std::sync::Arc;

use super::{DENIED, ShmTable};
use crate::algorithm::Outcome;
use crate::state::Params;

/// One limiter's quotas in a shared table: quota numbers `first..first + n`.
#[derive(Debug)]
pub(crate) struct SharedKeys {
    pub table: Arc<ShmTable>,
    pub first: usize,
    pub params: Box<[Params]>,
    /// Mixed into every key's hash, so limiters sharing a table never share keys.
    pub id: u64,
}

impl SharedKeys {
    fn each<'a>(&'a self) -> impl Iterator<Item = (usize, &'a Params)> + 'a {
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| (self.first + i, p))
    }

    /// Checks and charges quota `q` of the key hashed `h`.
    #[inline]
    fn charge_one(&self, q: usize, p: &Params, h: u64, now: u64, cost: u64) -> Outcome {
        self.table.apply(q, h, now, true, |mut s| {
            let (o, changed) = p.check(&mut s, now, cost);
            (o, changed.then_some(s))
        })
    }

    /// Checks and charges every quota, all or nothing.
    pub(crate) fn check(&self, key: &[u8], now: u64, cost: u64) -> (Outcome, usize) {
        let h = self.table.key_hash(self.id, key);
        if cost == 0 {
            return crate::state::pick(self.each().map(|(q, p)| self.peek_one(q, p, h, now)));
        }
        if let [p] = &*self.params {
            // One quota: nothing to refund, nothing to pick.
            return (self.charge_one(self.first, p, h, now, cost), 0);
        }
        let mut outcomes = [DENIED; crate::limiter::MAX_QUOTAS];
        let mut charged = 0;
        let mut denied = false;
        for ((q, p), out) in self.each().zip(outcomes.iter_mut()) {
            *out = if denied {
                // What this quota says of the same request, for picking the
                // deciding denial as the in-process store does; nothing charged.
                self.table.apply(q, h, now, false, |mut s| {
                    (p.decide(&mut s, now, cost), None)
                })
            } else {
                self.charge_one(q, p, h, now, cost)
            };
            if !denied {
                if out.allowed {
                    charged += 1;
                } else {
                    denied = true;
                }
            }
        }
        if denied {
            for (q, p) in self.each().take(charged) {
                self.refund_one(q, p, h, now, cost);
            }
        }
        crate::state::pick(outcomes.into_iter().take(self.params.len()))
    }

    /// Gives back `cost` units to every quota.
    pub(crate) fn refund(&self, key: &[u8], now: u64, cost: u64) {
        let h = self.table.key_hash(self.id, key);
        for (q, p) in self.each() {
            self.refund_one(q, p, h, now, cost);
        }
    }

    /// Forgets a key: returns whether any of its quotas was held.
    pub(crate) fn reset(&self, key: &[u8]) -> bool {
        let h = self.table.key_hash(self.id, key);
        let mut held = false;
        for (q, _) in self.each() {
            held |= self.table.remove(q, h);
        }
        held
    }

    fn peek_one(&self, q: usize, p: &Params, h: u64, now: u64) -> Outcome {
        self.table.apply(q, h, now, false, |mut s| {
            let one = p.decide(&mut s, now, 1);
            (Outcome::peek(one, p.decide(&mut s, now, 0)), None)
        })
    }

    fn refund_one(&self, q: usize, p: &Params, h: u64, now: u64, cost: u64) {
        self.table.apply(q, h, now, false, |mut s| {
            p.refund(&mut s, now, cost);
            (DENIED, Some(s))
        });
    }
}
