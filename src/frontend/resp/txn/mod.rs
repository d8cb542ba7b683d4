//! Transactions: MULTI/EXEC/DISCARD/WATCH/UNWATCH.
//!
//! EXEC runs its queued commands as one atomic step on one range: it reads
//! every key the commands (and WATCH) name, in one read at one version;
//! evaluates the commands in order against that view (`eval`, pure); and
//! writes what they changed as one Raft command whose every key is
//! conditioned on the version that was read (`view::Effect`). If anything
//! changed in between, nothing applied, and EXEC starts over from the read; a
//! WATCHed key whose version moved since WATCH aborts EXEC with a nil reply.
//! All keys must share a slot (CROSSSLOT otherwise), so they share a range.

pub mod eval;
pub mod hashes;
pub mod view;

use super::commands::Spec;
use super::keyspace;
use super::session::Session;
use super::RespServer;
use crate::sabotage::{self, Sabotage};
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{expiry, mutation, Expiry, Mutation};
use cairn_proto::kv::{condition, Condition, Version};
use std::collections::BTreeMap;
use view::{Effect, Entry, View};

/// Bounds what one MULTI may queue (commands, and their bytes).
const MAX_QUEUED_COMMANDS: usize = 100_000;
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Bounds the keys one connection may WATCH.
const MAX_WATCHED_KEYS: usize = 100_000;
/// Attempts of one EXEC whose keys keep changing under it.
const MAX_EXEC_ATTEMPTS: usize = 64;

/// A MULTI in progress on a connection.
#[derive(Default)]
pub struct Multi {
    queued: Vec<Vec<Bytes>>,
    queued_bytes: usize,
    /// A command failed to queue: EXEC will refuse the whole transaction.
    dirty: bool,
}

/// Commands that act on the transaction itself rather than being queued.
pub fn controls_transaction(name: &str) -> bool {
    matches!(name, "exec" | "discard" | "multi" | "watch" | "quit" | "reset")
}

/// Queues a command sent inside MULTI (already known to be neither unknown nor
/// of the wrong arity, nor a transaction control); the reply is QUEUED or the
/// error that will make EXEC refuse the transaction.
pub fn queue(multi: &mut Multi, name: &str, args: Vec<Bytes>) -> Reply {
    if !eval::supported(name) && name != "unwatch" {
        multi.dirty = true;
        return Reply::Error(format!("ERR '{}' is not supported inside MULTI by Cairn", name.to_uppercase()));
    }
    let bytes: usize = args.iter().map(Bytes::len).sum();
    if multi.queued.len() >= MAX_QUEUED_COMMANDS || multi.queued_bytes + bytes > MAX_QUEUED_BYTES {
        multi.dirty = true;
        return Reply::Error(format!(
            "ERR the transaction is too large (at most {MAX_QUEUED_COMMANDS} commands and {} MiB); it will be discarded",
            MAX_QUEUED_BYTES >> 20
        ));
    }
    multi.queued_bytes += bytes;
    multi.queued.push(args);
    Reply::Simple("QUEUED".into())
}

/// Marks the transaction in progress as failed (a command could not be queued).
pub fn flag(session: &mut Session) {
    if let Some(m) = session.multi.as_mut() {
        m.dirty = true;
    }
}

pub fn multi(session: &mut Session) -> Reply {
    if session.multi.is_some() {
        return Reply::Error("ERR MULTI calls can not be nested".into());
    }
    session.multi = Some(Multi::default());
    Reply::ok()
}

pub fn discard(session: &mut Session) -> Reply {
    if session.multi.take().is_none() {
        return Reply::Error("ERR DISCARD without MULTI".into());
    }
    session.watched.clear();
    Reply::ok()
}

pub fn unwatch(session: &mut Session) -> Reply {
    session.watched.clear();
    Reply::ok()
}

/// The key arguments of a command, by its spec's key positions.
pub fn keys_of(spec: &Spec, args: &[Bytes]) -> Vec<Bytes> {
    if spec.first_key <= 0 || spec.step <= 0 {
        return Vec::new();
    }
    let last = if spec.last_key < 0 { args.len() as i32 + spec.last_key } else { spec.last_key };
    (spec.first_key..=last.min(args.len() as i32 - 1))
        .step_by(spec.step as usize)
        .map(|i| args[i as usize].clone())
        .collect()
}

/// WATCH: remembers each key's version now (absent keys as absent).
pub async fn watch(srv: &RespServer, session: &mut Session, keys: &[Bytes]) -> Reply {
    if session.multi.is_some() {
        return Reply::Error("ERR WATCH inside MULTI is not allowed".into());
    }
    let fresh: Vec<Bytes> = keys.iter().filter(|k| !session.watched.contains_key(*k)).cloned().collect();
    if session.watched.len() + fresh.len() > MAX_WATCHED_KEYS {
        return Reply::Error(format!("ERR at most {MAX_WATCHED_KEYS} keys may be watched per connection"));
    }
    let encoded: Vec<Vec<u8>> = fresh.iter().map(|k| k.to_vec()).collect();
    match keyspace::read(&srv.gw, &encoded, false).await {
        Ok(found) => {
            for (k, r) in fresh.into_iter().zip(found) {
                session.watched.insert(k, r.found.then_some(r.version).flatten());
            }
            Reply::ok()
        }
        Err(e) => e,
    }
}

pub async fn exec(srv: &RespServer, session: &mut Session) -> Reply {
    let Some(multi) = session.multi.take() else { return Reply::Error("ERR EXEC without MULTI".into()) };
    let watched = std::mem::take(&mut session.watched);
    if multi.dirty {
        return Reply::Error("EXECABORT Transaction discarded because of previous errors.".into());
    }
    run(srv, &multi.queued, &watched).await.unwrap_or_else(|e| e)
}

/// Runs `commands` atomically (see the module doc); `watched` keys must still be at their versions.
async fn run(
    srv: &RespServer,
    commands: &[Vec<Bytes>],
    watched: &BTreeMap<Bytes, Option<Version>>,
) -> Result<Reply, Reply> {
    let mut keys: Vec<Bytes> = watched.keys().cloned().collect();
    for args in commands {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        if let Some(spec) = super::commands::lookup(&name) {
            keys.extend(keys_of(spec, args));
        }
    }
    keys.extend(watched.keys().cloned());
    keyspace::same_slot(keys.iter().map(|k| k.as_ref()))?;
    let _turn = srv.slot_locks.lock(&keys).await;
    for _ in 0..MAX_EXEC_ATTEMPTS {
        let Some(mut view) = read_view(srv, &keys, watched).await? else { return Ok(Reply::NilArray) };
        let replies: Vec<Reply> = commands
            .iter()
            .map(|args| {
                let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
                if name == "unwatch" {
                    return Reply::ok();
                }
                eval::eval(&mut view, &srv.gw.limits, &name, &args[1..])
            })
            .collect();
        if commit(srv, &view).await? {
            return Ok(Reply::Array(replies));
        }
        srv.conflict_pause().await;
    }
    Err(Reply::Error(format!(
        "TRYAGAIN the transaction's keys changed under {MAX_EXEC_ATTEMPTS} attempts in a row; nothing was written"
    )))
}

/// Runs one command that reads or rewrites a key's whole value (the hash
/// commands, RENAME) as a transaction of its own. A command that only reads
/// needs no write and no turn: one read at one version is its answer (bounded-
/// stale on a READONLY connection, as other reads are).
pub async fn run_one(srv: &RespServer, spec: &Spec, args: &[Bytes], stale: bool) -> Reply {
    if hashes::handles(spec.name) && hashes::reads_only(spec.name) {
        let keys = keys_of(spec, args);
        let view = match load_view(srv, &keys, &BTreeMap::new(), stale).await {
            Ok(Some(view)) => view,
            Ok(None) => return Reply::NilArray,
            Err(e) => return e,
        };
        let mut view = view;
        return eval::eval(&mut view, &srv.gw.limits, spec.name, &args[1..]);
    }
    match run(srv, &[args.to_vec()], &BTreeMap::new()).await {
        Ok(Reply::Array(mut replies)) if replies.len() == 1 => replies.remove(0),
        Ok(other) => other,
        Err(e) => e,
    }
}

/// Serializes this node's transactions and scripts slot by slot (hashed onto a
/// fixed set of locks): contenders for one hot key on one node then take turns
/// instead of colliding, and only contenders on different nodes can conflict.
#[derive(Default)]
pub struct SlotLocks {
    locks: std::sync::OnceLock<Vec<tokio::sync::Mutex<()>>>,
}

const SLOT_LOCKS: usize = 256;

impl SlotLocks {
    /// Holds the lock of the slot `keys` share (they were checked to share one).
    pub async fn lock(&self, keys: &[Bytes]) -> tokio::sync::MutexGuard<'_, ()> {
        let locks = self.locks.get_or_init(|| (0..SLOT_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect());
        let slot = keys.first().map_or(0, |k| cairn_core::keys::slot::key_slot(k) as usize);
        locks[slot % SLOT_LOCKS].lock().await
    }
}

/// Reads `keys` (which must share a slot) in one read into a fresh view;
/// `None` if a `watched` key is no longer at its watched version.
pub async fn read_view(
    srv: &RespServer,
    keys: &[Bytes],
    watched: &BTreeMap<Bytes, Option<Version>>,
) -> Result<Option<View>, Reply> {
    load_view(srv, keys, watched, false).await
}

async fn load_view(
    srv: &RespServer,
    keys: &[Bytes],
    watched: &BTreeMap<Bytes, Option<Version>>,
    stale: bool,
) -> Result<Option<View>, Reply> {
    let mut keys: Vec<Bytes> = keys.iter().chain(watched.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keyspace::same_slot(keys.iter().map(|k| k.as_ref()))?;
    let encoded: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    let found = if keys.is_empty() { Vec::new() } else { keyspace::read(&srv.gw, &encoded, stale).await? };
    let mut view = View::new(crate::hlc::wall_now_ms());
    for (k, r) in keys.into_iter().zip(found) {
        let version = r.found.then_some(r.version).flatten();
        if watched.get(&k).is_some_and(|w| *w != version) {
            return Ok(None);
        }
        let kind = u8::try_from(r.kind).unwrap_or(u8::MAX);
        let entry = version.map(|v| (Entry { value: r.value, expires_at_ms: r.expires_at_ms, kind }, v));
        view.load(k, entry);
    }
    Ok(Some(view))
}

/// Writes what `view` changed as one Raft command conditioned on every key it
/// read; false if a key moved since (nothing applied: read again and retry).
pub async fn commit(srv: &RespServer, view: &View) -> Result<bool, Reply> {
    let effects = view.effects();
    if effects.iter().all(|e| e.change.is_none()) {
        // Nothing to write: the one read at one version was the transaction.
        return Ok(true);
    }
    let res = keyspace::write(&srv.gw, |t| {
        effects.iter().map(|e| Ok(mutation_of(e, keyspace::encode(&srv.gw, t, &e.key)?))).collect()
    })
    .await?;
    Ok(res.iter().all(|r| r.succeeded))
}

/// An effect as a mutation, conditioned on the key's version as read.
fn mutation_of(e: &Effect, key: Vec<u8>) -> Mutation {
    let kind = match e.read_version {
        Some(v) => condition::Kind::VersionEquals(v),
        None => condition::Kind::IfAbsent(true),
    };
    let (op, expiry) = match &e.change {
        None => (mutation::Op::Check(true), None),
        Some(None) => (mutation::Op::Delete(true), None),
        Some(Some(entry)) => (
            mutation::Op::Put(entry.value.clone()),
            (entry.expires_at_ms != 0).then_some(Expiry { when: Some(expiry::When::AtMs(entry.expires_at_ms)) }),
        ),
    };
    let value_kind = match &e.change {
        Some(Some(entry)) => entry.kind.into(),
        _ => 0,
    };
    let condition = Some(Condition { kind: Some(kind) });
    let condition = condition.filter(|_| !sabotage::active(Sabotage::UnconditionalTransactions));
    Mutation { key, condition, op: Some(op), expiry, value_kind }
}
