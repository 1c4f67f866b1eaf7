#!/usr/bin/env bash
# Extract at Segment's 100 requests/s at four answer times, each with a slow
# tail (1% of answers at 5x the median): fixed 16 profiles in flight against
# the adaptive controller, side by side in one run. Writes
# bench/concurrency.tsv and bench/concurrency.svg; prints Markdown rows.
# Called by bench/run.sh; BIN and W come from there (or the defaults below).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/segsync}
W=${W:-bench/work}
N=${BENCH_CONCURRENCY_PROFILES:-${BENCH_EXTRACT_PROFILES:-2000}}
mkdir -p "$W"
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
say() { printf '%s\n' "$*" >&2; }

SB=
stop() { [[ -n $SB ]] && kill "$SB" 2>/dev/null && wait "$SB" 2>/dev/null; SB=; return 0; }
trap stop EXIT

# name median_ms jitter
LATENCIES=("40 ms|40|0.2" "150 ms|150|0.1" "150-250 ms|200|0.25" "400-600 ms|500|0.2")
TSV=bench/concurrency.tsv
printf 'latency\tmedian_ms\tstrategy\trequests_per_s\tprofiles_per_s\tshare_429\tconcurrency\tprofiles\thedged\n' > "$TSV"
for l in "${LATENCIES[@]}"; do
  IFS='|' read -r name median jitter <<< "$l"
  for strategy in fixed-16 adaptive; do
    "$BIN" sandbox --profiles "$N" --latency-ms "$median" --latency-jitter "$jitter" \
      --slow-tail-share 0.01 --slow-tail-factor 5 --segment-rps 100 > "$W/c.env" 2> "$W/c.log" &
    SB=$!
    for _ in $(seq 1 100); do grep -q VOUCHERIFY_SECRET_KEY "$W/c.env" 2>/dev/null && break; sleep 0.1; done
    set -a; . "$W/c.env"; set +a
    flags=()
    [[ $strategy == fixed-16 ]] && flags=(--concurrency 16 --fixed-concurrency)
    rm -rf "$W/c"
    start=$(date +%s.%N)
    "$BIN" -vv --data-dir "$W/c" extract "${flags[@]}" > "$W/c.out" 2> "$W/c.err"
    secs=$(calc "$(date +%s.%N) - $start" 3)
    stats=$(curl -s "$SEGMENT_API_URL/_sandbox/stats")
    req=$(jq '[.requests["segment.list_profiles","segment.traits","segment.external_ids"] // 0] | add' <<< "$stats")
    # Hedged reads (a slow last answer asked again) are not counted as use
    # of the budget: requests/s is the requests the work needed, per second.
    hedged=$(grep -o '[0-9]* of them hedged' "$W/c.err" | grep -o '^[0-9]*' || echo 0)
    req=$(( req - hedged ))
    t429=$(jq .throttled.segment <<< "$stats")
    lines=$(wc -l < "$W/c/profiles.ndjson")
    [[ $lines -eq $N ]] || { say "extract wrote $lines of $N profiles"; exit 1; }
    # The concurrency the controller settled on: its last change.
    conc=$(grep -o 'concurrency [0-9]* -> [0-9]*' "$W/c.err" | tail -1 | awk '{print $4}' || true)
    [[ $strategy == fixed-16 ]] && conc=16
    [[ -n $conc ]] || conc=16
    rps=$(calc "$req / $secs" 1); pps=$(calc "$N / $secs" 1); share=$(calc "$t429 / $req" 4)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$median" "$strategy" "$rps" "$pps" "$share" "$conc" "$lines" "$hedged" >> "$TSV"
    say "  $name, $strategy: $rps requests/s ($(calc "$rps / 100") of the limit), $pps profiles/s, $t429 of $req answered 429, concurrency $conc, $hedged hedged"
    stop
  done
done
python3 bench/plot_concurrency.py "$TSV" bench/concurrency.svg
# Markdown rows for RESULTS.md: fixed vs adaptive at each latency.
awk -F'\t' 'NR > 1 { key = $1; if ($3 == "fixed-16") { f[key] = $4; fp[key] = $5 } else { a[key] = $4; ap[key] = $5; s[key] = $6; c[key] = $7; h[key] = $9; order[++n] = key } }
  END { for (i = 1; i <= n; i++) { k = order[i];
    printf "| extract at 100 req/s, %s answers (1%% at 5x) | adaptive: %s req/s (%.2f of the limit; %s slow last reads hedged, not counted), %s profiles/s, %.2f%% answered 429, settled at %s in flight | fixed 16: %s req/s, %s profiles/s | %.2fx |\n",
      k, a[k], a[k] / 100, h[k], ap[k], 100 * s[k], c[k], f[k], fp[k], a[k] / f[k] } }' "$TSV"
