//! Injected disk faults, for the tests that prove a failing disk stops the node.
//!
//! Compiled in only with the `fault-injection` cargo feature. A server built with
//! it reads `CAIRN_DISK_FAULT` at start-up:
//! - `fsync-error-after:N` — the synced write after the first N fails as an
//!   fsync returning EIO would.
//!
//! Without the feature nothing is ever injected and the check compiles away.

/// Whether the synced write about to happen must fail.
#[cfg(feature = "fault-injection")]
pub fn fail_this_sync() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SYNCS: AtomicU64 = AtomicU64::new(0);
    static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let limit = LIMIT.get_or_init(|| {
        let spec = std::env::var("CAIRN_DISK_FAULT").ok()?;
        let n = spec.strip_prefix("fsync-error-after:").and_then(|n| n.parse().ok());
        if n.is_none() {
            eprintln!("cairn: unknown CAIRN_DISK_FAULT value {spec:?}; no disk faults injected");
        }
        n
    });
    limit.is_some_and(|limit| SYNCS.fetch_add(1, Ordering::Relaxed) >= limit)
}

/// Whether the synced write about to happen must fail.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fail_this_sync() -> bool {
    false
}
