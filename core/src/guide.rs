//! # Guide
//!
//! ## Time
//!
//! Every algorithm works on integer nanoseconds. A limiter reads its [`Clock`](crate::Clock)
//! once per check ([`DefaultClock`](crate::DefaultClock): the TSC through `quanta`);
//! `check_at` takes the time explicitly. A clock that goes backwards never panics
//! and never admits more than the quota: GCRA uses `max(tat, now)`, the window
//! algorithms stay in the latest window they have seen.
//!
//! ## Token bucket (GCRA)
//!
//! A quota of `rate` per `period` with `burst` has emission interval
//! `T = ceil(period / rate)` (rounded up: never faster than configured) and
//! capacity `burst * T`. Per key it stores one `u64`, the theoretical arrival time
//! `tat`. A request of cost `n` at `now` is admitted iff
//! `max(tat, now) + n*T - now <= burst*T`, and then `tat` becomes
//! `max(tat, now) + n*T`. Over any interval of length `t` it admits at most
//! `burst + t / T` units. A denied request's `retry_after` is exact: retried at
//! `now + retry_after` it is admitted, one nanosecond earlier it is not.
//!
//! ## Sliding window log
//!
//! Exact: a request of cost `n` is admitted iff the costs admitted in
//! `(now - W, now]` plus `n` are at most `limit`, so no window of length `W` ever
//! holds more than `limit`. It keeps one 16-byte entry per admitted request still
//! in the window (requests at the same nanosecond share one), so memory is
//! O(limit) per key: up to `16 * limit` bytes. Its `limit` is capped by
//! [`LimiterBuilder::max_log_limit`](crate::LimiterBuilder::max_log_limit)
//! (default 10,000, i.e. at most 160 KB per key).
//!
//! ## Sliding window counter error bound
//!
//! The counter keeps the counts of the current aligned window and of the one
//! before (O(1) memory) and estimates the last `W` as
//! `ceil(prev * (W - off) / W) + curr`, where `off` is the time into the current
//! window. A request fits iff `estimate + n <= limit`. Guarantees, each checked by a
//! property test:
//!
//! - an aligned window `[kW, (k+1)W)` never admits more than `limit`;
//! - a sliding window of length `W` admits less than `2 * limit`; the excess over
//!   `limit` is at most `prev * off / W`, which is only reached when the previous
//!   window's traffic all came at its very end;
//! - if the previous window's traffic was spread evenly, the estimate is exact up
//!   to rounding, and rounding is always up (it never admits extra).
//!
//! Use the log when the bound matters, the counter when memory does.
//!
//! ## Fixed window
//!
//! At most `limit` per aligned window `[kW, (k+1)W)`. Simple and cheap, but up to
//! `2 * limit` can pass around a window boundary.
//!
//! ## Several quotas
//!
//! A limiter with several quotas (say `10/s` and `1000/h`) admits a request only if
//! every quota admits it, and then charges all of them; otherwise it charges none.
//! The decision reports the denying quota with the longest wait, or, if allowed,
//! the quota with the fewest units left.
//!
//! ## Cost
//!
//! `cost` is in units of the quota. `0` is a peek: it charges nothing and reports
//! whether one unit would be admitted. A cost above some quota's limit (burst) is
//! an [`Error::CostExceedsBurst`](crate::Error::CostExceedsBurst), not a denial: it
//! could never succeed, so retrying is pointless.
//!
//! ## Memory and eviction
//!
//! Keys are stored as a randomly seeded 64-bit hash, so a key costs the same
//! whatever its length: with one GCRA quota (or one fixed or sliding window whose
//! window index and counts pack into 64 bits) an entry is 16 bytes, with two GCRA
//! quotas 32 (one 128-bit cell), and a table
//! 44-88% full costs 19-39 bytes per key. The store is split into shards, each with
//! two generations; when a shard's young generation is full the old one is dropped
//! whole, which forgets the least recently used keys in O(1). Keys idle longer than
//! their state matters (GCRA: `burst * T`; windows: `W`, or `2W` for the counter)
//! are forgotten as shards rotate, which changes no decision. So memory stays
//! below `max_keys` keys whatever an attacker sends, with no background thread.
//!
//! Two distinct keys share state only if their 64-bit hashes collide: with a
//! million keys held, about one chance in 3.7 * 10^7, and an attacker cannot aim for
//! it without the seed.
