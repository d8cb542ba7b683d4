//! `cairn-check`: checkers for the histories Cairn's chaos tests (and, later,
//! its deterministic simulator) record. This file only wires the modules up:
//!
//! - `history`: operation types and the thread-safe `Recorder`;
//! - `linearizability`: per-key WGL search over a register model;
//! - `counter`: bounds on a counter incremented under faults;
//! - `feed`: change feed sessions that broke the feed's ordering, checkpoint or
//!   completeness promises;
//! - `lost`: acknowledged writes missing from the final state;
//! - `staleness`: bounded-staleness reads that broke their bound.

// Checkers run beside the system under test and budget their search in real time.
#![allow(clippy::disallowed_methods)]

pub mod counter;
pub mod feed;
pub mod history;
pub mod linearizability;
pub mod lost;
pub mod staleness;

pub use counter::CounterCheck;
pub use feed::{
    feed_violations, unresolved_acked, FeedRecord, FeedSession, FeedVersion, FeedViolation, FeedWrite, WriteOutcome,
};
pub use history::{Input, Operation, Outcome, Output, Pending, Recorder};
pub use linearizability::{check, Report, Verdict};
pub use lost::lost_writes;
pub use staleness::{stale_read_violations, BoundedRead, SequentialWrite, StaleViolation};
