//! How long a request id's answer is remembered, and when a replica may forget
//! it. Both decisions read log time only (versions carried by the Raft log), never
//! a node's clock, so every replica of a range decides alike: applying a command
//! is a pure function of the log and the replica's state.

/// How long a request id is remembered after the write that recorded it.
pub const TTL_MS: u64 = 10 * 60 * 1000;

/// Whether a record written by a command at `record_ms` (its version's wall time,
/// in ms) has expired for a command stamped `at_wall_ns`: the command is then a
/// new request, not a retry.
pub fn expired(record_ms: u64, at_wall_ns: u64) -> bool {
    record_ms.saturating_add(TTL_MS) < at_wall_ns / 1_000_000
}

/// Whether a replica whose range has applied up to version wall time
/// `applied_wall_ns` may delete the record. Every command the range applies later
/// carries a higher version, so once the record has expired at the applied
/// version it has expired for every command still to come, on every replica.
pub fn collectable(record_ms: u64, applied_wall_ns: u64) -> bool {
    expired(record_ms, applied_wall_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_record_expires_strictly_after_its_ttl_in_log_time() {
        let written = 1_000_000;
        assert!(!expired(written, (written + TTL_MS) * MS), "at exactly the TTL it still answers");
        assert!(expired(written, (written + TTL_MS + 1) * MS));
        assert!(!expired(written, 0), "a command stamped before the record never sees it expired");
    }

    #[test]
    fn a_collectable_record_is_expired_for_every_later_command() {
        let written = 5_000_000;
        for applied in [written, written + TTL_MS, written + TTL_MS + 1, written + 3 * TTL_MS] {
            if collectable(written, applied * MS) {
                for later in [applied, applied + 1, applied + TTL_MS] {
                    assert!(expired(written, later * MS), "applied {applied} ms, later command {later} ms");
                }
            }
        }
    }
}
