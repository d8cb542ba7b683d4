//! Key layout of the non-data column families, and the per-range apply state.
//!
//! - `raft_log`:   `range_id ++ index` → `C1 ++ crc32 ++ eraftpb.Entry` (see `encode_log_entry`)
//! - `raft_state`: `range_id ++ 01` hard state, `++ 02` apply state, `++ 03` descriptor,
//!   `++ 04` tombstone (replica removed), `++ 05` quarantine (the descriptor of a replica
//!   whose log failed its checksum, until the range removes it)
//! - `dedupe`:     `mvcc bound(encoded key) ++ request_id` → wall-clock ms ++ that key's
//!   results (a `WriteResponse`). Keyed by data key, not by range, so records stay
//!   with their keys through splits and travel in snapshots by key span.
//! - `local`:      node identity and the peer address book

use crate::hlc::Version;
use prost011::Message as _;
use raft::eraftpb::Entry;

/// First byte of a checksummed log entry. A protobuf `Entry` never starts with it
/// (its first byte is the tag of field 1 to 6), so values written before
/// checksums existed are still read, unchecked.
const LOG_ENTRY_MARKER: u8 = 0xC1;

/// A stored log entry: `C1 ++ crc32(entry) (BE) ++ entry`. The checksum is ours,
/// per entry, so damage is pinned to one replica (RocksDB's own block checksums
/// fail whole reads).
pub fn encode_log_entry(e: &Entry) -> Vec<u8> {
    let body = e.encode_to_vec();
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(LOG_ENTRY_MARKER);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntryError {
    /// The bytes do not match their checksum: the entry was damaged at rest.
    Checksum,
    Undecodable(String),
}

impl std::fmt::Display for LogEntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogEntryError::Checksum => write!(f, "log entry fails its checksum"),
            LogEntryError::Undecodable(e) => write!(f, "undecodable log entry: {e}"),
        }
    }
}

pub fn decode_log_entry(raw: &[u8]) -> Result<Entry, LogEntryError> {
    let body = match raw.first() {
        Some(&LOG_ENTRY_MARKER) => {
            let crc = raw.get(1..5).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
            let body = raw.get(5..).unwrap_or_default();
            if crc != Some(crc32fast::hash(body)) {
                return Err(LogEntryError::Checksum);
            }
            body
        }
        _ => raw,
    };
    Entry::decode(body).map_err(|e| LogEntryError::Undecodable(e.to_string()))
}

pub fn log_key(range_id: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&range_id.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

pub fn log_range_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(*key.first_chunk::<8>()?))
}

pub fn log_index_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(8..16)?.try_into().ok()?))
}

/// What a per-range `raft_state` key holds (its last byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKey {
    HardState = 0x01,
    ApplyState = 0x02,
    Descriptor = 0x03,
    Tombstone = 0x04,
    Quarantine = 0x05,
    /// A snapshot whose files are not all ingested yet: (term, index), 16 bytes.
    PendingIngest = 0x06,
}

fn state_key(range_id: u64, kind: StateKey) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&range_id.to_be_bytes());
    k[8] = kind as u8;
    k
}

/// The range and kind of a per-range `raft_state` key (`None` for other keys,
/// such as dedupe records old data dirs still keep there).
pub fn parse_state_key(k: &[u8]) -> Option<(u64, StateKey)> {
    let (range_id, kind) = k.split_first_chunk::<8>()?;
    let kind = match kind {
        [0x01] => StateKey::HardState,
        [0x02] => StateKey::ApplyState,
        [0x03] => StateKey::Descriptor,
        [0x04] => StateKey::Tombstone,
        [0x05] => StateKey::Quarantine,
        [0x06] => StateKey::PendingIngest,
        _ => return None,
    };
    Some((u64::from_be_bytes(*range_id), kind))
}

pub fn hard_state_key(range_id: u64) -> [u8; 9] {
    state_key(range_id, StateKey::HardState)
}
pub fn apply_state_key(range_id: u64) -> [u8; 9] {
    state_key(range_id, StateKey::ApplyState)
}
pub fn descriptor_key(range_id: u64) -> [u8; 9] {
    state_key(range_id, StateKey::Descriptor)
}
pub fn tombstone_key(range_id: u64) -> [u8; 9] {
    state_key(range_id, StateKey::Tombstone)
}
pub fn quarantine_key(range_id: u64) -> [u8; 9] {
    state_key(range_id, StateKey::Quarantine)
}
pub fn pending_ingest_key(range_id: u64) -> [u8; 9] {
    state_key(range_id, StateKey::PendingIngest)
}

/// The first and one-past-last `raft_state` keys of a range.
pub fn range_state_bounds(range_id: u64) -> ([u8; 8], [u8; 8]) {
    (range_id.to_be_bytes(), (range_id + 1).to_be_bytes())
}

/// The dedupe record of `request_id` for data key `key`. The bound ends in `00 01`,
/// which no escaped key contains, so key and request id never run together.
pub fn dedupe_key(key: &[u8], request_id: &[u8]) -> Vec<u8> {
    let mut k = crate::keys::mvcc::bound(key);
    k.extend_from_slice(request_id);
    k
}

/// The `dedupe` keys of every record of data keys in `[start, end)` (empty end = +inf):
/// records start with the key's MVCC bound, so they span what the data does.
pub fn dedupe_span(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    super::mvcc::data_span(start, end)
}

/// The write time (ms, from the writing command's version) a dedupe record starts with.
pub fn dedupe_record_ms(value: &[u8]) -> Option<u64> {
    value.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

/// Cluster identity of this node: `cluster_id\0node_id`.
pub const LOCAL_IDENT: &[u8] = b"ident";
/// Peer address book: `addr/<node id BE>` → address.
pub fn local_addr_key(node_id: u64) -> Vec<u8> {
    let mut k = b"addr/".to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    k
}
pub const LOCAL_ADDR_PREFIX: &[u8] = b"addr/";

/// Where a range's state machine stands; written in the same batch as every applied change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyState {
    pub applied_index: u64,
    pub truncated_index: u64,
    pub truncated_term: u64,
    /// Highest version applied in this range; the next one must be above it.
    pub last_version: Version,
}

impl ApplyState {
    const LEN: usize = 1 + 8 * 3 + 16;

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::LEN);
        b.push(1);
        b.extend_from_slice(&self.applied_index.to_be_bytes());
        b.extend_from_slice(&self.truncated_index.to_be_bytes());
        b.extend_from_slice(&self.truncated_term.to_be_bytes());
        b.extend_from_slice(&self.last_version.to_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<ApplyState> {
        if b.len() != Self::LEN || b[0] != 1 {
            return None;
        }
        let u = |i: usize| b[i..i + 8].try_into().ok().map(u64::from_be_bytes);
        Some(ApplyState {
            applied_index: u(1)?,
            truncated_index: u(9)?,
            truncated_term: u(17)?,
            last_version: Version::from_bytes(&b[25..41])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_log_entry_fails_its_checksum() {
        let e = Entry { term: 7, index: 42, data: b"put k v".to_vec(), ..Default::default() };
        let mut raw = encode_log_entry(&e);
        assert_eq!(decode_log_entry(&raw), Ok(e.clone()));
        let last = raw.len() - 1;
        raw[last] ^= 0x10;
        assert_eq!(decode_log_entry(&raw), Err(LogEntryError::Checksum));
        // Entries stored before checksums existed are still read.
        assert_eq!(decode_log_entry(&e.encode_to_vec()), Ok(e));
    }

    #[test]
    fn state_keys_parse_back() {
        assert_eq!(parse_state_key(&descriptor_key(7)), Some((7, StateKey::Descriptor)));
        assert_eq!(parse_state_key(&quarantine_key(u64::MAX)), Some((u64::MAX, StateKey::Quarantine)));
        assert_eq!(parse_state_key(&pending_ingest_key(3)), Some((3, StateKey::PendingIngest)));
        assert_eq!(parse_state_key(&log_key(7, 3)), None, "not a state key");
        assert_eq!(parse_state_key(&[0; 8]), None);
    }

    #[test]
    fn apply_state_roundtrip_and_ordering() {
        let s = ApplyState {
            applied_index: 9,
            truncated_index: 5,
            truncated_term: 5,
            last_version: Version { wall_ns: 1, logical: 2, node_id: 3 },
        };
        assert_eq!(ApplyState::decode(&s.encode()), Some(s));
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        let (lo, hi) = range_state_bounds(7);
        assert!(lo.as_slice() <= hard_state_key(7).as_slice() && tombstone_key(7).as_slice() < hi.as_slice());
    }

    #[test]
    fn dedupe_records_sort_by_their_data_key() {
        let (lo, hi) = dedupe_span(b"b", b"d");
        for key in [&b"b"[..], b"b\0", b"c", b"c\xff\xff", b"cz"] {
            let k = dedupe_key(key, b"\xff\xffrid");
            assert!(lo <= k && k < hi, "{key:?} is inside the span");
        }
        for key in [&b"a"[..], b"a\xff", b"d", b"d\0"] {
            let k = dedupe_key(key, b"\0");
            assert!(k < lo || k >= hi, "{key:?} is outside the span");
        }
        assert_ne!(dedupe_key(b"a", b"\0\x01b"), dedupe_key(b"a\0", b"b"), "key and id never run together");
        let (_, open) = dedupe_span(b"b", b"");
        assert!(dedupe_key(b"zzzz", b"r") < open);
    }
}
