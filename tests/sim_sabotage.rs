//! The simulator can fail: run against deliberately broken builds, seeded runs
//! must report violations, and each case names the check that caught it.
//!
//! A sabotage is chosen once per process, so each case runs the inner test
//! below in a child process of this test binary with `CAIRN_SABOTAGE` set.
#![cfg(feature = "fault-injection")]

use cairn::sim::{run, SimConfig};

#[path = "common/sabotaged.rs"]
mod sabotaged;

const SEEDS: u64 = 12;

/// Runs the seeds under the sabotage named by `CAIRN_SABOTAGE` (only when a
/// case below starts it) and prints one line per seed that caught it.
#[test]
#[ignore = "started by the cases below, in a child process"]
fn sabotaged_seeds() {
    sabotaged::report_seeds(|seed| {
        run(&SimConfig::for_seed(seed)).err().map(|f| f.problem.lines().next().unwrap_or_default().to_string())
    });
}

/// The problems the seeds reported under `sabotage`.
fn caught(sabotage: &str) -> Vec<String> {
    sabotaged::caught("sabotaged_seeds", sabotage, SEEDS)
}

#[test]
fn the_simulator_catches_acknowledging_before_fsync() {
    let problems = caught("ack-before-fsync");
    assert!(
        problems.iter().any(|p| p.contains("two leaders") || p.contains("different entry") || p.contains("lost")),
        "no seed caught a build that acknowledges before fsync"
    );
}

/// The dedupe table ignored: a re-sent increment is applied again. Caught by the
/// re-sent-request check or the counter's upper bound.
#[test]
fn the_simulator_catches_a_retry_applied_twice() {
    let problems = caught("apply-retry-twice");
    assert!(
        problems.iter().any(|p| p.contains("applied again") || p.contains("upper bound")),
        "no seed caught a build that applies retried requests twice"
    );
}
