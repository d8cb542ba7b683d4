//! The controller simulator: the controller's pure decisions (`controller::plan`
//! for repairs, `controller::balance` once nothing needs repair) driven over a
//! synthetic cluster (nodes in zones, ranges of skewed sizes) through a node
//! joining per zone, a node dying, a whole zone lost and skewed load (hot ranges
//! splitting). Actions take effect at once, as many per round as asked for.
//! Reports per phase: rounds to converge, moves made against the fewest needed,
//! the final spread of replicas, bytes and leaders, and ranges ever
//! under-replicated or below quorum. `cairn sim placement` runs it.

use crate::controller::balance;
use crate::controller::plan::{self, Action, NodeView, RangeView};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub nodes: usize,
    pub zones: usize,
    pub ranges: usize,
    pub rf: usize,
    pub seed: u64,
    /// Actions the controller may take per round (the real one: 4, 2 of them moves).
    pub actions_per_round: usize,
    /// A phase that has not converged after this many rounds stops there.
    pub max_rounds: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { nodes: 100, zones: 5, ranges: 50_000, rf: 3, seed: 1, actions_per_round: 64, max_rounds: 5_000 }
    }
}

/// What one phase did.
#[derive(Clone, Debug, Default)]
pub struct PhaseReport {
    pub name: &'static str,
    pub rounds: usize,
    pub converged: bool,
    pub adds: usize,
    pub removes: usize,
    pub moves: usize,
    pub transfers: usize,
    /// The fewest replica placements the event calls for (adds plus moves).
    pub minimum_placements: usize,
    /// Ranges that had fewer than their factor of live voters at some point.
    pub ever_under_replicated: usize,
    /// Ranges that had fewer than a quorum of live voters at some point.
    pub ever_below_quorum: usize,
    pub under_replicated_at_end: usize,
    /// Ranges with two replicas in one zone at the end.
    pub zone_conflicts_at_end: usize,
    /// Largest distance from the mean over live nodes, as a fraction of the mean.
    pub replica_spread: f64,
    pub byte_spread: f64,
    pub leader_spread: f64,
    /// Mean wall-clock time of one decision round (plan, then balance).
    pub round_ms: f64,
}

impl PhaseReport {
    /// Placements made (adds and moves) against the fewest needed.
    pub fn placement_ratio(&self) -> f64 {
        if self.minimum_placements == 0 {
            return 0.0;
        }
        (self.adds + self.moves) as f64 / self.minimum_placements as f64
    }
}

impl fmt::Display for PhaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12} {} in {} rounds ({:.1} ms each): {} adds, {} moves, {} removes, {} transfers",
            self.name,
            if self.converged { "converged" } else { "NOT converged" },
            self.rounds,
            self.round_ms,
            self.adds,
            self.moves,
            self.removes,
            self.transfers
        )?;
        if self.minimum_placements > 0 {
            write!(f, " ({:.2}x the {} placements needed)", self.placement_ratio(), self.minimum_placements)?;
        }
        write!(
            f,
            "; spread ±{:.1}% replicas, ±{:.1}% bytes, ±{:.1}% leaders; ever under-replicated {}, ever below \
             quorum {}, under-replicated at the end {}, zone conflicts {}",
            self.replica_spread * 100.0,
            self.byte_spread * 100.0,
            self.leader_spread * 100.0,
            self.ever_under_replicated,
            self.ever_below_quorum,
            self.under_replicated_at_end,
            self.zone_conflicts_at_end
        )
    }
}

struct Fleet {
    cfg: FleetConfig,
    nodes: Vec<NodeView>,
    ranges: Vec<RangeView>,
    next_range_id: u64,
    rng: StdRng,
    under: HashSet<u64>,
    below_quorum: HashSet<u64>,
}

fn zone_name(i: usize) -> String {
    format!("zone-{i}")
}

impl Fleet {
    fn new(cfg: FleetConfig) -> Fleet {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let nodes: Vec<NodeView> = (0..cfg.nodes)
            .map(|i| NodeView {
                id: i as u64 + 1,
                live: true,
                dead: false,
                draining: false,
                decommissioning: false,
                zone: zone_name(i % cfg.zones.max(1)),
            })
            .collect();
        // Random zone-diverse placement (as a cluster that grew unevenly might have):
        // the first phase balances it.
        let ranges = (0..cfg.ranges)
            .map(|i| {
                let mut chosen: Vec<u64> = Vec::new();
                let mut zones: HashSet<String> = HashSet::new();
                while chosen.len() < cfg.rf.min(nodes.len()) {
                    let n = &nodes[rng.random_range(0..nodes.len())];
                    let fresh_zone = !zones.contains(&n.zone) || zones.len() >= cfg.zones;
                    if !chosen.contains(&n.id) && fresh_zone {
                        chosen.push(n.id);
                        zones.insert(n.zone.clone());
                    }
                }
                // Skewed sizes: most ranges small, a few near the split threshold.
                let u: f64 = rng.random();
                RangeView {
                    id: i as u64 + 2,
                    leader: chosen[0],
                    replicas: chosen.iter().map(|n| (*n, false)).collect(),
                    bytes: ((64u64 << 20) as f64 * u * u * u) as u64,
                    ..Default::default()
                }
            })
            .collect();
        let next_range_id = cfg.ranges as u64 + 2;
        Fleet { cfg, nodes, ranges, next_range_id, rng, under: HashSet::new(), below_quorum: HashSet::new() }
    }

    fn live(&self, n: u64) -> bool {
        self.nodes.iter().any(|x| x.id == n && x.live)
    }

    /// Records ranges short of their factor or of a quorum of live voters.
    fn note_health(&mut self) {
        let dead: HashSet<u64> = self.nodes.iter().filter(|n| !n.live).map(|n| n.id).collect();
        let rf = self.cfg.rf;
        for r in &self.ranges {
            let live = r.replicas.iter().filter(|(n, learner)| !learner && !dead.contains(n)).count();
            if live < rf {
                self.under.insert(r.id);
            }
            if live < rf / 2 + 1 {
                self.below_quorum.insert(r.id);
            }
        }
    }

    /// Kills `ids`: their ranges elect new leaders among the live voters.
    fn kill(&mut self, ids: &[u64]) {
        for n in self.nodes.iter_mut().filter(|n| ids.contains(&n.id)) {
            n.live = false;
            n.dead = true;
        }
        let live: HashSet<u64> = self.nodes.iter().filter(|n| n.live).map(|n| n.id).collect();
        for r in &mut self.ranges {
            if !live.contains(&r.leader) {
                r.leader = r.replicas.iter().map(|(n, _)| *n).find(|n| live.contains(n)).unwrap_or(0);
            }
        }
        self.note_health();
    }

    fn apply(&mut self, action: &Action, report: &mut PhaseReport) {
        let Some(i) = self.ranges.iter().position(|r| r.id == action.range()) else { return };
        let r = &mut self.ranges[i];
        let remove = |r: &mut RangeView, node: u64| {
            r.replicas.retain(|(n, _)| *n != node);
            if r.leader == node {
                r.leader = r.replicas.first().map_or(0, |(n, _)| *n);
            }
        };
        match *action {
            Action::AddReplica { node, .. } => {
                match r.replicas.iter_mut().find(|(n, _)| *n == node) {
                    Some(x) => x.1 = false,
                    None => r.replicas.push((node, false)),
                }
                report.adds += 1;
            }
            Action::RemoveReplica { node, .. } | Action::RetireReplica { node, .. } => {
                remove(r, node);
                report.removes += 1;
            }
            Action::TransferLeader { to, .. } => {
                r.leader = to;
                report.transfers += 1;
            }
            Action::MoveReplica { from, to, .. } => {
                r.replicas.push((to, false));
                remove(r, from);
                report.moves += 1;
            }
            Action::MergeRanges { .. } => {}
        }
        // A leader on a node that just lost its replica, or a dead one, is replaced by election.
        let (leader, members): (u64, Vec<u64>) = (r.leader, r.replicas.iter().map(|(n, _)| *n).collect());
        if !self.live(leader) {
            let elected = members.into_iter().find(|n| self.live(*n)).unwrap_or(0);
            self.ranges[i].leader = elected;
        }
    }

    /// Runs decision rounds until the controller has nothing left to do.
    fn converge(&mut self, name: &'static str, minimum_placements: usize) -> PhaseReport {
        let mut report = PhaseReport { name, minimum_placements, ..Default::default() };
        let mut spent = std::time::Duration::ZERO;
        while report.rounds < self.cfg.max_rounds {
            let started = crate::clock::os_now();
            let n = self.cfg.actions_per_round;
            let mut decisions: Vec<Action> = plan::plan(&self.nodes, &self.ranges, self.cfg.rf, n);
            if decisions.is_empty() {
                decisions = balance::balance(&self.nodes, &self.ranges, self.cfg.rf, n, n)
                    .into_iter()
                    .map(|d| d.action)
                    .collect();
            }
            spent += crate::clock::os_now().saturating_duration_since(started);
            report.rounds += 1;
            if decisions.is_empty() {
                report.converged = true;
                break;
            }
            for d in &decisions {
                self.apply(d, &mut report);
            }
            self.note_health();
        }
        report.round_ms = spent.as_secs_f64() * 1000.0 / report.rounds.max(1) as f64;
        self.finish(&mut report);
        report
    }

    fn finish(&mut self, report: &mut PhaseReport) {
        let live: Vec<&NodeView> = self.nodes.iter().filter(|n| n.live).collect();
        let zone: BTreeMap<u64, &str> = self.nodes.iter().map(|n| (n.id, n.zone.as_str())).collect();
        let live_zones: HashSet<&str> = live.iter().map(|n| n.zone.as_str()).collect();
        let mut per: BTreeMap<u64, (f64, f64, f64)> = live.iter().map(|n| (n.id, (0.0, 0.0, 0.0))).collect();
        for r in &self.ranges {
            for (n, _) in &r.replicas {
                if let Some(p) = per.get_mut(n) {
                    p.0 += 1.0;
                    p.1 += r.bytes as f64;
                }
            }
            if let Some(p) = per.get_mut(&r.leader) {
                p.2 += 1.0;
            }
            let live_voters = r.replicas.iter().filter(|(n, _)| per.contains_key(n)).count();
            if live_voters < self.cfg.rf.min(live.len()) {
                report.under_replicated_at_end += 1;
            }
            let zones: HashSet<&str> = r.replicas.iter().filter_map(|(n, _)| zone.get(n).copied()).collect();
            if zones.len() < r.replicas.len() && zones.len() < live_zones.len() {
                report.zone_conflicts_at_end += 1;
            }
        }
        let spread = |f: &dyn Fn(&(f64, f64, f64)) -> f64| {
            let values: Vec<f64> = per.values().map(f).collect();
            let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
            if mean == 0.0 {
                return 0.0;
            }
            values.iter().map(|v| (v - mean).abs() / mean).fold(0.0, f64::max)
        };
        report.replica_spread = spread(&|p| p.0);
        report.byte_spread = spread(&|p| p.1);
        report.leader_spread = spread(&|p| p.2);
        report.ever_under_replicated = self.under.len();
        report.ever_below_quorum = self.below_quorum.len();
        self.under.clear();
        self.below_quorum.clear();
    }

    fn replicas_on(&self, ids: &[u64]) -> usize {
        self.ranges.iter().map(|r| r.replicas.iter().filter(|(n, _)| ids.contains(n)).count()).sum()
    }
}

/// Runs every phase and reports each.
pub fn run(cfg: &FleetConfig) -> Vec<PhaseReport> {
    let mut fleet = Fleet::new(cfg.clone());
    let mut out = vec![fleet.converge("initial", 0)];

    // One new node per zone: each should end with the mean share.
    let zones = cfg.zones.max(1);
    let first_new = fleet.nodes.len() as u64 + 1;
    for z in 0..zones {
        fleet.nodes.push(NodeView {
            id: first_new + z as u64,
            live: true,
            dead: false,
            draining: false,
            decommissioning: false,
            zone: zone_name(z),
        });
    }
    let total: usize = fleet.ranges.iter().map(|r| r.replicas.len()).sum();
    let share = total / fleet.nodes.len();
    out.push(fleet.converge("join", share * zones));

    let victim = fleet.nodes[0].id;
    let lost = fleet.replicas_on(&[victim]);
    fleet.kill(&[victim]);
    out.push(fleet.converge("node death", lost));

    // A whole zone: with replicas in distinct zones, no range loses a quorum.
    let zone_lost: Vec<u64> = fleet.nodes.iter().filter(|n| n.live && n.zone == zone_name(1)).map(|n| n.id).collect();
    let lost = fleet.replicas_on(&zone_lost);
    fleet.kill(&zone_lost);
    out.push(fleet.converge("zone loss", lost));

    // Skewed load: the hottest 2% of ranges (a skewed pick) split in two where they
    // stand, piling new replicas on the nodes that held them.
    let hot = (fleet.ranges.len() / 50).max(1);
    let mut split = Vec::new();
    for _ in 0..hot {
        let u: f64 = fleet.rng.random();
        let i = ((u * u * u) * fleet.ranges.len() as f64) as usize % fleet.ranges.len();
        let mut right = fleet.ranges[i].clone();
        fleet.ranges[i].bytes /= 2;
        right.bytes = fleet.ranges[i].bytes;
        right.id = fleet.next_range_id;
        fleet.next_range_id += 1;
        split.push(right);
    }
    fleet.ranges.extend(split);
    out.push(fleet.converge("skewed load", 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_converges_through_every_phase_without_losing_a_quorum() {
        let cfg = FleetConfig { nodes: 20, zones: 5, ranges: 1_000, seed: 7, ..Default::default() };
        let reports = run(&cfg);
        for r in &reports {
            assert!(r.converged, "{r}");
            assert_eq!(r.ever_below_quorum, 0, "{r}");
            assert_eq!(r.under_replicated_at_end, 0, "{r}");
            assert_eq!(r.zone_conflicts_at_end, 0, "{r}");
            assert!(r.replica_spread <= 0.12 && r.leader_spread <= 0.12, "{r}");
        }
        let join = &reports[1];
        assert!(join.placement_ratio() <= 1.3, "{join}");
        // Count moves take ranges of typical size: a joined node once held a fraction
        // of the mean bytes (±66%) when they took the smallest.
        assert!(join.byte_spread <= 0.2, "{join}");
        let death = &reports[2];
        assert!(death.adds >= death.minimum_placements && death.placement_ratio() <= 1.3, "{death}");
    }
}
