//! The `cairn` command line: `server` runs a node, `demo` runs a local
//! three-node cluster, and the client commands talk to any node's gRPC API.

pub mod client;
pub mod demo;
pub mod demo_nodes;
pub mod feed;
pub mod sim;

use crate::server::{node, ServerConfig};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "cairn", version, about = "Cairn: a distributed, Raft-replicated, range-sharded key-value database")]
pub struct Cli {
    /// gRPC address of the node to talk to (client commands).
    #[arg(long, global = true, env = "CAIRN_ADDR", default_value = "127.0.0.1:7401")]
    pub addr: String,
    /// Print machine-readable JSON instead of tables (client commands).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node.
    Server(Box<ServerArgs>),
    /// Start a local cluster (3 nodes on loopback) and keep it running until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Simulators that need no cluster (`sim placement`: the controller at scale).
    Sim(sim::SimArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// TOML config file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address (client API and node-to-node). Port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address advertised to other nodes (default: the bound listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// HTTP admin listen address (metrics, console).
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Redis-protocol listen address (default 127.0.0.1:6379; empty turns it off). Port 0 picks a free port.
    #[arg(long)]
    pub redis_listen: Option<String>,
    /// Redis Cluster mode: answer MOVED for keys led by another node, and advertise
    /// the slots' leaders in CLUSTER SLOTS/SHARDS/NODES (`[redis] cluster_mode`).
    #[arg(long)]
    pub redis_cluster_mode: bool,
    /// Zones for the Redis keyspace's range leaders, most preferred first (comma-separated;
    /// applied when the keyspace is created).
    #[arg(long, value_delimiter = ',')]
    pub redis_lease_preferences: Vec<String>,
    /// Do not balance replicas and leaders across nodes (repairs still run): for
    /// placing them by hand. Read by whichever node leads the meta range.
    #[arg(long)]
    pub no_rebalance: bool,
    /// Join an existing cluster through these members (comma-separated host:port).
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    #[arg(long)]
    pub zone: Option<String>,
    #[arg(long)]
    pub replication_factor: Option<usize>,
    #[arg(long)]
    pub split_threshold_bytes: Option<u64>,
    /// A node not heard from for this long is dead: its replicas are replaced elsewhere.
    #[arg(long)]
    pub dead_after_secs: Option<u64>,
    #[arg(long)]
    pub split_check_interval_ms: Option<u64>,
    /// Split a range that serves more requests per second than this for
    /// --load-split-sustain-ms, where its load divides (0: never split by load).
    #[arg(long)]
    pub load_split_qps: Option<u64>,
    #[arg(long)]
    pub load_split_sustain_ms: Option<u64>,
    /// Merge adjacent ranges of a table whose data together is at most this many
    /// bytes (default: a quarter of --split-threshold-bytes; 0: never merge).
    #[arg(long)]
    pub merge_threshold_bytes: Option<u64>,
    /// ... and whose load together is at most this many requests per second
    /// (default: a quarter of --load-split-qps).
    #[arg(long)]
    pub merge_qps: Option<u64>,
    /// ... for this long without a break.
    #[arg(long)]
    pub merge_after_secs: Option<u64>,
    /// Drop the oldest half of a range's Raft log once it holds this many applied entries.
    #[arg(long)]
    pub raft_log_gc_threshold: Option<u64>,
    /// Snapshots generated, sent and received at once (each counted apart).
    #[arg(long)]
    pub snapshot_max_in_flight: Option<usize>,
    /// Buffer memory one snapshot in flight may hold, whatever the range's size.
    #[arg(long)]
    pub snapshot_buffer_bytes: Option<u64>,
    /// Threads of the node's async runtime; 0 means one per CPU core.
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// How long old versions stay readable (scan page tokens) before compactions may drop them.
    #[arg(long)]
    pub mvcc_retention_secs: Option<u64>,
    /// Size of one storage memtable, per column family.
    #[arg(long)]
    pub memtable_bytes: Option<u64>,
    /// The maximum clock offset between nodes, in ms (default 500): how far ahead of
    /// this node's clock another node's timestamp may move its hybrid logical clock,
    /// and how far from most peers' clocks this node's may be before it stops serving.
    #[arg(long)]
    pub max_clock_offset_ms: Option<u64>,
}

impl ServerArgs {
    /// Builds and validates the configuration; the error message names the bad setting.
    pub fn into_config(self) -> Result<ServerConfig, String> {
        let mut c = match &self.config {
            Some(p) => ServerConfig::from_file(p)?,
            None => ServerConfig::default(),
        };
        if self.data_dir.is_some() {
            c.data_dir = self.data_dir;
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if self.advertise.is_some() {
            c.advertise = self.advertise;
        }
        if let Some(v) = self.http_listen {
            c.http_listen = v;
        }
        if let Some(v) = self.redis_listen {
            c.redis.listen = v;
        }
        if self.redis_cluster_mode {
            c.redis.cluster_mode = true;
        }
        if !self.redis_lease_preferences.is_empty() {
            c.redis.lease_preferences = self.redis_lease_preferences.clone();
        }
        if self.no_rebalance {
            c.rebalance = false;
        }
        if !self.join.is_empty() {
            c.join = self.join;
        }
        if let Some(v) = self.zone {
            c.zone = v;
        }
        if let Some(v) = self.replication_factor {
            c.replication_factor = v;
        }
        if let Some(v) = self.split_threshold_bytes {
            c.split_threshold_bytes = v;
        }
        if let Some(v) = self.dead_after_secs {
            c.dead_after_secs = v;
        }
        if let Some(v) = self.load_split_qps {
            c.load_split_qps = v;
        }
        if let Some(v) = self.load_split_sustain_ms {
            c.load_split_sustain_ms = v;
        }
        if let Some(v) = self.merge_threshold_bytes {
            c.merge_threshold_bytes = Some(v);
        }
        if let Some(v) = self.merge_qps {
            c.merge_qps = Some(v);
        }
        if let Some(v) = self.merge_after_secs {
            c.merge_after_secs = v;
        }
        if let Some(v) = self.split_check_interval_ms {
            c.split_check_interval_ms = v;
        }
        if let Some(v) = self.raft_log_gc_threshold {
            c.raft.log_gc_threshold = v;
        }
        if let Some(v) = self.snapshot_max_in_flight {
            c.raft.snapshot_max_in_flight = v;
        }
        if let Some(v) = self.snapshot_buffer_bytes {
            c.raft.snapshot_buffer_bytes = v;
        }
        if let Some(v) = self.worker_threads {
            c.worker_threads = v;
        }
        if let Some(v) = self.mvcc_retention_secs {
            c.mvcc_retention_secs = v;
        }
        if let Some(v) = self.memtable_bytes {
            c.memtable_bytes = v;
        }
        if let Some(v) = self.max_clock_offset_ms {
            c.max_clock_offset_ms = v;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => {
            // A server's configuration sizes its runtime, so it is read first.
            let cfg = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cairn server: configuration error: {e}");
                    return 2;
                }
            };
            let Some(rt) = runtime(cfg.worker_threads) else { return 1 };
            init_logging();
            match rt.block_on(node::run(cfg, None, stop_signal())) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cairn server: {e:#}");
                    1
                }
            }
        }
        Command::Demo(args) => {
            let Some(rt) = runtime(0) else { return 1 };
            init_logging();
            match rt.block_on(demo::run(args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cairn demo: {e:#}");
                    1
                }
            }
        }
        Command::Sim(args) => sim::run(args),
        Command::Client(cmd) => {
            let Some(rt) = runtime(0) else { return 1 };
            match rt.block_on(client::run(&cli.addr, cli.json, cmd)) {
                Ok(()) => 0,
                Err(e) => {
                    if !e.is::<client::Reported>() {
                        eprintln!("error: {e:#}");
                    }
                    1
                }
            }
        }
    }
}

/// The async runtime, with `worker_threads` threads (0: one per CPU core).
fn runtime(worker_threads: usize) -> Option<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            None
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
