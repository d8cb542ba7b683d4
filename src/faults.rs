//! Injected disk and network faults, for the tests that prove a failing disk
//! stops the node and damaged data is caught.
//!
//! Compiled in only with the `fault-injection` cargo feature. A server built with
//! it reads at start-up:
//! - `CAIRN_DISK_FAULT=fsync-error-after:N` — the synced write after the first N
//!   fails as an fsync returning EIO would;
//! - `CAIRN_DISK_FAULT=damage-log-entry:R` — before the node loads its replicas,
//!   one bit of the newest stored Raft log entry of range R flips (bit rot);
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
        if n.is_none() && !spec.starts_with("damage-log-entry:") {
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

/// Flips one bit of the newest stored log entry of the range named by
/// `CAIRN_DISK_FAULT=damage-log-entry:R`, as bit rot at rest would.
#[cfg(feature = "fault-injection")]
pub fn damage_log_entry_at_start(engine: &crate::storage::Engine) {
    use crate::storage::{layout, Cf};
    let spec = std::env::var("CAIRN_DISK_FAULT").unwrap_or_default();
    let Some(range_id) = spec.strip_prefix("damage-log-entry:").and_then(|n| n.parse::<u64>().ok()) else {
        return;
    };
    let mut newest: Option<(Vec<u8>, Vec<u8>)> = None;
    engine.scan(Cf::RaftLog, &layout::log_key(range_id, 0), &layout::log_key(range_id + 1, 0), |k, v| {
        newest = Some((k.to_vec(), v.to_vec()));
        true
    });
    let Some((key, mut value)) = newest else {
        eprintln!("cairn: damage-log-entry: range {range_id} has no stored log entry here");
        return;
    };
    if let Some(b) = value.last_mut() {
        *b ^= 0x04;
    }
    let mut batch = engine.batch();
    batch.put(Cf::RaftLog, &key, &value);
    engine.commit(batch, true);
    eprintln!("cairn: damaged the log entry at index {:?} of range {range_id}", layout::log_index_of(&key));
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn damage_log_entry_at_start(_: &crate::storage::Engine) {}
