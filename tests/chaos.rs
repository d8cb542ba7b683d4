//! Process-level chaos: real servers in network namespaces under partitions,
//! kills, pauses and packet loss, with splits and leader transfers on top.
//! A short run is part of the test suite; `scripts/chaos.sh SECS` runs a long one.
//!
//! Needs a `fault-injection` build (for clock jumps; no sabotage is active):
//! `cargo test --features fault-injection --test chaos`.
#![cfg(feature = "fault-injection")]

mod common;

use common::chaos::{self, ChaosConfig};
use common::serial;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_stay_linearizable_and_durable_under_faults() {
    let _g = serial().await;
    let report = chaos::run(ChaosConfig::from_env(75)).await;
    println!("{}", report.summary());
    assert!(report.ok(), "{}", report.summary());
    assert!(report.ops_ok > 200, "too few operations completed to mean anything\n{}", report.summary());
    assert!(report.faults.values().sum::<usize>() >= 3, "too few faults injected\n{}", report.summary());
}
