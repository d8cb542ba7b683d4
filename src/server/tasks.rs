//! The node's periodic work: liveness heartbeats to the node registry,
//! reporting the ranges it leads to the range directory, the split check,
//! directory refreshes, and (on the meta range's leader) the controller.

use super::ServerConfig;
use crate::controller;
use crate::gateway::Gateway;
use crate::keys::{self, SLOT_COUNT};
use crate::meta::admin;
use crate::meta::{self, catalog, events, registry};
use crate::storage::{mvcc, Cf};
use cairn_core::load::split_finder::Verdict;
use cairn_proto::internal::{HotKey, NodeInfo, RangeDescriptor, RangeRecord};
use cairn_proto::kv::ClusterEvent;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A range leader re-reports its record at least this often, even unchanged.
const REPORT_REFRESH: Duration = Duration::from_secs(30);
/// Hot keys each heartbeat carries.
const HOT_KEYS_REPORTED: usize = 10;

/// The addresses a node's heartbeat advertises.
#[derive(Clone)]
pub struct Advertised {
    pub grpc: String,
    pub http: String,
    pub redis: String,
}

pub fn spawn_all(gw: Arc<Gateway>, cfg: &ServerConfig, addrs: Advertised, stop: watch::Receiver<bool>) {
    let zone = cfg.zone.clone();
    every(stop.clone(), Duration::from_millis(registry::HEARTBEAT_INTERVAL_MS), {
        let gw = gw.clone();
        move || heartbeat(gw.clone(), addrs.clone(), zone.clone())
    });
    let reported: Arc<parking_lot::Mutex<HashMap<u64, (RangeRecord, Instant)>>> = Default::default();
    every(stop.clone(), Duration::from_secs(1), {
        let gw = gw.clone();
        move || report_ranges(gw.clone(), reported.clone())
    });
    let threshold = cfg.split_threshold_bytes;
    every(stop.clone(), Duration::from_millis(cfg.split_check_interval_ms), {
        let gw = gw.clone();
        move || split_check(gw.clone(), threshold)
    });
    let load = LoadSplit {
        qps: cfg.load_split_qps,
        sustain: Duration::from_millis(cfg.load_split_sustain_ms),
        hot: Default::default(),
    };
    every(stop.clone(), LOAD_CHECK_INTERVAL, {
        let gw = gw.clone();
        move || load_split_check(gw.clone(), load.clone())
    });
    every(stop.clone(), Duration::from_secs(10), {
        let gw = gw.clone();
        move || {
            let gw = gw.clone();
            async move {
                let _ = gw.refresh_directory().await;
                if let Ok(nodes) = registry::list(&gw).await {
                    for n in nodes {
                        gw.book.learn(n.id, &n.addr);
                    }
                }
            }
        }
    });
    let ctl = controller::runner::Controller::new(
        gw,
        cfg.replication_factor,
        cfg.dead_after_secs.saturating_mul(1000),
        cfg.rebalance,
        cfg.merge_policy(),
        Duration::from_secs(cfg.merge_after_secs),
    );
    every(stop, Duration::from_secs(2), move || ctl.clone().tick());
}

/// Runs `f` every `period` (never two at once) until `stop` flips.
fn every<F, Fut>(mut stop: watch::Receiver<bool>, period: Duration, mut f: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = t.tick() => f().await,
                _ = stop.changed() => return,
            }
        }
    });
}

async fn heartbeat(gw: Arc<Gateway>, addrs: Advertised, zone: String) {
    let (replicas, leaders) = {
        let reg = gw.store.registry.read();
        (reg.len() as u32, reg.values().filter(|r| r.is_leader()).count() as u32)
    };
    metrics::gauge!("cairn_replicas").set(replicas as f64);
    metrics::gauge!("cairn_leaders").set(leaders as f64);
    // One hot-key window per heartbeat: what the heartbeat carries is the last
    // complete one.
    gw.store.hot_keys.roll();
    let (top, _) = gw.store.hot_keys.top(HOT_KEYS_REPORTED);
    let per_sec = 1000.0 / registry::HEARTBEAT_INTERVAL_MS as f64;
    let hot_keys = top
        .into_iter()
        .map(|c| {
            let qps = (c.count as f64 * per_sec).round() as u64;
            HotKey { key: c.key, qps }
        })
        .collect::<Vec<_>>();
    metrics::gauge!("cairn_hottest_key_qps").set(hot_keys.first().map_or(0.0, |h| h.qps as f64));
    let info = NodeInfo {
        id: gw.node_id,
        addr: addrs.grpc,
        http_addr: addrs.http,
        redis_addr: addrs.redis,
        zone,
        heartbeat_ms: crate::hlc::wall_now_ms(),
        capacity_bytes: 0,
        used_bytes: gw.store.engine.total_size(),
        replicas,
        leaders,
        hot_keys,
    };
    if let Err(e) = registry::put(&gw, info).await {
        tracing::debug!("heartbeat not recorded: {}", e.message());
    }
}

fn approximate_bytes(gw: &Gateway, d: &RangeDescriptor, written: u64) -> u64 {
    let (lo, hi) = mvcc::data_span(&d.start, &d.end);
    gw.store.engine.approximate_size(Cf::Data, &lo, &hi) + written
}

async fn report_ranges(gw: Arc<Gateway>, reported: Arc<parking_lot::Mutex<HashMap<u64, (RangeRecord, Instant)>>>) {
    let mut leaders: Vec<_> =
        gw.store.registry.read().values().filter(|r| r.is_leader() && r.initialized()).cloned().collect();
    // In range order, not the registry's hash order: several records go in one meta
    // write, and a simulated run must replay it byte for byte.
    leaders.sort_by_key(|r| r.range_id);
    let mut changed = Vec::new();
    {
        let mut last = reported.lock();
        for r in &leaders {
            let desc = r.desc();
            let size = approximate_bytes(&gw, &desc, r.written_bytes.load(Ordering::Relaxed));
            // Requests per second ride along but do not trigger a report on their own: a
            // report on every change of load made the whole-node simulation's seeds stop
            // replaying exactly (the load it measures does not yet replay); the periodic
            // refresh brings them to the controller, whose merges wait minutes anyway.
            let qps = r.last_qps.load(Ordering::Relaxed);
            let rec = RangeRecord { desc: Some(desc), leader_node_id: gw.node_id, approximate_bytes: size, qps };
            let stale = match last.get(&r.range_id) {
                Some((prev, at)) => {
                    prev.desc != rec.desc
                        || prev.leader_node_id != rec.leader_node_id
                        || crate::clock::elapsed(*at) > REPORT_REFRESH
                        || prev.approximate_bytes.abs_diff(size) > size / 10 + 4096
                }
                None => true,
            };
            if stale {
                last.insert(r.range_id, (rec.clone(), crate::clock::now()));
                changed.push(rec);
            }
        }
    }
    for rec in &changed {
        gw.learn_route(rec.clone());
    }
    for chunk in changed.chunks(256) {
        if let Err(e) = meta::report_ranges(&gw, chunk.to_vec()).await {
            tracing::debug!("range report failed: {}", e.message());
            let mut last = reported.lock();
            for r in chunk {
                if let Some(d) = &r.desc {
                    last.remove(&d.id);
                }
            }
        }
    }
}

/// How often each led range's request rate is measured.
const LOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Load-based splitting: a range over `qps` for `sustain` is split where its
/// sampled request keys divide in two.
#[derive(Clone)]
struct LoadSplit {
    qps: u64,
    sustain: Duration,
    /// Ranges found hot: since when, and whether "no split point" was logged.
    hot: Arc<parking_lot::Mutex<HashMap<u64, (Instant, bool)>>>,
}

async fn load_split_check(gw: Arc<Gateway>, load: LoadSplit) {
    let mut replicas: Vec<_> = gw.store.registry.read().values().cloned().collect();
    replicas.sort_by_key(|r| r.range_id); // a replayable order (see `report_ranges`)
    let secs = LOAD_CHECK_INTERVAL.as_secs_f64();
    for r in replicas {
        let (reads, writes) = r.load.take_counts();
        let qps = ((reads + writes) as f64 / secs) as u64;
        r.last_qps.store(qps, Ordering::Relaxed);
        let eligible = r.is_leader() && r.initialized() && r.range_id != meta::META_RANGE_ID && load.qps > 0;
        if !eligible || qps < load.qps {
            r.load.stop_sampling();
            load.hot.lock().remove(&r.range_id);
            continue;
        }
        let desc = r.desc();
        let hot_since = load.hot.lock().get(&r.range_id).copied();
        let Some((since, noted)) = hot_since else {
            // Newly hot: sample whole slots in a hash-partitioned table (it splits only
            // between them), so the table must be known first.
            let Ok(tables) = catalog::list(&gw).await else { continue };
            let hashed = keys::decode_table(&desc.start)
                .and_then(|(id, _)| tables.iter().find(|t| t.id == id))
                .is_some_and(catalog::is_hashed);
            r.load.start_sampling(hashed);
            load.hot.lock().insert(r.range_id, (crate::clock::now(), false));
            continue;
        };
        let now = crate::clock::now();
        if now.saturating_duration_since(since) < load.sustain {
            continue;
        }
        let rate = format!(
            "{qps} requests/s ({} reads, {} writes) over the load-split threshold of {} for {:?}",
            (reads as f64 / secs) as u64,
            (writes as f64 / secs) as u64,
            load.qps,
            load.sustain
        );
        match r.load.verdict() {
            Some(Verdict::SplitAt { key, left_share }) => {
                let tables = catalog::list(&gw).await.unwrap_or_default();
                let Some(at) = load_split_point(&tables, &key, &desc) else { continue };
                let result = admin::split_at(&gw, &at, false).await;
                let outcome = result.as_ref().map_or_else(|e| format!("failed: {}", e.message()), |_| "done".into());
                let reason =
                    format!("{rate}; {:.0}% of the sampled requests fall left of the split", left_share * 100.0);
                tracing::info!(range_id = desc.id, qps, "load-based split: {outcome}");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "load_split").increment(1);
                let event = ClusterEvent {
                    kind: "load_split".into(),
                    range_id: desc.id,
                    reason,
                    outcome,
                    ..Default::default()
                };
                events::record_or_log(&gw, event).await;
                r.load.stop_sampling();
                load.hot.lock().remove(&r.range_id);
            }
            Some(Verdict::NoSplit { key, share }) if !noted => {
                let tables = catalog::list(&gw).await.unwrap_or_default();
                let reason = format!(
                    "{rate}, but {:.0}% of it is one key ({}): a range cannot split inside a key; spread its \
                     reads with follower reads",
                    share * 100.0,
                    display_key(&tables, &key)
                );
                let event = ClusterEvent {
                    kind: "load_split_skipped".into(),
                    range_id: desc.id,
                    reason,
                    outcome: "no split point".into(),
                    ..Default::default()
                };
                events::record_or_log(&gw, event).await;
                if let Some(h) = load.hot.lock().get_mut(&r.range_id) {
                    h.1 = true;
                }
            }
            _ => {}
        }
    }
}

/// An encoded key as its table's clients know it: `table/key`, or `table slot N`
/// for a bare slot of a hash-partitioned table (what its split finder samples).
fn display_key(tables: &[cairn_proto::internal::TableInfo], key: &[u8]) -> String {
    match (catalog::user_key(tables, key), keys::decode_table(key)) {
        (Some((k, table)), Some((_, rest))) if k.is_empty() && rest.len() == 2 => {
            format!("{table} slot {}", u16::from_be_bytes([rest[0], rest[1]]))
        }
        (Some((k, table)), _) => format!("{table}/{}", String::from_utf8_lossy(k)),
        _ => String::from_utf8_lossy(key).into_owned(),
    }
}

/// Where a range may split for load at sampled key `key`: the key itself in a
/// range-partitioned table; in a hash-partitioned one the start of its slot
/// (slots stay whole), or of the next slot when that is the range's start.
/// `None` when no such point lies strictly inside the range.
fn load_split_point(
    tables: &[cairn_proto::internal::TableInfo],
    key: &[u8],
    desc: &RangeDescriptor,
) -> Option<Vec<u8>> {
    let (table_id, rest) = keys::decode_table(key)?;
    let hashed = tables.iter().find(|t| t.id == table_id).is_some_and(catalog::is_hashed);
    let at = if hashed {
        let slot = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
        let start = keys::hash_slot_start(table_id, slot);
        if start.as_slice() > desc.start.as_slice() {
            start
        } else {
            keys::hash_slot_start(table_id, slot.checked_add(1).filter(|s| *s < SLOT_COUNT)?)
        }
    } else {
        key.to_vec()
    };
    let inside = at.as_slice() > desc.start.as_slice() && (desc.end.is_empty() || at < desc.end);
    inside.then_some(at)
}

/// Picks the key that splits `[start, end)` into halves by bytes. Pure: the
/// caller passes (key, bytes) pairs in key order. `align` rounds a candidate
/// to a legal split point (slot boundaries for hash tables); `None` if no key
/// strictly inside the range qualifies.
pub fn choose_split_key(
    pairs: &[(Vec<u8>, u64)],
    start: &[u8],
    align: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let total: u64 = pairs.iter().map(|(_, n)| n).sum();
    let mut acc = 0;
    for (k, n) in pairs {
        acc += n;
        if acc * 2 >= total {
            let candidate = align(k)?;
            if candidate.as_slice() > start {
                return Some(candidate);
            }
        }
    }
    None
}

async fn split_check(gw: Arc<Gateway>, threshold: u64) {
    let leaders: Vec<_> = gw
        .store
        .registry
        .read()
        .values()
        .filter(|r| r.is_leader() && r.initialized() && r.range_id != meta::META_RANGE_ID)
        .cloned()
        .collect();
    for r in leaders {
        let desc = r.desc();
        if approximate_bytes(&gw, &desc, r.written_bytes.load(Ordering::Relaxed)) < threshold {
            continue;
        }
        let engine = gw.store.engine.clone();
        let d = desc.clone();
        let pairs = crate::clock::blocking(move || {
            let mut per_key: Vec<(Vec<u8>, u64)> = Vec::new();
            mvcc::scan_raw(&engine, &d.start, &d.end, |k, v| {
                if let Some((key, _)) = crate::keys::mvcc::decode(k) {
                    let n = (k.len() + v.len()) as u64;
                    match per_key.last_mut() {
                        Some((last, total)) if *last == key => *total += n,
                        _ => per_key.push((key, n)),
                    }
                }
            });
            per_key
        })
        .await
        .unwrap_or_default();
        let exact: u64 = pairs.iter().map(|(_, n)| n).sum();
        if exact < threshold {
            // The estimate over-counted (e.g. flushed and still-counted writes): start afresh.
            r.written_bytes.store(0, Ordering::Relaxed);
            continue;
        }
        let tables = catalog::list(&gw).await.unwrap_or_default();
        let align = |k: &[u8]| -> Option<Vec<u8>> {
            let (table_id, rest) = keys::decode_table(k)?;
            let hashed = tables.iter().find(|t| t.id == table_id).is_some_and(catalog::is_hashed);
            if !hashed {
                return Some(k.to_vec());
            }
            let slot = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
            // The next slot boundary after this key's slot keeps slots whole.
            let next = slot.checked_add(1).filter(|s| *s < SLOT_COUNT)?;
            Some(keys::hash_slot_start(table_id, next))
        };
        let Some(key) = choose_split_key(&pairs, &desc.start, align) else { continue };
        if !desc.end.is_empty() && key >= desc.end {
            continue;
        }
        let result = admin::split_at(&gw, &key, false).await;
        let outcome = result.as_ref().map_or_else(|e| format!("failed: {}", e.message()), |_| "done".to_string());
        let right_id = result.as_ref().ok().and_then(|(_, right)| right.as_ref().map(|d| d.id)).unwrap_or(0);
        let reason = format!(
            "{exact} bytes, over the split threshold of {threshold}{}",
            if right_id == 0 { String::new() } else { format!("; the right half is range {right_id}") }
        );
        let event = ClusterEvent { kind: "split".into(), range_id: desc.id, reason, outcome, ..Default::default() };
        events::record_or_log(&gw, event).await;
        match result {
            Ok((_, right)) => {
                // RocksDB's estimate leaves out the memtables, so both halves start from what
                // the scan counted: zero would hide data not yet flushed, and a half that is
                // still too big would never split again without further writes. (This
                // node led the parent, so it campaigns for, and usually leads, the right half.)
                let left_bytes: u64 = pairs.iter().filter(|(k, _)| *k < key).map(|(_, n)| n).sum();
                r.written_bytes.store(left_bytes, Ordering::Relaxed);
                if let Some(right) = right.and_then(|d| gw.store.registry.read().get(&d.id).cloned()) {
                    right.written_bytes.store(exact - left_bytes, Ordering::Relaxed);
                }
                tracing::info!(range_id = desc.id, bytes = exact, "size-based split");
                metrics::counter!("cairn_controller_decisions_total", "kind" => "split").increment(1);
            }
            Err(e) => tracing::warn!(range_id = desc.id, "size-based split failed: {}", e.message()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_key_halves_by_bytes() {
        let pairs: Vec<(Vec<u8>, u64)> = (0..10u8).map(|i| (vec![b'a' + i], 10)).collect();
        let k = choose_split_key(&pairs, b"a", |k| Some(k.to_vec())).unwrap();
        assert_eq!(k, b"e".to_vec());
        let skewed = vec![(b"a".to_vec(), 1000), (b"b".to_vec(), 1)];
        assert_eq!(choose_split_key(&skewed, b"a", |k| Some(k.to_vec())), Some(b"b".to_vec()));
        assert_eq!(choose_split_key(&[(b"a".to_vec(), 5)], b"a", |k| Some(k.to_vec())), None);
    }
}
