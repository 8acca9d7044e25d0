//! Key templates: what a rule counts by. `ip`, `api_key`, `header:x-api-key`,
//! `claim:sub`, `route`, `method`, `path`, or a composition such as
//! `"{claim.tenant}:{route}"`. Claims come only from a *verified* token.
//!
//! Keys are built in a fixed stack buffer, with no allocation. A key longer than
//! the buffer (say, a huge header sent by an attacker) is replaced by a seeded hash
//! of the whole key, so it can neither crash the engine nor slip past the rule.

use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use serde_json::Value;

/// Claims of a verified token.
pub(crate) type Claims = serde_json::Map<String, Value>;

/// One piece of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Ip,
    Header(String),
    Claim(String),
    Route,
    Method,
    Path,
}

/// A parsed key template.
#[derive(Debug, Clone)]
pub(crate) struct KeyTemplate {
    parts: Vec<Part>,
}

fn part(name: &str, api_key_header: &str) -> Result<Part, String> {
    let name = name.trim();
    let named = |prefix: &str| {
        name.strip_prefix(prefix)
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    };
    Ok(match name {
        "ip" => Part::Ip,
        "route" => Part::Route,
        "method" => Part::Method,
        "path" => Part::Path,
        "api_key" => Part::Header(api_key_header.to_ascii_lowercase()),
        _ => {
            if let Some(h) = named("header:").or_else(|| named("header.")) {
                Part::Header(h.to_ascii_lowercase())
            } else if let Some(c) = named("claim:").or_else(|| named("claim.")) {
                Part::Claim(c)
            } else {
                return Err(format!(
                    "unknown key part {name:?} (use ip, api_key, route, method, path, header:NAME or claim:NAME)"
                ));
            }
        }
    })
}

impl KeyTemplate {
    /// Parses `"ip"`, `"claim:sub"` or `"{claim.tenant}:{route}"`.
    pub(crate) fn parse(text: &str, api_key_header: &str) -> Result<Self, String> {
        if !text.contains(['{', '}']) {
            return Ok(Self {
                parts: vec![part(text, api_key_header)?],
            });
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed '{{' in {text:?}"))?;
                    parts.push(part(rest.get(1..end).unwrap_or_default(), api_key_header)?);
                    rest = rest.get(end + 1..).unwrap_or_default();
                }
                Some(i) => {
                    let lit = rest.get(..i).unwrap_or_default();
                    if lit.contains('}') {
                        return Err(format!("unmatched '}}' in {text:?}"));
                    }
                    parts.push(Part::Literal(lit.to_string()));
                    rest = rest.get(i..).unwrap_or_default();
                }
                None => {
                    if rest.contains('}') {
                        return Err(format!("unmatched '}}' in {text:?}"));
                    }
                    parts.push(Part::Literal(rest.to_string()));
                    rest = "";
                }
            }
        }
        if parts.iter().all(|p| matches!(p, Part::Literal(_))) {
            return Err(format!(
                "{text:?} has no variable part: every request would share one key"
            ));
        }
        Ok(Self { parts })
    }

    /// Whether the key uses token claims.
    pub(crate) fn needs_claims(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Claim(_)))
    }
}

/// What a key is built from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyInput<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub ip: Option<IpAddr>,
    pub headers: &'a [(&'a str, &'a str)],
    pub claims: Option<&'a Claims>,
    pub route: &'a str,
}

/// The first header named `name` (case-insensitive).
pub(crate) fn header<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// Keeps the first `prefix` bits of an IPv6 address (clients are keyed by network).
pub(crate) fn mask_ip(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u128::from(v6);
            let keep = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// Capacity of a key buffer; longer keys are replaced by their hash.
pub(crate) const KEY_BUF: usize = 512;

/// A key being built: bytes in a stack buffer, plus a running hash of all of them.
pub(crate) struct KeyBuf<'h, H: Hasher> {
    buf: [u8; KEY_BUF],
    len: usize,
    total: usize,
    hash: H,
    _seed: std::marker::PhantomData<&'h ()>,
}

impl<H: Hasher> KeyBuf<'_, H> {
    fn push(&mut self, bytes: &[u8]) {
        self.hash.write(bytes);
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        }
        self.total += bytes.len();
    }

    /// The finished key: the bytes, or `h:<hash>` if they did not fit.
    pub(crate) fn finish(&mut self) -> &[u8] {
        if self.total > KEY_BUF {
            let h = self.hash.finish();
            self.len = 0;
            self.total = 0;
            let _ = write!(self, "h:{h:016x}");
        }
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl<H: Hasher> fmt::Write for KeyBuf<'_, H> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl KeyTemplate {
    /// Builds the key, or `None` if a part is missing (no IP, header or verified claim).
    pub(crate) fn build<'h, S: BuildHasher>(
        &self,
        input: &KeyInput<'_>,
        seed: &'h S,
    ) -> Option<KeyBuf<'h, S::Hasher>> {
        let mut key = KeyBuf {
            buf: [0; KEY_BUF],
            len: 0,
            total: 0,
            hash: seed.build_hasher(),
            _seed: Default::default(),
        };
        for part in &self.parts {
            match part {
                Part::Literal(s) => key.push(s.as_bytes()),
                Part::Ip => {
                    let _ = write!(key, "{}", input.ip?);
                }
                Part::Header(name) => key.push(
                    header(input.headers, name)
                        .filter(|v| !v.is_empty())?
                        .as_bytes(),
                ),
                Part::Claim(name) => match input.claims?.get(name)? {
                    Value::String(s) if !s.is_empty() => key.push(s.as_bytes()),
                    Value::Number(n) => {
                        let _ = write!(key, "{n}");
                    }
                    Value::Bool(b) => {
                        let _ = write!(key, "{b}");
                    }
                    _ => return None,
                },
                Part::Route => key.push(input.route.as_bytes()),
                Part::Method => {
                    for b in input.method.bytes() {
                        key.push(&[b.to_ascii_uppercase()]);
                    }
                }
                Part::Path => key.push(input.path.split('?').next().unwrap_or_default().as_bytes()),
            }
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(headers: &'a [(&'a str, &'a str)], claims: Option<&'a Claims>) -> KeyInput<'a> {
        KeyInput {
            method: "post",
            path: "/a?x=1",
            ip: "203.0.113.7".parse().ok(),
            headers,
            claims,
            route: "login",
        }
    }

    fn key(template: &str, input: &KeyInput<'_>) -> Option<String> {
        let seed = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let t = KeyTemplate::parse(template, "x-api-key").unwrap_or_else(|e| panic!("{e}"));
        t.build(input, &seed)
            .map(|mut k| String::from_utf8_lossy(k.finish()).into_owned())
    }

    #[test]
    fn simple_and_composed() {
        let mut claims = Claims::new();
        claims.insert("tenant".into(), "acme".into());
        claims.insert("uid".into(), 42.into());
        let headers = [("X-Api-Key", "k123")];
        let i = input(&headers, Some(&claims));
        assert_eq!(key("ip", &i).as_deref(), Some("203.0.113.7"));
        assert_eq!(key("api_key", &i).as_deref(), Some("k123"));
        assert_eq!(key("header:x-api-key", &i).as_deref(), Some("k123"));
        assert_eq!(
            key("{claim.tenant}:{route}", &i).as_deref(),
            Some("acme:login")
        );
        assert_eq!(
            key("u{claim:uid}/{method}{path}", &i).as_deref(),
            Some("u42/POST/a")
        );
        assert_eq!(key("claim:sub", &i), None);
        assert_eq!(key("claim:sub", &input(&headers, None)), None);
        assert_eq!(key("header:authorization", &i), None);
    }

    #[test]
    fn huge_parts_are_hashed_not_dropped() {
        let big = "x".repeat(10_000);
        let other = format!("{}y", "x".repeat(9_999));
        let (h1, h2) = (
            [("x-api-key", big.as_str())],
            [("x-api-key", other.as_str())],
        );
        let (a, b) = (
            key("api_key", &input(&h1, None)).unwrap_or_default(),
            key("api_key", &input(&h2, None)).unwrap_or_default(),
        );
        assert!(a.starts_with("h:") && a.len() == 18, "{a}");
        assert_ne!(a, b, "different long keys stay different");
    }

    #[test]
    fn bad_templates() {
        for bad in ["", "cookie", "{ip", "ip}", "{claim.}", "static", "{nope}"] {
            assert!(KeyTemplate::parse(bad, "x").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ipv6_is_keyed_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 4]));
        let b: IpAddr = "2001:db8:1:2:bbbb::9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(mask_ip(a, 64), mask_ip(b, 64));
        assert_ne!(mask_ip(a, 128), mask_ip(b, 128));
        let mapped: IpAddr = "::ffff:198.51.100.1"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(mask_ip(mapped, 64).to_string(), "198.51.100.1");
    }
}
