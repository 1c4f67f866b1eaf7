"""Rewrite a Profiles Sync unload as another writer would, with its default
settings: python3 bench/rewrite_unload.py WRITER SRC DST
  pyarrow  each table as four parts, `pq.write_table` defaults (snappy,
           dictionary encoding, one row group a part at these sizes);
  duckdb   each table as one file, `COPY ... TO ... (FORMAT parquet)`
           defaults (snappy, row groups of 122,880 rows).
Bench dependencies only (bench/profiles_sync.sh installs them with pip)."""
import pathlib
import sys

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq

writer, src, dst = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
for table in sorted(d for d in src.iterdir() if d.is_dir()):
    out = dst / table.name
    out.mkdir(parents=True, exist_ok=True)
    if writer == "pyarrow":
        t = ds.dataset(str(table), format="parquet").to_table()
        step = -(-t.num_rows // 4)
        for i in range(4):
            pq.write_table(t.slice(i * step, step), str(out / f"part-{i:05d}.parquet"))
    elif writer == "duckdb":
        duckdb.sql(f"COPY (SELECT * FROM read_parquet('{table}/**/*.parquet')) TO '{out}/data_0.parquet' (FORMAT parquet)")
    else:
        sys.exit(f"unknown writer {writer}")
