#!/usr/bin/env bash
# bench-vs-etcd.sh: Cairn against etcd, side by side in one sitting, on this machine.
#
# Usage: scripts/bench-vs-etcd.sh [SECS]    (SECS: measured seconds per run, default 20)
#
# Builds cairn and cairn-bench in release mode, starts a 3-node Cairn demo cluster
# and a 3-member etcd cluster (scripts/etcd-cluster.sh), both on ephemeral ports
# with data in a temporary directory, then runs each workload on Cairn and right
# after on etcd, so both see the same machine state. Same settings for both:
# 64 closed-loop clients spread over the 3 nodes, 10k records, 256-byte values,
# linearizable reads, default fsync. Ends with a table of ops/s and p99 and the
# Cairn/etcd ratios, then one of CPU time per operation, servers and load
# generator apart. Everything started here is stopped by PID on exit.
set -euo pipefail

SECS=${1:-20}
WARMUP=3
CLIENTS=64
KEYS=10000
VALUE_SIZE=256
WORKLOADS=(write read mixed95)
CAIRN_START_TIMEOUT_S=180
CAIRN_STOP_TIMEOUT_S=30

die() { echo "bench-vs-etcd: $*" >&2; exit 1; }

case "$SECS" in
    '' | *[!0-9]* | 0) die "SECS must be a positive whole number of seconds, got '$SECS'" ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CAIRN="$TARGET_DIR/release/cairn"
BENCH="$TARGET_DIR/release/cairn-bench"

WORK=$(mktemp -d -t cairn-vs-etcd.XXXXXX)
CAIRN_PID=""
BENCH_PID=""
ETCD_STARTED=0

cleanup() {
    local status=$?
    set +e
    if [ -n "$BENCH_PID" ]; then
        kill -TERM "$BENCH_PID" 2>/dev/null
        wait "$BENCH_PID" 2>/dev/null
    fi
    if [ -n "$CAIRN_PID" ] && kill -0 "$CAIRN_PID" 2>/dev/null; then
        kill -TERM "$CAIRN_PID"
        local deadline=$((SECONDS + CAIRN_STOP_TIMEOUT_S))
        while kill -0 "$CAIRN_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
        if kill -0 "$CAIRN_PID" 2>/dev/null; then
            echo "bench-vs-etcd: cairn demo ignored SIGTERM for ${CAIRN_STOP_TIMEOUT_S}s, killing it" >&2
            kill -KILL "$CAIRN_PID"
        fi
        wait "$CAIRN_PID" 2>/dev/null
    fi
    if [ "$ETCD_STARTED" = 1 ]; then
        "$ROOT/scripts/etcd-cluster.sh" stop "$WORK/etcd"
    fi
    if [ "$status" -ne 0 ] && [ -f "$WORK/cairn.log" ]; then
        echo "--- last lines of the cairn demo log" >&2
        tail -n 30 "$WORK/cairn.log" >&2
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
# Turn signals into an exit so that the EXIT trap does the cleanup once.
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -p cairn -p cairn-bench)
if [ ! -x "$CAIRN" ] || [ ! -x "$BENCH" ]; then
    die "built binaries not found under $TARGET_DIR/release"
fi

echo "== starting the Cairn demo cluster" >&2
mkdir -p "$WORK/cairn"
"$CAIRN" demo --base-port 0 --data-dir "$WORK/cairn" --endpoints-file "$WORK/cairn/endpoints" \
    >"$WORK/cairn.log" 2>&1 </dev/null &
CAIRN_PID=$!

echo "== starting the etcd cluster" >&2
# Set first: should the start be interrupted, stop still finds whatever it left.
ETCD_STARTED=1
"$ROOT/scripts/etcd-cluster.sh" start "$WORK/etcd"
ETCD_ENDPOINTS=$(cat "$WORK/etcd/endpoints")

# The demo writes its endpoints file once the cluster serves requests.
deadline=$((SECONDS + CAIRN_START_TIMEOUT_S))
until [ -s "$WORK/cairn/endpoints" ]; do
    kill -0 "$CAIRN_PID" 2>/dev/null || die "cairn demo exited before serving"
    [ "$SECONDS" -lt "$deadline" ] || die "cairn demo not serving after ${CAIRN_START_TIMEOUT_S}s"
    sleep 0.5
done
# A file caught mid-write would be short; give the writer a moment to finish.
sleep 0.5
CAIRN_ENDPOINTS=$(tr -d '[:space:]' <"$WORK/cairn/endpoints")
[ -n "$CAIRN_ENDPOINTS" ] || die "empty Cairn endpoints file"
# Server CPU per operation is charged to these: the demo's node processes, and the
# etcd members.
CAIRN_PIDS=$(pgrep -P "$CAIRN_PID" | paste -sd, -)
ETCD_PIDS=$(paste -sd, - <"$WORK/etcd/pids")
[ -n "$CAIRN_PIDS" ] || die "no node processes under the cairn demo (PID $CAIRN_PID)"
echo "== cairn at $CAIRN_ENDPOINTS (PID $CAIRN_PID)" >&2
echo "== etcd  at $ETCD_ENDPOINTS" >&2

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
run_bench() {
    local target=$1 endpoints=$2 workload=$3 pids=$4
    echo "== $target $workload: $CLIENTS clients, ${WARMUP}s warmup + ${SECS}s" >&2
    # In the background and waited for, so that a TERM to this script runs the
    # cleanup at once instead of after the run (bash defers traps while a
    # foreground child runs).
    "$BENCH" --target "$target" --endpoints "$endpoints" --workload "$workload" \
        --clients "$CLIENTS" --keys "$KEYS" --value-size "$VALUE_SIZE" \
        --duration "$SECS" --warmup "$WARMUP" --server-pids "$pids" --json >>"$RESULTS" &
    BENCH_PID=$!
    # A failed run is recorded and the comparison goes on with the next one.
    local status=0
    wait "$BENCH_PID" || status=$?
    BENCH_PID=""
    if [ "$status" -ne 0 ]; then
        echo "bench-vs-etcd: $target $workload failed" >&2
        printf '{"target":"%s","workload":"%s","failed":true}\n' "$target" "$workload" >>"$RESULTS"
    fi
}

for workload in "${WORKLOADS[@]}"; do
    run_bench cairn "$CAIRN_ENDPOINTS" "$workload" "$CAIRN_PIDS"
    run_bench etcd "$ETCD_ENDPOINTS" "$workload" "$ETCD_PIDS"
done

echo
echo "Raw results (one JSON object per run):"
cat "$RESULTS"
echo
python3 - "$RESULTS" "$SECS" "$CLIENTS" "$KEYS" "$VALUE_SIZE" "$(nproc)" "${WORKLOADS[@]}" <<'EOF'
import json, sys

path, secs, clients, keys, value_size, cpus, *workloads = sys.argv[1:]
runs = {}
with open(path) as f:
    for line in f:
        line = line.strip()
        if line:
            r = json.loads(line)
            runs[(r["target"], r["workload"])] = r

def get(target, workload, field):
    r = runs.get((target, workload))
    if r is None or r.get("failed"):
        return None
    return r.get(field)

def fmt(x, spec):
    width = int(spec.split(".")[0]) if spec[0].isdigit() else 0
    return ("n/a" if x is None else format(x, spec)).rjust(width)

def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b

def pair(workload, field):
    return get("cairn", workload, field), get("etcd", workload, field)

def table_header(header):
    print(header)
    print("-" * len(header))

print(f"Cairn vs etcd: {clients} clients, {keys} keys, {value_size}-byte values, "
      f"{secs}s per run, 3 nodes each, one machine ({cpus} CPUs)")
table_header(f"{'workload':<9} {'cairn ops/s':>12} {'etcd ops/s':>12} {'ratio':>7}   "
             f"{'cairn p99 ms':>12} {'etcd p99 ms':>12} {'ratio':>7}   {'errors c/e':>11}")
for w in workloads:
    c_ops, e_ops = pair(w, "ops_per_sec")
    c_p99, e_p99 = pair(w, "p99_ms")
    errs = "/".join(fmt(e, "d") for e in pair(w, "errors"))
    print(f"{w:<9} {fmt(c_ops, '12.1f')} {fmt(e_ops, '12.1f')} {fmt(ratio(c_ops, e_ops), '7.2f')}   "
          f"{fmt(c_p99, '12.3f')} {fmt(e_p99, '12.3f')} {fmt(ratio(c_p99, e_p99), '7.2f')}   {errs:>11}")
print("ratio = Cairn / etcd: above 1 is better for Cairn on ops/s, below 1 is better on p99.")
print()
print("CPU per operation, in microseconds of CPU time (user + system, all threads), over the")
print("measured window: 'servers' sums the 3 nodes or members, 'client' is the load generator.")
table_header(f"{'workload':<9} {'cairn servers':>13} {'etcd servers':>13} {'etcd/cairn':>10}   "
             f"{'cairn client':>12} {'etcd client':>12}")
for w in workloads:
    c_srv, e_srv = pair(w, "server_cpu_us_per_op")
    c_cli, e_cli = pair(w, "client_cpu_us_per_op")
    print(f"{w:<9} {fmt(c_srv, '13.1f')} {fmt(e_srv, '13.1f')} {fmt(ratio(e_srv, c_srv), '10.2f')}   "
          f"{fmt(c_cli, '12.1f')} {fmt(e_cli, '12.1f')}")
print("etcd/cairn above 1: Cairn's servers spend less CPU per operation than etcd's.")
EOF
