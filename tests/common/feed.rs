//! Change-feed helpers for tests: a consumer that records what a Subscribe
//! stream delivers as a `cairn_check` session, and writers that record each
//! write's outcome, for `cairn_check::feed_violations`.

use super::client_at;
use super::register::write_may_have_applied;
use cairn_check::{FeedRecord, FeedSession, FeedVersion, FeedWrite, WriteOutcome};
use cairn_proto::kv::{DeleteRequest, PutRequest, SubscribeRequest, Version};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn fv(v: &Version) -> FeedVersion {
    (v.wall_ns, v.logical, v.node_id)
}

pub fn pv(v: FeedVersion) -> Version {
    Version { wall_ns: v.0, logical: v.1, node_id: v.2 }
}

/// One consumer session in progress: what it received so far, shared with the test.
#[derive(Clone)]
pub struct Recording(pub Arc<Mutex<FeedSession>>);

impl Recording {
    pub fn last_resolved(&self) -> Option<FeedVersion> {
        self.0.lock().records.iter().rev().find_map(|r| match r {
            FeedRecord::Resolved(v) => Some(*v),
            _ => None,
        })
    }

    pub fn events(&self) -> usize {
        self.0.lock().records.iter().filter(|r| matches!(r, FeedRecord::Event { .. })).count()
    }

    pub fn session(&self) -> FeedSession {
        self.0.lock().clone()
    }
}

/// Subscribes to `table` through `addr` from `from` and records until the stream
/// ends or the task is aborted. Returns the stream's final error, if any.
pub fn consume(
    addr: &str,
    table: &str,
    prefix: &[u8],
    from: Option<FeedVersion>,
) -> (Recording, tokio::task::JoinHandle<Option<tonic::Status>>) {
    let rec = Recording(Arc::new(Mutex::new(FeedSession { from, records: Vec::new() })));
    let out = rec.clone();
    let mut c = client_at(addr);
    let req = SubscribeRequest {
        table: table.into(),
        prefix: prefix.to_vec(),
        from_version: from.map(pv),
        with_prev_value: false,
        resolved_interval_ms: 200,
    };
    let task = tokio::spawn(async move {
        let mut stream = match c.subscribe(req).await {
            Ok(s) => s.into_inner(),
            Err(e) => return Some(e),
        };
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    let mut s = out.0.lock();
                    for e in m.events {
                        let version = e.version.as_ref().map(fv).unwrap_or_default();
                        let value = (!e.deleted).then_some(e.value);
                        s.records.push(FeedRecord::Event { key: e.key, version, value });
                    }
                    if let Some(v) = m.resolved.as_ref() {
                        s.records.push(FeedRecord::Resolved(fv(v)));
                    }
                }
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    });
    (rec, task)
}

/// Every write the test's writers attempted, with its outcome.
#[derive(Clone, Default)]
pub struct WriteLog(pub Arc<Mutex<Vec<FeedWrite>>>);

impl WriteLog {
    pub fn max_acked(&self) -> Option<FeedVersion> {
        self.0
            .lock()
            .iter()
            .filter_map(|w| match w.outcome {
                WriteOutcome::Acked(v) => Some(v),
                _ => None,
            })
            .max()
    }

    pub fn acked(&self) -> usize {
        self.0.lock().iter().filter(|w| matches!(w.outcome, WriteOutcome::Acked(_))).count()
    }
}

/// Writes (mostly puts, every 7th a delete) of `keys` distinct keys through the
/// nodes in `addrs` in turn, until `stop` is set, recording each outcome.
pub async fn write_until(
    addrs: Arc<Mutex<Vec<String>>>,
    table: String,
    writer: usize,
    keys: usize,
    log: WriteLog,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut seq = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seq += 1;
        let pick = addrs.lock().clone();
        let mut c = client_at(&pick[(writer + seq) % pick.len()]);
        let key = format!("k{:03}", (writer * 31 + seq) % keys).into_bytes();
        let value = (!seq.is_multiple_of(7)).then(|| format!("w{writer}-{seq}").into_bytes());
        let call = async {
            match &value {
                Some(v) => c
                    .put(PutRequest { table: table.clone(), key: key.clone(), value: v.clone(), ..Default::default() })
                    .await
                    .map(|r| r.into_inner().version),
                None => c
                    .delete(DeleteRequest { table: table.clone(), key: key.clone(), ..Default::default() })
                    .await
                    .map(|r| r.into_inner().version),
            }
        };
        let outcome = match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(Some(v))) => WriteOutcome::Acked(fv(&v)),
            // A delete of an absent key succeeds without writing anything.
            Ok(Ok(None)) => WriteOutcome::Failed,
            Ok(Err(s)) if !write_may_have_applied(&s) => WriteOutcome::Failed,
            _ => WriteOutcome::Unknown,
        };
        let failed = !matches!(outcome, WriteOutcome::Acked(_));
        log.0.lock().push(FeedWrite { key, value, outcome });
        if failed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One consumer, killed and resumed from its last checkpoint now and then,
/// through a different node each time.
pub struct Consumer {
    table: String,
    prefix: Vec<u8>,
    pub sessions: Vec<Recording>,
    task: Option<tokio::task::JoinHandle<Option<tonic::Status>>>,
    checkpoint: Option<FeedVersion>,
    turn: usize,
    pub restarts: usize,
    /// When the feed last made progress (a new resolved version), and which.
    progress: (Instant, Option<FeedVersion>),
    /// A stream without progress for this long is abandoned and resumed elsewhere
    /// (its node may be cut off from the ranges it follows).
    pub stall_after: Duration,
}

impl Consumer {
    pub fn new(table: &str, prefix: &[u8]) -> Self {
        Consumer {
            table: table.into(),
            prefix: prefix.to_vec(),
            sessions: Vec::new(),
            task: None,
            checkpoint: None,
            turn: 0,
            restarts: 0,
            progress: (Instant::now(), None),
            stall_after: Duration::from_secs(8),
        }
    }

    /// Kills the current session (if any) and starts the next from the checkpoint.
    pub fn restart(&mut self, addrs: &[String]) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(r) = self.sessions.last().and_then(Recording::last_resolved) {
            self.checkpoint = Some(r);
        }
        self.turn += 1;
        let addr = &addrs[self.turn % addrs.len()];
        let (rec, task) = consume(addr, &self.table, &self.prefix, self.checkpoint);
        self.sessions.push(rec);
        self.task = Some(task);
        self.restarts += 1;
        self.progress = (Instant::now(), None);
    }

    /// Waits `d`, resuming whenever the stream ends (its node died, say).
    pub async fn tend(&mut self, d: Duration, addrs: &Mutex<Vec<String>>) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let resolved = self.current().last_resolved();
            if resolved != self.progress.1 {
                self.progress = (Instant::now(), resolved);
            }
            let stalled = self.progress.0.elapsed() > self.stall_after;
            if stalled || self.task.as_ref().is_some_and(|t| t.is_finished()) {
                if let Some(Ok(Some(status))) = self.task.take().filter(|t| t.is_finished()).map(futures_ready) {
                    println!("feed stream ended: {}: {}; resuming", status.code(), status.message());
                }
                let a = addrs.lock().clone();
                self.restart(&a);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn current(&self) -> &Recording {
        self.sessions.last().expect("a session")
    }
}

fn futures_ready<T>(t: tokio::task::JoinHandle<T>) -> Result<T, tokio::task::JoinError> {
    futures::executor::block_on(t)
}

/// Waits until `rec` has resolved at or above `v`.
pub async fn wait_resolved(rec: &Recording, v: FeedVersion, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if rec.last_resolved().is_some_and(|r| r >= v) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub fn report(violations: &[cairn_check::FeedViolation]) -> String {
    violations.iter().map(|v| format!("  {v}\n")).collect()
}

/// Four writers through every node while a consumer follows table `f` (created
/// here, in three ranges) from the start; then a second consumer resumes from a
/// checkpoint the first received midway, through another node. Both sessions are
/// checked. Returns (the checkpoint, the last acknowledged version, the writes),
/// or the violations found.
pub async fn resume_scenario(cl: &super::Cluster) -> Result<(FeedVersion, FeedVersion, Vec<FeedWrite>), String> {
    use cairn_check::{feed_violations, unresolved_acked};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut c = cl.client(0).await;
    super::create_table(&mut c, "f", &["k020", "k040"]).await;
    let (rec, _task) = consume(&cl.grpc(1), "f", b"", None);
    // The stream starts "now": once it has resolved, every later write is above it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rec.last_resolved().is_none() {
        if Instant::now() > deadline {
            return Err("no resolved checkpoint within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = WriteLog::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addrs = Arc::new(Mutex::new(vec![cl.grpc(0), cl.grpc(1), cl.grpc(2)]));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(write_until(addrs.clone(), "f".into(), w, 60, log.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let checkpoint = rec.last_resolved().ok_or("no checkpoint during the writes")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let last = log.max_acked().ok_or("no write was acknowledged")?;
    let first = rec.session();
    let writes = log.0.lock().clone();
    let caught_up = wait_resolved(&rec, last, Duration::from_secs(10)).await;
    let v = feed_violations(&writes, std::slice::from_ref(&first));
    if !v.is_empty() || !caught_up {
        return Err(format!("first consumer (caught up: {caught_up}):\n{}", report(&v)));
    }
    let missing = unresolved_acked(&writes, std::slice::from_ref(&rec.session()));
    if missing > 0 {
        return Err(format!("{missing} acknowledged writes above the last resolved version"));
    }
    println!("{} writes acknowledged, {} events delivered", log.acked(), rec.events());

    // A second consumer resumes from the mid-run checkpoint through another node:
    // everything above it comes again, and nothing at or below it.
    let (again, _t2) = consume(&cl.grpc(2), "f", b"", Some(checkpoint));
    let caught_up = wait_resolved(&again, last, Duration::from_secs(10)).await;
    let resumed = again.session();
    let v = feed_violations(&writes, &[rec.session(), resumed.clone()]);
    if !v.is_empty() || !caught_up {
        return Err(format!("resumed consumer (caught up: {caught_up}):\n{}", report(&v)));
    }
    let replayed: Vec<FeedVersion> = resumed
        .records
        .iter()
        .filter_map(|r| match r {
            FeedRecord::Event { version, .. } => Some(*version),
            _ => None,
        })
        .collect();
    if replayed.is_empty() || replayed.iter().any(|v| *v <= checkpoint) {
        return Err("the resumed feed did not replay exactly what is above its checkpoint".into());
    }
    Ok((checkpoint, last, writes))
}
