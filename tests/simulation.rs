//! Deterministic simulation of whole clusters (`cairn::sim`): a fixed set of
//! seeds on every run, and exact replay of a seed.
//!
//! - `CAIRN_SIM_SEED=N` runs only seed N (what a failure tells you to run);
//! - `CAIRN_SIM_SEEDS=K` runs K seeds starting at `CAIRN_SIM_FIRST_SEED` (default 1000), the soak;
//! - `scripts/sim.sh` wraps both in a release build.

use cairn::sim::{run, SimConfig};

/// The seeds every test run checks: both cluster sizes (seed % 3 == 2 gives 5 nodes).
const CI_SEEDS: [u64; 8] = [1, 3, 5, 7, 8, 10, 11, 13];

#[path = "common/seeds.rs"]
mod seeds;

use seeds::env_u64;

fn seeds() -> Vec<u64> {
    seeds::from_env("CAIRN_SIM", &CI_SEEDS)
}

#[test]
fn simulated_clusters_stay_correct_under_faults() {
    let mut failures = Vec::new();
    let seeds = seeds();
    for seed in &seeds {
        let cfg = SimConfig::for_seed(*seed);
        match run(&cfg) {
            Ok(report) => println!("{report}\n"),
            Err(failure) => {
                println!("{failure}\n");
                failures.push(*seed);
            }
        }
    }
    println!("{} seeds run, {} failed: {failures:?}", seeds.len(), failures.len());
    assert!(failures.is_empty(), "failing seeds: {failures:?} (rerun one with scripts/sim.sh --seed N)");
}

/// Seeds with range merges among the topology changes (freezes, merges, and
/// merges abandoned by a fence and a thaw) under the same faults and checks.
const MERGE_SEEDS: [u64; 6] = [1, 2, 3, 4, 5, 6];

#[test]
fn simulated_merges_stay_correct_under_faults() {
    let mut failures = Vec::new();
    let mut merged = 0;
    let seeds = seeds::from_env("CAIRN_SIM_MERGE", &MERGE_SEEDS);
    for seed in &seeds {
        let cfg = SimConfig { merges: true, ..SimConfig::for_seed(*seed) };
        match run(&cfg) {
            Ok(report) => {
                merged += report.changes.get("merge").map_or(0, |c| c.0);
                println!("{report}\n");
            }
            Err(failure) => {
                println!("{failure}\n");
                failures.push(*seed);
            }
        }
    }
    println!("{} seeds run, {merged} merges, {} failed: {failures:?}", seeds.len(), failures.len());
    assert!(failures.is_empty(), "failing seeds: {failures:?} (rerun one with scripts/sim.sh --merges --seed N)");
    assert!(merged >= seeds.len() as u64, "only {merged} merges in {} seeds", seeds.len());
}

/// Seeds whose nodes are power-cut right after they grant a vote (at most one
/// every 2 s), losing whatever they had not synced: every restarted node must
/// still hold each vote it was seen granting, and every other check must hold.
#[test]
fn votes_survive_a_crash_right_after_they_are_sent() {
    let mut traps = 0;
    for seed in [21, 22, 23, 24] {
        let cfg = SimConfig { crash_after_vote: true, ..SimConfig::for_seed(seed) };
        let report = run(&cfg).unwrap_or_else(|f| panic!("{f}"));
        traps += report.faults.get("crash-after-vote").copied().unwrap_or(0);
        println!("{report}\n");
    }
    assert!(traps >= 4, "the seeds crashed only {traps} nodes right after a vote");
}

#[test]
fn a_seed_replays_exactly() {
    let mut cfg = SimConfig::for_seed(env_u64("CAIRN_SIM_SEED").unwrap_or(7));
    cfg.fault_ms = 6_000;
    let first = run(&cfg).map_err(|f| f.to_string());
    let second = run(&cfg).map_err(|f| f.to_string());
    let (a, b) = (first.expect("first run"), second.expect("second run"));
    println!("{a}\n{b}");
    assert_eq!(a.fingerprint, b.fingerprint, "the same seed must replay the same run");
    assert_eq!(a.ops.ok, b.ops.ok);
    assert_eq!(a.faults, b.faults);
}

/// Seeds that catch real bugs the simulator found. Each of these failed, with
/// the message quoted, when its fix was disabled. A change to the code or the
/// schedule may shift what a seed exercises, so each was checked again when
/// seeded election timeouts became per-election draws (seeds 6 and 38 replaced
/// 19 and 20 then), and the soak (`scripts/sim.sh --soak`) keeps looking.
fn replays_cleanly(seed: u64) {
    let report = run(&SimConfig::for_seed(seed)).unwrap_or_else(|f| panic!("{f}"));
    println!("{report}");
}

/// "range 1: member node 1 has no replica": the node lagged through its own
/// removal and re-addition, applied both in one batch, and destroyed itself
/// anyway (with a tombstone that then refused every message from the range).
/// (Found as seed 4; 15 of seeds 1–150 fail without the fix, seed 6 among them.)
#[test]
fn regression_a_replica_readded_while_lagging_keeps_itself() {
    replays_cleanly(6);
}

/// "range 101: member node 4 has no replica": a replica removed while its node
/// was away kept its old, wider bounds and blocked the node from creating the
/// range split off from it. Fixed by replica garbage collection (`replica_gc`).
/// (Found as seeds 2 and 17; without it, 6 of seeds 1–150 fail, seed 38 among them.)
#[test]
fn regression_a_replica_that_missed_its_removal_is_collected() {
    replays_cleanly(38);
}

/// No convergence after healing: a 2-voter range split off in the middle of
/// a replica move had no leader, and its other voter never created its replica
/// because only appends and heartbeats did. (Found as seed 25; without the fix,
/// seeds 21, 30, 48 and 99 of 1–150 fail.)
#[test]
fn regression_a_vote_request_creates_the_missing_replica() {
    replays_cleanly(21);
}

/// "range 1: member node 3 has no replica": the range's leader power-cut with a
/// damaged log entry, and came back with that replica quarantined (empty, neither
/// voting nor campaigning). Its node kept answering, so the two followers,
/// hibernating, trusted their old leader forever and the range never elected
/// again. Followers now forget a leader that reports it is rebuilding.
/// (Found as seed 20163 in a 400-seed soak; it fails without the fix.)
#[test]
fn regression_followers_elect_anew_when_their_leader_lost_its_log() {
    replays_cleanly(20163);
}

/// Defect: peer ids were node ids, so a node added back to a range while its
/// old replica still ran was the same Raft peer to the leader, which counted
/// the old replica's acknowledgement for the new one and never caught the new
/// one up (see `cairn::sim::scripted`). Scripted, so it happens every run.
#[test]
fn a_node_added_back_is_caught_up_as_a_new_peer() {
    match cairn::sim::scripted::readd_while_the_old_replica_lags() {
        Ok(what) => println!("{what}"),
        Err(problem) => panic!("{problem}"),
    }
}
