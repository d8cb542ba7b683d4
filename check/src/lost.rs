//! Lost writes: keys whose write was acknowledged but that the final state no
//! longer holds. This is the cheap check that catches an acknowledged write
//! vanishing in a failover, without needing the full history.

use std::collections::BTreeSet;

/// Acknowledged keys missing from `present`, in the order first acknowledged,
/// each once. Only meaningful for a workload that never deletes what it wrote.
pub fn lost_writes<K: Ord + Clone>(acknowledged: impl IntoIterator<Item = K>, present: &BTreeSet<K>) -> Vec<K> {
    let mut reported = BTreeSet::new();
    let mut lost = Vec::new();
    for key in acknowledged {
        if !present.contains(&key) && reported.insert(key.clone()) {
            lost.push(key);
        }
    }
    lost
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_lost() {
        let present: BTreeSet<u64> = (0..10).collect();
        assert!(lost_writes([1, 5, 9], &present).is_empty());
        assert!(lost_writes(Vec::<u64>::new(), &present).is_empty());
    }

    #[test]
    fn reports_missing_keys_once_in_ack_order() {
        let present: BTreeSet<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
        let acked = ["d", "a", "b", "d", "c", "b"].map(String::from);
        assert_eq!(lost_writes(acked, &present), vec!["d".to_string(), "b".to_string()]);
    }

    #[test]
    fn extra_present_keys_are_not_lost_writes() {
        let present: BTreeSet<u32> = [1, 2, 3, 4].into();
        assert_eq!(lost_writes([2, 7], &present), vec![7]);
    }
}
