//! The request layer: turns one HTTP request into a [`Verdict`] (allow, 429, 403 or
//! 401) and the headers to set, from a policy file.
//!
//! ```
//! use floodgate::policy::{Engine, Request};
//! use std::time::Duration;
//!
//! let engine = Engine::from_toml_str(r#"
//!     [[rule]]
//!     name = "login"
//!     match = "POST /auth/login"
//!     quotas = ["3/min"]
//!     key = "ip"
//! "#)?;
//! let req = Request { method: "POST", path: "/auth/login", client_ip: "203.0.113.7".parse().ok(), headers: &[] };
//! let t = Duration::from_secs(1_700_000_000);
//! for _ in 0..3 {
//!     assert!(engine.check_request_at(&req, t)?.allowed);
//! }
//! let v = engine.check_request_at(&req, t)?;
//! assert_eq!(v.status, 429);
//! assert!(v.headers.iter().any(|(n, v)| *n == "Retry-After" && v == "20"));
//! # Ok::<(), floodgate::Error>(())
//! ```
//!
//! Order of evaluation: deny/allow lists by IP and API key; the bearer token
//! (verified, or anonymous); deny/allow lists by verified subject; then every rule
//! matching the method and path. For each, its key is built (a rule whose key
//! needs an identity the request lacks is skipped, or answers 401); a banned key is
//! answered at once; then all matching rules are charged together: if one denies,
//! the others' charges are given back, so nothing is partly charged. Shadow rules
//! are counted after, and never deny.

mod ban;
pub(crate) mod config;
mod events;
mod headers;
mod identity;
mod jwt;
mod matcher;
mod path;
mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::clock::{Clock, QuantaClock};
use crate::error::{Error, Result};
use crate::limiter::Limiter;
use crate::quota::{Algorithm, Quota, parse_duration};
use ban::{Adaptive, BanScope, BanSetup, Bans};
use config::{Path, PolicyConfig, RuleConfig, Source};
use events::{Metrics, RuleCounters, bump};
use headers::Report;
use identity::{Claims, KEY_BUF, KeyBuf, KeyInput, KeyTemplate, canonical_ip, mask_ip, present};
use jwt::{JwtSetup, JwtVerifier, KeySource, TokenCheck};
use store::{RuleLimiter, Store};

pub use events::{Event, EventKind, EventSink};
pub use headers::HeaderStyle;
pub use jwt::TokenProblem;

/// Parses a client address as a binding receives it: `203.0.113.7`, `2001:db8::1`,
/// `[2001:db8::1]`, `fe80::1%eth0` (the zone is dropped) or `::ffff:192.0.2.5`
/// (kept as is; the engine unmaps it). Every front end (C, Python, Node) parses
/// with this, so one bad address is one error everywhere.
///
/// # Errors
/// [`Error::InvalidRequest`] with `field = "client_ip"`.
///
/// ```
/// use floodgate::policy::parse_client_ip;
/// assert_eq!(parse_client_ip(" fe80::1%eth0 ")?.to_string(), "fe80::1");
/// assert!(parse_client_ip("testclient").is_err());
/// # Ok::<(), floodgate::Error>(())
/// ```
pub fn parse_client_ip(text: &str) -> Result<IpAddr> {
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(t);
    let t = t.split_once('%').map_or(t, |(addr, _zone)| addr);
    t.parse().map_err(|_| Error::InvalidRequest {
        field: "client_ip",
        problem: "is not an IP address",
    })
}

/// The path the engine matches and keys a request target on: absolute-form cut
/// to its path, query and fragment dropped, percent-decoded once (`%2F`
/// included), empty, `.` and `..` segments resolved, and ASCII lower-cased when
/// `case_insensitive` (the engine's default, `case_sensitive_paths = false`).
/// Borrowed, with no allocation, when the target is already normal.
///
/// ```
/// use floodgate::policy::normalize_path;
/// assert_eq!(normalize_path("http://h/AUTH%2Flogin/?x=1", true), "/auth/login");
/// assert_eq!(normalize_path("/api/../auth/./login", false), "/auth/login");
/// ```
pub fn normalize_path(target: &str, case_insensitive: bool) -> std::borrow::Cow<'_, str> {
    path::normalize(target, case_insensitive)
}

/// One HTTP request, as the host's middleware sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`... (any case).
    pub method: &'a str,
    /// The request target's path, query string allowed (`/api/users?page=2`).
    pub path: &'a str,
    /// The client's address: the socket peer, or what a *trusted* proxy reported.
    pub client_ip: Option<IpAddr>,
    /// Request headers; names match case-insensitively.
    pub headers: &'a [(&'a str, &'a str)],
}

/// Why a verdict is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Every matching rule admitted the request.
    Allowed,
    /// No rule matched: allowed, no headers.
    NoRule,
    /// An allow list let it through: allowed, no limiting.
    AllowListed,
    /// A rule's quota denied it: 429.
    RateLimited,
    /// The key is banned: 429 or 403 per `[ban]`.
    Banned,
    /// A deny list refused it: 403 (or `deny_status`).
    DenyListed,
    /// 401: a verified identity is required.
    Unauthorized,
}

impl Reason {
    /// A stable snake_case name.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::NoRule => "no_rule",
            Self::AllowListed => "allow_listed",
            Self::RateLimited => "rate_limited",
            Self::Banned => "banned",
            Self::DenyListed => "deny_listed",
            Self::Unauthorized => "unauthorized",
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Let the request through.
    pub allowed: bool,
    /// 200, 429, 403 or 401.
    pub status: u16,
    /// Why.
    pub reason: Reason,
    /// Zero unless 429 or banned: how long to wait (also in `Retry-After`).
    pub retry_after: Duration,
    /// Response headers to set (rate-limit fields, `Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
    /// The deciding rule.
    pub rule: Option<Arc<str>>,
    /// The deciding quota's limit, and what is left of it.
    pub limit: u64,
    /// Units left of the deciding quota.
    pub remaining: u64,
    /// Until the deciding quota is full again.
    pub reset_after: Duration,
    /// The deciding rule's key (may contain a user id).
    pub identity: Option<String>,
    /// Set when the request carried a token that was not accepted.
    pub token_problem: Option<TokenProblem>,
    /// The request carried a verified token.
    pub authenticated: bool,
}

impl Verdict {
    fn plain(allowed: bool, status: u16, reason: Reason) -> Self {
        Verdict {
            allowed,
            status,
            reason,
            retry_after: Duration::ZERO,
            headers: Vec::new(),
            rule: None,
            limit: 0,
            remaining: 0,
            reset_after: Duration::ZERO,
            identity: None,
            token_problem: None,
            authenticated: false,
        }
    }
}

/// One limiter of a rule, with its quotas' `RateLimit-Policy` values precomputed.
struct Tier {
    limiter: RuleLimiter,
    policy_values: Vec<String>,
}

/// A rule's limiter(s): one, or one per tier (the default tier kept apart, so a
/// selection always finds one).
enum Limits {
    One(Tier),
    Tiers {
        claim: String,
        default: (String, Tier),
        others: Vec<(String, Tier)>,
    },
}

impl Limits {
    fn select(&self, claims: Option<&Claims>) -> &Tier {
        match self {
            Self::One(t) => t,
            Self::Tiers {
                claim,
                default,
                others,
            } => {
                let value = claims.and_then(|c| c.get(claim)).and_then(|v| v.as_str());
                &value
                    .and_then(|v| others.iter().find(|(name, _)| name == v))
                    .unwrap_or(default)
                    .1
            }
        }
    }
}

struct Rule {
    name: Arc<str>,
    patterns: Vec<String>,
    matcher: matcher::Matcher,
    key_text: String,
    key: KeyTemplate,
    cost: u64,
    shadow: bool,
    deny_anonymous: bool,
    /// `None`: every request; `Some(true)`: only with a verified token; `Some(false)`: only without.
    applies_to: Option<bool>,
    /// A header whose presence (with a value) skips the rule.
    unless: Option<Unless>,
    /// A verified token without the key's claim is keyed by IP (else 401).
    missing_claim_ip: bool,
    limits: Limits,
    quota_text: Vec<String>,
    adaptive: Option<Adaptive>,
    ban: bool,
}

/// What `unless_header` tests.
enum Unless {
    /// The API key header: a valid API key (the same test as `key = "api_key"`).
    ApiKey,
    /// Any other header (lower-case name), with a value.
    Header(String),
}

struct Lists {
    allow_ips: Vec<IpNet>,
    deny_ips: Vec<IpNet>,
    allow_api_keys: HashSet<String>,
    deny_api_keys: HashSet<String>,
    allow_subjects: HashSet<String>,
    deny_subjects: HashSet<String>,
}

/// The policy engine: `Send + Sync`, shared by every thread, called once per request.
pub struct Engine {
    rules: Box<[Rule]>,
    jwt: Option<JwtVerifier>,
    lists: Lists,
    bans: Option<Bans>,
    style: HeaderStyle,
    ipv6_prefix: u8,
    api_key_header: String,
    /// Valid API keys (`api_keys_file`); `None`: any non-empty key is a key.
    valid_api_keys: Option<HashSet<String>>,
    /// The key of client-wide bans: the masked address.
    client_key: KeyTemplate,
    case_sensitive_paths: bool,
    deny_status: u16,
    /// Things `floodgate check-config` warns about.
    warnings: Vec<String>,
    key_seed: ahash::RandomState,
    pk_seed: ahash::RandomState,
    clock: QuantaClock,
    /// Unix time (ns) at the clock's origin.
    unix_origin_ns: u64,
    metrics: Metrics,
    sink: parking_lot::RwLock<Option<EventSink>>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    store: Store,
    /// Whether the last Redis answer came from the fail mode (for the
    /// store_fallback / store_recovered events, sent on each change).
    store_down: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.rules.len())
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

/// One charge taken while deciding, to give back if a later rule denies.
struct Charge<'e> {
    rule: usize,
    tier: &'e Tier,
    key: Vec<u8>,
    cost: u64,
    decision: crate::Decision,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Engine {
    /// An engine from a TOML policy. Relative key files are read from the current directory.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and line of the first problem.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::build(Source::Toml(text), FsPath::new("."))
    }

    /// An engine from the same policy as JSON (what the bindings pass for a dict).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field of the first problem.
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::build(Source::Json(text), FsPath::new("."))
    }

    /// An engine from a policy file: JSON if it ends in `.json`, TOML otherwise.
    /// Relative key files are read from the policy file's directory.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the file cannot be read or is invalid.
    pub fn from_path(path: impl AsRef<FsPath>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidConfig {
            location: path.display().to_string().into(),
            line: None,
            message: format!("cannot read the policy file: {e}").into(),
        })?;
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), FsPath::to_path_buf);
        let source = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            Source::Json(&text)
        } else {
            Source::Toml(&text)
        };
        Self::build(source, &dir)
    }

    fn build(source: Source<'_>, dir: &FsPath) -> Result<Self> {
        let cfg: PolicyConfig = source.parse()?;
        let root = Path::default();
        let err = |path: &Path, msg: String| source.error(path, msg);
        let s = &cfg.settings;
        let style = HeaderStyle::parse(&s.headers).ok_or_else(|| {
            err(
                &root.key("settings").key("headers"),
                format!(
                    "unknown header style {:?} (draft-10, draft-6, legacy, none)",
                    s.headers
                ),
            )
        })?;
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
            Some(j) => Some(Self::build_jwt(j, &root.key("jwt"), dir, &source)?),
            None => None,
        };
        let store = Store::build(&cfg.store, &root.key("store"), &source)?;
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
            rules.push(Self::build_rule(
                r,
                &path,
                &cfg,
                style,
                jwt.is_some(),
                &store,
                &source,
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
                        .collect::<HashSet<_>>(),
                )
            }
            None => None,
        };
        let bans = match &cfg.ban {
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
                let client_scope = match b.scope.as_str() {
                    "rule" => false,
                    "client" => true,
                    other => {
                        return Err(err(
                            &p.key("scope"),
                            format!("{other:?}: use \"rule\" or \"client\""),
                        ));
                    }
                };
                Some(
                    Bans::new(BanSetup {
                        after: b.after,
                        within,
                        duration,
                        escalate: b.escalate,
                        max,
                        status: b.status,
                        max_keys: s.max_keys,
                        client_scope,
                    })
                    .map_err(|e| err(&p, e.to_string()))?,
                )
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
        Ok(Engine {
            rules: rules.into_boxed_slice(),
            jwt,
            lists,
            bans,
            style,
            ipv6_prefix: s.ipv6_prefix,
            api_key_header: s.api_key_header.to_ascii_lowercase(),
            valid_api_keys,
            client_key: KeyTemplate::ip(),
            case_sensitive_paths: s.case_sensitive_paths,
            deny_status: s.deny_status,
            warnings,
            key_seed: ahash::RandomState::new(),
            pk_seed: ahash::RandomState::new(),
            unix_origin_ns: unix_now.saturating_sub(clock.now_ns()),
            clock,
            metrics,
            sink: parking_lot::RwLock::new(None),
            store,
            store_down: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn build_jwt(
        j: &config::JwtConfig,
        p: &Path,
        dir: &FsPath,
        source: &Source<'_>,
    ) -> Result<JwtVerifier> {
        let err = |path: &Path, msg: String| source.error(path, msg);
        let mut allowed = Vec::new();
        for (i, a) in j.algorithms.iter().enumerate() {
            allowed.push(jwt::algorithm(a).map_err(|m| err(&p.key("algorithms").index(i), m))?);
        }
        if allowed.is_empty() {
            return Err(err(
                &p.key("algorithms"),
                "list at least one algorithm".into(),
            ));
        }
        let mut keys = Vec::new();
        let secret = match (&j.secret_env, &j.secret_file) {
            (Some(_), Some(_)) => return Err(err(&p.key("secret_file"), "give secret_env or secret_file, not both".into())),
            (Some(var), None) => Some((
                "secret_env",
                std::env::var(var).ok().filter(|s| !s.is_empty()).ok_or_else(|| {
                    err(&p.key("secret_env"), format!("environment variable {var} is not set (HMAC secrets are never inline)"))
                })?,
            )),
            (None, Some(file)) => {
                let file = dir.join(file);
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| err(&p.key("secret_file"), format!("cannot read {}: {e}", file.display())))?;
                Some(("secret_file", text.trim_end_matches(['\r', '\n']).to_string()))
            }
            (None, None) => None,
        };
        if let Some((field, secret)) = secret {
            if secret.len() < 32 {
                return Err(err(
                    &p.key(field),
                    "the HMAC secret must be at least 32 bytes".into(),
                ));
            }
            let hmac: Vec<_> = allowed
                .iter()
                .copied()
                .filter(|a| jwt_family_is_hmac(*a))
                .collect();
            if hmac.is_empty() {
                return Err(err(
                    &p.key(field),
                    "a secret needs an HS256/HS384/HS512 algorithm in jwt.algorithms".into(),
                ));
            }
            for alg in hmac {
                keys.push((None, alg, KeySource::Secret(secret.as_bytes().to_vec())));
            }
        }
        for (i, k) in j.keys.iter().enumerate() {
            let kp = p.key("keys").index(i);
            let alg = jwt::algorithm(&k.algorithm).map_err(|m| err(&kp.key("algorithm"), m))?;
            if jwt_family_is_hmac(alg) {
                return Err(err(
                    &kp.key("algorithm"),
                    "HMAC keys come from secret_env, not files".into(),
                ));
            }
            let file = dir.join(&k.pem_file);
            let pem = std::fs::read(&file).map_err(|e| {
                err(
                    &kp.key("pem_file"),
                    format!("cannot read key file {}: {e}", file.display()),
                )
            })?;
            keys.push((k.kid.clone(), alg, KeySource::Pem(pem)));
        }
        if let Some(jwks) = &j.jwks_file {
            let file = dir.join(jwks);
            let text = std::fs::read_to_string(&file).map_err(|e| {
                err(
                    &p.key("jwks_file"),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&text)
                .map_err(|e| err(&p.key("jwks_file"), format!("not a JWKS: {e}")))?;
            for (i, key) in set.keys.into_iter().enumerate() {
                if matches!(
                    key.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
                ) {
                    return Err(err(
                        &p.key("jwks_file"),
                        format!(
                            "key {i} is a symmetric (kty \"oct\") key: a JWKS file holds public \
                             keys only; give an HMAC secret with secret_env or secret_file"
                        ),
                    ));
                }
                let alg = key
                    .common
                    .key_algorithm
                    .ok_or_else(|| {
                        err(
                            &p.key("jwks_file"),
                            format!("key {i} has no \"alg\": each key must name its algorithm"),
                        )
                    })
                    .and_then(|a| {
                        jwt::algorithm(&format!("{a:?}"))
                            .map_err(|m| err(&p.key("jwks_file"), format!("key {i}: {m}")))
                    })?;
                keys.push((
                    key.common.key_id.clone(),
                    alg,
                    KeySource::Jwk(Box::new(key)),
                ));
            }
        }
        let verify_limit = match j.verify_limit.as_deref() {
            None | Some("off") => None,
            Some(q) => Some(
                q.parse::<Quota>()
                    .map_err(|e| err(&p.key("verify_limit"), e.to_string()))?,
            ),
        };
        let reject_invalid = match j.on_invalid.as_str() {
            "anonymous" => false,
            "reject" => true,
            other => {
                return Err(err(
                    &p.key("on_invalid"),
                    format!("{other:?}: use \"anonymous\" or \"reject\""),
                ));
            }
        };
        JwtVerifier::new(JwtSetup {
            allowed,
            issuer: j.issuer.as_ref().map(config::OneOrMany::to_vec),
            audience: j.audience.as_ref().map(config::OneOrMany::to_vec),
            leeway_s: j.leeway_s,
            required: j.required_claims.clone(),
            header: j.header.clone(),
            keys,
            cache_size: j.cache_size,
            verify_limit,
            reject_invalid,
        })
        .map_err(|m| err(p, m))
    }

    fn build_rule(
        r: &RuleConfig,
        p: &Path,
        cfg: &PolicyConfig,
        style: HeaderStyle,
        has_jwt: bool,
        store: &Store,
        source: &Source<'_>,
    ) -> Result<Rule> {
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
                let quota = q
                    .parse::<Quota>()
                    .and_then(|quota| quota.with_algorithm(algorithm))
                    .map_err(|e| err(&at.index(i), e.to_string()))?;
                if r.cost > quota.limit() {
                    return Err(err(
                        &p.key("cost"),
                        format!("cost {} is above the burst of {q:?}", r.cost),
                    ));
                }
                builder = builder.quota(quota);
            }
            let limiter = builder.build().map_err(|e| err(at, e.to_string()))?;
            let name = match tier {
                Some(t) => format!("{}:{t}", r.name),
                None => r.name.clone(),
            };
            let limiter = store
                .limiter(
                    limiter,
                    &name,
                    r.fail_mode.as_deref(),
                    cfg.settings.max_keys,
                    KEY_BUF,
                )
                .map_err(|m| err(&p.key("fail_mode"), m))?;
            let policy_values = limiter
                .quotas()
                .iter()
                .map(|q| headers::policy_value(style, &r.name, q))
                .collect();
            Ok(Tier {
                limiter,
                policy_values,
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
        let deny_anonymous = match r.anonymous.as_str() {
            "skip" => false,
            "deny" => true,
            other => {
                return Err(err(
                    &p.key("anonymous"),
                    format!("{other:?}: use \"skip\" or \"deny\""),
                ));
            }
        };
        if r.cost == 0 {
            return Err(err(&p.key("cost"), "must be at least 1".into()));
        }
        let missing_claim_ip = match r.missing_claim.as_str() {
            "deny" => false,
            "ip" => true,
            other => {
                return Err(err(
                    &p.key("missing_claim"),
                    format!("{other:?}: use \"deny\" or \"ip\""),
                ));
            }
        };
        let applies_to = match r.applies_to.as_str() {
            "all" => None,
            "authenticated" => Some(true),
            "anonymous" => Some(false),
            other => {
                return Err(err(
                    &p.key("applies_to"),
                    format!("{other:?}: use \"all\", \"anonymous\" or \"authenticated\""),
                ));
            }
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
                ))
            }
            None => None,
        };
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
        })
    }

    fn build_lists(cfg: &PolicyConfig, source: &Source<'_>) -> Result<Lists> {
        let p = Path::default().key("lists");
        let nets = |field: &'static str, items: &[String]| -> Result<Vec<IpNet>> {
            items
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
                .collect()
        };
        let set = |items: &[String]| items.iter().cloned().collect::<HashSet<_>>();
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

    /// Registers the function that receives [`Event`]s (replacing any earlier one).
    pub fn set_event_sink(&self, sink: impl Fn(&Event) + Send + Sync + 'static) {
        *self.sink.write() = Some(Arc::new(sink));
    }

    /// Counters in the Prometheus text exposition format.
    pub fn metrics(&self) -> String {
        let mut out = self.metrics.render();
        if let Some(b) = &self.bans {
            use std::fmt::Write as _;
            let _ = write!(
                out,
                "# HELP floodgate_bans_dropped_total Bans not recorded because the ban table \
                 was full of longer bans.\n\
                 # TYPE floodgate_bans_dropped_total counter\n\
                 floodgate_bans_dropped_total {}\n",
                b.dropped()
            );
        }
        #[cfg(feature = "redis")]
        if let Some(r) = self.store.redis() {
            use std::fmt::Write as _;
            let _ = write!(
                out,
                "# HELP floodgate_redis_round_trips_total Round trips to Redis.\n\
                 # TYPE floodgate_redis_round_trips_total counter\n\
                 floodgate_redis_round_trips_total {}\n\
                 # HELP floodgate_redis_breaker_open Whether the Redis circuit breaker is open.\n\
                 # TYPE floodgate_redis_breaker_open gauge\n\
                 floodgate_redis_breaker_open {}\n\
                 # HELP floodgate_redis_breaker_trips_total Times the Redis circuit breaker opened.\n\
                 # TYPE floodgate_redis_breaker_trips_total counter\n\
                 floodgate_redis_breaker_trips_total {}\n",
                r.round_trips(),
                u8::from(r.breaker_open()),
                r.breaker_trips()
            );
        }
        out
    }

    /// The effective rules, one block per rule, for `floodgate check-config`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for r in self.rules.iter() {
            out.push_str(&format!(
                "rule {:?}\n  match: {}{}\n  key: {}\n  quotas: {}\n  cost: {}{}{}{}\n",
                &*r.name,
                r.patterns.join(", "),
                match r.applies_to {
                    None => "",
                    Some(true) => " (authenticated requests)",
                    Some(false) => " (anonymous requests)",
                },
                r.key_text,
                r.quota_text.join("; "),
                r.cost,
                if r.shadow {
                    "\n  shadow: yes (never denies)"
                } else {
                    ""
                },
                if r.deny_anonymous {
                    "\n  without identity: 401"
                } else {
                    ""
                },
                if r.adaptive.is_some() {
                    "\n  adaptive: on"
                } else {
                    ""
                },
            ));
        }
        if self.jwt.is_some() {
            out.push_str("jwt: verified bearer tokens\n");
        }
        if let Some(b) = &self.bans {
            out.push_str(&format!("ban: on (answered {})\n", b.status));
        }
        out
    }

    /// Now, as Unix time.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.unix_origin_ns.saturating_add(self.clock.now_ns()))
    }

    /// Decides a request now.
    ///
    /// # Errors
    /// [`Error::InvalidRequest`] for an empty or non-alphabetic method. A denial is
    /// not an error.
    pub fn check_request(&self, req: &Request<'_>) -> Result<Verdict> {
        self.decide(req, self.now(), false)
    }

    fn emit(&self, event: impl FnOnce() -> Event) {
        let sink = self.sink.read().clone();
        if let Some(sink) = sink {
            sink(&event());
        }
    }

    /// Decides a request at `now` (Unix time: JWT `exp`/`nbf` are checked against it).
    /// Rules on a Redis store are then also decided at `now`, not the server's clock.
    ///
    /// # Errors
    /// As [`Engine::check_request`].
    pub fn check_request_at(&self, req: &Request<'_>, now: Duration) -> Result<Verdict> {
        self.decide(req, now, true)
    }

    /// Sends store_fallback / store_recovered events when Redis answers change.
    fn note_store(&self, checked: &store::Checked, rule: &Rule) {
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
                rule: Some(rule.name.clone()),
                client_ip: None,
                key: None,
                status: 0,
                retry_after: Duration::ZERO,
                token_problem: None,
            });
        }
    }

    fn decide(&self, req: &Request<'_>, now: Duration, explicit: bool) -> Result<Verdict> {
        if !is_method(req.method) {
            return Err(Error::InvalidRequest {
                field: "method",
                problem: "must be an HTTP method token like GET or POST",
            });
        }
        let now_ns = nanos(now);
        // 0. One view of the request, used by every step below: the canonical
        // address (IPv4-mapped IPv6 unmapped) and its network, the path as routers
        // normalise it, and the API key if the request has a valid one.
        let ip = req.client_ip.map(canonical_ip);
        let masked = ip.map(|i| mask_ip(i, self.ipv6_prefix));
        let path = path::normalize(req.path, !self.case_sensitive_paths);
        let view = View {
            method: req.method,
            path: &path,
            masked,
            headers: req.headers,
            api_key: self.api_key(req.headers),
        };
        // 1. Lists by IP and API key.
        let by_ip = ip.and_then(|ip| {
            listed(
                self.lists.deny_ips.iter().any(|n| n.contains(&ip)),
                self.lists.allow_ips.iter().any(|n| n.contains(&ip)),
            )
        });
        if let Some(allowed) = by_ip.or_else(|| self.api_key_listed(req.headers)) {
            return Ok(self.list_verdict(ip, allowed, false));
        }
        let mut buf = KeyBuf::default();
        // 2. A client-wide ban holds whatever rule the request meets.
        if let Some(bans) = self.bans.as_ref().filter(|b| b.client_scope) {
            if let Some(key) = self.build_key(&self.client_key, &view, None, "", &mut buf) {
                if let Some(left) = bans.banned(BanScope::Client, key, now_ns) {
                    bump(&self.metrics.banned_clients);
                    return Ok(self.banned_verdict(None, key, left, None, false));
                }
            }
        }
        // 3. The token: verified claims, or anonymous.
        let token = self
            .jwt
            .as_ref()
            .map_or(TokenCheck::Absent, |j| j.check(req.headers, masked, now));
        let (claims, problem) = match &token {
            TokenCheck::Valid(c) => (Some(&**c), None),
            TokenCheck::Invalid(p) => (None, Some(*p)),
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
            if self.jwt.as_ref().is_some_and(|j| j.reject_invalid) {
                return Ok(self.unauthorized(ip, None, problem));
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
            return Ok(self.list_verdict(ip, allowed, true));
        }
        // 4. Rules.
        let mut charges: Vec<Charge<'_>> = Vec::new();
        let mut shadows: Vec<usize> = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if !self.applies(rule, &view, claims.is_some()) {
                continue;
            }
            if rule.shadow {
                shadows.push(index);
                continue;
            }
            let Some(key) = self.rule_key(rule, &view, claims, &mut buf) else {
                if claims.is_some_and(|c| !rule.key.claims_usable(c)) {
                    // A verified token without the claim the key needs: never
                    // unlimited (`missing_claim = "ip"` keys it by address instead).
                    self.refund(&charges, now, explicit);
                    return Ok(self.unauthorized(
                        ip,
                        Some(&rule.name),
                        Some(TokenProblem::MissingClaim),
                    ));
                }
                if rule.deny_anonymous {
                    self.refund(&charges, now, explicit);
                    return Ok(self.unauthorized(ip, Some(&rule.name), problem));
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
                self.refund(&charges, now, explicit);
                if let Some((_, c)) = self.metrics.rules.get(index) {
                    bump(&c.banned);
                }
                return Ok(self.banned_verdict(
                    Some(&rule.name),
                    key,
                    left,
                    problem,
                    claims.is_some(),
                ));
            }
            let tier = rule.limits.select(claims);
            let multiplier = rule
                .adaptive
                .as_ref()
                .map_or(1, |a| a.multiplier(key, now_ns));
            let cost = rule
                .cost
                .saturating_mul(multiplier)
                .min(tier.limiter.max_cost());
            let checked = tier.limiter.check(key, cost, now, explicit)?;
            self.note_store(&checked, rule);
            let d = checked.decision;
            if let Some(a) = &rule.adaptive {
                a.record(key, now_ns, !d.allowed);
            }
            if !d.allowed {
                self.refund(&charges, now, explicit);
                return Ok(self.rate_limited(
                    index,
                    rule,
                    scope,
                    tier,
                    key,
                    d,
                    ip,
                    now_ns,
                    problem,
                    claims.is_some(),
                ));
            }
            charges.push(Charge {
                rule: index,
                tier,
                key: key.to_vec(),
                cost,
                decision: d,
            });
        }
        // 5. Shadow rules: counted as if enforced, never denying.
        for index in shadows {
            let Some(rule) = self.rules.get(index) else {
                continue;
            };
            let Some(key) = self.rule_key(rule, &view, claims, &mut buf) else {
                continue;
            };
            let checked = rule
                .limits
                .select(claims)
                .limiter
                .check(key, rule.cost, now, explicit)?;
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
                let key_text = String::from_utf8_lossy(key).into_owned();
                self.emit(|| Event {
                    key: Some(key_text),
                    ..self.event(
                        EventKind::ShadowDenied,
                        Some(&rule.name),
                        ip,
                        None,
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
        let Some(Charge {
            rule: index,
            tier,
            key,
            decision: d,
            ..
        }) = deciding
        else {
            bump(&self.metrics.no_rule);
            return Ok(Verdict {
                authenticated: claims.is_some(),
                token_problem: problem,
                ..Verdict::plain(true, 200, Reason::NoRule)
            });
        };
        for c in &charges {
            if let Some((_, counters)) = self.metrics.rules.get(c.rule) {
                bump(&counters.allowed);
            }
        }
        let (index, d) = (*index, *d);
        let rule = self.rules.get(index).map(|r| r.name.clone());
        let mut verdict = Verdict {
            rule: rule.clone(),
            limit: d.limit,
            remaining: d.remaining,
            reset_after: d.reset_after,
            identity: Some(String::from_utf8_lossy(key).into_owned()),
            token_problem: problem,
            authenticated: claims.is_some(),
            ..Verdict::plain(true, 200, Reason::Allowed)
        };
        if let (Some(_), Some(quota), Some(value)) = (
            &rule,
            tier.limiter.quotas().get(d.quota),
            tier.policy_values.get(d.quota),
        ) {
            verdict.headers.reserve_exact(3);
            let report = Report {
                policy_value: value,
                quota,
                remaining: d.remaining,
                reset_after: d.reset_after,
                retry_after: None,
                partition: Some(std::hash::BuildHasher::hash_one(&self.pk_seed, key)),
            };
            headers::render(self.style, &report, &mut verdict.headers);
        }
        Ok(verdict)
    }

    /// The request's API key: present with a value, and listed in
    /// `api_keys_file` when there is one. The one test of "has an API key".
    fn api_key<'a>(&self, headers: &[(&'a str, &'a str)]) -> Option<&'a str> {
        let key = present(headers, &self.api_key_header)?;
        match &self.valid_api_keys {
            Some(valid) if !valid.contains(key) => None,
            _ => Some(key),
        }
    }

    /// The API-key lists' answer. A value that a framework joined from repeated
    /// headers (`k1, k2`) is denied if any of its keys is deny-listed.
    fn api_key_listed(&self, headers: &[(&str, &str)]) -> Option<bool> {
        let value = present(headers, &self.api_key_header)?;
        let deny = &self.lists.deny_api_keys;
        let denied = deny.contains(value)
            || (value.contains(',') && value.split(',').any(|k| deny.contains(k.trim())));
        listed(denied, self.lists.allow_api_keys.contains(value))
    }

    /// Where a ban earned on `rule` holds.
    fn ban_scope(&self, index: usize, rule: &Rule) -> BanScope {
        if self.bans.as_ref().is_some_and(|b| b.client_scope) && rule.key.is_ip_only() {
            BanScope::Client
        } else {
            BanScope::Rule(index)
        }
    }

    fn applies(&self, rule: &Rule, view: &View<'_>, authenticated: bool) -> bool {
        rule.applies_to.is_none_or(|a| a == authenticated)
            && rule.unless.as_ref().is_none_or(|u| match u {
                Unless::ApiKey => view.api_key.is_none(),
                Unless::Header(name) => present(view.headers, name).is_none(),
            })
            && rule.matcher.matches(view.method, view.path)
    }

    /// Warnings about the policy, for `floodgate check-config`: things that are
    /// valid but probably not meant (a request that no rule limits, a `/*` that
    /// limits one path segment).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Replaces the engine's random seeds (for key hashing and the `pk` partition
    /// keys in headers) with ones derived from `seed`, so replays print the same
    /// headers every time. For `floodgate simulate` and tests: predictable seeds
    /// make `pk` values guessable, so do not use it in production.
    #[must_use]
    pub fn with_fixed_seed(mut self, seed: u64) -> Self {
        self.key_seed = ahash::RandomState::with_seeds(seed, seed ^ 1, seed ^ 2, seed ^ 3);
        self.pk_seed = ahash::RandomState::with_seeds(seed ^ 4, seed ^ 5, seed ^ 6, seed ^ 7);
        self
    }

    /// The rule's key for this request, built in `buf`; `None` if an identity it
    /// needs (IP, header, verified claim) is missing. A verified token without the
    /// key's claim is keyed by address on rules with `missing_claim = "ip"`.
    fn rule_key<'b>(
        &self,
        rule: &Rule,
        view: &View<'_>,
        claims: Option<&Claims>,
        buf: &'b mut KeyBuf,
    ) -> Option<&'b [u8]> {
        let template = match claims {
            Some(c) if rule.missing_claim_ip && !rule.key.claims_usable(c) => &self.client_key,
            _ => &rule.key,
        };
        self.build_key(template, view, claims, &rule.name, buf)
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
        };
        template.build(&input, &self.key_seed, buf)
    }

    /// The verdict for an allow-listed (`allowed`) or deny-listed request.
    fn list_verdict(&self, ip: Option<IpAddr>, allowed: bool, authenticated: bool) -> Verdict {
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

    fn refund(&self, charges: &[Charge<'_>], now: Duration, explicit: bool) {
        for c in charges {
            c.tier.limiter.refund(&c.key, c.cost, now, explicit);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        kind: EventKind,
        rule: Option<&Arc<str>>,
        ip: Option<IpAddr>,
        key: Option<&[u8]>,
        status: u16,
        retry_after: Duration,
        token_problem: Option<TokenProblem>,
    ) -> Event {
        Event {
            kind,
            rule: rule.cloned(),
            client_ip: ip,
            key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
            status,
            retry_after,
            token_problem,
        }
    }

    fn unauthorized(
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

    fn banned_verdict(
        &self,
        rule: Option<&Arc<str>>,
        key: &[u8],
        left: Duration,
        problem: Option<TokenProblem>,
        authenticated: bool,
    ) -> Verdict {
        let status = self.bans.as_ref().map_or(429, |b| b.status);
        let mut v = Verdict {
            rule: rule.cloned(),
            retry_after: left,
            identity: Some(String::from_utf8_lossy(key).into_owned()),
            token_problem: problem,
            authenticated,
            ..Verdict::plain(false, status, Reason::Banned)
        };
        v.headers
            .push(("Retry-After", headers::ceil_secs(left).max(1).to_string()));
        v
    }

    #[allow(clippy::too_many_arguments)]
    fn rate_limited(
        &self,
        index: usize,
        rule: &Rule,
        scope: BanScope,
        tier: &Tier,
        key: &[u8],
        d: crate::Decision,
        ip: Option<IpAddr>,
        now_ns: u64,
        problem: Option<TokenProblem>,
        authenticated: bool,
    ) -> Verdict {
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
        let mut v = Verdict {
            rule: Some(rule.name.clone()),
            retry_after: retry,
            limit: d.limit,
            remaining: d.remaining,
            reset_after: d.reset_after,
            identity: Some(String::from_utf8_lossy(key).into_owned()),
            token_problem: problem,
            authenticated,
            ..Verdict::plain(false, status, reason)
        };
        if let (Some(quota), Some(value)) = (
            tier.limiter.quotas().get(d.quota),
            tier.policy_values.get(d.quota),
        ) {
            let report = Report {
                policy_value: value,
                quota,
                remaining: d.remaining,
                reset_after: d.reset_after,
                retry_after: Some(retry),
                partition: Some(std::hash::BuildHasher::hash_one(&self.pk_seed, key)),
            };
            headers::render(self.style, &report, &mut v.headers);
        }
        v
    }
}

/// The request as every step of [`Engine::decide`] reads it.
struct View<'a> {
    method: &'a str,
    /// Normalised (see [`path`]).
    path: &'a str,
    /// The canonical address (IPv4-mapped IPv6 unmapped) masked to its network (`ipv6_prefix`): what keys and budgets use.
    masked: Option<IpAddr>,
    headers: &'a [(&'a str, &'a str)],
    api_key: Option<&'a str>,
}

/// An HTTP method is a token (RFC 9110 5.6.2): `GET`, `M-SEARCH`, `VERSION-CONTROL`.
fn is_method(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= 32
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
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

fn jwt_family_is_hmac(alg: jsonwebtoken::Algorithm) -> bool {
    matches!(
        alg,
        jsonwebtoken::Algorithm::HS256
            | jsonwebtoken::Algorithm::HS384
            | jsonwebtoken::Algorithm::HS512
    )
}
