//! `floodgate bench`: a standalone benchmark of the embedded in-memory limiter.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodgate::{Algorithm, Limiter, Quota};

use crate::histogram::Histogram;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub quotas: Vec<Quota>,
    pub keys: usize,
    pub threads: usize,
    pub duration: Duration,
    pub cost: u64,
    pub max_keys: usize,
    pub progress: bool,
    /// Keep the state in this shared-memory table instead of in the process.
    pub shared_memory: Option<std::path::PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub checks: u64,
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram,
    pub keys_held: usize,
    pub evicted: u64,
    pub memory_bytes: usize,
    pub capacity: usize,
}

impl BenchReport {
    pub fn checks_per_sec(&self) -> f64 {
        self.checks as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn bytes_per_key(&self) -> f64 {
        self.memory_bytes as f64 / self.keys_held.max(1) as f64
    }
}

/// Keys of 19-24 bytes, like `client:000000000042`.
pub fn make_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("client:{i:012}")).collect()
}

/// A fast, seedable generator for picking keys uniformly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Sample one check in this many for latency (each sample reads the TSC twice).
const SAMPLE_EVERY: u64 = 8;
const BATCH: u64 = 1024;

/// What the worker threads measured.
#[derive(Debug, Default)]
pub struct Workload {
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency: Histogram,
}

impl Workload {
    /// Adds another run's counts, time and latencies.
    pub fn add(&mut self, other: &Workload) {
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latency.merge(&other.latency);
    }
}

/// Runs `check(thread, key_index)` on `threads` threads for `duration`, picking key
/// indexes uniformly from `0..keys`; `check` returns `Some(allowed)` or `None` on
/// error. `status` prints the progress line's last column.
pub fn run_workload<F, S>(
    threads: usize,
    keys: usize,
    duration: Duration,
    progress: bool,
    check: F,
    status: S,
) -> Workload
where
    F: Fn(usize) -> Option<bool> + Sync,
    S: Fn() -> String,
{
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let tsc = quanta::Clock::new();
    let start = Instant::now();
    let results: Vec<Workload> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|t| {
                let (stop, done, tsc, check) = (&stop, &done, &tsc, &check);
                s.spawn(move || {
                    let mut rng = XorShift(
                        0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                    );
                    let mut w = Workload::default();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..BATCH {
                            let key = (rng.next() % keys.max(1) as u64) as usize;
                            let result = if i.is_multiple_of(SAMPLE_EVERY) {
                                let t0 = tsc.raw();
                                let r = check(key);
                                w.latency.record(tsc.delta_as_nanos(t0, tsc.raw()));
                                r
                            } else {
                                check(key)
                            };
                            match result {
                                Some(true) => w.allowed += 1,
                                Some(false) => w.denied += 1,
                                None => w.errors += 1,
                            }
                            i += 1;
                        }
                        done.fetch_add(BATCH, Ordering::Relaxed);
                    }
                    w
                })
            })
            .collect();
        let mut last = (start, 0u64);
        let interactive = std::io::stderr().is_terminal();
        while start.elapsed() < duration {
            std::thread::sleep(
                Duration::from_millis(100).min(duration.saturating_sub(start.elapsed())),
            );
            if progress && last.0.elapsed() >= Duration::from_secs(1) {
                let n = done.load(Ordering::Relaxed);
                let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                let line = format!(
                    "  {:>5.1} s / {:.0} s   {:>14} checks   {:>12}/s   {}",
                    start.elapsed().as_secs_f64(),
                    duration.as_secs_f64(),
                    group(n),
                    group(rate as u64),
                    status()
                );
                let mut err = std::io::stderr();
                let _ = if interactive {
                    write!(err, "\r{line}")
                } else {
                    writeln!(err, "{line}")
                };
                last = (Instant::now(), n);
            }
        }
        stop.store(true, Ordering::Relaxed);
        if progress && interactive {
            eprintln!();
        }
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut total = Workload {
        elapsed: start.elapsed(),
        ..Workload::default()
    };
    for w in &results {
        total.allowed += w.allowed;
        total.denied += w.denied;
        total.errors += w.errors;
        total.latency.merge(&w.latency);
    }
    total
}

/// Runs the workload and returns what it measured.
///
/// # Errors
/// A limiter that cannot be built from the options.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, floodgate::Error> {
    let mut builder = Limiter::builder()
        .quotas(opts.quotas.iter().copied())
        .max_keys(opts.max_keys);
    if let Some(path) = &opts.shared_memory {
        builder = builder.shared_memory(path);
    }
    let limiter = builder.build()?;
    let keys = make_keys(opts.keys.max(1));
    let w = run_workload(
        opts.threads,
        keys.len(),
        opts.duration,
        opts.progress,
        |i| {
            #[allow(clippy::indexing_slicing)] // run_workload picks i < keys.len()
            limiter.check(&keys[i], opts.cost).ok().map(|d| d.allowed)
        },
        || format!("{} keys held", group(limiter.len() as u64)),
    );
    Ok(BenchReport {
        checks: w.allowed + w.denied + w.errors,
        allowed: w.allowed,
        denied: w.denied,
        errors: w.errors,
        elapsed: w.elapsed,
        latency: w.latency,
        keys_held: limiter.len(),
        evicted: limiter.evicted(),
        memory_bytes: limiter.memory_bytes(),
        capacity: limiter.capacity(),
    })
}

/// `1234567` -> `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn describe(quotas: &[Quota]) -> String {
    quotas
        .iter()
        .map(|q| {
            if q.algorithm() == Algorithm::Gcra {
                format!("{q} (gcra)")
            } else {
                format!("{q} ({})", q.algorithm())
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

fn store_name(opts: &BenchOptions) -> String {
    match &opts.shared_memory {
        Some(path) => format!("shared memory ({})", path.display()),
        None => "in-memory (embedded default)".to_string(),
    }
}

/// The human-readable table.
pub fn table(opts: &BenchOptions, r: &BenchReport) -> String {
    let pct = |n: u64| 100.0 * n as f64 / r.checks.max(1) as f64;
    let rows = [
        ("store", store_name(opts)),
        ("quota", describe(&opts.quotas)),
        (
            "workload",
            format!(
                "{} keys, uniform, {} thread(s), cost {}, {:.1} s",
                group(opts.keys as u64),
                opts.threads,
                opts.cost,
                r.elapsed.as_secs_f64()
            ),
        ),
        ("checks", group(r.checks)),
        ("checks/s", group(r.checks_per_sec() as u64)),
        ("latency p50", format!("{} ns", r.latency.quantile(0.50))),
        ("latency p99", format!("{} ns", r.latency.quantile(0.99))),
        ("latency p99.9", format!("{} ns", r.latency.quantile(0.999))),
        (
            "allowed",
            format!("{} ({:.1}%)", group(r.allowed), pct(r.allowed)),
        ),
        (
            "denied",
            format!("{} ({:.1}%)", group(r.denied), pct(r.denied)),
        ),
        ("errors", group(r.errors)),
        (
            "keys held",
            format!(
                "{} (capacity {}, evicted {})",
                group(r.keys_held as u64),
                group(r.capacity as u64),
                group(r.evicted)
            ),
        ),
        (
            "memory",
            format!(
                "{:.2} MiB, {:.1} B per key",
                r.memory_bytes as f64 / 1048576.0,
                r.bytes_per_key()
            ),
        ),
    ];
    let mut out = String::from("floodgate bench\n\n");
    for (name, value) in rows {
        out.push_str(&format!("  {name:<14} {value}\n"));
    }
    out.push_str(&format!(
        "\n  latency: 1 in {SAMPLE_EVERY} checks timed with the TSC ({} samples); p50 includes ~10 ns of timer reads\n",
        group(r.latency.len())
    ));
    out
}

/// The same as JSON, for scripts.
pub fn json(opts: &BenchOptions, r: &BenchReport) -> serde_json::Value {
    serde_json::json!({
        "store": if opts.shared_memory.is_some() { "shared_memory" } else { "memory" },
        "quotas": opts.quotas.iter().map(|q| serde_json::json!({"quota": q.to_string(), "algorithm": q.algorithm().name()})).collect::<Vec<_>>(),
        "keys": opts.keys,
        "threads": opts.threads,
        "cost": opts.cost,
        "elapsed_s": r.elapsed.as_secs_f64(),
        "checks": r.checks,
        "checks_per_sec": r.checks_per_sec(),
        "latency_ns": {"p50": r.latency.quantile(0.5), "p99": r.latency.quantile(0.99), "p999": r.latency.quantile(0.999)},
        "allowed": r.allowed,
        "denied": r.denied,
        "errors": r.errors,
        "keys_held": r.keys_held,
        "evicted": r.evicted,
        "memory_bytes": r.memory_bytes,
        "bytes_per_key": r.bytes_per_key(),
    })
}
