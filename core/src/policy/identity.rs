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

use arrayvec::ArrayVec;
use serde_json::Value;

/// Claims of a verified token.
pub(crate) type Claims = serde_json::Map<String, Value>;

/// One piece of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Ip,
    /// The request's API key, if it has a valid one (see [`KeyInput::api_key`]).
    ApiKey,
    Header(String),
    Claim(String),
    /// A field of the request body (see `super::body`).
    Body(String),
    Route,
    Method,
    Path,
}

/// A parsed key template.
#[derive(Debug, Clone)]
pub(crate) struct KeyTemplate {
    parts: Vec<Part>,
}

impl KeyTemplate {
    /// The request headers this key reads (`header:` parts).
    pub(crate) fn header_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Header(name) => Some(name.as_str()),
            _ => None,
        })
    }
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
        "api_key" => Part::ApiKey,
        _ => {
            if let Some(h) = named("header:").or_else(|| named("header.")) {
                if h.eq_ignore_ascii_case(api_key_header) {
                    // One predicate for "has an API key", whichever way it is named.
                    Part::ApiKey
                } else {
                    Part::Header(h.to_ascii_lowercase())
                }
            } else if let Some(c) = named("claim:").or_else(|| named("claim.")) {
                Part::Claim(c)
            } else if let Some(f) = named("body:").or_else(|| named("body.")) {
                Part::Body(f)
            } else {
                return Err(format!(
                    "unknown key part {name:?} (use ip, api_key, route, method, path, header:NAME, \
                     claim:NAME or body:FIELD)"
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

    /// Whether every claim the key uses is in `claims` with a usable value (a
    /// non-empty string, a number or a boolean).
    pub(crate) fn claims_usable(&self, claims: &Claims) -> bool {
        self.parts.iter().all(|p| match p {
            Part::Claim(name) => match claims.get(name) {
                Some(Value::String(s)) => !s.is_empty(),
                Some(Value::Number(_) | Value::Bool(_)) => true,
                _ => false,
            },
            _ => true,
        })
    }

    /// Whether the key is the client's address alone (`key = "ip"`).
    pub(crate) fn is_ip_only(&self) -> bool {
        matches!(self.parts.as_slice(), [Part::Ip])
    }

    /// The key of every request from a client: its address.
    pub(crate) fn ip() -> Self {
        Self {
            parts: vec![Part::Ip],
        }
    }

    /// Whether this is the address alone (`key = "ip"`, the client key): every
    /// such template builds the same key for a request.
    pub(crate) fn is_ip(&self) -> bool {
        matches!(self.parts.as_slice(), [Part::Ip])
    }

    /// Whether the key has the request's path in it (`path`).
    pub(crate) fn uses_path(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Path))
    }

    /// Whether the key has a field of the request body in it (`body:`).
    pub(crate) fn reads_body(&self) -> bool {
        self.body_fields().next().is_some()
    }

    /// The body fields the key reads (`body:` parts).
    pub(crate) fn body_fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Body(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

/// What a key is built from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyInput<'a> {
    pub method: &'a str,
    /// The normalised path (see `super::path`).
    pub path: &'a str,
    /// The client's address, canonical and masked to its network.
    pub ip: Option<IpAddr>,
    /// The request's API key: present, not empty, and valid when the policy lists
    /// valid keys.
    pub api_key: Option<&'a str>,
    pub headers: &'a [(&'a str, &'a str)],
    pub claims: Option<&'a Claims>,
    pub route: &'a str,
    /// The request body, when the front end read it.
    pub body: Option<&'a [u8]>,
    /// Its fields the request's rules key on, already read (a field not
    /// among them is read from `body`).
    pub fields: &'a [(&'a str, super::body::Field<'a>)],
}

/// The first header named `name` (case-insensitive): the copy frameworks read
/// when a header is repeated.
pub(crate) fn header<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// The first header named `name`, if it has a value: the one test of "the request
/// carries this header", shared by keys and `unless_header`, so a header sent
/// empty can neither skip a rule nor key one.
pub(crate) fn present<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    header(headers, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The address as one canonical value: an IPv4-mapped IPv6 address
/// (`::ffff:192.0.2.5`, what a dual-stack socket reports) is its IPv4 address.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Keeps the first `prefix` bits of an IPv6 address (clients are keyed by network).
pub(crate) fn mask_ip(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// Capacity of a key buffer; longer keys are replaced by their hash.
pub(crate) const KEY_BUF: usize = 256;

/// A key being built in a stack buffer. Bytes past the buffer are only counted; a
/// key that overflowed is rebuilt through a hasher (a second, rare pass). The
/// buffer is an `ArrayVec`: unlike an array it is not zeroed when made, a copy
/// copies the key's bytes, not the whole buffer, and unlike a `SmallVec` that
/// never spills, reading its length or bytes takes no inline-or-heap branch.
#[derive(Clone, Default)]
pub(crate) struct KeyBuf {
    buf: ArrayVec<u8, KEY_BUF>,
    total: usize,
}

impl KeyBuf {
    /// The key last built.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// A copy of `key` (at most [`KEY_BUF`] bytes are kept: keys are built no longer).
    pub(crate) fn copy_of(key: &[u8]) -> Self {
        let mut k = Self::default();
        k.push(key.get(..KEY_BUF).unwrap_or(key));
        k
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.total = 0;
    }
}

/// Where key bytes go: the buffer, or a hasher on the overflow pass.
trait Sink {
    fn push(&mut self, bytes: &[u8]);
}

impl Sink for KeyBuf {
    fn push(&mut self, bytes: &[u8]) {
        // Fails (nothing written) only when `bytes` does not fit.
        let _ = self.buf.try_extend_from_slice(bytes);
        self.total += bytes.len();
    }
}

struct HashSink<H: Hasher>(H);

impl<H: Hasher> Sink for HashSink<H> {
    fn push(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
}

/// `fmt::Write` for any sink (IPv6 addresses, numbers).
struct FmtSink<'a, S: Sink>(&'a mut S);

impl<S: Sink> fmt::Write for FmtSink<'_, S> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.push(s.as_bytes());
        Ok(())
    }
}

/// The decimal text of every IPv4 octet followed by a `.`, as the four bytes
/// of a little-endian word (unused bytes zero), and its length with the dot:
/// an address is four word stores.
// Evaluated at compile time: an index out of range would fail the build.
#[allow(clippy::indexing_slicing)]
const OCTETS: [(u32, u8); 256] = {
    let mut t = [(0u32, 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        let (bytes, len) = if o >= 100 {
            ([b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, b'.'], 4)
        } else if o >= 10 {
            ([b'0' + o / 10, b'0' + o % 10, b'.', 0], 3)
        } else {
            ([b'0' + o, b'.', 0, 0], 2)
        };
        t[i] = (u32::from_le_bytes(bytes), len);
        i += 1;
    }
    t
};

/// An `ip` key part of a request without a client address: one key for every
/// such request, never none. (Skipping the rule let a client the server could
/// no longer name, as Node does once an attacker has reset the connection,
/// pass every IP-keyed limit: its login attempts reached the handler
/// unlimited.) No address is written as `-`.
pub(crate) const NO_ADDRESS: &[u8] = b"-";

/// Writes `ip` as text: IPv4 in dotted decimal from [`OCTETS`], without the
/// fmt machinery (the common case), IPv6 through `Display`; no address as
/// [`NO_ADDRESS`].
fn push_ip<S: Sink>(key: &mut S, ip: Option<IpAddr>) {
    let Some(ip) = ip else {
        key.push(NO_ADDRESS);
        return;
    };
    match ip {
        IpAddr::V4(v4) => {
            // Each octet's word at the end of the text so far (at most 12
            // bytes before the last: 16 fit).
            let mut text = [0u8; 16];
            let mut n = 0;
            for octet in v4.octets() {
                let (word, len) = OCTETS.get(usize::from(octet)).copied().unwrap_or_default();
                if let Some(slot) = text.get_mut(n..n + 4) {
                    slot.copy_from_slice(&word.to_le_bytes());
                }
                n += usize::from(len);
            }
            // Without the last octet's dot.
            key.push(text.get(..n.saturating_sub(1)).unwrap_or_default());
        }
        v6 => {
            let _ = write!(FmtSink(key), "{v6}");
        }
    }
}

/// The key `ip` (the address alone) of a request from `ip`, in `buf`.
pub(crate) fn ip_key(ip: Option<IpAddr>, buf: &mut KeyBuf) -> &[u8] {
    buf.reset();
    push_ip(buf, ip);
    buf.bytes()
}

impl KeyTemplate {
    /// Builds the key into `buf` (reused across rules) and returns it, or `None` if a
    /// part is missing (no header, API key or verified claim; a missing client
    /// address is [`NO_ADDRESS`]). A key longer than the
    /// buffer comes back as `h:<seeded hash of the whole key>`.
    pub(crate) fn build<'b, S: BuildHasher>(
        &self,
        input: &KeyInput<'_>,
        seed: &S,
        buf: &'b mut KeyBuf,
    ) -> Option<&'b [u8]> {
        buf.reset();
        if let [Part::Ip] = self.parts.as_slice() {
            // The usual key, straight-line: an address never overflows the
            // buffer (at most 39 bytes). This path executes 6 lines of code
            // (64 bytes each) where the general loop executed 20: in a real
            // server the code is cold between requests, so lines cost more
            // than instructions (callgrind, benches/callgrind_lines.py).
            return Some(ip_key(input.ip, buf));
        }
        self.write_parts(input, buf)?;
        if buf.total > KEY_BUF {
            let mut hasher = HashSink(seed.build_hasher());
            self.write_parts(input, &mut hasher)?;
            let h = hasher.0.finish();
            buf.reset();
            let _ = write!(FmtSink(buf), "h:{h:016x}");
        }
        Some(buf.bytes())
    }

    fn write_parts<S: Sink>(&self, input: &KeyInput<'_>, key: &mut S) -> Option<()> {
        for part in &self.parts {
            match part {
                Part::Literal(s) => key.push(s.as_bytes()),
                Part::Ip => push_ip(key, input.ip),
                Part::Header(name) => key.push(present(input.headers, name)?.as_bytes()),
                Part::ApiKey => key.push(input.api_key?.as_bytes()),
                Part::Claim(name) => match input.claims?.get(name)? {
                    Value::String(s) if !s.is_empty() => key.push(s.as_bytes()),
                    Value::Number(n) => {
                        let _ = write!(FmtSink(key), "{n}");
                    }
                    Value::Bool(b) => key.push(if *b { b"true" } else { b"false" }),
                    _ => return None,
                },
                Part::Body(name) => {
                    let unread;
                    let field = match input.fields.iter().find(|(n, _)| *n == name.as_str()) {
                        Some((_, field)) => field,
                        None => {
                            let content_type = super::body::content_type(input.headers).ok()?;
                            unread = super::body::field(input.body?, content_type, name);
                            &unread
                        }
                    };
                    match field {
                        super::body::Field::Value(v) if !v.trim().is_empty() => {
                            super::body::push_normalised(v, |b| key.push(b));
                        }
                        // Ambiguous: refused before any key is built.
                        _ => return None,
                    }
                }
                Part::Route => key.push(input.route.as_bytes()),
                Part::Method => {
                    for b in input.method.bytes() {
                        key.push(&[b.to_ascii_uppercase()]);
                    }
                }
                Part::Path => {
                    let end = input
                        .path
                        .bytes()
                        .position(|b| b == b'?')
                        .unwrap_or(input.path.len());
                    key.push(input.path.as_bytes().get(..end).unwrap_or_default());
                }
            }
        }
        Some(())
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
            api_key: present(headers, "x-api-key"),
            headers,
            claims,
            route: "login",
            body: None,
            fields: &[],
        }
    }

    fn key(template: &str, input: &KeyInput<'_>) -> Option<String> {
        let seed = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let t = KeyTemplate::parse(template, "x-api-key").unwrap_or_else(|e| panic!("{e}"));
        let mut buf = KeyBuf::default();
        t.build(input, &seed, &mut buf)
            .map(|k| String::from_utf8_lossy(k).into_owned())
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
    fn ipv4_keys_are_dotted_decimal() {
        let seed = ahash::RandomState::with_seeds(1, 2, 3, 4);
        let t = KeyTemplate::parse("ip", "x-api-key").unwrap_or_else(|e| panic!("{e}"));
        let mut buf = KeyBuf::default();
        for o in 0..=255u8 {
            for v4 in [
                std::net::Ipv4Addr::new(o, 0, 255, 9),
                std::net::Ipv4Addr::new(100, o, 10, 99),
                std::net::Ipv4Addr::new(1, 22, o, 255),
                std::net::Ipv4Addr::new(255, 255, 255, o),
            ] {
                let i = KeyInput {
                    ip: Some(IpAddr::V4(v4)),
                    ..input(&[], None)
                };
                let k = t.build(&i, &seed, &mut buf).map(|k| k.to_vec());
                assert_eq!(k.as_deref(), Some(v4.to_string().as_bytes()), "{v4}");
            }
        }
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
