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
//! let req = Request { method: "POST", path: "/auth/login", client_ip: "203.0.113.7".parse().ok(), headers: &[], body: None };
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
//! Order of evaluation ([`decide`](Engine::check_request)): the request is read
//! once (canonical client address, normalised path, API key); deny/allow lists by
//! IP and API key; a client-wide ban; the bearer token (verified, or anonymous);
//! deny/allow lists by verified subject; then every rule matching the method and
//! path. For each, its key is built (a rule whose key needs an identity the
//! request lacks is skipped, or answers 401; a missing client address is the
//! one key `-`); a banned key is answered at once;
//! then all matching rules are charged together: if one denies, the others'
//! charges are given back, so nothing is partly charged. Shadow rules are counted
//! after, and never deny.
//!
//! Files: `build` compiles a policy (once), `decide` is the request path,
//! `verdict` builds denials and their events; `config` is the document, `path`
//! and `matcher` the routes, `identity` the keys, `jwt` tokens, `ban` bans and
//! adaptive tightening, `headers` the rate-limit fields, `events` events and
//! metrics, `store` where a rule's counters live.

mod ban;
mod body;
mod build;
mod calendar;
pub(crate) mod config;
mod decide;
mod engine;
mod events;
mod forwarded;
mod headers;
mod identity;
mod io;
mod ipset;
mod jwt;
mod lifecycle;
mod matcher;
mod output;
mod path;
mod request;
mod store;
mod summary;
mod verdict;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, QuantaClock};
use crate::error::{Error, Result};
use ban::{Adaptive, Bans};
use config::Source;
use events::Metrics;
use identity::{Claims, KeyTemplate};
use jwt::JwtVerifier;
use store::{RuleLimiter, Store};

pub use engine::{Engine, Reload};
pub use events::{Event, EventKind, EventSink};
pub use forwarded::{TrustedProxies, is_proxy_address};
pub use headers::{HeaderStyle, RESPONSE_HEADERS, response_header_index};
pub use jwt::{MAX_TOKEN_BYTES, TokenProblem};
pub use lifecycle::{Settle, Settlement};
pub use output::VerdictBuf;
pub use request::OwnedRequest;
pub use summary::{EventSummary, LogLevel, Summary};

/// The JSON body of a denial with this status (see [`Verdict::body`]); 400 is
/// `{"error":"bad_request"}`, for a request the engine cannot use. For front ends
/// that hold a verdict's parts rather than a [`Verdict`] (the C ABI).
pub fn denial_body(status: u16, retry_after: Duration, rule: Option<&str>) -> String {
    let mut out = String::with_capacity(64 + rule.map_or(0, str::len));
    denial_body_into(&mut out, status, retry_after, rule);
    out
}

/// [`denial_body`] appended to `out` (see [`Verdict::body_into`]).
fn denial_body_into(out: &mut String, status: u16, retry_after: Duration, rule: Option<&str>) {
    // Written directly, keys in the order serde_json's sorted map gave them
    // before; the rule name escaped as a JSON string. Tested against
    // serde_json below.
    let rule_field = |out: &mut String| {
        out.push_str(",\"rule\":");
        match rule {
            Some(r) => json_string(out, r),
            None => out.push_str("null"),
        }
    };
    match status {
        429 => {
            out.push_str("{\"error\":\"rate_limited\",\"retry_after\":");
            out.push_str(itoa::Buffer::new().format(headers::ceil_secs(retry_after).max(1)));
            rule_field(out);
        }
        401 => {
            out.push_str("{\"error\":\"unauthorized\"");
            rule_field(out);
        }
        400 => out.push_str("{\"error\":\"bad_request\""),
        413 => out.push_str("{\"error\":\"payload_too_large\""),
        _ => out.push_str("{\"error\":\"forbidden\""),
    }
    out.push('}');
}

/// Appends `s` as a JSON string (quotes, `\\`, `"` and control characters escaped).
fn json_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses a client address as a binding receives it: `203.0.113.7`, `2001:db8::1`,
/// `[2001:db8::1]`, `fe80::1%eth0` (the zone is dropped), `::ffff:192.0.2.5`
/// (kept as is; the engine unmaps it), or with a port, `203.0.113.7:5678` or
/// `[2001:db8::1]:443` (dropped: some proxies write one into
/// `X-Forwarded-For`, and Express's and Fastify's `req.ip` pass it on), as the
/// engine reads forwarding headers itself. Every front end (C, Python, Node)
/// parses with this, so one bad address is one error everywhere.
///
/// # Errors
/// [`Error::InvalidRequest`] with `field = "client_ip"`.
///
/// ```
/// use floodgate::policy::parse_client_ip;
/// assert_eq!(parse_client_ip(" fe80::1%eth0 ")?.to_string(), "fe80::1");
/// assert_eq!(parse_client_ip("203.0.113.7:5678")?.to_string(), "203.0.113.7");
/// assert_eq!(parse_client_ip("[2001:db8::1]:443")?.to_string(), "2001:db8::1");
/// assert!(parse_client_ip("testclient").is_err());
/// assert!(parse_client_ip("203.0.113.7:").is_ok()); // an empty port: still the address
/// assert!(parse_client_ip(":5678").is_err());
/// # Ok::<(), floodgate::Error>(())
/// ```
pub fn parse_client_ip(text: &str) -> Result<IpAddr> {
    // The common case: a bare address, as sockets report it.
    if let Ok(ip) = text.parse() {
        return Ok(ip);
    }
    forwarded::address_text(text)
        .parse()
        .map_err(|_| Error::InvalidRequest {
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
    /// `None` (no address known) is keyed `-` in rules keyed by `ip`: one key
    /// for every such request, never unlimited.
    pub client_ip: Option<IpAddr>,
    /// Request headers; names match case-insensitively.
    pub headers: &'a [(&'a str, &'a str)],
    /// The whole request body, for rules keyed by one of its fields
    /// (`key = "body:username"`); `None` when the front end did not read it.
    /// Front ends read it only when [`Engine::reads_body`] says a rule needs
    /// it, and refuse a body over [`MAX_BODY_BYTES`] (413) rather than pass
    /// part of it.
    pub body: Option<&'a [u8]>,
}

/// The largest request body a front end reads for rules keyed by a body field
/// (64 KiB: a login form is well under 1 KiB). A longer body on a request
/// such a rule meets is refused (413) by the front end, never passed in part:
/// a field past the part read would slip by the rule.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

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
    /// A rule's `max_in_flight` requests of the key are still running: 429.
    Concurrency,
}

crate::codes::codes!(Reason {
    Allowed => "allowed",
    NoRule => "no_rule",
    AllowListed => "allow_listed",
    RateLimited => "rate_limited",
    Banned => "banned",
    DenyListed => "deny_listed",
    Unauthorized => "unauthorized",
    Concurrency => "concurrency",
});

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
    /// What to settle once the response is known ([`Engine::settle`]): set on
    /// an admitted request that a rule with `count`, `cost_from = "response"`
    /// or `max_in_flight` charged.
    pub settlement: Option<Settlement>,
}

impl Verdict {
    /// The fields every front end exposes, by these names in its own case
    /// convention (`retry_after` is `retryAfterMs` in Node and `retry_after_ns`
    /// in C, with the unit in the name). Each binding's tests compare its verdict
    /// with this list, so a field added here without them fails.
    pub const FIELDS: [&'static str; 13] = [
        "allowed",
        "status",
        "reason",
        "retry_after",
        "reset_after",
        "headers",
        "rule",
        "identity",
        "limit",
        "remaining",
        "token_problem",
        "authenticated",
        "body",
    ];

    /// The JSON body of a denial, the same from every front end (empty when
    /// allowed): `{"error":"rate_limited","retry_after":30,"rule":"login"}` for a
    /// 429 (`retry_after` in whole seconds, rounded up), `{"error":"unauthorized",
    /// "rule":...}` for a 401, `{"error":"forbidden"}` for a 403 or 404.
    pub fn body(&self) -> String {
        let mut out = String::new();
        self.body_into(&mut out);
        out
    }

    /// [`body`](Self::body) appended to `out`: nothing for an allowed verdict.
    pub fn body_into(&self, out: &mut String) {
        if !self.allowed {
            denial_body_into(out, self.status, self.retry_after, self.rule.as_deref());
        }
    }

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
            settlement: None,
        }
    }
}

/// One limiter of a rule, with its quotas' `RateLimit-Policy` items precomputed.
struct Tier {
    /// Shared with the policy a reload replaced when the rule's limiting is unchanged.
    limiter: Arc<RuleLimiter>,
    /// The `RateLimit-Policy` items of its quotas, as a list value (empty for
    /// header styles without a policy header).
    policy_list: String,
    /// Per quota, the start of its `RateLimit` item (see
    /// [`headers::rate_prefix`]).
    rate_prefixes: Vec<String>,
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
        self.select_indexed(claims).1
    }

    /// The tier for `claims` and its number for [`tier`](Self::tier): 0 for the
    /// default (or only) one.
    fn select_indexed(&self, claims: Option<&Claims>) -> (usize, &Tier) {
        match self {
            Self::One(t) => (0, t),
            Self::Tiers {
                claim,
                default,
                others,
            } => {
                let value = claims.and_then(|c| c.get(claim)).and_then(|v| v.as_str());
                value
                    .and_then(|v| others.iter().position(|(name, _)| name == v))
                    .and_then(|i| Some((i + 1, &others.get(i)?.1)))
                    .unwrap_or((0, &default.1))
            }
        }
    }

    /// The tier named `name` (`None`: the only one).
    fn tier_named(&self, name: Option<&str>) -> Option<&Tier> {
        match (self, name) {
            (Self::One(t), None) => Some(t),
            (
                Self::Tiers {
                    default, others, ..
                },
                Some(n),
            ) => std::iter::once(default)
                .chain(others)
                .find(|(tier, _)| tier == n)
                .map(|(_, t)| t),
            _ => None,
        }
    }

    /// Tier number `index` of [`select_indexed`](Self::select_indexed).
    fn tier(&self, index: usize) -> Option<&Tier> {
        match (self, index) {
            (Self::One(t), 0) => Some(t),
            (Self::One(_), _) => None,
            (Self::Tiers { default, .. }, 0) => Some(&default.1),
            (Self::Tiers { others, .. }, i) => others.get(i - 1).map(|(_, t)| t),
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
    /// `count`, `cost_from = "response"`, `max_in_flight`.
    lifecycle: Option<lifecycle::Lifecycle>,
    /// `calendar = true`: the limiter decides in calendar time.
    calendar: Option<calendar::Calendar>,
    /// As written, to tell at a reload what changed.
    config: config::RuleConfig,
}

/// What `unless_header` tests.
enum Unless {
    /// The API key header: a valid API key (the same test as `key = "api_key"`).
    ApiKey,
    /// Any other header (lower-case name), with a value.
    Header(String),
}

/// A set of strings looked up per request, on the store's fast seeded hasher.
type FastSet = HashSet<String, ahash::RandomState>;

struct Lists {
    allow_ips: ipset::IpSet,
    deny_ips: ipset::IpSet,
    allow_api_keys: FastSet,
    deny_api_keys: FastSet,
    allow_subjects: FastSet,
    deny_subjects: FastSet,
}

impl Lists {
    /// Whether only addresses are listed (or nothing).
    fn by_address_only(&self) -> bool {
        self.allow_api_keys.is_empty()
            && self.deny_api_keys.is_empty()
            && self.allow_subjects.is_empty()
            && self.deny_subjects.is_empty()
    }
}

impl Rule {
    /// A rule that every request it meets is charged on by address alone,
    /// once, with nothing else to decide: keyed by `ip`, one tier, applying
    /// whatever the token or headers, not a shadow, no calendar, adaptive
    /// limit or settlement. (Bans, the token and lists but of addresses are
    /// the policy's: see `Policy::lone_ip_rule`.)
    fn is_lone_ip(&self) -> bool {
        self.key.is_ip_only()
            && !self.shadow
            && self.applies_to.is_none()
            && self.unless.is_none()
            && matches!(self.limits, Limits::One(_))
            && self.adaptive.is_none()
            && self.lifecycle.is_none()
            && self.calendar.is_none()
    }
}

/// One compiled policy: what [`Engine`] decides with until a reload replaces
/// it. Rules whose limiting is unchanged share their limiters (and places in
/// flight) with the policy they replaced.
pub(crate) struct Policy {
    rules: Box<[Rule]>,
    /// Which rules a request can meet, by its path's first segment.
    routes: matcher::RouteIndex,
    /// The request headers the policy reads, lower case.
    request_headers: Vec<String>,
    jwt: Option<JwtVerifier>,
    lists: Lists,
    bans: Option<Arc<Bans>>,
    style: HeaderStyle,
    ipv6_prefix: u8,
    api_key_header: String,
    /// Valid API keys (`api_keys_file`); `None`: any non-empty key is a key.
    valid_api_keys: Option<FastSet>,
    /// Whether any rule settles (see [`Policy::settles`]): the usual policy
    /// skips looking for settlement entries on every request.
    settles: bool,
    /// Whether deciding reads the request's path: false when every rule is
    /// met by every request (`/**`) and no key has the path in it, and then
    /// the path is not normalised (see [`matcher::RouteIndex::path_blind`]).
    needs_path: bool,
    /// Whether every request meets at most one rule, keyed by its address
    /// alone, with nothing else to look up but address lists (see
    /// [`Rule::is_lone_ip`]).
    lone_ip_rule: bool,
    /// Whether a rule keys on a field of the request body (`body:`).
    reads_body: bool,
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
    /// Read on every event without a lock or a reference-count update
    /// (arc-swap), so a flood of denials does not contend on it.
    sink: Arc<arc_swap::ArcSwapOption<EventSink>>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    store: Arc<Store>,
    /// Whether the last Redis answer came from the fail mode (for the
    /// store_fallback / store_recovered events, sent on each change).
    store_down: std::sync::atomic::AtomicBool,
    /// Settlements name the policy that made them.
    id: u64,
    /// As written, to tell at a reload what changed.
    config: config::PolicyConfig,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("rules", &self.rules.len())
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

/// One charge taken while deciding, to give back if a later rule denies.
struct Charge<'e> {
    rule: usize,
    tier: &'e Tier,
    /// The tier's number in the rule's limits.
    tier_index: usize,
    /// Where its key is: in [`Charges::keys`], or in [`Charges::more`] at
    /// positions from [`CHARGED_KEYS`] on (read it with [`Charges::key`]).
    key: (usize, usize),
    cost: u64,
    decision: crate::Decision,
    /// The place taken in flight (`max_in_flight`).
    flight: Option<lifecycle::Place>,
    /// The calendar time it was charged at (a calendar rule).
    at: Option<Duration>,
}

/// The charges a decision has taken, their keys side by side in one buffer (a
/// copy of each key's bytes: the key buffer is rebuilt per rule). On the stack
/// up to 4 charges and [`CHARGED_KEYS`] bytes of keys, the usual request; past
/// that they move to the heap.
#[derive(Default)]
struct Charges<'e> {
    list: smallvec::SmallVec<[Charge<'e>; 4]>,
    /// The keys while they fit: an `ArrayVec` (a `SmallVec` here called its
    /// out-of-line `try_reserve` on every push, ~28 instructions, and
    /// branched on inline-or-heap at every read).
    keys: arrayvec::ArrayVec<u8, CHARGED_KEYS>,
    /// The keys that did not fit (a later, shorter key may still go into
    /// `keys`), at positions from `CHARGED_KEYS` on.
    more: Vec<u8>,
}

/// Bytes of charged keys kept on the stack: four keys of the longest kind.
const CHARGED_KEYS: usize = 4 * identity::KEY_BUF;

impl<'e> Charges<'e> {
    // Inlined: the charge is then written into the list in place (not built
    // and copied twice by memcpy).
    #[inline]
    fn push(&mut self, mut charge: Charge<'e>, key: &[u8]) {
        let start = self.keys.len();
        charge.key = if self.keys.try_extend_from_slice(key).is_ok() {
            (start, self.keys.len())
        } else {
            self.push_more(key)
        };
        self.list.push(charge);
    }

    /// Appends `key` to the heap vector; its range as [`Charges::key`] reads it.
    #[cold]
    #[inline(never)]
    fn push_more(&mut self, key: &[u8]) -> (usize, usize) {
        let start = CHARGED_KEYS + self.more.len();
        self.more.extend_from_slice(key);
        (start, CHARGED_KEYS + self.more.len())
    }

    /// The key `charge` was charged to.
    fn key(&self, charge: &Charge<'_>) -> &[u8] {
        let (start, end) = charge.key;
        if start < CHARGED_KEYS {
            self.keys.get(start..end)
        } else {
            self.more.get(start - CHARGED_KEYS..end - CHARGED_KEYS)
        }
        .unwrap_or_default()
    }

    fn iter(&self) -> std::slice::Iter<'_, Charge<'e>> {
        self.list.iter()
    }
}

impl<'a, 'e> IntoIterator for &'a Charges<'e> {
    type Item = &'a Charge<'e>;
    type IntoIter = std::slice::Iter<'a, Charge<'e>>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where a policy comes from: the text an engine was made from, or its file
/// (read again by [`Engine::reload`]).
#[derive(Debug, Clone)]
enum Spec {
    Toml(String),
    Json(String),
    Path(PathBuf),
}

impl Policy {
    /// Compiles `spec`; with `previous` (a reload) sharing what is unchanged.
    /// Relative key files are read from the policy file's directory (the
    /// current one for text).
    fn compile(spec: &Spec, previous: Option<&Policy>) -> Result<Self> {
        match spec {
            Spec::Toml(text) => Self::build(Source::Toml(text), FsPath::new("."), previous),
            Spec::Json(text) => Self::build(Source::Json(text), FsPath::new("."), previous),
            Spec::Path(path) => {
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
                Self::build(source, &dir, previous)
            }
        }
    }

    /// See [`Engine::set_event_sink`].
    pub fn set_event_sink(&self, sink: impl Fn(&Event<'_>) + Send + Sync + 'static) {
        self.sink.store(Some(Arc::new(Arc::new(sink))));
    }

    /// See [`Engine::metrics`].
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

    /// See [`Engine::describe`].
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for r in self.rules.iter() {
            out.push_str(&format!(
                "rule {:?}\n  match: {}{}\n  key: {}\n  quotas: {}{}\n  cost: {}{}{}{}\n",
                &*r.name,
                r.patterns.join(", "),
                match r.applies_to {
                    None => "",
                    Some(true) => " (authenticated requests)",
                    Some(false) => " (anonymous requests)",
                },
                r.key_text,
                r.quota_text.join("; "),
                r.calendar
                    .as_ref()
                    .map_or_else(String::new, |c| format!(" ({c})")),
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

    /// See [`Engine::now`].
    pub fn now(&self) -> Duration {
        // On shared memory every process reads the table's clock.
        if let Some(ns) = self.store.shared_now() {
            return Duration::from_nanos(ns);
        }
        Duration::from_nanos(self.unix_origin_ns.saturating_add(self.clock.now_ns()))
    }

    /// See [`Engine::check_request`].
    ///
    /// # Errors
    /// As [`Engine::check_request`].
    pub fn check_request(&self, req: &Request<'_>) -> Result<Verdict> {
        let mut out = VerdictBuf::new();
        self.decide(req, self.now(), false, &mut out)?;
        Ok(out.into_verdict())
    }

    /// See [`Engine::check_request_into`].
    ///
    /// # Errors
    /// As [`Engine::check_request`].
    pub fn check_request_into(
        &self,
        req: &Request<'_>,
        now: Option<Duration>,
        out: &mut VerdictBuf,
    ) -> Result<()> {
        match now {
            Some(t) => self.decide(req, t, true, out),
            None => self.decide(req, self.now(), false, out),
        }
    }

    pub(super) fn emit<'e>(&self, event: impl FnOnce() -> Event<'e>) {
        if let Some(sink) = &*self.sink.load() {
            sink(&event());
        }
    }

    /// See [`Engine::check_request_at`].
    ///
    /// # Errors
    /// As [`Engine::check_request`].
    pub fn check_request_at(&self, req: &Request<'_>, now: Duration) -> Result<Verdict> {
        let mut out = VerdictBuf::new();
        self.decide(req, now, true, &mut out)?;
        Ok(out.into_verdict())
    }

    /// See [`Engine::check_request_async`].
    ///
    /// # Errors
    /// As [`Engine::check_request`].
    pub async fn check_request_async(&self, req: &Request<'_>) -> Result<Verdict> {
        let mut out = VerdictBuf::new();
        self.decide_with(&io::NonBlocking, req, self.now(), false, &mut out)
            .await?;
        Ok(out.into_verdict())
    }

    /// See [`Engine::may_block`].
    pub fn may_block(&self) -> bool {
        #[cfg(feature = "redis")]
        if matches!(*self.store, store::Store::Redis { .. }) {
            return true;
        }
        false
    }

    /// See [`Engine::warnings`].
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// See [`Engine::with_fixed_seed`].
    #[must_use]
    pub fn with_fixed_seed(mut self, seed: u64) -> Self {
        self.key_seed = ahash::RandomState::with_seeds(seed, seed ^ 1, seed ^ 2, seed ^ 3);
        self.pk_seed = ahash::RandomState::with_seeds(seed ^ 4, seed ^ 5, seed ^ 6, seed ^ 7);
        self
    }
}

/// The request as every step of [`Engine::decide`] reads it.
struct View<'a> {
    method: &'a str,
    /// Normalised (see [`path`]).
    path: &'a str,
    /// Its segments, split once for every rule's matcher.
    segments: &'a [&'a str],
    /// The canonical address (IPv4-mapped IPv6 unmapped) masked to its network (`ipv6_prefix`): what keys and budgets use.
    masked: Option<IpAddr>,
    headers: &'a [(&'a str, &'a str)],
    api_key: Option<&'a str>,
    body: Option<&'a [u8]>,
    /// The body fields its rules key on, read once (see `body::ReadFields`).
    fields: &'a [(&'a str, body::Field<'a>)],
}
