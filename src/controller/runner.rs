//! Runs the controller on the node that leads the meta range: reads the
//! cluster view, asks `plan` for actions, and executes them (bounded in
//! number, never two on the same range at once, each re-checked against the
//! range's leader first). Every decision is logged and counted.

use super::plan::{self, Action, NodeView, RangeView};
use crate::gateway::Gateway;
use crate::meta::admin;
use crate::meta::{self, registry};
use cairn_proto::kv::NodeState;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_CONCURRENT_ACTIONS: usize = 4;
/// How long a range must have stayed over-replicated before its extra voter goes.
const EXTRA_VOTER_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct Controller {
    gw: Arc<Gateway>,
    rf: usize,
    /// A node silent this long is dead (`plan::NodeView::dead`).
    dead_after_ms: u64,
    in_flight: Arc<Mutex<HashSet<u64>>>,
    /// Ranges found with a voter too many, and since when (without a break). An
    /// extra voter is removed only once it has been there for `EXTRA_VOTER_GRACE`,
    /// so that an operator moving a replica by hand (add, then remove, with a
    /// leader transfer between) is not raced into leaving the range a voter short.
    over_replicated: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl Controller {
    pub fn new(gw: Arc<Gateway>, rf: usize, dead_after_ms: u64) -> Self {
        Controller { gw, rf, dead_after_ms, in_flight: Default::default(), over_replicated: Default::default() }
    }

    fn leads_meta(&self) -> bool {
        self.gw.store.registry.read().get(&meta::META_RANGE_ID).is_some_and(|r| r.is_leader())
    }

    pub async fn tick(self) {
        if !self.leads_meta() {
            return;
        }
        let (nodes, records, states) =
            match (registry::list(&self.gw).await, self.gw.load_directory().await, registry::states(&self.gw).await) {
                (Ok(n), Ok(r), Ok(s)) => (n, r, s),
                _ => return,
            };
        let now = crate::hlc::wall_now_ms();
        let nodes: Vec<NodeView> = nodes
            .iter()
            .map(|n| NodeView {
                id: n.id,
                live: registry::is_live(n, now),
                dead: registry::is_dead(n, now, self.dead_after_ms),
                draining: states.get(&n.id) == Some(&NodeState::Draining),
                decommissioning: states.get(&n.id) == Some(&NodeState::Decommissioning),
                zone: n.zone.clone(),
            })
            .collect();
        let busy = self.in_flight.lock().clone();
        let ranges: Vec<RangeView> = records
            .iter()
            .filter_map(|r| r.desc.as_ref().map(|d| (d, r.leader_node_id)))
            .filter(|(d, _)| !busy.contains(&d.id))
            .map(|(d, leader)| RangeView {
                id: d.id,
                replicas: d.replicas.iter().map(|x| (x.node_id, x.learner)).collect(),
                leader,
            })
            .collect();
        let dead: Arc<HashSet<u64>> =
            Arc::new(nodes.iter().filter(|n| n.dead || n.decommissioning).map(|n| n.id).collect());
        let room = MAX_CONCURRENT_ACTIONS.saturating_sub(busy.len());
        let actions = plan::plan(&nodes, &ranges, self.rf, room);
        let now = crate::clock::now();
        let overdue: HashSet<u64> = {
            let mut over = self.over_replicated.lock();
            let since_before = std::mem::take(&mut *over);
            for a in actions.iter().filter(|a| matches!(a, Action::RemoveReplica { .. })) {
                over.insert(a.range(), since_before.get(&a.range()).copied().unwrap_or(now));
            }
            over.iter()
                .filter(|(_, since)| now.saturating_duration_since(**since) >= EXTRA_VOTER_GRACE)
                .map(|(r, _)| *r)
                .collect()
        };
        for action in actions {
            let range = action.range();
            if matches!(action, Action::RemoveReplica { .. }) && !overdue.contains(&range) {
                continue;
            }
            self.in_flight.lock().insert(range);
            let me = self.clone();
            let dead = dead.clone();
            tokio::spawn(async move {
                me.execute(action, &dead).await;
                me.in_flight.lock().remove(&range);
            });
        }
    }

    /// Carries out `action` if the range's leader still agrees it is needed: the
    /// directory the plan read is written by range leaders and can lag a
    /// membership change, and acting on a stale count adds a replica too many
    /// (or removes one too many).
    /// `dead`: the nodes found dead or decommissioning when the action was planned
    /// (their replicas do not count towards the replication factor).
    async fn execute(&self, action: Action, dead: &HashSet<u64>) {
        let range = action.range();
        let desc = match admin::status(&self.gw, range).await {
            Ok(s) => s.desc.unwrap_or_default(),
            Err(e) => {
                tracing::debug!(range, "controller: cannot read range status: {}", e.message());
                return;
            }
        };
        let voters = desc.replicas.iter().filter(|r| !r.learner).count();
        let result = match action {
            Action::AddReplica { node, .. } => {
                let finishing = desc.replicas.iter().any(|r| r.node_id == node && r.learner);
                let healthy = desc.replicas.iter().filter(|r| !r.learner && !dead.contains(&r.node_id)).count();
                if !finishing && healthy >= self.rf {
                    tracing::info!(range, node, healthy, "controller: add replica no longer needed");
                    return;
                }
                tracing::info!(range, node, "controller: add replica");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "add_replica").increment(1);
                admin::add_replica(&self.gw, range, node).await.map(|_| ())
            }
            Action::RetireReplica { node, .. } => {
                // Still replaced: `rf` voters on other nodes, as the range's leader sees it.
                let elsewhere = desc.replicas.iter().filter(|r| !r.learner && r.node_id != node).count();
                if elsewhere < self.rf {
                    return;
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
                if !desc.replicas.iter().any(|r| r.node_id == to && !r.learner) {
                    return;
                }
                tracing::info!(range, to, "controller: move leadership off a draining or decommissioning node");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "transfer_leader").increment(1);
                admin::transfer_leader(&self.gw, range, to).await.map(|_| ())
            }
            Action::RemoveReplica { node, .. } => {
                if voters <= self.rf || desc.replicas.iter().any(|r| r.learner) {
                    return;
                }
                tracing::info!(range, node, voters, "controller: remove extra replica");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "remove_replica").increment(1);
                admin::remove_replica(&self.gw, range, node).await.map(|_| ())
            }
        };
        if let Err(e) = result {
            tracing::warn!(range, ?action, "controller: action failed: {}", e.message());
        }
    }
}
