//! Snapshots of large ranges: a range far larger than the snapshot buffer is
//! caught up on a new replica (a real second server process, real disks) while
//! both nodes' memory stays bounded and another range on the sending node
//! keeps serving. The range's size is `CAIRN_SNAPSHOT_TEST_MB` (default 256).
//!
//! Before snapshots streamed from SST files, a snapshot was built whole in
//! memory on the store thread, in about four copies at each end: this range
//! would cost each node over a GiB, and every other range on the sender would
//! stall while it was built.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_proto::kv::*;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VALUE_BYTES: usize = 256 << 10;

/// Peak resident memory of a process, from the kernel's high-water mark.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    kib / 1024
}

/// A value that does not compress (the files hold the range at full size).
fn value_for(key: u32) -> String {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(key);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % 64) as usize] as char
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_range_is_caught_up_on_a_new_replica_in_bounded_memory() {
    let _g = serial().await;
    let range_mib: u64 = std::env::var("CAIRN_SNAPSHOT_TEST_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    // One replica per range, so the range grows on one node only; no splits, so it stays one range.
    let mut cl = Cluster::start(
        1,
        &[
            "--replication-factor",
            "1",
            "--split-threshold-bytes",
            "1099511627776",
            "--snapshot-buffer-bytes",
            "67108864",
            // The new replica is placed by hand, and the range stays one range.
            "--no-rebalance",
            "--load-split-qps",
            "0",
        ],
    )
    .await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "big", &[]).await;
    create_table(&mut c, "small", &[]).await;
    let keys = (range_mib << 20) as usize / VALUE_BYTES;
    let loading = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let mut c = cl.client(0).await;
        writers.push(tokio::spawn(async move {
            for k in (w..keys as u32).step_by(4) {
                put(&mut c, "big", &format!("k{k:07}"), &value_for(k)).await.expect("load");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    println!("loaded {range_mib} MiB ({keys} keys of {} KiB) in {:?}", VALUE_BYTES >> 10, loading.elapsed());
    let (range_id, _) = leader_of(&cl, 0, "big").await.expect("the big range");

    let new = cl.add_node();
    let new_id = cl.node_id(new);
    cl.wait_live(new, Duration::from_secs(30)).await;

    // Another range on the sending node serves writes and reads all through the catch-up.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (stop, mut c) = (stop.clone(), cl.client(0).await);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                put(&mut c, "small", &format!("s{}", i % 100), &i.to_string()).await.expect("small put");
                assert_eq!(
                    get(&mut c, "small", &format!("s{}", i % 100)).await.expect("small get"),
                    Some(i.to_string())
                );
                latencies.push(started.elapsed());
                i += 1;
            }
            latencies
        })
    };
    // Adding the replica answers once it caught up: longer than the harness client waits.
    let mut admin = cairn_proto::kv::cairn_client::CairnClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cl.grpc(0)))
            .expect("endpoint")
            .timeout(Duration::from_secs(300))
            .connect_lazy(),
    );
    let catching_up = Instant::now();
    let r =
        admin.add_replica(ChangeReplicaRequest { range_id, node_id: new_id }).await.expect("add replica").into_inner();
    let caught_up_in = catching_up.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = other.await.unwrap();
    latencies.sort_unstable();
    let replicas = r.range.expect("range").replicas;
    assert!(replicas.iter().any(|x| x.node_id == new_id && !x.learner), "promoted to voter: {replicas:?}");

    let pid = |i: usize| cl.nodes[i].child.as_ref().expect("running").id();
    let (sender_peak, receiver_peak) = (peak_rss_mib(pid(0)), peak_rss_mib(pid(new)));
    println!(
        "caught up {range_mib} MiB in {caught_up_in:?}; peak RSS: sender {sender_peak} MiB, receiver {receiver_peak} MiB"
    );
    println!(
        "other range during the catch-up: {} put+get pairs, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    assert!(cl.metric(new, "cairn_snapshots_received_total").await >= 1.0, "the new replica was built from a snapshot");
    assert!(cl.full_log(new).contains("ingested snapshot files"), "the snapshot was ingested from files");
    // Bounded whatever the range's size: memtables, block cache and buffers, not the range.
    const BOUND_MIB: u64 = 600;
    assert!(receiver_peak < BOUND_MIB, "receiver peaked at {receiver_peak} MiB (bound {BOUND_MIB} MiB)");
    assert!(sender_peak < BOUND_MIB, "sender peaked at {sender_peak} MiB (bound {BOUND_MIB} MiB)");
    assert!(latencies.len() >= 10, "the other range served only {} requests during the catch-up", latencies.len());
    assert!(
        percentile(&latencies, 0.99) < Duration::from_secs(2),
        "the other range stalled during the catch-up: p99 {:?}",
        percentile(&latencies, 0.99)
    );

    // The new replica holds the whole range: read every key from it as leader.
    c.transfer_leader(TransferLeaderRequest { range_id, node_id: new_id }).await.expect("transfer to the new node");
    let mut via_new = cl.client(new).await;
    for k in 0..keys as u32 {
        let got = get(&mut via_new, "big", &format!("k{k:07}")).await.expect("read from the new replica");
        assert!(got.as_deref() == Some(value_for(k).as_str()), "key k{k:07} differs on the new replica");
    }
}
