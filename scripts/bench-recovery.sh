#!/usr/bin/env bash
# bench-recovery.sh: self-healing, measured. How long a 4-node Cairn cluster
# takes to restore full replication after losing a node that holds about N GiB,
# what the client throughput does meanwhile, and how many bytes move when a new
# node then joins, against the ideal.
#
# Usage: scripts/bench-recovery.sh [GIB] [DEAD_AFTER_SECS]   (defaults: 1 GiB, 15 s)
#
# Builds cairn and cairn-bench in release mode and starts four `cairn server`
# processes on ephemeral ports, each with its own data directory under one
# temporary directory. Loads GIB GiB of 16 KiB values (replicated 3 times, so
# each node holds about 3/4 of it) and waits for the controller to settle.
# Then a steady 95/5 read/write load of 256 B values (16 clients, through nodes
# 1-3) runs in 5-second windows while node 4 is killed with SIGKILL: the
# controller declares it dead after DEAD_AFTER_SECS and re-creates each of its
# replicas on the other nodes from snapshots. Reports the time from the kill
# until every range has 3 voters on live nodes, each window's throughput
# against the median of the windows before the kill, and the bytes the nodes
# received in snapshots. Then a fifth node joins and the controller rebalances:
# reports the snapshot bytes received against the ideal (the joiner's fair share
# of all replica bytes). Everything started here is stopped by PID.
set -euo pipefail

GIB=${1:-1}
DEAD_AFTER=${2:-15}
VALUE=16384
WINDOW_S=5
SETTLE_TIMEOUT_S=600

die() { echo "bench-recovery: $*" >&2; exit 1; }
case "$GIB$DEAD_AFTER" in
    *[!0-9]*) die "GIB and DEAD_AFTER_SECS must be whole numbers" ;;
esac
[ "$GIB" -gt 0 ] || die "GIB must be positive"
command -v python3 >/dev/null || die "needs python3 (to read cluster status JSON)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CAIRN="$TARGET_DIR/release/cairn"
BENCH="$TARGET_DIR/release/cairn-bench"
WORK=$(mktemp -d -t cairn-recovery.XXXXXX)
declare -A PIDS=()
LOAD_PID=""

cleanup() {
    local status=$?
    set +e
    [ -n "$LOAD_PID" ] && kill -TERM "$LOAD_PID" 2>/dev/null && wait "$LOAD_PID" 2>/dev/null
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -p cairn -p cairn-bench)

# start_node N [JOIN_ADDR]: starts node N and waits for its endpoints file.
start_node() {
    local n=$1 join=${2:-}
    mkdir -p "$WORK/n$n"
    local args=(server --data-dir "$WORK/n$n" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0
        --redis-listen "" --dead-after-secs "$DEAD_AFTER")
    [ -n "$join" ] && args+=(--join "$join")
    "$CAIRN" "${args[@]}" >"$WORK/n$n.log" 2>&1 </dev/null &
    PIDS[$n]=$!
    local deadline=$((SECONDS + 120))
    until [ -s "$WORK/n$n/node.json" ]; do
        kill -0 "${PIDS[$n]}" 2>/dev/null || { tail -20 "$WORK/n$n.log" >&2; die "node $n exited"; }
        [ "$SECONDS" -lt "$deadline" ] || die "node $n did not come up"
        sleep 0.2
    done
}
endpoint() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/n$1/node.json" "$2"; }

status_json() { "$CAIRN" --addr "$(endpoint 1 grpc)" --json cluster status 2>/dev/null; }

# settled MODE [LOST_ID]: every range has 3 voters on live nodes, none on node
# LOST_ID (a killed node still counts as live until it misses its heartbeats),
# and in MODE quiet nothing is in progress. Prints "yes" or what is missing.
settled() {
    status_json | python3 -c '
import json, sys
s = json.load(sys.stdin)
lost = int(sys.argv[2])
live = {n["id"] for n in s["nodes"] if n["state"] == "live" and n["id"] != lost}
for r in s["ranges"]:
    voters = [x["node_id"] for x in r["replicas"] if not x["learner"]]
    if len(voters) != 3 or len(voters) != len(r["replicas"]) or not set(voters) <= live or r["leader_node_id"] is None:
        print("range %d: replicas %s" % (r["id"], r["replicas"])); sys.exit()
if sys.argv[1] == "quiet" and s["progress"]:
    print("in progress: %s" % [(p["kind"], p["remaining"]) for p in s["progress"]]); sys.exit()
print("yes")' "$1" "${2:-0}"
}

wait_settled() {
    local mode=$1 lost=${2:-0} deadline=$((SECONDS + SETTLE_TIMEOUT_S)) last=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        last=$(settled "$mode" "$lost" || echo "no status")
        [ "$last" = yes ] && return 0
        sleep 1
    done
    die "not settled after ${SETTLE_TIMEOUT_S}s: $last"
}

# Snapshot bytes nodes N... have received so far, summed (from their /metrics).
snapshot_bytes() {
    local total=0 n v
    for n in "$@"; do
        v=$(curl -s "http://$(endpoint "$n" http)/metrics" | awk '/^cairn_snapshot_bytes_received_total/ { print $2 }')
        total=$(python3 -c "print(int($total + float('${v:-0}')))")
    done
    echo "$total"
}

# Bytes of every range's data times its replicas: what the nodes hold, without logs and overhead.
replica_bytes() { status_json | python3 -c 'import json,sys; print(sum(r["approximate_bytes"] * len(r["replicas"]) for r in json.load(sys.stdin)["ranges"]))'; }
# Range data held by node N: the ranges it has a replica of.
node_data() { status_json | python3 -c 'import json,sys; print(sum(r["approximate_bytes"] for r in json.load(sys.stdin)["ranges"] if any(x["node_id"] == int(sys.argv[1]) for x in r["replicas"])))' "$1"; }
node_bytes() { status_json | python3 -c 'import json,sys; print([n["used_bytes"] for n in json.load(sys.stdin)["nodes"] if n["id"] == int(sys.argv[1])][0])' "$1"; }

echo "== starting 4 nodes" >&2
start_node 1
for n in 2 3 4; do start_node "$n" "$(endpoint 1 grpc)"; done
ALL="$(endpoint 1 grpc),$(endpoint 2 grpc),$(endpoint 3 grpc),$(endpoint 4 grpc)"
SURVIVORS="$(endpoint 1 grpc),$(endpoint 2 grpc),$(endpoint 3 grpc)"

RECORDS=$((GIB * (1 << 30) / VALUE))
echo "== loading $GIB GiB: $RECORDS records of $VALUE B" >&2
"$BENCH" --target cairn --endpoints "$ALL" --table bulk --ranges 8 --keys "$RECORDS" --value-size "$VALUE" \
    --workload read --duration 1 --preload-clients 32 --preload-timeout 3600 >"$WORK/load.txt"
echo "== waiting for the controller to settle" >&2
wait_settled quiet
VICTIM_ID=$(endpoint 4 node_id)
VICTIM_BYTES=$(node_bytes "$VICTIM_ID")
VICTIM_DATA=$(node_data "$VICTIM_ID")

WINDOWS=$(( (DEAD_AFTER + 90) / WINDOW_S + 4 ))
workloads=$(printf 'mixed95,%.0s' $(seq "$WINDOWS")); workloads=${workloads%,}
echo "== steady load in ${WINDOW_S}s windows; node $VICTIM_ID ($(( VICTIM_DATA >> 20 )) MiB of range data) dies after 3" >&2
"$BENCH" --target cairn --endpoints "$SURVIVORS" --clients 16 --workload "$workloads" --duration "$WINDOW_S" \
    --json >"$WORK/windows.json" 2>/dev/null &
LOAD_PID=$!
# Three windows of steady state first (the load generator writes one JSON line per window).
until [ "$(grep -c '^{' "$WORK/windows.json" || true)" -ge 3 ]; do
    kill -0 "$LOAD_PID" 2>/dev/null || die "the load generator stopped early"
    sleep 0.5
done
BYTES_BEFORE=$(snapshot_bytes 1 2 3)
KILL_AT=$(now)
kill -KILL "${PIDS[4]}"
wait "${PIDS[4]}" 2>/dev/null || true
unset 'PIDS[4]'
wait_settled replicas "$VICTIM_ID"
RESTORED_AT=$(now)
BYTES_RESTORE=$(( $(snapshot_bytes 1 2 3) - BYTES_BEFORE ))
wait "$LOAD_PID" || die "the load generator failed"
LOAD_PID=""
LOAD_END=$(now)

python3 - "$WORK/windows.json" "$LOAD_END" "$KILL_AT" "$RESTORED_AT" "$VICTIM_BYTES" "$BYTES_RESTORE" "$DEAD_AFTER" "$VICTIM_DATA" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
end, kill, restored = map(float, sys.argv[2:5])
victim_bytes, moved, dead_after, victim_data = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
# Windows run back to back: their start times, counted back from the generator's exit.
t = end - sum(r["duration_s"] for r in runs)
before, during = [], []
print("window   ops/s   p99 ms  errors")
for r in runs:
    end = t + r["duration_s"]
    phase = "before" if end <= kill else ("during" if t < restored else "after")
    (before if phase == "before" else during if phase == "during" else []).append(r["ops_per_sec"])
    print("%5.0fs %8.0f %8.2f %7d  %s" % (t - kill, r["ops_per_sec"], r["p99_ms"] or 0, r["errors"], phase))
    t = end
steady = statistics.median(before) if before else float("nan")
print("node lost: %.0f MiB on disk, %.0f MiB of range data; full replication restored %.1f s after the kill (%d s of it dead_after)"
      % (victim_bytes / 2**20, victim_data / 2**20, restored - kill, dead_after))
print("snapshot bytes received while restoring: %.0f MiB (%.2fx the lost node's range data)"
      % (moved / 2**20, moved / max(victim_data, 1)))
if during:
    print("throughput while restoring: lowest window %.0f%% of steady (%.0f ops/s), mean %.0f%%"
          % (100 * min(during) / steady, steady, 100 * statistics.mean(during) / steady))
EOF

echo "== a fifth node joins" >&2
BYTES_BEFORE=$(snapshot_bytes 1 2 3)
start_node 5 "$(endpoint 1 grpc)"
sleep 5
wait_settled quiet "$VICTIM_ID"
MOVED=$(( $(snapshot_bytes 1 2 3 5) - BYTES_BEFORE ))
TOTAL=$(replica_bytes)
python3 -c '
import sys
moved, total = map(int, sys.argv[1:3])
ideal = total / 4
print("join: %.0f MiB received in snapshots; the ideal is the joiner'"'"'s share, %.0f MiB (1/4 of %.0f MiB of replica data on the 4 live nodes): %.2fx"
      % (moved / 2**20, ideal / 2**20, total / 2**20, moved / ideal))' "$MOVED" "$TOTAL"
