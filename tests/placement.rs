//! Per-table placement, changed online: a table's replication factor and its
//! lease preferences (preferred zones for its range leaders), set at creation or
//! by `AlterTable`, are what the controller converges to, on real `cairn server`
//! processes in five zones, with writes going on and none lost.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_proto::kv::{AlterTableRequest, CreateTableRequest, ListClusterEventsRequest};
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The table's ranges as node 1 sees them: (voters, learners, leader node) each.
async fn table_ranges(cl: &Cluster, table: &str) -> Vec<(usize, usize, u64)> {
    let s = cl.status(0).await.unwrap();
    s.ranges
        .iter()
        .filter(|r| r.table == table)
        .map(|r| {
            let voters = r.replicas.iter().filter(|x| !x.learner).count();
            (voters, r.replicas.len() - voters, r.leader_node_id)
        })
        .collect()
}

async fn wait_for(cl: &Cluster, what: &str, bound: Duration, mut ok: impl FnMut(&[(usize, usize, u64)]) -> bool) {
    let started = Instant::now();
    loop {
        let ranges = table_ranges(cl, "placed").await;
        if !ranges.is_empty() && ok(&ranges) {
            return;
        }
        assert!(started.elapsed() < bound, "{what} not reached within {bound:?}: {ranges:?}\n{}", cl.log(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tables_replication_factor_and_lease_preferences_are_converged_to_online() {
    let _g = serial().await;
    let cl = Cluster::start_zoned(5, &[]).await;
    let mut admin = cl.client(0).await;
    create_table(&mut admin, "other", &[]).await;
    let bad = admin
        .create_table(CreateTableRequest { name: "bad".into(), replication_factor: 2, ..Default::default() })
        .await
        .expect_err("a replication factor of 2 is refused");
    assert!(bad.message().contains("1, 3 or 5"), "{}", bad.message());
    create_table(&mut admin, "placed", &["h", "p"]).await;
    wait_for(&cl, "3 voters per range", Duration::from_secs(60), |rs| rs.iter().all(|r| r.0 == 3 && r.1 == 0)).await;

    // Writes throughout; every acknowledged one must be there at the end.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, stop, mut c) = (acked.clone(), stop.clone(), cl.client(1).await);
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("{}{n:05}", ["a", "k", "t"][n as usize % 3]);
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), put(&mut c, "placed", &key, "v")).await
                {
                    acked.lock().unwrap().push(key);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Five replicas per range, on five zones.
    let t = admin
        .alter_table(AlterTableRequest { name: "placed".into(), replication_factor: 5, ..Default::default() })
        .await
        .expect("alter the replication factor")
        .into_inner()
        .table
        .unwrap();
    assert_eq!(t.replication_factor, 5);
    let started = Instant::now();
    wait_for(&cl, "5 voters per range", Duration::from_secs(90), |rs| rs.iter().all(|r| r.0 == 5 && r.1 == 0)).await;
    let up_replicated_after = started.elapsed();
    let other = cl.status(0).await.unwrap();
    assert!(
        other.ranges.iter().filter(|r| r.table == "other").all(|r| r.replicas.len() == 3),
        "another table keeps the cluster's 3: {:?}",
        other.ranges.iter().filter(|r| r.table == "other").collect::<Vec<_>>()
    );

    // Leaders in zone-4 (node 4), then zone-2 (node 2) first with zone-4 second.
    let zone4 = cl.node_id(3);
    admin
        .alter_table(AlterTableRequest {
            name: "placed".into(),
            lease_preferences: vec!["zone-4".into()],
            ..Default::default()
        })
        .await
        .expect("alter the lease preferences");
    let started = Instant::now();
    wait_for(&cl, "leaders in zone-4", Duration::from_secs(60), |rs| rs.iter().all(|r| r.2 == zone4)).await;
    let moved_after = started.elapsed();
    let zone2 = cl.node_id(1);
    admin
        .alter_table(AlterTableRequest {
            name: "placed".into(),
            lease_preferences: vec!["zone-2".into(), "zone-4".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for(&cl, "leaders in zone-2", Duration::from_secs(60), |rs| rs.iter().all(|r| r.2 == zone2)).await;
    // Held there: leader balancing does not move them out of the preferred zone.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(table_ranges(&cl, "placed").await.iter().all(|r| r.2 == zone2), "leaders stay in zone-2");
    let bad = admin
        .alter_table(AlterTableRequest { name: "placed".into(), ..Default::default() })
        .await
        .expect_err("nothing to alter");
    assert!(bad.message().contains("nothing to alter"), "{}", bad.message());

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let present: BTreeSet<String> =
        scan_all(&mut admin, "placed", 500).await.unwrap().into_iter().map(|(k, _)| k).collect();
    let lost = cairn_check::lost_writes(acked.iter().cloned(), &present);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(acked.len() > 100, "the writer went on: {} acknowledged", acked.len());

    let events = admin.list_cluster_events(ListClusterEventsRequest { limit: 0 }).await.unwrap().into_inner().events;
    let adds = events.iter().filter(|e| e.kind == "add_replica" && e.outcome == "done").count();
    let transfers = events.iter().filter(|e| e.kind == "transfer_leader" && e.outcome == "done").count();
    assert!(adds >= 6, "two replicas added to each of 3 ranges: {adds} add events");
    assert!(transfers >= 3, "{transfers} transfer events");
    for e in events.iter().filter(|e| e.kind == "transfer_leader" && e.outcome == "done") {
        assert!(e.from_node_id != 0 && e.from_node_id != e.to_node_id, "a transfer event names its source: {e:?}");
    }
    println!(
        "rf 3 -> 5 for 3 ranges in {up_replicated_after:.1?}; leaders moved to zone-4 in {moved_after:.1?}, then to \
         zone-2; {} writes acknowledged, none lost; {adds} adds and {transfers} leader transfers logged",
        acked.len()
    );
}

/// The Redis keyspace takes its lease preferences from `--redis-lease-preferences`
/// when it is created, and the controller moves its ranges' leaders there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_redis_keyspace_takes_its_lease_preferences_from_the_config() {
    let _g = serial().await;
    let cl = Cluster::start_redis_zoned(3, &["--redis-lease-preferences", "zone-2"]).await;
    let mut admin = cl.client(0).await;
    let tables = admin.list_tables(cairn_proto::kv::ListTablesRequest {}).await.unwrap().into_inner().tables;
    let keyspace = tables.iter().find(|t| t.name == "redis").expect("the Redis keyspace");
    assert_eq!(keyspace.lease_preferences, vec!["zone-2".to_string()]);
    let preferred = cl.node_id(1);
    let started = Instant::now();
    loop {
        let s = cl.status(0).await.unwrap();
        let leaders: Vec<u64> = s.ranges.iter().filter(|r| r.table == "redis").map(|r| r.leader_node_id).collect();
        if !leaders.is_empty() && leaders.iter().all(|l| *l == preferred) {
            println!("{} keyspace ranges led from zone-2 after {:.1?}", leaders.len(), started.elapsed());
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "leaders {leaders:?}, not all on node {preferred}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
