//! Rules keyed by a field of the request body (`key = "body:username"`): the
//! per-username limit of a login, which the username sent in the form or the
//! JSON body keys, however it is spelled and whatever address sends it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use floodgate::policy::{Engine, Reason, Request, Verdict};

const POLICY: &str = r#"
[[rule]]
name = "login-user"
match = "POST /auth/login"
quotas = ["3/min"]
key = "body:username"

[[rule]]
name = "signup"
match = "POST /auth/signup"
quotas = ["1/min"]
key = "body:email"
anonymous = "deny"

[[rule]]
name = "everything"
match = "/**"
quotas = ["1000/min"]
key = "ip"
"#;

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

fn at(ms: u64) -> Duration {
    Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
}

/// `POST path` from `ip` with `body` of type `content_type` (none if empty).
fn post(
    e: &Engine,
    path: &str,
    ip: &str,
    content_type: &str,
    body: &[u8],
    ms: u64,
) -> floodgate::Result<Verdict> {
    let headers = [("content-type", content_type)];
    e.check_request_at(
        &Request {
            method: "POST",
            path,
            client_ip: ip.parse().ok(),
            headers: if content_type.is_empty() {
                &[]
            } else {
                &headers
            },
            body: Some(body),
        },
        at(ms),
    )
}

#[test]
fn a_username_is_one_key_however_it_is_sent_and_from_wherever() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    let attempts: [(&str, &[u8]); 6] = [
        (JSON, br#"{"username":"victim","password":"123456"}"#),
        (FORM, b"username=Victim&password=password"),
        (
            "text/plain",
            br#"{"password":"qwerty","username":" VICTIM "}"#,
        ),
        (FORM, b"password=letmein&username=%20victim%20"),
        (
            "application/json; charset=utf-8",
            br#"{"username":"vict\u0069m"}"#,
        ),
        (FORM, b"username=victim"),
    ];
    let got: Vec<(u16, Option<String>)> = attempts
        .iter()
        .enumerate()
        .map(|(i, (t, b))| {
            let v = post(&e, "/auth/login", &format!("198.51.100.{}", i + 1), t, b, 0).unwrap();
            (v.status, v.identity)
        })
        .collect();
    let statuses: Vec<u16> = got.iter().map(|g| g.0).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert!(
        got.iter().all(|g| g.1.as_deref() == Some("victim")),
        "{got:?}"
    );
    // Another name has its own 3; the limit holds the name, not the address.
    let v = post(
        &e,
        "/auth/login",
        "198.51.100.1",
        JSON,
        br#"{"username":"alice"}"#,
        0,
    )
    .unwrap();
    assert!(v.allowed);
    // A minute later the name has its attempts again.
    assert!(
        post(
            &e,
            "/auth/login",
            "198.51.100.9",
            FORM,
            b"username=victim",
            60_000
        )
        .unwrap()
        .allowed
    );
}

#[test]
fn a_field_named_twice_or_not_as_a_name_is_refused_before_any_rule_is_charged() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    for (t, body) in [
        (FORM, &b"username=decoy&username=victim"[..]),
        (
            JSON,
            br#"{"username":"decoy","password":"x","username":"victim"}"#,
        ),
        // What Express's body parsers send for the repeated form field.
        (JSON, br#"{"username":["decoy","victim"]}"#),
        // A NoSQL injection's operator, a list of one, a boolean.
        (JSON, br#"{"username":{"$ne":null},"password":"x"}"#),
        (JSON, br#"{"username":["victim"]}"#),
        (JSON, br#"{"username":true}"#),
    ] {
        let err = post(&e, "/auth/login", "198.51.100.20", t, body, 0).unwrap_err();
        assert_eq!(err.code(), "invalid_request", "{err}");
    }
    // Nothing was charged: the name and the address have all their attempts.
    for _ in 0..3 {
        assert!(
            post(
                &e,
                "/auth/login",
                "198.51.100.20",
                FORM,
                b"username=victim",
                0
            )
            .unwrap()
            .allowed
        );
    }
    // A field no rule reads may repeat.
    assert!(
        post(
            &e,
            "/auth/login",
            "198.51.100.21",
            FORM,
            b"username=bob&x=1&x=2",
            0
        )
        .unwrap()
        .allowed
    );
}

#[test]
fn without_the_field_the_rule_is_skipped_or_denies() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    for (t, body) in [
        (JSON, &br#"{"user":"victim"}"#[..]),
        (JSON, br#"{"username":""}"#),
        (JSON, br#"{"username":"   "}"#),
        (JSON, br#"{"username":null}"#),
        (JSON, b"not json"),
        ("", b""),
    ] {
        for _ in 0..4 {
            let v = post(&e, "/auth/login", "198.51.100.30", t, body, 0).unwrap();
            assert_eq!(v.rule.as_deref(), Some("everything"), "{body:?}");
        }
    }
    // `anonymous = "deny"`: a signup without an email is refused, 401.
    let v = post(
        &e,
        "/auth/signup",
        "198.51.100.31",
        JSON,
        br#"{"name":"x"}"#,
        0,
    )
    .unwrap();
    assert_eq!((v.status, v.reason), (401, Reason::Unauthorized));
    let v = post(
        &e,
        "/auth/signup",
        "198.51.100.31",
        JSON,
        br#"{"email":"A@x.io"}"#,
        0,
    )
    .unwrap();
    assert_eq!((v.status, v.identity.as_deref()), (200, Some("a@x.io")));
    // No body passed at all (a front end that reads none): the same.
    let v = e
        .check_request_at(
            &Request {
                method: "POST",
                path: "/auth/signup",
                client_ip: "198.51.100.31".parse().ok(),
                headers: &[],
                body: None,
            },
            at(0),
        )
        .unwrap();
    assert_eq!(v.status, 401);
}

#[test]
fn front_ends_read_bodies_only_for_the_rules_that_key_on_them() {
    let e = Engine::from_toml_str(POLICY).unwrap();
    assert!(e.request_headers().iter().any(|h| h == "content-type"));
    assert!(e.reads_body("POST", "/auth/login"));
    assert!(e.reads_body("post", "//AUTH/login/?next=/"));
    assert!(e.reads_body("POST", "/auth/signup"));
    assert!(!e.reads_body("GET", "/auth/login"));
    assert!(!e.reads_body("POST", "/api/items"));
    let plain = Engine::from_toml_str(
        "[[rule]]\nname = \"a\"\nmatch = \"/**\"\nquotas = [\"1/s\"]\nkey = \"ip\"\n",
    )
    .unwrap();
    assert!(!plain.reads_body("POST", "/auth/login"));
    assert!(plain.request_headers().iter().all(|h| h != "content-type"));
    assert!(
        e.warnings().iter().all(|w| !w.contains("body")),
        "{:?}",
        e.warnings()
    );
    assert_eq!(floodgate::policy::MAX_BODY_BYTES, 64 * 1024);
    assert_eq!(
        floodgate::policy::denial_body(413, Duration::ZERO, None),
        r#"{"error":"payload_too_large"}"#
    );
}

#[test]
fn an_unknown_key_part_names_body() {
    let err = Engine::from_toml_str(
        "[[rule]]\nname = \"a\"\nmatch = \"/**\"\nquotas = [\"1/s\"]\nkey = \"form:user\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("body:FIELD"), "{err}");
}
