//! Server configuration: a TOML file and/or command-line flags (flags win),
//! validated up front so that a bad setting stops the node with a clear
//! message and exit code 2.

use crate::limits::Limits;
use crate::raftstore::RaftConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (client API and node-to-node).
    pub listen: String,
    /// Address other nodes and clients should use; defaults to the bound listen address.
    pub advertise: Option<String>,
    /// HTTP admin listen address (metrics, console).
    pub http_listen: String,
    /// Addresses of existing members; empty = bootstrap a new cluster.
    pub join: Vec<String>,
    pub zone: String,
    pub replication_factor: usize,
    /// A node not heard from for this long is dead: the controller replaces each of
    /// its replicas on another node, then removes it.
    pub dead_after_secs: u64,
    /// A range whose data passes this size is split in two.
    pub split_threshold_bytes: u64,
    pub split_check_interval_ms: u64,
    /// A range serving more requests per second than this (reads and writes) for
    /// `load_split_sustain_ms` is split where its load divides; 0 turns it off.
    pub load_split_qps: u64,
    pub load_split_sustain_ms: u64,
    /// Adjacent ranges of one table whose data together is at most this many bytes
    /// and whose load together is at most `merge_qps` requests per second, for
    /// `merge_after_secs` without a break, merge (unless an operator or the table
    /// declared the split). Unset: a quarter of `split_threshold_bytes`; 0: never.
    pub merge_threshold_bytes: Option<u64>,
    /// Unset: a quarter of `load_split_qps` (0, when load splits are off: any load).
    pub merge_qps: Option<u64>,
    pub merge_after_secs: u64,
    /// Balance replicas and leaders across nodes (the controller's repairs run either way).
    pub rebalance: bool,
    pub max_connections: usize,
    /// Threads of the node's async runtime (gRPC, gateway, transport); 0 means one per CPU
    /// core. Nodes sharing a machine (`cairn demo`) each take their share of the cores.
    pub worker_threads: usize,
    /// Old MVCC versions stay readable this long; compactions may drop them after.
    pub mvcc_retention_secs: u64,
    /// Size of one storage memtable, per column family.
    pub memtable_bytes: u64,
    /// How far ahead of this node's clock a timestamp from another node may move its
    /// hybrid logical clock; and how far from most of its peers' clocks this node's
    /// may be before it stops serving (`server::clock_monitor`).
    pub max_clock_offset_ms: u64,
    pub raft: RaftConfig,
    pub limits: Limits,
    /// The Redis-protocol front end.
    pub redis: crate::frontend::resp::RespConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: None,
            listen: "127.0.0.1:7401".into(),
            advertise: None,
            http_listen: "127.0.0.1:7481".into(),
            join: Vec::new(),
            zone: String::new(),
            replication_factor: 3,
            dead_after_secs: 300,
            split_threshold_bytes: 64 << 20,
            split_check_interval_ms: 5_000,
            load_split_qps: 2_500,
            load_split_sustain_ms: 10_000,
            merge_threshold_bytes: None,
            merge_qps: None,
            merge_after_secs: 300,
            rebalance: true,
            max_connections: 4096,
            worker_threads: 0,
            mvcc_retention_secs: crate::storage::mvcc_gc::DEFAULT_RETENTION.as_secs(),
            memtable_bytes: crate::storage::EngineConfig::default().memtable_bytes,
            max_clock_offset_ms: crate::hlc::DEFAULT_MAX_OFFSET_NS / 1_000_000,
            raft: RaftConfig::default(),
            limits: Limits::default(),
            redis: Default::default(),
        }
    }
}

const MAX_MVCC_RETENTION_SECS: u64 = 30 * 24 * 3600;
const MIN_MEMTABLE_BYTES: u64 = 64 << 10;
/// Five column families keep up to two memtables each: 1 GiB apiece is already 10 GiB.
const MAX_MEMTABLE_BYTES: u64 = 1 << 30;

impl ServerConfig {
    /// What the storage engine is opened with.
    pub fn engine_config(&self) -> crate::storage::EngineConfig {
        crate::storage::EngineConfig {
            mvcc_retention: std::time::Duration::from_secs(self.mvcc_retention_secs),
            memtable_bytes: self.memtable_bytes,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
    }

    /// When the controller merges ranges back.
    pub fn merge_policy(&self) -> crate::controller::merges::MergePolicy {
        crate::controller::merges::MergePolicy {
            max_bytes: self.merge_threshold_bytes.unwrap_or(self.split_threshold_bytes / 4),
            max_qps: self.merge_qps.unwrap_or(self.load_split_qps / 4),
        }
    }

    /// Checks every setting; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir.is_none() {
            return Err("data_dir is required (--data-dir or data_dir in the config file)".into());
        }
        for (name, addr) in [("listen", &self.listen), ("http_listen", &self.http_listen)] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| format!("{name} {addr:?} is not a socket address (host:port): {e}"))?;
        }
        for j in &self.join {
            if j.is_empty() || !j.contains(':') {
                return Err(format!("join address {j:?} must be host:port"));
            }
        }
        // Shorter than the liveness timeout, a node that merely missed heartbeats would
        // lose its replicas.
        let min_dead_after = crate::meta::registry::LIVENESS_TIMEOUT_MS.div_ceil(1000);
        if self.dead_after_secs < min_dead_after {
            return Err(format!(
                "dead_after_secs must be at least {min_dead_after} (the liveness timeout), got {}",
                self.dead_after_secs
            ));
        }
        if !(1..=7).contains(&self.replication_factor) {
            return Err(format!("replication_factor must be 1 to 7, got {}", self.replication_factor));
        }
        if self.worker_threads > 1024 {
            return Err(format!("worker_threads must be 0 (one per core) to 1024, got {}", self.worker_threads));
        }
        if !(1..=MAX_MVCC_RETENTION_SECS).contains(&self.mvcc_retention_secs) {
            return Err(format!(
                "mvcc_retention_secs must be 1 to {MAX_MVCC_RETENTION_SECS} (30 days), got {}",
                self.mvcc_retention_secs
            ));
        }
        if !(MIN_MEMTABLE_BYTES..=MAX_MEMTABLE_BYTES).contains(&self.memtable_bytes) {
            return Err(format!(
                "memtable_bytes must be {MIN_MEMTABLE_BYTES} to {MAX_MEMTABLE_BYTES}, got {}",
                self.memtable_bytes
            ));
        }
        if !(1..=60_000).contains(&self.max_clock_offset_ms) {
            return Err(format!("max_clock_offset_ms must be 1 to 60000, got {}", self.max_clock_offset_ms));
        }
        if self.split_threshold_bytes < 4096 {
            return Err("split_threshold_bytes must be at least 4096".into());
        }
        // Larger, and a merged range could pass the split threshold and split again.
        if self.merge_policy().max_bytes > self.split_threshold_bytes / 2 {
            return Err(format!(
                "merge_threshold_bytes must be at most half of split_threshold_bytes ({}), got {}",
                self.split_threshold_bytes / 2,
                self.merge_policy().max_bytes
            ));
        }
        if self.merge_after_secs == 0 {
            return Err("merge_after_secs must be at least 1".into());
        }
        if self.load_split_qps != 0 && self.load_split_qps < 10 {
            return Err(format!("load_split_qps must be 0 (off) or at least 10, got {}", self.load_split_qps));
        }
        let r = &self.raft;
        if r.tick_ms == 0 || r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return Err("raft: tick_ms > 0 and election_ticks > heartbeat_ticks > 0 are required".into());
        }
        if r.log_gc_threshold < 16 {
            return Err("raft.log_gc_threshold must be at least 16".into());
        }
        if !(1..=64).contains(&r.snapshot_max_in_flight) {
            return Err(format!("raft.snapshot_max_in_flight must be 1 to 64, got {}", r.snapshot_max_in_flight));
        }
        if !((1 << 20)..=(1 << 32)).contains(&r.snapshot_buffer_bytes) {
            return Err(format!("raft.snapshot_buffer_bytes must be 1 MiB to 4 GiB, got {}", r.snapshot_buffer_bytes));
        }
        if self.max_connections == 0 {
            return Err("max_connections must be positive".into());
        }
        self.redis.validate()?;
        if self.zone.len() > 64 {
            return Err("zone label must be at most 64 bytes".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_setting() {
        let mut c = ServerConfig::default();
        assert!(c.validate().unwrap_err().contains("data_dir"));
        c.data_dir = Some("x".into());
        assert!(c.validate().is_ok());
        c.listen = "nonsense".into();
        assert!(c.validate().unwrap_err().contains("listen"));
        c.listen = ServerConfig::default().listen;
        c.mvcc_retention_secs = 0;
        assert!(c.validate().unwrap_err().contains("mvcc_retention_secs"));
        c.mvcc_retention_secs = 60;
        c.memtable_bytes = 1;
        assert!(c.validate().unwrap_err().contains("memtable_bytes"));
        c.memtable_bytes = ServerConfig::default().memtable_bytes;
        c.redis.hash_ranges = 0;
        assert!(c.validate().unwrap_err().contains("redis.hash_ranges"));
        c.redis.hash_ranges = 8;
        c.redis.listen = "6379".into();
        assert!(c.validate().unwrap_err().contains("redis.listen"));
        c.redis.listen = String::new();
        assert!(c.validate().is_ok(), "an empty redis.listen turns the listener off");
        let bad: Result<ServerConfig, _> = toml::from_str("replication_factr = 3");
        assert!(bad.unwrap_err().to_string().contains("replication_factr"));
    }
}
