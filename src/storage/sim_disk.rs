//! An in-memory disk for the deterministic simulator: the `Engine` backend that
//! stands in for RocksDB when a whole cluster runs in one process.
//!
//! It models what matters for durability the way RocksDB's write-ahead log
//! behaves: batches are atomic and ordered, an unsynced batch is readable at
//! once but lives only in the "page cache", and a synced batch makes itself and
//! every earlier batch durable. A power cut (`crash`) keeps the durable state
//! plus some prefix of the unsynced batches, never a later batch without an
//! earlier one. A slow disk is modelled as simulated time spent per sync, which
//! the simulator charges to the node before letting it run again.

use super::cf::Cf;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Bound;

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// One write inside a batch.
#[derive(Clone, Debug)]
pub enum SimOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

#[derive(Default)]
struct DiskState {
    /// Bumped by every crash: an engine opened before it is a dead process.
    generation: u64,
    live: [Tree; Cf::ALL.len()],
    durable: [Tree; Cf::ALL.len()],
    unsynced: Vec<Vec<SimOp>>,
    sync_latency_ms: u64,
    owed_sync_ms: u64,
}

/// A simulated disk shared by the successive incarnations of one node.
#[derive(Default)]
pub struct SimDisk {
    state: Mutex<DiskState>,
}

fn cf_index(cf: Cf) -> usize {
    Cf::ALL.iter().position(|c| *c == cf).unwrap_or(0)
}

fn apply(trees: &mut [Tree; Cf::ALL.len()], ops: &[SimOp]) {
    for op in ops {
        match op {
            SimOp::Put(cf, k, v) => {
                trees[cf_index(*cf)].insert(k.clone(), v.clone());
            }
            SimOp::Delete(cf, k) => {
                trees[cf_index(*cf)].remove(k);
            }
            // RocksDB treats an empty or inverted range as deleting nothing.
            SimOp::DeleteRange(_, start, end) if start >= end => {}
            SimOp::DeleteRange(cf, start, end) => {
                let tree = &mut trees[cf_index(*cf)];
                let doomed: Vec<Vec<u8>> = tree
                    .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    tree.remove(&k);
                }
            }
        }
    }
}

fn span(start: &[u8], end: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let hi = if end.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.to_vec()) };
    (Bound::Included(start.to_vec()), hi)
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    pub fn generation(&self) -> u64 {
        self.state.lock().generation
    }

    /// Writes one atomic batch from the engine of incarnation `generation`.
    /// Returns false (and writes nothing) if that incarnation has crashed.
    pub fn write(&self, generation: u64, ops: Vec<SimOp>, sync: bool) -> bool {
        let mut s = self.state.lock();
        if s.generation != generation {
            return false;
        }
        apply(&mut s.live, &ops);
        s.unsynced.push(ops);
        if sync {
            let pending = std::mem::take(&mut s.unsynced);
            for batch in &pending {
                apply(&mut s.durable, batch);
            }
            s.owed_sync_ms += s.sync_latency_ms;
        }
        true
    }

    /// A power cut: everything synced survives, plus the first `keep_unsynced`
    /// batches written since the last sync (the part of the log the OS happened
    /// to flush). Engines opened before the crash stop writing.
    pub fn crash(&self, keep_unsynced: usize) {
        let mut s = self.state.lock();
        let pending = std::mem::take(&mut s.unsynced);
        for batch in pending.iter().take(keep_unsynced) {
            apply(&mut s.durable, batch);
        }
        s.live = s.durable.clone();
        s.generation += 1;
        s.owed_sync_ms = 0;
    }

    /// Flips one bit of the stored value of `key`, as bit rot at rest would.
    /// Returns false if there is no such key.
    pub fn damage(&self, cf: Cf, key: &[u8]) -> bool {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let i = cf_index(cf);
        let mut found = false;
        for tree in [&mut s.live[i], &mut s.durable[i]] {
            if let Some(last) = tree.get_mut(key).and_then(|v| v.last_mut()) {
                *last ^= 0x04;
                found = true;
            }
        }
        found
    }

    /// Keys of a column family, in order (for picking what to damage).
    pub fn keys(&self, cf: Cf) -> Vec<Vec<u8>> {
        self.state.lock().durable[cf_index(cf)].keys().cloned().collect()
    }

    /// Batches written since the last sync, which a crash may lose.
    pub fn unsynced_batches(&self) -> usize {
        self.state.lock().unsynced.len()
    }

    /// Simulated milliseconds each sync takes from now on (0 = a fast disk).
    pub fn set_sync_latency_ms(&self, ms: u64) {
        self.state.lock().sync_latency_ms = ms;
    }

    /// Time owed for syncs since the last call; the simulator stalls the node for it.
    pub fn take_owed_sync_ms(&self) -> u64 {
        std::mem::take(&mut self.state.lock().owed_sync_ms)
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Option<Vec<u8>> {
        self.state.lock().live[cf_index(cf)].get(key).cloned()
    }

    /// Pairs in `[start, end)` (empty `end` = unbounded), in key order, handed to
    /// `f` until it returns false. The lock is not held while `f` runs.
    pub fn scan(&self, cf: Cf, start: &[u8], end: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> bool) {
        let mut cursor = span(start, end);
        loop {
            // Copied out a page at a time so `f` may call back into the engine.
            let page: Vec<(Vec<u8>, Vec<u8>)> = {
                let s = self.state.lock();
                s.live[cf_index(cf)].range(cursor.clone()).take(256).map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            let Some((last, _)) = page.last() else { return };
            cursor.0 = Bound::Excluded(last.clone());
            let full = page.len() == 256;
            for (k, v) in &page {
                if !f(k, v) {
                    return;
                }
            }
            if !full {
                return;
            }
        }
    }

    /// Bytes of keys and values in `[start, end)` of a column family.
    pub fn size_of(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64 {
        let s = self.state.lock();
        s.live[cf_index(cf)].range(span(start, end)).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    pub fn total_size(&self) -> u64 {
        Cf::ALL.iter().map(|cf| self.size_of(*cf, b"", b"")).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> SimOp {
        SimOp::Put(Cf::Data, k.as_bytes().to_vec(), b"v".to_vec())
    }

    #[test]
    fn a_crash_keeps_synced_batches_and_a_prefix_of_the_rest() {
        let d = SimDisk::new();
        let g = d.generation();
        assert!(d.write(g, vec![put("a")], false));
        assert!(d.write(g, vec![put("b")], true)); // syncs "a" too
        assert!(d.write(g, vec![put("c")], false));
        assert!(d.write(g, vec![put("d")], false));
        assert!(d.get(Cf::Data, b"d").is_some(), "unsynced writes are readable");
        d.crash(1);
        assert!(d.get(Cf::Data, b"a").is_some() && d.get(Cf::Data, b"b").is_some());
        assert!(d.get(Cf::Data, b"c").is_some(), "the flushed prefix survives");
        assert!(d.get(Cf::Data, b"d").is_none(), "a later batch is lost");
        assert!(!d.write(g, vec![put("e")], true), "the dead incarnation cannot write");
        assert!(d.get(Cf::Data, b"e").is_none());
    }

    #[test]
    fn delete_range_and_scans_follow_key_order() {
        let d = SimDisk::new();
        let g = d.generation();
        let ops: Vec<SimOp> = (0..600).map(|i| put(&format!("k{i:04}"))).collect();
        d.write(g, ops, true);
        d.write(g, vec![SimOp::DeleteRange(Cf::Data, b"k0100".to_vec(), b"k0500".to_vec())], true);
        let mut seen = Vec::new();
        d.scan(Cf::Data, b"k", b"", |k, _| {
            seen.push(k.to_vec());
            true
        });
        assert_eq!(seen.len(), 200);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(seen[100], b"k0500".to_vec());
    }

    #[test]
    fn slow_syncs_are_owed_as_time() {
        let d = SimDisk::new();
        d.set_sync_latency_ms(30);
        let g = d.generation();
        d.write(g, vec![put("a")], true);
        d.write(g, vec![put("b")], false);
        d.write(g, vec![put("c")], true);
        assert_eq!(d.take_owed_sync_ms(), 60);
        assert_eq!(d.take_owed_sync_ms(), 0);
    }
}
