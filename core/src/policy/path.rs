//! The one path the engine matches and keys on, normalised once per request the
//! way routers normalise it, so that no spelling of a path reaches a handler while
//! dodging the handler's rule:
//!
//! - an absolute-form target (`http://host/auth/login`, which Node, Express and
//!   Fastify route by its path) is cut to its path;
//! - the query string and fragment are dropped;
//! - the path is percent-decoded once, `%2F` included (Starlette routes
//!   `/auth%2Flogin` to `/auth/login`); invalid escapes stay as they are and
//!   invalid UTF-8 becomes U+FFFD;
//! - empty segments, `.` and `..` are resolved (`//a/./b/../c` is `/a/c`), as
//!   nginx and every client do;
//! - with `case_sensitive_paths = false` (the default: Express routes
//!   case-insensitively), ASCII letters are lower-cased.
//!
//! The result starts with `/` and has no trailing `/` (the root is `/`). Where a
//! framework is stricter than this (Fastify and Starlette are case-sensitive and
//! do not decode `%2F` into a separator), a rule matches a spelling the framework
//! would answer with 404: an extra charge on a request that reaches no handler,
//! never a handler reached without its rule.
//!
//! The common path (`/api/users/42`, also with a query string) is already
//! normal and is borrowed: no allocation.

use std::borrow::Cow;

use super::matcher::Segments;

/// What a byte is to [`split_if_normal`]: most are nothing to it.
const ORDINARY: u8 = 0;
const SLASH: u8 = 1;
const DOT: u8 = 2;
const UPPER: u8 = 3;
/// `%`, `?`, `#`: the path needs the slow way.
const STOP: u8 = 4;

/// Every byte's class, one load per byte instead of a chain of compares
/// (callgrind: `split_if_normal` of `/api/items` 254 -> 198 instructions).
static CLASS: [u8; 256] = {
    let mut table = [ORDINARY; 256];
    let mut b = 0;
    while b < 256 {
        #[allow(clippy::indexing_slicing)] // b < 256, at compile time
        {
            table[b] = match b as u8 {
                b'/' => SLASH,
                b'.' => DOT,
                b'A'..=b'Z' => UPPER,
                b'%' | b'?' | b'#' => STOP,
                _ => ORDINARY,
            };
        }
        b += 1;
    }
    table
};

/// Whether `path` is already what [`normalize`] would return, its segments
/// pushed to `segments` on the way (cleared by the caller when it is not). One
/// pass over the bytes (the common path of every request) for both.
fn split_if_normal<'a>(path: &'a str, case_insensitive: bool, segments: &mut Segments<'a>) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    if bytes.len() > 1 && bytes.last() == Some(&b'/') {
        return false;
    }
    // Where the segment being read starts, and whether it is all dots so far.
    let (mut start, mut dots) = (1usize, true);
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        match CLASS.get(usize::from(b)).copied().unwrap_or(STOP) {
            ORDINARY => dots = false,
            DOT => {}
            SLASH => {
                // An empty (`//`), `.` or `..` segment before this `/`.
                if dots && i - start <= 2 {
                    return false;
                }
                if let Some(segment) = path.get(start..i) {
                    segments.push(segment);
                }
                (start, dots) = (i + 1, true);
            }
            UPPER if !case_insensitive => dots = false,
            _ => return false,
        }
    }
    // The last segment: `.` or `..` at the end; empty only for `/`.
    let last = bytes.len() - start;
    if dots && (1..=2).contains(&last) {
        return false;
    }
    if let Some(segment) = path.get(start..).filter(|s| !s.is_empty()) {
        segments.push(segment);
    }
    true
}

/// Cuts an absolute-form target (`scheme://authority/path`) to its path.
fn strip_absolute_form(target: &str) -> &str {
    if target.starts_with('/') {
        return target;
    }
    let Some(scheme_end) = target.find("://") else {
        return target;
    };
    let scheme = target.get(..scheme_end).unwrap_or_default();
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return target;
    }
    let rest = target.get(scheme_end + 3..).unwrap_or_default();
    match rest.find(['/', '?', '#']) {
        Some(i) => rest.get(i..).unwrap_or_default(),
        None => "/",
    }
}

/// Percent-decodes `text` once (invalid escapes kept as they are).
fn percent_decode(text: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy()
}

/// The normalised path of a request target (see the module docs).
pub(crate) fn normalize(target: &str, case_insensitive: bool) -> Cow<'_, str> {
    normalize_split(target, case_insensitive, &mut Segments::new())
}

/// [`normalize`], and when the path comes back borrowed (already normal: the
/// usual request) its [`segments`](super::matcher::segments) in `segments`,
/// found in the same pass; `segments` is left empty when it comes back owned.
pub(crate) fn normalize_split<'a>(
    target: &'a str,
    case_insensitive: bool,
    segments: &mut Segments<'a>,
) -> Cow<'a, str> {
    if split_if_normal(target, case_insensitive, segments) {
        return Cow::Borrowed(target);
    }
    segments.clear();
    let target = strip_absolute_form(target);
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let raw = target.get(..end).unwrap_or_default();
    // The common case with a query (`/items?page=2`): the path before it is
    // already normal, and borrowed.
    if split_if_normal(raw, case_insensitive, segments) {
        return Cow::Borrowed(raw);
    }
    segments.clear();
    Cow::Owned(rebuild(raw, case_insensitive))
}

/// The normal form of a path without its query, rebuilt: decoded once, its
/// segments resolved, lower-cased if `case_insensitive`. The slow way, and
/// the reference the one-pass check is tested against.
fn rebuild(raw: &str, case_insensitive: bool) -> String {
    let decoded = percent_decode(raw);
    let mut kept: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    if case_insensitive {
        out.make_ascii_lowercase();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p, true).into_owned()
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for p in ["/", "/api/users/42", "/a-b_c.d/e~f"] {
            assert!(matches!(normalize(p, true), Cow::Borrowed(_)), "{p}");
        }
        assert!(matches!(normalize("/API", false), Cow::Borrowed(_)));
        assert!(matches!(
            normalize("/api/items?page=2&q=%41#top", true),
            Cow::Borrowed("/api/items")
        ));
        assert!(matches!(
            normalize("http://h/api/items?x", true),
            Cow::Borrowed("/api/items")
        ));
        assert!(matches!(normalize("/API", true), Cow::Owned(_)));
    }

    #[test]
    fn what_routers_normalise() {
        assert_eq!(n("/auth/login?next=/x"), "/auth/login");
        assert_eq!(n("/auth/login#frag"), "/auth/login");
        assert_eq!(n("/auth%2Flogin"), "/auth/login");
        assert_eq!(n("/auth%2flogin"), "/auth/login");
        assert_eq!(n("/auth/%6cogin"), "/auth/login");
        assert_eq!(n("/AUTH/Login"), "/auth/login");
        assert_eq!(n("//auth//login/"), "/auth/login");
        assert_eq!(n("/api/../auth/./login"), "/auth/login");
        assert_eq!(n("/../../auth/login"), "/auth/login");
        assert_eq!(n("http://host:8080/auth/login?x=1"), "/auth/login");
        assert_eq!(n("HTTPS://h/Auth/Login"), "/auth/login");
        assert_eq!(n("http://host"), "/");
        assert_eq!(n("http://host?x"), "/");
        assert_eq!(n(""), "/");
        assert_eq!(n("?x=1"), "/");
        assert_eq!(n("*"), "/*");
        assert_eq!(n("auth/login"), "/auth/login");
        assert_eq!(n("/a%zz/%"), "/a%zz/%");
        assert_eq!(n("/%ff"), "/\u{fffd}");
        assert_eq!(normalize("/Auth/Login/", false), "/Auth/Login");
    }

    #[test]
    fn is_normal_agrees_with_normalize() {
        for p in [
            "/",
            "/a",
            "/a/b",
            "//",
            "/a//b",
            "/.",
            "/..",
            "/a/.",
            "/a/..",
            "/./a",
            "/../a",
            "/a/./b",
            "/a/../b",
            "/.a",
            "/..a",
            "/a.",
            "/...",
            "/a/.../b",
            "/a/",
            "/A",
            "a",
            "",
            "/a?b",
            "/a#b",
            "/a%20",
            "/.well-known/x",
        ] {
            let normal = normalize(p, true);
            let mut split = Segments::new();
            let is_normal = split_if_normal(p, true, &mut split);
            assert_eq!(is_normal, normal == p, "{p:?} -> {normal:?}");
            if is_normal {
                let want = crate::policy::matcher::segments(p);
                assert_eq!(split, want, "{p:?}");
            }
            let mut split = Segments::new();
            let both = normalize_split(p, true, &mut split);
            assert_eq!(both, normal, "{p:?}");
            if let Cow::Borrowed(b) = both {
                assert_eq!(split, crate::policy::matcher::segments(b), "{p:?}");
            } else {
                assert!(split.is_empty(), "{p:?}");
            }
        }
    }

    proptest::proptest! {
        /// The one-pass check agrees with the slow way on any spelling, in
        /// both case modes, and splits what it takes as `segments` does.
        #[test]
        fn the_fast_check_agrees_with_the_slow_way(
            chars in proptest::collection::vec(
                proptest::sample::select(vec!['/', '/', '.', 'a', 'A', 'z', '%', '2', 'F', '?', '#', 'é', '-']),
                0..12,
            ),
            case_insensitive in proptest::bool::ANY,
        ) {
            let p: String = chars.into_iter().collect();
            // The slow way alone (`normalize` itself tries the fast check first).
            let normal = rebuild(p.split(['?', '#']).next().unwrap_or_default(), case_insensitive);
            let mut split = Segments::new();
            let is_normal = split_if_normal(&p, case_insensitive, &mut split);
            // It never takes a path that is not normal; it sends every path
            // with `%`, `?` or `#` the slow way (`/%` is normal, but rare).
            if is_normal {
                proptest::prop_assert_eq!(&normal, &p);
                proptest::prop_assert_eq!(split, crate::policy::matcher::segments(&p));
            } else if !p.contains(['%', '?', '#']) {
                proptest::prop_assert_ne!(&normal, &p);
            }
        }
    }

    #[test]
    fn decoding_happens_once() {
        assert_eq!(n("/auth%252Flogin"), "/auth%2flogin");
    }
}
