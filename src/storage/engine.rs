//! The node's storage engine: a narrow wrapper over RocksDB (the only module
//! that talks to it), or over the simulator's in-memory disk (`SimDisk`) when a
//! whole cluster runs in one process. Callers cannot tell the two apart.
//!
//! Durability rule: a write that asks for `sync` and fails stops the process
//! (fail-stop). Retrying an fsync after an error is unsafe (the kernel may have
//! dropped the dirty pages), so we never do.

use super::applied::AppliedSpans;
pub use super::cf::Cf;
use super::dedupe_gc::ExpiryFactory;
use super::mvcc_gc::{GcWindow, PrunerFactory, DEFAULT_RETENTION};
use super::sim_disk::{SimDisk, SimOp};
use crate::sabotage::{self, Sabotage};
use anyhow::{Context, Result};
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions,
    SliceTransform, WriteBatch, WriteOptions, DB,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The engine's tunables (from the server configuration).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// How long old MVCC versions stay readable before compactions may drop them.
    pub mvcc_retention: Duration,
    /// Size of one memtable (per column family, two at most).
    pub memtable_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { mvcc_retention: DEFAULT_RETENTION, memtable_bytes: 32 << 20 }
    }
}

pub struct Engine {
    backend: Backend,
    /// MVCC garbage collection of the data column family (never runs on the simulator's disk).
    gc: Arc<GcWindow>,
    /// Expiry of dedupe records by their ranges' applied versions (never on the simulator's disk).
    applied_spans: Arc<AppliedSpans>,
    /// Where snapshot files are written and received (`None` on the simulator's
    /// disk, whose snapshots carry their records inline).
    snapshot_dir: Option<std::path::PathBuf>,
}

pub(super) enum Backend {
    Rocks(Arc<DB>),
    /// The simulator's disk, as seen by one incarnation of the node.
    Sim {
        disk: Arc<SimDisk>,
        generation: u64,
    },
}

/// An atomic batch across column families.
pub struct Batch<'a> {
    engine: &'a Engine,
    writes: Writes,
}

enum Writes {
    Rocks(WriteBatch),
    Sim(Vec<SimOp>),
}

impl Batch<'_> {
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        match &mut self.writes {
            Writes::Rocks(wb) => wb.put_cf(self.engine.cf(cf), key, value),
            Writes::Sim(ops) => ops.push(SimOp::Put(cf, key.to_vec(), value.to_vec())),
        }
    }

    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        match &mut self.writes {
            Writes::Rocks(wb) => wb.delete_cf(self.engine.cf(cf), key),
            Writes::Sim(ops) => ops.push(SimOp::Delete(cf, key.to_vec())),
        }
    }

    /// Deletes `[start, end)`; an empty `end` is not allowed here (callers pass a real bound).
    pub fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        match &mut self.writes {
            Writes::Rocks(wb) => wb.delete_range_cf(self.engine.cf(cf), start, end),
            Writes::Sim(ops) => ops.push(SimOp::DeleteRange(cf, start.to_vec(), end.to_vec())),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.writes {
            Writes::Rocks(wb) => wb.is_empty(),
            Writes::Sim(ops) => ops.is_empty(),
        }
    }
}

/// Stops the node after a storage failure that could otherwise lose acknowledged data.
pub fn fail_stop(what: &str, err: &dyn std::fmt::Display) -> ! {
    tracing::error!("FATAL storage failure during {what}: {err}; stopping the node (fail-stop)");
    eprintln!("cairn: FATAL storage failure during {what}: {err}; stopping (fail-stop)");
    std::process::abort();
}

impl Engine {
    pub fn open(dir: &Path, config: &EngineConfig) -> Result<Engine> {
        let gc = Arc::new(GcWindow::reopened(config.mvcc_retention, crate::hlc::wall_now_ns()));
        let applied_spans = Arc::new(AppliedSpans::default());
        std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        // Bounded memory: 5 CFs × 2 memtables at most.
        let memtable_bytes = usize::try_from(config.memtable_bytes).unwrap_or(usize::MAX);
        opts.set_write_buffer_size(memtable_bytes);
        opts.set_max_write_buffer_number(2);
        opts.set_keep_log_file_num(4);
        if sabotage::active(Sabotage::AckBeforeFsync) {
            // Keeps the WAL in process memory so that kill -9 behaves like a power cut.
            opts.set_manual_wal_flush(true);
        }
        let cache = rocksdb::Cache::new_lru_cache(64 << 20);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = format_options(*cf, Some(&cache));
            o.set_write_buffer_size(memtable_bytes);
            o.set_max_write_buffer_number(2);
            // Point lookups that miss (dedupe checks, most of the time) are answered by a
            // memtable bloom filter instead of a skiplist search.
            o.set_memtable_prefix_bloom_ratio(0.05);
            o.set_memtable_whole_key_filtering(*cf != Cf::Data);
            if *cf == Cf::Data {
                // Old versions are dropped, and expired values' bodies reclaimed, as
                // compactions rewrite them (`mvcc_gc`).
                o.set_compaction_filter_factory(PrunerFactory { window: gc.clone(), applied: applied_spans.clone() });
                // Files no write pushes into a compaction are still rewritten daily, so
                // that idle data also sheds its old versions and expired values.
                o.set_periodic_compaction_seconds(24 * 3600);
            }
            if *cf == Cf::Dedupe {
                // Records expire by their range's applied version (`dedupe_gc`), never by this clock.
                o.set_compaction_filter_factory(ExpiryFactory { gc: applied_spans.clone() });
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .with_context(|| format!("opening RocksDB at {}", dir.display()))?;
        Ok(Engine {
            backend: Backend::Rocks(Arc::new(db)),
            gc,
            applied_spans,
            snapshot_dir: Some(dir.join("snapshots")),
        })
    }

    /// An engine over the simulator's disk, for the incarnation of the node that
    /// starts now (writes from earlier incarnations are refused after a crash).
    pub fn simulated(disk: Arc<SimDisk>) -> Engine {
        let generation = disk.generation();
        // The simulated disk never compacts, so nothing is ever collected.
        Engine {
            backend: Backend::Sim { disk, generation },
            gc: Arc::new(GcWindow::new(DEFAULT_RETENTION)),
            applied_spans: Arc::new(AppliedSpans::default()),
            snapshot_dir: None,
        }
    }

    /// The directory snapshot files live in; `None` on the simulator's disk.
    pub fn snapshot_dir(&self) -> Option<&Path> {
        self.snapshot_dir.as_deref()
    }

    pub(super) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Simulated time the disk's syncs have cost since the last call (always 0 on
    /// RocksDB, whose syncs take real time): a simulated node stalls its loop for it.
    pub fn take_owed_sync_ms(&self) -> u64 {
        match &self.backend {
            Backend::Sim { disk, .. } => disk.take_owed_sync_ms(),
            Backend::Rocks(_) => 0,
        }
    }

    /// Where compaction filters learn the local replicas' spans and applied
    /// versions: the multi-Raft driver installs the source.
    pub fn applied_spans(&self) -> &AppliedSpans {
        &self.applied_spans
    }

    /// The MVCC garbage collection state: what reads at old versions are checked against.
    pub fn mvcc_gc(&self) -> &GcWindow {
        &self.gc
    }

    fn db(&self) -> &DB {
        match &self.backend {
            Backend::Rocks(db) => db,
            Backend::Sim { .. } => fail_stop("storage access", &"a RocksDB call on a simulated engine"),
        }
    }

    pub(super) fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Every CF is created in `open`, so a missing one is a programming error caught at start-up.
        self.db().cf_handle(cf.name()).unwrap_or_else(|| fail_stop("column family lookup", &cf.name()))
    }

    pub fn batch(&self) -> Batch<'_> {
        let writes = match &self.backend {
            Backend::Rocks(_) => Writes::Rocks(WriteBatch::default()),
            Backend::Sim { .. } => Writes::Sim(Vec::new()),
        };
        Batch { engine: self, writes }
    }

    /// Writes a batch atomically. With `sync`, the WAL is fsynced before returning;
    /// any error then stops the node.
    pub fn commit(&self, batch: Batch<'_>, sync: bool) {
        if batch.is_empty() {
            return;
        }
        let sync_asked = sync;
        let sync = sync && !sabotage::active(Sabotage::AckBeforeFsync);
        let result = if sync_asked && crate::faults::fail_this_sync() {
            Err("injected fsync error: Input/output error (EIO)".to_string())
        } else {
            match (&self.backend, batch.writes) {
                (Backend::Rocks(db), Writes::Rocks(wb)) => {
                    let mut wo = WriteOptions::default();
                    wo.set_sync(sync);
                    db.write_opt(wb, &wo).map_err(|e| e.to_string())
                }
                (Backend::Sim { disk, generation }, Writes::Sim(ops)) => {
                    // A crashed incarnation's write goes nowhere, as a dead process's would.
                    disk.write(*generation, ops, sync);
                    Ok(())
                }
                _ => Err("a batch was committed to another kind of engine".to_string()),
            }
        };
        if let Err(e) = result {
            // An unsynced write failing means RocksDB is in a bad state too; the applied
            // index travels in the same batch, so stopping keeps recovery exact.
            fail_stop(if sync_asked { "synced write" } else { "write" }, &e);
        }
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Option<Vec<u8>> {
        if let Backend::Sim { disk, .. } = &self.backend {
            return disk.get(cf, key);
        }
        match self.db().get_cf(self.cf(cf), key) {
            Ok(v) => v,
            Err(e) => fail_stop("read", &e),
        }
    }

    /// Iterates `[start, end)` (empty `end` = to the end of the CF), calling `f`
    /// until it returns false.
    pub fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: impl FnMut(&[u8], &[u8]) -> bool) {
        self.iterate(cf, start, end, false, f)
    }

    /// Iterates the data records in `[start, end)` that share the key part of `start`
    /// (a stored MVCC key): versions of one key, found through the key-part filters,
    /// so memtables and files without that key are never searched.
    pub fn scan_versions(&self, start: &[u8], end: &[u8], f: impl FnMut(&[u8], &[u8]) -> bool) {
        self.iterate(Cf::Data, start, end, true, f)
    }

    fn iterate(&self, cf: Cf, start: &[u8], end: &[u8], one_key: bool, mut f: impl FnMut(&[u8], &[u8]) -> bool) {
        if let Backend::Sim { disk, .. } = &self.backend {
            return disk.scan(cf, start, end, f);
        }
        let mut ro = ReadOptions::default();
        if !end.is_empty() {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        if one_key {
            ro.set_prefix_same_as_start(true);
        } else {
            // Key-part filters must not cut a scan short at the first key.
            ro.set_total_order_seek(true);
        }
        ro.fill_cache(true);
        let it = self.db().iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(start, Direction::Forward));
        for item in it {
            match item {
                Ok((k, v)) => {
                    if !f(&k, &v) {
                        break;
                    }
                }
                Err(e) => fail_stop("iteration", &e),
            }
        }
    }

    /// Flushes a column family's memtables and compacts all of it, so that its
    /// compaction filters (MVCC GC, dedupe expiry) see every record now. Tests on RocksDB only:
    /// nodes leave compaction to RocksDB.
    #[cfg(test)]
    pub fn compact_all(&self, cf: Cf) {
        let db = self.db();
        if let Err(e) = db.flush_cf(self.cf(cf)) {
            fail_stop("memtable flush", &e);
        }
        db.compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
    }

    /// Approximate bytes in SST files for `[start, end)` of a CF (memtables not included;
    /// the split checker adds the bytes written since start-up on top).
    pub fn approximate_size(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64 {
        if let Backend::Sim { disk, .. } = &self.backend {
            return disk.size_of(cf, start, end);
        }
        let end = if end.is_empty() { vec![0xff; 16] } else { end.to_vec() };
        let ranges = [rocksdb::Range::new(start, &end)];
        self.db().get_approximate_sizes_cf(self.cf(cf), &ranges).first().copied().unwrap_or(0)
    }

    /// Total live bytes on disk, for capacity reporting.
    pub fn total_size(&self) -> u64 {
        if let Backend::Sim { disk, .. } = &self.backend {
            return disk.total_size();
        }
        Cf::ALL
            .iter()
            .flat_map(|cf| {
                ["rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"]
                    .map(|p| self.db().property_int_value_cf(self.cf(*cf), p).ok().flatten().unwrap_or(0))
            })
            .sum()
    }
}

/// How a column family's SST files are laid out (table format, filters,
/// compression). Shared by the open database and by the SST files snapshots
/// are written to, so an ingested file reads like one RocksDB wrote itself.
pub(super) fn format_options(cf: Cf, cache: Option<&rocksdb::Cache>) -> Options {
    let is_data = cf == Cf::Data;
    let mut t = BlockBasedOptions::default();
    if let Some(cache) = cache {
        t.set_block_cache(cache);
    }
    t.set_bloom_filter(10.0, false);
    // Data records are filtered by key part (a stored key minus its version) instead
    // of whole key, so a point read seeks only the memtables and files that hold some
    // version of its key; every other column family is read by whole key.
    t.set_whole_key_filtering(!is_data);
    let mut o = Options::default();
    o.set_block_based_table_factory(&t);
    if is_data {
        o.set_prefix_extractor(SliceTransform::create(
            "cairn.mvcc-key-part",
            |k| crate::keys::mvcc::key_part(k).unwrap_or(k),
            Some(|k| crate::keys::mvcc::key_part(k).is_some()),
        ));
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    }
    o
}
