#!/usr/bin/env bash
# The voucher system end to end against a running cluster (`cairn demo`: Redis on
# 6379-6381, gRPC on 7401-7403): starts a throwaway PostgreSQL (data in a temporary
# directory, an ephemeral port), creates its tables and the feed's first checkpoint,
# runs the feed writer in the background, claims the voucher from many clients,
# waits for the writer to catch up, and reconciles Cairn with PostgreSQL.
#
#   examples/voucher/run.sh [CLAIMS ARGS...]     e.g. --limit 2000 --clients 200 --seconds 20
# Needs Debian's `postgresql` package. Stops what it started (by PID) on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
tmp=$(mktemp -d)
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$tmp"
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
"${as_pg[@]}" "$pgbin/initdb" --auth=trust --username=postgres --no-instructions -D "$tmp/data" >/dev/null
"${as_pg[@]}" "$pgbin/postgres" -D "$tmp/data" -p "$port" -k "$tmp" -c listen_addresses=127.0.0.1 \
    >"$tmp/postgres.log" 2>&1 &
pids+=($!)
until "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port"; do sleep 0.2; done
echo "postgresql on 127.0.0.1:$port (data in $tmp)"

cargo build --release --example voucher
voucher=(target/release/examples/voucher --voucher "v$$" --postgres "host=127.0.0.1 port=$port user=postgres dbname=postgres")
if [ -n "${CARGO_TARGET_DIR:-}" ]; then voucher[0]="$CARGO_TARGET_DIR/release/examples/voucher"; fi
"${voucher[@]}" init
"${voucher[@]}" writer 2>"$tmp/writer.log" &
pids+=($!)
"${voucher[@]}" claims "$@"
echo "waiting for the writer to catch up..."
for _ in $(seq 1 60); do
    if "${voucher[@]}" reconcile >/dev/null 2>&1; then break; fi
    sleep 1
done
"${voucher[@]}" reconcile
