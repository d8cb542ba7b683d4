//! Which old MVCC versions garbage collection may drop: a pure decision over the
//! data column family's records in stored order, so the storage engine's
//! compaction filter stays a thin adapter and the rule can be tested alone.
//!
//! The rule, for a GC safe point `s` (a wall time in ns): a version is dropped
//! when a newer version of the same key, also at or below `s`, was seen before it
//! in the same ordered pass. Every read at a version whose wall time is above `s`
//! then still finds the version it would have found before: for each key, the
//! newest version at or below `s` is kept, and so is everything above `s`.
//!
//! Two consequences of seeing only one compaction's input, both on the safe side:
//! a pass that starts in the middle of a key's versions keeps the first one it
//! sees, and a tombstone that is a key's newest version at or below `s` is kept
//! (dropping it would need proof that no older version sits in a lower level,
//! which a compaction filter cannot get), so a deleted key costs one record.

use super::mvcc::split_stored;

/// What to do with one stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Drop,
}

/// One ordered pass over stored records (one compaction), deciding record by record.
#[derive(Debug)]
pub struct VersionPruner {
    safe_point_wall_ns: u64,
    /// The stored-key prefix (escaped key ++ terminator) of the key being walked.
    current_key: Vec<u8>,
    /// Whether a version of `current_key` at or below the safe point was already kept.
    kept_one_below: bool,
    dropped: u64,
}

impl VersionPruner {
    pub fn new(safe_point_wall_ns: u64) -> Self {
        VersionPruner { safe_point_wall_ns, current_key: Vec::new(), kept_one_below: false, dropped: 0 }
    }

    /// The verdict for the next record of the pass. Records must come in stored
    /// (ascending byte) order; anything that is not a well-formed MVCC key is kept.
    pub fn decide(&mut self, stored_key: &[u8]) -> Verdict {
        let Some((key_prefix, version)) = split_stored(stored_key) else { return Verdict::Keep };
        if key_prefix != self.current_key.as_slice() {
            self.current_key.clear();
            self.current_key.extend_from_slice(key_prefix);
            self.kept_one_below = false;
        }
        if version.wall_ns > self.safe_point_wall_ns {
            return Verdict::Keep;
        }
        if self.kept_one_below {
            self.dropped += 1;
            return Verdict::Drop;
        }
        self.kept_one_below = true;
        Verdict::Keep
    }

    /// How many records this pass dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Version;
    use crate::keys::mvcc::encode;

    fn at(wall_ns: u64) -> Version {
        Version { wall_ns, logical: 0, node_id: 1 }
    }

    /// A record: (user key, wall time of its version).
    type Record = (Vec<u8>, u64);

    /// Runs a pass over `(key, wall time)` records in stored order; returns the kept ones.
    fn pass(safe: u64, records: &[(&[u8], u64)]) -> Vec<Record> {
        let mut stored: Vec<(Vec<u8>, Record)> =
            records.iter().map(|(k, w)| (encode(k, at(*w)), (k.to_vec(), *w))).collect();
        stored.sort();
        let mut p = VersionPruner::new(safe);
        stored.into_iter().filter(|(s, _)| p.decide(s) == Verdict::Keep).map(|(_, r)| r).collect()
    }

    #[test]
    fn keeps_everything_above_the_safe_point_and_the_newest_at_or_below_it() {
        let kept = pass(100, &[(b"a", 150), (b"a", 100), (b"a", 90), (b"a", 10), (b"b", 50), (b"b", 40)]);
        assert_eq!(kept, vec![(b"a".to_vec(), 150), (b"a".to_vec(), 100), (b"b".to_vec(), 50)]);
    }

    #[test]
    fn a_key_with_only_newer_versions_loses_nothing() {
        let kept = pass(100, &[(b"a", 300), (b"a", 200), (b"a", 101)]);
        assert_eq!(kept.len(), 3);
    }

    #[test]
    fn keys_that_share_a_prefix_are_kept_apart() {
        // "a" and "a\0" escape to byte strings that share a prefix: each keeps its newest.
        let kept = pass(100, &[(b"a", 20), (b"a", 10), (b"a\x00", 30), (b"a\x00", 5), (b"ab", 1)]);
        assert_eq!(kept, vec![(b"a".to_vec(), 20), (b"a\x00".to_vec(), 30), (b"ab".to_vec(), 1)]);
    }

    #[test]
    fn reads_above_the_safe_point_see_what_they_saw_before() {
        // Exhaustive over small histories: for every read version above the safe
        // point, the newest version at or below it is the same before and after.
        let walls = [5u64, 10, 20, 30, 40];
        for safe in [0u64, 7, 10, 25, 40, 100] {
            for mask in 1u32..(1 << walls.len()) {
                let history: Vec<u64> =
                    walls.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, w)| *w).collect();
                let records: Vec<(&[u8], u64)> = history.iter().map(|w| (b"k" as &[u8], *w)).collect();
                let kept: Vec<u64> = pass(safe, &records).into_iter().map(|(_, w)| w).collect();
                for read in (safe + 1)..=50 {
                    let before = history.iter().filter(|w| **w <= read).max();
                    let after = kept.iter().filter(|w| **w <= read).max();
                    assert_eq!(before, after, "safe {safe}, history {history:?}, read at {read}");
                }
            }
        }
    }

    #[test]
    fn a_pass_starting_mid_key_keeps_its_first_record() {
        let mut p = VersionPruner::new(100);
        assert_eq!(p.decide(&encode(b"a", at(10))), Verdict::Keep);
        assert_eq!(p.decide(&encode(b"a", at(5))), Verdict::Drop);
        assert_eq!(p.dropped(), 1);
        assert_eq!(p.decide(b"not an mvcc key"), Verdict::Keep);
    }
}
