//! The multi-Raft driver: one loop per node that owns every range replica on
//! the node, steps their Raft state machines (tikv raft-rs), persists all their
//! Ready states in one synced RocksDB batch per iteration (group commit across
//! ranges), sends messages batched per destination node, and applies committed
//! commands to the MVCC state machine.

pub mod address_book;
pub mod apply;
pub mod errors;
pub mod executor;
pub mod feed;
pub mod load;
pub mod membership;
pub mod msg;
pub mod quarantine;
pub mod raft_storage;
pub mod range_feed;
pub mod replica;
pub mod replica_gc;
pub mod shared;
pub mod snapshot;
pub mod snapshot_receive;
pub mod snapshot_worker;
pub mod store;
pub mod transport;

pub use msg::{StoreHandle, StoreMsg};
pub use shared::{ReplicaRegistry, ReplicaShared};

/// Log index/term at which a range created by bootstrap or split starts (as TiKV does):
/// a new replica with an empty log is below it and so gets a snapshot.
pub const RAFT_INIT_INDEX: u64 = 5;
pub const RAFT_INIT_TERM: u64 = 5;

/// Tunables of the driver.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// When a replica's log holds more applied entries than this, the oldest half is dropped.
    pub log_gc_threshold: u64,
    pub max_inflight_msgs: usize,
    pub max_size_per_msg: u64,
    /// Snapshots this node generates, sends or receives at once (each counted
    /// apart); a range asking for more waits and raft-rs asks again.
    pub snapshot_max_in_flight: usize,
    /// Memory one snapshot in flight may hold in buffers (chunks queued for the
    /// network, a received message), whatever the range's size: its files
    /// stream from and to disk.
    pub snapshot_buffer_bytes: u64,
    /// Simulation only: each replica draws its election timeouts from this seed
    /// instead of from raft-rs's unseeded thread-local RNG.
    #[serde(skip)]
    pub election_seed: Option<u64>,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            log_gc_threshold: 8192,
            max_inflight_msgs: 256,
            max_size_per_msg: 1 << 20,
            snapshot_max_in_flight: 2,
            snapshot_buffer_bytes: 64 << 20,
            election_seed: None,
        }
    }
}
