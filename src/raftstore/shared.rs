//! The part of a replica that other threads may look at: its descriptor,
//! leader, applied index and a lock that keeps readers off data being deleted.
//! The store loop is the only writer.

use crate::hlc::Version;
use crate::storage::applied::{AppliedSpan, AppliedVersions};
use crate::storage::layout;
use cairn_proto::internal::RangeDescriptor;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct ReplicaShared {
    pub range_id: u64,
    desc: RwLock<RangeDescriptor>,
    initialized: AtomicBool,
    leader_id: AtomicU64,
    is_leader: AtomicBool,
    applied_index: AtomicU64,
    last_version: Mutex<Version>,
    destroyed: AtomicBool,
    /// Readers hold it shared while they read the range's data; destroying the
    /// replica takes it exclusively before deleting the data.
    pub data_lock: RwLock<()>,
    /// Bytes written through this replica since start-up (for the split check).
    pub written_bytes: AtomicU64,
    /// Requests this replica served (for load-based splits).
    pub load: super::load::RangeLoad,
    /// Requests per second it served over the last load check (reported with the
    /// range's record, for the controller's merges).
    pub last_qps: AtomicU64,
    /// Wall-clock ms of the last message from the leader (whether a follower may
    /// serve without a hop to its leader).
    pub leader_contact_ms: AtomicU64,
    /// The latest instant this replica is known to hold every write acknowledged
    /// before: when a ReadIndex that it has since applied up to was started
    /// (bounded-staleness reads; see `executor::prove_fresh`).
    fresh_as_of: Mutex<Option<std::time::Instant>>,
    /// While this replica leads: the earliest instant (Unix ms) its reads judge
    /// expiring values at. Set when it takes over to its clock plus twice the
    /// maximum clock offset, which is past every instant the previous leader
    /// can have judged at, so a key that expired there stays expired here.
    expiry_floor_ms: AtomicU64,
    /// Change-feed readers of what this replica applies.
    pub feeds: super::feed::FeedHub,
}

pub type ReplicaRegistry = Arc<RwLock<HashMap<u64, Arc<ReplicaShared>>>>;

/// The registry as the engine's dedupe expiry sees it: each initialized replica's
/// dedupe span and applied version.
pub struct RegistryAppliedVersions(pub ReplicaRegistry);

impl AppliedVersions for RegistryAppliedVersions {
    fn spans(&self) -> Vec<AppliedSpan> {
        let replicas: Vec<Arc<ReplicaShared>> = self.0.read().values().cloned().collect();
        replicas
            .iter()
            .filter(|r| r.initialized() && !r.destroyed())
            .map(|r| {
                // The version first: a span read after it can only be newer, never wider.
                let applied = r.last_version();
                let (lo, hi) = r.with_desc(|d| layout::dedupe_span(&d.start, &d.end));
                AppliedSpan { lo, hi, applied }
            })
            .collect()
    }
}

impl ReplicaShared {
    pub fn new(desc: RangeDescriptor, initialized: bool) -> Self {
        let range_id = desc.id;
        ReplicaShared {
            range_id,
            desc: RwLock::new(desc),
            initialized: AtomicBool::new(initialized),
            leader_id: AtomicU64::new(0),
            is_leader: AtomicBool::new(false),
            applied_index: AtomicU64::new(0),
            last_version: Mutex::new(Version::ZERO),
            destroyed: AtomicBool::new(false),
            data_lock: RwLock::new(()),
            written_bytes: AtomicU64::new(0),
            last_qps: AtomicU64::new(0),
            load: super::load::RangeLoad::new(range_id),
            leader_contact_ms: AtomicU64::new(0),
            fresh_as_of: Mutex::new(None),
            expiry_floor_ms: AtomicU64::new(0),
            feeds: Default::default(),
        }
    }

    pub fn desc(&self) -> RangeDescriptor {
        self.desc.read().clone()
    }

    pub fn set_desc(&self, d: RangeDescriptor) {
        *self.desc.write() = d;
    }

    pub fn with_desc<T>(&self, f: impl FnOnce(&RangeDescriptor) -> T) -> T {
        f(&self.desc.read())
    }

    pub fn initialized(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }

    pub fn set_initialized(&self) {
        self.initialized.store(true, Ordering::Release)
    }

    pub fn leader_id(&self) -> u64 {
        self.leader_id.load(Ordering::Acquire)
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    /// Records the leader; `floor_ms` is the expiry floor to take if this node just became it.
    pub fn set_leader(&self, leader: u64, me: u64, floor_ms: impl FnOnce() -> u64) {
        let leads = leader == me && leader != 0;
        if leads && !self.is_leader() {
            // Before the flag: a reader that sees the flag sees the floor.
            self.expiry_floor_ms.store(floor_ms(), Ordering::Release);
        }
        self.leader_id.store(leader, Ordering::Release);
        self.is_leader.store(leads, Ordering::Release);
    }

    pub fn expiry_floor_ms(&self) -> u64 {
        self.expiry_floor_ms.load(Ordering::Acquire)
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    pub fn set_applied(&self, index: u64, last_version: Version) {
        *self.last_version.lock() = last_version;
        self.applied_index.store(index, Ordering::Release);
    }

    pub fn last_version(&self) -> Version {
        *self.last_version.lock()
    }

    /// Leader, or a follower that heard from its leader within `ms`: a replica
    /// that may serve requests itself instead of sending them to the leader.
    pub fn in_touch_with_leader(&self, ms: u64) -> bool {
        if self.is_leader() {
            return true;
        }
        let contact = self.leader_contact_ms.load(Ordering::Relaxed);
        self.leader_id() != 0 && crate::hlc::wall_now_ms().saturating_sub(contact) <= ms
    }

    /// Records that this replica has applied every write acknowledged before
    /// `asked` (a ReadIndex started then was answered, and applied up to).
    pub fn proved_fresh_as_of(&self, asked: std::time::Instant) {
        let mut f = self.fresh_as_of.lock();
        if f.is_none_or(|t| t < asked) {
            *f = Some(asked);
        }
    }

    /// Whether this replica holds every write acknowledged more than `bound` before `now`.
    /// A replica's applied state only grows, so a proof stays true; it ages.
    pub fn fresh_within(&self, bound: std::time::Duration, now: std::time::Instant) -> bool {
        self.fresh_as_of.lock().is_some_and(|t| now.saturating_duration_since(t) <= bound)
    }

    pub fn destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }

    pub fn mark_destroyed(&self) {
        self.destroyed.store(true, Ordering::Release);
        self.feeds.end_all("the replica was removed from this node");
    }
}
