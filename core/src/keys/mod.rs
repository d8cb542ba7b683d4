//! The encoded keyspace: how a (table, user key) pair becomes one byte string.
//!
//! `table id (u32 BE) ++ [slot (u16 BE), hash tables only] ++ user key`.
//! Table 0 is the system table that holds the meta range.

pub mod meta;
pub mod mvcc;
pub mod mvcc_gc;
pub mod slot;

pub use slot::{key_slot, prefix_slot, SLOT_COUNT};

/// The system table (meta range). User tables start at 1.
pub const SYSTEM_TABLE_ID: u32 = 0;
pub const FIRST_USER_TABLE_ID: u32 = 1;

/// The start of a table's keyspace.
pub fn table_prefix(table_id: u32) -> Vec<u8> {
    table_id.to_be_bytes().to_vec()
}

/// The first key after a table's keyspace (exclusive end). Empty means +inf.
pub fn table_end(table_id: u32) -> Vec<u8> {
    match table_id.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => Vec::new(),
    }
}

/// Encodes a user key of a range-partitioned table.
pub fn encode_range_key(table_id: u32, user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + user_key.len());
    k.extend_from_slice(&table_id.to_be_bytes());
    k.extend_from_slice(user_key);
    k
}

/// Encodes a user key of a hash-partitioned table (slot from CRC16 / hash tag).
pub fn encode_hash_key(table_id: u32, user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + user_key.len());
    k.extend_from_slice(&table_id.to_be_bytes());
    k.extend_from_slice(&key_slot(user_key).to_be_bytes());
    k.extend_from_slice(user_key);
    k
}

/// The first encoded key of `slot` in a hash table.
pub fn hash_slot_start(table_id: u32, slot: u16) -> Vec<u8> {
    let mut k = table_id.to_be_bytes().to_vec();
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

/// Splits an encoded key into (table id, rest). `rest` still has the slot for hash tables.
pub fn decode_table(encoded: &[u8]) -> Option<(u32, &[u8])> {
    let id: [u8; 4] = encoded.get(..4)?.try_into().ok()?;
    Some((u32::from_be_bytes(id), &encoded[4..]))
}

/// The user key of an encoded key, given the table's partitioning.
pub fn user_key(encoded: &[u8], hashed: bool) -> &[u8] {
    let skip = if hashed { 6 } else { 4 };
    encoded.get(skip..).unwrap_or(&[])
}

/// The smallest key strictly greater than every key with this prefix (empty = +inf).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// The immediate successor of `key` in byte order (`key ++ 00`).
pub fn next_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// True when `key` lies in `[start, end)`; an empty `end` is +infinity.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    key >= start && (end.is_empty() || key < end)
}

/// Human form of an encoded bound: `t<id>/<user key>`, printable bytes kept, others hex-escaped.
pub fn display_key(encoded: &[u8]) -> String {
    if encoded.is_empty() {
        return "+inf".to_string();
    }
    match decode_table(encoded) {
        Some((id, rest)) => format!("t{id}/{}", escape_bytes(rest)),
        None => escape_bytes(encoded),
    }
}

pub fn escape_bytes(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_graphic() && c != b'\\' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keyspaces_are_disjoint_and_ordered() {
        let a = encode_range_key(1, b"zzz");
        let b = encode_range_key(2, b"");
        assert!(a < b);
        assert!(in_range(&a, &table_prefix(1), &table_end(1)));
        assert!(!in_range(&b, &table_prefix(1), &table_end(1)));
        assert_eq!(table_end(u32::MAX), Vec::<u8>::new());
    }

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff, 0xff]), Vec::<u8>::new());
    }

    #[test]
    fn hash_keys_carry_their_slot() {
        let k = encode_hash_key(7, b"{user1000}.following");
        assert_eq!(decode_table(&k).unwrap().0, 7);
        assert_eq!(&k[4..6], &key_slot(b"user1000").to_be_bytes());
        assert_eq!(user_key(&k, true), b"{user1000}.following");
    }
}
