//! The history of a workload, as the checkers see it: what each client asked
//! (`Input`), what it was told (`Outcome`), and when it asked and was told. Also
//! owns `Recorder`, which the chaos tests' clients share to build that history.
//!
//! The model is a register per key holding an optional `u64`. Workloads write
//! unique integers, which is what makes a read attributable to one write.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What a client asked of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    Get,
    Put(u64),
    Delete,
    PutIfAbsent(u64),
    PutIfValue { expected: u64, new: u64 },
    DeleteIfValue { expected: u64 },
}

/// What the system answered, when it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// Answer to `Get`: the value, or `None` if the key was absent.
    Value(Option<u64>),
    /// Answer to `Put`.
    Done,
    /// Answer to `Delete`.
    Deleted { existed: bool },
    /// Answer to the conditional operations: whether the condition held, and so
    /// whether the operation took effect.
    Applied(bool),
}

/// How an operation ended, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok(Output),
    /// Indeterminate (timeout, connection lost, cancelled): the operation may or
    /// may not have taken effect, at any time after its invocation.
    Unknown,
    /// The operation definitely had no effect (e.g. rejected before reaching a
    /// replica). Only report this when that is certain: a wrong `Failed` turns a
    /// correct system into a violation.
    Failed,
}

/// One client operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// Which client issued it. A client must not have two operations in flight
    /// at once; after an `Unknown` outcome a client should continue under a
    /// fresh id, as Jepsen does, though the checkers do not rely on it.
    pub process: u64,
    pub key: String,
    pub input: Input,
    /// Taken before the request could have reached the system.
    pub invoke_ns: u64,
    /// Taken after the answer arrived. Ignored when the outcome is `Unknown`.
    pub complete_ns: u64,
    pub outcome: Outcome,
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Input::Get => write!(f, "get"),
            Input::Put(v) => write!(f, "put({v})"),
            Input::Delete => write!(f, "delete"),
            Input::PutIfAbsent(v) => write!(f, "put-if-absent({v})"),
            Input::PutIfValue { expected, new } => write!(f, "put-if-value({expected} -> {new})"),
            Input::DeleteIfValue { expected } => write!(f, "delete-if-value({expected})"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Output::Value(Some(v)) => write!(f, "read {v}"),
            Output::Value(None) => write!(f, "read absent"),
            Output::Done => write!(f, "done"),
            Output::Deleted { existed: true } => write!(f, "deleted (existed)"),
            Output::Deleted { existed: false } => write!(f, "deleted (was absent)"),
            Output::Applied(true) => write!(f, "applied"),
            Output::Applied(false) => write!(f, "not applied"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(output) => output.fmt(f),
            Outcome::Unknown => write!(f, "unknown"),
            Outcome::Failed => write!(f, "failed"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{} {:?} {} -> {} ", self.process, self.key, self.input, self.outcome)?;
        match self.outcome {
            Outcome::Unknown => write!(f, "[{}.. ns]", self.invoke_ns),
            _ => write!(f, "[{}..{} ns]", self.invoke_ns, self.complete_ns),
        }
    }
}

/// Collects a history from many threads or tasks. Cloning shares the history.
#[derive(Clone, Debug)]
pub struct Recorder {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    epoch: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    // A client that panicked while holding the lock must not cost us the rest of
    // the history, and `Pending::drop` must never panic.
    fn ops(&self) -> MutexGuard<'_, Vec<Operation>> {
        self.ops.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Timestamps are nanoseconds since this call, from a monotonic clock.
    pub fn new() -> Self {
        Recorder { shared: Arc::new(Shared { epoch: Instant::now(), ops: Mutex::new(Vec::new()) }) }
    }

    /// Nanoseconds since the recorder was created, on the clock it stamps with.
    pub fn now_ns(&self) -> u64 {
        self.shared.now_ns()
    }

    /// Call just before sending the request. If the returned `Pending` is dropped
    /// without `complete` (say the client future was cancelled), the operation is
    /// recorded as `Unknown`, since the request may still be applied.
    pub fn invoke(&self, process: u64, key: impl Into<String>, input: Input) -> Pending {
        let invoke_ns = self.shared.now_ns();
        Pending { shared: Some(Arc::clone(&self.shared)), process, key: key.into(), input, invoke_ns }
    }

    /// Call once the answer (or the failure) is in hand.
    pub fn complete(&self, mut pending: Pending, outcome: Outcome) {
        debug_assert!(
            pending.shared.as_ref().is_some_and(|s| Arc::ptr_eq(s, &self.shared)),
            "Pending completed on a different Recorder than the one that invoked it"
        );
        pending.finish(outcome);
    }

    /// Adds an operation timed by the caller's own clock (e.g. a simulator's).
    /// Don't mix it with `invoke`/`complete` in one history: the clocks differ.
    pub fn record(&self, op: Operation) {
        self.shared.ops().push(op);
    }

    /// A snapshot of the history so far, in the order operations ended.
    pub fn operations(&self) -> Vec<Operation> {
        self.shared.ops().clone()
    }
}

/// An invoked operation awaiting its outcome. Dropping it records `Unknown`.
#[must_use = "dropping a Pending records the operation as Unknown"]
#[derive(Debug)]
pub struct Pending {
    // `None` once recorded, so that `Drop` does not record it a second time.
    shared: Option<Arc<Shared>>,
    process: u64,
    key: String,
    input: Input,
    invoke_ns: u64,
}

impl Pending {
    pub fn process(&self) -> u64 {
        self.process
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn input(&self) -> Input {
        self.input
    }

    pub fn invoke_ns(&self) -> u64 {
        self.invoke_ns
    }

    fn finish(&mut self, outcome: Outcome) {
        let Some(shared) = self.shared.take() else { return };
        // Stamped after the answer arrived: taking the time any earlier could
        // make an operation look finished before one it actually overlapped.
        let complete_ns = shared.now_ns();
        let op = Operation {
            process: self.process,
            key: std::mem::take(&mut self.key),
            input: self.input,
            invoke_ns: self.invoke_ns,
            complete_ns,
            outcome,
        };
        shared.ops().push(op);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Outcome::Unknown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_records_times_in_order() {
        let rec = Recorder::new();
        let p = rec.invoke(1, "a", Input::Put(5));
        std::thread::sleep(std::time::Duration::from_millis(1));
        rec.complete(p, Outcome::Ok(Output::Done));
        let q = rec.invoke(2, "b", Input::Get);
        rec.complete(q, Outcome::Ok(Output::Value(Some(5))));

        let ops = rec.operations();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].process, 1);
        assert_eq!(ops[0].key, "a");
        assert_eq!(ops[0].input, Input::Put(5));
        assert_eq!(ops[0].outcome, Outcome::Ok(Output::Done));
        assert!(ops[0].complete_ns >= ops[0].invoke_ns + 1_000_000);
        // The second op began after the first ended, so it must not look concurrent.
        assert!(ops[1].invoke_ns >= ops[0].complete_ns);
        assert_eq!(ops[1].outcome, Outcome::Ok(Output::Value(Some(5))));
    }

    #[test]
    fn dropped_pending_is_recorded_as_unknown_once() {
        let rec = Recorder::new();
        {
            let _p = rec.invoke(7, "k", Input::Delete);
        }
        let ops = rec.operations();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].process, 7);
        assert_eq!(ops[0].input, Input::Delete);
        assert_eq!(ops[0].outcome, Outcome::Unknown);

        let p = rec.invoke(8, "k", Input::Get);
        rec.complete(p, Outcome::Failed);
        assert_eq!(rec.operations().len(), 2, "complete must not also record on drop");
    }

    #[test]
    fn shared_across_threads() {
        let rec = Recorder::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let rec = rec.clone();
                s.spawn(move || {
                    for i in 0..50 {
                        let p = rec.invoke(t, format!("k{}", i % 3), Input::Put(t * 1000 + i));
                        rec.complete(p, Outcome::Ok(Output::Done));
                    }
                });
            }
        });
        let ops = rec.operations();
        assert_eq!(ops.len(), 200);
        for t in 0..4 {
            let mine: Vec<_> = ops.iter().filter(|o| o.process == t).collect();
            assert_eq!(mine.len(), 50);
            for w in mine.windows(2) {
                assert!(w[0].complete_ns <= w[1].invoke_ns);
            }
        }
    }

    #[test]
    fn record_keeps_callers_times() {
        let rec = Recorder::new();
        let op = Operation {
            process: 3,
            key: "x".into(),
            input: Input::PutIfValue { expected: 1, new: 2 },
            invoke_ns: 10,
            complete_ns: 20,
            outcome: Outcome::Ok(Output::Applied(true)),
        };
        rec.record(op.clone());
        assert_eq!(rec.operations(), vec![op]);
    }

    #[test]
    fn pending_is_send_for_tokio_tasks() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Pending>();
        assert_send::<Recorder>();
        fn assert_sync<T: Sync>() {}
        assert_sync::<Recorder>();
    }
}
