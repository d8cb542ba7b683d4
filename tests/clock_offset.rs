//! A node whose clock is off from its peers' by more than the maximum offset
//! (500 ms by default) stops serving with an error that says so, hands its
//! leaderships over, and serves again once its clock agrees with theirs; the
//! other nodes keep serving, and nothing they acknowledged carries a version
//! from the jumped clock.
//!
//! Run with `cargo test --features fault-injection --test clock_offset`.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]
#![cfg(feature = "fault-injection")]

mod common;

use common::chaos::set_clock_offset;
use common::*;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn real_now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_clock_jumps_stops_serving_until_its_clock_is_back() {
    let _g = serial().await;
    let cl = Cluster::start(3, &[]).await;
    let mut c0 = cl.client(0).await;
    create_table(&mut c0, "clk", &[]).await;
    put(&mut c0, "clk", "before", "1").await.expect("write before the jump");

    // Node 3's clock jumps 5 s ahead. Until its probes of its peers tell it so
    // (a second or two), it still stamps what it leads; nothing is written here
    // meanwhile, so the versions below show what happens once it knows.
    set_clock_offset(&cl, 2, 5_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let node = http_get(&cl.http(2), "/api/node").await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&node).unwrap_or_default();
        if let Some(offset) = v["clock_untrusted_offset_ms"].as_i64() {
            assert!((-5_100..=-4_900).contains(&offset), "node 3 finds its peers {offset} ms off");
            break;
        }
        assert!(Instant::now() < deadline, "node 3 never found its clock 5 s ahead of its peers'\n{}", cl.log(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in [0, 1] {
        let node = http_get(&cl.http(i), "/api/node").await.unwrap_or_default();
        assert!(node.contains("\"clock_untrusted_offset_ms\":null"), "node {} distrusts its own clock: {node}", i + 1);
    }
    let mut c2 = cl.client(2).await;
    let refusal = put(&mut c2, "clk", "through-3", "v").await.expect_err("node 3 refuses to serve");
    assert_eq!(refusal.code(), tonic::Code::Unavailable);
    println!("node 3 refuses: {}", refusal.message());
    assert!(refusal.message().contains("ahead of"), "the error says which way: {}", refusal.message());
    assert_eq!(
        refusal.metadata().get("cairn-write-outcome").and_then(|v| v.to_str().ok()),
        Some("not-applied"),
        "a refused write says it was not applied"
    );

    // It hands over every leadership it held.
    let node3 = cl.node_id(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let led: Vec<_> = cl.local_replicas(2).await.into_iter().filter(|r| r["is_leader"] == true).collect();
        if led.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "node {node3} still leads {} ranges", led.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The other two keep serving, with versions from their own clocks.
    let mut c1 = cl.client(1).await;
    for n in 0..20 {
        let c = if n % 2 == 0 { &mut c0 } else { &mut c1 };
        let r = put(c, "clk", &format!("during-{n:02}"), "v").await.expect("nodes 1 and 2 keep serving");
        let wall = r.version.map(|v| v.wall_ns).unwrap_or(0);
        assert!(
            wall < real_now_ns() + 1_000_000_000,
            "write {n} was stamped {} ms in the future",
            (wall - real_now_ns()) / 1_000_000
        );
    }

    // Back in step: node 3 serves again, and sees everything.
    set_clock_offset(&cl, 2, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while put(&mut c2, "clk", "through-3", "v").await.is_err() {
        assert!(Instant::now() < deadline, "node 3 never served again after its clock came back\n{}", cl.log(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in 0..20 {
        assert_eq!(
            get(&mut c2, "clk", &format!("during-{n:02}")).await.expect("read through node 3").as_deref(),
            Some("v")
        );
    }
    assert_eq!(get(&mut c2, "clk", "before").await.expect("read").as_deref(), Some("1"));
}

async fn redis_conn(addr: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("redis url");
    // Longer than the crate's 500 ms default: a reply may wait out a leader change.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    client.get_multiplexed_async_connection_with_config(&config).await.expect("connect")
}

async fn redis_get(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(c).await.expect("GET")
}

/// Expiry is judged by the leader's clock, and a new leader judges no earlier
/// than its predecessor could have. The key's leader runs 450 ms ahead (within
/// the maximum offset, so it is trusted and serves): it stamps the key and sees
/// it expire 450 ms before the other clocks reach the expiry. Leadership then
/// moves to a node whose clock is right: the key must stay expired there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_expired_on_the_old_leader_stays_expired_on_the_new_one() {
    let _g = serial().await;
    let cl = Cluster::start_redis(3, &[]).await;
    let key = "{ttl}lease";
    let (range_id, leader) = loop {
        if let Some(found) = redis_key_range(&cl, 0, key.as_bytes()).await {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let old = cl.index_of(leader);
    let new = (old + 1) % 3;
    let mut admin = cl.client(new).await;
    // The meta range's leader stamps every node's heartbeats: kept off the fast clock, so
    // that only the key's own write carries the fast time to the other nodes.
    admin
        .transfer_leader(cairn_proto::kv::TransferLeaderRequest { range_id: 1, node_id: cl.node_id(new) })
        .await
        .expect("move the meta range's leadership off the fast node");
    set_clock_offset(&cl, old, 450);
    // The offset file is polled every 100 ms; then the clock monitor takes it in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = http_get(&cl.http(old), "/api/node").await.unwrap_or_default();
    assert!(status.contains("\"clock_untrusted_offset_ms\":null"), "450 ms is within the maximum offset: {status}");

    let mut via_old = redis_conn(&cl.redis(old)).await;
    let _: () = redis::cmd("SET").arg(key).arg("held").arg("PX").arg(1500).query_async(&mut via_old).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_get(&mut via_old, key).await.is_some() {
        assert!(Instant::now() < deadline, "the key never expired on its leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let expired_at = Instant::now();
    admin
        .transfer_leader(cairn_proto::kv::TransferLeaderRequest { range_id, node_id: cl.node_id(new) })
        .await
        .expect("move the key's range to a node whose clock is right");
    let mut via_new = redis_conn(&cl.redis(new)).await;
    let seen = redis_get(&mut via_new, key).await;
    // Writes judge as reads do: SET XX finds no key to replace.
    let replaced: Option<String> =
        redis::cmd("SET").arg(key).arg("stolen").arg("XX").query_async(&mut via_new).await.unwrap();
    let after = expired_at.elapsed();
    assert_eq!(seen, None, "the new leader returned a key that had expired on the old one ({after:?} later)");
    assert_eq!(replaced, None, "a write on the new leader found the expired key live ({after:?} later)");
    // Only meaningful while the new leader's clock still reads before the expiry.
    assert!(after < Duration::from_millis(450), "the leader change took {after:?}: too slow to show anything");
    assert_eq!(redis_get(&mut via_old, key).await, None, "and through the old leader, now a follower");
    set_clock_offset(&cl, old, 0);
}
