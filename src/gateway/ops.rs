//! Reads and writes of many keys at once, grouped by the range each key is
//! routed to: the one path every front end (gRPC, RESP) takes to the ranges.
//! Writes are atomic per range and deduplicated by request id; reads of one
//! range are read at one version; both regroup and retry when a split or merge
//! changes which range holds a key.

use super::{Gateway, Target};
use crate::keys;
use crate::meta::catalog;
use crate::outcome;
use crate::request;
use crate::sabotage::{self, Sabotage};
use cairn_proto::internal::{
    raft_command, range_request, Mutation, MutationResult, RaftCommand, RangeDescriptor, RangeRecord, RangeRequest,
    ReadRequest, TableInfo, WriteBatch,
};
use cairn_proto::kv::GetResponse;
use std::collections::BTreeMap;
use tonic::Status;

/// The status a write group returns when the keys it was built for no longer share a range.
const REGROUP: &str = "regroup";

fn is_regroup(s: &Status) -> bool {
    s.code() == tonic::Code::Aborted && s.message() == REGROUP
}

fn epoch_of(rec: &RangeRecord) -> Option<cairn_proto::internal::RangeEpoch> {
    rec.desc.as_ref().and_then(|d| d.epoch)
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Applies mutations, atomically per range; results in input order.
///
/// Every group carries the client's request id unchanged: dedupe records are
/// kept per key, so a retry finds each key's answer however a split has
/// regrouped the keys since the first attempt. A failed batch's status says
/// whether any of it may have been applied (`outcome::HEADER`): a batch that
/// spans ranges is atomic per range only, so one group's failure after another
/// group's success leaves the outcome unknown.
///
/// `judge_expiry_at_leader`: each range's leader proposes the group itself and
/// has it judge expiring values no earlier than its reads do (see `RaftCommand`).
pub async fn write(
    gw: &Gateway,
    muts: Vec<Mutation>,
    request_id: Vec<u8>,
    judge_expiry_at_leader: bool,
) -> Result<Vec<MutationResult>, Status> {
    const MAX_REGROUPS: usize = 8;
    let mut any_sent = false;
    for _ in 0..MAX_REGROUPS {
        // Group by the range each key is routed to now.
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let dir = gw.directory();
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
                judge_expiry_at_leader,
                expiry_judged_at_ms: 0,
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
                gw.call(Target::Key(first), |rec| {
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
            Err(s) => super::maybe_applied(s) && !is_regroup(s),
        });
        if results.iter().any(|r| matches!(r, Err(s) if is_regroup(s))) {
            let _ = gw.refresh_directory().await;
            continue;
        }
        let mut out = vec![MutationResult::default(); muts.len()];
        for (idx, r) in groups.values().zip(results) {
            let resp = r.map_err(|s| super::with_outcome(s, any_sent))?;
            let w = resp.write.unwrap_or_default();
            for (j, &i) in idx.iter().enumerate() {
                out[i] = w.results.get(j).cloned().unwrap_or_default();
            }
        }
        return Ok(out);
    }
    let tail = if any_sent { format!("; {}", outcome::UNKNOWN_TAIL) } else { String::new() };
    Err(super::with_outcome(
        Status::unavailable(format!("ranges kept changing while routing the batch; retry{tail}")),
        any_sent,
    ))
}

/// Runs `op` on the table named `name` (cached). When a range refuses the cached
/// table id as dropped (the table was dropped, and perhaps created anew, through
/// another node), forgets the cached entry and runs `op` once more on the table
/// the name now resolves to (NOT_FOUND if none). A refused attempt applied nothing.
pub async fn with_table<T, Fut>(gw: &Gateway, name: &str, op: impl Fn(TableInfo) -> Fut) -> Result<T, Status>
where
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let t = catalog::get(gw, name).await?;
    match op(t).await {
        Err(s) if super::is_table_dropped(&s) => {
            gw.forget_table(name);
            op(catalog::get(gw, name).await?).await
        }
        other => other,
    }
}

/// Reads keys, one request per range touched: each range's keys are read at
/// one version (atomic per range, never half of an applied batch). The values
/// read are bounded by `max_batch_bytes` as they arrive: every range read is
/// refused as soon as its own values pass the bound, at most
/// `READ_GROUPS_IN_FLIGHT` ranges are read at once, and the request fails as
/// soon as the total passes it, so memory stays bounded whatever the request asks.
///
/// `judge_expiry_at_leader`: linearizable reads go to each range's leader, which
/// judges expiring values at its clock (see `ReadRequest`); otherwise a local
/// replica may serve them, judging at this node's clock.
pub async fn read(
    gw: &Gateway,
    t: &TableInfo,
    user_keys: &[Vec<u8>],
    stale: Option<u64>,
    judge_expiry_at_leader: bool,
) -> Result<Vec<GetResponse>, Status> {
    use futures::StreamExt as _;
    const MAX_REGROUPS: usize = 8;
    const READ_GROUPS_IN_FLIGHT: usize = 4;
    for k in user_keys {
        gw.limits.check_key(k).map_err(invalid)?;
    }
    if user_keys.len() > gw.limits.max_batch_ops {
        return Err(invalid(format!(
            "batch has {} keys; the limit is {} (max_batch_ops)",
            user_keys.len(),
            gw.limits.max_batch_ops
        )));
    }
    let limit = gw.limits.max_batch_bytes as u64;
    let encoded: Vec<Vec<u8>> = user_keys.iter().map(|k| request::encode_key(t, k)).collect();
    let mut out = vec![GetResponse::default(); encoded.len()];
    let mut pending: Vec<usize> = (0..encoded.len()).collect();
    let mut total: u64 = 0;
    for _ in 0..MAX_REGROUPS {
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let dir = gw.directory();
        for &i in &pending {
            let id = dir.lookup(&encoded[i]).and_then(|r| r.desc.as_ref()).map(|d| d.id).unwrap_or(0);
            // (Sabotaged: one read per key, as before reads were grouped by range.)
            let group = if sabotage::active(Sabotage::BatchGetPerKey) { i as u64 } else { id };
            groups.entry(group).or_default().push(i);
        }
        let encoded = &encoded;
        let calls = groups.into_values().map(|idx| async move {
            let group: Vec<Vec<u8>> = idx.iter().map(|&i| encoded[i].clone()).collect();
            let resp = gw
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
                            stale: stale.is_some(),
                            max_staleness_ms: stale.unwrap_or(0),
                            max_reply_bytes: limit,
                            judge_expiry_at_leader,
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
                out[i] = GetResponse {
                    found: r.found,
                    value: r.value,
                    version: r.version,
                    expires_at_ms: r.expires_at_ms,
                    kind: r.kind,
                };
            }
        }
        if regroup.is_empty() {
            return Ok(out);
        }
        pending = regroup;
        let _ = gw.refresh_directory().await;
    }
    Err(Status::unavailable("ranges kept changing while routing the batch; retry"))
}
