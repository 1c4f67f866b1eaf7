# Helpers shared by bench/run.sh, bench/plan.sh and bench/profiles_sync.sh (sourced; needs BIN and W).

say() { printf '%s\n' "$*" >&2; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

SB_PID=
start_sandbox() {
  "$BIN" sandbox "$@" > "$W/sb.env" 2> "$W/sb.log" &
  SB_PID=$!
  for _ in $(seq 1 100); do grep -q VOUCHERIFY_SECRET_KEY "$W/sb.env" 2>/dev/null && break; sleep 0.1; done
  set -a; . "./$W/sb.env"; set +a
}
stop_sandbox() { [[ -n $SB_PID ]] && kill "$SB_PID" 2>/dev/null && wait "$SB_PID" 2>/dev/null; SB_PID=; return 0; }
trap stop_sandbox EXIT
stats() { curl -s "$SEGMENT_API_URL/_sandbox/stats"; }
seg_requests() { stats | jq '[.requests["segment.list_profiles","segment.traits","segment.external_ids"] // 0] | add'; }

# measure OUT_PREFIX cmd...: runs cmd under /usr/bin/time; sets SECS and RSS_MB
measure() {
  local out=$1; shift
  /usr/bin/time -f "%e %M" -o "$W/time.txt" "$@" > "$out.out" 2> "$out.err" || { cat "$out.err" >&2; return 1; }
  read -r SECS RSS_KB < "$W/time.txt"
  RSS_MB=$(calc "$RSS_KB / 1024" 1)
}
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); say "  $1: $2 (ceiling $3, ratio $4)"; }


# write_section NAME TEXT: put TEXT (which starts with "<!-- NAME -->" and
# ends with "<!-- /NAME -->") in bench/RESULTS.md, in place of the section of
# that name, or at the end.
write_section() {
  python3 - "$1" "$2" <<'PY'
import re, sys
path, name, section = "bench/RESULTS.md", sys.argv[1], sys.argv[2]
text = open(path).read()
start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
if start in text:
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
}
