//! The node's storage engine: one RocksDB instance with a column family each
//! for the Raft log, Raft hard state (plus per-range apply state), MVCC data,
//! and node-local metadata. In simulation the same engine runs over an
//! in-memory disk that can lose unsynced writes (`sim_disk`).

pub mod applied;
pub mod cf;
pub mod dedupe_gc;
pub mod engine;
pub mod layout;
pub mod mvcc;
pub mod mvcc_gc;
pub mod pinned;
pub mod sim_disk;

pub use engine::{Batch, Cf, Engine, EngineConfig};
pub use pinned::{PinnedSpan, PinnedView, WrittenSst};
