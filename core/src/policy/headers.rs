//! Rate-limit response headers, in the style the policy selects.
//!
//! - `draft-10` (default), IETF draft-ietf-httpapi-ratelimit-headers-10 structured
//!   fields: `RateLimit-Policy: "login";q=5;w=60` and
//!   `RateLimit: "login";r=4;t=12;pk=:<base64>:`. `pk`, the partition key, is a
//!   seeded hash of the key, never the key itself (it may hold a user id).
//! - `draft-6`: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
//!   `RateLimit-Policy: 5;w=60`.
//! - `legacy`: `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`
//!   (seconds until reset).
//! - `none`: only `Retry-After`.
//!
//! `Retry-After` (integer seconds, rounded **up**, at least 1) is on every 429 and
//! every ban, so a client that honours it is never early. For a token bucket the
//! policy advertises `q` = burst and `w` = the time to refill the whole burst.

use std::time::Duration;

use crate::quota::{Algorithm, Quota};

/// Every response header name a verdict may carry, in a fixed order. Front ends
/// that pass names as numbers (the Node binding's raw path) index this list;
/// a verdict's header names are always these `&'static str`s.
pub const RESPONSE_HEADERS: [&str; 10] = [
    "RateLimit-Policy",
    "RateLimit",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Retry-After",
    "WWW-Authenticate",
];

/// The position of a verdict's header name in [`RESPONSE_HEADERS`] (`None`
/// only for a name that is not one of them, which a verdict never carries).
pub fn response_header_index(name: &str) -> Option<usize> {
    RESPONSE_HEADERS.iter().position(|n| *n == name)
}

/// Which header set to emit (`settings.headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum HeaderStyle {
    /// `draft-10` (also `draft10`, `ietf`):
    /// draft-ietf-httpapi-ratelimit-headers-10 (`RateLimit`, `RateLimit-Policy`).
    #[serde(rename = "draft-10", alias = "draft10", alias = "ietf")]
    Draft10,
    /// `draft-6` (also `draft-06`, `draft6`):
    /// draft-ietf-httpapi-ratelimit-headers-06 (`RateLimit-Limit/Remaining/Reset`).
    #[serde(rename = "draft-6", alias = "draft-06", alias = "draft6")]
    Draft6,
    /// `legacy` (also `x-ratelimit`): `X-RateLimit-Limit/Remaining/Reset`.
    #[serde(rename = "legacy", alias = "x-ratelimit")]
    Legacy,
    /// `none` (also `off`): only `Retry-After`.
    #[serde(rename = "none", alias = "off")]
    None,
}

impl HeaderStyle {
    /// Whether this style sends `RateLimit-Policy`.
    pub(crate) fn has_policy_header(self) -> bool {
        matches!(self, Self::Draft10 | Self::Draft6)
    }
}

/// Whole seconds, rounded up (`Retry-After` must never be early).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The window `w` a quota advertises, in whole seconds (at least 1).
pub(crate) fn window_secs(q: &Quota) -> u64 {
    if let Some(unit) = q.calendar_unit() {
        return unit.nominal_secs();
    }
    let w = match q.algorithm() {
        // The time a full burst takes to refill: period x burst / rate, exactly.
        // (Not burst x interval: the interval is rounded up to whole
        // nanoseconds, so 99/min came out as 60.000000093 s, advertised w=61.)
        Algorithm::Gcra => {
            let ns = (u128::from(q.period_ns()) * u128::from(q.burst()))
                .div_ceil(u128::from(q.rate().max(1)));
            Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
        }
        _ => q.period(),
    };
    ceil_secs(w).max(1)
}

/// The policy name of quota `i` of a rule with `n` quotas: the rule's name, or
/// `name.1`, `name.2`, ... when it has several, so every quota a client may be
/// told about has its own name.
pub(crate) fn policy_name(rule: &str, i: usize, n: usize) -> String {
    if n <= 1 {
        rule.to_string()
    } else {
        format!("{rule}.{}", i + 1)
    }
}

/// Joins `RateLimit-Policy` items into one list value (`a, b`).
pub(crate) fn policy_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    join_into(&mut out, items);
    out
}

/// Appends `items` to `out` as one list value (`a, b`), skipping empty ones.
fn join_into<'a>(out: &mut String, items: impl IntoIterator<Item = &'a str>) {
    let start = out.len();
    for item in items.into_iter().filter(|i| !i.is_empty()) {
        if out.len() > start {
            out.push_str(", ");
        }
        out.push_str(item);
    }
}

/// The `RateLimit-Policy` item of one quota, computed once at load.
pub(crate) fn policy_value(style: HeaderStyle, policy: &str, quota: &Quota) -> String {
    let (q, w) = (quota.limit(), window_secs(quota));
    match style {
        HeaderStyle::Draft10 => format!("\"{}\";q={q};w={w}", sf_escape(policy)),
        HeaderStyle::Draft6 => format!("{q};w={w}"),
        HeaderStyle::Legacy | HeaderStyle::None => String::new(),
    }
}

/// The start of a draft-10 `RateLimit` item for `policy` (`"name";r=`),
/// computed once at load; empty for other styles.
pub(crate) fn rate_prefix(style: HeaderStyle, policy: &str) -> String {
    match style {
        HeaderStyle::Draft10 => format!("\"{}\";r=", sf_escape(policy)),
        HeaderStyle::Draft6 | HeaderStyle::Legacy | HeaderStyle::None => String::new(),
    }
}

/// What the headers report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Report<'a> {
    /// The `RateLimit-Policy` value: the lists of every rule that applies to
    /// the request (joined with `, `), the same whether it is allowed or denied.
    pub policy_list: &'a [&'a str],
    /// `rate_prefix()` of the deciding quota, precomputed.
    pub rate_prefix: &'a str,
    pub quota: &'a Quota,
    pub remaining: u64,
    pub reset_after: Duration,
    /// Set on 429 and bans.
    pub retry_after: Option<Duration>,
    /// Hash of the key, for `pk`.
    pub partition: Option<u64>,
}

/// Where rendered headers go: the verdict's list, with values written into
/// spare strings when there are some (see `VerdictBuf`), so a reused buffer
/// renders without allocating.
pub(crate) struct HeaderOut<'a> {
    pub headers: &'a mut Vec<(&'static str, String)>,
    pub spare: &'a mut Vec<String>,
}

impl HeaderOut<'_> {
    /// Adds header `name` with the value `write` puts into an empty string.
    fn add(&mut self, name: &'static str, write: impl FnOnce(&mut String)) {
        let mut value = self.spare.pop().unwrap_or_default();
        value.clear();
        write(&mut value);
        self.headers.push((name, value));
    }

    fn number(&mut self, name: &'static str, n: u64) {
        self.add(name, |s| s.push_str(itoa::Buffer::new().format(n)));
    }
}

/// Appends the headers for `report` to `out`.
pub(crate) fn render(style: HeaderStyle, r: &Report<'_>, out: &mut HeaderOut<'_>) {
    let q = r.quota.limit();
    let t = ceil_secs(r.reset_after);
    let policies = |s: &mut String| join_into(s, r.policy_list.iter().copied());
    match style {
        HeaderStyle::Draft10 => {
            out.add("RateLimit-Policy", policies);
            out.add("RateLimit", |value| {
                let mut n = itoa::Buffer::new();
                value.push_str(r.rate_prefix);
                value.push_str(n.format(r.remaining));
                value.push_str(";t=");
                value.push_str(n.format(t));
                if let Some(pk) = r.partition {
                    value.push_str(";pk=:");
                    push_base64_u64(value, pk);
                    value.push(':');
                }
            });
        }
        HeaderStyle::Draft6 => {
            out.number("RateLimit-Limit", q);
            out.number("RateLimit-Remaining", r.remaining);
            out.number("RateLimit-Reset", t);
            out.add("RateLimit-Policy", policies);
        }
        HeaderStyle::Legacy => {
            out.number("X-RateLimit-Limit", q);
            out.number("X-RateLimit-Remaining", r.remaining);
            out.number("X-RateLimit-Reset", t);
        }
        HeaderStyle::None => {}
    }
    if let Some(retry) = r.retry_after {
        retry_after(out, retry);
    }
}

/// `Retry-After` in whole seconds, at least 1.
pub(crate) fn retry_after(out: &mut HeaderOut<'_>, retry: Duration) {
    out.number("Retry-After", ceil_secs(retry).max(1));
}

/// `v`'s 8 big-endian bytes in standard padded base64 (RFC 4648): 12
/// characters, the `pk` of every draft-10 `RateLimit` header. By hand: the
/// crate's general encoder plus re-validating its output as UTF-8 were about
/// 330 of `render`'s 735 instructions (callgrind, 2026-12-05); the test checks
/// it against the crate.
fn push_base64_u64(out: &mut String, v: u64) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // 64 bits and 2 zero bits of padding are eleven 6-bit digits, then one `=`.
    let bits = u128::from(v) << 2;
    out.reserve(12);
    for shift in (0..11).rev() {
        let digit = usize::try_from((bits >> (6 * shift)) & 63).unwrap_or(0);
        out.push(char::from(ALPHABET.get(digit).copied().unwrap_or(b'A')));
    }
    out.push('=');
}

/// A policy name as a structured-field string: only printable ASCII, `"` and `\` escaped.
fn sf_escape(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                s.push('\\');
                s.push(c);
            }
            ' '..='~' => s.push(c),
            _ => s.push('_'),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gcra_window_is_its_burst_refill_time_in_whole_seconds() {
        for (text, w) in [
            ("99/min", 60),
            ("3/s", 1),
            ("7/h", 3600),
            ("600/min burst 100", 10),
            ("1000/day burst 7", 605),
            ("1/s burst 1000000", 1_000_000),
        ] {
            let q: Quota = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(window_secs(&q), w, "{text}");
        }
    }

    #[test]
    fn the_partition_key_is_standard_base64() {
        use base64::Engine as _;
        let mut n = 0x0123_4567_89ab_cdef_u64;
        for v in [0, 1, u64::MAX, 0x0102_0304_0506_0708]
            .into_iter()
            .chain((0..1000).map(|_| {
                n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                n
            }))
        {
            let mut s = String::new();
            push_base64_u64(&mut s, v);
            let want = base64::engine::general_purpose::STANDARD.encode(v.to_be_bytes());
            assert_eq!(s, want, "{v:#x}");
        }
    }

    fn q(s: &str) -> Quota {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn headers(style: HeaderStyle, name: &str, r: &Report<'_>) -> Vec<(&'static str, String)> {
        let value = policy_value(style, name, r.quota);
        let prefix = rate_prefix(style, name);
        let (mut out, mut spare) = (Vec::new(), Vec::new());
        render(
            style,
            &Report {
                policy_list: &[&value],
                rate_prefix: &prefix,
                ..*r
            },
            &mut HeaderOut {
                headers: &mut out,
                spare: &mut spare,
            },
        );
        out
    }

    #[test]
    fn draft10_matches_the_drafts_examples() {
        // The draft's example: a policy of 100 per 60 s, 50 left, reset in 30 s.
        let quota = q("100/m")
            .with_algorithm(Algorithm::FixedWindow)
            .unwrap_or_else(|e| panic!("{e}"));
        let r = Report {
            policy_list: &[],
            rate_prefix: "",
            quota: &quota,
            remaining: 50,
            reset_after: Duration::from_secs(30),
            retry_after: None,
            partition: None,
        };
        assert_eq!(
            headers(HeaderStyle::Draft10, "burst", &r),
            vec![
                ("RateLimit-Policy", "\"burst\";q=100;w=60".into()),
                ("RateLimit", "\"burst\";r=50;t=30".into())
            ]
        );
        let r = Report {
            partition: Some(0x0102_0304_0506_0708),
            ..r
        };
        assert_eq!(
            headers(HeaderStyle::Draft10, "burst", &r)[1].1,
            "\"burst\";r=50;t=30;pk=:AQIDBAUGBwg=:"
        );
    }

    #[test]
    fn draft6_legacy_and_retry_after() {
        let quota = q("10/s burst 20"); // refill of the whole burst: 2 s
        let r = Report {
            policy_list: &[],
            rate_prefix: "",
            quota: &quota,
            remaining: 0,
            reset_after: Duration::from_millis(1500),
            retry_after: Some(Duration::from_millis(100)),
            partition: None,
        };
        assert_eq!(
            headers(HeaderStyle::Draft6, "api", &r),
            vec![
                ("RateLimit-Limit", "20".into()),
                ("RateLimit-Remaining", "0".into()),
                ("RateLimit-Reset", "2".into()),
                ("RateLimit-Policy", "20;w=2".into()),
                ("Retry-After", "1".into()),
            ]
        );
        assert_eq!(
            headers(HeaderStyle::Legacy, "api", &r)[0],
            ("X-RateLimit-Limit", "20".into())
        );
        assert_eq!(
            headers(HeaderStyle::None, "api", &r),
            vec![("Retry-After", "1".into())]
        );
    }

    #[test]
    fn every_rendered_name_is_in_the_catalogue() {
        let quota = q("10/s burst 20");
        for style in [
            HeaderStyle::Draft10,
            HeaderStyle::Draft6,
            HeaderStyle::Legacy,
            HeaderStyle::None,
        ] {
            let r = Report {
                policy_list: &[],
                rate_prefix: "",
                quota: &quota,
                remaining: 0,
                reset_after: Duration::from_secs(1),
                retry_after: Some(Duration::from_secs(1)),
                partition: Some(1),
            };
            for (name, _) in headers(style, "api", &r) {
                assert!(RESPONSE_HEADERS.contains(&name), "{name}");
            }
        }
    }

    #[test]
    fn retry_after_is_never_early() {
        for (ns, secs) in [
            (1, 1),
            (999_999_999, 1),
            (1_000_000_000, 1),
            (1_000_000_001, 2),
            (59_500_000_000, 60),
        ] {
            assert_eq!(ceil_secs(Duration::from_nanos(ns)).max(1), secs);
        }
    }

    #[test]
    fn every_quota_is_listed_under_its_own_name() {
        let (a, b) = (q("10/s"), q("1000/h"));
        let items = [
            policy_value(HeaderStyle::Draft10, &policy_name("api", 0, 2), &a),
            policy_value(HeaderStyle::Draft10, &policy_name("api", 1, 2), &b),
            policy_value(HeaderStyle::Draft10, &policy_name("login", 0, 1), &a),
        ];
        let list = policy_list(items.iter().map(String::as_str));
        assert_eq!(
            list,
            "\"api.1\";q=10;w=1, \"api.2\";q=1000;w=3600, \"login\";q=10;w=1"
        );
        let (mut out, mut spare) = (Vec::new(), vec![String::from("reused")]);
        let r = Report {
            policy_list: &[&list],
            rate_prefix: &rate_prefix(HeaderStyle::Draft10, &policy_name("api", 1, 2)),
            quota: &b,
            remaining: 7,
            reset_after: Duration::from_secs(5),
            retry_after: None,
            partition: None,
        };
        render(
            HeaderStyle::Draft10,
            &r,
            &mut HeaderOut {
                headers: &mut out,
                spare: &mut spare,
            },
        );
        assert_eq!(out[0].1, list);
        assert_eq!(out[1], ("RateLimit", "\"api.2\";r=7;t=5".into()));
        assert_eq!(policy_list(["", "10;w=1", ""]), "10;w=1");
    }

    #[test]
    fn policy_names_are_escaped() {
        assert_eq!(sf_escape("a\"b\\cé"), "a\\\"b\\\\c_");
    }
}
