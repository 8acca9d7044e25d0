//! The `floodgate` command.

mod bench;
mod histogram;
mod policy;
mod redis_bench;
mod shm_bench;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use floodgate::{Algorithm, Quota};

#[derive(Debug, Parser)]
#[command(
    name = "floodgate",
    version,
    about = "Floodgate: an embedded rate-limiting engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmark the embedded in-memory limiter (or, with --config, a policy) on a generated workload.
    Bench(Box<BenchArgs>),
    /// Validate a policy file and print its effective rules (exit 1 on error).
    CheckConfig {
        /// The policy file (TOML, or JSON if it ends in .json).
        file: std::path::PathBuf,
        /// Also check FILE as a reload of this running policy: print which rules
        /// keep their counters, start afresh, are added and removed (exit 1 if
        /// the engine would refuse the reload).
        #[arg(long, value_name = "OLD")]
        against: Option<std::path::PathBuf>,
    },
    /// Replay a JSON-lines trace of requests through a policy; print one JSON line per request.
    Simulate {
        /// The policy file.
        #[arg(long)]
        config: std::path::PathBuf,
        /// Lines like {"t_ms": 1250.5, "method": "POST", "path": "/auth/login", "ip": "203.0.113.7", "headers": {}},
        /// optionally with the response: "status" (default 200), "cost" and "duration_ms"
        /// (settled when it ends: `count`, `cost_from`, `max_in_flight`).
        #[arg(long)]
        trace: std::path::PathBuf,
        /// Unix time (s) of t_ms = 0; JWT exp/nbf are checked against it.
        #[arg(long, default_value_t = 1_700_000_000)]
        start_unix: u64,
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Quota, e.g. "100/s burst 20" or "1000/hour"; repeat for several quotas checked together.
    #[arg(long = "quota", default_value = "100/s burst 20")]
    quotas: Vec<String>,
    /// Algorithm for every quota: gcra, sliding_log, sliding_window or fixed_window.
    #[arg(long, default_value = "gcra")]
    algorithm: String,
    /// Distinct keys the workload picks from, uniformly.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Cost of each check.
    #[arg(long, default_value_t = 1)]
    cost: u64,
    /// Most keys the limiter holds.
    #[arg(long, default_value_t = 1_000_000)]
    max_keys: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Benchmark this policy's check_request instead (--keys = distinct client IPs).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// With --config: the request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// With --config: the request path.
    #[arg(long, default_value = "/api/items")]
    path: String,
    /// With --config: a request header, "name: value" (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// With --config: also run with the policy reloaded (`Engine::reload`) every
    /// this many milliseconds, and compare latency with and without, in the same run.
    #[arg(long, value_name = "MS")]
    reload_every: Option<f64>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
    /// Benchmark the Redis store at this URL instead (`redis://127.0.0.1:6379/`;
    /// several comma-separated node URLs for a Cluster), beside raw INCR; or
    /// `shm:/dev/shm/NAME`: the shared-memory store, beside the in-process one.
    #[arg(long)]
    store: Option<String>,
    /// With --store shm:...: run this many processes at once (each with
    /// --threads threads), on the shared table and then each on its own
    /// in-process store.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// With --store: checks in flight at once in the concurrent phase.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// With --store: token leases of this many units (0 = off).
    #[arg(long, default_value_t = 0)]
    lease: u64,
}

fn bench(args: BenchArgs) -> Result<(), String> {
    if let Some(config) = &args.config {
        let headers = args
            .headers
            .iter()
            .map(|h| {
                h.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or(format!("--header {h:?}: expected \"name: value\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 86_400.0)
            || threads == 0
        {
            return Err(
                "--duration must be between 0 and 86400 seconds and --threads at least 1".into(),
            );
        }
        let report = policy::bench(&policy::PolicyBench {
            config,
            method: &args.method,
            path: &args.path,
            headers: &headers,
            clients: args.keys,
            threads,
            duration: Duration::from_secs_f64(args.duration),
            progress: !args.quiet,
            reload_every: args
                .reload_every
                .filter(|ms| ms.is_finite() && *ms > 0.0)
                .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        })?;
        print!("{report}");
        return Ok(());
    }
    let algorithm: Algorithm = args
        .algorithm
        .parse()
        .map_err(|e: floodgate::Error| e.to_string())?;
    let quotas = args
        .quotas
        .iter()
        .map(|s| s.parse::<Quota>().and_then(|q| q.with_algorithm(algorithm)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 86_400.0) {
        return Err("--duration must be between 0 and 86400 seconds".into());
    }
    if let Some(path) = args.store.as_deref().and_then(|s| s.strip_prefix("shm:")) {
        let threads = args.threads.unwrap_or(1);
        if threads == 0 || threads > 1024 || args.keys == 0 || !(1..=64).contains(&args.processes) {
            return Err(
                "--threads must be 1..=1024, --processes 1..=64 and --keys at least 1".into(),
            );
        }
        let opts = bench::BenchOptions {
            quotas,
            keys: args.keys,
            threads,
            duration: Duration::from_secs_f64(args.duration),
            cost: args.cost,
            max_keys: args.max_keys,
            progress: false,
            shared_memory: Some(path.into()),
        };
        let text = shm_bench::run(
            &opts,
            args.processes,
            args.json,
            &args.quotas,
            &args.algorithm,
        )?;
        print!("{text}");
        return Ok(());
    }
    if let Some(url) = &args.store {
        if args.in_flight == 0 || args.in_flight > 10_000 {
            return Err("--in-flight must be 1..=10000".into());
        }
        let text = redis_bench::run(&redis_bench::RedisBench {
            url,
            quotas,
            keys: args.keys,
            duration: Duration::from_secs_f64(args.duration),
            cost: args.cost,
            in_flight: args.in_flight,
            lease: args.lease,
            json: args.json,
        })?;
        print!("{text}");
        return Ok(());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    if threads == 0 || threads > 1024 || args.keys == 0 {
        return Err("--threads must be 1..=1024 and --keys at least 1".into());
    }
    let opts = bench::BenchOptions {
        quotas,
        keys: args.keys,
        threads,
        duration: Duration::from_secs_f64(args.duration),
        cost: args.cost,
        max_keys: args.max_keys,
        progress: !args.quiet && !args.json,
        shared_memory: None,
    };
    let report = bench::run(&opts).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", bench::json(&opts, &report));
    } else {
        print!("{}", bench::table(&opts, &report));
    }
    if report.errors > 0 {
        let first = opts.quotas.iter().map(Quota::limit).min().unwrap_or(0);
        return Err(format!(
            "{} checks failed (is --cost {} above the burst {first}?)",
            report.errors, opts.cost
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench(args) => bench(*args),
        Command::CheckConfig { file, against } => {
            policy::check_config(&file, against.as_deref()).map(|text| print!("{text}"))
        }
        Command::Simulate {
            config,
            trace,
            start_unix,
        } => {
            let stdout = std::io::stdout();
            policy::simulate(&config, &trace, start_unix, &mut stdout.lock())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("floodgate: {message}");
            ExitCode::FAILURE
        }
    }
}
