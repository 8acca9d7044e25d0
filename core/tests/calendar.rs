//! Calendar quotas (`calendar = true`): windows from local midnight, Monday
//! or the month's (or the key's billing) day, across month lengths, leap
//! years and DST; Retry-After and reset at the window's real end; the same
//! counts on the shared-memory store; plain `/day` stays rolling; bad
//! calendar settings are located errors.
#![cfg(feature = "policy")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::Duration;

use floodgate::policy::{Engine, Reason, Request, Verdict};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

/// Unix time of an RFC 3339 instant.
fn t(text: &str) -> Duration {
    let ts: jiff::Timestamp = text.parse().unwrap();
    Duration::from_nanos(u64::try_from(ts.as_nanosecond()).unwrap())
}

fn get(e: &Engine, ip: &str, now: Duration) -> Verdict {
    e.check_request_at(
        &Request {
            method: "GET",
            path: "/api/items",
            client_ip: Some(ip.parse().unwrap()),
            headers: &[],
            body: None,
        },
        now,
    )
    .unwrap()
}

fn header<'a>(v: &'a Verdict, name: &str) -> Option<&'a str> {
    v.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

const MONTHLY: &str = r#"
[[rule]]
name = "plan"
match = "/api/**"
key = "ip"
quotas = ["3/month"]
calendar = true
"#;

/// Spends the quota just before a window ends, checks the denial's times, and
/// that the next window starts afresh on the boundary (not a second later).
fn crosses(e: &Engine, ip: &str, before: Duration, boundary: Duration, limit: usize) {
    for i in 0..limit {
        assert!(
            get(e, ip, before).allowed,
            "request {i} before {boundary:?}"
        );
    }
    let denied = get(e, ip, before);
    assert_eq!(denied.reason, Reason::RateLimited);
    assert_eq!(
        denied.retry_after,
        boundary - before,
        "Retry-After points at the boundary"
    );
    assert_eq!(denied.reset_after, boundary - before);
    let last = get(e, ip, boundary - Duration::from_nanos(1));
    assert!(
        !last.allowed,
        "still the old window 1 ns before the boundary"
    );
    let next = get(e, ip, boundary);
    assert!(next.allowed, "a fresh window at {boundary:?}");
    assert_eq!(next.remaining, limit as u64 - 1);
}

#[test]
fn months_of_28_29_30_and_31_days_reset_on_the_first() {
    let e = Engine::from_toml_str(MONTHLY).unwrap();
    let ends = [
        ("2024-01-31T23:00:00Z", "2024-02-01T00:00:00Z"),
        ("2024-02-29T12:00:00Z", "2024-03-01T00:00:00Z"), // leap year: 29 days
        ("2025-02-28T23:59:59Z", "2025-03-01T00:00:00Z"), // 28 days
        ("2025-04-30T00:00:00Z", "2025-05-01T00:00:00Z"), // 30 days
        ("2025-12-31T18:00:00Z", "2026-01-01T00:00:00Z"), // a new year
    ];
    for (i, (before, boundary)) in ends.iter().enumerate() {
        crosses(&e, &format!("203.0.113.{i}"), t(before), t(boundary), 3);
    }
    // A whole month between two requests of one client: one window, 3 in all.
    let ip = "198.51.100.1";
    for day in [
        "2025-06-01T00:00:00Z",
        "2025-06-15T12:00:00Z",
        "2025-06-30T23:59:59Z",
    ] {
        assert!(get(&e, ip, t(day)).allowed);
    }
    assert!(!get(&e, ip, t("2025-06-20T00:00:00Z")).allowed);
    // The headers: the policy's window is a month (30 days nominal), the reset
    // the seconds left in this one.
    let v = get(&e, "198.51.100.2", t("2025-06-30T23:00:00Z"));
    assert_eq!(
        header(&v, "RateLimit-Policy"),
        Some("\"plan\";q=3;w=2592000")
    );
    assert!(
        header(&v, "RateLimit").unwrap().contains(";r=2;t=3600;"),
        "{v:?}"
    );
}

#[test]
fn days_follow_local_midnight_across_dst() {
    let e = Engine::from_toml_str(
        r#"
[[rule]]
name = "daily"
match = "/api/**"
key = "ip"
quotas = ["2/day"]
calendar = true
time_zone = "Europe/Paris"
"#,
    )
    .unwrap();
    // 2025-03-30 in Paris lasts 23 hours (22:00 UTC is midnight, CEST).
    crosses(
        &e,
        "203.0.113.1",
        t("2025-03-30T21:00:00Z"),
        t("2025-03-30T22:00:00Z"),
        2,
    );
    // 2025-10-26 lasts 25 hours: it began at 22:00 UTC on the 25th and ends
    // at 23:00 UTC on the 26th.
    let ip = "203.0.113.2";
    assert!(get(&e, ip, t("2025-10-25T22:00:00Z")).allowed);
    assert!(get(&e, ip, t("2025-10-26T22:30:00Z")).allowed);
    assert!(!get(&e, ip, t("2025-10-26T22:59:59Z")).allowed);
    assert!(get(&e, ip, t("2025-10-26T23:00:00Z")).allowed);
    // Midnight in Paris, not in UTC: 23:30 UTC on June 1st is the 2nd there.
    crosses(
        &e,
        "203.0.113.3",
        t("2025-06-01T21:30:00Z"),
        t("2025-06-01T22:00:00Z"),
        2,
    );
}

#[test]
fn weeks_begin_on_monday() {
    let e = Engine::from_toml_str(&MONTHLY.replace("3/month", "2/week")).unwrap();
    // 2025-06-08 is a Sunday, the 9th a Monday.
    crosses(
        &e,
        "203.0.113.1",
        t("2025-06-08T23:00:00Z"),
        t("2025-06-09T00:00:00Z"),
        2,
    );
    let v = get(&e, "203.0.113.2", t("2025-06-04T00:00:00Z"));
    assert_eq!(
        header(&v, "RateLimit-Policy"),
        Some("\"plan\";q=2;w=604800")
    );
}

/// Without `calendar`, `/day` keeps its rolling meaning: a day after the
/// first request, whatever the clock says.
#[test]
fn plain_days_stay_rolling() {
    let rolling = Engine::from_toml_str(
        &MONTHLY
            .replace("3/month", "1/day")
            .replace("calendar = true", "algorithm = \"fixed_window\""),
    )
    .unwrap();
    let calendar = Engine::from_toml_str(&MONTHLY.replace("3/month", "1/day")).unwrap();
    let ip = "203.0.113.9";
    // A day of a fixed window is aligned on Unix days: both begin at 00:00
    // UTC, so take GCRA for "rolling": a day after the request.
    let gcra = Engine::from_toml_str(
        &MONTHLY
            .replace("3/month", "1/day")
            .replace("calendar = true", ""),
    )
    .unwrap();
    let evening = t("2025-06-01T20:00:00Z");
    let next_morning = t("2025-06-02T08:00:00Z");
    for e in [&rolling, &calendar, &gcra] {
        assert!(get(e, ip, evening).allowed);
    }
    assert!(
        get(&calendar, ip, next_morning).allowed,
        "a new calendar day"
    );
    assert!(
        !get(&gcra, ip, next_morning).allowed,
        "12 h after: still within the rolling day"
    );
    assert!(get(&gcra, ip, evening + Duration::from_secs(86_400)).allowed);
}

const SECRET: &str = "calendar-test-secret-of-32-bytes!!";

fn token(sub: &str, billing_day: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "aud": "api", "exp": 4_102_444_800u64, "billing_day": billing_day}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn billing_anchors_start_each_customer_s_month_on_their_day() {
    let secret =
        std::env::temp_dir().join(format!("floodgate-calendar-secret-{}", std::process::id()));
    std::fs::write(&secret, SECRET).unwrap();
    let e = Engine::from_toml_str(&format!(
        r#"
[jwt]
algorithms = ["HS256"]
audience = "api"
secret_file = "{}"
verify_limit = "off"

[[rule]]
name = "plan"
match = "/api/**"
key = "claim:sub"
quotas = ["2/month"]
calendar = true
anchor_claim = "billing_day"
"#,
        secret.display()
    ))
    .unwrap();
    let _ = std::fs::remove_file(&secret);
    let call = |tok: &str, now: Duration| {
        let auth = format!("Bearer {tok}");
        let headers = [("authorization", auth.as_str())];
        e.check_request_at(
            &Request {
                method: "GET",
                path: "/api/items",
                client_ip: Some("192.0.2.1".parse().unwrap()),
                headers: &headers,
                body: None,
            },
            now,
        )
        .unwrap()
    };
    for (sub, day, before, boundary) in [
        // The 31st: February's month begins on its last day.
        (
            "a31",
            json!(31),
            "2025-02-27T12:00:00Z",
            "2025-02-28T00:00:00Z",
        ),
        (
            "b31",
            json!(31),
            "2025-03-30T12:00:00Z",
            "2025-03-31T00:00:00Z",
        ),
        (
            "c30",
            json!("30"),
            "2025-02-27T00:00:00Z",
            "2025-02-28T00:00:00Z",
        ),
        (
            "d29",
            json!(29),
            "2024-02-28T23:00:00Z",
            "2024-02-29T00:00:00Z",
        ), // leap year
        (
            "e29",
            json!(29),
            "2025-02-27T23:00:00Z",
            "2025-02-28T00:00:00Z",
        ),
        (
            "f15",
            json!(15),
            "2025-07-14T23:59:00Z",
            "2025-07-15T00:00:00Z",
        ),
        // No usable claim: the calendar month.
        (
            "g",
            json!("soon"),
            "2025-07-31T23:59:00Z",
            "2025-08-01T00:00:00Z",
        ),
    ] {
        let tok = token(sub, day);
        let (before, boundary) = (t(before), t(boundary));
        assert!(call(&tok, before).allowed, "{sub}");
        assert!(call(&tok, before).allowed, "{sub}");
        let denied = call(&tok, before);
        assert!(!denied.allowed, "{sub}: {denied:?}");
        assert_eq!(denied.retry_after, boundary - before, "{sub}");
        assert!(
            call(&tok, boundary).allowed,
            "{sub}: a new month on its day"
        );
    }
}

#[cfg(all(feature = "shm", unix))]
#[test]
fn two_workers_on_shared_memory_count_one_month() {
    let path = std::env::temp_dir().join(format!("floodgate-calendar-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let policy = format!(
        "[store]\nkind = \"shared_memory\"\npath = \"{}\"\nmax_keys = 1024\n{MONTHLY}",
        path.display()
    );
    let a = Engine::from_toml_str(&policy).unwrap();
    let b = Engine::from_toml_str(&policy).unwrap();
    let ip = "203.0.113.50";
    let before = t("2025-01-31T23:59:00Z");
    assert!(get(&a, ip, before).allowed);
    assert!(get(&b, ip, before).allowed);
    assert!(get(&a, ip, before).allowed);
    let denied = get(&b, ip, before);
    assert!(
        !denied.allowed,
        "the third worker request used the month up"
    );
    assert_eq!(denied.retry_after, Duration::from_secs(60));
    assert!(get(&b, ip, t("2025-02-01T00:00:00Z")).allowed);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn calendar_settings_are_checked_with_their_location() {
    let bad = |text: &str, want: &str| {
        let e = Engine::from_toml_str(text).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} should mention {want:?}");
    };
    bad(&MONTHLY.replace("calendar = true", ""), "rule[0].quotas[0]");
    bad(&MONTHLY.replace("calendar = true", ""), "calendar = true");
    bad(
        &MONTHLY.replace("\"3/month\"", "\"3/month\", \"1/day\""),
        "rule[0].quotas[1]",
    );
    bad(
        &MONTHLY.replace("3/month", "3/hour"),
        "not a calendar quota",
    );
    bad(
        &format!("{MONTHLY}time_zone = \"Mars/Olympus_Mons\"\n"),
        "rule[0].time_zone",
    );
    bad(
        &MONTHLY.replace("calendar = true", "time_zone = \"UTC\""),
        "applies only to a rule with calendar = true",
    );
    bad(
        &format!("{MONTHLY}anchor_claim = \"billing_day\"\n"),
        "no [jwt] section",
    );
    bad(
        &format!(
            "{}anchor_claim = \"billing_day\"\n",
            MONTHLY.replace("3/month", "3/day")
        ),
        "per month",
    );
    bad(
        &format!("{MONTHLY}algorithm = \"gcra\"\n"),
        "rule[0].algorithm",
    );
}

/// A reload keeps a calendar rule's counts while its calendar is unchanged,
/// and starts afresh when the zone changes (other windows).
#[test]
fn reloads_keep_the_month_unless_the_calendar_changes() {
    let e = Engine::from_toml_str(MONTHLY).unwrap();
    let ip = "203.0.113.60";
    let now = t("2025-03-10T12:00:00Z");
    for _ in 0..3 {
        assert!(get(&e, ip, now).allowed);
    }
    let kept = e
        .reload_toml_str(
            &MONTHLY.replace("match = \"/api/**\"", "match = [\"/v2/**\", \"/api/**\"]"),
        )
        .unwrap();
    assert_eq!(kept.kept, vec!["plan".to_string()]);
    assert!(!get(&e, ip, now).allowed, "the month's count carried over");
    let moved = e
        .reload_toml_str(&format!("{MONTHLY}time_zone = \"Asia/Tokyo\"\n"))
        .unwrap();
    assert_eq!(moved.reset, vec!["plan".to_string()]);
    assert!(get(&e, ip, now).allowed, "another calendar: a new count");
}
