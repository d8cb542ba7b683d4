//! The simulator can fail: with the `ack-before-fsync` sabotage (Raft writes
//! acknowledged without a sync, so a simulated power cut loses them), seeded
//! runs must report a violation. Its own test binary, because the sabotage is
//! chosen once per process.
#![cfg(feature = "fault-injection")]

use cairn::sim::{run, SimConfig};

#[test]
fn the_simulator_catches_acknowledging_before_fsync() {
    // Edition 2021: setting the variable before any thread reads it is sound.
    std::env::set_var("CAIRN_SABOTAGE", "ack-before-fsync");
    let seeds: Vec<u64> = (1..=12).collect();
    let mut caught = Vec::new();
    for seed in &seeds {
        match run(&SimConfig::for_seed(*seed)) {
            Ok(report) => println!("seed {seed}: not caught ({} faults)", report.faults.values().sum::<u64>()),
            Err(failure) => {
                println!("seed {seed}: caught: {}", failure.problem.lines().next().unwrap_or_default());
                caught.push(*seed);
            }
        }
    }
    println!("caught by {} of {} seeds: {caught:?}", caught.len(), seeds.len());
    assert!(!caught.is_empty(), "no seed caught a build that acknowledges before fsync");
}
