#!/usr/bin/env bash
# A short libFuzzer run of every fuzz target (fuzz/README.md), on the stable compiler.
#
#   bash fuzz/run.sh                       # each target for FUZZ_SECONDS (default 20)
#   FUZZ_SECONDS=600 FUZZ_TARGETS=ms_ops bash fuzz/run.sh
#
# Variables: FUZZ_SECONDS (per target), FUZZ_TARGETS (space-separated, default all six),
# FUZZ_TARGET_DIR (cargo target dir, default target/fuzz under the repo root, apart from the
# workspace's), FUZZ_SANITIZER (address, the default, or none: faster, no ASan),
# FUZZ_BUILD_TIMEOUT (seconds, default 1800).
#
# Prints, per target, libFuzzer's final line (executions, coverage, corpus) and its final
# stats. Exits non-zero if any target crashed (a panic in a decoder or a failed round-trip
# assertion) or failed to build; the crashing input stays under fuzz/artifacts/TARGET/ and
# its path is in the output. New corpus entries go to fuzz/corpus/TARGET (git-ignored); the
# committed seeds in fuzz/seeds/TARGET are read, never written.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

seconds=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-common_decoders ms_ops pbft_messages membership_snapshot node_decoders client_manifest}
target_dir=${FUZZ_TARGET_DIR:-$repo/target/fuzz}
sanitizer=${FUZZ_SANITIZER:-address}
build_timeout=${FUZZ_BUILD_TIMEOUT:-1800}
# cargo-fuzz passes nightly-only flags (-Zsanitizer, ...); the stable compiler accepts them so.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=$target_dir
logs=$target_dir/logs
mkdir -p "$logs"
t0=$(date +%s)
elapsed() { echo $(($(date +%s) - t0)); }

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# Build every target once, so that each run below spends its time fuzzing.
opts=(--fuzz-dir fuzz --sanitizer "$sanitizer" --target-dir "$target_dir")
build_start=$(date +%s)
for t in $targets; do
    if ! timeout "$build_timeout" cargo fuzz build "${opts[@]}" "$t" >"$logs/build-$t.log" 2>&1; then
        tail -n 60 "$logs/build-$t.log"
        echo "fuzz: FAILED to build $t (log: $logs/build-$t.log)"
        exit 1
    fi
done
echo "fuzz: built [$targets] in $(($(date +%s) - build_start)) s (sanitizer $sanitizer, target dir $target_dir)"

failed=()
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    seeds=()
    if [ -d "fuzz/seeds/$t" ]; then seeds=("fuzz/seeds/$t"); fi
    log=$logs/run-$t.log
    start=$(date +%s)
    # -timeout: one input taking longer than 10 s is reported as a hang (a crash).
    # The outer timeout bounds the whole run should libFuzzer itself get stuck.
    set +e
    timeout $((seconds + 120)) cargo fuzz run "${opts[@]}" "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    echo
    echo "--- $t: exit $rc after $(($(date +%s) - start)) s"
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)' "$log" || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" || true
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        echo "--- $t FAILED; the end of its log ($log):"
        tail -n 80 "$log"
        echo "--- $t: the panic and the crashing input:"
        grep -E -A1 'panicked at' "$log" | head -n 4 || true
        grep -E 'Test unit written to' "$log" || true
    fi
done

echo
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: CRASH in ${failed[*]} ($(elapsed) s in all); inputs under fuzz/artifacts/"
    exit 1
fi
echo "fuzz: all targets ran ${seconds} s each without a crash ($(elapsed) s in all)"
