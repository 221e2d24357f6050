#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 30) from its
# committed seed corpus. Exits non-zero if any target crashes, leaks past the
# memory limits or times out; the input that did it is kept under
# fuzz/artifacts/<target>/ (reproduce with `cargo fuzz run <target> <file>`).
#
# Needs cargo-fuzz (installed here if missing) and, on stable Rust,
# RUSTC_BOOTSTRAP=1 for the sanitizer flags. New inputs found during a run go
# to a scratch corpus, so the committed corpus stays as it is.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

seconds=${FUZZ_SECONDS:-30}
# Every core caps what it buffers at a few KiB (max_line <= 2048 here, 64 KiB
# for upstream replies): a 256 MB allocation or resident set is a missing cap.
limit_mb=${FUZZ_LIMIT_MB:-256}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

start=$SECONDS
# -O: optimised; -a: debug assertions (and overflow checks) on.
cargo fuzz build -O -a
echo "== fuzz: built in $((SECONDS - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target" "$scratch/$target"
    log="$scratch/$target.log"
    status=ok
    if ! cargo fuzz run -O -a "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb="$limit_mb" \
        -malloc_limit_mb="$limit_mb" -max_len=4096 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        status=FAILED
        failed+=("$target")
        tail -n 40 "$log" >&2
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || echo '?')
    echo "fuzz: $target: $status, $runs runs in ${seconds} s, coverage $cov"
done

echo "== fuzz: all targets done in $((SECONDS - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
    exit 1
fi
