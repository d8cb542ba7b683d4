//! raft-rs's `Storage` for one range replica, backed by the node's RocksDB.
//!
//! The loop keeps this struct's cached fields (hard state, last index, apply
//! state, descriptor) equal to what it has written, so raft-rs's reads are
//! served from memory or from the `raft_log` column family.

use super::snapshot;
use super::snapshot_worker::{SnapshotWorker, Submitted};
use crate::storage::layout::{self, ApplyState};
use crate::storage::{Cf, Engine};
use cairn_proto::internal::{RangeDescriptor, RangeEpoch, SnapshotData};
use prost::Message as _;
use prost011::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

/// Bound on the bytes of recent entries kept in memory per replica.
const ENTRY_CACHE_BYTES: usize = 4 << 20;

pub struct RangeStorage {
    engine: Arc<Engine>,
    pub range_id: u64,
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub apply: ApplyState,
    pub last_index: u64,
    pub last_term: u64,
    pub desc: RangeDescriptor,
    /// False for a replica created on a message, before its first snapshot.
    pub initialized: bool,
    /// Recent log entries (contiguous, ending at `last_index`), so building
    /// appends for followers does not read RocksDB. Evicted once applied and
    /// replicated everywhere, and bounded in bytes.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Nodes of peers heard from that the descriptor does not name (an
    /// uninitialized replica knows no members, yet must answer its leader).
    /// Bounded: a replica has a handful of peers.
    heard_peers: Vec<(u64, u64)>,
    /// Where snapshots of this replica are built (`None` until the store installs it).
    pub snapshot_worker: Option<Arc<SnapshotWorker>>,
    /// The snapshot offered to followers that need one. raft-rs asks through `&self`.
    snapshot_slot: RefCell<SnapshotSlot>,
}

/// The state of this replica's snapshot, as `Storage::snapshot` sees it.
#[derive(Default)]
pub enum SnapshotSlot {
    #[default]
    None,
    /// A worker is building one; raft-rs is told to ask again.
    Generating,
    /// Built: offered while the log still continues from its index and the
    /// range's descriptor is the one it holds (a follower that applied a split
    /// since refuses one taken before it, which overlaps its right range).
    Ready(Snapshot, RangeEpoch),
}

/// Bound on the peers (peer id, node) a replica remembers beyond its descriptor.
const MAX_HEARD_PEERS: usize = 16;

/// The Raft membership of a descriptor, by replica (peer) id.
pub fn conf_state_of(desc: &RangeDescriptor) -> ConfState {
    let mut cs = ConfState::default();
    for r in &desc.replicas {
        if r.learner {
            cs.learners.push(r.replica_id);
        } else {
            cs.voters.push(r.replica_id);
        }
    }
    cs
}

/// The membership version of a descriptor (0 for a replica that has none yet).
pub fn conf_ver_of(desc: &RangeDescriptor) -> u64 {
    desc.epoch.as_ref().map(|e| e.conf_ver).unwrap_or(0)
}

fn other(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

/// The term and vote this node persisted for a range, if any (also for a range it
/// has no replica of any more: a destroyed replica's term and vote outlive it).
pub fn persisted_hard_state(engine: &Engine, range_id: u64) -> Option<HardState> {
    let raw = engine.get(Cf::RaftState, &layout::hard_state_key(range_id))?;
    HardState::decode(raw.as_slice()).ok()
}

/// A replica whose stored log failed its checksum when loaded: it must not run.
#[derive(Debug)]
pub struct CorruptLog {
    pub desc: RangeDescriptor,
    /// The first damaged entry.
    pub index: u64,
    /// The highest index the log held.
    pub last_index: u64,
}

impl std::fmt::Display for CorruptLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "range {}: the log entry at index {} fails its checksum", self.desc.id, self.index)
    }
}

impl std::error::Error for CorruptLog {}

/// Decodes a log entry read while the replica runs. Damage found here stops the
/// node: raft-rs cannot continue without the entry, and on restart the load
/// finds the damage and quarantines just this replica.
fn decode_running(range_id: u64, index: u64, raw: &[u8]) -> raft::Result<Entry> {
    match layout::decode_log_entry(raw) {
        Ok(e) => Ok(e),
        Err(layout::LogEntryError::Checksum) => crate::storage::engine::fail_stop(
            "a raft log read",
            &format!(
                "range {range_id}: the log entry at index {index} fails its checksum; restart to quarantine the replica"
            ),
        ),
        Err(e) => Err(other(e)),
    }
}

impl RangeStorage {
    /// A replica known only by id, waiting for a snapshot from its leader. It starts
    /// from the term and vote an earlier replica of the range on this node persisted
    /// (one created on a message before a restart, or destroyed since), so it can
    /// never vote twice in a term.
    pub fn uninitialized(engine: Arc<Engine>, range_id: u64) -> Self {
        let mut hard_state = persisted_hard_state(&engine, range_id).unwrap_or_default();
        hard_state.commit = 0; // an empty log commits nothing
        RangeStorage {
            engine,
            range_id,
            hard_state,
            conf_state: ConfState::default(),
            apply: ApplyState::default(),
            last_index: 0,
            last_term: 0,
            desc: RangeDescriptor { id: range_id, epoch: Some(RangeEpoch::default()), ..Default::default() },
            initialized: false,
            cache: VecDeque::new(),
            cache_bytes: 0,
            heard_peers: Vec::new(),
            snapshot_worker: None,
            snapshot_slot: RefCell::default(),
        }
    }

    /// Loads a replica's persisted state; `None` if the range has no descriptor here.
    pub fn load(engine: Arc<Engine>, range_id: u64) -> anyhow::Result<Option<Self>> {
        let Some(raw_desc) = engine.get(Cf::RaftState, &layout::descriptor_key(range_id)) else {
            return Ok(None);
        };
        let desc = RangeDescriptor::decode(raw_desc.as_slice())?;
        let hard_state = match engine.get(Cf::RaftState, &layout::hard_state_key(range_id)) {
            Some(b) => HardState::decode(b.as_slice())?,
            None => HardState::default(),
        };
        let apply = engine
            .get(Cf::RaftState, &layout::apply_state_key(range_id))
            .and_then(|b| ApplyState::decode(&b))
            .ok_or_else(|| anyhow::anyhow!("range {range_id}: descriptor without apply state"))?;
        let mut hard_state = hard_state;
        // Applied entries are committed by definition; the hard state's commit may lag
        // on disk because commit-only advances are not synced.
        hard_state.commit = hard_state.commit.max(apply.applied_index);
        let mut s = RangeStorage {
            engine,
            range_id,
            hard_state,
            conf_state: conf_state_of(&desc),
            apply,
            last_index: apply.truncated_index,
            last_term: apply.truncated_term,
            desc,
            initialized: true,
            cache: VecDeque::new(),
            cache_bytes: 0,
            heard_peers: Vec::new(),
            snapshot_worker: None,
            snapshot_slot: RefCell::default(),
        };
        // The last log entry, if the log holds any beyond the truncation point. Every
        // entry is read, so damage anywhere in the log is found before the replica runs.
        let (lo, hi) = (layout::log_key(range_id, 0), layout::log_key(range_id + 1, 0));
        let mut last: Option<Entry> = None;
        let (mut corrupt, mut last_key_index) = (None, 0);
        s.engine.scan(Cf::RaftLog, &lo, &hi, |k, v| {
            last_key_index = layout::log_index_of(k).unwrap_or(last_key_index);
            match layout::decode_log_entry(v) {
                Ok(e) => last = Some(e),
                Err(_) => corrupt = corrupt.or(Some(last_key_index)),
            }
            true
        });
        if let Some(index) = corrupt {
            let last_index = last_key_index.max(s.last_index);
            return Err(CorruptLog { desc: s.desc.clone(), index, last_index }.into());
        }
        if let Some(e) = last {
            if e.index > s.last_index {
                s.last_index = e.index;
                s.last_term = e.term;
            }
        }
        Ok(Some(s))
    }

    /// The node of Raft peer `peer_id`: from the descriptor, else as heard.
    pub fn node_of(&self, peer_id: u64) -> Option<u64> {
        super::membership::node_of(&self.desc, peer_id)
            .or_else(|| self.heard_peers.iter().find(|(p, _)| *p == peer_id).map(|(_, n)| *n))
    }

    /// The Raft peer id of `node`'s replica: from the descriptor, else as heard.
    pub fn peer_on(&self, node: u64) -> Option<u64> {
        super::membership::replica_id_of(&self.desc, node)
            .or_else(|| self.heard_peers.iter().rev().find(|(_, n)| *n == node).map(|(p, _)| *p))
    }

    /// Remembers that peer `peer_id` spoke from `node`, if the descriptor does not say.
    pub fn heard_from(&mut self, peer_id: u64, node: u64) {
        if peer_id == 0 || super::membership::node_of(&self.desc, peer_id).is_some() {
            return;
        }
        self.heard_peers.retain(|(p, _)| *p != peer_id);
        if self.heard_peers.len() >= MAX_HEARD_PEERS {
            self.heard_peers.remove(0);
        }
        self.heard_peers.push((peer_id, node));
    }

    /// Records entries just persisted (they may replace a conflicting tail).
    pub fn cache_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        while self.cache.back().is_some_and(|e| e.index >= first.index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.data.len() + e.context.len();
            }
        }
        if self.cache.back().is_some_and(|e| e.index + 1 != first.index) {
            self.cache_clear();
        }
        for e in entries {
            self.cache_bytes += e.data.len() + e.context.len();
            self.cache.push_back(e.clone());
        }
        while self.cache_bytes > ENTRY_CACHE_BYTES && self.cache.len() > 1 {
            self.cache_evict_front();
        }
    }

    /// Drops cached entries up to and including `index`.
    pub fn cache_evict_to(&mut self, index: u64) {
        while self.cache.front().is_some_and(|e| e.index <= index) {
            self.cache_evict_front();
        }
    }

    pub fn cache_clear(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    fn cache_evict_front(&mut self) {
        if let Some(e) = self.cache.pop_front() {
            self.cache_bytes -= e.data.len() + e.context.len();
        }
    }

    fn cached(&self, idx: u64) -> Option<&Entry> {
        let first = self.cache.front()?.index;
        self.cache.get(idx.checked_sub(first)? as usize)
    }

    pub fn first_index_value(&self) -> u64 {
        self.apply.truncated_index + 1
    }

    fn read_entry(&self, idx: u64) -> raft::Result<Entry> {
        let raw = self
            .engine
            .get(Cf::RaftLog, &layout::log_key(self.range_id, idx))
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        decode_running(self.range_id, idx, &raw)
    }
}

impl raft::Storage for RangeStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        if self.cached(low).is_some() && self.cached(high - 1).is_some() {
            let mut out = Vec::with_capacity((high - low).min(1024) as usize);
            let mut size = 0u64;
            for idx in low..high {
                let Some(e) = self.cached(idx) else { break };
                size += (e.data.len() + e.context.len() + 16) as u64;
                // raft-rs wants at least one entry even if it alone exceeds the limit.
                if !out.is_empty() && size > max {
                    break;
                }
                out.push(e.clone());
            }
            return Ok(out);
        }
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut failure = None;
        let (lo, hi) = (layout::log_key(self.range_id, low), layout::log_key(self.range_id, high));
        self.engine.scan(Cf::RaftLog, &lo, &hi, |k, v| {
            match decode_running(self.range_id, layout::log_index_of(k).unwrap_or(0), v) {
                Ok(e) => {
                    size += v.len() as u64;
                    // raft-rs wants at least one entry even if it alone exceeds the limit.
                    if !out.is_empty() && size > max {
                        return false;
                    }
                    out.push(e);
                    true
                }
                Err(e) => {
                    failure = Some(other(e));
                    false
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let expected_first = low;
        if out.first().map(|e| e.index) != Some(expected_first) && high > low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.apply.truncated_index {
            return Ok(self.apply.truncated_term);
        }
        if idx < self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if let Some(e) = self.cached(idx) {
            return Ok(e.term);
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_value())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// Never built here: a ready snapshot is offered if the log continues from
    /// its index; otherwise the range is pinned at its applied index and a worker
    /// builds one, while raft-rs is told to ask again (it does on the follower's
    /// next heartbeat response).
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        let Some(worker) = self.snapshot_worker.as_ref().filter(|_| self.initialized) else { return unavailable };
        let mut slot = self.snapshot_slot.borrow_mut();
        match &*slot {
            SnapshotSlot::Ready(snap, epoch)
                if snapshot_index(snap) >= self.apply.truncated_index && Some(epoch) == self.desc.epoch.as_ref() =>
            {
                return Ok(snap.clone());
            }
            SnapshotSlot::Generating => return unavailable,
            SnapshotSlot::Ready(..) | SnapshotSlot::None => {}
        }
        let term = self.term(self.apply.applied_index)?;
        let job = snapshot::pin(&self.engine, &self.desc, &self.apply, term, self.conf_state.clone());
        let old = std::mem::take(&mut *slot);
        let mut result = unavailable;
        *slot = match worker.submit(job) {
            Submitted::Queued => SnapshotSlot::Generating,
            Submitted::Done(snap) => {
                // Built at once (the simulator's disk): offered now, as a real disk's
                // would be on the next request.
                result = Ok(snap.clone());
                SnapshotSlot::Ready(snap, self.desc.epoch.unwrap_or_default())
            }
            Submitted::Refused => SnapshotSlot::None,
        };
        drop(slot);
        self.discard(old);
        result
    }
}

fn snapshot_index(snap: &Snapshot) -> u64 {
    snap.metadata.as_ref().map(|m| m.index).unwrap_or(0)
}

impl RangeStorage {
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Takes the snapshot a worker built. `None` (it failed) lets the next request try again.
    pub fn snapshot_generated(&mut self, snap: Option<Snapshot>) {
        let ready = snap.map(|snap| {
            let epoch = SnapshotData::decode(snap.data.as_slice()).ok().and_then(|d| d.desc?.epoch).unwrap_or_default();
            SnapshotSlot::Ready(snap, epoch)
        });
        let old = std::mem::replace(self.snapshot_slot.get_mut(), ready.unwrap_or_default());
        if !matches!(old, SnapshotSlot::Generating) {
            tracing::debug!(range_id = self.range_id, "a generated snapshot replaced one not asked for");
        }
        self.discard(old);
    }

    /// Stops offering the ready snapshot (a send of it failed; its files may be
    /// gone): the next request builds a new one.
    pub fn drop_snapshot(&mut self) {
        if matches!(self.snapshot_slot.get_mut(), SnapshotSlot::Ready(..)) {
            let old = std::mem::take(self.snapshot_slot.get_mut());
            self.discard(old);
        }
    }

    /// Removes the files of a snapshot no longer offered (`snapshot::remove_generated`).
    fn discard(&self, old: SnapshotSlot) {
        if let SnapshotSlot::Ready(snap, _) = old {
            snapshot::remove_generated(&self.engine, self.range_id, &snap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim_disk::SimDisk;

    #[test]
    fn a_recreated_replica_remembers_its_term_and_vote() {
        let engine = Arc::new(Engine::simulated(Arc::new(SimDisk::new())));
        let voted = HardState { term: 12, vote: 2, commit: 40 };
        let mut b = engine.batch();
        b.put(Cf::RaftState, &layout::hard_state_key(7), &voted.encode_to_vec());
        engine.commit(b, true);
        let s = RangeStorage::uninitialized(engine.clone(), 7);
        assert_eq!((s.hard_state.term, s.hard_state.vote, s.hard_state.commit), (12, 2, 0));
        let fresh = RangeStorage::uninitialized(engine, 8);
        assert_eq!(fresh.hard_state, HardState::default());
    }
}
