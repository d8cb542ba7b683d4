//! Range administration driven from any node: split at a key, clear a key
//! span, and membership changes (add a replica as a learner, wait for it to
//! catch up, promote it; remove; transfer leadership). These are the
//! primitives the controller and the CLI use.

use crate::gateway::{self, Gateway, Target};
use crate::meta;
use crate::raftstore::apply;
use cairn_proto::internal::{
    admin_request, raft_command, range_request, AdminRequest, AdminResponse, ClearRangeCommand, RaftCommand,
    RangeDescriptor, RangeRecord, RangeRequest, RangeResponse, SplitCommand,
};
use std::time::Duration;
use tonic::Status;

/// How long a new learner may take to catch up before promotion is abandoned.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

fn epoch_of(rec: &RangeRecord) -> Option<cairn_proto::internal::RangeEpoch> {
    rec.desc.as_ref().and_then(|d| d.epoch)
}

/// Runs `cmd` on the range that holds `key`, routed (and re-routed) by the gateway.
async fn command_at(gw: &Gateway, key: &[u8], cmd: &RaftCommand) -> Result<RangeResponse, Status> {
    gw.call(Target::Key(key.to_vec()), |rec| {
        Ok(RangeRequest {
            range_id: rec.desc.as_ref().map(|d| d.id).unwrap_or(0),
            epoch: epoch_of(rec),
            req: Some(range_request::Req::Command(cmd.clone())),
        })
    })
    .await
}

/// Splits the range containing `key` so that a range starts at `key`.
/// Returns (left, right); `right` is `None` when `key` already was a boundary.
/// `sticky`: an operator's or a table's split point, never merged away by the controller.
pub async fn split_at(
    gw: &Gateway,
    key: &[u8],
    sticky: bool,
) -> Result<(RangeDescriptor, Option<RangeDescriptor>), Status> {
    if meta::is_meta_key(key) {
        return Err(Status::invalid_argument("the meta range is never split"));
    }
    let rec = gw.locate(&Target::Key(key.to_vec())).await?;
    if let Some(d) = rec.desc.as_ref().filter(|d| d.start == key) {
        return Ok((d.clone(), None));
    }
    let new_range_id = meta::next_id(gw, meta::CTR_RANGE).await?;
    let cmd =
        apply::admin_command(raft_command::Cmd::Split(SplitCommand { split_key: key.to_vec(), new_range_id, sticky }));
    let resp = command_at(gw, key, &cmd).await?;
    let admin = resp.admin.unwrap_or_default();
    let left = admin.desc.ok_or_else(|| Status::internal("split returned no descriptor"))?;
    let right = admin.right;
    let mut records = vec![RangeRecord { desc: Some(left.clone()), leader_node_id: 0, ..Default::default() }];
    if let Some(r) = &right {
        records.push(RangeRecord { desc: Some(r.clone()), leader_node_id: 0, ..Default::default() });
        tracing::info!(left = left.id, right = r.id, key = %crate::keys::display_key(key), "range split");
    }
    for r in &records {
        gw.learn_route(r.clone());
    }
    meta::report_ranges(gw, records).await?;
    Ok((left, right))
}

/// Deletes all data in `[start, end)`, range by range. With `retire_table`, each
/// range also retires that table id for good (its keys are refused from then on).
/// Each step continues past the bounds of the range that applied it, so a split
/// racing with the clear cannot make it skip a part.
pub async fn clear_span(gw: &Gateway, start: &[u8], end: &[u8], retire_table: Option<u32>) -> Result<(), Status> {
    let mut cursor = start.to_vec();
    loop {
        let cmd = RaftCommand {
            judge_expiry_at_leader: false,
            expiry_judged_at_ms: 0,
            request_id: gateway::new_request_id(),
            proposed_version: None,
            cmd: Some(raft_command::Cmd::Clear(ClearRangeCommand {
                start: cursor.clone(),
                end: end.to_vec(),
                retire_table: retire_table.unwrap_or(0),
            })),
        };
        let resp = command_at(gw, &cursor, &cmd).await?;
        let applied_by =
            resp.admin.and_then(|a| a.desc).ok_or_else(|| Status::internal("a clear returned no descriptor"))?;
        let range_end = applied_by.end;
        if range_end.is_empty() || (!end.is_empty() && range_end.as_slice() >= end) {
            return Ok(());
        }
        if range_end <= cursor {
            return Err(Status::internal("a clear made no progress"));
        }
        cursor = range_end;
    }
}

async fn admin(gw: &Gateway, range_id: u64, op: admin_request::Op) -> Result<AdminResponse, Status> {
    let req = AdminRequest { op: Some(op) };
    let resp = gw
        .call(Target::Range(range_id), |rec| {
            Ok(RangeRequest { range_id, epoch: epoch_of(rec), req: Some(range_request::Req::Admin(req.clone())) })
        })
        .await?;
    resp.admin.ok_or_else(|| Status::internal("admin request returned no answer"))
}

pub async fn status(gw: &Gateway, range_id: u64) -> Result<AdminResponse, Status> {
    admin(gw, range_id, admin_request::Op::Status(true)).await
}

async fn report(gw: &Gateway, a: &AdminResponse) {
    if let Some(d) = &a.desc {
        let rec = RangeRecord { desc: Some(d.clone()), leader_node_id: a.leader_node_id, ..Default::default() };
        gw.learn_route(rec.clone());
        if let Err(e) = meta::report_ranges(gw, vec![rec]).await {
            tracing::warn!(range_id = d.id, "could not record range change in meta: {e}");
        }
    }
}

/// Adds a replica on `node`: as a learner first, promoted to voter once it has caught up.
pub async fn add_replica(gw: &Gateway, range_id: u64, node: u64) -> Result<AdminResponse, Status> {
    if gw.book.get(node).is_none() {
        // This node's address book refreshes every few seconds; a node that joined
        // since is in the registry already.
        if let Some(n) = meta::registry::list(gw).await?.into_iter().find(|n| n.id == node) {
            gw.book.learn(n.id, &n.addr);
        } else {
            return Err(Status::not_found(format!("node {node} is not a known member")));
        }
    }
    let current = status(gw, range_id).await?;
    match role_of(&current, node) {
        Some(false) => {
            return Err(Status::already_exists(format!("node {node} already is a voter of range {range_id}")))
        }
        Some(true) => {}
        None => match admin(gw, range_id, admin_request::Op::AddLearner(node)).await {
            Ok(a) => report(gw, &a).await,
            // Another adder (the controller, or a second operator call) got there first:
            // wait for its learner as for our own.
            Err(e) => match status(gw, range_id).await {
                Ok(s) if role_of(&s, node).is_some() => {}
                _ => return Err(e),
            },
        },
    }
    let started = crate::clock::now();
    loop {
        let s = status(gw, range_id).await?;
        match role_of(&s, node) {
            // Removed meanwhile (by an operator, say): waiting would only hold the range's
            // slot in the controller until the timeout, leaving it under-replicated.
            None => {
                return Err(Status::aborted(format!(
                    "the learner on node {node} was removed from range {range_id} while catching up"
                )))
            }
            // Promoted meanwhile: the controller finishes learners it finds, and it may find
            // this one while we wait. The replica is added; that is all the caller asked.
            Some(false) => return Ok(s),
            Some(true) => {}
        }
        let matched = s.progress.iter().find(|p| p.node_id == node).map(|p| p.matched).unwrap_or(0);
        if matched >= s.commit_index.saturating_sub(1) && matched > 0 {
            break;
        }
        if crate::clock::elapsed(started) > CATCH_UP_TIMEOUT {
            return Err(Status::deadline_exceeded(format!(
                "learner on node {node} did not catch up on range {range_id} (matched {matched} of {})",
                s.commit_index
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = match admin(gw, range_id, admin_request::Op::PromoteLearner(node)).await {
        Ok(a) => a,
        // Lost the race to promote it to another adder: the replica is a voter all the same.
        Err(e) => match status(gw, range_id).await {
            Ok(s) if role_of(&s, node) == Some(false) => s,
            _ => return Err(e),
        },
    };
    report(gw, &a).await;
    tracing::info!(range_id, node, "replica added");
    Ok(a)
}

/// Whether `node` holds a learner (`Some(true)`), a voter (`Some(false)`) or no
/// replica of the range `s` describes.
fn role_of(s: &AdminResponse, node: u64) -> Option<bool> {
    s.desc.as_ref().and_then(|d| d.replicas.iter().find(|r| r.node_id == node)).map(|r| r.learner)
}

/// Removes the replica on `node`, moving leadership away from it first.
pub async fn remove_replica(gw: &Gateway, range_id: u64, node: u64) -> Result<AdminResponse, Status> {
    let s = status(gw, range_id).await?;
    let desc = s.desc.clone().unwrap_or_default();
    if !desc.replicas.iter().any(|r| r.node_id == node) {
        return Err(Status::not_found(format!("node {node} has no replica of range {range_id}")));
    }
    if s.leader_node_id == node {
        hand_off(gw, range_id, node, &s).await?;
    }
    let a = admin(gw, range_id, admin_request::Op::RemoveReplica(node)).await?;
    report(gw, &a).await;
    tracing::info!(range_id, node, "replica removed");
    Ok(a)
}

/// Moves the leadership of a range led from `node` to another voter: the most
/// caught-up first, and the next if the range's leader refuses one (it has not
/// heard from it lately), retrying for a while (a voter may be restarting).
async fn hand_off(gw: &Gateway, range_id: u64, node: u64, s: &AdminResponse) -> Result<(), Status> {
    let matched = |n: u64| s.progress.iter().find(|p| p.node_id == n).map_or(0, |p| p.matched);
    let mut others: Vec<u64> = s
        .desc
        .iter()
        .flat_map(|d| d.replicas.iter())
        .filter(|r| !r.learner && r.node_id != node)
        .map(|r| r.node_id)
        .collect();
    if others.is_empty() {
        return Err(Status::failed_precondition("cannot remove the only voter"));
    }
    others.sort_by_key(|n| (std::cmp::Reverse(matched(*n)), *n));
    let started = crate::clock::now();
    loop {
        let mut last = None;
        for other in &others {
            match transfer_leader(gw, range_id, *other).await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        if crate::clock::elapsed(started) > Duration::from_secs(10) {
            return Err(last.unwrap_or_else(|| Status::unavailable("no voter took the leadership")));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Moves leadership to `node` and waits until it has it.
pub async fn transfer_leader(gw: &Gateway, range_id: u64, node: u64) -> Result<AdminResponse, Status> {
    let started = crate::clock::now();
    loop {
        let a = admin(gw, range_id, admin_request::Op::TransferLeader(node)).await?;
        if a.leader_node_id == node {
            report(gw, &a).await;
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.dir_set_leader(range_id, 0);
        if let Ok(s) = status(gw, range_id).await {
            if s.leader_node_id == node {
                report(gw, &s).await;
                return Ok(s);
            }
        }
        if crate::clock::elapsed(started) > Duration::from_secs(10) {
            return Err(Status::unavailable(format!("leadership of range {range_id} did not move to node {node}")));
        }
    }
}
