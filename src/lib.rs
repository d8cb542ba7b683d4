//! Cairn: a distributed key-value database — sharded into Raft-replicated
//! ranges, linearizable, durable (fsynced on a majority before any
//! acknowledgement) and self-healing.
//!
//! Layers, top to bottom (see ARCHITECTURE.md):
//! - [`frontend`]: gRPC client API, internal node-to-node API, HTTP admin.
//! - [`gateway`]: key → range → leader routing with retries on stale routes.
//! - [`meta`]: the meta range (catalog, range directory, node registry).
//! - [`controller`]: placement decisions (pure) and their execution.
//! - [`raftstore`]: the multi-Raft driver and the range state machine.
//! - [`storage`]: the RocksDB engine and on-disk layout.
//! - [`sim`]: deterministic simulation of a whole cluster's store loops in one thread.
//! - [`keys`], [`hlc`], [`limits`], [`request`], [`peer`]: the pure building blocks
//!   (crate `cairn-core`): encodings, versions, limits, request and peer-traffic validation.

// `RangeError` (a protobuf message sent over the wire as-is) and tonic's `Status`
// are the error types of the request path; both are large, and boxing them would
// only add an allocation per error.
#![allow(clippy::result_large_err)]

// The pure building blocks live in their own crate (the fuzz targets build it
// without RocksDB); re-exported so that `crate::keys` and friends read as before.
pub use cairn_core::{clock_fault, dedupe, hlc, keys, limits, outcome, peer, request};

pub mod cli;
pub mod clock;
pub mod controller;
pub mod faults;
pub mod frontend;
pub mod gateway;
pub mod meta;
pub mod raftstore;
pub mod sabotage;
pub mod server;
pub mod sim;
pub mod storage;
