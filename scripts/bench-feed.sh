#!/usr/bin/env bash
# bench-feed.sh: change-feed latency and throughput on a 3-node Cairn cluster.
#
# Usage: scripts/bench-feed.sh [SECS] [RATE]   (defaults: 20 s, 10000 writes/s)
#
# Starts a demo cluster on ephemeral ports (data in a temporary directory), then
# (1) writes RATE keys per second (BatchWrites of 10 keys of 256 B from 32
# writers) while one consumer follows the table: the latency from each write's
# acknowledgement to the consumer's receipt of it, p50/p99/max; (2) writes as fast
# as the writers go: the events per second the one consumer receives. Everything
# started here is stopped by PID.
set -euo pipefail
SECS=${1:-20}
RATE=${2:-10000}
die() { echo "bench-feed: $*" >&2; exit 1; }
case "$SECS$RATE" in *[!0-9]*) die "SECS and RATE must be whole numbers" ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/procs.sh
. "$ROOT/scripts/lib/procs.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d -t cairn-feed-bench.XXXXXX)
CAIRN_PID=""
cleanup() {
    local status=$?
    set +e
    stop_pid "$CAIRN_PID"
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -p cairn --bin cairn --example feed_bench)
mkdir -p "$WORK/cairn"
"$TARGET_DIR/release/cairn" demo --base-port 0 --redis-base-port 0 --data-dir "$WORK/cairn" \
    --endpoints-file "$WORK/cairn/endpoints" >"$WORK/cairn.log" 2>&1 </dev/null &
CAIRN_PID=$!
wait_serving "$WORK/cairn/endpoints" "$CAIRN_PID" || die "no cluster to measure"
ENDPOINTS=$(tr -d '[:space:]' <"$WORK/cairn/endpoints")
echo "== at $RATE writes/s" >&2
"$TARGET_DIR/release/examples/feed_bench" --grpc "$ENDPOINTS" --table paced --rate "$RATE" --seconds "$SECS"
echo "== as fast as the writers go" >&2
"$TARGET_DIR/release/examples/feed_bench" --grpc "$ENDPOINTS" --table flat-out --rate 0 --seconds "$SECS"
