//! `floodgate bench --store shm:PATH [--processes N]`: the shared-memory store
//! beside the in-process store, in the same run: one process (both stores in
//! turn), or N processes at once on the shared table and then N processes each
//! on its own in-process store.

use std::process::{Command, Stdio};

use crate::bench::{self, BenchOptions, BenchReport, group};

/// Set in the child processes of a multi-process run.
const CHILD: &str = "FLOODGATE_BENCH_CHILD";

/// One side of the comparison, summed over its processes.
struct Side {
    checks_per_sec: f64,
    p50: u64,
    p99: u64,
    allowed: u64,
    checks: u64,
    evicted: u64,
}

impl Side {
    fn from_report(r: &BenchReport) -> Self {
        Side {
            checks_per_sec: r.checks_per_sec(),
            p50: r.latency.quantile(0.5),
            p99: r.latency.quantile(0.99),
            allowed: r.allowed,
            checks: r.checks,
            evicted: r.evicted,
        }
    }
}

/// Runs the comparison and returns the table (or JSON).
pub fn run(
    opts: &BenchOptions,
    processes: usize,
    json: bool,
    quota_args: &[String],
    algorithm: &str,
) -> Result<String, String> {
    let path = opts.shared_memory.clone().ok_or("no shared-memory path")?;
    if std::env::var_os(CHILD).is_some() {
        // A child of a multi-process run: the parent created the table.
        let r = bench::run(opts).map_err(|e| e.to_string())?;
        return Ok(format!("{}\n", bench::json(opts, &r)));
    }
    if path.exists() {
        return Err(format!(
            "{} exists: the benchmark creates (and removes) its own table; give a new path",
            path.display()
        ));
    }
    let memory_opts = BenchOptions {
        shared_memory: None,
        ..opts.clone()
    };
    // Created here, held open for the whole run, removed at the end.
    let table = floodgate::Limiter::builder()
        .quotas(opts.quotas.iter().copied())
        .max_keys(opts.max_keys)
        .shared_memory(&path)
        .build()
        .map_err(|e| e.to_string());
    let result = table.and_then(|_table| {
        if processes == 1 {
            let memory = bench::run(&memory_opts).map_err(|e| e.to_string())?;
            let shared = bench::run(opts).map_err(|e| e.to_string())?;
            Ok((Side::from_report(&memory), Side::from_report(&shared)))
        } else {
            let child_args = |shm: bool| {
                let mut a: Vec<String> = vec!["bench".into()];
                for q in quota_args {
                    a.extend(["--quota".into(), q.clone()]);
                }
                a.extend([
                    "--algorithm".into(),
                    algorithm.into(),
                    "--keys".into(),
                    opts.keys.to_string(),
                    "--threads".into(),
                    opts.threads.to_string(),
                    "--duration".into(),
                    opts.duration.as_secs_f64().to_string(),
                    "--cost".into(),
                    opts.cost.to_string(),
                    "--max-keys".into(),
                    opts.max_keys.to_string(),
                    "--json".into(),
                    "--quiet".into(),
                ]);
                if shm {
                    a.extend(["--store".into(), format!("shm:{}", path.display())]);
                }
                a
            };
            let memory = spawn_all(&child_args(false), processes)?;
            let shared = spawn_all(&child_args(true), processes)?;
            Ok((memory, shared))
        }
    });
    let _ = std::fs::remove_file(&path);
    let (memory, shared) = result?;
    let ratio = shared.checks_per_sec / memory.checks_per_sec.max(1e-9);
    if json {
        let side = |s: &Side| {
            serde_json::json!({"checks_per_sec": s.checks_per_sec, "p50_ns": s.p50, "p99_ns": s.p99,
                "checks": s.checks, "allowed": s.allowed, "evicted": s.evicted})
        };
        return Ok(format!(
            "{}\n",
            serde_json::json!({"processes": processes, "threads": opts.threads, "keys": opts.keys,
                "memory": side(&memory), "shared_memory": side(&shared), "ratio": ratio})
        ));
    }
    let mut out = format!(
        "floodgate bench: shared memory ({}) beside in-process\n\n  workload       {} keys, uniform, {} process(es) x {} thread(s), cost {}, {:.1} s each\n  quota          {}\n\n",
        path.display(),
        group(opts.keys as u64),
        processes,
        opts.threads,
        opts.cost,
        opts.duration.as_secs_f64(),
        quota_args.join(" + ")
    );
    out.push_str(&format!(
        "  {:<22} {:>14} {:>9} {:>9} {:>14} {:>10}\n",
        "store", "checks/s", "p50 ns", "p99 ns", "allowed", "evicted"
    ));
    let label = if processes == 1 {
        "in-process"
    } else {
        "in-process (each own)"
    };
    for (name, s) in [(label, &memory), ("shared memory", &shared)] {
        out.push_str(&format!(
            "  {:<22} {:>14} {:>9} {:>9} {:>14} {:>10}\n",
            name,
            group(s.checks_per_sec as u64),
            s.p50,
            s.p99,
            group(s.allowed),
            group(s.evicted)
        ));
    }
    out.push_str(&format!(
        "\n  shared / in-process throughput: {ratio:.2}x (p50 includes ~10 ns of timer reads)\n"
    ));
    if processes > 1 {
        out.push_str("  in-process: each process has its own counts (a quota admits up to N times its limit); shared: one exact count\n");
    }
    Ok(out)
}

/// Runs `n` copies of this binary with `args` at once; sums what they report.
fn spawn_all(args: &[String], n: usize) -> Result<Side, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let children = (0..n)
        .map(|_| {
            Command::new(&exe)
                .args(args)
                .env(CHILD, "1")
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start a benchmark process: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut side = Side {
        checks_per_sec: 0.0,
        p50: 0,
        p99: 0,
        allowed: 0,
        checks: 0,
        evicted: 0,
    };
    for child in children {
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("a benchmark process failed ({})", out.status));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("a benchmark process printed no JSON: {e}"))?;
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        let lat = |k: &str| {
            v.get("latency_ns")
                .and_then(|l| l.get(k))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        side.checks_per_sec += num("checks_per_sec");
        side.checks += num("checks") as u64;
        side.allowed += num("allowed") as u64;
        side.evicted = side.evicted.max(num("evicted") as u64);
        side.p50 = side.p50.max(lat("p50"));
        side.p99 = side.p99.max(lat("p99"));
    }
    Ok(side)
}
