//! MVCC layout of the data column family.
//!
//! A stored key is `escape(encoded key) ++ 00 01 ++ !version` where `escape`
//! turns each `00` byte into `00 ff`. The terminator sorts below any escaped
//! continuation, so all versions of one key sit together, keys keep their order,
//! and the inverted version puts the newest version first.
//!
//! A stored value is a tag byte (`0` value, `1` tombstone) then the user value.

use crate::hlc::Version;

const TERMINATOR: [u8; 2] = [0x00, 0x01];
pub const TAG_VALUE: u8 = 0;
pub const TAG_TOMBSTONE: u8 = 1;

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

pub fn tombstone() -> Vec<u8> {
    vec![TAG_TOMBSTONE]
}

/// `Some(value)` for a live value, `None` for a tombstone or a corrupt record.
pub fn decode_value(stored: &[u8]) -> Option<&[u8]> {
    match stored.split_first() {
        Some((&TAG_VALUE, rest)) => Some(rest),
        _ => None,
    }
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
}
