//! After healing, what each node's disk holds must match the ranges it is a
//! replica of: no MVCC data, dedupe records, Raft log or Raft state of a range
//! the node left (only a left range's term and vote, and its tombstone, stay, so
//! that the node never votes twice in a term), and every range it is a replica
//! of present. A removed replica that is never purged, or data a split or a
//! snapshot left outside every local range, shows up here even when every
//! client-visible check passes. Both simulators run it.

use crate::keys;
use crate::storage::layout::{self, StateKey};
use crate::storage::sim_disk::SimDisk;
use crate::storage::Cf;
use cairn_proto::internal::RangeDescriptor;
use prost::Message as _;

fn describe(d: &RangeDescriptor) -> String {
    let e = d.epoch.unwrap_or_default();
    let replicas: Vec<u64> = d.replicas.iter().map(|r| r.node_id).collect();
    format!("replicas {replicas:?}, epoch {}/{}", e.version, e.conf_ver)
}

/// The node id a disk belongs to (its identity record: `cluster id \n node id`);
/// the store-level simulator's disks have none.
pub fn node_id_of(disk: &SimDisk) -> Option<u64> {
    let raw = disk.get(Cf::Local, layout::LOCAL_IDENT)?;
    String::from_utf8(raw).ok()?.rsplit('\n').next()?.parse().ok()
}

/// The problems on the disk of node `node`, given every range of the cluster.
pub fn check_disk(node: u64, disk: &SimDisk, ranges: &[RangeDescriptor]) -> Vec<String> {
    let mine: Vec<&RangeDescriptor> = ranges.iter().filter(|r| r.replicas.iter().any(|x| x.node_id == node)).collect();
    let is_mine = |id: u64| mine.iter().any(|r| r.id == id);
    let mut problems = Vec::new();
    let mut described = Vec::new();
    for key in disk.keys(Cf::RaftState) {
        match layout::parse_state_key(&key) {
            Some((_, StateKey::HardState | StateKey::Tombstone)) | None => {}
            Some((id, kind)) => {
                if kind == StateKey::Descriptor {
                    described.push(id);
                }
                if !is_mine(id) {
                    let local = disk
                        .get(Cf::RaftState, &layout::descriptor_key(id))
                        .and_then(|b| RangeDescriptor::decode(b.as_slice()).ok());
                    let listed = ranges.iter().find(|r| r.id == id);
                    problems.push(format!(
                        "node {node} holds Raft state ({kind:?}) of range {id}, which it is not a replica of \
                         (its descriptor: {}; the cluster's: {})",
                        local.map_or("none".into(), |d| describe(&d)),
                        listed.map_or("none".into(), describe)
                    ));
                }
            }
        }
    }
    for r in &mine {
        if !described.contains(&r.id) {
            problems.push(format!("node {node} is a replica of range {} but holds no descriptor for it", r.id));
        }
    }
    let mut stray_log: Vec<u64> =
        disk.keys(Cf::RaftLog).iter().filter_map(|k| layout::log_range_of(k)).filter(|id| !is_mine(*id)).collect();
    stray_log.dedup();
    for id in stray_log {
        problems.push(format!("node {node} holds Raft log entries of range {id}, which it is not a replica of"));
    }
    let in_mine = |data_key: &[u8]| mine.iter().any(|r| keys::in_range(data_key, &r.start, &r.end));
    let stray_data = disk
        .keys(Cf::Data)
        .iter()
        .filter_map(|k| keys::mvcc::decode(k).map(|(key, _)| key))
        .filter(|key| !in_mine(key))
        .count();
    if stray_data > 0 {
        problems.push(format!("node {node} holds {stray_data} MVCC records outside every range it is a replica of"));
    }
    let spans: Vec<(Vec<u8>, Vec<u8>)> = mine.iter().map(|r| layout::dedupe_span(&r.start, &r.end)).collect();
    let stray_dedupe = disk
        .keys(Cf::Dedupe)
        .iter()
        .filter(|k| !spans.iter().any(|(lo, hi)| k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice()))
        .count();
    if stray_dedupe > 0 {
        problems
            .push(format!("node {node} holds {stray_dedupe} dedupe records outside every range it is a replica of"));
    }
    problems
}
