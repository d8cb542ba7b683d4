//! Load-based split points, after CockroachDB's load-based splitter: a
//! reservoir of sampled request keys, each counting the requests that fall to
//! its left and to its right. The sample whose two sides are closest to even
//! is the split point, provided it divides the load well enough; a range whose
//! load is one key (every candidate leaves nearly all of it on one side) has
//! no split point, and says so.

/// Candidate split keys kept.
pub const SAMPLES: usize = 20;
/// Requests a candidate must have seen before it can be chosen.
pub const MIN_COUNTED: u64 = 100;
/// The most uneven split accepted: |left - right| / (left + right).
pub const MAX_IMBALANCE: f64 = 0.25;

#[derive(Clone, Debug)]
struct Sample {
    key: Vec<u8>,
    /// Requests for keys below `key` (they would go to the left-hand range).
    left: u64,
    /// Requests for keys at or above `key`.
    right: u64,
    /// Of `right`, the requests for `key` itself.
    at: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SplitFinder {
    samples: Vec<Sample>,
    seen: u64,
}

/// What the finder concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Not enough requests counted yet.
    Undecided,
    /// Split at `key`: `left_share` of the counted requests fall below it.
    SplitAt { key: Vec<u8>, left_share: f64 },
    /// No key divides the load: the best candidate still leaves it uneven, and
    /// `key` alone carries `share` of it (a single hot key cannot be split).
    NoSplit { key: Vec<u8>, share: f64 },
}

impl SplitFinder {
    /// Counts one request for `key`; `random` (uniform) decides whether `key`
    /// becomes a candidate (reservoir sampling: every request equally likely).
    pub fn record(&mut self, key: &[u8], random: u64) {
        self.seen += 1;
        for s in &mut self.samples {
            if key < s.key.as_slice() {
                s.left += 1;
            } else {
                s.right += 1;
                if key == s.key.as_slice() {
                    s.at += 1;
                }
            }
        }
        let fresh = Sample { key: key.to_vec(), left: 0, right: 0, at: 0 };
        if self.samples.len() < SAMPLES {
            self.samples.push(fresh);
        } else {
            let slot = (random % self.seen) as usize;
            if slot < SAMPLES {
                self.samples[slot] = fresh;
            }
        }
    }

    /// Requests counted so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn verdict(&self) -> Verdict {
        let imbalance = |s: &Sample| {
            let (l, r) = (s.left as f64, s.right as f64);
            (l - r).abs() / (l + r)
        };
        let counted: Vec<&Sample> = self.samples.iter().filter(|s| s.left + s.right >= MIN_COUNTED).collect();
        let Some(best) = counted.iter().min_by(|a, b| imbalance(a).total_cmp(&imbalance(b))) else {
            return Verdict::Undecided;
        };
        let total = (best.left + best.right) as f64;
        if imbalance(best) <= MAX_IMBALANCE {
            return Verdict::SplitAt { key: best.key.clone(), left_share: best.left as f64 / total };
        }
        // The load sits on one side of every candidate: name the key carrying the most.
        let Some(hottest) = counted.iter().max_by_key(|s| s.at) else { return Verdict::Undecided };
        let share = hottest.at as f64 / (hottest.left + hottest.right) as f64;
        Verdict::NoSplit { key: hottest.key.clone(), share }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the tests replay.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn key(i: u64) -> Vec<u8> {
        format!("k{i:06}").into_bytes()
    }

    #[test]
    fn uniform_load_splits_near_the_middle() {
        let mut f = SplitFinder::default();
        let mut rng = Rng(7);
        for _ in 0..5000 {
            let k = key(rng.next() % 1000);
            f.record(&k, rng.next());
        }
        match f.verdict() {
            Verdict::SplitAt { left_share, key } => {
                assert!((0.375..=0.625).contains(&left_share), "{left_share} at {key:?}");
            }
            v => panic!("expected a split point, got {v:?}"),
        }
    }

    #[test]
    fn load_concentrated_in_a_span_splits_inside_that_span() {
        // 90% of requests go to keys 100..200 of 0..1000: the split lands among them.
        let mut f = SplitFinder::default();
        let mut rng = Rng(11);
        for _ in 0..5000 {
            let i = if rng.next() % 10 < 9 { 100 + rng.next() % 100 } else { rng.next() % 1000 };
            f.record(&key(i), rng.next());
        }
        match f.verdict() {
            Verdict::SplitAt { key: k, .. } => assert!(k > key(100) && k < key(200), "{k:?}"),
            v => panic!("expected a split point, got {v:?}"),
        }
    }

    #[test]
    fn one_hot_key_has_no_split_point_and_is_named() {
        let mut f = SplitFinder::default();
        let mut rng = Rng(3);
        for _ in 0..5000 {
            let i = if rng.next().is_multiple_of(20) { rng.next() % 1000 } else { 500 };
            f.record(&key(i), rng.next());
        }
        match f.verdict() {
            Verdict::NoSplit { key: k, share } => {
                assert_eq!(k, key(500));
                assert!(share > 0.8, "{share}");
            }
            v => panic!("a single hot key cannot be split, got {v:?}"),
        }
    }

    #[test]
    fn too_few_requests_decide_nothing() {
        let mut f = SplitFinder::default();
        for i in 0..50 {
            f.record(&key(i), i);
        }
        assert_eq!(f.verdict(), Verdict::Undecided);
    }
}
