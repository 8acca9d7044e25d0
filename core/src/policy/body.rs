//! Keys from a field of the request body (`key = "body:username"`): the
//! per-username limit of a login form, which is in the body, not a header.
//!
//! - A form (`application/x-www-form-urlencoded`) is read as a form; any other
//!   body that is a JSON object is read as JSON, whatever its type says (an app
//!   may parse JSON it was sent as `text/plain`; a field it reads must not slip
//!   by the rule). Only top-level fields; a string or a number.
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
//! - No body, a body that is neither a form nor a JSON object, no such field,
//!   or `null`: the rule has no key for the request (skipped, or 401 with
//!   `anonymous = "deny"`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

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

/// Whether `content_type` is a form (`application/x-www-form-urlencoded`,
/// parameters and case aside).
fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|t| {
        t.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// The field `name` of `body`, read as its `content_type` says (see the
/// module's notes).
pub(crate) fn field<'a>(body: &'a [u8], content_type: Option<&str>, name: &str) -> Field<'a> {
    if is_form(content_type) {
        let mut found = Field::Missing;
        for (k, v) in form_urlencoded::parse(body) {
            if k == name {
                if found != Field::Missing {
                    return Field::Ambiguous;
                }
                found = Field::Value(v);
            }
        }
        return found;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match de.deserialize_map(Seek { name }) {
        Ok(found) if de.end().is_ok() => found,
        _ => Field::Missing,
    }
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
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == self.name {
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
        // A form is never read as JSON, nor JSON as a form.
        assert_eq!(
            field(br#"{"username":"a"}"#, FORM, "username"),
            Field::Missing
        );
        assert_eq!(
            field(b"username=a", Some("application/json"), "username"),
            Field::Missing
        );
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
        for missing in [
            &br#"{"user":{"username":"alice"}}"#[..],
            br#"{"username":null}"#,
            br#"["username","alice"]"#,
            br#"{"username":"alice""#,
            br#"{"username":"alice"} trailing"#,
            b"",
            b"\xff\xfe",
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
        // A malformed body is Missing, whatever the field held.
        assert_eq!(
            field(br#"{"username":["a"]"#, None, "username"),
            Field::Missing
        );
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
