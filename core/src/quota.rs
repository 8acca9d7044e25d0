//! [`Quota`]: how many requests (or cost units) a key may spend per period, and by
//! which algorithm. Every constructor validates, so a `Quota` that exists is sound:
//! no zero rate, no zero period, and no arithmetic on it can overflow.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, ParseProblem, QuotaProblem, Result, clip};

/// Longest span any quota may describe: 2^62 ns (about 146 years). Keeping every
/// span below this leaves headroom so `now + span` never overflows a `u64`.
pub(crate) const MAX_SPAN_NS: u64 = 1 << 62;

/// The limiting algorithm of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Token bucket as GCRA: `rate` per `period`, at most `burst` at once. O(1) memory
    /// (one `u64` per key), exact to the nanosecond. The default.
    #[default]
    Gcra,
    /// Sliding window log: never more than `limit` in any window of length `period`.
    /// Exact, but keeps one entry per admitted request: O(limit) memory per key.
    SlidingLog,
    /// Sliding window counter: two fixed windows, the previous one weighted by how
    /// much of it still overlaps the sliding window. O(1) memory, approximate: see
    /// [`guide`](crate::guide#sliding-window-counter-error-bound).
    SlidingWindow,
    /// Fixed window: at most `limit` per aligned window of length `period`.
    FixedWindow,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 4] = [
        Self::Gcra,
        Self::SlidingLog,
        Self::SlidingWindow,
        Self::FixedWindow,
    ];

    /// The canonical name used in configs, the CLI and the bindings.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(floodgate::Algorithm::SlidingWindow.name(), "sliding_window");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gcra => "gcra",
            Self::SlidingLog => "sliding_log",
            Self::SlidingWindow => "sliding_window",
            Self::FixedWindow => "fixed_window",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Accepts the canonical names and common aliases (`token_bucket`,
    /// `sliding_counter`, `fixed`), case-insensitively, with `-` for `_`.
    fn from_str(s: &str) -> Result<Self> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Ok(match norm.as_str() {
            "gcra" | "token_bucket" | "tokenbucket" => Self::Gcra,
            "sliding_log" | "sliding_window_log" | "log" => Self::SlidingLog,
            "sliding_window" | "sliding_counter" | "sliding_window_counter" => Self::SlidingWindow,
            "fixed_window" | "fixed" => Self::FixedWindow,
            _ => return Err(Error::UnknownAlgorithm { name: clip(s) }),
        })
    }
}

/// A validated limit: `rate` units per `period`, at most `burst` at once, by `algorithm`.
///
/// For the window algorithms the limit per window is `rate` and `burst == rate`.
///
/// # Examples
/// ```
/// use floodgate::{Algorithm, Quota};
/// let q: Quota = "10/s burst 50".parse()?;
/// assert_eq!((q.rate(), q.burst()), (10, 50));
/// let w = Quota::per_minute(100)?.with_algorithm(Algorithm::SlidingLog)?;
/// assert_eq!(w.limit(), 100);
/// # Ok::<(), floodgate::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    algorithm: Algorithm,
    rate: u64,
    period_ns: u64,
    burst: u64,
    /// GCRA emission interval: ceil(period / rate), so the admitted rate is never
    /// above the configured one (it is below by at most 1 ns per token).
    interval_ns: u64,
    /// A calendar quota (`policy/calendar.rs`): a fixed window of the unit's
    /// longest length, decided in calendar time.
    calendar: Option<CalendarUnit>,
}

/// The unit of a calendar quota (`"10000/month"` on a rule with `calendar = true`).
#[cfg_attr(not(feature = "policy"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CalendarUnit {
    Day,
    Week,
    Month,
}

const HOUR_NS: u64 = 3_600_000_000_000;
const DAY_NS: u64 = 24 * HOUR_NS;

#[cfg_attr(not(feature = "policy"), allow(dead_code))]
impl CalendarUnit {
    /// Reads `"day"`, `"week"`, `"month"` (and `d`, `w`, `mo`, plurals).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "d" | "day" | "days" => Self::Day,
            "w" | "week" | "weeks" => Self::Week,
            "mo" | "month" | "months" => Self::Month,
            _ => return None,
        })
    }

    /// The longest a window of the unit lasts, in ns (a day of 25 hours when a
    /// DST change moves clocks back; a week of 169 hours; a month of 31 days
    /// and an hour): the window length the stores count in.
    pub(crate) const fn span_ns(self) -> u64 {
        match self {
            Self::Day => 25 * HOUR_NS,
            Self::Week => 7 * DAY_NS + HOUR_NS,
            Self::Month => 31 * DAY_NS + HOUR_NS,
        }
    }

    /// The window's nominal length in seconds, for `RateLimit-Policy`'s `w`
    /// (a month is given as 30 days).
    pub(crate) const fn nominal_secs(self) -> u64 {
        match self {
            Self::Day => 86_400,
            Self::Week => 604_800,
            Self::Month => 2_592_000,
        }
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }
}

impl Quota {
    /// `rate` units per `period`, GCRA, burst = rate.
    ///
    /// # Errors
    /// [`Error::InvalidQuota`] if `rate` or `period` is zero, the rate is above one
    /// per nanosecond, or the period exceeds 2^62 ns.
    ///
    /// # Examples
    /// ```
    /// let q = floodgate::Quota::new(5, std::time::Duration::from_secs(10))?;
    /// assert_eq!(q.period().as_secs(), 10);
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn new(rate: u64, period: Duration) -> Result<Self> {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        Self::validated(Algorithm::Gcra, rate, period_ns, rate)
    }

    /// `rate` per second.
    ///
    /// # Errors
    /// As [`Quota::new`].
    ///
    /// # Examples
    /// ```
    /// assert_eq!(floodgate::Quota::per_second(100)?.to_string(), "100/s");
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn per_second(rate: u64) -> Result<Self> {
        Self::new(rate, Duration::from_secs(1))
    }

    /// `rate` per minute.
    ///
    /// # Errors
    /// As [`Quota::new`].
    ///
    /// # Examples
    /// ```
    /// assert_eq!(floodgate::Quota::per_minute(60)?.to_string(), "60/m");
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn per_minute(rate: u64) -> Result<Self> {
        Self::new(rate, Duration::from_secs(60))
    }

    /// `rate` per hour.
    ///
    /// # Errors
    /// As [`Quota::new`].
    ///
    /// # Examples
    /// ```
    /// assert_eq!(floodgate::Quota::per_hour(1000)?.to_string(), "1000/h");
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn per_hour(rate: u64) -> Result<Self> {
        Self::new(rate, Duration::from_secs(3600))
    }

    /// `rate` per day.
    ///
    /// # Errors
    /// As [`Quota::new`].
    ///
    /// # Examples
    /// ```
    /// assert_eq!(floodgate::Quota::per_day(5)?.to_string(), "5/d");
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn per_day(rate: u64) -> Result<Self> {
        Self::new(rate, Duration::from_secs(86_400))
    }

    /// The same quota with another burst (GCRA only).
    ///
    /// # Errors
    /// [`Error::InvalidQuota`] if `burst` is zero, if burst x interval overflows, or
    /// if the algorithm is a window algorithm and `burst != rate`.
    ///
    /// # Examples
    /// ```
    /// let q = floodgate::Quota::per_second(10)?.with_burst(50)?;
    /// assert_eq!(q.burst(), 50);
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn with_burst(self, burst: u64) -> Result<Self> {
        Self::validated(self.algorithm, self.rate, self.period_ns, burst)
    }

    /// The same quota with another algorithm.
    ///
    /// # Errors
    /// [`Error::InvalidQuota`] with [`QuotaProblem::BurstNeedsGcra`] when moving a
    /// quota whose burst differs from its rate to a window algorithm.
    ///
    /// # Examples
    /// ```
    /// use floodgate::{Algorithm, Quota};
    /// let q = Quota::per_second(10)?.with_algorithm(Algorithm::FixedWindow)?;
    /// assert_eq!(q.algorithm(), Algorithm::FixedWindow);
    /// # Ok::<(), floodgate::Error>(())
    /// ```
    pub fn with_algorithm(self, algorithm: Algorithm) -> Result<Self> {
        Self::validated(algorithm, self.rate, self.period_ns, self.burst)
    }

    fn validated(algorithm: Algorithm, rate: u64, period_ns: u64, burst: u64) -> Result<Self> {
        let bad = |problem| Err(Error::InvalidQuota { problem });
        if rate == 0 {
            return bad(QuotaProblem::ZeroRate);
        }
        if period_ns == 0 {
            return bad(QuotaProblem::ZeroPeriod);
        }
        if burst == 0 {
            return bad(QuotaProblem::ZeroBurst);
        }
        if period_ns > MAX_SPAN_NS {
            return bad(QuotaProblem::TooLong);
        }
        if algorithm != Algorithm::Gcra && burst != rate {
            return bad(QuotaProblem::BurstNeedsGcra);
        }
        if rate > period_ns {
            return bad(QuotaProblem::RateTooHigh);
        }
        let interval_ns = period_ns.div_ceil(rate);
        if algorithm == Algorithm::Gcra
            && burst
                .checked_mul(interval_ns)
                .is_none_or(|c| c > MAX_SPAN_NS)
        {
            return bad(QuotaProblem::TooLong);
        }
        Ok(Self {
            algorithm,
            rate,
            period_ns,
            burst,
            interval_ns,
            calendar: None,
        })
    }

    #[cfg_attr(not(feature = "policy"), allow(dead_code))]
    /// A calendar quota: at most `limit` per calendar `unit`, a fixed window of
    /// the unit's longest length in calendar time (`policy/calendar.rs`).
    pub(crate) fn calendar(limit: u64, unit: CalendarUnit) -> Result<Self> {
        let mut q = Self::validated(Algorithm::FixedWindow, limit, unit.span_ns(), limit)?;
        q.calendar = Some(unit);
        Ok(q)
    }

    /// The calendar unit of a calendar quota.
    #[cfg_attr(not(any(feature = "policy", feature = "shm")), allow(dead_code))]
    pub(crate) const fn calendar_unit(&self) -> Option<CalendarUnit> {
        self.calendar
    }

    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Units replenished per period (GCRA), or the limit per window.
    pub const fn rate(&self) -> u64 {
        self.rate
    }

    /// The period (GCRA) or window length.
    pub const fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }

    /// The most units admitted at once; equals `rate` for window algorithms.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// The `limit` reported in decisions and headers: the burst for GCRA, the
    /// per-window limit otherwise (the two are the same field).
    pub const fn limit(&self) -> u64 {
        self.burst
    }

    /// GCRA's emission interval: one unit is replenished every `interval`.
    pub const fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    pub(crate) const fn period_ns(&self) -> u64 {
        self.period_ns
    }

    pub(crate) const fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// How long a key's state under this quota can matter after its last use: once a
    /// key has been idle this long, forgetting it changes no future decision.
    pub(crate) fn state_lifetime_ns(&self) -> u64 {
        match self.algorithm {
            // TAT is at most now + burst x interval.
            Algorithm::Gcra => self.burst.saturating_mul(self.interval_ns),
            // The previous window still weighs during the current one.
            Algorithm::SlidingWindow => self.period_ns.saturating_mul(2),
            // Keys of a calendar rule are decided at calendar times up to a
            // window apart (their months begin on different days): a key
            // matters until every other key's time is two windows past its own.
            Algorithm::FixedWindow if self.calendar.is_some() => self.period_ns.saturating_mul(3),
            Algorithm::SlidingLog | Algorithm::FixedWindow => self.period_ns,
        }
    }
}

impl fmt::Display for Quota {
    /// The canonical string form, which parses back to the same quota (the algorithm
    /// is not part of it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 5] = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
        ];
        write!(f, "{}/", self.rate)?;
        if let Some(unit) = self.calendar {
            return write!(f, "{} (calendar)", unit.name());
        }
        match UNITS
            .iter()
            .find(|(ns, _)| self.period_ns.is_multiple_of(*ns))
        {
            Some((ns, unit)) if self.period_ns == *ns => f.write_str(unit)?,
            Some((ns, unit)) => write!(f, "{}{unit}", self.period_ns / ns)?,
            None => write!(f, "{}ns", self.period_ns)?,
        }
        if self.burst != self.rate {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// Nanoseconds in one `unit` (`ms`, `s`, `m`, `h`, `d` and long forms), if known.
fn unit_ns(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ns" => 1,
        "ms" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
        "h" | "hr" | "hour" | "hours" => 3_600_000_000_000,
        "d" | "day" | "days" => 86_400_000_000_000,
        "w" | "week" | "weeks" => 604_800_000_000_000,
        _ => return None,
    })
}

/// Parses a duration such as `"30s"`, `"15m"`, `"1h"`, `"500ms"` (a whole number
/// and a unit, as in quota strings). `None` if it is not one.
#[cfg_attr(not(feature = "policy"), allow(dead_code))] // used by the policy layer
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(digits);
    let n: u64 = n.parse().ok()?;
    Some(Duration::from_nanos(n.checked_mul(unit_ns(unit.trim())?)?))
}

impl FromStr for Quota {
    type Err = Error;

    /// Parses `"<count>/<period>[ burst <n>]"`: `"100/s"`, `"1000/hour"`,
    /// `"5/15m"`, `"10/s burst 50"`. Units: `ns`, `ms`, `s`, `m`, `h`, `d` and the
    /// long forms (`sec`, `second(s)`, `min`, `minute(s)`, `hour(s)`, `day(s)`).
    fn from_str(input: &str) -> Result<Self> {
        let fail = |problem| Error::QuotaParse {
            input: clip(input),
            problem,
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(fail(ParseProblem::Empty));
        }
        let (count, rest) = text
            .split_once('/')
            .ok_or_else(|| fail(ParseProblem::MissingSlash))?;
        let rate: u64 = count
            .trim()
            .parse()
            .map_err(|_| fail(ParseProblem::BadNumber))?;
        let mut words = rest.split_whitespace();
        let period = words
            .next()
            .ok_or_else(|| fail(ParseProblem::UnknownUnit))?;
        let digits = period
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period.len());
        let (multiplier, unit) = period.split_at(digits);
        let multiplier: u64 = if multiplier.is_empty() {
            1
        } else {
            multiplier
                .parse()
                .map_err(|_| fail(ParseProblem::BadNumber))?
        };
        let unit_ns = unit_ns(unit).ok_or_else(|| fail(ParseProblem::UnknownUnit))?;
        let period_ns = multiplier.saturating_mul(unit_ns);
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => rate,
            (Some(word), Some(n), None) if word.eq_ignore_ascii_case("burst") => {
                n.parse().map_err(|_| fail(ParseProblem::BadNumber))?
            }
            _ => return Err(fail(ParseProblem::TrailingInput)),
        };
        Self::validated(Algorithm::Gcra, rate, period_ns, burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn parse(s: &str) -> Result<Quota> {
        s.parse()
    }

    #[test]
    fn parses_human_strings() -> Result<()> {
        assert_eq!(parse("100/s")?, Quota::per_second(100)?);
        assert_eq!(parse("1000/hour")?, Quota::per_hour(1000)?);
        assert_eq!(
            parse(" 10/s burst 50 ")?,
            Quota::per_second(10)?.with_burst(50)?
        );
        assert_eq!(parse("5/15m")?.period(), Duration::from_secs(900));
        assert_eq!(parse("3/250ms")?.period(), Duration::from_millis(250));
        assert_eq!(parse("7/Day")?, Quota::per_day(7)?);
        Ok(())
    }

    #[test]
    fn display_round_trips() -> Result<()> {
        for s in [
            "100/s",
            "1000/h",
            "5/15m",
            "10/s burst 50",
            "3/250ms",
            "7/d",
            "9/1500ns",
        ] {
            assert_eq!(parse(s)?.to_string(), s);
            assert_eq!(parse(&parse(s)?.to_string())?, parse(s)?);
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_strings_with_the_problem() {
        let problem = |s: &str| match parse(s) {
            Err(Error::QuotaParse { problem, .. }) => Some(problem),
            _ => None,
        };
        assert_eq!(problem(""), Some(ParseProblem::Empty));
        assert_eq!(problem("100"), Some(ParseProblem::MissingSlash));
        assert_eq!(problem("x/s"), Some(ParseProblem::BadNumber));
        assert_eq!(problem("-1/s"), Some(ParseProblem::BadNumber));
        assert_eq!(
            problem("99999999999999999999/s"),
            Some(ParseProblem::BadNumber)
        );
        assert_eq!(problem("10/fortnight"), Some(ParseProblem::UnknownUnit));
        assert_eq!(problem("10/"), Some(ParseProblem::UnknownUnit));
        assert_eq!(problem("10/s burst"), Some(ParseProblem::TrailingInput));
        assert_eq!(problem("10/s burst x"), Some(ParseProblem::BadNumber));
        assert_eq!(problem("10/s boost 5"), Some(ParseProblem::TrailingInput));
        assert_eq!(
            parse("0/s").map_err(|e| e.kind()),
            Err(ErrorKind::InvalidQuota)
        );
    }

    #[test]
    fn validates_numbers() {
        let problem = |r: Result<Quota>| match r {
            Err(Error::InvalidQuota { problem }) => Some(problem),
            _ => None,
        };
        assert_eq!(problem(Quota::per_second(0)), Some(QuotaProblem::ZeroRate));
        assert_eq!(
            problem(Quota::new(1, Duration::ZERO)),
            Some(QuotaProblem::ZeroPeriod)
        );
        assert_eq!(
            problem(Quota::per_second(1).and_then(|q| q.with_burst(0))),
            Some(QuotaProblem::ZeroBurst)
        );
        assert_eq!(
            problem(Quota::new(2, Duration::from_nanos(1))),
            Some(QuotaProblem::RateTooHigh)
        );
        assert_eq!(
            problem(Quota::new(1, Duration::MAX)),
            Some(QuotaProblem::TooLong)
        );
        assert_eq!(
            problem(Quota::per_day(1).and_then(|q| q.with_burst(u64::MAX))),
            Some(QuotaProblem::TooLong)
        );
        assert_eq!(
            problem(
                Quota::per_second(1)
                    .and_then(|q| q.with_burst(2))
                    .and_then(|q| q.with_algorithm(Algorithm::FixedWindow))
            ),
            Some(QuotaProblem::BurstNeedsGcra)
        );
        assert!(Quota::new(u64::MAX >> 2, Duration::from_nanos(u64::MAX >> 2)).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2 days"), Some(Duration::from_secs(172_800)));
        for bad in ["", "s", "10", "10x", "-1s", "99999999999999999999d", "1.5s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn interval_rounds_up() -> Result<()> {
        let q = Quota::per_second(3)?;
        assert_eq!(q.interval_ns(), 333_333_334);
        Ok(())
    }

    #[test]
    fn algorithm_names() -> Result<()> {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>()?, a);
        }
        assert_eq!("Token-Bucket".parse::<Algorithm>()?, Algorithm::Gcra);
        assert_eq!(
            "leaky".parse::<Algorithm>().map_err(|e| e.kind()),
            Err(ErrorKind::UnknownAlgorithm)
        );
        Ok(())
    }
}
