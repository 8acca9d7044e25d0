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

    /// Whether a request with `method` can match, whatever its path.
    pub(crate) fn takes_method(&self, method: &str) -> bool {
        self.0.iter().any(|p| {
            p.methods.is_empty() || p.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        })
    }
}

/// Which rules a request can meet, by its path's first segment, worked out
/// once at load: a request runs the matchers of those rules only, and none
/// where the index alone decides (`/**`, or `/api/**` for a path under
/// `/api`, any method). The example policy's API request met 6 matchers of 7
/// rules (429 of its 4,564 instructions, callgrind); it meets none now.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteIndex {
    /// First literal segment (sorted) -> the rules a path starting with it can meet.
    by_first: Vec<(Box<str>, Box<[Candidate]>)>,
    /// The rules a path can meet whose first segment is none of those.
    other: Box<[Candidate]>,
    /// The rules the root path (`/`, no segment) can meet.
    root: Box<[Candidate]>,
}

/// A rule a request may meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Its index in the policy's rules.
    pub rule: usize,
    /// Whether it is met whatever the method and the rest of the path: its
    /// matcher need not run.
    pub certain: bool,
}

/// How a pattern meets paths of one kind (by their first segment).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Meets {
    Never,
    Maybe,
    Always,
}

impl Pattern {
    /// How this pattern meets paths whose first segment is `first` (`None`:
    /// the root path; `Some(None)`: a segment no pattern names).
    fn meets(&self, first: Option<Option<&str>>) -> Meets {
        let any_method = self.methods.is_empty();
        let all = |rest_is_any: bool| {
            if any_method && rest_is_any {
                Meets::Always
            } else {
                Meets::Maybe
            }
        };
        match (self.segments.as_slice(), first) {
            ([Segment::Rest], _) => all(true),
            ([Segment::Rest, ..], _) => Meets::Maybe, // refused by `parse`
            ([], None) => all(true),
            ([], Some(_)) | (_, None) => Meets::Never,
            ([Segment::Literal(lit), ..], Some(f)) if f != Some(lit.as_str()) => Meets::Never,
            ([Segment::One | Segment::Literal(_), rest @ ..], Some(_)) => {
                all(matches!(rest, [Segment::Rest]))
            }
        }
    }
}

impl RouteIndex {
    /// The index of `rules`' matchers, in rule order.
    pub(crate) fn new(rules: &[&Matcher]) -> Self {
        let list = |first: Option<Option<&str>>| -> Box<[Candidate]> {
            rules
                .iter()
                .enumerate()
                .filter_map(|(rule, m)| {
                    // A rule meets what any of its patterns meets.
                    match m.0.iter().map(|p| p.meets(first)).max() {
                        Some(Meets::Always) => Some(Candidate {
                            rule,
                            certain: true,
                        }),
                        Some(Meets::Maybe) => Some(Candidate {
                            rule,
                            certain: false,
                        }),
                        Some(Meets::Never) | None => None,
                    }
                })
                .collect()
        };
        let mut firsts: Vec<&str> = rules
            .iter()
            .flat_map(|m| m.0.iter())
            .filter_map(|p| match p.segments.first() {
                Some(Segment::Literal(lit)) => Some(lit.as_str()),
                _ => None,
            })
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        RouteIndex {
            by_first: firsts
                .iter()
                .map(|f| (Box::from(*f), list(Some(Some(f)))))
                .collect(),
            other: list(Some(None)),
            root: list(None),
        }
    }

    /// Whether every request meets the same rules whatever its path and
    /// method (every rule's patterns `/**`, or no rule): routing it needs no
    /// look at its path.
    pub(crate) fn path_blind(&self) -> bool {
        self.by_first.is_empty() && self.other == self.root && self.root.iter().all(|c| c.certain)
    }

    /// The rules a request whose normalised path is `segments` may meet, in
    /// rule order: every rule it meets is among them.
    #[inline]
    pub(crate) fn candidates(&self, segments: &[&str]) -> &[Candidate] {
        let Some(&first) = segments.first() else {
            return &self.root;
        };
        // A few names (the usual policy) by equality, which compares lengths
        // before bytes; many by halving.
        let found = if self.by_first.len() <= 8 {
            self.by_first.iter().find(|(f, _)| **f == *first)
        } else {
            self.by_first
                .binary_search_by(|(f, _)| (**f).cmp(first))
                .ok()
                .and_then(|i| self.by_first.get(i))
        };
        found.map_or(&self.other, |(_, c)| c)
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
    fn an_index_of_catch_all_rules_is_path_blind() {
        let blind = |patterns: &[&[&str]]| {
            let matchers: Vec<Matcher> = patterns
                .iter()
                .map(|ps| {
                    Matcher(
                        ps.iter()
                            .map(|p| parse(p, true).unwrap_or_else(|e| panic!("{e}")))
                            .collect(),
                    )
                })
                .collect();
            RouteIndex::new(&matchers.iter().collect::<Vec<_>>()).path_blind()
        };
        assert!(blind(&[]));
        assert!(blind(&[&["/**"]]));
        assert!(blind(&[&["/**"], &["GET /**", "/**"]]));
        assert!(!blind(&[&["/**"], &["GET /**"]]), "a method narrows it");
        assert!(!blind(&[&["/**"], &["/api/**"]]));
        assert!(!blind(&[&["/*/**"]]), "not the root");
        assert!(!blind(&[&["/{tenant}/**"]]));
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

    /// A pattern from a small vocabulary: literals that collide, wildcards
    /// anywhere `parse` allows them, method lists or none.
    fn pattern_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let seg = prop::sample::select(vec!["a", "b", "API", "*", "{id}"]);
        (
            prop::sample::select(vec!["", "GET ", "POST ", "GET,PUT ", "* "]),
            prop::collection::vec(seg, 0..3),
            any::<bool>(),
        )
            .prop_map(|(methods, segs, rest)| {
                let mut path: String = segs.iter().map(|s| format!("/{s}")).collect();
                if rest {
                    path.push_str("/**");
                }
                if path.is_empty() {
                    path.push('/');
                }
                format!("{methods}{path}")
            })
    }

    proptest::proptest! {
        /// The index never hides a rule a request meets, and says "certain"
        /// only of rules the request meets.
        #[test]
        fn route_index_agrees_with_the_matchers(
            rules in proptest::collection::vec(proptest::collection::vec(pattern_text(), 1..3), 0..6),
            method in proptest::sample::select(vec!["GET", "HEAD", "POST", "PUT", "DELETE"]),
            path in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "api", "x"]), 0..4),
        ) {
            let matchers: Vec<Matcher> = rules
                .iter()
                .map(|r| Matcher(r.iter().map(|p| parse(p, true).unwrap_or_else(|e| panic!("{p}: {e}"))).collect()))
                .collect();
            let refs: Vec<&Matcher> = matchers.iter().collect();
            let index = RouteIndex::new(&refs);
            let text: String = path.iter().map(|s| format!("/{s}")).collect();
            let segs = segments(&text);
            let met: Vec<usize> = (0..matchers.len())
                .filter(|&i| matchers[i].matches(method, &segs))
                .collect();
            let candidates = index.candidates(&segs);
            let ranked: Vec<usize> = candidates.iter().map(|c| c.rule).collect();
            proptest::prop_assert!(ranked.windows(2).all(|w| w[0] < w[1]), "rule order: {:?}", ranked);
            let found: Vec<usize> = candidates
                .iter()
                .filter(|c| c.certain || matchers[c.rule].matches(method, &segs))
                .map(|c| c.rule)
                .collect();
            proptest::prop_assert_eq!(&found, &met, "{:?} {} {}", rules, method, text);
            for c in candidates.iter().filter(|c| c.certain) {
                proptest::prop_assert!(matchers[c.rule].matches(method, &segs), "{:?}", rules[c.rule]);
            }
        }
    }

    #[test]
    fn route_index_with_many_first_segments() {
        // Past 8 names the lookup halves a sorted list: every name still finds its rule.
        let matchers: Vec<Matcher> = (0..40)
            .map(|i| {
                Matcher(vec![
                    parse(&format!("/s{i}/**"), true).unwrap_or_else(|e| panic!("{e}")),
                ])
            })
            .collect();
        let refs: Vec<&Matcher> = matchers.iter().collect();
        let index = RouteIndex::new(&refs);
        for i in 0..40 {
            let path = format!("/s{i}/x");
            let got: Vec<usize> = index
                .candidates(&segments(&path))
                .iter()
                .map(|c| c.rule)
                .collect();
            assert_eq!(got, [i], "{path}");
        }
        assert!(index.candidates(&segments("/s40")).is_empty());
    }

    #[test]
    fn route_index_of_the_example_policy() {
        let rules = [
            "POST /auth/login",
            "POST /auth/login",
            "POST /oauth/token",
            "/api/**",
            "/api/**",
            "/api/**",
            "/**",
        ];
        let matchers: Vec<Matcher> = rules
            .iter()
            .map(|p| Matcher(vec![parse(p, true).unwrap_or_else(|e| panic!("{e}"))]))
            .collect();
        let refs: Vec<&Matcher> = matchers.iter().collect();
        let index = RouteIndex::new(&refs);
        let of = |path: &str| -> Vec<(usize, bool)> {
            index
                .candidates(&segments(path))
                .iter()
                .map(|c| (c.rule, c.certain))
                .collect()
        };
        assert!(!index.path_blind());
        let api = [(3, true), (4, true), (5, true), (6, true)];
        assert_eq!(of("/api/items"), api);
        assert_eq!(of("/api"), api);
        assert_eq!(of("/auth/login"), [(0, false), (1, false), (6, true)]);
        assert_eq!(of("/oauth/token"), [(2, false), (6, true)]);
        assert_eq!(of("/health"), [(6, true)]);
        assert_eq!(of("/"), [(6, true)]);
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
