#!/usr/bin/env bash
# bench-hot-key.sh: reads of one hot key on a 3-node Cairn cluster, linearizable
# against follower (bounded-staleness) reads, in one sitting.
#
# Usage: scripts/bench-hot-key.sh [SECS] [ROUNDS]   (defaults: 10 s per run, 3 rounds)
#
# Builds cairn and cairn-bench in release mode, starts a 3-node demo cluster on
# ephemeral ports with data in a temporary directory, writes one record, then
# runs ROUNDS rounds of: 64 clients spread over the 3 nodes reading that one
# record linearizably (every read confirmed by the range's leader: ReadIndex),
# then the same with --stale-reads (any replica that can show it is within 10 s
# of the latest write serves it on its own). Prints each run and the medians,
# with the servers' CPU time per read. Everything started here is stopped by PID.
set -euo pipefail

SECS=${1:-10}
ROUNDS=${2:-3}
CLIENTS=64
CAIRN_START_TIMEOUT_S=180

die() { echo "bench-hot-key: $*" >&2; exit 1; }
case "$SECS$ROUNDS" in
    *[!0-9]*) die "SECS and ROUNDS must be whole numbers" ;;
esac
[ "$SECS" -gt 0 ] && [ "$ROUNDS" -gt 0 ] || die "SECS and ROUNDS must be positive"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CAIRN="$TARGET_DIR/release/cairn"
BENCH="$TARGET_DIR/release/cairn-bench"
WORK=$(mktemp -d -t cairn-hot-key.XXXXXX)
CAIRN_PID=""
BENCH_PID=""

cleanup() {
    local status=$?
    set +e
    [ -n "$BENCH_PID" ] && kill -TERM "$BENCH_PID" 2>/dev/null && wait "$BENCH_PID" 2>/dev/null
    if [ -n "$CAIRN_PID" ] && kill -0 "$CAIRN_PID" 2>/dev/null; then
        kill -TERM "$CAIRN_PID"
        local deadline=$((SECONDS + 30))
        while kill -0 "$CAIRN_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        kill -0 "$CAIRN_PID" 2>/dev/null && kill -KILL "$CAIRN_PID"
        wait "$CAIRN_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -p cairn -p cairn-bench)

echo "== starting the Cairn demo cluster" >&2
mkdir -p "$WORK/cairn"
"$CAIRN" demo --base-port 0 --data-dir "$WORK/cairn" --endpoints-file "$WORK/cairn/endpoints" \
    >"$WORK/cairn.log" 2>&1 </dev/null &
CAIRN_PID=$!
deadline=$((SECONDS + CAIRN_START_TIMEOUT_S))
until [ -s "$WORK/cairn/endpoints" ]; do
    kill -0 "$CAIRN_PID" 2>/dev/null || die "cairn demo exited before serving"
    [ "$SECONDS" -lt "$deadline" ] || die "cairn demo not serving after ${CAIRN_START_TIMEOUT_S}s"
    sleep 0.5
done
sleep 0.5
ENDPOINTS=$(tr -d '[:space:]' <"$WORK/cairn/endpoints")
PIDS=$(pgrep -P "$CAIRN_PID" | paste -sd, -)
[ -n "$PIDS" ] || die "no node processes under the cairn demo (PID $CAIRN_PID)"

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
run() {
    "$BENCH" --target cairn --endpoints "$ENDPOINTS" --workload read --keys 1 --table hot \
        --clients "$CLIENTS" --duration "$SECS" --warmup 2 --server-pids "$PIDS" --json "$@" >>"$RESULTS" &
    BENCH_PID=$!
    wait "$BENCH_PID"
    BENCH_PID=""
}
for round in $(seq "$ROUNDS"); do
    echo "== round $round: linearizable, then stale reads of one key" >&2
    run
    run --stale-reads
done
cat "$RESULTS"
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(stale, field):
    xs = [r[field] for r in runs if r.get("stale_reads") == stale and r.get(field) is not None]
    return statistics.median(xs) if xs else None
print(f"{'reads of one key':<18} {'ops/s':>10} {'p99 ms':>8} {'server cpu us/read':>19}")
for name, stale in (("linearizable", False), ("stale (follower)", True)):
    print(f"{name:<18} {med(stale, 'ops_per_sec'):>10.0f} {med(stale, 'p99_ms'):>8.2f} "
          f"{med(stale, 'server_cpu_us_per_op'):>19.1f}")
lin, st = med(False, "ops_per_sec"), med(True, "ops_per_sec")
print(f"follower reads / linearizable reads: {st / lin:.2f}x ops/s (medians of {len(runs) // 2} rounds)")
PY
