//! Calendar quotas (`calendar = true` on a rule): `"10000/month"`, `"500/week"`,
//! `"100/day"` counted in windows that begin at local midnight (days), on
//! Mondays (weeks) or on a month's anchor day (months, the 1st unless the
//! rule's `anchor_claim` gives a key its own day), in UTC or an IANA zone
//! (`time_zone`, from the time-zone database embedded by `jiff`).
//!
//! The stores know only windows of one length, so a calendar rule decides in
//! *calendar time*: window `k` of the calendar is mapped onto `[k·W, (k+1)·W)`
//! where `W` is the longest the unit can last (a day of 25 hours, when a
//! DST change moves the clock back; a week of 169 hours; a month of 31 days
//! and an hour), and an instant `t` of window `k` onto `k·W + (t - start_k)`.
//! The rule's limiter is a plain fixed window of length `W` at that time, so
//! every store (memory, shared memory, Redis) counts calendar windows exactly
//! with the code it already has; the times a decision reports (Retry-After,
//! reset) are mapped back to the real end of the window. On Redis the window
//! is picked on the server's clock: calendar time is Unix time plus an offset
//! per window, and the script is given the windows around the caller's now
//! with their offsets ([`Calendar::clock`]) and adds the one `TIME` falls in.
//!
//! Calendar time runs ahead of Unix time (`k·W` grows faster than the real
//! starts), so a store that judges a calendar key's expiry on Unix time (the
//! shared-memory table, probing for another rule) never frees it early. Keys
//! of different anchors are up to one window apart in calendar time: the
//! quota's state lifetime covers that (see `Quota::calendar`).

use std::time::Duration;

use arc_swap::ArcSwapOption;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::Value;

use super::identity::Claims;

pub(crate) use crate::quota::CalendarUnit as Unit;

#[cfg(test)]
const HOUR_NS: u64 = 3_600_000_000_000;

/// Parses a calendar quota: `"<limit>/<unit>"`, e.g. `"10000/month"`.
pub(crate) fn parse_quota(text: &str) -> Result<(u64, Unit), String> {
    let bad = || {
        format!(
            "{text:?} is not a calendar quota: write \"<count>/day\", \"<count>/week\" or \
             \"<count>/month\" (a calendar rule counts whole days, weeks or months)"
        )
    };
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let count: u64 = count.trim().replace('_', "").parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("{text:?}: the count must be at least 1"));
    }
    Ok((count, Unit::parse(unit).ok_or_else(bad)?))
}

/// One calendar window: its number (consecutive, from 1970) and its real
/// bounds in Unix ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub index: u64,
    pub start: u64,
    pub end: u64,
}

impl std::fmt::Display for Calendar {
    /// `calendar months in Europe/Paris, from each key's billing_day`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let zone = self.zone.iana_name().unwrap_or("UTC");
        write!(f, "calendar {}s in {zone}", self.unit.name())?;
        match &self.anchor_claim {
            Some(claim) => write!(f, ", from each key's {claim}"),
            None => Ok(()),
        }
    }
}

/// A rule's calendar: unit, zone and where a key's month begins.
#[derive(Debug)]
pub(crate) struct Calendar {
    unit: Unit,
    zone: TimeZone,
    /// A verified claim giving each key's day of the month (1-31).
    anchor_claim: Option<String>,
    /// The last window worked out, per anchor (index 1-31; 0 unused): a check
    /// inside it reads it (one `arc-swap` load) instead of asking the zone
    /// three times (measured: 1.6x a fixed window in Paris without it). A new
    /// window is stored once, at the boundary.
    last: [ArcSwapOption<Window>; 32],
}

impl Calendar {
    /// `zone`: an IANA name (`"Europe/Paris"`) or `"UTC"`.
    pub(crate) fn new(
        unit: Unit,
        zone: &str,
        anchor_claim: Option<String>,
    ) -> Result<Self, String> {
        let zone = TimeZone::get(zone).map_err(|_| {
            format!(
                "{zone:?} is not a time zone of the IANA database (e.g. \"Europe/Paris\", \"UTC\")"
            )
        })?;
        Ok(Self {
            unit,
            zone,
            anchor_claim,
            last: std::array::from_fn(|_| ArcSwapOption::empty()),
        })
    }

    /// The calendar of a rule with `calendar = true` (`None` without), or the
    /// field in error and why.
    pub(crate) fn of_rule(
        r: &super::config::RuleConfig,
        has_jwt: bool,
    ) -> Result<Option<Self>, (&'static str, String)> {
        let only = |field: &'static str| {
            Err((
                field,
                "applies only to a rule with calendar = true".to_string(),
            ))
        };
        if !r.calendar {
            if r.time_zone.is_some() {
                return only("time_zone");
            }
            if r.anchor_claim.is_some() {
                return only("anchor_claim");
            }
            return Ok(None);
        }
        if let Some(a) = &r.algorithm
            && a.parse::<crate::Algorithm>().ok() != Some(crate::Algorithm::FixedWindow)
        {
            return Err((
                "algorithm",
                "a calendar rule counts in calendar windows: leave algorithm out".into(),
            ));
        }
        // The unit of the first quota (of the rule or its first tier); the
        // others must have the same (checked as each is built).
        let first = r
            .quotas
            .first()
            .or_else(|| r.tiers.as_ref()?.quotas.values().find_map(|q| q.first()));
        let unit = match first.map(|q| parse_quota(q)) {
            Some(Ok((_, unit))) => unit,
            // Reported where the quota is.
            Some(Err(_)) | None => Unit::Day,
        };
        if let Some(claim) = &r.anchor_claim {
            if unit != Unit::Month {
                return Err((
                    "anchor_claim",
                    "anchors a month: the rule's quotas must be per month".into(),
                ));
            }
            if !has_jwt {
                return Err((
                    "anchor_claim",
                    format!("reads the verified claim {claim:?}, but there is no [jwt] section"),
                ));
            }
        }
        Self::new(
            unit,
            r.time_zone.as_deref().unwrap_or("UTC"),
            r.anchor_claim.clone(),
        )
        .map(Some)
        .map_err(|m| ("time_zone", m))
    }

    /// The quota for `text`, one of this calendar's rule's quotas.
    pub(crate) fn quota(&self, text: &str) -> Result<crate::Quota, String> {
        let (limit, unit) = parse_quota(text)?;
        if unit != self.unit {
            return Err(format!(
                "{text:?} is per {}, the rule's first quota per {}: a calendar rule counts \
                 in one unit (give each unit a rule of its own, with the same match and key)",
                unit.name(),
                self.unit.name()
            ));
        }
        crate::Quota::calendar(limit, unit).map_err(|e| e.to_string())
    }

    /// `now` in calendar time for a request with `claims` (for the charges of
    /// its key), and the real time left in the window.
    pub(crate) fn at_for(&self, now: Duration, claims: Option<&Claims>) -> CalendarAt {
        let anchor = self.anchor(claims);
        let (at, until_end) = self.at(now, anchor);
        CalendarAt {
            at,
            until_end,
            now,
            anchor,
        }
    }

    /// The windows around `at.now` for a Redis store to work its calendar time
    /// out from its own clock (`store/redis/script.rs`).
    #[cfg(feature = "redis")]
    pub(crate) fn clock(&self, at: &CalendarAt) -> crate::store::redis::CalendarClock {
        let span = self.unit.span_ns();
        let now = super::nanos(at.now);
        let during = self.window_cached(now, at.anchor);
        let before = self.window(during.start.saturating_sub(1), at.anchor);
        let after = self.window(during.end, at.anchor);
        // Calendar time = Unix time + the window's offset (index × W - start).
        let offset = |w: Window| w.index.saturating_mul(span).saturating_sub(w.start) / 1000;
        crate::store::redis::CalendarClock {
            start: during.start / 1000,
            end: during.end / 1000,
            next_end: after.end / 1000,
            before: offset(before),
            during: offset(during),
            after: offset(after),
        }
    }

    /// The day of the month a key's months begin on: the anchor claim's value
    /// (a number or a numeric string, 1-31) or the 1st.
    pub(crate) fn anchor(&self, claims: Option<&Claims>) -> u8 {
        let Some(name) = &self.anchor_claim else {
            return 1;
        };
        let day = match claims.and_then(|c| c.get(name)) {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        day.filter(|d| (1..=31).contains(d))
            .and_then(|d| u8::try_from(d).ok())
            .unwrap_or(1)
    }

    /// [`window`](Self::window), from the last one worked out when `now` is
    /// in it.
    fn window_cached(&self, now: u64, anchor: u8) -> Window {
        let Some(slot) = self.last.get(usize::from(anchor)) else {
            return self.window(now, anchor);
        };
        if let Some(w) = &*slot.load()
            && (w.start..w.end).contains(&now)
        {
            return **w;
        }
        let w = self.window(now, anchor);
        slot.store(Some(std::sync::Arc::new(w)));
        w
    }

    /// The calendar window holding `now` (Unix ns) for a key anchored on `anchor`.
    pub(crate) fn window(&self, now: u64, anchor: u8) -> Window {
        let ts = jiff::Timestamp::from_nanosecond(i128::from(now))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let today = self.zone.to_datetime(ts).date();
        let (first, next, index) = match self.unit {
            Unit::Day => (today, add_days(today, 1), day_number(today) + 1),
            Unit::Week => {
                let monday = add_days(today, -i64::from(today.weekday().to_monday_zero_offset()));
                // 1969-12-29 was a Monday: day -3.
                (
                    monday,
                    add_days(monday, 7),
                    (day_number(monday) + 3) / 7 + 1,
                )
            }
            Unit::Month => {
                let (y, m) = (i32::from(today.year()), i32::from(today.month()));
                let (y, m) = if today >= anchored(y, m, anchor) {
                    (y, m)
                } else {
                    previous(y, m)
                };
                let (ny, nm) = following(y, m);
                let index = (i64::from(y) - 1970) * 12 + i64::from(m - 1) + 1;
                (anchored(y, m, anchor), anchored(ny, nm, anchor), index)
            }
        };
        Window {
            index: u64::try_from(index).unwrap_or(0),
            start: self.midnight(first),
            end: self.midnight(next),
        }
    }

    /// `now` in calendar time, and the real time left until the window ends.
    pub(crate) fn at(&self, now: Duration, anchor: u8) -> (Duration, Duration) {
        let now_ns = super::nanos(now);
        let w = self.window_cached(now_ns, anchor);
        let span = self.unit.span_ns();
        let offset = now_ns.saturating_sub(w.start).min(span - 1);
        let at = w.index.saturating_mul(span).saturating_add(offset);
        (
            Duration::from_nanos(at),
            Duration::from_nanos(w.end.saturating_sub(now_ns)),
        )
    }

    /// The first instant of `date` in the zone (Unix ns): local midnight, or
    /// the first instant after it when a DST change skips midnight.
    fn midnight(&self, date: Date) -> u64 {
        self.zone
            .to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight()))
            .compatible()
            .ok()
            .and_then(|t| u64::try_from(t.as_nanosecond()).ok())
            .unwrap_or(0)
    }
}

/// A calendar rule's check time: `now`, the key's anchor, and what they give.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CalendarAt {
    /// Calendar time.
    pub at: Duration,
    /// Real time left in the window.
    pub until_end: Duration,
    // Read by `clock` (a Redis store).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    now: Duration,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    anchor: u8,
}

/// A calendar rule's answer with the times it reports, up to the window's end
/// in calendar time, replaced by the real time left: Retry-After and the reset
/// point at the window's real end.
pub(crate) fn with_real_times(
    mut checked: super::store::Checked,
    at: CalendarAt,
) -> super::store::Checked {
    let d = &mut checked.decision;
    if !d.retry_after.is_zero() {
        d.retry_after = at.until_end;
    }
    if !d.reset_after.is_zero() {
        d.reset_after = at.until_end;
    }
    checked
}

/// The `anchor`th of month `m` of year `y`, or the month's last day if it is
/// shorter (an anchor on the 31st begins February's window on the 28th/29th).
fn anchored(y: i32, m: i32, anchor: u8) -> Date {
    let first = Date::new(clamp_year(y), month(m), 1).unwrap_or(Date::MIN);
    let day = i8::try_from(anchor)
        .unwrap_or(1)
        .clamp(1, first.days_in_month());
    Date::new(first.year(), first.month(), day).unwrap_or(first)
}

fn previous(y: i32, m: i32) -> (i32, i32) {
    if m == 1 { (y - 1, 12) } else { (y, m - 1) }
}

fn following(y: i32, m: i32) -> (i32, i32) {
    if m == 12 { (y + 1, 1) } else { (y, m + 1) }
}

fn clamp_year(y: i32) -> i16 {
    i16::try_from(y.clamp(-9999, 9999)).unwrap_or(1970)
}

fn month(m: i32) -> i8 {
    i8::try_from(m.clamp(1, 12)).unwrap_or(1)
}

fn add_days(date: Date, days: i64) -> Date {
    date.checked_add(jiff::Span::new().days(days))
        .unwrap_or(date)
}

/// Days from 1970-01-01 to `date` (civil, proleptic Gregorian).
fn day_number(date: Date) -> i64 {
    // Howard Hinnant's days_from_civil.
    let (y, m, d) = (
        i64::from(date.year()),
        i64::from(date.month()),
        i64::from(date.day()),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> u64 {
        let ts: jiff::Timestamp = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        u64::try_from(ts.as_nanosecond()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn cal(unit: Unit, zone: &str) -> Calendar {
        Calendar::new(unit, zone, None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn day_numbers_match_jiff() {
        for (date, n) in [
            ("1970-01-01", 0),
            ("2000-03-01", 11_017),
            ("2024-02-29", 19_782),
            ("1969-12-31", -1),
        ] {
            let d: Date = date.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(day_number(d), n, "{date}");
        }
    }

    #[test]
    fn months_of_every_length_and_leap_years() {
        let c = cal(Unit::Month, "UTC");
        for (now, start, end) in [
            (
                "2025-01-15T12:00:00Z",
                "2025-01-01T00:00:00Z",
                "2025-02-01T00:00:00Z",
            ),
            (
                "2025-02-28T23:59:59Z",
                "2025-02-01T00:00:00Z",
                "2025-03-01T00:00:00Z",
            ),
            (
                "2024-02-29T10:00:00Z",
                "2024-02-01T00:00:00Z",
                "2024-03-01T00:00:00Z",
            ),
            (
                "2025-04-30T23:00:00Z",
                "2025-04-01T00:00:00Z",
                "2025-05-01T00:00:00Z",
            ),
            (
                "2025-12-31T23:59:59Z",
                "2025-12-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
        ] {
            let w = c.window(at(now), 1);
            assert_eq!((w.start, w.end), (at(start), at(end)), "{now}");
        }
        // Consecutive months have consecutive numbers, across a year.
        let dec = c.window(at("2025-12-10T00:00:00Z"), 1).index;
        assert_eq!(c.window(at("2026-01-10T00:00:00Z"), 1).index, dec + 1);
    }

    #[test]
    fn anchors_on_the_29th_to_31st_take_a_short_month_s_last_day() {
        let c = cal(Unit::Month, "UTC");
        for (anchor, now, start, end) in [
            (
                31,
                "2025-02-10T00:00:00Z",
                "2025-01-31T00:00:00Z",
                "2025-02-28T00:00:00Z",
            ),
            (
                31,
                "2025-02-28T00:00:00Z",
                "2025-02-28T00:00:00Z",
                "2025-03-31T00:00:00Z",
            ),
            (
                30,
                "2024-02-29T12:00:00Z",
                "2024-02-29T00:00:00Z",
                "2024-03-30T00:00:00Z",
            ),
            (
                29,
                "2025-02-28T12:00:00Z",
                "2025-02-28T00:00:00Z",
                "2025-03-29T00:00:00Z",
            ),
            (
                29,
                "2024-02-28T12:00:00Z",
                "2024-01-29T00:00:00Z",
                "2024-02-29T00:00:00Z",
            ),
            (
                31,
                "2025-04-30T00:00:00Z",
                "2025-04-30T00:00:00Z",
                "2025-05-31T00:00:00Z",
            ),
            (
                15,
                "2025-03-14T23:59:59Z",
                "2025-02-15T00:00:00Z",
                "2025-03-15T00:00:00Z",
            ),
        ] {
            let w = c.window(at(now), anchor);
            assert_eq!(
                (w.start, w.end),
                (at(start), at(end)),
                "anchor {anchor} at {now}"
            );
        }
    }

    #[test]
    fn days_and_weeks_in_a_zone_across_dst() {
        let paris = cal(Unit::Day, "Europe/Paris");
        // 2025-03-30: clocks go forward at 02:00, a day of 23 hours.
        let w = paris.window(at("2025-03-30T12:00:00Z"), 1);
        assert_eq!(
            (w.start, w.end),
            (at("2025-03-29T23:00:00Z"), at("2025-03-30T22:00:00Z"))
        );
        // 2025-10-26: back at 03:00, 25 hours, still within W.
        let w = paris.window(at("2025-10-26T12:00:00Z"), 1);
        assert_eq!(w.end - w.start, 25 * HOUR_NS);
        assert!(w.end - w.start <= Unit::Day.span_ns());
        // Local midnight, not UTC's: 23:30 UTC on the 1st is the 2nd in Paris.
        let w = paris.window(at("2025-06-01T23:30:00Z"), 1);
        assert_eq!(w.start, at("2025-06-01T22:00:00Z"));
        let week = cal(Unit::Week, "UTC");
        // 2025-06-04 is a Wednesday: the week began on Monday the 2nd.
        let w = week.window(at("2025-06-04T08:00:00Z"), 1);
        assert_eq!(
            (w.start, w.end),
            (at("2025-06-02T00:00:00Z"), at("2025-06-09T00:00:00Z"))
        );
        let next = week.window(at("2025-06-09T00:00:00Z"), 1);
        assert_eq!(next.index, w.index + 1);
    }

    #[test]
    fn calendar_time_keeps_each_window_apart_and_in_order() {
        for unit in [Unit::Day, Unit::Week, Unit::Month] {
            let c = cal(unit, "America/New_York");
            let span = unit.span_ns();
            let mut last = None;
            // Every 7 hours over two years: crosses every DST change and month end.
            let mut t = at("2024-01-01T00:00:00Z");
            while t < at("2026-01-01T00:00:00Z") {
                let (v, left) = c.at(Duration::from_nanos(t), 1);
                let v = super::super::nanos(v);
                let w = c.window(t, 1);
                assert_eq!(v / span, w.index, "{unit:?} at {t}");
                assert_eq!(super::super::nanos(left), w.end - t);
                if let Some((lv, lw)) = last {
                    assert!(v > lv, "calendar time goes forward");
                    assert!(w.index == lw || w.index == lw + 1, "no window skipped");
                }
                assert!(v > t, "calendar time runs ahead of Unix time");
                last = Some((v, w.index));
                t += 7 * HOUR_NS;
            }
        }
    }

    /// The windows a Redis store is given give, by the script's rule, the
    /// calendar time this host works out: on the caller's clock, and on a
    /// server clock on either side of a boundary.
    #[cfg(feature = "redis")]
    #[test]
    fn the_server_s_calendar_time_matches_the_caller_s() {
        let script = |k: &crate::store::redis::CalendarClock, s: u64| {
            if s < k.start {
                s + k.before
            } else if s < k.end {
                s + k.during
            } else {
                s.min(k.next_end - 1) + k.after
            }
        };
        for (unit, zone) in [
            (Unit::Month, "UTC"),
            (Unit::Day, "Europe/Paris"),
            (Unit::Week, "Asia/Tokyo"),
        ] {
            let c = cal(unit, zone);
            let now = at("2025-10-26T12:34:56Z");
            let here = c.at_for(Duration::from_nanos(now), None);
            let k = c.clock(&here);
            let us = |t: u64| t / 1000;
            assert_eq!(script(&k, us(now)), us(super::super::nanos(here.at)));
            // A server a little behind the window's start, or past its end,
            // lands in the neighbouring window's calendar time.
            for s in [k.start - 1, k.start, k.end - 1, k.end, k.end + 1_000_000] {
                let (v, _) = c.at(Duration::from_micros(s), 1);
                assert_eq!(
                    script(&k, s),
                    us(super::super::nanos(v)),
                    "{unit:?} server at {s}"
                );
            }
        }
    }

    #[test]
    fn quotas_and_zones_are_checked() {
        assert_eq!(parse_quota("10000/month"), Ok((10_000, Unit::Month)));
        assert_eq!(parse_quota("500 / week"), Ok((500, Unit::Week)));
        assert_eq!(parse_quota("1_000/day"), Ok((1000, Unit::Day)));
        for bad in ["10/hour", "10/s", "month", "0/day", "-1/day", "x/day"] {
            assert!(parse_quota(bad).is_err(), "{bad}");
        }
        assert!(Calendar::new(Unit::Day, "Mars/Olympus", None).is_err());
        let c = Calendar::new(Unit::Month, "UTC", Some("billing_day".into()))
            .unwrap_or_else(|e| panic!("{e}"));
        let claims = |v: Value| {
            let mut m = Claims::new();
            m.insert("billing_day".into(), v);
            m
        };
        assert_eq!(c.anchor(Some(&claims(Value::from(17)))), 17);
        assert_eq!(c.anchor(Some(&claims(Value::from("31")))), 31);
        assert_eq!(c.anchor(Some(&claims(Value::from(32)))), 1);
        assert_eq!(c.anchor(Some(&claims(Value::from(0)))), 1);
        assert_eq!(c.anchor(None), 1);
    }
}
