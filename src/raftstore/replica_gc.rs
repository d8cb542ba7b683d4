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
//!   never remove a replica that was added back since. (A node added back is a
//!   new peer, `membership`: its replica is created, and initialized, with a
//!   membership that already names it, so it is never older than an answer
//!   about an earlier incarnation.)
//!
//! The decisions are pure; the store loop does the sending and the destroying.

use super::raft_storage::conf_ver_of;
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::internal::{RangeEpoch, Replica};

    fn desc(conf_ver: u64, members: &[u64]) -> RangeDescriptor {
        RangeDescriptor {
            id: 7,
            epoch: Some(RangeEpoch { version: 1, conf_ver }),
            replicas: members.iter().map(|n| Replica { node_id: *n, learner: false, replica_id: *n }).collect(),
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
    fn a_stale_answer_never_destroys_a_newer_replica() {
        assert!(told_removed(&desc(3, &[1, 2, 3]), true, 4));
        assert!(!told_removed(&desc(6, &[1, 2, 3]), true, 4), "re-added since the answer was sent");
        assert!(!told_removed(&desc(4, &[1, 2, 3]), true, 4));
        assert!(!told_removed(&desc(0, &[]), false, 4), "an uninitialized replica blocks nothing");
    }
}
