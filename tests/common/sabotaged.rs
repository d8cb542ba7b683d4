//! Runs a test of this binary in a child process with `CAIRN_SABOTAGE` set
//! (a sabotage is chosen once per process), and collects the seeds it reports
//! as caught. Shared by the simulators' sabotage tests.

use std::process::Command;

/// Runs the ignored test `inner` of this test binary under `sabotage`, and
/// returns the lines it printed starting with `CAUGHT` (one per seed that
/// caught the sabotage), after printing them with a count out of `seeds`.
pub fn caught(inner: &str, sabotage: &str, seeds: usize) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["--ignored", "--exact", inner, "--nocapture", "--test-threads=1"])
        .env("CAIRN_SABOTAGE", sabotage)
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
