//! Starts a node: opens storage, establishes its identity (bootstrapping a
//! new cluster or joining an existing one), starts the store loop, the
//! gateway, the gRPC and HTTP listeners, and the periodic tasks.

use super::{tasks, ServerConfig};
use crate::frontend::grpc_internal::InternalService;
use crate::frontend::grpc_kv::KvService;
use crate::frontend::http::{self, HttpState};
use crate::frontend::listener;
use crate::frontend::resp::{self, RespServer};
use crate::gateway::Gateway;
use crate::hlc::Hlc;
use crate::keys::mvcc;
use crate::meta;
use crate::raftstore::address_book::AddressBook;
use crate::raftstore::transport::{self, Transport};
use crate::raftstore::{store, ReplicaRegistry};
use crate::storage::layout;
use crate::storage::{Cf, Engine};
use anyhow::{bail, Context, Result};
use cairn_proto::internal::internal_client::InternalClient;
use cairn_proto::internal::internal_server::InternalServer;
use cairn_proto::internal::{JoinRequest, NodeInfo, RangeDescriptor, RangeEpoch, RangeRecord, Replica};
use cairn_proto::kv::cairn_server::CairnServer;
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What a started node tells its caller (and writes to `<data dir>/node.json`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeEndpoints {
    pub node_id: u64,
    pub cluster_id: String,
    pub grpc: String,
    pub http: String,
    /// The Redis-protocol listener's address (empty when it is off).
    #[serde(default)]
    pub redis: String,
}

fn read_ident(engine: &Engine) -> Option<(String, u64)> {
    let raw = engine.get(Cf::Local, layout::LOCAL_IDENT)?;
    let text = String::from_utf8(raw).ok()?;
    let (cluster, node) = text.split_once('\n')?;
    Some((cluster.to_string(), node.parse().ok()?))
}

fn write_ident(engine: &Engine, cluster_id: &str, node_id: u64) {
    let mut b = engine.batch();
    b.put(Cf::Local, layout::LOCAL_IDENT, format!("{cluster_id}\n{node_id}").as_bytes());
    engine.commit(b, true);
}

/// Creates a one-node cluster: the meta range and the first user range, both
/// with this node as their only replica, and the meta range's initial contents.
fn bootstrap(engine: &Engine, grpc: &str, http: &str, zone: &str) -> String {
    let cluster_id = format!("{:016x}", rand::random::<u64>());
    let ((ms, me), (us, ue)) = meta::bootstrap_bounds();
    let replicas = vec![Replica { node_id: 1, learner: false, replica_id: 1 }];
    let epoch = Some(RangeEpoch { version: 1, conf_ver: 1 });
    let meta_desc = RangeDescriptor {
        id: meta::META_RANGE_ID,
        start: ms,
        end: me,
        epoch,
        replicas: replicas.clone(),
        next_replica_id: 2,
        ..Default::default()
    };
    let user_desc = RangeDescriptor {
        id: meta::FIRST_USER_RANGE_ID,
        start: us,
        end: ue,
        epoch,
        replicas,
        next_replica_id: 2,
        ..Default::default()
    };
    store::bootstrap_ranges(engine, &[meta_desc.clone(), user_desc.clone()]);
    let version = crate::hlc::Version { wall_ns: crate::hlc::wall_now_ns(), logical: 0, node_id: 1 };
    let node = NodeInfo {
        id: 1,
        addr: grpc.to_string(),
        http_addr: http.to_string(),
        zone: zone.to_string(),
        heartbeat_ms: crate::hlc::wall_now_ms(),
        ..Default::default()
    };
    let rec =
        |d: RangeDescriptor| RangeRecord { desc: Some(d), leader_node_id: 0, ..Default::default() }.encode_to_vec();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (meta::key(meta::CTR_RANGE), meta::FIRST_USER_RANGE_ID.to_string().into_bytes()),
        (meta::key(meta::CTR_NODE), b"1".to_vec()),
        (meta::node_key(1), node.encode_to_vec()),
        (meta::dir_key(meta::META_RANGE_ID), rec(meta_desc)),
        (meta::dir_key(meta::FIRST_USER_RANGE_ID), rec(user_desc)),
    ];
    let mut b = engine.batch();
    for (k, v) in rows {
        b.put(Cf::Data, &mvcc::encode(&k, version), &mvcc::encode_value(&v));
    }
    // The meta range's state machine starts at this version.
    let apply = layout::ApplyState {
        applied_index: crate::raftstore::RAFT_INIT_INDEX,
        truncated_index: crate::raftstore::RAFT_INIT_INDEX,
        truncated_term: crate::raftstore::RAFT_INIT_TERM,
        last_version: version,
    };
    b.put(Cf::RaftState, &layout::apply_state_key(meta::META_RANGE_ID), &apply.encode());
    engine.commit(b, true);
    write_ident(engine, &cluster_id, 1);
    tracing::info!(%cluster_id, "bootstrapped a new cluster");
    cluster_id
}

async fn join_cluster(cfg: &ServerConfig, grpc: &str, http: &str) -> Result<(String, u64, Vec<NodeInfo>)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last_err = String::new();
    while tokio::time::Instant::now() < deadline {
        for addr in &cfg.join {
            let Ok(ch) = transport::connect(addr) else { continue };
            let mut c = InternalClient::new(ch);
            let mut req = tonic::Request::new(JoinRequest {
                addr: grpc.to_string(),
                http_addr: http.to_string(),
                zone: cfg.zone.clone(),
                capacity_bytes: 0,
            });
            req.set_timeout(Duration::from_secs(10));
            match c.join(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok((r.cluster_id, r.node_id, r.nodes));
                }
                Err(e) => last_err = format!("{addr}: {}", e.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("could not join the cluster through {:?}: {last_err}", cfg.join)
}

/// Runs a node until `shutdown` resolves. `ready` receives the endpoints once serving.
pub async fn run(
    cfg: ServerConfig,
    ready: Option<tokio::sync::oneshot::Sender<NodeEndpoints>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let data_dir = cfg.data_dir.clone().context("data_dir is required")?;
    // Installed first, so what happens while the node starts (replicas quarantined
    // when loaded, say) is counted too.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().ok();
    crate::clock_fault::watch(data_dir.clone());
    let engine = Arc::new(Engine::open(&data_dir.join("db"), &cfg.engine_config())?);
    let grpc_listener = TcpListener::bind(&cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let http_listener =
        TcpListener::bind(&cfg.http_listen).await.with_context(|| format!("binding {}", cfg.http_listen))?;
    let redis_listener = match cfg.redis.listen.as_str() {
        "" => None,
        addr => {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding redis.listen {addr}"))?;
            let bound = listener.local_addr()?.to_string();
            Some((resp::tcp_incoming(listener), bound))
        }
    };
    let grpc_addr = cfg.advertise.clone().unwrap_or(grpc_listener.local_addr()?.to_string());
    let http_addr = http_listener.local_addr()?.to_string();
    let incoming = listener::incoming(grpc_listener, cfg.max_connections);
    let io = NodeIo {
        engine,
        grpc_incoming: incoming,
        grpc_addr,
        http: Some((http_listener, metrics)),
        http_addr,
        store_driver: StoreDriver::Thread,
        physical_clock: None,
        redis: redis_listener,
    };
    let ready = move |endpoints: NodeEndpoints| -> Result<()> {
        std::fs::write(data_dir.join("node.json"), serde_json::to_vec_pretty(&endpoints)?)?;
        if let Some(r) = ready {
            let _ = r.send(endpoints);
        }
        Ok(())
    };
    serve(cfg, io, ready, shutdown).await
}

/// How the store loop runs.
pub enum StoreDriver {
    /// On its own OS thread, as in a real node.
    Thread,
    /// As a task on the current runtime, one turn per millisecond of the runtime's
    /// clock: what a simulation on a single-threaded, simulated-time runtime needs.
    Task,
}

/// What a node is served over: its storage, how connections reach it, and the
/// addresses it gives out. A real node gets RocksDB and TCP; a simulation, its
/// simulated disk and network.
pub struct NodeIo<S> {
    pub engine: Arc<Engine>,
    pub grpc_incoming: S,
    pub grpc_addr: String,
    /// The HTTP admin listener and the metrics handle it exports (none in a simulation).
    pub http: Option<(TcpListener, Option<metrics_exporter_prometheus::PrometheusHandle>)>,
    pub http_addr: String,
    pub store_driver: StoreDriver,
    /// Where this node's HLC reads physical time (the wall clock when `None`): a
    /// simulation gives each node its own, skewed and jumping.
    pub physical_clock: Option<crate::hlc::PhysicalClock>,
    /// The Redis-protocol clients and the address they reach (none when it is off).
    pub redis: Option<(resp::Incoming, String)>,
}

/// Establishes the node's identity, starts its layers over `io`, calls `ready`
/// once it serves, and runs until `shutdown` resolves (or, when the store loop
/// runs as a task, until that loop stops, which is an error).
pub async fn serve<S, C>(
    cfg: ServerConfig,
    io: NodeIo<S>,
    ready: impl FnOnce(NodeEndpoints) -> Result<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()>
where
    S: tokio_stream::Stream<Item = std::io::Result<C>> + Send + 'static,
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
{
    let NodeIo { engine, grpc_incoming, grpc_addr, http, http_addr, store_driver, physical_clock, redis } = io;
    let book = Arc::new(AddressBook::load(engine.clone()));
    let (cluster_id, node_id) = match read_ident(&engine) {
        Some(ident) => ident,
        None if cfg.join.is_empty() => (bootstrap(&engine, &grpc_addr, &http_addr, &cfg.zone), 1),
        None => {
            let (cluster, id, nodes) = join_cluster(&cfg, &grpc_addr, &http_addr).await?;
            for n in &nodes {
                book.learn(n.id, &n.addr);
            }
            write_ident(&engine, &cluster, id);
            tracing::info!(node_id = id, cluster_id = %cluster, "joined the cluster");
            (cluster, id)
        }
    };
    book.learn(node_id, &grpc_addr);
    let hlc = Arc::new(
        match physical_clock {
            Some(clock) => Hlc::with_physical_clock(node_id as u32, clock),
            None => Hlc::new(node_id as u32),
        }
        .with_max_offset_ns(cfg.max_clock_offset_ms.saturating_mul(1_000_000)),
    );
    let transport = Arc::new(Transport::new(
        node_id,
        grpc_addr.clone(),
        cluster_id.clone(),
        book.clone(),
        tokio::runtime::Handle::current(),
        crate::raftstore::transport::SnapshotLimits::of(&cfg.raft),
    ));
    let registry: ReplicaRegistry = Default::default();
    let (store_handle, store_task) = match store_driver {
        StoreDriver::Thread => {
            let (handle, _thread) =
                store::start(node_id, engine.clone(), cfg.raft.clone(), registry, transport.clone(), hlc.clone())?;
            (handle, None)
        }
        StoreDriver::Task => {
            let (loop_, handle) = store::Store::open(
                node_id,
                engine.clone(),
                cfg.raft.clone(),
                registry,
                transport.clone(),
                hlc.clone(),
                crate::clock::now(),
            )?;
            (handle, Some(tokio::spawn(loop_.drive())))
        }
    };
    transport.set_store(store_handle.tx.clone());
    let gw = Arc::new(Gateway::new(
        node_id,
        cluster_id.clone(),
        store_handle,
        book,
        cfg.limits.clone(),
        hlc,
        cfg.raft.clone(),
    ));

    let max_msg = cfg.limits.max_batch_bytes * 2 + (1 << 20);
    let kv = CairnServer::new(KvService {
        gw: gw.clone(),
        dead_after_ms: cfg.dead_after_secs.saturating_mul(1000),
        load_split_qps: cfg.load_split_qps,
        replication_factor: cfg.replication_factor,
        rebalance: cfg.rebalance,
    })
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let kv = tonic::service::interceptor::InterceptedService::new(
        kv,
        crate::frontend::grpc_kv::refuse_while_clock_untrusted(gw.node_id, gw.hlc.clone()),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let internal = InternalServer::new(InternalService { gw: gw.clone(), transport, stopping: stop_rx.clone() })
        .max_decoding_message_size(max_msg * 2)
        .max_encoding_message_size(max_msg * 2);
    let mut grpc_stop = stop_rx.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(1024)
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(transport::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(transport::KEEPALIVE_TIMEOUT))
            .add_service(kv)
            .add_service(internal)
            .serve_with_incoming_shutdown(grpc_incoming, async move {
                let _ = grpc_stop.changed().await;
            }),
    );
    if let Some((http_listener, metrics)) = http {
        let app = http::router(HttpState { gw: gw.clone(), metrics });
        let mut http_stop = stop_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.changed().await;
                })
                .await;
        });
    }
    let mut redis_addr = String::new();
    if let Some((incoming, bound)) = redis {
        redis_addr = cfg.redis.advertise.clone().unwrap_or(bound);
        // A simulation seeds the node's randomness (for exact replay); a real node draws it.
        let seed = cfg.raft.election_seed.map_or_else(rand::random, |s| s ^ 0x7E5);
        let server = RespServer::new(gw.clone(), cfg.redis.clone(), redis_addr.clone(), seed);
        tokio::spawn(resp::serve(server, incoming, stop_rx.clone()));
        tokio::spawn(resp::keyspace::keep_ensured(
            gw.clone(),
            cfg.redis.hash_ranges,
            cfg.redis.lease_preferences.clone(),
            stop_rx.clone(),
        ));
    }
    super::clock_monitor::spawn(gw.clone(), stop_rx.clone());
    let advertised = tasks::Advertised { grpc: grpc_addr.clone(), http: http_addr.clone(), redis: redis_addr.clone() };
    tasks::spawn_all(gw.clone(), &cfg, advertised, stop_rx);

    let endpoints = NodeEndpoints { node_id, cluster_id, grpc: grpc_addr, http: http_addr, redis: redis_addr };
    tracing::info!(node_id, grpc = %endpoints.grpc, http = %endpoints.http, "node ready");
    ready(endpoints)?;
    match store_task {
        None => shutdown.await,
        Some(store_task) => {
            tokio::select! {
                _ = shutdown => {}
                stopped = store_task => bail!("node {node_id}: the raft loop stopped: {stopped:?}"),
            }
        }
    }
    tracing::info!(node_id, "shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc).await;
    Ok(())
}
