//! The hottest keys of a node in fixed memory: the space-saving sketch
//! (Metwally et al.). It keeps `capacity` counters; a key not counted takes
//! over the smallest counter, inheriting its count as possible overcount
//! (`error`). Every key requested more than 1/capacity of the time is
//! guaranteed a counter, and a count is never below the key's true count.

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub key: Vec<u8>,
    /// Requests counted for the key (an upper bound of its true count).
    pub count: u64,
    /// How much of `count` may belong to keys it replaced.
    pub error: u64,
}

#[derive(Clone, Debug)]
pub struct HotKeys {
    capacity: usize,
    counters: Vec<Counted>,
    index: HashMap<Vec<u8>, usize>,
    total: u64,
}

impl HotKeys {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        HotKeys { capacity, counters: Vec::with_capacity(capacity), index: HashMap::with_capacity(capacity), total: 0 }
    }

    pub fn record(&mut self, key: &[u8]) {
        self.total += 1;
        if let Some(&i) = self.index.get(key) {
            self.counters[i].count += 1;
            return;
        }
        if self.counters.len() < self.capacity {
            self.index.insert(key.to_vec(), self.counters.len());
            self.counters.push(Counted { key: key.to_vec(), count: 1, error: 0 });
            return;
        }
        // A linear scan: the capacity is small, and most requests hit a counted key.
        let Some((i, min)) = self.counters.iter().enumerate().min_by_key(|(_, c)| c.count).map(|(i, c)| (i, c.count))
        else {
            return;
        };
        let old = std::mem::replace(&mut self.counters[i], Counted { key: key.to_vec(), count: min + 1, error: min });
        self.index.remove(&old.key);
        self.index.insert(key.to_vec(), i);
    }

    /// Requests recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `n` keys with the highest counts, highest first.
    pub fn top(&self, n: usize) -> Vec<Counted> {
        let mut all = self.counters.clone();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_hitters_are_found_among_many_light_keys_in_fixed_memory() {
        let mut h = HotKeys::new(16);
        for i in 0..100_000u64 {
            let key = match i % 10 {
                0..=2 => b"hot-a".to_vec(),
                3 => b"hot-b".to_vec(),
                _ => format!("cold-{i}").into_bytes(),
            };
            h.record(&key);
        }
        let top = h.top(2);
        assert_eq!(top[0].key, b"hot-a");
        assert_eq!(top[1].key, b"hot-b");
        assert!(top[0].count >= 30_000 && top[0].count - top[0].error <= 30_000, "{:?}", top[0]);
        assert!(h.counters.len() <= 16 && h.index.len() <= 16, "bounded");
        assert_eq!(h.total(), 100_000);
    }
}
