//! The string, key and expiry commands evaluated against a transaction's view
//! (`view.rs`): what MULTI/EXEC runs, with Redis's semantics and replies. Pure;
//! the view's effects become one conditional write.
//!
//! Like Redis inside a transaction, a command that fails at run time (INCR on
//! a non-integer) answers its error and changes nothing; the others still apply.

use super::super::commands::expiry::{self as expiry_cmd, expire_target, option_expiry, ExpireTarget, Only};
use super::super::commands::strings::{format_float, parse_set_options, range_of, SetCondition, SetOptions};
use super::super::commands::{not_integer, parse_f64, parse_i64, syntax_error, upper};
use super::view::{Entry, View};
use crate::limits::Limits;
use bytes::Bytes;
use cairn_core::keys::mvcc::{kind, NO_EXPIRY};
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{expiry, Expiry};
use cairn_proto::kv::GetResponse;

type Result<T> = std::result::Result<T, Reply>;

/// Whether `name` (lowercase) can run inside a transaction.
pub fn supported(name: &str) -> bool {
    matches!(
        name,
        "get"
            | "set"
            | "setnx"
            | "setex"
            | "psetex"
            | "getset"
            | "getdel"
            | "getex"
            | "mget"
            | "mset"
            | "msetnx"
            | "append"
            | "strlen"
            | "getrange"
            | "substr"
            | "setrange"
            | "incr"
            | "decr"
            | "incrby"
            | "decrby"
            | "incrbyfloat"
            | "del"
            | "unlink"
            | "exists"
            | "type"
            | "expire"
            | "pexpire"
            | "expireat"
            | "pexpireat"
            | "ttl"
            | "pttl"
            | "expiretime"
            | "pexpiretime"
            | "persist"
            | "ping"
            | "echo"
            | "rename"
            | "renamenx"
    ) || super::hashes::handles(name)
}

/// Runs one command (`name` lowercase, `a` its arguments, arity already checked).
pub fn eval(view: &mut View, limits: &Limits, name: &str, a: &[Bytes]) -> Reply {
    run(view, limits, name, a).unwrap_or_else(|e| e)
}

fn undeclared(e: &'static str) -> Reply {
    Reply::Error(e.into())
}

fn get(view: &View, key: &[u8]) -> Result<Option<Entry>> {
    view.get(key).map(|e| e.cloned()).map_err(undeclared)
}

fn put(view: &mut View, key: &[u8], entry: Option<Entry>) -> Result<()> {
    view.put(key, entry).map_err(undeclared)
}

/// A key's entry for a command on strings: WRONGTYPE if it holds another type.
fn string(view: &View, key: &[u8]) -> Result<Option<Entry>> {
    match get(view, key)? {
        Some(e) if e.kind != kind::PLAIN => Err(wrong_type()),
        e => Ok(e),
    }
}

/// Redis's error for a command on a key of another type.
pub fn wrong_type() -> Reply {
    Reply::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
}

/// The name TYPE answers for a key of `kind`.
pub fn type_name(kind: u8) -> &'static str {
    match kind {
        kind::PLAIN => "string",
        kind::REDIS_HASH => "hash",
        _ => "unknown",
    }
}

fn bulk(e: &Option<Entry>) -> Reply {
    e.as_ref().map_or(Reply::Nil, |e| Reply::Bulk(Bytes::from(e.value.clone())))
}

fn check_value(limits: &Limits, v: &[u8]) -> Result<()> {
    limits.check_value(v).map_err(|e| Reply::Error(format!("ERR {e}")))
}

/// The instant an expiry option resolves to now, for a key whose entry is `cur`.
fn instant(view: &View, e: Option<&Expiry>, cur: &Option<Entry>) -> u64 {
    match e.and_then(|e| e.when.as_ref()) {
        None | Some(expiry::When::Never(_)) => NO_EXPIRY,
        Some(expiry::When::AfterMs(ms)) => view.now_ms.saturating_add(*ms).max(1),
        Some(expiry::When::AtMs(at)) => (*at).max(1),
        Some(expiry::When::Keep(_)) => cur.as_ref().map_or(NO_EXPIRY, |c| c.expires_at_ms),
    }
}

/// A new value for `key` that keeps its current expiry.
fn replace_keeping_expiry(view: &mut View, key: &[u8], cur: &Option<Entry>, value: Vec<u8>) -> Result<()> {
    let expires_at_ms = cur.as_ref().map_or(NO_EXPIRY, |c| c.expires_at_ms);
    put(view, key, Some(Entry { expires_at_ms, ..Entry::plain(value) }))
}

fn run(view: &mut View, limits: &Limits, name: &str, a: &[Bytes]) -> Result<Reply> {
    Ok(match name {
        "ping" => a.first().map_or(Reply::Simple("PONG".into()), |m| Reply::Bulk(m.clone())),
        "echo" => Reply::Bulk(a[0].clone()),
        "get" => bulk(&string(view, &a[0])?),
        "set" => {
            let SetOptions { condition, get_old, expiry } = parse_set_options(&a[2..])?;
            let compares = get_old || matches!(condition, Some(SetCondition::IfEq(_)));
            let cur = if compares { string(view, &a[0])? } else { get(view, &a[0])? };
            let old = if get_old { bulk(&cur) } else { Reply::Nil };
            if !condition.as_ref().is_none_or(|c| c.holds(cur.as_ref().map(|e| e.value.as_slice()))) {
                return Ok(old);
            }
            check_value(limits, &a[1])?;
            let expires_at_ms = instant(view, expiry.as_ref(), &cur);
            put(view, &a[0], Some(Entry { expires_at_ms, ..Entry::plain(a[1].to_vec()) }))?;
            if get_old {
                old
            } else {
                Reply::ok()
            }
        }
        "setnx" => {
            if get(view, &a[0])?.is_some() {
                return Ok(Reply::Integer(0));
            }
            check_value(limits, &a[1])?;
            put(view, &a[0], Some(Entry::plain(a[1].to_vec())))?;
            Reply::Integer(1)
        }
        "setex" | "psetex" => {
            let e = option_expiry(if name == "setex" { "EX" } else { "PX" }, &a[1], name)?;
            check_value(limits, &a[2])?;
            let expires_at_ms = instant(view, Some(&e), &None);
            put(view, &a[0], Some(Entry { expires_at_ms, ..Entry::plain(a[2].to_vec()) }))?;
            Reply::ok()
        }
        "getset" => {
            let cur = string(view, &a[0])?;
            check_value(limits, &a[1])?;
            put(view, &a[0], Some(Entry::plain(a[1].to_vec())))?;
            bulk(&cur)
        }
        "getdel" => {
            let cur = string(view, &a[0])?;
            if cur.is_some() {
                put(view, &a[0], None)?;
            }
            bulk(&cur)
        }
        "getex" => {
            let change = match a.len() {
                1 => None,
                2 if upper(&a[1]) == "PERSIST" => Some(Expiry { when: Some(expiry::When::Never(true)) }),
                3 => match upper(&a[1]).as_str() {
                    opt @ ("EX" | "PX" | "EXAT" | "PXAT") => Some(option_expiry(opt, &a[2], "getex")?),
                    _ => return Err(syntax_error()),
                },
                _ => return Err(syntax_error()),
            };
            let cur = string(view, &a[0])?;
            if let (Some(c), Some(change)) = (&cur, change) {
                let expires_at_ms = instant(view, Some(&change), &cur);
                if expires_at_ms != c.expires_at_ms {
                    put(view, &a[0], Some(Entry { expires_at_ms, ..c.clone() }))?;
                }
            }
            bulk(&cur)
        }
        "mget" => Reply::Array(
            // Like Redis, MGET answers nil for a key of another type.
            a.iter()
                .map(|k| get(view, k).map(|e| bulk(&e.filter(|e| e.kind == kind::PLAIN))))
                .collect::<Result<_>>()?,
        ),
        "mset" | "msetnx" => {
            if !a.len().is_multiple_of(2) {
                return Err(Reply::Error(format!("ERR wrong number of arguments for '{name}' command")));
            }
            for kv in a.chunks(2) {
                check_value(limits, &kv[1])?;
                if name == "msetnx" && get(view, &kv[0])?.is_some() {
                    return Ok(Reply::Integer(0));
                }
            }
            for kv in a.chunks(2) {
                put(view, &kv[0], Some(Entry::plain(kv[1].to_vec())))?;
            }
            if name == "mset" {
                Reply::ok()
            } else {
                Reply::Integer(1)
            }
        }
        "append" => {
            let cur = string(view, &a[0])?;
            let mut v = cur.as_ref().map(|e| e.value.clone()).unwrap_or_default();
            v.extend_from_slice(&a[1]);
            check_value(limits, &v)?;
            let len = v.len() as i64;
            replace_keeping_expiry(view, &a[0], &cur, v)?;
            Reply::Integer(len)
        }
        "strlen" => Reply::Integer(string(view, &a[0])?.map_or(0, |e| e.value.len() as i64)),
        "getrange" | "substr" => {
            let (start, end) = (parse_i64(&a[1])?, parse_i64(&a[2])?);
            let v = string(view, &a[0])?.map(|e| e.value).unwrap_or_default();
            let span = range_of(v.len(), start, end).unwrap_or(0..0);
            Reply::Bulk(Bytes::copy_from_slice(&v[span]))
        }
        "setrange" => {
            let offset = parse_i64(&a[1])?;
            if offset < 0 {
                return Err(Reply::Error("ERR offset is out of range".into()));
            }
            let cur = string(view, &a[0])?;
            let mut v = cur.as_ref().map(|e| e.value.clone()).unwrap_or_default();
            if a[2].is_empty() {
                return Ok(Reply::Integer(v.len() as i64));
            }
            let end = (offset as usize).checked_add(a[2].len()).filter(|e| *e <= limits.max_value_bytes);
            let Some(end) = end else {
                return Err(Reply::Error(format!(
                    "ERR string exceeds maximum allowed size ({} bytes, max_value_bytes)",
                    limits.max_value_bytes
                )));
            };
            if v.len() < end {
                v.resize(end, 0);
            }
            v[offset as usize..end].copy_from_slice(&a[2]);
            let len = v.len() as i64;
            replace_keeping_expiry(view, &a[0], &cur, v)?;
            Reply::Integer(len)
        }
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match name {
                "incr" => 1,
                "decr" => -1,
                "incrby" => parse_i64(&a[1])?,
                _ => parse_i64(&a[1])?
                    .checked_neg()
                    .ok_or_else(|| Reply::Error("ERR decrement would overflow".into()))?,
            };
            let cur = string(view, &a[0])?;
            let current = match &cur {
                None => 0,
                Some(e) => parse_i64(&e.value).map_err(|_| not_integer())?,
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| Reply::Error("ERR increment or decrement would overflow".into()))?;
            replace_keeping_expiry(view, &a[0], &cur, next.to_string().into_bytes())?;
            Reply::Integer(next)
        }
        "incrbyfloat" => {
            let not_float = || Reply::Error("ERR value is not a valid float".into());
            let by = parse_f64(&a[1]).ok_or_else(not_float)?;
            let cur = string(view, &a[0])?;
            let current = match &cur {
                None => 0.0,
                Some(e) => parse_f64(&e.value).ok_or_else(not_float)?,
            };
            let next = current + by;
            if !next.is_finite() {
                return Err(Reply::Error("ERR increment would produce NaN or Infinity".into()));
            }
            let text = format_float(next);
            replace_keeping_expiry(view, &a[0], &cur, text.clone().into_bytes())?;
            Reply::Bulk(Bytes::from(text))
        }
        "del" | "unlink" => {
            let mut n = 0;
            for k in a {
                if get(view, k)?.is_some() {
                    put(view, k, None)?;
                    n += 1;
                }
            }
            Reply::Integer(n)
        }
        "exists" => {
            let mut n = 0;
            for k in a {
                n += get(view, k)?.is_some() as i64;
            }
            Reply::Integer(n)
        }
        "type" => Reply::Simple(get(view, &a[0])?.map_or("none", |e| type_name(e.kind)).into()),
        "rename" | "renamenx" => {
            let Some(cur) = get(view, &a[0])? else { return Err(Reply::Error("ERR no such key".into())) };
            if a[0] == a[1] {
                return Ok(if name == "rename" { Reply::ok() } else { Reply::Integer(0) });
            }
            if name == "renamenx" && get(view, &a[1])?.is_some() {
                return Ok(Reply::Integer(0));
            }
            // The value moves with its type and expiry, as in Redis.
            put(view, &a[1], Some(cur))?;
            put(view, &a[0], None)?;
            if name == "rename" {
                Reply::ok()
            } else {
                Reply::Integer(1)
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            let only = Only::parse(&a[2..])?;
            let ExpireTarget { at_ms, .. } = expire_target(name, &a[1], view.now_ms)?;
            match get(view, &a[0])? {
                Some(e) if only.holds(e.expires_at_ms, at_ms) => {
                    put(view, &a[0], Some(Entry { expires_at_ms: at_ms, ..e }))?;
                    Reply::Integer(1)
                }
                _ => Reply::Integer(0),
            }
        }
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => {
            let cur = get(view, &a[0])?;
            let r = GetResponse {
                found: cur.is_some(),
                expires_at_ms: cur.map_or(NO_EXPIRY, |e| e.expires_at_ms),
                ..Default::default()
            };
            expiry_cmd::ttl_reply(name, &r, view.now_ms)
        }
        "persist" => match get(view, &a[0])? {
            Some(e) if e.expires_at_ms != NO_EXPIRY => {
                put(view, &a[0], Some(Entry { expires_at_ms: NO_EXPIRY, ..e }))?;
                Reply::Integer(1)
            }
            _ => Reply::Integer(0),
        },
        _ if super::hashes::handles(name) => return super::hashes::run(view, limits, name, a),
        _ => return Err(Reply::Error(format!("ERR '{}' is not supported inside a transaction", name.to_uppercase()))),
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use cairn_proto::kv::Version;

    fn run_all(view: &mut View, commands: &[&[&str]]) -> Vec<Reply> {
        run_within(view, 16, commands)
    }

    /// Runs each command (name first) against `view`, with values bounded at `max_value_bytes`.
    pub(in super::super) fn run_within(view: &mut View, max_value_bytes: usize, commands: &[&[&str]]) -> Vec<Reply> {
        let limits = Limits { max_value_bytes, ..Limits::default() };
        commands
            .iter()
            .map(|c| {
                let args: Vec<Bytes> = c[1..].iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect();
                eval(view, &limits, c[0], &args)
            })
            .collect()
    }

    fn view(keys: &[(&str, Option<(&str, u64)>)]) -> View {
        let mut v = View::new(10_000);
        for (i, (k, e)) in keys.iter().enumerate() {
            let version = Version { wall_ns: i as u64 + 1, logical: 0, node_id: 1 };
            let found =
                e.map(|(val, exp)| (Entry { expires_at_ms: exp, ..Entry::plain(val.as_bytes().to_vec()) }, version));
            v.load(Bytes::copy_from_slice(k.as_bytes()), found);
        }
        v
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn commands_see_each_others_changes_in_order_and_runtime_errors_change_nothing() {
        let mut v = view(&[("a", Some(("1", 0))), ("b", None), ("s", Some(("text", 0)))]);
        let replies = run_all(
            &mut v,
            &[
                &["incr", "a"],
                &["incrby", "s", "2"],
                &["set", "b", "x", "nx", "get"],
                &["append", "b", "yz"],
                &["mget", "a", "b", "s"],
                &["set", "s", "way too long for the limit"],
                &["getdel", "s"],
                &["exists", "a", "s", "a"],
                &["get", "elsewhere"],
            ],
        );
        assert_eq!(replies[0], Reply::Integer(2));
        assert_eq!(replies[1], Reply::Error("ERR value is not an integer or out of range".into()));
        assert_eq!(replies[2], Reply::Nil, "SET NX GET on an absent key: applied, old value nil");
        assert_eq!(replies[3], Reply::Integer(3));
        assert_eq!(replies[4], Reply::Array(vec![bulk("2"), bulk("xyz"), bulk("text")]));
        assert!(matches!(&replies[5], Reply::Error(m) if m.contains("max_value_bytes")), "{:?}", replies[5]);
        assert_eq!(replies[6], bulk("text"), "the refused SET changed nothing");
        assert_eq!(replies[7], Reply::Integer(2));
        assert_eq!(replies[8], Reply::Error(super::super::view::UNDECLARED.into()));
    }

    #[test]
    fn expiry_counts_from_the_views_time_and_is_kept_or_cleared_as_in_redis() {
        let mut v = view(&[("k", Some(("5", 60_000))), ("gone", Some(("x", 10_000))), ("n", None)]);
        let replies = run_all(
            &mut v,
            &[
                &["pttl", "k"],
                &["incr", "k"],
                &["pttl", "k"],
                &["get", "gone"],
                &["ttl", "gone"],
                &["set", "n", "v", "px", "500"],
                &["pttl", "n"],
                &["set", "n", "w", "keepttl"],
                &["pttl", "n"],
                &["expire", "k", "10", "gt"],
                &["expire", "k", "10", "lt"],
                &["ttl", "k"],
                &["persist", "k"],
                &["ttl", "k"],
                &["pexpireat", "n", "1"],
                &["exists", "n"],
            ],
        );
        let ints: Vec<Reply> = [50_000, 6, 50_000].into_iter().map(Reply::Integer).collect();
        assert_eq!(replies[..3], ints[..]);
        assert_eq!(replies[3..5], [Reply::Nil, Reply::Integer(-2)], "expired at the view's time");
        assert_eq!(replies[6], Reply::Integer(500));
        assert_eq!(replies[8], Reply::Integer(500), "KEEPTTL");
        assert_eq!(replies[9..12], [Reply::Integer(0), Reply::Integer(1), Reply::Integer(10)]);
        assert_eq!(replies[12..14], [Reply::Integer(1), Reply::Integer(-1)]);
        assert_eq!(replies[14..16], [Reply::Integer(1), Reply::Integer(0)], "an instant past deletes");
    }
}
