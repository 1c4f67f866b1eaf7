#!/usr/bin/env bash
# The plan's figures (issue 22), written into bench/RESULTS.md between the
# "plan" markers; make bench runs it last, and it runs alone too:
#   bash bench/plan.sh              (after cargo build --release)
# 1. `segsync plan` time and peak RSS at 100,000 and 1,000,000 customers the
#    project already holds (loaded by import first, so the ledger is real),
#    and the comparison alone against DuckDB on the same two files, five runs
#    each, alternating, medians (DuckDB's query timed in-process, and its
#    whole process)
#    (bench/duckdb_plan.sql).
# 2. Voucherify calls of a rerun by the ledger (`load --from-ledger`, what
#    load did before plans) and by a plan (`load`), side by side from the
#    same state: nothing changed; 1% renamed by another writer; 1% changed
#    in Segment (customers.csv).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import duckdb' 2>/dev/null || { echo "installing duckdb (a bench dependency) with pip" >&2; pip install -q duckdb; }

T=${TARGET_DIR:-target}
BIN=$T/release/segsync
W=bench/work/plan
SIZES=${BENCH_PLAN_SIZES:-100000 1000000}
CALLS_N=${BENCH_PLAN_CALLS_CUSTOMERS:-100000}
rm -rf "$W" && mkdir -p "$W"
ROWS=()
. bench/lib.sh

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
vf_calls() { stats | jq '[.requests | to_entries[] | select(.key | startswith("voucherify.")) | .value] | add // 0'; }
received() { stats | jq '.customers_received // 0'; }

# customers N FILE: name, email and a metadata key the schema defines.
customers() {
  awk -v n="$1" 'BEGIN { print "source_id,name,email,metadata"; for (i = 0; i < n; i++)
    printf "p%07d,Name %d,p%d@example.com,\"{\"\"tier\"\":\"\"t%d\"\"}\"\n", i, i, i, i % 5 }' > "$2"
}
echo '{"properties": {"tier": {"type": "string"}}}' > "$W/schema.json"

# A project holding the N customers of DIR/customers.csv, loaded by import
# as a user loads (a plan, then the read-back, which proves the project's
# deltas: issue 43).
project() {
  local dir=$1
  start_sandbox --profiles 10 --voucherify-rpm 0 --processing-ms 5 --metadata-schema "$W/schema.json"
  "$BIN" -q --data-dir "$dir" load --method import > /dev/null 2> "$dir/first.err" || { cat "$dir/first.err" >&2; exit 1; }
}

for N in $SIZES; do
  say "== segsync plan against a project holding $N customers"
  D=$W/size$N && mkdir -p "$D" && customers "$N" "$D/customers.csv"
  project "$D"
  HELD=$(stats | jq .customers)
  [[ $HELD -eq $N ]] || { say "the project holds $HELD of $N"; exit 1; }
  BEFORE=$(vf_calls)
  measure "$D/plan" "$BIN" --data-dir "$D" plan
  CALLS=$(( $(vf_calls) - BEFORE ))
  UNCH=$(grep -o '[0-9]* unchanged' "$D/plan.err" | head -1 | grep -o '^[0-9]*')
  [[ $UNCH -eq $N ]] || { say "plan: $UNCH of $N unchanged"; cat "$D/plan.err" >&2; exit 1; }
  EXPORT_MB=$(du -m "$D/load.export.csv" | cut -f1)
  PLAN_SECS=$SECS PLAN_RSS=$RSS_MB
  # The comparison alone, against DuckDB on the same two files.
  cp "$D/load.export.csv" "$D/held.csv"
  # Five runs each, alternating; medians.
  S_ALL=() S_MEM=() D_ALL=() D_MEM=() Q_ALL=()
  for _ in 1 2 3 4 5; do
    measure "$D/planfile" "$BIN" --data-dir "$D" plan --export-file "$D/held.csv"; S_ALL+=("$SECS") S_MEM+=("$RSS_MB")
    measure "$D/duck" python3 bench/duckdb_plan.py "$D"; D_ALL+=("$SECS") D_MEM+=("$RSS_MB") Q_ALL+=("$(cat "$D/duck.secs")")
  done
  S_SECS=$(median "${S_ALL[@]}") S_RSS=$(median "${S_MEM[@]}") D_SECS=$(median "${D_ALL[@]}") D_RSS=$(median "${D_MEM[@]}") Q_SECS=$(median "${Q_ALL[@]}")
  DIFF=$(( $(wc -l < "$D/duck.diff.csv") - 1 ))
  [[ $DIFF -eq 0 ]] || { say "DuckDB found $DIFF differences where segsync found none"; exit 1; }
  # segsync's time is its whole process; DuckDB's is given both ways: the
  # whole process (Python's start-up and DuckDB's import included) and its
  # query alone, timed in-process (the stricter peer, which the ratio uses).
  row "segsync plan, $N customers held, none changed, right after the load that wrote them (a delta from the load's read-back less a minute's margin, by updated_at and by created_at: what the load wrote in its last minute, twice)" "with the export ($EXPORT_MB MB): $PLAN_SECS s, peak RSS $PLAN_RSS MB, $CALLS Voucherify calls; comparing the files alone (--export-file): $S_SECS s, peak RSS $S_RSS MB" "DuckDB on the same two files (bench/duckdb_plan.sql, no ledger): its query $Q_SECS s in-process, $D_SECS s the whole process; peak RSS $D_RSS MB" "$(calc "$Q_SECS / $S_SECS")x the speed of DuckDB's query ($(calc "$D_SECS / $S_SECS")x its whole process), $(calc "$S_RSS / $D_RSS") of its memory"
  # The issue's own files: the export with 1% renamed and its rows
  # shuffled. Both tools must find the same 1%.
  python3 - "$D/load.export.csv" "$D/held.csv" <<'PY'
import random, sys
lines = open(sys.argv[1]).readlines()
head, rows = lines[0], lines[1:]
random.seed(7)
random.shuffle(rows)
rows = [r.replace("Name ", "Renamed ", 1) if i % 100 == 0 else r for i, r in enumerate(rows)]
open(sys.argv[2], "w").write(head + "".join(rows))
PY
  mkdir -p "$D/renamed" && cp "$D/customers.csv" "$D/renamed/" && cp "$D/held.csv" "$D/renamed/load.export.csv"
  S_ALL=() S_MEM=() D_ALL=() D_MEM=() Q_ALL=()
  for _ in 1 2 3 4 5; do
    measure "$D/planfile" "$BIN" --data-dir "$D" plan --export-file "$D/held.csv"; S_ALL+=("$SECS") S_MEM+=("$RSS_MB")
    measure "$D/duck" python3 bench/duckdb_plan.py "$D/renamed"; D_ALL+=("$SECS") D_MEM+=("$RSS_MB") Q_ALL+=("$(cat "$D/renamed/duck.secs")")
  done
  S_SECS=$(median "${S_ALL[@]}") S_RSS=$(median "${S_MEM[@]}") D_SECS=$(median "${D_ALL[@]}") D_RSS=$(median "${D_MEM[@]}") Q_SECS=$(median "${Q_ALL[@]}")
  DIFF=$(( $(wc -l < "$D/renamed/duck.diff.csv") - 1 ))
  UPDATES=$(grep -o '[0-9]* to update' "$D/planfile.err" | grep -o '^[0-9]*')
  [[ $DIFF -eq $(( N / 100 )) && $UPDATES -eq $DIFF ]] || { say "1% renamed: DuckDB found $DIFF, segsync $UPDATES, of $(( N / 100 ))"; exit 1; }
  row "segsync plan, $N customers held, 1% renamed elsewhere, the export's rows shuffled" "comparing the files alone (--export-file): $S_SECS s, peak RSS $S_RSS MB; $UPDATES updates found" "DuckDB on the same two files: its query $Q_SECS s in-process, $D_SECS s the whole process; peak RSS $D_RSS MB; $DIFF rows differ" "$(calc "$Q_SECS / $S_SECS")x the speed of DuckDB's query ($(calc "$D_SECS / $S_SECS")x its whole process), $(calc "$S_RSS / $D_RSS") of its memory"
  stop_sandbox
  rm -rf "$D"
done

# rerun SCENARIO STRATEGY: a fresh project of CALLS_N customers, the change,
# then one load; sets CALLS, SENT and DRIFT (renamed customers still renamed).
rerun() {
  local scenario=$1 strategy=$2 D=$W/$1-$2
  mkdir -p "$D" && cp "$W/customers.csv" "$D/"
  project "$D"
  RENAMED=()
  case $scenario in
    renamed)
      for i in $(seq 0 100 $(( CALLS_N - 1 ))); do RENAMED+=("$(printf 'p%07d' "$i")"); done
      printf '%s\n' "${RENAMED[@]}" | xargs -P 8 -I{} curl -s -o /dev/null -X POST \
        -H 'content-type: application/json' -d '{"name": "Renamed elsewhere"}' "$VOUCHERIFY_API_URL/_sandbox/customers/{}" ;;
    edited)
      awk -F, 'NR > 1 && (NR - 2) % 100 == 0 { sub(/^Name /, "Name changed ", $2) } { print }' OFS=, "$W/customers.csv" > "$D/customers.csv" ;;
  esac
  local calls0 sent0; calls0=$(vf_calls); sent0=$(received)
  local flags=(); [[ $strategy == ledger ]] && flags=(--from-ledger)
  "$BIN" -q --data-dir "$D" load "${flags[@]}" > /dev/null 2> "$D/load.err" || { cat "$D/load.err" >&2; exit 1; }
  CALLS=$(( $(vf_calls) - calls0 )); SENT=$(( $(received) - sent0 ))
  DRIFT=$(curl -s "$VOUCHERIFY_API_URL/_sandbox/customers" | jq '[.customers[] | select(.name == "Renamed elsewhere")] | length')
  stop_sandbox
  rm -rf "$D"
}

say "== reruns of $CALLS_N customers, by the ledger and by a plan"
customers "$CALLS_N" "$W/customers.csv"
for scenario in "nothing changed|same" "1% renamed in Voucherify by another writer|renamed" "1% changed in Segment (customers.csv)|edited"; do
  IFS='|' read -r WHAT KEY <<< "$scenario"
  rerun "$KEY" ledger; L_CALLS=$CALLS L_SENT=$SENT L_DRIFT=$DRIFT
  rerun "$KEY" plan; P_CALLS=$CALLS P_SENT=$SENT P_DRIFT=$DRIFT
  row "rerun of $CALLS_N customers, $WHAT" "load (plan): $P_CALLS Voucherify calls, $P_SENT customers sent, $P_DRIFT left renamed" "load --from-ledger: $L_CALLS calls, $L_SENT sent, $L_DRIFT left renamed" "$(( P_CALLS - L_CALLS )) calls more, $(( L_DRIFT - P_DRIFT )) more customers set right"
done

# A plan's rerun after another writer renamed 1%: a delta export (customers
# updated since the kept export) against a full one, from the same state.
# Both plans must be the same file and find every renamed customer.
say "== a plan's rerun after 1% renamed elsewhere: delta export against full"
D=$W/delta && mkdir -p "$D" && cp "$W/customers.csv" "$D/"
project "$D"
# The kept export's snapshot is its creation less a minute for clocks
# (docs/DESIGN.md): a delta right after the load would hold the whole load.
sleep 61
"$BIN" -q --data-dir "$D" plan 2> "$D/first.err" || { cat "$D/first.err" >&2; exit 1; }
for i in $(seq 0 100 $(( CALLS_N - 1 ))); do printf 'p%07d\n' "$i"; done | xargs -P 8 -I{} curl -s -o /dev/null -X POST \
  -H 'content-type: application/json' -d '{"name": "Renamed elsewhere"}' "$VOUCHERIFY_API_URL/_sandbox/customers/{}"
RENAMED_N=$(( (CALLS_N + 99) / 100 ))
rows_of() { echo $(( $(wc -l < "$1") - 1 )); }
plan_once() { # FLAGS...: sets CALLS, UPDATES; keeps the plan as $D/plan.$KIND.csv
  local c0; c0=$(vf_calls)
  measure "$D/$KIND" "$BIN" --data-dir "$D" plan "$@"
  CALLS=$(( $(vf_calls) - c0 ))
  UPDATES=$(grep -o '[0-9]* to update' "$D/$KIND.err" | grep -o '^[0-9]*')
  [[ $UPDATES -eq $RENAMED_N ]] || { say "plan ($KIND) found $UPDATES of $RENAMED_N renamed"; exit 1; }
  cp "$D/load.plan.csv" "$D/plan.$KIND.csv"
}
KIND=delta plan_once; DELTA_CALLS=$CALLS DELTA_SECS=$SECS DELTA_ROWS=$(rows_of "$D/load.export.delta.csv")
grep -q 'a delta export' "$D/delta.err" || { say "the rerun did not take a delta export"; cat "$D/delta.err" >&2; exit 1; }
KIND=full plan_once --full-export; FULL_CALLS=$CALLS FULL_SECS=$SECS FULL_ROWS=$(rows_of "$D/load.export.csv")
cmp -s "$D/plan.delta.csv" "$D/plan.full.csv" || { say "the plans from a delta and from a full export differ"; diff "$D/plan.delta.csv" "$D/plan.full.csv" | head >&2; exit 1; }
row "plan's rerun, $CALLS_N customers held, 1% renamed elsewhere" "delta export: $DELTA_ROWS customers exported, $DELTA_CALLS Voucherify calls, $DELTA_SECS s; $RENAMED_N updates found" "full export (--full-export): $FULL_ROWS customers exported, $FULL_CALLS calls, $FULL_SECS s; the same plan, byte for byte" "$(calc "100 * $DELTA_ROWS / $FULL_ROWS")% of the rows"
stop_sandbox

# The first three runs of a new project (issue 46): a first load into an
# empty project, a rerun after 1% changed in Segment, a rerun with nothing
# changed; the customers each run's exports brought, and its calls. A
# delta of an empty kept export is the whole state: never a second full
# export. (Runs a day apart: the snapshot's margin, a minute, is 1 s here.)
say "== the first three runs of a new project"
start_sandbox --profiles 10 --voucherify-rpm 0 --processing-ms 5 --metadata-schema "$W/schema.json"
D=$W/new && mkdir -p "$D" && customers "$CALLS_N" "$D/customers.csv"
exported() { stats | jq '.export_rows_downloaded'; }
RUNS3=()
for RUN in 1 2 3; do
  [[ $RUN == 2 ]] && awk -F, 'NR > 1 && (NR - 2) % 100 == 0 { sub(/^Name /, "Name changed ", $2) } { print }' OFS=, "$W/customers.csv" > "$D/customers.csv"
  c0=$(vf_calls); e0=$(exported); s0=$(received)
  SEGSYNC_SNAPSHOT_MARGIN_SECS=1 "$BIN" -q --data-dir "$D" load --method import > /dev/null 2> "$D/run$RUN.err" || { cat "$D/run$RUN.err" >&2; exit 1; }
  RUNS3+=("run $RUN: $(( $(exported) - e0 )) customers exported, $(( $(vf_calls) - c0 )) calls, $(( $(received) - s0 )) received by Voucherify")
  sleep 2
done
ROWS1=$(echo "${RUNS3[0]}" | grep -o '^run 1: [0-9]*' | grep -o '[0-9]*$')
ROWS23=$(( $(echo "${RUNS3[1]}" | grep -o '^run 2: [0-9]*' | grep -o '[0-9]*$') + $(echo "${RUNS3[2]}" | grep -o '^run 3: [0-9]*' | grep -o '[0-9]*$') ))
row "the first three runs of a new project, $CALLS_N customers by --method import" "$(IFS=';'; echo "${RUNS3[*]}" | sed 's/;/; /g')" "a full export every run: $CALLS_N customers each, $(( 3 * CALLS_N )) in all" "$(calc "100 * ($ROWS1 + $ROWS23) / (3 * $CALLS_N)")% of the rows; the reruns $ROWS23 in all (a delta starts a margin, 1 s here, before the kept export: run 2 exports again what run 1 wrote in its last second, by updated_at and by created_at)"
stop_sandbox

# Polls while an export runs: the sandbox's export takes a minute, then
# five (`--export-ms`); a plan's calls are the schema read, the export's
# creation, its polls and its download.
for MINUTES in ${BENCH_PLAN_EXPORT_MINUTES:-1 5}; do
  say "== a plan whose export takes $MINUTES minute(s)"
  D=$W/slow$MINUTES && mkdir -p "$D" && customers 10 "$D/customers.csv"
  start_sandbox --profiles 10 --voucherify-rpm 0 --processing-ms 5 --export-ms $(( MINUTES * 60000 )) --metadata-schema "$W/schema.json"
  C0=$(vf_calls)
  measure "$D/plan" "$BIN" --data-dir "$D" plan --export-timeout $(( MINUTES * 60 + 120 ))
  CALLS=$(( $(vf_calls) - C0 ))
  row "plan, an export taking $MINUTES min" "$CALLS Voucherify calls ($(( CALLS - 3 )) polls), $SECS s" "the schema read, the export's creation and its download: 3 calls" "$(calc "$SECS / ($MINUTES * 60)")x the export's time"
  stop_sandbox
done
rm -rf "$W"

SECTION=$(
  echo "<!-- plan -->"
  echo "## segsync plan"
  echo
  echo "Measured by \`bench/plan.sh\` (run by \`make bench\`) on $(date -u +%Y-%m-%d), $(nproc) cores; release build; sandbox on the same machine, its jobs taking 5 ms. A plan's calls: the schema read, the export request, its polls and its download."
  echo
  echo "| scenario | figure | compared with | difference |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo "<!-- /plan -->"
)
write_section plan "$SECTION"
say "bench/plan.sh: wrote its section of bench/RESULTS.md"
