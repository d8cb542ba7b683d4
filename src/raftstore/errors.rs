//! Constructors for the routing errors a replica returns (`RangeError` in the
//! internal protocol), so every site phrases them the same way.

use cairn_proto::internal::{range_error::Kind, RangeDescriptor, RangeError};

pub fn err(kind: Kind, message: impl Into<String>) -> RangeError {
    RangeError { kind: kind as i32, message: message.into(), leader_hint: 0, desc: None }
}

pub fn not_leader(range_id: u64, leader_hint: u64) -> RangeError {
    RangeError {
        kind: Kind::NotLeader as i32,
        message: format!("range {range_id}: this node is not the leader (leader hint: node {leader_hint})"),
        leader_hint,
        desc: None,
    }
}

pub fn range_not_found(range_id: u64) -> RangeError {
    err(Kind::RangeNotFound, format!("range {range_id} has no replica on this node"))
}

pub fn epoch_mismatch(desc: &RangeDescriptor) -> RangeError {
    RangeError {
        kind: Kind::EpochMismatch as i32,
        message: format!("range {}: stale epoch", desc.id),
        leader_hint: 0,
        desc: Some(desc.clone()),
    }
}

pub fn key_not_in_range(desc: &RangeDescriptor) -> RangeError {
    RangeError {
        kind: Kind::KeyNotInRange as i32,
        message: format!("key is outside range {}", desc.id),
        leader_hint: 0,
        desc: Some(desc.clone()),
    }
}

pub fn unavailable(message: impl Into<String>) -> RangeError {
    err(Kind::Unavailable, message)
}

pub fn invalid(message: impl Into<String>) -> RangeError {
    err(Kind::Invalid, message)
}

pub fn ambiguous(range_id: u64) -> RangeError {
    err(Kind::Ambiguous, format!("range {range_id}: leadership changed before the command's outcome was known"))
}

pub fn table_dropped(table_id: u32) -> RangeError {
    err(Kind::TableDropped, format!("table id {table_id} was dropped"))
}

pub fn kind_of(e: &RangeError) -> Kind {
    Kind::try_from(e.kind).unwrap_or(Kind::Unavailable)
}
