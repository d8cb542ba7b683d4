//! Change feeds through real nodes: every acknowledged write arrives, in order
//! per key, below resolved checkpoints that only grow, across splits, leader
//! kills, replica moves and consumer restarts; resumes too old for the MVCC
//! retention fail clearly; a consumer that does not read is cut off, bounded.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_check::{feed_violations, unresolved_acked, FeedRecord, FeedSession, FeedVersion};
use cairn_proto::kv::*;
use common::feed::{fv, pv, report, resume_scenario, write_until, Consumer, Recording, WriteLog};
use common::*;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_delivers_every_change_in_order_and_resumes_from_a_checkpoint() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let (checkpoint, last, writes) = match resume_scenario(&cl).await {
        Ok(r) => r,
        Err(violations) => panic!("{violations}"),
    };
    // The CLI resumes from the checkpoint too: one JSON object per line.
    let out = tokio::task::spawn_blocking({
        let (addr, from) = (cl.grpc(0), format!("{}.{}.{}", checkpoint.0, checkpoint.1, checkpoint.2));
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
                .args(["--addr", &addr, "--json", "feed", "f", "--from", &from, "--seconds", "4"])
                .output()
                .expect("run cairn feed")
        }
    })
    .await
    .expect("cli");
    assert!(out.status.success(), "cairn feed failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let version = |v: &serde_json::Value| -> FeedVersion {
        let p: Vec<u64> = v["version"].as_str().expect("version").split('.').map(|x| x.parse().expect("n")).collect();
        (p[0], p[1] as u32, p[2] as u32)
    };
    let changes = lines.iter().filter(|l| l["type"] == "put" || l["type"] == "delete").count();
    assert!(changes > 0, "the CLI printed changes");
    assert!(lines.iter().filter(|l| l["type"] != "resolved").all(|l| version(l) > checkpoint));
    assert!(lines.iter().any(|l| l["type"] == "resolved" && version(l) >= last), "the CLI printed a checkpoint");

    let mut c = cl.client(0).await;
    // A prefix feed sees only its keys; previous values come on request.
    let mut s = c
        .subscribe(SubscribeRequest {
            table: "f".into(),
            prefix: b"k05".to_vec(),
            from_version: Some(pv(checkpoint)),
            with_prev_value: true,
            resolved_interval_ms: 100,
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut prefixed = FeedSession { from: Some(checkpoint), records: Vec::new() };
    let mut with_prev = 0;
    let mut prevs = Vec::new();
    while prefixed.records.last().is_none_or(|r| !matches!(r, FeedRecord::Resolved(v) if *v >= last)) {
        let m = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("in time").expect("ok");
        let m = m.expect("stream open");
        for e in m.events {
            assert!(e.key.starts_with(b"k05"), "prefix feed sent {:?}", String::from_utf8_lossy(&e.key));
            with_prev += usize::from(e.has_prev);
            prevs.push((e.key.clone(), fv(e.version.as_ref().unwrap()), e.has_prev.then(|| e.prev_value.clone())));
            let value = (!e.deleted).then_some(e.value);
            prefixed.records.push(FeedRecord::Event { key: e.key, version: fv(&e.version.unwrap()), value });
        }
        if let Some(v) = m.resolved {
            prefixed.records.push(FeedRecord::Resolved(fv(&v)));
        }
    }
    // Each previous value is the key's acknowledged write just below the change, where
    // no write of the key is in doubt (one in doubt could have landed in between).
    type KeyHistory<'a> = Vec<(FeedVersion, Option<&'a [u8]>)>;
    let mut history: std::collections::HashMap<&[u8], KeyHistory> = Default::default();
    let mut in_doubt = std::collections::HashSet::new();
    for w in &writes {
        match w.outcome {
            cairn_check::WriteOutcome::Acked(v) => {
                history.entry(&w.key).or_default().push((v, w.value.as_deref()));
            }
            cairn_check::WriteOutcome::Unknown => {
                in_doubt.insert(w.key.as_slice());
            }
            cairn_check::WriteOutcome::Failed => {}
        }
    }
    for h in history.values_mut() {
        h.sort();
    }
    for (key, version, prev) in &prevs {
        if in_doubt.contains(key.as_slice()) {
            continue;
        }
        let expected =
            history.get(key.as_slice()).and_then(|h| h.iter().rev().find(|(v, _)| v < version)).and_then(|(_, p)| *p);
        assert_eq!(prev.as_deref(), expected, "previous value of {} at {version:?}", String::from_utf8_lossy(key));
    }
    let mine: Vec<_> = writes.iter().filter(|w| w.key.starts_with(b"k05")).cloned().collect();
    let v = feed_violations(&mine, &[prefixed]);
    assert!(v.is_empty(), "prefix feed violations:\n{}", report(&v));
    assert!(with_prev > 0, "previous values were sent");
}

async fn ranges_of(cl: &Cluster, table: &str) -> Vec<RangeStatus> {
    let s = cl.status(0).await.expect("status");
    s.ranges.into_iter().filter(|r| r.table == table).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_feed_misses_nothing_across_splits_leader_kills_moves_and_consumer_restarts() {
    let _g = serial().await;
    // Placement only as the test moves it: the halves of a split stay aligned for their merge.
    let mut cl = Cluster::start(4, &["--no-rebalance"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "f", &["k100"]).await;
    let addrs = Arc::new(Mutex::new((0..4).map(|i| cl.grpc(i)).collect::<Vec<_>>()));
    let mut consumer = Consumer::new("f", b"");
    consumer.restart(&addrs.lock().clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while consumer.current().last_resolved().is_none() {
        assert!(Instant::now() < deadline, "no resolved checkpoint within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = WriteLog::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|w| tokio::spawn(write_until(addrs.clone(), "f".into(), w, 200, log.clone(), stop.clone())))
        .collect();
    consumer.tend(Duration::from_secs(2), &addrs).await;

    // A split under the feed.
    c.split_range(SplitRangeRequest { table: "f".into(), key: b"k050".to_vec() }).await.expect("split");
    consumer.tend(Duration::from_secs(2), &addrs).await;
    consumer.restart(&addrs.lock().clone());
    consumer.tend(Duration::from_secs(1), &addrs).await;

    // The node leading the most of the table's ranges is killed, then comes back.
    let ranges = ranges_of(&cl, "f").await;
    let mut leads = std::collections::HashMap::new();
    for r in &ranges {
        *leads.entry(r.leader_node_id).or_insert(0) += 1;
    }
    let leader = leads.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id).expect("a leader");
    let victim = cl.index_of(leader);
    addrs.lock().retain(|a| *a != cl.grpc(victim));
    cl.kill(victim);
    consumer.tend(Duration::from_secs(3), &addrs).await;
    cl.restart(victim);
    addrs.lock().push(cl.grpc(victim));
    consumer.tend(Duration::from_secs(2), &addrs).await;

    // A replica moves: added on the node without one, removed from a follower.
    let mut c = client_at(&cl.grpc((victim + 1) % 4));
    let r = ranges_of(&cl, "f").await.into_iter().next().expect("a range");
    let holders: Vec<u64> = r.replicas.iter().map(|x| x.node_id).collect();
    let spare = (0..4).map(|i| cl.node_id(i)).find(|id| !holders.contains(id)).expect("a node without a replica");
    let out = holders.iter().copied().find(|id| *id != r.leader_node_id).expect("a follower");
    c.add_replica(ChangeReplicaRequest { range_id: r.id, node_id: spare }).await.expect("add replica");
    c.remove_replica(ChangeReplicaRequest { range_id: r.id, node_id: out }).await.expect("remove replica");
    consumer.tend(Duration::from_secs(2), &addrs).await;

    // Another split, merged back a moment later (its halves have the same replicas),
    // and the consumer killed once more.
    let split = c
        .split_range(SplitRangeRequest { table: "f".into(), key: b"k150".to_vec() })
        .await
        .expect("split")
        .into_inner();
    consumer.tend(Duration::from_secs(1), &addrs).await;
    let left = split.left.expect("left half").id;
    let merged = c.merge_range(MergeRangeRequest { left_range_id: left }).await;
    println!(
        "merge of range {left} with its right half: {:?}",
        merged.as_ref().map(|_| "merged").map_err(|e| e.message().to_string())
    );
    assert!(merged.is_ok(), "the halves of a fresh split merge back: {merged:?}");
    consumer.tend(Duration::from_secs(1), &addrs).await;
    consumer.restart(&addrs.lock().clone());
    consumer.tend(Duration::from_secs(2), &addrs).await;

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let last = log.max_acked().expect("writes were acknowledged");
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.current().last_resolved().is_none_or(|r| r < last) {
        assert!(Instant::now() < deadline, "the feed did not resolve past the last acknowledged write in 30 s");
        consumer.tend(Duration::from_millis(200), &addrs).await;
    }
    let sessions: Vec<FeedSession> = consumer.sessions.iter().map(Recording::session).collect();
    let writes = log.0.lock().clone();
    let events: usize = consumer.sessions.iter().map(Recording::events).sum();
    println!(
        "{} writes ({} acknowledged), {} sessions, {events} events delivered, {} ranges at the end",
        writes.len(),
        log.acked(),
        sessions.len(),
        ranges_of(&cl, "f").await.len()
    );
    let v = feed_violations(&writes, &sessions);
    assert!(v.is_empty(), "feed violations:\n{}", report(&v));
    assert_eq!(unresolved_acked(&writes, &sessions), 0);
    assert!(consumer.restarts >= 3);
}

/// A consumer that comes back after the MVCC retention window gets a clear
/// error naming it, never a stream with a silent gap; a recent checkpoint works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_older_than_the_retention_window_fails_clearly() {
    let _g = serial().await;
    let cl = Cluster::start(3, &["--mvcc-retention-secs", "2"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "old", &[]).await;
    let first = put(&mut c, "old", "a", "1").await.expect("put").version.expect("version");
    put(&mut c, "old", "a", "2").await.expect("put");
    // A checkpoint from a minute before: far past the 2 s window, whatever compactions ran.
    let first = Version { wall_ns: first.wall_ns - 60_000_000_000, ..first };
    let subscribe = |from: Version| SubscribeRequest {
        table: "old".into(),
        from_version: Some(from),
        resolved_interval_ms: 100,
        ..Default::default()
    };
    let mut s = c.subscribe(subscribe(first)).await.expect("subscribe").into_inner();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("an answer in time") {
            Ok(Some(m)) => assert!(m.events.is_empty(), "a too-old resume sent changes: {:?}", m.events),
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("retention"), "the error names the retention window: {}", err.message());

    let recent = put(&mut c, "old", "b", "3").await.expect("put").version.expect("version");
    put(&mut c, "old", "b", "4").await.expect("put");
    let mut s = c.subscribe(subscribe(recent)).await.expect("subscribe").into_inner();
    let m = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("in time").expect("ok");
    let values: Vec<_> = m.expect("open").events.into_iter().map(|e| e.value).collect();
    assert_eq!(values, vec![b"4".to_vec()], "only the change above the checkpoint");
}

/// A consumer that stops reading does not grow the node's memory: past the
/// per-stream buffer its stream ends with RESOURCE_EXHAUSTED naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_that_does_not_read_is_cut_off_at_its_buffer() {
    let _g = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cairn.toml");
    std::fs::write(&config, "[limits]\nfeed_buffer_events = 2000\n").expect("config");
    let cl = Cluster::start(3, &["--config", config.to_str().expect("utf-8 path")]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "slow", &[]).await;
    let mut s = c
        .subscribe(SubscribeRequest { table: "slow".into(), resolved_interval_ms: 100, ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    // One message (the first checkpoint), then nothing is read while 40,000 changes commit.
    tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("in time").expect("ok");
    let value = vec![b'v'; 200];
    for batch in 0..40 {
        let ops = (0..1000)
            .map(|i| WriteOp {
                op: Some(write_op::Op::Put(PutRequest {
                    key: format!("k{batch:02}-{i:04}").into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        c.batch_write(BatchWriteRequest { table: "slow".into(), ops, ..Default::default() }).await.expect("batch");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut received = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("in time") {
            Ok(Some(m)) => received += m.events.len(),
            Ok(None) => panic!("the stream ended without an error after {received} changes"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("feed_buffer_events"), "{}", err.message());
    assert!(received < 40_000, "the stream was cut off before it sent everything ({received} changes)");
    println!("cut off after {received} changes: {}", err.message());
}
