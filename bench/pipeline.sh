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

rate() { grep -o '[0-9.]* profiles/s' "$1" | tail -1 | grep -o '^[0-9.]*'; }

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
  row "segsync run, $N profiles, Voucherify at $RPM calls/min, jobs of 200 ms" "$R_SECS s ($EARLY of $WANT customers sent during extract; extract at $R_RATE profiles/s)" "extract alone: $E_SECS s, $E_RATE profiles/s; the issue's bound: 1.10 x extract + 2 s = $(calc "1.1 * $E_SECS + 2" 1) s" "$(calc "$R_SECS / $E_SECS") of extract's time; extract at $(calc "$R_RATE / $E_RATE") of its speed alone"
  stop_sandbox
done

section="<!-- pipeline -->
## segsync run, pipelined

Measured by \`bench/pipeline.sh\` (run by \`make bench\`) on $(date -u +%Y-%m-%d), $(nproc) cores; release build; sandbox on the same machine. Each command in a fresh data folder; \`run\` loads into an empty project.

| scenario | figure | compared with | ratio |
|---|---|---|---|
$(printf '%s\n' "${ROWS[@]}")
<!-- /pipeline -->"
write_section pipeline "$section"
say "bench/RESULTS.md: pipeline section written"
