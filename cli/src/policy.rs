//! `floodgate check-config`, `floodgate simulate` and `floodgate bench --config`.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use floodgate::policy::{Engine, Request, Verdict};
use serde_json::{Map, Value, json};

use crate::bench::{group, run_workload};

/// Loads and validates a policy; prints the effective rules, then warnings about
/// what is valid but probably not meant (requests that no rule limits, a `/*`
/// that limits one segment, an unverified API key as an identity).
///
/// With `against` (the running policy), also what a reload from it to `path`
/// would do: the rules whose counters are kept, carried over to new quotas,
/// reset, added and removed, or
/// why the engine would refuse it.
pub fn check_config(path: &Path, against: Option<&Path>) -> Result<String, String> {
    let engine = Engine::from_path(path).map_err(|e| e.to_string())?;
    let mut out = format!("{}: ok\n\n{}", path.display(), engine.describe());
    for w in engine.warnings() {
        out.push_str(&format!("warning: {w}\n"));
    }
    if let Some(old) = against {
        let running = Engine::from_path(old).map_err(|e| format!("{}: {e}", old.display()))?;
        let report = running
            .reload_with(path)
            .map_err(|e| format!("a reload from {} would be refused: {e}", old.display()))?;
        out.push_str(&format!("\nas a reload of {}:\n{report}\n", old.display()));
    }
    Ok(out)
}

/// One trace line.
struct TraceLine {
    t_ms: f64,
    method: String,
    path: String,
    ip: Option<IpAddr>,
    headers: Vec<(String, String)>,
    /// The request body (text: JSON or a form), for rules keyed by a body field.
    body: Option<String>,
    /// The response: its status (default 200), its real cost, and when it
    /// ended (`duration_ms` after `t_ms`, default 0).
    status: u16,
    cost: Option<u64>,
    duration_ms: f64,
}

fn parse_line(text: &str) -> Result<TraceLine, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let field = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
    let t_ms = v
        .get("t_ms")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite() && *t >= 0.0)
        .ok_or("t_ms must be a number >= 0")?;
    let ip = match v.get("ip") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            s.parse::<IpAddr>()
                .map_err(|_| format!("ip {s:?} is not an IP address"))?,
        ),
        Some(_) => return Err("ip must be a string".into()),
    };
    let headers = match v.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_string()))
                    .ok_or(format!("header {k} must be a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("headers must be an object".into()),
    };
    let status = match v.get("status") {
        None | Some(Value::Null) => 200,
        Some(s) => s
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (100..=599).contains(s))
            .ok_or("status must be an HTTP status (100-599)")?,
    };
    let cost = match v.get("cost") {
        None | Some(Value::Null) => None,
        Some(c) => Some(c.as_u64().ok_or("cost must be a whole number >= 0")?),
    };
    let duration_ms = match v.get("duration_ms") {
        None | Some(Value::Null) => 0.0,
        Some(d) => d
            .as_f64()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .ok_or("duration_ms must be a number >= 0")?,
    };
    let body = match v.get("body") {
        None | Some(Value::Null) => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(_) => return Err("body must be a string (the JSON or form text)".into()),
    };
    Ok(TraceLine {
        t_ms,
        method: field("method").ok_or("method is missing")?,
        path: field("path").ok_or("path is missing")?,
        ip,
        headers,
        body,
        status,
        cost,
        duration_ms,
    })
}

fn verdict_json(t_ms: f64, v: &Verdict) -> Value {
    let headers: Map<String, Value> = v
        .headers
        .iter()
        .map(|(n, val)| (n.to_string(), Value::String(val.clone())))
        .collect();
    let ms = |d: std::time::Duration| d.as_nanos().div_ceil(1_000_000) as u64;
    // Every field of `Verdict::FIELDS` (durations in ms, rounded up).
    json!({
        "t_ms": t_ms,
        "allowed": v.allowed,
        "status": v.status,
        "reason": v.reason.code(),
        "retry_after_ms": ms(v.retry_after),
        "reset_after_ms": ms(v.reset_after),
        "headers": headers,
        "rule": v.rule.as_deref(),
        "identity": v.identity.as_deref(),
        "limit": v.limit,
        "remaining": v.remaining,
        "token_problem": v.token_problem.map(|p| p.code()),
        "authenticated": v.authenticated,
        "body": v.body(),
    })
}

/// Replays a trace through the policy, one JSON line out per line in. The trace's
/// clock drives the engine (`start_unix` + `t_ms`), and the seeds are fixed, so the
/// output is the same on every run. An admitted request that a rule must settle
/// (`count`, `cost_from`, `max_in_flight`) is settled when its response ends,
/// `duration_ms` after it arrived, with the line's `status` (default 200) and
/// `cost`: before any later line that arrives at or after that time, in order of
/// end time (then of arrival).
pub fn simulate(
    config: &Path,
    trace: &Path,
    start_unix: u64,
    out: &mut impl Write,
) -> Result<(), String> {
    let engine = Engine::from_path(config)
        .map_err(|e| e.to_string())?
        .with_fixed_seed(0x5EED);
    let file =
        std::fs::File::open(trace).map_err(|e| format!("cannot open {}: {e}", trace.display()))?;
    let mut running: Vec<Running> = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", trace.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let t = parse_line(&line).map_err(|e| format!("{}:{}: {e}", trace.display(), n + 1))?;
        let headers: Vec<(&str, &str)> = t
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let req = Request {
            method: &t.method,
            path: &t.path,
            client_ip: t.ip,
            headers: &headers,
            body: t.body.as_deref().map(str::as_bytes),
        };
        let at =
            |t_ms: f64| Duration::from_secs(start_unix) + Duration::from_secs_f64(t_ms / 1000.0);
        settle_due(&engine, &mut running, Some(t.t_ms), &at)?;
        let v = engine
            .check_request_at(&req, at(t.t_ms))
            .map_err(|e| format!("{}:{}: {e}", trace.display(), n + 1))?;
        writeln!(out, "{}", verdict_json(t.t_ms, &v)).map_err(|e| e.to_string())?;
        if v.settlement.is_some() {
            running.push((t.t_ms + t.duration_ms, n, t.status, t.cost, v));
        }
    }
    let at = |t_ms: f64| Duration::from_secs(start_unix) + Duration::from_secs_f64(t_ms / 1000.0);
    settle_due(&engine, &mut running, None, &at)
}

/// A request still running in a replay: (end, line, status, cost, verdict).
type Running = (f64, usize, u16, Option<u64>, Verdict);

/// Settles the requests of `running` that ended by `until` (all if `None`).
fn settle_due(
    engine: &Engine,
    running: &mut Vec<Running>,
    until: Option<f64>,
    at: &impl Fn(f64) -> Duration,
) -> Result<(), String> {
    running.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let due = running
        .iter()
        .take_while(|r| until.is_none_or(|u| r.0 <= u))
        .count();
    for (end, _, status, cost, v) in running.drain(..due) {
        engine
            .settle_at(&v, floodgate::policy::Settle { status, cost }, at(end))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `bench --config --reload-every MS`: the same workload without reloads and
/// with `Engine::reload` every `every` on another thread, in alternating
/// quarters of the duration after a warm-up (every client's key made first):
/// latency quantiles side by side, and what a reload took.
fn reload_pause(
    b: &PolicyBench<'_>,
    engine: &Engine,
    every: Duration,
    check: impl Fn(usize) -> Option<bool> + Sync,
) -> Result<String, String> {
    use crate::bench::Workload;
    use std::sync::atomic::{AtomicBool, Ordering};
    let quarter = b.duration / 4;
    let clients = b.clients.max(1);
    let _warm = run_workload(b.threads, clients, quarter, false, &check, String::new);
    let mut took = crate::histogram::Histogram::default();
    let (mut calm, mut during) = (Workload::default(), Workload::default());
    for _ in 0..2 {
        calm.add(&run_workload(
            b.threads,
            clients,
            quarter,
            false,
            &check,
            String::new,
        ));
        let stop = AtomicBool::new(false);
        let (w, failed) = std::thread::scope(|s| {
            let reloader = s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let t = std::time::Instant::now();
                    if let Err(e) = engine.reload() {
                        return Some(e.to_string());
                    }
                    took.record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    std::thread::sleep(every);
                }
                None
            });
            let w = run_workload(b.threads, clients, quarter, false, &check, String::new);
            stop.store(true, Ordering::Relaxed);
            (w, reloader.join())
        });
        match failed {
            Ok(None) => {}
            Ok(Some(e)) => return Err(format!("a reload failed: {e}")),
            Err(_) => return Err("the reloading thread panicked".into()),
        }
        during.add(&w);
    }
    let row = |name: &str, w: &Workload| {
        let checks = w.allowed + w.denied + w.errors;
        format!(
            "  {name:<16} {:>12} {:>10} {:>10} {:>10}\n",
            group((checks as f64 / w.elapsed.as_secs_f64().max(1e-9)) as u64),
            w.latency.quantile(0.5),
            w.latency.quantile(0.99),
            w.latency.quantile(0.999),
        )
    };
    Ok(format!(
        "floodgate bench --config {} --reload-every {} ms: {} thread(s), {:.1} s each, alternating\n\n  {:<16} {:>12} {:>10} {:>10} {:>10}\n{}{}\n  {} reloads, each p50 {:.1} us, max {:.1} us (compiled beside the running policy, then swapped)\n  p99.9 with reloads / without: {:.2}x\n",
        b.config.display(),
        every.as_secs_f64() * 1000.0,
        b.threads,
        (quarter * 2).as_secs_f64(),
        "",
        "requests/s",
        "p50 ns",
        "p99 ns",
        "p99.9 ns",
        row("without reloads", &calm),
        row("with reloads", &during),
        group(took.len()),
        took.quantile(0.5) as f64 / 1e3,
        took.max() as f64 / 1e3,
        during.latency.quantile(0.999) as f64 / calm.latency.quantile(0.999).max(1) as f64,
    ))
}

/// What `bench --config` sends.
pub struct PolicyBench<'a> {
    pub config: &'a Path,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub clients: usize,
    pub threads: usize,
    pub duration: Duration,
    pub progress: bool,
    /// Also run with the policy reloaded this often (same run, half the duration each).
    pub reload_every: Option<Duration>,
}

/// Benchmarks `check_request` on generated requests from `clients` client IPs.
pub fn bench(b: &PolicyBench<'_>) -> Result<String, String> {
    let engine = Engine::from_path(b.config).map_err(|e| e.to_string())?;
    // Clients from 100.64.0.0/10 (shared address space), away from typical allow lists.
    let ips: Vec<IpAddr> = (0..b.clients.max(1) as u32)
        .map(|i| IpAddr::from((0x6440_0000u32 | (i & 0x003F_FFFF)).to_be_bytes()))
        .collect();
    let headers: Vec<(&str, &str)> = b
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let check = |i: usize| {
        let req = Request {
            method: b.method,
            path: b.path,
            client_ip: ips.get(i).copied(),
            headers: &headers,
            body: None,
        };
        engine.check_request(&req).ok().map(|v| v.allowed)
    };
    if let Some(every) = b.reload_every {
        return reload_pause(b, &engine, every, check);
    }
    let w = run_workload(
        b.threads,
        ips.len(),
        b.duration,
        b.progress,
        check,
        String::new,
    );
    let checks = w.allowed + w.denied + w.errors;
    let pct = |n: u64| 100.0 * n as f64 / checks.max(1) as f64;
    Ok(format!(
        "floodgate bench --config\n\n  {:<14} {}\n  {:<14} {} {} from {} client IPs, {} thread(s), {:.1} s\n  {:<14} {}\n  {:<14} {}\n  {:<14} {} ns\n  {:<14} {} ns\n  {:<14} {} ({:.1}%)\n  {:<14} {} ({:.1}%)\n  {:<14} {}\n",
        "policy",
        b.config.display(),
        "workload",
        b.method,
        b.path,
        group(b.clients as u64),
        b.threads,
        w.elapsed.as_secs_f64(),
        "requests",
        group(checks),
        "requests/s",
        group((checks as f64 / w.elapsed.as_secs_f64().max(1e-9)) as u64),
        "latency p50",
        w.latency.quantile(0.5),
        "latency p99",
        w.latency.quantile(0.99),
        "allowed",
        group(w.allowed),
        pct(w.allowed),
        "denied",
        group(w.denied),
        pct(w.denied),
        "errors",
        group(w.errors),
    ))
}
