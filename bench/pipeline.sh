#!/usr/bin/env bash
# The pipelined `segsync run` (issue 33), written into bench/RESULTS.md
# between the "pipeline" markers; make bench runs it, and it runs alone too:
#   bash bench/pipeline.sh              (after cargo build --release)
# Side by side, each in a fresh data folder against the same kind of space
# (2,000 profiles, Segment at 100 requests/s with 150 ms answers):
# `segsync extract` alone, then `segsync run` (extract, transform, load into
# an empty project) with Voucherify at 300 calls/min and at 2,000
# calls/min, jobs of 200 ms. The figure is run's time over extract's alone,
# and run's extract speed over extract's alone.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TARGET_DIR:-target}
BIN=$T/release/segsync
W=bench/work/pipeline
N=${BENCH_PIPELINE_PROFILES:-2000}
rm -rf "$W" && mkdir -p "$W"
ROWS=()
. bench/lib.sh

# Extract's own speed, from its summary line.
rate() { grep '^extract: [0-9]* requests' "$1" | grep -o '[0-9.]* profiles/s' | tail -1 | grep -o '^[0-9.]*'; }

say "== extract alone: $N profiles, 100 requests/s, 150 ms answers"
start_sandbox --profiles "$N" --latency-ms 150 --segment-rps 100
measure "$W/extract" "$BIN" --data-dir "$W/extract" extract
E_SECS=$SECS E_RATE=$(rate "$W/extract.err")
stop_sandbox

for RPM in 300 2000; do
  say "== run: the same space, Voucherify at $RPM calls/min, jobs of 200 ms"
  start_sandbox --profiles "$N" --latency-ms 150 --segment-rps 100 --voucherify-rpm "$RPM" --processing-ms 200
  measure "$W/run$RPM" "$BIN" --data-dir "$W/run$RPM" run
  R_SECS=$SECS R_RATE=$(rate "$W/run$RPM.err")
  EARLY=$(grep -o 'run: [0-9]* customers sent during extract' "$W/run$RPM.err" | grep -o '[0-9]*' | head -1)
  HELD=$(stats | jq .customers)
  WANT=$(grep -o '= [0-9]* customers' "$W/run$RPM.err" | grep -o '[0-9]*' | head -1)
  [[ $HELD -eq $WANT ]] || { say "run: Voucherify holds $HELD customers of $WANT"; exit 1; }
  row "segsync run, $N profiles, Voucherify at $RPM calls/min, jobs of 200 ms" "$R_SECS s ($EARLY sends during extract for $WANT customers: a later profile that wins is sent too; extract at $R_RATE profiles/s)" "extract alone: $E_SECS s, $E_RATE profiles/s; the issue's bound: 1.10 x extract + 2 s = $(calc "1.1 * $E_SECS + 2" 1) s" "$(calc "$R_SECS / $E_SECS") of extract's time; extract at $(calc "$R_RATE / $E_RATE") of its speed alone"
  stop_sandbox
done

# The original script (../shared/peers, unchanged) side by side with
# `segsync run`: the same space (1,000 profiles, 100 requests/s, 150 ms
# answers; every metadata trait an object, since the script sends it as it
# is, and the script's system_metadata accepted), each against a fresh
# sandbox, in turn, three times; medians.
ORIGINAL=../shared/peers/run-original.sh
if [[ -x $ORIGINAL || -f $ORIGINAL ]] && command -v node >/dev/null; then
  O_TIMES=() S_TIMES=()
  for i in 1 2 3; do
    for who in original segsync; do
      start_sandbox --profiles 1000 --latency-ms 150 --segment-rps 100 --plain-traits --accept-undocumented
      if [[ $who == original ]]; then
        measure "$W/original$i" bash "$ORIGINAL"; O_TIMES+=("$SECS")
        O_HELD=$(stats | jq .customers)
      else
        measure "$W/segsync$i" "$BIN" --data-dir "$W/segsync$i" run; S_TIMES+=("$SECS")
        S_HELD=$(stats | jq .customers)
      fi
      stop_sandbox
    done
  done
  median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
  O=$(median "${O_TIMES[@]}") S=$(median "${S_TIMES[@]}")
  row "segsync run beside the original script, 1000 profiles, 100 req/s, 150 ms answers" "segsync run: $S s (runs: ${S_TIMES[*]}), $S_HELD customers held" "the original script: $O s (runs: ${O_TIMES[*]}), $O_HELD customers held" "$(calc "$O / $S")x faster"
else
  say "the original script (../shared/peers/run-original.sh) or node is missing: its row is left out"
fi

section="<!-- pipeline -->
## segsync run, pipelined

Measured by \`bench/pipeline.sh\` (run by \`make bench\`) on $(date -u +%Y-%m-%d), $(nproc) cores; release build; sandbox on the same machine. Each command in a fresh data folder; \`run\` loads into an empty project.

| scenario | figure | compared with | ratio |
|---|---|---|---|
$(printf '%s\n' "${ROWS[@]}")
<!-- /pipeline -->"
write_section pipeline "$section"
say "bench/RESULTS.md: pipeline section written"
