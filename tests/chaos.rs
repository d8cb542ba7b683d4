//! Process-level chaos: real servers in network namespaces under partitions,
//! kills, pauses and packet loss, with splits and leader transfers on top.
//! A short run is part of the test suite; `scripts/chaos.sh SECS` runs a long one.
//!
//! Needs a `fault-injection` build (for clock jumps; no sabotage is active):
//! `cargo test --features fault-injection --test chaos`.
#![cfg(feature = "fault-injection")]

mod common;

use common::chaos::{self, ChaosConfig};
use common::{serial, stale};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_stay_linearizable_and_durable_under_faults() {
    let _g = serial().await;
    let report = chaos::run(ChaosConfig::from_env(75)).await;
    println!("{}", report.summary());
    assert!(report.ok(), "{}", report.summary());
    assert!(report.ops_ok > 200, "too few operations completed to mean anything\n{}", report.summary());
    assert!(report.faults.values().sum::<usize>() >= 3, "too few faults injected\n{}", report.summary());
}

/// Bounded-staleness reads keep their bound: a follower cut off from its leader
/// refuses a read it cannot show is fresh enough, rather than answer with the
/// value the majority has since overwritten; healed, it serves the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_follower_refuses_reads_staler_than_their_bound() {
    let _g = serial().await;
    let r = stale::isolated_follower_read(&[]).await;
    if let Ok(v) = &r.answer {
        panic!("the cut-off follower answered {v:?}; {:?} was acknowledged over {} ms before", r.new, stale::BOUND_MS);
    }
    assert!(r.refused_there >= 1.0, "the read failed, but not at the follower's bound check: {:?}", r.answer.err());
    assert_eq!(r.after_heal, Some(r.new.clone()), "healed, the follower serves the new value");
    println!("cut-off follower refused: {}", r.answer.err().map(|e| e.message().to_string()).unwrap_or_default());
}
