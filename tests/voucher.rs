//! The voucher system end to end (`examples/voucher`) on a real 3-node cluster:
//! 200 clients claim a voucher of 10,000 (at most 2 per user) for 30 s through
//! the Redis protocol, while the leader of the voucher's range is killed, the
//! feed writer is killed and restarted, and PostgreSQL crashes and restarts.
//! At the end exactly the limit is granted, no user holds more than 2,
//! PostgreSQL holds exactly the claims the clients were granted, and the
//! reconciliation finds no difference. And with the voucher's quorum gone,
//! every claim fails; once healed, the counts still match.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

mod common;

#[path = "../examples/voucher/load.rs"]
mod load;
#[path = "../examples/voucher/reconcile.rs"]
mod reconcile;
#[path = "../examples/voucher/writer.rs"]
mod writer;

use common::postgres::Postgres;
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

async fn leader_of_voucher(cl: &Cluster, voucher: &str) -> u64 {
    let key = format!("{{voucher:{voucher}}}remaining");
    loop {
        if let Some((_, l)) = redis_key_range(cl, 0, key.as_bytes()).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (polling through `node`) until the voucher has granted at least `n`
/// claims, and answers how many it had then.
async fn wait_granted(node: &str, cfg: &load::Config, n: i64, timeout: Duration) -> i64 {
    let client = redis::Client::open(format!("redis://{node}/")).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let deadline = Instant::now() + timeout;
    loop {
        let granted: Option<i64> =
            redis::cmd("GET").arg(cfg.key("granted")).query_async(&mut conn).await.ok().flatten();
        let granted = granted.unwrap_or(0);
        if granted >= n || Instant::now() > deadline {
            return granted;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until PostgreSQL holds `n` claims of the voucher (the writer caught up).
async fn wait_written(pg: &Postgres, voucher: &str, n: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    let mut seen = -1;
    while Instant::now() < deadline {
        if let Ok(c) = writer::connect_postgres(&pg.conn()).await {
            if let Ok(row) = c.query_one("SELECT count(*) FROM claims WHERE voucher = $1", &[&voucher]).await {
                seen = row.get(0);
                if seen >= n {
                    return seen;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn voucher_claims_never_oversell_and_reach_postgresql_exactly_once_through_failures() {
    let _g = serial().await;
    let mut cl = Cluster::start_redis(3, &[]).await;
    let mut pg = Postgres::start();
    let cfg = load::Config {
        nodes: (0..3).map(|i| cl.redis(i)).collect(),
        voucher: "flash".into(),
        limit: 10_000,
        per_user: 2,
        users: 20_000,
        clients: 200,
        duration: Duration::from_secs(30),
    };
    load::create(&cfg).await.expect("create the voucher");
    let wcfg = writer::WriterConfig {
        cairn: (0..3).map(|i| cl.grpc(i)).collect(),
        postgres: pg.conn(),
        voucher: cfg.voucher.clone(),
    };
    writer::init(&wcfg).await.expect("the writer's tables and first checkpoint");
    let mut writer_task = tokio::spawn(writer::run(wcfg.clone()));
    let leader = leader_of_voucher(&cl, &cfg.voucher).await;
    let victim = cl.index_of(leader);
    let started = Instant::now();
    let run = {
        let cfg = cfg.clone();
        tokio::spawn(async move { load::run(&cfg).await })
    };
    // The faults follow the quota's progress, so that each falls while claims are
    // still being granted and written (claims are fast enough that fixed delays could
    // all fall after the quota ran out). Progress is read through a node that lives.
    let survivor = cl.redis((victim + 1) % 3);
    // The feed writer is killed (mid-transaction, as likely as not) and started again.
    let granted_at_writer_kill = wait_granted(&survivor, &cfg, cfg.limit / 10, Duration::from_secs(20)).await;
    writer_task.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer_task = tokio::spawn(writer::run(wcfg.clone()));
    // The voucher's leader dies.
    let granted_at_kill = wait_granted(&survivor, &cfg, cfg.limit * 3 / 10, Duration::from_secs(20)).await;
    let killed_at = started.elapsed();
    cl.kill(victim);
    // PostgreSQL crashes and restarts under the writer, once claims flow again.
    let granted_at_pg_crash = wait_granted(&survivor, &cfg, cfg.limit / 2, Duration::from_secs(20)).await;
    let pg_crashed_at = started.elapsed();
    tokio::task::block_in_place(|| pg.crash_and_restart());
    tokio::time::sleep((killed_at + Duration::from_secs(6)).saturating_sub(started.elapsed())).await;
    tokio::task::block_in_place(|| cl.restart(victim));
    let outcome = run.await.expect("the workload");
    let elapsed = started.elapsed();
    let audit = load::audit(&cfg, &outcome).await.expect("audit");
    println!(
        "{}; granted {granted_at_writer_kill} at the writer's kill, {granted_at_kill} at the leader's \
         ({killed_at:?}), {granted_at_pg_crash} at PostgreSQL's crash ({pg_crashed_at:?}); last grant at {:?}",
        load::summary(&outcome, &audit, elapsed.as_secs_f64()),
        outcome.last_grant_at
    );
    assert!(audit.problems.is_empty(), "the audit found problems:\n{}", audit.problems.join("\n"));
    assert!(
        granted_at_writer_kill < granted_at_kill
            && granted_at_kill < granted_at_pg_crash
            && granted_at_pg_crash < cfg.limit
            && outcome.last_grant_at > pg_crashed_at,
        "the faults must fall while the quota is being claimed: granted {granted_at_writer_kill} at the writer's \
         kill, {granted_at_kill} at the leader's, {granted_at_pg_crash} at PostgreSQL's crash ({pg_crashed_at:?}); \
         the last grant came at {:?}",
        outcome.last_grant_at
    );
    assert_eq!(audit.granted_answers, cfg.limit, "exactly the limit is granted (demand exceeded it)");
    assert_eq!((audit.remaining, audit.granted_counter), (0, cfg.limit));
    assert!(audit.most_held_by_one_user <= cfg.per_user);
    assert!(outcome.retries > 0, "the failover was felt by the clients (else the kill proved nothing)");

    // PostgreSQL ends up with exactly the granted claims: no more, no fewer.
    let written = wait_written(&pg, &cfg.voucher, cfg.limit, Duration::from_secs(60)).await;
    writer_task.abort();
    let c = writer::connect_postgres(&pg.conn()).await.expect("postgres");
    let rows = c.query("SELECT claim_id FROM claims WHERE voucher = $1", &[&cfg.voucher]).await.expect("rows");
    let in_postgres: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let granted: BTreeSet<String> =
        outcome.answers.iter().filter(|(_, (_, a))| a.starts_with("GRANTED")).map(|(id, _)| id.clone()).collect();
    let missing: Vec<_> = granted.difference(&in_postgres).take(5).collect();
    let extra: Vec<_> = in_postgres.difference(&granted).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "PostgreSQL holds {written} claims; granted but missing: {missing:?}; not granted but present: {extra:?}"
    );
    let r = reconcile::reconcile(&cl.redis(0), &pg.conn(), &cfg.voucher, Some(cfg.limit), false)
        .await
        .expect("reconciliation");
    println!("reconciliation: {}", r.summary());
    assert_eq!(r.differences(), 0, "{}", r.summary());
    assert_eq!((r.cairn_claims, r.postgres_claims), (cfg.limit as usize, cfg.limit as usize));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_fail_closed_without_a_quorum_and_counts_match_after_healing() {
    let _g = serial().await;
    let mut cl = Cluster::start_redis(3, &[]).await;
    let pg = Postgres::start();
    let cfg = load::Config {
        nodes: (0..3).map(|i| cl.redis(i)).collect(),
        voucher: "closed".into(),
        limit: 1000,
        per_user: 2,
        users: 500,
        clients: 50,
        duration: Duration::from_secs(5),
    };
    load::create(&cfg).await.expect("create the voucher");
    let wcfg = writer::WriterConfig {
        cairn: (0..3).map(|i| cl.grpc(i)).collect(),
        postgres: pg.conn(),
        voucher: cfg.voucher.clone(),
    };
    writer::init(&wcfg).await.expect("init");
    let writer_task = tokio::spawn(writer::run(wcfg.clone()));
    // Some claims before the quorum goes.
    let before = load::run(&load::Config { duration: Duration::from_secs(3), ..cfg.clone() }).await;
    let granted_before = before.answers.values().filter(|(_, a)| a.starts_with("GRANTED")).count();
    assert!(granted_before > 0);

    // The voucher's leader and one more node die: the range has no quorum.
    let leader = cl.index_of(leader_of_voucher(&cl, &cfg.voucher).await);
    let other = (leader + 1) % 3;
    cl.kill(leader);
    cl.kill(other);
    let survivor = (leader + 2) % 3;
    // Each claim waits up to 15 s for the node's answer (its request deadline is 10 s).
    let closed = load::claim_once_each(&load::Config {
        nodes: vec![cl.redis(survivor)],
        duration: Duration::from_secs(15),
        ..cfg.clone()
    })
    .await;
    let granted: Vec<_> = closed.iter().filter(|r| matches!(r, Ok(a) if a.starts_with("GRANTED"))).collect();
    let errors = closed.iter().filter(|r| r.is_err()).count();
    println!("without a quorum: {} claims, {errors} failed with an error, e.g. {:?}", closed.len(), closed.first());
    assert!(granted.is_empty(), "claims were granted without a quorum: {granted:?}");
    assert_eq!(errors, closed.len(), "every claim fails with an error: {closed:?}");
    let unanswered = closed.iter().filter(|r| matches!(r, Err(e) if e.starts_with("no answer"))).count();
    assert_eq!(unanswered, 0, "every claim is answered with an error by the node, none left hanging: {closed:?}");

    tokio::task::block_in_place(|| {
        cl.restart(leader);
        cl.restart(other);
    });
    // Healed: claims go on, and Cairn's counts and PostgreSQL's rows agree.
    let after = load::run(&load::Config { duration: Duration::from_secs(3), ..cfg.clone() }).await;
    assert!(after.answers.values().any(|(_, a)| a.starts_with("GRANTED")), "claims are granted again after healing");
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = reconcile::reconcile(&cl.redis(0), &pg.conn(), &cfg.voucher, Some(cfg.limit), false).await;
        match r {
            Ok(r) if r.differences() == 0 => break r,
            Ok(r) if Instant::now() > deadline => panic!("differences remain after healing: {}", r.summary()),
            Err(e) if Instant::now() > deadline => panic!("reconciliation failed: {e:#}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    writer_task.abort();
    println!("after healing: {}", r.summary());
}
