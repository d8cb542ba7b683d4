//! Request load, as this node serves it: per replica, requests counted per
//! window (reads and writes apart) and, while the split check finds the range
//! hot, a split finder fed with its request keys; per node, a sketch of the
//! hottest keys over the current and the last window. Recording is a few
//! counter updates under uncontended locks.

use cairn_core::load::hot_keys::{Counted, HotKeys};
use cairn_core::load::split_finder::{SplitFinder, Verdict};
use parking_lot::Mutex;

/// Counters of the hot-key sketch (keys requested more than 1/64 of the time
/// are certain to be found).
const HOT_KEY_COUNTERS: usize = 64;

/// Bytes of an encoded key that name its slot in a hash-partitioned table
/// (table id, then slot): the only places such a table may split.
const SLOT_PREFIX_LEN: usize = 6;

#[derive(Default)]
struct Window {
    reads: u64,
    writes: u64,
    finder: Option<SplitFinder>,
    /// Feed the finder each key's slot instead of the key (a hash-partitioned
    /// table splits only between slots, so a candidate inside a slot is none).
    whole_slots: bool,
    /// xorshift state for reservoir sampling (seeded per range, so runs replay).
    rng: u64,
}

/// One replica's load.
pub struct RangeLoad {
    window: Mutex<Window>,
}

impl RangeLoad {
    pub fn new(range_id: u64) -> Self {
        let seed = range_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        RangeLoad { window: Mutex::new(Window { rng: seed, ..Default::default() }) }
    }

    /// Counts one request over `keys` (a batch counts once, each key sampled).
    pub fn record<'k>(&self, keys: impl Iterator<Item = &'k [u8]>, write: bool) {
        let mut w = self.window.lock();
        if write {
            w.writes += 1;
        } else {
            w.reads += 1;
        }
        if w.finder.is_none() {
            return;
        }
        for key in keys {
            let key = if w.whole_slots { key.get(..SLOT_PREFIX_LEN).unwrap_or(key) } else { key };
            w.rng ^= w.rng << 13;
            w.rng ^= w.rng >> 7;
            w.rng ^= w.rng << 17;
            let random = w.rng;
            if let Some(f) = w.finder.as_mut() {
                f.record(key, random);
            }
        }
    }

    /// Ends the window: (reads, writes) counted since the last call.
    pub fn take_counts(&self) -> (u64, u64) {
        let mut w = self.window.lock();
        let counts = (w.reads, w.writes);
        w.reads = 0;
        w.writes = 0;
        counts
    }

    /// Starts feeding request keys to a split finder (the range runs hot); with
    /// `whole_slots`, each key's hash slot instead (the range is of a
    /// hash-partitioned table). Sampling already under way goes on.
    pub fn start_sampling(&self, whole_slots: bool) {
        let mut w = self.window.lock();
        if w.finder.is_none() {
            w.finder = Some(SplitFinder::default());
            w.whole_slots = whole_slots;
        }
    }

    /// Stops sampling and forgets what was sampled.
    pub fn stop_sampling(&self) {
        self.window.lock().finder = None;
    }

    /// The split finder's verdict (`None` while not sampling).
    pub fn verdict(&self) -> Option<Verdict> {
        self.window.lock().finder.as_ref().map(SplitFinder::verdict)
    }
}

/// The node's hottest keys: the current window's sketch and the last complete one's.
pub struct NodeHotKeys {
    inner: Mutex<(HotKeys, HotKeys)>,
}

impl Default for NodeHotKeys {
    fn default() -> Self {
        NodeHotKeys { inner: Mutex::new((HotKeys::new(HOT_KEY_COUNTERS), HotKeys::new(HOT_KEY_COUNTERS))) }
    }
}

impl NodeHotKeys {
    pub fn record(&self, key: &[u8]) {
        self.inner.lock().0.record(key);
    }

    /// Closes the current window: it becomes the last complete one.
    pub fn roll(&self) {
        let mut g = self.inner.lock();
        g.1 = std::mem::replace(&mut g.0, HotKeys::new(HOT_KEY_COUNTERS));
    }

    /// The last complete window's `n` hottest keys, and how many requests it counted.
    pub fn top(&self, n: usize) -> (Vec<Counted>, u64) {
        let g = self.inner.lock();
        (g.1.top(n), g.1.total())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    /// Keys of one hash slot, requested evenly: many distinct keys, one slot.
    fn one_slot_keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| keys::encode_hash_key(3, format!("{{user42}}.{i}").as_bytes())).collect()
    }

    fn verdict_after(load: &RangeLoad, keys: &[Vec<u8>]) -> Verdict {
        for _ in 0..20 {
            for k in keys {
                load.record(std::iter::once(k.as_slice()), false);
            }
        }
        load.verdict().expect("sampling")
    }

    #[test]
    fn a_hash_table_range_is_sampled_by_whole_slots_and_does_not_split_inside_one() {
        let keys = one_slot_keys(200);
        let by_key = RangeLoad::new(9);
        by_key.start_sampling(false);
        assert!(
            matches!(verdict_after(&by_key, &keys), Verdict::SplitAt { .. }),
            "raw keys of one slot look divisible (the split would land inside the slot)"
        );
        let by_slot = RangeLoad::new(9);
        by_slot.start_sampling(true);
        match verdict_after(&by_slot, &keys) {
            Verdict::NoSplit { key, share } => {
                assert_eq!(key, keys[0][..SLOT_PREFIX_LEN].to_vec(), "the slot is named");
                assert!(share > 0.99, "the one slot carries the load: {share}");
            }
            v => panic!("a hot slot must not split: {v:?}"),
        }
    }

    #[test]
    fn whole_slot_samples_still_split_between_slots() {
        let keys: Vec<Vec<u8>> = (0..200).map(|i| keys::encode_hash_key(3, format!("user{i}").as_bytes())).collect();
        let load = RangeLoad::new(9);
        load.start_sampling(true);
        match verdict_after(&load, &keys) {
            Verdict::SplitAt { key, left_share } => {
                assert_eq!(key.len(), SLOT_PREFIX_LEN, "a split point is a slot start");
                assert!((0.375..=0.625).contains(&left_share), "{left_share}");
            }
            v => panic!("many slots divide: {v:?}"),
        }
    }
}
