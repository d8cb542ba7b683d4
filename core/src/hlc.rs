//! Hybrid logical clock and the `Version` stamps it issues.
//!
//! A version is (physical nanoseconds, logical counter, node id). The clock never
//! goes backwards, even if the wall clock does, and it is pushed forward by every
//! version the node observes, so versions issued after a leader change are above
//! the ones the previous leader issued (the apply path also enforces this per range).
//!
//! How far a remote timestamp may push it is bounded: a version more than the
//! maximum clock offset ahead of this node's own physical time is not adopted
//! (CockroachDB's rule), so one node with a clock far in the future cannot drag
//! every other node's versions there. Versions of one range still grow: apply
//! stamps each command above the range's last version whatever the clock says.

use cairn_proto::kv;
use parking_lot::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A hybrid-logical-clock stamp, totally ordered by (wall_ns, logical, node_id).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub wall_ns: u64,
    pub logical: u32,
    pub node_id: u32,
}

impl Version {
    pub const ZERO: Version = Version { wall_ns: 0, logical: 0, node_id: 0 };
    pub const MAX: Version = Version { wall_ns: u64::MAX, logical: u32::MAX, node_id: u32::MAX };

    /// The smallest version strictly greater than `self`.
    pub fn next(self) -> Version {
        match self.logical.checked_add(1) {
            Some(l) => Version { wall_ns: self.wall_ns, logical: l, node_id: self.node_id },
            None => Version { wall_ns: self.wall_ns.saturating_add(1), logical: 0, node_id: self.node_id },
        }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.wall_ns.to_be_bytes());
        b[8..12].copy_from_slice(&self.logical.to_be_bytes());
        b[12..].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Version> {
        if b.len() != 16 {
            return None;
        }
        Some(Version {
            wall_ns: u64::from_be_bytes(b[..8].try_into().ok()?),
            logical: u32::from_be_bytes(b[8..12].try_into().ok()?),
            node_id: u32::from_be_bytes(b[12..].try_into().ok()?),
        })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.wall_ns, self.logical, self.node_id)
    }
}

impl From<Version> for kv::Version {
    fn from(v: Version) -> Self {
        kv::Version { wall_ns: v.wall_ns, logical: v.logical, node_id: v.node_id }
    }
}

impl From<&kv::Version> for Version {
    fn from(v: &kv::Version) -> Self {
        Version { wall_ns: v.wall_ns, logical: v.logical, node_id: v.node_id }
    }
}

/// Where a clock reads physical time from: the wall clock, or the simulator's.
pub type PhysicalClock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// How far ahead of this node's physical time a remote timestamp may move its
/// clock, unless configured otherwise.
pub const DEFAULT_MAX_OFFSET_NS: u64 = 500_000_000;

/// The node's clock.
pub struct Hlc {
    node_id: u32,
    last: Mutex<Version>,
    physical_ns: Option<PhysicalClock>,
    max_offset_ns: u64,
    /// How far (ms, peers' clocks minus ours) this clock is found to be from a
    /// majority of its peers', when beyond the maximum offset; `UNTRUSTED_NONE`
    /// while it agrees with them (`clock_offset`).
    untrusted_offset_ms: std::sync::atomic::AtomicI64,
}

const UNTRUSTED_NONE: i64 = i64::MIN;

/// A remote timestamp the clock refused to adopt: it was this far ahead of the
/// node's own physical time (more than the maximum offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooFarAhead {
    pub ahead_ns: u64,
}

/// Where this process reads wall time from when not the system clock: set once,
/// by a simulation that runs whole nodes on simulated time, so that versions,
/// liveness stamps and TTLs follow that time.
static WALL_CLOCK_NS: std::sync::OnceLock<fn() -> u64> = std::sync::OnceLock::new();

/// Makes `wall_now_ns` read `clock` for the rest of the process. Only the first call counts.
pub fn set_wall_clock(clock: fn() -> u64) {
    let _ = WALL_CLOCK_NS.set(clock);
}

// The one place the real wall clock is read; simulations replace it with `set_wall_clock`.
#[allow(clippy::disallowed_methods)]
pub fn wall_now_ns() -> u64 {
    if let Some(clock) = WALL_CLOCK_NS.get() {
        return clock();
    }
    let real = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    real.saturating_add_signed(crate::clock_fault::offset_ns())
}

pub fn wall_now_ms() -> u64 {
    wall_now_ns() / 1_000_000
}

impl Hlc {
    pub fn new(node_id: u32) -> Self {
        Hlc {
            node_id,
            last: Mutex::new(Version::ZERO),
            physical_ns: None,
            max_offset_ns: DEFAULT_MAX_OFFSET_NS,
            untrusted_offset_ms: std::sync::atomic::AtomicI64::new(UNTRUSTED_NONE),
        }
    }

    /// A clock whose physical part comes from `physical_ns` (the simulator's time),
    /// so versions are reproducible.
    pub fn with_physical_clock(node_id: u32, physical_ns: PhysicalClock) -> Self {
        Hlc {
            node_id,
            last: Mutex::new(Version::ZERO),
            physical_ns: Some(physical_ns),
            max_offset_ns: DEFAULT_MAX_OFFSET_NS,
            untrusted_offset_ms: std::sync::atomic::AtomicI64::new(UNTRUSTED_NONE),
        }
    }

    /// The same clock with another bound on how far a remote timestamp may move it.
    pub fn with_max_offset_ns(mut self, max_offset_ns: u64) -> Self {
        self.max_offset_ns = max_offset_ns;
        self
    }

    /// This node's physical time (ns): what its peers compare their clocks with.
    pub fn physical_now(&self) -> u64 {
        self.physical_ns.as_ref().map_or_else(wall_now_ns, |f| f())
    }

    /// The maximum offset this clock tolerates between nodes.
    pub fn max_offset_ns(&self) -> u64 {
        self.max_offset_ns
    }

    /// Records whether peers' clocks agree with this one: `Some(offset_ms)` (their
    /// clocks minus ours) when a majority of them is beyond the maximum offset.
    pub fn set_untrusted(&self, offset_ms: Option<i64>) {
        let v = offset_ms.map_or(UNTRUSTED_NONE, |o| o.max(UNTRUSTED_NONE + 1));
        self.untrusted_offset_ms.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// `Some(offset_ms)` while this clock is too far from its peers' to be used:
    /// the node then serves nothing that stamps a version.
    pub fn untrusted_offset_ms(&self) -> Option<i64> {
        let v = self.untrusted_offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        (v != UNTRUSTED_NONE).then_some(v)
    }

    /// A fresh version, above every version issued or observed so far.
    pub fn now(&self) -> Version {
        let wall = self.physical_now();
        let mut last = self.last.lock();
        let v = if wall > last.wall_ns {
            Version { wall_ns: wall, logical: 0, node_id: self.node_id }
        } else {
            let n = last.next();
            Version { node_id: self.node_id, ..n }
        };
        *last = v;
        v
    }

    /// Moves the clock past a version seen elsewhere (applied entries, peers),
    /// unless it is more than the maximum offset ahead of this node's physical time.
    pub fn observe(&self, v: Version) -> Result<(), TooFarAhead> {
        let limit = self.physical_now().saturating_add(self.max_offset_ns);
        if v.wall_ns > limit {
            return Err(TooFarAhead { ahead_ns: v.wall_ns - limit + self.max_offset_ns });
        }
        let mut last = self.last.lock();
        if v > *last {
            *last = v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards_and_observes() {
        let c = Hlc::new(3);
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        let near = Version { wall_ns: a.wall_ns + 300_000_000, logical: 7, node_id: 9 };
        assert_eq!(c.observe(near), Ok(()));
        let d = c.now();
        assert!(d > near, "a timestamp within the maximum offset is adopted");
        assert_eq!(d.node_id, 3);
        assert_eq!(Version::from_bytes(&d.to_bytes()), Some(d));
    }

    /// One node's clock an hour ahead must not drag this node's versions an hour ahead.
    #[test]
    fn a_timestamp_beyond_the_maximum_offset_is_not_adopted() {
        let now = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1_000_000_000_000));
        let physical = now.clone();
        let c = Hlc::with_physical_clock(
            1,
            std::sync::Arc::new(move || physical.load(std::sync::atomic::Ordering::SeqCst)),
        )
        .with_max_offset_ns(500_000_000);
        let base = c.now();
        let hour_ahead = Version { wall_ns: base.wall_ns + 3_600_000_000_000, logical: 0, node_id: 2 };
        let refused = c.observe(hour_ahead).unwrap_err();
        assert!(refused.ahead_ns >= 3_599_000_000_000, "{refused:?}");
        assert!(c.now().wall_ns < base.wall_ns + 1_000_000_000, "the clock stayed near physical time");
        // Once physical time catches up, the same timestamp is within the bound.
        now.store(base.wall_ns + 3_600_000_000_000, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(c.observe(hour_ahead), Ok(()));
    }
}
