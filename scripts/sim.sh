#!/usr/bin/env bash
# Deterministic simulation in one process, from a seed.
#
#   scripts/sim.sh [--cluster | --elastic | --merges]
#                                                 the fixed seeds the test suite runs
#   scripts/sim.sh [--cluster] --seed N           replay seed N exactly and print its report
#   scripts/sim.sh [--cluster] --soak K [--from S]
#                                                 run K seeds from S (default: a random
#                                                 start, printed first so the run can be repeated)
#
# Without --cluster: the store loops of 3 or 5 nodes (src/sim/), checked after
# every simulated millisecond; 20 s of faults plus up to 30 s of healing per seed.
# With --cluster: whole nodes (gRPC API, gateway, meta range, controller, gRPC
# Raft transport, store loop) on a simulated network and clock
# (tests/cluster_sim/); 20 s of faults, then healing and read-back.
# With --elastic: whole nodes again, four of them, with a fifth joining, one dying
# for good and one decommissioned under the faults.
# With --merges: the store loops again, with range merges among the changes.
# A failure prints the seed and the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"

prefix=CAIRN_SIM
test_target=(--test simulation simulated_clusters_stay_correct_under_faults)
if [ "${1:-}" = "--cluster" ]; then
  prefix=CAIRN_CLUSTER_SIM
  test_target=(--test cluster_simulation simulated_nodes_stay_correct_under_faults)
  shift
elif [ "${1:-}" = "--elastic" ]; then
  prefix=CAIRN_CLUSTER_SIM_ELASTIC
  test_target=(--test cluster_simulation simulated_nodes_join_die_and_leave)
  shift
elif [ "${1:-}" = "--merges" ]; then
  prefix=CAIRN_SIM_MERGE
  test_target=(--test simulation simulated_merges_stay_correct_under_faults)
  shift
fi

case "${1:-}" in
  --seed)
    export "${prefix}_SEED=${2:?--seed needs a number}"
    ;;
  --soak)
    count="${2:?--soak needs a count}"
    if [ "${3:-}" = "--from" ]; then
      first="${4:?--from needs a number}"
    else
      first="$(( (RANDOM << 15 | RANDOM) ))"
    fi
    export "${prefix}_SEEDS=$count" "${prefix}_FIRST_SEED=$first"
    echo "soak: $count seeds from $first"
    ;;
  "") ;;
  *)
    echo "usage: scripts/sim.sh [--cluster | --elastic | --merges] [--seed N | --soak K [--from S]]" >&2
    exit 2
    ;;
esac
exec cargo test "${test_target[@]}" -- --nocapture
