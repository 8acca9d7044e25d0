//! `floodgate bench --store redis://...`: the Redis store on a real server, beside a
//! raw `INCR` baseline on the same kind of connection, in the same run.
//!
//! Two phases, each half of `--duration`:
//! - sequential: one thread, one blocking connection, one check at a time (the
//!   round-trip-bound figure);
//! - concurrent: `--in-flight` checks at once from tokio tasks on one multiplexed
//!   connection (requests pipelined on one socket; a Cluster's async
//!   connection, one socket per node).
//!
//! A Cluster's baseline is `INCR` on redis-rs's Cluster connections (blocking,
//! then async).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodgate::{Quota, RedisLimiter};

use crate::bench::{group, make_keys};
use crate::histogram::Histogram;

/// What to run.
pub struct RedisBench<'a> {
    pub url: &'a str,
    pub quotas: Vec<Quota>,
    pub keys: usize,
    pub duration: Duration,
    pub cost: u64,
    pub in_flight: usize,
    pub lease: u64,
    pub json: bool,
}

struct Phase {
    checks: u64,
    allowed: u64,
    elapsed: Duration,
    /// Every call's latency.
    latency: Histogram,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.checks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn latency_json(&self) -> serde_json::Value {
        let h = &self.latency;
        serde_json::json!({"p50_ns": h.quantile(0.5), "p99_ns": h.quantile(0.99), "p100_ns": h.max()})
    }

    /// `p50 102.4 us, p99 180.2 us, p100 1.3 ms`
    fn latency_line(&self) -> String {
        let h = &self.latency;
        format!(
            "p50 {}, p99 {}, p100 {}",
            micros(h.quantile(0.5)),
            micros(h.quantile(0.99)),
            micros(h.max())
        )
    }
}

fn micros(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} us", ns as f64 / 1e3)
    }
}

/// What Redis has spent so far: in scripts (`INFO commandstats`, `EVALSHA` and
/// `EVAL`) and in all (`INFO cpu`, user + system), in µs.
#[derive(Debug, Clone, Copy)]
struct Spent {
    scripts: u64,
    cpu: u64,
}

fn spent(conn: &mut redis::Connection) -> Option<Spent> {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(conn).ok()?;
    let scripts = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split(',')
                .find_map(|f| f.strip_prefix("usec="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum();
    let cpu: String = redis::cmd("INFO").arg("cpu").query(conn).ok()?;
    let seconds = |field: &str| {
        cpu.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let cpu = seconds("used_cpu_user:")? + seconds("used_cpu_sys:")?;
    Some(Spent {
        scripts,
        cpu: (cpu * 1e6) as u64,
    })
}

/// Redis's time per check between two readings: (in scripts, CPU in all).
fn server_per_check(a: Option<Spent>, b: Option<Spent>, checks: u64) -> Option<(f64, f64)> {
    let (a, b) = (a?, b?);
    let n = checks.max(1) as f64;
    Some((
        b.scripts.saturating_sub(a.scripts) as f64 / n,
        b.cpu.saturating_sub(a.cpu) as f64 / n,
    ))
}

fn limiter(b: &RedisBench<'_>) -> Result<RedisLimiter, String> {
    let urls: Vec<&str> = b.url.split(',').collect();
    let mut builder = if urls.len() > 1 {
        RedisLimiter::cluster_builder(&urls)
    } else {
        RedisLimiter::builder(b.url)
    };
    // Generous timeouts: a benchmark measures Redis, not the fail mode.
    builder = builder
        .connect_timeout(Duration::from_secs(1))
        .command_timeout(Duration::from_secs(1))
        .pool_size(1)
        .prefix("fg-bench")
        .deny_cache(false);
    if b.lease > 1 {
        builder = builder.lease(b.lease, Duration::from_secs(1));
    }
    for q in &b.quotas {
        builder = builder.quota(*q);
    }
    builder.build().map_err(|e| e.to_string())
}

fn sequential(
    d: Duration,
    mut f: impl FnMut(u64) -> Result<bool, String>,
) -> Result<Phase, String> {
    let mut hist = Histogram::default();
    let start = Instant::now();
    let (mut checks, mut allowed) = (0u64, 0u64);
    while start.elapsed() < d {
        for _ in 0..64 {
            let t = Instant::now();
            allowed += u64::from(f(checks)?);
            hist.record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            checks += 1;
        }
    }
    Ok(Phase {
        checks,
        allowed,
        elapsed: start.elapsed(),
        latency: hist,
    })
}

/// Runs `in_flight` tasks, each awaiting `f(i)` in a loop, for `d`.
async fn concurrent<F, Fut>(d: Duration, in_flight: usize, f: F) -> Result<Phase, String>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<bool, String>> + Send,
{
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let (checks, allowed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight.max(1))
        .map(|t| {
            let (f, stop, checks, allowed) =
                (f.clone(), stop.clone(), checks.clone(), allowed.clone());
            tokio::spawn(async move {
                let mut i = t as u64 * 7919;
                let mut hist = Histogram::default();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let ok = f(i).await?;
                    hist.record(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    checks.fetch_add(1, Ordering::Relaxed);
                    allowed.fetch_add(u64::from(ok), Ordering::Relaxed);
                    i += 1;
                }
                Ok::<Histogram, String>(hist)
            })
        })
        .collect();
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    let mut latency = Histogram::default();
    for t in tasks {
        latency.merge(&t.await.map_err(|e| e.to_string())??);
    }
    Ok(Phase {
        checks: checks.load(Ordering::Relaxed),
        allowed: allowed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        latency,
    })
}

/// The `i`th key of the round (keys are not empty: `make_keys` of at least 1).
fn key_at(i: u64, keys: &[String]) -> &str {
    #[allow(clippy::indexing_slicing)] // i % len < len
    &keys[(i % keys.len() as u64) as usize]
}

/// The raw `INCR` baseline's `i`th key.
fn incr_key(i: u64, keys: &[String]) -> String {
    format!("{{fg-bench-incr:{}}}", key_at(i, keys))
}

/// Raw `INCR`s on `conn` (multiplexed, or a Cluster's async connection),
/// `in_flight` at once: the concurrent phase's baseline.
async fn incr_concurrent<C>(
    d: Duration,
    in_flight: usize,
    conn: C,
    keys: Arc<Vec<String>>,
) -> Result<Phase, String>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    concurrent(d, in_flight, move |i| {
        let mut conn = conn.clone();
        let key = incr_key(i, &keys);
        async move {
            redis::cmd("INCR")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .map(|_| true)
                .map_err(|e| e.to_string())
        }
    })
    .await
}

pub fn run(b: &RedisBench<'_>) -> Result<String, String> {
    let limiter = Arc::new(limiter(b)?);
    let keys = Arc::new(make_keys(b.keys.max(1)));
    let half = b.duration / 2;
    let cluster = b.url.contains(',');
    let first_url = b.url.split(',').next().unwrap_or(b.url).to_string();
    // Sequential: raw INCR, then checks, on one blocking connection each (a
    // Cluster's INCR on redis-rs's blocking Cluster connection).
    let client = redis::Client::open(first_url.as_str()).map_err(|e| e.to_string())?;
    let cluster_client = if cluster {
        Some(
            redis::cluster::ClusterClient::new(b.url.split(',').collect::<Vec<_>>())
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    // Redis's counters (INFO commandstats): standalone only.
    let mut conn = if cluster {
        None
    } else {
        Some(client.get_connection().map_err(|e| e.to_string())?)
    };
    let mut incr_conn: Box<dyn redis::ConnectionLike> = match &cluster_client {
        Some(c) => Box::new(c.get_connection().map_err(|e| e.to_string())?),
        None => Box::new(client.get_connection().map_err(|e| e.to_string())?),
    };
    let incr_seq = sequential(half / 2, |i| {
        redis::cmd("INCR")
            .arg(incr_key(i, &keys))
            .query::<i64>(incr_conn.as_mut())
            .map(|_| true)
            .map_err(|e| e.to_string())
    })?;
    let trips0 = limiter.store().round_trips();
    let spent0 = conn.as_mut().and_then(spent);
    let seq = sequential(half / 2, |i| {
        limiter
            .check(key_at(i, &keys), b.cost)
            .map(|d| d.allowed)
            .map_err(|e| e.to_string())
    })?;
    let trips = limiter.store().round_trips() - trips0;
    let spent1 = conn.as_mut().and_then(spent);
    // Concurrent: in_flight tasks on one multiplexed connection.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (incr_conc, spent2, conc) = rt.block_on(async {
        let incr_conc = match &cluster_client {
            Some(c) => {
                let ac = c.get_async_connection().await.map_err(|e| e.to_string())?;
                incr_concurrent(half / 2, b.in_flight, ac, keys.clone()).await?
            }
            None => {
                let mc = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                incr_concurrent(half / 2, b.in_flight, mc, keys.clone()).await?
            }
        };
        // After the INCR phase, so that its CPU is not the checks'.
        let spent2 = conn.as_mut().and_then(spent);
        let (l, k, cost) = (limiter.clone(), keys.clone(), b.cost);
        let conc = concurrent(half / 2, b.in_flight, move |i| {
            let (l, k) = (l.clone(), k.clone());
            async move {
                l.check_async(key_at(i, &k), cost)
                    .await
                    .map(|d| d.allowed)
                    .map_err(|e| e.to_string())
            }
        })
        .await?;
        Ok::<_, String>((incr_conc, spent2, conc))
    })?;
    let spent3 = conn.as_mut().and_then(spent);
    // Redis's own time per check, from its counters (standalone only).
    let (seq_server, conc_server) = (
        server_per_check(spent0, spent1, seq.checks),
        server_per_check(spent2, spent3, conc.checks),
    );
    let fallbacks = limiter.fallbacks();
    let merged = limiter.store().merged_calls();
    let merged_calls: u64 = merged.iter().sum();
    let per_check = trips as f64 / seq.checks.max(1) as f64;
    if b.json {
        let phase = |p: &Phase| serde_json::json!({"checks": p.checks, "allowed": p.allowed, "checks_per_sec": p.rate(), "latency": p.latency_json()});
        return Ok(format!(
            "{}\n",
            serde_json::json!({
                "store": b.url, "quotas": b.quotas.len(), "keys": b.keys, "in_flight": b.in_flight, "lease": b.lease,
                "sequential": phase(&seq), "concurrent": phase(&conc),
                "incr_sequential": phase(&incr_seq), "incr_concurrent": phase(&incr_conc),
                "round_trips_per_check": per_check,
                "server_us_per_check": {"sequential": seq_server.map(|s| s.0), "concurrent": conc_server.map(|s| s.0)},
                "server_cpu_us_per_check": {"sequential": seq_server.map(|s| s.1), "concurrent": conc_server.map(|s| s.1)},
                "merged_calls_by_size": {"1": merged[0], "2-3": merged[1], "4-7": merged[2], "8-15": merged[3], "16-31": merged[4], "32-63": merged[5], "64": merged[6]},
                "fallbacks": fallbacks,
            })
        ));
    }
    let mut out = String::new();
    let ratio = |p: &Phase, b: &Phase| {
        format!(
            "  ({:.2}x raw INCR's {}/s)",
            p.rate() / b.rate(),
            group(b.rate() as u64)
        )
    };
    out.push_str(&format!(
        "floodgate bench --store {}: {} quota(s), {} keys, cost {}{}\n",
        b.url,
        b.quotas.len(),
        group(b.keys as u64),
        b.cost,
        if b.lease > 1 {
            format!(", leases of {}", b.lease)
        } else {
            String::new()
        }
    ));
    out.push_str(&format!(
        "  sequential (1 connection):      {:>10}/s{}\n",
        group(seq.rate() as u64),
        ratio(&seq, &incr_seq)
    ));
    let latency = |p: &Phase, b: &Phase| {
        format!(
            "    latency {} (raw INCR: {})\n",
            p.latency_line(),
            b.latency_line()
        )
    };
    out.push_str(&latency(&seq, &incr_seq));
    let server_line = |(scripts, cpu): (f64, f64)| {
        format!("Redis per check: {scripts:.1} us in scripts, {cpu:.1} us of CPU in all")
    };
    let server =
        |us: Option<(f64, f64)>| us.map_or(String::new(), |us| format!("; {}", server_line(us)));
    out.push_str(&format!(
        "    {per_check:.3} round trips per check{}\n",
        server(seq_server)
    ));
    out.push_str(&format!(
        "  concurrent ({} in flight, {}): {:>10}/s{}\n",
        b.in_flight,
        if cluster {
            "one async Cluster connection"
        } else {
            "1 multiplexed connection"
        },
        group(conc.rate() as u64),
        ratio(&conc, &incr_conc)
    ));
    out.push_str(&latency(&conc, &incr_conc));
    if merged_calls > 0 {
        let share = |n: u64| 100.0 * n as f64 / merged_calls as f64;
        out.push_str(&format!(
            "    merged calls: {} for {} checks ({:.1} per call{}); by size 1: {:.0}%, 2-3: {:.0}%, 4-7: {:.0}%, 8-15: {:.0}%, 16-31: {:.0}%, 32-63: {:.0}%, 64: {:.0}%\n",
            group(merged_calls),
            group(conc.checks),
            conc.checks as f64 / merged_calls as f64,
            server(conc_server),
            share(merged[0]),
            share(merged[1]),
            share(merged[2]),
            share(merged[3]),
            share(merged[4]),
            share(merged[5]),
            share(merged[6]),
        ));
    } else if let Some(us) = conc_server {
        out.push_str(&format!("    {}\n", server_line(us)));
    }
    out.push_str(&format!(
        "  allowed {} of {} checks; fallbacks {fallbacks}\n",
        group(seq.allowed + conc.allowed),
        group(seq.checks + conc.checks)
    ));
    if fallbacks > 0 {
        return Err(format!(
            "{out}{fallbacks} checks fell back: Redis did not answer in time"
        ));
    }
    Ok(out)
}
