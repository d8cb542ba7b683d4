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
    SnapshotData {
        desc: Some(desc.clone()),
        data,
        dedupe,
        last_version: Some(apply.last_version.into()),
        gc_collected_below_ns: engine.mvcc_gc().collected_below(),
    }
}

/// Replaces the replica's state machine with the snapshot's, in `batch`.
/// Returns the new apply state. Log entries of the range are all dropped.
///
/// The engine's MVCC GC mark is raised to the sender's at once, before the batch
/// makes the data readable: versions the sender's GC dropped are missing from it,
/// so a read below that mark must be refused here as it would be there.
pub fn install(
    engine: &Engine,
    batch: &mut Batch<'_>,
    range_id: u64,
    old_desc: Option<&RangeDescriptor>,
    snap: &SnapshotData,
    index: u64,
    term: u64,
) -> ApplyState {
    engine.mvcc_gc().raise_to(snap.gc_collected_below_ns);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::mvcc as mvcc_keys;
    use crate::storage::EngineConfig;
    use std::time::Duration;

    /// Defect: a replica built from a snapshot kept its own, lower GC mark, so a scan
    /// resumed between the two marks was served from versions the sender had dropped.
    #[test]
    fn a_replica_built_from_a_snapshot_refuses_reads_below_the_senders_gc_mark() {
        let config = EngineConfig { mvcc_retention: Duration::from_secs(60), ..Default::default() };
        let (dir_r, dir_s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let receiver = Engine::open(dir_r.path(), &config).unwrap();
        let receiver_mark = receiver.mvcc_gc().collected_below();
        std::thread::sleep(Duration::from_millis(50));
        let sender = Engine::open(dir_s.path(), &config).unwrap();
        let v = |wall_ns| Version { wall_ns, logical: 0, node_id: 1 };
        let now = crate::hlc::wall_now_ns();
        let mut b = sender.batch();
        for age_s in [120, 90, 5] {
            let key = mvcc_keys::encode(b"k", v(now - age_s * 1_000_000_000));
            b.put(Cf::Data, &key, &mvcc_keys::encode_value(format!("k@{age_s}").as_bytes()));
        }
        sender.commit(b, true);
        sender.compact_all(Cf::Data);
        let sender_mark = sender.mvcc_gc().collected_below();
        assert!(sender_mark > receiver_mark + 10_000_000, "the sender collected later than the receiver opened");

        let desc = RangeDescriptor { id: 5, start: b"a".to_vec(), end: b"z".to_vec(), ..Default::default() };
        let apply = ApplyState { last_version: v(now), ..Default::default() };
        let snap = build(&sender, &desc, &apply);
        assert_eq!(snap.data.len(), 2, "the sender's GC dropped the version shadowed inside its window");
        let mut batch = receiver.batch();
        install(&receiver, &mut batch, 5, None, &snap, 10, 6);
        receiver.commit(batch, true);

        // A page token's version between the receiver's own mark and the sender's.
        let resumed_at = v(receiver_mark + 5_000_000);
        assert!(
            receiver.mvcc_gc().check_readable(resumed_at, v(now)).is_err(),
            "a read below the sender's GC mark was allowed on the snapshot's receiver"
        );
        assert!(receiver.mvcc_gc().check_readable(v(now), v(now)).is_ok(), "reads at the newest version stay allowed");
    }
}
