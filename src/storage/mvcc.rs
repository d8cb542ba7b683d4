//! Reads of the MVCC data column family: a key's latest version, a key as of a
//! version, and ordered scans at a version.

use super::{Cf, Engine};
use crate::hlc::Version;
use crate::keys::mvcc;

/// One stored version of a key: `value` is `None` for a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub value: Option<Vec<u8>>,
    pub version: Version,
}

/// The newest version of `key` at or below `at` (`Version::MAX` = latest), tombstones included.
pub fn read_at(engine: &Engine, key: &[u8], at: Version) -> Option<Stored> {
    let start = mvcc::encode(key, at);
    let end = mvcc::bound(&crate::keys::next_key(key));
    let mut found = None;
    engine.scan_versions(&start, &end, |k, v| {
        if let Some((user, version)) = mvcc::decode(k) {
            if user == key {
                found = Some(Stored { value: mvcc::decode_value(v).map(<[u8]>::to_vec), version });
            }
        }
        false
    });
    found
}

/// The live value of `key` (tombstones read as absent).
pub fn get_live(engine: &Engine, key: &[u8], at: Version) -> Option<(Vec<u8>, Version)> {
    match read_at(engine, key, at) {
        Some(Stored { value: Some(v), version }) => Some((v, version)),
        _ => None,
    }
}

/// Visits live keys in `[start, end)` (encoded keys; empty end = +inf) as of `at`,
/// in key order, until `f` returns false.
pub fn scan_at(
    engine: &Engine,
    start: &[u8],
    end: &[u8],
    at: Version,
    mut f: impl FnMut(&[u8], &[u8], Version) -> bool,
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
        let keep_going = match mvcc::decode_value(v) {
            Some(value) => f(&key, value, version),
            None => true,
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
