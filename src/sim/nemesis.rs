//! The seeded fault schedule: which fault comes next and for how long. Pure:
//! it draws from its own RNG and sees only node ids, so a seed fixes the
//! whole schedule. The world (`sim::World`) carries each fault out.

use rand::rngs::StdRng;
use rand::Rng;

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Cut a minority off from the rest, both ways.
    Partition { side: Vec<u64> },
    /// Drop packets from one node to another, but not back.
    OneWay { from: u64, to: u64 },
    /// Cut off the node that leads the most ranges.
    IsolateLeader,
    /// Lose this share of packets.
    Lossy { loss: f64 },
    /// Deliver this share of packets twice.
    Duplicate { share: f64 },
    /// Delay each packet by up to this much more, which reorders them.
    Delay { extra_ms: u64 },
    /// Power-cut one node; it restarts after `down_ms`.
    Crash { node: u64, down_ms: u64 },
    /// Power-cut every node at once.
    PowerCut { down_ms: u64 },
    /// Power-cut one node and flip a bit of one stored Raft log entry on its disk;
    /// it restarts after `down_ms` and must quarantine and rebuild that replica.
    DamageLog { node: u64, down_ms: u64 },
    /// Each sync takes this long on one node.
    SlowDisk { node: u64, latency_ms: u64 },
    /// The node stops taking turns (SIGSTOP), its queue filling meanwhile.
    Pause { node: u64 },
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "partition",
            Fault::OneWay { .. } => "one-way",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Lossy { .. } => "lossy",
            Fault::Duplicate { .. } => "duplicate",
            Fault::Delay { .. } => "delay",
            Fault::Crash { .. } => "crash",
            Fault::PowerCut { .. } => "power-cut",
            Fault::DamageLog { .. } => "damaged-log-entry",
            Fault::SlowDisk { .. } => "slow-disk",
            Fault::Pause { .. } => "pause",
        }
    }
}

/// A topology change, made while faults are happening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Split,
    TransferLeader,
    MoveReplica,
    /// Merge a range with its right-hand neighbour (runs with `SimConfig::merges`).
    Merge,
}

pub struct Nemesis {
    rng: StdRng,
    nodes: Vec<u64>,
}

impl Nemesis {
    pub fn new(rng: StdRng, nodes: Vec<u64>) -> Self {
        Nemesis { rng, nodes }
    }

    fn node(&mut self) -> u64 {
        self.nodes[self.rng.random_range(0..self.nodes.len())]
    }

    /// The next fault and how long it lasts (ms).
    pub fn next_fault(&mut self) -> (Fault, u64) {
        let duration = self.rng.random_range(300..2_500);
        let fault = match self.rng.random_range(0..21) {
            0..=2 => {
                let minority = (self.nodes.len() - 1) / 2;
                let size = self.rng.random_range(1..=minority.max(1));
                let mut side = Vec::new();
                while side.len() < size {
                    let n = self.node();
                    if !side.contains(&n) {
                        side.push(n);
                    }
                }
                side.sort_unstable();
                Fault::Partition { side }
            }
            3 | 4 => {
                let from = self.node();
                let to = loop {
                    let n = self.node();
                    if n != from {
                        break n;
                    }
                };
                Fault::OneWay { from, to }
            }
            5 | 6 => Fault::IsolateLeader,
            7 => Fault::Lossy { loss: self.rng.random_range(0.05..0.4) },
            8 => Fault::Duplicate { share: self.rng.random_range(0.05..0.3) },
            9 | 10 => Fault::Delay { extra_ms: self.rng.random_range(10..250) },
            11..=13 => Fault::Crash { node: self.node(), down_ms: self.rng.random_range(50..2_000) },
            14 => Fault::PowerCut { down_ms: self.rng.random_range(50..1_000) },
            20 => Fault::DamageLog { node: self.node(), down_ms: self.rng.random_range(50..1_000) },
            15 | 16 => Fault::SlowDisk { node: self.node(), latency_ms: self.rng.random_range(5..150) },
            _ => Fault::Pause { node: self.node() },
        };
        (fault, duration)
    }

    /// Milliseconds until the next fault once the current one has healed.
    pub fn gap(&mut self) -> u64 {
        self.rng.random_range(50..800)
    }

    /// The next topology change and when (ms from now).
    /// `merges`: merges are among the changes (a second draw, so runs without
    /// them replay as they always did).
    pub fn next_change(&mut self, merges: bool) -> (Change, u64) {
        if merges && self.rng.random_range(0..4) == 0 {
            return (Change::Merge, self.rng.random_range(200..1_500));
        }
        let change = match self.rng.random_range(0..3) {
            0 => Change::Split,
            1 => Change::TransferLeader,
            _ => Change::MoveReplica,
        };
        (change, self.rng.random_range(200..1_500))
    }

    /// How many of a crashed node's unsynced batches reach the disk anyway.
    pub fn flushed_prefix(&mut self, unsynced: usize) -> usize {
        self.rng.random_range(0..=unsynced)
    }

    /// A value in `0..n`, for choices the world makes (which range, which key).
    pub fn pick(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.rng.random_range(0..n)
        }
    }
}
