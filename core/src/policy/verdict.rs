//! The verdicts and events of denials: deny/allow lists, 401, bans and 429s,
//! with their headers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::ban::BanScope;
use super::events::{Event, EventKind, bump};
use super::headers::{self, HeaderOut};
use super::jwt::TokenProblem;
use super::{Policy, Reason, Rule, Tier, Verdict, VerdictBuf};

impl Policy {
    /// The verdict for an allow-listed (`allowed`) or deny-listed request.
    pub(super) fn list_verdict(
        &self,
        ip: Option<IpAddr>,
        allowed: bool,
        authenticated: bool,
    ) -> Verdict {
        if allowed {
            bump(&self.metrics.allow_listed);
            return Verdict {
                authenticated,
                ..Verdict::plain(true, 200, Reason::AllowListed)
            };
        }
        bump(&self.metrics.deny_listed);
        let status = self.deny_status;
        self.emit(|| {
            self.event(
                EventKind::DenyListed,
                None,
                ip,
                None,
                status,
                Duration::ZERO,
                None,
            )
        });
        Verdict {
            authenticated,
            ..Verdict::plain(false, status, Reason::DenyListed)
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn event<'e>(
        &self,
        kind: EventKind,
        rule: Option<&'e Arc<str>>,
        ip: Option<IpAddr>,
        key: Option<&'e [u8]>,
        status: u16,
        retry_after: Duration,
        token_problem: Option<TokenProblem>,
    ) -> Event<'e> {
        Event {
            kind,
            rule: rule.map(|r| std::borrow::Cow::Borrowed(&**r)),
            client_ip: ip,
            key: key.map(String::from_utf8_lossy),
            status,
            retry_after,
            token_problem,
        }
    }

    pub(super) fn unauthorized(
        &self,
        ip: Option<IpAddr>,
        rule: Option<&Arc<str>>,
        problem: Option<TokenProblem>,
    ) -> Verdict {
        bump(&self.metrics.unauthorized);
        self.emit(|| {
            self.event(
                EventKind::Unauthorized,
                rule,
                ip,
                None,
                401,
                Duration::ZERO,
                problem,
            )
        });
        let mut v = Verdict {
            rule: rule.cloned(),
            token_problem: problem,
            ..Verdict::plain(false, 401, Reason::Unauthorized)
        };
        let challenge = match problem {
            Some(p) => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                p.code()
            ),
            None => "Bearer".to_string(),
        };
        v.headers.push(("WWW-Authenticate", challenge));
        v
    }

    /// 429 for a request whose token was not verified: its client's network
    /// spent its verification budget (`verify_limit`). `Retry-After`: until
    /// the budget has room again. (Its `TokenInvalid` event was emitted.)
    pub(super) fn verification_throttled(&self, wait: Duration) -> Verdict {
        let mut v = Verdict {
            retry_after: wait,
            token_problem: Some(TokenProblem::RateLimited),
            ..Verdict::plain(false, 429, Reason::RateLimited)
        };
        v.headers
            .push(("Retry-After", headers::ceil_secs(wait).max(1).to_string()));
        v
    }

    /// A banned key's answer (the ban's status, `Retry-After` its time left),
    /// written into `out` as the decision cleared it, with the last verdict's
    /// strings (see [`rate_limited`](Self::rate_limited)).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn banned_verdict(
        &self,
        out: &mut VerdictBuf,
        rule: Option<&Arc<str>>,
        key: &[u8],
        left: Duration,
        problem: Option<TokenProblem>,
        authenticated: bool,
    ) {
        let name = rule.map(|r| out.rule_name(r));
        let identity = out.identity(key);
        let v = out.verdict_mut();
        v.allowed = false;
        v.status = self.bans.as_ref().map_or(429, |b| b.status);
        v.reason = Reason::Banned;
        v.rule = name;
        v.retry_after = left;
        v.identity = Some(identity);
        v.token_problem = problem;
        v.authenticated = authenticated;
        let (headers, spare) = out.headers();
        headers::retry_after(&mut HeaderOut { headers, spare }, left);
    }

    /// 429 for a request that found `max` requests of its key in flight on
    /// `rule`. `Retry-After: 1`: how long a request runs is not known, so one
    /// second is the documented guess.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn concurrency_limited(
        &self,
        index: usize,
        rule: &Rule,
        max: u64,
        key: &[u8],
        ip: Option<IpAddr>,
        problem: Option<TokenProblem>,
        authenticated: bool,
    ) -> Verdict {
        let retry = Duration::from_secs(1);
        if let Some((_, c)) = self.metrics.rules.get(index) {
            bump(&c.concurrency);
        }
        self.emit(|| {
            self.event(
                EventKind::ConcurrencyLimited,
                Some(&rule.name),
                ip,
                Some(key),
                429,
                retry,
                problem,
            )
        });
        let mut v = Verdict {
            rule: Some(rule.name.clone()),
            retry_after: retry,
            limit: max,
            remaining: 0,
            identity: Some(String::from_utf8_lossy(key).into_owned()),
            token_problem: problem,
            authenticated,
            ..Verdict::plain(false, 429, Reason::Concurrency)
        };
        v.headers.push(("Retry-After", "1".into()));
        v
    }

    /// A 429 (or the ban's status, when this denial starts a ban) for `key`
    /// on `rule`, written into `out` as the decision cleared it: its strings
    /// are the last verdict's, so a flood's denials allocate nothing once
    /// `out` has grown (`core/tests/alloc.rs`). `policies`: the
    /// `RateLimit-Policy` items of every rule the request meets.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rate_limited(
        &self,
        out: &mut VerdictBuf,
        index: usize,
        rule: &Rule,
        scope: BanScope,
        tier: &Tier,
        policies: &[&str],
        key: &[u8],
        d: crate::Decision,
        ip: Option<IpAddr>,
        now_ns: u64,
        problem: Option<TokenProblem>,
        authenticated: bool,
    ) {
        if let Some((_, c)) = self.metrics.rules.get(index) {
            bump(&c.denied);
        }
        self.emit(|| {
            self.event(
                EventKind::Denied,
                Some(&rule.name),
                ip,
                Some(key),
                429,
                d.retry_after,
                problem,
            )
        });
        let mut retry = d.retry_after;
        let mut status = 429;
        let mut reason = Reason::RateLimited;
        if let Some(length) = self
            .bans
            .as_ref()
            .filter(|_| rule.ban)
            .and_then(|b| b.strike(scope, key, now_ns))
        {
            bump(&self.metrics.bans_started);
            self.emit(|| {
                self.event(
                    EventKind::Banned,
                    Some(&rule.name),
                    ip,
                    Some(key),
                    0,
                    length,
                    problem,
                )
            });
            retry = retry.max(length);
            status = self.bans.as_ref().map_or(429, |b| b.status);
            reason = Reason::Banned;
        }
        let v = out.decided(Some(&rule.name), &d, key, problem, authenticated);
        v.allowed = false;
        v.status = status;
        v.reason = reason;
        v.retry_after = retry;
        self.rate_headers(out, tier, &d, key, policies, Some(retry));
    }
}
