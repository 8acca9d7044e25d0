//! How front ends log events by default, decided once here: every event at
//! debug level, and at info or warning only **state changes** (a Redis store
//! falling back, recovering) and **one summary per interval** (counts per kind
//! and rule). Logging every denial at warning level wrote 794,619 lines (31 MB)
//! in a short flood and cost 15% of the throughput; a summary says the same in
//! one line per interval.
//!
//! [`EventSummary::record`] counts an event and returns the summary of the
//! interval that just ended, if one did (summaries piggyback on events: with no
//! events there is nothing to report). Counting takes a short lock on a small
//! table (one row per kind and rule, so bounded by the policy), never the host
//! language's lock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::events::{Event, EventKind};

/// A log level, as every front end maps it to its logger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Per-request events (denials, bans, refused tokens...).
    Debug,
    /// Summaries without bans, and a store recovering.
    Info,
    /// Summaries with bans, and a store falling back.
    Warning,
}

impl EventKind {
    /// The level a front end logs this event at by default: state changes at
    /// warning (fallback) or info (recovery), per-request events at debug (they
    /// reach info/warning as [`EventSummary`] lines).
    pub fn log_level(self) -> LogLevel {
        match self {
            Self::StoreFallback => LogLevel::Warning,
            Self::StoreRecovered => LogLevel::Info,
            Self::Denied
            | Self::ShadowDenied
            | Self::Banned
            | Self::TokenInvalid
            | Self::DenyListed
            | Self::Unauthorized
            | Self::ConcurrencyLimited
            | Self::Settled => LogLevel::Debug,
        }
    }

    /// Whether the event is a state change, logged as it happens rather than
    /// summarised.
    pub fn is_state_change(self) -> bool {
        matches!(self, Self::StoreFallback | Self::StoreRecovered)
    }
}

/// Counts of per-request events over one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// How long the interval was.
    pub interval: Duration,
    /// (kind, rule, count), in order of first occurrence.
    pub counts: Vec<(EventKind, Option<Arc<str>>, u64)>,
}

impl Summary {
    /// Warning if any client was banned, else info.
    pub fn level(&self) -> LogLevel {
        if self.counts.iter().any(|(k, _, _)| *k == EventKind::Banned) {
            LogLevel::Warning
        } else {
            LogLevel::Info
        }
    }

    /// Events counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, _, n)| n).sum()
    }
}

/// `floodgate: 12 s: denied 794619 (login 600000, api 194619); banned 3 (login 3)`
impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "floodgate: last {} s:", self.interval.as_secs().max(1))?;
        let mut kinds: Vec<EventKind> = Vec::new();
        for (k, _, _) in &self.counts {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
        for (i, kind) in kinds.iter().enumerate() {
            let rows = self.counts.iter().filter(|(k, _, _)| k == kind);
            let total: u64 = rows.clone().map(|(_, _, n)| n).sum();
            write!(
                f,
                "{} {} {total} (",
                if i == 0 { "" } else { ";" },
                kind.code()
            )?;
            for (j, (_, rule, n)) in rows.enumerate() {
                let sep = if j == 0 { "" } else { ", " };
                write!(f, "{sep}{} {n}", rule.as_deref().unwrap_or("-"))?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// Counts per-request events and hands out one [`Summary`] per interval.
#[derive(Debug)]
pub struct EventSummary {
    interval: Duration,
    origin: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Start of the current interval, since `origin`.
    start: Duration,
    counts: Vec<(EventKind, Option<Arc<str>>, u64)>,
}

impl EventSummary {
    /// Summaries every `interval` (at least one second).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval: interval.max(Duration::from_secs(1)),
            origin: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    /// Counts `event` (state changes are not counted: log them as they come)
    /// and returns the previous interval's summary if it has ended.
    pub fn record(&self, event: &Event<'_>) -> Option<Summary> {
        self.record_at(event, self.origin.elapsed())
    }

    /// [`record`](Self::record) at `now`, a time since this summary was made
    /// (for tests and replays).
    pub fn record_at(&self, event: &Event<'_>, now: Duration) -> Option<Summary> {
        let mut s = self.state.lock();
        let done = if now.saturating_sub(s.start) >= self.interval && !s.counts.is_empty() {
            let interval = now.saturating_sub(s.start);
            Some(Summary {
                interval,
                counts: std::mem::take(&mut s.counts),
            })
        } else {
            None
        };
        if done.is_some() || s.counts.is_empty() {
            s.start = now;
        }
        if !event.kind.is_state_change() {
            match s
                .counts
                .iter_mut()
                .find(|(k, r, _)| *k == event.kind && r.as_deref() == event.rule.as_deref())
            {
                Some((_, _, n)) => *n = n.saturating_add(1),
                None => s
                    .counts
                    .push((event.kind, event.rule.as_deref().map(Arc::from), 1)),
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, rule: &str) -> Event<'_> {
        Event {
            kind,
            rule: Some(rule.into()),
            client_ip: None,
            key: None,
            status: 429,
            retry_after: Duration::ZERO,
            token_problem: None,
        }
    }

    #[test]
    fn one_summary_per_interval_with_counts_per_kind_and_rule() {
        let s = EventSummary::new(Duration::from_secs(10));
        let t = Duration::from_secs;
        for i in 0..1000u64 {
            let rule = if i % 4 == 0 { "api" } else { "login" };
            assert_eq!(
                s.record_at(&event(EventKind::Denied, rule), t(i % 10)),
                None
            );
        }
        assert_eq!(s.record_at(&event(EventKind::Banned, "login"), t(9)), None);
        let fallback = event(EventKind::StoreFallback, "api");
        let summary = s.record_at(&fallback, t(12)).expect("the interval ended");
        assert_eq!(summary.total(), 1001);
        assert_eq!(summary.level(), LogLevel::Warning);
        assert_eq!(
            summary.to_string(),
            "floodgate: last 12 s: denied 1000 (api 250, login 750); banned 1 (login 1)"
        );
        // The state change was not counted; a quiet interval yields nothing.
        assert_eq!(s.record_at(&event(EventKind::Denied, "api"), t(30)), None);
        let next = s.record_at(&event(EventKind::Denied, "api"), t(41));
        assert_eq!(
            next.map(|n| (n.total(), n.level())),
            Some((1, LogLevel::Info))
        );
    }

    #[test]
    fn levels() {
        assert_eq!(EventKind::StoreFallback.log_level(), LogLevel::Warning);
        assert_eq!(EventKind::StoreRecovered.log_level(), LogLevel::Info);
        for k in EventKind::ALL {
            assert_eq!(k.is_state_change(), k.log_level() != LogLevel::Debug);
        }
    }
}
