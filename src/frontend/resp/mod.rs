//! The Redis-protocol front end: every node listens for RESP2/RESP3 clients
//! and serves the Redis keyspace (a hash-partitioned table, `keyspace`) through
//! the same gateway as the gRPC API, so an acknowledged write is already on a
//! majority of replicas, fsynced.
//!
//! `connection` owns one client's socket and its bounds, `session` its state,
//! `commands` what each command does, `keyspace` the table the keys live in.

pub mod cluster;
pub mod commands;
pub mod connection;
pub mod keyspace;
pub mod script;
pub mod session;
pub mod txn;

use crate::gateway::Gateway;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_stream::{Stream, StreamExt};

/// A client connection's bytes: a TCP socket, or a simulated one in a simulation.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientStream for T {}

/// One accepted client: its stream, its address and the address it reached.
pub struct Accepted {
    pub stream: Box<dyn ClientStream>,
    pub peer: String,
    pub local: String,
}

/// Where a node's Redis clients come from.
pub type Incoming = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Accepted>> + Send>>;

/// The clients a TCP listener accepts (with Nagle off: replies are small and latency-bound).
pub fn tcp_incoming(listener: TcpListener) -> Incoming {
    Box::pin(futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, peer)| {
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
            Accepted { stream: Box::new(stream) as Box<dyn ClientStream>, peer: peer.to_string(), local }
        });
        Some((next, listener))
    }))
}

/// `[redis]` in the node's config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespConfig {
    /// Where the node listens for Redis clients; empty turns the listener off.
    pub listen: String,
    /// Address advertised to cluster-aware clients (default: the bound address).
    pub advertise: Option<String>,
    /// Connected clients at most; one more is told so and disconnected, as Redis does.
    pub max_clients: usize,
    /// Unparsed input one client may have buffered (one command at most this big).
    pub max_query_buffer_bytes: usize,
    /// Arguments one command may have.
    pub max_args: usize,
    /// Length of one inline (non-RESP) command line.
    pub max_inline_bytes: usize,
    /// A client idle this long is disconnected; 0 never.
    pub idle_timeout_secs: u64,
    /// Ranges the Redis keyspace table starts with (its slots divided evenly).
    pub hash_ranges: u32,
    /// Zones the Redis keyspace's range leaders should be in, most preferred first
    /// (its lease preferences when it is created; `cairn table alter redis` changes them).
    pub lease_preferences: Vec<String>,
    /// FLUSHDB and FLUSHALL delete the whole keyspace; refused unless this is set.
    pub allow_flush: bool,
    /// Redis Cluster mode: a key led by another node gets `MOVED slot host:port`,
    /// and CLUSTER SLOTS/SHARDS/NODES advertise each slot's leader, so cluster-aware
    /// clients go straight to it. Off (proxy mode), every node serves every key.
    pub cluster_mode: bool,
}

impl Default for RespConfig {
    fn default() -> Self {
        RespConfig {
            listen: "127.0.0.1:6379".into(),
            advertise: None,
            max_clients: 10_000,
            max_query_buffer_bytes: 64 << 20,
            max_args: 1 << 20,
            max_inline_bytes: 64 << 10,
            idle_timeout_secs: 0,
            hash_ranges: 8,
            lease_preferences: Vec::new(),
            allow_flush: false,
            cluster_mode: false,
        }
    }
}

impl RespConfig {
    /// Checks every setting; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.listen.is_empty() {
            self.listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| format!("redis.listen {:?} is not a socket address (host:port): {e}", self.listen))?;
        }
        if !(1..=1_000_000).contains(&self.max_clients) {
            return Err(format!("redis.max_clients must be 1 to 1000000, got {}", self.max_clients));
        }
        if !((1 << 20)..=(1 << 32)).contains(&self.max_query_buffer_bytes) {
            return Err(format!(
                "redis.max_query_buffer_bytes must be 1 MiB to 4 GiB, got {}",
                self.max_query_buffer_bytes
            ));
        }
        if !(16..=(1 << 24)).contains(&self.max_args) {
            return Err(format!("redis.max_args must be 16 to 16777216, got {}", self.max_args));
        }
        if !(1024..=(1 << 26)).contains(&self.max_inline_bytes) {
            return Err(format!("redis.max_inline_bytes must be 1 KiB to 64 MiB, got {}", self.max_inline_bytes));
        }
        if !(1..=crate::meta::catalog::MAX_HASH_RANGES).contains(&self.hash_ranges) {
            return Err(format!(
                "redis.hash_ranges must be 1 to {}, got {}",
                crate::meta::catalog::MAX_HASH_RANGES,
                self.hash_ranges
            ));
        }
        Ok(())
    }
}

/// What every connection of one node shares.
pub struct RespServer {
    pub gw: Arc<Gateway>,
    pub cfg: RespConfig,
    /// The address clients are told to use for this node.
    pub advertised: String,
    next_client_id: AtomicU64,
    pub clients: session::ClientList,
    pub started: std::time::Instant,
    pub stats: session::Stats,
    /// Scripts loaded on this node (EVAL, SCRIPT LOAD), by SHA-1.
    pub scripts: script::cache::ScriptCache,
    /// Takes this node's transactions and script batches on one slot in turn.
    pub slot_locks: txn::SlotLocks,
    /// This node's scripts waiting for their slot's next batch.
    pub script_batches: script::batch::ScriptBatcher,
    /// The server itself, for the tasks it starts (a slot's script batches).
    pub me: std::sync::Weak<RespServer>,
    /// Other nodes' Redis addresses (cluster mode's MOVED), from the registry.
    pub peers: parking_lot::RwLock<std::collections::HashMap<u64, String>>,
    /// The pauses after a transaction's conflict: seeded, so a simulation replays exactly.
    pause_rng: parking_lot::Mutex<rand::rngs::StdRng>,
}

impl RespServer {
    /// `seed` seeds the server's only randomness (conflict pauses).
    pub fn new(gw: Arc<Gateway>, cfg: RespConfig, advertised: String, seed: u64) -> Arc<Self> {
        use rand::SeedableRng;
        Arc::new_cyclic(|me| RespServer {
            me: me.clone(),
            script_batches: Default::default(),
            pause_rng: parking_lot::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            gw,
            cfg,
            advertised,
            next_client_id: AtomicU64::new(1),
            clients: Default::default(),
            started: crate::clock::now(),
            stats: Default::default(),
            scripts: Default::default(),
            slot_locks: Default::default(),
            peers: Default::default(),
        })
    }

    fn client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A short random pause after a conflict, so that contenders for a hot key do
    /// not keep colliding in lockstep.
    pub async fn conflict_pause(&self) {
        let ms = rand::Rng::random_range(&mut *self.pause_rng.lock(), 0..5u64);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// Accepts clients until `stop` flips. Past `max_clients`, a client is sent
/// Redis's error and disconnected at once, so it costs no more than that.
pub async fn serve(server: Arc<RespServer>, mut incoming: Incoming, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(server.cfg.max_clients));
    loop {
        let accepted = tokio::select! {
            a = incoming.next() => a,
            _ = stop.changed() => return,
        };
        let client = match accepted {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                tracing::warn!("redis accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            None => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            server.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(connection::refuse(client.stream, "ERR max number of clients reached"));
            continue;
        };
        let id = server.client_id();
        let server = server.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            connection::run(server, client, id, stop).await;
            drop(permit);
        });
    }
}
