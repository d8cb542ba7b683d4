//! Membership changes: a replica moves to a new node (learner, catch-up,
//! promotion), the old replica is removed and its data deleted, and leadership
//! moves on request — all while the data stays readable.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_proto::kv::*;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moves_to_a_new_node() {
    let _g = serial().await;
    // Replicas placed by hand only: balancing would move them onto the new node too.
    let mut cl = Cluster::start(3, &["--no-rebalance"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "mv", &[]).await;
    let mut keys = Vec::new();
    for i in 0..100 {
        let k = format!("k{i:03}");
        put(&mut c, "mv", &k, &k).await.unwrap();
        keys.push(k);
    }
    let (range_id, _) = leader_of(&cl, 0, "mv").await.expect("range");
    let new = cl.add_node();
    let new_id = cl.node_id(new);
    cl.wait_live(new, Duration::from_secs(30)).await;
    // Two adders at once, through different nodes (as an operator racing the controller,
    // which finishes any learner it finds): both answer that the replica is added.
    let mut other = cl.client(1).await;
    let (first, second) = tokio::join!(
        c.add_replica(ChangeReplicaRequest { range_id, node_id: new_id }),
        other.add_replica(ChangeReplicaRequest { range_id, node_id: new_id })
    );
    for r in [first, second] {
        let replicas = r.expect("add replica").into_inner().range.expect("range").replicas;
        assert!(replicas.iter().any(|x| x.node_id == new_id && !x.learner), "promoted to voter: {replicas:?}");
    }

    // Remove the replica on node 1 — moving leadership away first if needed.
    let victim = cl.node_id(0);
    let r = c.remove_replica(ChangeReplicaRequest { range_id, node_id: victim }).await.expect("remove").into_inner();
    let replicas = r.range.expect("range").replicas;
    assert!(!replicas.iter().any(|x| x.node_id == victim), "removed: {replicas:?}");
    assert_eq!(replicas.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cl.local_replicas(0).await.iter().any(|r| r["range_id"].as_u64() == Some(range_id)) {
        assert!(Instant::now() < deadline, "node 1 still holds the removed replica");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The new node serves the data (leadership moved to it, linearizable reads there).
    c.transfer_leader(TransferLeaderRequest { range_id, node_id: new_id }).await.expect("transfer to the new node");
    let mut via_new = cl.client(new).await;
    for k in &keys {
        assert_eq!(get(&mut via_new, "mv", k).await.unwrap().as_deref(), Some(k.as_str()));
    }
    // Node 1 no longer hosts the range but still routes to it.
    put(&mut c, "mv", "after", "move").await.expect("write via a node without a replica");
    assert_eq!(get(&mut via_new, "mv", "after").await.unwrap(), Some("move".into()));
    let bad = c.remove_replica(ChangeReplicaRequest { range_id, node_id: victim }).await;
    assert_eq!(bad.expect_err("not a replica any more").code(), tonic::Code::NotFound);
}
