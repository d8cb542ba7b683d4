//! The node registry: node ids, addresses, zones, liveness heartbeats and
//! capacity, and operators' intents for nodes (drain, decommission). A node is
//! live while its last heartbeat is recent.

use super::{node_key, node_state_key, scan_prefix, write, CTR_NODE, NODE_PREFIX, NODE_STATE_PREFIX};
use crate::gateway::Gateway;
use cairn_proto::internal::{mutation, JoinRequest, JoinResponse, Mutation, NodeInfo};
use cairn_proto::kv::NodeState;
use prost::Message as _;
use std::collections::HashMap;
use tonic::Status;

/// How often nodes heartbeat, and after how long without one a node counts as dead.
pub const HEARTBEAT_INTERVAL_MS: u64 = 2_000;
pub const LIVENESS_TIMEOUT_MS: u64 = 10_000;

pub fn is_live(n: &NodeInfo, now_ms: u64) -> bool {
    now_ms.saturating_sub(n.heartbeat_ms) < LIVENESS_TIMEOUT_MS
}

/// Whether a node was heard from within about two heartbeats. Only such a node
/// is given new replicas or leaderships: one that died a moment ago stays "live"
/// for `LIVENESS_TIMEOUT_MS`, and a leadership handed to it stalls its range.
pub fn is_fresh(n: &NodeInfo, now_ms: u64) -> bool {
    now_ms.saturating_sub(n.heartbeat_ms) < FRESH_MS
}

/// See `is_fresh`: two heartbeat intervals and one second of slack for a slow meta write.
pub const FRESH_MS: u64 = 2 * HEARTBEAT_INTERVAL_MS + 1_000;

/// Whether a node has been silent for `dead_after_ms`: its replicas are to be replaced.
/// Between live and dead a node is suspect: not given new replicas, its own kept.
pub fn is_dead(n: &NodeInfo, now_ms: u64, dead_after_ms: u64) -> bool {
    now_ms.saturating_sub(n.heartbeat_ms) >= dead_after_ms.max(LIVENESS_TIMEOUT_MS)
}

pub async fn list(gw: &Gateway) -> Result<Vec<NodeInfo>, Status> {
    let pairs = scan_prefix(gw, NODE_PREFIX).await?;
    Ok(pairs.into_iter().filter_map(|p| NodeInfo::decode(p.value.as_slice()).ok()).collect())
}

pub async fn put(gw: &Gateway, info: NodeInfo) -> Result<(), Status> {
    let m = Mutation {
        expiry: None,
        key: node_key(info.id),
        condition: None,
        op: Some(mutation::Op::Put(info.encode_to_vec())),
        value_kind: 0,
    };
    write(gw, vec![m]).await.map(|_| ())
}

/// Every node's operator state (nodes not listed are active).
pub async fn states(gw: &Gateway) -> Result<HashMap<u64, NodeState>, Status> {
    let pairs = scan_prefix(gw, NODE_STATE_PREFIX).await?;
    Ok(pairs
        .into_iter()
        .filter_map(|p| {
            let id = u64::from_be_bytes(p.key.get(p.key.len().checked_sub(8)?..)?.try_into().ok()?);
            let state = std::str::from_utf8(&p.value).ok()?.parse::<i32>().ok()?;
            Some((id, NodeState::try_from(state).ok()?))
        })
        .collect())
}

/// Records an operator's intent for a registered node (active clears it).
pub async fn set_state(gw: &Gateway, node_id: u64, state: NodeState) -> Result<(), Status> {
    if !list(gw).await?.iter().any(|n| n.id == node_id) {
        return Err(Status::not_found(format!("node {node_id} is not registered")));
    }
    let op = match state {
        NodeState::Active => mutation::Op::Delete(true),
        s => mutation::Op::Put((s as i32).to_string().into_bytes()),
    };
    let m = Mutation { expiry: None, key: node_state_key(node_id), condition: None, op: Some(op), value_kind: 0 };
    write(gw, vec![m]).await.map(|_| ())
}

/// Admits a new node: allocates its id and records it.
pub async fn join(gw: &Gateway, req: JoinRequest) -> Result<JoinResponse, Status> {
    if req.addr.is_empty() || req.addr.len() > 256 {
        return Err(Status::invalid_argument("join needs the node's gRPC address (at most 256 bytes)"));
    }
    if req.zone.len() > 64 {
        return Err(Status::invalid_argument("zone label longer than 64 bytes"));
    }
    let id = super::next_id(gw, CTR_NODE).await?;
    let info = NodeInfo {
        id,
        addr: req.addr.clone(),
        http_addr: req.http_addr,
        zone: req.zone,
        heartbeat_ms: crate::hlc::wall_now_ms(),
        capacity_bytes: req.capacity_bytes,
        ..Default::default()
    };
    put(gw, info).await?;
    gw.book.learn(id, &req.addr);
    tracing::info!(node_id = id, addr = %req.addr, "node joined");
    let nodes = list(gw).await?;
    Ok(JoinResponse { node_id: id, cluster_id: gw.cluster_id.clone(), nodes })
}
