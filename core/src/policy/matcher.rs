//! Route matching: `"POST /auth/login"`, `"/api/**"`, `"GET,PUT /users/{id}"`.
//!
//! A pattern is an optional comma-separated method list (`*` or none = any), then a
//! path pattern of `/`-separated segments: a literal, `*` or `{name}` (exactly one
//! segment), or `**` (any number of segments, last only). Matching ignores the
//! query string and empty segments (`//a` is `/a`) and percent-decodes each path
//! segment first, so `/auth/%6cogin` cannot slip past a rule for `/auth/login`.
//! Literals match case-sensitively, methods case-insensitively.

/// One path segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Rest,
}

/// One `METHODS /path` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// Upper-case methods; empty = any.
    methods: Vec<String>,
    segments: Vec<Segment>,
}

/// Why a pattern is unusable.
pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
    let text = text.trim();
    let (methods, path) = match text.split_once(char::is_whitespace) {
        Some((m, p)) => (m, p.trim()),
        None if text.starts_with('/') => ("*", text),
        None => {
            return Err(format!(
                "{text:?} has no path (expected e.g. \"POST /auth/login\" or \"/api/**\")"
            ));
        }
    };
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with '/'"));
    }
    let mut list = Vec::new();
    for m in methods.split(',').map(str::trim) {
        if m == "*" {
            list.clear();
            break;
        }
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!("method {m:?} is not a word like GET or POST"));
        }
        list.push(m.to_ascii_uppercase());
    }
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        segments.push(match *part {
            "**" if i + 1 == parts.len() => Segment::Rest,
            "**" => return Err("'**' may only be the last segment".into()),
            "*" => Segment::One,
            p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => Segment::One,
            p if p.starts_with(':') && p.len() > 1 => Segment::One,
            p if p.contains(['*', '{', '}']) => {
                return Err(format!("segment {p:?} mixes wildcards with text"));
            }
            p => Segment::Literal(decode(p).into_owned()),
        });
    }
    Ok(Pattern {
        methods: list,
        segments,
    })
}

/// Percent-decodes a segment; invalid escapes stay as they are. Borrows when there
/// is nothing to decode (the usual case: no allocation).
fn decode(segment: &str) -> std::borrow::Cow<'_, str> {
    if !segment.contains('%') {
        return segment.into();
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| bytes.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

impl Pattern {
    /// Whether a request matches.
    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        let end = path
            .bytes()
            .position(|b| b == b'?' || b == b'#')
            .unwrap_or(path.len());
        let mut parts = path
            .get(..end)
            .unwrap_or_default()
            .split('/')
            .filter(|s| !s.is_empty());
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if decode(p) == lit.as_str() => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

/// Any of several patterns.
#[derive(Debug, Clone)]
pub(crate) struct Matcher(pub Vec<Pattern>);

impl Matcher {
    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        self.0.iter().any(|p| p.matches(method, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, method: &str, path: &str) -> bool {
        parse(pattern)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(method, path)
    }

    #[test]
    fn methods_and_literals() {
        assert!(m("POST /auth/login", "POST", "/auth/login"));
        assert!(m("POST /auth/login", "post", "/auth/login?next=/"));
        assert!(!m("POST /auth/login", "GET", "/auth/login"));
        assert!(!m("POST /auth/login", "POST", "/auth/login/x"));
        assert!(!m("POST /auth/login", "POST", "/auth"));
        assert!(m("GET,PUT /a", "PUT", "/a"));
        assert!(m("* /a", "DELETE", "/a"));
        assert!(m("/a", "PATCH", "/a/"));
    }

    #[test]
    fn wildcards() {
        assert!(m("/api/**", "GET", "/api"));
        assert!(m("/api/**", "GET", "/api/v1/users/7"));
        assert!(!m("/api/**", "GET", "/apix"));
        assert!(m("/users/{id}/posts", "GET", "/users/42/posts"));
        assert!(m("/users/:id", "GET", "/users/42"));
        assert!(!m("/users/*", "GET", "/users"));
        assert!(m("/**", "GET", "/"));
    }

    #[test]
    fn evasions_do_not_bypass() {
        assert!(m("POST /auth/login", "POST", "//auth//login"));
        assert!(m("POST /auth/login", "POST", "/auth/%6cogin"));
        assert!(m("POST /auth/login", "POST", "/auth/login#x"));
        assert!(m("POST /a%20b", "POST", "/a%20b"));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "POST", "POST auth", "/a/**/b", "/a*b", "G3T /a", "/x{y"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
