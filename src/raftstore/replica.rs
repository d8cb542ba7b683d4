//! One range replica inside the store loop: its raft-rs `RawNode` plus the
//! requests waiting on it (proposals by log position, reads by read index).

use super::apply::Applied;
use super::errors;
use super::msg::Reply;
use super::raft_storage::RangeStorage;
use super::shared::ReplicaShared;
use super::RaftConfig;
use cairn_proto::internal::AdminResponse;
use raft::{RawNode, ReadOnlyOption};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on proposals a follower forwards to its leader and waits on.
pub const MAX_FORWARDED: usize = 65_536;

pub enum ProposalReply {
    Command(Reply<Applied>),
    ConfChange(Reply<AdminResponse>),
}

pub struct Proposal {
    pub index: u64,
    pub term: u64,
    pub reply: ProposalReply,
}

pub struct Replica {
    pub raw: RawNode<RangeStorage>,
    pub shared: Arc<ReplicaShared>,
    pub proposals: VecDeque<Proposal>,
    /// Writes this replica proposed as a follower (raft-rs forwards them to the
    /// leader), by request id; answered when this replica applies the entry.
    pub forwarded: HashMap<Vec<u8>, (Instant, Reply<Applied>)>,
    /// The leader this replica last knew; a change fails forwarded work.
    pub last_leader: u64,
    /// Reads not yet turned into a ReadIndex request (batched once per loop turn).
    pub reads_to_submit: Vec<Reply<()>>,
    /// Submitted ReadIndex requests, by context, with when they were sent.
    pub reads_inflight: VecDeque<(u64, Instant, Vec<Reply<()>>)>,
    /// Confirmed reads waiting for the apply index to reach their read index.
    pub reads_waiting_apply: VecDeque<(u64, Vec<Reply<()>>)>,
    pub next_read_ctx: u64,
    pub was_leader: bool,
    /// Loop turns since the last activity; drives hibernation.
    pub idle_ticks: u32,
    pub hibernating: bool,
    /// When this replica last asked whether it is still a member (replica GC).
    pub last_stale_check: Option<Instant>,
    /// Set while the replica is rebuilt after its log failed its checksum.
    pub rebuild: Option<super::quarantine::Rebuild>,
    /// Simulation only: where this replica's election timeouts come from instead
    /// of raft-rs's unseeded draw, and the (term, role, draws) of the last one.
    election_seed: Option<u64>,
    last_election_draw: (u64, u8, u64),
}

pub fn raft_config(peer_id: u64, applied: u64, cfg: &RaftConfig) -> raft::Config {
    raft::Config {
        id: peer_id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        max_size_per_msg: cfg.max_size_per_msg,
        max_inflight_msgs: cfg.max_inflight_msgs,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        ..Default::default()
    }
}

impl Replica {
    /// A replica of `storage`'s range on `node_id`, as Raft peer `peer_id`
    /// (this incarnation's id; see `membership`).
    pub fn new(
        node_id: u64,
        peer_id: u64,
        storage: RangeStorage,
        cfg: &RaftConfig,
        logger: &slog::Logger,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(ReplicaShared::new(storage.desc.clone(), storage.initialized));
        shared.set_applied(storage.apply.applied_index, storage.apply.last_version);
        let rc = raft_config(peer_id, storage.apply.applied_index, cfg);
        let range_id = storage.range_id;
        let raw = RawNode::new(&rc, storage, logger)?;
        let mut replica = Replica {
            raw,
            shared,
            proposals: VecDeque::new(),
            forwarded: HashMap::new(),
            last_leader: 0,
            reads_to_submit: Vec::new(),
            reads_inflight: VecDeque::new(),
            reads_waiting_apply: VecDeque::new(),
            // Random start: a context reused after a restart could match a reply the
            // leader still owes to the previous incarnation.
            next_read_ctx: rand::random::<u32>() as u64 * (1 << 31),
            was_leader: false,
            idle_ticks: 0,
            hibernating: false,
            last_stale_check: None,
            rebuild: None,
            election_seed: cfg.election_seed.map(|seed| {
                seed ^ node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ range_id.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            }),
            last_election_draw: (0, 0, 0),
        };
        replica.draw_election_timeout();
        Ok(replica)
    }

    /// In a simulated run, replaces raft-rs's election timeout (drawn from an
    /// unseeded thread-local RNG) with one drawn from the run's seed, whenever
    /// the replica's term or role has changed since the last draw, which is when
    /// raft-rs draws a new one. A timeout fixed per replica would not do: two
    /// replicas with the same one that start together split their votes forever.
    pub fn draw_election_timeout(&mut self) {
        let Some(seed) = self.election_seed else { return };
        let (term, role) = (self.raw.raft.term, self.raw.raft.state as u8);
        let (last_term, last_role, draws) = self.last_election_draw;
        if draws > 0 && (term, role) == (last_term, last_role) {
            return;
        }
        self.last_election_draw = (term, role, draws + 1);
        let mixed = seed ^ term.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ (draws + 1).wrapping_mul(0xA076_1D64_78BD_642F);
        let span = self.raw.raft.election_timeout().max(1);
        let t = span + (mixed.wrapping_mul(0xFF51_AFD7_ED55_8CCD) >> 32) as usize % span;
        self.raw.raft.set_randomized_election_timeout(t);
    }

    pub fn range_id(&self) -> u64 {
        self.raw.store().range_id
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == raft::StateRole::Leader
    }

    /// This incarnation's Raft peer id.
    pub fn peer_id(&self) -> u64 {
        self.raw.raft.id
    }

    /// The node of the leader this replica knows (0: none known).
    pub fn leader_node(&self) -> u64 {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => 0,
            leader => self.raw.store().node_of(leader).unwrap_or(0),
        }
    }

    /// Fails everything waiting on this replica's leadership (it just lost it).
    /// Proposals may still commit under the next leader, so their outcome is
    /// ambiguous; the gateway retries them with the same request id.
    pub fn fail_pending(&mut self) {
        let id = self.range_id();
        let leader = self.leader_node();
        for p in self.proposals.drain(..) {
            match p.reply {
                ProposalReply::Command(r) => {
                    let _ = r.send(Err(errors::ambiguous(id)));
                }
                ProposalReply::ConfChange(r) => {
                    let _ = r.send(Err(errors::ambiguous(id)));
                }
            }
        }
        let reads = self
            .reads_to_submit
            .drain(..)
            .chain(self.reads_inflight.drain(..).flat_map(|(_, _, v)| v))
            .chain(self.reads_waiting_apply.drain(..).flat_map(|(_, v)| v));
        for r in reads {
            let _ = r.send(Err(errors::not_leader(id, leader)));
        }
        self.fail_forwarded();
    }

    /// Fails what this replica forwarded to a leader that is no longer the leader:
    /// the forwarded message may have been lost. Writes are ambiguous (the gateway
    /// retries them with the same request id); reads are simply retried.
    pub fn fail_forwarded(&mut self) {
        let id = self.range_id();
        for (_, (_, reply)) in self.forwarded.drain() {
            let _ = reply.send(Err(errors::ambiguous(id)));
        }
        let leader = self.leader_node();
        if !self.is_leader() {
            for (_, _, replies) in self.reads_inflight.drain(..) {
                for r in replies {
                    let _ = r.send(Err(errors::not_leader(id, leader)));
                }
            }
        }
    }

    /// Gives up on forwarded writes and ReadIndex requests older than `max_age`.
    pub fn expire_waiting(&mut self, now: Instant, max_age: Duration) {
        let id = self.range_id();
        let expired = |t: &Instant| now.saturating_duration_since(*t) > max_age;
        for (_, (_, reply)) in self.forwarded.extract_if(|_, (t, _)| expired(t)) {
            let _ = reply.send(Err(errors::ambiguous(id)));
        }
        while self.reads_inflight.front().is_some_and(|(_, t, _)| expired(t)) {
            if let Some((_, _, replies)) = self.reads_inflight.pop_front() {
                for r in replies {
                    let _ = r.send(Err(errors::unavailable(format!("range {id}: read index timed out"))));
                }
            }
        }
    }

    /// Resolves proposals once the entry at `index` (with `term`) has been applied.
    /// Returns the reply for the proposal that produced this entry, if any.
    pub fn take_proposal(&mut self, index: u64, term: u64) -> Option<ProposalReply> {
        let id = self.range_id();
        while let Some(p) = self.proposals.front() {
            if p.index > index {
                return None;
            }
            let p = self.proposals.pop_front()?;
            if p.index == index && p.term == term {
                return Some(p.reply);
            }
            // Another entry took this proposal's slot: it was dropped, never applied.
            let e = errors::not_leader(id, self.leader_node());
            match p.reply {
                ProposalReply::Command(r) => {
                    let _ = r.send(Err(e));
                }
                ProposalReply::ConfChange(r) => {
                    let _ = r.send(Err(e));
                }
            }
        }
        None
    }

    /// Releases reads whose read index has been applied.
    pub fn release_reads(&mut self) {
        let applied = self.raw.store().apply.applied_index;
        while self.reads_waiting_apply.front().is_some_and(|(idx, _)| *idx <= applied) {
            if let Some((_, replies)) = self.reads_waiting_apply.pop_front() {
                for r in replies {
                    let _ = r.send(Ok(()));
                }
            }
        }
    }
}
