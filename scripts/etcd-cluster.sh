#!/usr/bin/env bash
# etcd-cluster.sh: a throwaway 3-member etcd cluster on 127.0.0.1, for
# benchmarking Cairn against etcd (see bench-vs-etcd.sh).
#
# Usage:
#   etcd-cluster.sh start DIR   start it; data and logs under DIR, client
#                               endpoints (comma-separated) in DIR/endpoints,
#                               member PIDs in DIR/pids; returns once healthy
#   etcd-cluster.sh stop DIR    stop exactly the PIDs in DIR/pids
#
# Ports are ephemeral (picked free by the OS), never fixed, so several clusters
# and other services can coexist. fsync stays at etcd's defaults: a comparison
# against an etcd that does not persist would mean nothing.
# Needs `etcd` (Debian package etcd-server, 3.4) and `etcdctl` (etcd-client);
# installs them with apt-get when missing.
set -euo pipefail

MEMBERS=3
HEALTH_TIMEOUT_S=60
STOP_TIMEOUT_S=15

die() { echo "etcd-cluster: $*" >&2; exit 1; }

ensure_installed() {
    if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
        return
    fi
    echo "etcd-cluster: installing etcd-server and etcd-client with apt-get" >&2
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "etcd is missing and installing it needs root"
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        die "etcd still missing after apt-get"
    fi
}

# Prints N distinct free TCP ports on 127.0.0.1, one per line. All sockets are
# held open until every port is chosen, so the OS cannot hand out one twice.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
for s in socks:
    s.close()
EOF
}

# True if PID is a live etcd process: a PID file may outlive its processes and
# the PID be reused since. A zombie counts as gone: it has exited, and where no
# one reaps it (a container without an init), waiting for it would never end.
is_our_etcd() {
    local info stat comm
    info=$(ps -o stat=,comm= -p "$1" 2>/dev/null) || return 1
    read -r stat comm <<<"$info"
    [[ $stat != Z* && $comm == etcd ]]
}

stop_pids() {
    local pids=("$@") pid alive deadline
    for pid in "${pids[@]}"; do
        if is_our_etcd "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    while :; do
        alive=()
        for pid in "${pids[@]}"; do
            if is_our_etcd "$pid"; then alive+=("$pid"); fi
        done
        [ "${#alive[@]}" -eq 0 ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "etcd-cluster: killing ${alive[*]} after ${STOP_TIMEOUT_S}s" >&2
            kill -KILL "${alive[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.2
    done
}

abort_start() {
    if [ "${#STARTED_PIDS[@]}" -gt 0 ]; then
        echo "etcd-cluster: start failed, stopping ${STARTED_PIDS[*]}" >&2
        stop_pids "${STARTED_PIDS[@]}"
    fi
    rm -f "$START_DIR/pids" "$START_DIR/endpoints"
}

start() {
    local dir=$1
    ensure_installed
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ -s "$dir/pids" ] && die "$dir/pids exists: a cluster may already run there (stop it first)"
    rm -f "$dir/endpoints"

    local ports
    mapfile -t ports < <(free_ports $((2 * MEMBERS)))
    [ "${#ports[@]}" -eq $((2 * MEMBERS)) ] || die "could not pick free ports"

    local i initial_cluster="" client_urls=()
    for ((i = 0; i < MEMBERS; i++)); do
        initial_cluster+="${initial_cluster:+,}m$i=http://127.0.0.1:${ports[2 * i + 1]}"
        client_urls+=("http://127.0.0.1:${ports[2 * i]}")
    done
    local endpoints
    endpoints=$(IFS=,; echo "${client_urls[*]}")

    # One token for all members (it seeds the cluster ID); unique per start so
    # members of a stale cluster cannot join this one.
    local token="cairn-bench-$$-$RANDOM"
    # Globals, not locals: the EXIT trap may fire from any depth.
    STARTED_PIDS=()
    START_DIR=$dir
    # If anything below fails or we are interrupted, leave nothing running behind.
    trap abort_start EXIT
    trap 'exit 130' INT TERM
    for ((i = 0; i < MEMBERS; i++)); do
        local client_url=${client_urls[$i]} peer_url="http://127.0.0.1:${ports[2 * i + 1]}"
        etcd --name "m$i" \
            --data-dir "$dir/m$i" \
            --listen-client-urls "$client_url" \
            --advertise-client-urls "$client_url" \
            --listen-peer-urls "$peer_url" \
            --initial-advertise-peer-urls "$peer_url" \
            --initial-cluster "$initial_cluster" \
            --initial-cluster-token "$token" \
            --initial-cluster-state new \
            --logger zap --log-outputs stderr \
            >"$dir/m$i.log" 2>&1 </dev/null &
        STARTED_PIDS+=("$!")
    done
    printf '%s\n' "${STARTED_PIDS[@]}" >"$dir/pids"

    local deadline=$((SECONDS + HEALTH_TIMEOUT_S)) pid
    until ETCDCTL_API=3 etcdctl --endpoints="$endpoints" --dial-timeout=2s --command-timeout=3s \
        endpoint health >/dev/null 2>&1; do
        for pid in "${STARTED_PIDS[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                for ((i = 0; i < MEMBERS; i++)); do
                    echo "--- tail of $dir/m$i.log" >&2
                    tail -n 20 "$dir/m$i.log" >&2 || true
                done
                die "member with PID $pid exited during start-up"
            fi
        done
        if [ "$SECONDS" -ge "$deadline" ]; then
            ETCDCTL_API=3 etcdctl --endpoints="$endpoints" endpoint health >&2 || true
            die "cluster not healthy after ${HEALTH_TIMEOUT_S}s"
        fi
        sleep 0.5
    done
    trap - EXIT INT TERM
    # Written last: its presence means the cluster is up and serving.
    echo "$endpoints" >"$dir/endpoints"
    echo "etcd-cluster: $(etcd --version | head -n 1), $MEMBERS members healthy at $endpoints (PIDs ${STARTED_PIDS[*]})" >&2
}

stop() {
    local dir=$1
    [ -f "$dir/pids" ] || { echo "etcd-cluster: no $dir/pids, nothing to stop" >&2; return 0; }
    local pids
    mapfile -t pids <"$dir/pids"
    if [ "${#pids[@]}" -gt 0 ]; then stop_pids "${pids[@]}"; fi
    rm -f "$dir/pids" "$dir/endpoints"
}

case "${1:-}" in
    start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 start|stop DIR" ;;
esac
