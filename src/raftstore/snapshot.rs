//! Building a range snapshot from the engine, and installing one into a write batch.
//!
//! A snapshot is the range's state machine at its applied index: every stored
//! MVCC record in the range's bounds, the dedupe records of its keys, and its descriptor.
//! It is built in memory (ranges are bounded by the split threshold) and the
//! transport streams the encoded message in chunks.

use crate::hlc::Version;
use crate::storage::layout::{self, ApplyState};
use crate::storage::{mvcc, Batch, Cf, Engine};
use cairn_proto::internal::{MvccPair, RangeDescriptor, SnapshotData};
use prost::Message as _;

pub fn build(engine: &Engine, desc: &RangeDescriptor, apply: &ApplyState) -> SnapshotData {
    let mut data = Vec::new();
    mvcc::scan_raw(engine, &desc.start, &desc.end, |k, v| data.push(MvccPair { key: k.to_vec(), value: v.to_vec() }));
    let mut dedupe = Vec::new();
    let (lo, hi) = layout::dedupe_span(&desc.start, &desc.end);
    engine.scan(Cf::Dedupe, &lo, &hi, |k, v| {
        dedupe.push(MvccPair { key: k.to_vec(), value: v.to_vec() });
        true
    });
    SnapshotData { desc: Some(desc.clone()), data, dedupe, last_version: Some(apply.last_version.into()) }
}

/// Replaces the replica's state machine with the snapshot's, in `batch`.
/// Returns the new apply state. Log entries of the range are all dropped.
pub fn install(
    batch: &mut Batch<'_>,
    range_id: u64,
    old_desc: Option<&RangeDescriptor>,
    snap: &SnapshotData,
    index: u64,
    term: u64,
) -> ApplyState {
    let desc = snap.desc.clone().unwrap_or_default();
    // Clear what the replica held before, under both the old and the new bounds.
    for d in old_desc.into_iter().chain(std::iter::once(&desc)) {
        if d.start.is_empty() && d.end.is_empty() && d.replicas.is_empty() {
            continue; // an uninitialized replica's placeholder descriptor holds no data
        }
        let (lo, hi) = mvcc::data_span(&d.start, &d.end);
        batch.delete_range(Cf::Data, &lo, &hi);
        let (lo, hi) = layout::dedupe_span(&d.start, &d.end);
        batch.delete_range(Cf::Dedupe, &lo, &hi);
    }
    let (lo, hi) = (layout::log_key(range_id, 0), layout::log_key(range_id + 1, 0));
    batch.delete_range(Cf::RaftLog, &lo, &hi);
    for p in &snap.data {
        batch.put(Cf::Data, &p.key, &p.value);
    }
    let (lo, hi) = layout::dedupe_span(&desc.start, &desc.end);
    for p in snap.dedupe.iter().filter(|p| p.key >= lo && p.key < hi) {
        batch.put(Cf::Dedupe, &p.key, &p.value);
    }
    let apply = ApplyState {
        applied_index: index,
        truncated_index: index,
        truncated_term: term,
        last_version: snap.last_version.as_ref().map(Version::from).unwrap_or_default(),
    };
    batch.put(Cf::RaftState, &layout::apply_state_key(range_id), &apply.encode());
    batch.put(Cf::RaftState, &layout::descriptor_key(range_id), &desc.encode_to_vec());
    apply
}
