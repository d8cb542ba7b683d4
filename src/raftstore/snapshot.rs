//! Range snapshots: generating one from a pinned view of the engine, and
//! installing one.
//!
//! A snapshot is the range's state machine at its applied index: every stored
//! MVCC record in the range's bounds, the dedupe records of its keys, and its
//! descriptor. The store pins the engine at that index on its own turn (cheap);
//! the records are read from the pinned view later, off the store thread.
//!
//! On a real disk the records go to SST files, one per column family, in the
//! node's snapshot directory; the Raft message carries only a `SnapshotData`
//! that names them, and the transport streams the files after it. A receiver
//! installs in two steps: one synced batch clears the replica's spans, writes
//! its new apply state and records a pending ingest; then the files are
//! ingested. A node that stops in between finishes the ingest when it opens
//! (`resume_ingests`), before any replica serves. On the simulator's disk the
//! records travel inline in the message instead (ranges there are small).

use crate::hlc::Version;
use crate::storage::layout::{self, ApplyState};
use crate::storage::{mvcc, Batch, Cf, Engine, PinnedSpan, PinnedView};
use anyhow::{bail, Context, Result};
use cairn_proto::internal::{MvccPair, RangeDescriptor, SnapshotData, SnapshotFile};
use prost::Message as _;
use raft::eraftpb::{ConfState, Snapshot};
use std::path::{Path, PathBuf};

/// What a snapshot is generated from: the range as of the pinned index.
pub struct GenerateJob {
    pub range_id: u64,
    pub view: PinnedView,
    pub desc: RangeDescriptor,
    pub last_version: Version,
    pub gc_collected_below_ns: u64,
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
}

/// The spans a range's snapshot holds: its data records, then its dedupe records.
fn spans_of(desc: &RangeDescriptor) -> Vec<PinnedSpan> {
    let (lo, hi) = mvcc::data_span(&desc.start, &desc.end);
    let data = PinnedSpan { cf: Cf::Data, start: lo, end: hi };
    let (lo, hi) = layout::dedupe_span(&desc.start, &desc.end);
    vec![data, PinnedSpan { cf: Cf::Dedupe, start: lo, end: hi }]
}

/// Pins the range's state at its applied index (`term` is that entry's term).
/// Runs on the store thread, between applies.
pub fn pin(
    engine: &Engine,
    desc: &RangeDescriptor,
    apply: &ApplyState,
    term: u64,
    conf_state: ConfState,
) -> GenerateJob {
    GenerateJob {
        range_id: desc.id,
        view: engine.pin(spans_of(desc)),
        desc: desc.clone(),
        last_version: apply.last_version,
        // Read with the view: the pinned files hold nothing a later compaction dropped.
        gc_collected_below_ns: engine.mvcc_gc().collected_below(),
        index: apply.applied_index,
        term,
        conf_state,
    }
}

/// Where a node keeps the files of the snapshot it generated of a range at (term, index).
pub fn generated_dir(root: &Path, range_id: u64, term: u64, index: u64) -> PathBuf {
    root.join(format!("gen-{range_id}-{term}-{index}"))
}

/// Where a node keeps the files of a snapshot it received, once complete and checked.
pub fn received_dir(root: &Path, range_id: u64, term: u64, index: u64) -> PathBuf {
    root.join(format!("recv-{range_id}-{term}-{index}"))
}

/// The name of a snapshot's `i`-th file (its place in `SnapshotData.files`).
pub fn file_name(i: usize, cf: &str) -> String {
    format!("{i:04}-{cf}.sst")
}

/// A snapshot file is closed once it passes this size, so the index and filter
/// blocks a writer holds until it finishes a file stay small however large the range.
const MAX_FILE_BYTES: u64 = 128 << 20;

fn cf_named(name: &str) -> Result<Cf> {
    match Cf::ALL.iter().find(|c| c.name() == name) {
        Some(cf @ (Cf::Data | Cf::Dedupe)) => Ok(*cf),
        _ => bail!("a snapshot file for column family {name:?}"),
    }
}

/// Builds the snapshot: SST files under `root` on a real disk (`root` set),
/// records inline on the simulator's.
pub fn generate(job: GenerateJob, root: Option<&Path>) -> Result<Snapshot> {
    generate_with(job, root, MAX_FILE_BYTES)
}

fn generate_with(mut job: GenerateJob, root: Option<&Path>, max_file_bytes: u64) -> Result<Snapshot> {
    let mut data = SnapshotData {
        desc: Some(job.desc.clone()),
        last_version: Some(job.last_version.into()),
        gc_collected_below_ns: job.gc_collected_below_ns,
        ..Default::default()
    };
    match root {
        Some(root) => {
            let dir = generated_dir(root, job.range_id, job.term, job.index);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for i in 0..job.view.spans().len() {
                let cf = job.view.spans()[i].cf.name();
                let mut n = data.files.len();
                let written = job.view.write_ssts(i, max_file_bytes, || {
                    n += 1;
                    dir.join(file_name(n - 1, cf))
                });
                match written {
                    Ok(files) => data.files.extend(files.into_iter().map(|(_, w)| SnapshotFile {
                        cf: cf.to_string(),
                        size: w.size,
                        crc32: w.crc32,
                    })),
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e);
                    }
                }
            }
        }
        None => {
            let mut pairs = [Vec::new(), Vec::new()];
            for (i, out) in pairs.iter_mut().enumerate() {
                job.view.scan(i, |k, v| {
                    out.push(MvccPair { key: k.to_vec(), value: v.to_vec() });
                    true
                })?;
            }
            let [d, dd] = pairs;
            (data.data, data.dedupe) = (d, dd);
        }
    }
    let mut snap = Snapshot { data: data.encode_to_vec(), ..Default::default() };
    let meta = snap.metadata.get_or_insert_with(Default::default);
    meta.index = job.index;
    meta.term = job.term;
    meta.conf_state = Some(job.conf_state);
    Ok(snap)
}

/// Removes the files of a snapshot this node generated and no longer offers.
/// A stream still reading them fails, and raft-rs sends a newer one instead.
pub fn remove_generated(engine: &Engine, range_id: u64, snap: &Snapshot) {
    let (Some(root), Some(meta)) = (engine.snapshot_dir(), snap.metadata.as_ref()) else { return };
    let _ = std::fs::remove_dir_all(generated_dir(root, range_id, meta.term, meta.index));
}

/// The files a snapshot message names, with where they are on the node that
/// generated it. Empty for a snapshot with inline records.
pub fn generated_files(root: &Path, range_id: u64, snap: &Snapshot) -> Result<Vec<(PathBuf, SnapshotFile)>> {
    let data = SnapshotData::decode(snap.data.as_slice()).context("decoding snapshot data")?;
    let meta = snap.metadata.clone().unwrap_or_default();
    let dir = generated_dir(root, range_id, meta.term, meta.index);
    Ok(data.files.into_iter().enumerate().map(|(i, f)| (dir.join(file_name(i, &f.cf)), f)).collect())
}

/// Whether every file a received snapshot names is in place, at its size.
pub fn received_files_present(root: &Path, range_id: u64, term: u64, index: u64, data: &SnapshotData) -> bool {
    let dir = received_dir(root, range_id, term, index);
    data.files.iter().enumerate().all(|(i, f)| {
        cf_named(&f.cf).is_ok() && std::fs::metadata(dir.join(file_name(i, &f.cf))).is_ok_and(|m| m.len() == f.size)
    })
}

/// Files to ingest once the batch that installs their snapshot is durable.
#[derive(Debug)]
pub struct PendingIngest {
    pub range_id: u64,
    pub dir: PathBuf,
    pub files: Vec<(Cf, PathBuf)>,
}

/// Replaces the replica's state machine with the snapshot's, in `batch`.
/// Returns the new apply state, and the files to ingest (`finish_ingest`) once
/// the batch is committed. Log entries of the range are all dropped.
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
) -> Result<(ApplyState, Option<PendingIngest>)> {
    let pending = if snap.files.is_empty() {
        None
    } else {
        let root = engine.snapshot_dir().context("a snapshot with files on the simulator's disk")?;
        let dir = received_dir(root, range_id, term, index);
        let mut files = Vec::new();
        for (i, f) in snap.files.iter().enumerate() {
            files.push((cf_named(&f.cf)?, dir.join(file_name(i, &f.cf))));
        }
        Some(PendingIngest { range_id, dir, files })
    };
    engine.mvcc_gc().raise_to(snap.gc_collected_below_ns);
    let desc = snap.desc.clone().unwrap_or_default();
    // Clear what the replica held before, under both the old and the new bounds.
    for d in old_desc.into_iter().chain(std::iter::once(&desc)) {
        if d.start.is_empty() && d.end.is_empty() && d.replicas.is_empty() {
            continue; // an uninitialized replica's placeholder descriptor holds no data
        }
        for span in spans_of(d) {
            batch.delete_range(span.cf, &span.start, &span.end);
        }
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
    if pending.is_some() {
        let mut marker = term.to_be_bytes().to_vec();
        marker.extend_from_slice(&index.to_be_bytes());
        batch.put(Cf::RaftState, &layout::pending_ingest_key(range_id), &marker);
    }
    Ok((apply, pending))
}

/// Ingests an installed snapshot's files (after its batch is durable) and
/// clears the pending mark. A failure stops the node: the replica's apply
/// state already claims the snapshot's index, and the next start retries.
pub fn finish_ingest(engine: &Engine, p: &PendingIngest) {
    // Files already moved in by an earlier, interrupted attempt are gone.
    let present: Vec<(Cf, PathBuf)> = p.files.iter().filter(|(_, f)| f.exists()).cloned().collect();
    if let Err(e) = engine.ingest(&present) {
        crate::storage::engine::fail_stop("ingesting a snapshot's files", &format!("{e:#}"));
    }
    let _ = std::fs::remove_dir_all(&p.dir);
    let mut b = engine.batch();
    b.delete(Cf::RaftState, &layout::pending_ingest_key(p.range_id));
    // Unsynced: after a crash that loses it, the next start finds the directory
    // gone and only clears the mark again.
    engine.commit(b, false);
}

/// The snapshot files left in a received snapshot's directory, in order.
fn files_in(dir: &Path) -> Vec<(Cf, PathBuf)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| {
            let cf = cf_named(n.strip_suffix(".sst")?.split_once('-')?.1).ok()?;
            Some((cf, dir.join(n)))
        })
        .collect()
}

/// At start-up, before any replica loads: finishes the ingests a stop
/// interrupted, then empties the snapshot directory (snapshots being generated,
/// sent or received when the node stopped are made again on demand).
pub fn resume_ingests(engine: &Engine) {
    let Some(root) = engine.snapshot_dir() else { return };
    let mut pending = Vec::new();
    let (lo, hi) = (0u64.to_be_bytes(), u64::MAX.to_be_bytes());
    engine.scan(Cf::RaftState, &lo, &hi, |k, v| {
        if let Some((range_id, layout::StateKey::PendingIngest)) = layout::parse_state_key(k) {
            if let (Some(term), Some(index)) = (v.first_chunk::<8>(), v.get(8..16)) {
                let index = u64::from_be_bytes(index.try_into().unwrap_or_default());
                pending.push((range_id, u64::from_be_bytes(*term), index));
            }
        }
        true
    });
    for (range_id, term, index) in pending {
        let dir = received_dir(root, range_id, term, index);
        let files = files_in(&dir);
        tracing::info!(range_id, index, "finishing a snapshot ingest the last stop interrupted");
        finish_ingest(engine, &PendingIngest { range_id, dir, files });
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    if let Err(e) = std::fs::create_dir_all(root) {
        tracing::warn!("cannot create the snapshot directory {}: {e}", root.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::mvcc as mvcc_keys;
    use crate::storage::EngineConfig;
    use std::time::Duration;

    fn v(wall_ns: u64) -> Version {
        Version { wall_ns, logical: 0, node_id: 1 }
    }

    fn put(engine: &Engine, key: &[u8], at: Version, value: &[u8]) {
        let mut b = engine.batch();
        b.put(Cf::Data, &mvcc_keys::encode(key, at), &mvcc_keys::encode_value(value));
        engine.commit(b, true);
    }

    /// Generates on `sender` and moves the files where `receiver` looks for them,
    /// as the transport does; returns the snapshot's data.
    fn ship(sender: &Engine, receiver: &Engine, desc: &RangeDescriptor, apply: &ApplyState) -> SnapshotData {
        let job = pin(sender, desc, apply, 6, ConfState::default());
        ship_job(job, sender, receiver)
    }

    fn ship_job(job: GenerateJob, sender: &Engine, receiver: &Engine) -> SnapshotData {
        ship_files_of(job, sender, receiver, MAX_FILE_BYTES)
    }

    fn ship_files_of(job: GenerateJob, sender: &Engine, receiver: &Engine, max_file_bytes: u64) -> SnapshotData {
        let (range_id, term, index) = (job.range_id, job.term, job.index);
        let snap = generate_with(job, sender.snapshot_dir(), max_file_bytes).unwrap();
        let to = received_dir(receiver.snapshot_dir().unwrap(), range_id, term, index);
        std::fs::create_dir_all(&to).unwrap();
        let files = generated_files(sender.snapshot_dir().unwrap(), range_id, &snap).unwrap();
        for (i, (path, f)) in files.into_iter().enumerate() {
            std::fs::copy(path, to.join(file_name(i, &f.cf))).unwrap();
        }
        SnapshotData::decode(snap.data.as_slice()).unwrap()
    }

    fn contents(engine: &Engine, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        engine.scan(cf, b"", b"", |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        });
        out
    }

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
        let now = crate::hlc::wall_now_ns();
        for age_s in [120, 90, 5] {
            put(&sender, b"k", v(now - age_s * 1_000_000_000), format!("k@{age_s}").as_bytes());
        }
        sender.compact_all(Cf::Data);
        let sender_mark = sender.mvcc_gc().collected_below();
        assert!(sender_mark > receiver_mark + 10_000_000, "the sender collected later than the receiver opened");

        let desc = RangeDescriptor { id: 5, start: b"a".to_vec(), end: b"z".to_vec(), ..Default::default() };
        let apply = ApplyState { applied_index: 10, last_version: v(now), ..Default::default() };
        let data = ship(&sender, &receiver, &desc, &apply);
        let mut batch = receiver.batch();
        let (_, ingest) = install(&receiver, &mut batch, 5, None, &data, 10, 6).unwrap();
        receiver.commit(batch, true);
        finish_ingest(&receiver, &ingest.unwrap());
        assert_eq!(
            contents(&receiver, Cf::Data).len(),
            2,
            "the sender's GC dropped the version shadowed inside its window"
        );

        // A page token's version between the receiver's own mark and the sender's.
        let resumed_at = v(receiver_mark + 5_000_000);
        assert!(
            receiver.mvcc_gc().check_readable(resumed_at, v(now)).is_err(),
            "a read below the sender's GC mark was allowed on the snapshot's receiver"
        );
        assert!(receiver.mvcc_gc().check_readable(v(now), v(now)).is_ok(), "reads at the newest version stay allowed");
    }

    /// A snapshot holds the range as of its pin: writes after it, and data and
    /// dedupe records outside the range, stay out; what was in arrives whole,
    /// replacing what the receiver held in the range.
    #[test]
    fn a_snapshot_is_the_range_as_pinned_and_replaces_the_receivers_copy() {
        let (dir_r, dir_s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let sender = Engine::open(dir_s.path(), &Default::default()).unwrap();
        let receiver = Engine::open(dir_r.path(), &Default::default()).unwrap();
        let now = crate::hlc::wall_now_ns();
        for i in 0..2000u32 {
            put(&sender, format!("m{i:05}").as_bytes(), v(now), &[7u8; 100]);
        }
        put(&sender, b"a-outside", v(now), b"x");
        let mut b = sender.batch();
        b.put(Cf::Dedupe, &layout::dedupe_key(b"m00001", b"req-1"), &[0u8; 12]);
        b.put(Cf::Dedupe, &layout::dedupe_key(b"a-outside", b"req-2"), &[0u8; 12]);
        sender.commit(b, true);
        sender.compact_all(Cf::Data); // some records in files, some in memtables
        put(&sender, b"m99999", v(now), b"in memtable");
        put(&receiver, b"m00000-stale", v(now), b"the receiver's old copy");
        put(&receiver, b"zz-other-range", v(now), b"another range's data");

        let desc = RangeDescriptor { id: 9, start: b"m".to_vec(), end: b"n".to_vec(), ..Default::default() };
        let apply = ApplyState { applied_index: 40, last_version: v(now), ..Default::default() };
        let job = pin(&sender, &desc, &apply, 6, ConfState::default());
        put(&sender, b"m00002-after-pin", v(now + 1), b"written after the pin");
        sender.compact_all(Cf::Data);
        // Small files, so the data span is cut into several.
        let data = ship_files_of(job, &sender, &receiver, 8 << 10);
        assert!(data.data.is_empty() && data.dedupe.is_empty(), "records travel in files on a real disk");
        let data_files = data.files.iter().filter(|f| f.cf == "data").count();
        assert!(data_files > 1, "the data span was not cut into several files: {:?}", data.files);
        assert_eq!(data.files.last().map(|f| f.cf.as_str()), Some("dedupe"));

        let mut batch = receiver.batch();
        let (apply, ingest) = install(&receiver, &mut batch, 9, None, &data, 40, 6).unwrap();
        receiver.commit(batch, true);
        finish_ingest(&receiver, &ingest.unwrap());
        assert_eq!(apply.applied_index, 40);

        let range_of = |e: &Engine| {
            let (lo, hi) = mvcc::data_span(b"m", b"n");
            let mut out = Vec::new();
            e.scan(Cf::Data, &lo, &hi, |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                true
            });
            out
        };
        let got = range_of(&receiver);
        assert_eq!(got.len(), 2001, "every record of the range as pinned, none written after");
        let sent: Vec<_> = range_of(&sender).into_iter().filter(|(k, _)| !k.starts_with(b"m00002-after")).collect();
        assert_eq!(got, sent);
        assert!(contents(&receiver, Cf::Data).iter().any(|(k, _)| k.starts_with(b"zz-other")), "other ranges kept");
        let dedupe = contents(&receiver, Cf::Dedupe);
        assert_eq!(dedupe.len(), 1, "only the range's dedupe record: {dedupe:?}");
        let root = receiver.snapshot_dir().unwrap();
        assert!(!received_dir(root, 9, 6, 40).exists(), "ingested files leave the snapshot directory");
        assert!(receiver.get(Cf::RaftState, &layout::pending_ingest_key(9)).is_none());
    }

    /// A node that stops after the install batch but before the ingest finishes
    /// the ingest when it opens again.
    #[test]
    fn an_interrupted_ingest_is_finished_at_the_next_open() {
        let (dir_r, dir_s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let sender = Engine::open(dir_s.path(), &Default::default()).unwrap();
        let now = crate::hlc::wall_now_ns();
        for i in 0..100u32 {
            put(&sender, format!("k{i:03}").as_bytes(), v(now), b"value");
        }
        let desc = RangeDescriptor { id: 3, start: b"k".to_vec(), end: b"l".to_vec(), ..Default::default() };
        let apply = ApplyState { applied_index: 12, last_version: v(now), ..Default::default() };
        {
            let receiver = Engine::open(dir_r.path(), &Default::default()).unwrap();
            let data = ship(&sender, &receiver, &desc, &apply);
            let mut batch = receiver.batch();
            install(&receiver, &mut batch, 3, None, &data, 12, 6).unwrap();
            receiver.commit(batch, true);
            // Stops here: the files were never ingested.
        }
        let receiver = Engine::open(dir_r.path(), &Default::default()).unwrap();
        assert_eq!(contents(&receiver, Cf::Data).len(), 0);
        resume_ingests(&receiver);
        assert_eq!(contents(&receiver, Cf::Data).len(), 100);
        assert!(receiver.get(Cf::RaftState, &layout::pending_ingest_key(3)).is_none());
        assert_eq!(std::fs::read_dir(receiver.snapshot_dir().unwrap()).unwrap().count(), 0);
    }
}
