//! What the controller is still working towards, for `cairn cluster status`:
//! drains and decommissions under way (and when they are done), replicas of
//! dead nodes still to replace, ranges short of their replication factor, and
//! replica or leader counts outside the balancing tolerance. Pure: it reads the
//! same view the controller plans from, so it reports what the controller acts on.

use super::balance::off;
use super::plan::{NodeView, RangeView};

/// One thing in progress (or, for a drain or decommission, done).
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// drain, decommission, replace, replicate, rebalance-replicas, rebalance-leaders
    pub kind: &'static str,
    /// The node concerned; 0 for the cluster as a whole.
    pub node_id: u64,
    /// Leaderships, replicas or ranges still to move; 0 when done.
    pub remaining: usize,
    pub detail: String,
}

/// Everything in progress, drains and decommissions first (by node id).
pub fn report(nodes: &[NodeView], ranges: &[RangeView], default_rf: usize, rebalance: bool) -> Vec<Progress> {
    let led = |id: u64| ranges.iter().filter(|r| r.leader == id).count();
    let held = |id: u64| ranges.iter().filter(|r| r.replicas.iter().any(|(n, _)| *n == id)).count();
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.id);
    let mut out = Vec::new();
    for n in &sorted {
        let id = n.id;
        if n.decommissioning {
            let left = held(id);
            let detail = if left == 0 {
                format!("done: node {id} holds no replica and can be stopped")
            } else {
                format!("{left} replicas still to move off node {id}")
            };
            out.push(Progress { kind: "decommission", node_id: id, remaining: left, detail });
        } else if n.draining && !n.dead {
            let left = led(id);
            let detail = if left == 0 {
                format!("done: node {id} leads no range and can be restarted")
            } else {
                format!("{left} leaderships still to move off node {id}")
            };
            out.push(Progress { kind: "drain", node_id: id, remaining: left, detail });
        } else if n.dead && held(id) > 0 {
            let left = held(id);
            out.push(Progress {
                kind: "replace",
                node_id: id,
                remaining: left,
                detail: format!("{left} replicas on dead node {id} still to replace elsewhere"),
            });
        }
    }
    // A range counts its voters on nodes that stay, against the factor the nodes
    // that can hold it allow (a 3-node cluster cannot give a table 5 replicas).
    let staying: Vec<u64> = nodes.iter().filter(|n| !n.dead && !n.decommissioning).map(|n| n.id).collect();
    let short = ranges
        .iter()
        .filter(|r| {
            let voters = r.replicas.iter().filter(|(n, learner)| !learner && staying.contains(n)).count();
            voters < r.rf_or(default_rf).min(staying.len())
        })
        .count();
    if short > 0 {
        out.push(Progress {
            kind: "replicate",
            node_id: 0,
            remaining: short,
            detail: format!("{short} ranges have fewer voters than their replication factor"),
        });
    }
    if rebalance {
        let accepting: Vec<&NodeView> = sorted.iter().copied().filter(|n| n.accepts()).collect();
        for (kind, what, count) in [
            ("rebalance-replicas", "replica", &held as &dyn Fn(u64) -> usize),
            ("rebalance-leaders", "leader", &led as &dyn Fn(u64) -> usize),
        ] {
            if let Some(p) = spread(&accepting, kind, what, count) {
                out.push(p);
            }
        }
    }
    out
}

/// A spread the balancer would still narrow (the same rule as `balance`: a gap of
/// two or more, and a node outside the tolerance), else `None`.
fn spread(nodes: &[&NodeView], kind: &'static str, what: &str, count: &dyn Fn(u64) -> usize) -> Option<Progress> {
    if nodes.len() < 2 {
        return None;
    }
    let counts: Vec<(u64, usize)> = nodes.iter().map(|n| (n.id, count(n.id))).collect();
    let mean = counts.iter().map(|(_, c)| *c).sum::<usize>() as f64 / counts.len() as f64;
    let (lo_node, lo) = counts.iter().copied().min_by_key(|(id, c)| (*c, *id))?;
    let (hi_node, hi) = counts.iter().copied().max_by_key(|(id, c)| (*c, std::cmp::Reverse(*id)))?;
    if hi < lo + 2 || !(off(hi, mean) || off(lo, mean)) {
        return None;
    }
    Some(Progress {
        kind,
        node_id: 0,
        remaining: hi - mean.ceil() as usize,
        detail: format!(
            "{what} counts range from {lo} (node {lo_node}) to {hi} (node {hi_node}) against a mean of {mean:.1}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeView {
        NodeView { id, live: true, dead: false, draining: false, decommissioning: false, zone: String::new() }
    }

    fn range(id: u64, nodes: &[u64], leader: u64) -> RangeView {
        RangeView {
            id,
            replicas: nodes.iter().map(|n| (*n, false)).collect(),
            leader,
            bytes: 0,
            rf: 0,
            lease_preferences: Vec::new(),
            ..Default::default()
        }
    }

    #[test]
    fn a_balanced_fully_replicated_cluster_has_nothing_in_progress() {
        let nodes = vec![node(1), node(2), node(3)];
        let ranges = vec![range(1, &[1, 2, 3], 1), range(2, &[1, 2, 3], 2), range(3, &[1, 2, 3], 3)];
        assert_eq!(report(&nodes, &ranges, 3, true), vec![]);
    }

    #[test]
    fn a_drain_counts_leaderships_down_to_done() {
        let mut nodes = vec![node(1), node(2), node(3)];
        nodes[1].draining = true;
        let ranges = vec![range(1, &[1, 2, 3], 2), range(2, &[1, 2, 3], 2)];
        let p = report(&nodes, &ranges, 3, false);
        assert_eq!((p[0].kind, p[0].node_id, p[0].remaining), ("drain", 2, 2));
        let ranges = vec![range(1, &[1, 2, 3], 1), range(2, &[1, 2, 3], 3)];
        let p = report(&nodes, &ranges, 3, false);
        assert_eq!(p[0].remaining, 0);
        assert!(p[0].detail.starts_with("done"), "{}", p[0].detail);
    }

    #[test]
    fn a_decommission_counts_replicas_and_short_ranges_are_reported() {
        let mut nodes = vec![node(1), node(2), node(3), node(4)];
        nodes[3].decommissioning = true;
        let ranges = vec![range(1, &[1, 2, 4], 1), range(2, &[1, 2, 3], 2)];
        let p = report(&nodes, &ranges, 3, false);
        assert_eq!((p[0].kind, p[0].node_id, p[0].remaining), ("decommission", 4, 1));
        assert_eq!((p[1].kind, p[1].remaining), ("replicate", 1));
    }

    #[test]
    fn a_dead_nodes_replicas_are_counted_until_replaced() {
        let mut nodes = vec![node(1), node(2), node(3), node(4)];
        nodes[2].dead = true;
        nodes[2].live = false;
        let ranges = vec![range(1, &[1, 2, 3], 1), range(2, &[1, 2, 4], 2)];
        let p = report(&nodes, &ranges, 3, false);
        assert_eq!((p[0].kind, p[0].node_id, p[0].remaining), ("replace", 3, 1));
        assert_eq!((p[1].kind, p[1].remaining), ("replicate", 1));
    }

    #[test]
    fn a_new_empty_node_shows_as_rebalancing_until_within_tolerance() {
        let nodes = vec![node(1), node(2), node(3), node(4)];
        let ranges: Vec<RangeView> = (1..=6).map(|i| range(i, &[1, 2, 3], 1 + i % 3)).collect();
        let p = report(&nodes, &ranges, 3, true);
        let kinds: Vec<&str> = p.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, vec!["rebalance-replicas", "rebalance-leaders"]);
        assert!(p[0].detail.contains("from 0 (node 4) to 6 (node 1)"), "{}", p[0].detail);
        assert!(report(&nodes, &ranges, 3, false).is_empty(), "balancing off: nothing reported");
    }
}
