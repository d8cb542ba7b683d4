//! Change-feed benchmark: writes at a steady rate (or as fast as they go) while
//! one consumer follows the table's feed, and reports the latency from each
//! write's acknowledgement to the consumer's receipt of it, and the events per
//! second the consumer received. `scripts/bench-feed.sh` runs it against a
//! local cluster.
//!
//!     cargo run --release --example feed_bench -- --grpc 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403 --rate 10000

// A client program, not node code: it times itself on the OS clock.
#![allow(clippy::disallowed_methods)]

use cairn_proto::kv::cairn_client::CairnClient;
use cairn_proto::kv::{write_op, BatchWriteRequest, CreateTableRequest, PutRequest, SubscribeRequest, WriteOp};
use clap::Parser;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
struct Args {
    /// gRPC endpoints of the cluster's nodes, comma-separated; the consumer uses the first.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403")]
    grpc: Vec<String>,
    #[arg(long, default_value = "feedbench")]
    table: String,
    /// Writes per second in total; 0: as fast as the writers go.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Keys per BatchWrite.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    #[arg(long, default_value_t = 32)]
    writers: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
}

async fn client(addr: &str) -> anyhow::Result<CairnClient<Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(CairnClient::new(ch).max_decoding_message_size(64 << 20))
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n - 1) as f64 * q).round() as usize] as f64 / 1000.0,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut admin = client(&a.grpc[0]).await?;
    let splits = ["w1", "w2", "w3"].iter().map(|s| s.as_bytes().to_vec()).collect();
    let create = CreateTableRequest { name: a.table.clone(), split_keys: splits, ..Default::default() };
    if let Err(s) = admin.create_table(create).await {
        anyhow::ensure!(s.code() == tonic::Code::AlreadyExists, "create table: {s}");
    }
    let acked: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Default::default();
    let delivered: Arc<Mutex<HashMap<Vec<u8>, Instant>>> = Default::default();
    let events = Arc::new(AtomicU64::new(0));

    // The consumer, from now; writes start once it has resolved.
    let mut stream = admin
        .subscribe(SubscribeRequest { table: a.table.clone(), resolved_interval_ms: 100, ..Default::default() })
        .await?
        .into_inner();
    loop {
        let m = stream.message().await?.ok_or_else(|| anyhow::anyhow!("the feed ended"))?;
        if m.resolved.is_some() {
            break;
        }
    }
    let consumer = {
        let (delivered, events) = (delivered.clone(), events.clone());
        tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                let now = Instant::now();
                events.fetch_add(m.events.len() as u64, Ordering::Relaxed);
                let mut d = delivered.lock();
                for e in m.events {
                    d.entry(e.key).or_insert(now);
                }
            }
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..a.writers {
        let mut c = client(&a.grpc[w % a.grpc.len()]).await?;
        let (acked, stop, table) = (acked.clone(), stop.clone(), a.table.clone());
        let (batch, value) = (a.batch, vec![b'v'; a.value_bytes]);
        // Each writer sends one batch per period; the writers together make the rate.
        let period = (a.rate > 0).then(|| Duration::from_secs_f64((a.writers * a.batch) as f64 / a.rate as f64));
        writers.push(tokio::spawn(async move {
            let mut next = Instant::now() + Duration::from_millis((w as u64 * 7) % 50);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                let keys: Vec<Vec<u8>> = (0..batch)
                    .map(|i| {
                        seq += 1;
                        format!("w{}-{w:03}-{seq:09}-{i}", w % 4).into_bytes()
                    })
                    .collect();
                let ops = keys
                    .iter()
                    .map(|k| WriteOp {
                        op: Some(write_op::Op::Put(PutRequest {
                            key: k.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                if c.batch_write(BatchWriteRequest { table: table.clone(), ops, ..Default::default() }).await.is_ok() {
                    let now = Instant::now();
                    let mut a = acked.lock();
                    for k in keys {
                        a.insert(k, now);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let write_secs = started.elapsed().as_secs_f64();
    let received_in_window = events.load(Ordering::Relaxed);
    // Let the feed deliver what was acknowledged last.
    let deadline = Instant::now() + Duration::from_secs(15);
    let total = acked.lock().len();
    while delivered.lock().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consumer.abort();
    let (acked, delivered) = (acked.lock(), delivered.lock());
    let mut latencies: Vec<u64> = Vec::with_capacity(acked.len());
    let mut missing = 0;
    for (k, at) in acked.iter() {
        match delivered.get(k) {
            Some(d) => latencies.push(d.saturating_duration_since(*at).as_micros() as u64),
            None => missing += 1,
        }
    }
    latencies.sort_unstable();
    println!(
        "feed: {} writes acknowledged in {write_secs:.1} s ({:.0}/s); {} delivered, {missing} missing; \
         acknowledgement to delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; the consumer received {:.0} events/s",
        acked.len(),
        acked.len() as f64 / write_secs,
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0),
        received_in_window as f64 / write_secs
    );
    anyhow::ensure!(missing == 0, "{missing} acknowledged writes never reached the consumer");
    Ok(())
}
