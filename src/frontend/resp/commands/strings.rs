//! String commands. Plain writes (SET with NX/XX/IFEQ and an expiry, MSET, the
//! counters) are one conditional mutation each, evaluated atomically where the
//! range applies it. Commands that compute the new value from the old one
//! (APPEND, SETRANGE, INCRBYFLOAT, SET ... GET, GETDEL, GETEX) are
//! read-modify-writes (`rmw`). Like Redis, SET, GETSET and MSET clear an
//! expiry unless told to keep it; APPEND, SETRANGE and the counters keep it.

use super::super::keyspace::{self, error_reply};
use super::super::session::Session;
use super::super::RespServer;
use super::expiry::option_expiry;
use super::rmw::{bulk_or_nil, cond, put, read_modify_write, read_one, string_value, when, Change, Result};
use super::{parse_f64, parse_i64, syntax_error, upper};
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{expiry, mutation, Expiry, Increment, Mutation};
use cairn_proto::kv::{condition, Condition};
use std::collections::HashMap;

pub async fn run(srv: &RespServer, session: &mut Session, name: &str, a: &[Bytes]) -> Reply {
    let out = match name {
        "get" => get(srv, session, &a[0]).await,
        "set" => set(srv, a).await,
        "setnx" => setnx(srv, &a[0], &a[1]).await,
        "setex" | "psetex" => setex(srv, name, a).await,
        "getset" => set_returning_old(srv, &a[0], &a[1], None, None).await,
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

fn count_hits(srv: &RespServer, found: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let counter = if found { &srv.stats.keyspace_hits } else { &srv.stats.keyspace_misses };
    counter.fetch_add(1, Relaxed);
}

async fn get(srv: &RespServer, session: &Session, key: &[u8]) -> Result<Reply> {
    let r = read_one(srv, key, session.readonly).await?;
    string_value(Some(&r))?;
    count_hits(srv, r.found);
    Ok(bulk_or_nil(&r))
}

/// SET's conditions on the key's current value.
#[derive(Clone)]
pub enum SetCondition {
    Nx,
    Xx,
    IfEq(Bytes),
}

impl SetCondition {
    pub fn holds(&self, cur: Option<&[u8]>) -> bool {
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

/// SET's options (everything after the key and the value).
pub struct SetOptions {
    pub condition: Option<SetCondition>,
    pub get_old: bool,
    /// `None`: the new value has no expiry.
    pub expiry: Option<Expiry>,
}

pub fn parse_set_options(a: &[Bytes]) -> Result<SetOptions> {
    let mut o = SetOptions { condition: None, get_old: false, expiry: None };
    let mut i = 0;
    while i < a.len() {
        let opt = upper(&a[i]);
        match opt.as_str() {
            "NX" | "XX" if o.condition.is_none() => {
                o.condition = Some(if opt == "NX" { SetCondition::Nx } else { SetCondition::Xx })
            }
            "IFEQ" if o.condition.is_none() && i + 1 < a.len() => {
                o.condition = Some(SetCondition::IfEq(a[i + 1].clone()));
                i += 1;
            }
            "GET" if !o.get_old => o.get_old = true,
            "KEEPTTL" if o.expiry.is_none() => o.expiry = when(expiry::When::Keep(true)),
            "EX" | "PX" | "EXAT" | "PXAT" if o.expiry.is_none() && i + 1 < a.len() => {
                o.expiry = Some(option_expiry(&opt, &a[i + 1], "set")?);
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    Ok(o)
}

async fn set(srv: &RespServer, a: &[Bytes]) -> Result<Reply> {
    let (key, value) = (&a[0], &a[1]);
    let SetOptions { condition, get_old, expiry } = parse_set_options(&a[2..])?;
    if get_old {
        return set_returning_old(srv, key, value, condition, expiry).await;
    }
    let applied = put(srv, key, value, condition.as_ref().and_then(SetCondition::as_condition), expiry).await?;
    Ok(if applied { Reply::ok() } else { Reply::Nil })
}

/// SETEX key seconds value, PSETEX key milliseconds value.
async fn setex(srv: &RespServer, name: &str, a: &[Bytes]) -> Result<Reply> {
    let option = if name == "setex" { "EX" } else { "PX" };
    let expiry = option_expiry(option, &a[1], name)?;
    put(srv, &a[0], &a[2], None, Some(expiry)).await?;
    Ok(Reply::ok())
}

/// SET ... GET and GETSET: sets (if `condition` holds) and replies with the old value.
async fn set_returning_old(
    srv: &RespServer,
    key: &[u8],
    value: &[u8],
    condition: Option<SetCondition>,
    expiry: Option<Expiry>,
) -> Result<Reply> {
    read_modify_write(srv, key, |cur| {
        let cur = string_value(cur)?.map(|r| r.value.as_slice());
        let old = cur.map_or(Reply::Nil, |v| Reply::Bulk(Bytes::copy_from_slice(v)));
        if condition.as_ref().is_none_or(|c| c.holds(cur)) {
            Ok((Change::Put(value.to_vec(), expiry), old))
        } else {
            Ok((Change::Keep, old))
        }
    })
    .await
}

async fn setnx(srv: &RespServer, key: &[u8], value: &[u8]) -> Result<Reply> {
    let applied = put(srv, key, value, SetCondition::Nx.as_condition(), None).await?;
    Ok(Reply::Integer(applied as i64))
}

async fn getdel(srv: &RespServer, key: &[u8]) -> Result<Reply> {
    read_modify_write(srv, key, |cur| Ok((Change::Delete, string_value(cur)?.map_or(Reply::Nil, bulk_or_nil)))).await
}

/// GETEX key [EX n | PX n | EXAT t | PXAT t | PERSIST]: GET, changing the expiry.
async fn getex(srv: &RespServer, session: &Session, a: &[Bytes]) -> Result<Reply> {
    let change = match a.len() {
        1 => return get(srv, session, &a[0]).await,
        2 if upper(&a[1]) == "PERSIST" => Expiry { when: Some(expiry::When::Never(true)) },
        3 => match upper(&a[1]).as_str() {
            opt @ ("EX" | "PX" | "EXAT" | "PXAT") => option_expiry(opt, &a[2], "getex")?,
            _ => return Err(syntax_error()),
        },
        _ => return Err(syntax_error()),
    };
    let persist = matches!(change.when, Some(expiry::When::Never(_)));
    let reply = read_modify_write(srv, &a[0], |cur| match string_value(cur)? {
        // PERSIST on a key without an expiry writes nothing.
        Some(r) if persist && r.expires_at_ms == 0 => Ok((Change::Keep, bulk_or_nil(r))),
        Some(r) => Ok((Change::Expire(change), bulk_or_nil(r))),
        None => Ok((Change::Keep, Reply::Nil)),
    })
    .await?;
    count_hits(srv, !matches!(reply, Reply::Nil));
    Ok(reply)
}

async fn mget(srv: &RespServer, session: &Session, keys: &[Bytes]) -> Result<Reply> {
    let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    let found = keyspace::read(&srv.gw, &keys, session.readonly).await?;
    // Like Redis, MGET answers nil for a key of another type.
    Ok(Reply::Array(
        found.iter().map(|r| if string_value(Some(r)).is_ok() { bulk_or_nil(r) } else { Reply::Nil }).collect(),
    ))
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
                    expiry: None,
                    key: keyspace::encode(&srv.gw, t, k)?,
                    condition: None,
                    op: Some(mutation::Op::Put(v.to_vec())),
                    value_kind: 0,
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
                    expiry: None,
                    key: keyspace::encode(&srv.gw, t, k)?,
                    condition: cond(condition::Kind::IfAbsent(true)),
                    op: Some(mutation::Op::Put(v.to_vec())),
                    value_kind: 0,
                })
            })
            .collect()
    })
    .await?;
    Ok(Reply::Integer(res.iter().all(|r| r.succeeded) as i64))
}

async fn append(srv: &RespServer, key: &[u8], suffix: &[u8]) -> Result<Reply> {
    read_modify_write(srv, key, |cur| {
        let mut v = string_value(cur)?.map(|r| r.value.clone()).unwrap_or_default();
        v.extend_from_slice(suffix);
        let len = v.len() as i64;
        Ok((Change::put_keeping_expiry(v), Reply::Integer(len)))
    })
    .await
}

async fn strlen(srv: &RespServer, session: &Session, key: &[u8]) -> Result<Reply> {
    let r = read_one(srv, key, session.readonly).await?;
    string_value(Some(&r))?;
    Ok(Reply::Integer(if r.found { r.value.len() as i64 } else { 0 }))
}

/// The byte span GETRANGE returns for `start..=end` (negative = from the end), as Redis computes it.
pub fn range_of(len: usize, start: i64, end: i64) -> Option<std::ops::Range<usize>> {
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
    string_value(Some(&r))?;
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
        let mut v = string_value(cur)?.map(|r| r.value.clone()).unwrap_or_default();
        if value.is_empty() {
            // Redis creates nothing and pads nothing for an empty write.
            return Ok((Change::Keep, Reply::Integer(v.len() as i64)));
        }
        if v.len() < offset + value.len() {
            v.resize(offset + value.len(), 0);
        }
        v[offset..offset + value.len()].copy_from_slice(value);
        let len = v.len() as i64;
        Ok((Change::put_keeping_expiry(v), Reply::Integer(len)))
    })
    .await
}

async fn incr_by(srv: &RespServer, key: &[u8], delta: i64) -> Result<Reply> {
    let res = keyspace::write(&srv.gw, |t| {
        Ok(vec![Mutation {
            expiry: None,
            key: keyspace::encode(&srv.gw, t, key)?,
            condition: None,
            op: Some(mutation::Op::Increment(Increment { delta, min: None, max: None })),
            value_kind: 0,
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
        let current = match string_value(cur)? {
            None => 0.0,
            Some(r) => parse_f64(&r.value).ok_or_else(not_float)?,
        };
        let next = current + by;
        if !next.is_finite() {
            return Err(Reply::Error("ERR increment would produce NaN or Infinity".into()));
        }
        let text = format_float(next);
        Ok((Change::put_keeping_expiry(text.clone().into_bytes()), Reply::Bulk(Bytes::from(text))))
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
