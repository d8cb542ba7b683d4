//! Messages into the store loop, and the handle other threads use to send them.
//!
//! The queue is bounded: when it is full, requests fail fast with a retryable
//! "overloaded" error instead of piling up.

use super::apply::Applied;
use super::errors;
use super::shared::ReplicaRegistry;
use crate::storage::Engine;
use cairn_proto::internal::{AdminRequest, AdminResponse, RaftCommand, RaftEnvelope, RangeEpoch, RangeError};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use tokio::sync::oneshot;

pub type Reply<T> = oneshot::Sender<Result<T, RangeError>>;

pub enum StoreMsg {
    Raft {
        from_node: u64,
        envelopes: Vec<RaftEnvelope>,
    },
    Snapshot {
        from_node: u64,
        envelope: RaftEnvelope,
    },
    Command {
        range_id: u64,
        epoch: Option<RangeEpoch>,
        cmd: RaftCommand,
        reply: Reply<Applied>,
    },
    ReadIndex {
        range_id: u64,
        reply: Reply<()>,
    },
    Admin {
        range_id: u64,
        req: AdminRequest,
        reply: Reply<AdminResponse>,
    },
    SnapshotStatus {
        range_id: u64,
        to: u64,
        ok: bool,
    },
    Unreachable {
        range_id: u64,
        to: u64,
    },
    /// Wake a hibernating range (e.g. its leader's node went silent).
    Wake {
        range_id: u64,
    },
    /// Starts a change-feed tap on a replica, between two applies.
    RegisterFeed {
        range_id: u64,
        tap: Arc<super::feed::Tap>,
        /// Pin this span of the data column family as of the registration (for a catch-up scan).
        pin: Option<(Vec<u8>, Vec<u8>)>,
        reply: Reply<FeedStart>,
    },
}

/// The replica's state when a tap was registered: the tap's first item follows it.
pub struct FeedStart {
    pub applied_index: u64,
    pub last_version: crate::hlc::Version,
    pub desc: cairn_proto::internal::RangeDescriptor,
    pub view: Option<crate::storage::PinnedView>,
}

/// Bound on queued messages into the loop.
pub const STORE_QUEUE_CAPACITY: usize = 65_536;

#[derive(Clone)]
pub struct StoreHandle {
    pub node_id: u64,
    pub tx: SyncSender<StoreMsg>,
    pub registry: ReplicaRegistry,
    pub engine: Arc<Engine>,
    /// The node's clock: reads judge expiring values at its time.
    pub hlc: Arc<crate::hlc::Hlc>,
    /// The hottest keys of the requests this node served.
    pub hot_keys: Arc<super::load::NodeHotKeys>,
}

impl StoreHandle {
    pub fn send(&self, msg: StoreMsg) -> Result<(), RangeError> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(errors::unavailable("node overloaded: raft queue is full, retry later")),
            Err(TrySendError::Disconnected(_)) => Err(errors::unavailable("node is stopping")),
        }
    }

    /// Sends a request carrying a reply channel and waits for the answer.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> StoreMsg) -> Result<T, RangeError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        match rx.await {
            Ok(r) => r,
            // The request was handed over, so a command in it may have been proposed.
            Err(_) => Err(errors::err(
                cairn_proto::internal::range_error::Kind::Ambiguous,
                "the replica dropped the request (stopping or removed) after taking it; its outcome is unknown",
            )),
        }
    }
}
