//! The controller: runs on the meta range's leader and keeps ranges at their
//! replication factor. Its decisions are a pure function of the cluster view
//! (`plan`), so they can be tested and simulated without I/O; `runner` turns
//! them into membership changes.

pub mod balance;
pub mod merges;
pub mod plan;
pub mod progress;
pub mod runner;
pub mod view;
