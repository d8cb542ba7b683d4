//! Expiry of dedupe records by compaction, decided by the applied version of the
//! range each record belongs to (log time, `dedupe::collectable`), never by the
//! node's clock: a replica that lags and applies a retry late must still find the
//! record the other replicas answered it from.
//!
//! The engine cannot see ranges, so the multi-Raft driver hands it a source of
//! `(span, applied version)` for its local replicas. Each compaction takes one
//! picture of them when it starts: applied versions only grow, so an older picture
//! only keeps more. A record in no local range's span (a replica not yet
//! registered, or already purged) is kept.

use crate::hlc::Version;
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use std::ffi::CStr;
use std::sync::{Arc, OnceLock};

/// The dedupe span of one local replica and the version it has applied up to.
#[derive(Clone, Debug)]
pub struct DedupeSpan {
    pub lo: Vec<u8>,
    pub hi: Vec<u8>,
    pub applied: Version,
}

/// What the engine asks the multi-Raft driver when a compaction of dedupe records starts.
pub trait AppliedVersions: Send + Sync {
    fn spans(&self) -> Vec<DedupeSpan>;
}

/// The engine's side: where applied versions come from once the driver is running.
#[derive(Default)]
pub struct DedupeGc {
    source: OnceLock<Arc<dyn AppliedVersions>>,
}

impl DedupeGc {
    /// Installs the source of applied versions (the first call counts). Until then
    /// compactions keep every record.
    pub fn set_source(&self, source: Arc<dyn AppliedVersions>) {
        let _ = self.source.set(source);
    }

    fn picture(&self) -> Vec<DedupeSpan> {
        let mut spans = self.source.get().map(|s| s.spans()).unwrap_or_default();
        spans.sort_by(|a, b| a.lo.cmp(&b.lo));
        spans
    }
}

/// Whether the record at `key` (value: write time in ms ++ results) may be dropped,
/// given the local replicas' spans sorted by start.
pub fn collectable(spans: &[DedupeSpan], key: &[u8], value: &[u8]) -> bool {
    let Some(record_ms) = super::layout::dedupe_record_ms(value) else { return false };
    let after = spans.partition_point(|s| s.lo.as_slice() <= key);
    let Some(span) = after.checked_sub(1).map(|i| &spans[i]) else { return false };
    key < span.hi.as_slice() && crate::dedupe::collectable(record_ms, span.applied.wall_ns)
}

/// Creates one expiry filter per compaction of the dedupe column family.
pub struct ExpiryFactory {
    pub gc: Arc<DedupeGc>,
}

impl CompactionFilterFactory for ExpiryFactory {
    type Filter = ExpiryFilter;

    fn create(&mut self, _context: CompactionFilterContext) -> ExpiryFilter {
        ExpiryFilter { spans: self.gc.picture() }
    }

    fn name(&self) -> &CStr {
        c"cairn-dedupe-expiry"
    }
}

pub struct ExpiryFilter {
    spans: Vec<DedupeSpan>,
}

impl CompactionFilter for ExpiryFilter {
    fn filter(&mut self, _level: u32, key: &[u8], value: &[u8]) -> Decision {
        if collectable(&self.spans, key, value) {
            Decision::Remove
        } else {
            Decision::Keep
        }
    }

    fn name(&self) -> &CStr {
        c"cairn-dedupe-expiry"
    }
}
