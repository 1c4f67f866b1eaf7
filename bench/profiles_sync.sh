#!/usr/bin/env bash
# Profiles Sync figures (issue 21), written into bench/RESULTS.md between the
# "profiles-sync" markers; make bench runs it, and it runs alone too:
#   bash bench/profiles_sync.sh        (after cargo build --release)
# 1. `extract --from profiles-sync` against DuckDB (bench/duckdb_profiles.sql,
#    the same work) on the same unloads: 100,000 and 1,000,000 profiles, two
#    shapes of a warehouse's unload, rows shuffled in both: four parts of one
#    huge row group each, and many small parts of small row groups. Each
#    tool runs 3 times, alternating; the medians are reported. The outputs
#    are compared profile by profile (bench/compare_profiles.py).
# 2. Extract over transform of the same profiles, and gzipped CSV parts
#    against Parquet, at 100,000 profiles.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import duckdb, pyarrow' 2>/dev/null || { echo "installing duckdb and pyarrow (bench dependencies) with pip" >&2; pip install -q duckdb pyarrow; }

T=${TARGET_DIR:-target}
BIN=$T/release/segsync
W=bench/work/profiles-sync
SIZES=${BENCH_SYNC_SIZES:-100000 1000000}
RUNS=${BENCH_SYNC_RUNS:-3}
rm -rf "$W" && mkdir -p "$W"
ROWS=()
. bench/lib.sh

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# versus DIR: RUNS alternating runs of each tool on DIR/unload; sets S_SECS,
# S_RSS, D_SECS, D_RSS (medians).
versus() {
  local dir=$1 s=() sr=() d=() dr=()
  for _ in $(seq 1 "$RUNS"); do
    rm -rf "$dir/seg"
    measure "$dir/seg" "$BIN" --data-dir "$dir/seg" extract --from profiles-sync "$dir/unload"; s+=("$SECS"); sr+=("$RSS_MB")
    measure "$dir/duck" python3 bench/duckdb_run.py "$dir/unload" "$dir/duck.ndjson"; d+=("$(cat "$dir/duck.ndjson.secs")"); dr+=("$RSS_MB")
  done
  S_SECS=$(printf '%s\n' "${s[@]}" | median); S_RSS=$(printf '%s\n' "${sr[@]}" | median)
  D_SECS=$(printf '%s\n' "${d[@]}" | median); D_RSS=$(printf '%s\n' "${dr[@]}" | median)
}

say "== extract --from profiles-sync against DuckDB on the same unloads, $RUNS runs each, alternating"
for N in $SIZES; do
  for shape in "4 parts, one huge row group each, rows shuffled|--sync-parts 4 --sync-row-group 100000000" \
               "64 small parts, row groups of 5,000 rows, rows shuffled|--sync-parts 64 --sync-row-group 5000"; do
    IFS='|' read -r SHAPE FLAGS <<< "$shape"
    D=$W/u$N && rm -rf "$D" && mkdir -p "$D"
    # shellcheck disable=SC2086
    "$BIN" -q sandbox --profiles "$N" --write-profiles-sync "$D/unload" --sync-shuffle $FLAGS
    MB=$(du -sm "$D/unload" | cut -f1)
    versus "$D"
    TABLE_ROWS=$(grep -o 'from [0-9]* rows' "$D/seg.err" | grep -o '[0-9]*')
    SAME=$(python3 bench/compare_profiles.py "$D/seg/profiles.ndjson" "$D/duck.ndjson" || true)
    row "profiles-sync, $N profiles ($TABLE_ROWS rows, $MB MB of Parquet), $SHAPE" "segsync: $S_SECS s, peak RSS $S_RSS MB" "DuckDB: $D_SECS s, peak RSS $D_RSS MB; $SAME" "$(calc "$D_SECS / $S_SECS")x DuckDB's speed, $(calc "$S_RSS / $D_RSS") of its memory"
    rm -rf "$D"
  done
done

# Unloads that other writers wrote, with their defaults: the sandbox's rows
# rewritten by pyarrow (four parts, one row group each) and by DuckDB (one
# file a table, row groups of 122,880 rows).
for N in ${BENCH_SYNC_FOREIGN_SIZES:-300000 1000000}; do
  D=$W/f$N && rm -rf "$D" && mkdir -p "$D"
  "$BIN" -q sandbox --profiles "$N" --write-profiles-sync "$D/sandbox" --sync-shuffle --sync-parts 4
  for WRITER in pyarrow duckdb; do
    rm -rf "$D/unload" && python3 bench/rewrite_unload.py "$WRITER" "$D/sandbox" "$D/unload"
    MB=$(du -sm "$D/unload" | cut -f1)
    versus "$D"
    TABLE_ROWS=$(grep -o 'from [0-9]* rows' "$D/seg.err" | grep -o '[0-9]*')
    SAME=$(python3 bench/compare_profiles.py "$D/seg/profiles.ndjson" "$D/duck.ndjson" || true)
    row "profiles-sync, $N profiles ($TABLE_ROWS rows, $MB MB), written by $WRITER with its defaults" "segsync: $S_SECS s, peak RSS $S_RSS MB" "DuckDB: $D_SECS s in-process, peak RSS $D_RSS MB; $SAME" "$(calc "$D_SECS / $S_SECS")x DuckDB's speed, $(calc "$S_RSS / $D_RSS") of its memory"
  done
  rm -rf "$D"
done

N=${BENCH_SYNC_PROFILES:-100000}
say "== extract --from profiles-sync against transform of the same profiles, $N profiles"
D=$W/t && mkdir -p "$D"
"$BIN" -q sandbox --profiles "$N" --write-profiles-sync "$D/unload" --sync-shuffle
measure "$D/e" "$BIN" --data-dir "$D" extract --from profiles-sync "$D/unload"; X_SECS=$SECS; X_RSS=$RSS_MB
measure "$D/t" "$BIN" --data-dir "$D" transform; T_SECS=$SECS
row "extract --from profiles-sync, $N profiles, Parquet" "$(calc "$N / $X_SECS" 0) profiles/s, peak RSS $X_RSS MB" "transform of that profiles.ndjson: $(calc "$N / $T_SECS" 0) profiles/s" "$(calc "$T_SECS / $X_SECS") of transform's speed"
"$BIN" -q sandbox --profiles "$N" --write-profiles-sync "$D/gz/unload" --sync-format csv-gz
measure "$D/gz/e" "$BIN" --data-dir "$D/gz" extract --from profiles-sync "$D/gz/unload"
SAME=$(cmp -s "$D/profiles.ndjson" "$D/gz/profiles.ndjson" && echo "the same file" || echo "A DIFFERENT FILE")
row "extract --from profiles-sync, $N profiles, gzipped CSV parts" "$(calc "$N / $SECS" 0) profiles/s, peak RSS $RSS_MB MB; $SAME as from the shuffled Parquet parts" "Parquet: $(calc "$N / $X_SECS" 0) profiles/s" "$(calc "$X_SECS / $SECS")"
rm -rf "$W"

SECTION=$(
  echo "<!-- profiles-sync -->"
  echo "## extract --from profiles-sync"
  echo
  echo "Measured by \`bench/profiles_sync.sh\` (run by \`make bench\`) on $(date -u +%Y-%m-%d), $(nproc) cores; release build. DuckDB $(python3 -c 'import duckdb; print(duckdb.__version__)') runs \`bench/duckdb_profiles.sql\`: the mapped traits, latest by seq, values parsed, the user_id ids, each profile's first and last timestamp over both tables (the created_at and updated_at segsync writes). Times and peak RSS are medians of $RUNS runs of each tool, alternating; DuckDB's time is the query's own, in-process (Python's start-up and DuckDB's import not counted), its memory the whole process's."
  echo
  echo "| scenario | segsync | compared with | ratio |"
  echo "|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo "<!-- /profiles-sync -->"
)
write_section profiles-sync "$SECTION"
say "bench/profiles_sync.sh: wrote its section of bench/RESULTS.md"
