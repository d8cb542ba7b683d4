//! Bounded-staleness reads. A read that may be up to `bound` stale must still
//! hold every write acknowledged more than `bound` before the read began, and
//! must never show a value that had not yet been written when it completed.
//!
//! The check is exact for the histories it is made for: each key written by one
//! client, one write at a time, with increasing values, so "newer" is
//! "larger" and a read's value places it in the key's history. A write whose
//! outcome is unknown may or may not have applied, so it raises the ceiling of
//! what a read may show but never the floor of what it must.

use std::collections::BTreeMap;
use std::fmt;

/// One write of a sequentially written key.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SequentialWrite {
    pub value: u64,
    pub invoke_ns: u64,
    /// When the write's acknowledgement arrived; `None` if it never did (failed or in doubt).
    pub acked_ns: Option<u64>,
}

/// One bounded-staleness read.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct BoundedRead {
    pub key: String,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub bound_ns: u64,
    /// What the read returned (`None`: the key was absent).
    pub observed: Option<u64>,
    /// Which node served it, for the report.
    pub node: u64,
}

/// A read that broke its bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleViolation {
    pub read: BoundedRead,
    pub problem: String,
}

impl fmt::Display for StaleViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.read;
        write!(
            f,
            "read of {} through node {} with a {} ms bound, invoked at {:.3} s: {}",
            r.key,
            r.node,
            r.bound_ns / 1_000_000,
            r.invoke_ns as f64 / 1e9,
            self.problem
        )
    }
}

/// Every read in `reads` that shows a value older than its bound allows or newer
/// than anything written by its end. `writes` holds each key's writes in the
/// order they were issued.
pub fn stale_read_violations(
    writes: &BTreeMap<String, Vec<SequentialWrite>>,
    reads: &[BoundedRead],
) -> Vec<StaleViolation> {
    let none = Vec::new();
    reads
        .iter()
        .filter_map(|read| {
            let history = writes.get(&read.key).unwrap_or(&none);
            let horizon = read.invoke_ns.saturating_sub(read.bound_ns);
            // The newest write acknowledged before the horizon: the read must hold it.
            let floor = history.iter().filter(|w| w.acked_ns.is_some_and(|t| t < horizon)).map(|w| w.value).max();
            let problem = match (read.observed, floor) {
                (None, Some(f)) => Some(format!("found nothing, but {f} was acknowledged before the bound")),
                (Some(v), Some(f)) if v < f => Some(format!("returned {v}, but {f} was acknowledged before the bound")),
                (Some(v), _) => {
                    let written = history.iter().any(|w| w.value == v && w.invoke_ns < read.complete_ns);
                    (!written).then(|| format!("returned {v}, which no write had begun to write by the read's end"))
                }
                (None, None) => None,
            };
            problem.map(|problem| StaleViolation { read: read.clone(), problem })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn history() -> BTreeMap<String, Vec<SequentialWrite>> {
        let writes = vec![
            SequentialWrite { value: 1, invoke_ns: 0, acked_ns: Some(10 * MS) },
            SequentialWrite { value: 2, invoke_ns: 20 * MS, acked_ns: Some(30 * MS) },
            SequentialWrite { value: 3, invoke_ns: 40 * MS, acked_ns: None },
            SequentialWrite { value: 4, invoke_ns: 500 * MS, acked_ns: Some(510 * MS) },
        ];
        BTreeMap::from([("k".to_string(), writes)])
    }

    fn read(invoke_ms: u64, bound_ms: u64, observed: Option<u64>) -> BoundedRead {
        BoundedRead {
            key: "k".into(),
            invoke_ns: invoke_ms * MS,
            complete_ns: invoke_ms * MS + 5 * MS,
            bound_ns: bound_ms * MS,
            observed,
            node: 2,
        }
    }

    #[test]
    fn a_read_within_its_bound_passes() {
        // At 140 ms with a 100 ms bound, value 2 (acked at 30 ms) is the floor.
        for v in [2, 3] {
            assert!(stale_read_violations(&history(), &[read(140, 100, Some(v))]).is_empty(), "{v}");
        }
        // Before anything was acknowledged past the horizon, absence is allowed.
        assert!(stale_read_violations(&history(), &[read(50, 100, None)]).is_empty());
    }

    #[test]
    fn a_read_older_than_its_bound_is_caught() {
        let v = stale_read_violations(&history(), &[read(140, 100, Some(1))]);
        assert_eq!(v.len(), 1);
        assert!(v[0].problem.contains("2 was acknowledged before the bound"), "{}", v[0]);
        let v = stale_read_violations(&history(), &[read(140, 100, None)]);
        assert!(v[0].problem.contains("found nothing"), "{}", v[0]);
    }

    #[test]
    fn a_value_from_the_future_is_caught() {
        // Value 4 is first written at 500 ms; a read over by 135 ms cannot see it.
        let v = stale_read_violations(&history(), &[read(130, 100, Some(4))]);
        assert!(v[0].problem.contains("no write had begun"), "{}", v[0]);
        // A value nobody ever wrote.
        let v = stale_read_violations(&history(), &[read(600, 100, Some(9))]);
        assert_eq!(v.len(), 1);
    }

    #[test]
    fn an_unknown_write_never_raises_the_floor() {
        // Value 3 may never have applied: seeing 2 long after is fine, until 4 is acknowledged.
        assert!(stale_read_violations(&history(), &[read(400, 100, Some(2))]).is_empty());
        assert_eq!(stale_read_violations(&history(), &[read(700, 100, Some(2))]).len(), 1);
    }
}
