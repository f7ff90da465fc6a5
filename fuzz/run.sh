#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) each, on the stable toolchain, failing on the
# first crash. Usage: bash fuzz/run.sh [SECONDS] [TARGET...]
#
# - Installs cargo-fuzz if it is missing (`cargo install --locked cargo-fuzz`).
# - `--sanitizer none`: the engine is `#![forbid(unsafe_code)]`, and without a sanitizer
#   cargo-fuzz needs no nightly flags.
# - Corpora: the checked-in seeds (fuzz/seeds/T, read only) plus a scratch corpus fuzz/corpus/T
#   (git-ignored) that keeps what a run learned for the next one. Crashes go to
#   fuzz/artifacts/T/ (git-ignored); reproduce one with
#   `cargo fuzz run --fuzz-dir fuzz --sanitizer none T fuzz/artifacts/T/crash-...`
#   and print it with `cargo fuzz fmt --fuzz-dir fuzz --sanitizer none T fuzz/artifacts/T/crash-...`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(request_head response_head chunked pool_ops proxy_trace)
fi

export CARGO_TERM_COLOR=never
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

echo "== cargo fuzz build (all targets)"
cargo fuzz build --fuzz-dir fuzz --sanitizer none

for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    case "$t" in
        request_head | response_head | chunked) flags+=(-dict=fuzz/http.dict) ;;
    esac
    echo "== $t (${seconds}s)"
    log="$(mktemp)"
    if ! cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
        -- "${flags[@]}" >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "== $t FAILED: crash input in fuzz/artifacts/$t/" >&2
        rm -f "$log"
        exit 1
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
    rm -f "$log"
done
echo "== all fuzz targets ran ${seconds}s without a crash"
