#!/usr/bin/env bash
# bench-vs-redis.sh: Cairn's Redis front end against a durable Redis, side by
# side in one sitting, with the stock redis-benchmark.
#
# Usage: scripts/bench-vs-redis.sh [REQUESTS]    (requests per test, default 200000)
#
# Starts a 3-node `cairn demo` cluster (every write fsynced on a majority before
# its reply) and one redis-server with appendonly yes and appendfsync always
# (every write fsynced before its reply, no replicas), both on free loopback
# ports with data in a temporary directory. Then runs, for each pipeline depth
# (-P 1 and -P 16), `redis-benchmark -t set,get,incr -c 50 -d 256 -r 10000`
# against Cairn (through node 1, which forwards to the range leaders) and right
# after against Redis. Prints requests/s, the Cairn/Redis ratio, and server CPU
# time per request (all of Cairn's node processes; Redis's one process).
# Everything started here is stopped by PID on exit.
set -euo pipefail

REQUESTS=${1:-200000}
CLIENTS=50
VALUE_SIZE=256
KEYSPACE=10000
PIPELINES=(1 16)
TESTS=set,get,incr
START_TIMEOUT_S=180

die() { echo "bench-vs-redis: $*" >&2; exit 1; }
case "$REQUESTS" in
    '' | *[!0-9]* | 0) die "REQUESTS must be a positive whole number, got '$REQUESTS'" ;;
esac
command -v redis-server >/dev/null || die "redis-server is missing (apt-get install redis-server)"
command -v redis-benchmark >/dev/null || die "redis-benchmark is missing (apt-get install redis-tools)"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CAIRN="$TARGET_DIR/release/cairn"
WORK=$(mktemp -d -t cairn-vs-redis.XXXXXX)
CAIRN_PID=""
REDIS_PID=""

stop_pid() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$?
    set +e
    stop_pid "$CAIRN_PID"
    stop_pid "$REDIS_PID"
    if [ "$status" -ne 0 ] && [ -f "$WORK/cairn.log" ]; then
        echo "--- last lines of the cairn demo log" >&2
        tail -n 30 "$WORK/cairn.log" >&2
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -p cairn)

echo "== starting the Cairn demo cluster" >&2
mkdir -p "$WORK/cairn"
"$CAIRN" demo --base-port 0 --redis-base-port 0 --data-dir "$WORK/cairn" \
    --redis-endpoints-file "$WORK/cairn/redis-endpoints" >"$WORK/cairn.log" 2>&1 </dev/null &
CAIRN_PID=$!

echo "== starting redis-server (appendonly yes, appendfsync always)" >&2
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
    --appendfsync always --save '' --daemonize no >"$WORK/redis.log" 2>&1 </dev/null &
REDIS_PID=$!

deadline=$((SECONDS + START_TIMEOUT_S))
until [ -s "$WORK/cairn/redis-endpoints" ]; do
    kill -0 "$CAIRN_PID" 2>/dev/null || die "cairn demo exited before serving"
    [ "$SECONDS" -lt "$deadline" ] || die "cairn demo not serving after ${START_TIMEOUT_S}s"
    sleep 0.5
done
sleep 0.5
CAIRN_ADDR=$(tr -d '[:space:]' <"$WORK/cairn/redis-endpoints" | cut -d, -f1)
CAIRN_PIDS=$(pgrep -P "$CAIRN_PID" | paste -sd' ' -)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
    kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited"
    sleep 0.2
done
echo "== cairn (redis protocol) at $CAIRN_ADDR, nodes $CAIRN_PIDS; redis at 127.0.0.1:$REDIS_PORT" >&2

# CPU ticks (user + system) of a set of processes, from /proc.
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do
        local f
        f=$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null) || continue
        total=$((total + ${f% *} + ${f#* }))
    done
    echo "$total"
}

RESULTS="$WORK/results.csv"
: >"$RESULTS"
run() {
    local target=$1 host=$2 port=$3 pipeline=$4 pids=$5 test
    for test in ${TESTS//,/ }; do
        echo "== $target -P $pipeline $test: $REQUESTS requests, $CLIENTS clients" >&2
        local before after line
        # shellcheck disable=SC2086
        before=$(cpu_ticks $pids)
        line=$(redis-benchmark -h "$host" -p "$port" -t "$test" -c "$CLIENTS" -n "$REQUESTS" \
            -d "$VALUE_SIZE" -r "$KEYSPACE" -P "$pipeline" --csv 2>/dev/null | grep -v '^"test"' | head -1)
        # shellcheck disable=SC2086
        after=$(cpu_ticks $pids)
        echo "$target,$pipeline,$((after - before)),$line" >>"$RESULTS"
    done
}

for p in "${PIPELINES[@]}"; do
    run cairn "${CAIRN_ADDR%:*}" "${CAIRN_ADDR##*:}" "$p" "$CAIRN_PIDS"
    run redis 127.0.0.1 "$REDIS_PORT" "$p" "$REDIS_PID"
done

echo
echo "Raw results (target,pipeline,server CPU ticks,redis-benchmark CSV):"
cat "$RESULTS"
echo
python3 - "$RESULTS" "$REQUESTS" "$CLIENTS" "$(getconf CLK_TCK)" "$(nproc)" <<'PY'
import csv, sys
path, requests, clients, hz, cpus = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
rows = {}
for r in csv.reader(open(path)):
    target, pipeline, ticks, test, rps = r[0], r[1], int(r[2]), r[3].split()[0].lower(), float(r[4])
    # redis-benchmark's CSV: test, rps, avg, min, p50, p95, p99, max (latencies in ms).
    p50 = float(r[7]) if len(r) > 7 else float("nan")
    rows[(target, pipeline, test)] = (rps, ticks * 1e6 / hz / requests, p50)
print(f"Cairn (3 nodes, majority fsync) vs Redis (1 node, appendfsync always): "
      f"{clients} clients, {requests} requests, 256-byte values, one machine ({cpus} CPUs)")
head = f"{'test':<6} {'-P':>3} {'cairn req/s':>12} {'redis req/s':>12} {'ratio':>6}   " \
       f"{'cairn p50 ms':>12} {'redis p50 ms':>12}   {'cairn CPU us/req':>16} {'redis CPU us/req':>16}"
print(head)
print("-" * len(head))
for pipeline in sorted({k[1] for k in rows}, key=int):
    for test in ["set", "get", "incr"]:
        c = rows.get(("cairn", pipeline, test))
        r = rows.get(("redis", pipeline, test))
        if not c or not r:
            continue
        print(f"{test:<6} {pipeline:>3} {c[0]:12.0f} {r[0]:12.0f} {c[0] / r[0]:6.2f}   "
              f"{c[2]:12.3f} {r[2]:12.3f}   {c[1]:16.1f} {r[1]:16.1f}")
print("ratio = Cairn / Redis requests per second (above 1 is better for Cairn).")
PY
