//! Garbage collection of old MVCC versions: the retention window, the safe
//! point that compactions of the data column family drop versions below (through
//! a RocksDB compaction filter; which versions go is `keys::mvcc_gc`), and the
//! check that refuses a read at a version GC may already have thinned out.
//!
//! Compactions also reclaim expired values: a value whose expiry is at or
//! before both the safe point's time and its range's applied version is
//! rewritten as a tombstone (kept, so that no older version shows through).
//! Every reader already judged it absent: reads judge expiry at this node's
//! clock, which is past the safe point; commands judge it at their version,
//! and every command still to apply on this replica is above its applied
//! version (a replica that lags its range decides nothing by its own clock).
//!
//! Every replica collects its own engine on its own clock; nothing is agreed on
//! between nodes. That is safe because a read is always served from the engine
//! of the replica that checks it: the check compares the read's version with the
//! highest safe point this engine's compactions have used (`collected_below`),
//! which only grows, so neither clock skew between nodes nor a clock stepping
//! back can let a read see a thinned-out past.

use super::applied::{self, AppliedSpan, AppliedSpans};
use crate::hlc::Version;
use crate::keys::mvcc::{self as mvcc_keys, Record};
use crate::keys::mvcc_gc::{Verdict, VersionPruner};
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long old versions stay readable unless configured otherwise (TiKV's GC life time).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(600);

/// The retention window of one engine and how far its compactions have collected.
#[derive(Debug)]
pub struct GcWindow {
    retention_ns: u64,
    /// The highest safe point (wall ns) any compaction of this engine has dropped
    /// versions below. Raised before the compaction drops anything.
    collected_below: AtomicU64,
}

impl GcWindow {
    /// A window over an engine that has never been collected.
    pub fn new(retention: Duration) -> Self {
        GcWindow {
            retention_ns: u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX),
            collected_below: AtomicU64::new(0),
        }
    }

    /// A window over an engine reopened at wall time `now_ns`. What earlier runs of
    /// the node collected is not recorded, so assume the most they could have: up
    /// to the window's start now.
    pub fn reopened(retention: Duration, now_ns: u64) -> Self {
        let window = GcWindow::new(retention);
        window.begin_pass(now_ns);
        window
    }

    pub fn retention(&self) -> Duration {
        Duration::from_nanos(self.retention_ns)
    }

    /// The safe point for a compaction starting at wall time `now_ns`: the window's
    /// start, never below what an earlier compaction used (a clock that steps back
    /// must not make GC look younger than it is), published before it is used.
    pub fn begin_pass(&self, now_ns: u64) -> u64 {
        let wanted = now_ns.saturating_sub(self.retention_ns);
        self.collected_below.fetch_max(wanted, Ordering::SeqCst).max(wanted)
    }

    /// Takes another engine's mark when data it collected arrives here (a snapshot).
    pub fn raise_to(&self, collected_below_ns: u64) {
        self.collected_below.fetch_max(collected_below_ns, Ordering::SeqCst);
    }

    pub fn collected_below(&self) -> u64 {
        self.collected_below.load(Ordering::SeqCst)
    }

    /// Whether a read at `at` of a range whose newest version is `range_latest` still
    /// sees exactly what it would have seen before any GC. A read at or above the
    /// range's newest version always does (GC never drops a key's newest version);
    /// an older one must be above every safe point used so far. Callers check
    /// before they open the read's iterator: an open iterator is not affected by
    /// compactions that finish after it was opened.
    pub fn check_readable(&self, at: Version, range_latest: Version) -> Result<(), String> {
        if at >= range_latest || at.wall_ns > self.collected_below() {
            return Ok(());
        }
        Err(format!(
            "read version {} ns is older than the MVCC retention window ({} s): its old versions may have been \
             garbage-collected; start the scan again without a page token",
            at.wall_ns,
            self.retention().as_secs()
        ))
    }
}

/// Creates one [`VersionPruner`] per compaction of the data column family.
pub struct PrunerFactory {
    pub window: Arc<GcWindow>,
    pub applied: Arc<AppliedSpans>,
}

impl CompactionFilterFactory for PrunerFactory {
    type Filter = PrunerFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> PrunerFilter {
        let safe_point = self.window.begin_pass(crate::hlc::wall_now_ns());
        PrunerFilter {
            pruner: VersionPruner::new(safe_point),
            safe_point_ms: safe_point / 1_000_000,
            spans: self.applied.picture(),
            expired: 0,
        }
    }

    fn name(&self) -> &CStr {
        c"cairn-mvcc-gc"
    }
}

/// The compaction filter of one compaction: adapts [`VersionPruner`] to RocksDB,
/// and reclaims expired values (`reclaims`).
pub struct PrunerFilter {
    pruner: VersionPruner,
    safe_point_ms: u64,
    /// The local replicas when the compaction started (applied versions only grow).
    spans: Vec<AppliedSpan>,
    expired: u64,
}

/// Whether a kept record at `key` holding `value` may be rewritten as a
/// tombstone: an expiring value due at or before both `safe_point_ms` and the
/// applied version of the local range that holds it (none holds it: keep it).
pub fn reclaims(spans: &[AppliedSpan], safe_point_ms: u64, key: &[u8], value: &[u8]) -> bool {
    if !matches!(value.first(), Some(&mvcc_keys::TAG_EXPIRING | &mvcc_keys::TAG_KINDED)) {
        return false;
    }
    let Some(Record::Value { expires_at_ms, .. }) = Record::decode(value) else { return false };
    let Some(span) = applied::covering(spans, key) else { return false };
    let horizon_ms = safe_point_ms.min(span.applied.wall_ns / 1_000_000);
    mvcc_keys::expired(expires_at_ms, horizon_ms)
}

const TOMBSTONE: &[u8] = &[mvcc_keys::TAG_TOMBSTONE];

impl CompactionFilter for PrunerFilter {
    fn filter(&mut self, _level: u32, key: &[u8], value: &[u8]) -> Decision {
        match self.pruner.decide(key) {
            Verdict::Drop => Decision::Remove,
            Verdict::Keep if reclaims(&self.spans, self.safe_point_ms, key, value) => {
                self.expired += 1;
                Decision::Change(TOMBSTONE)
            }
            Verdict::Keep => Decision::Keep,
        }
    }

    fn name(&self) -> &CStr {
        c"cairn-mvcc-gc"
    }
}

impl Drop for PrunerFilter {
    fn drop(&mut self) {
        // Counted once per compaction rather than per record, off the hot loop.
        metrics::counter!("cairn_mvcc_gc_versions_dropped_total").increment(self.pruner.dropped());
        metrics::counter!("cairn_mvcc_gc_expired_values_reclaimed_total").increment(self.expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::mvcc;
    use crate::storage::{Cf, EngineConfig};

    fn v(wall_ns: u64) -> Version {
        Version { wall_ns, logical: 0, node_id: 1 }
    }

    /// Versions of `key` in the engine, newest first.
    fn versions(engine: &crate::storage::Engine, key: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        crate::storage::mvcc::scan_raw(engine, key, &crate::keys::next_key(key), |k, _| {
            out.extend(mvcc::decode(k).map(|(_, v)| v.wall_ns));
        });
        out
    }

    #[test]
    fn compactions_drop_shadowed_versions_older_than_the_window_and_nothing_a_read_needs() {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig { mvcc_retention: Duration::from_secs(60), ..Default::default() };
        let engine = crate::storage::Engine::open(dir.path(), &config).unwrap();
        let now = crate::hlc::wall_now_ns();
        let min = 60_000_000_000u64;
        // "k": versions 5, 4, 3 and 2 minutes old, then one 10 s old; "gone": deleted 3 minutes ago;
        // "fresh": only versions inside the window.
        let mut b = engine.batch();
        for age_min in [5, 4, 3, 2] {
            let value = format!("k@{age_min}");
            b.put(Cf::Data, &mvcc::encode(b"k", v(now - age_min * min)), &mvcc::encode_value(value.as_bytes()));
        }
        b.put(Cf::Data, &mvcc::encode(b"k", v(now - 10_000_000_000)), &mvcc::encode_value(b"k@new"));
        b.put(Cf::Data, &mvcc::encode(b"gone", v(now - 4 * min)), &mvcc::encode_value(b"x"));
        b.put(Cf::Data, &mvcc::encode(b"gone", v(now - 3 * min)), &mvcc::tombstone());
        b.put(Cf::Data, &mvcc::encode(b"fresh", v(now - 20_000_000_000)), &mvcc::encode_value(b"f1"));
        b.put(Cf::Data, &mvcc::encode(b"fresh", v(now - 10_000_000_000)), &mvcc::encode_value(b"f2"));
        engine.commit(b, true);
        let read_at_window_start = v(now - min + 1_000_000_000);
        let before: Vec<_> = [b"k" as &[u8], b"gone", b"fresh"]
            .iter()
            .map(|k| crate::storage::mvcc::read_at(&engine, k, read_at_window_start))
            .collect();

        engine.compact_all(Cf::Data);

        // "k" keeps its newest version outside the window (what a read at the window's start
        // sees) and the one inside it; the three older ones are gone.
        assert_eq!(versions(&engine, b"k"), vec![now - 10_000_000_000, now - 2 * min]);
        // A deleted key keeps its tombstone and loses what it shadowed.
        assert_eq!(versions(&engine, b"gone"), vec![now - 3 * min]);
        assert_eq!(versions(&engine, b"fresh").len(), 2);
        let after: Vec<_> = [b"k" as &[u8], b"gone", b"fresh"]
            .iter()
            .map(|k| crate::storage::mvcc::read_at(&engine, k, read_at_window_start))
            .collect();
        assert_eq!(before, after, "reads inside the window see what they saw before");
        // Reads below what was collected are refused, unless nothing changed since.
        let gc = engine.mvcc_gc();
        assert!(gc.collected_below() >= now - min);
        assert!(gc.check_readable(v(now - 3 * min), v(now)).is_err());
        assert!(gc.check_readable(read_at_window_start, v(now)).is_ok());
        assert!(gc.check_readable(v(now - 3 * min), v(now - 3 * min)).is_ok());
    }

    struct OneRange(Version);

    impl crate::storage::applied::AppliedVersions for OneRange {
        fn spans(&self) -> Vec<AppliedSpan> {
            let (lo, hi) = crate::storage::mvcc::data_span(b"a", b"m");
            vec![AppliedSpan { lo, hi, applied: self.0 }]
        }
    }

    /// Expired values lose their bodies to compaction once both the safe point
    /// and their range's applied version are past their expiry, and become
    /// tombstones, so that no older version shows through. A replica whose range
    /// has not applied that far (it lags) keeps them: the commands it has still
    /// to apply were judged against them by the replicas that applied them in time.
    #[test]
    fn compactions_reclaim_expired_values_only_past_the_ranges_applied_version() {
        let dir = tempfile::tempdir().unwrap();
        let config = EngineConfig { mvcc_retention: Duration::from_secs(60), ..Default::default() };
        let engine = crate::storage::Engine::open(dir.path(), &config).unwrap();
        let now = crate::hlc::wall_now_ns();
        let (min, ms) = (60_000_000_000u64, 1_000_000u64);
        let applied = Arc::new(parking_lot::Mutex::new(v(now - 9 * min)));
        struct Shared(Arc<parking_lot::Mutex<Version>>);
        impl crate::storage::applied::AppliedVersions for Shared {
            fn spans(&self) -> Vec<AppliedSpan> {
                OneRange(*self.0.lock()).spans()
            }
        }
        engine.applied_spans().set_source(Arc::new(Shared(applied.clone())));
        let expired_at = (now - 5 * min) / ms;
        let mut b = engine.batch();
        b.put(Cf::Data, &mvcc::encode(b"e", v(now - 10 * min)), &mvcc::encode_value(b"older"));
        b.put(Cf::Data, &mvcc::encode(b"e", v(now - 8 * min)), &mvcc::encode_expiring_value(&[7; 4096], expired_at));
        // Expires later than the safe point: kept whatever the applied version.
        b.put(
            Cf::Data,
            &mvcc::encode(b"f", v(now - 8 * min)),
            &mvcc::encode_expiring_value(b"f", (now - min / 2) / ms),
        );
        // An expired value of another kind (a Redis hash) is reclaimed alike.
        let hash = mvcc::encode_kinded_value(&[9; 4096], expired_at, mvcc::kind::REDIS_HASH);
        b.put(Cf::Data, &mvcc::encode(b"h", v(now - 8 * min)), &hash);
        // Outside every local range: kept.
        b.put(Cf::Data, &mvcc::encode(b"z", v(now - 8 * min)), &mvcc::encode_expiring_value(b"z", expired_at));
        engine.commit(b, true);
        let raw = |key: &[u8]| {
            let mut out = Vec::new();
            crate::storage::mvcc::scan_raw(&engine, key, &crate::keys::next_key(key), |_, v| out.push(v.to_vec()));
            out
        };

        // The range has applied only up to 9 minutes ago: nothing expired yet as it sees it.
        engine.compact_all(Cf::Data);
        assert_eq!(raw(b"e").len(), 1, "the shadowed older version is collected");
        assert_eq!(raw(b"e")[0].len(), 1 + 8 + 4096, "a lagging range keeps the value");

        *applied.lock() = v(now - min);
        engine.compact_all(Cf::Data);
        assert_eq!(raw(b"e"), vec![mvcc::tombstone()], "reclaimed as a tombstone");
        assert_eq!(raw(b"h"), vec![mvcc::tombstone()], "an expired hash is reclaimed too");
        assert_eq!(crate::storage::mvcc::get_live(&engine, b"e", Version::MAX, 0), None, "nothing shows through");
        assert_eq!(raw(b"f").len(), 1);
        assert_ne!(raw(b"f")[0], mvcc::tombstone());
        assert_ne!(raw(b"z")[0], mvcc::tombstone());
    }

    #[test]
    fn a_reopened_engine_assumes_everything_before_the_window_was_collected() {
        let w = GcWindow::reopened(Duration::from_nanos(100), 1_000);
        assert_eq!(w.collected_below(), 900);
        assert!(w.check_readable(v(900), v(1_000)).is_err());
        assert!(w.check_readable(v(901), v(1_000)).is_ok());
    }

    #[test]
    fn safe_points_never_go_back() {
        let w = GcWindow::new(Duration::from_nanos(100));
        assert_eq!(w.begin_pass(1_000), 900);
        // The clock stepped back: the pass keeps the higher safe point it already used.
        assert_eq!(w.begin_pass(950), 900);
        assert_eq!(w.collected_below(), 900);
        assert_eq!(w.begin_pass(2_000), 1_900);
    }

    #[test]
    fn old_reads_are_refused_only_once_collected_and_only_below_the_newest_version() {
        let w = GcWindow::new(Duration::from_secs(1));
        // Nothing collected yet: any version reads exactly.
        assert!(w.check_readable(v(5), v(100)).is_ok());
        w.begin_pass(1_000_000_050);
        assert!(w.check_readable(v(51), v(100)).is_ok());
        let e = w.check_readable(v(50), v(100)).unwrap_err();
        assert!(e.contains("retention window (1 s)"), "{e}");
        // A range that has not changed since the read version lost nothing it needs.
        assert!(w.check_readable(v(50), v(50)).is_ok());
    }
}
