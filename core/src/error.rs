//! Typed errors. A denial is never an error: it is a [`Decision`](crate::Decision)
//! with `allowed == false`. An [`Error`] means the call itself was wrong (a bad
//! quota, an empty or oversized key, a cost no quota could ever admit).
//!
//! Every variant has a stable [`ErrorKind`] whose [`code`](ErrorKind::code) string
//! is mapped one-to-one into C result codes, Python exceptions and Node error codes.

use std::fmt;

/// The result type of every fallible Floodgate call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when building or calling a limiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A quota's numbers cannot describe a limit (zero rate, zero period, overflow...).
    #[error("invalid quota: {problem}")]
    InvalidQuota {
        /// What is wrong with it.
        problem: QuotaProblem,
    },
    /// A human quota string such as `"10/s burst 50"` could not be parsed.
    #[error("cannot parse quota {input:?}: {problem}")]
    QuotaParse {
        /// The text that was given (truncated to 64 bytes).
        input: Box<str>,
        /// What is wrong with it.
        problem: ParseProblem,
    },
    /// An algorithm name that Floodgate does not know.
    #[error(
        "unknown algorithm {name:?} (expected gcra, sliding_log, sliding_window or fixed_window)"
    )]
    UnknownAlgorithm {
        /// The name that was given (truncated to 64 bytes).
        name: Box<str>,
    },
    /// The key is empty.
    #[error("key is empty")]
    EmptyKey,
    /// The key is longer than the limiter's `max_key_bytes`.
    #[error("key is {len} bytes, more than the maximum of {max}")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The cost is larger than what quota number `quota` could ever admit at once,
    /// so the request could never succeed: retrying would not help.
    #[error("cost {cost} exceeds the burst of {burst} of quota {quota}")]
    CostExceedsBurst {
        /// The requested cost.
        cost: u64,
        /// The most that quota admits at once.
        burst: u64,
        /// Index of the quota in the limiter.
        quota: usize,
    },
    /// A cost that is not a whole number in `0..=u64::MAX` (bindings only: Rust's
    /// `u64` cannot be negative or NaN).
    #[error("invalid cost: {problem}")]
    InvalidCost {
        /// What is wrong with it.
        problem: CostProblem,
    },
    /// A limiter needs at least one quota.
    #[error("a limiter needs at least one quota")]
    NoQuotas,
    /// More quotas than one limiter checks at once.
    #[error("{count} quotas given, at most {max} are allowed in one limiter")]
    TooManyQuotas {
        /// How many were given.
        count: usize,
        /// The maximum.
        max: usize,
    },
    /// A sliding-log quota keeps one entry per admitted request, so its limit is capped.
    #[error("sliding log limit {limit} is above the ceiling of {max} (raise max_log_limit)")]
    LogLimitTooLarge {
        /// The quota's limit.
        limit: u64,
        /// The configured ceiling.
        max: u64,
    },
    /// A policy (TOML file, JSON text or a binding's dict) that cannot be used. The
    /// location names the field (`rule[2] "login".quotas[0]`), and the line where
    /// the source is TOML or JSON text.
    #[error("invalid policy at {location}{}: {message}", line_suffix(*.line))]
    InvalidConfig {
        /// The field, as a path from the document's root.
        location: Box<str>,
        /// 1-based line in the source text, where known.
        line: Option<u32>,
        /// What is wrong.
        message: Box<str>,
    },
    /// A request field a binding passed in cannot be used (an unparsable client
    /// IP, an empty method...).
    #[error("invalid request {field}: {problem}")]
    InvalidRequest {
        /// The field (`client_ip`, `method`, `path`, `headers`).
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The shared store (Redis) cannot be reached, or refused the connection
    /// (wrong password, not Redis). Raised at startup; checks use the fail mode.
    #[error("{store} is unavailable: {message}")]
    StoreUnavailable {
        /// Which store (`redis`).
        store: &'static str,
        /// What the client library reported.
        message: Box<str>,
    },
    /// A shared-memory table file that this process cannot use as it is: made
    /// for other quotas, another slot count or another layout, by another build,
    /// or corrupt. Nothing was changed in it.
    #[error("shared-memory table {path}: {problem}")]
    StoreMismatch {
        /// The table file.
        path: Box<str>,
        /// What differs.
        problem: Box<str>,
    },
    /// A verdict was settled a second time (`Engine::settle`): the first
    /// settlement stands; nothing was refunded or charged again.
    #[error("the verdict was already settled")]
    AlreadySettled,
    /// A limiter option is out of range.
    #[error("invalid option {option}: {problem}")]
    InvalidOption {
        /// The option's name (`max_keys`, `max_key_bytes`...).
        option: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// The value of one of an error's [fields](Error::fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorField {
    /// A count, size or line number.
    Number(u64),
    /// Text: a location, a problem, a detail.
    Text(String),
}

fn line_suffix(line: Option<u32>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// What is wrong with a quota's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaProblem {
    /// The rate (or window limit) is zero.
    ZeroRate,
    /// The period (or window) is zero.
    ZeroPeriod,
    /// The burst is zero.
    ZeroBurst,
    /// More than one request per nanosecond.
    RateTooHigh,
    /// Period, window or burst x interval exceeds about 146 years of nanoseconds.
    TooLong,
    /// Only the token bucket (GCRA) has a burst separate from its rate.
    BurstNeedsGcra,
}

impl fmt::Display for QuotaProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroRate => "the rate must be at least 1",
            Self::ZeroPeriod => "the period must be longer than zero",
            Self::ZeroBurst => "the burst must be at least 1",
            Self::RateTooHigh => "the rate is above one request per nanosecond",
            Self::TooLong => "the period, or burst x interval, is longer than 2^62 ns (146 years)",
            Self::BurstNeedsGcra => {
                "only the gcra (token bucket) algorithm has a burst different from its rate"
            }
        })
    }
}

/// What is wrong with a quota string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseProblem {
    /// Nothing to parse.
    Empty,
    /// No `/` between the count and the period.
    MissingSlash,
    /// A count that is not a whole number in range.
    BadNumber,
    /// A period unit other than ms, s, m, h, d, w (or their long forms).
    UnknownUnit,
    /// Text after the quota that is not `burst <n>`.
    TrailingInput,
}

impl fmt::Display for ParseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "it is empty",
            Self::MissingSlash => "expected <count>/<period>, e.g. \"100/s\" or \"1000/hour\"",
            Self::BadNumber => "expected a whole number",
            Self::UnknownUnit => {
                "unknown unit (use ms, s, m, h, d, w or second, minute, hour, day, week; \
                 months by the calendar need calendar = true on the rule)"
            }
            Self::TrailingInput => {
                "unexpected text after the quota (only \"burst <n>\" may follow)"
            }
        })
    }
}

/// What is wrong with a cost passed in from another language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CostProblem {
    /// Below zero.
    Negative,
    /// NaN or infinite.
    NotFinite,
    /// Has a fractional part.
    NotInteger,
    /// Above `u64::MAX` (or the binding's safe-integer range).
    TooLarge,
}

impl fmt::Display for CostProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Negative => "the cost is negative",
            Self::NotFinite => "the cost is NaN or infinite",
            Self::NotInteger => "the cost is not a whole number",
            Self::TooLarge => "the cost is too large",
        })
    }
}

/// The kind of an [`Error`], without its data. `Copy`, with a stable code string.
///
/// Deliberately *not* `#[non_exhaustive]`: the C ABI and the bindings match it
/// exhaustively (result numbers, exception classes), so a new kind fails to
/// compile until every front end maps it, instead of falling into a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`Error::InvalidQuota`].
    InvalidQuota,
    /// [`Error::QuotaParse`].
    QuotaParse,
    /// [`Error::UnknownAlgorithm`].
    UnknownAlgorithm,
    /// [`Error::EmptyKey`].
    EmptyKey,
    /// [`Error::KeyTooLong`].
    KeyTooLong,
    /// [`Error::CostExceedsBurst`].
    CostExceedsBurst,
    /// [`Error::InvalidCost`].
    InvalidCost,
    /// [`Error::NoQuotas`].
    NoQuotas,
    /// [`Error::TooManyQuotas`].
    TooManyQuotas,
    /// [`Error::LogLimitTooLarge`].
    LogLimitTooLarge,
    /// [`Error::InvalidOption`].
    InvalidOption,
    /// [`Error::InvalidConfig`].
    InvalidConfig,
    /// [`Error::InvalidRequest`].
    InvalidRequest,
    /// [`Error::StoreUnavailable`].
    StoreUnavailable,
    /// [`Error::StoreMismatch`].
    StoreMismatch,
    /// [`Error::AlreadySettled`].
    AlreadySettled,
}

impl ErrorKind {
    /// Every kind, so bindings can prove each one has its own mapping.
    pub const ALL: &'static [ErrorKind] = &[
        Self::InvalidQuota,
        Self::QuotaParse,
        Self::UnknownAlgorithm,
        Self::EmptyKey,
        Self::KeyTooLong,
        Self::CostExceedsBurst,
        Self::InvalidCost,
        Self::NoQuotas,
        Self::TooManyQuotas,
        Self::LogLimitTooLarge,
        Self::InvalidOption,
        Self::InvalidConfig,
        Self::InvalidRequest,
        Self::StoreUnavailable,
        Self::StoreMismatch,
        Self::AlreadySettled,
    ];

    /// The stable snake_case code (`cost_exceeds_burst`), reused as
    /// `ERR_FG_COST_EXCEEDS_BURST` in Node and `FG_RESULT_COST_EXCEEDS_BURST` in C.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(floodgate::ErrorKind::KeyTooLong.code(), "key_too_long");
    /// ```
    pub const fn code(self) -> &'static str {
        match self {
            Self::InvalidQuota => "invalid_quota",
            Self::QuotaParse => "quota_parse",
            Self::UnknownAlgorithm => "unknown_algorithm",
            Self::EmptyKey => "empty_key",
            Self::KeyTooLong => "key_too_long",
            Self::CostExceedsBurst => "cost_exceeds_burst",
            Self::InvalidCost => "invalid_cost",
            Self::NoQuotas => "no_quotas",
            Self::TooManyQuotas => "too_many_quotas",
            Self::LogLimitTooLarge => "log_limit_too_large",
            Self::InvalidOption => "invalid_option",
            Self::InvalidConfig => "invalid_config",
            Self::InvalidRequest => "invalid_request",
            Self::StoreUnavailable => "store_unavailable",
            Self::StoreMismatch => "store_mismatch",
            Self::AlreadySettled => "already_settled",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Error {
    /// This error's kind.
    ///
    /// # Examples
    /// ```
    /// use floodgate::{Error, ErrorKind};
    /// assert_eq!(Error::EmptyKey.kind(), ErrorKind::EmptyKey);
    /// ```
    pub const fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidQuota { .. } => ErrorKind::InvalidQuota,
            Self::QuotaParse { .. } => ErrorKind::QuotaParse,
            Self::UnknownAlgorithm { .. } => ErrorKind::UnknownAlgorithm,
            Self::EmptyKey => ErrorKind::EmptyKey,
            Self::KeyTooLong { .. } => ErrorKind::KeyTooLong,
            Self::CostExceedsBurst { .. } => ErrorKind::CostExceedsBurst,
            Self::InvalidCost { .. } => ErrorKind::InvalidCost,
            Self::NoQuotas => ErrorKind::NoQuotas,
            Self::TooManyQuotas { .. } => ErrorKind::TooManyQuotas,
            Self::LogLimitTooLarge { .. } => ErrorKind::LogLimitTooLarge,
            Self::InvalidOption { .. } => ErrorKind::InvalidOption,
            Self::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            Self::InvalidRequest { .. } => ErrorKind::InvalidRequest,
            Self::StoreUnavailable { .. } => ErrorKind::StoreUnavailable,
            Self::StoreMismatch { .. } => ErrorKind::StoreMismatch,
            Self::AlreadySettled => ErrorKind::AlreadySettled,
        }
    }

    /// Shorthand for `self.kind().code()`.
    pub const fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// The error's structured fields by name (`len`, `max`, `cost`, `burst`,
    /// `quota`, `location`, `line`, `detail`, `field`, `problem`...), which every
    /// front end attaches to its error object as they are (Node properties,
    /// Python exception attributes), so none keeps its own copy of this table.
    /// A `message` field is named `detail`, so it never hides the message.
    ///
    /// # Examples
    /// ```
    /// use floodgate::{Error, ErrorField};
    /// let e = Error::KeyTooLong { len: 300, max: 256 };
    /// assert_eq!(e.fields(), vec![("len", ErrorField::Number(300)), ("max", ErrorField::Number(256))]);
    /// ```
    pub fn fields(&self) -> Vec<(&'static str, ErrorField)> {
        let n = |v: u64| ErrorField::Number(v);
        let size = |v: usize| ErrorField::Number(v as u64);
        let t = |v: &dyn fmt::Display| ErrorField::Text(v.to_string());
        match self {
            Self::InvalidQuota { problem } => vec![("problem", t(problem))],
            Self::QuotaParse { input, problem } => {
                vec![("input", t(input)), ("problem", t(problem))]
            }
            Self::UnknownAlgorithm { name } => vec![("name", t(name))],
            Self::EmptyKey | Self::NoQuotas | Self::AlreadySettled => Vec::new(),
            Self::KeyTooLong { len, max } => vec![("len", size(*len)), ("max", size(*max))],
            Self::CostExceedsBurst { cost, burst, quota } => {
                vec![
                    ("cost", n(*cost)),
                    ("burst", n(*burst)),
                    ("quota", size(*quota)),
                ]
            }
            Self::InvalidCost { problem } => vec![("problem", t(problem))],
            Self::TooManyQuotas { count, max } => {
                vec![("count", size(*count)), ("max", size(*max))]
            }
            Self::LogLimitTooLarge { limit, max } => vec![("limit", n(*limit)), ("max", n(*max))],
            Self::InvalidConfig {
                location,
                line,
                message,
            } => {
                let mut f = vec![("location", t(location)), ("detail", t(message))];
                if let Some(l) = line {
                    f.push(("line", n(u64::from(*l))));
                }
                f
            }
            Self::InvalidRequest { field, problem } => {
                vec![("field", t(field)), ("problem", t(problem))]
            }
            Self::StoreUnavailable { store, message } => {
                vec![("store", t(store)), ("detail", t(message))]
            }
            Self::StoreMismatch { path, problem } => {
                vec![("path", t(path)), ("problem", t(problem))]
            }
            Self::InvalidOption { option, problem } => {
                vec![("option", t(option)), ("problem", t(problem))]
            }
        }
    }

    /// Validates a cost given as a float by a binding (JavaScript numbers, Python floats).
    ///
    /// # Errors
    /// [`Error::InvalidCost`] for negative, NaN, infinite, fractional or too-large values.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(floodgate::Error::cost_from_f64(3.0), Ok(3));
    /// assert!(floodgate::Error::cost_from_f64(f64::NAN).is_err());
    /// ```
    pub fn cost_from_f64(cost: f64) -> Result<u64> {
        let problem = if !cost.is_finite() {
            CostProblem::NotFinite
        } else if cost < 0.0 {
            CostProblem::Negative
        } else if cost.fract() != 0.0 {
            CostProblem::NotInteger
        } else if cost >= 18_446_744_073_709_551_616.0 {
            CostProblem::TooLarge
        } else {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            return Ok(cost as u64);
        };
        Err(Error::InvalidCost { problem })
    }
}

/// Truncates user text kept inside an error, so a huge input cannot make a huge error.
pub(crate) fn clip(text: &str) -> Box<str> {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let codes: HashSet<_> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        for code in codes {
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
        }
    }

    #[test]
    fn costs_from_floats() {
        assert_eq!(Error::cost_from_f64(0.0), Ok(0));
        assert_eq!(
            Error::cost_from_f64(-1.0).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidCost)
        );
        assert_eq!(
            Error::cost_from_f64(1.5),
            Err(Error::InvalidCost {
                problem: CostProblem::NotInteger
            })
        );
        assert_eq!(
            Error::cost_from_f64(f64::INFINITY),
            Err(Error::InvalidCost {
                problem: CostProblem::NotFinite
            })
        );
        assert_eq!(
            Error::cost_from_f64(1e30),
            Err(Error::InvalidCost {
                problem: CostProblem::TooLarge
            })
        );
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let s = "é".repeat(100);
        let c = clip(&s);
        assert!(c.len() <= 64);
        assert!(s.starts_with(&*c));
    }
}
