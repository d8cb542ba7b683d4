//! `cairn.v1.Cairn`: the client API. Validates every request against the
//! limits before anything is proposed, encodes table keys, and hands the
//! request to the gateway.

use crate::gateway::feed;
use crate::gateway::scan::{self, ScanParams};
use crate::gateway::{self, new_request_id, ops, Gateway};
use crate::keys;
use crate::meta::{self, admin, catalog, events, registry};
use crate::outcome;
use crate::request;
use cairn_proto::internal::{Mutation, MutationResult, RangeDescriptor, RangeRecord, TableInfo};
use cairn_proto::kv::cairn_server::Cairn;
use cairn_proto::kv::*;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct KvService {
    pub gw: Arc<Gateway>,
    /// After how long without a heartbeat a node is reported dead (the controller's setting).
    pub dead_after_ms: u64,
    /// The load-split threshold (hot keys above half of it are noted as such).
    pub load_split_qps: u64,
    /// The controller's settings, to report what it is still working towards.
    pub replication_factor: usize,
    pub rebalance: bool,
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A failed mutation's status, marked not-applied unless the gateway already
/// marked its outcome: errors raised before anything was routed (validation, an
/// unknown table) never apply anything.
fn outcome_known(s: Status) -> Status {
    if s.metadata().get(outcome::HEADER).is_some() {
        s
    } else {
        gateway::with_outcome(s, false)
    }
}

/// Refuses every client request while this node's clock is too far from its
/// peers' (`server::clock_monitor`): versions it stamped would be that far off.
/// Nothing was done, so writes are marked not applied.
pub fn refuse_while_clock_untrusted(
    node_id: u64,
    hlc: Arc<crate::hlc::Hlc>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req| match hlc.untrusted_offset_ms() {
        None => Ok(req),
        Some(offset_ms) => Err(gateway::with_outcome(
            Status::unavailable(format!(
                "node {node_id}'s clock is {} ms {} a majority of its peers' clocks (max_clock_offset_ms is {}): \
                 it serves no requests until its clock is fixed; use another node",
                offset_ms.abs(),
                if offset_ms < 0 { "ahead of" } else { "behind" },
                hlc.max_offset_ns() / 1_000_000
            )),
            false,
        )),
    }
}

fn to_write_result(r: &MutationResult) -> WriteResult {
    WriteResult { succeeded: r.succeeded, existed: r.existed, version: r.version }
}

pub fn range_status(rec: &RangeRecord, tables: &[TableInfo]) -> RangeStatus {
    let d = rec.desc.clone().unwrap_or_default();
    let table_id = keys::decode_table(&d.start).map(|(id, _)| id).unwrap_or(keys::SYSTEM_TABLE_ID);
    let e = d.epoch.unwrap_or_default();
    RangeStatus {
        id: d.id,
        table: catalog::name_by_id(tables, table_id),
        start_display: if d.start.is_empty() { "-inf".into() } else { keys::display_key(&d.start) },
        end_display: keys::display_key(&d.end),
        start: d.start,
        end: d.end,
        epoch_version: e.version,
        epoch_conf_ver: e.conf_ver,
        replicas: d
            .replicas
            .iter()
            .map(|r| ReplicaStatus { node_id: r.node_id, learner: r.learner, replica_id: r.replica_id })
            .collect(),
        leader_node_id: rec.leader_node_id,
        approximate_bytes: rec.approximate_bytes,
    }
}

fn desc_status(d: RangeDescriptor, leader: u64, tables: &[TableInfo]) -> RangeStatus {
    range_status(&RangeRecord { desc: Some(d), leader_node_id: leader, ..Default::default() }, tables)
}

impl KvService {
    /// A membership change's resulting range, for the client (table names looked up).
    async fn admin_status(&self, a: cairn_proto::internal::AdminResponse) -> Option<RangeStatus> {
        let tables = catalog::list(&self.gw).await.unwrap_or_default();
        a.desc.map(|d| desc_status(d, a.leader_node_id, &tables))
    }

    fn check_request_id(&self, id: &[u8]) -> Result<Vec<u8>, Status> {
        self.gw.limits.check_request_id(id).map_err(invalid)?;
        Ok(if id.is_empty() { new_request_id() } else { id.to_vec() })
    }

    /// Converts client ops into mutations, validating every limit first.
    fn mutations(&self, t: &TableInfo, ops: Vec<WriteOp>) -> Result<Vec<Mutation>, Status> {
        request::to_mutations(&self.gw.limits, t, ops).map_err(invalid)
    }

    /// Validates and applies one table's write ops (see [`Self::write`]).
    async fn write_ops(&self, name: &str, ops: Vec<WriteOp>, rid: Vec<u8>) -> Result<Vec<MutationResult>, Status> {
        ops::with_table(&self.gw, name, |t| {
            let (ops, rid) = (ops.clone(), rid.clone());
            async move { ops::write(&self.gw, self.mutations(&t, ops)?, rid, false).await }
        })
        .await
    }

    async fn put_inner(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let mut r = req.into_inner();
        let rid = self.check_request_id(&std::mem::take(&mut r.request_id))?;
        let table = r.table.clone();
        let res = self.write_ops(&table, vec![WriteOp { op: Some(write_op::Op::Put(r)) }], rid).await?;
        let w = res.first().map(to_write_result).unwrap_or_default();
        Ok(Response::new(PutResponse { succeeded: w.succeeded, version: w.version }))
    }

    async fn delete_inner(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let mut r = req.into_inner();
        let rid = self.check_request_id(&std::mem::take(&mut r.request_id))?;
        let table = r.table.clone();
        let res = self.write_ops(&table, vec![WriteOp { op: Some(write_op::Op::Delete(r)) }], rid).await?;
        let w = res.first().map(to_write_result).unwrap_or_default();
        Ok(Response::new(DeleteResponse { succeeded: w.succeeded, existed: w.existed, version: w.version }))
    }

    async fn increment_inner(&self, req: Request<IncrementRequest>) -> Result<Response<IncrementResponse>, Status> {
        let r = req.into_inner();
        let rid = self.check_request_id(&r.request_id)?;
        let res = ops::with_table(&self.gw, &r.table, |t| {
            let rid = rid.clone();
            let r = &r;
            async move {
                let m = request::increment_mutation(&self.gw.limits, &t, &r.key, r.delta).map_err(invalid)?;
                ops::write(&self.gw, vec![m], rid, false).await
            }
        })
        .await?;
        match res.first() {
            Some(m) if m.succeeded => Ok(Response::new(IncrementResponse { value: m.counter, version: m.version })),
            _ => Err(Status::internal("increment produced no result")),
        }
    }

    async fn batch_write_inner(&self, req: Request<BatchWriteRequest>) -> Result<Response<BatchWriteResponse>, Status> {
        let r = req.into_inner();
        let rid = self.check_request_id(&r.request_id)?;
        if r.ops.is_empty() {
            catalog::get(&self.gw, &r.table).await?;
            return Ok(Response::new(BatchWriteResponse { results: vec![] }));
        }
        let res = self.write_ops(&r.table, r.ops, rid).await?;
        Ok(Response::new(BatchWriteResponse { results: res.iter().map(to_write_result).collect() }))
    }
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<ScanResponse, Status>> + Send>>;
type SubscribeStream = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Cairn for KvService {
    async fn create_table(&self, req: Request<CreateTableRequest>) -> Result<Response<CreateTableResponse>, Status> {
        let r = req.into_inner();
        let p = match Partitioning::try_from(r.partitioning) {
            Ok(Partitioning::Hash) => Partitioning::Hash,
            Ok(_) => Partitioning::Range,
            Err(_) => return Err(invalid(format!("unknown partitioning {}", r.partitioning))),
        };
        let placement =
            catalog::Placement { replication_factor: r.replication_factor, lease_preferences: r.lease_preferences };
        let t = catalog::create(&self.gw, &r.name, p, &r.split_keys, r.hash_ranges, placement).await?;
        Ok(Response::new(CreateTableResponse { table: Some(table_of(t)) }))
    }

    async fn alter_table(&self, req: Request<AlterTableRequest>) -> Result<Response<AlterTableResponse>, Status> {
        let r = req.into_inner();
        let rf = (r.replication_factor != 0).then_some(r.replication_factor);
        let prefs = match (r.clear_lease_preferences, r.lease_preferences.is_empty()) {
            (true, true) => Some(Vec::new()),
            (true, false) => return Err(invalid("clear_lease_preferences and lease_preferences together")),
            (false, false) => Some(r.lease_preferences),
            (false, true) => None,
        };
        if rf.is_none() && prefs.is_none() {
            return Err(invalid("nothing to alter: give a replication factor or lease preferences"));
        }
        let t = catalog::alter(&self.gw, &r.name, rf, prefs).await?;
        Ok(Response::new(AlterTableResponse { table: Some(table_of(t)) }))
    }

    async fn drop_table(&self, req: Request<DropTableRequest>) -> Result<Response<DropTableResponse>, Status> {
        catalog::drop(&self.gw, &req.into_inner().name).await?;
        Ok(Response::new(DropTableResponse {}))
    }

    async fn list_tables(&self, _: Request<ListTablesRequest>) -> Result<Response<ListTablesResponse>, Status> {
        let tables = catalog::list(&self.gw).await?;
        Ok(Response::new(ListTablesResponse { tables: tables.into_iter().map(table_of).collect() }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = req.into_inner();
        let stale = (r.consistency == ReadConsistency::Stale as i32).then_some(r.max_staleness_ms);
        let keys = [r.key];
        let keys = &keys;
        let mut out =
            ops::with_table(&self.gw, &r.table, |t| async move { ops::read(&self.gw, &t, keys, stale, false).await })
                .await?;
        Ok(Response::new(out.pop().unwrap_or_default()))
    }

    async fn batch_get(&self, req: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        let r = req.into_inner();
        let stale = (r.consistency == ReadConsistency::Stale as i32).then_some(r.max_staleness_ms);
        let keys = &r.keys;
        let results =
            ops::with_table(&self.gw, &r.table, |t| async move { ops::read(&self.gw, &t, keys, stale, false).await })
                .await?;
        Ok(Response::new(BatchGetResponse { results }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.put_inner(req).await.map_err(outcome_known)
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        self.delete_inner(req).await.map_err(outcome_known)
    }

    async fn increment(&self, req: Request<IncrementRequest>) -> Result<Response<IncrementResponse>, Status> {
        self.increment_inner(req).await.map_err(outcome_known)
    }

    async fn batch_write(&self, req: Request<BatchWriteRequest>) -> Result<Response<BatchWriteResponse>, Status> {
        self.batch_write_inner(req).await.map_err(outcome_known)
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        let r = req.into_inner();
        let t = catalog::get(&self.gw, &r.table).await?;
        let span = request::feed_span(&self.gw.limits, &t, &r.prefix).map_err(invalid)?;
        // "From now" is this node's clock: a change stamped later is sent.
        let from = r.from_version.as_ref().map(crate::hlc::Version::from).unwrap_or_else(|| self.gw.hlc.now());
        let params = feed::FeedParams {
            start: span.start,
            end: span.end,
            user_prefix: span.user_prefix,
            from,
            with_prev: r.with_prev_value,
            resolved_interval_ms: r.resolved_interval_ms,
            hashed: catalog::is_hashed(&t),
        };
        let rx = feed::subscribe(self.gw.clone(), params);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type ScanStream = ScanStream;

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanStream>, Status> {
        let r = req.into_inner();
        let t = catalog::get(&self.gw, &r.table).await?;
        let hashed = catalog::is_hashed(&t);
        let bounds = request::scan_bounds(&self.gw.limits, &t, &r).map_err(invalid)?;
        let params = ScanParams {
            start: bounds.start,
            end: bounds.end,
            limit: r.limit as usize,
            page_size: r.page_size,
            keys_only: r.keys_only,
            resume_version: bounds.resume_version,
        };
        let mut rx = scan::scan(self.gw.clone(), params);
        let table_id = t.id;
        let (gw, name) = (self.gw.clone(), r.table.clone());
        let stream = async_stream_from(move |tx: tokio::sync::mpsc::Sender<Result<ScanResponse, Status>>| async move {
            while let Some(batch) = rx.recv().await {
                if batch.as_ref().is_err_and(gateway::is_table_dropped) {
                    // The client's retry looks the name up afresh.
                    gw.forget_table(&name);
                }
                let msg = batch.map(|b| ScanResponse {
                    kvs: b
                        .pairs
                        .into_iter()
                        .map(|p| KeyValue {
                            key: keys::user_key(&p.key, hashed).to_vec(),
                            value: p.value,
                            version: p.version,
                            kind: p.kind,
                        })
                        .collect(),
                    next_page_token: b
                        .next_key
                        .map(|k| request::encode_token(table_id, b.read_version, &k))
                        .unwrap_or_default(),
                });
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let now = crate::hlc::wall_now_ms();
        let nodes = registry::list(&self.gw).await?;
        let intents = registry::states(&self.gw).await?;
        let tables = catalog::list(&self.gw).await.unwrap_or_default();
        let mut records = self.gw.load_directory().await?;
        records.sort_by(|a, b| {
            let ka = a.desc.as_ref().map(|d| d.start.clone()).unwrap_or_default();
            let kb = b.desc.as_ref().map(|d| d.start.clone()).unwrap_or_default();
            ka.cmp(&kb)
        });
        let progress = {
            use crate::controller::{progress, view};
            let nodes = view::nodes(&nodes, &intents, now, self.dead_after_ms);
            let ranges = view::ranges(&records, &tables, &Default::default());
            progress::report(&nodes, &ranges, self.replication_factor, self.rebalance)
                .into_iter()
                .map(|p| OperationProgress {
                    kind: p.kind.into(),
                    node_id: p.node_id,
                    remaining: p.remaining as u32,
                    detail: p.detail,
                })
                .collect()
        };
        Ok(Response::new(ClusterStatusResponse {
            progress,
            cluster_id: self.gw.cluster_id.clone(),
            nodes: nodes
                .into_iter()
                .map(|n| NodeStatus {
                    state: node_state(&n, intents.get(&n.id).copied(), now, self.dead_after_ms).into(),
                    live: registry::is_live(&n, now),
                    id: n.id,
                    addr: n.addr,
                    http_addr: n.http_addr,
                    zone: n.zone,
                    last_heartbeat_ms: n.heartbeat_ms,
                    capacity_bytes: n.capacity_bytes,
                    used_bytes: n.used_bytes,
                    replicas: n.replicas,
                    leaders: n.leaders,
                })
                .collect(),
            ranges: records.iter().map(|r| range_status(r, &tables)).collect(),
        }))
    }

    async fn split_range(&self, req: Request<SplitRangeRequest>) -> Result<Response<SplitRangeResponse>, Status> {
        let r = req.into_inner();
        let t = catalog::get(&self.gw, &r.table).await?;
        self.gw.limits.check_key(&r.key).map_err(invalid)?;
        // A hash table splits only where a slot starts: at the start of the key's slot.
        let at = if catalog::is_hashed(&t) {
            keys::hash_slot_start(t.id, keys::key_slot(&r.key))
        } else {
            keys::encode_range_key(t.id, &r.key)
        };
        let (left, right) = admin::split_at(&self.gw, &at, true).await?;
        let tables = catalog::list(&self.gw).await.unwrap_or_default();
        Ok(Response::new(SplitRangeResponse {
            left: Some(desc_status(left, 0, &tables)),
            right: right.map(|d| desc_status(d, 0, &tables)),
        }))
    }

    async fn merge_range(&self, req: Request<MergeRangeRequest>) -> Result<Response<MergeRangeResponse>, Status> {
        let r = req.into_inner();
        let result = meta::merge::merge(&self.gw, r.left_range_id).await;
        let event = ClusterEvent {
            kind: "merge".into(),
            range_id: r.left_range_id,
            reason: match &result {
                Ok((_, retired)) => format!("asked for by an operator; range {retired} merged into it"),
                Err(_) => "asked for by an operator".into(),
            },
            outcome: match &result {
                Ok(_) => "done".into(),
                Err(e) => format!("failed: {}", e.message()),
            },
            ..Default::default()
        };
        events::record_or_log(&self.gw, event).await;
        let (merged, retired) = result?;
        let tables = catalog::list(&self.gw).await.unwrap_or_default();
        Ok(Response::new(MergeRangeResponse {
            merged: Some(desc_status(merged, 0, &tables)),
            retired_range_id: retired,
        }))
    }

    async fn add_replica(&self, req: Request<ChangeReplicaRequest>) -> Result<Response<ChangeReplicaResponse>, Status> {
        let r = req.into_inner();
        let a = admin::add_replica(&self.gw, r.range_id, r.node_id).await?;
        Ok(Response::new(ChangeReplicaResponse { range: self.admin_status(a).await }))
    }

    async fn remove_replica(
        &self,
        req: Request<ChangeReplicaRequest>,
    ) -> Result<Response<ChangeReplicaResponse>, Status> {
        let r = req.into_inner();
        let a = admin::remove_replica(&self.gw, r.range_id, r.node_id).await?;
        Ok(Response::new(ChangeReplicaResponse { range: self.admin_status(a).await }))
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let r = req.into_inner();
        let a = admin::transfer_leader(&self.gw, r.range_id, r.node_id).await?;
        Ok(Response::new(TransferLeaderResponse { range: self.admin_status(a).await }))
    }

    async fn set_node_state(
        &self,
        req: Request<SetNodeStateRequest>,
    ) -> Result<Response<SetNodeStateResponse>, Status> {
        let r = req.into_inner();
        let state = NodeState::try_from(r.state).map_err(|_| invalid(format!("unknown node state {}", r.state)))?;
        registry::set_state(&self.gw, r.node_id, state).await?;
        tracing::info!(node_id = r.node_id, ?state, "node state set by an operator");
        Ok(Response::new(SetNodeStateResponse {}))
    }

    async fn list_cluster_events(
        &self,
        req: Request<ListClusterEventsRequest>,
    ) -> Result<Response<ListClusterEventsResponse>, Status> {
        let limit = req.into_inner().limit as usize;
        Ok(Response::new(ListClusterEventsResponse { events: events::list(&self.gw, limit).await? }))
    }

    async fn list_hot_keys(&self, req: Request<ListHotKeysRequest>) -> Result<Response<ListHotKeysResponse>, Status> {
        const DEFAULT_LIMIT: usize = 20;
        let limit = match req.into_inner().limit as usize {
            0 => DEFAULT_LIMIT,
            n => n.min(1000),
        };
        let now = crate::hlc::wall_now_ms();
        let nodes = registry::list(&self.gw).await?;
        let tables = catalog::list(&self.gw).await?;
        let dir = self.gw.directory();
        let mut keys: Vec<HotKeyStatus> = nodes
            .iter()
            .filter(|n| registry::is_live(n, now))
            .flat_map(|n| n.hot_keys.iter().map(move |h| (n.id, h)))
            .map(|(node_id, h)| {
                let (key, table) = match catalog::user_key(&tables, &h.key) {
                    Some((k, table)) => (k.to_vec(), table),
                    None => (h.key.clone(), String::new()),
                };
                let range_id = dir.lookup(&h.key).and_then(|r| r.desc.as_ref()).map_or(0, |d| d.id);
                let alone_hot = self.load_split_qps > 0 && h.qps.saturating_mul(2) >= self.load_split_qps;
                let note = if alone_hot {
                    format!(
                        "this key alone carries {} requests/s against a load-split threshold of {} per range: a \
                         range cannot split inside one key; spread its reads over the replicas with follower \
                         reads (READONLY on a Redis connection, stale reads on the native API)",
                        h.qps, self.load_split_qps
                    )
                } else {
                    String::new()
                };
                HotKeyStatus { table, key, qps: h.qps, node_id, range_id, note }
            })
            .collect();
        keys.sort_by(|a, b| b.qps.cmp(&a.qps).then_with(|| a.key.cmp(&b.key)));
        keys.truncate(limit);
        Ok(Response::new(ListHotKeysResponse { keys, load_split_qps: self.load_split_qps }))
    }
}

fn table_of(t: TableInfo) -> Table {
    Table {
        name: t.name,
        id: t.id,
        partitioning: t.partitioning,
        replication_factor: t.replication_factor,
        lease_preferences: t.lease_preferences,
    }
}

/// How a node stands: its operator state first (a decommissioned node is one
/// decommissioning that holds no replica any more), else its liveness.
fn node_state(
    n: &cairn_proto::internal::NodeInfo,
    intent: Option<NodeState>,
    now_ms: u64,
    dead_after_ms: u64,
) -> &'static str {
    match intent {
        Some(NodeState::Decommissioning) if n.replicas == 0 => "decommissioned",
        Some(NodeState::Decommissioning) => "decommissioning",
        Some(NodeState::Draining) => "draining",
        _ if registry::is_live(n, now_ms) => "live",
        _ if registry::is_dead(n, now_ms, dead_after_ms) => "dead",
        _ => "suspect",
    }
}

/// Runs `f` with the sending half of a bounded channel and returns the receiving half as a stream.
fn async_stream_from<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
