//! Load-based splitting and hot keys on real `cairn server` processes: a range
//! whose requests run over the threshold for the sustain period splits where its
//! load divides (and the split is in the event log with its reason); a range
//! whose load is one key does not split, the event log says why, and
//! `ListHotKeys` names the key with a note pointing to follower reads.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_proto::kv::{ListClusterEventsRequest, ListHotKeysRequest};
use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests per second per range that make it hot in this test.
const LOAD_SPLIT_QPS: &str = "150";

/// Clients sending a get or a put (one in four) each, in a loop, over keys
/// `pick` chooses, until stopped; every acknowledged put is remembered.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cl: &Cluster, table: &'static str, clients: usize, pick: fn(u64) -> String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, sent, acked, addr) = (stop.clone(), sent.clone(), acked.clone(), cl.grpc(c % 3));
                tokio::spawn(async move {
                    let mut client = client_at(&addr);
                    let mut n = c as u64 * 1_000_003;
                    while !stop.load(Ordering::Relaxed) {
                        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let key = pick(n >> 33);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(4) {
                            let value = format!("{key}@{n}");
                            if let Ok(Ok(_)) =
                                tokio::time::timeout(Duration::from_secs(3), put(&mut client, table, &key, &value))
                                    .await
                            {
                                acked.lock().unwrap().push(key);
                            }
                        } else {
                            let _ = tokio::time::timeout(Duration::from_secs(3), get(&mut client, table, &key)).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, sent, acked, tasks }
    }

    async fn finish(self) -> (u64, BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().iter().cloned().collect();
        (self.sent.load(Ordering::Relaxed), acked)
    }
}

async fn ranges_of(cl: &Cluster, table: &str) -> usize {
    cl.status(0).await.unwrap().ranges.iter().filter(|r| r.table == table).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_range_splits_where_its_load_divides_and_a_hot_key_is_reported_instead() {
    let _g = serial().await;
    let cl = Cluster::start(3, &["--load-split-qps", LOAD_SPLIT_QPS, "--load-split-sustain-ms", "3000"]).await;
    let mut admin = cl.client(0).await;
    create_table(&mut admin, "spread", &[]).await;
    create_table(&mut admin, "single", &[]).await;
    cl.wait_replicated(3, Duration::from_secs(60)).await;

    // Uniform load over 1000 keys: the range splits, near the middle of its load.
    let load = Load::start(&cl, "spread", 12, |n| format!("key{:04}", n % 1000));
    let started = Instant::now();
    while ranges_of(&cl, "spread").await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a range over {LOAD_SPLIT_QPS} requests/s did not split\n{}",
            cl.log(0)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let split_after = started.elapsed();
    let (sent, acked) = load.finish().await;
    let rate = sent as f64 / split_after.as_secs_f64();
    let present: BTreeSet<String> =
        scan_all(&mut admin, "spread", 500).await.unwrap().into_iter().map(|(k, _)| k).collect();
    let lost = cairn_check::lost_writes(acked.iter().cloned(), &present);
    assert!(lost.is_empty(), "acknowledged writes lost across the load split: {lost:?}");
    let events = admin.list_cluster_events(ListClusterEventsRequest { limit: 0 }).await.unwrap().into_inner().events;
    let split = events.iter().find(|e| e.kind == "load_split" && e.outcome == "done").expect("a load_split event");
    assert!(split.reason.contains("over the load-split threshold of 150"), "{split:?}");
    // Where it split: the left share the reason reports is the finder's, 37.5% to 62.5%.
    let share: f64 = split
        .reason
        .rsplit("; ")
        .next()
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .expect("the reason gives the left share");
    assert!((37.0..=63.0).contains(&share), "{share}% left of the split: {}", split.reason);

    // One key takes all the load of its range: no split, and it is reported.
    let load = Load::start(&cl, "single", 12, |_| "the-hot-key".to_string());
    let started = Instant::now();
    let skipped = loop {
        let events =
            admin.list_cluster_events(ListClusterEventsRequest { limit: 0 }).await.unwrap().into_inner().events;
        if let Some(e) = events.into_iter().find(|e| e.kind == "load_split_skipped") {
            break e;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no load_split_skipped event\n{}", cl.log(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(skipped.reason.contains("the-hot-key") && skipped.reason.contains("follower reads"), "{skipped:?}");
    let hot = loop {
        let keys = admin.list_hot_keys(ListHotKeysRequest { limit: 5 }).await.unwrap().into_inner().keys;
        if let Some(k) = keys.into_iter().find(|k| k.key == b"the-hot-key") {
            break k;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the hot key is not listed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(hot.table, "single");
    assert!(hot.note.contains("follower reads"), "{hot:?}");
    let (_, acked_single) = load.finish().await;
    assert_eq!(ranges_of(&cl, "single").await, 1, "a range cannot split inside one key");
    assert!(!acked_single.is_empty());
    println!(
        "uniform load of {rate:.0} requests/s split its range after {split_after:.1?} ({}); one hot key at {} \
         requests/s was reported and its range left whole ({})",
        split.reason, hot.qps, skipped.reason
    );
}
