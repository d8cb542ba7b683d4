//! The cached range directory: encoded key → range record (bounds, epoch,
//! replicas, leader hint). Pure data structure; refreshing it is the gateway's job.

use crate::keys;
use cairn_proto::internal::{RangeDescriptor, RangeRecord};
use std::collections::BTreeMap;

#[derive(Default, Clone)]
pub struct Directory {
    by_start: BTreeMap<Vec<u8>, RangeRecord>,
}

fn epoch_of(d: &RangeDescriptor) -> (u64, u64) {
    d.epoch.as_ref().map(|e| (e.version, e.conf_ver)).unwrap_or_default()
}

impl Directory {
    /// Builds the directory from stored records in epoch order, so that where
    /// records overlap (a merged range's retired neighbour, re-reported by its
    /// old leader after the merge) the newer one wins, whatever the input order.
    pub fn from_records(records: impl IntoIterator<Item = RangeRecord>) -> Self {
        let mut records: Vec<RangeRecord> = records.into_iter().collect();
        records.sort_by_key(|r| r.desc.as_ref().map(epoch_of).unwrap_or_default());
        let mut d = Directory::default();
        for r in records {
            d.insert(r);
        }
        d
    }

    pub fn lookup(&self, key: &[u8]) -> Option<&RangeRecord> {
        let (_, rec) = self.by_start.range(..=key.to_vec()).next_back()?;
        let desc = rec.desc.as_ref()?;
        keys::in_range(key, &desc.start, &desc.end).then_some(rec)
    }

    pub fn by_id(&self, id: u64) -> Option<&RangeRecord> {
        self.by_start.values().find(|r| r.desc.as_ref().is_some_and(|d| d.id == id))
    }

    pub fn records(&self) -> impl Iterator<Item = &RangeRecord> {
        self.by_start.values()
    }

    /// Inserts a record, evicting records it overlaps that are not newer.
    /// A record older than one it overlaps is ignored.
    pub fn insert(&mut self, rec: RangeRecord) {
        let Some(desc) = rec.desc.clone() else { return };
        let overlapping: Vec<Vec<u8>> = self
            .by_start
            .iter()
            .filter(|(_, r)| {
                r.desc.as_ref().is_some_and(|d| {
                    let a = desc.end.is_empty() || d.start < desc.end;
                    let b = d.end.is_empty() || desc.start < d.end;
                    a && b
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &overlapping {
            if let Some(old) = self.by_start.get(k).and_then(|r| r.desc.as_ref()) {
                if old.id == desc.id && epoch_of(old) > epoch_of(&desc) {
                    return;
                }
            }
        }
        for k in overlapping {
            self.by_start.remove(&k);
        }
        self.by_start.insert(desc.start.clone(), rec);
    }

    pub fn set_leader(&mut self, range_id: u64, leader: u64) {
        if let Some(r) = self.by_start.values_mut().find(|r| r.desc.as_ref().is_some_and(|d| d.id == range_id)) {
            r.leader_node_id = leader;
        }
    }

    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::internal::RangeEpoch;

    fn rec(id: u64, s: &[u8], e: &[u8], v: u64) -> RangeRecord {
        RangeRecord {
            desc: Some(RangeDescriptor {
                id,
                start: s.to_vec(),
                end: e.to_vec(),
                epoch: Some(RangeEpoch { version: v, conf_ver: 1 }),
                ..Default::default()
            }),
            leader_node_id: 0,
            ..Default::default()
        }
    }

    #[test]
    fn split_records_replace_the_parent() {
        let mut d = Directory::from_records([rec(1, b"", b"m", 1), rec(2, b"m", b"", 1)]);
        assert_eq!(d.lookup(b"z").unwrap().desc.as_ref().unwrap().id, 2);
        d.insert(rec(3, b"t", b"", 2));
        assert!(d.lookup(b"p").is_none(), "left part unknown until its record arrives");
        assert_eq!(d.lookup(b"x").unwrap().desc.as_ref().unwrap().id, 3);
        d.insert(rec(2, b"m", b"t", 2));
        assert_eq!(d.lookup(b"p").unwrap().desc.as_ref().unwrap().id, 2);
        d.insert(rec(2, b"m", b"", 1));
        assert_eq!(d.lookup(b"x").unwrap().desc.as_ref().unwrap().id, 3, "stale record ignored");
    }

    #[test]
    fn a_merged_range_outranks_its_retired_neighbour_in_any_order() {
        let merged = rec(5, b"m", b"", 4);
        let retired = rec(9, b"t", b"", 3);
        for records in [vec![merged.clone(), retired.clone()], vec![retired, merged]] {
            let d = Directory::from_records(records);
            assert_eq!(d.len(), 1);
            assert_eq!(d.lookup(b"x").unwrap().desc.as_ref().unwrap().id, 5);
        }
    }
}
