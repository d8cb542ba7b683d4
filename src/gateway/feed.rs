//! A table's change feed (the client's `Subscribe`), stitched from range feeds.
//!
//! The subscribed span is cut into pieces, one per range, each followed by a
//! worker task that opens a range feed on the range's leader and, whenever
//! that feed ends (leader or node gone, split, merge, replica moved, the range
//! feed fell behind), looks the range up again and reopens it from the last
//! version the piece resolved. A worker that finds its range ending before its
//! piece does hands the rest to a new piece with the same resolved version.
//!
//! The coordinator keeps, per piece, the resolved version and the changes sent
//! above it, so that a reopened range feed's replay is not sent twice: within
//! one stream each key's changes go out once, in version order. The table's
//! resolved version is the least of its pieces'; it is sent when it grows.
//! What waits for the consumer is bounded: past `feed_buffer_events` changes or
//! `feed_buffer_bytes`, the stream ends with RESOURCE_EXHAUSTED.

use super::{Gateway, Target};
use crate::hlc::Version;
use crate::keys::{self, meta};
use crate::raftstore::errors;
use cairn_proto::internal::range_error::Kind;
use cairn_proto::internal::{RangeFeedMessage, RangeFeedRequest, RangeRecord};
use cairn_proto::kv::{ChangeEvent, SubscribeResponse};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

pub struct FeedParams {
    pub start: Vec<u8>,
    /// Empty: to the end of the keyspace.
    pub end: Vec<u8>,
    /// Hash tables only: the user-key prefix every range filters by.
    pub user_prefix: Vec<u8>,
    /// Changes above this version are sent.
    pub from: Version,
    pub with_prev: bool,
    pub resolved_interval_ms: u32,
    /// Whether keys carry a slot (hash tables), for turning them into user keys.
    pub hashed: bool,
}

/// Changes per message to the consumer.
const EVENTS_PER_RESPONSE: usize = 1024;

pub fn subscribe(gw: Arc<Gateway>, p: FeedParams) -> mpsc::Receiver<Result<SubscribeResponse, Status>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move { Coordinator::new(gw, p, tx).run().await });
    rx
}

/// What a worker tells the coordinator, about the piece starting at `piece`.
enum WorkerMsg {
    Events {
        piece: Vec<u8>,
        events: Vec<ChangeEvent>,
    },
    Resolved {
        piece: Vec<u8>,
        version: Version,
    },
    /// The piece's range ends at `at`: the worker keeps `[piece, at)`.
    Narrowed {
        piece: Vec<u8>,
        at: Vec<u8>,
    },
    Failed(Status),
}

struct Piece {
    end: Vec<u8>,
    resolved: Version,
    /// Each key's newest change sent above `resolved`.
    sent_above: HashMap<Vec<u8>, Version>,
}

/// Aborts the worker tasks when the stream ends.
struct Workers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

struct Coordinator {
    gw: Arc<Gateway>,
    p: Arc<FeedParams>,
    tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
    pieces: BTreeMap<Vec<u8>, Piece>,
    workers: Workers,
    worker_tx: mpsc::Sender<WorkerMsg>,
    worker_rx: mpsc::Receiver<WorkerMsg>,
    outbox: VecDeque<Result<SubscribeResponse, Status>>,
    waiting_events: usize,
    waiting_bytes: usize,
    sent_resolved: Version,
    /// Set once the stream has failed: only the outbox is still delivered.
    finished: bool,
}

impl Coordinator {
    fn new(gw: Arc<Gateway>, p: FeedParams, tx: mpsc::Sender<Result<SubscribeResponse, Status>>) -> Self {
        let (worker_tx, worker_rx) = mpsc::channel(256);
        Coordinator {
            gw,
            sent_resolved: p.from,
            p: Arc::new(p),
            tx,
            pieces: BTreeMap::new(),
            workers: Workers(Vec::new()),
            worker_tx,
            worker_rx,
            outbox: VecDeque::new(),
            waiting_events: 0,
            waiting_bytes: 0,
            finished: false,
        }
    }

    async fn run(mut self) {
        let (start, end, from) = (self.p.start.clone(), self.p.end.clone(), self.p.from);
        self.add_piece(start, end, from, HashMap::new());
        loop {
            if self.finished && self.outbox.is_empty() {
                return;
            }
            enum Next {
                Worker(Option<WorkerMsg>),
                Deliver(Result<mpsc::OwnedPermit<Result<SubscribeResponse, Status>>, ()>),
                ConsumerGone,
            }
            let has_waiting = !self.outbox.is_empty();
            // Biased (a fixed order, not a random one): a simulation replays exactly. Delivering
            // first keeps the outbox short; it cannot starve the workers, as it empties.
            let next = tokio::select! {
                biased;
                permit = self.tx.clone().reserve_owned(), if has_waiting => Next::Deliver(permit.map_err(|_| ())),
                msg = self.worker_rx.recv(), if !self.finished => Next::Worker(msg),
                _ = self.tx.closed() => Next::ConsumerGone,
            };
            match next {
                Next::Worker(Some(m)) => self.handle(m),
                Next::Worker(None) | Next::ConsumerGone | Next::Deliver(Err(())) => return,
                Next::Deliver(Ok(permit)) => {
                    if let Some(msg) = self.outbox.pop_front() {
                        if let Ok(r) = &msg {
                            self.waiting_events -= r.events.len();
                            self.waiting_bytes -= r.events.iter().map(event_bytes).sum::<usize>();
                        }
                        permit.send(msg);
                    }
                }
            }
        }
    }

    fn add_piece(&mut self, start: Vec<u8>, end: Vec<u8>, resolved: Version, sent_above: HashMap<Vec<u8>, Version>) {
        self.pieces.insert(start.clone(), Piece { end: end.clone(), resolved, sent_above });
        let worker = follow_piece(self.gw.clone(), self.p.clone(), start, end, resolved, self.worker_tx.clone());
        self.workers.0.push(tokio::spawn(worker));
    }

    fn handle(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Events { piece, events } => self.take_events(&piece, events),
            WorkerMsg::Resolved { piece, version } => {
                if let Some(p) = self.pieces.get_mut(&piece) {
                    if version > p.resolved {
                        p.resolved = version;
                        p.sent_above.retain(|_, v| *v > version);
                    }
                }
                self.send_resolved();
            }
            WorkerMsg::Narrowed { piece, at } => {
                let Some(p) = self.pieces.get_mut(&piece) else { return };
                if at <= piece || (!p.end.is_empty() && at >= p.end) {
                    return;
                }
                let rest_end = std::mem::replace(&mut p.end, at.clone());
                let resolved = p.resolved;
                let (moved, kept): (HashMap<_, _>, HashMap<_, _>) =
                    std::mem::take(&mut p.sent_above).into_iter().partition(|(k, _)| *k >= at);
                p.sent_above = kept;
                self.add_piece(at, rest_end, resolved, moved);
            }
            WorkerMsg::Failed(status) => self.fail(status),
        }
    }

    fn take_events(&mut self, piece: &[u8], events: Vec<ChangeEvent>) {
        let Some(p) = self.pieces.get_mut(piece) else { return };
        let mut fresh = Vec::with_capacity(events.len());
        for mut e in events {
            let version = e.version.as_ref().map(Version::from).unwrap_or_default();
            // Already covered by the piece's resolved version, or sent before a reopen.
            if version <= p.resolved || p.sent_above.get(&e.key).is_some_and(|v| *v >= version) {
                continue;
            }
            p.sent_above.insert(e.key.clone(), version);
            e.key = keys::user_key(&e.key, self.p.hashed).to_vec();
            fresh.push(e);
        }
        self.queue(fresh, None);
    }

    /// The table's resolved version: the least of its pieces'.
    fn send_resolved(&mut self) {
        let Some(least) = self.pieces.values().map(|p| p.resolved).min() else { return };
        if least > self.sent_resolved {
            self.sent_resolved = least;
            self.queue(Vec::new(), Some(least));
        }
    }

    fn queue(&mut self, events: Vec<ChangeEvent>, resolved: Option<Version>) {
        if self.finished {
            return;
        }
        self.waiting_events += events.len();
        self.waiting_bytes += events.iter().map(event_bytes).sum::<usize>();
        let limits = &self.gw.limits;
        if self.waiting_events > limits.feed_buffer_events || self.waiting_bytes > limits.feed_buffer_bytes {
            let status = Status::resource_exhausted(format!(
                "the consumer reads too slowly: more than {} changes or {} bytes waited for it \
                 (feed_buffer_events, feed_buffer_bytes); subscribe again from the last resolved version ({})",
                limits.feed_buffer_events, limits.feed_buffer_bytes, self.sent_resolved
            ));
            self.outbox.clear();
            self.waiting_events = 0;
            self.waiting_bytes = 0;
            self.fail(status);
            return;
        }
        // Append to the last waiting message while it has room: fewer, fuller messages.
        if let Some(Ok(last)) = self.outbox.back_mut() {
            if last.resolved.is_none() && last.events.len() + events.len() <= EVENTS_PER_RESPONSE {
                last.events.extend(events);
                last.resolved = resolved.map(Into::into);
                return;
            }
        }
        let mut events = events;
        while events.len() > EVENTS_PER_RESPONSE {
            let rest = events.split_off(EVENTS_PER_RESPONSE);
            let full = std::mem::replace(&mut events, rest);
            self.outbox.push_back(Ok(SubscribeResponse { events: full, resolved: None }));
        }
        if !events.is_empty() || resolved.is_some() {
            self.outbox.push_back(Ok(SubscribeResponse { events, resolved: resolved.map(Into::into) }));
        }
    }

    fn fail(&mut self, status: Status) {
        self.finished = true;
        self.workers.0.iter().for_each(|h| h.abort());
        self.outbox.push_back(Err(status));
    }
}

fn event_bytes(e: &ChangeEvent) -> usize {
    e.key.len() + e.value.len() + e.prev_value.len() + 48
}

/// Follows one piece of the span for as long as the stream lasts.
async fn follow_piece(
    gw: Arc<Gateway>,
    p: Arc<FeedParams>,
    start: Vec<u8>,
    mut end: Vec<u8>,
    mut from: Version,
    out: mpsc::Sender<WorkerMsg>,
) {
    let mut attempt = 0u64;
    loop {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis((20 * attempt).min(500))).await;
        }
        attempt += 1;
        let rec: RangeRecord = match gw.locate(&Target::Key(start.clone())).await {
            Ok(r) => r,
            Err(_) => {
                if !meta::is_meta_key(&start) {
                    let _ = gw.refresh_directory().await;
                }
                continue;
            }
        };
        let Some(desc) = rec.desc.clone() else { continue };
        if !keys::in_range(&start, &desc.start, &desc.end) {
            let _ = gw.refresh_directory().await;
            continue;
        }
        if !desc.end.is_empty() && (end.is_empty() || desc.end < end) {
            if out.send(WorkerMsg::Narrowed { piece: start.clone(), at: desc.end.clone() }).await.is_err() {
                return;
            }
            end = desc.end.clone();
        }
        let voters: Vec<u64> = desc.replicas.iter().filter(|r| !r.learner).map(|r| r.node_id).collect();
        if voters.is_empty() {
            continue;
        }
        // The leader publishes first; any voter would do, as every replica applies the same log.
        let node = if rec.leader_node_id != 0 && voters.contains(&rec.leader_node_id) {
            rec.leader_node_id
        } else {
            voters[attempt as usize % voters.len()]
        };
        let req = RangeFeedRequest {
            range_id: desc.id,
            start: start.clone(),
            end: end.clone(),
            from_version: Some(from.into()),
            with_prev_value: p.with_prev,
            user_prefix: p.user_prefix.clone(),
            resolved_interval_ms: p.resolved_interval_ms,
        };
        let mut stream = match gw.open_range_feed(node, req).await {
            Ok(rx) => rx,
            Err(_) => {
                gw.dir_set_leader(desc.id, 0);
                continue;
            }
        };
        while let Some(msg) = stream.recv().await {
            let Ok(RangeFeedMessage { error, events, resolved }) = msg else { break };
            if let Some(e) = error {
                match errors::kind_of(&e) {
                    Kind::HistoryGone => {
                        let _ = out.send(WorkerMsg::Failed(Status::out_of_range(e.message))).await;
                        return;
                    }
                    Kind::Invalid | Kind::TableDropped => {
                        let _ = out.send(WorkerMsg::Failed(super::status_of(&e))).await;
                        return;
                    }
                    Kind::NotLeader => gw.dir_set_leader(desc.id, e.leader_hint),
                    Kind::EpochMismatch | Kind::KeyNotInRange | Kind::RangeNotFound => {
                        if let Some(d) = e.desc {
                            gw.learn_route(RangeRecord { desc: Some(d), leader_node_id: node, ..Default::default() });
                        }
                        let _ = gw.refresh_directory().await;
                    }
                    _ => {}
                }
                break;
            }
            attempt = 0;
            if !events.is_empty() && out.send(WorkerMsg::Events { piece: start.clone(), events }).await.is_err() {
                return;
            }
            if let Some(v) = resolved.as_ref().map(Version::from) {
                from = from.max(v);
                if out.send(WorkerMsg::Resolved { piece: start.clone(), version: v }).await.is_err() {
                    return;
                }
            }
        }
        attempt += 1;
    }
}
