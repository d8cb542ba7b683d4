//! Ordered scans across ranges: walks the ranges covering `[start, end)` in
//! key order, streaming each range's pages as they arrive.
//!
//! Guarantee: keys come back in order, without duplicates or gaps. Each range
//! is read at one version (its latest applied version when the scan reaches
//! it, so each range's part is linearizable); different ranges are read at
//! different moments, so a scan spanning ranges is not one snapshot.

use super::{Gateway, Target};
use crate::hlc::Version;
use crate::keys;
use crate::keys::meta;
use crate::raftstore::errors;
use cairn_proto::internal::range_error::Kind;
use cairn_proto::internal::{RangeRecord, RangeScanRequest, ScannedPair};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

pub struct ScanParams {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    /// 0 = no limit.
    pub limit: usize,
    pub page_size: u32,
    pub keys_only: bool,
    /// Version to read the first range at (resuming a paged scan).
    pub resume_version: Option<Version>,
}

pub struct ScanBatch {
    pub pairs: Vec<ScannedPair>,
    pub read_version: Version,
    /// Where the scan would continue; `None` when it reached `end`.
    pub next_key: Option<Vec<u8>>,
}

pub fn scan(gw: Arc<Gateway>, p: ScanParams) -> mpsc::Receiver<Result<ScanBatch, Status>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        if let Err(e) = run(&gw, p, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

async fn run(gw: &Gateway, p: ScanParams, tx: &mpsc::Sender<Result<ScanBatch, Status>>) -> Result<(), Status> {
    let deadline_ms = gw.limits.request_deadline_ms;
    let mut cursor = p.start.clone();
    let mut remaining = if p.limit == 0 { usize::MAX } else { p.limit };
    let mut range_version = p.resume_version;
    let mut range_epoch: Option<(u64, u64)> = None;
    let mut last_progress = crate::clock::now();
    let mut attempt = 0u64;
    loop {
        if !p.end.is_empty() && cursor >= p.end {
            return Ok(());
        }
        if remaining == 0 {
            return Ok(());
        }
        if crate::clock::elapsed(last_progress) > Duration::from_millis(deadline_ms) {
            return Err(Status::unavailable("scan made no progress within the request deadline"));
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis((10 * attempt).min(200))).await;
        }
        let rec: RangeRecord = match gw.locate(&Target::Key(cursor.clone())).await {
            Ok(r) => r,
            Err(_) => {
                attempt += 1;
                if !meta::is_meta_key(&cursor) {
                    let _ = gw.refresh_directory().await;
                }
                continue;
            }
        };
        let Some(desc) = rec.desc.clone() else { continue };
        // A version read from a range holds only for the span it had then: after a
        // merge, the keys it took over may carry newer versions than it did.
        let epoch_now = (desc.id, desc.epoch.map(|e| e.version).unwrap_or(0));
        if range_epoch.is_some_and(|e| e != epoch_now) {
            range_version = None;
        }
        range_epoch = Some(epoch_now);
        let voters: Vec<u64> = desc.replicas.iter().filter(|r| !r.learner).map(|r| r.node_id).collect();
        if voters.is_empty() {
            attempt += 1;
            continue;
        }
        let node = if rec.leader_node_id != 0 && voters.contains(&rec.leader_node_id) {
            rec.leader_node_id
        } else {
            voters[attempt as usize % voters.len()]
        };
        let range_end = if desc.end.is_empty() {
            p.end.clone()
        } else if p.end.is_empty() {
            desc.end.clone()
        } else {
            desc.end.clone().min(p.end.clone())
        };
        let req = RangeScanRequest {
            range_id: desc.id,
            epoch: desc.epoch,
            start: cursor.clone(),
            end: range_end.clone(),
            read_version: range_version.map(Into::into),
            limit: remaining.min(u32::MAX as usize) as u32,
            page_size: p.page_size,
            keys_only: p.keys_only,
        };
        let mut pages = match gw.open_scan(node, req).await {
            Ok(rx) => rx,
            Err(_) => {
                attempt += 1;
                gw.dir_set_leader(desc.id, 0);
                continue;
            }
        };
        let mut range_done = false;
        let mut failed = false;
        while let Some(page) = pages.recv().await {
            let page = match page {
                Ok(p) => p,
                Err(_) => {
                    failed = true;
                    break;
                }
            };
            if let Some(e) = page.error {
                match errors::kind_of(&e) {
                    Kind::NotLeader => gw.dir_set_leader(desc.id, e.leader_hint),
                    Kind::EpochMismatch | Kind::KeyNotInRange | Kind::RangeNotFound => {
                        if let Some(d) = e.desc {
                            gw.learn_route(RangeRecord { desc: Some(d), leader_node_id: node, ..Default::default() });
                        }
                        if desc.id != meta::META_RANGE_ID {
                            let _ = gw.refresh_directory().await;
                        }
                    }
                    Kind::Invalid | Kind::TableDropped => return Err(super::status_of(&e)),
                    _ => {}
                }
                failed = true;
                break;
            }
            last_progress = crate::clock::now();
            attempt = 0;
            let version = page.read_version.as_ref().map(Version::from).unwrap_or_default();
            range_version = Some(version);
            if let Some(last) = page.pairs.last() {
                cursor = keys::next_key(&last.key);
            }
            remaining = remaining.saturating_sub(page.pairs.len());
            range_done = page.done && remaining > 0;
            let finished_all = (range_done && (range_end.is_empty() || range_end == p.end)) || remaining == 0;
            let next_key = if finished_all && remaining > 0 { None } else { Some(cursor.clone()) };
            let batch = ScanBatch { pairs: page.pairs, read_version: version, next_key };
            if tx.send(Ok(batch)).await.is_err() {
                return Ok(()); // the client went away
            }
            if page.done {
                break;
            }
        }
        if failed {
            attempt += 1;
            continue;
        }
        if range_done {
            if range_end.is_empty() || range_end == p.end {
                return Ok(());
            }
            cursor = range_end;
            range_version = None;
        }
        if remaining == 0 {
            return Ok(());
        }
    }
}

/// Collects a whole (small) scan, e.g. of the meta range.
pub async fn collect(gw: &Gateway, start: Vec<u8>, end: Vec<u8>) -> Result<Vec<ScannedPair>, Status> {
    let params = ScanParams { start, end, limit: 0, page_size: 1024, keys_only: false, resume_version: None };
    let (tx, mut rx) = mpsc::channel(2);
    let producer = async move { run(gw, params, &tx).await };
    let consumer = async {
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend(b?.pairs);
        }
        Ok::<_, Status>(out)
    };
    let (produced, collected) = tokio::join!(producer, consumer);
    produced?;
    collected
}
