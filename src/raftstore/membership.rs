//! Replica identity: which Raft peer id each replica incarnation has, how a
//! membership change rewrites a descriptor, and how an arriving message's
//! address is judged against the local replica and its tombstone.
//!
//! Every replica incarnation has a Raft peer id of its own (`Replica.replica_id`),
//! allocated from the descriptor's `next_replica_id` when it is added and never
//! used again in the range, as CockroachDB's replica ids are. A node removed and
//! later added back is therefore a new peer to Raft: the leader starts its
//! progress from nothing, and no acknowledgement or vote of the old incarnation
//! (whose log is gone) can be counted for the new one. A message to an older
//! incarnation is dropped; one to a newer incarnation than the local replica
//! means the local replica missed its removal and is replaced.
//!
//! Pure: the store loop does the sending, creating and destroying.

use cairn_proto::internal::{RangeDescriptor, Replica};
use prost::Message as _;
use raft::eraftpb::ConfChangeType;

/// The Raft peer id of `node`'s replica in `desc`.
pub fn replica_id_of(desc: &RangeDescriptor, node: u64) -> Option<u64> {
    desc.replicas.iter().find(|r| r.node_id == node).map(|r| r.replica_id)
}

/// The node holding the replica with Raft peer id `replica_id` in `desc`.
pub fn node_of(desc: &RangeDescriptor, replica_id: u64) -> Option<u64> {
    desc.replicas.iter().find(|r| r.replica_id == replica_id).map(|r| r.node_id)
}

/// The id the next replica added to the range gets: above every id the range
/// has used (`next_replica_id` only grows; the maximum guards a descriptor
/// written without it).
pub fn next_replica_id(desc: &RangeDescriptor) -> u64 {
    let highest = desc.replicas.iter().map(|r| r.replica_id).max().unwrap_or(0);
    desc.next_replica_id.max(highest + 1)
}

/// What a membership change carries besides raft-rs's peer id: which node the
/// replica is on. Encoded into the `ConfChange`'s context.
pub fn change_context(node: u64, replica_id: u64, learner: bool) -> Vec<u8> {
    Replica { node_id: node, learner, replica_id }.encode_to_vec()
}

/// The replica a membership change names, from its context. `None` for a
/// change whose context does not decode or names another peer id.
pub fn changed_replica(peer_id: u64, context: &[u8]) -> Option<Replica> {
    Replica::decode(context).ok().filter(|r| r.replica_id == peer_id && r.node_id != 0)
}

/// Rewrites `desc` for an applied membership change of peer `peer_id`, and
/// bumps its membership version. `subject` is the replica the change's context
/// names (needed when it adds one). Returns an error, leaving `desc` alone,
/// for a change that cannot describe a replica (an addition without its node).
pub fn apply_change(
    desc: &mut RangeDescriptor,
    change: ConfChangeType,
    peer_id: u64,
    subject: Option<&Replica>,
) -> Result<(), String> {
    let existing = desc.replicas.iter().position(|r| r.replica_id == peer_id);
    match change {
        ConfChangeType::RemoveNode => {
            if let Some(i) = existing {
                desc.replicas.remove(i);
            }
        }
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            let learner = change == ConfChangeType::AddLearnerNode;
            match existing {
                Some(i) => desc.replicas[i].learner = learner,
                None => {
                    let node = subject
                        .map(|s| s.node_id)
                        .ok_or_else(|| format!("membership change adds peer {peer_id} without naming its node"))?;
                    desc.replicas.push(Replica { node_id: node, learner, replica_id: peer_id });
                }
            }
        }
    }
    desc.replicas.sort_by_key(|r| r.node_id);
    desc.next_replica_id = next_replica_id(desc).max(peer_id + 1);
    desc.epoch.get_or_insert_with(Default::default).conf_ver += 1;
    Ok(())
}

/// How a Raft message addressed to peer `to` relates to this node's replica of
/// the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee {
    /// The local replica.
    This,
    /// An earlier incarnation on this node, removed since: dropped.
    Older,
    /// A later incarnation on this node: the local replica missed its removal
    /// (and its replacement's addition), so it is replaced by an empty one.
    Newer,
    /// An id this node's replica knows belongs to another node: dropped.
    Misaddressed,
}

/// Judges `to` against the local replica (peer `local`, descriptor `desc`).
/// Ids only grow, so an id below the local one is an incarnation that came
/// before it. An id above it is a later incarnation of this node only if the
/// local descriptor has not handed it out already (to another node).
pub fn addressee(local: u64, desc: &RangeDescriptor, to: u64) -> Addressee {
    use std::cmp::Ordering::*;
    match to.cmp(&local) {
        Equal => Addressee::This,
        Less => Addressee::Older,
        Greater if to >= next_replica_id(desc) => Addressee::Newer,
        Greater => Addressee::Misaddressed,
    }
}

/// What a node remembers of a range after destroying its replica there: the
/// lowest peer id a replica created here later may have. Every earlier
/// incarnation on this node is dead, and a member that has not applied the
/// removal only knows this node by the dead id, so its messages cannot
/// re-create the replica either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tombstone {
    pub first_live_replica_id: u64,
}

impl Tombstone {
    /// The tombstone of a replica with peer id `replica_id` (0: unknown) last
    /// known by `desc`. Only the id itself is dead when it is known: the same
    /// applied batch may already have added this node back under a later id.
    /// When it is not, `desc` (which no longer names this node) has handed out
    /// every id below its `next_replica_id`, this node's dead one among them.
    pub fn of(desc: &RangeDescriptor, replica_id: u64) -> Tombstone {
        let first_live_replica_id = match replica_id {
            0 => next_replica_id(desc),
            id => id + 1,
        };
        Tombstone { first_live_replica_id }
    }

    /// The tombstone of a range merged into its neighbour: no message to it, of
    /// any incarnation, creates a replica here again.
    pub fn merged() -> Tombstone {
        Tombstone { first_live_replica_id: u64::MAX }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.first_live_replica_id.to_be_bytes().to_vec()
    }

    /// Unreadable bytes decode to a tombstone that refuses everything, never to
    /// one that lets an old incarnation back.
    pub fn decode(b: &[u8]) -> Tombstone {
        let first = b.try_into().ok().map(u64::from_be_bytes).unwrap_or(u64::MAX);
        Tombstone { first_live_replica_id: first }
    }

    /// Whether a message to peer `to` may create a replica here.
    pub fn allows(&self, to: u64) -> bool {
        to >= self.first_live_replica_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::internal::RangeEpoch;

    fn desc(members: &[(u64, u64)], next: u64) -> RangeDescriptor {
        RangeDescriptor {
            id: 7,
            epoch: Some(RangeEpoch { version: 1, conf_ver: 3 }),
            replicas: members
                .iter()
                .map(|&(node_id, replica_id)| Replica { node_id, learner: false, replica_id })
                .collect(),
            next_replica_id: next,
            ..Default::default()
        }
    }

    #[test]
    fn a_node_added_back_is_a_new_peer() {
        let mut d = desc(&[(1, 1), (2, 2), (3, 3)], 4);
        apply_change(&mut d, ConfChangeType::RemoveNode, 3, None).unwrap();
        assert_eq!(replica_id_of(&d, 3), None);
        let id = next_replica_id(&d);
        assert_eq!(id, 4, "the removed peer's id is not handed out again");
        let subject = changed_replica(id, &change_context(3, id, true)).unwrap();
        apply_change(&mut d, ConfChangeType::AddLearnerNode, id, Some(&subject)).unwrap();
        assert_eq!(replica_id_of(&d, 3), Some(4));
        assert!(d.replicas.iter().any(|r| r.node_id == 3 && r.learner));
        apply_change(&mut d, ConfChangeType::AddNode, 4, None).unwrap();
        assert!(d.replicas.iter().any(|r| r.node_id == 3 && !r.learner), "promoted by peer id alone");
        assert_eq!((next_replica_id(&d), d.epoch.unwrap().conf_ver), (5, 6));
        assert_eq!(node_of(&d, 4), Some(3));
        assert_eq!(node_of(&d, 3), None);
    }

    #[test]
    fn an_addition_must_name_its_node() {
        let mut d = desc(&[(1, 1)], 2);
        let before = d.clone();
        assert!(apply_change(&mut d, ConfChangeType::AddLearnerNode, 2, None).is_err());
        assert_eq!(d, before);
        assert!(changed_replica(2, &change_context(5, 3, true)).is_none(), "context for another peer");
        assert!(changed_replica(2, b"\xff\xff").is_none());
    }

    #[test]
    fn messages_are_judged_by_incarnation() {
        let d = desc(&[(1, 1), (2, 5), (3, 6)], 8);
        assert_eq!(addressee(5, &d, 5), Addressee::This);
        assert_eq!(addressee(5, &d, 2), Addressee::Older);
        assert_eq!(addressee(5, &d, 8), Addressee::Newer);
        assert_eq!(addressee(5, &d, 6), Addressee::Misaddressed, "6 is node 3's");
        let empty = RangeDescriptor::default();
        assert_eq!(addressee(5, &empty, 9), Addressee::Newer, "an uninitialized replica knows no ids");
    }

    #[test]
    fn a_tombstone_keeps_every_earlier_incarnation_dead() {
        let t = Tombstone::of(&desc(&[(1, 1), (2, 2), (3, 4)], 5), 3);
        assert_eq!(t.first_live_replica_id, 4, "node 3, added back as 4 in the same batch, may be created");
        assert_eq!(Tombstone::decode(&t.encode()), t);
        assert!(!t.allows(3), "the removed incarnation never comes back");
        assert!(t.allows(4));
        let unknown = Tombstone::of(&desc(&[(1, 1), (2, 2)], 5), 0);
        assert!(!unknown.allows(4) && unknown.allows(5), "without its id, every id handed out is dead");
        assert!(!Tombstone::decode(&[1, 2, 3]).allows(u64::MAX - 1));
    }
}
