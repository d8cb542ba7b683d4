//! The simulated network: the transport each simulated node's store loop sends
//! through, and the wire between nodes, where seeded faults happen (partitions
//! in either direction, loss, duplication, delay and so reordering).
//!
//! A packet's fate is drawn when it is sent; a partition that starts while it
//! is in flight still drops it on arrival, as a cut cable would.

use crate::raftstore::raft_storage::RangeStorage;
use crate::raftstore::transport::{destination, envelope, RaftTransport};
use cairn_proto::internal::RaftEnvelope;
use parking_lot::Mutex;
use raft::eraftpb::{Message, MessageType};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub enum Payload {
    Raft(RaftEnvelope),
    /// A whole snapshot: the real transport streams it in chunks, and reports
    /// the outcome to the sender, which the simulator does on delivery or loss.
    Snapshot(RaftEnvelope),
    Keepalive,
}

pub struct Packet {
    pub from: u64,
    pub to: u64,
    pub payload: Payload,
}

impl Packet {
    /// A short stable description, for the run's fingerprint.
    pub fn describe(&self) -> (u64, u64, u64, i32) {
        match &self.payload {
            Payload::Raft(e) | Payload::Snapshot(e) if e.control != 0 => {
                (self.from, self.to, e.range_id, -10 - e.control)
            }
            Payload::Raft(e) | Payload::Snapshot(e) => {
                let kind =
                    <Message as prost011::Message>::decode(e.message.as_slice()).map(|m| m.msg_type).unwrap_or(-1);
                (self.from, self.to, e.range_id, kind)
            }
            Payload::Keepalive => (self.from, self.to, 0, -2),
        }
    }
}

/// The store loop's view of the network on one simulated node: sends only queue.
pub struct SimTransport {
    node_id: u64,
    outbox: Mutex<Vec<Packet>>,
    last_seen: Mutex<BTreeMap<u64, Instant>>,
    started: Instant,
}

impl SimTransport {
    pub fn new(node_id: u64, started: Instant) -> Self {
        SimTransport { node_id, outbox: Mutex::new(Vec::new()), last_seen: Mutex::new(BTreeMap::new()), started }
    }

    pub fn take_outbox(&self) -> Vec<Packet> {
        std::mem::take(&mut *self.outbox.lock())
    }

    pub fn mark_seen(&self, from: u64, at: Instant) {
        self.last_seen.lock().insert(from, at);
    }
}

impl RaftTransport for SimTransport {
    fn send_all(&self, store: &RangeStorage, msgs: Vec<Message>) {
        let mut out = self.outbox.lock();
        for m in msgs {
            let Some(to) = destination(store, &m) else { continue };
            let env = envelope(store, &m);
            let payload =
                if m.get_msg_type() == MessageType::MsgSnapshot { Payload::Snapshot(env) } else { Payload::Raft(env) };
            out.push(Packet { from: self.node_id, to, payload });
        }
    }

    fn send_control(&self, to: u64, env: RaftEnvelope) {
        self.outbox.lock().push(Packet { from: self.node_id, to, payload: Payload::Raft(env) });
    }

    fn keepalive(&self, to: u64) {
        self.outbox.lock().push(Packet { from: self.node_id, to, payload: Payload::Keepalive });
    }

    fn silent_for(&self, node_id: u64, now: Instant) -> Duration {
        let seen = self.last_seen.lock().get(&node_id).copied().unwrap_or(self.started);
        now.saturating_duration_since(seen)
    }
}

/// The faults currently on the wire.
#[derive(Clone, Debug, Default)]
pub struct WireFaults {
    /// Directed pairs (from, to) whose packets are dropped.
    pub blocked: BTreeSet<(u64, u64)>,
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Extra delay, drawn per packet from `0..=extra_delay_ms` (reorders packets).
    pub extra_delay_ms: u64,
}

impl WireFaults {
    pub fn is_blocked(&self, from: u64, to: u64) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Cuts every link between `side` and the rest of `nodes`, both ways.
    pub fn partition(&mut self, side: &[u64], nodes: &[u64]) {
        for a in side {
            for b in nodes.iter().filter(|b| !side.contains(b)) {
                self.blocked.insert((*a, *b));
                self.blocked.insert((*b, *a));
            }
        }
    }
}

/// What the wire did with the packets due now.
#[derive(Default)]
pub struct Arrivals {
    pub delivered: Vec<Packet>,
    /// Snapshots that never arrived: their senders are told the send failed.
    pub lost_snapshots: Vec<Packet>,
}

pub struct Wire {
    rng: StdRng,
    pub faults: WireFaults,
    base_delay_ms: (u64, u64),
    seq: u64,
    /// In flight, by (delivery time, send order).
    in_flight: BTreeMap<(u64, u64), Packet>,
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

impl Wire {
    pub fn new(rng: StdRng) -> Self {
        Wire {
            rng,
            faults: WireFaults::default(),
            base_delay_ms: (1, 3),
            seq: 0,
            in_flight: BTreeMap::new(),
            sent: 0,
            dropped: 0,
            duplicated: 0,
        }
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = self.base_delay_ms;
        let extra =
            if self.faults.extra_delay_ms > 0 { self.rng.random_range(0..=self.faults.extra_delay_ms) } else { 0 };
        self.rng.random_range(lo..=hi) + extra
    }

    fn enqueue(&mut self, at: u64, packet: Packet) {
        self.seq += 1;
        self.in_flight.insert((at, self.seq), packet);
    }

    /// Puts a packet on the wire at `now_ms`; it may be lost at once.
    pub fn send(&mut self, now_ms: u64, packet: Packet, lost: &mut Vec<Packet>) {
        self.sent += 1;
        if self.faults.loss > 0.0 && self.rng.random_bool(self.faults.loss) {
            self.dropped += 1;
            lost.push(packet);
            return;
        }
        if self.faults.duplicate > 0.0 && self.rng.random_bool(self.faults.duplicate) {
            if let Payload::Raft(env) = &packet.payload {
                self.duplicated += 1;
                let copy = Packet { from: packet.from, to: packet.to, payload: Payload::Raft(env.clone()) };
                let at = now_ms + self.delay();
                self.enqueue(at, copy);
            }
        }
        let at = now_ms + self.delay();
        self.enqueue(at, packet);
    }

    /// Takes the packets due by `now_ms`, in delivery order; those on a link that
    /// is cut now are dropped.
    pub fn arrivals(&mut self, now_ms: u64) -> Arrivals {
        let mut out = Arrivals::default();
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let packet = entry.remove();
            if self.faults.is_blocked(packet.from, packet.to) {
                self.dropped += 1;
                if matches!(packet.payload, Payload::Snapshot(_)) {
                    out.lost_snapshots.push(packet);
                }
                continue;
            }
            out.delivered.push(packet);
        }
        out
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
