-- The peer of `segsync plan --export-file`: the same two files (customers.csv,
-- what Segment says; load.export.csv, what Voucherify holds) compared field by
-- field, one line per customer that differs or is missing. It does less than
-- segsync (no ledger rules, no request bodies), so it is a generous peer.
-- bench/plan.sh runs it through bench/duckdb_plan.py; {dir} is the data folder.
COPY (
  SELECT c.source_id
  FROM read_csv('{dir}/customers.csv', header = true, all_varchar = true) c
  LEFT JOIN read_csv('{dir}/load.export.csv', header = true, all_varchar = true) e
    ON e."Source ID" = c.source_id
  WHERE e."Source ID" IS NULL
     OR e."Name" IS DISTINCT FROM c.name
     OR e."Email" IS DISTINCT FROM c.email
     OR e."metadata.tier" IS DISTINCT FROM json_extract_string(c.metadata, '$.tier')
) TO '{dir}/duck.diff.csv' (HEADER);
