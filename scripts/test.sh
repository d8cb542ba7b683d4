#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and the process-level cluster tests
# (real `cairn server` processes on loopback, real disks).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
cargo test --workspace --all-targets
