//! Garbage collection of replicas that missed their own removal.
//!
//! A replica removed from its range while its node was down or cut off never
//! applies the removal: the group stops talking to it. It keeps its data and
//! its old, wider bounds, and a hibernating one may never speak again, yet it
//! blocks the node from creating any range that overlaps it (after a split, or
//! when the node is added back). So, as TiKV does with its peers:
//! - a node that refuses to create a range because a local replica overlaps it
//!   asks the sender and that replica's members whether it is still a member
//!   (`STALE_CHECK`);
//! - a member that knows a newer membership without the asking node, or that
//!   hears Raft traffic from such a node, answers `REMOVED`;
//! - the stale replica is destroyed (with a tombstone) only when told by a
//!   membership strictly newer than its own, so a late or replayed answer can
//!   never remove a replica that was added back since.
//!
//! The decisions are pure; the store loop does the sending and the destroying.

use super::raft_storage::{conf_ver_of, RangeStorage};
use cairn_proto::internal::RangeDescriptor;

/// Whether this node's (initialized) replica knows a membership newer than the
/// sender's that leaves the sender out.
pub fn sender_was_removed(desc: &RangeDescriptor, from_node: u64, their_conf_ver: u64) -> bool {
    conf_ver_of(desc) > their_conf_ver && !desc.replicas.iter().any(|r| r.node_id == from_node)
}

/// Whether a `REMOVED` answer condemns this node's replica.
pub fn told_removed(desc: &RangeDescriptor, initialized: bool, their_conf_ver: u64) -> bool {
    initialized && their_conf_ver > conf_ver_of(desc)
}

/// Whether the persisted log, past the applied index, holds a
/// membership change that adds `node_id` back (after a restart, say, the log
/// may hold the re-addition while the applied state predates the removal). A
/// `REMOVED` answer then waits until the change is applied. The removal itself
/// sitting unapplied in the log does not count: it only confirms the answer.
pub fn may_be_added_back(storage: &RangeStorage, node_id: u64) -> bool {
    use prost011::Message as _;
    use raft::eraftpb::{ConfChange, ConfChangeType, EntryType};
    let (first, last) = (storage.apply.applied_index + 1, storage.last_index);
    if last < first {
        return false;
    }
    let ctx = raft::GetEntriesContext::empty(false);
    let Ok(entries) = raft::Storage::entries(storage, first, last + 1, None, ctx) else {
        return true; // entries it cannot read: assume the worst and keep the replica
    };
    entries.iter().any(|e| match e.get_entry_type() {
        EntryType::EntryNormal => false,
        EntryType::EntryConfChange => match ConfChange::decode(e.data.as_slice()) {
            Ok(cc) => cc.node_id == node_id && cc.get_change_type() != ConfChangeType::RemoveNode,
            Err(_) => true,
        },
        EntryType::EntryConfChangeV2 => true, // never proposed by Cairn; be conservative
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::internal::{RangeEpoch, Replica};

    fn desc(conf_ver: u64, members: &[u64]) -> RangeDescriptor {
        RangeDescriptor {
            id: 7,
            epoch: Some(RangeEpoch { version: 1, conf_ver }),
            replicas: members.iter().map(|n| Replica { node_id: *n, learner: false }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_newer_membership_without_the_sender_removes_it() {
        assert!(sender_was_removed(&desc(5, &[1, 2, 3]), 4, 4));
        assert!(!sender_was_removed(&desc(5, &[1, 2, 4]), 4, 4), "added back: still a member");
        assert!(!sender_was_removed(&desc(5, &[1, 2, 3]), 4, 5), "the sender is as new as we are");
        assert!(!sender_was_removed(&desc(5, &[1, 2, 3]), 4, 9), "the sender knows more than we do");
    }

    #[test]
    fn only_an_unapplied_readdition_defers_the_removal() {
        use crate::storage::{sim_disk::SimDisk, Engine};
        use prost011::Message as _;
        use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType};
        use std::sync::Arc;
        let conf_change = |index, change: ConfChangeType, node_id| Entry {
            entry_type: EntryType::EntryConfChange as i32,
            index,
            term: 6,
            data: ConfChange { change_type: change as i32, node_id, ..Default::default() }.encode_to_vec(),
            ..Default::default()
        };
        let mut s = RangeStorage::uninitialized(Arc::new(Engine::simulated(Arc::new(SimDisk::new()))), 7);
        s.apply.applied_index = 5;
        s.apply.truncated_index = 5;
        let log = [
            Entry { index: 6, term: 6, ..Default::default() },
            conf_change(7, ConfChangeType::RemoveNode, 3),
            conf_change(8, ConfChangeType::AddLearnerNode, 3),
        ];
        s.cache_append(&log[..2]);
        s.last_index = 7;
        assert!(!may_be_added_back(&s, 3), "an unapplied removal only confirms it");
        s.cache_append(&log[2..]);
        s.last_index = 8;
        assert!(may_be_added_back(&s, 3), "the re-addition must be applied first");
        assert!(!may_be_added_back(&s, 4), "another node's change does not count");
        s.apply.applied_index = 8;
        assert!(!may_be_added_back(&s, 3), "nothing left unapplied");
    }

    #[test]
    fn a_stale_answer_never_destroys_a_newer_replica() {
        assert!(told_removed(&desc(3, &[1, 2, 3]), true, 4));
        assert!(!told_removed(&desc(6, &[1, 2, 3]), true, 4), "re-added since the answer was sent");
        assert!(!told_removed(&desc(4, &[1, 2, 3]), true, 4));
        assert!(!told_removed(&desc(0, &[]), false, 4), "an uninitialized replica blocks nothing");
    }
}
