//! Injected disk and network faults, for the tests that prove a failing disk
//! stops the node and damaged data is caught.
//!
//! Compiled in only with the `fault-injection` cargo feature. A server built with
//! it reads at start-up:
//! - `CAIRN_DISK_FAULT=fsync-error-after:N` — the synced write after the first N
//!   fails as an fsync returning EIO would;
//! - `CAIRN_NET_FAULT=corrupt-snapshot-chunks:N` — the first N snapshot chunks
//!   this node sends have one bit flipped after their checksum was computed.
//!
//! Without the feature nothing is ever injected and the checks compile away.

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

/// Whether the snapshot chunk about to be sent must be damaged.
#[cfg(feature = "fault-injection")]
pub fn corrupt_this_chunk() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SENT: AtomicU64 = AtomicU64::new(0);
    static LIMIT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let limit = LIMIT.get_or_init(|| {
        let spec = std::env::var("CAIRN_NET_FAULT").unwrap_or_default();
        spec.strip_prefix("corrupt-snapshot-chunks:").and_then(|n| n.parse().ok()).unwrap_or(0)
    });
    SENT.fetch_add(1, Ordering::Relaxed) < *limit
}

/// Whether the snapshot chunk about to be sent must be damaged.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn corrupt_this_chunk() -> bool {
    false
}
