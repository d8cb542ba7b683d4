//! Tables: create (allocating an id and giving the table its own ranges by
//! splitting at its bounds and pre-split points), drop, list, and lookup with
//! a per-node cache.

use super::admin;
use super::{scan_prefix, table_key, write, CTR_TABLE, TABLE_PREFIX};
use crate::gateway::Gateway;
use crate::keys::{self, SLOT_COUNT};
use cairn_proto::internal::{mutation, Mutation, TableInfo};
use cairn_proto::kv::{condition, Condition, Partitioning};
use prost::Message as _;
use tonic::Status;

/// Largest number of initial ranges a hash table may ask for.
pub const MAX_HASH_RANGES: u32 = 1024;
/// Largest number of pre-split keys for a range table.
pub const MAX_SPLIT_KEYS: usize = 1024;

pub use crate::request::is_hashed;

/// An encoded key's table (by name, among `tables`) and the key as the table's
/// clients wrote it (a hashed table's slot prefix removed); `None` for a key of
/// no listed table.
pub fn user_key<'k>(tables: &[TableInfo], encoded: &'k [u8]) -> Option<(&'k [u8], String)> {
    let (table_id, rest) = keys::decode_table(encoded)?;
    let t = tables.iter().find(|t| t.id == table_id)?;
    let key = if is_hashed(t) { rest.get(2..)? } else { rest };
    Some((key, t.name.clone()))
}

/// Looks a table up (cache first). Dropped or unknown tables are NotFound.
pub async fn get(gw: &Gateway, name: &str) -> Result<TableInfo, Status> {
    if let Some(t) = gw.tables.read().get(name) {
        return Ok(t.clone());
    }
    gw.limits.check_table_name(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let pairs = crate::gateway::scan::collect(gw, table_key(name), keys::next_key(&table_key(name))).await?;
    let t = pairs
        .first()
        .and_then(|p| TableInfo::decode(p.value.as_slice()).ok())
        .filter(|t| !t.dropped)
        .ok_or_else(|| Status::not_found(format!("table {name:?} does not exist")))?;
    gw.tables.write().insert(name.to_string(), t.clone());
    Ok(t)
}

pub async fn list(gw: &Gateway) -> Result<Vec<TableInfo>, Status> {
    let pairs = scan_prefix(gw, TABLE_PREFIX).await?;
    Ok(pairs.into_iter().filter_map(|p| TableInfo::decode(p.value.as_slice()).ok()).filter(|t| !t.dropped).collect())
}

/// Table id of an encoded key → table name, for display.
pub fn name_by_id(tables: &[TableInfo], id: u32) -> String {
    if id == keys::SYSTEM_TABLE_ID {
        return "_meta".to_string();
    }
    tables.iter().find(|t| t.id == id).map(|t| t.name.clone()).unwrap_or_else(|| format!("#{id}"))
}

/// Where a table's ranges live: replicas per range (0: the cluster's) and the
/// zones preferred for their leaders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub replication_factor: u32,
    pub lease_preferences: Vec<String>,
}

/// Zones a table may list as lease preferences, and how long a zone name may be.
const MAX_LEASE_PREFERENCES: usize = 8;
const MAX_ZONE_LEN: usize = 64;

impl Placement {
    pub fn of(t: &TableInfo) -> Placement {
        Placement { replication_factor: t.replication_factor, lease_preferences: t.lease_preferences.clone() }
    }

    fn check(&self) -> Result<(), Status> {
        if ![0, 1, 3, 5].contains(&self.replication_factor) {
            return Err(Status::invalid_argument(format!(
                "replication_factor must be 1, 3 or 5 (0 for the cluster's), got {}",
                self.replication_factor
            )));
        }
        if self.lease_preferences.len() > MAX_LEASE_PREFERENCES {
            return Err(Status::invalid_argument(format!("at most {MAX_LEASE_PREFERENCES} lease preferences")));
        }
        if let Some(z) = self.lease_preferences.iter().find(|z| z.is_empty() || z.len() > MAX_ZONE_LEN) {
            return Err(Status::invalid_argument(format!(
                "lease preference {z:?}: a zone name is 1 to {MAX_ZONE_LEN} bytes"
            )));
        }
        Ok(())
    }
}

/// Changes a table's placement (replication factor when `rf` is set, lease
/// preferences when `prefs` is): a compare-and-set on its catalog entry, so a
/// concurrent drop or alter is never overwritten.
pub async fn alter(gw: &Gateway, name: &str, rf: Option<u32>, prefs: Option<Vec<String>>) -> Result<TableInfo, Status> {
    gw.limits.check_table_name(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let pairs = crate::gateway::scan::collect(gw, table_key(name), keys::next_key(&table_key(name))).await?;
    let (raw, current) = pairs
        .first()
        .and_then(|p| Some((p.value.clone(), TableInfo::decode(p.value.as_slice()).ok()?)))
        .filter(|(_, t)| !t.dropped)
        .ok_or_else(|| Status::not_found(format!("table {name:?} does not exist")))?;
    let mut placement = Placement::of(&current);
    if let Some(rf) = rf {
        placement.replication_factor = rf;
    }
    if let Some(prefs) = prefs {
        placement.lease_preferences = prefs;
    }
    placement.check()?;
    let next = TableInfo {
        replication_factor: placement.replication_factor,
        lease_preferences: placement.lease_preferences,
        ..current
    };
    if !put_entry(gw, name, &next, condition::Kind::ValueEquals(raw)).await? {
        return Err(Status::aborted(format!("table {name:?} changed meanwhile; retry")));
    }
    tracing::info!(table = name, rf = next.replication_factor, prefs = ?next.lease_preferences, "table altered");
    Ok(next)
}

pub async fn create(
    gw: &Gateway,
    name: &str,
    partitioning: Partitioning,
    split_keys: &[Vec<u8>],
    hash_ranges: u32,
    placement: Placement,
) -> Result<TableInfo, Status> {
    gw.limits.check_table_name(name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    placement.check()?;
    if split_keys.len() > MAX_SPLIT_KEYS {
        return Err(Status::invalid_argument(format!("at most {MAX_SPLIT_KEYS} split keys")));
    }
    for k in split_keys {
        gw.limits.check_key(k).map_err(|e| Status::invalid_argument(format!("split key: {e}")))?;
    }
    if hash_ranges > MAX_HASH_RANGES {
        return Err(Status::invalid_argument(format!("hash_ranges is {hash_ranges}; the limit is {MAX_HASH_RANGES}")));
    }
    let hashed = partitioning == Partitioning::Hash;
    if hashed && !split_keys.is_empty() {
        return Err(Status::invalid_argument("hash tables split on slots: use hash_ranges, not split_keys"));
    }
    if get(gw, name).await.is_ok() {
        return Err(Status::already_exists(format!("table {name:?} already exists")));
    }
    let id = super::next_id(gw, CTR_TABLE).await?;
    let id = u32::try_from(id)
        .ok()
        .filter(|id| *id < 0xffff_ff00)
        .ok_or_else(|| Status::resource_exhausted("table ids are exhausted"))?;
    // The table gets ranges of its own before it becomes visible.
    let mut points = vec![keys::table_prefix(id), keys::table_end(id)];
    if hashed {
        let n = hash_ranges.max(1);
        for i in 1..n {
            let slot = (i * SLOT_COUNT as u32 / n) as u16;
            points.push(keys::hash_slot_start(id, slot));
        }
    } else {
        points.extend(split_keys.iter().map(|k| keys::encode_range_key(id, k)));
    }
    points.sort();
    points.dedup();
    for p in points {
        admin::split_at(gw, &p, true).await?;
    }
    let info = TableInfo {
        name: name.to_string(),
        id,
        partitioning: partitioning as i32,
        dropped: false,
        replication_factor: placement.replication_factor,
        lease_preferences: placement.lease_preferences,
    };
    if !put_entry(gw, name, &info, condition::Kind::IfAbsent(true)).await? {
        return Err(Status::already_exists(format!("table {name:?} already exists")));
    }
    tracing::info!(table = name, id, "table created");
    Ok(info)
}

/// Drops a table: hides it, clears its data range by range, then forgets its name.
pub async fn drop(gw: &Gateway, name: &str) -> Result<(), Status> {
    let t = get(gw, name).await?;
    let hidden = TableInfo { dropped: true, ..t.clone() };
    write(
        gw,
        vec![Mutation {
            expiry: None,
            key: table_key(name),
            condition: None,
            op: Some(mutation::Op::Put(hidden.encode_to_vec())),
            value_kind: 0,
        }],
    )
    .await?;
    gw.forget_table(name);
    admin::clear_span(gw, &keys::table_prefix(t.id), &keys::table_end(t.id), Some(t.id)).await?;
    write(
        gw,
        vec![Mutation {
            expiry: None,
            key: table_key(name),
            condition: None,
            op: Some(mutation::Op::Delete(true)),
            value_kind: 0,
        }],
    )
    .await?;
    gw.forget_table(name);
    tracing::info!(table = name, id = t.id, "table dropped");
    Ok(())
}

/// Writes table `name`'s catalog entry if `condition` holds on the current one,
/// and drops this node's cached copy; `false` if the condition failed.
async fn put_entry(gw: &Gateway, name: &str, info: &TableInfo, condition: condition::Kind) -> Result<bool, Status> {
    let m = Mutation {
        expiry: None,
        key: table_key(name),
        condition: Some(Condition { kind: Some(condition) }),
        op: Some(mutation::Op::Put(info.encode_to_vec())),
        value_kind: 0,
    };
    let written = write(gw, vec![m]).await?.first().is_some_and(|r| r.succeeded);
    if written {
        gw.forget_table(name);
    }
    Ok(written)
}
