//! The decision log: every replica add, move and removal, leader transfer and
//! split the controller (or a range's leader) makes, with its reason and
//! outcome, kept in the meta range as `event/<seq>` records. Bounded: recording
//! event `seq` deletes event `seq - EVENTS_KEPT` in the same atomic batch, so
//! the log never holds more than `EVENTS_KEPT` and keeps the newest.

use super::{event_key, next_id, scan_prefix, write, CTR_EVENT, EVENTS_KEPT, EVENT_PREFIX};
use crate::gateway::Gateway;
use cairn_proto::internal::{mutation, Mutation};
use cairn_proto::kv::ClusterEvent;
use prost::Message as _;
use tonic::Status;

/// Records `event` (its `seq`, time and recorder are filled in here).
pub async fn record(gw: &Gateway, mut event: ClusterEvent) -> Result<(), Status> {
    let seq = next_id(gw, CTR_EVENT).await?;
    event.seq = seq;
    event.at_ms = crate::hlc::wall_now_ms();
    event.recorded_by = gw.node_id;
    let mut muts = vec![Mutation {
        expiry: None,
        key: event_key(seq),
        condition: None,
        op: Some(mutation::Op::Put(event.encode_to_vec())),
        value_kind: 0,
    }];
    if let Some(old) = seq.checked_sub(EVENTS_KEPT).filter(|s| *s > 0) {
        muts.push(Mutation {
            expiry: None,
            key: event_key(old),
            condition: None,
            op: Some(mutation::Op::Delete(true)),
            value_kind: 0,
        });
    }
    write(gw, muts).await.map(|_| ())
}

/// Records `event`, logging (not failing) when the meta range cannot take it:
/// a decision is not undone because its log entry was lost.
pub async fn record_or_log(gw: &Gateway, event: ClusterEvent) {
    let kind = event.kind.clone();
    if let Err(e) = record(gw, event).await {
        tracing::warn!(kind, "decision not recorded in the cluster event log: {}", e.message());
    }
}

/// The newest `limit` events (all kept with 0), newest first.
pub async fn list(gw: &Gateway, limit: usize) -> Result<Vec<ClusterEvent>, Status> {
    let pairs = scan_prefix(gw, EVENT_PREFIX).await?;
    let mut events: Vec<ClusterEvent> =
        pairs.iter().rev().filter_map(|p| ClusterEvent::decode(p.value.as_slice()).ok()).collect();
    if limit > 0 {
        events.truncate(limit);
    }
    Ok(events)
}
