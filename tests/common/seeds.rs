//! Which seeds a simulation test runs, from the environment: `<PREFIX>_SEED=N`
//! runs only N (what a failure tells you to run), `<PREFIX>_SEEDS=K` runs K seeds
//! from `<PREFIX>_FIRST_SEED` (default 1000, the soak), and otherwise the fixed
//! CI seeds. Shared by both simulators' tests.

pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

pub fn from_env(prefix: &str, ci_seeds: &[u64]) -> Vec<u64> {
    if let Some(seed) = env_u64(&format!("{prefix}_SEED")) {
        return vec![seed];
    }
    if let Some(count) = env_u64(&format!("{prefix}_SEEDS")) {
        let first = env_u64(&format!("{prefix}_FIRST_SEED")).unwrap_or(1000);
        return (first..first + count).collect();
    }
    ci_seeds.to_vec()
}
