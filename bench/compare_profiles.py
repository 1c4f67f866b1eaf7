"""Compare segsync's profiles.ndjson with DuckDB's output of
bench/duckdb_profiles.sql, profile by profile:
    python3 compare_profiles.py SEGSYNC.ndjson DUCKDB.ndjson
Prints "N of N profiles with a user_id identical" or what differs (the
exit status is 1 then). DuckDB writes only the profiles with a user_id."""
import json
import sys

seg = {}
with open(sys.argv[1]) as f:
    for line in f:
        p = json.loads(line)
        ids = [e["id"] for e in p["external_ids"] if e["type"] == "user_id"]
        if ids:
            seg[p["segment_id"]] = (p["traits"], ids)
same, differ = 0, []
with open(sys.argv[2]) as f:
    for line in f:
        d = json.loads(line)
        traits = d["traits"] if isinstance(d["traits"], dict) else json.loads(d["traits"])
        mine = seg.pop(d["segment_id"], None)
        if mine == (traits, d["user_ids"]):
            same += 1
        else:
            differ.append(d["segment_id"])
if differ or seg:
    print(f"{same} profiles identical; DIFFERENT: {len(differ)} (e.g. {differ[:3]}), only in segsync: {len(seg)}")
    sys.exit(1)
print(f"{same} of {same} profiles with a user_id identical")
