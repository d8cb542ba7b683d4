//! `cairn.internal.v1.Internal`: the node-to-node service (Raft transport,
//! snapshots, forwarded range requests, joins, meta location).

use crate::gateway::Gateway;
use crate::meta::{self, registry};
use crate::peer;
use crate::raftstore::snapshot_receive::{FileReceiver, ReceiveError};
use crate::raftstore::transport::Transport;
use crate::raftstore::{executor, range_feed, StoreMsg};
use cairn_proto::internal::internal_server::Internal;
use cairn_proto::internal::*;
use prost::Message as _;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub struct InternalService {
    pub gw: Arc<Gateway>,
    pub transport: Arc<Transport>,
    /// Turns true when the node stops: peers' Raft streams end then, so the server's
    /// graceful shutdown need not wait out its timeout for streams that never end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// A snapshot stream that cannot be accepted: damaged data is DATA_LOSS (and
/// counted), an oversized one RESOURCE_EXHAUSTED, a wrong length the sender's mistake.
fn refused_snapshot(e: peer::SnapshotError) -> Status {
    match e {
        peer::SnapshotError::Damaged { .. } => {
            tracing::warn!("refusing snapshot: {e}");
            metrics::counter!("cairn_snapshot_chunks_corrupt_total").increment(1);
            Status::data_loss(e.to_string())
        }
        peer::SnapshotError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        peer::SnapshotError::TooLong | peer::SnapshotError::TooShort { .. } => Status::invalid_argument(e.to_string()),
    }
}

/// Snapshot files that cannot be accepted: damage is DATA_LOSS (and counted),
/// a full or failing disk here UNAVAILABLE, the rest the sender's mistake.
fn refused_files(e: ReceiveError) -> Status {
    tracing::warn!("refusing snapshot files: {e}");
    match e {
        ReceiveError::Damaged { .. } | ReceiveError::FileDamaged { .. } => {
            metrics::counter!("cairn_snapshot_chunks_corrupt_total").increment(1);
            Status::data_loss(e.to_string())
        }
        ReceiveError::Disk(_) => Status::unavailable(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn overloaded(e: RangeError) -> Status {
    Status::resource_exhausted(e.message)
}

impl InternalService {
    /// Hands a Raft batch to the store. The outer error rejects the sender (wrong
    /// cluster); the inner one says the store's queue was full.
    fn accept_batch(&self, b: RaftBatch) -> Result<Result<(), RangeError>, Status> {
        peer::check_batch(self.transport.cluster_id(), &b).map_err(Status::permission_denied)?;
        self.transport.mark_seen(b.from_node);
        self.gw.book.learn(b.from_node, &b.from_addr);
        if b.envelopes.is_empty() {
            return Ok(Ok(()));
        }
        Ok(self.gw.store.send(StoreMsg::Raft { from_node: b.from_node, envelopes: b.envelopes }))
    }
}

type PageStream = Pin<Box<dyn Stream<Item = Result<RangeScanPage, Status>> + Send>>;
type FeedStream = Pin<Box<dyn Stream<Item = Result<RangeFeedMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Internal for InternalService {
    async fn raft(&self, req: Request<RaftBatch>) -> Result<Response<RaftBatchResponse>, Status> {
        self.accept_batch(req.into_inner())?.map_err(overloaded)?;
        Ok(Response::new(RaftBatchResponse {}))
    }

    async fn raft_stream(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftBatchResponse>, Status> {
        let mut stream = req.into_inner();
        let mut stopping = self.stopping.clone();
        loop {
            let next = tokio::select! {
                m = stream.message() => m?,
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let Some(b) = next else { break };
            // An overloaded store drops the batch: Raft retransmits, and the stream stays up.
            if self.accept_batch(b)?.is_err() {
                metrics::counter!("cairn_transport_dropped_total").increment(1);
            }
        }
        Ok(Response::new(RaftBatchResponse {}))
    }

    /// Receives a snapshot: its Raft message (part 0), then its files, written to
    /// disk as they come. The store gets the message once every file is in place.
    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<SnapshotResponse>, Status> {
        let Some(_permit) = self.transport.snapshot_receive_permit() else {
            metrics::counter!("cairn_snapshots_deferred_total").increment(1);
            return Err(Status::resource_exhausted("this node is receiving as many snapshots as it allows at once"));
        };
        let mut stream = req.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        peer::check_cluster(self.transport.cluster_id(), &first.cluster_id).map_err(Status::permission_denied)?;
        if first.part != 0 {
            return Err(Status::invalid_argument("a snapshot stream must start with its raft message"));
        }
        let max = self.transport.snapshot_limits().buffer_bytes;
        let mut message = peer::SnapshotReassembly::start(first, max).map_err(refused_snapshot)?;
        let mut next = stream.message().await?;
        while let Some(c) = next.as_ref().filter(|c| c.part == 0) {
            message.push(c).map_err(refused_snapshot)?;
            next = stream.message().await?;
        }
        let (first, data) = message.finish().map_err(refused_snapshot)?;
        let envelope = RaftEnvelope {
            range_id: first.range_id,
            start: first.start,
            end: first.end,
            conf_ver: first.conf_ver,
            message: data,
            control: 0,
        };
        let data_len = envelope.message.len() as u64;
        let msg = peer::decode_raft_message(&envelope).map_err(Status::invalid_argument)?;
        let snap = msg.snapshot.unwrap_or_default();
        let files = SnapshotData::decode(snap.data.as_slice())
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot data: {e}")))?
            .files;
        // What replica moves and repairs cost in transfer: the benchmark of a node
        // joining compares it with the ideal share.
        let file_bytes: u64 = files.iter().map(|f| f.size).sum();
        if !files.is_empty() || next.is_some() {
            let Some(root) = self.gw.store.engine.snapshot_dir() else {
                return Err(Status::failed_precondition("this node's disk does not take snapshot files"));
            };
            let meta = snap.metadata.unwrap_or_default();
            let mut receiver =
                FileReceiver::start(root, first.range_id, first.from_node, files).await.map_err(refused_files)?;
            while let Some(c) = next {
                receiver.push(&c).await.map_err(refused_files)?;
                next = stream.message().await?;
            }
            receiver.finish(root, first.range_id, meta.term, meta.index).await.map_err(refused_files)?;
        }
        self.transport.mark_seen(first.from_node);
        self.gw.store.send(StoreMsg::Snapshot { from_node: first.from_node, envelope }).map_err(overloaded)?;
        metrics::counter!("cairn_snapshots_received_total").increment(1);
        metrics::counter!("cairn_snapshot_bytes_received_total").increment(file_bytes + data_len);
        Ok(Response::new(SnapshotResponse {}))
    }

    async fn execute(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(executor::execute(&self.gw.store, req.into_inner()).await))
    }

    type ScanRangeStream = PageStream;

    async fn scan_range(&self, req: Request<RangeScanRequest>) -> Result<Response<PageStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(executor::scan_range(self.gw.store.clone(), req.into_inner(), tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type RangeFeedStream = FeedStream;

    async fn range_feed(&self, req: Request<RangeFeedRequest>) -> Result<Response<FeedStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(range_feed::serve(self.gw.store.clone(), req.into_inner(), tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Ok(Response::new(registry::join(&self.gw, req.into_inner()).await?))
    }

    async fn locate_meta(&self, _: Request<LocateMetaRequest>) -> Result<Response<LocateMetaResponse>, Status> {
        let nodes =
            self.gw.book.all().into_iter().map(|(id, addr)| NodeInfo { id, addr, ..Default::default() }).collect();
        let local = self.gw.store.registry.read().get(&meta::META_RANGE_ID).cloned();
        let (desc, leader) = match local {
            Some(s) if s.initialized() => (Some(s.desc()), s.leader_id()),
            _ => (None, 0),
        };
        Ok(Response::new(LocateMetaResponse { desc, leader_node_id: leader, nodes }))
    }

    async fn clock_probe(&self, req: Request<ClockProbeRequest>) -> Result<Response<ClockProbeResponse>, Status> {
        peer::check_cluster(&self.gw.cluster_id, &req.get_ref().cluster_id).map_err(Status::permission_denied)?;
        Ok(Response::new(ClockProbeResponse { wall_ns: self.gw.hlc.physical_now() }))
    }
}
