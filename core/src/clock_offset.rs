//! Whether this node's clock agrees with its peers'. Each node probes its
//! peers' clocks; a probe bounds the peer's offset by its round trip. A node
//! whose clock is beyond the maximum offset from a majority of the peers it
//! measured stops serving (as CockroachDB's nodes do), because every version it
//! would stamp, and every dedupe and GC decision that follows from them, would
//! be off by that much. Pure: the server does the probing.

use std::collections::BTreeMap;

/// One probe of a peer's clock: the peer's time minus ours, within ±`uncertainty_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measurement {
    pub offset_ns: i64,
    pub uncertainty_ns: u64,
    /// When it was taken, by this node's monotonic clock (milliseconds).
    pub at_ms: u64,
}

/// The measurement of a probe sent at `sent_ns` and answered at `received_ns`
/// (this node's clock) with the peer's time `remote_ns`: the peer read its
/// clock somewhere in between, so its offset is `remote - midpoint`, give or
/// take half the round trip. `None` if the round trip makes no sense.
pub fn measure(sent_ns: u64, remote_ns: u64, received_ns: u64, at_ms: u64) -> Option<Measurement> {
    let rtt = received_ns.checked_sub(sent_ns)?;
    let midpoint = sent_ns + rtt / 2;
    let offset_ns = i64::try_from(remote_ns as i128 - midpoint as i128).ok()?;
    Some(Measurement { offset_ns, uncertainty_ns: rtt / 2, at_ms })
}

/// What this node concludes about its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the maximum offset of a majority of the peers it measured (or it
    /// measured none: a lone node has nobody to disagree with).
    Trusted,
    /// Beyond it from `far` of `measured` peers; `median_offset_ms` is the
    /// median of their clocks minus ours (negative: this node is ahead).
    Untrusted { far: usize, measured: usize, median_offset_ms: i64 },
}

/// The latest measurement of each peer.
#[derive(Debug, Default)]
pub struct OffsetTable {
    latest: BTreeMap<u64, Measurement>,
}

impl OffsetTable {
    pub fn record(&mut self, peer: u64, m: Measurement) {
        self.latest.insert(peer, m);
    }

    /// Judges this node's clock from measurements at most `max_age_ms` old. A
    /// peer counts as far only when it is beyond `max_offset_ns` even allowing
    /// for the probe's uncertainty; probes too slow to tell (uncertainty above
    /// half the maximum offset) are left out. Untrusted takes a strict majority
    /// of the peers measured: with three nodes, the one whose clock jumped sees
    /// both others far, while each of them sees one far and one near.
    pub fn verdict(&self, now_ms: u64, max_age_ms: u64, max_offset_ns: u64) -> Verdict {
        let fresh: Vec<&Measurement> = self
            .latest
            .values()
            .filter(|m| now_ms.saturating_sub(m.at_ms) <= max_age_ms && m.uncertainty_ns <= max_offset_ns / 2)
            .collect();
        let far = fresh.iter().filter(|m| m.offset_ns.unsigned_abs() > max_offset_ns + m.uncertainty_ns).count();
        if fresh.is_empty() || far * 2 <= fresh.len() {
            return Verdict::Trusted;
        }
        let mut offsets: Vec<i64> = fresh.iter().map(|m| m.offset_ns).collect();
        offsets.sort_unstable();
        let median_offset_ms = offsets[offsets.len() / 2] / 1_000_000;
        Verdict::Untrusted { far, measured: fresh.len(), median_offset_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_probe_bounds_the_offset_by_half_its_round_trip() {
        let m = measure(1_000 * MS, 3_004 * MS, 1_008 * MS, 7).unwrap();
        assert_eq!((m.offset_ns, m.uncertainty_ns), (2_000 * MS as i64, 4 * MS));
        assert_eq!(measure(1_000, 5, 999, 7), None, "received before sent");
        let behind = measure(10_000 * MS, 9_000 * MS, 10_002 * MS, 7).unwrap();
        assert_eq!(behind.offset_ns, -1_001 * MS as i64);
    }

    fn table(offsets_ms: &[i64]) -> OffsetTable {
        let mut t = OffsetTable::default();
        for (peer, off) in offsets_ms.iter().enumerate() {
            t.record(peer as u64 + 2, Measurement { offset_ns: off * MS as i64, uncertainty_ns: MS, at_ms: 1_000 });
        }
        t
    }

    #[test]
    fn only_a_majority_of_far_peers_condemns_the_clock() {
        let max = 500 * MS;
        assert_eq!(table(&[]).verdict(1_000, 10_000, max), Verdict::Trusted, "nobody to disagree with");
        assert_eq!(table(&[3, -40]).verdict(1_000, 10_000, max), Verdict::Trusted);
        // This node jumped 3 s ahead: both peers are 3 s behind it.
        let ahead = table(&[-3_000, -3_002]).verdict(1_000, 10_000, max);
        assert_eq!(ahead, Verdict::Untrusted { far: 2, measured: 2, median_offset_ms: -3_000 });
        // A peer's clock jumped: one far, one near, so this node still trusts its own.
        assert_eq!(table(&[3_000, 2]).verdict(1_000, 10_000, max), Verdict::Trusted);
        let far = Verdict::Untrusted { far: 2, measured: 3, median_offset_ms: 800 };
        assert_eq!(table(&[900, 800, 0]).verdict(1_000, 10_000, max), far);
    }

    #[test]
    fn uncertain_or_old_probes_do_not_count() {
        let max = 500 * MS;
        let mut t = OffsetTable::default();
        t.record(2, Measurement { offset_ns: 600 * MS as i64, uncertainty_ns: 200 * MS, at_ms: 1_000 });
        assert_eq!(t.verdict(1_000, 10_000, max), Verdict::Trusted, "600 ± 200 ms may be within 500 ms");
        t.record(2, Measurement { offset_ns: 900 * MS as i64, uncertainty_ns: 300 * MS, at_ms: 1_000 });
        assert_eq!(t.verdict(1_000, 10_000, max), Verdict::Trusted, "a probe too slow to tell");
        t.record(2, Measurement { offset_ns: 900 * MS as i64, uncertainty_ns: MS, at_ms: 1_000 });
        assert!(matches!(t.verdict(1_000, 10_000, max), Verdict::Untrusted { .. }));
        assert_eq!(t.verdict(20_000, 10_000, max), Verdict::Trusted, "stale measurements expire");
    }
}
