#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for SECS seconds each
# (default 20), starting from the checked-in corpus in fuzz/corpus/. Fails on
# the first crash, leaving the input in fuzz/artifacts/<target>/; turn it into
# a regression test (see fuzz/README.md) before fixing it.
#
#   scripts/fuzz.sh [SECS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain; with
# only a stable one, RUSTC_BOOTSTRAP=1 lets it accept the nightly flags.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(key_encoding client_requests peer_messages resp_parser)
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly)
else
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi
target_dir="${CAIRN_FUZZ_TARGET_DIR:-$HOME/.cache/cairn-fuzz-target}"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz: $t for ${secs}s"
    # New inputs go to a scratch dir, so the checked-in corpus only changes on purpose (cmin).
    scratch=$(mktemp -d)
    status=0
    "${cargo[@]}" fuzz run --target-dir "$target_dir" "$t" "$scratch" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=4096 -print_final_stats=1 >"$scratch.log" 2>&1 || status=$?
    grep -E "^Done|number_of_executed_units|ERROR|SUMMARY|panicked|Test unit written" "$scratch.log" || true
    [ "$status" -eq 0 ] || tail -40 "$scratch.log" >&2
    rm -rf "$scratch" "$scratch.log"
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $t FAILED (exit $status); the crashing input is in fuzz/artifacts/$t/" >&2
        exit "$status"
    fi
done
echo "fuzz: all targets passed"
