//! Sends Raft messages to other nodes. `RaftTransport` is what the store loop
//! needs from the network; `Transport` is its gRPC implementation (the
//! simulator supplies another).
//!
//! Messages are queued per destination node (bounded) and a task per node
//! drains its queue into batches sent on one long-lived `RaftStream` per node
//! pair, so all the ranges two nodes share cost one stream message per batch. Snapshots go over their own streaming
//! RPC in chunks (gRPC caps single messages at 4 MiB). A full queue or a failed
//! send reports the peer unreachable to raft-rs, which then probes it slowly.

use super::address_book::AddressBook;
use super::msg::StoreMsg;
use super::raft_storage::{conf_ver_of, RangeStorage};
use cairn_proto::internal::internal_client::InternalClient;
use cairn_proto::internal::raft_envelope::Control;
use cairn_proto::internal::{RaftBatch, RaftEnvelope, RangeDescriptor, SnapshotChunk, SnapshotFile};
use parking_lot::Mutex;
use prost011::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

const PEER_QUEUE: usize = 8192;
const MAX_BATCH_MSGS: usize = 1024;
const MAX_BATCH_BYTES: usize = 2 << 20;
/// Largest piece of a snapshot stream (smaller when the buffer setting is small).
const SNAPSHOT_CHUNK: usize = 1 << 20;
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches buffered on a peer's stream before the sender waits (backpressure).
const STREAM_BATCHES: usize = 32;

/// What the store loop needs from the network. Sends never block the loop: a
/// message that cannot be delivered is dropped (Raft retransmits) and, where it
/// matters, reported back to the loop as `Unreachable` or `SnapshotStatus`.
pub trait RaftTransport: Send + Sync {
    /// Queues every message of one replica's Ready.
    fn send_all(&self, store: &RangeStorage, msgs: Vec<Message>);
    /// Sends a control envelope (replica garbage collection) to `to`.
    fn send_control(&self, to: u64, env: RaftEnvelope);
    /// Tells `to` that this node is alive (hibernating followers rely on it).
    fn keepalive(&self, to: u64);
    /// How long since `node_id` was last heard from, as of `now`.
    fn silent_for(&self, node_id: u64, now: Instant) -> Duration;
}

/// The node hosting the peer a Raft message is addressed to. `None` (the
/// message is dropped; Raft retransmits) for a peer the replica cannot place,
/// which only a replica that has not learnt its range's members yet can meet.
pub fn destination(store: &RangeStorage, m: &Message) -> Option<u64> {
    let node = store.node_of(m.to);
    if node.is_none() {
        metrics::counter!("cairn_raft_messages_unroutable_total").increment(1);
        tracing::debug!(range_id = store.range_id, to = m.to, "no node known for raft peer; message dropped");
    }
    node
}

/// Wraps one Raft message of a range for the wire, with what a node that has no
/// replica yet needs to decide whether to create one.
pub fn envelope(store: &RangeStorage, m: &Message) -> RaftEnvelope {
    RaftEnvelope { message: m.encode_to_vec(), ..control_envelope(&store.desc, Control::None) }
}

/// An envelope about `desc`'s range as this node sees it, carrying `control`
/// (replica garbage collection and rebuild) instead of a Raft message.
pub fn control_envelope(desc: &RangeDescriptor, control: Control) -> RaftEnvelope {
    RaftEnvelope {
        range_id: desc.id,
        start: desc.start.clone(),
        end: desc.end.clone(),
        conf_ver: conf_ver_of(desc),
        message: Vec::new(),
        control: control as i32,
    }
}

enum Outbound {
    Envelope(RaftEnvelope),
    Keepalive,
}

pub struct Transport {
    node_id: u64,
    addr: String,
    cluster_id: String,
    book: Arc<AddressBook>,
    peers: Mutex<HashMap<u64, mpsc::Sender<Outbound>>>,
    last_seen: Mutex<HashMap<u64, Instant>>,
    started: Instant,
    store_tx: OnceLock<SyncSender<StoreMsg>>,
    rt: tokio::runtime::Handle,
    snapshots: SnapshotLimits,
    snapshot_sends: Arc<tokio::sync::Semaphore>,
    snapshot_receives: Arc<tokio::sync::Semaphore>,
}

/// Bounds on snapshots in flight (from `RaftConfig`).
#[derive(Clone, Copy, Debug)]
pub struct SnapshotLimits {
    /// Snapshot streams sent at once, and received at once (each counted apart).
    pub max_in_flight: usize,
    /// Bytes one stream may hold in buffers, at either end.
    pub buffer_bytes: usize,
}

impl SnapshotLimits {
    pub fn of(cfg: &super::RaftConfig) -> Self {
        SnapshotLimits {
            max_in_flight: cfg.snapshot_max_in_flight.max(1),
            buffer_bytes: usize::try_from(cfg.snapshot_buffer_bytes).unwrap_or(usize::MAX),
        }
    }

    /// The piece size and how many pieces may queue ahead of the network: both
    /// together stay within half the buffer (the other half is the receiver's).
    pub fn chunking(&self) -> (usize, usize) {
        let chunk = SNAPSHOT_CHUNK.min(self.buffer_bytes / 8).max(4096);
        (chunk, (self.buffer_bytes / 2 / chunk).max(1))
    }
}

pub fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        // A connection that went dead without a reset (its packets black-holed, as
        // when a partition drops them) is noticed within about five seconds and
        // replaced, instead of silently holding a peer's Raft traffic for longer.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(match CONNECTOR.get() {
        Some(connect) => connect(endpoint),
        None => endpoint.connect_lazy(),
    })
}

/// How often node-to-node connections are pinged, and how long a ping may go
/// unanswered before the connection is dropped (by both ends).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a (lazy) channel on an endpoint some other way than over the OS's TCP.
pub type Connector = fn(Endpoint) -> Channel;

/// How this process reaches other nodes when not over TCP: set once, by a
/// simulation that runs whole nodes on a simulated network.
static CONNECTOR: OnceLock<Connector> = OnceLock::new();

/// Makes every node-to-node channel of this process go through `connect`. Only the first call counts.
pub fn set_connector(connect: Connector) {
    let _ = CONNECTOR.set(connect);
}

impl Transport {
    pub fn new(
        node_id: u64,
        addr: String,
        cluster_id: String,
        book: Arc<AddressBook>,
        rt: tokio::runtime::Handle,
        snapshots: SnapshotLimits,
    ) -> Self {
        Transport {
            node_id,
            addr,
            cluster_id,
            book,
            peers: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            started: crate::clock::now(),
            store_tx: OnceLock::new(),
            rt,
            snapshots,
            snapshot_sends: Arc::new(tokio::sync::Semaphore::new(snapshots.max_in_flight)),
            snapshot_receives: Arc::new(tokio::sync::Semaphore::new(snapshots.max_in_flight)),
        }
    }

    pub fn set_store(&self, tx: SyncSender<StoreMsg>) {
        let _ = self.store_tx.set(tx);
    }

    pub fn snapshot_limits(&self) -> SnapshotLimits {
        self.snapshots
    }

    /// A place among the snapshots this node receives at once, if one is free.
    pub fn snapshot_receive_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.snapshot_receives.clone().try_acquire_owned().ok()
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Records that `node_id` was heard from (any inbound batch, keepalives included).
    pub fn mark_seen(&self, node_id: u64) {
        self.last_seen.lock().insert(node_id, crate::clock::now());
    }

    fn report(&self, msg: StoreMsg) {
        if let Some(tx) = self.store_tx.get() {
            let _ = tx.try_send(msg);
        }
    }
}

impl RaftTransport for Transport {
    fn send_all(&self, store: &RangeStorage, msgs: Vec<Message>) {
        for m in msgs {
            let Some(to) = destination(store, &m) else { continue };
            let env = envelope(store, &m);
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let files = match (store.engine().snapshot_dir(), m.snapshot.as_ref()) {
                    (Some(root), Some(snap)) => super::snapshot::generated_files(root, store.range_id, snap),
                    _ => Ok(Vec::new()),
                };
                match files {
                    Ok(files) => self.send_snapshot(to, env, files),
                    Err(e) => {
                        tracing::warn!(range_id = store.range_id, "cannot send snapshot: {e:#}");
                        self.report(StoreMsg::SnapshotStatus { range_id: store.range_id, to, ok: false });
                    }
                }
            } else {
                self.enqueue(to, Outbound::Envelope(env));
            }
        }
    }

    fn send_control(&self, to: u64, env: RaftEnvelope) {
        self.enqueue(to, Outbound::Envelope(env));
    }

    fn keepalive(&self, to: u64) {
        self.enqueue(to, Outbound::Keepalive);
    }

    /// Since start-up if never heard from.
    fn silent_for(&self, node_id: u64, now: Instant) -> Duration {
        let seen = self.last_seen.lock().get(&node_id).copied().unwrap_or(self.started);
        now.saturating_duration_since(seen)
    }
}

impl Transport {
    fn enqueue(&self, to: u64, item: Outbound) {
        let range_id = match &item {
            Outbound::Envelope(e) => Some(e.range_id),
            Outbound::Keepalive => None,
        };
        let tx = {
            let mut peers = self.peers.lock();
            peers.entry(to).or_insert_with(|| self.spawn_peer(to)).clone()
        };
        if tx.try_send(item).is_err() {
            metrics::counter!("cairn_transport_dropped_total").increment(1);
            if let Some(range_id) = range_id {
                self.report(StoreMsg::Unreachable { range_id, to });
            }
        }
    }

    fn spawn_peer(&self, to: u64) -> mpsc::Sender<Outbound> {
        let (tx, mut rx) = mpsc::channel::<Outbound>(PEER_QUEUE);
        let book = self.book.clone();
        let header = (self.node_id, self.addr.clone(), self.cluster_id.clone());
        let store_tx = self.store_tx.get().cloned();
        self.rt.spawn(async move {
            let mut client: Option<(String, InternalClient<Channel>)> = None;
            // The open stream to this peer and the task driving its RPC.
            let mut stream: Option<(mpsc::Sender<RaftBatch>, tokio::task::JoinHandle<()>)> = None;
            while let Some(first) = rx.recv().await {
                let mut envelopes = Vec::new();
                let mut bytes = 0;
                let mut next = Some(first);
                while let Some(o) = next.take() {
                    if let Outbound::Envelope(e) = o {
                        bytes += e.message.len();
                        envelopes.push(e);
                    }
                    if envelopes.len() < MAX_BATCH_MSGS && bytes < MAX_BATCH_BYTES {
                        next = rx.try_recv().ok();
                    }
                }
                let Some(addr) = book.get(to) else {
                    report_all(&store_tx, &envelopes, to);
                    continue;
                };
                if client.as_ref().is_none_or(|(a, _)| *a != addr) {
                    client = connect(&addr).ok().map(|ch| (addr.clone(), InternalClient::new(ch)));
                    if let Some((_, call)) = stream.take() {
                        call.abort();
                    }
                }
                let Some((_, c)) = client.as_mut() else {
                    report_all(&store_tx, &envelopes, to);
                    continue;
                };
                let batch = RaftBatch {
                    from_node: header.0,
                    from_addr: header.1.clone(),
                    cluster_id: header.2.clone(),
                    envelopes,
                };
                let ranges: Vec<u64> = batch.envelopes.iter().map(|e| e.range_id).collect();
                if stream.as_ref().is_none_or(|(tx, _)| tx.is_closed()) {
                    let (btx, brx) = mpsc::channel::<RaftBatch>(STREAM_BATCHES);
                    let mut c = c.clone();
                    let call = tokio::spawn(async move {
                        if let Err(e) = c.raft_stream(tokio_stream::wrappers::ReceiverStream::new(brx)).await {
                            tracing::debug!(to, "raft stream ended: {e}");
                        }
                    });
                    stream = Some((btx, call));
                }
                let Some((btx, _)) = stream.as_ref() else { continue };
                let sent = tokio::time::timeout(RPC_TIMEOUT, btx.send(batch)).await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::debug!(to, "raft stream is down or stuck; reconnecting");
                    if let Some((_, call)) = stream.take() {
                        call.abort();
                    }
                    for range_id in ranges {
                        if let Some(tx) = &store_tx {
                            let _ = tx.try_send(StoreMsg::Unreachable { range_id, to });
                        }
                    }
                    // Back off briefly so a dead peer does not spin this task.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        tx
    }

    /// Streams a snapshot: its Raft message, then its files. At most
    /// `max_in_flight` streams at once; beyond that the send fails at once and
    /// raft-rs tries again later.
    fn send_snapshot(&self, to: u64, env: RaftEnvelope, files: Vec<(PathBuf, SnapshotFile)>) {
        let range_id = env.range_id;
        let Ok(permit) = self.snapshot_sends.clone().try_acquire_owned() else {
            metrics::counter!("cairn_snapshots_deferred_total").increment(1);
            tracing::debug!(range_id, to, "snapshot send deferred: too many in flight");
            self.report(StoreMsg::SnapshotStatus { range_id, to, ok: false });
            return;
        };
        let book = self.book.clone();
        let (from, cluster) = (self.node_id, self.cluster_id.clone());
        let store_tx = self.store_tx.get().cloned();
        let limits = self.snapshots;
        self.rt.spawn(async move {
            let ok = match book.get(to) {
                Some(addr) => stream_snapshot(&addr, from, cluster, env, files, limits).await,
                None => Err(anyhow::anyhow!("no address for node {to}")),
            };
            drop(permit);
            if let Err(e) = &ok {
                tracing::warn!(range_id, to, "snapshot send failed: {e:#}");
            } else {
                metrics::counter!("cairn_snapshots_sent_total").increment(1);
            }
            if let Some(tx) = store_tx {
                let _ = tx.try_send(StoreMsg::SnapshotStatus { range_id, to, ok: ok.is_ok() });
            }
        });
    }
}

fn report_all(store_tx: &Option<SyncSender<StoreMsg>>, envs: &[RaftEnvelope], to: u64) {
    if let Some(tx) = store_tx {
        for e in envs {
            let _ = tx.try_send(StoreMsg::Unreachable { range_id: e.range_id, to });
        }
    }
}

/// Cuts `data` into pieces of part `part`, each with its checksum.
fn piece(part: u32, data: Vec<u8>) -> SnapshotChunk {
    let mut c = SnapshotChunk { crc32: crc32fast::hash(&data), data, part, ..Default::default() };
    if crate::faults::corrupt_this_chunk() {
        if let Some(b) = c.data.first_mut() {
            *b ^= 0x01;
        }
    }
    c
}

async fn stream_snapshot(
    addr: &str,
    from: u64,
    cluster_id: String,
    env: RaftEnvelope,
    files: Vec<(PathBuf, SnapshotFile)>,
    limits: SnapshotLimits,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut client = InternalClient::new(connect(addr)?);
    let (chunk_bytes, queued) = limits.chunking();
    // The producer reads ahead at most `queued` pieces: memory stays bounded
    // whatever the snapshot's size.
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(queued);
    let producer = tokio::spawn(async move {
        let total = env.message.len();
        let mut first = true;
        for data in env.message.chunks(chunk_bytes) {
            let mut c = piece(0, data.to_vec());
            if std::mem::take(&mut first) {
                c.from_node = from;
                c.cluster_id = cluster_id.clone();
                c.range_id = env.range_id;
                c.start = env.start.clone();
                c.end = env.end.clone();
                c.conf_ver = env.conf_ver;
                c.total_len = total as u64;
            }
            tx.send(c).await?;
        }
        for (i, (path, announced)) in files.iter().enumerate() {
            let mut f = tokio::fs::File::open(path).await.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let mut sent = 0u64;
            loop {
                let mut buf = vec![0u8; chunk_bytes];
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                sent += n as u64;
                tx.send(piece(i as u32 + 1, buf)).await?;
            }
            if sent != announced.size {
                anyhow::bail!("{} holds {sent} bytes, the snapshot names {}", path.display(), announced.size);
            }
        }
        anyhow::Ok(())
    });
    let req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    // No overall deadline: a large snapshot takes as long as it takes; a dead
    // peer is noticed by the connection's keepalive.
    let sent = client.snapshot(req).await;
    let produced = producer.await.map_err(|e| anyhow::anyhow!("snapshot reader: {e}"))?;
    sent?;
    produced
}
