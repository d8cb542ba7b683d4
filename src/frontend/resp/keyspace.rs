//! The Redis keyspace: one hash-partitioned table (`TABLE`), created by the
//! meta range's leader when the cluster starts, whose ranges own slots exactly
//! as Redis Cluster's nodes do. Also how a gateway error reads as a Redis error.

use crate::gateway::{self, ops, Gateway};
use crate::meta::catalog;
use crate::request;
use cairn_core::keys::slot::key_slot;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{Mutation, MutationResult, TableInfo};
use cairn_proto::kv::{GetResponse, Partitioning};
use std::time::Duration;
use tonic::{Code, Status};

/// The table that holds every Redis key (DB 0).
pub const TABLE: &str = "redis";

/// How long a command waits for a keyspace that is still being created.
const CREATION_WAIT: Duration = Duration::from_secs(5);

/// Creates the keyspace table unless it exists; run by the meta range's leader.
pub async fn ensure(gw: &Gateway, hash_ranges: u32, lease_preferences: &[String]) -> Result<(), Status> {
    match catalog::get(gw, TABLE).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => {
            let placement = catalog::Placement { replication_factor: 0, lease_preferences: lease_preferences.to_vec() };
            match catalog::create(gw, TABLE, Partitioning::Hash, &[], hash_ranges, placement).await {
                Ok(t) => {
                    tracing::info!(table = TABLE, id = t.id, hash_ranges, "created the Redis keyspace");
                    Ok(())
                }
                Err(s) if s.code() == Code::AlreadyExists => Ok(()),
                Err(s) => Err(s),
            }
        }
        Err(s) => Err(s),
    }
}

/// Until the keyspace exists: creates it when this node leads the meta range
/// (so one node creates it, not every node at once), or when it has been
/// missing for a while whoever leads the meta range (that node may not serve
/// Redis at all; a rare race then costs an unused table id, never a second keyspace).
pub async fn keep_ensured(
    gw: std::sync::Arc<Gateway>,
    hash_ranges: u32,
    lease_preferences: Vec<String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const FALLBACK_AFTER: Duration = Duration::from_secs(10);
    let started = crate::clock::now();
    loop {
        let leads_meta = gw.store.registry.read().get(&crate::keys::meta::META_RANGE_ID).is_some_and(|r| r.is_leader());
        if leads_meta || crate::clock::now().duration_since(started) > FALLBACK_AFTER {
            match ensure(&gw, hash_ranges, &lease_preferences).await {
                Ok(()) => return,
                Err(e) => tracing::debug!("creating the Redis keyspace: {}", e.message()),
            }
        } else if catalog::get(&gw, TABLE).await.is_ok() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The keyspace table, waiting briefly while a new cluster creates it.
pub async fn table(gw: &Gateway) -> Result<TableInfo, Reply> {
    let deadline = crate::clock::now() + CREATION_WAIT;
    loop {
        match catalog::get(gw, TABLE).await {
            Ok(t) => return Ok(t),
            Err(s) if s.code() == Code::NotFound && crate::clock::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) if s.code() == Code::NotFound => {
                return Err(Reply::Error(
                    "CLUSTERDOWN the Redis keyspace is not created yet (the meta range's leader creates it); \
                     retry shortly"
                        .into(),
                ))
            }
            Err(s) => return Err(error_reply(&s)),
        }
    }
}

/// A gateway error as a Redis error reply. A write that certainly did not
/// apply and may simply be retried is TRYAGAIN (cluster clients retry it on
/// their own); one whose outcome is unknown stays ERR, since retrying a
/// non-idempotent command could apply it twice.
pub fn error_reply(s: &Status) -> Reply {
    let msg = s.message();
    if let Some(at) = msg.find("WRONGTYPE ") {
        // The range judged the key's type (an increment of a hash): Redis's own error.
        return Reply::Error(msg[at..].to_string());
    }
    let retryable = matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted);
    let marked = s.metadata().get(crate::outcome::HEADER).is_some();
    if retryable && !(marked && gateway::maybe_applied(s)) {
        Reply::Error(format!("TRYAGAIN {msg}"))
    } else {
        Reply::Error(format!("ERR {msg}"))
    }
}

/// CROSSSLOT unless every key hashes to one slot (what makes a multi-key command atomic).
pub fn same_slot<'a>(mut keys: impl Iterator<Item = &'a [u8]>) -> Result<u16, Reply> {
    let Some(first) = keys.next().map(key_slot) else { return Ok(0) };
    if keys.all(|k| key_slot(k) == first) {
        Ok(first)
    } else {
        Err(Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into()))
    }
}

/// Reads keys of the keyspace (linearizable, or bounded-stale on a READONLY connection).
/// Linearizable reads are served by each range's leader, which judges expiry at
/// its own clock: a key that expired there is expired for every later reader,
/// after a failover too.
pub async fn read(gw: &Gateway, keys: &[Vec<u8>], stale: bool) -> Result<Vec<GetResponse>, Reply> {
    let t = table(gw).await?;
    ops::read(gw, &t, keys, stale.then_some(0), true).await.map_err(|s| error_reply(&s))
}

/// Applies mutations built against the table (atomic per range, deduplicated by a
/// fresh request id), proposed by each range's leader, which judges expiry.
pub async fn write(
    gw: &Gateway,
    build: impl Fn(&TableInfo) -> Result<Vec<Mutation>, Reply>,
) -> Result<Vec<MutationResult>, Reply> {
    let t = table(gw).await?;
    let muts = build(&t)?;
    ops::write(gw, muts, gateway::new_request_id(), true).await.map_err(|s| error_reply(&s))
}

/// A key of the table in the encoded keyspace, after the key size check.
pub fn encode(gw: &Gateway, t: &TableInfo, key: &[u8]) -> Result<Vec<u8>, Reply> {
    gw.limits.check_key(key).map_err(|e| Reply::Error(format!("ERR {e}")))?;
    Ok(request::encode_key(t, key))
}

/// A value within the value size limit.
pub fn check_value(gw: &Gateway, value: &[u8]) -> Result<(), Reply> {
    gw.limits.check_value(value).map_err(|e| Reply::Error(format!("ERR {e}")))
}
