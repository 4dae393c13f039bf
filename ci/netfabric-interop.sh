#!/usr/bin/env bash
# netfabric tests including the real wireguard-go interop test (needs root for netns).
# Installs the Debian packages the interop test uses when they are missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cargo test -p netfabric -- --nocapture 2>&1 | tee /tmp/netfabric-test.log
if grep -q "SKIP: interop_wireguard_go" /tmp/netfabric-test.log; then
    echo "NOTE: the wireguard-go interop test was skipped (see SKIP line above)"
fi
