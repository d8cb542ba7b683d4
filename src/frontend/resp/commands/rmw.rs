//! Single-key writes shared by the command groups: a conditional put, and the
//! read-modify-write loop for commands whose new value (or expiry) depends on
//! the old one. A read-modify-write applies its change on condition that the
//! key's version is still the one read, retrying on a race, so the outcome is as
//! if the command ran alone at the moment its write applied.

use super::super::keyspace;
use super::super::txn::eval::wrong_type;
use super::super::RespServer;
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{expiry, mutation, Expiry, Mutation};
use cairn_proto::kv::{condition, Condition, GetResponse, ValueKind};

pub type Result<T> = std::result::Result<T, Reply>;

/// Attempts of one read-modify-write before it gives up on a key under heavy contention.
const MAX_RMW_ATTEMPTS: usize = 64;

pub fn cond(kind: condition::Kind) -> Option<Condition> {
    Some(Condition { kind: Some(kind) })
}

pub fn when(w: expiry::When) -> Option<Expiry> {
    Some(Expiry { when: Some(w) })
}

pub fn bulk_or_nil(r: &GetResponse) -> Reply {
    if r.found {
        Reply::Bulk(Bytes::from(r.value.clone()))
    } else {
        Reply::Nil
    }
}

/// A key read for a command on strings: WRONGTYPE if it holds another type.
pub fn string_value(r: Option<&GetResponse>) -> Result<Option<&GetResponse>> {
    match r {
        Some(r) if r.found && r.kind != ValueKind::Plain as i32 => Err(wrong_type()),
        r => Ok(r),
    }
}

pub async fn read_one(srv: &RespServer, key: &[u8], stale: bool) -> Result<GetResponse> {
    Ok(keyspace::read(&srv.gw, &[key.to_vec()], stale).await?.pop().unwrap_or_default())
}

/// Writes one key (with `expiry`; `None` clears any), returning whether its condition held.
pub async fn put(
    srv: &RespServer,
    key: &[u8],
    value: &[u8],
    condition: Option<Condition>,
    expiry: Option<Expiry>,
) -> Result<bool> {
    keyspace::check_value(&srv.gw, value)?;
    let res = keyspace::write(&srv.gw, |t| {
        Ok(vec![Mutation {
            key: keyspace::encode(&srv.gw, t, key)?,
            condition: condition.clone(),
            op: Some(mutation::Op::Put(value.to_vec())),
            expiry,
            value_kind: 0,
        }])
    })
    .await?;
    Ok(res.first().is_some_and(|r| r.succeeded))
}

/// What a read-modify-write does to its key.
pub enum Change {
    /// A new value, with this expiry (`None`: none; `keep` keeps the current one).
    Put(Vec<u8>, Option<Expiry>),
    /// The same value with another expiry.
    Expire(Expiry),
    Delete,
    Keep,
}

impl Change {
    /// A new value that keeps the key's expiry, as APPEND, SETRANGE and the counters do.
    pub fn put_keeping_expiry(value: Vec<u8>) -> Change {
        Change::Put(value, when(expiry::When::Keep(true)))
    }
}

/// Reads `key`, lets `decide` choose the change and the reply from what it
/// holds (`None`: no live key), and applies the change on condition that the
/// key is unchanged since the read.
pub async fn read_modify_write<T>(
    srv: &RespServer,
    key: &[u8],
    mut decide: impl FnMut(Option<&GetResponse>) -> Result<(Change, T)>,
) -> Result<T> {
    for _ in 0..MAX_RMW_ATTEMPTS {
        let cur = read_one(srv, key, false).await?;
        let (change, out) = decide(cur.found.then_some(&cur))?;
        let (op, expiry) = match change {
            Change::Keep => return Ok(out),
            Change::Delete | Change::Expire(_) if !cur.found => return Ok(out),
            Change::Delete => (mutation::Op::Delete(true), None),
            Change::Expire(e) => (mutation::Op::SetExpiry(e), None),
            Change::Put(v, expiry) => {
                keyspace::check_value(&srv.gw, &v)?;
                (mutation::Op::Put(v), expiry)
            }
        };
        let unchanged = match (cur.found, cur.version) {
            (true, Some(v)) => cond(condition::Kind::VersionEquals(v)),
            _ => cond(condition::Kind::IfAbsent(true)),
        };
        let res = keyspace::write(&srv.gw, |t| {
            Ok(vec![Mutation {
                key: keyspace::encode(&srv.gw, t, key)?,
                condition: unchanged.clone(),
                op: Some(op.clone()),
                expiry,
                value_kind: 0,
            }])
        })
        .await?;
        if res.first().is_some_and(|r| r.succeeded) {
            return Ok(out);
        }
    }
    Err(Reply::Error(format!(
        "TRYAGAIN the key changed under {MAX_RMW_ATTEMPTS} read-modify-write attempts in a row; nothing was written"
    )))
}
