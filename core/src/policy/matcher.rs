//! Route matching: `"POST /auth/login"`, `"/api/**"`, `"GET,PUT /users/{id}"`.
//!
//! A pattern is an optional comma-separated method list (`*` or none = any), then a
//! path pattern of `/`-separated segments: a literal, `*` or `{name}` (exactly one
//! segment), or `**` (any number of segments, last only). Patterns match the
//! request's *normalised* path (see [`super::path`]: decoded, dot segments and
//! empty segments resolved, absolute-form cut, lower-cased unless
//! `case_sensitive_paths`), so every spelling a router sends to a handler meets
//! that handler's rule. Methods match case-insensitively, and a `GET` pattern also
//! matches `HEAD`, which every framework answers with the GET handler.

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

/// Parses a pattern; literals are normalised like request paths (decoded, and
/// lower-cased when `case_insensitive`).
pub(crate) fn parse(text: &str, case_insensitive: bool) -> Result<Pattern, String> {
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
        let m = m.to_ascii_uppercase();
        if m == "GET" && !list.iter().any(|x| x == "HEAD") {
            list.push("HEAD".to_string());
        }
        list.push(m);
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
            p => {
                let slashed = format!("/{p}");
                let normal = super::path::normalize(&slashed, case_insensitive);
                let literal = normal.strip_prefix('/').unwrap_or_default();
                if literal.is_empty() || literal.contains('/') {
                    return Err(format!(
                        "segment {p:?} decodes to {literal:?}: write it as separate segments"
                    ));
                }
                Segment::Literal(literal.to_string())
            }
        });
    }
    Ok(Pattern {
        methods: list,
        segments,
    })
}

impl Pattern {
    /// Whether a request matches; `path` is already normalised.
    #[cfg(test)]
    pub(crate) fn matches(&self, method: &str, path: &str) -> bool {
        self.matches_segments(method, &segments(path))
    }

    /// Whether a request matches, its normalised path given as its
    /// [`segments`] (split once per request, not once per pattern).
    pub(crate) fn matches_segments(&self, method: &str, path: &[&str]) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        let mut parts = path.iter().copied();
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    /// Whether the pattern is a catch-all: any method, `/**`.
    pub(crate) fn is_catch_all(&self) -> bool {
        self.methods.is_empty() && matches!(self.segments.as_slice(), [Segment::Rest])
    }

    /// Whether the pattern ends in a single-segment `*` (often meant as `/**`).
    pub(crate) fn ends_in_one_star(&self) -> bool {
        matches!(self.segments.last(), Some(Segment::One))
    }
}

/// The segments of a normalised path (`/api/v1` is `["api", "v1"]`, `/` none),
/// on the stack for up to 8.
pub(crate) type Segments<'a> = smallvec::SmallVec<[&'a str; 8]>;

/// Splits a normalised path into its segments.
pub(crate) fn segments(path: &str) -> Segments<'_> {
    // By bytes: `split('/')` goes through the general pattern searcher, several
    // times the cost for a short path.
    let mut out = Segments::new();
    let mut start = 0;
    for (i, &b) in path.as_bytes().iter().enumerate() {
        if b == b'/' {
            if i > start
                && let Some(segment) = path.get(start..i)
            {
                out.push(segment);
            }
            start = i + 1;
        }
    }
    if let Some(last) = path.get(start..).filter(|s| !s.is_empty()) {
        out.push(last);
    }
    out
}

/// Any of several patterns.
#[derive(Debug, Clone)]
pub(crate) struct Matcher(pub Vec<Pattern>);

impl Matcher {
    /// Whether a request matches; `path` is the normalised path's [`segments`].
    pub(crate) fn matches(&self, method: &str, path: &[&str]) -> bool {
        self.0.iter().any(|p| p.matches_segments(method, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, method: &str, path: &str) -> bool {
        parse(pattern, true)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(method, &crate::policy::path::normalize(path, true))
    }

    #[test]
    fn segments_are_the_non_empty_pieces_between_slashes() {
        for p in [
            "",
            "/",
            "//",
            "/a",
            "a",
            "/api/items",
            "/a//b/",
            "a/b",
            "/é/ü//x",
            "///a///",
        ] {
            let want: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            assert_eq!(segments(p).to_vec(), want, "{p:?}");
        }
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
    fn methods_by_name_in_any_case() {
        let p = "GET,PROPFIND /x";
        for yes in ["GET", "get", "HEAD", "head", "PROPFIND", "propfind"] {
            assert!(m(p, yes, "/x"), "{yes}");
        }
        for no in ["POST", "put", "TRACE", "M-SEARCH", "PROPPATCH", "GETX"] {
            assert!(!m(p, no, "/x"), "{no}");
        }
        assert!(m("/x", "M-SEARCH", "/x"));
        assert!(!m("PROPFIND /x", "GET", "/x"));
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
        assert!(m("POST /auth/login", "POST", "/auth%2Flogin"));
        assert!(m("POST /auth/login", "POST", "/AUTH/LOGIN"));
        assert!(m("POST /auth/login", "POST", "http://h/auth/login"));
        assert!(m("POST /auth/login", "POST", "/x/../auth/login"));
    }

    #[test]
    fn head_falls_under_get() {
        assert!(m("GET /a", "HEAD", "/a"));
        assert!(m("GET,POST /a", "head", "/a"));
        assert!(!m("POST /a", "HEAD", "/a"));
    }

    #[test]
    fn case_sensitive_when_asked() {
        let p = parse("/Api/**", false).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.matches("GET", "/Api/x"));
        assert!(!p.matches("GET", "/api/x"));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "",
            "POST",
            "POST auth",
            "/a/**/b",
            "/a*b",
            "G3T /a",
            "/x{y",
            "/a%2Fb",
            "/..",
        ] {
            assert!(parse(bad, true).is_err(), "{bad:?}");
        }
    }
}
