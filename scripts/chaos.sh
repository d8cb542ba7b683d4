#!/usr/bin/env bash
# A long chaos run: real `cairn server` processes (3 by default), each in its own network
# namespace, under partitions, kills, pauses and packet loss (with splits and
# leader transfers on top) for SECS seconds, default 600. Then the history is
# checked (linearizability per key, lost acknowledged writes, counter bounds,
# duplicated retries) and a summary is printed: faults injected, operations
# checked, verdict. Needs root, iproute2 and nftables.
#
#   scripts/chaos.sh [SECS]                 # a fresh random seed
#   CAIRN_CHAOS_SEED=N scripts/chaos.sh     # the same nemesis schedule again
#   CAIRN_CHAOS_NODES=5 scripts/chaos.sh    # 5 nodes: replica moves go to other nodes
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
export CAIRN_CHAOS_SECS="${1:-600}"
exec cargo test --features fault-injection --test chaos -- --nocapture
