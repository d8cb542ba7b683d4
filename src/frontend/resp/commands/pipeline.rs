//! Pipelines: the plain GETs, SETs and counter commands that a client sends
//! back to back (what `redis-benchmark -P`, and any batching client, sends) run
//! as one batch. Consecutive writes go to the ranges as one Raft command per
//! range, in the client's order; consecutive reads as one read per range. Each
//! command's reply is the one it would get alone: the keys of different ranges
//! are independent, and within a range the batch applies in order. Any other
//! command ends a batch and runs on its own, after the commands before it.

use super::super::keyspace;
use super::super::session::Session;
use super::super::RespServer;
use super::parse_i64;
use crate::gateway::{self, ops};
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{mutation, Increment, Mutation, TableInfo};
use std::collections::BTreeMap;
use tonic::Code;

/// A command that can share a batch with its neighbours.
#[derive(Debug, Clone)]
pub enum Batchable {
    Get(Bytes),
    /// SET (a put) or a counter command (an increment).
    Write(Bytes, mutation::Op),
}

impl Batchable {
    fn is_read(&self) -> bool {
        matches!(self, Batchable::Get(_))
    }
}

/// The batchable form of a command: only the exact plain forms whose only
/// possible failures are the ones a batch reports per command.
pub fn classify(srv: &RespServer, args: &[Bytes]) -> Option<Batchable> {
    let name = args.first()?;
    let key_ok = |k: &Bytes| srv.gw.limits.check_key(k).is_ok();
    let upper = |s: &[u8]| name.eq_ignore_ascii_case(s);
    let incr = |delta| mutation::Op::Increment(Increment { delta, min: None, max: None });
    let b = match args.len() {
        2 if upper(b"GET") => Batchable::Get(args[1].clone()),
        2 if upper(b"INCR") => Batchable::Write(args[1].clone(), incr(1)),
        2 if upper(b"DECR") => Batchable::Write(args[1].clone(), incr(-1)),
        3 if upper(b"INCRBY") => Batchable::Write(args[1].clone(), incr(parse_i64(&args[2]).ok()?)),
        3 if upper(b"DECRBY") => Batchable::Write(args[1].clone(), incr(parse_i64(&args[2]).ok()?.checked_neg()?)),
        3 if upper(b"SET") && srv.gw.limits.check_value(&args[2]).is_ok() => {
            Batchable::Write(args[1].clone(), mutation::Op::Put(args[2].to_vec()))
        }
        _ => return None,
    };
    let (Batchable::Get(key) | Batchable::Write(key, _)) = &b;
    key_ok(key).then_some(b)
}

/// Commands that run together: one on its own, or a batch of reads or of writes.
pub enum Run {
    Single(Vec<Bytes>),
    Batch(Vec<(Vec<Bytes>, Batchable)>),
}

/// Reads batched together at most: a failed batch read falls back to reading
/// one by one, and the replies of one run are held until it ends, so this
/// bounds them at this many values.
const MAX_READ_RUN: usize = 32;

/// Cuts a pipeline into runs, in order. A batch holds only reads or only writes,
/// so a read never overtakes a write before it. Between MULTI and EXEC (or
/// DISCARD) every command runs alone, to be queued: `in_multi` says whether the
/// connection is in a MULTI when the pipeline starts.
pub fn runs(srv: &RespServer, commands: Vec<Vec<Bytes>>, mut in_multi: bool) -> Vec<Run> {
    let mut out = Vec::new();
    let mut batch: Vec<(Vec<Bytes>, Batchable)> = Vec::new();
    let flush = |batch: &mut Vec<(Vec<Bytes>, Batchable)>, out: &mut Vec<Run>| {
        if !batch.is_empty() {
            out.push(Run::Batch(std::mem::take(batch)));
        }
    };
    for args in commands {
        let is = |name: &[u8]| args.first().is_some_and(|n| n.eq_ignore_ascii_case(name));
        // MULTI always leaves the connection in a transaction (a nested one is refused,
        // the outer one goes on); EXEC and DISCARD always end it.
        let ends_multi = is(b"EXEC") || is(b"DISCARD");
        let queued = in_multi || is(b"MULTI");
        in_multi = queued && !ends_multi;
        let batchable = if queued { None } else { classify(srv, &args) };
        match batchable {
            Some(b) => {
                let same_kind = batch.last().is_none_or(|(_, last)| last.is_read() == b.is_read());
                let full = b.is_read() && batch.len() >= MAX_READ_RUN;
                if !same_kind || full {
                    flush(&mut batch, &mut out);
                }
                batch.push((args, b));
            }
            None => {
                flush(&mut batch, &mut out);
                out.push(Run::Single(args));
            }
        }
    }
    flush(&mut batch, &mut out);
    out
}

/// Runs one run; one reply per command, in order.
pub async fn execute_run(srv: &RespServer, session: &mut Session, run: Run) -> Vec<Reply> {
    match run {
        Run::Single(args) => vec![super::execute(srv, session, args).await],
        Run::Batch(mut batch) if batch.len() == 1 => match batch.pop() {
            Some((args, _)) => vec![super::execute(srv, session, args).await],
            None => vec![],
        },
        Run::Batch(batch) if batch.first().is_some_and(|(_, b)| b.is_read()) => read_run(srv, session, batch).await,
        Run::Batch(batch) => write_run(srv, session, batch).await,
    }
}

async fn read_run(srv: &RespServer, session: &mut Session, run: Vec<(Vec<Bytes>, Batchable)>) -> Vec<Reply> {
    let keys: Vec<Vec<u8>> = run
        .iter()
        .map(|(_, b)| match b {
            Batchable::Get(k) | Batchable::Write(k, _) => k.to_vec(),
        })
        .collect();
    match keyspace::read(&srv.gw, &keys, session.readonly).await {
        Ok(found) => found
            .into_iter()
            .map(|r| match super::rmw::string_value(Some(&r)) {
                Err(wrong_type) => wrong_type,
                Ok(_) if r.found => Reply::Bulk(Bytes::from(r.value)),
                Ok(_) => Reply::Nil,
            })
            .collect(),
        // Refused, not failed (too much to read at once, past the reply bound):
        // one by one, each within it. A TRYAGAIN would only repeat per command.
        Err(Reply::Error(m)) if m.starts_with("ERR ") && run.len() > 1 => {
            let mut replies = Vec::with_capacity(run.len());
            for (args, _) in run {
                replies.push(super::execute(srv, session, args).await);
            }
            replies
        }
        Err(e) => vec![e; run.len()],
    }
}

/// A write run's command as a mutation (a read has none).
fn mutation_of(t: &TableInfo, b: &Batchable) -> Option<Mutation> {
    let Batchable::Write(key, op) = b else { return None };
    Some(Mutation {
        expiry: None,
        key: crate::request::encode_key(t, key),
        condition: None,
        op: Some(op.clone()),
        value_kind: 0,
    })
}

async fn write_run(srv: &RespServer, session: &mut Session, run: Vec<(Vec<Bytes>, Batchable)>) -> Vec<Reply> {
    let t = match keyspace::table(&srv.gw).await {
        Ok(t) => t,
        Err(e) => return vec![e; run.len()],
    };
    let muts: Vec<Mutation> = run.iter().filter_map(|(_, b)| mutation_of(&t, b)).collect();
    if muts.len() != run.len() {
        return vec![Reply::Error("ERR a read was batched with writes".into()); run.len()];
    }
    // One group per range, each in the client's order.
    let dir = srv.gw.directory();
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, m) in muts.iter().enumerate() {
        let range = dir.lookup(&m.key).and_then(|r| r.desc.as_ref()).map_or(0, |d| d.id);
        groups.entry(range).or_default().push(i);
    }
    let calls = groups.values().map(|idx| {
        let group: Vec<Mutation> = idx.iter().map(|&i| muts[i].clone()).collect();
        async move { ops::write(&srv.gw, group, gateway::new_request_id(), true).await }
    });
    let results = futures::future::join_all(calls).await;
    let mut replies: Vec<Option<Reply>> = vec![None; run.len()];
    let mut redo: Vec<usize> = Vec::new();
    for (idx, result) in groups.values().zip(results) {
        match result {
            Ok(res) => {
                for (&i, r) in idx.iter().zip(res) {
                    replies[i] = Some(match &run[i].1 {
                        Batchable::Write(_, mutation::Op::Increment(_)) => Reply::Integer(r.counter),
                        _ => Reply::ok(),
                    });
                }
            }
            // A command the range refused (a counter on a non-integer, an overflow)
            // refused its whole group, and nothing of it was applied: run the
            // group's commands one by one, so only the bad one fails.
            Err(s) if s.code() == Code::InvalidArgument => redo.extend(idx),
            Err(s) => {
                for &i in idx {
                    replies[i] = Some(keyspace::error_reply(&s));
                }
            }
        }
    }
    redo.sort_unstable();
    for i in redo {
        replies[i] = Some(super::execute(srv, session, run[i].0.clone()).await);
    }
    replies.into_iter().map(|r| r.unwrap_or_else(|| Reply::Error("ERR no reply".into()))).collect()
}
