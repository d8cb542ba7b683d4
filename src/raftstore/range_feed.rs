//! Serves one range feed (the internal `RangeFeed` RPC): the changes one range
//! applies to a span of its keys, above a version, with the range's resolved
//! versions. The gateway's `feed.rs` stitches range feeds into a table's.
//!
//! How it stays gap-free: the tap is registered on the store loop between two
//! applies, and that registration pins the engine at the same state. Changes
//! up to that state come from the pinned view (the catch-up scan), later ones
//! from the tap, whose items name the log indexes they cover, so a missing
//! batch is noticed rather than skipped. Every command a range applies gets a
//! version above the range's last one (`apply::apply_command`), so once the
//! tap has delivered the batch that brought the range to version V, no change
//! at or below V can come later: V is resolved. An idle range is made to
//! apply an empty write now and then, so its resolved version keeps moving.

use super::errors;
use super::feed::{Drained, FeedChange, Tap};
use super::msg::{StoreHandle, StoreMsg};
use crate::hlc::Version;
use crate::keys;
use crate::keys::mvcc as mvcc_keys;
use crate::sabotage::{self, Sabotage};
use crate::storage::{mvcc, PinnedView};
use cairn_proto::internal::range_error::Kind;
use cairn_proto::internal::{
    raft_command, RaftCommand, RangeDescriptor, RangeError, RangeFeedMessage, RangeFeedRequest, WriteBatch,
};
use cairn_proto::kv::ChangeEvent;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// Bytes of applied changes one range feed may have waiting before it is ended.
pub const TAP_LIMIT_BYTES: usize = 32 << 20;
/// Changes per message.
const EVENTS_PER_MESSAGE: usize = 1024;
/// How often an idle range's resolved version is moved, unless asked otherwise.
pub const DEFAULT_RESOLVED_INTERVAL_MS: u64 = 1000;
pub const MIN_RESOLVED_INTERVAL_MS: u64 = 50;
/// The versions of one key a catch-up scan holds at once (it sends them oldest first).
const MAX_KEY_HISTORY_BYTES: usize = 64 << 20;

pub type FeedSender = mpsc::Sender<Result<RangeFeedMessage, Status>>;

/// Streams the feed until the consumer goes away or the feed must restart; the
/// last message then carries the reason.
pub async fn serve(store: StoreHandle, req: RangeFeedRequest, tx: FeedSender) {
    if let Err(e) = run(&store, &req, &tx).await {
        let _ = tx.send(Ok(RangeFeedMessage { error: Some(e), ..Default::default() })).await;
    }
}

/// The consumer went away: nothing more to do.
struct Gone;

enum Stop {
    Gone,
    Failed(Box<RangeError>),
}

impl From<Gone> for Stop {
    fn from(_: Gone) -> Self {
        Stop::Gone
    }
}

impl From<RangeError> for Stop {
    fn from(e: RangeError) -> Self {
        Stop::Failed(Box::new(e))
    }
}

async fn run(store: &StoreHandle, req: &RangeFeedRequest, tx: &FeedSender) -> Result<(), RangeError> {
    match follow(store, req, tx).await {
        Ok(()) | Err(Stop::Gone) => Ok(()),
        Err(Stop::Failed(e)) => Err(*e),
    }
}

pub fn history_gone(message: String) -> RangeError {
    errors::err(Kind::HistoryGone, message)
}

/// The error when the range no longer covers the span: the gateway looks it up again.
fn span_moved(desc: &RangeDescriptor) -> RangeError {
    let mut e = errors::key_not_in_range(desc);
    e.message = format!("range {} changed (split, merge or membership); the feed resumes on its new layout", desc.id);
    e
}

fn check_span(desc: &RangeDescriptor, req: &RangeFeedRequest) -> Result<(), RangeError> {
    let within_start = req.start.as_slice() >= desc.start.as_slice();
    let within_end = desc.end.is_empty() || (!req.end.is_empty() && req.end <= desc.end);
    if !within_start || !within_end {
        return Err(span_moved(desc));
    }
    super::apply::check_tables_live(desc, std::iter::once(req.start.as_slice()))
}

async fn follow(store: &StoreHandle, req: &RangeFeedRequest, tx: &FeedSender) -> Result<(), Stop> {
    let range_id = req.range_id;
    let asked_from = req.from_version.as_ref().map(Version::from);
    let tap = Tap::new(TAP_LIMIT_BYTES);
    let pin = asked_from.map(|_| mvcc::data_span(&req.start, &req.end));
    let start = store
        .ask(|reply| StoreMsg::RegisterFeed { range_id, tap: tap.clone(), pin, reply })
        .await
        .map_err(Stop::from)?;
    check_span(&start.desc, req)?;
    let from = asked_from.unwrap_or(start.last_version);
    let filter = Filter { start: req.start.clone(), end: req.end.clone(), user_prefix: req.user_prefix.clone(), from };
    let mut sent_resolved = from;
    if from < start.last_version && !sabotage::active(Sabotage::FeedSkipCatchUp) {
        store.engine.mvcc_gc().check_readable(from, start.last_version).map_err(|e| {
            history_gone(format!(
                "range {range_id}: changes above version {from} are no longer all held here; {}",
                e.replace("start the scan again without a page token", "subscribe again from a later version")
            ))
        })?;
        if let Some(view) = start.view {
            catch_up(store, view, &filter, start.last_version, req.with_prev_value, tx).await?;
        }
    }
    let mut resolved = start.last_version.max(from);
    if resolved > sent_resolved {
        send(tx, Vec::new(), Some(resolved)).await?;
        sent_resolved = resolved;
    }
    let interval = Duration::from_millis(match req.resolved_interval_ms as u64 {
        0 => DEFAULT_RESOLVED_INTERVAL_MS,
        ms => ms.max(MIN_RESOLVED_INTERVAL_MS),
    });
    let mut expected_index = start.applied_index;
    let mut last_applied = crate::clock::now();
    // An empty write in flight to move an idle range's version; its outcome comes back here.
    let (nudged_tx, mut nudged_rx) = mpsc::channel::<Result<(), RangeError>>(1);
    let mut nudging = false;
    loop {
        // Biased: a fixed order, so that a simulation replays exactly.
        tokio::select! {
            biased;
            _ = tap.notify.notified() => {}
            _ = tokio::time::sleep(interval / 2) => {}
            _ = tx.closed() => return Err(Stop::Gone),
            Some(outcome) = nudged_rx.recv() => {
                nudging = false;
                // Anything else (no leader yet, a full queue) is tried again later.
                if let Err(e) = outcome {
                    if errors::kind_of(&e) == Kind::RangeNotFound {
                        return Err(e.into());
                    }
                }
            }
        }
        let items = match tap.drain() {
            Drained::Ended(why) => return Err(errors::unavailable(format!("range {range_id}: {why}")).into()),
            Drained::Items(items) => items,
        };
        let mut events = Vec::new();
        for item in items {
            if item.after_index != expected_index {
                return Err(errors::unavailable(format!(
                    "range {range_id}: the feed expected the batch after index {expected_index} and got one after {}",
                    item.after_index
                ))
                .into());
            }
            expected_index = item.index;
            last_applied = crate::clock::now();
            for c in item.changes.iter().filter(|c| filter.wants(&c.key, c.version)) {
                events.push(event_of(store, c, req.with_prev_value));
            }
            if item.desc_changed {
                // What the batch applied before its split, merge or membership change
                // is this span's; what comes after may not be.
                send_events(tx, events, None).await?;
                return Err(span_moved(&store_desc(store, range_id).unwrap_or(start.desc.clone())).into());
            }
            resolved = resolved.max(item.last_version);
        }
        if sabotage::active(Sabotage::FeedResolvedFromClock) {
            resolved = resolved.max(store.hlc.now());
        }
        let advance = (resolved > sent_resolved).then_some(resolved);
        if !events.is_empty() || advance.is_some() {
            send_events(tx, events, advance).await?;
            sent_resolved = resolved;
        }
        if !nudging && crate::clock::elapsed(last_applied) >= interval {
            nudging = true;
            let (st, done) = (store.clone(), nudged_tx.clone());
            tokio::spawn(async move {
                let _ = done.send(propose_empty_write(st, range_id).await).await;
            });
        }
    }
}

fn store_desc(store: &StoreHandle, range_id: u64) -> Option<RangeDescriptor> {
    store.registry.read().get(&range_id).map(|r| r.desc())
}

/// Moves an idle range's version forward: an empty write applies nothing but a
/// new, higher last version, which the feeds then report as resolved.
async fn propose_empty_write(store: StoreHandle, range_id: u64) -> Result<(), RangeError> {
    let cmd = RaftCommand {
        cmd: Some(raft_command::Cmd::Write(WriteBatch { mutations: Vec::new() })),
        // A request id lets a follower forward it to its leader.
        request_id: [b"feed-".as_slice(), &rand::random::<[u8; 16]>()].concat(),
        ..Default::default()
    };
    store.ask(|reply| StoreMsg::Command { range_id, epoch: None, cmd, reply }).await.map(|_| ())
}

/// Which changes the consumer asked for.
#[derive(Clone)]
struct Filter {
    start: Vec<u8>,
    end: Vec<u8>,
    user_prefix: Vec<u8>,
    from: Version,
}

impl Filter {
    fn wants(&self, key: &[u8], version: Version) -> bool {
        version > self.from
            && keys::in_range(key, &self.start, &self.end)
            // Only hash tables ask for a user prefix: it follows table id and slot.
            && (self.user_prefix.is_empty() || keys::user_key(key, true).starts_with(&self.user_prefix))
    }
}

/// The version just below `v`, for reading what a change replaced.
fn just_below(v: Version) -> Version {
    match (v.node_id, v.logical, v.wall_ns) {
        (n, _, _) if n > 0 => Version { node_id: n - 1, ..v },
        (_, l, _) if l > 0 => Version { logical: l - 1, node_id: u32::MAX, ..v },
        (_, _, w) => Version { wall_ns: w.saturating_sub(1), logical: u32::MAX, node_id: u32::MAX },
    }
}

fn event_of(store: &StoreHandle, c: &FeedChange, with_prev: bool) -> ChangeEvent {
    let mut e = match &c.value {
        Some(l) => ChangeEvent {
            key: c.key.clone(),
            value: l.value.clone(),
            kind: l.kind.into(),
            expires_at_ms: l.expires_at_ms,
            ..Default::default()
        },
        None => ChangeEvent { key: c.key.clone(), deleted: true, ..Default::default() },
    };
    e.version = Some(c.version.into());
    if with_prev {
        add_prev(store, &mut e, c.version);
    }
    e
}

/// What the key held just before `version`, judged live at that version's time.
fn add_prev(store: &StoreHandle, e: &mut ChangeEvent, version: Version) {
    let at_ms = version.wall_ns / 1_000_000;
    if let Some(prev) = mvcc::get_live(&store.engine, &e.key, just_below(version), at_ms) {
        e.has_prev = true;
        e.prev_value = prev.value;
        e.prev_kind = prev.kind.into();
    }
}

async fn send(tx: &FeedSender, events: Vec<ChangeEvent>, resolved: Option<Version>) -> Result<(), Gone> {
    let msg = RangeFeedMessage { error: None, events, resolved: resolved.map(Into::into) };
    tx.send(Ok(msg)).await.map_err(|_| Gone)
}

/// Sends events in bounded messages, the resolved version with the last.
async fn send_events(tx: &FeedSender, mut events: Vec<ChangeEvent>, resolved: Option<Version>) -> Result<(), Gone> {
    while events.len() > EVENTS_PER_MESSAGE {
        let rest = events.split_off(EVENTS_PER_MESSAGE);
        send(tx, std::mem::replace(&mut events, rest), None).await?;
    }
    if !events.is_empty() || resolved.is_some() {
        send(tx, events, resolved).await?;
    }
    Ok(())
}

/// Sends every change of the span in (filter.from, upto] from the pinned view,
/// each key's changes oldest first.
async fn catch_up(
    store: &StoreHandle,
    view: PinnedView,
    filter: &Filter,
    upto: Version,
    with_prev: bool,
    tx: &FeedSender,
) -> Result<(), Stop> {
    let job_filter = filter.clone();
    let st = store.clone();
    if crate::clock::single_threaded() {
        // A simulation's runtime: scan inline (its ranges are small), then send.
        let mut out = Vec::new();
        scan_history(&st, view, &job_filter, upto, with_prev, &mut |m| {
            out.push(m);
            true
        })?;
        for m in out {
            tx.send(Ok(m)).await.map_err(|_| Gone)?;
        }
        return Ok(());
    }
    let out = tx.clone();
    let job = move || scan_history(&st, view, &job_filter, upto, with_prev, &mut |m| out.blocking_send(Ok(m)).is_ok());
    match tokio::task::spawn_blocking(job).await {
        Ok(r) => r,
        Err(e) => Err(errors::unavailable(format!("catch-up scan failed: {e}")).into()),
    }
}

/// One key's versions in the window, newest first as stored.
struct KeyHistory {
    key_part: Vec<u8>,
    versions: Vec<(Version, Vec<u8>)>,
    bytes: usize,
}

fn scan_history(
    store: &StoreHandle,
    mut view: PinnedView,
    filter: &Filter,
    upto: Version,
    with_prev: bool,
    emit: &mut dyn FnMut(RangeFeedMessage) -> bool,
) -> Result<(), Stop> {
    let mut batch: Vec<ChangeEvent> = Vec::new();
    let mut current: Option<KeyHistory> = None;
    let mut failure: Option<Stop> = None;
    let mut flush_key = |h: KeyHistory, batch: &mut Vec<ChangeEvent>| -> Result<(), Stop> {
        let Some((key, _)) = h.versions.first().and_then(|(v, _)| {
            let mut stored = h.key_part.clone();
            stored.extend_from_slice(&v.to_bytes());
            mvcc_keys::decode(&stored)
        }) else {
            return Ok(());
        };
        for (version, raw) in h.versions.into_iter().rev() {
            if !filter.wants(&key, version) {
                continue;
            }
            let value = match mvcc_keys::Record::decode(&raw) {
                Some(mvcc_keys::Record::Value { value, expires_at_ms, kind }) => {
                    Some(mvcc::Live { value: value.to_vec(), version, expires_at_ms, kind })
                }
                _ => None,
            };
            batch.push(event_of(store, &FeedChange { key: key.clone(), version, value }, with_prev));
            if batch.len() >= EVENTS_PER_MESSAGE && !emit(message(std::mem::take(batch))) {
                return Err(Stop::Gone);
            }
        }
        Ok(())
    };
    let scanned = view.scan(0, |k, v| {
        let Some((part, version)) = mvcc_keys::split_stored(k) else { return true };
        if current.as_ref().is_none_or(|h| h.key_part != part) {
            if let Some(done) = current.take() {
                if let Err(e) = flush_key(done, &mut batch) {
                    failure = Some(e);
                    return false;
                }
            }
            current = Some(KeyHistory { key_part: part.to_vec(), versions: Vec::new(), bytes: 0 });
        }
        if version > filter.from && version <= upto {
            if let Some(h) = current.as_mut() {
                h.bytes += v.len() + 16;
                if h.bytes > MAX_KEY_HISTORY_BYTES {
                    failure = Some(Stop::from(history_gone(format!(
                        "one key holds more than {MAX_KEY_HISTORY_BYTES} bytes of versions above {}; subscribe again \
                         from a later version",
                        filter.from
                    ))));
                    return false;
                }
                h.versions.push((version, v.to_vec()));
            }
        }
        true
    });
    if let Some(e) = failure {
        return Err(e);
    }
    scanned.map_err(|e| Stop::from(errors::unavailable(format!("catch-up scan failed: {e}"))))?;
    if let Some(done) = current.take() {
        flush_key(done, &mut batch)?;
    }
    if !batch.is_empty() && !emit(message(batch)) {
        return Err(Stop::Gone);
    }
    Ok(())
}

fn message(events: Vec<ChangeEvent>) -> RangeFeedMessage {
    RangeFeedMessage { error: None, events, resolved: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn just_below_is_the_next_smaller_version() {
        let v = |w, l, n| Version { wall_ns: w, logical: l, node_id: n };
        assert_eq!(just_below(v(5, 2, 3)), v(5, 2, 2));
        assert_eq!(just_below(v(5, 2, 0)), v(5, 1, u32::MAX));
        assert_eq!(just_below(v(5, 0, 0)), v(4, u32::MAX, u32::MAX));
        for x in [v(5, 2, 3), v(5, 2, 0), v(5, 0, 0)] {
            assert!(just_below(x) < x);
        }
    }
}
