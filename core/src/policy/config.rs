//! The policy document: TOML, or the same structure as JSON (which is what the
//! bindings pass for a dict or object). Parsing checks syntax, types and unknown
//! fields; [`super::Engine`] then checks meaning (quotas, patterns, keys, files).
//! Every error names the field, and the line when the source is text.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::headers::HeaderStyle;

use crate::error::{Error, Result};

/// One value or a list of them (`match = "GET /a"` or `match = ["GET /a", "/b"]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `anonymous`: a rule whose key needs an identity the request lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Anonymous {
    /// Skip the rule (another, e.g. per-IP, rule applies).
    #[default]
    Skip,
    /// Answer 401.
    Deny,
}

/// `applies_to`: which requests a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AppliesTo {
    #[default]
    All,
    /// Requests without a verified token.
    Anonymous,
    /// Requests with a verified token.
    Authenticated,
}

/// `count`: which settled requests keep their charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CountConfig {
    /// Every admitted request (the charge is never given back).
    #[default]
    All,
    /// Only requests whose response status is a failure (`failure_status`).
    Failures,
    /// Only requests whose response status is not a failure.
    Successes,
}

/// `cost_from`: where a request's cost comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CostFrom {
    /// The rule's `cost`, charged on arrival.
    #[default]
    Request,
    /// Charged `cost` on arrival as an estimate, settled to the response's cost.
    Response,
}

/// `missing_claim`: a verified token without the claim a rule's key needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MissingClaim {
    /// 401 `missing_claim`.
    #[default]
    Deny,
    /// Keyed by the client's address in this rule.
    Ip,
}

/// `on_invalid`: a token that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnInvalid {
    /// Treated as no token.
    #[default]
    Anonymous,
    /// 401.
    Reject,
}

/// `[ban] scope`: where a ban holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BanScopeConfig {
    /// On the rule that earned it.
    #[default]
    Rule,
    /// Earned on a rule keyed by `ip` alone: on every rule, for that address.
    Client,
}

/// `[store] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoreKind {
    /// In this process (default).
    #[default]
    Memory,
    /// A Redis server or Cluster (feature `redis`).
    Redis,
    /// A table in shared memory, exact across the processes of one machine
    /// (feature `shm`, Unix).
    SharedMemory,
}

/// `fail_mode`: what a Redis-backed rule answers while Redis cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FailModeConfig {
    /// Allow.
    Open,
    /// Deny.
    Closed,
    /// An in-memory limiter of the same quotas (default).
    #[default]
    Local,
}

/// The whole policy.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyConfig {
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub lists: ListsConfig,
    #[serde(default)]
    pub ban: Option<BanConfig>,
    #[serde(default)]
    pub store: StoreConfig,
}

/// `[store]`: where the rules' counters live.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StoreConfig {
    /// `memory` (default), `shared_memory` or `redis`.
    pub kind: StoreKind,
    /// `shared_memory`: the table file (e.g. `/dev/shm/myapp.floodgate`).
    pub path: Option<PathBuf>,
    /// `shared_memory`: slots in the table (one per key and quota, 16 bytes each),
    /// shared by every rule; fixed when the file is created.
    pub max_keys: usize,
    /// `redis://[user:password@]host:port/db` of a standalone Redis, or
    /// `rediss://...` for TLS (the server's certificate is verified).
    pub url: Option<String>,
    /// With `rediss://`: the CA certificate (PEM) that signed the server's,
    /// instead of the system's trust store; relative to the policy file.
    pub ca_file: Option<PathBuf>,
    /// Node URLs of a Redis Cluster (instead of `url`).
    pub cluster: Vec<String>,
    /// Sentinel URLs (instead of `url`), with `master_name`.
    pub sentinel: Vec<String>,
    /// The master the sentinels monitor (`sentinel monitor <name> ...`).
    pub master_name: Option<String>,
    /// With Sentinel: the master's ACL user and password (`requirepass`); the
    /// sentinels' own go in their URLs.
    pub master_user: Option<String>,
    pub master_password: Option<String>,
    /// With Sentinel: the master's database (default 0).
    pub master_db: Option<i64>,
    /// With Sentinel: TLS to the master (verified against `ca_file` or the
    /// system's trust store).
    pub master_tls: bool,
    /// Key prefix; each rule (and tier) adds its name.
    pub prefix: String,
    /// Connect and per-command timeouts; `None`: the Redis store's defaults.
    pub connect_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Blocking connections (default 2 per core).
    pub pool_size: Option<usize>,
    /// `open`, `closed` or `local` (default); a rule may override it.
    pub fail_mode: FailModeConfig,
    /// With `local`: each quota divided by this many instances.
    pub local_share: u64,
    /// Token lease size (0 = off) and how long a lease is spent.
    pub lease: u64,
    pub lease_ttl_ms: u64,
    /// Answer keys Redis denied locally until their retry time.
    pub deny_cache: bool,
    /// Fail at startup when Redis cannot be reached (default false: a server's
    /// workers start in the fail mode and connect in the background, so a Redis
    /// briefly away never stops a process from starting).
    pub check_on_start: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            path: None,
            max_keys: 1_000_000,
            url: None,
            cluster: Vec::new(),
            prefix: "fg".into(),
            connect_timeout_ms: None,
            timeout_ms: None,
            pool_size: None,
            fail_mode: FailModeConfig::Local,
            local_share: 1,
            lease: 0,
            lease_ttl_ms: 1000,
            deny_cache: true,
            check_on_start: false,
            ca_file: None,
            sentinel: Vec::new(),
            master_name: None,
            master_user: None,
            master_password: None,
            master_db: None,
            master_tls: false,
        }
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    /// `draft-10` (default), `draft-6`, `legacy` or `none`.
    pub headers: HeaderStyle,
    /// Keys held per rule (and per tier).
    pub max_keys: usize,
    /// IPv6 clients are keyed by this prefix length (an attacker usually holds a whole /64).
    pub ipv6_prefix: u8,
    /// The header carrying API keys, for `[lists]`.
    pub api_key_header: String,
    /// Status for deny-listed clients.
    pub deny_status: u16,
    /// Match paths case-sensitively (default false: `/AUTH/login` meets the rule
    /// for `/auth/login`, as Express routes it).
    pub case_sensitive_paths: bool,
    /// A file of valid API keys, one per line (`#` comments). When set, an API key
    /// that is not in it counts as no API key: it keys no rule and skips no
    /// `unless_header`, so random keys cannot each get a fresh bucket.
    pub api_keys_file: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            headers: HeaderStyle::Draft10,
            max_keys: 1_000_000,
            ipv6_prefix: 64,
            api_key_header: "x-api-key".into(),
            deny_status: 403,
            case_sensitive_paths: false,
            api_keys_file: None,
        }
    }
}

fn default_leeway() -> u64 {
    30
}
fn default_auth_header() -> String {
    "authorization".into()
}
fn default_cache() -> usize {
    10_000
}
fn default_verify_limit() -> Option<String> {
    Some("50/s burst 100".into())
}

/// `[jwt]`: how bearer tokens are verified.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtConfig {
    /// Allowed algorithms (`HS256`, `RS256`, `ES256`, `EdDSA`...). `none` never is.
    pub algorithms: Vec<String>,
    pub issuer: Option<OneOrMany>,
    pub audience: Option<OneOrMany>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    /// Claims a token must carry (beyond `exp`, and `iss`/`aud` when configured).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Header holding `Bearer <token>`.
    #[serde(default = "default_auth_header")]
    pub header: String,
    /// Environment variable holding the HMAC secret (never inline).
    pub secret_env: Option<String>,
    /// File holding the HMAC secret (a mounted secret), as an alternative.
    pub secret_file: Option<PathBuf>,
    /// Public keys as PEM files, each bound to one algorithm.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS file (public keys with `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Verified tokens remembered until they expire.
    #[serde(default = "default_cache")]
    pub cache_size: usize,
    /// Per-IP limit on signature verifications (cache misses), so floods of forged
    /// tokens cannot burn the CPU. `"off"` disables it.
    #[serde(default = "default_verify_limit")]
    pub verify_limit: Option<String>,
    /// An invalid token: `anonymous` (default: treated as no token) or `reject` (401).
    #[serde(default)]
    pub on_invalid: OnInvalid,
}

/// One public key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtKeyConfig {
    pub kid: Option<String>,
    pub algorithm: String,
    pub pem_file: PathBuf,
}

fn default_key() -> String {
    "ip".into()
}
fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}

/// `[[rule]]`: which requests, which quotas, keyed by what.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleConfig {
    pub name: String,
    /// `"POST /auth/login"`, `"/api/**"`, `"GET,PUT /users/{id}"`.
    #[serde(rename = "match")]
    pub matches: OneOrMany,
    /// Quota strings, all checked together (`["10/s", "1000/hour"]`).
    #[serde(default)]
    pub quotas: Vec<String>,
    /// Algorithm for the rule's quotas (default `gcra`).
    pub algorithm: Option<String>,
    /// Key template: `ip`, `header:x-api-key`, `claim:sub`, `route`, or `"{claim.tenant}:{route}"`.
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default = "one")]
    pub cost: u64,
    /// Count and report, never deny.
    #[serde(default)]
    pub shadow: bool,
    /// When the key needs an identity the request lacks (no verified token, no header):
    /// `skip` the rule (another, e.g. per-IP, rule applies) or `deny` with 401.
    #[serde(default)]
    pub anonymous: Anonymous,
    pub tiers: Option<TiersConfig>,
    pub adaptive: Option<AdaptiveConfig>,
    /// Which requests the rule applies to: `all` (default), `anonymous` (no verified
    /// token: the usual per-IP fallback) or `authenticated`.
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// Skip the rule when the request carries this header (e.g. an anonymous per-IP
    /// rule that API-key clients, limited by their own rule, should not also pay).
    pub unless_header: Option<String>,
    /// Whether this rule's denials count toward `[ban]`.
    #[serde(default = "yes")]
    pub ban: bool,
    /// A verified token without the claim the key needs: `deny` (default, 401
    /// `missing_claim`) or `ip` (keyed by the client's address in this rule).
    #[serde(default)]
    pub missing_claim: MissingClaim,
    /// What the rule answers while a Redis store cannot (`open`, `closed`, `local`);
    /// default `[store] fail_mode`.
    pub fail_mode: Option<FailModeConfig>,
    /// Which settled requests keep their charge: `all` (default), `failures`, `successes`.
    #[serde(default)]
    pub count: CountConfig,
    /// The statuses that are failures, as codes and ranges: `"400-599"` (default),
    /// `"401,403,429"`, `"400-499,503"`.
    pub failure_status: Option<String>,
    /// `request` (default) or `response`: charge `cost` on arrival and settle to
    /// the cost the response reports.
    #[serde(default)]
    pub cost_from: CostFrom,
    /// Requests of one key in flight at once (admitted, not yet settled).
    pub max_in_flight: Option<u64>,
    /// When a request never settled stops holding its place (default `"60s"`).
    pub in_flight_ttl: Option<String>,
    /// Count the quotas (`"10000/month"`, `"500/week"`, `"100/day"`) in
    /// calendar windows: from local midnight, Monday or the month's first day
    /// (or the key's anchor day), instead of rolling ones.
    #[serde(default)]
    pub calendar: bool,
    /// The IANA time zone of a calendar rule's days (default `"UTC"`).
    pub time_zone: Option<String>,
    /// A verified claim giving each key's day of the month (1-31) its months
    /// begin on (a monthly calendar rule; default: the 1st).
    pub anchor_claim: Option<String>,
}

/// Quotas chosen by a verified claim's value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TiersConfig {
    pub claim: String,
    pub default: String,
    pub quotas: BTreeMap<String, Vec<String>>,
}

fn default_factor() -> u64 {
    2
}
fn default_min_requests() -> u64 {
    20
}
fn default_window() -> String {
    "1m".into()
}

/// Tightening for keys that keep getting denied.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdaptiveConfig {
    /// Denied share of a window's requests above which the key is tightened (0..1).
    pub threshold: f64,
    #[serde(default = "default_window")]
    pub window: String,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Cost multiplier while tightened (2 halves the quota).
    #[serde(default = "default_factor")]
    pub factor: u64,
}

/// `[lists]`: always allowed or always denied clients.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ListsConfig {
    pub allow_ips: Vec<String>,
    pub deny_ips: Vec<String>,
    pub allow_api_keys: Vec<String>,
    pub deny_api_keys: Vec<String>,
    pub allow_subjects: Vec<String>,
    pub deny_subjects: Vec<String>,
}

fn default_escalate() -> f64 {
    1.0
}
fn default_ban_status() -> u16 {
    429
}

/// `[ban]`: after `after` denials within `within`, block the key for `duration`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BanConfig {
    pub after: u64,
    pub within: String,
    pub duration: String,
    /// Each further ban of the same key lasts this many times longer (1 = no escalation).
    #[serde(default = "default_escalate")]
    pub escalate: f64,
    pub max_duration: Option<String>,
    /// 429 (default) or 403.
    #[serde(default = "default_ban_status")]
    pub status: u16,
    /// `rule` (default): a ban holds on the rule that earned it. `client`: a ban
    /// earned on a rule keyed by `ip` alone holds for that client on every rule.
    #[serde(default)]
    pub scope: BanScopeConfig,
}

/// Where a policy came from, to place errors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    Toml(&'a str),
    Json(&'a str),
}

/// One step of a path to a field.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(&'static str),
    Name(String),
    Index(usize),
}

/// A path to a field, for error messages: `rule[1].quotas[0]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Path(pub Vec<Seg>);

impl Path {
    pub(crate) fn key(&self, key: &'static str) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Key(key));
        p
    }
    pub(crate) fn name(&self, key: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Name(key.to_string()));
        p
    }
    pub(crate) fn index(&self, i: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    fn render(&self) -> String {
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Name(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() { "policy".into() } else { out }
    }
}

fn line_at(text: &str, offset: usize) -> u32 {
    let end = offset.min(text.len());
    let before = text.get(..end).unwrap_or_default();
    u32::try_from(before.bytes().filter(|b| *b == b'\n').count() + 1).unwrap_or(u32::MAX)
}

/// The line of the field at `path` in a TOML document, found through its spans.
fn toml_line(text: &str, path: &Path) -> Option<u32> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut span = doc.span();
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut value: Option<&DeValue<'_>> = None;
    for seg in &path.0 {
        match seg {
            Seg::Key(k) => {
                let (_, v) = table?
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == *k)?;
                span = v.span();
                value = Some(v.get_ref());
            }
            Seg::Name(k) => {
                let (_, v) = table?
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k.as_str())?;
                span = v.span();
                value = Some(v.get_ref());
            }
            Seg::Index(i) => {
                let DeValue::Array(items) = value? else {
                    return None;
                };
                let v = items.get(*i)?;
                span = v.span();
                value = Some(v.get_ref());
            }
        }
        table = match value {
            Some(DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    Some(line_at(text, span.start))
}

impl Source<'_> {
    /// An error at `path`, with the line where the source is TOML text.
    pub(crate) fn error(&self, path: &Path, message: impl Into<String>) -> Error {
        let line = match self {
            Self::Toml(text) => toml_line(text, path),
            Self::Json(_) => None,
        };
        Error::InvalidConfig {
            location: path.render().into(),
            line,
            message: message.into().into(),
        }
    }

    /// Parses the document.
    pub(crate) fn parse(&self) -> Result<PolicyConfig> {
        match self {
            Self::Toml(text) => toml::from_str(text).map_err(|e| Error::InvalidConfig {
                location: "policy".into(),
                line: e.span().map(|s| line_at(text, s.start)),
                message: e.message().trim().into(),
            }),
            Self::Json(text) => serde_json::from_str(text).map_err(|e| Error::InvalidConfig {
                location: "policy".into(),
                line: u32::try_from(e.line()).ok().filter(|l| *l > 0),
                message: e.to_string().into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_name_the_line() {
        let text = "[settings]\nheaders = \"draft-10\"\n\n[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquota = [\"1/s\"]\n";
        let err = Source::Toml(text).parse().unwrap_err();
        let Error::InvalidConfig { line, message, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(line, Some(7));
        assert!(message.contains("unknown field `quota`"), "{message}");
    }

    #[test]
    fn json_errors_have_lines_too() {
        let err = Source::Json("{\n \"rule\": [\n {\"name\": 1}]}")
            .parse()
            .unwrap_err();
        let Error::InvalidConfig { line, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(line, Some(3));
    }

    #[test]
    fn paths_find_their_lines() {
        let text = "[[rule]]\nname = \"a\"\nmatch = \"/x\"\nquotas = [\"1/s\"]\n\n[[rule]]\nname = \"b\"\nmatch = \"/y\"\nquotas = [\"1/s\",\n  \"2/m\"]\n";
        let p = Path::default().key("rule").index(1).key("quotas").index(1);
        assert_eq!(toml_line(text, &p), Some(10));
        let err = Source::Toml(text).error(&p, "bad");
        assert_eq!(
            err.to_string(),
            "invalid policy at rule[1].quotas[1] (line 10): bad"
        );
    }
}
