//! The protocol of `limiter.lua`, typed: the call (keys, mode, per-quota
//! arguments) and the reply. The script's header comment is the wire format;
//! this module is its only Rust-side reader and writer.

use std::time::Duration;

use crate::quota::{Algorithm, Quota};

use super::units::Micros;

/// The script's source: loaded once per server and called by SHA.
pub(super) const SOURCE: &str = include_str!("limiter.lua");

/// The script, hashed once per process.
pub(super) fn limiter() -> &'static redis::Script {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(SOURCE));
    &SCRIPT
}

/// What a call does (`ARGV[3]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Decide and charge `cost` on every quota, all-or-nothing.
    Check,
    /// Decide one unit, write nothing.
    Peek,
    /// As `Check`, but charge up to the lease size (at least the cost).
    Lease,
    /// Give `cost` units back on every quota.
    Refund,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Self::Check => "c",
            Self::Peek => "p",
            Self::Lease => "l",
            Self::Refund => "r",
        }
    }
}

/// One quota's three arguments: algorithm, limit, and the period in µs (the
/// emission interval for GCRA, the window otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QuotaArgs {
    algorithm: &'static str,
    limit: u64,
    period: Micros,
}

impl QuotaArgs {
    pub(super) fn of(q: &Quota) -> Self {
        let (algorithm, period) = match q.algorithm() {
            Algorithm::Gcra => ("g", q.interval()),
            Algorithm::FixedWindow => ("f", q.period()),
            Algorithm::SlidingWindow => ("c", q.period()),
            Algorithm::SlidingLog => ("l", q.period()),
        };
        Self {
            algorithm,
            limit: q.limit(),
            period: Micros::ceil(period),
        }
    }
}

/// Whether a check on `quotas` keeps every quota's state in one key (the
/// script's `layout`: one read (in a merged call a SET NX GET, the whole
/// check on a key that is not there) and one write when admitted, whatever
/// the number of quotas): unless a quota is a
/// sliding log (a sorted set of its own) or the check is one GCRA quota (its
/// TAT alone, the script's fast path).
pub(super) fn packs(quotas: &[QuotaArgs]) -> bool {
    let one_gcra = matches!(quotas, [q] if q.algorithm == "g");
    !one_gcra && quotas.iter().all(|q| q.algorithm != "l")
}

/// The time a call decides at (`ARGV[1]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Now {
    /// The server's `TIME`.
    Server,
    /// An explicit time (a replay's, or a calendar rule's calendar time).
    At(Micros),
    /// A calendar rule's calendar time, worked out from the server's `TIME`.
    Calendar(CalendarClock),
}

/// A calendar rule's windows around the caller's now, so the script picks the
/// window on the server's clock: in µs of Unix time, the current window's
/// start and end and the next one's end, and per window (previous, current,
/// next) the offset from Unix time to calendar time (`policy/calendar.rs`).
/// The script reads `TIME` and adds the offset of the window it falls in: a
/// server clock up to a window away from the caller's still picks right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CalendarClock {
    pub start: u64,
    pub end: u64,
    pub next_end: u64,
    pub before: u64,
    pub during: u64,
    pub after: u64,
}

impl CalendarClock {
    /// `ARGV[1]`: `"k start end next_end before during after"`.
    fn arg(&self) -> String {
        format!(
            "k {} {} {} {} {} {}",
            self.start, self.end, self.next_end, self.before, self.during, self.after
        )
    }
}

/// Everything but the keys of one call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call<'a> {
    /// When the call decides.
    pub(super) now: Now,
    pub(super) cost: u64,
    pub(super) mode: Mode,
    pub(super) lease: u64,
    pub(super) quotas: &'a [QuotaArgs],
}

impl Call<'_> {
    /// Appends the call's arguments (`ARGV`) to `invocation`, whose keys are set.
    pub(super) fn args(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        match self.now {
            Now::Server => invocation.arg(-1),
            Now::At(m) => invocation.arg(m.script_arg()),
            Now::Calendar(c) => invocation.arg(c.arg()),
        };
        invocation
            .arg(self.cost.max(1))
            .arg(self.mode.arg())
            .arg(self.lease);
        for q in self.quotas {
            invocation.arg(q.algorithm).arg(q.limit).arg(q.period.0);
        }
    }
}

/// One check of a merged call, owned: it waits in the store's queue until a
/// call carries it (`ARGV[2] = 'B'` in the script's header).
#[derive(Debug, Clone)]
pub(super) struct Merged {
    keys: Vec<Vec<u8>>,
    cost: u64,
    mode: Mode,
    lease: u64,
    quotas: std::sync::Arc<[QuotaArgs]>,
}

impl Merged {
    /// A check of `cost` on `keys` (one per quota of `quotas`, or the one
    /// packed key: see [`packs`]), on the server's clock.
    pub(super) fn new(
        keys: Vec<Vec<u8>>,
        cost: u64,
        mode: Mode,
        lease: u64,
        quotas: std::sync::Arc<[QuotaArgs]>,
    ) -> Self {
        Self {
            keys,
            cost: cost.max(1),
            mode,
            lease,
            quotas,
        }
    }

    /// Whether `self` and `other` share their shape: the arguments a merged
    /// call sends once for all the checks of one limiter.
    fn same_shape(&self, other: &Self) -> bool {
        self.mode == other.mode
            && self.lease == other.lease
            && self.keys.len() == other.keys.len()
            && (std::sync::Arc::ptr_eq(&self.quotas, &other.quotas) || self.quotas == other.quotas)
    }
}

/// Most checks one merged call carries.
pub(super) const MERGE_MAX: usize = 64;

/// The invocation deciding `checks` in one call, in order, on the server's
/// clock. Each shape (a limiter's quotas, mode and lease) is sent once; a
/// check is its shape's number and its cost: two arguments, not 4 + 3 per
/// quota (Redis parses every argument of every check). When every check has
/// the one shape and one cost (one rule's checks, the common batch), that cost
/// is sent once and a check is its keys alone: the script parses no number
/// per check (a `tonumber` is ~0.3 µs inside Redis).
pub(super) fn merged<'a, 'b>(
    script: &'a redis::Script,
    checks: impl Iterator<Item = &'b Merged>,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    let mut shapes: Vec<&Merged> = Vec::new();
    // Each check's shape, 1-based, and its cost.
    let mut each: Vec<(usize, u64)> = Vec::new();
    for c in checks {
        for k in &c.keys {
            invocation.key(k.as_slice());
        }
        let shape = match shapes.iter().position(|s| s.same_shape(c)) {
            Some(i) => i + 1,
            None => {
                shapes.push(c);
                shapes.len()
            }
        };
        each.push((shape, c.cost));
    }
    let uniform = each.iter().all(|e| Some(e) == each.first());
    invocation
        .arg(-1)
        .arg(if uniform { "U" } else { "B" })
        .arg(each.len())
        .arg(shapes.len());
    for s in &shapes {
        invocation
            .arg(s.quotas.len())
            .arg(s.mode.arg())
            .arg(s.lease);
        for q in s.quotas.iter() {
            invocation.arg(q.algorithm).arg(q.limit).arg(q.period.0);
        }
    }
    match each.first() {
        Some(&(_, cost)) if uniform => {
            invocation.arg(cost);
        }
        _ => {
            for (shape, cost) in each {
                invocation.arg(shape).arg(cost);
            }
        }
    }
    invocation
}

/// A merged call's compact reply for a one-GCRA check admitted on a key that
/// was not there.
const NEW_KEY: i64 = -100;

/// The six values of a one-GCRA check of `c.cost` admitted on a full bucket.
fn new_key(c: &Merged) -> Option<Vec<i64>> {
    let [q] = &*c.quotas else { return None };
    if q.algorithm != "g" {
        return None;
    }
    let cost = i64::try_from(c.cost).ok()?;
    let remaining = i64::try_from(q.limit.checked_sub(c.cost)?).ok()?;
    let reset = i64::try_from(q.period.0.checked_mul(c.cost)?).ok()?;
    Some(vec![1, 1, remaining, 0, reset, cost])
}

/// Splits a merged call's reply into each check's six values (as a single
/// call returns them). A check's reply is its six values (the deciding quota
/// first, 1 or more), or a compact form: `0, remaining, reset` for a check
/// admitted with its cost charged on its first quota (`-q, remaining, reset`
/// when quota `q` >= 2 decided), `-1, remaining, retry, reset` for a denied
/// one-GCRA check, and `-100` alone for a one-GCRA check admitted on a key
/// that was not there (a full bucket: remaining is the limit less the cost,
/// reset the cost's intervals, worked out here from the check's quota): a
/// sixth to two thirds of the values for Redis to encode (about 0.1 µs each)
/// and us to parse. `None` when the reply does not match the checks.
pub(super) fn split_merged<'b>(
    values: &[i64],
    checks: impl Iterator<Item = &'b Merged>,
) -> Option<Vec<Vec<i64>>> {
    let mut out = Vec::new();
    let mut rest = values;
    for c in checks {
        let (reply, tail) = match rest {
            [NEW_KEY, tail @ ..] => (new_key(c)?, tail),
            [0, rem, reset, tail @ ..] => (
                vec![1, 1, *rem, 0, *reset, i64::try_from(c.cost).ok()?],
                tail,
            ),
            [-1, rem, retry, reset, tail @ ..] => (vec![1, 0, *rem, *retry, *reset, 0], tail),
            [q, rem, reset, tail @ ..] if *q <= -2 => (
                vec![-*q, 1, *rem, 0, *reset, i64::try_from(c.cost).ok()?],
                tail,
            ),
            [q, a, r, t, e, g, tail @ ..] if *q >= 1 => (vec![*q, *a, *r, *t, *e, *g], tail),
            _ => return None,
        };
        out.push(reply);
        rest = tail;
    }
    rest.is_empty().then_some(out)
}

/// The script's reply: `{quota (1-based), allowed, remaining, retry_after µs,
/// reset_after µs, units charged}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reply {
    /// The deciding quota, 0-based.
    pub(super) quota: usize,
    pub(super) allowed: bool,
    pub(super) remaining: u64,
    pub(super) retry_after: Micros,
    pub(super) reset_after: Micros,
    /// Units charged: the cost, more for a lease, 0 when denied.
    pub(super) granted: u64,
}

impl Reply {
    /// Parses a reply for a call on `quotas` quotas. Anything but six
    /// non-negative integers naming one of those quotas is a protocol error
    /// (another script under our SHA, a proxy mangling replies): the caller
    /// treats it as a failed round trip.
    pub(super) fn parse(values: &[i64], quotas: usize) -> redis::RedisResult<Self> {
        let bad = |what: &'static str| {
            redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected script reply",
                what.into(),
            ))
        };
        let &[quota, allowed, remaining, retry, reset, granted] = values else {
            return Err(bad("expected 6 integers"));
        };
        let nat = |v: i64| u64::try_from(v).map_err(|_| bad("a negative value"));
        let quota = usize::try_from(quota)
            .ok()
            .and_then(|q| q.checked_sub(1))
            .filter(|&q| q < quotas.max(1))
            .ok_or_else(|| bad("no such quota"))?;
        let allowed = match allowed {
            0 => false,
            1 => true,
            _ => return Err(bad("allowed is not 0 or 1")),
        };
        Ok(Self {
            quota,
            allowed,
            remaining: nat(remaining)?,
            retry_after: Micros(nat(retry)?),
            reset_after: Micros(nat(reset)?),
            granted: nat(granted)?,
        })
    }

    pub(super) fn retry_after(&self) -> Duration {
        self.retry_after.duration()
    }

    pub(super) fn reset_after(&self) -> Duration {
        self.reset_after.duration()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_args_use_the_interval_for_gcra_and_the_window_otherwise() {
        let per_minute = |a| {
            Quota::per_minute(60)
                .and_then(|q| q.with_algorithm(a))
                .map(|q| QuotaArgs::of(&q))
        };
        let g = per_minute(Algorithm::Gcra).ok();
        assert_eq!(
            g.map(|q| (q.algorithm, q.limit, q.period)),
            Some(("g", 60, Micros(1_000_000)))
        );
        let f = per_minute(Algorithm::FixedWindow).ok();
        assert_eq!(
            f.map(|q| (q.algorithm, q.period)),
            Some(("f", Micros(60_000_000)))
        );
        let c = per_minute(Algorithm::SlidingWindow).ok();
        assert_eq!(c.map(|q| q.algorithm), Some("c"));
        let l = per_minute(Algorithm::SlidingLog).ok();
        assert_eq!(l.map(|q| q.algorithm), Some("l"));
    }

    #[test]
    fn merged_replies_split_in_both_forms_or_not_at_all() {
        let quotas: std::sync::Arc<[QuotaArgs]> = std::sync::Arc::from(vec![]);
        let check = |cost| Merged::new(vec![b"k".to_vec()], cost, Mode::Check, 0, quotas.clone());
        let checks = [check(3), check(1), check(1), check(2)];
        // Allowed (compact), denied (compact), a full six-value reply,
        // allowed on its third quota (compact).
        let values = [0, 7, 900, -1, 0, 150, 400, 2, 1, 4, 0, 60, 1, -3, 5, 70];
        assert_eq!(
            split_merged(&values, checks.iter()),
            Some(vec![
                vec![1, 1, 7, 0, 900, 3],
                vec![1, 0, 0, 150, 400, 0],
                vec![2, 1, 4, 0, 60, 1],
                vec![3, 1, 5, 0, 70, 2],
            ])
        );
        // A one-GCRA check admitted on a new key: -100 alone, the rest from
        // its quota (10 per 1 ms interval, cost 3).
        let gcra: std::sync::Arc<[QuotaArgs]> = std::sync::Arc::from(vec![QuotaArgs {
            algorithm: "g",
            limit: 10,
            period: Micros(1000),
        }]);
        let new = Merged::new(vec![b"k".to_vec()], 3, Mode::Check, 0, gcra);
        assert_eq!(
            split_merged(&[NEW_KEY, 0, 7, 900], [&new, &checks[1]].into_iter()),
            Some(vec![vec![1, 1, 7, 0, 3000, 3], vec![1, 1, 7, 0, 900, 1]])
        );
        // Not for a check of another shape.
        assert_eq!(split_merged(&[NEW_KEY], checks[..1].iter()), None);
        for bad in [
            &values[..values.len() - 1], // short
            &[0, 7, 900, -1, 0, 150, 400, 2, 1, 4, 0, 60, 1, -3, 5, 70, 9][..], // long
            &[0, 7, 900, -1, 0, 150, 400, 2, 1, 4, 0, 60, 1, -3], // cut
            &[0, 7, 900, -1, 0, 150, 400, 0, 1, 4, 0, 60, 1, -3, 5, 70], // quota 0
        ] {
            assert_eq!(split_merged(bad, checks.iter()), None, "{bad:?}");
        }
    }

    /// A batch of one shape and one cost sends that cost once ('U'); any
    /// other batch sends each check's shape and cost ('B').
    #[test]
    fn a_uniform_batch_sends_its_cost_once() {
        let one: std::sync::Arc<[QuotaArgs]> = std::sync::Arc::from(vec![QuotaArgs {
            algorithm: "g",
            limit: 10,
            period: Micros(1000),
        }]);
        let check = |cost| Merged::new(vec![b"k".to_vec()], cost, Mode::Check, 0, one.clone());
        let script = limiter();
        let args = |checks: &[Merged]| {
            let debug = format!("{:?}", merged(script, checks.iter()));
            debug
                .split("args: ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.trim().parse::<usize>().ok())
        };
        // -1, the letter, checks, shapes; the shape (3 + 3 per quota); then
        // the one cost, or a shape and a cost per check.
        assert_eq!(args(&[check(2), check(2), check(2)]), Some(4 + 6 + 1));
        assert_eq!(args(&[check(2), check(1), check(2)]), Some(4 + 6 + 6));
        assert_eq!(args(&[check(1)]), Some(4 + 6 + 1));
        assert!(SOURCE.contains("ARGV[2] == 'U'"));
    }

    #[test]
    fn modes_are_the_scripts_letters() {
        let letters: Vec<_> = [Mode::Check, Mode::Peek, Mode::Lease, Mode::Refund]
            .map(Mode::arg)
            .to_vec();
        assert_eq!(letters, ["c", "p", "l", "r"]);
        for letter in letters {
            assert!(SOURCE.contains(&format!("mode == '{letter}'")) || letter == "p");
        }
    }

    #[test]
    fn replies_parse_or_are_protocol_errors() {
        assert_eq!(
            Reply::parse(&[2, 0, 0, 1500, 3000, 0], 2).ok(),
            Some(Reply {
                quota: 1,
                allowed: false,
                remaining: 0,
                retry_after: Micros(1500),
                reset_after: Micros(3000),
                granted: 0,
            })
        );
        let ok = Reply::parse(&[1, 1, 9, 0, 100, 1], 1).ok();
        assert_eq!(
            ok.map(|r| (r.allowed, r.remaining, r.granted)),
            Some((true, 9, 1))
        );
        for bad in [
            &[1, 1, 9, 0, 100][..],
            &[1, 1, 9, 0, 100, 1, 7],
            &[],
            &[0, 1, 9, 0, 100, 1],
            &[3, 1, 9, 0, 100, 1],
            &[1, 2, 9, 0, 100, 1],
            &[1, 1, -9, 0, 100, 1],
            &[1, 0, 0, -1, 100, 0],
        ] {
            let e = Reply::parse(bad, 2);
            assert!(
                e.as_ref()
                    .is_err_and(|e| e.kind() == redis::ErrorKind::Parse),
                "{bad:?}: {e:?}"
            );
        }
    }
}
