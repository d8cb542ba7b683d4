//! Runs the controller on the node that leads the meta range: reads the
//! cluster view, asks `plan` for actions, and executes them (bounded in
//! number, never two on the same range at once, each re-checked against the
//! range's leader first). Balancing (`balance`) runs only when nothing needs
//! repair and nothing is in flight. Every decision is logged, counted and
//! recorded in the cluster event log (`meta::events`) with its reason.

use super::balance::{self, Decision};
use super::merges::{self, MergePair, MergePolicy};
use super::plan::{self, Action, NodeView, RangeView};
use super::view;
use crate::gateway::Gateway;
use crate::meta::admin;
use crate::meta::{self, catalog, events, registry};
use cairn_proto::internal::RangeDescriptor;
use cairn_proto::kv::ClusterEvent;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_CONCURRENT_ACTIONS: usize = 4;
/// Replica moves started at once for balancing (each one a snapshot sent).
const MAX_CONCURRENT_MOVES: usize = 2;
/// How long a range must have stayed over-replicated before its extra voter goes.
const EXTRA_VOTER_GRACE: Duration = Duration::from_secs(30);
/// How long a range may stay frozen for a merge before the controller takes it
/// for abandoned (a merge takes at most seconds) and thaws it, unless it merged.
const FROZEN_GRACE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Controller {
    gw: Arc<Gateway>,
    rf: usize,
    /// A node silent this long is dead (`plan::NodeView::dead`).
    dead_after_ms: u64,
    /// Whether to balance replicas and leaders once nothing needs repair.
    rebalance: bool,
    in_flight: Arc<Mutex<HashSet<u64>>>,
    /// Ranges found with a voter too many, and since when (without a break). An
    /// extra voter is removed only once it has been there for `EXTRA_VOTER_GRACE`,
    /// so that an operator moving a replica by hand (add, then remove, with a
    /// leader transfer between) is not raced into leaving the range a voter short.
    over_replicated: Arc<Mutex<HashMap<u64, Instant>>>,
    merge: MergePolicy,
    /// How long a pair must stay mergeable (without a break) before it merges.
    merge_after: Duration,
    /// Pairs found mergeable, and since when.
    merge_candidates: Arc<Mutex<HashMap<MergePair, Instant>>>,
    /// Ranges found frozen for a merge, and since when.
    frozen_since: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Controller {
    pub fn new(
        gw: Arc<Gateway>,
        rf: usize,
        dead_after_ms: u64,
        rebalance: bool,
        merge: MergePolicy,
        merge_after: Duration,
    ) -> Self {
        Controller {
            gw,
            rf,
            dead_after_ms,
            rebalance,
            in_flight: Default::default(),
            over_replicated: Default::default(),
            merge,
            merge_after,
            merge_candidates: Default::default(),
            frozen_since: Default::default(),
        }
    }

    fn leads_meta(&self) -> bool {
        self.gw.store.registry.read().get(&meta::META_RANGE_ID).is_some_and(|r| r.is_leader())
    }

    pub async fn tick(self) {
        if !self.leads_meta() {
            return;
        }
        // Each range's replication factor comes from its table: without the catalog
        // the controller would act on the cluster's, and could trim a table's extra replicas.
        let (nodes, records, states, tables) = match (
            registry::list(&self.gw).await,
            self.gw.load_directory().await,
            registry::states(&self.gw).await,
            catalog::list(&self.gw).await,
        ) {
            (Ok(n), Ok(r), Ok(s), Ok(t)) => (n, r, s, t),
            _ => return,
        };
        let nodes = view::nodes(&nodes, &states, crate::hlc::wall_now_ms(), self.dead_after_ms);
        let busy = self.in_flight.lock().clone();
        // Where records overlap (a merged range's retired neighbour re-reported by its
        // old leader), plan on the newer one only.
        let current: Vec<_> =
            crate::gateway::directory::Directory::from_records(records.iter().cloned()).records().cloned().collect();
        let ranges = view::ranges(&current, &tables, &busy);
        let rf_of: HashMap<u64, usize> = ranges.iter().map(|r| (r.id, r.rf_or(self.rf))).collect();
        let dead: Arc<HashSet<u64>> =
            Arc::new(nodes.iter().filter(|n| n.dead || n.decommissioning).map(|n| n.id).collect());
        let room = MAX_CONCURRENT_ACTIONS.saturating_sub(busy.len());
        let mut decisions: Vec<Decision> = plan::plan(&nodes, &ranges, self.rf, room)
            .into_iter()
            .map(|action| {
                let rf = rf_of.get(&action.range()).copied().unwrap_or(self.rf);
                Decision { why: repair_reason(&action, &nodes, rf), action }
            })
            .collect();
        let now = crate::clock::now();
        self.thaw_abandoned(&records, &busy, now);
        // Merges (and the moves that align a pair first) come after repairs and before
        // balancing, which would otherwise move the replicas being aligned.
        if decisions.is_empty() {
            decisions = self.merge_steps(&nodes, &ranges, &busy, now);
        }
        // Balancing reads the directory, which shows a move only once it is done:
        // with anything in flight it would decide on counts about to change.
        if self.rebalance && decisions.is_empty() && busy.is_empty() {
            decisions = balance::balance(&nodes, &ranges, self.rf, MAX_CONCURRENT_MOVES, room);
        }
        let overdue: HashSet<u64> = {
            let mut over = self.over_replicated.lock();
            let since_before = std::mem::take(&mut *over);
            for d in decisions.iter().filter(|d| matches!(d.action, Action::RemoveReplica { .. })) {
                let range = d.action.range();
                over.insert(range, since_before.get(&range).copied().unwrap_or(now));
            }
            over.iter()
                .filter(|(_, since)| now.saturating_duration_since(**since) >= EXTRA_VOTER_GRACE)
                .map(|(r, _)| *r)
                .collect()
        };
        for decision in decisions {
            let range = decision.action.range();
            if matches!(decision.action, Action::RemoveReplica { .. }) && !overdue.contains(&range) {
                continue;
            }
            // A merge holds both of its ranges.
            let held: Vec<u64> = match decision.action {
                Action::MergeRanges { left, right } => vec![left, right],
                _ => vec![range],
            };
            self.in_flight.lock().extend(held.iter().copied());
            let me = self.clone();
            let dead = dead.clone();
            let rf = rf_of.get(&range).copied().unwrap_or(self.rf);
            tokio::spawn(async move {
                me.carry_out(decision, rf, &dead).await;
                let mut in_flight = me.in_flight.lock();
                for r in held {
                    in_flight.remove(&r);
                }
            });
        }
    }

    /// The next steps of the merges that are due: pairs mergeable for `merge_after`
    /// without a break (a pair held by an action in flight keeps its time).
    fn merge_steps(
        &self,
        nodes: &[NodeView],
        ranges: &[RangeView],
        busy: &HashSet<u64>,
        now: Instant,
    ) -> Vec<Decision> {
        let pairs = merges::candidates(nodes, ranges, self.rf, self.merge);
        let due: Vec<MergePair> = {
            let mut since = self.merge_candidates.lock();
            let before = std::mem::take(&mut *since);
            for (p, t) in &before {
                if busy.contains(&p.left) || busy.contains(&p.right) {
                    since.insert(*p, *t);
                }
            }
            for p in &pairs {
                since.insert(*p, before.get(p).copied().unwrap_or(now));
            }
            pairs.into_iter().filter(|p| now.saturating_duration_since(since[p]) >= self.merge_after).collect()
        };
        let view = |id: u64| ranges.iter().find(|r| r.id == id);
        due.into_iter()
            .take(MAX_CONCURRENT_MOVES)
            .filter_map(|p| {
                let (l, r) = (view(p.left)?, view(p.right)?);
                let action = merges::next_step(p, ranges)?;
                let sizes = format!(
                    "ranges {} and {} hold {} bytes and serve {} requests/s together, at or under the merge \
                     thresholds ({} bytes, {} requests/s) for {} s",
                    p.left,
                    p.right,
                    l.bytes + r.bytes,
                    l.qps + r.qps,
                    self.merge.max_bytes,
                    self.merge.max_qps,
                    self.merge_after.as_secs()
                );
                let why = match action {
                    Action::MergeRanges { .. } => sizes,
                    _ => format!("aligning range {}'s replicas with range {}'s for a merge: {sizes}", p.right, p.left),
                };
                Some(Decision { action, why })
            })
            .collect()
    }

    /// Thaws ranges left frozen by a merge that did not finish (its driver died):
    /// the left range is fenced first, so a merge command still in flight cannot
    /// apply after the thaw (`meta::merge::abandon`).
    fn thaw_abandoned(&self, records: &[cairn_proto::internal::RangeRecord], busy: &HashSet<u64>, now: Instant) {
        let frozen: Vec<&RangeDescriptor> =
            records.iter().filter_map(|r| r.desc.as_ref()).filter(|d| d.frozen_for_merge).collect();
        let overdue: Vec<(u64, RangeDescriptor)> = {
            let mut since = self.frozen_since.lock();
            let before = std::mem::take(&mut *since);
            for d in &frozen {
                since.insert(d.id, before.get(&d.id).copied().unwrap_or(now));
            }
            frozen
                .iter()
                .filter(|d| now.saturating_duration_since(since[&d.id]) >= FROZEN_GRACE && !busy.contains(&d.id))
                .filter_map(|d| {
                    // Its left neighbour, or the range that already merged it (its driver died
                    // before deleting its record): abandoning then only records the merge.
                    let left = records.iter().filter_map(|r| r.desc.as_ref()).find(|l| {
                        l.id != d.id && (l.end == d.start || crate::keys::in_range(&d.start, &l.start, &l.end))
                    })?;
                    Some((left.id, (*d).clone()))
                })
                .filter(|(left, _)| !busy.contains(left))
                .collect()
        };
        for (left, right) in overdue {
            self.in_flight.lock().extend([left, right.id]);
            let me = self.clone();
            tokio::spawn(async move {
                let result = crate::meta::merge::abandon(&me.gw, left, &right).await;
                let outcome = match &result {
                    Ok(Some(_)) => "done: the merge had applied; recorded it".to_string(),
                    Ok(None) => "done: thawed".to_string(),
                    Err(e) => format!("failed: {}", e.message()),
                };
                let event = ClusterEvent {
                    kind: "thaw".into(),
                    range_id: right.id,
                    reason: format!("frozen for a merge into range {left} for over {} s", FROZEN_GRACE.as_secs()),
                    outcome,
                    ..Default::default()
                };
                events::record_or_log(&me.gw, event).await;
                let mut in_flight = me.in_flight.lock();
                in_flight.remove(&left);
                in_flight.remove(&right.id);
            });
        }
    }

    /// Carries out `action` if the range's leader still agrees it is needed: the
    /// directory the plan read is written by range leaders and can lag a
    /// membership change, and acting on a stale count adds a replica too many
    /// (or removes one too many).
    /// `dead`: the nodes found dead or decommissioning when the action was planned
    /// (their replicas do not count towards the replication factor).
    async fn carry_out(&self, decision: Decision, rf: usize, dead: &HashSet<u64>) {
        let Decision { action, why } = decision;
        let Some((result, leader)) = self.execute(action.clone(), rf, dead).await else { return };
        let outcome = match &result {
            Ok(()) => "done".to_string(),
            Err(e) => format!("failed: {}", e.message()),
        };
        let (kind, from, to) = match action {
            Action::AddReplica { node, .. } => ("add_replica", 0, node),
            Action::RemoveReplica { node, .. } => ("remove_replica", node, 0),
            Action::RetireReplica { node, .. } => ("retire_replica", node, 0),
            Action::TransferLeader { to, .. } => ("transfer_leader", leader, to),
            Action::MoveReplica { from, to, .. } => ("move_replica", from, to),
            Action::MergeRanges { .. } => ("merge", 0, 0),
        };
        let event = ClusterEvent {
            kind: kind.into(),
            range_id: action.range(),
            from_node_id: from,
            to_node_id: to,
            reason: why,
            outcome,
            ..Default::default()
        };
        events::record_or_log(&self.gw, event).await;
    }

    /// `None` when the action was no longer needed and nothing was done; else its
    /// result, and the node that led the range when it started.
    /// `rf`: the range's replication factor (its table's, else the cluster's).
    async fn execute(
        &self,
        action: Action,
        rf: usize,
        dead: &HashSet<u64>,
    ) -> Option<(Result<(), tonic::Status>, u64)> {
        let range = action.range();
        let status = match admin::status(&self.gw, range).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(range, "controller: cannot read range status: {}", e.message());
                return None;
            }
        };
        let leader = status.leader_node_id;
        let desc = status.desc.unwrap_or_default();
        let voters = desc.replicas.iter().filter(|r| !r.learner).count();
        let result = match action {
            Action::AddReplica { node, .. } => {
                let finishing = desc.replicas.iter().any(|r| r.node_id == node && r.learner);
                let healthy = desc.replicas.iter().filter(|r| !r.learner && !dead.contains(&r.node_id)).count();
                if !finishing && healthy >= rf {
                    tracing::info!(range, node, healthy, "controller: add replica no longer needed");
                    return None;
                }
                tracing::info!(range, node, "controller: add replica");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "add_replica").increment(1);
                admin::add_replica(&self.gw, range, node).await.map(|_| ())
            }
            Action::RetireReplica { node, .. } => {
                // Still replaced: `rf` voters on other nodes, as the range's leader sees it.
                let elsewhere = desc.replicas.iter().filter(|r| !r.learner && r.node_id != node).count();
                if elsewhere < rf {
                    return None;
                }
                tracing::info!(
                    range,
                    node,
                    "controller: remove the replaced replica of a dead or decommissioning node"
                );
                metrics::counter!("cairn_controller_decisions_total", "kind" => "retire_replica").increment(1);
                admin::remove_replica(&self.gw, range, node).await.map(|_| ())
            }
            Action::TransferLeader { to, .. } => {
                if leader == to || !desc.replicas.iter().any(|r| r.node_id == to && !r.learner) {
                    return None;
                }
                tracing::info!(range, to, "controller: transfer leadership");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "transfer_leader").increment(1);
                admin::transfer_leader(&self.gw, range, to).await.map(|_| ())
            }
            Action::RemoveReplica { node, .. } => {
                if voters <= rf || desc.replicas.iter().any(|r| r.learner) {
                    return None;
                }
                tracing::info!(range, node, voters, "controller: remove extra replica");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "remove_replica").increment(1);
                admin::remove_replica(&self.gw, range, node).await.map(|_| ())
            }
            Action::MergeRanges { left, right } => {
                // Still as planned: the right range is the left one's neighbour, by no declared split.
                let right_desc = admin::status(&self.gw, right).await.ok()?.desc?;
                if right_desc.start != desc.end || right_desc.sticky_start || !desc.replicas.iter().all(|r| !r.learner)
                {
                    return None;
                }
                tracing::info!(left, right, "controller: merge ranges");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "merge").increment(1);
                crate::meta::merge::merge(&self.gw, left).await.map(|_| ())
            }
            Action::MoveReplica { from, to, .. } => {
                // Still as planned: whole, with a voter on `from` and none on `to`.
                let on = |n: u64| desc.replicas.iter().find(|r| r.node_id == n);
                let whole = voters == rf && voters == desc.replicas.len();
                if !whole || on(from).is_none() || on(to).is_some() {
                    return None;
                }
                tracing::info!(range, from, to, "controller: move replica");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "move_replica").increment(1);
                // Add first: the range never has fewer than `rf` voters. Removing the
                // leader's replica hands its leadership to another voter first. If the
                // removal fails, the range is left a voter over and the repair plan
                // removes the extra one.
                match admin::add_replica(&self.gw, range, to).await {
                    Ok(_) => {
                        let removed = admin::remove_replica(&self.gw, range, from).await.map(|_| ());
                        if removed.is_ok() {
                            self.finish_move_in_split_off(&desc, from, to, rf).await;
                        }
                        removed
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(range, ?action, "controller: action failed: {}", e.message());
        }
        Some((result, leader))
    }
}

impl Controller {
    /// A range split between a move's add and its removal passes both the added
    /// voter and the one to remove to its new right-hand part: the move is
    /// finished there too, else that part would stay a voter over until the
    /// repair plan's grace for extra voters ran out (found by the whole-node
    /// simulation, seed 13351, as routing that took 31 s to converge).
    async fn finish_move_in_split_off(&self, moved: &RangeDescriptor, from: u64, to: u64, rf: usize) {
        let Ok(records) = self.gw.load_directory().await else { return };
        for d in records.iter().filter_map(|r| r.desc.as_ref()) {
            let inside = d.start >= moved.start && (moved.end.is_empty() || d.start < moved.end);
            let voters: Vec<u64> = d.replicas.iter().filter(|r| !r.learner).map(|r| r.node_id).collect();
            if d.id == moved.id || !inside || !voters.contains(&from) || !voters.contains(&to) || voters.len() <= rf {
                continue;
            }
            tracing::info!(range = d.id, from, "controller: finish a move in the range split off during it");
            if let Err(e) = admin::remove_replica(&self.gw, d.id, from).await {
                tracing::warn!(range = d.id, from, "controller: could not finish the move there: {}", e.message());
            }
        }
    }
}

/// Why the repair plan chose `action` (for the decision log).
fn repair_reason(action: &Action, nodes: &[NodeView], rf: usize) -> String {
    let state = |id: u64| match nodes.iter().find(|n| n.id == id) {
        Some(n) if n.dead => "dead",
        Some(n) if n.decommissioning => "decommissioning",
        Some(n) if n.draining => "draining",
        Some(n) if !n.live => "suspect",
        Some(_) => "live",
        None => "unknown",
    };
    match action {
        Action::AddReplica { .. } => format!("the range has fewer than {rf} replicas on live nodes that stay"),
        Action::RemoveReplica { .. } => format!("the range has more than {rf} voters"),
        Action::RetireReplica { node, .. } => {
            format!("node {node} is {} and the range has {rf} voters elsewhere", state(*node))
        }
        Action::TransferLeader { .. } => {
            "the leader's node is draining or decommissioning, or outside the table's preferred zones".to_string()
        }
        Action::MoveReplica { .. } => "balancing".to_string(),
        Action::MergeRanges { .. } => "the two ranges are small and cold together".to_string(),
    }
}
