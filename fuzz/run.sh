#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 300), starting from the committed
# seeds, and prints libFuzzer's final stats line per target. Needs the nightly
# toolchain and `cargo install cargo-fuzz`. Crashes land in fuzz/artifacts/<target>/.
# `fuzz/run.sh 900 -a` builds with debug assertions (overflow checks, slice
# preconditions), which found the one crash so far.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-300}"
extra="${2:-}"
mkdir -p /dev/shm/bipo-fuzz
export BIPO_FUZZ_DIR=/dev/shm/bipo-fuzz
for t in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    echo "== $t ($secs s)"
    cargo +nightly fuzz run -O $extra "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
        2>&1 | grep -E "stat::number_of_executed_units|stat::new_units_added|SUMMARY|panicked|ERROR|Test unit written" || true
done
