//! The simulator's safety checks that are not about client histories:
//! - at most one leader per range per term, checked after every turn;
//! - a committed entry never changes: every node that applies index i of a
//!   range applies the same term and bytes there;
//! - a vote survives a crash: after a restart, every node's disk still holds,
//!   for each range, the highest-term vote it was seen granting;
//! - after healing, every range converges: one leader that all its members
//!   follow, members agreeing on the descriptor, and identical data.

use super::node::SimNode;
use crate::storage::{mvcc, Cf};
use cairn_proto::internal::RangeDescriptor;
use parking_lot::Mutex;
use raft::eraftpb::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Who led each (range, term).
#[derive(Default)]
pub struct LeaderTerms {
    leaders: BTreeMap<(u64, u64), u64>,
}

impl LeaderTerms {
    pub fn observe(&mut self, node: u64, leader_terms: &[(u64, u64)]) -> Result<(), String> {
        for &(range, term) in leader_terms {
            let first = *self.leaders.entry((range, term)).or_insert(node);
            if first != node {
                return Err(format!("two leaders of range {range} in term {term}: nodes {first} and {node}"));
            }
        }
        Ok(())
    }

    pub fn terms_seen(&self) -> usize {
        self.leaders.len()
    }
}

/// The votes each node was seen granting, by (node, range): the highest term
/// and the candidate. Raft's one-vote-per-term promise holds across crashes only
/// if each of them is on disk before the answer leaves.
#[derive(Default)]
pub struct VoteLedger {
    granted: BTreeMap<(u64, u64), (u64, u64)>,
}

impl VoteLedger {
    /// Records `msg` if it grants a vote; returns whether it did.
    pub fn observe(&mut self, node: u64, range: u64, msg: &raft::eraftpb::Message) -> bool {
        if msg.get_msg_type() != raft::eraftpb::MessageType::MsgRequestVoteResponse || msg.reject {
            return false;
        }
        let last = self.granted.entry((node, range)).or_insert((0, 0));
        if msg.term >= last.0 {
            *last = (msg.term, msg.to);
        }
        true
    }

    /// Whether node `node`'s disk, as it restarts, still holds every vote it granted.
    pub fn check_durable(&self, node: u64, engine: &crate::storage::Engine) -> Result<(), String> {
        for (&(_, range), &(term, candidate)) in self.granted.range((node, 0)..=(node, u64::MAX)) {
            let hs = crate::raftstore::raft_storage::persisted_hard_state(engine, range).unwrap_or_default();
            if hs.term < term || (hs.term == term && hs.vote != candidate) {
                return Err(format!(
                    "node {node} forgot its vote for node {candidate} in term {term} of range {range} across a crash \
                     (its disk holds term {}, vote {}): it may vote twice in that term",
                    hs.term, hs.vote
                ));
            }
        }
        Ok(())
    }
}

/// Every committed entry any node applied, by (range, index).
#[derive(Default)]
pub struct CommittedLog {
    entries: BTreeMap<(u64, u64), (u64, u32)>,
    pub violations: Vec<String>,
    pub applied: u64,
}

impl CommittedLog {
    pub fn shared() -> Arc<Mutex<CommittedLog>> {
        Arc::new(Mutex::new(CommittedLog::default()))
    }

    pub fn record(&mut self, node: u64, range: u64, e: &Entry) {
        self.applied += 1;
        let digest = crc32fast::hash(&e.data) ^ (e.entry_type as u32).rotate_left(29);
        let first = *self.entries.entry((range, e.index)).or_insert((e.term, digest));
        if first != (e.term, digest) && self.violations.len() < 10 {
            self.violations.push(format!(
                "node {node} applied a different entry at range {range} index {}: term {} (first seen: term {})",
                e.index, e.term, first.0
            ));
        }
    }

    pub fn distinct(&self) -> usize {
        self.entries.len()
    }
}

type Pair = (Vec<u8>, Vec<u8>);

/// What the convergence check found.
#[derive(Debug, Default)]
pub struct Converged {
    pub ranges: usize,
    pub replicas: usize,
    pub keys: usize,
}

/// Checks that the cluster has settled: call once every fault is healed and
/// the cluster has had time to catch up. `Err` names the first disagreement.
pub fn convergence(nodes: &[SimNode]) -> Result<Converged, String> {
    // The newest descriptor of each range, as any member reports it.
    let mut newest: BTreeMap<u64, RangeDescriptor> = BTreeMap::new();
    let mut views = BTreeMap::new();
    for n in nodes {
        let running = n.running.as_ref().ok_or_else(|| format!("node {} is still down", n.id))?;
        for v in running.store.replica_views() {
            if !v.initialized {
                continue;
            }
            let ver = |d: &RangeDescriptor| d.epoch.map(|e| (e.version, e.conf_ver));
            if newest.get(&v.range_id).is_none_or(|d| ver(d) < ver(&v.desc)) {
                newest.insert(v.range_id, v.desc.clone());
            }
            views.insert((v.range_id, n.id), v);
        }
    }
    // The live ranges tile the keyspace: a split-away left part is still the same range id.
    let mut out = Converged::default();
    for (range, desc) in &newest {
        let members: Vec<u64> = desc.replicas.iter().map(|r| r.node_id).collect();
        let mut leader = None;
        let mut applied = None;
        // The first member's data, which every other member must match.
        let mut data: Option<(u64, Vec<Pair>)> = None;
        for m in &members {
            let v = views.get(&(*range, *m)).ok_or_else(|| {
                let all: String =
                    newest.keys().map(|r| format!("\n  range {r}:{}", describe_range(nodes, *r))).collect();
                format!("range {range}: member node {m} has no replica{all}")
            })?;
            if v.desc != *desc {
                return Err(format!(
                    "range {range}: node {m} has descriptor epoch {:?}, newest is {:?}",
                    v.desc.epoch, desc.epoch
                ));
            }
            if v.leader_id == 0 || leader.is_some_and(|l| l != v.leader_id) {
                return Err(format!(
                    "range {range}: node {m} follows leader {} (others: {leader:?}){}",
                    v.leader_id,
                    describe_range(nodes, *range)
                ));
            }
            leader = Some(v.leader_id);
            if applied.is_some_and(|a| a != v.applied) {
                return Err(format!(
                    "range {range}: node {m} applied {} but another member applied {applied:?}",
                    v.applied
                ));
            }
            applied = Some(v.applied);
            let node = nodes.iter().find(|n| n.id == *m).and_then(|n| n.running.as_ref());
            let engine = node.map(|r| r.handle.engine.clone()).ok_or_else(|| format!("node {m} is down"))?;
            let (lo, hi) = mvcc::data_span(&desc.start, &desc.end);
            let mut pairs = Vec::new();
            engine.scan(Cf::Data, &lo, &hi, |k, v| {
                pairs.push((k.to_vec(), v.to_vec()));
                true
            });
            match &data {
                Some((first, theirs)) if *theirs != pairs => {
                    return Err(format!(
                        "range {range}: node {m} holds {} data entries, node {first} holds {} (or they differ)",
                        pairs.len(),
                        theirs.len()
                    ))
                }
                Some(_) => {}
                None => {
                    out.keys += pairs.len();
                    data = Some((*m, pairs));
                }
            }
            out.replicas += 1;
        }
        if !members.contains(&leader.unwrap_or(0)) {
            return Err(format!("range {range}: leader {leader:?} is not a member"));
        }
        out.ranges += 1;
    }
    Ok(out)
}

/// Every leader replica on a running node: its node's engine and its range.
fn leaders(nodes: &[SimNode]) -> Vec<(Arc<crate::storage::Engine>, RangeDescriptor)> {
    nodes
        .iter()
        .filter_map(|n| n.running.as_ref())
        .flat_map(|r| {
            r.store.replica_views().into_iter().filter(|v| v.is_leader).map(|v| (r.handle.engine.clone(), v.desc))
        })
        .collect()
}

/// The live value of `key` on a leader of the range holding it: `None` if no
/// leader holds the key's range, `Some(None)` if the key is absent there.
fn read_at_leader(leaders: &[(Arc<crate::storage::Engine>, RangeDescriptor)], key: &[u8]) -> Option<Option<Vec<u8>>> {
    let mut holders = leaders.iter().filter(|(_, d)| crate::keys::in_range(key, &d.start, &d.end)).peekable();
    holders.peek()?;
    Some(holders.find_map(|(engine, _)| mvcc::get_live(engine, key, crate::hlc::Version::MAX, 0).map(|l| l.value)))
}

/// The keys of `acknowledged` that are not live on the leader of the range
/// holding them (call after convergence, when every range has one).
pub fn missing(nodes: &[SimNode], acknowledged: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let leaders = leaders(nodes);
    acknowledged.iter().filter(|key| !matches!(read_at_leader(&leaders, key), Some(Some(_)))).cloned().collect()
}

/// Every node's view of one range, for failure messages.
pub fn describe_range(nodes: &[SimNode], range_id: u64) -> String {
    let mut out = String::new();
    for n in nodes {
        let Some(r) = n.running.as_ref() else {
            out.push_str(&format!("\n    node {}: down", n.id));
            continue;
        };
        match r.store.replica_views().into_iter().find(|v| v.range_id == range_id) {
            None => out.push_str(&format!("\n    node {}: no replica", n.id)),
            Some(v) => out.push_str(&format!(
                "\n    node {}: init={} leader={} (self={}) term={} commit={} applied={} epoch={:?} members={:?} matched={:?}",
                n.id,
                v.initialized,
                v.leader_id,
                v.is_leader,
                v.term,
                v.commit,
                v.applied,
                v.desc.epoch.map(|e| (e.version, e.conf_ver)),
                v.desc.replicas.iter().map(|r| (r.node_id, r.learner)).collect::<Vec<_>>(),
                v.matched
            )),
        }
    }
    out
}

/// The counter's value on the leader of the range holding `key` (0 if absent).
pub fn counter_value(nodes: &[SimNode], key: &[u8]) -> Result<i64, String> {
    match read_at_leader(&leaders(nodes), key) {
        None => Err("no leader holds the counter's range".into()),
        Some(None) => Ok(0),
        Some(Some(raw)) => std::str::from_utf8(&raw)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("the counter holds a non-integer: {raw:?}")),
    }
}
