"""Run bench/duckdb_profiles.sql on an unload: python3 duckdb_run.py UNLOAD OUT.
Writes the query's own time (in-process: Python's start-up and DuckDB's
import not counted) to OUT.secs. DuckDB is a bench dependency only
(bench/run.sh installs it with pip)."""
import pathlib
import sys
import time

import duckdb

unload, out = sys.argv[1], sys.argv[2]
# Folder names as the warehouse wrote them (Snowflake upper-cases them).
sql = (pathlib.Path(__file__).parent / "duckdb_profiles.sql").read_text()
traits = next(d for d in pathlib.Path(unload).iterdir() if d.name.lower() == "user_traits")
ids = next(d for d in pathlib.Path(unload).iterdir() if d.name.lower() == "user_identifiers")
sql = sql.replace("{unload}/user_traits", str(traits)).replace("{unload}/user_identifiers", str(ids))
started = time.perf_counter()
duckdb.sql(sql.replace("{out}", out))
pathlib.Path(out + ".secs").write_text(f"{time.perf_counter() - started:.2f}\n")
