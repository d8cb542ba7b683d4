//! The request router every node runs: maps key → range → leader using the
//! cached directory, forwards the request (in-process when the leader is local,
//! else over the internal gRPC API), and on a stale route (not leader, key
//! outside the range, old epoch) refreshes and retries within the deadline.
//!
//! Writes always carry a request id (generated if the client gave none), so a
//! retry after an ambiguous outcome is applied at most once.

pub mod directory;
pub mod feed;
pub mod ops;
pub mod scan;

#[cfg(test)]
mod outcome_tests;

use crate::hlc::Hlc;
use crate::keys::meta;
use crate::limits::Limits;
use crate::outcome;
use crate::raftstore::address_book::AddressBook;
use crate::raftstore::{errors, executor, range_feed, transport, RaftConfig, StoreHandle};
use crate::sabotage::{self, Sabotage};
use cairn_proto::internal::internal_client::InternalClient;
use cairn_proto::internal::range_error::Kind;
use cairn_proto::internal::{
    LocateMetaRequest, RangeFeedMessage, RangeFeedRequest, RangeRecord, RangeRequest, RangeResponse, RangeScanPage,
    RangeScanRequest, TableInfo,
};
pub use directory::Directory;
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Status;

/// What a request is routed by.
#[derive(Clone, Debug)]
pub enum Target {
    Key(Vec<u8>),
    Range(u64),
}

pub struct Gateway {
    pub node_id: u64,
    pub cluster_id: String,
    pub store: StoreHandle,
    pub book: Arc<AddressBook>,
    pub limits: Limits,
    pub hlc: Arc<Hlc>,
    pub raft: RaftConfig,
    dir: RwLock<Directory>,
    pub(crate) tables: RwLock<HashMap<String, TableInfo>>,
    clients: Mutex<HashMap<u64, (String, InternalClient<Channel>)>>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

/// Forwards a peer's response stream into `tx` until it ends, fails (the error
/// is forwarded last), or the reader goes away (then the peer's stream is dropped).
async fn relay<T>(mut stream: tonic::Streaming<T>, tx: mpsc::Sender<Result<T, Status>>) {
    loop {
        // Biased: a fixed order, so that a simulation replays exactly.
        let next = tokio::select! {
            biased;
            m = stream.message() => m,
            _ = tx.closed() => return,
        };
        match next {
            Ok(Some(m)) => {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// A fresh random request id, so the gateway's own retries are deduplicated.
pub fn new_request_id() -> Vec<u8> {
    let mut id = b"gw-".to_vec();
    id.extend_from_slice(&rand::random::<[u8; 16]>());
    id
}

/// Marks a failed write's status with its outcome (`outcome::HEADER`); a status
/// already marked keeps the more cautious of the two.
pub fn with_outcome(mut status: Status, maybe_applied: bool) -> Status {
    let already_unknown =
        status.metadata().get(outcome::HEADER).is_some_and(|v| v.to_str().ok() == Some(outcome::UNKNOWN));
    let value = if maybe_applied || already_unknown { outcome::UNKNOWN } else { outcome::NOT_APPLIED };
    status.metadata_mut().insert(outcome::HEADER, tonic::metadata::MetadataValue::from_static(value));
    status
}

/// Whether a write's status says it may have been applied (unmarked counts as maybe).
pub fn maybe_applied(status: &Status) -> bool {
    outcome::maybe_applied(status.metadata().get(outcome::HEADER).and_then(|v| v.to_str().ok()))
}

/// Whether a failed call to another node certainly never delivered its request:
/// the node's address is unknown, or the connection could not be opened. Any
/// other failure (a reset, a timeout, a broken stream) may come after the request
/// reached the node.
fn never_delivered(e: &Status) -> bool {
    if e.message().starts_with(NO_ADDRESS) {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable) {
                return true;
            }
        }
        let text = cause.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The metadata key that marks a NOT_FOUND as "this table id was dropped" (the
/// front end then looks the table's name up again).
const TABLE_DROPPED: &str = "cairn-table-dropped";

fn table_dropped(message: &str) -> Status {
    let mut s = Status::not_found(format!("{message}; the table was dropped"));
    s.metadata_mut().insert(TABLE_DROPPED, tonic::metadata::MetadataValue::from_static("1"));
    s
}

/// Whether a range refused the request because its table id was dropped.
pub fn is_table_dropped(s: &Status) -> bool {
    s.code() == tonic::Code::NotFound && s.metadata().get(TABLE_DROPPED).is_some()
}

const NO_ADDRESS: &str = "no address known for node";

/// Maps a replica's routing error to the client-facing status.
pub fn status_of(e: &cairn_proto::internal::RangeError) -> Status {
    match errors::kind_of(e) {
        Kind::Invalid => Status::invalid_argument(e.message.clone()),
        Kind::HistoryGone => Status::out_of_range(e.message.clone()),
        Kind::TableDropped => table_dropped(&e.message),
        _ => Status::unavailable(e.message.clone()),
    }
}

impl Gateway {
    pub fn new(
        node_id: u64,
        cluster_id: String,
        store: StoreHandle,
        book: Arc<AddressBook>,
        limits: Limits,
        hlc: Arc<Hlc>,
        raft: RaftConfig,
    ) -> Self {
        Gateway {
            node_id,
            cluster_id,
            store,
            book,
            limits,
            hlc,
            raft,
            dir: RwLock::new(Directory::default()),
            tables: RwLock::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            last_refresh: tokio::sync::Mutex::new(None),
        }
    }

    pub fn directory(&self) -> Directory {
        self.dir.read().clone()
    }

    fn client(&self, node: u64) -> Result<InternalClient<Channel>, Status> {
        let addr = self.book.get(node).ok_or_else(|| Status::unavailable(format!("{NO_ADDRESS} {node}")))?;
        let mut clients = self.clients.lock();
        if let Some((a, c)) = clients.get(&node) {
            if *a == addr {
                return Ok(c.clone());
            }
        }
        let ch = transport::connect(&addr).map_err(|e| Status::unavailable(format!("node {node} at {addr}: {e}")))?;
        let c = InternalClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
        clients.insert(node, (addr, c.clone()));
        Ok(c)
    }

    /// Runs one range request on `node` (in-process if it is this node).
    pub async fn send(&self, node: u64, req: RangeRequest, timeout: Duration) -> Result<RangeResponse, Status> {
        if node == self.node_id {
            return tokio::time::timeout(timeout, executor::execute(&self.store, req))
                .await
                .map_err(|_| Status::deadline_exceeded("timed out waiting for the local replica"));
        }
        let mut c = self.client(node)?;
        let mut r = tonic::Request::new(req);
        r.set_timeout(timeout);
        Ok(c.execute(r).await?.into_inner())
    }

    /// Opens a page stream of one range's scan on `node`.
    pub async fn open_scan(
        &self,
        node: u64,
        req: RangeScanRequest,
    ) -> Result<mpsc::Receiver<Result<RangeScanPage, Status>>, Status> {
        let (tx, rx) = mpsc::channel(2);
        if node == self.node_id {
            tokio::spawn(executor::scan_range(self.store.clone(), req, tx));
            return Ok(rx);
        }
        let mut c = self.client(node)?;
        tokio::spawn(relay(c.scan_range(req).await?.into_inner(), tx));
        Ok(rx)
    }

    /// Opens a range feed on `node` (in-process when it is this one).
    pub async fn open_range_feed(
        &self,
        node: u64,
        req: RangeFeedRequest,
    ) -> Result<mpsc::Receiver<Result<RangeFeedMessage, Status>>, Status> {
        let (tx, rx) = mpsc::channel(4);
        if node == self.node_id {
            tokio::spawn(range_feed::serve(self.store.clone(), req, tx));
            return Ok(rx);
        }
        let mut c = self.client(node)?;
        tokio::spawn(relay(c.range_feed(req).await?.into_inner(), tx));
        Ok(rx)
    }

    // ------------------------------------------------------------------ routing

    /// The meta range's record, from a local replica, the cache, or a peer.
    async fn meta_record(&self) -> Result<RangeRecord, Status> {
        if let Some(s) = self.store.registry.read().get(&meta::META_RANGE_ID).cloned() {
            if s.initialized() && s.leader_id() != 0 {
                return Ok(RangeRecord { desc: Some(s.desc()), leader_node_id: s.leader_id(), ..Default::default() });
            }
        }
        if let Some(r) = self.dir.read().by_id(meta::META_RANGE_ID).cloned() {
            if r.leader_node_id != 0 {
                return Ok(r);
            }
        }
        for (node, _) in self.book.all() {
            if node == self.node_id {
                continue;
            }
            let Ok(mut c) = self.client(node) else { continue };
            let mut req = tonic::Request::new(LocateMetaRequest {});
            req.set_timeout(Duration::from_secs(1));
            if let Ok(resp) = c.locate_meta(req).await {
                let resp = resp.into_inner();
                for n in &resp.nodes {
                    self.book.learn(n.id, &n.addr);
                }
                if resp.leader_node_id != 0 && resp.desc.is_some() {
                    let rec =
                        RangeRecord { desc: resp.desc, leader_node_id: resp.leader_node_id, ..Default::default() };
                    self.dir.write().insert(rec.clone());
                    return Ok(rec);
                }
            }
        }
        Err(Status::unavailable("the meta range has no reachable leader"))
    }

    pub async fn locate(&self, target: &Target) -> Result<RangeRecord, Status> {
        let is_meta = match target {
            Target::Key(k) => meta::is_meta_key(k),
            Target::Range(id) => *id == meta::META_RANGE_ID,
        };
        if is_meta {
            return self.meta_record().await;
        }
        for refreshed in [false, true] {
            if refreshed {
                self.refresh_directory().await?;
            }
            let dir = self.dir.read();
            let found = match target {
                Target::Key(k) => dir.lookup(k).cloned(),
                Target::Range(id) => dir.by_id(*id).cloned(),
            };
            if let Some(r) = found {
                return Ok(r);
            }
        }
        Err(Status::unavailable(format!("no range found for {target:?} in the directory")))
    }

    /// Reloads the directory from the meta range (one refresh at a time; callers
    /// that waited for a refresh started after they asked reuse its result).
    /// Reads of the meta range itself never refresh, so this cannot recurse into itself.
    pub fn refresh_directory(&self) -> BoxFuture<'_, Result<(), Status>> {
        Box::pin(async move {
            let asked = crate::clock::now();
            let mut last = self.last_refresh.lock().await;
            // Someone else refreshed while we waited: their result is fresh enough.
            if last.is_some_and(|t| t >= asked) {
                return Ok(());
            }
            let records = self.load_directory().await?;
            let mut fresh = Directory::from_records(records);
            // Keep leader hints we learned more recently than the meta range.
            for r in self.dir.read().records() {
                if let Some(d) = &r.desc {
                    if fresh.by_id(d.id).is_some_and(|f| f.desc == r.desc) && r.leader_node_id != 0 {
                        fresh.set_leader(d.id, r.leader_node_id);
                    }
                }
            }
            *self.dir.write() = fresh;
            *last = Some(crate::clock::now());
            Ok(())
        })
    }

    /// Every range record of the meta range's directory.
    pub async fn load_directory(&self) -> Result<Vec<RangeRecord>, Status> {
        use prost::Message as _;
        let (start, end) = meta::prefix_bounds(meta::DIR_PREFIX);
        let pairs = scan::collect(self, start, end).await?;
        Ok(pairs.into_iter().filter_map(|p| RangeRecord::decode(p.value.as_slice()).ok()).collect())
    }

    /// Learns `node`'s address from the meta range's node registry. The address
    /// book refreshes every 10 s, and a range's leader may be on a node this one
    /// has never exchanged a message with (a voter added since, then given the
    /// leadership). Never called for the meta range's own requests (no recursion).
    fn learn_address(&self, node: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            use prost::Message as _;
            let key = meta::node_key(node);
            let mut end = key.clone();
            end.push(0);
            if let Ok(pairs) = scan::collect(self, key, end).await {
                for p in pairs {
                    if let Ok(n) = cairn_proto::internal::NodeInfo::decode(p.value.as_slice()) {
                        if n.id == node && !n.addr.is_empty() {
                            self.book.learn(n.id, &n.addr);
                        }
                    }
                }
            }
        })
    }

    pub fn dir_set_leader(&self, range_id: u64, leader: u64) {
        self.dir.write().set_leader(range_id, leader);
    }

    pub fn learn_route(&self, rec: RangeRecord) {
        self.dir.write().insert(rec);
    }

    /// Whether this node's replica of the request's range can serve it without a
    /// hop to the leader: reads (follower ReadIndex) and writes with a request id
    /// (raft-rs forwards the proposal; the follower answers when it applies it).
    /// Only a replica in touch with its leader qualifies, so a replica cut off
    /// from its group never holds a request.
    fn serves_locally(&self, req: &RangeRequest) -> bool {
        use cairn_proto::internal::{raft_command::Cmd, range_request::Req};
        let eligible = match &req.req {
            Some(Req::Read(_)) => true,
            Some(Req::Command(c)) => !c.request_id.is_empty() && matches!(c.cmd, Some(Cmd::Write(_))),
            _ => false,
        };
        if !eligible {
            return false;
        }
        let Some(r) = self.store.registry.read().get(&req.range_id).cloned() else { return false };
        if sabotage::active(Sabotage::StaleLocalRead) && matches!(req.req, Some(Req::Read(_))) {
            return r.initialized() && !r.destroyed();
        }
        let leader_only = match &req.req {
            Some(Req::Read(r)) => r.judge_expiry_at_leader && !r.stale,
            Some(Req::Command(c)) => c.judge_expiry_at_leader,
            _ => false,
        };
        if leader_only {
            return r.initialized() && !r.destroyed() && r.is_leader();
        }
        r.initialized() && !r.destroyed() && r.in_touch_with_leader(self.raft.tick_ms * self.raft.election_ticks as u64)
    }

    /// The leader as this node's own replica of the range knows it (fresher than the directory).
    fn local_leader_hint(&self, range_id: u64) -> Option<u64> {
        let r = self.store.registry.read().get(&range_id).cloned()?;
        (r.initialized() && !r.destroyed()).then(|| r.leader_id()).filter(|l| *l != 0)
    }

    fn fail_fast_window(&self) -> Duration {
        Duration::from_millis(self.raft.tick_ms * self.raft.election_ticks as u64 * 3)
    }

    /// Routes a request and retries stale routes until it succeeds, fails for a
    /// reason retrying cannot fix, or the deadline passes. `build` makes the
    /// request for the route the gateway currently believes in (its error ends the call).
    ///
    /// A failed write's status carries its outcome (`outcome::HEADER`): unknown as
    /// soon as any attempt may have reached a replica that proposed it (a timeout,
    /// a connection lost after the request went out, leadership lost under it),
    /// not-applied otherwise.
    pub async fn call(
        &self,
        target: Target,
        mut build: impl FnMut(&RangeRecord) -> Result<RangeRequest, Status>,
    ) -> Result<RangeResponse, Status> {
        let deadline = crate::clock::now() + Duration::from_millis(self.limits.request_deadline_ms);
        let mut last_progress = crate::clock::now();
        let mut failed_nodes: HashSet<u64> = HashSet::new();
        let mut maybe_applied = false;
        let mut is_write = false;
        let mut last_error = String::from("no attempt made");
        let mut attempt: u64 = 0;
        // Whether this node's own replica may serve the request (cleared once it could not).
        let mut local_ok = true;
        let finish = |status: Status, is_write: bool, maybe_applied: bool| {
            if is_write {
                with_outcome(status, maybe_applied)
            } else {
                status
            }
        };
        loop {
            let now = crate::clock::now();
            if now >= deadline || now.duration_since(last_progress) > self.fail_fast_window() {
                let tail = if maybe_applied { format!("; {}", outcome::UNKNOWN_TAIL) } else { String::new() };
                return Err(finish(Status::unavailable(format!("{last_error}{tail}")), is_write, maybe_applied));
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis((10 * attempt).min(200))).await;
            }
            attempt += 1;
            let rec = match self.locate(&target).await {
                Ok(r) => r,
                Err(e) => {
                    last_error = e.message().to_string();
                    continue;
                }
            };
            let Some(desc) = rec.desc.clone() else { continue };
            let voters: Vec<u64> = desc.replicas.iter().filter(|r| !r.learner).map(|r| r.node_id).collect();
            if voters.is_empty() {
                last_error = format!("range {} has no voters", desc.id);
                continue;
            }
            let req = build(&rec).map_err(|e| finish(e, is_write, maybe_applied))?;
            is_write |= matches!(req.req, Some(cairn_proto::internal::range_request::Req::Command(_)));
            let node = if local_ok && self.serves_locally(&req) {
                self.node_id
            } else if let Some(leader) = self
                .local_leader_hint(desc.id)
                .or(Some(rec.leader_node_id))
                // A leader outside the cached voters is one added since this node's
                // directory last heard of the range: as long as its address is known,
                // it is where the request goes (it refuses what is not its own).
                .filter(|l| *l != 0 && (voters.contains(l) || self.book.get(*l).is_some()) && !failed_nodes.contains(l))
            {
                leader
            } else {
                let healthy: Vec<u64> = voters.iter().copied().filter(|n| !failed_nodes.contains(n)).collect();
                let pool = if healthy.is_empty() { &voters } else { &healthy };
                pool[(attempt as usize) % pool.len()]
            };
            if node != self.node_id && desc.id != meta::META_RANGE_ID && self.book.get(node).is_none() {
                self.learn_address(node).await;
            }
            let remaining = deadline.saturating_duration_since(crate::clock::now());
            let resp = match self.send(node, req, remaining).await {
                Ok(r) => r,
                Err(e) => {
                    // Only a request that provably never left this node cannot have been
                    // proposed: a reset, a timeout or a dropped stream after it went out may
                    // come after the replica proposed it.
                    if is_write && !never_delivered(&e) {
                        maybe_applied = true;
                    }
                    last_error = format!("node {node}: {}", e.message());
                    failed_nodes.insert(node);
                    self.dir.write().set_leader(desc.id, 0);
                    continue;
                }
            };
            if node == self.node_id && resp.error.is_some() {
                local_ok = false;
            }
            // Success says nothing about leadership (followers serve reads and forward
            // writes), so the leader hint only changes on errors and local knowledge.
            let Some(err) = resp.error.clone() else { return Ok(resp) };
            last_error = err.message.clone();
            tracing::debug!(range_id = desc.id, node, attempt, error = %err.message, "range request re-routed");
            match errors::kind_of(&err) {
                Kind::None => return Ok(resp),
                Kind::NotLeader => {
                    self.dir.write().set_leader(desc.id, err.leader_hint);
                    if err.leader_hint != 0 {
                        last_progress = crate::clock::now();
                        failed_nodes.remove(&err.leader_hint);
                    }
                    // The cached membership is stale (the hinted leader is not in it): reload
                    // it, else the next requests would wait for the periodic refresh.
                    if err.leader_hint != 0 && !voters.contains(&err.leader_hint) && desc.id != meta::META_RANGE_ID {
                        let _ = self.refresh_directory().await;
                    }
                }
                Kind::RangeNotFound => {
                    failed_nodes.insert(node);
                    self.dir.write().set_leader(desc.id, 0);
                    if desc.id != meta::META_RANGE_ID {
                        let _ = self.refresh_directory().await;
                    }
                }
                Kind::EpochMismatch | Kind::KeyNotInRange => {
                    last_progress = crate::clock::now();
                    if let Some(d) = err.desc {
                        self.learn_route(RangeRecord { desc: Some(d), leader_node_id: node, ..Default::default() });
                    }
                    if desc.id != meta::META_RANGE_ID {
                        let _ = self.refresh_directory().await;
                    }
                }
                Kind::Ambiguous => {
                    // Leadership moved under the request: worth retrying (same request id).
                    maybe_applied = true;
                    last_progress = crate::clock::now();
                }
                Kind::Unavailable => {}
                Kind::Invalid | Kind::TableDropped | Kind::HistoryGone => {
                    return Err(finish(status_of(&err), is_write, maybe_applied))
                }
            }
        }
    }

    /// Drops cached table info (after create/drop).
    pub fn forget_table(&self, name: &str) {
        self.tables.write().remove(name);
    }
}
