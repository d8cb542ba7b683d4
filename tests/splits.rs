//! Automatic size-based splits, pre-split range tables and hash tables.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

use cairn_proto::kv::*;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_split_automatically_when_large_and_routing_follows() {
    let _g = serial().await;
    // Checks far enough apart that every write lands before the first split, so the
    // halves, still in the memtables where RocksDB's size estimate does not look,
    // must split again on what the first check counted (they once never did).
    let cl = Cluster::start(3, &["--split-threshold-bytes", "65536", "--split-check-interval-ms", "4000"]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "big", &[]).await;
    let value = "x".repeat(1000);
    let mut keys = Vec::new();
    for i in 0..400 {
        let k = format!("key{i:05}");
        put(&mut c, "big", &k, &value).await.expect("writes keep working while ranges split");
        keys.push(k);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let ranges = loop {
        let s = cl.status(1).await.unwrap();
        let n = s.ranges.iter().filter(|r| r.table == "big").count();
        if n >= 3 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(ranges >= 3, "400 KB over a 64 KB threshold split into several ranges, got {ranges}");
    let mut c2 = cl.client(2).await;
    let scanned = scan_all(&mut c2, "big", 64).await.unwrap();
    let got: Vec<String> = scanned.into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, keys, "every key, in order, once");
    for k in keys.iter().step_by(37) {
        assert_eq!(get(&mut c2, "big", k).await.unwrap().map(|v| v.len()), Some(1000));
    }
    // Each split is in the cluster event log, with its reason.
    let events = c2
        .list_cluster_events(cairn_proto::kv::ListClusterEventsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .events;
    let splits: Vec<_> = events.iter().filter(|e| e.kind == "split" && e.outcome == "done").collect();
    assert!(splits.len() >= ranges - 1, "{} ranges, but {} splits logged: {events:?}", ranges, splits.len());
    assert!(splits.iter().all(|e| e.reason.contains("over the split threshold of 65536")), "{splits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presplit_and_hash_tables_work() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    create_table(&mut c, "pre", &["d", "h", "p", "t"]).await;
    c.create_table(CreateTableRequest {
        name: "hashed".into(),
        partitioning: Partitioning::Hash as i32,
        split_keys: vec![],
        hash_ranges: 4,
        ..Default::default()
    })
    .await
    .expect("hash table");
    let s = cl.status(0).await.unwrap();
    assert_eq!(s.ranges.iter().filter(|r| r.table == "pre").count(), 5, "4 split points, 5 ranges");
    assert_eq!(s.ranges.iter().filter(|r| r.table == "hashed").count(), 4, "4 hash ranges");
    let mut keys = Vec::new();
    for i in 0..100 {
        let k = format!("{}{i:03}", (b'a' + (i % 26) as u8) as char);
        put(&mut c, "pre", &k, "v").await.unwrap();
        put(&mut c, "hashed", &format!("{{user{i}}}.cart"), &k).await.unwrap();
        keys.push(k);
    }
    keys.sort();
    let got: Vec<String> = scan_all(&mut c, "pre", 7).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, keys);
    let hashed = scan_all(&mut c, "hashed", 9).await.unwrap();
    assert_eq!(hashed.len(), 100, "a hash table scans whole (in slot order)");
    assert_eq!(get(&mut c, "hashed", "{user7}.cart").await.unwrap(), Some("h007".into()));
    let e = c
        .scan(ScanRequest { table: "hashed".into(), prefix: b"{user".to_vec(), ..Default::default() })
        .await
        .expect_err("prefix scans need a range table");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Dropping a table removes its data; the name can be reused.
    c.drop_table(DropTableRequest { name: "pre".into() }).await.expect("drop");
    assert_eq!(get(&mut c, "pre", "a000").await.unwrap_err().code(), tonic::Code::NotFound);
    create_table(&mut c, "pre", &[]).await;
    assert!(scan_all(&mut c, "pre", 10).await.unwrap().is_empty(), "a new table of the same name starts empty");
}

/// 100k keys written in sequence into a hash table land evenly on its ranges:
/// counted from a scan of what the nodes hold, placed by the ranges' bounds as
/// the cluster reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_keys_spread_evenly_over_a_hash_tables_ranges() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c = cl.client(0).await;
    c.create_table(CreateTableRequest {
        name: "seq".into(),
        partitioning: Partitioning::Hash as i32,
        hash_ranges: 8,
        ..Default::default()
    })
    .await
    .expect("hash table");
    const KEYS: usize = 100_000;
    for batch in 0..KEYS / 100 {
        let ops = (0..100)
            .map(|i| WriteOp {
                op: Some(write_op::Op::Put(PutRequest {
                    key: format!("key{:06}", batch * 100 + i).into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            })
            .collect();
        c.batch_write(BatchWriteRequest { table: "seq".into(), ops, request_id: vec![] }).await.expect("batch write");
    }
    let ranges: Vec<RangeStatus> =
        cl.status(1).await.unwrap().ranges.into_iter().filter(|r| r.table == "seq").collect();
    assert_eq!(ranges.len(), 8);
    let table_id = cairn::keys::decode_table(&ranges[0].start).unwrap().0;
    let keys = scan_all(&mut c, "seq", 1000).await.unwrap();
    assert_eq!(keys.len(), KEYS, "every key written, once");
    let mut per_range = vec![0usize; ranges.len()];
    for (k, _) in &keys {
        let mut encoded = cairn::keys::hash_slot_start(table_id, cairn::keys::key_slot(k.as_bytes()));
        encoded.extend_from_slice(k.as_bytes());
        let i = ranges
            .iter()
            .position(|r| encoded >= r.start && (r.end.is_empty() || encoded < r.end))
            .expect("a range holds every key");
        per_range[i] += 1;
    }
    let mean = KEYS as f64 / ranges.len() as f64;
    let skew = *per_range.iter().max().unwrap() as f64 / mean;
    println!("keys per range: {per_range:?}; max/mean {skew:.3}");
    assert!(skew <= 1.25, "max/mean range size {skew:.3} over 1.25: {per_range:?}");
}
