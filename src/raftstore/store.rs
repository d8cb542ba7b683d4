//! The store loop: one thread that drives every range replica on this node.
//!
//! Each turn it (1) takes queued messages, (2) ticks, (3) collects the Ready of
//! every replica with work, (4) persists all of them in ONE RocksDB batch with
//! ONE fsync, (5) sends their messages (batched per node by the transport),
//! (6) applies committed entries and answers waiting requests.
//!
//! Quiet ranges hibernate: a leader whose followers are all caught up stops
//! heartbeating and ticking, and so do its followers, as long as the leader's
//! node keeps answering the transport's per-node keepalive.

use super::apply::{self, Applied, ApplyBatch, ApplyTarget};
use super::errors;
use super::membership::{self, Addressee, Tombstone};
use super::msg::{StoreHandle, StoreMsg, STORE_QUEUE_CAPACITY};
use super::quarantine::{self, Rebuild};
use super::raft_storage::{conf_state_of, CorruptLog, RangeStorage};
use super::replica::{Proposal, ProposalReply, Replica};
use super::replica_gc;
use super::shared::ReplicaRegistry;
use super::snapshot;
use super::snapshot_worker::SnapshotWorker;
use super::transport::{control_envelope, RaftTransport};
use super::RaftConfig;
use crate::hlc::Hlc;
use crate::sabotage::{self, Sabotage};
use crate::storage::layout;
use crate::storage::{mvcc, Cf, Engine};
use cairn_proto::internal::raft_envelope::Control;
use cairn_proto::internal::{
    admin_request, AdminRequest, AdminResponse, RaftCommand, RaftEnvelope, RangeDescriptor, Replica as ReplicaDesc,
    ReplicaProgress, SnapshotData,
};
use prost::Message as _;
use prost011::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType, Message, MessageType};
use raft::StateRole;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Max messages taken from the queue per loop turn (bounds turn latency).
const MAX_MSGS_PER_TURN: usize = 4096;

pub struct Store {
    node_id: u64,
    engine: Arc<Engine>,
    cfg: RaftConfig,
    /// Ordered, so every turn visits replicas in the same order (the simulator
    /// relies on it to replay a run exactly).
    replicas: BTreeMap<u64, Replica>,
    registry: ReplicaRegistry,
    rx: Receiver<StoreMsg>,
    transport: Arc<dyn RaftTransport>,
    hlc: Arc<Hlc>,
    logger: slog::Logger,
    /// The time of the current turn: the only clock the loop reads.
    now: Instant,
    next_tick: Instant,
    ticks: u64,
    observer: Option<ApplyObserver>,
    /// Replicas quarantined when this store opened (their log failed its checksum).
    quarantined_at_open: usize,
    /// Builds snapshots off this thread (inline on the simulator's disk).
    snapshot_worker: Arc<SnapshotWorker>,
}

/// Called with every committed entry just before this node applies it; the
/// simulator uses it to check that committed entries never change.
pub type ApplyObserver = Box<dyn FnMut(u64, &Entry) + Send>;

/// What the simulator's invariant checks see of one replica after a turn.
#[derive(Clone, Debug)]
pub struct ReplicaView {
    pub range_id: u64,
    pub is_leader: bool,
    pub term: u64,
    /// The node of the leader this replica knows (0: none).
    pub leader_id: u64,
    /// This replica's Raft peer id.
    pub peer_id: u64,
    pub last_index: u64,
    pub commit: u64,
    pub applied: u64,
    pub initialized: bool,
    pub desc: RangeDescriptor,
    /// On a leader: each replica's matched index, by node.
    pub matched: Vec<(u64, u64)>,
}

/// Forwards raft-rs's warnings to `tracing`; its debug chatter is dropped.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        if record.level().is_at_least(slog::Level::Warning) {
            tracing::warn!(target: "raft", "{}", record.msg());
        }
        Ok(())
    }
}

/// Loads every replica persisted on this node and starts the loop thread.
pub fn start(
    node_id: u64,
    engine: Arc<Engine>,
    cfg: RaftConfig,
    registry: ReplicaRegistry,
    transport: Arc<dyn RaftTransport>,
    hlc: Arc<Hlc>,
) -> anyhow::Result<(StoreHandle, std::thread::JoinHandle<()>)> {
    let (store, handle) = Store::open(node_id, engine, cfg, registry, transport, hlc, crate::clock::now())?;
    let join = std::thread::Builder::new().name("raftstore".into()).spawn(move || {
        // raft-rs panics on broken invariants; a node without its Raft loop must not
        // keep answering as if it were healthy, so a panic here stops the process.
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.run())) {
            let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            crate::storage::engine::fail_stop("the raft loop", &what.unwrap_or_else(|| "panic".into()));
        }
    })?;
    Ok((handle, join))
}

impl Store {
    /// Loads every replica persisted on this node. The caller drives the loop:
    /// a thread (`start`) in a server, the simulator in tests.
    pub fn open(
        node_id: u64,
        engine: Arc<Engine>,
        cfg: RaftConfig,
        registry: ReplicaRegistry,
        transport: Arc<dyn RaftTransport>,
        hlc: Arc<Hlc>,
        now: Instant,
    ) -> anyhow::Result<(Store, StoreHandle)> {
        let (tx, rx) = sync_channel(STORE_QUEUE_CAPACITY);
        engine.applied_spans().set_source(Arc::new(super::shared::RegistryAppliedVersions(registry.clone())));
        let logger = slog::Logger::root(TracingDrain, slog::o!());
        // Before any replica loads: a snapshot half ingested when the node stopped is
        // finished, so its replica's data matches the apply state it persisted.
        snapshot::resume_ingests(&engine);
        let snapshot_worker = SnapshotWorker::start(&engine, cfg.snapshot_max_in_flight)?;
        let tick = Duration::from_millis(cfg.tick_ms.max(1));
        let mut store = Store {
            node_id,
            engine: engine.clone(),
            cfg,
            replicas: BTreeMap::new(),
            registry: registry.clone(),
            rx,
            transport,
            hlc,
            logger,
            now,
            next_tick: now + tick,
            ticks: 0,
            observer: None,
            quarantined_at_open: 0,
            snapshot_worker,
        };
        crate::faults::damage_log_entry_at_start(&engine);
        let mut ids = Vec::new();
        let mut rebuilds = BTreeMap::new();
        let (lo, hi) = (0u64.to_be_bytes(), u64::MAX.to_be_bytes());
        engine.scan(Cf::RaftState, &lo, &hi, |k, v| {
            match layout::parse_state_key(k) {
                Some((id, layout::StateKey::Descriptor)) => ids.push(id),
                Some((id, layout::StateKey::Quarantine)) => {
                    if let Some(r) = Rebuild::decode(v) {
                        rebuilds.insert(id, r);
                    }
                }
                _ => {}
            }
            true
        });
        for id in ids {
            match RangeStorage::load(engine.clone(), id) {
                Ok(Some(storage)) => {
                    observe_applied(&store.hlc, id, storage.apply.last_version);
                    let Some(peer_id) = membership::replica_id_of(&storage.desc, node_id) else {
                        // It applied its own removal and the node stopped before destroying it.
                        store.bury(&storage.desc, true, 0, storage.hard_state.clone());
                        continue;
                    };
                    store.insert_replica(Replica::new(node_id, peer_id, storage, &store.cfg, &store.logger)?);
                }
                Ok(None) => {}
                Err(e) => match e.downcast::<CorruptLog>() {
                    Ok(corrupt) => {
                        let rebuild = store.quarantine(corrupt);
                        rebuilds.insert(rebuild.desc.id, rebuild);
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        // Replicas being rebuilt: an initialized one (snapshot received, log still short)
        // was loaded above; one still waiting for its snapshot is created empty here.
        for (id, rebuild) in rebuilds {
            if !store.replicas.contains_key(&id) {
                let Some(peer_id) = membership::replica_id_of(&rebuild.desc, node_id) else { continue };
                let storage = RangeStorage::uninitialized(engine.clone(), id);
                store.insert_replica(Replica::new(node_id, peer_id, storage, &store.cfg, &store.logger)?);
            }
            if let Some(r) = store.replicas.get_mut(&id) {
                r.rebuild = Some(rebuild);
            }
        }
        tracing::info!(node_id, replicas = store.replicas.len(), "store loaded");
        let handle =
            StoreHandle { node_id, tx, registry, engine, hlc: store.hlc.clone(), hot_keys: Default::default() };
        Ok((store, handle))
    }

    pub fn set_apply_observer(&mut self, observer: ApplyObserver) {
        self.observer = Some(observer);
    }

    /// (range, term) of every replica that is leader now; cheap enough to call every turn.
    pub fn leader_terms(&self) -> Vec<(u64, u64)> {
        self.replicas.values().filter(|r| r.is_leader()).map(|r| (r.range_id(), r.raw.raft.term)).collect()
    }

    /// Starts an election for this node's replica of `range_id` now (scripted runs).
    pub fn campaign(&mut self, range_id: u64) {
        if let Some(r) = self.replicas.get_mut(&range_id) {
            let _ = r.raw.campaign();
        }
    }

    /// Every replica's Raft role and progress, in range order.
    pub fn replica_views(&self) -> Vec<ReplicaView> {
        self.replicas
            .values()
            .map(|r| ReplicaView {
                range_id: r.range_id(),
                is_leader: r.is_leader(),
                term: r.raw.raft.term,
                leader_id: r.leader_node(),
                peer_id: r.peer_id(),
                last_index: r.raw.raft.raft_log.last_index(),
                commit: r.raw.raft.raft_log.committed,
                applied: r.raw.store().apply.applied_index,
                initialized: r.shared.initialized(),
                desc: r.shared.desc(),
                matched: if r.is_leader() {
                    let store = r.raw.store();
                    let mut m: Vec<(u64, u64)> =
                        r.raw.raft.prs().iter().map(|(id, p)| (store.node_of(*id).unwrap_or(0), p.matched)).collect();
                    m.sort_unstable();
                    m
                } else {
                    Vec::new()
                },
            })
            .collect()
    }
}

/// Writes the starting state of ranges this node creates alone (cluster bootstrap).
pub fn bootstrap_ranges(engine: &Engine, ranges: &[RangeDescriptor]) {
    let mut b = engine.batch();
    for d in ranges {
        apply::write_initial_state(&mut b, d, crate::hlc::Version::ZERO);
    }
    engine.commit(b, true);
}

impl Store {
    fn insert_replica(&mut self, mut r: Replica) {
        let id = r.range_id();
        r.raw.mut_store().snapshot_worker = Some(self.snapshot_worker.clone());
        self.registry.write().insert(id, r.shared.clone());
        self.replicas.insert(id, r);
    }

    fn run(mut self) {
        loop {
            let wait = self.next_tick.saturating_duration_since(crate::clock::now());
            match self.rx.recv_timeout(wait) {
                Ok(m) => {
                    self.now = crate::clock::now();
                    self.handle(m);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.turn(crate::clock::now());
        }
    }

    /// Runs the loop as a task on the current runtime: a turn every millisecond
    /// of the runtime's clock. For a simulation whose runtime has one thread and
    /// simulated time; a real node runs the loop on its own thread (`start`).
    pub async fn drive(mut self) {
        let mut every_ms = tokio::time::interval(Duration::from_millis(1));
        every_ms.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every_ms.tick().await;
            self.turn(crate::clock::now());
            // A slow simulated disk: its syncs hold the loop, as a slow fsync holds the thread.
            let owed = self.engine.take_owed_sync_ms();
            if owed > 0 {
                tokio::time::sleep(Duration::from_millis(owed)).await;
            }
        }
    }

    /// One turn of the loop at time `now`: takes queued messages, ticks if a tick
    /// is due, then persists, sends and applies whatever Raft has ready. A turn
    /// never blocks, which is what lets the simulator drive it.
    pub fn turn(&mut self, now: Instant) {
        self.now = now;
        for _ in 0..MAX_MSGS_PER_TURN {
            match self.rx.try_recv() {
                Ok(m) => self.handle(m),
                Err(_) => break,
            }
        }
        for (range_id, snapshot) in self.snapshot_worker.finished() {
            match self.replicas.get_mut(&range_id) {
                Some(r) => r.raw.mut_store().snapshot_generated(snapshot),
                // Built for a replica that is gone since.
                None => snapshot.iter().for_each(|s| snapshot::remove_generated(&self.engine, range_id, s)),
            }
        }
        if now >= self.next_tick {
            self.next_tick = now + Duration::from_millis(self.cfg.tick_ms.max(1));
            self.ticks += 1;
            self.tick(self.ticks);
        }
        self.submit_reads();
        self.process_ready();
        if self.cfg.election_seed.is_some() {
            for r in self.replicas.values_mut() {
                r.draw_election_timeout();
            }
        }
    }

    // ------------------------------------------------------------------ ticking

    fn tick(&mut self, ticks: u64) {
        let election_ms = self.cfg.tick_ms * self.cfg.election_ticks as u64;
        let mut peers = BTreeSet::new();
        // Each node's silence is looked up once per tick, not once per range.
        let mut silence: HashMap<u64, bool> = HashMap::new();
        let (transport, now) = (&self.transport, self.now);
        let mut silent = |n: u64| {
            *silence.entry(n).or_insert_with(|| transport.silent_for(n, now) > Duration::from_millis(election_ms))
        };
        // Replicas waiting for the snapshot that rebuilds them remind their range, about
        // twice per election timeout (a quiet leader would otherwise send nothing).
        let remind = ticks.is_multiple_of(self.cfg.election_ticks.max(1) as u64 / 2 + 1);
        // A node whose clock its peers disagree with must not stamp versions: it hands
        // its leaderships over and stands for none (`server::clock_monitor`).
        let clock_untrusted = self.hlc.untrusted_offset_ms().is_some();
        for r in self.replicas.values_mut() {
            if clock_untrusted && r.is_leader() {
                wake(r);
                hand_over_leadership(r);
            }
            for p in &r.raw.store().desc.replicas {
                if p.node_id != self.node_id {
                    peers.insert(p.node_id);
                }
            }
            if let Some(rebuild) = r.rebuild.as_ref().filter(|_| remind && !r.shared.initialized()) {
                let notice = control_envelope(&rebuild.desc, Control::Quarantined);
                for p in rebuild.desc.replicas.iter().filter(|p| p.node_id != self.node_id) {
                    transport.send_control(p.node_id, notice.clone());
                }
            }
            if r.hibernating {
                // A follower wakes when its leader's node goes quiet (to elect a new one);
                // a leader wakes when any voter's node does, so check-quorum can depose it
                // if it is the one cut off.
                let wake_up = if r.is_leader() {
                    let me = r.peer_id();
                    let store = r.raw.store();
                    r.raw
                        .raft
                        .prs()
                        .conf()
                        .voters()
                        .ids()
                        .iter()
                        .any(|p| p != me && store.node_of(p).is_none_or(&mut silent))
                } else {
                    let leader = r.leader_node();
                    leader == 0 || silent(leader)
                };
                if !wake_up {
                    continue;
                }
                r.hibernating = false;
                r.idle_ticks = 0;
            }
            // A rebuilding replica must not campaign, so its election clock does not run;
            // nor does a follower's on a node whose clock is untrusted.
            if r.rebuild.is_none() && (r.is_leader() || !clock_untrusted) {
                r.raw.tick();
            }
            r.idle_ticks = r.idle_ticks.saturating_add(1);
            // Shorter than the gateway's fail-fast window, so it still has time to retry.
            r.expire_waiting(now, Duration::from_millis(election_ms * 2));
            maybe_hibernate(r, &self.cfg);
        }
        // Per-node keepalive, a few times per election timeout: it is what lets
        // hibernating followers trust a silent leader.
        if ticks.is_multiple_of(self.cfg.heartbeat_ticks.max(1) as u64) {
            for p in peers {
                self.transport.keepalive(p);
            }
        }
    }

    // ------------------------------------------------------------------ inbound

    fn handle(&mut self, msg: StoreMsg) {
        match msg {
            StoreMsg::Raft { from_node, envelopes } => {
                for env in envelopes {
                    self.step_envelope(from_node, env, false);
                }
            }
            StoreMsg::Snapshot { from_node, envelope } => self.step_envelope(from_node, envelope, true),
            StoreMsg::Command { range_id, epoch, cmd, reply } => self.propose(range_id, epoch, cmd, reply),
            StoreMsg::ReadIndex { range_id, reply } => match self.replicas.get_mut(&range_id) {
                None => {
                    let _ = reply.send(Err(errors::range_not_found(range_id)));
                }
                // Followers serve linearizable reads too: raft-rs forwards their ReadIndex
                // to the leader, which confirms its leadership and returns its commit index.
                Some(r) if r.raw.raft.leader_id == raft::INVALID_ID || !r.shared.initialized() => {
                    let _ = reply.send(Err(errors::not_leader(range_id, 0)));
                }
                Some(r) => {
                    wake(r);
                    r.reads_to_submit.push(reply);
                }
            },
            StoreMsg::Admin { range_id, req, reply } => self.admin(range_id, req, reply),
            StoreMsg::SnapshotStatus { range_id, to, ok } => {
                if let Some(r) = self.replicas.get_mut(&range_id) {
                    let status = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
                    if !ok {
                        // Its files may be gone (replaced, or removed as abandoned): build anew.
                        r.raw.mut_store().drop_snapshot();
                    }
                    if let Some(peer) = r.raw.store().peer_on(to) {
                        r.raw.report_snapshot(peer, status);
                    }
                }
            }
            StoreMsg::Unreachable { range_id, to } => {
                if let Some(r) = self.replicas.get_mut(&range_id) {
                    if let Some(peer) = r.raw.store().peer_on(to) {
                        r.raw.report_unreachable(peer);
                    }
                }
            }
            StoreMsg::Wake { range_id } => {
                if let Some(r) = self.replicas.get_mut(&range_id) {
                    wake(r);
                }
            }
            StoreMsg::RegisterFeed { range_id, tap, pin, reply } => {
                let answer = match self.replicas.get(&range_id) {
                    Some(r) if r.shared.initialized() && !r.shared.destroyed() && r.rebuild.is_none() => {
                        let st = r.raw.store();
                        r.shared.feeds.register(tap);
                        let view = pin.map(|(start, end)| {
                            self.engine.pin(vec![crate::storage::PinnedSpan { cf: Cf::Data, start, end }])
                        });
                        Ok(super::msg::FeedStart {
                            applied_index: st.apply.applied_index,
                            last_version: st.apply.last_version,
                            desc: st.desc.clone(),
                            view,
                        })
                    }
                    _ => Err(errors::range_not_found(range_id)),
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn step_envelope(&mut self, from_node: u64, env: RaftEnvelope, is_snapshot: bool) {
        if env.control != Control::None as i32 {
            self.handle_control(from_node, &env);
            return;
        }
        let mut msg = match crate::peer::decode_raft_message(&env) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(from_node, "dropping {e}");
                return;
            }
        };
        let range_id = env.range_id;
        if let Some(r) = self.replicas.get(&range_id) {
            match membership::addressee(r.peer_id(), &r.raw.store().desc, msg.to) {
                Addressee::This => {}
                Addressee::Older | Addressee::Misaddressed => {
                    metrics::counter!("cairn_raft_messages_to_other_incarnations_total").increment(1);
                    tracing::debug!(
                        range_id,
                        from_node,
                        to = msg.to,
                        local = r.peer_id(),
                        "dropping a message for another replica id"
                    );
                    return;
                }
                Addressee::Newer => {
                    // The range added this node back as a new peer: the local replica missed
                    // its own removal, and nothing it holds may answer for the new one.
                    tracing::info!(
                        range_id,
                        stale = r.peer_id(),
                        new = msg.to,
                        "replacing a replica that missed its removal"
                    );
                    metrics::counter!("cairn_stale_replicas_destroyed_total").increment(1);
                    self.destroy_replica(range_id);
                }
            }
        }
        if let Some(r) = self.replicas.get(&range_id) {
            let store = r.raw.store();
            if let Err(e) = crate::peer::check_sender(&msg, store.node_of(msg.from), from_node) {
                tracing::warn!(range_id, from_node, "dropping {e}");
                return;
            }
            if store.initialized && replica_gc::sender_was_removed(&store.desc, from_node, env.conf_ver) {
                // Traffic from a replica that missed its removal: tell it, and keep it out of Raft.
                self.transport.send_control(from_node, control_envelope(&store.desc, Control::Removed));
                return;
            }
        } else if !self.maybe_create(from_node, &env, &msg) {
            return;
        }
        if is_snapshot {
            let Some(snapshot_desc) = self.snapshot_acceptable(range_id, &msg) else { return };
            self.retire_merged_by_snapshot(range_id, &snapshot_desc);
        }
        let Some(r) = self.replicas.get_mut(&range_id) else { return };
        wake(r);
        if crate::peer::names_its_link(&msg) {
            r.raw.mut_store().heard_from(msg.from, from_node);
        }
        if msg.from == r.raw.raft.leader_id {
            r.shared.leader_contact_ms.store(crate::hlc::wall_now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        if r.rebuild.is_some() && quarantine::withheld(msg.get_msg_type()) {
            return; // it may lack entries it once acknowledged: no vote, no campaign
        }
        if crate::peer::cap_heartbeat_commit(&mut msg, &r.raw.raft.raft_log) {
            tracing::warn!(
                range_id,
                from_node,
                "heartbeat commit beyond this replica's log (the leader's view is stale); ignored"
            );
        }
        if let Err(e) = r.raw.step(msg) {
            tracing::debug!(range_id, "step: {e}");
        }
    }

    /// Creates an empty replica for a range this node was just added to.
    fn maybe_create(&mut self, from_node: u64, env: &RaftEnvelope, msg: &Message) -> bool {
        // Vote requests create a replica too (as in TiKV): a range with no leader, whose
        // other voters cannot reach a quorum without this node (found by the simulator:
        // a 2-voter range split off mid-move, on a node that then received its parent
        // by snapshot and so never applied the split), can only elect one if it answers.
        let t = msg.get_msg_type();
        let initial = matches!(
            t,
            MessageType::MsgAppend
                | MessageType::MsgHeartbeat
                | MessageType::MsgSnapshot
                | MessageType::MsgRequestVote
                | MessageType::MsgRequestPreVote
        );
        if !initial {
            return false;
        }
        if let Some(raw) = self.engine.get(Cf::RaftState, &layout::tombstone_key(env.range_id)) {
            if !Tombstone::decode(&raw).allows(msg.to) {
                return false; // to an incarnation removed from this node
            }
        }
        // A range whose keys an initialized local replica still covers is one this
        // node will create itself when it applies the split; wait for that.
        let overlaps = self.replicas.values().any(|r| {
            r.shared.initialized() && r.shared.with_desc(|d| ranges_overlap(&d.start, &d.end, &env.start, &env.end))
        });
        if overlaps {
            self.check_overlapping_replicas(from_node, env);
            return false;
        }
        let storage = RangeStorage::uninitialized(self.engine.clone(), env.range_id);
        match Replica::new(self.node_id, msg.to, storage, &self.cfg, &self.logger) {
            Ok(r) => {
                tracing::info!(range_id = env.range_id, peer_id = msg.to, "created replica on message from leader");
                self.insert_replica(r);
                true
            }
            Err(e) => {
                tracing::warn!(range_id = env.range_id, "cannot create replica: {e}");
                false
            }
        }
    }

    /// Local replicas overlapping a range this node was asked to join may be stale
    /// (removed while this node was away): ask the sender and their members.
    fn check_overlapping_replicas(&mut self, sender: u64, env: &RaftEnvelope) {
        let now = self.now;
        let every = Duration::from_millis(self.cfg.tick_ms * self.cfg.election_ticks as u64);
        let mut asks = Vec::new();
        for r in self.replicas.values_mut() {
            let overlapping = r.shared.initialized()
                && r.shared.with_desc(|d| ranges_overlap(&d.start, &d.end, &env.start, &env.end));
            if !overlapping || r.last_stale_check.is_some_and(|t| now.saturating_duration_since(t) < every) {
                continue;
            }
            r.last_stale_check = Some(now);
            let desc = r.raw.store().desc.clone();
            let mut to: Vec<u64> = desc.replicas.iter().map(|p| p.node_id).filter(|n| *n != self.node_id).collect();
            if !to.contains(&sender) {
                to.push(sender);
            }
            asks.push((to, control_envelope(&desc, Control::StaleCheck)));
        }
        for (to, env) in asks {
            for n in to {
                self.transport.send_control(n, env.clone());
            }
        }
    }

    fn handle_control(&mut self, from_node: u64, env: &RaftEnvelope) {
        let control = Control::try_from(env.control);
        let Some(r) = self.replicas.get_mut(&env.range_id) else {
            // A range merged away here is gone everywhere: a replica of it that missed
            // the merge (removed from it earlier, and away since) can go too.
            let merged = self
                .engine
                .get(Cf::RaftState, &layout::tombstone_key(env.range_id))
                .is_some_and(|raw| Tombstone::decode(&raw) == Tombstone::merged());
            if merged && control == Ok(Control::StaleCheck) {
                let mut answer = env.clone();
                answer.conf_ver = u64::MAX;
                answer.control = Control::Removed as i32;
                self.transport.send_control(from_node, answer);
            }
            return;
        };
        let (desc, initialized) = (&r.raw.store().desc, r.raw.store().initialized);
        match control {
            Ok(Control::StaleCheck | Control::Quarantined) => {
                if initialized && replica_gc::sender_was_removed(desc, from_node, env.conf_ver) {
                    self.transport.send_control(from_node, control_envelope(desc, Control::Removed));
                } else if control == Ok(Control::Quarantined) && r.is_leader() {
                    // The replica there lost its log: whatever it acknowledged is gone, so
                    // send it everything again (from a snapshot), even if the range is quiet.
                    let peer = membership::replica_id_of(desc, from_node).unwrap_or(raft::INVALID_ID);
                    wake(r);
                    if let Some(pr) = r.raw.raft.mut_prs().get_mut(peer) {
                        if pr.matched > 0 {
                            tracing::warn!(range_id = env.range_id, node = from_node, "replica there is rebuilding");
                            pr.matched = 0;
                            pr.become_probe();
                            r.raw.raft.send_append(peer);
                        }
                    }
                } else if control == Ok(Control::Quarantined) && r.leader_node() == from_node {
                    // The leader this replica follows lost its log, and with it its leadership,
                    // yet its node stays up, so a hibernating follower would trust it forever
                    // (found by the simulator: the range never elected again). Forget it and
                    // keep the election clock running, so the range elects a new leader.
                    tracing::info!(range_id = env.range_id, node = from_node, "leader is rebuilding; electing anew");
                    r.raw.raft.leader_id = raft::INVALID_ID;
                    wake(r);
                }
            }
            Ok(Control::Removed) => {
                if replica_gc::told_removed(desc, initialized, env.conf_ver) {
                    tracing::info!(
                        range_id = env.range_id,
                        from_node,
                        their_conf_ver = env.conf_ver,
                        "replica missed its removal; destroying it"
                    );
                    metrics::counter!("cairn_stale_replicas_destroyed_total").increment(1);
                    self.destroy_replica(env.range_id);
                }
            }
            Ok(Control::None) | Err(_) => {}
        }
    }

    /// The snapshot's descriptor if this node may install it.
    fn snapshot_acceptable(&self, range_id: u64, msg: &Message) -> Option<RangeDescriptor> {
        let snap = msg.snapshot.as_ref()?;
        let Ok(data) = SnapshotData::decode(snap.data.as_slice()) else {
            tracing::warn!(range_id, "dropping snapshot with undecodable data");
            return None;
        };
        let d = data.desc.as_ref()?;
        if d.id != range_id {
            return None;
        }
        if !data.files.is_empty() {
            let meta = snap.metadata.clone().unwrap_or_default();
            let present = self
                .engine
                .snapshot_dir()
                .is_some_and(|root| snapshot::received_files_present(root, range_id, meta.term, meta.index, &data));
            if !present {
                tracing::warn!(range_id, index = meta.index, "dropping snapshot whose files are not here");
                return None;
            }
        }
        let clash = self.replicas.iter().any(|(id, r)| {
            *id != range_id
                && r.shared.initialized()
                && r.shared.with_desc(|o| ranges_overlap(&o.start, &o.end, &d.start, &d.end) && !merged_into(o, d))
        });
        if clash {
            tracing::info!(range_id, "dropping snapshot overlapping another local range (split not applied yet)");
        }
        (!clash).then(|| d.clone())
    }

    /// Retires the local replicas a snapshot of `range_id` shows merged into it
    /// (this node's replica of the left range missed the merge and is sent a
    /// snapshot instead): their Raft state goes, and the snapshot's install
    /// replaces their data. Called once the snapshot is found acceptable.
    fn retire_merged_by_snapshot(&mut self, range_id: u64, d: &RangeDescriptor) {
        let merged: Vec<u64> = self
            .replicas
            .iter()
            .filter(|(id, r)| **id != range_id && r.shared.initialized() && r.shared.with_desc(|o| merged_into(o, d)))
            .map(|(id, _)| *id)
            .collect();
        for id in merged {
            let mut b = self.engine.batch();
            let hs = super::raft_storage::persisted_hard_state(&self.engine, id);
            apply::retire_raft_state(&mut b, id, hs);
            self.engine.commit(b, true);
            self.retire_merged(range_id, id);
        }
    }

    fn propose(
        &mut self,
        range_id: u64,
        epoch: Option<cairn_proto::internal::RangeEpoch>,
        mut cmd: RaftCommand,
        reply: super::msg::Reply<Applied>,
    ) {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            let _ = reply.send(Err(errors::range_not_found(range_id)));
            return;
        };
        if let Some(offset_ms) = self.hlc.untrusted_offset_ms() {
            // Not a leader for long (`hand_over_leadership`): the gateway re-routes.
            tracing::debug!(range_id, offset_ms, "proposal refused: this node's clock is untrusted");
            let _ = reply.send(Err(errors::not_leader(range_id, 0)));
            return;
        }
        let forward = !r.is_leader();
        let forwardable = !cmd.request_id.is_empty()
            && matches!(cmd.cmd, Some(cairn_proto::internal::raft_command::Cmd::Write(_)))
            && r.raw.raft.leader_id != raft::INVALID_ID
            && r.shared.initialized()
            && r.forwarded.len() < super::replica::MAX_FORWARDED;
        if forward && (!forwardable || cmd.judge_expiry_at_leader) {
            let _ = reply.send(Err(errors::not_leader(range_id, r.leader_node())));
            return;
        }
        // The store loop's own copy of the descriptor: no lock and no clone per proposal.
        let desc = &r.raw.store().desc;
        if desc.frozen_for_merge && cmd.cmd.as_ref().is_some_and(apply::refused_while_frozen) {
            let _ = reply.send(Err(apply::frozen(desc)));
            return;
        }
        if let (Some(want), Some(have)) = (epoch.as_ref(), desc.epoch.as_ref()) {
            if want.version != have.version && !sabotage::active(Sabotage::SkipEpochCheck) {
                let _ = reply.send(Err(errors::epoch_mismatch(desc)));
                return;
            }
        }
        wake(r);
        if cmd.proposed_version.is_none() {
            cmd.proposed_version = Some(self.hlc.now().into());
        }
        if cmd.judge_expiry_at_leader {
            // No earlier than this leader's reads judge: see `ReplicaShared::expiry_floor_ms`.
            cmd.expiry_judged_at_ms = r.shared.expiry_floor_ms();
        }
        let before = r.raw.raft.raft_log.last_index();
        if let Err(e) = r.raw.propose(vec![], cmd.encode_to_vec()) {
            let _ = reply.send(Err(errors::unavailable(format!("range {range_id}: proposal dropped: {e}"))));
            return;
        }
        if forward {
            // raft-rs sent it to the leader; this replica answers when it applies the entry.
            if let Some((_, old)) = r.forwarded.insert(cmd.request_id, (self.now, reply)) {
                let _ = old.send(Err(errors::ambiguous(range_id)));
            }
            return;
        }
        let index = r.raw.raft.raft_log.last_index();
        if index == before {
            let _ = reply.send(Err(errors::unavailable(format!("range {range_id}: proposal dropped"))));
            return;
        }
        r.proposals.push_back(Proposal { index, term: r.raw.raft.term, reply: ProposalReply::Command(reply) });
    }

    fn admin(&mut self, range_id: u64, req: AdminRequest, reply: super::msg::Reply<AdminResponse>) {
        let me = self.node_id;
        let Some(r) = self.replicas.get_mut(&range_id) else {
            let _ = reply.send(Err(errors::range_not_found(range_id)));
            return;
        };
        let Some(op) = req.op else {
            let _ = reply.send(Err(errors::invalid("admin request without operation")));
            return;
        };
        if let admin_request::Op::LocalState(_) = op {
            let _ = reply.send(Ok(local_state(r)));
            return;
        }
        if !r.is_leader() {
            let _ = reply.send(Err(errors::not_leader(range_id, r.leader_node())));
            return;
        }
        wake(r);
        let desc = r.shared.desc();
        let changes_membership = matches!(
            op,
            admin_request::Op::AddLearner(_)
                | admin_request::Op::PromoteLearner(_)
                | admin_request::Op::RemoveReplica(_)
        );
        if changes_membership && desc.frozen_for_merge {
            let _ = reply.send(Err(apply::frozen(&desc)));
            return;
        }
        let has = |n: u64| desc.replicas.iter().find(|x| x.node_id == n).cloned();
        // Requests name nodes; Raft names replica incarnations (`membership`).
        let (change, replica) = match op {
            admin_request::Op::Status(_) => {
                let _ = reply.send(Ok(admin_status(r)));
                return;
            }
            admin_request::Op::LocalState(_) => {
                let _ = reply.send(Ok(local_state(r)));
                return;
            }
            admin_request::Op::TransferLeader(n) => {
                // The target may be the node a pending change removes: leading it into its own
                // removal is what `leave_before_own_removal` has to undo, so do not.
                if r.raw.raft.has_pending_conf() {
                    let _ = reply.send(Err(errors::unavailable(format!(
                        "range {range_id}: a membership change is still being applied; retry the transfer"
                    ))));
                    return;
                }
                let Some(target) = has(n).filter(|x| !x.learner) else {
                    let _ = reply.send(Err(errors::invalid(format!("node {n} is not a voter of range {range_id}"))));
                    return;
                };
                // raft-rs drops every proposal while a transfer is under way and gives
                // up on it only after an election timeout: a transfer to a node that
                // died a moment ago (still "live" in the registry for seconds) would
                // stall the range for nothing, and again at each retry.
                let election = Duration::from_millis(self.cfg.tick_ms * self.cfg.election_ticks as u64);
                let silence = self.transport.silent_for(n, self.now);
                if n != me && silence > election {
                    let _ = reply.send(Err(errors::invalid(format!(
                        "node {n} has not been heard from for {} ms; leadership of range {range_id} stays where it is",
                        silence.as_millis()
                    ))));
                    return;
                }
                r.raw.transfer_leader(target.replica_id);
                let _ = reply.send(Ok(admin_status(r)));
                return;
            }
            admin_request::Op::AddLearner(n) => {
                if has(n).is_some() {
                    let _ =
                        reply.send(Err(errors::invalid(format!("node {n} already has a replica of range {range_id}"))));
                    return;
                }
                let replica_id = if sabotage::active(Sabotage::ReuseReplicaIds) {
                    n // the node's id, as every incarnation's peer id
                } else {
                    membership::next_replica_id(&desc)
                };
                (ConfChangeType::AddLearnerNode, ReplicaDesc { node_id: n, learner: true, replica_id })
            }
            admin_request::Op::PromoteLearner(n) => {
                let Some(learner) = has(n).filter(|x| x.learner) else {
                    let _ = reply.send(Err(errors::invalid(format!("node {n} is not a learner of range {range_id}"))));
                    return;
                };
                (ConfChangeType::AddNode, ReplicaDesc { learner: false, ..learner })
            }
            admin_request::Op::RemoveReplica(n) => {
                let Some(member) = has(n) else {
                    let _ = reply.send(Err(errors::invalid(format!("node {n} has no replica of range {range_id}"))));
                    return;
                };
                if n == me {
                    let _ = reply.send(Err(errors::invalid(
                        "cannot remove the leader's own replica; transfer leadership first",
                    )));
                    return;
                }
                (ConfChangeType::RemoveNode, member)
            }
            admin_request::Op::SplitKey(_) => {
                let _ = reply.send(Err(errors::invalid("split is proposed as a command")));
                return;
            }
        };
        let cc = ConfChange {
            change_type: change as i32,
            node_id: replica.replica_id,
            context: membership::change_context(replica.node_id, replica.replica_id, replica.learner),
            ..Default::default()
        };
        let before = r.raw.raft.raft_log.last_index();
        if let Err(e) = r.raw.propose_conf_change(vec![], cc) {
            let _ = reply.send(Err(errors::unavailable(format!("conf change rejected: {e}"))));
            return;
        }
        let index = r.raw.raft.raft_log.last_index();
        if index == before {
            let _ = reply
                .send(Err(errors::unavailable("conf change dropped (another membership change is still in progress)")));
            return;
        }
        r.proposals.push_back(Proposal { index, term: r.raw.raft.term, reply: ProposalReply::ConfChange(reply) });
    }

    fn submit_reads(&mut self) {
        for r in self.replicas.values_mut() {
            if r.reads_to_submit.is_empty() {
                continue;
            }
            let ctx = r.next_read_ctx;
            r.next_read_ctx += 1;
            let replies = std::mem::take(&mut r.reads_to_submit);
            r.raw.read_index(read_ctx(self.node_id, ctx));
            r.reads_inflight.push_back((ctx, self.now, replies));
        }
    }

    // ------------------------------------------------------------------ ready

    fn process_ready(&mut self) {
        let mut batch = self.engine.batch();
        let mut must_sync = false;
        let mut readies = Vec::new();
        let mut installed: HashMap<u64, (SnapshotData, layout::ApplyState)> = HashMap::new();
        let mut ingests = Vec::new();
        for (id, r) in self.replicas.iter_mut() {
            if !r.raw.has_ready() {
                continue;
            }
            r.idle_ticks = 0;
            let mut rd = r.raw.ready();
            // A leader may send appends before its own write is durable (Raft thesis §10.2.1);
            // it only counts itself towards the quorum after `advance`.
            self.transport.send_all(r.raw.store(), rd.take_messages());
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot();
                match SnapshotData::decode(snap.data.as_slice()) {
                    Ok(data) => {
                        let meta = snap.metadata.clone().unwrap_or_default();
                        let old = r.raw.store().initialized.then(|| r.raw.store().desc.clone());
                        let (apply, ingest) = snapshot::install(
                            &self.engine,
                            &mut batch,
                            *id,
                            old.as_ref(),
                            &data,
                            meta.index,
                            meta.term,
                        )
                        .unwrap_or_else(|e| {
                            // Accepted only with its files in place (`snapshot_acceptable`).
                            crate::storage::engine::fail_stop("installing an accepted snapshot", &format!("{e:#}"))
                        });
                        ingests.extend(ingest);
                        installed.insert(*id, (data, apply));
                        must_sync = true;
                    }
                    Err(e) => crate::storage::engine::fail_stop("decoding an accepted snapshot", &e),
                }
            }
            if !rd.entries().is_empty() {
                let store = r.raw.store();
                for e in rd.entries() {
                    batch.put(Cf::RaftLog, &layout::log_key(*id, e.index), &layout::encode_log_entry(e));
                }
                // Entries past the new last index were overwritten by a new leader.
                if let Some(last) = rd.entries().last() {
                    if last.index < store.last_index {
                        batch.delete_range(
                            Cf::RaftLog,
                            &layout::log_key(*id, last.index + 1),
                            &layout::log_key(*id, store.last_index + 1),
                        );
                    }
                }
                must_sync = true;
            }
            if let Some(hs) = rd.hs() {
                batch.put(Cf::RaftState, &layout::hard_state_key(*id), &hs.encode_to_vec());
                if hard_state_needs_sync(&r.raw.store().hard_state, hs) {
                    must_sync = true;
                }
            }
            readies.push((*id, rd));
        }
        if readies.is_empty() {
            return;
        }
        // Real time, not the node clock: this measures the disk.
        let started = crate::clock::os_now();
        self.engine.commit(batch, must_sync);
        if must_sync {
            let took = crate::clock::os_now().saturating_duration_since(started);
            metrics::histogram!("cairn_raft_persist_seconds").record(took.as_secs_f64());
        }
        // Before the replicas' new apply state is published: nothing reads their
        // spans until the snapshot's records are in.
        for ingest in &ingests {
            let started = crate::clock::os_now();
            snapshot::finish_ingest(&self.engine, ingest);
            let took = crate::clock::os_now().saturating_duration_since(started);
            metrics::histogram!("cairn_snapshot_ingest_seconds").record(took.as_secs_f64());
            tracing::info!(range_id = ingest.range_id, took_ms = took.as_millis() as u64, "ingested snapshot files");
        }
        for (id, mut rd) in readies {
            let Some(r) = self.replicas.get_mut(&id) else { continue };
            // Mirror what was just written into the raft-rs storage view.
            {
                let s = r.raw.mut_store();
                if let Some((data, apply)) = installed.remove(&id) {
                    let meta = rd.snapshot().metadata.clone().unwrap_or_default();
                    s.apply = apply;
                    s.last_index = meta.index;
                    s.last_term = meta.term;
                    s.desc = data.desc.unwrap_or_default();
                    s.conf_state = meta.conf_state.unwrap_or_default();
                    s.initialized = true;
                    s.cache_clear();
                    s.hard_state.commit = s.hard_state.commit.max(meta.index);
                    r.shared.set_desc(s.desc.clone());
                    r.shared.set_initialized();
                    r.shared.set_applied(apply.applied_index, apply.last_version);
                    // A snapshot skips the entries it covers: feeds start over from it.
                    r.shared.feeds.end_all("the replica was caught up by a snapshot");
                    tracing::info!(range_id = id, index = meta.index, "installed snapshot");
                }
                if let Some(last) = rd.entries().last() {
                    s.last_index = last.index;
                    s.last_term = last.term;
                }
                s.cache_append(rd.entries());
                if let Some(hs) = rd.hs() {
                    s.hard_state = hs.clone();
                }
            }
            if let Some(ss) = rd.ss() {
                let hlc = &self.hlc;
                r.shared.set_leader(r.leader_node(), self.node_id, || {
                    (hlc.physical_now() + 2 * hlc.max_offset_ns()) / 1_000_000
                });
                if ss.leader_id != r.last_leader {
                    r.last_leader = ss.leader_id;
                    r.fail_forwarded();
                }
            }
            self.transport.send_all(r.raw.store(), rd.take_persisted_messages());
            for rs in rd.take_read_states() {
                // Contexts only grow, and replies come in order: a reply older than the
                // queue's front belongs to a request that already expired.
                let Some(ctx) = parse_read_ctx(self.node_id, &rs.request_ctx) else { continue };
                while r.reads_inflight.front().is_some_and(|(c, _, _)| *c < ctx) {
                    // An older read context that raft-rs dropped; its callers retry.
                    if let Some((_, _, replies)) = r.reads_inflight.pop_front() {
                        for reply in replies {
                            let _ = reply.send(Err(errors::unavailable("read index request was dropped")));
                        }
                    }
                }
                if r.reads_inflight.front().is_some_and(|(c, _, _)| *c == ctx) {
                    if let Some((_, _, replies)) = r.reads_inflight.pop_front() {
                        r.reads_waiting_apply.push_back((rs.index, replies));
                    }
                }
            }
            let committed = rd.take_committed_entries();
            observe(&mut self.observer, id, &committed);
            let mut outcome = ApplyOutcome::default();
            apply_entries(&self.engine, &self.hlc, r, committed, &mut outcome);
            let mut light = r.raw.advance(rd);
            if let Some(c) = light.commit_index() {
                r.raw.mut_store().hard_state.commit = c;
            }
            self.transport.send_all(r.raw.store(), light.take_messages());
            let committed = light.take_committed_entries();
            observe(&mut self.observer, id, &committed);
            apply_entries(&self.engine, &self.hlc, r, committed, &mut outcome);
            r.raw.advance_apply();
            evict_entry_cache(r);
            r.release_reads();
            let leader_now = r.is_leader();
            if r.was_leader && !leader_now {
                r.fail_pending();
            }
            r.was_leader = leader_now;
            maybe_compact_log(&self.engine, r, &self.cfg);
            if r.rebuild.as_ref().is_some_and(|b| r.shared.initialized() && b.done(r.raw.store().last_index)) {
                r.rebuild = None;
                let mut b = self.engine.batch();
                b.delete(Cf::RaftState, &layout::quarantine_key(id));
                self.engine.commit(b, true);
                tracing::info!(range_id = id, "replica rebuilt after its log was damaged");
            }
            self.after_apply(id, outcome);
        }
    }

    fn after_apply(&mut self, id: u64, outcome: ApplyOutcome) {
        for right in outcome.splits {
            self.create_split_range(id, right);
        }
        for right in outcome.merged {
            self.retire_merged(id, right);
        }
        if outcome.rebuild {
            self.rebuild_replica(id);
        } else if outcome.removed_self {
            self.destroy_replica(id);
        }
    }

    /// Takes a replica out of service: out of the loop and the registry, its waiting
    /// requests failed, and marked destroyed under its data lock, so that no read
    /// already past the check reads on while the caller deletes what it held.
    fn withdraw(&mut self, id: u64) -> Option<Replica> {
        let mut r = self.replicas.remove(&id)?;
        self.registry.write().remove(&id);
        r.fail_pending();
        {
            let _guard = r.shared.data_lock.write();
            r.shared.mark_destroyed();
        }
        Some(r)
    }

    /// Drops a range merged into `left_id` from this node: its data now belongs to
    /// the left range, and its Raft state and tombstone were written with the merge.
    fn retire_merged(&mut self, left_id: u64, id: u64) {
        if self.withdraw(id).is_none() {
            return;
        }
        metrics::counter!("cairn_range_merges_total").increment(1);
        tracing::info!(left = left_id, right = id, "merge applied");
    }

    /// Replaces a replica whose data cannot be trusted (a merge found this node's
    /// replica of the right range behind its freeze) with an empty one that is
    /// sent everything again by snapshot, as a quarantined replica is.
    fn rebuild_replica(&mut self, id: u64) {
        let Some(r) = self.withdraw(id) else { return };
        let desc = r.raw.store().desc.clone();
        let last_index = r.raw.store().last_index;
        let peer_id = r.peer_id();
        tracing::error!(range_id = id, "a merge found this node's copy of the merged range incomplete; rebuilding");
        metrics::counter!("cairn_replicas_quarantined_total").increment(1);
        let rebuild = Rebuild { until_index: last_index, desc: desc.clone() };
        let mut b = self.engine.batch();
        purge_replica(&mut b, &desc, true, r.raw.raft.hard_state());
        b.put(Cf::RaftState, &layout::quarantine_key(id), &rebuild.encode());
        self.engine.commit(b, true);
        let storage = RangeStorage::uninitialized(self.engine.clone(), id);
        match Replica::new(self.node_id, peer_id, storage, &self.cfg, &self.logger) {
            Ok(mut fresh) => {
                fresh.rebuild = Some(rebuild);
                self.insert_replica(fresh);
            }
            Err(e) => tracing::error!(range_id = id, "cannot restart a replica to rebuild: {e}"),
        }
    }

    fn create_split_range(&mut self, left_id: u64, right: RangeDescriptor) {
        let left_is_leader = self.replicas.get(&left_id).is_some_and(|r| r.is_leader());
        // An uninitialized replica of the right range (created on a message) is replaced;
        // the split's apply batch already kept the term and vote it persisted.
        self.replicas.remove(&right.id);
        let Some(peer_id) = membership::replica_id_of(&right, self.node_id) else {
            tracing::error!(range_id = right.id, "split range does not name this node");
            return;
        };
        match RangeStorage::load(self.engine.clone(), right.id) {
            Ok(Some(storage)) => match Replica::new(self.node_id, peer_id, storage, &self.cfg, &self.logger) {
                Ok(mut r) => {
                    if left_is_leader {
                        // The left's leader is the natural leader of the right: skip a timeout.
                        let _ = r.raw.campaign();
                    }
                    tracing::info!(left = left_id, right = right.id, "split applied");
                    metrics::counter!("cairn_range_splits_total").increment(1);
                    self.insert_replica(r);
                }
                Err(e) => tracing::error!(range_id = right.id, "cannot start split range: {e}"),
            },
            Ok(None) | Err(_) => tracing::error!(range_id = right.id, "split range state missing after apply"),
        }
    }

    /// Removes this node's replica and its data (it was removed from the range).
    fn destroy_replica(&mut self, id: u64) {
        let Some(r) = self.withdraw(id) else { return };
        let desc = r.raw.store().desc.clone();
        let holds_data = r.raw.store().initialized;
        self.bury(&desc, holds_data, r.peer_id(), r.raw.raft.hard_state());
        tracing::info!(range_id = id, peer_id = r.peer_id(), "replica removed from this node");
    }

    /// Deletes a removed replica's data (if it was initialized: an uninitialized
    /// one's placeholder descriptor has no bounds, which would read as the whole
    /// keyspace) and state, and leaves its tombstone: no message to it, or to any
    /// earlier incarnation, creates a replica here again.
    fn bury(&self, desc: &RangeDescriptor, holds_data: bool, peer_id: u64, hs: raft::eraftpb::HardState) {
        let mut b = self.engine.batch();
        purge_replica(&mut b, desc, holds_data, hs);
        let tombstone = Tombstone::of(desc, peer_id);
        b.put(Cf::RaftState, &layout::tombstone_key(desc.id), &tombstone.encode());
        self.engine.commit(b, true);
    }

    /// Takes a replica whose log failed its checksum out of service and starts its
    /// rebuild (see `quarantine`): its data and log are deleted, its term and vote
    /// kept, and an empty replica takes its place that neither votes nor campaigns
    /// until it holds the log up to the damaged one's last index again.
    fn quarantine(&mut self, corrupt: CorruptLog) -> Rebuild {
        let desc = corrupt.desc;
        let id = desc.id;
        tracing::error!(
            range_id = id,
            index = corrupt.index,
            "raft log entry fails its checksum: replica quarantined and rebuilt from its peers \
             (no votes until its log reaches index {})",
            corrupt.last_index
        );
        metrics::counter!("cairn_replicas_quarantined_total").increment(1);
        self.quarantined_at_open += 1;
        let hs = super::raft_storage::persisted_hard_state(&self.engine, id).unwrap_or_default();
        let rebuild = Rebuild { until_index: corrupt.last_index, desc: desc.clone() };
        let mut b = self.engine.batch();
        purge_replica(&mut b, &desc, true, hs);
        b.put(Cf::RaftState, &layout::quarantine_key(id), &rebuild.encode());
        self.engine.commit(b, true);
        rebuild
    }

    /// How many replicas this store quarantined when it opened.
    pub fn quarantined_at_open(&self) -> usize {
        self.quarantined_at_open
    }

    /// Ranges whose replica here is being rebuilt.
    pub fn rebuilding(&self) -> Vec<u64> {
        self.replicas.values().filter(|r| r.rebuild.is_some()).map(|r| r.range_id()).collect()
    }
}

#[derive(Default)]
struct ApplyOutcome {
    splits: Vec<RangeDescriptor>,
    /// Ranges this one took over by a merge (their Raft state is already gone).
    merged: Vec<u64>,
    /// A merge found this node's replica of the right range without its final
    /// data: the replica must be rebuilt from its peers.
    rebuild: bool,
    removed_self: bool,
}

/// An answer owed for an applied entry; sent only once the entry's batch is written,
/// so nobody can observe an acknowledged write that is not yet readable.
/// (The result is boxed only to keep the enum small.)
enum Owed {
    Command {
        index: u64,
        term: u64,
        request_id: Vec<u8>,
        result: Box<Result<Applied, cairn_proto::internal::RangeError>>,
    },
    ConfChange {
        index: u64,
        term: u64,
    },
}

fn apply_entries(engine: &Engine, hlc: &Hlc, r: &mut Replica, entries: Vec<Entry>, outcome: &mut ApplyOutcome) {
    let id = r.range_id();
    let mut s = r.raw.store().apply;
    let mut desc = r.raw.store().desc.clone();
    let shared = r.shared.clone();
    // Registering a tap happens on this thread, so whether to record is fixed per batch.
    let new_batch = || match shared.feeds.active() {
        true => ApplyBatch::recording_changes(engine),
        false => ApplyBatch::new(engine),
    };
    let mut ab = new_batch();
    let mut owed = Vec::new();
    let mut written = 0;
    for entry in entries {
        if entry.index <= s.applied_index {
            continue; // already applied (e.g. covered by an installed snapshot)
        }
        // Splits, merges and membership changes end the batch: what follows must see them durable.
        let mut ends_batch = false;
        let mut sync = false;
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {}
            EntryType::EntryNormal => {
                let (request_id, result) = match RaftCommand::decode(entry.data.as_slice()) {
                    Ok(cmd) => {
                        let mut t = ApplyTarget {
                            range_id: id,
                            desc: &mut desc,
                            apply: &mut s,
                            index: entry.index,
                            written_bytes: 0,
                        };
                        let applied = apply::apply_command(&mut ab, &mut t, &cmd);
                        written += t.written_bytes;
                        match applied {
                            Applied::Rejected(e) => (cmd.request_id, Err(e)),
                            Applied::Write(w) => (cmd.request_id, Ok(Applied::Write(w))),
                            other => {
                                ends_batch = true;
                                match &other {
                                    Applied::Split { right, .. } => outcome.splits.push(right.clone()),
                                    Applied::Frozen { .. } => sync = true,
                                    Applied::Merged { right_id, right_incomplete, .. } => {
                                        outcome.merged.push(*right_id);
                                        if *right_incomplete {
                                            // Nothing may read the span this replica lacks: it is
                                            // out of service until `after_apply` rebuilds it.
                                            r.shared.mark_destroyed();
                                            outcome.rebuild = true;
                                        }
                                    }
                                    _ => {}
                                }
                                (cmd.request_id, Ok(other))
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(range_id = id, index = entry.index, "undecodable command skipped: {e}");
                        (Vec::new(), Err(errors::invalid("undecodable command")))
                    }
                };
                owed.push(Owed::Command { index: entry.index, term: entry.term, request_id, result: Box::new(result) });
            }
            EntryType::EntryConfChange => {
                match ConfChange::decode(entry.data.as_slice()) {
                    Ok(cc) if !entry.data.is_empty() => {
                        let subject = membership::changed_replica(cc.node_id, &cc.context);
                        let mut changed = desc.clone();
                        let described =
                            membership::apply_change(&mut changed, cc.get_change_type(), cc.node_id, subject.as_ref());
                        match described
                            .map_err(|e| e.to_string())
                            .and_then(|()| leave_before_own_removal(r, &cc).map_err(|e| e.to_string()))
                        {
                            Ok(cs) => {
                                desc = changed;
                                ab.batch.put(Cf::RaftState, &layout::descriptor_key(id), &desc.encode_to_vec());
                                r.raw.mut_store().conf_state = cs;
                                // Peer ids are never reused, so a removal of this replica's id is final.
                                if cc.node_id == r.peer_id() && cc.get_change_type() == ConfChangeType::RemoveNode {
                                    outcome.removed_self = true;
                                }
                                tracing::info!(
                                    range_id = id,
                                    change = ?cc.get_change_type(),
                                    peer = cc.node_id,
                                    node = membership::node_of(&desc, cc.node_id).or(subject.map(|s| s.node_id)),
                                    "membership changed"
                                );
                            }
                            Err(e) => tracing::error!(range_id = id, "conf change not applied: {e}"),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(range_id = id, "undecodable conf change skipped: {e}"),
                }
                ends_batch = true;
                owed.push(Owed::ConfChange { index: entry.index, term: entry.term });
            }
            EntryType::EntryConfChangeV2 => {}
        }
        s.applied_index = entry.index;
        if ends_batch {
            let full = std::mem::replace(&mut ab, new_batch());
            flush_applied(full, sync, hlc, r, s, &desc, std::mem::take(&mut written), std::mem::take(&mut owed));
            if outcome.rebuild {
                break; // the rest waits for the rebuilt replica (it comes again by snapshot)
            }
        }
    }
    if s.applied_index != r.raw.store().apply.applied_index {
        flush_applied(ab, false, hlc, r, s, &desc, written, owed);
    }
}

/// Writes an apply batch with the new apply state, publishes the new state, then answers.
#[allow(clippy::too_many_arguments)]
fn flush_applied(
    mut ab: ApplyBatch<'_>,
    sync: bool,
    hlc: &Hlc,
    r: &mut Replica,
    s: layout::ApplyState,
    desc: &RangeDescriptor,
    written: u64,
    owed: Vec<Owed>,
) {
    let id = r.range_id();
    ab.batch.put(Cf::RaftState, &layout::apply_state_key(id), &s.encode());
    let changes = ab.changes.take();
    if sync {
        ab.commit_synced();
    } else {
        ab.commit();
    }
    let (after_index, desc_changed) = {
        let st = r.raw.mut_store();
        let after_index = st.apply.applied_index;
        st.apply = s;
        let desc_changed = st.desc != *desc;
        if desc_changed {
            st.conf_state = conf_state_of(desc);
            st.desc = desc.clone();
            r.shared.set_desc(desc.clone());
        }
        (after_index, desc_changed)
    };
    // After the commit: a feed reading on from this item finds the engine past it.
    r.shared.feeds.publish(after_index, s.applied_index, s.last_version, changes, desc_changed);
    observe_applied(hlc, id, s.last_version);
    r.shared.set_applied(s.applied_index, s.last_version);
    r.shared.written_bytes.fetch_add(written, std::sync::atomic::Ordering::Relaxed);
    for o in owed {
        match o {
            Owed::Command { index, term, request_id, result } => match r.take_proposal(index, term) {
                Some(ProposalReply::Command(reply)) => {
                    let _ = reply.send(*result);
                }
                Some(ProposalReply::ConfChange(reply)) => {
                    let _ = reply.send(Err(errors::invalid("entry was not a conf change")));
                }
                None => {
                    if let Some((_, reply)) =
                        (!request_id.is_empty()).then(|| r.forwarded.remove(&request_id)).flatten()
                    {
                        let _ = reply.send(*result);
                    }
                }
            },
            Owed::ConfChange { index, term } => match r.take_proposal(index, term) {
                Some(ProposalReply::ConfChange(reply)) => {
                    let _ = reply.send(Ok(admin_status(r)));
                }
                Some(ProposalReply::Command(reply)) => {
                    let _ = reply.send(Err(errors::invalid("entry was not a command")));
                }
                None => {}
            },
        }
    }
}

/// Moves the node's clock past an applied version, unless that version is beyond
/// the maximum clock offset (a leader whose clock runs far ahead wrote it): then
/// the clock stays put, which is counted and logged at most once a minute.
fn observe_applied(hlc: &Hlc, range_id: u64, v: crate::hlc::Version) {
    static LAST_WARNED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if let Err(refused) = hlc.observe(v) {
        metrics::counter!("cairn_hlc_remote_ahead_total").increment(1);
        let now_ms = crate::hlc::wall_now_ms();
        let last = LAST_WARNED_MS.load(std::sync::atomic::Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= 60_000 {
            LAST_WARNED_MS.store(now_ms, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                range_id,
                ahead_ms = refused.ahead_ns / 1_000_000,
                "an applied version is ahead of this node's clock by more than max_clock_offset_ms: \
                 the clock does not follow it (is another node's clock far ahead?)"
            );
        }
    }
}

fn admin_status(r: &Replica) -> AdminResponse {
    let progress = if r.is_leader() {
        let store = r.raw.store();
        r.raw
            .raft
            .prs()
            .iter()
            .filter_map(|(id, p)| Some(ReplicaProgress { node_id: store.node_of(*id)?, matched: p.matched }))
            .collect()
    } else {
        Vec::new()
    };
    AdminResponse {
        desc: Some(r.shared.desc()),
        leader_node_id: r.leader_node(),
        commit_index: r.raw.raft.raft_log.committed,
        progress,
        ..Default::default()
    }
}

/// This node's replica as it stands, leader or not.
fn local_state(r: &Replica) -> AdminResponse {
    AdminResponse {
        desc: r.shared.initialized().then(|| r.shared.desc()),
        leader_node_id: r.leader_node(),
        applied_index: r.raw.store().apply.applied_index,
        last_version: Some(r.raw.store().apply.last_version.into()),
        ..Default::default()
    }
}

/// Applies a membership change; a leader that the change removes steps down first.
/// raft-rs keeps a removed leader leading (an untested branch, its comments say)
/// and then panics looking up its own progress. It can happen: a node becomes
/// leader (by election) after its removal was proposed and before it applied it
/// (found by the simulator, seed 110).
fn leave_before_own_removal(r: &mut Replica, cc: &ConfChange) -> raft::Result<raft::eraftpb::ConfState> {
    if cc.node_id == r.peer_id() && cc.get_change_type() == ConfChangeType::RemoveNode && r.is_leader() {
        let term = r.raw.raft.term;
        r.raw.raft.become_follower(term, raft::INVALID_ID);
        tracing::info!(range_id = r.range_id(), "leader applies its own removal: stepping down first");
    }
    r.raw.apply_conf_change(cc)
}

/// Transfers a leadership to the most caught-up other voter, unless a transfer
/// is already under way (raft-rs abandons one after an election timeout).
fn hand_over_leadership(r: &mut Replica) {
    if r.raw.raft.lead_transferee.is_some() {
        return;
    }
    let me = r.peer_id();
    let voters = r.raw.raft.prs().conf().voters().ids();
    let target = r
        .raw
        .raft
        .prs()
        .iter()
        .filter(|(id, _)| **id != me && voters.contains(**id))
        .max_by_key(|(id, p)| (p.matched, std::cmp::Reverse(**id)))
        .map(|(id, _)| *id);
    if let Some(target) = target {
        tracing::info!(range_id = r.range_id(), to_peer = target, "clock untrusted: handing leadership over");
        r.raw.transfer_leader(target);
    }
}

fn observe(observer: &mut Option<ApplyObserver>, range_id: u64, committed: &[Entry]) {
    if let Some(f) = observer.as_mut() {
        for e in committed {
            f(range_id, e);
        }
    }
}

fn wake(r: &mut Replica) {
    r.idle_ticks = 0;
    r.hibernating = false;
}

/// A leader hibernates once every replica has its whole log and nothing is pending;
/// a follower once it has missed a couple of heartbeats from a leader it still trusts.
fn maybe_hibernate(r: &mut Replica, cfg: &RaftConfig) {
    let busy = !r.proposals.is_empty()
        || !r.forwarded.is_empty()
        || !r.reads_inflight.is_empty()
        || !r.reads_waiting_apply.is_empty()
        || !r.reads_to_submit.is_empty();
    if busy || r.raw.raft.leader_id == raft::INVALID_ID {
        return;
    }
    match r.raw.raft.state {
        StateRole::Leader => {
            let last = r.raw.raft.raft_log.last_index();
            let committed = r.raw.raft.raft_log.committed;
            let caught_up = r.raw.raft.prs().iter().all(|(_, p)| p.matched == last) && committed == last;
            if caught_up && r.idle_ticks as usize >= cfg.election_ticks * 2 {
                r.hibernating = true;
            }
        }
        StateRole::Follower if r.idle_ticks as usize > cfg.heartbeat_ticks * 2 + 1 => {
            r.hibernating = true;
        }
        _ => {}
    }
}

/// Whether persisting `new` over `known` must be synced before the Ready's messages
/// leave. Term and vote must: a node that forgot its vote after a crash could vote
/// twice in one term. A commit index alone need not, and most hard-state changes on a
/// busy leader are just that: recovery takes the applied index as committed
/// (`raft_storage`), and the leader tells a restarted node the rest again.
fn hard_state_needs_sync(known: &raft::eraftpb::HardState, new: &raft::eraftpb::HardState) -> bool {
    (new.term != known.term || new.vote != known.vote) && !sabotage::active(Sabotage::NeverSyncVotes)
}

/// A ReadIndex context unique in the group: the leader keeps pending requests by
/// context and ignores a duplicate, so followers must not reuse each other's.
fn read_ctx(node_id: u64, seq: u64) -> Vec<u8> {
    let mut c = node_id.to_be_bytes().to_vec();
    c.extend_from_slice(&seq.to_be_bytes());
    c
}

fn parse_read_ctx(node_id: u64, ctx: &[u8]) -> Option<u64> {
    if ctx.get(..8)? != node_id.to_be_bytes() {
        return None;
    }
    ctx.get(8..16)?.try_into().ok().map(u64::from_be_bytes)
}

/// Forgets cached entries nobody needs any more: applied here and, on a leader,
/// replicated to every follower.
fn evict_entry_cache(r: &mut Replica) {
    let applied = r.raw.store().apply.applied_index;
    let upto = if r.is_leader() {
        r.raw.raft.prs().iter().map(|(_, p)| p.matched).min().unwrap_or(applied).min(applied)
    } else {
        applied
    };
    r.raw.mut_store().cache_evict_to(upto);
}

/// Drops the oldest half of the applied log once it passes the threshold. Each
/// replica does this on its own; a follower that falls behind the leader's
/// truncation point is caught up with a snapshot.
fn maybe_compact_log(engine: &Engine, r: &mut Replica, cfg: &RaftConfig) {
    let s = r.raw.store().apply;
    if s.applied_index.saturating_sub(s.truncated_index) <= cfg.log_gc_threshold {
        return;
    }
    let compact_to = s.applied_index - cfg.log_gc_threshold / 2;
    let Ok(term) = raft::Storage::term(r.raw.store(), compact_to) else { return };
    let id = r.range_id();
    let mut b = engine.batch();
    b.delete_range(Cf::RaftLog, &layout::log_key(id, 0), &layout::log_key(id, compact_to + 1));
    let next = layout::ApplyState { truncated_index: compact_to, truncated_term: term, ..s };
    b.put(Cf::RaftState, &layout::apply_state_key(id), &next.encode());
    engine.commit(b, false);
    r.raw.mut_store().apply = next;
    r.raw.mut_store().cache_evict_to(compact_to);
    metrics::counter!("cairn_raft_log_compactions_total").increment(1);
}

/// Deletes a replica's data, dedupe records, log and state, keeping only its term
/// and vote. A later incarnation has a peer id of its own, so this is not what
/// keeps it from double voting; it keeps the node's term for the range from ever
/// going back, which costs nothing.
fn purge_replica(
    b: &mut crate::storage::Batch<'_>,
    desc: &RangeDescriptor,
    holds_data: bool,
    hs: raft::eraftpb::HardState,
) {
    let id = desc.id;
    if !sabotage::active(Sabotage::KeepRemovedReplicaData) {
        if holds_data {
            let (lo, hi) = mvcc::data_span(&desc.start, &desc.end);
            b.delete_range(Cf::Data, &lo, &hi);
            let (lo, hi) = layout::dedupe_span(&desc.start, &desc.end);
            b.delete_range(Cf::Dedupe, &lo, &hi);
        }
        b.delete_range(Cf::RaftLog, &layout::log_key(id, 0), &layout::log_key(id + 1, 0));
    }
    apply::clear_raft_state(b, id, Some(hs));
}

/// Whether `local` is a range frozen for a merge that a snapshot of the range
/// `into` shows merged: frozen, and wholly inside `into`'s span (the left range
/// covers a frozen range's span only once it has merged it).
fn merged_into(local: &RangeDescriptor, into: &RangeDescriptor) -> bool {
    let starts_inside = local.start >= into.start;
    let ends_inside = into.end.is_empty() || (!local.end.is_empty() && local.end <= into.end);
    local.frozen_for_merge && local.id != into.id && starts_inside && ends_inside
}

fn ranges_overlap(a_start: &[u8], a_end: &[u8], b_start: &[u8], b_end: &[u8]) -> bool {
    let a_before_b_end = b_end.is_empty() || a_start < b_end;
    let b_before_a_end = a_end.is_empty() || b_start < a_end;
    a_before_b_end && b_before_a_end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim_disk::SimDisk;
    use cairn_proto::internal::RangeEpoch;

    /// Range 7 (voters 1, 2, 3), bootstrapped on a simulated disk.
    fn range_7_on(disk: &Arc<SimDisk>) -> (Arc<Engine>, RangeDescriptor) {
        let engine = Arc::new(Engine::simulated(disk.clone()));
        let desc = RangeDescriptor {
            id: 7,
            epoch: Some(RangeEpoch { version: 1, conf_ver: 1 }),
            replicas: (1..=3).map(|n| ReplicaDesc { node_id: n, learner: false, replica_id: n }).collect(),
            next_replica_id: 4,
            ..Default::default()
        };
        bootstrap_ranges(&engine, std::slice::from_ref(&desc));
        (engine, desc)
    }

    /// A leader of range 7 on node 1.
    fn leader_replica() -> Replica {
        let (engine, _) = range_7_on(&Arc::new(SimDisk::new()));
        let storage = RangeStorage::load(engine, 7).unwrap().unwrap();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut r = Replica::new(1, 1, storage, &RaftConfig::default(), &logger).unwrap();
        r.raw.raft.become_candidate();
        r.raw.raft.become_leader();
        r
    }

    /// Found by the simulator: raft-rs panics ("called `Option::unwrap()` on a `None`
    /// value") when a leader that applied its own removal persists entries.
    #[test]
    fn a_leader_applying_its_own_removal_steps_down_instead_of_panicking() {
        let mut r = leader_replica();
        let rd = r.raw.ready(); // the new leader's empty entry, now "persisted" below
        let last = rd.entries().last().cloned().expect("the leader's first entry");
        let st = r.raw.mut_store();
        st.cache_append(rd.entries());
        (st.last_index, st.last_term) = (last.index, last.term);
        let remove_me = ConfChange { change_type: ConfChangeType::RemoveNode as i32, node_id: 1, ..Default::default() };
        leave_before_own_removal(&mut r, &remove_me).unwrap();
        let _ = r.raw.advance(rd);
        assert!(!r.is_leader(), "it stepped down");
    }

    /// A transport that drops everything: these tests look at the disk only.
    struct NoPeers;
    impl RaftTransport for NoPeers {
        fn send_all(&self, _: &RangeStorage, _: Vec<Message>) {}
        fn send_control(&self, _: u64, _: RaftEnvelope) {}
        fn keepalive(&self, _: u64) {}
        fn silent_for(&self, _: u64, _: Instant) -> Duration {
            Duration::ZERO
        }
    }

    /// Node 1's store holding range 7 as bootstrapped, over a simulated disk that
    /// charges 1 ms per sync (so syncs can be counted).
    fn follower_store() -> (Store, Arc<SimDisk>, RangeDescriptor) {
        let disk = Arc::new(SimDisk::new());
        let (engine, desc) = range_7_on(&disk);
        let hlc = Arc::new(Hlc::new(1));
        let (store, _handle) = Store::open(
            1,
            engine,
            RaftConfig::default(),
            Default::default(),
            Arc::new(NoPeers),
            hlc,
            crate::clock::now(),
        )
        .unwrap();
        disk.set_sync_latency_ms(1);
        disk.take_owed_sync_ms();
        (store, disk, desc)
    }

    /// Delivers `msg` from its sender and handles the Ready; returns the syncs it took.
    fn deliver(store: &mut Store, disk: &SimDisk, desc: &RangeDescriptor, msg: Message) -> u64 {
        let env = RaftEnvelope { message: msg.encode_to_vec(), ..control_envelope(desc, Control::None) };
        store.handle(StoreMsg::Raft { from_node: msg.from, envelopes: vec![env] });
        store.process_ready();
        disk.take_owed_sync_ms()
    }

    #[test]
    fn a_vote_is_synced_before_it_is_answered_and_a_commit_advance_alone_is_not() {
        use super::super::{RAFT_INIT_INDEX as INDEX, RAFT_INIT_TERM as TERM};
        let (mut store, disk, desc) = follower_store();
        let base =
            |t: MessageType, term: u64| Message { msg_type: t as i32, from: 2, to: 1, term, ..Default::default() };
        let term = TERM + 1;
        let vote = Message { log_term: TERM, index: INDEX, ..base(MessageType::MsgRequestVote, term) };
        assert_eq!(deliver(&mut store, &disk, &desc, vote), 1, "the vote is synced before the reply leaves");
        let hs = super::super::raft_storage::persisted_hard_state(&store.engine, 7).unwrap();
        assert_eq!((hs.term, hs.vote), (term, 2), "node 1 voted for node 2");

        // Node 2 won: one entry, then a heartbeat that only commits it.
        let entry = Entry { term, index: INDEX + 1, ..Default::default() };
        let append =
            Message { log_term: TERM, index: INDEX, entries: vec![entry], ..base(MessageType::MsgAppend, term) };
        assert_eq!(deliver(&mut store, &disk, &desc, append), 1, "appended entries are synced");
        let commit = Message { commit: INDEX + 1, ..base(MessageType::MsgHeartbeat, term) };
        assert_eq!(deliver(&mut store, &disk, &desc, commit), 0, "a commit advance alone is not synced");
        assert_eq!(store.replicas[&7].raw.raft.raft_log.committed, INDEX + 1);
        let hs = super::super::raft_storage::persisted_hard_state(&store.engine, 7).unwrap();
        assert_eq!(hs.commit, INDEX + 1, "but it is written");
    }

    /// Found by the whole-node simulation (seed 8070): a node holding range 8 got a
    /// message for range 4's peer 4, created an empty replica for it, then one for
    /// range 4's newer peer 5, which replaced the empty one. The empty replica's
    /// placeholder descriptor has no bounds, and purging "its" data deleted every
    /// key on the node: the counter, held by range 8, read as never written.
    #[test]
    fn replacing_an_empty_replica_deletes_no_other_ranges_data() {
        let disk = Arc::new(SimDisk::new());
        let engine = Arc::new(Engine::simulated(disk.clone()));
        let desc = RangeDescriptor {
            id: 8,
            start: b"a".to_vec(),
            end: b"m".to_vec(),
            epoch: Some(RangeEpoch { version: 1, conf_ver: 1 }),
            replicas: (1..=3).map(|n| ReplicaDesc { node_id: n, learner: false, replica_id: n }).collect(),
            next_replica_id: 4,
            ..Default::default()
        };
        bootstrap_ranges(&engine, std::slice::from_ref(&desc));
        let v = crate::hlc::Version { wall_ns: 10, logical: 0, node_id: 2 };
        let mut b = engine.batch();
        b.put(Cf::Data, &crate::keys::mvcc::encode(b"c", v), &crate::keys::mvcc::encode_value(b"104"));
        engine.commit(b, true);
        let (mut store, _handle) = Store::open(
            1,
            engine.clone(),
            RaftConfig::default(),
            Default::default(),
            Arc::new(NoPeers),
            Arc::new(Hlc::new(1)),
            crate::clock::now(),
        )
        .unwrap();
        let heartbeat_to = |peer: u64| {
            let msg = Message {
                msg_type: MessageType::MsgHeartbeat as i32,
                from: 1,
                to: peer,
                term: 7,
                ..Default::default()
            };
            let env = RaftEnvelope {
                range_id: 4,
                start: b"m".to_vec(),
                end: b"z".to_vec(),
                conf_ver: 3,
                message: msg.encode_to_vec(),
                control: Control::None as i32,
            };
            StoreMsg::Raft { from_node: 2, envelopes: vec![env] }
        };
        store.handle(heartbeat_to(4));
        store.process_ready();
        assert_eq!(store.replicas[&4].peer_id(), 4, "an empty replica for peer 4");
        store.handle(heartbeat_to(5));
        store.process_ready();
        assert_eq!(store.replicas[&4].peer_id(), 5, "replaced by the newer peer");
        let kept = mvcc::get_live(&engine, b"c", crate::hlc::Version::MAX, 0).map(|l| l.value);
        assert_eq!(kept.as_deref(), Some(b"104".as_slice()), "range 8's data survives");
    }

    #[test]
    fn only_term_and_vote_changes_force_a_sync() {
        use raft::eraftpb::HardState;
        let known = HardState { term: 5, vote: 2, commit: 40 };
        let with = |term, vote, commit| HardState { term, vote, commit };
        assert!(!hard_state_needs_sync(&known, &with(5, 2, 41)), "a commit advance alone");
        assert!(hard_state_needs_sync(&known, &with(6, 0, 40)), "a new term");
        assert!(hard_state_needs_sync(&known, &with(5, 3, 40)), "a new vote");
        assert!(hard_state_needs_sync(&known, &with(6, 6, 45)), "a campaign with a commit advance");
    }
}
