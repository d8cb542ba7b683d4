//! Which local replica covers a stored key, and how far it has applied: what
//! compaction filters need to expire records by log time rather than by the
//! node's clock (a replica that lags and applies a command late must still
//! find what the other replicas judged that command against).
//!
//! The engine cannot see ranges, so the multi-Raft driver installs a source of
//! `(span, applied version)` for its local replicas. A span bounds the range's
//! records both in the data column family and in the dedupe one (both are
//! keyed by `mvcc::data_span`).

use crate::hlc::Version;
use std::sync::{Arc, OnceLock};

/// The stored-key span of one local replica and the version it has applied up to.
#[derive(Clone, Debug)]
pub struct AppliedSpan {
    pub lo: Vec<u8>,
    pub hi: Vec<u8>,
    pub applied: Version,
}

/// What the engine asks the multi-Raft driver when a compaction starts.
pub trait AppliedVersions: Send + Sync {
    fn spans(&self) -> Vec<AppliedSpan>;
}

/// The engine's side: where applied versions come from once the driver is running.
#[derive(Default)]
pub struct AppliedSpans {
    source: OnceLock<Arc<dyn AppliedVersions>>,
}

impl AppliedSpans {
    /// Installs the source of applied versions (the first call counts). Until then
    /// compactions keep every record.
    pub fn set_source(&self, source: Arc<dyn AppliedVersions>) {
        let _ = self.source.set(source);
    }

    /// The local replicas' spans now, sorted by start.
    pub fn picture(&self) -> Vec<AppliedSpan> {
        let mut spans = self.source.get().map(|s| s.spans()).unwrap_or_default();
        spans.sort_by(|a, b| a.lo.cmp(&b.lo));
        spans
    }
}

/// The span in `spans` (sorted by start) that holds `key`, if any.
pub fn covering<'a>(spans: &'a [AppliedSpan], key: &[u8]) -> Option<&'a AppliedSpan> {
    let after = spans.partition_point(|s| s.lo.as_slice() <= key);
    after.checked_sub(1).map(|i| &spans[i]).filter(|span| key < span.hi.as_slice())
}
