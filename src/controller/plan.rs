//! Pure placement decisions: which replicas to add where, which extra
//! replicas to remove, which replicas of dead or decommissioning nodes to
//! replace, and which leaders to move off draining nodes.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: u64,
    /// Heard from within about two heartbeats (`registry::is_fresh`): may take new
    /// replicas and leaderships.
    pub live: bool,
    /// Silent for `dead_after`: its replicas are replaced (a node neither live nor
    /// dead is suspect: it takes nothing new and keeps what it has).
    pub dead: bool,
    /// An operator is draining it: its leaders move away; it takes no new replica.
    pub draining: bool,
    /// An operator is decommissioning it: its replicas are replaced elsewhere, as a
    /// dead node's are, and its leaders move away.
    pub decommissioning: bool,
    pub zone: String,
}

impl NodeView {
    /// May take new replicas and leaders.
    pub(super) fn accepts(&self) -> bool {
        self.live && !self.draining && !self.decommissioning
    }

    /// Its replicas are to be replaced.
    fn departing(&self) -> bool {
        self.dead || self.decommissioning
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeView {
    pub id: u64,
    /// (node id, is learner)
    pub replicas: Vec<(u64, bool)>,
    /// The node of its leader, 0 if unknown.
    pub leader: u64,
    /// Approximate size of its data.
    pub bytes: u64,
    /// Its table's replication factor (0: the cluster's).
    pub rf: usize,
    /// Its table's preferred zones for the leader, most preferred first.
    pub lease_preferences: Vec<String>,
    /// Bounds in the encoded keyspace (end empty: +infinity).
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    /// The table its start key belongs to.
    pub table: Option<u32>,
    /// Its start is an operator's or a table's split point (never merged away).
    pub sticky_start: bool,
    /// Frozen for a merge into its left-hand neighbour.
    pub frozen: bool,
    /// Requests per second its leader last reported.
    pub qps: u64,
}

impl RangeView {
    /// The replication factor that applies: its table's, else `default`.
    pub fn rf_or(&self, default: usize) -> usize {
        if self.rf == 0 {
            default
        } else {
            self.rf
        }
    }
}

/// How preferred `zone` is for a range's leader: its position in `prefs`, and
/// after all of them when not listed (everything ranks equal with no preferences).
pub fn zone_rank(prefs: &[String], zone: &str) -> usize {
    prefs.iter().position(|p| p == zone).unwrap_or(prefs.len())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add (or finish adding: promote a learner on) a replica of `range` on `node`.
    AddReplica { range: u64, node: u64 },
    /// Remove the replica of `range` on `node`: the range has more voters than it should.
    RemoveReplica { range: u64, node: u64 },
    /// Remove the replica of `range` on a dead or decommissioning `node`: the range
    /// already has its voters on other nodes (it was replaced first, so no quorum
    /// is ever at risk).
    RetireReplica { range: u64, node: u64 },
    /// Move the leadership of `range` to its voter on `to` (off a draining node, or
    /// to balance leaderships).
    TransferLeader { range: u64, to: u64 },
    /// Merge `left` with its right-hand neighbour `right` (both small and cold,
    /// with voters on the same nodes).
    MergeRanges { left: u64, right: u64 },
    /// Move the replica of `range` on `from` to `to`, to balance replicas or bytes:
    /// add on `to` (learner, then voter), move the leadership off `from` if it is
    /// there, then remove `from`.
    MoveReplica { range: u64, from: u64, to: u64 },
}

impl Action {
    pub fn range(&self) -> u64 {
        match self {
            Action::AddReplica { range, .. }
            | Action::RemoveReplica { range, .. }
            | Action::RetireReplica { range, .. }
            | Action::TransferLeader { range, .. }
            | Action::MoveReplica { range, .. }
            | Action::MergeRanges { left: range, .. } => *range,
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
/// one too many.) A replica on a dead or decommissioning node is replaced:
/// first a new replica on a live node (add first), then, once the range has
/// `rf` voters on other nodes, the old one is removed; with no live node to
/// take it, it stays (a dead node may come back; a decommission waits). A range
/// led from a draining or decommissioning node has its leadership moved to the
/// voter on an accepting node that leads the fewest ranges. Nodes that are
/// draining or decommissioning take no new replica. At most `max_actions`
/// actions are returned.
pub fn plan(nodes: &[NodeView], ranges: &[RangeView], default_rf: usize, max_actions: usize) -> Vec<Action> {
    let live: Vec<&NodeView> = nodes.iter().filter(|n| n.accepts()).collect();
    let mut leaders: BTreeMap<u64, usize> = live.iter().map(|n| (n.id, 0)).collect();
    for r in ranges {
        if let Some(c) = leaders.get_mut(&r.leader) {
            *c += 1;
        }
    }
    let shedding: HashSet<u64> =
        nodes.iter().filter(|n| !n.dead && (n.draining || n.decommissioning)).map(|n| n.id).collect();
    let mut load: BTreeMap<u64, usize> = live.iter().map(|n| (n.id, 0)).collect();
    for r in ranges {
        for (n, _) in &r.replicas {
            if let Some(c) = load.get_mut(n) {
                *c += 1;
            }
        }
    }
    // A map, not a search per lookup: the plan runs over every range (tens of thousands).
    let zone_by_node: HashMap<u64, &str> = nodes.iter().map(|n| (n.id, n.zone.as_str())).collect();
    let zone_of = |id: u64| zone_by_node.get(&id).copied().unwrap_or("");
    let dead: HashSet<u64> = nodes.iter().filter(|n| n.departing()).map(|n| n.id).collect();
    let mut actions = Vec::new();
    for r in ranges {
        if actions.len() >= max_actions {
            break;
        }
        let rf = r.rf_or(default_rf);
        let target = rf.min(live.len());
        if let Some((n, _)) = r.replicas.iter().find(|(n, learner)| *learner && load.contains_key(n)) {
            actions.push(Action::AddReplica { range: r.id, node: *n });
            continue;
        }
        if shedding.contains(&r.leader) {
            let to = r
                .replicas
                .iter()
                .filter(|(n, learner)| !learner && leaders.contains_key(n))
                .map(|(n, _)| *n)
                .min_by_key(|n| (leaders.get(n).copied().unwrap_or(0), *n));
            if let Some(to) = to {
                actions.push(Action::TransferLeader { range: r.id, to });
                *leaders.entry(to).or_default() += 1;
                continue;
            }
        }
        // A leader outside the table's preferred zones moves to a voter in a better one.
        if !r.lease_preferences.is_empty() && r.leader != 0 {
            let rank = |n: u64| zone_rank(&r.lease_preferences, zone_of(n));
            let better = r
                .replicas
                .iter()
                .filter(|(n, learner)| !learner && leaders.contains_key(n) && rank(*n) < rank(r.leader))
                .map(|(n, _)| *n)
                .min_by_key(|n| (rank(*n), leaders.get(n).copied().unwrap_or(0), *n));
            if let Some(to) = better {
                actions.push(Action::TransferLeader { range: r.id, to });
                *leaders.entry(to).or_default() += 1;
                continue;
            }
        }
        let voters = r.replicas.iter().filter(|(_, learner)| !learner).count();
        if let Some((gone, _)) = r.replicas.iter().find(|(n, _)| dead.contains(n)) {
            let healthy = r.replicas.iter().filter(|(n, learner)| !learner && !dead.contains(n)).count();
            if healthy >= rf {
                actions.push(Action::RetireReplica { range: r.id, node: *gone });
                continue;
            }
        }
        if voters > rf && r.replicas.iter().all(|(n, _)| load.contains_key(n)) {
            let zones: Vec<&str> = r.replicas.iter().map(|(n, _)| zone_of(*n)).collect();
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
        let used_zones: HashSet<&str> = r.replicas.iter().map(|(n, _)| zone_of(*n)).collect();
        let best = live
            .iter()
            .filter(|n| !hosting.contains(&n.id))
            .min_by_key(|n| (used_zones.contains(n.zone.as_str()), load.get(&n.id).copied().unwrap_or(0), n.id));
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
        NodeView { id, live: true, dead: false, draining: false, decommissioning: false, zone: zone.into() }
    }

    fn dead_node(id: u64) -> NodeView {
        NodeView { live: false, dead: true, ..node(id, "") }
    }

    fn range(id: u64, replicas: &[(u64, bool)]) -> RangeView {
        RangeView { id, replicas: replicas.to_vec(), ..Default::default() }
    }

    #[test]
    fn a_decommissioning_node_is_replaced_like_a_dead_one_and_sheds_its_leaders() {
        let mut nodes: Vec<_> = (1..=4).map(|i| node(i, "")).collect();
        nodes[3].decommissioning = true;
        let mut led = range(1, &[(1, false), (2, false), (4, false)]);
        led.leader = 4;
        let other = range(2, &[(1, false), (2, false), (3, false)]);
        let acts = plan(&nodes, &[led.clone(), other.clone()], 3, 10);
        assert_eq!(acts, vec![Action::TransferLeader { range: 1, to: 1 }], "leadership leaves first");
        led.leader = 1;
        assert_eq!(plan(&nodes, &[led.clone(), other.clone()], 3, 10), vec![Action::AddReplica { range: 1, node: 3 }]);
        led.replicas.push((3, false));
        assert_eq!(plan(&nodes, &[led, other], 3, 10), vec![Action::RetireReplica { range: 1, node: 4 }]);
    }

    #[test]
    fn a_draining_node_keeps_its_replicas_takes_none_and_hands_its_leaders_to_the_least_loaded() {
        let mut nodes: Vec<_> = (1..=4).map(|i| node(i, "")).collect();
        nodes[0].draining = true;
        let ranges: Vec<RangeView> = vec![
            RangeView {
                id: 1,
                replicas: vec![(1, false), (2, false), (3, false)],
                leader: 1,
                bytes: 0,
                ..Default::default()
            },
            RangeView {
                id: 2,
                replicas: vec![(1, false), (2, false), (3, false)],
                leader: 1,
                bytes: 0,
                ..Default::default()
            },
            RangeView { id: 3, replicas: vec![(2, false)], leader: 2, bytes: 0, ..Default::default() },
        ];
        let acts = plan(&nodes, &ranges, 3, 10);
        assert_eq!(
            acts,
            vec![
                Action::TransferLeader { range: 1, to: 3 },
                Action::TransferLeader { range: 2, to: 2 },
                Action::AddReplica { range: 3, node: 4 },
            ],
            "leaders go to the voters leading the fewest; nothing new lands on node 1"
        );
    }

    #[test]
    fn replaces_a_dead_nodes_replica_adding_first_then_removing() {
        let mut nodes: Vec<_> = (1..=3).map(|i| node(i, "")).collect();
        nodes.push(dead_node(4));
        let before = vec![RangeView {
            id: 1,
            replicas: vec![(1, false), (2, false), (4, false)],
            leader: 0,
            bytes: 0,
            ..Default::default()
        }];
        assert_eq!(plan(&nodes, &before, 3, 10), vec![Action::AddReplica { range: 1, node: 3 }], "add first");
        let learning = vec![RangeView {
            id: 1,
            replicas: vec![(1, false), (2, false), (4, false), (3, true)],
            ..Default::default()
        }];
        assert_eq!(plan(&nodes, &learning, 3, 10), vec![Action::AddReplica { range: 1, node: 3 }], "promote");
        let replaced = vec![RangeView {
            id: 1,
            replicas: vec![(1, false), (2, false), (4, false), (3, false)],
            ..Default::default()
        }];
        assert_eq!(plan(&nodes, &replaced, 3, 10), vec![Action::RetireReplica { range: 1, node: 4 }]);
    }

    #[test]
    fn keeps_a_dead_replica_that_no_live_node_can_replace_and_the_replicas_of_a_suspect() {
        let mut nodes: Vec<_> = (1..=2).map(|i| node(i, "")).collect();
        nodes.push(dead_node(3));
        let ranges = vec![RangeView {
            id: 1,
            replicas: vec![(1, false), (2, false), (3, false)],
            leader: 0,
            bytes: 0,
            ..Default::default()
        }];
        assert_eq!(plan(&nodes, &ranges, 3, 10), vec![], "nowhere to go: the node may come back");
        let mut nodes: Vec<_> = (1..=3).map(|i| node(i, "")).collect();
        nodes.push(NodeView { live: false, ..node(4, "") });
        let ranges = vec![range(1, &[(1, false), (2, false), (4, false)])];
        assert_eq!(plan(&nodes, &ranges, 3, 10), vec![], "a suspect node keeps its replicas");
    }

    #[test]
    fn fills_up_to_rf_preferring_new_zones_and_light_nodes() {
        let nodes = vec![node(1, "a"), node(2, "a"), node(3, "b"), node(4, "c")];
        let ranges = vec![RangeView { id: 10, replicas: vec![(1, false)], leader: 0, bytes: 0, ..Default::default() }];
        let acts = plan(&nodes, &ranges, 3, 10);
        assert_eq!(acts, vec![Action::AddReplica { range: 10, node: 3 }]);
    }

    #[test]
    fn caps_rf_at_live_nodes_and_finishes_learners_first() {
        let mut nodes = vec![node(1, ""), node(2, "")];
        nodes.push(NodeView { live: false, ..node(3, "") });
        let ranges = vec![
            RangeView { id: 1, replicas: vec![(1, false), (2, false)], leader: 0, bytes: 0, ..Default::default() },
            RangeView { id: 2, replicas: vec![(1, false), (2, true)], leader: 0, bytes: 0, ..Default::default() },
        ];
        let acts = plan(&nodes, &ranges, 3, 10);
        assert_eq!(acts, vec![Action::AddReplica { range: 2, node: 2 }]);
    }

    #[test]
    fn spreads_load_and_respects_max_actions() {
        let nodes: Vec<_> = (1..=4).map(|i| node(i, "")).collect();
        let ranges: Vec<_> = (1..=4)
            .map(|i| RangeView { id: i, replicas: vec![(1, false)], leader: 0, bytes: 0, ..Default::default() })
            .collect();
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
            RangeView {
                id: 1,
                replicas: vec![(1, false), (2, false), (3, false), (4, false)],
                leader: 0,
                bytes: 0,
                ..Default::default()
            },
            RangeView {
                id: 2,
                replicas: vec![(1, false), (2, false), (3, false)],
                leader: 0,
                bytes: 0,
                ..Default::default()
            },
        ];
        // Nodes 1 and 4 share zone a; node 1 holds more replicas.
        assert_eq!(plan(&nodes, &ranges, 3, 10), vec![Action::RemoveReplica { range: 1, node: 1 }]);
    }

    #[test]
    fn a_table_replication_factor_and_lease_preferences_drive_the_plan() {
        let nodes = vec![node(1, "a"), node(2, "b"), node(3, "c"), node(4, "d"), node(5, "e")];
        // The table asks for 5: two more replicas, whatever the cluster's 3 says.
        let five = RangeView { id: 1, replicas: vec![(1, false), (2, false), (3, false)], rf: 5, ..Default::default() };
        let acts = plan(&nodes, &[five], 3, 10);
        assert_eq!(acts, vec![Action::AddReplica { range: 1, node: 4 }], "one action per range per round");
        // Leader in zone a, table prefers c then b: to the voter in c.
        let led = RangeView {
            id: 2,
            replicas: vec![(1, false), (2, false), (3, false)],
            leader: 1,
            lease_preferences: vec!["c".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(plan(&nodes, std::slice::from_ref(&led), 3, 10), vec![Action::TransferLeader { range: 2, to: 3 }]);
        // Already in its best zone among its voters: nothing.
        let settled = RangeView { leader: 3, ..led.clone() };
        assert_eq!(plan(&nodes, &[settled], 3, 10), vec![]);
        // No voter in a preferred zone: the leader stays where it is.
        let elsewhere = RangeView { lease_preferences: vec!["e".into()], ..led };
        assert_eq!(plan(&nodes, &[elsewhere], 3, 10), vec![]);
    }

    #[test]
    fn leaves_an_over_replicated_range_alone_while_a_replica_node_is_down() {
        let mut nodes: Vec<_> = (1..=3).map(|i| node(i, "")).collect();
        nodes.push(NodeView { live: false, ..node(4, "") });
        let ranges = vec![RangeView {
            id: 1,
            replicas: vec![(1, false), (2, false), (3, false), (4, false)],
            ..Default::default()
        }];
        assert_eq!(plan(&nodes, &ranges, 3, 10), vec![]);
    }
}
