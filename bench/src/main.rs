//! `cairn-bench`: a YCSB-style closed-loop load generator for Cairn and, for
//! comparison, etcd. This file owns the command line, the order of a session
//! (connect, prepare, preload, run each workload) and the reporting.
//!
//! Closed loop: `--clients` tasks each keep exactly one request in flight, spread
//! round-robin over the endpoints (one connection per endpoint). Reads are
//! linearizable on both systems. With `--json`, each run prints one JSON object on
//! stdout and the human summary goes to stderr, so stdout stays machine-readable.

// A load generator measures real time; the rule against reading the OS clock is for node code.
#![allow(clippy::disallowed_methods)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cpu;
mod keygen;
mod run;
mod target;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;

use keygen::{Distribution, KeyChooser};
use run::{ErrorLog, RunConfig, RunResult, Workload};
use target::Target;

#[derive(Parser, Debug)]
#[command(name = "cairn-bench", version, about)]
struct Args {
    /// System under test.
    #[arg(long, value_enum)]
    target: Target,
    /// Comma-separated client endpoints, `HOST:PORT` (or a full `http://` URL).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Workload(s); a comma-separated list runs each in turn, one report per run.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    workload: Vec<Workload>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Number of distinct records (`user00000000` ...).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unmeasured load before each measurement.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Which records requests address.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Cairn table to use (created if missing); on etcd, a `NAME/` key prefix.
    #[arg(long, default_value = "bench")]
    table: String,
    /// Cairn only: pre-split a newly created table into this many ranges at evenly
    /// spaced records. 1 keeps one Raft group, like etcd.
    #[arg(long, default_value_t = 1)]
    ranges: u64,
    /// Per-request timeout in milliseconds; a timed-out request counts as an error.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Concurrent writers for the preload before read workloads (default: max(clients, 16)).
    #[arg(long)]
    preload_clients: Option<usize>,
    /// Seconds the preload may take before the records left are given up on.
    #[arg(long, default_value_t = 300.0)]
    preload_timeout: f64,
    /// Follower reads: Cairn's bounded-staleness reads (default bound 10 s), etcd's
    /// serializable ones; any replica may serve them. Default: linearizable reads.
    #[arg(long)]
    stale_reads: bool,
    /// Print one JSON object per run on stdout.
    #[arg(long)]
    json: bool,
    /// Comma-separated PIDs of the server processes (Linux): each run then also
    /// reports their CPU time per operation, summed, next to this tool's own.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
}

fn seconds(name: &str, value: f64, allow_zero: bool) -> Result<Duration> {
    if !value.is_finite() || value < 0.0 || (!allow_zero && value == 0.0) {
        bail!(
            "--{name} must be a {} number of seconds, got {value}",
            if allow_zero { "non-negative" } else { "positive" }
        );
    }
    // Far beyond any sensible run, and small enough that deadlines cannot overflow.
    const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;
    if value > MAX_SECS {
        bail!("--{name} of {value}s is more than a year");
    }
    Ok(Duration::from_secs_f64(value))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match session(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn session(args: Args) -> Result<()> {
    let duration = seconds("duration", args.duration, false)?;
    let warmup = seconds("warmup", args.warmup, true)?;
    let preload_budget = seconds("preload-timeout", args.preload_timeout, false)?;
    if args.clients == 0 || args.keys == 0 {
        bail!("--clients and --keys must be at least 1");
    }
    let endpoints: Vec<String> =
        args.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
    if endpoints.is_empty() {
        bail!("--endpoints is empty");
    }

    let cpu = cpu::CpuMeter::new(args.server_pids.clone())?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let clients = target::connect(args.target, &endpoints, &args.table, timeout, args.stale_reads).await?;
    target::prepare(&clients, args.keys, args.ranges).await?;

    let errors = Arc::new(ErrorLog::default());
    let mut preloaded = false;
    for &workload in &args.workload {
        if workload.reads() && !preloaded {
            let parallelism = args.preload_clients.unwrap_or(args.clients.max(16));
            run::preload(&clients, args.keys, args.value_size, parallelism, preload_budget, errors.clone()).await?;
            preloaded = true;
        }
        eprintln!(
            "{} {}: {} clients over {} endpoint(s), {:.1}s warmup + {:.1}s",
            args.target.name(),
            workload.name(),
            args.clients,
            clients.len(),
            warmup.as_secs_f64(),
            duration.as_secs_f64()
        );
        let cfg = RunConfig {
            workload,
            clients: args.clients,
            chooser: KeyChooser::new(args.distribution, args.keys),
            value_size: args.value_size,
            warmup,
            duration,
            cpu: cpu.clone(),
        };
        let result = run::run(&clients, &cfg, errors.clone()).await?;
        report(&args, clients.len(), workload, &result);
    }
    Ok(())
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

fn report(args: &Args, endpoints: usize, workload: Workload, r: &RunResult) {
    let secs = r.elapsed.as_secs_f64();
    let ops_per_sec = if secs > 0.0 { r.ops as f64 / secs } else { 0.0 };
    // An empty histogram has no percentiles; report null rather than a fake 0 ms.
    let pct = |q: f64| (r.ops > 0).then(|| round(r.latency_us.value_at_quantile(q) as f64 / 1000.0, 3));
    let (p50, p99, p999) = (pct(0.50), pct(0.99), pct(0.999));
    let ms = |p: Option<f64>| p.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}ms"));
    let us = |c: Option<f64>| c.map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}us"));
    let servers_cpu = match r.server_cpu_us_per_op {
        Some(v) => format!(" servers={v:.1}us"),
        None => String::new(),
    };
    let summary = format!(
        "{:<5} {:<7}{} clients={} ops={} ops/s={:.1} errors={} p50={} p99={} p99.9={} cpu/op: client={}{} ({:.2}s{})",
        args.target.name(),
        workload.name(),
        if args.stale_reads && workload.reads() { " (stale reads)" } else { "" },
        args.clients,
        r.ops,
        ops_per_sec,
        r.errors,
        ms(p50),
        ms(p99),
        ms(p999),
        us(r.client_cpu_us_per_op),
        servers_cpu,
        secs,
        if r.not_found > 0 { format!(", {} reads found nothing", r.not_found) } else { String::new() },
    );
    if args.json {
        eprintln!("{summary}");
        let cpu = |c: Option<f64>| c.map(|v| round(v, 1));
        let fields: [(&str, serde_json::Value); 18] = [
            ("target", args.target.name().into()),
            ("workload", workload.name().into()),
            ("clients", args.clients.into()),
            ("ops", r.ops.into()),
            ("errors", r.errors.into()),
            ("duration_s", round(secs, 3).into()),
            ("ops_per_sec", round(ops_per_sec, 1).into()),
            ("p50_ms", p50.into()),
            ("p99_ms", p99.into()),
            ("p999_ms", p999.into()),
            ("not_found", r.not_found.into()),
            ("keys", args.keys.into()),
            ("stale_reads", args.stale_reads.into()),
            ("value_size", args.value_size.into()),
            ("distribution", args.distribution.name().into()),
            ("endpoints", endpoints.into()),
            ("client_cpu_us_per_op", cpu(r.client_cpu_us_per_op).into()),
            ("server_cpu_us_per_op", cpu(r.server_cpu_us_per_op).into()),
        ];
        // Joined by hand to keep the order above: serde_json's map sorts keys unless
        // its preserve_order feature is on, which would also change the server's maps.
        let body: Vec<String> =
            fields.iter().map(|(name, value)| format!("{}:{value}", serde_json::Value::from(*name))).collect();
        let object = format!("{{{}}}", body.join(","));
        println!("{object}");
    } else {
        println!("{summary}");
    }
}
