//! The node's storage engine: one RocksDB instance with a column family each
//! for the Raft log, Raft hard state (plus per-range apply state), MVCC data,
//! and node-local metadata.

pub mod engine;
pub mod layout;
pub mod mvcc;

pub use engine::{Batch, Cf, Engine};
