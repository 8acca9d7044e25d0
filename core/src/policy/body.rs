//! Keys from a field of the request body (`key = "body:username"`): the
//! per-username limit of a login form, which is in the body, not a header.
//!
//! - A form (`application/x-www-form-urlencoded`, or `multipart/form-data`:
//!   see `multipart_field`) is read as a form; a body that is a JSON object
//!   is read as JSON, whatever its type says (an app may parse JSON it was
//!   sent as `text/plain`, or as a form: `json.loads(request.body)`; a field
//!   it reads must not slip by the rule). A form that is also a JSON object
//!   must give the same name both ways. Only top-level fields; a string or a
//!   number.
//! - The `Content-Type` is read strictly (`kind`, `params`): one the
//!   frameworks could read otherwise (a parameter given twice or the RFC 2231
//!   way, a comment, an unclosed quote) is refused, as is a JSON object this
//!   cannot read whole (Python reads `NaN` and `Infinity`).
//! - The value is trimmed and lower-cased (Unicode), as logins compare names:
//!   `Alice`, ` alice` and `ALICE` are one key, not three fresh quotas.
//! - A field given twice (`username=a&username=b`, or twice in one JSON
//!   object) is ambiguous: frameworks disagree on which copy wins (Django's
//!   `request.POST` takes the last, Flask's `request.form` the first), so an
//!   attacker could key the rule on one and log in with the other. Such a
//!   request is refused (400) before any rule is charged.
//! - So is a field whose value is a list, an object or a boolean: Express's
//!   body parsers make `username=a&username=b` the list `["a", "b"]`, and
//!   `{"username": {"$gt": ""}}` is the shape of a NoSQL injection. Neither is
//!   a name the rule could count, and skipping the rule for them would let an
//!   attacker through it unlimited by sending that shape.
//! - A body in an encoding an app's parser reads and this does not is
//!   refused too: JSON in UTF-16 or UTF-32 (Python's `json.loads` reads
//!   them), a form in a declared charset other than UTF-8 (Django decodes it
//!   so). A UTF-8 BOM before JSON is skipped, as `json.loads` skips it.
//! - No body, a body that is neither a form nor a JSON object, no such field,
//!   or `null`: the rule has no key for the request (skipped, or 401 with
//!   `anonymous = "deny"`).

use std::borrow::Cow;
use std::fmt;

use arrayvec::ArrayVec;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use smallvec::SmallVec;

/// What a body holds for a field.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Field<'a> {
    /// No body, not a form or a JSON object, no such field, or `null`.
    Missing,
    /// The value, as sent (not yet trimmed or lower-cased).
    Value(Cow<'a, str>),
    /// Named more than once, or a list, an object or a boolean: refused.
    Ambiguous,
}

/// The fields that the rules a request meets key on, each read from the body
/// once (by [`Policy::read_body_fields`](super::Policy::read_body_fields)),
/// with the name it was read for. Rules usually key on one.
pub(crate) type ReadFields<'a> = SmallVec<[(&'a str, Field<'a>); 1]>;

/// The request's `Content-Type`, if it has one, or `Err` where the app could
/// read the body otherwise than the engine would: a `Content-Type` given
/// twice (servers pass the app the first, the last or both joined), or a
/// `Content-Encoding` other than `identity` (Express's body parsers inflate a
/// gzip or deflate body: a proxy in front of one must not count a name it
/// cannot read).
pub(crate) fn content_type<'h>(headers: &[(&str, &'h str)]) -> Result<Option<&'h str>, ()> {
    let mut found = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-type") {
            if found.replace(*value).is_some() {
                return Err(());
            }
        } else if name.eq_ignore_ascii_case("content-encoding") {
            let coding = trim_ows(value);
            if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
                return Err(());
            }
        }
    }
    Ok(found)
}

/// How a body is read, from its `Content-Type`.
enum Kind<'t> {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `multipart/form-data` with this boundary (empty when it has none).
    Multipart(&'t str),
    /// Anything else, or no type: read as JSON if it is a JSON object.
    Other,
}

/// What `content_type` says of the body, read strictly (see [`params`]): a
/// type the frameworks could read otherwise is `None` (refused). A boundary
/// or charset given twice (Django, Werkzeug and python-multipart take the
/// last), in the RFC 2231 way (`boundary*=`: Django and Werkzeug decode it),
/// or a form's charset other than UTF-8 (Django and Starlette decode the
/// fields in it) could make them read other parts or other names.
fn kind(content_type: Option<&str>) -> Option<Kind<'_>> {
    let Some(t) = content_type.filter(|t| !trim_ows(t).is_empty()) else {
        return Some(Kind::Other);
    };
    let (mut boundary, mut charset, mut clear) = (None, None, true);
    let media = params(t, |k, v| {
        clear &= !k.contains('*');
        if k.eq_ignore_ascii_case("boundary") {
            clear &= boundary.replace(v).is_none();
        } else if k.eq_ignore_ascii_case("charset") {
            clear &= charset.replace(v).is_none();
        }
    })?;
    let (main, sub) = media.split_once('/')?;
    if !clear || main.is_empty() || sub.is_empty() || sub.contains('/') {
        return None;
    }
    let form = media.eq_ignore_ascii_case("application/x-www-form-urlencoded");
    let multipart = media.eq_ignore_ascii_case("multipart/form-data");
    if (form || multipart) && charset.is_some_and(|c| !is_utf8(c)) {
        return None;
    }
    Some(match (form, multipart) {
        (true, _) => Kind::Form,
        // Without a boundary it is no multipart body any parser reads: an
        // empty one finds no part.
        (_, true) => Kind::Multipart(boundary.unwrap_or_default()),
        _ => Kind::Other,
    })
}

/// The field `name` of `body`, read as its `content_type` says (see the
/// module's notes).
pub(crate) fn field<'a>(body: &'a [u8], content_type: Option<&str>, name: &str) -> Field<'a> {
    let Some(kind) = kind(content_type) else {
        return Field::Ambiguous;
    };
    // Apps read JSON whatever the type says (`json.loads(request.body)`,
    // Flask's `get_json(force=True)`): a JSON object sent as a form is read
    // as JSON too, and the two readings must agree.
    let as_json = json_field(body, name);
    let as_typed = match kind {
        Kind::Other => return as_json,
        Kind::Form => form_field(body, name),
        Kind::Multipart(boundary) => multipart_field(body, boundary, name),
    };
    match (as_typed, as_json) {
        (typed, Field::Missing) => typed,
        (Field::Missing, json) => json,
        (Field::Value(a), Field::Value(b)) if a == b => Field::Value(a),
        _ => Field::Ambiguous,
    }
}

/// The field `name` of a body that is a JSON object. Python's `json.loads`
/// skips a UTF-8 BOM (skipped here too), reads UTF-16 and UTF-32 (told by
/// their BOMs, or by NULs in the first bytes, as its `detect_encoding`
/// does), and reads `NaN` and `Infinity`, which serde_json does not. A
/// login so sent reached a Python handler while this read nothing and
/// skipped the rule: the wide encodings, and an object this cannot read
/// whole, are refused.
fn json_field<'a>(body: &'a [u8], name: &str) -> Field<'a> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if is_wide_unicode(body) {
        return Field::Ambiguous;
    }
    // JSON's whitespace only, as `json.loads` skips it.
    let object = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{');
    if !object {
        return Field::Missing;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match de.deserialize_map(Seek { name }) {
        Ok(found) if de.end().is_ok() => found,
        _ => Field::Ambiguous,
    }
}

/// `s` without optional whitespace (RFC 9110's OWS: spaces and tabs) at its
/// start. Byte by byte: a `char` pattern decodes UTF-8 (a JSON login's check
/// spent ~20 instructions per byte of its type so).
fn trim_ows_start(s: &str) -> &str {
    let start = s.bytes().position(|b| b != b' ' && b != b'\t');
    s.get(start.unwrap_or(s.len())..).unwrap_or_default()
}

/// `s` without optional whitespace at either end (see [`trim_ows_start`]).
fn trim_ows(s: &str) -> &str {
    let s = trim_ows_start(s);
    let end = s.bytes().rposition(|b| b != b' ' && b != b'\t');
    s.get(..end.map_or(0, |e| e + 1)).unwrap_or_default()
}

/// Whether `b` may be in a token (RFC 9110's `tchar`): header parameters
/// here, and the request's method (`decide`).
pub(super) fn is_tchar(b: u8) -> bool {
    TCHAR.get(usize::from(b)).copied().unwrap_or(false)
}

/// RFC 9110's `tchar`s, by byte. (Indexing in a constant: out of bounds
/// would fail the build, not panic.)
#[allow(clippy::indexing_slicing)]
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// Reads a header value such as a content type or a part's
/// `Content-Disposition` strictly: `first *( ";" [ param ] )`, `param` as
/// `token "=" ( token / quoted-string )`, whitespace only around the `;`s and
/// at the ends, a quoted string without a backslash. Calls `each` with every
/// parameter's name and value (unquoted) and gives `first` (tokens, a `/`
/// allowed), or `None` for anything else: comments, spaces around `=`, an
/// unclosed quote, an escape. Frameworks' parsers read such values each
/// their own way (Werkzeug reads `name="username" (x)` as `username`), and no
/// browser or HTTP client sends them.
fn params<'v>(value: &'v str, mut each: impl FnMut(&'v str, &'v str)) -> Option<&'v str> {
    let token_end = |s: &str| s.bytes().position(|b| !is_tchar(b)).unwrap_or(s.len());
    // Each split is at an ASCII byte or the first byte of a character: on a
    // character's boundary (`split_at_checked` would say `None` otherwise).
    let (first, mut rest) = value.split_at_checked(value.find(';').unwrap_or(value.len()))?;
    let first = trim_ows(first);
    if first.is_empty() || !first.bytes().all(|b| is_tchar(b) || b == b'/') {
        return None;
    }
    while let Some(after) = rest.strip_prefix(';') {
        rest = trim_ows_start(after);
        if rest.is_empty() || rest.starts_with(';') {
            continue; // an empty item: every parser skips it
        }
        let (key, after) = rest.split_at_checked(token_end(rest))?;
        let after = after.strip_prefix('=').filter(|_| !key.is_empty())?;
        let (v, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let close = quoted.find(['"', '\\'])?;
                (
                    quoted.get(..close)?,
                    quoted.get(close..)?.strip_prefix('"')?,
                )
            }
            // A token: `name=` with no value at all is none.
            None => after
                .split_at_checked(token_end(after))
                .filter(|(v, _)| !v.is_empty())?,
        };
        each(key, v);
        rest = trim_ows_start(after);
        if !rest.is_empty() && !rest.starts_with(';') {
            return None;
        }
    }
    Some(first)
}

/// The text field `name` of a `multipart/form-data` body (what the browser
/// sends for `new FormData(form)`, and Django, Flask and Starlette read into
/// their forms, as they read a URL-encoded one). Read the way those parsers
/// read it where they agree: parts between `--boundary` lines, a part's
/// headers up to the first empty line, its name from `Content-Disposition`
/// read strictly by [`params`] (`name="..."` or a bare token; parameter names
/// in any case), its value the part's bytes as UTF-8. Where they could read a
/// name or value this does not, the body is ambiguous (refused): each case is
/// named where it is refused below (delimiters inside lines, escapes,
/// comments, RFC 2231 names, folded or repeated headers, files, transfer
/// encodings, other charsets, a field given twice).
fn multipart_field<'a>(body: &'a [u8], boundary: &str, name: &str) -> Field<'a> {
    if boundary.is_empty() {
        return Field::Missing;
    }
    // The delimiter that ends a part, `\r\n--boundary`, on the stack; the one
    // that starts a line, without the line end. RFC 2046 bounds a boundary
    // to 70 characters (Django refuses longer ones; a longer one would also
    // make each search through a 64 KiB body cost its length again): one
    // that does not fit is refused.
    let mut closing = ArrayVec::<u8, 74>::new();
    if closing.try_extend_from_slice(b"\r\n--").is_err()
        || closing.try_extend_from_slice(boundary.as_bytes()).is_err()
    {
        return Field::Ambiguous;
    }
    let delimiter = closing.get(2..).unwrap_or_default();
    // Django reads the text before the first delimiter (all of a body with
    // none) as a part, and a part from what follows the last; the others
    // skip both, and python-multipart fails on the first. Browsers send
    // neither: anything but a line end after the last is refused (below), as
    // is anything before the first.
    if !body.starts_with(delimiter) {
        return if body.is_empty() {
            Field::Missing
        } else {
            Field::Ambiguous
        };
    }
    // Parsers disagree on a delimiter inside a line, and on a line that only
    // starts with one (`--XyZjunk`): Django ends the part there, Werkzeug
    // and python-multipart do not. Refused, as a name one of them might read
    // and this would not. A delimiter line is the delimiter, then `--` (the
    // last) or padding (spaces, tabs) and its line end.
    let mut at = 0;
    while let Some(i) = body.get(at..).and_then(|b| find(b, delimiter)) {
        let start = at + i;
        if start > 0 && body.get(..start).is_none_or(|b| !b.ends_with(b"\r\n")) {
            return Field::Ambiguous;
        }
        at = start + delimiter.len();
        let tail = body.get(at..).unwrap_or_default();
        let padded = tail.iter().position(|b| *b != b' ' && *b != b'\t');
        let line_end = padded
            .and_then(|p| tail.get(p..))
            .is_some_and(|t| t.starts_with(b"\r\n"));
        if !tail.starts_with(b"--") && !line_end {
            return Field::Ambiguous;
        }
    }
    let mut found = Field::Missing;
    // Each part runs from the end of one delimiter line to the CRLF before
    // the next delimiter; what follows the last one (`--`) is the epilogue.
    let Some(mut rest) = body.get(delimiter.len()..) else {
        return Field::Missing;
    };
    loop {
        if let Some(epilogue) = rest.strip_prefix(b"--") {
            // The closing delimiter.
            if !matches!(epilogue, b"" | b"\r\n") {
                return Field::Ambiguous;
            }
            break;
        }
        let Some(part_start) = find(rest, b"\r\n").map(|i| i + 2) else {
            break;
        };
        let part_and_rest = rest.get(part_start..).unwrap_or_default();
        // An unterminated last part runs to the end: Django reads it as a
        // field, others fail. Its value is no name to count, nor to skip.
        let (part, unterminated) = match find(part_and_rest, &closing) {
            Some(end) => {
                rest = part_and_rest.get(end + closing.len()..).unwrap_or_default();
                (part_and_rest.get(..end).unwrap_or_default(), false)
            }
            None => {
                rest = b"--";
                (part_and_rest, true)
            }
        };
        // A part's headers end at its first empty line; a part without one,
        // or with a lone CR or LF in its headers, is read differently by
        // different parsers.
        let Some(i) = find(part, b"\r\n\r\n") else {
            return Field::Ambiguous;
        };
        let (head, value) = (
            part.get(..i).unwrap_or_default(),
            part.get(i + 4..).unwrap_or_default(),
        );
        // Headers that are no UTF-8, a lone CR or LF, a folded line (one
        // parser unfolds it, another drops it): read differently.
        let Ok(head) = std::str::from_utf8(head) else {
            return Field::Ambiguous;
        };
        if head
            .split("\r\n")
            .any(|l| l.contains(['\r', '\n']) || l.starts_with([' ', '\t']))
        {
            return Field::Ambiguous;
        }
        let mut part_name = None;
        let mut suspect = false;
        let mut dispositions = 0;
        for line in head.split("\r\n") {
            // A header's name is a token right before its colon
            // (python-multipart fails on `Content-Disposition :`, others
            // read it); a line without a colon, each parser its own way.
            let Some((header, header_value)) = line.split_once(':') else {
                return Field::Ambiguous;
            };
            if header.is_empty() || !header.bytes().all(is_tchar) {
                return Field::Ambiguous;
            }
            if header.eq_ignore_ascii_case("content-disposition") {
                dispositions += 1;
                let (mut named_twice, mut encoded) = (false, false);
                let disposition = params(header_value, |k, v| {
                    if k.contains('*') {
                        // RFC 2231's `name*=utf-8''username`: a name this
                        // does not decode, in any part.
                        encoded = true;
                    } else if k.eq_ignore_ascii_case("name") {
                        // Named twice: parsers keep one or the other.
                        named_twice |= part_name.replace(v).is_some();
                    } else if k.eq_ignore_ascii_case("filename") {
                        suspect = true;
                    }
                });
                if disposition.is_none_or(|d| d.contains('/')) || named_twice || encoded {
                    return Field::Ambiguous;
                }
            } else if header.eq_ignore_ascii_case("content-transfer-encoding") {
                suspect = true;
            } else if header.eq_ignore_ascii_case("content-type") {
                let mut charsets = 0;
                let mut utf8 = true;
                let read = params(header_value, |k, v| {
                    if k.eq_ignore_ascii_case("charset") || k.contains('*') {
                        charsets += 1;
                        utf8 &= is_utf8(v);
                    }
                });
                suspect |= read.is_none() || charsets > 1 || !utf8;
            }
        }
        if dispositions > 1 {
            return Field::Ambiguous; // which one names the part differs
        }
        if part_name != Some(name) {
            continue;
        }
        if suspect || unterminated || found != Field::Missing {
            return Field::Ambiguous;
        }
        // Bytes that are no UTF-8: frameworks replace them differently.
        let Ok(value) = std::str::from_utf8(value) else {
            return Field::Ambiguous;
        };
        found = Field::Value(Cow::Borrowed(value));
    }
    found
}

/// The first place `needle` is in `hay`: memchr's substring search, linear
/// in the body whatever the boundary (a byte-by-byte window search cost a
/// 64 KiB body of dashes ~4.5M comparisons per delimiter).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Whether a charset names UTF-8 (or ASCII, a part of it).
fn is_utf8(charset: &str) -> bool {
    ["utf-8", "utf8", "us-ascii", "ascii"]
        .iter()
        .any(|c| charset.eq_ignore_ascii_case(c))
}

/// Whether `body` is UTF-16 or UTF-32 as Python's `json.detect_encoding`
/// tells them: a BOM of either (UTF-32's little-endian BOM starts as
/// UTF-16's), or a NUL in the first two of at least four bytes (or of
/// exactly two), which JSON text in UTF-8 never has.
fn is_wide_unicode(body: &[u8]) -> bool {
    match body {
        [0xFF, 0xFE, ..] | [0xFE, 0xFF, ..] => true,
        [a, b, _, _, ..] | [a, b] => *a == 0 || *b == 0,
        _ => false,
    }
}

/// The field `name` of a form, decoded as `form_urlencoded::parse` decodes it
/// (the same pairs, the same bytes), but only the pairs named `name`: a
/// password with a `+` or an escape is skipped, never decoded (no
/// allocation but for an escaped value of the field itself).
fn form_field<'a>(body: &'a [u8], name: &str) -> Field<'a> {
    let mut found = Field::Missing;
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let mut raw = pair.splitn(2, |b| *b == b'=');
        let raw_key = raw.next().unwrap_or_default();
        let raw_value = raw.next().unwrap_or_default();
        // A key with no escape, `+` or non-ASCII byte decodes to itself.
        let plain = !raw_key.iter().any(|b| matches!(b, b'%' | b'+' | 0x80..));
        if plain && raw_key != name.as_bytes() {
            continue;
        }
        let Some((key, value)) = form_urlencoded::parse(pair).next() else {
            continue;
        };
        if key == name {
            if found != Field::Missing {
                return Field::Ambiguous;
            }
            // Escapes that are no UTF-8: Django reads U+FFFD, Werkzeug the
            // escapes themselves. No name to count.
            if percent_encoding::percent_decode(raw_value)
                .decode_utf8()
                .is_err()
            {
                return Field::Ambiguous;
            }
            found = Field::Value(value);
        }
    }
    found
}

/// Walks a JSON object's top-level fields for one name.
struct Seek<'n> {
    name: &'n str,
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Field::Missing;
        let mut seen = false;
        while let Some(is_name) = map.next_key_seed(KeyIs(self.name))? {
            if is_name {
                if seen {
                    // Read the rest, so that a malformed body is still Missing.
                    map.next_value::<IgnoredAny>()?;
                    found = Field::Ambiguous;
                    continue;
                }
                seen = true;
                found = map.next_value_seed(Scalar)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Whether a key is `.0`, compared where the parser holds it (serde's
/// `Cow<str>` would copy every key into a new `String`).
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// A string or a number as text; `null` is [`Field::Missing`], anything else
/// [`Field::Ambiguous`].
struct Scalar;

impl<'de> DeserializeSeed<'de> for Scalar {
    type Value = Field<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Value(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Value(Cow::Owned(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Field::Value(Cow::Owned(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Field::Value(Cow::Owned(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Field::Value(Cow::Owned(v.to_string())))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::Ambiguous)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Missing)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Ambiguous)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Ambiguous)
    }
}

/// Writes `value` trimmed and lower-cased, a character at a time (no
/// allocation), through `push`.
pub(crate) fn push_normalised(value: &str, mut push: impl FnMut(&[u8])) {
    let mut utf8 = [0u8; 4];
    for c in value.trim().chars().flat_map(char::to_lowercase) {
        push(c.encode_utf8(&mut utf8).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded; charset=UTF-8");

    fn value(v: &str) -> Field<'_> {
        Field::Value(Cow::Borrowed(v))
    }

    #[test]
    fn a_form_field() {
        assert_eq!(
            field(b"username=alice&password=x", FORM, "username"),
            value("alice")
        );
        assert_eq!(
            field(b"password=x&username=A%20lice+B", FORM, "username"),
            value("A lice B")
        );
        assert_eq!(field(b"password=x", FORM, "username"), Field::Missing);
        assert_eq!(field(b"", FORM, "username"), Field::Missing);
        assert_eq!(
            field(b"username=a&username=b", FORM, "username"),
            Field::Ambiguous
        );
        // A form in a charset other than UTF-8 (Django decodes it so): refused.
        for (t, want) in [
            (
                "application/x-www-form-urlencoded; charset=utf-16-le",
                Field::Ambiguous,
            ),
            (
                "application/x-www-form-urlencoded;charset=\"latin-1\"",
                Field::Ambiguous,
            ),
            (
                "application/x-www-form-urlencoded; charset=UTF-8",
                value("alice"),
            ),
            (
                "application/x-www-form-urlencoded; charset=\"utf-8\"",
                value("alice"),
            ),
        ] {
            assert_eq!(field(b"username=alice", Some(t), "username"), want, "{t}");
        }
        // JSON is never read as a form; a JSON object sent as a form is read
        // as JSON too (apps read JSON whatever the type says), and where the
        // two readings differ, refused.
        assert_eq!(
            field(b"username=a", Some("application/json"), "username"),
            Field::Missing
        );
        assert_eq!(field(br#"{"username":"a"}"#, FORM, "username"), value("a"));
        assert_eq!(
            field(br#"{"username":"a","x":"&username=b"}"#, FORM, "username"),
            Field::Ambiguous
        );
        assert_eq!(
            field(br#"{"x":"&username=b"}"#, FORM, "username"),
            value("b\"}")
        );
        // A type the frameworks could read otherwise: refused.
        for t in [
            "application/x-www-form-urlencoded; charset=utf-8; charset=latin1",
            "application/x-www-form-urlencoded; charset*=utf-8''latin1",
            "application/x-www-form-urlencoded (a comment)",
            "application/x-www-form-urlencoded; charset = utf-8",
            "application/x-www-form-urlencoded; charset=\"utf-8",
            "application/x-www-form-urlencoded; charset=",
            "application/x-www-form-urlencoded, text/plain",
            "application/x-www-form-urlencoded/x",
            "form",
        ] {
            assert_eq!(
                field(b"username=alice", Some(t), "username"),
                Field::Ambiguous,
                "{t}"
            );
        }
        // Empty items, a trailing `;`, no type at all: read.
        for t in [
            Some("application/x-www-form-urlencoded;; charset=utf-8;"),
            Some(" Application/X-WWW-Form-Urlencoded\t"),
        ] {
            assert_eq!(
                field(b"username=alice", t, "username"),
                value("alice"),
                "{t:?}"
            );
        }
        for t in [None, Some(""), Some(" ")] {
            assert_eq!(
                field(b"username=alice", t, "username"),
                Field::Missing,
                "{t:?}"
            );
        }
    }

    #[test]
    fn a_json_field_whatever_the_type_says() {
        for t in [Some("application/json"), Some("text/plain"), None] {
            assert_eq!(
                field(br#"{"password":"x","username":"alice"}"#, t, "username"),
                value("alice")
            );
        }
        assert_eq!(
            field(br#"{"user\u006eame":"al\"ice"}"#, None, "username"),
            value("al\"ice")
        );
        assert_eq!(
            field(br#"{"username":12345}"#, None, "username"),
            value("12345")
        );
        assert_eq!(
            field(b" \r\n\t{\"username\":\"alice\"}\n", None, "username"),
            value("alice")
        );
        for missing in [
            &br#"{"user":{"username":"alice"}}"#[..],
            br#"{"username":null}"#,
            br#"["username","alice"]"#,
            br#"x{"username":"alice"}"#,
            b"",
        ] {
            assert_eq!(
                field(missing, None, "username"),
                Field::Missing,
                "{missing:?}"
            );
        }
        assert_eq!(
            field(
                br#"{"username":"a","x":[1,{"y":2}],"username":"b"}"#,
                None,
                "username"
            ),
            Field::Ambiguous
        );
        // What Express's parsers make of a repeated form field, NoSQL
        // injection's operators, a boolean: refused, never skipped.
        for shape in [
            &br#"{"username":["a","b"]}"#[..],
            br#"{"username":["alice"]}"#,
            br#"{"username":{"$gt":""}}"#,
            br#"{"username":{"$ne":null}}"#,
            br#"{"username":true}"#,
        ] {
            assert_eq!(
                field(shape, None, "username"),
                Field::Ambiguous,
                "{shape:?}"
            );
        }
        // Python's json.loads reads these: skipped (a BOM) or refused (wide).
        assert_eq!(
            field(b"\xEF\xBB\xBF{\"username\":\"alice\"}", None, "username"),
            value("alice")
        );
        let text = r#"{"username":"victim"}"#;
        let utf16le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let utf16be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let utf32le: Vec<u8> = text
            .chars()
            .flat_map(|c| u32::from(c).to_le_bytes())
            .collect();
        let utf32be: Vec<u8> = text
            .chars()
            .flat_map(|c| u32::from(c).to_be_bytes())
            .collect();
        let with_bom = |bom: &[u8], b: &[u8]| [bom, b].concat();
        for wide in [
            utf16le.clone(),
            utf16be.clone(),
            utf32le.clone(),
            utf32be.clone(),
            with_bom(&[0xFF, 0xFE], &utf16le),
            with_bom(&[0xFE, 0xFF], &utf16be),
            with_bom(&[0xFF, 0xFE, 0, 0], &utf32le),
            with_bom(&[0, 0, 0xFE, 0xFF], &utf32be),
        ] {
            for t in [Some("application/json"), Some("text/plain"), None] {
                assert_eq!(field(&wide, t, "username"), Field::Ambiguous, "{wide:?}");
            }
        }
        // Deep nesting beside the field (skipped without recursion) or in it.
        let deep = |inner: &str| {
            let nested = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
            format!(
                r#"{{"username":{},"x":{nested}}}"#,
                inner.replace('N', &nested)
            )
        };
        assert_eq!(
            field(deep(r#""alice""#).as_bytes(), None, "username"),
            value("alice")
        );
        assert_eq!(
            field(deep("N").as_bytes(), None, "username"),
            Field::Ambiguous
        );
        // An object this cannot read whole: refused. Python's json.loads
        // reads NaN and Infinity; a cut or trailing body is refused as well.
        for unread in [
            &br#"{"username":"alice","password":NaN}"#[..],
            br#"{"password":-Infinity,"username":"alice"}"#,
            br#"{"username":"alice","n":Infinity}"#,
            br#"{"username":"alice""#,
            br#"{"username":["a"]"#,
            br#"{"username":"alice"} trailing"#,
            b"{",
        ] {
            for t in [Some("application/json"), FORM, None] {
                assert_eq!(field(unread, t, "username"), Field::Ambiguous, "{unread:?}");
            }
        }
    }

    fn multipart(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (head, value) in parts {
            body.extend_from_slice(format!("--XyZ\r\n{head}\r\n\r\n{value}\r\n").as_bytes());
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        body
    }

    #[test]
    fn a_multipart_field() {
        let t = Some("multipart/form-data; boundary=XyZ");
        let quoted = Some("Multipart/Form-Data; boundary=\"XyZ\"");
        let cd = |params: &str| format!("Content-Disposition: form-data; {params}");
        let body = multipart(&[
            (&cd(r#"name="password""#), "x\r\ny"),
            (&cd(r#"name="username""#), "Alice"),
        ]);
        assert_eq!(field(&body, t, "username"), value("Alice"));
        assert_eq!(field(&body, quoted, "username"), value("Alice"));
        assert_eq!(field(&body, t, "password"), value("x\r\ny"));
        assert_eq!(field(&body, t, "other"), Field::Missing);
        // The name as a token, in any case, with an escape, among other params.
        for params in ["NAME=username", r#"foo="a;b"; name="username""#] {
            let body = multipart(&[(&cd(params), "bob")]);
            assert_eq!(field(&body, t, "username"), value("bob"), "{params}");
        }
        // Where the parsers split or unescape differently: a backslash, an
        // odd quote, a delimiter inside a line, a lone LF, a part without
        // headers' end.
        for params in [
            r#"name="user\"name""#,
            r#"foo=a\\"; name=username"#,
            r#"x="; name=username"#,
        ] {
            let body = multipart(&[(&cd(params), "bob")]);
            assert_eq!(field(&body, t, "username"), Field::Ambiguous, "{params}");
        }
        let inline = b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nalice--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nvictim\r\n--XyZ--";
        assert_eq!(field(inline, t, "username"), Field::Ambiguous);
        let lf = b"--XyZ\r\nContent-Disposition: form-data; name=\"x\"\nContent-Disposition: form-data; name=\"username\"\r\n\r\nvictim\r\n--XyZ--";
        assert_eq!(field(lf, t, "username"), Field::Ambiguous);
        let headless =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\nvictim\r\n--XyZ--";
        assert_eq!(field(headless, t, "username"), Field::Ambiguous);
        // A folded header, headers that are no UTF-8, a name given twice,
        // two Content-Disposition headers: refused.
        for head in [
            "Content-Disposition: form-data;\r\n name=\"username\"".to_string(),
            cd(r#"name="x"; name="username""#),
            format!("{}\r\n{}", cd(r#"name="x""#), cd(r#"name="username""#)),
        ] {
            let body = multipart(&[(&head, "victim")]);
            assert_eq!(field(&body, t, "username"), Field::Ambiguous, "{head}");
        }
        let latin = b"--XyZ\r\nContent-Disposition: form-data; name=\"username\"; x=\"\xe9\"\r\n\r\nvictim\r\n--XyZ--";
        assert_eq!(field(latin, t, "username"), Field::Ambiguous);
        // Ambiguous: twice, as a file, encoded, in another charset, RFC 2231.
        for parts in [
            vec![
                (cd(r#"name="username""#), "a"),
                (cd(r#"name="username""#), "b"),
            ],
            vec![(cd(r#"name="username"; filename="u.txt""#), "a")],
            vec![(
                format!(
                    "{}\r\nContent-Transfer-Encoding: base64",
                    cd(r#"name="username""#)
                ),
                "YQ==",
            )],
            vec![(
                format!(
                    "{}\r\nContent-Type: text/plain; charset=utf-16",
                    cd(r#"name="username""#)
                ),
                "a",
            )],
            vec![(cd("name*=utf-8''username"), "a")],
            vec![(cd(r#"name="x""#), "a"), (cd("name*=utf-8''other"), "b")],
        ] {
            let refs: Vec<(&str, &str)> = parts.iter().map(|(h, v)| (h.as_str(), *v)).collect();
            assert_eq!(
                field(&multipart(&refs), t, "username"),
                Field::Ambiguous,
                "{parts:?}"
            );
        }
        // A file under another name, a UTF-8 text part: fine.
        let body = multipart(&[
            (&cd(r#"name="avatar"; filename="a.png""#), "\u{0}PNG"),
            (
                &format!(
                    "{}\r\nContent-Type: text/plain; charset=UTF-8",
                    cd(r#"name="username""#)
                ),
                "carol",
            ),
        ]);
        assert_eq!(field(&body, t, "username"), value("carol"));
        // No boundary (no parser reads a part): no field. Another boundary
        // (Django reads the whole body as a part), an unterminated part
        // (Django reads it): refused.
        let body = multipart(&[(&cd(r#"name="username""#), "dave")]);
        assert_eq!(
            field(&body, Some("multipart/form-data"), "username"),
            Field::Missing
        );
        assert_eq!(
            field(
                &body,
                Some("multipart/form-data; boundary=Other"),
                "username"
            ),
            Field::Ambiguous
        );
        let cut = b"--XyZ\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\ndave";
        assert_eq!(field(cut, t, "username"), Field::Ambiguous);
        // A line that only starts with the delimiter (Django splits there,
        // Werkzeug does not), a body ending on a delimiter: refused. Padding
        // after a delimiter (every parser skips it): read.
        let cd_user = cd(r#"name="username""#);
        for (body, want) in [
            (
                format!("--XyZ\r\n{cd_user}\r\n\r\nv\r\n--XyZjunk\r\nx\r\n--XyZ--\r\n"),
                Field::Ambiguous,
            ),
            (
                format!("--XyZ\r\n{cd_user}\r\n\r\nv\r\n--XyZ"),
                Field::Ambiguous,
            ),
            (
                format!("--XyZ \t\r\n{cd_user}\r\n\r\nv\r\n--XyZ--\r\n"),
                value("v"),
            ),
        ] {
            assert_eq!(field(body.as_bytes(), t, "username"), want, "{body:?}");
        }
        // A boundary past RFC 2046's 70 characters: refused.
        let long = format!("multipart/form-data; boundary={}", "b".repeat(71));
        assert_eq!(field(&body, Some(&long), "username"), Field::Ambiguous);
        // Text before the first delimiter or after the last (Django reads a
        // part from each; a body with no delimiter is all preamble): refused.
        // An empty body, a closing delimiter with or without its line end:
        // read.
        let ok = multipart(&[(&cd(r#"name="username""#), "gina")]);
        for cut in [
            [b"preamble\r\n", ok.as_slice()].concat(),
            [b"\r\n", ok.as_slice()].concat(),
            [ok.as_slice(), b"epilogue"].concat(),
            [ok.as_slice(), b"\r\n"].concat(),
            b"Content-Disposition: form-data; name=\"username\"\r\n\r\nvictim".to_vec(),
            br#"{"username":"eve"}"#.to_vec(),
        ] {
            assert_eq!(field(&cut, t, "username"), Field::Ambiguous, "{cut:?}");
        }
        assert_eq!(field(&ok, t, "username"), value("gina"));
        assert_eq!(field(&ok[..ok.len() - 2], t, "username"), value("gina"));
        assert_eq!(field(b"", t, "username"), Field::Missing);
        // The type read strictly: a boundary inside a quoted parameter is not
        // the boundary; one given twice, the RFC 2231 way, unclosed, with a
        // comment, or a charset the frameworks decode the fields in: refused.
        let body = multipart(&[(&cd(r#"name="username""#), "frank")]);
        assert_eq!(
            field(
                &body,
                Some(r#"multipart/form-data; x="a;boundary=Other"; boundary=XyZ"#),
                "username"
            ),
            value("frank")
        );
        for t in [
            "multipart/form-data; boundary=XyZ; boundary=Other",
            "multipart/form-data; boundary=Other; boundary=XyZ",
            "multipart/form-data; boundary*=utf-8''XyZ",
            "multipart/form-data; boundary=\"XyZ",
            "multipart/form-data; boundary=XyZ (a comment)",
            "multipart/form-data; boundary=XyZ; charset=utf-16-le",
            "multipart/form-data boundary=XyZ",
        ] {
            assert_eq!(field(&body, Some(t), "username"), Field::Ambiguous, "{t}");
        }
        // A part's disposition read strictly too: what follows the name, spaces
        // around `=`, a header name with a space or a line with no colon.
        for head in [
            cd(r#"name="username" (the login)"#),
            cd("name=username x"),
            cd(r#"name = "username""#),
            cd("name="),
            cd("name"),
            r#"Content-Disposition : form-data; name="username""#.to_string(),
            format!("{}\r\nno colon", cd(r#"name="username""#)),
            r#"Content-Disposition: form-data/x; name="username""#.to_string(),
            format!(
                "{}\r\nContent-Type: text/plain; charset=\"utf-8",
                cd(r#"name="username""#)
            ),
            format!(
                "{}\r\nContent-Type: text/plain; charset=utf-8; charset=utf-16",
                cd(r#"name="username""#)
            ),
        ] {
            let body = multipart(&[(&head, "victim")]);
            assert_eq!(field(&body, t, "username"), Field::Ambiguous, "{head}");
        }
    }

    /// `form_field` finds what `form_urlencoded::parse` finds, on forms with
    /// escapes, `+`, empty pairs, `=` in values and bytes that are no UTF-8.
    #[test]
    fn a_form_field_is_what_form_urlencoded_reads() {
        fn reference<'a>(body: &'a [u8], name: &str) -> Field<'a> {
            let mut found = Field::Missing;
            for (k, v) in form_urlencoded::parse(body) {
                if k == name {
                    if found != Field::Missing {
                        return Field::Ambiguous;
                    }
                    // Escapes that are no UTF-8 (the inputs here have no
                    // encoded U+FFFD): refused.
                    if v.contains('\u{fffd}') {
                        return Field::Ambiguous;
                    }
                    found = Field::Value(v);
                }
            }
            found
        }
        for body in [
            &b"username=a%40b.c&password=x+y%2Bz"[..],
            b"user%6Eame=alice",
            b"user+name=alice&username=bob",
            b"&&username=&=x&username",
            b"username=a=b=c",
            b"username=%ff%fe&x=\xff",
            b"usern\xc3\xa4me=x&username=y",
            b"%75sername=a&username=b",
            b"username",
            b"u\xff=x",
            b"",
        ] {
            for name in [
                "username",
                "user name",
                "usernäme",
                "password",
                "u\u{fffd}",
                "",
            ] {
                assert_eq!(
                    form_field(body, name),
                    reference(body, name),
                    "{body:?} {name}"
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        /// On forms whose keys and values are made of the field's letters,
        /// escapes (good and bad), `+`, `=` and bytes that are no UTF-8,
        /// `form_field` agrees with `form_urlencoded::parse` (no parser
        /// differential with the frameworks that use its rules).
        #[test]
        fn form_field_agrees_with_form_urlencoded(
            pairs in proptest::collection::vec(
                (
                    proptest::collection::vec(part(), 0..4),
                    proptest::option::of(proptest::collection::vec(part(), 0..3)),
                ),
                0..5,
            ),
            name in proptest::sample::select(vec!["username", "user name", "u s", " ", "u", "us\u{e4}", "u\u{fffd}", "a+b", ""]),
        ) {
            let mut body = Vec::new();
            for (i, (key, value)) in pairs.iter().enumerate() {
                if i > 0 {
                    body.push(b'&');
                }
                body.extend(key.concat());
                if let Some(v) = value {
                    body.push(b'=');
                    body.extend(v.concat());
                }
            }
            let mut want = Field::Missing;
            for (k, v) in form_urlencoded::parse(&body) {
                if k == name {
                    if want != Field::Missing {
                        want = Field::Ambiguous;
                        break;
                    }
                    if v.contains('\u{fffd}') {
                        want = Field::Ambiguous;
                        break;
                    }
                    want = Field::Value(v);
                }
            }
            proptest::prop_assert_eq!(form_field(&body, name), want);
        }
    }

    /// A piece of a form key or value.
    fn part() -> impl proptest::strategy::Strategy<Value = &'static [u8]> {
        proptest::sample::select(vec![
            &b"user"[..],
            b"name",
            b"username",
            b"u",
            b"s",
            b"+",
            b"%20",
            b"%75",
            b"%7",
            b"%",
            b"%2B",
            b"%ff",
            b"\xff",
            b"\xc3\xa4",
            b"=",
            b"a",
            b"b",
        ])
    }

    #[test]
    fn one_content_type_and_no_compression() {
        let ct = |h: &[(&'static str, &'static str)]| content_type(h);
        assert_eq!(ct(&[]), Ok(None));
        assert_eq!(ct(&[("Content-Type", FORM.unwrap_or_default())]), Ok(FORM));
        assert_eq!(
            ct(&[
                ("content-type", "text/plain"),
                ("x-a", "1"),
                ("Content-Encoding", " Identity ")
            ]),
            Ok(Some("text/plain"))
        );
        assert_eq!(ct(&[("content-encoding", "")]), Ok(None));
        for refused in [
            &[
                ("content-type", "text/plain"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ][..],
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            &[("content-encoding", "deflate")],
            &[("content-encoding", "identity, gzip")],
        ] {
            assert_eq!(ct(refused), Err(()), "{refused:?}");
        }
    }

    #[test]
    fn values_are_trimmed_and_lower_cased() {
        let norm = |v: &str| {
            let mut out = Vec::new();
            push_normalised(v, |b| out.extend_from_slice(b));
            String::from_utf8(out).unwrap_or_default()
        };
        assert_eq!(norm("  Alice@Example.COM\t"), "alice@example.com");
        assert_eq!(norm("ÉLODIE"), "élodie");
        assert_eq!(norm("İ"), "i\u{307}");
    }
}
