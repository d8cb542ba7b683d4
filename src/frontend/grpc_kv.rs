//! `cairn.v1.Cairn`: the client API. Validates every request against the
//! limits before anything is proposed, encodes table keys, and hands the
//! request to the gateway.

use crate::gateway::scan::{self, ScanParams};
use crate::gateway::{self, new_request_id, Gateway, Target};
use crate::keys;
use crate::meta::{admin, catalog, registry};
use crate::outcome;
use crate::request;
use crate::sabotage::{self, Sabotage};
use cairn_proto::internal::{
    raft_command, range_request, Mutation, MutationResult, RaftCommand, RangeDescriptor, RangeRecord, RangeRequest,
    ReadRequest, TableInfo, WriteBatch,
};
use cairn_proto::kv::cairn_server::Cairn;
use cairn_proto::kv::*;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct KvService {
    pub gw: Arc<Gateway>,
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The status a write group returns when the keys it was built for no longer share a range.
const REGROUP: &str = "regroup";

fn is_regroup(s: &Status) -> bool {
    s.code() == tonic::Code::Aborted && s.message() == REGROUP
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

fn epoch_of(rec: &RangeRecord) -> Option<cairn_proto::internal::RangeEpoch> {
    rec.desc.as_ref().and_then(|d| d.epoch)
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
    range_status(&RangeRecord { desc: Some(d), leader_node_id: leader, approximate_bytes: 0 }, tables)
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

    /// Applies mutations, atomically per range; results in input order.
    ///
    /// Every group carries the client's request id unchanged: dedupe records are
    /// kept per key, so a retry finds each key's answer however a split has
    /// regrouped the keys since the first attempt. A failed batch's status says
    /// whether any of it may have been applied (`outcome::HEADER`): a batch that
    /// spans ranges is atomic per range only, so one group's failure after another
    /// group's success leaves the outcome unknown.
    async fn write(&self, muts: Vec<Mutation>, request_id: Vec<u8>) -> Result<Vec<MutationResult>, Status> {
        const MAX_REGROUPS: usize = 8;
        let mut any_sent = false;
        for _ in 0..MAX_REGROUPS {
            // Group by the range each key is routed to now.
            let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            let dir = self.gw.directory();
            for (i, m) in muts.iter().enumerate() {
                let id = dir.lookup(&m.key).and_then(|r| r.desc.as_ref()).map(|d| d.id).unwrap_or(0);
                groups.entry(id).or_default().push(i);
            }
            let calls = groups.values().map(|idx| {
                let group: Vec<Mutation> = idx.iter().map(|&i| muts[i].clone()).collect();
                let mut request_id = request_id.clone();
                if sabotage::active(Sabotage::BatchIdsPerGroup) {
                    request_id.extend_from_slice(&crc32fast::hash(&group[0].key).to_be_bytes());
                }
                let cmd = RaftCommand {
                    request_id,
                    proposed_version: None,
                    cmd: Some(raft_command::Cmd::Write(WriteBatch { mutations: group })),
                };
                let first = muts[idx[0]].key.clone();
                async move {
                    let keys_ok = |d: &RangeDescriptor| {
                        let Some(raft_command::Cmd::Write(w)) = &cmd.cmd else { return false };
                        w.mutations.iter().all(|m| keys::in_range(&m.key, &d.start, &d.end))
                    };
                    self.gw
                        .call(Target::Key(first), |rec| {
                            let d = rec.desc.clone().unwrap_or_default();
                            if !keys_ok(&d) {
                                return Err(Status::aborted(REGROUP));
                            }
                            Ok(RangeRequest {
                                range_id: d.id,
                                epoch: epoch_of(rec),
                                req: Some(range_request::Req::Command(cmd.clone())),
                            })
                        })
                        .await
                }
            });
            let results = futures::future::join_all(calls).await;
            // A group refused for regrouping was never sent, but an earlier round or a
            // sibling group may have been: the retry round re-sends them under the same id.
            any_sent |= results.iter().any(|r| match r {
                Ok(_) => true,
                Err(s) => gateway::maybe_applied(s) && !is_regroup(s),
            });
            if results.iter().any(|r| matches!(r, Err(s) if is_regroup(s))) {
                let _ = self.gw.refresh_directory().await;
                continue;
            }
            let mut out = vec![MutationResult::default(); muts.len()];
            for (idx, r) in groups.values().zip(results) {
                let resp = r.map_err(|s| gateway::with_outcome(s, any_sent))?;
                let w = resp.write.unwrap_or_default();
                for (j, &i) in idx.iter().enumerate() {
                    out[i] = w.results.get(j).cloned().unwrap_or_default();
                }
            }
            return Ok(out);
        }
        let tail = if any_sent { format!("; {}", outcome::UNKNOWN_TAIL) } else { String::new() };
        Err(gateway::with_outcome(
            Status::unavailable(format!("ranges kept changing while routing the batch; retry{tail}")),
            any_sent,
        ))
    }

    /// Runs `op` on the table named `name` (cached). When a range refuses the cached
    /// table id as dropped (the table was dropped, and perhaps created anew, through
    /// another node), forgets the cached entry and runs `op` once more on the table
    /// the name now resolves to (NOT_FOUND if none). A refused attempt applied nothing.
    async fn with_table<T, Fut>(&self, name: &str, op: impl Fn(TableInfo) -> Fut) -> Result<T, Status>
    where
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let t = catalog::get(&self.gw, name).await?;
        match op(t).await {
            Err(s) if gateway::is_table_dropped(&s) => {
                self.gw.forget_table(name);
                op(catalog::get(&self.gw, name).await?).await
            }
            other => other,
        }
    }

    /// Validates and applies one table's write ops (see [`Self::write`]).
    async fn write_ops(&self, name: &str, ops: Vec<WriteOp>, rid: Vec<u8>) -> Result<Vec<MutationResult>, Status> {
        self.with_table(name, |t| {
            let (ops, rid) = (ops.clone(), rid.clone());
            async move { self.write(self.mutations(&t, ops)?, rid).await }
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
        let res = self
            .with_table(&r.table, |t| {
                let rid = rid.clone();
                let r = &r;
                async move {
                    let m = request::increment_mutation(&self.gw.limits, &t, &r.key, r.delta).map_err(invalid)?;
                    self.write(vec![m], rid).await
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

    /// Reads keys, one request per range touched: each range's keys are read at
    /// one version (atomic per range, never half of an applied batch). The values
    /// read are bounded by `max_batch_bytes` as they arrive: every range read is
    /// refused as soon as its own values pass the bound, at most
    /// `READ_GROUPS_IN_FLIGHT` ranges are read at once, and the request fails as
    /// soon as the total passes it, so memory stays bounded whatever the request asks.
    async fn read(&self, t: &TableInfo, user_keys: &[Vec<u8>], stale: bool) -> Result<Vec<GetResponse>, Status> {
        use futures::StreamExt as _;
        const MAX_REGROUPS: usize = 8;
        const READ_GROUPS_IN_FLIGHT: usize = 4;
        for k in user_keys {
            self.gw.limits.check_key(k).map_err(invalid)?;
        }
        if user_keys.len() > self.gw.limits.max_batch_ops {
            return Err(invalid(format!(
                "batch has {} keys; the limit is {} (max_batch_ops)",
                user_keys.len(),
                self.gw.limits.max_batch_ops
            )));
        }
        let limit = self.gw.limits.max_batch_bytes as u64;
        let encoded: Vec<Vec<u8>> = user_keys.iter().map(|k| request::encode_key(t, k)).collect();
        let mut out = vec![GetResponse::default(); encoded.len()];
        let mut pending: Vec<usize> = (0..encoded.len()).collect();
        let mut total: u64 = 0;
        for _ in 0..MAX_REGROUPS {
            let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            let dir = self.gw.directory();
            for &i in &pending {
                let id = dir.lookup(&encoded[i]).and_then(|r| r.desc.as_ref()).map(|d| d.id).unwrap_or(0);
                // (Sabotaged: one read per key, as before reads were grouped by range.)
                let group = if sabotage::active(Sabotage::BatchGetPerKey) { i as u64 } else { id };
                groups.entry(group).or_default().push(i);
            }
            let encoded = &encoded;
            let calls = groups.into_values().map(|idx| async move {
                let group: Vec<Vec<u8>> = idx.iter().map(|&i| encoded[i].clone()).collect();
                let resp = self
                    .gw
                    .call(Target::Key(group[0].clone()), |rec| {
                        let d = rec.desc.clone().unwrap_or_default();
                        if !group.iter().all(|k| keys::in_range(k, &d.start, &d.end)) {
                            return Err(Status::aborted(REGROUP));
                        }
                        Ok(RangeRequest {
                            range_id: d.id,
                            epoch: epoch_of(rec),
                            req: Some(range_request::Req::Read(ReadRequest {
                                keys: group.clone(),
                                stale,
                                max_reply_bytes: limit,
                            })),
                        })
                    })
                    .await;
                (idx, resp)
            });
            // (Sabotaged: the per-key reads one after another, so that writes land between them.)
            let in_flight = if sabotage::active(Sabotage::BatchGetPerKey) { 1 } else { READ_GROUPS_IN_FLIGHT };
            let mut results = futures::stream::iter(calls).buffer_unordered(in_flight);
            let mut regroup = Vec::new();
            while let Some((idx, resp)) = results.next().await {
                let resp = match resp {
                    Ok(r) => r,
                    Err(s) if is_regroup(&s) => {
                        regroup.extend(idx);
                        continue;
                    }
                    Err(s) => return Err(s),
                };
                for (i, r) in idx.into_iter().zip(resp.reads) {
                    total = total.saturating_add(r.value.len() as u64);
                    if total > limit {
                        return Err(invalid(crate::limits::InputError::ReplyTooLarge { limit }));
                    }
                    out[i] = GetResponse { found: r.found, value: r.value, version: r.version };
                }
            }
            if regroup.is_empty() {
                return Ok(out);
            }
            pending = regroup;
            let _ = self.gw.refresh_directory().await;
        }
        Err(Status::unavailable("ranges kept changing while routing the batch; retry"))
    }
}

type ScanStream = Pin<Box<dyn Stream<Item = Result<ScanResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Cairn for KvService {
    async fn create_table(&self, req: Request<CreateTableRequest>) -> Result<Response<CreateTableResponse>, Status> {
        let r = req.into_inner();
        let p = match Partitioning::try_from(r.partitioning) {
            Ok(Partitioning::Hash) => Partitioning::Hash,
            Ok(_) => Partitioning::Range,
            Err(_) => return Err(invalid(format!("unknown partitioning {}", r.partitioning))),
        };
        let t = catalog::create(&self.gw, &r.name, p, &r.split_keys, r.hash_ranges).await?;
        Ok(Response::new(CreateTableResponse {
            table: Some(Table { name: t.name, id: t.id, partitioning: t.partitioning }),
        }))
    }

    async fn drop_table(&self, req: Request<DropTableRequest>) -> Result<Response<DropTableResponse>, Status> {
        catalog::drop(&self.gw, &req.into_inner().name).await?;
        Ok(Response::new(DropTableResponse {}))
    }

    async fn list_tables(&self, _: Request<ListTablesRequest>) -> Result<Response<ListTablesResponse>, Status> {
        let tables = catalog::list(&self.gw).await?;
        Ok(Response::new(ListTablesResponse {
            tables: tables
                .into_iter()
                .map(|t| Table { name: t.name, id: t.id, partitioning: t.partitioning })
                .collect(),
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = req.into_inner();
        let stale = r.consistency == ReadConsistency::Stale as i32;
        let keys = [r.key];
        let keys = &keys;
        let mut out = self.with_table(&r.table, |t| async move { self.read(&t, keys, stale).await }).await?;
        Ok(Response::new(out.pop().unwrap_or_default()))
    }

    async fn batch_get(&self, req: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        let r = req.into_inner();
        let stale = r.consistency == ReadConsistency::Stale as i32;
        let keys = &r.keys;
        let results = self.with_table(&r.table, |t| async move { self.read(&t, keys, stale).await }).await?;
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
        let tables = catalog::list(&self.gw).await.unwrap_or_default();
        let mut records = self.gw.load_directory().await?;
        records.sort_by(|a, b| {
            let ka = a.desc.as_ref().map(|d| d.start.clone()).unwrap_or_default();
            let kb = b.desc.as_ref().map(|d| d.start.clone()).unwrap_or_default();
            ka.cmp(&kb)
        });
        Ok(Response::new(ClusterStatusResponse {
            cluster_id: self.gw.cluster_id.clone(),
            nodes: nodes
                .into_iter()
                .map(|n| NodeStatus {
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
        if catalog::is_hashed(&t) {
            return Err(invalid(
                "HASH tables split only on slot boundaries; split their ranges by slot count at creation",
            ));
        }
        let (left, right) = admin::split_at(&self.gw, &keys::encode_range_key(t.id, &r.key)).await?;
        let tables = catalog::list(&self.gw).await.unwrap_or_default();
        Ok(Response::new(SplitRangeResponse {
            left: Some(desc_status(left, 0, &tables)),
            right: right.map(|d| desc_status(d, 0, &tables)),
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
