//! The request path: one request in, one [`Verdict`] out. Reads the request once
//! (canonical address, normalised path, API key), then lists, client bans, the
//! token, every matching rule (charged all-or-nothing) and shadow rules.

use std::net::IpAddr;
use std::time::Duration;

use smallvec::SmallVec;

use super::ban::BanScope;
use super::events::{Event, EventKind, bump};
use super::headers::{self, HeaderOut, Report};
use super::identity::{
    self, Claims, KeyBuf, KeyInput, KeyTemplate, canonical_ip, mask_ip, present,
};
use super::jwt::{TokenCheck, TokenProblem};
use super::lifecycle::Place;
use super::store::{Checked, RuleLimiter};
use super::{
    Charge, Charges, Policy, Reason, Request, Rule, Tier, Unless, Verdict, VerdictBuf, View,
    matcher, nanos, path, store,
};
use super::{calendar, io};
use crate::error::{Error, Result};

impl Policy {
    /// Sends store_fallback / store_recovered events when Redis answers change.
    pub(super) fn note_store(&self, checked: &store::Checked, rule: &Rule) {
        if !checked.remote {
            return;
        }
        if checked.fallback {
            bump(&self.metrics.store_fallbacks);
        }
        let was = self.store_down.load(std::sync::atomic::Ordering::Relaxed);
        if was != checked.fallback
            && self
                .store_down
                .compare_exchange(
                    was,
                    checked.fallback,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            let kind = if checked.fallback {
                EventKind::StoreFallback
            } else {
                EventKind::StoreRecovered
            };
            self.emit(|| Event {
                kind,
                rule: Some(std::borrow::Cow::Borrowed(&rule.name)),
                client_ip: None,
                key: None,
                status: 0,
                retry_after: Duration::ZERO,
                token_problem: None,
            });
        }
    }

    /// Decides `req` into `out` (cleared first), blocking on Redis if a rule is
    /// there. Allocates nothing on an allowed request once `out` has grown (see
    /// [`VerdictBuf`]); denials build their verdict, and events their strings.
    /// A policy of one rule by address takes [`decide_lone`](Self::decide_lone).
    pub(super) fn decide(
        &self,
        req: &Request<'_>,
        now: Duration,
        explicit: bool,
        out: &mut VerdictBuf,
    ) -> Result<()> {
        if self.lone_ip_rule
            && let Some(rule) = self.rules.first()
        {
            return self.decide_lone(rule, req, now, explicit, out);
        }
        self.decide_now(&io::Blocking, req, now, explicit, out)
    }

    /// [`decide`](Self::decide) for a policy of one rule keyed by the client's
    /// address alone and nothing else to look up (`lone_ip_rule`, see
    /// [`Rule::is_lone_ip`]): the usual first policy, one global limit per
    /// IP, as @fastify/rate-limit or express-rate-limit set one. It takes the
    /// steps of the procedure below that such a policy can take, in the same
    /// order and through the same functions (address lists, store call,
    /// denial, headers), and skips the ones it cannot (API-key and subject
    /// lists, bans, the token, the API key, the rule loop, charges to
    /// refund). callgrind, `ci` profile, a per-IP rule on `/api/**`: 2,454 ->
    /// 1,998 instructions and 242 -> 174 lines of code per check
    /// (benches/README.md). `the_lone_ip_path_decides_as_the_procedure`
    /// holds it to the procedure's verdicts, errors, events and metrics.
    /// Synchronous checks only: `check_request_async` (a Redis store) keeps
    /// the procedure, whose round trip dwarfs the difference.
    fn decide_lone(
        &self,
        rule: &Rule,
        req: &Request<'_>,
        now: Duration,
        explicit: bool,
        out: &mut VerdictBuf,
    ) -> Result<()> {
        out.clear();
        if !is_method(req.method) {
            return Err(bad_method());
        }
        let ip = req.client_ip.map(canonical_ip);
        if let Some(allowed) = self.ip_listed(ip) {
            out.set(self.list_verdict(ip, allowed, false));
            return Ok(());
        }
        let masked = ip.map(|i| mask_ip(i, self.ipv6_prefix));
        if self.needs_path && !self.path_meets(rule, req) {
            bump(&self.metrics.no_rule);
            out.set(Verdict::plain(true, 200, Reason::NoRule));
            return Ok(());
        }
        let mut buf = KeyBuf::default();
        let key = identity::ip_key(masked, &mut buf);
        let tier = rule.limits.select(None);
        let cost = rule.cost.min(tier.limiter.max_cost());
        let checked = io::Now::check(&io::Blocking, &tier.limiter, key, cost, now, explicit)?;
        self.note_store(&checked, rule);
        let d = checked.decision;
        let list = [tier.policy_list.as_str()];
        if !d.allowed {
            let policies: &[&str] = if self.style.has_policy_header() {
                &list
            } else {
                &[]
            };
            let scope = self.ban_scope(0, rule);
            let now_ns = nanos(now);
            self.rate_limited(
                out, 0, rule, scope, tier, policies, key, d, ip, now_ns, None, false,
            );
            return Ok(());
        }
        if let Some((_, counters)) = self.metrics.rules.first() {
            bump(&counters.allowed);
        }
        out.decided(Some(&rule.name), &d, key, None, false).reason = Reason::Allowed;
        self.rate_headers(out, tier, &d, key, &list, None);
        Ok(())
    }

    /// Whether the request's path (normalised as routers do) meets `rule`.
    fn path_meets(&self, rule: &Rule, req: &Request<'_>) -> bool {
        let mut split = matcher::Segments::new();
        match path::normalize_split(req.path, !self.case_sensitive_paths, &mut split) {
            std::borrow::Cow::Borrowed(_) => rule.matcher.matches(req.method, &split),
            std::borrow::Cow::Owned(p) => rule.matcher.matches(req.method, &matcher::segments(&p)),
        }
    }

    /// The rate-limit headers of a verdict from the deciding `tier`'s
    /// decision `d` on `key`; `lists`: the `RateLimit-Policy` items (the
    /// charged tiers', in rule order); `retry_after` on a denial.
    #[inline]
    pub(super) fn rate_headers(
        &self,
        out: &mut VerdictBuf,
        tier: &Tier,
        d: &crate::Decision,
        key: &[u8],
        lists: &[&str],
        retry_after: Option<Duration>,
    ) {
        if let (Some(quota), Some(value)) = (
            tier.limiter.quotas().get(d.quota),
            tier.rate_prefixes.get(d.quota),
        ) {
            let report = Report {
                policy_list: lists,
                rate_prefix: value,
                quota,
                remaining: d.remaining,
                reset_after: d.reset_after,
                retry_after,
                partition: Some(std::hash::BuildHasher::hash_one(&self.pk_seed, key)),
            };
            let (headers, spare) = out.headers();
            headers::render(self.style, &report, &mut HeaderOut { headers, spare });
        }
    }

    /// The request's API key: the value `sent` in the API-key header (first copy,
    /// not empty), if `api_keys_file` lists it when there is one. The one test of
    /// "has an API key".
    pub(super) fn api_key<'a>(&self, sent: Option<&'a str>) -> Option<&'a str> {
        let key = sent?;
        match &self.valid_api_keys {
            Some(valid) if !valid.contains(key) => None,
            _ => Some(key),
        }
    }

    /// The address lists' answer for the canonical address `ip`.
    fn ip_listed(&self, ip: Option<IpAddr>) -> Option<bool> {
        let ip = ip?;
        listed(
            self.lists.deny_ips.contains(ip),
            self.lists.allow_ips.contains(ip),
        )
    }

    /// The API-key lists' answer. A value that a framework joined from repeated
    /// headers (`k1, k2`) is denied if any of its keys is deny-listed.
    pub(super) fn api_key_listed(&self, sent: Option<&str>) -> Option<bool> {
        let value = sent?;
        let deny = &self.lists.deny_api_keys;
        let denied = deny.contains(value)
            || (value.contains(',') && value.split(',').any(|k| deny.contains(k.trim())));
        listed(denied, self.lists.allow_api_keys.contains(value))
    }

    /// Where a ban earned on `rule` holds.
    pub(super) fn ban_scope(&self, index: usize, rule: &Rule) -> BanScope {
        if self.bans.as_ref().is_some_and(|b| b.client_scope) && rule.key.is_ip_only() {
            BanScope::Client
        } else {
            BanScope::Rule(index)
        }
    }

    /// Whether `rule` applies to the request (`routed`: its route is known
    /// to match, see [`matcher::RouteIndex`]).
    pub(super) fn applies(
        &self,
        rule: &Rule,
        routed: bool,
        view: &View<'_>,
        authenticated: bool,
    ) -> bool {
        rule.applies_to.is_none_or(|a| a == authenticated)
            && rule.unless.as_ref().is_none_or(|u| match u {
                Unless::ApiKey => view.api_key.is_none(),
                Unless::Header(name) => present(view.headers, name).is_none(),
            })
            && (routed || rule.matcher.matches(view.method, view.segments))
    }

    /// The rule's key for this request, built in `keys` (see
    /// [`key_for`](Self::key_for)); `None` if an identity it needs (IP, header,
    /// verified claim) is missing. A verified token without the key's claim is
    /// keyed by address on rules with `missing_claim = "ip"`.
    fn rule_key<'b>(
        &self,
        rule: &Rule,
        view: &View<'_>,
        claims: Option<&Claims>,
        keys: &'b mut RequestKeys,
    ) -> Option<&'b [u8]> {
        self.key_for(
            self.rule_template(rule, claims),
            view,
            claims,
            &rule.name,
            keys,
        )
    }

    /// The template `rule` keys a request by: its own, or the client key for a
    /// verified token without the claim it needs (`missing_claim = "ip"`).
    fn rule_template<'p>(&'p self, rule: &'p Rule, claims: Option<&Claims>) -> &'p KeyTemplate {
        match claims {
            Some(c) if rule.missing_claim_ip && !rule.key.claims_usable(c) => &self.client_key,
            _ => &rule.key,
        }
    }

    /// The key `template` builds for this request, in `keys`: the address
    /// key (`key = "ip"`) is built once per request and shared by the client
    /// key and every rule keyed by the address alone; any other key is built
    /// in the other buffer, so a rule whose key is missing (no API key, say)
    /// never costs the address key a rebuild.
    fn key_for<'b>(
        &self,
        template: &KeyTemplate,
        view: &View<'_>,
        claims: Option<&Claims>,
        route: &str,
        keys: &'b mut RequestKeys,
    ) -> Option<&'b [u8]> {
        if !template.is_ip() {
            return self.build_key(template, view, claims, route, &mut keys.other);
        }
        if keys.ip.is_none() {
            let built = self
                .build_key(template, view, claims, route, &mut keys.ip_buf)
                .is_some();
            keys.ip = Some(built);
        }
        keys.ip
            .is_some_and(|built| built)
            .then(|| keys.ip_buf.bytes())
    }

    fn build_key<'b>(
        &self,
        template: &KeyTemplate,
        view: &View<'_>,
        claims: Option<&Claims>,
        route: &str,
        buf: &'b mut KeyBuf,
    ) -> Option<&'b [u8]> {
        let input = KeyInput {
            method: view.method,
            path: view.path,
            ip: view.masked,
            api_key: view.api_key,
            headers: view.headers,
            claims,
            route,
            body: view.body,
            fields: view.fields,
        };
        template.build(&input, &self.key_seed, buf)
    }

    /// The `RateLimit-Policy` items of a denied request: every rule that
    /// applies to it, in rule order (those charged before the denial, the
    /// denying one and the later ones it would have met), as an allowed
    /// request lists them. On the stack for up to 8.
    fn applying_policies<'p>(
        &'p self,
        charged: &Charges<'p>,
        denying: &'p Tier,
        index: usize,
        view: &View<'_>,
        claims: Option<&Claims>,
    ) -> SmallVec<[&'p str; 8]> {
        let mut items = SmallVec::new();
        if !self.style.has_policy_header() {
            return items;
        }
        items.extend(charged.iter().map(|c| c.tier.policy_list.as_str()));
        items.push(denying.policy_list.as_str());
        let mut keys = RequestKeys::default();
        for c in self.routes.candidates(view.segments) {
            let Some(r) = self.rules.get(c.rule).filter(|_| c.rule > index) else {
                continue;
            };
            if !r.shadow
                && self.applies(r, c.certain, view, claims.is_some())
                && self.rule_key(r, view, claims, &mut keys).is_some()
            {
                items.push(r.limits.select(claims).policy_list.as_str());
            }
        }
        items
    }
}

/// The decision procedure and the store calls it makes, written once and
/// expanded twice: `async` over [`io::Io`] (`$(.$wait)?` is `.await`) for
/// `check_request_async`, and plain over [`io::Now`] (no `.await`) for every
/// synchronous check. One `async` procedure, polled once in place, served
/// both before: its state machine (locals kept across awaits, each ready
/// future stored and taken) cost the synchronous check ~10% of its
/// instructions and ~23 of its lines of code (callgrind, `ci` profile: example
/// policy 3,933 -> 3,522 instructions per check, per-IP rule 2,599 -> 2,349).
/// rustfmt leaves a macro's body as written: keep it formatted by hand.
macro_rules! procedure {
    (
        $($async:ident)?, $($wait:ident)?, $Io:path,
        $decide:ident, $charge_on:ident, $refund:ident, $release:ident
    ) => {
        impl Policy {
            /// The one decision procedure, its store calls made through `io`.
            pub(super) $($async)? fn $decide<I: $Io>(
                &self,
                io: &I,
                req: &Request<'_>,
                now: Duration,
                explicit: bool,
                out: &mut VerdictBuf,
            ) -> Result<()> {
                out.clear();
                if !is_method(req.method) {
                    return Err(bad_method());
                }
                let now_ns = nanos(now);
                // 0. One view of the request, used by every step below: the canonical
                // address (IPv4-mapped IPv6 unmapped) and its network, the path as routers
                // normalise it, and the API key if the request has a valid one.
                let ip = req.client_ip.map(canonical_ip);
                let masked = ip.map(|i| mask_ip(i, self.ipv6_prefix));
                // The path's segments come with it when it is already normal (borrowed).
                // A policy that never reads the path (every rule `/**`, no key
                // with the path) skips it: a denied check 2,570 -> 2,317
                // instructions and 260 -> 239 lines of code (callgrind).
                let mut split = matcher::Segments::new();
                let path = if self.needs_path {
                    path::normalize_split(req.path, !self.case_sensitive_paths, &mut split)
                } else {
                    std::borrow::Cow::Borrowed(req.path)
                };
                let resplit;
                let segments: &[&str] = match &path {
                    std::borrow::Cow::Borrowed(_) => &split,
                    std::borrow::Cow::Owned(p) => {
                        resplit = matcher::segments(p);
                        &resplit
                    }
                };
                let sent_key = present(req.headers, &self.api_key_header);
                // The body fields the request's rules key on, read once.
                let fields = if self.reads_body {
                    self.read_body_fields(req.method, segments, req.headers, req.body)
                        .map_err(|()| Error::InvalidRequest {
                            field: "body",
                            problem: "gives a field a rule keys on more than once, as no name (a list, an object, a boolean), or with a type, an encoding or a shape frameworks read differently",
                        })?
                } else {
                    super::body::ReadFields::new()
                };
                let view = View {
                    method: req.method,
                    path: &path,
                    segments,
                    masked,
                    headers: req.headers,
                    api_key: self.api_key(sent_key),
                    body: req.body,
                    fields: &fields,
                };
                // 1. Lists by IP and API key.
                let by_ip = self.ip_listed(ip);
                if let Some(allowed) = by_ip.or_else(|| self.api_key_listed(sent_key)) {
                    out.set(self.list_verdict(ip, allowed, false));
                    return Ok(());
                }
                let mut keys = RequestKeys::default();
                // 2. A client-wide ban holds whatever rule the request meets.
                if let Some(bans) = self.bans.as_ref().filter(|b| b.client_scope)
                    && let Some(key) = self.key_for(&self.client_key, &view, None, "", &mut keys)
                    && let Some(left) = bans.banned(BanScope::Client, key, now_ns)
                {
                    bump(&self.metrics.banned_clients);
                    self.banned_verdict(out, None, key, left, None, false);
                    return Ok(());
                }
                // 3. The token: verified claims, or anonymous.
                let token = self
                    .jwt
                    .as_ref()
                    .map_or(TokenCheck::Absent, |j| j.check(req.headers, masked, now));
                let (claims, problem) = match &token {
                    TokenCheck::Valid(c) => (Some(&**c), None),
                    TokenCheck::Invalid(p) => (None, Some(*p)),
                    TokenCheck::Throttled(_) => (None, Some(TokenProblem::RateLimited)),
                    TokenCheck::Absent => (None, None),
                };
                if let Some(p) = problem {
                    if let Some(c) = self.metrics.jwt_invalid.get(p.index()) {
                        bump(c);
                    }
                    self.emit(|| {
                        self.event(
                            EventKind::TokenInvalid,
                            None,
                            ip,
                            None,
                            0,
                            Duration::ZERO,
                            Some(p),
                        )
                    });
                    if let TokenCheck::Throttled(wait) = token {
                        out.set(self.verification_throttled(wait));
                        return Ok(());
                    }
                    if self.jwt.as_ref().is_some_and(|j| j.reject_invalid) {
                        out.set(self.unauthorized(ip, None, problem));
                        return Ok(());
                    }
                }
                let by_subject = claims
                    .and_then(|c| c.get("sub"))
                    .and_then(|s| s.as_str())
                    .and_then(|sub| {
                        listed(
                            self.lists.deny_subjects.contains(sub),
                            self.lists.allow_subjects.contains(sub),
                        )
                    });
                if let Some(allowed) = by_subject {
                    out.set(self.list_verdict(ip, allowed, true));
                    return Ok(());
                }
                // 4. Rules.
                // On the stack for up to 4 matching rules (a policy's usual depth).
                let mut charges = Charges::default();
                let mut shadows: SmallVec<[usize; 4]> = SmallVec::new();
                for &candidate in self.routes.candidates(segments) {
                    let index = candidate.rule;
                    let Some(rule) = self.rules.get(index) else {
                        continue;
                    };
                    if !self.applies(rule, candidate.certain, &view, claims.is_some()) {
                        continue;
                    }
                    if rule.shadow {
                        shadows.push(index);
                        continue;
                    }
                    let Some(key) = self.rule_key(rule, &view, claims, &mut keys) else {
                        if claims.is_some_and(|c| !rule.key.claims_usable(c)) {
                            // A verified token without the claim the key needs: never
                            // unlimited (`missing_claim = "ip"` keys it by address instead).
                            self.$refund(io, &charges, now, explicit)$(.$wait)?;
                            out.set(self.unauthorized(
                                ip,
                                Some(&rule.name),
                                Some(TokenProblem::MissingClaim),
                            ));
                            return Ok(());
                        }
                        if rule.deny_anonymous {
                            self.$refund(io, &charges, now, explicit)$(.$wait)?;
                            out.set(self.unauthorized(ip, Some(&rule.name), problem));
                            return Ok(());
                        }
                        continue;
                    };
                    let scope = self.ban_scope(index, rule);
                    if let Some(left) = self
                        .bans
                        .as_ref()
                        .filter(|_| scope != BanScope::Client) // checked in step 2
                        .and_then(|b| b.banned(scope, key, now_ns))
                    {
                        self.$refund(io, &charges, now, explicit)$(.$wait)?;
                        if let Some((_, c)) = self.metrics.rules.get(index) {
                            bump(&c.banned);
                        }
                        self.banned_verdict(
                            out,
                            Some(&rule.name),
                            key,
                            left,
                            problem,
                            claims.is_some(),
                        );
                        return Ok(());
                    }
                    let (tier_index, tier) = rule.limits.select_indexed(claims);
                    // A place in flight first: a request that finds none is not charged.
                    let flight = match rule.lifecycle.as_ref().and_then(|l| l.in_flight.as_ref()) {
                        Some(f) => match io
                            .acquire(f, key, now_ns, explicit.then_some(now))
                            $(.$wait)?
                        {
                            Some(place) => {
                                if let Some((_, c)) = self.metrics.rules.get(index) {
                                    bump(&c.in_flight_taken);
                                }
                                Some(place)
                            }
                            None => {
                                self.$refund(io, &charges, now, explicit)$(.$wait)?;
                                out.set(self.concurrency_limited(
                                    index,
                                    rule,
                                    f.max,
                                    key,
                                    ip,
                                    problem,
                                    claims.is_some(),
                                ));
                                return Ok(());
                            }
                        },
                        None => None,
                    };
                    let multiplier = rule
                        .adaptive
                        .as_ref()
                        .map_or(1, |a| a.multiplier(key, now_ns));
                    let cost = rule
                        .cost
                        .saturating_mul(multiplier)
                        .min(tier.limiter.max_cost());
                    // The usual rule (no calendar) straight to its store: through
                    // `charge_on`'s own future it cost ~94 instructions more per rule
                    // (callgrind: per-IP policy 2,749 -> 2,655 per check).
                    let checked = match rule.calendar {
                        None => io
                            .check(&tier.limiter, key, cost, now, explicit)
                            $(.$wait)?
                            .map(|c| (c, None)),
                        Some(_) => {
                            let (limiter, at) = (&tier.limiter, (now, explicit));
                            self.$charge_on(io, rule, limiter, key, cost, at, claims)
                                $(.$wait)?
                        }
                    };
                    let (checked, at) = match checked {
                        Ok(c) => c,
                        Err(e) => {
                            self.$release(io, index, rule, key, flight, now_ns, explicit)
                                $(.$wait)?;
                            self.$refund(io, &charges, now, explicit)$(.$wait)?;
                            return Err(e);
                        }
                    };
                    self.note_store(&checked, rule);
                    let d = checked.decision;
                    if let Some(a) = &rule.adaptive {
                        a.record(key, now_ns, !d.allowed);
                    }
                    if !d.allowed {
                        self.$release(io, index, rule, key, flight, now_ns, explicit)
                            $(.$wait)?;
                        self.$refund(io, &charges, now, explicit)$(.$wait)?;
                        let policies = self.applying_policies(&charges, tier, index, &view, claims);
                        self.rate_limited(
                            out,
                            index,
                            rule,
                            scope,
                            tier,
                            &policies,
                            key,
                            d,
                            ip,
                            now_ns,
                            problem,
                            claims.is_some(),
                        );
                        return Ok(());
                    }
                    charges.push(
                        Charge {
                            rule: index,
                            tier,
                            tier_index,
                            key: (0, 0),
                            cost,
                            decision: d,
                            flight,
                            at,
                        },
                        key,
                    );
                }
                // 5. Shadow rules: counted as if enforced, never denying. (Over the
                // slice: the SmallVec's by-value iterator checks for a spill per step
                // and drops its rest, 2-3 code lines on every request without one.)
                for &index in shadows.as_slice() {
                    let Some(rule) = self.rules.get(index) else {
                        continue;
                    };
                    let Some(key) = self.rule_key(rule, &view, claims, &mut keys) else {
                        continue;
                    };
                    let limiter = &rule.limits.select(claims).limiter;
                    let (checked, _) = self
                        .$charge_on(io, rule, limiter, key, rule.cost, (now, explicit), claims)
                        $(.$wait)??;
                    self.note_store(&checked, rule);
                    let d = checked.decision;
                    if let Some((_, c)) = self.metrics.rules.get(index) {
                        bump(if d.allowed {
                            &c.allowed
                        } else {
                            &c.shadow_denied
                        });
                    }
                    if !d.allowed {
                        self.emit(|| {
                            self.event(
                                EventKind::ShadowDenied,
                                Some(&rule.name),
                                ip,
                                Some(key),
                                0,
                                d.retry_after,
                                None,
                            )
                        });
                    }
                }
                // The deciding rule: the one with the fewest units left (the first on a tie).
                let deciding = charges
                    .iter()
                    .fold(None::<&Charge<'_>>, |best, c| match best {
                        Some(b) if b.decision.remaining <= c.decision.remaining => Some(b),
                        _ => Some(c),
                    });
                let Some(
                    deciding_charge @ Charge {
                        rule: index,
                        tier,
                        decision: d,
                        ..
                    },
                ) = deciding
                else {
                    bump(&self.metrics.no_rule);
                    out.set(Verdict {
                        authenticated: claims.is_some(),
                        token_problem: problem,
                        ..Verdict::plain(true, 200, Reason::NoRule)
                    });
                    return Ok(());
                };
                for c in &charges {
                    if let Some((_, counters)) = self.metrics.rules.get(c.rule) {
                        bump(&counters.allowed);
                    }
                }
                let (index, d, key) = (*index, *d, charges.key(deciding_charge));
                let settlement = self.settlement(&charges);
                let name = self.rules.get(index).map(|r| &r.name);
                let has_rule = name.is_some();
                // `out` was cleared above and nothing has been set: fill it in place.
                let v = out.decided(name, &d, key, problem, claims.is_some());
                v.reason = Reason::Allowed;
                v.settlement = settlement;
                if has_rule {
                    // The charged tiers' lists, on the stack for up to 4 (`collect`
                    // into a SmallVec went through its general `extend`: 8 lines of
                    // code of the per-IP request's 283).
                    let mut lists = [""; 4];
                    let spilled: Vec<&str>;
                    let policy_list: &[&str] = if charges.list.len() <= lists.len() {
                        for (slot, c) in lists.iter_mut().zip(&charges) {
                            *slot = c.tier.policy_list.as_str();
                        }
                        lists.get(..charges.list.len()).unwrap_or_default()
                    } else {
                        spilled = charges
                            .iter()
                            .map(|c| c.tier.policy_list.as_str())
                            .collect();
                        &spilled
                    };
                    self.rate_headers(out, tier, &d, key, policy_list, None);
                }
                Ok(())
            }

            /// Charges `cost` to `key` on `limiter`, one of `rule`'s. A calendar rule
            /// decides in calendar time (a Redis store works its own out from its
            /// clock, unless the time is `explicit`) and its answer's times are made
            /// real; the calendar time is returned for refunds.
            #[allow(clippy::too_many_arguments)]
            $($async)? fn $charge_on<I: $Io>(
                &self,
                io: &I,
                rule: &Rule,
                limiter: &RuleLimiter,
                key: &[u8],
                cost: u64,
                (now, explicit): (Duration, bool),
                claims: Option<&Claims>,
            ) -> Result<(Checked, Option<Duration>)> {
                let Some(calendar) = &rule.calendar else {
                    return Ok((io.check(limiter, key, cost, now, explicit)$(.$wait)??, None));
                };
                let at = calendar.at_for(now, claims);
                let checked = if explicit {
                    io.check(limiter, key, cost, at.at, true)$(.$wait)??
                } else {
                    io.check_calendar(limiter, key, cost, calendar, at)$(.$wait)??
                };
                Ok((calendar::with_real_times(checked, at), Some(at.at)))
            }

            /// Gives back what `charges` took (units and places in flight).
            $($async)? fn $refund<I: $Io>(
                &self,
                io: &I,
                charges: &Charges<'_>,
                now: Duration,
                explicit: bool,
            ) {
                for c in charges {
                    let (at, at_explicit) = c.at.map_or((now, explicit), |at| (at, true));
                    io.refund(&c.tier.limiter, charges.key(c), c.cost, at, at_explicit)
                        $(.$wait)?;
                    if let Some(rule) = self.rules.get(c.rule) {
                        let (key, now_ns) = (charges.key(c), nanos(now));
                        self.$release(io, c.rule, rule, key, c.flight, now_ns, explicit)
                            $(.$wait)?;
                    }
                }
            }

            /// Gives back the place in flight `flight`, if any (`explicit`: `now` is
            /// a replay's time, which Redis uses instead of its clock).
            #[allow(clippy::too_many_arguments)]
            pub(super) $($async)? fn $release<I: $Io>(
                &self,
                io: &I,
                index: usize,
                rule: &Rule,
                key: &[u8],
                flight: Option<Place>,
                now: u64,
                explicit: bool,
            ) {
                if let (Some(place), Some(f)) = (
                    flight,
                    rule.lifecycle.as_ref().and_then(|l| l.in_flight.as_ref()),
                ) {
                    let at = explicit.then(|| Duration::from_nanos(now));
                    io.release(f, key, place, now, at)$(.$wait)?;
                    if let Some((_, c)) = self.metrics.rules.get(index) {
                        bump(&c.in_flight_released);
                    }
                }
            }
        }
    };
}

procedure!(
    async,
    await,
    io::Io,
    decide_with,
    charge_on,
    refund_with,
    release_flight_with
);
procedure!(, , io::Now, decide_now, charge_now, refund_now, release_flight_now);

/// The key buffers of one request (see [`Policy::key_for`]).
#[derive(Default)]
struct RequestKeys {
    /// The address key, once built.
    ip_buf: KeyBuf,
    /// Whether the address key was built (`Some(true)`), is missing (no
    /// client address: `Some(false)`), or was not needed yet.
    ip: Option<bool>,
    /// Any other key: the last one built.
    other: KeyBuf,
}

/// The error of a request whose method is not an HTTP method.
fn bad_method() -> Error {
    Error::InvalidRequest {
        field: "method",
        problem: "must be an HTTP method token like GET or POST",
    }
}

/// An HTTP method is a token (RFC 9110 5.6.2): `GET`, `M-SEARCH`, `VERSION-CONTROL`.
fn is_method(method: &str) -> bool {
    // The usual methods first: the token check costs a table lookup per byte.
    matches!(
        method,
        "GET" | "POST" | "HEAD" | "PUT" | "DELETE" | "PATCH" | "OPTIONS"
    ) || is_token(method)
}

/// An HTTP token (RFC 9110 `tchar`s), 1 to 32 bytes.
fn is_token(method: &str) -> bool {
    !method.is_empty() && method.len() <= 32 && method.bytes().all(super::body::is_tchar)
}

/// A deny list wins over an allow list: `Some(false)` denied, `Some(true)` allowed.
fn listed(denied: bool, allowed: bool) -> Option<bool> {
    if denied {
        Some(false)
    } else if allowed {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Policy, Reason, Request, Spec, VerdictBuf};
    use super::io;

    /// Lists, bans, an API-key rule, a per-IP rule that API-key clients skip,
    /// places in flight, a shadow rule, a calendar rule and a catch-all.
    const POLICY: &str = r#"
[settings]
headers = "draft-10"
[lists]
deny_ips = ["192.0.2.0/24"]
[ban]
after = 3
within = "1m"
duration = "20s"
[[rule]]
name = "login"
match = "POST /auth/login"
quotas = ["30/min"]
key = "ip"
max_in_flight = 3
[[rule]]
name = "api-key"
match = "/api/**"
key = "api_key"
quotas = ["5/s burst 5"]
[[rule]]
name = "anonymous"
match = "/api/**"
unless_header = "x-api-key"
key = "ip"
quotas = ["10/min"]
algorithm = "sliding_window"
[[rule]]
name = "daily"
match = "/reports/**"
key = "ip"
quotas = ["4/day"]
calendar = true
[[rule]]
name = "shadow"
match = "/**"
shadow = true
key = "ip"
quotas = ["2/min"]
[[rule]]
name = "everything"
match = "/**"
key = "ip"
quotas = ["8/min burst 3"]
"#;

    /// The procedure's two expansions decide alike: the same requests, at the
    /// same times, through the plain one (over `io::Now`, what every
    /// synchronous check runs) and through the `async` one driven in place
    /// (over `io::Io`: `Blocking` is both), on two policies with the same
    /// seeds. Allowed, rate-limited, banned, deny-listed, in-flight-limited
    /// and calendar verdicts, each into a reused buffer.
    #[test]
    fn the_plain_and_the_async_procedure_decide_alike() {
        let compile = || {
            Policy::compile(&Spec::Toml(POLICY.into()), None)
                .map(|p| p.with_fixed_seed(11))
                .expect("the test policy compiles")
        };
        let (plain, driven) = (compile(), compile());
        let (mut a, mut b) = (VerdictBuf::new(), VerdictBuf::new());
        let ips = ["203.0.113.1", "203.0.113.2", "192.0.2.9", "2001:db8::1"];
        let paths = [
            ("GET", "/api/items"),
            ("POST", "/auth/login"),
            ("GET", "/reports/q1"),
            ("GET", "/"),
        ];
        let mut reasons = Vec::new();
        for i in 0..400u64 {
            let (method, path) = paths[usize::try_from(i % 4).unwrap_or(0)];
            let key = [("x-api-key", "k_live_1")];
            let headers: &[(&str, &str)] = if i % 3 == 0 { &key } else { &[] };
            let req = Request {
                method,
                path,
                client_ip: ips[usize::try_from(i / 4 % 4).unwrap_or(0)].parse().ok(),
                headers,
                body: None,
            };
            let now = Duration::from_secs(1_700_000_000) + Duration::from_millis(700 * i);
            plain
                .decide_now(&io::Blocking, &req, now, true, &mut a)
                .expect("decided");
            {
                let future =
                    std::pin::pin!(driven.decide_with(&io::Blocking, &req, now, true, &mut b));
                io::complete(future)
                    .expect("ready at once")
                    .expect("decided");
            }
            // Alike but for the engine a settlement names (each policy its own).
            let (va, vb) = (a.verdict(), b.verdict());
            assert_eq!(
                va.settlement.is_some(),
                vb.settlement.is_some(),
                "request {i}"
            );
            let unsettled = |v: &super::super::Verdict| super::super::Verdict {
                settlement: None,
                ..v.clone()
            };
            assert_eq!(unsettled(va), unsettled(vb), "request {i}");
            if !reasons.contains(&va.reason) {
                reasons.push(va.reason);
            }
        }
        for reason in [
            Reason::Allowed,
            Reason::RateLimited,
            Reason::Banned,
            Reason::DenyListed,
            Reason::Concurrency,
        ] {
            assert!(
                reasons.contains(&reason),
                "{reason:?} not reached: {reasons:?}"
            );
        }
    }

    /// A policy of one rule by address, as the lone path takes it.
    fn lone_policy(
        algorithm: &str,
        quota: &str,
        route: &str,
        cost: u64,
        style: &str,
        lists: &str,
    ) -> String {
        // Only a token bucket has a burst of its own.
        let quota = match quota.split_once(" burst") {
            Some((rate, _)) if algorithm != "gcra" => rate,
            _ => quota,
        };
        format!(
            "[settings]\nheaders = \"{style}\"\nipv6_prefix = 56\n{lists}\
             [[rule]]\nname = \"by-ip\"\nmatch = \"{route}\"\nkey = \"ip\"\n\
             quotas = [\"{quota}\"]\nalgorithm = \"{algorithm}\"\ncost = {cost}\n"
        )
    }

    /// The policy of `text`, and the events it sends (debug-printed).
    fn lone_compiled(text: &str) -> (Policy, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let p = Policy::compile(&Spec::Toml(text.into()), None)
            .map(|p| p.with_fixed_seed(5))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = std::sync::Arc::clone(&events);
        p.set_event_sink(move |e| {
            if let Ok(mut all) = seen.lock() {
                all.push(format!("{e:?}"));
            }
        });
        (p, events)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// The lone path (`decide`) decides as the procedure (`decide_now`):
        /// the same verdicts (headers, identity, numbers, denials, lists),
        /// events and metrics, for every algorithm, header style, route, cost
        /// and address lists, over
        /// requests from IPv4, IPv6 (by /56) and no address, on paths that
        /// meet the rule or not, normal or not, with a query or not, with
        /// methods that are valid or not, with headers it does not read.
        #[test]
        fn the_lone_ip_path_decides_as_the_procedure(
            algorithm in proptest::sample::select(vec!["gcra", "sliding_window", "sliding_log", "fixed_window"]),
            quota in proptest::sample::select(vec!["3/min", "5/s burst 2", "2/min", "4/s"]),
            route in proptest::sample::select(vec!["/**", "/api/**", "GET /api/*", "POST /login"]),
            cost in 1u64..3,
            style in proptest::sample::select(vec!["draft-10", "draft-6", "legacy", "none"]),
            lists in proptest::sample::select(vec![
                "",
                "[lists]\ndeny_ips = [\"203.0.113.0/24\"]\n",
                "[lists]\nallow_ips = [\"2001:db8:0:1::/64\"]\ndeny_ips = [\"2001:db8::/32\"]\n",
            ]),
            steps in proptest::collection::vec((0usize..5, 0usize..7, 0usize..5, 0u64..900, proptest::bool::ANY), 1..60),
        ) {
            let text = lone_policy(algorithm, quota, route, cost, style, lists);
            let ((lone, lone_events), (general, general_events)) =
                (lone_compiled(&text), lone_compiled(&text));
            proptest::prop_assert!(lone.lone_ip_rule, "{}", text);
            let (mut a, mut b) = (VerdictBuf::new(), VerdictBuf::new());
            let methods = ["GET", "POST", "get", "M-SEARCH", "BAD METHOD"];
            let paths = ["/api/items", "/login", "/API/items/", "/api//x/../items", "/", "/other", "/api/items?page=2"];
            // Headers the policy does not read: an API key, a token.
            let sent = [("x-api-key", "k_live_1"), ("authorization", "Bearer not.a.token")];
            let ips = [Some("203.0.113.1"), Some("2001:db8:0:1::7"), Some("2001:db8:0:2::9"), None, Some("::ffff:203.0.113.1")];
            let mut now = Duration::from_secs(1_700_000_000);
            for (i, &(m, p, ip, dt, with_headers)) in steps.iter().enumerate() {
                now += Duration::from_millis(dt);
                let req = Request {
                    method: methods[m],
                    path: paths[p],
                    client_ip: ips[ip].and_then(|t| t.parse().ok()),
                    headers: if with_headers { &sent } else { &[] },
                    body: None,
                };
                let x = lone.decide(&req, now, true, &mut a);
                let y = general.decide_now(&io::Blocking, &req, now, true, &mut b);
                proptest::prop_assert_eq!(format!("{x:?}"), format!("{y:?}"), "request {}", i);
                proptest::prop_assert_eq!(a.verdict(), b.verdict(), "request {}", i);
            }
            proptest::prop_assert_eq!(lone.metrics(), general.metrics());
            let events = |e: &std::sync::Mutex<Vec<String>>| e.lock().map(|all| all.clone()).unwrap_or_default();
            proptest::prop_assert_eq!(events(&lone_events), events(&general_events));
        }
    }

    /// Which policies take the lone path: one rule by address and nothing
    /// else to look up.
    #[test]
    fn only_a_lone_ip_rule_takes_the_lone_path() {
        let lone = |text: &str| {
            Policy::compile(&Spec::Toml(text.into()), None)
                .map(|p| p.lone_ip_rule)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let rule = "[[rule]]\nname = \"a\"\nmatch = \"/**\"\nkey = \"ip\"\nquotas = [\"9/min\"]\n";
        assert!(lone(rule));
        assert!(lone(&format!(
            "{rule}cost = 3\nalgorithm = \"sliding_log\"\n"
        )));
        assert!(!lone(POLICY), "the test policy");
        assert!(lone(&format!(
            "[lists]\ndeny_ips = [\"192.0.2.0/24\"]\nallow_ips = [\"10.0.0.0/8\"]\n{rule}"
        )));
        for more in [
            "[lists]\ndeny_api_keys = [\"k_leaked\"]\n",
            "[lists]\nallow_subjects = [\"ops\"]\n",
            "[ban]\nafter = 3\nwithin = \"1m\"\nduration = \"1m\"\n",
            "[jwt]\nalgorithms = [\"RS256\"]\njwks_file = \"../examples/keys/jwks.json\"\n",
        ] {
            assert!(!lone(&format!("{more}{rule}")), "{more}");
        }
        for more in [
            "shadow = true\n",
            "applies_to = \"anonymous\"\n",
            "unless_header = \"x-internal\"\n",
            "calendar = true\nalgorithm = \"fixed_window\"\nquotas = [\"9/day\"]\n",
            "max_in_flight = 2\n",
        ] {
            let text = rule.replace("quotas = [\"9/min\"]\n", "") + more;
            let text = if text.contains("quotas") {
                text
            } else {
                format!("{text}quotas = [\"9/min\"]\n")
            };
            assert!(!lone(&text), "{more}");
        }
        assert!(
            !lone(&rule.replace("\"ip\"", "\"{ip}:{route}\"")),
            "a composed key"
        );
        assert!(
            !lone(&format!("{rule}{}", rule.replace("\"a\"", "\"b\""))),
            "two rules"
        );
    }
}
