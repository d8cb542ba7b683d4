//! What a failed mutation tells its client about whether it was applied.
//!
//! Every error a mutation can return carries the trailer [`HEADER`]: either
//! [`NOT_APPLIED`] (nothing was or ever will be applied) or [`UNKNOWN`] (the
//! request reached a replica that may have proposed it, so it may have been
//! applied, or may still be; retrying with the same request id is safe and
//! returns the first attempt's answer). Clients, the CLI and the checkers read
//! this one rule, so it lives here.

/// The gRPC metadata key of a failed mutation's outcome.
pub const HEADER: &str = "cairn-write-outcome";
/// The mutation was not applied and never will be.
pub const NOT_APPLIED: &str = "not-applied";
/// The mutation may have been applied (or may still be).
pub const UNKNOWN: &str = "unknown";

/// The sentence a failed mutation's message ends with when its outcome is unknown.
pub const UNKNOWN_TAIL: &str = "the write may or may not have been applied (retrying with the same request_id is safe)";

/// Whether an outcome value read from [`HEADER`] means "maybe applied". A missing or
/// unrecognised value counts as unknown: a client must never assume a write failed
/// when the server did not say so.
pub fn maybe_applied(value: Option<&str>) -> bool {
    value != Some(NOT_APPLIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_explicit_not_applied_means_not_applied() {
        assert!(!maybe_applied(Some(NOT_APPLIED)));
        assert!(maybe_applied(Some(UNKNOWN)));
        assert!(maybe_applied(None));
        assert!(maybe_applied(Some("garbage")));
    }
}
