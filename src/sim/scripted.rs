//! Scripted runs: three real store loops on simulated disks whose messages are
//! delivered by hand, one round at a time, so a scenario that needs one exact
//! interleaving (a message lost here, a batch cut there) happens every time.
//! The random simulation finds such interleavings by luck; these pin them.

use crate::hlc::Hlc;
use crate::raftstore::msg::StoreMsg;
use crate::raftstore::raft_storage::RangeStorage;
use crate::raftstore::store::{self, Store};
use crate::raftstore::transport::{destination, envelope, RaftTransport};
use crate::raftstore::{RaftConfig, StoreHandle};
use crate::storage::sim_disk::SimDisk;
use crate::storage::Engine;
use cairn_proto::internal::{
    admin_request, mutation, raft_command, AdminRequest, Mutation, RaftCommand, RaftEnvelope, RangeDescriptor,
    RangeEpoch, Replica, WriteBatch,
};
use parking_lot::Mutex;
use prost011::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RANGE: u64 = 7;

/// A packet between two scripted nodes.
struct Sent {
    from: u64,
    to: u64,
    env: RaftEnvelope,
    snapshot: bool,
}

struct Outbox {
    node: u64,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl RaftTransport for Outbox {
    fn send_all(&self, store: &RangeStorage, msgs: Vec<Message>) {
        let mut sent = self.sent.lock();
        for m in msgs {
            let Some(to) = destination(store, &m) else { continue };
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            sent.push(Sent { from: self.node, to, env: envelope(store, &m), snapshot });
        }
    }
    fn send_control(&self, to: u64, env: RaftEnvelope) {
        self.sent.lock().push(Sent { from: self.node, to, env, snapshot: false });
    }
    fn keepalive(&self, _: u64) {}
    fn silent_for(&self, _: u64, _: Instant) -> Duration {
        Duration::ZERO
    }
}

/// Three nodes holding range 7 (voters 1, 2, 3). Time stands still: nothing
/// ticks, so only what the script delivers happens.
struct Scripted {
    stores: Vec<Store>,
    handles: Vec<StoreHandle>,
    sent: Arc<Mutex<Vec<Sent>>>,
    now: Instant,
}

/// Where a scripted write's outcome arrives.
type WriteReply =
    tokio::sync::oneshot::Receiver<Result<crate::raftstore::apply::Applied, cairn_proto::internal::RangeError>>;

impl Scripted {
    fn new() -> Result<Scripted, String> {
        let replicas: Vec<Replica> = (1..=3).map(|n| Replica { node_id: n, learner: false, replica_id: n }).collect();
        let desc = RangeDescriptor {
            id: RANGE,
            epoch: Some(RangeEpoch { version: 1, conf_ver: 1 }),
            next_replica_id: 4,
            replicas,
            ..Default::default()
        };
        // One entry per append, so a follower that lags is caught up over several
        // messages, each committing only as far as it carries.
        let cfg = RaftConfig { max_size_per_msg: 1, ..RaftConfig::default() };
        let sent = Arc::new(Mutex::new(Vec::new()));
        let now = crate::clock::now();
        let (mut stores, mut handles) = (Vec::new(), Vec::new());
        for node in 1..=3 {
            let engine = Arc::new(Engine::simulated(Arc::new(SimDisk::new())));
            store::bootstrap_ranges(&engine, std::slice::from_ref(&desc));
            let transport = Arc::new(Outbox { node, sent: sent.clone() });
            let (s, h) = Store::open(
                node,
                engine,
                cfg.clone(),
                Default::default(),
                transport,
                Arc::new(Hlc::new(node as u32)),
                now,
            )
            .map_err(|e| e.to_string())?;
            stores.push(s);
            handles.push(h);
        }
        Ok(Scripted { stores, handles, sent, now })
    }

    fn turn_all(&mut self) {
        for s in &mut self.stores {
            s.turn(self.now);
        }
    }

    /// Delivers what was sent that `keep` lets through (the rest is lost), then
    /// gives every node a turn. Returns how many packets were delivered.
    fn round(&mut self, keep: &dyn Fn(&Sent, &Message) -> bool) -> usize {
        self.turn_all();
        let sent = std::mem::take(&mut *self.sent.lock());
        let mut delivered = 0;
        for p in sent {
            let msg = Message::decode(p.env.message.as_slice()).unwrap_or_default();
            if !keep(&p, &msg) {
                continue;
            }
            delivered += 1;
            let to = &self.handles[(p.to - 1) as usize];
            if p.snapshot {
                let _ = to.send(StoreMsg::Snapshot { from_node: p.from, envelope: p.env });
                let back = &self.handles[(p.from - 1) as usize];
                let _ = back.send(StoreMsg::SnapshotStatus { range_id: RANGE, to: p.to, ok: true });
            } else {
                let _ = to.send(StoreMsg::Raft { from_node: p.from, envelopes: vec![p.env] });
            }
        }
        self.turn_all();
        delivered
    }

    /// Rounds until nothing more is sent, checking `invariant` after each.
    fn settle(
        &mut self,
        keep: &dyn Fn(&Sent, &Message) -> bool,
        invariant: &dyn Fn(&Scripted) -> Result<(), String>,
    ) -> Result<(), String> {
        for _ in 0..200 {
            let delivered = self.round(keep);
            invariant(self)?;
            if delivered == 0 && self.sent.lock().is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn write(&mut self, key: &str, value: &str) -> WriteReply {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cmd = RaftCommand {
            judge_expiry_at_leader: false,
            expiry_judged_at_ms: 0,
            request_id: format!("scripted-{key}").into_bytes(),
            proposed_version: None,
            cmd: Some(raft_command::Cmd::Write(WriteBatch {
                mutations: vec![Mutation {
                    expiry: None,
                    key: super::workload::encode_key(key),
                    condition: None,
                    op: Some(mutation::Op::Put(value.as_bytes().to_vec())),
                    value_kind: 0,
                }],
            })),
        };
        let _ = self.handles[0].send(StoreMsg::Command { range_id: RANGE, epoch: None, cmd, reply: tx });
        rx
    }

    fn admin(&mut self, op: admin_request::Op) -> Result<(), String> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let what = format!("{op:?}");
        let req = AdminRequest { op: Some(op) };
        let _ = self.handles[0].send(StoreMsg::Admin { range_id: RANGE, req, reply: tx });
        self.settle(&|_, _| true, &|_| Ok(()))?;
        match rx.try_recv() {
            Ok(Ok(_)) => Ok(()),
            other => Err(format!("admin {what} did not complete: {other:?}")),
        }
    }

    fn value_on(&self, node: u64, key: &str) -> Option<Vec<u8>> {
        let engine = &self.handles[(node - 1) as usize].engine;
        crate::storage::mvcc::get_live(engine, &super::workload::encode_key(key), crate::hlc::Version::MAX, 0)
            .map(|l| l.value)
    }
}

/// The leader (node 1) credits no replica with entries it does not hold: for
/// each peer it tracks, the replica with that peer id holds the log up to the
/// peer's matched index, and a peer id no replica has any more is credited with
/// nothing.
fn leader_credits_only_what_is_held(s: &Scripted) -> Result<(), String> {
    let views = s.stores[0].replica_views();
    let Some(leader) = views.iter().find(|v| v.range_id == RANGE && v.is_leader) else { return Ok(()) };
    for (node, matched) in leader.matched.iter().copied() {
        if node == 1 || node == 0 {
            continue;
        }
        let held = s.stores[(node - 1) as usize]
            .replica_views()
            .into_iter()
            .find(|v| v.range_id == RANGE)
            .filter(|v| Some(v.peer_id) == crate::raftstore::membership::replica_id_of(&leader.desc, node))
            .map(|v| v.last_index)
            .unwrap_or(0);
        if matched > held {
            return Err(format!(
                "the leader credits node {node}'s replica with the log up to {matched}, but it holds up to {held}"
            ));
        }
    }
    Ok(())
}

/// A node removed from a range, whose replica acknowledged its removal but did
/// not apply it, is added back while its old replica still runs. The leader's
/// catch-up of the new replica reaches the old one one entry at a time, and the
/// first such append commits the removal there: the old replica acknowledges
/// the append, applies its own removal and deletes its log.
///
/// Had the new replica the old one's peer id (as when peer ids were node ids),
/// the leader would count that acknowledgement for the new replica and credit
/// an empty replica with entries it never received: it then ignores the empty
/// replica's rejections as stale, never sends it a snapshot, and the replica
/// never catches up (its heartbeats carry a commit beyond its log). With an id
/// per incarnation, the old replica ignores traffic for the new peer (or is
/// replaced by it), and the new one is caught up by a snapshot.
///
/// Returns what happened, or the first violation.
pub fn readd_while_the_old_replica_lags() -> Result<String, String> {
    let mut s = Scripted::new()?;
    s.stores[0].campaign(RANGE);
    s.settle(&|_, _| true, &leader_credits_only_what_is_held)?;
    let mut w1 = s.write("before", "1");
    s.settle(&|_, _| true, &leader_credits_only_what_is_held)?;
    if !matches!(w1.try_recv(), Ok(Ok(_))) {
        return Err("the first write was not acknowledged".into());
    }

    // Remove node 3. It receives and acknowledges the removal, but every message
    // that would tell it the removal committed is lost.
    let (tx, mut removed) = tokio::sync::oneshot::channel();
    let req = AdminRequest { op: Some(admin_request::Op::RemoveReplica(3)) };
    let _ = s.handles[0].send(StoreMsg::Admin { range_id: RANGE, req, reply: tx });
    let entries_only_to_3 = |p: &Sent, m: &Message| p.to != 3 || !m.entries.is_empty();
    s.settle(&entries_only_to_3, &leader_credits_only_what_is_held)?;
    if !matches!(removed.try_recv(), Ok(Ok(_))) {
        return Err("the removal did not complete".into());
    }
    let mut w2 = s.write("between", "2");
    s.settle(&entries_only_to_3, &leader_credits_only_what_is_held)?;
    if !matches!(w2.try_recv(), Ok(Ok(_))) {
        return Err("the write after the removal was not acknowledged".into());
    }

    // Add node 3 back and let everything through.
    s.admin(admin_request::Op::AddLearner(3))?;
    s.settle(&|_, _| true, &leader_credits_only_what_is_held)?;

    let view = s.stores[2].replica_views().into_iter().find(|v| v.range_id == RANGE);
    let Some(view) = view.filter(|v| v.initialized) else {
        return Err("node 3's new replica was never caught up".into());
    };
    if s.value_on(3, "between").as_deref() != Some(b"2".as_slice()) {
        return Err("node 3's new replica lacks the write made while it was out".into());
    }
    Ok(format!("node 3 is back as peer {} and holds the log up to {}", view.peer_id, view.last_index))
}
