//! String commands. Plain writes (SET with NX/XX/IFEQ, MSET, the counters) are
//! one conditional mutation each, evaluated atomically where the range applies
//! it. Commands that compute the new value from the old one (APPEND, SETRANGE,
//! INCRBYFLOAT, SET ... GET, GETDEL) read the key and write it back on
//! condition that its version is still the one read, retrying on a race: the
//! outcome is as if the command ran alone at the moment its write applied.

use super::super::keyspace::{self, error_reply};
use super::super::session::Session;
use super::super::RespServer;
use super::{parse_f64, parse_i64, syntax_error, upper};
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{mutation, Increment, Mutation};
use cairn_proto::kv::{condition, Condition, GetResponse};
use std::collections::HashMap;

/// Attempts of one read-modify-write before it gives up on a key under heavy contention.
const MAX_RMW_ATTEMPTS: usize = 64;

pub async fn run(srv: &RespServer, session: &mut Session, name: &str, a: &[Bytes]) -> Reply {
    let out = match name {
        "get" => get(srv, session, &a[0]).await,
        "set" => set(srv, a).await,
        "setnx" => setnx(srv, &a[0], &a[1]).await,
        "setex" | "psetex" => Err(ttl_not_yet(name)),
        "getset" => set_returning_old(srv, &a[0], &a[1], None).await,
        "getdel" => getdel(srv, &a[0]).await,
        "getex" => getex(srv, session, a).await,
        "mget" => mget(srv, session, a).await,
        "mset" => mset(srv, a).await,
        "msetnx" => msetnx(srv, a).await,
        "append" => append(srv, &a[0], &a[1]).await,
        "strlen" => strlen(srv, session, &a[0]).await,
        "getrange" | "substr" => getrange(srv, session, a).await,
        "setrange" => setrange(srv, a).await,
        "incr" => incr_by(srv, &a[0], 1).await,
        "decr" => incr_by(srv, &a[0], -1).await,
        "incrby" => match parse_i64(&a[1]) {
            Ok(d) => incr_by(srv, &a[0], d).await,
            Err(e) => Err(e),
        },
        "decrby" => match parse_i64(&a[1]) {
            Ok(i64::MIN) => Err(Reply::Error("ERR decrement would overflow".into())),
            Ok(d) => incr_by(srv, &a[0], -d).await,
            Err(e) => Err(e),
        },
        "incrbyfloat" => incrbyfloat(srv, &a[0], &a[1]).await,
        _ => Err(Reply::Error(format!("ERR unknown command '{name}'"))),
    };
    out.unwrap_or_else(|e| e)
}

type Result<T> = std::result::Result<T, Reply>;

/// Key expiry arrives with TTL support in the storage layer; until then a
/// command that asks for one is refused whole rather than applied without it.
fn ttl_not_yet(what: &str) -> Reply {
    Reply::Error(format!(
        "ERR key expiry ({}) is not supported by this Cairn version yet; nothing was written",
        what.to_ascii_uppercase()
    ))
}

fn bulk_or_nil(r: &GetResponse) -> Reply {
    if r.found {
        Reply::Bulk(Bytes::from(r.value.clone()))
    } else {
        Reply::Nil
    }
}

async fn read_one(srv: &RespServer, key: &[u8], stale: bool) -> Result<GetResponse> {
    Ok(keyspace::read(&srv.gw, &[key.to_vec()], stale).await?.pop().unwrap_or_default())
}

fn count_hits(srv: &RespServer, found: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let counter = if found { &srv.stats.keyspace_hits } else { &srv.stats.keyspace_misses };
    counter.fetch_add(1, Relaxed);
}

async fn get(srv: &RespServer, session: &Session, key: &[u8]) -> Result<Reply> {
    let r = read_one(srv, key, session.readonly).await?;
    count_hits(srv, r.found);
    Ok(bulk_or_nil(&r))
}

fn cond(kind: condition::Kind) -> Option<Condition> {
    Some(Condition { kind: Some(kind) })
}

/// Writes one key, returning whether its condition held.
async fn put(srv: &RespServer, key: &[u8], value: &[u8], condition: Option<Condition>) -> Result<bool> {
    keyspace::check_value(&srv.gw, value)?;
    let res = keyspace::write(&srv.gw, |t| {
        Ok(vec![Mutation {
            key: keyspace::encode(&srv.gw, t, key)?,
            condition: condition.clone(),
            op: Some(mutation::Op::Put(value.to_vec())),
        }])
    })
    .await?;
    Ok(res.first().is_some_and(|r| r.succeeded))
}

/// What a read-modify-write does to its key.
enum Change {
    Put(Vec<u8>),
    Delete,
    Keep,
}

/// Reads `key`, lets `decide` choose the change and the reply from its value,
/// and applies the change on condition that the key is unchanged since the read.
async fn read_modify_write<T>(
    srv: &RespServer,
    key: &[u8],
    mut decide: impl FnMut(Option<&[u8]>) -> Result<(Change, T)>,
) -> Result<T> {
    for _ in 0..MAX_RMW_ATTEMPTS {
        let cur = read_one(srv, key, false).await?;
        let (change, out) = decide(cur.found.then_some(cur.value.as_slice()))?;
        let op = match change {
            Change::Keep => return Ok(out),
            Change::Delete if !cur.found => return Ok(out),
            Change::Delete => mutation::Op::Delete(true),
            Change::Put(v) => {
                keyspace::check_value(&srv.gw, &v)?;
                mutation::Op::Put(v)
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

/// SET's conditions on the key's current value.
#[derive(Clone)]
enum SetCondition {
    Nx,
    Xx,
    IfEq(Bytes),
}

impl SetCondition {
    fn holds(&self, cur: Option<&[u8]>) -> bool {
        match self {
            SetCondition::Nx => cur.is_none(),
            SetCondition::Xx => cur.is_some(),
            SetCondition::IfEq(v) => cur == Some(v.as_ref()),
        }
    }

    fn as_condition(&self) -> Option<Condition> {
        match self {
            SetCondition::Nx => cond(condition::Kind::IfAbsent(true)),
            SetCondition::Xx => cond(condition::Kind::IfPresent(true)),
            SetCondition::IfEq(v) => cond(condition::Kind::ValueEquals(v.to_vec())),
        }
    }
}

async fn set(srv: &RespServer, a: &[Bytes]) -> Result<Reply> {
    let (key, value) = (&a[0], &a[1]);
    let mut condition: Option<SetCondition> = None;
    let mut get_old = false;
    let mut expiry: Option<String> = None;
    let mut i = 2;
    while i < a.len() {
        let opt = upper(&a[i]);
        match opt.as_str() {
            "NX" | "XX" if condition.is_none() => {
                condition = Some(if opt == "NX" { SetCondition::Nx } else { SetCondition::Xx })
            }
            "IFEQ" if condition.is_none() && i + 1 < a.len() => {
                condition = Some(SetCondition::IfEq(a[i + 1].clone()));
                i += 1;
            }
            "GET" if !get_old => get_old = true,
            "KEEPTTL" if expiry.is_none() => expiry = Some(opt),
            "EX" | "PX" | "EXAT" | "PXAT" if expiry.is_none() && i + 1 < a.len() => {
                let n = parse_i64(&a[i + 1])?;
                if n <= 0 {
                    return Err(Reply::Error("ERR invalid expire time in 'set' command".into()));
                }
                expiry = Some(opt);
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    match expiry.as_deref() {
        // No key has an expiry yet, so keeping it is keeping none.
        None | Some("KEEPTTL") => {}
        Some(other) => return Err(ttl_not_yet(&format!("SET {other}"))),
    }
    if get_old {
        return set_returning_old(srv, key, value, condition).await;
    }
    let applied = put(srv, key, value, condition.as_ref().and_then(SetCondition::as_condition)).await?;
    Ok(if applied { Reply::ok() } else { Reply::Nil })
}

/// SET ... GET and GETSET: sets (if `condition` holds) and replies with the old value.
async fn set_returning_old(
    srv: &RespServer,
    key: &[u8],
    value: &[u8],
    condition: Option<SetCondition>,
) -> Result<Reply> {
    read_modify_write(srv, key, |cur| {
        let old = cur.map_or(Reply::Nil, |v| Reply::Bulk(Bytes::copy_from_slice(v)));
        if condition.as_ref().is_none_or(|c| c.holds(cur)) {
            Ok((Change::Put(value.to_vec()), old))
        } else {
            Ok((Change::Keep, old))
        }
    })
    .await
}

async fn setnx(srv: &RespServer, key: &[u8], value: &[u8]) -> Result<Reply> {
    let applied = put(srv, key, value, SetCondition::Nx.as_condition()).await?;
    Ok(Reply::Integer(applied as i64))
}

async fn getdel(srv: &RespServer, key: &[u8]) -> Result<Reply> {
    read_modify_write(srv, key, |cur| {
        Ok((Change::Delete, cur.map_or(Reply::Nil, |v| Reply::Bulk(Bytes::copy_from_slice(v)))))
    })
    .await
}

async fn getex(srv: &RespServer, session: &Session, a: &[Bytes]) -> Result<Reply> {
    let mut i = 1;
    while i < a.len() {
        match upper(&a[i]).as_str() {
            // No key has an expiry yet: PERSIST has nothing to remove.
            "PERSIST" if a.len() == 2 => {}
            "EX" | "PX" | "EXAT" | "PXAT" if a.len() == 3 => {
                parse_i64(&a[2])?;
                return Err(ttl_not_yet("GETEX"));
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    get(srv, session, &a[0]).await
}

async fn mget(srv: &RespServer, session: &Session, keys: &[Bytes]) -> Result<Reply> {
    let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    let found = keyspace::read(&srv.gw, &keys, session.readonly).await?;
    Ok(Reply::Array(found.iter().map(bulk_or_nil).collect()))
}

/// Key/value pairs with later duplicates replacing earlier ones, in first-seen order.
fn pairs(a: &[Bytes], command: &str) -> Result<Vec<(Bytes, Bytes)>> {
    if !a.len().is_multiple_of(2) {
        return Err(Reply::Error(format!("ERR wrong number of arguments for '{command}' command")));
    }
    let mut order: Vec<(Bytes, Bytes)> = Vec::with_capacity(a.len() / 2);
    let mut at: HashMap<Bytes, usize> = HashMap::new();
    for kv in a.chunks(2) {
        match at.get(&kv[0]) {
            Some(&i) => order[i].1 = kv[1].clone(),
            None => {
                at.insert(kv[0].clone(), order.len());
                order.push((kv[0].clone(), kv[1].clone()));
            }
        }
    }
    Ok(order)
}

fn check_values(srv: &RespServer, pairs: &[(Bytes, Bytes)]) -> Result<()> {
    pairs.iter().try_for_each(|(_, v)| keyspace::check_value(&srv.gw, v))
}

/// MSET: atomic within each range it touches (keys sharing a hash tag always share one).
async fn mset(srv: &RespServer, a: &[Bytes]) -> Result<Reply> {
    let pairs = pairs(a, "mset")?;
    check_values(srv, &pairs)?;
    keyspace::write(&srv.gw, |t| {
        pairs
            .iter()
            .map(|(k, v)| {
                Ok(Mutation {
                    key: keyspace::encode(&srv.gw, t, k)?,
                    condition: None,
                    op: Some(mutation::Op::Put(v.to_vec())),
                })
            })
            .collect()
    })
    .await?;
    Ok(Reply::ok())
}

/// MSETNX: all or nothing, so its keys must share a slot (and so a range).
async fn msetnx(srv: &RespServer, a: &[Bytes]) -> Result<Reply> {
    let pairs = pairs(a, "msetnx")?;
    keyspace::same_slot(pairs.iter().map(|(k, _)| k.as_ref()))?;
    check_values(srv, &pairs)?;
    let res = keyspace::write(&srv.gw, |t| {
        pairs
            .iter()
            .map(|(k, v)| {
                Ok(Mutation {
                    key: keyspace::encode(&srv.gw, t, k)?,
                    condition: cond(condition::Kind::IfAbsent(true)),
                    op: Some(mutation::Op::Put(v.to_vec())),
                })
            })
            .collect()
    })
    .await?;
    Ok(Reply::Integer(res.iter().all(|r| r.succeeded) as i64))
}

async fn append(srv: &RespServer, key: &[u8], suffix: &[u8]) -> Result<Reply> {
    read_modify_write(srv, key, |cur| {
        let mut v = cur.unwrap_or_default().to_vec();
        v.extend_from_slice(suffix);
        let len = v.len() as i64;
        Ok((Change::Put(v), Reply::Integer(len)))
    })
    .await
}

async fn strlen(srv: &RespServer, session: &Session, key: &[u8]) -> Result<Reply> {
    let r = read_one(srv, key, session.readonly).await?;
    Ok(Reply::Integer(if r.found { r.value.len() as i64 } else { 0 }))
}

/// The byte span GETRANGE returns for `start..=end` (negative = from the end), as Redis computes it.
fn range_of(len: usize, start: i64, end: i64) -> Option<std::ops::Range<usize>> {
    let len = len as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return None;
    }
    let clamp = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (clamp(start), clamp(end).min(len - 1));
    (start <= end).then(|| start as usize..end as usize + 1)
}

async fn getrange(srv: &RespServer, session: &Session, a: &[Bytes]) -> Result<Reply> {
    let (start, end) = (parse_i64(&a[1])?, parse_i64(&a[2])?);
    let r = read_one(srv, &a[0], session.readonly).await?;
    let span = range_of(r.value.len(), start, end).unwrap_or(0..0);
    Ok(Reply::Bulk(Bytes::copy_from_slice(&r.value[span])))
}

async fn setrange(srv: &RespServer, a: &[Bytes]) -> Result<Reply> {
    let offset = parse_i64(&a[1])?;
    let value = &a[2];
    if offset < 0 {
        return Err(Reply::Error("ERR offset is out of range".into()));
    }
    let limit = srv.gw.limits.max_value_bytes as i64;
    if offset.saturating_add(value.len() as i64) > limit {
        return Err(Reply::Error(format!("ERR string exceeds maximum allowed size ({limit} bytes, max_value_bytes)")));
    }
    let offset = offset as usize;
    read_modify_write(srv, &a[0], |cur| {
        let mut v = cur.unwrap_or_default().to_vec();
        if value.is_empty() {
            // Redis creates nothing and pads nothing for an empty write.
            return Ok((Change::Keep, Reply::Integer(v.len() as i64)));
        }
        if v.len() < offset + value.len() {
            v.resize(offset + value.len(), 0);
        }
        v[offset..offset + value.len()].copy_from_slice(value);
        let len = v.len() as i64;
        Ok((Change::Put(v), Reply::Integer(len)))
    })
    .await
}

async fn incr_by(srv: &RespServer, key: &[u8], delta: i64) -> Result<Reply> {
    let res = keyspace::write(&srv.gw, |t| {
        Ok(vec![Mutation {
            key: keyspace::encode(&srv.gw, t, key)?,
            condition: None,
            op: Some(mutation::Op::Increment(Increment { delta, min: None, max: None })),
        }])
    })
    .await?;
    match res.first() {
        Some(r) if r.succeeded => Ok(Reply::Integer(r.counter)),
        _ => Err(error_reply(&tonic::Status::internal("the increment produced no result"))),
    }
}

/// A float as Redis prints INCRBYFLOAT's result: no exponent, no trailing zeros.
pub fn format_float(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e17 {
        return format!("{}", v as i64);
    }
    format!("{v}")
}

async fn incrbyfloat(srv: &RespServer, key: &[u8], by: &[u8]) -> Result<Reply> {
    let not_float = || Reply::Error("ERR value is not a valid float".into());
    let by = parse_f64(by).ok_or_else(not_float)?;
    read_modify_write(srv, key, |cur| {
        let current = match cur {
            None => 0.0,
            Some(v) => parse_f64(v).ok_or_else(not_float)?,
        };
        let next = current + by;
        if !next.is_finite() {
            return Err(Reply::Error("ERR increment would produce NaN or Infinity".into()));
        }
        let text = format_float(next);
        Ok((Change::Put(text.clone().into_bytes()), Reply::Bulk(Bytes::from(text))))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_spans_match_redis() {
        // "Hello World" examples from the Redis documentation.
        let s = b"This is a string";
        let sub = |a, b| range_of(s.len(), a, b).map(|r| String::from_utf8_lossy(&s[r]).to_string());
        assert_eq!(sub(0, 3).as_deref(), Some("This"));
        assert_eq!(sub(-3, -1).as_deref(), Some("ing"));
        assert_eq!(sub(0, -1).as_deref(), Some("This is a string"));
        assert_eq!(sub(10, 100).as_deref(), Some("string"));
        assert_eq!(sub(5, 3), None);
        assert_eq!(sub(-1, -5), None);
        assert_eq!(range_of(0, 0, -1), None);
    }

    #[test]
    fn floats_print_without_exponent_or_trailing_zeros() {
        assert_eq!(format_float(10.5 + 0.1), "10.6");
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(-2.5), "-2.5");
        assert_eq!(format_float(5.0e3), "5000");
    }
}
