//! Builds the controller's pure view of the cluster (`NodeView`, `RangeView`)
//! from what the meta range stores: the node registry, the operator's node
//! states, the range directory and the catalog. Shared by the controller's
//! tick and by the status RPC, so both judge the cluster alike.

use super::plan::{NodeView, RangeView};
use crate::keys;
use crate::meta::registry;
use cairn_proto::internal::{NodeInfo, RangeRecord, TableInfo};
use cairn_proto::kv::NodeState;
use std::collections::{HashMap, HashSet};

/// Every registered node as the controller sees it at `now_ms`.
pub fn nodes(infos: &[NodeInfo], states: &HashMap<u64, NodeState>, now_ms: u64, dead_after_ms: u64) -> Vec<NodeView> {
    infos
        .iter()
        .map(|n| NodeView {
            id: n.id,
            live: registry::is_fresh(n, now_ms),
            dead: registry::is_dead(n, now_ms, dead_after_ms),
            draining: states.get(&n.id) == Some(&NodeState::Draining),
            decommissioning: states.get(&n.id) == Some(&NodeState::Decommissioning),
            zone: n.zone.clone(),
        })
        .collect()
}

/// Every range of the directory but those in `skip`, with its table's placement.
pub fn ranges(records: &[RangeRecord], tables: &[TableInfo], skip: &HashSet<u64>) -> Vec<RangeView> {
    records
        .iter()
        .filter_map(|r| r.desc.as_ref().map(|d| (d, r)))
        .filter(|(d, _)| !skip.contains(&d.id))
        .map(|(d, r)| {
            let table_id = keys::decode_table(&d.start).map(|(id, _)| id);
            let table = table_id.and_then(|id| tables.iter().find(|t| t.id == id));
            RangeView {
                id: d.id,
                replicas: d.replicas.iter().map(|x| (x.node_id, x.learner)).collect(),
                leader: r.leader_node_id,
                bytes: r.approximate_bytes,
                rf: table.map_or(0, |t| t.replication_factor as usize),
                lease_preferences: table.map(|t| t.lease_preferences.clone()).unwrap_or_default(),
                start: d.start.clone(),
                end: d.end.clone(),
                table: table_id,
                sticky_start: d.sticky_start,
                frozen: d.frozen_for_merge,
                qps: r.qps,
            }
        })
        .collect()
}
