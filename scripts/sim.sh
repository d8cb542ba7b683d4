#!/usr/bin/env bash
# Deterministic simulation of whole clusters in one process (see src/sim/).
#
#   scripts/sim.sh                    the fixed seeds the test suite runs
#   scripts/sim.sh --seed N           replay seed N exactly and print its report
#   scripts/sim.sh --soak K [--from S]
#                                     run K seeds from S (default: a random start,
#                                     printed first so the run can be repeated)
#
# Each seed simulates 20 s of faults plus up to 30 s of healing; a failure
# prints the seed and the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"

case "${1:-}" in
  --seed)
    export CAIRN_SIM_SEED="${2:?--seed needs a number}"
    ;;
  --soak)
    export CAIRN_SIM_SEEDS="${2:?--soak needs a count}"
    if [ "${3:-}" = "--from" ]; then
      export CAIRN_SIM_FIRST_SEED="${4:?--from needs a number}"
    else
      export CAIRN_SIM_FIRST_SEED="$(( (RANDOM << 15 | RANDOM) ))"
    fi
    echo "soak: $CAIRN_SIM_SEEDS seeds from $CAIRN_SIM_FIRST_SEED"
    ;;
  "") ;;
  *)
    echo "usage: scripts/sim.sh [--seed N | --soak K [--from S]]" >&2
    exit 2
    ;;
esac
exec cargo test --test simulation simulated_clusters_stay_correct_under_faults -- --nocapture
