//! Group commit of scripts, slot by slot.
//!
//! Scripts on one slot cannot overlap: each reads its keys and writes its
//! effects conditioned on what it read, so two at once would conflict. Run one
//! after another, each pays a read and a replicated, fsynced write, and a hot
//! slot (a voucher's quota) is capped at one script per Raft round trip.
//!
//! So while one batch of a slot's scripts is being written, the scripts that
//! arrive queue up; the next batch takes them all (up to `MAX_BATCH_SCRIPTS`),
//! reads the union of their keys in one read, runs them one after another
//! against that one view (each sees the effects of those before it, exactly as
//! if they had run alone in that order), and writes the effects of the whole
//! batch as one Raft command conditioned on every key read. A script that fails
//! leaves nothing behind (its keys are put back as they were before it ran),
//! and sees only the keys it declared. If a key moved before the write applied
//! (a writer on another node), nothing of the batch applied and the whole batch
//! runs again on a fresh read. Every script of a batch gets its answer only
//! after the batch's write is acknowledged.

use super::super::txn::{self, view::View};
use super::super::RespServer;
use super::lua;
use crate::sabotage::{self, Sabotage};
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Scripts one batch runs at most: bounds the batch's read, the time it holds
/// the slot, and the work redone when its write conflicts.
const MAX_BATCH_SCRIPTS: usize = 128;
/// Scripts waiting on one slot at most (each holds a connection's turn, so
/// `max_clients` bounds them already; this is the backstop).
const MAX_QUEUED_SCRIPTS: usize = 10_000;
/// Attempts of one batch whose keys keep changing under it.
const MAX_BATCH_ATTEMPTS: usize = 64;

/// One script waiting for its batch, and where its answer goes.
pub struct Job {
    script: ScriptRun,
    answer: Option<oneshot::Sender<Reply>>,
}

impl Job {
    /// `read_only` (EVAL_RO): a script that changes a key is refused (and changes nothing).
    pub fn new(body: Arc<[u8]>, keys: Arc<[Bytes]>, argv: Arc<[Bytes]>, read_only: bool) -> Job {
        Job { script: ScriptRun { body, keys, argv, read_only }, answer: None }
    }

    fn answer(&mut self, reply: Reply) {
        if let Some(tx) = self.answer.take() {
            // The client may have gone; its answer then has no one to go to.
            let _ = tx.send(reply);
        }
    }
}

/// The scripts waiting on each slot; a slot is present while a worker drains it.
#[derive(Default)]
pub struct ScriptBatcher {
    waiting: parking_lot::Mutex<HashMap<u16, VecDeque<Job>>>,
}

impl ScriptBatcher {
    /// Queues `job` on `slot` (its keys' slot), starting the slot's worker if
    /// none is running, and waits for its answer.
    pub async fn run(&self, srv: &RespServer, slot: u16, mut job: Job) -> Reply {
        let (tx, rx) = oneshot::channel();
        job.answer = Some(tx);
        let start_worker = {
            let mut waiting = self.waiting.lock();
            match waiting.get_mut(&slot) {
                Some(queue) if queue.len() >= MAX_QUEUED_SCRIPTS => {
                    return Reply::Error(format!(
                        "TRYAGAIN more than {MAX_QUEUED_SCRIPTS} scripts wait on this key's slot; nothing was run"
                    ))
                }
                Some(queue) => {
                    queue.push_back(job);
                    false
                }
                None => {
                    waiting.insert(slot, VecDeque::from([job]));
                    true
                }
            }
        };
        if start_worker {
            let Some(server) = srv.me.upgrade() else {
                return Reply::Error("ERR the server is shutting down".into());
            };
            tokio::spawn(async move { drain(&server, slot).await });
        }
        rx.await.unwrap_or_else(|_| Reply::Error("ERR the script's batch was abandoned; nothing was written".into()))
    }

    /// The next batch of `slot`, or `None` (and the slot marked idle) when none waits.
    fn next_batch(&self, slot: u16) -> Option<Vec<Job>> {
        let mut waiting = self.waiting.lock();
        let queue = waiting.get_mut(&slot)?;
        if queue.is_empty() {
            waiting.remove(&slot);
            return None;
        }
        let n = queue.len().min(MAX_BATCH_SCRIPTS);
        Some(queue.drain(..n).collect())
    }
}

/// The slot's worker: runs batches until none waits.
async fn drain(srv: &RespServer, slot: u16) {
    while let Some(mut batch) = srv.script_batches.next_batch(slot) {
        let outcome = run_batch(srv, &batch).await;
        srv.stats.script_batches.fetch_add(1, Ordering::Relaxed);
        srv.stats.batched_scripts.fetch_add(batch.len() as u64, Ordering::Relaxed);
        match outcome {
            Ok(replies) => batch.iter_mut().zip(replies).for_each(|(job, reply)| job.answer(reply)),
            Err(e) => batch.iter_mut().for_each(|job| job.answer(e.clone())),
        }
    }
}

/// Runs `batch` (see the module doc): each script's reply, once the batch's write is acknowledged.
async fn run_batch(srv: &RespServer, batch: &[Job]) -> Result<Vec<Reply>, Reply> {
    let mut keys: Vec<Bytes> = batch.iter().flat_map(|j| j.script.keys.iter().cloned()).collect();
    keys.sort();
    keys.dedup();
    // Transactions (EXEC) on the slot take turns with whole batches.
    let _turn = srv.slot_locks.lock(&keys).await;
    let none_watched = BTreeMap::new();
    let scripts: Arc<[ScriptRun]> = batch.iter().map(|j| j.script.clone()).collect();
    for _ in 0..MAX_BATCH_ATTEMPTS {
        let Some(view) = txn::read_view(srv, &keys, &none_watched).await? else {
            return Err(Reply::Error("ERR a script has no watched keys".into()));
        };
        let (scripts, limits) = (scripts.clone(), srv.gw.limits.clone());
        let ran = crate::clock::blocking(move || {
            let mut view = view;
            let replies: Vec<Reply> = scripts.iter().map(|s| s.run(&mut view, &limits)).collect();
            (view, replies)
        })
        .await;
        let (view, replies) = ran.map_err(|e| Reply::Error(format!("ERR the script's thread failed: {e}")))?;
        if txn::commit(srv, &view).await? {
            return Ok(replies);
        }
        srv.conflict_pause().await;
    }
    Err(Reply::Error(format!(
        "TRYAGAIN the script's keys changed under {MAX_BATCH_ATTEMPTS} attempts in a row; nothing was written"
    )))
}

/// A script with its KEYS and ARGV: what a blocking thread needs to run it.
#[derive(Clone)]
struct ScriptRun {
    body: Arc<[u8]>,
    keys: Arc<[Bytes]>,
    argv: Arc<[Bytes]>,
    /// EVAL_RO: a script that changes a key is refused (and changes nothing).
    read_only: bool,
}

impl ScriptRun {
    /// Runs the script against its own keys of `view`; a script that fails (or a
    /// read-only one that wrote) leaves them as they were.
    fn run(&self, view: &mut View, limits: &cairn_core::limits::Limits) -> Reply {
        let saved = view.scope_to(&self.keys);
        let writes_before = view.writes;
        let outcome = lua::run(&self.body, &self.keys, &self.argv, view, limits, lua::Budget::default());
        let outcome = match outcome {
            Ok(_) if self.read_only && view.writes != writes_before => Err(Reply::Error(
                "ERR Write commands are not allowed from read-only scripts; nothing was written".into(),
            )),
            other => other,
        };
        view.unscope();
        outcome.unwrap_or_else(|e| {
            if !sabotage::active(Sabotage::ScriptBatchKeepsFailed) {
                view.restore(saved);
            }
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::resp::txn::view::Entry;
    use cairn_proto::kv::Version;

    fn script(body: &str, keys: &[&str]) -> ScriptRun {
        ScriptRun {
            body: body.as_bytes().into(),
            keys: keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect(),
            argv: Arc::from(Vec::new()),
            read_only: false,
        }
    }

    #[test]
    fn scripts_of_a_batch_see_those_before_them_and_a_failed_one_leaves_nothing() {
        let limits = cairn_core::limits::Limits::default();
        let mut view = View::new(1_000);
        let version = Version { wall_ns: 7, logical: 0, node_id: 1 };
        view.load(Bytes::from_static(b"{v}n"), Some((Entry::plain(b"1".to_vec()), version)));
        view.load(Bytes::from_static(b"{v}other"), None);
        let runs = [
            script("return redis.call('INCR', KEYS[1])", &["{v}n"]),
            script("redis.call('INCR', KEYS[1]); return redis.call('INCR', 'x', 'y')", &["{v}n"]),
            script("return redis.call('GET', KEYS[1])", &["{v}other"]),
            script("return redis.call('GET', '{v}other')", &["{v}n"]),
            ScriptRun { read_only: true, ..script("return redis.call('INCR', KEYS[1])", &["{v}n"]) },
            script("return redis.call('INCR', KEYS[1])", &["{v}n"]),
        ];
        let replies: Vec<Reply> = runs.iter().map(|r| r.run(&mut view, &limits)).collect();
        assert_eq!(replies[0], Reply::Integer(2));
        assert!(matches!(&replies[1], Reply::Error(e) if e.contains("Wrong number")), "{:?}", replies[1]);
        assert_eq!(replies[2], Reply::Nil);
        assert!(matches!(&replies[3], Reply::Error(e) if e.contains("did not declare")), "{:?}", replies[3]);
        assert!(matches!(&replies[4], Reply::Error(e) if e.contains("read-only")), "{:?}", replies[4]);
        assert_eq!(replies[5], Reply::Integer(3), "the failed scripts' increments were undone");
        let written: Vec<_> = view.effects().into_iter().filter_map(|e| e.change.flatten().map(|c| c.value)).collect();
        assert_eq!(written, vec![b"3".to_vec()]);
    }
}
