//! Structured events (delivered to a sink the host registers, e.g. its logger) and
//! counters rendered in the Prometheus text exposition format.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// One event. Fields that do not apply are `None` or zero.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The rule involved.
    pub rule: Option<Arc<str>>,
    /// The client's address, as the host passed it.
    pub client_ip: Option<IpAddr>,
    /// The rule's key (it may contain a user id: log it accordingly).
    pub key: Option<String>,
    /// The status answered (0 for a shadow denial, which is answered 200).
    pub status: u16,
    /// How long the client must wait (429 and bans).
    pub retry_after: Duration,
    /// Why a token was refused.
    pub token_problem: Option<TokenProblem>,
}

/// A function that receives events, on the request's thread: keep it quick.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// Counters of one rule.
#[derive(Debug, Default)]
pub(crate) struct RuleCounters {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub shadow_denied: AtomicU64,
    pub banned: AtomicU64,
    /// Denied by `max_in_flight`.
    pub concurrency: AtomicU64,
    /// Places in flight taken by this process, and given back.
    pub in_flight_taken: AtomicU64,
    pub in_flight_released: AtomicU64,
}

/// All counters. Relaxed increments: they are statistics, read without ordering needs.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub rules: Vec<(Arc<str>, RuleCounters)>,
    pub jwt_invalid: [AtomicU64; TokenProblem::ALL.len()],
    pub deny_listed: AtomicU64,
    pub allow_listed: AtomicU64,
    pub unauthorized: AtomicU64,
    pub bans_started: AtomicU64,
    /// Requests refused up front by a client-wide ban.
    pub banned_clients: AtomicU64,
    pub no_rule: AtomicU64,
    pub store_fallbacks: AtomicU64,
    /// Verdicts settled; charges given back and extra charges made by settlements.
    pub settled: AtomicU64,
    pub settle_refunds: AtomicU64,
    pub settle_charges: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl RuleCounters {
    fn each(&self) -> [&AtomicU64; 7] {
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
    fn globals(&self) -> impl Iterator<Item = &AtomicU64> {
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
            new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (name, counters) in &self.rules {
            if let Some((_, before)) = old.rules.iter().find(|(n, _)| n == name) {
                for (new, old) in counters.each().into_iter().zip(before.each()) {
                    new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
    }

    /// The Prometheus text exposition of every counter.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
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
