"""Run bench/duckdb_plan.sql on a data folder: python3 duckdb_plan.py DIR.
DuckDB is a bench dependency only (bench/run.sh installs it with pip)."""
import pathlib
import sys

import duckdb

sql = (pathlib.Path(__file__).parent / "duckdb_plan.sql").read_text()
duckdb.sql(sql.replace("{dir}", sys.argv[1]))
