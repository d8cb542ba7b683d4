//! Reads of the MVCC data column family: a key's latest version, a key as of a
//! version, and ordered scans at a version.
//!
//! Reads that decide liveness take `now_ms`, the instant expiring values are
//! judged at: apply passes its command's version (so every replica decides
//! alike), a read the serving node's hybrid clock.

use super::{Cf, Engine};
use crate::hlc::Version;
use crate::keys::mvcc;

/// One stored version of a key: `value` is `None` for a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub value: Option<Vec<u8>>,
    pub version: Version,
    /// `NO_EXPIRY` unless the value expires.
    pub expires_at_ms: u64,
    /// How the value's bytes are read (`keys::mvcc::kind`).
    pub kind: u8,
}

/// A key's live value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub value: Vec<u8>,
    pub version: Version,
    /// `NO_EXPIRY` unless the value expires.
    pub expires_at_ms: u64,
    /// How the value's bytes are read (`keys::mvcc::kind`).
    pub kind: u8,
}

/// The newest version of `key` at or below `at` (`Version::MAX` = latest), tombstones included.
pub fn read_at(engine: &Engine, key: &[u8], at: Version) -> Option<Stored> {
    let start = mvcc::encode(key, at);
    let end = mvcc::bound(&crate::keys::next_key(key));
    let want = mvcc::key_part(&start);
    let mut found = None;
    engine.scan_versions(&start, &end, |k, v| {
        // Compared escaped, as stored: unescaping would allocate on every point read.
        if let Some((_, version)) = mvcc::split_stored(k).filter(|(part, _)| Some(*part) == want) {
            found = Some(match mvcc::Record::decode(v) {
                Some(mvcc::Record::Value { value, expires_at_ms, kind }) => {
                    Stored { value: Some(value.to_vec()), version, expires_at_ms, kind }
                }
                _ => Stored { value: None, version, expires_at_ms: mvcc::NO_EXPIRY, kind: mvcc::kind::PLAIN },
            });
        }
        false
    });
    found
}

/// The live value of `key` as of `at`, judged at `now_ms` (tombstones and expired values read as absent).
pub fn get_live(engine: &Engine, key: &[u8], at: Version, now_ms: u64) -> Option<Live> {
    match read_at(engine, key, at) {
        Some(Stored { value: Some(value), version, expires_at_ms, kind }) if !mvcc::expired(expires_at_ms, now_ms) => {
            Some(Live { value, version, expires_at_ms, kind })
        }
        _ => None,
    }
}

/// Visits live keys in `[start, end)` (encoded keys; empty end = +inf) as of `at`,
/// judged at `now_ms`, in key order, until `f` returns false. `f` gets the key,
/// its value, version and kind.
pub fn scan_at(
    engine: &Engine,
    start: &[u8],
    end: &[u8],
    at: Version,
    now_ms: u64,
    mut f: impl FnMut(&[u8], &[u8], Version, u8) -> bool,
) {
    let lo = mvcc::bound(start);
    let hi = if end.is_empty() { Vec::new() } else { mvcc::bound(end) };
    // The key whose newest visible version we already decided on; older versions are skipped.
    let mut decided: Option<Vec<u8>> = None;
    engine.scan(Cf::Data, &lo, &hi, |k, v| {
        let Some((key, version)) = mvcc::decode(k) else { return true };
        if decided.as_deref() == Some(key.as_slice()) || version > at {
            return true;
        }
        let keep_going = match mvcc::Record::decode(v) {
            Some(r @ mvcc::Record::Value { kind, .. }) => match r.live_at(now_ms) {
                Some((value, _)) => f(&key, value, version, kind),
                None => true,
            },
            _ => true,
        };
        decided = Some(key);
        keep_going
    });
}

/// Visits every stored record (all versions, tombstones) in `[start, end)`: for snapshots.
pub fn scan_raw(engine: &Engine, start: &[u8], end: &[u8], mut f: impl FnMut(&[u8], &[u8])) {
    let lo = mvcc::bound(start);
    let hi = if end.is_empty() { Vec::new() } else { mvcc::bound(end) };
    engine.scan(Cf::Data, &lo, &hi, |k, v| {
        f(k, v);
        true
    });
}

/// The stored-key span of encoded range `[start, end)`, for `delete_range` (end = +inf mapped to a sentinel).
pub fn data_span(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let hi = if end.is_empty() { vec![0xff; 8] } else { mvcc::bound(end) };
    (mvcc::bound(start), hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EngineConfig;

    fn v(wall_ns: u64) -> Version {
        Version { wall_ns, logical: 0, node_id: 1 }
    }

    /// Point reads on RocksDB, from memtables and then from files (through the
    /// key-part filters): each key finds its own versions and never a neighbour's.
    #[test]
    fn point_reads_find_their_own_key_only_in_memtables_and_in_files() {
        let dir = tempfile::tempdir().unwrap();
        // Versions from 1970: a retention longer than that keeps GC from thinning them.
        let config =
            EngineConfig { mvcc_retention: std::time::Duration::from_secs(200 * 365 * 86_400), ..Default::default() };
        let engine = Engine::open(dir.path(), &config).unwrap();
        let mut b = engine.batch();
        // "a", "a\0" and "ab" escape to stored keys that share a prefix.
        for (key, wall, value) in
            [(&b"a"[..], 10, Some(&b"a@10"[..])), (b"a", 20, None), (b"a\x00", 15, Some(b"a0@15"))]
                .into_iter()
                .chain([(&b"ab"[..], 5, Some(&b"ab@5"[..]))])
        {
            let stored = value.map_or_else(mvcc::tombstone, mvcc::encode_value);
            b.put(Cf::Data, &mvcc::encode(key, v(wall)), &stored);
        }
        b.put(Cf::Data, &mvcc::encode(b"exp", v(30)), &mvcc::encode_expiring_value(b"x", 100));
        engine.commit(b, true);
        let check = |when: &str| {
            let read = |key: &[u8], at: u64| read_at(&engine, key, v(at)).map(|s| (s.value, s.version.wall_ns));
            assert_eq!(get_live(&engine, b"exp", Version::MAX, 99).map(|l| l.expires_at_ms), Some(100), "{when}");
            assert_eq!(get_live(&engine, b"exp", Version::MAX, 100), None, "{when}: expired");
            let mut scanned = Vec::new();
            scan_at(&engine, b"e", b"f", Version::MAX, 100, |k, _, _, _| {
                scanned.push(k.to_vec());
                true
            });
            assert!(scanned.is_empty(), "{when}: a scan skips expired values: {scanned:?}");
            assert_eq!(read(b"a", 15), Some((Some(b"a@10".to_vec()), 10)), "{when}");
            assert_eq!(read(b"a", 30), Some((None, 20)), "{when}: a tombstone is a version");
            assert_eq!(read(b"a", 5), None, "{when}: nothing that old");
            assert_eq!(read(b"a\x00", 30), Some((Some(b"a0@15".to_vec()), 15)), "{when}");
            assert_eq!(read(b"ab", 30), Some((Some(b"ab@5".to_vec()), 5)), "{when}");
            for missing in [&b"aa"[..], b"a\x00\x00", b"", b"b"] {
                assert_eq!(read(missing, 30), None, "{when}: {missing:?} has no versions");
            }
            assert_eq!(get_live(&engine, b"a", Version::MAX, 0), None, "{when}: deleted");
        };
        check("in memtables");
        engine.compact_all(Cf::Data);
        check("in files");
    }
}
