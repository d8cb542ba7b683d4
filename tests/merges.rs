//! Range merges, end to end on real nodes: an operator's merge under a live
//! writer (no acknowledged write lost or rolled back, reads and scans whole,
//! the merged state surviving a kill -9), and a merge refused or abandoned
//! without harm (a replica's node down, replicas on different nodes).

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_proto::kv::*;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TABLE: &str = "m";

/// The table's ranges in key order: (id, start display).
async fn ranges_of(cl: &Cluster, i: usize) -> Vec<RangeStatus> {
    let mut r: Vec<RangeStatus> = cl.status(i).await.unwrap().ranges.into_iter().filter(|r| r.table == TABLE).collect();
    r.sort_by(|a, b| a.start.cmp(&b.start));
    r
}

/// Overwrites a fixed set of keys (spread over every range) with a rising
/// counter, and remembers per key the last acknowledged value and the highest
/// value attempted: after the run, each key must read a value between the two.
struct Overwriter {
    stop: Arc<AtomicBool>,
    /// key → (last acknowledged, highest attempted)
    state: Arc<Mutex<BTreeMap<String, (u64, u64)>>>,
    acks: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Overwriter {
    fn start(addr: String, keys: Vec<String>) -> Overwriter {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(BTreeMap::new()));
        let acks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, state2, acks2) = (stop.clone(), state.clone(), acks.clone());
        let task = tokio::spawn(async move {
            let mut c = client_at(&addr);
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                for k in &keys {
                    n += 1;
                    state2.lock().unwrap().entry(k.clone()).or_insert((0, 0)).1 = n;
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(Duration::from_secs(5), put(&mut c, TABLE, k, &n.to_string())).await
                    {
                        state2.lock().unwrap().entry(k.clone()).or_insert((0, 0)).0 = n;
                        acks2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Overwriter { stop, state, acks, task }
    }

    fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Stops, checks every key, and returns how many writes were acknowledged.
    async fn finish(self, c: &mut cairn_proto::kv::cairn_client::CairnClient<tonic::transport::Channel>) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let state = self.state.lock().unwrap().clone();
        for (k, (acked, attempted)) in &state {
            let got: u64 = get(c, TABLE, k).await.unwrap().map(|v| v.parse().unwrap()).unwrap_or(0);
            assert!(
                got >= *acked && got <= *attempted,
                "key {k} reads {got}: the last acknowledged write was {acked}, the last attempted {attempted}"
            );
        }
        self.acks.load(Ordering::Relaxed)
    }
}

fn cli(cl: &Cluster, i: usize, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--addr", &cl.grpc(i)])
        .args(args)
        .output()
        .expect("run the cairn CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merges_under_a_live_writer_keep_every_acknowledged_write_and_survive_a_kill() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &["--no-rebalance"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, TABLE, &["g", "p"]).await;
    let mut all = Vec::new();
    for i in 0..300 {
        let k = format!("{}{i:03}", (b'a' + (i % 26) as u8) as char);
        put(&mut c, TABLE, &k, "first").await.unwrap();
        all.push(k);
    }
    all.sort();
    let before = ranges_of(&cl, 0).await;
    assert_eq!(before.len(), 3, "two split points, three ranges");
    let hot: Vec<String> = ["b", "h", "i", "q", "z"].iter().map(|p| format!("{p}-hot")).collect();
    let writer = Overwriter::start(cl.grpc(1), hot.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks_before = writer.acks();
    // A page token taken before the merges: its version predates them.
    let token = {
        let req = ScanRequest { table: TABLE.into(), limit: 5, page_size: 5, ..Default::default() };
        let mut pages = c.scan(req).await.expect("scan").into_inner();
        let mut token = Vec::new();
        while let Some(page) = pages.message().await.expect("page") {
            token = page.next_page_token;
        }
        token
    };
    assert!(!token.is_empty());

    // The middle range with the last one, through the CLI (a real process).
    let out = cli(&cl, 2, &["range", "merge", &before[1].id.to_string()]);
    assert!(out.status.success(), "cairn range merge: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("range {} merged into range {}", before[2].id, before[1].id)), "{text}");
    // Then the first with the merged one, over the RPC.
    let resp = c
        .merge_range(MergeRangeRequest { left_range_id: before[0].id })
        .await
        .expect("merge the first range with the merged one")
        .into_inner();
    assert_eq!(resp.retired_range_id, before[1].id);
    let merged = resp.merged.unwrap();
    assert_eq!(
        (merged.id, merged.start.clone(), merged.end.clone()),
        (before[0].id, before[0].start.clone(), before[2].end.clone())
    );
    // Resumed after the merges at its old version, the scan could miss writes the
    // retired ranges took: refused, asking for a new scan.
    let resumed = async {
        let req = ScanRequest { table: TABLE.into(), page_token: token, page_size: 5, ..Default::default() };
        let mut pages = c.scan(req).await?.into_inner();
        while pages.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    };
    let e = resumed.await.expect_err("a page token from before a merge");
    assert!(e.message().contains("restart the scan"), "{e}");
    let acks_merged = writer.acks();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let writes = writer.finish(&mut c).await;
    assert!(acks_before > 0 && writes > acks_merged, "the writer kept writing: {acks_before}, {acks_merged}, {writes}");

    // Every node's directory and replicas agree: one range for the table, and the
    // retired ranges' replicas are gone from every node.
    for i in 0..3 {
        let ranges = ranges_of(&cl, i).await;
        assert_eq!(ranges.iter().map(|r| r.id).collect::<Vec<_>>(), vec![before[0].id], "node {i}: {ranges:?}");
        let local = cl.local_replicas(i).await;
        let ids: Vec<u64> = local.iter().filter_map(|r| r["range_id"].as_u64()).collect();
        assert!(!ids.contains(&before[1].id) && !ids.contains(&before[2].id), "node {i} still holds {ids:?}");
    }
    let mut expect: Vec<String> = all.iter().cloned().chain(hot.iter().cloned()).collect();
    expect.sort();
    let got: Vec<String> = scan_all(&mut c, TABLE, 37).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, expect, "a scan over the merged range sees every key once, in order");
    for k in all.iter().step_by(7) {
        assert_eq!(get(&mut c, TABLE, k).await.unwrap().as_deref(), Some("first"), "{k}");
    }
    // Each merge is in the cluster event log.
    let events = c.list_cluster_events(ListClusterEventsRequest { limit: 0 }).await.unwrap().into_inner().events;
    let merges = events.iter().filter(|e| e.kind == "merge" && e.outcome == "done").count();
    assert_eq!(merges, 2, "{events:?}");

    // A kill -9 of every node: the merged state and its data come back as they were.
    let leader = cl.status(0).await.unwrap().ranges.iter().find(|r| r.id == before[0].id).unwrap().leader_node_id;
    for i in 0..3 {
        cl.kill(i);
    }
    for i in 0..3 {
        cl.restart(i);
    }
    let mut c = cl.client(cl.index_of(leader)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        match scan_all(&mut c, TABLE, 100).await {
            Ok(p) => break p,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(300)).await,
            Err(e) => panic!("no scan after the restart: {e}"),
        }
    };
    assert_eq!(got.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), expect, "after the restart");
    put(&mut c, TABLE, "zz-after", "1").await.expect("the merged range takes writes in the retired span");
    assert_eq!(get(&mut c, TABLE, "zz-after").await.unwrap().as_deref(), Some("1"));
    assert_eq!(ranges_of(&cl, 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_that_cannot_finish_leaves_both_ranges_serving() {
    let _g = serial().await;
    let mut cl = Cluster::start(4, &["--no-rebalance"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, TABLE, &["m"]).await;
    put(&mut c, TABLE, "a", "1").await.unwrap();
    put(&mut c, TABLE, "x", "1").await.unwrap();
    let r = ranges_of(&cl, 0).await;
    let (left, right) = (r[0].clone(), r[1].clone());

    // Replicas on different nodes: refused before anything is frozen, naming the fix.
    let nodes: Vec<u64> = right.replicas.iter().map(|x| x.node_id).collect();
    let spare = (1..=4).map(|i| cl.node_id(i - 1)).find(|n| !nodes.contains(n)).unwrap();
    c.add_replica(ChangeReplicaRequest { range_id: right.id, node_id: spare }).await.expect("add");
    c.remove_replica(ChangeReplicaRequest { range_id: right.id, node_id: nodes[0] }).await.expect("remove");
    let e = c.merge_range(MergeRangeRequest { left_range_id: left.id }).await.expect_err("misaligned");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("move replicas first"), "{e}");
    c.add_replica(ChangeReplicaRequest { range_id: right.id, node_id: nodes[0] }).await.expect("add back");
    c.remove_replica(ChangeReplicaRequest { range_id: right.id, node_id: spare }).await.expect("remove spare");

    // A replica's node down: the freeze cannot be confirmed everywhere, so the merge
    // is abandoned and the right range thawed; both keep serving.
    let down = cl.index_of(nodes[1]);
    cl.kill(down);
    let reader = (0..4).find(|i| *i != down).unwrap();
    let mut c = cl.client(reader).await;
    let started = Instant::now();
    let e = c.merge_range(MergeRangeRequest { left_range_id: left.id }).await.expect_err("a replica is down");
    assert!(e.message().contains("did not apply its freeze"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    put(&mut c, TABLE, "x", "2").await.expect("the right range takes writes again");
    assert_eq!(get(&mut c, TABLE, "x").await.unwrap().as_deref(), Some("2"));
    assert_eq!(ranges_of(&cl, reader).await.len(), 2);

    // Back up: the same merge goes through.
    cl.restart(down);
    cl.wait_live(down, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.merge_range(MergeRangeRequest { left_range_id: left.id }).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => panic!("merge after the node came back: {e}"),
        }
    }
    assert_eq!(get(&mut c, TABLE, "x").await.unwrap().as_deref(), Some("2"));
    assert_eq!(get(&mut c, TABLE, "a").await.unwrap().as_deref(), Some("1"));
    assert_eq!(ranges_of(&cl, reader).await.len(), 1);
}

/// Sends gets and puts (one in four) over `key0000`..`key0999` from a few clients
/// until stopped; remembers every acknowledged put.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cl: &Cluster, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|c| {
                let (stop, acked, addr) = (stop.clone(), acked.clone(), cl.grpc(c % 3));
                tokio::spawn(async move {
                    let mut client = client_at(&addr);
                    let mut n = c as u64 * 1_000_003;
                    while !stop.load(Ordering::Relaxed) {
                        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let key = format!("key{:04}", (n >> 33) % 1000);
                        let timeout = Duration::from_secs(3);
                        if n.is_multiple_of(4) {
                            if let Ok(Ok(_)) = tokio::time::timeout(timeout, put(&mut client, TABLE, &key, "v")).await {
                                acked.lock().unwrap().push(key);
                            }
                        } else {
                            let _ = tokio::time::timeout(timeout, get(&mut client, TABLE, &key)).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, acked, tasks }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_split_for_load_merges_back_once_cold_after_its_replicas_are_aligned() {
    let _g = serial().await;
    let cl = Cluster::start(
        4,
        &["--no-rebalance", "--load-split-qps", "150", "--load-split-sustain-ms", "3000", "--merge-after-secs", "3"],
    )
    .await;
    let mut c = cl.client(0).await;
    // An operator's split point: never merged away, however cold.
    create_table(&mut c, TABLE, &["x"]).await;
    put(&mut c, TABLE, "y", "1").await.unwrap();
    let declared = ranges_of(&cl, 0).await;
    assert_eq!(declared.len(), 2);

    let load = Load::start(&cl, 12);
    let started = Instant::now();
    let split = loop {
        let r = ranges_of(&cl, 0).await;
        if r.len() == 3 {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no load split: {r:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // Put the load-split part's replicas on other nodes than its neighbour's: the
    // controller must align them before it can merge.
    let right = &split[1];
    let nodes: Vec<u64> = right.replicas.iter().map(|x| x.node_id).collect();
    let spare = (0..4).map(|i| cl.node_id(i)).find(|n| !nodes.contains(n)).unwrap();
    let moved = *nodes.iter().find(|n| **n != right.leader_node_id).unwrap();
    c.add_replica(ChangeReplicaRequest { range_id: right.id, node_id: spare }).await.expect("add");
    c.remove_replica(ChangeReplicaRequest { range_id: right.id, node_id: moved }).await.expect("remove");
    // Long enough under load for the controller to align and merge the parts (3 s
    // to merge, a move) were they not busy: it must not.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let acked = load.finish().await;
    let load_stopped_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    // Half the data deleted; a scanner checks every scan against what is left while
    // the controller aligns the replicas and merges.
    let mut expected: std::collections::BTreeSet<String> = acked.iter().cloned().collect();
    expected.insert("y".into());
    let deleted: Vec<String> = expected.iter().filter(|k| k.ends_with(['1', '3', '5', '7', '9'])).cloned().collect();
    for k in &deleted {
        c.delete(DeleteRequest { table: TABLE.into(), key: k.clone().into_bytes(), ..Default::default() })
            .await
            .expect("delete");
        expected.remove(k);
    }
    let scanning = Arc::new(AtomicBool::new(true));
    let scanner = {
        let (scanning, expected, addr) = (scanning.clone(), expected.clone(), cl.grpc(2));
        tokio::spawn(async move {
            let mut c = client_at(&addr);
            let (mut ok, mut failed) = (0u64, 0u64);
            while scanning.load(Ordering::Relaxed) {
                match scan_all(&mut c, TABLE, 50).await {
                    Ok(pairs) => {
                        let got: Vec<String> = pairs.into_iter().map(|(k, _)| k).collect();
                        let want: Vec<String> = expected.iter().cloned().collect();
                        assert_eq!(got, want, "a scan during the merge saw something else than the data");
                        ok += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })
    };

    // Cold now: aligned, then merged back into one range up to the declared split.
    let started = Instant::now();
    loop {
        let r = ranges_of(&cl, 0).await;
        if r.len() == 2 {
            assert_eq!(
                r.iter().map(|r| (r.start.clone(), r.end.clone())).collect::<Vec<_>>(),
                declared.iter().map(|r| (r.start.clone(), r.end.clone())).collect::<Vec<_>>()
            );
            break;
        }
        // Range loads reach the controller with the 30 s refresh of range reports.
        assert!(started.elapsed() < Duration::from_secs(90), "not merged back: {r:?}\n{}", cl.log(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    scanning.store(false, Ordering::Relaxed);
    let (scans, failed) = scanner.await.expect("every scan during the merge saw exactly the data");
    assert!(scans > 0, "no scan completed during the merge ({failed} failed)");
    println!("{scans} scans during the alignment and merge saw exactly the data; {failed} failed");
    let events = c.list_cluster_events(ListClusterEventsRequest { limit: 0 }).await.unwrap().into_inner().events;
    let merge = events.iter().find(|e| e.kind == "merge" && e.outcome == "done").expect("a merge event");
    assert!(merge.reason.contains("merge thresholds"), "{merge:?}");
    // Small enough from the start, but busy: nothing merged while the load ran.
    assert!(events.iter().filter(|e| e.kind == "merge").all(|e| e.at_ms >= load_stopped_ms), "{events:?}");
    let align = events.iter().find(|e| e.kind == "move_replica" && e.reason.contains("aligning"));
    assert!(align.is_some_and(|e| e.outcome == "done"), "{events:?}");
    let present: std::collections::BTreeSet<String> =
        scan_all(&mut c, TABLE, 500).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(present, expected, "after the merge: every acknowledged write but the deleted ones");
    assert!(!acked.is_empty() && !deleted.is_empty());
}
