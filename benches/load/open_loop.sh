# Open-loop latency (issue 14, item 3): sourced by `bash benches/load/run.sh --open-loop` once
# the origins and the proxies are up (their ports, OTHER_CPU, log and TMP come from run.sh).
#
# wrk is closed-loop: a slow response delays the requests behind it, so they are never sent
# late and their wait is never measured (coordinated omission). oha sends at a fixed rate
# (-q) and with --latency-correction measures each latency from when the request was due.
# First direct-to-origin's peak (oha as fast as it goes, OL_CONNS connections), then OL_LOADS
# percent of it for every target in turn: p50 / p99 / p99.9 per target and load in one table,
# results/open-loop.md (+ the oha JSON under results/open-loop/). Knobs: OL_DURATION (s per run,
# default 10), OL_CONNS (default 64), OL_LOADS (default "50 80 95"), OHA (the binary; installed
# with `cargo install oha --locked` when missing).

OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
if [[ ! -x $OHA ]]; then
    log "installing oha (cargo install oha --locked)"
    cargo install oha --locked >&2
    OHA=$HOME/.cargo/bin/oha
fi
OL_DURATION=${OL_DURATION:-10}
OL_CONNS=${OL_CONNS:-64}
OL_LOADS=${OL_LOADS:-50 80 95}
OL_OUT=$OUT/open-loop
mkdir -p "$OL_OUT"

oha_run() { # json-out url rate (0 = as fast as it goes)
    local args=(--no-tui --output-format json -z "${OL_DURATION}s" -c "$OL_CONNS")
    (($3 > 0)) && args+=(-q "$3" --latency-correction)
    timeout -k 5 $((OL_DURATION + 60)) "${OTHER_CPU[@]}" "$OHA" "${args[@]}" "$2" >"$1" 2>/dev/null || true
}
# Requests/s, then p50 p99 p99.9 in ms ("-" when oha wrote nothing usable).
oha_figures() {
    jq -r '[.summary.requestsPerSec, .latencyPercentiles.p50, .latencyPercentiles.p99, .latencyPercentiles["p99.9"]]
        | "\(.[0] | floor) \(.[1:] | map(. * 1000 * 100 | round / 100) | join(" "))"' "$1" 2>/dev/null || echo "- - - -"
}

log "open loop: direct's peak (${OL_DURATION}s, $OL_CONNS connections, as fast as oha goes)"
oha_run "$OL_OUT/peak.json" "http://127.0.0.1:${PORT[direct]}/small" 0
read -r PEAK _ <<<"$(oha_figures "$OL_OUT/peak.json")"
[[ $PEAK =~ ^[0-9]+$ ]] || { log "open loop: no peak measured (see $OL_OUT/peak.json)"; exit 1; }
{
    echo "# Open-loop latency"
    echo
    echo "Command: \`bash benches/load/run.sh --open-loop\` ($(date -u +%Y-%m-%d); oha $("$OHA" --version | cut -d' ' -f2)," \
        "-q RATE --latency-correction, $OL_CONNS connections, ${OL_DURATION}s per run, 100-byte responses)." \
        "Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Direct-to-origin's peak: $PEAK requests/s. Latencies in ms, measured from when each request was due."
    echo
    echo "| load | target | rate | achieved req/s | p50 | p99 | p99.9 |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
} >"$OL_OUT.md.tmp"
for load in $OL_LOADS; do
    rate=$((PEAK * load / 100))
    for t in $TARGETS; do
        log "open loop: $t at $load % ($rate req/s)"
        oha_run "$OL_OUT/$t-$load.json" "http://127.0.0.1:${PORT[$t]}/small" "$rate"
        read -r rps p50 p99 p999 <<<"$(oha_figures "$OL_OUT/$t-$load.json")"
        echo "| $load % | $t | $rate | $rps | $p50 | $p99 | $p999 |" >>"$OL_OUT.md.tmp"
        sleep "$PAUSE"
    done
done
mv "$OL_OUT.md.tmp" "$OL_OUT.md"
cat "$OL_OUT.md"
