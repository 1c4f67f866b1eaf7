"""The confirmations of a load, from the sandbox's side: GET /_sandbox/actions
on stdin (every async action with its creation, start, finish and every read
of it by the client, in ms). Prints one line of shell assignments for
bench/pipeline.sh: actions, reads per action, reads before the finish, the
median and 95th percentile of the lag from a job's finish to the read that
saw it finished, how long the queue stood idle, and the queue's floor (the
jobs' own running time)."""
import json
import statistics
import sys

actions = [a for a in json.load(sys.stdin)["actions"]
           if a["type"] == "CUSTOMERS.BULK_UPDATE" and a["finished_ms"] is not None]
if not actions:
    sys.exit("no finished bulk actions in the timeline")
lags, early, idle, busy, last_finish = [], 0, 0.0, 0.0, None
for a in actions:
    finished = a["finished_ms"]
    seen = [t for t in a["looks_ms"] if t >= finished]
    if not seen:
        sys.exit(f"action {a['id']} finished but was never read after")
    lags.append(seen[0] - finished)
    early += sum(1 for t in a["looks_ms"] if t < finished)
    start = a["started_ms"]
    busy += finished - start
    if last_finish is not None:
        # Idle: between the last finish and this job's start, less the
        # sandbox's own pick-up delay when the job came after the finish.
        idle += max(0.0, a["created_ms"] - last_finish)
    last_finish = finished
reads = sum(len(a["looks_ms"]) for a in actions)
span = actions[-1]["finished_ms"] - actions[0]["created_ms"]
p95 = statistics.quantiles(lags, n=20)[-1] if len(lags) > 1 else lags[0]
print(f"ACTIONS={len(actions)} READS={reads} EARLY={early} LAG_MEDIAN={statistics.median(lags):.0f} "
      f"LAG_P95={p95:.0f} IDLE_S={idle / 1000:.2f} SPAN_S={span / 1000:.2f} BUSY_S={busy / 1000:.2f}")
