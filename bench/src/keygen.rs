//! Key naming and key-choice distributions (uniform and YCSB scrambled zipfian).

use rand::Rng;

/// The key of record `i`, e.g. `user00000042`, as YCSB names its records.
pub fn key_name(i: u64) -> Vec<u8> {
    format!("user{i:08}").into_bytes()
}

/// Which record a request addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Every record is equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (theta 0.99): a few records take most requests.
    Zipfian,
}

impl Distribution {
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        }
    }
}

/// Picks record numbers in `[0, keys)`; cheap to copy into every client task.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipfian(ScrambledZipfian),
}

impl KeyChooser {
    pub fn new(distribution: Distribution, keys: u64) -> Self {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { keys },
            Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(keys)),
        }
    }

    pub fn next<R: Rng>(&self, rng: &mut R) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.random_range(0..*keys),
            KeyChooser::Zipfian(z) => z.next(rng),
        }
    }
}

/// YCSB's `ScrambledZipfianGenerator`, reimplemented to match its key popularity.
///
/// A zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases", SIGMOD 1994; theta = 0.99, YCSB's `ZIPFIAN_CONSTANT`) draws a rank
/// over a fixed universe of 10^10 items, whose zeta constant YCSB precomputes, and
/// the rank is then FNV-1a-hashed onto `[0, keys)`. The hash matters for a
/// range-sharded store: without it the hottest records would be `user00000000`,
/// `user00000001`, ... and all land in the first range, turning a popularity skew
/// into a single-range hotspot that YCSB's own workloads would not produce. Using
/// the fixed 10^10 universe (as YCSB does) also avoids an O(keys) zeta computation.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    keys: u64,
    items: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl ScrambledZipfian {
    const THETA: f64 = 0.99;
    /// YCSB `ScrambledZipfianGenerator.ITEM_COUNT`.
    const ITEM_COUNT: f64 = 10_000_000_000.0;
    /// YCSB `ScrambledZipfianGenerator.ZETAN`: zeta(ITEM_COUNT, 0.99).
    const ZETAN: f64 = 26.469_028_201_783_02;

    pub fn new(keys: u64) -> Self {
        let theta = Self::THETA;
        let items = Self::ITEM_COUNT;
        let zetan = Self::ZETAN;
        let zeta2theta = 1.0 + 0.5f64.powf(theta);
        let eta = (1.0 - (2.0 / items).powf(1.0 - theta)) / (1.0 - zeta2theta / zetan);
        ScrambledZipfian { keys: keys.max(1), items, theta, alpha: 1.0 / (1.0 - theta), zetan, eta }
    }

    /// A zipfian rank in `[0, ITEM_COUNT)`; rank 0 is the most popular.
    fn rank<R: Rng>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let r = self.items * (self.eta * u - self.eta + 1.0).powf(self.alpha);
        // Float rounding can land exactly on the upper bound.
        (r as u64).min(self.items as u64 - 1)
    }

    pub fn next<R: Rng>(&self, rng: &mut R) -> u64 {
        fnv1a64(self.rank(rng)) % self.keys
    }
}

/// FNV-1a over the 8 little-endian bytes of `v`, as YCSB's `Utils.fnvhash64`
/// (minus its `Math.abs`, which only exists because Java lacks unsigned longs).
fn fnv1a64(v: u64) -> u64 {
    const OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 1_099_511_628_211;
    v.to_le_bytes().iter().fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    #[test]
    fn key_names_sort_numerically() {
        assert_eq!(key_name(42), b"user00000042".to_vec());
        assert!(key_name(9) < key_name(10));
    }

    #[test]
    fn zipfian_stays_in_range_and_is_skewed() {
        let keys = 10_000;
        let z = ScrambledZipfian::new(keys);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u32; keys as usize];
        let draws = 200_000;
        for _ in 0..draws {
            let k = z.next(&mut rng);
            assert!(k < keys);
            counts[k as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // Uniform would put ~0.01% of draws on the top key and ~1% on the top 100;
        // theta 0.99 puts ~4% on the top key and ~20% on the top 100.
        assert!(counts[0] > draws / 50, "top key got {}", counts[0]);
        let top_100: u32 = counts[..100].iter().sum();
        assert!(top_100 > draws / 10, "top 100 keys got {top_100}");
    }

    #[test]
    fn uniform_stays_in_range() {
        let chooser = KeyChooser::new(Distribution::Uniform, 3);
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1000).all(|_| chooser.next(&mut rng) < 3));
    }
}
