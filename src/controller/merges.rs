//! Which adjacent ranges to merge back, pure: pairs of neighbours in one table,
//! small and cold together (under the merge thresholds), whole (their
//! replication factor in voters, no learners) and on live nodes, whose
//! boundary no operator or table declared. A pair whose voters are on different
//! nodes is first aligned, one replica move of the right range at a time; the
//! merge itself needs them on the same nodes (`meta::merge`).

use super::plan::{Action, NodeView, RangeView};
use crate::keys::meta::META_RANGE_ID;
use std::collections::{BTreeSet, HashSet};

/// When ranges merge: the pair's bytes and requests per second, together, at or
/// under these. `max_bytes` 0 turns merging off; `max_qps` 0 ignores load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergePolicy {
    pub max_bytes: u64,
    pub max_qps: u64,
}

/// Two adjacent ranges, left then right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MergePair {
    pub left: u64,
    pub right: u64,
}

fn voters(r: &RangeView) -> BTreeSet<u64> {
    r.replicas.iter().filter(|(_, learner)| !learner).map(|(n, _)| *n).collect()
}

fn whole(r: &RangeView, rf: usize) -> bool {
    r.replicas.iter().all(|(_, learner)| !learner) && r.replicas.len() == r.rf_or(rf)
}

/// Every pair that may merge now, each range in at most one pair, in key order.
pub fn candidates(nodes: &[NodeView], ranges: &[RangeView], rf: usize, policy: MergePolicy) -> Vec<MergePair> {
    if policy.max_bytes == 0 {
        return Vec::new();
    }
    let live: HashSet<u64> = nodes.iter().filter(|n| n.live && !n.dead).map(|n| n.id).collect();
    let mut sorted: Vec<&RangeView> = ranges.iter().filter(|r| r.id != META_RANGE_ID).collect();
    sorted.sort_by(|a, b| a.start.cmp(&b.start));
    let mut used = HashSet::new();
    let mut out = Vec::new();
    for pair in sorted.windows(2) {
        let (l, r) = (pair[0], pair[1]);
        let adjacent = !l.end.is_empty() && l.end == r.start && l.table.is_some() && l.table == r.table;
        let small = l.bytes.saturating_add(r.bytes) <= policy.max_bytes;
        let cold = policy.max_qps == 0 || l.qps.saturating_add(r.qps) <= policy.max_qps;
        let healthy = whole(l, rf) && whole(r, rf) && voters(l).union(&voters(r)).all(|n| live.contains(n));
        let free = !used.contains(&l.id) && !used.contains(&r.id) && !l.frozen && !r.frozen;
        if adjacent && !r.sticky_start && small && cold && healthy && free {
            used.insert(l.id);
            used.insert(r.id);
            out.push(MergePair { left: l.id, right: r.id });
        }
    }
    out
}

/// The next step towards merging `pair`: the merge once both ranges have their
/// voters on the same nodes, else a move of one of the right range's replicas
/// to a node of the left range's.
pub fn next_step(pair: MergePair, ranges: &[RangeView]) -> Option<Action> {
    let l = ranges.iter().find(|r| r.id == pair.left)?;
    let r = ranges.iter().find(|r| r.id == pair.right)?;
    let (lv, rv) = (voters(l), voters(r));
    if lv == rv {
        return Some(Action::MergeRanges { left: pair.left, right: pair.right });
    }
    let from = rv.difference(&lv).next().copied()?;
    let to = lv.difference(&rv).next().copied()?;
    Some(Action::MoveReplica { range: pair.right, from, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeView {
        NodeView { id, live: true, dead: false, draining: false, decommissioning: false, zone: String::new() }
    }

    fn range(id: u64, start: &[u8], end: &[u8], nodes: &[u64], bytes: u64) -> RangeView {
        RangeView {
            id,
            replicas: nodes.iter().map(|n| (*n, false)).collect(),
            bytes,
            start: start.to_vec(),
            end: end.to_vec(),
            table: Some(7),
            ..Default::default()
        }
    }

    const POLICY: MergePolicy = MergePolicy { max_bytes: 100, max_qps: 50 };

    #[test]
    fn small_cold_neighbours_merge_and_each_range_once() {
        let nodes = [node(1), node(2), node(3)];
        let ranges = vec![
            range(4, b"c", b"e", &[1, 2, 3], 10),
            range(2, b"a", b"c", &[1, 2, 3], 10),
            range(5, b"e", b"", &[1, 2, 3], 10),
        ];
        let c = candidates(&nodes, &ranges, 3, POLICY);
        assert_eq!(c, vec![MergePair { left: 2, right: 4 }], "in key order; range 4 is taken");
        assert_eq!(next_step(c[0], &ranges), Some(Action::MergeRanges { left: 2, right: 4 }));
    }

    #[test]
    fn large_hot_sticky_frozen_partial_cross_table_or_off_do_not_merge() {
        let nodes = [node(1), node(2), node(3)];
        let pair = |f: &dyn Fn(&mut RangeView)| {
            let mut right = range(4, b"c", b"", &[1, 2, 3], 10);
            f(&mut right);
            vec![range(2, b"a", b"c", &[1, 2, 3], 10), right]
        };
        assert_eq!(candidates(&nodes, &pair(&|_| {}), 3, POLICY).len(), 1, "the baseline merges");
        assert!(candidates(&nodes, &pair(&|r| r.bytes = 95), 3, POLICY).is_empty(), "too large together");
        assert!(candidates(&nodes, &pair(&|r| r.qps = 55), 3, POLICY).is_empty(), "too busy together");
        assert!(candidates(&nodes, &pair(&|r| r.sticky_start = true), 3, POLICY).is_empty(), "declared split");
        assert!(candidates(&nodes, &pair(&|r| r.frozen = true), 3, POLICY).is_empty(), "a merge under way");
        assert!(candidates(&nodes, &pair(&|r| r.table = Some(8)), 3, POLICY).is_empty(), "another table");
        assert!(candidates(&nodes, &pair(&|r| r.replicas[2].1 = true), 3, POLICY).is_empty(), "a learner");
        assert!(candidates(&nodes, &pair(&|r| r.replicas.truncate(2)), 3, POLICY).is_empty(), "under-replicated");
        assert!(candidates(&nodes, &pair(&|_| {}), 3, MergePolicy { max_bytes: 0, max_qps: 0 }).is_empty(), "off");
        let down = [node(1), node(2), NodeView { live: false, ..node(3) }];
        assert!(candidates(&down, &pair(&|_| {}), 3, POLICY).is_empty(), "a replica's node is not live");
    }

    #[test]
    fn neighbours_on_different_nodes_are_aligned_first() {
        let nodes = [node(1), node(2), node(3), node(4)];
        let ranges = vec![range(2, b"a", b"c", &[1, 2, 3], 10), range(4, b"c", b"", &[1, 2, 4], 10)];
        let c = candidates(&nodes, &ranges, 3, POLICY);
        assert_eq!(next_step(c[0], &ranges), Some(Action::MoveReplica { range: 4, from: 4, to: 3 }));
    }
}
