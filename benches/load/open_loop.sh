# Open-loop latency (issue 14, item 3): sourced by `bash benches/load/run.sh --open-loop` once
# the origins and the proxies are up (their ports, OTHER_CPU, log and TMP come from run.sh).
#
# wrk is closed-loop: a slow response delays the requests behind it, so they are never sent
# late and their wait is never measured (coordinated omission). oha sends at a fixed rate
# (-q) and with --latency-correction measures each latency from when the request was due.
# First the base rate (oha as fast as it goes, OL_CONNS connections), then OL_LOADS percent of
# it for every target in turn, OL_ROUNDS interleaved rounds per load: medians of p50 / p99 /
# p99.9 per target and load in one table, and of each round's ratio of a target's p99 to
# direct's, results/open-loop.md (+ the oha JSON under results/open-loop/;
# results/open-loop-BASE.md and -BASE/ for another base). The base (OL_BASE):
#   direct   direct-to-origin's peak (the default, as the issue states the target). On a machine
#            where the generator, the origins and the proxy share two cores, upkeep's peak is
#            about half of direct's and the other proxies' below it, so every proxied row is
#            at or over its peak from 50 % on.
#   slowest  every target's own peak, and the lowest of them: at loads up to 100 % no target
#            is offered more than its own closed-loop peak, and the rows compare latency at the same offered load
#            (near its peak, a target still queues: a closed-loop peak is not a rate it can
#            hold open-loop).
#   NAME     every target's own peak, and NAME's (one of TARGETS, e.g. haproxy-safe): loads
#            relative to that proxy's capacity (the others may be overloaded above it).
# Knobs: OL_BASE, OL_ROUNDS (default 1), OL_DURATION (s per run, default 10), OL_CONNS (default
# 64), OL_LOADS (default "50 80 95"), OHA (the binary; installed with `cargo install oha
# --locked` when missing).

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
OL_ROUNDS=${OL_ROUNDS:-1}
for load in $OL_LOADS; do
    [[ $load =~ ^[1-9][0-9]*$ ]] || { log "open loop: OL_LOADS are whole percentages, not $load"; exit 2; }
done
[[ $OL_ROUNDS =~ ^[1-9][0-9]*$ ]] || { log "open loop: OL_ROUNDS is a count of rounds, not $OL_ROUNDS"; exit 2; }
if [[ $OL_BASE =~ [[:space:]] || -z $OL_BASE ]]; then
    log "open loop: OL_BASE names one base (direct, slowest or a target), not '$OL_BASE'"
    exit 2
elif [[ $OL_BASE == direct ]]; then
    OL_OUT=$OUT/open-loop
elif [[ $OL_BASE == slowest || " $TARGETS " == *" $OL_BASE "* ]]; then
    OL_OUT=$OUT/open-loop-$OL_BASE
else
    log "open loop: OL_BASE is direct, slowest or one of the targets ($TARGETS), not $OL_BASE"
    exit 2
fi
[[ " $TARGETS " == *" direct "* ]] || { log "open loop: TARGETS must include direct"; exit 2; }
mkdir -p "$OL_OUT"
rm -f "$OL_OUT"/*.json # an earlier run's files (other rounds, other targets) would mix in

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
# (A peak the base does not need is reported, and may fail, without stopping the run.)
declare -A PEAKS=()
BASE="" BASE_OF=""
for t in $TARGETS; do
    [[ $OL_BASE == direct && $t != direct ]] && continue
    log "open loop: $t's peak (${OL_DURATION}s, $OL_CONNS connections, as fast as oha goes)"
    oha_run "$OL_OUT/$t-peak.json" "http://127.0.0.1:${PORT[$t]}/small" 0
    read -r peak _ <<<"$(oha_figures "$OL_OUT/$t-peak.json")"
    sleep "$PAUSE"
    if ! [[ $peak =~ ^[0-9]+$ ]] || ((peak == 0)); then
        log "open loop: no peak measured for $t (see $OL_OUT/$t-peak.json)"
        [[ $OL_BASE == slowest || $OL_BASE == "$t" || $OL_BASE == direct ]] && exit 1
        PEAKS[$t]="-"
        continue
    fi
    PEAKS[$t]=$peak
    if [[ $t == "$OL_BASE" || $OL_BASE == direct ]] || [[ $OL_BASE == slowest && (-z $BASE || $peak -lt $BASE) ]]; then
        BASE=$peak BASE_OF=$t
    fi
done
peaks=""
for t in $TARGETS; do [[ -n ${PEAKS[$t]:-} ]] && peaks+="${peaks:+, }$t ${PEAKS[$t]}"; done
{
    echo "# Open-loop latency"
    echo
    echo "Command: \`OL_BASE=$OL_BASE OL_ROUNDS=$OL_ROUNDS OL_DURATION=$OL_DURATION OL_CONNS=$OL_CONNS OL_LOADS=\"$OL_LOADS\" TARGETS=\"$TARGETS\" bash benches/load/run.sh --open-loop\` ($(date -u +%Y-%m-%d); oha $("$OHA" --version | cut -d' ' -f2)," \
        "-q RATE --latency-correction, $OL_CONNS connections, ${OL_DURATION}s per run, $OL_ROUNDS interleaved round(s) per load, 100-byte responses)." \
        "Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Peaks (requests/s, oha as fast as it goes): $peaks. Base: $BASE_OF's, $BASE requests/s." \
        "Latencies in ms, measured from when each request was due; medians over the rounds;" \
        "\"p99 / direct's\" is the median of the per-round ratios of the target's p99 to direct's" \
        "at the same rate (per round in brackets)."
    echo
    echo "| load | target | rate | achieved req/s | p50 | p99 | p99.9 | p99 / direct's |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|"
} >"$OL_OUT.md.tmp"
declare -A RPS=() P50=() P99=() P999=() RATIOS=()
for load in $OL_LOADS; do
    rate=$((BASE * load / 100))
    # (Rate 0 would be oha's closed loop, as fast as it goes.)
    ((rate > 0)) || { log "open loop: $load % of $BASE requests/s is no rate; skipped"; continue; }
    for round in $(seq 1 "$OL_ROUNDS"); do
        declare -A round_p99=()
        for t in $TARGETS; do
            log "open loop: $t at $load % ($rate req/s), round $round of $OL_ROUNDS"
            json=$OL_OUT/$t-$load.json
            ((OL_ROUNDS > 1)) && json=$OL_OUT/$t-$load-r$round.json
            oha_run "$json" "http://127.0.0.1:${PORT[$t]}/small" "$rate"
            read -r rps p50 p99 p999 <<<"$(oha_figures "$json")"
            k="$load|$t"
            RPS[$k]="${RPS[$k]:-} $rps" P50[$k]="${P50[$k]:-} $p50"
            P99[$k]="${P99[$k]:-} $p99" P999[$k]="${P999[$k]:-} $p999"
            round_p99[$t]=$p99
            sleep "$PAUSE"
        done
        # Each target's p99 over direct's in the same round.
        for t in $TARGETS; do
            ratio=$(awk -v a="${round_p99[$t]}" -v b="${round_p99[direct]}" \
                'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }')
            RATIOS["$load|$t"]="${RATIOS["$load|$t"]:-} $ratio"
        done
    done
    for t in $TARGETS; do
        k="$load|$t"
        ratio=$(median %.2f <<<"${RATIOS[$k]}")
        # Per round in brackets when there are several.
        ((OL_ROUNDS > 1)) && [[ $t != direct ]] && ratio+=" ($(echo ${RATIOS[$k]} | sed 's/ /, /g'))"
        echo "| $load % | $t | $rate | $(median %d <<<"${RPS[$k]}") | $(median %.2f <<<"${P50[$k]}") |" \
            "$(median %.2f <<<"${P99[$k]}") | $(median %.2f <<<"${P999[$k]}") | $ratio |" >>"$OL_OUT.md.tmp"
    done
done
mv "$OL_OUT.md.tmp" "$OL_OUT.md"
cat "$OL_OUT.md"
