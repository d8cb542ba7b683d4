//! The controller looking after the cluster on its own, on real `cairn server`
//! processes with a client workload running throughout: a node killed for good
//! is replaced (every range back at its replication factor on live nodes), no
//! acknowledged write is lost, and the dead node, restarted, collects the
//! replicas it no longer holds. A node that joins takes its share of replicas
//! and leaders, and every move is in the cluster event log.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TABLE: &str = "elastic";
/// The shortest `dead_after` a node accepts (the liveness timeout).
const DEAD_AFTER_SECS: u64 = 10;
/// Once the node is dead, every range must have its replicas back within this:
/// a few controller rounds, each a learner add, a snapshot and two conf changes.
const REPLACEMENT_BOUND: Duration = Duration::from_secs(60);

/// Disk bytes under `dir`.
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        };
        total += if meta.is_dir() { disk_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

/// What is still wrong with the ranges, as node `i` sees them: each must have a
/// leader and `rf` voters, none on `gone`, and no learner.
async fn unreplaced(cl: &Cluster, i: usize, gone: u64, rf: usize) -> Result<(), String> {
    let s = cl.status(i).await.map_err(|e| e.message().to_string())?;
    for r in &s.ranges {
        let voters = r.replicas.iter().filter(|x| !x.learner).count();
        let on_gone = r.replicas.iter().any(|x| x.node_id == gone);
        if voters != rf || on_gone || r.leader_node_id == 0 || r.replicas.len() != rf {
            return Err(format!(
                "range {} ({}): replicas {:?}, leader {}",
                r.id, r.table, r.replicas, r.leader_node_id
            ));
        }
    }
    Ok(())
}

/// A client writing unique keys through node 1 for as long as a test runs; every
/// acknowledged key must be readable at the end.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(cl: &Cluster, value_bytes: usize) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let (stop2, acked2, addr) = (stop.clone(), acked.clone(), cl.grpc(0));
        let task = tokio::spawn(async move {
            let mut c = client_at(&addr);
            let value = "v".repeat(value_bytes);
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("k/{}/{n:06}", n % 10);
                match tokio::time::timeout(Duration::from_secs(3), put(&mut c, TABLE, &key, &value)).await {
                    Ok(Ok(_)) => acked2.lock().unwrap().push(key),
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Writer { stop, acked, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writer and checks, through node `reader`, that no acknowledged key was
    /// lost; returns how many were acknowledged.
    async fn finish(self, cl: &Cluster, reader: usize) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let acked: Vec<String> = self.acked.lock().unwrap().clone();
        let mut c = cl.client(reader).await;
        let present: BTreeSet<String> =
            scan_all(&mut c, TABLE, 1000).await.unwrap().into_iter().map(|(k, _)| k).collect();
        let lost = cairn_check::lost_writes(acked.clone(), &present);
        assert!(lost.is_empty(), "{} acknowledged writes lost, first {:?}", lost.len(), &lost[..lost.len().min(5)]);
        acked.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_is_replaced_and_collects_its_replicas_when_it_returns() {
    let _g = serial().await;
    let dead_after = DEAD_AFTER_SECS.to_string();
    let mut cl = Cluster::start(4, &["--dead-after-secs", &dead_after]).await;
    let mut admin = cl.client(0).await;
    create_table(&mut admin, TABLE, &["k/2", "k/5", "k/8"]).await;
    cl.wait_replicated(3, Duration::from_secs(60)).await;

    // A writer through node 1 for the whole test; every acknowledged key must survive.
    let writer = Writer::start(&cl, 1024);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The victim: the node (other than node 1, which the writer and the checks use)
    // holding the most replicas.
    let status = cl.status(0).await.unwrap();
    let held_by = |i: usize| {
        let id = cl.node_id(i);
        status.ranges.iter().filter(|r| r.replicas.iter().any(|x| x.node_id == id)).count()
    };
    let victim = (1..4).max_by_key(|i| held_by(*i)).unwrap_or(3);
    let gone = cl.node_id(victim);
    let held = held_by(victim);
    assert!(held >= 2, "node {gone} holds {held} replicas: too few to show a replacement");
    let used_before = status.nodes.iter().find(|n| n.id == gone).map_or(0, |n| n.used_bytes);
    let acked_before = writer.acked();
    cl.kill(victim);
    let killed = Instant::now();

    // Dead after `dead_after`, then replaced: add first, then remove.
    let deadline = killed + Duration::from_secs(DEAD_AFTER_SECS) + REPLACEMENT_BOUND;
    while let Err(last) = unreplaced(&cl, 0, gone, 3).await {
        let waited = deadline - killed;
        assert!(Instant::now() < deadline, "not replaced {waited:?} after the kill: {last}\n{}", cl.log(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let replaced_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Read back through a surviving node other than the writer's.
    let acked = writer.finish(&cl, if victim == 1 { 2 } else { 1 }).await;
    assert!(acked > acked_before + 100, "the writer went on through the replacement: {acked_before} then {acked}");

    // Back from the dead: its replicas were removed, so it collects them. Once live
    // and empty it may be given new replicas by balancing: what it must not keep is
    // a replica of a range that no longer lists it.
    let stale: BTreeSet<u64> =
        status.ranges.iter().filter(|r| r.replicas.iter().any(|x| x.node_id == gone)).map(|r| r.id).collect();
    cl.restart(victim);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed: BTreeSet<u64> = cl
            .status(0)
            .await
            .unwrap()
            .ranges
            .iter()
            .filter(|r| r.replicas.iter().any(|x| x.node_id == gone))
            .map(|r| r.id)
            .collect();
        // Only a node that answers counts (an unreachable one lists no replicas).
        let body = http_get(&cl.http(victim), "/api/node").await.unwrap_or_default();
        let node: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let local: BTreeSet<u64> = node["replicas"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["range_id"].as_u64()).collect())
            .unwrap_or_default();
        let leftover: Vec<u64> =
            local.iter().filter(|id| stale.contains(id) && !listed.contains(id)).copied().collect();
        if node["replicas"].is_array() && leftover.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {gone} still holds replicas {leftover:?} that their ranges no longer list\n{}",
            cl.log(victim)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let used_after = cl.status(0).await.unwrap().nodes.iter().find(|n| n.id == gone).map_or(0, |n| n.used_bytes);
    // Balancing may be moving a replica onto it meanwhile: whole again once that settles.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(last) = unreplaced(&cl, 0, 0, 3).await {
        assert!(Instant::now() < deadline, "ranges not whole after node {gone} returned: {last}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "node {gone} held {held} replicas; every range was back at 3 voters {replaced_after:.1?} after the kill \
         (dead_after {DEAD_AFTER_SECS}s); {} writes acknowledged, none lost; back, it kept none of them \
         (used bytes it reported: {used_before} before the kill, {used_after} after; its data dir now {} bytes)",
        acked,
        disk_bytes(&cl.nodes[victim].dir)
    );
}

/// How many ranges node `id` leads, and how many it holds a replica of, as node `i` sees it.
async fn led_and_held(cl: &Cluster, i: usize, id: u64) -> (usize, usize) {
    let s = cl.status(i).await.unwrap();
    let led = s.ranges.iter().filter(|r| r.leader_node_id == id).count();
    let held = s.ranges.iter().filter(|r| r.replicas.iter().any(|x| x.node_id == id)).count();
    (led, held)
}

/// `cairn cluster status`'s report of `kind` for node `id`: (remaining, detail).
async fn progress_of(cl: &Cluster, i: usize, kind: &str, id: u64) -> Option<(u32, String)> {
    let s = cl.status(i).await.ok()?;
    s.progress.iter().find(|p| p.kind == kind && p.node_id == id).map(|p| (p.remaining, p.detail.clone()))
}

/// Waits until the status reports `kind` done for node `id`, and returns the CLI's text.
async fn wait_reported_done(cl: &Cluster, kind: &str, id: u64) -> String {
    let started = Instant::now();
    loop {
        if let Some((0, detail)) = progress_of(cl, 0, kind, id).await {
            assert!(detail.starts_with("done"), "{kind} of node {id}: {detail}");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
                .args(["--addr", &cl.grpc(0), "cluster", "status"])
                .output()
                .expect("run cairn cluster status");
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{kind} of node {id} not reported done");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn state_of(cl: &Cluster, i: usize, id: u64) -> String {
    let s = cl.status(i).await.unwrap();
    s.nodes.iter().find(|n| n.id == id).map(|n| n.state.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_sheds_its_leaders_and_a_decommissioned_one_its_replicas() {
    use cairn_proto::kv::{NodeState, SetNodeStateRequest};
    let _g = serial().await;
    let mut cl = Cluster::start(4, &[]).await;
    let mut admin = cl.client(0).await;
    create_table(&mut admin, TABLE, &["k/2", "k/5", "k/8"]).await;
    cl.wait_replicated(3, Duration::from_secs(60)).await;

    let writer = Writer::start(&cl, 1);

    // The node (other than node 1, the writer's) holding the most replicas is given
    // the leadership of each of them, then drained.
    let mut target = 1;
    let mut most = 0;
    for i in 1..4 {
        let (_, held) = led_and_held(&cl, 0, cl.node_id(i)).await;
        if held > most {
            (target, most) = (i, held);
        }
    }
    let id = cl.node_id(target);
    for r in cl.status(0).await.unwrap().ranges.iter().filter(|r| r.replicas.iter().any(|x| x.node_id == id)) {
        let req = cairn_proto::kv::TransferLeaderRequest { range_id: r.id, node_id: id };
        let _ = admin.transfer_leader(req).await;
    }
    let (led_before, held_before) = led_and_held(&cl, 0, id).await;
    assert!(led_before >= 1 && held_before >= 2, "node {id} leads {led_before} and holds {held_before}: too few");
    let set = |state: NodeState| SetNodeStateRequest { node_id: id, state: state as i32 };
    admin.set_node_state(set(NodeState::Draining)).await.expect("drain");
    let started = Instant::now();
    let (left, _) = progress_of(&cl, 0, "drain", id).await.expect("the drain is reported in progress");
    assert!(left >= 1, "the drain is reported done before any leadership moved");
    loop {
        let (led, held) = led_and_held(&cl, 0, id).await;
        if led == 0 {
            assert!(held > 0, "a drained node keeps its replicas");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "node {id} still leads {led} ranges after draining");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let drained_after = started.elapsed();
    assert_eq!(state_of(&cl, 0, id).await, "draining");
    let text = wait_reported_done(&cl, "drain", id).await;
    assert!(text.contains(&format!("done: node {id} leads no range")), "cairn cluster status:\n{text}");

    // Decommissioned: every replica moves off it, add first, and then it can go.
    admin.set_node_state(set(NodeState::Decommissioning)).await.expect("decommission");
    let started = Instant::now();
    let (left, _) = progress_of(&cl, 0, "decommission", id).await.expect("the decommission is reported");
    assert!(left >= 1, "the decommission is reported done before any replica moved");
    loop {
        let (_, held) = led_and_held(&cl, 0, id).await;
        if held == 0 && unreplaced(&cl, 0, id, 3).await.is_ok() && state_of(&cl, 0, id).await == "decommissioned" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "node {id} still holds {held} replicas: {:?}",
            unreplaced(&cl, 0, id, 3).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let decommissioned_after = started.elapsed();
    let text = wait_reported_done(&cl, "decommission", id).await;
    assert!(text.contains(&format!("done: node {id} holds no replica and can be stopped")), "{text}");
    cl.kill(target);
    // Stopping it costs no range a voter: writes go on.
    let acked_at_stop = writer.acked();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked = writer.finish(&cl, if target == 1 { 2 } else { 1 }).await;
    assert!(acked > acked_at_stop + 50, "writes stalled after the decommissioned node stopped");
    println!(
        "node {id} led {led_before} ranges, none {drained_after:.1?} after the drain; it held {held_before} \
         replicas, none {decommissioned_after:.1?} after the decommission; {} writes acknowledged, none lost",
        acked
    );
}

/// Per node id: (replicas held, ranges led), as node `i` sees the ranges.
async fn spread(cl: &Cluster, i: usize) -> std::collections::BTreeMap<u64, (usize, usize)> {
    let s = cl.status(i).await.unwrap();
    let mut out: std::collections::BTreeMap<u64, (usize, usize)> =
        s.nodes.iter().filter(|n| n.live).map(|n| (n.id, (0, 0))).collect();
    for r in &s.ranges {
        for x in &r.replicas {
            if let Some(e) = out.get_mut(&x.node_id) {
                e.0 += 1;
            }
        }
        if let Some(e) = out.get_mut(&r.leader_node_id) {
            e.1 += 1;
        }
    }
    out
}

/// Whether every count is within 10% of the mean, or within one of every other
/// (what whole replicas allow when 10% of the mean is less than one).
fn even(counts: &[usize]) -> bool {
    let mean = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    let (lo, hi) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
    hi - lo <= 1 || counts.iter().all(|c| (*c as f64 - mean).abs() <= mean * 0.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_takes_its_share_of_replicas_and_leaders() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &[]).await;
    let mut admin = cl.client(0).await;
    create_table(&mut admin, TABLE, &["k/1", "k/2", "k/3", "k/4", "k/5", "k/6", "k/7", "k/8"]).await;
    cl.wait_replicated(3, Duration::from_secs(60)).await;
    // Leaders spread over the three nodes first (the table's ranges start led by one).
    let started = Instant::now();
    while !even(&spread(&cl, 0).await.values().map(|c| c.1).collect::<Vec<_>>()) {
        assert!(started.elapsed() < Duration::from_secs(60), "leaders not balanced: {:?}", spread(&cl, 0).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let writer = Writer::start(&cl, 1024);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seq_before = admin
        .list_cluster_events(cairn_proto::kv::ListClusterEventsRequest { limit: 1 })
        .await
        .unwrap()
        .into_inner()
        .events
        .first()
        .map_or(0, |e| e.seq);

    let joined = cl.add_node();
    let new_id = cl.node_id(joined);
    let started = Instant::now();
    let settled = loop {
        let s = spread(&cl, 0).await;
        let replicas: Vec<usize> = s.values().map(|c| c.0).collect();
        let leaders: Vec<usize> = s.values().map(|c| c.1).collect();
        let whole = unreplaced(&cl, 0, 0, 3).await.is_ok();
        if s.len() == 4 && whole && even(&replicas) && even(&leaders) {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not balanced 120 s after node {new_id} joined: {s:?} (whole: {whole})\n{}",
            cl.log(0)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let balanced_after = started.elapsed();
    let (new_replicas, new_leaders) = settled[&new_id];
    assert!(new_replicas > 0 && new_leaders > 0, "node {new_id} took nothing: {settled:?}");

    // Every move is in the event log, with its reason; data moved stays near the ideal.
    let events = admin
        .list_cluster_events(cairn_proto::kv::ListClusterEventsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .events;
    let since: Vec<_> = events.iter().filter(|e| e.seq > seq_before).collect();
    let moves = since.iter().filter(|e| e.kind == "move_replica" && e.outcome == "done").count();
    let moved_in = since.iter().filter(|e| e.kind == "move_replica" && e.to_node_id == new_id).count();
    assert!(
        moved_in >= new_replicas,
        "node {new_id} holds {new_replicas} replicas, but the log shows {moved_in} moves onto it"
    );
    let total: usize = settled.values().map(|c| c.0).sum();
    let ideal = total as f64 / 4.0;
    assert!(moves as f64 <= (ideal * 1.3).ceil(), "{moves} replicas moved for an ideal of {ideal:.1}");
    assert!(
        since.iter().all(|e| !e.reason.is_empty() && e.recorded_by != 0 && e.at_ms > 0),
        "every event has a reason, a time and its recorder: {since:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writer.finish(&cl, 1).await;
    println!(
        "node {new_id} joined a 3-node cluster of {} ranges: balanced after {balanced_after:.1?} with {moves} \
         replica moves (ideal {ideal:.1}); spread (replicas, leaders) per node {settled:?}; {} events logged; \
         {acked} writes acknowledged, none lost",
        total / 3,
        since.len()
    );
}
