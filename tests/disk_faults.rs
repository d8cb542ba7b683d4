//! Disk and data faults: a failing fsync stops the node (fail-stop) instead of
//! being retried or ignored, and no write it took part in is acknowledged and
//! lost; a snapshot chunk damaged on the way is caught by its checksum, refused,
//! and the snapshot sent again; a log entry damaged at rest quarantines only its
//! replica, which is rebuilt from its peers.
//!
//! Run with `cargo test --features fault-injection --test disk_faults`.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]
#![cfg(feature = "fault-injection")]

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsync_error_stops_the_node_and_loses_no_acknowledged_write() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &[]).await;
    let mut c0 = cl.client(0).await;
    create_table(&mut c0, "d", &[]).await;

    // Node 2 comes back with a disk whose fsync fails after 100 synced writes.
    cl.kill(1);
    cl.restart_with_env(1, &[("CAIRN_DISK_FAULT", "fsync-error-after:100")]);
    let mut clients = [cl.client(0).await, cl.client(1).await, cl.client(2).await];

    let mut acked = Vec::new();
    let mut died_at = None;
    let mut acked_after_death = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        assert!(Instant::now() < deadline, "node 2 never hit its fsync fault (or writes stalled)\n{}", cl.log(1));
        if died_at.is_none() {
            if let Some(status) = cl.exited(1) {
                died_at = Some(acked.len());
                assert_eq!(
                    status.signal(),
                    Some(nix::sys::signal::Signal::SIGABRT as i32),
                    "fail-stop aborts the process: {status:?}"
                );
            }
        }
        if died_at.is_some() && acked_after_death >= 100 {
            break;
        }
        let key = format!("k{n:06}");
        // Through every node, including the failing one while it lives.
        let c = &mut clients[n % 3];
        let put = tokio::time::timeout(Duration::from_secs(5), put(c, "d", &key, "v")).await;
        if let Ok(Ok(_)) = put {
            acked.push(key);
            if died_at.is_some() {
                acked_after_death += 1;
            }
        }
    }
    let log = cl.full_log(1);
    assert!(
        log.contains("FATAL storage failure during synced write: injected fsync error"),
        "the node names the failure before stopping:\n{}",
        cl.log(1)
    );
    assert!(died_at.unwrap_or(0) > 0, "writes were acknowledged before the fault");

    // Restarted on a healthy disk, the node catches up and every acknowledged write is there.
    cl.restart(1);
    let mut c1 = cl.client(1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for key in &acked {
        loop {
            match get(&mut c1, "d", key).await {
                Ok(Some(_)) => break,
                Ok(None) => panic!("acknowledged write {key} lost after the fsync failure"),
                Err(e) => {
                    assert!(Instant::now() < deadline, "restarted node not serving: {e}\n{}", cl.log(1));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    println!("fsync fault: {} writes acknowledged, node 2 stopped after {:?}", acked.len(), died_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_snapshot_chunks_are_refused_and_the_replica_still_catches_up() {
    let _g = serial().await;
    // Every node damages the first two snapshot chunks it sends (one bit, after the checksum).
    let env = [("CAIRN_NET_FAULT", "corrupt-snapshot-chunks:2")];
    let mut cl = Cluster::start_with_env(3, &["--raft-log-gc-threshold", "200"], &env).await;
    let mut c0 = cl.client(0).await;
    create_table(&mut c0, "s", &[]).await;
    let (range_id, leader) = leader_of(&cl, 0, "s").await.expect("leader");
    let follower = (0..3).find(|i| cl.node_id(*i) != leader).expect("a follower");
    let other = (0..3).find(|i| *i != follower).expect("another node");

    // The follower misses more than the log keeps, so it needs snapshots.
    let mut keys = Vec::new();
    // The follower's counters restart with it, so they are read before each kill (the
    // damaged chunks may go to its first snapshot, when the range is first replicated).
    let mut corrupt = 0.0;
    let mut snapshots_received = 0.0;
    for round in 0..3 {
        corrupt += cl.metric(follower, "cairn_snapshot_chunks_corrupt_total").await;
        snapshots_received += cl.metric(follower, "cairn_snapshots_received_total").await;
        cl.kill(follower);
        let mut c = cl.client(other).await;
        for i in 0..450 {
            let k = format!("k{round}-{i:04}");
            put(&mut c, "s", &k, &k).await.expect("put while a follower is down");
            keys.push(k);
        }
        cl.restart_with_env(follower, &env);
        cl.wait_caught_up(follower, other, range_id, Duration::from_secs(90)).await;
    }
    for i in 0..3 {
        corrupt += cl.metric(i, "cairn_snapshot_chunks_corrupt_total").await;
        if i == follower {
            snapshots_received += cl.metric(i, "cairn_snapshots_received_total").await;
        }
    }
    assert!(corrupt >= 1.0, "a damaged chunk was caught by its checksum (caught: {corrupt})");
    assert!(snapshots_received >= 1.0, "caught up through a snapshot");
    let mut cf = cl.client(follower).await;
    for k in &keys {
        assert_eq!(get(&mut cf, "s", k).await.expect("read through the follower"), Some(k.clone()), "{k}");
    }
    println!("snapshot checksums: {corrupt} damaged chunks refused; {} keys intact", keys.len());
}

/// A log entry damaged at rest fails its checksum when the node loads its
/// replicas: that replica alone is quarantined (the node starts and serves its
/// other ranges), and it is rebuilt from its peers by a snapshot. Once its
/// leadership moves there, every acknowledged write reads back through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_log_entry_quarantines_one_replica_which_is_rebuilt_from_its_peers() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &[]).await;
    let mut c0 = cl.client(0).await;
    create_table(&mut c0, "q", &[]).await;
    let (range_id, leader) = leader_of(&cl, 0, "q").await.expect("leader");
    let damaged = (0..3).find(|i| cl.node_id(*i) != leader).expect("a follower");
    let other = (0..3).find(|i| *i != damaged).expect("another node");
    let mut c = cl.client(other).await;
    let mut keys = Vec::new();
    for i in 0..300 {
        let k = format!("k{i:04}");
        put(&mut c, "q", &k, &k).await.expect("put");
        keys.push(k);
    }
    cl.wait_caught_up(damaged, other, range_id, Duration::from_secs(30)).await;

    cl.kill(damaged);
    let fault = format!("damage-log-entry:{range_id}");
    cl.restart_with_env(damaged, &[("CAIRN_DISK_FAULT", fault.as_str())]);
    for i in 300..400 {
        let k = format!("k{i:04}");
        put(&mut c, "q", &k, &k).await.expect("put while the damaged replica rebuilds");
        keys.push(k);
    }
    cl.wait_caught_up(damaged, other, range_id, Duration::from_secs(60)).await;
    let log = cl.log(damaged);
    assert!(log.contains("fails its checksum"), "the damage is named in the log:\n{log}");
    assert_eq!(cl.metric(damaged, "cairn_replicas_quarantined_total").await, 1.0, "exactly one replica quarantined");

    // Serve every key from the rebuilt replica: make it the leader, then read.
    let mut cd = cl.client(damaged).await;
    let target = cl.node_id(damaged);
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader_of(&cl, other, "q").await.map(|(_, l)| l) != Some(target) {
        assert!(Instant::now() < deadline, "leadership never reached the rebuilt replica\n{}", cl.log(damaged));
        let _ = cd.transfer_leader(cairn_proto::kv::TransferLeaderRequest { range_id, node_id: target }).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for k in &keys {
        assert_eq!(get(&mut cd, "q", k).await.expect("read"), Some(k.clone()), "{k} through the rebuilt replica");
    }
    println!("damaged log entry: 1 replica quarantined and rebuilt; {} keys read back through it", keys.len());
}
