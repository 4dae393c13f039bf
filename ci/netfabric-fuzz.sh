#!/usr/bin/env bash
# Run every netfabric cargo-fuzz target for FUZZ_SECONDS (default 60) each.
# Only stable Rust is installed: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use its nightly-only flags
# (-Z sanitizer=address etc.) on stable 1.95.
# Usage: ci/netfabric-fuzz.sh [target...]        (default: all targets)
set -euo pipefail
cd "$(dirname "$0")/../netfabric"
SECS="${FUZZ_SECONDS:-60}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi
unset CARGO_TARGET_DIR   # cargo-fuzz builds into netfabric/fuzz/target
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
passed=0; failed=0
mkdir -p fuzz/target
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${SECS}s"
    if RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 \
        > "fuzz/target/$t.log" 2>&1; then
        tail -n 2 "fuzz/target/$t.log"
        passed=$((passed + 1))
    else
        tail -n 40 "fuzz/target/$t.log"
        echo "FAIL: fuzz target $t (log: netfabric/fuzz/target/$t.log, artifacts: netfabric/fuzz/artifacts/$t)"
        failed=$((failed + 1))
    fi
done
echo "netfabric-fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
