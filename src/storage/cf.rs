//! The column families of the node's engine: one keyspace each for the Raft
//! log, Raft and apply state, MVCC data, dedupe records and node-local metadata.
//! Shared by the RocksDB engine and the simulator's disk.

/// Column families.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Cf {
    RaftLog,
    RaftState,
    Data,
    Dedupe,
    Local,
}

impl Cf {
    pub const ALL: [Cf; 5] = [Cf::RaftLog, Cf::RaftState, Cf::Data, Cf::Dedupe, Cf::Local];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::Data => "data",
            Cf::Dedupe => "dedupe",
            Cf::Local => "local",
        }
    }
}
