//! Generates snapshots off the store thread. The store pins a range at its
//! applied index and hands the job here; a worker writes the SST files and
//! leaves the finished snapshot for the store to collect on its next turn
//! (`finished`); the store offers it to raft-rs the next time a follower needs one. At most `threads` snapshots are built at
//! once and a few more wait; beyond that a request is refused and raft-rs asks
//! again later. Workers also remove snapshot files nobody came back for.
//!
//! The simulator's disk has no worker: its snapshots (records inline) are built
//! at once on the store's turn, which keeps a simulated run deterministic.

use super::snapshot::{self, GenerateJob};
use crate::storage::Engine;
use parking_lot::Mutex;
use raft::eraftpb::Snapshot;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Jobs waiting for a worker, beyond those being built.
const QUEUED_JOBS: usize = 8;
/// How often workers look for abandoned snapshot files, and how old those are.
const JANITOR_EVERY: Duration = Duration::from_secs(60);
const ABANDONED_AFTER: Duration = Duration::from_secs(30 * 60);

pub enum Submitted {
    /// Being built; the store hears `SnapshotGenerated` when it is done.
    Queued,
    /// Built already (the simulator's disk).
    Done(Snapshot),
    /// Every worker busy and the queue full, or generation failed at once: ask later.
    Refused,
}

/// A finished job: the range, and its snapshot (`None`: generation failed).
pub type Finished = (u64, Option<Snapshot>);

pub struct SnapshotWorker {
    /// `None` on the simulator's disk: jobs run inline.
    jobs: Option<SyncSender<GenerateJob>>,
    /// Results wait here rather than in the store's queue: workers holding a
    /// sender of that queue would keep a stopped store's loop from ever ending.
    finished: Mutex<Option<Receiver<Finished>>>,
}

impl SnapshotWorker {
    /// Starts `threads` workers writing under the engine's snapshot directory;
    /// inline generation when the engine has none (the simulator's disk).
    pub fn start(engine: &Engine, threads: usize) -> std::io::Result<Arc<Self>> {
        let Some(root) = engine.snapshot_dir().map(Path::to_path_buf) else {
            return Ok(Arc::new(SnapshotWorker { jobs: None, finished: Mutex::new(None) }));
        };
        let (tx, rx) = sync_channel::<GenerateJob>(QUEUED_JOBS);
        // Every queued or running job can finish without waiting for the store.
        let (done_tx, done_rx) = sync_channel::<Finished>(QUEUED_JOBS + threads.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let (rx, done, root) = (rx.clone(), done_tx.clone(), root.clone());
            std::thread::Builder::new().name(format!("snap-gen-{i}")).spawn(move || work(&rx, &done, &root))?;
        }
        Ok(Arc::new(SnapshotWorker { jobs: Some(tx), finished: Mutex::new(Some(done_rx)) }))
    }

    /// The snapshots finished since the last call.
    pub fn finished(&self) -> Vec<Finished> {
        match self.finished.lock().as_ref() {
            Some(rx) => rx.try_iter().collect(),
            None => Vec::new(),
        }
    }

    pub fn submit(&self, job: GenerateJob) -> Submitted {
        let Some(jobs) = &self.jobs else {
            return match snapshot::generate(job, None) {
                Ok(snap) => Submitted::Done(snap),
                Err(e) => {
                    tracing::warn!("snapshot generation failed: {e:#}");
                    Submitted::Refused
                }
            };
        };
        match jobs.try_send(job) {
            Ok(()) => Submitted::Queued,
            Err(TrySendError::Full(_)) => {
                metrics::counter!("cairn_snapshots_deferred_total").increment(1);
                Submitted::Refused
            }
            Err(TrySendError::Disconnected(_)) => Submitted::Refused,
        }
    }
}

fn work(rx: &Mutex<Receiver<GenerateJob>>, done: &SyncSender<Finished>, root: &Path) {
    loop {
        // One worker waits on the queue at a time; the others wait on the lock.
        let next = rx.lock().recv_timeout(JANITOR_EVERY);
        let job = match next {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                remove_abandoned(root);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let range_id = job.range_id;
        let started = crate::clock::os_now();
        let snapshot = match snapshot::generate(job, Some(root)) {
            Ok(snap) => {
                let took = crate::clock::os_now().saturating_duration_since(started);
                metrics::histogram!("cairn_snapshot_generate_seconds").record(took.as_secs_f64());
                tracing::info!(range_id, took_ms = took.as_millis() as u64, "snapshot generated");
                Some(snap)
            }
            Err(e) => {
                tracing::warn!(range_id, "snapshot generation failed: {e:#}");
                None
            }
        };
        if done.send((range_id, snapshot)).is_err() {
            return; // the store stopped
        }
    }
}

/// Removes snapshot directories untouched for long: generated ones no follower
/// came back for, received ones whose message never reached the store, and
/// partial receives a broken stream left behind.
fn remove_abandoned(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if old {
            let path: PathBuf = e.path();
            tracing::info!("removing abandoned snapshot files {}", path.display());
            let _ = std::fs::remove_dir_all(path);
        }
    }
}
