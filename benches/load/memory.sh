#!/usr/bin/env bash
# Memory per idle connection (issue 14, item 4): `bash benches/load/run.sh --memory` (or this
# script directly; ~1 minute after the build).
#
# Builds `upkeep` and `idle_memory` (release), raises the descriptor limit to the hard limit,
# and runs `idle_memory` (benches/src/bin/idle_memory.rs: its own loopback origin, one-worker
# upkeep processes, VmRSS and RssAnon from /proc/PID/status) for CLIENTS idle client connections after one
# request each and POOLED idle pooled upstream connections, then after both close. Writes
# benches/load/results/memory.md (OUT=... elsewhere). Knobs: CLIENTS (default 9900: with a hard
# RLIMIT_NOFILE of 20,000 the proxy keeps half its descriptors for upstream connections, so
# ~9,980 clients fit), POOLED (2000), UPKEEP_BIN (skip the build), BASE_BIN (also measure another
# build, e.g. an older commit's, in the same run).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CLIENTS=${CLIENTS:-9900}
POOLED=${POOLED:-2000}
OUT=${OUT:-$HERE/results/memory.md}
cd "$REPO"
cargo build --release -q -p upkeep-benches --bin idle_memory
if [[ -z ${UPKEEP_BIN:-} ]]; then
    cargo build --release -q -p upkeep-mio --bin upkeep
    UPKEEP_BIN=$REPO/target/release/upkeep
fi
ulimit -n "$(ulimit -Hn)"
measure() { # label binary
    printf '\n### %s\n\n' "$1"
    timeout 600 "$REPO/target/release/idle_memory" "$2" "$CLIENTS" "$POOLED"
}
{
    echo "# Memory per idle connection"
    echo
    echo "Command: \`bash benches/load/run.sh --memory\` ($(date -u +%Y-%m-%d), $CLIENTS idle clients," \
        "$POOLED idle pooled connections, one worker, RLIMIT_NOFILE $(ulimit -n))."
    echo "upkeep built from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- core runtime-shared runtime-mio || echo ' + local changes');" \
        "load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "VmRSS of the upkeep process, and its anonymous part RssAnon (heap and stacks: VmRSS without"
    echo "the binary's file-backed pages, which grow as code runs for the first time);"
    echo "\"per connection\" = (VmRSS - start) / connections. Targets:"
    echo "≤ 4 KiB per idle client and per idle pooled connection, RSS back within 10 % of the start"
    echo "after they close."
    measure "upkeep" "$UPKEEP_BIN"
    if [[ -n ${BASE_BIN:-} ]]; then
        measure "baseline ($BASE_BIN)" "$BASE_BIN"
    fi
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
