# Helpers the benchmark scripts source: stopping what they started, by PID, and
# waiting for a `cairn demo` to serve.

# stop_pid PID: SIGTERM, up to 30 s for a clean exit, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# wait_serving FILE PID: waits (180 s at most) until the demo with PID has
# written its endpoints FILE; fails if the demo exits first.
wait_serving() {
    local file=$1 pid=$2
    local deadline=$((SECONDS + 180))
    until [ -s "$file" ]; do
        kill -0 "$pid" 2>/dev/null || { echo "cairn demo exited before serving" >&2; return 1; }
        [ "$SECONDS" -lt "$deadline" ] || { echo "cairn demo not serving after 180 s" >&2; return 1; }
        sleep 0.5
    done
    sleep 1
}
