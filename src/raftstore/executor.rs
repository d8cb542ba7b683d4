//! Serves range requests against this node's replicas: proposes commands,
//! confirms leadership for linearizable reads (ReadIndex) and then reads the
//! engine, and pages through a range's keys at one version for scans.
//!
//! It is what the internal `Execute`/`ScanRange` RPCs run, and what the
//! gateway calls directly when the leader is local.

use super::apply::Applied;
use super::errors;
use super::msg::{StoreHandle, StoreMsg};
use super::shared::ReplicaShared;
use crate::hlc::Version;
use crate::keys;
use crate::limits::InputError;
use crate::sabotage::{self, Sabotage};
use crate::storage::mvcc;
use cairn_proto::internal::{
    raft_command, range_request, AdminResponse, RangeEpoch, RangeError, RangeRequest, RangeResponse, RangeScanPage,
    RangeScanRequest, ReadRequest, ReadResult, ScannedPair,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Bounds one scan page: whichever is hit first.
pub const DEFAULT_PAGE_KEYS: usize = 256;
pub const MAX_PAGE_KEYS: usize = 10_000;
pub const MAX_PAGE_BYTES: usize = 4 << 20;
/// Up to this many keys are read on the request's own task.
const INLINE_READ_KEYS: usize = 8;
/// The staleness bound of a stale read that names none.
pub const DEFAULT_MAX_STALENESS_MS: u64 = 10_000;

fn error_response(e: RangeError) -> RangeResponse {
    RangeResponse { error: Some(e), ..Default::default() }
}

/// Counts a request towards its range's load and the node's hot keys (system
/// keys of the meta range are left out of the hot keys).
fn record_load(store: &StoreHandle, req: &RangeRequest) {
    let (keys, write): (Vec<&[u8]>, bool) = match &req.req {
        Some(range_request::Req::Command(c)) => match &c.cmd {
            Some(raft_command::Cmd::Write(w)) => (w.mutations.iter().map(|m| m.key.as_slice()).collect(), true),
            _ => return,
        },
        Some(range_request::Req::Read(r)) => (r.keys.iter().map(Vec::as_slice).collect(), false),
        _ => return,
    };
    let Some(replica) = store.registry.read().get(&req.range_id).cloned() else { return };
    replica.load.record(keys.iter().copied(), write);
    for k in keys.into_iter().filter(|k| !keys::meta::is_meta_key(k)) {
        store.hot_keys.record(k);
    }
}

pub async fn execute(store: &StoreHandle, req: RangeRequest) -> RangeResponse {
    record_load(store, &req);
    let range_id = req.range_id;
    let epoch = req.epoch;
    match req.req {
        Some(range_request::Req::Command(cmd)) => {
            match store.ask(|reply| StoreMsg::Command { range_id, epoch, cmd, reply }).await {
                Ok(Applied::Write(w)) => RangeResponse { write: Some(w), ..Default::default() },
                Ok(Applied::Split { left, right }) => RangeResponse {
                    admin: Some(AdminResponse { desc: Some(left), right: Some(right), ..Default::default() }),
                    ..Default::default()
                },
                Ok(
                    Applied::AlreadySplit(desc)
                    | Applied::Cleared(desc)
                    | Applied::Changed(desc)
                    | Applied::Merged { desc, .. },
                ) => RangeResponse {
                    admin: Some(AdminResponse { desc: Some(desc), ..Default::default() }),
                    ..Default::default()
                },
                Ok(Applied::Frozen { desc, index, last_version }) => RangeResponse {
                    admin: Some(AdminResponse {
                        desc: Some(desc),
                        applied_index: index,
                        last_version: Some(last_version.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Ok(Applied::Rejected(e)) | Err(e) => error_response(e),
            }
        }
        Some(range_request::Req::Read(r)) => {
            let proof = if r.stale {
                prove_fresh(store, range_id, r.max_staleness_ms).await
            } else if !sabotage::active(Sabotage::StaleLocalRead) {
                read_index(store, range_id).await
            } else {
                Ok(())
            };
            if let Err(e) = proof {
                return error_response(e);
            }
            // A few point reads take microseconds: cheaper inline than a hop to the blocking pool.
            let res = if r.keys.len() <= INLINE_READ_KEYS {
                Ok(read_keys(store, range_id, epoch, &r))
            } else {
                let store = store.clone();
                crate::clock::blocking(move || read_keys(&store, range_id, epoch, &r)).await
            };
            match res {
                Ok(Ok(reads)) => RangeResponse { reads, ..Default::default() },
                Ok(Err(e)) => error_response(e),
                Err(e) => error_response(errors::unavailable(format!("read task failed: {e}"))),
            }
        }
        Some(range_request::Req::Admin(a)) => {
            match store.ask(|reply| StoreMsg::Admin { range_id, req: a, reply }).await {
                Ok(admin) => RangeResponse { admin: Some(admin), ..Default::default() },
                Err(e) => error_response(e),
            }
        }
        None => error_response(errors::invalid("range request without a body")),
    }
}

fn replica(store: &StoreHandle, range_id: u64) -> Result<Arc<ReplicaShared>, RangeError> {
    store.registry.read().get(&range_id).cloned().ok_or_else(|| errors::range_not_found(range_id))
}

fn check_epoch(shared: &ReplicaShared, epoch: &Option<RangeEpoch>) -> Result<(), RangeError> {
    shared.with_desc(|d| match (epoch, &d.epoch) {
        (Some(want), Some(have)) if want.version != have.version => Err(errors::epoch_mismatch(d)),
        _ => Ok(()),
    })
}

/// Waits until this replica has applied everything committed when the call
/// started (a ReadIndex: the leader confirms it still leads and names its commit
/// index), and records that it now holds every write acknowledged before then.
async fn read_index(store: &StoreHandle, range_id: u64) -> Result<(), RangeError> {
    let asked = crate::clock::now();
    store.ask(|reply| StoreMsg::ReadIndex { range_id, reply }).await?;
    if let Some(r) = store.registry.read().get(&range_id) {
        r.proved_fresh_as_of(asked);
    }
    Ok(())
}

/// Bounded staleness: a replica serves a stale read only if it can show that it
/// holds every write acknowledged more than `max_staleness_ms` (0: the default)
/// before now. Its proof is the start of its last ReadIndex (any read's): if that
/// is too old, it runs one more, which a replica cut off from its leader cannot
/// complete, so it fails (the gateway then tries the leader) instead of answering
/// with data older than the bound. Needs no clock but this node's own monotonic one.
async fn prove_fresh(store: &StoreHandle, range_id: u64, max_staleness_ms: u64) -> Result<(), RangeError> {
    let bound_ms = if max_staleness_ms == 0 { DEFAULT_MAX_STALENESS_MS } else { max_staleness_ms };
    let shared = replica(store, range_id)?;
    if !shared.initialized() {
        return Err(errors::range_not_found(range_id));
    }
    if shared.fresh_within(Duration::from_millis(bound_ms), crate::clock::now())
        || sabotage::active(Sabotage::UnprovenStaleReads)
    {
        return Ok(());
    }
    read_index(store, range_id).await.map_err(|e| {
        metrics::counter!("cairn_stale_reads_unproven_total").increment(1);
        errors::unavailable(format!(
            "range {range_id}: this replica cannot show that it is within {bound_ms} ms of the latest write: {}",
            e.message
        ))
    })
}

/// Reads a range's keys, all at the replica's applied version when the read
/// starts: versions grow with the log and an applied batch is in the engine before
/// that version is published, so the read sees each applied batch whole or not at all.
/// Stops with an error naming the bound as soon as the values read pass `max_reply_bytes`.
pub fn read_keys(
    store: &StoreHandle,
    range_id: u64,
    epoch: Option<RangeEpoch>,
    req: &ReadRequest,
) -> Result<Vec<ReadResult>, RangeError> {
    let shared = replica(store, range_id)?;
    let _guard = shared.data_lock.read();
    if shared.destroyed() {
        return Err(errors::range_not_found(range_id));
    }
    if req.stale && !shared.initialized() {
        return Err(errors::range_not_found(range_id));
    }
    check_epoch(&shared, &epoch)?;
    let desc = shared.desc();
    // Its span may already belong to the left range, which may have taken writes.
    if desc.frozen_for_merge {
        return Err(super::apply::frozen(&desc));
    }
    if req.keys.iter().any(|k| !keys::in_range(k, &desc.start, &desc.end)) {
        return Err(errors::key_not_in_range(&desc));
    }
    super::apply::check_tables_live(&desc, req.keys.iter().map(Vec::as_slice))?;
    let at = shared.last_version();
    let now_ms = if req.judge_expiry_at_leader && !req.stale {
        if !shared.is_leader() {
            return Err(errors::not_leader(range_id, shared.leader_id()));
        }
        judging_time_ms(store).max(shared.expiry_floor_ms())
    } else {
        judging_time_ms(store)
    };
    let mut out = Vec::with_capacity(req.keys.len());
    let mut bytes: u64 = 0;
    for k in &req.keys {
        let result = match mvcc::get_live(&store.engine, k, at, now_ms) {
            Some(l) => ReadResult {
                found: true,
                value: l.value,
                version: Some(l.version.into()),
                expires_at_ms: l.expires_at_ms,
                kind: l.kind.into(),
            },
            None => ReadResult::default(),
        };
        bytes = bytes.saturating_add(result.value.len() as u64);
        if req.max_reply_bytes > 0 && bytes > req.max_reply_bytes {
            return Err(errors::invalid(InputError::ReplyTooLarge { limit: req.max_reply_bytes }.to_string()));
        }
        out.push(result);
    }
    Ok(out)
}

/// The instant a read judges expiring values at: this node's hybrid clock,
/// which never goes back and is at or above every version the node has applied
/// or issued. Nodes' clocks agree within the maximum clock offset (a node
/// beyond it serves nothing), so around its expiry instant a value may read as
/// live through one node and as expired through another for at most that long;
/// writes judge by their own version instead, alike on every replica.
fn judging_time_ms(store: &StoreHandle) -> u64 {
    store.hlc.now().wall_ns / 1_000_000
}

/// Streams one range's live keys in `[start, end)` ∩ range bounds, at one version.
pub async fn scan_range(
    store: StoreHandle,
    req: RangeScanRequest,
    tx: mpsc::Sender<Result<RangeScanPage, tonic::Status>>,
) {
    let send_err = |e: RangeError| RangeScanPage { error: Some(e), ..Default::default() };
    let range_id = req.range_id;
    // Always confirm with ReadIndex, also when resuming at a given version: this
    // replica must have applied everything up to that version before reading at it.
    if let Err(e) = store.ask(|reply| StoreMsg::ReadIndex { range_id, reply }).await {
        let _ = tx.send(Ok(send_err(e))).await;
        return;
    }
    let applied_version = match replica(&store, range_id) {
        Ok(s) => s.last_version(),
        Err(e) => {
            let _ = tx.send(Ok(send_err(e))).await;
            return;
        }
    };
    let read_version = match &req.read_version {
        Some(v) if Version::from(v) > applied_version => {
            let e = errors::unavailable(format!("range {range_id}: replica has not reached the scan's version yet"));
            let _ = tx.send(Ok(send_err(e))).await;
            return;
        }
        Some(v) => Version::from(v),
        None => applied_version,
    };
    let page_keys = match req.page_size as usize {
        0 => DEFAULT_PAGE_KEYS,
        n => n.min(MAX_PAGE_KEYS),
    };
    let mut remaining = if req.limit == 0 { usize::MAX } else { req.limit as usize };
    let mut cursor = req.start.clone();
    loop {
        let st = store.clone();
        let (epoch, end, keys_only, cur) = (req.epoch, req.end.clone(), req.keys_only, cursor.clone());
        let want = page_keys.min(remaining);
        let page =
            crate::clock::blocking(move || scan_page(&st, range_id, epoch, &cur, &end, read_version, want, keys_only))
                .await;
        let (pairs, done) = match page {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let _ = tx.send(Ok(send_err(e))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Ok(send_err(errors::unavailable(format!("scan task failed: {e}"))))).await;
                return;
            }
        };
        remaining = remaining.saturating_sub(pairs.len());
        if let Some(last) = pairs.last() {
            cursor = keys::next_key(&last.key);
        }
        let done = done || remaining == 0;
        let msg = RangeScanPage { error: None, pairs, read_version: Some(read_version.into()), done };
        if tx.send(Ok(msg)).await.is_err() || done {
            return; // client went away, or finished
        }
    }
}

/// One page; `done` is true when the range (or the requested end) is exhausted.
#[allow(clippy::too_many_arguments)]
fn scan_page(
    store: &StoreHandle,
    range_id: u64,
    epoch: Option<RangeEpoch>,
    start: &[u8],
    end: &[u8],
    at: Version,
    max_keys: usize,
    keys_only: bool,
) -> Result<(Vec<ScannedPair>, bool), RangeError> {
    let shared = replica(store, range_id)?;
    let _guard = shared.data_lock.read();
    if shared.destroyed() {
        return Err(errors::range_not_found(range_id));
    }
    check_epoch(&shared, &epoch)?;
    // Before the iterator opens: compactions that finish after that cannot change what it reads.
    store.engine.mvcc_gc().check_readable(at, shared.last_version()).map_err(errors::invalid)?;
    let desc = shared.desc();
    if desc.frozen_for_merge {
        return Err(super::apply::frozen(&desc));
    }
    if desc.merged_at.as_ref().is_some_and(|m| at < Version::from(m)) {
        return Err(errors::invalid(
            "the scan's version predates a merge of its range, whose new keys it could miss; restart the scan",
        ));
    }
    super::apply::check_tables_live(&desc, std::iter::once(start.max(desc.start.as_slice())))?;
    let lo = start.max(desc.start.as_slice()).to_vec();
    let hi = match (end.is_empty(), desc.end.is_empty()) {
        (true, _) => desc.end.clone(),
        (false, true) => end.to_vec(),
        (false, false) => end.min(desc.end.as_slice()).to_vec(),
    };
    let mut pairs = Vec::new();
    let mut bytes = 0;
    let mut exhausted = true;
    mvcc::scan_at(&store.engine, &lo, &hi, at, judging_time_ms(store), |k, v, version, kind| {
        if pairs.len() >= max_keys || bytes >= MAX_PAGE_BYTES {
            exhausted = false;
            return false;
        }
        bytes += k.len() + if keys_only { 0 } else { v.len() };
        pairs.push(ScannedPair {
            key: k.to_vec(),
            value: if keys_only { Vec::new() } else { v.to_vec() },
            version: Some(version.into()),
            kind: kind.into(),
        });
        true
    });
    Ok((pairs, exhausted))
}
