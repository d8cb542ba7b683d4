#!/usr/bin/env bash
# bench-voucher.sh: the voucher gatekeeper (examples/voucher/claim.lua) on a 3-node
# Cairn cluster against Redis with appendfsync always, the same script and client,
# side by side in one sitting.
#
# Usage: scripts/bench-voucher.sh [SECS] [ROUNDS] [CLIENTS]   (defaults: 15 s, 3 rounds, 200 clients)
#
# Each run claims a fresh voucher whose quota is far above what a run can grant, so
# every claim takes the whole path (quota, user limit, claim record, counters) and
# is answered GRANTED; users are many, so few hit the per-user limit. Prints every
# run, then the medians and the ratio. Needs Debian's redis-server (installed if
# missing, when run as root). Everything started here is stopped by PID.
set -euo pipefail

SECS=${1:-15}
ROUNDS=${2:-3}
CLIENTS=${3:-200}
die() { echo "bench-voucher: $*" >&2; exit 1; }
case "$SECS$ROUNDS$CLIENTS" in *[!0-9]*) die "SECS, ROUNDS and CLIENTS must be whole numbers" ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/procs.sh
. "$ROOT/scripts/lib/procs.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CAIRN="$TARGET_DIR/release/cairn"
VOUCHER="$TARGET_DIR/release/examples/voucher"
WORK=$(mktemp -d -t cairn-voucher-bench.XXXXXX)
CAIRN_PID=""
REDIS_PID=""

cleanup() {
    local status=$?
    set +e
    stop_pid "$REDIS_PID"
    stop_pid "$CAIRN_PID"
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v redis-server >/dev/null; then
    [ "$(id -u)" = 0 ] || die "redis-server is missing (apt-get install redis-server)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -p cairn --bin cairn --example voucher)

echo "== starting the Cairn demo cluster and Redis (appendfsync always)" >&2
mkdir -p "$WORK/cairn" "$WORK/redis"
"$CAIRN" demo --base-port 0 --redis-base-port 0 --data-dir "$WORK/cairn" \
    --endpoints-file "$WORK/cairn/endpoints" --redis-endpoints-file "$WORK/cairn/redis" \
    >"$WORK/cairn.log" 2>&1 </dev/null &
CAIRN_PID=$!
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis" --appendonly yes \
    --appendfsync always --save '' >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
wait_serving "$WORK/cairn/redis" "$CAIRN_PID" || die "no cluster to measure"
CAIRN_REDIS=$(tr -d '[:space:]' <"$WORK/cairn/redis")

RESULTS="$WORK/results.txt"
: >"$RESULTS"
run() { # name nodes
    local out
    out=$("$VOUCHER" --nodes "$2" --voucher "bench-$1-$RANDOM$RANDOM" claims --limit 100000000 \
        --users 100000000 --per-user 2 --clients "$CLIENTS" --seconds "$SECS")
    echo "$1 $out" | tee -a "$RESULTS"
}
for round in $(seq "$ROUNDS"); do
    echo "== round $round" >&2
    run cairn "$CAIRN_REDIS"
    run redis "127.0.0.1:$REDIS_PORT"
done
python3 - "$RESULTS" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.search(r"^(\w+) .*\(([\d.]+) claims/s, .*p50 ([\d.]+) ms, p99 ([\d.]+) ms\)", line)
    if m:
        rows.setdefault(m.group(1), []).append(tuple(float(x) for x in m.group(2, 3, 4)))
print(f"{'system':<8} {'claims/s':>10} {'p50 ms':>8} {'p99 ms':>8}   (medians of {len(rows.get('cairn', []))} runs)")
med = {k: [statistics.median(c) for c in zip(*v)] for k, v in rows.items()}
for k, (rate, p50, p99) in med.items():
    print(f"{k:<8} {rate:>10.0f} {p50:>8.2f} {p99:>8.2f}")
if "cairn" in med and "redis" in med:
    print(f"cairn / redis: {med['cairn'][0] / med['redis'][0]:.2f}x claims/s, "
          f"p99 {med['cairn'][2] / med['redis'][2]:.2f}x")
PY
