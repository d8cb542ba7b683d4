//! The voucher example's workload (`examples/voucher`) against a real 3-node
//! cluster: 200 clients claim for 30 s through the Redis protocol while the
//! leader of the voucher's range is killed (SIGKILL) and later restarted. The
//! audit must find exactly `limit` claims granted, no user over the per-user
//! limit, every granted claim the clients were told of stored (none lost to the
//! failover), and the stored counters equal to the grants.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

#[path = "../examples/voucher/load.rs"]
mod load;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voucher_claims_never_oversell_while_the_leader_is_killed() {
    let _g = serial().await;
    let mut cl = Cluster::start_redis(3, &[]).await;
    let cfg = load::Config {
        nodes: (0..3).map(|i| cl.redis(i)).collect(),
        voucher: "flash".into(),
        limit: 2000,
        per_user: 2,
        users: 2000,
        clients: 200,
        duration: Duration::from_secs(30),
    };
    load::create(&cfg).await.expect("create the voucher");
    let key = "{voucher:flash}remaining";
    let leader = loop {
        if let Some((_, l)) = redis_key_range(&cl, 0, key.as_bytes()).await {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let victim = cl.index_of(leader);
    let run = {
        let cfg = cfg.clone();
        tokio::spawn(async move { load::run(&cfg).await })
    };
    // The leader dies early, while the quota is still being claimed, and comes back later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let survivor = cl.redis((victim + 1) % 3);
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut probe = redis::Client::open(format!("redis://{survivor}/"))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let left: i64 = redis::cmd("GET").arg(key).query_async::<String>(&mut probe).await.unwrap().parse().unwrap();
    assert!(left > 0, "the quota ran out before the kill: the failover would prove nothing");
    cl.kill(victim);
    tokio::time::sleep(Duration::from_secs(10)).await;
    cl.restart(victim);
    let outcome = run.await.expect("the workload");
    let audit = load::audit(&cfg, &outcome).await.expect("audit");
    println!(
        "{} claims answered ({} retried after errors): {} granted, {} remaining, counter {}, most held by one user {}",
        outcome.answers.len(),
        outcome.retries,
        audit.granted_answers,
        audit.remaining,
        audit.granted_counter,
        audit.most_held_by_one_user
    );
    assert!(audit.problems.is_empty(), "the audit found problems:\n{}", audit.problems.join("\n"));
    assert_eq!(audit.granted_answers, cfg.limit, "exactly the limit is granted (demand exceeded it)");
    assert_eq!((audit.remaining, audit.granted_counter), (0, cfg.limit));
    assert!(outcome.retries > 0, "the failover was felt by the clients (else the kill proved nothing)");
    println!("{left} of {} vouchers were left when the leader was killed", cfg.limit);
}
