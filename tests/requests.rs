//! Request semantics at the edges of routing, on a real cluster (separate
//! `cairn server` processes, loopback sockets, real disks): a batch retried after
//! a split regrouped it, batch reads (atomic per range, bounded in memory), and
//! a table dropped and created anew through one node while another node's cache
//! still maps the name to the dropped table.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_proto::kv::*;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn put_op(key: &str, value: &str) -> WriteOp {
    WriteOp { op: Some(write_op::Op::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() })) }
}

/// Defect: each range's part of a BatchWrite was deduplicated under the request id
/// plus a hash of the part's first key, so a retry that a split had regrouped came
/// with new ids for the keys that moved, found no record, and applied them again:
/// here the retry's put of "m" would overwrite the newer write made in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_retried_after_a_split_regrouped_it_applies_each_key_once() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "bw", &[]).await;
    let batch = BatchWriteRequest {
        table: "bw".into(),
        ops: vec![put_op("a", "first"), put_op("m", "first"), put_op("z", "first")],
        request_id: b"batch-1".to_vec(),
    };
    let first = c.batch_write(batch.clone()).await.expect("first attempt").into_inner();
    assert!(first.results.iter().all(|r| r.succeeded));
    // A newer write to one key, then splits that put every key in a range of its own.
    put(&mut c, "bw", "m", "newer").await.expect("newer write");
    for at in ["h", "q"] {
        c.split_range(SplitRangeRequest { table: "bw".into(), key: at.into() }).await.expect("split");
    }
    // The client never saw the first answer (say), so it retries, through another node.
    let mut c2 = cl.client(2).await;
    let retry = c2.batch_write(batch).await.expect("retry").into_inner();
    assert_eq!(retry.results, first.results, "the retry is answered with the first attempt's results");
    assert_eq!(get(&mut c2, "bw", "m").await.unwrap().as_deref(), Some("newer"), "the retry did not apply again");
    assert_eq!(get(&mut c2, "bw", "a").await.unwrap().as_deref(), Some("first"));
}

/// Defect: a BatchGet read each key on its own (one ReadIndex each), so it could
/// see half of a single-range BatchWrite. Now each range's keys are read at one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_get_never_sees_half_of_a_single_range_batch_write() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "pairs", &[]).await;
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut c, keys, stop) = (cl.client(0).await, keys.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let ops = keys.iter().map(|k| put_op(k, &n.to_string())).collect();
                let req = BatchWriteRequest { table: "pairs".into(), ops, request_id: vec![] };
                c.batch_write(req).await.expect("batch write");
            }
            n
        })
    };
    let mut readers = Vec::new();
    for node in 0..3 {
        let (mut c, keys) = (cl.client(node).await, keys.clone());
        readers.push(tokio::spawn(async move {
            let (mut whole, deadline) = (0, Instant::now() + Duration::from_secs(6));
            while Instant::now() < deadline {
                let req = BatchGetRequest {
                    table: "pairs".into(),
                    keys: keys.iter().map(|k| k.clone().into_bytes()).collect(),
                    consistency: 0,
                    max_staleness_ms: 0,
                };
                let values: Vec<Vec<u8>> = c
                    .batch_get(req)
                    .await
                    .expect("batch get")
                    .into_inner()
                    .results
                    .into_iter()
                    .map(|r| r.value)
                    .collect();
                assert!(values.windows(2).all(|w| w[0] == w[1]), "a BatchGet saw half of a batch: {values:?}");
                whole += 1;
            }
            whole
        }));
    }
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("reader");
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.expect("writer");
    println!("{reads} batch reads of 8 keys, {writes} batch writes: every read saw whole batches");
    assert!(reads > 50 && writes > 50, "the test raced enough: {reads} reads, {writes} writes");
}

/// The resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Defect: a BatchGet read every value whole before the reply's size was checked.
/// 10,000 keys of 1 MiB is 10 GiB: the request must be refused, naming the limit,
/// while the node's memory stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_get_too_large_to_answer_is_refused_before_memory_grows() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "big", &[]).await;
    let value = "v".repeat(1 << 20);
    for i in 0..20 {
        put(&mut c, "big", &format!("k{i:02}"), &value).await.expect("1 MiB put");
    }
    let pid = cl.nodes[0].child.as_ref().expect("running").id();
    let before = rss_bytes(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let req = BatchGetRequest {
        table: "big".into(),
        keys: (0..10_000).map(|i| format!("k{:02}", i % 20).into_bytes()).collect(),
        consistency: 0,
        max_staleness_ms: 0,
    };
    let started = Instant::now();
    let err = c.batch_get(req).await.expect_err("a 10 GiB reply must be refused");
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    println!("refused in {:?}; node RSS grew by {} MiB at most", started.elapsed(), grew >> 20);
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("max_batch_bytes"), "the error names the limit: {err}");
    assert!(grew < 200 << 20, "the node's memory grew by {} MiB while refusing", grew >> 20);
    // Under the limit, a batch read of the same keys works.
    let small = BatchGetRequest {
        table: "big".into(),
        keys: (0..8).map(|i| format!("k{i:02}").into_bytes()).collect(),
        consistency: 0,
        max_staleness_ms: 0,
    };
    let results = c.batch_get(small).await.expect("8 MiB batch read").into_inner().results;
    assert!(results.iter().all(|r| r.found && r.value.len() == 1 << 20));
}

/// Defect: each node caches table name → id, and a drop through another node never
/// reached that cache, so after a drop and re-create through node 1, node 2 kept
/// writing to the dropped table's id and acknowledged writes that nobody else saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_dropped_and_created_again_through_one_node_is_not_written_stale_through_another() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let (mut c1, mut c2, mut c3) = (cl.client(0).await, cl.client(1).await, cl.client(2).await);
    create_table(&mut c1, "t", &[]).await;
    // Nodes 2 and 3 cache the table's id.
    put(&mut c2, "t", "k", "old").await.expect("write through node 2");
    assert_eq!(get(&mut c3, "t", "k").await.unwrap().as_deref(), Some("old"));
    c1.drop_table(DropTableRequest { name: "t".into() }).await.expect("drop");
    create_table(&mut c1, "t", &[]).await;
    // Node 2 still holds the old id: its write must reach the new table, or be refused.
    match put(&mut c2, "t", "k", "new").await {
        Ok(r) => {
            assert!(r.succeeded);
            assert_eq!(
                get(&mut c3, "t", "k").await.unwrap().as_deref(),
                Some("new"),
                "a write acknowledged through node 2 is visible through node 3"
            );
            assert_eq!(get(&mut c1, "t", "k").await.unwrap().as_deref(), Some("new"));
        }
        Err(e) => assert_eq!(e.code(), tonic::Code::NotFound, "refused with a clear error: {e}"),
    }
    // Node 3 cached the old id too: its reads must not serve the dropped table.
    put(&mut c1, "t", "only-new", "1").await.expect("write to the new table");
    assert_eq!(get(&mut c3, "t", "only-new").await.unwrap().as_deref(), Some("1"));
    let keys: Vec<String> = scan_all(&mut c2, "t", 100).await.expect("scan").into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"only-new".to_string()), "a scan through node 2 reads the new table: {keys:?}");
    // Dropped for good: through a node that cached it, the name is gone.
    c1.drop_table(DropTableRequest { name: "t".into() }).await.expect("second drop");
    let err = put(&mut c3, "t", "k", "x").await.expect_err("the table no longer exists");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let err = get(&mut c2, "t", "k").await.expect_err("the table no longer exists");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
}
