//! The meta range: a Raft-replicated system range (range 1, table 0) holding
//! the catalog, the range directory, the node registry and id counters; its key
//! layout is `keys::meta`. This layer reads and writes it through the gateway,
//! and administers ranges (`admin`), recording the results in the directory.

pub mod admin;
pub mod catalog;
pub mod events;
pub mod merge;
pub mod registry;

use crate::gateway::{scan, Gateway, Target};
pub use crate::keys::meta::*;
use cairn_proto::internal::{
    mutation, raft_command, range_request, Increment, Mutation, MutationResult, RaftCommand, RangeRecord, RangeRequest,
    ScannedPair, WriteBatch,
};
use tonic::Status;

/// Scans one meta key prefix.
pub async fn scan_prefix(gw: &Gateway, prefix: &[u8]) -> Result<Vec<ScannedPair>, Status> {
    let (start, end) = prefix_bounds(prefix);
    scan::collect(gw, start, end).await
}

/// Runs a write batch on the meta range.
pub async fn write(gw: &Gateway, mutations: Vec<Mutation>) -> Result<Vec<MutationResult>, Status> {
    let request_id = crate::gateway::new_request_id();
    let cmd = RaftCommand {
        judge_expiry_at_leader: false,
        expiry_judged_at_ms: 0,
        request_id,
        proposed_version: None,
        cmd: Some(raft_command::Cmd::Write(WriteBatch { mutations })),
    };
    let resp = gw
        .call(Target::Range(META_RANGE_ID), |rec| {
            Ok(RangeRequest {
                range_id: META_RANGE_ID,
                epoch: rec.desc.as_ref().and_then(|d| d.epoch),
                req: Some(range_request::Req::Command(cmd.clone())),
            })
        })
        .await?;
    Ok(resp.write.map(|w| w.results).unwrap_or_default())
}

/// Atomically increments a meta counter and returns the new value.
pub async fn next_id(gw: &Gateway, counter: &[u8]) -> Result<u64, Status> {
    let m = Mutation {
        expiry: None,
        key: key(counter),
        condition: None,
        op: Some(mutation::Op::Increment(Increment { delta: 1, min: None, max: None })),
        value_kind: 0,
    };
    let r = write(gw, vec![m]).await?;
    match r.first() {
        Some(r) if r.succeeded && r.counter > 0 => Ok(r.counter as u64),
        _ => Err(Status::internal("id counter increment failed")),
    }
}

/// Records range descriptors (a stale epoch never overwrites a newer one).
pub async fn report_ranges(gw: &Gateway, records: Vec<RangeRecord>) -> Result<(), Status> {
    if records.is_empty() {
        return Ok(());
    }
    let muts = records
        .into_iter()
        .filter_map(|r| {
            let id = r.desc.as_ref()?.id;
            Some(Mutation {
                expiry: None,
                key: dir_key(id),
                condition: None,
                op: Some(mutation::Op::RangeRecord(r)),
                value_kind: 0,
            })
        })
        .collect();
    write(gw, muts).await.map(|_| ())
}
