//! Deterministic simulation: a whole cluster's store loops (the real
//! multi-Raft driver, apply path and storage layout) in one thread, on
//! simulated time, a simulated network and simulated disks, with faults drawn
//! from one seed. The same seed replays the same run exactly, so a failure is
//! reproduced by rerunning its seed.
//!
//! - `node`: one node's disk and, while it is up, its store loop;
//! - `network`: the transport the loops send through, and the faulty wire;
//! - `workload`: clients and the history they record;
//! - `nemesis`: the seeded fault schedule;
//! - `checks`: leader-per-term, committed-entry and convergence checks.
//!
//! The world below owns time: every simulated millisecond it delivers the
//! packets due, gives each running node one turn of its loop, advances the
//! clients, and carries out the schedule's faults and topology changes.

pub mod checks;
pub mod controller_sim;
mod merging;
pub mod nemesis;
pub mod network;
pub mod node;
pub mod placement;
pub mod scripted;
pub mod workload;

use crate::raftstore::apply::Applied;
use crate::raftstore::msg::StoreMsg;
use crate::raftstore::store::{self, ReplicaView};
use crate::raftstore::RaftConfig;
use crate::storage::layout;
use cairn_proto::internal::{
    admin_request, raft_command, AdminRequest, AdminResponse, RangeDescriptor, RangeEpoch, RangeError, Replica,
    SplitCommand,
};
use checks::{CommittedLog, LeaderTerms, VoteLedger};
use nemesis::{Change, Fault, Nemesis};
use network::{Packet, Payload, Wire};
use node::SimNode;
use parking_lot::Mutex;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use workload::{Workload, WorkloadStats};

/// One simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub replication: usize,
    /// Simulated time with faults and topology changes.
    pub fault_ms: u64,
    /// Simulated time allowed afterwards for the healed cluster to converge.
    pub settle_ms: u64,
    pub register_clients: u64,
    pub unique_clients: u64,
    pub counter_clients: u64,
    /// During the fault window, power-cut a node right after it grants a vote (at
    /// most one every 2 s), losing whatever it had not synced.
    pub crash_after_vote: bool,
    /// Merge ranges too (`meta::merge`'s steps, taken straight on the stores).
    pub merges: bool,
}

impl SimConfig {
    /// The standard run for a seed: 3 or 5 nodes (the seed decides), 20 s of faults.
    pub fn for_seed(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: if seed % 3 == 2 { 5 } else { 3 },
            replication: 3,
            fault_ms: 20_000,
            settle_ms: 30_000,
            register_clients: 6,
            unique_clients: 2,
            counter_clients: 2,
            crash_after_vote: false,
            merges: false,
        }
    }
}

/// What a run did and what it checked.
#[derive(Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub nodes: usize,
    pub simulated_ms: u64,
    /// A digest of every delivery and every client outcome: equal for equal seeds.
    pub fingerprint: u64,
    pub faults: BTreeMap<&'static str, u64>,
    /// Topology changes: (accepted, refused or abandoned).
    pub changes: BTreeMap<&'static str, (u64, u64)>,
    pub ops: WorkloadStats,
    pub register_ops: usize,
    pub register_keys: usize,
    pub unique_acked: usize,
    /// Counter: acknowledged ≤ observed ≤ attempted, and re-sent ids checked.
    pub counter: (i64, i64, i64),
    pub resends_checked: u64,
    /// Replicas quarantined (log entry failed its checksum) and rebuilt.
    pub quarantined: u64,
    pub committed_entries: usize,
    pub leader_terms: usize,
    pub packets: (u64, u64, u64),
    pub ranges: usize,
    pub verdict: Option<String>,
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} · {} nodes · {:.1} s simulated · fingerprint {:016x}",
            self.seed,
            self.nodes,
            self.simulated_ms as f64 / 1e3,
            self.fingerprint
        )?;
        let faults: Vec<String> = self.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(f, "  faults: {}", faults.join(", "))?;
        let changes: Vec<String> = self.changes.iter().map(|(k, (a, b))| format!("{k} {a}/{b}")).collect();
        writeln!(f, "  topology changes (done/refused): {}; {} ranges at the end", changes.join(", "), self.ranges)?;
        writeln!(f, "  packets: {} sent, {} dropped, {} duplicated", self.packets.0, self.packets.1, self.packets.2)?;
        writeln!(
            f,
            "  client ops: {} ok, {} unknown, {} failed ({} retries); {} register ops on {} keys; {} unique writes acknowledged",
            self.ops.ok, self.ops.unknown, self.ops.failed, self.ops.retries, self.register_ops, self.register_keys, self.unique_acked
        )?;
        if self.quarantined > 0 {
            writeln!(f, "  {} replicas quarantined after a damaged log entry, and rebuilt", self.quarantined)?;
        }
        let (acked, observed, attempted) = self.counter;
        writeln!(
            f,
            "  counter: {acked} acknowledged <= {observed} observed <= {attempted} attempted; {} re-sent ids answered with their first result",
            self.resends_checked
        )?;
        writeln!(
            f,
            "  {} committed entries cross-checked, {} (range, term) leaders",
            self.committed_entries, self.leader_terms
        )?;
        write!(f, "  verdict: {}", self.verdict.as_deref().unwrap_or("not reached"))
    }
}

/// A failed run: what broke, and the report up to that point.
#[derive(Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub problem: String,
    pub report: SimReport,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "SIMULATION FAILED (seed {}): {}", self.seed, self.problem)?;
        writeln!(f, "{}", self.report)?;
        write!(f, "reproduce with: scripts/sim.sh --seed {}", self.seed)
    }
}

enum Pending {
    Split(oneshot::Receiver<Result<Applied, RangeError>>),
    Transfer(oneshot::Receiver<Result<AdminResponse, RangeError>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MoveStage {
    /// Three nodes: take a voter out first, then add it back.
    RemoveVictim(u64),
    AddLearner,
    CatchUp,
    Promote,
    /// Five nodes: the new voter is in; drop an old one.
    RemoveOld,
}

struct Move {
    range_id: u64,
    target: u64,
    stage: MoveStage,
    waiting: Option<oneshot::Receiver<Result<AdminResponse, RangeError>>>,
    deadline_ms: u64,
}

struct World {
    cfg: SimConfig,
    raft: RaftConfig,
    base: Instant,
    clock_ms: Arc<AtomicU64>,
    now_ms: u64,
    nodes: Vec<SimNode>,
    wire: Wire,
    nemesis: Nemesis,
    workload: Workload,
    leaders: LeaderTerms,
    /// Votes seen leaving each node, checked against its disk whenever it restarts.
    votes: VoteLedger,
    /// The earliest time the next crash-after-vote may strike.
    next_vote_trap_ms: u64,
    committed: Arc<Mutex<CommittedLog>>,
    fault_until: Option<u64>,
    next_fault_ms: u64,
    slow_disks: Vec<(u64, usize)>,
    next_change_ms: u64,
    pending: Vec<(&'static str, Pending)>,
    moving: Option<Move>,
    merging: Option<merging::Merging>,
    /// A damaged log entry not yet repaired: the node may still be down, or rebuilding.
    damage_outstanding: bool,
    next_range_id: u64,
    fingerprint: u64,
    report: SimReport,
}

fn fnv(h: u64, x: u64) -> u64 {
    let mut h = h;
    for b in x.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Runs one simulation to the end. `Err` if any check failed.
pub fn run(cfg: &SimConfig) -> Result<SimReport, Box<SimFailure>> {
    let mut world = World::new(cfg.clone());
    // A panic in the node code (raft-rs asserts its invariants) fails this seed, not the soak.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run_to_end())).unwrap_or_else(|p| {
        let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(format!("a node panicked: {}", what.unwrap_or_default()))
    });
    world.report.fingerprint = world.fingerprint;
    world.report.simulated_ms = world.now_ms;
    world.report.packets = (world.wire.sent, world.wire.dropped, world.wire.duplicated);
    match outcome {
        Ok(()) => {
            world.report.verdict = Some("PASS".into());
            Ok(std::mem::take(&mut world.report))
        }
        Err(problem) => {
            world.report.verdict = Some(format!("FAIL: {problem}"));
            Err(Box::new(SimFailure { seed: cfg.seed, problem, report: std::mem::take(&mut world.report) }))
        }
    }
}

impl World {
    fn new(cfg: SimConfig) -> Self {
        let stream = |k: u64| rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9).wrapping_add(k));
        let ids: Vec<u64> = (1..=cfg.nodes as u64).collect();
        let raft = RaftConfig {
            tick_ms: 10,
            election_ticks: 10,
            heartbeat_ticks: 2,
            log_gc_threshold: 64,
            election_seed: Some(cfg.seed),
            ..RaftConfig::default()
        };
        World {
            raft,
            // Only an anchor: simulated time is `base` plus the simulated milliseconds.
            base: crate::clock::os_now(),
            clock_ms: Arc::new(AtomicU64::new(0)),
            now_ms: 0,
            nodes: ids.iter().map(|id| SimNode::new(*id)).collect(),
            wire: Wire::new(stream(1)),
            nemesis: Nemesis::new(stream(2), ids),
            workload: Workload::new(stream(3), cfg.register_clients, cfg.unique_clients, cfg.counter_clients),
            leaders: LeaderTerms::default(),
            votes: VoteLedger::default(),
            next_vote_trap_ms: 1_000,
            committed: CommittedLog::shared(),
            fault_until: None,
            next_fault_ms: 1_000,
            slow_disks: Vec::new(),
            next_change_ms: 1_500,
            pending: Vec::new(),
            moving: None,
            merging: None,
            damage_outstanding: false,
            next_range_id: 100,
            fingerprint: 0xcbf2_9ce4_8422_2325,
            report: SimReport { seed: cfg.seed, nodes: cfg.nodes, ..Default::default() },
            cfg,
        }
    }

    fn run_to_end(&mut self) -> Result<(), String> {
        self.bootstrap()?;
        let fault_end = self.cfg.fault_ms;
        while self.now_ms < fault_end {
            self.step(true)?;
            self.nemesis_step();
        }
        self.heal_all()?;
        // Clients keep going for a moment on the healed cluster, then drain.
        let drain_from = self.now_ms + 2_000;
        let deadline = self.now_ms + self.cfg.settle_ms;
        let mut converged = Err(String::from("never checked"));
        while self.now_ms < deadline {
            let issuing = self.now_ms < drain_from;
            self.step(issuing)?;
            self.poll_changes();
            if !issuing && !self.workload.busy() && self.now_ms.is_multiple_of(100) {
                converged = checks::convergence(&self.nodes).and_then(|c| self.placement().map(|()| c));
                if converged.is_ok() {
                    break;
                }
            }
        }
        let converged =
            converged.map_err(|e| format!("no convergence within {} ms of healing: {e}", self.cfg.settle_ms))?;
        self.report.ranges = converged.ranges;
        self.final_checks()
    }

    fn bootstrap(&mut self) -> Result<(), String> {
        let replicas: Vec<Replica> = (1..=self.cfg.replication.min(self.cfg.nodes) as u64)
            .map(|n| Replica { node_id: n, learner: false, replica_id: n })
            .collect();
        let desc = RangeDescriptor {
            id: 1,
            start: Vec::new(),
            end: Vec::new(),
            epoch: Some(RangeEpoch { version: 1, conf_ver: 1 }),
            next_replica_id: replicas.len() as u64 + 1,
            replicas: replicas.clone(),
            ..Default::default()
        };
        for r in &replicas {
            let engine = crate::storage::Engine::simulated(self.nodes[(r.node_id - 1) as usize].disk.clone());
            store::bootstrap_ranges(&engine, std::slice::from_ref(&desc));
        }
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        Ok(())
    }

    fn start_node(&mut self, i: usize) -> Result<(), String> {
        let committed = self.committed.clone();
        let id = self.nodes[i].id;
        self.votes.check_durable(id, &crate::storage::Engine::simulated(self.nodes[i].disk.clone()))?;
        let observer = Box::new(move |range: u64, e: &raft::eraftpb::Entry| committed.lock().record(id, range, e));
        self.nodes[i]
            .start(&self.raft, self.base, &self.clock_ms, self.now_ms, observer)
            .map_err(|e| format!("node {id} failed to start: {e}"))?;
        if let Some(r) = &self.nodes[i].running {
            self.report.quarantined += r.store.quarantined_at_open() as u64;
        }
        Ok(())
    }

    fn at(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    /// One simulated millisecond.
    fn step(&mut self, issuing: bool) -> Result<(), String> {
        self.now_ms += 1;
        self.clock_ms.store(self.now_ms, Ordering::Relaxed);
        for i in 0..self.nodes.len() {
            if self.nodes[i].restart_at_ms.is_some_and(|t| t <= self.now_ms) {
                self.start_node(i)?;
            }
        }
        let arrivals = self.wire.arrivals(self.now_ms);
        for p in arrivals.delivered {
            self.deliver(p);
        }
        for p in arrivals.lost_snapshots {
            self.snapshot_failed(&p);
        }
        let now = self.at();
        let mut lost = Vec::new();
        let mut voted = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.stalled_until_ms > self.now_ms {
                continue;
            }
            let Some(running) = n.running.as_mut() else { continue };
            running.store.turn(now);
            self.leaders.observe(n.id, &running.store.leader_terms())?;
            for p in running.transport.take_outbox() {
                if let Payload::Raft(env) = &p.payload {
                    if env.control == 0 {
                        if let Ok(m) = <raft::eraftpb::Message as prost011::Message>::decode(env.message.as_slice()) {
                            if self.votes.observe(n.id, env.range_id, &m) {
                                voted.push(i);
                            }
                        }
                    }
                }
                self.wire.send(self.now_ms, p, &mut lost);
            }
            n.stalled_until_ms = self.now_ms + n.disk.take_owed_sync_ms();
        }
        if self.cfg.crash_after_vote && self.now_ms >= self.next_vote_trap_ms && self.now_ms < self.cfg.fault_ms {
            if let Some(&i) = voted.first() {
                // The answer has left: the vote must already be on disk.
                let down_ms = 100 + self.nemesis.pick(500) as u64;
                self.nodes[i].crash(0, self.now_ms + down_ms);
                *self.report.faults.entry("crash-after-vote").or_default() += 1;
                self.next_vote_trap_ms = self.now_ms + 2_000;
            }
        }
        for p in lost {
            if matches!(p.payload, Payload::Snapshot(_)) {
                self.snapshot_failed(&p);
            }
        }
        if let Some(v) = self.committed.lock().violations.first() {
            return Err(v.clone());
        }
        self.workload.step(self.now_ms, &self.nodes, issuing);
        Ok(())
    }

    fn deliver(&mut self, p: Packet) {
        let (from, to, range, kind) = p.describe();
        self.fingerprint = fnv(fnv(fnv(fnv(fnv(self.fingerprint, self.now_ms), from), to), range), kind as u64);
        let now = self.at();
        let Some(dest) = self.nodes.iter().find(|n| n.id == p.to).and_then(|n| n.running.as_ref()) else {
            if matches!(p.payload, Payload::Snapshot(_)) {
                self.snapshot_failed(&p);
            }
            return;
        };
        dest.transport.mark_seen(p.from, now);
        // A full queue drops the packet, as the real transport does; Raft retransmits.
        match p.payload {
            Payload::Raft(env) => {
                let _ = dest.handle.send(StoreMsg::Raft { from_node: p.from, envelopes: vec![env] });
            }
            Payload::Snapshot(env) => {
                let range_id = env.range_id;
                let ok = dest.handle.send(StoreMsg::Snapshot { from_node: p.from, envelope: env }).is_ok();
                self.report_snapshot(p.from, range_id, p.to, ok);
            }
            Payload::Keepalive => {}
        }
    }

    fn snapshot_failed(&self, p: &Packet) {
        if let Payload::Snapshot(env) = &p.payload {
            self.report_snapshot(p.from, env.range_id, p.to, false);
        }
    }

    fn report_snapshot(&self, sender: u64, range_id: u64, to: u64, ok: bool) {
        if let Some(r) = self.nodes.iter().find(|n| n.id == sender).and_then(|n| n.running.as_ref()) {
            let _ = r.handle.send(StoreMsg::SnapshotStatus { range_id, to, ok });
        }
    }

    // ------------------------------------------------------------ faults

    fn nemesis_step(&mut self) {
        // Process faults end by themselves (restart time, pause and slow-disk deadlines);
        // wire faults end here.
        if self.fault_until.is_some_and(|t| t <= self.now_ms) {
            self.wire.faults = Default::default();
            self.fault_until = None;
            self.next_fault_ms = self.now_ms + self.nemesis.gap();
        }
        let now = self.now_ms;
        self.slow_disks.retain(|(until, i)| {
            if *until <= now {
                self.nodes[*i].disk.set_sync_latency_ms(0);
            }
            *until > now
        });
        if self.damage_outstanding && self.nodes.iter().all(|n| n.is_up()) && self.rebuilding_ranges().is_empty() {
            self.damage_outstanding = false;
        }
        if self.fault_until.is_none() && self.now_ms >= self.next_fault_ms {
            let (fault, duration) = self.nemesis.next_fault();
            self.inject(fault, duration);
            self.fault_until = Some(self.now_ms + duration);
        }
        if self.now_ms >= self.next_change_ms {
            let (change, gap) = self.nemesis.next_change(self.cfg.merges);
            self.next_change_ms = self.now_ms + gap;
            self.change(change);
        }
        self.poll_changes();
    }

    fn index_of(&self, node: u64) -> usize {
        self.nodes.iter().position(|n| n.id == node).unwrap_or(0)
    }

    fn inject(&mut self, fault: Fault, duration: u64) {
        *self.report.faults.entry(fault.name()).or_default() += 1;
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        match fault {
            Fault::Partition { side } => self.wire.faults.partition(&side, &ids),
            Fault::OneWay { from, to } => {
                self.wire.faults.blocked.insert((from, to));
            }
            Fault::IsolateLeader => {
                let mut led: BTreeMap<u64, usize> = BTreeMap::new();
                for n in &self.nodes {
                    if let Some(r) = &n.running {
                        *led.entry(n.id).or_default() += r.store.leader_terms().len();
                    }
                }
                if let Some((&node, _)) = led.iter().max_by_key(|(id, c)| (**c, u64::MAX - **id)) {
                    self.wire.faults.partition(&[node], &ids);
                }
            }
            Fault::Lossy { loss } => self.wire.faults.loss = loss,
            Fault::Duplicate { share } => self.wire.faults.duplicate = share,
            Fault::Delay { extra_ms } => self.wire.faults.extra_delay_ms = extra_ms,
            Fault::Crash { node, down_ms } => {
                self.power_cut(self.index_of(node), down_ms);
            }
            Fault::PowerCut { down_ms } => {
                for i in 0..self.nodes.len() {
                    self.power_cut(i, down_ms);
                }
            }
            Fault::DamageLog { node, down_ms } => {
                // One damaged replica at a time, and only in a range with three voters and no
                // move under way: two voters, one of which lost its log, leave no quorum that
                // may elect a leader (safe, but stuck until an operator steps in).
                let rebuilding = self.damage_outstanding || !self.rebuilding_ranges().is_empty();
                let sound: Vec<u64> = self
                    .leader_views()
                    .into_iter()
                    .filter(|(_, v)| v.desc.replicas.len() >= 3 && v.desc.replicas.iter().all(|r| !r.learner))
                    .filter(|(_, v)| self.moving.as_ref().is_none_or(|m| m.range_id != v.range_id))
                    .map(|(_, v)| v.range_id)
                    .collect();
                let i = self.index_of(node);
                if !rebuilding && self.nodes[i].is_up() {
                    let keys: Vec<Vec<u8>> = self.nodes[i]
                        .disk
                        .keys(crate::storage::Cf::RaftLog)
                        .into_iter()
                        .filter(|k| layout::log_range_of(k).is_some_and(|r| sound.contains(&r)))
                        .collect();
                    self.power_cut(i, down_ms);
                    if !keys.is_empty() {
                        let key = &keys[self.nemesis.pick(keys.len())];
                        self.damage_outstanding = self.nodes[i].disk.damage(crate::storage::Cf::RaftLog, key);
                    }
                }
            }
            Fault::SlowDisk { node, latency_ms } => {
                let i = self.index_of(node);
                self.nodes[i].disk.set_sync_latency_ms(latency_ms);
                self.slow_disks.push((self.now_ms + duration, i));
            }
            Fault::Pause { node } => {
                let i = self.index_of(node);
                self.nodes[i].stalled_until_ms = self.now_ms + duration;
            }
        }
    }

    /// Cuts node `i`'s power (if it is up): it keeps what was synced plus a seeded
    /// prefix of the rest, and restarts after `down_ms`.
    fn power_cut(&mut self, i: usize, down_ms: u64) {
        if self.nodes[i].is_up() {
            let keep = self.nemesis.flushed_prefix(self.nodes[i].disk.unsynced_batches());
            self.nodes[i].crash(keep, self.now_ms + down_ms);
        }
    }

    fn heal_all(&mut self) -> Result<(), String> {
        self.wire.faults = Default::default();
        self.fault_until = None;
        for i in 0..self.nodes.len() {
            self.nodes[i].disk.set_sync_latency_ms(0);
            self.nodes[i].stalled_until_ms = self.nodes[i].stalled_until_ms.min(self.now_ms);
            if !self.nodes[i].is_up() {
                self.start_node(i)?;
            }
        }
        self.slow_disks.clear();
        Ok(())
    }

    // ------------------------------------------------------------ topology

    /// Every leader replica on a running node, with the node's index.
    fn leader_views(&self) -> Vec<(usize, ReplicaView)> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(r) = &n.running {
                out.extend(r.store.replica_views().into_iter().filter(|v| v.is_leader).map(|v| (i, v)));
            }
        }
        out
    }

    /// Ranges with a replica being rebuilt anywhere.
    fn rebuilding_ranges(&self) -> Vec<u64> {
        self.nodes.iter().filter_map(|n| n.running.as_ref()).flat_map(|r| r.store.rebuilding()).collect()
    }

    fn leader_of(&self, range_id: u64) -> Option<(usize, ReplicaView)> {
        self.leader_views().into_iter().filter(|(_, v)| v.range_id == range_id).max_by_key(|(_, v)| v.term)
    }

    fn admin(
        &self,
        node: usize,
        range_id: u64,
        op: admin_request::Op,
    ) -> Option<oneshot::Receiver<Result<AdminResponse, RangeError>>> {
        let running = self.nodes[node].running.as_ref()?;
        let (tx, rx) = oneshot::channel();
        let req = AdminRequest { op: Some(op) };
        running.handle.send(StoreMsg::Admin { range_id, req, reply: tx }).ok()?;
        Some(rx)
    }

    fn change(&mut self, change: Change) {
        let leaders = self.leader_views();
        if leaders.is_empty() {
            return;
        }
        let (node, view) = leaders[self.nemesis.pick(leaders.len())].clone();
        match change {
            Change::Merge => self.start_merge(&view, &leaders),
            Change::Split => {
                let generation = self.now_ms / workload::KEY_GENERATION_MS;
                let user_key = if self.nemesis.pick(4) == 0 {
                    // Right at the counter: retries of its increments then meet a new range.
                    workload::COUNTER_KEY.to_string()
                } else if self.nemesis.pick(2) == 0 {
                    format!("r/{:04}/{}", generation + self.nemesis.pick(2) as u64, self.nemesis.pick(4))
                } else {
                    format!(
                        "u/{}/{:06}",
                        self.cfg.register_clients as usize + self.nemesis.pick(2),
                        self.nemesis.pick(400)
                    )
                };
                let key = workload::encode_key(&user_key);
                let d = &view.desc;
                if key <= d.start || (!d.end.is_empty() && key >= d.end) {
                    return;
                }
                let new_range_id = self.next_range_id;
                self.next_range_id += 1;
                let split = SplitCommand { split_key: key, new_range_id, sticky: false };
                let cmd = crate::raftstore::apply::admin_command(raft_command::Cmd::Split(split));
                let (tx, rx) = oneshot::channel();
                if let Some(r) = &self.nodes[node].running {
                    let msg = StoreMsg::Command { range_id: view.range_id, epoch: view.desc.epoch, cmd, reply: tx };
                    if r.handle.send(msg).is_ok() {
                        self.pending.push(("split", Pending::Split(rx)));
                    }
                }
            }
            Change::TransferLeader => {
                let voters: Vec<u64> = view
                    .desc
                    .replicas
                    .iter()
                    .filter(|r| !r.learner && r.node_id != self.nodes[node].id)
                    .map(|r| r.node_id)
                    .collect();
                if voters.is_empty() {
                    return;
                }
                let to = voters[self.nemesis.pick(voters.len())];
                if let Some(rx) = self.admin(node, view.range_id, admin_request::Op::TransferLeader(to)) {
                    self.pending.push(("transfer-leader", Pending::Transfer(rx)));
                }
            }
            Change::MoveReplica => {
                // Taking a voter out of a range that is rebuilding a replica could leave it
                // without a quorum of voting replicas.
                if self.moving.is_some() || self.damage_outstanding || self.rebuilding_ranges().contains(&view.range_id)
                {
                    return;
                }
                let members: Vec<u64> = view.desc.replicas.iter().map(|r| r.node_id).collect();
                let leader = self.nodes[node].id;
                let (target, stage) = if let Some(l) = view.desc.replicas.iter().find(|r| r.learner) {
                    (l.node_id, MoveStage::CatchUp)
                } else if let Some(free) = self.nodes.iter().map(|n| n.id).find(|n| !members.contains(n)) {
                    (free, MoveStage::AddLearner)
                } else {
                    let others: Vec<u64> = members.iter().copied().filter(|n| *n != leader).collect();
                    if others.is_empty() {
                        return;
                    }
                    let victim = others[self.nemesis.pick(others.len())];
                    (victim, MoveStage::RemoveVictim(victim))
                };
                self.moving = Some(Move {
                    range_id: view.range_id,
                    target,
                    stage,
                    waiting: None,
                    deadline_ms: self.now_ms + 8_000,
                });
            }
        }
    }

    fn count(&mut self, what: &'static str, ok: bool) {
        let e = self.report.changes.entry(what).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    fn poll_changes(&mut self) {
        let mut done = Vec::new();
        self.pending.retain_mut(|(what, p)| {
            let result = match p {
                Pending::Split(rx) => rx.try_recv().map(|r| matches!(r, Ok(Applied::Split { .. }))),
                Pending::Transfer(rx) => rx.try_recv().map(|r| r.is_ok()),
            };
            match result {
                Ok(ok) => {
                    done.push((*what, ok));
                    false
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    done.push((*what, false));
                    false
                }
                Err(oneshot::error::TryRecvError::Empty) => true,
            }
        });
        for (what, ok) in done {
            self.count(what, ok);
        }
        if self.now_ms.is_multiple_of(20) {
            self.drive_move();
            self.drive_merge();
        }
    }

    /// Advances the replica move in progress by at most one step.
    fn drive_move(&mut self) {
        let Some(mut m) = self.moving.take() else { return };
        if self.now_ms > m.deadline_ms {
            self.count("move-replica", false);
            return;
        }
        if let Some(rx) = m.waiting.as_mut() {
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {
                    self.moving = Some(m);
                    return;
                }
                Ok(Ok(_)) => {
                    m.waiting = None;
                    m.stage = match m.stage {
                        MoveStage::RemoveVictim(_) => MoveStage::AddLearner,
                        MoveStage::AddLearner => MoveStage::CatchUp,
                        MoveStage::Promote if self.nodes.len() > self.cfg.replication => MoveStage::RemoveOld,
                        MoveStage::Promote | MoveStage::RemoveOld | MoveStage::CatchUp => {
                            self.count("move-replica", true);
                            return;
                        }
                    };
                }
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => {
                    self.count("move-replica", false);
                    return;
                }
            }
        }
        let Some((node, view)) = self.leader_of(m.range_id) else {
            self.moving = Some(m);
            return;
        };
        let leader = self.nodes[node].id;
        let op = match m.stage {
            MoveStage::RemoveVictim(victim) if victim == leader => {
                self.count("move-replica", false);
                return;
            }
            MoveStage::RemoveVictim(victim) => Some(admin_request::Op::RemoveReplica(victim)),
            MoveStage::AddLearner => Some(admin_request::Op::AddLearner(m.target)),
            MoveStage::CatchUp => {
                let matched = view.matched.iter().find(|(n, _)| *n == m.target).map(|(_, i)| *i).unwrap_or(0);
                if matched > 0 && matched + 1 >= view.commit {
                    m.stage = MoveStage::Promote;
                    Some(admin_request::Op::PromoteLearner(m.target))
                } else {
                    None
                }
            }
            MoveStage::Promote => Some(admin_request::Op::PromoteLearner(m.target)),
            MoveStage::RemoveOld => {
                let old: Vec<u64> =
                    view.desc.replicas.iter().map(|r| r.node_id).filter(|n| *n != m.target && *n != leader).collect();
                if old.is_empty() {
                    self.count("move-replica", true);
                    return;
                }
                Some(admin_request::Op::RemoveReplica(old[self.nemesis.pick(old.len())]))
            }
        };
        if let Some(op) = op {
            m.waiting = self.admin(node, m.range_id, op);
        }
        self.moving = Some(m);
    }

    // ------------------------------------------------------------ final checks

    /// Every node's disk holds exactly the ranges it is a replica of (`placement`).
    fn placement(&self) -> Result<(), String> {
        let ranges: Vec<RangeDescriptor> = self.leader_views().into_iter().map(|(_, v)| v.desc).collect();
        let problems: Vec<String> =
            self.nodes.iter().flat_map(|n| placement::check_disk(n.id, &n.disk, &ranges)).take(6).collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("disks hold misplaced data:\n  {}", problems.join("\n  ")))
        }
    }

    fn final_checks(&mut self) -> Result<(), String> {
        let committed = self.committed.lock();
        self.report.committed_entries = committed.distinct();
        drop(committed);
        self.report.leader_terms = self.leaders.terms_seen();
        self.report.ops = self.workload.stats.clone();
        self.report.unique_acked = self.workload.unique_acked.len();
        for (t, p, s) in &self.workload.trace {
            self.fingerprint = fnv(fnv(self.fingerprint, *t), *p);
            self.fingerprint = fnv(self.fingerprint, crc32fast::hash(s.as_bytes()) as u64);
        }
        let missing = checks::missing(&self.nodes, &self.workload.unique_acked);
        if let Some(k) = missing.first() {
            return Err(format!(
                "{} acknowledged writes lost, e.g. {:?}",
                missing.len(),
                String::from_utf8_lossy(&k[workload::TABLE_PREFIX.len()..])
            ));
        }
        let c = &self.workload.counter;
        let observed = checks::counter_value(&self.nodes, &workload::encode_key(workload::COUNTER_KEY))?;
        self.report.counter = (c.acknowledged, observed, c.attempted);
        self.report.resends_checked = c.resends_checked;
        if let Some(d) = c.duplicates.first() {
            return Err(format!("{} re-sent requests applied again, e.g. {d}", c.duplicates.len()));
        }
        cairn_check::CounterCheck { acknowledged: c.acknowledged, attempted: c.attempted, observed }
            .verdict()
            .map_err(|e| format!("counter: {e}"))?;
        let history = &self.workload.history;
        let report = cairn_check::check(history, Duration::from_secs(60));
        self.report.register_ops = report.operations;
        self.report.register_keys = report.keys;
        if !report.is_ok() {
            return Err(report.to_string());
        }
        Ok(())
    }
}
