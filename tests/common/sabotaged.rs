//! Runs a test of this binary in a child process with `CAIRN_SABOTAGE` set
//! (a sabotage is chosen once per process), and collects the seeds it reports
//! as caught. Shared by the simulators' sabotage tests.

use std::process::Command;

/// The inner test's body: runs seeds 1 to the count `caught` asked for under the
/// sabotage it set, printing one `CAUGHT` line per seed whose run reported a
/// problem (`run_seed` returns that problem, in a line or two).
pub fn report_seeds(run_seed: impl Fn(u64) -> Option<String>) {
    let sabotage = std::env::var("CAIRN_SABOTAGE").expect("started by `caught`");
    let seeds: u64 = std::env::var("CAIRN_SABOTAGE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    // The harness has printed "test <name> ... " without a newline: without this
    // one, the first seed's line would not start with `CAUGHT` and go uncounted.
    println!();
    for seed in 1..=seeds {
        match run_seed(seed) {
            None => println!("seed {seed}: not caught"),
            Some(problem) => println!("CAUGHT seed {seed} ({sabotage}): {problem}"),
        }
    }
}

/// Runs the ignored test `inner` of this test binary under `sabotage` on seeds
/// 1 to `seeds`, and returns the lines it printed starting with `CAUGHT` (one
/// per seed that caught the sabotage), after printing them with a count.
pub fn caught(inner: &str, sabotage: &str, seeds: u64) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["--ignored", "--exact", inner, "--nocapture", "--test-threads=1"])
        .env("CAIRN_SABOTAGE", sabotage)
        .env("CAIRN_SABOTAGE_SEEDS", seeds.to_string())
        .output()
        .expect("run the sabotaged seeds");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sabotaged run failed to run:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let problems: Vec<String> = text.lines().filter(|l| l.starts_with("CAUGHT")).map(str::to_string).collect();
    println!("{sabotage}: caught by {} of {seeds} seeds", problems.len());
    for p in &problems {
        println!("  {p}");
    }
    problems
}
