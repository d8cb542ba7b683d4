//! The encoded keyspace and the MVCC key layout: round trips, order
//! preservation, and decoding of arbitrary stored bytes.
#![no_main]

use cairn_core::hlc::Version;
use cairn_core::keys::{self, mvcc};
use libfuzzer_sys::fuzz_target;

fn version(b: &[u8]) -> Version {
    let mut buf = [0u8; 16];
    let n = b.len().min(16);
    buf[..n].copy_from_slice(&b[..n]);
    Version::from_bytes(&buf).unwrap_or(Version::ZERO)
}

fuzz_target!(|data: &[u8]| {
    // Arbitrary stored keys and values never panic, and what decodes is canonical.
    if let Some((key, v)) = mvcc::decode(data) {
        assert_eq!(mvcc::encode(&key, v), data, "stored keys have one encoding");
    }
    // Any record decodes or is refused; a value it decodes lives until its expiry and no longer.
    if let Some(mvcc::Record::Value { value, expires_at_ms, kind }) = mvcc::Record::decode(data) {
        assert_eq!(mvcc::decode_value(data, 0), Some(value), "nothing has expired at the epoch");
        if kind != mvcc::kind::PLAIN {
            assert_eq!(mvcc::encode_kinded_value(value, expires_at_ms, kind), data, "kinded values have one encoding");
        }
        if expires_at_ms != mvcc::NO_EXPIRY {
            assert_eq!(mvcc::decode_value(data, expires_at_ms), None);
            assert_eq!(mvcc::decode_value(data, expires_at_ms - 1), Some(value));
        }
    }
    // A stored hash decodes strictly or not at all: what decodes is canonical.
    if let Ok(fields) = cairn_core::resp::hash::decode(data) {
        assert_eq!(cairn_core::resp::hash::encode(&fields), data, "hashes have one encoding");
    }
    let _ = keys::decode_table(data);
    let _ = keys::display_key(data);

    if data.len() < 22 {
        return;
    }
    let table = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let (v1, v2) = (version(&data[4..12]), version(&data[12..20]));
    let split = 20 + (data[20] as usize) % (data.len() - 20);
    let (a, b) = (&data[21..split.max(21)], &data[split.max(21)..]);

    // Range keys: table and user key come back, and byte order is kept.
    let ea = keys::encode_range_key(table, a);
    let eb = keys::encode_range_key(table, b);
    assert_eq!(keys::decode_table(&ea).map(|(t, _)| t), Some(table));
    assert_eq!(keys::user_key(&ea, false), a);
    assert_eq!(a.cmp(b), ea.cmp(&eb));
    assert!(keys::in_range(&ea, &keys::table_prefix(table), &keys::table_end(table)));
    let end = keys::prefix_end(&ea);
    assert!(end.is_empty() || end > ea);
    if b.starts_with(a) {
        assert!(end.is_empty() || eb < end, "every key with the prefix sorts below prefix_end");
    }

    // Hash keys: the user key comes back and the slot is the key's.
    let h = keys::encode_hash_key(table, a);
    assert_eq!(keys::user_key(&h, true), a);
    assert!(keys::key_slot(a) < keys::SLOT_COUNT);
    assert!(h >= keys::hash_slot_start(table, keys::key_slot(a)));

    // MVCC: round trip; versions of one key stay together, newest first; keys keep their order.
    let sa1 = mvcc::encode(&ea, v1);
    assert_eq!(mvcc::decode(&sa1), Some((ea.clone(), v1)));
    let sa2 = mvcc::encode(&ea, v2);
    assert_eq!(v1.cmp(&v2), sa2.cmp(&sa1), "newer versions sort first");
    let sb = mvcc::encode(&eb, v2);
    if ea < eb {
        assert!(sa1 < sb && sa2 < sb && mvcc::bound(&eb) <= sb && mvcc::bound(&eb) > sa1);
    }
    let value = mvcc::encode_value(b);
    assert_eq!(mvcc::decode_value(&value, u64::MAX), Some(b));
    let expiring = mvcc::encode_expiring_value(b, v1.wall_ns | 1);
    let want = mvcc::Record::Value { value: b, expires_at_ms: v1.wall_ns | 1, kind: mvcc::kind::PLAIN };
    assert_eq!(mvcc::Record::decode(&expiring), Some(want));
    let hash = mvcc::encode_kinded_value(b, v2.wall_ns, mvcc::kind::REDIS_HASH);
    let want = mvcc::Record::Value { value: b, expires_at_ms: v2.wall_ns, kind: mvcc::kind::REDIS_HASH };
    assert_eq!(mvcc::Record::decode(&hash), Some(want));
});
