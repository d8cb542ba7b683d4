//! A Cairn node process: configuration, start-up (bootstrap a new cluster or
//! join one), wiring of the layers, and the node's periodic tasks.

pub mod clock_monitor;
pub mod config;
pub mod node;
pub mod tasks;

pub use config::ServerConfig;
