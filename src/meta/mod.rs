//! The meta range: a Raft-replicated system range (range 1, table 0) holding
//! the catalog, the range directory, the node registry and id counters.
//!
//! Layout (user keys of table 0):
//! - `cat/<table name>` → `TableInfo`
//! - `dir/<range id BE>` → `RangeRecord` (written by range leaders; older epochs never overwrite newer)
//! - `node/<node id BE>` → `NodeInfo`
//! - `ctr/table`, `ctr/range`, `ctr/node` → decimal counters (atomic increments)

pub mod catalog;
pub mod registry;

use crate::gateway::{scan, Gateway, Target};
use crate::keys::{self, SYSTEM_TABLE_ID};
use cairn_proto::internal::{
    mutation, raft_command, range_request, Increment, Mutation, MutationResult, RaftCommand, RangeRecord, RangeRequest,
    ScannedPair, WriteBatch,
};
use prost::Message as _;
use tonic::Status;

pub const META_RANGE_ID: u64 = 1;
/// The first range holding user tables, created at bootstrap.
pub const FIRST_USER_RANGE_ID: u64 = 2;

pub const TABLE_PREFIX: &[u8] = b"cat/";
pub const DIR_PREFIX: &[u8] = b"dir/";
pub const NODE_PREFIX: &[u8] = b"node/";
pub const CTR_TABLE: &[u8] = b"ctr/table";
pub const CTR_RANGE: &[u8] = b"ctr/range";
pub const CTR_NODE: &[u8] = b"ctr/node";

pub fn key(user: &[u8]) -> Vec<u8> {
    keys::encode_range_key(SYSTEM_TABLE_ID, user)
}

pub fn is_meta_key(encoded: &[u8]) -> bool {
    encoded < keys::table_prefix(keys::FIRST_USER_TABLE_ID).as_slice()
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

pub fn table_key(name: &str) -> Vec<u8> {
    let mut k = TABLE_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    key(&k)
}

/// `[start, end)` of a range in the encoded keyspace.
pub type Bounds = (Vec<u8>, Vec<u8>);

/// Bounds of the meta range and of the first user range, as created at bootstrap.
pub fn bootstrap_bounds() -> (Bounds, Bounds) {
    let user_start = keys::table_prefix(keys::FIRST_USER_TABLE_ID);
    ((Vec::new(), user_start.clone()), (user_start, Vec::new()))
}

/// Scans one meta key prefix.
pub async fn scan_prefix(gw: &Gateway, prefix: &[u8]) -> Result<Vec<ScannedPair>, Status> {
    let start = key(prefix);
    let end = keys::prefix_end(&start);
    scan::collect(gw, start, end).await
}

/// Runs a write batch on the meta range.
pub async fn write(gw: &Gateway, mutations: Vec<Mutation>) -> Result<Vec<MutationResult>, Status> {
    let request_id = crate::gateway::new_request_id();
    let cmd = RaftCommand {
        request_id,
        proposed_version: None,
        cmd: Some(raft_command::Cmd::Write(WriteBatch { mutations })),
    };
    let resp = gw
        .call(Target::Range(META_RANGE_ID), |rec| {
            Ok(RangeRequest {
                range_id: META_RANGE_ID,
                epoch: rec.desc.as_ref().and_then(|d| d.epoch),
                req: Some(range_request::Req::Command(cmd.clone())),
            })
        })
        .await?;
    Ok(resp.write.map(|w| w.results).unwrap_or_default())
}

/// Atomically increments a meta counter and returns the new value.
pub async fn next_id(gw: &Gateway, counter: &[u8]) -> Result<u64, Status> {
    let m = Mutation {
        key: key(counter),
        condition: None,
        op: Some(mutation::Op::Increment(Increment { delta: 1, min: None, max: None })),
    };
    let r = write(gw, vec![m]).await?;
    match r.first() {
        Some(r) if r.succeeded && r.counter > 0 => Ok(r.counter as u64),
        _ => Err(Status::internal("id counter increment failed")),
    }
}

/// Loads every range record.
pub async fn load_directory(gw: &Gateway) -> Result<Vec<RangeRecord>, Status> {
    let pairs = scan_prefix(gw, DIR_PREFIX).await?;
    Ok(pairs.into_iter().filter_map(|p| RangeRecord::decode(p.value.as_slice()).ok()).collect())
}

/// Records range descriptors (a stale epoch never overwrites a newer one).
pub async fn report_ranges(gw: &Gateway, records: Vec<RangeRecord>) -> Result<(), Status> {
    if records.is_empty() {
        return Ok(());
    }
    let muts = records
        .into_iter()
        .filter_map(|r| {
            let id = r.desc.as_ref()?.id;
            Some(Mutation { key: dir_key(id), condition: None, op: Some(mutation::Op::RangeRecord(r)) })
        })
        .collect();
    write(gw, muts).await.map(|_| ())
}
