//! Expiry of dedupe records by compaction, decided by the applied version of the
//! range each record belongs to (log time, `dedupe::collectable`), never by the
//! node's clock: a replica that lags and applies a retry late must still find the
//! record the other replicas answered it from.
//!
//! The engine cannot see ranges: each compaction takes one picture of the local
//! replicas' spans and applied versions (`applied`) when it starts. Applied
//! versions only grow, so an older picture only keeps more. A record in no
//! local range's span (a replica not yet registered, or already purged) is kept.

use super::applied::{AppliedSpan, AppliedSpans};
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use std::ffi::CStr;
use std::sync::Arc;

/// Whether the record at `key` (value: write time in ms ++ results) may be dropped,
/// given the local replicas' spans sorted by start.
pub fn collectable(spans: &[AppliedSpan], key: &[u8], value: &[u8]) -> bool {
    let Some(record_ms) = super::layout::dedupe_record_ms(value) else { return false };
    super::applied::covering(spans, key).is_some_and(|span| crate::dedupe::collectable(record_ms, span.applied.wall_ns))
}

/// Creates one expiry filter per compaction of the dedupe column family.
pub struct ExpiryFactory {
    pub gc: Arc<AppliedSpans>,
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
    spans: Vec<AppliedSpan>,
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
