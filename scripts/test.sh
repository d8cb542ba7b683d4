#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the deterministic simulation's fixed
# seeds, the process-level cluster tests (real
# `cairn server` processes on loopback, real disks), a short chaos run (servers
# in network namespaces; needs root and nftables), and the sabotage proofs (the
# same checks against deliberately broken servers, built with the `fault-injection`
# feature), then a 20-second smoke of each fuzz target (needs cargo-fuzz and a
# nightly toolchain). Ends with one line totalling every test binary's results.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets 2>&1 | tee "$log" || status=$?
cargo test --features fault-injection --test chaos --test sabotage --test disk_faults --test clock_offset --test sim_sabotage --test cluster_sim_sabotage 2>&1 | tee -a "$log" || status=$?
scripts/fuzz.sh 20 2>&1 | tee -a "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "total: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
