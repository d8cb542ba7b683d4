//! Simulated clients and the history they record.
//!
//! Register clients run get/put/delete and the three conditional writes on
//! keys that rotate every few seconds (Jepsen's independent keys, so each
//! key's history stays small enough to check). Unique writers put keys once
//! each, for the lost-write check. Counter clients increment one key, and now
//! and then re-send an increment that was already acknowledged, which must be
//! answered with its first result and not applied again. Every write carries
//! a request id and is retried with it after an ambiguous outcome, as the
//! gateway does; an operation still unresolved at its deadline is unknown.
//!
//! Clients talk to the store loops directly, routing by what the node they
//! picked knows (its replicas' descriptors and leader hints): the gateway's
//! routing over the meta range is not part of the simulation yet.

use super::node::SimNode;
use crate::raftstore::apply::Applied;
use crate::raftstore::errors;
use crate::raftstore::executor;
use crate::raftstore::msg::StoreMsg;
use crate::raftstore::ReplicaShared;
use cairn_check::{Input, Operation, Outcome, Output};
use cairn_proto::internal::range_error::Kind;
use cairn_proto::internal::{
    mutation, raft_command, Mutation, RaftCommand, RangeEpoch, RangeError, ReadRequest, WriteBatch,
};
use cairn_proto::kv::{condition, Condition};
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The counter clients' key.
pub const COUNTER_KEY: &str = "c";

/// The simulated table's id, the prefix of every encoded key.
pub const TABLE_PREFIX: [u8; 4] = [0, 0, 0, 9];
/// How long a register key is in use before clients move to fresh keys.
pub const KEY_GENERATION_MS: u64 = 3_000;
const KEYS_PER_GENERATION: u64 = 4;
const ATTEMPT_TIMEOUT_MS: u64 = 1_000;
const OP_DEADLINE_MS: u64 = 4_000;
/// Some clients are impatient: a quarter of operations give up after this long,
/// which leaves writes in doubt (unknown) for the checkers to reason about.
const SHORT_DEADLINE_MS: u64 = 400;
const RETRY_BACKOFF_MS: u64 = 25;

pub fn encode_key(user_key: &str) -> Vec<u8> {
    let mut k = TABLE_PREFIX.to_vec();
    k.extend_from_slice(user_key.as_bytes());
    k
}

enum Attempt {
    Backoff {
        until_ms: u64,
    },
    Write {
        rx: oneshot::Receiver<Result<Applied, RangeError>>,
        sent_ms: u64,
    },
    Read {
        rx: oneshot::Receiver<Result<(), RangeError>>,
        node: usize,
        range_id: u64,
        epoch: Option<RangeEpoch>,
        sent_ms: u64,
    },
}

enum OpKind {
    Register(Input),
    Unique,
    Increment {
        delta: i64,
    },
    /// Re-sends an acknowledged increment under its request id.
    Resend {
        delta: i64,
        first_result: i64,
    },
}

struct InFlight {
    key: String,
    kind: OpKind,
    invoke_ms: u64,
    deadline_ms: u64,
    request_id: Vec<u8>,
    maybe_applied: bool,
    attempt: Attempt,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Register,
    Unique,
    Counter,
}

struct Client {
    process: u64,
    role: Role,
    op: Option<InFlight>,
    next_op_ms: u64,
    seq: u64,
}

#[derive(Default, Debug, Clone)]
pub struct WorkloadStats {
    pub ok: u64,
    pub unknown: u64,
    pub failed: u64,
    pub retries: u64,
}

/// What the counter clients did.
#[derive(Default, Debug, Clone)]
pub struct CounterLog {
    /// Sum of acknowledged increments.
    pub acknowledged: i64,
    /// Sum of increments that may have been applied (acknowledged or unknown).
    pub attempted: i64,
    /// Acknowledged increments: request id, delta, the counter value answered.
    pub acked: Vec<(Vec<u8>, i64, i64)>,
    pub resends_checked: u64,
    /// Re-sent request ids answered with a different result than the first time.
    pub duplicates: Vec<String>,
}

pub struct Workload {
    rng: StdRng,
    clients: Vec<Client>,
    pub history: Vec<Operation>,
    pub unique_acked: Vec<Vec<u8>>,
    pub counter: CounterLog,
    pub stats: WorkloadStats,
    next_value: u64,
    /// Completed operations in order, for the run's fingerprint.
    pub trace: Vec<(u64, u64, String)>,
}

/// What a client learned from one attempt.
enum Step {
    Pending,
    /// The outcome, and for increments the counter value answered.
    Done(Outcome, i64),
    Retry {
        ambiguous: bool,
    },
}

impl Workload {
    pub fn new(rng: StdRng, register_clients: u64, unique_clients: u64, counter_clients: u64) -> Self {
        let role = |i| match i {
            i if i < register_clients => Role::Register,
            i if i < register_clients + unique_clients => Role::Unique,
            _ => Role::Counter,
        };
        let clients = (0..register_clients + unique_clients + counter_clients)
            .map(|i| Client { process: i, role: role(i), op: None, next_op_ms: 0, seq: 0 })
            .collect();
        Workload {
            rng,
            clients,
            history: Vec::new(),
            unique_acked: Vec::new(),
            counter: CounterLog::default(),
            stats: WorkloadStats::default(),
            next_value: 1,
            trace: Vec::new(),
        }
    }

    /// Whether any operation is still in flight.
    pub fn busy(&self) -> bool {
        self.clients.iter().any(|c| c.op.is_some())
    }

    /// Advances every client at `now_ms`; new operations start only if `issue`.
    pub fn step(&mut self, now_ms: u64, nodes: &[SimNode], issue: bool) {
        for i in 0..self.clients.len() {
            if self.clients[i].op.is_none() {
                if issue && now_ms >= self.clients[i].next_op_ms {
                    self.begin(i, now_ms);
                } else {
                    continue;
                }
            }
            self.advance(i, now_ms, nodes);
        }
    }

    fn begin(&mut self, i: usize, now_ms: u64) {
        let c = &mut self.clients[i];
        c.seq += 1;
        let mut request_id = format!("sim-{}-{}", c.process, c.seq).into_bytes();
        let (key, kind) = if c.role == Role::Unique {
            (format!("u/{}/{:06}", c.process, c.seq), OpKind::Unique)
        } else if c.role == Role::Counter {
            let acked = &self.counter.acked;
            let kind = if !acked.is_empty() && self.rng.random_range(0..6) == 0 {
                let (rid, delta, first_result) = acked[self.rng.random_range(0..acked.len())].clone();
                request_id = rid;
                OpKind::Resend { delta, first_result }
            } else {
                OpKind::Increment { delta: self.rng.random_range(1..=3) }
            };
            (COUNTER_KEY.to_string(), kind)
        } else {
            let generation = now_ms / KEY_GENERATION_MS;
            let key = format!("r/{generation:04}/{}", self.rng.random_range(0..KEYS_PER_GENERATION));
            let v = self.next_value;
            self.next_value += 1;
            let input = match self.rng.random_range(0..10) {
                0..=3 => Input::Get,
                4..=5 => Input::Put(v),
                6 => Input::Delete,
                7 => Input::PutIfAbsent(v),
                8 => Input::PutIfValue { expected: self.rng.random_range(v.saturating_sub(12).max(1)..=v), new: v },
                _ => Input::DeleteIfValue { expected: self.rng.random_range(v.saturating_sub(12).max(1)..=v) },
            };
            (key, OpKind::Register(input))
        };
        let patience = if self.rng.random_range(0..4) == 0 { SHORT_DEADLINE_MS } else { OP_DEADLINE_MS };
        c.op = Some(InFlight {
            key,
            kind,
            invoke_ms: now_ms,
            deadline_ms: now_ms + patience,
            request_id,
            maybe_applied: false,
            attempt: Attempt::Backoff { until_ms: now_ms },
        });
    }

    fn advance(&mut self, i: usize, now_ms: u64, nodes: &[SimNode]) {
        let Some(mut op) = self.clients[i].op.take() else { return };
        let step = match &mut op.attempt {
            Attempt::Backoff { until_ms } if now_ms < *until_ms => Step::Pending,
            Attempt::Backoff { .. } => {
                match self.send(&op, now_ms, nodes) {
                    Some(a) => op.attempt = a,
                    None => op.attempt = Attempt::Backoff { until_ms: now_ms + RETRY_BACKOFF_MS },
                }
                Step::Pending
            }
            Attempt::Write { rx, sent_ms } => match rx.try_recv() {
                Ok(Ok(Applied::Write(w))) => {
                    let first = w.results.first().cloned().unwrap_or_default();
                    let output = match &op.kind {
                        OpKind::Register(Input::Delete) => Output::Deleted { existed: first.existed },
                        OpKind::Register(Input::Put(_)) | OpKind::Unique => Output::Done,
                        OpKind::Register(_) | OpKind::Increment { .. } | OpKind::Resend { .. } => {
                            Output::Applied(first.succeeded)
                        }
                    };
                    Step::Done(Outcome::Ok(output), first.counter)
                }
                Ok(Ok(_)) => Step::Retry { ambiguous: true },
                Ok(Err(e)) => Step::Retry { ambiguous: errors::kind_of(&e) == Kind::Ambiguous },
                // The node crashed or dropped the request: the write may have been proposed.
                Err(oneshot::error::TryRecvError::Closed) => Step::Retry { ambiguous: true },
                Err(oneshot::error::TryRecvError::Empty) if now_ms > *sent_ms + ATTEMPT_TIMEOUT_MS => {
                    Step::Retry { ambiguous: true }
                }
                Err(oneshot::error::TryRecvError::Empty) => Step::Pending,
            },
            Attempt::Read { rx, node, range_id, epoch, sent_ms } => match rx.try_recv() {
                Ok(Ok(())) => match nodes.get(*node).and_then(|n| n.running.as_ref()) {
                    Some(running) => {
                        let key = encode_key(&op.key);
                        let req = ReadRequest {
                            keys: vec![key],
                            stale: false,
                            max_staleness_ms: 0,
                            max_reply_bytes: 0,
                            judge_expiry_at_leader: false,
                        };
                        match executor::read_keys(&running.handle, *range_id, *epoch, &req) {
                            Ok(reads) => {
                                let r = reads.into_iter().next().unwrap_or_default();
                                let value = if r.found { parse_value(&r.value) } else { None };
                                Step::Done(Outcome::Ok(Output::Value(value)), 0)
                            }
                            Err(_) => Step::Retry { ambiguous: false },
                        }
                    }
                    None => Step::Retry { ambiguous: false },
                },
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => Step::Retry { ambiguous: false },
                Err(oneshot::error::TryRecvError::Empty) if now_ms > *sent_ms + ATTEMPT_TIMEOUT_MS => {
                    Step::Retry { ambiguous: false }
                }
                Err(oneshot::error::TryRecvError::Empty) => Step::Pending,
            },
        };
        match step {
            Step::Pending if now_ms > op.deadline_ms => {
                let in_doubt = op.maybe_applied || matches!(op.attempt, Attempt::Write { .. });
                self.finish(i, op, now_ms, if in_doubt { Outcome::Unknown } else { Outcome::Failed }, 0);
            }
            Step::Pending => self.clients[i].op = Some(op),
            Step::Done(outcome, counter) => self.finish(i, op, now_ms, outcome, counter),
            Step::Retry { ambiguous } => {
                op.maybe_applied |= ambiguous;
                self.stats.retries += 1;
                if now_ms > op.deadline_ms {
                    let outcome = if op.maybe_applied { Outcome::Unknown } else { Outcome::Failed };
                    self.finish(i, op, now_ms, outcome, 0);
                } else {
                    op.attempt = Attempt::Backoff { until_ms: now_ms + RETRY_BACKOFF_MS };
                    self.clients[i].op = Some(op);
                }
            }
        }
    }

    /// Sends one attempt: to the leader the chosen node knows of, or to that node itself
    /// (followers forward writes and ReadIndex requests).
    fn send(&mut self, op: &InFlight, now_ms: u64, nodes: &[SimNode]) -> Option<Attempt> {
        let key = encode_key(&op.key);
        let up: Vec<usize> = (0..nodes.len()).filter(|n| nodes[*n].is_up()).collect();
        if up.is_empty() {
            return None;
        }
        let first = self.rng.random_range(0..up.len());
        let (mut node, mut shared) =
            (0..up.len()).map(|k| up[(first + k) % up.len()]).find_map(|n| locate(&nodes[n], &key).map(|s| (n, s)))?;
        let leader = shared.leader_id();
        if leader != 0 && self.rng.random_bool(0.7) {
            if let Some((n, s)) = nodes
                .iter()
                .position(|x| x.id == leader && x.is_up())
                .and_then(|n| locate(&nodes[n], &key).map(|s| (n, s)))
            {
                (node, shared) = (n, s);
            }
        }
        let running = nodes[node].running.as_ref()?;
        let range_id = shared.range_id;
        let epoch = shared.desc().epoch;
        match &op.kind {
            OpKind::Register(Input::Get) => {
                let (tx, rx) = oneshot::channel();
                running.handle.send(StoreMsg::ReadIndex { range_id, reply: tx }).ok()?;
                Some(Attempt::Read { rx, node, range_id, epoch, sent_ms: now_ms })
            }
            kind => {
                let mutation = match kind {
                    OpKind::Unique => put(&key, 0, None),
                    OpKind::Register(input) => register_mutation(&key, input),
                    OpKind::Increment { delta } | OpKind::Resend { delta, .. } => increment(&key, *delta),
                };
                let cmd = RaftCommand {
                    judge_expiry_at_leader: false,
                    expiry_judged_at_ms: 0,
                    request_id: op.request_id.clone(),
                    proposed_version: None,
                    cmd: Some(raft_command::Cmd::Write(WriteBatch { mutations: vec![mutation] })),
                };
                let (tx, rx) = oneshot::channel();
                running.handle.send(StoreMsg::Command { range_id, epoch, cmd, reply: tx }).ok()?;
                Some(Attempt::Write { rx, sent_ms: now_ms })
            }
        }
    }

    /// Records how `op` ended; `counter` is the value an increment was answered with.
    fn finish(&mut self, i: usize, op: InFlight, now_ms: u64, outcome: Outcome, counter: i64) {
        let c = &mut self.clients[i];
        c.next_op_ms = now_ms + 1 + self.rng.random_range(0..20);
        match outcome {
            Outcome::Ok(_) => self.stats.ok += 1,
            Outcome::Unknown => self.stats.unknown += 1,
            Outcome::Failed => self.stats.failed += 1,
        }
        self.trace.push((now_ms, c.process, format!("{} {outcome}", op.key)));
        let ok = matches!(outcome, Outcome::Ok(_));
        match op.kind {
            OpKind::Increment { delta } => {
                if ok {
                    self.counter.acknowledged += delta;
                    self.counter.acked.push((op.request_id, delta, counter));
                }
                if outcome != Outcome::Failed {
                    self.counter.attempted += delta;
                }
            }
            OpKind::Resend { first_result, .. } => {
                if ok {
                    self.counter.resends_checked += 1;
                    if counter != first_result && self.counter.duplicates.len() < 10 {
                        self.counter.duplicates.push(format!(
                            "request {} answered {counter} when re-sent, {first_result} the first time",
                            String::from_utf8_lossy(&op.request_id)
                        ));
                    }
                }
            }
            OpKind::Unique => {
                if matches!(outcome, Outcome::Ok(_)) {
                    self.unique_acked.push(encode_key(&op.key));
                }
            }
            OpKind::Register(input) => self.history.push(Operation {
                process: c.process,
                key: op.key,
                input,
                invoke_ns: op.invoke_ms * 1_000_000,
                // Completion is taken after the answer; +1 keeps it strictly after invocation.
                complete_ns: now_ms * 1_000_000 + 1,
                outcome,
            }),
        }
    }
}

/// The replica of `node` whose range holds `key`, if it has one.
fn locate(node: &SimNode, key: &[u8]) -> Option<Arc<ReplicaShared>> {
    let running = node.running.as_ref()?;
    let registry = running.handle.registry.read();
    let mut ids: Vec<u64> = registry.keys().copied().collect();
    ids.sort_unstable(); // the registry is a HashMap; keep the choice reproducible
    ids.into_iter()
        .filter_map(|id| registry.get(&id).cloned())
        .filter(|s| s.initialized() && !s.destroyed())
        .filter(|s| s.with_desc(|d| crate::keys::in_range(key, &d.start, &d.end)))
        .max_by_key(|s| s.with_desc(|d| d.epoch.map(|e| e.version).unwrap_or(0)))
}

fn parse_value(raw: &[u8]) -> Option<u64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

fn value_bytes(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn put(key: &[u8], v: u64, condition: Option<condition::Kind>) -> Mutation {
    Mutation {
        expiry: None,
        key: key.to_vec(),
        condition: condition.map(|kind| Condition { kind: Some(kind) }),
        op: Some(mutation::Op::Put(value_bytes(v))),
        value_kind: 0,
    }
}

fn delete(key: &[u8], condition: Option<condition::Kind>) -> Mutation {
    Mutation {
        expiry: None,
        key: key.to_vec(),
        condition: condition.map(|kind| Condition { kind: Some(kind) }),
        op: Some(mutation::Op::Delete(true)),
        value_kind: 0,
    }
}

fn increment(key: &[u8], delta: i64) -> Mutation {
    let inc = cairn_proto::internal::Increment { delta, min: None, max: None };
    Mutation { expiry: None, key: key.to_vec(), condition: None, op: Some(mutation::Op::Increment(inc)), value_kind: 0 }
}

fn register_mutation(key: &[u8], input: &Input) -> Mutation {
    use condition::Kind::{IfAbsent, ValueEquals};
    match *input {
        Input::Put(v) => put(key, v, None),
        Input::PutIfAbsent(v) => put(key, v, Some(IfAbsent(true))),
        Input::PutIfValue { expected, new } => put(key, new, Some(ValueEquals(value_bytes(expected)))),
        Input::Delete => delete(key, None),
        Input::DeleteIfValue { expected } => delete(key, Some(ValueEquals(value_bytes(expected)))),
        // Reads never become mutations (they go through ReadIndex); a no-op keeps this total.
        Input::Get => Mutation { expiry: None, key: key.to_vec(), condition: None, op: None, value_kind: 0 },
    }
}
