"""Run bench/duckdb_plan.sql on a data folder: python3 duckdb_plan.py DIR.
Writes the query's own time (in-process: Python's start-up and DuckDB's
import not counted) to DIR/duck.secs, beside the whole process's time that
bench/plan.sh measures. DuckDB is a bench dependency only (bench/run.sh
installs it with pip)."""
import pathlib
import sys
import time

import duckdb

sql = (pathlib.Path(__file__).parent / "duckdb_plan.sql").read_text()
started = time.perf_counter()
duckdb.sql(sql.replace("{dir}", sys.argv[1]))
(pathlib.Path(sys.argv[1]) / "duck.secs").write_text(f"{time.perf_counter() - started:.2f}\n")
