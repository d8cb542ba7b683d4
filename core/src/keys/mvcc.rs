//! MVCC layout of the data column family.
//!
//! A stored key is `escape(encoded key) ++ 00 01 ++ !version` where `escape`
//! turns each `00` byte into `00 ff`. The terminator sorts below any escaped
//! continuation, so all versions of one key sit together, keys keep their order,
//! and the inverted version puts the newest version first.
//!
//! A stored value is a tag byte then its body: `0` a value (the body is the
//! user value), `1` a tombstone (no body), `2` a value with an expiry (the body
//! is the expiry instant, Unix milliseconds as a big-endian u64, then the user
//! value), `3` a value of another kind than a plain one (the body is the kind
//! byte, the expiry instant, `NO_EXPIRY` for none, then the value). An expiring
//! value is live only while the time it is judged at is before its expiry; who
//! judges at what time is the reader's choice, never the record's.
//!
//! A value's kind (`kind`) says how its bytes are to be read: plain bytes, or
//! a Redis hash. It lives beside the value, not in it, so that a plain value is
//! exactly what the client wrote whatever bytes it holds.

use crate::hlc::Version;

const TERMINATOR: [u8; 2] = [0x00, 0x01];
pub const TAG_VALUE: u8 = 0;
pub const TAG_TOMBSTONE: u8 = 1;
pub const TAG_EXPIRING: u8 = 2;
pub const TAG_KINDED: u8 = 3;

/// The kinds of value (the stored byte; `cairn.v1.ValueKind` on the wire).
pub mod kind {
    /// Bytes as written: what the native API's puts and Redis strings store.
    pub const PLAIN: u8 = 0;
    /// A Redis hash, encoded by `resp::hash`.
    pub const REDIS_HASH: u8 = 1;
}
/// The expiry of a value that never expires.
pub const NO_EXPIRY: u64 = 0;

fn escape_into(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
}

/// Every field bit-flipped: stored this way, newer versions sort first. Its own inverse.
fn inverted(v: Version) -> Version {
    Version { wall_ns: !v.wall_ns, logical: !v.logical, node_id: !v.node_id }
}

/// The stored key of `key` at `version`.
pub fn encode(key: &[u8], version: Version) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 20);
    escape_into(&mut out, key);
    out.extend_from_slice(&TERMINATOR);
    out.extend_from_slice(&inverted(version).to_bytes());
    out
}

/// The stored-key bound below which every version of every key `< key` sorts.
/// An empty `key` as an end bound means +infinity and must be handled by the caller.
pub fn bound(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2);
    escape_into(&mut out, key);
    out.extend_from_slice(&TERMINATOR);
    out
}

/// Splits a stored key into (encoded key, version).
pub fn decode(stored: &[u8]) -> Option<(Vec<u8>, Version)> {
    let mut key = Vec::with_capacity(stored.len());
    let mut i = 0;
    while i < stored.len() {
        let b = stored[i];
        if b == 0 {
            match stored.get(i + 1)? {
                0xff => key.push(0),
                0x01 => return Some((key, inverted(Version::from_bytes(stored.get(i + 2..)?)?))),
                _ => return None,
            }
            i += 2;
        } else {
            key.push(b);
            i += 1;
        }
    }
    None
}

/// The key part of a stored key (escaped key ++ terminator): every version of one
/// key shares it, which makes it the storage engine's prefix for point-read filters.
/// `None` if the record is not a well-formed stored key.
pub fn key_part(stored: &[u8]) -> Option<&[u8]> {
    split_stored(stored).map(|(key_part, _)| key_part)
}

/// Splits a stored key into its key part (escaped key ++ terminator, compared
/// as bytes) and its version, without unescaping: the cheap form for passes over
/// many records. `None` if the record is not a well-formed stored key.
pub fn split_stored(stored: &[u8]) -> Option<(&[u8], Version)> {
    let key_len = stored.len().checked_sub(16)?;
    let (key_part, inv) = stored.split_at(key_len);
    if !key_part.ends_with(&TERMINATOR) {
        return None;
    }
    Some((key_part, inverted(Version::from_bytes(inv)?)))
}

pub fn encode_value(value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 1);
    v.push(TAG_VALUE);
    v.extend_from_slice(value);
    v
}

/// A value that expires at `expires_at_ms` (Unix ms); `NO_EXPIRY` stores a plain value.
pub fn encode_expiring_value(value: &[u8], expires_at_ms: u64) -> Vec<u8> {
    if expires_at_ms == NO_EXPIRY {
        return encode_value(value);
    }
    let mut v = Vec::with_capacity(value.len() + 9);
    v.push(TAG_EXPIRING);
    v.extend_from_slice(&expires_at_ms.to_be_bytes());
    v.extend_from_slice(value);
    v
}

/// A value of `kind` that expires at `expires_at_ms` (`NO_EXPIRY`: never).
pub fn encode_kinded_value(value: &[u8], expires_at_ms: u64, kind: u8) -> Vec<u8> {
    if kind == kind::PLAIN {
        return encode_expiring_value(value, expires_at_ms);
    }
    let mut v = Vec::with_capacity(value.len() + 10);
    v.push(TAG_KINDED);
    v.push(kind);
    v.extend_from_slice(&expires_at_ms.to_be_bytes());
    v.extend_from_slice(value);
    v
}

pub fn tombstone() -> Vec<u8> {
    vec![TAG_TOMBSTONE]
}

/// One stored record's value, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A value, with its expiry (`NO_EXPIRY` for none) and kind.
    Value {
        value: &'a [u8],
        expires_at_ms: u64,
        kind: u8,
    },
    Tombstone,
}

impl<'a> Record<'a> {
    pub fn decode(stored: &'a [u8]) -> Option<Record<'a>> {
        match stored.split_first()? {
            (&TAG_VALUE, rest) => Some(Record::Value { value: rest, expires_at_ms: NO_EXPIRY, kind: kind::PLAIN }),
            (&TAG_TOMBSTONE, _) => Some(Record::Tombstone),
            (&TAG_EXPIRING, rest) if rest.len() >= 8 => {
                let (at, value) = rest.split_at(8);
                let expires_at_ms = u64::from_be_bytes(at.try_into().ok()?);
                Some(Record::Value { value, expires_at_ms, kind: kind::PLAIN })
            }
            (&TAG_KINDED, rest) if rest.len() >= 9 => {
                let (head, value) = rest.split_at(9);
                let expires_at_ms = u64::from_be_bytes(head[1..].try_into().ok()?);
                Some(Record::Value { value, expires_at_ms, kind: head[0] })
            }
            _ => None,
        }
    }

    /// The value and its expiry if it is live when judged at `now_ms`.
    pub fn live_at(self, now_ms: u64) -> Option<(&'a [u8], u64)> {
        match self {
            Record::Value { value, expires_at_ms, .. } if !expired(expires_at_ms, now_ms) => {
                Some((value, expires_at_ms))
            }
            _ => None,
        }
    }
}

/// Whether a value with this expiry is gone when judged at `now_ms`: it lives
/// up to, and not including, its expiry instant (as in Redis).
pub fn expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != NO_EXPIRY && expires_at_ms <= now_ms
}

/// `Some(value)` for a value live when judged at `now_ms`; `None` for a
/// tombstone, an expired value or a corrupt record.
pub fn decode_value(stored: &[u8], now_ms: u64) -> Option<&[u8]> {
    Record::decode(stored).and_then(|r| r.live_at(now_ms)).map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(w: u64) -> Version {
        Version { wall_ns: w, logical: 0, node_id: 1 }
    }

    #[test]
    fn order_is_key_then_newest_first() {
        let a_new = encode(b"a", v(20));
        let a_old = encode(b"a", v(10));
        let a0 = encode(b"a\x00", v(5));
        let b = encode(b"b", v(1));
        assert!(a_new < a_old);
        assert!(a_old < a0);
        assert!(a0 < b);
        assert!(bound(b"a") <= a_new && a_old < bound(b"a\x00"));
        assert!(a0 < bound(b"b"));
    }

    #[test]
    fn split_stored_agrees_with_decode() {
        let s = encode(b"a\x00b", v(7));
        let (part, version) = split_stored(&s).unwrap();
        assert_eq!(version, v(7));
        assert_eq!(part, bound(b"a\x00b").as_slice());
        assert_eq!(split_stored(b"short"), None);
        assert_eq!(split_stored(&[7u8; 20]), None);
        assert_eq!(key_part(&s), Some(bound(b"a\x00b").as_slice()));
        assert_eq!(key_part(b"short"), None);
    }

    #[test]
    fn roundtrip_with_zero_bytes() {
        let k = b"\x00x\x00\x00y".to_vec();
        let s = encode(&k, v(42));
        assert_eq!(decode(&s), Some((k, v(42))));
        assert_eq!(decode(b"abc"), None);
        assert_eq!(decode(b"a\x00\x02"), None);
    }

    #[test]
    fn expiring_values_live_until_their_expiry_and_plain_ones_forever() {
        let plain = encode_value(b"v");
        assert_eq!(encode_expiring_value(b"v", NO_EXPIRY), plain, "no expiry stores a plain value");
        let expiring = encode_expiring_value(b"v\x00x", 1_000);
        assert_eq!(Record::decode(&expiring), Some(Record::Value { value: b"v\x00x", expires_at_ms: 1_000, kind: 0 }));
        assert_eq!(decode_value(&expiring, 999), Some(&b"v\x00x"[..]));
        assert_eq!(decode_value(&expiring, 1_000), None, "gone at its expiry instant");
        assert_eq!(decode_value(&plain, u64::MAX), Some(&b"v"[..]));
        assert_eq!(decode_value(&tombstone(), 0), None);
        assert_eq!(Record::decode(&[TAG_EXPIRING, 1, 2]), None, "a truncated expiry is corrupt, not a value");
        assert_eq!(Record::decode(&[]), None);
        assert_eq!(Record::decode(&[9, 1]), None);
    }

    #[test]
    fn kinded_values_keep_their_kind_and_expiry() {
        assert_eq!(encode_kinded_value(b"v", 5, kind::PLAIN), encode_expiring_value(b"v", 5), "plain stays plain");
        let hash = encode_kinded_value(b"h\x00", NO_EXPIRY, kind::REDIS_HASH);
        let want = Record::Value { value: b"h\x00", expires_at_ms: NO_EXPIRY, kind: kind::REDIS_HASH };
        assert_eq!(Record::decode(&hash), Some(want));
        assert_eq!(decode_value(&hash, u64::MAX), Some(&b"h\x00"[..]));
        let expiring = encode_kinded_value(b"h", 1_000, kind::REDIS_HASH);
        assert_eq!(decode_value(&expiring, 999), Some(&b"h"[..]));
        assert_eq!(decode_value(&expiring, 1_000), None);
        assert_eq!(Record::decode(&[TAG_KINDED, 1, 0, 0]), None, "a truncated header is corrupt");
    }
}
