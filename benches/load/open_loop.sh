# Open-loop latency (issue 14, item 3): sourced by `bash benches/load/run.sh --open-loop` once
# the origins and the proxies are up (their ports, OTHER_CPU, log and TMP come from run.sh).
#
# wrk is closed-loop: a slow response delays the requests behind it, so they are never sent
# late and their wait is never measured (coordinated omission). oha sends at a fixed rate
# (-q) and with --latency-correction measures each latency from when the request was due.
# First the base rate (oha as fast as it goes, OL_CONNS connections), then OL_LOADS percent of
# it for every target in turn: p50 / p99 / p99.9 per target and load in one table, and each
# target's p99 over direct's at the same load, results/open-loop.md (+ the oha JSON under
# results/open-loop/; results/open-loop-BASE.md and -BASE/ for another base). The base (OL_BASE):
#   direct   direct-to-origin's peak (the default, as the issue states the target). On a machine
#            where the generator, the origins and the proxy share two cores, a proxy hop serves
#            well under half of direct's peak, so every proxied row is overloaded from 50 % on.
#   slowest  every target's own peak, and the lowest of them: each target then gets a rate it
#            can serve, and the rows compare latency under the same, sustainable load.
#   NAME     every target's own peak, and NAME's (one of TARGETS, e.g. haproxy-safe): loads
#            relative to that proxy's capacity (the others may be overloaded above it).
# Knobs: OL_BASE, OL_DURATION (s per run, default 10), OL_CONNS (default 64), OL_LOADS (default
# "50 80 95"), OHA (the binary; installed with `cargo install oha --locked` when missing).

OHA=${OHA:-$(command -v oha || echo "$HOME/.cargo/bin/oha")}
if [[ ! -x $OHA ]]; then
    log "installing oha (cargo install oha --locked)"
    cargo install oha --locked >&2
    OHA=$HOME/.cargo/bin/oha
fi
OL_DURATION=${OL_DURATION:-10}
OL_CONNS=${OL_CONNS:-64}
OL_LOADS=${OL_LOADS:-50 80 95}
OL_BASE=${OL_BASE:-direct}
if [[ $OL_BASE == direct ]]; then
    OL_OUT=$OUT/open-loop
elif [[ $OL_BASE == slowest || " $TARGETS " == *" $OL_BASE "* ]]; then
    OL_OUT=$OUT/open-loop-$OL_BASE
else
    log "open loop: OL_BASE is direct, slowest or one of the targets ($TARGETS), not $OL_BASE"
    exit 2
fi
[[ " $TARGETS " == *" direct "* ]] || { log "open loop: TARGETS must include direct"; exit 2; }
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

# The peaks: direct's alone, or every target's (OL_BASE=slowest); BASE is the lowest measured.
declare -A PEAKS=()
BASE=""
for t in $TARGETS; do
    [[ $OL_BASE == direct && $t != direct ]] && continue
    log "open loop: $t's peak (${OL_DURATION}s, $OL_CONNS connections, as fast as oha goes)"
    oha_run "$OL_OUT/$t-peak.json" "http://127.0.0.1:${PORT[$t]}/small" 0
    read -r peak _ <<<"$(oha_figures "$OL_OUT/$t-peak.json")"
    [[ $peak =~ ^[0-9]+$ ]] || { log "open loop: no peak measured for $t (see $OL_OUT/$t-peak.json)"; exit 1; }
    PEAKS[$t]=$peak
    if [[ $t == "$OL_BASE" || $OL_BASE == direct ]] || [[ $OL_BASE == slowest && (-z $BASE || $peak -lt $BASE) ]]; then
        BASE=$peak BASE_OF=$t
    fi
    sleep "$PAUSE"
done
peaks=""
for t in $TARGETS; do [[ -n ${PEAKS[$t]:-} ]] && peaks+="${peaks:+, }$t ${PEAKS[$t]}"; done
{
    echo "# Open-loop latency"
    echo
    echo "Command: \`OL_BASE=$OL_BASE bash benches/load/run.sh --open-loop\` ($(date -u +%Y-%m-%d); oha $("$OHA" --version | cut -d' ' -f2)," \
        "-q RATE --latency-correction, $OL_CONNS connections, ${OL_DURATION}s per run, 100-byte responses)." \
        "Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Peaks (requests/s, oha as fast as it goes): $peaks. Base: $BASE_OF's, $BASE requests/s." \
        "Latencies in ms, measured from when each request was due; \"p99 / direct's\" is the" \
        "target's p99 over direct's p99 at the same rate."
    echo
    echo "| load | target | rate | achieved req/s | p50 | p99 | p99.9 | p99 / direct's |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|"
} >"$OL_OUT.md.tmp"
for load in $OL_LOADS; do
    rate=$((BASE * load / 100))
    direct_p99=""
    for t in $TARGETS; do
        log "open loop: $t at $load % ($rate req/s)"
        oha_run "$OL_OUT/$t-$load.json" "http://127.0.0.1:${PORT[$t]}/small" "$rate"
        read -r rps p50 p99 p999 <<<"$(oha_figures "$OL_OUT/$t-$load.json")"
        [[ $t == direct ]] && direct_p99=$p99
        ratio=$(awk -v a="$p99" -v b="$direct_p99" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }')
        echo "| $load % | $t | $rate | $rps | $p50 | $p99 | $p999 | $ratio |" >>"$OL_OUT.md.tmp"
        sleep "$PAUSE"
    done
done
mv "$OL_OUT.md.tmp" "$OL_OUT.md"
cat "$OL_OUT.md"
