//! A Jepsen-style run against real `cairn server` processes in network
//! namespaces: concurrent clients record every invocation and completion, a
//! nemesis injects faults (partitions, kills, pauses, packet loss) while splits
//! and leader transfers happen, and at the end the history is checked for
//! linearizability, lost acknowledged writes, counter bounds and duplicated
//! retries. Redis clients run beside the gRPC ones (GET/SET/SET NX/DEL and Lua
//! compare-and-set on registers, INCR on a counter, SETs that must survive),
//! under the same checks. The run is bounded in time and stops on its own.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use super::resp_register::{self, RespReply};
use super::Cluster;
use cairn_check::{CounterCheck, FeedRecord, FeedSession, FeedWrite, Input, Outcome, Output, Recorder, WriteOutcome};
use cairn_proto::kv::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TABLE: &str = "chaos";
/// Longest a client waits for one attempt; past it the outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Cut the leader of a random range off from the other nodes.
    IsolateLeader,
    /// Cut a random minority of the nodes off from the majority.
    MajorityMinority,
    /// Two halves of the nodes cannot talk to each other; one node talks to both.
    Bridge,
    /// One node's packets to another are dropped; the reverse direction works.
    OneWay,
    /// A node drops 30% of its packets to the others.
    Lossy,
    /// kill -9 one node; restart it when the fault ends.
    Kill,
    /// kill -9 a majority at once (quorum lost); restart them when the fault ends.
    KillMajority,
    /// kill -9 every node at once, as a power cut would; restart them all.
    KillAll,
    /// SIGSTOP one node; SIGCONT when the fault ends.
    Pause,
    /// Step one node's wall clock up to 90 s forwards or backwards; step it
    /// back when the fault ends (needs a `fault-injection` build).
    ClockJump,
}

pub const ALL_FAULTS: &[Fault] = &[
    Fault::IsolateLeader,
    Fault::MajorityMinority,
    Fault::Bridge,
    Fault::OneWay,
    Fault::Lossy,
    Fault::Kill,
    Fault::KillMajority,
    Fault::KillAll,
    Fault::Pause,
    Fault::ClockJump,
];

pub struct ChaosConfig {
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<Fault>,
    /// Also split ranges and transfer leaders while faults are active.
    pub topology_changes: bool,
    /// Environment for every server (used by the sabotage proofs).
    pub env: Vec<(&'static str, &'static str)>,
    pub register_keys: usize,
    pub register_workers: usize,
    /// Register clients speaking RESP (beside the gRPC ones).
    pub resp_register_workers: usize,
    /// Cluster size (CAIRN_CHAOS_NODES, default 3). Ranges keep 3 replicas, so
    /// with more nodes a replica move lands on a node that had none.
    pub nodes: usize,
}

impl ChaosConfig {
    /// Seed from CAIRN_CHAOS_SEED, duration from CAIRN_CHAOS_SECS, else the defaults given.
    pub fn from_env(default_secs: u64) -> ChaosConfig {
        let seed = std::env::var("CAIRN_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        let secs = std::env::var("CAIRN_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_secs);
        ChaosConfig {
            duration: Duration::from_secs(secs),
            seed,
            faults: ALL_FAULTS.to_vec(),
            topology_changes: true,
            env: vec![],
            register_keys: 6,
            register_workers: 6,
            resp_register_workers: 3,
            nodes: std::env::var("CAIRN_CHAOS_NODES").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(3),
        }
    }
}

#[derive(Default, Debug)]
pub struct ChaosReport {
    pub seed: u64,
    pub nodes: usize,
    pub faults: BTreeMap<String, usize>,
    pub topology: BTreeMap<String, (usize, usize)>,
    pub ops_ok: usize,
    pub ops_unknown: usize,
    pub ops_failed: usize,
    pub linearizability: String,
    pub linearizable: bool,
    pub acked_unique: usize,
    pub lost: Vec<String>,
    pub scan_problems: Vec<String>,
    /// Why the counter check failed, if it did.
    pub counter_error: Option<String>,
    pub counter_figures: (i64, i64, i64),
    pub duplicates: Vec<String>,
    /// Why the cluster did not converge after healing, if it did not.
    pub convergence_error: Option<String>,
    /// Register operations of the Redis clients (ok, indeterminate, failed), part of the totals above.
    pub resp_ops: (usize, usize, usize),
    pub resp_acked_unique: usize,
    pub resp_lost: Vec<String>,
    pub resp_counter_error: Option<String>,
    pub resp_counter_figures: (i64, i64, i64),
    /// Replies of the wrong shape for their command.
    pub resp_problems: Vec<String>,
    /// What the change-feed checker found wrong in the feed of the unique writers' keys.
    pub feed_violations: Vec<String>,
    /// Feed figures: unique writes acknowledged with their version, events received, consumer sessions.
    pub feed_figures: (usize, usize, usize),
}

impl ChaosReport {
    pub fn ok(&self) -> bool {
        self.linearizable
            && self.lost.is_empty()
            && self.scan_problems.is_empty()
            && self.counter_error.is_none()
            && self.duplicates.is_empty()
            && self.convergence_error.is_none()
            && self.resp_lost.is_empty()
            && self.resp_counter_error.is_none()
            && self.resp_problems.is_empty()
            && self.feed_violations.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let verdict = if self.ok() { "PASS" } else { "FAIL" };
        s += &format!(
            "chaos run: {} nodes, seed {} (rerun with CAIRN_CHAOS_SEED={})\n",
            self.nodes, self.seed, self.seed
        );
        s += &format!("  faults injected: {:?}\n", self.faults);
        s += &format!("  splits, leader transfers, replica moves (ok, refused): {:?}\n", self.topology);
        s += &format!(
            "  register operations: {} ok, {} indeterminate, {} failed\n",
            self.ops_ok, self.ops_unknown, self.ops_failed
        );
        s += &format!("  linearizability: {}\n", self.linearizability);
        s += &format!("  acknowledged unique writes: {}, lost: {}\n", self.acked_unique, first_few(&self.lost));
        s += &format!("  scan order problems: {:?}\n", self.scan_problems);
        let (a, t, o) = self.counter_figures;
        s += &format!(
            "  counter: acknowledged {a} <= observed {o} <= attempted {t}: {}\n",
            verdict_of(&self.counter_error)
        );
        s += &format!("  duplicated retries: {}\n", first_few(&self.duplicates));
        let (ok, unknown, failed) = self.resp_ops;
        s += &format!("  Redis clients: register operations {ok} ok, {unknown} indeterminate, {failed} failed\n");
        s += &format!(
            "  Redis clients: acknowledged unique SETs: {}, lost: {}\n",
            self.resp_acked_unique,
            first_few(&self.resp_lost)
        );
        let (a, t, o) = self.resp_counter_figures;
        s += &format!(
            "  Redis clients: INCR counter: acknowledged {a} <= observed {o} <= attempted {t}: {}\n",
            verdict_of(&self.resp_counter_error)
        );
        s += &format!("  Redis clients: malformed replies: {}\n", first_few(&self.resp_problems));
        s += &format!(
            "  change feed: {} acknowledged unique writes, {} events in {} consumer sessions; violations: {}\n",
            self.feed_figures.0,
            self.feed_figures.1,
            self.feed_figures.2,
            first_few(&self.feed_violations)
        );
        s += &format!("  convergence after healing: {}\n", verdict_of(&self.convergence_error));
        s += &format!("  verdict: {verdict}\n");
        s
    }
}

/// A count and the first few items: enough to start debugging, short enough to read.
fn first_few(items: &[String]) -> String {
    match items.len() {
        0 => "none".into(),
        n => format!("{n}, first {:?}", &items[..n.min(5)]),
    }
}

fn verdict_of(error: &Option<String>) -> String {
    match error {
        None => "ok".into(),
        Some(e) => format!("FAILED: {e}"),
    }
}

/// Register keys rotate: generation `g` (a few seconds of the run) uses its own
/// slots, so each key's history stays short enough for the exhaustive
/// linearizability search even with many operations in doubt (Jepsen's
/// "independent keys").
const GENERATION: Duration = Duration::from_secs(4);

fn reg_key(generation: u64, slot: usize) -> String {
    format!("r/{generation:04}/{slot}")
}

/// Register keys of the Redis clients (in the Redis keyspace, so never the gRPC clients' keys).
fn resp_reg_key(generation: u64, slot: usize) -> String {
    format!("rr/{generation:04}/{slot}")
}

/// Process ids of the Redis register clients start here (the gRPC ones start at 0).
const RESP_PROCESS_BASE: u64 = 1 << 24;

struct Shared {
    start: Instant,
    rec: Recorder,
    stop: AtomicBool,
    acked_unique: Mutex<Vec<String>>,
    counter: Mutex<(i64, i64)>,
    duplicates: Mutex<Vec<String>>,
    resp_acked_unique: Mutex<Vec<String>>,
    resp_counter: Mutex<(i64, i64)>,
    resp_problems: Mutex<Vec<String>>,
    /// The unique writers' puts with their outcomes and versions, for the feed check.
    feed_writes: super::feed::WriteLog,
}

/// One Redis client connection, made again after it breaks.
struct RespConn {
    addr: String,
    conn: Option<redis::aio::MultiplexedConnection>,
}

impl RespConn {
    fn new(addr: String) -> RespConn {
        RespConn { addr, conn: None }
    }

    /// Sends `args`; `None` when no reply came (no connection, a timeout, a broken
    /// connection), which for a write means it may or may not have applied.
    async fn call(&mut self, args: &[String]) -> Option<RespReply> {
        if self.conn.is_none() {
            let client = redis::Client::open(format!("redis://{}/", self.addr)).ok()?;
            // The crate's own reply timeout (500 ms by default) would cut leader changes short.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(OP_TIMEOUT));
            let connect = client.get_multiplexed_async_connection_with_config(&config);
            self.conn = tokio::time::timeout(OP_TIMEOUT, connect).await.ok()?.ok();
        }
        let conn = self.conn.as_mut()?;
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        match tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<redis::Value>(conn)).await {
            Ok(Ok(v)) => Some(match v {
                redis::Value::Nil => RespReply::Nil,
                redis::Value::BulkString(b) => RespReply::Bulk(b),
                redis::Value::Int(n) => RespReply::Int(n),
                redis::Value::Okay => RespReply::Status("OK".into()),
                redis::Value::SimpleString(s) => RespReply::Status(s),
                other => RespReply::Unexpected(format!("{other:?}")),
            }),
            Ok(Err(e)) if e.code().is_some() => {
                Some(RespReply::Error(format!("{} {}", e.code().unwrap_or_default(), e.detail().unwrap_or_default())))
            }
            _ => {
                self.conn = None;
                None
            }
        }
    }
}

/// Register operations through a Redis client: GET, SET, SET NX, DEL, and Lua
/// compare-and-set / compare-and-delete, recorded for the same checker.
async fn resp_register_worker(sh: Arc<Shared>, addr: String, worker: u64, keys: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5E5 ^ (worker << 20));
    let mut c = RespConn::new(addr);
    let mut process = RESP_PROCESS_BASE + worker;
    let mut seq = 0u64;
    let mut seen: Vec<Option<u64>> = vec![None; keys];
    let mut current = 0;
    while !sh.stop.load(Ordering::Relaxed) {
        let generation = (sh.start.elapsed().as_millis() / GENERATION.as_millis()) as u64;
        if generation != current {
            current = generation;
            seen = vec![None; keys];
        }
        let k = rng.random_range(0..keys);
        let key = resp_reg_key(generation, k);
        seq += 1;
        let fresh = (RESP_PROCESS_BASE + worker + 1) * 1_000_000_000 + seq;
        let expected = seen[k].unwrap_or(fresh - 1);
        let input = super::register::random_input(&mut rng, fresh, expected);
        let pending = sh.rec.invoke(process, key.clone(), input);
        let reply = c.call(&resp_register::command(&key, &input)).await;
        let outcome = resp_register::outcome(&input, reply).unwrap_or_else(|problem| {
            sh.resp_problems.lock().expect("lock").push(format!("{key}: {problem}"));
            Outcome::Unknown
        });
        if let Outcome::Ok(Output::Value(v)) = &outcome {
            seen[k] = *v;
        }
        let unknown = matches!(outcome, Outcome::Unknown);
        sh.rec.complete(pending, outcome);
        if unknown {
            process += 1 << 32;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
    }
}

/// SETs keys that are never overwritten; every acknowledged one must survive.
async fn resp_unique_writer(sh: Arc<Shared>, addr: String, worker: u64) {
    let mut c = RespConn::new(addr);
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("ru/{worker}/{n:06}");
        match c.call(&["SET".into(), key.clone(), "x".into()]).await {
            Some(RespReply::Status(s)) if s == "OK" => sh.resp_acked_unique.lock().expect("lock").push(key),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// INCR on one counter, never retried (Redis has no request ids): an answered
/// increment counts as acknowledged, one that surely failed as nothing, and any
/// other as attempted, so acknowledged <= final value <= attempted.
async fn resp_counter_worker(sh: Arc<Shared>, addr: String) {
    let mut c = RespConn::new(addr);
    while !sh.stop.load(Ordering::Relaxed) {
        let reply = c.call(&["INCR".into(), "rc".into()]).await;
        let (acked, attempted) = match &reply {
            Some(RespReply::Int(_)) => (1, 1),
            Some(RespReply::Error(e)) if resp_register::surely_not_applied(e) => (0, 0),
            _ => (0, 1),
        };
        {
            let mut ctr = sh.resp_counter.lock().expect("lock");
            ctr.0 += acked;
            ctr.1 += attempted;
        }
        if acked == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn register_worker(sh: Arc<Shared>, addr: String, worker: u64, keys: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker << 20));
    let mut c = super::client_at(&addr);
    let mut process = worker;
    let mut seq = 0u64;
    let mut seen: Vec<Option<u64>> = vec![None; keys];
    let mut current = 0;
    while !sh.stop.load(Ordering::Relaxed) {
        let generation = (sh.start.elapsed().as_millis() / GENERATION.as_millis()) as u64;
        if generation != current {
            current = generation;
            seen = vec![None; keys];
        }
        let k = rng.random_range(0..keys);
        let key = reg_key(generation, k);
        seq += 1;
        let fresh = (worker + 1) * 1_000_000_000 + seq;
        let expected = seen[k].unwrap_or(fresh - 1);
        let input = super::register::random_input(&mut rng, fresh, expected);
        let pending = sh.rec.invoke(process, key.clone(), input);
        let outcome = super::register::register_op(&mut c, TABLE, &key, &input, OP_TIMEOUT).await;
        if let Outcome::Ok(Output::Value(v)) = &outcome {
            seen[k] = *v;
        }
        let unknown = matches!(outcome, Outcome::Unknown);
        sh.rec.complete(pending, outcome);
        if unknown {
            // A process with an operation in doubt never issues another (Jepsen's rule):
            // carry on as a new process.
            process += 1 << 32;
        }
        // A correctness workload, not a load test: a steady trickle keeps every
        // key's history checkable while still overlapping every fault.
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
    }
}

/// Writes keys that are never overwritten; every acknowledged one must survive.
async fn unique_writer(sh: Arc<Shared>, addr: String, worker: u64) {
    let mut c = super::client_at(&addr);
    let mut n = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("u/{worker}/{n:06}");
        let req = PutRequest {
            ttl_ms: 0,
            table: TABLE.into(),
            key: key.clone().into_bytes(),
            value: b"x".to_vec(),
            condition: None,
            request_id: vec![],
        };
        let outcome = match tokio::time::timeout(OP_TIMEOUT, c.put(req)).await {
            Ok(Ok(r)) => {
                sh.acked_unique.lock().expect("lock").push(key.clone());
                match r.into_inner().version {
                    Some(v) => WriteOutcome::Acked(super::feed::fv(&v)),
                    None => WriteOutcome::Unknown,
                }
            }
            Ok(Err(s)) if !super::register::write_may_have_applied(&s) => WriteOutcome::Failed,
            _ => WriteOutcome::Unknown,
        };
        let acked = matches!(outcome, WriteOutcome::Acked(_));
        sh.feed_writes.0.lock().push(FeedWrite { key: key.into_bytes(), value: Some(b"x".to_vec()), outcome });
        if !acked {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Increments one counter by 1 with a unique request id per increment,
/// retrying in-doubt attempts with the same id, and now and then re-sending
/// an acknowledged one (recent or seconds old) to prove a retry is not applied again.
async fn counter_worker(sh: Arc<Shared>, addr: String, worker: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xC0FFEE ^ worker);
    let mut c = super::client_at(&addr);
    let mut n = 0u64;
    let mut acked: std::collections::VecDeque<(Vec<u8>, i64)> = std::collections::VecDeque::new();
    while !sh.stop.load(Ordering::Relaxed) {
        n += 1;
        let rid = format!("ctr-{worker}-{n}").into_bytes();
        let req = || IncrementRequest { table: TABLE.into(), key: b"c".to_vec(), delta: 1, request_id: rid.clone() };
        let mut result = None;
        let mut definite_failure = false;
        for _ in 0..3 {
            match tokio::time::timeout(OP_TIMEOUT, c.increment(req())).await {
                Ok(Ok(r)) => {
                    result = Some(r.into_inner().value);
                    break;
                }
                Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => {
                    definite_failure = true;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        {
            let mut ctr = sh.counter.lock().expect("lock");
            if result.is_some() {
                ctr.0 += 1;
            }
            if !definite_failure {
                ctr.1 += 1;
            }
        }
        // Every 8th acknowledged increment is kept for a late retry: 200 of them span
        // several seconds of the run.
        if let Some(first) = result.filter(|_| n.is_multiple_of(8)) {
            acked.push_back((rid.clone(), first));
            if acked.len() > 200 {
                acked.pop_front();
            }
        }
        // Re-send an acknowledged increment, often a recent one and sometimes one
        // from seconds ago (a client retrying late): faults, leader changes and
        // splits in between must not make it apply again.
        if !acked.is_empty() && rng.random_range(0..5) == 0 {
            let i = if rng.random_bool(0.3) { acked.len() - 1 } else { rng.random_range(0..acked.len()) };
            let (rid, first) = acked[i].clone();
            let retry = IncrementRequest { table: TABLE.into(), key: b"c".to_vec(), delta: 1, request_id: rid.clone() };
            if let Ok(Ok(again)) = tokio::time::timeout(OP_TIMEOUT, c.increment(retry)).await {
                let again = again.into_inner().value;
                if again != first {
                    sh.duplicates.lock().expect("lock").push(format!(
                        "request {} answered {first} then {again} on retry",
                        String::from_utf8_lossy(&rid)
                    ));
                }
            }
        }
    }
}

/// Node index of the leader of a random range of the test table, if known.
async fn some_leader(cl: &Cluster, rng: &mut StdRng) -> Option<usize> {
    let i = rng.random_range(0..cl.nodes.len());
    let mut c = super::client_at(&cl.grpc(i));
    let s = tokio::time::timeout(OP_TIMEOUT, c.cluster_status(ClusterStatusRequest {})).await.ok()?.ok()?;
    let leaders: Vec<u64> = s
        .get_ref()
        .ranges
        .iter()
        .filter(|r| r.table == TABLE && r.leader_node_id != 0)
        .map(|r| r.leader_node_id)
        .collect();
    if leaders.is_empty() {
        return None;
    }
    let id = leaders[rng.random_range(0..leaders.len())];
    cl.nodes.iter().position(|n| n.ep.as_ref().is_some_and(|e| e.node_id == id))
}

/// The node indexes in a random order.
fn shuffled(n: usize, rng: &mut StdRng) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(rng);
    v
}

/// What to undo when a fault ends.
enum Undo {
    Heal,
    /// The node, and how far its clock was moved (ms; positive: ahead).
    ClockBack(usize, i64),
    Restart(Vec<usize>),
    Resume(usize),
}

async fn inject(cl: &mut Cluster, fault: Fault, rng: &mut StdRng) -> Undo {
    let n = cl.nodes.len();
    let pick = |rng: &mut StdRng| rng.random_range(0..n);
    let lab = cl.lab.as_ref().expect("chaos runs in a network lab");
    match fault {
        Fault::IsolateLeader => {
            let l = match some_leader(cl, rng).await {
                Some(l) => l,
                None => pick(rng),
            };
            lab.isolate(l);
            Undo::Heal
        }
        Fault::MajorityMinority => {
            let order = shuffled(n, rng);
            let minority = rng.random_range(1..=(n - 1) / 2);
            lab.partition(&[order[..minority].to_vec(), order[minority..].to_vec()]);
            Undo::Heal
        }
        Fault::Bridge => {
            // Two halves that cannot talk, and one node that talks to both.
            let order = shuffled(n, rng);
            let (halves, _bridge) = order.split_at(n - 1);
            let (a, b) = halves.split_at(halves.len() / 2);
            lab.partition(&[a.to_vec(), b.to_vec()]);
            Undo::Heal
        }
        Fault::OneWay => {
            let a = pick(rng);
            for b in (0..n).filter(|&b| b != a) {
                lab.block(a, b);
            }
            Undo::Heal
        }
        Fault::Lossy => {
            for i in 0..n {
                lab.lossy(i, 30);
            }
            Undo::Heal
        }
        Fault::Kill => {
            let i = pick(rng);
            tokio::task::block_in_place(|| cl.kill(i));
            Undo::Restart(vec![i])
        }
        Fault::KillMajority => {
            let victims = shuffled(n, rng)[..n / 2 + 1].to_vec();
            tokio::task::block_in_place(|| victims.iter().for_each(|&i| cl.kill(i)));
            Undo::Restart(victims)
        }
        Fault::KillAll => {
            tokio::task::block_in_place(|| (0..n).for_each(|i| cl.kill(i)));
            Undo::Restart((0..n).collect())
        }
        Fault::Pause => {
            let i = pick(rng);
            cl.pause(i);
            Undo::Resume(i)
        }
        Fault::ClockJump => {
            let i = pick(rng);
            let ms = rng.random_range(1_000..90_000i64) * if rng.random_bool(0.5) { 1 } else { -1 };
            set_clock_offset(cl, i, ms);
            Undo::ClockBack(i, ms)
        }
    }
}

/// Shifts node `i`'s clock by `ms` (the server polls this file; see core/src/clock_fault.rs).
pub fn set_clock_offset(cl: &Cluster, i: usize, ms: i64) {
    let path = cl.nodes[i].dir.join("fault-clock-offset-ms");
    std::fs::write(&path, ms.to_string()).expect("write clock offset");
}

fn undo(cl: &mut Cluster, u: Undo) {
    match u {
        Undo::ClockBack(i, _) => set_clock_offset(cl, i, 0),
        Undo::Heal => cl.lab.as_ref().expect("lab").heal(),
        Undo::Resume(i) => cl.resume(i),
        Undo::Restart(nodes) => tokio::task::block_in_place(|| {
            for i in nodes {
                cl.restart(i);
            }
        }),
    }
}

/// A split at a random key, a leader transfer or a replica move of a random
/// range; errors are expected while faults are active and only counted.
async fn topology_change(addrs: &[String], rng: &mut StdRng, out: &mut BTreeMap<String, (usize, usize)>) {
    let mut c = super::client_at(&addrs[rng.random_range(0..addrs.len())]);
    let choice = rng.random_range(0..3);
    let (what, ok) = if choice == 0 {
        let (table, key) = match rng.random_range(0..7) {
            // Right at the counter: it moves to a new range while increments are in doubt.
            0 => (TABLE, "c".to_string()),
            1 | 2 => (TABLE, format!("r/{:04}", rng.random_range(1..20))),
            // The Redis keyspace splits at the start of the key's slot.
            3 => ("redis", "rc".to_string()),
            4 => ("redis", resp_reg_key(rng.random_range(1..20), rng.random_range(0..6))),
            _ => (TABLE, format!("u/{}/{:06}", rng.random_range(0..2), rng.random_range(1..2000))),
        };
        let req = SplitRangeRequest { table: table.into(), key: key.into_bytes() };
        ("split", matches!(tokio::time::timeout(Duration::from_secs(5), c.split_range(req)).await, Ok(Ok(_))))
    } else {
        let move_replica = choice == 2;
        let status = tokio::time::timeout(OP_TIMEOUT, c.cluster_status(ClusterStatusRequest {})).await;
        let ranges: Vec<RangeStatus> = match status {
            Ok(Ok(s)) => s.into_inner().ranges.into_iter().filter(|r| r.table == TABLE || r.table == "redis").collect(),
            _ => vec![],
        };
        let ok = if ranges.is_empty() {
            false
        } else {
            let r = &ranges[rng.random_range(0..ranges.len())];
            let node_id = r.replicas[rng.random_range(0..r.replicas.len())].node_id;
            let deadline = Duration::from_secs(5);
            if move_replica {
                // With three nodes a replica can only move out and back: the controller
                // re-adds it (learner, snapshot, promotion) onto the node it just left.
                let req = ChangeReplicaRequest { range_id: r.id, node_id };
                matches!(tokio::time::timeout(deadline, c.remove_replica(req)).await, Ok(Ok(_)))
            } else {
                let req = TransferLeaderRequest { range_id: r.id, node_id };
                matches!(tokio::time::timeout(deadline, c.transfer_leader(req)).await, Ok(Ok(_)))
            }
        };
        (if move_replica { "move-replica" } else { "transfer-leader" }, ok)
    };
    let e = out.entry(what.to_string()).or_default();
    if ok {
        e.0 += 1;
    } else {
        e.1 += 1;
    }
}

/// Lets the feed consumer catch up past the last acknowledged unique write, then
/// checks the feed of the unique writers' keys (the other workloads' keys are
/// left out: their writes' versions are not recorded). The wait is 60 s, plus
/// `clock_ahead`: how far ahead of real time a moved clock may have put versions.
async fn check_feed(
    sh: &Shared,
    mut consumer: super::feed::Consumer,
    addrs: &parking_lot::Mutex<Vec<String>>,
    clock_ahead: Duration,
    report: &mut ChaosReport,
) {
    let Some(last) = sh.feed_writes.max_acked() else { return };
    let waited = Duration::from_secs(60) + clock_ahead;
    let deadline = Instant::now() + waited;
    while consumer.current().last_resolved().is_none_or(|r| r < last) && Instant::now() < deadline {
        consumer.tend(Duration::from_millis(500), addrs).await;
    }
    let unique = |r: &FeedRecord| !matches!(r, FeedRecord::Event { key, .. } if !key.starts_with(b"u/"));
    let sessions: Vec<FeedSession> = consumer
        .sessions
        .iter()
        .map(|s| {
            let s = s.session();
            FeedSession { from: s.from, records: s.records.into_iter().filter(unique).collect() }
        })
        .collect();
    let writes = sh.feed_writes.0.lock().clone();
    report.feed_violations = cairn_check::feed_violations(&writes, &sessions).iter().map(|v| v.to_string()).collect();
    let unresolved = cairn_check::unresolved_acked(&writes, &sessions);
    if unresolved > 0 {
        let resolved = consumer.current().last_resolved();
        report.feed_violations.push(format!(
            "{unresolved} acknowledged writes were above the feed's last resolved version {} s after healing \
             (last resolved {resolved:?}, last acknowledged write {last:?})",
            waited.as_secs()
        ));
    }
    let events = sessions.iter().map(|s| s.records.iter().filter(|r| matches!(r, FeedRecord::Event { .. })).count());
    report.feed_figures = (sh.feed_writes.acked(), events.sum(), sessions.len());
}

/// Waits until every node answers a linearizable read: routing has converged.
async fn converge(cl: &Cluster, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    for i in 0..cl.nodes.len() {
        let mut c = super::client_at(&cl.grpc(i));
        loop {
            let req = GetRequest {
                table: TABLE.into(),
                key: reg_key(0, 0).into_bytes(),
                consistency: 0,
                max_staleness_ms: 0,
            };
            match tokio::time::timeout(OP_TIMEOUT, c.get(req)).await {
                Ok(Ok(_)) => break,
                other if Instant::now() > deadline => {
                    return Err(format!("node {} still failing reads after healing: {other:?}\n{}", i + 1, cl.log(i)))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

/// Runs the whole scenario on a fresh cluster in network namespaces.
pub async fn run(cfg: ChaosConfig) -> ChaosReport {
    let mut report = ChaosReport { seed: cfg.seed, nodes: cfg.nodes, ..Default::default() };
    eprintln!(
        "chaos: seed {} for {:?} on {} nodes (CAIRN_CHAOS_SEED / CAIRN_CHAOS_SECS / CAIRN_CHAOS_NODES)",
        cfg.seed, cfg.duration, cfg.nodes
    );
    let mut cl = Cluster::start_netlab(cfg.nodes, &["--raft-log-gc-threshold", "300"], &cfg.env).await;
    let n = cl.nodes.len();
    let mut admin = cl.client(0).await;
    super::create_table(&mut admin, TABLE, &[]).await;

    let sh = Arc::new(Shared {
        start: Instant::now(),
        rec: Recorder::new(),
        stop: AtomicBool::new(false),
        acked_unique: Mutex::new(vec![]),
        counter: Mutex::new((0, 0)),
        duplicates: Mutex::new(vec![]),
        resp_acked_unique: Mutex::new(vec![]),
        resp_counter: Mutex::new((0, 0)),
        resp_problems: Mutex::new(vec![]),
        feed_writes: Default::default(),
    });
    // A change-feed consumer of the table, resumed from its checkpoint whenever its
    // stream ends or stalls, and killed on purpose now and then.
    let feed_addrs = Arc::new(parking_lot::Mutex::new((0..n).map(|i| cl.grpc(i)).collect::<Vec<_>>()));
    let feed = {
        let (sh, addrs) = (sh.clone(), feed_addrs.clone());
        let mut consumer = super::feed::Consumer::new(TABLE, b"");
        consumer.restart(&addrs.lock().clone());
        // The stream starts "now": once it has resolved, every later write is above it.
        let deadline = Instant::now() + Duration::from_secs(15);
        while consumer.current().last_resolved().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::spawn(async move {
            while !sh.stop.load(Ordering::Relaxed) {
                consumer.tend(Duration::from_secs(6), &addrs).await;
                consumer.restart(&addrs.lock().clone());
            }
            consumer
        })
    };
    let mut tasks = Vec::new();
    for w in 0..cfg.register_workers as u64 {
        let addr = cl.grpc(w as usize % n);
        tasks.push(tokio::spawn(register_worker(sh.clone(), addr, w, cfg.register_keys, cfg.seed)));
    }
    for w in 0..2u64 {
        tasks.push(tokio::spawn(unique_writer(sh.clone(), cl.grpc((w as usize + 1) % n), w)));
        tasks.push(tokio::spawn(counter_worker(sh.clone(), cl.grpc((w as usize + 2) % n), w, cfg.seed)));
    }
    for w in 0..cfg.resp_register_workers as u64 {
        let addr = cl.redis(w as usize % n);
        tasks.push(tokio::spawn(resp_register_worker(sh.clone(), addr, w, cfg.register_keys, cfg.seed)));
    }
    tasks.push(tokio::spawn(resp_unique_writer(sh.clone(), cl.redis(1 % n), 0)));
    tasks.push(tokio::spawn(resp_counter_worker(sh.clone(), cl.redis(2 % n))));

    // The nemesis: fault, hold, heal, rest; never past the end of the run.
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let start = Instant::now();
    let end = start + cfg.duration;
    // Topology changes run on their own clock, so they land both inside and between faults.
    let topology = cfg.topology_changes.then(|| {
        let addrs: Vec<String> = (0..n).map(|i| cl.grpc(i)).collect();
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x70B0);
        let sh = sh.clone();
        tokio::spawn(async move {
            let mut done = BTreeMap::new();
            tokio::time::sleep(Duration::from_secs(3)).await;
            while !sh.stop.load(Ordering::Relaxed) {
                topology_change(&addrs, &mut rng, &mut done).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
            }
            done
        })
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The furthest a node's clock was moved ahead: writes it proposed then carry
    // versions that far in the future, and the feed resolves them only once every
    // range's clock has caught up with them.
    let mut clock_ahead_ms = 0i64;
    while !cfg.faults.is_empty() && Instant::now() + Duration::from_secs(6) < end {
        let fault = cfg.faults[rng.random_range(0..cfg.faults.len())];
        let u = inject(&mut cl, fault, &mut rng).await;
        if let Undo::ClockBack(_, ms) = u {
            clock_ahead_ms = clock_ahead_ms.max(ms);
        }
        *report.faults.entry(format!("{fault:?}")).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(2000..5000))).await;
        undo(&mut cl, u);
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3500))).await;
    }
    if let Some(left) = end.checked_duration_since(Instant::now()) {
        tokio::time::sleep(left).await;
    }
    sh.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if let Some(t) = topology {
        report.topology = t.await.unwrap_or_default();
    }

    // Heal everything, then read the final state through the recorder too.
    cl.lab.as_ref().expect("lab").heal();
    for i in 0..n {
        if cl.nodes[i].child.is_some() {
            cl.resume(i);
        } else {
            tokio::task::block_in_place(|| cl.restart(i));
        }
    }
    report.convergence_error = converge(&cl, Duration::from_secs(60)).await.err();
    let mut fin = super::client_at(&cl.grpc(0));
    let mut resp_fin = RespConn::new(cl.redis(0));
    let generations = (sh.start.elapsed().as_millis() / GENERATION.as_millis()) as u64;
    for g in 0..=generations {
        for k in 0..cfg.register_keys {
            let p = sh.rec.invoke(u64::MAX - k as u64, reg_key(g, k), Input::Get);
            let out = super::register::register_op(&mut fin, TABLE, &reg_key(g, k), &Input::Get, OP_TIMEOUT).await;
            sh.rec.complete(p, out);
            let key = resp_reg_key(g, k);
            let p = sh.rec.invoke(u64::MAX - 1000 - k as u64, key.clone(), Input::Get);
            let reply = resp_fin.call(&resp_register::command(&key, &Input::Get)).await;
            sh.rec.complete(p, resp_register::outcome(&Input::Get, reply).unwrap_or(Outcome::Failed));
        }
    }

    let ops = sh.rec.operations();
    for op in &ops {
        match op.outcome {
            Outcome::Ok(_) => report.ops_ok += 1,
            Outcome::Unknown => report.ops_unknown += 1,
            Outcome::Failed => report.ops_failed += 1,
        }
        if op.key.starts_with("rr/") {
            match op.outcome {
                Outcome::Ok(_) => report.resp_ops.0 += 1,
                Outcome::Unknown => report.resp_ops.1 += 1,
                Outcome::Failed => report.resp_ops.2 += 1,
            }
        }
    }
    let lin = cairn_check::check(&ops, Duration::from_secs(120));
    report.linearizable = lin.is_ok();
    report.linearizability = lin.to_string();

    // Every acknowledged unique key must be in a full scan, in order, once.
    let acked = sh.acked_unique.lock().expect("lock").clone();
    report.acked_unique = acked.len();
    let mut scan_client = cl.client(1).await;
    match super::scan_all(&mut scan_client, TABLE, 500).await {
        Ok(rows) => {
            let keys: Vec<String> = rows.into_iter().map(|(k, _)| k).collect();
            if keys.windows(2).any(|w| w[0] >= w[1]) {
                report.scan_problems.push("scan returned keys out of order or twice".into());
            }
            let present: BTreeSet<String> = keys.into_iter().collect();
            report.lost = cairn_check::lost_writes(acked, &present);
        }
        Err(e) => report.scan_problems.push(format!("final scan failed: {e}")),
    }

    let (acknowledged, attempted) = *sh.counter.lock().expect("lock");
    let observed = match super::get(&mut scan_client, TABLE, "c").await {
        Ok(v) => v.and_then(|s| s.parse().ok()).unwrap_or(0),
        Err(e) => {
            report.counter_error = Some(format!("final counter read failed: {e}"));
            -1
        }
    };
    report.counter_figures = (acknowledged, attempted, observed);
    if observed >= 0 {
        report.counter_error = CounterCheck { acknowledged, attempted, observed }.verdict().err();
    }
    report.duplicates = sh.duplicates.lock().expect("lock").clone();

    // The Redis clients' writes, read back through the native API (the same keyspace).
    let resp_acked = sh.resp_acked_unique.lock().expect("lock").clone();
    report.resp_acked_unique = resp_acked.len();
    match super::scan_all(&mut scan_client, "redis", 500).await {
        Ok(rows) => {
            let present: BTreeSet<String> = rows.into_iter().map(|(k, _)| k).collect();
            report.resp_lost = cairn_check::lost_writes(resp_acked, &present);
        }
        Err(e) => report.scan_problems.push(format!("final scan of the Redis keyspace failed: {e}")),
    }
    let (acknowledged, attempted) = *sh.resp_counter.lock().expect("lock");
    match super::get(&mut scan_client, "redis", "rc").await {
        Ok(v) => {
            let observed = v.and_then(|s| s.parse().ok()).unwrap_or(0);
            report.resp_counter_figures = (acknowledged, attempted, observed);
            report.resp_counter_error = CounterCheck { acknowledged, attempted, observed }.verdict().err();
        }
        Err(e) => report.resp_counter_error = Some(format!("final read of the INCR counter failed: {e}")),
    }
    report.resp_problems = sh.resp_problems.lock().expect("lock").clone();
    if let Ok(consumer) = feed.await {
        let clock_ahead = Duration::from_millis(clock_ahead_ms.max(0) as u64);
        check_feed(&sh, consumer, &feed_addrs, clock_ahead, &mut report).await;
    }
    if !report.ok() {
        for i in 0..n {
            eprintln!("--- node {} log tail ---\n{}", i + 1, cl.log(i));
        }
    }
    report
}
