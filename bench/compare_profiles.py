"""Compare segsync's profiles.ndjson with DuckDB's output of
bench/duckdb_profiles.sql, profile by profile:
    python3 compare_profiles.py SEGSYNC.ndjson DUCKDB.ndjson
Prints "N of N profiles with a user_id identical" or what differs (the
exit status is 1 then). DuckDB writes only the profiles with a user_id.
Identical: the traits, the user_ids, and the time span (segsync's
metadata.created_at and updated_at, DuckDB's created_at and updated_at),
compared as instants."""
import json
import sys
from datetime import datetime


def instant(text):
    """An instant from either tool's text: ISO 8601 with a Z, or DuckDB's
    "2023-01-01 05:01:00+00"."""
    if text is None:
        return None
    t = text.replace("Z", "+00:00").replace(" ", "T")
    if len(t) >= 3 and t[-3] in "+-" and t[-2:].isdigit():
        t += ":00"
    return datetime.fromisoformat(t).timestamp()

seg = {}
with open(sys.argv[1]) as f:
    for line in f:
        p = json.loads(line)
        ids = [e["id"] for e in p["external_ids"] if e["type"] == "user_id"]
        if ids:
            m = p.get("metadata") or {}
            span = (instant(m.get("created_at")), instant(m.get("updated_at")))
            seg[p["segment_id"]] = (p["traits"], ids, span)
same, differ = 0, []
with open(sys.argv[2]) as f:
    for line in f:
        d = json.loads(line)
        traits = d["traits"] if isinstance(d["traits"], dict) else json.loads(d["traits"])
        mine = seg.pop(d["segment_id"], None)
        span = (instant(d.get("created_at")), instant(d.get("updated_at")))
        if mine == (traits, d["user_ids"], span):
            same += 1
        else:
            differ.append(d["segment_id"])
if differ or seg:
    print(f"{same} profiles identical; DIFFERENT: {len(differ)} (e.g. {differ[:3]}), only in segsync: {len(seg)}")
    sys.exit(1)
print(f"{same} of {same} profiles with a user_id identical")
