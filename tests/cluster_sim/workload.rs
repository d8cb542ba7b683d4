//! The clients of a whole-node simulation, all in one simulated client host:
//! register clients (every kind of single-key operation, for the
//! linearizability check), unique writers (for the lost-write check), a
//! counter client that re-sends request ids (counter bounds, no duplicate
//! applications), a batch client (BatchWrite groups that a BatchGet must never
//! see half of, and acknowledged batches re-sent after splits, which must not
//! apply again), and an operator who splits ranges, moves leaders, removes
//! replicas (which the controller must then replace) and drops and re-creates a
//! second table that every node has cached (a write through one node must then
//! be visible through every other). Redis clients run register operations as
//! Redis commands (GET, SET, SET NX, DEL, Lua compare-and-set) on keys of the
//! Redis keyspace, for the same linearizability check, and INCR a counter.
//! A follower-read writer and readers run bounded-staleness reads against keys
//! written in increasing order, for the staleness check. A change-feed consumer
//! follows the table from before the first write, resuming through another node
//! from its last resolved checkpoint whenever its stream fails or stalls, and
//! every few seconds on purpose; the unique writers record each write's version
//! for the feed check. In an elastic run the
//! operator also decommissions a node. After the faults, the final phase checks
//! that routing converged and reads everything back (an elastic run first waits
//! for the dead node's replicas to be replaced, then has it restarted).

use super::net::channel_to;
use super::register::{random_input, register_op, write_may_have_applied};
use super::resp::SimRedis;
use super::resp_register::{self, RespReply};
use super::{net, ClusterSimConfig, ElasticPlan, Phase, Shared};
use cairn::sim::placement;
use cairn_check::{
    BoundedRead, FeedRecord, FeedSession, FeedVersion, FeedWrite, Operation, Outcome, Output, SequentialWrite,
    WriteOutcome,
};
use cairn_proto::internal::{RangeDescriptor, Replica};
use cairn_proto::kv::cairn_client::CairnClient;
use cairn_proto::kv::{
    write_op, BatchGetRequest, BatchWriteRequest, ChangeReplicaRequest, ClusterStatusRequest, ClusterStatusResponse,
    CreateTableRequest, DropTableRequest, GetRequest, IncrementRequest, NodeState, Partitioning, PutRequest,
    ReadConsistency, ScanRequest, SetNodeStateRequest, SplitRangeRequest, SubscribeRequest, TransferLeaderRequest,
    Version, WriteOp, WriteResult,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

pub const TABLE: &str = "sim";
/// The Redis keyspace, which every node creates and serves.
const REDIS_TABLE: &str = "redis";
/// Process ids of the Redis register clients start here.
const RESP_PROCESS_BASE: u64 = 1 << 24;
/// The table the operator drops and creates anew while every node has it cached.
pub const RECREATED_TABLE: &str = "again";
/// Per-request patience of the clients: beyond it, a write's outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Register keys rotate every generation, which keeps each key's history short
/// enough for the exhaustive linearizability search.
const GENERATION_MS: u64 = 3_000;
const REGISTER_SLOTS: u64 = 3;
/// How long setup and the final checks keep trying before they call it a failure.
const SETUP_PATIENCE: Duration = Duration::from_secs(90);
const CONVERGENCE_PATIENCE: Duration = Duration::from_secs(90);
/// How long a dead node's replicas may take to be replaced once the faults heal.
const REPLACEMENT_PATIENCE: Duration = Duration::from_secs(120);
/// How long the feed consumer's first session may take to send a resolved
/// checkpoint; the workload starts only then.
const FEED_START_PATIENCE: Duration = Duration::from_secs(30);
/// A feed session without a new resolved checkpoint for this long is abandoned
/// (its node may be cut off or down), and the consumer resumes through another.
const FEED_STALL: Duration = Duration::from_secs(5);
/// Sessions are also ended on purpose after a while (drawn from this range, ms).
const FEED_SESSION_MS: std::ops::Range<u64> = 4_000..8_000;
/// After healing, how long the consumer may take to resolve past the last
/// acknowledged unique write.
const FEED_CATCH_UP_PATIENCE: Duration = Duration::from_secs(60);

type Client = CairnClient<Channel>;

fn sim_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_nanos() as u64)
}

fn client(node: u64) -> Client {
    CairnClient::new(channel_to(node))
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err(format!("timed out after {OP_TIMEOUT:?}")),
    }
}

/// The hosts clients send requests to.
#[derive(Clone)]
pub struct Hosts(Rc<Vec<u64>>);

impl Hosts {
    /// One at random (drawn as `1..=len`, so that with hosts 1..=n a seed draws
    /// the same hosts as when clients drew node numbers directly).
    fn pick(&self, rng: &mut StdRng) -> u64 {
        self.0[rng.random_range(1..=self.0.len()) - 1]
    }

    /// The `i`-th, round robin.
    fn nth(&self, i: u64) -> u64 {
        self.0[i as usize % self.0.len()]
    }
}

/// The whole client side of one run; what it saw goes into `shared`.
pub async fn run(shared: Rc<RefCell<Shared>>, cfg: ClusterSimConfig) -> turmoil::Result {
    let (seed, nodes) = (cfg.seed, cfg.nodes);
    let hosts = Hosts(Rc::new(cfg.serving()));
    shared.borrow_mut().progress = "setup".into();
    setup(nodes).await.map_err(|e| format!("setup: {e}"))?;
    // The feed consumer subscribes "now": once its stream has resolved, every
    // write the workload makes lies above the point it started from.
    let consumer = cfg.feed.then(|| tokio::task::spawn_local(feed_consumer(shared.clone(), hosts.clone(), seed)));
    if consumer.is_some() {
        shared.borrow_mut().progress = "waiting for the feed's first resolved checkpoint".into();
        feed_started(&shared).await.map_err(|e| format!("setup: {e}"))?;
    }
    shared.borrow_mut().progress = "workload".into();
    let started_ns = sim_ns();
    shared.borrow_mut().phase = Phase::Faults { started_ms: started_ns / 1_000_000 };

    let stop_at_ns = started_ns + cfg.fault_ms * 1_000_000;
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let node = hosts.nth(w);
        workers.push(tokio::task::spawn_local(register_worker(shared.clone(), node, w, seed, started_ns, stop_at_ns)));
    }
    for w in 0..2u64 {
        workers.push(tokio::task::spawn_local(unique_writer(shared.clone(), hosts.nth(w + 1), w, stop_at_ns)));
    }
    workers.push(tokio::task::spawn_local(counter_worker(shared.clone(), hosts.clone(), seed, stop_at_ns)));
    for w in 0..2u64 {
        let node = hosts.nth(w);
        workers.push(tokio::task::spawn_local(resp_register_worker(
            shared.clone(),
            node,
            w,
            seed,
            started_ns,
            stop_at_ns,
        )));
    }
    workers.push(tokio::task::spawn_local(resp_counter_worker(shared.clone(), hosts.clone(), seed, stop_at_ns)));
    workers.push(tokio::task::spawn_local(batch_worker(shared.clone(), hosts.clone(), seed, stop_at_ns)));
    workers.push(tokio::task::spawn_local(stale_writer(shared.clone(), hosts.clone(), seed, stop_at_ns)));
    for w in 0..2u64 {
        workers.push(tokio::task::spawn_local(stale_reader(shared.clone(), hosts.clone(), w, seed, stop_at_ns)));
    }
    let doomed = cfg.elastic.map(|plan| plan.dead);
    workers.push(tokio::task::spawn_local(operator(shared.clone(), hosts.clone(), seed, stop_at_ns, doomed)));
    if let Some(plan) = cfg.elastic {
        let at_ns = started_ns + plan.decommission_at_ms * 1_000_000;
        workers.push(tokio::task::spawn_local(decommissioner(shared.clone(), hosts.clone(), plan, at_ns, stop_at_ns)));
    }
    for w in workers {
        w.await.map_err(|e| format!("a client task failed: {e}"))?;
    }
    shared.borrow_mut().progress = "waiting for the faults to heal".into();
    // The step loop heals the cluster once the fault window is over.
    while !matches!(shared.borrow().phase, Phase::Healed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(plan) = cfg.elastic {
        elastic_checks(&shared, plan).await;
    }
    final_checks(&shared, cfg.hosts()).await;
    if let Some(consumer) = consumer {
        shared.borrow_mut().progress = "feed catch-up".into();
        feed_caught_up(&shared).await;
        consumer.await.map_err(|e| format!("the feed consumer failed: {e}"))?;
    }
    shared.borrow_mut().phase = Phase::Done;
    Ok(())
}

/// Creates the table (pre-split so the workloads' keys start on different
/// ranges) and waits until every range of it has all its replicas.
async fn setup(nodes: u64) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + SETUP_PATIENCE;
    let create = CreateTableRequest {
        name: TABLE.into(),
        partitioning: Partitioning::Range as i32,
        split_keys: vec![b"r/".to_vec(), b"u/".to_vec()],
        hash_ranges: 0,
        ..Default::default()
    };
    let mut last = String::new();
    let mut created = false;
    while tokio::time::Instant::now() < deadline {
        let mut c = client(1);
        if !created {
            match timed(c.create_table(create.clone())).await {
                Ok(_) => created = true,
                Err(e) if e.starts_with("AlreadyExists") => created = true,
                Err(e) => last = e,
            }
            if created {
                created = matches!(create_recreated_table(&mut c).await, Ok(()) | Err(Recreate::Exists));
            }
        }
        if created {
            match timed(c.cluster_status(ClusterStatusRequest {})).await {
                Ok(s) => match fully_replicated(&s, nodes) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(last)
}

/// Every range of the table (and of the Redis keyspace) has a leader and
/// `min(nodes, 3)` voters (the replication factor), and no learners.
fn fully_replicated(s: &ClusterStatusResponse, nodes: u64) -> Result<(), String> {
    if !s.ranges.iter().any(|r| r.table == REDIS_TABLE) {
        return Err("no ranges of the Redis keyspace yet".into());
    }
    let ranges: Vec<_> = s.ranges.iter().filter(|r| r.table == TABLE || r.table == REDIS_TABLE).collect();
    if ranges.is_empty() {
        return Err("no ranges of the table yet".into());
    }
    for r in ranges {
        let voters = r.replicas.iter().filter(|x| !x.learner).count() as u64;
        if voters != nodes.min(3) || voters as usize != r.replicas.len() || r.leader_node_id == 0 {
            return Err(format!(
                "range {} [{}, {}): replicas {:?}, leader {}",
                r.id, r.start_display, r.end_display, r.replicas, r.leader_node_id
            ));
        }
    }
    Ok(())
}

async fn register_worker(shared: Rc<RefCell<Shared>>, node: u64, worker: u64, seed: u64, start_ns: u64, stop_ns: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker << 24) ^ 0x5EED);
    let mut c = client(node);
    let mut process = worker;
    let mut seq = 0u64;
    let mut seen: Vec<Option<u64>> = vec![None; REGISTER_SLOTS as usize];
    let mut current = u64::MAX;
    while sim_ns() < stop_ns {
        let generation = (sim_ns() - start_ns) / (GENERATION_MS * 1_000_000);
        if generation != current {
            current = generation;
            seen = vec![None; REGISTER_SLOTS as usize];
        }
        let slot = rng.random_range(0..REGISTER_SLOTS) as usize;
        let key = format!("r/{generation:04}/{slot}");
        seq += 1;
        let fresh = (worker + 1) * 1_000_000_000 + seq;
        let expected = seen[slot].unwrap_or(fresh - 1);
        let input = random_input(&mut rng, fresh, expected);
        let invoke_ns = sim_ns();
        let outcome = register_op(&mut c, TABLE, &key, &input, OP_TIMEOUT).await;
        if let Outcome::Ok(Output::Value(v)) = &outcome {
            seen[slot] = *v;
        }
        let op = Operation { process, key, input, invoke_ns, complete_ns: sim_ns(), outcome };
        shared.borrow_mut().history.push(op);
        if matches!(outcome, Outcome::Unknown) {
            // A process with an operation in doubt never issues another (Jepsen's rule).
            process += 1 << 32;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

/// Register operations as Redis commands through one node's Redis front end.
async fn resp_register_worker(
    shared: Rc<RefCell<Shared>>,
    node: u64,
    worker: u64,
    seed: u64,
    start_ns: u64,
    stop_ns: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker << 24) ^ 0x4E5B);
    let mut c = SimRedis::new(node, OP_TIMEOUT);
    let mut process = RESP_PROCESS_BASE + worker;
    let mut seq = 0u64;
    let mut seen: Vec<Option<u64>> = vec![None; REGISTER_SLOTS as usize];
    let mut current = u64::MAX;
    while sim_ns() < stop_ns {
        let generation = (sim_ns() - start_ns) / (GENERATION_MS * 1_000_000);
        if generation != current {
            current = generation;
            seen = vec![None; REGISTER_SLOTS as usize];
        }
        let slot = rng.random_range(0..REGISTER_SLOTS) as usize;
        let key = format!("rr/{generation:04}/{slot}");
        seq += 1;
        let fresh = (RESP_PROCESS_BASE + worker + 1) * 1_000_000_000 + seq;
        let expected = seen[slot].unwrap_or(fresh - 1);
        let input = random_input(&mut rng, fresh, expected);
        let invoke_ns = sim_ns();
        let reply = c.call(&resp_register::command(&key, &input)).await;
        let outcome = resp_register::outcome(&input, reply).unwrap_or_else(|problem| {
            shared.borrow_mut().problems.push(format!("Redis client, {key}: {problem}"));
            Outcome::Unknown
        });
        if let Outcome::Ok(Output::Value(v)) = &outcome {
            seen[slot] = *v;
        }
        let op = Operation { process, key, input, invoke_ns, complete_ns: sim_ns(), outcome };
        shared.borrow_mut().history.push(op);
        if matches!(outcome, Outcome::Unknown) {
            process += 1 << 32;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

/// INCR on one counter through any node's Redis front end, never retried (Redis
/// has no request ids): acknowledged <= final value <= attempted.
async fn resp_counter_worker(shared: Rc<RefCell<Shared>>, hosts: Hosts, seed: u64, stop_ns: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1C4);
    while sim_ns() < stop_ns {
        let mut c = SimRedis::new(hosts.pick(&mut rng), OP_TIMEOUT);
        for _ in 0..rng.random_range(1..20) {
            let (acked, attempted) = match c.call(&["INCR".into(), "rc".into()]).await {
                Some(RespReply::Int(_)) => (1, 1),
                Some(RespReply::Error(e)) if resp_register::surely_not_applied(&e) => (0, 0),
                _ => (0, 1),
            };
            {
                let mut sh = shared.borrow_mut();
                sh.resp_counter.0 += acked;
                sh.resp_counter.1 += attempted;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))).await;
            if sim_ns() >= stop_ns {
                break;
            }
        }
    }
}

/// Writes keys that are never overwritten; every acknowledged one must survive.
/// Each put is also recorded, with its outcome and the version it was
/// acknowledged at, for the change-feed check.
async fn unique_writer(shared: Rc<RefCell<Shared>>, node: u64, worker: u64, stop_ns: u64) {
    let mut c = client(node);
    let mut n = 0u64;
    while sim_ns() < stop_ns {
        n += 1;
        let key = format!("u/{worker}/{n:06}");
        let value = vec![b'x'; 64];
        let req = PutRequest {
            ttl_ms: 0,
            table: TABLE.into(),
            key: key.clone().into_bytes(),
            value: value.clone(),
            condition: None,
            request_id: vec![],
        };
        let (acked, outcome) = match tokio::time::timeout(OP_TIMEOUT, c.put(req)).await {
            Ok(Ok(r)) => match r.into_inner().version {
                Some(v) => (true, WriteOutcome::Acked(fv(&v))),
                // Acknowledged, but at a version nobody told us: the feed check cannot place it.
                None => (true, WriteOutcome::Unknown),
            },
            // The server says the write was not applied (`cairn-write-outcome`).
            Ok(Err(s)) if !write_may_have_applied(&s) => (false, WriteOutcome::Failed),
            // Any other error, or no answer in time: it may still apply.
            _ => (false, WriteOutcome::Unknown),
        };
        {
            let mut sh = shared.borrow_mut();
            if acked {
                sh.acked_unique.push(key.clone());
            }
            sh.feed_writes.push(FeedWrite { key: key.into_bytes(), value: Some(value), outcome });
        }
        if !acked {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Increments one counter, retrying in-doubt increments with the same request id,
/// and now and then re-sending an acknowledged one, whose answer must not change.
async fn counter_worker(shared: Rc<RefCell<Shared>>, hosts: Hosts, seed: u64, stop_ns: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0FFEE);
    let mut n = 0u64;
    let mut acked: Vec<(Vec<u8>, i64)> = Vec::new();
    while sim_ns() < stop_ns {
        n += 1;
        let mut c = client(hosts.pick(&mut rng));
        let rid = format!("ctr-{n}").into_bytes();
        let req = || IncrementRequest { table: TABLE.into(), key: b"c".to_vec(), delta: 1, request_id: rid.clone() };
        let mut result = None;
        let mut definite_failure = false;
        for _ in 0..3 {
            match timed(c.increment(req())).await {
                Ok(r) => {
                    result = Some(r.value);
                    break;
                }
                Err(e) if e.starts_with("InvalidArgument") => {
                    definite_failure = true;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        {
            let mut sh = shared.borrow_mut();
            if result.is_some() {
                sh.counter.0 += 1;
            }
            if !definite_failure {
                sh.counter.1 += 1;
            }
        }
        if let Some(first) = result {
            acked.push((rid, first));
        }
        if !acked.is_empty() && rng.random_range(0..4) == 0 {
            let (rid, first) = acked[rng.random_range(0..acked.len())].clone();
            let retry = IncrementRequest { table: TABLE.into(), key: b"c".to_vec(), delta: 1, request_id: rid.clone() };
            if let Ok(again) = timed(c.increment(retry)).await {
                if again.value != first {
                    shared.borrow_mut().duplicates.push(format!(
                        "request {} answered {first}, then {} when re-sent",
                        String::from_utf8_lossy(&rid),
                        again.value
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))).await;
    }
}

/// Writes the follower-read keys one write at a time, with increasing values;
/// after a write in doubt it moves on to a fresh key, as a write in doubt may
/// still apply after the next one (which would break "newer is larger").
async fn stale_writer(shared: Rc<RefCell<Shared>>, hosts: Hosts, seed: u64, stop_ns: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x57A1E);
    let mut generation = 0u64;
    let mut key = format!("f/{generation:04}");
    shared.borrow_mut().stale_keys.push(key.clone());
    let mut value = 0u64;
    while sim_ns() < stop_ns {
        value += 1;
        let mut c = client(hosts.pick(&mut rng));
        let put = PutRequest {
            table: TABLE.into(),
            key: key.clone().into_bytes(),
            value: value.to_string().into_bytes(),
            ..Default::default()
        };
        let invoke_ns = sim_ns();
        let acked = timed(c.put(put)).await.is_ok();
        {
            let mut sh = shared.borrow_mut();
            let write = SequentialWrite { value, invoke_ns, acked_ns: acked.then(sim_ns) };
            sh.stale_writes.entry(key.clone()).or_default().push(write);
            if !acked {
                generation += 1;
                key = format!("f/{generation:04}");
                sh.stale_keys.push(key.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
    }
}

/// Bounded-staleness reads of the follower-read keys through any node, with
/// bounds from 50 ms to 1 s; what they return is checked against their bounds
/// (`cairn_check::stale_read_violations`). Refusals are allowed and counted.
async fn stale_reader(shared: Rc<RefCell<Shared>>, hosts: Hosts, worker: u64, seed: u64, stop_ns: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker << 24) ^ 0x5EAD);
    while sim_ns() < stop_ns {
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
        let key = {
            let sh = shared.borrow();
            let keys = &sh.stale_keys;
            // The current key mostly, sometimes the one before (which a write in doubt may still change).
            keys.len().checked_sub(1 + rng.random_range(0..2usize)).map(|i| keys[i].clone())
        };
        let Some(key) = key else { continue };
        let node = hosts.pick(&mut rng);
        let bound_ms = [50, 250, 1_000][rng.random_range(0..3usize)];
        let get = GetRequest {
            table: TABLE.into(),
            key: key.clone().into_bytes(),
            consistency: ReadConsistency::Stale as i32,
            max_staleness_ms: bound_ms,
        };
        let invoke_ns = sim_ns();
        let answer = timed(client(node).get(get)).await;
        let mut sh = shared.borrow_mut();
        match answer {
            Ok(r) => {
                let observed = if r.found {
                    match std::str::from_utf8(&r.value).ok().and_then(|v| v.parse().ok()) {
                        Some(v) => Some(v),
                        None => {
                            sh.problems.push(format!("a follower read of {key} returned {:?}", r.value));
                            continue;
                        }
                    }
                } else {
                    None
                };
                let complete_ns = sim_ns();
                let bound_ns = bound_ms * 1_000_000;
                sh.stale_reads.push(BoundedRead { key, invoke_ns, complete_ns, bound_ns, observed, node });
            }
            Err(_) => sh.stale_refusals += 1,
        }
    }
}

/// At its time, the operator decommissions one node: it looks up the node's id
/// by address and asks (through any node) until the request is taken.
async fn decommissioner(shared: Rc<RefCell<Shared>>, hosts: Hosts, plan: ElasticPlan, at_ns: u64, stop_ns: u64) {
    let mut rng = StdRng::seed_from_u64(plan.decommission_at_ms);
    tokio::time::sleep(Duration::from_nanos(at_ns.saturating_sub(sim_ns()))).await;
    let give_up_ns = stop_ns + CONVERGENCE_PATIENCE.as_nanos() as u64;
    let mut last = String::new();
    while sim_ns() < give_up_ns {
        let mut c = client(hosts.pick(&mut rng));
        let asked = async {
            let status = timed(c.cluster_status(ClusterStatusRequest {})).await?;
            let id = node_id_of_host(&status, plan.decommissioned)?;
            let req = SetNodeStateRequest { node_id: id, state: NodeState::Decommissioning as i32 };
            timed(c.set_node_state(req)).await.map(|_| ())
        };
        match asked.await {
            Ok(()) => {
                *shared.borrow_mut().operations.entry("decommission").or_default() += 1;
                return;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    shared.borrow_mut().problems.push(format!("the decommission was never accepted: {last}"));
}

/// Splits, leader transfers and replica removals while the faults run; a removed
/// replica is put back by the controller (replication factor 3), not by us. In
/// an elastic run no replica is removed from a range with one on the node that
/// dies for good (`doomed`, a host): should it die before the controller has
/// put the third voter back, the range would be left with two voters, one of
/// them gone for good, and no quorum to repair itself with.
async fn operator(shared: Rc<RefCell<Shared>>, hosts: Hosts, seed: u64, stop_ns: u64, doomed: Option<u64>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0BE7A70E);
    while sim_ns() < stop_ns {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2_000))).await;
        let mut c = client(hosts.pick(&mut rng));
        let action = rng.random_range(0..11);
        let result = if action == 10 {
            recreate_table(&shared, &mut rng, &hosts).await
        } else if action < 4 {
            // Right at the counter's key sometimes, else inside the register, unique or batch keys.
            let key = match rng.random_range(0..4) {
                0 => "c".to_string(),
                1 => format!("r/{:04}", rng.random_range(0..10)),
                // The batch client's current group: its start, or (mostly) its middle,
                // between keys 1 and 2, which regroups the batches already written there.
                2 => format!("b/{:04}{}", shared.borrow().batch_group, ["", "/2", "/2"][rng.random_range(0..3)]),
                _ => format!("u/{}/{:06}", rng.random_range(0..2), rng.random_range(1..400)),
            };
            timed(c.split_range(SplitRangeRequest { table: TABLE.into(), key: key.into_bytes() }))
                .await
                .map(|_| "split")
        } else {
            let status = match timed(c.cluster_status(ClusterStatusRequest {})).await {
                Ok(s) => s,
                Err(_) => continue,
            };
            let ranges: Vec<_> = status.ranges.iter().filter(|r| r.table == TABLE).collect();
            if ranges.is_empty() {
                continue;
            }
            let r = ranges[rng.random_range(0..ranges.len())];
            let node_id = hosts.pick(&mut rng);
            let doomed_id = doomed.and_then(|host| node_id_of_host(&status, host).ok());
            if action >= 8 && doomed_id.is_some_and(|d| r.replicas.iter().any(|x| x.node_id == d)) {
                continue;
            }
            if action < 8 {
                timed(c.transfer_leader(TransferLeaderRequest { range_id: r.id, node_id })).await.map(|_| "transfer")
            } else {
                timed(c.remove_replica(ChangeReplicaRequest { range_id: r.id, node_id })).await.map(|_| "remove")
            }
        };
        let mut sh = shared.borrow_mut();
        match result {
            Ok(what) => *sh.operations.entry(what).or_default() += 1,
            Err(_) => *sh.operations.entry("refused or failed").or_default() += 1,
        }
    }
}

enum Recreate {
    Exists,
    Failed(String),
}

async fn create_recreated_table(c: &mut Client) -> Result<(), Recreate> {
    let create = CreateTableRequest {
        name: RECREATED_TABLE.into(),
        partitioning: Partitioning::Range as i32,
        split_keys: vec![],
        hash_ranges: 0,
        ..Default::default()
    };
    match timed(c.create_table(create)).await {
        Ok(_) => Ok(()),
        Err(e) if e.starts_with("AlreadyExists") => Err(Recreate::Exists),
        Err(e) => Err(Recreate::Failed(e)),
    }
}

/// Makes every node cache the second table, drops it and creates it anew through
/// one node, then writes through each node in turn and reads through every other:
/// a node whose cache still maps the name to the dropped table must not
/// acknowledge a write that the others cannot see, nor serve the dropped table.
/// A failure under faults is no finding (the operator just tries again later);
/// a write acknowledged and then missing is.
async fn recreate_table(shared: &Rc<RefCell<Shared>>, rng: &mut StdRng, hosts: &Hosts) -> Result<&'static str, String> {
    let round = rng.random_range(0..1_000_000u64);
    let clients: Vec<Client> = hosts.0.iter().map(|n| client(*n)).collect();
    for (i, c) in clients.iter().enumerate() {
        let key = format!("warm/{round}/{i}").into_bytes();
        timed(c.clone().get(GetRequest { table: RECREATED_TABLE.into(), key, consistency: 0, max_staleness_ms: 0 }))
            .await?;
    }
    let mut admin = clients[rng.random_range(0..clients.len())].clone();
    timed(admin.drop_table(DropTableRequest { name: RECREATED_TABLE.into() })).await?;
    match create_recreated_table(&mut admin).await {
        Ok(()) | Err(Recreate::Exists) => {}
        Err(Recreate::Failed(e)) => return Err(e),
    }
    for (i, writer) in clients.iter().enumerate() {
        let key = format!("after/{round}/{i}").into_bytes();
        let put =
            PutRequest { table: RECREATED_TABLE.into(), key: key.clone(), value: b"1".to_vec(), ..Default::default() };
        if timed(writer.clone().put(put)).await.is_err() {
            continue; // refused or in doubt: nothing to check
        }
        for (j, reader) in clients.iter().enumerate() {
            let get =
                GetRequest { table: RECREATED_TABLE.into(), key: key.clone(), consistency: 0, max_staleness_ms: 0 };
            match timed(reader.clone().get(get)).await {
                Ok(r) if !r.found => shared.borrow_mut().problems.push(format!(
                    "after the table was dropped and created again, a write acknowledged through node {} \
                     is not visible through node {}",
                    i + 1,
                    j + 1
                )),
                _ => {}
            }
        }
    }
    Ok("drop and re-create")
}

fn batch_of(keys: &[Vec<u8>], value: u64) -> Vec<WriteOp> {
    keys.iter()
        .map(|k| WriteOp {
            op: Some(write_op::Op::Put(PutRequest {
                key: k.clone(),
                value: value.to_string().into_bytes(),
                ..Default::default()
            })),
        })
        .collect()
}

/// BatchWrites of one value to a group of four keys, each checked by a BatchGet
/// that must see all of one batch or none of it within each range (the operator
/// splits only at a group's start or between its keys 1 and 2); now and then an
/// acknowledged batch is re-sent with its request id: it must be answered with
/// its first results and must not overwrite the newer values.
async fn batch_worker(shared: Rc<RefCell<Shared>>, hosts: Hosts, seed: u64, stop_ns: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xBA7C4);
    let mut n = 0u64;
    let mut acked: Vec<(u64, Vec<u8>, Vec<WriteResult>)> = Vec::new();
    let mut group = 0u64;
    // A batch left in doubt may still apply later (a held proposal delivered after
    // the next batch): until the group changes, its values prove nothing.
    let mut in_doubt = false;
    while sim_ns() < stop_ns {
        n += 1;
        if n.is_multiple_of(25) {
            group = (group + 1) % 40;
            shared.borrow_mut().batch_group = group;
            acked.clear();
            in_doubt = false;
        }
        let keys: Vec<Vec<u8>> = (0..4).map(|k| format!("b/{group:04}/{k}").into_bytes()).collect();
        let mut c = client(hosts.pick(&mut rng));
        let rid = format!("bw-{n}").into_bytes();
        let req = BatchWriteRequest { table: TABLE.into(), ops: batch_of(&keys, n), request_id: rid.clone() };
        let write = async {
            for _ in 0..3 {
                match timed(c.clone().batch_write(req.clone())).await {
                    Ok(r) => return Some(r.results),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            None
        };
        // A BatchGet racing the write: it must see the batch whole or not at all.
        let (reader, delay_ms) = (client(hosts.pick(&mut rng)), rng.random_range(0..6));
        let racing_read = async {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            batch_get_checked(&shared, reader, &keys).await
        };
        let (wrote, _) = futures::join!(write, racing_read);
        let Some(results) = wrote else {
            in_doubt = true;
            continue;
        };
        *shared.borrow_mut().operations.entry("batch write").or_default() += 1;
        acked.push((n, rid, results));
        if acked.len() > 1 && rng.random_range(0..3) == 0 {
            let (old, rid, first) = acked[rng.random_range(0..acked.len() - 1)].clone();
            let again = BatchWriteRequest { table: TABLE.into(), ops: batch_of(&keys, old), request_id: rid.clone() };
            if let Ok(r) = timed(c.batch_write(again)).await {
                if r.results != first {
                    shared
                        .borrow_mut()
                        .duplicates
                        .push(format!("batch {} answered differently when re-sent", String::from_utf8_lossy(&rid)));
                }
            }
        }
        let after = batch_get_checked(&shared, client(hosts.pick(&mut rng)), &keys).await;
        if let Some(values) = after.filter(|_| !in_doubt) {
            if values.iter().any(|v| *v != n.to_string().as_bytes()) {
                // This worker is the only writer of the group, and batch n is acknowledged.
                let shown: Vec<String> = values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
                shared.borrow_mut().duplicates.push(format!(
                    "group {group} reads {shown:?} after batch {n} was acknowledged (a re-sent batch applied again)"
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))).await;
    }
}

/// Reads a batch group and checks that each of its two halves (keys 0-1 and 2-3,
/// which always share a range: splits fall between groups or between keys 1
/// and 2) holds one batch's value. Returns the values read.
async fn batch_get_checked(shared: &Rc<RefCell<Shared>>, mut c: Client, keys: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    let get = BatchGetRequest { table: TABLE.into(), keys: keys.to_vec(), consistency: 0, max_staleness_ms: 0 };
    let r = timed(c.batch_get(get)).await.ok()?;
    *shared.borrow_mut().operations.entry("batch get").or_default() += 1;
    let values: Vec<Vec<u8>> = r.results.into_iter().map(|x| x.value).collect();
    if values[0] != values[1] || values[2] != values[3] {
        let shown: Vec<String> = values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        shared.borrow_mut().problems.push(format!("a BatchGet saw half of a batch: {shown:?}"));
    }
    Some(values)
}

/// The faults have healed and the dead node is still down: every range must
/// regain three voters, all on live nodes and none on the dead or the
/// decommissioned node, and the joined node must hold replicas. Then the step
/// loop restarts the dead node, which must drop what it held (the placement
/// check), and routing convergence is timed from that restart.
async fn elastic_checks(shared: &Rc<RefCell<Shared>>, plan: ElasticPlan) {
    let healed_ns = sim_ns();
    let deadline = tokio::time::Instant::now() + REPLACEMENT_PATIENCE;
    let outcome = loop {
        let outcome = match timed(client(1).cluster_status(ClusterStatusRequest {})).await {
            Ok(s) => replaced(&s, plan),
            Err(e) => Err(e),
        };
        shared.borrow_mut().progress = format!("replacing the dead node's replicas: {outcome:?}");
        if outcome.is_ok() || tokio::time::Instant::now() >= deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let secs = (sim_ns() - healed_ns) as f64 / 1e9;
    match outcome {
        Ok(per_node) => {
            shared.borrow_mut().elastic_summary = format!(
                "every range on 3 live nodes {secs:.1} s after healing, before the dead node's restart ({per_node})"
            )
        }
        Err(p) => shared.borrow_mut().problems.push(format!(
            "{REPLACEMENT_PATIENCE:?} after healing, a range is still short of 3 voters on live nodes: {p}"
        )),
    }
    shared.borrow_mut().revive_requested = true;
    let revived_ms = loop {
        if let Some(at) = shared.borrow().revived_at_ms {
            break at;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shared.borrow_mut().healed_at_ms = revived_ms;
}

/// The node id of simulated host `host` (ids follow the order nodes joined in,
/// not host numbers), found by its advertised address.
fn node_id_of_host(s: &ClusterStatusResponse, host: u64) -> Result<u64, String> {
    let addr = net::node_addr(host);
    s.nodes.iter().find(|n| n.addr == addr).map(|n| n.id).ok_or(format!("host {host} is not listed"))
}

/// Whether every range has three voters on live nodes, none of them the dead or
/// the decommissioned node, and the joined node holds some; if so, the replicas
/// each node holds.
fn replaced(s: &ClusterStatusResponse, plan: ElasticPlan) -> Result<String, String> {
    let id_of = |host| node_id_of_host(s, host);
    let (dead, gone, joiner) = (id_of(plan.dead)?, id_of(plan.decommissioned)?, id_of(plan.joiner)?);
    let state = |id: u64| s.nodes.iter().find(|n| n.id == id).map_or("unlisted", |n| n.state.as_str());
    if state(dead) != "dead" {
        return Err(format!("node {dead}, down since the faults, is {}", state(dead)));
    }
    if state(gone) != "decommissioned" {
        return Err(format!("node {gone} is {}, not decommissioned", state(gone)));
    }
    for r in &s.ranges {
        let voters: Vec<u64> = r.replicas.iter().filter(|x| !x.learner).map(|x| x.node_id).collect();
        if voters.len() != 3
            || voters.len() != r.replicas.len()
            || r.leader_node_id == 0
            || voters.iter().any(|v| state(*v) != "live")
        {
            return Err(format!(
                "range {} ({}) [{}, {}): replicas {:?}, leader {}",
                r.id, r.table, r.start_display, r.end_display, r.replicas, r.leader_node_id
            ));
        }
    }
    if !s.ranges.iter().any(|r| r.replicas.iter().any(|x| x.node_id == joiner)) {
        return Err(format!("the joined node {joiner} holds no replica"));
    }
    // Node ids follow the order of joining, not the host numbers.
    let per_node: Vec<String> = s
        .nodes
        .iter()
        .map(|n| match n.id {
            id if id == dead => format!("node {id} dead"),
            id if id == gone => format!("node {id} decommissioned, {} replicas", n.replicas),
            id if id == joiner => format!("node {id} joined, {} replicas", n.replicas),
            id => format!("node {id} {} replicas", n.replicas),
        })
        .collect();
    Ok(per_node.join(", "))
}

/// After healing: every node routes to every range (each node's view of the
/// ranges agrees and every range has its replicas and a leader), then every
/// acknowledged unique write is read back and the counter read.
async fn final_checks(shared: &Rc<RefCell<Shared>>, hosts: u64) {
    let deadline = tokio::time::Instant::now() + CONVERGENCE_PATIENCE;
    let mut problem;
    loop {
        problem = converged(hosts).await.err();
        shared.borrow_mut().progress = format!("converging: {problem:?}");
        if problem.is_none() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged_at_ms = sim_ns() / 1_000_000;
    shared.borrow_mut().convergence =
        problem.map(|p| format!("not converged {CONVERGENCE_PATIENCE:?} after healing: {p}"));
    shared.borrow_mut().converged_at_ms = converged_at_ms;

    let mut c = client(1);
    shared.borrow_mut().progress = "final scan".into();
    let scanned = tokio::time::timeout(Duration::from_secs(30), scan_prefix(&mut c, b"u/"))
        .await
        .unwrap_or_else(|_| Err("timed out after 30s".into()));
    match scanned {
        Ok(keys) => {
            if keys.windows(2).any(|w| w[0] >= w[1]) {
                shared.borrow_mut().problems.push("the final scan returned keys out of order or twice".into());
            }
            let present: BTreeSet<String> = keys.into_iter().collect();
            let acked = shared.borrow().acked_unique.clone();
            shared.borrow_mut().lost = cairn_check::lost_writes(acked, &present);
        }
        Err(e) => shared.borrow_mut().problems.push(format!("final scan failed: {e}")),
    }
    match timed(c.get(GetRequest { table: TABLE.into(), key: b"c".to_vec(), consistency: 0, max_staleness_ms: 0 }))
        .await
    {
        Ok(r) => {
            let observed = std::str::from_utf8(&r.value).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            shared.borrow_mut().counter.2 = observed;
        }
        Err(e) => shared.borrow_mut().problems.push(format!("final counter read failed: {e}")),
    }
    let mut redis = SimRedis::new(1, OP_TIMEOUT);
    match redis.call(&["GET".into(), "rc".into()]).await {
        Some(RespReply::Bulk(v)) => {
            let observed = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()).unwrap_or(-1);
            shared.borrow_mut().resp_counter.2 = observed;
        }
        Some(RespReply::Nil) => shared.borrow_mut().resp_counter.2 = 0,
        other => shared.borrow_mut().problems.push(format!("final read of the INCR counter failed: {other:?}")),
    }
    shared.borrow_mut().progress = "placement check".into();
    let misplaced = placement_settled(shared).await;
    shared.borrow_mut().problems.extend(misplaced);
}

/// Waits (up to `CONVERGENCE_PATIENCE`) until every node's disk holds exactly the
/// ranges it is a replica of (`placement`); returns what is still wrong then.
/// Membership changes that were under way when the faults healed finish first.
async fn placement_settled(shared: &Rc<RefCell<Shared>>) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + CONVERGENCE_PATIENCE;
    loop {
        let problems = match timed(client(1).cluster_status(ClusterStatusRequest {})).await {
            Ok(status) => {
                let ranges: Vec<RangeDescriptor> = status
                    .ranges
                    .iter()
                    .map(|r| RangeDescriptor {
                        id: r.id,
                        start: r.start.clone(),
                        end: r.end.clone(),
                        replicas: r
                            .replicas
                            .iter()
                            .map(|x| Replica { node_id: x.node_id, learner: x.learner, ..Default::default() })
                            .collect(),
                        ..Default::default()
                    })
                    .collect();
                let disks = shared.borrow().disks.clone();
                // Node ids are allocated as nodes join, so a host's id is read from its disk.
                disks
                    .iter()
                    .flat_map(|disk| match placement::node_id_of(disk) {
                        Some(node) => placement::check_disk(node, disk, &ranges),
                        None => vec!["a node's disk holds no identity".to_string()],
                    })
                    .collect()
            }
            Err(e) => vec![format!("cluster status for the placement check: {e}")],
        };
        if problems.is_empty() {
            return problems;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut out = vec![format!("disks still hold misplaced data {CONVERGENCE_PATIENCE:?} after healing:")];
            out.extend(problems.into_iter().take(8));
            return out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether every node sees the same ranges, each fully replicated with a leader,
/// and answers a linearizable read routed through its own gateway.
async fn converged(nodes: u64) -> Result<(), String> {
    let mut views = Vec::new();
    for node in 1..=nodes {
        let mut c = client(node);
        let status = timed(c.cluster_status(ClusterStatusRequest {})).await.map_err(|e| format!("node {node}: {e}"))?;
        fully_replicated(&status, nodes).map_err(|e| format!("node {node} sees {e}"))?;
        let mut bounds: Vec<_> =
            status.ranges.iter().filter(|r| r.table == TABLE).map(|r| (r.start.clone(), r.end.clone())).collect();
        bounds.sort();
        views.push(bounds);
        for key in ["c", "r/0000/0", "u/0/000001"] {
            timed(c.get(GetRequest {
                table: TABLE.into(),
                key: key.as_bytes().to_vec(),
                consistency: 0,
                max_staleness_ms: 0,
            }))
            .await
            .map_err(|e| format!("node {node} cannot read {key:?}: {e}"))?;
        }
    }
    if views.windows(2).any(|w| w[0] != w[1]) {
        return Err("nodes disagree on the table's ranges".into());
    }
    Ok(())
}

async fn scan_prefix(c: &mut Client, prefix: &[u8]) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    let mut token = Vec::new();
    loop {
        let req = ScanRequest {
            table: TABLE.into(),
            prefix: prefix.to_vec(),
            page_token: token.clone(),
            keys_only: true,
            ..Default::default()
        };
        let mut stream = timed(c.scan(req)).await?;
        let mut next = Vec::new();
        while let Some(page) = stream.next().await {
            let page = page.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            keys.extend(page.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()));
            next = page.next_page_token;
        }
        if next.is_empty() {
            return Ok(keys);
        }
        token = next;
    }
}

fn fv(v: &Version) -> FeedVersion {
    (v.wall_ns, v.logical, v.node_id)
}

fn pv(v: FeedVersion) -> Version {
    Version { wall_ns: v.0, logical: v.1, node_id: v.2 }
}

fn last_resolved(session: &FeedSession) -> Option<FeedVersion> {
    session.records.iter().rev().find_map(|r| match r {
        FeedRecord::Resolved(v) => Some(*v),
        FeedRecord::Event { .. } => None,
    })
}

/// The highest resolved checkpoint any of the consumer's sessions received.
fn feed_resolved(shared: &Rc<RefCell<Shared>>) -> Option<FeedVersion> {
    shared.borrow().feed_sessions.iter().filter_map(last_resolved).max()
}

/// Waits for the feed consumer's first resolved checkpoint.
async fn feed_started(shared: &Rc<RefCell<Shared>>) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + FEED_START_PATIENCE;
    while feed_resolved(shared).is_none() {
        if tokio::time::Instant::now() >= deadline {
            let sh = shared.borrow();
            return Err(format!(
                "the feed consumer received no resolved checkpoint within {FEED_START_PATIENCE:?} \
                 ({} sessions, ended {:?})",
                sh.feed_sessions.len(),
                sh.feed_restarts
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A change-feed consumer of the table: it subscribes through one node and
/// records every event and resolved checkpoint as a session
/// (`cairn_check::FeedSession`); whenever the stream fails, makes no resolved
/// progress for `FEED_STALL` (its node cut off, crashed or slow), or has run a
/// few seconds (on purpose), it resumes through another node from the last
/// resolved checkpoint it received. The first session starts "now". It runs
/// until the final checks have it stop.
async fn feed_consumer(shared: Rc<RefCell<Shared>>, hosts: Hosts, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xFEED);
    let mut node = hosts.pick(&mut rng);
    let mut checkpoint = None;
    loop {
        shared.borrow_mut().feed_sessions.push(FeedSession { from: checkpoint, records: Vec::new() });
        let lifetime = Duration::from_millis(rng.random_range(FEED_SESSION_MS));
        let ended = feed_session(&shared, node, checkpoint, lifetime).await;
        if let Some(r) = shared.borrow().feed_sessions.last().and_then(last_resolved) {
            checkpoint = Some(r);
        }
        let Some(why) = ended else { return };
        *shared.borrow_mut().feed_restarts.entry(why).or_default() += 1;
        // Another node next: a cut-off node's feed would only stall again.
        let others: Vec<u64> = hosts.0.iter().copied().filter(|n| *n != node).collect();
        if !others.is_empty() {
            node = others[rng.random_range(0..others.len())];
        }
        if why == "failed" {
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..250))).await;
        }
    }
}

/// One session of the feed consumer, recorded into the last of the shared
/// sessions. Returns why it ended: "failed" (the subscription refused or the
/// stream ended), "stalled", "rotated"; `None` when told to stop.
async fn feed_session(
    shared: &Rc<RefCell<Shared>>,
    node: u64,
    from: Option<FeedVersion>,
    lifetime: Duration,
) -> Option<&'static str> {
    let req = SubscribeRequest {
        table: TABLE.into(),
        prefix: vec![],
        from_version: from.map(pv),
        with_prev_value: false,
        resolved_interval_ms: 200,
    };
    let mut stream = match tokio::time::timeout(OP_TIMEOUT, client(node).subscribe(req)).await {
        Ok(Ok(r)) => r.into_inner(),
        _ => return Some("failed"),
    };
    let started = tokio::time::Instant::now();
    // When the resolved version last grew, and to what.
    let mut progress = (started, from);
    loop {
        if shared.borrow().feed_stop {
            return None;
        }
        let now = tokio::time::Instant::now();
        if now >= started + lifetime {
            return Some("rotated");
        }
        if now >= progress.0 + FEED_STALL {
            return Some("stalled");
        }
        let message = match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(_)) | None) => return Some("failed"),
        };
        let mut sh = shared.borrow_mut();
        let session = sh.feed_sessions.last_mut().expect("the session being recorded");
        for e in message.events {
            let version = e.version.as_ref().map(fv).unwrap_or_default();
            let value = (!e.deleted).then_some(e.value);
            session.records.push(FeedRecord::Event { key: e.key, version, value });
        }
        if let Some(v) = message.resolved.as_ref().map(fv) {
            session.records.push(FeedRecord::Resolved(v));
            if Some(v) > progress.1 {
                progress = (tokio::time::Instant::now(), Some(v));
            }
        }
    }
}

/// Lets the feed consumer run until it has resolved past the last acknowledged
/// unique write (at most `FEED_CATCH_UP_PATIENCE`), then stops it. Whatever is
/// still above its last resolved version then is a problem (`check_feed`).
async fn feed_caught_up(shared: &Rc<RefCell<Shared>>) {
    let last = shared
        .borrow()
        .feed_writes
        .iter()
        .filter_map(|w| match w.outcome {
            WriteOutcome::Acked(v) => Some(v),
            _ => None,
        })
        .max();
    let deadline = tokio::time::Instant::now() + FEED_CATCH_UP_PATIENCE;
    while feed_resolved(shared) < last && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.borrow_mut().feed_stop = true;
}
