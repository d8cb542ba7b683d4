//! Pure placement decisions: which replicas to add where, which extra
//! replicas to remove, and which replicas on dead nodes to replace.

use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: u64,
    /// Heard from recently: may take new replicas.
    pub live: bool,
    /// Silent for `dead_after`: its replicas are replaced (a node neither live nor
    /// dead is suspect: it takes nothing new and keeps what it has).
    pub dead: bool,
    pub zone: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeView {
    pub id: u64,
    /// (node id, is learner)
    pub replicas: Vec<(u64, bool)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add (or finish adding: promote a learner on) a replica of `range` on `node`.
    AddReplica { range: u64, node: u64 },
    /// Remove the replica of `range` on `node`: the range has more voters than it should.
    RemoveReplica { range: u64, node: u64 },
    /// Remove the replica of `range` on dead `node`: the range already has its
    /// voters on other nodes (it was replaced first, so no quorum is ever at risk).
    RemoveDeadReplica { range: u64, node: u64 },
}

impl Action {
    pub fn range(&self) -> u64 {
        match self {
            Action::AddReplica { range, .. }
            | Action::RemoveReplica { range, .. }
            | Action::RemoveDeadReplica { range, .. } => *range,
        }
    }
}

/// Up-replicates ranges below `rf` (capped at the number of live nodes),
/// placing each new replica on the live node that (1) is in a zone the range
/// does not use yet, then (2) holds the fewest replicas, then (3) has the
/// lowest id. Learners left behind by an interrupted add are finished first.
/// A range with more than `rf` voters, all on live nodes, loses one: the one
/// whose zone the range uses twice, then on the most loaded node, then the
/// highest id. (Adds decided on a directory that lagged the range can leave
/// one too many.) A replica on a dead node is replaced: first a new replica on
/// a live node (add first), then, once the range has `rf` voters on nodes that
/// are not dead, the dead node's replica is removed; with no live node to take
/// it, the dead replica stays (its node may come back). At most `max_actions`
/// actions are returned.
pub fn plan(nodes: &[NodeView], ranges: &[RangeView], rf: usize, max_actions: usize) -> Vec<Action> {
    let live: Vec<&NodeView> = nodes.iter().filter(|n| n.live).collect();
    let target = rf.min(live.len());
    let mut load: BTreeMap<u64, usize> = live.iter().map(|n| (n.id, 0)).collect();
    for r in ranges {
        for (n, _) in &r.replicas {
            if let Some(c) = load.get_mut(n) {
                *c += 1;
            }
        }
    }
    let zone_of = |id: u64| nodes.iter().find(|n| n.id == id).map(|n| n.zone.clone()).unwrap_or_default();
    let dead: HashSet<u64> = nodes.iter().filter(|n| n.dead).map(|n| n.id).collect();
    let mut actions = Vec::new();
    for r in ranges {
        if actions.len() >= max_actions {
            break;
        }
        if let Some((n, _)) = r.replicas.iter().find(|(n, learner)| *learner && load.contains_key(n)) {
            actions.push(Action::AddReplica { range: r.id, node: *n });
            continue;
        }
        let voters = r.replicas.iter().filter(|(_, learner)| !learner).count();
        if let Some((gone, _)) = r.replicas.iter().find(|(n, _)| dead.contains(n)) {
            let healthy = r.replicas.iter().filter(|(n, learner)| !learner && !dead.contains(n)).count();
            if healthy >= rf {
                actions.push(Action::RemoveDeadReplica { range: r.id, node: *gone });
                continue;
            }
        }
        if voters > rf && r.replicas.iter().all(|(n, _)| load.contains_key(n)) {
            let zones: Vec<String> = r.replicas.iter().map(|(n, _)| zone_of(*n)).collect();
            let shares_zone = |n: u64| zones.iter().filter(|z| **z == zone_of(n)).count() > 1;
            let extra = r
                .replicas
                .iter()
                .map(|(n, _)| *n)
                .max_by_key(|n| (shares_zone(*n), load.get(n).copied().unwrap_or(0), *n));
            if let Some(n) = extra {
                actions.push(Action::RemoveReplica { range: r.id, node: n });
                if let Some(c) = load.get_mut(&n) {
                    *c -= 1;
                }
            }
            continue;
        }
        // A replica on a dead node does not count: it is being replaced.
        if r.replicas.iter().filter(|(n, _)| !dead.contains(n)).count() >= target {
            continue;
        }
        let hosting: HashSet<u64> = r.replicas.iter().map(|(n, _)| *n).collect();
        let used_zones: HashSet<String> = r.replicas.iter().map(|(n, _)| zone_of(*n)).collect();
        let best = live
            .iter()
            .filter(|n| !hosting.contains(&n.id))
            .min_by_key(|n| (used_zones.contains(&n.zone), load.get(&n.id).copied().unwrap_or(0), n.id));
        if let Some(n) = best {
            actions.push(Action::AddReplica { range: r.id, node: n.id });
            if let Some(c) = load.get_mut(&n.id) {
                *c += 1;
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, zone: &str) -> NodeView {
        NodeView { id, live: true, dead: false, zone: zone.into() }
    }

    fn dead_node(id: u64) -> NodeView {
        NodeView { id, live: false, dead: true, zone: String::new() }
    }

    #[test]
    fn replaces_a_dead_nodes_replica_adding_first_then_removing() {
        let mut nodes: Vec<_> = (1..=3).map(|i| node(i, "")).collect();
        nodes.push(dead_node(4));
        let before = vec![RangeView { id: 1, replicas: vec![(1, false), (2, false), (4, false)] }];
        assert_eq!(plan(&nodes, &before, 3, 10), vec![Action::AddReplica { range: 1, node: 3 }], "add first");
        let learning = vec![RangeView { id: 1, replicas: vec![(1, false), (2, false), (4, false), (3, true)] }];
        assert_eq!(plan(&nodes, &learning, 3, 10), vec![Action::AddReplica { range: 1, node: 3 }], "promote");
        let replaced = vec![RangeView { id: 1, replicas: vec![(1, false), (2, false), (4, false), (3, false)] }];
        assert_eq!(plan(&nodes, &replaced, 3, 10), vec![Action::RemoveDeadReplica { range: 1, node: 4 }]);
    }

    #[test]
    fn keeps_a_dead_replica_that_no_live_node_can_replace_and_the_replicas_of_a_suspect() {
        let mut nodes: Vec<_> = (1..=2).map(|i| node(i, "")).collect();
        nodes.push(dead_node(3));
        let ranges = vec![RangeView { id: 1, replicas: vec![(1, false), (2, false), (3, false)] }];
        assert_eq!(plan(&nodes, &ranges, 3, 10), vec![], "nowhere to go: the node may come back");
        let mut nodes: Vec<_> = (1..=3).map(|i| node(i, "")).collect();
        nodes.push(NodeView { id: 4, live: false, dead: false, zone: String::new() });
        let ranges = vec![RangeView { id: 1, replicas: vec![(1, false), (2, false), (4, false)] }];
        assert_eq!(plan(&nodes, &ranges, 3, 10), vec![], "a suspect node keeps its replicas");
    }

    #[test]
    fn fills_up_to_rf_preferring_new_zones_and_light_nodes() {
        let nodes = vec![node(1, "a"), node(2, "a"), node(3, "b"), node(4, "c")];
        let ranges = vec![RangeView { id: 10, replicas: vec![(1, false)] }];
        let acts = plan(&nodes, &ranges, 3, 10);
        assert_eq!(acts, vec![Action::AddReplica { range: 10, node: 3 }]);
    }

    #[test]
    fn caps_rf_at_live_nodes_and_finishes_learners_first() {
        let mut nodes = vec![node(1, ""), node(2, "")];
        nodes.push(NodeView { id: 3, live: false, dead: false, zone: String::new() });
        let ranges = vec![
            RangeView { id: 1, replicas: vec![(1, false), (2, false)] },
            RangeView { id: 2, replicas: vec![(1, false), (2, true)] },
        ];
        let acts = plan(&nodes, &ranges, 3, 10);
        assert_eq!(acts, vec![Action::AddReplica { range: 2, node: 2 }]);
    }

    #[test]
    fn spreads_load_and_respects_max_actions() {
        let nodes: Vec<_> = (1..=4).map(|i| node(i, "")).collect();
        let ranges: Vec<_> = (1..=4).map(|i| RangeView { id: i, replicas: vec![(1, false)] }).collect();
        let acts = plan(&nodes, &ranges, 2, 3);
        assert_eq!(acts.len(), 3);
        let targets: HashSet<u64> = acts
            .iter()
            .map(|a| match a {
                Action::AddReplica { node, .. } => *node,
                _ => panic!("unexpected removal: {a:?}"),
            })
            .collect();
        assert_eq!(targets.len(), 3, "each new replica goes to the least-loaded node");
    }

    #[test]
    fn removes_the_extra_voter_from_a_shared_zone_then_the_busiest_node() {
        let nodes = vec![node(1, "a"), node(2, "b"), node(3, "c"), node(4, "a")];
        let ranges = vec![
            RangeView { id: 1, replicas: vec![(1, false), (2, false), (3, false), (4, false)] },
            RangeView { id: 2, replicas: vec![(1, false), (2, false), (3, false)] },
        ];
        // Nodes 1 and 4 share zone a; node 1 holds more replicas.
        assert_eq!(plan(&nodes, &ranges, 3, 10), vec![Action::RemoveReplica { range: 1, node: 1 }]);
    }

    #[test]
    fn leaves_an_over_replicated_range_alone_while_a_replica_node_is_down() {
        let mut nodes: Vec<_> = (1..=3).map(|i| node(i, "")).collect();
        nodes.push(NodeView { id: 4, live: false, dead: false, zone: String::new() });
        let ranges = vec![RangeView { id: 1, replicas: vec![(1, false), (2, false), (3, false), (4, false)] }];
        assert_eq!(plan(&nodes, &ranges, 3, 10), vec![]);
    }
}
