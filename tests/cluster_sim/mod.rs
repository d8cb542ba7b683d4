//! Whole-node deterministic simulation: real Cairn nodes (gRPC front end,
//! gateway, meta range, controller, periodic tasks, gRPC Raft transport and
//! the store loop) run as turmoil hosts in one thread, on turmoil's simulated
//! TCP and clock, each over a simulated disk that loses unsynced writes when
//! its host crashes. Clients use the public gRPC API. One seed fixes the
//! network's latencies, the fault schedule and every client's choices.
//!
//! Where `cairn::sim` drives the store loops alone (and so can check Raft's
//! internals after every step), this drives everything a request touches, and
//! checks what clients can see: linearizable histories, no acknowledged write
//! lost, counter bounds, no retried request applied twice, bounded-staleness
//! reads within their bounds, a change feed that keeps its promises across
//! resumes (`cairn_check::feed_violations`), and routing that converges once
//! the faults heal.
//! An elastic run (`ClusterSimConfig::elastic`) also has a node join, one die for
//! good and one decommissioned, and checks that the controller put every range
//! back on three live nodes.

pub mod net;
#[path = "../common/register.rs"]
pub mod register;
pub mod resp;
#[path = "../common/resp_register.rs"]
pub mod resp_register;
pub mod workload;

use cairn::server::node::{serve, NodeIo, StoreDriver};
use cairn::server::ServerConfig;
use cairn::storage::sim_disk::SimDisk;
use cairn::storage::Engine;
use cairn_check::{
    BoundedRead, FeedRecord, FeedSession, FeedVersion, FeedWrite, Outcome, SequentialWrite, WriteOutcome,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// Once the faults heal, every node must route to every range within this long:
/// a few election timeouts and connection keepalives (worst seen in soaks: 11.7 s,
/// with slow disks).
const CONVERGENCE_BOUND_MS: u64 = 15_000;

/// Where the simulated clocks start: a fixed instant, so versions replay exactly.
const EPOCH_SECS: u64 = 1_700_000_000;

#[derive(Clone, Debug)]
pub struct ClusterSimConfig {
    pub seed: u64,
    /// Nodes started at the beginning (a joining node comes on top).
    pub nodes: u64,
    /// How long the workload and the faults run, in simulated milliseconds.
    pub fault_ms: u64,
    /// Nodes joining, dying and leaving during the run, if any.
    pub elastic: Option<ElasticPlan>,
    /// Whether a change-feed consumer follows the table (and the feed is checked).
    pub feed: bool,
}

impl ClusterSimConfig {
    pub fn for_seed(seed: u64) -> Self {
        // One seed in four runs four nodes: a replica the operator removes is then
        // replaced on whichever node the controller picks, a real move.
        let nodes = if seed % 4 == 3 { 4 } else { 3 };
        ClusterSimConfig { seed, nodes, fault_ms: 20_000, elastic: None, feed: true }
    }

    /// Four nodes, then a fifth joins, one dies for good and one is decommissioned,
    /// all under the usual faults, leaving exactly three nodes to hold every range.
    pub fn elastic(seed: u64) -> Self {
        let nodes = 4;
        ClusterSimConfig {
            seed,
            nodes,
            fault_ms: 24_000,
            elastic: Some(ElasticPlan::for_seed(seed, nodes)),
            feed: true,
        }
    }

    /// Every host the run ever starts.
    pub fn hosts(&self) -> u64 {
        self.nodes + u64::from(self.elastic.is_some())
    }

    /// The hosts the clients send requests to: every initial one but the one that dies.
    pub fn serving(&self) -> Vec<u64> {
        (1..=self.nodes).filter(|n| self.elastic.is_none_or(|e| e.dead != *n)).collect()
    }
}

/// When a node joins, which node dies for good (silent past `dead_after`, so the
/// controller replaces its replicas; restarted only once it has, and must then
/// drop what it held) and which one the operator decommissions. Times are in
/// milliseconds after the faults begin.
#[derive(Clone, Copy, Debug)]
pub struct ElasticPlan {
    pub joiner: u64,
    pub join_at_ms: u64,
    pub dead: u64,
    pub death_at_ms: u64,
    pub decommissioned: u64,
    pub decommission_at_ms: u64,
}

impl ElasticPlan {
    fn for_seed(seed: u64, nodes: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xE1A5);
        ElasticPlan {
            joiner: nodes + 1,
            join_at_ms: rng.random_range(1_000..6_000),
            dead: nodes,
            death_at_ms: rng.random_range(1_000..6_000),
            decommissioned: nodes - 1,
            decommission_at_ms: rng.random_range(4_000..10_000),
        }
    }
}

/// A node declared dead this long after it falls silent (the least the server accepts).
const SIM_DEAD_AFTER_SECS: u64 = 10;

/// Where the run is; the client host and the step loop both move it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Faults {
        started_ms: u64,
    },
    /// The faults are over and every node is up and reachable again.
    Healed,
    Done,
}

/// What the clients saw, shared (in the one simulation thread) with the step loop.
pub struct Shared {
    pub phase: Phase,
    pub history: Vec<cairn_check::Operation>,
    pub acked_unique: Vec<String>,
    /// (acknowledged, attempted, observed at the end)
    pub counter: (i64, i64, i64),
    /// The Redis clients' INCR counter: (acknowledged, attempted, observed at the end).
    pub resp_counter: (i64, i64, i64),
    pub duplicates: Vec<String>,
    pub lost: Vec<String>,
    pub operations: BTreeMap<&'static str, u64>,
    pub convergence: Option<String>,
    pub converged_at_ms: u64,
    pub healed_at_ms: u64,
    pub problems: Vec<String>,
    /// The key group the batch client writes now (the operator splits inside it).
    pub batch_group: u64,
    /// Every node's disk, for the final placement check.
    pub disks: Vec<Arc<SimDisk>>,
    /// What the client host is doing, for a run that never finishes.
    pub progress: String,
    /// Each follower-read key's writes, in order (one writer, increasing values).
    pub stale_writes: BTreeMap<String, Vec<SequentialWrite>>,
    /// Bounded-staleness reads that were answered.
    pub stale_reads: Vec<BoundedRead>,
    /// Bounded-staleness reads refused (allowed: a replica that cannot prove its bound fails).
    pub stale_refusals: u64,
    /// The keys the follower-read writer has written, newest last.
    pub stale_keys: Vec<String>,
    /// The clients ask for the dead node to be restarted (once its replicas are replaced).
    pub revive_requested: bool,
    pub revived_at_ms: Option<u64>,
    /// What the elastic run's checks measured, for the report.
    pub elastic_summary: String,
    /// The unique writers' puts, each with its outcome (and the version its
    /// `PutResponse` carried), for the change-feed check.
    pub feed_writes: Vec<FeedWrite>,
    /// The feed consumer's sessions, in the order they ran.
    pub feed_sessions: Vec<FeedSession>,
    /// Why the consumer's sessions ended ("stalled", "failed", "rotated"), counted.
    pub feed_restarts: BTreeMap<&'static str, u64>,
    /// Set by the final checks once the consumer has resolved past every
    /// acknowledged unique write (or given up waiting): it stops.
    pub feed_stop: bool,
}

/// What a passing run did, and a digest of everything the clients saw.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub operations: BTreeMap<&'static str, u64>,
    pub ops_ok: usize,
    pub ops_unknown: usize,
    pub ops_failed: usize,
    pub acked_unique: usize,
    pub counter: (i64, i64, i64),
    pub resp_counter: (i64, i64, i64),
    /// Register operations of the Redis clients that completed (part of `ops_ok`).
    pub resp_ops_ok: usize,
    pub linearizability: String,
    pub sim_secs: f64,
    /// Simulated seconds from healing until every node routed to every range.
    pub converged_after_secs: f64,
    /// Bounded-staleness reads answered (each checked against its bound) and refused.
    pub stale_reads: (usize, u64),
    pub elastic_summary: String,
    /// The change feed, if followed: acknowledged unique writes (with versions),
    /// events of their keys, events in all, consumer sessions.
    pub feed: Option<(usize, usize, usize, usize)>,
    pub feed_restarts: BTreeMap<&'static str, u64>,
    pub fingerprint: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {}: passed in {:.1} simulated s", self.seed, self.sim_secs)?;
        writeln!(f, "  faults: {:?}", self.faults)?;
        writeln!(f, "  operator: {:?}", self.operations)?;
        writeln!(
            f,
            "  register ops: {} ok, {} unknown, {} failed; {}",
            self.ops_ok, self.ops_unknown, self.ops_failed, self.linearizability
        )?;
        writeln!(f, "  unique writes acknowledged and read back: {}", self.acked_unique)?;
        let (a, t, o) = self.resp_counter;
        writeln!(
            f,
            "  Redis clients: {} register ops completed; INCR {a} acknowledged <= {o} read <= {t} attempted",
            self.resp_ops_ok
        )?;
        writeln!(f, "  routing converged {:.1} s after healing", self.converged_after_secs)?;
        writeln!(
            f,
            "  bounded-staleness reads: {} answered within their bounds, {} refused",
            self.stale_reads.0, self.stale_reads.1
        )?;
        if !self.elastic_summary.is_empty() {
            writeln!(f, "  elasticity: {}", self.elastic_summary)?;
        }
        if let Some((acked, unique_events, events, sessions)) = self.feed {
            writeln!(
                f,
                "  change feed: {acked} acknowledged unique writes; {unique_events} events of their keys \
                 ({events} in all) in {sessions} consumer sessions, ended {:?}",
                self.feed_restarts
            )?;
        }
        let (acked, attempted, observed) = self.counter;
        write!(
            f,
            "  counter: {acked} acknowledged <= {observed} read <= {attempted} attempted; fingerprint {:016x}",
            self.fingerprint
        )
    }
}

fn sim_wall_ns() -> u64 {
    turmoil::since_epoch().map_or(EPOCH_SECS * 1_000_000_000, |d| d.as_nanos() as u64)
}

fn node_config(node: u64, sim: &ClusterSimConfig) -> ServerConfig {
    let seed = sim.seed;
    let join = match node {
        1 => vec![],
        // A node joining mid-run, when any one node may be down, knows them all.
        n if n > sim.nodes => (1..=sim.nodes).map(net::node_addr).collect(),
        _ => vec![net::node_addr(1)],
    };
    let mut cfg = ServerConfig {
        listen: format!("0.0.0.0:{}", net::GRPC_PORT),
        advertise: Some(net::node_addr(node)),
        join,
        dead_after_secs: if sim.elastic.is_some() {
            SIM_DEAD_AFTER_SECS
        } else {
            ServerConfig::default().dead_after_secs
        },
        // Small, so that the workload's few hundred KiB split ranges on their own too.
        split_threshold_bytes: 48 << 10,
        split_check_interval_ms: 2_000,
        ..ServerConfig::default()
    };
    cfg.raft.election_seed = Some(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ node);
    // The Redis keyspace in two ranges: enough for a RESP client to cross ranges, few
    // enough to keep a seed quick.
    cfg.redis.hash_ranges = 2;
    cfg
}

/// A node's software: what turmoil runs when the host starts and after each restart.
/// Its HLC reads simulated wall time shifted by the node's clock offset (ns), which
/// starts skewed and jumps when the nemesis says so.
async fn node_software(
    node: u64,
    disk: Arc<SimDisk>,
    offset_ns: Arc<AtomicI64>,
    sim: ClusterSimConfig,
) -> turmoil::Result {
    let engine = Arc::new(Engine::simulated(disk));
    let physical_clock: cairn::hlc::PhysicalClock =
        Arc::new(move || sim_wall_ns().saturating_add_signed(offset_ns.load(Ordering::Relaxed)));
    let io = NodeIo {
        redis: Some((net::redis_incoming(node).await?, format!("{}:{}", net::host_name(node), net::REDIS_PORT))),
        engine,
        grpc_incoming: net::incoming().await?,
        grpc_addr: net::node_addr(node),
        http: None,
        http_addr: String::new(),
        store_driver: StoreDriver::Task,
        physical_clock: Some(physical_clock),
    };
    serve(node_config(node, &sim), io, |_| Ok(()), std::future::pending())
        .await
        .map_err(|e| format!("node {node}: {e:#}").into())
}

/// One fault, held for a while and then undone.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Messages between a node and the others are held (TCP keeps retrying), then delivered.
    Stall(u64),
    /// A node is cut off: its segments are dropped, so open connections stay broken
    /// until keepalives notice.
    Isolate(u64),
    /// One direction only: `from` cannot reach `to`.
    OneWay { from: u64, to: u64 },
    /// A power cut: the host stops at once and its disk keeps what was synced plus
    /// some of what was not; it restarts when the fault ends.
    Crash(u64),
    /// Every node loses power at once.
    CrashAll,
    /// A node's clock steps by this many milliseconds (forwards or back), as NTP
    /// stepping it would; it steps back when the fault ends.
    ClockJump { node: u64, ms: i64 },
    /// Each sync of a node's disk takes this long; its store loop waits it out.
    SlowDisk { node: u64, latency_ms: u64 },
}

impl Fault {
    fn name(&self) -> &'static str {
        match self {
            Fault::Stall(_) => "stall",
            Fault::Isolate(_) => "isolate",
            Fault::OneWay { .. } => "one-way partition",
            Fault::Crash(_) => "crash",
            Fault::CrashAll => "crash all",
            Fault::ClockJump { .. } => "clock jump",
            Fault::SlowDisk { .. } => "slow disk",
        }
    }

    /// Whether the fault touches `node` (a power cut of all touches every node).
    fn involves(&self, node: u64) -> bool {
        match *self {
            Fault::Stall(n) | Fault::Isolate(n) | Fault::Crash(n) => n == node,
            Fault::OneWay { from, to } => from == node || to == node,
            Fault::CrashAll => true,
            Fault::ClockJump { node: n, .. } | Fault::SlowDisk { node: n, .. } => n == node,
        }
    }
}

/// The fault schedule: (start ms after the faults begin, fault, duration ms). Pure.
fn schedule(seed: u64, nodes: u64, fault_ms: u64) -> Vec<(u64, Fault, u64)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17);
    let mut at = rng.random_range(500..1_500);
    let mut out = Vec::new();
    while at < fault_ms {
        let node = rng.random_range(1..=nodes);
        let fault = match rng.random_range(0..24) {
            0..6 => Fault::Stall(node),
            6..11 => Fault::Isolate(node),
            11..14 => {
                let to = (node % nodes) + 1;
                Fault::OneWay { from: node, to }
            }
            14..19 => Fault::Crash(node),
            19 => Fault::CrashAll,
            20 | 21 => Fault::ClockJump { node, ms: rng.random_range(-3_000..3_000) },
            _ => Fault::SlowDisk { node, latency_ms: rng.random_range(5..60) },
        };
        let duration = rng.random_range(300..4_000);
        out.push((at, fault, duration));
        // One fault at a time, with some quiet in between for progress.
        at += duration + rng.random_range(200..2_000);
    }
    out
}

fn others(node: u64, nodes: u64) -> Vec<String> {
    (1..=nodes).filter(|n| *n != node).map(net::host_name).collect()
}

struct Nemesis {
    /// Hosts started so far (a joining node raises it).
    nodes: u64,
    /// A node that died for good: no fault starts or restarts it.
    down: Option<u64>,
    disks: Vec<Arc<SimDisk>>,
    clock_offsets_ns: Vec<Arc<AtomicI64>>,
    rng: StdRng,
    count: BTreeMap<&'static str, u64>,
}

impl Nemesis {
    /// Starts `fault`, unless it would touch the dead node (it is then skipped).
    fn start(&mut self, sim: &mut turmoil::Sim, fault: Fault) -> bool {
        if self.down.is_some_and(|d| fault.involves(d) && !matches!(fault, Fault::CrashAll)) {
            return false;
        }
        *self.count.entry(fault.name()).or_default() += 1;
        match fault {
            Fault::Stall(n) => {
                for o in others(n, self.nodes) {
                    sim.hold(net::host_name(n), o);
                }
            }
            Fault::Isolate(n) => {
                for o in others(n, self.nodes) {
                    sim.partition(net::host_name(n), o);
                }
            }
            Fault::OneWay { from, to } => sim.partition_oneway(net::host_name(from), net::host_name(to)),
            Fault::Crash(n) => self.crash(sim, n),
            Fault::CrashAll => self.up().into_iter().for_each(|n| self.crash(sim, n)),
            Fault::ClockJump { node, ms } => self.shift_clock(node, ms),
            Fault::SlowDisk { node, latency_ms } => self.disks[node as usize - 1].set_sync_latency_ms(latency_ms),
        }
        true
    }

    fn up(&self) -> Vec<u64> {
        (1..=self.nodes).filter(|n| Some(*n) != self.down).collect()
    }

    fn shift_clock(&self, node: u64, ms: i64) {
        self.clock_offsets_ns[node as usize - 1].fetch_add(ms * 1_000_000, Ordering::Relaxed);
    }

    fn crash(&mut self, sim: &mut turmoil::Sim, node: u64) {
        sim.crash(net::host_name(node));
        let keep = self.rng.random_range(0..3);
        self.disks[node as usize - 1].crash(keep);
    }

    fn end(&mut self, sim: &mut turmoil::Sim, fault: Fault) {
        match fault {
            Fault::Stall(n) => {
                for o in others(n, self.nodes) {
                    sim.release(net::host_name(n), o);
                }
            }
            Fault::Isolate(n) => {
                for o in others(n, self.nodes) {
                    sim.repair(net::host_name(n), o);
                }
            }
            Fault::OneWay { from, to } => sim.repair_oneway(net::host_name(from), net::host_name(to)),
            Fault::Crash(n) => sim.bounce(net::host_name(n)),
            Fault::CrashAll => self.up().into_iter().for_each(|n| sim.bounce(net::host_name(n))),
            Fault::ClockJump { node, ms } => self.shift_clock(node, -ms),
            Fault::SlowDisk { node, .. } => self.disks[node as usize - 1].set_sync_latency_ms(0),
        }
    }
}

/// Runs one seed. `Err` carries what broke and the command that replays it.
pub fn run(cfg: &ClusterSimConfig) -> Result<Report, String> {
    cairn::hlc::set_wall_clock(sim_wall_ns);
    cairn::raftstore::transport::set_connector(net::connect);
    let replay = match cfg.elastic {
        Some(_) => format!(
            "CAIRN_CLUSTER_SIM_ELASTIC_SEED={} cargo test --test cluster_simulation simulated_nodes_join_die_and_leave",
            cfg.seed
        ),
        None => format!("CAIRN_CLUSTER_SIM_SEED={} cargo test --test cluster_simulation", cfg.seed),
    };
    let fail = |what: String| format!("seed {}: {what}\n  replay: {replay}", cfg.seed);

    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(4))
        .tcp_capacity(4096)
        .build();
    let disks: Vec<Arc<SimDisk>> = (0..cfg.hosts()).map(|_| Arc::new(SimDisk::new())).collect();
    // Every node's clock starts up to 200 ms off, so any two are within the 500 ms
    // maximum offset the cluster is run with (as its operators must keep them);
    // jumps, which take a node beyond it for a while, come on top.
    let mut skew = StdRng::seed_from_u64(cfg.seed ^ 0x5CE3);
    let clock_offsets_ns: Vec<Arc<AtomicI64>> =
        (0..cfg.hosts()).map(|_| Arc::new(AtomicI64::new(skew.random_range(-200..=200) * 1_000_000))).collect();
    let start_host = |sim: &mut turmoil::Sim, node: u64| {
        let disk = disks[node as usize - 1].clone();
        let offset = clock_offsets_ns[node as usize - 1].clone();
        let cfg = cfg.clone();
        sim.host(net::host_name(node), move || node_software(node, disk.clone(), offset.clone(), cfg.clone()));
    };
    for node in 1..=cfg.nodes {
        start_host(&mut sim, node);
    }
    let shared = Rc::new(RefCell::new(Shared {
        phase: Phase::Setup,
        history: Vec::new(),
        acked_unique: Vec::new(),
        counter: (0, 0, 0),
        resp_counter: (0, 0, 0),
        duplicates: Vec::new(),
        lost: Vec::new(),
        operations: BTreeMap::new(),
        convergence: None,
        converged_at_ms: 0,
        healed_at_ms: 0,
        problems: Vec::new(),
        batch_group: 0,
        disks: disks.clone(),
        progress: String::new(),
        stale_writes: BTreeMap::new(),
        stale_reads: Vec::new(),
        stale_refusals: 0,
        stale_keys: Vec::new(),
        revive_requested: false,
        revived_at_ms: None,
        elastic_summary: String::new(),
        feed_writes: Vec::new(),
        feed_sessions: Vec::new(),
        feed_restarts: BTreeMap::new(),
        feed_stop: false,
    }));
    sim.client("clients", workload::run(shared.clone(), cfg.clone()));

    let plan = schedule(cfg.seed, cfg.nodes, cfg.fault_ms);
    let mut nemesis = Nemesis {
        nodes: cfg.nodes,
        down: None,
        disks: disks.clone(),
        clock_offsets_ns: clock_offsets_ns.clone(),
        rng: StdRng::seed_from_u64(cfg.seed ^ 0xC4A5),
        count: BTreeMap::new(),
    };
    let mut next = 0;
    let mut active: Option<(u64, Fault)> = None;
    let (mut joined, mut died) = (false, false);
    loop {
        let finished = sim.step().map_err(|e| {
            let sh = shared.borrow();
            fail(format!("the simulation stopped: {e} (clients in phase {:?}, {})", sh.phase, sh.progress))
        })?;
        if finished {
            break;
        }
        let now_ms = sim.elapsed().as_millis() as u64;
        let phase = shared.borrow().phase;
        // Only the dead node is ever down for good, until the clients ask for it back.
        if let (Some(e), Some(_)) = (cfg.elastic, nemesis.down) {
            let mut sh = shared.borrow_mut();
            if sh.revive_requested {
                sim.bounce(net::host_name(e.dead));
                nemesis.down = None;
                sh.revived_at_ms = Some(now_ms);
            }
        }
        let Phase::Faults { started_ms } = phase else { continue };
        let t = now_ms - started_ms;
        if let Some((until, fault)) = active {
            if t >= until {
                nemesis.end(&mut sim, fault);
                active = None;
            }
        }
        // Joins and the death happen between faults, so no fault spans a change of hosts.
        if let Some(e) = cfg.elastic.filter(|_| active.is_none()) {
            if !joined && t >= e.join_at_ms {
                start_host(&mut sim, e.joiner);
                nemesis.nodes = e.joiner;
                joined = true;
            }
            if !died && t >= e.death_at_ms {
                nemesis.crash(&mut sim, e.dead);
                nemesis.down = Some(e.dead);
                *nemesis.count.entry("death").or_default() += 1;
                died = true;
            }
        }
        if active.is_none() && next < plan.len() && t >= plan[next].0 && t < cfg.fault_ms {
            let (_, fault, duration) = plan[next];
            if nemesis.start(&mut sim, fault) {
                active = Some((t + duration, fault));
            }
            next += 1;
        }
        if t >= cfg.fault_ms && active.is_none() {
            let mut sh = shared.borrow_mut();
            sh.phase = Phase::Healed;
            sh.healed_at_ms = now_ms;
        }
    }
    let sim_secs = sim.elapsed().as_secs_f64();
    let sh = shared.borrow();
    check(cfg, &sh, nemesis.count, sim_secs).map_err(fail)
}

fn check(
    cfg: &ClusterSimConfig,
    sh: &Shared,
    faults: BTreeMap<&'static str, u64>,
    sim_secs: f64,
) -> Result<Report, String> {
    let mut problems = sh.problems.clone();
    if sh.phase != Phase::Done {
        problems.push(format!("the clients stopped in phase {:?}", sh.phase));
    }
    if let Some(c) = &sh.convergence {
        problems.push(c.clone());
    } else if sh.converged_at_ms.saturating_sub(sh.healed_at_ms) > CONVERGENCE_BOUND_MS {
        problems.push(format!(
            "routing took {} ms to converge after healing (bound: {CONVERGENCE_BOUND_MS} ms)",
            sh.converged_at_ms - sh.healed_at_ms
        ));
    }
    if !sh.lost.is_empty() {
        problems.push(format!(
            "{} acknowledged unique writes lost, first {:?}",
            sh.lost.len(),
            &sh.lost[..sh.lost.len().min(5)]
        ));
    }
    if !sh.duplicates.is_empty() {
        problems.push(format!("retried requests applied twice: {:?}", sh.duplicates));
    }
    let (acknowledged, attempted, observed) = sh.counter;
    if let Err(e) = (cairn_check::CounterCheck { acknowledged, attempted, observed }).verdict() {
        problems.push(format!("counter: {e}"));
    }
    let (acknowledged, attempted, observed) = sh.resp_counter;
    if let Err(e) = (cairn_check::CounterCheck { acknowledged, attempted, observed }).verdict() {
        problems.push(format!("the Redis clients' INCR counter: {e}"));
    }
    let lin = cairn_check::check(&sh.history, Duration::from_secs(60));
    if !lin.is_ok() {
        problems.push(lin.to_string());
    }
    let stale = cairn_check::stale_read_violations(&sh.stale_writes, &sh.stale_reads);
    if !stale.is_empty() {
        problems.push(format!(
            "{} bounded-staleness reads staler than their bound, first: {}",
            stale.len(),
            stale.iter().take(3).map(|v| v.to_string()).collect::<Vec<_>>().join("; ")
        ));
    }
    let feed = cfg.feed.then(|| check_feed(sh)).transpose();
    if let Err(e) = &feed {
        problems.push(e.clone());
    }
    if !problems.is_empty() {
        return Err(problems.join("\n  "));
    }
    let count = |f: fn(&Outcome) -> bool| sh.history.iter().filter(|o| f(&o.outcome)).count();
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    for op in &sh.history {
        op.hash(&mut digest);
    }
    sh.acked_unique.hash(&mut digest);
    sh.counter.hash(&mut digest);
    sh.resp_counter.hash(&mut digest);
    sh.stale_reads.hash(&mut digest);
    sh.stale_writes.hash(&mut digest);
    hash_feed(sh, &mut digest);
    Ok(Report {
        seed: cfg.seed,
        faults,
        operations: sh.operations.clone(),
        ops_ok: count(|o| matches!(o, Outcome::Ok(_))),
        ops_unknown: count(|o| matches!(o, Outcome::Unknown)),
        ops_failed: count(|o| matches!(o, Outcome::Failed)),
        acked_unique: sh.acked_unique.len(),
        counter: sh.counter,
        resp_counter: sh.resp_counter,
        resp_ops_ok: sh
            .history
            .iter()
            .filter(|o| o.key.starts_with("rr/") && matches!(o.outcome, Outcome::Ok(_)))
            .count(),
        linearizability: lin.to_string(),
        sim_secs,
        converged_after_secs: sh.converged_at_ms.saturating_sub(sh.healed_at_ms) as f64 / 1000.0,
        stale_reads: (sh.stale_reads.len(), sh.stale_refusals),
        elastic_summary: sh.elastic_summary.clone(),
        feed: feed.ok().flatten(),
        feed_restarts: sh.feed_restarts.clone(),
        fingerprint: digest.finish(),
    })
}

/// The change feed of the unique writers' keys, checked against their writes
/// (`cairn_check::feed_violations`): the feed carries every client's keys of
/// the table, but only the unique writers record their writes' versions, so the
/// other keys' events are left out (every resolved checkpoint is kept). The final
/// checks let the consumer run until it resolved past the last acknowledged
/// write, so none may be left above its last resolved version. Returns the
/// figures: acknowledged writes, events of their keys, events in all, sessions.
fn check_feed(sh: &Shared) -> Result<(usize, usize, usize, usize), String> {
    let is_event = |r: &&FeedRecord| matches!(r, FeedRecord::Event { .. });
    let unique = |r: &FeedRecord| !matches!(r, FeedRecord::Event { key, .. } if !key.starts_with(b"u/"));
    let sessions: Vec<FeedSession> = sh
        .feed_sessions
        .iter()
        .map(|s| FeedSession { from: s.from, records: s.records.iter().filter(|r| unique(r)).cloned().collect() })
        .collect();
    let writes = &sh.feed_writes;
    let acked = writes.iter().filter(|w| matches!(w.outcome, WriteOutcome::Acked(_))).count();
    let violations = cairn_check::feed_violations(writes, &sessions);
    // The checker spells out its first 20 and then says how many more there were.
    let more: usize = violations
        .last()
        .and_then(|v| v.problem.strip_prefix("... and "))
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    let mut problems: Vec<String> =
        violations.iter().filter(|v| !v.problem.starts_with("... and ")).map(|v| v.to_string()).collect();
    let mut total = problems.len() + more;
    let unresolved = cairn_check::unresolved_acked(writes, &sessions);
    if unresolved > 0 {
        total += 1;
        problems.push(format!(
            "{unresolved} of {acked} acknowledged unique writes were still above the feed's last resolved \
             version when the final checks stopped waiting"
        ));
    }
    if !problems.is_empty() {
        const SHOWN: usize = 3;
        return Err(format!(
            "change feed of the unique writers' keys, over {} consumer sessions: {total} broken promises, first: {}",
            sessions.len(),
            problems[..problems.len().min(SHOWN)].join("; ")
        ));
    }
    let events = |sessions: &[FeedSession]| sessions.iter().map(|s| s.records.iter().filter(is_event).count()).sum();
    Ok((acked, events(&sessions), events(&sh.feed_sessions), sessions.len()))
}

/// Adds what the feed consumer received and the unique writers' outcomes to the
/// run's digest, so that a replay must see the same feed too. Versions go in
/// without their logical part, and each session's events and checkpoints as
/// sorted sets: two requests one node stamps in the same simulated millisecond
/// may take logical 0 and 1 in either order from one run of a seed to the next
/// (tokio's `select!` picks its first branch at random, unseeded here), which no
/// other figure of a run shows.
fn hash_feed(sh: &Shared, digest: &mut impl Hasher) {
    let coarse = |(wall, _, node): FeedVersion| (wall, node);
    for w in &sh.feed_writes {
        (&w.key, &w.value).hash(digest);
        match w.outcome {
            WriteOutcome::Acked(v) => (0u8, coarse(v)).hash(digest),
            WriteOutcome::Failed => 1u8.hash(digest),
            WriteOutcome::Unknown => 2u8.hash(digest),
        }
    }
    for s in &sh.feed_sessions {
        let mut events = Vec::new();
        let mut resolved = Vec::new();
        for r in &s.records {
            match r {
                FeedRecord::Event { key, version, value } => events.push((key, coarse(*version), value)),
                FeedRecord::Resolved(v) => resolved.push(coarse(*v)),
            }
        }
        events.sort_unstable();
        resolved.sort_unstable();
        (s.from.map(coarse), events, resolved).hash(digest);
    }
}
