//! Merging a range with its right-hand neighbour, driven from any node.
//!
//! 1. Freeze the right range (a Raft command; from its apply on it takes no
//!    writes, splits or membership changes and serves no reads). Its apply is
//!    synced, so a replica that applied it holds the range's final data durably.
//! 2. Wait until every replica of the right range reports the freeze applied.
//!    Both ranges have the same voters, so every node holding a replica of the
//!    left range now holds all of the right range's data, under the same keys.
//! 3. One Raft command on the left range, valid only at the left range's epoch
//!    seen in step 1, takes over the span and retires the right range's Raft
//!    group on each node as it applies.
//! 4. Record the result in the range directory.
//!
//! Abandoning (any failure after step 1) fences the left range first: a fence
//! raises its epoch, so a merge command still in flight can no longer apply,
//! and the left range's log alone decides whether the merge happened. Only if it
//! did not is the right range thawed. `abandon` is also how the controller
//! thaws a range a crashed merge left frozen.

use super::admin;
use crate::gateway::{Gateway, Target};
use crate::keys;
use crate::meta;
use crate::raftstore::apply;
use cairn_proto::internal::{
    admin_request, mutation, raft_command, range_request, AdminRequest, AdminResponse, FenceCommand, FreezeCommand,
    MergeCommand, Mutation, RangeDescriptor, RangeRecord, RangeRequest, UnfreezeCommand,
};
use std::time::Duration;
use tonic::Status;

/// How long a merge waits for every replica of the right range to apply its freeze.
const FREEZE_WAIT: Duration = Duration::from_secs(10);

/// Runs an administrative command on range `range_id`'s leader (no epoch check:
/// the command's apply checks what it depends on).
async fn run(gw: &Gateway, range_id: u64, cmd: raft_command::Cmd) -> Result<AdminResponse, Status> {
    let cmd = apply::admin_command(cmd);
    let resp = gw
        .call(Target::Range(range_id), |_| {
            Ok(RangeRequest { range_id, epoch: None, req: Some(range_request::Req::Command(cmd.clone())) })
        })
        .await?;
    resp.admin.ok_or_else(|| Status::internal(format!("range {range_id} answered a command without a descriptor")))
}

/// Whether two adjacent ranges may merge: neither is the meta range, both hold
/// the same table, and they have the same voters and no learners.
pub fn mergeable(left: &RangeDescriptor, right: &RangeDescriptor) -> Result<(), Status> {
    if left.id == meta::META_RANGE_ID || right.id == meta::META_RANGE_ID {
        return Err(Status::invalid_argument("the meta range never merges"));
    }
    if left.end.is_empty() || left.end != right.start {
        return Err(Status::invalid_argument(format!(
            "range {} does not end where range {} starts",
            left.id, right.id
        )));
    }
    let table = |d: &RangeDescriptor| keys::decode_table(&d.start).map(|(id, _)| id);
    if table(left) != table(right) {
        return Err(Status::invalid_argument(format!(
            "ranges {} and {} hold different tables; ranges never merge across a table boundary",
            left.id, right.id
        )));
    }
    if !apply::aligned(left, right) {
        let nodes = |d: &RangeDescriptor| {
            d.replicas
                .iter()
                .map(|r| format!("{}{}", r.node_id, if r.learner { " (learner)" } else { "" }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Status::failed_precondition(format!(
            "ranges {} and {} must have voters on the same nodes and no learners to merge (range {}: {}; range {}: {}); move replicas first",
            left.id,
            right.id,
            left.id,
            nodes(left),
            right.id,
            nodes(right)
        )));
    }
    Ok(())
}

/// Merges range `left_id` with its right-hand neighbour. Returns the merged
/// range's descriptor and the id of the range it retired.
pub async fn merge(gw: &Gateway, left_id: u64) -> Result<(RangeDescriptor, u64), Status> {
    let left = admin::status(gw, left_id).await?.desc.ok_or_else(|| Status::internal("no descriptor"))?;
    if left.end.is_empty() {
        return Err(Status::invalid_argument(format!(
            "range {left_id} is the last range; it has no right-hand neighbour"
        )));
    }
    let right_rec = gw.locate(&Target::Key(left.end.clone())).await?;
    let right_id = right_rec.desc.as_ref().map(|d| d.id).unwrap_or(0);
    let right = admin::status(gw, right_id).await?.desc.ok_or_else(|| Status::internal("no descriptor"))?;
    mergeable(&left, &right)?;
    let frozen = run(gw, right.id, raft_command::Cmd::Freeze(FreezeCommand { left_range_id: left_id })).await?;
    match finish(gw, &left, frozen).await {
        Ok(merged) => Ok((merged, right.id)),
        Err(e) => {
            tracing::warn!(left = left_id, right = right.id, "merge abandoned: {}", e.message());
            match abandon(gw, left_id, &right).await {
                Ok(Some(merged)) => Ok((merged, right.id)),
                Ok(None) => Err(e),
                Err(a) => Err(Status::unavailable(format!(
                    "{}; and range {} could not be thawed yet ({}): the controller thaws it",
                    e.message(),
                    right.id,
                    a.message()
                ))),
            }
        }
    }
}

async fn finish(gw: &Gateway, left: &RangeDescriptor, frozen: AdminResponse) -> Result<RangeDescriptor, Status> {
    let right = frozen.desc.clone().ok_or_else(|| Status::internal("freeze returned no descriptor"))?;
    mergeable(left, &right)?;
    wait_until_frozen_everywhere(gw, &right, frozen.applied_index).await?;
    let cmd = MergeCommand {
        right: Some(right.clone()),
        right_frozen_index: frozen.applied_index,
        right_last_version: frozen.last_version,
        left_epoch: left.epoch,
    };
    let merged = run(gw, left.id, raft_command::Cmd::Merge(Box::new(cmd))).await?;
    let desc = merged.desc.ok_or_else(|| Status::internal("merge returned no descriptor"))?;
    record(gw, &desc, right.id).await;
    tracing::info!(left = left.id, right = right.id, "ranges merged");
    Ok(desc)
}

/// Asks each node holding the right range for its own replica's state until every
/// one has applied the freeze.
async fn wait_until_frozen_everywhere(gw: &Gateway, right: &RangeDescriptor, index: u64) -> Result<(), Status> {
    if crate::sabotage::active(crate::sabotage::Sabotage::MergeWithoutFreezeWait) {
        return Ok(());
    }
    let started = crate::clock::now();
    let mut waiting: Vec<u64> = right.replicas.iter().map(|r| r.node_id).collect();
    let req = RangeRequest {
        range_id: right.id,
        epoch: None,
        req: Some(range_request::Req::Admin(AdminRequest { op: Some(admin_request::Op::LocalState(true)) })),
    };
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for node in waiting {
            let ok = match gw.send(node, req.clone(), Duration::from_secs(2)).await {
                Ok(resp) => {
                    resp.admin.is_some_and(|a| a.applied_index >= index && a.desc.is_some_and(|d| d.frozen_for_merge))
                }
                Err(_) => false,
            };
            if !ok {
                still.push(node);
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if crate::clock::elapsed(started) > FREEZE_WAIT {
            return Err(Status::unavailable(format!(
                "the replicas of range {} on nodes {waiting:?} did not apply its freeze within {} s",
                right.id,
                FREEZE_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Writes the merged range's record and deletes the retired one's, in one write.
async fn record(gw: &Gateway, merged: &RangeDescriptor, right_id: u64) {
    let rec = RangeRecord { desc: Some(merged.clone()), leader_node_id: 0, ..Default::default() };
    gw.learn_route(rec.clone());
    let muts = vec![
        Mutation {
            expiry: None,
            key: meta::dir_key(merged.id),
            condition: None,
            op: Some(mutation::Op::RangeRecord(rec)),
            value_kind: 0,
        },
        Mutation {
            expiry: None,
            key: meta::dir_key(right_id),
            condition: None,
            op: Some(mutation::Op::Delete(true)),
            value_kind: 0,
        },
    ];
    if let Err(e) = meta::write(gw, muts).await {
        tracing::warn!(range_id = merged.id, "could not record a merge in the directory: {}", e.message());
    }
}

/// Ends a merge of `right` into `left_id` that may or may not have happened:
/// fences the left range, then thaws the right one unless the fence shows the
/// merge applied (then returns the merged descriptor, recorded).
pub async fn abandon(gw: &Gateway, left_id: u64, right: &RangeDescriptor) -> Result<Option<RangeDescriptor>, Status> {
    let fenced = run(gw, left_id, raft_command::Cmd::Fence(FenceCommand {})).await?;
    let left = fenced.desc.unwrap_or_default();
    if keys::in_range(&right.start, &left.start, &left.end) {
        record(gw, &left, right.id).await;
        return Ok(Some(left));
    }
    run(gw, right.id, raft_command::Cmd::Unfreeze(UnfreezeCommand {})).await?;
    tracing::info!(left = left_id, right = right.id, "merge abandoned; range thawed");
    Ok(None)
}
