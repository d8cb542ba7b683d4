//! Proofs that the fault tests can fail: each test runs the chaos scenario
//! against a deliberately broken server (see src/sabotage.rs) and asserts that
//! the check responsible for that class of bug catches it.
//!
//! Run with `cargo test --features fault-injection --test sabotage`.
#![cfg(feature = "fault-injection")]

mod common;

use common::chaos::{self, ChaosConfig, ChaosReport, Fault};
use common::serial;
use std::time::Duration;

async fn sabotaged(name: &'static str, faults: &[Fault], secs: u64) -> ChaosReport {
    sabotaged_with(name, faults, secs, |_| {}).await
}

async fn sabotaged_with(
    name: &'static str,
    faults: &[Fault],
    secs: u64,
    adjust: impl FnOnce(&mut ChaosConfig),
) -> ChaosReport {
    let mut cfg = ChaosConfig::from_env(secs);
    adjust(&mut cfg);
    cfg.duration = Duration::from_secs(secs);
    cfg.faults = faults.to_vec();
    cfg.topology_changes = false;
    cfg.env = vec![("CAIRN_SABOTAGE", name)];
    let report = chaos::run(cfg).await;
    println!("sabotage {name}:\n{}", report.summary());
    assert!(!report.ok(), "the {name} sabotage went unnoticed:\n{}", report.summary());
    report
}

/// Acknowledging writes whose log entries are not durable: a power cut of the
/// whole cluster loses them, and the lost-write check (or the history) sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ack_before_fsync_is_caught_by_the_lost_write_check() {
    let _g = serial().await;
    let r = sabotaged("ack-before-fsync", &[Fault::KillAll], 30).await;
    assert!(
        !r.lost.is_empty() || !r.linearizable || r.counter_error.is_some(),
        "caught, but not by a durability check:\n{}",
        r.summary()
    );
}

/// Serving reads from a replica without ReadIndex: a cut-off node answers with
/// old values, which the linearizability checker rejects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_local_read_is_caught_by_the_linearizability_checker() {
    let _g = serial().await;
    let r = sabotaged("stale-local-read", &[Fault::MajorityMinority, Fault::IsolateLeader], 30).await;
    assert!(!r.linearizable, "caught, but not by the linearizability checker:\n{}", r.summary());
}

/// Applying a retried request id again: the retry answers with a new counter
/// value and the counter overshoots the attempted increments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_retry_twice_is_caught_by_the_duplicate_and_counter_checks() {
    let _g = serial().await;
    let r = sabotaged("apply-retry-twice", &[], 15).await;
    assert!(!r.duplicates.is_empty(), "the duplicate check missed it:\n{}", r.summary());
    assert!(r.counter_error.is_some(), "the counter bound missed it:\n{}", r.summary());
}

/// Redis transactions and scripts writing without their version conditions:
/// Redis clients on every node race Lua compare-and-sets on few keys, one
/// overwrites a value that changed after its read, and the linearizability
/// checker rejects the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unconditional_transactions_are_caught_by_the_linearizability_checker() {
    let _g = serial().await;
    let r = sabotaged_with("unconditional-transactions", &[], 20, |cfg| {
        cfg.register_keys = 1;
        cfg.register_workers = 0;
        cfg.resp_register_workers = 9;
    })
    .await;
    assert!(!r.linearizable, "caught, but not by the linearizability checker:\n{}", r.summary());
}

/// Serving bounded-stale reads without showing the bound: a follower cut off
/// from its leader answers with the value the majority overwrote more than the
/// bound before, which the bounded-staleness scenario rejects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unproven_stale_reads_are_caught_by_the_bounded_staleness_check() {
    let _g = serial().await;
    let r = common::stale::isolated_follower_read(&[("CAIRN_SABOTAGE", "unproven-stale-reads")]).await;
    let answered = r.answer.as_ref().ok().cloned().flatten();
    assert_eq!(answered, Some(r.old.clone()), "the unproven-stale-reads sabotage went unnoticed: {:?}", r.answer);
    println!(
        "sabotage unproven-stale-reads: the cut-off follower answered {answered:?} after {:?} was acknowledged",
        r.new
    );
}

/// A range feed that resumes without replaying what was applied between the
/// consumer's checkpoint and its start: the resumed consumer misses those
/// changes, and the feed checker sees a resolved checkpoint above writes it never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_resumed_without_its_catch_up_is_caught_by_the_feed_checker() {
    let _g = serial().await;
    let cl = common::Cluster::start_with_env(3, &[], &[("CAIRN_SABOTAGE", "feed-skip-catch-up")]).await;
    let found = common::feed::resume_scenario(&cl).await.expect_err("the feed-skip-catch-up sabotage went unnoticed");
    println!("sabotage feed-skip-catch-up caught:\n{found}");
}

/// A range feed that reports its node's clock as resolved: a write proposed
/// before that instant and applied after it arrives below a checkpoint already
/// sent, and the feed checker sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_resolving_by_the_clock_is_caught_by_the_feed_checker() {
    let _g = serial().await;
    let cl = common::Cluster::start_with_env(3, &[], &[("CAIRN_SABOTAGE", "feed-resolved-from-clock")]).await;
    let found =
        common::feed::resume_scenario(&cl).await.expect_err("the feed-resolved-from-clock sabotage went unnoticed");
    println!("sabotage feed-resolved-from-clock caught:\n{found}");
}

/// A script that fails inside a batch keeps what it wrote before failing: the
/// counter the batch workload checks ends above the increments of the scripts
/// that succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_script_s_writes_kept_in_its_batch_are_caught_by_the_batch_counts() {
    let _g = serial().await;
    let cl = common::Cluster::start_redis_with_env(3, &[], &[("CAIRN_SABOTAGE", "script-batch-keeps-failed")]).await;
    let r = common::script_batch::run(&cl.redis(0), &cl.redis(1)).await;
    println!("sabotage script-batch-keeps-failed: {r:?}");
    assert!(r.batches * 4 <= r.scripts, "scripts did not share batches, so the sabotage was not exercised: {r:?}");
    assert_ne!(r.count, r.succeeded, "a failed script's writes went unnoticed: {r:?}");
}
