//! Running a workload: preloading the records, the closed-loop client tasks with
//! their warmup and measurement windows, and merging what the tasks measured.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use rand::{rngs::SmallRng, Rng, RngCore, SeedableRng};
use tokio::task::JoinSet;

use crate::cpu::{self, CpuMeter};
use crate::keygen::KeyChooser;
use crate::target::Client;

/// Errors printed to stderr per process; the rest are only counted.
const MAX_PRINTED_ERRORS: usize = 5;
/// Pause after a failed request, so a dead endpoint makes a task wait instead of
/// spinning through thousands of instant failures that would drown the count.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// Attempts per record while preloading before the record is given up on.
const PRELOAD_ATTEMPTS: usize = 5;
/// Latencies are recorded in microseconds, up to an hour (far above any timeout).
const MAX_LATENCY_US: u64 = 3_600_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// 100% puts.
    Write,
    /// 100% gets.
    Read,
    /// 50% gets, 50% puts.
    Mixed50,
    /// 95% gets, 5% puts.
    Mixed95,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Read => "read",
            Workload::Mixed50 => "mixed50",
            Workload::Mixed95 => "mixed95",
        }
    }

    fn read_fraction(self) -> f64 {
        match self {
            Workload::Write => 0.0,
            Workload::Read => 1.0,
            Workload::Mixed50 => 0.5,
            Workload::Mixed95 => 0.95,
        }
    }

    /// Whether reads happen, so every record must exist beforehand for them to hit.
    pub fn reads(self) -> bool {
        self.read_fraction() > 0.0
    }
}

/// Prints the first few errors of the whole process and stays quiet afterwards.
#[derive(Default)]
pub struct ErrorLog {
    seen: AtomicUsize,
}

impl ErrorLog {
    pub fn report(&self, context: &str, err: &anyhow::Error) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if n < MAX_PRINTED_ERRORS {
            eprintln!("error ({context}): {err:#}");
        } else if n == MAX_PRINTED_ERRORS {
            eprintln!("(further errors are counted but not printed)");
        }
    }
}

/// A random value; every write also stamps a counter into it so that no two
/// writes carry the same bytes (no store gets to dedupe or compress them away).
fn random_value(rng: &mut SmallRng, size: usize) -> Vec<u8> {
    let mut value = vec![0u8; size];
    rng.fill_bytes(&mut value);
    value
}

fn stamp(value: &mut [u8], n: u64) {
    let bytes = n.to_le_bytes();
    let len = value.len().min(bytes.len());
    value[..len].copy_from_slice(&bytes[..len]);
}

/// Writes records `0..keys` with `parallelism` concurrent tasks spread over the
/// endpoints; a task whose endpoint fails moves to the next one. Gives up on what
/// is left once `budget` has passed. Fails only if no record could be written;
/// otherwise warns.
pub async fn preload(
    clients: &[Client],
    keys: u64,
    value_size: usize,
    parallelism: usize,
    budget: Duration,
    errors: Arc<ErrorLog>,
) -> Result<()> {
    let started = Instant::now();
    let deadline = started + budget;
    let parallelism = parallelism.clamp(1, usize::try_from(keys).unwrap_or(usize::MAX).max(1));
    let mut tasks = JoinSet::new();
    for t in 0..parallelism {
        let mut clients = clients.to_vec();
        let mut current = t % clients.len();
        let errors = errors.clone();
        tasks.spawn(async move {
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            let mut value = random_value(&mut rng, value_size);
            let mut failed = 0u64;
            let mut record = t as u64;
            while record < keys {
                if Instant::now() >= deadline {
                    // Out of time: the records left count as failed.
                    failed += (keys - record).div_ceil(parallelism as u64);
                    break;
                }
                stamp(&mut value, record);
                let mut ok = false;
                for _ in 0..PRELOAD_ATTEMPTS {
                    let client = &mut clients[current];
                    match client.put(record, &value).await {
                        Ok(()) => {
                            ok = true;
                            break;
                        }
                        Err(e) => {
                            errors.report(&format!("preload via {}", client.endpoint()), &e);
                            // Move on for good: with a node down, the task would
                            // otherwise pay a failure for each of its records.
                            current = (current + 1) % clients.len();
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                if !ok {
                    failed += 1;
                }
                record += parallelism as u64;
            }
            failed
        });
    }
    let mut failed = 0u64;
    while let Some(joined) = tasks.join_next().await {
        failed += joined.map_err(|e| anyhow!("preload task failed: {e}"))?;
    }
    if failed == keys {
        bail!("preload failed: none of the {keys} records could be written");
    }
    if failed > 0 {
        eprintln!("warning: {failed} of {keys} records could not be preloaded; reads of them count as not found");
    }
    eprintln!("preloaded {} records in {:.1}s", keys - failed, started.elapsed().as_secs_f64());
    Ok(())
}

pub struct RunConfig {
    pub workload: Workload,
    pub clients: usize,
    pub chooser: KeyChooser,
    pub value_size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub cpu: CpuMeter,
}

/// What the measurement window saw, summed over all client tasks.
pub struct RunResult {
    /// Successful requests (gets that found nothing included).
    pub ops: u64,
    pub errors: u64,
    /// Gets that succeeded but found no record; should stay 0 after a preload.
    pub not_found: u64,
    /// From the start of measurement to the last measured success (at least `duration`).
    pub elapsed: Duration,
    /// Latency of successful requests, in microseconds.
    pub latency_us: Histogram<u64>,
    /// CPU microseconds per measured operation spent by this process.
    pub client_cpu_us_per_op: Option<f64>,
    /// The same for the server processes given (`--server-pids`), all summed.
    pub server_cpu_us_per_op: Option<f64>,
}

struct TaskResult {
    ops: u64,
    errors: u64,
    not_found: u64,
    last_done: Option<Instant>,
    latency_us: Histogram<u64>,
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| anyhow!("histogram: {e:?}"))
}

/// Runs `cfg.clients` closed-loop tasks, client task `i` on endpoint `i % endpoints`.
/// Requests started during the warmup are issued but not measured; no request is
/// started after the measurement window, and each is bounded by the client timeout,
/// so the run ends by itself.
pub async fn run(clients: &[Client], cfg: &RunConfig, errors: Arc<ErrorLog>) -> Result<RunResult> {
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let end = measure_start + cfg.duration;
    let read_fraction = cfg.workload.read_fraction();
    let context = format!("{} run", cfg.workload.name());

    let meter = cfg.cpu.clone();
    let window_start = tokio::spawn(async move {
        tokio::time::sleep_until(measure_start.into()).await;
        meter.sample()
    });
    let mut tasks = JoinSet::new();
    for i in 0..cfg.clients {
        let mut client = clients[i % clients.len()].clone();
        let chooser = cfg.chooser.clone();
        let value_size = cfg.value_size;
        let errors = errors.clone();
        let context = context.clone();
        let mut latency_us = new_histogram()?;
        tasks.spawn(async move {
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            let mut value = random_value(&mut rng, value_size);
            let mut writes = 0u64;
            let (mut ops, mut failures, mut not_found) = (0u64, 0u64, 0u64);
            let mut last_done = None;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let record = chooser.next(&mut rng);
                let read = read_fraction > 0.0 && rng.random::<f64>() < read_fraction;
                let result = if read {
                    client.get(record).await
                } else {
                    writes += 1;
                    stamp(&mut value, writes);
                    client.put(record, &value).await.map(|()| true)
                };
                let t1 = Instant::now();
                let measured = t0 >= measure_start;
                match result {
                    Ok(found) => {
                        if measured {
                            // Only successes stretch the window: a request timing out
                            // after the end would otherwise dilute ops/s.
                            last_done = Some(t1);
                            ops += 1;
                            let us = u64::try_from(t1.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
                            latency_us.saturating_record(us.max(1));
                            if !found {
                                not_found += 1;
                            }
                        }
                    }
                    Err(e) => {
                        errors.report(&format!("{context} via {}", client.endpoint()), &e);
                        if measured {
                            failures += 1;
                        }
                        let left = end.saturating_duration_since(Instant::now());
                        tokio::time::sleep(ERROR_BACKOFF.min(left)).await;
                    }
                }
            }
            TaskResult { ops, errors: failures, not_found, last_done, latency_us }
        });
    }

    let mut total = RunResult {
        ops: 0,
        errors: 0,
        not_found: 0,
        elapsed: cfg.duration,
        latency_us: new_histogram()?,
        client_cpu_us_per_op: None,
        server_cpu_us_per_op: None,
    };
    let mut last_done = end;
    while let Some(joined) = tasks.join_next().await {
        let task = joined.map_err(|e| anyhow!("client task failed: {e}"))?;
        total.ops += task.ops;
        total.errors += task.errors;
        total.not_found += task.not_found;
        total.latency_us.add(&task.latency_us).map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        if let Some(done) = task.last_done {
            last_done = last_done.max(done);
        }
    }
    total.elapsed = last_done.duration_since(measure_start);
    // The window's CPU runs until every measured request has finished, as its ops do.
    let window_end = cfg.cpu.sample();
    let window_start = window_start.await.map_err(|e| anyhow!("CPU sampler failed: {e}"))?;
    (total.client_cpu_us_per_op, total.server_cpu_us_per_op) = cpu::per_op_us(window_start, window_end, total.ops);
    Ok(total)
}
