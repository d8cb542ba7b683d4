//! End-to-end behaviour of a real cluster: separate `cairn server` processes
//! on loopback sockets and real disks, driven through the public gRPC API.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_proto::kv::*;
use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Writers that put unique keys through every node until stopped, recording
/// which writes were acknowledged (and never treating a failed one as written).
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(cl: &Cluster, table: &str, n: usize, prefix: &str, pause: Duration) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for w in 0..n {
            let mut clients = Vec::new();
            for i in 0..cl.nodes.len() {
                if cl.nodes[i].child.is_some() {
                    clients.push(cl.client(i).await);
                }
            }
            let (stop, acked, table, prefix) = (stop.clone(), acked.clone(), table.to_string(), prefix.to_string());
            handles.push(tokio::spawn(async move {
                let mut seq = 0u64;
                let mut attempt = 0usize;
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let key = format!("{prefix}{w}-{seq:06}");
                    let n = clients.len();
                    attempt += 1;
                    let c = &mut clients[attempt % n];
                    let req = PutRequest {
                        ttl_ms: 0,
                        table: table.clone(),
                        key: key.clone().into(),
                        value: key.clone().into(),
                        condition: None,
                        request_id: key.clone().into(),
                    };
                    if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(12), c.put(req)).await {
                        if r.into_inner().succeeded {
                            acked.lock().unwrap().push(key);
                            seq += 1;
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        Writers { stop, acked, handles }
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.await;
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Reads every key through node `i`, failing on any acknowledged key that is missing.
async fn assert_all_readable(cl: &Cluster, i: usize, table: &str, keys: &[String]) {
    let mut c = cl.client(i).await;
    for k in keys {
        let mut got = None;
        for _ in 0..50 {
            match get(&mut c, table, k).await {
                Ok(v) => {
                    got = Some(v);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        assert_eq!(got, Some(Some(k.clone())), "acknowledged write {k} lost (read via node {})", i + 1);
    }
}

fn assert_strictly_ordered(keys: &[String]) {
    for w in keys.windows(2) {
        assert!(w[0] < w[1], "scan out of order or duplicated: {:?} then {:?}", w[0], w[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_operations_through_every_node_across_splits() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c1 = cl.client(0).await;
    create_table(&mut c1, "kv", &[]).await;
    let mut clients = [c1, cl.client(1).await, cl.client(2).await];
    for i in 0..150 {
        let k = format!("k{i:04}");
        put(&mut clients[i % 3], "kv", &k, &format!("v{i}")).await.expect("put");
    }
    for (n, c) in clients.iter_mut().enumerate() {
        assert_eq!(get(c, "kv", "k0007").await.unwrap(), Some("v7".into()), "get via node {}", n + 1);
    }
    let d = clients[1]
        .delete(DeleteRequest { table: "kv".into(), key: "k0003".into(), condition: None, request_id: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(d.succeeded && d.existed);
    assert_eq!(get(&mut clients[2], "kv", "k0003").await.unwrap(), None);

    // Splits and scans while writers keep writing.
    let writers = Writers::start(&cl, "kv", 3, "w", Duration::from_millis(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (n, key) in ["k0050", "k0100", "w1-", "w2-000040"].iter().enumerate() {
        clients[n % 3]
            .split_range(SplitRangeRequest { table: "kv".into(), key: key.as_bytes().to_vec() })
            .await
            .unwrap_or_else(|e| panic!("split at {key}: {e} (CAIRN_KEEP_TEST_DIRS=1 keeps the logs)"));
    }
    for round in 0..3 {
        let before: BTreeSet<String> = writers.acked().into_iter().collect();
        let scanned = scan_all(&mut clients[round % 3], "kv", 37).await.expect("scan");
        let keys: Vec<String> = scanned.iter().map(|(k, _)| k.clone()).collect();
        assert_strictly_ordered(&keys);
        let have: BTreeSet<String> = keys.iter().cloned().collect();
        for k in &before {
            assert!(have.contains(k), "scan round {round} missed acknowledged key {k}");
        }
        for i in (0..150).filter(|i| *i != 3) {
            assert!(have.contains(&format!("k{i:04}")), "scan missed k{i:04}");
        }
        assert!(!have.contains("k0003"), "deleted key came back");
    }
    let acked = writers.finish().await;
    assert!(acked.len() > 50, "writers made progress during splits: {}", acked.len());
    assert_all_readable(&cl, 2, "kv", &acked).await;
    let s = cl.status(0).await.unwrap();
    let kv_ranges = s.ranges.iter().filter(|r| r.table == "kv").count();
    assert!(kv_ranges >= 5, "table has its splits: {kv_ranges} ranges");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failure_keeps_acknowledged_writes_and_restarted_nodes_catch_up() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &["--raft-log-gc-threshold", "400"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "lf", &[]).await;
    put(&mut c, "lf", "seed", "seed").await.unwrap();
    let (range_id, leader) = leader_of(&cl, 0, "lf").await.expect("range has a leader");
    let victim = cl.index_of(leader);

    // Part 1: kill -9 the leader under load; catch up from the log afterwards.
    let writers = Writers::start(&cl, "lf", 2, "a", Duration::from_millis(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cl.kill(victim);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The registry calls the dead node live for seconds yet; a leadership handed to
    // it would stall the range (raft-rs drops proposals during a transfer), so the
    // range's leader refuses at once, naming the reason.
    let mut via_survivor = cl.client((victim + 1) % 3).await;
    let asked = Instant::now();
    let refused = via_survivor
        .transfer_leader(TransferLeaderRequest { range_id, node_id: cl.node_id(victim) })
        .await
        .expect_err("leadership handed to a dead node");
    assert!(refused.message().contains("has not been heard from"), "refused for another reason: {refused}");
    assert!(asked.elapsed() < Duration::from_secs(3), "refusal took {:?}", asked.elapsed());
    let during = writers.acked().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writers.finish().await;
    assert!(acked.len() > during, "writes are accepted again after failover ({during} -> {})", acked.len());
    let survivor = (victim + 1) % 3;
    assert_all_readable(&cl, survivor, "lf", &acked).await;
    cl.restart(victim);
    cl.wait_caught_up(victim, survivor, range_id, Duration::from_secs(60)).await;
    assert_eq!(cl.metric(victim, "cairn_snapshots_received_total").await, 0.0, "caught up from the log");
    assert_all_readable(&cl, victim, "lf", &acked).await;

    // Part 2: a follower misses more than the log keeps; it is caught up by a snapshot.
    let (_, leader) = leader_of(&cl, 0, "lf").await.expect("leader");
    let follower = (0..3).find(|i| cl.node_id(*i) != leader).expect("a follower");
    let other = (0..3).find(|i| *i != follower).expect("another node");
    cl.kill(follower);
    let mut c = cl.client(other).await;
    let mut burst = Vec::new();
    for i in 0..700 {
        let k = format!("b{i:05}");
        put(&mut c, "lf", &k, &k).await.expect("put while a follower is down");
        burst.push(k);
    }
    cl.restart(follower);
    cl.wait_caught_up(follower, other, range_id, Duration::from_secs(60)).await;
    assert!(cl.metric(follower, "cairn_snapshots_received_total").await >= 1.0, "caught up through a snapshot");
    assert_all_readable(&cl, follower, "lf", &burst).await;
    assert_all_readable(&cl, follower, "lf", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_restart_keeps_every_write() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "fr", &["g", "p"]).await;
    let mut keys = Vec::new();
    for i in 0..300 {
        let k = format!("{}{i:04}", (b'a' + (i % 26) as u8) as char);
        put(&mut c, "fr", &k, &k).await.unwrap();
        keys.push(k);
    }
    for i in 0..3 {
        cl.kill(i);
    }
    for i in 0..3 {
        cl.restart(i);
    }
    for i in 0..3 {
        assert_all_readable(&cl, i, "fr", &keys).await;
    }
    let mut c = cl.client(1).await;
    let scanned = scan_all(&mut c, "fr", 50).await.unwrap();
    assert_eq!(scanned.len(), 300);
    put(&mut c, "fr", "after", "restart").await.expect("writes work after a full restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_quorum_fails_fast_and_recovers() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "q", &[]).await;
    put(&mut c, "q", "before", "1").await.unwrap();
    cl.kill(1);
    cl.kill(2);
    let started = Instant::now();
    let r = put(&mut c, "q", "during", "x").await;
    let took = started.elapsed();
    let e = r.expect_err("a write without quorum must not succeed");
    assert_eq!(e.code(), tonic::Code::Unavailable, "retryable unavailable: {e}");
    assert!(took < Duration::from_secs(9), "fails fast, took {took:?}");
    let e = get(&mut c, "q", "before").await.expect_err("linearizable read without quorum must fail");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    cl.restart(1);
    cl.restart(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match put(&mut c, "q", "after", "2").await {
            Ok(r) if r.succeeded => break,
            other => assert!(Instant::now() < deadline, "writes did not resume: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(get(&mut c, "q", "before").await.unwrap(), Some("1".into()));
    assert_eq!(get(&mut c, "q", "after").await.unwrap(), Some("2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_routes_reach_the_new_leader() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c1 = cl.client(0).await;
    let mut c3 = cl.client(2).await;
    create_table(&mut c1, "sr", &[]).await;
    // Node 3's gateway caches the table's single range.
    put(&mut c3, "sr", "a", "1").await.unwrap();
    put(&mut c3, "sr", "x", "1").await.unwrap();
    // Through node 1: split, then move the right half's leadership.
    let split =
        c1.split_range(SplitRangeRequest { table: "sr".into(), key: b"m".to_vec() }).await.unwrap().into_inner();
    let right = split.right.expect("new range");
    let s = cl.status(0).await.unwrap();
    let cur = s.ranges.iter().find(|r| r.id == right.id).map(|r| r.leader_node_id).unwrap_or(0);
    let target = right.replicas.iter().map(|r| r.node_id).find(|n| *n != cur).expect("another voter");
    c1.transfer_leader(TransferLeaderRequest { range_id: right.id, node_id: target }).await.expect("transfer");
    // Node 3 still believes in the old route; it must find its way.
    put(&mut c3, "sr", "x", "2").await.expect("write via stale gateway");
    put(&mut c3, "sr", "a", "2").await.expect("write via stale gateway");
    assert_eq!(get(&mut c3, "sr", "x").await.unwrap(), Some("2".into()));
    assert_eq!(get(&mut c1, "sr", "a").await.unwrap(), Some("2".into()));
    let s = cl.status(1).await.unwrap();
    let leader = s.ranges.iter().find(|r| r.id == right.id).map(|r| r.leader_node_id);
    assert_eq!(leader, Some(target), "leadership moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_request_id_applies_once() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    let mut c2 = cl.client(1).await;
    create_table(&mut c, "id", &[]).await;
    let first = c
        .put(PutRequest {
            ttl_ms: 0,
            table: "id".into(),
            key: "k".into(),
            value: "x".into(),
            condition: None,
            request_id: b"req-1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    put(&mut c, "id", "k", "y").await.unwrap();
    // A late retry of the first request (through another node) must not apply again.
    let retry = c2
        .put(PutRequest {
            ttl_ms: 0,
            table: "id".into(),
            key: "k".into(),
            value: "x".into(),
            condition: None,
            request_id: b"req-1".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.version, first.version, "the retry returns the first attempt's result");
    assert_eq!(get(&mut c, "id", "k").await.unwrap(), Some("y".into()), "retry was not applied twice");
    // Conditional create: the retry reports success, not "already exists".
    let create = |rid: &'static [u8]| PutRequest {
        ttl_ms: 0,
        table: "id".into(),
        key: "once".into(),
        value: "1".into(),
        condition: Some(Condition { kind: Some(condition::Kind::IfAbsent(true)) }),
        request_id: rid.to_vec(),
    };
    assert!(c.put(create(b"req-2")).await.unwrap().into_inner().succeeded);
    assert!(c2.put(create(b"req-2")).await.unwrap().into_inner().succeeded, "same id: same answer");
    assert!(!c2.put(create(b"req-3")).await.unwrap().into_inner().succeeded, "new id: condition fails");

    // Increments are not idempotent by nature, so the request id is what makes a retry safe.
    let incr = |rid: &'static [u8], delta: i64| IncrementRequest {
        table: "id".into(),
        key: "ctr".into(),
        delta,
        request_id: rid.to_vec(),
    };
    assert_eq!(c.increment(incr(b"inc-1", 5)).await.unwrap().into_inner().value, 5);
    assert_eq!(c2.increment(incr(b"inc-1", 5)).await.unwrap().into_inner().value, 5, "retry returns the first result");
    assert_eq!(c2.increment(incr(b"inc-2", -2)).await.unwrap().into_inner().value, 3);
    assert_eq!(get(&mut c, "id", "ctr").await.unwrap(), Some("3".into()), "stored as decimal text");
    let err = c.increment(incr(b"inc-3", i64::MAX)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("overflow"), "{err}");
    let err = c.increment(IncrementRequest { key: "k".into(), ..incr(b"inc-4", 1) }).await.unwrap_err();
    assert!(err.message().contains("not an integer"), "{err}");
    assert_eq!(get(&mut c, "id", "ctr").await.unwrap(), Some("3".into()), "failed increments wrote nothing");
}

/// A retry that arrives after the key's range split must still find the first
/// attempt's answer, now in the right-hand range.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_request_id_applies_once_across_a_split() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "ids", &[]).await;
    let incr = |rid: &'static [u8]| IncrementRequest {
        table: "ids".into(),
        key: "n/7".into(),
        delta: 1,
        request_id: rid.to_vec(),
    };
    let put_once = PutRequest {
        ttl_ms: 0,
        table: "ids".into(),
        key: "p/7".into(),
        value: "v".into(),
        condition: Some(Condition { kind: Some(condition::Kind::IfAbsent(true)) }),
        request_id: b"create-p7".to_vec(),
    };
    assert_eq!(c.increment(incr(b"split-1")).await.unwrap().into_inner().value, 1);
    assert!(c.put(put_once.clone()).await.unwrap().into_inner().succeeded);
    // Both keys move to new right-hand ranges.
    for at in ["n/", "p/"] {
        c.split_range(SplitRangeRequest { table: "ids".into(), key: at.into() }).await.expect("split");
    }
    let mut c2 = cl.client(2).await;
    assert_eq!(c2.increment(incr(b"split-1")).await.unwrap().into_inner().value, 1, "retry answered from the record");
    assert_eq!(get(&mut c2, "ids", "n/7").await.unwrap(), Some("1".into()), "applied once");
    assert!(c2.put(put_once).await.unwrap().into_inner().succeeded, "same id: same answer after the split");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hibernating_ranges_fail_over_when_the_leader_node_dies() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "hib", &["m"]).await;
    put(&mut c, "hib", "a", "1").await.unwrap();
    put(&mut c, "hib", "z", "1").await.unwrap();
    let (_, leader) = leader_of(&cl, 0, "hib").await.expect("leader");
    // Quiet for several election timeouts: the table's ranges hibernate.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let victim = cl.index_of(leader);
    cl.kill(victim);
    let survivor = (victim + 1) % 3;
    let mut c = cl.client(survivor).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    for k in ["a", "z"] {
        loop {
            match put(&mut c, "hib", k, "2").await {
                Ok(r) if r.succeeded => break,
                other => assert!(Instant::now() < deadline, "no failover for {k}: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(15), "failover took {:?}", started.elapsed());
    assert_eq!(get(&mut c, "hib", "a").await.unwrap(), Some("2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_versions_are_garbage_collected_and_expired_scan_tokens_are_refused() {
    let _g = serial().await;
    // A one-second retention window and tiny memtables, so that compactions (which
    // collect old versions) start after a few hundred KiB of writes.
    let cl = Cluster::start(1, &["--mvcc-retention-secs", "1", "--memtable-bytes", "65536"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "gc", &[]).await;
    const KEYS: usize = 20;
    for i in 0..KEYS {
        put(&mut c, "gc", &format!("k{i:02}"), "v0").await.expect("put");
    }
    // A scan stopped after 5 keys: its token pins the table's version as of now.
    let mut s = c
        .scan(ScanRequest { table: "gc".into(), limit: 5, page_size: 5, ..Default::default() })
        .await
        .expect("scan")
        .into_inner();
    let mut token = Vec::new();
    while let Some(page) = s.message().await.expect("scan page") {
        token = page.next_page_token;
    }
    assert!(!token.is_empty(), "a scan stopped by its limit returns a token");
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Overwrite every key until compactions have dropped old versions.
    let metric = "cairn_mvcc_gc_versions_dropped_total";
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0u64;
    while cl.metric(0, metric).await == 0.0 {
        assert!(Instant::now() < deadline, "no old version collected after {round} rounds of overwrites");
        round += 1;
        let mut tasks = Vec::new();
        for i in 0..KEYS {
            let mut c = c.clone();
            let value = format!("v{round}-{}", "x".repeat(1000));
            tasks.push(tokio::spawn(async move { put(&mut c, "gc", &format!("k{i:02}"), &value).await }));
        }
        for t in tasks {
            t.await.unwrap().expect("overwrite");
        }
    }
    // Every key still reads its newest value, through a get and through a fresh scan.
    let want = format!("v{round}-{}", "x".repeat(1000));
    for i in 0..KEYS {
        assert_eq!(get(&mut c, "gc", &format!("k{i:02}")).await.unwrap().as_deref(), Some(want.as_str()));
    }
    let all = scan_all(&mut c, "gc", 7).await.expect("fresh scan");
    assert_eq!(all.len(), KEYS);
    assert!(all.iter().all(|(_, v)| *v == want), "a fresh scan reads the newest versions");
    // The old token's version is below what GC collected: refused, with the reason.
    let resumed = async {
        let mut s =
            c.scan(ScanRequest { table: "gc".into(), page_token: token, ..Default::default() }).await?.into_inner();
        while s.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    };
    let err = resumed.await.expect_err("a scan resumed below the GC safe point was served");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("retention window"), "the error names the cause: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_asked_to_stop_exits_promptly_and_resumes_from_its_data() {
    let _g = serial().await;
    let mut cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "stop", &[]).await;
    put(&mut c, "stop", "a", "1").await.expect("put");
    let asked = Instant::now();
    cl.terminate(2);
    let status = loop {
        if let Some(s) = cl.exited(2) {
            break s;
        }
        assert!(asked.elapsed() < Duration::from_secs(30), "node 3 still running 30 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = asked.elapsed();
    assert!(status.success(), "a requested stop exits cleanly: {status:?}");
    // Peers' Raft streams into the node end when it stops, so the gRPC server's graceful
    // shutdown does not wait out its 5 s limit for streams that would never end.
    assert!(took < Duration::from_secs(3), "stopping took {took:?}");
    put(&mut c, "stop", "b", "2").await.expect("the two other nodes keep a quorum");
    cl.restart(2);
    let mut c3 = cl.client(2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match get(&mut c3, "stop", "b").await {
            Ok(Some(v)) => {
                assert_eq!(v, "2");
                break;
            }
            other => assert!(Instant::now() < deadline, "restarted node 3 does not serve: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&mut c3, "stop", "a").await.unwrap().as_deref(), Some("1"));
}
