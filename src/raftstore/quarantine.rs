//! Quarantine and rebuild of a replica whose stored log is damaged.
//!
//! Every stored log entry carries a CRC-32 (`layout::encode_log_entry`). When a
//! node loads a replica whose log fails it, that replica alone is quarantined:
//! its data and log are deleted (its peers hold them) and it is rebuilt like a
//! new replica, by a snapshot from its leader. Its term and vote are kept, so it
//! never votes twice in a term. The danger is the acknowledgements it gave before
//! the damage: the leader may have counted them to commit entries up to the old
//! last index. An empty replica that voted could then help elect a leader lacking
//! such an entry. So until its rebuilt log reaches that index, the replica
//! neither votes nor campaigns; it only receives (this is what etcd's learners
//! and TiKV's "pending" peers achieve by other means). The replica tells its
//! range it is rebuilding, so a quiet leader that believes it is caught up
//! sends it a snapshot.
//!
//! The marker, `raft_state` key `range ++ 05`, holds the index and the last
//! descriptor the node knew, so a restart mid-rebuild resumes it.

use cairn_proto::internal::RangeDescriptor;
use prost::Message as _;
use raft::eraftpb::MessageType;

/// A replica being rebuilt after its log failed its checksum.
#[derive(Clone, Debug, PartialEq)]
pub struct Rebuild {
    /// The highest log index the damaged replica held: it may have acknowledged
    /// anything up to here.
    pub until_index: u64,
    /// The range as this node last knew it (whom to tell).
    pub desc: RangeDescriptor,
}

impl Rebuild {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.until_index.to_be_bytes().to_vec();
        out.extend_from_slice(&self.desc.encode_to_vec());
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Rebuild> {
        let until_index = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
        let desc = RangeDescriptor::decode(raw.get(8..)?).ok()?;
        Some(Rebuild { until_index, desc })
    }

    /// Whether a replica whose persisted log ends at `last_index` is whole again.
    pub fn done(&self, last_index: u64) -> bool {
        last_index >= self.until_index
    }
}

/// Messages a rebuilding replica must not act on: votes, and the leader-transfer
/// order that would make it campaign.
pub fn withheld(t: MessageType) -> bool {
    matches!(t, MessageType::MsgRequestVote | MessageType::MsgRequestPreVote | MessageType::MsgTimeoutNow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_round_trips_and_the_rebuild_ends_at_the_old_last_index() {
        let r = Rebuild { until_index: 812, desc: RangeDescriptor { id: 4, ..Default::default() } };
        assert_eq!(Rebuild::decode(&r.encode()), Some(r.clone()));
        assert_eq!(Rebuild::decode(&[1, 2]), None);
        assert!(!r.done(811));
        assert!(r.done(812));
        assert!(withheld(MessageType::MsgRequestPreVote) && !withheld(MessageType::MsgAppend));
    }
}
