//! Where things live in the meta range (range 1, system table 0): its key
//! layout, pure, so that the gateway (which routes to the meta range and loads
//! the range directory from it) and the meta layer above it share one definition.
//!
//! Layout (user keys of table 0):
//! - `cat/<table name>` → `TableInfo`
//! - `dir/<range id BE>` → `RangeRecord` (written by range leaders; older epochs never overwrite newer)
//! - `node/<node id BE>` → `NodeInfo`
//! - `nstate/<node id BE>` → an operator's `NodeState` for the node (decimal), absent when active
//! - `event/<seq BE>` → `ClusterEvent`, the controller's decision log (the newest `EVENTS_KEPT`)
//! - `ctr/table`, `ctr/range`, `ctr/node`, `ctr/event` → decimal counters (atomic increments)

use super::{encode_range_key, prefix_end, table_prefix, FIRST_USER_TABLE_ID, SYSTEM_TABLE_ID};

pub const META_RANGE_ID: u64 = 1;
/// The first range holding user tables, created at bootstrap.
pub const FIRST_USER_RANGE_ID: u64 = 2;

pub const TABLE_PREFIX: &[u8] = b"cat/";
pub const DIR_PREFIX: &[u8] = b"dir/";
pub const NODE_PREFIX: &[u8] = b"node/";
pub const NODE_STATE_PREFIX: &[u8] = b"nstate/";
pub const CTR_TABLE: &[u8] = b"ctr/table";
pub const CTR_RANGE: &[u8] = b"ctr/range";
pub const CTR_NODE: &[u8] = b"ctr/node";
pub const EVENT_PREFIX: &[u8] = b"event/";
pub const CTR_EVENT: &[u8] = b"ctr/event";
/// How many decisions the log keeps (the oldest goes as each new one is recorded).
pub const EVENTS_KEPT: u64 = 1000;

pub fn key(user: &[u8]) -> Vec<u8> {
    encode_range_key(SYSTEM_TABLE_ID, user)
}

pub fn is_meta_key(encoded: &[u8]) -> bool {
    encoded < table_prefix(FIRST_USER_TABLE_ID).as_slice()
}

pub fn dir_key(range_id: u64) -> Vec<u8> {
    let mut k = DIR_PREFIX.to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    key(&k)
}

pub fn node_key(node_id: u64) -> Vec<u8> {
    let mut k = NODE_PREFIX.to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    key(&k)
}

pub fn node_state_key(node_id: u64) -> Vec<u8> {
    let mut k = NODE_STATE_PREFIX.to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    key(&k)
}

pub fn event_key(seq: u64) -> Vec<u8> {
    let mut k = EVENT_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    key(&k)
}

pub fn table_key(name: &str) -> Vec<u8> {
    let mut k = TABLE_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    key(&k)
}

/// `[start, end)` of a range in the encoded keyspace.
pub type Bounds = (Vec<u8>, Vec<u8>);

/// Bounds of the meta range and of the first user range, as created at bootstrap.
pub fn bootstrap_bounds() -> (Bounds, Bounds) {
    let user_start = table_prefix(FIRST_USER_TABLE_ID);
    ((Vec::new(), user_start.clone()), (user_start, Vec::new()))
}

/// `[start, end)` of one meta key prefix in the encoded keyspace.
pub fn prefix_bounds(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = key(prefix);
    let end = prefix_end(&start);
    (start, end)
}
