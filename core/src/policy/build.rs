//! Compiling a policy document into an [`Engine`]: settings, rules (patterns,
//! keys, tiers, limiters on their store), lists, bans, and the warnings
//! `floodgate check-config` prints. Nothing here runs per request.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use super::ban::{Adaptive, BanSetup, Bans};
use super::calendar::Calendar;
use super::config::{self, Path, PolicyConfig, RuleConfig, Source};
use super::events::{Metrics, RuleCounters};
use super::headers::{self, HeaderStyle};
use super::identity::{KEY_BUF, KeyTemplate};
use super::ipset::IpSet;
use super::jwt::JwtVerifier;
use super::lifecycle::{self, Count, InFlight, Lifecycle};
use super::store::Store;
use super::{FastSet, Limits, Lists, Policy, Rule, Tier, Unless, matcher, nanos, request};
use crate::clock::{Clock, QuantaClock};
use crate::error::Result;
use crate::limiter::Limiter;
use crate::quota::{Algorithm, Quota, parse_duration};

impl Policy {
    /// Compiles a policy. With `previous` (a reload), what is unchanged is
    /// shared with it instead of made anew: the store (connections, shared
    /// table) when `[store]` and `max_keys` are the same, the limiters and places
    /// in flight of rules whose limiting is the same ([`same_limiting`]), the
    /// bans when `[ban]` is the same, the event sink and the key seed.
    pub(super) fn build(
        source: Source<'_>,
        dir: &FsPath,
        previous: Option<&Policy>,
    ) -> Result<Self> {
        let cfg: PolicyConfig = source.parse()?;
        let root = Path::default();
        let err = |path: &Path, msg: String| source.error(path, msg);
        let s = &cfg.settings;
        let style = s.headers;
        if s.max_keys == 0 {
            return Err(err(
                &root.key("settings").key("max_keys"),
                "must be at least 1".into(),
            ));
        }
        if !(1..=128).contains(&s.ipv6_prefix) {
            return Err(err(
                &root.key("settings").key("ipv6_prefix"),
                "must be between 1 and 128".into(),
            ));
        }
        if !matches!(s.deny_status, 403 | 404 | 429) {
            return Err(err(
                &root.key("settings").key("deny_status"),
                "must be 403, 404 or 429".into(),
            ));
        }
        let jwt = match &cfg.jwt {
            Some(j) => Some(JwtVerifier::from_config(j, &root.key("jwt"), dir, &source)?),
            None => None,
        };
        let kept = previous.filter(|p| {
            p.config.store == cfg.store && p.config.settings.max_keys == cfg.settings.max_keys
        });
        let store = match kept {
            Some(p) => Arc::clone(&p.store),
            None => Arc::new(Store::build(&cfg, &root.key("store"), &source, dir)?),
        };
        // The time rules whose quotas changed carry their counters over at:
        // the running policy's (its counters' time base).
        let carry_now = kept.map_or(0, |p| nanos(p.now()));
        let mut rules = Vec::with_capacity(cfg.rules.len());
        let mut names = HashSet::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let path = root.key("rule").index(i);
            if r.name.trim().is_empty() || !names.insert(r.name.clone()) {
                return Err(err(
                    &path.key("name"),
                    format!("rule names must be unique and not empty ({:?})", r.name),
                ));
            }
            // A rule with several quotas names them `name.1`, `name.2`... in
            // RateLimit-Policy: those must not be another rule's name either.
            let quotas = r.tiers.as_ref().map_or(r.quotas.len(), |t| {
                t.quotas.values().map(Vec::len).max().unwrap_or(0)
            });
            for q in (0..quotas).filter(|_| quotas > 1) {
                let name = headers::policy_name(&r.name, q, quotas);
                if cfg.rules.iter().any(|other| other.name == name) {
                    return Err(err(
                        &path.key("name"),
                        format!(
                            "the quotas of rule {:?} are named {:?}... in RateLimit-Policy, \
                             which another rule's name takes: rename one",
                            r.name, name
                        ),
                    ));
                }
            }
            let old = kept.and_then(|p| p.rules.iter().find(|o| *o.name == *r.name));
            if kept.is_some()
                && store.is_shared()
                && !old.is_some_and(|o| same_table_layout(&o.config, r))
            {
                // The shared table's layout (each limiter's place) is fixed when
                // the first process makes it, and every worker maps it.
                return Err(err(
                    &path,
                    "on the shared-memory store a reload cannot add a rule or change a rule's \
                     key, quotas, tiers, adaptive or max_in_flight: restart the workers \
                     (matches, lists, [jwt] and the other settings can change)"
                        .into(),
                ));
            }
            rules.push(Self::build_rule(
                r,
                &path,
                &cfg,
                style,
                jwt.is_some(),
                &store,
                &source,
                old.map(|o| (o, carry_now)),
            )?);
        }
        let lists = Self::build_lists(&cfg, &source)?;
        let valid_api_keys = match &s.api_keys_file {
            Some(file) => {
                let file = dir.join(file);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    err(
                        &root.key("settings").key("api_keys_file"),
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                Some(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect::<FastSet>(),
                )
            }
            None => None,
        };
        let kept_bans = kept
            .filter(|p| p.config.ban == cfg.ban)
            .and_then(|p| p.bans.clone());
        let bans = match &cfg.ban {
            Some(_) if kept_bans.is_some() => kept_bans,
            Some(b) => {
                let p = root.key("ban");
                let dur = |field: &'static str, text: &str| {
                    parse_duration(text)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            err(
                                &p.key(field),
                                format!("{text:?} is not a duration like \"30s\" or \"15m\""),
                            )
                        })
                };
                let within = dur("within", &b.within)?;
                let duration = dur("duration", &b.duration)?;
                let max = match &b.max_duration {
                    Some(m) => dur("max_duration", m)?,
                    None => duration,
                };
                if b.after == 0 {
                    return Err(err(&p.key("after"), "must be at least 1".into()));
                }
                if !(b.escalate.is_finite() && b.escalate >= 1.0) {
                    return Err(err(&p.key("escalate"), "must be a number >= 1".into()));
                }
                if max < duration {
                    return Err(err(
                        &p.key("max_duration"),
                        "must be at least `duration`".into(),
                    ));
                }
                if !matches!(b.status, 403 | 429) {
                    return Err(err(&p.key("status"), "must be 403 or 429".into()));
                }
                let client_scope = b.scope == config::BanScopeConfig::Client;
                Some(Arc::new(
                    Bans::new(
                        BanSetup {
                            after: b.after,
                            within,
                            duration,
                            escalate: b.escalate,
                            max,
                            status: b.status,
                            max_keys: s.max_keys,
                            client_scope,
                        },
                        store.shared_bans(),
                    )
                    .map_err(|e| err(&p, e.to_string()))?,
                ))
            }
            None => None,
        };
        let metrics = Metrics {
            rules: rules
                .iter()
                .map(|r: &Rule| (r.name.clone(), RuleCounters::default()))
                .collect(),
            ..Metrics::default()
        };
        let warnings = warnings(&cfg, &rules, valid_api_keys.is_some());
        let clock = QuantaClock::new();
        let unix_now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, nanos);
        let api_key_header = s.api_key_header.to_ascii_lowercase();
        let request_headers = request::read_headers(
            std::iter::once(api_key_header.as_str())
                .chain(jwt.as_ref().map(JwtVerifier::header))
                .chain(rules.iter().flat_map(|r| {
                    let unless = match &r.unless {
                        Some(Unless::Header(h)) => Some(h.as_str()),
                        _ => None,
                    };
                    unless.into_iter().chain(r.key.header_names())
                }))
                // A body is read as its type says, and not at all when
                // compressed (body:).
                .chain(
                    rules
                        .iter()
                        .any(|r| r.key.reads_body())
                        .then_some(["content-type", "content-encoding"])
                        .into_iter()
                        .flatten(),
                ),
        );
        let reads_body = rules.iter().any(|r| r.key.reads_body());
        let settles = rules.iter().any(|r| r.lifecycle.is_some());
        let matchers: Vec<&matcher::Matcher> = rules.iter().map(|r| &r.matcher).collect();
        let routes = matcher::RouteIndex::new(&matchers);
        let needs_path = !routes.path_blind() || rules.iter().any(|r| r.key.uses_path());
        let lone_ip_rule = jwt.is_none()
            && bans.is_none()
            && lists.by_address_only()
            && matches!(rules.as_slice(), [r] if r.is_lone_ip());
        Ok(Policy {
            lone_ip_rule,
            request_headers,
            settles,
            needs_path,
            reads_body,
            routes,
            rules: rules.into_boxed_slice(),
            jwt,
            lists,
            bans,
            style,
            ipv6_prefix: s.ipv6_prefix,
            api_key_header,
            valid_api_keys,
            client_key: KeyTemplate::ip(),
            case_sensitive_paths: s.case_sensitive_paths,
            deny_status: s.deny_status,
            warnings,
            // Long keys are kept as seeded hashes: the same seed keeps them the same.
            key_seed: previous.map_or_else(ahash::RandomState::new, |p| p.key_seed.clone()),
            pk_seed: partition_seed(&source),
            unix_origin_ns: unix_now.saturating_sub(clock.now_ns()),
            clock,
            metrics,
            sink: previous.map_or_else(
                || Arc::new(arc_swap::ArcSwapOption::empty()),
                |p| Arc::clone(&p.sink),
            ),
            store,
            store_down: std::sync::atomic::AtomicBool::new(false),
            id: engine_id(),
            config: cfg,
        })
    }

    /// One rule; `previous`: the rule of the same name in the policy a reload
    /// replaces (on the same store), whose limiters and places in flight are
    /// shared when its limiting is unchanged, and whose counters are carried
    /// over (at the time given with it) when only its quotas changed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build_rule(
        r: &RuleConfig,
        p: &Path,
        cfg: &PolicyConfig,
        style: HeaderStyle,
        has_jwt: bool,
        store: &Store,
        source: &Source<'_>,
        previous: Option<(&Rule, u64)>,
    ) -> Result<Rule> {
        let (previous, carry_now) = previous.map_or((None, 0), |(o, t)| (Some(o), t));
        let reuse = previous.filter(|o| same_limiting(&o.config, r));
        let carry = previous.filter(|o| carries_over(&o.config, r, store.in_process()));
        let err = |path: &Path, msg: String| source.error(path, msg);
        let algorithm = match &r.algorithm {
            Some(a) => a
                .parse::<Algorithm>()
                .map_err(|e| err(&p.key("algorithm"), e.to_string()))?,
            None => Algorithm::Gcra,
        };
        let mut patterns = Vec::new();
        for (i, text) in r.matches.to_vec().iter().enumerate() {
            let at = match r.matches {
                config::OneOrMany::One(_) => p.key("match"),
                config::OneOrMany::Many(_) => p.key("match").index(i),
            };
            patterns.push(
                matcher::parse(text, !cfg.settings.case_sensitive_paths)
                    .map_err(|m| err(&at, m))?,
            );
        }
        let key = KeyTemplate::parse(&r.key, &cfg.settings.api_key_header)
            .map_err(|m| err(&p.key("key"), m))?;
        if key.needs_claims() && !has_jwt {
            return Err(err(
                &p.key("key"),
                "uses claims, but there is no [jwt] section to verify tokens".into(),
            ));
        }
        let calendar = Calendar::of_rule(r, has_jwt).map_err(|(field, m)| err(&p.key(field), m))?;
        let build = |quotas: &[String], at: &Path, tier: Option<&str>| -> Result<Tier> {
            if quotas.is_empty() {
                return Err(err(
                    at,
                    "list at least one quota, e.g. [\"10/s\", \"1000/hour\"]".into(),
                ));
            }
            let mut builder = Limiter::builder()
                .max_keys(cfg.settings.max_keys)
                .max_key_bytes(KEY_BUF);
            for (i, q) in quotas.iter().enumerate() {
                let quota = match &calendar {
                    Some(c) => c.quota(q),
                    None => q
                        .parse::<Quota>()
                        .and_then(|quota| quota.with_algorithm(algorithm))
                        .map_err(|e| e.to_string()),
                }
                .map_err(|m| err(&at.index(i), m))?;
                if r.cost > quota.limit() {
                    return Err(err(
                        &p.key("cost"),
                        format!("cost {} is above the burst of {q:?}", r.cost),
                    ));
                }
                builder = builder.quota(quota);
            }
            let mut limiter = builder.build().map_err(|e| err(at, e.to_string()))?;
            let name = match tier {
                Some(t) => format!("{}:{t}", r.name),
                None => r.name.clone(),
            };
            let kept = reuse.and_then(|o| o.limits.tier_named(tier));
            if let Some(old) = carry.and_then(|o| o.limits.tier_named(tier))
                && let super::store::RuleLimiter::Memory(old) = &*old.limiter
            {
                limiter.carry_from(old, carry_now);
            }
            let limiter = match kept {
                // The same quotas on the same store: the same counters.
                Some(t) => Arc::clone(&t.limiter),
                None => Arc::new(
                    store
                        .limiter(
                            limiter,
                            &name,
                            r.fail_mode,
                            cfg.settings.max_keys,
                            KEY_BUF,
                            // Settlements give charges back: a denial cached in one
                            // instance could outlive a refund made by another.
                            r.count != config::CountConfig::All
                                || r.cost_from == config::CostFrom::Response,
                        )
                        .map_err(|m| err(&p.key("fail_mode"), m))?,
                ),
            };
            let n = limiter.quotas().len();
            let names: Vec<String> = (0..n)
                .map(|i| headers::policy_name(&r.name, i, n))
                .collect();
            let policy_values: Vec<String> = limiter
                .quotas()
                .iter()
                .zip(&names)
                .map(|(q, name)| headers::policy_value(style, name, q))
                .collect();
            let policy_list = headers::policy_list(policy_values.iter().map(String::as_str));
            let rate_prefixes = names
                .iter()
                .map(|name| headers::rate_prefix(style, name))
                .collect();
            Ok(Tier {
                limiter,
                policy_list,
                rate_prefixes,
            })
        };
        let (limits, quota_text) = match (&r.tiers, r.quotas.is_empty()) {
            (Some(_), false) => {
                return Err(err(
                    &p.key("tiers"),
                    "give either quotas or tiers, not both".into(),
                ));
            }
            (None, _) => (
                Limits::One(build(&r.quotas, &p.key("quotas"), None)?),
                r.quotas.clone(),
            ),
            (Some(t), true) => {
                if !has_jwt {
                    return Err(err(
                        &p.key("tiers"),
                        "tiers choose by a verified claim, but there is no [jwt] section".into(),
                    ));
                }
                let tp = p.key("tiers");
                let mut others = Vec::new();
                let mut text = Vec::new();
                for (name, quotas) in &t.quotas {
                    others.push((
                        name.clone(),
                        build(quotas, &tp.key("quotas").name(name), Some(name))?,
                    ));
                    text.push(format!("{name}: {}", quotas.join(" + ")));
                }
                let position = others
                    .iter()
                    .position(|(n, _)| *n == t.default)
                    .ok_or_else(|| {
                        err(
                            &tp.key("default"),
                            format!("{:?} is not one of the tiers", t.default),
                        )
                    })?;
                let default = others.remove(position);
                (
                    Limits::Tiers {
                        claim: t.claim.clone(),
                        default,
                        others,
                    },
                    text,
                )
            }
        };
        let deny_anonymous = r.anonymous == config::Anonymous::Deny;
        if r.cost == 0 {
            return Err(err(&p.key("cost"), "must be at least 1".into()));
        }
        let missing_claim_ip = r.missing_claim == config::MissingClaim::Ip;
        let applies_to = match r.applies_to {
            config::AppliesTo::All => None,
            config::AppliesTo::Authenticated => Some(true),
            config::AppliesTo::Anonymous => Some(false),
        };
        if applies_to == Some(true) && !has_jwt {
            return Err(err(
                &p.key("applies_to"),
                "\"authenticated\" needs a [jwt] section".into(),
            ));
        }
        let adaptive = match &r.adaptive {
            Some(a) => {
                let ap = p.key("adaptive");
                if !(a.threshold > 0.0 && a.threshold < 1.0) {
                    return Err(err(&ap.key("threshold"), "must be between 0 and 1".into()));
                }
                if a.factor < 1 {
                    return Err(err(&ap.key("factor"), "must be at least 1".into()));
                }
                let window = parse_duration(&a.window)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        err(
                            &ap.key("window"),
                            format!("{:?} is not a duration", a.window),
                        )
                    })?;
                Some(Adaptive::new(
                    a.threshold,
                    window,
                    a.min_requests,
                    a.factor,
                    cfg.settings.max_keys,
                    store.shared_adaptive(&r.name),
                ))
            }
            None => None,
        };
        let kept_flight = previous
            .filter(|o| same_in_flight(&o.config, r))
            .and_then(|o| o.lifecycle.as_ref()?.in_flight.clone());
        let lifecycle = Self::build_lifecycle(r, p, cfg, store, source, kept_flight)?;
        Ok(Rule {
            name: r.name.as_str().into(),
            patterns: r.matches.to_vec(),
            matcher: matcher::Matcher(patterns),
            key_text: r.key.clone(),
            key,
            cost: r.cost,
            shadow: r.shadow,
            deny_anonymous,
            applies_to,
            unless: r.unless_header.as_ref().map(|h| {
                if h.trim().eq_ignore_ascii_case(&cfg.settings.api_key_header) {
                    Unless::ApiKey
                } else {
                    Unless::Header(h.trim().to_ascii_lowercase())
                }
            }),
            missing_claim_ip,
            limits,
            quota_text,
            adaptive,
            ban: r.ban,
            lifecycle,
            calendar,
            config: r.clone(),
        })
    }

    /// A rule's `count`, `failure_status`, `cost_from`, `max_in_flight` and
    /// `in_flight_ttl` (`None` when it has none of them).
    fn build_lifecycle(
        r: &RuleConfig,
        p: &Path,
        cfg: &PolicyConfig,
        store: &Store,
        source: &Source<'_>,
        kept: Option<Arc<InFlight>>,
    ) -> Result<Option<Lifecycle>> {
        let err = |field: &'static str, msg: String| source.error(&p.key(field), msg);
        let count = match r.count {
            config::CountConfig::All => Count::All,
            config::CountConfig::Failures => Count::Failures,
            config::CountConfig::Successes => Count::Successes,
        };
        let failures = match &r.failure_status {
            Some(text) => {
                if count == Count::All {
                    return Err(err(
                        "failure_status",
                        "applies only with count = \"failures\" or \"successes\"".into(),
                    ));
                }
                lifecycle::parse_statuses(text).map_err(|m| err("failure_status", m))?
            }
            None => vec![(400, 599)],
        };
        let cost_from_response = r.cost_from == config::CostFrom::Response;
        if r.in_flight_ttl.is_some() && r.max_in_flight.is_none() {
            return Err(err(
                "in_flight_ttl",
                "applies only with max_in_flight".into(),
            ));
        }
        let in_flight = match r.max_in_flight {
            Some(max) => {
                if !(1..=lifecycle::MAX_IN_FLIGHT).contains(&max) {
                    return Err(err(
                        "max_in_flight",
                        format!("must be between 1 and {}", lifecycle::MAX_IN_FLIGHT),
                    ));
                }
                let ttl_text = r.in_flight_ttl.as_deref().unwrap_or("60s");
                let ttl = parse_duration(ttl_text)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        err("in_flight_ttl", format!("{ttl_text:?} is not a duration"))
                    })?;
                if r.shadow {
                    return Err(err(
                        "max_in_flight",
                        "a shadow rule never denies, so it cannot hold places in flight".into(),
                    ));
                }
                match kept {
                    // The same limit on the same store: the places held stay held.
                    Some(f) => Some(f),
                    None => {
                        let backing = store
                            .in_flight_backing(&r.name, r.fail_mode, max, ttl)
                            .map_err(|m| err("max_in_flight", m))?;
                        Some(Arc::new(InFlight::new(
                            max,
                            ttl,
                            cfg.settings.max_keys,
                            backing,
                        )))
                    }
                }
            }
            None => None,
        };
        if count == Count::All && !cost_from_response && in_flight.is_none() {
            return Ok(None);
        }
        if r.shadow {
            return Err(err(
                "count",
                "a shadow rule is never settled: count and cost_from need an enforced rule".into(),
            ));
        }
        Ok(Some(Lifecycle {
            count,
            failures,
            cost_from_response,
            in_flight,
        }))
    }

    pub(super) fn build_lists(cfg: &PolicyConfig, source: &Source<'_>) -> Result<Lists> {
        let p = Path::default().key("lists");
        let nets = |field: &'static str, items: &[String]| -> Result<IpSet> {
            let nets = items
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.parse::<IpNet>()
                        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            source.error(
                                &p.key(field).index(i),
                                format!("{s:?} is not an IP address or CIDR"),
                            )
                        })
                })
                .collect::<Result<Vec<IpNet>>>()?;
            Ok(IpSet::new(nets))
        };
        let set = |items: &[String]| items.iter().cloned().collect::<FastSet>();
        let l = &cfg.lists;
        Ok(Lists {
            allow_ips: nets("allow_ips", &l.allow_ips)?,
            deny_ips: nets("deny_ips", &l.deny_ips)?,
            allow_api_keys: set(&l.allow_api_keys),
            deny_api_keys: set(&l.deny_api_keys),
            allow_subjects: set(&l.allow_subjects),
            deny_subjects: set(&l.deny_subjects),
        })
    }
}

/// Warnings about a valid policy (see [`Engine::warnings`]).
fn warnings(cfg: &PolicyConfig, rules: &[Rule], api_keys_verified: bool) -> Vec<String> {
    let mut out = Vec::new();
    if rules.is_empty() {
        out.push("the policy has no rules: it limits nothing".to_string());
        return out;
    }
    let catch_all = rules.iter().any(|r| {
        !r.shadow
            && r.applies_to.is_none()
            && r.unless.is_none()
            && r.key.is_ip_only()
            && r.matcher.0.iter().any(matcher::Pattern::is_catch_all)
    });
    if !catch_all {
        out.push(
            "no rule limits every request: a request that matches no rule (or that every \
             matching rule skips) is not limited at all. Add a last rule like \
             `match = \"/**\"`, `key = \"ip\"` with a generous quota"
                .to_string(),
        );
    }
    for (rule, r) in rules.iter().zip(&cfg.rules) {
        for (pattern, text) in rule.matcher.0.iter().zip(r.matches.to_vec()) {
            if pattern.ends_in_one_star() && text.trim_end().ends_with("/*") {
                out.push(format!(
                    "rule {:?}: {text:?} matches exactly one path segment after the prefix; \
                     write \"/**\" to match everything under it",
                    r.name
                ));
            }
        }
        if let Some(h) = rule.key.header_names().next()
            && !rule.deny_anonymous
            && !rule.shadow
        {
            out.push(format!(
                "rule {:?} is keyed by the {h:?} header, which a client sets as it likes: a \
                 request without it skips the rule. Set anonymous = \"deny\" if every request \
                 the rule matches carries it (a middleware of yours setting it, over what the \
                 client sent), and keep a rule keyed by \"ip\" on the same path: each new \
                 value gets a fresh quota",
                r.name
            ));
        }
        if !api_keys_verified && !catch_all && r.key.contains("api_key") {
            out.push(format!(
                "rule {:?} is keyed by the API key, which nothing verifies: every new key \
                 gets a fresh quota. Set settings.api_keys_file, or add a per-IP rule that \
                 applies to keyed requests too",
                r.name
            ));
        }
    }
    out
}

/// The seed of the `pk` partition keys in `RateLimit` headers: derived from the
/// policy text, so every worker process (and every machine) running the same
/// policy reports the same `pk` for the same client, and a client cannot map
/// `pk` values between deployments with different policies. (`pk` only labels a
/// partition; it is not a secret, and never holds the key itself.)
/// Whether a rule's counters carry over a reload exactly: the same name, key
/// and quotas, and the same algorithm, tiers, fail mode and settlement (which
/// decide how its limiter is made).
pub(super) fn same_limiting(a: &RuleConfig, b: &RuleConfig) -> bool {
    a.name == b.name
        && a.key == b.key
        && a.quotas == b.quotas
        && a.algorithm == b.algorithm
        && a.tiers == b.tiers
        && a.fail_mode == b.fail_mode
        && a.count == b.count
        && a.cost_from == b.cost_from
        && a.calendar == b.calendar
        && a.time_zone == b.time_zone
        && a.anchor_claim == b.anchor_claim
}

/// Whether a rule whose limiting changed carries its counters over a reload
/// (`carry.rs`): the same name and key, keys kept in this process, and the
/// same calendar (calendar time is its counters' time base). On Redis a
/// changed quota starts on keys of its own; on shared memory the table's
/// layout cannot change.
pub(super) fn carries_over(a: &RuleConfig, b: &RuleConfig, in_process: bool) -> bool {
    in_process
        && !same_limiting(a, b)
        && a.name == b.name
        && a.key == b.key
        && a.calendar == b.calendar
        && a.time_zone == b.time_zone
        && a.anchor_claim == b.anchor_claim
}

/// Whether a rule's places in flight carry over a reload.
fn same_in_flight(a: &RuleConfig, b: &RuleConfig) -> bool {
    a.name == b.name
        && a.max_in_flight == b.max_in_flight
        && a.in_flight_ttl == b.in_flight_ttl
        && a.fail_mode == b.fail_mode
}

/// Whether a rule keeps its places in a shared-memory table.
fn same_table_layout(a: &RuleConfig, b: &RuleConfig) -> bool {
    same_limiting(a, b) && same_in_flight(a, b) && a.adaptive == b.adaptive
}

fn partition_seed(source: &Source<'_>) -> ahash::RandomState {
    use std::hash::{Hash, Hasher};
    let text = match source {
        Source::Toml(t) | Source::Json(t) => *t,
    };
    let mut seeds = [0u64; 4];
    for (i, seed) in seeds.iter_mut().enumerate() {
        // SipHash with fixed keys: the same value in every process of this build.
        let mut h = std::hash::DefaultHasher::new();
        (i, "floodgate pk", text).hash(&mut h);
        *seed = h.finish();
    }
    ahash::RandomState::with_seeds(seeds[0], seeds[1], seeds[2], seeds[3])
}

/// A number no other engine of this process has (settlements name their engine).
fn engine_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    // Relaxed: only uniqueness matters.
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
