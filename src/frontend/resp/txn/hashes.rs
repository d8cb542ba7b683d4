//! The hash commands evaluated against a transaction's view (`view.rs`), with
//! Redis's semantics and replies. Pure. A hash is one value of kind
//! `REDIS_HASH` (`resp::hash`), so a command on a hash is a read-modify-write
//! of one key, and a hash keeps its expiry when its fields change.
//!
//! Standalone hash commands run through here too (as a one-command transaction),
//! so a hash command behaves the same alone, inside MULTI and from a script.

use super::super::commands::server::glob_match;
use super::super::commands::strings::format_float;
use super::super::commands::{not_integer, parse_f64, parse_i64, syntax_error, upper};
use super::eval::wrong_type;
use super::view::{Entry, View};
use crate::limits::Limits;
use bytes::Bytes;
use cairn_core::keys::mvcc::{kind, NO_EXPIRY};
use cairn_core::resp::hash::{self, Fields};
use cairn_core::resp::reply::Reply;

type Result<T> = std::result::Result<T, Reply>;

/// Whether `name` (lowercase) is a hash command.
pub fn handles(name: &str) -> bool {
    matches!(
        name,
        "hset"
            | "hmset"
            | "hsetnx"
            | "hget"
            | "hmget"
            | "hgetall"
            | "hdel"
            | "hexists"
            | "hlen"
            | "hkeys"
            | "hvals"
            | "hincrby"
            | "hincrbyfloat"
            | "hstrlen"
            | "hscan"
            | "hrandfield"
    )
}

/// Whether the hash command `name` only reads (it needs no write, and no turn).
pub fn reads_only(name: &str) -> bool {
    !matches!(name, "hset" | "hmset" | "hsetnx" | "hdel" | "hincrby" | "hincrbyfloat")
}

/// A key's hash as the view holds it: its fields (empty if absent) and expiry.
struct Current {
    fields: Fields,
    expires_at_ms: u64,
}

fn load(view: &View, key: &[u8]) -> Result<Current> {
    match view.get(key).map_err(|e| Reply::Error(e.into()))? {
        None => Ok(Current { fields: Fields::new(), expires_at_ms: NO_EXPIRY }),
        Some(e) if e.kind != kind::REDIS_HASH => Err(wrong_type()),
        Some(e) => {
            let fields = hash::decode(&e.value).map_err(|m| Reply::Error(format!("ERR {m}")))?;
            Ok(Current { fields, expires_at_ms: e.expires_at_ms })
        }
    }
}

/// Writes the hash back; an empty hash is no key at all, as in Redis.
fn store(view: &mut View, limits: &Limits, key: &[u8], cur: Current) -> Result<()> {
    let entry = if cur.fields.is_empty() {
        None
    } else {
        let size = hash::encoded_len(&cur.fields);
        if size > limits.max_value_bytes {
            return Err(Reply::Error(format!(
                "ERR the hash would take {size} bytes, over max_value_bytes ({}): a hash is stored as one value",
                limits.max_value_bytes
            )));
        }
        Some(Entry { value: hash::encode(&cur.fields), expires_at_ms: cur.expires_at_ms, kind: kind::REDIS_HASH })
    };
    view.put(key, entry).map_err(|e| Reply::Error(e.into()))
}

fn bulk(b: &Bytes) -> Reply {
    Reply::Bulk(b.clone())
}

fn arity_error(name: &str) -> Reply {
    Reply::Error(format!("ERR wrong number of arguments for '{name}' command"))
}

/// Runs hash command `name` (lowercase; arity already checked) on `a[0]`.
pub fn run(view: &mut View, limits: &Limits, name: &str, a: &[Bytes]) -> Result<Reply> {
    let key = &a[0];
    let mut cur = load(view, key)?;
    Ok(match name {
        "hset" | "hmset" => {
            let pairs = &a[1..];
            if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
                return Err(arity_error(name));
            }
            let mut added = 0;
            for fv in pairs.chunks(2) {
                added += cur.fields.insert(fv[0].clone(), fv[1].clone()).is_none() as i64;
            }
            store(view, limits, key, cur)?;
            if name == "hset" {
                Reply::Integer(added)
            } else {
                Reply::ok()
            }
        }
        "hsetnx" => {
            if cur.fields.contains_key(&a[1]) {
                return Ok(Reply::Integer(0));
            }
            cur.fields.insert(a[1].clone(), a[2].clone());
            store(view, limits, key, cur)?;
            Reply::Integer(1)
        }
        "hget" => cur.fields.get(&a[1]).map_or(Reply::Nil, bulk),
        "hmget" => Reply::Array(a[1..].iter().map(|f| cur.fields.get(f).map_or(Reply::Nil, bulk)).collect()),
        "hgetall" => Reply::Map(cur.fields.iter().map(|(f, v)| (bulk(f), bulk(v))).collect()),
        "hkeys" => Reply::Array(cur.fields.keys().map(bulk).collect()),
        "hvals" => Reply::Array(cur.fields.values().map(bulk).collect()),
        "hlen" => Reply::Integer(cur.fields.len() as i64),
        "hexists" => Reply::Integer(cur.fields.contains_key(&a[1]) as i64),
        "hstrlen" => Reply::Integer(cur.fields.get(&a[1]).map_or(0, |v| v.len() as i64)),
        "hdel" => {
            let removed = a[1..].iter().filter(|f| cur.fields.remove(*f).is_some()).count() as i64;
            if removed > 0 {
                store(view, limits, key, cur)?;
            }
            Reply::Integer(removed)
        }
        "hincrby" => {
            let by = parse_i64(&a[2])?;
            let current = match cur.fields.get(&a[1]) {
                None => 0,
                Some(v) => parse_i64(v).map_err(|_| Reply::Error("ERR hash value is not an integer".into()))?,
            };
            let next = current
                .checked_add(by)
                .ok_or_else(|| Reply::Error("ERR increment or decrement would overflow".into()))?;
            cur.fields.insert(a[1].clone(), Bytes::from(next.to_string()));
            store(view, limits, key, cur)?;
            Reply::Integer(next)
        }
        "hincrbyfloat" => {
            let by = parse_f64(&a[2]).ok_or_else(|| Reply::Error("ERR value is not a valid float".into()))?;
            let current = match cur.fields.get(&a[1]) {
                None => 0.0,
                Some(v) => parse_f64(v).ok_or_else(|| Reply::Error("ERR hash value is not a float".into()))?,
            };
            let next = current + by;
            if !next.is_finite() {
                return Err(Reply::Error("ERR increment would produce NaN or Infinity".into()));
            }
            let text = Bytes::from(format_float(next));
            cur.fields.insert(a[1].clone(), text.clone());
            store(view, limits, key, cur)?;
            Reply::Bulk(text)
        }
        "hscan" => hscan(&cur.fields, &a[1..])?,
        "hrandfield" => hrandfield(&cur.fields, &a[1..])?,
        _ => return Err(Reply::Error(format!("ERR unknown command '{name}'"))),
    })
}

/// HSCAN key cursor [MATCH pattern] [COUNT n] [NOVALUES]. A hash is one value,
/// so, as Redis does for its small hashes, one call returns every field and the
/// cursor 0; COUNT is checked and otherwise ignored.
fn hscan(fields: &Fields, a: &[Bytes]) -> Result<Reply> {
    let cursor = std::str::from_utf8(&a[0]).ok().and_then(|s| s.parse::<u64>().ok());
    if cursor.is_none() {
        return Err(Reply::Error("ERR invalid cursor".into()));
    }
    let mut pattern: Option<&Bytes> = None;
    let mut values = true;
    let mut i = 1;
    while i < a.len() {
        match upper(&a[i]).as_str() {
            "MATCH" if i + 1 < a.len() => {
                pattern = Some(&a[i + 1]);
                i += 1;
            }
            "COUNT" if i + 1 < a.len() => {
                if parse_i64(&a[i + 1])? < 1 {
                    return Err(syntax_error());
                }
                i += 1;
            }
            "NOVALUES" => values = false,
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    let mut items = Vec::new();
    for (f, v) in fields {
        if pattern.is_some_and(|p| !glob_match(p, f, false)) {
            continue;
        }
        items.push(bulk(f));
        if values {
            items.push(bulk(v));
        }
    }
    Ok(Reply::Array(vec![Reply::Bulk(Bytes::from_static(b"0")), Reply::Array(items)]))
}

/// HRANDFIELD key [count [WITHVALUES]]: a positive count gives distinct fields,
/// a negative one may repeat them.
fn hrandfield(fields: &Fields, a: &[Bytes]) -> Result<Reply> {
    let Some(count) = a.first() else {
        return Ok(match fields.len() {
            0 => Reply::Nil,
            n => bulk(fields.keys().nth(rand::random_range(0..n)).unwrap_or(&Bytes::new())),
        });
    };
    let count = parse_i64(count)?;
    let with_values = match a.get(1) {
        None => false,
        Some(w) if upper(w) == "WITHVALUES" && a.len() == 2 => true,
        Some(_) => return Err(syntax_error()),
    };
    let all: Vec<(&Bytes, &Bytes)> = fields.iter().collect();
    let picked: Vec<(&Bytes, &Bytes)> = if all.is_empty() {
        Vec::new()
    } else if count >= 0 {
        let mut order: Vec<usize> = (0..all.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rand::random_range(0..=i));
        }
        order.into_iter().take(count as usize).map(|i| all[i]).collect()
    } else {
        let n = count.checked_neg().filter(|n| *n <= 1 << 20).ok_or_else(not_integer)?;
        (0..n).map(|_| all[rand::random_range(0..all.len())]).collect()
    };
    Ok(Reply::Array(
        picked
            .into_iter()
            .flat_map(|(f, v)| if with_values { vec![bulk(f), bulk(v)] } else { vec![bulk(f)] })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::eval::tests::run_within;
    use super::*;
    use cairn_proto::kv::Version;

    fn run_all(view: &mut View, commands: &[&[&str]]) -> Vec<Reply> {
        run_within(view, 64, commands)
    }

    fn b(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn err(s: &str) -> Reply {
        Reply::Error(s.into())
    }

    fn view_with_string() -> View {
        let mut view = View::new(1_000);
        let v = Version { wall_ns: 1, logical: 0, node_id: 1 };
        view.load(Bytes::from_static(b"s"), Some((Entry::plain(b"x".to_vec()), v)));
        view.load(Bytes::from_static(b"h"), None);
        view
    }

    #[test]
    fn hash_commands_answer_as_redis_does() {
        let mut view = view_with_string();
        let replies = run_all(
            &mut view,
            &[
                &["hset", "h", "a", "1", "b", "2"],
                &["hset", "h", "a", "10", "c", "3"],
                &["hsetnx", "h", "a", "x"],
                &["hget", "h", "a"],
                &["hmget", "h", "a", "zz", "c"],
                &["hlen", "h"],
                &["hexists", "h", "zz"],
                &["hstrlen", "h", "a"],
                &["hincrby", "h", "b", "5"],
                &["hincrby", "h", "a", "notanumber"],
                &["hincrbyfloat", "h", "f", "1.5"],
                &["hincrby", "h", "f", "1"],
                &["hdel", "h", "a", "zz", "f"],
                &["hkeys", "h"],
                &["hvals", "h"],
                &["type", "h"],
                &["hgetall", "h"],
                &["hset", "h", "odd"],
            ],
        );
        assert_eq!(
            replies,
            vec![
                Reply::Integer(2),
                Reply::Integer(1),
                Reply::Integer(0),
                b("10"),
                Reply::Array(vec![b("10"), Reply::Nil, b("3")]),
                Reply::Integer(3),
                Reply::Integer(0),
                Reply::Integer(2),
                Reply::Integer(7),
                err("ERR value is not an integer or out of range"),
                b("1.5"),
                err("ERR hash value is not an integer"),
                Reply::Integer(2),
                Reply::Array(vec![b("b"), b("c")]),
                Reply::Array(vec![b("7"), b("3")]),
                Reply::Simple("hash".into()),
                Reply::Map(vec![(b("b"), b("7")), (b("c"), b("3"))]),
                err("ERR wrong number of arguments for 'hset' command"),
            ]
        );
    }

    #[test]
    fn types_are_kept_apart() {
        let mut view = view_with_string();
        let wrong = wrong_type();
        let replies = run_all(
            &mut view,
            &[
                &["hset", "s", "f", "v"],
                &["hget", "s", "f"],
                &["hset", "h", "f", "v"],
                &["get", "h"],
                &["incr", "h"],
                &["append", "h", "x"],
                &["mget", "h", "s"],
                &["set", "h", "now a string"],
                &["type", "h"],
                &["hlen", "h"],
            ],
        );
        assert_eq!(
            replies,
            vec![
                wrong.clone(),
                wrong.clone(),
                Reply::Integer(1),
                wrong.clone(),
                wrong.clone(),
                wrong.clone(),
                Reply::Array(vec![Reply::Nil, b("x")]),
                Reply::ok(),
                Reply::Simple("string".into()),
                wrong,
            ]
        );
    }

    #[test]
    fn deleting_the_last_field_deletes_the_key_and_expiry_is_kept() {
        let mut view = View::new(1_000);
        let v = Version { wall_ns: 1, logical: 0, node_id: 1 };
        let stored = hash::encode(&[(Bytes::from_static(b"a"), Bytes::from_static(b"1"))].into_iter().collect());
        let entry = Entry { value: stored, expires_at_ms: 5_000, kind: kind::REDIS_HASH };
        view.load(Bytes::from_static(b"h"), Some((entry, v)));
        assert_eq!(
            run_all(&mut view, &[&["hset", "h", "b", "2"], &["pttl", "h"]]),
            vec![Reply::Integer(1), Reply::Integer(4_000)]
        );
        assert_eq!(
            run_all(&mut view, &[&["hdel", "h", "a", "b"], &["exists", "h"]]),
            vec![Reply::Integer(2), Reply::Integer(0)]
        );
        let effects = view.effects();
        assert_eq!(effects[0].change, Some(None), "the key is deleted");
    }

    #[test]
    fn a_hash_over_the_value_limit_is_refused_whole() {
        let mut view = View::new(1_000);
        view.load(Bytes::from_static(b"h"), None);
        let big = "x".repeat(60);
        let replies = run_all(&mut view, &[&["hset", "h", "a", "1"], &["hset", "h", "b", &big], &["hlen", "h"]]);
        assert!(matches!(&replies[1], Reply::Error(m) if m.contains("max_value_bytes")), "{:?}", replies[1]);
        assert_eq!(replies[2], Reply::Integer(1), "nothing of the refused command applied");
    }

    #[test]
    fn hscan_returns_every_matching_field_at_once() {
        let mut view = View::new(1_000);
        view.load(Bytes::from_static(b"h"), None);
        let r = run_all(
            &mut view,
            &[
                &["hset", "h", "apple", "1", "avocado", "2", "banana", "3"],
                &["hscan", "h", "0", "MATCH", "a*", "COUNT", "1"],
                &["hscan", "h", "0", "NOVALUES"],
                &["hscan", "h", "x"],
            ],
        );
        let zero = b("0");
        assert_eq!(
            r[1],
            Reply::Array(vec![zero.clone(), Reply::Array(vec![b("apple"), b("1"), b("avocado"), b("2")])])
        );
        assert_eq!(r[2], Reply::Array(vec![zero, Reply::Array(vec![b("apple"), b("avocado"), b("banana")])]));
        assert_eq!(r[3], err("ERR invalid cursor"));
    }
}
