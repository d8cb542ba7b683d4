#!/usr/bin/env bash
# idle-cost.sh: CPU and memory of a quiet 3-node cluster holding many ranges.
#
# Usage: scripts/idle-cost.sh [RANGES] [SECS]   (defaults: 1000 ranges, 30 s sample)
#
# Builds release binaries, starts `cairn demo` on free ports, creates a table
# and splits it into RANGES ranges (3 replicas each), waits for the cluster to
# settle, then samples each node's CPU time (/proc/PID/stat) over SECS seconds
# and its resident memory. Stops everything it started, by PID.
set -euo pipefail
RANGES=${1:-1000}
SECS=${2:-30}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CAIRN="$TARGET_DIR/release/cairn"
WORK=$(mktemp -d -t cairn-idle.XXXXXX)
DEMO_PID=""

cleanup() {
    set +e
    if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -TERM "$DEMO_PID"
        for _ in $(seq 1 100); do kill -0 "$DEMO_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$DEMO_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release -q -p cairn)
"$CAIRN" demo --base-port 0 --data-dir "$WORK/data" --endpoints-file "$WORK/endpoints" >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!
for _ in $(seq 1 600); do [ -s "$WORK/endpoints" ] && break; sleep 0.2; done
[ -s "$WORK/endpoints" ] || { cat "$WORK/demo.log"; echo "demo did not start" >&2; exit 1; }
ADDR=$(cut -d, -f1 "$WORK/endpoints")
cli() { "$CAIRN" --addr "$ADDR" "$@"; }

cli table create idle >/dev/null
echo "splitting table 'idle' into $RANGES ranges..." >&2
for i in $(seq 1 $((RANGES - 1))); do
    cli range split idle "$(printf 'k%06d' "$i")" >/dev/null
done
echo "waiting for every range to have 3 voters..." >&2
for _ in $(seq 1 600); do
    if cli --json cluster status | python3 -c '
import json, sys
s = json.load(sys.stdin)
r = [x for x in s["ranges"]]
ok = all(sum(1 for p in x["replicas"] if not p.get("learner")) >= 3 for x in r)
sys.exit(0 if ok else 1)'; then break; fi
    sleep 1
done
TOTAL=$(cli --json cluster status | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ranges"]))')
echo "settling (ranges: $TOTAL)..." >&2
sleep 20

PIDS=$(pgrep -P "$DEMO_PID" | tr '\n' ' ')
TCK=$(getconf CLK_TCK)
declare -A T0
for p in $PIDS; do T0[$p]=$(awk '{print $14 + $15}' "/proc/$p/stat"); done
sleep "$SECS"
printf '%-8s %-10s %-10s\n' node cpu_pct rss_mib
n=1
for p in $PIDS; do
    t1=$(awk '{print $14 + $15}' "/proc/$p/stat")
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status")
    python3 -c "print(f'{$n:<8} {($t1 - ${T0[$p]}) / ($TCK * $SECS) * 100:<10.2f} {$rss / 1024:<10.1f}')"
    n=$((n + 1))
done
echo "ranges in cluster: $TOTAL, sample: ${SECS}s"
