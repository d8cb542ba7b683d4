//! Key expiry: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT (with NX/XX/GT/LT), TTL,
//! PTTL, EXPIRETIME, PEXPIRETIME, PERSIST, and the parsing of the expiry
//! options SET and GETEX take.
//!
//! An expiry is stored with the value and judged where it matters: a write at
//! its own version (alike on every replica), a read at the serving node's
//! clock. Relative expiries without a condition count from the write's
//! version; ones that must be compared first (NX/XX/GT/LT) are turned into an
//! instant here and applied on condition that the key is unchanged.

use super::super::RespServer;
use super::parse_i64;
use super::rmw::{self, read_modify_write, Change, Result};
use bytes::Bytes;
use cairn_core::resp::reply::Reply;
use cairn_proto::internal::{expiry, mutation, Expiry, Mutation};
use cairn_proto::kv::GetResponse;

pub async fn run(srv: &RespServer, name: &str, a: &[Bytes]) -> Reply {
    let out = match name {
        "expire" | "pexpire" | "expireat" | "pexpireat" => expire(srv, name, a).await,
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => ttl(srv, name, &a[0]).await,
        "persist" => persist(srv, &a[0]).await,
        _ => Err(Reply::Error(format!("ERR unknown command '{name}'"))),
    };
    out.unwrap_or_else(|e| e)
}

pub fn invalid_expire_time(command: &str) -> Reply {
    Reply::Error(format!("ERR invalid expire time in '{command}' command"))
}

/// The expiry of a SET/GETEX option (`EX`, `PX`, `EXAT`, `PXAT`) with argument
/// `n`, which Redis requires to be positive and to fit in milliseconds.
pub fn option_expiry(option: &str, n: &[u8], command: &str) -> Result<Expiry> {
    let n = parse_i64(n)?;
    if n <= 0 {
        return Err(invalid_expire_time(command));
    }
    let seconds = matches!(option, "EX" | "EXAT");
    let ms = if seconds { n.checked_mul(1000).ok_or_else(|| invalid_expire_time(command))? } else { n } as u64;
    let when = match option {
        "EX" | "PX" => expiry::When::AfterMs(ms),
        _ => expiry::When::AtMs(ms),
    };
    Ok(Expiry { when: Some(when) })
}

/// NX/XX/GT/LT of the EXPIRE family: conditions on the key's current expiry.
#[derive(Clone, Copy, Default)]
pub struct Only {
    /// Only if the key has no expiry.
    nx: bool,
    /// Only if it has one.
    xx: bool,
    /// Only if the new one is later (none counts as never, so nothing is later).
    gt: bool,
    /// Only if the new one is earlier (none counts as never, so anything is earlier).
    lt: bool,
}

impl Only {
    pub fn parse(args: &[Bytes]) -> Result<Only> {
        let mut o = Only::default();
        for a in args {
            match super::upper(a).as_str() {
                "NX" => o.nx = true,
                "XX" => o.xx = true,
                "GT" => o.gt = true,
                "LT" => o.lt = true,
                other => return Err(Reply::Error(format!("ERR Unsupported option {other}"))),
            }
        }
        if o.nx && (o.xx || o.gt || o.lt) {
            return Err(Reply::Error("ERR NX and XX, GT or LT options at the same time are not compatible".into()));
        }
        if o.gt && o.lt {
            return Err(Reply::Error("ERR GT and LT options at the same time are not compatible".into()));
        }
        Ok(o)
    }

    pub fn any(self) -> bool {
        self.nx || self.xx || self.gt || self.lt
    }

    /// Whether a change to `new_ms` applies to a key whose expiry is `cur_ms` (0: none).
    pub fn holds(self, cur_ms: u64, new_ms: u64) -> bool {
        let has = cur_ms != 0;
        let nx_ok = !self.nx || !has;
        let xx_ok = !self.xx || has;
        let gt_ok = !self.gt || (has && new_ms > cur_ms);
        let lt_ok = !self.lt || !has || new_ms < cur_ms;
        nx_ok && xx_ok && gt_ok && lt_ok
    }
}

/// Where an EXPIRE-family command's argument puts the expiry.
pub struct ExpireTarget {
    /// For EXPIRE and PEXPIRE: milliseconds from now (a negative count is 0: due at once).
    pub relative_ms: Option<u64>,
    /// The instant, as of `now_ms` for relative ones; before 1970 is "long past", as in Redis.
    pub at_ms: u64,
}

pub fn expire_target(name: &str, n: &[u8], now_ms: u64) -> Result<ExpireTarget> {
    let n = parse_i64(n)?;
    let seconds = matches!(name, "expire" | "expireat");
    let ms = if seconds { n.checked_mul(1000).ok_or_else(|| invalid_expire_time(name))? } else { n };
    let relative = matches!(name, "expire" | "pexpire");
    let at_ms = if relative { (now_ms as i64).checked_add(ms).ok_or_else(|| invalid_expire_time(name))? } else { ms };
    Ok(ExpireTarget { relative_ms: relative.then_some(ms.max(0) as u64), at_ms: at_ms.max(1) as u64 })
}

/// EXPIRE key n [NX|XX|GT|LT] and its siblings: 1 if the expiry was set, 0 if
/// the key does not exist or a condition did not hold. An instant already past
/// deletes the key (and counts as set).
async fn expire(srv: &RespServer, name: &str, a: &[Bytes]) -> Result<Reply> {
    let only = Only::parse(&a[2..])?;
    let ExpireTarget { relative_ms, at_ms } = expire_target(name, &a[1], crate::hlc::wall_now_ms())?;
    if !only.any() {
        // No comparison: one write, relative to the write's own version.
        let when = match relative_ms {
            Some(ms) => expiry::When::AfterMs(ms),
            None => expiry::When::AtMs(at_ms),
        };
        let res = super::super::keyspace::write(&srv.gw, |t| {
            Ok(vec![Mutation {
                key: super::super::keyspace::encode(&srv.gw, t, &a[0])?,
                condition: None,
                op: Some(mutation::Op::SetExpiry(Expiry { when: Some(when) })),
                expiry: None,
                value_kind: 0,
            }])
        })
        .await?;
        return Ok(Reply::Integer(res.first().is_some_and(|r| r.existed) as i64));
    }
    read_modify_write(srv, &a[0], |cur| match cur {
        Some(r) if only.holds(r.expires_at_ms, at_ms) => {
            Ok((Change::Expire(Expiry { when: Some(expiry::When::AtMs(at_ms)) }), Reply::Integer(1)))
        }
        _ => Ok((Change::Keep, Reply::Integer(0))),
    })
    .await
}

/// What TTL-like commands answer for a key that `r` read.
pub fn ttl_reply(name: &str, r: &GetResponse, now_ms: u64) -> Reply {
    if !r.found {
        return Reply::Integer(-2);
    }
    if r.expires_at_ms == 0 {
        return Reply::Integer(-1);
    }
    let left_ms = r.expires_at_ms.saturating_sub(now_ms);
    Reply::Integer(match name {
        // Rounded to the nearest second, as Redis does.
        "ttl" => (left_ms.saturating_add(500) / 1000) as i64,
        "pttl" => left_ms as i64,
        "expiretime" => (r.expires_at_ms / 1000) as i64,
        _ => r.expires_at_ms as i64,
    })
}

async fn ttl(srv: &RespServer, name: &str, key: &[u8]) -> Result<Reply> {
    let r = rmw::read_one(srv, key, false).await?;
    Ok(ttl_reply(name, &r, crate::hlc::wall_now_ms()))
}

/// PERSIST: 1 if an expiry was removed, 0 if the key has none or does not exist.
async fn persist(srv: &RespServer, key: &[u8]) -> Result<Reply> {
    read_modify_write(srv, key, |cur| match cur {
        Some(r) if r.expires_at_ms != 0 => {
            Ok((Change::Expire(Expiry { when: Some(expiry::When::Never(true)) }), Reply::Integer(1)))
        }
        _ => Ok((Change::Keep, Reply::Integer(0))),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(args: &[&str]) -> Result<Only> {
        Only::parse(&args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect::<Vec<_>>())
    }

    #[test]
    fn conditions_follow_redis_with_no_expiry_counting_as_never() {
        let (none, at_100) = (0, 100);
        let check = |args: &[&str], cur: u64, new: u64| only(args).map(|o| o.holds(cur, new)).unwrap_or(false);
        assert!(check(&["NX"], none, 50) && !check(&["NX"], at_100, 50));
        assert!(!check(&["XX"], none, 50) && check(&["XX"], at_100, 50));
        assert!(!check(&["GT"], none, 50), "nothing is later than never");
        assert!(check(&["GT"], at_100, 101) && !check(&["GT"], at_100, 100));
        assert!(check(&["LT"], none, 50), "anything is earlier than never");
        assert!(check(&["LT"], at_100, 99) && !check(&["LT"], at_100, 100));
        assert!(!check(&["LT", "XX"], none, 50), "XX still wants an expiry");
        assert!(only(&["NX", "GT"]).is_err() && only(&["GT", "LT"]).is_err() && only(&["FOO"]).is_err());
    }

    #[test]
    fn ttl_replies_round_up_to_seconds_and_name_missing_and_persistent_keys() {
        let key = |found, expires_at_ms| GetResponse { found, expires_at_ms, ..Default::default() };
        assert_eq!(ttl_reply("ttl", &key(false, 0), 0), Reply::Integer(-2));
        assert_eq!(ttl_reply("pttl", &key(true, 0), 0), Reply::Integer(-1));
        assert_eq!(ttl_reply("ttl", &key(true, 10_500), 1_000), Reply::Integer(10));
        assert_eq!(ttl_reply("pttl", &key(true, 10_500), 1_000), Reply::Integer(9_500));
        assert_eq!(ttl_reply("expiretime", &key(true, 10_500), 1_000), Reply::Integer(10));
        assert_eq!(ttl_reply("pexpiretime", &key(true, 10_500), 1_000), Reply::Integer(10_500));
    }
}
