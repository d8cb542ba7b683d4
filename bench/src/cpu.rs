//! CPU time spent by this load generator and, when their PIDs are given, by the
//! servers under test, read from Linux's per-process accounting (`/proc/PID/stat`).
//!
//! Throughput on a shared machine depends on how much CPU everything else takes;
//! CPU per operation does not, so it is what compares two systems' efficiency
//! fairly, and it shows how much of the machine the load generator itself needs.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// The processes whose CPU a run is charged with.
#[derive(Clone, Debug, Default)]
pub struct CpuMeter {
    servers: Vec<u32>,
}

/// Cumulative CPU (user + system, all threads) at one instant.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub client: Duration,
    /// `None` when no server PIDs were given, or one of them could not be read.
    pub servers: Option<Duration>,
}

impl CpuMeter {
    /// Checks now that every PID is readable, so a typo fails the run before it starts.
    pub fn new(servers: Vec<u32>) -> Result<CpuMeter> {
        for &pid in &servers {
            process_cpu(&format!("/proc/{pid}/stat")).with_context(|| format!("--server-pids: process {pid}"))?;
        }
        Ok(CpuMeter { servers })
    }

    pub fn sample(&self) -> CpuSample {
        let client = process_cpu("/proc/self/stat").unwrap_or_default();
        let servers = if self.servers.is_empty() {
            None
        } else {
            // A server that exited mid-run makes the sum meaningless: report nothing.
            self.servers.iter().map(|pid| process_cpu(&format!("/proc/{pid}/stat")).ok()).sum()
        };
        CpuSample { client, servers }
    }
}

/// CPU per operation between two samples, in microseconds (client, servers).
pub fn per_op_us(from: CpuSample, to: CpuSample, ops: u64) -> (Option<f64>, Option<f64>) {
    if ops == 0 {
        return (None, None);
    }
    let us = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64() * 1e6 / ops as f64;
    let servers = from.servers.zip(to.servers).map(|(a, b)| us(a, b));
    (Some(us(from.client, to.client)), servers)
}

/// User plus system time of a process, all its threads included.
fn process_cpu(path: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse_stat(&stat, ticks_per_second()).ok_or_else(|| anyhow!("{path}: unexpected format"))
}

/// `stat` is `PID (COMM) STATE ...`; COMM may hold spaces and parentheses, so the
/// fields are counted from the last `)`. utime and stime are fields 14 and 15.
fn parse_stat(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second.max(1) as f64))
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_name() {
        // A command name with spaces and a ')' must not shift the fields.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 0 0";
        assert_eq!(parse_stat(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat("4242 (x) S 1 2", 100), None);
    }

    #[test]
    fn this_process_is_charged_for_the_cpu_it_burns() {
        let meter = CpuMeter::new(vec![std::process::id()]).unwrap();
        let before = meter.sample();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = meter.sample();
        let (client, servers) = per_op_us(before, after, 1);
        // At least 0.1 s of the 0.3 s spin, however coarse the kernel's ticks.
        assert!(client.unwrap() >= 100_000.0, "client CPU {client:?}");
        assert!(servers.unwrap() >= 100_000.0, "server CPU {servers:?}");
        assert!(CpuMeter::new(vec![u32::MAX]).is_err(), "an unreadable PID is refused");
    }
}
