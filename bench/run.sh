#!/usr/bin/env bash
# make bench: every stage against its ceiling, side by side in one run, on
# this machine. Prints a table and writes it to bench/RESULTS.md.
# Sizes can be lowered for a quick look: BENCH_TRANSFORM_PROFILES=100000 make bench
set -euo pipefail
cd "$(dirname "$0")/.."

T=${TARGET_DIR:-target}
BIN=$T/release/segsync
FLOOR=$T/release/examples/parse_floor
W=bench/work
TRANSFORM_N=${BENCH_TRANSFORM_PROFILES:-1000000}
EXTRACT_N=${BENCH_EXTRACT_PROFILES:-2000}
LOAD_N=${BENCH_LOAD_PROFILES:-55000}
rm -rf "$W" && mkdir -p "$W"
ROWS=()
MEM=()

. bench/lib.sh

# Minimal Segment requests for a default extract of the space the sandbox
# serves: two listing passes (the walk and the re-list that finds nothing
# new), one page of ids per profile, one page of traits per identified one.
minimal_requests() { local n=$1 ident; ident=$(stats | jq .identified_profiles); echo $(( 2 * ((n + 99) / 100) + n + ident )); }

say "== extract, Segment limit 100 requests/s, 150 ms latency, $EXTRACT_N profiles"
start_sandbox --profiles "$EXTRACT_N" --latency-ms 150 --segment-rps 100
measure "$W/e100" "$BIN" --data-dir "$W/e100" extract
REQ=$(seg_requests); T429=$(stats | jq .throttled.segment); IDENT=$(stats | jq .identified_profiles)
MIN=$(minimal_requests "$EXTRACT_N"); MRPP=$(calc "$MIN / $EXTRACT_N" 3)
RPP=$(calc "$REQ / $EXTRACT_N" 3); FIG=$(calc "$EXTRACT_N / $SECS" 1); CEIL=$(calc "100 / $MRPP" 1)
row "extract, 100 req/s, 150 ms latency, $EXTRACT_N profiles ($(calc "100 * $IDENT / $EXTRACT_N" 0)% identified)" "$FIG profiles/s ($RPP requests/profile, $T429 of $REQ requests answered 429)" "$CEIL profiles/s (100 / $MRPP minimal requests/profile)" "$(calc "$FIG / $CEIL")"
FULL_SECS=$SECS; FULL_REQ=$REQ

say "== incremental extract, 1% of profiles changed"
curl -s -X POST "$SEGMENT_API_URL/_sandbox/touch?count=$((EXTRACT_N / 100))" > /dev/null
measure "$W/einc" "$BIN" --data-dir "$W/e100" extract --incremental
INC_REQ=$(( $(seg_requests) - FULL_REQ ))
row "incremental extract, 1% of $EXTRACT_N profiles changed" "$INC_REQ requests, ${SECS} s" "full extract: $FULL_REQ requests, ${FULL_SECS} s" "$(calc "$INC_REQ / $FULL_REQ" 3) of the requests, $(calc "$SECS / $FULL_SECS" 3) of the time"
stop_sandbox

say "== extract of a space where 80% of profiles are anonymous: ids first vs a full copy, side by side"
start_sandbox --profiles "$EXTRACT_N" --latency-ms 150 --segment-rps 100 --anonymous-percent 80
measure "$W/eanon" "$BIN" --data-dir "$W/eanon" extract
A_REQ=$(seg_requests); A_SECS=$SECS; IDENT=$(stats | jq .identified_profiles)
MIN=$(minimal_requests "$EXTRACT_N")
measure "$W/eall" "$BIN" --data-dir "$W/eall" extract --all-traits
F_REQ=$(( $(seg_requests) - A_REQ )); F_SECS=$SECS
SHARE=$(calc "$IDENT / $EXTRACT_N" 3)
row "extract, 80% anonymous space ($IDENT of $EXTRACT_N identified), ids first + include=" "$(calc "$EXTRACT_N / $A_SECS" 1) profiles/s, $(calc "$A_REQ / $EXTRACT_N" 3) requests/profile (goal 1.01 + $SHARE = $(calc "1.01 + $SHARE" 3))" "--all-traits (every trait and id, both lists): $(calc "$EXTRACT_N / $F_SECS" 1) profiles/s, $(calc "$F_REQ / $EXTRACT_N" 3) requests/profile" "$(calc "$F_SECS / $A_SECS")x faster; $(calc "($EXTRACT_N / $A_SECS) / (100 * $EXTRACT_N / $MIN)") of its ceiling ($(calc "100 * $EXTRACT_N / $MIN" 1) profiles/s)"
stop_sandbox

say "== extract given a share of the space's budget: --rate-limit 30, Segment with no limit of its own, 150 ms answers"
start_sandbox --profiles "$EXTRACT_N" --latency-ms 150 --segment-rps 0
measure "$W/e30" "$BIN" --data-dir "$W/e30" extract --rate-limit 30
PACE=$(stats | jq .segment_pace)
P_REQ=$(jq .requests <<<"$PACE"); P_MS=$(jq .span_ms <<<"$PACE"); P_MOST=$(jq .most_in_a_second <<<"$PACE")
P_RATE=$(calc "$P_REQ * 1000 / $P_MS" 1)
row "extract with --rate-limit 30 (the share of the space's 100 req/s it is given)" "$P_RATE req/s from the first request to the last ($P_REQ requests), at most $P_MOST in any second (the sandbox's count)" "30 req/s, the share given" "$(calc "$P_RATE / 30")"
stop_sandbox

N1000=$((EXTRACT_N * 3))
say "== extract, limit raised to 1,000 requests/s, 150 ms latency, $N1000 profiles"
start_sandbox --profiles "$N1000" --latency-ms 150 --segment-rps 1000
measure "$W/e1000" "$BIN" --data-dir "$W/e1000" extract --rate-limit 1000 --concurrency 300
REQ=$(seg_requests); T429=$(stats | jq .throttled.segment)
MIN=$(minimal_requests "$N1000"); MRPP=$(calc "$MIN / $N1000" 3)
FIG=$(calc "$N1000 / $SECS" 1); CEIL=$(calc "1000 / $MRPP" 1)
row "extract, 1,000 req/s, 150 ms latency, $N1000 profiles, --concurrency 300 (the ceiling)" "$FIG profiles/s, $(calc "$REQ / $SECS" 0) requests/s ($T429 of $REQ requests answered 429)" "$CEIL profiles/s (the vendor's limit raised to 1,000 req/s / $MRPP minimal requests per profile)" "$(calc "$FIG / $CEIL")"
stop_sandbox

say "== extract under churn: 100 profiles/s get activity while a $EXTRACT_N-profile space is listed at 100 req/s"
start_sandbox --profiles "$EXTRACT_N" --latency-ms 150 --segment-rps 100 --churn 100
measure "$W/echurn" "$BIN" --data-dir "$W/echurn" extract
LINES=$(wc -l < "$W/echurn/profiles.ndjson"); UNIQ=$(jq -r .segment_id "$W/echurn/profiles.ndjson" | sort -u | wc -l)
LIST=$(stats | jq '.requests["segment.list_profiles"]'); REQ=$(seg_requests)
FOUND=$(grep -o '[0-9]* profiles found by re-listing' "$W/echurn.err" | grep -o '^[0-9]*' || echo '?')
row "extract under churn (100 profiles/s move to the head of the list)" "$LINES lines, $UNIQ distinct profiles of $EXTRACT_N; $FOUND found only by re-listing" "every profile exactly once" "$LIST list calls of $REQ requests ($(calc "100 * $LIST / $REQ" 1)%)"
stop_sandbox

say "== extract, no limit, 150 ms latency: adaptive (ceiling 128) against a fixed 16, side by side"
start_sandbox --profiles "$EXTRACT_N" --latency-ms 150 --segment-rps 0
measure "$W/enol" "$BIN" --data-dir "$W/enol" extract --rate-limit 0
A_NOL=$SECS
measure "$W/enol16" "$BIN" --data-dir "$W/enol16" extract --rate-limit 0 --concurrency 16 --fixed-concurrency
row "extract, no rate limit, 150 ms latency, $EXTRACT_N profiles" "adaptive: $(calc "$EXTRACT_N / $A_NOL" 1) profiles/s" "no vendor limit to set a ceiling; fixed 16 in flight: $(calc "$EXTRACT_N / $SECS" 1) profiles/s" "$(calc "$SECS / $A_NOL")x"
stop_sandbox

say "== extract at 100 req/s at four answer times, fixed 16 against adaptive (bench/concurrency.sh)"
while IFS= read -r r; do ROWS+=("$r"); done < <(BIN="$BIN" W="$W" bash bench/concurrency.sh)

say "== transform, $TRANSFORM_N profiles (generating the file first)"
"$BIN" -q sandbox --profiles "$TRANSFORM_N" --write-profiles "$W/big/profiles.ndjson"
BYTES=$(stat -c %s "$W/big/profiles.ndjson"); MB=$(calc "$BYTES / 1000000" 1)
measure "$W/floor" taskset -c 0 "$FLOOR" "$W/big/profiles.ndjson"; FLOOR_SECS=$SECS
measure "$W/jq" bash -c "jq -r -f bench/transform.jq '$W/big/profiles.ndjson' > '$W/jq.csv'"; JQ_SECS=$SECS; JQ_RSS=$RSS_MB
measure "$W/tr1" taskset -c 0 "$BIN" --data-dir "$W/big" transform --force; TR1_SECS=$SECS
measure "$W/tr" "$BIN" --data-dir "$W/big" transform --force; TR_SECS=$SECS; TR_RSS=$RSS_MB
TR_MBS=$(calc "$MB / $TR_SECS" 1); TR1_MBS=$(calc "$MB / $TR1_SECS" 1); FLOOR_MBS=$(calc "$MB / $FLOOR_SECS" 1); JQ_MBS=$(calc "$MB / $JQ_SECS" 1)
row "transform on 1 core, $TRANSFORM_N profiles ($MB MB)" "$TR1_MBS MB/s" "the slim parse alone on 1 core (examples/parse_floor.rs, segsync's own code: a scale, not a ceiling): $FLOOR_MBS MB/s" "$(calc "$TR1_MBS / $FLOOR_MBS")"
row "transform on $(nproc) cores" "$TR_MBS MB/s ($(calc "$TR_MBS / $(nproc)" 1) MB/s per core), $(calc "$TRANSFORM_N / $TR_SECS" 0) profiles/s, peak RSS $TR_RSS MB" "the slim parse alone on 1 core (segsync's own code, for scale): $FLOOR_MBS MB/s" "$(calc "$TR_MBS / $(nproc) / $FLOOR_MBS") per core"
row "transform vs jq one-liner (bench/transform.jq)" "$TR_MBS MB/s" "jq: $JQ_MBS MB/s, peak RSS $JQ_RSS MB" "$(calc "$JQ_SECS / $TR_SECS" 1)x faster than jq"
rm -f "$W/jq.csv"

say "== load, Voucherify limit 2,000/min, batch 100, serial job queue (customers from $LOAD_N profiles)"
"$BIN" -q sandbox --profiles "$LOAD_N" --write-profiles "$W/load/profiles.ndjson"
"$BIN" -q --data-dir "$W/load" transform
vf_calls() { jq '[.requests | to_entries[] | select(.key | startswith("voucherify.")) | .value] | add' <<<"$1"; }
# Jobs of 200 ms run one at a time: 5 batches a second at most, whatever the rate limit.
QCEIL=$(calc "1000 / 200 * 100" 0); RCEIL=$(calc "2000 / 60 * 100 / 2" 0)
CEIL=$(( QCEIL < RCEIL ? QCEIL : RCEIL ))
start_sandbox --profiles 10 --voucherify-rpm 2000 --processing-ms 200
measure "$W/l100" "$BIN" --data-dir "$W/load" load --rate-limit 2000 --concurrency 8
S=$(stats); SENT=$(jq .customers_received <<<"$S"); POSTS=$(jq '.requests["voucherify.customers_bulk_async"]' <<<"$S"); POLLS=$(jq '.requests["voucherify.async_action"]' <<<"$S"); T429=$(jq .throttled.voucherify <<<"$S")
FIG=$(calc "$SENT / $SECS" 0); PPB=$(calc "$POLLS / $POSTS")
row "load --method bulk, 2,000 requests/min, jobs of 200 ms one at a time, $SENT customers" "$FIG customers/s, $PPB polls per batch (goal 1.2), $T429 answered 429; $(calc "$(vf_calls "$S") * 1000 / $SENT" 1) Voucherify calls per 1,000 customers" "$CEIL customers/s (the queue: 5 jobs of 100 a second; the rate limit would allow $RCEIL)" "$(calc "$FIG / $CEIL")"
BULK_SECS=$SECS; BULK_CALLS=$(vf_calls "$S")
stop_sandbox

say "== the same customers with --method import, same sandbox settings"
rm -f "$W/load/load.ledger.ndjson" "$W/load"/load.import.*.csv "$W/load"/load.export.*
start_sandbox --profiles 10 --voucherify-rpm 2000 --processing-ms 200
measure "$W/limp" "$BIN" --data-dir "$W/load" load --rate-limit 2000 --concurrency 8 --method import
S=$(stats); HELD=$(jq .customers <<<"$S"); IMP=$(jq '.requests["voucherify.customers_import_csv"] // 0' <<<"$S"); POSTS=$(jq '.requests["voucherify.customers_bulk_async"] // 0' <<<"$S")
BYIMP=$(grep -o '[0-9]* customers by import' "$W/limp.err" | grep -o '^[0-9]*' || echo 0)
row "load --method import, same settings, $HELD customers ($BYIMP by $IMP import files; the $(( HELD - BYIMP )) with typed metadata by $POSTS bulk requests)" "$(calc "$(vf_calls "$S") * 1000 / $HELD" 2) Voucherify calls per 1,000 customers (export included)" "--method bulk: $(calc "$BULK_CALLS * 1000 / $HELD" 1) calls per 1,000 (the sandbox charges every job the same time, so its seconds say nothing about Voucherify's)" "$(calc "$BULK_CALLS / $(vf_calls "$S")" 1)x fewer calls"
stop_sandbox

SPARSE_N=${BENCH_SPARSE_CUSTOMERS:-50000}
say "== a first migration of $SPARSE_N customers with sparse metadata: --method import and --method bulk, calls"
mkdir -p "$W/sparse"
awk -v n="$SPARSE_N" 'BEGIN { print "source_id,name,email,metadata"; for (i = 0; i < n; i++) {
  m = (i % 2 == 0) ? "" : (i % 4 == 1 ? "\"{\"\"plan\"\":\"\"gold\"\"}\"" : "\"{\"\"plan\"\":\"\"free\"\",\"\"region\"\":\"\"eu\"\"}\"");
  printf "s%06d,Name %d,s%d@example.com,%s\n", i, i, i, m } }' > "$W/sparse/customers.csv"
for method in import bulk; do
  rm -rf "$W/sparse/$method" && mkdir -p "$W/sparse/$method" && cp "$W/sparse/customers.csv" "$W/sparse/$method/"
  start_sandbox --profiles 10 --voucherify-rpm 0 --processing-ms 20
  measure "$W/sparse-$method" "$BIN" --data-dir "$W/sparse/$method" load --concurrency 8 --method "$method"
  S=$(stats); HELD=$(jq .customers <<<"$S")
  [[ $HELD -eq $SPARSE_N ]] || { say "sparse $method: $HELD of $SPARSE_N held"; exit 1; }
  eval "SPARSE_${method^^}=$(vf_calls "$S")"
  stop_sandbox
done
row "first migration, $SPARSE_N new customers, half without metadata (into an empty project)" "--method import: $(calc "$SPARSE_IMPORT * 1000 / $SPARSE_N" 2) Voucherify calls per 1,000 customers (export, files of one column set each, polls)" "--method bulk: $(calc "$SPARSE_BULK * 1000 / $SPARSE_N" 1) calls per 1,000 (a request and a poll per 100)" "$(calc "$SPARSE_BULK / $SPARSE_IMPORT" 1)x fewer calls; time is not compared (no per-row cost model of Voucherify's jobs is known)"
rm -rf "$W/sparse"

say "== load under the same queue with explicit nulls in async actions"
start_sandbox --profiles 10 --voucherify-rpm 0 --processing-ms 100 --null-fields
measure "$W/lnull" "$BIN" --data-dir "$W/load" load --full --concurrency 8
S=$(stats); POSTS=$(jq '.requests["voucherify.customers_bulk_async"]' <<<"$S"); POLLS=$(jq '.requests["voucherify.async_action"]' <<<"$S"); HELD=$(jq .customers <<<"$S")
row "load, no rate limit, jobs of 100 ms one at a time, null fields" "$(calc "$POLLS / $POSTS") polls per batch, $HELD customers held" "$(calc "$POSTS * 0.1" 1) s of queue time (1 poll per batch)" "$(calc "$POSTS * 0.1 / $SECS") of the queue-bound speed"
stop_sandbox

say "== micro-benchmarks of the hot paths (criterion, benches/hot_paths.rs)"
MICRO=$(cargo bench -q --bench hot_paths -- --warm-up-time 1 --measurement-time 3 2>/dev/null | awk '
  /^per 1000 profiles\// { name = substr($0, 19); seen = 0 }
  /change:/ { seen = 1 }
  /time:/ && !seen { t = $4 " " $5 }
  /thrpt:/ && !seen { printf "| %s | %s | %s %s |\n", name, t, $4, $5; seen = 1 }')
say "$MICRO"

say "== peak memory per stage at 10,000 and 100,000 profiles"
for N in 10000 100000; do
  start_sandbox --profiles "$N" --segment-rps 0 --voucherify-rpm 0 --processing-ms 50
  measure "$W/m$N-e" "$BIN" --data-dir "$W/m$N" extract --rate-limit 0 --concurrency 32; E=$RSS_MB
  measure "$W/m$N-t" "$BIN" --data-dir "$W/m$N" transform; T=$RSS_MB
  measure "$W/m$N-l" "$BIN" --data-dir "$W/m$N" load --concurrency 8; L=$RSS_MB
  MEM+=("| $N | $E MB | $T MB | $L MB |")
  say "  $N profiles: extract $E MB, transform $T MB, load $L MB"
  stop_sandbox
done

{
  echo "# segsync benchmarks"
  echo
  echo "Measured by \`make bench\` (bench/run.sh) on $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM; release build; sandbox and segsync on the same machine."
  echo
  echo "| scenario | figure | ceiling | ratio |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Hot paths per 1,000 generated profiles (criterion medians, \`benches/hot_paths.rs\`):"
  echo
  echo "| step | time | throughput |"
  echo "|---|---|---|"
  echo "$MICRO"
  echo
  echo "Peak resident memory (\`/usr/bin/time\`):"
  echo
  echo "| profiles | extract | transform | load |"
  echo "|---|---|---|---|"
  printf '%s\n' "${MEM[@]}"
} > bench/RESULTS.md
stop_sandbox
# Profiles Sync (bench/profiles_sync.sh), the plan (bench/plan.sh) and the
# pipelined run (bench/pipeline.sh) write
# their own sections.
bash bench/profiles_sync.sh
bash bench/plan.sh
bash bench/pipeline.sh
cat bench/RESULTS.md
