//! Structured events (delivered to a sink the host registers, e.g. its logger) and
//! counters rendered in the Prometheus text exposition format.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use super::jwt::TokenProblem;

/// What happened. Deliberately not `#[non_exhaustive]`: front ends match it
/// exhaustively (log levels, names), so a new kind must be mapped everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A request was denied with 429 by a rule.
    Denied,
    /// A shadow rule would have denied the request (it was allowed).
    ShadowDenied,
    /// A key was banned (once, when the ban starts).
    Banned,
    /// A bearer token was not accepted.
    TokenInvalid,
    /// A deny-listed IP, API key or subject was refused.
    DenyListed,
    /// 401: a rule needs a verified identity the request lacks, or an invalid token
    /// with `on_invalid = "reject"`.
    Unauthorized,
    /// A rule on a Redis store was answered by its fail mode (sent once, when
    /// Redis stops answering).
    StoreFallback,
    /// Redis answers again after a [`StoreFallback`](Self::StoreFallback).
    StoreRecovered,
    /// A request was denied with 429 because its key had `max_in_flight`
    /// requests running.
    ConcurrencyLimited,
    /// A settlement gave back or added to a rule's charge (`status` is the
    /// response's; `count`, `cost_from = "response"`).
    Settled,
}

crate::codes::codes!(EventKind {
    Denied => "denied",
    ShadowDenied => "shadow_denied",
    Banned => "banned",
    TokenInvalid => "token_invalid",
    DenyListed => "deny_listed",
    Unauthorized => "unauthorized",
    StoreFallback => "store_fallback",
    StoreRecovered => "store_recovered",
    ConcurrencyLimited => "concurrency_limited",
    Settled => "settled",
});

/// One event. Fields that do not apply are `None` or zero. Its text borrows
/// from the request and the policy (a flood's denials build no strings for
/// a sink that only counts them); [`into_owned`](Self::into_owned) keeps one.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    /// What happened.
    pub kind: EventKind,
    /// The rule involved.
    pub rule: Option<Cow<'a, str>>,
    /// The client's address, as the host passed it.
    pub client_ip: Option<IpAddr>,
    /// The rule's key (it may contain a user id: log it accordingly).
    pub key: Option<Cow<'a, str>>,
    /// The status answered (0 for a shadow denial, which is answered 200).
    pub status: u16,
    /// How long the client must wait (429 and bans).
    pub retry_after: Duration,
    /// Why a token was refused.
    pub token_problem: Option<TokenProblem>,
}

impl Event<'_> {
    /// The event with its own copies of its text, to keep past the sink's call.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            rule: self.rule.map(|r| Cow::Owned(r.into_owned())),
            key: self.key.map(|k| Cow::Owned(k.into_owned())),
            ..self
        }
    }
}

/// A function that receives events, on the request's thread: keep it quick.
pub type EventSink = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// Stripes of a [`Counter`] that a thread may own: the first this many
/// threads to count own one each; any further thread counts on one more,
/// shared, stripe.
const STRIPES: usize = 8;

/// A statistics counter bumped on the request path, striped across threads:
/// each thread adds to its own cache line, so two cores counting requests of
/// the same rule do not pass one line back and forth on every request (the
/// `check_request_threads` benchmark: benches/README.md); a read sums the
/// stripes. A stripe that a thread owns has no other writer, so its count is
/// a plain load and store, not an atomic read-modify-write (`lock xadd`, a
/// full barrier on x86), of which the example policy's allowed request made
/// two (benches/README.md: level on the clock there, 2% off a denial).
#[derive(Debug, Default)]
pub(crate) struct Counter([CachePadded<AtomicU64>; STRIPES + 1]);

/// Which stripes a thread owns (see [`Counter`]).
static OWNED: [AtomicBool; STRIPES] = [const { AtomicBool::new(false) }; STRIPES];

/// A thread's stripe: owned (given back to `registry` when the thread ends)
/// or the shared one.
struct Stripe {
    index: usize,
    owned: bool,
    registry: &'static [AtomicBool; STRIPES],
}

impl Stripe {
    /// The first stripe free in `registry` ([`OWNED`]), or the shared one.
    /// Acquire: the new owner reads the count its previous owner left
    /// (released in `drop`).
    fn claim(registry: &'static [AtomicBool; STRIPES]) -> Self {
        let free = registry.iter().position(|o| {
            o.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        });
        Self {
            index: free.unwrap_or(STRIPES),
            owned: free.is_some(),
            registry,
        }
    }
}

impl Drop for Stripe {
    fn drop(&mut self) {
        if let Some(o) = self.registry.get(self.index).filter(|_| self.owned) {
            o.store(false, Ordering::Release);
        }
    }
}

thread_local! {
    static STRIPE: Stripe = Stripe::claim(&OWNED);
}

impl Counter {
    /// The count (Relaxed: a statistic, read without ordering needs).
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .fold(0, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)))
    }

    /// Sets the count (a reloaded policy's counters continuing the old ones',
    /// before the policy decides anything: a stripe's owner counts by load
    /// and store, so a count made meanwhile could be overwritten).
    pub(crate) fn set(&self, value: u64) {
        for (i, c) in self.0.iter().enumerate() {
            c.store(if i == 0 { value } else { 0 }, Ordering::Relaxed);
        }
    }
}

/// Counters of one rule.
#[derive(Debug, Default)]
pub(crate) struct RuleCounters {
    pub allowed: Counter,
    pub denied: Counter,
    pub shadow_denied: Counter,
    pub banned: Counter,
    /// Denied by `max_in_flight`.
    pub concurrency: Counter,
    /// Places in flight taken by this process, and given back.
    pub in_flight_taken: Counter,
    pub in_flight_released: Counter,
}

/// All counters. Relaxed increments: they are statistics, read without ordering needs.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub rules: Vec<(Arc<str>, RuleCounters)>,
    pub jwt_invalid: [Counter; TokenProblem::ALL.len()],
    pub deny_listed: Counter,
    pub allow_listed: Counter,
    pub unauthorized: Counter,
    pub bans_started: Counter,
    /// Requests refused up front by a client-wide ban.
    pub banned_clients: Counter,
    pub no_rule: Counter,
    pub store_fallbacks: Counter,
    /// Verdicts settled; charges given back and extra charges made by settlements.
    pub settled: Counter,
    pub settle_refunds: Counter,
    pub settle_charges: Counter,
}

/// Counts one (Relaxed: a statistic).
#[inline]
pub(crate) fn bump(counter: &Counter) {
    // A count made while the thread's locals are torn down goes to the shared stripe.
    let (index, owned) = STRIPE
        .try_with(|s| (s.index, s.owned))
        .unwrap_or((STRIPES, false));
    if let Some(c) = counter.0.get(index) {
        if owned {
            // The stripe's only writer: no read-modify-write needed.
            c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        } else {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl RuleCounters {
    fn each(&self) -> [&Counter; 7] {
        [
            &self.allowed,
            &self.denied,
            &self.shadow_denied,
            &self.banned,
            &self.concurrency,
            &self.in_flight_taken,
            &self.in_flight_released,
        ]
    }
}

impl Metrics {
    fn globals(&self) -> impl Iterator<Item = &Counter> {
        self.jwt_invalid.iter().chain([
            &self.deny_listed,
            &self.allow_listed,
            &self.unauthorized,
            &self.bans_started,
            &self.banned_clients,
            &self.no_rule,
            &self.store_fallbacks,
            &self.settled,
            &self.settle_refunds,
            &self.settle_charges,
        ])
    }

    /// Starts these (a reloaded policy's, not yet deciding) counters where
    /// `old`'s are, so that a reload does not reset what Prometheus reads:
    /// every engine-wide counter, and each rule's under the same name.
    pub(crate) fn continue_from(&self, old: &Metrics) {
        for (new, old) in self.globals().zip(old.globals()) {
            new.set(old.get());
        }
        for (name, counters) in &self.rules {
            if let Some((_, before)) = old.rules.iter().find(|(n, _)| n == name) {
                for (new, old) in counters.each().into_iter().zip(before.each()) {
                    new.set(old.get());
                }
            }
        }
    }

    /// The Prometheus text exposition of every counter.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let get = Counter::get;
        out.push_str("# HELP floodgate_requests_total Requests decided by a rule, by outcome.\n");
        out.push_str("# TYPE floodgate_requests_total counter\n");
        for (name, c) in &self.rules {
            for (outcome, counter) in [
                ("allowed", &c.allowed),
                ("denied", &c.denied),
                ("shadow_denied", &c.shadow_denied),
                ("banned", &c.banned),
                ("concurrency", &c.concurrency),
            ] {
                let _ = writeln!(
                    out,
                    "floodgate_requests_total{{rule=\"{}\",outcome=\"{outcome}\"}} {}",
                    escape(name),
                    get(counter)
                );
            }
        }
        out.push_str(
            "# HELP floodgate_in_flight Requests this process admitted on a rule with \
             max_in_flight and has not settled.\n# TYPE floodgate_in_flight gauge\n",
        );
        for (name, c) in &self.rules {
            let held = get(&c.in_flight_taken).saturating_sub(get(&c.in_flight_released));
            if get(&c.in_flight_taken) > 0 {
                let _ = writeln!(
                    out,
                    "floodgate_in_flight{{rule=\"{}\"}} {held}",
                    escape(name)
                );
            }
        }
        out.push_str("# HELP floodgate_jwt_invalid_total Bearer tokens not accepted, by reason.\n");
        out.push_str("# TYPE floodgate_jwt_invalid_total counter\n");
        for (p, c) in TokenProblem::ALL.iter().zip(&self.jwt_invalid) {
            let _ = writeln!(
                out,
                "floodgate_jwt_invalid_total{{reason=\"{}\"}} {}",
                p.code(),
                get(c)
            );
        }
        for (name, help, c) in [
            (
                "floodgate_deny_listed_total",
                "Requests refused by a deny list.",
                &self.deny_listed,
            ),
            (
                "floodgate_allow_listed_total",
                "Requests let through by an allow list.",
                &self.allow_listed,
            ),
            (
                "floodgate_unauthorized_total",
                "Requests answered 401.",
                &self.unauthorized,
            ),
            ("floodgate_bans_total", "Bans started.", &self.bans_started),
            (
                "floodgate_banned_clients_total",
                "Requests refused by a client-wide ban (`[ban] scope = \"client\"`).",
                &self.banned_clients,
            ),
            (
                "floodgate_unmatched_total",
                "Requests no rule matched.",
                &self.no_rule,
            ),
            (
                "floodgate_store_fallbacks_total",
                "Checks answered by a rule's fail mode because Redis could not answer.",
                &self.store_fallbacks,
            ),
            (
                "floodgate_settled_total",
                "Verdicts settled after their response.",
                &self.settled,
            ),
            (
                "floodgate_settle_refunds_total",
                "Charges given back by settlements (not counted, or cheaper than estimated).",
                &self.settle_refunds,
            ),
            (
                "floodgate_settle_charges_total",
                "Extra charges made by settlements (dearer than estimated).",
                &self.settle_charges,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(c)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_striped_counter_sums_every_threads_counts() {
        let c = Counter::default();
        std::thread::scope(|s| {
            // More threads than stripes: those without one share the last,
            // and a lost update there (or on a stripe two threads thought
            // they owned) shows in the sum.
            for _ in 0..(2 * STRIPES + 1) {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        bump(&c);
                    }
                });
            }
        });
        assert_eq!(c.get(), (2 * STRIPES as u64 + 1) * 20_000);
        c.set(7);
        assert_eq!(c.get(), 7);
        bump(&c);
        assert_eq!(c.get(), 8);
    }

    /// The first 8 claims own a stripe each, the next shares the last one,
    /// and a stripe given back (its thread ended) goes to the next claim.
    #[test]
    fn stripes_are_owned_by_one_thread_at_a_time_and_given_back() {
        static REGISTRY: [AtomicBool; STRIPES] = [const { AtomicBool::new(false) }; STRIPES];
        let mut held: Vec<Stripe> = (0..STRIPES).map(|_| Stripe::claim(&REGISTRY)).collect();
        assert!(held.iter().all(|s| s.owned));
        let mut indexes: Vec<usize> = held.iter().map(|s| s.index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, (0..STRIPES).collect::<Vec<_>>(), "one stripe each");
        let extra = Stripe::claim(&REGISTRY);
        assert_eq!(
            (extra.index, extra.owned),
            (STRIPES, false),
            "the shared one"
        );
        drop(extra); // gives nothing back
        drop(held.remove(3));
        let next = Stripe::claim(&REGISTRY);
        assert_eq!((next.index, next.owned), (3, true), "the stripe given back");
        assert!(!Stripe::claim(&REGISTRY).owned, "none free again");
    }

    #[test]
    fn counts_stay_exact_as_threads_come_and_go() {
        let c = Counter::default();
        // Waves of threads, each ending before the next starts: a stripe an
        // ended thread gave back is taken by the next wave, on top of its count.
        for _ in 0..4 {
            std::thread::scope(|s| {
                for _ in 0..STRIPES {
                    s.spawn(|| {
                        for _ in 0..5_000 {
                            bump(&c);
                        }
                    });
                }
            });
        }
        assert_eq!(c.get(), 4 * STRIPES as u64 * 5_000);
    }
}
