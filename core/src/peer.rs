//! What a node checks in traffic from a peer before any of it reaches a Raft
//! group: the cluster id, the size of a batch, the addressing of each Raft
//! message, and the reassembly of a streamed snapshot. Pure, so that the fuzz
//! targets drive exactly the code the internal service runs.
//!
//! Raft itself (raft-rs) trusts the *meaning* of well-formed messages from
//! group members, as every crash-fault-tolerant Raft does; these checks keep
//! malformed, misaddressed or oversized input out.

use cairn_proto::internal::{RaftBatch, RaftEnvelope, SnapshotChunk};
use prost011::Message as _;
use raft::eraftpb::Message;

/// Most envelopes one batch may carry (a sender batches per turn of its loop).
pub const MAX_ENVELOPES_PER_BATCH: usize = 65_536;

/// Bytes reserved up front for a snapshot, whatever size it announces: the
/// buffer grows with data actually received, so a lying sender cannot make a
/// node allocate memory it never fills.
const SNAPSHOT_PREALLOC: usize = 4 << 20;

pub fn check_cluster(ours: &str, theirs: &str) -> Result<(), String> {
    if ours != theirs {
        return Err(format!("message from cluster {theirs:?}; this node belongs to {ours:?}"));
    }
    Ok(())
}

/// Checks a batch's envelope count (the transport's message size cap bounds its bytes).
pub fn check_batch(ours: &str, b: &RaftBatch) -> Result<(), String> {
    check_cluster(ours, &b.cluster_id)?;
    if b.from_node == 0 {
        return Err("raft batch without a sender node id".into());
    }
    if b.envelopes.len() > MAX_ENVELOPES_PER_BATCH {
        return Err(format!("raft batch of {} envelopes exceeds {MAX_ENVELOPES_PER_BATCH}", b.envelopes.len()));
    }
    Ok(())
}

/// Decodes the Raft message of an envelope.
pub fn decode_raft_message(env: &RaftEnvelope) -> Result<Message, String> {
    Message::decode(env.message.as_slice()).map_err(|e| format!("undecodable raft message: {e}"))
}

/// Checks that a Raft message came on the link of the node that hosts its
/// sender. `sender_host` is that node as the receiving replica knows it (from
/// its descriptor or from earlier traffic; `None` if it does not know the peer).
///
/// One kind of message legitimately names another sender: a request raft-rs
/// relays. A follower that receives a proposal or a ReadIndex request (sent to it
/// by a peer that still believed it was the leader, as right after a partition
/// heals) passes it on to the leader it now knows, keeping the originator in
/// `from` so that the leader answers the originator directly. Only those two
/// types may travel on a link that is not their sender's; every other message
/// (votes, appends, their responses, heartbeats) must come from the link's node.
pub fn check_sender(msg: &Message, sender_host: Option<u64>, link_node: u64) -> Result<(), String> {
    match sender_host {
        Some(host) if host != link_node && !is_relayable(msg.get_msg_type()) => Err(format!(
            "misaddressed raft message: {:?} from peer {} (on node {host}) to peer {} on a link from node {link_node}",
            msg.get_msg_type(),
            msg.from,
            msg.to
        )),
        _ => Ok(()),
    }
}

/// Whether a message may teach the receiver where its sender lives: relayed
/// requests travel on another node's link.
pub fn names_its_link(msg: &Message) -> bool {
    !is_relayable(msg.get_msg_type())
}

/// The message types raft-rs passes on from a follower to its leader unchanged.
fn is_relayable(t: raft::eraftpb::MessageType) -> bool {
    matches!(t, raft::eraftpb::MessageType::MsgPropose | raft::eraftpb::MessageType::MsgReadIndex)
}

/// Keeps a heartbeat from committing past this replica's own log.
///
/// A leader sends `commit = min(its commit, what it believes the follower
/// holds)`, so by Raft's invariants the commit never exceeds the follower's
/// last index, and raft-rs panics when it does. It did when peer ids were node
/// ids: a replica removed and re-added on the same node was credited with what
/// the old one held (found by the chaos suite: a node restarted, applied its own
/// removal, was re-created empty, and the next heartbeat carried the old
/// incarnation's match index). Each incarnation has its own peer id now
/// (`raftstore::membership`); this stays as a guard, not a path. Ignoring such
/// a commit is safe: the follower then commits nothing it does not hold, and the
/// leader's next append is rejected, which walks it back to a snapshot.
/// Returns whether the message was changed.
pub fn cap_heartbeat_commit<T: raft::Storage>(msg: &mut Message, log: &raft::RaftLog<T>) -> bool {
    if msg.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat && msg.commit > log.last_index() {
        msg.commit = log.committed;
        return true;
    }
    false
}

/// Why a snapshot stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Damaged on the way: the sender retries the snapshot later.
    #[error("snapshot chunk {chunk} failed its checksum: CRC-32 {got:08x}, the sender computed {sent:08x}")]
    Damaged { chunk: usize, got: u32, sent: u32 },
    #[error("snapshot of {announced} bytes exceeds {max}")]
    TooLarge { announced: usize, max: usize },
    #[error("snapshot stream longer than announced")]
    TooLong,
    #[error("snapshot stream shorter than announced ({got} of {announced} bytes)")]
    TooShort { got: usize, announced: usize },
}

/// A snapshot arriving in chunks: the first announces the total length, and
/// the stream must deliver exactly that many bytes.
#[derive(Debug)]
pub struct SnapshotReassembly {
    pub first: SnapshotChunk,
    total: usize,
    data: Vec<u8>,
    /// Chunks received after the first.
    chunks: usize,
}

fn check_chunk(c: &SnapshotChunk, chunk: usize) -> Result<(), SnapshotError> {
    let got = crc32fast::hash(&c.data);
    if got != c.crc32 {
        return Err(SnapshotError::Damaged { chunk, got, sent: c.crc32 });
    }
    Ok(())
}

impl SnapshotReassembly {
    pub fn start(mut first: SnapshotChunk, max_bytes: usize) -> Result<SnapshotReassembly, SnapshotError> {
        check_chunk(&first, 0)?;
        let total = usize::try_from(first.total_len).unwrap_or(usize::MAX);
        if total > max_bytes {
            return Err(SnapshotError::TooLarge { announced: total, max: max_bytes });
        }
        let data = std::mem::take(&mut first.data);
        let mut r =
            SnapshotReassembly { first, total, data: Vec::with_capacity(total.min(SNAPSHOT_PREALLOC)), chunks: 0 };
        r.append(&data)?;
        Ok(r)
    }

    pub fn push(&mut self, chunk: &SnapshotChunk) -> Result<(), SnapshotError> {
        self.chunks += 1;
        check_chunk(chunk, self.chunks)?;
        self.append(&chunk.data)
    }

    fn append(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        if self.data.len().saturating_add(data.len()) > self.total {
            return Err(SnapshotError::TooLong);
        }
        self.data.extend_from_slice(data);
        Ok(())
    }

    /// The whole snapshot message, once exactly the announced bytes arrived.
    pub fn finish(self) -> Result<(SnapshotChunk, Vec<u8>), SnapshotError> {
        if self.data.len() != self.total {
            return Err(SnapshotError::TooShort { got: self.data.len(), announced: self.total });
        }
        Ok((self.first, self.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_messages_must_come_on_their_senders_link() {
        let msg = Message { from: 11, to: 12, ..Default::default() };
        let env = RaftEnvelope { message: msg.encode_to_vec(), ..Default::default() };
        let msg = decode_raft_message(&env).unwrap();
        assert!(check_sender(&msg, Some(1), 1).is_ok());
        assert!(check_sender(&msg, None, 1).is_ok(), "a peer not known yet is learned from its link");
        assert!(check_sender(&msg, Some(3), 1).unwrap_err().contains("misaddressed"));
        let junk = RaftEnvelope { message: vec![0xff; 9], ..Default::default() };
        assert!(decode_raft_message(&junk).unwrap_err().contains("undecodable"));
    }

    fn typed(from: u64, to: u64, t: raft::eraftpb::MessageType) -> Message {
        let mut msg = Message { from, to, ..Default::default() };
        msg.set_msg_type(t);
        msg
    }

    /// Found by an outside partition test: right after healing, node 3 dropped
    /// "a raft message from 2 to 3 on a link from 1 to 3". Node 2 had sent a
    /// ReadIndex request to node 1, its leader before the partition; node 1, a
    /// follower by then, relayed it to the new leader, node 3, as raft-rs does,
    /// keeping node 2 as its sender. Relays of that kind are accepted; nothing
    /// else may name another sender.
    #[test]
    fn a_follower_relays_a_peers_read_request_to_its_leader_and_the_leader_accepts_it() {
        use raft::eraftpb::{Entry, MessageType};
        use raft::storage::MemStorage;
        let cfg = raft::Config { id: 1, ..Default::default() };
        let storage = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node1 = raft::RawNode::new(&cfg, storage, &logger).expect("raw node");
        // Node 3 leads term 2: node 1 follows it.
        let mut hb = Message { from: 3, to: 1, term: 2, ..Default::default() };
        hb.set_msg_type(MessageType::MsgHeartbeat);
        node1.step(hb).expect("heartbeat");
        assert_eq!(node1.raft.leader_id, 3);
        // Node 2 still thinks node 1 leads, and asks it for a read index (forwarded
        // requests carry no term).
        let mut ask = Message { from: 2, to: 1, ..Default::default() };
        ask.set_msg_type(MessageType::MsgReadIndex);
        ask.entries = vec![Entry { data: b"read-ctx".to_vec(), ..Default::default() }];
        node1.step(ask).expect("read index");
        // A follower's messages leave after its Ready is persisted.
        let mut ready = node1.ready();
        let mut relayed: Vec<Message> = ready.take_messages();
        relayed.extend(ready.take_persisted_messages());
        let relay = relayed.iter().find(|m| m.get_msg_type() == MessageType::MsgReadIndex).expect("relayed");
        assert_eq!((relay.from, relay.to), (2, 3), "raft-rs relays with the originator as sender");
        // It arrives at node 3 on node 1's link (peer ids are node ids in this group).
        assert!(check_sender(relay, Some(2), 1).is_ok(), "the leader accepts the relayed request");
        assert!(!names_its_link(relay), "and does not take node 1 for peer 2's host");
        assert!(check_sender(&typed(2, 3, MessageType::MsgPropose), Some(2), 1).is_ok());
        for t in [
            MessageType::MsgAppendResponse,
            MessageType::MsgRequestVote,
            MessageType::MsgRequestVoteResponse,
            MessageType::MsgHeartbeatResponse,
            MessageType::MsgAppend,
            MessageType::MsgReadIndexResp,
        ] {
            let err = check_sender(&typed(2, 3, t), Some(2), 1).unwrap_err();
            assert!(err.contains("misaddressed"), "{t:?} may not name another sender: {err}");
        }
    }

    fn chunk(data: &[u8]) -> SnapshotChunk {
        SnapshotChunk { data: data.to_vec(), crc32: crc32fast::hash(data), ..Default::default() }
    }

    #[test]
    fn snapshots_deliver_exactly_the_announced_bytes() {
        let first = SnapshotChunk { total_len: 5, ..chunk(b"ab") };
        let mut r = SnapshotReassembly::start(first.clone(), 10).unwrap();
        r.push(&chunk(b"cde")).unwrap();
        assert_eq!(r.finish().unwrap().1, b"abcde");
        let mut r = SnapshotReassembly::start(first.clone(), 10).unwrap();
        assert_eq!(r.push(&chunk(b"cdef")).unwrap_err(), SnapshotError::TooLong);
        let r = SnapshotReassembly::start(first.clone(), 10).unwrap();
        assert_eq!(r.finish().unwrap_err(), SnapshotError::TooShort { got: 2, announced: 5 });
        let huge = SnapshotChunk { total_len: u64::MAX, ..first.clone() };
        assert!(matches!(SnapshotReassembly::start(huge, 10).unwrap_err(), SnapshotError::TooLarge { max: 10, .. }));
    }

    #[test]
    fn a_damaged_chunk_is_refused() {
        let first = SnapshotChunk { total_len: 5, ..chunk(b"ab") };
        let damaged_first = SnapshotChunk { data: b"aB".to_vec(), ..first.clone() };
        let err = SnapshotReassembly::start(damaged_first, 10).unwrap_err();
        assert!(matches!(err, SnapshotError::Damaged { chunk: 0, .. }), "{err}");
        let mut r = SnapshotReassembly::start(first, 10).unwrap();
        let damaged = SnapshotChunk { data: b"cdf".to_vec(), ..chunk(b"cde") };
        let err = r.push(&damaged).unwrap_err();
        assert!(matches!(err, SnapshotError::Damaged { chunk: 1, .. }), "{err}");
    }

    /// Regression: a heartbeat carrying a commit beyond the follower's log used
    /// to panic raft-rs ("to_commit 38 is out of range [last_index 0]") and
    /// abort the node.
    #[test]
    fn a_heartbeat_beyond_an_empty_replicas_log_is_not_a_crash() {
        use raft::eraftpb::MessageType;
        use raft::storage::MemStorage;
        let cfg = raft::Config { id: 1, ..Default::default() };
        let storage = MemStorage::new_with_conf_state((vec![2, 3], vec![1]));
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = raft::RawNode::new(&cfg, storage, &logger).expect("raw node");
        let mut hb = Message { from: 2, to: 1, term: 5, commit: 38, ..Default::default() };
        hb.set_msg_type(MessageType::MsgHeartbeat);
        let committed = node.raft.raft_log.committed;
        assert!(cap_heartbeat_commit(&mut hb, &node.raft.raft_log));
        node.step(hb).expect("step");
        assert_eq!(node.raft.raft_log.committed, committed, "nothing committed beyond the log");

        let mut fine = Message { from: 2, to: 1, term: 5, commit: 0, ..Default::default() };
        fine.set_msg_type(MessageType::MsgHeartbeat);
        assert!(!cap_heartbeat_commit(&mut fine, &node.raft.raft_log), "a commit within the log is left alone");
    }

    #[test]
    fn batches_name_their_cluster_and_sender() {
        let b = RaftBatch { from_node: 1, cluster_id: "a".into(), ..Default::default() };
        assert!(check_batch("a", &b).is_ok());
        assert!(check_batch("b", &b).unwrap_err().contains("cluster"));
        assert!(check_batch("a", &RaftBatch { from_node: 0, ..b }).unwrap_err().contains("sender"));
    }
}
